"""Windows and thresholds of the correlation engine, from one TOML file (--correlation-config).

Every key is optional; what a file leaves out keeps its default. Durations are Go-style strings
("500ms", "10s", "5m") or numbers of seconds. An unknown section or key is an error (a typo must
not silently keep a default). docs/correlation.md describes each rule; the defaults:

    [process_tree]
    enabled = true
    min_processes = 3          # a finished tree with this many processes is a group
    min_processes_failed = 2   # ... or with this many when one of them failed
    grace = "3s"               # wait this long after the last exit for late events
    max_duration = "10m"       # a tree open longer is closed as it is (daemons, login sessions)
    max_processes = 512        # processes recorded per tree (the rest are counted)
    split_on_cgroup = true     # a process in another cgroup than its parent starts its own tree
    max_groups_per_minute = 60 # per collector; the excess is counted, not stored

    [crash_loop]
    enabled = true
    threshold = 5              # failed exits of one executable in one scope ...
    window = "5m"              # ... within this window open a crash-loop group
    close_after = "5m"         # the group closes after this long without another failed exit
    max_duration = "1h"
    scopes = ["container", "service"]   # where: container, service (.service unit), unit (any
                                        # systemd unit, login sessions too), cgroup (any cgroup)

    [oom_kill]
    enabled = true
    follow = "5s"              # exits in the victim's container this soon after belong to it
    history = "2m"             # "OOM-killed N times in 2m" counts kills this far back

    [connectivity]
    enabled = true
    threshold = 5              # failed connects from one cgroup to one destination ...
    window = "30s"             # ... within this window open a group
    close_after = "15s"        # the group closes after this long without a failure
    max_duration = "10m"
    failures = ["refused", "timed_out", "reset", "unreachable", "other"]

    [fatal_signal]
    enabled = true
    signals = ["SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGSYS", "SIGTRAP"]
    grace = "2s"               # wait this long for the exit after the signal

    [limits]                   # per collector (recent_memory: over all of them)
    max_processes = 65536      # process table
    max_destinations = 16384   # connection table
    recent_events = 50000      # events kept (by batch) so that groups can show them in full
    recent_memory = "128MiB"   # ... and the memory those batches take, over all collectors
    max_group_events = 200     # events kept in full per group (all are counted, ids up to 1000)
    tick = "250ms"             # how often time-based closes are checked
    keep_closed = "5m"         # closed groups kept this long, to be marked incomplete by a gap
    max_closed_kept = 1000     # ... and at most this many
    max_clock_skew = "1h"      # event times further ahead of the server's clock are clamped
"""
import dataclasses
import signal
import tomllib

from tapio.flags import ConfigError, parse_duration, parse_size
from tapio.v1 import events_pb2


@dataclasses.dataclass
class ProcessTreeConfig:
    enabled: bool = True
    min_processes: int = 3
    min_processes_failed: int = 2
    grace: float = 3.0
    max_duration: float = 600.0
    max_processes: int = 512
    split_on_cgroup: bool = True
    max_groups_per_minute: int = 60


@dataclasses.dataclass
class CrashLoopConfig:
    enabled: bool = True
    threshold: int = 5
    window: float = 300.0
    close_after: float = 300.0
    max_duration: float = 3600.0
    scopes: tuple = ("container", "service")


@dataclasses.dataclass
class OomKillConfig:
    enabled: bool = True
    follow: float = 5.0
    history: float = 120.0


@dataclasses.dataclass
class ConnectivityConfig:
    enabled: bool = True
    threshold: int = 5
    window: float = 30.0
    close_after: float = 15.0
    max_duration: float = 600.0
    failures: tuple = ("refused", "timed_out", "reset", "unreachable", "other")


@dataclasses.dataclass
class FatalSignalConfig:
    enabled: bool = True
    signals: tuple = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGSYS", "SIGTRAP")
    grace: float = 2.0


@dataclasses.dataclass
class LimitsConfig:
    max_processes: int = 65536
    max_destinations: int = 16384
    recent_events: int = 50000
    recent_memory: int = 128 << 20      # bytes, over every collector's recent batches
    max_group_events: int = 200
    tick: float = 0.25
    keep_closed: float = 300.0
    max_closed_kept: int = 1000
    # event times further ahead of the server's clock are clamped to it (and counted): one bad
    # timestamp must not move a collector's time beyond what its groups can close at
    max_clock_skew: float = 3600.0


