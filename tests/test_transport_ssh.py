"""SshTransport against real OpenSSH servers: the lab (tests/conftest.py `lab` fixture).

HOME is pointed at an empty folder and SSH_AUTH_SOCK removed, so the developer's own ~/.ssh
and agent never take part; node addresses use an empty explicit ssh_config for the same
reason, except where a test exercises the lab's own ssh_config.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bmupgrade.transport.base import OUTPUT_TAIL_BYTES, NodeAddress, TransportError

pytestmark = pytest.mark.lab


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub")


def _entry(pub: Path) -> str:
    """'ssh-ed25519 AAAA...' of a public key file."""
    return " ".join(pub.read_text().split()[:2])


def _fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], check=True, capture_output=True, text=True).stdout
    return out.split()[1]  # "256 SHA256:... comment (ED25519)"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Node:
    """A lab node seen from these tests."""

    def __init__(self, lab, name: str, empty_config: Path):
        self.lab = lab
        self.name = name
        self.lab_node = lab.node(name)
        self.host = self.lab_node.host
        self.port = self.lab_node.port
        self.host_pub = Path(str(self.lab_node.host_key) + ".pub")
        self.host_entry = _entry(self.host_pub)
        self.host_fingerprint = _fingerprint(self.host_pub)
        self._empty_config = empty_config

    def address(self, **kw) -> NodeAddress:
        kw.setdefault("port", self.port)
        kw.setdefault("user", self.lab.user)
        kw.setdefault("identity_file", str(self.lab.client_key))
        kw.setdefault("known_hosts", (str(self.lab.known_hosts),))
        kw.setdefault("ssh_config", str(self._empty_config))
        return NodeAddress(self.name, kw.pop("host", self.host), **kw)

    def logins(self) -> int:
        return Path(self.lab_node.log).read_text(errors="replace").count("Accepted publickey")


@pytest.fixture
def nodes(lab, tmp_path):
    empty = tmp_path / "empty_ssh_config"
    empty.write_text("")
    return {name: Node(lab, name, empty) for name in ("bm1", "bm2")}


@pytest.fixture
def bm1(nodes):
    return nodes["bm1"]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


@contextlib.contextmanager
def _second_sshd(node, tmp_path, name: str, extra: str = ""):
    """Another sshd with the lab node's config on a free port (plus `extra` lines): (port, log)."""
    port = _free_port(node.host)
    cfg = Path(node.lab_node.sshd_config).read_text()
    cfg = re.sub(r"(?m)^ListenAddress .*$", f"ListenAddress {node.host}:{port}", cfg)
    cfg = re.sub(r"(?m)^PidFile .*$", f"PidFile {tmp_path / (name + '.pid')}", cfg)
    for line in extra.splitlines():  # an option given twice: sshd takes the first, so replace it
        key = line.split()[0]
        cfg = re.sub(rf"(?m)^{key} .*$\n?", "", cfg)
    (tmp_path / f"{name}_sshd_config").write_text(extra + cfg)
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(tmp_path / f"{name}_sshd_config"), "-E", str(log)])
    try:
        deadline = time.monotonic() + 5
        while "Server listening" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.02)
        yield port, log
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def transport():
    from bmupgrade.transport.ssh import SshTransport

    t = SshTransport(keepalive_interval=1, keepalive_timeout=2)
    yield t
    t.close()


def _kill(pid: int) -> None:
    for sig in (signal.SIGKILL, signal.SIGCONT):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------- running


def test_run_exit_code_tail_and_capture(bm1, transport):
    transport.connect([bm1.address()])
    r = transport.run("bm1", "echo out; echo err >&2; exit 3", capture=True)
    assert (r.node, r.exit_code, r.ok) == ("bm1", 3, False)
    assert "out\n" in r.output_tail and "err\n" in r.output_tail
    assert r.stdout == "out\n"
    assert not (r.timed_out or r.connection_lost or r.reconnected) and r.sent and r.error == ""
    r = transport.run("bm1", "echo hi")
    assert r.ok and r.output_tail == "hi\n" and r.stdout == ""  # capture not asked


def test_lab_ssh_config_and_stand_ins(lab, transport):
    # the lab's own ssh_config: Host alias, HostName, Port, User, IdentityFile, UserKnownHostsFile
    transport.connect([NodeAddress("bm1", "bm1", ssh_config=str(lab.ssh_config)),
                       NodeAddress("bm2", "bm2", ssh_config=str(lab.ssh_config))])
    r = transport.run("bm1", "dpkg-query -W -f='${Version}' bm-full", capture=True)
    assert r.ok and r.stdout.strip()
    assert lab.node("bm1").calls("dpkg-query") and not lab.node("bm2").calls("dpkg-query")


def test_one_connection_reused_for_every_command(bm1, transport):
    before = bm1.logins()
    transport.connect([bm1.address()])
    paramiko_transport = transport.connection("bm1").transport
    ports = set()
    for _ in range(5):
        r = transport.run("bm1", "echo $SSH_CONNECTION", capture=True)
        ports.add(r.stdout.split()[1])
        assert transport.connection("bm1").transport is paramiko_transport
    assert len(ports) == 1
    assert bm1.logins() - before == 1


def test_a_command_reading_stdin_gets_eof_at_once(bm1, transport):
    # no password: nothing is written to stdin and no EOF is sent; the wire's own
    # `exec </dev/null` must still end a reader at once, as `ssh host cmd </dev/null` would
    transport.connect([bm1.address()])
    r = transport.run("bm1", "cat; read x || echo eof; test -t 0 || echo not-a-tty", capture=True, timeout=20)
    assert r.ok and r.stdout == "eof\nnot-a-tty\n" and not r.timed_out


