"""The engine's vocabulary for the UI: the decisions a prompter returns, what it is shown on a
failure, and the summary of a run. The UI (report, prompts) depends on this module; the
engine never imports the UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Decisions (prompter answers).
RETRY, SKIP, ROLLBACK, ABORT = "retry", "skip", "rollback", "abort"
RERUN, ASSUME_DONE = "rerun", "assume-done"
CONTINUE = "continue"  # after Ctrl-C at a safe point: carry on
WAIT = "wait"  # a command whose outcome is unknown still runs on its node: wait for it


@dataclass
class FailureContext:
    step_id: str
    title: str
    nodes: list[str]  # nodes where the step failed
    summary: str  # one line per node: exit code / reason
    output: str  # the failed command's output tail (redacted)
    ssh_hint: str  # how to reach the node by hand
    rollback_preview: list[str] = field(default_factory=list)


@dataclass
class StepRow:
    id: str
    title: str
    state: str
    nodes: dict[str, str]  # node -> state
    duration: float | None = None
    rollback_state: str | None = None
    can_undo: bool = True


@dataclass
class Summary:
    run_id: str
    status: str
    exit_code: int
    message: str
    rows: list[StepRow] = field(default_factory=list)
    ha_window: float | None = None  # seconds from the HA-off step's start until the HA-on command returned
    ha_off_open: bool = False
    ha_restore_hint: str | None = None
    next_commands: list[str] = field(default_factory=list)
    cannot_undo: list[str] = field(default_factory=list)
    log_paths: list[str] = field(default_factory=list)
