# -*- test-case-name: tests.test_routing -*-
"""
Which transcoder gets a session: capacity, load, health and session affinity.

Nothing here knows about sockets. A L{TranscoderPool} holds L{RemoteTranscoder}
records; the WebSocket edge adds and removes them, the segment dispatcher asks
for a transcoder per session and reports how each task went.
"""

import math

from twisted.logger import Logger

from livepeer_tx.capabilities import parseReport

NO_TRANSCODERS = "no transcoders available"
ORCHESTRATOR_CAPPED = "OrchestratorCapped"

# How a task can fail on a transcoder (the label of the failures metric).
FAILURE_ERROR = "error"
FAILURE_TIMEOUT = "timeout"
FAILURE_LOST = "lost"
FAILURE_BAD_RESULT = "bad result"
FAILURE_KINDS = (FAILURE_ERROR, FAILURE_TIMEOUT, FAILURE_LOST, FAILURE_BAD_RESULT)

# Health states shown in /status.
HEALTHY = "healthy"
FAILING = "failing"
COOLING_OFF = "coolingOff"
PROBING = "probing"

# Why a transcoder takes no new work while it finishes what it holds.
RETIRING_DRAIN = "draining"
RETIRING_SECRET = "stale secret"


class RoutingError(Exception):
    """
    No transcoder can take this session; the message is go-livepeer's error text.
    """


class TranscoderHealth:
    """
    The recent track record of one transcoder.

    @ivar consecutiveFailures: failures since its last success.
    @ivar consecutiveTimeouts: how many of those were timeouts.
    @ivar coolOffs: cool-off periods since its last success (each one twice
        as long as the one before).
    @ivar coolingOffUntil: clock time its cool-off ends, or L{None}. Once that
        time has passed the transcoder is on probation until its next outcome.
    """

    def __init__(self):
        self.consecutiveFailures = 0
        self.consecutiveTimeouts = 0
        self.coolOffs = 0
        self.coolingOffUntil = None

    def state(self, now):
        """
        One of L{HEALTHY}, L{FAILING}, L{COOLING_OFF} or L{PROBING}.
        """
        if self.coolingOffUntil is not None:
            return COOLING_OFF if now < self.coolingOffUntil else PROBING
        return FAILING if self.consecutiveFailures else HEALTHY


class RemoteTranscoder:
    """
    What the orchestrator knows about one registered transcoder.

    @ivar address: the peer C{ip:port}, used in logs and status.
    @ivar capacity: the number of concurrent sessions it accepts.
    @ivar sessions: the session ids currently assigned to it (its load).
    @ivar link: the edge that carries work to it, an
        L{ITranscoderLink<livepeer_tx.interfaces.ITranscoderLink>}.
    @ivar capabilities: what it offers, parsed at registration: a
        C{{capability id: capacity}} dict as
        L{livepeer_tx.capabilities.parseReport} returns it (go-livepeer's
        default set at capacity 1 when it reported nothing).
    @ivar health: its L{TranscoderHealth}.
    @ivar credentialTag: the L{Secret.tag<livepeer_tx.secret.Secret.tag>} of
        the secret it registered with, or L{None} when unknown.
    @ivar retiring: why it takes no new work (L{RETIRING_DRAIN} or
        L{RETIRING_SECRET}), or L{None} while it does.
    """

    def __init__(self, address, capacity, link=None, devices=(), version="", capabilities=None, connectedSince=0.0,
                 credentialTag=None):
        self.address = address
        self.capacity = capacity
        self.link = link
        self.devices = list(devices)
        self.version = version
        self.capabilities = parseReport(None) if capabilities is None else dict(capabilities)
        self.connectedSince = connectedSince
        self.sessions = set()
        self.tasksInFlight = 0
        self.live = True
        self.health = TranscoderHealth()
        self.credentialTag = credentialTag
        self.retiring = None

    @property
    def load(self):
        """
        The number of sessions assigned to this transcoder.
        """
        return len(self.sessions)

    def hasRoom(self):
        """
        Whether one more session fits within its capacity.
        """
        return self.load < self.capacity

    @property
    def acceptsWork(self):
        """
        Whether it may be given segments: it is connected and not retiring.
        """
        return self.live and self.retiring is None

    def describe(self, now):
        """
        A JSON-compatible description for the operator's status page.

        @param now: the pool's clock time, to tell the health state.
        """
        until = self.health.coolingOffUntil
        return {
            "address": self.address,
            "capacity": self.capacity,
            "load": self.load,
            "tasksInFlight": self.tasksInFlight,
            "devices": self.devices,
            "version": self.version,
            "connectedSince": self.connectedSince,
            "state": self.health.state(now),
            "consecutiveFailures": self.health.consecutiveFailures,
            "consecutiveTimeouts": self.health.consecutiveTimeouts,
            "coolingOffSeconds": round(max(0.0, until - now), 1) if until is not None else 0.0,
            "retiring": self.retiring,
        }

    def __repr__(self):
        return f"<RemoteTranscoder {self.address} load={self.load}/{self.capacity}>"


