"""Issue 11 end to end: each operator sequence listed under "Why", on the lab (real sshd, the
real CLI as a process), with the promise it used to break asserted from the nodes' ledgers, the
journal, the exit code and what the operator saw."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pexpect
import pytest

from tests.e2e import (PACEMAKER, bmupgrade, count, find_hint, is_change, journal, ledger, one_line, printed_commands,
                       run_printed, run_upgrade, version)
from tests.test_e2e_guided import DOWN, ENTER, _popen_run, _wait_started, screen, spawn

pytestmark = pytest.mark.lab
PKG = "apt-get install !--download-only"
MAINT = "maintenance-mode"


def changes_sent(lab, since: dict[str, int] | None = None) -> list[str]:
    """Change commands that reached a node (since the given ledger lengths)."""
    since = since or {}
    return [f"{n}: {l}" for n in ("bm1", "bm2") for l in ledger(lab, n)[since.get(n, 0):]
            if is_change(l)]


def mark(lab) -> dict[str, int]:
    return {n: len(ledger(lab, n)) for n in ("bm1", "bm2")}


def flat(r) -> str:
    return one_line(r.stdout + r.stderr)


def variant(tmp_path, name: str, *edits: tuple[str, str]) -> str:
    text = open(PACEMAKER).read()
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# --------------------------------------------------------------------------- preflight and locks

def test_a_refused_run_is_not_resumable_and_sends_nothing(lab, tmp_path):
    """Why: a run refused with exit 3 (STONITH disabled; cyrus meta on NFS) was resumed with
    `resume --yes` and did HA off, packages and bm-cli. Now the refused run is `refused`, and
    resume answers that there is nothing to resume."""
    state = tmp_path / "s"
    lab.fault("stonith-disabled")
    lab.fault("nfs-meta")
    r = run_upgrade(lab, state)
    assert r.returncode == 3, flat(r)
    assert "stonith-enabled" in flat(r) and "cyrus-meta-not-nfs" in flat(r) and "Nothing was changed" in flat(r)
    j = journal(state)
    assert j["status"] == "refused" and j["preflight"] == "failed"
    assert all(e["state"] == "pending" and not e["nodes"] for e in j["steps"].values())
    r = bmupgrade("resume", "--yes", state=state)
    assert r.returncode == 2 and "no unfinished run" in r.stderr, flat(r)
    r = bmupgrade("resume", j["run_id"], "--yes", state=state)
    assert r.returncode == 2, flat(r)
    assert f"run {j['run_id']} was refused before any change: nothing to resume; fix the cause and start a new " \
           "`bmupgrade run`" in flat(r)
    r = bmupgrade("rollback", j["run_id"], "--yes", state=state)
    assert r.returncode == 2 and "nothing to roll back" in flat(r)
    assert changes_sent(lab) == []
    for n in ("bm1", "bm2"):
        assert list(lab.node(n).state_dir.iterdir()) == []  # the cluster lock was released


def test_resume_reruns_the_preflight_and_a_refusal_changes_nothing(lab, tmp_path):
    """A run stopped (killed) after prefetch; meanwhile STONITH was disabled and cyrus meta moved
    to NFS: resume re-runs the whole preflight and refuses (exit 3, HA still on, nothing sent).
    Fixed, the printed resume command completes the upgrade."""
    state = tmp_path / "s"
    r = run_upgrade(lab, state, env={"BMUPGRADE_CRASH_AT": "done:prefetch"})
    assert r.returncode == -signal.SIGKILL
    lab.fault("stonith-disabled")
    lab.fault("nfs-meta")
    before = mark(lab)
    r = bmupgrade("resume", "--yes", state=state)
    assert r.returncode == 3, flat(r)
    out = flat(r)
    assert "Preflight refused: 2 check(s) failed: stonith-enabled" in out and "cyrus-meta-not-nfs" in out
    assert "Nothing was changed" in out and "HA handling is still OFF" not in out
    assert changes_sent(lab, before) == []
    assert len(ledger(lab, "bm1")) > before["bm1"]  # the checks did run on the nodes
    j = journal(state)
    assert j["status"] == "failed" and j["preflight"] == "failed"  # something was sent: still resumable
    assert j["steps"]["ha-off"]["state"] == "pending" and j["ha"].get("state") != "off"
    assert j["preflight_results"]["stonith-enabled"]["ok"] is False
    hint = next(c for c in printed_commands(r.stdout, "resume"))
    assert hint == f"bmupgrade resume {j['run_id']} --state-dir {state}"
    lab.clear_faults()
    r = run_printed(hint + " --yes")
    assert r.returncode == 0, flat(r)
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.3" and count(lab, "bm1", "bm-cli setup upgrade") == 1


def test_a_run_refused_by_the_local_lock_leaves_no_journal(lab, tmp_path):
    """Why: a second `run` refused by the local lock left a journal `running` forever that resume
    then picked. Now the lock comes before the journal: exit 3, no second journal, and resume
    refuses to take over the live run."""
    state = tmp_path / "s"
    lab.fault("hang", node="bm1", command="bm-cli setup", seconds=3)
    first = _popen_run(lab, state)
    try:
        _wait_started(lab, "bm1", "bm-cli setup")
        first_id = journal(state)["run_id"]
        r = run_upgrade(lab, state)
        assert r.returncode == 3, flat(r)
        assert f"another bmupgrade run is active on this cluster: run {first_id}" in flat(r)
        assert "Nothing was changed" in flat(r)
        assert [p.name for p in (state / "runs").glob("*.journal.jsonl")] == [f"{first_id}.journal.jsonl"]
        r = bmupgrade("resume", "--yes", state=state)
        assert r.returncode == 2 and f"run {first_id} is running (pid {first.pid}" in flat(r)
    finally:
        out, _ = first.communicate(timeout=180)
    assert first.returncode == 0, out
    assert journal(state)["status"] == "succeeded"
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1 and not count(lab, "bm2", "bm-cli setup upgrade")
    assert sum(count(lab, n, "maintenance-mode --update true") for n in ("bm1", "bm2")) == 1


# --------------------------------------------------------------------------- unknown outcomes, VIP

def test_a_lost_command_is_never_sent_again_by_retries_or_resume(lab, tmp_path):
    """Why: a command whose outcome was lost was journaled `failed`, and `retries:` and resume
    re-sent it (bm-cli setup upgrade ran twice). Here post-install has `retries: 2` and the
    session drops after bm-cli was sent: no retry, resume does not re-send it either; the
    printed --assume-done command settles it."""
    rb = variant(tmp_path, "retries.yaml", ("    run: bm-cli setup upgrade\n",
                                             "    run: bm-cli setup upgrade\n    retries: 2\n    retry_delay: 1s\n"))
    state = tmp_path / "s"
    lab.fault("drop", node="bm1", command="bm-cli setup", when="after")
    r = run_upgrade(lab, state, runbook=rb)
    assert r.returncode == 5, flat(r)  # stopped with HA off
    out = flat(r)
    assert "Step 'post-install' was sent to bm1 and its outcome is unknown (it has no verify command)" in out
    assert [e.get("dropped") for e in lab.node("bm1").calls("bm-cli setup")] == [True]
    j = journal(state)
    assert j["steps"]["post-install"]["nodes"]["bm1"]["state"] == "unknown"
    assert j["steps"]["post-install"]["nodes"]["bm1"]["attempts"] == 1

    r = bmupgrade("resume", "--yes", state=state)  # unattended, without a decision: stops again
    assert r.returncode == 5, flat(r)
    assert "its outcome is unknown" in flat(r) and len(lab.node("bm1").calls("bm-cli setup")) == 1
    done = find_hint(r.stdout, "resume", j["run_id"], "--yes --assume-done post-install", f"--state-dir {state}")
    r = run_printed(done)
    assert r.returncode == 0, flat(r)
    assert len(lab.node("bm1").calls("bm-cli setup")) == 1 and not lab.node("bm2").calls("bm-cli setup")
    e = journal(state)["steps"]["post-install"]["nodes"]["bm1"]
    assert e["state"] == "done" and e["note"] == "outcome unknown; recorded done"
    assert e["by"]["how"] == "--assume-done flag"


def test_a_retry_follows_no_vip_that_moved_away(lab, tmp_path):
    """Why: retries never re-probed the VIP: bm-cli was retried on bm1 after the VIP moved to
    bm2. Here bm-cli fails on bm1 and the VIP moves to bm2 meanwhile: the retry re-probes and
    stops before post-install runs anywhere else (HA still off: exit 5); resume refuses too."""
    rb = variant(tmp_path, "retries.yaml", ("    run: bm-cli setup upgrade\n",
                                             "    run: bm-cli setup upgrade\n    retries: 2\n    retry_delay: 1s\n"))
    state = tmp_path / "s"
    lab.fault("vip-move", node="bm1", command="bm-cli setup", to="bm2")  # first: the VIP moves, then it fails
    lab.fault("fail", node="bm1", command="bm-cli setup", exit_code=1, times=1)
    r = run_upgrade(lab, state, runbook=rb)
    assert r.returncode == 5, flat(r)
    out = flat(r)
    assert "Step 'post-install' already ran on bm1, but the target 'primary' is now bm2 (the public IP moved)" in out
    assert len(lab.node("bm1").calls("bm-cli setup")) == 1 and not lab.node("bm2").calls("bm-cli setup")
    before = mark(lab)
    r = bmupgrade("resume", "--yes", state=state)  # a failed non-idempotent step: only a person re-sends it
    assert r.returncode == 5, flat(r)
    assert "Step 'post-install' failed on bm1. Fix the cause, then" in flat(r)
    rerun = find_hint(r.stdout, "resume", "--rerun post-install", f"--state-dir {state}")
    r = run_printed(rerun + " --yes")  # even then, not on the node that now holds the VIP
    assert r.returncode == 5, flat(r)
    assert "already ran on bm1, but the target 'primary' is now bm2" in flat(r)
    assert changes_sent(lab, before) == []
    j = journal(state)
    assert j["steps"]["post-install"]["nodes"].keys() == {"bm1"}
    assert j["steps"]["post-install"]["nodes"]["bm1"]["state"] == "failed" and j["ha"]["state"] == "off"


def test_a_vip_moved_between_attempts_stops_before_post_install_runs_elsewhere(lab, tmp_path):
    """bm-cli failed on bm1 (abort); the VIP then moved to bm2: resume must not run post-install
    on bm2 without a person looking at both nodes. The printed rollback command turns HA back
    on without downgrading (post-install was sent: the point of no return)."""
    state = tmp_path / "s"
    lab.fault("fail", node="bm1", command="bm-cli setup", exit_code=1, times=1)
    r = run_upgrade(lab, state)
    assert r.returncode == 5, flat(r)
    lab.failover("bm2")
    r = bmupgrade("resume", "--yes", state=state)
    assert r.returncode == 5, flat(r)
    assert "Step 'post-install' failed on bm1" in flat(r)  # not re-sent without a person's word
    r = run_printed(find_hint(r.stdout, "resume", "--rerun post-install") + " --yes")
    assert r.returncode == 5, flat(r)
    assert "Step 'post-install' already ran on bm1, but the target 'primary' is now bm2" in flat(r)
    assert not lab.node("bm2").calls("bm-cli setup") and len(lab.node("bm1").calls("bm-cli setup")) == 1
    rid = journal(state)["run_id"]
    back = next(c for c in printed_commands(r.stdout, "rollback"))
    assert back == f"bmupgrade rollback {rid} --state-dir {state}"
    r = run_printed(back + " --yes")
    assert r.returncode == 0, flat(r)
    assert "Rolled back as far as the point of no return 'post-install', HA handling on" in flat(r)
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.3"
    assert lab.cluster_state()["properties"].get(MAINT) == "false"


# --------------------------------------------------------------------------- deadline

def test_deadline_shorter_than_the_ha_window_stops_with_ha_on(lab, tmp_path):
    """Why: with less time left than the HA window, HA went off and the run stopped before
    packages with exit 4 and HA off. With the bundled runbook's timeouts, refresh and prefetch fit
    in 3 h but the HA window (worst case ~4 h) does not: exit 4 before HA goes off."""
    state = tmp_path / "s"
    r = run_upgrade(lab, state, "--deadline", "+3h")
    assert r.returncode == 4, flat(r)
    out = flat(r)
    assert "Deadline: the HA-off window ('ha-off' … 'ha-on') may take" in out
    assert "stopped before it with HA on, nothing half-done" in out and "HA handling is" not in out
    # only what comes before the window: cron suspended (downloads and simulations change nothing)
    assert changes_sent(lab) and not [c for c in changes_sent(lab) if "cron" not in c]
    j = journal(state)
    assert j["status"] == "deadline" and j["options"]["deadline"] and j["ha"]["off_since"] is None
    assert j["steps"]["ha-off"]["state"] == "pending"
    assert "deadline" in r.stdout.splitlines()[0]  # the deadline in force is printed at start
    for n in ("bm1", "bm2"):
        assert list(lab.node(n).state_dir.iterdir()) == []
    assert MAINT not in lab.cluster_state()["properties"]


# --------------------------------------------------------------------------- rollback

def test_rollback_after_post_install_keeps_the_packages_and_turns_ha_on(lab, tmp_path):
    """Why: rollback after post-install downgraded packages under migrated data and reported
    "rolled back". config-sync fails after post-install: `rollback --force` without a terminal
    is refused (the run id must be typed) and changes nothing; `rollback --yes` turns HA back
    on and downgrades nothing."""
    state = tmp_path / "s"
    lab.fault("fail", node="bm1", command="csync2", exit_code=1)  # the site's sync command (config-sync)
    r = run_upgrade(lab, state)
    assert r.returncode == 5, flat(r)
    rid = journal(state)["run_id"]
    jpath = state / "runs" / f"{rid}.journal.jsonl"
    before, text = mark(lab), jpath.read_bytes()
    r = bmupgrade("rollback", "--yes", "--force", state=state)
    assert r.returncode == 5, flat(r)  # declined: HA is still off (as before), said so
    assert "Not confirmed (the run id must be typed, at a terminal): nothing was changed." in flat(r)
    assert ledger(lab, "bm1")[before["bm1"]:] == [] and ledger(lab, "bm2")[before["bm2"]:] == []
    assert jpath.read_bytes() == text
    r = bmupgrade("rollback", "--yes", state=state)
    assert r.returncode == 0, flat(r)
    out = flat(r)
    assert "Rolled back as far as the point of no return 'post-install', HA handling on" in out
    assert "Cannot be undone automatically: packages, unmask-passive: held by the point of no return " \
           "'post-install', and the HA window is closed (rolling back 'ha-off' turned failover back on)" in out
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.3"
    assert not [c for c in changes_sent(lab, before) if "apt-get" in c or "bm-cli" in c]
    assert [c for c in changes_sent(lab, before) if "--update" in c] == [
        f"bm1: crm_attribute --type crm_config --name {MAINT} --update false"]
    assert lab.cluster_state()["properties"].get(MAINT) == "false"
    j = journal(state)
    assert j["status"] == "partly-rolled-back" and j["ha"]["state"] == "on"  # 4.9.3 stays: not "rolled-back"
    assert j["steps"]["packages"]["state"] == "done" and j["steps"]["post-install"]["state"] == "done"
    assert j["steps"]["config-sync"]["state"] == "failed" and j["steps"]["ha-off"]["state"] == "rolled-back"
    for n in ("bm1", "bm2"):
        assert list(lab.node(n).state_dir.iterdir()) == []
    # the window is closed: a later rollback, even forced, never downgrades with failover on
    before, text = mark(lab), jpath.read_bytes()
    for extra in ((), ("--force",)):
        r = bmupgrade("rollback", "--yes", *extra, state=state)
        assert r.returncode == 2, flat(r)
        assert f"run {rid} is rolled back as far as its point of no return and its HA window is closed" in flat(r)
        assert ledger(lab, "bm1")[before["bm1"]:] == [] and ledger(lab, "bm2")[before["bm2"]:] == []
    assert jpath.read_bytes() == text
    r = bmupgrade("runs", state=state)
    assert "partly-rolled-back" in r.stdout


def test_rollback_turning_failover_back_on_checks_fencing_again(lab, tmp_path):
    """Safety rule 7 for rollback: undoing the HA-off step turns failover back on. STONITH was on
    at the run's preflight and is turned off during the window: `rollback --yes` reads it again
    and is refused before anything changes (exit 5: HA is still off); the printed command, run as
    printed at a terminal, asks the STONITH guard's question, and "yes" finishes the rollback."""
    import shlex

    state = tmp_path / "s"
    lab.fault("fail", node="bm1", command="csync2", exit_code=1)  # config-sync, after post-install
    assert run_upgrade(lab, state).returncode == 5
    lab.fault("stonith-disabled")
    before = mark(lab)
    r = bmupgrade("rollback", "--yes", state=state)
    out = flat(r)
    assert r.returncode == 5, out
    assert "Rollback refused (unattended): undoing 'ha-off' turns automatic failover back on: fencing (STONITH) " \
           "is NOT enabled" in out and "Nothing was changed." in out
    assert changes_sent(lab, before) == [] and lab.cluster_state()["properties"].get(MAINT) == "true"
    assert journal(state)["fencing"] == "disabled"
    printed = find_hint(r.stdout + r.stderr, "rollback")
    assert printed == f"bmupgrade rollback {journal(state)['run_id']} --state-dir {state}"
    p = spawn(*shlex.split(printed)[1:], cwd=tmp_path)
    p.expect("Roll back now")
    p.send(ENTER)  # a failed run: the default is Yes
    p.expect("Turn failover back on anyway")
    p.send(DOWN + ENTER)  # "Yes, I accept the split-brain risk"
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0, screen(tmp_path)
    assert "STONITH guard: Rolling back 'Turn HA handling off (Pacemaker maintenance mode)' [ha-off] turns " \
           "automatic failover back on, but fencing (STONITH) is NOT enabled" in screen(tmp_path)
    assert [c for c in changes_sent(lab, before) if "--update" in c] == [
        f"bm1: crm_attribute --type crm_config --name {MAINT} --update false"]
    j = journal(state)
    assert j["status"] == "partly-rolled-back" and j["ha"]["state"] == "on"  # post-install stays
    assert j["fencing_accepted"]["how"] == "prompt" and j["fencing_accepted"]["step"] == "ha-off"


