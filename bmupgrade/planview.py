"""Plan renderings: a rich table for the terminal, Markdown for a change ticket, JSON.

Rendering is separate from planning so `run` can show the same plan it executes.
"""

from __future__ import annotations

import json
from typing import Iterable

from bmupgrade.plan import Action, Plan, plan_json
from bmupgrade.runbook import format_duration


def _hhmm(epoch: float) -> str:
    import time

    return time.strftime("%H:%M", time.localtime(epoch))


def _flags(a: Action, plan: Plan | None = None) -> str:
    flags = []
    if plan is not None and (latest := plan.latest_start(a)) is not None:
        flags.append(f"latest start {_hhmm(latest)}")
    if a.confirm and a.kind != "manual":
        flags.append("confirm")
    if a.parallel:
        flags.append("parallel")
    if a.timeout and a.kind == "command":
        flags.append(f"timeout {format_duration(a.timeout)}")
    if a.retries:
        flags.append(f"retries {a.retries}")
    if a.ha:
        flags.append(f"HA {a.ha}")
    if a.capture:
        flags.append(f"captures {a.capture}")
    if a.same_on_all_nodes:
        flags.append("same on all nodes")
    if a.severity == "warning":
        flags.append("warning only")
    return ", ".join(flags)


def _expect_text(a: Action) -> str:
    if a.kind == "builtin":
        return "output (the address) on exactly one node"
    e = dict(a.expect or {})
    parts = []
    exits = e.pop("exit", [0])
    if exits != [0]:
        parts.append("exit " + "/".join(map(str, exits)))
    for key, label in (("output", "output ="), ("match", "matches"), ("not_match", "does not match")):
        if key in e:
            parts.append(f"{label} '{e[key]}'")
    if e.get("empty") is True:
        parts.append("no output")
    elif e.get("empty") is False:
        parts.append("some output")
    if a.same_on_all_nodes:
        parts.append("identical on all nodes")
    return ", ".join(parts) or "exit 0"


def render_text(plan: Plan, console) -> None:
    """A table per phase on a rich console (NO_COLOR is honoured by rich itself)."""
    from rich.table import Table
    from rich.text import Text

    rb = plan.runbook
    console.print(f"[bold]{rb.name}[/bold]  ({rb.source_path})")
    console.print(f"public IP {rb.cluster.public_ip}; nodes: "
                  + ", ".join(f"{n.name}={n.user + '@' if n.user else ''}{n.host}"
                              f"{':' + str(n.port) if n.port else ''}" for n in rb.cluster.nodes))
    if rb.vars:
        console.print("vars: " + ", ".join(
            f"{k}={'***' if v.secret else v.value}" for k, v in rb.vars.items()))
    for phase, title in (("preflight", "Preflight checks (read-only)"), ("step", "Steps"),
                         ("postflight", "Postflight checks")):
        actions = [a for a in plan.actions if a.phase == phase]
        if not actions:
            continue
        table = Table(title=title, title_justify="left", show_lines=True, expand=True)
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("on", no_wrap=True)
        table.add_column("step and commands", ratio=1)
        for a in actions:
            body = Text()
            body.append(a.title, style="bold")
            body.append(f"  [{a.id}]", style="dim")
            flags = _flags(a, plan)
            if flags:
                body.append(f"  ({flags})", style="cyan")
            if a.kind == "manual":
                body.append("\n" + a.text + "\n")
                body.append("the operator confirms", style="yellow")
                table.add_row(str(a.seq), "operator", body)
                continue
            groups = a.distinct_commands()
            for names, c in groups:
                prefix = f"[{', '.join(names)}] " if len(groups) > 1 else ""
                for r in c.run:
                    body.append("\n$ " + prefix + r)
                if a.phase == "step":
                    if c.verify:
                        body.append(f"\n  verify: {prefix}{c.verify}", style="green")
                    for r in c.rollback:
                        body.append(f"\n  rollback: {prefix}{r}", style="magenta")
            if a.phase != "step":
                body.append("\n  expect: " + _expect_text(a), style="green")
            elif a.undo == "impossible":
                body.append("\n  rollback: cannot be undone automatically", style="yellow")
            elif a.undo == "nothing":
                body.append("\n  rollback: nothing to undo", style="dim")
            target = a.target if a.kind != "builtin" else "all"
            if plan.probed_holders is not None and a.target in ("primary", "secondary"):
                target += "\n= " + (", ".join(a.nodes) or "?")
            table.add_row(str(a.seq), target, body)
        console.print(table)
    ip = rb.cluster.public_ip
    if plan.probed_holders is not None:
        console.print(f"primary = {', '.join(plan.probed_holders) or 'nobody'} (holds {ip} now; "
                      "re-probed before each step that targets it)")
    else:
        console.print(f"primary = the node holding {ip}, resolved at run time just before each step; "
                      "secondary = the other node.")
    if plan.deadline is not None:
        console.print(f"Deadline {_hhmm(plan.deadline)}: a step is not started unless its timeout (or measured "
                      "duration) fits; each step shows its latest start.")
    off, on = plan.ha_window
    if off:
        console.print(f"HA handling is off from step '{off}' until step '{on or '(never turned back on!)'}'.")
    if plan.stonith_guard:
        console.print(f"STONITH guard: {plan.stonith_guard}.", markup=False)


