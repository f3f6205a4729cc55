"""The journal: a durable, resumable record of one run, written before every change.

An append-only log of JSON lines, one per transition (O(1) each, whatever the run's length).
A record that announces an effect (a command about to be sent, a status, a marker) is
fdatasync'd before that effect. A record that only reports an outcome (`sync=False`) is
written at once — a killed process keeps it — and made durable by the next announcing record
or the run's end (fdatasync covers every earlier write to the file): power lost in between
leaves that step "started", i.e. in doubt, which resume already settles (verify, or ask).
The first line holds the run's header; loading replays the records into `data`, the
plain-JSON view the rest of bmupgrade reads. A torn last line (a crash mid-write) is
ignored; damage anywhere else is reported with the path and line, never as "run not found".
When a run ends, the log is compacted into one snapshot line (atomic replace). Every state
change is checked against `engine.states`.

Secrets never reach it: variables are stored redacted (secret overrides must be given again
on resume). Files are opened with O_NOFOLLOW, mode 0600, in 0700 directories.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import functools
import getpass
import json
import os
import secrets
import socket
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bmupgrade.engine.states import NodeState, RunState, aggregate, check_node, check_run
from bmupgrade.errors import BmError, UsageError

FORMAT = "bmupgrade-journal/2"
SUFFIX = ".journal.jsonl"  # beside it: RUN.audit.jsonl and RUN.output.log (audit.py)

PENDING, STARTED, DONE, FAILED, UNKNOWN, SKIPPED, ROLLED_BACK = (
    NodeState.PENDING, NodeState.STARTED, NodeState.DONE, NodeState.FAILED, NodeState.UNKNOWN,
    NodeState.SKIPPED, NodeState.ROLLED_BACK)
RUNNING, REFUSED, FAILED_RUN, ABORTED, INTERRUPTED, DEADLINE, SUCCEEDED, ROLLED_BACK_RUN = (
    RunState.RUNNING, RunState.REFUSED, RunState.FAILED, RunState.ABORTED, RunState.INTERRUPTED,
    RunState.DEADLINE, RunState.SUCCEEDED, RunState.ROLLED_BACK)
PARTLY_ROLLED_BACK = RunState.PARTLY_ROLLED_BACK
OPEN_STATUSES = {RUNNING, FAILED_RUN, ABORTED, INTERRUPTED, DEADLINE}


def now() -> str:
    """Local time with its offset, to the second."""
    return _iso_at(int(time.time()))


@functools.lru_cache(maxsize=2)
def _iso_at(second: int) -> str:  # every record has one: through the local zone once a second
    return dt.datetime.fromtimestamp(second, dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def default_state_dir() -> Path:
    base = os.environ.get("BMUPGRADE_STATE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(xdg) / "bmupgrade"


def new_run_id(state_dir: Path | None = None) -> str:
    """Start time + a random suffix. With `state_dir`, a run started in the same second as
    others there gets the next suffix after theirs: ids never collide, and within a state dir
    their order is the order the runs started in (which run came after which matters)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-")
    same = sorted(p.name[len(stamp):len(stamp) + 4] for p in (Path(state_dir) / "runs").glob(stamp + "*" + SUFFIX)) \
        if state_dir is not None and (Path(state_dir) / "runs").is_dir() else []
    if not same:
        return stamp + secrets.token_hex(2)
    return stamp + ("%04x" % (int(same[-1], 16) + 1) if same[-1] != "ffff" else "ffff" + secrets.token_hex(1))


def started_after(a: dict, b: dict) -> bool:
    """Whether run `a` started after run `b` (journal views): by the UTC start second, then by
    run id (ids of one state dir sort in start order within a second; local-time ids alone go
    backwards when clocks fall back)."""
    ta, tb = (dt.datetime.fromisoformat(d["created_at"]).timestamp() for d in (a, b))
    return (ta, a["run_id"]) > (tb, b["run_id"])


