# -*- test-case-name: tests.test_tap -*-
"""
The node's top service: it stops its parts one after another.
"""

from __future__ import annotations

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger


class StopInOrder(MultiService):
    """
    A MultiService whose children stop in reverse order, each only once the
    one started after it has finished stopping (MultiService stops them all
    at once).  So the API stops answering (503) and the HTTP port stops
    taking connections before the last push to peers, and the store
    commits the last write before the process exits.
    """

    log = Logger()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)

        async def stop() -> None:
            for service in reversed(list(self)):
                try:
                    await maybeDeferred(service.stopService)
                except Exception:
                    self.log.failure("stopping {service} failed", service=service)

        return Deferred.fromCoroutine(stop())
