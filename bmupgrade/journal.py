"""The journal: a durable, resumable record of one run, written before and after every change.

One JSON file per run in the state dir, replaced atomically (temp file, fsync, rename, fsync
of the directory) with mode 0600, so a run killed at any instant leaves either the previous
or the next complete state — never a torn file. A step is recorded `started` *before* its
command is sent: on resume, `started` means "outcome unknown", never "not run".

Secrets never reach it: variables are stored redacted (secret overrides must be given again
on resume).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import json
import os
import secrets
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from bmupgrade.errors import BmError, UsageError

FORMAT = "bmupgrade-journal/1"

# Per node (and per step, derived): the life of a step.
PENDING, STARTED, DONE, FAILED, SKIPPED, ROLLED_BACK = (
    "pending", "started", "done", "failed", "skipped", "rolled-back")
# A run's status; the "open" ones can be resumed.
RUNNING, FAILED_RUN, ABORTED, INTERRUPTED, DEADLINE, SUCCEEDED, ROLLED_BACK_RUN = (
    "running", "failed", "aborted", "interrupted", "deadline", "succeeded", "rolled-back")
OPEN_STATUSES = {RUNNING, FAILED_RUN, ABORTED, INTERRUPTED, DEADLINE}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def default_state_dir() -> Path:
    base = os.environ.get("BMUPGRADE_STATE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(xdg) / "bmupgrade"


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def whoami() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid()}


def atomic_write(path: Path, data: bytes) -> None:
    """Write-temp, fsync, rename, fsync-dir: the file is always the old or the new version."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Journal:
    """The record of one run. `data` is plain JSON; `save()` persists it durably."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = path
        self.data = data
        self._crash_at = os.environ.get("BMUPGRADE_CRASH_AT")  # fault injection for tests

    # ---------------------------------------------------------------- creation / loading
    @classmethod
    def create(cls, state_dir: Path, *, runbook_path: str, runbook_sha256: str, runbook_name: str,
               inventory: str | None, cluster_id: str, variables: dict[str, str],
               overrides: dict[str, str], secret_overrides: list[str], step_ids: list[str],
               options: dict[str, Any]) -> "Journal":
        runs = state_dir / "runs"
        runs.mkdir(parents=True, exist_ok=True, mode=0o700)
        run_id = new_run_id()
        data = {
            "format": FORMAT,
            "run_id": run_id,
            "status": RUNNING,
            "created_at": now(),
            "updated_at": now(),
            "by": whoami(),
            "runbook": {"path": runbook_path, "sha256": runbook_sha256, "name": runbook_name},
            "inventory": inventory,
            "cluster_id": cluster_id,
            "vars": variables,
            "overrides": overrides,
            "secret_overrides": secret_overrides,
            "options": options,
            "captured": {},
            "facts": [],
            "preflight": None,
            "steps": {sid: {"state": PENDING, "nodes": {}} for sid in step_ids},
            "rollback": {},
            "ha": {"off_since": None, "on_at": None},
            "resumes": [],
            "exit": None,
        }
        journal = cls(runs / f"{run_id}.json", data)
        journal.save()
        return journal

    @classmethod
    def load(cls, path: Path) -> "Journal":
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"{path}: no such run journal; `bmupgrade runs` lists the runs") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BmError(f"{path}: journal is not valid JSON ({exc}); it was not written by bmupgrade "
                          "or the disk is damaged") from None
        if data.get("format") != FORMAT:
            raise BmError(f"{path}: unknown journal format {data.get('format')!r}")
        return cls(path, data)

    # ---------------------------------------------------------------- persistence
    def save(self) -> None:
        self.data["updated_at"] = now()
        # One line, no indent: json's C encoder only runs without indent (4x faster, and the
        # journal is rewritten at every transition). `bmupgrade status` is the readable view.
        atomic_write(self.path, json.dumps(self.data).encode() + b"\n")

    def _maybe_crash(self, state: str, step_id: str, node: str | None) -> None:
        """BMUPGRADE_CRASH_AT=state:step[:node] kills the process right after that record is
        durable — how the tests prove that resume is correct at every boundary."""
        if not self._crash_at:
            return
        want = self._crash_at.split(":")
        if want[0] == state and want[1] == step_id and (len(want) < 3 or want[2] == node):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

    # ---------------------------------------------------------------- accessors
    @property
    def run_id(self) -> str:
        return self.data["run_id"]

    @property
    def status(self) -> str:
        return self.data["status"]

    def step(self, step_id: str, *, rollback: bool = False) -> dict[str, Any]:
        table = self.data["rollback"] if rollback else self.data["steps"]
        return table.setdefault(step_id, {"state": PENDING, "nodes": {}})

    def node_state(self, step_id: str, node: str, *, rollback: bool = False) -> str:
        return self.step(step_id, rollback=rollback)["nodes"].get(node, {}).get("state", PENDING)

    # ---------------------------------------------------------------- transitions
    def mark(self, step_id: str, nodes: list[str], state: str, *, rollback: bool = False,
             **fields: Any) -> None:
        """Record a state for a step on some nodes (one durable write for all of them)."""
        step = self.step(step_id, rollback=rollback)
        stamp = now()
        for node in nodes:
            entry = step["nodes"].setdefault(node, {"state": PENDING, "attempts": 0})
            entry["state"] = state
            if state == STARTED:
                entry["started_at"] = stamp
                entry["attempts"] = entry.get("attempts", 0) + 1
                entry.pop("ended_at", None)
                entry.pop("exit_code", None)
            else:
                entry["ended_at"] = stamp
            entry.update({k: v for k, v in fields.items() if k != "node_fields"})
            entry.update(fields.get("node_fields", {}).get(node, {}))
        step["state"] = _aggregate([e["state"] for e in step["nodes"].values()])
        self.save()
        for node in nodes:
            self._maybe_crash(state if not rollback else f"rollback-{state}", step_id, node)

    def set_step_state(self, step_id: str, state: str, **fields: Any) -> None:
        step = self.step(step_id)
        step["state"] = state
        step.update(fields)
        self.save()

    def set_status(self, status: str, **fields: Any) -> None:
        self.data["status"] = status
        self.data.update(fields)
        self.save()


def _aggregate(states: list[str]) -> str:
    if not states:
        return PENDING
    for s in (STARTED, FAILED):
        if s in states:
            return s
    if all(s == DONE for s in states):
        return DONE
    if all(s in (DONE, SKIPPED) for s in states):
        return SKIPPED if SKIPPED in states else DONE
    if all(s == ROLLED_BACK for s in states):
        return ROLLED_BACK
    return states[0] if len(set(states)) == 1 else STARTED


@dataclass
class RunInfo:
    run_id: str
    path: Path
    status: str
    created_at: str
    runbook: str
    by: str


class RunStore:
    """The runs in a state dir."""

    def __init__(self, state_dir: Path | None = None):
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.runs_dir = self.state_dir / "runs"

    def all(self) -> list[RunInfo]:
        out = []
        if not self.runs_dir.is_dir():
            return out
        for p in sorted(self.runs_dir.glob("*.json")):
            try:
                d = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            out.append(RunInfo(d.get("run_id", p.stem), p, d.get("status", "?"), d.get("created_at", ""),
                               d.get("runbook", {}).get("name", ""),
                               f"{d.get('by', {}).get('user')}@{d.get('by', {}).get('host')}"))
        return sorted(out, key=lambda r: r.run_id)

    def find(self, run_id: str | None, *, open_only: bool = False) -> Journal:
        runs = self.all()
        if run_id:
            matches = [r for r in runs if r.run_id == run_id or r.run_id.startswith(run_id)]
            if len(matches) != 1:
                raise UsageError(f"run '{run_id}' {'is ambiguous' if matches else 'not found'} in "
                                 f"{self.runs_dir}; `bmupgrade runs` lists the runs")
            return Journal.load(matches[0].path)
        candidates = [r for r in runs if r.status in OPEN_STATUSES] if open_only else runs
        if not candidates:
            what = "unfinished run" if open_only else "run"
            raise UsageError(f"no {what} in {self.runs_dir}; `bmupgrade runs` lists the runs")
        return Journal.load(candidates[-1].path)


class LocalLock:
    """One run per cluster on this machine: an flock held for the life of the process (the
    kernel drops it if the process dies, so it can never go stale)."""

    def __init__(self, state_dir: Path, cluster_id: str):
        locks = state_dir / "locks"
        locks.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = locks / f"{cluster_id}.lock"
        self._fd: int | None = None

    def acquire(self, info: dict[str, Any]) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            try:
                h = json.loads(holder)
                who = f"run {h.get('run_id')} by {h.get('user')}@{h.get('host')} (pid {h.get('pid')}) since {h.get('since')}"
            except ValueError:
                who = holder or "another process"
            raise BmError(f"another bmupgrade run is active on this cluster: {who}; wait for it to end "
                          "(`bmupgrade status`)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                os.close(self._fd)
                self._fd = None


def iter_open(store: RunStore) -> Iterator[RunInfo]:
    return (r for r in store.all() if r.status in OPEN_STATUSES)
