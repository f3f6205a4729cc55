"""Questions at a terminal (questionary), for an interactive run. Only ever with a TTY.

Imported lazily: questionary costs start-up time. Everything shown is escaped for rich markup
and sanitised (a runbook's `[backup]` stays visible; a node's escape sequences are shown, not
obeyed).
"""

from __future__ import annotations

from bmupgrade.errors import BmError
from bmupgrade.outcome import (ABORT, ASSUME_DONE, CONTINUE, RERUN, RETRY, ROLLBACK, SKIP, WAIT,  # noqa: F401
                               FailureContext)


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
        self.console.print(f"\n[bold yellow]Still running:[/bold yellow] {_esc(title)} {_esc(f'[{step_id}]')}: "
                           f"{_esc(text)}")
        return self._select("A second copy is never started. What now?", [
            (WAIT, "Wait for it to finish (check again in a few seconds)"),
            (ABORT, "Stop here (resume later)")], default=WAIT)

    def on_interrupt(self, step_id, title, completed, undo) -> str:
        what = {True: "the step completed", False: "the step failed", None: "at a safe point"}[completed]
        self.console.print(f"\n[bold yellow]Interrupted[/bold yellow] ({what}): {_esc(title)} {_esc(f'[{step_id}]')}")
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
            ("no", "No — stop here (HA stays off; the command that goes on is printed)"),
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
