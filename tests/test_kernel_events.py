"""Real kernel events through a real `tapio-collector --enable-ebpf --output FILE`.

Each test makes the kernel do something (exec, exit, fault, connect, accept, OOM) in a child
process and finds exactly that in the collector's JSON lines, by pid.
"""
import contextlib
import ctypes
import json
import os
import platform
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest

from tests.fixtures.enrich.cgroups import CgroupTree, require_cgroup_root
from tests.helpers import BIN, CollectorProcess, recv_exactly, require_ebpf, tcp_bytes_acked, wait_until

pytestmark = pytest.mark.kernel


# Every fact is checked twice: as this kernel lets the programs read it (BTF pointers from
# bpf_skc_to_tcp_sock and bpf_get_current_task_btf, plain loads), and as kernels before 5.9 make
# them (a probe read per field), which TAPIO_PROBE_READS_ONLY=1 forces here.
@pytest.fixture(scope="module", params=["btf", "probe reads"])
def collector(request, tmp_path_factory):
    require_ebpf()
    env = {"TAPIO_PROBE_READS_ONLY": "1"} if request.param == "probe reads" else {}
    proc = CollectorProcess(tmp_path_factory.mktemp("collector") / "events.jsonl", env=env)
    proc.reads = request.param
    proc.wait_attached()
    yield proc
    assert proc.stop() == 0, proc.log()


def test_probe_reads_only_loads_the_old_kernels_code(collector):
    """Each mode runs the code it names: only the BTF one calls bpf_skc_to_tcp_sock."""
    fdinfo = f"/proc/{collector.proc.pid}/fdinfo"
    ids = set()
    for fd in os.listdir(fdinfo):
        with open(os.path.join(fdinfo, fd)) as f:
            ids.update(re.findall(r"^prog_id:\s+(\d+)", f.read(), re.M))
    programs = json.loads(subprocess.run(["bpftool", "--json", "prog", "show"], check=True,
                                         capture_output=True).stdout)
    (tcp_state,) = [p["id"] for p in programs if str(p["id"]) in ids and p.get("name") == "tapio_tcp_state"]
    code = subprocess.run(["bpftool", "prog", "dump", "xlated", "id", str(tcp_state)], check=True,
                          capture_output=True, text=True).stdout
    assert ("bpf_skc_to_tcp_sock" in code) == (collector.reads == "btf"), code[:2000]


def by_pid(pid, type_):
    return lambda e: e["pid"] == pid and e["type"] == type_


def test_exec_and_exit_code(collector, tmp_path):
    name = f"tapio-probe-{uuid.uuid4().hex[:8]}"
    script = tmp_path / name
    script.write_text("#!/bin/sh\nexit 3\n")
    script.chmod(0o755)
    child = subprocess.run([str(script), "hello-arg"], check=False)
    assert child.returncode == 3

    execs = collector.wait_for(lambda e: e["type"] == "exec" and e["exec"]["filename"] == str(script),
                               what=f"the exec of {name}")
    exec_ = execs[0]
    assert exec_["ppid"] == os.getpid()
    assert exec_["comm"] == name[:15]
    assert exec_["uid"] == os.getuid()
    assert "hello-arg" in exec_["exec"]["args"]
    assert str(script) in exec_["exec"]["args"]
    exit_ = collector.wait_for(by_pid(exec_["pid"], "exit"), what=f"the exit of {name}")[0]
    assert exit_["exit"]["exit_code"] == 3
    assert exit_["exit"]["signal"] == 0
    assert exit_["exit"]["duration_ns"] > 0
    assert exit_["timestamp_ns"] >= exec_["timestamp_ns"]


def test_fatal_signal_from_a_fault(collector):
    child = subprocess.run([sys.executable, "-c", "import ctypes; ctypes.string_at(0)"])
    assert child.returncode == -signal.SIGSEGV
    pid = collector.wait_for(lambda e: e["type"] == "exec" and any("string_at(0)" in a for a in e["exec"]["args"]),
                             what="the exec of the faulting child")[0]["pid"]
    sig = collector.wait_for(by_pid(pid, "signal"), what="the SIGSEGV event")[0]
    assert sig["signal"]["signal"] == signal.SIGSEGV
    assert sig["signal"]["signal_name"] == "SIGSEGV"
    assert sig["signal"]["sender_pid"] == pid       # a fault: the kernel sends it to itself
    assert sig["signal"]["code"] > 0                # SEGV_MAPERR, not SI_USER
    exit_ = collector.wait_for(by_pid(pid, "exit"), what="the exit by SIGSEGV")[0]
    assert exit_["exit"]["signal"] == signal.SIGSEGV


