"""
Stock go-livepeer transcoders on our orchestrator
(L{livepeer_tx.orchestrator.grpctranscoders}).

In memory: the C{h2} client of tests/test_grpc_h2.py talks HTTP/2 (gRPC and
plain requests) to a Site built with L{channelFactory}, and raw HTTP/1.1 goes
to the same Site, all with a Clock; the orchestrator, its pool and its
dispatcher are the real objects. Over real TLS: tests/grpc_transcoders_server.py
serves a real L{Orchestrator} in its own process, and
tests/golivepeer_transcoder.py, a transcoder written from the wire reference
(grpcio for RegisterTranscoder, HTTP/1.1 for the download, C{h2} for the
results), works for it and is killed mid-task.
"""

import dataclasses
import hashlib
import http.client
import json
import os
import ssl
import subprocess
import sys
import threading

import grpc
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web import resource

from test_grpc_h2 import Client, QuietSite
from livepeer_tx.capabilities import DEFAULT_CAPABILITIES, capabilitiesOf, capabilityBitstring
from livepeer_tx.orchestrator.app import Orchestrator
from livepeer_tx.orchestrator.authtoken import AuthTokens
from livepeer_tx.orchestrator.dispatch import SegmentJob, TranscodeFailed
from livepeer_tx.orchestrator.grpctranscoders import (
    MAX_RENDITIONS, REGISTER_TRANSCODER, GRPCTranscoderLink, GRPCTranscoderService, ResultError, TaskInputs,
    TaskInputsFull, iterMultipart, parseResultParts,
)
from livepeer_tx.orchestrator.orchservice import GET_ORCHESTRATOR, OrchestratorService
from livepeer_tx.orchestrator.registration import FailedAttemptLimiter
from livepeer_tx.payments import OffchainPayments
from livepeer_tx.orchestrator.store import StreamResource
from livepeer_tx.profiles import PRESETS
from livepeer_tx.proto import lp_rpc_pb2 as pb
from livepeer_tx.rpc import GRPCError, ServiceRegistry, StatusCode, channelFactory
from livepeer_tx.secret import Secret

SECRET = "orch-secret-for-tests"
SERVICE_URL = "https://orch.example:8935"
PEER = IPv4Address("TCP", "192.0.2.7", 41000)
PROFILES = [PRESETS["P240p30fps16x9"], PRESETS["P360p30fps16x9"]]
SEGMENT = b"\x47" + bytes(range(256)) * 40
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def logged():
    """
    The events logged during the test.
    """
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def messagesOf(events):
    """
    The text of logged events.
    """
    return [formatEvent(e) for e in events]


class Orch:
    """
    A real orchestrator application with the gRPC transcoder service, its
    resources on a Site, and a Clock.
    """

    def __init__(self, secret=None, maxResultBytes=8 * 1024 * 1024):
        self.clock = Clock()
        self.app = Orchestrator(clock=self.clock, serviceURL=SERVICE_URL, wallClock=lambda: 1000.0)
        self.limiter = FailedAttemptLimiter(self.clock)
        self.service = GRPCTranscoderService(
            self.app, secret or Secret(literal=SECRET), self.limiter, maxResultBytes=maxResultBytes)
        self.registry = ServiceRegistry()
        self.service.addTo(self.registry)
        self.root = resource.Resource()
        self.root.putChild(b"transcodeResults", self.service.resultsResource)
        self.root.putChild(b"stream", self.service.streamResource(StreamResource(self.app.store)))

    def connect(self, negotiated=b"h2"):
        """
        An in-memory HTTP/2 client connection to the public Site.
        """
        client = Client(self.registry, clock=self.clock, negotiated=negotiated)
        client.protocol.site.resource = self.root
        return client

    def register(self, capacity=2, secret=SECRET, capabilities=None):
        """
        Open a RegisterTranscoder stream on a new connection.

        @return: C{(client, streamID)}.
        """
        client = self.connect()
        request = pb.RegisterRequest(secret=secret, capacity=capacity)
        if capabilities is not None:
            request.capabilities.CopyFrom(capabilities)
        streamID = client.call(REGISTER_TRANSCODER, request)
        return client, streamID

    def http11(self, method, path, headers=(), body=b""):
        """
        One HTTP/1.1 request to the same Site; C{(status, headers, body)}.
        """
        protocol = self._site().buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        lines = [f"{method} {path} HTTP/1.1", "Host: orch.example", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers]
        protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.clock.advance(0)
        head, _, data = transport.value().partition(b"\r\n\r\n")
        statusLine, *headerLines = head.decode("latin-1").split("\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        return (int(statusLine.split()[1]),
                {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in headerLines)}, data)

    def _site(self):
        site = QuietSite(self.root, reactor=self.clock)
        site.protocol = channelFactory(self.registry)
        return site


