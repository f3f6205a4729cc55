"""The lab itself: processes, files, SSH with strict host keys, isolation, non-root, CLIs."""

from __future__ import annotations

import ast
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bmupgrade.lab import Lab, LabError

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _listening(pid: int) -> list[str]:
    out = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True).stdout
    return [line.split()[3] for line in out.splitlines() if "pid=%d," % pid in line]


# --------------------------------------------------------------------------- lifecycle
def test_up_down_leaves_no_process(lab_factory):
    t0 = time.monotonic()
    lab = lab_factory(start=False)
    lab.up()
    elapsed = time.monotonic() - t0
    print("\nlab startup: %.3f s (Lab.startup_seconds %.3f s, both nodes, keys included)" % (elapsed, lab.startup_seconds))
    bm1, bm2 = lab.nodes
    pids = [bm1.pid, bm2.pid]
    assert all(pids) and len(set(pids)) == 2
    assert all(_alive(p) for p in pids)
    # a hanging session leaves sshd children and a sleeping stand-in behind: down() takes them too
    lab.fault("hang", node="bm1", command="bmctl status", seconds=60)
    client = subprocess.Popen(["ssh", "-F", str(lab.ssh_config), "bm1", "bmctl status"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not list((bm1.dir / "run").glob("*")):
        time.sleep(0.02)
    sleeper = [int(p.name) for p in (bm1.dir / "run").iterdir()]
    assert sleeper and _alive(sleeper[0])
    # an idle session that is no stand-in (a shell waiting on its stdin) must go too
    idle = subprocess.Popen(["ssh", "-F", str(lab.ssh_config), "bm2", "echo ready; read line"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert idle.stdout.readline() == b"ready\n"
    everything = pids + _tree(pids[0]) + _tree(pids[1])
    assert sleeper[0] in everything and len(_tree(pids[1])) >= 2
    lab.down()
    assert client.wait(5) == 255  # the clients saw their connections go
    assert idle.wait(5) == 255
    left = [p for p in everything if _alive(p)]
    assert left == [], "processes left behind: %s" % left
    assert bm1.pid is None and bm2.pid is None
    assert not bm1.pidfile.exists()
    lab.down()  # idempotent


def test_up_is_idempotent_and_handles_stale_pidfiles(lab):
    bm1, bm2 = lab.nodes
    before = (bm1.pid, bm2.pid, bm1.port, bm2.port)
    lab.up()
    assert (bm1.pid, bm2.pid, bm1.port, bm2.port) == before
    bm1.set_state(installed={"bm-core": "4.9.3"})
    lab.down()
    # stale pid files: one names a live process that is not our sshd (this test), one a dead pid
    bm1.pidfile.write_text("%d\n" % os.getpid())
    bm2.pidfile.write_text("999999\n")
    assert bm1.pid is None and bm2.pid is None
    lab.up()
    assert bm1.pid not in (None, os.getpid()) and bm2.pid
    assert (bm1.port, bm2.port) == before[2:]  # same ports again
    assert bm1.state()["installed"]["bm-core"] == "4.9.3"  # up keeps state...
    lab.up(reset=True)  # ...reset does not
    assert bm1.state()["installed"]["bm-core"] == "4.9.2"
    assert bm1.calls() == []


def test_listens_on_loopback_only_with_distinct_ips(lab):
    bm1, bm2 = lab.nodes
    assert (bm1.host, bm2.host) == ("127.0.0.11", "127.0.0.12")
    assert _listening(bm1.pid) == ["127.0.0.11:%d" % bm1.port]
    assert _listening(bm2.pid) == ["127.0.0.12:%d" % bm2.port]
    for n in lab.nodes:
        cfg = n.sshd_config.read_text()
        assert re.findall(r"^ListenAddress (.*)$", cfg, re.M) == ["%s:%d" % (n.host, n.port)]
        assert "PasswordAuthentication no" in cfg and "AuthenticationMethods publickey" in cfg


def test_files_inventory_known_hosts_ssh_config(lab):
    import yaml

    inv = yaml.safe_load(lab.inventory_path.read_text())
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert lab.inventory_path.read_text().startswith("# bmupgrade lab inventory (written by `bmupgrade lab up`)")
    assert inv == {"cluster": {
        "public_ip": "192.0.2.10",
        "known_hosts": str(lab.known_hosts),
        "nodes": [{"name": n.name, "host": n.host, "port": n.port, "user": user, "identity_file": str(lab.client_key),
                   "state_dir": str(n.root / "var/lib/bmupgrade")} for n in lab.nodes]}}
    for n in inv["cluster"]["nodes"]:
        assert Path(n["state_dir"]).is_dir()
    lines = lab.known_hosts.read_text().splitlines()
    for n, line in zip(lab.nodes, lines):
        pub = Path(str(n.host_key) + ".pub").read_text().split()
        assert line == "[%s]:%d %s %s" % (n.host, n.port, pub[0], pub[1])
    cfg = lab.ssh_config.read_text()
    for key in ("Host bm1", "HostName 127.0.0.11", "Port %d" % lab.nodes[0].port, "User %s" % user,
                "IdentityFile %s" % lab.client_key, "UserKnownHostsFile %s" % lab.known_hosts,
                "StrictHostKeyChecking yes", "IdentitiesOnly yes"):
        assert key in cfg
    assert oct(lab.client_key.stat().st_mode & 0o777) == "0o600"


def test_runbook_loader_accepts_the_inventory(lab, tmp_path):
    runbook_mod = pytest.importorskip("bmupgrade.runbook")
    rb = tmp_path / "rb.yaml"
    rb.write_text("version: 1\nname: lab\ncluster:\n  public_ip: 192.0.2.99\n  nodes:\n"
                  "    - {name: a, host: a.example.org}\n    - {name: b, host: b.example.org}\n"
                  "steps:\n  - {id: s, on: all, run: 'true'}\n")
    loaded = runbook_mod.load_runbook(rb, inventory=lab.inventory_path)
    runbook = loaded[0] if isinstance(loaded, tuple) else getattr(loaded, "runbook", loaded)
    assert [n.port for n in runbook.cluster.nodes] == [n.port for n in lab.nodes]
    assert runbook.cluster.public_ip == "192.0.2.10"


def test_session_environment(lab, batch):
    user = pwd.getpwuid(os.geteuid()).pw_name
    for n in lab.nodes:
        r = batch(n, "echo $PATH", "echo $BMLAB_NODE_DIR", "command -v apt-get", "id -un", "hostname",
                  "echo $HOME")
        assert r[0].text == "%s/bin:/usr/bin:/bin" % lab.dir  # no rc file clobbered it
        assert r[1].text == str(n.dir)
        assert r[2].text == "%s/bin/apt-get" % lab.dir
        assert r[3].text == user
        assert r[4].text == n.name
        assert r[5].text == str(n.dir / "home")


def test_public_key_only(lab, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    common = ["-o", "UserKnownHostsFile=%s" % lab.known_hosts, "-o", "GlobalKnownHostsFile=/dev/null",
              "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-p", str(lab.nodes[0].port)]
    good = subprocess.run(["ssh", "-F", "/dev/null", "-i", str(lab.client_key)] + common + ["127.0.0.11", "true"],
                          capture_output=True, text=True, timeout=20)
    wrong_key = subprocess.run(["ssh", "-F", "/dev/null", "-i", str(other)] + common + ["127.0.0.11", "true"],
                               capture_output=True, text=True, timeout=20)
    password = subprocess.run(["ssh", "-F", "/dev/null", "-o", "PreferredAuthentications=password,keyboard-interactive"]
                              + common + ["127.0.0.11", "true"], capture_output=True, text=True, timeout=20)
    assert good.returncode == 0, good.stderr
    assert wrong_key.returncode == 255 and "Permission denied (publickey)" in wrong_key.stderr
    assert password.returncode == 255 and "Permission denied (publickey)" in password.stderr


def test_fabric_connection_with_strict_host_keys(lab):
    fabric = pytest.importorskip("fabric")
    import paramiko

    for n in lab.nodes:
        c = fabric.Connection(n.host, port=n.port, user=pwd.getpwuid(os.geteuid()).pw_name,
                              config=fabric.Config(overrides={"load_ssh_configs": False}),
                              connect_kwargs={"key_filename": str(lab.client_key), "look_for_keys": False,
                                              "allow_agent": False})
        c.client.load_host_keys(str(lab.known_hosts))
        c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            r = c.run("hostname; dpkg-query -W -f='${Version}' bm-full", hide=True, in_stream=False)
        finally:
            c.close()
        assert r.stdout == "%s\n4.9.2" % n.name
        assert n.calls("dpkg-query")[-1]["exit"] == 0


def test_wrong_or_unknown_host_key_is_refused(lab):
    fabric = pytest.importorskip("fabric")
    import paramiko

    lines = lab.known_hosts.read_text().splitlines()
    k1, k2 = lines[0].split(" ", 1)[1], lines[1].split(" ", 1)[1]
    (lab.known_hosts).write_text("%s %s\n%s %s\n" % (lines[0].split()[0], k2, lines[1].split()[0], k1))  # swapped
    r = subprocess.run(["ssh", "-F", str(lab.ssh_config), "bm1", "true"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in r.stderr
    n = lab.nodes[0]
    user = pwd.getpwuid(os.geteuid()).pw_name
    kw = {"key_filename": str(lab.client_key), "look_for_keys": False, "allow_agent": False}
    c = fabric.Connection(n.host, port=n.port, user=user, connect_kwargs=kw,
                          config=fabric.Config(overrides={"load_ssh_configs": False}))
    c.client.load_host_keys(str(lab.known_hosts))
    c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadHostKeyException):
        c.run("true", hide=True, in_stream=False)
    c.close()
    lab.known_hosts.write_text("")  # unknown host
    c = fabric.Connection(n.host, port=n.port, user=user, connect_kwargs=kw,
                          config=fabric.Config(overrides={"load_ssh_configs": False}))
    c.client.load_host_keys(str(lab.known_hosts))
    c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        c.run("true", hide=True, in_stream=False)
    c.close()
    assert n.calls() == []  # nothing ran
    lab.up()  # rewrites known_hosts
    assert n.ssh("true").returncode == 0


def test_two_labs_side_by_side(lab_factory, batch):
    a, b = lab_factory("a"), lab_factory("b")
    assert {n.port for n in a.nodes}.isdisjoint({n.port for n in b.nodes}) or \
        all(x.port != y.port for x, y in zip(a.nodes, b.nodes))
    batch(a.node("bm1"), "apt-get update", "apt-get install -y bm-full=4.9.3")
    assert b.node("bm1").ssh("dpkg-query -W -f='${Version}' bm-full").stdout == "4.9.2"
    assert a.node("bm1").state()["installed"]["bm-full"] == "4.9.3"
    assert [c["argv"][0] for c in b.node("bm1").calls()] == ["dpkg-query"]
    a.fault("no-vip")
    assert b.cluster_state()["vip"] == ["bm1"]
    a.down()
    assert b.node("bm1").is_up and b.node("bm2").ssh("true").returncode == 0


def test_node_down_and_back_same_port_same_key(lab):
    bm2 = lab.node("bm2")
    port, key = bm2.port, lab.known_hosts.read_text()
    bm2.down()
    assert bm2.pid is None
    r = bm2.ssh("true")
    assert r.returncode == 255 and "Connection refused" in r.stderr
    bm2.up()
    assert bm2.port == port and lab.known_hosts.read_text() == key
    assert bm2.ssh("hostname").stdout == "bm2\n"  # strict host key checking still passes


def test_ledger_records_calls(lab, batch):
    bm1 = lab.node("bm1")
    t0 = time.time()
    batch(bm1, "systemctl is-active bluemind.target", "apt-get install --bogus", "crm_attribute -n x -G -q")
    calls = bm1.calls()
    assert [c["argv"] for c in calls] == [["systemctl", "is-active", "bluemind.target"], ["apt-get", "install", "--bogus"],
                                          ["crm_attribute", "-n", "x", "-G", "-q"]]
    assert [c["exit"] for c in calls] == [0, 100, 105]
    for c in calls:
        assert t0 - 1 < c["time"] < time.time() + 1 and 0 <= c["duration"] < 5 and c["node"] == "bm1"
    assert [c["argv"][0] for c in bm1.calls("apt-get install")] == ["apt-get"]
    assert bm1.calls("apt-get update") == []
    assert lab.node("bm2").calls() == []


def test_set_state_and_cluster_state(lab):
    bm2 = lab.node("bm2")
    st = bm2.set_state(services={"keepalived.service": "inactive"}, held=["bm-core"])
    assert st["services"]["keepalived.service"] == "inactive" and st["services"]["pacemaker.service"] == "active"
    assert bm2.state()["held"] == ["bm-core"]
    with pytest.raises(LabError, match="unknown node state key"):
        bm2.set_state(instaled={})
    cl = lab.cluster_state()
    assert cl["vip"] == ["bm1"] and cl["resources"] == {"storage": ["bm1"], "vip": ["bm1"], "bluemind": ["bm1"]}
    assert "maintenance-mode" not in cl["properties"] and "stonith-enabled" not in cl["properties"]
    lab.set_cluster_state(properties={"maintenance-mode": "true"})
    assert lab.node("bm1").ssh("crm_attribute --type crm_config --name maintenance-mode --query --quiet").stdout == "true\n"


def test_failover(lab, batch):
    assert lab.failover() == "bm2"
    assert lab.cluster_state()["vip"] == ["bm2"]
    r = batch(lab.node("bm2"), "ip -o addr show to 192.0.2.10", "systemctl is-active bluemind.target",
              "crm_resource --resource vip --locate -Q")
    assert "inet 192.0.2.10/32" in r[0].out and r[1].text == "active" and r[2].text == "bm2"
    assert lab.node("bm1").state()["services"]["bluemind.target"] == "inactive"
    assert lab.failover(to="bm1") == "bm1"
    with pytest.raises(LabError):
        lab.failover(to="bm9")


# --------------------------------------------------------------------------- non-root
def test_runs_as_non_root_user(tmp_path_factory):
    from tests.conftest import require_sshd
    require_sshd()
    if os.geteuid() == 0:
        user = "bmlabtest"
        if subprocess.run(["id", user], capture_output=True).returncode:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", user], check=True)
        pre = ["/usr/sbin/runuser", "-u", user, "--"]
        py = "/usr/bin/python3"
        # the repository must be readable by that user (/root is mode 700)
        probe = subprocess.run(pre + [py, "-c", "import bmupgrade.lab.core"], cwd="/",
                               env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
        assert probe.returncode == 0, "repo %s not readable by %s: %s" % (REPO, user, probe.stderr)
        base = Path(tempfile.mkdtemp(prefix="bmlab-nonroot.", dir="/tmp"))
        shutil.chown(base, user)
    else:
        user = pwd.getpwuid(os.geteuid()).pw_name
        pre, py = [], sys.executable
        base = tmp_path_factory.mktemp("nonroot")
    d = base / "lab"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    cmd = pre + [py, "-m", "bmupgrade.lab"]
    try:
        up = subprocess.run(cmd + ["up", "--dir", str(d), "--json"], cwd="/", env=env, capture_output=True, text=True,
                            timeout=30)
        assert up.returncode == 0, up.stderr
        st = json.loads(up.stdout)
        assert st["user"] == user and all(n["up"] for n in st["nodes"])
        pids = [n["pid"] for n in st["nodes"]]
        assert all(pwd.getpwuid(os.stat("/proc/%d" % p).st_uid).pw_name == user for p in pids)
        lab = Lab(d)
        r = lab.node("bm2").ssh("id -un; apt-get update -qq && apt-get install -y -qq bm-full=4.9.3 >/dev/null; "
                                "dpkg-query -W -f='${Version}' bm-full")
        assert r.stdout == "%s\n4.9.3" % user, r.stderr
        assert lab.node("bm2").calls("apt-get install")[0]["user"] == user
        assert "user: %s" % user in lab.inventory_path.read_text()
        # the lab belongs to its user: another user cannot start its sshd (it could not log them in)
        if pre:  # root must not take over (or rewrite the files of) another user's lab
            before = lab.known_hosts.stat()
            with pytest.raises(LabError, match="belongs to user bmlabtest"):
                Lab(d).up()
            assert lab.known_hosts.stat().st_ino == before.st_ino
            assert Lab(d).node("bm1").up().pid == pids[0]  # running: a no-op
        down = subprocess.run(cmd + ["down", "--dir", str(d)], cwd="/", env=env, capture_output=True, text=True,
                              timeout=30)
        assert down.returncode == 0, down.stderr
        assert [p for p in pids if _alive(p)] == []
        bad = subprocess.run(cmd + ["status", "--dir", str(base / "nope")], cwd="/", env=env, capture_output=True,
                             text=True, timeout=30)
        assert bad.returncode == 2 and bad.stderr.startswith("error: no lab in") and "Traceback" not in bad.stderr
    finally:
        subprocess.run(cmd + ["down", "--dir", str(d)], cwd="/", env=env, capture_output=True, timeout=30)
        if pre:
            shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- CLI and imports
def test_typer_cli(tmp_path):
    from tests.conftest import require_sshd
    require_sshd()
    from typer.testing import CliRunner

    from bmupgrade.lab.cli import app

    runner = CliRunner()
    d = str(tmp_path / "lab")
    try:
        r = runner.invoke(app, ["up", "--dir", d])
        assert r.exit_code == 0, r.output
        assert "ssh -F %s/ssh_config bm1" % d in r.output and "inventory.yaml" in r.output
        assert runner.invoke(app, ["up", "--dir", d]).exit_code == 0  # idempotent
        r = runner.invoke(app, ["fault", "fail", "--dir", d, "--node", "bm2", "--command", "apt-get install",
                                "--exit-code", "100", "--times", "1"])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["fault", "split-brain", "--dir", d])
        assert r.exit_code == 0
        r = runner.invoke(app, ["status", "--dir", d])
        assert r.exit_code == 0
        assert "SPLIT BRAIN (bm1, bm2)" in r.output and "fault fail on bm2" in r.output
        assert re.search(r"bm1\s+up\s+127\.0\.0\.11:\d+ pid \d+\s+bm-full 4\.9\.2", r.output)
        st = json.loads(runner.invoke(app, ["status", "--dir", d, "--json"]).output)
        assert st["vip"] == ["bm1", "bm2"] and st["nodes"][1]["faults"][0]["exit_code"] == 100
        assert runner.invoke(app, ["fault", "clear", "--dir", d]).exit_code == 0
        assert "VIP 192.0.2.10: bm1\n" in runner.invoke(app, ["status", "--dir", d]).output
        r = runner.invoke(app, ["failover", "--dir", d])
        assert r.exit_code == 0 and "now on bm2" in r.output
        for args, msg in ((["fault", "bogus", "--dir", d], "unknown fault 'bogus'"),
                          (["fault", "hang", "--dir", d, "--command", "x"], "fault hang needs seconds"),
                          (["fault", "fail", "--dir", d, "--command", "x", "--node", "bm7"], "unknown node 'bm7'"),
                          (["fault", "split-brain", "--dir", d, "--node", "bm1"], "whole cluster"),
                          (["failover", "--dir", d, "--to", "bm3"], "unknown node"),
                          (["status", "--dir", str(tmp_path / "none")], "no lab in"),
                          (["up", "--dir", str(REPO / "tests")], "is not a lab")):
            r = runner.invoke(app, args)
            assert r.exit_code == 2, (args, r.output)
            assert r.output.startswith("error: ") and msg in r.output and r.output.count("\n") == 1, r.output
            assert r.exception is None or isinstance(r.exception, SystemExit)
        pids = [n["pid"] for n in st["nodes"]]
        r = runner.invoke(app, ["down", "--dir", d])
        assert r.exit_code == 0 and [p for p in pids if _alive(p)] == []
    finally:
        Lab(d).down()


def test_standins_and_core_are_stdlib_only():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path, allowed in ((REPO / "bmupgrade/lab/standins/bmlab.py", set()),
                          (REPO / "bmupgrade/lab/core.py", set()),
                          (REPO / "bmupgrade/lab/configs.py", set()),
                          (REPO / "bmupgrade/lab/__main__.py", {"bmupgrade"})):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                top = name.split(".")[0]
                assert top in stdlib or top in allowed, "%s imports %s" % (path.name, name)
    assert (REPO / "bmupgrade/lab/standins/bmlab.py").read_text().startswith("#!/usr/bin/env python3\n")


def test_cli_module_imports_only_typer():
    code = ("import sys, bmupgrade.lab.cli; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('fabric', 'paramiko', 'yaml', 'pydantic', 'questionary') or m in ('bmupgrade.lab.core',)); print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_missing_sshd_fails_on_ci_and_skips_elsewhere(monkeypatch):
    from tests import conftest

    monkeypatch.setattr(conftest, "SSHD", "/nonexistent/sshd")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: lab tests must run, not skip.*/nonexistent/sshd"):
        conftest.require_sshd()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="openssh-server"):
        conftest.require_sshd()
    monkeypatch.undo()
    conftest.require_sshd()  # the real one is installed here


def test_up_refuses_a_directory_that_is_not_a_lab(tmp_path):
    from tests.conftest import require_sshd
    require_sshd()
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(LabError, match="is not a lab"):
        Lab(tmp_path).up()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_pacemaker_tools_choice(tmp_path, monkeypatch):
    """auto follows what is installed; real refuses to start without the tools; standin is
    always possible; a bad value is a one-line usage error."""
    from tests.conftest import require_sshd
    require_sshd()
    from typer.testing import CliRunner

    from bmupgrade.lab.cli import app
    from bmupgrade.lab.core import bmlab

    with pytest.raises(LabError, match="pacemaker must be auto, real or standin"):
        Lab(tmp_path / "x", pacemaker="maybe")
    r = CliRunner().invoke(app, ["up", "--dir", str(tmp_path / "y"), "--pacemaker", "maybe"])
    assert r.exit_code == 2 and r.output.startswith("error: --pacemaker must be") and not (tmp_path / "y").exists()
    monkeypatch.setattr(bmlab, "real_pacemaker_available", lambda: False)
    lab = Lab(tmp_path / "lab", pacemaker="real")
    try:
        with pytest.raises(LabError, match="apt-get install pacemaker-cli-utils, or use --pacemaker standin"):
            lab.up()
        assert not any(n.is_up for n in lab.nodes)
        assert Lab(tmp_path / "lab").up().pacemaker_mode == "standin"  # auto, tools missing
        monkeypatch.setattr(bmlab, "real_pacemaker_available", lambda: True)
        assert Lab(tmp_path / "lab").up().pacemaker_mode == "real"  # auto, tools there
        from bmupgrade.lab.core import usage_text
        assert "cib.xml" in usage_text(Lab(tmp_path / "lab").up())
        standin = Lab(tmp_path / "lab", pacemaker="standin").up()
        assert standin.pacemaker_mode == "standin" and "crm_*:    lab stand-ins" in usage_text(standin)
        assert "crm_* tools: lab stand-ins" in CliRunner().invoke(app, ["status", "--dir", str(lab.dir)]).output
    finally:
        lab.down()
