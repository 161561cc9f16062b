"""Command-line flags as the original Tapio had them, shared by tapio-collector and tapio-server.

- Booleans accept `--flag`, `--flag=true` and `--flag=false` (also 1/0, yes/no, on/off).
- Durations accept Go-style values: `250us`, `100ms`, `5s`, `1m`, `1h`, `1m30s` (seconds as float).
- Sizes accept `2000`, `64KiB`, `8MiB`, `1GiB`, `64K`, `8M`, `1G` (bytes).
- Every flag also reads an environment variable: `--flush-interval` <- `TAPIO_FLUSH_INTERVAL`.
  A flag given on the command line wins over the environment.
- A bad flag or value prints one line, `<prog>: <what is wrong>`, and exits with code 2.
"""
import argparse
import os
import re
import sys

class ConfigError(Exception):
    """A configuration problem found after parsing (a file without a token, ...): the CLIs print
    it as one line and exit with code 2."""


_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")

_SIZE_UNITS = {"": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}
_SIZE = re.compile(r"(\d+)\s*([a-z]*)")


def parse_bool(text):
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: use true or false")


def parse_duration(text):
    """Go-style duration -> seconds. A bare 0 is allowed; other bare numbers need a unit."""
    value = str(text).strip()
    if value == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(value):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(value) or not value:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use a number with a unit, like 100ms, 5s or 1m")
    return total


def parse_size(text):
    m = _SIZE.fullmatch(str(text).strip().lower())
    if not m or m.group(2) not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use bytes or a unit, like 64MiB")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def positive(kind):
    """Wrap a parser so that zero and negative values are refused."""
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
        return value
    parse.__name__ = kind.__name__
    return parse


def non_negative(kind):
    def parse(text):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
        return value
    parse.__name__ = kind.__name__
    return parse


def at_most(limit, kind, unit=""):
    """`kind`, between 0 and `limit` (a bound that keeps the value meaningful downstream)."""
    def parse(text):
        value = non_negative(kind)(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"{text!r} is more than {limit:g}{unit}")
        return value
    parse.__name__ = kind.__name__
    return parse


def matching(pattern, what):
    """A string that fully matches `pattern` (a compiled regex); `what` says what it must be."""
    def parse(text):
        if not pattern.fullmatch(text):
            raise argparse.ArgumentTypeError(f"{text[:80]!r} is not {what}")
        return text
    parse.__name__ = "str"
    return parse


def choice(*options):
    def parse(text):
        value = str(text).strip().lower()
        if value not in options:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(options)}")
        return value
    parse.__name__ = "choice"
    return parse


def port(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return value


def env_name(flag):
    return "TAPIO_" + flag.lstrip("-").replace("-", "_").upper()


class FlagParser(argparse.ArgumentParser):
    """argparse with environment defaults, Go-style booleans and one-line errors."""

    def __init__(self, prog, description):
        super().__init__(prog=prog, description=description,
                         formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        self._env_flags = []

    def flag(self, name, type=str, default=None, help="", metavar=None):
        """A valued flag; its environment variable is named after it."""
        self.add_argument(name, type=type, default=default, metavar=metavar,
                          help=f"{help} [env {env_name(name)}]" + _default_text(default))
        self._env_flags.append((name, type))

    def switch(self, name, default=False, help=""):
        """A boolean flag: --name, --name=true, --name=false."""
        self.add_argument(name, type=parse_bool, nargs="?", const=True, default=default,
                          metavar="BOOL", help=f"{help} [env {env_name(name)}]" + _default_text(default))
        self._env_flags.append((name, parse_bool))

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        namespace = namespace or argparse.Namespace()
        for name, kind in self._env_flags:
            raw = os.environ.get(env_name(name))
            if raw is None:
                continue
            try:
                setattr(namespace, name.lstrip("-").replace("-", "_"), kind(raw))
            except (argparse.ArgumentTypeError, ValueError) as e:
                self.error(f"environment variable {env_name(name)}: {e}")
        return super().parse_args(args, namespace)

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _default_text(default):
    if default is None or default is False or default == "":
        return ""
    return f" (default {default})"