def notifications(client, streamID):
    """
    The NotifySegment messages received so far on a RegisterTranscoder stream.
    """
    return client.response(streamID).messages(pb.NotifySegment)


def h2Request(client, method, path, headers=(), body=None):
    """
    One plain HTTP/2 request on C{client}; C{(status, headers, body)}.
    """
    streamID = client.get(path.encode("latin-1"), method=method.encode("ascii"), body=body,
                          headers=[(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers])
    response = client.response(streamID)
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in response.headers.items()}
    return int(headers.pop(":status")), headers, response.data


def multipart(parts, boundary=b"0123456789abcdef0123"):
    """
    A body laid out as Go's mime/multipart writer does.
    """
    body = b""
    for index, (headers, data) in enumerate(parts):
        body += (b"\r\n" if index else b"") + b"--" + boundary + b"\r\n"
        body += b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers) + b"\r\n" + data
    return body + b"\r\n--" + boundary + b"--\r\n"


def renditionParts(names, withHash=False):
    """
    Multipart parts as a stock transcoder posts them, one rendition per name
    (each followed by a perceptual hash part C{withHash}).
    """
    parts = []
    for index, name in enumerate(names):
        data = (f"rendition {name} ".encode() * 10)
        parts.append(([("Content-Length", len(data)), ("Content-Type", "video/mp2t"), ("Pixels", 1000 + index)],
                      data))
        if withHash:
            parts.append(([("Content-Length", 4), ("Content-Type", "application/octet-stream")], b"sig%d" % index))
    return parts


def resultHeaders(taskId, pixels=123456, secret=SECRET, contentType="multipart/mixed; boundary=0123456789abcdef0123"):
    """
    The headers of a stock transcoder's results post.
    """
    return [("Authorization", "Livepeer-Transcoder-1.0"), ("Credentials", secret), ("Content-Type", contentType),
            ("TaskId", str(taskId)), ("Pixels", str(pixels))]


def outcome(d):
    """
    What C{d} fired with (a Failure is consumed), or L{None} if it has not fired.
    """
    results = []

    def keep(result):
        results.append(result)
        return None if isinstance(result, Failure) else result

    d.addBoth(keep)
    return results[0] if results else None


def submit(orch, session="sess1", seq=7, data=SEGMENT, durationMs=2000):
    """
    Give the dispatcher a segment with L{PROFILES}; its Deferred.
    """
    return orch.app.dispatcher.transcode(SegmentJob(session, seq, data, list(PROFILES), durationMs))


# Registration.


def test_registrationJoinsThePoolWithLogs(logged):
    """
    A stock transcoder's RegisterTranscoder joins the pool as a
    RemoteTranscoder with its address, capacity, capabilities and version,
    logged with the WebSocket transcoders' two lines; the stream stays open.
    """
    orch = Orch()
    capabilities = pb.Capabilities(bitstring=capabilityBitstring(DEFAULT_CAPABILITIES), version="0.8.1",
                                   capacities={0: 1, 1: 1})
    client, streamID = orch.register(capacity=3, capabilities=capabilities)
    [transcoder] = orch.app.pool.transcoders
    assert (transcoder.address, transcoder.capacity, transcoder.version) == ("192.0.2.7:41000", 3, "0.8.1")
    assert transcoder.capabilities == {0: 1, 1: 1}
    assert isinstance(transcoder.link, GRPCTranscoderLink)
    assert not client.response(streamID).ended
    lines = messagesOf(logged)
    assert "Got a RegisterTranscoder request from transcoder=192.0.2.7:41000 capacity=3" in lines
    assert "Successful transcoder registration transcoder=192.0.2.7:41000 capacity=3" in lines
    assert orch.app.publicStatus()["TotalCapacity"] == 3


def test_legacyTranscoderGetsTheDefaultCapabilities():
    """
    A RegisterRequest without capabilities counts as go-livepeer's default
    set, at capacity 1 each.
    """
    orch = Orch()
    orch.register()
    assert orch.app.pool.transcoders[0].capabilities == dict.fromkeys(DEFAULT_CAPABILITIES, 1)


