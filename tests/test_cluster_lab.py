"""The real cluster lab (`bmupgrade lab up --cluster`): real Corosync/Pacemaker, fencing, apt, dpkg.

One cluster is booted for the whole module (the first boot installs bm-full 4.9.2 in both
nodes); the tests run in file order and each leaves the cluster healthy for the next: contract
tests first (fresh 4.9.2 cluster, VIP on bm1), then runs the preflight must refuse (nothing may
change), then fencing, a VIP move, the end-to-end upgrade, and last two labs side by side and
teardown after a SIGKILLed supervisor. Needs root with CAP_SYS_ADMIN/CAP_NET_ADMIN and the
cluster stack: FAILS when CI=true and something is missing, skips otherwise.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import _missing, run_batch
from tests.e2e import cluster_upgrade

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def require_cluster() -> None:
    from bmupgrade.lab.cluster.config import ClusterLabError
    from bmupgrade.lab.cluster.lab import check_privileges, missing_tools
    try:
        check_privileges()
    except ClusterLabError as e:
        _missing(str(e))
    missing = missing_tools()
    if missing:
        _missing("the cluster lab needs: apt-get install --no-install-recommends %s" % " ".join(missing))


@contextlib.contextmanager
def booted(tmp_path_factory, dirname: str, **kw):
    """A cluster lab (ClusterLab(**kw)) up for a module's tests; down after, nothing left behind.
    `ha="keepalived"` also needs the keepalived binary."""
    require_cluster()
    if kw.get("ha") == "keepalived" and not shutil.which("keepalived"):
        _missing("the keepalived cluster lab needs: apt-get install --no-install-recommends keepalived")
    from bmupgrade.lab.cluster.lab import ClusterLab

    lab = ClusterLab(tmp_path_factory.mktemp(dirname) / "lab", **kw)
    try:
        lab.up()
        yield lab
    finally:
        left = lab.down()
    assert left == [], left


def host_dpkg() -> str:
    """The host's own dpkg database: the lab must never change it."""
    h = hashlib.sha256(open("/var/lib/dpkg/status", "rb").read())
    h.update("\n".join(sorted(os.listdir("/var/lib/dpkg/info"))).encode())
    return h.hexdigest()


class SshNode:
    """What tests.conftest.run_batch needs: a name and .ssh() through the lab's ssh_config."""

    def __init__(self, lab, name):
        self.lab, self.name = lab, name

    def ssh(self, command, *, timeout=30, input=None):
        return subprocess.run(["ssh", "-F", str(self.lab.ssh_config), self.name, command], input=input,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    before = host_dpkg()
    with booted(tmp_path_factory, "cluster", name="bmtest") as lab:
        yield lab
    assert host_dpkg() == before, "the cluster lab changed the host's /var/lib/dpkg"


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def calls(lab, node: str, word: str) -> list[str]:
    """Stand-in calls (systemctl, bmctl, bm-cli) logged inside the node."""
    out = lab.run(node, "cat /var/log/bmlab/calls.log 2>/dev/null").stdout
    return [line for line in out.splitlines() if " %s" % word in line]


def versions(lab) -> dict:
    from bmupgrade.lab.cluster import node
    return {n.name: node.versions(lab.cfg, n.name) for n in lab.cfg.nodes}


def placement(lab) -> dict:
    mon = lab.crm_mon()
    return {r: v["nodes"] for r, v in mon["resources"].items() if r in ("vip", "bluemind")}


def eventually(fn, expected, timeout: float = 30):
    """fn() once it equals expected (the cluster converges asynchronously), else its last value."""
    deadline = time.monotonic() + timeout
    value = fn()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        value = fn()
    return value


def assert_untouched(lab, before_versions):
    """A refused run changed nothing: versions, maintenance mode, placement, bm-cli."""
    assert versions(lab) == before_versions
    mon = lab.crm_mon()
    assert mon["options"].get("maintenance-mode") == "false"
    assert all(r["managed"] for r in mon["resources"].values())
    assert not calls(lab, "bm1", "bm-cli") and not calls(lab, "bm2", "bm-cli")


# --------------------------------------------------------------------------- without privileges
@pytest.mark.parametrize("how", [["setpriv", "--bounding-set=-sys_admin"],
                                 ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]],
                         ids=["no-cap-sys-admin", "not-root"])
