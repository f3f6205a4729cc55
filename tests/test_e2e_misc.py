"""Resume's view of what changed, runbook-change refusal, status/runs, plan --probe (on the lab)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from tests.e2e import PACEMAKER, argv, bmupgrade, count, journal, one_line, run_upgrade

pytestmark = pytest.mark.lab


def test_resume_shows_what_changed_while_stopped(lab, tmp_path):
    state = tmp_path / "s"
    r = run_upgrade(lab, state, env={"BMUPGRADE_CRASH_AT": "done:packages"})
    assert r.returncode == -signal.SIGKILL
    lab.failover("bm2")  # the VIP moved while nobody was watching
    r = bmupgrade("resume", "--yes", state=state)
    # every step ran; the postflight says BlueMind no longer runs where it ran before the window
    assert r.returncode == 1 and "Postflight failed: resources-did-not-move" in " ".join(r.stdout.split())
    assert "Changed since the run stopped" in r.stdout
    assert "vip_holders: ['bm1'] → ['bm2']" in r.stdout
    j = journal(state)
    assert j["resumes"][0]["mode"] == "resume" and j["facts"][0]["at"] == "start"
    assert "vip_holders: ['bm1'] → ['bm2']" in j["changes"][0]["changes"]
    # the SIGKILL left no "stop" facts; the resume, stopped by its postflight, did
    assert [f["at"] for f in j["facts"]] == ["start", "resume", "stop"]
    # post-install followed the VIP to its new holder
    assert [e for e in lab.node("bm2").calls("bm-cli setup")] and not lab.node("bm1").calls("bm-cli setup")


def test_resume_refuses_a_changed_runbook_unless_forced(lab, tmp_path):
    rb = tmp_path / "rb.yaml"
    rb.write_text(open(PACEMAKER).read())
    state = tmp_path / "s"
    r = run_upgrade(lab, state, runbook=str(rb), env={"BMUPGRADE_CRASH_AT": "done:ha-off"})
    assert r.returncode == -signal.SIGKILL
    rb.write_text(rb.read_text().replace("timeout: 45m", "timeout: 50m"))
    r = bmupgrade("resume", "--yes", state=state)
    err = one_line(r.stderr)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"would not be the same run: {rb} (or its inventory) changed since the run started" in err
    assert "add --force" in err and "Nothing was changed" in err
    assert not lab.node("bm1").calls("apt-get install -y !--download-only")  # nothing sent
    bmupgrade("resume", "--yes", "--force", state=state, check_rc=0)
    j = journal(state)
    assert j["forced"][0]["changes"] == [f"{rb} (or its inventory) changed since the run started"]
    assert j["status"] == "succeeded" and count(lab, "bm1", "bm-cli setup upgrade") == 1


def test_status_and_runs(lab, tmp_path):
    state = tmp_path / "s"
    run_upgrade(lab, state, check_rc=0)
    rid = journal(state)["run_id"]
    r = bmupgrade("status", state=state, check_rc=0)
    assert rid in r.stdout and "succeeded" in r.stdout and "post-install" in r.stdout
    data = json.loads(bmupgrade("status", rid, "--format", "json", state=state, check_rc=0).stdout)
    assert data["steps"]["post-install"]["nodes"]["bm1"]["state"] == "done"
    assert rid in bmupgrade("runs", state=state, check_rc=0).stdout
    assert bmupgrade("status", "nope", state=state).returncode == 2


def test_plan_probe_shows_concrete_nodes_read_only(lab, tmp_path):
    lab.failover("bm2")
    r = subprocess.run([sys.executable, "-m", "bmupgrade", "plan", PACEMAKER, "-i", str(lab.inventory_path),
                        "--probe", "-f", "json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    post = next(a for a in json.loads(r.stdout)["actions"] if a["id"] == "post-install")
    assert list(post["nodes"]) == ["bm2"]
    assert not any("--update" in " ".join(e["argv"]) for n in ("bm1", "bm2") for e in lab.node(n).calls())


def test_plan_probe_shows_the_apt_simulation_and_changes_nothing(lab, tmp_path):
    """The `read_only` simulate step is sent by `plan --probe`: the ticket shows what apt would do
    on each node, as the nodes are now (lists not refreshed yet: apt says so), and nothing else
    is sent but the VIP probe and that simulation."""
    def plan(*args):
        r = subprocess.run([sys.executable, "-m", "bmupgrade", "plan", PACEMAKER, "-i", str(lab.inventory_path),
                            "--probe", *args], capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
        assert r.returncode == 0, r.stderr
        return r.stdout

    stale = json.loads(plan("-f", "json"))
    sim = next(a for a in stale["actions"] if a["id"] == "simulate")
    assert sim["read_only"] is True
    assert {n: v["exit"] for n, v in sim["probed"]["nodes"].items()} == {"bm1": 100, "bm2": 100}
    assert "Version '4.9.3' for" in sim["probed"]["nodes"]["bm1"]["output"]
    for n in ("bm1", "bm2"):  # the admin refreshes the lists: now apt knows the target
        assert lab.node(n).ssh("apt-get update -q").returncode == 0
    before = {n: len(lab.node(n).calls()) for n in ("bm1", "bm2")}
    md = plan("-f", "markdown")
    item = md[md.index("(`simulate`)"):md.index("(`prefetch`)")]
    assert "Probed when this plan was made (read-only, before the steps above ran), on `bm1`: exit 0" in item
    assert "Inst bm-core [4.9.2] (4.9.3" in item and "on `bm2`: exit 0" in item
    assert "REFUSED" not in item.split("```text", 1)[1]
    sent = [argv(e) for n in ("bm1", "bm2") for e in lab.node(n).calls()[before[n]:]]
    assert sent and all(a.startswith(("ip ", "dpkg-query ", "apt-get -s ")) for a in sent), sent
    text = plan()  # plain text on a pipe: the same answers under the step
    assert "probed now on bm2 (read-only, before the steps above ran): exit 0" in text
    assert lab.node("bm1").state()["installed"]["bm-full"] == "4.9.2"


def test_stale_remote_lock_is_reported_and_broken_only_explicitly(lab, tmp_path):
    lock = {"run_id": "20261124-230000-dead", "user": "alice", "host": "laptop", "pid": 4242,
            "since": "2026-11-24T23:00:00+00:00"}
    for n in ("bm1", "bm2"):
        d = lab.node(n).state_dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "lock").write_text(json.dumps(lock) + "\n")
    r = run_upgrade(lab, tmp_path / "s")
    assert r.returncode == 3
    assert "20261124-230000-dead" in r.stdout and "alice@laptop" in r.stdout and "--break-lock" in r.stdout
    run_upgrade(lab, tmp_path / "s2", "--break-lock", check_rc=0)
    assert not (lab.node("bm1").state_dir / "lock").exists()


FLOOD = """\
version: 1
name: flood
cluster:
  public_ip: 192.0.2.10
  nodes:
    - {name: bm1, host: 127.0.0.11}
    - {name: bm2, host: 127.0.0.12}