@pytest.mark.parametrize("secret, capacity, message", [
    ("wrong", 2, "invalid secret"), ("", 2, "invalid secret"), (SECRET, 0, "zero capacity"),
    (SECRET, -4, "zero capacity"), ("wrong", 0, "invalid secret"),
])
def test_refusalsCarryGoLivepeersExactWords(logged, secret, capacity, message):
    """
    A wrong secret and a capacity under 1 end the call UNKNOWN with exactly
    go-livepeer's text (a stock transcoder stops on them), secret first; the
    secret never reaches a log line.
    """
    orch = Orch()
    client, streamID = orch.register(capacity=capacity, secret=secret)
    response = client.response(streamID)
    assert (response.status, response.message) == (StatusCode.UNKNOWN, message)
    assert orch.app.pool.transcoders == []
    lines = messagesOf(logged)
    assert f"Cannot register transcoder=192.0.2.7:41000 err={message!r}" in lines
    assert not any(SECRET in line for line in lines)
    assert orch.app.metrics.registry.get_sample_value(
        "livepeer_transcoder_registrations_refused_total", {"reason": message}) == 1


def test_failedAttemptsNeverLockOutTheRightSecret(logged):
    """
    Past the limiter's failures an address still gets C{invalid secret} for a
    wrong secret, without a log line each; the right secret from the same
    address is admitted.
    """
    orch = Orch()
    for _ in range(orch.limiter.maxFailures + 3):
        client, streamID = orch.register(secret="guess")
        assert client.response(streamID).message == "invalid secret"
    lines = messagesOf(logged)
    assert sum("err='invalid secret'" in line for line in lines) == orch.limiter.maxFailures
    assert sum("Too many failed attempts from 192.0.2.7" in line for line in lines) == 1
    orch.register()
    assert len(orch.app.pool.transcoders) == 1


def test_unreadableSecretFileIsUnavailableNotInvalid(tmp_path):
    """
    When the secret file cannot be read the transcoder is told UNAVAILABLE
    (it retries), never C{invalid secret} (it would stop for good).
    """
    orch = Orch(secret=Secret(path=str(tmp_path / "gone")))
    client, streamID = orch.register()
    response = client.response(streamID)
    assert (response.status, response.message) == (StatusCode.UNAVAILABLE, "service unavailable")


@pytest.mark.parametrize("capabilities, reason", [
    (pb.Capabilities(bitstring=[1] * 65), "bitstring must be a list of at most 64 words"),
    (pb.Capabilities(mandatories=[1] * 65), "mandatories must be a list of at most 64 words"),
    (pb.Capabilities(capacities=dict.fromkeys(range(1025), 1)), "capacities must be a map of at most 1024 entries"),
])
def test_absurdCapabilitiesAreRefusedAndCapacityBounded(logged, capabilities, reason):
    """
    Capabilities too large to be real are refused at registration with
    INVALID_ARGUMENT naming the fault (logged as the other refusals), and
    the transcoder never joins the pool; the orchestrator still admits a
    well-formed one, and counts a huge capacity at our bound. Without the
    check at registration the absurd one would join the pool.
    """
    orch = Orch()
    client, streamID = orch.register(capabilities=capabilities)
    response = client.response(streamID)
    assert (response.status, response.message) == (StatusCode.INVALID_ARGUMENT, f"capabilities: {reason}")
    assert orch.app.pool.transcoders == []
    assert f"Cannot register transcoder=192.0.2.7:41000 err='capabilities: {reason}'" in messagesOf(logged)
    orch.register(capacity=2**40)
    assert orch.app.pool.transcoders[0].capacity == 999_999_999


def test_reportedCapacitiesReachGetOrchestrator():
    """
    The capacities a stock transcoder reports, parsed once at registration,
    are added to our own (capacity 1 each) in GetOrchestrator's answer: the
    capability only it offers (15) at its capacity, the others summed. A
    report parsed wrongly, or not added, changes these numbers.
    """
    orch = Orch()
    OrchestratorService(orch.app.pool, AuthTokens(bytes(32), wallClock=orch.app.wallClock), SERVICE_URL,
                        OffchainPayments(), orch.app.endSession).register(orch.registry)
    orch.register(capabilities=pb.Capabilities(
        bitstring=capabilityBitstring([0, 1, 15]), capacities={0: 2, 1: 1, 15: 3}))
    client = orch.connect()
    streamID = client.call(GET_ORCHESTRATOR, pb.OrchestratorRequest())
    [info] = client.response(streamID).messages(pb.OrchestratorInfo)
    assert {c: info.capabilities.capacities[c] for c in (0, 1, 2, 15)} == {0: 3, 1: 2, 2: 1, 15: 3}
    assert {0, 1, 2, 15} <= capabilitiesOf(info.capabilities.bitstring)


# Tasks over HTTP/2.


