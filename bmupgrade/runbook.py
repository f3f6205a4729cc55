"""The runbook: what a run does, declared as data, and its strict loader.

One declaration drives `plan`, `run`, `status` and the report (as kubeadm's phases do), so
the model is strict: unknown keys, wrong types, duplicate ids, unknown nodes, undefined
template variables and bad durations are all errors, reported together with `file:line:col`.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from bmupgrade import lean, templating, yamlsource
from bmupgrade.errors import RunbookError, UsageError


lean.install()  # no pydantic plugin scan (see bmupgrade/lean.py)

ID_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
VAR_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
SYMBOLIC_TARGETS = ("primary", "secondary", "all")
WHERE_PREFIX = "where:"  # `on: where:STEP` = the nodes on which STEP ran (e.g. keepalived's ha-on)
DURATION_RE = re.compile(r"^\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")


def parse_duration(value: Any) -> float:
    """'45m', '1h30m', '90s', '2h', or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration like '90s', '45m' or '1h30m'")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError("a positive duration like '90s', '45m' or '1h30m'")
        return float(value)
    if isinstance(value, str):
        m = DURATION_RE.match(value)
        if m and any(m.groups()):
            h, mi, s = (int(g or 0) for g in m.groups())
            total = h * 3600 + mi * 60 + s
            if total > 0:
                return float(total)
    raise ValueError(f"'{value}' is not a duration; write e.g. '90s', '45m' or '1h30m'")


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                              {"type": "string", "pattern": r"^\s*(\d+h)?\s*(\d+m)?\s*(\d+s)?\s*$"}],
                    "description": "seconds, or e.g. '90s', '45m', '1h30m'"}),
]


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s" if s else ""]
    return "".join(parts) or "0s"


def _commands(value: Any) -> Any:
    """`run:` / `rollback:` take one command or a list of commands run in order."""
    if isinstance(value, str):
        return [value]
    return value


Commands = Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_commands)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Node(Strict):
    """One server of the pair."""

    name: str = Field(pattern=NAME_RE, description="Short name used in `on:` and reports.")
    host: str = Field(min_length=1, description="Host name or address (an ~/.ssh/config alias works).")
    port: int | None = Field(None, ge=1, le=65535, description="SSH port (default: ssh config, then 22).")
    user: str | None = Field(None, description="SSH user (default: ssh config, then the local user).")
    sudo: bool = Field(False, description="Run commands through sudo (user is not root).")
    identity_file: str | None = Field(None, description="Private key file (ssh config and agent still apply).")
    state_dir: str = Field(
        "/var/lib/bmupgrade", description="Where bmupgrade keeps its lock and HA-off marker on the node."
    )


class Cluster(Strict):
    public_ip: str = Field(description="The floating IP clients use; its holder is `primary`.")
    nodes: list[Node] = Field(min_length=2, description="The servers, in the order steps run on them.")
    vip_probe: str = Field(
        "ip -o addr show to {{ cluster.public_ip }}",
        description="Command whose non-empty output means 'this node holds the public IP'.",
    )
    known_hosts: Annotated[list[str], BeforeValidator(_commands)] = Field(
        default_factory=list, description="Extra known_hosts files (besides ~/.ssh/known_hosts)."
    )
    ssh_config: str | None = Field(None, description="An ssh_config file to use instead of ~/.ssh/config.")

    @field_validator("public_ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"'{v}' is not an IP address; give the floating IP, e.g. 192.0.2.10") from None
        return v


class Var(Strict):
    value: str = Field(description="The value (always text; quote versions like '4.10').")
    secret: bool = Field(False, description="Redact the value in plans, logs and journals.")
    description: str | None = None


class Expect(Strict):
    """What a check's output must look like. Several conditions must all hold."""

    exit: Annotated[
        list[int],
        BeforeValidator(lambda v: [v] if isinstance(v, int) and not isinstance(v, bool) else v),
        WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}]}),
    ] = Field(
        default_factory=lambda: [0], description="Accepted exit codes (default 0)."
    )
    output: str | None = Field(None, description="stdout, stripped, must equal this.")
    match: str | None = Field(None, description="stdout must contain a match of this regex.")
    not_match: str | None = Field(None, description="stdout must not contain a match of this regex.")
    empty: bool | None = Field(None, description="stdout must be empty (true) or not (false).")

    @field_validator("match", "not_match")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return v


