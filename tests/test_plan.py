"""Planner: bundled runbooks resolve to the expected order; post-install only on primary."""

import json

from bmupgrade.plan import build_plan, plan_json
from bmupgrade.ui.planview import render_markdown
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
    assert plan.stonith_guard == ("this HA stack has no fencing (fencing: none): step 'ha-on' turns failover back "
                                  "on only with an explicit acceptance of the split-brain risk (a prompt; "
                                  "unattended: --allow-no-stonith)")
    from bmupgrade.ui.planview import render_markdown
    assert "| STONITH guard | this HA stack has no fencing" in render_markdown(plan)


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

    # worst case from the timeouts: the install and its verify (45m each)
    assert dt.datetime.fromisoformat(pkg["latest_start"]).timestamp() == 1_000_020.0 - 2 * 45 * 60
    # HA goes off only if the whole window (ha-off ... ha-on) fits: its latest start is earlier
    # than the sum of the packages and post-install worst cases before the deadline
    ha_off = next(a for a in data["actions"] if a["id"] == "ha-off")
    assert dt.datetime.fromisoformat(ha_off["latest_start"]).timestamp() <= 1_000_020.0 - 2 * 45 * 60 - 2 * 3600
    assert next(a for a in data["actions"] if a["id"] == "backup")["latest_start"] is None


# ------------------------------------------------------------------ issue 14: the Markdown change ticket

def _html(md: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").render(md)


def _procedure(md: str) -> str:
    return md.split("## Procedure", 1)[1].split("\n## ", 1)[0]


def test_markdown_numbering_holds_past_ten_and_matches_the_run():
    from markdown_it import MarkdownIt

    rb = load_runbook(PACEMAKER)
    md = render_markdown(build_plan(rb))
    tokens = MarkdownIt("commonmark").parse(_procedure(md))
    lists = [t for t in tokens if t.type == "ordered_list_open"]
    items = [t for t in tokens if t.type == "list_item_open" and t.level == 1]
    assert len(lists) == 1 and len(items) == len(rb.steps) >= 10  # one list: item 10 did not break it
    assert all(t.level > 0 for t in tokens if t.type == "fence")  # every command block inside its item
    html = _html(_procedure(md))
    for n, step in enumerate(rb.steps, 1):
        assert f"[{n}/{len(rb.steps)}] <strong>" in html, step.id  # the run's [n/N]


def test_markdown_escapes_markup_in_text():
    html = _html(render_markdown(build_plan(load_runbook(PACEMAKER))))
    assert "No bm-* package on hold" in html and "<em>" not in html


def test_markdown_verify_and_rollback_are_paragraphs_of_their_own():
    html = _html(render_markdown(build_plan(load_runbook(PACEMAKER))))
    assert "<p>Verify: <code>! systemctl is-active --quiet cron.service</code></p>" in html
    assert "<p>Rollback: <code>systemctl start cron.service</code></p>" in html


def test_markdown_estimates_and_post_install_node():
    rb = load_runbook(PACEMAKER)
    md = render_markdown(build_plan(rb))
    assert "| Duration (upper bound) | at most " in md and "| HA-off window / user outage | at most " in md
    post = next(line for line in md.splitlines() if "(`post-install`)" in line)
    assert "on the VIP holder at that moment" in post
    probed = render_markdown(build_plan(rb, holders=["bm2"]))
    post = next(line for line in probed.splitlines() if "(`post-install`)" in line)
    assert "on bm2 (holds 192.0.2.10 now" in post


def test_markdown_shows_each_sync_direction_once(tmp_path):
    from tests.runbook_samples import MINIMAL

    rb_path = tmp_path / "sync.yaml"
    rb_path.write_text(MINIMAL.replace("127.0.0.11, port: 2201", "bm1.example.org").replace(
        "127.0.0.12, port: 2202", "bm2.example.org").replace("  - id: ha-on\n", (
            "  - id: config-sync\n    on: primary\n    run: \"rsync -a /etc/bm {{ peer.host }}:/\"\n"
            "  - id: ha-on\n")))
    PACEMAKER = str(rb_path)  # noqa: N806 (the same assertions, on a runbook that syncs with rsync to the peer)
    md = render_markdown(build_plan(load_runbook(PACEMAKER)))
    item = md.split("(`config-sync`)", 1)[1].split("(`ha-on`)", 1)[0]
    assert item.count("bm2.example.org:/") == 1 and item.count("bm1.example.org:/") == 1
    assert "If `bm1` holds the VIP then:" in item and "If `bm2` holds the VIP then:" in item
    probed = render_markdown(build_plan(load_runbook(PACEMAKER), holders=["bm1"]))
    item = probed.split("(`config-sync`)", 1)[1].split("(`ha-on`)", 1)[0]
    assert item.count("bm2.example.org:/") == 1 and "bm1.example.org:/" not in item
