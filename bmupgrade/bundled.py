"""The runbooks shipped inside the package (bmupgrade/runbooks/*.yaml), usable by name.

`bmupgrade plan bluemind-ha-pacemaker -i inventory.yaml` works from any directory: a RUNBOOK
argument that is not an existing file but names a bundled runbook (with or without `.yaml`)
resolves to the packaged copy. The repository's top-level `runbooks/` are links to these files.
"""

from __future__ import annotations

from pathlib import Path

DIR = Path(__file__).with_name("runbooks")


def names() -> list[str]:
    """Bundled runbook names, sorted (the file names without .yaml)."""
    return sorted(p.stem for p in DIR.glob("*.yaml"))


def path(name: str) -> Path | None:
    """The packaged file for a bundled name ('bluemind-ha-pacemaker' or '...yaml'), else None."""
    stem = name[:-5] if name.endswith(".yaml") else name
    if "/" in stem or stem.startswith("."):
        return None
    p = DIR / f"{stem}.yaml"
    return p if p.is_file() else None


def resolve(arg: str | Path) -> Path:
    """An existing file as given; otherwise a bundled runbook of that name; otherwise as given
    (the loader then says the file does not exist)."""
    given = Path(arg)
    if given.exists():
        return given
    return path(str(arg)) or given


def describe(name: str) -> tuple[str, str]:
    """(name, description) from the bundled file, without validating it."""
    import yaml

    data = yaml.safe_load(path(name).read_text(encoding="utf-8")) or {}
    return str(data.get("name", name)), " ".join(str(data.get("description", "")).split())