def test_a_failed_post_install_skipped_at_the_terminal_still_bars_the_downgrade(lab, tmp_path):
    """Post-install fails (it may have migrated part of the data); at the failure menu the admin
    picks Skip. The next step waits for the API to say the data is migrated; the admin presses
    Ctrl-C and picks "Roll back": the packages must not be downgraded under that data — the point
    of no return counts from its first send, whatever was decided after."""
    state = tmp_path / "s"
    lab.fault("fail", node="bm1", command="bm-cli setup upgrade", exit_code=1, times=1)
    p = spawn("run", PACEMAKER, "-i", str(lab.inventory_path), "--state-dir", str(state), cwd=tmp_path)
    fresh = r"\?[^\n]*?\(Use arrow keys\)"  # a question being asked, not the echo of an answer
    while p.expect(["Is this done" + fresh, "Proceed" + fresh, "What now" + fresh], timeout=120) != 2:
        p.send(ENTER)
    p.send(DOWN + ENTER)  # the failure menu of post-install: Skip
    p.expect("retry 1/")  # the API still says the data needs the upgrade
    p.sendintr()
    p.expect("Interrupted")
    p.expect("What now" + fresh)
    p.send(DOWN * 2 + ENTER)  # Roll back the done steps
    p.expect("Roll back now" + fresh)
    p.send(ENTER)
    p.expect(pexpect.EOF, timeout=120)
    p.close()
    term = screen(tmp_path)
    assert "rolled back as far as the point of no return 'post-install'" in term, term[-3000:]
    j = journal(state)
    assert j["steps"]["post-install"]["state"] == "skipped" and j["steps"]["packages"]["state"] == "done"
    assert not [c for c in changes_sent(lab) if "--allow-downgrades" in c]
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.3"
    assert j["ha"]["state"] == "on" and lab.cluster_state()["properties"].get(MAINT) == "false"