def test_aes_gcm_preferred_and_any_other_cipher_still_accepted(bm1, transport, tmp_path):
    from bmupgrade.transport.ssh import SshTransport

    transport.connect([bm1.address()])
    t = transport.connection("bm1").transport
    assert (t.local_cipher, t.remote_cipher) == ("aes128-gcm@openssh.com",) * 2
    # a server whose sshd_config allows no GCM: the connection still opens, with what it allows
    with _second_sshd(bm1, tmp_path, "ctr", "Ciphers aes256-ctr\n") as (port, _), SshTransport() as other:
        kh = tmp_path / "kh"
        kh.write_text(f"[{bm1.host}]:{port} {bm1.host_entry}\n")
        other.connect([bm1.address(port=port, known_hosts=(str(kh),))])
        t = other.connection("bm1").transport
        assert t.local_cipher == "aes256-ctr" and other.run("bm1", "true").ok


def _ssh_config(tmp_path, name: str, *lines: str) -> str:
    path = tmp_path / f"{name}_ssh_config"
    path.write_text("Host *\n" + "".join(f"    {line}\n" for line in lines))
    return str(path)


def test_ssh_config_ciphers_macs_and_kex_algorithms_are_honoured(bm1, tmp_path):
    """OpenSSH's list syntax (^ first, a plain list replaces); the server's log says what was agreed."""
    from bmupgrade.transport.ssh import SshTransport

    cfg = _ssh_config(tmp_path, "policy", "Ciphers ^aes192-ctr", "MACs hmac-sha2-512,umac-128@openssh.com",
                      "KexAlgorithms sntrup761x25519-sha512@openssh.com,diffie-hellman-group14-sha256")
    with _second_sshd(bm1, tmp_path, "policy", "LogLevel DEBUG1\n") as (port, log), SshTransport() as t:
        kh = tmp_path / "kh"
        kh.write_text(f"[{bm1.host}]:{port} {bm1.host_entry}\n")
        t.connect([bm1.address(port=port, known_hosts=(str(kh),), ssh_config=cfg)])
        tr = t.connection("bm1").transport
        assert (tr.local_cipher, tr.local_mac) == ("aes192-ctr", "hmac-sha2-512")
        assert t.run("bm1", "true").ok
        text = log.read_text()
        assert "kex: algorithm: diffie-hellman-group14-sha256" in text, text[-3000:]
        assert "cipher: aes192-ctr MAC: hmac-sha2-512" in text


def test_no_cbc_by_default_and_the_error_says_how_to_allow_it(bm1, tmp_path):
    """Paramiko alone would fall back to CBC (or 3DES, MD5); OpenSSH's client offers none of them.
    Against a server that allows only CBC: a one-line error with the ssh_config line that fixes it,
    and with that line the connection opens."""
    from bmupgrade.transport.ssh import SshTransport

    with _second_sshd(bm1, tmp_path, "cbc", "Ciphers aes256-cbc\n") as (port, _):
        kh = tmp_path / "kh"
        kh.write_text(f"[{bm1.host}]:{port} {bm1.host_entry}\n")
        with SshTransport() as t, pytest.raises(TransportError) as e:
            t.connect([bm1.address(port=port, known_hosts=(str(kh),))])
        msg = str(e.value)
        assert "no Ciphers in common with the server: it offers aes256-cbc; bmupgrade offers aes128-gcm@openssh.com" in msg
        assert msg.endswith("if your policy allows it, add `Ciphers +aes256-cbc` to the ssh_config") and "\n" not in msg
        with SshTransport() as t:
            t.connect([bm1.address(port=port, known_hosts=(str(kh),),
                                   ssh_config=_ssh_config(tmp_path, "cbc", "Ciphers +aes256-cbc"))])
            assert t.connection("bm1").transport.local_cipher == "aes256-cbc" and t.run("bm1", "true").ok


def _two_host_keys(bm1, tmp_path) -> tuple[str, str]:
    """The sshd_config lines for the lab node's ed25519 host key plus a new ECDSA one, and the
    ECDSA key's known_hosts entry body ('ecdsa-sha2-nistp256 AAAA...')."""
    ecdsa = tmp_path / "host_ecdsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-C", "", "-f", str(ecdsa)], check=True)
    return (f"HostKey {bm1.lab_node.host_key}\nHostKey {ecdsa}\nLogLevel DEBUG1\n",
            _entry(ecdsa.with_suffix(".pub")))


def test_ssh_config_host_key_algorithms_are_honoured_over_the_known_type_first(bm1, tmp_path):
    """Paramiko's SSHClient puts the first known_hosts key's type first, allowed or not: the
    site's HostKeyAlgorithms still decides (the server's log says which was agreed)."""
    from bmupgrade.transport.ssh import SshTransport

    extra, ecdsa_entry = _two_host_keys(bm1, tmp_path)
    with _second_sshd(bm1, tmp_path, "hka", extra) as (port, log):
        kh = tmp_path / "kh"
        kh.write_text(f"[{bm1.host}]:{port} {bm1.host_entry}\n[{bm1.host}]:{port} {ecdsa_entry}\n")
        with SshTransport() as t:
            t.connect([bm1.address(port=port, known_hosts=(str(kh),))])
            assert t.run("bm1", "true").ok
        assert "kex: host key algorithm: ssh-ed25519" in log.read_text()  # no policy: the known type first
        cfg = _ssh_config(tmp_path, "hka", "HostKeyAlgorithms ecdsa-sha2-nistp256")
        with SshTransport() as t:
            t.connect([bm1.address(port=port, known_hosts=(str(kh),), ssh_config=cfg)])
            assert t.run("bm1", "true").ok
        assert log.read_text().count("kex: host key algorithm: ecdsa-sha2-nistp256") == 1


