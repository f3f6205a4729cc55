"""Guided and unattended runs on the lab: prompts through a real terminal, a scripted prompter,
failure policies, rollback, deadline, Ctrl-C, answers files and the HA-off debt."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pexpect
import pytest

from bmupgrade.prompts import ASSUME_DONE, ROLLBACK, SKIP
from bmupgrade.ui.report import ConsoleReporter
from bmupgrade.runner import Session, ssh_transport_factory, start_run
from tests.e2e import (PACEMAKER, ROOT, bmupgrade, count, find_hint, journal, ledger, one_line, run_printed,
                       run_upgrade, version)

pytestmark = pytest.mark.lab
DOWN, ENTER = "\x1b[B", "\r"
PKG_FAULT = "apt-get install -y !--download-only"


def spawn(*args: str, cwd) -> pexpect.spawn:
    env = {**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1", "NO_COLOR": "1", "COLUMNS": "120", "TERM": "xterm"}
    env.pop("CI", None)
    # codec_errors: the tty echoes ^C where it arrives, possibly inside a multi-byte character
    p = pexpect.spawn(sys.executable, ["-m", "bmupgrade", *args], env=env, encoding="utf-8", codec_errors="replace",
                      timeout=60,
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
    assert p.exitstatus == 5  # stopped with HA handling left off (maintenance mode on)
    j = journal(tmp_path / "s")
    assert j["status"] == "aborted" and j["steps"]["packages"]["nodes"]["bm2"]["state"] == "failed"
    assert j["ha"]["state"] == "off" and lab.cluster_state()["properties"]["maintenance-mode"] == "true"
    term = screen(tmp_path)
    assert f"Restore it with: bmupgrade resume {j['run_id']} --state-dir {tmp_path / 's'}" in term
    r = bmupgrade("resume", "--yes", state=tmp_path / "s", check_rc=0)
    assert "same-version: skipped (step 'packages' has run" in one_line(r.stdout)
    assert version(lab, "bm2") == "4.9.3" and count(lab, "bm1", "bm-cli setup upgrade") == 1
    assert len(lab.node("bm1").calls(PKG_FAULT)) == 1 and len(lab.node("bm2").calls(PKG_FAULT)) == 2
    assert journal(tmp_path / "s")["ha"]["state"] == "on"


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


def screen(tmp_path) -> str:
    """What the terminal showed, without escape sequences, whitespace folded (lines wrap)."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r", "", (tmp_path / "terminal.log").read_text())
    return " ".join(text.split())


class Scripted:
    """An injected prompter: answers from a script, records the questions."""

    interactive = True
    step_mode = False

    def __init__(self, failure=(), confirm=None, unknown=ASSUME_DONE, rollback=True, interrupt="abort", typed=None):
        self.failure = list(failure)
        self.confirm = confirm or {}
        self.unknown = unknown
        self.rollback = rollback
        self.interrupt = interrupt
        self.typed = typed
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

    def confirm_rollback(self, undo, cannot, *, default=True):
        self.asked.append(("rollback", tuple(undo), tuple(cannot), default))
        return self.rollback

    def on_interrupt(self, step_id, title, completed, undo):
        self.asked.append(("interrupt", step_id, completed))
        return self.interrupt

    def still_running(self, step_id, title, text):
        self.asked.append(("still-running", step_id, text))
        return "abort"

    def confirm_typed(self, message, expected):
        self.asked.append(("typed", expected))
        return self.typed == expected

    def confirm_no_fencing(self, step_id, title, why):
        self.asked.append(("no-fencing", step_id, why))
        return False


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