class TranscoderPool:
    """
    The registered transcoders, the sessions assigned to them and their health.

    A session stays on its transcoder while that transcoder is live and not
    cooling off (affinity). A new session goes to the healthiest transcoder
    with room: fewest consecutive failures first (a failing transcoder comes
    after every healthy one, whatever their load), then the lowest load
    relative to capacity, then the larger capacity.

    A transcoder with C{failureThreshold} consecutive failures is taken out of
    rotation for C{coolOffSeconds}, doubling with each further cool-off up to
    C{maxCoolOffSeconds}. After that it is on probation: it may take one
    session (the probe) before the others; a success makes it healthy again,
    a failure starts the next, longer cool-off.

    @param clock: an L{IReactorTime} used to expire idle sessions and time
        cool-offs.
    @param sessionIdleTimeout: seconds without a segment after which a session
        is released (go-livepeer uses 70 s).
    @param maxSessions: a fixed cap on concurrent sessions, or L{None} for the
        sum of the transcoders' capacities (C{--maxSessions auto}).
    @param maxSessionsPerSource: a fixed cap on the concurrent sessions of one
        source (gateway address), or L{None} for half the session limit
        (rounded up). Enforced for the sessions that name their source.
    @ivar draining: while true, no session is admitted (L{wouldExceedLimit}
        says so for every session); segments already taken still find
        transcoders, for failover too.
    """

    _log = Logger()

    def __init__(self, clock, sessionIdleTimeout=70.0, maxSessions=None, maxSessionsPerSource=None,
                 failureThreshold=3, coolOffSeconds=30.0, maxCoolOffSeconds=240.0):
        self._clock = clock
        self.sessionIdleTimeout = sessionIdleTimeout
        self.maxSessions = maxSessions
        self.maxSessionsPerSource = maxSessionsPerSource
        self.failureThreshold = failureThreshold
        self.coolOffSeconds = coolOffSeconds
        self.maxCoolOffSeconds = maxCoolOffSeconds
        self.draining = False
        self.transcoders = []
        self.failureTotals = dict.fromkeys(FAILURE_KINDS, 0)
        self._sessionOwner = {}
        self._sessionLastUsed = {}
        self._sessionSource = {}
        self._sourceSessions = {}

    @property
    def totalCapacity(self):
        """
        The sum of the capacities of the transcoders that take work (retiring
        ones do not count).
        """
        return sum(t.capacity for t in self.transcoders if t.retiring is None)

    @property
    def totalLoad(self):
        """
        The number of sessions assigned to live transcoders.
        """
        return sum(t.load for t in self.transcoders)

    @property
    def sessionLimit(self):
        """
        The current cap on concurrent sessions.
        """
        return self.totalCapacity if self.maxSessions is None else self.maxSessions

    @property
    def sourceSessionLimit(self):
        """
        The current cap on the concurrent sessions of one source.
        """
        if self.maxSessionsPerSource is not None:
            return self.maxSessionsPerSource
        return max(1, math.ceil(self.sessionLimit / 2))

    @property
    def coolingOffCount(self):
        """
        The number of transcoders out of rotation now.
        """
        now = self._clock.seconds()
        return sum(1 for t in self.transcoders if t.health.state(now) == COOLING_OFF)

    def add(self, transcoder):
        """
        Make a registered transcoder eligible for work.
        """
        self.transcoders.append(transcoder)

    def remove(self, transcoder):
        """
        Forget a transcoder that disconnected or failed; its sessions become
        unassigned so their next segments go elsewhere.

        @return: the session ids it held.
        """
        transcoder.live = False
        if transcoder in self.transcoders:
            self.transcoders.remove(transcoder)
        orphaned = set(transcoder.sessions)
        for sessionId in orphaned:
            self._forget(sessionId)
        transcoder.sessions.clear()
        return orphaned

    def retire(self, transcoder, reason):
        """
        Give C{transcoder} no new work: it keeps the segments it holds, its
        sessions are released now and go elsewhere with their next segments.

        @param reason: L{RETIRING_DRAIN} or L{RETIRING_SECRET}.
        @return: whether it was taking work until now.
        """
        if transcoder.retiring is not None:
            return False
        transcoder.retiring = reason
        for sessionId in list(transcoder.sessions):
            self.release(sessionId)
        return True

    def select(self, sessionId, exclude=(), source=None):
        """
        The transcoder that should take the next segment of C{sessionId},
        assigning the session if it has none.

        @param exclude: transcoders not to use (they just failed this segment).
        @param source: the session's source (gateway address) when sessions
            are limited per source, else L{None}.
        @raise RoutingError: no transcoder can take it.
        """
        now = self._clock.seconds()
        owner = self._sessionOwner.get(sessionId)
        if owner is not None:
            if owner.acceptsWork and owner not in exclude and owner.health.state(now) != COOLING_OFF:
                self._sessionLastUsed[sessionId] = now
                return owner
            self.release(sessionId)
        if not self.transcoders:
            raise RoutingError(NO_TRANSCODERS)
        if self._overLimit(sessionId, source):
            raise RoutingError(ORCHESTRATOR_CAPPED)
        candidates = [t for t in self.transcoders if t not in exclude and self._canTakeNewSession(t, now)]
        if not candidates:
            raise RoutingError(NO_TRANSCODERS)
        chosen = min(candidates, key=lambda t: self._rank(t, now))
        if chosen.health.state(now) == PROBING:
            self._log.info("Probing transcoder={transcoder} with sessionID={sessionId} after its cool-off",
                           transcoder=chosen.address, sessionId=sessionId)
        chosen.sessions.add(sessionId)
        self._sessionOwner[sessionId] = chosen
        self._sessionLastUsed[sessionId] = now
        if source is not None:
            self._sessionSource[sessionId] = source
            self._sourceSessions[source] = self._sourceSessions.get(source, 0) + 1
        return chosen

    def _canTakeNewSession(self, transcoder, now):
        if transcoder.retiring is not None:
            return False
        state = transcoder.health.state(now)
        if state == COOLING_OFF:
            return False
        if state == PROBING:
            return transcoder.load == 0
        return transcoder.hasRoom()

    def _rank(self, transcoder, now):
        # A transcoder on probation goes first once, so its probe happens soon.
        penalty = 0 if transcoder.health.state(now) == PROBING else transcoder.health.consecutiveFailures
        return (penalty, transcoder.load / transcoder.capacity, -transcoder.capacity)

    def hasAlternativeTo(self, transcoder, exclude=()):
        """
        Whether some other transcoder could take a new session now (so a
        failed task could be retried there).
        """
        now = self._clock.seconds()
        return any(
            t is not transcoder and t not in exclude and self._canTakeNewSession(t, now) for t in self.transcoders)

    @property
    def sessionCount(self):
        """
        The number of sessions assigned now.
        """
        return len(self._sessionOwner)

    def sessionsFrom(self, source):
        """
        The number of sessions of C{source} assigned now.
        """
        return self._sourceSessions.get(source, 0)

    def wouldExceedLimit(self, sessionId, source=None):
        """
        Whether admitting C{sessionId} now would go over the session limit or,
        when C{source} is given, over that source's limit (an existing session
        never does). While the pool is L{draining}, every session would.
        """
        if self.draining:
            return True
        return self._overLimit(sessionId, source)

    def _overLimit(self, sessionId, source):
        if sessionId in self._sessionOwner or not self.transcoders:
            return False
        if self.sessionCount >= self.sessionLimit:
            return True
        return source is not None and self.sessionsFrom(source) >= self.sourceSessionLimit

    def release(self, sessionId):
        """
        Unassign a session from its transcoder.

        @return: the transcoder it was assigned to, or L{None}.
        """
        owner = self._forget(sessionId)
        if owner is not None:
            owner.sessions.discard(sessionId)
        return owner

    def _forget(self, sessionId):
        owner = self._sessionOwner.pop(sessionId, None)
        self._sessionLastUsed.pop(sessionId, None)
        source = self._sessionSource.pop(sessionId, None)
        if source is not None:
            remaining = self._sourceSessions.get(source, 0) - 1
            if remaining > 0:
                self._sourceSessions[source] = remaining
            else:
                self._sourceSessions.pop(source, None)
        return owner

    def expireIdleSessions(self):
        """
        Release sessions that sent no segment for C{sessionIdleTimeout}.

        @return: a list of C{(sessionId, transcoder)} released.
        """
        now = self._clock.seconds()
        expired = [
            sessionId
            for sessionId, lastUsed in self._sessionLastUsed.items()
            if now - lastUsed >= self.sessionIdleTimeout and sessionId in self._sessionOwner
        ]
        return [(sessionId, self.release(sessionId)) for sessionId in expired]

    def markBusy(self, sessionId):
        """
        Keep a session from expiring while one of its segments is in flight.
        """
        if sessionId in self._sessionOwner:
            self._sessionLastUsed[sessionId] = self._clock.seconds()

    def recordSuccess(self, transcoder):
        """
        A transcoder completed a task: its health record starts afresh.
        """
        health = transcoder.health
        if health.consecutiveFailures or health.coolingOffUntil is not None:
            self._log.info("Transcoder={transcoder} is healthy again after {failures} failures",
                           transcoder=transcoder.address, failures=health.consecutiveFailures)
        transcoder.health = TranscoderHealth()

    def countFailure(self, kind):
        """
        Count one failed task of the given kind (one of L{FAILURE_KINDS}), for
        the failures metric, whoever is to blame.
        """
        self.failureTotals[kind] += 1

    def recordFailure(self, transcoder, kind):
        """
        A transcoder is to blame for a failed task: push it back, and past the
        threshold (or when its probe failed) take it out of rotation.
        """
        now = self._clock.seconds()
        health = transcoder.health
        state = health.state(now)
        health.consecutiveFailures += 1
        if kind == FAILURE_TIMEOUT:
            health.consecutiveTimeouts += 1
        if state == COOLING_OFF:
            return
        if state == PROBING or health.consecutiveFailures >= self.failureThreshold:
            seconds = min(self.maxCoolOffSeconds, self.coolOffSeconds * 2 ** health.coolOffs)
            health.coolOffs += 1
            health.coolingOffUntil = now + seconds
            self._log.warn(
                "Transcoder={transcoder} failed {failures} tasks in a row (last: {kind}); "
                "cooling off for {seconds} s",
                transcoder=transcoder.address, failures=health.consecutiveFailures, kind=kind, seconds=seconds)
