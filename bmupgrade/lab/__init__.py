"""The lab: a two-node BlueMind HA cluster of real OpenSSH servers on loopback.

    from bmupgrade.lab import Lab
    lab = Lab("lab").up()            # bm1 on 127.0.0.11, bm2 on 127.0.0.12, free ports
    lab.node("bm1").ssh("apt-get update && apt-get install -y bm-full=4.9.3")
    lab.node("bm1").calls("apt-get install")    # the ledger
    lab.fault("fail", node="bm2", command="apt-get install", exit_code=100, times=1)
    lab.down()

Stdlib only, so `python3 -m bmupgrade.lab up --dir D` runs with the system python as any user.
The names are imported lazily: `bmupgrade.lab.cli` (typer) must not pay for the lab core.
"""

__all__ = ["FAULTS", "Lab", "LabError", "LabNode"]


def __getattr__(name):
    if name in __all__:
        from bmupgrade.lab import core

        return getattr(core, name)
    raise AttributeError("module 'bmupgrade.lab' has no attribute %r" % name)
