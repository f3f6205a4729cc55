"""Load YAML into plain Python data while remembering where every value came from.

Validation errors must name `file:line:column`; PyYAML's node tree has the marks, but the
plain objects it builds do not. We compose the node tree ourselves and record, for every
path (tuple of keys/indexes), the position of its value and of its key.

Hostile input is refused with a located one-line problem instead of a traceback or a hang:
non-UTF-8/binary bytes, files over `MAX_BYTES`, nesting deeper than `MAX_DEPTH`, alias
expansion past `MAX_NODES` (a "billion laughs" document), duplicate keys (which PyYAML would
silently let the last one win — a classic source of a wrong runbook).

Speed: the node tree comes from libyaml (`yaml.CSafeLoader`, ~10× faster on a large runbook)
when PyYAML was built with it. Its marks are the same line/column; its error messages are
worded differently, so a document libyaml refuses is parsed again by the pure-Python loader,
whose error is the one reported: the same message at the same place with or without libyaml.
"""

from __future__ import annotations

import gc
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 200_000

Path_ = tuple  # a path into the document: keys (str) and list indexes (int)

# libyaml's loader if PyYAML has it (None: pure Python only; tests switch between the two)
C_LOADER = getattr(yaml, "CSafeLoader", None)


class Pos(NamedTuple):  # a tuple: built for every node of the document, cheaply
    line: int  # 1-based
    column: int  # 1-based


@dataclass
class Source:
    """A loaded document: data, where each value is, and where each mapping key is."""

    filename: str
    data: Any
    values: dict[Path_, Pos]
    keys: dict[Path_, Pos]
    raw: dict[Path_, str]  # scalars as written (so `version: 4.10` stays "4.10", not 4.1)

    def where(self, path: Path_, *, key: bool = False) -> Pos:
        """The most precise known position for `path` (walks up to the nearest parent)."""
        table = self.keys if key else self.values
        p = tuple(path)
        while True:
            if p in table:
                return table[p]
            if p in self.values:
                return self.values[p]
            if not p:
                return Pos(1, 1)
            p = p[:-1]


class SourceError(Exception):
    """The file cannot be read as YAML at all; `problems` are located one-line messages."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _max_digits() -> int:
    import sys

    return getattr(sys, "get_int_max_str_digits", lambda: 4300)() or 4300


def _pos(mark) -> Pos:
    return Pos(mark.line + 1, mark.column + 1)


class _Reparse(Exception):
    """libyaml placed something differently from PyYAML: compose again with PyYAML."""


class _Builder:
    def __init__(self, filename: str, *, from_libyaml: bool = False):
        self.from_libyaml = from_libyaml
        self.filename = filename
        self.values: dict[Path_, Pos] = {}
        self.keys: dict[Path_, Pos] = {}
        self.problems: list[str] = []
        self.count = 0
        self.raw: dict[Path_, str] = {}
        self._scalar = yaml.SafeLoader("")  # used only to construct scalars with YAML's rules

    def build(self, node: yaml.Node, path: Path_ = (), depth: int = 0) -> Any:
        """Plain data for `node`, recording positions (the hot loop of a big runbook's load)."""
        self.count += 1
        if self.count > MAX_NODES:
            p = _pos(node.start_mark)
            raise SourceError(
                [f"{self.filename}:{p.line}:{p.column}: "
                 f"document expands to more than {MAX_NODES} values (alias bomb?); "
                 "a runbook needs far fewer — remove the repeated aliases"]
            )
        if depth > MAX_DEPTH:
            p = _pos(node.start_mark)
            raise SourceError(
                [f"{self.filename}:{p.line}:{p.column}: nested deeper than {MAX_DEPTH} levels; "
                 "a runbook is at most a few levels deep — check the indentation"]
            )
        if path not in self.values:
            m = node.start_mark
            self.values[path] = Pos(m.line + 1, m.column + 1)
        if type(node) is yaml.ScalarNode:
            self.raw[path] = node.value
            if node.tag == "tag:yaml.org,2002:str" and (node.value or node.style or not self.from_libyaml):
                return node.value  # most values: what construct_object would return
            return self._scalar_value(node)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if self.from_libyaml and node.flow_style:
            _check_flow_question_marks(node.value)
        return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]

    def _mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict:
        result: dict[Any, Any] = {}
        if self.from_libyaml and node.flow_style:
            _check_flow_pairs(node)
            _check_flow_question_marks(n for pair in node.value for n in pair)
        for key_node, value_node in node.value:
            # Keys are taken as written: YAML 1.1 would read the key `on:` as True.
            key = key_node.value if type(key_node) is yaml.ScalarNode else None
            problem = self._key_problem(key_node, key, path, result)
            if problem:
                p = _pos(key_node.start_mark)
                self.problems.append(f"{self.filename}:{p.line}:{p.column}: {problem}")
                continue
            kp = path + (key,)
            m = key_node.start_mark
            self.keys[kp] = Pos(m.line + 1, m.column + 1)
            result[key] = self.build(value_node, kp, depth + 1)
        return result

    def _key_problem(self, key_node: yaml.Node, key: Any, path: Path_, seen: dict) -> str | None:
        if key_node.tag == "tag:yaml.org,2002:merge":
            return "merge keys ('<<') are not supported; write the keys out"
        if not isinstance(key, str):
            return "a mapping key must be a plain word, not a list or mapping"
        if key in seen:
            first = self.keys.get(path + (key,))
            at = f" (first defined at line {first.line})" if first else ""
            return f"duplicate key '{key}'{at}; remove one of them"
        return None

    def _scalar_value(self, node: yaml.Node) -> Any:
        if node.tag == "tag:yaml.org,2002:str":  # most values: what construct_object returns
            if self.from_libyaml and node.value == "" and not node.style:
                raise _Reparse()  # `key: !` (empty, bare tag): null to PyYAML, "" to libyaml
            return node.value
        try:
            value = self._scalar.construct_object(node, deep=True)
            if isinstance(value, int):
                str(value)  # a number Python cannot print (over 4300 digits) is refused here
        except ValueError as exc:
            if "digits" not in str(exc):  # e.g. a timestamp out of range: reported as usual
                raise yaml.constructor.ConstructorError(None, None, " ".join(str(exc).split()),
                                                        node.start_mark) from None
            p = _pos(node.start_mark)
            self.problems.append(
                f"{self.filename}:{p.line}:{p.column}: a number with more than "
                f"{_max_digits()} digits; no runbook field needs one — quote it if it is text"
            )
            return None
        return value


