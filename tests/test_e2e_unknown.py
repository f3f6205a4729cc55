"""A command still running on its node after bmupgrade was killed is never sent a second time.

Issue 11's case: an immediate `resume --yes` after a SIGKILL re-sent a still-running package
install. Now every step command carries a tag in its environment; resume finds it in the node's
/proc and refuses to decide anything while it runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.e2e import PACEMAKER, bmupgrade, count, is_change, journal, ledger


def _kill_while_in_flight(lab, state, step):
    proc = subprocess.Popen([sys.executable, "-m", "bmupgrade", "run", PACEMAKER, "-i", str(lab.inventory_path),
                             "--yes", "--ack", "backup,prepare", "--state-dir", str(state)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env={**os.environ, "NO_COLOR": "1"})
    try:
        for _ in range(600):  # until the step is in flight
            if _started(state, step):
                break
            time.sleep(0.05)
        assert _started(state, step)
        time.sleep(0.5)  # the command has reached its node
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _started(state, step):
    try:
        nodes = journal(state)["steps"][step]["nodes"]
    except (StopIteration, IndexError, FileNotFoundError, KeyError):
        return False
    return bool(nodes) and all(e["state"] == "started" for e in nodes.values())


def test_resume_after_sigkill_never_decides_while_post_install_still_runs(lab, tmp_path):
    state = tmp_path / "state"
    lab.fault("hang", command="bm-cli setup", seconds=20)
    _kill_while_in_flight(lab, state, "post-install")  # (the lab's ledger records a call when it ends)
    r = bmupgrade("resume", "--yes", "--rerun", "post-install", state=state)  # even when asked to re-run it
    assert r.returncode == 5, r.stdout + r.stderr  # stopped, HA still off: 5 and the restore command
    assert "still running (pid" in r.stdout and "Restore it with" in r.stdout, r.stdout
    assert journal(state)["steps"]["post-install"]["nodes"]["bm1"]["state"] == "unknown"
    for _ in range(400):  # the first copy ends on its own (the ledger records a call when it ends)
        if count(lab, "bm1", "bm-cli setup upgrade"):
            break
        time.sleep(0.1)
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1  # and it was the only one
    r = bmupgrade("resume", "--yes", state=state)
    assert r.returncode == 5 and "--assume-done post-install" in r.stdout  # no verify: the operator decides
    r = bmupgrade("resume", "--yes", "--assume-done", "post-install", state=state)
    assert r.returncode == 0, r.stdout + r.stderr
    assert count(lab, "bm1", "bm-cli setup upgrade") == 1


def test_resume_after_sigkill_during_the_install_sends_nothing_while_dpkg_is_busy(lab, tmp_path):
    state = tmp_path / "state"
    lab.fault("slow-apt", download=0, install=15)
    _kill_while_in_flight(lab, state, "packages")
    installs = lambda node: sum(1 for line in ledger(lab, node)  # noqa: E731 (the install itself: no -s, no download)
                                if line.startswith("apt-get") and "install" in line and is_change(line))
    r = bmupgrade("resume", "--yes", state=state)
    # the preflight's dpkg-lock check (always re-run) refuses first; the tag check is the second line
    assert r.returncode == 5, r.stdout + r.stderr
    assert "dpkg-lock-free" in r.stdout or "still running (pid" in r.stdout
    for _ in range(400):  # the first installs end on their own (the ledger records a call when it ends)
        if all(installs(n) for n in ("bm1", "bm2")):
            break
        time.sleep(0.1)
    assert {n: installs(n) for n in ("bm1", "bm2")} == {"bm1": 1, "bm2": 1}
    r = bmupgrade("resume", "--yes", state=state)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {n: installs(n) for n in ("bm1", "bm2")} == {"bm1": 1, "bm2": 1}  # verify settled it: sent once
