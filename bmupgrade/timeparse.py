"""Maintenance-window deadlines as people write them: 04:00, an ISO time, or +90m."""

from __future__ import annotations

import datetime as dt

from bmupgrade.errors import UsageError
from bmupgrade.runbook import parse_duration


def parse_deadline(text: str, *, now: dt.datetime | None = None) -> float:
    """Epoch seconds. HH:MM is the next such local time (tonight's 04:00 if it is 23:00 now)."""
    now = now or dt.datetime.now().astimezone()
    t = text.strip()
    try:
        if t.startswith("+"):
            return (now + dt.timedelta(seconds=parse_duration(t[1:]))).timestamp()
        if len(t) <= 5 and ":" in t:
            hh, mm = (int(x) for x in t.split(":"))
            candidate = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
            if candidate <= now:
                candidate += dt.timedelta(days=1)
            return candidate.timestamp()
        when = dt.datetime.fromisoformat(t)
        if when.tzinfo is None:
            when = when.astimezone()
        return when.timestamp()
    except (ValueError, TypeError):
        raise UsageError(f"--deadline {text!r}: write 04:00, an ISO time (2026-11-26T04:00) or +90m") from None
