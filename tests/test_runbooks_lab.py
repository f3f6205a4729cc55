"""The bundled runbooks against the stand-in lab (issue 13): what BlueMind, Pacemaker and
keepalived actually do. Every assertion reads the lab's state or ledger (what the nodes saw and
did), never the runbook's own output."""

from __future__ import annotations

import pytest

from bmupgrade.plan import Renderer
from bmupgrade.runbook import load_runbook
from tests.e2e import KEEPALIVED, PACEMAKER, bmupgrade, journal, ledger, run_upgrade, toggles, version

pytestmark = pytest.mark.lab

BM_STEPS_FORBIDDEN = ("install -y", "--update", "bm-cli setup", "csync2", "mask", "systemctl stop")


def changed_nothing(lab) -> None:
    """Nothing but reads and downloads (the prefetch) reached the nodes."""
    for n in ("bm1", "bm2"):
        assert not [l for l in ledger(lab, n) if any(w in l for w in BM_STEPS_FORBIDDEN)
                    and "--download-only" not in l], ledger(lab, n)
        assert version(lab, n) == "4.9.2"


def index(lines: list[str], needle: str, start: int = 0) -> int:
    return next(i for i, l in enumerate(lines) if i >= start and needle in l)


def install_index(lines: list[str]) -> int:
    """The package step's apt-get (not the simulation, not the prefetch)."""
    return next(i for i, l in enumerate(lines) if "apt-get install -y" in l and "--download-only" not in l)


def step_command(lab, runbook: str, step_id: str, node: str, i: int = 0) -> str:
    rb = load_runbook(runbook, inventory=lab.inventory_path)
    return Renderer(rb)(rb.step(step_id).run[i], rb.node(node))


# --------------------------------------------------------------------------- packages
def test_every_bm_package_is_upgraded_and_nothing_removed(lab, tmp_path):
    run_upgrade(lab, tmp_path / "s", check_rc=0)
    for n in ("bm1", "bm2"):
        installed = lab.node(n).state()["installed"]
        assert {p: v for p, v in installed.items() if v != "4.9.3"} == {}
        assert {"bm-plugin-cli-setup", "bm-core-upgraders"} <= set(installed)  # not only bm-full
        sims = [e for e in lab.node(n).calls("apt-get") if "-s" in e["argv"]]
        installs = [e for e in lab.node(n).calls("apt-get install") if "-y" in e["argv"]
                    and "--download-only" not in e["argv"]]
        assert sims and installs and sims[0]["time"] < installs[0]["time"]  # simulated first
        assert "--no-remove" in installs[0]["argv"] and "bm-plugin-cli-setup=4.9.3" in installs[0]["argv"]
        assert not any(e.get("removed") for e in lab.node(n).calls("apt-get"))


def test_the_package_simulation_refuses_a_removal(lab, tmp_path, batch):
    # a plugin that depends on exactly bm-core (= 4.9.2) and has no newer version: apt would remove it
    lab.fault("stale-plugin")
    r = run_upgrade(lab, tmp_path / "s")
    assert r.returncode == 1, r.stdout + r.stderr
    assert journal(tmp_path / "s")["steps"]["simulate"]["state"] == "failed"
    changed_nothing(lab)
    for n in ("bm1", "bm2"):
        assert lab.node(n).state()["installed"]["bluemind-connector-legacy"] == "4.9.2"  # still there
        assert lab.node(n).state()["services"]["cron.service"] == "active"
    # and what `apt-get install -y bm-full=X` alone would have done on such a node (the old runbook):
    lab.fault("clear")
    lab.fault("stale-plugin", node="bm2")
    [res] = batch(lab.node("bm2"), "apt-get install -y -q bm-full=4.9.3")
    assert res.rc == 0 and "Removing bluemind-connector-legacy" in res.out
    assert "bluemind-connector-legacy" not in lab.node("bm2").state()["installed"]


def test_a_held_package_is_refused_before_anything_changes(lab, tmp_path):
    lab.fault("held-package", node="bm2", package="bm-plugin-cli-setup")
    r = run_upgrade(lab, tmp_path / "s")
    assert r.returncode == 3 and "no-held-bm-packages" in r.stdout
    changed_nothing(lab)


