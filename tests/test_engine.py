"""Engine logic on the in-memory transport: order, targets, journal-first, failures, resume."""

import json
import time
import re

import pytest

from bmupgrade.errors import RunbookError, UsageError
from bmupgrade.runbook import load_runbook
from bmupgrade.journal import Journal, RunStore
from bmupgrade.prompts import PolicyPrompter
from bmupgrade.ui.report import ConsoleReporter
from bmupgrade.runner import Session, resume_run, start_run
from bmupgrade.engine import RunOptions
from bmupgrade.transport.memory import ANY, MemoryTransport, Reply
from tests.runbook_samples import MINIMAL

CHANGES = re.compile(r"^(crm_attribute .*--update|apt-get install|bm-cli)")


def sim(holder="bm1"):
    """A tiny simulated cluster: VIP holder(s), bm-full versions, maintenance mode."""
    t = MemoryTransport()
    t.state.update(vip={holder}, version={"bm1": "4.9.2", "bm2": "4.9.2"}, maint="false")
    t.on(ANY, re.compile(r"^ip -o addr show"),
         lambda c: "4: eth0 inet 192.0.2.10/32 scope global" if c.node in c.transport.state["vip"] else "")
    t.on(ANY, re.compile(r"dpkg-query"), lambda c: c.transport.state["version"][c.node])

    def install(c):
        c.transport.state["version"][c.node] = re.search(r"bm-full=(\S+)", c.command).group(1)

    t.on(ANY, re.compile(r"apt-get install"), install)
    t.state["stonith"] = "true"
    t.on(ANY, re.compile(r"^crm_attribute -n stonith-enabled -G -q$"), lambda c: c.transport.state["stonith"])
    t.on(ANY, re.compile(r"maintenance-mode --update (\w+)"),
         lambda c: c.transport.state.update(maint=c.command.rsplit(" ", 1)[1]))
    return t


def changes(t):
    return [(n, c) for n, c in t.calls if CHANGES.search(c)]


@pytest.fixture
def rb_path(tmp_path):
    p = tmp_path / "rb.yaml"
    p.write_text(MINIMAL)
    return p


def session(tmp_path, t, prompter=None, **opts):
    return Session(tmp_path / "state", ConsoleReporter(show_output=False), prompter or PolicyPrompter(),
                   lambda rb: t, RunOptions(**opts))


def journal(tmp_path):
    return RunStore(tmp_path / "state").find(None).data


def test_full_run_order_and_targets(tmp_path, rb_path):
    t = sim("bm1")
    s = start_run(rb_path, session(tmp_path, t))
    assert s.exit_code == 0, s.message
    assert changes(t) == [
        ("bm1", "crm_attribute --type crm_config --name maintenance-mode --update true"),
        ("bm1", "apt-get install -y bm-full=4.9.3"),
        ("bm2", "apt-get install -y bm-full=4.9.3"),
        ("bm1", "bm-cli setup upgrade --password hunter2secret"),
        ("bm1", "crm_attribute --type crm_config --name maintenance-mode --update false"),
    ]
    j = journal(tmp_path)
    assert j["status"] == "succeeded"
    assert {sid: e["state"] for sid, e in j["steps"].items()} == dict.fromkeys(
        ["ha-off", "packages", "post-install", "ha-on"], "done")
    assert j["captured"] == {"from_version": "4.9.2"}
    assert s.ha_window is not None and s.ha_window >= 0 and not s.ha_off_open


def test_post_install_follows_vip(tmp_path, rb_path):
    t = sim("bm2")
    assert start_run(rb_path, session(tmp_path, t)).exit_code == 0
    assert [n for n, c in t.calls if c.startswith("bm-cli")] == ["bm2"]


def test_vip_moves_mid_run_reprobe_follows(tmp_path, rb_path):
    t = sim("bm1")
    t.on("bm2", re.compile(r"apt-get install"), lambda c: (c.transport.state.update(vip={"bm2"}),
                                                            c.transport.state["version"].update(bm2="4.9.3"))[0])
    assert start_run(rb_path, session(tmp_path, t)).exit_code == 0
    assert [n for n, c in t.calls if c.startswith("bm-cli")] == ["bm2"]


@pytest.mark.parametrize("holders", [set(), {"bm1", "bm2"}])
def test_no_or_two_holders_stop_before_post_install(tmp_path, rb_path, holders):
    t = sim("bm1")
    t.on("bm2", re.compile(r"apt-get install"), lambda c: t.state.update(vip=holders))
    s = start_run(rb_path, session(tmp_path, t))
    assert s.exit_code == 5  # stopped with HA off: exit 5 and the restore command
    assert s.ha_off_open and s.ha_restore_hint.startswith("bmupgrade resume ")
    assert "nothing was sent" in s.message.lower() and "bm1:" in s.message and "bm2:" in s.message
    assert not any(c.startswith("bm-cli") for _, c in t.calls)
    j = journal(tmp_path)
    assert j["steps"]["post-install"]["state"] == "pending"
    assert s.ha_off_open and "maintenance-mode --update false" in s.ha_restore_hint


def test_preflight_lists_every_failure_and_changes_nothing(tmp_path, rb_path):
    t = sim("bm1")
    t.state["version"]["bm2"] = "4.9.1"
    t.state["vip"] = {"bm1", "bm2"}
    s = start_run(rb_path, session(tmp_path, t))
    assert s.exit_code == 3
    assert "vip (" in s.message and "ver (" in s.message and "Nothing was changed" in s.message
    assert changes(t) == []


def test_journal_started_before_command_is_sent(tmp_path, rb_path):
    t = sim("bm1")
    seen = {}

    def spy(c):
        data = Journal.load(next((tmp_path / "state" / "runs").glob("*.journal.jsonl"))).data
        seen[c.node] = data["steps"]["post-install"]["nodes"][c.node]["state"]

    t.on(ANY, re.compile(r"^bm-cli"), spy)
    assert start_run(rb_path, session(tmp_path, t)).exit_code == 0
    assert seen == {"bm1": "started"}


def test_retries_then_success(tmp_path, rb_path):
    t = sim("bm1")
    t.on("bm2", re.compile(r"^apt-get install -y bm-full"), fail_times=1,
         fail=Reply(exit_code=100, stderr="E: Could not get lock"))
    text = MINIMAL.replace("    timeout: 45m\n", "    timeout: 45m\n    retries: 1\n    retry_delay: 1s\n")
    rb_path.write_text(text)
    s = start_run(rb_path, session(tmp_path, t))
    assert s.exit_code == 0
    assert journal(tmp_path)["steps"]["packages"]["nodes"]["bm2"]["state"] == "done"
    assert [c for n, c in t.calls if n == "bm2" and c.startswith("apt-get")] == ["apt-get install -y bm-full=4.9.3"] * 2


