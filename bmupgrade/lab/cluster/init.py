"""PID 1 of a lab node: mount its private filesystem, start its daemons, reap orphans.

Started by the supervisor inside the node's namespaces (`nsenter --net` + `unshare --mount
--uts --ipc --pid --fork --mount-proc`). It refuses to start anything unless /etc, /usr, /var
and /root are the node's overlays: apt and dpkg in a node must never write the host's
/var/lib/dpkg. When it dies (SIGKILL = pulled plug), the kernel kills every process of the node.

    python3 -m bmupgrade.lab.cluster.init NODE UPPER_DIR WORK_DIR SHARED_DIR GENERATION
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

LAYERS = ("etc", "usr", "var", "root")
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
       "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}
PROVISIONED = "/var/lib/bmlab/provisioned"
PROVISION = ("apt-get update -q && apt-get install -y -q -o Dpkg::Options::=--force-confold "
             + " ".join("%s=4.9.2" % p for p in ("bm-full", "bm-core", "bm-conf", "bm-client-access",
                                                   "bm-core-upgraders", "bm-plugin-cli-setup",
                                                   "bm-plugin-filehosting")))
LOG = "/var/log/bmlab/init.log"


def log(msg: str) -> None:
    with open(LOG, "a") as f:
        f.write("%.3f %s\n" % (time.time(), msg))


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, env=ENV)


def mount_fs(upper: str, work: str, shared: str) -> None:
    """The node's private view: overlays, tmpfs /run /dev/shm /tmp, its own sysfs, /run/bmlab."""
    for layer in LAYERS:
        sh("mount", "-t", "overlay", "overlay", "-o", "lowerdir=/%s,upperdir=%s/%s,workdir=%s/%s"
           % (layer, upper, layer, work, layer), "/" + layer)
    overlays = {line.split()[4] for line in open("/proc/self/mountinfo") if " - overlay " in line}
    missing = [layer for layer in LAYERS if "/" + layer not in overlays]
    if missing:
        raise SystemExit("init: /%s is not the node's overlay: refusing to start" % ", /".join(missing))
    sh("mount", "-t", "tmpfs", "-o", "mode=755,size=64m", "tmpfs", "/run")
    sh("mount", "-t", "tmpfs", "-o", "mode=1777,size=64m", "tmpfs", "/dev/shm")
    os.makedirs("/run/bmlab", exist_ok=True)
    sh("mount", "--bind", shared, "/run/bmlab")  # before /tmp is hidden (the lab may live there)
    sh("mount", "-t", "tmpfs", "-o", "mode=1777,size=256m", "tmpfs", "/tmp")
    sh("mount", "-t", "sysfs", "sysfs", "/sys")
    for d in ("/run/sshd", "/run/bmlab-units", "/var/log/bmlab", "/var/log/corosync", "/var/log/pacemaker",
              "/var/lib/bmlab/faults"):
        os.makedirs(d, exist_ok=True)
    os.chmod("/run/sshd", 0o755)
    subprocess.run(["chown", "hacluster:haclient", "/var/log/pacemaker"], env=ENV)


def provision() -> None:
    """First boot only: install bm-full 4.9.2 from the lab repository, then stop what the
    postinsts started (Pacemaker, not dpkg, decides where BlueMind runs)."""
    if os.path.exists(PROVISIONED):
        return
    with open("/var/log/bmlab/provision.log", "ab") as out:
        r = subprocess.run(["sh", "-c", PROVISION], stdout=out, stderr=subprocess.STDOUT, env=ENV)
    if r.returncode:
        raise SystemExit("init: provisioning failed (see /var/log/bmlab/provision.log)")
    open(PROVISIONED, "w").close()
    stop_daemons("/run/bmlab-units")
    subprocess.run(["rm", "-rf", "/run/bmlab-units"])
    os.makedirs("/run/bmlab-units")


