"""The real cluster lab with keepalived (`bmupgrade lab up --cluster --ha keepalived`).

Real keepalived in both nodes (VRRP over the lab bridge, unicast), started and stopped by the
node's systemctl stand-in; a notify script runs BlueMind on the MASTER. The bundled keepalived
runbook freezes failover by stopping keepalived on the BACKUP: these tests check that on the
real daemons. Needs what tests/test_cluster_lab.py needs, plus keepalived.
"""

from __future__ import annotations

import glob
import json

import pytest

from tests.e2e import KEEPALIVED, cluster_upgrade
from tests.test_cluster_lab import booted, calls, eventually, host_dpkg, versions

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def ka(tmp_path_factory):
    before = host_dpkg()
    with booted(tmp_path_factory, "ka", name="bmka", subnet="10.213.18.0/24", ha="keepalived") as lab:
        yield lab
    assert host_dpkg() == before


def upgrade(lab, state, **kw):
    return cluster_upgrade(lab, state, "--allow-no-stonith", runbook=KEEPALIVED, **kw)  # VRRP has no fencing


def test_power_off_master_moves_the_vip_by_vrrp(ka, tmp_path):
    from bmupgrade.lab.cluster import faults
    assert eventually(ka.vip_holders, ["bm1"]) == ["bm1"]
    faults.power_off(ka, "bm1")
    assert eventually(ka.vip_holders, ["bm2"]) == ["bm2"]
    # keepalived's notify script started BlueMind on the new MASTER
    assert eventually(lambda: ka.run("bm2", "systemctl is-active bluemind.target").stdout.strip(), "active") == "active"
    power = [json.loads(x) for x in (ka.dir / "power.log").read_text().splitlines()]
    assert not [p for p in power if p.get("by") in ("bm1", "bm2")], "nobody fences with keepalived"
    r = upgrade(ka, tmp_path / "s")
    assert r.returncode == 3 and "bm1" in r.stdout + r.stderr, r.stdout + r.stderr
    faults.clear(ka)
    # bm1 (priority 150, no nopreempt) takes the VIP back, BlueMind follows
    assert eventually(ka.vip_holders, ["bm1"]) == ["bm1"]
    assert eventually(lambda: ka.run("bm2", "systemctl is-active bluemind.target").stdout.strip(), "inactive") == "inactive"


def test_rollback_that_restarts_keepalived_needs_the_risk_accepted(ka, tmp_path):
    """Rolling back the HA-off step starts keepalived on the backup again: automatic failover
    back on, on a stack with no fencing. A step fails inside the window (HA off); `rollback
    --yes` is refused before it changes anything (keepalived stays stopped on the backup), and
    `rollback --yes --allow-no-stonith` restarts it, on the real daemons. Runs before the upgrade
    test below (same lab; a module's tests run in file order): the nodes are still at 4.9.2."""
    from tests.e2e import bmupgrade, one_line

    text = open(KEEPALIVED).read()
    anchor = "  - id: packages\n"
    assert text.count(anchor) == 1
    failing = tmp_path / "keepalived-failing.yaml"
    failing.write_text(text.replace(anchor, "  - {id: fails, on: all, run: 'false', rollback: []}\n" + anchor))
    assert eventually(ka.vip_holders, ["bm1"]) == ["bm1"]
    assert all(set(v.values()) == {"4.9.2"} for v in versions(ka).values())
    state = tmp_path / "s"
    r = cluster_upgrade(ka, state, "--allow-no-stonith", runbook=str(failing), timeout=300)
    assert r.returncode == 5, r.stdout + r.stderr
    assert ka.run("bm2", "systemctl is-active keepalived").stdout.strip() == "inactive"
    r = bmupgrade("rollback", "--yes", state=state)
    out = one_line(r.stdout + r.stderr)
    assert r.returncode == 5 and "Rollback refused (unattended): undoing 'ha-off' turns automatic failover back on: " \
        "this HA stack has no fencing" in out and "Nothing was changed." in out, out
    assert ka.run("bm2", "systemctl is-active keepalived").stdout.strip() == "inactive"
    assert ka.run("bm2", "systemctl is-enabled bluemind.target").stdout.strip().startswith("masked")
    r = bmupgrade("rollback", "--yes", "--allow-no-stonith", state=state, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ka.run("bm2", "systemctl is-active keepalived").stdout.strip() == "active"
    assert not ka.run("bm2", "systemctl is-enabled bluemind.target").stdout.strip().startswith("masked")
    assert eventually(ka.vip_holders, ["bm1"]) == ["bm1"]


def test_keepalived_runbook_upgrades_with_real_vrrp(ka, tmp_path):
    assert eventually(ka.vip_holders, ["bm1"]) == ["bm1"]
    r = upgrade(ka, tmp_path / "s", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(set(v.values()) == {"4.9.3"} for v in versions(ka).values())
    # while dpkg ran: keepalived stopped on the BACKUP (failover frozen), running on the MASTER
    for node, want in (("bm1", "active"), ("bm2", "inactive")):
        snaps = sorted(glob.glob(str(ka.cfg.node_dir(node) / "upper/var/log/bmlab/dpkg/*.keepalived")))
        assert open(snaps[-1]).read().strip() == want, node
    assert len(calls(ka, "bm1", "bm-cli setup upgrade")) == 1 and not calls(ka, "bm2", "bm-cli")
    assert ka.vip_holders() == ["bm1"]
    for node in ("bm1", "bm2"):
        assert ka.run(node, "systemctl is-active keepalived").stdout.strip() == "active"
    assert ka.run("bm2", "systemctl is-active bluemind.target").stdout.strip() == "inactive"

