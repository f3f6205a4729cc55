"""Undo a run's steps in reverse order, where they ran — but never past a point of no return.

A step marked `point_of_no_return` (BlueMind's post-install: the data is migrated) splits the
run: once it has been sent, rollback only undoes the steps after it (typically: HA back on)
and the back-out for the rest is a restore from backup. `--force` crosses it, after a typed
confirmation. Rolling back a step that turned HA on turns it off: the marker goes on first,
as for the forward HA-off step; rolling back the HA-off step turns failover back on, so the
STONITH guard stands before it, as before the forward HA-on step. A run being rolled back never
goes forward again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bmupgrade.engine.guards import stonith_guard
from bmupgrade.journal import DONE, FAILED, ROLLED_BACK, STARTED, UNKNOWN
from bmupgrade.runbook import Step
from bmupgrade.transport.base import CommandResult

if TYPE_CHECKING:
    from bmupgrade.engine.core import Engine

RAN = (DONE, FAILED, UNKNOWN, STARTED)  # states in which a step's command may have had an effect


def _ran_on(eng: "Engine", step: Step) -> list[str]:
    """Nodes where the step may have had an effect and is not undone: in a state that says so, or
    sent at some point whatever was decided since (a re-run that never got out, a failure skipped).
    The point of no return counts from its first send: a post-install whose outcome was lost, then
    chosen to re-run, may have migrated the data."""
    sent = set(eng.journal.nodes_sent(step.id))
    return [n for n, e in eng.journal.step(step.id)["nodes"].items()
            if e.get("state") in RAN or (n in sent and e.get("state") != ROLLED_BACK)]


def barrier(eng: "Engine") -> Step | None:
    """The last point-of-no-return step that has been sent, if any."""
    for s in reversed(eng.rb.steps):
        if s.point_of_no_return and _ran_on(eng, s):
            return s
    return None


def held_by(eng: "Engine") -> Step | None:
    """The point of no return this invocation's rollback stops at (None when forced past it)."""
    return None if eng.options.force_past_no_return else barrier(eng)


def _undoable(eng: "Engine", *, force: bool) -> list[Step]:
    """Steps to undo, newest first. Past a point of no return (unless forced) rollback only closes
    the window: the later steps that ran, and the earlier ones that restore normal operation
    (`ha: disable`, `always_undo`) — and nothing at all when the run completed past it (undoing
    would only reopen the window to close it again)."""
    stop_at = None if force else barrier(eng)
    if stop_at is not None:
        ids = [s.id for s in eng.rb.steps]
        later = eng.rb.steps[ids.index(stop_at.id) + 1:]
        if all(eng.journal.step(s.id)["state"] in (DONE, "skipped") for s in later if s.manual is None) \
                and not eng.ha.is_off():
            return []
    out, past = [], False
    for s in reversed(eng.rb.steps):
        past = past or (stop_at is not None and s.id == stop_at.id)
        if s.manual is None and _ran_on(eng, s) and (not past or s.ha == "disable" or s.always_undo):
            out.append(s)
    if not any(s.ha == "disable" and s.rollback for s in out):
        # HA goes off again only if this rollback also turns it back on: a run that never turned
        # it off (`--from` past the HA-off step) would be left with HA off and nothing to undo it
        out = [s for s in out if s.ha != "enable"]
    closed = window_closed(eng)
    return [s for s in out if s.id not in closed]


def window_closed(eng: "Engine") -> list[str]:
    """The HA window's steps, once an earlier rollback undid the HA-off step (failover is back
    on): undoing them now would downgrade with failover on. Empty while the window is open."""
    off, on = eng.rb.ha_step("disable"), eng.rb.ha_step("enable")
    undone = eng.journal.step(off.id, rollback=True)["nodes"] if off else {}
    if not undone or any(e.get("state") != DONE for e in undone.values()):
        return []
    ids = [s.id for s in eng.rb.steps]
    return ids[ids.index(off.id) + 1: ids.index(on.id) if on else len(ids)]