# --------------------------------------------------------------------------- the passive node
def test_the_passive_node_never_runs_bluemind_during_the_upgrade(lab, tmp_path):
    run_upgrade(lab, tmp_path / "s", check_rc=0)
    bm2 = lab.node("bm2")
    # the lab's own record of every start of bluemind.target: none on the passive node
    assert [e for e in bm2.state()["service_events"] if e["unit"] == "bluemind.target"] == []
    assert bm2.state()["services"]["bluemind.target"] == "inactive" and bm2.state()["masked"] == []
    # bm-conf's postinst tried (and the runtime mask stopped it), between mask and unmask
    lines = ledger(lab, "bm2")
    mask = index(lines, "systemctl mask --runtime bluemind.target")
    install = next(i for i, e in enumerate(bm2.calls()) if e["argv"][:2] == ["apt-get", "install"]
                   and "-y" in e["argv"] and "--download-only" not in e["argv"])
    unmask = index(lines, "systemctl unmask --runtime bluemind.target")
    assert mask < install < unmask
    assert bm2.calls()[install]["trigger"] == "bluemind.target masked: not started"
    # bm-nginx (outside bluemind.target) is never masked: bm-client-access restarts it under set -e
    nginx = [e for e in bm2.state()["service_events"] if e["unit"] == "bm-nginx.service"]
    assert [e["by"] for e in nginx] == ["bm-client-access postinst"]
    assert not any("mask" in l and "bm-nginx" in l for l in lines)
    # on the VIP holder BlueMind was never masked
    assert not any("mask" in l for l in ledger(lab, "bm1"))


# --------------------------------------------------------------------------- BlueMind's core
def test_post_install_waits_for_the_core_and_checks_nothing_is_pending(lab, tmp_path):
    run_upgrade(lab, tmp_path / "s", check_rc=0)
    calls = lab.node("bm1").calls()
    lines = [" ".join(e["argv"]) for e in calls]
    ready = index(lines, "/system/installation/state")
    setup = index(lines, "bm-cli setup upgrade")
    after = index(lines, "/system/installation/version", setup)
    assert install_index(lines) < ready < setup < after
    assert calls[ready]["api_key"] == "given" and calls[after]["api_key"] == "given"
    token = (lab.node("bm1").root / "etc/bm/bm-core.tok").read_text().strip()
    state = tmp_path / "s"
    for f in state.rglob("*"):  # the token is read on the node, never recorded by bmupgrade
        if f.is_file():
            assert token not in f.read_text(errors="replace"), f
    for n in ("bm1", "bm2"):
        assert all(token not in " ".join(e["argv"]) for e in lab.node(n).calls())


# --------------------------------------------------------------------------- Pacemaker
def test_pacemaker_reattach_sequence(pcmk_lab, tmp_path):
    lab = pcmk_lab
    run_upgrade(lab, tmp_path / "s", check_rc=0)
    calls = lab.node("bm1").calls()
    lines = [" ".join(e["argv"]) for e in calls]
    on = next(i for i, e in enumerate(calls) if e["argv"][:1] == ["crm_attribute"] and "false" in e["argv"]
              and "maintenance-mode" in e["argv"] and not e.get("cib_file"))
    off = index(lines, "maintenance-mode --update true")
    refresh = index(lines, "crm_resource --refresh")
    probe_wait = index(lines, "crm_resource --wait", refresh)
    multi = index(lines, "crm_mon -1 --output-as=xml", probe_wait)
    cib = index(lines, "cibadmin --query")
    copy = next(i for i, e in enumerate(calls) if e.get("cib_file"))
    sim = index(lines, "crm_simulate")
    cleanup = index(lines, "crm_resource --cleanup")
    settle = index(lines, "crm_resource --wait", cleanup)
    assert off < refresh < probe_wait < multi < cib < copy < sim < on < cleanup < settle
    assert "--update" in calls[copy]["argv"] and "false" in calls[copy]["argv"]
    assert len(toggles(lab, "bm1")) == 2 and not toggles(lab, "bm2")
    assert lab.cluster_state()["properties"].get("maintenance-mode") == "false"


def test_reattach_refuses_a_resource_active_on_both_nodes(lab, batch):
    lab.node("bm2").set_state(services={"bluemind.target": "active"})
    cmd = step_command(lab, PACEMAKER, "reprobe", "bm1", 2)
    [r] = batch(lab.node("bm1"), cmd)
    assert r.rc == 1 and "REFUSED" in r.out and 'nodes_running_on="2"' in r.out
    # and the preview (crm_simulate on a CIB copy with maintenance-mode=false) shows the stop
    [p] = batch(lab.node("bm1"), step_command(lab, PACEMAKER, "preview", "bm1"))
    assert p.rc == 1 and "Stop       bluemind" in p.out and "REFUSED" in p.out


def test_fencing_is_read_under_both_names(lab, batch):
    rb = load_runbook(PACEMAKER, inventory=lab.inventory_path)
    check = next(c for c in rb.preflight if c.id == "stonith-enabled")
    bm1 = lab.node("bm1")
    [unset] = batch(bm1, check.run)
    assert unset.out.strip() == "unset (default: true)"
    batch(bm1, "crm_attribute --type crm_config --name fencing-enabled --update false")
    [new] = batch(bm1, check.run)
    assert new.out.strip() == "fencing-enabled=false"
    batch(bm1, "crm_attribute --type crm_config --name fencing-enabled --delete",
          "crm_attribute --type crm_config --name stonith-enabled --update false")
    [old] = batch(bm1, check.run)
    assert old.out.strip() == "stonith-enabled=false"


