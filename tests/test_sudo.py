"""Issue 14: sudo rejection is detected whatever the node's language; interactive asks again
(3 passwords at most), unattended stops after the first rejection; a rejected password is never
sent again. Real sshd lab; the lab's sudo stand-in speaks French on request (sudo_lang)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmupgrade.credentials import SudoPassword
from bmupgrade.transport.base import NodeAddress
from bmupgrade.transport.ssh import SshTransport

GOOD = "correct horse"


@pytest.fixture
def french(lab, tmp_path, monkeypatch):
    """bm1 wants a password and speaks French; the transport uses sudo although we may be root."""
    import bmupgrade.transport.ssh as ssh_mod

    if lab.user == "root":
        monkeypatch.setattr(ssh_mod.SshTransport, "_use_sudo", lambda self, node, sudo: sudo or node.address.sudo)
    lab.node("bm1").set_state(sudo_password=GOOD, sudo_lang="fr")
    empty = tmp_path / "empty_config"
    empty.write_text("")
    n = lab.node("bm1")
    return lab, NodeAddress("bm1", n.host, port=n.port, user=lab.user, sudo=True,
                            identity_file=str(lab.client_key), known_hosts=(str(lab.known_hosts),),
                            ssh_config=str(empty))


def _sudo_calls(lab) -> int:
    return len(lab.node("bm1").calls("sudo"))


def test_the_stand_in_really_speaks_french(french):
    lab, _ = french
    r = lab.node("bm1").ssh("sudo -S true", input="wrong\n")
    assert "Désolé, essayez de nouveau." in r.stderr and "Sorry" not in r.stderr


def test_unattended_stops_after_the_first_rejection_and_never_resends(french):
    lab, addr = french
    asked = []

    def provider():  # like $BMUPGRADE_SUDO_PASSWORD: the same answer every time
        asked.append(1)
        return "wrong one"

    with SshTransport(password_provider=provider) as t:
        t.connect([addr])
        r = t.run("bm1", "echo ran", capture=True)
        assert r.exit_code == 1 and r.sudo_rejected and not r.sent
        assert r.error == "sudo rejected the password" and "ran" not in r.stdout
        assert _sudo_calls(lab) == 1
        again = t.run("bm1", "echo ran", capture=True)
        assert again.sudo_rejected and not again.sent and "not sending it again" in again.error
        assert _sudo_calls(lab) == 1  # the known-bad password was not sent a second time
    assert "wrong one" not in Path(lab.node("bm1").ledger_path).read_text()


def test_interactive_asks_again_and_the_command_runs_once(french):
    lab, addr = french
    answers = iter(["wrong one", "wrong two", GOOD])
    source = SudoPassword(None, lambda prompt: next(answers))
    with SshTransport(password_provider=source) as t:
        t.connect([addr])
        r = t.run("bm1", "echo ran", capture=True)
        assert r.ok and r.stdout == "ran\n", r
        assert r.output_tail == "ran\n"  # neither our prompt nor the start marker is output
    assert source.asked == 3 and _sudo_calls(lab) == 3


def test_interactive_stops_after_three_rejected_passwords(french):
    lab, addr = french
    prompts = []
    source = SudoPassword(None, lambda prompt: prompts.append(prompt) or f"wrong {len(prompts)}")
    with SshTransport(password_provider=source) as t:
        t.connect([addr])
        r = t.run("bm1", "echo ran", capture=True)
        assert r.sudo_rejected and r.exit_code == 1 and "ran" not in r.stdout
        assert len(prompts) == 3 and "try 3/3" in prompts[-1]
        r = t.run("bm1", "echo ran", capture=True)
        assert r.sudo_rejected and "rejected 3 passwords; not asking again" in r.error
    assert len(prompts) == 3 and _sudo_calls(lab) == 3


def test_a_command_failing_by_itself_is_not_a_rejection(french):
    lab, addr = french
    with SshTransport(password_provider=lambda: GOOD) as t:
        t.connect([addr])
        r = t.run("bm1", "echo 'Sorry, try again.' >&2; exit 1", capture=True)
        assert r.exit_code == 1 and not r.sudo_rejected and r.sent and r.error == ""
        assert t.run("bm1", "true").ok
