"""SSH transport: one Fabric connection per node, one Paramiko session channel per command.

Why not `fabric.Connection.run`? Fabric gives us what is hard to get right (ssh_config
parsing with Host aliases, User, Port, IdentityFile, ProxyJump/ProxyCommand, the agent),
so every connection is a Fabric `Connection`, opened once in `connect()` and reused.
Commands, though, go straight over that connection's Paramiko transport: one session
channel per command (`exec_command`), read as data arrives. That gives exact streaming,
per-command timeouts, a bounded memory footprint whatever the command prints, a precise
"the connection died" signal, and it avoids Invoke's sleep-based polling of the channel.

Safety decisions made here (see DESIGN.md §3):

* Host keys are checked strictly. Fabric 3 loads no known_hosts and trusts any key
  (`AutoAddPolicy`); we load ``~/.ssh/known_hosts``, the ssh config's
  ``UserKnownHostsFile``/``GlobalKnownHostsFile`` and the node's extra files, and refuse
  unknown or changed keys with the fingerprint and the command to accept it.
* Dead peers are noticed within about ``keepalive_interval + keepalive_timeout`` seconds
  (25 s by default) while a command waits: TCP keepalives, SSH keepalives, and a
  ``keepalive@openssh.com`` request that must be answered in time.
* A lost connection is never retried behind the engine's back: the command's result says
  ``connection_lost=True`` (outcome unknown). The *next* `run()` on that node makes one
  attempt to reconnect and says so with ``reconnected=True``.
* The sudo password is asked once per node through `password_provider`, kept in memory
  only, sent on stdin, and redacted from any output that echoes it.
"""

from __future__ import annotations

import base64
import codecs
import collections
import getpass
import hashlib
import logging
import os
import select
import shlex
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import paramiko
from fabric import Config, Connection
from paramiko.common import cMSG_CHANNEL_REQUEST

from bmupgrade.transport import knownhosts
from bmupgrade.transport.base import (
    CAPTURE_BYTES,
    OUTPUT_TAIL_BYTES,
    CommandResult,
    NodeAddress,
    OutputSink,
    PasswordProvider,
    TransportError,
    ask_password,
    forget_password,
)

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 15.0
DEFAULT_KEEPALIVE_INTERVAL = 10.0  # seconds of silence before we ask "are you there?"
DEFAULT_KEEPALIVE_TIMEOUT = 15.0  # an unanswered question for this long = dead peer
EXIT_DRAIN_GRACE = 2.0  # after the exit status, wait this long at most for the end of output
READ_CHUNK = 64 * 1024
REDACTED = "********"

# Where OpenSSH looks when the ssh config does not say otherwise.
DEFAULT_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


# --------------------------------------------------------------------------- host keys


