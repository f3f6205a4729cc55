"""Issue 14: help and CLI surface — what a person reads in --help and at a prompt is true."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pexpect
import pytest

from bmupgrade import __version__
from tests.e2e import ROOT

ENTER, DOWN = "\r", "\x1b[B"


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "bmupgrade", *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=60)


def test_version():
    for flag in ("--version", "-V"):
        r = cli(flag)
        assert r.returncode == 0 and r.stdout == f"bmupgrade {__version__}\n"


def test_shell_completion_is_on():
    # typed in bash, as a person would: typer finds the shell among the command's parents (the
    # test's own parents may have none, e.g. under a scheduler)
    r = subprocess.run(["bash", "-c", '"$0" -m bmupgrade --show-completion; exit $?', sys.executable],
                       capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"},
                       stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 0 and "_BMUPGRADE_COMPLETE=complete_bash" in r.stdout
    assert r.stdout.rstrip().endswith("complete -o default -F _bmupgrade_completion bmupgrade")
    assert "--install-completion" in cli("--help").stdout


@pytest.mark.parametrize("command", [["run"], ["resume"], ["rollback"], ["status"], ["plan"], ["validate"],
                                     ["runs"], ["lab", "fault"], ["lab", "up"]])
def test_help_shows_no_python_types(command):
    r = cli(*command, "--help")
    assert r.returncode == 0 and "--help" in r.stdout
    assert "<bool>" not in r.stdout and "<list[" not in r.stdout and "list[str]" not in r.stdout, r.stdout


def test_rollback_help_mentions_only_its_own_options():
    text = cli("rollback", "--help").stdout
    own = set(re.findall(r"--[a-z][a-z-]+", text))
    assert own == {"--extra-var", "--yes", "--json", "--force", "--allow-no-stonith", "--state-dir", "--help"}, own


def test_lab_fault_help_does_not_send_you_back_to_itself():
    text = cli("lab", "fault", "--help").stdout
    assert "lab fault --help" not in text and "clear" in text


def _spawn(tmp_path, *args):
    env = {**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1", "NO_COLOR": "1", "COLUMNS": "120", "TERM": "xterm"}
    env.pop("CI", None)
    p = pexpect.spawn(sys.executable, ["-m", "bmupgrade", *args], env=env, encoding="utf-8", timeout=60,
                      dimensions=(50, 120), cwd=str(ROOT))
    p.logfile_read = open(tmp_path / "terminal.log", "w")
    return p


MANUAL = """\
version: 1
name: markup test
cluster:
  public_ip: 192.0.2.10
  nodes:
    - {name: bm1, host: 127.0.0.1}
    - {name: bm2, host: 127.0.0.2}
steps:
  - id: backup
    title: Take the [backup] first
    manual: "Copy [/etc/bm] and [bold]everything[/bold] to the NAS"
  - id: hello
    on: bm1
    run: "true"
"""


def test_a_manual_step_shows_its_brackets_as_written(lab, tmp_path):
    rb = tmp_path / "rb.yaml"
    rb.write_text(MANUAL)
    p = _spawn(tmp_path, "run", str(rb), "-i", str(lab.inventory_path), "--state-dir", str(tmp_path / "s"))
    p.expect("Is this done")
    shown = p.before
    p.send(DOWN + ENTER)  # No — stop here
    p.expect(pexpect.EOF)
    p.close()
    assert "MarkupError" not in shown and "internal error" not in shown
    assert "Take the [backup] first" in shown and "[backup]" in shown
    assert "Copy [/etc/bm] and [bold]everything[/bold] to the NAS" in shown
    assert not lab.node("bm1").calls("true")