def test_failure_rollback_policy_reverses_done_steps(tmp_path, rb_path):
    t = sim("bm1")
    t.on("bm2", "apt-get install -y bm-full=4.9.3", exit_code=100, stderr="E: boom")
    s = start_run(rb_path, session(tmp_path, t, PolicyPrompter(on_failure_policy="rollback")))
    assert s.exit_code == 1 and s.status == "rolled-back"
    after = changes(t)[3:]
    assert after[:2] == [("bm1", "apt-get install -y --allow-downgrades bm-full=4.9.2"),
                         ("bm2", "apt-get install -y --allow-downgrades bm-full=4.9.2")] or \
        sorted(after[:2]) == [("bm1", "apt-get install -y --allow-downgrades bm-full=4.9.2"),
                              ("bm2", "apt-get install -y --allow-downgrades bm-full=4.9.2")]
    assert after[2] == ("bm1", "crm_attribute --type crm_config --name maintenance-mode --update false")
    assert t.state["version"] == {"bm1": "4.9.2", "bm2": "4.9.2"} and t.state["maint"] == "false"
    assert not s.ha_off_open
    j = journal(tmp_path)
    assert j["steps"]["ha-off"]["state"] == "rolled-back" and j["rollback"]["ha-off"]["state"] == "done"


def test_abort_then_resume_does_not_repeat_done_steps(tmp_path, rb_path):
    t = sim("bm1")
    t.on("bm2", "apt-get install -y bm-full=4.9.3", exit_code=100, stderr="E: boom")
    s = start_run(rb_path, session(tmp_path, t))
    assert s.exit_code == 5 and s.ha_off_open and s.next_commands[0].startswith("bmupgrade resume")
    assert "--rerun packages" in s.message  # not idempotent: sent again only on the operator's word
    t1 = sim("bm1")
    t1.state = t.state
    s1 = resume_run(session(tmp_path, t1), None)
    assert s1.exit_code == 5 and "--rerun packages" in s1.message and changes(t1) == []
    t2 = sim("bm1")  # a new process: a new transport; the cluster state is the same
    t2.state = t.state  # and the admin fixed the cause (no failing rule on t2)
    s2 = resume_run(session(tmp_path, t2, PolicyPrompter(rerun={"packages"})), None)
    assert s2.exit_code == 0, s2.message
    assert changes(t2) == [
        ("bm2", "apt-get install -y bm-full=4.9.3"),
        ("bm1", "bm-cli setup upgrade --password hunter2secret"),
        ("bm1", "crm_attribute --type crm_config --name maintenance-mode --update false"),
    ]


def test_lost_outcome_without_verify_stops_unattended_and_is_sent_again_only_on_rerun(tmp_path, rb_path):
    t = sim("bm1")
    t.on("bm1", re.compile(r"^bm-cli"), exit_code=None, connection_lost=True)
    s = start_run(rb_path, session(tmp_path, t))
    assert s.exit_code == 5 and "--assume-done post-install" in s.message  # HA still off: 5
    assert journal(tmp_path)["steps"]["post-install"]["nodes"]["bm1"]["state"] == "unknown"
    assert [n for n, c in t.calls if c.startswith("bm-cli")] == ["bm1"]
    t1 = sim("bm1")
    s1 = resume_run(session(tmp_path, t1), None)
    assert s1.exit_code == 5 and not any(c.startswith("bm-cli") for _, c in t1.calls)
    t2 = sim("bm1")
    s2 = resume_run(session(tmp_path, t2, PolicyPrompter(rerun={"post-install"})), None)
    assert s2.exit_code == 0, s2.message
    assert [n for n, c in t2.calls if c.startswith("bm-cli")] == ["bm1"]


def test_deadline_stops_before_a_step_that_cannot_fit(tmp_path, rb_path):
    import time

    t = sim("bm1")
    s = start_run(rb_path, session(tmp_path, t, deadline=time.time() + 20 * 60))  # packages: timeout 45m
    assert s.exit_code == 4 and "HA-off window" in s.message and not s.ha_off_open
    assert "(worst case from the timeouts)" in s.message  # no earlier run: says so, and what to do
    assert "Durations are learnt from earlier runs in this --state-dir" in s.message
    assert not any(c.startswith("apt-get") for _, c in t.calls)
    assert changes(t) == []  # stopped before ha-off: HA was never turned off


def test_deadline_message_says_how_much_of_the_estimate_was_measured(rb_path):
    from bmupgrade.engine.guards import estimate_basis, window_steps

    rb = load_runbook(rb_path)
    steps = window_steps(rb, rb.ha_step("disable"))
    assert [s.id for s in steps] == ["ha-off", "packages", "post-install", "ha-on"]
    assert estimate_basis({s.id: 1.0 for s in steps}, steps) == ("measured in earlier runs", "")
    basis, how = estimate_basis({"ha-off": 1.0, "ha-on": 1.0}, steps)
    assert basis == "2 of 4 steps measured in earlier runs, the rest worst case from the timeouts" and how


def test_unattended_run_needs_acks_before_anything(tmp_path, rb_path):
    rb_path.write_text(MINIMAL.replace("steps:\n", "steps:\n  - {id: backup, manual: Backup taken}\n"))
    t = sim("bm1")
    with pytest.raises(UsageError, match="--ack backup"):
        start_run(rb_path, session(tmp_path, t))
    assert t.calls == []
    assert start_run(rb_path, session(tmp_path, t, PolicyPrompter(acks={"backup"}))).exit_code == 0


def test_secrets_never_in_journal_or_audit(tmp_path, rb_path):
    t = sim("bm1")
    t.on("bm1", re.compile(r"^bm-cli"), stdout="using password hunter2secret\n")
    assert start_run(rb_path, session(tmp_path, t)).exit_code == 0
    for f in (tmp_path / "state" / "runs").iterdir():
        assert "hunter2secret" not in f.read_text(), f
        assert oct(f.stat().st_mode & 0o777) == "0o600"


def test_node_down_at_start_is_preflight_refusal(tmp_path, rb_path):
    t = sim("bm1")
    t.unreachable("bm2", "connection refused")
    s = start_run(rb_path, session(tmp_path, t))
    assert s.exit_code == 3 and "bm2" in s.message and t.calls == []


class _Recorder(PolicyPrompter):
    """Policy answers, but remembers the questions (and can be in --step mode)."""

    def __init__(self, step_mode=False, **kw):
        super().__init__(**kw)
        self.step_mode = step_mode
        self.asked = []

    def confirm_step(self, step_id, title, where, commands):
        self.asked.append(("confirm", step_id))
        return "yes"

    def on_failure(self, ctx):
        self.asked.append(("failure", ctx.summary))
        return super().on_failure(ctx)


def test_step_mode_asks_before_every_step(tmp_path, rb_path):
    pr = _Recorder(step_mode=True)
    assert start_run(rb_path, session(tmp_path, sim("bm1"), pr)).exit_code == 0
    assert pr.asked == [("confirm", s) for s in ("ha-off", "packages", "post-install", "ha-on")]


def test_failure_prompt_says_ha_is_off(tmp_path, rb_path):
    t = sim("bm1")
    t.on("bm2", "apt-get install -y bm-full=4.9.3", exit_code=100, stderr="E: boom")
    pr = _Recorder()
    start_run(rb_path, session(tmp_path, t, pr))
    assert "HA handling is OFF since" in pr.asked[-1][1]