def test_a_host_key_type_known_hosts_lacks_is_refused_saying_so_and_the_printed_fix_works(bm1, tmp_path,
                                                                                          isolated_home):
    """known_hosts has the ed25519 key, the policy allows only ECDSA: refused as ssh(1) refuses it
    (not "HOST KEY CHANGED"), in one line whose ssh-keyscan command works as printed."""
    from bmupgrade.transport.ssh import SshTransport

    extra, _ = _two_host_keys(bm1, tmp_path)
    cfg = _ssh_config(tmp_path, "hka", "HostKeyAlgorithms ecdsa-sha2-nistp256")
    with _second_sshd(bm1, tmp_path, "hka", extra) as (port, _):
        (isolated_home / ".ssh" / "known_hosts").write_text(f"[{bm1.host}]:{port} {bm1.host_entry}\n")
        before = bm1.logins()
        with SshTransport() as t, pytest.raises(TransportError) as e:
            t.connect([bm1.address(port=port, known_hosts=(), ssh_config=cfg)])
        msg = str(e.value)
        assert msg.startswith(f"bm1: no ecdsa-sha2-nistp256 host key is known for {bm1.host}:{port} (known_hosts "
                              f"has ssh-ed25519 {bm1.host_fingerprint}), and host keys are checked strictly"), msg
        assert "CHANGED" not in msg and "\n" not in msg and bm1.logins() == before
        assert "`HostKeyAlgorithms +ssh-ed25519`" in msg
        printed = msg[msg.index("ssh-keyscan "):]
        subprocess.run(["bash", "-c", printed], check=True, capture_output=True)  # HOME is this test's
        with SshTransport() as t:
            t.connect([bm1.address(port=port, known_hosts=(), ssh_config=cfg)])
            assert t.run("bm1", "true").ok


def test_an_ssh_config_paramiko_cannot_honour_is_refused_before_connecting(bm1, tmp_path):
    from bmupgrade.transport.ssh import SshTransport

    before = bm1.logins()
    with SshTransport() as t, pytest.raises(TransportError) as e:
        t.connect([bm1.address(ssh_config=_ssh_config(tmp_path, "chacha", "Ciphers chacha20-poly1305@openssh.com"))])
    msg = str(e.value)
    assert msg.startswith("bm1: ssh_config Ciphers 'chacha20-poly1305@openssh.com' leaves no algorithm bmupgrade's "
                          "SSH library (Paramiko) implements; it has: aes128-ctr,"), msg
    assert msg.endswith("(e.g. `Ciphers chacha20-poly1305@openssh.com,aes128-gcm@openssh.com`) or remove it")
    assert "\n" not in msg
    assert bm1.logins() == before  # refused before any connection


def test_the_cli_says_so_and_changes_nothing(lab, tmp_path):
    """`check` and `run` with an inventory whose ssh_config cannot be honoured: exit 3, one line, no login."""
    from tests.e2e import PACEMAKER, bmupgrade, run_printed

    inv = tmp_path / "inventory.yaml"
    inv.write_text(Path(lab.inventory_path).read_text().replace(
        "\n  known_hosts:", f"\n  ssh_config: {_ssh_config(tmp_path, 'cli', 'Ciphers chacha20-poly1305@openssh.com')}"
                          "\n  known_hosts:", 1))
    logins = Path(lab.node("bm1").log).read_text(errors="replace").count("Accepted publickey")
    for r in (run_printed(f"bmupgrade check {PACEMAKER} -i {inv}"),
              bmupgrade("run", PACEMAKER, "-i", str(inv), "--yes", "--ack", "backup,prepare", state=tmp_path / "s")):
        assert r.returncode == 3, r.stdout + r.stderr
        assert "Cannot reach bm1: ssh_config Ciphers 'chacha20-poly1305@openssh.com' leaves no algorithm" in r.stdout
        assert "Traceback" not in r.stdout + r.stderr
    assert Path(lab.node("bm1").log).read_text(errors="replace").count("Accepted publickey") == logins


def test_aes_gcm_survives_rekeying_mid_command(bm1, tmp_path):
    """A long apt-get log crosses rekeys on a real server (OpenSSH rekeys after gigabytes; this
    sshd every 64 KB): the AES-GCM keys are replaced mid-stream and nothing is lost."""
    from bmupgrade.transport.ssh import SshTransport

    with _second_sshd(bm1, tmp_path, "rekey", "RekeyLimit 64K\nLogLevel DEBUG1\n") as (port, log), SshTransport() as t:
        kh = tmp_path / "kh"
        kh.write_text(f"[{bm1.host}]:{port} {bm1.host_entry}\n")
        t.connect([bm1.address(port=port, known_hosts=(str(kh),))])
        assert t.connection("bm1").transport.local_cipher == "aes128-gcm@openssh.com"
        r = t.run("bm1", "seq 1 200000 | sha256sum; seq 1 200000 | wc -c", capture=True, timeout=60)
        want = subprocess.run("seq 1 200000 | sha256sum; seq 1 200000 | wc -c", shell=True, capture_output=True,
                              text=True).stdout
        assert r.ok and r.stdout == want
        seen = []
        r = t.run("bm1", "seq 1 200000", on_output=lambda n, s, text: seen.append(text), timeout=60)
        assert r.ok and "".join(seen) == "".join(f"{i}\n" for i in range(1, 200001))  # 1.3 MB in all
        assert log.read_text().count("rekeying out") >= 10  # sshd's own account of the new keys


