"""A node's private filesystem: the overlay upper layers its init mounts over /etc /usr /var /root.

Everything a node changes (dpkg and apt state, Pacemaker's CIB, logs, installed packages) lands
in `nodes/NAME/upper`, never in the host's own /var/lib/dpkg. This module writes the node's
files into those upper layers before the first boot: corosync.conf, the CIB, the fence and
resource agents, sshd's config and keys, the apt source of the lab repository, the files
BlueMind's HA guide wants synchronized, and a dpkg hook that snapshots the cluster state.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
from pathlib import Path

from bmupgrade.lab.cluster import cib
from bmupgrade.lab.cluster.config import ClusterConfig

LAYERS = ("etc", "usr", "var", "root")
FILES = Path(__file__).with_name("files")
REPO_IN_NODE = "/run/bmlab/repo"
SYNC_FILES = {  # BlueMind's HA guide: identical on both nodes (more in bluemind.py: /etc/bm, the certificate)
    "etc/aliases": "postmaster: root\n",
    "etc/aliases.db": "bmlab aliases db\n",
    "var/lib/bm-ca/ca-cert.pem": "-----BEGIN CERTIFICATE-----\nbmlab-ca\n-----END CERTIFICATE-----\n",
    "usr/share/bm-elasticsearch/config/elasticsearch.yml": "cluster.name: bluemind\n",
}
SNAPSHOT = """#!/bin/sh
# bmupgrade lab: dpkg is about to change packages; record what the cluster looks like (the
# tests assert from this that resources were unmanaged while packages installed).
n=$(date +%s.%N)
mkdir -p /var/log/bmlab/dpkg
crm_mon -1 --output-as=xml > /var/log/bmlab/dpkg/$n.crm_mon.xml 2>/dev/null || rm -f /var/log/bmlab/dpkg/$n.crm_mon.xml
cibadmin --query > /var/log/bmlab/dpkg/$n.cib.xml 2>/dev/null || rm -f /var/log/bmlab/dpkg/$n.cib.xml
if [ -f /etc/bmlab-units/keepalived.service.exec ]; then
  systemctl is-active keepalived > /var/log/bmlab/dpkg/$n.keepalived 2>&1
fi
exit 0
"""


def upper(cfg: ClusterConfig, node: str) -> Path:
    return cfg.node_dir(node) / "upper"


def _mkdirs_like(up: Path, rel: str) -> Path:
    """Create up/rel, each component with the owner and mode of the same directory on the host
    (an upper directory's attributes win in the merged view: /var/lib/pacemaker must stay
    hacluster's)."""
    path = up
    for part in Path(rel).parts:
        path = path / part
        host = Path("/") / path.relative_to(up)
        if not path.is_dir():
            path.mkdir()
            try:
                st = os.stat(host)
                os.chown(path, st.st_uid, st.st_gid)
                os.chmod(path, stat.S_IMODE(st.st_mode))
            except FileNotFoundError:
                os.chmod(path, 0o755)
    return path


def put(cfg: ClusterConfig, node: str, rel: str, data: str | bytes, mode: int = 0o644,
        owner: tuple[str, str] | None = None) -> Path:
    """Write /rel of the node (rel starts with one of LAYERS) into its upper layer."""
    up = upper(cfg, node)
    _mkdirs_like(up, str(Path(rel).parent))
    path = up / rel
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    if owner:
        os.chown(path, pwd.getpwnam(owner[0]).pw_uid, grp.getgrnam(owner[1]).gr_gid)
    return path


def _whiteout(cfg: ClusterConfig, node: str, rel: str) -> None:
    """Hide a host file in the node (overlayfs whiteout: a 0/0 character device)."""
    up = upper(cfg, node)
    _mkdirs_like(up, str(Path(rel).parent))
    path = up / rel
    if not path.exists():
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(0, 0))