def test_declining_the_rollback_of_a_succeeded_run_changes_nothing(lab, tmp_path):
    """Why: rollback of a succeeded run defaulted to Yes, and answering No rewrote the run from
    `succeeded` to `failed`. At a terminal, the question defaults to No; Enter declines, and the
    journal file and the nodes are untouched."""
    state = tmp_path / "s"
    # a runbook without a point of no return, so that a succeeded run has something to undo
    no_ponr = tmp_path / "no-ponr.yaml"
    no_ponr.write_text(open(PACEMAKER).read().replace("point_of_no_return: true", "point_of_no_return: false"))
    run_upgrade(lab, state, runbook=str(no_ponr), check_rc=0)
    rid = journal(state)["run_id"]
    jpath = state / "runs" / f"{rid}.journal.jsonl"
    before, text = mark(lab), jpath.read_bytes()
    p = spawn("rollback", "--state-dir", str(state), cwd=tmp_path)
    p.expect("Rollback plan")
    p.expect("Roll back now")
    p.expect("No \\(nothing changes\\)")
    p.send(ENTER)  # the default
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 1
    assert "Rollback declined: nothing was changed." in screen(tmp_path)
    assert "ha-on on bm1: crm_attribute --type crm_config --name maintenance-mode --update true" in screen(tmp_path)
    assert jpath.read_bytes() == text and journal(state)["status"] == "succeeded"
    assert mark(lab) == before  # not even a probe: it asks before connecting
    assert lab.cluster_state()["properties"].get(MAINT) == "false"


