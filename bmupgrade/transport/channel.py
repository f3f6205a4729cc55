"""One command on one SSH session channel: open it and send the command, stream the output
until the exit status and EOF, a timeout or a lost connection, then say what happened.
SshTransport owns the connections (and reconnects); this owns a channel, start to close.
A lost connection is never retried here: the result says `connection_lost` (outcome unknown).
"""

from __future__ import annotations

import logging
import select
import time
import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST

from bmupgrade.transport.base import CommandResult, OutputSink
from bmupgrade.transport.spare import close_quietly
from bmupgrade.transport.streams import Collector, PidLine, SudoFilter

log = logging.getLogger("bmupgrade.transport.ssh")

EXIT_DRAIN_GRACE = 2.0  # after the exit status, wait this long at most for the end of output
READ_CHUNK = 64 * 1024


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


class ChannelRun:
    """A command on `node` (SshTransport's per-node record: `where`, `lost`, `seen()`,
    `mark_lost()`, `spare`) over the Paramiko transport `t`. `wire` is the command line as sent
    (sudo-wrapped, pid-announcing)."""

    def __init__(self, n, t: paramiko.Transport, node: str, command: str, wire: str, *, password: str | None,
                 use_sudo: bool, timeout: float | None, capture: bool, on_output: OutputSink | None,
                 reconnected: bool, start: float, open_timeout: float):
        self.n, self.t, self.node, self.command, self.wire = n, t, node, command, wire
        self.password, self.use_sudo, self.timeout, self.capture = password, use_sudo, timeout, capture
        self.reconnected, self.start, self.open_timeout = reconnected, start, open_timeout
        self.out = Collector(node, capture, on_output, password)
        self.pid_line = PidLine()
        self.sudo_filter = SudoFilter() if password is not None else None  # its markers come with a password only
        self.chan: paramiko.Channel | None = None
        self.finished = False

    def result(self, **kw) -> CommandResult:
        kw.setdefault("exit_code", None)
        kw.setdefault("reconnected", self.reconnected)
        return CommandResult(node=self.node, command=self.command, duration=time.monotonic() - self.start, **kw)

    def run(self) -> CommandResult:
        try:
            return self._start() or self._outcome(self._wait())
        finally:
            self._close()

    # ------------------------------------------------------------------ start
    def _start(self) -> CommandResult | None:
        """Send the command on a session: the one opened ahead during an earlier command
        (transport/spare.py), else a new one; then the password on stdin. A result if that
        failed (saying whether the command may have been sent), else None."""
        self.chan = self.n.spare.take(self.t)
        if self.chan is not None:
            self.n.spare.ask(self.t)
            failed = self._exec()
            if failed is None or not self.t.is_active():
                return failed or self._send_password()
            # no CHANNEL_SUCCESS came, the connection is up: the server closed that session
            # meanwhile and never started the command; it goes out once more, on a new session
            log.debug("%s: the session opened ahead was refused (%s); opening another", self.node, failed.error)
            close_quietly(self.chan)
        return self._open() or self._exec() or self._send_password()

    def _open(self) -> CommandResult | None:
        """A new session for the command (then the next one is opened ahead), or why not."""
        n, t = self.n, self.t
        try:
            # longer than the watchdog bound: a dead peer is reported as lost, not as "cannot open"
            self.chan = open_session(t, self.open_timeout)
        except Exception as e:
            if not t.is_active():
                n.mark_lost(f"connection to {n.where} lost")
                return self.result(connection_lost=True, sent=False, error=f"{n.lost} (before the command was sent)")
            return self.result(sent=False, error=f"cannot open a session: {one_line(e)}")
        n.spare.ask(t)
        return None

    def _exec(self) -> CommandResult | None:
        n, t = self.n, self.t
        try:
            self.chan.exec_command(self.wire)
        except Exception as e:
            if not t.is_active():
                n.mark_lost(f"connection to {n.where} lost")
                return self.result(connection_lost=True,
                                   error=f"{n.lost} while starting the command; its outcome is unknown")
            return self.result(sent=False, error=f"the server refused the command: {one_line(e)}")
        n.seen()
        return None

    def _send_password(self) -> None:
        if self.password is None:
            return None  # the wire itself made stdin /dev/null (streams.announcing_pid)
        try:
            self.chan.sendall((self.password + "\n").encode("utf-8"))
            self.chan.shutdown_write()  # then EOF on stdin, like `ssh host cmd </dev/null`
        except (OSError, paramiko.SSHException):
            pass  # the command already ended or the connection died: the wait tells
        return None

    # ------------------------------------------------------------------ wait
    def _read(self) -> bool:
        """Whatever has arrived, into the collector. True if anything did."""
        chan, got = self.chan, False
        while chan.recv_ready():
            self.out.feed("stdout", chan.recv(READ_CHUNK))
            got = True
        while chan.recv_stderr_ready():
            self.out.feed("stderr", self._stderr(self.pid_line.feed(chan.recv_stderr(READ_CHUNK))))
            got = True
        return got

    def _stderr(self, data: bytes, final: bool = False) -> bytes:
        """stderr without sudo's prompt and start marker (when a password went to sudo)."""
        f = self.sudo_filter
        return data if f is None else f.feed(data) + (f.flush() if final else b"")

    def _wait(self) -> bool:
        """Stream output until exit status + EOF, the timeout, or loss. True if timed out."""
        chan = self.chan
        deadline = self.start + self.timeout if self.timeout is not None else None
        fd = chan.fileno()
        exit_seen_at: float | None = None
        while True:
            got = self._read()
            if got:
                self.n.seen()
            now = time.monotonic()
            if chan.closed:
                break
            if chan.exit_status_ready():
                if chan.eof_received:
                    break
                exit_seen_at = exit_seen_at or now
                if now - exit_seen_at > EXIT_DRAIN_GRACE:
                    # A background process keeps the output open; the command is done.
                    log.debug("%s: output still open %.0fs after exit; not waiting", self.node, EXIT_DRAIN_GRACE)
                    break
            if deadline is not None and now >= deadline:
                return True
            if got:
                continue
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - now))
            if chan.eof_received:
                chan.status_event.wait(wait)  # after EOF the pipe stays readable forever: wait on the status
            else:
                select.select([fd], [], [], wait)
        return False

    # ------------------------------------------------------------------ outcome
    def _outcome(self, timed_out: bool) -> CommandResult:
        """Drain what arrived with the end, then classify: timed out, exited (sudo rejection
        told apart), connection lost (outcome unknown), or killed without a status."""
        chan, t, n = self.chan, self.t, self.n
        self._read()
        self.out.feed("stderr", self._stderr(self.pid_line.flush(), final=True))
        self.out.finish()
        common = dict(output_tail=self.out.tail, stdout=self.out.stdout if self.capture else "",
                      stdout_truncated=self.out.stdout_truncated)
        if timed_out:
            send_signal(chan, "TERM")
            pid = self.pid_line.pid
            stopped = pid is not None and terminate_group(t, pid, n.spare.take(t))
            return self.result(timed_out=True, error=f"timed out after {self.timeout:g}s; " + (
                f"SIGTERM sent to its process group (pid {pid}); it may still be running if it ignores SIGTERM"
                if stopped else "the command was sent SIGTERM and may still be running"), **common)
        status = chan.exit_status if chan.exit_status_ready() else -1
        if status != -1:
            self.finished = True
            res = self.result(exit_code=status, **common)
            if self.use_sudo and self.sudo_filter is not None and self.sudo_filter.rejected(status):
                res.error = "sudo rejected the password"  # the command did not run
                res.sudo_rejected, res.sent = True, False
            return res
        if not t.is_active():
            n.mark_lost(f"connection to {n.where} lost during the command")
            return self.result(connection_lost=True, error=f"{n.lost}; the command's outcome is unknown", **common)
        self.finished = True
        return self.result(error="the command ended without an exit status (killed by a signal?)", **common)

    def _close(self) -> None:
        chan = self.chan
        if chan is None:
            return
        if not self.finished and not chan.closed:
            log.debug("%s: closing channel of an unfinished command", self.node)
        close_quietly(chan)