def prepare(cfg: ClusterConfig, node: str, keys: dict[str, Path]) -> None:
    """Write the node's files (idempotent: rewrites the lab's own files, keeps the rest)."""
    nd = cfg.node_dir(node)
    for layer in LAYERS:
        (nd / "upper" / layer).mkdir(parents=True, exist_ok=True)
        (nd / "work" / layer).mkdir(parents=True, exist_ok=True)
    for layer in LAYERS:
        st = os.stat("/" + layer)
        os.chown(nd / "upper" / layer, st.st_uid, st.st_gid)
        os.chmod(nd / "upper" / layer, stat.S_IMODE(st.st_mode))
    if cfg.ha == "keepalived":
        _keepalived(cfg, node)
    else:
        put(cfg, node, "etc/corosync/corosync.conf", cib.corosync_conf(cfg))
        cib_path = upper(cfg, node) / "var/lib/pacemaker/cib/cib.xml"
        if not cib_path.exists():  # the cluster owns it after the first boot
            put(cfg, node, "var/lib/pacemaker/cib/cib.xml", cib.cib_xml(cfg), 0o600, ("hacluster", "haclient"))
    put(cfg, node, "usr/sbin/fence_bmlab", (FILES / "fence_bmlab").read_bytes(), 0o755)
    put(cfg, node, "usr/lib/ocf/resource.d/bmlab/bluemind", (FILES / "bluemind").read_bytes(), 0o755)
    put(cfg, node, "usr/local/lib/bmlab/snapshot", SNAPSHOT, 0o755)
    put(cfg, node, "usr/bin/systemctl", (FILES / "systemctl").read_bytes(), 0o755)  # no systemd in a node
    put(cfg, node, "etc/apt/apt.conf.d/99bmlab", 'DPkg::Pre-Invoke { "/usr/local/lib/bmlab/snapshot"; };\n'
        'APT::Install-Recommends "false";\n')
    put(cfg, node, "etc/apt/sources.list.d/bm.list", "deb [trusted=yes] file:%s ./\n" % REPO_IN_NODE)
    for f in os.listdir("/etc/apt/sources.list.d"):
        if f != "bm.list":
            _whiteout(cfg, node, "etc/apt/sources.list.d/" + f)
    if os.path.exists("/etc/apt/sources.list"):
        _whiteout(cfg, node, "etc/apt/sources.list")
    for rel, text in SYNC_FILES.items():
        if not (upper(cfg, node) / rel).exists():
            put(cfg, node, rel, text)
    _mkdirs_like(upper(cfg, node), "var/spool/cyrus/meta")
    _ssh(cfg, node, keys)


KA_NOTIFY = """#!/bin/sh
# bmupgrade lab: keepalived notify script. The MASTER runs BlueMind, a BACKUP/FAULT stops it.
echo "$(date +%s.%N) keepalived notify $*" >> /var/log/bmlab/calls.log
case "$3" in
  MASTER) command -v bmctl >/dev/null && bmctl start ;;
  BACKUP|FAULT|STOP) command -v bmctl >/dev/null && bmctl stop ;;
esac
exit 0
"""


def _keepalived(cfg: ClusterConfig, node: str) -> None:
    """Real keepalived (VRRP, unicast over the bridge), started by the systemctl stand-in as
    the enabled unit keepalived.service; bm1 is the preferred MASTER."""
    me = cfg.node(node)
    peer = next(n for n in cfg.nodes if n.name != node)
    put(cfg, node, "etc/keepalived/keepalived.conf", "\n".join([
        "# bmupgrade cluster lab %s, node %s" % (cfg.name, node),
        "global_defs {\n  router_id %s\n  enable_script_security\n  script_user root\n}" % node,
        "vrrp_instance BLUEMIND {",
        "  state %s" % ("MASTER" if me.index == 1 else "BACKUP"),
        "  interface eth0\n  virtual_router_id 51\n  priority %d\n  advert_int 1" % (150 if me.index == 1 else 100),
        "  unicast_src_ip %s\n  unicast_peer {\n    %s\n  }" % (me.address, peer.address),
        "  virtual_ipaddress {\n    %s/%d dev eth0\n  }" % (cfg.vip, cfg.prefixlen),
        "  notify /usr/local/lib/bmlab/keepalived-notify",
        "}", ""]))
    put(cfg, node, "usr/local/lib/bmlab/keepalived-notify", KA_NOTIFY, 0o755)
    put(cfg, node, "etc/bmlab-units/keepalived.service", "")
    put(cfg, node, "etc/bmlab-units/keepalived.service.exec",
        "keepalived --vrrp -f /etc/keepalived/keepalived.conf -p /run/bmlab-units/keepalived.service.pid "
        "-r /run/bmlab-units/keepalived-vrrp.pid\n")


