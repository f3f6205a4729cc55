"""Issue 14: known_hosts lines are accounted for — malformed (located, right node), @revoked
(honoured), @cert-authority (explained) — against the lab's real sshd."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bmupgrade.transport.base import NodeAddress, TransportError
from bmupgrade.transport.ssh import SshTransport
from tests.e2e import PACEMAKER, bmupgrade


def _addresses(lab, known_hosts: Path, empty_config: Path) -> list[NodeAddress]:
    return [NodeAddress(n, lab.node(n).host, port=lab.node(n).port, user=lab.user,
                        identity_file=str(lab.client_key), known_hosts=(str(known_hosts),),
                        ssh_config=str(empty_config)) for n in ("bm1", "bm2")]


@pytest.fixture
def setup(lab, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the developer's ~/.ssh takes no part
    empty = tmp_path / "empty_config"
    empty.write_text("")
    lines = Path(lab.known_hosts).read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"[{lab.node('bm2').host}]:")
    return lab, tmp_path / "known_hosts", empty, lines


def _connect(lab, kh, empty, names=("bm1", "bm2")):
    t = SshTransport()
    try:
        t.connect([a for a in _addresses(lab, kh, empty) if a.name in names])
        return [t.run(n, "echo ok", capture=True).stdout.strip() for n in names]
    finally:
        t.close()


def test_a_malformed_line_names_its_file_line_and_node(setup):
    lab, kh, empty, lines = setup
    name, kind, key = lines[1].split()
    kh.write_text("# comment\n" + lines[0] + "\n" + f"{name} {kind} {key[:-3]}\n")  # bm2's key cut short
    assert _connect(lab, kh, empty, ("bm1",)) == ["ok"]  # bm1 is not affected by bm2's line
    with pytest.raises(TransportError) as e:
        _connect(lab, kh, empty)
    msg = str(e.value)
    assert msg.startswith("bm2: malformed known_hosts line ") and f"{kh}:3 " in msg, msg
    assert "bm1" not in msg and "\n" not in msg


def test_the_cli_reports_it_as_bm2_not_as_an_internal_error(setup):
    lab, kh, empty, lines = setup
    kh.write_text(lines[0] + "\n" + lines[1].replace("AAAAC3", "AAAC3") + "\n")
    inv = kh.parent / "inventory.yaml"
    inv.write_text(Path(lab.inventory_path).read_text().replace(str(lab.known_hosts), str(kh)))
    r = bmupgrade("status", "--cluster", PACEMAKER, "-i", str(inv), state=kh.parent / "state")
    assert r.returncode == 1 and r.stderr.startswith(f"bmupgrade: cannot reach bm2: malformed known_hosts line "
                                                     f"{kh}:2 "), r.stderr
    assert "internal error" not in r.stderr and "Incorrect padding" in r.stderr


def test_a_revoked_key_is_refused_even_when_also_listed_as_known(setup):
    lab, kh, empty, lines = setup
    _, kind, key = lines[1].split()
    kh.write_text("\n".join(lines) + f"\n@revoked * {kind} {key}\n")
    assert _connect(lab, kh, empty, ("bm1",)) == ["ok"]
    with pytest.raises(TransportError) as e:
        _connect(lab, kh, empty)
    msg = str(e.value)
    assert msg.startswith("bm2: host key REVOKED") and f"marked @revoked at {kh}:3" in msg, msg


def test_a_revoked_key_is_refused_by_the_insecure_opt_out_too(setup):
    lab, kh, empty, lines = setup
    _, kind, key = lines[1].split()
    kh.write_text(f"@revoked * {kind} {key}\n")
    t = SshTransport(insecure_accept_unknown=True)
    try:
        with pytest.raises(TransportError, match="REVOKED"):
            t.connect([a for a in _addresses(lab, kh, empty) if a.name == "bm2"])
    finally:
        t.close()


def test_cert_authority_gets_one_line_explanation_not_a_crash(setup, tmp_path):
    lab, kh, empty, lines = setup
    ca = tmp_path / "ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(ca)], check=True)
    ca_pub = " ".join(Path(str(ca) + ".pub").read_text().split()[:2])
    kh.write_text(lines[0] + "\n" + f"@cert-authority [127.0.0.*]:* {ca_pub}\n")
    assert _connect(lab, kh, empty, ("bm1",)) == ["ok"]  # the CA line breaks nothing else
    with pytest.raises(TransportError) as e:
        _connect(lab, kh, empty)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("bm2: unknown host key"), msg
    assert f"{kh}:2 trusts host certificates signed by a CA (@cert-authority)" in msg
    assert "ssh-keyscan -t ed25519" in msg
