"""The run's states and the only transitions allowed between them, as data.

Every change of a run's or a step's state goes through `Journal` (which checks it here and
makes it durable before the effect). A transition missing from these tables is a bug in
bmupgrade, never a silent fix-up: `IllegalTransition` stops the run with the HA banner.
"""

from __future__ import annotations

from enum import Enum

from bmupgrade.errors import BmError


class NodeState(str, Enum):
    """The life of one step (or one step's rollback) on one node."""

    PENDING = "pending"
    STARTED = "started"  # journaled before the command is sent
    DONE = "done"
    FAILED = "failed"  # the command answered with a failure: it ran, and did not succeed
    UNKNOWN = "unknown"  # sent, outcome lost (timeout, connection lost, second Ctrl-C, crash)
    SKIPPED = "skipped"
    ROLLED_BACK = "rolled-back"

    def __str__(self) -> str:  # f-strings and json show the plain word
        return self.value


class RunState(str, Enum):
    RUNNING = "running"  # always with a live owner (pid, host, boot id); see journal.owner_alive
    REFUSED = "refused"  # preflight or a lock refused it before any change: nothing to resume
    FAILED = "failed"
    ABORTED = "aborted"
    INTERRUPTED = "interrupted"
    DEADLINE = "deadline"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled-back"
    # Rolled back as far as a point of no return: the window is closed (HA back on), the steps up
    # to it stay. Not "rolled-back": the cluster runs the new version, and with failover back on
    # those steps are never undone (a downgrade with failover on); the back-out is a restore.
    PARTLY_ROLLED_BACK = "partly-rolled-back"

    def __str__(self) -> str:
        return self.value


N, R = NodeState, RunState

# Forward steps. DONE never goes back to STARTED: a done step is never sent again.
STEP_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    # DONE: a manual step acknowledged. ROLLED_BACK (also from SKIPPED): undoing a node the step
    # was sent to before a person set the outcome aside (a re-run that never got out, a failure skipped).
    N.PENDING: frozenset({N.STARTED, N.SKIPPED, N.DONE, N.ROLLED_BACK}),
    N.STARTED: frozenset({N.DONE, N.FAILED, N.UNKNOWN}),
    N.FAILED: frozenset({N.STARTED, N.SKIPPED, N.ROLLED_BACK}),  # STARTED: a retry
    # UNKNOWN is settled by verify or by a person (DONE / PENDING = "it did not run"), or
    # re-sent (STARTED) only for an idempotent step or by a person's explicit choice.
    # FAILED: verify says a non-idempotent step did not achieve its goal (only a chosen retry re-sends it).
    N.UNKNOWN: frozenset({N.DONE, N.PENDING, N.FAILED, N.STARTED, N.SKIPPED, N.ROLLED_BACK}),
    N.DONE: frozenset({N.ROLLED_BACK}),
    N.SKIPPED: frozenset({N.PENDING, N.ROLLED_BACK}),  # PENDING: `resume --rerun STEP` (run it after all)
    N.ROLLED_BACK: frozenset(),
}

# A step's rollback on a node. Rollback commands must be idempotent (documented): an unknown
# or failed rollback may be sent again.
ROLLBACK_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    N.PENDING: frozenset({N.STARTED}),
    N.STARTED: frozenset({N.DONE, N.FAILED, N.UNKNOWN}),
    N.FAILED: frozenset({N.STARTED}),
    N.UNKNOWN: frozenset({N.STARTED}),
    N.DONE: frozenset(),
    N.SKIPPED: frozenset(),
    N.ROLLED_BACK: frozenset(),
}

STOPPED = frozenset({R.FAILED, R.ABORTED, R.INTERRUPTED, R.DEADLINE})  # resumable
RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    # RUNNING -> RUNNING: a resume takes over a run whose owner is gone (SIGKILL, power loss).
    R.RUNNING: frozenset({R.RUNNING, R.REFUSED, R.SUCCEEDED, R.ROLLED_BACK, R.PARTLY_ROLLED_BACK} | STOPPED),
    **{s: frozenset({R.RUNNING}) for s in STOPPED},
    R.SUCCEEDED: frozenset({R.RUNNING}),  # only `bmupgrade rollback` (after its confirmation)
    R.PARTLY_ROLLED_BACK: frozenset(),  # the window is closed: what stays is backed out by a restore
    R.REFUSED: frozenset(),
    R.ROLLED_BACK: frozenset(),
}

RESUMABLE = STOPPED | {R.RUNNING}  # RUNNING only when its owner is gone


class IllegalTransition(BmError):
    """A state change the tables do not allow: an internal error, reported, never ignored."""

    def __init__(self, what: str, old: str, new: str):
        super().__init__(f"internal error: illegal transition of {what} from '{old}' to '{new}' "
                         "(a bmupgrade bug: please report it with the journal)")


def check_node(step_id: str, node: str, old: str, new: str, *, rollback: bool) -> NodeState:
    table = ROLLBACK_TRANSITIONS if rollback else STEP_TRANSITIONS
    old_s, new_s = NodeState(old), NodeState(new)
    if new_s not in table[old_s]:
        raise IllegalTransition(f"{'rollback of ' if rollback else ''}step '{step_id}' on {node}", old, new)
    return new_s


def check_run(old: str, new: str) -> RunState:
    old_s, new_s = RunState(old), RunState(new)
    if new_s not in RUN_TRANSITIONS[old_s]:
        raise IllegalTransition("the run", old, new)
    return new_s


def aggregate(states: list[str]) -> NodeState:
    """A step's state from its nodes' states (the worst one wins)."""
    if not states:
        return N.PENDING
    for s in (N.UNKNOWN, N.STARTED, N.FAILED):
        if s in states:
            return s
    if all(s == N.DONE for s in states):
        return N.DONE
    if all(s in (N.DONE, N.SKIPPED) for s in states):
        return N.SKIPPED if N.SKIPPED in states else N.DONE
    if N.ROLLED_BACK in states:
        return N.ROLLED_BACK  # (partly) undone: a run being rolled back only goes on backwards
    return N.PENDING  # some nodes still to do (e.g. verify said "not done" on one of them)
