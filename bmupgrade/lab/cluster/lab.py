"""`bmupgrade lab up|status|down --cluster`: the real two-node cluster lab as one object.

    lab = ClusterLab("/tmp/c", name="bmlab", subnet="198.51.100.0/24").up()
    lab.run("bm1", "crm_mon -1")          # inside the node, via nsenter
    lab.status()["vip_holder"]            # "bm1"
    lab.down()                            # nothing left: processes, netns, links, mounts

The supervisor (bmupgrade.lab.cluster.supervisor) owns the nodes; this side builds the
repository and the node files, starts the supervisor, waits until the cluster is ready and
writes inventory.yaml / ssh_config / known_hosts as the stand-in lab does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bmupgrade.lab.cluster import bluemind, config, crmmon, netns, node, packages, rootfs
from bmupgrade.lab.cluster.config import ClusterConfig, ClusterLabError

TOOLS = {  # command -> Debian package
    "corosync": "corosync", "pacemakerd": "pacemaker", "crm_mon": "pacemaker-cli-utils",
    "/usr/lib/ocf/resource.d/heartbeat/IPaddr2": "resource-agents", "/usr/sbin/sshd": "openssh-server",
    "ssh-keygen": "openssh-client", "ip": "iproute2", "unshare": "util-linux", "nsenter": "util-linux",
    "dpkg-deb": "dpkg", "apt-ftparchive": "apt-utils", "rsync": "rsync", "fuser": "psmisc", "openssl": "openssl",
    "curl": "curl",
}
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
READY_TIMEOUT = 90.0  # the first boot installs bm-full 4.9.2 in both nodes


def check_privileges() -> None:
    """Root with CAP_SYS_ADMIN (mounts, namespaces) and CAP_NET_ADMIN (bridge, veth)."""
    caps = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
    if os.geteuid() != 0 or not (caps >> CAP_SYS_ADMIN) & 1 or not (caps >> CAP_NET_ADMIN) & 1:
        raise ClusterLabError("the cluster lab needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN "
                              "(use the stand-in lab without --cluster otherwise)")


def missing_tools() -> list[str]:
    """Debian packages to install for the tools that are not there."""
    return sorted({pkg for tool, pkg in TOOLS.items()
                   if not (os.access(tool, os.X_OK) if tool.startswith("/") else shutil.which(tool))})


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class ClusterLab:
    """A real two-node cluster lab in `dir` (see the module docstring)."""

    def __init__(self, dir: str | os.PathLike, *, name: str | None = None, subnet: str | None = None,
                 ha: str | None = None):
        path = Path(os.path.abspath(dir))
        if (path / config.MARKER).is_file():
            self.cfg = ClusterConfig.load(path)
            if (name and name != self.cfg.name) or (subnet and subnet != self.cfg.subnet) or (ha and ha != self.cfg.ha):
                raise ClusterLabError("%s is the %s cluster lab %s on %s; down it and use another --dir to change "
                                      "--name/--subnet/--ha" % (path, self.cfg.ha, self.cfg.name, self.cfg.subnet))
        else:
            self.cfg = ClusterConfig(str(path), **{k: v for k, v in (("name", name), ("subnet", subnet), ("ha", ha)) if v})
        self.dir = path
        self.inventory_path = path / "inventory.yaml"
        self.ssh_config = path / "ssh_config"
        self.known_hosts = path / "known_hosts"
        self.client_key = path / "keys" / "client_ed25519"
        self.public_ip = self.cfg.vip
        self.startup_seconds: float | None = None

    def __repr__(self):
        return "ClusterLab(%s %s %s)" % (self.dir, self.cfg.name, self.cfg.subnet)

    # ---- lifecycle
    @property
    def supervisor_pid(self) -> int | None:
        pid = node.supervisor_state(self.cfg).get("pid")
        return pid if _alive(pid) else None

    def is_up(self) -> bool:
        return self.supervisor_pid is not None

    def up(self, *, reset: bool = False) -> "ClusterLab":
        """Create (first time) and boot both nodes; wait until both are online, the resources
        started and sshd answers. Idempotent when the lab runs."""
        t0 = time.monotonic()
        check_privileges()
        missing = missing_tools()
        if missing:
            raise ClusterLabError("missing tools: apt-get install --no-install-recommends %s" % " ".join(missing))
        if self.is_up() and not reset:
            self.startup_seconds = time.monotonic() - t0
            return self
        if self.dir.exists() and any(self.dir.iterdir()) and not (self.dir / config.MARKER).is_file():
            raise ClusterLabError("%s exists and is not a cluster lab; choose another --dir" % self.dir)
        theirs = config.owner(self.cfg)
        if theirs and theirs != str(self.dir):
            raise ClusterLabError("a cluster lab named %r already runs in %s (down it, or use another --name)"
                                  % (self.cfg.name, theirs))
        if theirs:
            self.down()  # ours: leftovers of a killed supervisor, or --reset
        why = netns.in_use(self.cfg)
        if why:
            raise ClusterLabError(why)
        config.claim(self.cfg)
        if reset:
            rootfs.wipe(self.cfg)
        try:
            self._create()
            self._start_supervisor()
            self.wait_ready()
        except BaseException:
            self.down()  # a lab that did not come up leaves nothing running
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _create(self) -> None:
        self.cfg.save()
        os.chmod(self.dir, 0o700)
        keys = self._keys()
        secrets = bluemind.secrets(self.dir / "keys")
        packages.build_repo(self.cfg.repo)
        for n in self.cfg.nodes:
            rootfs.prepare(self.cfg, n.name, keys)
            bluemind.prepare(self.cfg, n.name, secrets)
        self._write_client_files(keys)

    def _keys(self) -> dict[str, Path]:
        kdir = self.dir / "keys"
        kdir.mkdir(mode=0o700, exist_ok=True)
        keys = {"client": self.client_key, **{n.name: kdir / ("%s_host_ed25519" % n.name) for n in self.cfg.nodes}}
        procs = [subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bmupgrade-cluster-lab",
                                   "-f", str(k)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                 for k in keys.values() if not k.exists()]
        if any(p.wait() for p in procs):
            raise ClusterLabError("ssh-keygen failed")
        return keys

    def _write_client_files(self, keys: dict[str, Path]) -> None:
        self.known_hosts.write_text(rootfs.known_hosts(self.cfg, keys))
        cfg = ["# bmupgrade cluster lab (written by `bmupgrade lab up --cluster`): ssh -F %s bm1" % self.ssh_config]
        for n in self.cfg.nodes:
            cfg += ["Host %s" % n.name, "  HostName %s" % n.address, "  Port 22", "  User root",
                    "  IdentityFile %s" % self.client_key, "  IdentitiesOnly yes",
                    "  UserKnownHostsFile %s" % self.known_hosts, "  GlobalKnownHostsFile /dev/null",
                    "  StrictHostKeyChecking yes", "  BatchMode yes", ""]
        self.ssh_config.write_text("\n".join(cfg))
        inv = ["# bmupgrade cluster lab inventory (written by `bmupgrade lab up --cluster`)",
               "# use: bmupgrade plan|run RUNBOOK -i %s" % self.inventory_path,
               "cluster:", "  public_ip: %s" % self.cfg.vip, "  known_hosts: %s" % self.known_hosts, "  nodes:"]
        for n in self.cfg.nodes:
            inv.append("    - {name: %s, host: %s, port: 22, user: root, identity_file: %s}"
                       % (n.name, n.address, self.client_key))
        self.inventory_path.write_text("\n".join(inv) + "\n")

    def _start_supervisor(self) -> None:
        log = open(self.dir / "supervisor.log", "ab")
        root = str(Path(__file__).resolve().parents[3])
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        p = subprocess.Popen([sys.executable, "-m", "bmupgrade.lab.cluster.supervisor", str(self.dir)],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                             close_fds=True, env=env, cwd="/")
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise ClusterLabError("the supervisor failed: %s" % self._last_log_line())
            if node.supervisor_state(self.cfg).get("pid") == p.pid and all(
                    node.init_pid(self.cfg, n.name) for n in self.cfg.nodes):
                return
            time.sleep(0.02)
        raise ClusterLabError("the supervisor did not start the nodes: %s" % self._last_log_line())

    def _last_log_line(self) -> str:
        return _last_line(self.dir / "supervisor.log")

    def wait_ready(self, timeout: float = READY_TIMEOUT, nodes: list[str] | None = None) -> dict:
        """Until every (powered) node is online, every resource started and sshd answers."""
        deadline = time.monotonic() + timeout
        names = nodes or [n.name for n in self.cfg.nodes]
        last = "nothing yet"
        while time.monotonic() < deadline:
            if not self.is_up():
                raise ClusterLabError("the supervisor died: %s" % self._last_log_line())
            last = self._not_ready(names)
            if last is None:
                return self.crm_mon() if self.cfg.ha == "pacemaker" else {}
            time.sleep(0.1)
        raise ClusterLabError("cluster not ready after %.0f s: %s (logs: %s/nodes/*/upper/var/log)"
                              % (timeout, last, self.dir))

    def _not_ready(self, names: list[str]) -> str | None:
        for name in names:
            if not node.init_pid(self.cfg, name):
                raise ClusterLabError("%s is powered off: %s" % (name, _last_line(self.cfg.node_dir(name) / "console.log")))
            if node.run(self.cfg, name, "test -e /run/bmlab-ready").returncode:
                return "%s is booting" % name
            if not _ssh_answers(self.cfg.node(name).address):
                return "sshd on %s not answering" % name
        if self.cfg.ha == "keepalived":
            return self._keepalived_not_ready(names)
        try:
            mon = self.crm_mon(names[0])
        except (ClusterLabError, Exception) as e:  # noqa: BLE001 - not up yet: any parse error
            return "crm_mon: %s" % e
        offline = [n for n in names if not mon["nodes"].get(n, {}).get("online")]
        if offline:
            return "not online: %s" % ", ".join(offline)
        stopped = [r for r, v in mon["resources"].items() if not v["active"]]
        return "not started: %s" % ", ".join(stopped) if stopped else None

    def _keepalived_not_ready(self, names: list[str]) -> str | None:
        """VRRP settled: keepalived up on every node, one VIP holder running BlueMind."""
        for name in names:
            if node.run(self.cfg, name, "systemctl is-active --quiet keepalived").returncode:
                return "keepalived not running on %s" % name
        holders = self.vip_holders()
        if len(holders) != 1:
            return "VIP held by %s" % (", ".join(holders) or "nobody")
        if node.run(self.cfg, holders[0], "systemctl is-active --quiet bluemind.target").returncode:
            return "BlueMind not started on %s" % holders[0]
        return None

    def down(self) -> list[str]:
        """Stop everything; returns what is left behind (empty = clean). Works after a SIGKILLed
        supervisor too: nodes died with it (PDEATHSIG chain), and the network objects are found
        by name; any process still inside a lab netns is killed."""
        theirs = config.owner(self.cfg)
        if theirs != str(self.dir):  # never destroy another lab's objects of the same name
            return [] if not theirs else ["the name %r belongs to the lab in %s" % (self.cfg.name, theirs)]
        pid = self.supervisor_pid
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        _kill_netns_processes(self.cfg)
        problems = netns.destroy(self.cfg)
        self.cfg.socket.unlink(missing_ok=True)
        (self.dir / "supervisor.json").unlink(missing_ok=True)
        left = problems + leftovers(self.cfg)
        if not left:
            config.release(self.cfg)
        return left

    # ---- inspection
    def run(self, name: str, command: str, **kw) -> subprocess.CompletedProcess:
        return node.run(self.cfg, name, command, **kw)

    def crm_mon(self, name: str | None = None) -> dict:
        name = name or next((n.name for n in self.cfg.nodes if node.init_pid(self.cfg, n.name)), None)
        if not name:
            raise ClusterLabError("both nodes are powered off")
        r = node.run(self.cfg, name, "crm_mon -1 --output-as=xml --include=all")
        if r.returncode:
            raise ClusterLabError("crm_mon on %s exited %d: %s" % (name, r.returncode, r.stderr.strip()))
        return crmmon.parse(r.stdout)

    def vip_holders(self) -> list[str]:
        return [n.name for n in self.cfg.nodes if node.holds_vip(self.cfg, n.name)]

    def status(self) -> dict:
        sup = node.supervisor_state(self.cfg)
        st = {"dir": str(self.dir), "name": self.cfg.name, "subnet": self.cfg.subnet, "public_ip": self.cfg.vip,
              "supervisor": self.supervisor_pid, "nodes": {}, "vip_holders": [], "crm_mon": None,
              "inventory": str(self.inventory_path), "ssh": "ssh -F %s bm1" % self.ssh_config}
        if not st["supervisor"]:
            return st
        for n in self.cfg.nodes:
            power = sup.get("nodes", {}).get(n.name, {}).get("power", "off")
            st["nodes"][n.name] = {"address": n.address, "power": power,
                                   "versions": node.versions(self.cfg, n.name) if power == "on" else {}}
        st["vip_holders"] = self.vip_holders()
        st["ha"] = self.cfg.ha
        if self.cfg.ha == "keepalived":
            for name, n in st["nodes"].items():
                n["keepalived"] = node.run(self.cfg, name, "systemctl is-active keepalived").stdout.strip() \
                    if n["power"] == "on" else "-"
            return st
        try:
            st["crm_mon"] = self.crm_mon()
        except ClusterLabError as e:
            st["crm_mon_error"] = str(e)
        return st


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"


def _ssh_answers(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=0.5) as s:
            s.settimeout(0.5)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _kill_netns_processes(cfg: ClusterConfig) -> None:
    """SIGKILL every process whose network namespace is one of this lab's."""
    inodes = {i for i in (netns.netns_inode(n.netns) for n in cfg.nodes) if i}
    if not inodes:
        return
    for pid in _netns_pids(inodes):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 3
    while _netns_pids(inodes) and time.monotonic() < deadline:
        time.sleep(0.02)


def _netns_pids(inodes: set[int]) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat("/proc/%s/ns/net" % d).st_ino in inodes:
                    out.append(int(d))
            except OSError:
                pass
    return out


def leftovers(cfg: ClusterConfig) -> list[str]:
    """What of this lab still exists in the host: links, namespaces, routes, processes."""
    out = ["link %s" % x for x in [cfg.bridge] + [n.veth_host for n in cfg.nodes] if netns.link_exists(x)]
    out += ["netns %s" % n.netns for n in cfg.nodes if netns.netns_exists(n.netns)]
    routes = netns.ip("-4", "route", "show", "to", "match", cfg.gateway, check=False).stdout
    out += ["route %s" % r.strip() for r in routes.splitlines() if not r.startswith("default")]
    if cfg.socket.exists():
        out.append("socket %s" % cfg.socket)
    return out
