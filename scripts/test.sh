#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, lab tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Three worker processes (pytest-xdist), one test file per worker so that each file's
# module-scoped lab boots once; the cluster labs have their own names and subnets. Three on
# two cores: the cluster tests spend much of their time waiting on real Pacemaker/VRRP timers.
# `scripts/test.sh -n 0` runs in one process (e.g. with -s or pdb).
exec .venv/bin/python -m pytest -n "${BMUPGRADE_TEST_WORKERS:-3}" --dist loadfile "$@"
