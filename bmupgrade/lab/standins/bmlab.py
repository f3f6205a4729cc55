#!/usr/bin/env python3
"""bmlab: the stand-in commands of the bmupgrade lab (one multi-call script).

Installed as `<lab>/bin/bmlab` and symlinked under each command name (`apt-get`, `dpkg-query`,
`crm_attribute`, `ip`, `systemctl`, `bm-cli`, ...). sshd puts `<lab>/bin` first on PATH and sets
`BMLAB_NODE_DIR=<lab>/nodes/<name>`, which is how a call knows which simulated node it runs on
(fallback: the server address in SSH_CONNECTION, 127.0.0.11 = bm1, 127.0.0.12 = bm2).

Every call reads and changes JSON state (`<lab>/nodes/<name>/state.json`, `<lab>/cluster.json`,
all guarded by one `fcntl.flock` on `<lab>/state.lock`) and is appended to the node's ledger
(`<lab>/nodes/<name>/ledger.jsonl`). Arguments, output and exit codes follow the real tools
closely enough that real runbooks run unchanged; unknown options fail loudly with the real
tool's usage exit code.

Stdlib only, and it must not import bmupgrade: it runs under the sshd session, possibly as
another user, with the system python. The lab's Python API (bmupgrade.lab.core) loads this same
file as a module to share the state format, defaults, failover and fault logic.
"""

from __future__ import annotations

import fcntl
import os
import sys

try:  # `signal` wraps _signal in enums: importing enum costs 3 ms on every stand-in call
    import _signal as signal
except ImportError:  # pragma: no cover
    import signal
import time


# ---------------------------------------------------------------------------- JSON, cheaply
# `import json` pulls in `re` (and enum, functools, collections): 5 ms of a stand-in's ~15 ms,
# paid on every call the runbook makes. The C codec underneath (_json) needs none of it; the
# pure-Python json module is the fallback where _json is missing.
try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__
    memo: dict = {}


if _json is not None:
    _scan = _json.make_scanner(_ScanContext())
    _encoders = {sort: _json.make_encoder(None, None, _json.encode_basestring_ascii, None, ": ", ", ",
                                          sort, False, True) for sort in (False, True)}


def json_loads(text: str):
    if _json is None:
        import json
        return json.loads(text)
    end, ws = len(text), " \t\n\r"
    i = 0
    while i < end and text[i] in ws:
        i += 1
    try:
        obj, j = _scan(text, i)
    except StopIteration:
        raise ValueError("invalid JSON at character %d" % i) from None
    except SystemError:  # _json raises JSONDecodeError only once the json module is imported
        raise ValueError("invalid JSON after character %d" % i) from None
    while j < end and text[j] in ws:
        j += 1
    if j != end:
        raise ValueError("invalid JSON: extra data at character %d" % j)
    return obj


def json_dumps(obj, sort_keys: bool = False) -> str:
    """Same text as json.dumps(obj, sort_keys=...) with the default separators."""
    if _json is None:
        import json
        return json.dumps(obj, sort_keys=sort_keys)
    return "".join(_encoders[sort_keys](obj, 0))

FORMAT = 1
PUBLIC_IP = "192.0.2.10"
START_VERSION = "4.9.2"
REPO_VERSIONS = ["4.9.2", "4.9.3"]
REPO_URL = "https://pkg.bluemind.net/bm/4.9"
CLUSTER_NAME = "bmcluster"
PACEMAKER_VERSION = "2.1.5-a3f44794f94"

# bm-full is the meta-package; it pins these bm-* packages to its own version. Other bm-*
# packages are installed separately (bm-plugin-cli-setup ships `bm-cli setup`, bm-core-upgraders
# the upgraders) and depend on exactly `bm-core (= version)`: apt upgrades them with bm-core when
# their new version is in the repository, and REMOVES them when it is not.
BM_FULL = "bm-full"
PINNED = ["bm-client-access", "bm-conf", "bm-core", "bm-elasticsearch", "bm-node", "bm-webmail"]
EXTRAS = ["bm-core-upgraders", "bm-plugin-cli-setup"]  # Depends: bm-core (= same version)
BM_PACKAGES = [BM_FULL] + PINNED + EXTRAS
DESCRIPTIONS = {
    "bm-full": "BlueMind full installation (meta-package)",
    "bm-client-access": "BlueMind client access (bm-nginx configuration)",
    "bm-conf": "BlueMind configuration",
    "bm-core": "BlueMind core server",
    "bm-core-upgraders": "BlueMind data upgraders",
    "bm-elasticsearch": "BlueMind Elasticsearch",
    "bm-node": "BlueMind node agent",
    "bm-plugin-cli-setup": "BlueMind CLI: setup commands (bm-cli setup)",
    "bm-webmail": "BlueMind webmail",
}
# bm-conf's postinst runs `systemctl start bluemind.target || true` (also on the passive node:
# policy-rc.d cannot stop a direct systemctl); bm-client-access's postinst restarts bm-nginx
# under `set -e`, so a masked bm-nginx fails the package.
START_PACKAGE = "bm-conf"
NGINX_PACKAGE = "bm-client-access"
TRIGGER_PACKAGE = START_PACKAGE  # (old name)
UNITS = {
    "bluemind.target": "BlueMind",
    "bm-nginx.service": "BlueMind nginx (outside bluemind.target)",
    "cron.service": "Regular background program processing daemon",
    "keepalived.service": "LVS and VRRP High Availability Monitor",
    "pacemaker.service": "Pacemaker High Availability Cluster Manager",
    "corosync.service": "Corosync Cluster Engine",
}
BM_UNITS = ["bm-core", "bm-cyrus-imapd", "bm-elasticsearch", "bm-node", "bm-postfix", "bm-webserver"]
RESOURCES = [  # (id, agent); vip follows cluster["vip"], bluemind follows bluemind.target
    ("vip", "ocf:heartbeat:IPaddr2"),
    ("storage", "ocf:heartbeat:Filesystem"),
    ("bluemind", "systemd:bluemind.target"),
]
STALE_PLUGIN = "bluemind-connector-legacy"  # the stale-plugin fault's default: not in bm-*, not rebuilt
SYNCED_FILES = [
    "/etc/aliases",
    "/etc/aliases.db",
    "/etc/sysctl.conf",
    "/etc/ssl/certs/bm_cert.pem",
    "/var/lib/bm-ca/ca-cert.pem",
    "/usr/share/bm-elasticsearch/config/elasticsearch.yml",
]
# Also identical on both nodes (the HA guide: all of /etc); `csync2 -x` pushes these too.
SYNCED_TREES = ["/etc/apt/sources.list.d/bm.list", "/etc/bm", "/etc/nginx"]
API_TOKEN_FILE = "/etc/bm/bm-core.tok"
NGINX_VHOST = "/etc/nginx/sites-available/bm-client-access"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
KEEPALIVED_PRIORITY = {"bm1": 150, "bm2": 100}
DPKG_LOCKS = ["/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock"]
NODE_ADDR = {"bm1": "192.0.2.11", "bm2": "192.0.2.12"}  # "eth0" addresses shown by `ip`
BOOL_TRUE = {"true", "yes", "y", "on", "1"}
BOOL_FALSE = {"false", "no", "n", "off", "0"}


# --------------------------------------------------------------------------- defaults
def default_mounts() -> dict:
    def fs(fstype, source, blocks, used):
        return {"fstype": fstype, "source": source, "blocks": blocks, "bfree": blocks - used,
                "bavail": max(0, blocks - used - blocks // 20), "bsize": 4096,
                "files": blocks // 4, "ffree": blocks // 4 - used // 16}
    return {
        "/": fs("ext4", "/dev/vda1", 5242880, 1572864),
        "/var/spool/cyrus": fs("ext4", "/dev/mapper/shared-cyrus", 26214400, 7864320),
        "/var/lib/postgresql": fs("ext4", "/dev/mapper/shared-pgsql", 10485760, 3145728),
    }


def default_node_state(name: str, primary: bool) -> dict:
    return {
        "format": FORMAT,
        "name": name,
        "installed": {p: START_VERSION for p in BM_PACKAGES},
        "repo_versions": list(REPO_VERSIONS),  # what the repository serves
        "known_versions": [START_VERSION],  # what apt knows: `apt-get update` refreshes it
        "cache": [],  # downloaded archives, "pkg=version"
        "services": {
            "bluemind.target": "active" if primary else "inactive",
            "bm-nginx.service": "active" if primary else "inactive",
            "cron.service": "active",
            "keepalived.service": "active",
            "pacemaker.service": "active",
            "corosync.service": "active",
        },
        "held": [],
        "dpkg_lock": None,  # {"pid": int, "command": str, "fault": bool}
        "half_configured": [],
        "pending_install": None,  # {"pid": int, "versions": {...}} while apt-get installs
        "setup_version": START_VERSION,
        "apt_delays": {"download": 0.0, "install": 0.0},
        "mounts": default_mounts(),
        "sudo_password": None,  # None: NOPASSWD
        "sudo_lang": "en",  # the language sudo speaks on this node: en | fr (a locale-independent test)
        "faults": [],  # command faults matched on this node
        "masked": [],  # units masked with `systemctl mask --runtime` (gone at reboot)
        "pkg_versions": {},  # package -> versions the repository serves, where not repo_versions
        "core_dependents": list(EXTRAS),  # packages that depend on exactly bm-core (= version)
        "backup_running": False,  # a BlueMind DataProtect (backup) job is running
        "service_events": [],  # every start of bluemind.target / bm-nginx: {unit, by, time}
    }


def default_cluster_state(nodes: list[str]) -> dict:
    return {
        "format": FORMAT,
        "cluster_name": CLUSTER_NAME,
        "public_ip": PUBLIC_IP,
        "properties": {  # crm_config; maintenance-mode and stonith-enabled unset = defaults
            "cluster-infrastructure": "corosync",
            "cluster-name": CLUSTER_NAME,
            "dc-version": PACEMAKER_VERSION,
            "have-watchdog": "false",
        },
        "rsc_defaults": {},  # resource defaults (meta attributes), e.g. resource-stickiness
        "vip": [nodes[0]],  # node(s) holding the public IP (split brain: 2, none: [])
        "resources": {"storage": [nodes[0]]},
        "faults": [],  # every fault switched on (for status and `fault clear`)
        "last_change": time.time(),
    }


def _pem(label: str, seed: str) -> bytes:
    import base64
    import hashlib
    body = b"".join(hashlib.sha256((seed + str(i)).encode()).digest() for i in range(12))
    b64 = base64.b64encode(body).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return ("-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, "\n".join(lines), label)).encode()


def synced_file_content(path: str) -> bytes:
    """The pristine content of a synchronized config file (identical on both nodes)."""
    if path == "/etc/aliases":
        return b"# /etc/aliases (managed by BlueMind)\nmailer-daemon: postmaster\npostmaster: root\nroot: admin@example.org\n"
    if path == "/etc/aliases.db":
        return b"\x00\x06\x15\x61BDB-hash\x00" + b"postmaster\x00root\x00root\x00admin@example.org\x00" * 4
    if path == "/etc/sysctl.conf":
        return b"# BlueMind HA node\nvm.swappiness = 1\nnet.ipv4.ip_nonlocal_bind = 1\nfs.file-max = 500000\n"
    if path == "/etc/ssl/certs/bm_cert.pem":
        return _pem("PRIVATE KEY", "bm-key") + _pem("CERTIFICATE", "bm-cert")
    if path == "/var/lib/bm-ca/ca-cert.pem":
        return _pem("CERTIFICATE", "bm-ca")
    if path == "/usr/share/bm-elasticsearch/config/elasticsearch.yml":
        return b"cluster.name: bluemind\nnode.name: bluemind\npath.data: /var/spool/bm-elasticsearch/data\nnetwork.host: 127.0.0.1\n"
    raise KeyError(path)


def init_node_root(root: str) -> None:
    """Create a node's filesystem root with the synchronized files and the usual dirs."""
    name = os.path.basename(os.path.dirname(os.path.abspath(root)))
    for d in ("var/spool/cyrus/meta", "var/spool/cyrus/data", "var/cache/apt/archives/partial",
              "var/lib/dpkg", "var/lib/bmupgrade", "var/lib/postgresql", "var/lib/apt/lists",
              "etc/apt/sources.list.d", "etc/nginx/bm-local.d", "etc/nginx/sites-enabled", "etc/bm",
              "etc/keepalived", "tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for path in SYNCED_FILES:
        write_file(os.path.join(root, path.lstrip("/")), synced_file_content(path))
    for lock in DPKG_LOCKS + ["/var/cache/apt/archives/lock"]:
        write_file(os.path.join(root, lock.lstrip("/")), b"")
    write_file(os.path.join(root, "etc/apt/sources.list.d/bm.list"),
               ("deb %s bookworm main\n" % REPO_URL).encode())
    lab = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(root))))
    write_file(os.path.join(root, API_TOKEN_FILE.lstrip("/")), (lab_token(lab) + "\n").encode())
    write_file(os.path.join(root, "etc/bm/bm.ini"), b"[global]\nhost = 192.0.2.10\nexternal-url = mail.example.org\n")
    write_vhost(root, START_VERSION)
    prio = KEEPALIVED_PRIORITY.get(name, 50)
    write_file(os.path.join(root, KEEPALIVED_CONF.lstrip("/")), (
        "vrrp_script chk_bluemind {\n"
        "    # honours the maintenance file bmupgrade sets while BlueMind is upgraded\n"
        "    script \"/bin/sh -c '[ -e /etc/keepalived/bm-maintenance ] || bmctl status'\"\n"
        "    interval 5\n    fall 3\n}\n"
        "vrrp_instance VI_BM {\n    state %s\n    interface eth0\n    virtual_router_id 51\n"
        "    priority %d\n    advert_int 1\n    virtual_ipaddress {\n        %s\n    }\n"
        "    track_script {\n        chk_bluemind\n    }\n}\n"
        % ("MASTER" if prio == max(KEEPALIVED_PRIORITY.values()) else "BACKUP", prio, PUBLIC_IP)).encode())


def lab_token(lab: str) -> str:
    """The lab's BlueMind API token (the same on both nodes: /etc/bm is synchronized)."""
    import hashlib
    return hashlib.sha256(("bm-core.tok:" + os.path.abspath(lab)).encode()).hexdigest()[:32]


def write_vhost(root: str, version: str) -> None:
    """bm-client-access rewrites the nginx vhost at each update (site additions: bm-local.d)."""
    body = ("# generated by bm-client-access %s: do not edit, use /etc/nginx/bm-local.d/\n"
            "server {\n    listen 443 ssl;\n    server_name mail.example.org;\n"
            "    include /etc/nginx/bm-local.d/*.conf;\n}\n" % version).encode()
    write_file(os.path.join(root, NGINX_VHOST.lstrip("/")), body)
    link = os.path.join(root, "etc/nginx/sites-enabled/bm-client-access")
    if not os.path.lexists(link):
        os.symlink("../sites-available/bm-client-access", link)


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- state store
class Store:
    """JSON state of one lab; every change goes through `txn()` (one flock for the lab)."""

    def __init__(self, lab_dir: str):
        self.lab = os.path.abspath(lab_dir)

    def node_dir(self, name: str) -> str:
        return os.path.join(self.lab, "nodes", name)

    def node_root(self, name: str) -> str:
        return os.path.join(self.lab, "nodes", name, "root")

    def ledger_path(self, name: str) -> str:
        return os.path.join(self.lab, "nodes", name, "ledger.jsonl")

    def _read(self, path: str) -> dict:
        with open(path, encoding="utf-8") as f:
            return json_loads(f.read())

    def _write(self, path: str, data: dict) -> None:
        write_file(path, (json_dumps(data, sort_keys=True) + "\n").encode())

    def meta(self) -> dict:
        return self._read(os.path.join(self.lab, "lab.json"))

    def node_names(self) -> list[str]:
        return sorted(self.meta()["nodes"])

    def read_node(self, name: str) -> dict:
        return self._read(os.path.join(self.node_dir(name), "state.json"))

    def read_cluster(self) -> dict:
        return self._read(os.path.join(self.lab, "cluster.json"))

    def locked(self) -> "Locked":
        return Locked(os.path.join(self.lab, "state.lock"))

    def txn(self) -> "TxnScope":
        """`with store.txn() as tx:` read and change state under the lock; committed only if
        the block ends without an exception."""
        return TxnScope(self)


class suppress:
    """contextlib.suppress without importing contextlib (-3 ms on every stand-in call)."""

    def __init__(self, *exceptions):
        self.exceptions = exceptions

    def __enter__(self):
        return self

    def __exit__(self, etype, value, tb):
        return etype is not None and issubclass(etype, self.exceptions)


class Locked:
    """The lab-wide flock on state.lock (closing the fd releases it)."""

    def __init__(self, path: str):
        self.path = path
        self.fd = -1

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, etype, value, tb):
        os.close(self.fd)
        return False


class TxnScope:
    def __init__(self, store: "Store"):
        self.store = store
        self.lock = store.locked()

    def __enter__(self) -> "Txn":
        self.lock.__enter__()
        try:
            self.tx = Txn(self.store)
        except BaseException:
            self.lock.__exit__(None, None, None)
            raise
        return self.tx

    def __exit__(self, etype, value, tb):
        try:
            if etype is None:
                self.tx.commit()
        finally:
            self.lock.__exit__(None, None, None)
        return False


class Txn:
    def __init__(self, store: Store):
        self.store = store
        self._nodes: dict[str, tuple[str, dict]] = {}
        self._cluster: tuple[str, dict] | None = None

    def node(self, name: str) -> dict:
        if name not in self._nodes:
            d = self.store.read_node(name)
            self._nodes[name] = (json_dumps(d, sort_keys=True), d)
        return self._nodes[name][1]

    def cluster(self) -> dict:
        if self._cluster is None:
            d = self.store.read_cluster()
            self._cluster = (json_dumps(d, sort_keys=True), d)
        return self._cluster[1]

    def node_names(self) -> list[str]:
        return self.store.node_names()

    def commit(self) -> None:
        changed = []
        for name, (before, d) in self._nodes.items():
            if json_dumps(d, sort_keys=True) != before:
                self.store._write(os.path.join(self.store.node_dir(name), "state.json"), d)
                changed.append(name)
        if self._cluster is not None:
            before, d = self._cluster
            if json_dumps(d, sort_keys=True) != before:
                d["last_change"] = time.time()
                self.store._write(os.path.join(self.store.lab, "cluster.json"), d)
                changed = None  # the VIP may have moved: every node's answer
        if changed != []:
            refresh_fast_answers(self, changed)


# --------------------------------------------------------------------------- shared logic
def pid_alive(pid) -> bool:
    """True when pid is a live (non-zombie) process."""
    try:
        with open("/proc/%d/stat" % int(pid)) as f:
            data = f.read()
    except (OSError, ValueError, TypeError):
        return False
    return data.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def sshd_pid(store: Store, name: str) -> int | None:
    """The pid of a node's sshd listener, or None when the node is down (stale pid files ignored)."""
    try:
        with open(os.path.join(store.node_dir(name), "sshd.pid")) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmd = f.read()
    except OSError:
        return None
    cfg = os.path.join(store.node_dir(name), "sshd_config").encode()
    return pid if b"sshd" in cmd and cfg in cmd else None


def node_online(store: Store, tx: Txn, name: str) -> bool:
    """In the cluster's eyes: the machine is up (sshd runs) and pacemaker + corosync are active."""
    svc = tx.node(name)["services"]
    return (sshd_pid(store, name) is not None and svc.get("pacemaker.service") == "active"
            and svc.get("corosync.service") == "active")


def resource_nodes(tx: Txn, rid: str) -> list[str]:
    c = tx.cluster()
    if rid == "vip":
        return list(c["vip"])
    if rid == "bluemind":
        return [n for n in tx.node_names() if tx.node(n)["services"].get("bluemind.target") == "active"]
    return list(c["resources"].get(rid, []))


def failover(tx: Txn, to: str | None = None) -> str:
    """Move the VIP, the storage and BlueMind to `to` (default: away from the current holder)."""
    names = tx.node_names()
    c = tx.cluster()
    if to is None:
        current = (c["vip"] or c["resources"].get("storage") or [names[0]])[0]
        others = [n for n in names if n != current]
        to = others[0] if others else current
    if to not in names:
        raise ValueError("unknown node %r (nodes: %s)" % (to, ", ".join(names)))
    c["vip"] = [to]
    c["resources"]["storage"] = [to]
    for n in names:
        node = tx.node(n)
        if n == to and node["services"].get("bluemind.target") != "active":
            node.setdefault("service_events", []).append({"unit": "bluemind.target", "by": "failover",
                                                          "time": round(time.time(), 3), "event": "start"})
        node["services"]["bluemind.target"] = "active" if n == to else "inactive"
        node["services"]["bm-nginx.service"] = "active" if n == to else "inactive"  # in the same group
    return to


