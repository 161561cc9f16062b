"""Bearer-token authentication for StreamEvents (`authorization: Bearer <token>` metadata).

The accepted tokens are the non-empty lines of --auth-token-file (lines starting with # are
comments); SIGHUP reloads them, so tokens rotate without a restart. Tokens are compared in
constant time and never logged.
"""
import hmac
import logging
import threading

import grpc

from tapio.flags import ConfigError

log = logging.getLogger("tapio.server")


def read_tokens(path):
    with open(path, encoding="utf-8") as f:
        tokens = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise ConfigError(f"{path} holds no token (one per line)")
    return tokens


class TokenAuth:
    def __init__(self, path):
        self.path = path
        self._tokens = read_tokens(path)
        self._lock = threading.Lock()
        self.refused = 0

    def reload(self):
        """Read the token file again; a file that cannot be read keeps the old tokens."""
        try:
            tokens = read_tokens(self.path)
        except (OSError, ConfigError) as e:
            log.warning("Keeping the current tokens: cannot reload %s: %s", self.path, e)
            return False
        with self._lock:
            self._tokens = tokens
        log.info("Reloaded %d token(s) from %s", len(tokens), self.path)
        return True

    def allowed(self, header):
        if not header or not header.startswith("Bearer "):
            return False
        offered = header[len("Bearer "):].strip().encode()
        with self._lock:
            tokens = list(self._tokens)
        # compare against every token, so the time taken does not tell which one nearly matched
        ok = False
        for token in tokens:
            ok |= hmac.compare_digest(offered, token.encode())
        return ok

    def __call__(self, context):
        """Abort the call with UNAUTHENTICATED unless it carries an accepted token."""
        header = dict(context.invocation_metadata()).get("authorization")
        if self.allowed(header):
            return
        with self._lock:
            self.refused += 1
        why = "no bearer token" if not header else "a bearer token that is not accepted"
        log.warning("Refused a stream from %s: %s", context.peer(), why)
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      "missing or invalid bearer token: pass --auth-token-file to the collector")