def test_taskNotifyDownloadAndResultsOverHttp2():
    """
    A segment submitted to the dispatcher reaches the transcoder as a
    NotifySegment shaped as go-livepeer's; it downloads the input once, posts
    its renditions (with perceptual hashes) as multipart/mixed over HTTP/2,
    and the job's Deferred fires with them, named in profile order.
    """
    orch = Orch()
    client, streamID = orch.register()
    d = submit(orch)
    client.pump()
    [notify] = notifications(client, streamID)
    assert notify.url.startswith(f"{SERVICE_URL}/stream/sess1/7-") and notify.url.endswith(".tempfile")
    assert notify.profiles == b"invalid" and notify.orchId == "offchain" and notify.taskId > 0
    segData = notify.segData
    assert (segData.seq, segData.duration, segData.hash, segData.profiles) == (7, 2000, bytes(32), b"invalid")
    assert segData.auth_token.session_id == "sess1" and segData.manifestId == b"sess1"
    assert [p.name for p in segData.fullProfiles] == [p.name for p in PROFILES]
    assert [(p.width, p.height, p.bitrate, p.fps) for p in segData.fullProfiles] == [
        (p.width, p.height, p.bitrate, p.fps) for p in PROFILES]
    assert not segData.fullProfiles2 and not segData.fullProfiles3 and not segData.storage
    needed = segData.capabilities.bitstring[0]
    assert needed & capabilityBitstring(DEFAULT_CAPABILITIES)[0] == needed and needed & 1

    path = notify.url[len(SERVICE_URL):]
    status, headers, body = h2Request(client, "GET", path)
    assert (status, body) == (200, SEGMENT)
    assert headers["content-length"] == str(len(SEGMENT))
    assert h2Request(client, "GET", path)[0] == 404
    assert len(orch.service.inputs) == 0

    parts = renditionParts(["a", "b"], withHash=True)
    status, headers, body = h2Request(client, "POST", "/transcodeResults", resultHeaders(notify.taskId, 777),
                                      multipart(parts))
    assert (status, body) == (200, b"OK")
    result = outcome(d)
    assert [r.name for r in result.renditions] == [p.name for p in PROFILES]
    assert [r.data for r in result.renditions] == [parts[0][1], parts[2][1]]
    assert [r.pixels for r in result.renditions] == [1000, 1001]
    assert result.decodedPixels == 777 and result.transcoder == "192.0.2.7:41000"
    assert not client.response(streamID).ended


def test_profilesGoInGoLivepeersField():
    """
    MP4 outputs travel in fullProfiles2; a fractional frame rate, an encoder
    profile or a GOP in fullProfiles3; the job's capabilities follow.
    """
    orch = Orch()
    client, streamID = orch.register()
    mp4 = dataclasses.replace(PROFILES[0], format="mp4")
    main = dataclasses.replace(PROFILES[1], encoderProfile="main", gop=2000)
    for profiles in ([mp4], [mp4, main]):
        orch.app.dispatcher.transcode(SegmentJob("s-" + str(len(profiles)), 1, SEGMENT, profiles))
    client.pump()
    first, second = notifications(client, streamID)
    assert [p.format for p in first.segData.fullProfiles2] == [pb.VideoProfile.MP4]
    assert not first.segData.fullProfiles and not first.segData.fullProfiles3
    assert [p.profile for p in second.segData.fullProfiles3] == [
        pb.VideoProfile.ENCODER_DEFAULT, pb.VideoProfile.H264_MAIN]
    assert [p.gop for p in second.segData.fullProfiles3] == [0, 2000]
    assert list(first.segData.capabilities.bitstring) == capabilityBitstring({0, 2, 12})
    assert list(second.segData.capabilities.bitstring) == capabilityBitstring({0, 1, 2, 8, 11, 12})


def test_sessionTeardownIsAnEmptyUrlAndShutdownEndsTheStream():
    """
    An idle session ends with go-livepeer's NotifySegment carrying an empty
    URL and only the session id; the orchestrator's shutdown ends the stream
    with status OK and the transcoder leaves the pool.
    """
    orch = Orch()
    client, streamID = orch.register()
    orch.app.startService()
    d = submit(orch)
    client.pump()
    [notify] = notifications(client, streamID)
    h2Request(client, "POST", "/transcodeResults", resultHeaders(notify.taskId), multipart(renditionParts("ab")))
    assert outcome(d).renditions
    orch.clock.advance(orch.app.pool.sessionIdleTimeout + 5)
    client.pump()
    teardown = notifications(client, streamID)[-1]
    assert teardown.url == "" and teardown.taskId == 0
    assert teardown.segData.auth_token.session_id == "sess1" and not teardown.segData.fullProfiles
    stopped = orch.app.stopService()
    client.pump()
    assert stopped.called
    response = client.response(streamID)
    assert response.ended and response.status == StatusCode.OK
    assert orch.app.pool.transcoders == []


