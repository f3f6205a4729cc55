"""Assembling a run: runbook + journal + transport + prompter + reporter → Engine.

This is the library entry point the CLI calls for `run`, `resume`, `rollback` and
`preflight`; tests call it too, with an in-memory transport or a scripted prompter.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bmupgrade.engine.core import Engine, Mode, RunOptions
from bmupgrade.engine.guards import fencing_gap
from bmupgrade.errors import EXIT_OK, BmError, UsageError
from bmupgrade.journal import (DONE, OPEN_STATUSES, PARTLY_ROLLED_BACK, ROLLED_BACK_RUN, RUNNING, Journal, LocalLock,
                               RunStore, new_run_id, now, owner_alive, started_after, whoami)
from bmupgrade.runbook import Runbook, load_runbook
from bmupgrade.templating import Redactor


@dataclass
class Session:
    """Everything a run needs that is not the runbook."""

    state_dir: Path
    reporter: Any
    prompter: Any
    transport_factory: Callable[[Runbook], Any]
    options: RunOptions = field(default_factory=RunOptions)
    sleep: Callable[[float], None] | None = None  # tests: no real waiting (retry delays, "wait for it")


def cluster_id(rb: Runbook) -> str:
    key = rb.cluster.public_ip + "|" + "|".join(sorted(f"{n.host}:{n.port or 22}" for n in rb.cluster.nodes))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def missing_answers(rb: Runbook, prompter) -> list[str]:
    """What an unattended run would need to ask but has no answer for (checked before anything)."""
    if getattr(prompter, "interactive", False):
        return []
    if hasattr(prompter, "missing"):
        return prompter.missing(rb)
    return [f"ack {s.id}" for s in rb.steps if s.manual is not None and not prompter.ack_manual(s.id, s.label, "")]


def stonith_guard_refusal(rb: Runbook, session: Session, journal_data: dict | None = None,
                          nothing: str = "changed") -> str | None:
    """Safety rule 7, decided before anything changes for an unattended run: the step that turns
    automatic failover back on needs fencing proven by a preflight check, or --allow-no-stonith."""
    enable = rb.ha_step("enable")
    if enable is None or session.options.allow_no_stonith or getattr(session.prompter, "interactive", False):
        return None
    data = journal_data or {}
    if data.get("steps", {}).get(enable.id, {}).get("state") == DONE:
        return None
    why = fencing_gap(rb, data.get("fencing"), preflight_ran=data.get("preflight") == "passed")
    if why is None:
        return None
    hint = "" if rb.fencing_checks or rb.fencing == "none" else " (mark a preflight check `fencing: true`)"
    return (f"unattended run: step '{enable.id}' turns automatic failover back on, but {why}{hint}. Without "
            "fencing a failover can split-brain and corrupt the shared storage. To accept that risk, add "
            f"--allow-no-stonith. Nothing was {nothing}.")


def step_history(session: Session, rb: Runbook) -> dict[str, float]:
    """Median measured duration of each step in earlier runs of this runbook, for `--deadline`
    only (a run without one reads nothing): from the runbook's small history file, independent
    of how many runs the state dir holds."""
    from bmupgrade import history

    return history.medians(session.state_dir, rb.name) if session.options.deadline else {}


def _record_history(session: Session, journal: Journal) -> None:
    """At the end of a run: add its measured durations to the index (best effort)."""
    from bmupgrade import history

    try:
        durations, retried = history.from_journal(journal.data)
        if durations:
            history.record(session.state_dir, journal.data["runbook"]["name"], durations, retried=retried)
    except Exception:  # noqa: BLE001 - the run's outcome matters, not its statistics
        pass


def _redacted_vars(rb: Runbook) -> dict[str, str]:
    return {k: ("***" if v.secret else v.value) for k, v in rb.vars.items()}


def _engine(rb: Runbook, journal: Journal, session: Session) -> tuple[Engine, Any]:
    from bmupgrade.audit import AuditLog

    audit = AuditLog(journal.path.parent, journal.run_id,
                     redact=Redactor([v.value for v in rb.vars.values() if v.secret]))
    transport = session.transport_factory(rb)
    engine = Engine(rb, transport, journal, session.prompter, session.reporter, audit, session.options)
    if session.sleep is not None:
        engine.sleep = session.sleep
    return engine, audit


def _locked(rb: Runbook, session: Session, run_id: str) -> LocalLock:
    """Lock before journal: a run refused by the local lock leaves nothing to resume."""
    lock = LocalLock(session.state_dir, cluster_id(rb))
    lock.acquire({"run_id": run_id, **whoami(), "since": now()})
    return lock


def _drive(rb: Runbook, journal: Journal, session: Session, mode: Mode, lock: LocalLock):
    """Run the engine in `mode` under the local cluster lock; always close transport and logs."""
    engine, audit = _engine(rb, journal, session)
    try:
        summary = engine.execute(mode)
        if mode in (Mode.RUN, Mode.RESUME) and journal.status == "succeeded":
            _record_history(session, journal)  # once per run, when it completed
        return summary
    finally:
        engine.transport.close()
        audit.close()
        journal.close()
        lock.release()


def start_run(runbook_path: Path, session: Session, *, inventory: Path | None = None,
              overrides: dict[str, str] | None = None):
    overrides = overrides or {}
    rb = load_runbook(runbook_path, overrides=overrides, inventory=inventory)
    missing = missing_answers(rb, session.prompter)
    if missing:
        acks = [m.split(" ", 1)[1] for m in missing if m.startswith("ack ")]
        hint = f" After doing the manual step(s), add --ack {','.join(acks)}." if acks else ""
        raise UsageError("unattended run: no answer for " + ", ".join(missing) + "." + hint
                         + " (Or record them with an interactive `--save-answers FILE`.) Nothing was changed.")
    refusal = stonith_guard_refusal(rb, session)
    if refusal:
        raise UsageError(refusal)
    session.options.history = step_history(session, rb)
    secret_names = {k for k, v in rb.vars.items() if v.secret}
    run_id = new_run_id(session.state_dir)
    lock = _locked(rb, session, run_id)
    try:
        journal = Journal.create(
            session.state_dir, run_id=run_id,
            runbook={"path": rb.source_path, "sha256": rb.source_sha256, "name": rb.name},
            inventory=str(Path(inventory).resolve()) if inventory else None, cluster_id=cluster_id(rb),
            vars=_redacted_vars(rb), overrides={k: v for k, v in overrides.items() if k not in secret_names},
            secret_overrides=sorted(k for k in overrides if k in secret_names), step_ids=[s.id for s in rb.steps],
            options={"on_failure": session.options.on_failure, "deadline": session.options.deadline,
                     "cli_args": session.options.cli_args})
    except BaseException:
        lock.release()
        raise
    session.reporter.info(f"Run {journal.run_id} — journal {journal.path}"
                          + (f" — deadline {_deadline(session)}" if session.options.deadline else ""))
    return _drive(rb, journal, session, Mode.RUN, lock)


def _deadline(session: Session) -> str:
    from bmupgrade.timeparse import show_local

    return show_local(session.options.deadline)


def _refuse_not_resumable(journal: Journal, *, rollback: bool) -> None:
    data, rid = journal.data, journal.run_id
    status = data["status"]
    if status == RUNNING:
        alive = owner_alive(data.get("owner"))
        if alive is not False:
            o = data.get("owner") or {}
            raise UsageError(f"run {rid} is running (pid {o.get('pid')} on {o.get('host')})"
                             + ("" if alive else ", as far as this machine can tell")
                             + "; wait for it, or stop it first")
        # its owner is gone (killed, crashed): resumable as it was going — a rollback only backwards
    if status == "refused":
        raise UsageError(f"run {rid} was refused before any change: nothing to "
                         + ("roll back" if rollback else "resume; fix the cause and start a new `bmupgrade run`"))
    if rollback:
        if status == ROLLED_BACK_RUN:
            raise UsageError(f"run {rid} is already rolled back")
        if status == PARTLY_ROLLED_BACK:
            raise UsageError(f"run {rid} is rolled back as far as its point of no return and its HA window is "
                             "closed (failover back on): the steps up to that point stay, and are not undone with "
                             "failover on; the back-out for them is a restore from the backup "
                             f"(`bmupgrade status {rid}` shows them)")
        return
    if status not in OPEN_STATUSES:
        raise UsageError(f"run {rid} is {status}: nothing to resume (`bmupgrade status {rid}`)")
    if data.get("direction") == "rollback":
        raise UsageError(f"run {rid} was being rolled back: it never goes forward again; "
                         f"`bmupgrade rollback {rid}` finishes the rollback")


def later_change(store: RunStore, journal: Journal) -> dict | None:
    """A run started after this one on the same cluster that sent something and was not rolled
    back: the cluster is no longer what this run's remaining steps or rollback commands assume."""
    cluster = journal.data.get("cluster_id")
    # ids start with the local start time: a run started later has a later id, give or take
    # the hour a clock falls back (started_after decides on the UTC start)
    since = (dt.datetime.strptime(journal.run_id[:15], "%Y%m%d-%H%M%S") - dt.timedelta(hours=2)).strftime(
        "%Y%m%d-%H%M%S")
    for path in reversed(store.paths()):
        if path.name < since:
            break
        if path == journal.path:
            continue
        try:
            other = Journal.load(path)
        except BmError:  # damaged: `bmupgrade runs` shows it; it cannot vouch for anything
            continue
        d = other.data
        if cluster and d.get("cluster_id") == cluster and d["status"] != ROLLED_BACK_RUN \
                and any(other.nodes_sent(sid) for sid in d["steps"]) and started_after(d, journal.data):
            return d
    return None


