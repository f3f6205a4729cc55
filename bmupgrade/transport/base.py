"""The transport contract the engine depends on.

The engine never imports Fabric: it talks to a `Transport`, so its logic is tested on the
in-memory transport and proven end to end on the real-sshd lab with the SSH one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

# Called with (node name, stream name "stdout"|"stderr", a chunk of decoded text) as output arrives.
OutputSink = Callable[[str, str, str], None]

# Returns the sudo password, or None (NOPASSWD: sudo -n). Either `f()`: one password for all
# nodes, asked once per transport; or `f(address: NodeAddress)`: asked once per node. Called
# lazily, at the first command that needs sudo; the answer is kept in memory only.
PasswordProvider = Callable[..., "str | None"]


@dataclass(frozen=True)
class NodeAddress:
    """Where a node is reached. Empty fields fall back to ~/.ssh/config, then to defaults."""

    name: str
    host: str
    port: int | None = None
    user: str | None = None
    sudo: bool = False
    identity_file: str | None = None  # runbook/lab-given key; ssh config and agent still apply
    known_hosts: tuple[str, ...] = ()  # extra known_hosts files (runbook- or lab-given)
    ssh_config: str | None = None  # explicit ssh_config file (the lab writes one)


@dataclass
class CommandResult:
    node: str
    command: str
    exit_code: int | None  # None: no exit status (timeout, dropped connection)
    duration: float
    output_tail: str = ""  # the last OUTPUT_TAIL_BYTES of stdout+stderr, interleaved
    stdout: str = ""  # kept only when the caller asked capture=True (probes, checks)
    timed_out: bool = False
    connection_lost: bool = False
    error: str = ""  # a one-line reason when exit_code is None (or sudo rejected the password)
    # Added (all defaulted, backward compatible):
    stdout_truncated: bool = False  # capture=True kept only the first CAPTURE_BYTES of stdout
    # False only when the transport is sure the command never reached the node (connection
    # already gone, session refused): then it is safe to run it again. True otherwise, which
    # with exit_code None means "outcome unknown" (DESIGN §3.3: verify or ask, never re-run).
    sent: bool = True
    # This command ran on a new connection, opened because the previous one was lost.
    reconnected: bool = False
    # sudo rejected the password (or refused to send a known-bad one): the command did not run.
    sudo_rejected: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


OUTPUT_TAIL_BYTES = 64 * 1024
CAPTURE_BYTES = 1024 * 1024  # capture=True keeps at most this much of stdout


class TransportError(Exception):
    """Cannot reach or authenticate a node (unknown/changed host key, refused, DNS...).

    The message is one line a person can act on (e.g. the fingerprint and how to accept it).
    """

    def __init__(self, node: str, message: str):
        super().__init__(f"{node}: {message}")
        self.node = node
        self.reason = message  # the message without the node prefix
        # connect(): every node that failed, by name (this error is the first of them)
        self.errors: dict[str, TransportError] = {node: self}


class Transport(Protocol):
    def connect(self, nodes: list[NodeAddress]) -> None:
        """Open one connection per node (in parallel); raise TransportError on the first failure."""

    def run(
        self,
        node: str,
        command: str,
        *,
        timeout: float | None = None,
        sudo: bool = False,
        capture: bool = False,
        on_output: OutputSink | None = None,
    ) -> CommandResult:
        """Run one shell command on a node, reusing its connection. Never raises for a
        non-zero exit, a timeout or a lost connection: those are in the result.

        After a lost connection the next run() on that node makes one attempt to reconnect
        (result.reconnected); a lost command is never re-sent by the transport. Raises
        TransportError only for a node that was never connected or a closed transport."""

    def close(self) -> None: ...


def ask_password(provider, address: NodeAddress, cache: dict, lock) -> str | None:
    """Call a PasswordProvider once (per node if it takes the address, else once for all)."""
    per_node = _takes_an_argument(provider)
    key = address.name if per_node else "*"
    with lock:
        if key not in cache:
            pw = provider(address) if per_node else provider()
            cache[key] = pw or None
        return cache[key]


def forget_password(provider, address: NodeAddress, cache: dict, lock) -> None:
    with lock:
        cache.pop(address.name if _takes_an_argument(provider) else "*", None)


def _takes_an_argument(f) -> bool:
    import inspect

    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):
        return True
    params = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    return bool(params)
