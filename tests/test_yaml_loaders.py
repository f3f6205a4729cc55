"""libyaml (C) and pure-Python PyYAML give the same document, the same positions and the same
errors (message, line, column) through bmupgrade.yamlsource."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bmupgrade import yamlsource
from tests.runbook_samples import MINIMAL

pytestmark = pytest.mark.skipif(yamlsource.C_LOADER is None, reason="PyYAML built without libyaml")

ERROR_CASES = [
    b"version: 1\nsteps: [\n",
    b"a: 1\nb: [x, {c: d}]\n  bad: x\n",
    b"a: b: c\n",
    b"a:\n  - 1\n - 2\n",
    b"key: 'unterminated\n",
    b'key: "bad \\q escape"\n',
    b"a: *nowhere\n",
    b"a: &x 1\nb: &x 2\nc: *y\n",
    b"- [a, b\n- c\n",
    b"{a: 1, a: 2}\n",
    b"a: 1\na: 2\n",
    b"a: 1\n---\nb: 2\n",
    b"a: !!python/object:os.system x\n",
    b"a: !!binary 'not base64?'\n",
    b"a: |\n x\n  y\n bad\n  - z\n",
    b"\tkey: value\n",
    b"a: \x07bell\n",
    b"a: \xc2\x85x\n",
    b"\xef\xbb\xbfa: 1\nb: [\n",
    "clé: é€😀\nb: [x, {c: d}]\n  bad: : x\n".encode(),
    b"<<: {a: 1}\n",
    b"[" * 1200 + b"]" * 1200,
    b"- " * 70 + b"x\n",
    b"%YAML 1.1\n%YAML 1.1\n---\na: 1\n",
    b"a: {b: 1\n",
    b"? [a]\n: 1\n",
    b"{a: , b: 1}\n",
    b"- !\n- x\n",
    b"a: !\nb: !!str\nc: ! x\n",
    b"a: >#\n  x\nb: |-#c\n  y\n",
    b"x: {a: ,\n  b: [c: , d]}\n",
    b"a: {b: c?d}\n", b"a: [b?c, d]\n", b"a: [?x]\n", b"a: {?x: y}\n", b"a: [b ?c]\n",
    b"? a\n: b\n", b"a: b ? c\n", b"- ?\n", b"a: {b: \"c?\", d: 'e?f'}\n", b"a: rc=$?\nb: x?\n",
    b"a: [{b: c?}]\n", b"a: {b: [x?]}\n", b"a: |\n  [x?y]\n",
]


def load_with(loader, data: bytes, monkeypatch):
    monkeypatch.setattr(yamlsource, "C_LOADER", loader)
    try:
        src = yamlsource.load(data, "rb.yaml")
    except yamlsource.SourceError as exc:
        return ("error", exc.problems)
    return ("ok", src.data, src.values, src.keys, src.raw)


@pytest.mark.parametrize("data", ERROR_CASES)
def test_same_result_on_error_cases(data, monkeypatch):
    fast = load_with(yamlsource.C_LOADER, data, monkeypatch)
    pure = load_with(None, data, monkeypatch)
    assert fast == pure


def test_same_positions_on_a_valid_runbook(monkeypatch):
    data = (MINIMAL + "# é€😀\nextra:\n  - {a: 'é€😀', b: [1, 2.5, null, true, 0x1f]}\n  - |\n    text\n").encode()
    fast = load_with(yamlsource.C_LOADER, data, monkeypatch)
    pure = load_with(None, data, monkeypatch)
    assert fast[0] == "ok" and fast == pure


def test_fast_loader_is_really_used(monkeypatch):
    calls = []
    real = yamlsource.C_LOADER

    class Spy(real):
        def __init__(self, stream):
            calls.append(1)
            super().__init__(stream)

    load_with(Spy, MINIMAL.encode(), monkeypatch)
    assert calls


@settings(max_examples=int(os.environ.get("BMUPGRADE_YAML_FUZZ_EXAMPLES", "400")), deadline=None)
@given(st.integers(0, len(MINIMAL) - 1), st.integers(0, 40),
       st.text(alphabet=" :-[]{}#&*!|>'\"\n\tab1{}%@`?,é\x85\u2028", max_size=10))
def test_mutated_runbooks_agree(pos, cut, insert):
    data = (MINIMAL[:pos] + insert + MINIMAL[pos + cut:]).encode()
    mp = pytest.MonkeyPatch()
    try:
        assert load_with(yamlsource.C_LOADER, data, mp) == load_with(None, data, mp)
    finally:
        mp.undo()


@pytest.mark.parametrize("name", ["bluemind-ha-pacemaker", "bluemind-ha-keepalived"])
def test_bundled_runbooks_are_read_by_libyaml(name, monkeypatch):
    """Their shell snippets (`rc=$?`) and regexes (`"(?i)..."`) hold '?' that is no YAML
    indicator: the pure-Python parser (10x slower) is not needed for them."""
    from bmupgrade import bundled

    parsed = []
    real_parse = yamlsource._parse

    def spy(text, filename, fast):
        node, from_libyaml = real_parse(text, filename, fast)
        parsed.append(from_libyaml)
        return node, from_libyaml

    monkeypatch.setattr(yamlsource, "_parse", spy)
    src = yamlsource.load_file(bundled.path(name))
    assert parsed == [True] and src.data["steps"]