def test_stickiness_zero_is_a_warning_not_a_refusal(lab, tmp_path, batch):
    r = run_upgrade(lab, tmp_path / "s", check_rc=0)
    assert "preflight warning: resource-stickiness" in r.stdout
    lab.up(reset=True)
    # (Pacemaker 2.1.5's crm_attribute cannot update rsc_defaults in a CIB *file*: it maps the host
    # name to a node first; on a cluster `--type rsc_defaults --update` works)
    with lab._store.txn() as tx:
        tx.cluster()["rsc_defaults"] = {"resource-stickiness": "100"}
    r = run_upgrade(lab, tmp_path / "s2", check_rc=0)
    assert "preflight warning: resource-stickiness" not in r.stdout


# --------------------------------------------------------------------------- before the window
def test_a_running_backup_refuses_the_window(lab, tmp_path):
    lab.fault("backup-running", node="bm1")
    r = run_upgrade(lab, tmp_path / "s")
    assert r.returncode == 3 and "no-backup-running" in r.stdout, r.stdout
    changed_nothing(lab)
    searches = [e for e in lab.node("bm1").calls("curl") if "/api/scheduledjobs/_searchExecution" in e["argv"][-1]]
    assert searches and searches[0]["http_status"] == 200


def test_cron_is_suspended_for_the_window_and_restored(lab, tmp_path):
    run_upgrade(lab, tmp_path / "s", check_rc=0)
    for n in ("bm1", "bm2"):
        lines = ledger(lab, n)
        stop, start = index(lines, "systemctl stop cron"), index(lines, "systemctl start cron")
        assert stop < install_index(lines) < start
        assert lab.node(n).state()["services"]["cron.service"] == "active"


def test_config_sync_pushes_one_way_from_the_vip_holder(lab, tmp_path):
    run_upgrade(lab, tmp_path / "s", check_rc=0)
    assert [n for n in ("bm1", "bm2") if lab.node(n).calls("csync2")] == ["bm1"]
    vhost = "etc/nginx/sites-available/bm-client-access"
    assert (lab.node("bm1").root / vhost).read_bytes() == (lab.node("bm2").root / vhost).read_bytes()
    assert b"4.9.3" in (lab.node("bm2").root / vhost).read_bytes()


# --------------------------------------------------------------------------- keepalived
def test_keepalived_is_started_where_it_was_stopped(lab, tmp_path):
    # the VIP moves to bm2 while the packages install: ha-on must start keepalived on bm2 (where
    # ha-off stopped it), not on bm1, whose higher priority would take the VIP back (preempt)
    lab.fault("vip-move", node="bm2", command="apt-get install -y !--download-only", to="bm2")
    r = bmupgrade("run", KEEPALIVED, "-i", str(lab.inventory_path), "--yes", "--ack", "backup,prepare",
                  "--allow-no-stonith", state=tmp_path / "s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [n for n in ("bm1", "bm2") if lab.node(n).calls("systemctl stop keepalived")] == ["bm2"]
    assert [n for n in ("bm1", "bm2") if lab.node(n).calls("systemctl start keepalived")] == ["bm2"]
    assert lab.cluster_state()["vip"] == ["bm2"]
    assert [n for n in ("bm1", "bm2") if lab.node(n).calls("bm-cli setup upgrade")] == ["bm2"]
    # the maintenance file for the check scripts was set and cleared on both nodes
    for n in ("bm1", "bm2"):
        lines = ledger(lab, n)
        assert index(lines, "touch /etc/keepalived/bm-maintenance") < install_index(lines) \
            < index(lines, "rm -f /etc/keepalived/bm-maintenance")
        assert not (lab.node(n).root / "etc/keepalived/bm-maintenance").exists()


def test_keepalived_preempt_risk_refuses_before_failover_is_frozen(lab, tmp_path):
    conf = lab.node("bm2").root / "etc/keepalived/keepalived.conf"
    conf.write_text(conf.read_text().replace("priority 100", "priority 200"))
    r = bmupgrade("run", KEEPALIVED, "-i", str(lab.inventory_path), "--yes", "--ack", "backup,prepare",
                  "--allow-no-stonith", state=tmp_path / "s")
    assert r.returncode == 1, r.stdout + r.stderr
    assert journal(tmp_path / "s")["steps"]["preempt-check"]["state"] == "failed"
    assert not lab.node("bm2").calls("systemctl stop keepalived")
    changed_nothing(lab)
    # with nopreempt the same priorities are fine
    conf.write_text(conf.read_text().replace("priority 200", "priority 200\n    nopreempt"))
    r = bmupgrade("run", KEEPALIVED, "-i", str(lab.inventory_path), "--yes", "--ack", "backup,prepare",
                  "--allow-no-stonith", state=tmp_path / "s2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert lab.cluster_state()["vip"] == ["bm1"]