def test_scripted_rollback_after_a_failed_post_install_keeps_the_packages(lab, tmp_path):
    """post-install is the point of no return, also when it failed (it may have migrated part of
    the data): Rollback from the failure menu only turns HA back on; the packages are not
    downgraded and the plan says the back-out is a restore from the backup."""
    lab.fault("fail", node="bm2", command="bm-cli setup", exit_code=1)  # bm2 never runs it: no effect
    lab.fault("fail", node="bm1", command="bm-cli setup", exit_code=1)
    pr = Scripted(failure=[ROLLBACK])
    s = in_process(lab, tmp_path, pr)
    undo, cannot, default = next(a for a in pr.asked if a[0] == "rollback")[1:]
    assert default is True  # the run failed: rolling back is the expected answer
    # past the point of no return only the window is closed: no unmask-passive/packages undone
    assert [u.split(" on ")[0] for u in undo] == ["mask-passive", "ha-off", "suspend-cron"]
    assert cannot[-1].startswith("everything up to and including 'post-install'")
    assert "but closing the window (HA back on): it is the point of no return" in cannot[-1]
    assert "restore from the backup, not a downgrade" in cannot[-1]
    assert s.exit_code == 1 and s.status == "partly-rolled-back"
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.3"  # not downgraded under migrated data
    assert not [l for n in ("bm1", "bm2") for l in ledger(lab, n) if "--allow-downgrades" in l]
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1 and not count(lab, "bm2", "bm-cli setup upgrade")
    assert lab.cluster_state()["properties"].get("maintenance-mode") == "false"
    assert len(s.cannot_undo) == 1 and "point of no return" in s.cannot_undo[0] and not s.ha_off_open
    j = journal(tmp_path / "state")
    assert j["ha"]["state"] == "on" and j["direction"] == "rollback"
    assert j["steps"]["ha-off"]["state"] == "rolled-back" and j["steps"]["packages"]["state"] == "done"
    assert j["steps"]["post-install"]["state"] == "failed"
    assert not (lab.node("bm1").state_dir / "ha-off").exists()


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
    assert r.returncode == 5, r.stdout + r.stderr  # failed with HA handling left off
    assert "HA handling is OFF" in r.stdout and "maintenance-mode --update false" in r.stdout
    run_id = journal(tmp_path / "s")["run_id"]
    assert f"Restore it with: bmupgrade resume {run_id} --state-dir {tmp_path / 's'}" in one_line(r.stdout)
    st = bmupgrade("status", state=tmp_path / "s", check_rc=0)
    assert "HA handling OFF" in st.stdout
    # a colleague without the journal asks the nodes
    st = bmupgrade("status", "--cluster", PACEMAKER, "-i", str(lab.inventory_path), state=tmp_path / "x",
                   check_rc=5)  # exit 5: HA is off on the nodes
    assert "HA handling OFF" in st.stdout and run_id in st.stdout and "--update false" in st.stdout
    # a colleague on another machine: their preflight sees the marker on the nodes
    lab.clear_faults()
    other = run_upgrade(lab, tmp_path / "colleague")
    assert other.returncode == 3 and f"turned off by run {run_id}" in other.stdout
    assert not [l for l in ledger(lab, "bm1") + ledger(lab, "bm2") if "bm-cli setup" in l]  # refused before anything
    assert bmupgrade("resume", "--yes", state=tmp_path / "s").returncode == 0
    assert version(lab, "bm2") == "4.9.3" and count(lab, "bm1", "bm-cli setup upgrade") == 1
    assert lab.cluster_state()["properties"].get("maintenance-mode") == "false"


def _fast_runbook(tmp_path, packages_timeout="60s"):
    text = open(PACEMAKER).read()
    for old, new in (("timeout: 10m", "timeout: 5s"), ("timeout: 30m", "timeout: 5s"), ("timeout: 2m", "timeout: 5s"),
                     ("timeout: 5m", "timeout: 5s"), ("timeout: 1m", "timeout: 5s"), ("timeout: 15m", "timeout: 5s"),
                     ("timeout: 45m", f"timeout: {packages_timeout}"), ("timeout: 2h", "timeout: 5s")):
        text = text.replace(old, new)
    p = tmp_path / "fast.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("policy", ["stop", "rollback"])
def test_deadline_stops_before_a_step_that_cannot_fit(lab, tmp_path, policy):
    """The steps before HA goes off fit (refresh: 45 s worst case), but the HA-off window
    ('ha-off' … 'ha-on', 2m40s worst case from the timeouts) does not fit in 150 s: the run
    stops before turning HA off (exit 4), with HA on and nothing half-done, whatever the policy."""
    lab.fault("slow-apt", install=2)
    r = run_upgrade(lab, tmp_path / "s", "--deadline", "+150s", "--on-deadline", policy,
                    runbook=_fast_runbook(tmp_path))
    assert r.returncode == 4, r.stdout + r.stderr
    out = one_line(r.stdout)
    assert "Deadline: the HA-off window ('ha-off' … 'ha-on') may take " in out
    assert "(worst case from the timeouts) but only " in out
    assert "Durations are learnt from earlier runs in this --state-dir" in out
    assert "stopped before it with HA on, nothing half-done." in out
    assert "HA handling is OFF" not in out and "HA handling is still OFF" not in out
    for n in ("bm1", "bm2"):
        assert lab.node(n).calls("apt-get install --download-only")  # the steps before the window ran
        assert not lab.node(n).calls(PKG_FAULT) and not lab.node(n).calls("crm_attribute --update")
        assert list(lab.node(n).state_dir.iterdir()) == []  # no HA-off marker, lock released
    assert "maintenance-mode" not in lab.cluster_state()["properties"]
    j = journal(tmp_path / "s")
    assert j["status"] == "deadline" and j["ha"]["off_since"] is None
    assert j.get("direction") == ("rollback" if policy == "rollback" else None)
    done = ["backup", "prepare", "refresh", "simulate", "prefetch"]
    if policy == "stop":  # cron stays suspended until the run goes on (resume) or is rolled back
        assert [s for s, e in j["steps"].items() if e["state"] == "done"] == done + ["suspend-cron"]
    else:  # the deadline's rollback put cron back (the others had nothing to undo: `rollback: []`)
        assert [s for s, e in j["steps"].items() if e["state"] == "done"] == ["backup", "prepare"]
        assert all(j["steps"][s]["state"] == "rolled-back" for s in done[2:] + ["suspend-cron"])
        assert "Rolled back" in out
    assert j["steps"]["ha-off"]["state"] == "pending" and j["steps"]["packages"]["state"] == "pending"
    if policy == "stop":  # HA was never off: a resume without a deadline completes the upgrade
        bmupgrade("resume", "--yes", state=tmp_path / "s", check_rc=0)
        assert version(lab, "bm1") == version(lab, "bm2") == "4.9.3"


