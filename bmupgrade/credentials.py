"""The sudo password: from $BMUPGRADE_SUDO_PASSWORD (unattended) or asked on the terminal.

Asked once, before anything runs (never in the middle of a step's live display). When sudo on
a node rejects it, the SSH transport (which detects the rejection whatever the node's
language) asks again on a terminal, up to 3 passwords in all; unattended, it stops after the
first rejection. A rejected password is never sent again (pam_faillock locks accounts on
repeated failures), and the password is dropped when the transport closes.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable


class SudoPassword:
    """A zero-argument PasswordProvider with `interactive` (may ask again) for the transport."""

    def __init__(self, env: str | None, ask: Callable[[str], str] | None):
        self._env = env
        self._ask = ask
        self.interactive = env is None and ask is not None
        self.asked = 0

    @classmethod
    def from_environment(cls) -> "SudoPassword":
        env = os.environ.get("BMUPGRADE_SUDO_PASSWORD")
        if env is not None or not sys.stdin.isatty():
            return cls(env, None)
        import getpass

        return cls(None, getpass.getpass)

    def __call__(self) -> str | None:
        if self._env is not None:
            return self._env
        if self._ask is None:
            return None
        self.asked += 1
        if self.asked == 1:
            return self._ask("sudo password for the nodes (not stored): ")
        return self._ask(f"sudo rejected that password; sudo password for the nodes (try {self.asked}/3): ")


def transport_factory(*, insecure: bool = False) -> Callable[[Any], Any]:
    """The real SSH transport for a runbook: sudo password as above, secrets masked in all output."""

    def make(rb):
        from bmupgrade.transport.redacting import RedactingTransport, secret_redactor
        from bmupgrade.transport.ssh import SshTransport

        kwargs: dict[str, Any] = {}
        if any(n.sudo for n in rb.cluster.nodes):
            source = SudoPassword.from_environment()
            first = source()  # asked now, once, before the live display starts
            kwargs["password_provider"] = _Primed(source, first)
        if insecure:
            kwargs["insecure_accept_unknown"] = True
        return RedactingTransport(SshTransport(**kwargs), secret_redactor(rb))

    return make


class _Primed:
    """The first answer was asked up front; later calls (after a rejection) ask again."""

    def __init__(self, source: SudoPassword, first: str | None):
        self._source = source
        self._first: list[str | None] = [first]
        self.interactive = source.interactive

    def __call__(self) -> str | None:
        if self._first:
            return self._first.pop()
        return self._source()
