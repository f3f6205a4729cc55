"""The safety promises, proven by random operator stories against a model cluster.

Hypothesis plays sequences of what admins and the world do — run, resume (with and without
-e changes and flags), rollback (declined, accepted, forced), every prompt answer, Ctrl-C once
or twice, SIGTERM, SIGHUP, a crash at any journal write (or a power cut: what the journal had
not fdatasync'd is lost), a second concurrent run, a deadline —
interleaved with faults (a command fails, hangs, loses its connection after send, keeps
running; the VIP moves; split brain; no VIP; STONITH off; cluster unhealthy). After every
step it checks the invariants against the model (what the nodes really saw):

I1 no change is sent in an invocation before that invocation's safety checks passed;
I2 no command of a non-idempotent step is sent twice on a node in a run's life unless a
   person (or the operator's flag) explicitly chose to run it again;
I3 a `primary` step runs only on the node that held the VIP when it was sent;
I4 whenever an invocation ends with HA off, the exit code is 5 (or 4/130), the summary names
   the restore command and the marker is on the nodes;
I5 every journal parses, agrees with what was sent, and never says `running` without a live
   owner (a crashed run shows as "owner gone");
I6 nothing before a point of no return is undone after it without --force;
I7 a declined prompt changes nothing;
I8 automatic failover goes back on (the HA-on step, or rolling back the HA-off step) only after
   this invocation saw fencing enabled, or the operator accepted the split-brain risk (the
   prompt, or --allow-no-stonith);
I9 a `bmupgrade resume RUN` or `bmupgrade rollback RUN` that an invocation printed is accepted by
   that run as it is left;
I10 a run that says `rolled-back` has undone every step it sent (a point of no return that held
   the rollback says `partly-rolled-back`);
I11 no run is resumed or rolled back (nothing reaches a node for it) once a run started after
   it sent step commands and was not rolled back, unless that invocation was given --force.

The invariants live in tests/model_invariants.py (a mixin), the model cluster in
tests/model_cluster.py. BMUPGRADE_MODEL_EXAMPLES sets the number of examples (CI: the default; deeper: 2000+).
"""

from __future__ import annotations

import os
import signal

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from bmupgrade import journal as journal_mod
from bmupgrade.engine import RunOptions
from bmupgrade.errors import BmError
from bmupgrade.journal import Journal, LocalLock, RunStore
from bmupgrade.outcome import ABORT, ASSUME_DONE, CONTINUE, RERUN, RETRY, ROLLBACK, SKIP, WAIT
from bmupgrade.prompts import PolicyPrompter
from bmupgrade.runner import Session, cluster_id, resume_run, rollback, start_run
from bmupgrade.runbook import load_runbook
from tests.model_cluster import RUNBOOK, Fault, ModelCluster
from tests.model_invariants import SafetyInvariants

EXAMPLES = int(os.environ.get("BMUPGRADE_MODEL_EXAMPLES", "800"))


def _event(text: str) -> None:
    from hypothesis import event
    from hypothesis.errors import InvalidArgument

    try:
        event(text)
    except InvalidArgument:  # replaying a story outside hypothesis
        pass


def _join_node_threads() -> None:
    """The invocation's process ends: its node threads finish their commands and are gone."""
    from bmupgrade.probes import drain_node_pool

    drain_node_pool()


class Crash(BaseException):
    """A SIGKILL: nothing after it runs in that process (no journal write, no unlock)."""


class Quiet:
    """A reporter that keeps nothing (the model checks behaviour, not text)."""

    def __getattr__(self, name):
        return lambda *a, **k: None


