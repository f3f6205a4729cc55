"""The engine: walks a runbook over a transport through declared phases, journaling every
transition before its effect. Modules: `states` (the state tables), `phases` (what each
invocation runs), `step` (one step on its nodes), `rollback`, `guards` (STONITH, deadline, HA
debt, signals), `remote` (the shell snippets sent to the nodes), `core` (the Engine).

Imports are lazy so that `bmupgrade.journal` can use `engine.states` without loading the rest.
"""

from __future__ import annotations

__all__ = ["Engine", "RunOptions", "Stop", "fencing_gap", "Mode"]


def __getattr__(name: str):
    if name in ("Engine", "RunOptions", "Stop", "Mode"):
        from bmupgrade.engine import core

        return getattr(core, name)
    if name == "fencing_gap":
        from bmupgrade.engine.guards import fencing_gap

        return fencing_gap
    raise AttributeError(name)
