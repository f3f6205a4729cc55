"""Start-up stays lean: what `--help`, `plan` and `validate` import (no timing assertions; the
numbers are in bench/run.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BUNDLED = Path(__file__).resolve().parent.parent / "runbooks" / "bluemind-ha-pacemaker.yaml"
PROBE = """
import json, sys
sys.argv = ["bmupgrade"] + json.loads(sys.argv[1])
from bmupgrade.cli import main
try:
    main()
except SystemExit:
    pass
sys.stdout.flush()
print("\\nMODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr)
"""
HEAVY = {"fabric", "paramiko", "questionary", "invoke", "importlib.metadata", "markdown_it", "rich.markdown",
         "rich.traceback"}


def imported(*args: str) -> tuple[set[str], str]:
    r = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(args))], capture_output=True, text=True,
                       timeout=120)
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("MODULES "))
    return set(json.loads(line[len("MODULES "):])), r.stdout


def test_help_imports_nothing_heavy():
    mods, out = imported("--help")
    assert "Usage" in out and "validate" in out
    assert not mods & HEAVY, mods & HEAVY


def test_plan_and_validate_import_no_ssh_stack_and_no_plugin_scan():
    for args in (["plan", str(BUNDLED)], ["validate", str(BUNDLED)]):
        mods, out = imported(*args)
        assert not mods & HEAVY, (args, mods & HEAVY)
        assert "ha-off" in out or ": ok" in out


def test_piped_plan_is_plain_text_without_rich():
    mods, out = imported("plan", str(BUNDLED))  # stdout is a pipe here
    assert not any(m == "rich" or m.startswith("rich.") for m in mods)
    assert "[ha-off]" in out and "$ crm_attribute" in out and "│" not in out


def test_help_stand_ins_give_the_real_classes():
    code = """
import sys
import bmupgrade.cli
import typer.rich_utils as r
m = r.Markdown("**x**")
try:
    raise ValueError("x")
except ValueError as e:
    tb = r.Traceback.from_exception(type(e), e, e.__traceback__)
print(type(m).__module__, type(tb).__module__)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["rich.markdown", "rich.traceback"], r.stderr


def test_invoke_mock_context_still_gets_the_real_mock():
    code = """
import sys
import bmupgrade.cli
import bmupgrade.transport.ssh
before = "unittest.mock" in sys.modules
from invoke import MockContext, Result
mc = MockContext(run={"x": Result("out")})
print(before, mc.run("x").stdout, type(mc.run).__module__)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["False", "out", "unittest.mock"], r.stderr


# --------------------------------------------------------------------------- the help cache

ENTRY_PROBE = """
import json, sys
sys.argv = ["bmupgrade"] + json.loads(sys.argv[1])
from bmupgrade.entry import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
sys.stdout.flush()
print("\\nTYPER " + json.dumps("typer" in sys.modules) + " EXIT " + str(code), file=sys.stderr)
"""


def entry(tmp_path, *args, **env) -> tuple[str, bool, int]:
    """stdout, whether typer was imported, exit code — through the real entry point."""
    e = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "COLUMNS": "100"}
    e.pop("BMUPGRADE_HELP_CACHE", None)
    e.update(env)
    r = subprocess.run([sys.executable, "-c", ENTRY_PROBE, json.dumps(list(args))], capture_output=True,
                       text=True, timeout=120, env=e, stdin=subprocess.DEVNULL)
    tail = r.stderr.strip().splitlines()[-1].split()
    return r.stdout, tail[1] == "true", int(tail[3])


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["lab", "fault", "-h"], ["plan", "-h"]])
def test_a_help_screen_seen_before_comes_without_typer_and_is_the_same(tmp_path, args):
    first, typer_1, rc1 = entry(tmp_path, *args)
    second, typer_2, rc2 = entry(tmp_path, *args)
    uncached, _, _ = entry(tmp_path, *args, BMUPGRADE_HELP_CACHE="0")
    assert (rc1, rc2) == (0, 0) and typer_1 and not typer_2
    assert first == second == uncached and "Usage: bmupgrade" in first


def test_the_help_cache_follows_the_terminal_width_and_the_words(tmp_path):
    narrow, _, _ = entry(tmp_path, "run", "--help", COLUMNS="70")
    wide, typer_used, _ = entry(tmp_path, "run", "--help", COLUMNS="140")
    assert typer_used and narrow != wide
    assert max(map(len, narrow.splitlines())) <= 70 < max(map(len, wide.splitlines()))
    other, typer_used, _ = entry(tmp_path, "resume", "--help", COLUMNS="140")
    assert typer_used and "Usage: bmupgrade resume" in other


def test_not_a_bare_help_request_goes_to_typer(tmp_path):
    (tmp_path / "rb.yaml").write_text("version: 1\n")
    for _ in range(2):
        out, typer_used, rc = entry(tmp_path, "plan", str(tmp_path / "rb.yaml"), "--help")
        assert typer_used and rc == 0 and "Usage: bmupgrade plan" in out
    out, typer_used, rc = entry(tmp_path, "nosuchcommand", "--help")
    out, typer_used, rc = entry(tmp_path, "nosuchcommand", "--help")
    assert typer_used and rc == 2  # an error is never cached


def test_help_works_without_a_usable_cache_directory(tmp_path):
    (tmp_path / "file").write_text("")
    for _ in range(2):
        out, typer_used, rc = entry(tmp_path, "--help", XDG_CACHE_HOME=str(tmp_path / "file"))
        assert rc == 0 and typer_used and "Usage: bmupgrade" in out


def test_help_at_a_terminal_is_served_from_the_cache_in_colour(tmp_path):
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "TERM": "xterm-256color"}
    for k in ("NO_COLOR", "BMUPGRADE_HELP_CACHE", "COLUMNS"):
        env.pop(k, None)
    shown = []
    for _ in range(2):
        p = pexpect.spawn(sys.executable, ["-m", "bmupgrade", "run", "--help"], env=env, dimensions=(40, 90),
                          timeout=60)
        shown.append(p.read())
        p.close()
        assert p.exitstatus == 0
    assert shown[0] == shown[1] and b"\x1b[" in shown[0] and b"Usage:" in shown[0]
    assert len(os.listdir(tmp_path / "cache" / "bmupgrade" / "help")) == 1


def test_paramiko_gets_its_version_without_importlib_metadata():
    code = """
import sys
import bmupgrade.cli
import bmupgrade.transport.ssh
import paramiko
before = "importlib.metadata" in sys.modules
import importlib.metadata
print(before, paramiko.__version__ == importlib.metadata.version("paramiko"))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["False", "True"], r.stderr
