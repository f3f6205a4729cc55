"""Every fault switch, observed from an SSH client the way the engine would see it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bmupgrade.lab import LabError

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[1]


def test_fail_first_n_times_on_one_node(lab, batch):
    lab.fault("fail", node="bm2", command="apt-get install", exit_code=100, times=2,
              message="E: Failed to fetch https://pkg.bluemind.net/bm-core_4.9.3_all.deb  503  Service Unavailable")
    cmd = "apt-get update -qq", "apt-get install -y -qq bm-full=4.9.3 >/dev/null"
    r2 = batch(lab.node("bm2"), cmd[0], cmd[1], cmd[1], cmd[1], "dpkg-query -W -f='${Version}' bm-full")
    r1 = batch(lab.node("bm1"), cmd[0], cmd[1])
    assert [x.rc for x in r2[1:4]] == [100, 100, 0]  # retried: third attempt succeeds
    assert "503  Service Unavailable" in r2[1].err
    assert r2[4].out == "4.9.3"
    assert r1[1].rc == 0  # bm1 unaffected
    calls = lab.node("bm2").calls("apt-get install")
    assert [c.get("faults") for c in calls] == [["fail"], ["fail"], None]
    assert lab.node("bm2").state()["faults"][0]["remaining"] == 0
    # a fault without times fails for ever; options between words do not matter
    lab.fault("fail", node="bm1", command="pcs property set")
    r = batch(lab.node("bm1"), "pcs property set maintenance-mode=true", "pcs --force property set maintenance-mode=true",
              "pcs property config")
    assert [x.rc for x in r] == [1, 1, 0]
    assert "maintenance-mode" not in lab.cluster_state()["properties"]  # a failed command changes nothing


def test_fault_command_matching_with_exclusion(lab, batch):
    # the prefetch is an `apt-get install` too: `!--download-only` aims the fault at the real install
    lab.fault("fail", node="bm1", command="apt-get install !--download-only", exit_code=100, times=1)
    r = batch(lab.node("bm1"), "apt-get update -qq", "apt-get install -y -q --download-only bm-full=4.9.3",
              "apt-get install -y -q bm-full=4.9.3", "apt-get install -y -q bm-full=4.9.3")
    assert [x.rc for x in r[1:]] == [0, 100, 0]
    assert [c.get("faults") for c in lab.node("bm1").calls("apt-get install")] == [None, ["fail"], None]


def test_hang_then_proceed(lab, batch):
    lab.fault("hang", node="bm1", command="bm-cli setup", seconds=0.6, times=1)
    t0 = time.monotonic()
    r = batch(lab.node("bm1"), "bm-cli setup upgrade", "bm-cli setup upgrade")
    assert time.monotonic() - t0 >= 0.6
    assert r[0].rc == r[1].rc == 1  # then runs normally (here: nothing to upgrade)
    d = [c["duration"] for c in lab.node("bm1").calls("bm-cli")]
    assert d[0] >= 0.6 and d[1] < 0.5


def test_hang_is_seen_as_a_timeout(lab):
    lab.fault("hang", node="bm2", command="apt-get update", seconds=20)
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        lab.node("bm2").ssh("apt-get update", timeout=0.8)
    assert time.monotonic() - t0 < 3


def test_slow_apt_only_on_one_node(lab, batch):
    lab.fault("slow-apt", node="bm2", install=0.5)
    for n in lab.nodes:
        batch(n, "apt-get update -qq", "apt-get install -y -qq bm-full=4.9.3")
    d1 = lab.node("bm1").calls("apt-get install")[0]["duration"]
    d2 = lab.node("bm2").calls("apt-get install")[0]["duration"]
    assert d2 >= 0.5 > d1
    assert lab.node("bm2").state()["apt_delays"] == {"download": 0.0, "install": 0.5}


def test_drop_after_command(lab, batch):
    bm1 = lab.node("bm1")
    listener = bm1.pid
    lab.fault("drop", node="bm1", command="pcs property set")
    r = bm1.ssh("pcs property set maintenance-mode=true; echo not-reached")
    assert r.returncode == 255 and "closed by remote host" in r.stderr and "not-reached" not in r.stdout
    assert lab.cluster_state()["properties"]["maintenance-mode"] == "true"  # the command did its work
    call = bm1.calls("pcs")[0]
    assert call["dropped"] is True and call["exit"] == 0
    assert bm1.pid == listener  # the listener keeps running
    r = batch(bm1, "pcs property set maintenance-mode=false", "crm_attribute -n maintenance-mode -G -q")  # times=1
    assert r[0].rc == 0 and r[1].out == "false\n"


def test_drop_before_command_with_paramiko(lab):
    fabric = pytest.importorskip("fabric")
    import os
    import pwd

    import paramiko

    lab.fault("drop", node="bm2", command="apt-get install", when="before")
    n = lab.node("bm2")
    c = fabric.Connection(n.host, port=n.port, user=pwd.getpwuid(os.geteuid()).pw_name,
                          config=fabric.Config(overrides={"load_ssh_configs": False}),
                          connect_kwargs={"key_filename": str(lab.client_key), "look_for_keys": False,
                                          "allow_agent": False})
    c.client.load_host_keys(str(lab.known_hosts))
    c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        c.run("apt-get update -qq", hide=True, in_stream=False)
        r = c.run("apt-get install -y bm-full=4.9.3", hide=True, warn=True, in_stream=False)
        assert r.exited == -1  # no exit status: the connection went away
        assert not c.is_connected or not c.client.get_transport().is_active()
    finally:
        c.close()
    assert n.state()["installed"]["bm-full"] == "4.9.2"  # dropped before doing anything
    assert n.calls("apt-get install")[0]["exit"] is None


def test_node_down_and_clear(lab, batch):
    lab.fault("node-down", node="bm2")
    bm2 = lab.node("bm2")
    port = bm2.port
    r = bm2.ssh("true")
    assert r.returncode == 255 and "Connection refused" in r.stderr
    r = batch(lab.node("bm1"), "crm_mon -1", "rsync -a /etc/aliases bm2:/etc/aliases")
    assert "OFFLINE: [ bm2 ]" in r[0].out and r[1].rc == 255
    assert lab.status()["nodes"][1]["up"] is False
    with pytest.raises(LabError, match="needs a node"):
        lab.fault("node-down")
    lab.clear_faults()
    assert bm2.port == port and bm2.ssh("hostname").stdout == "bm2\n"


def test_vip_move_now_and_mid_run(lab, batch):
    probe = "ip -o addr show to 192.0.2.10"
    lab.fault("vip-move")
    assert batch(lab.node("bm1"), probe)[0].out == "" and "192.0.2.10/32" in batch(lab.node("bm2"), probe)[0].out
    lab.fault("vip-move", to="bm1")
    # the VIP moves when `apt-get install` runs on bm1 (e.g. during the packages step)
    lab.fault("vip-move", node="bm1", command="apt-get install", to="bm2")
    r1 = batch(lab.node("bm1"), probe, "apt-get update -qq", "apt-get install -y -qq bm-full=4.9.3 >/dev/null", probe,
               "crm_resource -r vip -W -Q")
    assert "192.0.2.10/32" in r1[0].out and r1[2].rc == 0 and r1[3].out == "" and r1[4].out == "bm2\n"
    r2 = batch(lab.node("bm2"), probe, "systemctl is-active bluemind.target")
    assert "192.0.2.10/32" in r2[0].out and r2[1].text == "active"
    assert lab.node("bm1").calls("apt-get install")[0]["vip_moved_to"] == "bm2"
    assert lab.cluster_state()["vip"] == ["bm2"]


def test_split_brain_and_no_vip(pcmk_lab, batch):
    lab = pcmk_lab
    probe = "ip -o addr show to 192.0.2.10"
    lab.fault("split-brain")
    for n in lab.nodes:
        assert batch(n, probe)[0].out.count("192.0.2.10/32") == 1
    assert sorted(batch(lab.node("bm1"), "crm_resource -r vip -W -Q")[0].out.split()) == ["bm1", "bm2"]
    lab.clear_faults()
    lab.fault("no-vip")
    assert [batch(n, probe)[0].out for n in lab.nodes] == ["", ""]
    lab.clear_faults()
    assert lab.cluster_state()["vip"] == ["bm1"]


def test_stonith_disabled(pcmk_lab, batch):
    lab = pcmk_lab
    q = "crm_attribute --type crm_config --name stonith-enabled --query --quiet"
    assert batch(lab.node("bm1"), q)[0].rc == 105
    lab.fault("stonith-disabled")
    r = batch(lab.node("bm2"), q, "crm_mon -1 --output-as=xml")
    assert (r[0].rc, r[0].out) == (0, "false\n") and 'stonith-enabled="false"' in r[1].out
    lab.clear_faults()
    assert batch(lab.node("bm1"), q)[0].rc == 105


def test_nfs_meta(lab, batch):
    lab.fault("nfs-meta")
    for n in lab.nodes:
        r = batch(n, "stat -f -c %T /var/spool/cyrus/meta", "stat -f -c %T /var/spool/cyrus/data",
                  "findmnt -n -o FSTYPE --target /var/spool/cyrus/meta")
        assert [x.text for x in r] == ["nfs", "ext2/ext3", "nfs4"]
    lab.clear_faults()
    assert batch(lab.node("bm1"), "stat -f -c %T /var/spool/cyrus/meta")[0].text == "ext2/ext3"


def test_config_drift(lab, batch):
    cmd = "sha256sum /etc/aliases /etc/sysctl.conf"
    lab.fault("config-drift")  # default: /etc/aliases on bm2
    h1, h2 = (batch(n, cmd)[0].out.splitlines() for n in lab.nodes)
    assert h1[0] != h2[0] and h1[1] == h2[1]
    lab.fault("config-drift", node="bm1", file="/etc/sysctl.conf")
    h1, h2 = (batch(n, cmd)[0].out.splitlines() for n in lab.nodes)
    assert h1[1] != h2[1]
    lab.clear_faults()
    h1, h2 = (batch(n, cmd)[0].out for n in lab.nodes)
    assert h1 == h2


def test_dpkg_lock_held(lab, batch):
    lab.fault("dpkg-lock", node="bm1")
    r = batch(lab.node("bm1"), "fuser /var/lib/dpkg/lock-frontend", "fuser -v /var/lib/dpkg/lock-frontend",
              "apt-get update -qq", "apt-get install -y bm-full=4.9.3", "dpkg --configure -a")
    assert (r[0].rc, r[0].out.strip()) == (0, "4242")
    assert "unattended-upgr" in r[1].err and r[1].rc == 0
    assert r[3].rc == 100 and "It is held by process 4242 (unattended-upgr)" in r[3].err
    assert r[4].rc == 2 and "locked by another process with pid 4242" in r[4].err
    # DPkg::Lock::Timeout waits; the holder goes away meanwhile
    threading.Timer(0.7, lab.clear_faults).start()
    r = batch(lab.node("bm1"), "apt-get -o DPkg::Lock::Timeout=10 install -y -qq bm-full=4.9.3", "fuser /var/lib/dpkg/lock")
    assert r[0].rc == 0 and "Waiting for cache lock" in r[0].err and r[1].rc == 1
    assert lab.node("bm1").calls("apt-get install")[-1]["duration"] >= 0.5
    assert lab.node("bm2").state()["dpkg_lock"] is None and lab.node("bm2").calls() == []


def test_held_package_and_half_configured(lab, batch):
    lab.fault("held-package", node="bm2", package="bm-node")
    lab.fault("half-configured", node="bm1")
    r2 = batch(lab.node("bm2"), "apt-mark showhold", "apt-get update -qq", "apt-get install -y bm-full=4.9.3")
    r1 = batch(lab.node("bm1"), "dpkg --audit", "apt-mark showhold")
    assert r2[0].out == "bm-node\n" and r2[2].rc == 100
    assert r1[0].rc == 1 and "bm-core" in r1[0].out and r1[1].out == ""
    lab.clear_faults()
    assert batch(lab.node("bm2"), "apt-mark showhold")[0].out == ""
    assert batch(lab.node("bm1"), "dpkg --audit")[0].rc == 0


def test_clear_undoes_everything_and_status_lists_faults(lab):
    lab.fault("fail", command="systemctl stop", exit_code=1)
    lab.fault("slow-apt", download=3)
    lab.fault("split-brain")
    lab.fault("stonith-disabled")
    lab.fault("nfs-meta", node="bm1")
    st = lab.status()
    assert [f["name"] for f in st["faults"]] == ["fail", "slow-apt", "split-brain", "stonith-disabled", "nfs-meta"]
    assert st["vip"] == ["bm1", "bm2"] and st["stonith_enabled"] == "false"
    lab.clear_faults()
    st = lab.status()
    assert st["faults"] == [] and st["vip"] == ["bm1"] and st["stonith_enabled"] is None
    for n in st["nodes"]:
        assert n["faults"] == [] and n["apt_delays"] == {"download": 0.0, "install": 0.0}
    assert "/var/spool/cyrus/meta" not in lab.node("bm1").state()["mounts"]


def test_fault_validation(lab):
    for args, kw, msg in ((("nope",), {}, "unknown fault"),
                          (("fail",), {}, "needs a command"),
                          (("fail",), {"command": "x", "colour": 1}, "unknown option"),
                          (("fail",), {"command": "x", "times": "many"}, "must be an integer"),
                          (("drop",), {"command": "x", "when": "later"}, "before' or 'after"),
                          (("vip-move",), {"to": "bm5"}, "unknown node"),
                          (("no-vip",), {"node": "bm1"}, "whole cluster")):
        with pytest.raises(LabError, match=msg):
            lab.fault(*args, **kw)


def test_module_cli_fault_and_failover(lab, batch):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    base = [sys.executable, "-m", "bmupgrade.lab"]
    r = subprocess.run(base + ["fault", "fail", "--dir", str(lab.dir), "--node", "bm1", "--command", "bmctl stop",
                               "--exit-code", "7"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert batch(lab.node("bm1"), "bmctl stop")[0].rc == 7
    r = subprocess.run(base + ["failover", "--dir", str(lab.dir)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "now on bm2" in r.stdout
    r = subprocess.run(base + ["fault", "hang", "--dir", str(lab.dir), "--command", "x"], env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and r.stderr == "error: fault hang needs seconds\n"