def command_matches(pattern, argv: list[str]) -> bool:
    """A fault's command matches when its first word is the command and its other words appear
    in the arguments in the same order (options in between are ignored). A word `!WORD` means
    WORD must not appear: "apt-get install !--download-only" skips the prefetch."""
    words = pattern.split() if isinstance(pattern, str) else list(pattern)
    if not words or not argv or os.path.basename(words[0]) != os.path.basename(argv[0]):
        return False
    wanted = [w for w in words[1:] if not (w.startswith("!") and len(w) > 1)]
    if any(w[1:] in argv[1:] for w in words[1:] if w.startswith("!") and len(w) > 1):
        return False
    it = iter(argv[1:])
    return all(any(w == a for a in it) for w in wanted)


def vcmp(a: str, b: str) -> int:
    """Debian version comparison (epoch:upstream-revision), returns -1, 0 or 1."""
    def split(v):
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        up, _, rev = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch or 0), up, rev

    def order(ch):
        if ch == "~":
            return -1
        if ch.isalpha():
            return ord(ch)
        return ord(ch) + 256

    def cmp_part(x, y):
        while x or y:
            nx = ""
            while x and not x[0].isdigit():
                nx, x = nx + x[0], x[1:]
            ny = ""
            while y and not y[0].isdigit():
                ny, y = ny + y[0], y[1:]
            for i in range(max(len(nx), len(ny)) + 1):
                ox = order(nx[i]) if i < len(nx) else 0
                oy = order(ny[i]) if i < len(ny) else 0
                if ox != oy:
                    return -1 if ox < oy else 1
            dx = ""
            while x and x[0].isdigit():
                dx, x = dx + x[0], x[1:]
            dy = ""
            while y and y[0].isdigit():
                dy, y = dy + y[0], y[1:]
            if int(dx or 0) != int(dy or 0):
                return -1 if int(dx or 0) < int(dy or 0) else 1
        return 0

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return cmp_part(ua, ub) or cmp_part(ra, rb)


def vmax(versions) -> str | None:
    best = None
    for v in versions:
        if best is None or vcmp(v, best) > 0:
            best = v
    return best


def broken_packages(st: dict) -> list[str]:
    """Half-configured packages, including those of an apt-get that died mid-install."""
    out = list(st.get("half_configured") or [])
    p = st.get("pending_install")
    if p and not (p.get("pid") != os.getpid() and pid_alive(p.get("pid"))):
        out += [x for x in p["versions"] if x not in out]
    return out


def lock_holder(st: dict) -> dict | None:
    h = st.get("dpkg_lock")
    if h and (h.get("fault") or (h.get("pid") != os.getpid() and pid_alive(h.get("pid")))):
        return h
    return None


def stat_fstype(fstype: str) -> str:
    return {"ext4": "ext2/ext3", "ext3": "ext2/ext3", "ext2": "ext2/ext3", "nfs4": "nfs"}.get(fstype, fstype)


def mount_for(st: dict, path: str) -> tuple[str, dict]:
    path = os.path.normpath(path)
    best = "/"
    for m in st["mounts"]:
        if (path == m or path.startswith(m.rstrip("/") + "/")) and len(m) > len(best):
            best = m
    return best, st["mounts"][best]


# --------------------------------------------------------------------------- faults (state part)
COMMAND_FAULTS = {"fail", "hang", "drop", "vip-move"}


def set_fault(tx: Txn, name: str, nodes: list[str], opts: dict) -> None:
    """Switch a fault on in the state (node-down is process control, done by the lab itself)."""
    c = tx.cluster()
    names = tx.node_names()
    record = {"name": name, "nodes": nodes, "options": dict(opts), "at": time.time()}
    if name in COMMAND_FAULTS:
        f = command_fault(name, opts)
        for n in nodes:
            tx.node(n)["faults"].append(dict(f))
    elif name == "split-brain":
        c["vip"] = list(names)
    elif name == "no-vip":
        c["vip"] = []
    elif name == "stonith-disabled":
        c["properties"]["stonith-enabled"] = "false"
    elif not set_node_fault(tx, name, nodes, opts):
        raise ValueError("unknown fault %r" % name)
    c["faults"].append(record)


def command_fault(name: str, opts: dict) -> dict:
    """The per-node record of a command fault (fail, hang, drop, vip-move), which each call matches."""
    f = {"kind": name, "command": opts.get("command"), "remaining": opts.get("times")}
    if name == "fail":
        f.update(exit_code=int(opts.get("exit_code", 1)), message=opts.get("message"))
    elif name == "hang":
        f.update(seconds=float(opts.get("seconds", 30)))
    elif name == "drop":
        f.update(when=opts.get("when", "after"))
    elif name == "vip-move":
        f.update(to=opts.get("to"))
    return f


def set_node_fault(tx: Txn, name: str, nodes: list[str], opts: dict) -> bool:
    """The node-state part of a fault, on each of `nodes`; False when `name` is not a node fault."""
    if name == "slow-apt":
        for n in nodes:
            d = tx.node(n)["apt_delays"]
            if "download" in opts:
                d["download"] = float(opts["download"])
            if "install" in opts:
                d["install"] = float(opts["install"])
    elif name == "nfs-meta":
        for n in nodes:
            tx.node(n)["mounts"]["/var/spool/cyrus/meta"] = {
                "fstype": "nfs4", "source": "nas.example.org:/export/cyrus-meta", "blocks": 26214400,
                "bfree": 20000000, "bavail": 20000000, "bsize": 4096, "files": 6553600, "ffree": 6000000}
    elif name == "config-drift":
        drift_config(tx, nodes, opts.get("file", "/etc/aliases"))
    elif name == "half-configured":
        for n in nodes:
            hc = tx.node(n)["half_configured"]
            pkg = opts.get("package", "bm-core")
            if pkg not in hc:
                hc.append(pkg)
    elif name == "dpkg-lock":
        for n in nodes:
            tx.node(n)["dpkg_lock"] = {"pid": int(opts.get("pid", 4242)),
                                       "command": opts.get("process", "unattended-upgr"), "fault": True}
    elif name == "held-package":
        for n in nodes:
            held = tx.node(n)["held"]
            if opts.get("package", "bm-core") not in held:
                held.append(opts.get("package", "bm-core"))
    elif name == "backup-running":
        for n in nodes:
            tx.node(n)["backup_running"] = True
    elif name == "stale-plugin":
        add_stale_plugin(tx, nodes, opts.get("package", STALE_PLUGIN))
    elif name == "core-starting":
        for n in nodes:
            tx.node(n)["core_starting"] = int(opts.get("times", 1))
    elif name == "node-down":
        pass  # the lab stops the node's sshd; recorded here for status and clear
    else:
        return False
    return True


def drift_config(tx: Txn, nodes: list[str], path: str) -> None:
    """config-drift: a hand edit of one synchronized file on `nodes` only (clear_faults restores it)."""
    for n in nodes:
        p = os.path.join(tx.store.node_root(n), path.lstrip("/"))
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError:
            data = b""
        write_file(p, data + ("# edited by hand on %s only\n" % n).encode())


def add_stale_plugin(tx: Txn, nodes: list[str], pkg: str) -> None:
    """stale-plugin: a package that depends on exactly bm-core and has no newer version, so an
    upgrade of bm-core removes it."""
    for n in nodes:
        st = tx.node(n)
        st["installed"][pkg] = st["installed"].get("bm-core", START_VERSION)
        st.setdefault("pkg_versions", {})[pkg] = [st["installed"][pkg]]
        if pkg not in st.setdefault("core_dependents", list(EXTRAS)):
            st["core_dependents"].append(pkg)


def clear_faults(tx: Txn) -> list[dict]:
    """Undo every fault switched on; returns the records (the lab restarts downed nodes)."""
    c = tx.cluster()
    records = list(c["faults"])
    for n in tx.node_names():
        tx.node(n)["faults"] = []
    for r in records:
        name, nodes, opts = r["name"], r["nodes"], r["options"]
        if name == "slow-apt":
            for n in nodes:
                tx.node(n)["apt_delays"] = {"download": 0.0, "install": 0.0}
        elif name in ("split-brain", "no-vip"):
            c["vip"] = list(c["resources"].get("storage") or tx.node_names()[:1])
        elif name == "stonith-disabled":
            c["properties"].pop("stonith-enabled", None)
        elif name == "nfs-meta":
            for n in nodes:
                tx.node(n)["mounts"].pop("/var/spool/cyrus/meta", None)
        elif name == "config-drift":
            path = opts.get("file", "/etc/aliases")
            for n in nodes:
                p = os.path.join(tx.store.node_root(n), path.lstrip("/"))
                try:
                    write_file(p, synced_file_content(path))
                except KeyError:  # not a known synced file: copy it from another node
                    for other in tx.node_names():
                        if other not in nodes:
                            with open(os.path.join(tx.store.node_root(other), path.lstrip("/")), "rb") as f:
                                write_file(p, f.read())
                            break
        elif name == "half-configured":
            for n in nodes:
                tx.node(n)["half_configured"] = []
                tx.node(n)["pending_install"] = None
        elif name == "dpkg-lock":
            for n in nodes:
                tx.node(n)["dpkg_lock"] = None
        elif name == "backup-running":
            for n in nodes:
                tx.node(n)["backup_running"] = False
        elif name == "stale-plugin":
            pkg = opts.get("package", STALE_PLUGIN)
            for n in nodes:
                st = tx.node(n)
                st["installed"].pop(pkg, None)
                st.get("pkg_versions", {}).pop(pkg, None)
                if pkg in st.get("core_dependents", []):
                    st["core_dependents"].remove(pkg)
        elif name == "core-starting":
            for n in nodes:
                tx.node(n).pop("core_starting", None)
        elif name == "held-package":
            for n in nodes:
                held = tx.node(n)["held"]
                if opts.get("package", "bm-core") in held:
                    held.remove(opts.get("package", "bm-core"))
    c["faults"] = []
    return records


