"""Each stand-in command, driven through real ssh as a runbook would, and its effect on state."""

from __future__ import annotations

import os
import hashlib
import subprocess
import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.lab

BM = ["bm-client-access", "bm-conf", "bm-core", "bm-core-upgraders", "bm-elasticsearch", "bm-full", "bm-node",
      "bm-plugin-cli-setup", "bm-webmail"]  # bm-full's pinned packages + those depending on bm-core (= version)


def versions(node):
    return node.state()["installed"]


# --------------------------------------------------------------------------- apt-get
def test_apt_update_install_simulate_unknown_version(lab, batch):
    bm2 = lab.node("bm2")
    r = batch(bm2,
              "apt-get install -y bm-full=4.9.3",  # apt lists are stale: 4.9.3 not known yet
              "apt-cache policy bm-full",
              "apt-get update",
              "apt-cache policy bm-full",
              "apt-get install -s bm-full=4.9.3",
              "dpkg-query -W -f='${Version}' bm-full",
              "apt-get install -y bm-full=9.9",
              "apt-get install -y bm-nope",
              "DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confold bm-full=4.9.3",
              "dpkg-query -W -f='${Version}' bm-full bm-core",
              "apt-get install -y bm-full=4.9.3",
              "apt-cache policy bm-full",
              "apt-cache show bm-full=4.9.3",
              "apt-cache show bm-full=9.9",
              "apt-cache show bm-nope=1")
    assert r[0].rc == 100 and r[0].err == "E: Version '4.9.3' for 'bm-full' was not found\n"
    assert "Installed: 4.9.2\n  Candidate: 4.9.2\n" in r[1].out
    assert r[2].rc == 0
    assert "Installed: 4.9.2\n  Candidate: 4.9.3\n" in r[3].out and " *** 4.9.2 500" in r[3].out
    assert r[4].rc == 0 and "Inst bm-full [4.9.2] (4.9.3" in r[4].out and "Conf bm-node (4.9.3" in r[4].out
    assert r[5].out == "4.9.2"  # -s changed nothing
    assert r[6].rc == 100 and r[6].err == "E: Version '9.9' for 'bm-full' was not found\n"
    assert r[7].rc == 100 and "E: Unable to locate package bm-nope" in r[7].err
    assert r[8].rc == 0 and "Setting up bm-core (4.9.3)" in r[8].out
    assert r[9].out == "4.9.34.9.3"
    assert r[10].rc == 0 and "bm-full is already the newest version (4.9.3)." in r[10].out
    assert " *** 4.9.3 500" in r[11].out
    assert r[12].rc == 0 and "Version: 4.9.3\n" in r[12].out and "Depends: bm-client-access (= 4.9.3), bm-conf (= 4.9.3)" in r[12].out
    assert (r[13].rc, r[13].out) == (0, "")  # apt's quirk: an unknown version is no error
    assert r[14].rc == 100 and r[14].err == "E: No packages found\n"
    assert versions(bm2) == {p: "4.9.3" for p in BM}
    assert lab.node("bm1").state()["installed"]["bm-full"] == "4.9.2"  # the other node untouched
    ledger = bm2.calls("apt-get install")
    assert [c["exit"] for c in ledger] == [100, 0, 100, 100, 0, 0]


def test_dpkg_trigger_starts_bluemind_on_the_passive_node(pcmk_lab, batch):
    lab = pcmk_lab
    bm2 = lab.node("bm2")
    assert bm2.state()["services"]["bluemind.target"] == "inactive"
    r = batch(bm2, "systemctl is-active bluemind.target", "apt-get update -qq",
              "apt-get install -y -qq bm-full=4.9.3", "systemctl is-active bluemind.target",
              "crm_resource --resource bluemind --locate")
    assert (r[0].text, r[0].rc) == ("inactive", 3)
    assert (r[3].text, r[3].rc) == ("active", 0)
    assert sorted(r[4].out.splitlines()) == ["resource bluemind is running on: bm1",
                                             "resource bluemind is running on: bm2"]  # the order is the tool's
    assert bm2.calls("apt-get install")[0].get("trigger") == "bluemind.target started"


