"""Delivery with faults injected into real processes: a server killed with -9 and restarted, a
failover, a collector killed with -9 over a spool (then damaged), a slow server.

The collector runs the synthetic source (`--source synthetic`): event n is `ebpf-<n>`,
so the test can count exactly which events arrived, and how often. `--correlation raw` keeps
every event (the semantic path would filter and collapse by design)."""
import collections
import os
import re
import signal
import subprocess

import pytest

from tapio.collector.spool import HEADER
from tests.helpers import BIN, ManagedProcess, ServerProcess, free_port, wait_until


def collector(tmp_path, servers, *flags, name="collector"):
    argv = [os.path.join(BIN, "tapio-collector"), "--source", "synthetic", "--server", servers,
            "--correlation", "raw", "--flush-interval", "20ms", "--backoff-initial", "100ms",
            "--backoff-max", "1s", "--connect-timeout", "1s", "--metrics-interval", "100ms",
            *flags]
    return ManagedProcess(argv, str(tmp_path / f"{name}.log"))


def ids_by_count(events, collector_id=None):
    counts = collections.Counter(e["id"] for e in events
                                 if collector_id is None or e.get("collector") == collector_id)
    return counts


def received(server):
    return len(server.events())


def test_server_killed_and_restarted_loses_and_duplicates_nothing(tmp_path):
    port = free_port()
    server = ServerProcess(tmp_path, port=port).wait_listening()
    total = 20_000
    col = collector(tmp_path, server.address, "--rate", "4000", "--count", str(total))
    try:
        wait_until(lambda: received(server) >= 3000, 20, what="events before the crash")
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        server.stop()
        outage_start = received(server)
        col.wait_log("Failed to connect", timeout=20)        # the outage is seen...
        server = ServerProcess(tmp_path, port=port).wait_listening()   # ...and over, same port
        assert col.proc.wait(60) == 0, col.log()
    finally:
        col.stop()
        server.stop()
    counts = ids_by_count(server.events())
    assert len(counts) == total, f"{total - len(counts)} events lost"
    duplicates = {k: v for k, v in counts.items() if v > 1}
    assert not duplicates, f"{len(duplicates)} events arrived twice, e.g. {list(duplicates)[:5]}"
    assert outage_start < total
    assert f"{total} delivered" in col.log().strip().splitlines()[-1]


def test_failover_to_the_second_server_and_nothing_lost(tmp_path):
    first = ServerProcess(tmp_path, name="first").wait_listening()
    second = ServerProcess(tmp_path, name="second").wait_listening()
    total = 12_000
    col = collector(tmp_path, f"{first.address},{second.address}", "--server-order", "listed",
                    "--rate", "3000", "--count", str(total))
    try:
        wait_until(lambda: received(first) >= 2000, 20, what="events at the first server")
        assert received(second) == 0
        first.stop(signal.SIGKILL)
        # the backoff ceiling starts at 100 ms, failover within a round has no wait at all
        wait_until(lambda: received(second) > 0, 5, what="events at the second server")
        assert col.proc.wait(60) == 0, col.log()
    finally:
        col.stop()
        first.stop()
        second.stop()
    counts = ids_by_count(first.events() + second.events())
    assert len(counts) == total, f"{total - len(counts)} events lost"
    # across two servers delivery is at-least-once: a batch the first processed but never acked
    # goes to the second too, and only those can be counted twice
    assert sum(v - 1 for v in counts.values()) <= 2 * 100


def test_spool_survives_kill_9_and_damage(tmp_path):
    spool = tmp_path / "spool"
    port = free_port()
    produced = 2000
    first = collector(tmp_path, f"127.0.0.1:{port}", "--rate", "4000", "--count", str(produced),
                      "--batch-size", "100", "--spool-dir", str(spool), name="first")
    try:
        first.wait_log(f"Processed {produced} events", timeout=30)   # all spooled, none delivered
    finally:
        first.stop(signal.SIGKILL)
    (segment,) = [spool / n for n in os.listdir(spool) if n.endswith(".seg")]
    data = bytearray(segment.read_bytes())
    records = spool_records(data)
    assert sum(events for _, _, events in records) == produced
    flipped = len(data) // 2
    data[flipped] ^= 0xFF                            # a flipped byte inside some batch
    segment.write_bytes(bytes(data[:-7]))           # and a torn tail: the last batch cut short
    lost = sum(events for start, end, events in records if start <= flipped < end) + records[-1][2]

    server = ServerProcess(tmp_path, port=port).wait_listening()
    second = collector(tmp_path, server.address, "--rate", "1", "--count", "1",
                       "--spool-dir", str(spool), name="second")
    try:
        second.wait_log("1 corrupt records skipped, 1 torn tails cut", timeout=20)
        assert second.proc.wait(30) == 0, second.log()
    finally:
        second.stop()
        server.stop()
    events = server.events()
    newest = max(e["batch"] for e in events)      # the second run's one event: the newest batch
    spooled = [e for e in events if e["batch"] != newest]
    counts = ids_by_count(spooled)
    assert len(spooled) == produced - lost, "all but the damaged and the torn batch"
    assert max(counts.values()) == 1
    assert {int(i[5:]) for i in counts} <= set(range(1, produced + 1))
    assert not [n for n in os.listdir(spool) if n.endswith(".seg") and os.path.getsize(spool / n)], \
        "delivered batches are deleted from the spool"


def spool_records(data):
    """(start, end, events) of each record of a spool segment."""
    out, pos = [], 0
    while pos < len(data):
        _, _, events, length, _ = HEADER.unpack_from(data, pos)
        out.append((pos, pos + HEADER.size + length, events))
        pos += HEADER.size + length
    return out