# --------------------------------------------------------------------------- command runtime
class Exit(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class Signalled(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Ctx:
    def __init__(self, lab_dir: str, node: str, argv: list[str]):
        self.store = Store(lab_dir)
        self.lab = self.store.lab
        self.node = node
        self.node_dir = self.store.node_dir(node)
        self.root = self.store.node_root(node)
        self.argv = argv
        self.notes: dict = {}
        self.registered = False

    # output
    def out(self, text: str = "", end: str = "\n") -> None:
        sys.stdout.write(text + end)

    def err(self, text: str = "", end: str = "\n") -> None:
        sys.stderr.write(text + end)

    def die(self, code: int, msg: str | None = None):
        if msg:
            self.err(msg)
        raise Exit(code)

    # state
    def state(self) -> dict:
        return self.store.read_node(self.node)

    def txn(self):
        return self.store.txn()

    def map(self, path: str) -> str:
        """Absolute node paths live under the node's root; lab paths are left alone."""
        if os.path.isabs(path) and not (path == self.lab or path.startswith(self.lab + "/")):
            return self.root + os.path.normpath(path) if path != "/" else self.root + "/"
        return path

    def sleep(self, seconds: float) -> None:
        """Sleep, registered in <node>/run/ so `lab down` can find and stop a sleeping call."""
        if seconds <= 0:
            return
        if not self.registered:
            run = os.path.join(self.node_dir, "run")
            os.makedirs(run, exist_ok=True)
            with open(os.path.join(run, str(os.getpid())), "w") as f:
                f.write(" ".join(self.argv))
            self.registered = True
        time.sleep(seconds)

    def unregister(self) -> None:
        if self.registered:
            with suppress(OSError):
                os.unlink(os.path.join(self.node_dir, "run", str(os.getpid())))

    def other_nodes(self) -> list[str]:
        return [n for n in self.store.node_names() if n != self.node]

    def resolve_host(self, host: str) -> str | None:
        host = host.rsplit("@", 1)[-1].strip("[]")
        meta = self.store.meta()
        for n, info in meta["nodes"].items():
            if host in (n, info.get("host"), NODE_ADDR.get(n), n + ".example.org"):
                return n
        return None

    def user(self) -> str:
        try:
            import pwd
            return pwd.getpwuid(os.getuid()).pw_name
        except (KeyError, ImportError):
            return str(os.getuid())


def _getopt():
    """The getopt module without gettext: getopt imports it only to translate its messages, and
    gettext drags in `re` and `locale` (4 ms of every call that parses options)."""
    if "getopt" in sys.modules or "gettext" in sys.modules:
        import getopt
        return getopt
    stub = type(sys)("gettext")
    stub.gettext = lambda message: message
    sys.modules["gettext"] = stub
    try:
        import getopt
    finally:
        del sys.modules["gettext"]
    return getopt


def getopts(ctx: Ctx, args, short: str, long: list[str], usage):
    """GNU-style option parsing; `usage(bad_option)` prints the tool's error and raises Exit."""
    getopt = _getopt()
    try:
        return getopt.gnu_getopt(args, short, long)
    except getopt.GetoptError as e:
        usage(e.opt or e.msg, e.msg)
        raise Exit(2)


# --------------------------------------------------------------------------- apt-get
APT_LONG = ["yes", "assume-yes", "assume-no", "quiet", "simulate", "just-print", "dry-run",
            "recon", "no-act", "download-only", "allow-downgrades", "allow-change-held-packages",
            "allow-remove-essential", "no-install-recommends", "install-recommends",
            "fix-broken", "fix-missing", "reinstall", "only-upgrade", "force-yes",
            "allow-unauthenticated", "print-uris", "option=", "target-release=",
            "default-release=", "config-file=", "show-upgraded", "verbose-versions",
            "no-download", "ignore-missing", "purge", "auto-remove", "autoremove",
            "no-upgrade", "show-progress", "with-new-pkgs", "no-remove"]


def apt_usage_error(ctx, opt, _msg=None):
    opt = opt.lstrip("-")
    if len(opt) == 1:
        ctx.err("E: Command line option '%s' [from -%s] is not understood in combination with the other options." % (opt, opt))
    else:
        ctx.err("E: Command line option --%s is not understood in combination with the other options" % opt)
    raise Exit(100)


class AptOpts:
    def __init__(self):
        self.quiet = 0
        self.yes = False
        self.simulate = False
        self.download_only = False
        self.allow_downgrades = False
        self.allow_held = False
        self.no_remove = False
        self.lock_timeout = 0.0
        self.options: list[str] = []


def parse_apt(ctx: Ctx, args: list[str], tool="apt-get"):
    o = AptOpts()
    pre = []
    for a in args:  # -q=2 / --quiet=2 are not getopt-friendly
        if a.startswith("-q=") or a.startswith("--quiet="):
            try:
                o.quiet = int(a.split("=", 1)[1])
            except ValueError:
                apt_usage_error(ctx, "q")
            continue
        pre.append(a)
    opts, rest = getopts(ctx, pre, "yqsdfmVho:t:c:", APT_LONG, lambda opt, m: apt_usage_error(ctx, opt))
    for k, v in opts:
        if k in ("-y", "--yes", "--assume-yes", "--force-yes"):
            o.yes = True
        elif k in ("-q", "--quiet"):
            o.quiet += 1
        elif k in ("-s", "--simulate", "--just-print", "--dry-run", "--recon", "--no-act"):
            o.simulate = True
        elif k in ("-d", "--download-only"):
            o.download_only = True
        elif k == "--allow-downgrades":
            o.allow_downgrades = True
        elif k == "--allow-change-held-packages":
            o.allow_held = True
        elif k == "--no-remove":
            o.no_remove = True
        elif k in ("-o", "--option"):
            if "=" not in v:
                ctx.die(100, "E: Missing the equals sign in option %s" % v)
            name, val = v.split("=", 1)
            o.options.append(v)
            low = name.lower()
            if low == "dpkg::lock::timeout":
                try:
                    o.lock_timeout = float(val)
                except ValueError:
                    ctx.die(100, "E: Option %s: Configuration item specification must have an =<val>." % v)
            elif low == "apt::get::assume-yes" and val.lower() in BOOL_TRUE:
                o.yes = True
            elif low in ("apt::get::simulate",) and val.lower() in BOOL_TRUE:
                o.simulate = True
            elif low == "apt::get::download-only" and val.lower() in BOOL_TRUE:
                o.download_only = True
    if o.quiet >= 2:
        o.yes = True  # apt: -qq implies -y
    return o, rest


def cmd_apt_get(ctx: Ctx, args):
    o, rest = parse_apt(ctx, args)
    if not rest:
        ctx.out("apt 2.6.1 (amd64)\nUsage: apt-get [options] command\n       apt-get [options] install|remove pkg1 [pkg2 ...]")
        return 1
    op, pkgs = rest[0], rest[1:]
    if op == "update":
        return apt_update(ctx, o)
    if op in ("install", "upgrade", "dist-upgrade", "full-upgrade"):
        return apt_install(ctx, o, op, pkgs)
    if op in ("clean", "autoclean"):
        with ctx.txn() as tx:
            tx.node(ctx.node)["cache"] = []
        arch = os.path.join(ctx.root, "var/cache/apt/archives")
        for f in os.listdir(arch):
            if f.endswith(".deb"):
                os.unlink(os.path.join(arch, f))
        return 0
    if op == "check":
        st = ctx.state()
        if broken_packages(st):
            ctx.die(100, "E: dpkg was interrupted, you must manually run 'dpkg --configure -a' to correct the problem. ")
        if o.quiet < 2:
            ctx.out("Reading package lists...\nBuilding dependency tree...\nReading state information...")
        return 0
    ctx.die(100, "E: Invalid operation %s" % op)


def apt_update(ctx: Ctx, o: AptOpts):
    with ctx.txn() as tx:
        st = tx.node(ctx.node)
        st["known_versions"] = list(st["repo_versions"])
    if o.quiet < 2:
        ctx.out("Hit:1 http://deb.debian.org/debian bookworm InRelease")
        ctx.out("Hit:2 http://security.debian.org/debian-security bookworm-security InRelease")
        ctx.out("Get:3 %s bookworm InRelease [3,174 B]" % REPO_URL)
        ctx.out("Get:4 %s bookworm/main amd64 Packages [12.6 kB]" % REPO_URL)
        ctx.out("Fetched 15.8 kB in 0s (%s kB/s)" % "63.2")
        ctx.out("Reading package lists...")
    return 0


def pkg_size(p):
    return 1000 + 97 * len(p) * (len(p) % 7 + 3)


def pkg_names(st: dict) -> list[str]:
    """Every package name apt or dpkg knows on this node (the bm-* set plus any fault-added)."""
    return sorted(set(BM_PACKAGES) | set(st["installed"]) | set(st.get("pkg_versions") or {}))


def pkg_versions(st: dict, p: str) -> list[str]:
    """The versions of `p` apt knows (refreshed by `apt-get update`), newest first."""
    repo = (st.get("pkg_versions") or {}).get(p, st["repo_versions"])
    return sorted((v for v in st["known_versions"] if v in repo), key=_vkey, reverse=True)


def apt_candidate(st: dict, p: str) -> str | None:
    """The version apt installs for `p` when none is named: the newest it knows, the installed
    one included (apt never picks a lower version on its own)."""
    return vmax([v for v in pkg_versions(st, p)[:1] + [st["installed"].get(p)] if v])


def apt_install(ctx: Ctx, o: AptOpts, op: str, pkgs: list[str]):
    """apt-get install / upgrade / dist-upgrade / full-upgrade: resolve, show the plan, ask, then
    download, unpack and configure (one helper per phase, in the order apt runs them)."""
    st = ctx.state()
    if broken_packages(st):
        ctx.die(100, "E: dpkg was interrupted, you must manually run 'dpkg --configure -a' to correct the problem. ")
    candidate = vmax(st["known_versions"])
    requested = apt_requested(ctx, st, op, pkgs, o.quiet)
    if requested is None:
        return 0
    changes, removals, full = apt_resolve(ctx, st, op, requested, candidate)
    held_changed = [p for p in list(changes) + removals if p in st["held"]]
    if held_changed and apt_keep_held(ctx, st, op, requested, changes, held_changed, full):
        return 0
    downgrades = sorted(p for p, (old, new) in changes.items() if old and vcmp(new, old) < 0)
    if not changes and not removals:
        for p in requested:
            ctx.out("%s is already the newest version (%s)." % (p, st["installed"][p]))
        ctx.out("0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.")
        return 0
    apt_show_plan(ctx, changes, downgrades, removals, held_changed)
    if o.simulate:
        apt_simulate(ctx, st["installed"], changes, removals)
        return 0
    apt_check_allowed(ctx, o, removals, held_changed, downgrades)
    to_fetch = [p for p in sorted(changes) if "%s=%s" % (p, changes[p][1]) not in st["cache"]]
    size = sum(pkg_size(p) for p in to_fetch)
    if to_fetch:
        ctx.out("Need to get %s kB of archives." % format(size, ","))
    ctx.out("After this operation, 0 B of additional disk space will be used.")
    need_prompt = bool(set(changes) - set(requested)) or bool(downgrades) or bool(held_changed) or op != "install"
    if need_prompt and not o.yes and not apt_confirm(ctx):
        return 1
    got_lock = False
    try:
        if not o.download_only:
            apt_lock(ctx, o)
            got_lock = True
        if to_fetch:
            apt_download(ctx, st, changes, to_fetch, size)
        if o.download_only:
            ctx.out("Download complete and in download only mode")
            return 0
        apt_unpack_configure(ctx, o, st, changes, removals)
        return 0
    finally:
        if got_lock:
            apt_unlock(ctx)


def apt_requested(ctx: Ctx, st: dict, op: str, pkgs: list[str], quiet: int) -> dict | None:
    """The packages `install` names, at the version asked for or their candidate ({} for the upgrade
    operations); None when `install` names none (apt has then said there is nothing to do)."""
    installed = st["installed"]
    names = pkg_names(st)
    requested: dict[str, str] = {}
    if op == "install":
        if not pkgs:
            ctx.out("Reading package lists...") if quiet < 2 else None
            ctx.out("Building dependency tree...\nReading state information...") if quiet < 2 else None
            ctx.out("0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.")
            return None
        for spec in pkgs:
            name, _, ver = spec.partition("=")
            name = name.split("/", 1)[0]
            if quiet < 2 and not requested:
                ctx.out("Reading package lists...\nBuilding dependency tree...\nReading state information...")
            if name not in names:
                ctx.die(100, "E: Unable to locate package %s" % name)
            avail = pkg_versions(st, name)
            if ver and ver not in avail:
                ctx.die(100, "E: Version '%s' for '%s' was not found" % (ver, name))
            requested[name] = ver or (avail[0] if avail else installed.get(name))
    else:
        if quiet < 2:
            ctx.out("Reading package lists...\nBuilding dependency tree...\nReading state information...\nCalculating upgrade...")
    return requested


def apt_unmet(ctx: Ctx, lines: list[str]):
    """apt's answer to a request its resolver cannot satisfy (exit 100)."""
    ctx.out("Some packages could not be installed. This may mean that you have\nrequested an impossible situation.\n")
    ctx.out("The following packages have unmet dependencies:")
    for line in lines:
        ctx.out(line)
    ctx.die(100, "E: Unable to correct problems, you have held broken packages.")


def apt_resolve(ctx: Ctx, st: dict, op: str, requested: dict,
                candidate: str | None) -> tuple[dict, list[str], str | None]:
    """The resolver: bm-full depends on PINNED (= its own version); core_dependents need bm-core
    (= their version) and are removed when no version of theirs fits. Returns (changes: package
    -> (old, new), removals, bm-full's target version).

    As real apt: a dependency not named on the command line goes to its candidate (the newest
    version), never down; `install bm-full=OLD` alone at a newer version is refused (unmet
    dependencies), the whole set must be named."""
    installed = st["installed"]
    targets = dict(installed)
    full = requested.get(BM_FULL, candidate if op != "install" else installed.get(BM_FULL))
    if op != "install":
        for p in [BM_FULL] + PINNED:
            targets[p] = full
    elif BM_FULL in requested:
        targets[BM_FULL] = full
        unmet = []
        for p in (p for p in PINNED if p not in requested and installed.get(p) != full):
            cand = apt_candidate(st, p)
            if cand == full:
                targets[p] = full
            else:
                unmet.append(" %s : Depends: %s (= %s) but %s" % (
                    BM_FULL, p, full, "%s is to be installed" % cand if cand else "it is not installable"))
        if unmet:
            apt_unmet(ctx, unmet)
    dependents = [d for d in st.get("core_dependents", EXTRAS) if d in installed]
    for p, v in requested.items():
        if p in PINNED and v != full:
            apt_unmet(ctx, [" %s : Depends: %s (= %s) but %s is to be installed" % (BM_FULL, p, full, v)])
        targets[p] = v
    core = targets.get("bm-core")
    if op != "install":  # upgrade: every dependent to its candidate
        for d in dependents:
            if pkg_versions(st, d):
                targets[d] = pkg_versions(st, d)[0]
    removals = []
    for d in dependents:
        if targets.get(d) == core:
            continue
        if d in requested:
            apt_unmet(ctx, [" %s : Depends: bm-core (= %s) but %s is to be installed" % (d, targets[d], core)])
        if apt_candidate(st, d) == core:
            targets[d] = core  # its candidate fits
        else:
            removals.append(d)  # no version of d fits the new bm-core: apt removes it
            targets.pop(d)
    changes = {p: (installed.get(p), v) for p, v in targets.items() if installed.get(p) != v}
    return changes, removals, full


def apt_keep_held(ctx: Ctx, st: dict, op: str, requested: dict, changes: dict, held_changed: list[str],
                  full: str | None) -> bool:
    """Held packages the plan would change: an upgrade keeps everything back (True: apt is done);
    an install that changes held packages it was not asked for has unmet dependencies."""
    not_asked = [p for p in held_changed if p not in requested]
    if not_asked or op != "install":
        if op != "install":
            ctx.out("The following packages have been kept back:\n  %s" % " ".join(sorted(changes)))
            ctx.out("0 upgraded, 0 newly installed, 0 to remove and %d not upgraded." % len(changes))
            return True
        apt_unmet(ctx, [" %s : Depends: %s (= %s) but %s is to be installed" % (BM_FULL, p, full, st["installed"].get(p))
                        for p in not_asked])
    return False


def apt_show_plan(ctx: Ctx, changes: dict, downgrades: list[str], removals: list[str], held_changed: list[str]):
    """The plan apt prints before it asks: removed, upgraded, downgraded and held packages, and the counts."""
    upgrades = sorted(p for p in changes if p not in downgrades)
    if removals:
        ctx.out("The following packages will be REMOVED:\n  %s" % " ".join(sorted(removals)))
    if upgrades:
        ctx.out("The following packages will be upgraded:\n  %s" % " ".join(upgrades))
    if downgrades:
        ctx.out("The following packages will be DOWNGRADED:\n  %s" % " ".join(downgrades))
    if held_changed:
        ctx.out("The following held packages will be changed:\n  %s" % " ".join(sorted(held_changed)))
    ctx.out("%d upgraded, 0 newly installed, %d downgraded, %d to remove and 0 not upgraded."
            % (len(upgrades), len(downgrades), len(removals)))


def apt_simulate(ctx: Ctx, installed: dict, changes: dict, removals: list[str]):
    """-s: the Remv / Inst / Conf lines of the plan, nothing changed."""
    for p in sorted(removals):
        ctx.out("Remv %s [%s]" % (p, installed[p]))
    for p in sorted(changes):
        old, new = changes[p]
        ctx.out("Inst %s [%s] (%s BlueMind:4.9/bookworm [all])" % (p, old, new))
    for p in sorted(changes):
        ctx.out("Conf %s (%s BlueMind:4.9/bookworm [all])" % (p, changes[p][1]))


def apt_check_allowed(ctx: Ctx, o: AptOpts, removals: list[str], held_changed: list[str], downgrades: list[str]):
    """apt's refusals: removals under --no-remove, held or downgraded packages under -y without
    the option that allows them (exit 100)."""
    if removals and o.no_remove:
        ctx.die(100, "E: Packages need to be removed but remove is disabled.")
    if held_changed and o.yes and not o.allow_held:
        ctx.die(100, "E: Held packages were changed and -y was used without --allow-change-held-packages.")
    if downgrades and o.yes and not o.allow_downgrades:
        ctx.die(100, "E: Packages were downgraded and -y was used without --allow-downgrades.")


def apt_confirm(ctx: Ctx) -> bool:
    """apt's prompt, answered on stdin: False (after "Abort.") unless the answer is yes."""
    ctx.out("Do you want to continue? [Y/n] ", end="")
    sys.stdout.flush()
    answer = sys.stdin.readline()
    if not answer or answer.strip().lower() not in ("", "y", "yes"):
        ctx.out("Abort.")
        return False
    return True


def apt_download(ctx: Ctx, st: dict, changes: dict, to_fetch: list[str], size: int):
    """Fetch the archives not in the cache yet (slowed by the slow-apt fault), into the cache."""
    for i, p in enumerate(to_fetch, 1):
        ctx.out("Get:%d %s bookworm/main amd64 %s all %s [%s kB]" % (i, REPO_URL, p, changes[p][1], format(pkg_size(p), ",")))
    sys.stdout.flush()
    ctx.sleep(float(st["apt_delays"].get("download", 0)))
    with ctx.txn() as tx:
        cache = tx.node(ctx.node)["cache"]
        for p in to_fetch:
            key = "%s=%s" % (p, changes[p][1])
            if key not in cache:
                cache.append(key)
    for p in to_fetch:
        write_file(os.path.join(ctx.root, "var/cache/apt/archives/%s_%s_all.deb" % (p, changes[p][1])), b"!<arch>\n")
    ctx.out("Fetched %s kB in 0s (%s kB/s)" % (format(size, ","), format(size * 4, ",")))


def apt_unpack_configure(ctx: Ctx, o: AptOpts, st: dict, changes: dict, removals: list[str]):
    """Unpack, remove and configure (the maintainer scripts: postinst). pending_install marks the
    packages half-installed meanwhile, so an apt-get killed here leaves them broken, as dpkg does."""
    installed = st["installed"]
    with ctx.txn() as tx:
        tx.node(ctx.node)["pending_install"] = {"pid": os.getpid(), "versions": {p: changes[p][1] for p in changes}}
    if o.quiet < 1:
        ctx.out("(Reading database ... 61234 files and directories currently installed.)")
    for p in sorted(changes):
        old, new = changes[p]
        ctx.out("Preparing to unpack .../%s_%s_all.deb ..." % (p, new))
        ctx.out("Unpacking %s (%s) over (%s) ..." % (p, new, old))
    sys.stdout.flush()
    ctx.sleep(float(st["apt_delays"].get("install", 0)))
    if removals:
        for p in sorted(removals):
            ctx.out("Removing %s (%s) ..." % (p, installed[p]))
    with ctx.txn() as tx:
        node = tx.node(ctx.node)
        node["installed"].update({p: changes[p][1] for p in changes})
        for p in removals:
            node["installed"].pop(p, None)
        node["pending_install"] = None
        effects = postinst(ctx, tx, node, changes)
    if removals:
        ctx.notes["removed"] = sorted(removals)
    for p in sorted(changes):
        ctx.out("Setting up %s (%s) ..." % (p, changes[p][1]))
        for line in effects.get(p, []):
            ctx.out(line)
    if effects.get("failed"):
        ctx.err("dpkg: error processing package %s (--configure):\n installed %s package post-installation "
                "script subprocess returned error exit status 1" % (NGINX_PACKAGE, NGINX_PACKAGE))
        ctx.err("Errors were encountered while processing:\n %s" % NGINX_PACKAGE)
        ctx.die(100, "E: Sub-process /usr/bin/dpkg returned an error code (1)")


def service_start(ctx: Ctx, node: dict, unit: str, by: str) -> bool:
    """Start `unit` on `node` (in a txn) unless it is masked; record the start. False if masked."""
    if unit in (node.get("masked") or []):
        return False
    if node["services"].get(unit) != "active":
        node.setdefault("service_events", []).append({"unit": unit, "by": by, "time": round(time.time(), 3),
                                                      "event": "start"})
    node["services"][unit] = "active"
    return True


def postinst(ctx: Ctx, tx: "Txn", node: dict, changes: dict) -> dict:
    """What the maintainer scripts of the changed packages do (inside the install's txn):
    bm-conf starts bluemind.target (`|| true`: a masked target is skipped), bm-client-access
    rewrites the nginx vhost and restarts bm-nginx under `set -e` (masked: the package fails)."""
    effects: dict = {}
    if START_PACKAGE in changes:
        by = "%s postinst" % START_PACKAGE
        if service_start(ctx, node, "bluemind.target", by):
            effects[START_PACKAGE] = ["Starting bluemind.target (%s)..." % by]
            ctx.notes["trigger"] = "bluemind.target started"
        else:
            effects[START_PACKAGE] = ["Failed to start bluemind.target: Unit bluemind.target is masked."]
            ctx.notes["trigger"] = "bluemind.target masked: not started"
    if NGINX_PACKAGE in changes:
        write_vhost(ctx.root, changes[NGINX_PACKAGE][1])
        if service_start(ctx, node, "bm-nginx.service", "%s postinst" % NGINX_PACKAGE):
            effects[NGINX_PACKAGE] = ["Restarting bm-nginx.service (%s postinst)..." % NGINX_PACKAGE]
        else:
            effects[NGINX_PACKAGE] = ["Failed to restart bm-nginx.service: Unit bm-nginx.service is masked."]
            hc = node.setdefault("half_configured", [])
            if NGINX_PACKAGE not in hc:
                hc.append(NGINX_PACKAGE)
            effects["failed"] = True
    return effects


def apt_lock(ctx: Ctx, o: AptOpts):
    deadline = time.time() + o.lock_timeout
    waited = False
    while True:
        with ctx.txn() as tx:
            st = tx.node(ctx.node)
            holder = lock_holder(st)
            if holder is None:
                st["dpkg_lock"] = {"pid": os.getpid(), "command": "apt-get", "fault": False}
                return
        msg = "Could not get lock /var/lib/dpkg/lock-frontend. It is held by process %d (%s)" % (holder["pid"], holder["command"])
        if time.time() >= deadline:
            if waited:
                ctx.err("")
            ctx.err("E: " + msg)
            ctx.err("N: Be aware that removing the lock file is not a solution and may break your system.")
            ctx.die(100, "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another process using it?")
        if not waited:
            ctx.err("Waiting for cache lock: %s..." % msg)
            waited = True
        ctx.sleep(min(0.5, max(0.05, deadline - time.time())))


def apt_unlock(ctx: Ctx):
    with ctx.txn() as tx:
        st = tx.node(ctx.node)
        h = st.get("dpkg_lock")
        if h and not h.get("fault") and h.get("pid") == os.getpid():
            st["dpkg_lock"] = None


# --------------------------------------------------------------------------- apt-cache / apt-mark
def cmd_apt_cache(ctx: Ctx, args):
    o, rest = parse_apt(ctx, args, "apt-cache")
    if not rest:
        ctx.out("apt 2.6.1 (amd64)\nUsage: apt-cache [options] command")
        return 1
    op, pkgs = rest[0], rest[1:]
    st = ctx.state()
    names = pkg_names(st)
    if op == "policy":
        if not pkgs:
            ctx.out("Package files:\n 100 /var/lib/dpkg/status\n     release a=now")
            ctx.out(" 500 %s bookworm/main amd64 Packages\n     release o=BlueMind,a=bookworm,n=bookworm,c=main,b=amd64" % REPO_URL)
            ctx.out("Pinned packages:")
            return 0
        for p in pkgs:
            if p not in names:
                ctx.err("N: Unable to locate package %s" % p)
                continue
            known = pkg_versions(st, p)
            inst = st["installed"].get(p)
            ctx.out("%s:\n  Installed: %s\n  Candidate: %s\n  Version table:" % (p, inst or "(none)", known[0] if known else "(none)"))
            versions = sorted(set(known) | ({inst} if inst else set()), key=_vkey, reverse=True)
            for v in versions:
                ctx.out(" %s %s %d" % ("***" if v == inst else "   ", v, 500 if v in known else 100))
                if v in known:
                    ctx.out("        500 %s bookworm/main amd64 Packages" % REPO_URL)
                if v == inst:
                    ctx.out("        100 /var/lib/dpkg/status")
        return 0
    if op == "madison":
        for p in pkgs:
            if p not in names:
                ctx.err("N: Unable to locate package %s" % p)
                continue
            for v in pkg_versions(st, p):
                ctx.out("%10s | %10s | %s bookworm/main amd64 Packages" % (p, v, REPO_URL))
        return 0
    if op == "show":
        # like apt: PKG=VERSION with an unknown VERSION prints nothing and still exits 0
        if not pkgs or any(spec.partition("=")[0] not in names for spec in pkgs):
            ctx.die(100, "E: No packages found")
        for spec in pkgs:
            p, _, want = spec.partition("=")
            for v in pkg_versions(st, p):
                if want and v != want:
                    continue
                dep = ""
                if p == BM_FULL:
                    dep = "Depends: %s\n" % ", ".join("%s (= %s)" % (x, v) for x in PINNED)
                elif p in st.get("core_dependents", EXTRAS):
                    dep = "Depends: bm-core (= %s)\n" % v
                ctx.out("Package: %s\nVersion: %s\nPriority: optional\nSection: misc\nMaintainer: BlueMind "
                        "<contact@bluemind.net>\nArchitecture: all\n%sFilename: pool/main/b/%s/%s_%s_all.deb\n"
                        "Size: %d\nDescription: %s\n" % (p, v, dep, p, p, v, pkg_size(p) * 1000, DESCRIPTIONS.get(p, p)))
        return 0
    ctx.die(100, "E: Invalid operation %s" % op)


def _vkey(v):
    import functools
    return functools.cmp_to_key(vcmp)(v)


def cmd_apt_mark(ctx: Ctx, args):
    opts, rest = getopts(ctx, args, "qsf:", ["quiet", "simulate", "file="], lambda opt, m: apt_usage_error(ctx, opt))
    if not rest:
        ctx.out("apt 2.6.1 (amd64)\nUsage: apt-mark [options] {auto|manual} pkg1 [pkg2 ...]")
        return 1
    op, pkgs = rest[0], rest[1:]
    if op == "showhold":
        for p in sorted(ctx.state()["held"]):
            ctx.out(p)
        return 0
    if op in ("hold", "unhold"):
        if not pkgs:
            ctx.die(100, "E: No packages found")
        with ctx.txn() as tx:
            held = tx.node(ctx.node)["held"]
            for p in pkgs:
                if p not in pkg_names(tx.node(ctx.node)):
                    ctx.die(100, "E: Unable to locate package %s" % p)
            for p in pkgs:
                if op == "hold":
                    if p in held:
                        ctx.out("%s was already set on hold." % p)
                    else:
                        held.append(p)
                        ctx.out("%s set on hold." % p)
                else:
                    if p in held:
                        held.remove(p)
                        ctx.out("Canceled hold on %s." % p)
                    else:
                        ctx.out("%s was already not on hold." % p)
        return 0
    if op in ("showmanual", "showauto"):
        if op == "showmanual":
            ctx.out(BM_FULL)
        else:
            for p in PINNED:
                ctx.out(p)
        return 0
    ctx.die(100, "E: Invalid operation %s" % op)


# --------------------------------------------------------------------------- dpkg-query / dpkg
def dpkg_fields(st, p):
    v = st["installed"].get(p)
    broken = p in broken_packages(st)
    status = "install ok half-configured" if broken else "install ok installed"
    want = "h" if p in st["held"] else "i"
    if p in st["held"]:
        status = status.replace("install", "hold", 1)
    return {"Package": p, "binary:Package": p, "Version": v or "", "Status": status,
            "db:Status-Abbrev": want + ("F" if broken else "i") + " ", "Architecture": "all",
            "Maintainer": "BlueMind <contact@bluemind.net>", "Description": DESCRIPTIONS.get(p, ""),
            "db:Status-Status": "half-configured" if broken else "installed", "Section": "misc",
            "Priority": "optional", "Installed-Size": str(pkg_size(p) * 3)}


def format_fields(fmt: str, fields: dict) -> str:
    """dpkg-query's --showformat: ${field} and ${field;width}. No `re`: importing it costs a
    stand-in call 3 ms, and dpkg-query runs in every package verify."""
    fmt = fmt.replace("\\n", "\n").replace("\\t", "\t").replace("\\\\", "\\")
    out, i = [], 0
    while True:
        start = fmt.find("${", i)
        end = fmt.find("}", start + 2) if start >= 0 else -1
        if end < 0:
            out.append(fmt[i:])
            return "".join(out)
        if end == start + 2:  # "${}" is not a field
            out.append(fmt[i:end + 1])
            i = end + 1
            continue
        name, _, width = fmt[start + 2:end].partition(";")
        val = fields.get(name, "")
        if width:
            w = int(width)
            val = val.rjust(-w) if w < 0 else val.ljust(w)
        out += [fmt[i:start], val]
        i = end + 1


def _glob_match(name: str, pattern: str) -> bool:
    if not any(c in pattern for c in "*?["):
        return name == pattern  # the usual case: fnmatch would import `re` for nothing
    import fnmatch
    return fnmatch.fnmatchcase(name, pattern)


def dpkg_query_usage(ctx, opt, msg=None, prog="dpkg-query"):
    ctx.err("%s: error: unknown option %s\n\nUse --help for help about querying packages." % (prog, opt if opt.startswith("-") else ("-" + opt if len(opt) == 1 else "--" + opt)))
    raise Exit(2)


def cmd_dpkg_query(ctx: Ctx, args, prog="dpkg-query"):
    # dpkg's own parser accepts -f=FORMAT (the '=' is not part of the value)
    args = [x for a in args for x in (["-f", a[3:]] if a.startswith("-f=") else [a])]
    opts, rest = getopts(ctx, args, "Wf:slLS", ["show", "showformat=", "status", "list", "listfiles", "search", "admindir=", "no-pager"],
                         lambda opt, m: dpkg_query_usage(ctx, opt, m, prog))
    action, fmt = None, "${binary:Package}\t${Version}\n"
    for k, v in opts:
        if k in ("-W", "--show"):
            action = "show"
        elif k in ("-f", "--showformat"):
            fmt = v
        elif k in ("-s", "--status"):
            action = "status"
        elif k in ("-l", "--list"):
            action = "list"
        elif k in ("-L", "--listfiles", "-S", "--search"):
            ctx.die(2, "%s: error: %s is not supported in the bmupgrade lab" % (prog, k))
    if action is None:
        ctx.die(2, "%s: error: need an action option\n\nUse --help for help about querying packages." % prog)
    st = ctx.state()
    patterns = rest or (["*"] if action in ("show", "list") else [])
    if not patterns:
        ctx.die(2, "%s: error: --%s needs at least one package name argument" % (prog, action))
    code = 0
    matched_any = []
    for pat in patterns:
        found = [p for p in sorted(st["installed"]) if _glob_match(p, pat)]
        if not found:
            if action == "status":
                ctx.err("dpkg-query: package '%s' is not installed and no information is available" % pat)
            else:
                ctx.err("dpkg-query: no packages found matching %s" % pat)
            code = 1
        matched_any += [p for p in found if p not in matched_any]
    if action == "show":
        for p in matched_any:
            sys.stdout.write(format_fields(fmt, dpkg_fields(st, p)))
    elif action == "status":
        for p in matched_any:
            f = dpkg_fields(st, p)
            ctx.out("Package: %s\nStatus: %s\nPriority: optional\nSection: misc\nMaintainer: %s\nArchitecture: all\nVersion: %s\nDescription: %s\n"
                    % (p, f["Status"], f["Maintainer"], f["Version"], f["Description"]))
    elif action == "list" and matched_any:
        ctx.out("Desired=Unknown/Install/Remove/Purge/Hold\n| Status=Not/Inst/Conf-files/Unpacked/halF-conf/Half-inst/trig-aWait/Trig-pend\n|/ Err?=(none)/Reinst-required (Status,Err: uppercase=bad)")
        ctx.out("||/ %-20s %-12s %-12s %s" % ("Name", "Version", "Architecture", "Description"))
        ctx.out("+++-%s-%s-%s-%s" % ("=" * 20, "=" * 12, "=" * 12, "=" * 40))
        for p in matched_any:
            f = dpkg_fields(st, p)
            ctx.out("%-3s %-20s %-12s %-12s %s" % (f["db:Status-Abbrev"].strip(), p, f["Version"], "all", f["Description"]))
    return code


DPKG_RELATIONS = {"lt": lambda c: c < 0, "le": lambda c: c <= 0, "eq": lambda c: c == 0, "ne": lambda c: c != 0,
                  "ge": lambda c: c >= 0, "gt": lambda c: c > 0, "<<": lambda c: c < 0, "<=": lambda c: c <= 0,
                  "=": lambda c: c == 0, ">=": lambda c: c >= 0, ">>": lambda c: c > 0}


def cmd_dpkg(ctx: Ctx, args):
    if args and args[0] == "--compare-versions":  # exit 0 when the relation holds, 1 when not
        if len(args) != 4:
            ctx.die(2, "dpkg: error: --compare-versions takes three arguments: <version> <relation> <version>\n\n"
                       "Type dpkg --help for help about installing and deinstalling packages [*];")
        a, rel, b = args[1:]
        if rel not in DPKG_RELATIONS:
            ctx.die(2, "dpkg: error: --compare-versions bad relation\n\n"
                       "Type dpkg --help for help about installing and deinstalling packages [*];")
        for v in (a, b):
            if v and not v[0].isdigit() and ":" not in v:
                ctx.err("dpkg: warning: version '%s' has bad syntax: version number does not start with digit" % v)
        return 0 if DPKG_RELATIONS[rel](vcmp(a or "", b or "")) else 1
    if any(a in ("-W", "--show", "-s", "--status", "-l", "--list", "-L", "-S") or a.startswith("--showformat") for a in args):
        return cmd_dpkg_query(ctx, args, "dpkg")
    opts, rest = getopts(ctx, args, "Ca", ["audit", "configure", "pending", "force-confold", "force-confdef", "force-all", "no-triggers"],
                         lambda opt, m: dpkg_query_usage(ctx, opt, m, "dpkg"))
    keys = [k for k, _ in opts]
    if "-C" in keys or "--audit" in keys:
        st = ctx.state()
        broken = broken_packages(st)
        if not broken:
            return 0
        ctx.out("The following packages are only half configured, probably due to problems\nconfiguring them the first time.  The configuration should be retried using\ndpkg --configure <package> or the configure menu option in dselect:")
        for p in broken:
            ctx.out(" %-20s %s" % (p, DESCRIPTIONS.get(p, "")))
        return 1
    if "--configure" in keys:
        if not ("-a" in keys or "--pending" in keys or rest):
            ctx.die(2, "dpkg: error: --configure needs at least one package name argument\n\nType dpkg --help for help about installing and deinstalling packages [*];")
        with ctx.txn() as tx:
            st = tx.node(ctx.node)
            holder = lock_holder(st)
            if holder:
                ctx.die(2, "dpkg: error: dpkg frontend lock was locked by another process with pid %d\nNote: removing the lock file is always wrong, and can end up damaging the\nlocked area and the entire system. See <https://wiki.debian.org/Teams/Dpkg/FAQ#db-lock>." % holder["pid"])
            broken = broken_packages(st)
            pending = st.get("pending_install")
            if pending and pending.get("pid") != os.getpid() and not pid_alive(pending.get("pid")):
                st["installed"].update(pending["versions"])
                postinst(ctx, tx, st, {p: (None, v) for p, v in pending["versions"].items()})
                st["pending_install"] = None
            targets = broken if not rest else [p for p in broken if p in rest]
            st["half_configured"] = [p for p in st["half_configured"] if p not in targets]
            for p in targets:
                ctx.out("Setting up %s (%s) ..." % (p, st["installed"].get(p)))
        return 0
    ctx.die(2, "dpkg: error: need an action option\n\nType dpkg --help for help about installing and deinstalling packages [*];")


# --------------------------------------------------------------------------- pacemaker
def cib_unavailable(ctx: Ctx, prog: str):
    st = ctx.state()["services"]
    if st.get("pacemaker.service") != "active" or st.get("corosync.service") != "active":
        if prog == "crm_mon":
            ctx.die(102, "crm_mon: Error: cluster is not available on this node")
        if prog == "pcs":
            ctx.die(1, "Error: unable to get cib\nError: error running crm_mon, is pacemaker running?")
        ctx.die(102, "Could not connect to the CIB: Transport endpoint is not connected\n%s: Error signing on to the CIB service: Transport endpoint is not connected" % prog)


def pcmk_usage(ctx, prog, opt, msg=None):
    ctx.err("%s: %s\n\nUsage:\n  %s [OPTION?]\n" % (prog, "Unknown option %s" % (opt if str(opt).startswith("-") else ("-" + opt if len(opt) == 1 else "--" + opt)), prog))
    raise Exit(64)


# --------------------------------------------------------------------------- real pacemaker tools
# Where pacemaker-cli-utils is installed, `lab up` (pacemaker="auto") records "real" in lab.json
# and crm_attribute / crm_resource / crm_mon run the real binaries against a CIB file
# (CIB_file=<lab>/cib.xml) rendered from the lab's state just before the call; what
# crm_attribute writes to the crm_config properties is read back into the state. The lab's
# JSON stays the one source of truth, so faults, failover, pcs and the other stand-ins agree
# with what the real tools show. Other CIB writes (constraints from crm_resource --move, ...)
# are not carried over.
PCMK_TOOLS = ("crm_attribute", "crm_resource", "crm_mon")
PCMK_SBIN = "/usr/sbin"
CIB_FEATURE_SET = "3.0.14"  # old enough for every Pacemaker 2.x (a newer one is refused)
CIB_SCHEMA = "pacemaker-3.0"
FENCE_DEVICE = ("fence-bm", "stonith", None, "fence_ipmilan")


def real_pacemaker_available() -> bool:
    return all(os.access(os.path.join(PCMK_SBIN, t), os.X_OK) for t in PCMK_TOOLS)


def _agent_parts(agent: str) -> tuple[str, str | None, str]:
    parts = agent.split(":")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else (parts[0], None, parts[1])


def quoteattr(data: str) -> str:
    """xml.sax.saxutils.quoteattr, which a stand-in cannot afford: importing it pulls in
    urllib.request, http.client and email (~50 ms on every crm_* call)."""
    data = data.replace("&", "&amp;").replace(">", "&gt;").replace("<", "&lt;")
    data = data.replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    if '"' not in data:
        return '"%s"' % data
    if "'" not in data:
        return "'%s'" % data
    return '"%s"' % data.replace('"', "&quot;")


def spawn(argv: list[str], env: dict | None = None, *, capture: bool = False, stdin_null: bool = False):
    """Run `argv` (PATH searched) and wait: its exit code (-N for signal N, as subprocess), and
    with `capture` its stdout and stderr bytes (kept in memfds: no pipe to drain). Not the
    subprocess module, which costs ~20 ms to import on every stand-in call that runs a tool."""
    sys.stdout.flush()
    sys.stderr.flush()
    actions, outs = [], []
    if stdin_null:
        actions.append((os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0))
    if capture:
        outs = [os.memfd_create("bmlab-out"), os.memfd_create("bmlab-err")]
        actions += [(os.POSIX_SPAWN_DUP2, outs[0], 1), (os.POSIX_SPAWN_DUP2, outs[1], 2)]
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ if env is None else env, file_actions=actions)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if not capture:
            return code
        return (code,) + tuple(os.pread(fd, os.fstat(fd).st_size, 0) for fd in outs)
    finally:
        for fd in outs:
            os.close(fd)


def render_cib(v: dict) -> str:
    """A CIB (validates against pacemaker-3.0) for the cluster view `v` (see cluster_view)."""
    q = quoteattr
    ids = {n: i for i, n in enumerate(v["names"], 1)}
    dc = v["dc"]
    out = ['<cib crm_feature_set="%s" validate-with="%s" epoch="1" num_updates="0" admin_epoch="0" '
           'cib-last-written=%s update-origin=%s update-client="cibadmin" update-user="root" have-quorum="%d"%s>'
           % (CIB_FEATURE_SET, CIB_SCHEMA, q(time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(v["last_change"]))),
              q(dc or v["names"][0]), 1 if len(v["online"]) * 2 > len(v["names"]) else 0,
              ' dc-uuid="%d"' % ids[dc] if dc else ""),
           "  <configuration>", "    <crm_config>", '      <cluster_property_set id="cib-bootstrap-options">']
    for name, value in sorted(v["props"].items()):
        out.append('        <nvpair id=%s name=%s value=%s/>' % (q("cib-bootstrap-options-" + name), q(name), q(str(value))))
    out += ["      </cluster_property_set>", "    </crm_config>"]
    if v.get("rsc_defaults"):
        out += ["    <rsc_defaults>", '      <meta_attributes id="rsc-options">']
        out += ['        <nvpair id=%s name=%s value=%s/>' % (q("rsc-options-" + k), q(k), q(str(val)))
                for k, val in sorted(v["rsc_defaults"].items())]
        out += ["      </meta_attributes>", "    </rsc_defaults>"]
    out += ["    <nodes>"]
    out += ['      <node id="%d" uname=%s/>' % (ids[n], q(n)) for n in v["names"]]
    out += ["    </nodes>", "    <resources>"]
    resources = [(r, *_agent_parts(a), where) for r, a, where in v["resources"]]
    resources.append((*FENCE_DEVICE, [dc] if dc else []))
    agent = {rid: 'id=%s class=%s%s type=%s' % (q(rid), q(cls), " provider=%s" % q(provider) if provider else "", q(typ))
             for rid, cls, provider, typ, _ in resources}
    out += ['      <primitive %s/>' % agent[rid] for rid, *_ in resources]
    out += ["    </resources>", "    <constraints/>", "  </configuration>", "  <status>"]
    call = 10
    for n in v["names"]:
        if n not in v["online"]:
            out.append('    <node_state id="%d" uname=%s in_ccm="false" crmd="offline" join="down" expected="down"/>'
                       % (ids[n], q(n)))
            continue
        out += ['    <node_state id="%d" uname=%s in_ccm="true" crmd="online" crm-debug-origin="do_update_resource" '
                'join="member" expected="member">' % (ids[n], q(n)), '      <lrm id="%d">' % ids[n], "        <lrm_resources>"]
        for rid, *_, where in resources:
            if n not in where:
                continue
            call += 1
            key = "%d:1:0:00000000-0000-4000-8000-000000000000" % call
            out += ['          <lrm_resource %s>' % agent[rid],
                    '            <lrm_rsc_op id=%s operation_key=%s operation="start" crm-debug-origin="do_update_resource" '
                    'crm_feature_set="%s" transition-key="%s" transition-magic="0:0;%s" exit-reason="" on_node=%s '
                    'call-id="%d" rc-code="0" op-status="0" interval="0" last-rc-change="%d" exec-time="10" queue-time="0"/>'
                    % (q(rid + "_last_0"), q(rid + "_start_0"), CIB_FEATURE_SET, key, key, q(n), call,
                       int(v["last_change"])),
                    "          </lrm_resource>"]
        out += ["        </lrm_resources>", "      </lrm>", "    </node_state>"]
    out += ["  </status>", "</cib>", ""]
    return "\n".join(out)