# --------------------------------------------------------------------------- run identity

def test_resume_with_a_changed_or_misspelt_variable_is_refused(lab, tmp_path):
    """Why: `resume -e target_version=9.9.9` was accepted without --force (bm2 got 9.9.9, bm1
    4.9.3), and a misspelt -e was silently accepted. Both are exit 2 with nothing sent."""
    state = tmp_path / "s"
    r = run_upgrade(lab, state, env={"BMUPGRADE_CRASH_AT": "started:packages:bm2"})
    assert r.returncode == -signal.SIGKILL
    before = mark(lab)
    r = bmupgrade("resume", "--yes", "-e", "target_version=9.9.9", state=state)
    assert r.returncode == 2, flat(r)
    assert "variable target_version: '4.9.3' → '9.9.9'" in flat(r) and "--force" in flat(r)
    r = bmupgrade("resume", "--yes", "-e", "target_versoin=9.9.9", state=state)
    assert r.returncode == 2, flat(r)
    assert "target_versoin" in flat(r) and "did you mean 'target_version'?" in flat(r)
    assert mark(lab) == before
    assert journal(state)["vars"]["target_version"] == "4.9.3"
    r = bmupgrade("resume", "--yes", state=state)
    assert r.returncode == 0, flat(r)
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.3"


# --------------------------------------------------------------------------- text and signals

