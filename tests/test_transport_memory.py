"""The in-memory transport the engine's unit tests are built on."""

from __future__ import annotations

import re
import threading
import time

import pytest

from bmupgrade.transport.base import CommandResult, NodeAddress, Transport, TransportError
from bmupgrade.transport.memory import ANY, MemoryTransport, Reply, UnexpectedCommand

BM1 = NodeAddress("bm1", "bm1.example.org", user="root")
BM2 = NodeAddress("bm2", "bm2.example.org", user="admin", sudo=True)


@pytest.fixture
def t():
    tr = MemoryTransport(sleep=lambda s: None)
    tr.connect([BM1, BM2])
    yield tr
    tr.close()


def test_is_a_transport():
    tr: Transport = MemoryTransport()  # the Protocol is satisfied structurally
    assert hasattr(tr, "connect") and hasattr(tr, "run") and hasattr(tr, "close")


def test_unmatched_defaults_to_success_and_calls_are_recorded_in_order(t):
    r = t.run("bm1", "uptime")
    assert r.ok and r.exit_code == 0 and r.output_tail == "" and r.node == "bm1"
    t.run("bm2", "hostname")
    t.run("bm1", "id")
    assert t.calls == [("bm1", "uptime"), ("bm2", "hostname"), ("bm1", "id")]
    assert t.calls_on("bm1") == ["uptime", "id"]
    assert t.calls_on("bm2") == ["hostname"]


def test_exact_and_regex_rules_with_output(t):
    t.on("bm1", "dpkg-query -W bm-full", stdout="4.9.2\n")
    t.on(ANY, re.compile(r"^apt-get install"), exit_code=100, stderr="E: broken\n")
    r = t.run("bm1", "dpkg-query -W bm-full", capture=True)
    assert r.stdout == "4.9.2\n" and r.output_tail == "4.9.2\n"
    assert t.run("bm2", "dpkg-query -W bm-full").output_tail == ""  # rule was for bm1 only
    r = t.run("bm2", "apt-get install -y bm-full=4.9.3")
    assert r.exit_code == 100 and not r.ok and "E: broken" in r.output_tail
    assert r.stdout == ""  # capture not asked


def test_latest_rule_wins_and_times_limits_a_rule(t):
    t.on(ANY, "check", exit_code=1)
    t.on("bm1", "check", exit_code=0, times=1)
    assert t.run("bm1", "check").exit_code == 0
    assert t.run("bm1", "check").exit_code == 1  # the override is used up
    assert t.run("bm2", "check").exit_code == 1


def test_node_list_selector(t):
    t.on(["bm1", "bm2"], "x", exit_code=7)
    assert t.run("bm1", "x").exit_code == 7 and t.run("bm2", "x").exit_code == 7


def test_fail_n_times_then_succeed(t):
    t.on("bm1", "flaky", fail_times=2, stdout="ok\n")
    codes = [t.run("bm1", "flaky").exit_code for _ in range(4)]
    assert codes == [1, 1, 0, 0]
    t.on("bm2", "flaky2", fail_times=1, fail=Reply(exit_code=42, stderr="nope"))
    assert [t.run("bm2", "flaky2").exit_code for _ in range(2)] == [42, 0]


def test_reply_sequence_last_repeats(t):
    t.on("bm1", "seq", replies=[Reply(stdout="a"), Reply(stdout="b", exit_code=3)])
    outs = [(r.output_tail, r.exit_code) for r in (t.run("bm1", "seq") for _ in range(3))]
    assert outs == [("a", 0), ("b", 3), ("b", 3)]


def test_dynamic_vip_that_moves_after_a_command(t):
    t.state["vip"] = "bm1"
    t.on(ANY, re.compile(r"^ip -o addr show"),
         lambda call: "inet 192.0.2.10/32\n" if call.transport.state["vip"] == call.node else "")
    t.on("bm1", "pcs resource move vip bm2", lambda call: call.transport.state.update(vip="bm2"))

    def holder():
        return [n for n in ("bm1", "bm2") if t.run(n, "ip -o addr show to 192.0.2.10", capture=True).stdout]

    assert holder() == ["bm1"]
    assert t.run("bm1", "pcs resource move vip bm2").ok
    assert holder() == ["bm2"]


def test_handler_return_types(t):
    t.on("bm1", "int", lambda c: 3)
    t.on("bm1", "bool", lambda c: False)
    t.on("bm1", "reply", lambda c: Reply(stderr="e", exit_code=2))
    t.on("bm1", "result", lambda c: CommandResult("?", "?", 9, 0.1, output_tail="x"))
    t.on("bm1", "attempt", lambda c: c.attempt)
    assert t.run("bm1", "int").exit_code == 3
    assert t.run("bm1", "bool").exit_code == 1
    assert t.run("bm1", "reply").output_tail == "e"
    r = t.run("bm1", "result")
    assert (r.node, r.command, r.exit_code) == ("bm1", "result", 9)
    assert [t.run("bm1", "attempt").exit_code for _ in range(3)] == [1, 2, 3]


def test_strict_mode_fails_on_unmatched():
    tr = MemoryTransport(strict=True)
    tr.connect([BM1])
    tr.on("bm1", "known")
    assert tr.run("bm1", "known").ok
    with pytest.raises(UnexpectedCommand, match="rm -rf"):
        tr.run("bm1", "rm -rf /")
    assert tr.unexpected == [("bm1", "rm -rf /")]
    assert tr.calls == [("bm1", "known"), ("bm1", "rm -rf /")]