def _expect(value: Any) -> Any:
    return {"output": value} if isinstance(value, str) else value


class Check(Strict):
    """A read-only preflight/postflight check."""

    id: str = Field(pattern=ID_RE)
    title: str | None = None
    on: str = Field("all", description="primary | secondary | all | a node name")
    run: str | None = Field(None, min_length=1, description="A read-only command.")
    builtin: Literal["single_vip_holder"] | None = Field(None, description="A built-in check.")
    expect: Annotated[Expect | None, BeforeValidator(_expect)] = None
    same_on_all_nodes: bool = Field(False, description="stdout must be identical on every node.")
    capture: str | None = Field(
        None, pattern=VAR_RE, description="Store stdout (stripped) in this variable (journaled)."
    )
    severity: Literal["error", "warning"] = Field("error", description="warning: report, don't stop.")
    timeout: Duration = Field(60.0)
    why: str | None = Field(None, description="Shown when the check fails: why it matters, how to fix.")
    until: str | None = Field(
        None, pattern=ID_RE,
        description="Preflight: the step that legitimately invalidates this check (e.g. `not-in-maintenance` "
        "until `ha-off`). Once that step is done, a resume skips the check; before, it always runs.")
    fencing: bool = Field(
        False, description="Preflight: passing proves fencing (STONITH) is enabled. The STONITH guard: without "
        "such a check passing, the `ha: enable` step needs an explicit confirmation or --allow-no-stonith.")

    @model_validator(mode="after")
    def _shape(self) -> "Check":
        if (self.run is None) == (self.builtin is None):
            raise ValueError("a check needs exactly one of 'run' or 'builtin'")
        if self.builtin and (self.expect or self.same_on_all_nodes or self.capture):
            raise ValueError("a builtin check takes no expect/same_on_all_nodes/capture")
        return self


class Fact(Strict):
    """A read-only value recorded in the journal at the start, at every stop and on resume, so
    `resume` can show what changed while nobody was watching (e.g. maintenance mode, versions)."""

    id: str = Field(pattern=ID_RE)
    title: str | None = None
    on: str = Field("all", description="all | a node name (facts do not depend on the VIP)")
    run: str = Field(min_length=1, description="A read-only command; its stdout is the fact.")

    @field_validator("on")
    @classmethod
    def _no_vip(cls, v: str) -> str:
        if v in ("primary", "secondary"):
            raise ValueError("facts run on 'all' or a node name (they must not depend on the VIP)")
        return v