def test_apt_download_only_fills_cache_and_skips_download_delay(lab, batch):
    bm1, bm2 = lab.nodes
    lab.fault("slow-apt", download=0.8, install=0.1)
    r1 = batch(bm1, "apt-get update -qq", "apt-get install -y --download-only bm-full=4.9.3",
               "dpkg-query -W -f='${Version}' bm-full", "apt-get install -y bm-full=4.9.3")
    assert r1[1].rc == 0 and "Download complete and in download only mode" in r1[1].out
    assert r1[2].out == "4.9.2"
    assert "bm-full=4.9.3" in bm1.state()["cache"]
    assert (bm1.root / "var/cache/apt/archives/bm-core_4.9.3_all.deb").exists()
    batch(bm2, "apt-get update -qq", "apt-get -y install bm-full=4.9.3")
    d1 = {tuple(c["argv"][1:]): c["duration"] for c in bm1.calls("apt-get install")}
    d2 = bm2.calls("apt-get install")[0]["duration"]
    assert d1[("install", "-y", "--download-only", "bm-full=4.9.3")] >= 0.8
    assert d1[("install", "-y", "bm-full=4.9.3")] < 0.6  # cached: install delay only
    assert d2 >= 0.9  # not cached: download + install
    assert versions(bm1)["bm-webmail"] == versions(bm2)["bm-webmail"] == "4.9.3"


def test_apt_prompt_downgrade_held_and_usage(lab, batch):
    bm1 = lab.node("bm1")
    r = batch(bm1, "apt-get update -qq",
              "apt-get install bm-full=4.9.3",  # no -y, stdin at EOF: apt asks and aborts
              "apt-get install --bogus",
              "apt-get -x install",
              "apt-get frobnicate",
              "apt-mark hold bm-core", "apt-mark showhold",
              "apt-get install -y bm-full=4.9.3",
              "apt-mark unhold bm-core",
              "apt-get install -y bm-full=4.9.3",
              "apt-get install -y " + " ".join(p + "=4.9.2" for p in BM),
              "apt-get install -y --allow-downgrades bm-full=4.9.2",  # alone: the others stay at their candidate
              "apt-get install -y --allow-downgrades " + " ".join(p + "=4.9.2" for p in BM),
              "apt-get install -y bm-core=4.9.3",
              "apt-mark hold bm-nope")
    assert r[1].rc == 1 and "Do you want to continue? [Y/n] Abort." in r[1].out
    assert r[2].rc == 100 and r[2].err == "E: Command line option --bogus is not understood in combination with the other options\n"
    assert r[3].rc == 100 and "'x' [from -x]" in r[3].err
    assert r[4].rc == 100 and r[4].err == "E: Invalid operation frobnicate\n"
    assert r[5].out == "bm-core set on hold.\n" and r[6].out == "bm-core\n"
    assert r[7].rc == 100 and "you have held broken packages" in r[7].err
    assert "bm-full : Depends: bm-core (= 4.9.3) but 4.9.2 is to be installed" in r[7].out
    assert r[8].out == "Canceled hold on bm-core.\n"
    assert r[9].rc == 0
    assert r[10].rc == 100 and "E: Packages were downgraded and -y was used without --allow-downgrades." in r[10].err
    assert r[11].rc == 100 and " bm-full : Depends: bm-core (= 4.9.2) but 4.9.3 is to be installed" in r[11].out
    assert r[12].rc == 0 and versions(bm1) == {p: "4.9.2" for p in BM}
    assert r[13].rc == 100 and "held broken packages" in r[13].err  # bm-core alone breaks bm-full's pin
    assert r[14].rc == 100


def test_apt_no_lists_needed_for_upgrade_with_answer(lab):
    bm1 = lab.node("bm1")
    r = bm1.ssh("apt-get update -qq && apt-get upgrade", input="y\n")
    assert r.returncode == 0 and "Do you want to continue? [Y/n] " in r.stdout
    assert versions(bm1) == {p: "4.9.3" for p in BM}