def _ssh(cfg: ClusterConfig, node: str, keys: dict[str, Path]) -> None:
    """sshd's config and host key; root's authorized key, and a key + known_hosts to reach the
    peer by its name (the runbook's config-sync step, csync2 -x, runs rsync to the other node)."""
    me = cfg.node(node)
    put(cfg, node, "etc/ssh/bmlab_host_ed25519_key", keys[node].read_bytes(), 0o600)
    put(cfg, node, "etc/ssh/bmlab_host_ed25519_key.pub", Path(str(keys[node]) + ".pub").read_bytes())
    put(cfg, node, "etc/ssh/bmlab_sshd_config", "\n".join([
        "# bmupgrade cluster lab node %s" % node,
        "ListenAddress %s:22" % me.address,
        "HostKey /etc/ssh/bmlab_host_ed25519_key",
        "PidFile /run/sshd.pid",
        "AuthorizedKeysFile /root/.ssh/authorized_keys",
        "PermitRootLogin prohibit-password",
        "AuthenticationMethods publickey",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "UseDNS no",
        "PrintMotd no",
        "MaxStartups 64:30:128",
        "MaxSessions 32",
        "AcceptEnv LANG LC_* DEBIAN_FRONTEND",
        "Subsystem sftp internal-sftp",
        "KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256",
        ""]))
    client_pub = Path(str(keys["client"]) + ".pub").read_text()
    put(cfg, node, "root/.ssh/authorized_keys", client_pub, 0o600)
    put(cfg, node, "root/.ssh/id_ed25519", keys["client"].read_bytes(), 0o600)
    put(cfg, node, "root/.ssh/id_ed25519.pub", client_pub)
    put(cfg, node, "root/.ssh/known_hosts", known_hosts(cfg, keys))
    put(cfg, node, "root/.ssh/config", "".join("Host %s\n  HostName %s\n" % (n.name, n.address) for n in cfg.nodes)
        + "Host *\n  StrictHostKeyChecking yes\n  BatchMode yes\n")
    os.chmod(upper(cfg, node) / "root/.ssh", 0o700)
    # root's shell start-up files are the node's own, not the host's seen through the lower
    # layer: bash sources ~/.bashrc for every ssh command, and a host's `pyenv init` there cost
    # ~150 ms a command (a node must answer like a server: a few ms, as the stand-in lab does)
    for name in (".bashrc", ".profile", ".bash_profile"):
        put(cfg, node, "root/" + name, "# bmupgrade cluster lab node %s: root's %s (deliberately empty)\n"
            % (node, name))


def known_hosts(cfg: ClusterConfig, keys: dict[str, Path]) -> str:
    return "".join("%s %s\n" % (n.address, " ".join(Path(str(keys[n.name]) + ".pub").read_text().split()[:2]))
                   for n in cfg.nodes)


def wipe(cfg: ClusterConfig) -> None:
    """Forget every node's disk (a fresh 4.9.2 cluster at the next boot)."""
    for n in cfg.nodes:
        shutil.rmtree(cfg.node_dir(n.name), ignore_errors=True)
