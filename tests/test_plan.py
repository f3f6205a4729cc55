"""Planner: bundled runbooks resolve to the expected order; post-install only on primary."""

import json

from bmupgrade.plan import build_plan, plan_json
from bmupgrade.planview import render_markdown
from bmupgrade.runbook import load_runbook
from tests.runbook_samples import MINIMAL

PACEMAKER = "runbooks/bluemind-ha-pacemaker.yaml"
KEEPALIVED = "runbooks/bluemind-ha-keepalived.yaml"


def ids(plan, phase):
    return [a.id for a in plan.actions if a.phase == phase]


def test_pacemaker_order():
    plan = build_plan(load_runbook(PACEMAKER))
    assert ids(plan, "step") == ["backup", "prepare", "refresh", "simulate", "prefetch", "suspend-cron", "ha-off",
                                 "mask-passive", "packages", "unmask-passive", "passive-stopped", "core-ready",
                                 "post-install", "upgrade-complete", "config-sync", "reprobe", "preview", "ha-on",
                                 "settle", "resume-cron"]
    steps = {a.id: a for a in plan.actions}
    # prefetch (download only) happens before HA goes off; both nodes at once
    assert steps["prefetch"].seq < steps["ha-off"].seq and steps["prefetch"].parallel
    assert "--download-only" in steps["prefetch"].commands["bm1"].run[0]
    assert steps["packages"].parallel and steps["packages"].target == "all"
    assert steps["post-install"].target == "primary"
    assert steps["post-install"].commands["bm1"].run == ["bm-cli setup upgrade"]
    assert steps["simulate"].seq < steps["prefetch"].seq and "apt-get -s" in steps["simulate"].commands["bm1"].run[0]
    assert steps["mask-passive"].target == "secondary" and steps["unmask-passive"].target == "where:mask-passive"
    assert steps["passive-stopped"].target == "secondary"
    assert (steps["refresh"].undo, steps["packages"].undo, steps["post-install"].undo) == \
        ("nothing", "commands", "impossible")
    assert plan.ha_window == ("ha-off", "ha-on")
    assert plan.stonith_guard.startswith("fencing must be proven by preflight check stonith-enabled")
    assert ids(plan, "preflight")[0] == "one-vip-holder"
    # the only change-making commands are in steps: preflight/postflight read
    for a in plan.actions:
        if a.phase != "step":
            for c in a.commands.values():
                assert not any(w in " ".join(c.run) for w in ("--update", "install -y", "setup upgrade"))


def test_keepalived_freezes_on_backup_only():
    plan = build_plan(load_runbook(KEEPALIVED))
    steps = {a.id: a for a in plan.actions}
    assert steps["ha-off"].target == "secondary"
    assert steps["ha-off"].commands["bm1"].run == ["systemctl stop keepalived"]
    assert steps["post-install"].target == "primary"
    assert plan.stonith_guard == ("no check proves fencing (the HA handling may have none, as keepalived): step "
                                  "'ha-on' turns failover back on and needs an explicit acceptance of the "
                                  "split-brain risk (unattended: --allow-no-stonith)")
    from bmupgrade.planview import render_markdown
    assert "| STONITH guard | no check proves fencing" in render_markdown(plan)


def test_primary_is_symbolic_until_probed():
    rb = load_runbook(PACEMAKER)
    a = next(a for a in build_plan(rb).actions if a.id == "post-install")
    assert a.target_text == "node holding 192.0.2.10 (resolved at run time)"
    a = next(a for a in build_plan(rb, holders=["bm2"]).actions if a.id == "post-install")
    assert a.nodes == ["bm2"] and "bm2" in a.target_text


def test_peer_template_renders_the_other_node(tmp_path):
    p = tmp_path / "rb.yaml"
    p.write_text(load_runbook(PACEMAKER) and open(PACEMAKER).read().replace(
        'run: "{{ config_sync_command | raw }}"', 'run: "rsync -a /etc/bm {{ peer.host }}:/"'))
    plan = build_plan(load_runbook(p))
    sync = next(a for a in plan.actions if a.id == "config-sync")
    assert sync.commands["bm1"].run[0].endswith(" bm2.example.org:/")
    assert sync.commands["bm2"].run[0].endswith(" bm1.example.org:/")


def test_json_shape_and_secrets(tmp_path):
    p = tmp_path / "rb.yaml"
    p.write_text(MINIMAL)
    data = plan_json(build_plan(load_runbook(p)))
    dumped = json.dumps(data)
    assert "hunter2secret" not in dumped
    assert data["format"] == "bmupgrade-plan/1"
    assert set(data) == {"format", "runbook", "cluster", "vars", "ha_window", "stonith_guard", "deadline", "actions"}
    assert data["vars"]["password"] == "***"
    post = next(a for a in data["actions"] if a["id"] == "post-install")
    assert post["nodes"]["bm1"]["run"] == ["bm-cli setup upgrade --password ***"]
    pkg = next(a for a in data["actions"] if a["id"] == "packages")
    assert pkg["nodes"]["bm2"]["rollback"] == ["apt-get install -y --allow-downgrades bm-full=<from_version>"]
    assert pkg["timeout_s"] == 2700 and pkg["parallel"] is True
    assert [a["seq"] for a in data["actions"]] == list(range(1, len(data["actions"]) + 1))


def test_markdown_is_a_change_ticket():
    md = render_markdown(build_plan(load_runbook(PACEMAKER)))
    for needle in ("# Change: BlueMind HA update (Pacemaker)", "## Preflight checks", "## Procedure",
                   "## Back-out plan", "## Sign-off", "bm-cli setup upgrade", "- [ ] done",
                   "| HA handling off | from step `ha-off` to step `ha-on` |",
                   "- `post-install`: **cannot be undone automatically**"):
        assert needle in md, needle


def test_deadline_budget_per_step():
    plan = build_plan(load_runbook(PACEMAKER))
    plan.deadline = 1_000_020.0
    data = plan_json(plan)
    pkg = next(a for a in data["actions"] if a["id"] == "packages")
    import datetime as dt

    assert dt.datetime.fromisoformat(pkg["latest_start"]).timestamp() == 1_000_020.0 - 45 * 60
    assert next(a for a in data["actions"] if a["id"] == "backup")["latest_start"] is None