# --------------------------------------------------------------------------- sessions opened ahead

@pytest.fixture
def opens(monkeypatch):
    """Every session a command had to open itself (one opened ahead is requested without it)."""
    import paramiko

    seen: list[int] = []
    real = paramiko.Transport.open_session

    def open_session(self, *a, **kw):
        seen.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(paramiko.Transport, "open_session", open_session)
    return seen


def _until(cond, what: str) -> None:
    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


def _ahead(t, node="bm1"):
    """The session opened ahead on the node, once confirmed."""
    spare = t._get(node).spare
    _until(spare.ready, "a session opened ahead")
    return spare._pending[1]


def test_a_command_goes_out_on_the_session_opened_ahead(bm1, transport, opens):
    """One round trip per command instead of two: with a command's exec request, the next
    command's session is requested; only the first command opens its own."""
    transport.connect([bm1.address()])
    for i in range(4):
        r = transport.run("bm1", f"echo {i}", capture=True)
        assert r.ok and r.stdout == f"{i}\n"
        nxt = _ahead(transport)
        assert nxt is not None and nxt.active and not nxt.closed
    assert len(opens) == 1


def test_a_closed_session_ahead_is_not_used_and_a_refused_one_sends_the_command_once(bm1, transport, opens,
                                                                                      tmp_path):
    """A session opened ahead that was closed meanwhile (a server closing idle channels, a lost
    connection) is never used: the command opens its own. A session refused at exec (a close
    crossing our request; no CHANNEL_SUCCESS, so the command never started) sends the command
    once more, on a new session: it runs exactly once."""
    import paramiko

    transport.connect([bm1.address()])
    out = tmp_path / "ran"
    assert transport.run("bm1", "true").ok
    _ahead(transport).close()
    assert transport.run("bm1", f"echo once >> {out}").ok and out.read_text() == "once\n"
    assert len(opens) == 2

    def refused(*a, **kw):
        raise paramiko.SSHException("Channel closed.")

    _ahead(transport).exec_command = refused
    r = transport.run("bm1", f"echo twice >> {out}")
    assert r.ok and out.read_text() == "once\ntwice\n" and len(opens) == 3


def test_a_server_allowing_one_session_gets_none_ahead(bm1, tmp_path, opens):
    from bmupgrade.transport.ssh import SshTransport

    with _second_sshd(bm1, tmp_path, "one", "MaxSessions 1\n") as (port, _), SshTransport() as t:
        kh = tmp_path / "kh"
        kh.write_text(f"[{bm1.host}]:{port} {bm1.host_entry}\n")
        t.connect([bm1.address(port=port, known_hosts=(str(kh),))])
        results = [t.run("bm1", "echo ok", capture=True) for _ in range(3)]
        assert [(r.ok, r.stdout) for r in results] == [(True, "ok\n")] * 3
        # asked only once the command holds the one session: refused, and not asked again
        spare = t._get("bm1").spare
        assert spare._refused_by is t.connection("bm1").transport and spare._pending is None
        assert len(opens) >= 3  # each command opened its own (again if sshd had not freed the last yet)
        # a command while another holds the only session: refused, asked again, runs once it is free
        flag = tmp_path / "holding"
        first = threading.Thread(target=lambda: t.run("bm1", f"touch {flag}; sleep 0.5"))
        first.start()
        _until(flag.exists, "the first command running")
        r = t.run("bm1", "echo second", capture=True)
        first.join()
        assert r.ok and r.stdout == "second\n", r.error


def test_a_timed_out_command_is_killed_through_the_session_opened_ahead(bm1, tmp_path, opens):
    """At MaxSessions 2 the command and the session opened ahead use both: the kill of the
    timed-out command's process group goes out on the latter (a new one would be refused)."""
    from bmupgrade.transport.ssh import SshTransport

    with _second_sshd(bm1, tmp_path, "two", "MaxSessions 2\n") as (port, _), SshTransport() as t:
        kh = tmp_path / "kh"
        kh.write_text(f"[{bm1.host}]:{port} {bm1.host_entry}\n")
        t.connect([bm1.address(port=port, known_hosts=(str(kh),))])
        pid = []
        r = t.run("bm1", "echo $$; exec sleep 30", timeout=1, on_output=lambda n, s, text: pid.append(int(text)))
        try:
            assert len(opens) == 1  # the command's own; the kill went out on the one opened ahead
            assert r.timed_out and f"SIGTERM sent to its process group (pid {pid[0]})" in r.error, r.error
            assert _gone_within(pid[0], 3.0)
        finally:
            for p in pid:
                _kill(p)


def test_nodes_connect_in_parallel(nodes, transport):
    before = {n: nodes[n].logins() for n in nodes}
    transport.connect([nodes["bm1"].address(), nodes["bm2"].address()])
    assert transport.nodes == ["bm1", "bm2"]
    assert transport.run("bm2", "true").ok and transport.run("bm1", "true").ok
    assert {n: nodes[n].logins() - before[n] for n in nodes} == {"bm1": 1, "bm2": 1}


# --------------------------------------------------------------------------- host keys


def test_unknown_host_key_refused_with_fingerprint(bm1, transport):
    with pytest.raises(TransportError) as e:
        transport.connect([bm1.address(known_hosts=())])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"bm1: unknown host key for {bm1.host}:{bm1.port}")
    assert "ssh-ed25519 " + bm1.host_fingerprint in msg
    assert f"ssh-keyscan -t ed25519 -p {bm1.port} {bm1.host} >> ~/.ssh/known_hosts" in msg
    assert transport.nodes == []