CIB_SECTIONS = {"crm_config": ("./configuration/crm_config", "cluster_property_set", "cib-bootstrap-options"),
                "rsc_defaults": ("./configuration/rsc_defaults", "meta_attributes", "rsc-options")}


def cib_nvpairs(root, section: str) -> dict:
    where, tag, set_id = CIB_SECTIONS[section]
    return {nv.get("name"): nv.get("value") for ps in root.iterfind("%s/%s" % (where, tag))
            if ps.get("id") == set_id for nv in ps.iterfind("nvpair")}


def cib_properties(path: str) -> dict:
    """The crm_config properties (cib-bootstrap-options) of a CIB file."""
    import xml.etree.ElementTree as ET
    return cib_nvpairs(ET.parse(path).getroot(), "crm_config")


def cib_file_attribute(ctx: Ctx, path: str, typ: str, op: str, name: str, value, quiet: bool, default) -> int:
    """crm_attribute on a CIB file named by CIB_file (e.g. a copy for a crm_simulate preview)."""
    import xml.etree.ElementTree as ET
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        ctx.die(102, "crm_attribute: Could not connect to the CIB: Transport endpoint is not connected\n"
                     "crm_attribute: Error signing on to the CIB service: Transport endpoint is not connected")
    root = tree.getroot()
    where, tag, set_id = CIB_SECTIONS[typ]
    parent = root.find(where)
    if parent is None:
        parent = ET.SubElement(root.find("./configuration"), where.rsplit("/", 1)[1])
    nvset = next((ps for ps in parent.iterfind(tag) if ps.get("id") == set_id), None)
    if nvset is None:
        nvset = ET.SubElement(parent, tag, {"id": set_id})
    pair = next((nv for nv in nvset.iterfind("nvpair") if nv.get("name") == name), None)
    if op == "query":
        val = pair.get("value") if pair is not None else default
        if val is None:
            ctx.die(105, "crm_attribute: Error performing operation: No such device or address")
        ctx.out(val if quiet else "scope=%s  name=%s value=%s" % (typ, name, val))
        return 0
    if op == "update":
        if pair is None:
            pair = ET.SubElement(nvset, "nvpair", {"id": "%s-%s" % (set_id, name), "name": name})
        pair.set("value", value)
    elif pair is not None:
        nvset.remove(pair)
        if not quiet:
            ctx.out("Deleted %s option: id=%s-%s name=%s" % (typ, set_id, name, name))
    tree.write(path)
    return 0


def run_real_pacemaker(ctx: Ctx, prog: str, args: list[str]) -> int:
    """Run the real `prog` on a CIB file rendered from the lab's state (see above)."""
    cib_unavailable(ctx, prog)
    path = os.path.join(ctx.store.lab, "cib.xml")
    with ctx.txn() as tx:
        cib = render_cib(cluster_view(ctx, tx)).encode()
        write_file(path, cib)
        code, out, err = spawn([os.path.join(PCMK_SBIN, prog)] + list(args), dict(os.environ, CIB_file=path),
                               capture=True, stdin_null=True)
        # Read back what crm_attribute wrote (a query leaves the file as it was: no XML parser,
        # ~20 ms, needed); Txn.commit writes the state only if it changed
        if prog == "crm_attribute" and code == 0 and read_file(path) != cib:
            import xml.etree.ElementTree as ET
            root = ET.parse(path).getroot()
            tx.cluster()["properties"] = cib_nvpairs(root, "crm_config")
            tx.cluster()["rsc_defaults"] = cib_nvpairs(root, "rsc_defaults")
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.buffer.write(err)
    sys.stderr.flush()
    return code


def uses_real_pacemaker(ctx: Ctx) -> bool:
    return ctx.store.meta().get("pacemaker") == "real"


def user_cib_file(ctx: Ctx) -> str | None:
    """CIB_file set by the caller (a CIB copy, e.g. for a crm_simulate preview), mapped to the node."""
    f = os.environ.get("CIB_file")
    return ctx.map(f) if f else None


def run_real_on_file(ctx: Ctx, prog: str, args: list[str], path: str) -> int:
    return spawn([os.path.join(PCMK_SBIN, prog)] + list(args), dict(os.environ, CIB_file=path), stdin_null=True)


def cmd_crm_attribute(ctx: Ctx, args):
    if user_cib_file(ctx):
        ctx.notes["cib_file"] = os.environ["CIB_file"]  # a CIB copy, not the cluster's
    # Pacemaker 2.1.5's crm_attribute maps the host name to a cluster node before touching
    # rsc_defaults, which a CIB file of another host cannot do: the stand-in answers those
    if uses_real_pacemaker(ctx) and "rsc_defaults" not in args:
        if user_cib_file(ctx):
            return run_real_on_file(ctx, "crm_attribute", args, user_cib_file(ctx))
        return run_real_pacemaker(ctx, "crm_attribute", args)
    typ, name, op, value, quiet, default, node = crm_attribute_opts(ctx, args)
    if typ not in ("crm_config", "rsc_defaults") or node:
        ctx.die(64, "crm_attribute: only --type crm_config and rsc_defaults are simulated in the bmupgrade lab")
    if user_cib_file(ctx) and name:
        return cib_file_attribute(ctx, user_cib_file(ctx), typ, op, name, value, quiet, default)
    # without --name, as Pacemaker 2.1 does: a query lists every property, an update is an
    # internal error, a delete a usage error
    if not name and op == "delete":
        ctx.die(64, "crm_attribute: Error: must specify attribute name or pattern to delete")
    if not name and op == "update":
        ctx.die(70, "crm_attribute: Error performing operation: Invalid argument")
    cib_unavailable(ctx, "crm_attribute")
    with ctx.txn() as tx:
        props = tx.cluster()["properties"] if typ == "crm_config" else tx.cluster().setdefault("rsc_defaults", {})
        if not name:
            for key, val in sorted(props.items()):
                ctx.out(val if quiet else "scope=crm_config  name=%s value=%s" % (key, val))
        elif op == "query":
            val = props.get(name, default)
            if val is None:
                ctx.die(105, "crm_attribute: Error performing operation: No such device or address")
            ctx.out(val if quiet else "scope=%s  name=%s value=%s" % (typ, name, val))
        elif op == "update":
            props[name] = value
        else:
            if name in props:
                del props[name]
                if not quiet:
                    ctx.out("Deleted %s option: id=%s-%s name=%s" % (typ, CIB_SECTIONS[typ][2], name, name))
    return 0