class Scripted:
    """An interactive operator whose answers were drawn by hypothesis; records what it answered."""

    interactive = True
    step_mode = False

    def __init__(self, answers: list[str], story: list, on_risk_accepted=lambda: None):
        self.answers = list(answers)
        self.story = story
        self.on_risk_accepted = on_risk_accepted

    def _next(self, kind: str, allowed: tuple[str, ...], step: str = "-") -> str:
        if self.answers and self.answers[0] == "ctrl-c":  # Ctrl-C inside the prompt (questionary)
            self.answers.pop(0)
            self.story.append((kind, step, "ctrl-c"))
            raise KeyboardInterrupt
        a = next((x for x in self.answers if x in allowed), allowed[-1])
        if a in self.answers:
            self.answers.remove(a)
        self.story.append((kind, step, a))
        return a

    def ack_manual(self, step_id, title, text):
        return self._next("ack", ("yes", "no"), step_id) == "yes"

    def confirm_step(self, step_id, title, where, commands):
        return self._next("confirm", ("yes", "skip", ABORT), step_id)

    def on_failure(self, ctx):
        return self._next("failure", (RETRY, SKIP, ROLLBACK, ABORT), ctx.step_id)

    def unknown_outcome(self, step_id, title, nodes, commands):
        return self._next("unknown", (RERUN, ASSUME_DONE, ABORT), step_id)

    def confirm_rollback(self, undo, cannot, *, default=True):
        return self._next("rollback", ("yes", "no")) == "yes"

    def confirm_no_fencing(self, step_id, title, why):
        accepted = self._next("no-fencing", ("yes", "no"), step_id) == "yes"
        if accepted:
            self.on_risk_accepted()
        return accepted

    def on_interrupt(self, step_id, title, completed, undo):
        return self._next("interrupt", (CONTINUE, ROLLBACK, ABORT), step_id)

    def still_running(self, step_id, title, text):
        return self._next("still-running", (WAIT, ABORT), step_id)

    def confirm_typed(self, message, expected):
        return self._next("typed", ("yes", "no")) == "yes"


class Recording(PolicyPrompter):
    """The unattended policy, recording the answers it gives (its flags are the operator's word)."""

    def __init__(self, story: list, **kw):
        super().__init__(**kw)
        self.story = story

    def unknown_outcome(self, step_id, title, nodes, commands):
        a = super().unknown_outcome(step_id, title, nodes, commands)
        self.story.append(("unknown", step_id, a))
        return a

    def on_failure(self, ctx):
        a = super().on_failure(ctx)
        self.story.append(("failure", ctx.step_id, a))
        return a


ANSWERS = st.lists(st.sampled_from(["yes", "no", "skip", ABORT, RETRY, SKIP, ROLLBACK, RERUN, ASSUME_DONE,
                                    CONTINUE, WAIT, "ctrl-c"]), max_size=6)
FAULT_STEPS = st.sampled_from(["ha-off", "packages", "post-install", "ha-on", "rollback"])
FAULT_KINDS = st.sampled_from(["fail", "lost-after-send", "lost-still-running", "lost-unreachable", "timeout"])
INTERRUPTS = st.sampled_from(["SIGINT", "SIGINT*2", "SIGTERM", "SIGHUP"])
NO_STONITH = st.sampled_from([False, False, True])  # --allow-no-stonith: the operator's word
BREAK_LOCK = st.sampled_from([False, False, False, True])  # run --break-lock
WHICH_RUN = st.sampled_from([False, False, True])  # True: name the oldest (open) run, not the latest
FROM = st.sampled_from([None, None, None, None, "packages", "post-install", "ha-on"])  # run --from STEP
# (--on-failure, --on-deadline): the unattended policies a maintenance window is scheduled with
POLICIES = st.sampled_from([("abort", "stop"), ("abort", "stop"), ("rollback", "stop"), ("abort", "rollback"),
                            ("rollback", "rollback")])


@settings(max_examples=EXAMPLES, stateful_step_count=12, deadline=None,
          suppress_health_check=list(HealthCheck))