def test_lostTranscoderTaskMovesToAnother(logged):
    """
    A transcoder whose connection drops mid-task leaves the pool, its input is
    dropped, and the task moves to another transcoder, whose result completes
    the job; a late result for the first task is answered OK and dropped.
    """
    orch = Orch()
    first, firstStream = orch.register()
    second, secondStream = orch.register()
    d = submit(orch)
    first.pump()
    [lostTask] = notifications(first, firstStream)
    assert len(orch.service.inputs) == 1
    first.protocol.connectionLost(Failure(ConnectionDone("killed")))
    second.pump()
    [movedTask] = notifications(second, secondStream)
    assert movedTask.taskId != lostTask.taskId
    assert len(orch.app.pool.transcoders) == 1 and len(orch.service.inputs) == 1
    assert any("eof, removing from live transcoders map" in line for line in messagesOf(logged))
    status, _, body = h2Request(second, "POST", "/transcodeResults", resultHeaders(lostTask.taskId),
                                multipart(renditionParts("xy")))
    assert (status, body) == (200, b"OK") and outcome(d) is None
    h2Request(second, "POST", "/transcodeResults", resultHeaders(movedTask.taskId), multipart(renditionParts("ab")))
    result = outcome(d)
    assert result.attempts == 2 and len(orch.service.inputs) == 0


def test_timedOutTaskIsForgottenAndTheStreamStays():
    """
    A task past its deadline loses its input and its late result is dropped;
    the transcoder stays in the pool (the health record judges it).
    """
    orch = Orch()
    client, streamID = orch.register()
    d = submit(orch)
    client.pump()
    [notify] = notifications(client, streamID)
    orch.clock.advance(SegmentJob("s", 0, b"", []).timeout)
    assert isinstance(outcome(d).value, TranscodeFailed)
    assert len(orch.service.inputs) == 0
    status = h2Request(client, "POST", "/transcodeResults", resultHeaders(notify.taskId),
                       multipart(renditionParts("ab")))[0]
    assert status == 200 and len(orch.app.pool.transcoders) == 1
    assert not client.response(streamID).ended


def test_transcodingErrorFailsTheAttemptWithACleanText():
    """
    A C{livepeer/transcoding-error} body is answered OK and fails the task
    with the text cleaned of paths and control characters.
    """
    orch = Orch()
    client, streamID = orch.register()
    d = submit(orch)
    client.pump()
    [notify] = notifications(client, streamID)
    status, _, body = h2Request(
        client, "POST", "/transcodeResults", resultHeaders(notify.taskId, 0, contentType="livepeer/transcoding-error"),
        b"Cannot open /var/lib/livepeer/x.tempfile\nnext")
    assert (status, body) == (200, b"OK")
    assert str(outcome(d).value) == "Cannot open <path> next"


# /transcodeResults: go-livepeer's order of checks and answers (HTTP/1.1 here).


def test_resultsChecksInGoLivepeersOrder():
    """
    Authorization, then Credentials (401 Unauthorized), then Content-Type
    (415), then TaskId (400 Invalid Task ID), then Pixels (400 Invalid
    Pixels); an unknown media type or task is answered OK; nothing of it
    reaches the task.
    """
    orch = Orch()
    client, streamID = orch.register()
    d = submit(orch)
    client.pump()
    [notify] = notifications(client, streamID)
    good = dict(resultHeaders(notify.taskId))
    body = multipart(renditionParts("ab"))

    def post(**changes):
        headers = dict(good, **changes)
        return orch.http11("POST", "/transcodeResults", [(k, v) for k, v in headers.items() if v is not None], body)

    assert post(Authorization="Basic x")[::2] == (401, b"Unauthorized\n")
    assert post(Authorization=None)[::2] == (401, b"Unauthorized\n")
    assert post(Credentials="wrong")[::2] == (401, b"Unauthorized\n")
    status, headers, text = post(**{"Content-Type": "multipart/mixed;;; x"})
    assert status == 415 and text.startswith(b"mime: ") and headers["content-type"] == "text/plain; charset=utf-8"
    assert post(TaskId="12x")[::2] == (400, b"Invalid Task ID\n")
    assert post(Pixels="-5")[::2] == (400, b"Invalid Pixels\n")
    assert post(Pixels=str(2**60))[::2] == (400, b"Invalid Pixels\n")
    assert post(**{"Content-Type": "text/plain"})[::2] == (200, b"OK")
    assert post(TaskId=str(notify.taskId + 1000))[::2] == (200, b"OK")
    assert outcome(d) is None
    assert post()[::2] == (200, b"OK")
    assert len(outcome(d).renditions) == 2


