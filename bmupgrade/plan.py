"""The planner: a runbook resolved into the ordered, concrete actions a run will take.

`plan`, `run` and the report all read the same `Plan`, so what the admin signs in the change
ticket is what the engine executes. Planning is pure: no network, no side effects. `primary`
and `secondary` stay symbolic ("node holding <ip>, resolved at run time") unless a probe
result is given, because the engine re-probes the VIP holder just before each such step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bmupgrade import templating
from bmupgrade.runbook import Check, Node, Runbook, Step, format_duration


def template_context(rb: Runbook, node: Node | None, values: dict[str, str]) -> dict[str, Any]:
    """Names a template can use: vars (with captured values), cluster.*, node.*, peer.*."""
    ctx: dict[str, Any] = {k: v.value for k, v in rb.vars.items()}
    ctx.update(values)
    ctx["cluster"] = {"public_ip": rb.cluster.public_ip}
    if node is not None:
        ctx["node"] = node.model_dump()
        peers = [n for n in rb.cluster.nodes if n.name != node.name]
        if len(peers) == 1:  # `peer` is defined for two-node clusters, the supported shape
            ctx["peer"] = peers[0].model_dump()
    return ctx


def captured_names(rb: Runbook) -> list[str]:
    return [i.capture for i in (*rb.preflight, *rb.steps, *rb.postflight) if i.capture]


class Renderer:
    """Renders a runbook's templates for one node: for sending, or redacted for display."""

    def __init__(self, rb: Runbook, values: dict[str, str] | None = None, *, display: bool = False):
        self.rb = rb
        self.values = dict(values or {})
        self.display = display
        self.placeholders = (
            {name: f"<{name}>" for name in captured_names(rb) if name not in self.values} if display else {}
        )
        self._secrets = rb.secret_vars
        self._contexts: dict[str | None, dict[str, Any]] = {}  # per node: built once, not per template

    def __call__(self, text: str, node: Node | None) -> str:
        if "{{" not in text:  # no template: templating.render would return it as is
            return text
        key = node.name if node is not None else None
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = template_context(self.rb, node, self.values)
        return templating.render(
            text,
            ctx,
            secrets=self._secrets,
            redact=self.display,
            placeholders=self.placeholders,
        )


@dataclass
class NodeCommands:
    run: list[str] = field(default_factory=list)
    verify: str | None = None
    rollback: list[str] = field(default_factory=list)


@dataclass
class ProbedOutput:
    node: str
    exit_code: int | None  # None: no answer (timeout, connection lost)
    output: str  # stdout then stderr, secrets masked, at most PROBE_OUTPUT_LINES lines


@dataclass
class StepProbe:
    """A read-only step sent by `plan --probe`: each node's answer, or why it was not sent."""

    outputs: list[ProbedOutput] = field(default_factory=list)
    not_sent: str | None = None


@dataclass
class Action:
    seq: int
    phase: str  # preflight | step | postflight
    id: str
    title: str
    kind: str  # check | builtin | command | manual
    target: str  # primary | secondary | all | <node name> | "" (manual)
    target_text: str
    nodes: list[str]  # candidate nodes (the resolved ones when probed)
    commands: dict[str, NodeCommands]  # per candidate node, rendered
    text: str = ""  # manual steps: what the admin confirms
    confirm: bool = False
    parallel: bool = False
    timeout: float | None = None
    retries: int = 0
    ha: str | None = None
    expect: dict | None = None
    same_on_all_nodes: bool = False
    capture: str | None = None
    severity: str = "error"
    why: str | None = None
    undo: str = "impossible"  # commands | nothing (rollback: []) | impossible (no rollback)
    read_only: bool = False
    probed: "StepProbe | None" = None  # what a read-only step printed when `plan --probe` ran it

    def distinct_commands(self) -> list[tuple[list[str], NodeCommands]]:
        """Group nodes whose rendered commands are identical (for compact display)."""
        groups: list[tuple[list[str], NodeCommands]] = []
        for name, cmds in self.commands.items():
            for names, existing in groups:
                if existing == cmds:
                    names.append(name)
                    break
            else:
                groups.append(([name], cmds))
        return groups