# --------------------------------------------------------------------------- dpkg
def test_dpkg_query_forms_and_audit(lab, batch):
    bm1 = lab.node("bm1")
    r = batch(bm1, "dpkg-query -W -f='${Version}' bm-full",
              "dpkg-query --show --showformat='${Package} ${Version}\\n' bm-core",
              "dpkg-query -W bm-node",
              "dpkg-query -W 'bm-*'",
              "dpkg-query -W nosuchpkg",
              "dpkg-query --bogus",
              "dpkg --audit",
              "dpkg -l bm-full",
              "dpkg")
    assert r[0].out == "4.9.2"
    assert r[1].out == "bm-core 4.9.2\n"
    assert r[2].out == "bm-node\t4.9.2\n"
    assert r[3].out.splitlines() == ["%s\t4.9.2" % p for p in BM]  # sorted by name, as dpkg-query does
    assert r[4].rc == 1 and r[4].err == "dpkg-query: no packages found matching nosuchpkg\n"
    assert r[5].rc == 2 and r[5].err.startswith("dpkg-query: error: unknown option --bogus")
    assert (r[6].rc, r[6].out) == (0, "")
    assert r[7].rc == 0 and "ii  bm-full" in r[7].out
    assert r[8].rc == 2 and "need an action option" in r[8].err
    lab.fault("half-configured", node="bm1", package="bm-node")
    r = batch(bm1, "dpkg --audit", "apt-get install -y bm-full", "dpkg-query -W -f='${db:Status-Abbrev}' bm-node",
              "dpkg --configure -a", "dpkg --audit")
    assert r[0].rc == 1 and "only half configured" in r[0].out and " bm-node " in r[0].out
    assert r[1].rc == 100 and "dpkg was interrupted, you must manually run 'dpkg --configure -a'" in r[1].err
    assert r[2].out == "iF "
    assert r[3].rc == 0 and "Setting up bm-node (4.9.2)" in r[3].out
    assert (r[4].rc, r[4].out) == (0, "")


