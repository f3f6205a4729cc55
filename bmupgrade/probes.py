"""Facts read from the nodes: who holds the public IP, and the runbook's recorded facts.

Read-only by construction. `primary` is never cached: the engine calls `probe_vip` just
before each step that targets it, because a VIP can move at any moment (safety rule 1).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

from bmupgrade.errors import BmError
from bmupgrade.runbook import Runbook
from bmupgrade.transport.base import CommandResult, Transport

T = TypeVar("T")
PROBE_TIMEOUT = 30.0


def _new_pool() -> ThreadPoolExecutor:
    """One pool for the whole process: a step on both nodes reuses idle threads instead of
    starting two new ones (a step of a long run costs ~10 ms in all; the pool starts no thread
    until used). Roomy, because a thread left behind by a second Ctrl-C (its remote command
    goes on) must not hold up the next call."""
    return ThreadPoolExecutor(max_workers=32, thread_name_prefix="node")


_pool = _new_pool()


def drain_node_pool() -> None:
    """Wait for the node threads' work to end and let them go: what the end of a process does
    (an in-process caller that plays several invocations, the stateful model test, needs it)."""
    global _pool
    pool, _pool = _pool, _new_pool()
    pool.shutdown(wait=True)


def on_each(nodes: list[str], fn: Callable[[str], T], *, parallel: bool = True) -> dict[str, T]:
    """Call fn(node) for each node, concurrently when asked; results in node order."""
    if not parallel or len(nodes) <= 1:
        return {n: fn(n) for n in nodes}
    # Never joined here: on a second Ctrl-C the main thread must leave at once, not wait for
    # the workers (their remote commands go on; the journal says `started`).
    futures = {n: _pool.submit(fn, n) for n in nodes}
    return {n: f.result() for n, f in futures.items()}


@dataclass
class VipProbe:
    results: dict[str, CommandResult]

    @property
    def holders(self) -> list[str]:
        return [n for n, r in self.results.items() if r.ok and r.stdout.strip()]

    @property
    def unreachable(self) -> list[str]:
        return [n for n, r in self.results.items() if r.exit_code is None]

    def describe(self) -> str:
        parts = []
        for n, r in self.results.items():
            if r.exit_code is None:
                parts.append(f"{n}: no answer ({r.error or 'connection lost'})")
            elif not r.ok:
                parts.append(f"{n}: probe failed (exit {r.exit_code})")
            elif r.stdout.strip():
                parts.append(f"{n}: holds it ({r.stdout.strip().splitlines()[0][:80]})")
            else:
                parts.append(f"{n}: does not hold it")
        return "; ".join(parts)

    def single_holder(self, public_ip: str) -> str:
        """The one holder, or a BmError saying exactly which node answered what."""
        holders = self.holders
        if len(holders) == 1 and not self.unreachable:
            return holders[0]
        if self.unreachable:
            why = "cannot tell who holds it"
        elif not holders:
            why = "no node holds it (VIP down?)"
        else:
            why = f"{len(holders)} nodes hold it (split brain?)"
        raise BmError(f"public IP {public_ip}: {why} — {self.describe()}. Nothing was sent; fix the "
                      "cluster, then `bmupgrade resume`")


Send = Callable[[str, str], CommandResult]  # (node, command) -> result, e.g. through the audit log


def probe_vip(transport: Transport, rb: Runbook, render: Callable[[str, object], str],
              nodes: list[str] | None = None, *, send: Send | None = None) -> VipProbe:
    """Ask each node whether it holds the public IP. `send` (the engine's audited sender, see
    `audited_send`) makes the probes part of the audit trail: they are the evidence for "the
    post-install ran only on the VIP holder"."""
    nodes = nodes or rb.node_names
    cmds = {n: render(rb.cluster.vip_probe, rb.node(n)) for n in nodes}
    if send is None:
        def send(n: str, cmd: str) -> CommandResult:
            return transport.run(n, cmd, timeout=PROBE_TIMEOUT, capture=True)
    return VipProbe(on_each(nodes, lambda n: send(n, cmds[n])))


def audited_send(engine) -> Send:
    """The engine's own way of sending (audited before it is sent, output logged), for probes."""
    return lambda node, cmd: engine._send(node, cmd, timeout=PROBE_TIMEOUT, key="vip-probe", capture=True,
                                          quiet=True)


def probe_for_plan(rb: Runbook, *, read_only_steps: bool = True):
    """For `plan --probe`: connect, ask each node who holds the VIP, send the runbook's
    `read_only` steps (an apt simulation, say) on the nodes they would run on, disconnect.
    Returns the plan, with the holders and what each read-only step printed."""
    from bmupgrade.plan import Renderer, build_plan
    from bmupgrade.transport.ssh import SshTransport

    transport = SshTransport()
    try:
        transport.connect(node_addresses(rb))
        plan = build_plan(rb, holders=probe_vip(transport, rb, Renderer(rb)).holders)
        if read_only_steps:
            send_read_only_steps(transport, rb, plan)
        return plan
    finally:
        transport.close()


PROBE_OUTPUT_LINES = 60  # per node and step: an apt simulation of BlueMind's ~40 packages fits


def send_read_only_steps(transport: Transport, rb: Runbook, plan) -> None:
    """Run each `read_only: true` step's commands where the plan says it runs, and attach the
    answers to its action. Steps are sent one after the other (their order may matter to the
    reader), each step's nodes at once."""
    from bmupgrade.plan import Renderer, StepProbe
    from bmupgrade.templating import Redactor, TemplateError

    render = Renderer(rb)  # real values: these commands are sent
    redact = Redactor([v.value for v in rb.vars.values() if v.secret])
    for a in plan.actions:
        if not a.read_only:
            continue
        step = rb.step(a.id)
        if (step.on or "").startswith("where:"):
            a.probed = StepProbe(not_sent=f"it runs where '{step.on[6:]}' ran, known only during the run")
            continue
        try:
            cmds = {n: [render(c, rb.node(n)) for c in step.run or []] for n in a.nodes}
        except TemplateError as exc:
            a.probed = StepProbe(not_sent=f"{exc} (a value captured during the run)")
            continue
        answers = on_each(a.nodes, lambda n: _send_all(transport, n, cmds[n], step.timeout))
        a.probed = StepProbe([_probed(n, r, redact) for n, r in answers.items()])


def _send_all(transport: Transport, node: str, commands: list[str], timeout: float) -> CommandResult:
    """The step's commands in order on one node, stopping at the first that fails."""
    result = None
    for cmd in commands:
        result = transport.run(node, cmd, timeout=timeout)
        if not result.ok:
            break
    return result


def _probed(node: str, r: CommandResult, redact):
    from bmupgrade.plan import ProbedOutput
    from bmupgrade.sanitize import for_terminal

    lines = for_terminal(redact(r.output_tail)).rstrip("\n").splitlines()
    if len(lines) > PROBE_OUTPUT_LINES:
        cut = len(lines) - PROBE_OUTPUT_LINES
        lines = [f"... ({cut} earlier lines not shown)"] + lines[cut:]
    if r.exit_code is None:
        lines.append(f"(no answer: {r.error or 'connection lost'})")
    return ProbedOutput(node, r.exit_code, "\n".join(lines))


def node_addresses(rb: Runbook):
    from bmupgrade.transport.base import NodeAddress

    return [NodeAddress(name=n.name, host=n.host, port=n.port, user=n.user, sudo=n.sudo,
                        identity_file=n.identity_file, known_hosts=tuple(rb.cluster.known_hosts),
                        ssh_config=rb.cluster.ssh_config) for n in rb.cluster.nodes]
