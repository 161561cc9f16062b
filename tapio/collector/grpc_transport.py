"""The collector's StreamEvents call, driven from trio.

grpcio's API blocks, so each call lives in worker threads: grpcio's own thread consumes the
request iterator (fed from a thread-safe queue), and one trio worker thread reads responses into
a bounded trio memory channel. trio code only ever sees `send()` and `async receive()`.
"""
import queue
import threading

import grpc
import trio

METHOD = "/tapio.v1.TapioService/StreamEvents"
_END = object()


class ConnectError(Exception):
    """The server could not be reached (the message says why)."""


class StreamEnded(Exception):
    """The stream ended: the server went away, refused us, or we closed it."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


class GrpcTransport:
    def __init__(self, channels, connect_timeout=5.0):
        self.channels = channels
        self.connect_timeout = connect_timeout

    async def open(self, server, hello):
        """Connect to `server` and start a stream whose first message is `hello`."""
        channel = self.channels.open(server)
        ready = grpc.channel_ready_future(channel)
        try:
            await trio.to_thread.run_sync(ready.result, self.connect_timeout, abandon_on_cancel=True)
        except grpc.FutureTimeoutError:
            channel.close()
            raise ConnectError(f"no connection to {server} within {self.connect_timeout:g}s") from None
        except BaseException:
            ready.cancel()
            channel.close()
            raise
        stream = GrpcStream(channel, self.channels.metadata)
        stream.send(hello)
        return stream

    async def probe(self, server):
        """Whether `server` accepts connections now (used to return to the first server)."""
        channel = self.channels.open(server)
        try:
            await trio.to_thread.run_sync(grpc.channel_ready_future(channel).result,
                                          self.connect_timeout, abandon_on_cancel=True)
            return True
        except grpc.FutureTimeoutError:
            return False
        finally:
            channel.close()


class GrpcStream:
    RESPONSES_HELD = 256

    def __init__(self, channel, metadata):
        self._channel = channel
        self._requests = queue.SimpleQueue()
        self._call = channel.stream_stream(METHOD)(self._request_iterator(), metadata=metadata or None)
        self._responses_in, self._responses_out = trio.open_memory_channel(self.RESPONSES_HELD)
        # room in that channel, for the reader thread: it hands each response over without
        # waiting for trio to take it (an ack per batch; a round trip each cost a task and two
        # thread switches), and stops reading when RESPONSES_HELD are waiting
        self._room = threading.Semaphore(self.RESPONSES_HELD)
        self._closed = False

    def _request_iterator(self):
        while True:
            item = self._requests.get()
            if item is _END:
                return
            yield item

    def send(self, data):
        """Queue one message (never blocks: the delivery buffer bounds what can be queued)."""
        self._requests.put(data)

    async def receive(self):
        """The next response's bytes; raises StreamEnded when the stream is over. Needs
        read_responses() running in a task of the caller's nursery."""
        try:
            item = await self._responses_out.receive()
        except trio.EndOfChannel:
            raise StreamEnded("stream closed") from None
        if isinstance(item, StreamEnded):
            raise item
        self._room.release()
        return item

    async def read_responses(self):
        """Move responses from grpcio's blocking iterator into receive()'s channel."""
        token = trio.lowlevel.current_trio_token()
        channel = self._responses_in

        def hand_over(raw):         # in trio's thread; the semaphore made room for it
            try:
                channel.send_nowait(raw)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass                # the stream is being closed: nobody reads it any more

        def read():
            try:
                for raw in self._call:
                    while not self._room.acquire(timeout=0.5):
                        if self._closed:
                            return None
                    token.run_sync_soon(hand_over, raw)
                return StreamEnded("the server ended the stream")
            except grpc.RpcError as e:
                return StreamEnded(f"rpc error: code = {e.code().name.title().replace('_', '')} "
                                   f"desc = {e.details()}", e.code())
            except trio.RunFinishedError:
                return None

        ended = await trio.to_thread.run_sync(read, abandon_on_cancel=True)
        if ended is not None:
            with trio.move_on_after(1):
                await self._responses_in.send(ended)
        await self._responses_in.aclose()

    def close(self):
        """End the call (cancels it: unacked batches stay in the buffer for the next stream)."""
        self._closed = True
        self._requests.put(_END)
        self._call.cancel()
        self._channel.close()
