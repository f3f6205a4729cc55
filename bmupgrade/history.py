"""Measured step durations of earlier runs, for `--deadline` (issue 15).

One small append-only file per runbook name, ``<state_dir>/history/<hash of the name>.jsonl``:
the end of each run appends one line (its finished steps' durations per node, and whether a
step was retried), so recording costs the same whether the state dir holds 3 runs or 3000,
and a runbook's file never grows past ``2 * KEEP`` lines (then its last ``KEEP`` are kept).
It is read only by a run with `--deadline`. A line::

    {"runbook": "BlueMind HA upgrade", "time": 1764420000,
     "steps": {"packages": {"t": {"bm1": 41.2, "bm2": 40.8}, "retried": false}, ...}}

A step's expected duration is the median, over the kept runs that finished it, of its slowest
node in each run (what `runner.step_history` computed from the journals). The files are
advisory: a missing or unreadable line gives no estimate (the deadline check then has no
history, as on a first run); they are never a reason to fail a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Iterable, Mapping

DIRNAME = "history"
KEEP = 20  # runs kept per runbook
MAX_RUNBOOKS = 100  # runbook files kept (least recently written dropped first)


def path(state_dir: str | os.PathLike, runbook_name: str) -> Path:
    digest = hashlib.sha256(runbook_name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return Path(state_dir) / DIRNAME / (digest + ".jsonl")


class _Locked:
    """An exclusive lock on ``history/.lock`` for an append and its compaction (two runs of
    different clusters may finish at the same moment in one state dir)."""

    def __init__(self, where: Path):
        self.file = where / ".lock"

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
    finished (done) on those nodes; ``retried``: the step ids that needed more than one attempt."""
    new = _clean(durations)
    if not new:
        return
    retried = set(retried)
    line = json.dumps({"runbook": runbook_name, "time": int(time.time()),
                       "steps": {sid: {"t": t, "retried": sid in retried} for sid, t in new.items()}},
                      separators=(",", ":")).encode() + b"\n"
    file = path(state_dir, runbook_name)
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _Locked(file.parent):
        fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        _compact(file)
        _drop_old_runbooks(file.parent)


def _compact(file: Path) -> None:
    """Past 2*KEEP lines, keep the last KEEP (atomically): the file's size stays bounded."""
    data = file.read_bytes()
    if data.count(b"\n") <= 2 * KEEP:
        return
    from bmupgrade.journal import atomic_write

    atomic_write(file, b"".join(line + b"\n" for line in data.splitlines()[-KEEP:]))


def _drop_old_runbooks(where: Path) -> None:
    files = [p for p in where.iterdir() if p.suffix == ".jsonl"]
    if len(files) > MAX_RUNBOOKS:
        for p in sorted(files, key=lambda p: p.stat().st_mtime)[: len(files) - MAX_RUNBOOKS]:
            p.unlink(missing_ok=True)


def _runs(state_dir: str | os.PathLike, runbook_name: str) -> list[dict]:
    """The kept runs of this runbook, oldest first; unreadable lines skipped."""
    try:
        lines = path(state_dir, runbook_name).read_bytes().splitlines()[-KEEP:]
    except OSError:
        return []
    runs = []
    for line in lines:
        try:
            run = json.loads(line)
        except ValueError:
            continue
        if isinstance(run, dict) and run.get("runbook") == runbook_name and isinstance(run.get("steps"), dict):
            runs.append(run)
    return runs


def medians(state_dir: str | os.PathLike, runbook_name: str) -> dict[str, float]:
    """Expected duration per step id: the median over the kept runs of the slowest node's time.
    Empty when there is no history (or it cannot be read)."""
    slowest: dict[str, list[float]] = {}
    for run in _runs(state_dir, runbook_name):
        for sid, s in run["steps"].items():
            t = s.get("t") if isinstance(s, dict) else None
            if isinstance(t, dict) and t and all(isinstance(v, (int, float)) for v in t.values()):
                slowest.setdefault(sid, []).append(max(t.values()))
    return {sid: statistics.median(v) for sid, v in slowest.items()}


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
