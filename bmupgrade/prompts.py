"""Decisions at the right moment: the engine asks a Prompter, never a terminal directly.

Two implementations: `InteractivePrompter` (questionary, only ever with a TTY) and
`PolicyPrompter` (unattended: the answers the admin wrote down in advance — `--yes`,
`--on-failure`, `--ack`, an answers file). Tests inject a scripted prompter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from bmupgrade.errors import BmError

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
        if step_id in self.rerun:
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


class InteractivePrompter:
    """questionary prompts at a terminal. Imported lazily: questionary costs start-up time."""

    interactive = True

    def __init__(self, console, *, step_mode: bool = False):
        if not _isatty():
            raise BmError("no terminal to ask questions on: use --yes (and --on-failure abort|rollback, "
                          "--ack ID,...) for an unattended run", exit_code=2)
        self.console = console
        self.step_mode = step_mode
        # node -> the ssh command bmupgrade's own connection settings give (hints.ssh_command);
        # set by the CLI once the runbook is known. Without it, the engine's hint is shown.
        self.ssh_hint_for = None

    def _select(self, message: str, choices: list[tuple[str, str]], default: str | None = None) -> str:
        import questionary

        qchoices = [questionary.Choice(title=t, value=v) for v, t in choices]
        answer = questionary.select(message, choices=qchoices, default=next(
            (c for c in qchoices if c.value == default), None)).ask()
        if answer is None:  # Ctrl-C / Ctrl-D inside the prompt
            raise KeyboardInterrupt
        return answer

    def ack_manual(self, step_id, title, text) -> bool:
        self.console.print(f"\n[bold yellow]Manual action[/bold yellow] {_esc(f'[{step_id}]')} {_esc(title)}\n"
                           f"  {_esc(text)}")
        return self._select("Is this done?", [("yes", "Yes, it is done"), ("no", "No — stop here")]) == "yes"

    def confirm_step(self, step_id, title, where, commands) -> str:
        self.console.print(f"\n[bold]Run[/bold] {_esc(title)} [dim]{_esc(f'[{step_id}]')}[/dim] on {_esc(where)}?")
        for c in commands:
            self.console.print(f"  $ {c}", markup=False, highlight=False)
        return self._select("Proceed?", [("yes", "Run it"), ("skip", "Skip this step (recorded as skipped)"),
                                         ("abort", "Stop here (resumable)")], default="yes")

    def on_failure(self, ctx: FailureContext) -> str:
        self.console.print(f"\n[bold red]Step failed:[/bold red] {_esc(ctx.title)} {_esc(f'[{ctx.step_id}]')}\n"
                           f"{_esc(ctx.summary)}")
        while True:
            choice = self._select("What now?", [
                (RETRY, "Retry the step"),
                (SKIP, "Skip it (recorded as skipped; later steps may fail or be unsafe)"),
                (ROLLBACK, "Roll back the done steps, in reverse order"),
                (ABORT, "Abort (stop here; `bmupgrade resume` continues later)"),
                ("output", "Show the full output of the failed command"),
                ("shell", "How do I get a shell on that node?"),
            ])
            if choice == "output":
                self.console.print(for_terminal(ctx.output or "(no output)"), markup=False, highlight=False)
            elif choice == "shell":
                hint = ctx.ssh_hint
                if self.ssh_hint_for is not None and ctx.nodes:
                    hint = "\n".join(f"{self.ssh_hint_for(n)}    # {n}" for n in ctx.nodes)
                    hint += "\n(then look at the step's output in the run's output log)"
                self.console.print(hint, markup=False, highlight=False, soft_wrap=True)
            else:
                return choice

    def unknown_outcome(self, step_id, title, nodes, commands) -> str:
        self.console.print(f"\n[bold yellow]Unknown outcome:[/bold yellow] {_esc(title)} {_esc(f'[{step_id}]')} was "
                           f"sent to {_esc(', '.join(nodes))} and its result was lost (it is no longer running there); "
                           "it has no verify command.")
        for c in commands:
            self.console.print(f"  $ {c}", markup=False, highlight=False)
        return self._select("Check on the node(s) first, then:", [
            (ABORT, "Stop here (resume later, after checking)"),
            (ASSUME_DONE, "I checked: it completed — record it as done"),
            (RERUN, "I checked: it did not take effect — send it again"),
        ], default=ABORT)

    def still_running(self, step_id, title, text) -> str:
        self.console.print(f"\n[bold yellow]Still running:[/bold yellow] {_esc(title)} [{_esc(step_id)}]: {_esc(text)}")
        return self._select("A second copy is never started. What now?", [
            (WAIT, "Wait for it to finish (check again in a few seconds)"),
            (ABORT, "Stop here (resume later)")], default=WAIT)

    def on_interrupt(self, step_id, title, completed, undo) -> str:
        what = {True: "the step completed", False: "the step failed", None: "at a safe point"}[completed]
        self.console.print(f"\n[bold yellow]Interrupted[/bold yellow] ({what}): {_esc(title)} [{_esc(step_id)}]")
        return self._select("What now?", [
            (CONTINUE, "Continue the run"),
            (ABORT, "Stop here (`bmupgrade resume` continues later)"),
            (ROLLBACK, "Roll back the done steps, in reverse order")], default=CONTINUE)

    def confirm_typed(self, message, expected) -> bool:
        import questionary

        self.console.print(f"\n[bold red]{_esc(message)}[/bold red]")
        answer = questionary.text(f"Type {expected} to confirm (anything else cancels):").ask()
        if answer is None:
            raise KeyboardInterrupt
        return answer.strip() == expected

    def confirm_no_fencing(self, step_id, title, why) -> bool:
        self.console.print(f"\n[bold red]STONITH guard:[/bold red] {_esc(title)} {_esc(f'[{step_id}]')} turns "
                           f"automatic failover back on, but {_esc(why)}. Without fencing, a failover can split-brain and corrupt the "
                           "shared storage.")
        return self._select("Turn failover back on anyway?", [
            ("no", "No — stop here (HA stays off; fix fencing, then resume)"),
            ("yes", "Yes, I accept the split-brain risk (recorded in the journal)")], default="no") == "yes"

    def confirm_rollback(self, undo, cannot, *, default: bool = True) -> bool:
        self.console.print("\n[bold]Rollback plan[/bold] (reverse order):")
        for line in undo:
            self.console.print(f"  ↶ {line}", markup=False, highlight=False)
        for line in cannot:
            self.console.print(f"  ✗ {line}: cannot be undone automatically", markup=False, highlight=False)
        return self._select("Roll back now?", [("yes", "Yes, roll back"), ("no", "No (nothing changes)")],
                            default="yes" if default else "no") == "yes"


def _esc(text) -> str:
    """Text shown inside rich markup: `[backup]` stays visible, `[/etc/bm]` is no markup error,
    and control characters from a node's output are shown, not obeyed."""
    from rich.markup import escape

    from bmupgrade.sanitize import for_terminal

    return escape(for_terminal(str(text)))


def for_terminal(text: str) -> str:
    from bmupgrade.sanitize import for_terminal as sanitize

    return sanitize(text)


def _isatty() -> bool:
    import sys

    return sys.stdin.isatty() and sys.stdout.isatty()


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
