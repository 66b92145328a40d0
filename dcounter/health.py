# -*- test-case-name: tests.test_health -*-
"""
The health checker: probes peers as SWIM asks, and admits new ones.

Every C{interval} seconds (the protocol period) it probes the peers
L{dcounter.swim.Swim} picks, through others when they do not answer, and
retries each seed not yet known.  The outcomes, and the rumors piggybacked on
the answers, go to L{dcounter.swim.Swim}, which decides alive, suspect and
dead.  Admission is a probe with conditions, and L{dcounter.admission}
decides them: this module only makes the probes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dcounter import wire
from dcounter.admission import Admission, AdmissionError, NotMember
from dcounter.client import PeerClient
from dcounter.membership import Membership, PeerState
from dcounter.metrics import Metrics
from dcounter.node import Node
from dcounter.swim import Swim


class HealthChecker:
    """
    Not a service of its own: L{dcounter.tap} runs L{check_once} every
    period and L{tick} a few times a period, each in a C{TimerService}.
    """

    log = Logger()

    MAX_CANDIDATES = Admission.MAX_CANDIDATES

    def __init__(
        self,
        node: Node,
        membership: Membership,
        client: PeerClient,
        clock: IReactorTime,
        *,
        interval: float = 1.0,
        seeds: Iterable[str] = (),
        metrics: Metrics | None = None,
        admission: Admission | None = None,
        swim: Swim | None = None,
    ) -> None:
        self.node = node
        self.metrics = metrics if metrics is not None else Metrics()
        self.membership = membership
        self.client = client
        self.interval = interval
        self.clock = clock
        self.seeds = list(seeds)
        self.swim = swim or Swim(
            membership, node.identity.incarnation, period=interval, probe_timeout=client.timeout
        )
        self._probing: set[str] = set()
        self._admitting: dict[str, Deferred[str]] = {}
        self._seed_ids: dict[str, str] = {}
        self._contacted: set[str] = set()
        self._seed_failures: dict[str, int] = {}
        self._next_call: Any = None
        #: Whether names heard of may start admission probes: not once the
        #: node stops (L{stop_admitting}).
        self.admitting = True
        self.admission = admission or Admission(membership, node.cluster, retry_after=3 * interval)
        membership.subscribe(self._log_change)

    @property
    def admissions(self) -> dict[str, int]:
        """
        Admissions that succeeded, that failed, and names dropped unprobed.
        """
        return self.admission.counts

    def _log_change(self, peer: str, old: PeerState | None, new: PeerState | None) -> None:
        self.log.info(
            "peer {peer}: {old} -> {new}",
            peer=peer,
            old=old.value if old else "unknown",
            new=new.value if new else "forgotten",
        )

    def check_once(self) -> None:
        """
        One protocol period: expire old entries, probe the peers SWIM picks
        (one live, one dead), retry seeds.  Never raises: an error here
        would end the loop for good.
        """
        try:
            now = self.clock.seconds()
            self.membership.expire(now)
            self.admission.expire(now)
            self.swim.tick(now)
            for peer in self.swim.targets():
                if peer not in self._probing:
                    self._probe(peer)
            for seed in self.seeds:
                known = self._seed_ids.get(seed)
                if (known is None or known not in self.membership) and seed not in self._admitting:
                    self.admit(seed).addCallbacks(
                        self._seed_answered, self._seed_failed, callbackArgs=(seed,), errbackArgs=(seed,)
                    )
        except Exception:
            self.log.failure("health check round failed")

    def tick(self) -> None:
        """
        End the suspicions whose time is up.  Never raises.
        """
        try:
            self.swim.tick(self.clock.seconds())
        except Exception:
            self.log.failure("suspicion check failed")

    #: A seed is reported unreachable after this many failed tries in a row:
    #: seeds started at the same time as this node are not up yet at first.
    SEED_PATIENCE = 3

    def _seed_answered(self, node_id: str, seed: str) -> None:
        if self._seed_failures.pop(seed, 0) >= self.SEED_PATIENCE:
            self.log.info("seed {seed} answered as {node_id}", seed=seed, node_id=node_id)

    def _seed_failed(self, reason: Failure, seed: str) -> None:
        # One line per seed until it answers, not one per retry.
        failures = self._seed_failures[seed] = self._seed_failures.get(seed, 0) + 1
        if failures == self.SEED_PATIENCE:
            self.log.warn(
                "seed unreachable: {why} (retrying every {interval} s until it answers)",
                seed=seed,
                why=reason.value.for_log()
                if isinstance(reason.value, AdmissionError)
                else reason.getErrorMessage(),
                interval=self.interval,
            )

    async def _reach(self, peer: str, timeout: float) -> wire.Hello | str:
        """
        Probe C{peer} once: its answer as itself, or why not (a metrics
        outcome: C{wrong_node}, C{timeout} or C{failed}).
        """
        started = self.clock.seconds()
        try:
            hello = await self.client.hello(peer, timeout=timeout)
            self.admission.check(peer, hello, expected_id=peer)
        except AdmissionError:
            outcome = "wrong_node"
        except Exception as e:
            # Cut off at its deadline (the client reports a cancelled request).
            late = isinstance(e, TimeoutError | CancelledError) or self.clock.seconds() - started >= timeout
            outcome = "timeout" if late else "failed"
        else:
            self.metrics.probe("ok", self.clock.seconds() - started)
            return hello
        self.metrics.probe(outcome, self.clock.seconds() - started)
        return outcome

    def _probe(self, peer: str) -> None:
        self._probing.add(peer)
        d = Deferred.fromCoroutine(self._probe_cycle(peer))
        d.addErrback(lambda f: self.log.failure("probe of {peer} failed", f, peer=peer))
        d.addBoth(lambda _: self._probing.discard(peer))

    async def _probe_cycle(self, peer: str) -> None:
        """
        SWIM's probe: directly, then through k helpers; only if neither
        reaches C{peer} is it reported unreachable (and so suspected).
        """
        timeout = self.swim.probe_timeout()
        answer = await self._reach(peer, timeout)
        if isinstance(answer, wire.Hello):
            self._heard(peer, answer)
            return
        known = self.membership.get(peer)
        if known is None:
            return
        helpers = self.swim.helpers(peer) if known.state is not PeerState.DEAD else []
        request = wire.ProbeRequest(self.node.node_id, peer, self.swim.rumors() if helpers else ())
        asked = self.clock.seconds()
        results = await DeferredList(
            [self.client.probe_through(h, request, timeout) for h in helpers], consumeErrors=True
        )
        acks = nacks = 0
        now = self.clock.seconds()
        for (ok, result), helper in zip(results, helpers, strict=True):
            if ok:
                self._rumors_from(helper, result.rumors)
                acks += result.ack
                nacks += not result.ack
        if helpers:
            self.metrics.probe("indirect_ok" if acks else "indirect_failed", now - asked)
        if acks:
            self.swim.acked(peer, now)
        elif known.state is PeerState.DEAD:
            self.membership.failed(peer, now)
        else:
            self.swim.unreachable(peer, now, asked=len(helpers), nacks=nacks)

    def _heard(self, peer: str, hello: wire.Hello) -> None:
        now = self.clock.seconds()
        self._rumors_from(peer, hello.rumors)
        self.swim.answered(peer, now, hello.incarnation, hello.generation)

    def _rumors_from(self, sender: str, rumors: tuple[wire.Rumor, ...]) -> None:
        """
        Rumors a peer sent: taken only from a member.
        """
        if rumors and self.admission.is_member(sender):
            self.swim.received(rumors, self.clock.seconds())

    async def probe_for(self, request: wire.ProbeRequest) -> wire.ProbeAnswer:
        """
        A member asks us (POST /probe) to probe C{request.target} for it:
        an ack if it answers as itself within most of the asker's timeout,
        else a nack.  Only members' requests, about members, are taken.

        @raise NotMember: the asker, or the target, is not a member.
        """
        if not self.admission.is_member(request.sender):
            raise NotMember(f"{request.sender} is not a member admitted by this node")
        if not self.admission.is_member(request.target):
            raise NotMember(f"{request.target} is not a member admitted by this node")
        self._rumors_from(request.sender, request.rumors)
        # Lifeguard: answer (a nack) before the asker gives up on us.
        answer = await self._reach(request.target, 0.8 * self.swim.probe_timeout())
        if isinstance(answer, wire.Hello):
            self._heard(request.target, answer)
        return wire.ProbeAnswer(ack=isinstance(answer, wire.Hello), rumors=self.swim.rumors())

    def consider(self, address: str, *, contact: bool = False) -> None:
        """
        A node id heard of (through gossip, discovery or DNS): admit it if it
        answers as itself and L{Admission} agrees that it is worth a probe.

        @param contact: the node itself just contacted us over HTTP: probe
            it even if an earlier probe failed (it was not up yet).
        """
        if not self.admitting:
            return
        if address in self._admitting:
            if contact:  # the probe in flight may have started before it was up
                self._contacted.add(address)
            return
        if not self.admission.should_probe(address, self.clock.seconds(), contact=contact):
            return

        def rejected(reason: Any) -> None:
            why = reason.value.for_log() if isinstance(reason.value, AdmissionError) else reason.value
            self.log.debug("not admitting {address}: {why}", address=address, why=why)

        self.admit(address, expected_id=address).addErrback(rejected)

    def _schedule_next_candidates(self) -> None:
        # Not at once: a probe may end inside admit() (a request that fails
        # before it is sent), and each taking the next from there would
        # nest one call deeper per waiting name.
        if self._next_call is None and self.admitting:
            self._next_call = self.clock.callLater(0, self._next_candidates)

    def start_admitting(self) -> None:
        """
        Names heard of may start admission probes again, beginning with
        those that waited for a slot.
        """
        self.admitting = True
        self._schedule_next_candidates()

    def stop_admitting(self) -> None:
        """
        The node is stopping: names heard of from now on (in the answers to
        its last pushes, say) start no probe, nor do those waiting for one.
        Probes out already end as they will.
        """
        self.admitting = False
        if self._next_call is not None:
            self._next_call.cancel()
            self._next_call = None

    def _next_candidates(self) -> None:
        """
        Probe slots are free: take the names that waited for one, in turn,
        until the slots are full again or none waits.
        """
        self._next_call = None
        while self.admission.room():
            waiting = self.admission.next_waiting(self.clock.seconds())
            if waiting is None:
                return
            address, contact = waiting
            self.consider(address, contact=contact)

    def admit(self, address: str, expected_id: str | None = None, *, force: bool = False) -> Deferred[str]:
        """
        Probe C{address}; admit it if L{Admission} accepts its answer.

        @param force: an operator asks: admit it even if it was removed
            recently, and do not hold a failure against it.
        @return: a Deferred firing with its node id, or failing with
            L{AdmissionError}.
        """

        async def go() -> str:
            try:
                # Not a liveness probe: a slow answer is still an answer.
                hello = await self.client.hello(address, timeout=3 * self.client.timeout)
            except Exception as e:
                # What the host answered is logged, never repeated to a
                # client: /register must not be a port scanner.
                raise AdmissionError(f"{address} did not answer as a dcounter node", detail=str(e)) from None
            self.admission.check(address, hello, expected_id)
            self._seed_ids[address] = hello.node_id
            return self.admission.admit(address, hello, self.clock.seconds(), force=force)

        self.admission.probing(address)
        d = Deferred.fromCoroutine(go())
        self._admitting[address] = d

        def done(result: object) -> object:
            if self._admitting.get(address) is d:
                del self._admitting[address]
            failed = isinstance(result, Failure)
            self.admission.done(address, not failed, self.clock.seconds(), penalize=not force)
            if address in self._contacted:
                # It contacted us while this probe was out: if the probe
                # failed, it started before the node was up.  Once more.
                self._contacted.discard(address)
                if failed:
                    self.consider(address, contact=True)
            self._schedule_next_candidates()
            return result

        return d.addBoth(done)