def _refuse_superseded(store: RunStore, journal: Journal, *, rollback: bool, force: bool) -> None:
    later = later_change(store, journal)
    if later is None or force:
        return
    rid, lid = journal.run_id, later["run_id"]
    if rollback:
        instead = (f"Roll back that run first (`bmupgrade rollback {lid}`)"
                   if later["status"] != PARTLY_ROLLED_BACK else "Restore from the backup")
        raise UsageError(f"run {rid} was followed by run {lid} ({later['status']}) on the same cluster, which "
                         f"changed it: rolling {rid} back would apply its rollback commands over those changes. "
                         f"{instead}, or add --force to roll {rid} back anyway. Nothing was changed.")
    raise UsageError(f"run {rid} was followed by run {lid} ({later['status']}) on the same cluster, which changed "
                     f"it: resuming {rid} would send its remaining steps over those changes (a step such as "
                     "post-install could run twice on the cluster). Start a new `bmupgrade run` (its preflight "
                     f"sees the cluster as it is), or add --force to resume {rid} anyway. Nothing was changed.")


def identity_changes(journal: Journal, rb: Runbook) -> list[str]:
    """What differs from the run's identity: the runbook/inventory files and the effective variables."""
    data = journal.data
    out = []
    if rb.source_sha256 != data["runbook"]["sha256"]:
        out.append(f"{data['runbook']['path']} (or its inventory) changed since the run started")
    old, new = data.get("vars", {}), _redacted_vars(rb)
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            out.append(f"variable {k}: {old.get(k)!r} → {new.get(k)!r}")
    return out


