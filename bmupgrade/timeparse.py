"""Maintenance-window deadlines as people write them: 04:00, an ISO time, or +90m.

Wall-clock times are read in the machine's local zone with zoneinfo, so "04:00" on the night
the clocks change is the 04:00 people see on their watch, not a fixed UTC offset away.
"""

from __future__ import annotations

import datetime as dt
import os
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bmupgrade.errors import UsageError
from bmupgrade.runbook import parse_duration


def local_zone() -> dt.tzinfo:
    """The local time zone with its DST rules: $TZ, else /etc/localtime, else a fixed offset."""
    name = os.environ.get("TZ", "").lstrip(":")
    try:
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (ZoneInfoNotFoundError, OSError, ValueError):
        return dt.datetime.now().astimezone().tzinfo or dt.timezone.utc


def parse_deadline(text: str, *, now: dt.datetime | None = None, zone: dt.tzinfo | None = None) -> float:
    """Epoch seconds. HH:MM is the next such local time (tonight's 04:00 if it is 23:00 now)."""
    zone = zone or local_zone()
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(zone)
    t = text.strip()
    try:
        if t.startswith("+"):
            return now.timestamp() + parse_duration(t[1:])
        if len(t) <= 5 and ":" in t:
            hh, mm = (int(x) for x in t.split(":"))
            day = now.date()
            for _ in range(2):
                candidate = dt.datetime.combine(day, dt.time(hh, mm), tzinfo=zone)
                if candidate.timestamp() > now.timestamp():
                    return candidate.timestamp()
                day += dt.timedelta(days=1)
        when = dt.datetime.fromisoformat(t)
        if when.tzinfo is None:
            when = when.replace(tzinfo=zone)
        return when.timestamp()
    except (ValueError, TypeError):
        pass
    raise UsageError(f"--deadline {text!r}: write 04:00, an ISO time (2026-11-26T04:00) or +90m")


def show_local(epoch: float, zone: dt.tzinfo | None = None) -> str:
    """A deadline as people read it: 2026-03-29 04:00 CEST (seconds too when not :00, e.g. +150s:
    "2m27s left before 14:12" read at 14:10:12 would be wrong by 39 s)."""
    when = dt.datetime.fromtimestamp(epoch, zone or local_zone())
    return when.strftime("%Y-%m-%d %H:%M" + (":%S" if when.second else "") + " %Z").strip()