def _check_flow_pairs(node: yaml.MappingNode) -> None:
    """An empty value in a flow mapping (`{a: , b: 1}`): PyYAML places it just after the ':',
    libyaml at the next token. Rare in a runbook; PyYAML's place is the one reported."""
    for pair in node.value:
        for n in pair:
            if isinstance(n, yaml.ScalarNode) and n.value == "" and not n.style:
                raise _Reparse()


def _check_flow_question_marks(nodes) -> None:
    """A plain scalar with a '?' inside a flow collection (`{a: b?c}`): libyaml reads one
    scalar, PyYAML ends the scalar at the '?'. Quoted scalars (`{m: "(?i)x"}`) are the same."""
    for n in nodes:
        if isinstance(n, yaml.ScalarNode) and not n.style and "?" in n.value:
            raise _Reparse()


# a '?' that may be YAML's complex-key indicator (after a blank or at a line start, before a
# blank or the end of a line); a '?' inside a word (`rc=$?`, "masked?") is left to libyaml
_KEY_INDICATOR = re.compile(r"(?:^|\s)\?(?:\s|$)", re.M)

# `key: >#...`: a block scalar header touching a comment, accepted by libyaml only
_BLOCK_HEADER_COMMENT = re.compile(r"[|>][-+0-9]*#")


def _compose(text: str, fast: bool) -> tuple[list, bool]:
    """The documents' node trees, and whether libyaml made them. libyaml first (if `fast`);
    anything it refuses goes to the pure-Python loader, which words the error. Texts with a tab,
    a '?' that may be a key indicator or a block header touching a comment (libyaml accepts some
    that PyYAML refuses: `a\tb: 1`, `a: >#`) or a character PyYAML's reader refuses go to the
    pure-Python loader only; a '?' in a flow collection's plain scalar (`{a: b?c}`) is found
    while building (tests/test_yaml_loaders.py fuzzes the two against each other)."""
    if fast and C_LOADER is not None and "\t" not in text and not _KEY_INDICATOR.search(text) \
            and not _BLOCK_HEADER_COMMENT.search(text) and not yaml.reader.Reader.NON_PRINTABLE.search(text):
        try:
            return list(yaml.compose_all(text, Loader=C_LOADER)), True
        except (yaml.YAMLError, RecursionError):
            pass
    return list(yaml.compose_all(text, Loader=yaml.SafeLoader)), False


