"""The Engine: one loop over the declared phases, one exit path for every outcome.

Whatever ends an invocation — success, a Stop, a second Ctrl-C, a signal, a full disk, a bug —
goes through `_end`: the journal says how it ended (never `running` without a live owner), the
cluster lock is released (unless a command may still run), and if HA handling is (or may be)
off the exit code is 5 and the exact restore command is printed. The engine never talks to a
terminal or to Fabric directly: it asks a Prompter and tells a Reporter.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from bmupgrade.engine.carried import CarriedProbe
from bmupgrade.engine.guards import HaDebt, Signals
from bmupgrade.engine.phases import CHANGING, PHASES, SUCCESS, Mode
from bmupgrade.errors import EXIT_DEADLINE, EXIT_FAILED, EXIT_HA_OFF, EXIT_INTERRUPTED, EXIT_OK, BmError
from bmupgrade.journal import (ABORTED, DONE, FAILED_RUN, INTERRUPTED, PARTLY_ROLLED_BACK, PENDING, REFUSED,
                               ROLLED_BACK_RUN, SKIPPED, STARTED, UNKNOWN, Journal, now)
from bmupgrade.outcome import ABORT, CONTINUE, ROLLBACK, StepRow, Summary
from bmupgrade.plan import Renderer
from bmupgrade.probes import PROBE_TIMEOUT, VipProbe, on_each
from bmupgrade.runbook import Runbook, Step
from bmupgrade.templating import Redactor
from bmupgrade.engine.sender import AuditedSender
from bmupgrade.transport.base import CommandResult, Transport

log = logging.getLogger(__name__)
__all__ = ["Engine", "RunOptions", "Stop", "Mode"]


@dataclass
class RunOptions:
    on_failure: str = ABORT  # abort | rollback (non-interactive policy; the prompter applies it)
    on_deadline: str = "stop"  # stop | rollback
    deadline: float | None = None  # epoch seconds
    from_step: str | None = None
    break_lock: bool = False
    force: bool = False  # resume: a changed runbook/variables; rollback: past the point of no return
    allow_no_stonith: bool = False  # the STONITH guard: go on without proven fencing
    history: dict[str, float] = field(default_factory=dict)  # step id -> measured seconds (earlier runs)
    rerun: set[str] = field(default_factory=set)  # resume: run these skipped steps again
    cli_args: str = ""  # "--state-dir X": appended to every command we print, so it works as printed
    identity_changes: list[str] = field(default_factory=list)  # resume --force: what differs (journaled)
    force_past_no_return: bool = False  # `rollback --force` (then a typed confirmation)


class Stop(Exception):
    """Unwinds the invocation to its single exit path with a status and an exit code.
    status None: leave the journal's status as it is (a declined prompt changes nothing)."""

    def __init__(self, exit_code: int, status: str | None, message: str):
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status
        self.message = message


