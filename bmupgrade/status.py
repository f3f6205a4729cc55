"""`bmupgrade status`: a run's journal as a table a colleague can read at a glance."""

from __future__ import annotations

from bmupgrade.journal import Journal


def render_status(journal: Journal, console) -> None:
    from rich.table import Table

    d = journal.data
    by = d.get("by", {})
    console.print(f"[bold]Run {d['run_id']}[/bold]: {d['status']} — {d['runbook']['name']} "
                  f"({d['runbook']['path']})")
    console.print(f"started {d['created_at']} by {by.get('user')}@{by.get('host')}, updated {d['updated_at']}")
    ha = d.get("ha", {})
    if ha.get("off_since") and not ha.get("on_at"):
        console.print(f"[bold white on red] HA handling OFF since {ha['off_since']} [/bold white on red] — "
                      f"`bmupgrade resume {d['run_id']}` or `bmupgrade rollback {d['run_id']}` restores it")
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