def _md_code(lines: Iterable[str]) -> str:
    body = "\n".join(lines)
    fence = "```"
    while fence in body:
        fence += "`"
    return f"{fence}sh\n{body}\n{fence}"


def render_markdown(plan: Plan) -> str:
    """A change ticket: what, where, in which order, how to back out, who signs."""
    rb = plan.runbook
    off, on = plan.ha_window
    out = [f"# Change: {rb.name}", ""]
    if rb.description:
        out += [rb.description.strip(), ""]
    out += [
        "| | |", "|---|---|",
        f"| Runbook | `{rb.source_path}` (sha256 `{rb.source_sha256[:16]}…`) |",
        f"| Public (floating) IP | `{rb.cluster.public_ip}` |",
        "| Nodes | " + "<br>".join(
            f"`{n.name}`: `{(n.user + '@') if n.user else ''}{n.host}{(':' + str(n.port)) if n.port else ''}`"
            + (" (sudo)" if n.sudo else "") for n in rb.cluster.nodes) + " |",
    ]
    for k, v in rb.vars.items():
        out.append(f"| `{k}` | `{'***' if v.secret else v.value}`{' — ' + v.description if v.description else ''} |")
    if off:
        out.append(f"| HA handling off | from step `{off}` to step `{on or 'NEVER'}` |")
    if plan.stonith_guard:
        out.append(f"| STONITH guard | {plan.stonith_guard} |")
    if plan.deadline is not None:
        out.append(f"| Deadline | {_hhmm(plan.deadline)} — a step is not started unless its timeout fits "
                   "(see each step's latest start) |")
    out += ["", "`primary` = the node holding the public IP, probed again just before each step "
            "that targets it; `secondary` = the other node.", ""]

    def section(title: str, phase: str) -> None:
        actions = [a for a in plan.actions if a.phase == phase]
        if not actions:
            return
        out.extend([f"## {title}", ""])
        for a in actions:
            if a.kind == "manual":
                out.extend([f"{a.seq}. **{a.title}** (`{a.id}`) — manual, the operator confirms:", "",
                            f"   > {a.text}", "", "   - [ ] done", ""])
                continue
            flags = _flags(a, plan)
            out.append(f"{a.seq}. **{a.title}** (`{a.id}`) — on {a.target_text}" + (f"; {flags}" if flags else ""))
            out.append("")
            groups = a.distinct_commands()
            for names, c in groups:
                if len(groups) > 1:
                    out.append(f"   On {', '.join(names)}:")
                    out.append("")
                out.extend("   " + ln for ln in _md_code(c.run).splitlines())
                out.append("")
                if a.phase == "step":
                    if c.verify:
                        out.append(f"   Verify: `{c.verify}`")
                    if c.rollback:
                        out.append("   Rollback: " + "; ".join(f"`{r}`" for r in c.rollback))
                    out.append("")
            if a.phase == "step" and a.undo == "impossible":
                out.extend(["   Rollback: **cannot be undone automatically.**", ""])
            elif a.phase == "step" and a.undo == "nothing":
                out.extend(["   Rollback: nothing to undo.", ""])
            if a.phase != "step":
                out.extend([f"   Expect: {_expect_text(a)}" + (f". {a.why}" if a.why else ""), ""])

    section("Preflight checks (read-only; any failure stops before a change)", "preflight")
    section("Procedure", "step")
    section("Postflight checks", "postflight")

    back_out = [a for a in reversed(plan.actions) if a.phase == "step" and a.kind == "command"]
    out += ["## Back-out plan", "",
            "Done steps are rolled back in reverse order (`bmupgrade rollback`):", ""]
    for a in back_out:
        rb_cmds = [r for _, c in a.distinct_commands() for r in c.rollback]
        if rb_cmds:
            out.append(f"- `{a.id}`: " + "; ".join(f"`{r}`" for r in dict.fromkeys(rb_cmds)))
        elif a.undo == "impossible":
            out.append(f"- `{a.id}`: **cannot be undone automatically** (restore from the backup)")
    out += ["", "## Sign-off", "", "| Role | Name | Date |", "|---|---|---|",
            "| Prepared by | | |", "| Approved by | | |", "| Executed by | | |", ""]
    return "\n".join(out)


