"""Plan renderings: a rich table for the terminal, Markdown for a change ticket, JSON.

Rendering is separate from planning so `run` can show the same plan it executes.
"""

from __future__ import annotations

import json
import re
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
    if a.read_only:
        flags.append("read-only")
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


def _probe_lines(a: Action) -> list[str]:
    """What a read-only step printed when `plan --probe` sent it (empty if it was not)."""
    p = a.probed
    if p is None:
        return []
    if p.not_sent:
        return [f"probe: not sent: {p.not_sent}"]
    out = []
    for o in p.outputs:
        status = "no answer" if o.exit_code is None else f"exit {o.exit_code}"
        out.append(f"probed now on {o.node} (read-only, before the steps above ran): {status}")
        out.extend(f"  | {line}" for line in o.output.splitlines())
    return out


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
        table = Table(title=title, title_justify="left", show_lines=True, expand=console.is_terminal)
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
            for line in _probe_lines(a):
                body.append("\n  " + line, style="blue")
            target = a.target if a.kind != "builtin" else "all"
            if plan.probed_holders is not None and a.target in ("primary", "secondary"):
                target += "\n= " + (", ".join(a.nodes) or "?")
            table.add_row(str(a.seq), target, body)
        console.print(table)
    for line in _plain_footer(plan):
        console.print(line, markup=False, highlight=False)


def _md_code(lines: Iterable[str]) -> str:
    body = "\n".join(lines)
    fence = "```"
    while fence in body:
        fence += "`"
    return f"{fence}sh\n{body}\n{fence}"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")


def _md(text: str) -> str:
    """Plain text in Markdown: `bm-*`, `[backup]`, `<from_version>` shown as written."""
    out = _MD_SPECIAL.sub(r"\\\1", str(text))
    return re.sub(r"(?m)^(\s*)([#+\-=]|\d+[.)])", r"\1\\\2", out)  # no heading/list from a line's start


def _code(text: str, *, in_table: bool = False) -> str:
    """An inline code span that holds any text (backticks included)."""
    text = str(text)
    ticks = "`"
    while ticks in text:
        ticks += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    span = f"{ticks}{pad}{text}{pad}{ticks}"
    return span.replace("|", "\\|") if in_table else span


def _target_md(plan: Plan, a: Action) -> str:
    """Where a step runs: a node named when --probe found the holder, else said as the rule."""
    ip = plan.runbook.cluster.public_ip
    if a.target in ("primary", "secondary") and plan.probed_holders is None:
        who = "the VIP holder" if a.target == "primary" else "the node(s) not holding the VIP"
        return f"{who} at that moment (probed for {_code(ip)} just before the step)"
    return _md(a.target_text)


def _step_bound(a: Action, probed: bool) -> float:
    """The longest a step can take: its timeout per command, attempt and (unless parallel) node."""
    if a.kind != "command" or not a.timeout:
        return 0.0
    runs = max((len(c.run) for c in a.commands.values()), default=1)
    if a.parallel or a.target == "primary":
        on = 1
    elif a.target == "secondary" and not probed:  # candidates: every node; all but the holder run it
        on = max(1, len(a.nodes) - 1)
    else:
        on = len(a.nodes)
    return a.timeout * runs * (1 + a.retries) * on


def _estimates(plan: Plan) -> list[str]:
    """Table rows: the longest the procedure and the HA-off window can take (from the timeouts)."""
    probed = plan.probed_holders is not None
    steps = [a for a in plan.actions if a.phase == "step"]
    total = sum(_step_bound(a, probed) for a in steps)
    manual = sum(1 for a in steps if a.kind == "manual")
    rows = [f"| Duration (upper bound) | at most {format_duration(total)} of commands (every timeout and retry "
            "used up)" + (f", plus the operator's time for {manual} manual step(s)" if manual else "") + " |"]
    off, on = plan.ha_window
    if off:
        ids = [a.id for a in steps]
        end = ids.index(on) + 1 if on in ids else len(ids)
        window = sum(_step_bound(a, probed) for a in steps[ids.index(off):end])
        rows.append(f"| HA-off window / user outage | at most {format_duration(window)}: from step {_code(off)} "
                    f"to step {_code(on or 'NEVER')}, the cluster does not fail over, and users of the VIP holder "
                    "may see BlueMind restart (package upgrade, post-install) |")
    return rows


