"""End to end on the lab (real sshd, real CLI process): the upgrade, the VIP rules, preflight
refusals, kill-and-resume at every step boundary, dropped sessions, host keys, locks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e import (KEEPALIVED, PACEMAKER, bmupgrade, count, is_change, journal, ledger, one_line, run_upgrade,
                       toggles, version)

pytestmark = pytest.mark.lab


def assert_upgraded(lab, holder: str) -> None:
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.3"
    assert [n for n in ("bm1", "bm2") if count(lab, n, "bm-cli setup upgrade")] == [holder]
    assert count(lab, holder, "bm-cli setup upgrade") == 1
    assert lab.cluster_state()["properties"].get("maintenance-mode") in (None, "false")
    other = "bm2" if holder == "bm1" else "bm1"
    assert lab.node(other).state()["services"]["bluemind.target"] == "inactive"


def test_full_upgrade_unattended(lab, tmp_path):
    r = run_upgrade(lab, tmp_path / "state", check_rc=0)
    assert_upgraded(lab, "bm1")
    assert "HA-off window:" in r.stdout and "started → HA-on command returned)" in r.stdout
    assert "Upgrade complete." in r.stdout
    j = journal(tmp_path / "state")
    assert j["status"] == "succeeded" and all(s["state"] == "done" for s in j["steps"].values())
    assert j["captured"]["from_version"] == "4.9.2"
    # the prefetch (download only) ran on both nodes before maintenance mode went on
    for node in ("bm1", "bm2"):
        lines = ledger(lab, node)
        first_download = next(i for i, l in enumerate(lines) if "--download-only" in l)
        assert all("--update true" not in l for l in lines[:first_download])
    audit = (tmp_path / "state" / "runs" / f"{j['run_id']}.audit.jsonl").read_text().splitlines()
    sent = [e for e in map(json.loads, audit) if e["event"] == "result"]
    assert any(e["command"] == "bm-cli setup upgrade" and e["node"] == "bm1" and e["exit_code"] == 0 for e in sent)
    # locks and the HA-off marker are gone at the end
    for node in ("bm1", "bm2"):
        assert list(lab.node(node).state_dir.iterdir()) == []


def test_bundled_runbook_with_the_real_pacemaker_tools_and_the_stand_ins(pcmk_lab, tmp_path):
    """The same upgrade, and the same STONITH refusal, whether crm_* are the lab's stand-ins or
    the real pacemaker-cli-utils working on the lab's CIB file."""
    lab = pcmk_lab
    run_upgrade(lab, tmp_path / "ok", check_rc=0)
    assert_upgraded(lab, "bm1")
    live = toggles(lab, "bm1")  # the preview's update on a CIB copy is not one
    assert len(live) == 2 and "--update true" in live[0] and "--update false" in live[1]
    assert not toggles(lab, "bm2")
    if lab.pacemaker_mode == "real":
        assert 'name="maintenance-mode" value="false"' in (lab.dir / "cib.xml").read_text()
    lab.up(reset=True)
    lab.fault("stonith-disabled")
    r = run_upgrade(lab, tmp_path / "refused")
    assert r.returncode == 3 and "stonith-enabled" in r.stdout, r.stdout + r.stderr


def test_post_install_follows_the_vip(lab, tmp_path):
    lab.failover("bm2")
    run_upgrade(lab, tmp_path / "state", check_rc=0)
    assert_upgraded(lab, "bm2")


def test_vip_moves_mid_run_and_the_reprobe_follows(lab, tmp_path):
    lab.fault("vip-move", node="bm2", command="apt-get install -y !--download-only", to="bm2")
    r = run_upgrade(lab, tmp_path / "state")
    assert [n for n in ("bm1", "bm2") if count(lab, n, "bm-cli setup upgrade")] == ["bm2"]
    # every step ran; the postflight reports that BlueMind no longer runs where it ran before
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Postflight failed: resources-did-not-move" in " ".join(r.stdout.split())
    assert journal(tmp_path / "state")["steps"]["ha-on"]["state"] == "done"