def test_up_without_privileges_is_one_line_exit_2(how, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    d = tmp_path / "c"
    r = subprocess.run(how + [sys.executable, "-m", "bmupgrade", "lab", "up", "--cluster", "--dir", str(d)],
                       capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}, cwd="/")
    assert r.returncode == 2, r
    assert r.stderr.strip().count("\n") == 0 and "CAP_SYS_ADMIN" in r.stderr, r.stderr
    assert not d.exists() or not any(d.iterdir())


# --------------------------------------------------------------------------- a real cluster
def test_nodes_run_real_pacemaker_with_private_dpkg(cluster):
    mon = cluster.crm_mon()
    assert {n: v["online"] for n, v in mon["nodes"].items()} == {"bm1": True, "bm2": True}
    assert mon["options"]["stonith-enabled"] == "true"
    assert placement(cluster) == {"vip": ["bm1"], "bluemind": ["bm1"]}
    assert cluster.vip_holders() == ["bm1"]
    for n in ("bm1", "bm2"):
        r = cluster.run(n, "stonith_admin --list-registered; findmnt -n -o FSTYPE /var; hostname; "
                           "cat /proc/1/cmdline | tr '\\0' ' '")
        assert "fence-" in r.stdout and "\noverlay\n%s\n" % n in r.stdout and "bmupgrade.lab.cluster.init" in r.stdout
    assert versions(cluster)["bm1"]["bm-full"] == versions(cluster)["bm2"]["bm-full"] == "4.9.2"
    assert versions(cluster)["bm1"]["bm-plugin-filehosting"] == "4.9.2"
    # the tool reaches the nodes over real ssh with strict host keys
    r = SshNode(cluster, "bm2").ssh("hostname; systemctl is-active bluemind.target")
    assert r.stdout.split() == ["bm2", "inactive"]


def test_lab_status_cli(cluster):
    r = subprocess.run([sys.executable, "-m", "bmupgrade", "lab", "status", "--dir", str(cluster.dir), "--json"],
                       capture_output=True, text=True)
    st = json.loads(r.stdout)
    assert st["vip_holders"] == ["bm1"] and st["nodes"]["bm2"]["versions"]["bm-full"] == "4.9.2"
    assert st["crm_mon"]["resources"]["bluemind"]["nodes"] == ["bm1"]
    text = subprocess.run([sys.executable, "-m", "bmupgrade", "lab", "status", "--dir", str(cluster.dir)],
                          capture_output=True, text=True).stdout
    assert "VIP %s: bm1" % cluster.public_ip in text and "stonith-enabled true" in text


def test_same_name_twice_is_refused_before_anything(cluster, tmp_path):
    from bmupgrade.lab.cluster.config import ClusterLabError
    from bmupgrade.lab.cluster.lab import ClusterLab
    other = ClusterLab(tmp_path / "other", name="bmtest", subnet="203.0.113.0/24")
    with pytest.raises(ClusterLabError, match="already run"):
        other.up()
    same_subnet = ClusterLab(tmp_path / "third", name="bmother")
    with pytest.raises(ClusterLabError, match="already routed"):
        same_subnet.up()
    assert not (tmp_path / "other" / "nodes").exists()
    assert cluster.crm_mon()["nodes"]["bm2"]["online"]


# --------------------------------------------------------------------------- contract: stand-ins vs real
CONTRACT = [  # (command, compare stdout too) on bm2 (the passive node) of a fresh 4.9.2 cluster
    ("crm_attribute --type crm_config --name maintenance-mode --query --quiet", True),
    ("crm_attribute --type crm_config --name stonith-enabled --query --quiet", True),
    ("crm_attribute --type crm_config --name stonith-enabled --query", True),
    ("crm_resource --resource bluemind --locate", True),
    ("crm_resource --resource vip --locate -Q", True),
    ("crm_resource -r vip -W", True),
    ("crm_resource --resource vip --move --node bm1", False),
    ("crm_mon -1 | grep -ciE '(failed|offline|unclean|\\bstopped\\b)'", True),
    ("dpkg-query -W -f='${Version}' bm-full", True),
    ("dpkg-query -W -f='${Version}' nosuch", True),
    ("dpkg-query -W -f='${Package} ${Version}\\n' 'bm-*' | grep -c bm-", False),
    ("apt-get install -y -q bm-full=9.9.9", False),
    ("apt-cache show bm-full=9.9.9 | grep -c '^Version:'", True),
    ("apt-mark showhold", True),
    ("dpkg --audit", True),
    ("fuser /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock", True),
    ("ip -o addr show to {vip}", True),
    ("systemctl is-active bluemind.target", True),
]
# Not compared: whether bm-nginx runs on the passive node. The real lab's nodes start enabled
# units at boot as systemd does (bm-nginx is enabled by bm-client-access's postinst), the
# stand-in lab models a passive node with every BlueMind service stopped: a modelling choice,
# not a difference in how the commands answer.


