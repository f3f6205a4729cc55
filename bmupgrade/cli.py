"""The `bmupgrade` command line: a thin typer layer over the library.

No logic lives here: each command parses flags, calls the library, prints, and maps errors to
exit codes (see bmupgrade.errors). Heavy modules are imported inside the commands so that
`bmupgrade --help` and `plan` start fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from bmupgrade.errors import EXIT_FAILED, EXIT_USAGE, BmError, UsageError

app = typer.Typer(
    name="bmupgrade",
    help="Guided, resumable upgrades of a two-node BlueMind HA cluster over SSH.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_debug = "--debug" in sys.argv or os.environ.get("BMUPGRADE_DEBUG") == "1"


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def report_error(exc: BmError) -> None:
    """One line per problem, on stderr, prefixed so it is greppable in a scheduler's log."""
    err = _stderr()
    for line in str(exc).splitlines() or ["error"]:
        err.print(f"[bold red]bmupgrade:[/bold red] {line}", markup=True, highlight=False)


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
            _stderr().print(f"bmupgrade: internal error: {type(exc).__name__}: {exc} "
                            "(run again with --debug for the traceback, and report it)")
            raise typer.Exit(EXIT_FAILED) from None

    return wrapper


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors."),
) -> None:
    """Guided, resumable upgrades of a two-node BlueMind HA cluster over SSH."""


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
    runbooks: List[Path] = typer.Argument(..., help="Runbook file(s) to check."),
    inventory: Optional[Path] = InventoryOpt,
    extra: List[str] = ExtraOpt,
) -> None:
    """Check runbooks; every problem is listed with file:line:column. Exit 2 if any."""
    from bmupgrade.errors import RunbookError

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
def plan(
    runbook: Path = typer.Argument(..., help="The runbook to plan."),
    fmt: PlanFormat = typer.Option(PlanFormat.text, "--format", "-f", help="text | markdown | json"),
    inventory: Optional[Path] = InventoryOpt,
    extra: List[str] = ExtraOpt,
    probe: bool = typer.Option(False, "--probe", help="Ask the nodes (read-only) which one holds the "
                               "public IP now, to show concrete nodes for primary/secondary."),
) -> None:
    """Print every command, on which node, in order. No side effects; no network unless --probe."""
    from bmupgrade.plan import build_plan
    from bmupgrade.planview import render_json, render_markdown, render_text

    rb = load(runbook, inventory, extra)
    holders = None
    if probe:
        from bmupgrade.probes import probe_vip_holders_once

        holders = probe_vip_holders_once(rb)
    p = build_plan(rb, holders=holders)
    if fmt is PlanFormat.json:
        typer.echo(render_json(p))
    elif fmt is PlanFormat.markdown:
        typer.echo(render_markdown(p))
    else:
        from rich.console import Console

        render_text(p, Console(highlight=False))


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


def _mount_subcommands() -> None:
    from bmupgrade.lab.cli import app as lab_app

    app.add_typer(lab_app, name="lab", help="A two-node rehearsal cluster of real sshd on loopback.")


try:
    _mount_subcommands()
except ImportError:  # pragma: no cover - the lab package is optional at build time
    pass


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