class Step(Strict):
    """A change-making step, or (`manual:`) an action the admin does and acknowledges."""

    id: str = Field(pattern=ID_RE)
    title: str | None = None
    manual: str | None = Field(None, min_length=1, description="Text of a manual action to acknowledge.")
    on: str | None = Field(None, description="primary | secondary | all | a node name")
    run: Commands | None = Field(None, description="Command(s), run in order on each target node.")
    verify: str | None = Field(None, min_length=1, description="Exit 0 = the step achieved its goal.")
    rollback: Commands | None = Field(
        None, description="Command(s) that undo the step; [] = nothing to undo; absent = cannot be undone.")
    confirm: bool = Field(False, description="Ask before running (interactive runs).")
    parallel: bool = Field(False, description="Run on the target nodes at the same time.")
    timeout: Duration = Field(600.0, description="Per command, e.g. '45m'.")
    retries: int = Field(0, ge=0, le=20)
    retry_delay: Duration = Field(5.0)
    ha: Literal["disable", "enable"] | None = Field(
        None, description="Marks the steps that turn HA handling off/on (HA-off window, marker and debt; "
        "`enable` is guarded by the STONITH guard, see `fencing` on checks)."
    )
    capture: str | None = Field(None, pattern=VAR_RE, description="Store stdout of the (single-node) run.")
    idempotent: bool = Field(
        False, description="Sending it twice is harmless: a command whose outcome was lost (timeout, dropped "
        "connection, crash) may be re-sent automatically (retries, resume). Otherwise it never is.")
    always_undo: bool = Field(
        False, description="Its rollback restores normal operation (cron, a runtime mask), so it is run even "
        "past a point of no return when the run stopped inside the window (`ha: disable` steps always are).")
    point_of_no_return: bool = Field(
        False, description="Once done, the steps before it are never undone (e.g. BlueMind's post-install "
        "migrated the data): rollback only undoes later steps and the back-out is a restore from backup.")
    requires: list[Annotated[str, Field(pattern=ID_RE)]] = Field(
        default_factory=list, description="Earlier steps (with a `verify`) whose effect must still hold when this "
        "step starts, e.g. a runtime mask a reboot clears: before each attempt their verify runs where they are "
        "done; one that no longer holds is re-applied if idempotent, else the run stops before this step.")
    read_only: bool = Field(
        False, description="Changes nothing on the nodes (a simulation, a query): `plan --probe` runs it and "
        "shows what it prints, and it may be re-sent like an idempotent step. Takes no rollback commands.")

    @model_validator(mode="after")
    def _shape(self) -> "Step":
        if self.manual is not None:
            extra = [k for k in ("on", "run", "verify", "rollback", "capture") if getattr(self, k)]
            if extra:
                raise ValueError(f"a manual step takes no {', '.join(extra)}")
            return self
        if not self.run:
            raise ValueError("a step needs 'run' (commands) or 'manual' (text the admin acknowledges)")
        if self.on is None:
            raise ValueError("a step needs 'on': primary | secondary | all | a node name")
        if self.read_only:
            self._read_only_shape()
        return self

    def _read_only_shape(self) -> None:
        """A read-only step is what `plan --probe` may send: nothing that changes a node or the run."""
        clash = [k for k in ("ha", "point_of_no_return", "always_undo", "confirm") if getattr(self, k)]
        if self.rollback:
            clash.append("rollback commands")
        if clash:
            raise ValueError(f"a read_only step changes nothing, so it takes no {', '.join(clash)} "
                             "(use rollback: [] and drop the rest, or drop read_only)")
        object.__setattr__(self, "idempotent", True)  # sending a read-only command twice is harmless

    @property
    def label(self) -> str:
        return self.title or self.id


class Runbook(Strict):
    version: Literal[1] = Field(description="Runbook format version.")
    name: str = Field(min_length=1)
    description: str | None = None
    cluster: Cluster
    vars: dict[Annotated[str, Field(pattern=VAR_RE)], Var] = Field(default_factory=dict)
    facts: list[Fact] = Field(default_factory=list)
    preflight: list[Check] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)
    postflight: list[Check] = Field(default_factory=list)
    fencing: Literal["checked", "none"] = Field(
        "checked", description="`none`: this HA stack has no fencing at all (keepalived/VRRP): the STONITH guard "
        "then says so and asks to accept the split-brain risk instead of telling the admin to fix fencing. "
        "`checked` (default): preflight checks marked `fencing: true` must prove it.")

    # filled by the loader, not part of the file
    source_path: str = Field("", exclude=True)
    source_sha256: str = Field("", exclude=True)

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.cluster.nodes]

    def node(self, name: str) -> Node:
        return next(n for n in self.cluster.nodes if n.name == name)

    @property
    def secret_vars(self) -> set[str]:
        return {k for k, v in self.vars.items() if v.secret}

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def ha_step(self, kind: str) -> Step | None:
        """The step marked `ha: disable` or `ha: enable`, if any."""
        return next((s for s in self.steps if s.ha == kind), None)

    @property
    def fencing_checks(self) -> list[str]:
        """Ids of the preflight checks whose success proves fencing (the STONITH guard)."""
        return [c.id for c in self.preflight if c.fencing]


# --------------------------------------------------------------------------- loading


def _normalise_vars(data: dict, source: yamlsource.Source, overrides: dict[str, str]) -> None:
    """Plain `name: value` becomes {value: ...}; scalars keep their written text (4.10 != 4.1)."""
    raw_vars = data.get("vars")
    if raw_vars is None:
        raw_vars = {}
    if not isinstance(raw_vars, dict):
        return  # the model reports the type error
    out = {}
    for k, v in raw_vars.items():
        if isinstance(v, (str, int, float, bool)) and not isinstance(v, dict):
            out[k] = {"value": source.raw.get(("vars", k), str(v))}
        elif isinstance(v, dict) and "value" in v and not isinstance(v["value"], (dict, list)):
            v = dict(v)
            v["value"] = source.raw.get(("vars", k, "value"), str(v["value"]))
            out[k] = v
        else:
            out[k] = v
    for k, value in overrides.items():
        if k in out and isinstance(out[k], dict):
            out[k] = {**out[k], "value": value}
        else:
            out[k] = {"value": value}
    data["vars"] = out