@pytest.mark.parametrize("fault", ["split-brain", "no-vip"])
def test_no_single_vip_holder_stops_before_the_step(lab, tmp_path, fault):
    # the package step fails on bm2 (abort, HA left off: exit 5); meanwhile the VIP breaks;
    # resume re-runs the preflight, which refuses: nothing is sent, HA is still off (exit 5)
    lab.fault("fail", node="bm2", command="apt-get install -y !--download-only", exit_code=100, times=1)
    state = tmp_path / "state"
    first = run_upgrade(lab, state)
    assert first.returncode == 5, first.stdout + first.stderr
    lab.fault(fault)
    before = {n: len(ledger(lab, n)) for n in ("bm1", "bm2")}
    r = bmupgrade("resume", "--yes", state=state)
    assert r.returncode == 5, r.stdout + r.stderr
    out = one_line(r.stdout)
    assert "Preflight refused" in out and "one-vip-holder (public IP 192.0.2.10: " in out
    assert "Nothing was changed" in out and "HA handling is still OFF" in out
    why = "bm1: holds it" if fault == "split-brain" else "bm1: does not hold it"
    assert why in out and why.replace("bm1", "bm2") in out
    assert "stonith-enabled (not run: public IP 192.0.2.10" in out  # a primary check cannot pick its node
    assert "same-version: skipped (step 'packages' has run" in out  # a half-done packages step makes it false
    for n in ("bm1", "bm2"):
        sent = ledger(lab, n)[before[n]:]
        assert sent and not [l for l in sent if is_change(l)], sent
    j = journal(state)
    assert j["status"] == "failed" and j["preflight"] == "failed" and j["ha"]["state"] == "off"
    assert {n: e["state"] for n, e in j["steps"]["packages"]["nodes"].items()} == {"bm1": "done", "bm2": "failed"}
    assert j["steps"]["post-install"]["state"] == "pending"


@pytest.mark.parametrize("fault,check", [
    ("stonith-disabled", "stonith-enabled"),
    ("config-drift", "config-in-sync"),
    ("half-configured", "dpkg-audit-clean"),
    ("dpkg-lock", "dpkg-lock-free"),
    ("nfs-meta", "cyrus-meta-not-nfs"),
    ("held-package", "no-held-bm-packages"),
])
def test_preflight_refusal_changes_nothing(lab, tmp_path, fault, check):
    lab.fault(fault)
    r = run_upgrade(lab, tmp_path / "state")
    assert r.returncode == 3, r.stdout + r.stderr
    assert check in r.stdout and "Nothing was changed" in r.stdout
    for n in ("bm1", "bm2"):
        assert not [l for l in ledger(lab, n) if any(w in l for w in ("install -y", "--update", "bm-cli setup",
                                                                       "rsync", "csync2", "mask"))]


def test_preflight_lists_every_failure(lab, tmp_path):
    lab.fault("stonith-disabled")
    lab.fault("config-drift")
    lab.node("bm2").set_state(installed={"bm-full": "4.9.1"})
    r = run_upgrade(lab, tmp_path / "state")
    assert r.returncode == 3
    msg = r.stdout
    for check in ("stonith-enabled", "config-in-sync", "same-version"):
        assert check in msg.split("Preflight refused")[1], msg
    assert "--- bm1" in msg and "+++ bm2" in msg  # the per-node diff of the drifted file


def _kill_points():
    steps = ["refresh", "prefetch", "ha-off", "packages", "passive-stopped", "post-install", "config-sync", "ha-on"]
    return [(state, s) for s in steps for state in ("started", "done")]


def _resume(state, state_name, step, env):
    """Resume a killed run; a step killed before its command was sent and without a verify
    needs the operator's word (`--rerun`): exit 5 (HA still off) and "outcome is unknown"."""
    r = bmupgrade("resume", "--yes", state=state, env=env)
    if r.returncode == 5 and "outcome is unknown" in r.stdout:
        assert state_name == "started"
        r = bmupgrade("resume", "--yes", "--rerun", step, state=state, env=env)
    return r


def _assert_upgraded_once(lab, state):
    assert_upgraded(lab, "bm1")
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1  # non-idempotent commands never twice
    live = toggles(lab, "bm1") + toggles(lab, "bm2")  # not the preview's update on a CIB copy
    assert sum("--update true" in t for t in live) == 1
    assert sum("--update false" in t for t in live) == 1
    assert journal(state)["status"] == "succeeded"


@pytest.mark.parametrize("state_name,step", [("started", "packages"), ("done", "ha-off"),
                                             ("started", "post-install"), ("started", "ha-on")])