BRACKETS = ("  - id: passive-stopped\n",
            "  - id: check-etc\n"
            "    title: Compare [/etc/bm] with the backup\n"
            "    manual: Compare the files under [/etc/bm] and [bold]/etc/bm-hps[/bold] with the backup.\n\n"
            "  - id: passive-stopped\n")


def test_a_manual_step_text_with_brackets_is_shown_as_written(lab, tmp_path):
    """Why: a manual step's text containing `[/etc/bm]` crashed the run (rich MarkupError) with
    the journal left `running` and no HA banner. At a terminal: the text is shown as written;
    answering "No" stops with HA off (exit 5, banner, journal aborted); resume --ack goes on."""
    rb = variant(tmp_path, "brackets.yaml", BRACKETS)
    state = tmp_path / "s"
    p = spawn("run", rb, "-i", str(lab.inventory_path), "--state-dir", str(state), cwd=tmp_path)
    for prompt in ("Is this done", "Is this done", "Proceed"):  # backup, prepare, ha-off
        p.expect(prompt)
        p.send(ENTER)
    p.expect("Compare the files under")
    p.expect("Is this done")
    p.send(DOWN + ENTER)  # No — stop here
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 5
    shown = screen(tmp_path)
    assert "[check-etc] Compare [/etc/bm] with the backup" in shown
    assert "Compare the files under [/etc/bm] and [bold]/etc/bm-hps[/bold] with the backup." in shown
    assert "HA handling is OFF" in shown and "internal error" not in shown
    j = journal(state)
    assert j["status"] == "aborted" and j["steps"]["check-etc"]["state"] == "pending" and j["ha"]["state"] == "off"
    assert j["steps"]["packages"]["state"] == "done" and not lab.node("bm1").calls("bm-cli setup")
    r = bmupgrade("resume", "--yes", "--ack", "check-etc", state=state)
    assert r.returncode == 0, flat(r)
    assert "Compare [/etc/bm] with the backup [check-etc]" in flat(r)
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_mid_step_let_the_command_finish(lab, tmp_path, sig):
    """Why: SIGTERM (a scheduler) and SIGHUP (a dropped session) killed the run mid-step. Now
    the command finishes and is recorded, the run stops at the next safe point: exit 130 (it
    was interrupted; the HA-off banner says how to restore HA), journal `interrupted`, the
    cluster lock released, the HA-off marker kept; the printed resume command finishes."""
    state = tmp_path / "s"
    lab.fault("hang", node="bm1", command="bm-cli setup", seconds=2)
    p = _popen_run(lab, state)
    _wait_started(lab, "bm1", "bm-cli setup")
    p.send_signal(sig)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out
    name = {signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}[sig]
    text = one_line(out)
    assert f"{name}: the running command is let finish, then the run stops at a safe point" in text
    assert f"Stopped by {name} at a safe point (after 'post-install')" in text
    assert "HA handling is OFF" in text
    j = journal(state)
    e = j["steps"]["post-install"]["nodes"]["bm1"]
    assert e["state"] == "done" and e["exit_code"] == 0
    assert lab.node("bm1").calls("bm-cli setup")[0]["exit"] == 0
    assert j["status"] == "interrupted" and j["steps"]["config-sync"]["state"] == "pending"
    assert j["owner"]["pid"] == p.pid and j["ha"]["state"] == "off"
    for n in ("bm1", "bm2"):
        assert sorted(f.name for f in lab.node(n).state_dir.iterdir()) == ["ha-off"]  # lock released
    restore = next(c for c in printed_commands(out, "resume"))
    assert restore == f"bmupgrade resume {j['run_id']} --state-dir {state}"
    r = run_printed(restore + " --yes")
    assert r.returncode == 0, flat(r)
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1 and not lab.node("bm1").calls("bm-cli setup")[1:]
    assert journal(state)["status"] == "succeeded"