def whoami() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid()}


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot: with the boot id, a pid that cannot
    be confused with a later process that reused the number."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner_record() -> dict[str, Any]:
    me = whoami()
    return {**me, "boot_id": _boot_id(), "start": _start_time(me["pid"])}


def owner_alive(owner: dict[str, Any] | None) -> bool | None:
    """True/False on the owner's own host; None when it ran on another machine (cannot tell)."""
    if not owner:
        return False
    if owner.get("host") != socket.gethostname():
        return None
    if owner.get("boot_id") and owner.get("boot_id") != _boot_id():
        return False
    start = _start_time(int(owner.get("pid") or 0)) if owner.get("pid") else ""
    return bool(start) and (not owner.get("start") or start == owner.get("start"))


# ----------------------------------------------------------------------------- private files

def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) 0700; refuse an existing one others can write to,
    or a symlink: someone else could plant or swap our journal and locks there."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        os.mkdir(d, 0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: the state directory must be a real directory, not a symlink or a file")
    if st.st_mode & 0o022 or st.st_uid != os.getuid():
        raise UsageError(f"{path}: the state directory is writable by others or not yours "
                         f"(mode {stat.S_IMODE(st.st_mode):o}); fix it with `chmod 700 {path}` "
                         "or choose another --state-dir")
    return path


def open_private(path: Path, flags: int) -> int:
    """os.open with O_NOFOLLOW and mode 0600 (a planted symlink is refused, not followed)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BmError(f"{path} is a symbolic link; refusing to follow it (remove it)") from None
        raise


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
    _fsync_dir(path.parent)


def _line(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec, separators=(",", ":")).encode() + b"\n"


def _create_whole(path: Path, first: bytes) -> int:
    """A new journal that appears with its first record already in it (written and synced in a
    temp file, then hard-linked into place: FileExistsError if the name is taken, as O_EXCL);
    the descriptor to append to it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, first)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
            linked = True
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: created, then written, as before
            linked = False
    finally:
        os.unlink(tmp)
    if linked:
        fd = open_private(path, os.O_WRONLY | os.O_APPEND)
    else:
        fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        os.write(fd, first)
        os.fdatasync(fd)
    _fsync_dir(path.parent)
    return fd


def _clean_stale_temps(runs: Path, older_than: float = 600.0) -> None:
    """Temp files of compactions or creations a crash interrupted (`.RUN.journal.jsonl.XXXX`):
    the journal itself is intact (rename and link are atomic), so they are only litter."""
    import time

    for p in runs.glob(".*" + SUFFIX + ".*"):
        try:
            if time.time() - p.lstat().st_mtime > older_than:
                p.unlink()
        except OSError:
            pass


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ----------------------------------------------------------------------------- the journal

def _apply(data: dict[str, Any], rec: dict[str, Any]) -> None:
    """Replay one record into the view (the same code live and on load)."""
    kind = rec["r"]
    if kind == "node":
        table = data["rollback"] if rec.get("rb") else data["steps"]
        step = table.setdefault(rec["step"], {"state": PENDING.value, "nodes": {}})
        for node in rec["nodes"]:
            entry = step["nodes"].setdefault(node, {"state": PENDING.value, "attempts": 0})
            entry["state"] = rec["state"]
            if rec["state"] == STARTED:
                entry["started_at"] = rec["at"]
                entry["attempts"] = entry.get("attempts", 0) + 1
                for k in ("ended_at", "exit_code", "outcome"):
                    entry.pop(k, None)
            else:
                entry["ended_at"] = rec["at"]
            entry.update(rec.get("f", {}))
            entry.update(rec.get("nf", {}).get(node, {}))
        step["state"] = aggregate([e["state"] for e in step["nodes"].values()]).value
    elif kind == "run":
        data["status"] = rec["status"]
        data.update(rec.get("f", {}))
    elif kind == "set":
        *parents, last = rec["p"]
        target = data
        for p in parents:
            target = target.setdefault(p, {})
        target[last] = rec["v"]
    elif kind == "add":
        data.setdefault(rec["p"], []).append(rec["v"])
    data["updated_at"] = rec.get("at", data.get("updated_at"))