def test_configurable_default():
    tr = MemoryTransport(default=Reply(exit_code=127, stderr="not found"))
    tr.connect([BM1])
    assert tr.run("bm1", "whatever").exit_code == 127


def test_streaming_order_and_node_prefix(t):
    t.on("bm1", "mixed", chunks=(("stdout", "a\n"), ("stderr", "b\n"), ("stdout", "c\n")))
    seen = []
    r = t.run("bm1", "mixed", on_output=lambda *a: seen.append(a), capture=True)
    assert seen == [("bm1", "stdout", "a\n"), ("bm1", "stderr", "b\n"), ("bm1", "stdout", "c\n")]
    assert r.output_tail == "a\nb\nc\n" and r.stdout == "a\nc\n"


def test_delay_uses_the_sleep_and_timeout():
    slept = []
    tr = MemoryTransport(sleep=slept.append)
    tr.connect([BM1])
    tr.on("bm1", "slow", delay=5, stdout="done")
    r = tr.run("bm1", "slow", timeout=10)
    assert r.ok and r.duration == 5
    r = tr.run("bm1", "slow", timeout=2)
    assert r.timed_out and r.exit_code is None and r.duration == 2 and "timed out" in r.error
    assert slept == [5, 2]
    tr.on("bm1", "hang", timed_out=True)
    r = tr.run("bm1", "hang", timeout=1)
    assert r.timed_out and r.exit_code is None


def test_real_delay_by_default_is_parallel_across_nodes():
    tr = MemoryTransport()
    tr.connect([BM1, BM2])
    tr.on(ANY, "slow", delay=0.3)
    t0 = time.monotonic()
    threads = [threading.Thread(target=tr.run, args=(n, "slow")) for n in ("bm1", "bm2")]
    [th.start() for th in threads]
    [th.join() for th in threads]
    assert time.monotonic() - t0 < 0.55
    assert sorted(tr.calls) == [("bm1", "slow"), ("bm2", "slow")]


def test_lost_connection_then_reconnect(t):
    t.on("bm2", "systemctl restart bm", connection_lost=True, error="connection reset")
    r = t.run("bm2", "systemctl restart bm")
    assert r.connection_lost and r.exit_code is None and r.sent and "outcome is unknown" in r.error
    assert t.connect_count["bm2"] == 1
    r = t.run("bm2", "true")
    assert r.ok and r.reconnected and t.connect_count["bm2"] == 2
    assert not t.run("bm2", "true").reconnected


def test_lost_and_unreachable_then_back(t):
    t.on("bm1", "reboot", connection_lost=True)
    assert t.run("bm1", "reboot").connection_lost
    t.unreachable("bm1", "connection refused by 10.0.0.1:22")
    r = t.run("bm1", "uptime")
    assert r.connection_lost and not r.sent and "reconnect failed: connection refused" in r.error
    t.reachable("bm1")
    r = t.run("bm1", "uptime")
    assert r.ok and r.reconnected


def test_drop_between_commands(t):
    t.drop("bm1")
    r = t.run("bm1", "x")
    assert r.ok and r.reconnected


def test_unreachable_at_connect():
    tr = MemoryTransport()
    tr.unreachable("bm2", "unknown host key for bm2:22 (ssh-ed25519 SHA256:abc)")
    with pytest.raises(TransportError, match=r"^bm2: unknown host key") as e:
        tr.connect([BM1, BM2])
    assert set(e.value.errors) == {"bm2"}
    assert e.value.node == "bm2"


def test_run_needs_connect_and_not_closed():
    tr = MemoryTransport()
    with pytest.raises(TransportError, match="not connected"):
        tr.run("bm1", "x")
    tr.connect([BM1])
    tr.close()
    tr.close()  # twice is fine
    with pytest.raises(TransportError, match="closed"):
        tr.run("bm1", "x")
    with MemoryTransport() as tr2:
        tr2.connect([BM1])
    assert tr2.closed


def test_sudo_is_recorded_and_password_asked_once_and_redacted():
    asked = []

    def provider(addr):
        asked.append(addr.name)
        return "s3cret"

    tr = MemoryTransport(password_provider=provider)
    tr.connect([BM1, BM2])
    tr.on("bm2", "echo-pw", stdout="pw is s3cret\n")
    r = tr.run("bm2", "echo-pw", capture=True)
    tr.run("bm2", "other")
    tr.run("bm1", "as-root", sudo=True)  # root: no sudo
    assert [c.sudo for c in tr.records] == [True, True, False]
    assert asked == ["bm2"]
    assert "s3cret" not in r.output_tail and "s3cret" not in r.stdout and "********" in r.stdout


def test_records_keep_details_and_results(t):
    t.run("bm1", "probe", timeout=3, capture=True)
    c = t.records[0]
    assert (c.node, c.command, c.timeout, c.capture, c.index) == ("bm1", "probe", 3, True, 0)
    assert c.result is not None and c.result.ok


def test_zero_argument_password_provider_asked_once_for_all_nodes():
    asked = []
    tr = MemoryTransport(password_provider=lambda: asked.append(1) or "pw")
    tr.connect([BM2, NodeAddress("bm3", "h", user="admin", sudo=True)])
    tr.run("bm2", "a")
    tr.run("bm3", "b")
    assert asked == [1]


def test_package_import_stays_light():
    import subprocess
    import sys

    code = ("import sys, bmupgrade.transport, bmupgrade.transport.memory; "
            "print('paramiko' in sys.modules or 'fabric' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
