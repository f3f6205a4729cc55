"""Issue 14: every printed next command works when pasted, as printed, into the same shell."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pexpect

from bmupgrade.hints import Context, command, qualify, ssh_command
from bmupgrade.runbook import load_runbook
from tests.e2e import PACEMAKER, ROOT, version

ENTER, DOWN = "\r", "\x1b[B"
PKG_FAULT = "apt-get install -y !--download-only"  # the packages step (not the simulation, not prefetch)
RID = "20261129-134000-ab12"


def _shell_env(tmp_path: Path) -> dict:
    """The operator's shell: bmupgrade on PATH, an empty default state dir (a hint that forgets
    --state-dir finds nothing there), an empty ~/.ssh."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(home),
           "BMUPGRADE_STATE_DIR": str(tmp_path / "default-state"), "NO_COLOR": "1", "TERM": "xterm",
           "PROMPT_TOOLKIT_NO_CPR": "1", "COLUMNS": "120"}
    env.pop("CI", None)
    return env


def test_commands_carry_state_dir_and_inventory_quoted():
    ctx = Context.of("/srv/my state", "/etc/bm/inv.yaml")
    assert command(ctx, "resume", RID) == f"bmupgrade resume {RID} --state-dir '/srv/my state'"
    assert command(ctx, "run", "rb.yaml") == "bmupgrade run rb.yaml --state-dir '/srv/my state' -i /etc/bm/inv.yaml"
    text = f"Fix it, then `bmupgrade resume {RID}` retries it (or `bmupgrade rollback {RID}`); `bmupgrade runs`"
    assert qualify(ctx, text) == (f"Fix it, then `bmupgrade resume {RID} --state-dir '/srv/my state'` retries it (or "
                                  f"`bmupgrade rollback {RID} --state-dir '/srv/my state'`); "
                                  "`bmupgrade runs --state-dir '/srv/my state'`")
    assert qualify(Context(), text) == text


def test_the_ssh_hint_reaches_the_node_as_bmupgrade_does(lab, tmp_path):
    rb = load_runbook(PACEMAKER, inventory=lab.inventory_path)
    hint = ssh_command(rb, "bm2")
    assert "-i" in shlex.split(hint) and "StrictHostKeyChecking=yes" in hint
    r = subprocess.run(hint + " hostname", shell=True, capture_output=True, text=True, timeout=60,
                       env=_shell_env(tmp_path), stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and r.stdout.strip() == "bm2", r.stderr


def _answer_until_eof(p: pexpect.spawn, choice_keys: dict[str, str]) -> None:
    prompts = list(choice_keys)
    while True:
        i = p.expect([*prompts, pexpect.EOF], timeout=120)
        if i == len(prompts):
            return
        p.send(choice_keys[prompts[i]])


def test_printed_hints_work_as_printed(lab, tmp_path):
    env = _shell_env(tmp_path)
    state = tmp_path / "my state"  # a space: the hints must quote it
    lab.fault("fail", node="bm2", command=PKG_FAULT, exit_code=100, times=1)
    p = pexpect.spawn("bmupgrade", ["run", PACEMAKER, "-i", str(lab.inventory_path), "--state-dir", str(state)],
                      env=env, encoding="utf-8", timeout=120, dimensions=(50, 120), cwd=str(ROOT))
    p.logfile_read = open(tmp_path / "terminal.log", "w")
    for prompt in ("Is this done", "Is this done", "Proceed"):
        p.expect(prompt)
        p.send(ENTER)
    p.expect("What now")
    p.send(DOWN * 5 + ENTER)  # How do I get a shell on that node?
    p.expect(r"(ssh [^\r\n]*)    # bm2\r?\n")
    ssh_hint = p.match.group(1)
    p.expect("What now")
    p.send(DOWN * 3 + ENTER)  # Abort
    p.expect(pexpect.EOF)
    p.close()
    printed = (tmp_path / "terminal.log").read_text()
    nexts = re.findall(r"^Next: (.*?)\r?$", printed, re.M)
    assert len(nexts) == 2 and all("--state-dir" in n for n in nexts), printed

    r = subprocess.run(ssh_hint + " hostname", shell=True, capture_output=True, text=True, env=env, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.stdout.strip() == "bm2", (ssh_hint, r.stderr)

    status_hint = nexts[0].replace(" resume ", " status ")  # same shape; status is read-only
    r = subprocess.run(status_hint, shell=True, capture_output=True, text=True, env=env, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "HA handling OFF" in r.stdout and "--state-dir" in r.stdout, r.stdout + r.stderr

    resume_hint = next(n for n in nexts if " resume " in n)
    p = pexpect.spawn("/bin/sh", ["-c", resume_hint], env=env, encoding="utf-8", timeout=120,
                      dimensions=(50, 120), cwd=str(tmp_path))
    p.logfile_read = open(tmp_path / "resume.log", "w")
    _answer_until_eof(p, {"Proceed": ENTER, "Is this done": ENTER, "What now": DOWN * 3 + ENTER})
    p.close()
    assert p.exitstatus == 0, (tmp_path / "resume.log").read_text()[-3000:]
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.3"
