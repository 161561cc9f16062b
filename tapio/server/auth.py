"""Who may do what: bearer tokens with a role and a scope, and mutual-TLS client names.

--auth-token-file holds one token a line (lines starting with # are comments):

    TOKEN collector [IDS]            StreamEvents as a collector whose id matches one of IDS
                                     (comma-separated globs: node-a-collector,edge-*); no IDS: any id
    TOKEN reader [namespaces=A,B]    the query side: Subscribe, ListEvents, ListGroups, GetGroup and
                                     HTTP /api/*; with namespaces, only the events and groups of
                                     pods in those Kubernetes namespaces
    TOKEN admin                      everything
    TOKEN                            everything, as before roles existed (a warning at start)

Tokens go in `authorization: Bearer TOKEN` (gRPC metadata, HTTP header). They are compared in
constant time and never logged: logs name a token by its line ("token 3"). SIGHUP reloads the
file, so tokens rotate without a restart; a file that cannot be read keeps the old tokens.

With --bind-collector-cert (mutual TLS with a certificate per node), a collector stream must also
claim an id that is its client certificate's common name or one of its subject alternative names.
"""
import dataclasses
import fnmatch
import hashlib
import hmac
import logging
import threading

import grpc

from tapio.flags import ConfigError

log = logging.getLogger("tapio.server")

COLLECTOR, READER, ADMIN = "collector", "reader", "admin"
ROLES = (COLLECTOR, READER, ADMIN)
STREAM, READ = "stream", "read"            # the two rights: send events, read them back
_RIGHTS = {COLLECTOR: {STREAM}, READER: {READ}, ADMIN: {STREAM, READ}}
MAX_COLLECTOR_ID = 256


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a call is, once authenticated: a role and its scope."""
    role: str
    label: str                       # what logs and errors call it; never the token
    key: str = ""                    # stable per token (a hash): per-token stream counts
    collectors: tuple = ()           # globs of the collector ids it may stream as; (): any
    namespaces: tuple = ()           # namespaces it may read; (): all
    unscoped: bool = False           # a plain token line: every right, with a warning

    def may(self, right):
        return right in _RIGHTS[self.role]

    def refusal(self, collector_id, cert_names=None):
        """Why this principal may not stream as `collector_id` (None: it may). `cert_names` are
        the client certificate's names when the id must be one of them."""
        if not self.may(STREAM):
            return f"{self.label} is a {self.role} token: it may not stream events"
        if not collector_id or len(collector_id) > MAX_COLLECTOR_ID:
            return f"collector id must be 1 to {MAX_COLLECTOR_ID} characters"
        if collector_id != collector_id.strip() or not collector_id.isprintable():
            # "node-1 " or "node-1\n" would be another id here and the same one wherever spaces
            # are trimmed or control characters replaced (NATS headers): a way into its window
            return "collector id must have no control characters and no leading or trailing spaces"
        if self.collectors and not any(fnmatch.fnmatchcase(collector_id, g) for g in self.collectors):
            return (f"{self.label} may not stream as collector {collector_id[:80]!r} "
                    f"(it may as {', '.join(self.collectors)})")
        if cert_names is not None and collector_id not in cert_names:
            names = ", ".join(sorted(cert_names)) or "none"
            return (f"collector {collector_id[:80]!r} is not a name of the client certificate "
                    f"({names})")
        return None


ANONYMOUS = Principal(ADMIN, "anonymous", key="anonymous")


def parse_line(line, number):
    """(token, Principal) of one line of the token file; ConfigError (without the token) when
    the line is not one of the forms above."""
    fields = line.split()
    token = fields[0]
    label = f"token {number}"
    key = hashlib.sha256(token.encode()).hexdigest()[:16]
    if len(fields) == 1:
        return token, Principal(ADMIN, label, key, unscoped=True)
    role, scope = fields[1], fields[2:]
    if role not in ROLES:
        raise ConfigError(f"line {number}: unknown role {role[:40]!r}: use collector, reader or admin "
                          "after the token")
    if len(scope) > 1:
        raise ConfigError(f"line {number}: one scope after the role, not {len(scope)} "
                          "(comma-separate several ids or namespaces)")
    scope = scope[0] if scope else ""
    if role == ADMIN:
        if scope:
            raise ConfigError(f"line {number}: an admin token takes no scope")
        return token, Principal(ADMIN, label, key)
    if role == COLLECTOR:
        if scope.startswith("namespaces="):
            raise ConfigError(f"line {number}: namespaces= scopes a reader token, not a collector one")
        globs = tuple(g for g in scope.split(",") if g)
        return token, Principal(COLLECTOR, label, key, collectors=() if "*" in globs else globs)
    if scope and not scope.startswith("namespaces="):
        raise ConfigError(f"line {number}: a reader's scope is namespaces=A,B, not {scope[:40]!r}")
    namespaces = tuple(n for n in scope[len("namespaces="):].split(",") if n)
    if scope and not namespaces:
        raise ConfigError(f"line {number}: namespaces= names no namespace")
    return token, Principal(READER, label, key, namespaces=namespaces)


