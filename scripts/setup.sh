#!/usr/bin/env bash
# Install everything bmupgrade, its lab and its tests need on a fresh Debian machine.
# Idempotent: a second run only checks. Root installs openssh-server; others are told how.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: openssh-server always (the lab's nodes are real sshd processes); with
# --cluster, the real cluster lab's stack (Corosync, Pacemaker and its CLI tools, keepalived,
# ...), root only and not by default: those daemons do not belong on an admin's laptop.
need=""
[ -x /usr/sbin/sshd ] || need="openssh-server"
CLUSTER_PKGS="pacemaker pacemaker-cli-utils corosync resource-agents keepalived openssh-server openssh-client iproute2 util-linux dpkg-dev apt-utils rsync psmisc openssl curl"
if [ "${1:-}" = "--cluster" ]; then
  need="$need $(for p in $CLUSTER_PKGS; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"; done)"
fi
need=$(echo $need | tr ' ' '\n' | sort -u | tr '\n' ' ')
apt_pid=""
if [ -n "${need// /}" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages; run: sudo apt-get install --no-install-recommends" $need >&2
    exit 2
  fi
  echo "setup: installing" $need >&2
  # apt and pip do not depend on each other: apt runs while pip installs the Python side
  ( apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null ) &
  apt_pid=$!
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[test]'
# Bytecode for bmupgrade's own modules, as a regular install would have: where
# PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile them from source.
.venv/bin/python -m compileall -q bmupgrade >/dev/null
if [ -n "$apt_pid" ] && ! wait "$apt_pid"; then
  echo "setup: apt-get install $need failed (see above)" >&2
  exit 1
fi
echo "setup: ok ($(.venv/bin/python --version), $(/usr/sbin/sshd -V 2>&1 | head -1))" >&2