def rss_kib(pid):
    """Resident set of a process; 0 once it has exited (a zombie's status has no VmRSS line)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    except FileNotFoundError:
        return 0


def test_slow_server_bounded_memory_and_counted_drops(tmp_path):
    server = ServerProcess(tmp_path, ["--debug-batch-delay", "40ms", "--ingest-queue", "8"]).wait_listening()
    total = 40_000
    # a small ring buffer: what the collector cannot take while the server holds it back is
    # dropped (and counted) there, as in the kernel
    col = collector(tmp_path, server.address, "--rate", "20000", "--count", str(total),
                    "--batch-size", "500", "--max-memory", "2MiB", "--ring-buffer-size", "256KiB",
                    "--shutdown-timeout", "30s")
    peak = 0
    try:
        def done():
            nonlocal peak
            if col.proc.poll() is None:
                peak = max(peak, rss_kib(col.proc.pid))
                return False
            return True
        wait_until(done, 90, interval=0.1, what="the collector to finish against a slow server")
        assert col.proc.returncode == 0, col.log()
    finally:
        col.stop()
        server.stop()
    log = col.log()
    assert "Server asked to pause sending" in log and "Server asked to resume sending" in log
    summary = log.strip().splitlines()[-1]
    m = re.search(r"(\d+) events seen, (\d+) dropped in the kernel, .*?(\d+) delivered, (\d+) dropped "
                  r"from the send buffer, .*?(\d+) not delivered at exit; the ledger closes", summary)
    seen, kernel, delivered, buffer, undelivered = map(int, m.groups())
    assert kernel + buffer > 0, summary                  # the server is slower than the source
    assert seen == total, summary                        # what the source offered was read or dropped
    assert undelivered == 0, summary
    assert delivered + kernel + buffer == total, summary  # every event is delivered or counted
    counts = ids_by_count(server.events())
    assert len(counts) == delivered and max(counts.values()) == 1
    assert peak < 150 * 1024, f"collector RSS reached {peak} KiB"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1, a client certificate, and a stranger's one."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}",
            "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca in (("server", "ca"), ("client", "ca"), ("stranger", "other-ca")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", f"{name}.pem")
    return d


SECURITY_CASES = {
    # name: (server flags, collector flags, delivered?, what the collector log says when not)
    "tls": (["--tls-cert", "server.pem", "--tls-key", "server.key"], ["--tls-ca", "ca.pem"], True, None),
    "plain client, tls server": (["--tls-cert", "server.pem", "--tls-key", "server.key"], [], False,
                                 "no connection to"),
    "tls client, untrusted server": (["--tls-cert", "server.pem", "--tls-key", "server.key"],
                                     ["--tls-ca", "other-ca.pem"], False, "no connection to"),
    "mtls": (["--tls-cert", "server.pem", "--tls-key", "server.key", "--tls-client-ca", "ca.pem"],
             ["--tls-ca", "ca.pem", "--tls-cert", "client.pem", "--tls-key", "client.key"], True, None),
    "mtls without a client certificate": (
        ["--tls-cert", "server.pem", "--tls-key", "server.key", "--tls-client-ca", "ca.pem"],
        ["--tls-ca", "ca.pem"], False, "no connection to"),
    "mtls with a stranger's certificate": (
        ["--tls-cert", "server.pem", "--tls-key", "server.key", "--tls-client-ca", "ca.pem"],
        ["--tls-ca", "ca.pem", "--tls-cert", "stranger.pem", "--tls-key", "stranger.key"], False,
        "no connection to"),
    "token": (["--auth-token-file", "tokens"], ["--auth-token-file", "good-token"], True, None),
    "wrong token": (["--auth-token-file", "tokens"], ["--auth-token-file", "bad-token"], False,
                    "code = Unauthenticated"),
    "no token": (["--auth-token-file", "tokens"], [], False, "code = Unauthenticated"),
}


@pytest.mark.parametrize("case", list(SECURITY_CASES))
def test_tls_mtls_and_tokens(tmp_path, pki, case):
    server_flags, collector_flags, delivered, complaint = SECURITY_CASES[case]
    (pki / "tokens").write_text("# accepted tokens\nold-token\ns3cret-token\n")
    (pki / "good-token").write_text("s3cret-token\n")
    (pki / "bad-token").write_text("guessed-token\n")
    resolve = lambda flags: [str(pki / f) if os.path.exists(pki / f) else f for f in flags]  # noqa: E731
    server = ServerProcess(tmp_path, resolve(server_flags)).wait_listening()
    col = collector(tmp_path, server.address, "--rate", "200", *resolve(collector_flags))
    try:
        if delivered:
            wait_until(lambda: received(server) > 0, 15, what="events over the secured stream")
        else:
            col.wait_log(complaint, timeout=15)
            assert received(server) == 0
    finally:
        col.stop()
        server.stop()
    assert "s3cret-token" not in server.log() + col.log()
    assert "guessed-token" not in server.log()
    if case == "wrong token":
        assert "Refused a stream" in server.log()


def test_gzip_compression_end_to_end(tmp_path):
    server = ServerProcess(tmp_path).wait_listening()
    col = collector(tmp_path, server.address, "--rate", "2000", "--count", "2000", "--compression", "gzip")
    try:
        assert col.proc.wait(30) == 0, col.log()
    finally:
        col.stop()
        server.stop()
    assert len(ids_by_count(server.events())) == 2000
