"""A session channel opened ahead, per connection: the next command then costs one round trip
(exec) instead of two (open the channel, then exec).

Once a command holds its session, the open request of the next one goes out at once, without
waiting for the answer: it travels with the command's exec request, so both round trips
overlap, and the next command finds its session confirmed. Back-to-back commands (a step's
verify, the VIP probe before a step, the next step) then pay one round trip each: on a WAN link
that is almost half the serial latency of the HA-off window. Nothing is sent in a session opened
ahead until a command is, so "nothing was sent" keeps its meaning.

Paramiko has no call that opens a channel without waiting for the answer; `_request_session`
is the first half of its `Transport.open_channel` (5.x), and any change there (an error) turns
the opening ahead off for the node. A session refused (MaxSessions) stops the asking on that
connection; one closed meanwhile, or whose answer never came, is never used.
"""

from __future__ import annotations

import logging
import threading
import time

import paramiko
from paramiko.common import cMSG_CHANNEL_OPEN

log = logging.getLogger("bmupgrade.transport.ssh")


class SpareSession:
    def __init__(self, name: str, timeout: float):
        self.name, self.timeout = name, timeout
        self._lock = threading.Lock()
        self._pending: tuple[paramiko.Transport, paramiko.Channel, threading.Event] | None = None
        self._refused_by: paramiko.Transport | None = None  # the server allows no more sessions
        self._off = False  # Paramiko's internals are not what _request_session expects

    def ask(self, t: paramiko.Transport) -> None:
        """Request the next session now (called once the command holds its own: on a server
        that allows one session, opening ahead must never take it first). Never raises."""
        with self._lock:
            if self._pending is not None or self._off or t is self._refused_by or not t.is_active():
                return
            try:
                self._pending = (t, *_request_session(t))
            except (AttributeError, TypeError, KeyError) as e:
                self._off = True
                log.debug("%s: sessions are not opened ahead with this Paramiko: %s", self.name, e)
            except Exception as e:  # the connection is going away: the command's own result says so
                log.debug("%s: no session opened ahead: %s", self.name, e)

    def ready(self) -> bool:
        with self._lock:
            return self._pending is not None and self._pending[2].is_set()

    def take(self, t: paramiko.Transport) -> paramiko.Channel | None:
        """The session requested ahead on `t`, once the server has confirmed it (its answer is
        normally there already); None if there is none, or it was refused, closed or lost."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None or pending[0] is not t:
            return None  # nothing asked, or asked on a connection since replaced (it went with it)
        _, chan, answered = pending
        deadline = time.monotonic() + self.timeout
        while not answered.wait(0.1):  # as Paramiko's open_channel: notice a dead connection
            if not t.is_active() or time.monotonic() > deadline:
                return None
        if not chan.active and not chan.closed:  # CHANNEL_OPEN_FAILURE (e.g. MaxSessions): stop asking here
            with self._lock:
                self._refused_by = t
            with t.lock:
                if isinstance(t.saved_exception, paramiko.ChannelException):
                    t.saved_exception = None  # ours, not a later open's
            return None
        if chan.active and not chan.closed:
            return chan
        close_quietly(chan)
        return None


def _request_session(t: paramiko.Transport) -> tuple[paramiko.Channel, threading.Event]:
    """Send CHANNEL_OPEN "session" and register the channel, as Paramiko's open_channel does,
    without waiting: (the channel, the event Paramiko sets on success or failure). The caller
    keeps the channel: Paramiko's own table holds it weakly."""
    with t.lock:
        window_size = t._sanitize_window_size(None)
        max_packet_size = t._sanitize_packet_size(None)
        chanid = t._next_channel()
        m = paramiko.Message()
        m.add_byte(cMSG_CHANNEL_OPEN)
        m.add_string("session")
        m.add_int(chanid)
        m.add_int(window_size)
        m.add_int(max_packet_size)
        chan = paramiko.Channel(chanid)
        t._channels.put(chanid, chan)
        t.channel_events[chanid] = answered = threading.Event()
        t.channels_seen[chanid] = True
        chan._set_transport(t)
        chan._set_window(window_size, max_packet_size)
    t._send_user_message(m)
    return chan, answered


def close_quietly(chan: paramiko.Channel) -> None:
    try:
        chan.close()
    except Exception:
        pass