def load_for_resume(session: Session, run_id: str | None, *, force: bool, overrides: dict[str, str],
                    rollback: bool = False) -> tuple[Runbook, Journal]:
    store = RunStore(session.state_dir)
    journal = store.find(run_id, open_only=not rollback and run_id is None)
    _refuse_not_resumable(journal, rollback=rollback)
    _refuse_superseded(store, journal, rollback=rollback, force=force)
    data = journal.data
    path = data["runbook"]["path"]
    merged = {**data.get("overrides", {}), **overrides}
    missing_secrets = [k for k in data.get("secret_overrides", []) if k not in overrides]
    if missing_secrets:
        raise UsageError("secret variables are never journaled: give them again with "
                         + " ".join(f"-e {k}=..." for k in missing_secrets))
    rb = load_runbook(path, overrides=merged, inventory=data.get("inventory"))
    changes = identity_changes(journal, rb)
    if changes and not force:
        raise UsageError(f"run {journal.run_id} would not be the same run: " + "; ".join(changes)
                         + ". Resuming would mix two procedures. Review the change, then add --force to go on "
                         "anyway. Nothing was changed.")
    if changes:
        session.reporter.warn("--force: going on despite: " + "; ".join(changes))
        session.options.identity_changes = changes
    return rb, journal


def resume_run(session: Session, run_id: str | None, *, force: bool = False,
               overrides: dict[str, str] | None = None, loaded: tuple[Runbook, Journal] | None = None):
    """`loaded`: what load_for_resume already returned for these arguments (the CLI checks its
    flags against it first), so the journals are not read and checked twice."""
    rb, journal = loaded or load_for_resume(session, run_id, force=force, overrides=overrides or {})
    refusal = stonith_guard_refusal(rb, session, journal.data, nothing="sent")
    if refusal:
        raise UsageError(refusal)
    session.options.history = step_history(session, rb)
    lock = _locked(rb, session, journal.run_id)
    session.reporter.info(f"Resuming run {journal.run_id} — journal {journal.path}"
                          + (f" — deadline {_deadline(session)}" if session.options.deadline else ""))
    return _drive(rb, journal, session, Mode.RESUME, lock)


def rollback(session: Session, run_id: str | None, *, force: bool = False,
             overrides: dict[str, str] | None = None):
    rb, journal = load_for_resume(session, run_id, force=force, overrides=overrides or {}, rollback=True)
    session.options.force_past_no_return = force
    lock = _locked(rb, session, journal.run_id)
    return _drive(rb, journal, session, Mode.ROLLBACK, lock)


def check(runbook_path: Path, session: Session, *, inventory: Path | None = None,
          overrides: dict[str, str] | None = None):
    """`bmupgrade check`: the read-only safety checks against the live nodes, days before the
    window. No lock, no journal on disk, nothing written on the nodes."""
    rb = load_runbook(runbook_path, overrides=overrides or {}, inventory=inventory)
    journal = Journal.in_memory(runbook={"path": rb.source_path, "sha256": rb.source_sha256, "name": rb.name})
    engine = Engine(rb, session.transport_factory(rb), journal, session.prompter, session.reporter, None,
                    session.options)
    try:
        summary = engine.execute(Mode.CHECK)
    finally:
        engine.transport.close()
    return summary, journal.data.get("preflight_results", {})


def ssh_transport_factory(*, insecure: bool = False) -> Callable[[Runbook], Any]:
    """The real transport (sudo handled by bmupgrade.credentials; secrets masked in all output)."""
    from bmupgrade.credentials import transport_factory

    return transport_factory(insecure=insecure)


__all__ = ["Session", "start_run", "resume_run", "rollback", "EXIT_OK"]