def test_deadline_uses_measured_durations_of_earlier_runs(tmp_path, rb_path):
    import time

    assert start_run(rb_path, session(tmp_path, sim("bm1"))).exit_code == 0  # packages took ~0 s
    t = sim("bm1")
    # 20 minutes left: the 45m timeout would not fit, the measured duration does
    s = start_run(rb_path, session(tmp_path, t, deadline=time.time() + 20 * 60))
    assert s.exit_code == 0, s.message


CONFIRMED = MINIMAL.replace("  - id: post-install\n    on: primary\n",
                            "  - id: post-install\n    on: primary\n    confirm: true\n")


def probes_before_post_install(t):
    calls = [(n, c) for n, c in t.calls]
    cut = next(i for i, (_, c) in enumerate(calls) if c.startswith("bm-cli"))
    since = max(i for i, (_, c) in enumerate(calls[:cut]) if not c.startswith("ip -o addr"))
    return [n for n, c in calls[since + 1:cut]]


def test_vip_moving_while_a_person_sits_on_the_confirmation_is_followed(tmp_path):
    rb = tmp_path / "rb.yaml"
    rb.write_text(CONFIRMED)
    t = sim("bm1")

    class SlowHuman(PolicyPrompter):
        def confirm_step(self, step_id, title, where, commands):
            assert where.startswith("bm1")   # what the person was shown...
            t.state.update(vip={"bm2"})      # ...and the VIP moves while they read it
            return "yes"

    assert start_run(rb, session(tmp_path, t, prompter=SlowHuman(interactive=True))).exit_code == 0
    assert [n for n, c in t.calls if c.startswith("bm-cli")] == ["bm2"]
    assert sorted(probes_before_post_install(t)) == ["bm1", "bm1", "bm2", "bm2"]  # probed, asked, probed again


def test_yes_answers_instantly_so_one_fresh_probe_suffices(tmp_path):
    rb = tmp_path / "rb.yaml"
    rb.write_text(CONFIRMED)
    t = sim("bm1")
    assert start_run(rb, session(tmp_path, t)).exit_code == 0
    assert sorted(probes_before_post_install(t)) == ["bm1", "bm2"]  # both nodes, once, just before
    assert [n for n, c in t.calls if c.startswith("bm-cli")] == ["bm1"]


def test_ha_marker_is_on_the_nodes_before_ha_goes_off_and_the_window_ends_when_ha_is_back_on(tmp_path):
    rb = tmp_path / "rb.yaml"
    rb.write_text(MINIMAL.replace(
        "    ha: enable\n    run: crm_attribute --type crm_config --name maintenance-mode --update false\n",
        "    ha: enable\n    run: crm_attribute --type crm_config --name maintenance-mode --update false\n"
        "    verify: crm_attribute --type crm_config --name maintenance-mode --query --quiet\n"))
    t = sim("bm1")
    at = {}
    t.on(ANY, re.compile(r"^crm_attribute .*--update false$"), lambda c: at.setdefault("ha_on_sent", time.time()) and None)
    t.on(ANY, re.compile(r"^crm_attribute .*--query"), lambda c: at.setdefault("verify_sent", time.time()) and "false")
    s = start_run(rb, session(tmp_path, t))
    assert s.exit_code == 0, s.message
    cmds = [(n, c) for n, c in t.calls]
    off = cmds.index(("bm1", "crm_attribute --type crm_config --name maintenance-mode --update true"))
    marker_writes = [i for i, (n, c) in enumerate(cmds) if "printf" in c and "/ha-off && test -s" in c]
    assert len(marker_writes) == 2 and all(i < off for i in marker_writes)
    marker = cmds[marker_writes[0]][1]
    assert "bmupgrade resume" in marker and "on bm1:" in marker  # the restore hint names the node
    ha = journal(tmp_path)["ha"]
    assert ha["state"] == "on" and ha["on_by"] == "ha-on" and ha["off_by"] == "ha-off"
    assert [c for n, c in cmds if c.startswith("rm -f") and c.endswith("/ha-off")] != []  # removed at the end


# ------------------------------------------------------------------ the STONITH guard (safety rule 7)
NO_FENCING_CHECK = MINIMAL.replace(
    '  - {id: fence, on: primary, run: crm_attribute -n stonith-enabled -G -q, expect: "true", fencing: true}\n', "")


class _Guarded(PolicyPrompter):
    """An 'interactive' operator who answers the STONITH guard with `accept`."""

    def __init__(self, accept):
        super().__init__()
        self.interactive = True
        self.accept = accept
        self.asked = []

    def confirm_no_fencing(self, step_id, title, why):
        self.asked.append((step_id, why))
        return self.accept


def test_unattended_without_a_fencing_check_is_refused_before_anything(tmp_path):
    rb = tmp_path / "rb.yaml"
    rb.write_text(NO_FENCING_CHECK)
    t = sim("bm1")
    with pytest.raises(UsageError, match=r"step 'ha-on' turns automatic failover back on.*--allow-no-stonith"):
        start_run(rb, session(tmp_path, t))
    assert t.calls == []  # not even a read: nothing was sent
    t = sim("bm1")
    s = start_run(rb, session(tmp_path, t, allow_no_stonith=True))
    assert s.exit_code == 0 and changes(t)[-1][1].endswith("--update false")
    accepted = journal(tmp_path)["fencing_accepted"]
    assert accepted["how"] == "--allow-no-stonith" and accepted["step"] == "ha-on" and accepted["user"]


def test_fencing_check_failing_refuses_unless_allowed(tmp_path, rb_path):
    t = sim("bm1")
    t.state["stonith"] = "false"
    s = start_run(rb_path, session(tmp_path, t))
    assert s.exit_code == 3 and "fence" in s.message and "--allow-no-stonith" in s.message and changes(t) == []
    t = sim("bm1")
    t.state["stonith"] = "false"
    s = start_run(rb_path, session(tmp_path / "2", t, allow_no_stonith=True))
    assert s.exit_code == 0, s.message
    assert RunStore(tmp_path / "2" / "state").find(None).data["fencing"] == "disabled"


@pytest.mark.parametrize("accept", [False, True])
def test_interactive_operator_must_accept_failover_without_fencing(tmp_path, accept):
    rb = tmp_path / "rb.yaml"
    rb.write_text(NO_FENCING_CHECK)
    t = sim("bm1")
    pr = _Guarded(accept)
    s = start_run(rb, session(tmp_path, t, pr))
    assert [a[0] for a in pr.asked] == ["ha-on"] and "no preflight check" in pr.asked[0][1]
    j = journal(tmp_path)
    if accept:
        assert s.exit_code == 0 and changes(t)[-1][1].endswith("--update false")
        assert j["fencing_accepted"]["step"] == "ha-on" and j["fencing_accepted"]["how"] == "prompt"
    else:
        assert s.exit_code == 5 and "Stopped before 'ha-on'" in s.message and s.ha_off_open
        assert not [c for n, c in changes(t) if c.endswith("--update false")]
        assert j["steps"]["ha-on"]["state"] == "pending"


