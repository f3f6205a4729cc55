"""Undo a run's steps in reverse order, where they ran — but never past a point of no return.

A step marked `point_of_no_return` (BlueMind's post-install: the data is migrated) splits the
run: once it has been sent, rollback only undoes the steps after it (typically: HA back on)
and the back-out for the rest is a restore from backup. `--force` crosses it, after a typed
confirmation. Rolling back a step that turned HA on turns it off: the marker goes on first,
as for the forward HA-off step. A run being rolled back never goes forward again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bmupgrade.journal import DONE, FAILED, ROLLED_BACK, STARTED, UNKNOWN
from bmupgrade.runbook import Step
from bmupgrade.transport.base import CommandResult

if TYPE_CHECKING:
    from bmupgrade.engine.core import Engine

RAN = (DONE, FAILED, UNKNOWN, STARTED)  # states in which a step's command may have had an effect


def _ran_on(eng: "Engine", step: Step) -> list[str]:
    return eng.journal.nodes_in(step.id, *RAN)


def barrier(eng: "Engine") -> Step | None:
    """The last point-of-no-return step that has been sent, if any."""
    for s in reversed(eng.rb.steps):
        if s.point_of_no_return and _ran_on(eng, s):
            return s
    return None


def _undoable(eng: "Engine", *, force: bool) -> list[Step]:
    """Steps to consider, newest first. Past the point of no return (unless forced) only the
    step that turned HA off is still undone: turning HA back on is not a downgrade."""
    out = []
    stop_at = None if force else barrier(eng)
    past = False
    for s in reversed(eng.rb.steps):
        past = past or (stop_at is not None and s.id == stop_at.id)
        if s.manual is None and _ran_on(eng, s) and (not past or s.ha == "disable"):
            out.append(s)
    enable = eng.rb.ha_step("enable")
    ha_on = enable is not None and eng.journal.step(enable.id)["state"] == DONE and not eng.ha.is_off()
    if ha_on and {s.ha for s in out} - {None} == {"enable", "disable"} and all(s.ha or not s.rollback for s in out):
        return []  # it would only turn HA off and on again, with nothing undone in between
    return out


def preview(eng: "Engine", *, force: bool = False) -> tuple[list[str], list[str]]:
    """(what will be undone, what cannot be) — shown before anyone is asked."""
    undo, cannot = [], []
    for s in _undoable(eng, force=force):
        ran = _ran_on(eng, s)
        if s.rollback:
            undo.append(f"{s.id} on {', '.join(ran)}: " + "; ".join(eng.shown(c, ran[0]) for c in s.rollback))
        elif s.rollback is None:  # `rollback: []` says there is nothing to undo
            cannot.append(f"{s.id} ({s.label})")
    stop = None if force else barrier(eng)
    if stop is not None:
        cannot.append(f"everything up to and including '{stop.id}' ({stop.label}) but turning HA back on: it is "
                      "the point of no return — the back-out is a restore from the backup, not a downgrade "
                      "(--force overrides)")
    return undo, cannot


def roll_back(eng: "Engine", *, ask: bool, default_yes: bool = True) -> bool:
    """Undo, newest first; stop at the first rollback that fails. True when all is undone."""
    force = eng.options.force_past_no_return
    undo, cannot = preview(eng, force=force)
    if not undo:
        eng.reporter.warn("Nothing to roll back automatically" + (": " + "; ".join(cannot) if cannot else "."))
        return not cannot
    if ask and not eng.prompter.confirm_rollback(undo, cannot, default=default_yes):
        eng.reporter.warn("Rollback declined: nothing was changed.")
        return False
    if eng.journal.data.get("direction") != "rollback":
        eng.journal.set("direction", "rollback")
    eng.reporter.phase("Rollback")
    for s in _undoable(eng, force=force):
        if not s.rollback:
            if s.rollback is not None:  # []: nothing to undo
                _mark_undone(eng, s, _ran_on(eng, s))
            continue
        if not _undo_step(eng, s):
            eng.reporter.error(f"rollback of '{s.id}' failed; stopping the rollback here (earlier steps untouched)")
            return False
    return True


def _undo_step(eng: "Engine", s: Step) -> bool:
    ran = _ran_on(eng, s)
    todo = [n for n in ran if eng.journal.node_state(s.id, n, rollback=True) != DONE]
    if todo and s.ha == "enable":
        eng.ha.going_off(s, todo[0], why=f"rollback of {s.id}")  # marker first, as forward
    eng.reporter.step_start(0, 0, f"rollback:{s.id}", f"Roll back: {s.label}", ", ".join(todo or ran))

    def undo_on(node: str) -> CommandResult:
        eng.journal.mark(s.id, [node], STARTED, rollback=True)
        r = CommandResult(node, "", 0, 0.0)
        for cmd in s.rollback or []:
            r = eng.send(node, eng.render(cmd, node), timeout=s.timeout, key=f"rollback:{s.id}")
            if not r.ok:
                break
        state = DONE if r.ok else (UNKNOWN if r.exit_code is None and r.sent else FAILED)
        eng.journal.mark(s.id, [node], state, rollback=True, exit_code=r.exit_code)
        eng.reporter.node_done(f"rollback:{s.id}", node, r.ok, "ok" if r.ok else f"exit {r.exit_code}", r.duration)
        return r

    results = eng.on_each(todo, undo_on, parallel=s.parallel)
    eng.reporter.step_end()
    if not all(r.ok for r in results.values()):
        return False
    _mark_undone(eng, s, ran)
    if s.ha == "disable" and eng.ha.is_off():
        eng.ha.back_on(f"rollback:{s.id}")
    return True


def _mark_undone(eng: "Engine", s: Step, nodes: list[str]) -> None:
    crashed = eng.journal.nodes_in(s.id, STARTED)
    if crashed:
        eng.journal.mark(s.id, crashed, UNKNOWN, outcome="the run stopped while it was in flight")
    nodes = [n for n in nodes if eng.journal.node_state(s.id, n) != ROLLED_BACK]
    if nodes:
        eng.journal.mark(s.id, nodes, ROLLED_BACK)
