"""The lab's network: a host bridge and, per node, a named network namespace with a veth.

The bridge carries the subnet's .1 so the host (tests, the CLI, ssh) reaches the nodes; the
nodes get .11 and .12 on their eth0 and no default route: nothing leaves the machine.
Teardown deletes the host-side veth first (deleting a netns frees its veth only 1-2 s later)
and works from the names alone, so it also cleans up after a SIGKILLed supervisor.
"""

from __future__ import annotations

import os
import subprocess

from bmupgrade.lab.cluster.config import ClusterConfig, ClusterLabError, Node

NETNS_DIR = "/run/netns"


def ip(*args: str, check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess:
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode:
        raise ClusterLabError("%s: %s" % (" ".join(cmd), (r.stderr or r.stdout).strip()))
    return r


def link_exists(name: str) -> bool:
    return os.path.exists("/sys/class/net/%s" % name)


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def in_use(cfg: ClusterConfig) -> str | None:
    """Why this lab's network cannot be created (name or subnet taken), or None."""
    if link_exists(cfg.bridge) or any(netns_exists(n.netns) for n in cfg.nodes):
        return "a cluster lab named %r is already running (bmupgrade lab down --dir ... first, or --name)" % cfg.name
    routes = ip("-4", "route", "show", "to", "match", cfg.gateway).stdout
    for line in routes.splitlines():
        if not line.startswith("default"):
            return "subnet %s is already routed on this machine (%s): choose another --subnet" % (
                cfg.subnet, line.strip())
    return None


def create(cfg: ClusterConfig) -> None:
    """Bridge, then one netns + veth per node, addresses up."""
    ip("link", "add", cfg.bridge, "type", "bridge")
    ip("addr", "add", "%s/%d" % (cfg.gateway, cfg.prefixlen), "dev", cfg.bridge)
    ip("link", "set", cfg.bridge, "up")
    for n in cfg.nodes:
        ip("netns", "add", n.netns)
        ip("link", "add", n.veth_host, "type", "veth", "peer", "name", n.veth_peer)
        ip("link", "set", n.veth_peer, "netns", n.netns)
        ip("link", "set", n.veth_peer, "name", "eth0", netns=n.netns)
        ip("link", "set", n.veth_host, "master", cfg.bridge, "up")
        ip("link", "set", "lo", "up", netns=n.netns)
        node_link_up(cfg, n)


def node_link_up(cfg: ClusterConfig, n: Node) -> None:
    """eth0 up with only the node's own address (after a power-on, too)."""
    ip("addr", "flush", "dev", "eth0", netns=n.netns)
    ip("addr", "add", "%s/%d" % (n.address, cfg.prefixlen), "dev", "eth0", netns=n.netns)
    ip("link", "set", "eth0", "up", netns=n.netns)


def node_link_down(n: Node) -> None:
    """A powered-off node: no address, link down (else its VIP would stay reachable)."""
    ip("addr", "flush", "dev", "eth0", netns=n.netns, check=False)
    ip("link", "set", "eth0", "down", netns=n.netns, check=False)


def cut(n: Node, cut: bool) -> None:
    """Cut (or restore) the cable between a node and the bridge, on the host side."""
    ip("link", "set", n.veth_host, "down" if cut else "up")


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(os.path.join(NETNS_DIR, name)).st_ino
    except OSError:
        return None


def destroy(cfg: ClusterConfig) -> list[str]:
    """Remove every network object of this lab that exists; returns what could not be removed."""
    problems = []
    for n in cfg.nodes:
        if link_exists(n.veth_host):
            r = ip("link", "del", n.veth_host, check=False)
            if r.returncode:
                problems.append(r.stderr.strip())
    for n in cfg.nodes:
        if netns_exists(n.netns):
            r = ip("netns", "del", n.netns, check=False)
            if r.returncode:
                problems.append(r.stderr.strip())
    if link_exists(cfg.bridge):
        r = ip("link", "del", cfg.bridge, check=False)
        if r.returncode:
            problems.append(r.stderr.strip())
    _drop_netns_dir()
    return problems


def _drop_netns_dir() -> None:
    """`ip netns add` bind-mounts /run/netns onto itself: unmount and remove it once empty."""
    try:
        if os.listdir(NETNS_DIR):
            return
    except FileNotFoundError:
        return
    subprocess.run(["umount", NETNS_DIR], capture_output=True)
    try:
        os.rmdir(NETNS_DIR)
    except OSError:
        pass
