"""
Discovery on one host: nodes with no --peers find each other by UDP broadcast
to 127.255.255.255 on a shared discovery port.
"""

from __future__ import annotations

import json
import socket

from tests.integration.harness import Cluster, all_listed, free_ports, start_then_join, wait_for

BOUND = 2.0


def test_nodes_started_together_find_each_other(tmp_path) -> None:
    """
    Three nodes started at once list each other within 2 s of answering; a
    fourth started later is listed by all, and lists all, within 2 s.
    """
    cluster = Cluster(tmp_path, discovery=True)
    try:
        nodes = [cluster.add(p) for p in free_ports(4)]
        t = start_then_join(nodes, BOUND)
        print(
            f"\n3 nodes answered {t.startup:.2f}s after spawn and listed each other {t.mesh:.2f}s later; "
            f"a 4th joined {t.join:.2f}s after it answered"
        )
        assert all_listed(nodes)
        _, info = nodes[0].get("/discovery")
        assert info["broadcast"] == ["127.255.255.255"]
        assert info["discovery_port"] == cluster.discovery_port
        assert info["last_announce_received"] is not None
    finally:
        cluster.stop()


def test_garbage_never_becomes_a_peer(tmp_path) -> None:
    """
    Random bytes, an oversized datagram, a good announcement from another
    cluster and one for an address where no dcounter answers: none becomes a
    peer, and the node stays healthy and counts them.
    """
    cluster = Cluster(tmp_path, discovery=True)
    try:
        node = cluster.add().start().wait_up()
        dead_port = free_ports(1)[0]

        def announcement(cluster_name: str, node_id: str) -> bytes:
            return json.dumps(
                {
                    "dcounter": 1,
                    "kind": "announce",
                    "cluster": cluster_name,
                    "node_id": node_id,
                    "http": node_id,
                    "incarnation": "abc",
                }
            ).encode()

        datagrams = [
            bytes(range(256)) * 2,
            b"{" * 5000,
            b"127.0.0.1:1234",
            announcement("some-other-cluster", "127.0.0.1:4242"),
            announcement(cluster.name, f"127.0.0.1:{dead_port}"),
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for data in datagrams:
                s.sendto(data, ("127.0.0.1", cluster.discovery_port))
        wait_for(
            lambda: node.get("/discovery")[1]["datagrams"]["received"] >= len(datagrams),
            5,
            what="the node to receive every datagram",
        )
        stats = node.get("/discovery")[1]["datagrams"]
        assert stats["malformed"] == 3
        assert stats["other_cluster"] == 1
        # The unreachable one was probed, and refused: it is not a member.
        wait_for(
            lambda: node.get("/discovery")[1]["admissions"]["rejected"] >= 1,
            5,
            what="the unreachable address to be refused",
        )
        assert node.peers() == set()
        assert node.get("/members")[1]["members"] == []
        assert node.get("/health")[0] == 200
        assert node.post("/increment")[1]["count"] == 1
    finally:
        cluster.stop()