class Journal:
    """The record of one run. Read `data`; change it only through the methods below."""

    after_write_hook: Callable[[dict], None] | None = None  # the model test's crash point (every journal)

    def __init__(self, path: Path, data: dict[str, Any], fd: int | None = None):
        self.path = path
        self.data = data
        self._fd = fd
        self._unsynced = False  # an outcome was written since the last fdatasync
        self._crash_at = os.environ.get("BMUPGRADE_CRASH_AT")  # fault injection for tests
        self.after_write: Callable[[dict], None] | None = None  # the model test's crash point

    # ---------------------------------------------------------------- creation / loading
    @classmethod
    def create(cls, state_dir: Path, *, run_id: str | None = None, **header: Any) -> "Journal":
        private_dir(Path(state_dir))
        runs = private_dir(Path(state_dir) / "runs")
        _clean_stale_temps(runs)
        run_id = run_id or new_run_id(state_dir)
        data = {"format": FORMAT, "run_id": run_id, "status": RUNNING.value, "created_at": now(),
                "updated_at": now(), "by": whoami(), "owner": owner_record(), "captured": {}, "facts": [],
                "preflight": None, "rollback": {}, "ha": {"off_since": None, "on_at": None}, "resumes": [],
                "exit": None, **header}
        data["steps"] = {sid: {"state": PENDING.value, "nodes": {}} for sid in header.get("step_ids", [])}
        data.pop("step_ids", None)
        begin = {"r": "begin", "data": data}
        try:  # never seen empty: `status` in another terminal, a second run, read it at any moment
            fd = _create_whole(runs / f"{run_id}{SUFFIX}", _line(begin))
        except FileExistsError:
            raise BmError(f"{runs / run_id}{SUFFIX} exists already: another run took the same id; start "
                          "again") from None
        except OSError as exc:
            raise BmError(f"cannot create the journal in {runs}: {exc.strerror or exc} (disk full?); nothing "
                          "was sent") from None
        journal = cls(runs / f"{run_id}{SUFFIX}", data, fd)
        journal._written(begin)
        return journal

    @classmethod
    def load(cls, path: Path) -> "Journal":
        try:
            fd = open_private(path, os.O_RDONLY)
        except FileNotFoundError:
            raise UsageError(f"{path}: no such run journal; `bmupgrade runs` lists the runs") from None
        with os.fdopen(fd, "rb") as f:
            raw = f.read()
        lines = raw.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline; else a torn last record
        data: dict[str, Any] | None = None
        for no, line in enumerate(lines, 1):
            try:
                rec = json.loads(line)
                if data is None:
                    data = rec["data"]
                    if data.get("format") != FORMAT:
                        raise ValueError(f"unknown journal format {data.get('format')!r}")
                else:
                    _apply(data, rec)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                raise BmError(f"{path}:{no}: the journal is damaged ({exc}); it was not written by this "
                              "bmupgrade or the disk is damaged. `bmupgrade status` cannot read it; keep it "
                              "for the record and check the cluster by hand") from None
        if data is None:
            raise BmError(f"{path}: the journal is empty or damaged (a crash while it was created?); "
                          "nothing was sent in that run")
        journal = cls(path, data)
        journal._torn = len(torn)
        return journal

    @classmethod
    def in_memory(cls, **header: Any) -> "Journal":
        """For `bmupgrade check`: the same view and rules, nothing written (read-only invocation)."""
        data = {"format": FORMAT, "run_id": "check", "status": RUNNING.value, "captured": {}, "facts": [],
                "preflight": None, "rollback": {}, "ha": {}, "steps": {}, **header}
        journal = cls(Path("/dev/null"), data)
        journal._write = lambda rec, sync=True: None  # type: ignore[method-assign]
        journal.snapshot = lambda: None  # type: ignore[method-assign]
        return journal

    def _open_for_append(self) -> int:
        if self._fd is None:
            self._fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
            torn = getattr(self, "_torn", 0)
            if torn:  # drop the torn tail so the next record starts on a line of its own
                os.ftruncate(self._fd, os.fstat(self._fd).st_size - torn)
                self._torn = 0
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            if self._unsynced:  # outcomes written since the last announcing record
                try:
                    os.fdatasync(self._fd)
                except OSError:
                    pass
                self._unsynced = False
            os.close(self._fd)
            self._fd = None

    # ---------------------------------------------------------------- persistence
    def _write(self, rec: dict[str, Any], sync: bool = True) -> None:
        line = _line(rec)
        fd = self._open_for_append()
        try:
            os.write(fd, line)
            if sync:
                os.fdatasync(fd)
            self._unsynced = not sync
        except OSError as exc:
            raise BmError(f"cannot write the journal {self.path}: {exc.strerror} (disk full?); the run stops "
                          "here") from None
        self._written(rec)

    def _written(self, rec: dict[str, Any]) -> None:
        hook = self.after_write or Journal.after_write_hook  # the model test's crash points
        if hook:
            hook(rec)

    def _record(self, rec: dict[str, Any], sync: bool = True) -> None:
        rec["at"] = now()
        self._write(rec, sync)
        _apply(self.data, rec)

    def snapshot(self) -> None:
        """Compact the log into one line (when a run ends): same view, smaller file."""
        self.close()
        atomic_write(self.path, json.dumps({"r": "begin", "data": self.data}, separators=(",", ":")).encode()
                     + b"\n")

    # ---------------------------------------------------------------- accessors
    @property
    def run_id(self) -> str:
        return self.data["run_id"]

    @property
    def status(self) -> str:
        return self.data["status"]

    def step(self, step_id: str, *, rollback: bool = False) -> dict[str, Any]:
        table = self.data["rollback"] if rollback else self.data["steps"]
        return table.get(step_id) or {"state": PENDING.value, "nodes": {}}

    def node_state(self, step_id: str, node: str, *, rollback: bool = False) -> str:
        return self.step(step_id, rollback=rollback)["nodes"].get(node, {}).get("state", PENDING.value)

    def nodes_in(self, step_id: str, *states: str, rollback: bool = False) -> list[str]:
        return [n for n, e in self.step(step_id, rollback=rollback)["nodes"].items() if e.get("state") in states]

    def nodes_sent(self, step_id: str) -> list[str]:
        """Nodes a step's command may have reached at some point: STARTED is journaled before each
        send, so `attempts` counts them — whatever was decided since (a re-run that never got out
        is `pending` again, a failure set aside is `skipped`)."""
        return [n for n, e in self.step(step_id)["nodes"].items() if e.get("attempts", 0) > 0]

    # ---------------------------------------------------------------- transitions
    def mark(self, step_id: str, nodes: list[str], state: str, *, rollback: bool = False,
             node_fields: dict[str, dict] | None = None, sync: bool = True, **fields: Any) -> None:
        """One record: `state` for a step on some nodes (checked against the table); durable at
        once unless `sync=False` (an outcome: see the module docstring)."""
        for node in nodes:
            check_node(step_id, node, self.node_state(step_id, node, rollback=rollback), state, rollback=rollback)
        rec: dict[str, Any] = {"r": "node", "step": step_id, "nodes": list(nodes), "state": str(state)}
        if rollback:
            rec["rb"] = True
        if fields:
            rec["f"] = fields
        if node_fields:
            rec["nf"] = {n: node_fields[n] for n in nodes if n in node_fields}
        self._record(rec, sync)
        for node in nodes:
            self._maybe_crash(str(state) if not rollback else f"rollback-{state}", step_id, node)

    def set_status(self, status: str, **fields: Any) -> None:
        check_run(self.status, status)
        if status == RUNNING:
            fields["owner"] = owner_record()
        self._record({"r": "run", "status": str(status), "f": fields})

    def set(self, path: str | list[str], value: Any, *, sync: bool = True) -> None:
        """Set a top-level key (or a nested one: ["captured", "from_version"])."""
        self._record({"r": "set", "p": [path] if isinstance(path, str) else list(path), "v": value}, sync)

    def add(self, key: str, item: Any) -> None:
        """Append to a top-level list (facts, resumes)."""
        self._record({"r": "add", "p": key, "v": item})

    def crash_point(self, what: str, step_id: str) -> None:
        """A boundary other than a step's state (`ha-off`: the HA-off markers are journaled)."""
        self._maybe_crash(what, step_id, None)

    def _maybe_crash(self, state: str, step_id: str, node: str | None) -> None:
        """BMUPGRADE_CRASH_AT=state:step[:node] kills the process right after that record is
        written — how the tests prove that resume is correct at every boundary."""
        if not self._crash_at:
            return
        want = self._crash_at.split(":")
        if want[0] == state and want[1] == step_id and (len(want) < 3 or want[2] == node):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class RunInfo:
    run_id: str
    path: Path
    status: str
    created_at: str
    runbook: str
    by: str
    owner_gone: bool = False  # says `running`, but its process is gone (killed, crashed)


