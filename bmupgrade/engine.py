"""The engine: walks a runbook over a transport, journaling every transition.

The order of a run: connect → lock the cluster → preflight (read-only; all must pass) →
facts → steps → postflight. Every step is journaled `started` before its command is sent and
`done`/`failed` after; `primary` is re-probed just before each step that targets it. The
engine asks a Prompter at decision points and tells a Reporter what happens; it never talks
to a terminal or to Fabric directly.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from bmupgrade import checks as checks_mod
from bmupgrade.errors import (
    EXIT_DEADLINE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PREFLIGHT,
    BmError,
)
from bmupgrade.journal import (
    ABORTED,
    DEADLINE,
    DONE,
    FAILED,
    FAILED_RUN,
    INTERRUPTED,
    PENDING,
    ROLLED_BACK,
    ROLLED_BACK_RUN,
    SKIPPED,
    STARTED,
    SUCCEEDED,
    Journal,
    now,
    whoami,
)
from bmupgrade.plan import Renderer, build_plan
from bmupgrade.probes import on_each, probe_vip
from bmupgrade.prompts import ABORT, ASSUME_DONE, RERUN, RETRY, ROLLBACK, SKIP, FailureContext
from bmupgrade.report import StepRow, Summary
from bmupgrade.runbook import Runbook, Step, format_duration
from bmupgrade.templating import Redactor
from bmupgrade.transport.base import CommandResult, Transport, TransportError

LOCK_EXIT = 75  # the remote lock command's "held by someone else"
REPROBE_AFTER = 0.5  # s: a confirmation slower than this was a person, not --yes (re-probe the VIP)


@dataclass
class RunOptions:
    on_failure: str = ABORT  # abort | rollback (non-interactive policy; the prompter applies it)
    on_deadline: str = "stop"  # stop | rollback
    deadline: float | None = None  # epoch seconds
    from_step: str | None = None
    break_lock: bool = False
    force: bool = False
    allow_no_stonith: bool = False  # the STONITH guard: go on without proven fencing
    history: dict[str, float] = field(default_factory=dict)  # step id -> measured seconds (earlier runs)


def fencing_gap(rb: Runbook, fencing: str | None, *, preflight_ran: bool) -> str | None:
    """Why the STONITH guard must stop before `ha: enable`, or None. `fencing` is what preflight
    recorded: "enabled", "disabled" or None (no fencing check). Before preflight has run, a
    runbook with fencing checks leaves the verdict to it."""
    if fencing == "enabled" or (not preflight_ran and rb.fencing_checks):
        return None
    if fencing == "disabled":
        return "fencing (STONITH) is NOT enabled"
    return "no preflight check of this runbook proves that fencing (STONITH) is enabled"


class Stop(Exception):
    """Unwinds the run to its single exit path with a status and an exit code."""

    def __init__(self, exit_code: int, status: str, message: str):
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status
        self.message = message


class Engine:
    def __init__(self, rb: Runbook, transport: Transport, journal: Journal, prompter, reporter,
                 audit=None, options: RunOptions | None = None):
        self.rb = rb
        self.transport = transport
        self.journal = journal
        self.prompter = prompter
        self.reporter = reporter
        self.audit = audit
        self.options = options or RunOptions()
        secrets = [v.value for v in rb.vars.values() if v.secret]
        self.redact = Redactor(secrets)
        self._locked: list[str] = []
        self._interrupts = 0  # Ctrl-C count during this run
        self._run_ended: dict[tuple[str, str], float] = {}  # (step, node) -> when its run commands returned
        self._fencing_accepted = False  # the operator accepted failover without fencing (STONITH guard)

    # ================================================================== Ctrl-C
    def _on_sigint(self, signum, frame) -> None:
        """First Ctrl-C: let the running remote command finish, then decide at a safe point.
        Second: stop at once (the journal keeps the step `started`, so resume asks)."""
        self._interrupts += 1
        if self._interrupts == 1:
            self.reporter.warn("Interrupt: waiting for the running command to finish, then you decide "
                               "(Ctrl-C again to stop now; the step stays 'started' and resume will ask).")
            return
        raise KeyboardInterrupt

    def _checkpoint(self, step: Step | None = None) -> None:
        """A safe point between commands: act on a pending first Ctrl-C."""
        if self._interrupts != 1:
            return
        self._interrupts = 0
        if self.prompter.interactive:
            ctx = FailureContext(step.id if step else "-", step.label if step else "-", [],
                                 "  Interrupted by Ctrl-C (the last command finished).", "", "",
                                 self._undo_preview()[0])
            decision = self.prompter.on_failure(ctx)
            if decision == ROLLBACK:
                done = self._rollback()
                raise Stop(EXIT_FAILED, ROLLED_BACK_RUN if done else FAILED_RUN,
                           "Interrupted; " + ("rolled back." if done else "rollback incomplete — see above."))
            if decision in (RETRY, SKIP):
                return  # carry on (retry = continue where we were)
        raise Stop(EXIT_INTERRUPTED, INTERRUPTED,
                   f"Interrupted by Ctrl-C at a safe point; `bmupgrade resume {self.journal.run_id}` continues.")

    # ================================================================== rendering
    def render(self, text: str, node: str | None) -> str:
        """For sending: real values, with the captured ones from the journal."""
        return Renderer(self.rb, self.journal.data["captured"])(text, self.rb.node(node) if node else None)

    def shown(self, text: str, node: str | None) -> str:
        """For people, logs and the journal: secrets redacted."""
        return self.redact(self.render(text, node))

    # ================================================================== the run
    def execute(self, *, resuming: bool = False) -> Summary:
        """Run (or resume) to the end or to a stop; always returns a Summary with the exit code."""
        exit_code, status, message = EXIT_OK, SUCCEEDED, "Upgrade complete."
        import signal
        import threading

        old_handler = None
        hard_stop = False
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self._connect(resuming)
            self._lock_cluster()
            if resuming:
                self._show_changes_since_stop()
            elif self.journal.data["preflight"] != "passed":
                self._preflight()
            self._record_facts("resume" if resuming else "start")
            self._apply_from_step()
            self._steps()
            self._postflight()
            self.journal.set_status(SUCCEEDED, ended_at=now())
        except Stop as stop:
            exit_code, status, message = stop.exit_code, stop.status, stop.message
            self._record_facts_quietly("stop")
            self.journal.set_status(status, ended_at=now(), exit={"code": exit_code, "message": message})
        except KeyboardInterrupt:
            hard_stop = True
            exit_code, status = EXIT_INTERRUPTED, INTERRUPTED
            message = ("Interrupted. A command in flight may still be running on its node (SSH does not "
                       "stop it); its step stays 'started' and resume will ask about it.")
            self.journal.set_status(status, ended_at=now(), exit={"code": exit_code, "message": message})
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
            self.reporter.step_end()
            if not hard_stop:  # after a second Ctrl-C, leave now: keep the lock
                self._unlock_cluster()  # (resume of this run takes it over)
        return self.summary(exit_code, status, message)

    # ================================================================== connect and lock
    def _connect(self, resuming: bool) -> None:
        from bmupgrade.probes import node_addresses

        try:
            self.transport.connect(node_addresses(self.rb))
        except TransportError as exc:
            # before a run changed anything this is a preflight refusal; on resume, a failure
            code = EXIT_FAILED if resuming else EXIT_PREFLIGHT
            raise Stop(code, FAILED_RUN, f"Cannot reach {exc}. Nothing was changed by this attempt.") from None

    def _lock_cluster(self) -> None:
        """A remote lock file on every node naming who/where/when/run; refuse if another run holds it."""
        me = {"run_id": self.journal.run_id, **whoami(), "since": now()}
        info = json.dumps(me)
        held: list[str] = []

        def take(node: str) -> CommandResult:
            d = shlex.quote(self.rb.node(node).state_dir)
            force = "rm -f {d}/lock; ".format(d=d) if self.options.break_lock else ""
            cmd = (f"mkdir -p {d} && {force}if ( set -C; printf '%s\\n' {shlex.quote(info)} > {d}/lock ) 2>/dev/null; "
                   f"then echo acquired; elif grep -qF {shlex.quote(self.journal.run_id)} {d}/lock; then "
                   f"printf '%s\\n' {shlex.quote(info)} > {d}/lock && echo acquired; else cat {d}/lock; exit {LOCK_EXIT}; fi")
            return self._send(node, cmd, timeout=30, key="lock", capture=True, quiet=True)

        results = on_each(self.rb.node_names, take)
        for node, r in results.items():
            if r.ok:
                self._locked.append(node)
            elif r.exit_code == LOCK_EXIT:
                try:
                    h = json.loads(r.stdout.strip().splitlines()[0])
                    held.append(f"{node}: run {h.get('run_id')} by {h.get('user')}@{h.get('host')} "
                                f"(pid {h.get('pid')}) since {h.get('since')}")
                except (ValueError, IndexError):
                    held.append(f"{node}: {r.stdout.strip()[:200]}")
            else:
                held.append(f"{node}: cannot write the lock in {self.rb.node(node).state_dir} "
                            f"({r.error or 'exit ' + str(r.exit_code)}: {r.output_tail.strip()[-200:]})")
        if held:
            raise Stop(EXIT_PREFLIGHT, FAILED_RUN,
                       "Another bmupgrade run holds the cluster lock — " + "; ".join(held)
                       + ". Wait for it (or, if it is dead, `bmupgrade resume` it / use --break-lock).")

    def _unlock_cluster(self) -> None:
        rid = shlex.quote(self.journal.run_id)
        for node in self._locked:
            d = shlex.quote(self.rb.node(node).state_dir)
            try:
                self._send(node, f"grep -qF {rid} {d}/lock 2>/dev/null && rm -f {d}/lock; true",
                           timeout=15, key="unlock", quiet=True)
            except Exception:  # never let cleanup hide the run's real outcome
                pass
        self._locked = []

    # ================================================================== sending commands
    def _send(self, node: str, command: str, *, timeout: float | None, key: str, capture: bool = False,
              quiet: bool = False) -> CommandResult:
        shown = self.redact(command)
        if self.audit:
            self.audit.begin(node, key, shown)

        def sink(n: str, stream: str, text: str) -> None:
            if self.audit:
                self.audit.output(n, key, text)
            if not quiet:
                self.reporter.output(n, stream, self.redact(text))

        r = self.transport.run(node, command, timeout=timeout, capture=capture, on_output=sink)
        if self.audit:
            self.audit.record(node=node, key=key, command=shown, exit_code=r.exit_code,
                              duration=round(r.duration, 4), timed_out=r.timed_out,
                              connection_lost=r.connection_lost, error=r.error, output_tail=r.output_tail)
        return r

    # ================================================================== targets
    def resolve(self, target: str, *, probe=None) -> list[str]:
        """Concrete nodes for a target. primary/secondary re-probe the VIP now (safety rule 1)."""
        if target == "all":
            return list(self.rb.node_names)
        if target.startswith("where:"):
            ran = [n for n, e in self.journal.step(target[6:])["nodes"].items()
                   if e.get("state") in (DONE, STARTED, FAILED)]
            if not ran:
                raise Stop(EXIT_FAILED, FAILED_RUN, f"target {target}: step '{target[6:]}' ran on no node")
            return ran
        if target in ("primary", "secondary"):
            probe = probe or probe_vip(self.transport, self.rb, lambda t, n: self.render(t, n.name))
            try:
                holder = probe.single_holder(self.rb.cluster.public_ip)
            except BmError as exc:
                raise Stop(EXIT_FAILED, FAILED_RUN, str(exc)) from None
            if target == "primary":
                return [holder]
            return [n for n in self.rb.node_names if n != holder]
        return [target]

    # ================================================================== checks
    def _run_checks(self, phase: str) -> list[checks_mod.CheckResult]:
        plan = build_plan(self.rb, values=self.journal.data["captured"], display=False, phases={phase})
        actions = [a for a in plan.actions if a.phase == phase]
        results = []
        probe = probe_vip(self.transport, self.rb, lambda t, n: self.render(t, n.name)) if actions else None
        for a in actions:
            if a.kind == "builtin":
                res = checks_mod.CheckResult(a.id, a.title, True, a.severity, why=a.why)
                try:
                    holder = probe.single_holder(self.rb.cluster.public_ip)
                    res.outputs = {holder: "holds the public IP"}
                except BmError as exc:
                    res.ok = False
                    res.problems = [str(exc).split(" Nothing was sent")[0]]
            else:
                try:
                    nodes = self.resolve(a.target, probe=probe)
                except Stop as stop:
                    res = checks_mod.CheckResult(a.id, a.title, False, a.severity, problems=[stop.message],
                                                 why=a.why)
                    results.append(res)
                    self.reporter.check(res)
                    continue
                cmds = {n: a.commands[n].run[0] for n in nodes}
                outs = on_each(nodes, lambda n: self._send(n, cmds[n], timeout=a.timeout, key=a.id,
                                                           capture=True, quiet=True))
                res = checks_mod.evaluate(a, outs)
            if res.ok and a.capture and res.captured is not None:
                self.journal.data["captured"][a.capture] = res.captured
                self.journal.save()
            results.append(res)
            self.reporter.check(res)
        return results

    def _preflight(self) -> None:
        self.reporter.phase("Preflight (read-only)")
        self._check_ha_markers()
        results = self._run_checks("preflight")
        fencing_ids = set(self.rb.fencing_checks)
        fencing = [r for r in results if r.id in fencing_ids]
        self.journal.data["fencing"] = (None if not fencing else "enabled" if all(r.ok for r in fencing)
                                        else "disabled")
        failed = [r for r in results if not r.ok and r.severity == "error"]
        warnings = [r for r in results if not r.ok and r.severity == "warning"]
        self.journal.data["preflight_results"] = {r.id: {"ok": r.ok, "problems": r.problems} for r in results}
        if self.journal.data["fencing"] == "disabled" and self.options.allow_no_stonith:
            failed = [r for r in failed if r.id not in fencing_ids]
            self.reporter.banner("STONITH (fencing) is NOT enabled. Going on because of --allow-no-stonith: when HA "
                                 "handling is back on, a failover can split-brain and corrupt the shared storage.")
        if failed:
            self.journal.data["preflight"] = "failed"
            self.journal.save()
            lines = "; ".join(f"{r.id} ({r.problems[0] if r.problems else 'failed'})" for r in failed)
            hint = (" (--allow-no-stonith goes on without fencing, at the risk of a split brain.)"
                    if any(r.id in fencing_ids for r in failed) else "")
            raise Stop(EXIT_PREFLIGHT, FAILED_RUN,
                       f"Preflight refused: {len(failed)} check(s) failed: {lines}. Nothing was changed.{hint}")
        for w in warnings:
            self.reporter.warn(f"preflight warning: {w.id}: {'; '.join(w.problems)}")
        self.journal.data["preflight"] = "passed"
        self.journal.save()

    def _postflight(self) -> None:
        if not self.rb.postflight:
            return
        self.reporter.phase("Postflight")
        results = self._run_checks("postflight")
        failed = [r for r in results if not r.ok and r.severity == "error"]
        self.journal.data["postflight_results"] = {r.id: {"ok": r.ok, "problems": r.problems} for r in results}
        self.journal.save()
        if failed:
            raise Stop(EXIT_FAILED, FAILED_RUN,
                       "Postflight failed: " + "; ".join(f"{r.id} ({r.problems[0]})" for r in failed)
                       + ". Every step ran; check the cluster, then `bmupgrade resume` re-runs the postflight.")

    # ================================================================== HA debt markers
    def _marker_path(self, node: str) -> str:
        return shlex.quote(self.rb.node(node).state_dir) + "/ha-off"

    def _check_ha_markers(self) -> None:
        """A colleague's (or an earlier run's) HA-off marker means failover is paused: stop."""
        results = on_each(self.rb.node_names, lambda n: self._send(
            n, f"cat {self._marker_path(n)} 2>/dev/null || true", timeout=15, key="ha-marker", capture=True,
            quiet=True))
        found = []
        for node, r in results.items():
            text = r.stdout.strip()
            if not text:
                continue
            try:
                m = json.loads(text)
            except ValueError:
                m = {"run_id": "?", "raw": text[:200]}
            if m.get("run_id") != self.journal.run_id:
                found.append(f"{node}: HA handling turned off by run {m.get('run_id')} "
                             f"({m.get('user')}@{m.get('host')}) since {m.get('since')}")
        if found:
            raise Stop(EXIT_PREFLIGHT, FAILED_RUN,
                       "Preflight refused: " + "; ".join(found) + ". Finish that run (`bmupgrade resume` or "
                       "`bmupgrade rollback` on its machine) or restore HA and remove the marker.")

    def _set_ha_marker(self, on: bool, node: str | None = None) -> None:
        if on:
            info = {"run_id": self.journal.run_id, **whoami(), "since": now(),
                    "expected_end": (time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.options.deadline))
                                     if self.options.deadline else None),
                    "restore": self.ha_restore_hint(node)}
            text = shlex.quote(json.dumps(info))
            cmd = lambda n: f"mkdir -p {shlex.quote(self.rb.node(n).state_dir)} && printf '%s\\n' {text} > {self._marker_path(n)}"  # noqa: E731
        else:
            cmd = lambda n: f"rm -f {self._marker_path(n)}"  # noqa: E731
        for node, r in on_each(self.rb.node_names, lambda n: self._send(n, cmd(n), timeout=15, key="ha-marker",
                                                                          quiet=True)).items():
            if not r.ok:
                self.reporter.warn(f"{node}: could not {'write' if on else 'remove'} the HA-off marker "
                                   f"({r.error or r.exit_code})")

    def ha_restore_hint(self, node: str | None = None) -> str | None:
        step = self.rb.ha_step("disable")
        if step is None:
            return None
        entry = self.journal.step(step.id)
        nodes = ([n for n, e in entry["nodes"].items() if e.get("state") in (DONE, STARTED, FAILED)]
                 or [node or "<node>"])
        cmds = "; ".join(self.shown(c, nodes[0] if nodes[0] in self.rb.node_names else None)
                         for c in step.rollback or []) or "(the runbook gives no command: restore HA by hand)"
        return (f"bmupgrade resume {self.journal.run_id}  (or: bmupgrade rollback {self.journal.run_id}; by hand on "
                f"{nodes[0]}: {cmds})")

    def ha_is_off(self) -> bool:
        ha = self.journal.data["ha"]
        return bool(ha.get("off_since")) and not ha.get("on_at")

    # ================================================================== facts
    def _collect_facts(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for f in self.rb.facts:
            nodes = self.rb.node_names if f.on == "all" else [f.on]
            outs = on_each(nodes, lambda n: self._send(n, self.render(f.run, n), timeout=30, key=f"fact:{f.id}",
                                                       capture=True, quiet=True))
            values[f.id] = {n: (r.stdout.strip() if r.exit_code is not None else f"<{r.error or 'no answer'}>")
                            for n, r in outs.items()}
        probe = probe_vip(self.transport, self.rb, lambda t, n: self.render(t, n.name))
        values["vip_holders"] = probe.holders
        return values

    def _record_facts(self, label: str) -> None:
        self.journal.data["facts"].append({"at": label, "time": now(), "values": self._collect_facts()})
        self.journal.save()

    def _record_facts_quietly(self, label: str) -> None:
        try:
            self._record_facts(label)
        except Exception:  # a stop caused by a dead node must still end cleanly
            pass

    def _show_changes_since_stop(self) -> None:
        self.reporter.phase(f"Resuming run {self.journal.run_id}")
        before = self.journal.data["facts"][-1]["values"] if self.journal.data["facts"] else {}
        current = self._collect_facts()
        changes = []
        for key in sorted(set(before) | set(current)):
            if before.get(key) != current.get(key):
                changes.append(f"{key}: {before.get(key)} → {current.get(key)}")
        if changes:
            self.reporter.warn("Changed since the run stopped (" +
                               (self.journal.data["facts"][-1]["time"] if before else "start") + "):")
            for c in changes:
                self.reporter.info(f"    {c}")
        else:
            self.reporter.info("Nothing changed on the nodes since the run stopped (facts and VIP holder).")
        self.journal.data["resumes"].append({"time": now(), **whoami(), "changes": changes})
        self.journal.save()

    # ================================================================== steps
    def _apply_from_step(self) -> None:
        if not self.options.from_step:
            return
        ids = [s.id for s in self.rb.steps]
        if self.options.from_step not in ids:
            raise BmError(f"--from {self.options.from_step}: no such step; steps are: {', '.join(ids)}",
                          exit_code=2)
        for s in self.rb.steps[: ids.index(self.options.from_step)]:
            if self.journal.step(s.id)["state"] == PENDING:
                self.journal.set_step_state(s.id, SKIPPED, reason=f"--from {self.options.from_step}")
        self.options.from_step = None

    def _steps(self) -> None:
        self.reporter.phase("Steps")
        total = len(self.rb.steps)
        for seq, step in enumerate(self.rb.steps, 1):
            if self.journal.step(step.id)["state"] in (DONE, SKIPPED):
                continue
            self._checkpoint(step)
            self._check_deadline(step)
            if step.manual is not None:
                self._manual(seq, total, step)
            else:
                self._command_step(seq, total, step)

    def _manual(self, seq: int, total: int, step: Step) -> None:
        text = self.shown(step.manual or "", None)
        if not self.prompter.ack_manual(step.id, step.label, text):
            raise Stop(EXIT_FAILED, ABORTED, f"Manual step '{step.id}' not confirmed: {step.label}. Nothing "
                       "after it ran; `bmupgrade resume` when it is done.")
        self.journal.mark(step.id, ["operator"], DONE, acknowledged_by=whoami()["user"])
        self.reporter.info(f"✓ [{seq}/{total}] {step.label} [{step.id}] (acknowledged by the operator)")

    def _check_deadline(self, step: Step) -> None:
        if self.options.deadline is None or step.manual is not None:
            return
        estimate = self.options.history.get(step.id, step.timeout)
        left = self.options.deadline - time.time()
        if estimate > left:
            basis = "measured in earlier runs" if step.id in self.options.history else "its timeout"
            msg = (f"Deadline: step '{step.id}' may take {format_duration(estimate)} ({basis}) but only "
                   f"{format_duration(max(left, 0))} are left; stopped before it, nothing half-done.")
            if self.options.on_deadline == "rollback":
                self.reporter.warn(msg)
                self._rollback()
                raise Stop(EXIT_DEADLINE, DEADLINE, msg + " Rolled back.")
            raise Stop(EXIT_DEADLINE, DEADLINE, msg)

    def _settle_unknown(self, step: Step, started: list[str]) -> None:
        """Resume found the step `started` on these nodes: outcome unknown. Never silently re-run."""
        if step.verify:
            for node in started:
                r = self._send(node, self.render(step.verify, node), timeout=step.timeout, key=f"{step.id}:verify")
                if r.ok:
                    self.journal.mark(step.id, [node], DONE, exit_code=0, note="verified on resume")
                    self.reporter.info(f"  {step.id} on {node}: interrupted earlier; verify says it is done")
                else:
                    self.journal.mark(step.id, [node], PENDING, note="verify failed on resume; runs again")
                    self.reporter.info(f"  {step.id} on {node}: interrupted earlier; verify says not done: runs again")
            return
        shown = [self.shown(c, started[0]) for c in step.run or []]
        answer = self.prompter.unknown_outcome(step.id, step.label, started, shown)
        if answer == ASSUME_DONE:
            self.journal.mark(step.id, started, DONE, note="marked done by the operator on resume")
        elif answer == RERUN:
            self.journal.mark(step.id, started, PENDING, note="re-run by the operator's choice on resume")
        else:
            raise Stop(EXIT_FAILED, ABORTED,
                       f"Step '{step.id}' was started on {', '.join(started)} when the run stopped and has no "
                       "verify command, so its outcome is unknown. Check on the node, then run `bmupgrade resume "
                       f"{self.journal.run_id} --yes --assume-done {step.id}` (it completed) or `--rerun "
                       f"{step.id}` (it did not).")

    def _command_step(self, seq: int, total: int, step: Step) -> None:
        entry = self.journal.step(step.id)
        started = [n for n, e in entry["nodes"].items() if e.get("state") == STARTED]
        if started:
            self._settle_unknown(step, started)
            if self.journal.step(step.id)["state"] == DONE:
                self._after_done(step)
                return
        while True:
            nodes = self.resolve(step.on or "all")
            todo = [n for n in nodes if self.journal.node_state(step.id, n) not in (DONE, SKIPPED)]
            if not todo:
                self._finish(step, nodes)
                return
            where = ", ".join(todo) + (f" (holds {self.rb.cluster.public_ip})" if step.on == "primary" else "")
            if step.ha == "enable":
                self._stonith_guard(step)
            if step.confirm or getattr(self.prompter, "step_mode", False):
                asked_at = time.monotonic()
                answer = self.prompter.confirm_step(step.id, step.label, where,
                                                    [self.shown(c, todo[0]) for c in step.run or []])
                waited = time.monotonic() - asked_at
                if answer == "skip":
                    self.journal.mark(step.id, todo, SKIPPED, note="skipped at the confirmation prompt")
                    self.reporter.warn(f"{step.id} skipped on {', '.join(todo)}")
                    return
                if answer != "yes":
                    raise Stop(EXIT_FAILED, ABORTED, f"Stopped before '{step.id}' at the operator's request; "
                               f"`bmupgrade resume {self.journal.run_id}` continues.")
                # A person may have sat on the prompt while the VIP moved: probe again. An answer
                # given by policy (--yes) takes microseconds, so the probe above is still fresh.
                if step.on in ("primary", "secondary") and (self.prompter.interactive or waited > REPROBE_AFTER):
                    nodes = self.resolve(step.on)
                    todo = [n for n in nodes if self.journal.node_state(step.id, n) not in (DONE, SKIPPED)]
            if step.ha == "disable" and not self.ha_is_off():
                # Intent first: the marker is on the nodes before HA can go off, so no crash
                # leaves HA off without it (and writing it is not part of the HA-off window).
                self._set_ha_marker(True, node=todo[0])
            self.reporter.step_start(seq, total, step.id, step.label, where)
            self.journal.step(step.id)["targets"] = nodes
            failures = self._run_on_nodes(step, todo)
            self.reporter.step_end()
            if not failures:
                self._finish(step, nodes)
                self._checkpoint(step)
                return
            decision = self._decide(step, failures)
            if decision == RETRY:
                continue
            if decision == SKIP:
                self.journal.mark(step.id, list(failures), SKIPPED, note="skipped after failure")
                self.reporter.warn(f"'{step.id}' skipped on {', '.join(failures)}: later steps run as if it "
                                   "had succeeded — check the node by hand.")
                return
            if decision == ROLLBACK:
                done = self._rollback()
                raise Stop(EXIT_FAILED, ROLLED_BACK_RUN if done else FAILED_RUN,
                           f"Step '{step.id}' failed on {', '.join(failures)}; "
                           + ("rolled back." if done else "rollback incomplete — see above."))
            maybe_off = (" HA handling may be off (the command's effect is unknown): the HA-off marker stays on "
                         "the nodes until this run is resumed or rolled back." if step.ha == "disable" else "")
            raise Stop(EXIT_FAILED, ABORTED if self.prompter.interactive else FAILED_RUN,
                       f"Step '{step.id}' failed on {', '.join(failures)}. Fix the cause, then `bmupgrade resume "
                       f"{self.journal.run_id}` retries it (or `bmupgrade rollback {self.journal.run_id}`)."
                       + maybe_off)

    def _stonith_guard(self, step: Step) -> None:
        """Safety rule 7: automatic failover goes back on only with fencing proven by a preflight
        check, or with the operator's explicit word (a prompt, or --allow-no-stonith)."""
        why = fencing_gap(self.rb, self.journal.data.get("fencing"), preflight_ran=True)
        if why is None or self._fencing_accepted:
            return
        how = "--allow-no-stonith" if self.options.allow_no_stonith else None
        if how is None and self.prompter.interactive and self.prompter.confirm_no_fencing(step.id, step.label, why):
            how = "prompt"
        if how:
            self.journal.data["fencing_accepted"] = {**whoami(), "at": now(), "step": step.id, "how": how,
                                                     "why": why}
            self.journal.save()
            self._fencing_accepted = True  # once per session (a retry does not ask again; a resume does)
            return
        raise Stop(EXIT_FAILED, ABORTED,
                   f"Stopped before '{step.id}': {why}, and turning automatic failover back on without it risks a "
                   f"split brain. Check fencing, then `bmupgrade resume {self.journal.run_id}` (with "
                   "--allow-no-stonith to accept the risk).")

    def _finish(self, step: Step, nodes: list[str]) -> None:
        entry = self.journal.step(step.id)
        if entry.get("targets") != nodes:  # usually already durable with the `started` record
            entry["targets"] = nodes
            self.journal.save()
        self._after_done(step)

    def _after_done(self, step: Step) -> None:
        if step.ha == "disable" and not self.journal.data["ha"].get("off_since"):
            self.journal.data["ha"] = {"off_since": now(), "off_t": self._t_start(step.id), "on_at": None}
            self.journal.save()
        elif step.ha == "enable":
            self.journal.data["ha"]["on_at"] = now()
            # HA is back on when the enabling command returns; its verify only confirms it.
            ran = [self._run_ended[(step.id, n)] for n in self.rb.node_names if (step.id, n) in self._run_ended]
            self.journal.data["ha"]["on_t"] = max(ran) if ran else self._t_end(step.id)
            self.journal.save()
            self._set_ha_marker(False)
        if step.capture:
            nodes = [n for n, e in self.journal.step(step.id)["nodes"].items() if e.get("state") == DONE]
            if nodes:
                self.journal.data["captured"][step.capture] = self.journal.step(step.id)["nodes"][nodes[0]].get(
                    "stdout", "")
                self.journal.save()

    def _t_start(self, step_id: str) -> float | None:
        ts = [e.get("t_start") for e in self.journal.step(step_id)["nodes"].values() if e.get("t_start")]
        return min(ts) if ts else None

    def _t_end(self, step_id: str) -> float | None:
        ts = [e.get("t_end") for e in self.journal.step(step_id)["nodes"].values() if e.get("t_end")]
        return max(ts) if ts else None

    def _run_on_nodes(self, step: Step, nodes: list[str]) -> dict[str, CommandResult]:
        """Run the step on the nodes (concurrently if parallel); return the failures."""
        t0 = time.time()
        if step.parallel:
            self.journal.mark(step.id, nodes, STARTED, node_fields={n: {"t_start": t0} for n in nodes})
            results = on_each(nodes, lambda n: self._attempts(step, n))
            self._record_results(step, results)
        else:
            results = {}
            for n in nodes:
                self.journal.mark(step.id, [n], STARTED, t_start=time.time())
                results[n] = self._attempts(step, n)
                self._record_results(step, {n: results[n]})
                if not results[n].ok:
                    break  # do not carry a failing step to the next node
        return {n: r for n, r in results.items() if not r.ok}

    def _record_results(self, step: Step, results: dict[str, CommandResult]) -> None:
        t = time.time()
        ok = [n for n, r in results.items() if r.ok]
        bad = [n for n, r in results.items() if not r.ok]
        fields = {n: {"exit_code": r.exit_code, "t_end": t, "duration": round(r.duration, 3),
                      "output_tail": self.redact(r.output_tail[-2000:]),
                      **({"stdout": r.stdout.strip()} if step.capture and r.ok else {})}
                  for n, r in results.items()}
        if ok:
            self.journal.mark(step.id, ok, DONE, node_fields=fields)
        if bad:
            self.journal.mark(step.id, bad, FAILED, node_fields=fields)
        for n, r in results.items():
            self.reporter.node_done(step.id, n, r.ok, _detail(r), r.duration)

    def _attempts(self, step: Step, node: str) -> CommandResult:
        """run (all commands), then verify; with retries and backoff. Returns the last result."""
        delay = step.retry_delay
        result = CommandResult(node, "", None, 0.0)
        for attempt in range(step.retries + 1):
            t0 = time.monotonic()
            for cmd in step.run or []:
                result = self._send(node, self.render(cmd, node), timeout=step.timeout, key=step.id,
                                    capture=bool(step.capture))
                if not result.ok:
                    break
            else:
                if step.ha == "enable":
                    self._run_ended[(step.id, node)] = time.time()
                if step.verify:
                    v = self._send(node, self.render(step.verify, node), timeout=step.timeout,
                                   key=f"{step.id}:verify")
                    if not v.ok:
                        v.error = v.error or f"verify failed (exit {v.exit_code})"
                        result = v
                        result.command = step.verify
            result.duration = time.monotonic() - t0
            if result.ok or attempt == step.retries:
                return result
            self.reporter.warn(f"{step.id} on {node}: {_detail(result)}; retry {attempt + 1}/{step.retries} "
                               f"in {delay:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 300)
        return result

    def _decide(self, step: Step, failures: dict[str, CommandResult]) -> str:
        summary = "\n".join(f"  {n}: {_detail(r)}" for n, r in failures.items())
        output = "\n".join(f"--- {n} ---\n{self.redact(r.output_tail)}" for n, r in failures.items())
        node = next(iter(failures))
        addr = self.rb.node(node)
        ssh = "ssh " + (f"-p {addr.port} " if addr.port else "") + (f"{addr.user}@" if addr.user else "") + addr.host
        if self.rb.cluster.ssh_config:
            ssh = f"ssh -F {self.rb.cluster.ssh_config} {node}"
        if self.ha_is_off():
            summary += (f"\n  HA handling is OFF since {self.journal.data['ha']['off_since']}: abort leaves the cluster "
                        "without failover (resume later restores it); roll back turns it back on now.")
        lost = any(r.connection_lost for r in failures.values())
        if lost:
            summary += ("\n  The SSH connection was lost: the command may still be running on the node (SSH does "
                        "not stop it). Check before retrying.")
        ctx = FailureContext(step.id, step.label, list(failures), summary, output,
                             f"{ssh}    # then look at the step's output in the audit log", self._undo_preview()[0])
        self.reporter.error(f"{step.label} [{step.id}] failed:\n{summary}")
        return self.prompter.on_failure(ctx)

    # ================================================================== rollback
    def _undo_preview(self) -> tuple[list[str], list[str]]:
        undo, cannot = [], []
        for s in reversed(self.rb.steps):
            if s.manual is not None:
                continue
            entry = self.journal.step(s.id)
            ran = [n for n, e in entry["nodes"].items() if e.get("state") in (DONE, FAILED, STARTED)]
            if not ran:
                continue
            if s.rollback:
                undo.append(f"{s.id} on {', '.join(ran)}: " + "; ".join(self.shown(c, ran[0]) for c in s.rollback))
            elif s.rollback is None:  # `rollback: []` says there is nothing to undo
                cannot.append(f"{s.id} ({s.label})")
        return undo, cannot

    def _rollback(self) -> bool:
        """Undo the done (or failed/interrupted) steps that have rollback commands, in reverse
        order, on the nodes where they ran. Journaled like forward steps; resumable."""
        undo, cannot = self._undo_preview()
        self.journal.data["cannot_undo"] = cannot
        if not undo:
            self.reporter.warn("Nothing to roll back automatically.")
            return True
        if not self.prompter.confirm_rollback(undo, cannot):
            self.reporter.warn("Rollback declined.")
            return False
        self.reporter.phase("Rollback")
        ok_all = True
        for s in reversed(self.rb.steps):
            if s.manual is not None or not s.rollback:
                continue
            entry = self.journal.step(s.id)
            ran = [n for n, e in entry["nodes"].items() if e.get("state") in (DONE, FAILED, STARTED)]
            if not ran:
                continue
            self.reporter.step_start(0, 0, f"rollback:{s.id}", f"Roll back: {s.label}", ", ".join(ran))

            def undo_on(node: str, s=s) -> CommandResult:
                self.journal.mark(s.id, [node], STARTED, rollback=True)
                r = CommandResult(node, "", 0, 0.0)
                for cmd in s.rollback or []:
                    r = self._send(node, self.render(cmd, node), timeout=s.timeout, key=f"rollback:{s.id}")
                    if not r.ok:
                        break
                self.journal.mark(s.id, [node], DONE if r.ok else FAILED, rollback=True, exit_code=r.exit_code)
                if r.ok:
                    self.journal.mark(s.id, [node], ROLLED_BACK)
                self.reporter.node_done(f"rollback:{s.id}", node, r.ok, _detail(r), r.duration)
                return r

            results = on_each(ran, undo_on, parallel=s.parallel)
            self.reporter.step_end()
            if all(r.ok for r in results.values()):
                if s.ha == "disable":
                    self.journal.data["ha"]["on_at"] = now()
                    self.journal.save()
                    self._set_ha_marker(False)
            else:
                ok_all = False
                self.reporter.error(f"rollback of '{s.id}' failed; stopping the rollback here (earlier steps untouched)")
                break
        return ok_all

    def rollback_run(self) -> Summary:
        """`bmupgrade rollback RUN`: undo a finished or aborted run."""
        try:
            self._connect(True)
            self._lock_cluster()
            done = self._rollback()
            status = ROLLED_BACK_RUN if done else FAILED_RUN
            msg = "Rolled back." if done else "Rollback incomplete: see above."
            self.journal.set_status(status, ended_at=now())
            return self.summary(EXIT_OK if done else EXIT_FAILED, status, msg)
        except Stop as stop:
            self.journal.set_status(FAILED_RUN, ended_at=now())
            return self.summary(stop.exit_code, FAILED_RUN, stop.message)
        finally:
            self._unlock_cluster()

    # ================================================================== report
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
        window = None
        if ha.get("off_t") and ha.get("on_t"):
            window = ha["on_t"] - ha["off_t"]
        ha_open = self.ha_is_off()
        rid = self.journal.run_id
        nxt = []
        if exit_code not in (EXIT_OK,) and status not in (ROLLED_BACK_RUN,) and exit_code != EXIT_PREFLIGHT:
            nxt = [f"bmupgrade resume {rid}", f"bmupgrade rollback {rid}"]
        if ha_open:
            message += " HA handling is still OFF (maintenance): the cluster will not fail over."
        return Summary(rid, status, exit_code, message, rows, window, ha_open,
                       self.ha_restore_hint() if ha_open else None, nxt,
                       self.journal.data.get("cannot_undo", []),
                       [str(self.journal.path)] + ([str(self.audit.jsonl_path)] if self.audit else []))


def _detail(r: CommandResult) -> str:
    if r.ok:
        return "ok"
    if r.timed_out:
        return "timed out"
    if r.connection_lost:
        return f"connection lost ({r.error})" if r.error else "connection lost"
    if r.exit_code is None:
        return r.error or "no result"
    tail = " ".join(r.output_tail.strip().splitlines()[-1:])[-160:]
    return (r.error + "; " if r.error else "") + f"exit {r.exit_code}" + (f": {tail}" if tail else "")