@dataclass
class Plan:
    runbook: Runbook
    actions: list[Action]
    probed_holders: list[str] | None = None  # VIP holders found by --probe, if any
    deadline: float | None = None  # epoch seconds, if the run has a maintenance-window deadline

    def latest_start(self, a: Action, history: dict[str, float] | None = None) -> float | None:
        """The engine does not start a step whose estimate (measured duration, else the worst case
        from its timeout) would end past the deadline, nor the HA-off step unless the whole HA
        window fits: this is the last moment it may start."""
        if self.deadline is None or a.phase != "step" or a.kind != "command" or not a.timeout:
            return None
        from bmupgrade.engine.guards import deadline_scope, estimate

        step = self.runbook.step(a.id)
        return self.deadline - estimate(self.runbook, history or {}, deadline_scope(self.runbook, step))

    @property
    def ha_window(self) -> tuple[str | None, str | None]:
        off = next((a.id for a in self.actions if a.ha == "disable"), None)
        on = next((a.id for a in self.actions if a.ha == "enable"), None)
        return off, on

    @property
    def stonith_guard(self) -> str | None:
        """What safety rule 7 will demand before the step that turns failover back on."""
        on = self.ha_window[1]
        if on is None:
            return None
        proofs = self.runbook.fencing_checks
        if self.runbook.fencing == "none":
            return (f"this HA stack has no fencing (fencing: none): step '{on}' turns failover back on only with "
                    "an explicit acceptance of the split-brain risk (a prompt; unattended: --allow-no-stonith)")
        if proofs:
            return (f"fencing must be proven by preflight check {', '.join(proofs)} (refused otherwise; "
                    f"--allow-no-stonith warns and goes on)")
        return (f"no check proves fencing (the HA handling may have none, as keepalived): step '{on}' turns "
                "failover back on and needs an explicit acceptance of the split-brain risk (unattended: "
                "--allow-no-stonith)")


def describe_target(rb: Runbook, target: str, holders: list[str] | None) -> tuple[str, list[str]]:
    names = rb.node_names
    ip = rb.cluster.public_ip
    if target == "all":
        return f"all nodes ({', '.join(names)})", names
    if target in ("primary", "secondary"):
        if holders is not None and len(holders) == 1:
            chosen = holders if target == "primary" else [n for n in names if n not in holders]
            role = "holds" if target == "primary" else "does not hold"
            return f"{', '.join(chosen)} ({role} {ip} now; re-probed before the step)", chosen
        if target == "primary":
            return f"node holding {ip} (resolved at run time)", names
        return f"node(s) not holding {ip} (resolved at run time)", names
    if target.startswith("where:"):
        source = rb.step(target[6:])
        shown, nodes = describe_target(rb, source.on or "all", holders)
        return f"where '{source.id}' ran: {shown}", nodes
    return target, [target]


def build_plan(rb: Runbook, *, values: dict[str, str] | None = None, holders: list[str] | None = None,
               display: bool = True, phases: set[str] | None = None) -> Plan:
    """Resolve every check and step into actions, in execution order.

    `display=False` renders real values (for sending); `phases` limits the plan to some phases
    (the engine plans checks just before running them, with the values captured so far)."""
    phases = phases or {"preflight", "step", "postflight"}
    render = Renderer(rb, values, display=display)
    actions: list[Action] = []

    def add_check(phase: str, c: Check) -> None:
        if c.builtin:
            text, nodes = describe_target(rb, "all", holders)
            cmds = {n: NodeCommands(run=[render(rb.cluster.vip_probe, rb.node(n))]) for n in nodes}
            actions.append(Action(len(actions) + 1, phase, c.id, c.title or c.id, "builtin", "all",
                                  f"{text}: exactly one must hold {rb.cluster.public_ip}", nodes, cmds,
                                  why=c.why, severity=c.severity))
            return
        text, nodes = describe_target(rb, c.on, holders)
        cmds = {n: NodeCommands(run=[render(c.run or "", rb.node(n))]) for n in nodes}
        actions.append(Action(
            len(actions) + 1, phase, c.id, c.title or c.id, "check", c.on, text, nodes, cmds,
            timeout=c.timeout, expect=c.expect.model_dump(exclude_none=True) if c.expect else {"exit": [0]},
            same_on_all_nodes=c.same_on_all_nodes, capture=c.capture, severity=c.severity, why=c.why))

    for c in rb.preflight if "preflight" in phases else ():
        add_check("preflight", c)
    for s in rb.steps if "step" in phases else ():
        actions.append(step_action(rb, s, len(actions) + 1, render, holders))
    for c in rb.postflight if "postflight" in phases else ():
        add_check("postflight", c)
    return Plan(rb, actions, holders)


