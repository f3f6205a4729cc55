"""`--help` served from a cache of typer's own output, without importing typer (issue 15).

Python with typer, click and rich takes ~0.3 s to print a help screen; the text only changes
when bmupgrade, its libraries, the terminal or the environment do. So the first `--help` of a
command line is rendered by typer as usual while its stdout is copied, and stored under a key
made of everything the rendering can depend on: the words typed, the code (bmupgrade's
version, its CLI modules' and the installed libraries' stat), whether stdout is a terminal and
its size, and the whole environment (rich reads COLUMNS, NO_COLOR, FORCE_COLOR, TERM, ...).
Later calls with the same key write the stored bytes and exit 0: the same output, byte for
byte, colours included. Anything else (an unknown word, an option besides the help flag, no
cache directory) goes to typer. `BMUPGRADE_HELP_CACHE=0` turns it off.

Cache: `$XDG_CACHE_HOME/bmupgrade/help` (default `~/.cache/...`), 0700, files 0600 written
atomically; at most `MAX_FILES` (cleared when full). Only bmupgrade's own imports here.
"""

from __future__ import annotations

import hashlib
import os
import sys

HELP_FLAGS = ("--help", "-h")
MAX_FILES = 256
_VOLATILE_ENV = ("PWD", "OLDPWD", "SHLVL", "_")  # change between shells, never read by rich/typer
_CODE = ("cli.py", "lean.py", "helpcache.py", "lab/cli.py", "__init__.py")


def is_help_request(args: list[str]) -> bool:
    """`--help`, `CMD --help`, `lab up -h`: command words then one help flag, nothing else."""
    if not args or args[-1] not in HELP_FLAGS or len(args) > 4:
        return False
    return all(w.replace("-", "").isalpha() and w.islower() and not w.startswith("-") for w in args[:-1])


def cache_dir() -> str | None:
    base = os.environ.get("XDG_CACHE_HOME") or (
        os.path.join(os.environ["HOME"], ".cache") if os.environ.get("HOME") else None)
    return os.path.join(base, "bmupgrade", "help") if base else None


def _stat_token(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return path + ":-"
    return "%s:%d:%d" % (path, st.st_mtime_ns, st.st_size)


def _libraries_dir() -> str:
    """Where typer is installed: its directory changes when a library is installed/upgraded."""
    for entry in sys.path:
        if os.path.isdir(os.path.join(entry or ".", "typer")):
            return os.path.abspath(entry or ".")
    return "-"


def key(args: list[str]) -> str:
    from bmupgrade import __version__

    here = os.path.dirname(os.path.abspath(__file__))
    libs = _libraries_dir()
    parts = [__version__, sys.executable, sys.version, repr(args),
             _stat_token(libs), _stat_token(os.path.join(libs, "typer", "__init__.py")),
             _stat_token(os.path.join(libs, "rich", "__init__.py"))]
    parts += [_stat_token(os.path.join(here, name)) for name in _CODE]
    tty = os.isatty(1)
    parts.append("tty=%s" % tty)
    if tty:
        try:
            parts.append("size=%s" % (tuple(os.get_terminal_size(1)),))
        except OSError:
            parts.append("size=-")
    parts += ["%s=%s" % kv for kv in sorted(os.environ.items()) if kv[0] not in _VOLATILE_ENV]
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def entry_path(args: list[str]) -> str | None:
    """Where the help for `args` is (or would be) kept; None when `args` is no bare help request,
    the cache is off, or there is no cache directory. Computed once per invocation."""
    if os.environ.get("BMUPGRADE_HELP_CACHE") == "0" or not is_help_request(args):
        return None
    where = cache_dir()
    return os.path.join(where, key(args)) if where else None


def serve(path: str) -> bool:
    """Write the kept help to stdout; False (nothing written) when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    if not data:
        return False
    sys.stdout.flush()
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
    return True


def render_and_store(path: str, render) -> None:
    """Run `render()` (typer's app) with stdout copied; keep the copy if it exited with 0."""
    real = sys.stdout
    recorder = Recorder(real)
    sys.stdout = recorder
    code = 1
    try:
        render()
        code = 0
    except SystemExit as exc:
        code = 0 if exc.code in (None, 0) else 1
        raise
    finally:
        sys.stdout = real
        if code == 0:
            store(path, b"".join(recorder.chunks))


class Recorder:
    """Stands in for sys.stdout while typer renders help: everything is forwarded unchanged
    (isatty, fileno and encoding too, so rich renders exactly as it would) and copied, as bytes,
    text and `.buffer` writes alike (click writes bytes to the buffer)."""

    def __init__(self, real):
        self._real = real
        self.chunks: list[bytes] = []

    def write(self, text):
        n = self._real.write(text)  # first: a write the real stream refuses is not copied
        self.chunks.append(text.encode(self._real.encoding or "utf-8", self._real.errors or "strict"))
        return n

    @property
    def buffer(self):
        return _BufferRecorder(self._real, self.chunks)

    def __getattr__(self, name):
        return getattr(self._real, name)


class _BufferRecorder:
    def __init__(self, real_text, chunks):
        self._text, self._chunks = real_text, chunks

    def write(self, data):
        self._text.flush()  # keep the text written so far ahead of these bytes, as recorded
        n = self._text.buffer.write(data)
        self._chunks.append(bytes(data))
        return n

    def __getattr__(self, name):
        return getattr(self._text.buffer, name)


def store(path: str, data: bytes) -> None:
    """Keep typer's help output for the next identical request; any failure is ignored."""
    if not data:
        return
    from pathlib import Path

    from bmupgrade.journal import atomic_write

    where = os.path.dirname(path)
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)
        if len(os.listdir(where)) >= MAX_FILES:
            for name in os.listdir(where):
                os.unlink(os.path.join(where, name))
        atomic_write(Path(path), data)
    except OSError:
        pass
