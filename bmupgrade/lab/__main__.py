"""`python3 -m bmupgrade.lab up|down|status|failover|fault --dir D`: the lab without typer.

Stdlib only, for the system python and other users (e.g. `runuser -u bmlabtest -- /usr/bin/python3
-m bmupgrade.lab up --dir /tmp/x` with PYTHONPATH pointing at the repository). Same commands as
`bmupgrade lab`; errors are one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys

FAULT_OPTIONS = [  # (flag, dest, type, help)
    ("--command", "command", str, "words the call must contain in order, e.g. 'apt-get install'; !WORD excludes"),
    ("--exit-code", "exit_code", int, "fail: exit code"),
    ("--times", "times", int, "only the first N matching calls (default: always; drop/vip-move: 1)"),
    ("--message", "message", str, "fail: message on stderr"),
    ("--seconds", "seconds", float, "hang: seconds"),
    ("--when", "when", str, "drop: before|after the command runs (default after)"),
    ("--download", "download", float, "slow-apt: download seconds"),
    ("--install", "install", float, "slow-apt: install seconds"),
    ("--to", "to", str, "vip-move: destination node"),
    ("--file", "file", str, "config-drift: file (default /etc/aliases)"),
    ("--package", "package", str, "half-configured/held-package: package (default bm-core)"),
    ("--pid", "pid", int, "dpkg-lock: holder pid (default 4242)"),
    ("--process", "process", str, "dpkg-lock: holder name (default unattended-upgr)"),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bmupgrade.lab", description="the bmupgrade rehearsal lab")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("up", "down", "status", "failover", "fault"):
        sp = sub.add_parser(name)
        sp.add_argument("--dir", default="lab", help="lab directory (default ./lab)")
        if name == "up":
            sp.add_argument("--reset", action="store_true", help="back to a fresh 4.9.2 cluster")
        if name in ("up", "status"):
            sp.add_argument("--json", action="store_true")
        if name == "failover":
            sp.add_argument("--to", default=None)
        if name == "fault":
            sp.add_argument("name", help="fault name, or 'clear'")
            sp.add_argument("--node", default=None)
            for flag, dest, typ, hlp in FAULT_OPTIONS:
                sp.add_argument(flag, dest=dest, type=typ, default=None, help=hlp)
    a = p.parse_args(argv)
    from bmupgrade.lab.core import Lab, LabError, format_status, usage_text
    lab = Lab(a.dir)
    try:
        if a.cmd == "up":
            lab.up(reset=a.reset)
            if a.json:
                st = lab.status()
                st["startup_seconds"] = lab.startup_seconds
                print(json.dumps(st))
            else:
                print(usage_text(lab))
        elif a.cmd == "down":
            lab.down()
            print("lab %s stopped" % lab.dir)
        elif a.cmd == "status":
            st = lab.status()
            print(json.dumps(st) if a.json else format_status(st))
        elif a.cmd == "failover":
            print("VIP %s and resources now on %s" % (lab.public_ip, lab.failover(a.to)))
        elif a.cmd == "fault":
            opts = {dest: getattr(a, dest) for _, dest, _, _ in FAULT_OPTIONS if getattr(a, dest) is not None}
            if a.name == "clear":
                lab.clear_faults()
                print("faults cleared")
            else:
                lab.fault(a.name, node=a.node, **opts)
                print("fault %s on %s" % (a.name, a.node or "all nodes"))
    except (LabError, OSError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
