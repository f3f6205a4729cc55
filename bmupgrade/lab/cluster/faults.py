"""Real faults for the cluster lab: each one is what would happen on real servers.

power-off / reboot  SIGKILL of the node's PID 1 through the supervisor (the peer fences it)
power-on            plug back in (after power-off, which holds the node off)
cut-link / restore-link   the node's cable to the bridge, host side (split brain -> fencing)
vip-move            `crm_resource --move` to the other node, wait, then `--clear`
resource-failure    bluemind.target stopped behind Pacemaker's back (monitor fails, recovery)
dpkg-lock           a real process holding /var/lib/dpkg/lock-frontend (fcntl, as apt does)
held-package        a real `apt-mark hold`
postinst-fail-once  bm-conf's next postinst fails: the package stays half-configured
disk-full           /var/cache/apt/archives on a nearly full 32 MB tmpfs
backup-running      a DataProtect backup in progress, as BlueMind's REST API (bm-nginx) reports it
clear               undo them all (power on, links up, unhold, unlock, unmount, cleanup)
"""

from __future__ import annotations

import json
import socket
import time

from bmupgrade.lab.cluster import netns, node
from bmupgrade.lab.cluster.cib import VIP_RESOURCE
from bmupgrade.lab.cluster.config import ClusterLabError

LOCK_HOLDER = ("exec python3 -c 'import fcntl,os,time\n"
               "f=open(\"/var/lib/dpkg/lock-frontend\",\"w\")\nfcntl.lockf(f,fcntl.LOCK_EX)\n"
               "open(\"/run/bmlab-lock-holder\",\"w\").write(str(os.getpid()))\ntime.sleep(86400)'")
ARCHIVES = "/var/cache/apt/archives"
BACKUP_RUNNING = "/var/lib/bmlab/faults/backup-running"  # read by bm-nginx (files/bm-nginx)


def supervisor(lab, request: dict, timeout: float = 30) -> dict:
    """One request to the supervisor's power socket (as the fence agent does)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(lab.cfg.socket))
        s.sendall((json.dumps(dict(request, **{"from": "lab"})) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        raise ClusterLabError("the lab supervisor does not answer (%s): is the lab up?" % e) from None
    finally:
        s.close()
    reply = json.loads(data or b"{}")
    if not reply.get("ok"):
        raise ClusterLabError("supervisor: %s" % reply.get("error", "refused"))
    return reply


def _other(lab, name: str) -> str:
    return next(n.name for n in lab.cfg.nodes if n.name != name)


def _wait(what: str, cond, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise ClusterLabError("timed out after %.0f s waiting for %s" % (timeout, what))


def power_off(lab, name: str) -> None:
    supervisor(lab, {"action": "off", "node": name, "hold": True})


def power_on(lab, name: str) -> None:
    supervisor(lab, {"action": "on", "node": name})


def reboot(lab, name: str) -> None:
    supervisor(lab, {"action": "reboot", "node": name})


def cut_link(lab, name: str) -> None:
    netns.cut(lab.cfg.node(name), True)


def restore_link(lab, name: str) -> None:
    netns.cut(lab.cfg.node(name), False)


def vip_move(lab, to: str | None = None) -> str:
    """Move the VIP (and with it BlueMind) the way an admin does; returns the new holder."""
    if lab.cfg.ha != "pacemaker":
        raise ClusterLabError("vip-move uses crm_resource: Pacemaker labs only (keepalived: power-off the MASTER)")
    holders = lab.vip_holders()
    src = holders[0] if holders else lab.cfg.nodes[0].name
    dest = to or _other(lab, src)
    runner = dest if node.init_pid(lab.cfg, dest) else src
    lab.run(runner, "crm_resource --resource %s --move --node %s" % (VIP_RESOURCE, dest), check=True)
    try:
        _wait("the VIP on %s" % dest, lambda: lab.vip_holders() == [dest])
        _wait("bluemind started on %s" % dest, lambda: lab.crm_mon(runner)["resources"]["bluemind"]["nodes"] == [dest])
    finally:
        lab.run(runner, "crm_resource --resource %s --clear" % VIP_RESOURCE, check=True)
    return dest


def resource_failure(lab, name: str | None = None) -> str:
    """Stop bluemind.target behind the HA manager's back on the node running it."""
    name = name or (lab.vip_holders() or [lab.cfg.nodes[0].name])[0]
    lab.run(name, "systemctl stop bluemind.target", check=True)
    return name


def dpkg_lock(lab, name: str) -> None:
    node.spawn(lab.cfg, name, LOCK_HOLDER)
    _wait("the dpkg lock held on %s" % name, lambda: lab.run(name, "test -e /run/bmlab-lock-holder").returncode == 0, 10)


def held_package(lab, name: str, package: str = "bm-core") -> None:
    lab.run(name, "apt-mark hold %s" % package, check=True)


def postinst_fail_once(lab, name: str) -> None:
    from bmupgrade.lab.cluster.packages import FAIL_ONCE
    lab.run(name, "mkdir -p $(dirname %s) && touch %s" % (FAIL_ONCE, FAIL_ONCE), check=True)


def disk_full(lab, name: str) -> None:
    lab.run(name, "mountpoint -q %s || { mount -t tmpfs -o size=32m bmlab-full %s && mkdir -p %s/partial && "
                  "fallocate -l 31m %s/.bmlab-filler; }" % (ARCHIVES, ARCHIVES, ARCHIVES, ARCHIVES), check=True)


def backup_running(lab, name: str, on: bool = True) -> None:
    """The node's API lists a DataProtect execution IN_PROGRESS (or, on=False, none again)."""
    lab.run(name, ("mkdir -p $(dirname %s) && touch %s" if on else "rm -f %s %s")
            % (BACKUP_RUNNING, BACKUP_RUNNING), check=True)


def clear(lab) -> None:
    """Undo every fault; the cluster is then healthy again (both online, failures cleaned)."""
    for n in lab.cfg.nodes:
        restore_link(lab, n.name)
    for n in lab.cfg.nodes:
        if not node.init_pid(lab.cfg, n.name):
            power_on(lab, n.name)
    for n in lab.cfg.nodes:
        lab.run(n.name, "[ -s /run/bmlab-lock-holder ] && kill $(cat /run/bmlab-lock-holder); rm -f /run/bmlab-lock-holder; "
                        "apt-mark showhold | xargs -r apt-mark unhold >/dev/null; "
                        "rm -f /var/lib/bmlab/faults/postinst-fail-once %s; "
                        "mountpoint -q %s && umount %s; true" % (BACKUP_RUNNING, ARCHIVES, ARCHIVES))
    lab.wait_ready()
    if lab.cfg.ha == "pacemaker":
        lab.run(lab.cfg.nodes[0].name, "crm_resource --cleanup >/dev/null && crm_resource --wait --timeout=30",
                check=True)
        lab.wait_ready()


FAULTS = {  # name -> (function, takes a node)
    "power-off": (power_off, True), "power-on": (power_on, True), "reboot": (reboot, True),
    "cut-link": (cut_link, True), "restore-link": (restore_link, True), "vip-move": (vip_move, False),
    "resource-failure": (resource_failure, False), "dpkg-lock": (dpkg_lock, True),
    "held-package": (held_package, True), "postinst-fail-once": (postinst_fail_once, True),
    "disk-full": (disk_full, True), "backup-running": (backup_running, True),
}