def fingerprint(key: paramiko.PKey) -> str:
    """The OpenSSH-style fingerprint, e.g. ``SHA256:Vh3...`` (as `ssh-keygen -l` prints)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _keyscan_type(key_name: str) -> str:
    if "ed25519" in key_name:
        return "ed25519"
    if "ecdsa" in key_name:
        return "ecdsa"
    if "rsa" in key_name:
        return "rsa"
    if "dss" in key_name:
        return "dsa"
    return key_name


def _split_hostkey_name(name: str) -> tuple[str, int]:
    """``[host]:port`` or ``host`` (port 22) as Paramiko names known_hosts entries."""
    if name.startswith("[") and "]:" in name:
        host, _, port = name[1:].rpartition("]:")
        return host, int(port)
    return name, 22


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey):
        super().__init__(f"unknown host key for {hostname}")
        self.hostname = hostname
        self.key = key


class _StrictPolicy(paramiko.MissingHostKeyPolicy):
    """RejectPolicy that keeps the key, so the message can show its fingerprint."""

    def missing_host_key(self, client, hostname, key):
        raise _UnknownHostKey(hostname, key)


class _AcceptUnknownPolicy(paramiko.MissingHostKeyPolicy):
    """Opt-out (``insecure_accept_unknown=True``): accept, never save, warn loudly.

    A *changed* key is still refused: Paramiko raises BadHostKeyException before any policy.
    """

    def __init__(self, known: "knownhosts.KnownHosts | None" = None):
        self.known = known

    def missing_host_key(self, client, hostname, key):
        if self.known is not None and self.known.revoked_line(key) is not None:
            raise _UnknownHostKey(hostname, key)  # reported as REVOKED: never accepted
        log.warning(
            "accepting UNVERIFIED host key for %s: %s %s (insecure_accept_unknown)",
            hostname,
            key.get_name(),
            fingerprint(key),
        )


def _expand_path(path: str, conn: Connection) -> str:
    path = path.replace("%d", os.path.expanduser("~"))
    path = path.replace("%u", getpass.getuser())
    path = path.replace("%h", str(conn.host)).replace("%p", str(conn.port))
    path = path.replace("%r", str(conn.user)).replace("%n", str(conn.original_host))
    return os.path.expanduser(path)


def _known_hosts_files(conn: Connection, extra: Iterable[str]) -> list[str]:
    """Every known_hosts file OpenSSH would read for this host, plus the node's extra ones.

    Unlike OpenSSH, ``~/.ssh/known_hosts`` is read even when ``UserKnownHostsFile`` names
    another file: extra trust sources, never fewer (``UserKnownHostsFile /dev/null`` does
    not turn checking off here).
    """
    cfg = conn.ssh_config
    files: list[str] = list(DEFAULT_USER_KNOWN_HOSTS)
    files += shlex.split(cfg.get("userknownhostsfile", ""))
    files += shlex.split(cfg.get("globalknownhostsfile", "")) or list(DEFAULT_GLOBAL_KNOWN_HOSTS)
    files += list(extra)
    out: list[str] = []
    for f in files:
        p = _expand_path(f, conn)
        if p not in out:
            out.append(p)
    return out


def _load_host_keys(files: Iterable[str], keys: paramiko.HostKeys | None = None) -> paramiko.HostKeys:
    """All usable entries of all files in one store (see transport/knownhosts.py)."""
    return knownhosts.load(files, keys).store


def _hostkey_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


# --------------------------------------------------------------------------- output


class _StreamText:
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


class _Collector:
    """Bounded memory: the interleaved tail and (with capture) the first CAPTURE_BYTES of stdout."""

    def __init__(self, node: str, capture: bool, on_output: OutputSink | None, secret: str | None):
        self.node = node
        self.capture = capture
        self.on_output = on_output
        self._text = {"stdout": _StreamText(secret), "stderr": _StreamText(secret)}
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


def announcing_pid(wire: str) -> str:
    """The command line with a prefix that makes the session's shell print its pid on stderr
    first. sshd makes that shell a session and process-group leader, so `kill -- -PID` stops
    the whole command on timeout, also where sshd refuses RFC 4254 signal requests: for root
    logins ("session signalling requires privilege separation")."""
    return "printf '\\036bmupgrade-pid %s\\n' \"$$\" >&2; " + wire


class _PidLine:
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


class _SudoFilter:
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


# --------------------------------------------------------------------------- nodes


class _Node:
    def __init__(self, address: NodeAddress):
        self.address = address
        self.conn: Connection | None = None
        self.lost: str | None = None  # why the connection was lost, until reconnected
        self.lock = threading.Lock()  # connect/reconnect
        self.last_seen = time.monotonic()
        self.active = 0  # commands waiting on this node
        self.probe_started: float | None = None
        self.probe_transport: paramiko.Transport | None = None  # the probe's connection
        self.state_lock = threading.Lock()

    @property
    def where(self) -> str:
        if self.conn is not None:
            return f"{self.conn.user}@{self.conn.host}:{self.conn.port}"
        a = self.address
        return f"{a.host}:{a.port or 22}"

    @property
    def transport(self) -> paramiko.Transport | None:
        return self.conn.transport if self.conn is not None else None

    def seen(self) -> None:
        self.last_seen = time.monotonic()


class _TrustAndSudo:
    """SshTransport's answers to "may I trust this key?" (known_hosts markers) and "may I send
    this sudo password?" (attempts, rejections). Split out to keep the transport class readable."""

    def _trust_error(self, conn: Connection, e: BaseException) -> str | None:
        """A revoked key, or an unknown key where known_hosts trusts a CA: the one-line reason."""
        where = f"{conn.host}:{conn.port}"
        presented = getattr(e, "key", None)
        revoked = self._revoked(conn, presented) if isinstance(presented, paramiko.PKey) else None
        if revoked is not None:
            return (f"host key REVOKED: {where} presented {presented.get_name()} {fingerprint(presented)}, "
                    f"marked @revoked at {revoked.where}; refusing to connect (a compromised or retired key)")
        if not isinstance(e, _UnknownHostKey):
            return None
        host, port = _split_hostkey_name(e.hostname)
        known = self._known_hosts.get(id(conn))
        ca_line = known.ca_for(e.hostname) if known is not None else None
        if ca_line is None:
            return None
        return (f"unknown host key for {host}:{port} ({e.key.get_name()} {fingerprint(e.key)}): "
                f"{knownhosts.cert_authority_hint(ca_line, e.hostname)}: ssh-keyscan -t "
                f"{_keyscan_type(e.key.get_name())} -p {port} {host} >> ~/.ssh/known_hosts "
                "(after checking the fingerprint out of band)")

    def _revoked(self, conn: Connection, key: paramiko.PKey):
        """The @revoked line naming `key`, in the files read for this connection or its hops."""
        c = conn
        while isinstance(c, Connection):
            kh = self._known_hosts.get(id(c))
            line = kh.revoked_line(key) if kh is not None else None
            if line is not None:
                return line
            c = c.gateway
        return None

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
        n = self._get(node)
        if tag:  # in the command's environment: how a lost command is found again (engine.remote)
            from bmupgrade.engine.remote import tagged

            command = tagged(command, tag)
        kw = dict(timeout=timeout, capture=capture, on_output=on_output)
        if not self._use_sudo(n, sudo) or self._password_provider is None:
            return self._run_once(n, node, command, password=None, use_sudo=self._use_sudo(n, sudo), **kw)
        r = None
        for attempt in range(1, MAX_SUDO_ATTEMPTS + 1):
            refused = self._sudo_refusal(n)
            password = None if refused else self._sudo_password(n)
            if refused or (password is not None and self._sudo_bad.get(node, set()) & {_pw_digest(password)}):
                return CommandResult(node=node, command=command, exit_code=None, duration=0.0, sent=False,
                                     error=refused or f"sudo on {node} already rejected this password; not sending "
                                     "it again (account lockout). Nothing was sent.", sudo_rejected=True)
            r = self._run_once(n, node, command, password=password, use_sudo=True, **kw)
            if not r.sudo_rejected:
                return r
            self._sudo_bad.setdefault(node, set()).add(_pw_digest(password))
            forget_password(self._password_provider, n.address, self._passwords, self._password_lock)
            if not getattr(self._password_provider, "interactive", False) or attempt == MAX_SUDO_ATTEMPTS:
                break
            log.warning("%s: sudo rejected the password (%d/%d); asking again", node, attempt, MAX_SUDO_ATTEMPTS)
        return r

    def _sudo_refusal(self, n: _Node) -> str | None:
        """After MAX_SUDO_ATTEMPTS rejected passwords on a node, stop asking."""
        if len(self._sudo_bad.get(n.address.name, ())) >= MAX_SUDO_ATTEMPTS:
            return (f"sudo on {n.address.name} rejected {MAX_SUDO_ATTEMPTS} passwords; not asking again. "
                    "Nothing was sent.")
        return None