def test_downloadAndResultsOverHttp11():
    """
    The same resources serve HTTP/1.1: the input download and a result post.
    """
    orch = Orch()
    client, streamID = orch.register()
    d = submit(orch)
    client.pump()
    [notify] = notifications(client, streamID)
    status, headers, body = orch.http11("GET", notify.url[len(SERVICE_URL):])
    assert (status, body) == (200, SEGMENT) and headers["cache-control"] == "no-store"
    assert orch.http11("GET", notify.url[len(SERVICE_URL):])[0] == 404
    status, _, body = orch.http11("POST", "/transcodeResults", resultHeaders(notify.taskId),
                                  multipart(renditionParts("ab")))
    assert (status, body) == (200, b"OK") and len(outcome(d).renditions) == 2


@pytest.mark.parametrize("body, error", [
    (b"no parts at all", "multipart: no part found"),
    (b"--0123456789abcdef0123\r\nPixels: 5\r\n\r\nunterminated", "multipart: unexpected end of body"),
    (multipart([([("Content-Type", "application/octet-stream")], b"sig")]), "Unknown perceptual hash"),
    (multipart([([("Pixels", "many")], b"x" * 30)]), "rendition 0: a pixel count must be a number"),
    (multipart([([("Bad Header Line", "")], b"x")]), "multipart: part 1 has a malformed header line"),
])
def test_malformedResultsAre500AndFailTheAttempt(body, error):
    """
    A result that cannot be parsed is answered 500 with the reason and fails
    the attempt with it (go-livepeer delivers the error too).
    """
    orch = Orch()
    client, streamID = orch.register()
    d = submit(orch)
    client.pump()
    [notify] = notifications(client, streamID)
    status, _, text = orch.http11("POST", "/transcodeResults", resultHeaders(notify.taskId), body)
    assert status == 500 and text.decode().startswith(error)
    assert str(outcome(d).value).startswith(error)


def test_resultsOverTheBoundAreRefused():
    """
    A body over C{maxResultBytes} that got past the site is refused with 413
    and fails the attempt.
    """
    orch = Orch(maxResultBytes=1000)
    client, streamID = orch.register()
    d = submit(orch)
    client.pump()
    [notify] = notifications(client, streamID)
    status, _, text = orch.http11("POST", "/transcodeResults", resultHeaders(notify.taskId),
                                  multipart(renditionParts("ab" * 10)))
    assert status == 413 and text == b"results larger than 1000 bytes\n"
    assert str(outcome(d).value) == "results larger than 1000 bytes"


def test_wrongCredentialsOnResultsFeedTheLimiter(logged):
    """
    Wrong Credentials on C{/transcodeResults} count as failed attempts of the
    address; past the limit they are no longer logged one by one.
    """
    orch = Orch()
    for _ in range(orch.limiter.maxFailures + 2):
        assert orch.http11("POST", "/transcodeResults", resultHeaders(1, secret="nope"))[0] == 401
    assert sum("Invalid shared secret" in line for line in messagesOf(logged)) == orch.limiter.maxFailures
    assert orch.limiter.isBlocked("192.0.2.7")


# The parts on their own.


def test_multipartParserReadsWhatGoWritesAndNothingMore():
    """
    Preamble, epilogue, headers in any case, an empty header block and
    ignored part types; bounds on parts and header blocks.
    """
    body = b"preamble\r\n" + multipart([
        ([("content-type", "video/mp2t"), ("PIXELS", "10")], b"one\r\n--not-the-boundary"),
        ([], b"no headers"),
        ([("Content-Type", "application/octet-stream")], b"hash-of-one"),
        ([("Content-Type", "text/plain")], b"ignored"),
        ([("Pixels", "20")], b""),
    ]) + b"epilogue"
    parts = [(headers, bytes(data)) for headers, data in iterMultipart(body, "0123456789abcdef0123")]
    assert parts[0] == ({"content-type": "video/mp2t", "pixels": "10"}, b"one\r\n--not-the-boundary")
    assert parts[1] == ({}, b"no headers")
    renditions = parseResultParts(body, "0123456789abcdef0123")
    assert [(r.data, r.pixels, r.perceptualHash) for r in renditions] == [
        (b"one\r\n--not-the-boundary", 10, b"hash-of-one"), (b"", 20, None)]
    with pytest.raises(ResultError, match="more than 3 parts"):
        list(iterMultipart(multipart([([], b"x")] * 4), "0123456789abcdef0123", maxParts=3))
    with pytest.raises(ResultError, match="no end of headers"):
        list(iterMultipart(multipart([([("X", "y" * 100)], b"x")]), "0123456789abcdef0123", maxHeaderBytes=50))
    with pytest.raises(ResultError, match="boundary must be"):
        list(iterMultipart(body, ""))
    with pytest.raises(ResultError, match=f"more than {MAX_RENDITIONS} renditions"):
        parseResultParts(multipart([([("Pixels", "1")], b"x")] * (MAX_RENDITIONS + 1)), "0123456789abcdef0123")