def test_sigkill_of_a_first_run_then_resume(lab, tmp_path, state_name, step):
    state = tmp_path / "state"
    r = run_upgrade(lab, state, env={"BMUPGRADE_CRASH_AT": f"{state_name}:{step}"})
    assert r.returncode == -signal.SIGKILL
    assert journal(state)["steps"][step]["state"] == state_name
    r2 = _resume(state, state_name, step, env=None)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    _assert_upgraded_once(lab, state)


def test_sigkill_at_every_boundary_then_resume(lab, tmp_path):
    """One upgrade killed at each of the 16 step boundaries in turn (SIGKILL right after the
    journal record is durable): a run, then a resume killed at the next boundary, and so on;
    the last resume finishes. Every boundary is crossed exactly once, nothing non-idempotent
    runs twice."""
    state = tmp_path / "state"
    points = _kill_points()
    r = run_upgrade(lab, state, env={"BMUPGRADE_CRASH_AT": "%s:%s" % points[0]})
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    for (state_name, step), following in zip(points, points[1:] + [None]):
        assert journal(state)["steps"][step]["state"] == state_name, (state_name, step)
        r = _resume(state, state_name, step, env={"BMUPGRADE_CRASH_AT": "%s:%s" % following} if following else None)
        assert r.returncode == (-signal.SIGKILL if following else 0), (following, r.stdout + r.stderr)
    _assert_upgraded_once(lab, state)


def test_ssh_session_dropped_mid_step_verify_settles_it(lab, tmp_path):
    """The session to bm2 drops after apt-get was sent: its outcome is unknown, never re-sent
    blindly; the step's verify finds bm-full at the target, so it is recorded done and the run
    goes on (exit 0) with apt-get sent once on bm2."""
    state = tmp_path / "state"
    pkg = "apt-get install -y !--download-only"
    lab.fault("drop", node="bm2", command=pkg, when="after")
    r = run_upgrade(lab, state)
    assert r.returncode == 0, r.stdout + r.stderr
    out = one_line(r.stdout)
    assert "✗ bm2: connection lost" in out and "(outcome unknown)" in out
    assert "packages on bm2: outcome was unknown; verify says it is done" in out
    assert [c.get("dropped") for c in lab.node("bm2").calls(pkg)] == [True]  # sent once, the session dropped
    assert len(lab.node("bm1").calls(pkg)) == 1
    bm2 = journal(state)["steps"]["packages"]["nodes"]["bm2"]
    assert bm2["state"] == "done" and bm2["attempts"] == 1 and bm2["exit_code"] is None and bm2["sent"] is True
    assert bm2["note"] == "outcome unknown; verify passed" and "connection lost" in bm2["outcome"]
    assert journal(state)["status"] == "succeeded"
    assert_upgraded(lab, "bm1")


def test_node_down_at_start(lab, tmp_path):
    lab.fault("node-down", node="bm2")
    r = run_upgrade(lab, tmp_path / "state")
    assert r.returncode == 3
    assert "bm2" in r.stdout and "Nothing was changed" in r.stdout
    assert not ledger(lab, "bm1") or not any("install -y" in l for l in ledger(lab, "bm1"))


def test_changed_host_key_is_refused(lab, tmp_path):
    kh = lab.known_hosts
    text = kh.read_text().splitlines()
    other_key = next(l for l in text if l.startswith("[127.0.0.12]")).split(" ", 1)[1]
    text = [(l.split(" ", 1)[0] + " " + other_key) if l.startswith("[127.0.0.11]") else l for l in text]
    kh.write_text("\n".join(text) + "\n")
    r = run_upgrade(lab, tmp_path / "state")
    assert r.returncode == 3
    assert "SHA256:" in r.stdout and "ssh-keygen -R" in r.stdout
    assert not ledger(lab, "bm1") and not ledger(lab, "bm2")


def test_second_concurrent_run_refuses_naming_the_first(lab, tmp_path):
    lab.fault("slow-apt", download=3)
    first = subprocess.Popen([sys.executable, "-m", "bmupgrade", "run", PACEMAKER, "-i", str(lab.inventory_path),
                              "--yes", "--ack", "backup,prepare", "--state-dir", str(tmp_path / "s1")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "NO_COLOR": "1"})
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            runs = list((tmp_path / "s1" / "runs").glob("*.journal.jsonl")) if (tmp_path / "s1" / "runs").exists() else []
            if runs and journal(tmp_path / "s1")["preflight"] == "passed":
                break
            time.sleep(0.1)
        first_id = journal(tmp_path / "s1")["run_id"]
        r = run_upgrade(lab, tmp_path / "s2")  # another machine's state dir: only the remote lock says no
        assert r.returncode == 3, r.stdout
        assert first_id in r.stdout and "holds the cluster lock" in r.stdout
    finally:
        first.wait(timeout=120)
    assert first.returncode == 0
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1


