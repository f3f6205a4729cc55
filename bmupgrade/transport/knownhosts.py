"""Reading known_hosts files the way an operator expects: every line accounted for.

Paramiko's `HostKeys.load` stops at the first line it cannot decode (an `InvalidHostKey` that
names neither file nor node: "Incorrect padding"), reads `@cert-authority` and `@revoked`
markers as host names, and so either breaks every connection or trusts a revoked key. Here:

* a malformed line is kept with its file and line number; a node whose host it names is
  refused with that location, other nodes are not affected (one warning);
* `@revoked` keys are never trusted, whatever other line lists them, and a server presenting
  one is refused with the line that revoked it;
* `@cert-authority` lines are recorded: Paramiko cannot verify host certificates, so a node
  known only through a CA gets a one-line explanation of which plain key to add.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Iterable

import paramiko

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Line:
    path: str
    number: int
    names: tuple[str, ...]  # host patterns, hashed names (|1|...) kept as written
    problem: str = ""  # why the line cannot be used (malformed), else ""

    @property
    def where(self) -> str:
        return f"{self.path}:{self.number}"

    def names_host(self, entry: str) -> bool:
        """Does this line apply to `entry` (`host` or `[host]:port`, as known_hosts writes it)?"""
        for name in self.names:
            if name.startswith("!"):
                continue
            if name.startswith("|1|"):
                parts = name.split("|")
                if len(parts) == 4 and paramiko.HostKeys.hash_host(entry, parts[2]) == name:
                    return True
            elif name.lower() == entry.lower() or (("*" in name or "?" in name) and _glob(name, entry)):
                return True
        return False


def _glob(pattern: str, text: str) -> bool:
    """OpenSSH host patterns: only `*` and `?` are special (not fnmatch's `[...]`)."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.fullmatch(rx, text.lower()) is not None


@dataclass
class KnownHosts:
    """What the known_hosts files of one node say, beyond the usable keys."""

    store: paramiko.HostKeys
    bad: list[Line] = field(default_factory=list)
    revoked: list[tuple[Line, bytes]] = field(default_factory=list)  # (line, key blob)
    cert_authorities: list[Line] = field(default_factory=list)

    def bad_for(self, entry: str) -> Line | None:
        return next((b for b in self.bad if b.names_host(entry)), None)

    def revoked_line(self, key: paramiko.PKey) -> Line | None:
        blob = key.asbytes()
        return next((line for line, b in self.revoked if b == blob), None)

    def ca_for(self, entry: str) -> Line | None:
        return next((c for c in self.cert_authorities if c.names_host(entry)), None)


def load(files: Iterable[str], store: paramiko.HostKeys | None = None) -> KnownHosts:
    """Merge every readable file into one store (Paramiko's lookup stops at the first store
    holding the host); revoked keys are left out of it."""
    kh = KnownHosts(paramiko.HostKeys() if store is None else store)
    entries: list[tuple[Line, paramiko.PKey]] = []
    for path in files:
        if path == os.devnull or not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            log.warning("ignoring known_hosts file %s: %s", path, e.strerror or e)
            continue
        for number, raw in enumerate(text.splitlines(), 1):
            _parse(raw.strip(), path, number, kh, entries)
    for line, key in entries:
        if kh.revoked_line(key) is None:
            kh.store._entries.append(paramiko.hostkeys.HostKeyEntry(list(line.names), key))  # noqa: SLF001
    for b in kh.bad:
        log.debug("known_hosts %s: %s", b.where, b.problem)
    return kh


def _parse(text: str, path: str, number: int, kh: KnownHosts, entries: list) -> None:
    if not text or text.startswith("#"):
        return
    fields = text.split()
    marker = fields.pop(0) if fields[0].startswith("@") else None
    if marker not in (None, "@revoked", "@cert-authority"):
        kh.bad.append(Line(path, number, (), f"unknown marker {marker!r}"))
        return
    if len(fields) < 3:
        names = tuple(fields[0].split(",")) if fields else ()
        kh.bad.append(Line(path, number, names, "expected 'HOSTS KEYTYPE BASE64KEY'"))
        return
    names, key_type, data = tuple(fields[0].split(",")), fields[1], fields[2]
    line = Line(path, number, names)
    try:
        blob = base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as e:
        kh.bad.append(Line(path, number, names, f"the {key_type} key is not valid base64 ({e})"))
        return
    if marker == "@cert-authority":
        kh.cert_authorities.append(line)
        return
    if marker == "@revoked":
        kh.revoked.append((line, blob))
        return
    try:
        key = paramiko.PKey.from_type_string(key_type, blob)
    except paramiko.ssh_exception.UnknownKeyType:
        return  # a key type Paramiko does not know (e.g. sk-ssh-ed25519): not usable, not wrong
    except Exception as e:  # noqa: BLE001 - any decoding failure of a hostile line
        kh.bad.append(Line(path, number, names, f"the {key_type} key cannot be decoded ({type(e).__name__})"))
        return
    entries.append((line, key))


def cert_authority_hint(line: Line, entry: str) -> str:
    return (f"{line.where} trusts host certificates signed by a CA (@cert-authority) for {entry}, but bmupgrade "
            "cannot verify host certificates (Paramiko); add the host's own key as well")