def render_json(plan: Plan) -> str:
    return json.dumps(plan_json(plan), indent=2, sort_keys=False)


# ---------------------------------------------------------------------------- plain text
# The rich table costs ~0.6 ms per step to lay out (3 s for 5000 steps). When the plan is not
# on a terminal (a pipe, a file, a ticket) or is long, the same content as plain lines: each
# action's header, then its commands indented; never wrapped, so lines stay greppable whole.
PLAIN_BEYOND = 200  # actions: more than this, plain text even on a terminal


def use_plain(plan: Plan, is_tty: bool) -> bool:
    return not is_tty or len(plan.actions) > PLAIN_BEYOND


def _plain_action(a: Action, plan: Plan, out: list[str]) -> None:
    flags = _flags(a, plan)
    target = "operator" if a.kind == "manual" else (a.target if a.kind != "builtin" else "all")
    if plan.probed_holders is not None and a.target in ("primary", "secondary"):
        target += " = " + (", ".join(a.nodes) or "?")
    out.append(f"{a.seq:>4}  {target}: {a.title}  [{a.id}]" + (f"  ({flags})" if flags else ""))
    pad = "      "
    if a.kind == "manual":
        out.extend(pad + ln for ln in a.text.splitlines())
        out.append(pad + "the operator confirms")
        return
    groups = a.distinct_commands()
    for names, c in groups:
        prefix = f"[{', '.join(names)}] " if len(groups) > 1 else ""
        out.extend(f"{pad}$ {prefix}{r}" for r in c.run)
        if a.phase == "step":
            if c.verify:
                out.append(f"{pad}  verify: {prefix}{c.verify}")
            out.extend(f"{pad}  rollback: {prefix}{r}" for r in c.rollback)
    if a.phase != "step":
        out.append(f"{pad}  expect: {_expect_text(a)}")
    elif a.undo == "impossible":
        out.append(f"{pad}  rollback: cannot be undone automatically")
    elif a.undo == "nothing":
        out.append(f"{pad}  rollback: nothing to undo")


def _plain_footer(plan: Plan) -> list[str]:
    rb = plan.runbook
    ip = rb.cluster.public_ip
    out = []
    if plan.probed_holders is not None:
        out.append(f"primary = {', '.join(plan.probed_holders) or 'nobody'} (holds {ip} now; "
                   "re-probed before each step that targets it)")
    else:
        out.append(f"primary = the node holding {ip}, resolved at run time just before each step; "
                   "secondary = the other node.")
    if plan.deadline is not None:
        out.append(f"Deadline {_hhmm(plan.deadline)}: a step is not started unless its timeout (or measured "
                   "duration) fits; each step shows its latest start.")
    off, on = plan.ha_window
    if off:
        out.append(f"HA handling is off from step '{off}' until step '{on or '(never turned back on!)'}'.")
    if plan.stonith_guard:
        out.append(f"STONITH guard: {plan.stonith_guard}.")
    return out


def render_plain(plan: Plan) -> str:
    """The text plan as plain lines (no table, no styles): what `render_text` shows."""
    rb = plan.runbook
    out = [f"{rb.name}  ({rb.source_path})",
           f"public IP {rb.cluster.public_ip}; nodes: " + ", ".join(
               f"{n.name}={n.user + '@' if n.user else ''}{n.host}{':' + str(n.port) if n.port else ''}"
               for n in rb.cluster.nodes)]
    if rb.vars:
        out.append("vars: " + ", ".join(f"{k}={'***' if v.secret else v.value}" for k, v in rb.vars.items()))
    for phase, title in (("preflight", "Preflight checks (read-only)"), ("step", "Steps"),
                         ("postflight", "Postflight checks")):
        actions = [a for a in plan.actions if a.phase == phase]
        if actions:
            out += ["", title]
            for a in actions:
                _plain_action(a, plan, out)
    out.append("")
    out += _plain_footer(plan)
    return "\n".join(out)
