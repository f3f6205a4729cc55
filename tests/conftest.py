"""Shared fixtures: the real-sshd lab.

* `lab_factory()` -> a started `Lab` in its own temporary directory; every lab it made is
  stopped at teardown, also when the test failed. `lab_factory(start=False)` gives one not started.
* `lab` -> one fresh, started lab per test (about 0.05 s to start). Its crm_* commands are the
  real pacemaker-cli-utils where installed (`.ci/run` installs them), stand-ins otherwise.
* `pcmk_lab` -> the same, once with the crm_* stand-ins and once with the real tools: the
  contract tests that keep the two in agreement.
* `batch(node, cmd1, cmd2, ...)` -> run several commands in ONE ssh session (a session costs
  ~0.1 s here) and get a `Result(rc, out, err)` per command.

Tests that need sshd (or, for `pcmk_lab[real]`, pacemaker-cli-utils) FAIL when CI=true and it
is missing, and skip with the reason otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass

import pytest

SSHD = "/usr/sbin/sshd"


def _missing(msg: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI=true: lab tests must run, not skip; " + msg)
    pytest.skip(msg)


def require_sshd() -> None:
    missing = [p for p, ok in ((SSHD, os.access(SSHD, os.X_OK)), ("ssh", shutil.which("ssh")),
                                ("ssh-keygen", shutil.which("ssh-keygen"))) if not ok]
    if missing:
        _missing("the lab needs OpenSSH (%s missing): apt-get install openssh-server openssh-client"
                 % ", ".join(missing))


def require_pacemaker_tools() -> None:
    from bmupgrade.lab.core import bmlab

    if not bmlab.real_pacemaker_available():
        _missing("the real crm_* tools are not installed: apt-get install pacemaker-cli-utils")


@pytest.fixture
def lab_factory(tmp_path_factory):
    require_sshd()
    from bmupgrade.lab import Lab

    labs = []

    def make(name: str = "lab", *, start: bool = True, pacemaker: str = "auto"):
        lab = Lab(tmp_path_factory.mktemp("bmlab") / name, pacemaker=pacemaker)
        labs.append(lab)
        if start:
            lab.up()
        return lab

    yield make
    errors = []
    for lab in labs:
        try:
            lab.down()
        except Exception as e:  # keep stopping the others
            errors.append("%s: %s" % (lab.dir, e))
    if errors:
        pytest.fail("lab teardown: " + "; ".join(errors))


@pytest.fixture
def lab(lab_factory):
    return lab_factory()


@pytest.fixture(params=["standin", "real"])
def pcmk_lab(request, lab_factory):
    if request.param == "real":
        require_pacemaker_tools()
    lab = lab_factory(pacemaker=request.param)
    assert lab.pacemaker_mode == request.param
    return lab


@dataclass
class Result:
    rc: int
    out: str  # exact stdout
    err: str  # exact stderr

    @property
    def text(self) -> str:
        """stdout without its trailing newlines."""
        return self.out.rstrip("\n")


_MARK = re.compile(r"<<<(\d+):(out|err|rc=(\d+))>>>\n")


def run_batch(node, *commands: str, timeout: float = 60) -> list[Result]:
    """Run each command (stdin /dev/null) in one ssh session to `node` (a LabNode)."""
    lines = ['T=$(mktemp)']
    for i, c in enumerate(commands):
        lines.append("printf '<<<%d:out>>>\\n'; ( %s ) 2>\"$T\" </dev/null; rc=$?; printf '\\n<<<%d:err>>>\\n'; "
                     "cat \"$T\"; printf '\\n<<<%d:rc=%%s>>>\\n' $rc" % (i, c, i, i))
    lines.append('rm -f "$T"')
    r = node.ssh("\n".join(lines), timeout=timeout)
    parts = _MARK.split(r.stdout)
    results: dict[int, dict] = {}
    # parts: [prefix, idx, kind, rcdigits, text, idx, kind, rcdigits, text, ...]
    for k in range(1, len(parts), 4):
        idx, kind, rc, text = int(parts[k]), parts[k + 1], parts[k + 2], parts[k + 3]
        slot = results.setdefault(idx, {})
        if kind == "out":
            slot["out"] = text
        elif kind == "err":
            slot["out"] = slot.get("out", "")[:-1] if slot.get("out", "").endswith("\n") else slot.get("out", "")
            slot["err"] = text
        else:
            slot["err"] = slot.get("err", "")[:-1] if slot.get("err", "").endswith("\n") else slot.get("err", "")
            slot["rc"] = int(rc)
    if len(results) != len(commands) or any("rc" not in s for s in results.values()):
        raise AssertionError("ssh batch on %s broke (exit %s): %s%s" % (node.name, r.returncode, r.stdout, r.stderr))
    return [Result(results[i]["rc"], results[i]["out"], results[i]["err"]) for i in range(len(commands))]


@pytest.fixture
def batch():
    return run_batch


@pytest.fixture(params=["libyaml", "pure-python"])
def yaml_loader(request, monkeypatch):
    """Run a test once with libyaml's parser (when PyYAML has it) and once with PyYAML's pure-
    Python one: errors must name the same file:line:column either way."""
    from bmupgrade import yamlsource

    if request.param == "libyaml":
        if yamlsource.C_LOADER is None:
            pytest.skip("PyYAML built without libyaml")
    else:
        monkeypatch.setattr(yamlsource, "C_LOADER", None)
    return request.param


# The longest test files (seconds in the four-worker suite, 2026-12-05), heaviest first: with
# `--dist loadfile --no-loadscope-reorder` (scripts/test.sh) xdist hands files out in collection
# order, so the long ones start first and the short ones fill the gaps at the end
# (longest-processing-time-first). A stale order only costs balance, never a test.
HEAVY_FILES_FIRST = ("test_e2e_run", "test_e2e_safety", "test_e2e_guided", "test_cluster_lab",
                     "test_runbooks_lab", "test_cluster_window_faults", "test_e2e_unknown",
                     "test_runbooks_cluster", "test_cluster_lab_keepalived", "test_e2e_misc",
                     "test_lab_standins", "test_model_stateful", "test_lab_faults", "test_transport_ssh",
                     "test_logs", "test_startup")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: file order kept
