"""Decisions at the right moment: the engine asks a Prompter, never a terminal directly.

Two implementations: `ui.prompts.InteractivePrompter` (questionary, only ever with a TTY) and
`PolicyPrompter` (unattended: the answers the admin wrote down in advance — `--yes`,
`--on-failure`, `--ack`, an answers file). Tests inject a scripted prompter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


from bmupgrade.outcome import (  # noqa: F401 (re-exported)
    ABORT, ASSUME_DONE, CONTINUE, RERUN, RETRY, ROLLBACK, SKIP, WAIT, FailureContext)


class Prompter(Protocol):
    interactive: bool

    def ack_manual(self, step_id: str, title: str, text: str) -> bool: ...

    def confirm_step(self, step_id: str, title: str, where: str, commands: list[str]) -> str:
        """'yes' | 'skip' | 'abort'"""

    def on_failure(self, ctx: FailureContext) -> str:
        """retry | skip | rollback | abort"""

    def unknown_outcome(self, step_id: str, title: str, nodes: list[str], commands: list[str]) -> str:
        """rerun | assume-done | abort — a step found `started` on resume, with no verify."""

    def confirm_rollback(self, undo: list[str], cannot: list[str], *, default: bool = True) -> bool: ...

    def on_interrupt(self, step_id: str, title: str, completed: bool | None, undo: list[str]) -> str:
        """continue | abort | rollback — Ctrl-C reached a safe point (completed: the step just
        succeeded everywhere; False: it failed; None: between steps/prompts)."""

    def still_running(self, step_id: str, title: str, text: str) -> str:
        """wait | abort — the command of a step whose outcome is unknown still runs on its node."""

    def confirm_typed(self, message: str, expected: str) -> bool:
        """A typed confirmation (e.g. rolling back past the point of no return)."""

    def confirm_no_fencing(self, step_id: str, title: str, why: str) -> bool:
        """The STONITH guard: turn automatic failover back on without proven fencing?"""


@dataclass
class PolicyPrompter:
    """Unattended answers. Anything it was not told is refused, never guessed."""

    on_failure_policy: str = ABORT
    acks: set[str] = field(default_factory=set)
    rerun: set[str] = field(default_factory=set)
    assume_done: set[str] = field(default_factory=set)
    interactive: bool = False
    _retried: set[str] = field(default_factory=set, repr=False)

    def ack_manual(self, step_id: str, title: str, text: str) -> bool:
        return step_id in self.acks or "all" in self.acks

    def confirm_step(self, step_id, title, where, commands) -> str:
        return "yes"

    def on_failure(self, ctx: FailureContext) -> str:
        # `resume --rerun STEP`: the operator's word to send a failed non-idempotent step again, once
        if ctx.step_id in self.rerun and ctx.step_id not in self._retried:
            self._retried.add(ctx.step_id)
            return RETRY
        return self.on_failure_policy

    def unknown_outcome(self, step_id, title, nodes, commands) -> str:
        if step_id in self.rerun and step_id not in self._retried:
            self._retried.add(step_id)  # one --rerun, one more send
            return RERUN
        if step_id in self.assume_done:
            return ASSUME_DONE
        return ABORT

    def confirm_rollback(self, undo, cannot, *, default: bool = True) -> bool:
        return True

    def confirm_no_fencing(self, step_id, title, why) -> bool:
        return False  # only --allow-no-stonith says yes for an unattended run

    def on_interrupt(self, step_id, title, completed, undo) -> str:
        return ABORT  # unattended: a signal means stop at the safe point

    def still_running(self, step_id, title, text) -> str:
        return ABORT

    def confirm_typed(self, message, expected) -> bool:
        return False  # never typed by a policy


# ---------------------------------------------------------------------------- answers files

ANSWERS_FORMAT = "bmupgrade-answers/1"


@dataclass
class Answers:
    """The admin's decisions, written down once and replayed in an unattended window."""

    runbook: str = ""
    confirm: dict[str, bool] = field(default_factory=dict)  # step id -> run it?
    ack: list[str] = field(default_factory=list)  # manual steps done
    on_failure: str = ABORT

    def save(self, path) -> None:
        import yaml

        from bmupgrade.journal import atomic_write

        body = {"format": ANSWERS_FORMAT, "runbook": self.runbook, "confirm": self.confirm,
                "ack": sorted(set(self.ack)), "on_failure": self.on_failure}
        text = "# bmupgrade answers: replay with `bmupgrade run RUNBOOK --answers FILE`\n" + yaml.safe_dump(
            body, sort_keys=False)
        from pathlib import Path

        atomic_write(Path(path), text.encode())

    @classmethod
    def load(cls, path) -> "Answers":
        from bmupgrade import yamlsource
        from bmupgrade.errors import UsageError

        try:
            data = yamlsource.load_file(path).data
        except yamlsource.SourceError as exc:
            raise UsageError("\n".join(exc.problems)) from None
        if not isinstance(data, dict) or data.get("format") != ANSWERS_FORMAT:
            raise UsageError(f"{path}:1:1: not a bmupgrade answers file (expected format: {ANSWERS_FORMAT}); "
                             "create one with `bmupgrade run ... --save-answers FILE`")
        on_failure = data.get("on_failure", ABORT)
        if on_failure not in (ABORT, ROLLBACK):
            raise UsageError(f"{path}: on_failure must be abort or rollback, not {on_failure!r}")
        confirm = data.get("confirm") or {}
        ack = data.get("ack") or []
        if not isinstance(confirm, dict) or not isinstance(ack, list):
            raise UsageError(f"{path}: 'confirm' must map step ids to yes/no and 'ack' be a list of step ids")
        return cls(str(data.get("runbook", "")), {str(k): bool(v) for k, v in confirm.items()},
                   [str(a) for a in ack], on_failure)


