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

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
echo "setup: ok ($(.venv/bin/python --version), $(/usr/sbin/sshd -V 2>&1 | head -1))" >&2