def _refuse_the_example_address(inv_source: yamlsource.Source, data: dict) -> None:
    """An inventory names its cluster's own floating IP: the runbook's is an example, never used."""
    inv_cluster = inv_source.data.get("cluster") if isinstance(inv_source.data, dict) else None
    if isinstance(inv_cluster, dict) and "public_ip" not in inv_cluster:
        pos = inv_source.where(("cluster",), key=True)
        example = data.get("cluster", {}).get("public_ip") if isinstance(data.get("cluster"), dict) else None
        raise RunbookError([f"{inv_source.filename}:{pos.line}:{pos.column}: cluster.public_ip missing: give the "
                            "floating IP of this cluster"
                            + (f" (the runbook's {example} is an example and is never used)" if example else "")])


def _refuse_unknown_overrides(data: dict, overrides: dict[str, str]) -> None:
    """`-e nmae=x` is a typo, never a silent new variable: exit 2 with the closest name."""
    import difflib

    declared = list(data["vars"]) if isinstance(data.get("vars"), dict) else []
    for key in overrides:
        if key not in declared:
            close = difflib.get_close_matches(key, declared, n=1)
            raise UsageError(f"-e {key}=...: the runbook (and inventory) has no variable '{key}'"
                             + (f"; did you mean '{close[0]}'?" if close else "")
                             + f" Variables: {', '.join(sorted(declared)) or 'none'}. Nothing was changed.")


def _located(source: yamlsource.Source, loc: tuple, message: str, *, key: bool = False) -> str:
    pos = source.where(loc, key=key)
    where = " ".join(".".join(str(p) for p in loc).split()) or "(top level)"  # a key may span lines
    message = " ".join(message.split())  # one line, whatever the input contained
    filename = source.filename_for(loc) if hasattr(source, "filename_for") else source.filename
    return f"{filename}:{pos.line}:{pos.column}: {where}: {message}"


def _document_path(data: Any, loc: tuple) -> tuple:
    """pydantic's error location without its internal parts (union member names, validator
    tags): keep the keys and indexes that exist in the document, plus a final missing/extra key."""
    path: list = []
    current = data
    for i, part in enumerate(loc):
        if isinstance(current, dict) and isinstance(part, str) and part in current:
            path.append(part)
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            path.append(part)
            current = current[part]
        elif i == len(loc) - 1 and isinstance(part, str) and isinstance(current, dict):
            path.append(part)  # a missing key
    return tuple(path)


