"""The lab's supervisor: the nodes' parent and their power switch.

One long-lived process per cluster lab. It creates the network, starts each node (`nsenter
--net` + `unshare ... --kill-child` running the node's init), and serves power requests on a
UNIX socket file (works across network namespaces): from the fence agent inside the nodes and
from `bmupgrade lab fault`. Power off = SIGKILL of the node's PID 1, a pulled plug; the dead
node's eth0 is then flushed and downed, or its VIP would stay reachable.

Nodes are started from the main thread only: PR_SET_PDEATHSIG fires when the *thread* that
forked the child exits. If the supervisor is SIGKILLed, each `unshare` gets SIGKILL, which
kills the node's init (--kill-child), which takes the whole PID namespace with it; `lab down`
then removes the network objects by name.

    python3 -m bmupgrade.lab.cluster.supervisor LAB_DIR
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

from bmupgrade.lab.cluster import netns
from bmupgrade.lab.cluster.config import ClusterConfig

PR_SET_PDEATHSIG = 1


def _pdeathsig() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _children(pid: int) -> list[int]:
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


class Supervisor:
    """Power state of each node, and the socket that changes it."""

    def __init__(self, cfg: ClusterConfig):
        self.cfg = cfg
        self.nodes = {n.name: {"power": "off", "unshare": None, "init": None, "gen": 0, "hold": False}
                      for n in cfg.nodes}
        self.stop = False
        self.sock: socket.socket | None = None

    # ---- state file (read by `lab status`, `lab down`, the tests)
    def save(self) -> None:
        path = self.cfg.path / "supervisor.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "nodes": self.nodes}, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def event(self, **fields) -> None:
        with open(self.cfg.path / "power.log", "a") as f:
            f.write(json.dumps(dict(time=time.time(), **fields)) + "\n")

    # ---- power
    def power_on(self, name: str) -> None:
        st = self.nodes[name]
        if st["power"] == "on":
            return
        n = self.cfg.node(name)
        netns.node_link_up(self.cfg, n)
        st["gen"] += 1
        nd = self.cfg.node_dir(name)
        cmd = ["nsenter", "--net=%s/%s" % (netns.NETNS_DIR, n.netns), "--",
               "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--mount-proc", "--propagation", "private",
               "--kill-child", "--", sys.executable, "-m", "bmupgrade.lab.cluster.init", name,
               str(nd / "upper"), str(nd / "work"), str(self.cfg.shared), str(st["gen"])]
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))))
        with open(nd / "console.log", "ab") as out:
            p = subprocess.Popen(cmd, preexec_fn=_pdeathsig, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=out, env=env)
        st.update(power="on", unshare=p.pid, init=None, hold=False)
        for _ in range(200):
            kids = _children(p.pid)
            if kids:
                st["init"] = kids[0]
                break
            time.sleep(0.005)
        self.event(node=name, action="on", gen=st["gen"], init=st["init"])
        self.save()

    def power_off(self, name: str, hold: bool = False) -> None:
        st = self.nodes[name]
        if st["power"] == "on":
            for pid in (st["init"], st["unshare"]):
                if pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self._wait_dead(st)
        netns.node_link_down(self.cfg.node(name))
        st.update(power="off", unshare=None, init=None, hold=hold or st["hold"])
        self.event(node=name, action="off", hold=st["hold"])
        self.save()

    def _wait_dead(self, st: dict) -> None:
        if st["unshare"]:
            try:
                os.waitpid(st["unshare"], 0)
            except ChildProcessError:
                pass
        deadline = time.monotonic() + 3
        while st["init"] and os.path.exists("/proc/%d" % st["init"]) and time.monotonic() < deadline:
            time.sleep(0.01)

    def reap(self) -> None:
        """A node whose unshare exited by itself crashed: it is off (and its link down)."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            for name, st in self.nodes.items():
                if st["unshare"] == pid:
                    st["unshare"] = None
                    self.event(node=name, action="crashed")
                    self.power_off(name)

    # ---- requests
    def handle(self, req: dict) -> dict:
        action, name, who = req.get("action"), req.get("node"), req.get("from", "?")
        if action in ("list", "list-status") or (action == "monitor" and not name):
            return {"ok": True, "nodes": {n: st["power"] for n, st in self.nodes.items()}}
        if name not in self.nodes:
            return {"ok": False, "error": "unknown node %r" % name}
        if who in self.nodes and (self.nodes[who]["power"] != "on" or req.get("gen") != self.nodes[who]["gen"]):
            # a fence request from a node that was itself fenced meanwhile: its plug is pulled
            self.event(node=name, action=action, by=who, refused="requester is powered off")
            return {"ok": False, "error": "requester %s is powered off" % who}
        if action in ("status", "monitor"):
            return {"ok": True, "power": self.nodes[name]["power"]}
        self.event(node=name, action="request-" + action, by=who)
        if action == "off":
            self.power_off(name, hold=bool(req.get("hold")))
        elif action == "on":
            self.nodes[name]["hold"] = False
            self.power_on(name)
        elif action == "reboot":
            self.power_off(name, hold=bool(req.get("hold")))
            if not self.nodes[name]["hold"]:
                self.power_on(name)
        else:
            return {"ok": False, "error": "unknown action %r" % action}
        return {"ok": True, "power": self.nodes[name]["power"]}

    def serve_one(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            reply = self.handle(json.loads(data or b"{}"))
        except (OSError, ValueError) as e:
            reply = {"ok": False, "error": str(e)}
        try:
            conn.sendall((json.dumps(reply) + "\n").encode())
        except OSError:
            pass
        conn.close()

    # ---- main loop
    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stop", True))
        self.cfg.shared.mkdir(parents=True, exist_ok=True)
        self.cfg.socket.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.cfg.socket))
        os.chmod(self.cfg.socket, 0o600)
        self.sock.listen(16)
        netns.create(self.cfg)
        for n in self.cfg.nodes:
            self.power_on(n.name)
        while not self.stop:
            try:
                ready, _, _ = select.select([self.sock], [], [], 0.2)
            except InterruptedError:
                continue
            if ready:
                self.serve_one(self.sock.accept()[0])
            self.reap()
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Pull every plug at once, then wait (sequential power-offs double the teardown)."""
        on = [st for st in self.nodes.values() if st["power"] == "on"]
        for st in on:
            for pid in (st["init"], st["unshare"]):
                try:
                    os.kill(pid, signal.SIGKILL) if pid else None
                except ProcessLookupError:
                    pass
        for st in on:
            self._wait_dead(st)
            st.update(power="off", unshare=None, init=None)
        netns.destroy(self.cfg)
        self.cfg.socket.unlink(missing_ok=True)
        (self.cfg.path / "supervisor.json").unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    cfg = ClusterConfig.load(argv[0])
    try:
        return Supervisor(cfg).run()
    except Exception as e:  # the CLI reports the log's last line
        print("supervisor: %s: %s" % (type(e).__name__, e), file=sys.stderr, flush=True)
        try:
            netns.destroy(cfg)
        finally:
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
