#!/usr/bin/env bash
# Install everything bmupgrade, its lab and its tests need on a fresh Debian machine.
# Idempotent: a second run only checks. Root installs openssh-server; others are told how.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/sbin/sshd ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing openssh-server (the lab's nodes are real sshd processes)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
  else
    echo "setup: /usr/sbin/sshd is missing; run: sudo apt-get install openssh-server" >&2
    exit 2
  fi
fi

# --cluster: also the stack of the real cluster lab (`bmupgrade lab up --cluster`), root only.
# Not by default: it installs the Corosync/Pacemaker daemons, which do not belong on a laptop.
CLUSTER_PKGS="pacemaker pacemaker-cli-utils corosync resource-agents keepalived openssh-server openssh-client iproute2 util-linux dpkg-dev apt-utils rsync psmisc openssl curl"
if [ "${1:-}" = "--cluster" ]; then
  missing=$(for p in $CLUSTER_PKGS; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"; done)
  if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "setup: the cluster lab needs root: sudo apt-get install --no-install-recommends" $missing >&2
      exit 2
    fi
    echo "setup: installing the cluster lab stack:" $missing >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[test]'
# Bytecode for bmupgrade's own modules, as a regular install would have: where
# PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile them from source.
.venv/bin/python -m compileall -q bmupgrade >/dev/null
echo "setup: ok ($(.venv/bin/python --version), $(/usr/sbin/sshd -V 2>&1 | head -1))" >&2