class RunStore:
    """The runs in a state dir."""

    def __init__(self, state_dir: Path | None = None):
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.runs_dir = self.state_dir / "runs"

    def paths(self) -> list[Path]:
        if not self.runs_dir.is_dir():
            return []
        return sorted(self.runs_dir.glob("*" + SUFFIX))

    def all(self) -> list[RunInfo]:
        out = []
        for p in self.paths():
            try:
                d = Journal.load(p).data
            except BmError:
                out.append(RunInfo(_run_id(p), p, "damaged", "", "", ""))
                continue
            gone = d.get("status") == RUNNING and owner_alive(d.get("owner")) is False
            out.append(RunInfo(d.get("run_id", _run_id(p)), p, d.get("status", "?"), d.get("created_at", ""),
                               d.get("runbook", {}).get("name", ""),
                               f"{d.get('by', {}).get('user')}@{d.get('by', {}).get('host')}", gone))
        return sorted(out, key=lambda r: r.run_id)

    def find(self, run_id: str | None, *, open_only: bool = False) -> Journal:
        if run_id:
            matches = [p for p in self.paths() if _run_id(p).startswith(run_id)]
            exact = [p for p in matches if _run_id(p) == run_id]
            matches = exact or matches
            if len(matches) != 1:
                raise UsageError(f"run '{run_id}' {'is ambiguous' if matches else 'not found'} in "
                                 f"{self.runs_dir}; `bmupgrade runs` lists the runs")
            return Journal.load(matches[0])
        runs = self.all()
        candidates = [r for r in runs if r.status in OPEN_STATUSES] if open_only else runs
        if not candidates:
            what = "unfinished run" if open_only else "run"
            raise UsageError(f"no {what} in {self.runs_dir}; `bmupgrade runs` lists the runs")
        return Journal.load(candidates[-1].path)


def _run_id(path: Path) -> str:
    return path.name[: -len(SUFFIX)]


class LocalLock:
    """One run per cluster on this machine: an flock held for the life of the process (the
    kernel drops it if the process dies, so it can never go stale)."""

    def __init__(self, state_dir: Path, cluster_id: str):
        private_dir(Path(state_dir))
        locks = private_dir(Path(state_dir) / "locks")
        self.path = locks / f"{cluster_id}.lock"
        self._fd: int | None = None

    def acquire(self, info: dict[str, Any]) -> None:
        fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
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
            from bmupgrade.errors import EXIT_PREFLIGHT

            raise BmError(f"another bmupgrade run is active on this cluster: {who}; wait for it to end "
                          "(`bmupgrade status`). Nothing was changed.", exit_code=EXIT_PREFLIGHT) from None
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
