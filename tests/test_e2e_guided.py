"""Guided and unattended runs on the lab: prompts through a real terminal, a scripted prompter,
failure policies, rollback, deadline, Ctrl-C, answers files and the HA-off debt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pexpect
import pytest

from bmupgrade.prompts import ASSUME_DONE, ROLLBACK, SKIP
from bmupgrade.ui.report import ConsoleReporter
from bmupgrade.runner import Session, ssh_transport_factory, start_run
from tests.e2e import PACEMAKER, ROOT, bmupgrade, count, journal, ledger, run_upgrade, version

pytestmark = pytest.mark.lab
DOWN, ENTER = "\x1b[B", "\r"
PKG_FAULT = "apt-get install !--download-only"


def spawn(*args: str, cwd) -> pexpect.spawn:
    env = {**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1", "NO_COLOR": "1", "COLUMNS": "120", "TERM": "xterm"}
    env.pop("CI", None)
    p = pexpect.spawn(sys.executable, ["-m", "bmupgrade", *args], env=env, encoding="utf-8", timeout=60,
                      dimensions=(50, 120), cwd=str(ROOT))
    p.logfile_read = open(cwd / "terminal.log", "w")
    return p


def test_terminal_confirm_and_retry_then_answers_replay(lab, tmp_path):
    """Through a real pty: manual acks, confirmations (yes), a failure, Retry succeeds; answers saved."""
    lab.fault("fail", node="bm2", command=PKG_FAULT, exit_code=100, times=1)
    answers = tmp_path / "answers.yaml"
    p = spawn("run", PACEMAKER, "-i", str(lab.inventory_path), "--state-dir", str(tmp_path / "s"),
              "--save-answers", str(answers), cwd=tmp_path)
    for prompt, keys in [("Is this done", ENTER), ("Is this done", ENTER), ("Proceed", ENTER),
                         ("What now", ENTER),  # Retry
                         ("Proceed", ENTER), ("Proceed", ENTER)]:
        p.expect(prompt)
        p.send(keys)
    p.expect("Upgrade complete")
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.3"
    assert len(lab.node("bm2").calls(PKG_FAULT)) == 2 and count(lab, "bm1", "bm-cli setup upgrade") == 1
    saved = answers.read_text()
    assert "ha-off: true" in saved and "post-install: true" in saved and "- backup" in saved

    # the same answers replay unattended on a fresh cluster
    lab2 = lab.__class__(tmp_path / "lab2").up()
    try:
        r = bmupgrade("run", PACEMAKER, "-i", str(lab2.inventory_path), "--answers", str(answers),
                      state=tmp_path / "s2")
        assert r.returncode == 0, r.stdout + r.stderr
        assert version(lab2, "bm2") == "4.9.3"
    finally:
        lab2.down()


def test_terminal_abort_then_resume(lab, tmp_path):
    lab.fault("fail", node="bm2", command=PKG_FAULT, exit_code=100, times=1)
    p = spawn("run", PACEMAKER, "-i", str(lab.inventory_path), "--state-dir", str(tmp_path / "s"), cwd=tmp_path)
    for prompt, keys in [("Is this done", ENTER), ("Is this done", ENTER), ("Proceed", ENTER)]:
        p.expect(prompt)
        p.send(keys)
    p.expect("What now")
    p.send(DOWN * 3 + ENTER)  # Abort
    p.expect("HA handling is OFF")
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 1
    j = journal(tmp_path / "s")
    assert j["status"] == "aborted" and j["steps"]["packages"]["nodes"]["bm2"]["state"] == "failed"
    bmupgrade("resume", "--yes", state=tmp_path / "s", check_rc=0)
    assert version(lab, "bm2") == "4.9.3" and count(lab, "bm1", "bm-cli setup upgrade") == 1


def test_terminal_confirm_no_stops_before_the_change(lab, tmp_path):
    p = spawn("run", PACEMAKER, "-i", str(lab.inventory_path), "--state-dir", str(tmp_path / "s"), cwd=tmp_path)
    for prompt, keys in [("Is this done", ENTER), ("Is this done", ENTER)]:
        p.expect(prompt)
        p.send(keys)
    p.expect("crm_attribute --type crm_config --name maintenance-mode --update true")  # the exact command
    p.expect("Proceed")
    p.send(DOWN * 2 + ENTER)  # Stop here
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 1
    assert not lab.node("bm1").calls("crm_attribute --update")
    assert journal(tmp_path / "s")["steps"]["ha-off"]["state"] == "pending"


class Scripted:
    """An injected prompter: answers from a script, records the questions."""

    interactive = True
    step_mode = False

    def __init__(self, failure=(), confirm=None, unknown=ASSUME_DONE, rollback=True):
        self.failure = list(failure)
        self.confirm = confirm or {}
        self.unknown = unknown
        self.rollback = rollback
        self.asked: list[tuple] = []

    def ack_manual(self, step_id, title, text):
        self.asked.append(("ack", step_id))
        return True

    def confirm_step(self, step_id, title, where, commands):
        self.asked.append(("confirm", step_id, where, tuple(commands)))
        return self.confirm.get(step_id, "yes")

    def on_failure(self, ctx):
        self.asked.append(("failure", ctx.step_id, tuple(ctx.nodes), ctx.ssh_hint))
        return self.failure.pop(0)

    def unknown_outcome(self, step_id, title, nodes, commands):
        self.asked.append(("unknown", step_id, tuple(nodes)))
        return self.unknown

    def confirm_rollback(self, undo, cannot):
        self.asked.append(("rollback", tuple(undo), tuple(cannot)))
        return self.rollback


def in_process(lab, tmp_path, prompter, **kw):
    s = Session(tmp_path / "state", ConsoleReporter(show_output=False), prompter, ssh_transport_factory())
    return start_run(PACEMAKER, s, inventory=lab.inventory_path, **kw)


def test_scripted_skip(lab, tmp_path):
    lab.fault("fail", node="bm2", command=PKG_FAULT, exit_code=100)
    pr = Scripted(failure=[SKIP])
    s = in_process(lab, tmp_path, pr)
    assert ("failure", "packages", ("bm2",)) == pr.asked[3][:3]
    assert "ssh" in pr.asked[3][3] and str(lab.node("bm2").port) in pr.asked[3][3]
    j = journal(tmp_path / "state")
    assert j["steps"]["packages"]["nodes"]["bm2"]["state"] == "skipped"
    assert j["steps"]["post-install"]["state"] == "done"  # the run went on
    assert s.exit_code == 1  # ... and the postflight caught the skipped node
    assert "versions-at-target" in s.message


def test_scripted_rollback_lists_what_cannot_be_undone(lab, tmp_path):
    lab.fault("fail", node="bm2", command="bm-cli setup", exit_code=1)  # bm2 never runs it: no effect
    lab.fault("fail", node="bm1", command="bm-cli setup", exit_code=1)
    pr = Scripted(failure=[ROLLBACK])
    s = in_process(lab, tmp_path, pr)
    undo, cannot = next(a for a in pr.asked if a[0] == "rollback")[1:]
    assert [u.split(" on ")[0] for u in undo] == ["packages", "ha-off"]
    assert [c.split(" ")[0] for c in cannot] == ["post-install"]  # refresh/prefetch/passive-stopped: rollback: []
    assert s.exit_code == 1 and s.status == "rolled-back"
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.2"
    assert lab.cluster_state()["properties"].get("maintenance-mode") == "false"
    assert s.cannot_undo and not s.ha_off_open


def test_unattended_rollback_policy(lab, tmp_path):
    lab.fault("fail", node="bm2", command=PKG_FAULT, exit_code=100, times=1)
    r = run_upgrade(lab, tmp_path / "s", "--on-failure", "rollback")
    assert r.returncode == 1, r.stdout
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.2"
    assert lab.cluster_state()["properties"].get("maintenance-mode") == "false"
    bm1 = ledger(lab, "bm1")
    assert bm1.index(next(l for l in bm1 if "--allow-downgrades" in l)) < \
        max(i for i, l in enumerate(bm1) if "maintenance-mode --update false" in l)  # reverse order
    assert "rolled-back" in r.stdout


def test_unattended_abort_leaves_ha_debt_visible(lab, tmp_path):
    lab.fault("fail", node="bm2", command=PKG_FAULT, exit_code=100)
    r = run_upgrade(lab, tmp_path / "s")
    assert r.returncode == 1
    assert "HA handling is OFF" in r.stdout and "maintenance-mode --update false" in r.stdout
    run_id = journal(tmp_path / "s")["run_id"]
    st = bmupgrade("status", state=tmp_path / "s", check_rc=0)
    assert "HA handling OFF" in st.stdout
    # a colleague without the journal asks the nodes
    st = bmupgrade("status", "--cluster", PACEMAKER, "-i", str(lab.inventory_path), state=tmp_path / "x", check_rc=0)
    assert "HA handling OFF" in st.stdout and run_id in st.stdout and "--update false" in st.stdout
    # a colleague on another machine: their preflight sees the marker on the nodes
    lab.clear_faults()
    other = run_upgrade(lab, tmp_path / "colleague")
    assert other.returncode == 3 and f"turned off by run {run_id}" in other.stdout
    assert bmupgrade("resume", "--yes", state=tmp_path / "s").returncode == 0
    assert version(lab, "bm2") == "4.9.3"


def _fast_runbook(tmp_path, packages_timeout="60s"):
    text = open(PACEMAKER).read()
    for old, new in (("timeout: 10m", "timeout: 5s"), ("timeout: 30m", "timeout: 5s"), ("timeout: 2m", "timeout: 5s"),
                     ("timeout: 45m", f"timeout: {packages_timeout}"), ("timeout: 2h", "timeout: 5s")):
        text = text.replace(old, new)
    p = tmp_path / "fast.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("policy", ["stop", "rollback"])
def test_deadline_stops_before_a_step_that_cannot_fit(lab, tmp_path, policy):
    lab.fault("slow-apt", install=2)
    r = run_upgrade(lab, tmp_path / "s", "--deadline", "+30s", "--on-deadline", policy,
                    runbook=_fast_runbook(tmp_path))
    assert r.returncode == 4, r.stdout + r.stderr
    assert "step 'packages' may take 1m" in r.stdout
    assert not lab.node("bm1").calls(PKG_FAULT) and not lab.node("bm2").calls(PKG_FAULT)  # nothing half-done
    assert journal(tmp_path / "s")["steps"]["packages"]["state"] == "pending"
    maint = lab.cluster_state()["properties"].get("maintenance-mode")
    if policy == "rollback":
        assert maint == "false" and "HA handling is OFF" not in r.stdout
    else:
        assert maint == "true" and "HA handling is OFF" in r.stdout


def _popen_run(lab, state, runbook=PACEMAKER):
    return subprocess.Popen([sys.executable, "-m", "bmupgrade", "run", runbook, "-i", str(lab.inventory_path),
                             "--yes", "--ack", "backup,prepare", "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})


def _wait_started(lab, node, command, timeout=30):
    t = time.time() + timeout
    while time.time() < t:
        hits = [p for p in _procs() if command in p]
        if hits:
            return
        time.sleep(0.05)
    raise AssertionError(f"{command} never started")


def _procs():
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                out.append(open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return out


def test_ctrl_c_once_finishes_the_command_then_stops(lab, tmp_path):
    lab.fault("hang", node="bm1", command="bm-cli setup", seconds=2)
    p = _popen_run(lab, tmp_path / "s")
    _wait_started(lab, "bm1", "bm-cli setup")
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130, out
    assert "waiting for the running command to finish" in out
    j = journal(tmp_path / "s")
    assert j["steps"]["post-install"]["state"] == "done"  # it finished, and it is recorded
    assert j["steps"]["config-sync"]["state"] == "pending" and j["status"] == "interrupted"
    assert bmupgrade("resume", "--yes", state=tmp_path / "s").returncode == 0
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1


def test_ctrl_c_twice_exits_at_once_with_step_started(lab, tmp_path):
    lab.fault("hang", node="bm1", command="bm-cli setup", seconds=8)
    p = _popen_run(lab, tmp_path / "s")
    _wait_started(lab, "bm1", "bm-cli setup")
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 130, out
    assert time.time() - t0 < 4  # did not wait for the 8 s command
    j = journal(tmp_path / "s")
    assert j["steps"]["post-install"]["nodes"]["bm1"]["state"] == "started"
    assert "may still be running" in out
    time.sleep(8.5)  # the remote command ran to its end meanwhile
    r = bmupgrade("resume", "--yes", state=tmp_path / "s")
    assert r.returncode == 1 and "outcome is unknown" in r.stdout  # resume asks, never re-runs blindly
    r = bmupgrade("resume", "--yes", "--assume-done", "post-install", state=tmp_path / "s", check_rc=0)
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1


def test_terminal_ctrl_c_once_lets_the_command_finish_then_asks(lab, tmp_path):
    """Through a real pty: Ctrl-C while bm-cli runs -> it finishes and is recorded, then the
    menu asks what to do (here: Abort); nothing after it was sent."""
    lab.fault("hang", node="bm1", command="bm-cli setup", seconds=2)
    p = spawn("run", PACEMAKER, "-i", str(lab.inventory_path), "--state-dir", str(tmp_path / "s"), cwd=tmp_path)
    for prompt in ("Is this done", "Is this done", "Proceed", "Proceed"):  # backup, prepare, ha-off, post-install
        p.expect(prompt)
        p.send(ENTER)
    _wait_started(lab, "bm1", "bm-cli setup")
    p.sendintr()
    p.expect("waiting for the running command to finish")
    p.expect("Interrupted by Ctrl-C")
    p.expect("What now")
    p.send(DOWN * 3 + ENTER)  # Abort
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 130  # interrupted, at a safe point, by the operator's choice
    j = journal(tmp_path / "s")
    assert j["steps"]["post-install"]["state"] == "done" and j["steps"]["config-sync"]["state"] == "pending"
    assert j["status"] == "interrupted"
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1 and not lab.node("bm1").calls("rsync")


def test_no_tty_without_yes_is_refused(lab, tmp_path):
    r = bmupgrade("run", PACEMAKER, "-i", str(lab.inventory_path), state=tmp_path / "s")
    assert r.returncode == 2
    assert "--yes" in r.stderr and "--on-failure" in r.stderr
    assert not ledger(lab, "bm1") and not ledger(lab, "bm2")


def test_unattended_lists_missing_answers_before_anything(lab, tmp_path):
    answers = tmp_path / "a.yaml"
    answers.write_text("format: bmupgrade-answers/1\nconfirm: {ha-off: true}\nack: [backup]\non_failure: abort\n")
    r = bmupgrade("run", PACEMAKER, "-i", str(lab.inventory_path), "--answers", str(answers), state=tmp_path / "s")
    assert r.returncode == 2
    for missing in ("confirm post-install", "confirm ha-on", "ack prepare"):
        assert missing in r.stderr
    assert not ledger(lab, "bm1") and not ledger(lab, "bm2")


def test_rollback_command_after_a_finished_run(lab, tmp_path):
    run_upgrade(lab, tmp_path / "s", check_rc=0)
    r = bmupgrade("rollback", "--yes", state=tmp_path / "s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.2"
    assert lab.cluster_state()["properties"].get("maintenance-mode") == "false"
    assert "Cannot be undone automatically" in r.stdout and "post-install" in r.stdout
