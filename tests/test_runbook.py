"""Loader: every error class is reported with file:line:column, all at once, exit-code 2 type."""

import pytest

from bmupgrade.errors import UsageError

from bmupgrade.errors import EXIT_USAGE, RunbookError
from bmupgrade.runbook import load_runbook, parse_duration
from tests.runbook_samples import MINIMAL

pytestmark = pytest.mark.usefixtures("yaml_loader")  # libyaml and pure Python


def write(tmp_path, text, name="rb.yaml"):
    p = tmp_path / name
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return p


def problems(tmp_path, text, **kw):
    p = write(tmp_path, text)
    with pytest.raises(RunbookError) as exc:
        load_runbook(p, **kw)
    assert exc.value.exit_code == EXIT_USAGE
    return exc.value.problems, str(p)


def test_minimal_loads(tmp_path):
    rb = load_runbook(write(tmp_path, MINIMAL))
    assert [s.id for s in rb.steps] == ["ha-off", "packages", "post-install", "ha-on"]
    assert rb.step("packages").timeout == 45 * 60
    assert rb.secret_vars == {"password"}
    assert len(rb.source_sha256) == 64


def test_on_key_is_not_yaml11_boolean(tmp_path):
    rb = load_runbook(write(tmp_path, MINIMAL))
    assert rb.step("ha-off").on == "primary"


def test_version_text_kept_as_written(tmp_path):
    rb = load_runbook(write(tmp_path, MINIMAL.replace('target_version: "4.9.3"', "target_version: 4.10")))
    assert rb.vars["target_version"].value == "4.10"


def locate(text, marker):
    """1-based line:column of the first occurrence of marker."""
    idx = text.index(marker)
    return text[:idx].count("\n") + 1, idx - text.rfind("\n", 0, idx)


@pytest.mark.parametrize(
    "old,new,marker,fragment",
    [
        ("    ha: disable\n", "    ha: disable\n    colour: red\n", "colour", "unknown key 'colour'; valid keys here:"),
        ("    parallel: true\n", "    parallel: sometimes\n", "sometimes", "parallel: Input should be a valid boolean"),
        ("  - id: post-install\n", "  - id: packages\n", "packages\n    on: primary", "duplicate id 'packages'"),
        ("  - id: post-install\n    on: primary\n", "  - id: post-install\n    on: bm3\n", "bm3",
         "unknown target 'bm3'; use primary, secondary, all, where:STEP or one of: bm1, bm2"),
        ("bm-full={{ target_version }}\n", "bm-full={{ target_versoin }}\n", "apt-get install -y bm-full={{ target_versoin",
         "undefined variable 'target_versoin'"),
        ("    timeout: 45m\n", "    timeout: 45 minutes\n", "45 minutes", "is not a duration"),
        ("    - {name: bm2, host: 127.0.0.12, port: 2202}\n", "    - {name: bm2, host: 127.0.0.11, port: 2201}\n",
         "127.0.0.11, port: 2201}\nvars", "127.0.0.11:2201 is also node 'bm1'"),
        ("  public_ip: 192.0.2.10\n", "  public_ip: 192.0.2.300\n", "192.0.2.300", "is not an IP address"),
        ("bm-cli setup upgrade --password {{ password }}", "bm-cli setup upgrade '{{ password }}'", "bm-cli",
         "inside '-quotes"),
        ("    on: all\n    parallel", "    on: all\n    retries: -1\n    parallel", "-1", "greater than or equal to 0"),
        ("capture: from_version,", "capture: from version,", "from version", "capture"),
    ],
)
def test_each_error_is_located(tmp_path, old, new, marker, fragment):
    assert old in MINIMAL
    text = MINIMAL.replace(old, new, 1)
    line, col = locate(text, marker)
    found, path = problems(tmp_path, text)
    assert any(p.startswith(f"{path}:{line}:{col}: ") and fragment in p for p in found), (line, col, found)


def test_empty_step_list(tmp_path):
    start = MINIMAL.index("steps:\n")
    end = MINIMAL.index("postflight:")
    found, path = problems(tmp_path, MINIMAL[:start] + "steps: []\n" + MINIMAL[end:])
    line = MINIMAL[:start].count("\n") + 1
    assert any(p.startswith(f"{path}:{line}:8: steps:") and "at least 1" in p for p in found), found


def test_all_errors_reported_at_once(tmp_path):
    text = (MINIMAL.replace("    ha: disable\n", "    ha: disable\n    colour: red\n")
            .replace("  - id: post-install\n    on: primary\n", "  - id: post-install\n    on: bm3\n")
            .replace("bm-full={{ target_version }}\n", "bm-full={{ nope }}\n"))
    found, _ = problems(tmp_path, text)
    assert len(found) >= 2
    text2 = MINIMAL.replace("  - id: post-install\n    on: primary\n", "  - id: post-install\n    on: bm3\n") \
        .replace("bm-full={{ target_version }}\n", "bm-full={{ nope }}\n")
    found2, _ = problems(tmp_path, text2)
    assert any("bm3" in p for p in found2) and any("'nope'" in p for p in found2)


def test_missing_key_named(tmp_path):
    found, path = problems(tmp_path, MINIMAL.replace("name: test\n", ""))
    assert any("missing required key 'name'" in p for p in found)


def test_duplicate_yaml_key(tmp_path):
    found, path = problems(tmp_path, MINIMAL.replace("name: test\n", "name: test\nname: again\n"))
    assert found == [f"{path}:3:1: duplicate key 'name' (first defined at line 2); remove one of them"]