class Engine:
    def __init__(self, rb: Runbook, transport: Transport, journal: Journal, prompter, reporter,
                 audit=None, options: RunOptions | None = None):
        self.rb, self.transport, self.journal = rb, transport, journal
        self.prompter, self.reporter, self.audit = prompter, reporter, audit
        self.options = options or RunOptions()
        self.redact = Redactor([v.value for v in rb.vars.values() if v.secret])
        self.sender = AuditedSender(transport, audit, self.redact, reporter)
        self.mode = Mode.RUN
        self.signals = Signals()
        self.ha = HaDebt(self)
        self.locked: list[str] = []
        self.lock_probe: VipProbe | None = None  # sent with the lock, in its round trip (see phases.lock)
        self.carried = CarriedProbe(self.sender, rb)  # a probe sent with the round trip before a step
        self.in_flight: dict[str, list[str]] = {}  # step id -> nodes whose command is being sent
        self.run_ended: dict[tuple[str, str], float] = {}  # (step, node) -> when its run commands returned
        self.fencing_accepted = False
        self.safety_passed = False
        self.rollback_confirmed = False
        self.sleep: Callable[[float], None] = time.sleep

    # ================================================================== the loop
    def execute(self, mode: Mode = Mode.RUN) -> Summary:
        """Run the phases of this mode; always returns a Summary with the exit code."""
        self.mode = Mode(mode)
        code, status, message = SUCCESS[self.mode]
        hard = False
        self.signals.install()
        try:
            try:
                for phase in PHASES:
                    if self.mode in phase.modes:
                        phase.run(self)
            except Stop as stop:
                code, status, message = stop.exit_code, stop.status, stop.message
            except KeyboardInterrupt:
                hard = True
                code, status, message = EXIT_INTERRUPTED, INTERRUPTED, self._hard_stop()
            except BmError as exc:  # journal unwritable (disk full), illegal transition, ...
                code, status, message = exc.exit_code or EXIT_FAILED, FAILED_RUN, str(exc)
            except Exception as exc:  # a bug must still end cleanly, HA banner included
                log.debug("internal error", exc_info=True)
                code, status = EXIT_FAILED, FAILED_RUN
                message = f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"
            self.signals.exiting = True  # a signal now only waits for the cleanup (unlock, journal)
            return self._end(code, status, message, hard)
        finally:
            self.signals.restore()

    def _hard_stop(self) -> str:
        """Second Ctrl-C/signal: every command in flight becomes `unknown` (resume settles it)."""
        lost = []
        for step_id, nodes in list(self.in_flight.items()):
            nodes = [n for n in nodes if self.journal.node_state(step_id, n) == STARTED]
            if nodes:
                self._safely(lambda: self.journal.mark(step_id, nodes, UNKNOWN, outcome="interrupted (second "
                                                       "Ctrl-C or signal) while in flight"))
                lost.append(f"'{step_id}' on {', '.join(nodes)}")
        if not lost:
            return "Interrupted. Nothing was in flight."
        return ("Interrupted while " + "; ".join(lost) + " ran: it may still be running on the node (SSH does not "
                "stop it); its outcome is unknown and resume checks before deciding anything.")

    def _end(self, code: int, status: str | None, message: str, hard: bool) -> Summary:
        if status == "succeeded" and self.mode == Mode.CHECK:
            status = None
        if self.mode in CHANGING and status is not None and status != self.journal.status:
            self._safely(lambda: self.journal.set_status(status, ended_at=now(),
                                                         exit={"code": code, "message": message}))
        self._safely(self.reporter.step_end)
        if self.safety_passed and not hard and status not in (None, "succeeded", ROLLED_BACK_RUN, PARTLY_ROLLED_BACK) \
                and self.mode in (Mode.RUN, Mode.RESUME):
            self._safely(lambda: self.record_facts("stop"))  # what resume compares with
        keep_lock = hard and any(self.in_flight.values())
        if not keep_lock:
            self._safely(self._unlock)
        if self.mode in CHANGING and status not in (None, "running"):
            self._safely(self.journal.snapshot)
        if self.ha.is_off() and code not in (EXIT_DEADLINE, EXIT_INTERRUPTED):
            code = EXIT_HA_OFF
        if keep_lock:
            message += " The cluster lock stays on the nodes while that command may run; resume takes it over."
        return self.summary(code, status or self.journal.status, message)

    def _safely(self, fn) -> None:
        """Cleanup on the way out must not hide the run's real outcome (disk full, dead node...)."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            log.debug("cleanup failed", exc_info=True)
            try:
                self.reporter.warn(f"while stopping: {exc}")
            except Exception:  # noqa: BLE001
                pass

    def _unlock(self) -> None:
        from bmupgrade.engine import remote

        nodes, self.locked = self.locked, []
        self.on_each(nodes, lambda n: self.send(n, remote.unlock(self.rb.node(n).state_dir, self.journal.run_id),
                                                timeout=15, key="unlock", quiet=True, must_audit=False))

    # ================================================================== sending (every command goes here)
    def send(self, node: str, command: str, **kw) -> CommandResult:
        """Audited, then sent (see AuditedSender.send)."""
        return self.sender.send(node, command, **kw)

    def send_together(self, node: str, commands: list[tuple[str, str]], *, timeout: float) -> list[CommandResult]:
        """Read-only commands in one round trip, each audited (see AuditedSender.send_together)."""
        return self.sender.send_together(node, commands, timeout=timeout)

    def ask_each(self, asked: dict[str, list[tuple[str, str, float]]]) -> dict[str, dict[str, CommandResult]]:
        """Each node's read-only commands in one round trip (see AuditedSender.ask_each)."""
        return self.sender.ask_each(asked)

    def on_each(self, nodes: list[str], fn, *, parallel: bool = True) -> dict[str, Any]:
        return on_each(nodes, fn, parallel=parallel)

    def probe(self) -> VipProbe:
        """Who holds the public IP, asked now (audited: the evidence for safety rule 1)."""
        cmds = {n: self.probe_command(n) for n in self.rb.node_names}
        return VipProbe(self.on_each(self.rb.node_names, lambda n: self.send(
            n, cmds[n], timeout=PROBE_TIMEOUT, key="vip-probe", capture=True, quiet=True)))

    def probe_command(self, node: str) -> str:
        return self.render(self.rb.cluster.vip_probe, node)

    def opening_probe(self) -> VipProbe:
        """The probe that came back with the lock (same round trip, moments ago). Only the
        phases right after the lock use it (preflight, rollback safety, the start's facts): a
        step's target is always re-probed (safety rule 1)."""
        return self.lock_probe or self.probe()

    def resolve(self, target: str, *, probe: VipProbe | None = None) -> list[str]:
        """Concrete nodes for a target. primary/secondary re-probe the VIP now (safety rule 1), or
        use the probe that the round trip just before carried (engine/carried.py)."""
        if target == "all":
            return list(self.rb.node_names)
        if target.startswith("where:"):
            ran = self.journal.nodes_in(target[6:], DONE, STARTED, UNKNOWN, "failed")
            if not ran:
                raise Stop(EXIT_FAILED, FAILED_RUN, f"target {target}: step '{target[6:]}' ran on no node")
            return ran
        if target in ("primary", "secondary"):
            try:
                holder = (probe or self.carried.take() or self.probe()).single_holder(self.rb.cluster.public_ip)
            except BmError as exc:
                raise Stop(EXIT_FAILED, FAILED_RUN, str(exc).replace("`bmupgrade resume`", f"`{self.hint('resume')}`")) from None
            return [holder] if target == "primary" else [n for n in self.rb.node_names if n != holder]
        return [target]

    # ================================================================== rendering and hints
    def render(self, text: str, node: str | None) -> str:
        """For sending: real values, with the captured ones from the journal."""
        return Renderer(self.rb, self.journal.data["captured"])(text, self.rb.node(node) if node else None)

    def shown(self, text: str, node: str | None) -> str:
        """For people, logs and the journal: secrets redacted."""
        return self.redact(self.render(text, node))

    def hint(self, verb: str, extra: str = "") -> str:
        """A command for a person to run next, exactly as it must be typed."""
        parts = ["bmupgrade", verb, self.journal.run_id, extra, self.options.cli_args]
        return " ".join(p for p in parts if p)

    def ssh_hint(self, node: str) -> str:
        """How to reach the node by hand: the ssh config, key and known_hosts bmupgrade used."""
        from bmupgrade.hints import ssh_command

        return f"{ssh_command(self.rb, node)}    # then look at the step's output in the audit log"

    def deadline_text(self) -> str:
        from bmupgrade.timeparse import show_local

        return show_local(self.options.deadline) if self.options.deadline else "-"

    # ================================================================== state questions
    def refused_status(self) -> str:
        """A refusal before any change: a new run is `refused` (nothing to resume); a resumed
        run that has sent something stays resumable."""
        return REFUSED if self.mode == Mode.RUN or not self._anything_sent() else FAILED_RUN

    def _anything_sent(self) -> bool:
        """A step's command may have reached a node, or the HA-off markers did (they are written
        before the HA-off command is sent; a resume or a rollback clears them)."""
        return self.ha.is_off() or any(self.step_was_sent(sid) for sid in self.journal.data["steps"])

    def rolled_back_status(self, done: bool) -> str:
        """After a rollback: partly, when a point of no return held it (the upgrade up to it stays)."""
        from bmupgrade.engine.rollback import held_by

        if not done:
            return FAILED_RUN
        return PARTLY_ROLLED_BACK if held_by(self) is not None else ROLLED_BACK_RUN

    def step_was_sent(self, step_id: str) -> bool:
        return bool(self.journal.nodes_sent(step_id)) or \
            any(e.get("state") != PENDING for e in self.journal.step(step_id)["nodes"].values())

    def rb_check(self, check_id: str):
        return next(c for c in self.rb.preflight if c.id == check_id)

    def apply_step_flags(self) -> None:
        """--from STEP (earlier pending steps skipped) and resume --rerun STEP (a skipped one again)."""
        for sid in sorted(self.options.rerun):
            skipped = self.journal.nodes_in(sid, SKIPPED)
            if skipped:
                self.journal.mark(sid, skipped, PENDING, note="--rerun")
            elif self.journal.step(sid)["state"] == SKIPPED:
                self.journal.set(["steps", sid, "state"], PENDING.value)
        self.options.rerun = set()
        if not self.options.from_step:
            return
        ids = [s.id for s in self.rb.steps]
        for s in self.rb.steps[: ids.index(self.options.from_step)]:
            if self.journal.step(s.id)["state"] == PENDING:
                self.journal.set(["steps", s.id], {"state": SKIPPED.value, "nodes": {},
                                                   "reason": f"--from {self.options.from_step}"})
        self.options.from_step = None

    # ================================================================== safe points
    def checkpoint(self, step: Step | None, *, completed: bool | None) -> None:
        """Between commands: act on a pending signal. Ctrl-C asks (continue is the default after a
        step that succeeded); SIGTERM/SIGHUP, or no terminal, stop here cleanly."""
        if not self.signals.pending:
            return
        who = self.signals.last
        self.signals.clear()
        sid, title = (step.id, step.label) if step else ("-", "-")
        if who == "Ctrl-C" and self.prompter.interactive:
            from bmupgrade.engine.rollback import preview

            decision = self.prompter.on_interrupt(sid, title, completed, preview(self)[0])
            if decision == CONTINUE:
                return
            if decision == ROLLBACK:
                from bmupgrade.engine.rollback import outcome_text, roll_back

                done = roll_back(self, ask=True)
                raise Stop(EXIT_FAILED, self.rolled_back_status(done), "Interrupted; " + outcome_text(self, done))
        raise Stop(EXIT_INTERRUPTED, INTERRUPTED,
                   f"Stopped by {who} at a safe point" + (f" (after '{sid}')" if completed else "")
                   + f"; `{self.hint('resume')}` continues.")

    # ================================================================== facts and the summary
    def record_facts(self, label: str) -> None:
        """At a stop: what a resume compares with (a new VIP probe)."""
        from bmupgrade.engine.facts import record

        record(self, label)

    def _ha_off_sent_at(self) -> float:
        """When the HA-off command was sent (its `started` record), not when the marker went out."""
        ha = self.journal.data["ha"]
        step = self.rb.ha_step("disable")
        starts = [e.get("t_start") for e in self.journal.step(step.id)["nodes"].values()
                  if e.get("t_start")] if step else []
        return min(starts) if starts else ha["off_t"]

    def _next_commands(self, undo: list[str]) -> list[str]:
        """`resume` / `rollback` for the run as it is left — only what that run accepts: no
        `resume` of a run that is not open or goes backwards, no `rollback` with nothing to undo."""
        from bmupgrade.journal import OPEN_STATUSES

        status = self.journal.status
        if status in (ROLLED_BACK_RUN, PARTLY_ROLLED_BACK, REFUSED):
            return []
        forward = status in OPEN_STATUSES and self.journal.data.get("direction") != "rollback"
        return ([self.hint("resume")] if forward else []) + ([self.hint("rollback")] if undo else [])

    def summary(self, exit_code: int, status: str, message: str) -> Summary:
        rows = []
        for s in self.rb.steps:
            e = self.journal.step(s.id)
            rb_entry = self.journal.data["rollback"].get(s.id)
            durations = [n.get("duration") for n in e["nodes"].values() if n.get("duration") is not None]
            rows.append(StepRow(s.id, s.label, e["state"], {n: v["state"] for n, v in e["nodes"].items()},
                                max(durations) if durations else None,
                                rb_entry["state"] if rb_entry else None, bool(s.rollback)))
        ha = self.journal.data["ha"]
        window = ha["on_t"] - self._ha_off_sent_at() if ha.get("off_t") and ha.get("on_t") else None
        ha_open = self.ha.is_off()
        from bmupgrade.engine.rollback import preview

        want_next = exit_code != EXIT_OK and self.mode != Mode.CHECK
        want_cannot = status in (ROLLED_BACK_RUN, PARTLY_ROLLED_BACK, FAILED_RUN, ABORTED)
        undo, cannot = preview(self) if want_next or want_cannot else ([], [])  # a success needs neither
        nxt = self._next_commands(undo) if want_next else []
        if ha_open:
            message += " HA handling is still OFF (maintenance): the cluster will not fail over."
        cannot = cannot if want_cannot else []
        logs = [str(self.journal.path)] + ([str(self.audit.jsonl_path)] if self.audit else [])
        return Summary(self.journal.run_id, status, exit_code, message, rows, window, ha_open,
                       self.ha.restore_hint() if ha_open else None, nxt, cannot,
                       logs if self.mode != Mode.CHECK else [])