@dataclass
class AnswersPrompter(PolicyPrompter):
    """Unattended, from an answers file: a confirmation it has no answer for is a refusal —
    and `missing()` lists them all before anything changes."""

    answers: Answers = field(default_factory=Answers)

    def __post_init__(self):
        self.on_failure_policy = self.answers.on_failure
        self.acks = set(self.answers.ack) | self.acks

    def confirm_step(self, step_id, title, where, commands) -> str:
        return "yes" if self.answers.confirm.get(step_id) else "abort"

    def missing(self, rb) -> list[str]:
        out = [f"confirm {s.id}" for s in rb.steps if s.confirm and s.id not in self.answers.confirm]
        out += [f"ack {s.id}" for s in rb.steps if s.manual is not None and s.id not in self.acks]
        return out


class RecordingPrompter:
    """Wraps the interactive prompter and remembers what the admin answered."""

    def __init__(self, inner, runbook_name: str = ""):
        self.inner = inner
        self.answers = Answers(runbook=runbook_name)
        self.interactive = inner.interactive
        self.step_mode = getattr(inner, "step_mode", False)

    def ack_manual(self, step_id, title, text) -> bool:
        ok = self.inner.ack_manual(step_id, title, text)
        if ok:
            self.answers.ack.append(step_id)
        return ok

    def confirm_step(self, step_id, title, where, commands) -> str:
        answer = self.inner.confirm_step(step_id, title, where, commands)
        if answer in ("yes", "abort"):
            self.answers.confirm[step_id] = answer == "yes"
        return answer

    def on_failure(self, ctx: FailureContext) -> str:
        answer = self.inner.on_failure(ctx)
        if answer in (ABORT, ROLLBACK):
            self.answers.on_failure = answer
        return answer

    def unknown_outcome(self, *args) -> str:
        return self.inner.unknown_outcome(*args)

    def confirm_rollback(self, undo, cannot, *, default: bool = True) -> bool:
        return self.inner.confirm_rollback(undo, cannot, default=default)

    def on_interrupt(self, *args) -> str:
        return self.inner.on_interrupt(*args)

    def still_running(self, *args) -> str:
        return self.inner.still_running(*args)

    def confirm_typed(self, message, expected) -> bool:
        return self.inner.confirm_typed(message, expected)

    def confirm_no_fencing(self, step_id, title, why) -> bool:
        # not saved: accepting the split-brain risk is never replayed from a file
        return self.inner.confirm_no_fencing(step_id, title, why)
