"""The collector process: one trio.run owns the probes, the pump, the sink and signal handling."""
import logging
import signal
import sys

import trio

from tapio._fast.codec import BatchEncoder
from tapio.collector.clock import boot_to_wall_ns
from tapio.collector.ebpf_source import EbpfSource
from tapio.collector.output import JsonLinesSink
from tapio.collector.pump import Pump

log = logging.getLogger("tapio.collector")


def run(args):
    """Run until SIGINT/SIGTERM; returns the exit code."""
    return trio.run(_main, args)


async def _main(args):
    source = await EbpfSource.start(args.events, args.ring_buffer_size)
    sink = JsonLinesSink(args.output)
    encoder = BatchEncoder(args.collector_id, args.node_name, boot_to_wall_ns())
    pump = Pump(source, sink, encoder, args.batch_size, args.flush_interval)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, pump, nursery.cancel_scope)
            await pump.run()
            nursery.cancel_scope.cancel()
    finally:
        source.close()
        sink.close()
    stats = pump.stats
    print(f"tapio-collector: {stats.events} events seen, {stats.kernel_drops} dropped in the kernel",
          file=sys.stderr)
    return 0


async def _stop_on_signals(pump, scope):
    """First SIGINT/SIGTERM: stop reading the kernel, flush, exit. A second SIGINT: exit now."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if pump.stopping:
                log.warning("second %s: exiting without flushing", signal.Signals(signum).name)
                scope.cancel()
                return
            log.info("%s: detaching and flushing", signal.Signals(signum).name)
            pump.stop()
