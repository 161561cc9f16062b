"""Flags whose values must stay in a range that keeps them meaningful downstream: one line naming
the flag and exit code 2, before anything starts."""
import os
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize("program, flag, value, words", [
    # the kernel wakes the collector at most once per read interval: a longer one overflows the
    # ring buffer while events flow
    ("tapio-collector", "--read-interval", "2s", "is more than 1s"),
    ("tapio-collector", "--read-interval", "99999999999h", "is more than 1s"),
    ("tapio-collector", "--read-interval", "-5ms", "is not a duration"),
    # a replica's name is part of NATS consumer and key names: two names must stay two
    ("tapio-server", "--replica-id", "a.b", "is not 1 to 64 of"),
    ("tapio-server", "--replica-id", "x" * 65, "is not 1 to 64 of"),
    ("tapio-server", "--replica-id", "r1\n", "is not 1 to 64 of"),
])
def test_a_value_out_of_range_is_one_line_and_exit_2(program, flag, value, words):
    result = subprocess.run([os.path.join(BIN, program), f"{flag}={value}"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert flag in result.stderr and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_values_in_range_are_taken():
    for program, flag, value in (("tapio-collector", "--read-interval", "1s"),
                                 ("tapio-collector", "--read-interval", "0"),
                                 ("tapio-server", "--replica-id", "replica_1-a")):
        result = subprocess.run([os.path.join(BIN, program), f"{flag}={value}", "--help"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, (program, flag, value, result.stderr)
