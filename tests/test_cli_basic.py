"""CLI: validate, plan (text/markdown/json), schema — via CliRunner and as a real process."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from bmupgrade.cli import app
from tests.runbook_samples import MINIMAL

runner = CliRunner()
PACEMAKER = "runbooks/bluemind-ha-pacemaker.yaml"


def test_validate_ok():
    r = runner.invoke(app, ["validate", PACEMAKER, "runbooks/bluemind-ha-keepalived.yaml"])
    assert r.exit_code == 0, r.output
    assert "bluemind-ha-pacemaker.yaml: ok" in r.output


def test_validate_bad_lists_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.replace("  - id: post-install\n    on: primary\n", "  - id: post-install\n    on: bm9\n")
                   .replace("    ha: disable\n", "    ha: disable\n    colour: red\n"))
    r = runner.invoke(app, ["validate", str(bad)])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.startswith("bmupgrade:")]
    assert len(lines) == 2 and all(f"{bad}:" in ln for ln in lines), r.output
    assert "Traceback" not in r.output


def test_plan_formats():
    r = runner.invoke(app, ["plan", PACEMAKER, "--format", "json"])
    assert r.exit_code == 0
    data = json.loads(r.output)
    steps = [a for a in data["actions"] if a["phase"] == "step"]
    assert [a["id"] for a in steps if a.get("ha") == "enable"] == ["ha-on"] and steps[-1]["id"] == "resume-cron"
    r = runner.invoke(app, ["plan", PACEMAKER, "-f", "markdown"])
    assert r.exit_code == 0 and r.output.startswith("# Change:")
    r = runner.invoke(app, ["plan", PACEMAKER])
    assert r.exit_code == 0 and "post-install" in r.output and "primary" in r.output


def test_plan_extra_var_is_quoted():
    r = runner.invoke(app, ["plan", PACEMAKER, "-f", "json", "-e", "target_version=4.9.3; rm -rf /"])
    assert r.exit_code == 0
    pkg = next(a for a in json.loads(r.output)["actions"] if a["id"] == "packages")
    assert "awk -v v='4.9.3; rm -rf /' " in pkg["nodes"]["bm1"]["run"][0]


def test_bad_extra_var():
    r = runner.invoke(app, ["plan", PACEMAKER, "-e", "novalue"])
    assert r.exit_code == 2 and "expected KEY=VALUE" in r.output


def test_schema_matches_committed_file():
    r = runner.invoke(app, ["schema"])
    assert r.exit_code == 0
    with open("schema/runbook.schema.json") as f:
        assert json.loads(r.output) == json.load(f), "run: bmupgrade schema -o schema/runbook.schema.json"


def test_bundled_runbooks_validate_against_schema():
    import jsonschema

    from bmupgrade import yamlsource

    with open("schema/runbook.schema.json") as f:
        schema = json.load(f)
    for path in (PACEMAKER, "runbooks/bluemind-ha-keepalived.yaml"):
        jsonschema.validate(yamlsource.load_file(path).data, schema)


def test_real_process(tmp_path):
    """Once as a real subprocess: exit codes and no traceback."""
    ok = subprocess.run([sys.executable, "-m", "bmupgrade", "plan", PACEMAKER, "-f", "json"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["format"] == "bmupgrade-plan/1"
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\x00\x01")
    r = subprocess.run([sys.executable, "-m", "bmupgrade", "validate", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and f"{bad}:1:1:" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "bmupgrade", "validate", str(tmp_path / "missing.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no such file" in r.stderr