@dataclasses.dataclass
class CorrelationConfig:
    process_tree: ProcessTreeConfig = dataclasses.field(default_factory=ProcessTreeConfig)
    crash_loop: CrashLoopConfig = dataclasses.field(default_factory=CrashLoopConfig)
    oom_kill: OomKillConfig = dataclasses.field(default_factory=OomKillConfig)
    connectivity: ConnectivityConfig = dataclasses.field(default_factory=ConnectivityConfig)
    fatal_signal: FatalSignalConfig = dataclasses.field(default_factory=FatalSignalConfig)
    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)

    # ---- derived values the engine uses ----
    def connect_failure_codes(self):
        """The ConnectResult numbers that count as failures."""
        names = {v.name[len("CONNECT_RESULT_"):].lower(): v.number
                 for v in events_pb2.ConnectResult.DESCRIPTOR.values}
        return tuple(names[n] for n in self.connectivity.failures)

    def fatal_signal_numbers(self):
        return frozenset(int(signal.Signals[name]) for name in self.fatal_signal.signals)


_SCOPES = {"container", "service", "unit", "cgroup"}
_RESULTS = {"refused", "timed_out", "reset", "unreachable", "other"}


def _duration(value, where):
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        try:
            seconds = parse_duration(value)
        except Exception as e:   # argparse.ArgumentTypeError
            raise ConfigError(f"{where}: {e}") from None
    if seconds < 0:
        raise ConfigError(f"{where}: a duration must not be negative")
    return seconds


def _check(section, key, value, default, where):
    """value, checked against the type of its default."""
    if key in ("grace", "max_duration", "window", "close_after", "follow", "history", "tick",
               "keep_closed", "max_clock_skew"):
        seconds = _duration(value, where)
        if key in ("window", "tick", "max_duration", "max_clock_skew") and seconds <= 0:
            raise ConfigError(f"{where}: must be greater than zero")
        return seconds
    if key == "recent_memory":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: {value!r} is not a size (bytes, or like \"128MiB\")")
        try:
            size = parse_size(value) if isinstance(value, str) else value
        except Exception as e:   # argparse.ArgumentTypeError
            raise ConfigError(f"{where}: {e}") from None
        if size <= 0:
            raise ConfigError(f"{where}: must be greater than zero")
        return size
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} is not true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: {value!r} is not a whole number >= 0")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings")
        items = tuple(value)
        allowed = {"scopes": _SCOPES, "failures": _RESULTS}.get(key)
        if allowed is not None:
            bad = [v for v in items if v not in allowed]
            if bad:
                raise ConfigError(f"{where}: {', '.join(bad)} not one of {', '.join(sorted(allowed))}")
        if key == "signals":
            for name in items:
                if name not in signal.Signals.__members__:
                    raise ConfigError(f"{where}: {name} is not a signal name (like SIGSEGV)")
        return items
    raise ConfigError(f"{where}: unsupported value {value!r}")


def from_dict(data, source="the correlation config"):
    """A CorrelationConfig from a dict shaped like the TOML file."""
    config = CorrelationConfig()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected sections like [crash_loop]")
    for section, values in data.items():
        part = getattr(config, section, None) if section in _SECTIONS else None
        if part is None:
            raise ConfigError(f"{source}: unknown section [{section}] (known: {', '.join(_SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        fields = {f.name: f for f in dataclasses.fields(part)}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"{source}: unknown key {key!r} in [{section}] "
                                  f"(known: {', '.join(fields)})")
            setattr(part, key, _check(section, key, value, getattr(part, key),
                                      f"{source}: [{section}] {key}"))
    _validate(config, source)
    return config


def _validate(config, source):
    if not 1 <= config.connectivity.threshold <= 64:
        raise ConfigError(f"{source}: [connectivity] threshold must be within 1..64")
    if config.crash_loop.threshold < 2:
        raise ConfigError(f"{source}: [crash_loop] threshold must be at least 2")
    if config.process_tree.min_processes < 1 or config.process_tree.max_processes < 1:
        raise ConfigError(f"{source}: [process_tree] min_processes and max_processes must be >= 1")
    if config.limits.max_processes < 16 or config.limits.max_destinations < 16:
        raise ConfigError(f"{source}: [limits] max_processes and max_destinations must be >= 16")
    if config.limits.max_group_events < 1:
        raise ConfigError(f"{source}: [limits] max_group_events must be >= 1")


_SECTIONS = ("process_tree", "crash_loop", "oom_kill", "connectivity", "fatal_signal", "limits")


def load_config(path=None):
    """The defaults, or the file at `path` over them. ConfigError says what is wrong."""
    if not path:
        return CorrelationConfig()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read the correlation config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    return from_dict(data, path)
