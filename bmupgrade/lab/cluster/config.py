"""What one cluster lab is: its name, subnet, directory, and every name derived from them.

All kernel object names (bridge, veths, network namespaces) derive from the lab name so that
`lab down` can find and remove them even when the supervisor died and left no state behind,
and two labs with different names never touch each other's objects.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

NODE_NAMES = ("bm1", "bm2")
DEFAULT_NAME = "bmlab"
DEFAULT_SUBNET = "198.51.100.0/24"  # TEST-NET-2: the host may already use TEST-NET-1
MARKER = "cluster-lab.json"  # not cluster.json: the stand-in lab already has one
HA_KINDS = ("pacemaker", "keepalived")
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")  # interface names are limited to 15 bytes


class ClusterLabError(Exception):
    """A one-line problem a person can act on (the CLI prints it and exits 2)."""


@dataclass
class Node:
    name: str
    index: int  # 1-based
    address: str
    netns: str
    veth_host: str
    veth_peer: str


@dataclass
class ClusterConfig:
    dir: str
    name: str = DEFAULT_NAME
    subnet: str = DEFAULT_SUBNET
    ha: str = "pacemaker"  # or "keepalived": VRRP instead of Corosync/Pacemaker

    def __post_init__(self):
        self.dir = os.path.abspath(self.dir)
        if self.ha not in HA_KINDS:
            raise ClusterLabError("--ha must be %s (got %r)" % (" or ".join(HA_KINDS), self.ha))
        if not NAME_RE.match(self.name):
            raise ClusterLabError("--name must be 1-8 lowercase letters/digits starting with a letter (got %r)"
                                  % self.name)
        try:
            net = ipaddress.ip_network(self.subnet, strict=True)
        except ValueError as e:
            raise ClusterLabError("--subnet: %s" % e) from None
        if net.version != 4 or net.prefixlen > 24:
            raise ClusterLabError("--subnet must be an IPv4 network of /24 or larger (got %s)" % self.subnet)
        self.subnet = str(net)

    # ---- addresses and names
    def _host(self, n: int) -> str:
        return str(ipaddress.ip_network(self.subnet).network_address + n)

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    @property
    def gateway(self) -> str:
        """The host side (the bridge's address): where tests and the CLI ssh from."""
        return self._host(1)

    @property
    def vip(self) -> str:
        return self._host(10)

    @property
    def bridge(self) -> str:
        return "bmb-" + self.name

    @property
    def nodes(self) -> list[Node]:
        return [Node(n, i, self._host(10 + i), "bmlab-%s-%s" % (self.name, n), "bmv-%s-%d" % (self.name, i),
                     "bmp-%s-%d" % (self.name, i)) for i, n in enumerate(NODE_NAMES, 1)]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ClusterLabError("unknown node %r (nodes: %s)" % (name, ", ".join(NODE_NAMES)))

    # ---- paths
    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def shared(self) -> Path:
        """Bind-mounted at /run/bmlab in every node: the supervisor socket and the apt repository."""
        return self.path / "shared"

    @property
    def socket(self) -> Path:
        return self.shared / "supervisor.sock"

    @property
    def repo(self) -> Path:
        return self.shared / "repo"

    def node_dir(self, name: str) -> Path:
        return self.path / "nodes" / name

    # ---- persistence
    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / (MARKER + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path / MARKER)

    @classmethod
    def load(cls, dir: str | os.PathLike) -> "ClusterConfig":
        path = Path(os.path.abspath(dir)) / MARKER
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClusterLabError("no cluster lab in %s (run: bmupgrade lab up --cluster --dir %s)"
                                  % (path.parent, path.parent)) from None
        return cls(**{k: data[k] for k in ("dir", "name", "subnet", "ha") if k in data})


REGISTRY = "/run/bmlab-cluster"  # NAME -> the lab directory owning the kernel objects of that name


def owner(cfg: ClusterConfig) -> str | None:
    """The directory of the lab that created the network objects named after cfg.name."""
    try:
        with open(os.path.join(REGISTRY, cfg.name)) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def claim(cfg: ClusterConfig) -> None:
    os.makedirs(REGISTRY, mode=0o700, exist_ok=True)
    with open(os.path.join(REGISTRY, cfg.name), "w") as f:
        f.write(cfg.dir + "\n")


def release(cfg: ClusterConfig) -> None:
    if owner(cfg) == cfg.dir:
        os.unlink(os.path.join(REGISTRY, cfg.name))
        try:
            os.rmdir(REGISTRY)
        except OSError:
            pass


def is_cluster_lab(dir: str | os.PathLike) -> bool:
    return (Path(os.path.abspath(dir)) / MARKER).is_file()
