"""The filter language of the query side: which events and groups a reader wants.

One module for everyone who filters: the store's subscriptions, the gRPC Subscribe call (from a
tapio.v1.Filter, see `Filter.from_request`) and the `tapio-server events|groups` follower (the same
filter applied to what the list calls return). Items are the dicts of tapio.vocab's JSON shape:
events as `DecodedBatch.event_dict` builds them (with "collector_id"), groups as the store keeps
them.

Work per request is bounded, since filters come from anyone who may read: regexes are RE2
(google-re2: matching is linear in the text, nothing backtracks; backreferences and lookaround are
refused), searched, at most MAX_PATTERN characters each; a request holds at most MAX_FILTERS allow
and MAX_FILTERS deny entries, each list field at most MAX_VALUES values. Anything past a limit, or
a bad regex, is a ValueError that says which.
"""
import dataclasses

import re2

from tapio import vocab

MAX_FILTERS = 16            # allow entries, and deny entries, of one request
MAX_VALUES = 64             # values of one list field (pids, pods, namespaces, ...)
MAX_PATTERN = 256           # characters of one regex
MAX_VALUE = 256             # characters of one plain value (a container, a namespace, ...)
# RE2 memory for one compiled regex: a pattern that needs more is refused, not slowed down
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = 1 << 20


def _compile(pattern, what):
    if pattern in (None, ""):
        return None
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"{what} regex is {len(pattern)} characters: at most {MAX_PATTERN}")
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as e:
        raise ValueError(f"{what} {pattern!r} is not a regular expression RE2 accepts "
                         f"(no backreferences, no lookaround): {e}") from None


def _values(value, what, limit=MAX_VALUES):
    values = _as_tuple(value)
    if len(values) > limit:
        raise ValueError(f"{what}: {len(values)} values, at most {limit}")
    for v in values:
        if isinstance(v, str) and len(v) > MAX_VALUE:
            raise ValueError(f"{what}: a value of {len(v)} characters, at most {MAX_VALUE}")
    return values


def _as_tuple(value):
    if value in (None, "", ()):
        return ()
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(value)
    return (value,)


@dataclasses.dataclass(frozen=True)
class Match:
    """One filter, as in Tetragon's allow/deny lists: every field that is set must match; a list
    field matches when any of its values does. Fields that do not apply to an item make it fail
    (`types` selects events only, `kinds` groups only)."""
    types: tuple = ()          # event type names: exec, exit, tcp_connect, ...
    pids: tuple = ()
    comm: object = None        # compiled regex (search)
    binary: object = None      # compiled regex on the executable path
    containers: tuple = ()     # container id prefixes, or container names
    pods: tuple = ()           # (text, compiled regex): a pod UID, or a regex searched in pod names
    namespaces: tuple = ()
    kinds: tuple = ()          # group kinds
    collectors: tuple = ()

    @classmethod
    def make(cls, types=(), pids=(), comm=None, binary=None, containers=(), pods=(),
             namespaces=(), kinds=(), collectors=()):
        types = tuple(vocab.event_type_name(vocab.event_type_number(t))
                      for t in _values(types, "event types"))
        kinds = tuple(vocab.group_kind(str(k)) for k in _values(kinds, "group kinds"))
        # an empty value names no pod (as an empty container does): dropped, not compiled to None
        pods = tuple((str(p), _compile(str(p), "pod")) for p in _values(pods, "pods", MAX_FILTERS) if p)
        return cls(types=types, pids=tuple(int(p) for p in _values(pids, "pids")),
                   comm=_compile(comm, "comm"), binary=_compile(binary, "binary"),
                   containers=tuple(str(c) for c in _values(containers, "containers") if c),
                   pods=pods, namespaces=tuple(str(n) for n in _values(namespaces, "namespaces")),
                   kinds=kinds, collectors=tuple(str(c) for c in _values(collectors, "collectors")))

    @classmethod
    def from_proto(cls, f):
        """A tapio.v1.Filter message as a Match."""
        return cls.make(types=[vocab.event_type_name(t) for t in f.event_types],
                        pids=list(f.pids), comm=f.comm_regex or None, binary=f.binary_regex or None,
                        containers=list(f.containers), pods=list(f.pods),
                        namespaces=list(f.namespaces), kinds=list(f.group_kinds),
                        collectors=list(f.collector_ids))

    def by_type_only(self):
        """True when nothing but `types` is set: an event's type decides, its other fields do not."""
        return not (self.pids or self.comm or self.binary or self.containers or self.pods
                    or self.namespaces or self.kinds or self.collectors)

    def _subject(self, pids, comm, binary, context, collector):
        if self.pids and not any(p in self.pids for p in pids):
            return False
        if self.comm is not None and not self.comm.search(comm or ""):
            return False
        if self.binary is not None and not self.binary.search(binary or ""):
            return False
        if self.containers:
            cid, name = context.get("container_id", ""), context.get("container_name", "")
            if not any((cid and cid.startswith(c)) or c == name for c in self.containers):
                return False
        if self.pods:
            name, uid = context.get("pod_name", ""), context.get("pod_uid", "")
            if not any(p == uid or (name and rx.search(name)) for p, rx in self.pods):
                return False
        if self.namespaces and context.get("namespace", "") not in self.namespaces:
            return False
        if self.collectors and collector not in self.collectors:
            return False
        return True

    def matches_event(self, event):
        if self.kinds:
            return False
        if self.types and event.get("type") not in self.types:
            return False
        process = event.get("process") or {}
        binary = process.get("executable") or (event.get("exec") or {}).get("filename")
        return self._subject((event.get("pid"),), event.get("comm"), binary,
                             event.get("context") or {}, event.get("collector_id"))

    def matches_group(self, group):
        if self.types:
            return False
        if self.kinds and group.get("kind") not in self.kinds:
            return False
        a = group.get("attributes") or {}
        pids = a.get("pids") or ([a["pid"]] if a.get("pid") is not None else [])
        return self._subject(pids, a.get("comm"), a.get("executable"), a, group.get("collector_id"))


