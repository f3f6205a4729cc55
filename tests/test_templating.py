"""Templating: quoting defeats injection, undefined is an error, secrets never displayed."""

import subprocess

import pytest

from bmupgrade.templating import Redactor, TemplateError, quoting_problems, refs, render

INJECTIONS = ["4.9.3; rm -rf /", "$(touch /tmp/pwned)", "`id`", "a'b\"c", "x\ny", "*", "--help", "", "  spaced  "]


@pytest.mark.parametrize("value", INJECTIONS)
def test_value_reaches_shell_as_one_word(value):
    cmd = render("set -- {{ v }}; echo $#; printf '<%s>' \"$1\"", {"v": value})
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True).stdout
    count, _, echoed = out.partition("\n")
    assert count == "1"
    assert echoed == f"<{value}>"


def test_raw_is_explicit():
    assert render("ls {{ files | raw }}", {"files": "a b"}) == "ls a b"
    assert render("ls {{ files }}", {"files": "a b"}) == "ls 'a b'"


def test_dotted_names():
    ctx = {"cluster": {"public_ip": "192.0.2.10"}, "node": {"host": "h"}}
    assert render("ip -o addr show to {{ cluster.public_ip }} # {{node.host}}", ctx) == \
        "ip -o addr show to 192.0.2.10 # h"


def test_strict_undefined():
    with pytest.raises(TemplateError, match="undefined variable 'nope'"):
        render("echo {{ nope }}", {})
    with pytest.raises(TemplateError, match="undefined variable 'node.port'"):
        render("echo {{ node.port }}", {"node": {"host": "h"}})


@pytest.mark.parametrize("bad", ["{{ a + b }}", "{{ a | upper }}", "{{ }}", "echo {{ a"])
def test_grammar(bad):
    with pytest.raises(TemplateError):
        refs(bad)


def test_secret_redacted_for_display_only():
    ctx = {"pw": "hunter2secret"}
    assert render("login {{ pw }}", ctx, secrets={"pw"}, redact=True) == "login ***"
    assert render("login {{ pw }}", ctx, secrets={"pw"}) == "login hunter2secret"


def test_quoted_template_is_refused():
    assert quoting_problems("echo '{{ v }}'")
    assert quoting_problems('echo "x {{ v }}"')
    assert not quoting_problems("echo {{ v }} 'literal' \"{{ w | raw }}\"")
    assert not quoting_problems("test \"$(dpkg-query -W -f='${Version}' bm-full)\" = {{ v }}")


def test_redactor():
    r = Redactor(["hunter2secret", "ab"])
    assert r("pw=hunter2secret ab") == "pw=*** ab"
    assert Redactor([])("x") == "x"