def test_changed_host_key_refused(bm1, transport, tmp_path):
    impostor = _keygen(tmp_path / "impostor")
    kh = tmp_path / "kh"
    kh.write_text(f"[{bm1.host}]:{bm1.port} {_entry(impostor)}\n")
    with pytest.raises(TransportError) as e:
        transport.connect([bm1.address(known_hosts=(str(kh),))])
    msg = str(e.value)
    assert "\n" not in msg and "HOST KEY CHANGED" in msg
    assert bm1.host_fingerprint in msg and _fingerprint(impostor) in msg
    assert f"ssh-keygen -R '[{bm1.host}]:{bm1.port}' -f {kh}" in msg


def test_known_host_from_home_and_hashed_entry(bm1, transport, isolated_home):
    kh = isolated_home / ".ssh" / "known_hosts"
    kh.write_text(f"[{bm1.host}]:{bm1.port} {bm1.host_entry}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(kh)], check=True, capture_output=True)
    assert bm1.host not in kh.read_text()
    transport.connect([bm1.address(known_hosts=())])
    assert transport.run("bm1", "true").ok


def test_user_known_hosts_file_from_ssh_config(bm1, lab, transport, tmp_path):
    cfg = tmp_path / "cfg"
    cfg.write_text(f"Host *\n  UserKnownHostsFile {lab.known_hosts}\n")
    transport.connect([bm1.address(known_hosts=(), ssh_config=str(cfg))])
    assert transport.run("bm1", "true").ok


def test_insecure_opt_out_accepts_unknown_but_not_changed(bm1, tmp_path):
    from bmupgrade.transport.ssh import SshTransport

    with SshTransport(insecure_accept_unknown=True) as t:
        t.connect([bm1.address(known_hosts=())])
        assert t.run("bm1", "true").ok
    kh = tmp_path / "kh"
    kh.write_text(f"[{bm1.host}]:{bm1.port} {_entry(_keygen(tmp_path / 'impostor'))}\n")
    with SshTransport(insecure_accept_unknown=True) as t, pytest.raises(TransportError, match="CHANGED"):
        t.connect([bm1.address(known_hosts=(str(kh),))])


def test_proxyjump_hop_is_checked_too(nodes, lab, transport, tmp_path):
    # The lab forbids TCP forwarding; run a jump host from bm1's config that allows it.
    bm1, bm2 = nodes["bm1"], nodes["bm2"]
    try:
        with _second_sshd(bm1, tmp_path, "jump", "AllowTcpForwarding yes\n") as (jport, jlog):
            ssh_cfg = tmp_path / "ssh_config"
            ssh_cfg.write_text(
                f"Host jump\n  HostName {bm1.host}\n  Port {jport}\n  User {lab.user}\n  IdentityFile {lab.client_key}\n"
                f"  Ciphers aes256-ctr\n"
                f"Host target\n  HostName {bm2.host}\n  Port {bm2.port}\n  User {lab.user}\n"
                f"  IdentityFile {lab.client_key}\n  ProxyJump jump\n  Ciphers ^aes192-ctr\n")
            addr = dict(host="target", port=None, user=None, identity_file=None, ssh_config=str(ssh_cfg))
            # the lab's known_hosts knows bm2, not the jump host on its new port
            with pytest.raises(TransportError, match=rf"^bm2: unknown host key for {re.escape(bm1.host)}:{jport} "):
                transport.connect([bm2.address(**addr)])
            kh = tmp_path / "kh"
            kh.write_text(f"[{bm1.host}]:{jport} {bm1.host_entry}\n")
            before = bm2.logins()
            transport.connect([bm2.address(known_hosts=(str(lab.known_hosts), str(kh)), **addr)])
            r = transport.run("bm2", "echo $SSH_CONNECTION", capture=True)
            assert r.ok and r.stdout.split()[2:] == [bm2.host, str(bm2.port)]
            assert bm2.logins() - before == 1 and jlog.read_text().count("Accepted publickey") == 1
            conn = transport.connection("bm2")  # each hop with its own Host block's Ciphers
            assert (conn.gateway.transport.local_cipher, conn.transport.local_cipher) == ("aes256-ctr", "aes192-ctr")
    finally:
        transport.close()


# --------------------------------------------------------------------------- errors


def test_connection_refused(bm1, transport):
    port = _free_port(bm1.host)
    with pytest.raises(TransportError, match=rf"^bm1: connection refused by {re.escape(bm1.host)}:{port}"):
        transport.connect([bm1.address(port=port)])


def test_auth_failure(bm1, transport, tmp_path):
    _keygen(tmp_path / "stranger")
    addr = bm1.address(identity_file=str(tmp_path / "stranger"))
    with pytest.raises(TransportError, match=rf"^bm1: authentication failed as \S+ at {re.escape(bm1.host)}"):
        transport.connect([addr])


def test_missing_explicit_ssh_config(bm1, transport, tmp_path):
    with pytest.raises(TransportError, match="ssh config file not found"):
        transport.connect([bm1.address(ssh_config=str(tmp_path / "nope"))])


def test_one_failure_closes_all_and_lists_every_error(nodes, transport):
    from bmupgrade.transport.ssh import SshTransport

    with pytest.raises(TransportError) as e:
        transport.connect([nodes["bm1"].address(), nodes["bm2"].address(known_hosts=())])
    assert e.value.node == "bm2" and set(e.value.errors) == {"bm2"}
    assert transport.nodes == []
    with SshTransport() as t2:  # and a clean retry works
        t2.connect([nodes["bm1"].address(), nodes["bm2"].address()])


def test_run_on_unknown_node_and_after_close(bm1, transport):
    with pytest.raises(TransportError, match="not connected"):
        transport.run("bm9", "true")
    transport.connect([bm1.address()])
    transport.close()
    transport.close()
    with pytest.raises(TransportError, match="closed"):
        transport.run("bm1", "true")


def test_context_manager_closes(bm1):
    from bmupgrade.transport.ssh import SshTransport

    with SshTransport() as t:
        t.connect([bm1.address()])
        pt = t.connection("bm1").transport
        assert pt.is_active()
    assert not pt.is_active()


# --------------------------------------------------------------------------- output


def test_streaming_order_and_node_prefix(nodes, transport):
    transport.connect([nodes["bm2"].address()])
    seen = []
    stamps = []

    def sink(node, stream, text):
        seen.append((node, stream, text))
        stamps.append(time.monotonic())

    t0 = time.monotonic()
    r = transport.run("bm2", "echo a; sleep 0.3; echo b >&2; sleep 0.3; echo c", on_output=sink)
    assert r.ok
    assert seen == [("bm2", "stdout", "a\n"), ("bm2", "stderr", "b\n"), ("bm2", "stdout", "c\n")]
    assert stamps[0] - t0 < 0.25  # live, not at the end
    assert r.output_tail == "a\nb\nc\n"


def test_utf8_split_across_chunks(bm1, transport):
    transport.connect([bm1.address()])
    got = []
    r = transport.run("bm1", r"printf '\303'; sleep 0.2; printf '\251t\351\n'", on_output=lambda n, s, t: got.append(t))
    assert "".join(got) == "ét\ufffd\n"
    assert r.output_tail == "ét\ufffd\n"


def test_secret_redacted_even_when_split_across_chunks():
    from bmupgrade.transport.streams import REDACTED, StreamText

    st = StreamText("hunter2")
    parts = [st.feed(b) for b in (b"pw=hun", b"ter", b"2 and hunter", b"2\n", b"hu")] + [st.feed(b"", final=True)]
    assert "".join(parts) == f"pw={REDACTED} and {REDACTED}\nhu"
    assert all("hunter2" not in p for p in parts)


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_bounded_memory_for_huge_output(bm1, transport):
    transport.connect([bm1.address()])
    transport.run("bm1", "head -c 2000000 /dev/zero | tr '\\0' x", capture=True)  # warm up buffers
    base = _rss_kb()
    peak = [base]
    total = [0]

    def sink(node, stream, text):
        total[0] += len(text)
        if total[0] % (1 << 20) < len(text):
            peak[0] = max(peak[0], _rss_kb())

    r = transport.run("bm1", "head -c 50000000 /dev/zero | tr '\\0' x; echo; echo END", capture=True, on_output=sink)
    peak[0] = max(peak[0], _rss_kb())
    assert r.ok and total[0] == 50_000_000 + 5
    assert r.output_tail.endswith("x\nEND\n") and len(r.output_tail.encode()) == OUTPUT_TAIL_BYTES
    assert r.stdout_truncated and len(r.stdout) == 1024 * 1024 and set(r.stdout) == {"x"}
    assert peak[0] - base < 8 * 1024, f"RSS grew by {(peak[0] - base) / 1024:.1f} MB"


# --------------------------------------------------------------------------- time and failure


def test_timeout(bm1, transport):
    transport.connect([bm1.address()])
    pid = []
    t0 = time.monotonic()
    r = transport.run("bm1", "echo $$; exec sleep 30", timeout=1, on_output=lambda n, s, t: pid.append(int(t)))
    took = time.monotonic() - t0
    try:
        assert r.timed_out and r.exit_code is None and not r.connection_lost
        assert 1 <= took < 2.5 and "timed out after 1s" in r.error
        # stopped on the node, also for a root login (sshd refuses signal requests there):
        # the process group announced by the pid line got SIGTERM
        assert f"SIGTERM sent to its process group (pid {pid[0]})" in r.error
        assert _gone_within(pid[0], 3.0)
        assert transport.run("bm1", "true").ok  # the connection is still good
    finally:
        for p in pid:
            _kill(p)


def _gone_within(pid: int, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_pid_line_is_taken_out_of_stderr_whatever_the_chunking():
    from hypothesis import given, settings, strategies as st

    from bmupgrade.transport.streams import PID_TAG, PidLine

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=40).filter(lambda b: b"\x1e" not in b), st.binary(max_size=200),
           st.lists(st.integers(min_value=1, max_value=30), max_size=20))
    def check(noise, rest, cuts):
        data = noise + PID_TAG + b"4242\n" + rest
        line, out, i = PidLine(), b"", 0
        for c in cuts:
            out += line.feed(data[i:i + c])
            i += c
        out += line.feed(data[i:]) + line.flush()
        assert (line.pid, out) == (4242, noise + rest)

    check()
    line = PidLine()  # no pid line at all (another shell): nothing is lost
    assert line.feed(b"x" * 70_000) + line.flush() == b"x" * 70_000 and line.pid is None
    line = PidLine()
    assert line.feed(PID_TAG + b"12ab\nrest") + line.flush() == PID_TAG + b"12ab\nrest" and line.pid is None


