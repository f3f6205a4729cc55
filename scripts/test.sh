#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, lab tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Four worker processes (pytest-xdist), one test file per worker so that each file's
# module-scoped lab boots once; the cluster labs have their own names and subnets. Four on two
# cores: the cluster tests spend much of their time waiting on real Pacemaker/VRRP timers (the
# suite measured 605 s with 3 workers, 558 s with 4, 552 s with 5 here).
# `scripts/test.sh -n 0` runs in one process (e.g. with -s or pdb).
exec .venv/bin/python -m pytest -n "${BMUPGRADE_TEST_WORKERS:-4}" --dist loadfile --no-loadscope-reorder "$@"