def _popen_run(lab, state, runbook=PACEMAKER):
    return subprocess.Popen([sys.executable, "-m", "bmupgrade", "run", runbook, "-i", str(lab.inventory_path),
                             "--yes", "--ack", "backup,prepare", "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})


def _wait_started(lab, node, command, timeout=30):
    """Until `command` (a lab stand-in: bin/COMMAND ...) runs in THIS lab (the machine is shared:
    other labs run the same stand-ins)."""
    needle = f"{lab.dir}/bin/{command}"
    t = time.time() + timeout
    while time.time() < t:
        hits = [p for p in _procs() if needle in p]
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
    assert p.returncode == 130, out  # interrupted (130 wins over 5: HA is off, and said so)
    flat = one_line(out)
    assert "Ctrl-C: the running command is let finish, then the run stops at a safe point" in flat
    assert "Stopped by Ctrl-C at a safe point (after 'post-install')" in flat
    assert "HA handling is still OFF" in flat and "Restore it with: bmupgrade resume" in flat
    j = journal(tmp_path / "s")
    assert j["steps"]["post-install"]["state"] == "done"  # it finished, and it is recorded
    assert j["steps"]["post-install"]["nodes"]["bm1"]["exit_code"] == 0
    assert j["steps"]["config-sync"]["state"] == "pending" and j["status"] == "interrupted"
    assert j["ha"]["state"] == "off" and not lab.node("bm1").calls("rsync")
    for n in ("bm1", "bm2"):  # the cluster lock is released; the HA-off marker stays until HA is back on
        assert sorted(f.name for f in lab.node(n).state_dir.iterdir()) == ["ha-off"]
    assert bmupgrade("resume", "--yes", state=tmp_path / "s").returncode == 0
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1


def test_ctrl_c_twice_exits_at_once_with_step_unknown(lab, tmp_path):
    """Second Ctrl-C: the CLI exits at once (130) while bm-cli still runs on bm1; the step is
    `unknown` and the cluster lock stays. Resume never decides while it runs, and after it
    ended never re-sends it blindly: the printed --assume-done command settles it."""
    lab.fault("hang", node="bm1", command="bm-cli setup", seconds=15)
    state = tmp_path / "s"
    p = _popen_run(lab, state)
    _wait_started(lab, "bm1", "bm-cli setup")
    p.send_signal(signal.SIGINT)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130, out
    assert _running(lab, "bm-cli setup")  # the CLI did not wait for the command
    flat = one_line(out)
    assert "Interrupted while 'post-install' on bm1 ran: it may still be running on the node" in flat
    assert "The cluster lock stays on the nodes while that command may run" in flat
    j = journal(state)
    bm1 = j["steps"]["post-install"]["nodes"]["bm1"]
    assert bm1["state"] == "unknown" and bm1["outcome"].startswith("interrupted (second Ctrl-C")
    assert j["status"] == "interrupted" and j["ha"]["state"] == "off"
    assert (lab.node("bm1").state_dir / "lock").exists() and (lab.node("bm1").state_dir / "ha-off").exists()

    r = bmupgrade("resume", "--yes", state=state)  # at once: bm-cli still runs on bm1
    assert r.returncode == 5, r.stdout + r.stderr  # stopped, HA still off
    assert "Step 'post-install': bm1: still running (pid" in one_line(r.stdout)
    _wait_gone(lab, "bm-cli setup")
    r = bmupgrade("resume", "--yes", state=state)  # it ended: no verify command, so a person decides
    assert r.returncode == 5, r.stdout + r.stderr
    flat = one_line(r.stdout)
    assert "Step 'post-install' was sent to bm1 and its outcome is unknown" in flat
    done = find_hint(r.stdout, "resume", j["run_id"], "--yes --assume-done post-install", f"--state-dir {state}")
    find_hint(r.stdout, "resume", j["run_id"], "--yes --rerun post-install", f"--state-dir {state}")
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1  # never re-sent
    r = run_printed(done)
    assert r.returncode == 0, r.stdout + r.stderr  # the hint works as printed
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1
    j = journal(state)
    assert j["status"] == "succeeded" and j["steps"]["post-install"]["nodes"]["bm1"]["state"] == "done"
    assert j["steps"]["post-install"]["nodes"]["bm1"]["by"]["how"] == "--assume-done flag"


def _running(lab, command) -> bool:
    return any(f"{lab.dir}/bin/{command}" in p for p in _procs())


def _wait_gone(lab, command, timeout=120):
    t = time.time() + timeout
    while time.time() < t and _running(lab, command):
        time.sleep(0.2)
    assert not _running(lab, command), f"{command} still runs"


@pytest.mark.parametrize("choice", ["abort", "continue"])
def test_terminal_ctrl_c_once_lets_the_command_finish_then_asks(lab, tmp_path, choice):
    """Through a real pty: Ctrl-C while bm-cli runs -> it finishes and is recorded done, then the
    menu says the step completed and offers Continue as the default. Abort: exit 130, nothing
    after it sent; Continue (Enter): the run goes on to the end."""
    lab.fault("hang", node="bm1", command="bm-cli setup", seconds=2)
    p = spawn("run", PACEMAKER, "-i", str(lab.inventory_path), "--state-dir", str(tmp_path / "s"), cwd=tmp_path)
    for prompt in ("Is this done", "Is this done", "Proceed", "Proceed"):  # backup, prepare, ha-off, post-install
        p.expect(prompt)
        p.send(ENTER)
    _wait_started(lab, "bm1", "bm-cli setup")
    p.sendintr()
    p.expect("the running command is let finish, then the run stops at a safe point")
    p.expect(r"Interrupted\S* \(the step completed\)")
    p.expect("What now")
    p.expect("Continue the run")
    if choice == "abort":
        p.send(DOWN + ENTER)  # Stop here
    else:
        p.send(ENTER)  # the default: Continue
        p.expect("Proceed")  # ha-on's confirmation
        p.send(ENTER)
    p.expect(pexpect.EOF)
    p.close()
    j = journal(tmp_path / "s")
    assert j["steps"]["post-install"]["state"] == "done"
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1
    if choice == "abort":
        assert p.exitstatus == 130  # interrupted, at a safe point, by the operator's choice (HA off: said so)
        assert j["status"] == "interrupted" and j["steps"]["config-sync"]["state"] == "pending"
        assert not lab.node("bm1").calls("rsync") and j["ha"]["state"] == "off"
        assert "HA handling is still OFF" in screen(tmp_path)
    else:
        assert p.exitstatus == 0
        assert j["status"] == "succeeded" and j["ha"]["state"] == "on"
        assert version(lab, "bm1") == version(lab, "bm2") == "4.9.3"


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
    """`rollback --yes` of a succeeded run: post-install (the point of no return) was done, so only
    what follows it could be undone — and that would only turn HA off and on again. Nothing is
    sent, nothing is downgraded, the run stays `succeeded`, and the output says the back-out is a
    restore."""
    run_upgrade(lab, tmp_path / "s", check_rc=0)
    before = {n: len(ledger(lab, n)) for n in ("bm1", "bm2")}
    j0 = journal(tmp_path / "s")
    r = bmupgrade("rollback", "--yes", state=tmp_path / "s")
    assert r.returncode == 1, r.stdout + r.stderr
    out = one_line(r.stdout + r.stderr)
    assert "Nothing to roll back automatically" in out and "point of no return" in out
    assert "restore from the backup" in out and "Nothing was changed." in out
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.3"  # no downgrade under migrated data
    assert {n: len(ledger(lab, n)) for n in ("bm1", "bm2")} == before  # nothing sent
    assert lab.cluster_state()["properties"].get("maintenance-mode") in (None, "false")
    j = journal(tmp_path / "s")
    assert j["status"] == "succeeded" and j["steps"] == j0["steps"] and j["ha"]["state"] == "on"
    r = bmupgrade("resume", j["run_id"], "--yes", state=tmp_path / "s")
    assert r.returncode == 2 and "is succeeded: nothing to resume" in r.stderr