@pytest.mark.parametrize(
    "content,fragment",
    [
        (b"", "the file is empty"),
        (b"# only a comment\n", "the file is empty"),
        (b"\x00\x01\x02binary", "binary data"),
        (b"\xff\xfe\xfa", "not UTF-8"),
        (b"version: 1\nsteps: [\n", "invalid YAML"),
        (b"[" * 5000, "nested too deeply"),
        (b"- 1\n- 2\n", "expected a mapping"),
        (b"a: 1\n---\nb: 2\n", "exactly one YAML document"),
        (b"x: &a [1,1,1,1,1,1,1,1,1]\n" + b"".join(
            b"%c: &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n" % ((98 + i,) * 2 + (97 + i,) * 9) for i in range(8)),
         "alias bomb"),
    ],
)
def test_hostile_input(tmp_path, content, fragment):
    found, path = problems(tmp_path, content)
    assert len(found) == 1 and fragment in found[0] and found[0].startswith(f"{path}:"), found


def test_huge_file(tmp_path):
    found, path = problems(tmp_path, b"a: " + b"x" * (10 * 1024 * 1024) + b"\n")
    assert found[0].startswith(f"{path}:1:1: file is 10.5 MB")


def test_missing_file(tmp_path):
    with pytest.raises(RunbookError) as exc:
        load_runbook(tmp_path / "nope.yaml")
    assert "no such file" in str(exc.value)


def test_inventory_overrides_cluster_and_errors_point_at_it(tmp_path):
    rb_path = write(tmp_path, MINIMAL)
    inv = write(tmp_path, "cluster:\n  public_ip: 198.51.100.7\n  nodes:\n"
                          "    - {name: bm1, host: a, port: 22}\n    - {name: bm2, host: b, port: 2O}\n", "inv.yaml")
    with pytest.raises(RunbookError) as exc:
        load_runbook(rb_path, inventory=inv)
    line, col = locate(inv.read_text(), "2O}")
    assert exc.value.problems[0].startswith(f"{inv}:{line}:{col}: cluster.nodes.1.port"), exc.value.problems
    inv.write_text("cluster:\n  public_ip: 198.51.100.7\n")
    rb = load_runbook(rb_path, inventory=inv)
    assert rb.cluster.public_ip == "198.51.100.7" and rb.node_names == ["bm1", "bm2"]


def test_overrides(tmp_path):
    rb = load_runbook(write(tmp_path, MINIMAL), overrides={"target_version": "5.0.1"})
    assert rb.vars["target_version"].value == "5.0.1"


def test_an_override_naming_no_variable_is_refused_with_the_closest_name(tmp_path):
    with pytest.raises(UsageError, match="no variable 'target_versoin'; did you mean 'target_version'") as e:
        load_runbook(write(tmp_path, MINIMAL), overrides={"target_versoin": "9.9.9"})
    assert e.value.exit_code == 2


def test_manual_step_shape(tmp_path):
    text = MINIMAL.replace("steps:\n", "steps:\n  - {id: backup, manual: Backup taken, on: all}\n")
    found, _ = problems(tmp_path, text)
    assert any("a manual step takes no on" in p for p in found)


def test_durations():
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration(5) == 5
    for bad in ("", "5 minutes", "0s", -1, True):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_bundled_runbooks_validate():
    for path in ("runbooks/bluemind-ha-pacemaker.yaml", "runbooks/bluemind-ha-keepalived.yaml"):
        rb = load_runbook(path)
        assert rb.step("post-install").on == "primary"
        assert [s.ha for s in rb.steps if s.ha] == ["disable", "enable"]


def test_fencing_marker_only_on_preflight_checks(tmp_path):
    text = MINIMAL.replace("  - {id: vip-after, builtin: single_vip_holder}\n",
                           "  - {id: vip-after, builtin: single_vip_holder}\n"
                           "  - {id: fence-after, run: 'true', fencing: true}\n")
    found, path = problems(tmp_path, text)
    line = text[:text.index("fence-after")].count("\n") + 1
    col = text.splitlines()[line - 1].index("fencing: true") + len("fencing: ") + 1  # the value
    assert [p for p in found if "fencing" in p] == [
        f"{path}:{line}:{col}: postflight.1.fencing: fencing: true belongs on a preflight check (the STONITH guard is "
        "decided before anything changes); move the check to preflight"], found


def test_a_read_only_step_takes_nothing_that_changes_and_may_be_resent(tmp_path):
    """`read_only` steps are what `plan --probe` sends: no rollback commands, no HA, no point of
    no return; and, changing nothing, they are re-sendable like idempotent ones."""
    sim = "  - {id: sim, on: all, read_only: true, run: 'apt-get -s upgrade', rollback: []}\n"
    rb = load_runbook(write(tmp_path, MINIMAL.replace("steps:\n", "steps:\n" + sim)))
    assert rb.step("sim").read_only and rb.step("sim").idempotent
    bad = sim.replace("rollback: []", "rollback: 'true', point_of_no_return: true")
    found, path = problems(tmp_path, MINIMAL.replace("steps:\n", "steps:\n" + bad))
    assert any("a read_only step changes nothing, so it takes no point_of_no_return, rollback commands" in p
               and p.startswith(path + ":") for p in found), found


def test_requires_names_an_earlier_step_with_a_verify(tmp_path):
    text = MINIMAL.replace("  - id: post-install\n", "  - id: post-install\n    requires: [ha-off, ha-on, nope]\n")
    found, path = problems(tmp_path, text)
    line = text[:text.index("requires:")].count("\n") + 1
    assert [p.split(": ", 1)[0] for p in found if "requires" in p] == [f"{path}:{line}:{c}" for c in (16, 24, 31)], found
    assert "step 'ha-off' has no verify, so nothing can tell whether it still holds" in " ".join(found)
    assert "'ha-on' is no earlier step; a step can require only steps before it: ha-off, packages" in " ".join(found)
    assert "'nope' is no earlier step" in " ".join(found)
