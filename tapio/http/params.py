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
# what SQLite and the wire's int64 fields hold: a number past these is a 400, never an overflow
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


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


def integer(request, name, default=None, minimum=INT64_MIN, maximum=INT64_MAX):
    value = _raw(request, name)
    if value is None:
        return default
    minimum = INT64_MIN if minimum is None else max(minimum, INT64_MIN)
    maximum = INT64_MAX if maximum is None else min(maximum, INT64_MAX)
    if len(value) > 40:
        raise HttpError(400, f"{name} must be between {minimum} and {maximum}: "
                             f"{value[:40]!r}... is too long")
    try:
        number = int(value, 10)
    except ValueError:
        raise HttpError(400, f"{name} must be a whole number, not {value[:40]!r}") from None
    if number < minimum or number > maximum:
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
    if len(value) > 64:
        raise HttpError(400, f"{name} is longer than 64 characters")
    now_ns = time.time_ns() if now_ns is None else now_ns
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not 0 <= seconds <= _MAX_SECONDS:
            raise HttpError(400, f"{name} as Unix seconds must be between 0 and {_MAX_SECONDS}, "
                                 f"not {value[:40]!r}")
        return _in_range(int(seconds * 1e9), name, value)
    try:
        back = parse_duration(value)
    except argparse.ArgumentTypeError:
        back = None
    if back is not None:
        if not 0 <= back <= _MAX_SECONDS:
            raise HttpError(400, f"{name} as a duration back from now must be at most "
                                 f"{_MAX_SECONDS} s, not {value[:40]!r}")
        return _in_range(now_ns - int(back * 1e9), name, value)
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise HttpError(400, f"{name} must be a duration back from now (15m), an RFC 3339 time "
                             f"(2025-11-27T01:02:03Z) or Unix seconds, not {value[:40]!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    try:
        ns = int(when.timestamp() * 1e6) * 1000
    except (OverflowError, OSError, ValueError):
        ns = -1
    return _in_range(ns, name, value)


# nanoseconds since the epoch fit an int64 until 2262-04-11
_MAX_SECONDS = INT64_MAX // 1_000_000_000


def _in_range(ns, name, value):
    if not 0 <= ns <= INT64_MAX:
        raise HttpError(400, f"{name} must fall between 1970 and 2262 (nanoseconds since 1970 in "
                             f"64 bits), not {value[:40]!r}")
    return ns
