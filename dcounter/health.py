# -*- test-case-name: tests.test_health -*-
"""
The health checker: probes peers, and admits new ones.

Every C{interval} seconds it asks each known peer (dead ones too, so that
they come back as soon as they answer) and each seed not yet known who it
is.  The answers go to the membership table, which decides alive, suspect and
dead.  Admission is a probe with conditions, and L{dcounter.admission}
decides them: this module only makes the probes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, TimeoutError, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from dcounter import wire
from dcounter.admission import Admission, AdmissionError
from dcounter.client import PeerClient
from dcounter.membership import Membership, PeerState
from dcounter.metrics import Metrics
from dcounter.node import Node


class HealthChecker(TimerService):
    log = Logger()

    MAX_CANDIDATES = Admission.MAX_CANDIDATES

    def __init__(
        self,
        node: Node,
        membership: Membership,
        client: PeerClient,
        clock: Any,
        *,
        interval: float = 1.0,
        seeds: Iterable[str] = (),
        metrics: Metrics | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.node = node
        self.metrics = metrics if metrics is not None else Metrics()
        self.membership = membership
        self.client = client
        super().__init__(interval, self.check_once)
        self.clock = clock  # TimerService's, and ours
        self.seeds = list(seeds)
        self._probing: set[str] = set()
        self._admitting: dict[str, Deferred[str]] = {}
        self._seed_ids: dict[str, str] = {}
        self._contacted: set[str] = set()
        self._seed_failures: dict[str, int] = {}
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
        One round: expire old entries, probe every known peer, retry seeds.
        Never raises: an error here would end the loop for good.
        """
        try:
            now = self.clock.seconds()
            self.membership.expire(now)
            self.admission.expire(now)
            for peer in self.membership.known():
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
                interval=self.step,
            )

    def _probe(self, peer: str) -> None:
        self._probing.add(peer)
        started = self.clock.seconds()
        d = maybeDeferred(self.client.hello, peer)

        def answered(hello: wire.Hello) -> None:
            now = self.clock.seconds()
            try:
                self.admission.check(peer, hello, expected_id=peer)
            except AdmissionError:
                self.metrics.probe("wrong_node", now - started)
                self.membership.failed(peer, now)
            else:
                self.metrics.probe("ok", now - started)
                self.membership.heard_from(peer, now, hello.incarnation)

        def failed(reason: Failure) -> None:
            now = self.clock.seconds()
            # Cut off at its deadline (the client reports a cancelled request).
            timed_out = reason.check(TimeoutError) or now - started >= self.client.timeout
            self.metrics.probe("timeout" if timed_out else "failed", now - started)
            self.membership.failed(peer, now)

        d.addCallbacks(answered, failed)
        d.addErrback(lambda f: self.log.failure("probe of {peer} failed", f, peer=peer))
        d.addBoth(lambda _: self._probing.discard(peer))

    def consider(self, address: str, *, contact: bool = False) -> None:
        """
        A node id heard of (through gossip, discovery or DNS): admit it if it
        answers as itself and L{Admission} agrees that it is worth a probe.

        @param contact: the node itself just contacted us over HTTP: probe
            it even if an earlier probe failed (it was not up yet).
        """
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
            return result

        return d.addBoth(done)
