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


def is_change(line: str) -> bool:
    """A ledger line (argv joined) that changes a node: `crm_attribute ... --update` has options
    between its words, so words are matched in order, not as one substring."""
    words = line.split()
    if words[:1] == ["apt-get"] and ("-s" in words or "--simulate" in words or "--download-only" in words):
        return False  # a simulation, or a download into apt's cache: the node's packages do not change
    for c in CHANGE_COMMANDS:
        want = c.split()
        if words and words[0] == want[0] and all(w in words[1:] for w in want[1:]):
            return True
    return False


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


def run_printed(command: str, *, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a `bmupgrade ...` command exactly as the CLI printed it (no --state-dir added)."""
    import shlex

    argv = shlex.split(command)
    assert argv[0] == "bmupgrade", command
    e = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    e.pop("BMUPGRADE_CRASH_AT", None)
    return subprocess.run([sys.executable, "-m", "bmupgrade", *argv[1:]], capture_output=True, text=True,
                          timeout=timeout, env=e, stdin=subprocess.DEVNULL)


def one_line(text: str) -> str:
    """Output as one line: the per-line timestamps of no-TTY output dropped, whitespace folded
    (a message may wrap, or continue on the next timestamped line)."""
    import re

    return " ".join(re.sub(r"(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S* ", "", text).split())


def printed_commands(output: str, verb: str = "") -> list[str]:
    """Every `bmupgrade ...` command shown between backquotes or after 'Next:' / 'Restore it with:'."""
    import re

    flat = " ".join(output.split())
    found = re.findall(r"`(bmupgrade [^`]*)`", flat)
    found += [m.strip() for m in re.findall(r"(?:Next:|Restore it with:) (bmupgrade \S+ \S+(?: --state-dir \S+)?)", flat)]
    return [c for c in dict.fromkeys(found) if c.startswith("bmupgrade " + verb)]


def find_hint(output: str, verb: str, *parts: str) -> str:
    """The one printed `bmupgrade VERB ...` command containing every part (flags in any order)."""
    found = [c for c in printed_commands(output, verb) if all(p in c for p in parts)]
    assert len(found) == 1, f"{verb} {parts}: {found} in {printed_commands(output)}"
    return found[0]


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


def toggles(lab, node: str) -> list[str]:
    """The maintenance-mode updates sent to the cluster (not those on a CIB copy for a preview)."""
    return [argv(e) for e in lab.node(node).calls("crm_attribute")
            if "maintenance-mode" in e["argv"] and "--update" in e["argv"] and not e.get("cib_file")]


def version(lab, node: str) -> str:
    return lab.node(node).state()["installed"]["bm-full"]


def cluster_upgrade(lab, state: Path, *extra: str, runbook: str = PACEMAKER, **kw) -> subprocess.CompletedProcess:
    """A bundled runbook, as shipped, on a cluster lab (its nodes answer BlueMind's REST API and
    run csync2 like a site would)."""
    return run_upgrade(lab, state, *extra, runbook=runbook, **kw)
