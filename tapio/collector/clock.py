"""Kernel timestamps are CLOCK_BOOTTIME nanoseconds; the wire carries wall-clock nanoseconds."""
import time


def boot_to_wall_ns():
    """wall - boottime, sampled now: add it to a kernel timestamp to get Unix-epoch nanoseconds.
    Sampled again for every batch, so NTP adjustments are followed."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
