"""A VIP probe carried by the round trip that comes just before a step anyway (issue 15: the
HA window's serial round trips).

Safety rule 1 has the VIP holder asked just before a step on `primary`/`secondary` runs. When
the read-only round trip right before it — the previous step's `verify`, or this step's
`requires` checks — also carries the probe to every node (last in each node's script, after
every command of the previous step has returned), a round trip of its own would only add time.
Such an answer stands in for a new probe only while it is as good as one:

* nothing at all was sent since it came back (any command, any node, any thread);
* it is younger than FRESH_FOR (a prompt or a manual step in between makes it stale);
* every node answered it (a lost answer is asked again, maybe over a new connection);
* it is used once.

Otherwise the step probes on its own, as before.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from bmupgrade.probes import PROBE_TIMEOUT, VipProbe

if TYPE_CHECKING:
    from bmupgrade.engine.core import Engine
    from bmupgrade.engine.sender import AuditedSender
    from bmupgrade.runbook import Runbook, Step
    from bmupgrade.transport.base import CommandResult

FRESH_FOR = 0.5  # s: as the re-probe after a confirmation; slower than that, something came between
KEY = "vip-probe"


class CarriedProbe:
    def __init__(self, sender: "AuditedSender", rb: "Runbook", clock: Callable[[], float] = time.monotonic):
        self.sender, self.nodes, self.clock = sender, list(rb.node_names), clock
        self._held: tuple[VipProbe, int, float] | None = None
        self._probes_first = {s.id: _probes_first(nxt) for s, nxt in zip(rb.steps, rb.steps[1:])}

    def wanted_after(self, step: "Step") -> bool:
        """Will the step that follows `step` probe first thing? A wrong guess costs one unused
        read-only probe, never a stale one."""
        return self._probes_first.get(step.id, False)

    def asked(self, probe_command: Callable[[str], str]) -> dict[str, list[tuple[str, str, float]]]:
        """The probe for every node, as `ask_each` entries (callers put their own commands first)."""
        return {n: [(KEY, probe_command(n), PROBE_TIMEOUT)] for n in self.nodes}

    def keep(self, answers: dict[str, dict[str, "CommandResult"]]) -> None:
        """The probe's answers from an `ask_each` that carried it (see `asked`), just returned."""
        results = {n: a[KEY] for n, a in answers.items() if KEY in a}
        # a node that did not answer is asked again by the step's own probe (it may reconnect)
        complete = sorted(results) == sorted(self.nodes) and all(r.exit_code is not None for r in results.values())
        self._held = (VipProbe({n: results[n] for n in self.nodes}), self.sender.sends, self.clock()) \
            if complete else None

    def take(self) -> VipProbe | None:
        """The carried answer if it is still as good as a new probe (module docstring), else None."""
        held, self._held = self._held, None
        if held is None:
            return None
        probe, sends, at = held
        if sends != self.sender.sends or self.clock() - at > FRESH_FOR:
            return None
        return probe


def _probes_first(step: "Step") -> bool:
    """A step on primary/secondary probes before anything else, unless it has `requires` (it
    carries its probe with its own checks) or is manual."""
    return step.manual is None and step.on in ("primary", "secondary") and not step.requires


def ask_carrying_probe(eng: "Engine", asked: dict[str, list[tuple[str, str, float]]]) -> dict[str, dict]:
    """`eng.ask_each(asked)` with the VIP probe last on every node (in the same round trip),
    kept for the next step; the answers by node, then key."""
    asked = {n: list(asked.get(n, [])) for n in dict.fromkeys([*asked, *eng.carried.nodes])}
    for n, probe in eng.carried.asked(eng.probe_command).items():
        asked[n].extend(probe)
    answers = eng.ask_each(asked)
    eng.carried.keep(answers)
    return answers


def ask_with_probe(eng: "Engine", node: str, key: str, command: str, timeout: float) -> "CommandResult":
    """A read-only command (a verify) on `node` and the VIP probe on every node in one round
    trip, the probe after the command on `node`; the command's output shown as when it is sent
    alone."""
    result = ask_carrying_probe(eng, {node: [(key, command, timeout)]})[node][key]
    if result.output_tail.strip():
        eng.reporter.output(node, "stdout", eng.redact(result.output_tail))
    return result