def read_tokens(path):
    """[(token bytes, Principal)] of the token file."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    tokens = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        token, principal = parse_line(line, number)
        tokens.append((token.encode(), principal))
    if not tokens:
        raise ConfigError(f"{path} holds no token (one per line)")
    return tokens


def cert_names(context):
    """The common name and subject alternative names of the call's client certificate (a set of
    str), or None without one."""
    try:
        auth = context.auth_context() or {}
    except Exception:
        return None
    names = set()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth.get(key, ()):
            names.add(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
    return names or None


class Auth:
    """Authentication (a token, or none configured) and the role checks of every call.

    Without a token file every caller is ANONYMOUS (every right); --bind-collector-cert still
    ties collector ids to client certificates."""

    def __init__(self, path=None, bind_cert=False):
        self.path = path
        self.bind_cert = bind_cert
        self._tokens = read_tokens(path) if path else []
        self._lock = threading.Lock()
        self.refused = 0                 # calls without an accepted token
        self.denied = 0                  # calls whose token lacks the right, or the collector id
        self._warn_unscoped(self._tokens)

    @property
    def enabled(self):
        """True when tokens are required."""
        return self.path is not None

    @staticmethod
    def _warn_unscoped(tokens):
        unscoped = [p.label for _, p in tokens if p.unscoped]
        if unscoped:
            log.warning("%s %s no role: %s every right (stream as any collector, read, admin); "
                        "write 'TOKEN collector|reader|admin' to limit %s",
                        ", ".join(unscoped), "has" if len(unscoped) == 1 else "have",
                        "it has" if len(unscoped) == 1 else "they have",
                        "it" if len(unscoped) == 1 else "them")

    def reload(self):
        """Read the token file again; a file that cannot be read keeps the old tokens."""
        if self.path is None:
            return False
        try:
            tokens = read_tokens(self.path)
        except (OSError, ConfigError) as e:
            log.warning("Keeping the current tokens: cannot reload %s: %s", self.path, e)
            return False
        with self._lock:
            self._tokens = tokens
        log.info("Reloaded %d token(s) from %s", len(tokens), self.path)
        self._warn_unscoped(tokens)
        return True

    def principal(self, header):
        """The Principal of an `authorization` header value, or None when it is not accepted."""
        if self.path is None:
            return ANONYMOUS
        if not header or not header.startswith("Bearer "):
            return None
        offered = header[len("Bearer "):].strip().encode()
        with self._lock:
            tokens = list(self._tokens)
        # compare against every token, so the time taken does not tell which one nearly matched
        found = None
        for token, principal in tokens:
            if hmac.compare_digest(offered, token) and found is None:
                found = principal
        return found

    def _count(self, what):
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def count_refused(self):
        """A call (HTTP) without an accepted token."""
        self._count("refused")

    def count_denied(self):
        """A call (HTTP) whose token lacks the right."""
        self._count("denied")

    # -- gRPC ---------------------------------------------------------------------------------
    def authenticate(self, context, what="call"):
        """The call's Principal; aborts the call with UNAUTHENTICATED without an accepted token."""
        header = dict(context.invocation_metadata()).get("authorization")
        principal = self.principal(header)
        if principal is not None:
            return principal
        self._count("refused")
        why = "no bearer token" if not header else "a bearer token that is not accepted"
        log.warning("Refused a %s from %s: %s", what, context.peer(), why)
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      "missing or invalid bearer token: pass --auth-token-file to the client")

    def require(self, context, right):
        """The call's Principal when it has `right` (STREAM or READ); aborts the call with
        UNAUTHENTICATED or PERMISSION_DENIED otherwise."""
        principal = self.authenticate(context, "stream" if right == STREAM else "query")
        if principal.may(right):
            return principal
        self._count("denied")
        what = "stream events" if right == STREAM else "read events and groups"
        log.warning("Denied %s from %s: %s is a %s token", what, context.peer(), principal.label,
                    principal.role)
        context.abort(grpc.StatusCode.PERMISSION_DENIED,
                      f"a {principal.role} token may not {what}: "
                      f"use a {'collector' if right == STREAM else 'reader'} or admin token")

    def claim_refusal(self, principal, context, collector_id):
        """Why `principal`, on this call, may not stream as `collector_id`; None when it may.
        Counted as denied when refused."""
        names = None
        if self.bind_cert:
            names = cert_names(context) or set()
        why = principal.refusal(collector_id, names)
        if why is not None:
            self._count("denied")
            log.warning("Denied a stream from %s: %s", context.peer(), why)
        return why

    def __call__(self, context):
        """StreamEvents' check: the Principal, when it may stream (aborts the call otherwise)."""
        return self.require(context, STREAM)


def TokenAuth(path, bind_cert=False):
    """Auth with a token file (tokens required)."""
    return Auth(path, bind_cert=bind_cert)
