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


def _is_cluster(dir: str) -> bool:
    from bmupgrade.lab.cluster.config import is_cluster_lab
    return is_cluster_lab(dir)


def _crun(fn):
    """Run a cluster-lab action: its errors are one line and exit 2 too."""
    from bmupgrade.lab.cluster.config import ClusterLabError
    try:
        return fn()
    except (ClusterLabError, OSError) as e:
        _fail(e)


def _cluster(dir: str, name: Optional[str] = None, subnet: Optional[str] = None, ha: Optional[str] = None):
    from bmupgrade.lab.cluster.lab import ClusterLab
    return _crun(lambda: ClusterLab(dir, name=name, subnet=subnet, ha=ha))


def _cluster_up(dir: str, reset: bool, json_out: bool, name: Optional[str], subnet: Optional[str],
                ha: Optional[str] = None) -> None:
    from bmupgrade.lab.cluster.text import usage_text
    lab = _cluster(dir, name, subnet, ha)
    _crun(lambda: lab.up(reset=reset))
    if json_out:
        import json
        st = _crun(lab.status)
        st["startup_seconds"] = lab.startup_seconds
        typer.echo(json.dumps(st))
    else:
        typer.echo(usage_text(lab))


@app.command()
def up(dir: str = DirOpt,
       reset: bool = typer.Option(False, "--reset", help="Back to a fresh 4.9.2 cluster (keys kept)."),
       json_out: bool = typer.Option(False, "--json", help="Print the status as JSON."),
       pacemaker: str = typer.Option("auto", "--pacemaker", help="crm_attribute/crm_resource/crm_mon: auto (the real "
                                     "ones against a CIB file where pacemaker-cli-utils is installed), real, standin."),
       cluster: bool = typer.Option(False, "--cluster", help="A real cluster instead: two namespaced nodes with real "
                                    "Corosync/Pacemaker, STONITH, apt and dpkg (root with CAP_SYS_ADMIN/NET_ADMIN)."),
       name: Optional[str] = typer.Option(None, "--name", help="--cluster: lab name (default bmlab); names its "
                                          "bridge, veths and network namespaces."),
       subnet: Optional[str] = typer.Option(None, "--subnet", help="--cluster: IPv4 /24 (default 198.51.100.0/24)."),
       ha: Optional[str] = typer.Option(None, "--ha", help="--cluster: pacemaker (default) or keepalived (real VRRP).")):
    """Start both nodes (idempotent) and write DIR/inventory.yaml and DIR/ssh_config."""
    from bmupgrade.lab.core import usage_text
    if cluster:  # privileges first: without them nothing else is looked at
        from bmupgrade.lab.cluster.lab import check_privileges
        _crun(check_privileges)
    if cluster or _is_cluster(dir):
        if not cluster:
            _fail(ValueError("%s is a cluster lab: bmupgrade lab up --cluster --dir %s" % (dir, dir)))
        return _cluster_up(dir, reset, json_out, name, subnet, ha)
    if name or subnet or ha:
        _fail(ValueError("--name, --subnet and --ha need --cluster"))
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
    if _is_cluster(dir):
        lab = _cluster(dir)
        left = _crun(lab.down)
        if left:
            _fail(ValueError("cluster lab %s stopped, but left behind: %s" % (lab.dir, "; ".join(left))))
        typer.echo("cluster lab %s stopped (nothing left behind)" % lab.dir)
        return
    lab = _lab(dir)
    _run(lambda: (lab._meta(), lab.down()))
    typer.echo("lab %s stopped" % lab.dir)


@app.command()
def status(dir: str = DirOpt, json_out: bool = typer.Option(False, "--json", help="Machine-readable.")):
    """Nodes up/down, pids, ports, versions, VIP holder, maintenance mode, faults."""
    from bmupgrade.lab.core import format_status
    if _is_cluster(dir):
        from bmupgrade.lab.cluster.text import format_status as cluster_status
        st = _crun(_cluster(dir).status)
        if json_out:
            import json
            typer.echo(json.dumps(st))
        else:
            typer.echo(cluster_status(st))
        return
    st = _run(_lab(dir).status)
    if json_out:
        import json
        typer.echo(json.dumps(st))
    else:
        typer.echo(format_status(st))


@app.command()
def failover(dir: str = DirOpt, to: Optional[str] = typer.Option(None, "--to", help="Destination node.")):
    """Move the VIP, the storage and BlueMind to the other node (or --to NODE)."""
    if _is_cluster(dir):
        from bmupgrade.lab.cluster import faults
        lab = _cluster(dir)
        typer.echo("VIP %s and resources now on %s" % (lab.public_ip, _crun(lambda: faults.vip_move(lab, to))))
        return
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
    says which faults take it, e.g. `lab fault fail --node bm2 -c 'apt-get install'`. A cluster lab
    (--cluster) has real faults: power-off | power-on | reboot | cut-link | restore-link |
    vip-move | resource-failure | dpkg-lock | held-package | postinst-fail-once | disk-full |
    backup-running | clear."""
    if _is_cluster(dir):
        return _cluster_fault(name, dir, node, to, package)
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


def _cluster_fault(name: str, dir: str, node: Optional[str], to: Optional[str], package: Optional[str]) -> None:
    from bmupgrade.lab.cluster import faults
    lab = _cluster(dir)
    if name == "clear":
        _crun(lambda: faults.clear(lab))
        typer.echo("faults cleared: both nodes online, resources cleaned up")
        return
    if name not in faults.FAULTS:
        _fail(ValueError("unknown cluster fault %r (faults: %s, clear)" % (name, ", ".join(sorted(faults.FAULTS)))))
    fn, takes_node = faults.FAULTS[name]
    if takes_node and not node:
        _fail(ValueError("fault %s needs --node" % name))
    if name == "vip-move":
        where = _crun(lambda: fn(lab, to or node))
    elif name == "held-package":
        where = _crun(lambda: fn(lab, node, package or "bm-core")) or node
    else:
        where = _crun(lambda: fn(lab, node) if takes_node else fn(lab)) or node
    typer.echo("fault %s on %s" % (name, where or node))