class SshTransport(_TrustAndSudo):
    """Runs commands on nodes over SSH. See the module docstring for the decisions.

    ``password_provider()`` (one password for all nodes) or ``password_provider(address)``
    (per node) returns the sudo password, or None for NOPASSWD (``sudo -n``); it is called
    once, at the first command that needs sudo, and the answer stays in memory only.
    """

    joins_commands = True  # several read-only commands may share one round trip (transport/together.py)

    def __init__(
        self,
        *,
        password_provider: PasswordProvider | None = None,
        insecure_accept_unknown: bool = False,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
    ):
        self._password_provider = password_provider
        self._insecure = insecure_accept_unknown
        self.connect_timeout = connect_timeout
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        self._nodes: dict[str, _Node] = {}
        self._passwords: dict[str, str | None] = {}
        self._password_lock = threading.Lock()
        self._sudo_bad: dict[str, set[bytes]] = {}  # node -> digests of passwords sudo rejected there
        self._closed = False
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._known_hosts: dict[int, knownhosts.KnownHosts] = {}  # id(Connection) -> what its files say

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> "SshTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self, nodes: list[NodeAddress]) -> None:
        """Open one connection per node, in parallel. On any failure every connection
        opened here is closed and the first failure (in node order) is raised; all of them
        are in its ``errors`` attribute."""
        if self._closed:
            raise TransportError("-", "transport is closed")
        new = []
        for address in nodes:
            if address.name in self._nodes:
                continue
            node = _Node(address)
            self._nodes[address.name] = node
            new.append(node)
        if not new:
            return
        errors: dict[str, TransportError] = {}
        with ThreadPoolExecutor(max_workers=len(new), thread_name_prefix="ssh-connect") as pool:
            futures = {n.address.name: pool.submit(self._open, n) for n in new}
            for name, fut in futures.items():
                try:
                    fut.result()
                except TransportError as e:
                    errors[name] = e
                except Exception as e:  # a bug, but never leave half-open connections behind
                    errors[name] = TransportError(name, f"cannot connect: {type(e).__name__}: {_one_line(e)}")
        if errors:
            for n in new:
                self._close_node(n)
                self._nodes.pop(n.address.name, None)
            first = errors[next(n.address.name for n in new if n.address.name in errors)]
            first.errors = errors
            raise first
        self._start_watchdog()

    def close(self) -> None:
        """Close every connection. Safe to call more than once."""
        self._closed = True
        self._stop.set()
        with self._password_lock:
            self._passwords.clear()  # the sudo password lives no longer than the run needs it
        for node in list(self._nodes.values()):
            self._close_node(node)

    def connection(self, node: str) -> Connection:
        """The node's Fabric connection (e.g. for SFTP). Commands should go through run()."""
        n = self._get(node)
        assert n.conn is not None
        return n.conn

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    # ----------------------------------------------------------------- connecting

    def _make_connection(self, address: NodeAddress) -> Connection:
        if address.ssh_config:
            path = os.path.expanduser(address.ssh_config)
            if not os.path.isfile(path):
                raise TransportError(address.name, f"ssh config file not found: {path}")
            config = Config(runtime_ssh_path=path)
        else:
            config = Config()  # ~/.ssh/config and /etc/ssh/ssh_config, as ssh(1) does
        connect_kwargs: dict = {}
        if address.identity_file:
            connect_kwargs["key_filename"] = [os.path.expanduser(address.identity_file)]
        conn = Connection(
            address.host,
            user=address.user,
            port=address.port,
            config=config,
            connect_kwargs=connect_kwargs or None,
        )
        self._harden(conn, address)
        return conn

    def _harden(self, conn: Connection, address: NodeAddress) -> None:
        """Strict host keys for this connection and every ProxyJump hop before it."""
        if conn.connect_timeout is None:
            conn.connect_timeout = int(max(1, self.connect_timeout))
        conn.connect_kwargs.setdefault("banner_timeout", self.connect_timeout)
        conn.connect_kwargs.setdefault("auth_timeout", self.connect_timeout)
        client = conn.client
        kh = knownhosts.load(_known_hosts_files(conn, address.known_hosts), client.get_host_keys())
        self._known_hosts[id(conn)] = kh
        bad = kh.bad_for(_hostkey_name(conn.host, conn.port))
        if bad is not None:
            raise TransportError(address.name, f"malformed known_hosts line {bad.where} for "
                                 f"{_hostkey_name(conn.host, conn.port)}: {bad.problem}; fix or delete that line")
        store = known = kh.store
        alias = conn.ssh_config.get("hostkeyalias")
        if alias:  # OpenSSH looks the key up under the alias instead of the host name
            name = _hostkey_name(conn.host, conn.port)
            for keytype, key in list((known.lookup(alias) or {}).items()):
                store.add(name, keytype, key)
        client.set_missing_host_key_policy(
            _AcceptUnknownPolicy(kh) if self._insecure else _StrictPolicy()
        )
        if isinstance(conn.gateway, Connection):
            self._harden(conn.gateway, address)

    def _open(self, node: _Node) -> None:
        name = node.address.name
        try:
            conn = self._make_connection(node.address)
        except TransportError:
            raise
        except Exception as e:  # unreadable/invalid ssh config, bad ProxyJump spec...
            raise TransportError(name, f"cannot use the ssh configuration: {_one_line(e)}") from None
        node.conn = conn
        sock = None
        try:
            sock = _direct_socket(conn)
            if sock is not None:
                conn.connect_kwargs["sock"] = sock
            conn.open()
        except Exception as e:
            try:
                conn.close()
                if sock is not None:
                    sock.close()
            except Exception:
                pass
            self._close_gateways(conn)
            raise TransportError(name, self._connect_error(node, conn, e)) from None
        finally:
            conn.connect_kwargs.pop("sock", None)  # a reconnect opens a new one
        t = conn.transport
        assert t is not None
        t.set_keepalive(max(1, int(self.keepalive_interval)))
        _tune_socket(t.sock)
        gw = conn.gateway
        while isinstance(gw, Connection):  # the hops carry our traffic: same treatment
            if gw.transport is not None:
                gw.transport.set_keepalive(max(1, int(self.keepalive_interval)))
                _tune_socket(gw.transport.sock)
            gw = gw.gateway
        node.lost = None
        node.seen()
        log.debug("%s: connected to %s", name, node.where)

    def _connect_error(self, node: _Node, conn: Connection, e: BaseException) -> str:
        where = f"{conn.host}:{conn.port}"
        trust = self._trust_error(conn, e)
        if trust is not None:
            return trust
        if isinstance(e, _UnknownHostKey):
            host, port = _split_hostkey_name(e.hostname)
            return (
                f"unknown host key for {host}:{port} ({e.key.get_name()} {fingerprint(e.key)}); "
                f"check this fingerprint out of band, then accept it with: "
                f"ssh-keyscan -t {_keyscan_type(e.key.get_name())} -p {port} {host} >> ~/.ssh/known_hosts"
            )
        if isinstance(e, paramiko.BadHostKeyException):
            port = conn.port
            host = e.hostname
            if host != conn.host:  # a ProxyJump hop
                gw = conn.gateway
                while isinstance(gw, Connection) and gw.host != host:
                    gw = gw.gateway
                port = gw.port if isinstance(gw, Connection) else 22
            got, expected = e.key, e.expected_key
            entry = _hostkey_name(host, port)
            files = [
                f
                for f in _known_hosts_files(conn, node.address.known_hosts)
                if os.path.isfile(f) and _load_host_keys([f]).lookup(entry)
            ]
            remove = " && ".join(
                f"ssh-keygen -R {shlex.quote(entry)}" + ("" if f == os.path.expanduser("~/.ssh/known_hosts") else f" -f {shlex.quote(f)}")
                for f in files
            ) or f"ssh-keygen -R {shlex.quote(entry)}"
            return (
                f"HOST KEY CHANGED for {host}:{port}: the server presented {got.get_name()} "
                f"{fingerprint(got)} but known_hosts has {expected.get_name()} {fingerprint(expected)} "
                f"(possible man-in-the-middle, or the host was reinstalled); if the new key is "
                f"verified out of band: {remove}, then: ssh-keyscan -t {_keyscan_type(got.get_name())} "
                f"-p {port} {host} >> ~/.ssh/known_hosts"
            )
        if isinstance(e, paramiko.AuthenticationException):
            keys = conn.connect_kwargs.get("key_filename") or []
            tried = ", ".join(keys) if keys else "default keys"
            return (
                f"authentication failed as {conn.user} at {where} (tried ssh-agent and {tried}): "
                f"{_one_line(e)}"
            )
        if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
            return f"connection refused by {where} (is sshd running and the port right?)"
        if isinstance(e, ConnectionRefusedError):
            return f"connection refused by {where} (is sshd running and the port right?)"
        if isinstance(e, (socket.timeout, TimeoutError)):
            return f"timed out connecting to {where} after {conn.connect_timeout}s"
        if isinstance(e, socket.gaierror):
            return f"cannot resolve host name {conn.host!r}: {e.strerror or e}"
        if isinstance(e, paramiko.SSHException):
            return f"SSH error with {where}: {_one_line(e)}"
        if isinstance(e, OSError):
            return f"cannot connect to {where}: {e.strerror or _one_line(e)}"
        return f"cannot connect to {where}: {type(e).__name__}: {_one_line(e)}"

    def _close_node(self, node: _Node) -> None:
        conn = node.conn
        if conn is None:
            return
        try:
            conn.close()
        except Exception:
            log.debug("closing %s", node.address.name, exc_info=True)
        self._close_gateways(conn)

    @staticmethod
    def _close_gateways(conn: Connection) -> None:
        gw = conn.gateway
        while isinstance(gw, Connection):
            try:
                gw.close()
            except Exception:
                pass
            gw = gw.gateway

    def _reconnect(self, node: _Node) -> None:
        """One attempt; the lost connection is dropped first."""
        self._close_node(node)
        self._open(node)

    def _get(self, name: str) -> _Node:
        if self._closed:
            raise TransportError(name, "transport is closed")
        try:
            return self._nodes[name]
        except KeyError:
            raise TransportError(name, "not connected (unknown node)") from None

    # ----------------------------------------------------------------- liveness

    def _start_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="ssh-watchdog", daemon=True)
            self._watchdog.start()

    def _watch(self) -> None:
        """While a command waits on a node, ask the node to answer within keepalive_timeout
        after keepalive_interval of silence; no answer: drop the connection, so the waiting
        command ends with connection_lost instead of hanging."""
        while not self._stop.wait(0.25):
            for node in list(self._nodes.values()):
                try:
                    self._check(node)
                except Exception:
                    log.debug("watchdog", exc_info=True)

    def _check(self, node: _Node) -> None:
        t = node.transport
        if t is None or not t.is_active() or node.active == 0:
            return
        now = time.monotonic()
        with node.state_lock:
            if node.probe_started is not None and node.probe_transport is not t:
                node.probe_started = None  # a probe of a connection since replaced
            if node.probe_started is not None:
                if now - node.probe_started > self.keepalive_timeout:
                    silent = now - node.last_seen
                    self._declare_lost(
                        node, t, f"no answer from {node.where} for {silent:.0f}s (dead peer?)"
                    )
                return
            if now - node.last_seen < self.keepalive_interval:
                return
            node.probe_started = now
            node.probe_transport = t
        threading.Thread(target=self._probe, args=(node, t), name="ssh-probe", daemon=True).start()

    def _probe(self, node: _Node, t: paramiko.Transport) -> None:
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

    def _declare_lost(self, node: _Node, t: paramiko.Transport, reason: str) -> None:
        if node.lost is None:
            node.lost = reason
        log.warning("%s: %s", node.address.name, reason)
        threading.Thread(target=t.close, name="ssh-drop", daemon=True).start()

    # ----------------------------------------------------------------- sudo

    def _use_sudo(self, node: _Node, sudo: bool) -> bool:
        user = node.conn.user if node.conn is not None else node.address.user
        return (sudo or node.address.sudo) and user != "root"

    def _sudo_password(self, node: _Node) -> str | None:
        if self._password_provider is None:
            return None
        return ask_password(self._password_provider, node.address, self._passwords, self._password_lock)

    # ----------------------------------------------------------------- running

    def _run_once(self, n: _Node, node: str, command: str, *, password: str | None, use_sudo: bool,
                  timeout: float | None, capture: bool, on_output: OutputSink | None) -> CommandResult:
        start = time.monotonic()

        def result(**kw) -> CommandResult:
            kw.setdefault("exit_code", None)
            return CommandResult(node=node, command=command, duration=time.monotonic() - start, **kw)

        reconnected = False
        with n.lock:
            t = n.transport
            if n.lost is not None or t is None or not t.is_active():
                why = n.lost or f"connection to {n.where} was closed"
                try:
                    self._reconnect(n)
                except TransportError as e:
                    n.lost = why
                    return result(
                        connection_lost=True,
                        sent=False,
                        error=f"{why}; reconnect failed: {e.reason}",
                    )
                reconnected = True
                log.info("%s: reconnected after: %s", node, why)
            t = n.transport
        assert t is not None

        wire = announcing_pid(sudo_wrap(command, with_password=password is not None) if use_sudo else command)
        out = _Collector(node, capture, on_output, password)
        pid_line = _PidLine()
        sudo_filter = _SudoFilter()

        with n.state_lock:
            n.active += 1
            if n.active == 1:
                n.seen()  # the silence clock starts now, not at the previous command
        chan: paramiko.Channel | None = None
        finished = False
        try:
            # --- start: open a session and send the command
            try:
                # longer than the watchdog bound: a dead peer is reported as lost, not as "cannot open"
                chan = t.open_session(timeout=self.keepalive_interval + self.keepalive_timeout + 5)
            except Exception as e:
                if not t.is_active():
                    self._mark_lost(n, f"connection to {n.where} lost")
                    return result(
                        connection_lost=True, sent=False, reconnected=reconnected,
                        error=f"{n.lost} (before the command was sent)",
                    )
                return result(sent=False, reconnected=reconnected, error=f"cannot open a session: {_one_line(e)}")
            try:
                chan.exec_command(wire)
            except Exception as e:
                if not t.is_active():
                    self._mark_lost(n, f"connection to {n.where} lost")
                    return result(
                        connection_lost=True, reconnected=reconnected,
                        error=f"{n.lost} while starting the command; its outcome is unknown",
                    )
                return result(sent=False, reconnected=reconnected, error=f"the server refused the command: {_one_line(e)}")
            n.seen()
            try:
                if password is not None:
                    chan.sendall((password + "\n").encode("utf-8"))
                chan.shutdown_write()  # commands get EOF on stdin, like `ssh host cmd </dev/null`
            except (OSError, paramiko.SSHException):
                pass  # the command already ended or the connection died: the loop below tells

            # --- wait: stream output until exit status + EOF, timeout, or loss
            deadline = start + timeout if timeout is not None else None
            fd = chan.fileno()
            exit_seen_at: float | None = None
            timed_out = False
            while True:
                got = False
                while chan.recv_ready():
                    out.feed("stdout", chan.recv(READ_CHUNK))
                    got = True
                while chan.recv_stderr_ready():
                    out.feed("stderr", sudo_filter.feed(pid_line.feed(chan.recv_stderr(READ_CHUNK))))
                    got = True
                if got:
                    n.seen()
                now = time.monotonic()
                if chan.closed:
                    break
                if chan.exit_status_ready():
                    if chan.eof_received:
                        break
                    exit_seen_at = exit_seen_at or now
                    if now - exit_seen_at > EXIT_DRAIN_GRACE:
                        # A background process keeps the output open; the command is done.
                        log.debug("%s: output still open %.0fs after exit; not waiting", node, EXIT_DRAIN_GRACE)
                        break
                if deadline is not None and now >= deadline:
                    timed_out = True
                    break
                wait = 0.5
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - now))
                if got:
                    continue
                if chan.eof_received:
                    # After EOF the pipe stays readable forever: wait on the status instead.
                    chan.status_event.wait(wait)
                else:
                    select.select([fd], [], [], wait)

            # drain what arrived with the end
            while chan.recv_ready():
                out.feed("stdout", chan.recv(READ_CHUNK))
            while chan.recv_stderr_ready():
                out.feed("stderr", sudo_filter.feed(pid_line.feed(chan.recv_stderr(READ_CHUNK))))
            out.feed("stderr", sudo_filter.feed(pid_line.flush()) + sudo_filter.flush())
            out.finish()

            common = dict(
                output_tail=out.tail,
                stdout=out.stdout if capture else "",
                stdout_truncated=out.stdout_truncated,
                reconnected=reconnected,
            )
            if timed_out:
                _send_signal(chan, "TERM")
                stopped = pid_line.pid is not None and self._terminate_group(t, pid_line.pid)
                return result(
                    timed_out=True,
                    error=f"timed out after {timeout:g}s; "
                    + (f"SIGTERM sent to its process group (pid {pid_line.pid}); it may still be running if it "
                       "ignores SIGTERM" if stopped else "the command was sent SIGTERM and may still be running"),
                    **common,
                )
            status = chan.exit_status if chan.exit_status_ready() else -1
            if status != -1:
                finished = True
                res = result(exit_code=status, **common)
                if use_sudo and password is not None and sudo_filter.rejected(status):
                    res.error = "sudo rejected the password"  # the command did not run
                    res.sudo_rejected, res.sent = True, False
                return res
            if not t.is_active():
                self._mark_lost(n, f"connection to {n.where} lost during the command")
                return result(
                    connection_lost=True,
                    error=f"{n.lost}; the command's outcome is unknown",
                    **common,
                )
            finished = True
            return result(error="the command ended without an exit status (killed by a signal?)", **common)
        finally:
            with n.state_lock:
                n.active -= 1
            if chan is not None:
                if not finished and not chan.closed:
                    log.debug("%s: closing channel of an unfinished command", node)
                try:
                    chan.close()
                except Exception:
                    pass

    def _terminate_group(self, t: paramiko.Transport, pid: int) -> bool:
        """SIGTERM to a timed-out command's process group, over a new channel of the same
        connection (best effort, a few seconds at most). True if the kill command ran."""
        try:
            chan = t.open_session(timeout=5)
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

    def _mark_lost(self, node: _Node, default: str) -> None:
        if node.lost is None:
            node.lost = default