def test_standins_answer_like_the_real_cluster(cluster, lab_factory):
    """Exit codes (and stdout where the runbooks parse it) of the commands the bundled runbooks
    use, on the passive node of a fresh cluster: the stand-in lab must answer the same."""
    from bmupgrade.lab.cluster.cib import VIP_RESOURCE
    standin = lab_factory(pacemaker="standin")
    standin.set_cluster_state(properties={"stonith-enabled": "true"})  # the real CIB sets it
    cmds = [c.replace("{vip}", cluster.public_ip) for c, _ in CONTRACT]
    real = run_batch(SshNode(cluster, "bm2"), *cmds)
    cluster.run("bm2", "crm_resource --resource %s --clear" % VIP_RESOURCE)
    fake = run_batch(standin.node("bm2"), *[c.replace(cluster.public_ip, standin.public_ip) for c in cmds])
    diffs = []
    for (cmd, out), r, f in zip(CONTRACT, real, fake):
        if r.rc != f.rc or (out and r.text.replace(cluster.public_ip, "VIP") != f.text.replace(standin.public_ip, "VIP")):
            diffs.append("%s: real rc=%d %r, stand-in rc=%d %r" % (cmd, r.rc, r.text[:80], f.rc, f.text[:80]))
    assert diffs == [], "\n".join(diffs)


# --------------------------------------------------------------------------- refusals: nothing changes
def _refused(cluster, state, check_id):
    before = versions(cluster)
    r = cluster_upgrade(cluster, state)
    assert r.returncode == 3, r.stdout + r.stderr
    assert check_id in r.stdout + r.stderr
    assert_untouched(cluster, before)
    return r


def test_dpkg_lock_apt_mark_hold_full_disk_and_backup_refuse(cluster, state):
    """Four real faults (one run, to keep the file short): a process holding the dpkg lock on
    bm2 (fcntl, as apt does), `apt-mark hold bm-core` on bm1, a nearly full
    /var/cache/apt/archives on bm2, a DataProtect backup in BlueMind's API on bm1. The
    preflight refuses (exit 3), lists all four, and nothing changed on the cluster."""
    from bmupgrade.lab.cluster import faults
    faults.dpkg_lock(cluster, "bm2")
    faults.held_package(cluster, "bm1", "bm-core")
    faults.disk_full(cluster, "bm2")
    faults.backup_running(cluster, "bm1")
    assert cluster.run("bm2", "fuser /var/lib/dpkg/lock-frontend").returncode == 0
    r = _refused(cluster, state, "dpkg-lock-free")
    for check in ("no-held-bm-packages", "free-disk", "no-backup-running"):
        assert check in r.stdout + r.stderr, check
    faults.clear(cluster)
    assert cluster.run("bm2", "fuser /var/lib/dpkg/lock-frontend").returncode == 1
    assert cluster.run("bm1", "apt-mark showhold").stdout == ""
    assert cluster.run("bm2", "mountpoint -q /var/cache/apt/archives").returncode == 32  # not a mountpoint
    assert cluster.run("bm1", "test -e /var/lib/bmlab/faults/backup-running").returncode == 1


def test_resource_failure_refuses_until_cleaned_up(cluster, state):
    from bmupgrade.lab.cluster import faults
    faults.resource_failure(cluster)
    assert eventually(lambda: bool(cluster.crm_mon()["failures"]), True), "Pacemaker did not notice"
    r = _refused(cluster, state, "cluster-healthy")
    assert "fail" in r.stdout.lower()
    faults.clear(cluster)
    assert cluster.crm_mon()["failures"] == [] and placement(cluster)["bluemind"] == ["bm1"]


# --------------------------------------------------------------------------- fencing, VIP moves
def test_power_off_vip_holder_is_fenced_and_the_vip_moves(cluster, state):
    from bmupgrade.lab.cluster import faults
    faults.power_off(cluster, "bm1")
    assert eventually(cluster.vip_holders, ["bm2"]) == ["bm2"]
    assert eventually(lambda: placement(cluster), {"vip": ["bm2"], "bluemind": ["bm2"]}) == {
        "vip": ["bm2"], "bluemind": ["bm2"]}
    mon = cluster.crm_mon()
    assert [(f["target"], f["status"]) for f in mon["fencing"]] == [("bm1", "success")]
    power = [json.loads(x) for x in (cluster.dir / "power.log").read_text().splitlines()]
    assert any(p.get("by") == "bm2" and p["node"] == "bm1" and p["action"] == "request-reboot" for p in power)
    # a run now: bm1 is unreachable, the preflight refuses and says so
    r = cluster_upgrade(cluster, state)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "bm1" in r.stdout + r.stderr
    faults.power_on(cluster, "bm1")
    cluster.wait_ready()
    assert placement(cluster) == {"vip": ["bm2"], "bluemind": ["bm2"]}  # stickiness: no move back