@dataclasses.dataclass(frozen=True)
class Filter:
    """Allow and deny lists of Matches: an item passes when it matches some allow entry (or the
    allow list is empty) and no deny entry."""
    allow: tuple = ()
    deny: tuple = ()
    # namespaces a scoped reader may see (empty: all): an item outside them never passes
    scope: tuple = ()

    @classmethod
    def of(cls, spec):
        """A Filter from None (everything), a Filter, a Match, or a dict of Match.make keywords
        (one allow entry), or {"allow": [dicts], "deny": [dicts]}."""
        if spec is None:
            return cls()
        if isinstance(spec, Filter):
            return spec
        if isinstance(spec, Match):
            return cls(allow=(spec,))
        if isinstance(spec, dict):
            if "allow" in spec or "deny" in spec:
                for name in ("allow", "deny"):
                    if len(spec.get(name) or ()) > MAX_FILTERS:
                        raise ValueError(f"{name}: more than {MAX_FILTERS} filters")
                return cls(allow=tuple(Match.make(**m) for m in spec.get("allow") or ()),
                           deny=tuple(Match.make(**m) for m in spec.get("deny") or ()))
            return cls(allow=(Match.make(**spec),))
        raise TypeError(f"a filter is a Filter, a Match or a dict, not {type(spec).__name__}")

    @classmethod
    def from_request(cls, request):
        """The allow_list and deny_list of a tapio.v1.SubscribeRequest; ValueError names a bad one."""
        for name in ("allow_list", "deny_list"):
            n = len(getattr(request, name))
            if n > MAX_FILTERS:
                raise ValueError(f"{name} has {n} filters: at most {MAX_FILTERS}")
        return cls(allow=tuple(Match.from_proto(f) for f in request.allow_list),
                   deny=tuple(Match.from_proto(f) for f in request.deny_list))

    def scoped(self, namespaces):
        """This filter, limited to items of pods in `namespaces` (nothing when empty)."""
        if not namespaces:
            return self
        return dataclasses.replace(self, scope=tuple(namespaces))

    def matches_event(self, event):
        if self.scope and (event.get("context") or {}).get("namespace") not in self.scope:
            return False
        if self.allow and not any(m.matches_event(event) for m in self.allow):
            return False
        return not any(m.matches_event(event) for m in self.deny)

    def matches_group(self, group):
        if self.scope and (group.get("attributes") or {}).get("namespace") not in self.scope:
            return False
        if self.allow and not any(m.matches_group(group) for m in self.allow):
            return False
        return not any(m.matches_group(group) for m in self.deny)

    def event_types(self):
        """The event type numbers this filter can let through, or None for any."""
        if not self.allow or any(not m.types and not m.kinds for m in self.allow):
            return None
        # an entry with group kinds matches no event
        return {vocab.EVENT_TYPE_NUMBERS[t] for m in self.allow if not m.kinds for t in m.types}

    def events_by_type_only(self):
        """True when an event's type alone decides (event_types() says which): the store then
        passes events on without building their dicts."""
        return (not self.deny and not self.scope
                and all(m.kinds or m.by_type_only() for m in self.allow))