def test_stonith_guard_keepalived_runbook_needs_the_flag_unattended(lab, tmp_path):
    """keepalived has no fencing: an unattended run of the bundled keepalived runbook is refused
    before anything is sent, and goes through with --allow-no-stonith."""
    r = bmupgrade("run", KEEPALIVED, "-i", str(lab.inventory_path), "--yes", "--ack", "backup,prepare",
                  state=tmp_path / "s")
    said = " ".join((r.stderr + r.stdout).split())
    assert r.returncode == 2 and "--allow-no-stonith" in said
    assert "this HA stack has no fencing (the runbook says `fencing: none`)" in said
    assert "mark a preflight check" not in said  # no advice to prove what the stack cannot have
    assert all(ledger(lab, n) == [] for n in ("bm1", "bm2"))
    r = bmupgrade("run", KEEPALIVED, "-i", str(lab.inventory_path), "--yes", "--ack", "backup,prepare",
                  "--allow-no-stonith", state=tmp_path / "s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.3"
    assert count(lab, "bm2", "systemctl start keepalived") == 1


def test_stonith_disabled_goes_on_only_with_the_flag_and_says_so(lab, tmp_path):
    lab.fault("stonith-disabled")
    r = run_upgrade(lab, tmp_path / "s", "--allow-no-stonith")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "STONITH (fencing) is NOT enabled" in " ".join(r.stdout.split())
    assert journal(tmp_path / "s")["fencing"] == "disabled"
    assert_upgraded(lab, "bm1")
    st = " ".join(bmupgrade("status", state=tmp_path / "s").stdout.split())
    assert "STONITH guard overridden by" in st and "(--allow-no-stonith): fencing (STONITH) is NOT enabled" in st


CARRIED_PROBE = """\
version: 1
name: carried probe
cluster:
  public_ip: 192.0.2.10
  nodes:
    - {name: bm1, host: bm1.example.org}
    - {name: bm2, host: bm2.example.org}
  vip_probe: 'echo "$$ probe" >> {{ node.state_dir }}/shells; ip -o addr show to {{ cluster.public_ip }}'
steps:
  - id: stop-passive
    on: secondary
    idempotent: true
    run: 'echo "$$ run" >> {{ node.state_dir }}/shells'
    verify: 'echo "$$ verify" >> {{ node.state_dir }}/shells; echo passive is stopped'
  - id: on-holder
    on: primary
    run: 'echo "$$ holder" >> {{ node.state_dir }}/shells'
"""


def test_the_vip_probe_rides_in_the_previous_verifys_exec_on_real_sshd(lab, tmp_path):
    """The probe of a step on the VIP holder travels in the exec of the previous step's verify
    (one round trip less), after the verify, and the step runs where that probe found the VIP.
    `$$` names the shell sshd started for an exec: the same for every command one exec carries."""
    lab.failover("bm1")
    rb = tmp_path / "rb.yaml"
    rb.write_text(CARRIED_PROBE)
    r = bmupgrade("run", str(rb), "-i", str(lab.inventory_path), "--yes", state=tmp_path / "state", check_rc=0)
    assert "bm2 │ passive is stopped" in r.stdout  # the verify's output is shown as when it goes alone
    shells = {n: [line.split() for line in (lab.node(n).state_dir / "shells").read_text().splitlines()]
              for n in ("bm1", "bm2")}
    bm2 = shells["bm2"]
    after_run = bm2[[what for _, what in bm2].index("run") + 1:]
    assert [what for _, what in after_run] == ["verify", "probe"]  # nothing else reached bm2
    assert after_run[0][0] == after_run[1][0] != bm2[[w for _, w in bm2].index("run")][0]  # one exec, not the run's
    bm1 = [what for _, what in shells["bm1"]]
    assert bm1[-2:] == ["probe", "holder"] and bm1.count("holder") == 1  # no probe round of its own