def test_taskInputsAreBoundedAndExpire():
    """
    Inputs are taken once, bounded in number, and dropped when too old.
    """
    clock = Clock()
    inputs = TaskInputs(clock, maxEntries=2, maxAge=100)
    first = inputs.add("s", 1, b"one")
    second = inputs.add("s", 2, b"two")
    assert first != second and first.startswith("1-") and len(first) > 30
    with pytest.raises(TaskInputsFull):
        inputs.add("s", 3, b"three")
    assert inputs.take("s", first) == b"one" and inputs.take("s", first) is None
    clock.advance(101)
    inputs.add("s", 4, b"four")
    assert inputs.size("s", second) is None and len(inputs) == 1 and inputs.totalBytes == 4


class StuckCall:
    """
    A ServerCall whose client has stopped reading: every send is refused.
    """

    peer = PEER
    cancelCode = None

    def send(self, message):
        raise GRPCError(StatusCode.RESOURCE_EXHAUSTED, "grpc: the client is not reading the stream")


def test_transcoderNotReadingItsStreamIsClosedAndItsTaskMoves(logged):
    """
    A transcoder that stops reading its stream is closed (UNAVAILABLE) and
    leaves the pool; the task it was given moves to another transcoder.
    """
    orch = Orch()
    stuck = orch.service.registerTranscoder(pb.RegisterRequest(secret=SECRET, capacity=5), StuckCall())
    client, streamID = orch.register(capacity=1)
    d = submit(orch)
    client.pump()
    ended = outcome(stuck)
    assert isinstance(ended.value, GRPCError) and ended.value.code == StatusCode.UNAVAILABLE
    [notify] = notifications(client, streamID)
    h2Request(client, "POST", "/transcodeResults", resultHeaders(notify.taskId), multipart(renditionParts("ab")))
    assert outcome(d).attempts == 2 and len(orch.app.pool.transcoders) == 1
    assert any("is not reading its stream" in line for line in messagesOf(logged))


# Over real TLS, in processes.