def test_a_stack_without_fencing_is_named_as_such_not_told_to_fix_fencing(tmp_path):
    """`fencing: none` (keepalived): the guard says the stack has no fencing, and the stop tells
    the admin to check the link and how to accept the risk, with a command that works as printed."""
    rb = tmp_path / "rb.yaml"
    rb.write_text(NO_FENCING_CHECK.replace("steps:\n", "fencing: none\nsteps:\n", 1))
    pr = _Guarded(False)
    s = start_run(rb, session(tmp_path, sim("bm1"), pr))
    assert "this HA stack has no fencing (the runbook says `fencing: none`)" in pr.asked[0][1]
    assert s.exit_code == 5 and "Check fencing" not in s.message and "Make sure the nodes see each other" in s.message
    printed = re.search(r"accept the risk: `([^`]+)`", s.message).group(1)
    assert printed.startswith("bmupgrade resume") and printed.endswith("--allow-no-stonith")
    t2 = sim("bm1")
    t2.state["maint"] = "true"
    assert resume_run(session(tmp_path, t2, allow_no_stonith=True), None).exit_code == 0
    assert journal(tmp_path)["fencing_accepted"]["how"] == "--allow-no-stonith"


def test_fencing_none_and_a_fencing_check_contradict(tmp_path):
    rb = tmp_path / "rb.yaml"
    rb.write_text(MINIMAL.replace("steps:\n", "fencing: none\nsteps:\n", 1))
    with pytest.raises(RunbookError) as e:
        load_runbook(rb)
    assert any("the runbook says `fencing: none`, so no check can prove fencing" in p for p in e.value.problems)


def test_fencing_proven_asks_nothing(tmp_path, rb_path):
    pr = _Guarded(False)
    assert start_run(rb_path, session(tmp_path, sim("bm1"), pr)).exit_code == 0
    assert pr.asked == [] and journal(tmp_path)["fencing"] == "enabled"


def test_declined_at_the_guard_then_resume_needs_the_flag_unattended(tmp_path):
    rb = tmp_path / "rb.yaml"
    rb.write_text(NO_FENCING_CHECK)
    t = sim("bm1")
    assert start_run(rb, session(tmp_path, t, _Guarded(False))).exit_code == 5  # stopped before ha-on, HA off
    t2 = sim("bm1")
    t2.state["maint"] = "true"
    with pytest.raises(UsageError, match="Nothing was sent"):
        resume_run(session(tmp_path, t2), None)
    assert t2.calls == []
    s = resume_run(session(tmp_path, t2, allow_no_stonith=True), None)
    assert s.exit_code == 0, s.message
    assert [c for n, c in changes(t2)] == ["crm_attribute --type crm_config --name maintenance-mode --update false"]


def test_failed_ha_off_leaves_the_marker_and_says_ha_may_be_off(tmp_path, rb_path):
    t = sim("bm1")
    t.on("bm1", "crm_attribute --type crm_config --name maintenance-mode --update true", exit_code=1,
         stderr="Could not connect to the CIB")
    s = start_run(rb_path, session(tmp_path, t))
    assert s.exit_code == 5 and "HA handling may be off" in s.message and s.ha_off_open
    assert [c for n, c in t.calls if c.startswith("rm -f") and c.endswith("/ha-off")] == []  # marker kept
    assert [c for n, c in t.calls if "/ha-off && test -s" in c] != []


def test_accepting_the_guard_once_covers_a_retry_of_the_same_step(tmp_path):
    rb = tmp_path / "rb.yaml"
    rb.write_text(NO_FENCING_CHECK)
    t = sim("bm1")
    t.on("bm1", "crm_attribute --type crm_config --name maintenance-mode --update false", exit_code=1, times=1)

    class _RetryOnce(_Guarded):
        def on_failure(self, ctx):
            return "retry"

    pr = _RetryOnce(True)
    s = start_run(rb, session(tmp_path, t, pr))
    assert s.exit_code == 0, s.message
    assert [a[0] for a in pr.asked] == ["ha-on"]  # asked once, not again for the retry
    assert len([c for n, c in changes(t) if c.endswith("--update false")]) == 2


# ------------------------------------------------------------------ point of no return (I6) and declines (I7)
PONR = MINIMAL.replace("  - id: post-install\n    on: primary\n",
                       "  - id: post-install\n    on: primary\n    point_of_no_return: true\n")


class _Rollbacker(PolicyPrompter):
    def __init__(self, yes: bool, typed: bool = False):
        super().__init__()
        self.yes, self.typed, self.asked = yes, typed, []

    def confirm_rollback(self, undo, cannot, *, default=True):
        self.asked.append((undo, cannot, default))
        return self.yes

    def confirm_typed(self, message, expected):
        return self.typed


def test_rollback_after_the_point_of_no_return_turns_ha_on_and_never_downgrades(tmp_path):
    from bmupgrade.runner import rollback

    rb = tmp_path / "rb.yaml"
    rb.write_text(PONR)
    t = sim("bm1")
    t.on("bm1", "crm_attribute --type crm_config --name maintenance-mode --update false", exit_code=1, times=1)
    s = start_run(rb, session(tmp_path, t))
    assert s.exit_code == 5 and t.state["maint"] == "true"  # ha-on failed: HA off
    t2 = sim("bm1")
    t2.state = t.state
    pr = _Rollbacker(yes=True)
    s2 = rollback(session(tmp_path, t2, pr), None)
    assert s2.exit_code == 0 and not s2.ha_off_open, s2.message
    assert [c for _, c in changes(t2)] == ["crm_attribute --type crm_config --name maintenance-mode --update false"]
    undo, cannot, default = pr.asked[0]
    assert any("point of no return" in c and "restore from the backup" in c for c in cannot)
    assert not any("allow-downgrades" in u for u in undo) and default is True  # a failed run: default yes
    assert t.state["version"] == {"bm1": "4.9.3", "bm2": "4.9.3"}
    assert journal(tmp_path)["status"] == "partly-rolled-back"  # not "rolled-back": 4.9.3 stays
    # the window is closed: no later rollback downgrades with failover on, forced or not
    for force in (False, True):
        t3 = sim("bm1")
        t3.state = t.state
        with pytest.raises(UsageError, match="rolled back as far as its point of no return and its HA window is "
                                             "closed") as e:
            rollback(session(tmp_path, t3, _Rollbacker(yes=True, typed=True)), None, force=force)
        assert e.value.exit_code == 2 and t3.calls == []
    assert journal(tmp_path)["status"] == "partly-rolled-back"


PONR_CRON = PONR.replace("steps:\n", """steps:
  - id: cron
    on: all
    always_undo: true
    run: systemctl stop cron
    rollback: systemctl start cron
""")


