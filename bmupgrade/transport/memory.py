"""In-memory transport for the engine's unit tests: scripted replies, every call recorded.

    t = MemoryTransport()
    t.on("bm1", "pcs property config maintenance-mode", stdout="maintenance-mode: true\\n")
    t.on(ANY, re.compile(r"^apt-get install"), fail_times=2)        # fails twice, then exit 0
    t.on("bm2", "systemctl restart bm", connection_lost=True)      # outcome unknown
    t.on("bm1", "sleep 60", delay=60)                              # > timeout: timed_out
    t.state["vip"] = "bm1"                                          # dynamic behaviour:
    t.on(ANY, re.compile("^ip -o addr"), lambda call:
         "inet 192.0.2.10/32" if call.transport.state["vip"] == call.node else "")
    t.on("bm1", "pcs resource move vip bm2", lambda call: call.transport.state.update(vip="bm2"))
    t.unreachable("bm2")                                            # connect() raises
    t.connect(nodes); ...; assert t.calls_on("bm1") == [...]

Matching: a ``str`` matches the exact command, an ``re.Pattern`` with ``search``. The most
recently added matching rule wins (so a test can override a fixture's defaults). Unmatched
commands give exit 0 and no output, or raise `UnexpectedCommand` with ``strict=True``.
Semantics mirror `SshTransport`: a lost connection marks the node, the next `run()` there
"reconnects" (``reconnected=True``) unless the node is unreachable (then it returns
``connection_lost=True, sent=False``).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Sequence, Union

from bmupgrade.transport.base import (
    CAPTURE_BYTES,
    OUTPUT_TAIL_BYTES,
    CommandResult,
    NodeAddress,
    OutputSink,
    PasswordProvider,
    TransportError,
    ask_password,
)

ANY = None  # node selector: every node


@dataclass(frozen=True)
class Reply:
    """What a scripted command does."""

    exit_code: int | None = 0
    stdout: str = ""
    stderr: str = ""
    delay: float = 0.0  # seconds (through the transport's sleep); beyond the run's timeout: timed_out
    timed_out: bool = False  # end as if the run's timeout was hit
    connection_lost: bool = False  # the connection drops during the command (outcome unknown)
    error: str = ""
    sent: bool = True  # with connection_lost: False = lost before the command reached the node
    # Interleaved output, in order, instead of stdout-then-stderr: [("stdout", "a"), ("stderr", "b")]
    chunks: tuple[tuple[str, str], ...] | None = None


@dataclass
class Call:
    """One run() as the transport saw it (handed to handlers, kept in `records`)."""

    node: str
    command: str
    sudo: bool  # effective: asked for, or NodeAddress.sudo, and the user is not root
    timeout: float | None
    capture: bool
    index: int  # position in transport.records
    attempt: int = 0  # how many times the matching rule was used, this call included (1-based)
    transport: "MemoryTransport | None" = field(default=None, repr=False)
    tag: str | None = None  # the engine's tag for this command (engine.remote.still_running finds it)
    result: CommandResult | None = field(default=None, repr=False)


HandlerResult = Union[Reply, CommandResult, str, int, None]
Handler = Callable[[Call], HandlerResult]


class UnexpectedCommand(AssertionError):
    """strict=True and no rule matched."""


@dataclass
class Rule:
    node: str | frozenset[str] | None
    match: str | re.Pattern[str]
    replies: Sequence[Reply | Handler]
    fail_times: int = 0
    fail: Reply = Reply(exit_code=1, stderr="simulated failure\n")
    times: int | None = None  # apply at most this many times, then fall through
    used: int = 0

    def matches(self, node: str, command: str) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if self.node is not None:
            if isinstance(self.node, frozenset):
                if node not in self.node:
                    return False
            elif self.node != node:
                return False
        if isinstance(self.match, re.Pattern):
            return self.match.search(command) is not None
        return self.match == command

    def next_reply(self) -> Reply | Handler:
        self.used += 1
        if self.used <= self.fail_times:
            return self.fail
        i = min(self.used - self.fail_times - 1, len(self.replies) - 1)
        return self.replies[i]


def _as_reply(out, command: str) -> Reply:
    """A handler's answer as a Reply: None (exit 0), a Reply, a bool or int (exit code), a str (stdout)."""
    if out is None:
        return Reply()
    if isinstance(out, Reply):
        return out
    if isinstance(out, bool):
        return Reply(exit_code=0 if out else 1)
    if isinstance(out, int):
        return Reply(exit_code=out)
    if isinstance(out, str):
        return Reply(stdout=out)
    raise TypeError(f"handler for {command!r} returned {type(out).__name__}")