def _decode(text_or_bytes: str | bytes, filename: str) -> str:
    if isinstance(text_or_bytes, bytes):
        if len(text_or_bytes) > MAX_BYTES:
            raise SourceError(
                [f"{filename}:1:1: file is {len(text_or_bytes) / 1e6:.1f} MB; a runbook is at most "
                 f"{MAX_BYTES // 1024} KiB — is this the right file?"]
            )
        if b"\x00" in text_or_bytes:
            raise SourceError([f"{filename}:1:1: binary data (NUL bytes), not a YAML text file; "
                               "give the runbook's .yaml file"])
        try:
            text = text_or_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = text_or_bytes[: exc.start].count(b"\n") + 1
            raise SourceError([f"{filename}:{line}:1: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                               "save the runbook as UTF-8"]) from None
    else:
        text = text_or_bytes
    if len(text) > MAX_BYTES:
        raise SourceError([f"{filename}:1:1: file is larger than {MAX_BYTES // 1024} KiB; "
                           "a runbook is much smaller — is this the right file?"])
    if not text.strip() or all(
        not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()
    ):
        raise SourceError([f"{filename}:1:1: the file is empty; a runbook needs at least "
                           "'version: 1', 'cluster:' and 'steps:' (see `bmupgrade schema`)"])
    return text


def _parse(text: str, filename: str, fast: bool) -> tuple[yaml.Node, bool]:
    """The single document's node tree (and whether libyaml made it), or a located SourceError."""
    try:
        nodes, from_libyaml = _compose(text, fast)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        what = (exc.problem or exc.context or "invalid YAML").strip()
        raise SourceError([f"{filename}:{where}: invalid YAML: {what}; check the indentation "
                           "and quoting around this point"]) from None
    except RecursionError:
        raise SourceError([f"{filename}:1:1: nested too deeply to parse; "
                           "a runbook is at most a few levels deep"]) from None
    except yaml.YAMLError as exc:  # reader errors (control characters) and the like
        msg = " ".join(str(exc).split())
        raise SourceError([f"{filename}:1:1: invalid YAML: {msg}"]) from None
    if len(nodes) != 1:
        where = _pos(nodes[1].start_mark) if len(nodes) > 1 else Pos(1, 1)
        raise SourceError([f"{filename}:{where.line}:{where.column}: expected exactly one YAML "
                           f"document, found {len(nodes)}; remove the extra '---' sections"])
    return nodes[0], from_libyaml


def _build(node: yaml.Node, filename: str, from_libyaml: bool) -> Source:
    builder = _Builder(filename, from_libyaml=from_libyaml)
    try:
        data = builder.build(node)
    except RecursionError:
        raise SourceError([f"{filename}:1:1: nested too deeply; a runbook is at most a few "
                           "levels deep"]) from None
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        raise SourceError([f"{filename}:{where}: {exc.problem}; use plain YAML values"]) from None
    if builder.problems:
        raise SourceError(builder.problems)
    return Source(filename, data, builder.values, builder.keys, builder.raw)


def load(text_or_bytes: str | bytes, filename: str) -> Source:
    """Parse one YAML document with positions. Raises SourceError with located problems."""
    text = _decode(text_or_bytes, filename)
    gc_was_on = gc.isenabled()
    gc.disable()  # tens of thousands of new objects, no cycles to find: halves a big file's time
    try:
        node, from_libyaml = _parse(text, filename, fast=True)
        if from_libyaml:
            try:
                return _build(node, filename, True)
            except _Reparse:
                node, _ = _parse(text, filename, fast=False)
        return _build(node, filename, False)
    finally:
        if gc_was_on:
            gc.enable()


def load_file(path: str | Path) -> Source:
    """Read and parse a file; unreadable files are a SourceError too."""
    p = Path(path)
    name = str(path)
    try:
        if p.is_dir():
            raise SourceError([f"{name}:1:1: is a directory; give a runbook .yaml file"])
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise SourceError([f"{name}:1:1: file is {size / 1e6:.1f} MB; a runbook is at most "
                               f"{MAX_BYTES // 1024} KiB — is this the right file?"])
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SourceError([f"{name}: no such file; check the path"]) from None
    except PermissionError:
        raise SourceError([f"{name}: permission denied; check the file's mode"]) from None
    except OSError as exc:
        raise SourceError([f"{name}: cannot read: {exc.strerror}"]) from None
    return load(raw, name)