def test_a_forced_rollback_after_failover_went_back_on_never_downgrades(tmp_path):
    """A rollback held by the point of no return turns HA back on, then fails on a later undo
    (cron): the run stays resumable backwards. `rollback --force` (typed) must not then
    downgrade the packages with failover on: the window's steps are out of reach, said so."""
    from bmupgrade.runner import rollback

    rb = tmp_path / "rb.yaml"
    rb.write_text(PONR_CRON)
    t = sim("bm1")
    t.on("bm1", "crm_attribute --type crm_config --name maintenance-mode --update false", exit_code=1, times=1)
    assert start_run(rb, session(tmp_path, t)).exit_code == 5
    t2 = sim("bm1")
    t2.state = t.state
    t2.on("bm2", "systemctl start cron", exit_code=1, times=1)
    s = rollback(session(tmp_path, t2, _Rollbacker(yes=True)), None)
    assert s.exit_code == 1 and t.state["maint"] == "false", s.message  # HA back on, cron failed on bm2
    assert journal(tmp_path)["status"] == "failed"
    assert [c.split()[1] for c in s.next_commands] == ["rollback"]  # it never goes forward again
    t3 = sim("bm1")
    t3.state = t.state
    pr = _Rollbacker(yes=True, typed=True)
    s = rollback(session(tmp_path, t3, pr), None, force=True)
    assert s.exit_code == 0, s.message
    assert [(n, c) for n, c in t3.calls if "cron" in c or "apt-get" in c or "maintenance" in c] == [
        ("bm2", "systemctl start cron")]
    assert t.state["version"] == {"bm1": "4.9.3", "bm2": "4.9.3"}
    undo, cannot, _ = pr.asked[0]
    assert any(c.startswith("packages: the HA window is closed (rolling back 'ha-off' turned failover back on)") for c in cannot), cannot


def test_rollback_of_a_succeeded_run_defaults_to_no_and_declining_changes_nothing(tmp_path, rb_path):
    from bmupgrade.runner import rollback

    assert start_run(rb_path, session(tmp_path, sim("bm1"))).exit_code == 0
    before = journal(tmp_path)
    t2 = sim("bm1")
    pr = _Rollbacker(yes=False)
    s = rollback(session(tmp_path, t2, pr), None)
    assert s.exit_code == 1 and "declined" in s.message
    assert [c.split()[1] for c in s.next_commands] == ["rollback"]  # a succeeded run: nothing to resume
    assert pr.asked[0][2] is False  # default No for a succeeded run
    assert t2.calls == []  # asked before connecting: nothing sent at all
    after = journal(tmp_path)
    assert after["status"] == "succeeded" and after["steps"] == before["steps"]


def test_rollback_force_past_the_point_of_no_return_needs_the_typed_confirmation(tmp_path):
    from bmupgrade.runner import rollback

    rb = tmp_path / "rb.yaml"
    rb.write_text(PONR)
    assert start_run(rb, session(tmp_path, sim("bm1"))).exit_code == 0
    t2 = sim("bm1")
    s = rollback(session(tmp_path, t2, _Rollbacker(yes=True, typed=False)), None, force=True)
    assert s.exit_code == 1 and "Not confirmed" in s.message and t2.calls == []
    t3 = sim("bm1")
    t3.state["version"] = {"bm1": "4.9.3", "bm2": "4.9.3"}
    s = rollback(session(tmp_path, t3, _Rollbacker(yes=True, typed=True)), None, force=True)
    assert s.exit_code == 0, s.message
    assert t3.state["version"] == {"bm1": "4.9.2", "bm2": "4.9.2"}  # forced: downgraded


def test_a_run_followed_by_another_changing_run_is_neither_resumed_nor_rolled_back_unforced(tmp_path):
    """Run A stops at its first step (HA on); the admin starts a new run B, which upgrades the
    cluster. A later `bmupgrade resume` finds A (the only open run): resuming it would send A's
    steps over B's — post-install a second time on the cluster — and rolling it back would apply
    A's rollback commands over B's changes. Both are refused, nothing sent; --force goes on."""
    from bmupgrade.runner import rollback

    rb = tmp_path / "rb.yaml"
    rb.write_text(PONR_CRON)
    t = sim("bm1")
    t.on("bm1", "systemctl stop cron", exit_code=1, times=1)
    a = start_run(rb, session(tmp_path, t))
    assert a.exit_code == 1 and t.state["maint"] == "false", a.message
    tb = sim("bm1")
    tb.state = t.state
    b = start_run(rb, session(tmp_path, tb))
    assert b.exit_code == 0, b.message
    assert len([c for _, c in tb.calls if c.startswith("bm-cli setup upgrade")]) == 1
    for attempt in (lambda s: resume_run(s, None), lambda s: rollback(s, a.run_id)):
        t2 = sim("bm1")
        t2.state = t.state
        with pytest.raises(UsageError, match=f"run {a.run_id} was followed by run {b.run_id} \\(succeeded\\) on "
                                             "the same cluster, which changed it") as e:
            attempt(session(tmp_path, t2, _Rollbacker(yes=True)))
        assert e.value.exit_code == 2 and t2.calls == []
    assert f"`bmupgrade rollback {b.run_id}`" in str(e.value)
    t3 = sim("bm1")
    t3.state = t.state
    s = resume_run(session(tmp_path, t3), a.run_id, force=True)  # the admin's explicit choice: it goes on
    assert s.run_id == a.run_id and s.message.startswith("Step 'cron' failed on bm1"), s.message


def _stopped_with_ha_off(tmp_path, rb_text=None):
    """A run whose packages failed (unattended, abort): stopped with HA off, packages sent."""
    rb = tmp_path / "rb.yaml"
    rb.write_text(rb_text or MINIMAL)
    t = sim("bm1")
    t.on("bm2", re.compile(r"^apt-get install -y bm-full"), exit_code=1, times=1)
    s = start_run(rb, session(tmp_path, t))
    assert s.exit_code == 5 and t.state["maint"] == "true", s.message
    return t.state


def test_rollback_turning_failover_back_on_reads_fencing_again_unattended_refused_without_it(tmp_path):
    """Safety rule 7 holds for rollback too: undoing the HA-off step turns automatic failover back
    on. Fencing was proven at the run's preflight, then turned off during the window: the rollback
    reads it again and, unattended, refuses before anything changes; --allow-no-stonith goes on."""
    from bmupgrade.runner import rollback

    state = _stopped_with_ha_off(tmp_path)
    state["stonith"] = "false"
    t2 = sim("bm1")
    t2.state = state
    s = rollback(session(tmp_path, t2, _Rollbacker(yes=True)), None)
    assert s.exit_code == 5 and s.ha_off_open, s.message  # refused, and HA is still off: 5 says so
    assert "Rollback refused (unattended): undoing 'ha-off' turns automatic failover back on" in s.message
    assert "fencing (STONITH) is NOT enabled" in s.message and "accept the risk). Nothing was changed." in s.message
    assert re.search(r"`bmupgrade rollback \S+`", s.message) and "--allow-no-stonith" in s.message
    assert changes(t2) == [] and "crm_attribute -n stonith-enabled -G -q" in [c for _, c in t2.calls]
    assert journal(tmp_path)["fencing"] == "disabled"
    t3 = sim("bm1")
    t3.state = state
    s = rollback(session(tmp_path, t3, _Rollbacker(yes=True), allow_no_stonith=True), None)
    assert s.exit_code == 0 and not s.ha_off_open, s.message
    assert [c for _, c in changes(t3)][-1] == "crm_attribute --type crm_config --name maintenance-mode --update false"
    accepted = journal(tmp_path)["fencing_accepted"]
    assert accepted["how"] == "--allow-no-stonith" and accepted["step"] == "ha-off"