def test_sigterm_before_ha_off_stops_with_ha_on(lab, tmp_path):
    """SIGTERM while prefetch downloads (HA still on): it finishes, the run stops before ha-off
    (exit 130, no HA banner, no marker), and resume completes."""
    state = tmp_path / "s"
    lab.fault("hang", node="bm2", command="apt-get install --download-only", seconds=2)
    p = _popen_run(lab, state)
    _wait_started(lab, "bm2", "apt-get install")
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out
    assert "Stopped by SIGTERM at a safe point (after 'prefetch')" in one_line(out)
    assert "HA handling is" not in out
    j = journal(state)
    assert j["steps"]["prefetch"]["state"] == "done" and j["steps"]["ha-off"]["state"] == "pending"
    for n in ("bm1", "bm2"):
        assert list(lab.node(n).state_dir.iterdir()) == []
    r = bmupgrade("resume", "--yes", state=state)
    assert r.returncode == 0, flat(r)
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.3"


def test_ctrl_c_in_a_prompt_releases_the_remote_lock(lab, tmp_path):
    """Why: Ctrl-C in a prompt kept the remote lock. At the ha-on confirmation, Ctrl-C: exit 130
    (HA off: the banner says how to restore it), nothing was in flight, so the cluster lock is
    released (the HA-off marker stays); resume finishes."""
    state = tmp_path / "s"
    p = spawn("run", PACEMAKER, "-i", str(lab.inventory_path), "--state-dir", str(state), cwd=tmp_path)
    for prompt in ("Is this done", "Is this done", "Proceed", "Proceed"):  # backup, prepare, ha-off, post-install
        p.expect(prompt)
        p.send(ENTER)
    p.expect("Turn HA handling back on")
    p.expect("Proceed")
    p.sendcontrol("c")
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 130
    shown = screen(tmp_path)
    assert "Interrupted. Nothing was in flight." in shown and "HA handling is OFF" in shown
    j = journal(state)
    assert j["status"] == "interrupted" and j["steps"]["ha-on"]["state"] == "pending"
    assert j["steps"]["config-sync"]["state"] == "done" and j["ha"]["state"] == "off"
    for n in ("bm1", "bm2"):
        assert sorted(f.name for f in lab.node(n).state_dir.iterdir()) == ["ha-off"]
    r = bmupgrade("resume", "--yes", state=state)
    assert r.returncode == 0, flat(r)
    assert lab.cluster_state()["properties"].get(MAINT) == "false"


