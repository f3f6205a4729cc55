"""Several read-only commands to one node in one round trip (issue 15: fixed cost).

Each command costs a channel open and an exec on SSH: two round trips. The cluster lock and
the VIP probe that opens every run are both read-only answers wanted at the same moment, so
they travel as one shell script and come back as separate results, as if sent one by one:
each command runs in its own subshell (an `exit` ends only it), its stdin is /dev/null, and
after it a marker line with a random nonce and its exit status is printed on stdout and on
stderr. A transport that does not say `joins_commands = True` (the in-memory one) gets the
commands one by one, so its rules and records stay per command.

Only for commands that may be sent again: when the script ended but an answer is missing (cut
by the capture limit, which caps the joined output like any command's, or a command that broke
the script's syntax), that command is asked again alone.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import replace

from bmupgrade.transport.base import CommandResult, Transport


def run(transport: Transport, node: str, commands: list[str], *, timeout: float | None,
        capture: bool = True, on_output=None) -> list[CommandResult]:
    """One result per command, in order. Never raises for what `Transport.run` puts in a result."""
    if len(commands) == 1 or not getattr(transport, "joins_commands", False):
        return [transport.run(node, c, timeout=timeout, capture=capture, on_output=on_output) for c in commands]
    nonce = secrets.token_hex(8)
    joined = transport.run(node, script(commands, nonce), timeout=timeout, capture=True, on_output=on_output)
    results = split(joined, commands, nonce)
    if joined.exit_code is not None:  # the script ended, yet an answer is missing: ask again, alone
        for i, r in enumerate(results):
            if r.exit_code is None:
                results[i] = transport.run(node, commands[i], timeout=timeout, capture=capture, on_output=on_output)
    return results


def script(commands: list[str], nonce: str) -> str:
    parts = []
    for i, c in enumerate(commands):
        mark = f"bmupgrade-{nonce}-{i}"
        parts.append(f"( {c}\n) </dev/null; printf '\\n%s %s\\n' {mark} $?; printf '\\n%s\\n' {mark} >&2")
    return "\n".join(parts)


def split(joined: CommandResult, commands: list[str], nonce: str) -> list[CommandResult]:
    """The joined result cut back into one result per command (see `script`)."""
    outs = _segments(joined.stdout, nonce, with_status=True)
    tails = _segments(joined.output_tail, nonce, with_status=False)
    results = []
    for i, command in enumerate(commands):
        if i in outs:
            text, status = outs[i]
            results.append(CommandResult(joined.node, command, status, joined.duration,
                                         output_tail=tails.get(i, ("", None))[0], stdout=text,
                                         reconnected=joined.reconnected))
        else:  # the script did not get this far: no exit status for this one (cannot tell)
            results.append(replace(joined, command=command, exit_code=None, stdout="",
                                   output_tail=joined.output_tail[-4000:] if i == len(outs) else "",
                                   error=joined.error or f"no answer (the joined commands stopped, exit "
                                                         f"{joined.exit_code})"))
    return results


def _segments(text: str, nonce: str, *, with_status: bool) -> dict[int, tuple[str, int | None]]:
    """Text before each command's marker(s), by index; markers and the newline printed before
    each marker removed. In the interleaved tail both markers of a command follow all its
    output and precede all of the next one's."""
    marker = re.compile(r"\n?bmupgrade-%s-(\d+)(?: (\d+))?\n" % nonce)
    found: dict[int, tuple[str, int | None]] = {}
    pos = 0
    for m in marker.finditer(text):
        i = int(m.group(1))
        if with_status and m.group(2) is None:
            continue
        chunk = text[pos:m.start()]
        if i in found:
            found[i] = (found[i][0] + chunk, found[i][1])
        else:
            found[i] = (chunk, int(m.group(2)) if m.group(2) is not None else None)
        pos = m.end()
    return found