def test_background_process_holding_output_does_not_block(bm1, transport):
    transport.connect([bm1.address()])
    t0 = time.monotonic()
    r = transport.run("bm1", "sleep 4 & echo started")
    took = time.monotonic() - t0
    assert r.ok and r.output_tail == "started\n"
    assert took < 3.5  # EXIT_DRAIN_GRACE after the exit status, not the 4 s of the sleep


def test_killed_by_signal_has_no_exit_code(bm1, transport):
    transport.connect([bm1.address()])
    r = transport.run("bm1", "echo bye; kill -9 $$")
    assert r.exit_code is None and not r.connection_lost and not r.timed_out
    assert "without an exit status" in r.error and r.output_tail == "bye\n"
    assert transport.run("bm1", "true").ok


def _run_and_hit_session(transport, action):
    """Run `sleep 30` and apply `action(pid)` to the server-side sshd process of our
    connection once the command runs. Returns (result, seconds after the action)."""
    pids: dict[str, int] = {}
    hit_at = []

    def sink(node, stream, text):
        m = re.search(r"PIDS (\d+) (\d+)", text)
        if m:
            pids["sshd"], pids["sh"] = int(m[1]), int(m[2])

    def hitter():
        deadline = time.monotonic() + 5
        while "sshd" not in pids and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        if "sshd" in pids:
            action(pids["sshd"])
            hit_at.append(time.monotonic())

    th = threading.Thread(target=hitter)
    th.start()
    try:
        r = transport.run("bm1", "echo PIDS $PPID $$; sleep 30", on_output=sink)
        th.join()
        return r, time.monotonic() - hit_at[0]
    finally:
        for p in pids.values():
            _kill(p)


