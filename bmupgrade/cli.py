"""The `bmupgrade` command line: a thin typer layer over the library.

No logic lives here: each command parses flags, calls the library, prints, and maps errors to
exit codes (see bmupgrade.errors). Heavy modules are imported inside the commands so that
`bmupgrade --help` and `plan` start fast.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from bmupgrade import lean
from bmupgrade.errors import EXIT_FAILED, EXIT_HA_OFF, BmError, UsageError


lean.install()  # before typer renders help or coerces parameters (see bmupgrade/lean.py)

app = typer.Typer(
    name="bmupgrade",
    help="Guided, resumable upgrades of a two-node BlueMind HA cluster over SSH.",
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish)
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_debug = "--debug" in sys.argv or os.environ.get("BMUPGRADE_DEBUG") == "1"


_hint_context = None  # hints.Context of this invocation (--state-dir, -i), once a command set it


def _hints_for(state_dir=None, inventory=None):
    """Remember what the next commands this invocation prints must repeat (see bmupgrade.hints)."""
    global _hint_context
    from bmupgrade.hints import Context

    _hint_context = Context.of(state_dir, inventory)
    return _hint_context


def report_error(exc: BmError) -> None:
    """One line per problem, on stderr, prefixed so it is greppable in a scheduler's log."""
    from bmupgrade.ui.report import print_errors

    text = str(exc)
    if _hint_context is not None:
        from bmupgrade.hints import qualify

        text = qualify(_hint_context, text)
    print_errors(text.splitlines() or ["error"])


def handles_errors(fn):
    """Turn a BmError into its message and exit code; anything else into one line (+traceback
    with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BmError as exc:
            if _debug:
                import traceback

                traceback.print_exc()
            report_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a bug: say so in one line, never a traceback by default
            if _debug:
                raise
            from bmupgrade.ui.report import print_errors

            print_errors([f"internal error: {type(exc).__name__}: {exc} (run again with --debug for the "
                          "traceback, and report it)"])
            raise typer.Exit(EXIT_FAILED) from None

    return wrapper


def _show_version(value: bool) -> None:
    if value:
        from bmupgrade import __version__

        typer.echo(f"bmupgrade {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors."),
    version: bool = typer.Option(False, "--version", "-V", callback=_show_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Guided, resumable upgrades of a two-node BlueMind HA cluster over SSH."""


