"""Which SSH algorithms a connection offers: OpenSSH's defaults and the ssh_config's
`Ciphers`, `MACs`, `KexAlgorithms` and `HostKeyAlgorithms`, which Fabric and Paramiko on their
own ignore.

Paramiko, left alone, offers what no OpenSSH client has offered for years (3des-cbc, the CBC
modes, hmac-md5, the truncated -96 MACs), and a site's cipher policy in ssh_config would not
apply. Here the offer starts from OpenSSH's client defaults, restricted to what Paramiko
implements, with AES-GCM first (one C call seals or opens a packet, where aes-ctr + hmac-sha2
runs Python's hmac module on every packet: ~10 % of a step's CPU). An ssh_config value is
read the way ssh_config(5) says: a list replaces the defaults, `+list` appends to them,
`-list` removes from them, `^list` puts names first; `*` and `?` are wildcards. Names
Paramiko does not implement (chacha20-poly1305, umac, sntrup761...) are passed over; a value
that leaves nothing Paramiko can use is an error naming the option and what would work.

Host keys: Paramiko's SSHClient puts the type of the host's first known_hosts key first (as
OpenSSH prefers known types), even one HostKeyAlgorithms leaves out; the offer is filtered
again after that, so the site's list is what goes out. Host certificates are not offered:
known_hosts' @cert-authority is not implemented here, so a certificate could not be checked.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import paramiko


@dataclass(frozen=True)
class Option:
    name: str  # as ssh_config(5) spells it
    attr: str  # Paramiko's SecurityOptions attribute
    preferred: str  # the Transport property: what it offers (disabled_algorithms applied)
    known: Mapping[str, object]  # what Paramiko implements, in the order a wildcard expands
    defaults: tuple[str, ...]  # OpenSSH's client defaults, AES-GCM first
    wire: str  # the name-list of the server's KEXINIT it is matched against (RFC 4253 7.1)


# keyed by the option in lower case, as Paramiko's SSHConfig keys it
OPTIONS = {
    "ciphers": Option("Ciphers", "ciphers", "preferred_ciphers", paramiko.Transport._cipher_info,
                      ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr"),
                      "ciphers"),
    "macs": Option("MACs", "digests", "preferred_macs", paramiko.Transport._mac_info,
                   ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256",
                    "hmac-sha2-512", "hmac-sha1"), "macs"),
    "kexalgorithms": Option("KexAlgorithms", "kex", "preferred_kex", paramiko.Transport._kex_info,
                            paramiko.Transport._preferred_kex, "kexalgorithms"),
    # no -cert- names: known_hosts' @cert-authority is not implemented, a certificate could not be checked
    "hostkeyalgorithms": Option("HostKeyAlgorithms", "key_types", "preferred_keys",
                                {k: v for k, v in paramiko.Transport._key_info.items() if "-cert-" not in k},
                                paramiko.Transport._preferred_keys, "hostkey"),
}
RSA_SHA2 = ("rsa-sha2-512", "rsa-sha2-256")  # what an ssh-rsa known_hosts key is checked with
ALIASES = {"curve25519-sha256": "curve25519-sha256@libssh.org"}  # RFC 8731's name; Paramiko knows the other


class AlgorithmError(ValueError):
    """An ssh_config value that leaves no algorithm Paramiko can use (the message says which)."""


def offer(option: str, value: str | None) -> tuple[str, ...]:
    """The names offered for one option, given its ssh_config value (None: the defaults)."""
    o = OPTIONS[option]
    able = tuple(o.known)
    default = tuple(n for n in o.defaults if n in able)
    if not value or not value.strip():
        return default
    value = value.strip()
    op, body = (value[0], value[1:]) if value[0] in "+-^" else ("", value)
    patterns = [p.strip() for p in body.split(",") if p.strip()]
    if op == "-":
        names = [n for n in default if not any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    else:
        wanted = _expand(patterns, able)
        names = {"+": list(default) + wanted, "^": wanted + list(default), "": wanted}[op]
    out = tuple(dict.fromkeys(names))
    if not out:
        fix = ("remove that line (it removes every default)" if op == "-" else
               f"add one of them to that line (e.g. `{o.name} {value},{(default or able)[0]}`) or remove it")
        raise AlgorithmError(f"ssh_config {o.name} {value!r} leaves no algorithm bmupgrade's SSH library "
                             f"(Paramiko) implements; it has: {', '.join(able)}; {fix}")
    return out


def _expand(patterns: list[str], able: tuple[str, ...]) -> list[str]:
    """Each pattern's matches among what Paramiko implements, in the pattern's order."""
    out: list[str] = []
    for p in (ALIASES.get(p, p) for p in patterns):
        out += [n for n in able if fnmatch.fnmatchcase(n, p)] if any(c in p for c in "*?") else \
            [p] if p in able else []
    return out


def policy(ssh_config: Mapping[str, object]) -> dict[str, tuple[str, ...]]:
    """The offer for every option, by SecurityOptions attribute (AlgorithmError if a value is unusable)."""
    return {o.attr: offer(option, _value(ssh_config.get(option))) for option, o in OPTIONS.items()}


def _value(v: object) -> str | None:
    """Paramiko's SSHConfig keeps a repeated option's first value, sometimes as a list."""
    if isinstance(v, (list, tuple)):
        v = v[0] if v else None
    return v if isinstance(v, str) else None


def transport_factory(offers: dict[str, tuple[str, ...]]) -> Callable[..., paramiko.Transport]:
    """For SSHClient.connect(transport_factory=...): a Paramiko transport that offers `offers`."""

    def make(sock, **kw) -> paramiko.Transport:
        t = _OfferingTransport(sock, **kw)
        opts = t.get_security_options()
        for attr, names in offers.items():
            setattr(opts, attr, names)
        policy = t.host_key_policy = offers.get("key_types")
        if policy is not None:  # SSHClient raises a bare Exception for a known ssh-rsa key without these
            opts.key_types = tuple(dict.fromkeys((*policy, *RSA_SHA2)))  # start_client filters them again
        return t

    return make


class _OfferingTransport(paramiko.Transport):
    """Says what the server offered when nothing matches (Paramiko only says "no acceptable
    ciphers"), and what to write in ssh_config if the site's policy allows one of those."""

    host_key_policy: "tuple[str, ...] | None" = None

    def start_client(self, event=None, timeout=None):
        """SSHClient moved the known_hosts key's type to the front, allowed or not: keep its
        order (known type first, as OpenSSH does) but only what the policy allows."""
        if self.host_key_policy is not None:
            opts = self.get_security_options()
            opts.key_types = [k for k in opts.key_types if k in self.host_key_policy] or self.host_key_policy
        return super().start_client(event=event, timeout=timeout)

    def _parse_kex_init(self, m):
        theirs = _server_offer(m)
        try:
            return super()._parse_kex_init(m)
        except paramiko.ssh_exception.IncompatiblePeer as e:
            raise paramiko.ssh_exception.IncompatiblePeer(mismatch(theirs, self) or str(e)) from None


_KEXINIT_LISTS = ("kexalgorithms", "hostkey", "ciphers", "ciphers_s2c", "macs", "macs_s2c")


def _server_offer(m: paramiko.Message) -> dict[str, list[str]]:
    """The server's KEXINIT name-lists (RFC 4253 7.1), read from a copy of the message."""
    try:
        peek = paramiko.Message(m.asbytes())
        peek.get_bytes(16)  # cookie
        return {k: peek.get_list() for k in _KEXINIT_LISTS}
    except Exception:  # a malformed KEXINIT: Paramiko's own parser says so
        return {}


def mismatch(theirs: dict[str, list[str]], t: paramiko.Transport) -> str | None:
    """One line for the first option with nothing in common, with the fix."""
    for option in ("kexalgorithms", "hostkeyalgorithms", "ciphers", "macs"):
        o = OPTIONS[option]
        offered = theirs.get(o.wire) or []
        ours = getattr(t, o.preferred)
        if not offered or set(offered) & set(ours):
            continue
        able = [n for n in offered if n in o.known]
        fix = (f"if your policy allows it, add `{o.name} +{able[0]}` to the ssh_config" if able else
               f"Paramiko implements none of them: allow one of bmupgrade's in the server's sshd_config")
        return (f"no {o.name} in common with the server: it offers {', '.join(offered)}; bmupgrade "
                f"offers {', '.join(ours)} (OpenSSH's defaults, or the ssh_config's {o.name}); {fix}")
    return None
