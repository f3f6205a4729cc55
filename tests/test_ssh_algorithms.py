"""What a connection offers: OpenSSH's defaults and ssh_config's list syntax (ssh_config(5):
a list replaces, +list appends, -list removes, ^list goes first; * and ? are wildcards).
The real-server side is in test_transport_ssh.py."""

from __future__ import annotations

import paramiko
import pytest

from bmupgrade.transport.algorithms import AlgorithmError, offer, policy

GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
CTR = ("aes128-ctr", "aes192-ctr", "aes256-ctr")


def test_the_defaults_are_openssh_s_with_gcm_first_and_nothing_paramiko_lacks():
    assert offer("ciphers", None) == GCM + CTR  # no CBC, no 3DES: OpenSSH's client offers neither
    macs = offer("macs", "")
    assert not [m for m in macs if "md5" in m or m.endswith("-96")] and macs[0] == "hmac-sha2-256-etm@openssh.com"
    assert offer("kexalgorithms", None)[0] in paramiko.Transport._preferred_kex
    for option in ("ciphers", "macs", "kexalgorithms"):
        assert set(offer(option, None)) <= set({"ciphers": paramiko.Transport._cipher_info,
                                                "macs": paramiko.Transport._mac_info,
                                                "kexalgorithms": paramiko.Transport._kex_info}[option])


@pytest.mark.parametrize("value, expected", [
    ("aes256-ctr,aes128-gcm@openssh.com", ("aes256-ctr", "aes128-gcm@openssh.com")),  # replaces, in its order
    ("chacha20-poly1305@openssh.com,aes256-ctr", ("aes256-ctr",)),  # what Paramiko lacks is passed over
    ("+aes*-cbc", GCM + CTR + ("aes128-cbc", "aes192-cbc", "aes256-cbc")),
    ("+aes128-ctr", GCM + CTR),  # already there: once
    ("-aes*-gcm@openssh.com", CTR),
    ("-aes1??-ctr", GCM + ("aes256-ctr",)),
    ("^aes256-ctr", ("aes256-ctr",) + GCM + ("aes128-ctr", "aes192-ctr")),
    (" aes192-ctr , aes128-ctr ", ("aes192-ctr", "aes128-ctr")),
])
def test_ssh_config_list_syntax(value, expected):
    assert offer("ciphers", value) == expected


def test_kex_names_openssh_spells_otherwise():
    assert offer("kexalgorithms", "curve25519-sha256,sntrup761x25519-sha512@openssh.com") == \
        ("curve25519-sha256@libssh.org",)


@pytest.mark.parametrize("option, value, name", [
    ("ciphers", "chacha20-poly1305@openssh.com", "Ciphers"),
    ("ciphers", "-aes*", "Ciphers"),
    ("macs", "umac-128-etm@openssh.com", "MACs"),
    ("kexalgorithms", "sntrup761x25519-sha512@openssh.com", "KexAlgorithms"),
])
def test_a_value_that_leaves_nothing_usable_says_what_would_work(option, value, name):
    with pytest.raises(AlgorithmError) as e:
        offer(option, value)
    msg = str(e.value)
    assert msg.startswith(f"ssh_config {name} {value!r} leaves no algorithm") and "\n" not in msg
    assert "it has: " in msg
    assert msg.endswith("remove that line (it removes every default)" if value.startswith("-") else
                        f"add one of them to that line (e.g. `{name} {value},{offer(option, None)[0]}`) or remove it")


def test_policy_reads_what_paramiko_parses_from_an_ssh_config():
    cfg = paramiko.SSHConfig.from_text("Host bm1\n  Ciphers aes256-gcm@openssh.com\n  MACs hmac-sha2-512\n"
                                       "Host *\n  Ciphers aes128-ctr\n").lookup("bm1")
    got = policy(cfg)
    assert got["ciphers"] == ("aes256-gcm@openssh.com",)  # the first match wins, as in ssh(1)
    assert got["digests"] == ("hmac-sha2-512",) and got["kex"] == offer("kexalgorithms", None)


def test_host_key_algorithms_default_to_openssh_s_and_never_offer_certificates():
    """OpenSSH's client defaults without certificates (known_hosts' @cert-authority is not
    implemented, so a certificate could not be checked) and without SHA-1 ssh-rsa."""
    assert offer("hostkeyalgorithms", None) == ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                                                "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256")
    assert offer("hostkeyalgorithms", "ssh-ed25519-cert-v01@openssh.com,ssh-rsa,ecdsa-sha2-nistp256") == \
        ("ecdsa-sha2-nistp256",)
    assert offer("hostkeyalgorithms", "-ecdsa*") == ("ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256")
    with pytest.raises(AlgorithmError, match=r"^ssh_config HostKeyAlgorithms 'ssh-ed25519-cert-v01@openssh.com' "):
        offer("hostkeyalgorithms", "ssh-ed25519-cert-v01@openssh.com")
    cfg = paramiko.SSHConfig.from_text("Host *\n  HostKeyAlgorithms ^rsa-sha2-256\n").lookup("bm1")
    assert policy(cfg)["key_types"][0] == "rsa-sha2-256"