def crm_attribute_opts(ctx: Ctx, args) -> tuple:
    """crm_attribute's options, as (type, name, operation, value, quiet, default, node); an
    unknown option or a stray argument is Pacemaker's usage error."""
    opts, rest = getopts(ctx, args, "t:n:Gv:Dqd:l:N:s:i:VUz", [
        "type=", "name=", "query", "update=", "delete", "quiet", "default=", "lifetime=", "node=",
        "set-name=", "id=", "verbose", "utilization", "quiet"], lambda opt, m: pcmk_usage(ctx, "crm_attribute", opt))
    typ, name, op, value, quiet, default, node = "crm_config", None, "query", None, False, None, None
    for k, v in opts:
        if k in ("-t", "--type", "-l", "--lifetime"):
            typ = v
        elif k in ("-n", "--name"):
            name = v
        elif k in ("-G", "--query"):
            op = "query"
        elif k in ("-v", "--update"):
            op, value = "update", v
        elif k in ("-D", "--delete"):
            op = "delete"
        elif k in ("-q", "--quiet"):
            quiet = True
        elif k in ("-d", "--default"):
            default = v
        elif k in ("-N", "--node"):
            node = v
    if rest:
        pcmk_usage(ctx, "crm_attribute", rest[0])
    return typ, name, op, value, quiet, default, node


CONTROLLER_OPS = ("--refresh", "-R", "--cleanup", "-C", "--wait")


def crm_resource_controller(ctx: Ctx, args) -> int:
    """--refresh / --cleanup / --wait talk to the controller (pacemaker-controld), which a CIB file
    does not have: simulated in both lab modes."""
    opts, rest = getopts(ctx, args, "r:RCN:VQ", ["resource=", "refresh", "cleanup", "wait", "timeout=", "node=",
                                                 "verbose", "quiet", "force"],
                         lambda opt, m: pcmk_usage(ctx, "crm_resource", opt))
    if rest:
        pcmk_usage(ctx, "crm_resource", rest[0])
    keys = [k for k, _ in opts]
    rid = next((v for k, v in opts if k in ("-r", "--resource")), None)
    cib_unavailable(ctx, "crm_resource")
    with ctx.txn() as tx:
        if rid and rid not in dict(RESOURCES):
            ctx.die(105, "crm_resource: Resource '%s' not found\nError performing operation: No such object" % rid)
        c = tx.cluster()
        if "--refresh" in keys or "-R" in keys:
            c["probed"] = round(time.time(), 3)  # re-probe: the lab's resource state is always current
            ctx.out("Waiting for 1 reply from the controller\n... got reply (done)")
        if "--cleanup" in keys or "-C" in keys:
            c["failcounts"] = {}
            ctx.out("Cleaned up %s on all nodes" % ("%s" % rid if rid else "all resources"))
        if "--wait" in keys:
            pass  # the lab's cluster is always settled (a `hang`/`fail` fault can say otherwise)
    return 0


def cmd_crm_resource(ctx: Ctx, args):
    if any(a in CONTROLLER_OPS for a in args):
        return crm_resource_controller(ctx, args)
    if uses_real_pacemaker(ctx):
        return run_real_pacemaker(ctx, "crm_resource", args)
    opts, rest = getopts(ctx, args, "r:WQlLN:Vt:MU", ["resource=", "locate", "quiet", "list", "list-raw", "list-cts",
                                                      "node=", "verbose", "resource-type=", "move", "clear"],
                         lambda opt, m: pcmk_usage(ctx, "crm_resource", opt))
    rid, op, quiet, node = None, None, False, None
    for k, v in opts:
        if k in ("-r", "--resource"):
            rid = v
        elif k in ("-W", "--locate"):
            op = "locate"
        elif k in ("-Q", "--quiet"):
            quiet = True
        elif k in ("-l", "--list-raw", "-L", "--list"):
            op = "list"
        elif k in ("-M", "--move"):
            op = "move"
        elif k in ("-U", "--clear"):
            op = "clear"
        elif k in ("-N", "--node"):
            node = v
    if rest:
        pcmk_usage(ctx, "crm_resource", rest[0])
    if op is None:
        ctx.die(64, "crm_resource: No command specified (e.g. --locate, --list)")
    cib_unavailable(ctx, "crm_resource")
    with ctx.txn() as tx:
        if op == "list":
            for r, agent in RESOURCES:
                where = resource_nodes(tx, r)
                ctx.out("  * %s\t(%s):\t %s" % (r, agent, _started(where)))
            return 0
        if not rid:
            ctx.die(64, "crm_resource: Must supply a resource id with -r")
        if rid not in dict(RESOURCES):
            ctx.die(105, "crm_resource: Resource '%s' not found\nError performing operation: No such object" % rid)
        if op in ("move", "clear"):
            return crm_resource_move(ctx, tx, rid, op, node)
        where = resource_nodes(tx, rid)
    if not where and not quiet:
        ctx.err("resource %s is NOT running" % rid)
    for n in where:
        ctx.out(n if quiet else "resource %s is running on: %s" % (rid, n))
    return 0


def crm_resource_move(ctx: Ctx, tx: Txn, rid: str, op: str, node: str | None) -> int:
    """--move --node N (as Pacemaker 2.1: rc 108 when already there; a cli-prefer constraint
    that moves the whole group unless in maintenance mode) and --clear (removes it)."""
    c = tx.cluster()
    moves = c.setdefault("moves", {})
    if op == "clear":
        if moves.pop(rid, None):
            ctx.out("Removing constraint: cli-prefer-%s" % rid)
        return 0
    names = tx.node_names()
    where = resource_nodes(tx, rid)
    if node is None:
        others = [n for n in names if n not in where]
        if len(where) != 1 or not others:
            ctx.die(64, "crm_resource: Resource '%s' not moved: active in %d locations." % (rid, len(where)))
        node = others[0]
    if node not in names:
        ctx.die(105, "crm_resource: Node '%s' not found\nError performing operation: No such object" % node)
    if where == [node]:
        ctx.die(108, "crm_resource: Error performing operation: Requested item already exists")
    moves[rid] = node
    if str(c["properties"].get("maintenance-mode", "false")).lower() not in BOOL_TRUE:
        failover(tx, node)
    return 0


def _started(where):
    if not where:
        return "Stopped"
    if len(where) == 1:
        return "Started %s" % where[0]
    return "Started [ %s ]" % " ".join(where)


def cluster_view(ctx: Ctx, tx: Txn) -> dict:
    c = tx.cluster()
    names = tx.node_names()
    online = [n for n in names if node_online(ctx.store, tx, n)]
    props = c["properties"]
    maint = str(props.get("maintenance-mode", "false")).lower() in BOOL_TRUE
    stonith = str(props.get("stonith-enabled", "true")).lower() in BOOL_TRUE
    return {"names": names, "online": online, "dc": online[0] if online else None, "maintenance": maint,
            "stonith": stonith, "resources": [(r, a, resource_nodes(tx, r)) for r, a in RESOURCES],
            "last_change": c.get("last_change", time.time()), "props": props,
            "rsc_defaults": c.get("rsc_defaults") or {}}


def crm_mon_text(ctx: Ctx, v: dict, full_header=True) -> list[str]:
    lines = []
    ts = time.strftime("%a %b %d %H:%M:%S %Y")
    lc = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(v["last_change"]))
    lines.append("Cluster Summary:")
    lines.append("  * Stack: corosync")
    if v["dc"]:
        lines.append("  * Current DC: %s (version %s) - partition with quorum" % (v["dc"], PACEMAKER_VERSION))
    else:
        lines.append("  * Current DC: NONE")
    lines.append("  * Last updated: %s" % ts)
    lines.append("  * Last change:  %s by root via cibadmin on %s" % (lc, ctx.node))
    lines.append("  * %d nodes configured" % len(v["names"]))
    lines.append("  * %d resource instances configured" % len(RESOURCES))
    if v["maintenance"]:
        lines.append("")
        lines.append("              *** Resource management is DISABLED ***")
        lines.append("  The cluster will not attempt to start, stop or recover services")
    lines.append("")
    lines.append("Node List:")
    if v["online"]:
        lines.append("  * Online: [ %s ]" % " ".join(v["online"]))
    offline = [n for n in v["names"] if n not in v["online"]]
    if offline:
        lines.append("  * OFFLINE: [ %s ]" % " ".join(offline))
    lines.append("")
    lines.append("Full List of Resources:")
    for r, agent, where in v["resources"]:
        suffix = " (unmanaged)" if v["maintenance"] else ""
        lines.append("  * %s\t(%s):\t %s%s" % (r, agent, _started(where), suffix))
    return lines


def crm_mon_xml(ctx: Ctx, v: dict, request: str) -> str:
    q = quoteattr
    b = lambda x: "true" if x else "false"  # noqa: E731
    out = ['<?xml version="1.0"?>', '<pacemaker-result api-version="2.25" request=%s>' % q(request), "  <summary>",
           '    <stack type="corosync"/>']
    if v["dc"]:
        out.append('    <current_dc present="true" version="%s" name="%s" id="%d" with_quorum="true"/>'
                   % (PACEMAKER_VERSION, v["dc"], v["names"].index(v["dc"]) + 1))
    else:
        out.append('    <current_dc present="false"/>')
    out.append('    <last_update time=%s/>' % q(time.strftime("%a %b %d %H:%M:%S %Y")))
    out.append('    <last_change time=%s user="root" client="cibadmin" origin=%s/>'
               % (q(time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(v["last_change"]))), q(ctx.node)))
    out.append('    <nodes_configured number="%d"/>' % len(v["names"]))
    out.append('    <resources_configured number="%d" disabled="0" blocked="0"/>' % len(RESOURCES))
    out.append('    <cluster_options stonith-enabled="%s" symmetric-cluster="true" no-quorum-policy="stop" '
               'maintenance-mode="%s" stop-all-resources="false" stonith-timeout-ms="60000" priority-fencing-delay-ms="0"/>'
               % (b(v["stonith"]), b(v["maintenance"])))
    out.append("  </summary>")
    out.append("  <nodes>")
    for i, n in enumerate(v["names"], 1):
        running = sum(1 for _, _, w in v["resources"] if n in w)
        out.append('    <node name="%s" id="%d" online="%s" standby="false" standby_onfail="false" maintenance="false" '
                   'pending="false" unclean="false" shutdown="false" expected_up="true" is_dc="%s" resources_running="%d" type="member"/>'
                   % (n, i, b(n in v["online"]), b(n == v["dc"]), running))
    out.append("  </nodes>")
    out.append("  <resources>")
    for r, agent, where in v["resources"]:
        out.append('    <resource id="%s" resource_agent="%s" role="%s" active="%s" orphaned="false" blocked="false" '
                   'maintenance="%s" managed="%s" failed="false" failure_ignored="false" nodes_running_on="%d"%s>'
                   % (r, agent, "Started" if where else "Stopped", b(where), b(v["maintenance"]), b(not v["maintenance"]),
                      len(where), "" if where else "/"))
        if where:
            for n in where:
                out.append('      <node name="%s" id="%d" cached="true"/>' % (n, v["names"].index(n) + 1))
            out.append("    </resource>")
    out.append("  </resources>")
    out.append('  <status code="0" message="OK"/>')
    out.append("</pacemaker-result>")
    return "\n".join(out)


def cmd_crm_mon(ctx: Ctx, args):
    if uses_real_pacemaker(ctx):
        return run_real_pacemaker(ctx, "crm_mon", args)
    opts, rest = getopts(ctx, args, "1rfAnXsDQ", ["one-shot", "inactive", "failcounts", "show-node-attributes",
                                                 "group-by-node", "output-as=", "as-xml", "simple-status",
                                                 "hide-headers", "quiet", "include=", "exclude="],
                         lambda opt, m: pcmk_usage(ctx, "crm_mon", opt))
    one, fmt, simple = False, "text", False
    for k, v in opts:
        if k in ("-1", "--one-shot"):
            one = True
        elif k == "--output-as":
            if v not in ("text", "xml"):
                ctx.die(64, "crm_mon: Error parsing option --output-as: unsupported format '%s'" % v)
            fmt = v
        elif k in ("-X", "--as-xml"):
            fmt = "xml"
        elif k in ("-s", "--simple-status"):
            simple, one = True, True
    if rest:
        pcmk_usage(ctx, "crm_mon", rest[0])
    if not one and os.isatty(1):  # not on a terminal, the real crm_mon prints once and exits
        ctx.die(64, "crm_mon: only one-shot mode (-1) is simulated in the bmupgrade lab")
    cib_unavailable(ctx, "crm_mon")
    with ctx.txn() as tx:
        v = cluster_view(ctx, tx)
    if simple:
        offline = len(v["names"]) - len(v["online"])
        if offline:
            ctx.out("CLUSTER WARN: offline node: %s" % ", ".join(n for n in v["names"] if n not in v["online"]))
            return 1
        ctx.out("CLUSTER OK: %d nodes online, %d resource instances configured" % (len(v["online"]), len(RESOURCES)))
        return 0
    if fmt == "xml":
        ctx.out(crm_mon_xml(ctx, v, " ".join(["crm_mon"] + args)))
    else:
        ctx.out("\n".join(crm_mon_text(ctx, v)))
    return 0


def cmd_cibadmin(ctx: Ctx, args):
    """cibadmin --query (the whole CIB as XML): the CIB rendered from the lab's state."""
    opts, rest = getopts(ctx, args, "QlV", ["query", "local", "verbose", "scope=", "no-children"],
                         lambda opt, m: pcmk_usage(ctx, "cibadmin", opt))
    if rest or not any(k in ("-Q", "--query") for k, _ in opts):
        ctx.die(64, "cibadmin: the bmupgrade lab simulates only cibadmin --query")
    if user_cib_file(ctx):
        with open(user_cib_file(ctx)) as f:
            ctx.out(f.read().rstrip("\n"))
        return 0
    cib_unavailable(ctx, "cibadmin")
    with ctx.txn() as tx:
        ctx.out(render_cib(cluster_view(ctx, tx)).rstrip("\n"))
    return 0


def cmd_crm_simulate(ctx: Ctx, args):
    """crm_simulate --xml-file FILE --simulate|--run: the transition Pacemaker would run for that CIB
    (a stand-in in both lab modes: the lab's CIB has no constraints or operation digests, so the
    real tool would restart everything). Clearing maintenance-mode: multiply active resources are
    stopped on all but one node, stopped ones started; nothing else moves."""
    import xml.etree.ElementTree as ET
    opts, rest = getopts(ctx, args, "x:SRLQVps", ["xml-file=", "simulate", "run", "live-check", "quiet", "verbose",
                                                  "xml-pipe", "show-scores"],
                         lambda opt, m: pcmk_usage(ctx, "crm_simulate", opt))
    keys = {k: v for k, v in opts}
    if rest:
        pcmk_usage(ctx, "crm_simulate", rest[0])
    if not ({"-S", "--simulate", "-R", "--run"} & set(keys)):
        ctx.die(64, "crm_simulate: the bmupgrade lab simulates only --run and --simulate")
    src = keys.get("-x") or keys.get("--xml-file")
    if src:
        try:
            root = ET.parse(ctx.map(src)).getroot()
        except (OSError, ET.ParseError) as e:
            ctx.die(66, "crm_simulate: Could not read input file %s: %s" % (src, e))
    else:
        cib_unavailable(ctx, "crm_simulate")
        with ctx.txn() as tx:
            root = ET.fromstring(render_cib(cluster_view(ctx, tx)))
    props = cib_nvpairs(root, "crm_config")
    maint = str(props.get("maintenance-mode", "false")).lower() in BOOL_TRUE
    online = [ns.get("uname") for ns in root.iterfind("./status/node_state") if ns.get("crmd") == "online"]
    rsc = [(p.get("id"), "%s:%s%s" % (p.get("class"), (p.get("provider") + ":") if p.get("provider") else "",
                                        p.get("type"))) for p in root.iterfind("./configuration/resources/primitive")]
    where = {r: [ns.get("uname") for ns in root.iterfind("./status/node_state")
                 for lr in ns.iterfind("./lrm/lrm_resources/lrm_resource") if lr.get("id") == r] for r, _ in rsc}

    def listing(w):
        lines = ["  * Node List:", "    * Online: [ %s ]" % " ".join(online), "", "  * Full List of Resources:"]
        for r, agent in rsc:
            lines.append("    * %s\t(%s):\t %s%s" % (r, agent, _started(w[r]), " (unmanaged)" if maint else ""))
        return lines
    summary, actions, after = [], [], {r: list(w) for r, w in where.items()}
    if not maint:
        for r, _ in rsc:
            if len(where[r]) > 1:
                for n in where[r][1:]:
                    summary.append("  * Stop       %-11s (%11s )  due to multiply active" % (r, n))
                    actions.append("  * Resource action: %-15s stop on %s" % (r, n))
                after[r] = where[r][:1]
            elif not where[r] and online:
                summary.append("  * Start      %-11s (%11s )" % (r, online[0]))
                actions.append("  * Resource action: %-15s start on %s" % (r, online[0]))
                after[r] = online[:1]
    out = ["Current cluster status:"] + listing(where) + ["", "Transition Summary:"] + summary
    if "-S" in keys or "--simulate" in keys:
        out += ["", "Executing Cluster Transition:"] + actions + ["", "Revised Cluster Status:"] + listing(after)
    ctx.out("\n".join(out))
    return 0


PCS_PROPERTIES = {"maintenance-mode": "bool", "stonith-enabled": "bool", "symmetric-cluster": "bool",
                  "stop-all-resources": "bool", "start-failure-is-fatal": "bool", "no-quorum-policy": "str",
                  "stonith-timeout": "str", "cluster-recheck-interval": "str", "batch-limit": "str",
                  "priority-fencing-delay": "str", "cluster-name": "ro", "dc-version": "ro",
                  "cluster-infrastructure": "ro", "have-watchdog": "ro"}


def cmd_pcs(ctx: Ctx, args):
    force = "--force" in args
    args = [a for a in args if a not in ("--force", "--debug", "--full", "--all")]
    for a in args:
        if a.startswith("-") and a not in ("--defaults",):
            ctx.die(1, "Error: unknown option '%s'\nUsage: pcs [-f file] [-h] [commands]..." % a)
    if not args:
        ctx.die(1, "\nUsage: pcs [-f file] [-h] [commands]...\nControl and configure pacemaker and corosync.")
    cmd, sub = args[0], args[1:]
    if cmd == "status":
        return pcs_status(ctx, sub)
    if cmd != "property":
        ctx.die(1, "Error: the bmupgrade lab simulates only 'pcs property' and 'pcs status' (got 'pcs %s')" % cmd)
    if not sub:
        sub = ["config"]
    op, rest = sub[0], sub[1:]
    cib_unavailable(ctx, "pcs")
    with ctx.txn() as tx:
        props = tx.cluster()["properties"]
        if op in ("config", "show", "list"):
            ctx.out("Cluster Properties: cib-bootstrap-options")
            for k in sorted(props):
                if not rest or k in rest:
                    ctx.out("  %s=%s" % (k, props[k]))
            return 0
        if op == "set":
            pcs_property_set(ctx, props, rest, force)
            return 0
        if op in ("unset", "delete"):
            for k in rest:
                if k not in props and not force:
                    ctx.die(1, "Error: Cannot remove property '%s', it is not present in property set 'cib-bootstrap-options', use --force to override" % k)
                props.pop(k, None)
            return 0
    ctx.die(1, "Error: unknown command 'pcs property %s'" % op)