def _pydantic_problems(exc: ValidationError, source: yamlsource.Source, data: Any = None) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = _document_path(source.data if data is None else data, err["loc"])
        kind = err["type"]
        msg = err["msg"]
        if kind == "extra_forbidden":
            parent = _model_at(loc[:-1])
            valid = ", ".join(sorted(parent.model_fields)) if parent else ""
            problems.append(_located(source, loc, f"unknown key '{loc[-1]}'; valid keys here: {valid}", key=True))
            continue
        if kind == "missing":
            problems.append(_located(source, loc[:-1], f"missing required key '{loc[-1]}'"))
            continue
        if kind == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif kind.endswith("_type") or kind.endswith("_parsing"):
            got = type(err.get("input")).__name__
            got = {"NoneType": "nothing", "dict": "a mapping", "list": "a list", "str": "text",
                   "int": "a number", "bool": "true/false", "float": "a number"}.get(got, got)
            msg = f"{msg.rstrip('.')} (got {got})"
        elif kind == "string_pattern_mismatch":
            msg = "use lower-case letters, digits, '-' and '_' (e.g. 'ha-off')" if loc and loc[-1] == "id" \
                else f"invalid value {err.get('input')!r}; {msg}"
        elif kind == "literal_error":
            msg = f"{err.get('input')!r} is not allowed; {msg}"
        problems.append(_located(source, loc, msg))
    return problems


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns keys at this location (for 'valid keys here')."""
    model: Any = Runbook
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        ann = field.annotation
        model = _inner_model(ann)
        if model is None:
            return None
    return model


def _inner_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _inner_model(arg)
        if found:
            return found
    meta = getattr(ann, "__origin__", None)
    if meta is not None and isinstance(meta, type) and issubclass(meta, BaseModel):
        return meta
    return None


def _semantic_problems(data: dict, source: yamlsource.Source) -> list[str]:
    """Cross-field rules pydantic cannot see: ids, targets, templates, addresses.

    Works on the raw data, defensively, so these problems are reported together with the
    type errors instead of only after those are fixed.
    """
    problems: list[str] = []
    cluster = data.get("cluster") if isinstance(data.get("cluster"), dict) else {}
    names = _node_problems(cluster, source, problems)
    _id_and_target_problems(data, source, names, problems)
    _placement_problems(data, source, problems)
    _requires_problems(data, source, problems)
    captures = _capture_problems(data, source, names, problems)
    _template_problems(data, source, cluster, captures, problems)
    return problems


_SECTIONS = ("facts", "preflight", "steps", "postflight")


def _items(data: dict, section: str) -> list[tuple[int, dict]]:
    value = data.get(section)
    return [(i, x) for i, x in enumerate(value) if isinstance(x, dict)] if isinstance(value, list) else []


def _step_ids(data: dict) -> list[str]:
    return [x.get("id") for _, x in _items(data, "steps") if isinstance(x.get("id"), str)]


def _node_problems(cluster: dict, source: yamlsource.Source, problems: list[str]) -> list[str]:
    """Reserved or duplicate node names, shared host:port; returns the node names."""
    raw_nodes = cluster.get("nodes") if isinstance(cluster.get("nodes"), list) else []
    nodes = [(i, n) for i, n in enumerate(raw_nodes) if isinstance(n, dict)]
    seen_names: dict[str, int] = {}
    seen_addr: dict[tuple, str] = {}
    for i, n in nodes:
        name = n.get("name")
        if name in SYMBOLIC_TARGETS:
            problems.append(_located(source, ("cluster", "nodes", i, "name"),
                                     f"'{name}' is reserved for targets; pick another node name"))
        if isinstance(name, str) and name in seen_names:
            problems.append(_located(source, ("cluster", "nodes", i, "name"),
                                     f"duplicate node name '{name}' (also node {seen_names[name] + 1})"))
        if isinstance(name, str):
            seen_names.setdefault(name, i)
        port = n.get("port") if isinstance(n.get("port"), int) else 22
        addr = (n.get("host"), port or 22)
        if isinstance(addr[0], str):
            if addr in seen_addr:
                problems.append(_located(source, ("cluster", "nodes", i, "host"),
                                         f"{addr[0]}:{addr[1]} is also node '{seen_addr[addr]}'; each node "
                                         "needs its own host:port"))
            seen_addr.setdefault(addr, str(name))
    return [n.get("name") for _, n in nodes if isinstance(n.get("name"), str)]


def _id_and_target_problems(data: dict, source: yamlsource.Source, names: list[str], problems: list[str]) -> None:
    """Ids unique across sections; `on:` is a node, a symbolic target, or where:EARLIER-STEP."""
    step_ids = _step_ids(data)
    ids: dict[str, tuple] = {}
    for section in _SECTIONS:
        for i, item in _items(data, section):
            item_id = item.get("id")
            if isinstance(item_id, str):
                if item_id in ids:
                    first = ".".join(str(p) for p in ids[item_id])
                    problems.append(_located(source, (section, i, "id"),
                                             f"duplicate id '{item_id}' (first used at {first}); ids must be unique"))
                ids.setdefault(item_id, (section, i))
            target = item.get("on")
            if isinstance(target, str) and target.startswith(WHERE_PREFIX) and section == "steps":
                if target[len(WHERE_PREFIX):] not in step_ids[:i]:
                    problems.append(_located(source, (section, i, "on"),
                                             f"'{target}' names no earlier step; use where:STEP with one of: "
                                             f"{', '.join(step_ids[:i]) or '(none)'}"))
            elif isinstance(target, str) and target not in SYMBOLIC_TARGETS and target not in names:
                problems.append(_located(source, (section, i, "on"),
                                         f"unknown target '{target}'; use primary, secondary, all"
                                         + (", where:STEP" if section == "steps" else "")
                                         + f" or one of: {', '.join(names)}"))


def _placement_problems(data: dict, source: yamlsource.Source, problems: list[str]) -> None:
    """`until:` names a step and, like `fencing:`, belongs on a preflight check."""
    step_ids = _step_ids(data)
    for i, item in _items(data, "preflight"):
        until = item.get("until")
        if isinstance(until, str) and until not in step_ids:
            problems.append(_located(source, ("preflight", i, "until"),
                                     f"'{until}' is no step of this runbook; steps are: {', '.join(step_ids)}"))
    for i, item in _items(data, "postflight"):
        if item.get("until") is not None:
            problems.append(_located(source, ("postflight", i, "until"),
                                     "until: belongs on a preflight check (postflight runs after every step)"))
        if item.get("fencing") is True:
            problems.append(_located(source, ("postflight", i, "fencing"),
                                     "fencing: true belongs on a preflight check (the STONITH guard is decided "
                                     "before anything changes); move the check to preflight"))
    if data.get("fencing") == "none":
        for i, item in _items(data, "preflight"):
            if item.get("fencing") is True:
                problems.append(_located(source, ("preflight", i, "fencing"),
                                         "the runbook says `fencing: none`, so no check can prove fencing; drop "
                                         "one of the two"))


def _requires_problems(data: dict, source: yamlsource.Source, problems: list[str]) -> None:
    """`requires:` names an earlier step that has a `verify` (how else tell that it still holds?)."""
    earlier: dict[str, dict] = {}
    for i, item in _items(data, "steps"):
        reqs = item.get("requires")
        for j, rid in enumerate(reqs if isinstance(reqs, list) else []):
            if not isinstance(rid, str):
                continue
            where = ("steps", i, "requires", j)
            if rid not in earlier:
                problems.append(_located(source, where, f"'{rid}' is no earlier step; a step can require only steps "
                                         f"before it: {', '.join(earlier) or '(none)'}"))
            elif not isinstance(earlier[rid].get("verify"), str):
                problems.append(_located(source, where, f"step '{rid}' has no verify, so nothing can tell whether it "
                                         "still holds; give it a verify or drop it from requires"))
        if isinstance(item.get("id"), str):
            earlier[item["id"]] = item


def _capture_problems(data: dict, source: yamlsource.Source, names: list[str], problems: list[str]) -> set[str]:
    """A capture makes a new variable from a single value; returns the captured names."""
    defined = set(data["vars"]) if isinstance(data.get("vars"), dict) else set()
    captures: set[str] = set()
    for section in _SECTIONS:
        for i, item in _items(data, section):
            cap = item.get("capture")
            if not isinstance(cap, str):
                continue
            if cap in defined or cap in captures:
                problems.append(_located(source, (section, i, "capture"),
                                         f"'{cap}' is already a variable; capture into a new name"))
            captures.add(cap)
            target = item.get("on", "all" if section != "steps" else None)
            single = target == "primary" or target in names
            if not single and not (section != "steps" and item.get("same_on_all_nodes") is True):
                problems.append(_located(source, (section, i, "capture"),
                                         "capture needs one value: target primary or a node name"
                                         + ("" if section == "steps" else ", or set same_on_all_nodes: true")))
    return captures


def _template_problems(data: dict, source: yamlsource.Source, cluster: dict, captures: set[str],
                       problems: list[str]) -> None:
    """Template names (vars, captures, cluster.*, node.*, peer.*) and quoting, in every command."""
    check = _template_checker(data, source, captures, problems)
    check(cluster.get("vip_probe"), ("cluster", "vip_probe"))
    for section in _SECTIONS:
        for i, item in _items(data, section):
            for field in ("run", "verify", "rollback", "manual", "title"):
                value = item.get(field)
                if isinstance(value, list):
                    for j, cmd in enumerate(value):
                        check(cmd, (section, i, field, j))
                else:
                    check(value, (section, i, field))


def _template_checker(data: dict, source: yamlsource.Source, captures: set[str], problems: list[str]):
    defined = set(data["vars"]) if isinstance(data.get("vars"), dict) else set()
    node_fields = set(Node.model_fields)
    known_prefixes = {"cluster": {"public_ip"}, "node": node_fields, "peer": node_fields}

    def check_template(text: Any, loc: tuple) -> None:
        if not isinstance(text, str):
            return
        try:
            found = templating.refs(text)
            for p in templating.quoting_problems(text):
                problems.append(_located(source, loc, str(p)))
        except templating.TemplateError as exc:
            problems.append(_located(source, loc, str(exc)))
            return
        for ref in found:
            head, _, rest = ref.name.partition(".")
            if head in known_prefixes:
                if rest not in known_prefixes[head]:
                    valid = ", ".join(f"{head}.{f}" for f in sorted(known_prefixes[head]))
                    problems.append(_located(source, loc, f"undefined variable '{ref.name}'; valid: {valid}"))
            elif rest or (ref.name not in defined and ref.name not in captures):
                avail = sorted(defined | captures)
                problems.append(_located(
                    source, loc,
                    f"undefined variable '{ref.name}'; define it under 'vars:' (then -e {ref.name}=VALUE can set it)"
                    + (f" (defined: {', '.join(avail)})" if avail else "")))

    return check_template


def unknown_step_refs(rb: "Runbook | Iterable[str]", names: Iterable[str], flag: str,
                      *, manual: Iterable[str] | None = None) -> list[str]:
    """One problem per NAME given to FLAG (--ack, --rerun, --assume-done) that is no step of the
    runbook, with the closest step id. `rb` is a Runbook or its step ids (e.g. a journal's).

    With `manual` (the ids of the manual steps), a step that exists but is not manual is refused
    too: --ack acknowledges manual steps only. `all` is accepted for --ack."""
    ids = [s.id for s in rb.steps] if isinstance(rb, Runbook) else list(rb)
    ok = set(ids) if manual is None else set(manual) | {"all"}
    problems = []
    for name in names:
        if name in ok:
            continue
        if name in ids:
            problems.append(f"{flag} {name}: '{name}' is not a manual step; {flag} takes manual steps: "
                            f"{', '.join(sorted(ok - {'all'})) or '(none in this runbook)'}, or all")
            continue
        pool = sorted(ok - {"all"}) if manual is not None else ids
        close = difflib.get_close_matches(name, pool, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"steps are: {', '.join(pool) or '(none)'}"
        problems.append(f"{flag} {name}: no step of this runbook has this id; {hint}")
    return problems


def inventory_problems(inv_source: yamlsource.Source) -> None:
    """An inventory must be a mapping with a `cluster:` mapping and, optionally, a `vars:`
    mapping. Anything else is refused (never silently replaced by the runbook's own hosts)."""
    inv, name = inv_source.data, inv_source.filename
    shape = "an inventory is a mapping with 'cluster:' (a mapping with public_ip, nodes, ...) and optionally 'vars:'"
    if not isinstance(inv, dict):
        raise RunbookError([f"{name}:1:1: {shape}; got {_kind(inv)}"])
    problems = []
    for key in inv:
        if key not in ("cluster", "vars"):
            p = inv_source.where((key,), key=True)
            problems.append(f"{name}:{p.line}:{p.column}: unknown key '{key}'; {shape}")
    if "cluster" not in inv:
        problems.append(f"{name}:1:1: missing 'cluster:'; {shape}")
    for key in ("cluster", "vars"):
        if key in inv and not isinstance(inv[key], dict):
            p = inv_source.where((key,)) if inv[key] is not None else inv_source.where((key,), key=True)
            problems.append(f"{name}:{p.line}:{p.column}: {key}: expected a mapping, got {_kind(inv[key])}; {shape}")
    if problems:
        raise RunbookError(sorted(problems, key=_line_order))


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    return {dict: "a mapping", list: "a list", str: f"text {value!r}"[:60], bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def load_runbook(
    path: str | Path,
    *,
    overrides: dict[str, str] | None = None,
    inventory: str | Path | None = None,
) -> Runbook:
    """Load, merge the inventory's `cluster:` (e.g. the lab's), apply `-e` overrides, validate.

    Raises RunbookError listing every problem, each with file:line:column. `path` may also name
    a bundled runbook (`bmupgrade runbooks` lists them). An inventory must give the cluster's own
    `public_ip`: a runbook's address is an example, never used for a real cluster.
    """
    from bmupgrade import bundled

    path = bundled.resolve(path)
    try:
        source = yamlsource.load_file(path)
    except yamlsource.SourceError as exc:
        raise RunbookError(exc.problems) from None
    data = source.data
    if not isinstance(data, dict):
        raise RunbookError([f"{source.filename}:1:1: expected a mapping with version, name, cluster and "
                            f"steps, got {type(data).__name__}"])
    data = dict(data)
    inv_source = None
    if inventory is not None:
        try:
            inv_source = yamlsource.load_file(inventory)
        except yamlsource.SourceError as exc:
            raise RunbookError(exc.problems) from None
        inv = inv_source.data
        inventory_problems(inv_source)
        _refuse_the_example_address(inv_source, data)
        if isinstance(data.get("cluster"), dict):
            data["cluster"] = {**data["cluster"], **inv["cluster"]}
        if isinstance(inv.get("vars"), dict):
            merged_vars = dict(data.get("vars") or {})
            merged_vars.update(inv["vars"])
            data["vars"] = merged_vars
    overrides = dict(overrides or {})
    _refuse_unknown_overrides(data, overrides)
    _normalise_vars(data, source, overrides)
    # Problems inside the merged cluster point at the inventory file when it supplied them.
    loc_source = source
    if inv_source is not None:
        loc_source = _merged_source(source, inv_source)
    problems = []
    try:
        rb = Runbook.model_validate(data)
    except ValidationError as exc:
        problems = _pydantic_problems(exc, loc_source, data)
    problems += [p for p in _semantic_problems(data, loc_source) if p not in problems]
    if problems:
        raise RunbookError(sorted(problems, key=_line_order))
    raw = Path(path).read_bytes()
    digest = hashlib.sha256(raw)
    if inventory is not None:
        digest.update(Path(inventory).read_bytes())
    return rb.model_copy(update={"source_path": str(Path(path).resolve()), "source_sha256": digest.hexdigest()})


def _line_order(problem: str) -> tuple:
    """Sort located problems by file, then line and column (as a person reads the file)."""
    m = re.match(r"^(.*?):(\d+):(\d+): ", problem)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else (problem, 0, 0)


def _merged_source(rb_src: yamlsource.Source, inv_src: yamlsource.Source) -> yamlsource.Source:
    """A Source whose positions for `cluster.*` come from the inventory (with its filename)."""

    class Merged(yamlsource.Source):
        def where(self, path, *, key=False):  # type: ignore[override]
            return (inv_src if self._from_inv(path) else rb_src).where(path, key=key)

        def _from_inv(self, path) -> bool:
            return bool(path) and path[0] in ("cluster", "vars") and tuple(path[:2]) in inv_src.values

    m = Merged(rb_src.filename, rb_src.data, rb_src.values, rb_src.keys, rb_src.raw)

    def _located_name(path) -> str:
        return inv_src.filename if m._from_inv(path) else rb_src.filename

    m.filename_for = _located_name  # type: ignore[attr-defined]
    return m


def json_schema() -> dict:
    """JSON Schema of the runbook file, for editors' YAML language servers."""
    schema = Runbook.model_json_schema(mode="validation")
    props = schema.get("properties", {})
    props.pop("source_path", None)
    props.pop("source_sha256", None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://bmupgrade.invalid/runbook-v1.schema.json"
    schema["title"] = "bmupgrade runbook"
    # vars may be written as plain `name: value`
    for pattern, var_ref in schema["properties"]["vars"]["patternProperties"].items():
        schema["properties"]["vars"]["patternProperties"][pattern] = {
            "anyOf": [var_ref, {"type": ["string", "number", "boolean"]}]
        }
    schema["properties"]["vars"]["additionalProperties"] = False
    # `run:`/`rollback:` accept one command or a list; expect accepts a plain string
    for name in ("Step",):
        for key in ("run", "rollback"):
            prop = schema["$defs"][name]["properties"][key]
            prop["anyOf"] = [{"type": "string"}, *prop.get("anyOf", [])]
    for name, key in (("Check", "expect"), ("Cluster", "known_hosts")):
        prop = schema["$defs"][name]["properties"][key]
        alts = prop.pop("anyOf", None) or [{k: prop.pop(k) for k in list(prop) if k in ("type", "items")}]
        prop["anyOf"] = [{"type": "string"}, *alts]
    return schema
