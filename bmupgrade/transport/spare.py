"""A session channel opened ahead, per connection: the next command then costs one round trip
(exec) instead of two (open the channel, then exec).

Once a command holds its session, a small daemon thread of the node opens the next one, while
that command's exec request is on the wire: both round trips overlap. Back to
back commands (a step's verify, the VIP probe before a step, the next step) then pay one round
trip each: on a WAN link that is half the serial latency of the HA-off window. Nothing is sent
in a session opened ahead until a command is, so "nothing was sent" keeps its meaning.

The server may close an idle session (OpenSSH's ChannelTimeout) or allow no second one
(MaxSessions 1): a closed session is never used, and a refusal stops the opening ahead on that
connection. The thread is a daemon: a hung open never holds up the exit.
"""

from __future__ import annotations

import logging
import threading

import paramiko

log = logging.getLogger("bmupgrade.transport.ssh")


class SpareSession:
    def __init__(self, name: str, timeout: float):
        self.name, self.timeout = name, timeout
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._chan: paramiko.Channel | None = None
        self._transport: paramiko.Transport | None = None
        self._refused_by: paramiko.Transport | None = None  # the server allows no more sessions
        self._thread: threading.Thread | None = None
        self._closed = False

    def take(self, t: paramiko.Transport) -> paramiko.Channel | None:
        """The session opened ahead on `t`, if one is ready and still open."""
        with self._lock:
            c, self._chan = self._chan, None
        if c is None or (c.get_transport() is t and c.active and not c.closed):
            return c
        close_quietly(c)
        return None

    def ask(self, t: paramiko.Transport) -> None:
        """Open the next one now. Called once the command holds its own session: on a server
        that allows one session (MaxSessions 1), opening ahead must never take it first."""
        with self._lock:
            self._transport = t
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name=f"bmupgrade-spare-{self.name}", daemon=True)
                self._thread.start()
        self._wanted.set()

    def ready(self) -> bool:
        with self._lock:
            return self._chan is not None

    def close(self) -> None:
        with self._lock:
            self._closed, c, self._chan = True, self._chan, None
        self._wanted.set()
        if c is not None:
            close_quietly(c)

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            with self._lock:
                if self._closed:
                    return
                t = self._transport
                if self._chan is not None or t is None or t is self._refused_by or not t.is_active():
                    continue
            self._open(t)

    def _open(self, t: paramiko.Transport) -> None:
        try:
            c = t.open_session(timeout=self.timeout)
        except paramiko.ChannelException as e:  # e.g. "administratively prohibited" (MaxSessions)
            log.debug("%s: the server opens no session ahead (%s); not asking again", self.name, e)
            with self._lock:
                self._refused_by = t
            return
        except Exception as e:
            log.debug("%s: no session opened ahead: %s", self.name, e)
            return
        with self._lock:
            keep = not self._closed and self._chan is None and t is self._transport
            if keep:
                self._chan = c
        if not keep:
            close_quietly(c)


def close_quietly(chan: paramiko.Channel) -> None:
    try:
        chan.close()
    except Exception:
        pass
