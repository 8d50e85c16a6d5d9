"""When a schedule fires: `--cron "0 3 * * *"` or `--every 6h`, parsed into APScheduler 3 triggers.

Parsed here, not by APScheduler alone, for two reasons. Its errors do not say which of the five cron fields
is wrong ("Error validating expression '61'"), and a user fixing a schedule needs the field and its range.
And APScheduler 3 numbers weekdays from Monday = 0, while every crontab numbers them from Sunday = 0 (its own
docs call this a historical mistake): `0 3 * * 0` must mean Sunday, so numeric weekdays are translated to
names before APScheduler sees them.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

CRON_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day", "1-31"),
    ("month", "1-12 or jan-dec"),
    ("day_of_week", "0-7 (0 and 7 are Sunday) or sun-sat"),
)
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class TriggerError(ValueError):
    """A schedule expression that does not parse; the message names the option, the field and the fix."""


def cron_trigger(expr: str, timezone: Any = None) -> Any:
    """A CronTrigger from a standard five-field crontab line, in `timezone` (default: this host's zone)."""
    from apscheduler.triggers.cron import CronTrigger

    values = expr.split()
    if len(values) != len(CRON_FIELDS):
        raise TriggerError(
            f'--cron "{expr}": {len(values)} fields, a crontab line has 5: minute hour day month '
            'day_of_week, e.g. "0 3 * * *" (every day at 03:00)'
        )
    values[4] = _weekdays(expr, values[4])
    for (name, allowed), value in zip(CRON_FIELDS, values, strict=True):
        try:
            CronTrigger(**{name: value})
        except ValueError as e:
            raise TriggerError(
                f'--cron "{expr}": {name} "{value}" is invalid: {name} must be {allowed} ({e})'
            ) from None
    try:
        return CronTrigger(**dict(zip([n for n, _ in CRON_FIELDS], values, strict=True)), timezone=timezone)
    except ValueError as e:  # each field is fine alone, not together (e.g. day 31 in month 2)
        raise TriggerError(f'--cron "{expr}": {e}') from None


def _weekdays(expr: str, field: str) -> str:
    """Crontab weekday numbers (Sunday = 0 or 7) to the names APScheduler reads unambiguously."""
    if not re.search(r"\d", field):
        return field  # '*', names, name ranges: the same in both conventions
    out: list[str] = []
    for part in field.split(","):
        m = re.fullmatch(r"(\*|\d+)(?:-(\d+))?(?:/(\d+))?", part)
        if m is None:
            raise TriggerError(
                f'--cron "{expr}": day_of_week "{field}" is invalid: day_of_week must be 0-7 '
                "(0 and 7 are Sunday) or sun-sat, as numbers or names, not both in one item"
            )
        lo, hi, step = m.group(1), m.group(2), int(m.group(3) or 1)
        first, last = (0, 6) if lo == "*" else (int(lo), int(hi) if hi is not None else int(lo))
        if m.group(3) and lo != "*" and hi is None:
            last = 7  # "1/2": from Monday to the end of the week, every 2nd day
        if not (0 <= first <= 7 and 0 <= last <= 7) or first > last or step == 0:
            raise TriggerError(
                f'--cron "{expr}": day_of_week "{part}" is invalid: day_of_week must be 0-7 '
                "(0 and 7 are Sunday), ranges low-high, steps above 0"
            )
        out += [_DAYS[d % 7] for d in range(first, last + 1, step)]
    return ",".join(dict.fromkeys(out))


def parse_every(text: str, option: str = "--every") -> timedelta:
    """'6h', '30m', '1h30m', '1d', '45s', '2w' (or a bare number of seconds) as a timedelta; errors name
    `option`."""
    raw = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        seconds = float(raw)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", raw)
        if not parts or re.sub(r"\d+(?:\.\d+)?\s*[smhdw]", "", raw).strip():
            raise TriggerError(
                f'{option} "{text}": not a duration; write a number with a unit s, m, h, d or w, '
                f"e.g. {option} 6h, {option} 30m, {option} 1h30m"
            )
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise TriggerError(f'{option} "{text}": must be longer than zero')
    return timedelta(seconds=seconds)


def interval_trigger(text: str, timezone: Any = None) -> Any:
    from apscheduler.triggers.interval import IntervalTrigger

    return IntervalTrigger(seconds=parse_every(text).total_seconds(), timezone=timezone)


def describe(trigger: Any) -> str:
    """A trigger as the user would write it back: 'cron 0 3 * * * (Europe/Paris)' or 'every 6h'."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    if isinstance(trigger, CronTrigger):
        fields = {f.name: str(f) for f in trigger.fields}
        return f"cron {' '.join(fields[n] for n, _ in CRON_FIELDS)} ({trigger.timezone})"
    if isinstance(trigger, IntervalTrigger):
        return f"every {format_duration(trigger.interval)}"
    return str(trigger)


def format_duration(d: timedelta) -> str:
    seconds, out = d.total_seconds(), ""
    for unit in ("w", "d", "h", "m"):
        n, seconds = divmod(seconds, _UNITS[unit])
        if n:
            out += f"{int(n)}{unit}"
    if seconds:
        out += f"{seconds:g}s"
    return out or "0s"
