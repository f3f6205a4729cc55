"""Real faults around the HA-off window, each with a run through it (real cluster labs): the
passive node rebooted inside the window (/run is a fresh tmpfs after it, so `systemctl mask
--runtime` is gone; keepalived's backup starts keepalived again at boot), and the VIP moved by
an admin just before the run. Their own labs (names and subnets), so they run beside
tests/test_cluster_lab.py's."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.e2e import cluster_upgrade, journal
from tests.test_cluster_lab import booted, crmmon_maintenance, eventually, placement, versions

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with booted(tmp_path_factory, "reboot", name="bmreboot", subnet="10.213.16.0/24") as lab:
        yield lab


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def test_passive_node_rebooted_in_the_window_is_masked_again_before_packages(cluster, state):
    """The run dies right after masking bluemind.target on bm2 (HA off); then bm2 really reboots
    (power cycle through the supervisor: /run is a fresh tmpfs, the runtime mask is gone).
    `resume` re-checks what the packages step requires, re-applies the mask before any package
    moves, and bm-conf's postinst on bm2 could not start BlueMind on the passive node."""
    from bmupgrade.lab.cluster import faults
    r = cluster_upgrade(cluster, state, env={"BMUPGRADE_CRASH_AT": "done:mask-passive"}, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    assert crmmon_maintenance(cluster.crm_mon())
    assert cluster.run("bm2", "systemctl is-enabled bluemind.target").stdout.strip().startswith("masked")
    faults.reboot(cluster, "bm2")
    cluster.wait_ready()
    # the rejoined node is "pending" a moment: the preflight's health check would refuse (exit 5,
    # nothing sent) until it is a full member again, as an admin would see; wait for that first
    def rejoined():
        xml = cluster.run("bm1", "crm_mon -1 --output-as=xml").stdout
        return bool(re.search(r'<node name="bm2"[^>]*online="true"[^>]*pending="false"', xml))
    assert eventually(rejoined, True, 60)
    # in maintenance mode Pacemaker starts nothing: bm1's fence device, which ran on bm2, stays stopped
    def fence_bm1():
        xml = cluster.run("bm1", "crm_mon -1 --output-as=xml").stdout
        return re.search(r'<resource id="fence-bm1"[^>]*role="(\w+)"', xml).group(1)
    assert eventually(fence_bm1, "Stopped", 30) == "Stopped"
    assert not cluster.run("bm2", "systemctl is-enabled bluemind.target").stdout.strip().startswith("masked")
    r = subprocess.run([sys.executable, "-m", "bmupgrade", "resume", "--yes", "--ack", "backup,prepare",
                        "--state-dir", str(state)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}, stdin=subprocess.DEVNULL)
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 0, out
    assert "'mask-passive' no longer holds on bm2" in out and "Re-applying it before 'packages'" in out
    j = journal(state)
    assert [(x["step"], x["nodes"], x["before"]) for x in j["reapplied"]] == [("mask-passive", ["bm2"], "packages")]
    # bm2's call log (on its disk: it survives the reboot): masked, rebooted, masked again, then
    # bm-conf's postinst tried to start BlueMind (refused: masked), and nothing had to stop it
    log = [line.split(" ", 1)[1] for line in cluster.run("bm2", "cat /var/log/bmlab/calls.log").stdout.splitlines()]
    masks = [i for i, line in enumerate(log) if line == "systemctl mask --runtime bluemind.target"]
    assert len(masks) == 2, log
    later = log[masks[1]:]
    assert "systemctl start bluemind.target" in later and "bmctl stop" not in later, later
    assert cluster.run("bm2", "systemctl is-active bluemind.target").stdout.strip() == "inactive"
    assert all(set(v.values()) == {"4.9.3"} for v in versions(cluster).values())
    assert not crmmon_maintenance(cluster.crm_mon()) and placement(cluster)["vip"] == ["bm1"]
    # reattached: the fence device runs again (the postflight's cluster-healthy-after said so too)
    assert 'role="Stopped"' not in cluster.run("bm1", "crm_mon -1 --output-as=xml").stdout
    assert "resources-started: skipped (step 'ha-off' has run" in out


def test_vip_moved_just_before_the_run_post_install_follows_it(cluster, state):
    """`crm_resource --move` puts the VIP and BlueMind on bm2 (then `--clear`); the next run's
    post-install runs on bm2, the new holder, and nowhere else; HA back on, nothing moved back."""
    from bmupgrade.lab.cluster import faults
    cluster.up(reset=True)  # a fresh 4.9.2 cluster (the test above upgraded this one)
    assert faults.vip_move(cluster, "bm2") == "bm2"
    seen = {n: len(cluster.run(n, "cat /var/log/bmlab/calls.log").stdout.splitlines()) for n in ("bm1", "bm2")}
    r = cluster_upgrade(cluster, state, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    new = {n: [line.split(" ", 1)[1] for line in cluster.run(n, "cat /var/log/bmlab/calls.log").stdout.splitlines()[seen[n]:]]
           for n in ("bm1", "bm2")}
    assert new["bm2"].count("bm-cli setup upgrade") == 1 and "bm-cli setup upgrade" not in new["bm1"]
    assert "systemctl mask --runtime bluemind.target" in new["bm1"]  # bm1 is the passive node now
    assert cluster.run("bm2", "cat /var/lib/bm-setup/version").stdout.strip() == "4.9.3"
    assert placement(cluster) == {"vip": ["bm2"], "bluemind": ["bm2"]} and cluster.vip_holders() == ["bm2"]
    assert not crmmon_maintenance(cluster.crm_mon())
    assert cluster.run("bm1", "systemctl is-active bluemind.target").stdout.strip() == "inactive"


@pytest.fixture(scope="module")
def ka(tmp_path_factory):
    with booted(tmp_path_factory, "kareboot", name="bmkarbt", subnet="10.213.17.0/24", ha="keepalived") as lab:
        yield lab


def test_keepalived_backup_rebooted_in_the_window_is_frozen_again(ka, state):
    """keepalived: failover is frozen by stopping keepalived on the backup (bm2). bm2 reboots
    inside the window: its enabled keepalived starts again at boot (failover live again) and the
    runtime mask is gone. `resume` stops keepalived there again and re-masks, before packages."""
    from bmupgrade.lab.cluster import faults
    from tests.e2e import KEEPALIVED

    assert eventually(ka.vip_holders, ["bm1"]) == ["bm1"]
    r = cluster_upgrade(ka, state, "--allow-no-stonith", runbook=KEEPALIVED,
                        env={"BMUPGRADE_CRASH_AT": "done:mask-passive"}, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    assert ka.run("bm2", "systemctl is-active keepalived").stdout.strip() == "inactive"
    faults.reboot(ka, "bm2")
    ka.wait_ready()
    assert ka.run("bm2", "systemctl is-active keepalived").stdout.strip() == "active"  # HA live again
    r = subprocess.run([sys.executable, "-m", "bmupgrade", "resume", "--yes", "--ack", "backup,prepare",
                        "--allow-no-stonith", "--state-dir", str(state)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}, stdin=subprocess.DEVNULL)
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 0, out
    j = journal(state)
    assert [(x["step"], x["nodes"]) for x in j["reapplied"]] == [("ha-off", ["bm2"]), ("mask-passive", ["bm2"])]
    # bm2's log after the reboot: keepalived stopped and bluemind.target masked before bm-conf's
    # postinst tried to start it; keepalived started again by ha-on at the end
    log = [line.split(" ", 1)[1] for line in ka.run("bm2", "cat /var/log/bmlab/calls.log").stdout.splitlines()]
    masks = [i for i, line in enumerate(log) if line == "systemctl mask --runtime bluemind.target"]
    assert len(masks) == 2, log
    restart = max(i for i, line in enumerate(log) if line == "systemctl start keepalived")  # ha-on
    window = log[masks[1]:restart]  # (keepalived's notify stops BlueMind when bm2 becomes BACKUP again)
    assert "systemctl start bluemind.target" in window and "bmctl stop" not in window, window
    stops = [i for i, line in enumerate(log) if line == "systemctl stop keepalived"]
    assert len(stops) == 2 and stops[1] < masks[1], log
    assert ka.vip_holders() == ["bm1"]
    for n in ("bm1", "bm2"):
        assert ka.run(n, "systemctl is-active keepalived").stdout.strip() == "active"
    assert all(set(v.values()) == {"4.9.3"} for v in versions(ka).values())
