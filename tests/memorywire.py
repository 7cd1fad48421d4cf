# -*- test-case-name: tests.test_hostile_transcoder,tests.test_memory_link -*-
"""
The in-memory layer for the transcoder WebSocket: the real orchestrator
protocol, dispatcher and pool talk to the real transcoder protocol, link and
worker over L{twisted.test.iosim} on a test clock, with stand-in transcoding
engines in place of FFmpeg.
"""

from dataclasses import replace

import pytest
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.test import iosim
from twisted.web.resource import Resource
from twisted.web.server import Site

from livepeer_tx import wsproto
from livepeer_tx.orchestrator.app import Orchestrator
from livepeer_tx.orchestrator.dispatch import SegmentJob
from livepeer_tx.orchestrator.registration import FailedAttemptLimiter, makeTranscoderResource, maxResultBytes
from livepeer_tx.profiles import PRESETS
from livepeer_tx.secret import Secret
from livepeer_tx.transcoder.client import OrchestratorLink, TranscoderClientProtocol
from livepeer_tx.transcoder.ffmpeg import RenditionOutput, TranscodeError, TranscodeOutput
from livepeer_tx.transcoder.worker import TranscodeWorker

SECRET = "s3cret-for-tests"
PROFILES = [PRESETS["P240p30fps16x9"], PRESETS["P360p30fps16x9"]]
SEGMENT = b"\x47" * 1880
GO_LIVEPEER_TASK_DEADLINE = 8.0


@pytest.fixture
def events():
    """
    Every log event emitted during the test.
    """
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def texts(events, level=None):
    """
    The formatted text of the events (of C{level} only, when given), for
    checking what an operator reads in a line.
    """
    return [formatEvent(e) for e in events if level is None or e["log_level"] == level]


def named(events, prefix, level=None):
    """
    The events whose format string starts with C{prefix}.
    """
    return [e for e in events if (e.get("log_format") or "").startswith(prefix)
            and (level is None or e["log_level"] == level)]


def retries(events):
    """
    The delays of the retries a transcoder link scheduled, in order.
    """
    return [e["delay"] for e in named(events, "Reconnecting to {orchestrator} in {delay:.1f} s")]


class ClockTimer:
    """
    autobahn's batched timer on the test clock (autobahn's own uses the
    global reactor).
    """

    def __init__(self, clock):
        self._clock = clock

    def call_later(self, delay, function, *args, **kwargs):
        return self._clock.callLater(delay, function, *args, **kwargs)


def output(profiles, frames=60):
    """
    A plausible transcode output for C{profiles}.
    """
    renditions = [
        RenditionOutput(p, b"\x47" * 376, p.width, p.height, frames, frames * p.width * p.height) for p in profiles
    ]
    return TranscodeOutput(frames, frames * 640 * 360, renditions, 0.25)


class StreamingEngine:
    """
    Takes streamed segments like L{FFmpegTranscoder.transcodeStream}: once
    the segment has ended it is transcoded by the engine's C{transcode}, and
    the renditions of its output go back through C{onRenditionData}.
    """

    def transcodeStream(self, segment, profiles, onRenditionData, device=None, timeout=None):
        pieces = []
        ended = defer.Deferred()
        segment.attach(pieces.append, lambda: ended.callback(None))

        def handOn(result):
            for index, rendition in enumerate(result.renditions):
                onRenditionData(index, rendition.data)
            return replace(result, renditions=[replace(r, data=None, size=len(r.data)) for r in result.renditions])

        ended.addCallback(lambda _: self.transcode(b"".join(pieces), profiles, device=device, timeout=timeout))
        return ended.addCallback(handOn)


class AnsweringEngine(StreamingEngine):
    """
    Transcodes everything at once, plausibly.
    """

    def transcode(self, segment, profiles, device=None, timeout=None):
        return defer.succeed(output(profiles))


class HangingEngine(StreamingEngine):
    """
    Never finishes (a stuck FFmpeg, or one the test answers for).
    """

    def __init__(self):
        self.calls = []

    def transcode(self, segment, profiles, device=None, timeout=None):
        d = defer.Deferred()
        self.calls.append(d)
        return d


class FailingEngine(StreamingEngine):
    """
    Fails every segment with a given error text.
    """

    def __init__(self, message):
        self.message = message

    def transcode(self, segment, profiles, device=None, timeout=None):
        return defer.fail(TranscodeError(self.message))


