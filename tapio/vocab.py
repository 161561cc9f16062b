"""Tapio's vocabulary: every name and text form a user reads, written once.

Event types and their spellings, group kinds and their intents, severities, signal names, exit
and address text: the collector, the server, the follower, the OTel mapping, the store and (through
`/api/v1/vocabulary`) the dashboard all take them from here.

The JSON shape of an event (`tapio-collector --output`, `tapio-server --events-out`):

One compact object per line, built by `tapio._fast.codec.DecodedBatch.event_dict`:

    {"id":"ebpf-12","type":"exec","timestamp_ns":1764205323123456789,
     "time":"2025-11-27T01:02:03.123456Z","pid":10,"tid":10,"ppid":1,"uid":0,"gid":0,
     "cgroup_id":123,"comm":"sh",
     "count":3,                 only when > 1: identical repeats collapsed into this event
     "node":"host-a",           the batch's node name, when it has one
     "collector":"host-a-collector", "batch":1764205323123456,   the batch it came in
     "context":{...},           where: the non-empty Context fields, labels as {"k":"v"}
     "process":{...},           who: executable, command_line, user, ancestors, start_time_ns
     "exec":{...}}              the details, keyed by their type's name

Event type names come from the wire contract's enums (EVENT_TYPE_TCP_CONNECT -> "tcp_connect"),
so they cannot drift from it; a value a newer peer sends that this contract does not know is shown
as "unknown_<n>".
"""
import datetime
import ipaddress
import json
import signal

from tapio.v1 import events_pb2

_EPOCH = datetime.datetime(1970, 1, 1)


def _enum_names(enum, prefix):
    return {v.number: v.name[len(prefix):].lower() for v in enum.DESCRIPTOR.values}


EVENT_TYPES = _enum_names(events_pb2.EventType, "EVENT_TYPE_")       # 1: "exec", ...
IP_FAMILIES = _enum_names(events_pb2.IpFamily, "IP_FAMILY_")         # 4: "ipv4", 6: "ipv6"
CONNECT_RESULTS = _enum_names(events_pb2.ConnectResult, "CONNECT_RESULT_")  # 0: "ok", ...


# Types the collector makes itself (the kernel never sends them, --events does not take them):
# `throttled` says what the per-cgroup budget held back.
COLLECTOR_EVENT_TYPES = ("throttled",)

# Other spellings users type for an event type; the public one is the wire's ("oom_kill").
EVENT_TYPE_ALIASES = {"oom": "oom_kill"}
EVENT_TYPE_NUMBERS = {name: number for number, name in EVENT_TYPES.items() if number}

# Group kinds and the intent each one serves: what an operator does with such a group.
GROUP_KINDS = {
    "process_tree": "process_lifecycle",
    "crash_loop": "service_reliability_incident",
    "oom_kill": "memory_exhaustion_investigation",
    "connectivity_degradation": "connectivity_degradation",
    "fatal_signal": "process_crash_investigation",
}
SEVERITIES = ("info", "warning", "error", "critical")


def event_type_name(number):
    return EVENT_TYPES.get(number) or f"unknown_{number}"


def event_type_number(name):
    """The wire number of a type name or alias ("oom" -> 6); ValueError names the choices."""
    key = str(name).strip().lower()
    key = EVENT_TYPE_ALIASES.get(key, key)
    if key not in EVENT_TYPE_NUMBERS:
        raise ValueError(f"unknown event type {name!r}: use {', '.join(EVENT_TYPE_NUMBERS)}")
    return EVENT_TYPE_NUMBERS[key]


def group_kind(name):
    """A group kind as given, checked; ValueError names the choices."""
    if name not in GROUP_KINDS:
        raise ValueError(f"unknown group kind {name!r}: use {', '.join(GROUP_KINDS)}")
    return name


def ip_family_name(number):
    return IP_FAMILIES.get(number) or f"unknown_{number}"


def connect_result_name(number):
    return CONNECT_RESULTS.get(number) or f"unknown_{number}"


def signal_name(number):
    """"SIGSEGV" for 11; None for 0 and for numbers without a name here."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return None


def signal_text(number):
    """"SIGSEGV" for 11, "signal 77" for a number without a name: for sentences."""
    return signal_name(number) or f"signal {number}"


def exit_text(code, sig=0, core=False):
    """How a process ended, in words: "exit code 1", "killed by SIGKILL (core dumped)"."""
    if sig:
        return f"killed by {signal_text(sig)}" + (" (core dumped)" if core else "")
    return f"exit code {code}"


def format_time(ns):
    """Nanoseconds since the epoch as UTC ISO 8601 with microseconds: 2025-11-27T01:02:03.123456Z."""
    return (_EPOCH + datetime.timedelta(microseconds=ns // 1000)).isoformat(timespec="microseconds") + "Z"


def format_addr(raw):
    """4 bytes as dotted IPv4, 16 as IPv6 text; other lengths (not from a collector) as hex."""
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if len(raw) == 16:
        return str(ipaddress.IPv6Address(raw))
    return raw.hex()


def dumps_line(event):
    """One event as one line of compact UTF-8 JSON, newline included."""
    return (json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