def test_killed_session_gives_connection_lost_then_one_reconnect(bm1, transport):
    transport.connect([bm1.address()])
    first_port = transport.run("bm1", "echo $SSH_CONNECTION", capture=True).stdout.split()[1]
    r, after = _run_and_hit_session(transport, lambda pid: os.kill(pid, signal.SIGKILL))
    assert r.connection_lost and r.exit_code is None and r.sent and not r.timed_out
    assert "outcome is unknown" in r.error
    assert after < 3
    r = transport.run("bm1", "echo $SSH_CONNECTION", capture=True)
    assert r.ok and r.reconnected and r.stdout.split()[1] != first_port
    assert not transport.run("bm1", "true").reconnected


def test_unresponsive_peer_detected_by_keepalive(bm1, transport):
    transport.connect([bm1.address()])
    r, after = _run_and_hit_session(transport, lambda pid: os.kill(pid, signal.SIGSTOP))
    assert r.connection_lost and r.exit_code is None
    assert "no answer" in r.error
    # keepalive_interval=1 + keepalive_timeout=2 (+ watchdog granularity)
    assert after < 5


def test_reconnect_failure_is_reported_not_raised(bm1, transport, tmp_path):
    kh = tmp_path / "kh"
    kh.write_text(f"[{bm1.host}]:{bm1.port} {bm1.host_entry}\n")
    transport.connect([bm1.address(known_hosts=(str(kh),))])
    r, _ = _run_and_hit_session(transport, lambda pid: os.kill(pid, signal.SIGKILL))
    assert r.connection_lost
    # the node's host key "changes" before the reconnect: the reconnect must refuse
    kh.write_text(f"[{bm1.host}]:{bm1.port} {_entry(_keygen(tmp_path / 'impostor'))}\n")
    r = transport.run("bm1", "true")
    assert r.connection_lost and not r.sent and r.exit_code is None
    assert "reconnect failed: HOST KEY CHANGED" in r.error
    kh.write_text(f"[{bm1.host}]:{bm1.port} {bm1.host_entry}\n")
    r = transport.run("bm1", "true")
    assert r.ok and r.reconnected


def test_node_down_then_up(lab, bm1, transport):
    transport.connect([bm1.address()])
    lab.node("bm1").down()  # the machine goes away: every session of it is killed
    r = transport.run("bm1", "true")
    assert r.connection_lost and not r.sent
    if "reconnect failed" not in r.error:  # the loss was seen only when no session would open (a race)
        assert "before the command was sent" in r.error
        r = transport.run("bm1", "true")
        assert r.connection_lost and not r.sent
    assert "reconnect failed: connection refused" in r.error
    lab.node("bm1").up()
    r = transport.run("bm1", "true")
    assert r.ok and r.reconnected


# --------------------------------------------------------------------------- sudo


def test_sudo_wrap_strings():
    from bmupgrade.transport.streams import sudo_wrap

    assert sudo_wrap("echo 'a b'", with_password=False) == "sudo -n -- sh -c 'echo '\"'\"'a b'\"'\"''"
    assert sudo_wrap("id -u", with_password=True, prompt="P: ") == (
        "sudo -S -p 'P: ' -- sh -c 'printf '\"'\"'\\036bmupgrade-sudo-ok\\n'\"'\"' >&2; exec </dev/null; id -u'")


@pytest.fixture
def as_sudoer(lab, monkeypatch):
    """The lab's sudo stand-in checks the password of the node state like `sudo -S`. When the
    tests run as root the transport would (rightly) not use sudo: make it treat us as a sudoer."""
    import bmupgrade.transport.ssh as ssh_mod

    if lab.user == "root":
        monkeypatch.setattr(ssh_mod.SshTransport, "_use_sudo", lambda self, node, sudo: sudo or node.address.sudo)
    return lab


def _sudo_argv(lab, node="bm1") -> list[str]:
    return lab.node(node).calls("sudo")[-1]["argv"]


