"""The audit trail of a run: every command sent, as JSON lines, plus the full output log.

Both files are mode 0600 beside the journal. Output is streamed to disk as it arrives (never
held whole in memory); each command's output in the log is capped at OUTPUT_CAP bytes with a
marker, and the JSON record keeps the last OUTPUT_TAIL characters. Secrets are masked in both.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path
from typing import Callable

OUTPUT_CAP = 16 * 1024 * 1024
OUTPUT_TAIL = 4096


def _open_private(path: Path):
    """Append-only, mode 0600, never through a symlink (O_NOFOLLOW: a link planted in the state
    dir must not redirect the log of a root-run tool)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        from bmupgrade.errors import BmError

        why = "it is a symbolic link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise BmError(f"cannot open the log {path}: {why}; remove it or use another --state-dir") from None
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8", errors="replace", buffering=1024 * 64)


SYNC_EVERY = 1.0  # seconds: at most this much of the audit trail rides on the page cache


class AuditLog:
    """`begin()` is written to the kernel BEFORE the command is sent (a SIGKILL right after still
    leaves the record); output is flushed per chunk, under a header naming its node when
    parallel commands interleave; `record()` adds the result.

    fsync is incremental, as auditd's default (`flush = INCREMENTAL_ASYNC`): at the first
    command, then when SYNC_EVERY has passed, and at close — not per command (it cost ~0.3 ms a
    step). Power lost meanwhile can cost the trail its last second; the journal's record of
    each send, fdatasync'd before it, is the crash-proof one."""

    def __init__(self, runs_dir: Path, run_id: str, redact: Callable[[str], str]):
        self.jsonl_path = runs_dir / f"{run_id}.audit.jsonl"
        self.output_path = runs_dir / f"{run_id}.output.log"
        self._jsonl = _open_private(self.jsonl_path)
        self._out = _open_private(self.output_path)
        self._redact = redact
        self._lock = threading.Lock()
        self._written: dict[tuple[str, str], int] = {}
        self._streams: dict[tuple[str, str], Callable] = {}  # (node, key) -> streaming redactor
        self._last: tuple[str, str] | None = None  # whose output the log shows right now
        self._synced_at = float("-inf")

    def begin(self, node: str, key: str, command: str, round_id: int | None = None) -> None:
        """`round_id`: the commands that went out in one round trip (one per node, joined) share it."""
        command = self._redact(command)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with self._lock:
            self._written[(node, key)] = 0
            stream = getattr(self._redact, "stream", None)
            self._streams[(node, key)] = stream() if stream else None
            rec = {"event": "sent", "node": node, "key": key, "command": command,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            self._jsonl.write(json.dumps(rec if round_id is None else {**rec, "round": round_id}) + "\n")
            self._jsonl.flush()
            if time.monotonic() - self._synced_at >= SYNC_EVERY:
                os.fsync(self._jsonl.fileno())
                self._synced_at = time.monotonic()
            self._out.write(f"\n### {stamp} {node} [{key}] $ {command}\n")
            self._out.flush()
            self._last = (node, key)

    def output(self, node: str, key: str, text: str) -> None:
        with self._lock:
            stream = self._streams.get((node, key))
            self._write_output(node, key, stream.feed(text) if stream else self._redact(text))

    def _write_output(self, node: str, key: str, text: str) -> None:
        n = self._written.get((node, key), 0)
        if n > OUTPUT_CAP or not text:  # capped, marker written
            return
        if n + len(text) > OUTPUT_CAP:  # the first byte past the cap: keep up to it, then the marker
            text = text[: OUTPUT_CAP - n] + f"\n[... output beyond {OUTPUT_CAP // 1048576} MiB not logged; "\
                "the JSON record keeps the tail]\n"
            self._written[(node, key)] = OUTPUT_CAP + 1
        else:
            self._written[(node, key)] = n + len(text)
        if self._last != (node, key):  # parallel output: say whose it is
            self._out.write(f"\n### {node} [{key}] (continued)\n")
            self._last = (node, key)
        self._out.write(text)
        self._out.flush()

    def record(self, **fields) -> None:
        node, key = fields.get("node"), fields.get("key")
        with self._lock:
            stream = self._streams.pop((node, key), None)
            if stream is not None:  # the held-back end of the command's output
                self._write_output(node, key, stream.flush())
        fields = {"event": "result", **fields}
        for k in ("command", "output_tail"):
            if isinstance(fields.get(k), str):
                fields[k] = self._redact(fields[k])
        if isinstance(fields.get("output_tail"), str):
            fields["output_tail"] = fields["output_tail"][-OUTPUT_TAIL:]
        fields.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        with self._lock:
            self._jsonl.write(json.dumps(fields) + "\n")
            self._jsonl.flush()

    def close(self) -> None:
        with self._lock:
            for f in (self._jsonl, self._out):
                try:
                    f.flush()
                    if f is self._jsonl:  # the output log, up to 16 MiB a command, is never fsync'd
                        os.fsync(f.fileno())
                except (OSError, ValueError):  # a full disk, or closed already
                    pass
                try:
                    f.close()
                except OSError:
                    pass
