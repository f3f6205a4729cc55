"""Assembling a run: runbook + journal + transport + prompter + reporter → Engine.

This is the library entry point the CLI calls for `run`, `resume`, `rollback` and
`preflight`; tests call it too, with an in-memory transport or a scripted prompter.
"""

from __future__ import annotations

import hashlib
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bmupgrade.engine import Engine, RunOptions, fencing_gap
from bmupgrade.errors import EXIT_OK, BmError, UsageError
from bmupgrade.journal import DONE, OPEN_STATUSES, RUNNING, Journal, LocalLock, RunStore, now, whoami
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
    hint = "" if rb.fencing_checks else " (mark a preflight check `fencing: true`)"
    return (f"unattended run: step '{enable.id}' turns automatic failover back on, but {why}{hint}. Without "
            "fencing a failover can split-brain and corrupt the shared storage. To accept that risk, add "
            f"--allow-no-stonith. Nothing was {nothing}.")


def step_history(store: RunStore, rb: Runbook) -> dict[str, float]:
    """Median measured duration of each step in earlier runs of this runbook (for deadlines)."""
    samples: dict[str, list[float]] = {}
    for info in store.all():
        try:
            data = Journal.load(info.path).data
        except BmError:
            continue
        if data["runbook"].get("name") != rb.name:
            continue
        for sid, entry in data["steps"].items():
            ds = [n["duration"] for n in entry.get("nodes", {}).values()
                  if n.get("state") == DONE and isinstance(n.get("duration"), (int, float))]
            if ds:
                samples.setdefault(sid, []).append(max(ds))
    return {sid: statistics.median(v) for sid, v in samples.items()}


def _redacted_vars(rb: Runbook) -> dict[str, str]:
    return {k: ("***" if v.secret else v.value) for k, v in rb.vars.items()}


def _engine(rb: Runbook, journal: Journal, session: Session) -> tuple[Engine, Any]:
    from bmupgrade.audit import AuditLog

    audit = AuditLog(journal.path.parent, journal.run_id,
                     redact=Redactor([v.value for v in rb.vars.values() if v.secret]))
    transport = session.transport_factory(rb)
    return Engine(rb, transport, journal, session.prompter, session.reporter, audit, session.options), audit


def _drive(rb: Runbook, journal: Journal, session: Session, action: Callable[[Engine], Any]):
    """Run `action(engine)` under the local cluster lock; always close the transport and logs."""
    lock = LocalLock(session.state_dir, cluster_id(rb))
    lock.acquire({"run_id": journal.run_id, **whoami(), "since": now()})
    engine, audit = _engine(rb, journal, session)
    try:
        return action(engine)
    finally:
        engine.transport.close()
        audit.close()
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
    store = RunStore(session.state_dir)
    session.options.history = step_history(store, rb)
    secret_names = {k for k, v in rb.vars.items() if v.secret}
    journal = Journal.create(
        session.state_dir, runbook_path=rb.source_path, runbook_sha256=rb.source_sha256, runbook_name=rb.name,
        inventory=str(Path(inventory).resolve()) if inventory else None, cluster_id=cluster_id(rb),
        variables=_redacted_vars(rb),
        overrides={k: v for k, v in overrides.items() if k not in secret_names},
        secret_overrides=sorted(k for k in overrides if k in secret_names),
        step_ids=[s.id for s in rb.steps],
        options={"on_failure": session.options.on_failure, "deadline": session.options.deadline})
    session.reporter.info(f"Run {journal.run_id} — journal {journal.path}")
    return _drive(rb, journal, session, lambda engine: engine.execute())


def load_for_resume(session: Session, run_id: str | None, *, force: bool, overrides: dict[str, str],
                    open_only: bool = True) -> tuple[Runbook, Journal]:
    store = RunStore(session.state_dir)
    journal = store.find(run_id, open_only=open_only and run_id is None)
    data = journal.data
    if open_only and data["status"] not in OPEN_STATUSES:
        raise UsageError(f"run {journal.run_id} is {data['status']}: nothing to resume "
                         f"(`bmupgrade status {journal.run_id}`)")
    path = data["runbook"]["path"]
    merged = {**data.get("overrides", {}), **overrides}
    missing_secrets = [k for k in data.get("secret_overrides", []) if k not in overrides]
    if missing_secrets:
        raise UsageError("secret variables are never journaled: give them again with "
                         + " ".join(f"-e {k}=..." for k in missing_secrets))
    rb = load_runbook(path, overrides=merged, inventory=data.get("inventory"))
    if rb.source_sha256 != data["runbook"]["sha256"] and not force:
        raise UsageError(f"{path} (or its inventory) changed since run {journal.run_id} started; resuming "
                         "would mix two procedures. Review the change, then add --force to resume anyway.")
    return rb, journal


def resume_run(session: Session, run_id: str | None, *, force: bool = False,
               overrides: dict[str, str] | None = None):
    rb, journal = load_for_resume(session, run_id, force=force, overrides=overrides or {})
    refusal = stonith_guard_refusal(rb, session, journal.data, nothing="sent")
    if refusal:
        raise UsageError(refusal)
    store = RunStore(session.state_dir)
    session.options.history = step_history(store, rb)
    session.reporter.info(f"Resuming run {journal.run_id} — journal {journal.path}")

    def go(engine: Engine):
        journal.set_status(RUNNING)  # only once the local lock is ours
        return engine.execute(resuming=True)

    return _drive(rb, journal, session, go)


def rollback(session: Session, run_id: str | None, *, force: bool = False,
             overrides: dict[str, str] | None = None):
    rb, journal = load_for_resume(session, run_id, force=force, overrides=overrides or {}, open_only=False)
    return _drive(rb, journal, session, lambda engine: engine.rollback_run())


def ssh_transport_factory(*, insecure: bool = False) -> Callable[[Runbook], Any]:
    """The real transport; sudo password from BMUPGRADE_SUDO_PASSWORD or asked once, hidden."""

    def password() -> str | None:
        env = os.environ.get("BMUPGRADE_SUDO_PASSWORD")
        if env is not None:
            return env
        import sys

        if not sys.stdin.isatty():
            return None
        import getpass

        return getpass.getpass("sudo password for the nodes (not stored): ")

    def make(rb: Runbook):
        from bmupgrade.transport.ssh import SshTransport

        kwargs: dict[str, Any] = {}
        if any(n.sudo for n in rb.cluster.nodes):
            # asked now, once, before the live display starts — never in the middle of a step
            secret = password()
            kwargs["password_provider"] = lambda: secret
        if insecure:
            kwargs["insecure_accept_unknown"] = True
        return SshTransport(**kwargs)

    return make


__all__ = ["Session", "start_run", "resume_run", "rollback", "EXIT_OK"]