class MemoryLink(OrchestratorLink):
    """
    The real transcoder link, recording its tasks, closes and chosen retry
    delays (it is never started, so it does not reconnect).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.taskIds = []
        self.closeCodes = []
        self.scheduled = []

    def runTask(self, protocol, taskId, *args):
        self.taskIds.append(taskId)
        return super().runTask(protocol, taskId, *args)

    def connectionEnded(self, protocol, code, reason):
        self.closeCodes.append(code)
        super().connectionEnded(protocol, code, reason)

    def _retryAfter(self, delay):
        self.scheduled.append(delay)
        super()._retryAfter(delay)


class MemoryTranscoder:
    """
    One in-memory connection: the transcoder's link and protocol, the
    orchestrator's protocol, and the pump between them.
    """

    def __init__(self, harness, link, client, server, pump):
        self.harness = harness
        self.link = link
        self.client = client
        self.server = server
        self.pump = pump
        self.frozen = False

    @property
    def address(self):
        return self.server.transcoder.address if self.server.transcoder else None

    def flush(self):
        if not self.frozen:
            self.pump.flush()
            return
        # A stopped process: nothing leaves it, nothing is read by it; the
        # orchestrator still sees its own side of the connection end.
        self.pump.clientIO.getOutBuffer()
        serverIO = self.pump.serverIO
        if serverIO.disconnecting and not serverIO.disconnected:
            serverIO.disconnected = True
            serverIO.reportDisconnect()

    def sendBinary(self, header, parts):
        self.client.sendMessage(wsproto.encodeMedia(header, parts), isBinary=True)
        self.harness.flush()

    def sendText(self, payload):
        self.client.sendMessage(payload, isBinary=False)
        self.harness.flush()


class Harness:
    """
    An orchestrator (pool, dispatcher, WebSocket factory and gate) on a test
    clock, and transcoders connected to it in memory.
    """

    def __init__(self, maxSegmentBytes=1_000_000, secret=None, clock=None, **resourceOptions):
        self.clock = clock or Clock()
        self.app = Orchestrator(self.clock, "https://orch.example:8935")
        self.secret = secret or Secret(literal=SECRET)
        self.limiter = FailedAttemptLimiter(self.clock)
        self.gate, self.factory = makeTranscoderResource(
            self.app, self.clock, self.secret, self.limiter, maxResultBytes(maxSegmentBytes), **resourceOptions)
        self.factory._batched_timer = ClockTimer(self.clock)
        self.transcoders = []
        root = Resource()
        root.putChild(wsproto.RESOURCE_PATH, self.gate)
        self.site = Site(root, reactor=self.clock)
        self.pumps = []
        self.reachable = True

    def connect(self, engine=None, capacity=1, protocol=TranscoderClientProtocol, secretValue=SECRET, streaming=True):
        host = f"10.0.0.{len(self.transcoders) + 1}"
        worker = TranscodeWorker(engine or AnsweringEngine(), capacity, streaming=streaming)
        link = MemoryLink(self.clock, "orch.example", 8935, self.secret, None, worker, capacity)
        clientFactory = link.webSocketFactory(secretValue)
        clientFactory._batched_timer = ClockTimer(self.clock)
        clientFactory.protocol = protocol
        client = clientFactory.buildProtocol(None)
        server = self.factory.buildProtocol(None)
        serverIO = iosim.FakeTransport(server, True, peerAddress=IPv4Address("TCP", host, 40000))
        clientIO = iosim.FakeTransport(client, False, peerAddress=IPv4Address("TCP", "10.0.0.254", 8935))
        pump = iosim.connect(server, serverIO, client, clientIO, clock=self.clock)
        transcoder = MemoryTranscoder(self, link, client, server, pump)
        self.transcoders.append(transcoder)
        assert protocol is not TranscoderClientProtocol or server.transcoder in self.app.pool.transcoders
        return transcoder

    def flush(self):
        for transcoder in self.transcoders:
            transcoder.flush()
        for pump in self.pumps:
            pump.flush()

    def connectToSite(self, clientProtocol, host="10.0.0.200"):
        """
        Connect C{clientProtocol} from C{host} to the orchestrator's HTTP
        site (the gate at C{/transcoder}, then the WebSocket it upgrades
        to), as the public port would.

        @return: the L{iosim.IOPump} between them.
        """
        server = self.site.buildProtocol(IPv4Address("TCP", host, 40000))
        serverIO = iosim.FakeTransport(server, True, peerAddress=IPv4Address("TCP", host, 40000))
        clientIO = iosim.FakeTransport(clientProtocol, False, peerAddress=IPv4Address("TCP", "10.0.0.254", 8935))
        pump = iosim.connect(server, serverIO, clientProtocol, clientIO, greet=False, clock=self.clock)
        self.pumps.append(pump)
        return pump

    def link(self, secret, engine=None, capacity=1, host="10.0.0.100", backoff=None):
        """
        A real L{OrchestratorLink} whose every connection attempt reaches
        this orchestrator's site in memory (or is refused while
        C{self.reachable} is false).
        """
        return SiteLink(self, host, self.clock, "orch.example", 8935, secret, None,
                        TranscodeWorker(engine or AnsweringEngine(), capacity), capacity, backoff=backoff)

    def advance(self, seconds, step=0.1):
        """
        Let C{seconds} pass on the clock, moving data all along.
        """
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            self.flush()

    def transcode(self, sessionId="s", durationMs=2000):
        d = self.app.dispatcher.transcode(SegmentJob(sessionId, 0, SEGMENT, PROFILES, durationMs))
        self.flush()
        return d

    @property
    def live(self):
        return [t.address for t in self.app.pool.transcoders]


class SiteLink(OrchestratorLink):
    """
    The real transcoder link, connecting through L{MemoryEndpoint}s.
    """

    def __init__(self, harness, peerHost, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.harness = harness
        self.peerHost = peerHost

    def endpoint(self):
        return MemoryEndpoint(self.harness, self.peerHost)

    def webSocketFactory(self, secretValue):
        factory = super().webSocketFactory(secretValue)
        factory._batched_timer = ClockTimer(self.harness.clock)
        return factory


class MemoryEndpoint:
    """
    A client endpoint to a L{Harness}'s site, in memory.
    """

    def __init__(self, harness, peerHost):
        self.harness = harness
        self.peerHost = peerHost

    def connect(self, factory):
        if not self.harness.reachable:
            return defer.fail(error.ConnectionRefusedError("Connection refused"))
        protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.254", 8935))
        self.harness.connectToSite(protocol, self.peerHost)
        return defer.succeed(protocol)


class RawClient(Protocol):
    """
    A client that writes bytes by hand and keeps what comes back.
    """

    def __init__(self):
        self.received = b""
        self.lost = False

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = True


def outcome(d):
    """
    What a fired Deferred holds (a result, or its Failure).
    """
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]
