"""How commands reach the nodes: Fabric over real SSH, or in memory for unit tests."""

from bmupgrade.transport.base import CommandResult, NodeAddress, Transport, TransportError

__all__ = ["CommandResult", "NodeAddress", "Transport", "TransportError"]