def test_vip_move_with_crm_resource(cluster):
    from bmupgrade.lab.cluster import faults
    assert faults.vip_move(cluster, "bm1") == "bm1"
    assert cluster.vip_holders() == ["bm1"] and placement(cluster) == {"vip": ["bm1"], "bluemind": ["bm1"]}
    constraints = cluster.run("bm1", "cibadmin --query --scope constraints").stdout
    assert "cli-prefer" not in constraints and "cli-ban" not in constraints
    assert cluster.run("bm2", "systemctl is-active bluemind.target").stdout.strip() == "inactive"


def test_cut_link_split_brain_is_fenced(cluster, state):
    """Cable of bm2 cut: both partitions lose each other; bm1 (priority-fencing-delay favours the
    node running the resources) fences bm2, which reboots without quorum (wait_for_all) and
    stays out until the link is back. A run meanwhile is refused."""
    from bmupgrade.lab.cluster import faults
    power_log = cluster.dir / "power.log"
    seen = len(power_log.read_text().splitlines())
    faults.cut_link(cluster, "bm2")
    try:
        def fenced():
            new = [json.loads(x) for x in power_log.read_text().splitlines()[seen:]]
            return [(p["node"], p["by"]) for p in new if p["action"].startswith("request-")]
        assert eventually(fenced, [("bm2", "bm1")]) == [("bm2", "bm1")]
        assert eventually(lambda: placement(cluster), {"vip": ["bm1"], "bluemind": ["bm1"]}) == {
            "vip": ["bm1"], "bluemind": ["bm1"]}
        assert cluster.vip_holders() == ["bm1"]
        r = cluster_upgrade(cluster, state)
        assert r.returncode == 3 and "bm2" in r.stdout + r.stderr, r.stdout + r.stderr
    finally:
        faults.restore_link(cluster, "bm2")
    cluster.wait_ready()
    assert cluster.vip_holders() == ["bm1"] and placement(cluster)["bluemind"] == ["bm1"]


