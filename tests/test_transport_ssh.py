"""SshTransport against a real OpenSSH sshd on loopback.

The sshd here is self-contained (a throw-away host key, client key and known_hosts in a
temporary folder, a free port), so this module needs nothing but /usr/sbin/sshd. HOME is
pointed at an empty folder and SSH_AUTH_SOCK removed, so the developer's own ~/.ssh and
agent never take part.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bmupgrade.transport.base import OUTPUT_TAIL_BYTES, NodeAddress, TransportError

SSHD = "/usr/sbin/sshd"

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(not (os.path.exists(SSHD) and shutil.which("ssh-keygen")), reason="needs OpenSSH sshd"),
]


# --------------------------------------------------------------------------- the sshd


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().split()[0:2]  # type: ignore[return-value]


def _fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], check=True, capture_output=True, text=True).stdout
    return out.split()[1]  # "256 SHA256:... comment (ED25519)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    def __init__(self, root: Path):
        self.root = root
        self.user = os.environ.get("USER") or __import__("getpass").getuser()
        self.host_key = root / "host_ed25519"
        self.client_key = root / "client_ed25519"
        self.other_key = root / "other_ed25519"  # never authorized
        keytype, blob = _keygen(self.host_key)
        _keygen(self.client_key)
        _keygen(self.other_key)
        (root / "authorized_keys").write_text(self.client_key.with_suffix(".pub").read_text())
        self.host_fingerprint = _fingerprint(self.host_key.with_suffix(".pub"))
        self.log = root / "sshd.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.host_entry = f"{keytype} {blob}"
        self.known_hosts = root / "known_hosts"
        self.ssh_config = root / "ssh_config"

    def start(self) -> None:
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        for _ in range(5):
            self.port = _free_port()
            cfg = self.root / "sshd_config"
            cfg.write_text(
                f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
                f"PidFile {self.root / 'sshd.pid'}\nAuthorizedKeysFile {self.root / 'authorized_keys'}\n"
                "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "AllowTcpForwarding yes\nLogLevel VERBOSE\nMaxStartups 50\n"
            )
            log = open(self.log, "ab")
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=log, stderr=log)
            log.close()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.proc.poll() is None:
                if "Server listening" in self.log.read_text(errors="replace"):
                    break
                time.sleep(0.02)
            if self.proc.poll() is None:
                break
        else:
            raise RuntimeError("sshd did not start: " + self.log.read_text())
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_entry}\n")
        self.ssh_config.write_text(
            f"Host node\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.user}\n"
            f"  IdentityFile {self.client_key}\n  IdentitiesOnly yes\n"
            f"Host jump\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.user}\n"
            f"  IdentityFile {self.client_key}\n"
            f"Host viajump\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.user}\n"
            f"  IdentityFile {self.client_key}\n  ProxyJump jump\n"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    def logins(self) -> int:
        return self.log.read_text(errors="replace").count("Accepted publickey")

    def address(self, name: str = "bm1", host: str = "node", **kw) -> NodeAddress:
        kw.setdefault("ssh_config", str(self.ssh_config))
        kw.setdefault("known_hosts", (str(self.known_hosts),))
        return NodeAddress(name, host, **kw)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


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


def test_run_exit_code_tail_and_capture(sshd, transport):
    transport.connect([sshd.address()])
    r = transport.run("bm1", "echo out; echo err >&2; exit 3", capture=True)
    assert (r.node, r.exit_code, r.ok) == ("bm1", 3, False)
    assert "out\n" in r.output_tail and "err\n" in r.output_tail
    assert r.stdout == "out\n"
    assert not (r.timed_out or r.connection_lost or r.reconnected) and r.sent and r.error == ""
    r = transport.run("bm1", "echo hi")
    assert r.ok and r.output_tail == "hi\n" and r.stdout == ""  # capture not asked


def test_one_connection_reused_for_every_command(sshd, transport):
    before = sshd.logins()
    transport.connect([sshd.address()])
    paramiko_transport = transport.connection("bm1").transport
    ports = set()
    for _ in range(5):
        r = transport.run("bm1", "echo $SSH_CONNECTION", capture=True)
        ports.add(r.stdout.split()[1])
        assert transport.connection("bm1").transport is paramiko_transport
    assert len(ports) == 1
    assert sshd.logins() - before == 1


def test_nodes_connect_in_parallel(sshd, transport):
    before = sshd.logins()
    transport.connect([sshd.address("bm1"), sshd.address("bm2")])
    assert transport.nodes == ["bm1", "bm2"]
    assert transport.run("bm2", "true").ok and transport.run("bm1", "true").ok
    assert sshd.logins() - before == 2


# --------------------------------------------------------------------------- host keys


def test_unknown_host_key_refused_with_fingerprint(sshd, transport):
    with pytest.raises(TransportError) as e:
        transport.connect([sshd.address(known_hosts=())])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("bm1: unknown host key for 127.0.0.1:%d" % sshd.port)
    assert "ssh-ed25519 " + sshd.host_fingerprint in msg
    assert f"ssh-keyscan -t ed25519 -p {sshd.port} 127.0.0.1 >> ~/.ssh/known_hosts" in msg
    assert transport.nodes == []


def test_changed_host_key_refused(sshd, transport, tmp_path):
    _keygen(tmp_path / "impostor")
    impostor = (tmp_path / "impostor.pub").read_text().split()[:2]
    kh = tmp_path / "kh"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(impostor)}\n")
    with pytest.raises(TransportError) as e:
        transport.connect([sshd.address(known_hosts=(str(kh),))])
    msg = str(e.value)
    assert "\n" not in msg and "HOST KEY CHANGED" in msg
    assert sshd.host_fingerprint in msg and _fingerprint(tmp_path / "impostor.pub") in msg
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}' -f {kh}" in msg


def test_known_host_from_home_and_hashed_entry(sshd, transport, isolated_home):
    kh = isolated_home / ".ssh" / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_entry}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(kh)], check=True, capture_output=True)
    assert "127.0.0.1" not in kh.read_text()
    transport.connect([sshd.address(known_hosts=())])
    assert transport.run("bm1", "true").ok


def test_user_known_hosts_file_from_ssh_config(sshd, transport, tmp_path):
    cfg = tmp_path / "cfg"
    cfg.write_text(sshd.ssh_config.read_text().replace(
        "Host node\n", f"Host node\n  UserKnownHostsFile {sshd.known_hosts}\n"))
    transport.connect([sshd.address(known_hosts=(), ssh_config=str(cfg))])
    assert transport.run("bm1", "true").ok


def test_insecure_opt_out_accepts_unknown_but_not_changed(sshd, tmp_path):
    from bmupgrade.transport.ssh import SshTransport

    with SshTransport(insecure_accept_unknown=True) as t:
        t.connect([sshd.address(known_hosts=())])
        assert t.run("bm1", "true").ok
    _keygen(tmp_path / "impostor")
    kh = tmp_path / "kh"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {' '.join((tmp_path / 'impostor.pub').read_text().split()[:2])}\n")
    with SshTransport(insecure_accept_unknown=True) as t, pytest.raises(TransportError, match="CHANGED"):
        t.connect([sshd.address(known_hosts=(str(kh),))])


def test_proxyjump_hop_is_checked_too(sshd, transport, tmp_path):
    # known_hosts knows the final host under another name only: the hop (127.0.0.1) is unknown
    kh = tmp_path / "kh"
    kh.write_text(f"[localhost]:{sshd.port} {sshd.host_entry}\n")
    cfg = tmp_path / "cfg"
    cfg.write_text(sshd.ssh_config.read_text().replace(
        "Host viajump\n  HostName 127.0.0.1", "Host viajump\n  HostName localhost"))
    with pytest.raises(TransportError, match=r"unknown host key for 127\.0\.0\.1"):
        transport.connect([sshd.address(host="viajump", ssh_config=str(cfg), known_hosts=(str(kh),))])
    before = sshd.logins()
    transport.connect([sshd.address(host="viajump", ssh_config=str(cfg), known_hosts=(str(kh), str(sshd.known_hosts)))])
    assert transport.run("bm1", "true").ok
    assert sshd.logins() - before == 2  # the hop, then the node through it


# --------------------------------------------------------------------------- errors


def test_connection_refused(sshd, transport, tmp_path):
    port = _free_port()
    with pytest.raises(TransportError, match=rf"^bm1: connection refused by 127\.0\.0\.1:{port}"):
        transport.connect([NodeAddress("bm1", "127.0.0.1", port=port, ssh_config=str(sshd.ssh_config))])


def test_auth_failure(sshd, transport):
    addr = sshd.address(host="127.0.0.1", port=sshd.port, user=sshd.user, identity_file=str(sshd.other_key))
    with pytest.raises(TransportError, match=r"^bm1: authentication failed as \S+ at 127\.0\.0\.1"):
        transport.connect([addr])


def test_missing_explicit_ssh_config(transport, tmp_path):
    with pytest.raises(TransportError, match="ssh config file not found"):
        transport.connect([NodeAddress("bm1", "node", ssh_config=str(tmp_path / "nope"))])


def test_run_on_unknown_node_and_after_close(sshd, transport):
    with pytest.raises(TransportError, match="not connected"):
        transport.run("bm9", "true")
    transport.connect([sshd.address()])
    transport.close()
    transport.close()
    with pytest.raises(TransportError, match="closed"):
        transport.run("bm1", "true")


def test_context_manager_closes(sshd):
    from bmupgrade.transport.ssh import SshTransport

    with SshTransport() as t:
        t.connect([sshd.address()])
        pt = t.connection("bm1").transport
        assert pt.is_active()
    assert not pt.is_active()


# --------------------------------------------------------------------------- output


def test_streaming_order_and_node_prefix(sshd, transport):
    transport.connect([sshd.address("bm2")])
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


def test_utf8_split_across_chunks(sshd, transport):
    transport.connect([sshd.address()])
    got = []
    r = transport.run("bm1", r"printf '\303'; sleep 0.2; printf '\251t\351\n'", on_output=lambda n, s, t: got.append(t))
    assert "".join(got) == "ét\ufffd\n"
    assert r.output_tail == "ét\ufffd\n"


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_bounded_memory_for_huge_output(sshd, transport):
    transport.connect([sshd.address()])
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
    print(f"RSS growth during 50 MB: {(peak[0] - base) / 1024:.1f} MB")
    assert peak[0] - base < 8 * 1024, f"RSS grew by {(peak[0] - base) / 1024:.1f} MB"


# --------------------------------------------------------------------------- time and failure


def test_timeout(sshd, transport):
    transport.connect([sshd.address()])
    pid = []
    t0 = time.monotonic()
    r = transport.run("bm1", "echo $$; exec sleep 30", timeout=1, on_output=lambda n, s, t: pid.append(int(t)))
    took = time.monotonic() - t0
    try:
        assert r.timed_out and r.exit_code is None and not r.connection_lost
        assert 1 <= took < 2.5 and "timed out after 1s" in r.error
        assert transport.run("bm1", "true").ok  # the connection is still good
    finally:
        for p in pid:
            _kill(p)


def test_background_process_holding_output_does_not_block(sshd, transport):
    transport.connect([sshd.address()])
    t0 = time.monotonic()
    r = transport.run("bm1", "echo $$ > /dev/null; sleep 4 & echo started")
    took = time.monotonic() - t0
    assert r.ok and r.output_tail == "started\n"
    assert took < 3.5  # EXIT_DRAIN_GRACE after the exit status, not the 4 s of the sleep


def test_killed_by_signal_has_no_exit_code(sshd, transport):
    transport.connect([sshd.address()])
    r = transport.run("bm1", "echo bye; kill -9 $$")
    assert r.exit_code is None and not r.connection_lost and not r.timed_out
    assert "without an exit status" in r.error and r.output_tail == "bye\n"
    assert transport.run("bm1", "true").ok


def _run_and_hit_session(transport, action):
    """Run `sleep 30` and apply `action(sshd_session_pid)` to the server-side sshd process
    of our connection once the command runs. Returns (result, seconds after the action)."""
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


def test_killed_session_gives_connection_lost_then_one_reconnect(sshd, transport):
    transport.connect([sshd.address()])
    first_port = transport.run("bm1", "echo $SSH_CONNECTION", capture=True).stdout.split()[1]
    r, after = _run_and_hit_session(transport, lambda pid: os.kill(pid, signal.SIGKILL))
    assert r.connection_lost and r.exit_code is None and r.sent and not r.timed_out
    assert "outcome is unknown" in r.error
    assert after < 3
    r = transport.run("bm1", "echo $SSH_CONNECTION", capture=True)
    assert r.ok and r.reconnected and r.stdout.split()[1] != first_port
    assert not transport.run("bm1", "true").reconnected


def test_unresponsive_peer_detected_by_keepalive(sshd, transport):
    transport.connect([sshd.address()])
    r, after = _run_and_hit_session(transport, lambda pid: os.kill(pid, signal.SIGSTOP))
    assert r.connection_lost and r.exit_code is None
    assert "no answer" in r.error
    # keepalive_interval=1 + keepalive_timeout=2 (+ watchdog granularity)
    assert after < 5


def test_reconnect_failure_is_reported_not_raised(sshd, transport, tmp_path):
    transport.connect([sshd.address()])
    r, _ = _run_and_hit_session(transport, lambda pid: os.kill(pid, signal.SIGKILL))
    assert r.connection_lost
    # the node's host key "changes" before the reconnect: the reconnect must refuse
    _keygen(tmp_path / "impostor")
    Path(sshd.known_hosts).write_text(
        f"[127.0.0.1]:{sshd.port} {' '.join((tmp_path / 'impostor.pub').read_text().split()[:2])}\n")
    try:
        r = transport.run("bm1", "true")
        assert r.connection_lost and not r.sent and r.exit_code is None
        assert "reconnect failed: HOST KEY CHANGED" in r.error
    finally:
        sshd.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_entry}\n")
    r = transport.run("bm1", "true")
    assert r.ok and r.reconnected


# --------------------------------------------------------------------------- sudo


def test_sudo_wrap_strings():
    from bmupgrade.transport.ssh import sudo_wrap

    assert sudo_wrap("echo 'a b'", with_password=False) == "sudo -n -- sh -c 'echo '\"'\"'a b'\"'\"''"
    assert sudo_wrap("id -u", with_password=True) == "sudo -S -p '' -- sh -c 'exec </dev/null; id -u'"


@pytest.fixture
def fake_sudo(sshd, tmp_path, monkeypatch):
    """A stand-in for sudo on the node: records its argv, checks the password like sudo -S
    (and, misbehaving on purpose, echoes the line it read to stderr)."""
    import bmupgrade.transport.ssh as ssh_mod

    script = tmp_path / "fakesudo"
    argv_log = tmp_path / "argv"
    script.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$@\" > {argv_log}\n"
        'if [ "$1" = -n ]; then shift 2; exec "$@"; fi\n'
        "shift 4\n"
        "IFS= read -r pw\n"
        "echo \"read: $pw\" >&2\n"
        'if [ "$pw" = "correct horse" ]; then exec "$@"; fi\n'
        "echo 'Sorry, try again.' >&2; echo 'sudo: 1 incorrect password attempt' >&2; exit 1\n"
    )
    script.chmod(0o755)
    real = ssh_mod.sudo_wrap
    monkeypatch.setattr(ssh_mod, "sudo_wrap", lambda c, with_password: str(script) + real(c, with_password=with_password)[4:])
    # we may be root here: make the transport treat the login user as a sudoer
    monkeypatch.setattr(ssh_mod.SshTransport, "_use_sudo", lambda self, node, sudo: sudo or node.address.sudo)
    return argv_log


def test_sudo_with_password_is_sent_on_stdin_and_never_shown(sshd, fake_sudo):
    from bmupgrade.transport.ssh import SshTransport

    asked = []

    def provider(addr):
        asked.append(addr.name)
        return "correct horse"

    with SshTransport(password_provider=provider) as t:
        t.connect([sshd.address(sudo=True)])
        seen = []
        r = t.run("bm1", "echo ran; cat; echo done", capture=True, on_output=lambda *a: seen.append(a))
        assert r.ok, r
        assert fake_sudo.read_text().splitlines() == ["-S", "-p", "", "--", "sh", "-c", "exec </dev/null; echo ran; cat; echo done"]
        assert r.stdout == "ran\ndone\n"  # `cat` got /dev/null, not the password line
        blob = repr(r) + repr(seen)
        assert "correct horse" not in blob and "read: ********" in r.output_tail
        t.run("bm1", "true", sudo=True)
        assert asked == ["bm1"]  # asked once


def test_sudo_zero_argument_provider_is_asked_once_for_all_nodes(sshd, fake_sudo):
    from bmupgrade.transport.ssh import SshTransport

    asked = []

    def provider():
        asked.append(1)
        return "correct horse"

    with SshTransport(password_provider=provider) as t:
        t.connect([sshd.address("bm1", sudo=True), sshd.address("bm2", sudo=True)])
        assert t.run("bm1", "true").ok and t.run("bm2", "true").ok and t.run("bm1", "true").ok
    assert asked == [1]


def test_sudo_wrong_password_is_forgotten(sshd, fake_sudo):
    from bmupgrade.transport.ssh import SshTransport

    answers = iter(["wrong one", "correct horse"])
    with SshTransport(password_provider=lambda a: next(answers)) as t:
        t.connect([sshd.address()])
        r = t.run("bm1", "true", sudo=True)
        assert r.exit_code == 1 and r.error == "sudo rejected the password"
        assert "wrong one" not in repr(r)
        assert t.run("bm1", "true", sudo=True).ok  # asked again


def test_sudo_without_password_uses_n(sshd, fake_sudo):
    from bmupgrade.transport.ssh import SshTransport

    with SshTransport() as t:
        t.connect([sshd.address()])
        assert t.run("bm1", "echo x", sudo=True).ok
        assert fake_sudo.read_text().splitlines() == ["-n", "--", "sh", "-c", "echo x"]
        assert t.run("bm1", "true").ok  # no sudo asked: plain command
        assert fake_sudo.read_text().splitlines()[-1] == "echo x"


def test_root_is_never_wrapped_in_sudo(sshd, transport):
    if sshd.user != "root":
        pytest.skip("logs in as a non-root user")
    transport.connect([sshd.address(sudo=True)])
    r = transport.run("bm1", "id -u", sudo=True, capture=True)
    assert r.ok and r.stdout == "0\n"

