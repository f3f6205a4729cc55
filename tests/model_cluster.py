"""A two-node BlueMind/Pacemaker cluster as a model behind the in-memory transport, for the
stateful property test: it answers the model runbook's commands from its own state, applies
faults, and records every command sent with what was true at that moment, so the invariants
are checked against the model, not against the engine's own opinion of itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bmupgrade.transport.base import CommandResult
from bmupgrade.transport.memory import ANY, MemoryTransport, Reply

RUNBOOK = """\
version: 1
name: model
cluster:
  public_ip: 192.0.2.10
  nodes:
    - {name: bm1, host: 127.0.0.11, port: 2201}
    - {name: bm2, host: 127.0.0.12, port: 2202}
vars:
  target_version: "4.9.3"
preflight:
  - {id: vip, builtin: single_vip_holder}
  - {id: fence, on: primary, run: crm_attribute -n stonith-enabled -G -q, expect: "true", fencing: true}
  - {id: health, on: primary, run: crm_mon -1, expect: {not_match: FAILED}}
  - {id: not-in-maint, on: primary, run: crm_attribute -n maintenance-mode -G -q, expect: "false", until: ha-off}
  - {id: ver, on: all, run: dpkg-query -W bm-full, same_on_all_nodes: true, capture: from_version, until: packages}
steps:
  - id: ha-off
    on: primary
    ha: disable
    idempotent: true
    run: crm_attribute -n maintenance-mode -v true
    verify: crm_attribute -n maintenance-mode -G -q | grep -qx true
    rollback: crm_attribute -n maintenance-mode -v false
    timeout: 2m
  - id: packages
    on: all
    parallel: true
    run: apt-get install -y bm-full={{ target_version }}
    verify: dpkg-query -W bm-full | grep -qx {{ target_version }}
    rollback: apt-get install -y --allow-downgrades bm-full={{ from_version }}
    timeout: 10m
  - id: post-install
    on: primary
    point_of_no_return: true
    requires: [ha-off]
    run: bm-cli setup upgrade
    timeout: 1h
  - id: ha-on
    on: primary
    ha: enable
    idempotent: true
    run: crm_attribute -n maintenance-mode -v false
    verify: crm_attribute -n maintenance-mode -G -q | grep -qx false
    rollback: crm_attribute -n maintenance-mode -v true
    timeout: 2m
postflight:
  - {id: vip-after, builtin: single_vip_holder}