def test_killed_by_another_process(collector):
    victim = subprocess.Popen(["sleep", "30"])
    killer = subprocess.run(["kill", "-KILL", str(victim.pid)])
    assert killer.returncode == 0
    victim.wait(10)
    sig = collector.wait_for(by_pid(victim.pid, "signal"), what="the SIGKILL event")[0]
    assert sig["signal"]["signal_name"] == "SIGKILL"
    assert sig["signal"]["sender_comm"] == "kill"
    exit_ = collector.wait_for(by_pid(victim.pid, "exit"), what="the exit by SIGKILL")[0]
    assert exit_["exit"]["signal"] == signal.SIGKILL


def _closed_port(family, host):
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]   # bound, never listening, then closed: connects are refused


@pytest.mark.parametrize("family,host,fam", [(socket.AF_INET, "127.0.0.1", "ipv4"),
                                             (socket.AF_INET6, "::1", "ipv6")])
def test_connect_refused(collector, family, host, fam):
    port = _closed_port(family, host)
    with socket.socket(family) as s:
        with pytest.raises(ConnectionRefusedError):
            s.connect((host, port))
        client_port = s.getsockname()[1]    # the kernel keeps it in inet_sport
    event = collector.wait_for(lambda e: e["type"] == "tcp_connect" and e["pid"] == os.getpid()
                               and e["tcp_connect"]["dport"] == port, what="the refused connect")[0]
    tcp = event["tcp_connect"]
    assert tcp["result"] == "refused"
    assert tcp["error"] == 111
    assert tcp["family"] == fam
    assert tcp["daddr"] == host
    assert tcp["sport"] == client_port


