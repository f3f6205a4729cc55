"""Facts: read-only values recorded at the start, at every stop and on resume, so that a
resume shows what changed on the nodes while nobody was watching."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bmupgrade.journal import now, whoami

if TYPE_CHECKING:
    from bmupgrade.engine.core import Engine


def collect(eng: "Engine") -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in eng.rb.facts:
        nodes = eng.rb.node_names if f.on == "all" else [f.on]
        outs = eng.on_each(nodes, lambda n, f=f: eng.send(n, eng.render(f.run, n), timeout=30, key=f"fact:{f.id}",
                                                           capture=True, quiet=True))
        values[f.id] = {n: (eng.redact(r.stdout.strip()) if r.exit_code is not None else f"<{r.error or 'no answer'}>")
                        for n, r in outs.items()}
    values["vip_holders"] = eng.probe().holders
    return values


def record(eng: "Engine", label: str) -> None:
    eng.journal.add("facts", {"at": label, "time": now(), "values": collect(eng)})


def show_changes(eng: "Engine") -> None:
    eng.reporter.phase(f"Resuming run {eng.journal.run_id}")
    facts = eng.journal.data["facts"]
    before = facts[-1]["values"] if facts else {}
    current = collect(eng)
    changes = [f"{k}: {before.get(k)} → {current.get(k)}" for k in sorted(set(before) | set(current))
               if before.get(k) != current.get(k)]
    if changes:
        eng.reporter.warn("Changed since the run stopped (" + (facts[-1]["time"] if before else "start") + "):")
        for c in changes:
            eng.reporter.info(f"    {c}")
    else:
        eng.reporter.info("Nothing changed on the nodes since the run stopped (facts and VIP holder).")
    eng.journal.add("changes", {"time": now(), **whoami(), "changes": changes})