def _plain_help_types() -> None:
    """Help shows a value's kind (<path>, <text>), never a flag's `<bool>` nor a Python type like
    `<list[str]>`: a repeatable option shows its element (the help text says it repeats)."""
    from typer import core

    original = getattr(core.TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_bmupgrade", False):
        return

    def display_type_rich(self, ctx):
        if self.is_flag or self.count:
            return None
        shown = original(self, ctx)
        if isinstance(shown, str):
            shown = shown.replace("<list[str]>", "<text>").replace("<str>", "<text>")
            shown = shown.replace("<list[", "<").replace("]>", ">")
        return shown

    display_type_rich._bmupgrade = True  # type: ignore[attr-defined]
    core.TyperOption.display_type_rich = display_type_rich
    argument = getattr(core.TyperArgument, "display_type_rich", None)
    if argument is not None:
        def argument_type(self, ctx):
            shown = argument(self, ctx)
            if isinstance(shown, str):
                shown = re.sub(r"<list\[(\w+)\]>", lambda m: f"<{m.group(1).lower()}>", shown)
                shown = shown.replace("<str>", "<text>")
            return shown

        core.TyperArgument.display_type_rich = argument_type


_plain_help_types()
def _short_lived() -> None:
    """A command that builds a few objects per runbook line and exits: no cyclic garbage
    collection (a 5000-step plan spends a third of its time in it, collecting nothing)."""
    import gc

    gc.disable()


def parse_extra_vars(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"-e {pair!r}: expected KEY=VALUE, e.g. -e target_version=4.9.3")
        out[key.strip()] = value
    return out


def load(runbook: Path, inventory: Optional[Path], extra: list[str]):
    from bmupgrade.runbook import load_runbook

    return load_runbook(runbook, overrides=parse_extra_vars(extra), inventory=inventory)


InventoryOpt = typer.Option(
    None, "--inventory", "-i", help="YAML with a 'cluster:' (and 'vars:') that overrides the runbook's "
    "(e.g. lab/inventory.yaml written by `bmupgrade lab up`).")
ExtraOpt = typer.Option([], "--extra-var", "-e", help="Override a variable: -e target_version=4.9.3 (repeatable).")


class PlanFormat(str, Enum):
    text = "text"
    markdown = "markdown"
    json = "json"


@app.command()
@handles_errors
def validate(
    runbooks: List[Path] = typer.Argument(..., help="Runbook file(s) or bundled name(s) to check."),
    inventory: Optional[Path] = InventoryOpt,
    extra: List[str] = ExtraOpt,
) -> None:
    """Check runbooks; every problem is listed with file:line:column. Exit 2 if any."""
    from bmupgrade.errors import RunbookError

    _short_lived()

    problems: list[str] = []
    for path in runbooks:
        try:
            rb = load(path, inventory, extra)
            typer.echo(f"{path}: ok ({len(rb.preflight)} preflight checks, {len(rb.steps)} steps, "
                       f"{len(rb.postflight)} postflight checks)")
        except RunbookError as exc:
            problems.extend(exc.problems)
    if problems:
        raise RunbookError(problems)


@app.command()
@handles_errors
def runbooks() -> None:
    """List the runbooks shipped with bmupgrade; plan, run, validate accept their names."""
    from bmupgrade import bundled

    for name in bundled.names():
        title, description = bundled.describe(name)
        typer.echo(f"{name}\t{title}\n    {description}\n    {bundled.path(name)}")


@app.command()
@handles_errors
def plan(
    runbook: Path = typer.Argument(..., help="The runbook to plan (a file, or a bundled name: see `runbooks`)."),
    fmt: PlanFormat = typer.Option(PlanFormat.text, "--format", "-f", help="text | markdown | json"),
    inventory: Optional[Path] = InventoryOpt,
    extra: List[str] = ExtraOpt,
    probe: bool = typer.Option(False, "--probe", help="Ask the nodes (read-only) which one holds the "
                               "public IP now, to show concrete nodes for primary/secondary, and run the "
                               "runbook's read_only steps (e.g. the apt simulation) to show what they print."),
    deadline: Optional[str] = typer.Option(None, "--deadline", help="Show each step's latest start for a "
                                           "maintenance window ending then (04:00, ISO time, +90m)."),
) -> None:
    """Print every command, on which node, in order. No side effects; no network unless --probe."""
    _short_lived()
    from bmupgrade.plan import build_plan
    from bmupgrade.ui.planview import render_json, render_markdown, render_plain, render_text, use_plain

    rb = load(runbook, inventory, extra)
    if probe:
        from bmupgrade.probes import probe_for_plan
        from bmupgrade.transport.base import TransportError

        try:
            p = probe_for_plan(rb)
        except TransportError as exc:
            raise BmError(f"cannot reach {exc}") from None
    else:
        p = build_plan(rb)
    if deadline:
        from bmupgrade.timeparse import parse_deadline

        p.deadline = parse_deadline(deadline)
    if fmt is PlanFormat.json:
        typer.echo(render_json(p))
    elif fmt is PlanFormat.markdown:
        typer.echo(render_markdown(p))
    elif use_plain(p, sys.stdout.isatty()):  # a pipe, a file, or too long for a table
        typer.echo(render_plain(p))
    else:
        from bmupgrade.ui.report import make_console

        render_text(p, make_console())


@app.command()
@handles_errors
def schema(
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
) -> None:
    """Print the runbook's JSON Schema (for editors: `# yaml-language-server: $schema=FILE`)."""
    from bmupgrade.runbook import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output:
        output.write_text(text)
    else:
        typer.echo(text, nl=False)


# ---------------------------------------------------------------------------- runs

class OnFailure(str, Enum):
    abort = "abort"
    rollback = "rollback"


class OnDeadline(str, Enum):
    stop = "stop"
    rollback = "rollback"


class StatusFormat(str, Enum):
    text = "text"
    json = "json"


AllowNoStonithOpt = typer.Option(
    False, "--allow-no-stonith", help="Go on although fencing (STONITH) is not enabled or not proven, and turn "
    "automatic failover back on without asking: accepts the split-brain risk (recorded in the journal).")
StateDirOpt = typer.Option(None, "--state-dir", help="Where journals and logs live (default: "
                           "$BMUPGRADE_STATE_DIR, else $XDG_STATE_HOME/bmupgrade).")
YesOpt = typer.Option(False, "--yes", "-y", help="Unattended: answer yes to confirmations (failures follow "
                      "--on-failure; manual steps need --ack).")
OnFailureOpt = typer.Option(OnFailure.abort, "--on-failure", help="Unattended failure policy (after the "
                            "runbook's retries): abort (resumable) or rollback.")
DeadlineOpt = typer.Option(None, "--deadline", help="End of the maintenance window: 04:00, an ISO time, or "
                           "+90m. A step that may not finish in time is not started (exit 4).")
OnDeadlineOpt = typer.Option(OnDeadline.stop, "--on-deadline", help="At the deadline: stop, or roll back.")
AckOpt = typer.Option([], "--ack", help="Manual steps already done, by id (comma-separated; repeatable), "
                      "for unattended runs: --ack backup,prepare.")
JsonOpt = typer.Option(False, "--json", help="Machine-readable events, one JSON object per line.")
StepOpt = typer.Option(False, "--step", help="Ask before every step (like ansible-playbook --step).")
RerunOpt = typer.Option([], "--rerun", help="Resume: send again these steps whose outcome is unknown, or run "
                        "these skipped steps after all.")
AssumeDoneOpt = typer.Option([], "--assume-done", help="Resume: record these 'started' steps as done.")


def _split(values: list[str]) -> set[str]:
    return {v.strip() for item in values for v in item.split(",") if v.strip()}


def _session(state_dir, yes, on_failure, deadline, on_deadline, acks, as_json, step_mode,
             rerun=(), assume_done=(), from_step=None, break_lock=False, answers=None, save_answers=None,
             allow_no_stonith=False):
    from bmupgrade.engine import RunOptions
    from bmupgrade.journal import default_state_dir
    from bmupgrade.prompts import PolicyPrompter
    from bmupgrade.ui.prompts import InteractivePrompter
    from bmupgrade.ui.report import ConsoleReporter, JsonReporter
    from bmupgrade.runner import Session
    from bmupgrade.timeparse import parse_deadline

    reporter = JsonReporter() if as_json else ConsoleReporter()
    interactive = None  # the InteractivePrompter, when there is one
    options = RunOptions(on_failure=on_failure.value, on_deadline=on_deadline.value,
                         deadline=parse_deadline(deadline) if deadline else None, from_step=from_step,
                         break_lock=break_lock, allow_no_stonith=allow_no_stonith, rerun=_split(list(rerun)))
    if answers is not None:
        from bmupgrade.prompts import Answers, AnswersPrompter

        loaded = Answers.load(answers)
        prompter = AnswersPrompter(acks=_split(acks), rerun=_split(list(rerun)),
                                   assume_done=_split(list(assume_done)), answers=loaded)
        options.on_failure = loaded.on_failure
    elif yes:
        prompter = PolicyPrompter(on_failure_policy=on_failure.value, acks=_split(acks),
                                  rerun=_split(list(rerun)), assume_done=_split(list(assume_done)))
    else:
        if as_json:
            raise UsageError("--json needs --yes: there is no one to answer prompts in a JSON stream")
        given = [f for f, v in (("--ack", acks), ("--rerun", rerun), ("--assume-done", assume_done)) if v]
        if given:
            raise UsageError(f"{', '.join(given)} answer(s) for unattended runs: add --yes, or drop them and "
                             "answer when asked. Nothing was changed.")
        console = reporter.console
        prompter = interactive = InteractivePrompter(console, step_mode=step_mode)
        if save_answers is not None:
            from bmupgrade.prompts import RecordingPrompter

            prompter = RecordingPrompter(prompter)
    if save_answers is not None and answers is None and yes:
        raise UsageError("--save-answers records an interactive run's answers; drop --yes")
    _hints_for(state_dir)
    return Session(state_dir or default_state_dir(), reporter, prompter,
                   _transport_factory(interactive), options)


def _transport_factory(interactive=None):
    """The SSH transport (bmupgrade.credentials); once the runbook is known, the interactive
    prompter's "get a shell" hint uses the same ssh settings (bmupgrade.hints.ssh_command)."""
    from bmupgrade.credentials import transport_factory

    make = transport_factory()

    def factory(rb):
        if interactive is not None:
            from bmupgrade.hints import ssh_command

            interactive.ssh_hint_for = functools.partial(ssh_command, rb)
        return make(rb)

    return factory


def _refuse_unknown_steps(rb, *, acks=(), rerun=(), assume_done=(), from_step=None) -> None:
    """--ack/--rerun/--assume-done/--from naming no step of the runbook: exit 2 before anything
    starts (no journal, no connection), with the closest step id."""
    from bmupgrade.runbook import unknown_step_refs

    manual = [s.id for s in rb.steps if s.manual is not None]
    problems = unknown_step_refs(rb, sorted(_split(list(acks))), "--ack", manual=manual)
    problems += unknown_step_refs(rb, sorted(_split(list(rerun))), "--rerun")
    problems += unknown_step_refs(rb, sorted(_split(list(assume_done))), "--assume-done")
    problems += unknown_step_refs(rb, [from_step] if from_step else [], "--from")
    if problems:
        raise UsageError("\n".join(problems + ["Nothing was changed."]))


def _refuse_unused_answers(rb, journal, *, rerun=(), assume_done=()) -> None:
    """--rerun and --assume-done answer for steps left skipped, failed or with an unknown outcome;
    naming a step the resume would not ask about would be silently ignored: refuse it, saying why."""
    problems = []
    for name in sorted(_split(list(rerun))):
        if not journal.nodes_in(name, "skipped", "failed", "started", "unknown") and \
                journal.step(name).get("state") != "skipped":
            problems.append(f"--rerun {name}: step '{name}' is {journal.step(name).get('state', 'pending')} in this "
                            "run; --rerun sends again a step left skipped, failed or with an unknown outcome")
    for name in sorted(_split(list(assume_done))):
        step = rb.step(name)
        unknown = journal.nodes_in(name, "started", "unknown")
        why = ("its outcome is not unknown" if not unknown else "resume runs its verify command and decides"
               if step.verify else "it is idempotent: resume sends it again" if step.idempotent else "")
        if why:
            problems.append(f"--assume-done {name}: step '{name}' is {journal.step(name).get('state', 'pending')} "
                            f"and {why}; --assume-done only records as done a step whose outcome nobody can tell")
    if problems:
        raise UsageError("\n".join(problems + ["Nothing was changed."]))


def _finish(summary, reporter) -> None:
    if _hint_context is not None:
        from bmupgrade.hints import qualify_summary

        qualify_summary(_hint_context, summary)
    reporter.final(summary)
    if summary.exit_code == 130:
        # Second Ctrl-C: the journal is saved; do not wait for worker threads still reading
        # from a node (their remote commands go on by themselves).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    raise typer.Exit(summary.exit_code)


@app.command()
@handles_errors
def run(
    runbook: Path = typer.Argument(..., help="The runbook to run (a file, or a bundled name: see `runbooks`)."),
    inventory: Optional[Path] = InventoryOpt,
    extra: List[str] = ExtraOpt,
    yes: bool = YesOpt,
    on_failure: OnFailure = OnFailureOpt,
    deadline: Optional[str] = DeadlineOpt,
    on_deadline: OnDeadline = OnDeadlineOpt,
    ack: List[str] = AckOpt,
    from_step: Optional[str] = typer.Option(None, "--from", help="Start at this step; earlier ones are "
                                            "recorded as skipped (you did them by hand)."),
    step: bool = StepOpt,
    as_json: bool = JsonOpt,
    break_lock: bool = typer.Option(False, "--break-lock", help="Take over the cluster lock of a dead run "
                                    "(only after checking that it is dead)."),
    answers: Optional[Path] = typer.Option(None, "--answers", help="Unattended, with the answers saved by an "
                                           "interactive run; every missing answer is listed before anything."),
    save_answers: Optional[Path] = typer.Option(None, "--save-answers", help="Interactive: save your answers "
                                                "(confirmations, acknowledgements, failure policy) to FILE."),
    allow_no_stonith: bool = AllowNoStonithOpt,
    state_dir: Optional[Path] = StateDirOpt,
) -> None:
    """Preflight, steps, postflight — journaled, resumable. Exit: 0 ok, 1 failed/aborted, 2 bad input,
    3 refused before any change (preflight or lock), 4 deadline, 5 stopped with HA left off, 130 interrupted."""
    from bmupgrade.runner import start_run

    if ack or from_step:
        _refuse_unknown_steps(load(runbook, inventory, extra), acks=ack, from_step=from_step)
    session = _session(state_dir, yes, on_failure, deadline, on_deadline, ack, as_json, step,
                       from_step=from_step, break_lock=break_lock, answers=answers, save_answers=save_answers,
                       allow_no_stonith=allow_no_stonith)
    try:
        summary = start_run(runbook, session, inventory=inventory, overrides=parse_extra_vars(extra))
    finally:
        if save_answers is not None and hasattr(session.prompter, "answers"):
            session.prompter.answers.runbook = str(runbook)
            session.prompter.answers.save(save_answers)
            session.reporter.info(f"Answers saved to {save_answers}; replay with --answers {save_answers}")
    _finish(summary, session.reporter)


@app.command()
@handles_errors
def check(
    runbook: Path = typer.Argument(..., help="The runbook whose preflight to run."),
    inventory: Optional[Path] = InventoryOpt,
    extra: List[str] = ExtraOpt,
    fmt: StatusFormat = typer.Option(StatusFormat.text, "--format", "-f", help="text | json"),
) -> None:
    """Run the read-only preflight against the live nodes, days before the window: every failed check
    with why and how to fix it. Changes nothing, takes no lock. Exit: 0 ready, 3 not ready, 2 bad input."""
    from bmupgrade import runner
    from bmupgrade.engine import RunOptions
    from bmupgrade.prompts import PolicyPrompter
    from bmupgrade.ui.report import ConsoleReporter, NullReporter

    reporter = NullReporter() if fmt is StatusFormat.json else ConsoleReporter()
    session = runner.Session(Path("."), reporter, PolicyPrompter(), _transport_factory(), RunOptions())
    summary, results = runner.check(runbook, session, inventory=inventory, overrides=parse_extra_vars(extra))
    if fmt is StatusFormat.json:
        typer.echo(json.dumps({"ready": summary.exit_code == 0, "exit": summary.exit_code,
                               "message": summary.message, "checks": results}))
    else:
        reporter.verdict(summary.message, ok=summary.exit_code == 0)
    raise typer.Exit(summary.exit_code)


@app.command()
@handles_errors
def resume(
    run_id: Optional[str] = typer.Argument(None, help="Run id (default: the latest unfinished run)."),
    extra: List[str] = ExtraOpt,
    yes: bool = YesOpt,
    on_failure: OnFailure = OnFailureOpt,
    deadline: Optional[str] = DeadlineOpt,
    on_deadline: OnDeadline = OnDeadlineOpt,
    ack: List[str] = AckOpt,
    rerun: List[str] = RerunOpt,
    assume_done: List[str] = AssumeDoneOpt,
    step: bool = StepOpt,
    as_json: bool = JsonOpt,
    force: bool = typer.Option(False, "--force", help="Resume even though the runbook changed, or a later run changed the "
                               "cluster since."),
    break_lock: bool = typer.Option(False, "--break-lock", help="Take over a dead run's cluster lock."),
    allow_no_stonith: bool = AllowNoStonithOpt,
    state_dir: Optional[Path] = StateDirOpt,
) -> None:
    """Continue a stopped run: done steps are not repeated; a step found 'started' is verified or asked
    about, never silently re-run."""
    from bmupgrade.runner import resume_run

    session = _session(state_dir, yes, on_failure, deadline, on_deadline, ack, as_json, step,
                       rerun=rerun, assume_done=assume_done, break_lock=break_lock,
                       allow_no_stonith=allow_no_stonith)
    loaded = None
    if ack or rerun or assume_done:
        from bmupgrade.runner import load_for_resume

        loaded = rb, found = load_for_resume(session, run_id, force=force, overrides=parse_extra_vars(extra))
        _refuse_unknown_steps(rb, acks=ack, rerun=rerun, assume_done=assume_done)
        _refuse_unused_answers(rb, found, rerun=rerun, assume_done=assume_done)
    _finish(resume_run(session, run_id, force=force, overrides=parse_extra_vars(extra), loaded=loaded),
            session.reporter)


@app.command()
@handles_errors
def rollback(
    run_id: Optional[str] = typer.Argument(None, help="Run id (default: the latest run)."),
    extra: List[str] = ExtraOpt,
    yes: bool = typer.Option(False, "--yes", "-y", help="Unattended: roll back without asking for confirmation."),
    as_json: bool = JsonOpt,
    force: bool = typer.Option(False, "--force", help="Roll back even though the runbook changed or a later run "
                               "changed the cluster since, and past the point of no return (after typing the run id "
                               "at a terminal)."),
    allow_no_stonith: bool = AllowNoStonithOpt,
    state_dir: Optional[Path] = StateDirOpt,
) -> None:
    """Undo a run's done steps (those with rollback commands), in reverse order, where they ran — never
    past a point of no return (e.g. post-install) without --force."""
    from bmupgrade import runner

    session = _session(state_dir, yes, OnFailure.abort, None, OnDeadline.stop, [], as_json, False,
                       allow_no_stonith=allow_no_stonith)
    _finish(runner.rollback(session, run_id, force=force, overrides=parse_extra_vars(extra)), session.reporter)


@app.command()
@handles_errors
def status(
    run_id: Optional[str] = typer.Argument(None, help="Run id (default: the latest run)."),
    fmt: StatusFormat = typer.Option(StatusFormat.text, "--format", "-f", help="text | json"),
    cluster: Optional[Path] = typer.Option(None, "--cluster", help="RUNBOOK: instead of a local journal, ask "
                                           "its nodes (read-only) who holds the lock and whether HA is off."),
    inventory: Optional[Path] = InventoryOpt,
    state_dir: Optional[Path] = StateDirOpt,
) -> None:
    """Show a run's journal: per step and node, state, times, exit codes; and whether HA is off."""
    from bmupgrade.journal import RunStore, default_state_dir
    from bmupgrade.ui.status import render_status

    if cluster is not None:
        from bmupgrade.ui.report import make_console
        from bmupgrade.ui.status import read_cluster_markers, render_cluster_markers
        from bmupgrade.transport.base import TransportError

        try:
            markers = read_cluster_markers(load(cluster, inventory, []))
        except TransportError as exc:
            raise BmError(f"cannot reach {exc}") from None
        if fmt is StatusFormat.json:
            typer.echo(json.dumps(markers, indent=2))
        else:
            render_cluster_markers(markers, make_console())
        if any("ha-off" in m for m in markers.values()):
            raise typer.Exit(EXIT_HA_OFF)  # a scheduler's check: HA handling is off on the nodes
        return

    ctx = _hints_for(state_dir)
    journal = RunStore(state_dir or default_state_dir()).find(run_id)
    if fmt is StatusFormat.json:
        typer.echo(json.dumps(journal.data, indent=2))
        return
    from bmupgrade.ui.report import make_console

    from bmupgrade.hints import qualify

    render_status(journal, make_console(), hint=functools.partial(qualify, ctx))


@app.command()
@handles_errors
def runs(
    fmt: StatusFormat = typer.Option(StatusFormat.text, "--format", "-f", help="text | json"),
    state_dir: Optional[Path] = StateDirOpt,
) -> None:
    """List the runs in the state dir, oldest first."""
    from bmupgrade.journal import RunStore, default_state_dir
    from bmupgrade.ui.status import render_runs

    _hints_for(state_dir)
    store = RunStore(state_dir or default_state_dir())
    found = store.all()
    if fmt is StatusFormat.json:
        typer.echo(json.dumps([{"run_id": r.run_id, "status": r.status, "owner_gone": r.owner_gone, "started": r.created_at,
                                "runbook": r.runbook, "by": r.by, "journal": str(r.path)} for r in found], indent=2))
        return
    render_runs(found)


def _mount_subcommands() -> None:
    from bmupgrade.lab.cli import app as lab_app

    app.add_typer(lab_app, name="lab", help="A two-node rehearsal cluster of real sshd on loopback.")


_mount_subcommands()


def _setup_logging() -> None:
    """Library warnings (e.g. "no answer from bm2 for 15 s") as one prefixed line on stderr;
    Paramiko's own chatter only with --debug."""
    import logging

    logging.basicConfig(level=logging.DEBUG if _debug else logging.WARNING,
                        format="bmupgrade: %(levelname)s: %(message)s")
    if not _debug:
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def main() -> None:
    _setup_logging()
    try:
        app(prog_name="bmupgrade")  # also under `python -m bmupgrade`: help and completion name the command
    except KeyboardInterrupt:
        sys.exit(130)