class _GuardedRollback(_Guarded):
    def __init__(self, accept):
        super().__init__(accept)
        self.titles = []

    def confirm_no_fencing(self, step_id, title, why):
        self.titles.append(title)
        return super().confirm_no_fencing(step_id, title, why)


def test_interactive_rollback_without_fencing_asks_before_failover_goes_back_on(tmp_path):
    """Interactive: the guard asks right before the HA-off step is undone; "no" stops there with
    HA off (exit 5) and a `bmupgrade rollback` that goes on; asked again, "yes" finishes."""
    from bmupgrade.runner import rollback

    state = _stopped_with_ha_off(tmp_path)
    state["stonith"] = "false"
    t2 = sim("bm1")
    t2.state = state
    pr = _GuardedRollback(False)
    s = rollback(session(tmp_path, t2, pr), None)
    assert pr.asked == [("ha-off", "fencing (STONITH) is NOT enabled")]
    assert pr.titles == ["Rolling back 'ha-off'"]
    assert s.exit_code == 5 and s.ha_off_open and "Stopped before 'ha-off'" in s.message
    assert re.search(r"`bmupgrade rollback \S+`", s.message), s.message
    # a run being rolled back is never resumed: the HA restore line offers rollback only
    assert s.ha_restore_hint.startswith(f"bmupgrade rollback {s.run_id}  (by hand on bm1: ")
    assert "resume" not in s.ha_restore_hint
    assert [c for _, c in changes(t2)] == ["apt-get install -y --allow-downgrades bm-full=4.9.2"] * 2 \
        and state["maint"] == "true"  # packages undone on both (bm2's failed: it may have done part); HA still off
    t3 = sim("bm1")
    t3.state = state
    s = rollback(session(tmp_path, t3, _GuardedRollback(True)), None)
    assert s.exit_code == 0 and state["maint"] == "false", s.message
    assert journal(tmp_path)["fencing_accepted"]["how"] == "prompt"


def test_a_skipped_failed_point_of_no_return_still_bars_the_downgrade(tmp_path):
    """Post-install failed (it may have migrated part of the data) and the admin skipped it; the
    run finished. A later rollback must not downgrade the packages under that data: the point of
    no return counts from its first send, whatever was decided after."""
    from bmupgrade.runner import rollback

    class _SkipFailures(PolicyPrompter):
        def on_failure(self, ctx):
            return "skip"

    rb = tmp_path / "rb.yaml"
    rb.write_text(PONR)
    t = sim("bm1")
    t.on("bm1", re.compile(r"^bm-cli setup upgrade"), exit_code=1, times=1)
    assert start_run(rb, session(tmp_path, t, _SkipFailures())).exit_code == 0
    assert journal(tmp_path)["steps"]["post-install"]["state"] == "skipped"
    t2 = sim("bm1")
    t2.state = t.state
    pr = _Rollbacker(yes=True)
    s = rollback(session(tmp_path, t2, pr), None)
    assert not any("allow-downgrades" in c for _, c in t2.calls), s.message
    assert t.state["version"] == {"bm1": "4.9.3", "bm2": "4.9.3"}
    assert s.exit_code == 1 and pr.asked == [] and t2.calls == [], s.message
    assert "Nothing to roll back automatically: everything up to and including 'post-install'" in s.message


def test_rollback_never_turns_ha_off_when_this_run_never_turned_it_off(tmp_path):
    """`run --from ha-on` skips the HA-off step; undoing ha-on alone would leave the cluster with
    HA off and nothing to turn it back on (and print a `rollback` the rolled-back run refuses).
    Found by the model test (I9). Nothing is undone; nothing is sent."""
    from bmupgrade.runner import rollback

    on = "    ha: enable\n    run: crm_attribute --type crm_config --name maintenance-mode --update false\n"
    assert MINIMAL.count(on) == 1
    rb = tmp_path / "rb.yaml"
    rb.write_text(MINIMAL.replace(on, on + "    rollback: crm_attribute --type crm_config --name maintenance-mode "
                                  "--update true\n"))
    t = sim("bm1")
    assert start_run(rb, session(tmp_path, t, from_step="ha-on")).exit_code == 0
    t2 = sim("bm1")
    t2.state = t.state
    s = rollback(session(tmp_path, t2, _Rollbacker(yes=True)), None)
    assert s.exit_code == 1 and "Nothing to roll back automatically" in s.message, s.message
    assert changes(t2) == [] and t.state["maint"] == "false" and not s.ha_off_open
    assert journal(tmp_path)["status"] == "succeeded"


def _post_install_lost_then_unreachable(tmp_path, rb):
    """Post-install sent to bm1, outcome lost, --rerun: bm1 is unreachable, so it is not sent again."""
    t = sim("bm1")

    def lost_then_unreachable(c):
        c.transport.unreachable("bm1")
        return Reply(connection_lost=True)

    t.on("bm1", re.compile(r"^bm-cli setup upgrade"), lost_then_unreachable, times=1)
    s = start_run(rb, session(tmp_path, t, PolicyPrompter(rerun={"post-install"})))
    assert s.exit_code == 5, s.message
    return t, s


def test_post_install_sent_once_never_goes_to_the_new_vip_holder_unseen(tmp_path):
    """Post-install reached bm1 (outcome lost; a re-run was chosen but never got out), then the
    public IP moved to bm2: resume stops instead of migrating the shared data from bm2 too."""
    rb = tmp_path / "rb.yaml"
    rb.write_text(PONR)
    t, _ = _post_install_lost_then_unreachable(tmp_path, rb)
    t2 = sim("bm2")
    t2.state.update(version=t.state["version"], maint=t.state["maint"])
    s = resume_run(session(tmp_path, t2), None)
    assert s.exit_code == 5 and "already ran on bm1, but the target 'primary' is now bm2" in s.message, s.message
    assert not [c for n, c in t2.calls if c.startswith("bm-cli")]


def test_a_rerun_that_never_got_out_is_resumed_plainly_and_still_bars_the_downgrade(tmp_path):
    """Post-install's outcome is lost, the operator's --rerun says send it again, but bm1 cannot
    be reached any more: nothing was sent a second time. The stop prints a plain `resume` (the
    node is pending; `--rerun` would be refused), and a rollback meanwhile keeps the packages
    (post-install was sent once: past the point of no return). Found by the model test."""
    from bmupgrade.runner import rollback

    rb = tmp_path / "rb.yaml"
    rb.write_text(PONR)
    t, s = _post_install_lost_then_unreachable(tmp_path, rb)
    assert f"`bmupgrade resume {s.run_id}` sends it again" in s.message and "--rerun" not in s.message
    node = journal(tmp_path)["steps"]["post-install"]["nodes"]["bm1"]
    assert node["state"] == "pending" and node["attempts"] == 1
    assert len([c for n, c in t.calls if c.startswith("bm-cli")]) == 1
    t2 = sim("bm1")
    t2.state = t.state
    r = rollback(session(tmp_path, t2, _Rollbacker(yes=True)), None)
    assert not any("allow-downgrades" in c for _, c in t2.calls), r.message
    assert t.state["version"] == {"bm1": "4.9.3", "bm2": "4.9.3"}


