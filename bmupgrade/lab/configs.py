"""The files a lab node and its client need (the stand-in lab, `bmupgrade.lab.core`).

Per node: sshd_config, and bin/ (the stand-in commands) with the session's HOME rc files that
keep bin/ first on PATH. For the client: known_hosts, ssh_config and inventory.yaml. Each is
derived from lab.json (ports, user), so it can be rewritten at every start.

Stdlib only, like core.py (the system python runs the lab as any user). The stand-ins module
(`bmlab`) comes in as an argument: core.py loads it once from its file, and importing core from
here would be circular.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing would slow every lab start
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Callable

    from .core import Lab, LabNode

    Write = Callable[[str, bytes], None]  # bmlab.write_file: atomic (temporary file, then rename)


# --------------------------------------------------------------------------- ssh and inventory
def write_configs(lab: "Lab", meta: dict, write: "Write") -> None:
    """Write every node's sshd_config, then known_hosts, ssh_config and inventory.yaml, from
    lab.json (`meta`): ports change when one was taken, so they are rewritten at each start."""
    user = meta["user"]
    for n in lab.nodes:
        _atomic(write, n.sshd_config, sshd_config(n, meta["nodes"][n.name]["port"], user, lab.dir))
    ports = {n.name: meta["nodes"][n.name]["port"] for n in lab.nodes}
    _atomic(write, lab.known_hosts, known_hosts(lab.nodes, ports))
    _atomic(write, lab.ssh_config, ssh_config(lab, ports, user))
    _atomic(write, lab.inventory_path, inventory(lab, ports, user))


def sshd_config(n: "LabNode", port: int, user: str, lab_dir: Path) -> str:
    """One node's sshd: its own address and host key, public keys of `user` only, and the
    session environment that makes the stand-ins answer as this node."""
    env = ["PATH=%s:/usr/bin:/bin" % (lab_dir / "bin"), "BMLAB_NODE_DIR=%s" % n.dir, "HOME=%s" % (n.dir / "home"),
           "BMLAB_NODE=%s" % n.name]
    lines = [
        "# bmupgrade lab node %s (written by `bmupgrade lab up`)" % n.name,
        "ListenAddress %s:%d" % (n.host, port),
        "HostKey %s" % _q(n.host_key),
        "PidFile %s" % _q(n.pidfile),
        "AuthorizedKeysFile %s" % _q(lab_dir / "authorized_keys"),
        "AllowUsers %s" % user,
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "PermitRootLogin prohibit-password",
        "PermitEmptyPasswords no",
        "UsePAM no",
        "StrictModes no",
        "PermitUserEnvironment no",
        "AcceptEnv LANG LC_* DEBIAN_FRONTEND",
        "SetEnv " + " ".join(_q(e) for e in env),
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "AllowAgentForwarding no",
        "PermitTunnel no",
        "PrintMotd no",
        "PrintLastLog no",
        "UseDNS no",
        "MaxStartups 64:30:128",
        "MaxSessions 32",
        "LoginGraceTime 30",
        "Subsystem sftp internal-sftp",
        "LogLevel INFO",
        # sntrup761x25519 (OpenSSH 9's default) costs ~55 ms a session here; a lab needs no
        # post-quantum key exchange, and Paramiko negotiates curve25519 anyway
        "KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,"
        "diffie-hellman-group16-sha512,diffie-hellman-group14-sha256",
        "",
    ]
    return "\n".join(lines)


def known_hosts(nodes: list["LabNode"], ports: dict[str, int]) -> str:
    """Each node's host key under [host]:port, so clients can check host keys strictly."""
    pubs = {n.name: " ".join(Path(str(n.host_key) + ".pub").read_text().split()[:2]) for n in nodes}
    return "".join("[%s]:%d %s\n" % (n.host, ports[n.name], pubs[n.name]) for n in nodes)


