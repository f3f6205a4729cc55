"""The one way a command reaches a node: written to the audit log first (a command that
cannot be audited, e.g. on a full disk, is not sent), redacted wherever it is shown."""

from __future__ import annotations

import itertools
import logging

from bmupgrade.errors import BmError
from bmupgrade.transport import together
from bmupgrade.transport.base import CommandResult, Transport

log = logging.getLogger(__name__)


class AuditedSender:
    def __init__(self, transport: Transport, audit, redact, reporter):
        self.transport, self.audit, self.redact, self.reporter = transport, audit, redact, reporter
        self.sends = 0  # commands handed to the transport so far: "was anything sent since?" (engine/carried.py)
        self._rounds = itertools.count(1)

    def send(self, node: str, command: str, *, timeout: float | None, key: str, capture: bool = False,
             quiet: bool = False, tag: str | None = None, must_audit: bool = True) -> CommandResult:
        """Every command goes here: audited before it is sent (a command that cannot be audited,
        e.g. on a full disk, is not sent — except the cleanup on the way out: `must_audit=False`)."""
        shown = self.redact(command)
        self._audit("begin", must_audit, node, key, shown)

        def sink(n: str, stream: str, text: str) -> None:
            self._audit("output", False, n, key, text)
            if not quiet:
                self.reporter.output(n, stream, self.redact(text))

        kwargs = {"tag": tag} if tag else {}
        self.sends += 1
        r = self.transport.run(node, command, timeout=timeout, capture=capture, on_output=sink, **kwargs)
        self._audit_result(node, key, shown, r)
        return r

    def send_together(self, node: str, commands: list[tuple[str, str]], *, timeout: float,
                      round_id: int | None = None) -> list[CommandResult]:
        """Read-only (key, command) pairs to one node in one round trip (transport/together.py),
        each audited as if sent alone (with the id of the round when it has one: the nodes'
        parts of one `ask_each`); their output is captured, never shown."""
        shown = [(key, self.redact(c)) for key, c in commands]
        for key, text in shown:
            self._audit("begin", True, node, key, text, round_id=round_id)
        self.sends += len(commands)
        results = together.run(self.transport, node, [c for _, c in commands], timeout=timeout,
                               on_output=lambda n, stream, text: self._audit("output", False, n, "together", text))
        for (key, text), r in zip(shown, results):
            self._audit_result(node, key, text, r)
        return results

    def ask_each(self, asked: dict[str, list[tuple[str, str, float]]]) -> dict[str, dict[str, CommandResult]]:
        """Each node's read-only (key, command, timeout) triples in one round trip, the nodes in
        parallel; the answers by node, then key."""
        from bmupgrade.probes import on_each

        round_id = next(self._rounds)
        return on_each(list(asked), lambda n: dict(zip(
            [key for key, _, _ in asked[n]],
            self.send_together(n, [(key, c) for key, c, _ in asked[n]], timeout=sum(t for _, _, t in asked[n]),
                               round_id=round_id))))

    def _audit_result(self, node: str, key: str, shown: str, r: CommandResult) -> None:
        self._audit("record", False, node=node, key=key, command=shown, exit_code=r.exit_code,
                    duration=round(r.duration, 4), timed_out=r.timed_out, sent=r.sent,
                    connection_lost=r.connection_lost, error=r.error, output_tail=r.output_tail)

    def _audit(self, what: str, required: bool, *args, **kwargs) -> None:
        if not self.audit:
            return
        try:
            getattr(self.audit, what)(*args, **kwargs)
        except OSError as exc:
            if required:
                raise BmError(f"cannot write the audit log ({exc.strerror}; disk full?): nothing more is sent") \
                    from None
            log.debug("audit write failed", exc_info=True)