class OrchestratorProcess:
    """
    tests/grpc_transcoders_server.py: a real Orchestrator serving
    RegisterTranscoder, /transcodeResults and /stream on a TLS port.
    """

    def __init__(self, dataDir):
        self.dataDir = dataDir
        self.stderrPath = dataDir / "server.err"
        with open(self.stderrPath, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "grpc_transcoders_server.py"), str(dataDir), SECRET],
                stdout=subprocess.PIPE, stderr=stderr)
        line = self.process.stdout.readline().decode()
        if not line.startswith("listening "):
            self.process.wait(10)
            pytest.fail(f"the orchestrator did not start: {self.stderrPath.read_text()}")
        self.port = int(line.split()[1])
        self.certPath = str(dataDir / "cert.pem")

    def control(self, path, body=None, timeout=60):
        context = ssl.create_default_context(cafile=self.certPath)
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=timeout)
        connection.request("POST" if body is not None else "GET", path, body=body)
        response = connection.getresponse()
        assert response.status == 200, response.read()
        return json.loads(response.read())

    def transcoder(self, mode, capacity=1, secret=SECRET):
        """
        Start a go-livepeer-style transcoder (tests/golivepeer_transcoder.py).
        """
        return subprocess.Popen(
            [sys.executable, os.path.join(HERE, "golivepeer_transcoder.py"), f"127.0.0.1:{self.port}", secret,
             str(capacity), mode, self.certPath],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def stop(self):
        self.process.terminate()
        self.process.wait(30)


# Under xdist (run.sh: --dist loadgroup) the tests on the module's process run on one worker, so it starts once.
sharedProcess = pytest.mark.xdist_group("test_grpc_transcoders.orchestratorProcess")


@pytest.fixture(scope="module")
def orchestratorProcess(tmp_path_factory):
    """
    One orchestrator process for the module's real-TLS tests.
    """
    process = OrchestratorProcess(tmp_path_factory.mktemp("grpc-transcoders"))
    yield process
    process.stop()


@pytest.fixture
def orchestrator(orchestratorProcess):
    """
    The orchestrator process; the transcoders a test starts are killed after
    it, and the next test starts once the pool is empty again.
    """
    orchestratorProcess.started = started = []
    yield orchestratorProcess
    for transcoder in started:
        if transcoder.poll() is None:
            transcoder.kill()
        transcoder.wait(30)
    orchestratorProcess.control("/control/wait?transcoders=0")


def fakeRenditions(data, names):
    """
    What tests/golivepeer_transcoder.py returns for an input (its stand-in for FFmpeg).
    """
    digest = hashlib.sha256(data).hexdigest()
    return {name: hashlib.sha256(f"{name}:{digest}".encode() * 4).hexdigest() for name in names}


def readLine(process, prefix):
    """
    The first line of C{process}'s output starting with C{prefix}.
    """
    for line in process.stdout:
        line = line.decode().strip()
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no {prefix!r} line: {process.stderr.read().decode()}")


@sharedProcess
def test_realTlsStockTranscoderWorksAndIsRefusedWithExactWords(orchestrator):
    """
    grpcio's RegisterTranscoder with a wrong secret gets UNKNOWN
    C{invalid secret}, with no capacity C{zero capacity}; a go-livepeer-style
    transcoder then registers, gets the segment's NotifySegment, downloads
    the input over HTTP/1.1, posts its renditions over HTTP/2, and the job's
    Deferred fires with them.
    """
    with open(orchestrator.certPath, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    with grpc.secure_channel(f"127.0.0.1:{orchestrator.port}", credentials) as channel:
        register = channel.unary_stream(REGISTER_TRANSCODER, request_serializer=pb.RegisterRequest.SerializeToString,
                                        response_deserializer=pb.NotifySegment.FromString)
        for secret, capacity, words in (("wrong", 1, "invalid secret"), (SECRET, 0, "zero capacity")):
            with pytest.raises(grpc.RpcError) as refused:
                list(register(pb.RegisterRequest(secret=secret, capacity=capacity), timeout=30))
            assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.UNKNOWN, words)

    transcoder = orchestrator.transcoder("ok")
    orchestrator.started.append(transcoder)
    assert orchestrator.control("/control/wait?transcoders=1")["transcoders"] == 1
    result = orchestrator.control("/control/transcode?session=abcd1234&seq=3&duration=2000", body=SEGMENT)
    assert result["attempts"] == 1 and result["decodedPixels"] == len(SEGMENT)
    names = [p.name for p in PROFILES]
    assert {r["name"]: r["sha256"] for r in result["renditions"]} == fakeRenditions(SEGMENT, names)
    assert [r["pixels"] for r in result["renditions"]] == [p.width * p.height * 60 for p in PROFILES]
    assert readLine(transcoder, "posted ").split()[2] == "200"
    logs = (orchestrator.dataDir / "server.err").read_text()
    assert "Successful transcoder registration transcoder=127.0.0.1:" in logs


@sharedProcess
def test_realTlsTranscoderKilledMidTaskLosesNoSegment(orchestrator):
    """
    A go-livepeer-style transcoder killed after it got a task: the task
    moves to the other transcoder and the job still gets its renditions.
    """
    hanging = orchestrator.transcoder("hang")
    orchestrator.started.append(hanging)
    assert orchestrator.control("/control/wait?transcoders=1")["transcoders"] == 1
    answers = []
    job = threading.Thread(target=lambda: answers.append(orchestrator.control(
        "/control/transcode?session=feed0001&seq=9&duration=5000", body=SEGMENT)))
    job.start()
    try:
        assert readLine(hanging, "notify ").split()[2].endswith(".tempfile")
        working = orchestrator.transcoder("ok")
        orchestrator.started.append(working)
        assert orchestrator.control("/control/wait?transcoders=2")["transcoders"] == 2
        hanging.kill()
        hanging.wait(30)
    finally:
        job.join(60)
    [result] = answers
    assert "error" not in result and result["attempts"] == 2
    assert {r["name"]: r["sha256"] for r in result["renditions"]} == fakeRenditions(
        SEGMENT, [p.name for p in PROFILES])
    assert orchestrator.control("/control/wait?transcoders=1")["transcoders"] == 1
    logs = orchestrator.stderrPath.read_text()
    assert "Got transcoder=127.0.0.1:" in logs and "eof, removing from live transcoders map" in logs
