"""The audit trail of a run: every command sent, as JSON lines, plus the full output log.

Both files are mode 0600 beside the journal. Output is streamed to disk as it arrives (never
held whole in memory); each command's output in the log is capped at OUTPUT_CAP bytes with a
marker, and the JSON record keeps the last OUTPUT_TAIL characters. Secrets are masked in both.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Callable

OUTPUT_CAP = 16 * 1024 * 1024
OUTPUT_TAIL = 4096


def _open_private(path: Path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8", errors="replace", buffering=1024 * 64)


class AuditLog:
    def __init__(self, runs_dir: Path, run_id: str, redact: Callable[[str], str]):
        self.jsonl_path = runs_dir / f"{run_id}.audit.jsonl"
        self.output_path = runs_dir / f"{run_id}.output.log"
        self._jsonl = _open_private(self.jsonl_path)
        self._out = _open_private(self.output_path)
        self._redact = redact
        self._lock = threading.Lock()
        self._written: dict[tuple[str, str], int] = {}

    def begin(self, node: str, key: str, command: str) -> None:
        with self._lock:
            self._written[(node, key)] = 0
            self._out.write(f"\n### {time.strftime('%Y-%m-%dT%H:%M:%S')} {node} [{key}] $ {self._redact(command)}\n")

    def output(self, node: str, key: str, text: str) -> None:
        with self._lock:
            n = self._written.get((node, key), 0)
            if n > OUTPUT_CAP:  # capped, marker written
                return
            text = self._redact(text)
            if n + len(text) > OUTPUT_CAP:  # the first byte past the cap: keep up to it, then the marker
                text = text[: OUTPUT_CAP - n] + f"\n[... output beyond {OUTPUT_CAP // 1048576} MiB not logged; "\
                    "the JSON record keeps the tail]\n"
                self._written[(node, key)] = OUTPUT_CAP + 1
            else:
                self._written[(node, key)] = n + len(text)
            self._out.write(text)

    def record(self, **fields) -> None:
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
                    f.close()
                except OSError:
                    pass
