# -*- test-case-name: tests.test_status -*-
"""
The cluster as one node sees it, for people: GET /status (JSON) and the
status page at GET / that polls it.

A snapshot lists this node and every member of its peer table, with the
member's state and last contact from membership, and its counters as the
member itself reports them (GET /counters, one request per member, with the
peer client's deadline; none to a member believed dead).  A member that
does not answer is listed without counts.  For each counter, a member's
I{lag} is how far its value is behind the highest value any member
reports.  The members that answered I{agree} when they report the same
counters; the cluster has I{converged} when they agree and every member
answered.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from twisted.internet.defer import DeferredList, fail

from dcounter import __version__
from dcounter.client import PeerClient
from dcounter.membership import Membership, PeerState
from dcounter.node import Node


def page() -> bytes:
    """
    The status page: one HTML file with its CSS and JavaScript inline.
    """
    return importlib.resources.files("dcounter").joinpath("status.html").read_bytes()


class DeadMember(Exception):
    pass


class ClusterStatus:
    def __init__(self, node: Node, membership: Membership, client: PeerClient) -> None:
        self.node = node
        self.membership = membership
        self.client = client

    async def snapshot(self) -> dict[str, Any]:
        now = self.node.clock.seconds()
        peers = self.membership.peers()
        # Dead members are not asked: they fail their probes already, and
        # asking would make every poll of the page wait for their timeout.
        results = await DeferredList(
            [
                fail(DeadMember("believed dead: not asked"))
                if p.state is PeerState.DEAD
                else self.client.counters(p.id)
                for p in peers
            ],
            consumeErrors=True,
        )
        members: list[dict[str, Any]] = [
            {
                "id": self.node.node_id,
                "self": True,
                "state": "alive",
                "last_seen_ago": 0.0,
                "counters": self.node.counters.values(),
                "error": None,
            }
        ]
        for peer, (ok, result) in zip(peers, results, strict=True):
            members.append(
                {
                    "id": peer.id,
                    "self": False,
                    "state": peer.state.value,
                    "last_seen_ago": round(now - peer.last_seen, 3),
                    "counters": result if ok else None,
                    "error": None if ok else _reason(result, peer.state),
                }
            )
        names = sorted({name for m in members if m["counters"] is not None for name in m["counters"]})
        highest = {
            name: max(m["counters"].get(name, 0) for m in members if m["counters"] is not None)
            for name in names
        }
        for m in members:
            if m["counters"] is not None:
                m["lag"] = {name: highest[name] - m["counters"].get(name, 0) for name in names}
            else:
                m["lag"] = None
        answered = [m for m in members if m["counters"] is not None]
        agree = all(not any(m["lag"].values()) for m in answered)
        return {
            "node_id": self.node.node_id,
            "cluster": self.node.cluster,
            "version": __version__,
            "counters": names,
            "highest": highest,
            "members": members,
            "answered": len(answered),
            "agree": agree,
            "converged": agree and len(answered) == len(members),
        }


def _reason(failure: Any, state: PeerState) -> str:
    error = getattr(failure, "value", failure)
    if isinstance(error, DeadMember):
        return str(error)
    return f"no answer: {error or type(error).__name__}"