class OperatorStories(SafetyInvariants, RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        import tempfile
        from pathlib import Path

        # tmpfs when there is one: the model checks decisions, not the disk's fsync latency
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.tmp = Path(tempfile.mkdtemp(prefix="bmmodel-", dir=shm))
        self.rb_path = self.tmp / "rb.yaml"
        self.rb_path.write_text(RUNBOOK)
        self.state = self.tmp / "state"
        self.cluster = ModelCluster()
        self.crashed: set[str] = set()  # owner tokens of invocations that were "SIGKILLed"
        self.story: list = []  # prompter answers, for I2/I7
        self.last = None  # (summary or None, invocation info)
        self.ran = False
        self.pending_interrupt: tuple[str, int] | None = None
        self.pending_crash: int | None = None
        self.pending_power_loss: int | None = None  # a power cut right after the Nth outcome record
        self.durable: dict[str, int] = {}  # journal path -> bytes on disk for sure (fdatasync'd)
        self.power_cut: dict[str, int] | None = None  # the journals on disk when the power went
        self._token = 0
        self.forced: set[int] = set()  # invocations given --force (resume, rollback)
        self.overtaken_at: dict[int, set[str]] = {}  # per invocation: runs a later run had overtaken

    def teardown(self):
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ plumbing
    def _session(self, prompter, **opts) -> Session:
        t = self.cluster.transport()
        return Session(self.state, Quiet(), prompter, lambda rb: t, RunOptions(**opts), sleep=lambda s: None)

    def _invoke(self, fn, mode: str, allow_no_stonith: bool = False):
        m = self.cluster.m
        m.invocation += 1
        m.mode, m.safety = mode, {"fencing-risk-accepted": allow_no_stonith}
        self.overtaken_at[m.invocation] = self.overtaken()
        self._token += 1
        token = f"tok{self._token}"
        self._arm(token)
        real_owner = journal_mod.owner_record
        journal_mod.owner_record = lambda: {**real_owner(), "start": token}
        before = len(self.story)
        self.power_cut = None
        real_fdatasync, summary = os.fdatasync, None
        os.fdatasync = self._tracking_sync(real_fdatasync)
        try:
            summary = fn()
        except Crash:
            self.crashed.add(token)
            summary = None
            if self.power_cut is not None:
                self._lose_unsynced(self.power_cut)
        except BmError as exc:  # refused before anything (exit 2/3)
            summary = exc
        finally:
            os.fdatasync = real_fdatasync
            if summary is not None:  # a process that ends has synced its journal (Journal.close)
                self.durable = {str(p): p.stat().st_size for p in RunStore(self.state).paths()}
            journal_mod.owner_record = real_owner
            m.hook = None
            Journal.after_write_hook = None
            _join_node_threads()  # a hard stop leaves workers finishing their command (as on a real node)
        self.last = (summary, m.invocation, self.story[before:])
        code = "crash" if summary is None else getattr(summary, "exit_code", "?")
        _event(f"{mode} exit {code}")
        return summary

    def _arm(self, token: str) -> None:
        """Signals and crashes fire from inside the next invocation, at a drawn point."""
        m = self.cluster.m
        interrupt, self.pending_interrupt = self.pending_interrupt, None
        crash_at, self.pending_crash = self.pending_crash, None
        power_at, self.pending_power_loss = self.pending_power_loss, None
        seen = {"cmd": 0, "writes": 0, "outcomes": 0}

        armed = m.invocation

        def hook(node, command):
            if m.invocation != armed:
                return
            if self.power_cut is not None:  # the power went (in another node's thread): nothing
                raise Crash()  # more leaves this machine; in a real cut its threads die together
            seen["cmd"] += 1
            if interrupt and seen["cmd"] == interrupt[1]:
                sig = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGHUP": signal.SIGHUP}[
                    interrupt[0].split("*")[0]]
                os.kill(os.getpid(), sig)
                if interrupt[0].endswith("*2"):
                    os.kill(os.getpid(), sig)

        m.hook = hook

        def on_write(rec):
            seen["writes"] += 1
            if rec.get("r") == "node" and rec.get("f", {}).get("note") == "--rerun":  # resume --rerun STEP used
                self.story.append(("flag", rec["step"], RERUN))
            if crash_at is not None and seen["writes"] == crash_at:
                raise Crash()
            if rec.get("r") == "node" and rec.get("state") in ("done", "failed", "unknown"):  # written lazily
                seen["outcomes"] += 1
                if seen["outcomes"] == power_at:  # now, before the `finally` blocks a SIGKILL would not run
                    self.power_cut = dict(self.durable)
                    raise Crash()

        Journal.after_write_hook = on_write

    def _tracking_sync(self, real):
        def fdatasync(fd):
            real(fd)
            path = os.readlink(f"/proc/self/fd/{fd}")
            if path.endswith(".journal.jsonl"):  # node threads sync too: the furthest sync wins
                self.durable[path] = max(self.durable.get(path, 0), os.fstat(fd).st_size)
        return fdatasync

    def _lose_unsynced(self, on_disk: dict[str, int]) -> None:
        """A power cut: what the journals got since their last fdatasync is gone (the nodes keep
        whatever the commands did)."""
        self.durable = on_disk
        for p in RunStore(self.state).paths():
            size = on_disk.get(str(p))
            if size is not None and p.stat().st_size > size:
                _event("power cut: the journal lost unsynced records")
                os.truncate(p, size)

    def _alive(self, owner) -> bool | None:
        return owner is not None and owner.get("start") not in self.crashed

    # ------------------------------------------------------------------ operator actions
    def _operator(self, answers, unattended, on_failure_policy="abort", **flags):
        if unattended:
            return Recording(self.story, on_failure_policy=on_failure_policy, **flags)
        return Scripted(answers, self.story, lambda: self.cluster.m.safety.update({"fencing-risk-accepted": True}))

    @rule(answers=ANSWERS, unattended=st.booleans(), deadline=st.sampled_from([None, None, 60, 10**6]),
          allow_no_stonith=NO_STONITH, policy=POLICIES, from_step=FROM, break_lock=BREAK_LOCK)
    def run(self, answers, unattended, deadline, allow_no_stonith, policy=("abort", "stop"), from_step=None,
            break_lock=False):
        import time

        prompter = self._operator(answers, unattended, on_failure_policy=policy[0])
        opts = {"deadline": time.time() + deadline} if deadline else {}
        if from_step:
            opts["from_step"] = from_step
        if break_lock:
            opts["break_lock"] = True
        self._invoke(lambda: start_run(self.rb_path, self._session(
            prompter, allow_no_stonith=allow_no_stonith, on_failure=policy[0], on_deadline=policy[1], **opts)),
            "run", allow_no_stonith)
        self.ran = True

    @precondition(lambda self: self.ran)
    @rule(answers=ANSWERS, unattended=st.booleans(), rerun=st.booleans(), assume=st.booleans(),
          change=st.sampled_from([None, None, "target_version=9.9.9", "targt_version=1"]), force=st.booleans(),
          allow_no_stonith=NO_STONITH, policy=POLICIES, oldest=WHICH_RUN)
    def resume(self, answers, unattended, rerun, assume, change, force, allow_no_stonith=False,
               policy=("abort", "stop"), oldest=False):
        flags = {"rerun": {"post-install"} if rerun else set(), "assume_done": {"post-install"} if assume else set()}
        prompter = self._operator(answers, unattended, on_failure_policy=policy[0], **flags)
        overrides = dict([change.split("=")]) if change else {}
        open_runs = [d for d in self._journal_view()
                     if d["status"] not in ("succeeded", "refused", "rolled-back", "partly-rolled-back")]
        target = open_runs[0] if oldest and open_runs else open_runs[-1] if open_runs else None
        differs = target is not None and any(target["vars"].get(k) != v for k, v in overrides.items())
        run_id = target["run_id"] if oldest and target else None  # `resume RUN` of an older open run
        self._invoke(lambda: resume_run(self._session(prompter, rerun=set(flags["rerun"]),
                                                      allow_no_stonith=allow_no_stonith, on_failure=policy[0],
                                                      on_deadline=policy[1]), run_id, force=force,
                                        overrides=overrides), "resume", allow_no_stonith)
        if force:
            self.forced.add(self.cluster.m.invocation)
        if (differs and not force) or (change or "").startswith("targt_"):
            assert isinstance(self.last[0], BmError) and self.last[0].exit_code == 2, \
                "I5: a resume with other variables (or an unknown -e) must be refused without --force"

    @precondition(lambda self: self.ran)
    @rule(answers=ANSWERS, unattended=st.booleans(), rerun=st.booleans())
    def resume_as_is(self, answers, unattended, rerun):
        """The common case: resume the same run, nothing changed (a second weight on resume)."""
        self.resume(answers, unattended, rerun, False, None, False)

    @precondition(lambda self: self.ran)
    @rule(answers=ANSWERS, unattended=st.booleans(), force=st.booleans(), allow_no_stonith=NO_STONITH,
          oldest=WHICH_RUN)
    def roll_back(self, answers, unattended, force, allow_no_stonith, oldest):
        prompter = self._operator(answers, unattended)
        before = self._journal_view()
        run_id = before[0]["run_id"] if oldest and before else None  # `rollback RUN` of the first run
        s = self._invoke(lambda: rollback(self._session(prompter, allow_no_stonith=allow_no_stonith), run_id,
                                          force=force), "rollback", allow_no_stonith)
        if force:
            self.forced.add(self.cluster.m.invocation)
        declined = [a for k, _, a in self.last[2] if k in ("rollback", "typed") and a == "no"]
        if declined and s is not None and not isinstance(s, BmError):
            assert self._journal_view() == before, "I7: a declined rollback changed the journal"

    @precondition(lambda self: self.ran)
    @rule()
    def concurrent_run_is_refused(self):
        rb = load_runbook(self.rb_path)
        held = LocalLock(self.state, cluster_id(rb))
        held.acquire({"run_id": "other"})
        try:
            count = len(RunStore(self.state).paths())
            s = self._invoke(lambda: start_run(self.rb_path, self._session(Recording(self.story))), "run")
            assert isinstance(s, BmError) and s.exit_code == 3
            assert len(RunStore(self.state).paths()) == count, "I5: a refused run left a journal"
        finally:
            held.release()

    # ------------------------------------------------------------------ the world
    @rule(step=FAULT_STEPS, kind=FAULT_KINDS, node=st.sampled_from([None, "bm1", "bm2"]))
    def fault(self, step, kind, node):
        self.cluster.m.faults.append(Fault(step, kind, node))

    @rule()
    def vip_moves_during_packages(self):
        self.cluster.m.faults.append(Fault("packages", "vip-moves"))

    @rule()
    def maintenance_cleared_during_packages(self):
        """Someone leaves maintenance mode by hand while the packages install (`requires`)."""
        self.cluster.m.faults.append(Fault("packages", "maint-cleared"))

    @rule(what=st.sampled_from(["split-brain", "no-vip", "vip-to-bm2", "vip-to-bm1", "stonith-off",
                                "unhealthy", "maint-off-by-hand", "repair"]))
    def cluster_changes(self, what):
        m = self.cluster.m
        if what == "split-brain":
            m.vip = {"bm1", "bm2"}
        elif what == "no-vip":
            m.vip = set()
        elif what.startswith("vip-to-"):
            m.vip = {what[-3:]}
        elif what == "stonith-off":
            m.stonith = False
        elif what == "unhealthy":
            m.healthy = False
        elif what == "maint-off-by-hand":  # someone leaves maintenance mode behind the run's back
            m.maint = False
        else:
            m.vip, m.stonith, m.healthy, m.faults = {"bm1"}, True, True, []
            self.cluster.finish_running()

    @rule()
    def time_passes(self):
        """Commands left running on the nodes (after a lost connection) end."""
        self.cluster.finish_running()

    @rule(kind=INTERRUPTS, at=st.integers(1, 40))
    def interrupt_next(self, kind, at):
        self.pending_interrupt = (kind, at)

    @rule(at=st.integers(1, 60))
    def crash_next(self, at):
        self.pending_crash = at

    @rule(at=st.integers(1, 6))
    def power_loss_next(self, at):
        """The power goes right after the at-th outcome record of the next invocation: the
        journal loses what it had not fdatasync'd (outcomes ride the next sync). The run must
        still resume without sending a step twice (I2) and say the truth (I5)."""
        self.pending_power_loss = at


test_operator_stories = OperatorStories.TestCase


def test_a_lost_rollback_still_running_is_not_sent_again():
    """One story the random search reaches rarely: the packages rollback loses its connection on
    bm2 while it goes on running there; a second `rollback` must wait for it (I12), then finish."""
    m = OperatorStories()
    try:
        def invariants():
            for name in sorted(n for n in dir(m) if n[:1] == "i" and n[1:2].isdigit()):
                getattr(m, name)()
        m.fault(kind="lost-still-running", node="bm2", step="rollback")
        m.fault(kind="fail", node="bm1", step="packages")
        m.run(answers=[], unattended=True, deadline=None, allow_no_stonith=False, policy=("rollback", "stop"))
        invariants()
        m.roll_back(answers=[], unattended=True, force=False, allow_no_stonith=False, oldest=False)
        invariants()
        assert m.last[0].status == "failed" and "bm2: still running" in m.last[0].message
        m.time_passes()
        m.roll_back(answers=[], unattended=True, force=False, allow_no_stonith=False, oldest=False)
        invariants()
        assert m.last[0].status == "rolled-back", m.last[0].message
    finally:
        m.teardown()