# --------------------------------------------------------------------------- helpers


def _send_signal(chan: paramiko.Channel, name: str) -> None:
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


def _direct_socket(conn: Connection) -> socket.socket | None:
    """The TCP connection to the node, tuned (TCP_NODELAY) *before* the SSH handshake: Paramiko
    sets no socket option, and with Nagle's algorithm on, the key exchange and authentication
    round trips wait on delayed ACKs (opening a lab connection: ~120 ms -> ~65 ms). None when a
    ProxyJump or ProxyCommand carries the connection (Fabric opens that itself)."""
    if conn.gateway is not None:
        return None
    sock = socket.create_connection((conn.host, conn.port), timeout=conn.connect_timeout)
    _tune_socket(sock)
    return sock


def _tune_socket(sock) -> None:
    """Kernel-level dead-peer detection and no Nagle delay on a real TCP socket."""
    if not isinstance(sock, socket.socket):
        return  # ProxyCommand pipe or a ProxyJump channel
    opts = [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    ]
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            opts.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # unacknowledged data for 25 s: give up
        opts.append((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 25_000))
    for level, opt, value in opts:
        try:
            sock.setsockopt(level, opt, value)
        except OSError:
            pass


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


_DIGEST_SALT = os.urandom(16)


def _pw_digest(password: str | None) -> bytes:
    """Remember that a password was rejected without keeping the password."""
    return hashlib.sha256(_DIGEST_SALT + (password or "").encode("utf-8")).digest()


__all__ = ["SshTransport", "fingerprint", "sudo_wrap"]
