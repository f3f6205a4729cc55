"""Issue 14: logs a scheduler or a colleague can use — a no-TTY run with its output in a file,
`plan`/`runs` piped, the output log after a SIGKILL, `status --cluster` exit code, escape
sequences from a node, parallel output attributed to the right node."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from bmupgrade.audit import AuditLog
from bmupgrade.probes import audited_send, probe_vip
from bmupgrade.templating import Redactor
from tests.e2e import PACEMAKER, bmupgrade, journal, run_upgrade

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d "
LONG = "0" * 150

RUNBOOK = """\
version: 1
name: log test
cluster:
  public_ip: 192.0.2.10
  nodes:
    - {name: bm1, host: 127.0.0.1}
    - {name: bm2, host: 127.0.0.2}
preflight:
  - {id: vip, builtin: single_vip_holder}
steps:
  - id: chatty
    title: Print a long line and terminal escapes
    on: all
    parallel: true
    run: "printf '%%s\\\\n' %s; printf 'a\\\\033]0;pwned\\\\007b\\\\033[2Jc\\\\n'; hostname"
""" % LONG


def _cli_to_file(args: list[str], out_path, env_extra=None) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(NO_COLOR="1", **(env_extra or {}))
    with open(out_path, "w") as out:
        return subprocess.run([sys.executable, "-m", "bmupgrade", *args], stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=env, timeout=120).returncode


def test_a_run_logged_to_a_file_has_whole_lines_node_prefixes_and_timestamps(lab, tmp_path):
    rb = tmp_path / "rb.yaml"
    rb.write_text(RUNBOOK)
    state, out = tmp_path / "state", tmp_path / "cron.log"
    rc = _cli_to_file(["run", str(rb), "-i", str(lab.inventory_path), "--yes", "--state-dir", str(state)], out)
    text = out.read_text()
    assert rc == 0, text
    lines = text.splitlines()
    assert all(re.match(STAMP, line) for line in lines), [ln for ln in lines if not re.match(STAMP, ln)]
    for node in ("bm1", "bm2"):
        assert any(re.fullmatch(STAMP + rf"  {node} │ {LONG}", ln) for ln in lines), text  # not cut at 80
        assert any(re.fullmatch(STAMP + rf"  {node} │ {node}", ln) for ln in lines), text  # its own output
    # escape sequences are shown, not obeyed; the output log keeps the raw bytes
    assert "\x1b" not in text and "\x07" not in text
    assert re.search(STAMP + r"  bm1 │ a\\x1b\]0;pwned\\x07b\\x1b\[2Jc$", text, re.M), text
    log = (state / "runs" / f"{journal(state)['run_id']}.output.log").read_text()
    assert "a\x1b]0;pwned\x07b\x1b[2Jc" in log


def test_plan_piped_keeps_every_command_whole(tmp_path):
    rb = tmp_path / "rb.yaml"
    rb.write_text(RUNBOOK)
    out = tmp_path / "plan.txt"
    assert _cli_to_file(["plan", str(rb)], out) == 0
    text = out.read_text()
    assert f"printf '%s\\n' {LONG};" in text
    assert max(map(len, text.splitlines())) < len(LONG) + 200  # sized to its content, not padded


def test_runs_json_and_piped_run_ids_are_whole(lab, tmp_path):
    state = tmp_path / "state"
    run_upgrade(lab, state, env={"BMUPGRADE_CRASH_AT": "done:ha-off"})
    run_id = journal(state)["run_id"]
    r = bmupgrade("runs", "-f", "json", state=state, check_rc=0, env={"COLUMNS": "40"})
    [entry] = json.loads(r.stdout)
    assert entry["run_id"] == run_id and entry["status"] == "running"
    r = bmupgrade("runs", state=state, check_rc=0, env={"COLUMNS": "40"})
    assert run_id in r.stdout


def test_status_cluster_exits_5_while_ha_is_off_on_the_nodes(lab, tmp_path):
    state = tmp_path / "state"
    r = bmupgrade("status", "--cluster", PACEMAKER, "-i", str(lab.inventory_path), state=state)
    assert r.returncode == 0, r.stderr
    run_upgrade(lab, state, env={"BMUPGRADE_CRASH_AT": "done:ha-off"})  # killed with HA off
    r = bmupgrade("status", "--cluster", PACEMAKER, "-i", str(lab.inventory_path), state=state)
    assert r.returncode == 5 and "HA handling OFF" in r.stdout, r.stdout + r.stderr


def test_after_a_sigkill_the_logs_hold_what_was_sent_and_printed(lab, tmp_path):
    state = tmp_path / "state"
    r = run_upgrade(lab, state, env={"BMUPGRADE_CRASH_AT": "done:packages"})
    assert r.returncode == -9
    run_id = journal(state)["run_id"]
    records = [json.loads(line) for line in (state / "runs" / f"{run_id}.audit.jsonl").read_text().splitlines()]
    sent = [e for e in records if e["event"] == "sent" and "apt-get install" in e["command"]]
    assert {e["node"] for e in sent} == {"bm1", "bm2"}
    log = (state / "runs" / f"{run_id}.output.log").read_text()
    assert "apt-get install" in log and "Setting up bm-full" in log


def test_parallel_output_in_the_log_says_whose_it_is(tmp_path):
    log = AuditLog(tmp_path, "r", Redactor([]))
    log.begin("bm1", "packages", "apt-get install")
    log.begin("bm2", "packages", "apt-get install")
    log.output("bm2", "packages", "E: bm2 failed\n")
    log.output("bm1", "packages", "Setting up bm-full on bm1\n")
    text = (tmp_path / "r.output.log").read_text()
    owner = {}  # each output line -> the node named by the header above it
    for block in text.split("\n### ")[1:]:
        header, _, body = block.partition("\n")
        node = re.search(r"(bm\d) \[packages\]", header).group(1)
        owner.update({line: node for line in body.splitlines() if line})
    assert owner == {"E: bm2 failed": "bm2", "Setting up bm-full on bm1": "bm1"}, text


def test_the_audit_log_is_no_symlink_target(tmp_path):
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / "r.audit.jsonl").symlink_to(tmp_path / "elsewhere")
    from bmupgrade.errors import BmError

    with pytest.raises(BmError, match="symbolic link"):
        AuditLog(tmp_path, "r", Redactor([]))
    assert (tmp_path / "elsewhere").read_text() == ""


def test_vip_probes_sent_through_an_audited_sender_are_in_the_audit(tmp_path):
    from bmupgrade.runbook import load_runbook
    from bmupgrade.transport.memory import ANY, MemoryTransport
    from tests.runbook_samples import MINIMAL

    (tmp_path / "rb.yaml").write_text(MINIMAL)
    rb = load_runbook(tmp_path / "rb.yaml")
    t = MemoryTransport()
    t.on(ANY, re.compile(r"^ip -o addr"), lambda c: "inet 192.0.2.10" if c.node == "bm1" else "")
    from bmupgrade.probes import node_addresses

    t.connect(node_addresses(rb))

    class Engine:  # what audited_send needs of the engine: its _send (audit first, then send)
        def __init__(self):
            self.audit = AuditLog(tmp_path, "r", Redactor([]))

        def _send(self, node, cmd, *, timeout, key, capture, quiet):
            self.audit.begin(node, key, cmd)
            r = t.run(node, cmd, timeout=timeout, capture=capture)
            self.audit.record(node=node, key=key, command=cmd, exit_code=r.exit_code)
            return r

    e = Engine()
    assert probe_vip(t, rb, lambda text, n: text.replace("{{ cluster.public_ip }}", "192.0.2.10"),
                     send=audited_send(e)).holders == ["bm1"]
    keys = [json.loads(x)["key"] for x in (tmp_path / "r.audit.jsonl").read_text().splitlines()]
    assert keys.count("vip-probe") == 4  # sent + result, per node


def test_a_run_audits_its_vip_probes(lab, tmp_path):
    state = tmp_path / "state"
    run_upgrade(lab, state, check_rc=0)
    run_id = journal(state)["run_id"]
    text = (state / "runs" / f"{run_id}.audit.jsonl").read_text()
    assert '"key": "vip-probe"' in text