def test_interrupted_install_leaves_half_configured(lab, batch):
    bm2 = lab.node("bm2")
    bm2.set_state(apt_delays={"install": 30})
    import subprocess
    import time
    p = subprocess.Popen(["ssh", "-F", str(lab.ssh_config), "bm2", "apt-get update -qq; apt-get install -y bm-full=4.9.3"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not bm2.state().get("pending_install"):
        time.sleep(0.02)
    pid = bm2.state()["pending_install"]["pid"]
    r = batch(bm2, "fuser /var/lib/dpkg/lock-frontend", "apt-get install -y bm-full=4.9.3")
    assert r[0].rc == 0 and r[0].out.strip() == str(pid)
    assert r[1].rc == 100 and "It is held by process %d (apt-get)" % pid in r[1].err
    import os
    import signal
    os.kill(pid, signal.SIGKILL)  # apt-get dies mid-install
    p.wait(10)
    r = batch(bm2, "dpkg --audit", "fuser /var/lib/dpkg/lock-frontend", "dpkg --configure -a",
              "dpkg-query -W -f='${Version}' bm-core", "systemctl is-active bluemind.target")
    assert r[0].rc == 1 and "bm-core" in r[0].out
    assert r[1].rc == 1  # the dead holder's lock is free
    assert r[2].rc == 0 and r[3].out == "4.9.3" and r[4].text == "active"


# --------------------------------------------------------------------------- pacemaker
def test_crm_attribute_forms(pcmk_lab, batch):
    lab = pcmk_lab
    bm1 = lab.node("bm1")
    r = batch(bm1,
              "crm_attribute --type crm_config --name stonith-enabled --query --quiet",
              "crm_attribute -t crm_config -n maintenance-mode -G -q",
              "crm_attribute --type crm_config --name maintenance-mode --update true",
              "crm_attribute -t crm_config -n maintenance-mode -G -q",
              "crm_attribute -t crm_config -n maintenance-mode -G",
              "crm_attribute --type=crm_config --name=maintenance-mode -v false",
              "crm_attribute -n maintenance-mode -Gq",
              "crm_attribute --type crm_config --name maintenance-mode --delete",
              "crm_attribute -t crm_config -n maintenance-mode -G -q",
              "crm_attribute -t crm_config -n maintenance-mode -G -q -d false",
              "crm_attribute --bogus",
              "crm_attribute -t crm_config -G",
              "crm_attribute -t crm_config -v x",
              "crm_attribute -t crm_config -D")
    assert r[0].rc == 105 and r[0].out == "" and "No such device or address" in r[0].err
    assert r[1].rc == 105
    assert r[2].rc == 0 and r[3].out == "true\n"
    assert r[4].out == "scope=crm_config  name=maintenance-mode value=true\n"
    assert r[5].rc == 0 and r[6].out == "false\n"
    assert r[7].rc == 0 and r[8].rc == 105
    assert r[9].out == "false\n"
    assert r[10].rc == 64 and "Unknown option --bogus" in r[10].err
    assert r[11].rc == 0 and r[11].out == "".join(  # no --name: every property
        "scope=crm_config  name=%s value=%s\n" % kv for kv in (
            ("cluster-infrastructure", "corosync"), ("cluster-name", "bmcluster"),
            ("dc-version", "2.1.5-a3f44794f94"), ("have-watchdog", "false")))
    assert r[12].rc == 70 and "Invalid argument" in r[12].err
    assert r[13].rc == 64 and "must specify attribute name" in r[13].err
    # cluster-wide: bm2 sees what bm1 set
    assert lab.node("bm2").ssh("crm_attribute -t crm_config -n maintenance-mode -v true; pcs property config maintenance-mode").stdout == \
        "Cluster Properties: cib-bootstrap-options\n  maintenance-mode=true\n"
    assert lab.cluster_state()["properties"]["maintenance-mode"] == "true"


def test_crm_resource_and_crm_mon(pcmk_lab, batch):
    lab = pcmk_lab
    bm1, bm2 = lab.nodes
    r = batch(bm2, "crm_resource --resource vip --locate", "crm_resource -r vip -W -Q",
              "crm_resource -r bluemind -W", "crm_resource -r nope -W", "crm_mon -1",
              "crm_mon -1 --output-as=xml", "pcs property set maintenance-mode=true", "crm_mon -1",
              "crm_mon -1 --output-as=xml", "crm_mon", "pcs status")
    assert r[0].out == "resource vip is running on: bm1\n" and r[0].rc == 0
    assert r[1].out == "bm1\n"
    assert r[2].out == "resource bluemind is running on: bm1\n"
    assert r[3].rc == 105 and "not found" in r[3].err
    assert "Online: [ bm1 bm2 ]" in r[4].out and "Resource management is DISABLED" not in r[4].out
    assert "vip\t(ocf:heartbeat:IPaddr2):\t Started bm1" in r[4].out
    x = ET.fromstring(r[5].out)
    assert x.find("summary/cluster_options").get("maintenance-mode") == "false"
    assert [n.get("online") for n in x.findall("nodes/node")] == ["true", "true"]
    placed = {res.get("id"): [n.get("name") for n in res.findall("node")] for res in x.findall("resources/resource")}
    assert {r: placed[r] for r in ("vip", "storage", "bluemind")} == {"vip": ["bm1"], "storage": ["bm1"],
                                                                     "bluemind": ["bm1"]}
    assert set(placed) <= {"vip", "storage", "bluemind", "fence-bm"}  # the real CIB has a fence device
    assert r[6].rc == 0
    assert "*** Resource management is DISABLED ***" in r[7].out and "Started bm1 (unmanaged)" in r[7].out
    assert ET.fromstring(r[8].out).find("summary/cluster_options").get("maintenance-mode") == "true"
    assert r[9].rc == 0 and "Resource management is DISABLED" in r[9].out  # no tty: one shot, like -1
    assert r[10].rc == 0 and "Cluster name: bmcluster" in r[10].out and "DISABLED" in r[10].out
    # stopped resource: nothing on stdout, still exit 0 (parse the output, never trust the code)
    bm1.set_state(services={"bluemind.target": "inactive"})
    r = batch(bm1, "crm_resource --resource bluemind --locate", "crm_resource -r bluemind -W -Q",
              "systemctl stop pacemaker", "crm_mon -1", "crm_attribute -n maintenance-mode -G -q")
    assert (r[0].rc, r[0].out, r[0].err) == (0, "", "resource bluemind is NOT running\n")
    assert (r[1].rc, r[1].out) == (0, "")
    assert r[3].rc == 102 and r[4].rc == 102  # no cluster on this node any more
    assert "OFFLINE: [ bm1 ]" in bm2.ssh("crm_mon -1").stdout


def test_pcs_property(lab, batch):
    r = batch(lab.node("bm1"), "pcs property set maintenance-mode=true", "pcs property config maintenance-mode",
              "pcs property config", "pcs property set maintenance-mode=maybe", "pcs property set bogus=1",
              "pcs property set maintenance-mode=false", "pcs property config maintenance-mode | grep -q true",
              "pcs property unset maintenance-mode", "pcs resource move x")
    assert r[0].rc == 0
    assert r[1].out == "Cluster Properties: cib-bootstrap-options\n  maintenance-mode=true\n"
    assert "  cluster-name=bmcluster\n" in r[2].out
    assert r[3].rc == 1 and "'maybe' is not a valid maintenance-mode value" in r[3].err
    assert r[4].rc == 1 and "invalid cluster property: 'bogus'" in r[4].err
    assert r[5].rc == 0 and r[6].rc == 1
    assert r[7].rc == 0 and "maintenance-mode" not in lab.cluster_state()["properties"]
    assert r[8].rc == 1


# --------------------------------------------------------------------------- ip / systemctl / bmctl / bm-cli
def test_ip_addr(lab, batch):
    r1 = batch(lab.node("bm1"), "ip -o addr show to 192.0.2.10", "ip -o addr show to 192.0.2.1", "ip -o addr show",
               "ip -j addr show to 192.0.2.10", "ip -o -4 addr show dev eth0", "ip -x addr", "ip addr show to foo")
    r2 = batch(lab.node("bm2"), "ip -o addr show to 192.0.2.10")
    lines = r1[0].out.splitlines()
    assert len(lines) == 1 and " inet 192.0.2.10/32 " in lines[0] and r1[0].rc == 0
    assert (r1[1].rc, r1[1].out) == (0, "")  # 192.0.2.1 does not match 192.0.2.10
    assert "inet 127.0.0.1/8" in r1[2].out and "inet 192.0.2.11/24" in r1[2].out and "192.0.2.10/32" in r1[2].out
    import json
    assert [a["local"] for i in json.loads(r1[3].out) for a in i["addr_info"]] == ["192.0.2.10"]
    assert r1[4].out.count("\n") == 2 and "inet6" not in r1[4].out
    assert r1[5].rc == 255 and 'Option "-x" is unknown' in r1[5].err
    assert r1[6].rc == 1
    assert (r2[0].rc, r2[0].out) == (0, "")


def test_the_vip_probe_fast_path_answers_as_the_python_stand_in_and_steps_aside_for_faults(lab, batch):
    """`ip -o addr show to VIP` is answered by bash (bin/ip) from the answer the lab keeps per
    node; it must say what the Python stand-in says (an equivalent command form goes to Python)
    after every state change, and leave the call to Python while the node has a fault set."""
    probe, same = "ip -o addr show to 192.0.2.10", "ip -o addr show to 192.0.2.10/32"  # the latter: Python

    def answers():
        out = {}
        for n in ("bm1", "bm2"):
            fast, slow = batch(lab.node(n), probe, same)
            assert fast.rc == slow.rc == 0
            out[n] = (fast.out, slow.out, lab.node(n).calls("ip")[-2:])
        return out

    a = answers()
    assert "inet 192.0.2.10/32 scope global eth0" in a["bm1"][0] and a["bm2"][0] == ""
    for n, (fast, slow, calls) in a.items():
        assert fast == slow
        assert [c.get("fast", False) for c in calls] == [True, False]
        assert {k: v for k, v in calls[0].items() if k not in ("fast", "time", "pid", "duration")} == \
               {k: v for k, v in calls[1].items() if k not in ("time", "pid", "duration")} | {"argv": probe.split()}
    lab.failover("bm2")
    a = answers()
    assert a["bm1"][0] == "" and "inet 192.0.2.10/32" in a["bm2"][0] and a["bm2"][0] == a["bm2"][1]
    lab.fault("split-brain")
    a = answers()
    assert all("inet 192.0.2.10/32" in a[n][0] and a[n][0] == a[n][1] for n in a)
    lab.clear_faults()
    lab.fault("fail", node="bm1", command="ip", exit_code=7)
    r = batch(lab.node("bm1"), probe)[0]
    assert r.rc == 7 and "fast" not in lab.node("bm1").calls("ip")[-1]
    assert batch(lab.node("bm2"), probe)[0].rc == 0 and lab.node("bm2").calls("ip")[-1].get("fast")
    lab.clear_faults()
    assert batch(lab.node("bm1"), probe)[0].rc == 0 and lab.node("bm1").calls("ip")[-1].get("fast")


def test_systemctl_and_bmctl(lab, batch):
    r = batch(lab.node("bm2"), "systemctl is-active bluemind.target", "systemctl is-active --quiet bluemind.target",
              "bmctl status", "bmctl start", "systemctl is-active --quiet bluemind.target", "bmctl status",
              "systemctl stop keepalived", "systemctl is-active keepalived", "systemctl status keepalived",
              "systemctl restart keepalived.service", "systemctl is-active keepalived", "systemctl start nope",
              "systemctl status nope", "systemctl --bogus", "bmctl frob", "bmctl stop",
              "systemctl is-active bluemind.target pacemaker")
    assert (r[0].rc, r[0].out) == (3, "inactive\n")
    assert (r[1].rc, r[1].out) == (3, "")
    assert r[2].rc != 0 and "inactive" in r[2].out
    assert r[3].rc == 0 and r[4].rc == 0 and r[5].rc == 0
    assert r[6].rc == 0 and (r[7].rc, r[7].text) == (3, "inactive")
    assert r[8].rc == 3 and "inactive (dead)" in r[8].out
    assert r[9].rc == 0 and r[10].text == "active"
    assert r[11].rc == 5 and "Unit nope.service not found" in r[11].err
    assert r[12].rc == 4
    assert r[13].rc == 1 and r[14].rc == 1
    assert r[15].rc == 0 and r[16].out == "inactive\nactive\n" and r[16].rc == 0
    assert lab.node("bm2").state()["services"]["bluemind.target"] == "inactive"


def test_bm_cli_setup_upgrade_rules(lab, batch):
    bm1, bm2 = lab.nodes
    r = batch(bm1, "bm-cli setup upgrade",  # nothing newer installed
              "apt-get update -qq", "apt-get install -y -qq bm-full=4.9.3",
              "bmctl stop", "bm-cli setup upgrade",  # target down
              "bmctl start", "bm-cli setup upgrade",
              "bm-cli setup upgrade",  # already done for 4.9.3
              "bm-cli", "bm-cli setup frob", "bm-cli setup upgrade --force",
              "bm-cli setup check-upgrade-5 --sampling-percentage=100",
              "bm-cli setup check-upgrade-5 --sampling-percentage=0")
    assert r[0].rc == 1 and "nothing to upgrade" in r[0].err
    assert r[4].rc == 1 and "bluemind.target is not active" in r[4].err
    assert r[6].rc == 0 and "4.9.3" in r[6].out
    assert r[7].rc == 1
    assert r[8].rc == 51 and r[9].rc == 51 and r[10].rc == 51
    assert r[11].rc == 0 and "Eligible" in r[11].out
    assert r[12].rc == 51
    assert bm1.state()["setup_version"] == "4.9.3" and bm2.state()["setup_version"] == "4.9.2"
    assert [c["exit"] for c in bm1.calls("bm-cli setup upgrade")] == [1, 1, 0, 1, 51]
    # mixed bm-* versions are refused
    bm2.set_state(installed={"bm-full": "4.9.3", "bm-node": "4.9.3"}, services={"bluemind.target": "active"})
    r = batch(bm2, "bm-cli setup upgrade")
    assert r[0].rc == 1 and "bm-core=4.9.2" in r[0].err
    bm2.set_state(mounts={"/var/lib/postgresql": dict(bm2.state()["mounts"]["/var/lib/postgresql"], bfree=100)})
    assert batch(bm2, "bm-cli setup check-upgrade-5")[0].rc == 1


# --------------------------------------------------------------------------- files
def test_fuser_stat_sha256sum(lab, batch):
    bm1 = lab.node("bm1")
    files = ["/etc/aliases", "/etc/aliases.db", "/etc/sysctl.conf", "/etc/ssl/certs/bm_cert.pem",
             "/var/lib/bm-ca/ca-cert.pem", "/usr/share/bm-elasticsearch/config/elasticsearch.yml"]
    r1 = batch(bm1, "fuser /var/lib/dpkg/lock-frontend", "fuser -v /var/lib/dpkg/lock", "fuser /nonexistent",
               "stat -f -c %T /var/spool/cyrus/meta", "stat -f -c '%a %S %s %b' /var/lib/postgresql",
               "stat -f -c %T /nope", "stat -f /", "sha256sum " + " ".join(files), "sha256sum /etc/nope",
               "stat -c %s /etc/aliases", "findmnt -n -o FSTYPE --target /var/spool/cyrus/meta")
    r2 = batch(lab.node("bm2"), "sha256sum " + " ".join(files))
    assert (r1[0].rc, r1[0].out) == (1, "") and r1[1].rc == 1 and r1[2].rc == 1
    assert r1[3].out == "ext2/ext3\n"
    a, S, s, b = map(int, r1[4].out.split())
    assert S == s == 4096 and 0 < a < b
    assert r1[5].rc == 1 and "cannot read file system information for '/nope'" in r1[5].err
    assert "Type: ext2/ext3" in r1[6].out
    got = [line.split("  ") for line in r1[7].out.splitlines()]
    assert [p for _, p in got] == files  # the original absolute paths
    assert got[0][0] == hashlib.sha256((bm1.root / "etc/aliases").read_bytes()).hexdigest()
    assert r1[7].out == r2[0].out  # identical on both nodes at start
    assert r1[8].rc == 1 and "sha256sum: /etc/nope: No such file or directory" in r1[8].err
    assert r1[9].text == str((bm1.root / "etc/aliases").stat().st_size)
    assert r1[10].out == "ext4\n"


def test_rsync_and_scp_copy_between_node_roots(lab, batch):
    bm1, bm2 = lab.nodes
    (bm1.root / "etc/aliases").write_text("changed on bm1\n")
    (bm1.root / "etc/sysctl.conf").write_text("sysctl on bm1\n")
    (bm1.root / "etc/nginx/bm-local.d/site.conf").write_text("server {}\n")
    os.chmod(bm1.root / "etc/sysctl.conf", 0o640)
    os.utime(bm1.root / "etc/sysctl.conf", (1_700_000_000, 1_700_000_000))
    r = batch(bm1, "rsync -a --relative /etc/aliases 127.0.0.12:/", "rsync -avR /etc/nginx/bm-local.d bm2:/",
              "scp /etc/sysctl.conf bm2:/etc/sysctl.conf", "rsync -a /etc/aliases bm9:/", "rsync --frob x bm2:/",
              "rsync -a /etc/nope bm2:/")
    assert [x.rc for x in r[:3]] == [0, 0, 0]
    assert (bm2.root / "etc/aliases").read_text() == "changed on bm1\n"
    assert (bm2.root / "etc/nginx/bm-local.d/site.conf").read_text() == "server {}\n"
    assert (bm2.root / "etc/sysctl.conf").read_text() == "sysctl on bm1\n"
    copied = (bm2.root / "etc/sysctl.conf").stat()
    assert (copied.st_mode & 0o777, copied.st_mtime) == (0o640, 1_700_000_000)  # like cp -p / rsync -a
    assert r[3].rc == 255 and "Could not resolve hostname bm9" in r[3].err
    assert r[4].rc == 1 and "unknown option" in r[4].err
    assert r[5].rc == 23
    bm2.down()
    r = batch(bm1, "rsync -a /etc/aliases bm2:/etc/aliases", "scp /etc/aliases root@bm2:/etc/")
    assert r[0].rc == 255 and "Connection refused" in r[0].err and r[1].rc == 255


def test_sudo_standin(lab, batch):
    bm1 = lab.node("bm1")
    r = batch(bm1, "sudo -n apt-mark showhold; echo rc=$?", "sudo -S -p '[sudo] password: ' systemctl is-active pacemaker")
    assert r[0].out == "rc=0\n" and r[1].out == "active\n"
    bm1.set_state(sudo_password="s3cret")
    ok = bm1.ssh("sudo -S -p 'pw: ' systemctl is-active pacemaker", input="s3cret\n")
    bad = bm1.ssh("sudo -S -p 'pw: ' true", input="x\ny\nz\n")
    assert ok.returncode == 0 and ok.stdout == "active\n" and "pw: " in ok.stderr
    assert bad.returncode == 1 and "3 incorrect password attempts" in bad.stderr
    assert all("s3cret" not in " ".join(c["argv"]) for c in bm1.calls())


# ---------------------------------------------------------------- the stand-ins' JSON codec
from hypothesis import given, settings, strategies as st  # noqa: E402

from bmupgrade.lab.core import STANDINS_SRC, bmlab as _bmlab  # noqa: E402

_BMLAB_DIR = STANDINS_SRC.parent

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_json_values, st.booleans())
def test_standin_json_codec_matches_the_json_module(value, sort_keys):
    import json

    text = _bmlab.json_dumps(value, sort_keys=sort_keys)
    assert text == json.dumps(value, sort_keys=sort_keys)
    assert _bmlab.json_loads(text) == json.loads(text)
    assert _bmlab.json_loads(json.dumps(value, indent=1) + "\n") == json.loads(text)


@pytest.mark.parametrize("bad", ["", "{", '{"a": 1} x', "nul", "[1,]", "[1", '{"a": [1, 2'])
def test_standin_json_codec_refuses_what_json_refuses(bad):
    with pytest.raises(ValueError):
        _bmlab.json_loads(bad)


def test_standin_json_codec_refuses_bad_json_as_a_stand_in_call_does():
    """In a stand-in call the json module is never imported; _json's scanner then reports some
    errors (an unclosed list) as SystemError: the codec must still say ValueError."""
    import json

    code = ("import bmlab\nfor bad in ['[1', '{\"a\": [1, 2', '{']:\n    try:\n        bmlab.json_loads(bad)\n"
            "    except ValueError:\n        print('ValueError')\n")
    r = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", "import sys; sys.path.insert(0, %s)\n%s"
                        % (json.dumps(str(_BMLAB_DIR)), code)], capture_output=True, text=True)
    assert r.stdout.split() == ["ValueError"] * 3, r.stdout + r.stderr


