"""The safety invariants of the stateful model test (I1-I11, see test_model_stateful.py),
checked after every rule against what the model nodes really saw and what the journals say.

A mixin of OperatorStories: it reads the machine's `cluster` (the model), `state` (the state
dir), `story` (every answer and flag, in order), `last` (the last invocation's summary or
error) and `rb_path`, and changes nothing.
"""

from __future__ import annotations

from hypothesis.stateful import invariant

from bmupgrade.errors import BmError
from bmupgrade.journal import Journal, RunStore, started_after
from bmupgrade.outcome import RERUN, RETRY
from bmupgrade.runbook import load_runbook
from tests.model_cluster import HA_ON, PRIMARY_STEPS

NON_IDEMPOTENT = {"packages", "post-install"}


class SafetyInvariants:
    def _journal_view(self):
        paths = RunStore(self.state).paths()
        return [Journal.load(p).data for p in paths] if paths else []

    @invariant()
    def i1_no_change_before_safety(self):
        for s in self.cluster.m.sent:
            assert s.safety_ok, f"I1: {s.command} sent to {s.node} before this invocation's safety checks passed"

    @invariant()
    def i3_primary_steps_on_the_vip_holder(self):
        for s in self.cluster.m.sent:
            if s.step in PRIMARY_STEPS and _forward(s):
                assert s.vip_holders == {s.node}, f"I3: {s.step} sent to {s.node}; VIP on {set(s.vip_holders)}"

    @invariant()
    def i4_ha_off_is_never_silent(self):
        if self.last is None or not self.cluster.ha_off:
            return
        summary = self.last[0]
        markers = [f for node in self.cluster.files.values() for p, f in node.items() if p.endswith("/ha-off")]
        assert markers, "I4: HA is off on the cluster and no node carries the HA-off marker"
        if summary is None or isinstance(summary, BmError):
            return  # crashed (SIGKILL) or refused before anything: the marker speaks
        if summary.run_id in markers[0]:
            assert summary.exit_code in (5, 4, 130), f"I4: HA off but exit {summary.exit_code}: {summary.message}"
            # the printed restore command is one the run accepts: a run being rolled back is never resumed
            run = next(d for d in self._journal_view() if d["run_id"] == summary.run_id)
            verb = "rollback" if run.get("direction") == "rollback" else "resume"
            assert summary.ha_off_open and (summary.ha_restore_hint or "").startswith(f"bmupgrade {verb} "), \
                f"I4: restore hint {summary.ha_restore_hint!r} for a run going {run.get('direction', 'forward')}"

    @invariant()
    def i5_journal_truthful(self):
        runs = {}
        for info in RunStore(self.state).all():
            assert info.status != "damaged", f"I5: journal {info.path} does not parse"
            data = Journal.load(info.path).data
            runs[data["run_id"]] = data
            if data["status"] == "running":
                assert not self._alive(data.get("owner")), "I5: a journal says running; its owner is alive"
        for s in self.cluster.m.sent:  # journal first: whatever reached a node is in its run's journal
            if not s.tag:
                continue
            run_id, step, node, attempt = s.tag.split(".")
            table = "rollback" if step.startswith("rollback:") else "steps"  # a rollback command's tag
            e = runs[run_id][table][step.removeprefix("rollback:")]["nodes"].get(node, {})
            assert e.get("state", "pending") != "pending" or e.get("note"), \
                f"I5: {step} reached {node} but the journal says pending"
            assert e.get("attempts", 0) >= int(attempt), f"I5: attempt {attempt} of {step} on {node} not journaled"

    @invariant()
    def i6_point_of_no_return(self):
        forced = any(k == "typed" and a == "yes" for k, _, a in self.story)
        post_at: dict = {}
        for i, s in enumerate(self.cluster.m.sent):
            if s.step == "post-install":
                post_at.setdefault(s.run_id, i)
            if "--allow-downgrades" in s.command and s.run_id in post_at:
                assert forced, f"I6: {s.command} on {s.node} after post-install of run {s.run_id}"

    @invariant()
    def i8_failover_back_on_only_with_fencing_or_consent(self):
        for s in self.cluster.m.sent:
            if s.command.startswith(HA_ON):
                assert s.fencing_ok, (f"I8: failover turned back on ({s.command} on {s.node}, invocation "
                                      f"{s.invocation}) without fencing seen on or the risk accepted")

    @invariant()
    def i9_printed_next_commands_are_accepted(self):
        """A `bmupgrade resume RUN [--rerun S] [--assume-done S]` or `bmupgrade rollback RUN` that the
        invocation printed (its last message, a refusal's, the HA restore line) is one the CLI
        accepts for that run as it is left (the CLI's own checks, on the journal)."""
        import re

        from bmupgrade.cli import _refuse_unused_answers
        from bmupgrade.errors import UsageError
        from bmupgrade.runner import _refuse_not_resumable

        summary = self.last[0] if self.last else None
        if summary is None:
            return
        text = str(summary) if isinstance(summary, BmError) else summary.message
        commands = re.findall(r"`(bmupgrade (?:resume|rollback) [^`]*)`", text)
        hint = getattr(summary, "ha_restore_hint", None)
        commands += [c.strip() for c in re.findall(r"(bmupgrade (?:resume|rollback) [^ ;()]+(?: --[^ ;()]+)*)",
                                                   hint or "")]
        commands += list(getattr(summary, "next_commands", None) or [])  # the "Next:" lines
        for cmd in commands:
            verb, rid = cmd.split()[1:3]
            flags = dict(re.findall(r"--(rerun|assume-done) (\S+)", cmd))
            try:
                journal = RunStore(self.state).find(rid)
                _refuse_not_resumable(journal, rollback=verb == "rollback")
                if verb == "resume" and flags:
                    _refuse_unused_answers(load_runbook(self.rb_path), journal, rerun=[flags.get("rerun", "")],
                                           assume_done=[flags.get("assume-done", "")])
            except UsageError as exc:
                raise AssertionError(f"I9: printed `{cmd}`, which is refused: {exc}") from None

    @invariant()
    def i10_rolled_back_means_undone(self):
        """A run that says `rolled-back` has undone every step it sent that has rollback commands
        (turning HA back on aside); one held by a point of no return says `partly-rolled-back`."""
        if not any(d["status"] == "rolled-back" for d in self._journal_view()):
            return
        steps = [s for s in load_runbook(self.rb_path).steps if s.rollback and s.ha != "enable"]
        for d in self._journal_view():
            if d["status"] != "rolled-back":
                continue
            for s in steps:
                undone = d["rollback"].get(s.id, {}).get("nodes", {})
                for node, e in d["steps"][s.id]["nodes"].items():
                    if e.get("attempts", 0) or e.get("state", "pending") not in ("pending", "skipped"):
                        assert undone.get(node, {}).get("state") == "done", \
                            f"I10: run {d['run_id']} says rolled-back, but {s.id} on {node} was sent and not undone"

    def overtaken(self) -> set[str]:
        """Runs that a run started after them has overtaken: the later one sent step commands (as
        the model nodes saw them) and is not rolled back. Taken at the start of each invocation."""
        runs = self._journal_view()
        sent_by = {s.run_id for s in self.cluster.m.sent if _forward(s)}
        return {x["run_id"] for x in runs for y in runs
                if y["run_id"] in sent_by and y["status"] != "rolled-back" and started_after(y, x)}

    @invariant()
    def i11_nothing_over_a_later_run(self):
        for s in self.cluster.m.sent:
            if s.invocation not in self.forced and s.run_id in self.overtaken_at.get(s.invocation, ()):
                raise AssertionError(f"I11: {s.command} reached {s.node} for run {s.run_id} (invocation "
                                     f"{s.invocation}), which a later run had overtaken, without --force")

    @invariant()
    def i12_never_again_while_the_first_copy_runs(self):
        """DESIGN rule 3, for steps and rollback commands alike: nothing is sent again to a node
        while an earlier copy (whose outcome was lost) still runs there."""
        for s in self.cluster.m.sent:
            assert not s.overlapped, f"I12: {s.command} sent to {s.node} while an earlier copy still ran there"

    @invariant()
    def i3b_post_install_on_one_node_per_run(self):
        """Post-install migrates the shared data: in a run's life it reaches one node only, even
        when the public IP moves after it was sent (a person must look, not the tool pick the
        new holder)."""
        where: dict = {}
        for s in self.cluster.m.sent:
            if s.step == "post-install" and _forward(s):
                where.setdefault(s.run_id, set()).add(s.node)
        for run_id, nodes in where.items():
            assert len(nodes) == 1, f"I3: post-install of run {run_id} sent to {sorted(nodes)}"

    @invariant()
    def i2_nothing_non_idempotent_twice(self):
        counts: dict = {}
        for s in self.cluster.m.sent:
            if s.step in NON_IDEMPOTENT:
                counts[(s.run_id, s.step, s.node)] = counts.get((s.run_id, s.step, s.node), 0) + 1
        allowed: dict = {}
        for kind, step, answer in self.story:
            if answer in (RETRY, RERUN) and kind in ("failure", "unknown", "flag"):
                allowed[step] = allowed.get(step, 0) + 1
        for (run_id, step, node), n in counts.items():
            assert n <= 1 + allowed.get(step, 0), f"I2: {step} sent {n} times to {node} in run {run_id}"


def _forward(sent) -> bool:
    """A step's own command (journal-tagged run.step.node.attempt), not a probe, a marker or a
    rollback command (tagged run.rollback:step.node.attempt)."""
    return bool(sent.tag) and ".rollback:" not in sent.tag
