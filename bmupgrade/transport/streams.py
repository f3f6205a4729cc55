"""What flows back from a remote command, and what is added to what goes out: incremental
UTF-8 with a secret redacted even when split across chunks, bounded collection (the output's
tail, the first CAPTURE_BYTES of stdout), the pid line that lets a timed-out command's process
group be stopped, and sudo's prompt and start marker (how a rejected password is told apart
from a failing command, in any language)."""

from __future__ import annotations

import codecs
import collections
import logging
import os
import shlex

from bmupgrade.transport.base import CAPTURE_BYTES, OUTPUT_TAIL_BYTES, OutputSink

log = logging.getLogger("bmupgrade.transport.ssh")

REDACTED = "********"


class StreamText:
    """Bytes -> text for one stream: incremental UTF-8 (a character split across chunks is
    fine) and redaction of a secret, even when the secret itself is split across chunks."""

    def __init__(self, secret: str | None):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._secret = secret or None
        self._pending = ""

    def feed(self, data: bytes, final: bool = False) -> str:
        text = self._pending + self._decoder.decode(data, final)
        self._pending = ""
        if not self._secret:
            return text
        text = text.replace(self._secret, REDACTED)
        if final:
            return text
        # Hold back a tail that could be the start of the secret.
        for n in range(min(len(self._secret) - 1, len(text)), 0, -1):
            if self._secret.startswith(text[-n:]):
                self._pending = text[-n:]
                return text[:-n]
        return text


class Collector:
    """Bounded memory: the interleaved tail and (with capture) the first CAPTURE_BYTES of stdout."""

    def __init__(self, node: str, capture: bool, on_output: OutputSink | None, secret: str | None):
        self.node = node
        self.capture = capture
        self.on_output = on_output
        self._text = {"stdout": StreamText(secret), "stderr": StreamText(secret)}
        self._tail: collections.deque[str] = collections.deque()
        self._tail_len = 0
        self._stdout: list[str] = []
        self._stdout_len = 0
        self.stdout_truncated = False
        self._sink_failed = False

    def feed(self, stream: str, data: bytes, final: bool = False) -> None:
        text = self._text[stream].feed(data, final)
        if not text:
            return
        self._tail.append(text)
        self._tail_len += len(text)
        while self._tail_len - len(self._tail[0]) >= OUTPUT_TAIL_BYTES:
            self._tail_len -= len(self._tail.popleft())
        if self.capture and stream == "stdout":
            room = CAPTURE_BYTES - self._stdout_len
            if room > 0:
                part = text[:room]
                self._stdout.append(part)
                self._stdout_len += len(part)
            if len(text) > max(room, 0):
                self.stdout_truncated = True
        if self.on_output is not None:
            try:
                self.on_output(self.node, stream, text)
            except Exception:  # a broken display must not abandon a running command
                if not self._sink_failed:
                    log.exception("on_output callback failed for %s; output still collected", self.node)
                self._sink_failed = True

    def finish(self) -> None:
        self.feed("stdout", b"", final=True)
        self.feed("stderr", b"", final=True)

    @property
    def tail(self) -> str:
        raw = "".join(self._tail).encode("utf-8")[-OUTPUT_TAIL_BYTES:]
        return raw.decode("utf-8", errors="ignore")

    @property
    def stdout(self) -> str:
        out = "".join(self._stdout)
        enc = out.encode("utf-8")
        if len(enc) > CAPTURE_BYTES:
            self.stdout_truncated = True
            out = enc[:CAPTURE_BYTES].decode("utf-8", errors="ignore")
        return out


# --------------------------------------------------------------------------- stopping a command

PID_TAG = b"\x1ebmupgrade-pid "
PID_LINE_LIMIT = 64 * 1024  # give up looking for the pid line after this much stderr


