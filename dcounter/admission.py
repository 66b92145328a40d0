# -*- test-case-name: tests.test_admission -*-
"""
Admission: who may become a peer.  The one place that rule is written.

A name heard of (a UDP announcement, a gossiped member, a DNS answer, a node
that contacted us, an operator's /register) becomes a peer only if:

  - it is not this node;
  - it is not quarantined (an operator removed it recently), unless an
    operator registers it again;
  - it is not probed too often: one probe at a time per name, none for
    C{retry_after} seconds after one failed (unless the node itself just
    contacted us), and at most L{Admission.MAX_CANDIDATES} probes in flight
    at once, the names heard of meanwhile waiting their turn;
  - it answered a probe as the node it claims to be, in our cluster;
  - with a cluster key set, that answer carried a valid MAC.

And only admitted members may change our state: a sync from anyone else
changes nothing (L{Admission.is_member}).

Pure: time is passed in, the probes themselves are made by
L{dcounter.health.HealthChecker}, which asks here at each step.
"""

from __future__ import annotations

from collections import Counter

from dcounter import wire
from dcounter.keyring import Keyring
from dcounter.membership import Membership


class NotMember(Exception):
    """
    A message came from, or was about, a node that was not admitted:
    nothing changes.
    """


class AdmissionError(Exception):
    """
    A would-be peer may not be admitted.  The text is safe to show a
    client: it never repeats what a remote host answered; C{detail}, for
    this node's own log, may.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail

    def for_log(self) -> str:
        return str(self) if self.detail is None else f"{self}: {self.detail}"


class Admission:
    #: At most this many probes of names heard of at once: a flood of
    #: forged announcements or gossip cannot make this node open
    #: connections without bound, and a cluster started all at once does
    #: not bury itself in admission probes: 100 nodes started together on
    #: 2 cores (10 to a process) all answered after 22 s with 4 (50 s with
    #: 8), and after 105 s, 109 s, or not within 120 s with 32.
    MAX_CANDIDATES = 4
    #: Names heard of while every probe slot is taken wait for
    #: L{next_waiting}, in the order heard, those that contacted us over
    #: HTTP (a connection, not a datagram or gossip; with a cluster key, an
    #: authenticated one) ahead of the others; past this many in a line, or after
    #: L{WAIT_AT_MOST} seconds, they are dropped (a real node is heard of
    #: again: announcements and gossip repeat).
    MAX_WAITING = 1024
    WAIT_AT_MOST = 30.0

    def __init__(
        self,
        membership: Membership,
        cluster: str,
        *,
        keyring: Keyring | None = None,
        retry_after: float = 3.0,
    ) -> None:
        """
        @param keyring: while it holds a key, admit only nodes whose answer
            carried a valid MAC (L{wire.Hello.signed_by}).
        """
        self.membership = membership
        self.self_id = membership.self_id
        self.cluster = cluster
        self.keyring = keyring or Keyring()
        self.retry_after = retry_after
        #: Probes in flight, by name: an operator's /register may probe a
        #: name whose probe is already out, and each holds a slot until it
        #: ends.
        self._probing: Counter[str] = Counter()
        self._rejected_until: dict[str, float] = {}
        #: The two lines of names waiting for a probe: name -> when it was
        #: heard of, oldest first.
        self._contacted: dict[str, float] = {}
        self._heard: dict[str, float] = {}
        #: Admissions that succeeded, that failed, and names dropped
        #: unprobed (the waiting line full, or waited too long), since start.
        self.counts = {"admitted": 0, "rejected": 0, "dropped": 0}

    # Who may change our state.

    def is_member(self, node_id: str) -> bool:
        """
        Whether C{node_id} was admitted (and is still in the table, dead or
        alive): only members' syncs are merged.
        """
        return node_id != self.self_id and node_id in self.membership

    # Before a probe.

    def refusal(self, address: str, now: float, *, force: bool = False) -> str | None:
        """
        Why C{address} may not be admitted whatever it answers, or None.

        @param force: an operator asks (/register): quarantine does not hold.
        """
        if address == self.self_id:
            return f"{address} is this node"
        if not force and self.membership.is_quarantined(address, now):
            return f"{address} was removed recently and is quarantined"
        return None

    def should_probe(self, address: str, now: float, *, contact: bool = False) -> bool:
        """
        Whether a name heard of is worth a probe now.  Names already in the
        table are left to the health checker's own probes.

        @param contact: the node itself just contacted us over HTTP: probe it
            even if an earlier probe failed (it was not up yet).
        """
        if address in self.membership or address in self._probing:
            return False
        if self.refusal(address, now) is not None:
            return False
        if not contact and self._rejected_until.get(address, 0.0) > now:
            return False
        if not self.room():
            self._wait(address, now, contact)
            return False
        self._contacted.pop(address, None)
        self._heard.pop(address, None)
        return True

    def _wait(self, address: str, now: float, contact: bool) -> None:
        if address in self._contacted or (not contact and address in self._heard):
            return  # waiting already: it keeps its place (and the time it was first heard of)
        line = self._contacted if contact else self._heard
        self._expire(line, now)
        if len(line) >= self.MAX_WAITING:
            if address not in self._heard:  # else it waits on in the other line
                self.counts["dropped"] += 1
            return
        self._heard.pop(address, None)  # up to the line of those that contacted us
        line[address] = now

    def _expire(self, line: dict[str, float], now: float) -> None:
        """Drop the names at the front of C{line} that waited too long."""
        while line:
            address, since = next(iter(line.items()))
            if now - since <= self.WAIT_AT_MOST:
                return
            del line[address]
            self.counts["dropped"] += 1

    def room(self) -> bool:
        """Whether a probe of a name heard of may start now."""
        return self._probing.total() < self.MAX_CANDIDATES

    def next_waiting(self, now: float) -> tuple[str, bool] | None:
        """
        Take the next name waiting for a probe slot (those that contacted
        us first, then the longest waiting), and whether it contacted us;
        None if none waits.  Names that waited more than L{WAIT_AT_MOST}
        seconds are dropped on the way.
        """
        for line, contact in ((self._contacted, True), (self._heard, False)):
            self._expire(line, now)
            if line:
                address = next(iter(line))
                del line[address]
                return address, contact
        return None

    def probing(self, address: str) -> None:
        """
        A probe of C{address} for admission has started.
        """
        self._probing[address] += 1

    # After a probe.

    def check(self, address: str, hello: wire.Hello, expected_id: str | None = None) -> None:
        """
        Whether C{hello}, the answer of C{address}, admits it.

        @raise AdmissionError: if not.
        """
        if self.keyring.enabled and hello.signed_by is None:
            raise AdmissionError(f"{address} did not answer with a valid MAC of this cluster's key")
        if expected_id is not None and hello.node_id != expected_id:
            raise AdmissionError(f"{address} did not answer as {expected_id}")
        if hello.cluster != self.cluster:
            raise AdmissionError(f"{address} did not answer as a node of this cluster")
        if hello.node_id == self.self_id:
            raise AdmissionError(f"{address} is this node")

    def admit(self, address: str, hello: wire.Hello, now: float, *, force: bool = False) -> str:
        """
        Admit the node that answered C{hello} (checked by L{check}).

        @return: its node id.
        @raise AdmissionError: if it is quarantined (and not C{force}).
        """
        why = self.refusal(hello.node_id, now, force=force)
        if why is not None:
            raise AdmissionError(why)
        if force:
            self.membership.lift_quarantine(hello.node_id)
        self.membership.heard_from(hello.node_id, now, hello.incarnation)
        return hello.node_id

    def done(self, address: str, admitted: bool, now: float, *, penalize: bool = True) -> None:
        """
        A probe of C{address} for admission ended.

        @param penalize: a failure keeps it from being probed again for
            C{retry_after} seconds (names heard of, not an operator's).
        """
        if self._probing[address] > 1:
            self._probing[address] -= 1
        else:
            self._probing.pop(address, None)
        self.counts["admitted" if admitted else "rejected"] += 1
        if admitted:
            self._rejected_until.pop(address, None)
        elif penalize:
            self._rejected_until[address] = now + self.retry_after

    def expire(self, now: float) -> None:
        for address, until in list(self._rejected_until.items()):
            if until <= now:
                del self._rejected_until[address]
