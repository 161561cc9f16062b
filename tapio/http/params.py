"""Query parameters, checked: a bad value is a 400 with a message that says what would do.

Each reader takes the Request and the parameter's name and returns the value (or the default
when the parameter is absent or blank); `only(request, names)` refuses parameters an endpoint
does not know, so a misspelt filter is an error rather than a silently unfiltered answer.
"""
import argparse
import datetime
import re
import time

from tapio.flags import parse_duration
from tapio.http.asgi import HttpError

_SAFE_TEXT = re.compile(r"[^\x00-\x1f\x7f]*\Z")


def only(request, names):
    unknown = sorted(set(request.query) - set(names))
    if unknown:
        known = ", ".join(sorted(names)) or "none"
        raise HttpError(400, f"unknown parameter {unknown[0]!r}: this endpoint takes {known}")


def _raw(request, name):
    value = request.arg(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def integer(request, name, default=None, minimum=None, maximum=None):
    value = _raw(request, name)
    if value is None:
        return default
    try:
        number = int(value, 10)
    except ValueError:
        raise HttpError(400, f"{name} must be a whole number, not {value[:40]!r}") from None
    if minimum is not None and number < minimum or maximum is not None and number > maximum:
        raise HttpError(400, f"{name} must be between {minimum} and {maximum}, not {number}")
    return number


def one_of(request, name, options, default=None):
    value = _raw(request, name)
    if value is None:
        return default
    if value not in options:
        raise HttpError(400, f"{name} must be one of {', '.join(sorted(options))}, not {value[:40]!r}")
    return value


def text(request, name, max_length=256, default=None):
    value = _raw(request, name)
    if value is None:
        return default
    if len(value) > max_length:
        raise HttpError(400, f"{name} is longer than {max_length} characters")
    if not _SAFE_TEXT.match(value):
        raise HttpError(400, f"{name} holds control characters")
    return value


def since_ns(request, name, now_ns=None):
    """A point in time as nanoseconds since the epoch, from
    - a duration back from now: `90s`, `15m`, `2h`;
    - an RFC 3339 time: `2025-11-27T01:02:03Z` (a time without zone is UTC);
    - Unix seconds: `1764205323` or `1764205323.5`."""
    value = _raw(request, name)
    if value is None:
        return None
    now_ns = time.time_ns() if now_ns is None else now_ns
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not 0 <= seconds < 1e11:
            raise HttpError(400, f"{name} as Unix seconds must be between 0 and 1e11, not {value[:40]!r}")
        return int(seconds * 1e9)
    try:
        return now_ns - int(parse_duration(value) * 1e9)
    except argparse.ArgumentTypeError:
        pass
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise HttpError(400, f"{name} must be a duration back from now (15m), an RFC 3339 time "
                             f"(2025-11-27T01:02:03Z) or Unix seconds, not {value[:40]!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return int(when.timestamp() * 1e6) * 1000
