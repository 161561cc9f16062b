"""The NATS connection, in a thread of its own that runs an asyncio loop.

The server runs on trio (HTTP, signals) and on plain threads (grpcio handlers, the ingest engine);
nats-py is asyncio. Rather than bridge two event loops inside one thread, the client gets its own
thread and loop, and everyone else hands it coroutines with `submit` (a concurrent.futures.Future
back) or `call` (waits, bounded by a timeout). A caller therefore never blocks the loop, the loop
never blocks a caller for longer than its timeout, and a NATS outage shows up as a timeout at the
caller, which decides what to do (the ingest relay pauses collectors; the owner retries).
"""
import asyncio
import concurrent.futures
import logging
import threading
import time

log = logging.getLogger("tapio.server.bus")


class BusError(Exception):
    """The bus did not answer, or refused."""


class BusLoop:
    def __init__(self, servers, name="tapio-server", connect_timeout=5.0):
        import nats
        self._nats = nats
        self.servers = list(servers)
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bus", daemon=True)
        self._thread.start()
        self._started.wait(10)
        self._last_error_log = 0.0
        self.disconnects = 0
        self.nc = None
        try:
            self.nc = self.call(self._connect(name, connect_timeout), connect_timeout + 2)
        except BaseException:
            self.close()
            raise
        self.js = self.nc.jetstream(timeout=5.0)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    async def _connect(self, name, timeout):
        async def disconnected():
            self.disconnects += 1
            log.warning("Bus: disconnected from NATS, reconnecting")

        async def reconnected():
            log.info("Bus: reconnected to %s", self.nc.connected_url.netloc if self.nc else "NATS")

        async def error(e):
            # nats-py reports every failed reconnect: one line per 5 s is enough to see it
            now = time.monotonic()
            if now - self._last_error_log > 5.0:
                self._last_error_log = now
                log.warning("Bus: %s", e or type(e).__name__)

        # the first connection must succeed within the timeout (an unreachable bus at start-up is
        # an error); after that the client reconnects for ever, walking the server list
        return await asyncio.wait_for(self._nats.connect(
            servers=self.servers, name=name, connect_timeout=min(2.0, timeout),
            allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.25,
            ping_interval=10, max_outstanding_pings=3, disconnected_cb=disconnected,
            reconnected_cb=reconnected, error_cb=error), timeout)

    def submit(self, coro):
        """Run `coro` on the bus loop; a concurrent.futures.Future of its result (BusError once
        the loop is closed)."""
        if self.loop.is_closed() or not self.loop.is_running():
            coro.close()
            raise BusError("the bus connection is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro, timeout):
        """Run `coro` on the bus loop and wait for it, at most `timeout` seconds (BusError)."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except (concurrent.futures.TimeoutError, asyncio.TimeoutError) as e:
            future.cancel()
            raise BusError(f"no answer from NATS within {timeout:g}s") from e
        except BusError:
            raise
        except Exception as e:
            raise BusError(f"{type(e).__name__}: {e}") from e

    def close(self, timeout=5.0):
        """Close the connection (what was published is flushed), end the loop's tasks, the loop
        and its thread."""
        if self.loop.is_closed():
            return
        if self.nc is not None and not self.nc.is_closed:
            try:
                self.submit(self.nc.close()).result(timeout)
            except Exception:
                pass
        try:
            self.submit(self._cancel_tasks()).result(timeout)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()

    async def _cancel_tasks(self):
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