def _md_header(plan: Plan) -> list[str]:
    rb = plan.runbook
    off, on = plan.ha_window
    out = [f"# Change: {_md(rb.name)}", ""]
    if rb.description:
        out += [_md(rb.description.strip()), ""]
    out += [
        "| | |", "|---|---|",
        f"| Runbook | {_code(rb.source_path, in_table=True)} (sha256 `{rb.source_sha256[:16]}…`) |",
        f"| Public (floating) IP | `{rb.cluster.public_ip}` |",
        "| Nodes | " + "<br>".join(
            f"`{n.name}`: " + _code(f"{(n.user + '@') if n.user else ''}{n.host}{(':' + str(n.port)) if n.port else ''}",
                                    in_table=True) + (" (sudo)" if n.sudo else "") for n in rb.cluster.nodes) + " |",
    ]
    for k, v in rb.vars.items():
        desc = f" — {_md(v.description)}" if v.description else ""
        out.append(f"| `{k}` | {_code('***' if v.secret else v.value, in_table=True)}{desc} |")
    if off:
        out.append(f"| HA handling off | from step `{off}` to step `{on or 'NEVER'}` |")
    out += _estimates(plan)
    if plan.stonith_guard:
        out.append(f"| STONITH guard | {_md(plan.stonith_guard)} |")
    if plan.deadline is not None:
        out.append(f"| Deadline | {_hhmm(plan.deadline)} — a step is not started unless its timeout fits "
                   "(see each step's latest start) |")
    holders = plan.probed_holders
    out += ["", (f"`primary` = {', '.join(f'`{h}`' for h in holders) or 'nobody'} (held {_code(rb.cluster.public_ip)} "
                 "when this plan was made; probed again just before each step that targets it)" if holders is not None
                 else "`primary` = the node holding the public IP at that moment, probed just before each step that "
                 "targets it; `secondary` = the other node."), ""]
    return out


def _md_item(plan: Plan, a: Action, number: int, total: int) -> list[str]:
    """One numbered item; its body is indented by the width of its number (10. and beyond)."""
    lead = f"{number}. "
    pad = " " * len(lead)
    counter = f"\\[{number}/{total}\\] " if a.phase == "step" else ""
    if a.kind == "manual":
        return [f"{lead}{counter}**{_md(a.title)}** (`{a.id}`) — manual, the operator confirms:", "",
                *(f"{pad}> {_md(line)}" if line else f"{pad}>" for line in a.text.splitlines()), "",
                f"{pad}- [ ] done", ""]
    flags = _flags(a, plan)
    out = [f"{lead}{counter}**{_md(a.title)}** (`{a.id}`) — on {_target_md(plan, a)}"
           + (f"; {_md(flags)}" if flags else ""), ""]
    groups = a.distinct_commands()
    conditional = a.target in ("primary", "secondary") and plan.probed_holders is None
    for names, c in groups:
        if len(groups) > 1:
            who = " or ".join(f"`{n}`" for n in names)
            out += [f"{pad}If {who} {'holds' if a.target == 'primary' else 'does not hold'} the VIP then:" if conditional
                    else f"{pad}On {', '.join(f'`{n}`' for n in names)}:", ""]
        out += [pad + ln for ln in _md_code(c.run).splitlines()] + [""]
        if a.phase == "step":
            if c.verify:
                out += [f"{pad}Verify: {_code(c.verify)}", ""]
            for r in c.rollback:
                out += [f"{pad}Rollback: {_code(r)}", ""]
    if a.phase == "step" and a.undo == "impossible":
        out += [f"{pad}Rollback: **cannot be undone automatically.**", ""]
    elif a.phase == "step" and a.undo == "nothing":
        out += [f"{pad}Rollback: nothing to undo.", ""]
    if a.phase != "step":
        out += [f"{pad}Expect: {_md(_expect_text(a))}" + (f". {_md(a.why)}" if a.why else ""), ""]
    return out + _md_probe(a, pad)


def _md_probe(a: Action, pad: str) -> list[str]:
    """A read-only step's answers at planning time (`plan --probe`), as evidence in the ticket."""
    p = a.probed
    if p is None:
        return []
    if p.not_sent:
        return [f"{pad}Probe: not sent: {_md(p.not_sent)}", ""]
    out = []
    for o in p.outputs:
        status = "no answer" if o.exit_code is None else f"exit {o.exit_code}"
        out += [f"{pad}Probed when this plan was made (read-only, before the steps above ran), on `{o.node}`: "
                f"{status}", ""]
        fence = "```"
        while fence in o.output:
            fence += "`"
        out += [pad + ln for ln in [f"{fence}text", *o.output.splitlines(), fence]] + [""]
    return out


def render_markdown(plan: Plan) -> str:
    """A change ticket: what, where, in which order, how long, how to back out, who signs.

    Each section is numbered from 1; the procedure's numbers are the run's `[n/N]`."""
    out = _md_header(plan)
    for title, phase in (("Preflight checks (read-only; any failure stops before a change)", "preflight"),
                         ("Procedure", "step"), ("Postflight checks", "postflight")):
        actions = [a for a in plan.actions if a.phase == phase]
        if actions:
            out += [f"## {title}", ""]
            for number, a in enumerate(actions, 1):
                out += _md_item(plan, a, number, len(actions))
    back_out = [a for a in reversed(plan.actions) if a.phase == "step" and a.kind == "command"]
    out += ["## Back-out plan", "", "Done steps are rolled back in reverse order (`bmupgrade rollback`):", ""]
    for a in back_out:
        rb_cmds = [r for _, c in a.distinct_commands() for r in c.rollback]
        if rb_cmds:
            out.append(f"- `{a.id}`: " + "; ".join(_code(r) for r in dict.fromkeys(rb_cmds)))
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
    out.extend(f"{pad}  {line}" for line in _probe_lines(a))


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
        out.append(f"Deadline {_hhmm(plan.deadline)}: a step is not started unless its estimate (measured "
                   "duration, else the worst case from its timeout) fits, nor the HA-off step unless the whole "
                   "HA window fits; each step shows its latest start.")
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
