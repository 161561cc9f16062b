"""--server-order: rendezvous hashing spreads nodes evenly over the servers and moves only the
nodes of a server that leaves; listed keeps the given order; a real collector streams to the
server its node's order puts first."""
import collections
import os
import subprocess

import pytest

from tapio.collector.server_order import order_servers
from tests.helpers import BIN, ManagedProcess, ServerProcess, wait_until

SERVERS = ["tapio-0.tapio:9090", "tapio-1.tapio:9090", "tapio-2.tapio:9090"]
NODES = [f"node-{n:04d}" for n in range(5000)]


def first_choices(servers):
    return {node: order_servers(servers, node)[0] for node in NODES}


def test_5000_nodes_spread_over_3_servers_within_10_percent():
    counts = collections.Counter(first_choices(SERVERS).values())
    share = len(NODES) / len(SERVERS)
    assert set(counts) == set(SERVERS)
    for server, n in counts.items():
        assert abs(n - share) <= share * 0.10, counts


def test_a_removed_server_moves_only_its_own_nodes_and_spreads_them():
    before = first_choices(SERVERS)
    after = first_choices([s for s in SERVERS if s != SERVERS[1]])
    moved = {node for node in NODES if before[node] != after[node]}
    assert moved == {node for node in NODES if before[node] == SERVERS[1]}
    # each moved node goes to its own second choice: both remaining servers take a fair part
    took = collections.Counter(after[node] for node in moved)
    assert set(took) == {SERVERS[0], SERVERS[2]}
    assert min(took.values()) >= len(moved) * 0.4, took
    # and every node's failover order is its own order without the removed server
    for node in NODES[:500]:
        assert order_servers([s for s in SERVERS if s != SERVERS[1]], node) == \
            [s for s in order_servers(SERVERS, node) if s != SERVERS[1]]


def test_the_order_is_a_permutation_stable_across_list_order_and_listed_keeps_the_list():
    for node in NODES[:200]:
        order = order_servers(SERVERS, node)
        assert sorted(order) == sorted(SERVERS)
        assert order_servers(list(reversed(SERVERS)), node) == order
    assert order_servers(SERVERS, "node-0001", "listed") == SERVERS
    assert order_servers(SERVERS[:1], "node-0001") == SERVERS[:1]
    with pytest.raises(ValueError):
        order_servers(SERVERS, "node-0001", "random")


def test_a_bad_server_order_is_one_line_and_exit_2():
    done = subprocess.run([os.path.join(BIN, "tapio-collector"), "--source", "synthetic",
                           "--server", "127.0.0.1:1,127.0.0.1:2", "--server-order", "random"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "server-order" in done.stderr


@pytest.mark.parametrize("order", ["rendezvous", "listed"])
def test_a_collector_streams_to_its_first_server(tmp_path, order):
    servers = [ServerProcess(tmp_path, name=f"server-{i}").wait_listening() for i in range(2)]
    addresses = [s.address for s in servers]
    # a node name whose rendezvous order starts with the second listed server
    node = next(f"node-{n}" for n in range(1000) if order_servers(addresses, f"node-{n}")[0] == addresses[1])
    home = servers[1] if order == "rendezvous" else servers[0]
    argv = [os.path.join(BIN, "tapio-collector"), "--source", "synthetic", "--server",
            ",".join(addresses), "--server-order", order, "--node-name", node, "--correlation",
            "raw", "--rate", "2000", "--count", "1000", "--flush-interval", "20ms",
            "--metrics-interval", "0"]
    col = ManagedProcess(argv, str(tmp_path / "collector.log"))
    try:
        assert col.proc.wait(60) == 0, col.log()
        wait_until(lambda: len(home.events()) == 1000, 10, what="every event at the home server")
        assert sum(len(s.events()) for s in servers) == 1000
    finally:
        col.stop()
        for s in servers:
            s.stop()
