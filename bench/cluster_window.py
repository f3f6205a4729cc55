#!/usr/bin/env python3
"""The HA-off window of the bundled Pacemaker runbook on the real cluster lab (issue 15).

    sudo .venv/bin/python bench/cluster_window.py [--reps 3] [--runbook bluemind-ha-pacemaker]

Each repetition boots a fresh cluster lab at BlueMind 4.9.2 (`up(reset=True)`: real Corosync,
Pacemaker, apt/dpkg, the lab's BlueMind API) and upgrades it unattended with the runbook as
shipped. From the run's journal:

* window = `ha.on_t - ha.off_t` (the HA-off command sent → the HA-on command returned);
* floor = the slowest node's `packages` command (real `apt-get install`, from the audit log,
  its verify excluded), what the window cannot be shorter than;
* where the rest goes: every step that ran inside the window, with its wall time (first send →
  last answer, over its nodes) and, between steps, bmupgrade's own time (the VIP re-probe
  before a step on `primary`/`secondary`, the verifies of `requires`, the journal, the display).

Not a test: it prints a table. The numbers depend on the machine (2 cores here, shared).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bmupgrade.lab.cluster.lab import ClusterLab  # noqa: E402

BMUPGRADE = [str(REPO / ".venv" / "bin" / "bmupgrade")] if (REPO / ".venv/bin/bmupgrade").exists() \
    else [sys.executable, "-m", "bmupgrade"]


def one_run(lab: ClusterLab, runbook: str, state: Path) -> dict:
    r = subprocess.run([*BMUPGRADE, "run", runbook, "-i", str(lab.inventory_path), "--state-dir", str(state),
                        "--yes", "--ack", "backup,prepare"], capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SystemExit("bench: the run failed (exit %d):\n%s" % (r.returncode, (r.stdout + r.stderr)[-3000:]))
    from bmupgrade.journal import Journal

    path = sorted((state / "runs").glob("*.journal.jsonl"))[-1]
    parts = window_parts(Journal.load(path).data)
    audit = [json.loads(line) for line in open(str(path).replace(".journal.jsonl", ".audit.jsonl"))]
    parts["install"] = max(e["duration"] for e in audit if e.get("key") == "packages" and "duration" in e)
    return parts


def window_parts(j: dict) -> dict:
    off, on = j["ha"]["off_t"], j["ha"]["on_t"]
    steps = []
    for sid, st in j["steps"].items():
        nodes = [n for n in st.get("nodes", {}).values() if n.get("t_start") and n.get("t_end")]
        if not nodes:
            continue
        start, end = min(n["t_start"] for n in nodes), max(n["t_end"] for n in nodes)
        if end < off or start > on:
            continue
        steps.append({"id": sid, "start": max(start, off), "end": min(end, on)})
    steps.sort(key=lambda s: s["start"])
    in_steps = sum(s["end"] - s["start"] for s in steps)
    return {"window": on - off, "steps": steps, "in_steps": in_steps,
            "between_steps": (on - off) - in_steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--runbook", default="bluemind-ha-pacemaker")
    ap.add_argument("--name", default="bmwin")
    ap.add_argument("--subnet", default="10.213.19.0/24")
    ap.add_argument("--output", default=None, help="write every sample as JSON here")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bmwin-"))
    lab = ClusterLab(work / "lab", name=a.name, subnet=a.subnet)
    runs = []
    try:
        for rep in range(a.reps):
            lab.up(reset=True)
            runs.append(one_run(lab, a.runbook, work / ("state-%d" % rep)))
            print("rep %d: window %.2f s, slowest install %.2f s" % (rep + 1, runs[-1]["window"],
                                                                    runs[-1]["install"]), file=sys.stderr)
    finally:
        left = lab.down()
        shutil.rmtree(work, ignore_errors=True)
        if left:
            print("bench: left behind: %s" % left, file=sys.stderr)
    report(runs, a)
    if a.output:
        Path(a.output).write_text(json.dumps({"runbook": a.runbook, "cores": os.cpu_count(), "runs": runs}, indent=1))
    return 0


def report(runs: list[dict], a) -> None:
    med = lambda xs: statistics.median(xs)  # noqa: E731
    w, i = [r["window"] for r in runs], [r["install"] for r in runs]
    print("HA-off window of %s on the real cluster lab (%d cores), %d runs: median (min-max)"
          % (a.runbook, os.cpu_count(), len(runs)))
    print("  window (ha.on_t - ha.off_t)      %6.2f s (%.2f-%.2f)" % (med(w), min(w), max(w)))
    print("  slowest node's apt-get install   %6.2f s (%.2f-%.2f)" % (med(i), min(i), max(i)))
    print("  window / install                 %6.2fx" % med([x / y for x, y in zip(w, i)]))
    print("  inside steps (first send -> last answer)  %6.2f s" % med([r["in_steps"] for r in runs]))
    print("  between steps (re-probes, requires, journal, display)  %6.2f s" % med([r["between_steps"] for r in runs]))
    print("  steps inside the window (median wall, s):")
    ids = [s["id"] for s in runs[0]["steps"]]
    for sid in ids:
        walls = [s["end"] - s["start"] for r in runs for s in r["steps"] if s["id"] == sid]
        print("    %-24s %6.2f" % (sid, med(walls)))


if __name__ == "__main__":
    sys.exit(main())