def test_connect_accept_close_with_byte_counts(collector):
    payload = 10_000
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received = []

    def serve():
        conn, _ = server.accept()
        with conn:
            total = 0
            while total < payload:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                total += len(chunk)
            received.append(total)

    t = threading.Thread(target=serve)
    t.start()
    # the client is a child process, so connect and accept come from different pids
    client = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import socket
        s = socket.create_connection(("127.0.0.1", {port}))
        s.sendall(b"x" * {payload})
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
        s.close()
    """)], timeout=30)
    t.join(10)
    server.close()
    assert client.returncode == 0 and received == [payload]

    me = os.getpid()
    connect = collector.wait_for(lambda e: e["type"] == "tcp_connect" and e["tcp_connect"]["dport"] == port,
                                 what="the connect")[0]
    assert connect["pid"] != me and connect["tcp_connect"]["result"] == "ok"
    client_port = connect["tcp_connect"]["sport"]
    accept = collector.wait_for(lambda e: e["type"] == "tcp_accept" and e["tcp_accept"]["sport"] == port,
                                what="the accept")[0]
    assert accept["pid"] == me
    assert accept["tcp_accept"]["dport"] == client_port
    assert accept["tcp_accept"]["passive"] is True
    closes = collector.wait_for(
        lambda e: e["type"] == "tcp_close" and {e["tcp_close"]["sport"], e["tcp_close"]["dport"]} == {port, client_port},
        what="both closes")
    wait_until(lambda: len([e for e in collector.events() if e["type"] == "tcp_close"
                            and {e["tcp_close"]["sport"], e["tcp_close"]["dport"]} == {port, client_port}]) >= 2,
               what="the second close")
    closes = [e for e in collector.events() if e["type"] == "tcp_close"
              and {e["tcp_close"]["sport"], e["tcp_close"]["dport"]} == {port, client_port}]
    client_close = next(e for e in closes if e["pid"] == connect["pid"])
    server_close = next(e for e in closes if e["pid"] == me)
    assert client_close["tcp_close"]["bytes_sent"] == payload
    assert client_close["tcp_close"]["bytes_received"] == 0
    assert server_close["tcp_close"]["bytes_received"] == payload
    assert server_close["tcp_close"]["bytes_sent"] == 0
    assert server_close["tcp_close"]["passive"] is True
    assert client_close["tcp_close"]["duration_ns"] > 0


def both_closes(collector, port_a, port_b):
    """The tcp_close details of both ends of one loopback connection: (the client's, the server's)."""
    pair = {port_a, port_b}

    def closes():
        return [e["tcp_close"] for e in collector.events() if e["type"] == "tcp_close"
                and {e["tcp_close"]["sport"], e["tcp_close"]["dport"]} == pair]
    found = wait_until(lambda: len(closes()) == 2 and closes(), what="both closes")
    return (next(c for c in found if not c["passive"]), next(c for c in found if c["passive"]))


def loopback_exchange(client_sends, server_sends, ending, host="127.0.0.1"):
    """One connection on `host`: the client writes `client_sends` bytes, the server reads them
    and answers `server_sends` bytes; then the client closes first, the server closes first, or
    the server resets the connection (SO_LINGER 0) once each side's bytes are acknowledged.
    Returns (client port, server port, the errno the client's last read saw)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.create_server((host, 0), family=family)
    port = server.getsockname()[1]
    client_acked = threading.Event()
    failures = []

    def serve():
        try:
            conn, _ = server.accept()
            with conn:
                recv_exactly(conn, client_sends)
                conn.sendall(b"s" * server_sends)
                if ending == "client closes":
                    while conn.recv(65536):
                        pass
                elif ending == "reset":
                    wait_until(lambda: tcp_bytes_acked(conn) == server_sends, what="the client's ACK")
                    assert client_acked.wait(10)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except BaseException as e:
            failures.append(e)

    t = threading.Thread(target=serve)
    t.start()
    error = 0
    try:
        with socket.create_connection((host, port)) as client:
            client_port = client.getsockname()[1]
            client.sendall(b"c" * client_sends)
            recv_exactly(client, server_sends)
            if ending == "reset":
                wait_until(lambda: tcp_bytes_acked(client) == client_sends + 1, what="the server's ACK")
                client_acked.set()
            if ending != "client closes":
                try:
                    assert client.recv(1) == b""
                except ConnectionResetError as e:
                    error = e.errno
    finally:
        client_acked.set()
        t.join(10)
        server.close()
    assert not failures, failures
    return client_port, port, error


@pytest.mark.parametrize("client_sends,server_sends,ending,host", [
    (1000, 2000, "client closes", "127.0.0.1"),
    (3000, 0, "server closes", "127.0.0.1"),
    (0, 0, "client closes", "127.0.0.1"),
    (0, 0, "server closes", "127.0.0.1"),
    (200_000, 100_001, "client closes", "127.0.0.1"),
    (5000, 7, "reset", "127.0.0.1"),
    (1000, 2000, "client closes", "::1"),
    (5000, 7, "reset", "::1"),
])
def test_close_reports_payload_bytes(collector, client_sends, server_sends, ending, host):
    # the kernel counts the SYN and the FINs in snd_una/rcv_nxt (and so in bytes_acked and
    # bytes_received); what the applications wrote and read is the truth
    client_port, server_port, error = loopback_exchange(client_sends, server_sends, ending, host)
    assert error == (104 if ending == "reset" else 0)
    client, server = both_closes(collector, client_port, server_port)
    assert (client["sport"], client["dport"]) == (client_port, server_port)
    assert client["saddr"] == client["daddr"] == server["saddr"] == server["daddr"] == host
    assert (client["bytes_sent"], client["bytes_received"]) == (client_sends, server_sends)
    assert (server["bytes_sent"], server["bytes_received"]) == (server_sends, client_sends)
    # the side that was reset says so; the side that reset it ended the connection itself
    assert client["error"] == error
    assert server["error"] == 0


BPF_MAP_CREATE, BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_DETACH = 0, 5, 8, 9
BPF_MAP_TYPE_ARRAY, BPF_PROG_TYPE_CGROUP_SKB, BPF_CGROUP_INET_INGRESS = 2, 8, 0


def bpf(cmd, attr):
    """The bpf(2) system call with a union bpf_attr of `attr` bytes (zero-padded)."""
    nr = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
    if nr is None:
        pytest.skip(f"no bpf(2) syscall number known here for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr, 128)
    ret = libc.syscall(nr, cmd, buf, len(buf))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def insn(code, dst=0, src=0, off=0, imm=0):
    """One struct bpf_insn."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def lossy_program(counter, one_in):
    """cgroup_skb/ingress: drop the first of every `one_in` received packets of 1000 bytes or
    more (data, never a bare ACK), counted in the array map `counter`; keep the rest."""
    return b"".join([
        insn(0xbf, dst=6, src=1),                 # r6 = ctx
        insn(0x61, dst=2, src=6, off=0),          # r2 = skb->len
        insn(0xa5, dst=2, off=14, imm=1000),      # if r2 < 1000 goto keep
        insn(0x62, dst=10, off=-4, imm=0),        # *(u32 *)(r10 - 4) = 0: the key
        insn(0xbf, dst=2, src=10),                # r2 = r10
        insn(0x07, dst=2, imm=-4),                # r2 += -4
        insn(0x18, dst=1, src=1, imm=counter),    # r1 = the map (BPF_PSEUDO_MAP_FD) ...
        insn(0x00),                               # ... its upper half
        insn(0x85, imm=1),                        # r0 = bpf_map_lookup_elem(r1, r2)
        insn(0x15, dst=0, off=7, imm=0),          # if r0 == 0 goto keep
        insn(0x79, dst=1, src=0),                 # r1 = *(u64 *)r0
        insn(0x07, dst=1, imm=1),                 # r1 += 1
        insn(0x7b, dst=0, src=1),                 # *(u64 *)r0 = r1
        insn(0x57, dst=1, imm=one_in - 1),        # r1 &= one_in - 1
        insn(0x55, dst=1, off=2, imm=1),          # if r1 != 1 goto keep
        insn(0xb7, dst=0, imm=0), insn(0x95),     # return 0: drop
        insn(0xb7, dst=0, imm=1), insn(0x95),     # keep: return 1
    ])


@contextlib.contextmanager
def lossy_cgroup(one_in):
    """A cgroup v2 whose sockets lose one in `one_in` received data packets, the first one
    included, as if the network had lost them: their senders retransmit. Yields its directory."""
    counter = bpf(BPF_MAP_CREATE, struct.pack("<IIII", BPF_MAP_TYPE_ARRAY, 4, 8, 1))
    try:
        program = lossy_program(counter, one_in)
        insns, license_ = ctypes.create_string_buffer(program, len(program)), ctypes.create_string_buffer(b"GPL")
        prog = bpf(BPF_PROG_LOAD, struct.pack(
            "<IIQQIIQII16sII", BPF_PROG_TYPE_CGROUP_SKB, len(program) // 8, ctypes.addressof(insns),
            ctypes.addressof(license_), 0, 0, 0, 0, 0, b"tapio_test_loss", 0, BPF_CGROUP_INET_INGRESS))
    finally:
        os.close(counter)           # the program holds the map
    tree = CgroupTree(require_cgroup_root())
    try:
        tree.mkdir("lossy")
        cgroup = os.open(tree.directory("lossy"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            bpf(BPF_PROG_ATTACH, struct.pack("<IIII", cgroup, prog, BPF_CGROUP_INET_INGRESS, 0))
            try:
                yield tree.directory("lossy")
            finally:
                bpf(BPF_PROG_DETACH, struct.pack("<IIII", cgroup, prog, BPF_CGROUP_INET_INGRESS, 0))
        finally:
            os.close(cgroup)
    finally:
        os.close(prog)
        tree.cleanup()


TCP_INFO_BYTES_RETRANS = 208    # tcpi_bytes_retrans


def test_close_counts_retransmitted_bytes_once(collector):
    # The client runs in a cgroup that loses 1 in 8 of the data packets it receives, so the
    # server retransmits them (the kernel's tcp_sock.bytes_sent counts every copy).
    client_sends, server_sends = 100_000, 300_000
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    retransmitted, failures = [], []

    def serve():
        try:
            conn, _ = server.accept()
            with conn:
                recv_exactly(conn, client_sends)
                conn.sendall(b"s" * server_sends)
                while conn.recv(65536):
                    pass
                info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES_RETRANS + 8)
                retransmitted.append(struct.unpack_from("Q", info, TCP_INFO_BYTES_RETRANS)[0])
        except BaseException as e:
            failures.append(e)

    client = textwrap.dedent(f"""
        import socket
        s = socket.create_connection(("127.0.0.1", {port}))
        s.sendall(b"c" * {client_sends})
        got = 0
        while got < {server_sends}:
            chunk = s.recv(65536)
            assert chunk
            got += len(chunk)
        print(s.getsockname()[1])
        s.close()
    """)
    with server, lossy_cgroup(8) as cgroup:
        t = threading.Thread(target=serve)
        t.start()
        try:
            # the shell moves itself into the cgroup, then becomes the client
            child = subprocess.run(["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$0" -c "$1"',
                                    sys.executable, client], capture_output=True, text=True, timeout=120)
        finally:
            t.join(10)
            if t.is_alive():
                server.shutdown(socket.SHUT_RDWR)   # wakes an accept() no client came to
                t.join(10)
    assert child.returncode == 0 and not failures, (child.stderr, failures)
    assert retransmitted and retransmitted[0] > 0, "nothing was retransmitted: the test proves nothing"
    client_port = int(child.stdout)
    client_close, server_close = both_closes(collector, client_port, port)
    assert (client_close["bytes_sent"], client_close["bytes_received"]) == (client_sends, server_sends)
    assert (server_close["bytes_sent"], server_close["bytes_received"]) == (server_sends, client_sends)


def test_oom_kill(collector, memory_cgroup):
    # the shell moves itself into the limited cgroup, then becomes the process that runs out
    child = subprocess.run(["sh", "-c", f'echo $$ > {memory_cgroup}/cgroup.procs && exec "$0" -c '
                            '"b = bytearray(256 << 20)"', sys.executable], timeout=60)
    assert child.returncode == -signal.SIGKILL
    name = os.path.basename(memory_cgroup)
    oom = collector.wait_for(lambda e: e["type"] == "oom_kill" and e["oom_kill"]["memcg_name"] == name,
                             what="the OOM kill")[0]
    details = oom["oom_kill"]
    assert details["memcg_limit_bytes"] == 32 << 20
    assert details["rss_bytes"] > 0
    assert oom["comm"].startswith("python")
    exit_ = collector.wait_for(by_pid(oom["pid"], "exit"), what="the OOM victim's exit")[0]
    assert exit_["exit"]["signal"] == signal.SIGKILL


def test_collector_never_reports_itself(collector):
    # the collector has been writing events all along; none of them may be its own
    pid = collector.proc.pid
    subprocess.run(["true"])
    collector.wait_for(lambda e: e["type"] == "exec" and e["comm"] == "true", what="an exec of true")
    assert not [e for e in collector.events() if e["pid"] == pid]


def test_tiny_ring_buffer_counts_kernel_drops(ebpf, tmp_path):
    proc = CollectorProcess(tmp_path / "events.jsonl", ["--ring-buffer-size", "4096", "--events", "exec,exit"])
    try:
        proc.wait_attached()
        # a consumer that cannot keep up: the collector is stopped while 200 processes run
        proc.proc.send_signal(signal.SIGSTOP)
        try:
            subprocess.run(["sh", "-c", "for i in $(seq 200); do /bin/true; done"], timeout=60)
        finally:
            proc.proc.send_signal(signal.SIGCONT)
    finally:
        code = proc.stop()
    assert code == 0, proc.log()
    summary = [line for line in proc.log().splitlines() if "dropped in the kernel" in line][-1]
    seen, dropped = [int(w) for w in summary.split() if w.isdigit()][:2]
    assert dropped > 0, summary
    # what the kernel dropped was seen too: every event is written out or counted as dropped
    assert seen == len(proc.events()) + dropped and "the ledger closes" in summary, summary


def test_without_capabilities_exits_2_with_a_hint(ebpf, tmp_path):
    # root, but with an empty capability bounding set: what an unprivileged container gets
    result = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--",
                             os.path.join(BIN, "tapio-collector"), "--enable-ebpf", "--output", "-"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "needs root or CAP_BPF+CAP_PERFMON" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_flood_of_routine_events_leaves_room_for_fatal_signals(ebpf, tmp_path):
    proc = CollectorProcess(tmp_path / "events.jsonl",
                            ["--ring-buffer-size", "16384", "--events", "exec,exit,signal"])
    victims = []
    try:
        proc.wait_attached()
        victims = [subprocess.Popen(["sleep", "30"]) for _ in range(5)]
        proc.proc.send_signal(signal.SIGSTOP)        # nobody reads the ring buffer meanwhile
        try:
            subprocess.run(["sh", "-c", "for i in $(seq 300); do /bin/true; done"], timeout=60)
            for victim in victims:                   # the ring buffer is full of routine events
                victim.kill()
                victim.wait(10)
        finally:
            proc.proc.send_signal(signal.SIGCONT)
        for victim in victims:
            sig = proc.wait_for(by_pid(victim.pid, "signal"), what=f"the SIGKILL of {victim.pid}")[0]
            assert sig["signal"]["signal_name"] == "SIGKILL"
            exit_ = proc.wait_for(by_pid(victim.pid, "exit"), what=f"the exit of {victim.pid}")[0]
            assert exit_["exit"]["signal"] == signal.SIGKILL
    finally:
        for victim in victims:
            victim.kill()
            victim.wait()
        assert proc.stop() == 0, proc.log()
    summary = [line for line in proc.log().splitlines() if "dropped in the kernel" in line][-1]
    assert int(summary.split()[summary.split().index("dropped") - 1]) > 0, summary
