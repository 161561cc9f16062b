"""What the benchmarks share: timing (best of several runs), a text table, the JSON report."""
import json
import os
import platform
import sys
import time

# `python benchmarks/<name>.py` from a checkout: the package is the checkout's, installed or not
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)


def best_rate(fn, items, seconds, min_runs=3):
    """Run fn() (which handles `items` items) until `seconds` have passed and at least min_runs
    runs are done; return (best items/s, runs). A run takes as long as fn() returns, when it
    returns its own timing (leaving out its preparation), else as long as the call. The best run
    is the one least disturbed by everything else the machine does."""
    best = 0.0
    runs = 0
    deadline = time.perf_counter() + seconds
    while runs < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        elapsed = fn()
        if elapsed is None:
            elapsed = time.perf_counter() - start
        runs += 1
        if elapsed > 0:
            best = max(best, items / elapsed)
    return best, runs


def print_table(headers, rows):
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        # text left, numbers right
        print("  ".join(c.rjust(w) if n and c[:1].isdigit() else c.ljust(w)
                        for c, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def machine():
    return {"python": sys.version.split()[0], "implementation": platform.python_implementation(),
            "platform": platform.platform(), "cpu_count": os.cpu_count()}


def write_json(path, report):
    if path == "-":
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


def wait4(proc, timeout):
    """Wait for a child; returns its rusage (CPU seconds, peak RSS in KiB)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime, usage.ru_maxrss
        time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"benchmark: {proc.args[0]} did not finish within {timeout}s")