def failover_back_on(eng: "Engine", *, force: bool) -> Step | None:
    """The step whose rollback turns automatic failover back on (undoing `ha: disable`), if
    this rollback will run it: the STONITH guard stands before it, as before `ha: enable`."""
    return next((s for s in _undoable(eng, force=force) if s.ha == "disable" and s.rollback), None)


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
    closed = [s for s in window_closed(eng) if eng.rb.step(s).rollback and _ran_on(eng, eng.rb.step(s))]
    if stop is not None and not closed:
        cannot.append(f"everything up to and including '{stop.id}' ({stop.label}) but closing the window (HA "
                      "back on): it is the point of no return — the back-out is a restore from the backup, not a "
                      "downgrade (--force overrides, in this rollback only: once failover is back on, these steps "
                      "are never undone)")
    if closed:
        cannot.append(", ".join(closed) + (f": held by the point of no return '{stop.id}', and" if stop else ":")
                      + f" the HA window is closed (rolling back '{eng.rb.ha_step('disable').id}' turned failover "
                      "back on): undoing them now would run with failover on — the back-out is a restore from the "
                      "backup")
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


def outcome_text(eng: "Engine", done: bool) -> str:
    """How an in-run rollback ended, for the final line (a point of no return is named: the
    upgrade itself stays)."""
    if not done:
        return "rollback not (fully) done — see above."
    stop = held_by(eng)
    if stop is None:
        return "rolled back."
    return (f"rolled back as far as the point of no return '{stop.id}': nothing up to it was undone; the "
            "back-out for the rest is a restore from the backup.")


def _undo_step(eng: "Engine", s: Step) -> bool:
    ran = _ran_on(eng, s)
    todo = [n for n in ran if eng.journal.node_state(s.id, n, rollback=True) != DONE]
    if todo and s.ha == "disable" and s.rollback:
        stonith_guard(eng, s, title=f"Rolling back '{s.label}'")  # it turns failover back on
    if todo and s.ha == "enable":
        eng.ha.going_off(s, todo[0], why=f"rollback of {s.id}")  # marker first, as forward
    _settle_in_doubt(eng, s, todo)
    eng.reporter.step_start(0, 0, f"rollback:{s.id}", f"Roll back: {s.label}", ", ".join(todo or ran))

    def undo_on(node: str) -> CommandResult:
        attempt = eng.journal.step(s.id, rollback=True)["nodes"].get(node, {}).get("attempts", 0) + 1
        tag = f"{eng.journal.run_id}.rollback:{s.id}.{node}.{attempt}"  # found again if the outcome is lost
        eng.journal.mark(s.id, [node], STARTED, rollback=True, node_fields={node: {"tag": tag}})
        r = CommandResult(node, "", 0, 0.0)
        for cmd in s.rollback or []:
            r = eng.send(node, eng.render(cmd, node), timeout=s.timeout, key=f"rollback:{s.id}", tag=tag)
            if not r.ok:
                break
        state = DONE if r.ok else (UNKNOWN if r.exit_code is None and r.sent else FAILED)
        eng.journal.mark(s.id, [node], state, rollback=True, exit_code=r.exit_code, sync=False)  # an outcome
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


def _settle_in_doubt(eng: "Engine", s: Step, nodes: list[str]) -> None:
    """A rollback left `started` by a crash is in doubt, like one whose outcome was lost: its
    commands (idempotent by contract) are sent again, but never while the first copy may still
    run on the node."""
    from bmupgrade.engine.settle import wait_while_running

    crashed = [n for n in nodes if eng.journal.node_state(s.id, n, rollback=True) == STARTED]
    if crashed:
        eng.journal.mark(s.id, crashed, UNKNOWN, rollback=True, outcome="the run stopped while it was in flight")
    in_doubt = [n for n in nodes if eng.journal.node_state(s.id, n, rollback=True) == UNKNOWN]
    if in_doubt:
        wait_while_running(eng, s, in_doubt, rollback=True)


def _mark_undone(eng: "Engine", s: Step, nodes: list[str]) -> None:
    crashed = eng.journal.nodes_in(s.id, STARTED)
    if crashed:
        eng.journal.mark(s.id, crashed, UNKNOWN, outcome="the run stopped while it was in flight")
    nodes = [n for n in nodes if eng.journal.node_state(s.id, n) != ROLLED_BACK]
    if nodes:
        eng.journal.mark(s.id, nodes, ROLLED_BACK)
