"""Fuzz the loader: random bytes and mutated runbooks always give exit 2 with located one-line
messages (or load), never a traceback."""

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmupgrade.errors import RunbookError
from bmupgrade.runbook import load_runbook
from tests.runbook_samples import MINIMAL

pytestmark = pytest.mark.usefixtures("yaml_loader")  # libyaml and pure Python


def check(tmp_path, data: bytes):
    p = tmp_path / "fuzz.yaml"
    p.write_bytes(data)
    try:
        load_runbook(p)
    except RunbookError as exc:
        assert exc.exit_code == 2
        assert exc.problems
        for line in exc.problems:
            assert "\n" not in line and line.startswith(str(p)), line


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_random_bytes(tmp_path, data):
    check(tmp_path, data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, len(MINIMAL) - 1), st.integers(0, 40), st.text(alphabet=" :-[]{}#&*!|>'\"\n\tab1{}%@`", max_size=8))
def test_mutated_runbook(tmp_path, pos, cut, insert):
    text = MINIMAL[:pos] + insert + MINIMAL[pos + cut:]
    check(tmp_path, text.encode())


def test_cli_never_tracebacks(tmp_path):
    samples = [b"\x89PNG\r\n\x1a\n", b"{{{{", b"version: [1\n", b"steps: !!python/object:os.system x\n",
               MINIMAL.replace("version: 1", "version: 2").encode()]
    for i, data in enumerate(samples):
        p = tmp_path / f"s{i}.yaml"
        p.write_bytes(data)
        r = subprocess.run([sys.executable, "-m", "bmupgrade", "validate", str(p)], capture_output=True, text=True)
        assert r.returncode == 2, (data, r.stderr)
        assert "Traceback" not in r.stderr and f"{p}:" in r.stderr


def test_a_key_folded_over_lines_is_reported_on_one_line(tmp_path):
    """Found by test_mutated_runbook: a plain key spanning lines (`h` + blank lines + `127.0.0.12`)
    put a newline into the problem's path."""
    pos = MINIMAL.index("host: 127.0.0.12") + 1
    check(tmp_path, (MINIMAL[:pos] + "\n\n" + MINIMAL[pos + 4:]).encode())
