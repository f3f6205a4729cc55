"""Earlier steps whose effect must still hold when a step starts (`requires:`).

A done step stays done in the journal, but its effect can vanish behind the run's back: a
reboot clears a runtime mask (`systemctl mask --runtime`) and starts an enabled keepalived
again; someone may leave maintenance mode by hand. Before each attempt of a step that
`requires` them, the engine runs each required step's `verify` where it is done. One that no
longer holds is re-applied if it is idempotent (its commands, then its verify, recorded in the
journal as `reapplied`); otherwise the run stops before the step, with HA as it is.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bmupgrade.engine.carried import ask_carrying_probe
from bmupgrade.errors import EXIT_FAILED
from bmupgrade.journal import DONE, FAILED_RUN
from bmupgrade.runbook import Step

if TYPE_CHECKING:
    from bmupgrade.engine.core import Engine


def ensure_requirements(eng: "Engine", step: Step) -> None:
    """Every step `step` requires holds where it is done, re-applied if it no longer does. All
    the checks go at once (one round trip per node, the nodes in parallel); once something was
    re-applied, the later required steps are checked again, after it. A step on the VIP holder
    gets its probe in the same round (engine/carried.py)."""
    rids = list(step.requires)
    carry = step.on in ("primary", "secondary")
    answers = _still_holds(eng, rids, carry)
    for i, rid in enumerate(rids):
        lost = [n for n, r in answers[rid].items() if not r.ok]
        if lost:
            _reapply(eng, step, eng.rb.step(rid), lost, answers[rid])
            answers.update(_still_holds(eng, rids[i + 1:], carry))


def _still_holds(eng: "Engine", rids: list[str], carry_probe: bool) -> dict[str, dict]:
    """Each required step's verify where it is done (skipped, or run nowhere: nothing that
    should hold), all in one round: the answers by step, then node. `carry_probe`: the VIP
    probe of a step on primary/secondary goes in the same round, after the checks."""
    where = {rid: eng.journal.nodes_in(rid, DONE) for rid in rids}
    asked: dict[str, list[tuple[str, str, float]]] = {}
    for rid, nodes in where.items():
        required = eng.rb.step(rid)
        for n in nodes:
            asked.setdefault(n, []).append((f"{rid}:still-holds", eng.render(required.verify, n), required.timeout))
    if not asked:
        answers = {}
    elif carry_probe:  # the step's VIP probe, last on each node (engine/carried.py)
        answers = ask_carrying_probe(eng, asked)
    else:
        answers = eng.ask_each(asked)
    return {rid: {n: answers[n][f"{rid}:still-holds"] for n in nodes} for rid, nodes in where.items()}


def _said(results: dict, what: str = "exit") -> str:
    """Each node's answer in a few words: its exit code, or why it did not answer."""
    return "; ".join(f"{n}: " + (f"{what} {r.exit_code}" if r.exit_code is not None else r.error or "no answer")
                     for n, r in results.items())


def _reapply(eng: "Engine", step: Step, required: Step, lost: list[str], checks: dict) -> None:
    from bmupgrade.engine.core import Stop

    where = ", ".join(lost)
    why = _said({n: checks[n] for n in lost}, "verify exit")
    if not required.idempotent:
        raise Stop(EXIT_FAILED, FAILED_RUN,
                   f"Stopped before '{step.id}': '{required.id}', done earlier, no longer holds on {where} ({why}). "
                   f"It is not idempotent, so bmupgrade does not send it again: restore it by hand, then "
                   f"`{eng.hint('resume')}`.")
    eng.reporter.warn(f"'{required.id}' no longer holds on {where} ({why}): a reboot or a person undid it. "
                      f"Re-applying it before '{step.id}' (it is idempotent).")
    eng.journal.add("reapplied", {"step": required.id, "nodes": lost, "before": step.id, "why": why,
                                  "at": time.time()})
    results = eng.on_each(lost, lambda n: _apply(eng, required, n))
    failed = {n: r for n, r in results.items() if not r.ok}
    if failed:
        raise Stop(EXIT_FAILED, FAILED_RUN,
                   f"Stopped before '{step.id}': '{required.id}' no longer held on {where} and re-applying it "
                   f"failed ({_said(failed)}). Check the node, then `{eng.hint('resume')}`.")


def _apply(eng: "Engine", required: Step, node: str):
    """The required step's commands, then its verify (`requires` only names steps with one)."""
    result = None
    for cmd in [*(required.run or []), required.verify]:
        result = eng.send(node, eng.render(cmd, node), timeout=required.timeout, key=f"{required.id}:reapply")
        if not result.ok:
            break
    return result
