"""The JSON shape of an event: `tapio-collector --output` and `tapio-server --events-out`.

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

This module holds the names and the text forms of values. Names come from the wire contract's
enums (EVENT_TYPE_TCP_CONNECT -> "tcp_connect"), so they cannot drift from it; a value a newer
peer sends that this contract does not know is shown as "unknown_<n>".
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


def event_type_name(number):
    return EVENT_TYPES.get(number) or f"unknown_{number}"


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
