"""The bundled Pacemaker runbook on the REAL cluster lab (issue 13 on top of issue 12): real
Corosync/Pacemaker (crm_resource --refresh/--cleanup/--wait, cibadmin, crm_simulate, crm_mon XML),
real apt/dpkg with BlueMind-shaped packages (bm-conf's postinst starts bluemind.target,
bm-plugin-filehosting depends on exactly bm-core (= version)).

The cluster lab's nodes have no BlueMind REST API (no bm-core answering /api), so the three
API commands of the runbook (DataProtect executions, installation state, installation version)
are replaced, in a copy of the runbook, by what the node can tell: bluemind.target's state and
/var/lib/bm-setup/version against bm-core's version. Everything else is the bundled runbook.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e import API_FREE, PACEMAKER, bmupgrade
from tests.test_cluster_lab import require_cluster, versions

pytestmark = [pytest.mark.cluster, pytest.mark.slow]



@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_cluster()
    from bmupgrade.lab.cluster.lab import ClusterLab

    lab = ClusterLab(tmp_path_factory.mktemp("cluster13") / "lab", name="bmi13", subnet="10.213.13.0/24")
    try:
        lab.up()
        yield lab
    finally:
        left = lab.down()
    assert left == [], left


@pytest.fixture(scope="module")
def runbook(tmp_path_factory):
    text = open(PACEMAKER).read()
    for old, new in API_FREE:
        assert old in text, old
        text = text.replace(old, new)
    p = tmp_path_factory.mktemp("rb13") / "pacemaker-cluster-lab.yaml"
    p.write_text(text)
    return str(p)


def run(cluster, runbook, state):
    return bmupgrade("run", runbook, "-i", str(cluster.inventory_path), "--yes", "--ack", "backup,prepare",
                     "-e", "config_sync_command=true", state=state, timeout=600)


def calls(cluster, node):
    out = cluster.run(node, "cat /var/log/bmlab/calls.log 2>/dev/null").stdout
    return [" ".join(line.split()[1:]) for line in out.splitlines()]


def sent(state, node):
    """The commands bmupgrade sent to a node, in order (its audit log)."""
    [audit] = [p for p in (state / "runs").glob("*.audit.jsonl")]
    return [e["command"] for e in map(json.loads, audit.read_text().splitlines()) if e.get("node") == node]


def test_the_package_simulation_refuses_a_removal_on_real_apt(cluster, runbook, tmp_path):
    # a connector that depends on exactly bm-core (= 4.9.2) and has no 4.9.3: real apt would remove it
    pkg = "/tmp/bluemind-connector-legacy"
    r = cluster.run("bm2", "rm -rf %s && mkdir -p %s/DEBIAN && printf '%%s\\n' 'Package: bluemind-connector-legacy' "
                           "'Version: 4.9.2' 'Architecture: all' 'Maintainer: test <t@invalid>' "
                           "'Depends: bm-core (= 4.9.2)' 'Description: connector (test)' > %s/DEBIAN/control && "
                           "dpkg-deb --build %s %s.deb >/dev/null && dpkg -i %s.deb" % ((pkg,) * 6))
    assert r.returncode == 0, r.stdout + r.stderr
    before = versions(cluster)
    try:
        res = run(cluster, runbook, tmp_path / "s")
        assert res.returncode == 1, res.stdout + res.stderr
        assert "Remv bluemind-connector-legacy" in res.stdout and "REFUSED" in res.stdout
        assert versions(cluster) == before  # nothing installed
        mon = cluster.crm_mon()
        assert mon["options"].get("maintenance-mode") == "false" and all(x["managed"] for x in mon["resources"].values())
        assert not any("mask" in c for c in calls(cluster, "bm2"))
    finally:
        cluster.run("bm2", "dpkg -r bluemind-connector-legacy >/dev/null")


def test_pacemaker_runbook_on_the_real_cluster(cluster, runbook, tmp_path):
    cluster.run("bm1", "crm_resource --cleanup >/dev/null")
    state = tmp_path / "s"
    seen = len(calls(cluster, "bm2"))  # the node's boot and first install came before
    r = run(cluster, runbook, state)
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


# --------------------------------------------------------------------------- keepalived (real VRRP)
@pytest.fixture(scope="module")
def ka(tmp_path_factory):
    import shutil

    from tests.conftest import _missing

    require_cluster()
    if not shutil.which("keepalived"):
        _missing("the keepalived cluster lab needs: apt-get install --no-install-recommends keepalived")
    from bmupgrade.lab.cluster.lab import ClusterLab

    lab = ClusterLab(tmp_path_factory.mktemp("ka13") / "lab", name="bmka13", subnet="10.213.14.0/24", ha="keepalived")
    try:
        lab.up()
        yield lab
    finally:
        left = lab.down()
    assert left == [], left


@pytest.fixture(scope="module")
def ka_runbook(tmp_path_factory):
    from tests.e2e import KEEPALIVED

    text = open(KEEPALIVED).read()
    for old, new in API_FREE:
        assert old in text, old
        text = text.replace(old, new)
    p = tmp_path_factory.mktemp("ka13rb") / "keepalived-cluster-lab.yaml"
    p.write_text(text)
    return str(p)


def test_keepalived_runbook_on_real_vrrp(ka, ka_runbook, tmp_path):
    from tests.test_cluster_lab import eventually

    assert eventually(ka.vip_holders, ["bm1"]) == ["bm1"]
    seen = {n: len(calls(ka, n)) for n in ("bm1", "bm2")}
    state = tmp_path / "s"
    r = bmupgrade("run", ka_runbook, "-i", str(ka.inventory_path), "--yes", "--ack", "backup,prepare",
                  "--allow-no-stonith", "-e", "config_sync_command=true", state=state, timeout=600)
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
