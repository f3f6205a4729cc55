"""The transport contract the engine depends on.

The engine never imports Fabric: it talks to a `Transport`, so its logic is tested on the
in-memory transport and proven end to end on the real-sshd lab with the SSH one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

# Called with (node name, stream name "stdout"|"stderr", a chunk of decoded text) as output arrives.
OutputSink = Callable[[str, str, str], None]


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
    error: str = ""  # a one-line reason when exit_code is None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


OUTPUT_TAIL_BYTES = 64 * 1024


class TransportError(Exception):
    """Cannot reach or authenticate a node (unknown/changed host key, refused, DNS...).

    The message is one line a person can act on (e.g. the fingerprint and how to accept it).
    """

    def __init__(self, node: str, message: str):
        super().__init__(f"{node}: {message}")
        self.node = node


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
        non-zero exit, a timeout or a lost connection: those are in the result."""

    def close(self) -> None: ...
