"""Helpers for end-to-end tests: drive the real `bmupgrade` CLI against a lab."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACEMAKER = str(ROOT / "runbooks" / "bluemind-ha-pacemaker.yaml")
KEEPALIVED = str(ROOT / "runbooks" / "bluemind-ha-keepalived.yaml")
CHANGE_COMMANDS = ("bm-cli setup upgrade", "crm_attribute --update", "apt-get install", "bmctl stop",
                   "rsync", "systemctl stop", "systemctl start")


def bmupgrade(*args: str, state: Path, env: dict | None = None, timeout: float = 120,
              check_rc: int | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a real process (no TTY, like a scheduler)."""
    e = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    e.pop("BMUPGRADE_CRASH_AT", None) if not env or "BMUPGRADE_CRASH_AT" not in env else None
    r = subprocess.run([sys.executable, "-m", "bmupgrade", *args, "--state-dir", str(state)],
                       capture_output=True, text=True, timeout=timeout, env=e, stdin=subprocess.DEVNULL)
    if check_rc is not None:
        assert r.returncode == check_rc, f"exit {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    return r


def run_upgrade(lab, state: Path, *extra: str, runbook: str = PACEMAKER, **kw) -> subprocess.CompletedProcess:
    return bmupgrade("run", runbook, "-i", str(lab.inventory_path), "--yes", "--ack", "backup,prepare",
                     *extra, state=state, **kw)


def journal(state: Path, run_id: str | None = None) -> dict:
    from bmupgrade.journal import Journal

    runs = sorted((state / "runs").glob("*.journal.jsonl"))
    path = next(p for p in runs if run_id in p.name) if run_id else runs[-1]
    return Journal.load(path).data


def argv(entry: dict) -> str:
    return " ".join(entry["argv"])


def ledger(lab, node: str) -> list[str]:
    return [argv(e) for e in lab.node(node).calls()]


def count(lab, node: str, needle: str) -> int:
    return sum(needle in line for line in ledger(lab, node))


def version(lab, node: str) -> str:
    return lab.node(node).state()["installed"]["bm-full"]
