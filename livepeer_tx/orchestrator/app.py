# -*- test-case-name: tests.test_ingress -*-
"""
The orchestrator application object: pool, dispatcher, store and metrics, and
the builders of its two web roots.
"""

import os
import time
from dataclasses import dataclass

from twisted.application import service
from twisted.internet import defer
from twisted.application.internet import TimerService
from twisted.logger import Logger
from twisted.web import resource

from livepeer_tx import __version__
from livepeer_tx.admin import HealthResource, addActions, drainActions, parseMaxSessions
from livepeer_tx.ethaddress import checksumAddress
from livepeer_tx.metrics import OrchestratorMetrics
from livepeer_tx.orchestrator.authtoken import KEY_BYTES, AuthTokens
from livepeer_tx.orchestrator.dispatch import Dispatcher
from livepeer_tx.orchestrator.grpctranscoders import OFFCHAIN_ORCH_ID, RESULTS_PATH, GRPCTranscoderService
from livepeer_tx.orchestrator.ingress import SegmentResource, SegmentService
from livepeer_tx.orchestrator.orchservice import OrchestratorService
from livepeer_tx.orchestrator.registration import (
    DEFAULT_PING_INTERVAL, FailedAttemptLimiter, makeTranscoderResource, maxResultBytes,
)
from livepeer_tx.orchestrator.routing import RETIRING_DRAIN, TranscoderPool
from livepeer_tx.orchestrator.store import RenditionStore, StreamResource
from livepeer_tx.rpc import ServiceRegistry
from livepeer_tx.web import BoundedSite, JSONResource, makeCLIRoot
from livepeer_tx import wsproto


SHUTDOWN_CLOSE_SECONDS = 2.0
# How long a drain waits, after the last answer, for gateways to download
# the renditions it named.
RENDITION_PICKUP_SECONDS = 5.0


