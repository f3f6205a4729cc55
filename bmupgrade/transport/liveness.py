"""Dead peers are noticed while a command waits: after `interval` seconds of silence from a
node, a `keepalive@openssh.com` request must be answered within `timeout`; if not, the
connection is dropped, so the waiting command ends with connection_lost (outcome unknown)
instead of hanging. TCP keepalives (transport/ssh.py `_tune_socket`) back this up.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

import paramiko

log = logging.getLogger("bmupgrade.transport.ssh")


class Watchdog:
    """One daemon thread for all nodes of a transport; it checks only nodes with a command
    waiting (`node.active`). A node is SshTransport's record: `transport`, `active`,
    `last_seen`, `seen()`, `probe_started`, `probe_transport`, `state_lock`, `mark_lost()`,
    `where`, `address`."""

    def __init__(self, nodes: Callable[[], Iterable], stop: threading.Event, *, interval: float, timeout: float):
        self._nodes, self._stop = nodes, stop
        self.interval, self.timeout = interval, timeout
        threading.Thread(target=self._watch, name="ssh-watchdog", daemon=True).start()

    def _watch(self) -> None:
        """While a command waits on a node, ask the node to answer within `timeout` after
        `interval` of silence; no answer: drop the connection, so the waiting command ends
        with connection_lost instead of hanging."""
        while not self._stop.wait(0.25):
            for node in self._nodes():
                try:
                    self._check(node)
                except Exception:
                    log.debug("watchdog", exc_info=True)

    def _check(self, node) -> None:
        t = node.transport
        if t is None or not t.is_active() or node.active == 0:
            return
        now = time.monotonic()
        with node.state_lock:
            if node.probe_started is not None and node.probe_transport is not t:
                node.probe_started = None  # a probe of a connection since replaced
            if node.probe_started is not None:
                if now - node.probe_started > self.timeout:
                    silent = now - node.last_seen
                    self._declare_lost(
                        node, t, f"no answer from {node.where} for {silent:.0f}s (dead peer?)"
                    )
                return
            if now - node.last_seen < self.interval:
                return
            node.probe_started = now
            node.probe_transport = t
        threading.Thread(target=self._probe, args=(node, t), name="ssh-probe", daemon=True).start()

    def _probe(self, node, t: paramiko.Transport) -> None:
        try:
            # OpenSSH answers any global request with want-reply (failure for unknown ones).
            t.global_request("keepalive@openssh.com", wait=True)
        except Exception:
            pass
        with node.state_lock:
            if node.probe_transport is t:
                if t.is_active():
                    node.seen()
                node.probe_started = None
                node.probe_transport = None

    def _declare_lost(self, node, t: paramiko.Transport, reason: str) -> None:
        node.mark_lost(reason)
        log.warning("%s: %s", node.address.name, reason)
        threading.Thread(target=t.close, name="ssh-drop", daemon=True).start()