# ------------------------------------------------------------------ requires: an earlier step must still hold
MASK_STEP = ("  - id: mask\n    on: bm2\n    idempotent: IDEMPOTENT\n    run: systemctl mask --runtime bluemind.target\n"
             "    verify: is-masked\n    rollback: systemctl unmask --runtime bluemind.target\n")
MASKED = MINIMAL.replace("  - id: ha-off\n", MASK_STEP + "  - id: ha-off\n").replace(
    "  - id: packages\n", "  - id: packages\n    requires: [mask]\n")


def masked_sim():
    """bm2 'reboots' (its runtime mask is gone) while ha-off runs on bm1, after the mask."""
    t = sim("bm1")
    t.state["masked"] = False
    t.on(ANY, re.compile(r"^systemctl mask --runtime"), lambda c: c.transport.state.update(masked=True))
    t.on("bm2", re.compile(r"^is-masked$"),
         lambda c: "masked-runtime" if c.transport.state["masked"] else Reply(exit_code=1, stdout="enabled"))
    t.on("bm1", re.compile(r"^crm_attribute .*--update true$"),
         lambda c: c.transport.state.update(maint="true", masked=False))
    return t


@pytest.mark.parametrize("idempotent", ["true", "false"])
def test_a_required_step_undone_by_a_reboot_is_reapplied_or_stops(tmp_path, idempotent):
    """The mask is done, then bm2 'reboots' (the mask is gone) before packages: an idempotent mask
    is re-applied and recorded before any package moves; a non-idempotent one stops the run
    before packages, without sending it a second time."""
    rb = tmp_path / "rb.yaml"
    rb.write_text(MASKED.replace("IDEMPOTENT", idempotent))
    t = masked_sim()
    s = start_run(rb, session(tmp_path, t))
    sent = [(n, c) for n, c in t.calls if c.startswith(("systemctl mask", "apt-get install", "is-masked"))]
    j = journal(tmp_path)
    if idempotent == "true":
        assert s.exit_code == 0, s.message
        first_install = sent.index(("bm1", "apt-get install -y bm-full=4.9.3"))
        assert sent[:first_install] == [("bm2", "systemctl mask --runtime bluemind.target"), ("bm2", "is-masked"),
                                        ("bm2", "is-masked"),  # before packages: no longer holds
                                        ("bm2", "systemctl mask --runtime bluemind.target"), ("bm2", "is-masked")]
        assert [(r["step"], r["nodes"], r["before"]) for r in j["reapplied"]] == [("mask", ["bm2"], "packages")]
    else:
        assert s.exit_code == 5 and "'mask', done earlier, no longer holds on bm2" in s.message
        assert "restore it by hand" in s.message and s.ha_off_open
        assert [c for n, c in sent if c.startswith("systemctl mask")] == ["systemctl mask --runtime bluemind.target"]
        assert not [c for n, c in sent if c.startswith("apt-get")] and j["steps"]["packages"]["state"] == "pending"


def test_a_required_step_that_cannot_be_reapplied_stops_before_the_step(tmp_path):
    rb = tmp_path / "rb.yaml"
    rb.write_text(MASKED.replace("IDEMPOTENT", "true"))
    t = masked_sim()
    sent = []

    def mask(c):
        sent.append(c.node)
        if len(sent) > 1:  # the re-apply: the node refuses
            return Reply(exit_code=1, stderr="Failed to mask unit: Access denied")
        c.transport.state.update(masked=True)

    t.on(ANY, re.compile(r"^systemctl mask --runtime"), mask)
    s = start_run(rb, session(tmp_path, t))
    assert s.exit_code == 5 and s.ha_off_open
    assert "'mask' no longer held on bm2 and re-applying it failed (bm2: exit 1)" in s.message
    assert sent == ["bm2", "bm2"] and not [c for _, c in t.calls if c.startswith("apt-get")]
    assert journal(tmp_path)["steps"]["packages"]["state"] == "pending"


def _io_trace(monkeypatch, t):
    """(event, file or node, detail) in order: journal/audit writes and syncs, and every send."""
    import os as _os

    events, real_write, real_fdatasync, real_fsync = [], _os.write, _os.fdatasync, _os.fsync

    def path(fd):
        try:
            return _os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return "?"

    def write(fd, data):
        p = path(fd)
        if p.endswith(".journal.jsonl"):
            what = re.search(rb'"state":"\w+"', data) or re.search(rb'"r":"\w+"', data)
            events.append(("write", "journal", what.group(0).decode()))
        return real_write(fd, data)

    def sync(real):
        def f(fd):
            p = path(fd)
            kind = next((k for k, end in (("journal", ".journal.jsonl"), ("audit", ".audit.jsonl"),
                                          ("output", ".output.log")) if p.endswith(end)), "other")
            events.append(("sync", kind, ""))
            return real(fd)
        return f

    monkeypatch.setattr(_os, "write", write)
    monkeypatch.setattr(_os, "fdatasync", sync(real_fdatasync))
    monkeypatch.setattr(_os, "fsync", sync(real_fsync))
    run = t.run

    def send(node, command, **kw):
        events.append(("send", node, command))
        return run(node, command, **kw)
    t.run = send
    return events


def test_every_send_follows_a_durable_started_record_and_outcomes_ride_the_next_sync(tmp_path, rb_path,
                                                                                      monkeypatch):
    import bmupgrade.audit

    monkeypatch.setattr(bmupgrade.audit, "SYNC_EVERY", 3600.0)
    t = sim("bm1")
    events = _io_trace(monkeypatch, t)
    s = start_run(rb_path, session(tmp_path, t))
    assert s.exit_code == 0, s.message
    journal_io = [e for e in events if e[1] == "journal"]
    for i, e in enumerate(events):
        if e[0] == "send" and CHANGES.search(e[2]):  # a change: its "started" record is on disk first
            before = [x for x in events[:i] if x[1] == "journal"]
            last_write = max(k for k, x in enumerate(before) if x[0] == "write")
            assert before[last_write][2] == '"state":"started"' and ("sync", "journal", "") in before[last_write:]
    outcomes = [k for k, x in enumerate(journal_io) if x[2] == '"state":"done"']
    assert outcomes and all(journal_io[k + 1][0] == "write" for k in outcomes[:-1])  # not synced on their own
    assert journal_io.count(("sync", "journal", "")) < sum(1 for x in journal_io if x[0] == "write")
    sends = sum(1 for e in events if e[0] == "send")
    # the audit trail: synced at its first command and when closed, not per command
    assert [e for e in events if e[0] == "sync" and e[1] == "audit"] == [("sync", "audit", "")] * 2 and sends > 2


def test_audit_trail_synced_per_command_when_the_interval_has_passed(tmp_path, rb_path, monkeypatch):
    import bmupgrade.audit

    monkeypatch.setattr(bmupgrade.audit, "SYNC_EVERY", 0.0)
    t = sim("bm1")
    events = _io_trace(monkeypatch, t)
    assert start_run(rb_path, session(tmp_path, t)).exit_code == 0
    audit_syncs = [k for k, e in enumerate(events) if e == ("sync", "audit", "")]
    sends = [k for k, e in enumerate(events) if e[0] == "send"]
    assert len(audit_syncs) == len(sends) + 1  # each command's record, then the close
    assert all(any(a < k for a in audit_syncs) for k in sends)