class Orchestrator(service.MultiService):
    """
    Holds the orchestrator's state and reacts to transcoders coming and going.

    @param clock: an L{IReactorTime}.
    @param serviceURL: the public base URL advertised to gateways.
    @param maxSessions: a session cap, or L{None} for C{auto}.
    @param maxSessionsPerAddress: a cap on the sessions of one gateway
        address when work is free, or L{None} for C{auto} (half the session
        limit).
    @ivar draining: whether it refuses new segments (see L{startDraining}).
    @ivar segmentsInFlight: segments received and not answered yet.
    @ivar registrations: transcoder registrations since the start.
    @ivar drain: the L{livepeer_tx.lifecycle.Drain} the CLI port's
        C{/drain} and C{/resume} act on (set by the daemon's assembly).
    @ivar transcoderFactory: the WebSocket factory behind C{/transcoder}
        (its C{autoPingInterval} and C{autoPingTimeout} are
        C{--transcoderPingInterval}), once L{makePublicRoot} has built it,
        else L{None}.
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
        self.draining = False
        self.segmentsInFlight = 0
        self.registrations = 0
        self.drain = None
        self.transcoderFactory = None
        self._lastAnswer = None
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
        self.registrations += 1
        self._autoSessionLimitChanged()

    def transcoderLost(self, transcoder):
        """
        A transcoder disconnected: its tasks move to other transcoders.
        """
        self.dispatcher.transcoderLost(transcoder)
        self._autoSessionLimitChanged()

    def transcoderDraining(self, transcoder):
        """
        A transcoder asked to drain: it gets no new segments, its sessions
        move with their next segments, and it closes once it has answered
        the segments it holds.
        """
        if self.pool.retire(transcoder, RETIRING_DRAIN):
            self._log.info(
                "Transcoder={transcoder} is draining: no new segments for it; {tasks} segment(s) in flight on it",
                transcoder=transcoder.address, tasks=transcoder.tasksInFlight)
            self._autoSessionLimitChanged()

    def transcoderCapacityChanged(self, transcoder, capacity):
        """
        A transcoder announced a new capacity (its operator changed it).
        """
        previous, transcoder.capacity = transcoder.capacity, capacity
        if previous == capacity:
            return
        self._log.info("Transcoder={transcoder} changed its capacity from {previous} to {capacity}",
                       transcoder=transcoder.address, previous=previous, capacity=capacity)
        self._autoSessionLimitChanged()

    def _autoSessionLimitChanged(self):
        # The transcoders' capacity changed: with maxSessions auto, so did the limit.
        if self.pool.maxSessions is None:
            self._log.info("Updated session limit to {limit}", limit=self.pool.sessionLimit)

    def setMaxSessions(self, limit, source):
        """
        Change the session cap at run time.

        @param limit: a number of sessions, or L{None} for C{auto}.
        @param source: who asked, for the log (C{the CLI port}, C{the configuration}).
        """
        self.pool.maxSessions = limit
        self._log.info("maxSessions set to {value} by {source}", value="auto" if limit is None else limit,
                       source=source)
        self._log.info("Updated session limit to {limit}", limit=self.pool.sessionLimit)

    def segmentStarted(self):
        """
        A gateway's segment arrived: it counts as in flight until
        L{segmentEnded}.
        """
        self.segmentsInFlight += 1

    def segmentEnded(self):
        """
        A segment was answered (or refused, or its gateway went away).
        """
        self.segmentsInFlight -= 1
        self._lastAnswer = self.clock.seconds()

    # The drain target (see livepeer_tx.lifecycle.Drain).

    def startDraining(self):
        """
        Refuse new segments, and new sessions from C{GetOrchestrator}.
        """
        self.draining = True
        self.pool.draining = True

    def stopDraining(self):
        """
        Take segments again.
        """
        self.draining = False
        self.pool.draining = False

    def isDrained(self):
        """
        Whether every segment taken has been answered and its renditions
        downloaded (or L{RENDITION_PICKUP_SECONDS} have passed since the last
        answer).
        """
        if self.segmentsUnanswered:
            return False
        if not self.store.unfetched or self._lastAnswer is None:
            return True
        return self.clock.seconds() - self._lastAnswer >= RENDITION_PICKUP_SECONDS

    @property
    def segmentsUnanswered(self):
        """
        The segments taken and not answered yet: those the gateways sent
        (L{segmentStarted}), or at least those the dispatcher holds.
        """
        return max(self.segmentsInFlight, self.dispatcher.pendingSegments)

    def describeWork(self):
        """
        What a drain waits for, for its log lines.
        """
        return (f"{self.segmentsUnanswered} segment(s) in flight and {self.store.unfetched} rendition(s) not "
                "downloaded")

    def statusLine(self):
        """
        A one-line summary of the state, for the log (SIGUSR2).
        """
        pool = self.pool
        return (f"transcoders={len(pool.transcoders)} capacity={pool.totalCapacity} sessions={pool.sessionCount}"
                f"/{pool.sessionLimit} segmentsInFlight={self.segmentsUnanswered}"
                f" draining={'yes' if self.draining else 'no'}"
                f" uptime={round(self.wallClock() - self.startedAt)}s")

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
            "AcceptingWork": (not self.draining and bool(self.pool.transcoders)
                              and self.pool.sessionCount < self.pool.sessionLimit),
            "Draining": self.draining,
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
            "SegmentsInFlight": self.segmentsUnanswered,
            "Drained": self.draining and self.drain is not None and self.drain.drained,
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

    def endSession(self, sessionId):
        """
        A gateway ended a session (C{EndTranscodingSession}): free it, and
        tell its transcoder to drop what it keeps for it.
        """
        transcoder = self.pool.release(sessionId)
        if transcoder is not None and transcoder.live:
            transcoder.link.endSession(sessionId)
        self._log.info("Transcoding session ended by the Broadcaster for sessionID={sessionId}", sessionId=sessionId)

    def makePublicRoot(self, reactor, secret, payments, maxSegmentBytes, pingInterval=DEFAULT_PING_INTERVAL,
                       tokens=None, signer=None):
        """
        What the public port serves: the resources C{/segment},
        C{/stream/}, C{/transcodeResults}, C{/status}, C{/healthz} and
        C{/transcoder} (WebSocket), and the gRPC services C{net.Orchestrator}
        (gateways) and C{net.Transcoder} (stock go-livepeer transcoders).

        @param tokens: the L{AuthTokens} of gateway sessions (default: under a
            random key, so they die with the process).
        @param signer: the node's L{livepeer_tx.chain.identity.NodeSigner} on
            chain, else L{None}.
        @return: a L{PublicPort}.
        """
        if tokens is None:
            tokens = AuthTokens(os.urandom(KEY_BYTES), wallClock=self.wallClock)
        # One limiter for both kinds of transcoder: failures count together.
        limiter = FailedAttemptLimiter(self.clock)
        # Results carry every rendition of a segment: see maxResultBytes.
        resultBytes = maxResultBytes(maxSegmentBytes)
        registry = ServiceRegistry()
        orchestrator = OrchestratorService(self.pool, tokens, self.serviceURL, payments, self.endSession, signer=signer)
        orchestrator.register(registry)
        orchId = OFFCHAIN_ORCH_ID if signer is None else checksumAddress(signer.address)
        transcoders = GRPCTranscoderService(self, secret, limiter, maxResultBytes=resultBytes, orchId=orchId)
        transcoders.addTo(registry)
        segments = SegmentService(self, payments, tokens, orchestrator, maxSegmentBytes, signer=signer)

        root = resource.Resource()
        segmentResource = SegmentResource(segments)
        root.putChild(b"segment", segmentResource)
        root.putChild(b"stream", transcoders.streamResource(StreamResource(self.store)))
        root.putChild(RESULTS_PATH, transcoders.resultsResource)
        root.putChild(b"status", JSONResource(self.publicStatus))
        root.putChild(b"healthz", HealthResource(lambda: self.draining))
        gate, self.transcoderFactory = makeTranscoderResource(
            self, reactor, secret, limiter, maxMessageBytes=resultBytes, pingInterval=pingInterval)
        root.putChild(wsproto.RESOURCE_PATH, gate)
        return PublicPort(root, registry, {b"/" + RESULTS_PATH: resultBytes}, segments, orchestrator, transcoders,
                          bodyStreams={b"/segment": segmentResource.startUpload})

    def makeCLIRoot(self, reactor, monitor):
        """
        The CLI port's resource tree: full C{/status}, C{/metrics} with
        C{--monitor} (rendered on C{reactor}'s thread pool), and the actions
        C{POST /drain}, C{POST /resume} and C{POST /setMaxSessions}.
        """
        root = makeCLIRoot(reactor, self.fullStatus, self.metrics.registry if monitor else None)
        return addActions(root, {**drainActions(lambda: self.drain, self.fullStatus),
                                 "setMaxSessions": self._setMaxSessionsAction})

    def _setMaxSessionsAction(self, fields):
        limit = parseMaxSessions(fields.get("maxSessions"), allowAuto=True)
        self.setMaxSessions(limit, "the CLI port")
        return f"maxSessions set to {'auto' if limit is None else limit}; session limit {self.pool.sessionLimit}"


@dataclass
class PublicPort:
    """
    What the orchestrator's public port serves.

    @ivar root: the resource tree, for a L{livepeer_tx.web.BoundedSite}.
    @ivar registry: the gRPC L{ServiceRegistry}, for the same site.
    @ivar bodyLimits: the paths whose request bodies have their own limit
        (the site's C{bodyLimits}).
    @ivar segments: the L{SegmentService} behind C{/segment}.
    @ivar orchestrator: the L{OrchestratorService} (C{net.Orchestrator}).
    @ivar transcoders: the L{GRPCTranscoderService} (C{net.Transcoder}).
    @ivar bodyStreams: the paths whose bodies are handed over as they arrive
        (the site's C{bodyStreams}): C{/segment}, whose segments go to
        transcoders as they arrive.
    """

    root: resource.Resource
    registry: ServiceRegistry
    bodyLimits: dict
    segments: SegmentService
    orchestrator: OrchestratorService
    transcoders: GRPCTranscoderService
    bodyStreams: dict = None

    def makeSite(self, **options):
        """
        The L{BoundedSite} that serves this port: its resources and gRPC
        services, request bodies up to the largest segment (with the limits
        of L{bodyLimits}), the L{bodyStreams} handed over as they arrive.

        @param options: the site's other arguments (C{hashBodies},
            C{limits}, C{uploadBudget}, C{metrics}, C{reactor}, ...).
        """
        return BoundedSite(self.root, maxBodyBytes=self.segments.maxSegmentBytes, bodyLimits=self.bodyLimits,
                           bodyStreams=self.bodyStreams, grpcRegistry=self.registry, **options)
