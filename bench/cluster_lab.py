#!/usr/bin/env python3
"""Boot time, teardown time and memory of the real cluster lab (`bmupgrade lab up --cluster`).

    sudo .venv/bin/python bench/cluster_lab.py [--cycles 3] [--dir D] [--name N] [--subnet S]

Not a test: it prints a table (the issue's targets: ready <= 10 s, teardown <= 3 s, memory
<= 400 MB). "cold" is the first boot of a new lab directory (it builds the apt repository and
installs bm-full 4.9.2 in both nodes); "warm" boots an existing one, as `lab up` does after
`lab down`. Ready = both nodes online in crm_mon, every resource started, sshd answering on
both. Memory = the sum of PSS (/proc/PID/smaps_rollup) of every process in the lab's network
namespaces, measured once the cluster is ready. Also: a power cut of the VIP holder until the
VIP answers on the peer (fencing included), and `crm_resource --move` until the VIP moved.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bmupgrade.lab.cluster import faults, netns  # noqa: E402
from bmupgrade.lab.cluster.lab import ClusterLab, _netns_pids  # noqa: E402


def pss_mb(lab: ClusterLab) -> tuple[float, int]:
    inodes = {netns.netns_inode(n.netns) for n in lab.cfg.nodes} - {None}
    total, count = 0, 0
    for pid in _netns_pids(inodes):
        try:
            for line in open("/proc/%d/smaps_rollup" % pid):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    count += 1
        except OSError:
            pass
    return total / 1024, count


def timed(fn) -> float:
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def wait(cond, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit("bench: timed out")
        time.sleep(0.02)


def cycle(lab: ClusterLab, samples: dict) -> None:
    samples["warm boot → ready (s)"].append(timed(lab.up))
    mb, n = pss_mb(lab)
    samples["memory, PSS of the cluster (MB)"].append(mb)
    samples["processes in the cluster"].append(n)
    t = time.monotonic()
    faults.vip_move(lab, "bm2")
    samples["crm_resource --move → VIP on the peer, + --clear (s)"].append(time.monotonic() - t)
    t = time.monotonic()
    faults.power_off(lab, "bm2")
    wait(lambda: lab.vip_holders() == ["bm1"])
    samples["power cut of the VIP holder → VIP on the peer (s)"].append(time.monotonic() - t)
    faults.power_on(lab, "bm2")
    left = []
    samples["teardown (s)"].append(timed(lambda: left.extend(lab.down())))
    if left:
        raise SystemExit("bench: left behind: %s" % left)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--name", default="bmbench")
    ap.add_argument("--subnet", default="198.51.100.0/24")
    a = ap.parse_args()
    d = Path(a.dir or tempfile.mkdtemp(prefix="bmlab-bench-")) / "lab"
    lab = ClusterLab(d, name=a.name, subnet=a.subnet)
    samples: dict[str, list[float]] = {k: [] for k in (
        "cold boot → ready (s)", "warm boot → ready (s)", "teardown (s)", "memory, PSS of the cluster (MB)",
        "processes in the cluster", "crm_resource --move → VIP on the peer, + --clear (s)",
        "power cut of the VIP holder → VIP on the peer (s)")}
    try:
        samples["cold boot → ready (s)"].append(timed(lab.up))
        samples["teardown (s)"].append(timed(lab.down))
        for _ in range(a.cycles):
            cycle(lab, samples)
    finally:
        lab.down()
        if not a.dir:
            shutil.rmtree(d.parent, ignore_errors=True)
    print("%-55s %8s %8s %8s  n" % ("cluster lab (%d cores)" % os.cpu_count(), "median", "min", "max"))
    for k, v in samples.items():
        if v:
            print("%-55s %8.2f %8.2f %8.2f  %d" % (k, statistics.median(v), min(v), max(v), len(v)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