SESSION_REFUSED_RETRIES = (0.05, 0.1, 0.2, 0.4, 0.8)  # seconds: ~1.5 s in all


def open_session(t: paramiko.Transport, timeout: float) -> paramiko.Channel:
    """A new session; refused (CHANNEL_OPEN_FAILURE) means nothing was sent, so it is asked
    again for a moment: at `MaxSessions`, the previous command's session may not be freed yet
    when the next one is asked for (sshd frees it once it has reaped the command)."""
    for delay in SESSION_REFUSED_RETRIES:
        try:
            return t.open_session(timeout=timeout)
        except paramiko.ChannelException:
            if not t.is_active():
                raise
            time.sleep(delay)
    return t.open_session(timeout=timeout)


def terminate_group(t: paramiko.Transport, pid: int, spare: paramiko.Channel | None = None) -> bool:
    """SIGTERM to a timed-out command's process group, over the session opened ahead or a new
    one on the same connection (best effort, a few seconds at most). True if the kill ran."""
    try:
        chan = spare or t.open_session(timeout=5)
        try:
            chan.settimeout(5)
            chan.exec_command(f"kill -TERM -- -{pid} 2>/dev/null || kill -TERM {pid} 2>/dev/null; true")
            chan.shutdown_write()
            return chan.status_event.wait(5) and chan.exit_status == 0
        finally:
            chan.close()
    except Exception:
        log.debug("cannot stop process group %s", pid, exc_info=True)
        return False


def send_signal(chan: paramiko.Channel, name: str) -> None:
    """RFC 4254 "signal" request (sshd >= 7.9 delivers it to the session's process group).

    Paramiko has no public call for it. Best effort: a timed-out command may keep running.
    """
    try:
        m = paramiko.Message()
        m.add_byte(cMSG_CHANNEL_REQUEST)
        m.add_int(chan.remote_chanid)
        m.add_string("signal")
        m.add_boolean(False)
        m.add_string(name)
        chan.transport._send_user_message(m)  # noqa: SLF001
    except Exception:
        log.debug("cannot send signal %s", name, exc_info=True)


__all__ = ["ChannelRun", "one_line", "terminate_group", "send_signal"]