class MemoryTransport:
    def __init__(
        self,
        *,
        strict: bool = False,
        default: Reply = Reply(),
        sleep: Callable[[float], None] = time.sleep,
        password_provider: PasswordProvider | None = None,
    ):
        self.strict = strict
        self.default = default
        self.sleep = sleep
        self.state: dict = {}  # free for handlers (VIP holder, versions, ...)
        self.records: list[Call] = []
        self.running: set[tuple[str, str]] = set()  # (node, tag) still running there (see _still_running_answer)
        # Each node's files written by the engine's own snippets (lock, HA-off marker): {node: {path: text}}.
        # None turns that off (the snippets then get the default reply like any command).
        self.files: dict[str, dict[str, str]] | None = {}
        self.unexpected: list[tuple[str, str]] = []  # unmatched commands seen in strict mode
        self.connected: dict[str, NodeAddress] = {}
        self.connect_count: dict[str, int] = {}  # connects + reconnects per node
        self.closed = False
        self._rules: list[Rule] = []
        self._unreachable: dict[str, str] = {}
        self._lost: dict[str, str] = {}
        self._password_provider = password_provider
        self._passwords: dict[str, str | None] = {}
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- scripting

    def on(
        self,
        node: str | Iterable[str] | None,
        match: str | re.Pattern[str],
        reply: Reply | Handler | None = None,
        *,
        replies: Sequence[Reply | Handler] | None = None,
        fail_times: int = 0,
        fail: Reply | None = None,
        times: int | None = None,
        **fields,
    ) -> Rule:
        """Script a command on a node (``ANY``/None: every node; a list: those nodes).

        Give a `Reply`, a handler ``f(call) -> Reply | CommandResult | str (stdout) |
        int (exit code) | None (exit 0)``, a sequence of ``replies`` (one per call, the last
        repeats), or `Reply` fields as keywords (``exit_code=1, stderr="E: ..."``).
        ``fail_times=N``: the first N calls return ``fail`` (default exit 1), then the reply.
        """
        if replies is not None:
            if reply is not None or fields:
                raise TypeError("give either replies=[...] or one reply")
            seq = list(replies)
        elif reply is not None:
            if fields:
                raise TypeError("give either a reply or reply fields")
            seq = [reply]
        else:
            seq = [Reply(**fields)]
        if not seq:
            raise ValueError("replies must not be empty")
        if node is not None and not isinstance(node, str):
            node = frozenset(node)
        rule = Rule(node=node, match=match, replies=seq, fail_times=fail_times, times=times)
        if fail is not None:
            rule.fail = fail
        with self._lock:
            self._rules.append(rule)
        return rule

    def unreachable(self, node: str, message: str = "connection refused (simulated)") -> None:
        """connect() (and any reconnect) to this node fails with TransportError(message)."""
        self._unreachable[node] = message

    def reachable(self, node: str) -> None:
        self._unreachable.pop(node, None)

    def drop(self, node: str, reason: str = "connection lost (simulated)") -> None:
        """The node's connection dies now, between commands: the next run() reconnects."""
        self._lost[node] = reason

    # ----------------------------------------------------------------- observing

    @property
    def calls(self) -> list[tuple[str, str]]:
        """Every run(), in order, as (node, command)."""
        with self._lock:
            return [(c.node, c.command) for c in self.records]

    def calls_on(self, node: str) -> list[str]:
        """The commands run on one node, in order."""
        with self._lock:
            return [c.command for c in self.records if c.node == node]

    @property
    def nodes(self) -> list[str]:
        return list(self.connected)

    # ----------------------------------------------------------------- Transport

    def __enter__(self) -> "MemoryTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self, nodes: list[NodeAddress]) -> None:
        if self.closed:
            raise TransportError("-", "transport is closed")
        errors = {
            n.name: TransportError(n.name, self._unreachable[n.name])
            for n in nodes
            if n.name in self._unreachable
        }
        if errors:
            first = next(iter(errors.values()))
            first.errors = errors
            raise first
        for n in nodes:
            if n.name not in self.connected:
                self.connected[n.name] = n
                self.connect_count[n.name] = self.connect_count.get(n.name, 0) + 1

    def close(self) -> None:
        self.closed = True

    def run(
        self,
        node: str,
        command: str,
        *,
        timeout: float | None = None,
        sudo: bool = False,
        capture: bool = False,
        on_output: OutputSink | None = None,
        tag: str | None = None,
    ) -> CommandResult:
        if self.closed:
            raise TransportError(node, "transport is closed")
        address = self.connected.get(node)
        if address is None:
            raise TransportError(node, "not connected (unknown node)")
        effective_sudo = (sudo or address.sudo) and address.user != "root"

        with self._lock:
            call = Call(node, command, effective_sudo, timeout, capture, len(self.records), transport=self, tag=tag)
            self.records.append(call)
            running = self._still_running_answer(node, command)
            if running is not None:
                call.result = CommandResult(node, command, 0, 0.0, stdout=running, output_tail=running)
                return call.result
            refused, reconnected = self._reconnect(node, command)
            if refused is not None:
                call.result = refused
                return refused
            password = None
            if effective_sudo and self._password_provider is not None:
                password = ask_password(self._password_provider, address, self._passwords, self._lock)
            action = self._action(call)
        # Handlers and delays run outside the lock: parallel nodes stay parallel.
        if callable(action) and not isinstance(action, Reply):
            out = action(call)
            if isinstance(out, CommandResult):
                out = replace(out, node=node, command=command)
                if reconnected:
                    out.reconnected = True
                if out.connection_lost:
                    self._lost[node] = out.error or "connection lost (simulated)"
                call.result = out
                return out
            action = _as_reply(out, command)
        if isinstance(action, CommandResult):  # a snippet played on the node's files
            call.result = action
            return action
        call.result = self._play(node, command, action, timeout, capture, on_output, password, reconnected)
        return call.result

    def _reconnect(self, node: str, command: str) -> tuple[CommandResult | None, bool]:
        """As SshTransport: the run after a lost connection reconnects once (reconnected=True),
        or fails unsent when the node is unreachable. (refusal or None, reconnected)."""
        if node not in self._lost:
            return None, False
        why = self._lost[node]
        if node in self._unreachable:
            return CommandResult(node, command, None, 0.0, connection_lost=True, sent=False,
                                 error=f"{why}; reconnect failed: {self._unreachable[node]}"), False
        del self._lost[node]
        self.connect_count[node] = self.connect_count.get(node, 0) + 1
        return None, True

    def _action(self, call: Call) -> "Reply | Handler | CommandResult":
        """What the command does: the newest matching rule's next reply, else a snippet played on
        the node's files (a CommandResult), else the default (or UnexpectedCommand when strict)."""
        node, command = call.node, call.command
        rule = next((r for r in reversed(self._rules) if r.matches(node, command)), None)
        if rule is None and self.files is not None:
            played = self._play_snippet(node, command)
            if played is not None:
                return played
        if rule is None:
            if self.strict:
                self.unexpected.append((node, command))
                raise UnexpectedCommand(f"{node}: unexpected command {command!r}")
            return self.default
        action = rule.next_reply()
        call.attempt = rule.used
        return action

    # ----------------------------------------------------------------- internals

    def _play_snippet(self, node: str, command: str) -> CommandResult | None:
        """engine.remote's lock/marker snippets, played on `self.files[node]` as sh would."""
        from bmupgrade.engine.remote import parse_snippet

        op = parse_snippet(command)
        if op is None:
            return None
        files = self.files.setdefault(node, {})
        lock, marker = op["dir"] + "/lock", op["dir"] + "/ha-off"
        out = ""
        if op["op"] == "lock":
            if op["force"]:
                files.pop(lock, None)
            if lock not in files or op["run_id"] in files[lock]:
                files[lock] = op["info"] + "\n"
                out = "lock:acquired\n"
            else:
                out = "lock:held " + files[lock].replace("\n", " ") + "\n"
            out += "marker:" + files.get(marker, "").replace("\n", " ") + "\n"
        elif op["op"] == "read-marker":
            out = "marker:" + files.get(marker, "").replace("\n", " ") + "\n"
        elif op["op"] == "write-marker":
            files[marker] = op["info"] + "\n"
        elif op["op"] == "remove-marker":
            files.pop(marker, None)
        elif op["op"] == "unlock" and op["run_id"] in files.get(lock, ""):
            files.pop(lock)
        return CommandResult(node, command, 0, 0.0, stdout=out, output_tail=out)

    def _still_running_answer(self, node: str, command: str) -> str | None:
        """Answers engine.remote.still_running from `self.running` ({(node, tag)}: commands a
        test says are still running on the node, e.g. after a lost connection)."""
        from bmupgrade.engine.remote import TAG_VAR

        if not command.startswith("for p in /proc/[0-9]*") or f"{TAG_VAR}=" not in command:
            return None
        return "".join(f"{4000 + i}\n" for i, (n, t) in enumerate(sorted(self.running))
                       if n == node and f"{TAG_VAR}={t}" in command)

    def _play(
        self,
        node: str,
        command: str,
        reply: Reply,
        timeout: float | None,
        capture: bool,
        on_output: OutputSink | None,
        password: str | None,
        reconnected: bool,
    ) -> CommandResult:
        timed_out = reply.timed_out or (timeout is not None and reply.delay > timeout)
        duration = reply.delay
        if timed_out and timeout is not None:
            duration = min(reply.delay, timeout) if reply.delay else timeout
        if duration:
            self.sleep(duration)

        chunks = list(reply.chunks) if reply.chunks is not None else [
            (s, t) for s, t in (("stdout", reply.stdout), ("stderr", reply.stderr)) if t
        ]
        if password:
            chunks = [(s, t.replace(password, "********")) for s, t in chunks]
        if on_output is not None:
            for stream, text in chunks:
                on_output(node, stream, text)
        tail = "".join(t for _, t in chunks).encode()[-OUTPUT_TAIL_BYTES:].decode(errors="ignore")
        stdout = "".join(t for s, t in chunks if s == "stdout") if capture else ""
        truncated = len(stdout.encode()) > CAPTURE_BYTES
        if truncated:
            stdout = stdout.encode()[:CAPTURE_BYTES].decode(errors="ignore")

        common = dict(output_tail=tail, stdout=stdout, stdout_truncated=truncated, reconnected=reconnected)
        if reply.connection_lost:
            reason = reply.error or "connection lost (simulated)"
            self._lost[node] = reason
            return CommandResult(node, command, None, duration, connection_lost=True,
                                 sent=reply.sent, error=reason + ("; the command's outcome is unknown" if reply.sent else ""), **common)
        if timed_out:
            return CommandResult(node, command, None, duration, timed_out=True,
                                 error=reply.error or f"timed out after {timeout if timeout is not None else duration:g}s", **common)
        return CommandResult(node, command, reply.exit_code, duration, error=reply.error, sent=reply.sent, **common)


__all__ = ["ANY", "Call", "MemoryTransport", "Reply", "Rule", "UnexpectedCommand"]
