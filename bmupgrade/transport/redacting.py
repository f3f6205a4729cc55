"""A transport wrapper that masks the runbook's secret values in everything a command returns.

The engine, the audit log and the reporter receive output chunk by chunk; a secret split
across two chunks is in neither, so chunk-wise redaction lets it through. Masking here, once,
with a carry-over per stream (templating.StreamRedactor), covers every consumer: the terminal,
output.log, the audit record's tail, and captured stdout (checks, captures and facts, which
the journal stores). A command whose output contains a secret therefore captures it masked.
"""

from __future__ import annotations

from bmupgrade.templating import Redactor
from bmupgrade.transport.base import CommandResult, OutputSink


class RedactingTransport:
    def __init__(self, inner, redactor: Redactor):
        self.inner = inner
        self.redact = redactor

    def __getattr__(self, name):  # connect, close, nodes, connection ...
        return getattr(self.inner, name)

    def run(self, node: str, command: str, *, on_output: OutputSink | None = None, **kw) -> CommandResult:
        streams: dict[str, object] = {}
        sink = None
        if on_output is not None:
            def sink(n: str, stream: str, text: str) -> None:
                s = streams.get(stream) or streams.setdefault(stream, self.redact.stream())
                text = s.feed(text)
                if text:
                    on_output(n, stream, text)

        r = self.inner.run(node, command, on_output=sink, **kw)
        for stream, s in streams.items():
            rest = s.flush()
            if rest:
                on_output(node, stream, rest)
        r.output_tail = self.redact(r.output_tail)
        r.stdout = self.redact(r.stdout)
        r.error = self.redact(r.error)
        r.command = self.redact(r.command)
        return r


def secret_redactor(rb) -> Redactor:
    return Redactor([v.value for v in rb.vars.values() if v.secret])
