"""`bmupgrade lab ...`: start, inspect, break and stop the rehearsal lab.

Only typer is imported at import time (the main CLI must start fast); the lab itself is
imported inside each command. Errors: one line on stderr, exit 2, no traceback.
"""

from __future__ import annotations

from typing import Optional

import typer

app = typer.Typer(
    name="lab",
    help="A two-node BlueMind HA cluster of real OpenSSH servers on loopback, to rehearse upgrades.",
    no_args_is_help=True,
    add_completion=False,
)

DirOpt = typer.Option("lab", "--dir", "-d", help="Lab directory.")


def _lab(dir: str, pacemaker: str = "auto"):
    from bmupgrade.lab.core import Lab
    return Lab(dir, pacemaker=pacemaker)


def _fail(e: Exception) -> None:
    typer.echo("error: %s" % e, err=True)
    raise typer.Exit(2)


def _run(fn):
    from bmupgrade.lab.core import LabError
    try:
        return fn()
    except (LabError, OSError) as e:
        _fail(e)


@app.command()
def up(dir: str = DirOpt,
       reset: bool = typer.Option(False, "--reset", help="Back to a fresh 4.9.2 cluster (keys kept)."),
       json_out: bool = typer.Option(False, "--json", help="Print the status as JSON."),
       pacemaker: str = typer.Option("auto", "--pacemaker", help="crm_attribute/crm_resource/crm_mon: auto (the real "
                                     "ones against a CIB file where pacemaker-cli-utils is installed), real, standin.")):
    """Start both nodes (idempotent) and write DIR/inventory.yaml and DIR/ssh_config."""
    from bmupgrade.lab.core import usage_text
    lab = _run(lambda: _lab(dir, pacemaker))
    _run(lambda: lab.up(reset=reset))
    if json_out:
        import json
        st = _run(lab.status)
        st["startup_seconds"] = lab.startup_seconds
        typer.echo(json.dumps(st))
    else:
        typer.echo(usage_text(lab))


@app.command()
def down(dir: str = DirOpt):
    """Stop both nodes and every process of theirs (state and ledgers stay in DIR)."""
    lab = _lab(dir)
    _run(lambda: (lab._meta(), lab.down()))
    typer.echo("lab %s stopped" % lab.dir)


@app.command()
def status(dir: str = DirOpt, json_out: bool = typer.Option(False, "--json", help="Machine-readable.")):
    """Nodes up/down, pids, ports, versions, VIP holder, maintenance mode, faults."""
    from bmupgrade.lab.core import format_status
    st = _run(_lab(dir).status)
    if json_out:
        import json
        typer.echo(json.dumps(st))
    else:
        typer.echo(format_status(st))


@app.command()
def failover(dir: str = DirOpt, to: Optional[str] = typer.Option(None, "--to", help="Destination node.")):
    """Move the VIP, the storage and BlueMind to the other node (or --to NODE)."""
    lab = _lab(dir)
    node = _run(lambda: lab.failover(to))
    typer.echo("VIP %s and resources now on %s" % (lab.public_ip, node))


@app.command()
def fault(
    name: str = typer.Argument(..., help="fail | hang | drop | slow-apt | node-down | vip-move | split-brain | "
                                         "no-vip | stonith-disabled | nfs-meta | config-drift | half-configured | "
                                         "dpkg-lock | held-package | clear"),
    dir: str = DirOpt,
    node: Optional[str] = typer.Option(None, "--node", "-n", help="Node (default: every node)."),
    command: Optional[str] = typer.Option(None, "--command", "-c", help="fail/hang/drop/vip-move: words the call contains in order, e.g. 'apt-get install'; '!WORD' excludes."),
    exit_code: Optional[int] = typer.Option(None, "--exit-code", help="fail: exit code (default 1)."),
    times: Optional[int] = typer.Option(None, "--times", help="Only the first N matching calls."),
    message: Optional[str] = typer.Option(None, "--message", help="fail: message on stderr."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="hang: seconds."),
    when: Optional[str] = typer.Option(None, "--when", help="drop: before|after the command (default after)."),
    download: Optional[float] = typer.Option(None, "--download", help="slow-apt: download seconds."),
    install: Optional[float] = typer.Option(None, "--install", help="slow-apt: install seconds."),
    to: Optional[str] = typer.Option(None, "--to", help="vip-move: destination node."),
    file: Optional[str] = typer.Option(None, "--file", help="config-drift: file (default /etc/aliases)."),
    package: Optional[str] = typer.Option(None, "--package", help="half-configured/held-package (default bm-core)."),
    pid: Optional[int] = typer.Option(None, "--pid", help="dpkg-lock: holder pid (default 4242)."),
    process: Optional[str] = typer.Option(None, "--process", help="dpkg-lock: holder name."),
):
    """Switch a fault on, on one node (--node) or all; `clear` switches them all off. Each option
    says which faults take it, e.g. `lab fault fail --node bm2 -c 'apt-get install'`."""
    lab = _lab(dir)
    opts = dict(command=command, exit_code=exit_code, times=times, message=message, seconds=seconds, when=when,
                download=download, install=install, to=to, file=file, package=package, pid=pid, process=process)
    opts = {k: v for k, v in opts.items() if v is not None}
    if name == "clear":
        if opts or node:
            _fail(ValueError("fault clear takes no options"))
        _run(lab.clear_faults)
        typer.echo("faults cleared")
        return
    _run(lambda: lab.fault(name, node=node, **opts))
    typer.echo("fault %s on %s" % (name, node or "all nodes"))
