"""`bmupgrade status`: a run's journal as a table a colleague can read at a glance."""

from __future__ import annotations

from rich.markup import escape

from bmupgrade.journal import Journal


def shown_status(d: dict) -> str:
    """The run's status as a person should read it: `running` only with a live owner."""
    from bmupgrade.journal import owner_alive

    if d.get("status") != "running":
        return d.get("status", "?")
    alive = owner_alive(d.get("owner"))
    if alive is False:
        verb = "rollback" if d.get("direction") == "rollback" else "resume"  # a rollback never goes forward
        return f"stopped without a trace (owner gone: killed or crashed; `bmupgrade {verb}` continues)"
    o = d.get("owner") or {}
    return f"running (pid {o.get('pid')} on {o.get('host')}" + (")" if alive else ", not checkable from here)")


def render_status(journal: Journal, console, hint=None) -> None:
    """`hint(text)` makes the commands it mentions copy-paste ready (bmupgrade.hints.qualify)."""
    from rich.table import Table

    hint = hint or (lambda text: text)
    d = journal.data
    by = d.get("by", {})
    console.print(f"[bold]Run {d['run_id']}[/bold]: {shown_status(d)} — {d['runbook']['name']} "
                  f"({d['runbook']['path']})")
    console.print(f"started {d['created_at']} by {by.get('user')}@{by.get('host')}, updated {d['updated_at']}")
    ha = d.get("ha", {})
    if ha.get("state") == "off":
        console.print(f"[bold white on red] HA handling OFF since {ha['off_since']} [/bold white on red] — "
                      + escape(hint((f"`bmupgrade rollback {d['run_id']}` restores it" if d.get("direction") == "rollback"
                                     else f"`bmupgrade resume {d['run_id']}` or `bmupgrade rollback {d['run_id']}` "
                                     "restores it"))))
    accepted = d.get("fencing_accepted")
    if accepted:
        console.print(f"[bold red]STONITH guard overridden[/bold red] by {accepted.get('user')}@{accepted.get('host')} "
                      f"at {accepted.get('at')} ({accepted.get('how')}): {accepted.get('why')}", highlight=False)
    table = Table("step", "state", "node", "node state", "started", "ended", "exit", "attempts")
    for sid, entry in d["steps"].items():
        nodes = entry.get("nodes") or {}
        if not nodes:
            table.add_row(sid, entry["state"], "", "", "", "", "", "")
        for i, (node, e) in enumerate(nodes.items()):
            table.add_row(sid if i == 0 else "", entry["state"] if i == 0 else "", node, e.get("state", ""),
                          e.get("started_at", ""), e.get("ended_at", ""),
                          "" if e.get("exit_code") is None else str(e.get("exit_code")), str(e.get("attempts", "")))
    console.print(table)
    if d.get("rollback"):
        rt = Table("rolled back step", "state", "nodes")
        for sid, entry in d["rollback"].items():
            rt.add_row(sid, entry["state"], ", ".join(f"{n}={e.get('state')}" for n, e in entry["nodes"].items()))
        console.print(rt)
    if d.get("captured"):
        console.print("captured: " + ", ".join(f"{k}={v}" for k, v in d["captured"].items()))
    if d.get("exit"):
        console.print(f"exit {d['exit'].get('code')}: {d['exit'].get('message')}")


def read_cluster_markers(rb) -> dict[str, dict]:
    """Read (only read) each node's bmupgrade lock and HA-off marker — what a colleague on
    another machine needs to see why failover is paused and by whom."""
    from bmupgrade.engine import remote
    from bmupgrade.probes import node_addresses, on_each
    from bmupgrade.transport.ssh import SshTransport

    transport = SshTransport()
    try:
        transport.connect(node_addresses(rb))

        def read(node: str) -> dict:
            r = transport.run(node, remote.read_lock_and_marker(rb.node(node).state_dir), timeout=30, capture=True)
            lock, marker = remote.parse_lock_and_marker(r.stdout)
            return {k: (v if isinstance(v, dict) else {"raw": v}) for k, v in (("lock", lock), ("ha-off", marker))
                    if v}

        return on_each(rb.node_names, read)
    finally:
        transport.close()


def render_cluster_markers(markers: dict[str, dict], console) -> None:
    if not any(markers.values()):
        console.print("No bmupgrade run holds the cluster and HA handling was not turned off by bmupgrade.")
        return
    for node, m in markers.items():
        if "ha-off" in m:
            h = m["ha-off"]
            console.print(f"[bold white on red] {node}: HA handling OFF [/bold white on red] since {h.get('since')} "
                          f"by {h.get('user')}@{h.get('host')} (run {h.get('run_id')}, expected end "
                          f"{h.get('expected_end') or 'not set'}); restore: {h.get('restore')}", highlight=False)
        if "lock" in m:
            lk = m["lock"]
            console.print(f"{node}: locked by run {lk.get('run_id')} ({lk.get('user')}@{lk.get('host')}, pid "
                          f"{lk.get('pid')}) since {lk.get('since')}", highlight=False)


def render_runs(found) -> None:
    """`bmupgrade runs`: one row per run; run ids never cut, a killed run says so."""
    from rich.table import Column, Table

    from bmupgrade.ui.report import make_console

    table = Table(Column("run", no_wrap=True, overflow="ignore"), "status", "started", "runbook", "by")
    for r in found:
        table.add_row(r.run_id, "stopped (owner gone)" if r.owner_gone else r.status, r.created_at, r.runbook, r.by)
    make_console().print(table)
