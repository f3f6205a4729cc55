"""The bundled runbooks, as shipped, on the REAL cluster lab (issue 13 on top of issue 12): real
Corosync/Pacemaker (crm_resource --refresh/--cleanup/--wait, cibadmin, crm_simulate, crm_mon XML),
real apt/dpkg with BlueMind-shaped packages (bm-conf's postinst starts bluemind.target,
bm-plugin-filehosting depends on exactly bm-core (= version)), BlueMind's REST API on each node
(bm-nginx on 443: the installation state and version from dpkg and `bm-cli setup upgrade`,
DataProtect executions) and csync2 pushing the synchronized files with rsync over ssh.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from tests.e2e import KEEPALIVED, PACEMAKER, bmupgrade
from tests.test_cluster_lab import booted, versions

pytestmark = [pytest.mark.cluster, pytest.mark.slow]



@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with booted(tmp_path_factory, "cluster13", name="bmi13", subnet="10.213.13.0/24") as lab:
        yield lab


def run(cluster, state, runbook=PACEMAKER, *extra):
    return bmupgrade("run", runbook, "-i", str(cluster.inventory_path), "--yes", "--ack", "backup,prepare",
                     *extra, state=state, timeout=600)


def calls(cluster, node):
    out = cluster.run(node, "cat /var/log/bmlab/calls.log 2>/dev/null").stdout
    return [" ".join(line.split()[1:]) for line in out.splitlines()]


def sent(state, node):
    """The commands bmupgrade sent to a node, in order (its audit log)."""
    [audit] = [p for p in (state / "runs").glob("*.audit.jsonl")]
    return [e["command"] for e in map(json.loads, audit.read_text().splitlines()) if e.get("node") == node]


def api(cluster, node, path, *curl_opts, token=None):
    """(HTTP status, body) of BlueMind's API on the node, asked as the runbooks ask it: curl -k,
    the key X-BM-ApiKey read from stdin (the node's /etc/bm/bm-core.tok unless `token`)."""
    tok = '"$(cat /etc/bm/bm-core.tok)"' if token is None else shlex.quote(token)
    r = cluster.run(node, "printf 'X-BM-ApiKey: %%s\\n' %s | curl -sS -k -H @- -w '\\n%%{http_code}' %s "
                          "https://localhost/api%s" % (tok, " ".join(curl_opts), path))
    assert r.returncode == 0, r.stderr
    body, _, code = r.stdout.rpartition("\n")
    return int(code), body


SEARCH = ("-H 'Content-Type: application/json'", """-d '{"jobId": "DataProtect", "active": true}'""")


def api_log(cluster, node):
    """bm-nginx's request lines on the node: (method, path, status, body)."""
    out = cluster.run(node, "cat /var/log/bmlab/bm-nginx.log 2>/dev/null").stdout
    return [tuple(m.groups()) for m in re.finditer(r"(?m)^\S+ \S+ (GET|POST|PUT|DELETE) (\S+) (\d+) (.*)$", out)]


def test_the_package_simulation_refuses_a_removal_on_real_apt(cluster, tmp_path):
    # a connector that depends on exactly bm-core (= 4.9.2) and has no 4.9.3: real apt would remove it
    pkg = "/tmp/bluemind-connector-legacy"
    r = cluster.run("bm2", "rm -rf %s && mkdir -p %s/DEBIAN && printf '%%s\\n' 'Package: bluemind-connector-legacy' "
                           "'Version: 4.9.2' 'Architecture: all' 'Maintainer: test <t@invalid>' "
                           "'Depends: bm-core (= 4.9.2)' 'Description: connector (test)' > %s/DEBIAN/control && "
                           "dpkg-deb --build %s %s.deb >/dev/null && dpkg -i %s.deb" % ((pkg,) * 6))
    assert r.returncode == 0, r.stdout + r.stderr
    before = versions(cluster)
    try:
        res = run(cluster, tmp_path / "s")
        assert res.returncode == 1, res.stdout + res.stderr
        assert "Remv bluemind-connector-legacy" in res.stdout and "REFUSED" in res.stdout
        assert versions(cluster) == before  # nothing installed
        mon = cluster.crm_mon()
        assert mon["options"].get("maintenance-mode") == "false" and all(x["managed"] for x in mon["resources"].values())
        assert not any("mask" in c for c in calls(cluster, "bm2"))
    finally:
        cluster.run("bm2", "dpkg -r bluemind-connector-legacy >/dev/null")


# --------------------------------------------------------------------------- BlueMind's API, csync2
def test_bluemind_api_answers_from_the_node_state(cluster):
    """bm-nginx, a real HTTPS daemon on both nodes (bm-client-access's postinst enables it), asked
    with curl: the core's answers on the VIP holder, 401 without the key, 502 on the passive
    node (BlueMind stopped behind nginx), DataProtect executions follow the fault."""
    from bmupgrade.lab.cluster import faults
    for n in ("bm1", "bm2"):
        r = cluster.run(n, "systemctl is-active bm-nginx && "
                           "tr '\\0' ' ' < /proc/$(cat /run/bmlab-units/bm-nginx.service.pid)/cmdline")
        assert r.stdout.startswith("active\n") and "/usr/sbin/bm-nginx" in r.stdout, (n, r.stdout, r.stderr)
    assert api(cluster, "bm1", "/system/installation/state") == (200, '"CORE_STATE_RUNNING"')
    code, body = api(cluster, "bm1", "/system/installation/version")
    assert (code, json.loads(body)) == (200, {"softwareVersion": "4.9.2", "databaseVersion": "4.9.2",
                                              "needsUpgrade": False})
    assert api(cluster, "bm1", "/system/installation/state", token="wrong")[0] == 401
    assert api(cluster, "bm1", "/system/installation/state", token="")[0] == 401
    assert api(cluster, "bm2", "/system/installation/state")[0] == 502
    assert api(cluster, "bm1", *("/scheduledjobs/_searchExecution",) + SEARCH) == (200, '{"total":0,"values":[]}')
    r = subprocess.run([sys.executable, "-m", "bmupgrade", "lab", "fault", "backup-running", "--node", "bm1",
                        "--dir", str(cluster.dir)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "fault backup-running on bm1", r.stdout + r.stderr
    try:
        code, body = api(cluster, "bm1", *("/scheduledjobs/_searchExecution",) + SEARCH)
    finally:
        faults.backup_running(cluster, "bm1", on=False)
    found = json.loads(body)
    assert code == 200 and found["total"] == 1
    assert [(v["jobId"], v["status"]) for v in found["values"]] == [("DataProtect", "IN_PROGRESS")]
    assert api(cluster, "bm1", "/scheduledjobs/_searchExecution", "-d '{not json'")[0] == 400
    assert api(cluster, "bm1", "/system/nosuch")[0] == 404
    # a real certificate for localhost (the lab's, on both nodes), and the node's address from the host
    r = cluster.run("bm1", "curl -sS --cacert /etc/ssl/certs/bm_cert.pem -o /dev/null -w '%{http_code}' "
                           "https://localhost/api/system/installation/state")
    assert r.stdout == "401", r.stderr
    r = subprocess.run(["curl", "-sS", "-k", "-o", "/dev/null", "-w", "%{http_code}",
                        "https://%s/api/system/installation/state" % cluster.cfg.node("bm2").address],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout == "502", r.stderr


def test_csync2_pushes_from_the_node_it_runs_on_only(cluster):
    """`csync2 -x` on bm1: bm1's new /etc/bm file reaches bm2 with real rsync over ssh; a file only
    bm2 has stays on bm2 and is not copied back. Anything but -x is a usage error."""
    try:
        cluster.run("bm1", "echo from-bm1 > /etc/bm/lab-test.conf", check=True)
        cluster.run("bm2", "echo from-bm2 > /etc/nginx/bm-local.d/lab-test.conf", check=True)
        r = cluster.run("bm1", "csync2 -x")
        assert r.returncode == 0, r.stderr
        assert cluster.run("bm2", "cat /etc/bm/lab-test.conf").stdout == "from-bm1\n"
        assert cluster.run("bm1", "test -e /etc/nginx/bm-local.d/lab-test.conf").returncode == 1
        assert "bm1 -> bm2: " in cluster.run("bm1", "cat /var/log/bmlab/csync2.log").stdout
        assert cluster.run("bm2", "test -e /var/log/bmlab/csync2.log").returncode == 1
        r = cluster.run("bm1", "csync2 -T")
        assert r.returncode == 1 and "usage: csync2 -x" in r.stderr
    finally:
        for n in ("bm1", "bm2"):
            cluster.run(n, "rm -f /etc/bm/lab-test.conf /etc/nginx/bm-local.d/lab-test.conf")


# --------------------------------------------------------------------------- the window, end to end
def maintenance_in_cib(cluster):
    """maintenance-mode as the CIB itself stores it (unset: the default, false)."""
    cib = cluster.run("bm1", "cibadmin --query --scope crm_config", check=True).stdout
    m = re.search(r'name="maintenance-mode" value="([^"]*)"', cib)
    return m.group(1) if m else "unset"


def node_state(cluster):
    """What a refused run must not change: packages, HA, dpkg runs (the dpkg hook's snapshots)."""
    dpkg_runs = {n: cluster.run(n, "ls /var/log/bmlab/dpkg 2>/dev/null | wc -l").stdout.strip() for n in ("bm1", "bm2")}
    return {"versions": versions(cluster), "maintenance": maintenance_in_cib(cluster), "dpkg runs": dpkg_runs}


@pytest.fixture(scope="module")
def window(cluster, tmp_path_factory):
    """A DataProtect backup runs on the VIP holder: the first run is refused; once the backup has
    ended, the second run upgrades. The tests below assert what each run did."""
    from bmupgrade.lab.cluster import faults
    d = tmp_path_factory.mktemp("window")
    cluster.run("bm1", "crm_resource --cleanup >/dev/null")
    before = node_state(cluster)
    faults.backup_running(cluster, "bm1")
    try:
        refused = run(cluster, d / "refused")
        after_refusal = node_state(cluster)
    finally:
        faults.backup_running(cluster, "bm1", on=False)
    seen = {n: (len(calls(cluster, n)), len(api_log(cluster, n))) for n in ("bm1", "bm2")}
    upgraded = run(cluster, d / "upgraded")
    return SimpleNamespace(before=before, refused=refused, after_refusal=after_refusal, seen=seen,
                           upgraded=upgraded, state=d / "upgraded", refused_state=d / "refused")


def test_a_running_backup_refuses_the_window(cluster, window):
    r = window.refused
    assert r.returncode == 3, r.stdout + r.stderr
    assert "no-backup-running" in r.stdout
    assert window.after_refusal == window.before and window.before["maintenance"] != "true"
    for n in ("bm1", "bm2"):  # only the preflight's reads went out
        assert not [c for c in sent(window.refused_state, n)
                    if "apt-get install" in c or "--update" in c or "csync2" in c or "bm-cli" in c], n


def test_once_the_backup_ended_the_pacemaker_runbook_upgrades_the_real_cluster(cluster, window):
    r, state, seen = window.upgraded, window.state, window.seen["bm2"][0]
    assert r.returncode == 0, r.stdout + r.stderr
    # real apt: every bm-* package at 4.9.3 on both nodes, plugins included, none removed
    for n, v in versions(cluster).items():
        assert set(v.values()) == {"4.9.3"} and {"bm-plugin-filehosting", "bm-plugin-cli-setup"} <= set(v), (n, v)
    # the passive node never ran BlueMind: bm-conf's postinst tried, inside the runtime mask
    bm2 = calls(cluster, "bm2")[seen:]
    mask = bm2.index("systemctl mask --runtime bluemind.target")
    unmask = bm2.index("systemctl unmask --runtime bluemind.target")
    starts = [i for i, c in enumerate(bm2) if c == "systemctl start bluemind.target"]
    assert starts and all(mask < i < unmask for i in starts), bm2
    assert not any(c.startswith("systemctl mask") and "bm-nginx" in c for c in bm2)
    assert cluster.run("bm2", "systemctl is-active bluemind.target").stdout.strip() == "inactive"
    assert not any("bm-cli" in c for c in bm2)
    # post-install on the VIP holder only, after the core was up
    assert [c for c in calls(cluster, "bm1") if c.startswith("bm-cli")] == ["bm-cli setup upgrade"]
    assert cluster.run("bm1", "cat /var/lib/bm-setup/version").stdout.strip() == "4.9.3"
    # ClusterLabs' reattach, in this order, on the VIP holder (offsets in the text of every command
    # sent there: a step's list of commands may travel as one script)
    text = "\n".join(sent(state, "bm1"))

    def at(needle, start=0):
        i = text.find(needle, start)
        assert i >= 0, (needle, start)
        return i
    off = at("maintenance-mode --update true")
    refresh = at("crm_resource --refresh")
    wait = at("crm_resource --wait", refresh)
    multi = at("crm_mon -1 --output-as=xml", wait)
    preview = at("crm_simulate --xml-file", multi)
    on = at("crm_attribute --type crm_config --name maintenance-mode --update false", preview)
    cleanup = at("crm_resource --cleanup", on)
    settle = at("crm_resource --wait", cleanup)
    assert off < refresh < wait < multi < preview < on < cleanup < settle
    # Pacemaker manages everything again, and nothing moved
    mon = cluster.crm_mon()
    assert mon["options"]["maintenance-mode"] == "false" and all(x["managed"] for x in mon["resources"].values())
    assert cluster.vip_holders() == ["bm1"]
    assert {r: v["nodes"] for r, v in mon["resources"].items() if r in ("vip", "bluemind")} == \
        {"vip": ["bm1"], "bluemind": ["bm1"]}
    assert "resources-did-not-move" in r.stdout and "Upgrade complete" in r.stdout
    assert os.path.exists(state)


def test_the_api_answered_honestly_through_the_run(cluster, window):
    """What bm-nginx answered on the VIP holder during the run: the core in UPGRADE once the
    packages were in (core-ready), no upgrade pending after post-install (upgrade-complete);
    the passive node's API was never asked."""
    assert window.upgraded.returncode == 0
    asked = api_log(cluster, "bm1")[window.seen["bm1"][1]:]
    search, state, version = ([a for a in asked if a[1] == p] for p in (
        "/api/scheduledjobs/_searchExecution", "/api/system/installation/state", "/api/system/installation/version"))
    assert [(m, st, body) for m, _, st, body in search] == [("POST", "200", '{"total":0,"values":[]}')]
    assert [(st, body) for _, _, st, body in state] == [("200", '"CORE_STATE_UPGRADE"')]
    [(_, _, st, body)] = version
    assert st == "200" and json.loads(body) == {"softwareVersion": "4.9.3", "databaseVersion": "4.9.3",
                                                "needsUpgrade": False}
    assert asked.index(state[0]) < asked.index(version[0])
    assert api_log(cluster, "bm2")[window.seen["bm2"][1]:] == []
    # and what it says now, on the node
    code, body = api(cluster, "bm1", "/system/installation/version")
    assert code == 200 and json.loads(body)["needsUpgrade"] is False and json.loads(body)["softwareVersion"] == "4.9.3"
    assert api(cluster, "bm1", "/system/installation/state") == (200, '"CORE_STATE_RUNNING"')
    output = next((window.state / "runs").glob("*.output.log")).read_text()
    assert '"CORE_STATE_UPGRADE"' in output and '"needsUpgrade":false' in output


def test_config_sync_pushed_from_the_vip_holder_only(cluster, window):
    """config-sync ran the shipped `csync2 -x` on the VIP holder, once; the peer never pushed;
    afterwards the synchronized set is identical (the postflight compared it too)."""
    assert window.upgraded.returncode == 0
    new = {n: calls(cluster, n)[window.seen[n][0]:] for n in ("bm1", "bm2")}
    assert [c for c in new["bm1"] if c.startswith("csync2")] == ["csync2 -x"]
    assert not [c for c in new["bm2"] if c.startswith("csync2")]
    assert "config-in-sync-after" in window.upgraded.stdout
    paths = yaml.safe_load(open(PACEMAKER))["vars"]["sync_paths"].split()
    cfg = cluster.run("bm1", "cat /etc/csync2.cfg").stdout
    assert re.findall(r"(?m)^\s*include (\S+);", cfg) == paths  # csync2 pushes what the runbook compares
    sums = {n: cluster.run(n, "find %s -type f | LC_ALL=C sort | xargs -r sha256sum" % " ".join(paths)).stdout
            for n in ("bm1", "bm2")}
    assert sums["bm1"] == sums["bm2"] and "/etc/bm/bm-core.tok" in sums["bm1"]
    vhost = cluster.run("bm2", "cat /etc/nginx/sites-available/bm-client-access").stdout
    assert vhost.startswith("# generated by bm-client-access 4.9.3")


# --------------------------------------------------------------------------- keepalived (real VRRP)
@pytest.fixture(scope="module")
def ka(tmp_path_factory):
    with booted(tmp_path_factory, "ka13", name="bmka13", subnet="10.213.14.0/24", ha="keepalived") as lab:
        yield lab


def test_keepalived_runbook_on_real_vrrp(ka, tmp_path):
    from tests.test_cluster_lab import eventually

    assert eventually(ka.vip_holders, ["bm1"]) == ["bm1"]
    seen = {n: len(calls(ka, n)) for n in ("bm1", "bm2")}
    state = tmp_path / "s"
    r = run(ka, state, KEEPALIVED, "--allow-no-stonith")
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(set(v.values()) == {"4.9.3"} for v in versions(ka).values())
    new = {n: calls(ka, n)[seen[n]:] for n in ("bm1", "bm2")}
    # failover frozen and unfrozen on the same node (ha-on: where:ha-off), never on the MASTER
    assert "systemctl stop keepalived" in new["bm2"] and "systemctl start keepalived" in new["bm2"]
    assert new["bm2"].index("systemctl stop keepalived") < new["bm2"].index("systemctl start keepalived")
    assert not [c for c in new["bm1"] if c in ("systemctl stop keepalived", "systemctl start keepalived")]
    # the passive node's bluemind.target was masked around bm-conf's postinst
    bm2 = new["bm2"]
    starts = [i for i, c in enumerate(bm2) if c == "systemctl start bluemind.target"]
    assert starts and all(bm2.index("systemctl mask --runtime bluemind.target") < i
                          < bm2.index("systemctl unmask --runtime bluemind.target") for i in starts), bm2
    # the check scripts' maintenance file: set and cleared on both nodes
    for n in ("bm1", "bm2"):
        assert ka.run(n, "test -e /etc/keepalived/bm-maintenance").returncode == 1
    cmds = "\n".join(sent(state, "bm1"))
    assert cmds.find("touch /etc/keepalived/bm-maintenance") < cmds.find("apt-get install -y -q --no-remove -o") \
        < cmds.find("rm -f /etc/keepalived/bm-maintenance")
    assert ka.vip_holders() == ["bm1"] and not any(c.startswith("bm-cli") for c in bm2)
    for n in ("bm1", "bm2"):
        assert ka.run(n, "systemctl is-active keepalived").stdout.strip() == "active"
    assert ka.run("bm2", "systemctl is-active bluemind.target").stdout.strip() == "inactive"