def _format_fields_reference(fmt, fields):
    """dpkg-query --showformat as the stand-in first wrote it, with `re` (now avoided: 3 ms a call)."""
    import re

    fmt = fmt.replace("\\n", "\n").replace("\\t", "\t").replace("\\\\", "\\")

    def sub(m):
        name, _, width = m.group(1).partition(";")
        val = fields.get(name, "")
        if width:
            w = int(width)
            val = val.rjust(-w) if w < 0 else val.ljust(w)
        return val
    return re.sub(r"\$\{([^}]+)\}", sub, fmt)


_fmt_pieces = st.sampled_from(["${Version}", "${binary:Package}", "${Package;-12}", "${Version;9}", "${Nope}",
                               "${", "}", "${}", "$", "\\n", "\\t", "\\\\", "\t", " ", "x", "é"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_fmt_pieces, max_size=12).map("".join))
def test_standin_showformat_matches_the_regex_reference(fmt):
    fields = {"Version": "4.9.2", "binary:Package": "bm-full", "Package": "bm-full"}
    assert _bmlab.format_fields(fmt, fields) == _format_fields_reference(fmt, fields)


@pytest.mark.parametrize("name,pattern,match", [("bm-full", "bm-full", True), ("bm-full", "bm-fu", False),
                                                ("bm-core", "bm-*", True), ("bm-core", "bm-[cn]ore", True),
                                                ("bm-node", "bm-?ore", False)])
def test_standin_package_patterns(name, pattern, match):
    assert _bmlab._glob_match(name, pattern) is match


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab &<>\"'\n\r\té"))))
def test_standin_quoteattr_matches_saxutils(text):
    from xml.sax.saxutils import quoteattr

    assert _bmlab.quoteattr(text) == quoteattr(text)


def test_standin_spawn_gives_exit_code_and_output_like_subprocess(tmp_path):
    """The stand-ins run tools without the subprocess module: same exit codes (-N for a signal),
    output captured in full (more than a pipe holds), stdin from /dev/null when asked."""
    script = "head -c 200000 /dev/zero | tr '\\0' x; echo err >&2; read -r line && echo got; exit 3"
    code, out, err = _bmlab.spawn(["sh", "-c", script], capture=True, stdin_null=True)
    assert (code, len(out), err) == (3, 200000, b"err\n")
    assert _bmlab.spawn(["sh", "-c", "kill -TERM $$"]) == -15
    with pytest.raises(FileNotFoundError):
        _bmlab.spawn(["bmlab-no-such-tool"])