def step_action(rb: Runbook, s: Step, seq: int, render: Renderer, holders: list[str] | None) -> Action:
    if s.manual is not None:
        return Action(seq, "step", s.id, s.label, "manual", "", "the operator", [], {},
                      text=render(s.manual, None), confirm=True)
    text, nodes = describe_target(rb, s.on or "all", holders)
    cmds = {}
    for n in nodes:
        node = rb.node(n)
        cmds[n] = NodeCommands(
            run=[render(c, node) for c in s.run or []],
            verify=render(s.verify, node) if s.verify else None,
            rollback=[render(c, node) for c in s.rollback or []],
        )
    return Action(seq, "step", s.id, s.label, "command", s.on or "all", text, nodes, cmds,
                  confirm=s.confirm, parallel=s.parallel, timeout=s.timeout, retries=s.retries,
                  ha=s.ha, capture=s.capture, read_only=s.read_only,
                  undo="impossible" if s.rollback is None else ("commands" if s.rollback else "nothing"))


def plan_json(plan: Plan) -> dict[str, Any]:
    """The stable, documented JSON shape of a plan (format `bmupgrade-plan/1`)."""
    rb = plan.runbook
    return {
        "format": "bmupgrade-plan/1",
        "runbook": {"name": rb.name, "path": rb.source_path, "sha256": rb.source_sha256},
        "cluster": {
            "public_ip": rb.cluster.public_ip,
            "nodes": [{"name": n.name, "host": n.host, "port": n.port, "user": n.user, "sudo": n.sudo}
                      for n in rb.cluster.nodes],
            "vip_holders": plan.probed_holders,
        },
        "vars": {k: (templating.REDACTED if v.secret else v.value) for k, v in rb.vars.items()},
        "ha_window": dict(zip(("off", "on"), plan.ha_window)),
        "stonith_guard": plan.stonith_guard,
        "deadline": _iso(plan.deadline),
        "actions": [
            {
                "seq": a.seq,
                "phase": a.phase,
                "id": a.id,
                "title": a.title,
                "kind": a.kind,
                "target": a.target,
                "target_text": a.target_text,
                "nodes": {n: {"run": c.run, "verify": c.verify, "rollback": c.rollback}
                          for n, c in a.commands.items()},
                "text": a.text or None,
                "confirm": a.confirm,
                "parallel": a.parallel,
                "timeout_s": a.timeout,
                "timeout": format_duration(a.timeout) if a.timeout else None,
                "retries": a.retries,
                "ha": a.ha,
                "expect": a.expect,
                "same_on_all_nodes": a.same_on_all_nodes,
                "capture": a.capture,
                "severity": a.severity,
                "latest_start": _iso(plan.latest_start(a)),
                "undo": a.undo if a.phase == "step" and a.kind == "command" else None,
                "read_only": a.read_only,
                "probed": _probed_json(a.probed),
            }
            for a in plan.actions
        ],
    }


def _probed_json(p: StepProbe | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"not_sent": p.not_sent,
            "nodes": {o.node: {"exit": o.exit_code, "output": o.output} for o in p.outputs}}


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="minutes")
