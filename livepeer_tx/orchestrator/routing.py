# -*- test-case-name: tests.test_routing -*-
"""
Which transcoder gets a session: capacity, load and session affinity.

Nothing here knows about sockets. A L{TranscoderPool} holds L{RemoteTranscoder}
records; the WebSocket edge adds and removes them, the segment dispatcher asks
for a transcoder per session.
"""

from twisted.logger import Logger

NO_TRANSCODERS = "no transcoders available"
ORCHESTRATOR_CAPPED = "OrchestratorCapped"


class RoutingError(Exception):
    """
    No transcoder can take this session; the message is go-livepeer's error text.
    """


class RemoteTranscoder:
    """
    What the orchestrator knows about one registered transcoder.

    @ivar address: the peer C{ip:port}, used in logs and status.
    @ivar capacity: the number of concurrent sessions it accepts.
    @ivar sessions: the session ids currently assigned to it (its load).
    @ivar link: the edge that carries work to it (an object with C{sendTask},
        C{cancelTask} and C{endSession}); opaque here.
    """

    def __init__(self, address, capacity, link=None, devices=(), version="", capabilities=None, connectedSince=0.0):
        self.address = address
        self.capacity = capacity
        self.link = link
        self.devices = list(devices)
        self.version = version
        self.capabilities = capabilities or {}
        self.connectedSince = connectedSince
        self.sessions = set()
        self.tasksInFlight = 0
        self.live = True

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

    def describe(self):
        """
        A JSON-compatible description for the operator's status page.
        """
        return {
            "address": self.address,
            "capacity": self.capacity,
            "load": self.load,
            "tasksInFlight": self.tasksInFlight,
            "devices": self.devices,
            "version": self.version,
            "connectedSince": self.connectedSince,
        }

    def __repr__(self):
        return f"<RemoteTranscoder {self.address} load={self.load}/{self.capacity}>"


class TranscoderPool:
    """
    The registered transcoders and the sessions assigned to them.

    A session stays on its transcoder while that transcoder is live (affinity);
    a new session goes to the transcoder with the lowest load relative to its
    capacity, the larger capacity winning a tie, and never to one that is full.

    @param clock: an L{IReactorTime} used to expire idle sessions.
    @param sessionIdleTimeout: seconds without a segment after which a session
        is released (go-livepeer uses 70 s).
    @param maxSessions: a fixed cap on concurrent sessions, or L{None} for the
        sum of the transcoders' capacities (C{--maxSessions auto}).
    """

    _log = Logger()

    def __init__(self, clock, sessionIdleTimeout=70.0, maxSessions=None):
        self._clock = clock
        self.sessionIdleTimeout = sessionIdleTimeout
        self.maxSessions = maxSessions
        self.transcoders = []
        self._sessionOwner = {}
        self._sessionLastUsed = {}

    @property
    def totalCapacity(self):
        """
        The sum of the live transcoders' capacities.
        """
        return sum(t.capacity for t in self.transcoders)

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
            self._sessionOwner.pop(sessionId, None)
            self._sessionLastUsed.pop(sessionId, None)
        transcoder.sessions.clear()
        return orphaned

    def select(self, sessionId, exclude=()):
        """
        The transcoder that should take the next segment of C{sessionId},
        assigning the session if it has none.

        @param exclude: transcoders not to use (they just failed this segment).
        @raise RoutingError: no transcoder can take it.
        """
        owner = self._sessionOwner.get(sessionId)
        if owner is not None:
            if owner.live and owner not in exclude:
                self._sessionLastUsed[sessionId] = self._clock.seconds()
                return owner
            self.release(sessionId)
        if not self.transcoders:
            raise RoutingError(NO_TRANSCODERS)
        if self.sessionCount >= self.sessionLimit:
            raise RoutingError(ORCHESTRATOR_CAPPED)
        candidates = [t for t in self.transcoders if t.hasRoom() and t not in exclude]
        if not candidates:
            raise RoutingError(NO_TRANSCODERS)
        chosen = min(candidates, key=lambda t: (t.load / t.capacity, -t.capacity))
        chosen.sessions.add(sessionId)
        self._sessionOwner[sessionId] = chosen
        self._sessionLastUsed[sessionId] = self._clock.seconds()
        return chosen

    @property
    def sessionCount(self):
        """
        The number of sessions assigned now.
        """
        return len(self._sessionOwner)

    def wouldExceedLimit(self, sessionId):
        """
        Whether admitting C{sessionId} now would go over the session limit
        (an existing session never does).
        """
        return sessionId not in self._sessionOwner and bool(self.transcoders) and (
            self.sessionCount >= self.sessionLimit
        )

    def release(self, sessionId):
        """
        Unassign a session from its transcoder.

        @return: the transcoder it was assigned to, or L{None}.
        """
        owner = self._sessionOwner.pop(sessionId, None)
        self._sessionLastUsed.pop(sessionId, None)
        if owner is not None:
            owner.sessions.discard(sessionId)
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
        self._sessionLastUsed[sessionId] = self._clock.seconds()