def announcing_pid(wire: str, *, stdin_null: bool = False) -> str:
    """The command line with a prefix that makes the session's shell print its pid on stderr
    first. sshd makes that shell a session and process-group leader, so `kill -- -PID` stops
    the whole command on timeout, also where sshd refuses RFC 4254 signal requests: for root
    logins ("session signalling requires privilege separation"). `stdin_null`: the shell's
    stdin is /dev/null from the start, as `ssh host cmd </dev/null` — so the client need not
    send EOF when nothing else goes to stdin (one packet less to seal and send per command)."""
    return ("exec </dev/null; " if stdin_null else "") + "printf '\\036bmupgrade-pid %s\\n' \"$$\" >&2; " + wire


class PidLine:
    """Takes the pid line out of the start of stderr; everything else passes through (what a
    chatty shell start-up file printed before it, too)."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self._buf = b""
        self._done = False

    def feed(self, data: bytes) -> bytes:
        if self._done:
            return data
        buf = self._buf + data
        start = buf.find(PID_TAG)
        if start >= 0:
            end = buf.find(b"\n", start)
            if end < 0 and len(buf) - start < 64:
                self._buf = buf[start:]
                return buf[:start]
            digits = buf[start + len(PID_TAG):end if end >= 0 else len(buf)]
            if end >= 0 and digits.isdigit():
                self.pid = int(digits)
                self._done, self._buf = True, b""
                return buf[:start] + buf[end + 1:]
            self._done, self._buf = True, b""
            return buf
        if len(buf) > PID_LINE_LIMIT:
            self._done, self._buf = True, b""
            return buf
        keep = next((k for k in range(min(len(PID_TAG) - 1, len(buf)), 0, -1) if PID_TAG.startswith(buf[-k:])), 0)
        self._buf = buf[len(buf) - keep:] if keep else b""
        return buf[:len(buf) - keep]

    def flush(self) -> bytes:
        rest, self._buf, self._done = self._buf, b"", True
        return rest


# --------------------------------------------------------------------------- sudo


SUDO_PROMPT = f"[bmupgrade-sudo-{os.urandom(4).hex()}] "  # unique: never confused with output
SUDO_STARTED = "\x1ebmupgrade-sudo-ok"  # printed by the inner shell: sudo accepted, the command starts
MAX_SUDO_ATTEMPTS = 3


def sudo_wrap(command: str, *, with_password: bool, prompt: str = SUDO_PROMPT) -> str:
    """The command line sent for a sudo run.

    With a password, sudo reads it from stdin (``-S``) after printing our unique ``prompt`` on
    stderr; the inner shell then prints SUDO_STARTED before the command, whose own stdin is
    /dev/null (a password line sudo did not need is never read by the command). Whatever the
    node's language, a rejection is then: the prompt shown twice, or an exit without
    SUDO_STARTED — the command did not run. Without a password, ``-n``: fail instead of asking.
    """
    if with_password:
        inner = "printf '\\036bmupgrade-sudo-ok\\n' >&2; exec </dev/null; " + command
        return "sudo -S -p " + shlex.quote(prompt) + " -- sh -c " + shlex.quote(inner)
    return "sudo -n -- sh -c " + shlex.quote(command)


class SudoFilter:
    """Takes sudo's prompt and the start marker out of stderr, counting them."""

    def __init__(self, prompt: str = SUDO_PROMPT):
        self.tokens = (prompt.encode(), (SUDO_STARTED + "\n").encode())
        self.prompts = 0
        self.started = False
        self._buf = b""

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data
        for i, token in enumerate(self.tokens):
            found = buf.count(token)
            if found:
                buf = buf.replace(token, b"")
                if i == 0:
                    self.prompts += found
                else:
                    self.started = True
        keep = max((k for token in self.tokens for k in range(min(len(token) - 1, len(buf)), 0, -1)
                    if token.startswith(buf[-k:])), default=0)
        self._buf = buf[len(buf) - keep:] if keep else b""
        return buf[:len(buf) - keep]

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest

    def rejected(self, exit_code: int | None) -> bool:
        """sudo asked again, or asked and then ended without starting the command."""
        return self.prompts >= 2 or (self.prompts >= 1 and not self.started and exit_code not in (0, None))
