"""Facts: read-only values recorded at the start, at every stop and on resume, so that a
resume shows what changed on the nodes while nobody was watching."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bmupgrade.journal import now, whoami

if TYPE_CHECKING:
    from bmupgrade.engine.core import Engine


def collect(eng: "Engine", probe=None) -> dict[str, Any]:
    """Every fact, each node's in one round trip (read-only: transport/together.py), and the
    VIP holders — from `probe` when the caller has one from moments ago (the lock's)."""
    where = {f.id: eng.rb.node_names if f.on == "all" else [f.on] for f in eng.rb.facts}
    asked: dict[str, list] = {}
    for f in eng.rb.facts:
        for n in where[f.id]:
            asked.setdefault(n, []).append((f"fact:{f.id}", eng.render(f.run, n), 30))
    answers = eng.ask_each(asked)
    values: dict[str, Any] = {}
    for f in eng.rb.facts:
        got = {n: answers[n][f"fact:{f.id}"] for n in where[f.id]}
        values[f.id] = {n: eng.redact(r.stdout.strip()) if r.exit_code is not None else f"<{r.error or 'no answer'}>"
                        for n, r in got.items()}
    values["vip_holders"] = (probe or eng.probe()).holders
    return values


def record(eng: "Engine", label: str, values: dict[str, Any] | None = None) -> None:
    eng.journal.add("facts", {"at": label, "time": now(), "values": values if values is not None else collect(eng)})


def show_changes(eng: "Engine", current: dict[str, Any]) -> None:
    eng.reporter.phase(f"Resuming run {eng.journal.run_id}")
    facts = eng.journal.data["facts"]
    before = facts[-1]["values"] if facts else {}
    changes = [f"{k}: {before.get(k)} → {current.get(k)}" for k in sorted(set(before) | set(current))
               if before.get(k) != current.get(k)]
    if changes:
        eng.reporter.warn("Changed since the run stopped (" + (facts[-1]["time"] if before else "start") + "):")
        for c in changes:
            eng.reporter.info(f"    {c}")
    else:
        eng.reporter.info("Nothing changed on the nodes since the run stopped (facts and VIP holder).")
    eng.journal.add("changes", {"time": now(), **whoami(), "changes": changes})
