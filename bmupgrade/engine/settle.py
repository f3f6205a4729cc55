"""Settling a step whose outcome is unknown (sent, result lost; or `started` left by a crash).

Never while the command still runs on the node (its tag is looked for in /proc there); then
`verify` decides; else an idempotent step is sent again; else a person decides (interactive),
or the operator's --assume-done/--rerun flag, or the run stops with the exact next command.
A non-idempotent step whose verify says "not done" is recorded `failed`: it ran and did not
achieve its goal, so only a retry someone chose sends it again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bmupgrade.errors import EXIT_FAILED
from bmupgrade.journal import ABORTED, DONE, FAILED, FAILED_RUN, PENDING, STARTED, UNKNOWN, whoami
from bmupgrade.outcome import ASSUME_DONE, RERUN, WAIT
from bmupgrade.runbook import Step

if TYPE_CHECKING:
    from bmupgrade.engine.core import Engine


def settle(eng: "Engine", step: Step) -> None:
    """Settle the nodes whose outcome is unknown (`started` left by a crash, or `unknown`):
    never while the command still runs; verify decides; else idempotent → send again; else
    a person, or (unattended) --assume-done/--rerun, or stop with the exact next command."""
    from bmupgrade.engine.core import Stop

    crashed = eng.journal.nodes_in(step.id, STARTED)
    if crashed:
        eng.journal.mark(step.id, crashed, UNKNOWN, outcome="the run stopped while it was in flight")
    nodes = eng.journal.nodes_in(step.id, UNKNOWN)
    if not nodes:
        return
    wait_while_running(eng, step, nodes)
    if step.verify:
        for node in nodes:
            r = eng.send(node, eng.render(step.verify, node), timeout=step.timeout, key=f"{step.id}:verify")
            verdict = DONE if r.ok else PENDING if step.idempotent else FAILED
            eng.journal.mark(step.id, [node], verdict, note=f"outcome unknown; verify {'passed' if r.ok else 'failed'}",
                             **({} if r.ok else {"exit_code": r.exit_code}))
            eng.reporter.info(f"  {step.id} on {node}: outcome was unknown; verify says "
                              + ("it is done" if r.ok else "not done: it runs again"))
        return
    if step.idempotent:
        eng.journal.mark(step.id, nodes, PENDING, note="outcome unknown; idempotent: sent again")
        return
    shown = [eng.shown(c, nodes[0]) for c in step.run or []]
    answer = eng.prompter.unknown_outcome(step.id, step.label, nodes, shown)
    if answer == ASSUME_DONE:
        eng.journal.mark(step.id, nodes, DONE, note="outcome unknown; recorded done", by=_who(eng, "assume-done"))
    elif answer == RERUN:
        eng.journal.mark(step.id, nodes, PENDING, note="outcome unknown; re-run", by=_who(eng, "rerun"))
    else:
        raise Stop(EXIT_FAILED, ABORTED if eng.prompter.interactive else FAILED_RUN,
                   f"Step '{step.id}' was sent to {', '.join(nodes)} and its outcome is unknown (it has no "
                   "verify command). Check on the node, then `"
                   + eng.hint("resume", f"--yes --assume-done {step.id}") + "` (it completed) or `"
                   + eng.hint("resume", f"--yes --rerun {step.id}") + "` (it did not run).")

def _who(eng: "Engine", how: str) -> dict:
    p = eng.prompter
    return {**whoami(), "how": "prompt" if p.interactive else f"--{how} flag"}

def wait_while_running(eng: "Engine", step: Step, nodes: list[str], *, rollback: bool = False) -> None:
    """Never decide while the first copy may still run: ask the node (the command's tag). For
    the step's commands, or (`rollback`) its rollback commands."""
    from bmupgrade.engine import remote
    from bmupgrade.engine.core import Stop

    key = f"rollback:{step.id}" if rollback else step.id
    while True:
        running = {}
        for n in nodes:
            tag = eng.journal.step(step.id, rollback=rollback)["nodes"].get(n, {}).get("tag")
            if not tag:
                continue
            r = eng.send(n, remote.still_running(tag), timeout=30, key=f"{key}:still-running",
                         capture=True, quiet=True)
            if r.exit_code is None:
                running[n] = "cannot ask the node (" + (r.error or "no answer") + ")"
            elif r.stdout.split():
                running[n] = "still running (pid " + ", ".join(r.stdout.split()) + ")"
        if not running:
            return
        text = "; ".join(f"{n}: {why}" for n, why in running.items())
        if eng.prompter.interactive and eng.prompter.still_running(key, step.label, text) == WAIT:
            eng.sleep(5)
            continue
        raise Stop(EXIT_FAILED, ABORTED if eng.prompter.interactive else FAILED_RUN,
                   f"Step '{key}': {text}. Not deciding anything while it runs: wait for it to end, then "
                   f"`{eng.hint('rollback' if rollback else 'resume')}`.")
