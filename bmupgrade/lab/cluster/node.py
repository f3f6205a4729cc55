"""Running commands inside a live node, from the host, without ssh.

`nsenter -t INIT -a` joins all the node's namespaces (its overlays, its /proc, its network),
so what it sees is exactly what an ssh session on the node sees. Used by `lab status`, the
faults and the tests; the tool under test always goes through ssh.
"""

from __future__ import annotations

import json
import subprocess

from bmupgrade.lab.cluster.config import ClusterConfig, ClusterLabError

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def supervisor_state(cfg: ClusterConfig) -> dict:
    try:
        return json.loads((cfg.path / "supervisor.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def init_pid(cfg: ClusterConfig, name: str) -> int | None:
    st = supervisor_state(cfg).get("nodes", {}).get(name, {})
    return st.get("init") if st.get("power") == "on" else None


def run(cfg: ClusterConfig, name: str, command: str, *, timeout: float = 60, check: bool = False,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run a shell command in node `name` (its namespaces, root, a login-like PATH)."""
    pid = init_pid(cfg, name)
    if not pid:
        raise ClusterLabError("node %s is powered off" % name)
    r = subprocess.run(["nsenter", "-t", str(pid), "-a", "--", "env", "-i", "PATH=" + PATH, "HOME=/root",
                        "LANG=C.UTF-8", "sh", "-c", command], capture_output=True, text=True, timeout=timeout,
                       input=input)
    if check and r.returncode:
        raise ClusterLabError("%s: %r exited %d: %s" % (name, command, r.returncode, (r.stderr or r.stdout).strip()))
    return r


def spawn(cfg: ClusterConfig, name: str, command: str) -> int:
    """Start a long-lived process in the node (detached; the node's init reaps it). Returns
    the host pid of the nsenter'd shell."""
    pid = init_pid(cfg, name)
    if not pid:
        raise ClusterLabError("node %s is powered off" % name)
    p = subprocess.Popen(["nsenter", "-t", str(pid), "-a", "--", "env", "-i", "PATH=" + PATH, "HOME=/root",
                          "sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    return p.pid


def versions(cfg: ClusterConfig, name: str) -> dict[str, str]:
    """Installed bm-* packages -> version (dpkg's own answer)."""
    r = run(cfg, name, "dpkg-query -W -f='${Package} ${Version} ${Status}\\n' 'bm-*'")
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] and "not-installed" not in parts[2]:
            out[parts[0]] = parts[1] if parts[2].endswith("installed") else "%s (%s)" % (parts[1], parts[2])
    return out


def holds_vip(cfg: ClusterConfig, name: str) -> bool:
    """The runbook's own probe, `ip -o addr show to VIP`, in the node's network namespace."""
    n = cfg.node(name)
    r = subprocess.run(["ip", "-n", n.netns, "-o", "addr", "show", "to", cfg.vip], capture_output=True, text=True)
    return bool(r.stdout.strip())
