"""The lab: two real OpenSSH servers on loopback, each simulating one BlueMind HA node.

Stdlib only (no typer/yaml/pydantic): `python3 -m bmupgrade.lab up` must work with the system
python as any user, e.g. a test user started with `runuser`.

Layout of a lab directory::

    lab.json              what the lab is: nodes, hosts, ports, login user, crm_* kind (the marker of a lab)
    cluster.json          Pacemaker-like cluster state (properties, VIP holders, resources, faults)
    cib.xml               (real crm_* tools only) the CIB rendered from cluster.json for each call
    state.lock            flock guarding every state.json and cluster.json
    client_ed25519(.pub)  the one client key; authorized_keys holds its public half
    known_hosts           [127.0.0.11]:PORT ssh-ed25519 ... (strict host-key checking works)
    ssh_config            Host bm1/bm2 for `ssh -F lab/ssh_config bm1`
    inventory.yaml        for `bmupgrade plan|run RUNBOOK -i lab/inventory.yaml`
    bin/                  bmlab.py (the stand-ins script), bmlab (a launcher importing it, so its
                          bytecode is cached) and one symlink to bmlab per stand-in command
    nodes/<name>/         sshd_config, ssh_host_ed25519_key, sshd.pid, sshd.log, state.json,
                          ledger.jsonl, home/ (the session's HOME), root/ (node filesystem)
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from . import configs

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
NODES = (("bm1", "127.0.0.11"), ("bm2", "127.0.0.12"))
STANDINS_SRC = Path(__file__).with_name("standins") / "bmlab.py"
START_TIMEOUT = 5.0

FAULTS = {  # name -> accepted options (node is separate)
    "fail": {"command", "exit_code", "times", "message"},
    "hang": {"command", "seconds", "times"},
    "drop": {"command", "times", "when"},
    "slow-apt": {"download", "install"},
    "node-down": set(),
    "vip-move": {"to", "command", "times"},
    "split-brain": set(),
    "no-vip": set(),
    "stonith-disabled": set(),
    "nfs-meta": set(),
    "config-drift": {"file"},
    "half-configured": {"package"},
    "dpkg-lock": {"pid", "process"},
    "held-package": {"package"},
    "backup-running": set(),  # a BlueMind DataProtect (backup) job is running
    "stale-plugin": {"package"},  # an installed package needing bm-core (= old) with no newer version
    "core-starting": {"times"},  # BlueMind's core answers CORE_STATE_STARTING this many times
}
CLUSTER_WIDE = {"split-brain", "no-vip", "stonith-disabled"}


class LabError(Exception):
    """A one-line problem a person can act on (the CLIs print it and exit 2)."""


def _load_standins():
    spec = importlib.util.spec_from_file_location("bmupgrade_lab_standins", STANDINS_SRC)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bmlab = _load_standins()


# --------------------------------------------------------------------------- process helpers
def _proc_table() -> dict[int, int]:
    """pid -> ppid for every live process."""
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    data = f.read()
                table[int(d)] = int(data.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return table


def _descendants(pid: int, table: dict[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for p, pp in table.items():
        children.setdefault(pp, []).append(p)
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def _kill_and_wait(pids: list[int], sig: int, timeout: float) -> list[int]:
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        for p in alive:
            _reap(p)
        alive = [p for p in alive if bmlab.pid_alive(p)]
        if alive:
            time.sleep(0.01)
    return alive


def _port_free(host: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _free_port(host: str) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def _accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _launch_sshds(nodes: list["LabNode"], meta: dict) -> dict[str, str]:
    """Start sshd for `nodes` in parallel on the ports in `meta`, wait until each accepts
    connections (and wrote its pid file), and return node name -> why it failed (empty: all up).
    One attempt of Lab._start, which retries with new ports when a port was taken."""
    procs = {}
    for n in nodes:
        n.pidfile.unlink(missing_ok=True)
        with open(n.log, "ab") as log:
            procs[n.name] = subprocess.Popen(
                [SSHD, "-D", "-f", str(n.sshd_config), "-E", str(n.log)], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True, close_fds=True)
    pending = {n.name: n for n in nodes}
    failed: dict[str, str] = {}
    deadline = time.monotonic() + START_TIMEOUT
    while pending and time.monotonic() < deadline:
        for name, n in list(pending.items()):
            p = procs[name]
            if p.poll() is not None:
                failed[name] = _last_log_line(n.log)
                del pending[name]
            elif _accepting(n.host, meta["nodes"][name]["port"]) and n.pid == p.pid:
                del pending[name]
        if pending:
            time.sleep(0.005)
    for name, n in pending.items():
        procs[name].kill()
        procs[name].wait()
        failed[name] = "did not start within %.0f s: %s" % (START_TIMEOUT, _last_log_line(n.log))
    return failed


# --------------------------------------------------------------------------- nodes
class LabNode:
    """One simulated BlueMind node: an sshd on its own loopback address plus its state."""

    def __init__(self, lab: "Lab", name: str, host: str):
        self.lab = lab
        self.name = name
        self.host = host
        self.dir = lab.dir / "nodes" / name
        self.root = self.dir / "root"  # the node's filesystem: /etc/aliases is root/etc/aliases
        self.state_dir = self.root / "var/lib/bmupgrade"  # bmupgrade's remote state dir
        self.ledger_path = self.dir / "ledger.jsonl"
        self.sshd_config = self.dir / "sshd_config"
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.pidfile = self.dir / "sshd.pid"
        self.log = self.dir / "sshd.log"

    def __repr__(self):
        return "LabNode(%s %s:%s %s)" % (self.name, self.host, self.port, "up" if self.pid else "down")

    @property
    def port(self) -> int | None:
        return self.lab._meta()["nodes"].get(self.name, {}).get("port")

    @property
    def pid(self) -> int | None:
        """The sshd listener's pid, or None when the node is down (stale pid files ignored)."""
        return bmlab.sshd_pid(self.lab._store, self.name)

    @property
    def is_up(self) -> bool:
        return self.pid is not None

    # ---- processes
    def up(self) -> "LabNode":
        """Start this node's sshd (same port and host key as before); no-op when running."""
        if not self.is_up:
            self.lab._start([self])
        return self

    def down(self) -> None:
        """Stop the sshd listener and every session under it (a machine going away)."""
        listener = self.pid
        victims: list[int] = []
        table = _proc_table()
        if listener:
            victims = _descendants(listener, table)
        run = self.dir / "run"
        if run.is_dir():  # stand-ins sleeping (hang, slow apt), possibly orphaned by a drop
            for f in run.iterdir():
                if f.name.isdigit() and bmlab.pid_alive(int(f.name)):
                    victims.append(int(f.name))
                    victims += _descendants(int(f.name), table)
                f.unlink(missing_ok=True)
        victims = sorted(set(victims) - {os.getpid()})
        alive = _kill_and_wait(victims, signal.SIGKILL, 2.0)
        if listener:
            alive += _kill_and_wait([listener], signal.SIGTERM, 2.0)
            alive = _kill_and_wait(alive, signal.SIGKILL, 2.0)
        if alive:
            raise LabError("%s: processes %s did not stop" % (self.name, alive))
        self.pidfile.unlink(missing_ok=True)

    # ---- state and ledger
    def state(self) -> dict:
        return self.lab._store.read_node(self.name)

    def set_state(self, **changes) -> dict:
        """Change this node's state; dict values are merged one level deep, others replaced.
        Example: set_state(installed={"bm-core": "4.9.3"}, services={"bluemind.target": "inactive"})."""
        with self.lab._store.txn() as tx:
            st = tx.node(self.name)
            for k, v in changes.items():
                if k not in st:
                    raise LabError("unknown node state key %r (keys: %s)" % (k, ", ".join(sorted(st))))
                if isinstance(st[k], dict) and isinstance(v, dict):
                    st[k].update(v)
                else:
                    st[k] = v
            return json.loads(json.dumps(st))

    def calls(self, command: str | None = None) -> list[dict]:
        """Ledger entries (time, argv, exit, duration, pid, ...), oldest first. `command` filters
        like a fault pattern: "apt-get" or "apt-get install" (words in order, options ignored)."""
        try:
            with open(self.ledger_path, encoding="utf-8") as f:
                entries = [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []
        if command:
            entries = [e for e in entries if bmlab.command_matches(command, e["argv"])]
        return entries

    def ssh(self, command: str, *, timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command on this node with the OpenSSH client (strict host keys)."""
        return subprocess.run(["ssh", "-F", str(self.lab.ssh_config), self.name, command], input=input,
                              capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- the lab
class Lab:
    """A two-node lab in `dir`. `Lab(dir).up()` creates or restarts it; `.down()` stops it."""

    def __init__(self, dir: str | os.PathLike = "lab", *, pacemaker: str = "auto"):
        """pacemaker: "auto" (the real crm_attribute/crm_resource/crm_mon against a CIB file where
        pacemaker-cli-utils is installed, stand-ins otherwise), "real" (required) or "standin"."""
        if pacemaker not in ("auto", "real", "standin"):
            raise LabError("--pacemaker must be auto, real or standin (got %r)" % pacemaker)
        self.pacemaker = pacemaker
        self.dir = Path(os.path.abspath(dir))
        self._store = bmlab.Store(str(self.dir))
        self.nodes = [LabNode(self, n, h) for n, h in NODES]
        self.inventory_path = self.dir / "inventory.yaml"
        self.known_hosts = self.dir / "known_hosts"
        self.ssh_config = self.dir / "ssh_config"
        self.client_key = self.dir / "client_ed25519"
        self.public_ip = bmlab.PUBLIC_IP
        self.startup_seconds: float | None = None  # measured by the last up()

    def __repr__(self):
        return "Lab(%s)" % self.dir

    def node(self, name: str) -> LabNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise LabError("unknown node %r (nodes: %s)" % (name, ", ".join(n.name for n in self.nodes)))

    @property
    def user(self) -> str:
        return pwd.getpwuid(os.geteuid()).pw_name

    def exists(self) -> bool:
        return (self.dir / "lab.json").is_file()

    def _meta(self) -> dict:
        try:
            return self._store.meta()
        except FileNotFoundError:
            raise LabError("no lab in %s (run: bmupgrade lab up --dir %s)" % (self.dir, self.dir)) from None

    def _write_meta(self, meta: dict) -> None:
        bmlab.write_file(str(self.dir / "lab.json"), (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())

    def _check_owner(self) -> None:
        owner = self._meta()["user"]
        if owner != self.user:
            raise LabError("this lab belongs to user %s; run it as that user (sshd can only log in the user "
                           "it runs as)" % owner)

    # ---- lifecycle
    def up(self, *, reset: bool = False) -> "Lab":
        """Create the lab if needed and start both nodes (idempotent). reset=True puts the state
        back to a fresh 4.9.2 cluster (keys and ports are kept)."""
        t0 = time.monotonic()
        if not os.access(SSHD, os.X_OK):
            raise LabError("%s not found: install openssh-server (Debian: apt-get install openssh-server)" % SSHD)
        if self.dir.exists() and not self.exists() and any(self.dir.iterdir()):
            raise LabError("%s exists and is not a lab; choose another --dir" % self.dir)
        if self.exists():
            self._check_owner()
        if not self.exists():
            self._create()
        elif reset:
            self.down()
            self._init_state()
        self._choose_pacemaker()
        self._install_standins()
        down = [n for n in self.nodes if not n.is_up]
        if down:
            self._start(down)
        else:
            self._write_configs()  # repairs known_hosts, ssh_config and inventory.yaml
        self.startup_seconds = time.monotonic() - t0
        return self

    def down(self) -> None:
        """Stop both nodes and every process of theirs; the directory (state, ledgers) stays."""
        if not self.exists():
            return
        errors = []
        for n in self.nodes:
            try:
                n.down()
            except LabError as e:
                errors.append(str(e))
        if errors:
            raise LabError("; ".join(errors))

    def _create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for n in self.nodes:
            (n.dir / "home").mkdir(parents=True, exist_ok=True)
        keys = [self.client_key] + [n.host_key for n in self.nodes]
        procs = [subprocess.Popen([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "bmupgrade-lab", "-f", str(k)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for k in keys if not k.exists()]
        for p in procs:
            out = p.communicate()[0]
            if p.returncode:
                raise LabError("ssh-keygen failed: %s" % out.decode(errors="replace").strip())
        (self.dir / "authorized_keys").write_text(self.client_key.with_suffix(".pub").read_text())
        meta = {"format": bmlab.FORMAT, "user": self.user, "created": time.time(), "public_ip": self.public_ip,
                "nodes": {n.name: {"host": n.host, "port": None} for n in self.nodes}}
        self._write_meta(meta)
        self._init_state()

    def _choose_pacemaker(self) -> None:
        real = bmlab.real_pacemaker_available()
        if self.pacemaker == "real" and not real:
            raise LabError("the real Pacemaker tools (%s) are not installed in %s: apt-get install "
                           "pacemaker-cli-utils, or use --pacemaker standin" % ("/".join(bmlab.PCMK_TOOLS), bmlab.PCMK_SBIN))
        mode = "real" if real and self.pacemaker != "standin" else "standin"
        meta = self._meta()
        if meta.get("pacemaker") != mode:
            meta["pacemaker"] = mode
            self._write_meta(meta)

    @property
    def pacemaker_mode(self) -> str:
        """What the crm_* commands of this lab are: "real" (CIB file) or "standin"."""
        return self._meta().get("pacemaker", "standin")

    def _init_state(self) -> None:
        names = [n.name for n in self.nodes]
        with self._store.locked():
            for i, n in enumerate(self.nodes):
                if n.root.exists():
                    shutil.rmtree(n.root)
                bmlab.init_node_root(str(n.root))
                bmlab.write_file(str(n.dir / "state.json"),
                                 (json.dumps(bmlab.default_node_state(n.name, i == 0), indent=1, sort_keys=True) + "\n").encode())
                n.ledger_path.write_bytes(b"")
            bmlab.write_file(str(self.dir / "cluster.json"),
                             (json.dumps(bmlab.default_cluster_state(names), indent=1, sort_keys=True) + "\n").encode())
            bmlab.refresh_fast_answers(bmlab.Txn(self._store))

    def _install_standins(self) -> None:
        """At every up(): a changed bmlab.py (e.g. a new checkout) reaches a lab's bin/ without recreating it."""
        configs.install_standins(self.dir / "bin", self.nodes, bmlab, STANDINS_SRC)

    def _write_configs(self) -> None:
        """sshd_config of each node, known_hosts, ssh_config, inventory.yaml (ports from lab.json)."""
        configs.write_configs(self, self._meta(), bmlab.write_file)

    def _start(self, nodes: list[LabNode]) -> None:
        """Start sshd for `nodes` in parallel and wait until each accepts connections."""
        if not nodes:
            return
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privsep dir as root
        self._check_owner()
        for attempt in range(3):
            meta = self._meta()
            for n in nodes:
                port = meta["nodes"][n.name]["port"]
                if attempt or not port or not _port_free(n.host, port):
                    meta["nodes"][n.name]["port"] = _free_port(n.host)
            self._write_meta(meta)
            self._write_configs()
            failed = _launch_sshds(nodes, meta)
            if not failed:
                return
            if not any("Address already in use" in m or "Cannot bind" in m for m in failed.values()):
                break
            nodes = [self.node(name) for name in failed]  # a port was taken meanwhile: new ports
        raise LabError("sshd for %s failed: %s" % (", ".join(failed), "; ".join(failed.values())))

    # ---- status
    def status(self) -> dict:
        meta = self._meta()
        cl = self.cluster_state()
        nodes = []
        for n in self.nodes:
            st = n.state()
            nodes.append({"name": n.name, "host": n.host, "port": meta["nodes"][n.name]["port"], "up": n.is_up,
                          "pid": n.pid, "versions": st["installed"], "setup_version": st["setup_version"],
                          "services": st["services"], "held": st["held"], "dpkg_lock": st["dpkg_lock"],
                          "half_configured": bmlab.broken_packages(st), "faults": st["faults"],
                          "apt_delays": st["apt_delays"]})
        props = cl["properties"]
        return {"dir": str(self.dir), "user": meta["user"], "public_ip": cl["public_ip"], "nodes": nodes,
                "vip": cl["vip"], "resources": cl["resources"],
                "maintenance_mode": props.get("maintenance-mode"), "stonith_enabled": props.get("stonith-enabled"),
                "faults": cl["faults"], "inventory": str(self.inventory_path),
                "pacemaker_tools": meta.get("pacemaker", "standin"),
                "ssh": "ssh -F %s bm1" % self.ssh_config}

    def cluster_state(self) -> dict:
        """cluster.json plus the derived placement of the `bluemind` resource."""
        with self._store.locked():
            tx = bmlab.Txn(self._store)
            cl = json.loads(json.dumps(tx.cluster()))
            cl["resources"]["vip"] = list(cl["vip"])
            cl["resources"]["bluemind"] = bmlab.resource_nodes(tx, "bluemind")
        return cl

    def set_cluster_state(self, **changes) -> dict:
        """Change cluster.json (properties, vip, resources...); dicts merged one level deep."""
        with self._store.txn() as tx:
            cl = tx.cluster()
            for k, v in changes.items():
                if k not in cl:
                    raise LabError("unknown cluster state key %r (keys: %s)" % (k, ", ".join(sorted(cl))))
                if isinstance(cl[k], dict) and isinstance(v, dict):
                    cl[k].update(v)
                else:
                    cl[k] = v
            return json.loads(json.dumps(cl))

    # ---- cluster operations and faults
    def failover(self, to: str | None = None) -> str:
        """Move the VIP, the storage and BlueMind (bluemind.target) to `to` (default: the other node)."""
        self._meta()
        if to is not None:
            self.node(to)
        with self._store.txn() as tx:
            return bmlab.failover(tx, to)

    def fault(self, name: str, node: str | None = None, **options) -> None:
        """Switch a fault on. node=None means every node (config-drift: the last node; node-down
        needs a node). See FAULTS for the options each fault takes."""
        self._meta()
        if name == "clear":
            return self.clear_faults()
        if name not in FAULTS:
            raise LabError("unknown fault %r (faults: %s, clear)" % (name, ", ".join(sorted(FAULTS))))
        options = {k: v for k, v in options.items() if v is not None}
        bad = set(options) - FAULTS[name]
        if bad:
            raise LabError("fault %s: unknown option(s) %s (accepted: %s)" % (
                name, ", ".join(sorted(bad)), ", ".join(sorted(FAULTS[name])) or "none"))
        if node is not None:
            self.node(node)
        if name in CLUSTER_WIDE and node is not None:
            raise LabError("fault %s concerns the whole cluster; no --node" % name)
        if name in ("fail", "hang", "drop") and not options.get("command"):
            raise LabError("fault %s needs a command (e.g. command='apt-get install')" % name)
        if name == "hang" and "seconds" not in options:
            raise LabError("fault hang needs seconds")
        if name == "drop" and options.get("when", "after") not in ("before", "after"):
            raise LabError("fault drop: when must be 'before' or 'after'")
        if name == "drop":
            options.setdefault("times", 1)
        if name == "vip-move" and options.get("command"):
            options.setdefault("times", 1)
        if options.get("to") is not None:
            self.node(options["to"])
        for k in ("exit_code", "times", "pid"):
            if k in options:
                options[k] = _int(name, k, options[k])
        for k in ("seconds", "download", "install"):
            if k in options:
                options[k] = _float(name, k, options[k])
        if name == "node-down":
            if node is None:
                raise LabError("fault node-down needs a node")
            nodes = [node]
        elif name == "config-drift":
            nodes = [node or self.nodes[-1].name]
        else:
            nodes = [node] if node else [n.name for n in self.nodes]
        if name == "vip-move" and not options.get("command"):
            self.failover(options.get("to"))  # right now: a state change, not a switch
            return
        with self._store.txn() as tx:
            bmlab.set_fault(tx, name, nodes, options)
        if name == "node-down":
            self.node(node).down()

    def clear_faults(self) -> None:
        """Undo every fault: switches off, downed nodes back up, VIP single, files in sync."""
        self._meta()
        with self._store.txn() as tx:
            records = bmlab.clear_faults(tx)
        for r in records:
            if r["name"] == "node-down":
                for name in r["nodes"]:
                    self.node(name).up()


def _int(fault, key, v):
    try:
        return int(v)
    except (TypeError, ValueError):
        raise LabError("fault %s: %s must be an integer, not %r" % (fault, key, v)) from None


def _float(fault, key, v):
    try:
        return float(v)
    except (TypeError, ValueError):
        raise LabError("fault %s: %s must be a number, not %r" % (fault, key, v)) from None


def _last_log_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"


def format_status(st: dict) -> str:
    """Plain-text `lab status` (the typer CLI and `python -m bmupgrade.lab` share it)."""
    out = ["lab %s (user %s)" % (st["dir"], st["user"])]
    for n in st["nodes"]:
        v = n["versions"]
        full = v.get("bm-full")
        odd = {p: x for p, x in v.items() if x != full}
        out.append("  %-4s %-4s %s:%s pid %-7s bm-full %s%s  setup %s  bluemind.target %s%s" % (
            n["name"], "up" if n["up"] else "DOWN", n["host"], n["port"], n["pid"] or "-", full,
            (" (%s)" % ", ".join("%s=%s" % kv for kv in sorted(odd.items()))) if odd else "",
            n["setup_version"], n["services"].get("bluemind.target"),
            "".join("  %s %s" % (s.split(".")[0], x) for s, x in sorted(n["services"].items())
                    if s != "bluemind.target" and x != "active")))
    vip = st["vip"]
    out.append("  VIP %s: %s" % (st["public_ip"], ", ".join(vip) if len(vip) == 1 else
                                  ("NOBODY" if not vip else "SPLIT BRAIN (%s)" % ", ".join(vip))))
    out.append("  maintenance-mode: %s   stonith-enabled: %s   crm_* tools: %s" % (
        st["maintenance_mode"] or "unset (false)", st["stonith_enabled"] or "unset (true)",
        "real (pacemaker-cli-utils, CIB file)" if st.get("pacemaker_tools") == "real" else "lab stand-ins"))
    if st["faults"]:
        for f in st["faults"]:
            opts = " ".join("%s=%s" % kv for kv in sorted(f["options"].items()))
            out.append("  fault %s on %s %s" % (f["name"], ",".join(f["nodes"]), opts))
    else:
        out.append("  faults: none")
    out.append("  inventory: %s" % st["inventory"])
    out.append("  by hand:   %s" % st["ssh"])
    return "\n".join(out)


def usage_text(lab: Lab) -> str:
    return "\n".join([
        "lab ready in %s (started in %.2f s)" % (lab.dir, lab.startup_seconds or 0),
        "  bm1 %s:%s  bm2 %s:%s  (VIP %s on bm1)" % (lab.nodes[0].host, lab.nodes[0].port, lab.nodes[1].host,
                                                   lab.nodes[1].port, lab.public_ip),
        "  crm_*:    %s" % ("the real pacemaker-cli-utils tools on %s/cib.xml" % lab.dir
                               if lab.pacemaker_mode == "real" else
                               "lab stand-ins (apt-get install pacemaker-cli-utils for the real ones)"),
        "  by hand:  ssh -F %s bm1" % lab.ssh_config,
        "  rehearse: bmupgrade plan runbooks/bluemind-ha-pacemaker.yaml -i %s" % lab.inventory_path,
        "  stop:     bmupgrade lab down --dir %s" % lab.dir,
    ])

