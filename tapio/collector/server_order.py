"""The order in which a collector tries its --server list.

`listed`: as given (the first is the home server, the others failovers in turn).

`rendezvous` (highest random weight): every (node, server) pair gets a score from a hash of both,
and the node takes the servers by score. Each node thus has its own first choice, and nodes
spread evenly over the servers without any shared state; when a server leaves the list, only the
nodes whose first choice it was move (each to its own second choice), and the rest keep theirs.
Every collector must list the same servers, spelled the same way, for the same answer.
"""
import hashlib

ORDERS = ("rendezvous", "listed")


def _score(node, server):
    digest = hashlib.blake2b(f"{server}\0{node}".encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "big")


def order_servers(servers, node_name, order="rendezvous"):
    """The servers in the order this node tries them."""
    servers = list(servers)
    if order == "listed" or len(servers) < 2:
        return servers
    if order != "rendezvous":
        raise ValueError(f"unknown server order {order!r}: use {' or '.join(ORDERS)}")
    # the listed position breaks (improbable) ties, so that the order is total
    return [s for _, _, s in sorted(((-_score(node_name, s), i, s) for i, s in enumerate(servers)))]
