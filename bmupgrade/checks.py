"""Evaluating checks: `expect` conditions and `same_on_all_nodes` comparisons.

Pure functions over command results, so every rule is unit-tested without a network.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from bmupgrade.transport.base import CommandResult


@dataclass
class CheckResult:
    id: str
    title: str
    ok: bool
    severity: str = "error"
    problems: list[str] = field(default_factory=list)  # one line each, node-prefixed
    diff: str = ""
    captured: str | None = None
    why: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)


def expect_problem(expect: dict, result: CommandResult) -> str | None:
    """None if the result meets every condition, else what is wrong (one line)."""
    if result.exit_code is None:
        return f"no result ({result.error or ('timed out' if result.timed_out else 'connection lost')})"
    out = result.stdout.strip()
    exits = expect.get("exit", [0])
    if result.exit_code not in exits:
        tail = _short(result.output_tail)
        return f"exit {result.exit_code}, expected {'/'.join(map(str, exits))}" + (f": {tail}" if tail else "")
    if "output" in expect and out != expect["output"]:
        return f"output {_short(out)!r}, expected {expect['output']!r}"
    if "match" in expect and not re.search(expect["match"], out):
        return f"output {_short(out)!r} does not match {expect['match']!r}"
    if "not_match" in expect and (m := re.search(expect["not_match"], out)):
        return f"output contains {m.group(0)!r} (must not match {expect['not_match']!r})"
    if expect.get("empty") is True and out:
        return f"expected no output, got {_short(out)!r}"
    if expect.get("empty") is False and not out:
        return "expected some output, got none"
    return None


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compare_outputs(results: dict[str, CommandResult]) -> tuple[bool, str]:
    """Are stdouts identical on every node? If not, a unified diff of each node vs the first."""
    names = list(results)
    outs = {n: results[n].stdout.strip().splitlines() for n in names}
    first = names[0]
    diffs = []
    for other in names[1:]:
        if outs[other] != outs[first]:
            diffs.extend(difflib.unified_diff(outs[first], outs[other], fromfile=first, tofile=other, lineterm=""))
    return not diffs, "\n".join(diffs)


def evaluate(action, results: dict[str, CommandResult]) -> CheckResult:
    """A check action (from the plan) against its per-node results."""
    res = CheckResult(action.id, action.title, True, action.severity, why=action.why,
                      outputs={n: r.stdout for n, r in results.items()})
    for node, r in results.items():
        problem = expect_problem(action.expect or {"exit": [0]}, r)
        if problem:
            res.problems.append(f"{node}: {problem}")
    if action.same_on_all_nodes and len(results) > 1 and not res.problems:
        same, diff = compare_outputs(results)
        if not same:
            res.problems.append("outputs differ between nodes: " + ", ".join(results))
            res.diff = diff
    res.ok = not res.problems
    if res.ok and action.capture:
        res.captured = next(iter(results.values())).stdout.strip()
    return res
