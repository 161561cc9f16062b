"""A small ASGI application: GET routes by path pattern, JSON responses, packaged static files.

Both programs serve a handful of read-only endpoints, so this is all the framework they need:

    router = Router("tapio-server")

    @router.get("/api/v1/groups/{group_id}")
    def group(request):
        return {"id": request.params["group_id"]}     # a dict or list becomes JSON

A handler is a plain or an async function of a Request; it returns a Response, or something
JSON can encode. `router.get(pattern, guard=check)` runs `check(request)` first: it raises an
HttpError (401, 403) to refuse, or sets `request.principal` (who is asking) and returns.
`raise HttpError(400, "limit must be ...")` answers with that status and
`{"error": "..."}`; any other exception is logged and answered with a 500 that says where to
look, so one bad request never takes the server down.
"""
import importlib.resources
import inspect
import json
import logging
import math
import re
import urllib.parse

log = logging.getLogger("tapio.http")

MAX_QUERY_FIELDS = 64

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}


class HttpError(Exception):
    """Answer the request with `status` and {"error": message, ...extra} (and `headers`)."""

    def __init__(self, status, message, headers=None, **extra):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra


class Request:
    __slots__ = ("method", "path", "query", "params", "headers", "principal")

    def __init__(self, method, path, query, params, headers):
        self.method = method
        self.path = path
        self.query = query              # {name: [values]}, blank values kept
        self.params = params            # {name: text} from the route's {placeholders}
        self.headers = headers          # {lower-case name: value}
        self.principal = None           # who asks, as the route's guard found

    def arg(self, name):
        """The value of query parameter `name` (None when absent); given twice is an error."""
        values = self.query.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise HttpError(400, f"parameter {name!r} is given {len(values)} times: give it once")
        return values[0]


class Response:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, body=b"", status=200, content_type="application/json", headers=None):
        self.status = status
        self.body = body if isinstance(body, bytes) else body.encode()
        self.content_type = content_type
        self.headers = dict(headers or {})


def _json_default(value):
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _finite(value):
    """JSON has no NaN or infinity: such floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_body(data):
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=_json_default,
                          allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(data), separators=(",", ":"), ensure_ascii=False,
                          default=_json_default)
    return (text + "\n").encode()


def json_response(data, status=200, headers=None):
    return Response(json_body(data), status, "application/json", headers)


def error_response(status, message, headers=None, **extra):
    return json_response({"error": message, "status": status, **extra}, status, headers)


def _compile(pattern):
    """"/api/v1/groups/{group_id}" -> a regex with a named group per placeholder."""
    out, pos = [], 0
    for m in re.finditer(r"\{([a-z_][a-z0-9_]*)\}", pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>[^/]+)")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + r"\Z")


class Router:
    """An ASGI application: `await router(scope, receive, send)`."""

    def __init__(self, name):
        self.name = name
        self._routes = []           # (regex, pattern, handler, guard)

    def get(self, pattern, guard=None):
        def register(handler):
            self._routes.append((_compile(pattern), pattern, handler, guard))
            return handler
        return register

    def static(self, prefix, package, folder, index=None, index_at=None):
        """Serve the files of a package's data folder at `prefix`/NAME (the names there at start
        only: nothing else on the file system is reachable), and the file `index` at `index_at`."""
        root = importlib.resources.files(package).joinpath(folder)
        try:
            names = {entry.name for entry in root.iterdir() if entry.is_file()}
        except OSError as e:        # an install without its package data: the rest still serves
            log.warning("%s: no files to serve at %s (%s: %s): the package was installed without "
                        "them", self.name, prefix, folder, e.strerror or e)
            names = set()

        def serve(request):
            name = request.params.get("name", index)
            if name not in names:
                raise HttpError(404, f"no file {request.path!r}")
            suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
            return Response(root.joinpath(name).read_bytes(), 200,
                            _CONTENT_TYPES.get(suffix, "application/octet-stream"),
                            {"cache-control": "no-cache", **_PAGE_HEADERS})

        if index is not None:
            self.get(index_at or prefix)(serve)
        self.get(prefix.rstrip("/") + "/{name}")(serve)

    def patterns(self):
        return [pattern for _, pattern, _, _ in self._routes]

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "http":
            response = await self._respond(scope)
            await _send(send, response, head=scope["method"] == "HEAD")
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _respond(self, scope):
        path = scope["path"]
        method = scope["method"]
        for regex, _, handler, guard in self._routes:
            m = regex.match(path)
            if m is None:
                continue
            if method not in ("GET", "HEAD"):
                return Response(json_body({"error": f"{method} is not allowed here: use GET",
                                           "status": 405}), 405, headers={"allow": "GET, HEAD"})
            try:
                query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("utf-8", "replace"),
                                              keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
            except ValueError:
                return error_response(400, f"too many query parameters (at most {MAX_QUERY_FIELDS})")
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
            request = Request(method, path, query, m.groupdict(), headers)
            try:
                if guard is not None:
                    guard(request)
                result = handler(request)
                if inspect.isawaitable(result):
                    result = await result
            except HttpError as e:
                return error_response(e.status, e.message, e.headers, **e.extra)
            except Exception:
                log.exception("%s: %s %s failed", self.name, method, path)
                return error_response(500, f"internal error while serving {path}: see the {self.name} log")
            return result if isinstance(result, Response) else json_response(result)
        return error_response(404, f"no endpoint {path!r}", endpoints=self.patterns())


# the dashboard loads only its own files: no inline script, nothing from elsewhere
_PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}


async def _send(send, response, head=False):
    headers = [(b"content-type", response.content_type.encode()),
               (b"content-length", str(len(response.body)).encode()),
               (b"x-content-type-options", b"nosniff")]
    if "cache-control" not in response.headers:
        headers.append((b"cache-control", b"no-store"))
    headers.extend((k.encode("latin-1"), str(v).encode("latin-1")) for k, v in response.headers.items())
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else response.body})
