"""`{{ name }}` substitution for runbook commands: strict, shell-quoted, secret-aware.

Why not Jinja: a runbook needs variables, not a language. A tiny grammar (dotted names and a
single `| raw` filter) is easy to validate up front — every reference is checked against the
defined variables before anything runs — and impossible to use for surprises.

Every value is passed through `shlex.quote` unless the template says `| raw`, so a value such
as `4.9.3; rm -rf /` reaches the shell as one word. Because values are already quoted, a
template written *inside* quotes (`'{{ v }}'`) would be quoted twice; the validator refuses it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.S)
EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*(?:\|\s*(raw)\s*)?$")
REDACTED = "***"


class TemplateError(ValueError):
    """A template problem; `offset` is the character offset in the template text."""

    def __init__(self, message: str, offset: int = 0):
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True)
class Ref:
    name: str  # dotted name, e.g. "cluster.public_ip"
    raw: bool
    start: int
    end: int


def refs(text: str) -> list[Ref]:
    """Every `{{ ... }}` in text; raises TemplateError on an expression outside the grammar."""
    found = []
    for m in TEMPLATE.finditer(text):
        em = EXPR.match(m.group(1))
        if not em:
            raise TemplateError(
                f"unsupported template '{m.group(0)}': write {{{{ name }}}}, {{{{ a.b }}}} "
                "or {{ name | raw }}",
                m.start(),
            )
        found.append(Ref(em.group(1), bool(em.group(2)), m.start(), m.end()))
    unclosed = text.find("{{", found[-1].end if found else 0)
    if unclosed >= 0:
        raise TemplateError("'{{' without a matching '}}'", unclosed)
    return found


def quoting_problems(text: str) -> list[TemplateError]:
    """Templates written inside shell quotes (they would be quoted twice)."""
    problems = []
    spans = {r.start: r for r in refs(text)}
    quote = None
    i = 0
    while i < len(text):
        if i in spans:
            r = spans[i]
            if quote and not r.raw:
                problems.append(TemplateError(
                    f"template '{text[r.start:r.end]}' is inside {quote}-quotes; bmupgrade already "
                    "shell-quotes values, so remove the quotes around it (or use '| raw')", r.start))
            i = r.end
            continue
        c = text[i]
        if quote == "'":
            if c == "'":
                quote = None
        elif quote == '"':
            if c == "\\":
                i += 1
            elif c == '"':
                quote = None
        else:
            if c == "\\":
                i += 1
            elif c in "'\"":
                quote = c
        i += 1
    return problems


def lookup(name: str, context: Mapping[str, Any]) -> Any:
    """Resolve a dotted name; KeyError names the missing part."""
    value: Any = context
    for part in name.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            raise KeyError(name)
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def render(
    text: str,
    context: Mapping[str, Any],
    *,
    secrets: Iterable[str] = (),
    redact: bool = False,
    placeholders: Mapping[str, str] | None = None,
) -> str:
    """Substitute templates. Strict: an undefined name is a TemplateError.

    `secrets` are the dotted names whose values are secret; with `redact=True` they render as
    `***` (for plans, logs, journals) — the real value is only ever rendered to be sent.
    `placeholders` are display texts for values not known yet (e.g. captured at preflight).
    """
    secret_names = set(secrets)
    out = []
    last = 0
    for r in refs(text):
        out.append(text[last : r.start])
        if redact and r.name in secret_names:
            out.append(REDACTED)
        elif placeholders and r.name in placeholders:
            out.append(placeholders[r.name])
        else:
            try:
                value = _text(lookup(r.name, context))
            except KeyError:
                raise TemplateError(f"undefined variable '{r.name}'", r.start) from None
            out.append(value if r.raw else shlex.quote(value))
        last = r.end
    out.append(text[last:])
    return "".join(out)


class Redactor:
    """Masks secret values wherever they appear in text (remote output can echo them).

    Each secret is masked as written and in its shell-quoted form (`shlex.quote`), which is how
    a rendered command carries it: a secret with a quote or a space never appears verbatim in
    the command line, only quoted. `stream()` gives a redactor for text that arrives in chunks.
    """

    def __init__(self, values: Iterable[str]):
        plain = {v for v in values if v and len(v) >= 3}
        self.forms = sorted(plain | {shlex.quote(v) for v in plain}, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in self.forms)) if self.forms else None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(REDACTED, text)

    def stream(self) -> "StreamRedactor":
        return StreamRedactor(self)


class StreamRedactor:
    """Redaction of one stream that arrives in chunks: a secret split across two chunks is
    masked too. The tail of a chunk that could be the start of a secret is held back (a few
    characters, only when they could be one) until the next chunk or `flush()`."""

    def __init__(self, redactor: Redactor):
        self._r = redactor
        self._pending = ""

    def feed(self, text: str) -> str:
        r = self._r
        buf = self._pending + text
        if r._pattern is None or not buf:
            self._pending = ""
            return buf
        inside = {i for m in r._pattern.finditer(buf) for i in range(m.start() + 1, m.end())}
        longest = len(r.forms[0])
        hold = len(buf)
        for i in range(max(0, len(buf) - longest + 1), len(buf)):
            tail = buf[i:]
            if i not in inside and any(len(f) > len(tail) and f.startswith(tail) for f in r.forms):
                hold = i
                break
        self._pending = buf[hold:]
        return r(buf[:hold])

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return self._r(rest)