def stop_daemons(run: str) -> None:
    """SIGTERM the daemons the postinsts started (bm-nginx), and wait: forgetting their pid files
    would leave them holding their ports when the enabled units start."""
    pids = []
    for f in os.listdir(run):
        if f.endswith(".pid"):
            try:
                with open(os.path.join(run, f)) as fh:
                    pid = int(fh.read().split()[0])
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            except (OSError, ValueError, IndexError):
                pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(os.path.exists("/proc/%d" % p) and _reap(p) for p in pids):
        time.sleep(0.02)


def _reap(pid: int) -> bool:
    """Still running? (a dead child of ours, now a zombie, is reaped: PID 1 adopts the daemons)"""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    except ChildProcessError:
        return True  # not our child: /proc says whether it lives


def start_enabled_units() -> list[subprocess.Popen]:
    """What systemd would do at boot: start the enabled units (bluemind.target is Pacemaker's),
    alongside the cluster daemons; main() waits for them before the node says it is ready."""
    try:
        units = [u for u in os.listdir("/etc/bmlab-units") if not u.endswith((".masked", ".exec"))]
    except FileNotFoundError:
        return []
    return [subprocess.Popen(["/usr/bin/systemctl", "start", u], env=ENV, stdin=subprocess.DEVNULL)
            for u in units if u != "bluemind.target"]


def wait_corosync(timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(["corosync-cmapctl", "-g", "runtime.votequorum.this_node_id"],
                           capture_output=True, env=ENV)
        if r.returncode == 0:
            return
        time.sleep(0.05)
    raise SystemExit("init: corosync did not answer within %.0f s" % timeout)


def daemons() -> dict[int, str]:
    """corosync, then (once it answers) pacemakerd, then sshd (keepalived labs: sshd only;
    keepalived is an enabled unit)."""
    procs = {}
    if os.path.exists("/etc/bmlab-units/keepalived.service.exec"):
        return dict(sshd())
    p = subprocess.Popen(["corosync", "-f"], env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=open("/var/log/corosync/stderr.log", "ab"))
    procs[p.pid] = "corosync"
    wait_corosync()
    penv = dict(ENV, PCMK_logfacility="none", PCMK_logfile="/var/log/pacemaker/pacemaker.log")
    p = subprocess.Popen(["pacemakerd"], env=penv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=open("/var/log/pacemaker/stderr.log", "ab"))
    procs[p.pid] = "pacemakerd"
    procs.update(sshd())
    return procs


def sshd() -> dict[int, str]:
    p = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", "/etc/ssh/bmlab_sshd_config", "-E", "/var/log/bmlab/sshd.log"],
                         env=ENV, stdin=subprocess.DEVNULL)
    return {p.pid: "sshd"}


def reap(procs: dict[int, str]) -> None:
    """Reap every child and orphan forever; SIGTERM ends the node (everything is killed)."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.5)
            continue
        except InterruptedError:
            continue
        if pid in procs:
            log("%s (pid %d) exited with status %d" % (procs.pop(pid), pid, status))
    os.kill(-1, signal.SIGKILL)


def main(argv: list[str]) -> int:
    node, upper, work, shared, gen = argv
    if os.getpid() != 1:
        raise SystemExit("init: must be PID 1 of a new PID namespace")
    mount_fs(upper, work, shared)
    with open("/run/bmlab-gen", "w") as f:
        f.write(gen + "\n")
    sh("hostname", node)
    log("boot generation %s" % gen)
    provision()
    units = start_enabled_units()
    procs = daemons()
    for p in units:
        p.wait()
    with open("/run/bmlab-ready", "w") as f:
        f.write("%.3f\n" % time.time())
    log("daemons started: %s" % ", ".join("%s=%d" % (n, p) for p, n in procs.items()))
    reap(procs)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except SystemExit as e:
        if isinstance(e.code, str):
            try:
                log(e.code)
            except OSError:
                pass
            print(e.code, file=sys.stderr)
            sys.exit(1)
        raise
