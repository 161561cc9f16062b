"""hypercorn's trio worker, started inside the program's own nursery:

    http = HttpServer(app, "127.0.0.1", 8080, "tapio-server")
    http.bind()                              # before any nursery: a taken port is a ConfigError
    url = await nursery.start(http.run)      # serving once this returns
    ...
    http.stop()                              # graceful: open requests get a moment to finish

The listening socket is bound by bind() and handed to hypercorn by file descriptor, so a port
that cannot be bound is reported as one line (exit code 2) before anything else starts, and not
as an exception group out of a nursery.
"""
import errno
import logging
import socket

import hypercorn.config
import hypercorn.trio
import trio

from tapio.flags import ConfigError


def bind_address(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HttpServer:
    def __init__(self, app, host, port, name, graceful_timeout=1.0):
        self.app = app
        self.host = host
        self.port = port
        self.name = name
        self.url = None
        self._sock = None
        self._stop = trio.Event()
        self.config = hypercorn.config.Config()
        self.config.accesslog = None                       # one log line per request: no
        # hypercorn's own start-up line is replaced by ours; its errors still go to our log
        quiet = logging.getLogger("tapio.http.hypercorn")
        quiet.setLevel(logging.WARNING)
        self.config.errorlog = quiet
        self.config.graceful_timeout = graceful_timeout
        self.config.keep_alive_timeout = 30.0
        self.config.include_server_header = False

    def bind(self):
        """Bind the listening socket now; ConfigError (with what to do) when it cannot be."""
        if self._sock is not None:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise ConfigError(self._bind_error(e)) from None
        self.port = sock.getsockname()[1]
        self._sock = sock

    def _bind_error(self, e):
        where = bind_address(self.host, self.port)
        if e.errno == errno.EADDRINUSE:
            return f"cannot serve HTTP on {where}: the port is in use: choose another --http-port (0: no HTTP)"
        if e.errno == errno.EACCES:
            return f"cannot serve HTTP on {where}: not allowed to bind this port: choose one above 1023"
        return f"cannot serve HTTP on {where}: {e.strerror or e}: check --http-host and --http-port"

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        """Serve until stop() (or cancellation); task_status gets the URL once listening."""
        self.bind()
        sock, self._sock = self._sock, None
        self.config.bind = [f"fd://{sock.detach()}"]       # hypercorn owns (and closes) it now
        self.url = f"http://{bind_address(self.host, self.port)}"
        await hypercorn.trio.serve(self.app, self.config, shutdown_trigger=self._stop.wait,
                                   task_status=_Started(self.url, task_status))

    def stop(self):
        self._stop.set()


class _Started:
    """hypercorn reports its bound addresses to task_status; the caller gets our URL."""

    def __init__(self, url, task_status):
        self.url = url
        self.task_status = task_status

    def started(self, binds=None):
        self.task_status.started(self.url)
