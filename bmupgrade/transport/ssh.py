"""SSH transport: one Fabric connection per node, one Paramiko session channel per command
(transport/channel.py runs one; transport/streams.py reads its output; transport/liveness.py
notices dead peers).

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
* The ssh config's ``Ciphers``, ``MACs``, ``KexAlgorithms`` and ``HostKeyAlgorithms`` apply
  (Paramiko ignores them), over OpenSSH's client defaults rather than Paramiko's (which still offer CBC, 3DES, MD5):
  transport/algorithms.py.
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
import getpass
import hashlib
import logging
import os
import shlex
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import paramiko
from fabric import Config, Connection

from bmupgrade.transport import algorithms, knownhosts
from bmupgrade.transport.base import (
    CommandResult,
    NodeAddress,
    OutputSink,
    PasswordProvider,
    TransportError,
    ask_password,
    forget_password,
)

from bmupgrade.transport.channel import ChannelRun, one_line
from bmupgrade.transport.liveness import Watchdog
from bmupgrade.transport.spare import SpareSession
from bmupgrade.transport.streams import MAX_SUDO_ATTEMPTS, announcing_pid, sudo_wrap

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 15.0
DEFAULT_KEEPALIVE_INTERVAL = 10.0  # seconds of silence before we ask "are you there?"
DEFAULT_KEEPALIVE_TIMEOUT = 15.0  # an unanswered question for this long = dead peer

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
        # the next command's session, opened ahead; 30 s: about the bound a command's own open waits
        self.spare = SpareSession(address.name, timeout=30.0)

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

    def mark_lost(self, reason: str) -> None:
        """The connection is gone; the first reason given is kept (until reconnected)."""
        if self.lost is None:
            self.lost = reason


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
        self._watchdog: Watchdog | None = None
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
                    errors[name] = TransportError(name, f"cannot connect: {type(e).__name__}: {one_line(e)}")
        if errors:
            for n in new:
                self._close_node(n)
                self._nodes.pop(n.address.name, None)
            first = errors[next(n.address.name for n in new if n.address.name in errors)]
            first.errors = errors
            raise first
        if self._watchdog is None:
            self._watchdog = Watchdog(lambda: list(self._nodes.values()), self._stop,
                                      interval=self.keepalive_interval, timeout=self.keepalive_timeout)

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
        try:  # ssh_config's Ciphers, MACs, KexAlgorithms over OpenSSH's defaults, GCM first
            offers = algorithms.policy(conn.ssh_config)
        except algorithms.AlgorithmError as e:
            raise TransportError(address.name, str(e)) from None
        conn.connect_kwargs.setdefault("transport_factory", algorithms.transport_factory(offers))
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
            raise TransportError(name, f"cannot use the ssh configuration: {one_line(e)}") from None
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
        return self._trust_error(conn, e) or explain_connect_error(conn, e, node.address.known_hosts)

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

        wire = announcing_pid(sudo_wrap(command, with_password=password is not None) if use_sudo else command,
                              stdin_null=password is None)  # stdin carries nothing: no EOF to send
        with n.state_lock:
            n.active += 1
            if n.active == 1:
                n.seen()  # the silence clock starts now, not at the previous command
        try:
            return ChannelRun(n, t, node, command, wire, password=password, use_sudo=use_sudo, timeout=timeout,
                              capture=capture, on_output=on_output, reconnected=reconnected, start=start,
                              # longer than the watchdog bound: a dead peer is reported as lost, not "cannot open"
                              open_timeout=self.keepalive_interval + self.keepalive_timeout + 5).run()
        finally:
            with n.state_lock:
                n.active -= 1


# --------------------------------------------------------------------------- helpers

def explain_connect_error(conn: Connection, e: BaseException, extra_known_hosts: Iterable[str]) -> str:
    """Why a connection failed, in one line, with what to do (host keys: the fingerprint and
    the exact commands; authentication: what was tried)."""
    where = f"{conn.host}:{conn.port}"
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
        if got.get_name() != expected.get_name():
            return _other_key_type(host, port, got, expected)
        entry = _hostkey_name(host, port)
        files = [
            f
            for f in _known_hosts_files(conn, extra_known_hosts)
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
            f"{one_line(e)}"
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
        return f"SSH error with {where}: {one_line(e)}"
    if isinstance(e, OSError):
        return f"cannot connect to {where}: {e.strerror or one_line(e)}"
    return f"cannot connect to {where}: {type(e).__name__}: {one_line(e)}"


def _other_key_type(host: str, port: int, got, expected) -> str:
    """The server's key is of a type known_hosts has no key of (HostKeyAlgorithms, or the
    server, ruled the known type out): refused, as ssh(1) with strict checking refuses it."""
    known = algorithms.RSA_SHA2[0] if expected.get_name() == "ssh-rsa" else expected.get_name()
    return (f"no {got.get_name()} host key is known for {host}:{port} (known_hosts has {expected.get_name()} "
            f"{fingerprint(expected)}), and host keys are checked strictly: allow the known type "
            f"(`HostKeyAlgorithms +{known}` in the ssh_config, if your policy allows it), or add the server's "
            f"{got.get_name()} key {fingerprint(got)} once verified out of band: "
            f"ssh-keyscan -t {_keyscan_type(got.get_name())} -p {port} {host} >> ~/.ssh/known_hosts")


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


_DIGEST_SALT = os.urandom(16)


def _pw_digest(password: str | None) -> bytes:
    """Remember that a password was rejected without keeping the password."""
    return hashlib.sha256(_DIGEST_SALT + (password or "").encode("utf-8")).digest()


__all__ = ["SshTransport", "fingerprint", "sudo_wrap"]
