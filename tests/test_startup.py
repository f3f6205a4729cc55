"""Start-up stays lean: what `--help`, `plan` and `validate` import (no timing assertions; the
numbers are in bench/run.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