def test_ctrl_c_in_json_mode_stops_cleanly(lab, tmp_path):
    """Why: Ctrl-C in --json mode deadlocked (the handler took the reporter's lock). Now: the
    command finishes, the run stops at the safe point (exit 130) and every line is JSON."""
    state = tmp_path / "s"
    lab.fault("hang", node="bm1", command="bm-cli setup", seconds=2)
    p = subprocess.Popen([sys.executable, "-m", "bmupgrade", "run", PACEMAKER, "-i", str(lab.inventory_path),
                          "--yes", "--json", "--ack", "backup,prepare", "--state-dir", str(state)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "NO_COLOR": "1"})
    _wait_started(lab, "bm1", "bm-cli setup")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, out + err
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert events and "Stopped by Ctrl-C at a safe point (after 'post-install')" in json.dumps(events)
    j = journal(state)
    assert j["status"] == "interrupted" and j["steps"]["post-install"]["state"] == "done"
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1


def test_a_rollback_killed_midway_never_goes_forward_on_resume(lab, tmp_path):
    """The packages step fails and the unattended policy rolls back; the process is killed as
    the rollback starts undoing packages. `bmupgrade resume` must not take the run forward
    again (it did: a dead owner made the run resumable before its direction was looked at):
    refused, exit 2, nothing sent; `bmupgrade status` says rollback continues, and the
    rollback command the refusal prints finishes it."""
    import re

    from tests.e2e import ledger, one_line, run_printed, version

    state = tmp_path / "s"
    lab.fault("fail", node="bm2", command="apt-get install -y !--download-only", exit_code=100, times=1)
    r = run_upgrade(lab, state, "--on-failure", "rollback", env={"BMUPGRADE_CRASH_AT": "rollback-started:packages"})
    lab.clear_faults()
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    j = journal(state)
    assert j["status"] == "running" and j["direction"] == "rollback"
    status = one_line(bmupgrade("status", state=state, check_rc=0).stdout)
    assert "`bmupgrade rollback` continues" in status and "`bmupgrade resume` continues" not in status
    before = {n: len(ledger(lab, n)) for n in ("bm1", "bm2")}
    r = bmupgrade("resume", "--yes", "--ack", "backup,prepare", state=state)
    out = one_line(r.stdout + r.stderr)
    assert r.returncode == 2 and "was being rolled back: it never goes forward again" in out, out
    assert {n: len(ledger(lab, n)) for n in ("bm1", "bm2")} == before
    finish = re.search(r"`(bmupgrade rollback [^`]+)`", out).group(1)
    r = run_printed(finish + " --yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert journal(state)["status"] == "rolled-back" and version(lab, "bm1") == version(lab, "bm2") == "4.9.2"