def pcs_status(ctx: Ctx, sub: list[str]) -> int:
    """pcs status [cluster|resources|nodes]: crm_mon's text under the cluster name (and the daemons)."""
    if sub and sub[0] not in ("cluster", "resources", "nodes"):
        ctx.die(1, "Error: unknown command 'pcs status %s'" % sub[0])
    cib_unavailable(ctx, "pcs")
    with ctx.txn() as tx:
        v = cluster_view(ctx, tx)
    ctx.out("Cluster name: %s" % CLUSTER_NAME)
    ctx.out("\n".join(crm_mon_text(ctx, v)))
    if not sub:
        ctx.out("\nDaemon Status:\n  corosync: active/enabled\n  pacemaker: active/enabled\n  pcsd: active/enabled")
    return 0


def pcs_property_set(ctx: Ctx, props: dict, rest: list[str], force: bool) -> None:
    """pcs property set NAME=VALUE...: every item is checked before any is set (an empty value
    unsets); unknown names need --force, cluster-managed ones cannot be set."""
    if not rest:
        ctx.die(1, "\nUsage: pcs property set <property>=[<value>] ...")
    changes = {}
    for item in rest:
        if "=" not in item:
            ctx.die(1, "Error: missing value of '%s' option" % item)
        k, val = item.split("=", 1)
        kind = PCS_PROPERTIES.get(k)
        if kind is None and not force:
            ctx.die(1, "Error: invalid cluster property: '%s', use --force to override\nError: Errors have occurred, therefore pcs is unable to continue" % k)
        if kind == "ro":
            ctx.die(1, "Error: cannot set property '%s', it is managed by the cluster" % k)
        if kind == "bool" and val and val.lower() not in BOOL_TRUE | BOOL_FALSE:
            ctx.die(1, "Error: '%s' is not a valid %s value, use '0', '1', 'false', 'n', 'no', 'off', 'on', 'true', 'y', 'yes', use --force to override\nError: Errors have occurred, therefore pcs is unable to continue" % (val, k))
        changes[k] = val
    for k, val in changes.items():
        if val == "":
            props.pop(k, None)
        else:
            props[k] = val


# --------------------------------------------------------------------------- ip / systemctl / bmctl
def ip_interfaces(ctx: Ctx, tx: Txn) -> list[dict]:
    return node_interfaces(tx, ctx.node)


def node_interfaces(tx: Txn, node: str) -> list[dict]:
    c = tx.cluster()
    eth = [(NODE_ADDR.get(node, "192.0.2.99"), 24, "global")]
    if node in c["vip"]:
        eth.append((c["public_ip"], 32, "global"))
    mac = "52:54:00:00:00:%02x" % (tx.node_names().index(node) + 0x11)
    return [{"ifindex": 1, "ifname": "lo", "flags": "<LOOPBACK,UP,LOWER_UP>", "mtu": 65536,
             "link": "link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00",
             "addrs": [("inet", "127.0.0.1", 8, "host"), ("inet6", "::1", 128, "host")]},
            {"ifindex": 2, "ifname": "eth0", "flags": "<BROADCAST,MULTICAST,UP,LOWER_UP>", "mtu": 1500,
             "link": "link/ether %s brd ff:ff:ff:ff:ff:ff" % mac,
             "addrs": [("inet", a, p, s) for a, p, s in eth] + [("inet6", "fe80::5054:ff:fe00:%x" % int(mac[-2:], 16), 64, "link")]}]


def ipaddress():
    import ipaddress as module
    return module


def _plain_ipv4(text: str) -> str | None:
    """`ip addr show to 192.0.2.10` (the VIP probe, the commonest call in a run) without importing
    ipaddress: a dotted quad is a /32, matched by equality."""
    parts = text.split(".")
    if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) <= 255 and (p == "0" or p[0] != "0")
                               for p in parts):
        return text
    return None


def _address_in(address: str, to) -> bool:
    if isinstance(to, str):
        return address == to
    ip = ipaddress().ip_address(address)
    return ip.version == to.version and ip in to


def cmd_ip(ctx: Ctx, args):
    args = list(args)
    oneline, family, js = ip_options(ctx, args)
    if not args:
        ctx.die(255, "Usage: ip [ OPTIONS ] OBJECT { COMMAND | help }")
    obj = args.pop(0)
    if not "address".startswith(obj) or len(obj) < 1:
        if obj in ("link", "route", "r", "l", "neigh"):
            ctx.die(255, 'the bmupgrade lab simulates only "ip addr"')
        ctx.die(255, 'Object "%s" is unknown, try "ip help".' % obj)
    verb = args.pop(0) if args else "show"
    if verb not in ("show", "list", "lst", "ls", "sh", "s", "l"):
        ctx.die(255, 'Command "%s" is unknown, try "ip address help".' % verb)
    dev, to = ip_selectors(ctx, args)
    with ctx.txn() as tx:
        ifaces = ip_interfaces(ctx, tx)
    if dev and dev not in [i["ifname"] for i in ifaces]:
        ctx.die(1, 'Device "%s" does not exist.' % dev)
    result = []
    for i in ifaces:
        if dev and i["ifname"] != dev:
            continue
        addrs = []
        for fam, a, plen, scope in i["addrs"]:
            if family and fam != family:
                continue
            if to is not None and not _address_in(a, to):
                continue
            addrs.append((fam, a, plen, scope))
        if to is not None and not addrs:
            continue
        result.append((i, addrs))
    ip_show(ctx, result, oneline, js)
    return 0


def ip_options(ctx: Ctx, args: list[str]) -> tuple[bool, str | None, bool]:
    """ip's global options (taken off the front of `args`): (oneline, family, json)."""
    oneline, family, js = False, None, False
    while args and args[0].startswith("-"):
        a = args.pop(0)
        if a in ("-o", "-oneline"):
            oneline = True
        elif a in ("-4", "-6"):
            family = "inet" if a == "-4" else "inet6"
        elif a in ("-j", "-json"):
            js = True
        elif a in ("-p", "-pretty", "-c", "-color", "-br", "-brief", "-s", "-stats"):
            pass
        elif a.startswith("-f") and args:
            family = {"inet": "inet", "inet6": "inet6"}.get(args.pop(0))
        else:
            ctx.die(255, 'Option "%s" is unknown, try "ip -help".' % a)
    return oneline, family, js


def ip_selectors(ctx: Ctx, args: list[str]) -> tuple:
    """The selectors of `ip addr show` (consumes `args`): (dev, to); `to` is a dotted quad or an
    ipaddress network (imported only for a prefix: the VIP probe stays cheap)."""
    dev, to = None, None
    while args:
        a = args.pop(0)
        if a == "dev" and args:
            dev = args.pop(0)
        elif a == "to" and args:
            try:
                to = _plain_ipv4(args[0]) or ipaddress().ip_network(args[0], strict=False)
                args.pop(0)
            except ValueError as e:
                ctx.die(1, 'Error: any valid prefix is expected rather than "%s".' % str(e).split("'")[1] if "'" in str(e) else 'Error: any valid prefix is expected.')
        elif a in ("up", "primary", "secondary", "permanent", "dynamic"):
            pass
        elif a == "scope" and args:
            args.pop(0)
        elif dev is None:
            dev = a
        else:
            ctx.die(255, 'Error: either "dev" is duplicate, or "%s" is a garbage.' % a)
    return dev, to


def ip_show(ctx: Ctx, result: list[tuple], oneline: bool, js: bool) -> None:
    """Print the selected interfaces and addresses as `ip` does: JSON, one line each, or in full."""
    if js:
        data = [{"ifindex": i["ifindex"], "ifname": i["ifname"], "mtu": i["mtu"], "operstate": "UP" if i["ifindex"] > 1 else "UNKNOWN",
                 "addr_info": [{"family": f, "local": a, "prefixlen": p, "scope": s, "label": i["ifname"],
                                "valid_life_time": 4294967295, "preferred_life_time": 4294967295}
                               for f, a, p, s in addrs]} for i, addrs in result]
        ctx.out(json_dumps(data))
        return
    for i, addrs in result:
        if oneline:
            for addr in addrs:
                ctx.out(oneline_address(i, addr))
        else:
            ctx.out("%d: %s: %s mtu %d qdisc noqueue state UP group default qlen 1000" % (i["ifindex"], i["ifname"], i["flags"], i["mtu"]))
            ctx.out("    " + i["link"])
            for f, a, p, s in addrs:
                ctx.out("    %s %s/%d scope %s%s" % (f, a, p, s, (" " + i["ifname"]) if f == "inet" else ""))
                ctx.out("       valid_lft forever preferred_lft forever")


def oneline_address(i: dict, addr: tuple) -> str:
    f, a, p, s = addr
    label = (" " + i["ifname"]) if f == "inet" else ""
    return ("%d: %-6s %s %s/%d scope %s%s\\       valid_lft forever preferred_lft forever"
            % (i["ifindex"], i["ifname"], f, a, p, s, label))


# `ip`'s fast path (bin/ip, a bash script: FAST_IP). The VIP probe `ip -o addr show to VIP` is
# most of a run's stand-in calls (~130 of ~150 for the bundled runbook); answered by bash instead
# of a Python start, a lab run costs a third less CPU and the HA window's probes ~7 ms less each.
# The answer is kept per node in `<node>/fast/ip-to-VIP`, rewritten under the lab's lock by every
# state change (Txn.commit) and absent while the node has any fault set (faults need Python).
def refresh_fast_answers(tx: Txn, nodes: list[str] | None = None) -> None:
    """The kept answer of `nodes` (default: every node) from the state as `tx` sees it."""
    vip = tx.cluster()["public_ip"]
    for node in tx.node_names() if nodes is None else nodes:
        d = os.path.join(tx.store.node_dir(node), "fast")
        path = os.path.join(d, "ip-to-" + vip)
        if tx.node(node)["faults"] or not _plain_ipv4(vip):
            for f in os.listdir(d) if os.path.isdir(d) else ():
                os.unlink(os.path.join(d, f))
            continue
        lines = [oneline_address(i, a) for i in node_interfaces(tx, node) for a in i["addrs"] if a[1] == vip]
        write_file(path, "".join(line + "\n" for line in lines).encode())


FAST_IP = r"""#!/bin/bash
# bmupgrade lab: `ip -o addr show to VIP` (the VIP probe) answered without starting Python, from
# the answer bmlab.py keeps for this node while its state is unchanged and no fault is set (see
# refresh_fast_answers); every other call, or no kept answer, is the Python stand-in's.
if [[ $# -eq 5 && $1 == -o && $2 == addr && $3 == show && $4 == to && $5 =~ ^[0-9.]+$ && -n $USER
      && $BMLAB_NODE_DIR == /* && -f $BMLAB_NODE_DIR/fast/ip-to-$5 && -f $BMLAB_NODE_DIR/state.json ]]; then
    t=${EPOCHREALTIME/,/.}
    answer=
    IFS= read -r answer < "$BMLAB_NODE_DIR/fast/ip-to-$5"
    [[ -n $answer ]] && printf '%s
' "$answer"
    printf '{"time": %s, "node": "%s", "argv": ["ip", "-o", "addr", "show", "to", "%s"], "exit": 0, "duration": 0.0, "pid": %d, "user": "%s", "fast": true}
'         "$t" "${BMLAB_NODE_DIR##*/}" "$5" "$$" "$USER" >> "$BMLAB_NODE_DIR/ledger.jsonl"
    exit 0
fi
exec "${0%/*}/bmlab" ip "$@"
"""


def unit_name(u: str) -> str:
    return u if "." in u else u + ".service"


def cmd_systemctl(ctx: Ctx, args):
    quiet, runtime, rest = systemctl_args(ctx, args)
    if not rest:
        return systemctl_list(ctx)
    verb, units = rest[0], [unit_name(u) for u in rest[1:]]
    if verb in ("is-active", "is-failed", "start", "stop", "restart", "reload", "try-restart", "status", "is-enabled",
                "enable", "disable", "mask", "unmask") and not units:
        if verb != "status":
            ctx.die(1, "Too few arguments.")
    node = ctx.state()
    st, masked = node["services"], node.get("masked") or []
    if verb in ("is-active", "is-failed", "is-enabled"):
        return systemctl_is(ctx, verb, units, st, masked, quiet)
    if verb in ("mask", "unmask"):
        return systemctl_mask(ctx, verb, units, runtime)
    if verb in ("start", "stop", "restart", "reload", "try-restart", "enable", "disable"):
        return systemctl_change(ctx, verb, units, masked)
    if verb == "status":
        return systemctl_status(ctx, units or list(UNITS), st, masked)
    ctx.die(1, "Unknown command verb %s." % verb)


def systemctl_args(ctx: Ctx, args) -> tuple[bool, bool, list[str]]:
    """systemctl's options (the display ones are accepted and ignored): (quiet, runtime, verb + units)."""
    quiet = runtime = False
    rest = []
    for a in args:
        if a in ("-q", "--quiet"):
            quiet = True
        elif a == "--runtime":
            runtime = True
        elif a in ("--no-pager", "--no-block", "-l", "--full", "--no-legend", "--plain", "--now", "--system") or a.startswith("--lines=") or a.startswith("-n"):
            pass
        elif a.startswith("-"):
            ctx.die(1, "systemctl: unrecognized option '%s'" % a if a.startswith("--") else "systemctl: invalid option -- '%s'" % a.lstrip("-")[:1])
        else:
            rest.append(a)
    return quiet, runtime, rest


def systemctl_list(ctx: Ctx) -> int:
    """systemctl without a verb: the lab's units and their states."""
    st = ctx.state()["services"]
    ctx.out("  UNIT%s LOAD   ACTIVE   SUB     DESCRIPTION" % (" " * 20))
    for u, desc in UNITS.items():
        s = st.get(u, "inactive")
        ctx.out("  %-24s loaded %-8s %-7s %s" % (u, s, "running" if s == "active" else "dead", desc))
    return 0


def systemctl_is(ctx: Ctx, verb: str, units: list[str], st: dict, masked: list[str], quiet: bool) -> int:
    """is-active / is-failed / is-enabled: the states printed (unless -q) and the exit code that
    scripts test (is-active: 0 if any unit is active, else 3)."""
    if verb == "is-active":
        any_active = False
        for u in units:
            s = st.get(u, "inactive")
            any_active |= s == "active"
            if not quiet:
                ctx.out(s)
        return 0 if any_active else 3
    if verb == "is-failed":
        if not quiet:
            for u in units:
                ctx.out(st.get(u, "inactive"))
        return 1
    code = 0
    for u in units:
        if u not in UNITS:
            ctx.die(1, "Failed to get unit file state for %s: No such file or directory" % u)
        state = "masked-runtime" if u in masked else "enabled"
        code = code or (1 if u in masked else 0)
        if not quiet:
            ctx.out(state)
    return code


def systemctl_mask(ctx: Ctx, verb: str, units: list[str], runtime: bool) -> int:
    """mask / unmask --runtime (only runtime masks, /run/systemd/system/UNIT -> /dev/null, are
    simulated: they are gone at reboot)."""
    if not runtime:
        ctx.die(1, "systemctl: the bmupgrade lab simulates only `systemctl %s --runtime` (a mask in /run, "
                   "gone at reboot)" % verb)
    for u in units:
        if u not in UNITS:
            ctx.die(1, "Failed to %s unit: Unit file %s does not exist." % (verb, u))
    with ctx.txn() as tx:
        m = tx.node(ctx.node).setdefault("masked", [])
        for u in units:
            if verb == "mask" and u not in m:
                m.append(u)
                ctx.err("Created symlink /run/systemd/system/%s \u2192 /dev/null." % u)
            elif verb == "unmask" and u in m:
                m.remove(u)
                ctx.err("Removed \"/run/systemd/system/%s\"." % u)
    return 0


def systemctl_change(ctx: Ctx, verb: str, units: list[str], masked: list[str]) -> int:
    """start / stop / restart / reload / try-restart / enable / disable: every unit is checked
    before any changes (unknown: exit 5, masked start: exit 1); starting keepalived may move the VIP."""
    for u in units:
        if u not in UNITS:
            word = {"stop": "stop", "restart": "restart", "reload": "reload"}.get(verb, "start")
            ctx.die(5, "Failed to %s %s: Unit %s %s." % (word, u, u, "not loaded" if verb == "stop" else "not found"))
        if verb in ("start", "restart") and u in masked:
            ctx.die(1, "Failed to %s %s: Unit %s is masked." % (verb, u, u))
    with ctx.txn() as tx:
        node = tx.node(ctx.node)
        svc = node["services"]
        for u in units:
            if verb in ("start", "restart"):
                service_start(ctx, node, u, "systemctl " + verb)
                if u == "keepalived.service":
                    keepalived_started(ctx, tx)
            elif verb == "stop":
                svc[u] = "inactive"
            elif verb == "try-restart":
                pass
    return 0


def systemctl_status(ctx: Ctx, units: list[str], st: dict, masked: list[str]) -> int:
    """systemctl status: the header lines per unit; exit 4 if a unit is unknown, else 3 if one is inactive."""
    code = 0
    for u in units:
        if u not in UNITS:
            ctx.err("Unit %s could not be found." % u)
            code = 4
            continue
        s = st.get(u, "inactive")
        ctx.out("%s %s - %s" % ("\u25cf" if s == "active" else "\u25cb", u, UNITS[u]))
        if u in masked:
            ctx.out("     Loaded: masked (Reason: Unit %s is masked.)" % u)
        else:
            ctx.out("     Loaded: loaded (/lib/systemd/system/%s; enabled; preset: enabled)" % u)
        ctx.out("     Active: %s" % ("active (running)" if s == "active" else "inactive (dead)"))
        if s != "active" and code == 0:
            code = 3
    return code


def keepalived_conf(ctx: Ctx, node: str) -> dict:
    """priority / nopreempt of the node's first vrrp_instance (keepalived.conf(5))."""
    out = {"priority": 100, "nopreempt": False}
    try:
        with open(os.path.join(ctx.store.node_root(node), KEEPALIVED_CONF.lstrip("/"))) as f:
            for line in f:
                words = line.split("#", 1)[0].split()
                if words[:1] == ["priority"] and len(words) > 1 and words[1].isdigit():
                    out["priority"] = int(words[1])
                elif words[:1] == ["nopreempt"]:
                    out["nopreempt"] = True
    except OSError:
        pass
    return out


def keepalived_started(ctx: Ctx, tx: "Txn") -> None:
    """VRRP preemption: a node starting keepalived with a higher priority than the VIP holder
    (and no `nopreempt`) takes the VIP over (keepalived.conf(5))."""
    c = tx.cluster()
    me = keepalived_conf(ctx, ctx.node)
    holders = [h for h in c["vip"] if h != ctx.node]
    if not holders or me["nopreempt"]:
        if not c["vip"]:
            c["vip"] = [ctx.node]
        return
    if all(me["priority"] > keepalived_conf(ctx, h)["priority"] for h in holders):
        c["vip"] = [ctx.node]
        ctx.notes["vip_preempted_from"] = holders


def cmd_bmctl(ctx: Ctx, args):
    """bmctl drives `systemctl ... bluemind.target`; bm-nginx is outside the target but shown by status."""
    if len(args) != 1 or args[0] not in ("start", "stop", "restart", "status"):
        ctx.die(1, "Usage: bmctl start|stop|restart|status")
    op = args[0]
    if op == "status":
        svc = ctx.state()["services"]
        s = svc.get("bluemind.target", "inactive")
        ctx.out("bluemind.target: %s" % s)
        for u in BM_UNITS:
            ctx.out("  %-20s %s" % (u, s))
        ctx.out("  %-20s %s (outside bluemind.target)" % ("bm-nginx", svc.get("bm-nginx.service", "inactive")))
        return 0 if s == "active" else 1
    with ctx.txn() as tx:
        node = tx.node(ctx.node)
        if op == "stop":
            node["services"]["bluemind.target"] = "inactive"
        elif not service_start(ctx, node, "bluemind.target", "bmctl " + op):
            ctx.die(1, "Failed to start bluemind.target: Unit bluemind.target is masked.")
    ctx.out("%s bluemind.target: done" % {"start": "Starting", "stop": "Stopping", "restart": "Restarting"}[op])
    return 0