def ssh_config(lab: "Lab", ports: dict[str, int], user: str) -> str:
    """Host bm1/bm2 for `ssh -F lab/ssh_config bm1`: the lab's key and known_hosts only."""
    cfg = ["# bmupgrade lab (written by `bmupgrade lab up`): ssh -F %s bm1" % lab.ssh_config]
    for n in lab.nodes:
        cfg += ["Host %s" % n.name,
                "  HostName %s" % n.host,
                "  Port %d" % ports[n.name],
                "  User %s" % user,
                "  IdentityFile %s" % _q(lab.client_key),
                "  IdentitiesOnly yes",
                "  UserKnownHostsFile %s" % _q(lab.known_hosts),
                "  GlobalKnownHostsFile /dev/null",
                "  StrictHostKeyChecking yes",
                "  PasswordAuthentication no",
                "  KbdInteractiveAuthentication no",
                "  BatchMode yes",
                ""]
    return "\n".join(cfg)


def inventory(lab: "Lab", ports: dict[str, int], user: str) -> str:
    """inventory.yaml for `bmupgrade plan|run RUNBOOK -i lab/inventory.yaml` (written without
    a YAML library: the lab is stdlib only)."""
    inv = ["# bmupgrade lab inventory (written by `bmupgrade lab up`)",
           "# use: bmupgrade plan|run RUNBOOK -i %s" % lab.inventory_path,
           "# by hand: ssh -F %s bm1" % lab.ssh_config,
           "cluster:",
           "  public_ip: %s" % lab.public_ip,
           "  known_hosts: %s" % _yaml_str(str(lab.known_hosts)),
           "  nodes:"]
    for n in lab.nodes:
        inv.append("    - {name: %s, host: %s, port: %d, user: %s, identity_file: %s, state_dir: %s}" % (
            n.name, n.host, ports[n.name], _yaml_str(user), _yaml_str(str(lab.client_key)),
            _yaml_str(str(n.state_dir))))
    return "\n".join(inv) + "\n"


# --------------------------------------------------------------------------- stand-in commands
def install_standins(bindir: Path, nodes: list["LabNode"], bmlab: "ModuleType", source: Path) -> None:
    """Put the stand-ins in `bindir` (bmlab.py from `source`, its launcher, one symlink per
    command, `ip` as a bash fast path) and make each node's session find them first on PATH.
    Unchanged files are left alone, so the launcher's cached bytecode stays valid."""
    bindir.mkdir(exist_ok=True)
    for name, data in (("bmlab.py", source.read_bytes()), ("bmlab", bmlab.launcher().encode())):
        target = bindir / name
        if not target.exists() or target.read_bytes() != data:
            bmlab.write_file(str(target), data)
        target.chmod(0o755)
    for cmd in bmlab.COMMANDS:
        link = bindir / cmd
        if cmd == "ip":  # the VIP probe's fast path (bmlab.FAST_IP), a script of its own
            if link.is_symlink() or not link.exists() or link.read_text() != bmlab.FAST_IP:
                link.unlink(missing_ok=True)
                bmlab.write_file(str(link), bmlab.FAST_IP.encode())
            link.chmod(0o755)
        elif not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to("bmlab")
    for n in nodes:  # the session's HOME: bash sources home/.bashrc for ssh commands
        home = n.dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        path = "%s:/usr/bin:/bin" % bindir
        (home / ".bashrc").write_text("# bmupgrade lab: keep the stand-ins first on PATH\nexport PATH=%s\n" % _sh(path))
        (home / ".bash_profile").write_text(
            "# bmupgrade lab (login shells: /etc/profile resets PATH)\nexport PATH=%s\nPS1='%s:\\w\\$ '\n" % (_sh(path), n.name))


# --------------------------------------------------------------------------- quoting
def _atomic(write: "Write", path: Path, text: str) -> None:
    write(str(path), text.encode())


def _q(value) -> str:
    """An ssh_config/sshd_config argument: double-quoted when it has a space or a '#'."""
    s = str(value)
    return '"%s"' % s if (" " in s or "#" in s) else s


def _sh(value: str) -> str:
    """A single-quoted shell word."""
    return "'" + value.replace("'", "'\\''") + "'"


def _yaml_str(value: str) -> str:
    """A YAML scalar: plain when unambiguous, else a JSON (= YAML double-quoted) string."""
    if re.fullmatch(r"[A-Za-z0-9_./@+-][A-Za-z0-9_./@+:-]*", value) and value.lower() not in {
            "yes", "no", "true", "false", "on", "off", "null", "y", "n", "~"} and not re.fullmatch(r"[0-9.+-]+", value):
        return value
    return json.dumps(value)
