"""Issue 14: bad input is refused (exit 2, located), never ignored — through the real CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from bmupgrade.cli import app
from bmupgrade.runbook import load_runbook, unknown_step_refs
from tests.e2e import PACEMAKER, bmupgrade, journal, run_upgrade
from tests.runbook_samples import MINIMAL

runner = CliRunner()

GOOD_CLUSTER = """\
cluster:
  public_ip: 192.0.2.10
  nodes:
    - {name: bm1, host: 127.0.0.11, port: 2201}
    - {name: bm2, host: 127.0.0.12, port: 2202}
"""


def _errors(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("bmupgrade:")]


@pytest.mark.parametrize("body, line, col, got", [
    ("# lab\ncluster: [1, 2]\n", 2, 10, "got a list"),
    ("# lab\ncluster: \"prod\"\n", 2, 10, "got text 'prod'"),
    ("# lab\ncluster:\n", 2, 1, "got nothing"),
    (GOOD_CLUSTER + "vars: \"x\"\n", 6, 7, "vars: expected a mapping"),
    (GOOD_CLUSTER + "hosts: [a]\n", 6, 1, "unknown key 'hosts'"),
])
def test_malformed_inventory_is_exit_2_at_its_line(tmp_path, body, line, col, got):
    inv = tmp_path / "inventory.yaml"
    inv.write_text(body)
    r = runner.invoke(app, ["validate", PACEMAKER, "-i", str(inv)])
    assert r.exit_code == 2, r.output
    errors = _errors(r.output)
    assert errors and errors[0].startswith(f"bmupgrade: {inv}:{line}:{col}: "), r.output
    assert got in r.output and "ok (" not in r.output


def test_a_good_inventory_still_overrides_the_cluster(tmp_path):
    inv = tmp_path / "inventory.yaml"
    inv.write_text(GOOD_CLUSTER.replace("2201", "2999"))
    rb_path = tmp_path / "rb.yaml"
    rb_path.write_text(MINIMAL)
    assert load_runbook(rb_path, inventory=inv).cluster.nodes[0].port == 2999


HUGE = "9" * 5000


@pytest.mark.parametrize("where, text", [
    ("runbook version", MINIMAL.replace("version: 1", f"version: {HUGE}")),
    ("step timeout", MINIMAL.replace("timeout: 45m", f"timeout: {HUGE}")),
    ("a variable", MINIMAL.replace('target_version: "4.9.3"', f"target_version: {HUGE}")),
    ("hexadecimal port", MINIMAL.replace("port: 2201", "port: 0x" + "f" * 5000)),
])
def test_integers_past_pythons_digit_limit_are_exit_2_located(tmp_path, where, text):
    path = tmp_path / "rb.yaml"
    path.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if len(ln) > 4000)
    r = subprocess.run([sys.executable, "-m", "bmupgrade", "validate", str(path)], capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=60)  # a real process, no TTY
    assert r.returncode == 2, (where, r.stdout, r.stderr)
    assert f"{path}:{line}:" in r.stderr and "4300 digits" in r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr


def test_unknown_step_refs_names_the_closest_id():
    rb_ids = ["ha-off", "packages", "post-install", "ha-on"]
    assert unknown_step_refs(rb_ids, ["packages"], "--rerun") == []
    [p] = unknown_step_refs(rb_ids, ["pakages"], "--rerun")
    assert p.startswith("--rerun pakages:") and "did you mean 'packages'?" in p
    [p] = unknown_step_refs(rb_ids, ["zzz"], "--assume-done")
    assert "steps are: ha-off, packages, post-install, ha-on" in p
    assert unknown_step_refs(rb_ids, ["all"], "--ack", manual=["backup"]) == []
    [p] = unknown_step_refs(rb_ids, ["ha-off"], "--ack", manual=["backup"])
    assert "not a manual step" in p and "backup" in p


def test_run_with_an_unknown_ack_is_exit_2_before_anything(lab, tmp_path):
    state = tmp_path / "state"
    r = bmupgrade("run", PACEMAKER, "-i", str(lab.inventory_path), "--yes", "--ack", "backpu,prepare",
                  state=state)
    assert r.returncode == 2, r.stderr
    assert "--ack backpu: no step of this runbook has this id; did you mean 'backup'?" in r.stderr
    assert not (state / "runs").exists() or not list((state / "runs").glob("*.json"))
    assert lab.node("bm1").calls() == [] and lab.node("bm2").calls() == []


def test_ack_in_an_interactive_run_is_refused_not_ignored(lab, tmp_path):
    r = bmupgrade("run", PACEMAKER, "-i", str(lab.inventory_path), "--ack", "backup", state=tmp_path / "s")
    assert r.returncode == 2 and "--ack" in r.stderr and "--yes" in r.stderr


def test_resume_with_an_unknown_rerun_or_assume_done_is_exit_2(lab, tmp_path):
    state = tmp_path / "state"
    r = run_upgrade(lab, state, env={"BMUPGRADE_CRASH_AT": "started:packages"})
    assert r.returncode != 0
    run_id = journal(state)["run_id"]
    calls = len(lab.node("bm1").calls())
    for flag in ("--rerun", "--assume-done"):
        r = bmupgrade("resume", run_id, "--yes", flag, "pakcages", state=state)
        assert r.returncode == 2, r.stderr
        assert f"{flag} pakcages: no step of this runbook has this id; did you mean 'packages'?" in r.stderr
    # a real step, but nothing to decide about: refused, not silently ignored
    r = bmupgrade("resume", run_id, "--yes", "--rerun", "ha-off", "--assume-done", "packages,refresh", state=state)
    assert r.returncode == 2, r.stderr
    assert "--rerun ha-off: step 'ha-off' is done in this run" in r.stderr
    assert "--assume-done packages: step 'packages' is started and resume runs its verify command" in r.stderr
    assert "--assume-done refresh: step 'refresh' is done and its outcome is not unknown" in r.stderr
    assert len(lab.node("bm1").calls()) == calls  # nothing was sent: not even a preflight
    assert journal(state, run_id)["steps"]["packages"]["state"] == "started"