# --------------------------------------------------------------------------- bm-cli
def cmd_bm_cli(ctx: Ctx, args):
    def usage(msg):
        ctx.err(msg)
        ctx.err("Usage: bm-cli [COMMAND]\nCommands:\n  setup  Setup and upgrade BlueMind")
        raise Exit(51)
    if not args:
        usage("Missing required subcommand")
    if args[0] != "setup" or "bm-plugin-cli-setup" not in ctx.state()["installed"]:
        usage("Unmatched argument at index 0: '%s'" % args[0])  # `setup` ships in bm-plugin-cli-setup
    if len(args) < 2:
        usage("Missing required subcommand: 'upgrade' or 'check-upgrade-5'")
    sub, rest = args[1], args[2:]
    if sub == "upgrade":
        for a in rest:
            usage("Unknown option: '%s'" % a if a.startswith("-") else "Unmatched argument at index 2: '%s'" % a)
        st = ctx.state()
        inst = st["installed"]
        full = inst.get(BM_FULL)
        odd = sorted(p for p in PINNED + [d for d in st.get("core_dependents", EXTRAS) if d in inst]
                     if inst.get(p) != full)
        if odd:
            ctx.die(1, "Setup upgrade refused: bm-* packages are not all at bm-full's version %s (%s)"
                    % (full, ", ".join("%s=%s" % (p, inst.get(p)) for p in odd)))
        if vcmp(full, st["setup_version"]) <= 0:
            ctx.die(1, "Setup upgrade refused: nothing to upgrade, setup already ran for %s (installed %s)" % (st["setup_version"], full))
        if st["services"].get("bluemind.target") != "active":
            ctx.die(1, "Setup upgrade refused: bluemind.target is not active on %s (start it with bmctl start)" % ctx.node)
        ctx.out("Upgrading BlueMind data and configuration from %s to %s on %s..." % (st["setup_version"], full, ctx.node))
        with ctx.txn() as tx:
            tx.node(ctx.node)["setup_version"] = full
        ctx.notes["setup_version"] = full
        ctx.out("Upgrade to %s finished successfully." % full)
        return 0
    if sub == "check-upgrade-5":
        pct = 100
        for a in rest:
            if a.startswith("--sampling-percentage="):
                try:
                    pct = int(a.split("=", 1)[1])
                except ValueError:
                    usage("Invalid value for option '--sampling-percentage': '%s' is not an int" % a.split("=", 1)[1])
                if not 1 <= pct <= 100:
                    usage("Invalid value for option '--sampling-percentage': must be between 1 and 100")
            else:
                usage("Unknown option: '%s'" % a)
        st = ctx.state()
        _, pg = mount_for(st, "/var/lib/postgresql")
        used = 1 - pg["bfree"] / pg["blocks"]
        ctx.out("Checking eligibility for BlueMind 5 (sampling %d%%)..." % pct)
        if used >= 0.5:
            ctx.die(1, "NOT ELIGIBLE: /var/lib/postgresql is %d%% full (must be under 50%%)" % round(used * 100))
        ctx.out("/var/lib/postgresql: %d%% used, OK\nEligible for upgrade to BlueMind 5." % round(used * 100))
        return 0
    usage("Unmatched argument at index 1: '%s'" % sub)


# --------------------------------------------------------------------------- fuser / stat / findmnt / sha256sum
def cmd_fuser(ctx: Ctx, args):
    verbose = silent = False
    files = []
    for a in args:
        if a.startswith("-") and len(a) > 1:
            for ch in a[1:]:
                if ch == "v":
                    verbose = True
                elif ch == "s":
                    silent = True
                elif ch in "amu":
                    pass
                elif ch == "k":
                    ctx.die(1, "fuser: -k (kill) is refused in the bmupgrade lab: never kill the dpkg lock holder")
                else:
                    ctx.die(1, "fuser: Invalid option %s\nUsage: fuser [-fIMuvw] [-a|-s] [-4|-6] [-c|-m|-n SPACE]\n             [-k [-i] [-SIGNAL]] NAME..." % a)
        else:
            files.append(a)
    if not files:
        ctx.die(1, "No process specification given\nUsage: fuser [-fIMuvw] [-a|-s] [-4|-6] [-c|-m|-n SPACE] NAME...")
    st = ctx.state()
    holder = lock_holder(st)
    found = False
    for f in files:
        mapped = ctx.map(f)
        if not os.path.exists(mapped):
            ctx.err("Specified filename %s does not exist." % f)
            continue
        path = os.path.normpath(f)
        if holder and path in DPKG_LOCKS:
            found = True
            if silent:
                continue
            if verbose:
                ctx.err("%21s%-11s %5s %s %s" % ("", "USER", "PID", "ACCESS", "COMMAND"))
                ctx.err("%s:" % f)
                ctx.err("%21s%-11s %5d %s %s" % ("", "root", holder["pid"], "F....", holder["command"]))
            else:
                ctx.err("%s:" % f, end="")
                sys.stderr.flush()
                ctx.out(" %d" % holder["pid"], end="")
        elif verbose and not silent:
            pass
    if found and not verbose and not silent:
        ctx.err("")
    return 0 if found else 1


def cmd_stat(ctx: Ctx, args):
    opts, rest = getopts(ctx, args, "fc:Lt", ["file-system", "format=", "printf=", "dereference", "terse"],
                         lambda opt, m: _coreutils_usage(ctx, "stat", opt))
    fs = any(k in ("-f", "--file-system") for k, _ in opts)
    fmt, printf = None, False
    for k, v in opts:
        if k in ("-c", "--format"):
            fmt = v
        elif k == "--printf":
            fmt, printf = v, True
    if not rest:
        ctx.die(1, "stat: missing operand\nTry 'stat --help' for more information.")
    if not fs:  # plain stat: the real tool on the node-local path
        return spawn(["/usr/bin/stat"] + [a for a in args if a not in rest] + [ctx.map(p) for p in rest])
    st = ctx.state()
    code = 0
    for p in rest:
        if not os.path.exists(ctx.map(p)):
            ctx.err("stat: cannot read file system information for '%s': No such file or directory" % p)
            code = 1
            continue
        mnt, m = mount_for(st, p if os.path.isabs(p) else "/")
        t = stat_fstype(m["fstype"])
        fields = {"a": m["bavail"], "b": m["blocks"], "c": m["files"], "d": m["ffree"], "f": m["bfree"],
                  "i": "%x" % (abs(hash(mnt)) & 0xFFFFFFFFFFFF), "l": 255, "n": p, "s": m["bsize"], "S": m["bsize"],
                  "t": {"nfs": "6969", "ext2/ext3": "ef53", "tmpfs": "1021994"}.get(t, "0"), "T": t, "%": "%"}
        if fmt is None:
            ctx.out('  File: "%s"\n    ID: %s Namelen: 255     Type: %s\nBlock size: %-10d Fundamental block size: %d\n'
                    'Blocks: Total: %-10d Free: %-10d Available: %d\nInodes: Total: %-10d Free: %d'
                    % (p, fields["i"], t, m["bsize"], m["bsize"], m["blocks"], m["bfree"], m["bavail"], m["files"], m["ffree"]))
            continue
        import re
        text = re.sub(r"%(.)", lambda mm: str(fields.get(mm.group(1), "?")), fmt)
        if printf:
            sys.stdout.write(text.replace("\\n", "\n").replace("\\t", "\t"))
        else:
            ctx.out(text)
    return code


def cmd_findmnt(ctx: Ctx, args):
    opts, rest = getopts(ctx, args, "no:T:", ["noheadings", "output=", "target="], lambda opt, m: _coreutils_usage(ctx, "findmnt", opt))
    heads, cols, target = True, ["TARGET", "SOURCE", "FSTYPE", "OPTIONS"], None
    for k, v in opts:
        if k in ("-n", "--noheadings"):
            heads = False
        elif k in ("-o", "--output"):
            cols = [c.upper() for c in v.split(",")]
        elif k in ("-T", "--target"):
            target = v
    if target is None and rest:
        target = rest[0]
    if target is None:
        ctx.die(1, "findmnt: the bmupgrade lab simulates only findmnt --target PATH")
    st = ctx.state()
    if not os.path.exists(ctx.map(target)):
        ctx.die(1, "")
    mnt, m = mount_for(st, target)
    vals = {"TARGET": mnt, "SOURCE": m["source"], "FSTYPE": m["fstype"], "OPTIONS": "rw,relatime"}
    for c in cols:
        if c not in vals:
            ctx.die(1, "findmnt: unknown column: %s" % c)
    if heads:
        ctx.out(" ".join(cols))
    ctx.out(" ".join(vals[c] for c in cols))
    return 0


def _coreutils_usage(ctx, prog, opt):
    o = opt if opt.startswith("-") else ("-" + opt if len(opt) == 1 else "--" + opt)
    if o.startswith("--"):
        ctx.err("%s: unrecognized option '%s'" % (prog, o))
    else:
        ctx.err("%s: invalid option -- '%s'" % (prog, o[1:]))
    ctx.err("Try '%s --help' for more information." % prog)
    raise Exit(1)


def cmd_sha256sum(ctx: Ctx, args):
    import hashlib
    opts, rest = getopts(ctx, args, "bctwz", ["binary", "check", "text", "tag", "quiet", "status", "strict", "warn", "zero", "ignore-missing"],
                         lambda opt, m: _coreutils_usage(ctx, "sha256sum", opt))
    keys = {k for k, _ in opts}
    check = "-c" in keys or "--check" in keys
    tag = "--tag" in keys
    quiet, status = "--quiet" in keys, "--status" in keys

    def digest(path):
        h = hashlib.sha256()
        if path == "-":
            h.update(sys.stdin.buffer.read())
        else:
            with open(ctx.map(path), "rb") as f:
                for chunk in iter(lambda: f.read(65536), b""):
                    h.update(chunk)
        return h.hexdigest()
    code = 0
    if not check:
        for p in rest or ["-"]:
            try:
                d = digest(p)
            except IsADirectoryError:
                ctx.err("sha256sum: %s: Is a directory" % p)
                code = 1
                continue
            except OSError:
                ctx.err("sha256sum: %s: No such file or directory" % p)
                code = 1
                continue
            ctx.out("SHA256 (%s) = %s" % (p, d) if tag else "%s  %s" % (d, p))
        return code
    failed = 0
    for listing in rest or ["-"]:
        try:
            text = sys.stdin.read() if listing == "-" else open(ctx.map(listing), encoding="utf-8").read()
        except OSError:
            ctx.err("sha256sum: %s: No such file or directory" % listing)
            return 1
        for line in text.splitlines():
            if not line.strip():
                continue
            want, _, path = line.partition("  ")
            path = path.lstrip("*")
            try:
                ok = digest(path) == want.strip()
            except OSError:
                ctx.err("sha256sum: %s: No such file or directory" % path)
                ok = False
            if not ok:
                failed += 1
            if not status and (not ok or not quiet):
                ctx.out("%s: %s" % (path, "OK" if ok else "FAILED"))
    if failed and not status:
        ctx.err("sha256sum: WARNING: %d computed checksum%s did NOT match" % (failed, "" if failed == 1 else "s"))
    return 1 if failed else 0


# --------------------------------------------------------------------------- rsync / scp
def _split_remote(arg: str):
    """'host:path' -> (host, path); local paths -> (None, path)."""
    if ":" in arg and not arg.startswith("/") and "/" not in arg.split(":", 1)[0]:
        host, path = arg.split(":", 1)
        return host, path or "."
    return None, arg


def copy_tree(ctx: Ctx, prog: str, sources: list[str], dest: str, recursive: bool, relative: bool,
              verbose: bool, dry_run: bool = False, delete: bool = False) -> int:
    dhost, dpath = _split_remote(dest)
    code = 0
    dnode = _copy_side(ctx, dhost)
    if dnode is None:
        _copy_connection_failed(ctx, prog)
    droot = ctx.store.node_root(dnode)
    dest_abs = _in_root(ctx, droot, dpath)
    multi = len(sources) > 1
    for src in sources:
        shost, spath = _split_remote(src)
        snode = _copy_side(ctx, shost)
        if snode is None:
            _copy_connection_failed(ctx, prog)
        sroot = ctx.store.node_root(snode)
        s_abs = _in_root(ctx, sroot, spath) if shost else ctx.map(spath)
        if not os.path.lexists(s_abs):
            if prog == "rsync":
                ctx.err('rsync: [sender] link_stat "%s" failed: No such file or directory (2)' % spath)
            else:
                ctx.err("scp: %s: No such file or directory" % spath)
            code = 23 if prog == "rsync" else 1
            continue
        if os.path.isdir(s_abs) and not recursive:
            if prog == "rsync":
                ctx.out('skipping directory %s' % spath)
            else:
                ctx.err("scp: %s: not a regular file" % spath)
                code = 1
            continue
        target = _copy_target(spath, s_abs, dpath, dest_abs, relative, multi)
        if verbose:
            ctx.out(os.path.normpath(spath).lstrip("/") if relative else os.path.basename(os.path.normpath(spath)))
        if dry_run:
            continue
        if os.path.isdir(s_abs):
            _copy_dir(s_abs, target, delete)
        else:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            _copy_file(s_abs, target)
    return code


def _copy_side(ctx: Ctx, host: str | None) -> str | None:
    """The node one side of a copy is on (None: a local path, this node); None with ssh's error
    when the host is unknown or its node is down."""
    if host is None:
        return ctx.node
    n = ctx.resolve_host(host)
    if n is None:
        ctx.err("ssh: Could not resolve hostname %s: Name or service not known" % host.rsplit("@", 1)[-1])
        return None
    if n != ctx.node and sshd_pid(ctx.store, n) is None:
        ctx.err("ssh: connect to host %s port 22: Connection refused" % ctx.store.meta()["nodes"][n]["host"])
        return None
    return n


def _copy_connection_failed(ctx: Ctx, prog: str):
    """A side could not be reached: rsync's connection error, and exit 255 (as ssh's)."""
    if prog == "rsync":
        ctx.err("rsync: connection unexpectedly closed (0 bytes received so far) [sender]")
        ctx.err("rsync error: unexplained error (code 255) at io.c(231) [sender=3.2.7]")
    raise Exit(255)


def _in_root(ctx: Ctx, root: str, path: str) -> str:
    """A path of a copy's side under that node's root (a remote relative path is from the home: the root)."""
    if not os.path.isabs(path):
        return path if root == ctx.root else os.path.join(root, path)  # remote relative: home = root
    return root + os.path.normpath(path) if path != "/" else root + "/"


def _copy_target(spath: str, s_abs: str, dpath: str, dest_abs: str, relative: bool, multi: bool) -> str:
    """Where one source lands, by rsync's rules: -R keeps the full path, a trailing slash copies a
    directory's content, a directory destination (or several sources) receives the base name."""
    if relative:
        return dest_abs.rstrip("/") + "/" + os.path.normpath(spath).lstrip("/")
    if os.path.isdir(s_abs) and spath.endswith("/"):
        return dest_abs
    if dpath.endswith("/") or os.path.isdir(dest_abs) or multi:
        return os.path.join(dest_abs, os.path.basename(os.path.normpath(spath)))
    return dest_abs


def _copy_dir(s_abs: str, target: str, delete: bool) -> None:
    """Copy a directory tree over `target` (symlinks kept); with --delete, remove what the source lacks."""
    import shutil
    os.makedirs(target, exist_ok=True)
    shutil.copytree(s_abs, target, dirs_exist_ok=True, symlinks=True)
    if delete:
        for dirpath, dirnames, filenames in os.walk(target, topdown=False):
            rel = os.path.relpath(dirpath, target)
            for f in filenames + dirnames:
                if not os.path.lexists(os.path.join(s_abs, rel, f)):
                    p = os.path.join(dirpath, f)
                    shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)


def _copy_file(src: str, dst: str) -> None:
    """shutil.copy2 for one file (content, mode, times) without importing shutil, which pulls
    in `re` and costs an rsync call 4 ms (config-sync runs inside the HA-off window)."""
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data)
    st = os.stat(src)
    os.chmod(dst, st.st_mode & 0o7777)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def cmd_rsync(ctx: Ctx, args):
    opts, rest = getopts(ctx, args, "avzrRne:ctpoglDHAXPqiuh", [
        "archive", "verbose", "compress", "recursive", "relative", "dry-run", "rsh=", "checksum", "times",
        "perms", "owner", "group", "links", "devices", "specials", "hard-links", "acls", "xattrs", "partial",
        "progress", "quiet", "itemize-changes", "update", "delete", "numeric-ids", "inplace", "stats",
        "human-readable", "no-motd", "timeout=", "mkpath"],
        lambda opt, m: (ctx.err("rsync: %s: unknown option" % (("-" + opt) if len(opt) == 1 else ("--" + opt))),
                        ctx.err("rsync error: syntax or usage error (code 1) at main.c(1795) [client=3.2.7]"),
                        _raise(1)))
    keys = {k for k, _ in opts}
    recursive = bool(keys & {"-a", "--archive", "-r", "--recursive"})
    relative = bool(keys & {"-R", "--relative"})
    verbose = bool(keys & {"-v", "--verbose"})
    dry = bool(keys & {"-n", "--dry-run"})
    if len(rest) < 2:
        ctx.die(1, "rsync: the bmupgrade lab needs SRC... DEST\nrsync error: syntax or usage error (code 1) at main.c(1795) [client=3.2.7]")
    if verbose:
        ctx.out("sending incremental file list")
    code = copy_tree(ctx, "rsync", rest[:-1], rest[-1], recursive, relative, verbose, dry, "--delete" in keys)
    if verbose:
        ctx.out("\nsent 1,234 bytes  received 35 bytes  2,538.00 bytes/sec\ntotal size is 4,321  speedup is 3.41")
    if code:
        ctx.err("rsync error: some files/attrs were not transferred (see previous errors) (code 23) at main.c(1333) [sender=3.2.7]")
    return code


def _raise(code):
    raise Exit(code)


def cmd_scp(ctx: Ctx, args):
    opts, rest = getopts(ctx, args, "346ABCOpqRrsTvP:o:i:F:c:l:J:S:", [],
                         lambda opt, m: (ctx.err("unknown option -- %s" % opt.lstrip("-")),
                                         ctx.err("usage: scp [-346ABCOpqRrsTv] [-c cipher] [-D sftp_server_path] [-F ssh_config]\n           [-i identity_file] [-J destination] [-l limit] [-o ssh_option]\n           [-P port] [-S program] [-X sftp_option] source ... target"),
                                         _raise(1)))
    keys = {k for k, _ in opts}
    if len(rest) < 2:
        ctx.die(1, "usage: scp [-346ABCOpqRrsTv] [-c cipher] [-F ssh_config] [-i identity_file] source ... target")
    return copy_tree(ctx, "scp", rest[:-1], rest[-1], "-r" in keys, False, False)


# --------------------------------------------------------------------------- sudo / hostname
SUDO_WORDS = {  # what sudo 1.9 prints, by locale
    "en": {"prompt": "[sudo] password for %s: ", "required": "sudo: a password is required",
           "none": "sudo: no password was provided", "sorry": "Sorry, try again.",
           "three": "sudo: 3 incorrect password attempts"},
    "fr": {"prompt": "[sudo] Mot de passe de %s : ", "required": "sudo: un mot de passe est nécessaire",
           "none": "sudo: aucun mot de passe n'a été fourni", "sorry": "Désolé, essayez de nouveau.",
           "three": "sudo: 3 saisies de mots de passe incorrectes"},
}


def cmd_sudo(ctx: Ctx, args):
    args = list(args)
    prompt, noninteractive = None, False
    while args and args[0].startswith("-"):
        a = args.pop(0)
        if a == "--":
            break
        if a in ("-S", "-H", "-E", "-k", "-A") or a.startswith("--preserve-env"):
            continue
        if a == "-n":
            noninteractive = True
        elif a in ("-p", "-u", "-g") and args:
            v = args.pop(0)
            if a == "-p":
                prompt = v
        elif a.startswith("-p") and len(a) > 2:
            prompt = a[2:]
        elif a.startswith("-u") and len(a) > 2:
            pass
        else:
            ctx.die(1, "sudo: invalid option -- '%s'\nusage: sudo [-AbEHknPS] [-C num] [-D directory] [-g group] [-h host] [-p prompt] [-R directory] [-T timeout] [-u user] [VAR=value] [-i|-s] [<command>]" % a.lstrip("-")[:1])
    if not args:
        ctx.die(1, "usage: sudo -h | -K | -k | -V\nusage: sudo [-AbEHknPS] [-u user] [VAR=value] [-i|-s] [<command>]")
    pw = ctx.state().get("sudo_password")
    words = SUDO_WORDS.get(ctx.state().get("sudo_lang") or "en", SUDO_WORDS["en"])
    if pw is not None:
        if noninteractive:
            ctx.die(1, words["required"])
        for attempt in range(3):
            sys.stderr.write((prompt or words["prompt"] % ctx.user()).replace("%p", ctx.user()))
            sys.stderr.flush()
            line = sys.stdin.readline()
            if line.rstrip("\n") == pw:
                break
            if not line:
                ctx.die(1, "\n" + words["none"])
            ctx.err(words["sorry"])
        else:
            ctx.die(1, words["three"])
    env = dict(os.environ)
    while args and "=" in args[0] and not args[0].startswith("="):
        k, v = args.pop(0).split("=", 1)
        env[k] = v
    try:
        return spawn(args, env)
    except FileNotFoundError:
        ctx.die(1, "sudo: %s: command not found" % args[0])


