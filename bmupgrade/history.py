"""Measured step durations of earlier runs, for `--deadline` (issue 15).

A small JSON index, ``<state_dir>/history.json``, updated once at the end of each run instead
of parsing every old journal at start-up: reading it costs the same whether the state dir holds
3 runs or 3000. Per runbook name, per step id, the last ``KEEP`` runs' measured durations per
node, and whether the step was retried in that run::

    {"version": 1,
     "runbooks": {"BlueMind HA upgrade": {"updated": 1764420000,
                                          "steps": {"packages": [{"t": {"bm1": 41.2, "bm2": 40.8},
                                                                  "retried": false}, ...]}}}}

A step's expected duration is the median, over the kept runs, of its slowest node in each run
(what `runner.step_history` computed from the journals). The file is advisory: a missing or
unreadable index gives no estimates (the deadline check then has no history, as on a first
run); it is never a reason to fail a run.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Iterable, Mapping

FILENAME = "history.json"
VERSION = 1
KEEP = 20  # runs kept per step
MAX_RUNBOOKS = 100  # runbook names kept (least recently updated dropped first)


def path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / FILENAME


def _read(state_dir: str | os.PathLike) -> dict:
    try:
        data = json.loads(path(state_dir).read_bytes())
    except (OSError, ValueError):
        return {"version": VERSION, "runbooks": {}}
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("runbooks"), dict):
        return {"version": VERSION, "runbooks": {}}
    return data


class _Locked:
    """An exclusive lock on ``history.lock`` for the read-modify-write (two runs of different
    clusters may finish at the same moment in one state dir)."""

    def __init__(self, state_dir: Path):
        self.file = state_dir / "history.lock"

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the flock


def _clean(durations: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for sid, per_node in durations.items():
        t = {str(node): round(float(d), 3) for node, d in per_node.items()
             if isinstance(d, (int, float)) and not isinstance(d, bool) and d >= 0}
        if t:
            out[str(sid)] = t
    return out


def record(state_dir: str | os.PathLike, runbook_name: str,
           durations: Mapping[str, Mapping[str, float]], retried: Iterable[str] = ()) -> None:
    """Add one run's measured durations: ``{step_id: {node: seconds}}`` for the steps that
    finished (done) on those nodes; ``retried``: the step ids that needed more than one attempt.
    Keeps the last KEEP runs per step; the file is replaced atomically (write, fsync, rename)."""
    new = _clean(durations)
    if not new:
        return
    retried = set(retried)
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    with _Locked(d):
        data = _read(d)
        book = data["runbooks"].setdefault(runbook_name, {"steps": {}})
        steps = book.setdefault("steps", {})
        for sid, t in new.items():
            runs = steps.get(sid) if isinstance(steps.get(sid), list) else []
            runs.append({"t": t, "retried": sid in retried})
            steps[sid] = runs[-KEEP:]
        book["updated"] = int(time.time())
        books = data["runbooks"]
        if len(books) > MAX_RUNBOOKS:
            by_age = sorted(books, key=lambda k: books[k].get("updated") or 0)
            for name in by_age[: len(books) - MAX_RUNBOOKS]:
                del books[name]
        from bmupgrade.journal import atomic_write

        atomic_write(path(d), json.dumps(data, separators=(",", ":")).encode())


def medians(state_dir: str | os.PathLike, runbook_name: str) -> dict[str, float]:
    """Expected duration per step id: the median over the kept runs of the slowest node's time.
    Empty when there is no history (or it cannot be read)."""
    book = _read(state_dir)["runbooks"].get(runbook_name)
    if not isinstance(book, dict) or not isinstance(book.get("steps"), dict):
        return {}
    out: dict[str, float] = {}
    for sid, runs in book["steps"].items():
        if not isinstance(runs, list):
            continue
        slowest = [max(r["t"].values()) for r in runs
                   if isinstance(r, dict) and isinstance(r.get("t"), dict) and r["t"]
                   and all(isinstance(v, (int, float)) for v in r["t"].values())]
        if slowest:
            out[sid] = statistics.median(slowest)
    return out


def from_journal(data: dict) -> tuple[dict[str, dict[str, float]], set[str]]:
    """``(durations, retried)`` for `record` from a journal's data (the engine may pass its
    own bookkeeping instead): done nodes with a numeric duration; retried if attempts > 1."""
    durations: dict[str, dict[str, float]] = {}
    retried: set[str] = set()
    for sid, entry in (data.get("steps") or {}).items():
        nodes = entry.get("nodes") or {}
        t = {n: v["duration"] for n, v in nodes.items()
             if v.get("state") == "done" and isinstance(v.get("duration"), (int, float))}
        if t:
            durations[sid] = t
        if any((v.get("attempts") or 1) > 1 for v in nodes.values()):
            retried.add(sid)
    return durations, retried
