"""The bundled runbooks: shipped in the package, usable by name, and never run with the
runbook's example address (issue 13)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from typer.testing import CliRunner

from bmupgrade import bundled
from bmupgrade.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def test_top_level_runbooks_are_the_packaged_ones():
    packaged = {p.name: p.read_bytes() for p in resources.files("bmupgrade").joinpath("runbooks").iterdir()
                if p.name.endswith(".yaml")}
    top = {p.name: p.read_bytes() for p in (ROOT / "runbooks").glob("*.yaml")}
    assert packaged and packaged == top
    assert bundled.names() == ["bluemind-ha-keepalived", "bluemind-ha-pacemaker"]


def test_runbooks_command_lists_them():
    r = runner.invoke(app, ["runbooks"])
    assert r.exit_code == 0
    for name in bundled.names():
        assert name in r.output and str(bundled.path(name)) in r.output
    assert "BlueMind HA update (keepalived)" in r.output


def test_plan_run_validate_accept_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runbooks/ here: the names resolve to the package
    inv = tmp_path / "inv.yaml"
    inv.write_text("cluster:\n  public_ip: 198.51.100.7\n  nodes:\n    - {name: a, host: a.example.net}\n"
                   "    - {name: b, host: b.example.net}\n")
    r = runner.invoke(app, ["validate", "bluemind-ha-pacemaker", "bluemind-ha-keepalived.yaml"])
    assert r.exit_code == 0 and "bluemind-ha-pacemaker: ok" in r.output, r.output
    r = runner.invoke(app, ["plan", "bluemind-ha-keepalived", "-i", str(inv), "-f", "json"])
    assert r.exit_code == 0 and "198.51.100.7" in r.output and "192.0.2.10" not in r.output
    r = runner.invoke(app, ["plan", "no-such-runbook"])
    assert r.exit_code == 2 and "no such file" in r.output
    # an existing file wins over a bundled name
    (tmp_path / "bluemind-ha-pacemaker").write_text("not: a runbook\n")
    r = runner.invoke(app, ["validate", "bluemind-ha-pacemaker"])
    assert r.exit_code == 2


def test_an_inventory_without_public_ip_is_an_error_never_the_example(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("# site\ncluster:\n  nodes:\n    - {name: a, host: a.example.net}\n    - {name: b, host: b.example.net}\n")
    for cmd in (["plan", "bluemind-ha-pacemaker", "-i", str(inv)],
                ["validate", "bluemind-ha-keepalived", "-i", str(inv)],
                ["run", "bluemind-ha-pacemaker", "-i", str(inv), "--yes", "--state-dir", str(tmp_path / "s")]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2, (cmd, r.output)
        assert f"{inv}:2:1: cluster.public_ip missing" in r.output and "192.0.2.10 is an example" in r.output
    inv.write_text("vars: {target_version: '4.9.3'}\n")
    r = runner.invoke(app, ["plan", "bluemind-ha-pacemaker", "-i", str(inv)])
    assert r.exit_code == 2 and f"{inv}:1:1: missing 'cluster:'" in r.output and "public_ip" in r.output


def test_the_runbooks_cite_their_sources():
    for name in bundled.names():
        text = bundled.path(name).read_text()
        assert "keepalived.conf(5)" in text or "crm_simulate(8)" in text
        assert "Sources" in text
