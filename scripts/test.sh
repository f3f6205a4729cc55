#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, lab tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
