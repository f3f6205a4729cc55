"""The guards that stand between the engine and an unsafe change: fencing (STONITH), the
deadline (which must cover the whole HA-off window), the HA-off debt (marker first, exit 5,
the restore command on every exit path) and the signals (handlers only set flags).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING

from bmupgrade.errors import EXIT_DEADLINE, EXIT_FAILED
from bmupgrade.journal import ABORTED, DEADLINE, now, whoami
from bmupgrade.runbook import Runbook, Step, format_duration

if TYPE_CHECKING:
    from bmupgrade.engine.core import Engine


# ------------------------------------------------------------------------------ STONITH

def fencing_gap(rb: Runbook, fencing: str | None, *, preflight_ran: bool) -> str | None:
    """Why the STONITH guard must stop before `ha: enable`, or None. `fencing` is what preflight
    recorded: "enabled", "disabled" or None (no fencing check). Before preflight has run, a
    runbook with fencing checks leaves the verdict to it."""
    if fencing == "enabled" or (not preflight_ran and rb.fencing_checks):
        return None
    if rb.fencing == "none":
        return ("this HA stack has no fencing (the runbook says `fencing: none`): nothing powers off a node that "
                "loses sight of the other, so both can take the public IP")
    if fencing == "disabled":
        return "fencing (STONITH) is NOT enabled"
    return "no preflight check of this runbook proves that fencing (STONITH) is enabled"


def stonith_guard(eng: "Engine", step: Step, title: str | None = None) -> None:
    """Safety rule 7: automatic failover goes back on only with fencing proven by a preflight
    check, or with the operator's explicit word (a prompt, or --allow-no-stonith) — whether the
    `ha: enable` step does it or the rollback of the `ha: disable` step (`title` says which)."""
    from bmupgrade.engine.core import Stop

    why = fencing_gap(eng.rb, eng.journal.data.get("fencing"), preflight_ran=True)
    if why is None or eng.fencing_accepted:
        return
    how = "--allow-no-stonith" if eng.options.allow_no_stonith else None
    title = title or step.label
    if how is None and eng.prompter.interactive and eng.prompter.confirm_no_fencing(step.id, title, why):
        how = "prompt"
    if how:
        eng.journal.set("fencing_accepted", {**whoami(), "at": now(), "step": step.id, "how": how, "why": why})
        eng.fencing_accepted = True  # once per session (a retry does not ask again; a resume does)
        return
    raise Stop(EXIT_FAILED, ABORTED, fencing_refusal(eng, f"Stopped before '{step.id}'", why))


def fencing_refusal(eng: "Engine", head: str, why: str) -> str:
    """What to say when the guard stops: why, and the command that goes on (`rollback` for a
    run being rolled back, which never goes forward again; else `resume`)."""
    from bmupgrade.engine.phases import Mode

    rolling_back = eng.mode == Mode.ROLLBACK or eng.journal.data.get("direction") == "rollback"
    verb = "rollback" if rolling_back else "resume"
    if eng.rb.fencing == "none":
        return (f"{head}: {why}; turning automatic failover back on risks a split brain. Make sure the nodes "
                "see each other (the link between them; keepalived logs each VRRP state change), then accept "
                f"the risk: `{eng.hint(verb, '--allow-no-stonith')}`.")
    return (f"{head}: {why}, and turning automatic failover back on without it risks a split brain. Check "
            f"fencing, then `{eng.hint(verb)}` (with --allow-no-stonith to accept the risk).")


# ------------------------------------------------------------------------------ deadline

def step_estimate(rb: Runbook, history: dict[str, float], step: Step) -> float:
    """Seconds a step may take: earlier runs' measured duration, else its worst case (every
    retry and its delay, the verify, each node in turn unless parallel)."""
    if step.manual is not None:
        return 0.0
    if step.id in history:
        per_node = history[step.id]
    else:
        attempts = step.retries + 1
        delays = sum(min(step.retry_delay * 2 ** i, 300) for i in range(step.retries))
        per_node = attempts * step.timeout * (len(step.run or []) + (1 if step.verify else 0)) + delays
    nodes = len(rb.node_names) if (step.on or "all") == "all" else 1
    return per_node if step.parallel else per_node * nodes


def window_steps(rb: Runbook, start: Step) -> list[Step]:
    """Everything from `start` (the HA-off step) up to and including the HA-on step."""
    ids = [s.id for s in rb.steps]
    enable = rb.ha_step("enable")
    end = ids.index(enable.id) if enable else len(ids) - 1
    return rb.steps[ids.index(start.id): end + 1]


def deadline_scope(rb: Runbook, step: Step) -> list[Step]:
    """What must fit before `step` starts: the whole HA window for the HA-off step (HA goes off
    only if it can come back in time), else the step itself."""
    return window_steps(rb, step) if step.ha == "disable" else [step]


def estimate(rb: Runbook, history: dict[str, float], steps: list[Step]) -> float:
    return sum(step_estimate(rb, history, s) for s in steps)


def estimate_basis(history: dict[str, float], steps: list[Step]) -> tuple[str, str]:
    """How an estimate was made, and (when timeouts made it) how to get a truer one."""
    timed = [s for s in steps if s.manual is None]
    unmeasured = [s for s in timed if s.id not in history]
    if not unmeasured:
        return "measured in earlier runs", ""
    basis = "worst case from the timeouts" if len(unmeasured) == len(timed) else \
        f"{len(timed) - len(unmeasured)} of {len(timed)} steps measured in earlier runs, the rest worst case " \
        "from the timeouts"
    return basis, (" Durations are learnt from earlier runs in this --state-dir (a rehearsal on the lab or a "
                   "staging pair counts); without them every attempt of every command is assumed to take its "
                   "whole `timeout:`. Set a later --deadline, or lower the timeouts that are generous.")


def check_deadline(eng: "Engine", step: Step) -> None:
    """Stop before a step that may not finish in time. Before HA goes off, the whole window must
    fit (HA stays on). Inside the window the deadline no longer stops steps: stopping there
    would leave HA off, which is worse than running late (a warning says so)."""
    from bmupgrade.engine.core import Stop

    if eng.options.deadline is None or step.manual is not None:
        return
    left = eng.options.deadline - time.time()
    in_window = step.ha == "disable" and not eng.ha.is_off()
    scope = deadline_scope(eng.rb, step) if in_window else [step]
    need = estimate(eng.rb, eng.options.history, scope)
    if need <= left:
        return
    label = f"the HA-off window ('{scope[0].id}' … '{scope[-1].id}')" if in_window else f"step '{step.id}'"
    basis, how = estimate_basis(eng.options.history, scope)
    msg = (f"Deadline: {label} may take {format_duration(need)} ({basis}) but only "
           f"{format_duration(max(left, 0))} are left before {eng.deadline_text()}")
    if eng.ha.is_off():
        eng.reporter.warn(msg + "; HA is off, so the run goes on to bring it back rather than stop.")
        return
    msg += "; stopped before it with HA on, nothing half-done." + how
    if eng.options.on_deadline == "rollback":
        eng.reporter.warn(msg)
        from bmupgrade.engine.rollback import preview, roll_back

        undo = preview(eng)[0]
        done = roll_back(eng, ask=False)
        raise Stop(EXIT_DEADLINE, DEADLINE, msg + (" Nothing to roll back." if not undo else " Rolled back."
                                                   if done else " Rollback incomplete — see above."))
    raise Stop(EXIT_DEADLINE, DEADLINE, msg)


# ------------------------------------------------------------------------------ HA debt

class HaDebt:
    """Whether HA handling is (or may be) off, journaled from every step that changes it, with
    the marker on the nodes before it goes off."""

    def __init__(self, eng: "Engine"):
        self.eng = eng

    def is_off(self) -> bool:
        return self.eng.journal.data["ha"].get("state") == "off"

    def going_off(self, step: Step, node: str, *, why: str) -> None:
        """Before a command that turns HA off: marker on every node (a failed write stops the run
        with HA still on), then the journal says HA may be off from now."""
        from bmupgrade.engine import remote
        from bmupgrade.engine.core import Stop

        eng = self.eng
        if self.is_off():
            return
        info = {"run_id": eng.journal.run_id, **whoami(), "since": now(), "step": step.id, "why": why,
                "expected_end": eng.deadline_text() if eng.options.deadline else None,
                "restore": self._restore_for_the_marker(node)}
        results = eng.on_each(eng.rb.node_names, lambda n: eng.send(
            n, remote.write_marker(eng.rb.node(n).state_dir, info), timeout=15, key="ha-marker", quiet=True))
        bad = {n: r for n, r in results.items() if not r.ok}
        if bad:
            raise Stop(EXIT_FAILED, ABORTED,
                       "Could not write the HA-off marker on " + ", ".join(
                           f"{n} ({r.error or 'exit ' + str(r.exit_code)})" for n, r in bad.items())
                       + f"; stopped before '{step.id}' with HA still on.")
        eng.journal.set("ha", {**eng.journal.data["ha"], "state": "off", "off_since": now(), "on_at": None,
                               "off_by": step.id, "off_t": time.time()})
        eng.journal.crash_point("ha-off", step.id)  # tests: killed with the markers out, the command not yet

    def back_on(self, step_id: str, *, at: float | None = None) -> None:
        """HA is back on (`at`: when the enabling command returned; its verify only confirms it)."""
        from bmupgrade.engine import remote

        eng = self.eng
        eng.journal.set("ha", {**eng.journal.data["ha"], "state": "on", "on_at": now(), "on_by": step_id,
                               "on_t": at or time.time()})
        for node, r in eng.on_each(eng.rb.node_names, lambda n: eng.send(
                n, remote.remove_marker(eng.rb.node(n).state_dir), timeout=15, key="ha-marker",
                quiet=True, must_audit=False)).items():
            if not r.ok:
                eng.reporter.warn(f"{node}: could not remove the HA-off marker ({r.error or r.exit_code}); "
                                  f"remove {eng.rb.node(node).state_dir}/ha-off by hand")

    def _restore_for_the_marker(self, node: str) -> str:
        """For a colleague reading the marker: the command with this run's state dir."""
        from bmupgrade.hints import Context, qualify

        state_dir = self.eng.journal.path.parent.parent
        return qualify(Context.of(str(state_dir)), self.restore_hint(node)) if state_dir.name else self.restore_hint(node)

    def restore_hint(self, node: str | None = None) -> str:
        """The exact command that brings HA back (and the manual fallback). A run being rolled
        back never goes forward again: then only `rollback` is offered (resume would be refused)."""
        eng = self.eng
        step = eng.rb.ha_step("disable")
        by_hand = ""
        if step is not None:
            nodes = eng.journal.nodes_in(step.id, "done", "started", "failed", "unknown") or [node or "<node>"]
            first = nodes[0] if nodes[0] in eng.rb.node_names else None
            cmds = "; ".join(eng.shown(c, first) for c in step.rollback or [])
            by_hand = f"by hand on {nodes[0]}: {cmds}" if cmds else ""
        if eng.journal.data.get("direction") == "rollback":
            return eng.hint("rollback") + (f"  ({by_hand})" if by_hand else "")
        return f"{eng.hint('resume')}  (or: {eng.hint('rollback')}{'; ' + by_hand if by_hand else ''})"