def cmd_hostname(ctx: Ctx, args):
    if not args or args == ["-s"] or args == ["--short"]:
        ctx.out(ctx.node)
    elif args in (["-f"], ["--fqdn"], ["-A"]):
        ctx.out(ctx.node + ".example.org")
    elif args in (["-I"], ["-i"]):
        ctx.out(NODE_ADDR.get(ctx.node, ""))
    else:
        ctx.die(1, "hostname: the bmupgrade lab cannot change the host name")
    return 0


# --------------------------------------------------------------------------- curl (BlueMind's API) / find / csync2
def cmd_curl(ctx: Ctx, args):
    """curl to BlueMind's REST API on the node (https://localhost/api/..., through bm-nginx), with
    the API key header `X-BM-ApiKey` (the token of /etc/bm/bm-core.tok; `-H @-` reads it from stdin,
    so it is never an argument). Answers: system/installation/state and /version, and
    scheduledjobs/_searchExecution (is a DataProtect backup running)."""
    opts, rest = getopts(ctx, args, "fsSkX:H:d:m:o:w:L", [
        "fail", "silent", "show-error", "insecure", "request=", "header=", "data=", "data-raw=", "max-time=",
        "output=", "write-out=", "location", "connect-timeout="],
        lambda opt, m: (ctx.err("curl: option %s: is unknown\ncurl: try 'curl --help' or 'curl --manual' for more information"
                                % (("-" + opt) if len(opt) == 1 else ("--" + opt))), _raise(2)))
    keys = [k for k, _ in opts]
    fail = "-f" in keys or "--fail" in keys
    silent = "-s" in keys or "--silent" in keys
    show = "-S" in keys or "--show-error" in keys
    method = next((v for k, v in opts if k in ("-X", "--request")), None)
    data = next((v for k, v in opts if k in ("-d", "--data", "--data-raw")), None)
    headers = curl_headers(ctx, opts)
    method = method or ("POST" if data is not None else "GET")

    def error(code, msg):
        if not silent or show:
            ctx.err("curl: (%d) %s" % (code, msg))
        raise Exit(code)
    if len(rest) != 1:
        error(2, "no URL specified" if not rest else "the bmupgrade lab takes one URL")
    url = rest[0]
    scheme, _, hostpath = url.partition("://")
    host, _, path = hostpath.partition("/")
    path = "/" + path
    if host.split(":")[0] not in ("localhost", "127.0.0.1", ctx.node) or not path.startswith("/api/"):
        error(6, "Could not resolve host: %s" % host.split(":")[0])
    st = ctx.state()
    if st["services"].get("bm-nginx.service") != "active":
        error(7, "Failed to connect to %s port 443 after 0 ms: Couldn't connect to server" % host.split(":")[0])
    try:
        with open(os.path.join(ctx.root, API_TOKEN_FILE.lstrip("/"))) as f:
            token = f.read().strip()
    except OSError:
        token = None
    given = [h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("x-bm-apikey:")]
    if any(given):
        ctx.notes["api_key"] = "given" if token and given[-1] == token else "wrong"
    status, body = curl_api_answer(ctx, st, path, method, data, token, given)
    ctx.notes["http_status"] = status
    if status >= 400 and fail:
        error(22, "The requested URL returned error: %d" % status)
    sys.stdout.write(body)
    return 0


def curl_headers(ctx: Ctx, opts) -> list[str]:
    """The -H headers, in order; `-H @FILE` / `-H @-` reads them from a file or stdin (the API key)."""
    headers = []
    for k, v in opts:
        if k in ("-H", "--header"):
            if v.startswith("@"):
                src = v[1:]
                text = sys.stdin.read() if src == "-" else open(ctx.map(src)).read()
                headers += [h.strip() for h in text.splitlines() if h.strip()]
            else:
                headers.append(v)
    return headers


def curl_api_answer(ctx: Ctx, st: dict, path: str, method: str, data: str | None, token: str | None,
                    given: list[str]) -> tuple[int, str]:
    """BlueMind's answer (status, body): 502 while BlueMind is down, 401 without the right API key,
    else the installation state / version or the running backup jobs (404 for any other path)."""
    status, body = 200, ""
    if st["services"].get("bluemind.target") != "active":
        status, body = 502, "<html><body><h1>502 Bad Gateway</h1></body></html>"
    elif not token or not given or given[-1] != token:
        status, body = 401, '{"errorCode":"AUTHENTICATION_FAIL","message":"Invalid credentials"}'
    elif path == "/api/system/installation/state" and method == "GET":
        core, setup = st["installed"].get("bm-core", ""), st.get("setup_version", "")
        if st.get("core_starting"):
            with ctx.txn() as tx:
                tx.node(ctx.node)["core_starting"] = max(0, int(tx.node(ctx.node).get("core_starting") or 0) - 1)
            body = '"CORE_STATE_STARTING"'
        else:
            body = '"CORE_STATE_UPGRADE"' if vcmp(core, setup) > 0 else '"CORE_STATE_RUNNING"'
    elif path == "/api/system/installation/version" and method == "GET":
        core, setup = st["installed"].get("bm-core", ""), st.get("setup_version", "")
        body = json_dumps({"softwareVersion": core, "databaseVersion": setup,
                           "needsUpgrade": vcmp(core, setup) > 0}).replace(", ", ",").replace(": ", ":")
    elif path == "/api/scheduledjobs/_searchExecution" and method == "POST":
        try:
            query = json_loads(data or "{}")
        except ValueError:
            query = None
        if not isinstance(query, dict):
            status, body = 400, '{"errorCode":"INVALID_PARAMETER","message":"invalid JSON"}'
        else:
            running = st.get("backup_running") and query.get("jobId") in (None, "DataProtect")
            values = [{"id": 42, "jobId": "DataProtect", "domainUid": "global.virt", "status": "IN_PROGRESS",
                       "startDate": int(time.time() * 1000) - 600000, "endDate": None}] if running else []
            body = json_dumps({"total": len(values), "values": values}).replace(", ", ",").replace(": ", ":")
    else:
        status, body = 404, '{"errorCode":"NOT_FOUND","message":"%s"}' % path
    return status, body


def cmd_find(ctx: Ctx, args):
    """find PATH... [-type f|d] [-print|-print0]: the node's files (for checksums of /etc/bm...)."""
    paths, kind, sep = [], None, "\n"
    i = 0
    while i < len(args) and not args[i].startswith("-"):
        paths.append(args[i])
        i += 1
    rest = args[i:]
    while rest:
        a = rest.pop(0)
        if a == "-type" and rest and rest[0] in ("f", "d"):
            kind = rest.pop(0)
        elif a == "-print":
            sep = "\n"
        elif a == "-print0":
            sep = "\0"
        else:
            ctx.die(1, "find: the bmupgrade lab simulates only find PATH... [-type f|d] [-print|-print0] (got %s)" % a)
    code = 0
    for p in paths or ["."]:
        base = ctx.map(p)
        if not os.path.lexists(base):
            ctx.err("find: '%s': No such file or directory" % p)
            code = 1
            continue
        found = [(p, base)]
        if os.path.isdir(base) and not os.path.islink(base):
            for dirpath, dirnames, filenames in os.walk(base):
                rel = os.path.relpath(dirpath, base)
                for name in sorted(dirnames) + sorted(filenames):
                    node_path = os.path.normpath(os.path.join(p, rel, name))
                    found.append((node_path, os.path.join(dirpath, name)))
        for node_path, real in found:
            is_dir = os.path.isdir(real) and not os.path.islink(real)
            if kind == "f" and (is_dir or os.path.islink(real)) or kind == "d" and not is_dir:
                continue
            sys.stdout.write(node_path + sep)
    return code


def cmd_csync2(ctx: Ctx, args):
    """csync2 -x: push this node's changes in the synchronized set (SYNCED_FILES, SYNCED_TREES) to
    the other nodes. One direction: from the node it runs on."""
    opts, rest = getopts(ctx, args, "xvN:", ["verbose"], lambda opt, m: (
        ctx.err("csync2: invalid option -- '%s'" % opt.lstrip("-")), _raise(1)))
    keys = [k for k, _ in opts]
    if "-x" not in keys or rest:
        ctx.die(1, "csync2: the bmupgrade lab simulates only `csync2 -x` (check and update all hosts)")
    verbose = "-v" in keys or "--verbose" in keys
    pushed = []
    for other in ctx.other_nodes():
        if sshd_pid(ctx.store, other) is None:
            ctx.die(1, "ERROR: Connection to remote host `%s' failed." % other)
        oroot = ctx.store.node_root(other)
        for path in SYNCED_FILES + SYNCED_TREES:
            src = ctx.map(path)
            items = []
            if os.path.isdir(src):
                for dirpath, _dirs, files in os.walk(src):
                    for f in files:
                        items.append(os.path.join(dirpath, f))
            elif os.path.exists(src):
                items.append(src)
            for real in items:
                node_path = "/" + os.path.relpath(real, ctx.root)
                dst = os.path.join(oroot, node_path.lstrip("/"))
                with open(real, "rb") as f:
                    data = f.read()
                try:
                    with open(dst, "rb") as f:
                        same = f.read() == data
                except OSError:
                    same = False
                if same:
                    continue
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                _copy_file(real, dst)
                pushed.append("%s:%s" % (other, node_path))
                if verbose:
                    ctx.out("Updating %s on %s ..." % (node_path, other))
    ctx.notes["pushed"] = pushed
    return 0


# --------------------------------------------------------------------------- cat / touch / rm on node files
# The nodes share the host's filesystem: these three read or change a node's own file (its root)
# when the runbook names one (/etc/bm/bm-core.tok, /etc/keepalived/...), and otherwise run the
# real tool unchanged and unrecorded (bmupgrade's lock and marker files, /tmp, pipes).
HOST_ONLY = ("/tmp/", "/proc/", "/dev/", "/run/user/")
FS_TOOLS = {"cat": "/bin/cat", "touch": "/usr/bin/touch", "rm": "/bin/rm"}


def node_file(lab: str, root: str, path: str, creating: bool) -> str | None:
    """The node-root path for `path`, or None when the real tool should see the host's path."""
    if not os.path.isabs(path) or path == lab or path.startswith(lab + "/") or path.startswith(HOST_ONLY) \
            or path in ("/dev/null", "/dev/stdin"):
        return None
    mapped = root + os.path.normpath(path)
    if os.path.lexists(mapped) or (creating and os.path.isdir(os.path.dirname(mapped))):
        return mapped
    return None


def run_fs_tool(ctx: Ctx, cmd: str, args: list[str]) -> int:
    ctx.notes["node_files"] = [a[len(ctx.root):] for a in args if a.startswith(ctx.root + "/")]
    if cmd == "cat" and any(a.endswith(API_TOKEN_FILE) for a in args):
        ctx.notes["secret"] = "read (never recorded)"
    return spawn([FS_TOOLS[cmd]] + list(args))


def fs_tool(cmd: str, args: list[str], where) -> list[str] | None:
    """argv for the real tool with node paths mapped, and whether any was (None: pass through)."""
    if where is None:
        return None
    lab, node = where
    root = os.path.join(lab, "nodes", node, "root")
    out, mapped, opts_done = [], False, False
    for a in args:
        if not opts_done and a.startswith("-") and a != "-":
            if a == "--":
                opts_done = True
            out.append(a)
            continue
        m = node_file(lab, root, a, creating=cmd == "touch")
        mapped |= m is not None
        out.append(m or a)
    return out if mapped else None


COMMANDS = {
    "apt-get": cmd_apt_get,
    "apt-cache": cmd_apt_cache,
    "apt-mark": cmd_apt_mark,
    "dpkg-query": cmd_dpkg_query,
    "dpkg": cmd_dpkg,
    "crm_attribute": cmd_crm_attribute,
    "crm_resource": cmd_crm_resource,
    "crm_mon": cmd_crm_mon,
    "pcs": cmd_pcs,
    "cibadmin": cmd_cibadmin,
    "crm_simulate": cmd_crm_simulate,
    "ip": cmd_ip,
    "systemctl": cmd_systemctl,
    "bmctl": cmd_bmctl,
    "bm-cli": cmd_bm_cli,
    "fuser": cmd_fuser,
    "stat": cmd_stat,
    "findmnt": cmd_findmnt,
    "sha256sum": cmd_sha256sum,
    "rsync": cmd_rsync,
    "scp": cmd_scp,
    "sudo": cmd_sudo,
    "hostname": cmd_hostname,
    "cat": lambda ctx, args: run_fs_tool(ctx, "cat", args),
    "touch": lambda ctx, args: run_fs_tool(ctx, "touch", args),
    "rm": lambda ctx, args: run_fs_tool(ctx, "rm", args),
    "curl": cmd_curl,
    "find": cmd_find,
    "csync2": cmd_csync2,
}


# --------------------------------------------------------------------------- main
def locate_node() -> tuple[str, str] | None:
    """(lab dir, node name) from BMLAB_NODE_DIR, else from the server address of SSH_CONNECTION."""
    nd = os.environ.get("BMLAB_NODE_DIR")
    if nd and os.path.isfile(os.path.join(nd, "state.json")):
        nd = os.path.abspath(nd)
        return os.path.dirname(os.path.dirname(nd)), os.path.basename(nd)
    lab = os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0])))
    conn = os.environ.get("SSH_CONNECTION", "").split()
    if len(conn) == 4 and os.path.isfile(os.path.join(lab, "lab.json")):
        with open(os.path.join(lab, "lab.json")) as f:
            for name, info in json_loads(f.read())["nodes"].items():
                if info.get("host") == conn[2]:
                    return lab, name
    return None


def run_faults(ctx: Ctx, argv: list[str]) -> list[dict]:
    """Consume the faults matching this call (decrementing their counters)."""
    hits = []
    with ctx.txn() as tx:
        for f in tx.node(ctx.node)["faults"]:
            if f.get("remaining") == 0 or not command_matches(f.get("command") or "", argv):
                continue
            if f.get("remaining") is not None:
                f["remaining"] -= 1
            hits.append(dict(f))
    return hits


def drop_connection(ctx: Ctx) -> bool:
    """Kill this call's own per-connection sshd processes (the listener keeps running)."""
    listener = sshd_pid(ctx.store, ctx.node)
    chain, pid = [], os.getppid()
    while pid > 1 and pid != listener:
        try:
            with open("/proc/%d/stat" % pid) as f:
                data = f.read()
        except OSError:
            break
        comm = data[data.index("(") + 1:data.rindex(")")]
        if comm == "sshd":
            chain.append(pid)
        pid = int(data.rsplit(")", 1)[1].split()[1])
    if listener is None or pid != listener:
        return False
    for p in chain:
        with suppress(OSError):
            os.kill(p, signal.SIGKILL)
    return True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    cmd = os.path.basename(argv[0])
    args = argv[1:]
    if cmd in ("bmlab", "bmlab.py"):
        if not args or args[0] not in COMMANDS:
            sys.stderr.write("usage: bmlab COMMAND [ARGS...]  (commands: %s)\n" % " ".join(sorted(COMMANDS)))
            return 2
        cmd, args = args[0], args[1:]
    if cmd not in COMMANDS:
        sys.stderr.write("bmlab: %s is not a lab stand-in\n" % cmd)
        return 127
    where = locate_node()
    run_args = args
    if cmd in FS_TOOLS:
        run_args = fs_tool(cmd, args, where)
        if run_args is None:  # nothing of a node's own: the real tool, unrecorded
            sys.stdout.flush()
            os.execv(FS_TOOLS[cmd], [cmd] + args)
    if where is None:
        sys.stderr.write("%s: bmupgrade lab: cannot tell which node this is (BMLAB_NODE_DIR unset)\n" % cmd)
        return 127
    ctx = Ctx(where[0], where[1], [cmd] + args)
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, _on_signal)
    return run_call(ctx, cmd, run_args)


def _on_signal(signum, _frame):
    """SIGTERM / SIGHUP / SIGINT end the call through `Signalled`, so its ledger entry is still written."""
    raise Signalled(signum)


def run_call(ctx: Ctx, cmd: str, run_args: list[str]) -> int:
    """One stand-in call on a node: its faults, the command, then its ledger entry (always) and
    the dropped connection of a drop fault. Returns the process exit code."""
    start = time.time()
    code, drop, fault_names = None, None, []
    try:
        for f in run_faults(ctx, ctx.argv):
            fault_names.append(f["kind"])
            if f["kind"] == "vip-move":
                with ctx.txn() as tx:
                    ctx.notes["vip_moved_to"] = failover(tx, f.get("to"))
            elif f["kind"] == "hang":
                sys.stdout.flush()
                ctx.sleep(f["seconds"])
            elif f["kind"] == "fail":
                ctx.err(f.get("message") or "%s: simulated failure (bmupgrade lab fault)" % cmd)
                raise Exit(f["exit_code"])
            elif f["kind"] == "drop":
                drop = f.get("when", "after")
                if drop == "before":
                    raise Exit(-1)
        code = COMMANDS[cmd](ctx, run_args)
        code = 0 if code is None else code
    except Exit as e:
        code = e.code
    except Signalled as s:
        code = 128 + s.signum
        from signal import Signals
        ctx.notes["signal"] = Signals(s.signum).name
    except BrokenPipeError:
        code = 141
        ctx.notes["signal"] = "SIGPIPE"
    except Exception as e:  # a stand-in bug: say so loudly, never pretend success
        import traceback
        traceback.print_exc()
        ctx.notes["error"] = "%s: %s" % (type(e).__name__, e)
        code = 70
    finally:
        ctx.unregister()
        write_ledger(ctx, start, code, fault_names, drop)
    with suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    if drop:
        drop_connection(ctx)
        code = 255
    return code if code is not None and code >= 0 else 255


def write_ledger(ctx: Ctx, start: float, code: int | None, fault_names: list[str], drop: str | None) -> None:
    """Append the call's entry to the node's ledger (flocked: calls run concurrently); a ledger
    that cannot be written is reported, never fatal to the call."""
    entry = {"time": round(start, 6), "node": ctx.node, "argv": ctx.argv,
             "exit": None if code == -1 else code, "duration": round(time.time() - start, 6),
             "pid": os.getpid(), "user": ctx.user()}
    if fault_names:
        entry["faults"] = fault_names
    if drop:
        entry["dropped"] = True
    entry.update(ctx.notes)
    try:
        fd = os.open(ctx.store.ledger_path(ctx.node), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, (json_dumps(entry) + "\n").encode())
        finally:
            os.close(fd)
    except OSError as e:
        sys.stderr.write("bmlab: cannot write the ledger: %s\n" % e)


def run() -> int:
    """Entry point: as a script (`python3 bmlab.py`, or a symlink to it) or from the lab's
    `bin/bmlab` launcher, which imports this file so that its bytecode is cached."""
    try:
        rc = main()
    except KeyboardInterrupt:
        rc = 130
    with suppress(Exception):
        sys.stdout.flush()
    return rc


LAUNCHER = """#!{python} -IS
# bmupgrade lab: the stand-in commands are symlinks to this launcher. It imports bmlab.py (next
# to it) rather than running it as a script, so Python caches its bytecode (-20 ms a call);
# -I -S: no site-packages, no user environment (stdlib only; -3 ms a call, and a stray
# PYTHONPATH in the session cannot change what a stand-in does). os._exit: run() has closed
# and flushed everything, so the interpreter's teardown is skipped (-1.5 ms a call).
import os, sys
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import bmlab
code = bmlab.run()
try:
    sys.stderr.flush()
except Exception:
    pass
os._exit(code)
"""


def launcher(python: str | None = None) -> str:
    """The launcher script for a given interpreter: the system python3 by default (what the
    sshd session's PATH finds; never a pyenv shim or a virtualenv, which cost 10-100 ms a call)."""
    import shutil

    python = python or next((p for p in ("/usr/bin/python3", "/bin/python3") if os.access(p, os.X_OK)),
                            None) or shutil.which("python3") or sys.executable
    return LAUNCHER.format(python=python)

if __name__ == "__main__":
    sys.exit(run())
