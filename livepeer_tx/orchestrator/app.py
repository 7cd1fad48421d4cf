# -*- test-case-name: tests.test_ingress -*-
"""
The orchestrator application object: pool, dispatcher, store and metrics, and
the builders of its two web roots.
"""

import time

from twisted.application import service
from twisted.internet import defer
from twisted.application.internet import TimerService
from twisted.logger import Logger
from twisted.web import resource

from livepeer_tx import __version__
from livepeer_tx.metrics import OrchestratorMetrics
from livepeer_tx.orchestrator.dispatch import Dispatcher
from livepeer_tx.orchestrator.ingress import SegmentResource
from livepeer_tx.orchestrator.registration import (
    DEFAULT_PING_INTERVAL, FailedAttemptLimiter, makeTranscoderResource, maxResultBytes,
)
from livepeer_tx.orchestrator.routing import TranscoderPool
from livepeer_tx.orchestrator.store import RenditionStore, StreamResource
from livepeer_tx.web import JSONResource, makeCLIRoot
from livepeer_tx import wsproto


SHUTDOWN_CLOSE_SECONDS = 2.0


class Orchestrator(service.MultiService):
    """
    Holds the orchestrator's state and reacts to transcoders coming and going.

    @param clock: an L{IReactorTime}.
    @param serviceURL: the public base URL advertised to gateways.
    @param maxSessions: a session cap, or L{None} for C{auto}.
    @param maxSessionsPerAddress: a cap on the sessions of one gateway
        address when work is free, or L{None} for C{auto} (half the session
        limit).
    """

    _log = Logger()

    def __init__(self, clock, serviceURL, maxSessions=None, storeBytes=512 * 1024 * 1024,
                 sessionIdleTimeout=70.0, wallClock=time.time, maxSessionsPerAddress=None):
        super().__init__()
        self.clock = clock
        self.wallClock = wallClock
        self.serviceURL = serviceURL.rstrip("/")
        self.pool = TranscoderPool(clock, sessionIdleTimeout, maxSessions, maxSessionsPerAddress)
        self.dispatcher = Dispatcher(self.pool, clock)
        self.store = RenditionStore(maxBytes=storeBytes)
        self.metrics = OrchestratorMetrics(self.pool)
        self.startedAt = wallClock()
        housekeeping = TimerService(5.0, self._housekeeping)
        housekeeping.clock = clock
        housekeeping.setServiceParent(self)

    def stopService(self):
        """
        Tell every transcoder we are going away, so they reconnect to our
        next start instead of waiting for a ping timeout.
        """
        closing = []
        for transcoder in list(self.pool.transcoders):
            try:
                closing.append(transcoder.link.closeForShutdown())
            except Exception:
                self._log.failure("Could not close transcoder={transcoder}", transcoder=transcoder.address)
        super().stopService()
        if not closing:
            return None
        done = defer.DeferredList(closing, consumeErrors=True)
        timeout = self.clock.callLater(SHUTDOWN_CLOSE_SECONDS, done.cancel)
        done.addBoth(lambda _: timeout.active() and timeout.cancel())
        return done

    def transcoderRegistered(self, transcoder):
        """
        A transcoder completed registration: it may take work now.
        """
        self.pool.add(transcoder)
        if self.pool.maxSessions is None:
            self._log.info("Updated session limit to {limit}", limit=self.pool.sessionLimit)

    def transcoderLost(self, transcoder):
        """
        A transcoder disconnected: its tasks move to other transcoders.
        """
        self.dispatcher.transcoderLost(transcoder)
        if self.pool.maxSessions is None:
            self._log.info("Updated session limit to {limit}", limit=self.pool.sessionLimit)

    def _housekeeping(self):
        try:
            for sessionId, transcoder in self.pool.expireIdleSessions():
                self._log.info("Session idle, releasing sessionID={sessionId}", sessionId=sessionId)
                if transcoder is not None and transcoder.live:
                    transcoder.link.endSession(sessionId)
        except Exception:
            self._log.failure("Housekeeping failed; will run again")

    def publicStatus(self):
        """
        The public C{/status}: nothing secret, nothing per transcoder.
        """
        return {
            "Version": __version__,
            "RegisteredTranscodersNumber": len(self.pool.transcoders),
            "TotalCapacity": self.pool.totalCapacity,
            "TotalLoad": self.pool.totalLoad,
            "AcceptingWork": bool(self.pool.transcoders) and self.pool.sessionCount < self.pool.sessionLimit,
        }

    def fullStatus(self):
        """
        The CLI port's C{/status}: every transcoder's details.
        """
        status = self.publicStatus()
        pool = self.pool
        status.update({
            "ServiceURI": self.serviceURL,
            "MaxSessions": "auto" if pool.maxSessions is None else pool.maxSessions,
            "SessionLimit": pool.sessionLimit,
            "MaxSessionsPerAddress": "auto" if pool.maxSessionsPerSource is None else pool.maxSessionsPerSource,
            "SessionLimitPerAddress": pool.sourceSessionLimit,
            "Sessions": pool.sessionCount,
            "CoolingOffTranscoders": pool.coolingOffCount,
            "UptimeSeconds": round(self.wallClock() - self.startedAt, 1),
            "StoredRenditions": len(self.store),
            "StoredBytes": self.store.totalBytes,
            "RegisteredTranscoders": [
                {"Address": t.address, "Capacity": t.capacity} for t in self.pool.transcoders
            ],
            "transcoders": [self._describeTranscoder(t) for t in self.pool.transcoders],
        })
        return status

    def _describeTranscoder(self, transcoder):
        now = self.clock.seconds()
        description = transcoder.describe(now)
        until = transcoder.health.coolingOffUntil
        # On the wall clock, like connectedSince.
        description["coolingOffUntil"] = (
            round(self.wallClock() + until - now, 1) if until is not None and until > now else None)
        return description

    def makePublicRoot(self, reactor, secret, payments, maxSegmentBytes, pingInterval=DEFAULT_PING_INTERVAL):
        """
        The public port's resource tree: C{/segment}, C{/stream/}, C{/status},
        C{/transcoder} (WebSocket) and C{/healthz}.
        """
        root = resource.Resource()
        root.putChild(b"segment", SegmentResource(self, payments, maxSegmentBytes))
        root.putChild(b"stream", StreamResource(self.store))
        root.putChild(b"status", JSONResource(self.publicStatus))
        root.putChild(b"healthz", JSONResource(lambda: {}))
        limiter = FailedAttemptLimiter(self.clock)
        # Results carry every rendition of a segment: see maxResultBytes.
        gate, self.transcoderFactory = makeTranscoderResource(
            self, reactor, secret, limiter, maxMessageBytes=maxResultBytes(maxSegmentBytes),
            pingInterval=pingInterval)
        root.putChild(wsproto.RESOURCE_PATH, gate)
        return root

    def makeCLIRoot(self, monitor):
        """
        The CLI port's resource tree: full C{/status}, C{/metrics} with C{--monitor}.
        """
        return makeCLIRoot(self.fullStatus, self.metrics.registry if monitor else None)
