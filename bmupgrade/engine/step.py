"""One step on its nodes: the only code that sends a runbook's step commands.

Per node, an attempt is: journal `started` (with the command's tag) → send → `done`,
`failed` (the command answered: it ran and did not succeed, or never reached the node) or
`unknown` (sent, outcome lost). `unknown` is never re-sent automatically unless the step is
`idempotent` and the first copy is no longer running on the node; `verify` decides when
present, else a person (interactive) or the run stops (unattended) with the exact next command.
Retries apply to `failed` only (and to `unknown` for idempotent steps); before each attempt the
target is re-probed, and the deadline and the signals are checked.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bmupgrade.engine.carried import ask_with_probe
from bmupgrade.engine.guards import check_deadline, stonith_guard
from bmupgrade.engine.requires import ensure_requirements
from bmupgrade.errors import EXIT_FAILED
from bmupgrade.journal import ABORTED, DONE, FAILED, FAILED_RUN, PENDING, SKIPPED, STARTED, UNKNOWN, whoami
from bmupgrade.outcome import RETRY, ROLLBACK, SKIP, FailureContext
from bmupgrade.runbook import Step
from bmupgrade.transport.base import CommandResult

if TYPE_CHECKING:
    from bmupgrade.engine.core import Engine

REPROBE_AFTER = 0.5  # s: a confirmation slower than this was a person, not --yes (re-probe the VIP)


def outcome_of(r: CommandResult) -> str:
    if r.ok:
        return DONE
    if r.exit_code is None and r.sent:
        return UNKNOWN  # timeout, connection lost after send, interrupted: it may have run
    return FAILED


def detail(r: CommandResult) -> str:
    if r.ok:
        return "ok"
    if r.timed_out:
        return "timed out (outcome unknown)"
    if r.connection_lost:
        what = "connection lost" + (f" ({r.error})" if r.error else "")
        return what + (" before the command was sent" if not r.sent else " (outcome unknown)")
    if r.exit_code is None:
        return r.error or "no result"
    tail = " ".join(r.output_tail.strip().splitlines()[-1:])[-160:]
    return (r.error + "; " if r.error else "") + f"exit {r.exit_code}" + (f": {tail}" if tail else "")


class StepRunner:
    def __init__(self, eng: "Engine"):
        self.eng = eng

    # ------------------------------------------------------------------ one step
    def run(self, seq: int, total: int, step: Step) -> None:
        eng = self.eng
        if step.manual is not None:
            return self._manual(seq, total, step)
        self.settle(step)
        if not self._may_resend_failed(step):
            return
        attempt, first = 0, True
        while True:
            # a reboot may have undone an earlier step (`requires`); for a step on the VIP holder
            # the VIP probe stays the last look before sending: a step never tried is pending
            # wherever the VIP is, so its requirements go first and one probe follows
            fresh = step.requires and step.on in ("primary", "secondary") and not eng.journal.step(step.id)["nodes"]
            if fresh:
                ensure_requirements(eng, step)
            nodes = self._targets(step)
            todo = self._pending(step, nodes)
            if not todo:
                return self._finish(step, nodes)
            if step.requires and not fresh:
                ensure_requirements(eng, step)
                if step.on in ("primary", "secondary"):
                    nodes = self._targets(step)
                    todo = self._pending(step, nodes)
            if first:
                first = False
                todo = self._before_first_attempt(seq, total, step, todo)
                if not todo:
                    return
            eng.reporter.step_start(seq, total, step.id, step.label, self._where(step, todo))
            results = self._send_on(step, todo)
            eng.reporter.step_end()
            bad = {n: r for n, r in results.items() if not r.ok}
            if not bad:
                self._finish(step, nodes)
                return eng.checkpoint(step, completed=True)
            if any(outcome_of(r) == UNKNOWN for r in bad.values()):
                self.settle(step)  # waits while it runs; verify, idempotent or a person decides
            left = {n: r for n, r in bad.items() if eng.journal.node_state(step.id, n) not in (DONE, SKIPPED)}
            if not left:
                continue  # verify says it is done everywhere
            attempt += 1
            if attempt <= step.retries:
                self._wait_before_retry(step, attempt, left)
                continue
            eng.checkpoint(step, completed=False)
            if self._after_failure(step, left) == RETRY:
                attempt = 0
                continue
            return

    def _may_resend_failed(self, step: Step) -> bool:
        """A non-idempotent step that failed in an earlier invocation is sent again only on a
        person's word: the failure menu (interactive), or `resume --rerun STEP` (unattended)."""
        eng = self.eng
        failed = eng.journal.nodes_in(step.id, FAILED)
        if not failed or step.idempotent:
            return True
        bad = {n: CommandResult(n, "", eng.journal.step(step.id)["nodes"][n].get("exit_code"), 0.0,
                                error="failed in an earlier attempt") for n in failed}
        return self._after_failure(step, bad) == RETRY

    def _targets(self, step: Step) -> list[str]:
        """Resolve (re-probing the VIP); refuse if the target moved away from a node where an
        earlier attempt of this step already ran (a person must look before it runs elsewhere)."""
        eng = self.eng
        nodes = eng.resolve(step.on or "all")
        if (step.on or "") in ("primary", "secondary"):
            tried = eng.journal.nodes_in(step.id, FAILED, UNKNOWN, STARTED) + [  # or sent, then set aside to re-run
                n for n in eng.journal.nodes_sent(step.id) if eng.journal.node_state(step.id, n) == PENDING]
            moved = [n for n in tried if n not in nodes]
            if moved:
                from bmupgrade.engine.core import Stop

                raise Stop(EXIT_FAILED, FAILED_RUN,
                           f"Step '{step.id}' already ran on {', '.join(moved)}, but the target '{step.on}' is now "
                           f"{', '.join(nodes)} (the public IP moved). Not running it there: check both nodes, "
                           f"then `{eng.hint('resume')}` (or `{eng.hint('rollback')}`).")
        return nodes

    def _pending(self, step: Step, nodes: list[str]) -> list[str]:
        """The nodes where the step is neither done nor skipped."""
        return [n for n in nodes if self.eng.journal.node_state(step.id, n) not in (DONE, SKIPPED)]

    def _where(self, step: Step, todo: list[str]) -> str:
        return ", ".join(todo) + (f" (holds {self.eng.rb.cluster.public_ip})" if step.on == "primary" else "")

    def _before_first_attempt(self, seq: int, total: int, step: Step, todo: list[str]) -> list[str]:
        """STONITH guard, confirmation (re-probing after a person's answer), HA-off marker."""
        eng = self.eng
        if step.ha == "enable":
            stonith_guard(eng, step)
        if step.confirm or getattr(eng.prompter, "step_mode", False):
            asked_at = time.monotonic()
            answer = eng.prompter.confirm_step(step.id, step.label, self._where(step, todo),
                                               [eng.shown(c, todo[0]) for c in step.run or []])
            waited = time.monotonic() - asked_at
            if answer == "skip":
                eng.journal.mark(step.id, todo, SKIPPED, note="skipped at the confirmation prompt")
                eng.reporter.warn(f"{step.id} skipped on {', '.join(todo)}")
                return []
            if answer != "yes":
                from bmupgrade.engine.core import Stop

                raise Stop(EXIT_FAILED, ABORTED, f"Stopped before '{step.id}' at the operator's request; "
                           f"`{eng.hint('resume')}` continues.")
            eng.checkpoint(step, completed=None)
            if step.on in ("primary", "secondary") and (eng.prompter.interactive or waited > REPROBE_AFTER):
                nodes = self._targets(step)  # a person may have sat on the prompt while the VIP moved
                todo = self._pending(step, nodes)
        if step.ha == "disable" and not eng.ha.is_off():
            eng.ha.going_off(step, todo[0], why=step.label)
            if step.on in ("primary", "secondary"):  # the marker writes took a round trip: ask again
                nodes = self._targets(step)
                todo = self._pending(step, nodes)
        return todo

    # ------------------------------------------------------------------ sending
    def _send_on(self, step: Step, nodes: list[str]) -> dict[str, CommandResult]:
        """Run the step on the nodes (concurrently if parallel), journaled around each send."""
        eng = self.eng
        if step.parallel:
            self._start(step, nodes)
            results = eng.on_each(nodes, lambda n: self._attempt(step, n))
            self._record(step, results)
            return results
        results = {}
        for n in nodes:
            self._start(step, [n])
            results[n] = self._attempt(step, n, last=n == nodes[-1])
            self._record(step, {n: results[n]})
            if not results[n].ok:
                break  # do not carry a failing step to the next node
        return results

    def _start(self, step: Step, nodes: list[str]) -> None:
        eng = self.eng
        fields = {}
        for n in nodes:
            attempts = eng.journal.step(step.id)["nodes"].get(n, {}).get("attempts", 0) + 1
            fields[n] = {"t_start": time.time(), "tag": f"{eng.journal.run_id}.{step.id}.{n}.{attempts}"}
        if step.ha == "disable":
            eng.ha.going_off(step, nodes[0], why=step.label)  # idempotent: normally already done
        eng.journal.mark(step.id, nodes, STARTED, node_fields=fields)
        eng.in_flight[step.id] = list(nodes)

    def _attempt(self, step: Step, node: str, last: bool = False) -> CommandResult:
        """All the step's commands, then its verify. The last result (a failure stops early).
        `last`: the last node of a sequential step (its verify may carry the next VIP probe)."""
        eng = self.eng
        tag = eng.journal.step(step.id)["nodes"][node].get("tag")
        t0 = time.monotonic()
        result = CommandResult(node, "", 0, 0.0)
        for cmd in step.run or []:
            result = eng.send(node, eng.render(cmd, node), timeout=step.timeout, key=step.id,
                              capture=bool(step.capture), tag=tag)
            if not result.ok:
                break
        else:
            if step.ha == "enable":
                eng.run_ended[(step.id, node)] = time.time()
            if step.verify:
                v = self._verify(step, node, last)
                if not v.ok:
                    v.error = v.error or f"verify failed (exit {v.exit_code})"
                    v.command = step.verify
                    if v.exit_code is None:
                        v.sent = True  # the step ran; only its verify was lost: unknown, verify again
                    result = v
        result.duration = time.monotonic() - t0
        return result

    def _verify(self, step: Step, node: str, last: bool) -> CommandResult:
        """The step's verify on the node; with the next step's VIP probe when it is the step's
        last node and the next step probes first thing (engine/carried.py)."""
        eng = self.eng
        command, key = eng.render(step.verify, node), f"{step.id}:verify"
        if step.parallel or not last or not eng.carried.wanted_after(step):
            return eng.send(node, command, timeout=step.timeout, key=key)
        return ask_with_probe(eng, node, key, command, step.timeout)

    def _record(self, step: Step, results: dict[str, CommandResult]) -> None:
        eng = self.eng
        t = time.time()
        by_state: dict[str, list[str]] = {}
        fields = {}
        for n, r in results.items():
            by_state.setdefault(outcome_of(r), []).append(n)
            fields[n] = {"exit_code": r.exit_code, "t_end": t, "duration": round(r.duration, 3),
                         "outcome": detail(r), "sent": r.sent,
                         **({"stdout": eng.redact(r.stdout.strip())} if step.capture and r.ok else {})}
        for state in (DONE, FAILED, UNKNOWN):
            if by_state.get(state):
                eng.journal.mark(step.id, by_state[state], state, node_fields=fields, sync=False)  # an outcome
        eng.in_flight.pop(step.id, None)
        for n, r in results.items():
            eng.reporter.node_done(step.id, n, r.ok, detail(r), r.duration)
            if step.capture and r.ok:
                eng.journal.set(["captured", step.capture], eng.redact(r.stdout.strip()), sync=False)

    def _wait_before_retry(self, step: Step, attempt: int, bad: dict[str, CommandResult]) -> None:
        eng = self.eng
        delay = min(step.retry_delay * 2 ** (attempt - 1), 300)
        eng.reporter.warn(f"{step.id} on {', '.join(bad)}: {detail(next(iter(bad.values())))}; retry "
                          f"{attempt}/{step.retries} in {delay:.0f}s")
        end = time.monotonic() + delay
        while time.monotonic() < end and not eng.signals.pending:
            eng.sleep(min(0.2, max(end - time.monotonic(), 0)))
        eng.checkpoint(step, completed=False)
        check_deadline(eng, step)

    # ------------------------------------------------------------------ after a failure
    def _after_failure(self, step: Step, bad: dict[str, CommandResult]) -> str:
        from bmupgrade.engine.core import Stop
        from bmupgrade.engine.rollback import outcome_text, roll_back

        eng = self.eng
        failed = bad
        decision = eng.prompter.on_failure(self._context(step, failed))
        if decision == RETRY:
            return RETRY
        if decision == SKIP:
            eng.journal.mark(step.id, list(failed), SKIPPED, note="skipped after failure", by=whoami()["user"])
            eng.reporter.warn(f"'{step.id}' skipped on {', '.join(failed)}: later steps run as if it had "
                              "succeeded — check the node by hand.")
            return SKIP
        where = ", ".join(failed)
        if decision == ROLLBACK:
            done = roll_back(eng, ask=True)
            raise Stop(EXIT_FAILED, eng.rolled_back_status(done),
                       f"Step '{step.id}' failed on {where}; " + outcome_text(eng, done))
        maybe_off = (" HA handling may be off: the HA-off marker stays on the nodes until this run is resumed "
                     "or rolled back." if step.ha == "disable" else "")
        # `--rerun` is the word for a node left failed/unknown; one left pending (it never got the
        # command again, e.g. the connection was gone) is sent by a plain resume (and --rerun refused)
        settled = [n for n in failed if eng.journal.node_state(step.id, n) in (FAILED, UNKNOWN, STARTED)]
        again = eng.hint("resume", f"--rerun {step.id}") if settled and not step.idempotent else eng.hint("resume")
        raise Stop(EXIT_FAILED, ABORTED if eng.prompter.interactive else FAILED_RUN,
                   f"Step '{step.id}' failed on {where}. Fix the cause, then `{again}` sends it again "
                   f"(or `{eng.hint('rollback')}`)." + maybe_off)

    def _context(self, step: Step, failures: dict[str, CommandResult]) -> FailureContext:
        eng = self.eng
        summary = "\n".join(f"  {n}: {detail(r)}" for n, r in failures.items())
        output = "\n".join(f"--- {n} ---\n{eng.redact(r.output_tail)}" for n, r in failures.items())
        if eng.ha.is_off():
            summary += (f"\n  HA handling is OFF since {eng.journal.data['ha']['off_since']}: abort leaves the "
                        "cluster without failover (resume later restores it); roll back turns it back on now.")
        from bmupgrade.engine.rollback import preview

        return FailureContext(step.id, step.label, list(failures), summary, output,
                              eng.ssh_hint(next(iter(failures))), preview(eng)[0])

    def settle(self, step: Step) -> None:
        from bmupgrade.engine.settle import settle

        settle(self.eng, step)

    # ------------------------------------------------------------------ small pieces
    def _manual(self, seq: int, total: int, step: Step) -> None:
        from bmupgrade.engine.core import Stop

        eng = self.eng
        text = eng.shown(step.manual or "", None)
        if not eng.prompter.ack_manual(step.id, step.label, text):
            raise Stop(EXIT_FAILED, ABORTED, f"Manual step '{step.id}' not confirmed: {step.label}. Nothing "
                       f"after it ran; `{eng.hint('resume')}` when it is done.")
        how = "prompt" if eng.prompter.interactive else "--ack flag"
        eng.journal.mark(step.id, ["operator"], DONE, acknowledged_by={**whoami(), "how": how})
        eng.reporter.info(f"✓ [{seq}/{total}] {step.label} [{step.id}] (acknowledged by {whoami()['user']}, {how})")

    def _finish(self, step: Step, nodes: list[str]) -> None:
        eng = self.eng
        if step.ha == "enable" and eng.ha.is_off():
            returned = [t for (sid, _), t in eng.run_ended.items() if sid == step.id]
            eng.ha.back_on(step.id, at=max(returned) if returned else None)
        if step.capture and step.id not in eng.journal.data["captured"]:
            done = eng.journal.nodes_in(step.id, DONE)
            stdout = eng.journal.step(step.id)["nodes"].get(done[0], {}).get("stdout") if done else None
            if stdout is not None and step.capture not in eng.journal.data["captured"]:
                eng.journal.set(["captured", step.capture], stdout)
