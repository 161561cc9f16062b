"""Logging for both programs: one line per meaningful event, on stderr.

`--log-format text` (the default) writes `2026-11-27T01:02:03.456Z INFO  message key=value`;
`--log-format json` writes one JSON object per line for log shippers.
"""
import json
import logging
import sys
import time

LEVELS = ("debug", "info", "warning", "error")


def _utc(created):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record):
        line = f"{_utc(record.created)} {record.levelname:<5} {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info and record.levelno >= logging.ERROR:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {"time": _utc(record.created), "level": record.levelname.lower(),
                 "logger": record.name, "msg": record.getMessage()}
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), default=str)


def setup(fmt="text", level="info"):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc and hypercorn are chatty at info
    for noisy in ("grpc", "hpack", "hypercorn.access", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fields(**kv):
    """Structured fields for a log call: log.info("Connected", extra=fields(server=addr))."""
    return {"fields": kv}