"""

HA_ON = "crm_attribute -n maintenance-mode -v false"  # the ha-on step, and the ha-off step's rollback
CHANGE = re.compile(r"^(crm_attribute -n maintenance-mode -v|apt-get install|bm-cli)")
STEP_OF = [(re.compile(r"^crm_attribute -n maintenance-mode -v true"), "ha-off"),
           (re.compile(r"^apt-get install -y bm-full="), "packages"),
           (re.compile(r"^bm-cli setup upgrade"), "post-install"),
           (re.compile(r"^crm_attribute -n maintenance-mode -v false"), "ha-on")]
PRIMARY_STEPS = {"ha-off", "post-install", "ha-on"}


@dataclass
class Sent:
    """One change command as the model saw it arrive."""

    invocation: int
    run_id: str  # of the run holding the node's lock when it arrived
    node: str
    command: str
    step: str | None  # forward step it belongs to (None for rollback-only commands)
    vip_holders: frozenset[str]
    safety_ok: bool  # had this invocation's safety checks all passed (per the model) before it?
    tag: str | None
    fencing_ok: bool = False  # had this invocation seen fencing on, or the operator accepted the risk?
    overlapped: bool = False  # an earlier copy (same run, step, node) was still running on the node


@dataclass
class Fault:
    """What happens to the next command matching `step` (once)."""

    step: str
    kind: str  # fail | lost-after-send | lost-still-running | lost-unreachable | timeout | vip-moves | maint-cleared
    node: str | None = None


@dataclass
class Model:
    vip: set[str] = field(default_factory=lambda: {"bm1"})
    maint: bool = False
    stonith: bool = True
    healthy: bool = True
    version: dict[str, str] = field(default_factory=lambda: {"bm1": "4.9.2", "bm2": "4.9.2"})
    post_installed: dict[str, int] = field(default_factory=dict)  # node -> bm-cli runs that completed
    faults: list[Fault] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    invocation: int = 0
    mode: str = "run"  # of the current invocation
    safety: dict[str, bool] = field(default_factory=dict)  # what this invocation has seen pass
    hook: object = None  # called with (node, command) before each command (signals, crashes)


class ModelCluster:
    """The model + a MemoryTransport answering from it (one transport per invocation, as a new
    process would have; the cluster and the nodes' files persist)."""

    def __init__(self) -> None:
        self.m = Model()
        self.files: dict[str, dict[str, str]] = {}
        self.running: set[tuple[str, str]] = set()  # (node, tag) of commands still running there

    def transport(self) -> MemoryTransport:
        t = MemoryTransport()
        t.files = self.files
        t.running = self.running
        m = self.m

        def answer(fn):
            def handler(call):
                if m.hook:
                    m.hook(call.node, call.command)
                return fn(call)
            return handler

        t.on(ANY, re.compile(r"^ip -o addr show"), answer(self._probe))
        t.on(ANY, "crm_attribute -n stonith-enabled -G -q", answer(self._fence))
        t.on(ANY, "crm_mon -1", answer(self._health))
        t.on(ANY, re.compile(r"^crm_attribute -n maintenance-mode -G -q"), answer(self._maint_query))
        t.on(ANY, re.compile(r"^dpkg-query -W bm-full"), answer(self._version_query))
        t.on(ANY, CHANGE, answer(self._change))
        return t

    # ------------------------------------------------------------------ read-only answers
    def _probe(self, call):
        self.m.safety["probe"] = len(self.m.vip) == 1
        return "2: eth0    inet 192.0.2.10/32 scope global eth0" if call.node in self.m.vip else ""

    def _fence(self, call):
        self.m.safety["fence"] = self.m.stonith
        return "true" if self.m.stonith else "false"

    def _health(self, call):
        self.m.safety["health"] = self.m.healthy
        return "2 nodes online" if self.m.healthy else "vip FAILED"

    def _maint_query(self, call):
        value = "true" if self.m.maint else "false"
        if "grep -qx" in call.command:
            return 0 if call.command.endswith(value) else 1
        return value

    def _version_query(self, call):
        v = self.m.version[call.node]
        if "grep -qx" in call.command:
            return 0 if call.command.endswith(v) else 1
        return v

    # ------------------------------------------------------------------ changes
    def _change(self, call):
        m = self.m
        step = next((s for rx, s in STEP_OF if rx.search(call.command)), None)
        if "--allow-downgrades" in call.command:
            step = None
        fencing_ok = bool(m.safety.get("fence") or m.safety.get("fencing-risk-accepted"))
        needed = ("probe", "health") if m.mode != "rollback" else ("probe",)
        ok = all(m.safety.get(k) for k in needed) and (fencing_ok or m.mode == "rollback")
        lock = next((v for p, v in self.files.get(call.node, {}).items() if p.endswith("/lock")), "")
        run_id = lock.split('"run_id": "')[1].split('"')[0] if '"run_id": "' in lock else "?"
        same = call.tag.rsplit(".", 1)[0] if call.tag else None  # run.step.node (or run.rollback:step.node)
        overlapped = same is not None and any(n == call.node and t.rsplit(".", 1)[0] == same for n, t in self.running)
        m.sent.append(Sent(m.invocation, run_id, call.node, call.command, step, frozenset(m.vip), ok, call.tag,
                           fencing_ok, overlapped))
        fault = next((f for f in m.faults if f.step == (step or "rollback") and f.node in (None, call.node)), None)
        if fault:
            m.faults.remove(fault)
        if fault and fault.kind == "fail":
            return Reply(exit_code=1, stderr="simulated failure\n")
        if fault and fault.kind == "vip-moves":
            m.vip = {n for n in ("bm1", "bm2") if n not in m.vip} or {"bm1"}
        if fault and fault.kind == "maint-cleared":
            m.maint = False
        effect_applied = not (fault and fault.kind == "lost-before-effect")
        if effect_applied:
            self._apply(call)
        if fault and fault.kind == "lost-unreachable":  # and the node stays out of reach this invocation
            call.transport.unreachable(call.node)
        if fault and fault.kind in ("lost-after-send", "lost-still-running", "timeout", "lost-unreachable"):
            if fault.kind == "lost-still-running" and call.tag:
                self.running.add((call.node, call.tag))
            return CommandResult(call.node, call.command, None, 0.0, timed_out=fault.kind == "timeout",
                                 connection_lost=fault.kind != "timeout", sent=True,
                                 error="simulated " + fault.kind)
        return Reply()

    def _apply(self, call):
        m, cmd = self.m, call.command
        if cmd.startswith("crm_attribute -n maintenance-mode -v"):
            m.maint = cmd.endswith("true")
        elif cmd.startswith("apt-get install"):
            m.version[call.node] = cmd.rsplit("=", 1)[1]
        elif cmd.startswith("bm-cli"):
            m.post_installed[call.node] = m.post_installed.get(call.node, 0) + 1

    def finish_running(self) -> None:
        """The commands left running on the nodes end (time passes between invocations)."""
        self.running.clear()

    @property
    def ha_off(self) -> bool:
        return self.m.maint
