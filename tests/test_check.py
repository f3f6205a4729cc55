"""`bmupgrade check`: the read-only preflight against the live lab, days before the window."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e import PACEMAKER, is_change, ledger

def check(lab, *args, cwd):
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "BMUPGRADE_STATE_DIR": str(cwd / "s")}
    return subprocess.run([sys.executable, "-m", "bmupgrade", "check", PACEMAKER, "-i", str(lab.inventory_path),
                           *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120)


def _changes(lab):
    return [line for n in ("bm1", "bm2") for line in ledger(lab, n) if is_change(line)]


def test_check_ready_then_not_ready_changes_nothing_and_takes_no_lock(lab, tmp_path):
    r = check(lab, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ready for the upgrade" in r.stdout and "[stonith-enabled]" in r.stdout
    lab.fault("stonith-disabled")
    r = check(lab, "-f", "json", cwd=tmp_path)
    assert r.returncode == 3
    doc = json.loads(r.stdout)  # one JSON document, nothing else on stdout
    assert doc["ready"] is False and doc["checks"]["stonith-enabled"]["ok"] is False
    assert "split brain" in doc["checks"]["stonith-enabled"]["why"]
    assert doc["checks"]["one-vip-holder"]["ok"] is True
    assert _changes(lab) == []
    assert not (tmp_path / "s").exists()  # no journal, no local lock
    inventory = lab.inventory_path.read_text()
    for node in ("bm1", "bm2"):  # no remote lock, no marker written on the nodes
        state_dir = Path(inventory.split(f"name: {node},")[1].split("state_dir: ")[1].split("}")[0])
        assert not (state_dir / "lock").exists() and not (state_dir / "ha-off").exists()