def test_sudo_with_password_is_sent_on_stdin_and_never_shown(as_sudoer, bm1):
    from bmupgrade.transport.ssh import SshTransport

    lab = as_sudoer
    lab.node("bm1").set_state(sudo_password="correct horse")
    asked = []

    def provider(addr):
        asked.append(addr.name)
        return "correct horse"

    with SshTransport(password_provider=provider) as t:
        t.connect([bm1.address(sudo=True)])
        seen = []
        r = t.run("bm1", "echo ran; cat; echo done", capture=True, on_output=lambda *a: seen.append(a))
        assert r.ok, r
        assert _sudo_argv(lab)[-4:] == ["--", "sh", "-c", "printf '\\036bmupgrade-sudo-ok\\n' >&2; "
                                        "exec </dev/null; echo ran; cat; echo done"]
        assert _sudo_argv(lab)[1:3] == ["-S", "-p"] and _sudo_argv(lab)[3].startswith("[bmupgrade-sudo-")
        assert "bmupgrade-sudo" not in r.output_tail  # our prompt and marker are not output
        assert r.stdout == "ran\ndone\n"  # `cat` read /dev/null, not the password line
        assert "correct horse" not in repr(r) + repr(seen)
        assert "correct horse" not in Path(lab.node("bm1").ledger_path).read_text()
        t.run("bm1", "true", sudo=True)
        assert asked == ["bm1"]  # asked once


def test_sudo_zero_argument_provider_is_asked_once_for_all_nodes(as_sudoer, nodes):
    from bmupgrade.transport.ssh import SshTransport

    for n in ("bm1", "bm2"):
        as_sudoer.node(n).set_state(sudo_password="pw")
    asked = []

    def provider():
        asked.append(1)
        return "pw"

    with SshTransport(password_provider=provider) as t:
        t.connect([nodes["bm1"].address(sudo=True), nodes["bm2"].address(sudo=True)])
        assert t.run("bm1", "true").ok and t.run("bm2", "true").ok and t.run("bm1", "true").ok
    assert asked == [1]


def test_sudo_wrong_password_is_forgotten(as_sudoer, bm1):
    from bmupgrade.transport.ssh import SshTransport

    as_sudoer.node("bm1").set_state(sudo_password="correct horse")
    answers = iter(["wrong one", "correct horse"])
    with SshTransport(password_provider=lambda a: next(answers)) as t:
        t.connect([bm1.address()])
        r = t.run("bm1", "true", sudo=True)
        assert r.exit_code == 1 and r.error == "sudo rejected the password"
        assert "wrong one" not in repr(r)
        assert t.run("bm1", "true", sudo=True).ok  # asked again


def test_sudo_without_password_uses_n(as_sudoer, bm1):
    from bmupgrade.transport.ssh import SshTransport

    lab = as_sudoer
    with SshTransport() as t:
        t.connect([bm1.address()])
        assert t.run("bm1", "echo x", sudo=True).ok  # NOPASSWD node
        assert _sudo_argv(lab)[1:] == ["-n", "--", "sh", "-c", "echo x"]
        lab.node("bm1").set_state(sudo_password="secret")
        r = t.run("bm1", "echo x", sudo=True)
        assert r.exit_code == 1 and "a password is required" in r.output_tail
        assert t.run("bm1", "true").ok and len(lab.node("bm1").calls("sudo")) == 2  # no sudo asked


def test_root_is_never_wrapped_in_sudo(lab, bm1, transport):
    if lab.user != "root":
        pytest.skip("the lab logs in as a non-root user")
    transport.connect([bm1.address(sudo=True)])
    r = transport.run("bm1", "id -u", sudo=True, capture=True)
    assert r.ok and r.stdout == "0\n" and not lab.node("bm1").calls("sudo")


# --------------------------------------------------------------------------- several commands, one round trip


def test_commands_joined_in_one_round_trip_come_back_as_if_sent_alone(bm1, transport):
    from bmupgrade.transport import together

    transport.connect([bm1.address()])
    cmds = ["echo one; echo warn >&2; exit 3", "printf 'no newline'", "exit 0", "echo 'a\nb'; echo bad >&2",
            "cat; echo read-nothing"]
    joined = together.run(transport, "bm1", cmds, timeout=30)
    alone = [transport.run("bm1", c, capture=True) for c in cmds[:4]]
    assert [(r.command, r.exit_code, r.stdout) for r in joined[:4]] == \
        [(r.command, r.exit_code, r.stdout) for r in alone]
    assert [r.exit_code for r in joined] == [3, 0, 0, 0, 0]
    assert joined[0].output_tail.count("warn") == 1 and "bad" in joined[3].output_tail
    assert "warn" not in joined[3].output_tail and "bmupgrade-" not in "".join(r.output_tail for r in joined)
    assert joined[4].stdout == "read-nothing\n"  # stdin is /dev/null: `cat` does not wait


def test_a_joined_command_cut_short_leaves_the_rest_without_an_exit_status(bm1, transport):
    from bmupgrade.transport import together

    transport.connect([bm1.address()])
    r = together.run(transport, "bm1", ["echo first", "kill -9 $$", "echo never"], timeout=30)  # $$: the script's shell
    assert (r[0].exit_code, r[0].stdout) == (0, "first\n")
    assert r[1].exit_code is None and r[2].exit_code is None and r[2].stdout == "" and r[2].error


def test_joined_answers_cut_by_the_capture_limit_are_asked_again_alone(bm1, transport, monkeypatch):
    from bmupgrade.transport import streams, together

    monkeypatch.setattr(streams, "CAPTURE_BYTES", 1000)
    transport.connect([bm1.address()])
    r = together.run(transport, "bm1", ["head -c 1500 /dev/zero | tr '\\0' x", "echo second"], timeout=30)
    assert r[1].exit_code == 0 and r[1].stdout == "second\n"
    assert r[0].exit_code == 0 and r[0].stdout_truncated and r[0].stdout == "x" * 1000