# --------------------------------------------------------------------------- the upgrade, end to end
def test_pacemaker_runbook_upgrades_the_real_cluster(cluster, state):
    assert placement(cluster) == {"vip": ["bm1"], "bluemind": ["bm1"]}
    cluster.run("bm1", "crm_resource --cleanup >/dev/null")
    r = cluster_upgrade(cluster, state, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    # real apt: every bm-* package at 4.9.3 on both nodes, the plugin pinned to bm-core included
    for n, v in versions(cluster).items():
        assert set(v.values()) == {"4.9.3"} and "bm-plugin-filehosting" in v, (n, v)
    # real maintenance mode while dpkg ran: the dpkg hook's crm_mon/CIB snapshots on both nodes
    from bmupgrade.lab.cluster import crmmon
    for n in ("bm1", "bm2"):
        snaps = sorted(glob.glob(str(cluster.cfg.node_dir(n) / "upper/var/log/bmlab/dpkg/*.crm_mon.xml")))
        assert snaps, n
        mon = crmmon.parse(open(snaps[-1]).read())
        assert crmmon.maintenance(mon) and not any(r["managed"] for r in mon["resources"].values())
        cib = open(snaps[-1].replace(".crm_mon.xml", ".cib.xml")).read()
        assert re.search(r'name="maintenance-mode" value="true"', cib)
    # post-install on the VIP holder only; the passive node's bluemind.target stayed masked during its
    # postinst (issue 13's runbook), so nothing had to stop it afterwards
    assert len(calls(cluster, "bm1", "bm-cli setup upgrade")) == 1 and not calls(cluster, "bm2", "bm-cli")
    assert cluster.run("bm1", "cat /var/lib/bm-setup/version").stdout.strip() == "4.9.3"
    # HA back on, resources where they were, and what the tool reported is what Pacemaker says
    mon = cluster.crm_mon()
    assert mon["options"]["maintenance-mode"] == "false" and all(r["managed"] for r in mon["resources"].values())
    assert placement(cluster) == {"vip": ["bm1"], "bluemind": ["bm1"]} and cluster.vip_holders() == ["bm1"]
    assert "Upgrade complete" in r.stdout
    assert cluster.run("bm2", "systemctl is-active bluemind.target").stdout.strip() == "inactive"


@pytest.mark.parametrize("side", ["real", "standin"])
def test_downgrading_bm_full_alone_is_refused_by_real_apt(cluster, lab_factory, side):
    """At 4.9.3, `apt-get install --allow-downgrades bm-full=4.9.2` (the bundled runbooks' first
    packages rollback): real apt keeps the candidate 4.9.3 for bm-core & co and exits 100 (unmet
    dependencies), and so does the stand-in apt-get (it used to take every bm-* down with bm-full)."""
    cmd = "apt-get install -s -y -q --allow-downgrades bm-full=4.9.2"
    if side == "real":
        r = cluster.run("bm1", cmd)
    else:
        lab = lab_factory(pacemaker="standin")
        lab.node("bm1").set_state(installed={p: "4.9.3" for p in lab.node("bm1").state()["installed"]})
        r = lab.node("bm1").ssh(cmd)
    assert r.returncode == 100 and "unmet dependencies" in r.stdout, r.stdout + r.stderr


# --------------------------------------------------------------------------- side by side, teardown
def test_second_lab_side_by_side_and_down_after_supervisor_sigkill(cluster, tmp_path):
    from bmupgrade.lab.cluster.lab import ClusterLab, leftovers
    from bmupgrade.lab.cluster import node
    d = tmp_path / "lab2"
    r = subprocess.run([sys.executable, "-m", "bmupgrade", "lab", "up", "--cluster", "--dir", str(d),
                        "--name", "bmside", "--subnet", "203.0.113.0/24"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    lab2 = ClusterLab(d)
    assert lab2.vip_holders() == ["bm1"] and lab2.public_ip == "203.0.113.10"
    assert cluster.vip_holders() == ["bm1"] and cluster.crm_mon()["nodes"]["bm2"]["online"]
    inits = [node.init_pid(lab2.cfg, n) for n in ("bm1", "bm2")]
    os.kill(lab2.supervisor_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(os.path.exists("/proc/%d" % p) for p in inits) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(os.path.exists("/proc/%d" % p) for p in inits), "nodes outlived their supervisor"
    r = subprocess.run([sys.executable, "-m", "bmupgrade", "lab", "down", "--dir", str(d)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "nothing left behind" in r.stdout, r.stdout + r.stderr
    assert leftovers(lab2.cfg) == []
    assert cluster.crm_mon()["nodes"]["bm2"]["online"] and cluster.vip_holders() == ["bm1"]


# --------------------------------------------------------------------------- a postinst that fails
def test_postinst_failing_once_stops_the_run_with_ha_off_then_resume(cluster, state):
    """A fresh 4.9.2 cluster (`lab up --reset`); bm-conf's postinst fails once on bm2: the
    packages step fails there (bm-conf half-configured), the run stops and says HA is off, and
    the cluster is indeed in maintenance mode. Fixed by hand (dpkg --configure -a), `resume`
    finishes the upgrade."""
    from bmupgrade.lab.cluster import faults
    cluster.up(reset=True)
    assert set(versions(cluster)["bm2"].values()) == {"4.9.2"}
    faults.postinst_fail_once(cluster, "bm2")
    r = cluster_upgrade(cluster, state, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "packages" in out and "bm2" in out, out
    assert "dpkg --configure" in cluster.run("bm2", "dpkg --audit").stdout
    assert "half-configured" in cluster.run("bm2", "dpkg-query -W -f='${Status}' bm-conf").stdout
    mon = cluster.crm_mon()
    assert ("HA handling is OFF" in out) == crmmon_maintenance(mon) == True  # noqa: E712 - the tool told the truth
    assert not calls(cluster, "bm1", "bm-cli") and not calls(cluster, "bm2", "bm-cli")
    cluster.run("bm2", "dpkg --configure -a", check=True)
    r = subprocess.run([sys.executable, "-m", "bmupgrade", "resume", "--yes", "--ack", "backup,prepare",
                        "--state-dir", str(state)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(set(v.values()) == {"4.9.3"} for v in versions(cluster).values())
    assert not crmmon_maintenance(cluster.crm_mon()) and placement(cluster)["vip"] == ["bm1"]
    assert len(calls(cluster, "bm1", "bm-cli setup upgrade")) == 1


def crmmon_maintenance(mon) -> bool:
    from bmupgrade.lab.cluster import crmmon
    return crmmon.maintenance(mon)