steps:
  - id: lines
    on: bm1
    run: seq 1 100000
  - id: blob
    on: bm2
    run: "head -c 17000000 /dev/zero | tr '\\\\0' x; echo; echo the-end"
"""


def test_a_flood_of_output_streams_bounded_to_terminal_and_log(lab, tmp_path):
    rb = tmp_path / "flood.yaml"
    rb.write_text(FLOOD)
    state = tmp_path / "s"
    r = bmupgrade("run", str(rb), "-i", str(lab.inventory_path), "--yes", state=state, check_rc=0)
    lines = [l.split(" ", 1)[1] for l in r.stdout.splitlines()]  # without the timestamp of a no-TTY log
    shown = [l for l in lines if l.startswith("  bm1 │ ")]
    assert len(shown) < 2000 and "  bm1 │ 100000" in shown              # bounded echo, newest lines kept
    assert any("lines not shown here" in l for l in shown)
    run_id = journal(state)["run_id"]
    log = (state / "runs" / f"{run_id}.output.log").read_text()
    assert "\n".join(str(i) for i in range(1, 100001)) in log            # the log has every line
    from bmupgrade.audit import OUTPUT_CAP
    assert len(log) < OUTPUT_CAP + 2_000_000 and "output beyond 16 MiB not logged" in log  # the blob is capped
    blob = [json.loads(l) for l in (state / "runs" / f"{run_id}.audit.jsonl").read_text().splitlines()
            if '"key": "blob"' in l and '"event": "result"' in l]
    assert blob[0]["exit_code"] == 0 and blob[0]["output_tail"].endswith("the-end\n")  # the tail is kept


def test_resume_of_a_run_a_later_run_overtook_is_refused(lab, tmp_path):
    """The common sequence: a run fails before HA goes off (cron could not be stopped), the admin
    just starts `run` again and it upgrades the cluster; a later `bmupgrade resume` finds the
    first run (the only open one). It must not send that run's steps over the second run's work:
    refused, exit 2, nothing reaches a node, and the message says what to do."""
    from tests.e2e import ledger

    state = tmp_path / "s"
    lab.fault("fail", node="bm2", command="systemctl stop cron.service", exit_code=1, times=3)
    first = run_upgrade(lab, state)
    lab.clear_faults()
    assert first.returncode == 1, first.stdout + first.stderr
    first_id = journal(state)["run_id"]
    second = run_upgrade(lab, state)
    assert second.returncode == 0, second.stdout + second.stderr
    second_id = max(p.name[:20] for p in (state / "runs").glob("*.journal.jsonl"))
    assert second_id != first_id
    before = {n: len(ledger(lab, n)) for n in ("bm1", "bm2")}
    for args in (("resume", "--yes", "--ack", "backup,prepare"), ("rollback", first_id, "--yes")):
        r = bmupgrade(*args, state=state)
        out = one_line(r.stdout + r.stderr)
        assert r.returncode == 2, out
        assert f"run {first_id} was followed by run {second_id} (succeeded) on the same cluster, which changed " \
               "it" in out and "Nothing was changed." in out
    assert {n: len(ledger(lab, n)) for n in ("bm1", "bm2")} == before
    assert journal(state, first_id)["status"] == "failed"


def test_killed_once_the_ha_markers_are_out_then_refused_stays_resumable(lab, tmp_path):
    """A runbook whose first change is turning HA off. The run is killed right after the HA-off
    markers are written (the HA-off command not yet sent); the admin resumes while the cluster
    is split-brained: the preflight refuses and, HA possibly off, the summary says to resume.
    That printed command must be accepted (the run was marked `refused`, "nothing to resume",
    before): once the cluster is repaired it finishes the upgrade and clears the markers."""
    from tests.e2e import run_printed, version

    text = open(PACEMAKER).read()
    refresh = text[text.index("  - id: refresh\n"):text.index("  - id: simulate\n")]
    ha_off = text[text.index("  - id: ha-off\n"):text.index("  - id: mask-passive\n")]
    text = text[:text.index("  - id: backup\n")] + ha_off + refresh + text[text.index("  - id: mask-passive\n"):]
    book = tmp_path / "ha-first.yaml"
    book.write_text(text[:text.index("  - id: resume-cron\n")] + text[text.index("postflight:"):])
    state = tmp_path / "s"
    r = bmupgrade("run", str(book), "-i", str(lab.inventory_path), "--yes", state=state,
                  env={"BMUPGRADE_CRASH_AT": "ha-off:ha-off"})
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    assert all(list(lab.node(n).state_dir.iterdir()) for n in ("bm1", "bm2"))  # the markers are out
    assert not count(lab, "bm1", "crm_attribute --update")  # the HA-off command was not sent
    lab.fault("split-brain")
    r = bmupgrade("resume", "--yes", state=state)
    out = one_line(r.stdout + r.stderr)
    assert r.returncode == 5 and "Preflight refused" in out and "HA handling is still OFF" in out, out
    assert journal(state)["status"] == "failed"
    resume = re.search(r"Next: (bmupgrade resume \S+ --state-dir \S+)", out).group(1)
    lab.clear_faults()
    r = run_printed(resume + " --yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert version(lab, "bm1") == version(lab, "bm2") == "4.9.3"
    assert all(not list(lab.node(n).state_dir.iterdir()) for n in ("bm1", "bm2"))  # markers cleared