# ------------------------------------------------------------------------------ signals

class Signals:
    """SIGINT, SIGTERM and SIGHUP only set flags here (no I/O under locks, no prompt); the main
    loop acts at its next safe point. A second signal while a command runs stops at once
    (KeyboardInterrupt): the step becomes `unknown` and resume settles it."""

    NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}

    def __init__(self) -> None:
        self.count = 0
        self.last: str | None = None  # "Ctrl-C" | "SIGTERM" | "SIGHUP"
        self.exiting = False  # on the exit path: never raise, the cleanup must finish
        self._old: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.NAMES:
            self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old = {}

    def _handle(self, signum, frame) -> None:
        self.count += 1
        self.last = self.NAMES.get(signum, str(signum))
        if self.exiting:
            return
        if self.count >= 2:
            raise KeyboardInterrupt
        note = (f"\n{self.last}: the running command is let finish, then the run stops at a safe point "
                "(again to stop at once: the step is then recorded as unknown).\n")
        try:
            os.write(2, note.encode())  # a raw write: no Python lock can be held by the interrupted code
        except OSError:
            pass

    @property
    def pending(self) -> bool:
        return self.count == 1

    @property
    def operator(self) -> bool:
        """Ctrl-C (a person at the keyboard, who may want to continue) vs a scheduler/hangup."""
        return self.last == "Ctrl-C"

    def clear(self) -> None:
        self.count = 0
        self.last = None
