"""The journal's share of the per-step cost: time per transition as the run grows.

Issue 11 measured the old journal (a full rewrite + two fsyncs per transition): 0.5 ms per save
at 10 steps, 9.4 ms at 1000, 44 ms at 5000 — O(N) per step, O(N^2) per run. The append-only
log should be flat. This script plays a run's transitions (started + done per step on two
nodes) into a journal of N steps in a temporary directory on the same disk as the state dir and
reports the median time per transition for several N, and the compaction at the end.

    .venv/bin/python bench/journal_cost.py [--steps 10,200,1000,5000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bmupgrade.journal import Journal


def one(n: int, base: Path) -> dict:
    ids = [f"s{i}" for i in range(n)]
    j = Journal.create(base / f"n{n}", runbook={"path": "rb", "sha256": "x", "name": "bench"}, step_ids=ids)
    times = []
    for sid in ids:
        for state in ("started", "done"):
            t0 = time.perf_counter()
            j.mark(sid, ["bm1", "bm2"], state, node_fields={"bm1": {"t": 1.0}, "bm2": {"t": 1.0}})
            times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    j.snapshot()
    compact = time.perf_counter() - t0
    t0 = time.perf_counter()
    Journal.load(j.path)
    load = time.perf_counter() - t0
    return {"steps": n, "per_transition_ms": statistics.median(times) * 1000,
            "p90_ms": sorted(times)[int(len(times) * 0.9)] * 1000, "compact_ms": compact * 1000,
            "load_ms": load * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="10,200,1000,5000")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        rows = [one(int(n), Path(d)) for n in args.steps.split(",")]
    print(f"{'steps':>6} {'per transition (median)':>24} {'p90':>9} {'compaction':>11} {'load':>9}")
    for r in rows:
        print(f"{r['steps']:>6} {r['per_transition_ms']:>21.3f} ms {r['p90_ms']:>6.3f} ms {r['compact_ms']:>8.1f} ms "
              f"{r['load_ms']:>6.1f} ms")
    flat = rows[-1]["per_transition_ms"] / rows[0]["per_transition_ms"]
    print(f"ratio per transition, {rows[-1]['steps']} vs {rows[0]['steps']} steps: {flat:.2f} (flat = 1.0)")


if __name__ == "__main__":
    main()
