#!/usr/bin/env bash
# The main job, on a fresh machine: set up, start a fresh two-node lab cluster (real sshd on
# loopback, simulated BlueMind 4.9.2), and upgrade it to 4.9.3 with the bundled runbook,
# unattended. The lab keeps running afterwards so you can look around; `.venv/bin/bmupgrade
# lab down --dir lab` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
B=.venv/bin/bmupgrade
$B lab down --dir lab >/dev/null 2>&1 || true
rm -rf lab
$B lab up --dir lab
set +e
$B run runbooks/bluemind-ha-pacemaker.yaml -i lab/inventory.yaml --state-dir lab/state \
   --yes --ack backup,prepare "$@"
rc=$?
set -e
echo
echo "Exit code: $rc.  Look around:  $B status --state-dir lab/state   |   $B lab status --dir lab"
echo "Guided (interactive) rehearsal: $B lab down --dir lab; rm -rf lab; $B lab up --dir lab; \\"
echo "  $B run runbooks/bluemind-ha-pacemaker.yaml -i lab/inventory.yaml --state-dir lab/state"
exit $rc