# the post-install requires two earlier steps verified on different nodes
REQUIRES_TWO = MINIMAL.replace(
    "  - id: ha-off\n    on: primary\n    ha: disable\n",
    "  - id: mark-a\n    on: bm1\n    idempotent: true\n    run: touch-a\n    verify: check-a\n"
    "  - id: mark-b\n    on: bm2\n    idempotent: true\n    run: touch-b\n    verify: check-b\n"
    "  - id: ha-off\n    on: primary\n    ha: disable\n").replace(
    "  - id: post-install\n    on: primary\n", "  - id: post-install\n    on: primary\n    requires: [mark-a, mark-b]\n")


def test_requirements_are_checked_at_once_and_before_the_one_vip_probe(tmp_path):
    """Both still-holds checks are out at the same time (each waits for the other: one round,
    not one per required step), and the post-install's VIP probe comes after them, once."""
    import threading

    rb = tmp_path / "rb.yaml"
    rb.write_text(REQUIRES_TWO)
    t = sim("bm1")
    both = threading.Barrier(2, timeout=20)
    seen = {"check-a": 0, "check-b": 0}

    def check(c):
        seen[c.command] += 1
        if seen[c.command] == 2:  # the second time: the post-install's `requires`
            both.wait()  # BrokenBarrierError (exit 70 in the result) if the other never comes
    t.on(ANY, re.compile(r"^check-[ab]$"), check)
    s = start_run(rb, session(tmp_path, t))
    assert s.exit_code == 0, s.message
    assert "reapplied" not in journal(tmp_path) and seen == {"check-a": 2, "check-b": 2}
    calls = [c for _, c in t.calls]
    cut = calls.index("bm-cli setup upgrade --password hunter2secret")
    since = max(i for i, c in enumerate(calls[:cut]) if c.startswith("crm_attribute") or c.startswith("apt-get"))
    before = calls[since + 1:cut]
    assert sorted(before) == ["check-a", "check-b"] + ["ip -o addr show to 192.0.2.10"] * 2
    assert [c.startswith("ip ") for c in before] == [False, False, True, True]  # the probe is the last look


# ------------------------------------------------------------------ the VIP probe carried by the round trip before
# a step with a verify on the passive node, then post-install on the VIP holder
CARRIED = MINIMAL.replace(
    "  - id: post-install\n    on: primary\n",
    "  - id: stop-passive\n    on: secondary\n    idempotent: true\n    run: stop-it\n    verify: check-stopped\n"
    "  - id: post-install\n    on: primary\n")


def _between(calls, first, last):
    """The (node, command) calls after the one `first` and before the one `last`."""
    cmds = [c for _, c in calls]
    return calls[cmds.index(first) + 1:cmds.index(last)]


def test_the_previous_steps_verify_carries_the_vip_probe_of_a_step_on_the_holder(tmp_path):
    """No probe round of its own: each node's probe went out after the passive node's command
    returned, on the passive node after its verify, and it is what chose post-install's node."""
    rb = tmp_path / "rb.yaml"
    rb.write_text(CARRIED)
    t = sim("bm1")
    s = start_run(rb, session(tmp_path, t))
    assert s.exit_code == 0, s.message
    between = _between(t.calls, "stop-it", "bm-cli setup upgrade --password hunter2secret")
    probe = "ip -o addr show to 192.0.2.10"
    assert sorted(between) == [("bm1", probe), ("bm2", "check-stopped"), ("bm2", probe)]
    assert [c for n, c in between if n == "bm2"] == ["check-stopped", probe]  # the probe is the last look
    assert [n for n, c in t.calls if c.startswith("bm-cli")] == ["bm1"]
    sent = [json.loads(line) for line in next((tmp_path / "state" / "runs").glob("*.audit.jsonl")).read_text()
            .splitlines()]
    rounds = {r.get("round") for r in sent if r["event"] == "sent" and r["key"] in ("stop-passive:verify", "vip-probe")
              and r["time"] and sent.index(r) > [x.get("command") for x in sent].index("stop-it")}
    assert len(rounds) == 1 and None not in rounds  # one round trip, recorded as one in the audit trail


@pytest.mark.parametrize("between", ["manual", "command"])
def test_a_carried_probe_is_not_used_after_a_manual_step_or_a_command(tmp_path, between):
    """A manual step can hold the run for minutes; a command can move the VIP: either way the
    step on the holder probes afresh, right before it."""
    extra = ("  - id: look\n    manual: Look at the cluster\n" if between == "manual" else
             "  - id: touch\n    on: bm2\n    idempotent: true\n    run: touch-it\n")
    rb = tmp_path / "rb.yaml"
    rb.write_text(CARRIED.replace("  - id: post-install\n", extra + "  - id: post-install\n"))
    t = sim("bm1")

    class SlowReader(PolicyPrompter):
        def ack_manual(self, step_id, title, text):
            t.state.update(vip={"bm2"})  # the VIP moves while the person reads
            return True

    s = start_run(rb, session(tmp_path, t, prompter=SlowReader(interactive=False)))
    assert s.exit_code == 0, s.message
    if between == "command":
        after = _between(t.calls, "touch-it", "bm-cli setup upgrade --password hunter2secret")
        assert sorted(after) == [("bm1", "ip -o addr show to 192.0.2.10"), ("bm2", "ip -o addr show to 192.0.2.10")]
    else:
        assert [n for n, c in t.calls if c.startswith("bm-cli")] == ["bm2"]  # followed, not the carried bm1


class _Counter:
    sends = 0


def test_a_carried_probe_stands_in_once_only_while_nothing_was_sent_and_it_is_fresh(tmp_path):
    from bmupgrade.engine.carried import FRESH_FOR, KEY, CarriedProbe
    from bmupgrade.transport.base import CommandResult

    now = [100.0]
    sender = _Counter()
    (tmp_path / "rb.yaml").write_text(CARRIED)
    rb = load_runbook(tmp_path / "rb.yaml")
    carried = CarriedProbe(sender, rb, clock=lambda: now[0])
    # the step before each one on primary/secondary (post-install's `requires` would carry its own)
    assert [s.id for s in rb.steps if carried.wanted_after(s)] == ["packages", "stop-passive", "post-install"]
    holds = {"bm1": {KEY: CommandResult("bm1", "ip", 0, 0.0, stdout="inet 192.0.2.10")},
             "bm2": {KEY: CommandResult("bm2", "ip", 0, 0.0, stdout="")}}

    carried.keep(holds)
    assert carried.take().single_holder("192.0.2.10") == "bm1"
    assert carried.take() is None  # once
    carried.keep(holds)
    sender.sends += 1  # anything sent since, to any node
    assert carried.take() is None
    carried.keep(holds)
    now[0] += FRESH_FOR + 0.01  # a person or something slow came between
    assert carried.take() is None
    carried.keep({"bm1": holds["bm1"]})  # a node missing
    assert carried.take() is None
    carried.keep({**holds, "bm2": {KEY: CommandResult("bm2", "ip", None, 0.0, error="connection lost")}})
    assert carried.take() is None  # a lost answer is asked again (the step's own probe may reconnect)
