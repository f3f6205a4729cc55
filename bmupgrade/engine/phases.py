"""The phases of an invocation, declared as data (kubeadm-style): each says in which modes it
runs, so `run`, `resume`, `rollback` and `check` share one loop and none can skip the
read-only safety checks that precede its first change.

    confirm-rollback → own → connect → lock → markers → preflight → rollback-safety → facts
    → steps → rollback → postflight        (unlock: always, on the way out)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Callable

from bmupgrade import checks as checks_mod
from bmupgrade.errors import EXIT_FAILED, EXIT_OK, EXIT_PREFLIGHT, BmError
from bmupgrade.journal import DONE, PARTLY_ROLLED_BACK, RUNNING, SKIPPED, now, whoami
from bmupgrade.plan import build_plan

if TYPE_CHECKING:
    from bmupgrade.engine.core import Engine


class Mode(str, Enum):
    RUN = "run"
    RESUME = "resume"
    ROLLBACK = "rollback"
    CHECK = "check"  # `bmupgrade check`: read-only, no lock, no journal on disk


M = Mode
CHANGING = frozenset({M.RUN, M.RESUME, M.ROLLBACK})


@dataclass(frozen=True)
class Phase:
    name: str
    modes: frozenset[Mode]
    run: Callable[["Engine"], None]
    doc: str
    safety: bool = False  # a read-only check that must pass before this invocation changes anything


# ------------------------------------------------------------------------------ phase bodies

def confirm_rollback(eng: "Engine") -> None:
    from bmupgrade.engine.core import Stop
    from bmupgrade.engine.rollback import preview

    undo, cannot = preview(eng, force=eng.options.force_past_no_return)
    if eng.options.force_past_no_return and not eng.prompter.confirm_typed(
            "--force: roll back PAST the point of no return (packages downgraded under migrated data)",
            eng.journal.run_id):
        raise Stop(EXIT_FAILED, None, "Not confirmed (the run id must be typed, at a terminal): nothing was changed.")
    succeeded = eng.journal.status == "succeeded"
    if not undo:
        raise Stop(EXIT_FAILED, None, "Nothing to roll back automatically" + (": " + "; ".join(cannot) if cannot
                                                                                else ".") + " Nothing was changed.")
    if not eng.prompter.confirm_rollback(undo, cannot, default=not succeeded):
        raise Stop(EXIT_FAILED, None, "Rollback declined: nothing was changed.")
    eng.rollback_confirmed = True


def own(eng: "Engine") -> None:
    """Take the run over: RUNNING with this process as its (live) owner."""
    eng.journal.set_status(RUNNING)
    if eng.options.identity_changes:  # resume --force: the run goes on with the new identity, on record
        from bmupgrade.runner import _redacted_vars

        eng.journal.add("forced", {"time": now(), **whoami(), "changes": eng.options.identity_changes})
        eng.journal.set("vars", _redacted_vars(eng.rb))
        eng.journal.set(["runbook", "sha256"], eng.rb.source_sha256)
    eng.journal.add("resumes", {"time": now(), **whoami(), "mode": eng.mode.value,
                                "deadline": eng.deadline_text() if eng.options.deadline else None})


def connect(eng: "Engine") -> None:
    from bmupgrade.engine.core import Stop
    from bmupgrade.probes import node_addresses
    from bmupgrade.transport.base import TransportError

    try:
        eng.transport.connect(node_addresses(eng.rb))
    except TransportError as exc:
        raise Stop(EXIT_PREFLIGHT, eng.refused_status(), f"Cannot reach {exc}. Nothing was changed by this "
                   "attempt.") from None


def lock(eng: "Engine") -> None:
    """One round trip per node: take the cluster lock, read the HA-off markers, and ask who holds
    the public IP (the preflight's first look: see Engine.opening_probe)."""
    from bmupgrade.engine import remote

    me = {"run_id": eng.journal.run_id, **whoami(), "since": now()}
    _take_lock(eng, _with_probe(eng, "lock", lambda n: remote.lock_and_markers(
        eng.rb.node(n).state_dir, me, eng.journal.run_id, break_lock=eng.options.break_lock), timeout=30))


def _with_probe(eng: "Engine", key: str, snippet, *, timeout: float) -> dict:
    """`snippet(node)` and the VIP probe, joined in one round trip per node; the probe's answers
    become eng.lock_probe, the snippet's are returned by node."""
    from bmupgrade.probes import PROBE_TIMEOUT, VipProbe

    answers = eng.on_each(eng.rb.node_names, lambda n: eng.send_together(
        n, [(key, snippet(n)), ("vip-probe", eng.probe_command(n))], timeout=max(timeout, PROBE_TIMEOUT)))
    eng.lock_probe = VipProbe({n: a[1] for n, a in answers.items()})
    return {n: a[0] for n, a in answers.items()}


def _take_lock(eng: "Engine", results: dict) -> None:
    from bmupgrade.engine import remote
    from bmupgrade.engine.core import Stop

    held, markers = [], {}
    for node, r in results.items():
        acquired, holder, marker = remote.parse_lock_answer(r.stdout)
        if acquired:
            eng.locked.append(node)
        elif acquired is False:
            h = holder if isinstance(holder, dict) else {"run_id": "?", "user": str(holder)}
            held.append(f"{node}: run {h.get('run_id')} by {h.get('user')}@{h.get('host')} (pid {h.get('pid')}) "
                        f"since {h.get('since')}")
        else:
            held.append(f"{node}: cannot write the lock in {eng.rb.node(node).state_dir} "
                        f"({r.error or 'exit ' + str(r.exit_code)}: {r.output_tail.strip()[-200:]})")
        markers[node] = marker
    if held:
        raise Stop(EXIT_PREFLIGHT, eng.refused_status(),
                   "Another bmupgrade run holds the cluster lock — " + "; ".join(held)
                   + ". Nothing was changed. Wait for it (or, if it is dead, resume it on its machine / use "
                   "--break-lock).")
    _refuse_foreign_markers(eng, markers)


def markers(eng: "Engine") -> None:
    from bmupgrade.engine import remote

    results = _with_probe(eng, "ha-marker", lambda n: remote.read_markers(eng.rb.node(n).state_dir), timeout=15)
    _refuse_foreign_markers(eng, {n: remote.parse_lock_answer(r.stdout)[2] for n, r in results.items()})


def _refuse_foreign_markers(eng: "Engine", found: dict) -> None:
    """A colleague's (or an earlier run's) HA-off marker means failover is paused: refuse."""
    from bmupgrade.engine.core import Stop

    foreign = []
    for node, m in found.items():
        if not m:
            continue
        m = m if isinstance(m, dict) else {"run_id": "?", "user": json.dumps(m)}
        if m.get("run_id") != eng.journal.run_id:
            foreign.append(f"{node}: HA handling turned off by run {m.get('run_id')} ({m.get('user')}@{m.get('host')}) "
                           f"since {m.get('since')}")
    if foreign:
        raise Stop(EXIT_PREFLIGHT, eng.refused_status(), "Preflight refused: " + "; ".join(foreign)
                   + ". Finish that run (`bmupgrade resume` or `bmupgrade rollback` on its machine) or restore HA "
                   "and remove the marker. Nothing was changed.")


def preflight(eng: "Engine") -> None:
    """Every read-only check, in every invocation that may change something. On resume, a check
    whose `until:` step has already been sent is skipped (that step legitimately makes it false)."""
    from bmupgrade.engine.core import Stop

    eng.reporter.phase("Preflight (read-only)")
    skip = {c.id for c in eng.rb.preflight if c.until and eng.step_was_sent(c.until)}
    results = run_checks(eng, "preflight", skip=skip, probe=eng.opening_probe)
    for cid in sorted(skip):
        eng.reporter.info(f"  - {cid}: skipped (step '{eng.rb_check(cid).until}' has run; it makes this false)")
    fencing_ids = set(eng.rb.fencing_checks)
    _record_fencing(eng, results)
    failed = [r for r in results if not r.ok and r.severity == "error"]
    eng.journal.set("preflight_results", {r.id: {"ok": r.ok, "title": r.title, "problems": r.problems,
                                                 **({"why": r.why} if r.why and not r.ok else {})} for r in results})
    if eng.journal.data["fencing"] == "disabled" and eng.options.allow_no_stonith:
        failed = [r for r in failed if r.id not in fencing_ids]
        eng.reporter.banner("STONITH (fencing) is NOT enabled. Going on because of --allow-no-stonith: when HA "
                            "handling is back on, a failover can split-brain and corrupt the shared storage.")
    if failed:
        eng.journal.set("preflight", "failed")
        lines = "; ".join(f"{r.id} ({r.problems[0] if r.problems else 'failed'})" for r in failed)
        hint = (" (--allow-no-stonith goes on without fencing, at the risk of a split brain.)"
                if failed and all(r.id in fencing_ids for r in failed) else "")
        raise Stop(EXIT_PREFLIGHT, eng.refused_status(),
                   f"Preflight refused: {len(failed)} check(s) failed: {lines}. Nothing was changed.{hint}")
    for w in [r for r in results if not r.ok and r.severity == "warning"]:
        eng.reporter.warn(f"preflight warning: {w.id}: {'; '.join(w.problems)}")
    eng.journal.set("preflight", "passed")
    eng.safety_passed = True


def _record_fencing(eng: "Engine", results: list) -> None:
    """The STONITH guard's evidence: "enabled" when every fencing check passed, "disabled" when
    one failed, None when the runbook has none among these results."""
    fencing = [r for r in results if r.id in set(eng.rb.fencing_checks)]
    eng.journal.set("fencing", None if not fencing else "enabled" if all(r.ok for r in fencing) else "disabled")


def rollback_safety(eng: "Engine") -> None:
    """Before undoing anything: exactly one node holds the public IP; and when the rollback will
    turn failover back on, fencing is read again now (it may have been turned off during the
    window) — an unattended rollback without it is refused here, before any change."""
    from bmupgrade.engine.core import Stop
    from bmupgrade.engine.guards import fencing_gap, fencing_refusal
    from bmupgrade.engine.rollback import failover_back_on

    try:
        eng.opening_probe().single_holder(eng.rb.cluster.public_ip)
    except BmError as exc:
        raise Stop(EXIT_PREFLIGHT, eng.refused_status(), f"Rollback refused: {exc}") from None
    turns_on = failover_back_on(eng, force=eng.options.force_past_no_return)
    if turns_on is not None and eng.rb.fencing_checks:
        eng.reporter.phase("Fencing (read-only: the rollback turns failover back on)")
        only = set(eng.rb.fencing_checks)
        _record_fencing(eng, run_checks(eng, "preflight", skip={c.id for c in eng.rb.preflight if c.id not in only},
                                        probe=eng.opening_probe))
    why = fencing_gap(eng.rb, eng.journal.data.get("fencing"), preflight_ran=True) if turns_on else None
    if why and not eng.options.allow_no_stonith and not eng.prompter.interactive:
        raise Stop(EXIT_PREFLIGHT, eng.refused_status(), fencing_refusal(
            eng, f"Rollback refused (unattended): undoing '{turns_on.id}' turns automatic failover back on",
            why) + " Nothing was changed.")
    eng.safety_passed = True


def run_checks(eng: "Engine", phase: str, *, skip: set[str] = frozenset(),
               probe: "Callable[[], object] | None" = None) -> list[checks_mod.CheckResult]:
    """The phase's read-only checks. Each node gets all of its checks in one round trip
    (transport/together.py: separate answers, each audited); reported in the runbook's order.
    `probe`: where the VIP answer comes from (default: a new probe)."""
    plan = build_plan(eng.rb, values=eng.journal.data["captured"], display=False, phases={phase})
    actions = [a for a in plan.actions if a.phase == phase and a.id not in skip]
    vip = (probe or eng.probe)() if actions else None
    targets = {a.id: _check_targets(eng, a, vip) for a in actions}
    asked: dict[str, list] = {}
    for a in actions:
        for n in targets[a.id] if isinstance(targets[a.id], list) else []:
            asked.setdefault(n, []).append((a.id, a.commands[n].run[0], a.timeout or 60))
    answers = eng.ask_each(asked)
    results = []
    for a in actions:
        got = targets[a.id]
        res = got if isinstance(got, checks_mod.CheckResult) else \
            checks_mod.evaluate(a, {n: answers[n][a.id] for n in got})
        if res.ok and a.capture and res.captured is not None:
            eng.journal.set(["captured", a.capture], res.captured)
        results.append(res)
        eng.reporter.check(res)
    return results


def _check_targets(eng: "Engine", a, probe) -> "list[str] | checks_mod.CheckResult":
    """The nodes a check runs on, or its result when it is not sent (the built-in VIP check, or
    a check on primary/secondary when no single node holds the VIP)."""
    from bmupgrade.engine.core import Stop

    if a.kind == "builtin":
        res = checks_mod.CheckResult(a.id, a.title, True, a.severity, why=a.why)
        try:
            res.outputs = {probe.single_holder(eng.rb.cluster.public_ip): "holds the public IP"}
        except BmError as exc:
            res.ok, res.problems = False, [str(exc).split(" Nothing was sent")[0]]
        return res
    try:
        return eng.resolve(a.target, probe=probe)
    except Stop as stop:  # no single VIP holder: not run (the VIP check above says why)
        return checks_mod.CheckResult(a.id, a.title, False, a.severity, why=a.why,
                                      problems=["not run: " + stop.message.split(" Nothing was sent")[0]])


def facts(eng: "Engine") -> None:
    """The facts at the start (or resume), with the VIP holders the preflight saw moments ago;
    on resume, what changed since the stop."""
    from bmupgrade.engine import facts as facts_mod

    values = facts_mod.collect(eng, probe=eng.opening_probe())
    if eng.mode == M.RESUME:
        facts_mod.show_changes(eng, values)
    facts_mod.record(eng, "resume" if eng.mode == M.RESUME else "start", values)


def steps(eng: "Engine") -> None:
    from bmupgrade.engine.guards import check_deadline
    from bmupgrade.engine.step import StepRunner

    assert eng.safety_passed, "steps before the safety checks"
    eng.apply_step_flags()
    enable = eng.rb.ha_step("enable")
    if enable and eng.ha.is_off() and eng.journal.step(enable.id)["state"] == DONE:
        eng.ha.back_on(enable.id)  # a crash between "ha-on done" and "HA on" in the journal
    eng.reporter.phase("Steps")
    runner = StepRunner(eng)
    total = len(eng.rb.steps)
    for seq, step in enumerate(eng.rb.steps, 1):
        if eng.journal.step(step.id)["state"] in (DONE, SKIPPED):
            continue
        eng.checkpoint(step, completed=None)
        check_deadline(eng, step)
        runner.run(seq, total, step)
    if eng.ha.is_off():
        from bmupgrade.engine.core import Stop

        enable = eng.rb.ha_step("enable")
        name = enable.id if enable else "the HA-on step"
        raise Stop(EXIT_FAILED, "failed", f"Every step was handled, but HA handling is still OFF ('{name}' was "
                   f"skipped). Turn it back on: `{eng.hint('resume', '--rerun ' + name)}`.")


def rollback(eng: "Engine") -> None:
    from bmupgrade.engine.core import Stop
    from bmupgrade.engine.rollback import held_by, roll_back

    assert eng.safety_passed and eng.rollback_confirmed
    done = roll_back(eng, ask=False)
    if not done:
        raise Stop(EXIT_FAILED, "failed", "Rollback incomplete: see above; `" + eng.hint("rollback") + "` goes on.")
    stop = held_by(eng)
    if stop is not None:  # not a plain "Rolled back.": the upgrade itself stays
        raise Stop(EXIT_OK, PARTLY_ROLLED_BACK, f"Rolled back as far as the point of no return '{stop.id}'"
                   + ("" if eng.ha.is_off() else ", HA handling on") + ": nothing up to it was undone (no "
                   "downgrade under migrated data); the back-out for the rest is a restore from the backup.")


def postflight(eng: "Engine") -> None:
    from bmupgrade.engine.core import Stop

    if not eng.rb.postflight:
        return
    eng.reporter.phase("Postflight")
    results = run_checks(eng, "postflight")
    failed = [r for r in results if not r.ok and r.severity == "error"]
    eng.journal.set("postflight_results", {r.id: {"ok": r.ok, "problems": r.problems} for r in results})
    if failed:
        raise Stop(EXIT_FAILED, "failed",
                   "Postflight failed: " + "; ".join(f"{r.id} ({r.problems[0]})" for r in failed)
                   + f". Every step ran; check the cluster, then `{eng.hint('resume')}` re-runs the postflight.")


PHASES: tuple[Phase, ...] = (
    Phase("confirm-rollback", frozenset({M.ROLLBACK}), confirm_rollback,
          "show what will be undone and ask (default No for a succeeded run); declining changes nothing"),
    Phase("own", frozenset({M.RESUME, M.ROLLBACK}), own, "the run is RUNNING, owned by this process"),
    Phase("connect", frozenset(Mode), connect, "SSH to every node (strict host keys)"),
    Phase("lock", CHANGING, lock, "cluster lock + HA-off markers, one round trip per node", safety=True),
    Phase("markers", frozenset({M.CHECK}), markers, "HA-off markers (read-only)", safety=True),
    Phase("preflight", frozenset({M.RUN, M.RESUME, M.CHECK}), preflight, "the runbook's read-only checks",
          safety=True),
    Phase("rollback-safety", frozenset({M.ROLLBACK}), rollback_safety, "exactly one VIP holder", safety=True),
    Phase("facts", frozenset({M.RUN, M.RESUME}), facts, "record facts; on resume, show what changed"),
    Phase("steps", frozenset({M.RUN, M.RESUME}), steps, "the steps, in order"),
    Phase("rollback", frozenset({M.ROLLBACK}), rollback, "undo, newest first, up to the point of no return"),
    Phase("postflight", frozenset({M.RUN, M.RESUME}), postflight, "read-only checks after the steps"),
)

SUCCESS = {M.RUN: (EXIT_OK, "succeeded", "Upgrade complete."),
           M.RESUME: (EXIT_OK, "succeeded", "Upgrade complete."),
           M.ROLLBACK: (EXIT_OK, "rolled-back", "Rolled back."),
           M.CHECK: (EXIT_OK, None, "All checks passed: the cluster is ready for the upgrade.")}
