"""
Tests for the gateway side: segment headers, the segmenter, SegmentPusher
against a real TLS server on 127.0.0.1, the C{livepeer-tx} command and the
process handling of L{livepeer_tx.gateway.launcher}.
"""

import base64
import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from eth_utils import keccak
from twisted.internet import reactor as globalReactor
from twisted.internet import ssl
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.utils import getProcessOutputAndValue
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from livepeer_tx.cli import buildParser
from livepeer_tx.gateway.demo import DEMO_PROFILES, SEGMENT_SECONDS
from livepeer_tx.gateway.push import (
    GET_ORCHESTRATOR,
    TOKEN_REFRESH_SECONDS,
    SegmentPusher,
    buildSegmentHeaders,
    parseOrchAddr,
    percentile,
    pushSegments,
    segmentTimeout,
    summarize,
    writeRenditions,
)
from livepeer_tx.gateway.segmenter import (
    SegmenterError,
    generateTestClip,
    readSegmentList,
    segmentFile,
)
from localnodes import LocalNodes, NodeError, freePort, optionArguments
from livepeer_tx.profiles import PRESETS, Profile, parsePresetList, profilesFromSegData
from livepeer_tx.proto import lp_rpc_pb2 as pb
from livepeer_tx.rpc import GRPCError, ServiceRegistry, StatusCode, channelFactory
from livepeer_tx.tls import certificateFingerprint, clientTLSOptions, createSelfSigned

# Twisted 26's client Response transport lacks abortConnection, so every readBody warns.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Using readBody with a transport:DeprecationWarning",
    "ignore:Passing pyOpenSSL:DeprecationWarning",
)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_PROFILES = parsePresetList("P240p30fps16x9,P360p30fps16x9")


def _decodeSegData(headers):
    return pb.SegData.FromString(base64.b64decode(headers["Livepeer-Segment"], validate=True))


# --- buildSegmentHeaders and helpers ------------------------------------------------


def test_segmentHeadersRoundTrip():
    """
    The Livepeer-Segment header decodes back to the segment's keccak-256, seq,
    duration, manifest id and profiles; payment is empty off-chain.
    """
    data = b"\x47" + os.urandom(1879)
    headers = buildSegmentHeaders(7, data, TWO_PROFILES, "stream-1", 2000)
    segData = _decodeSegData(headers)
    assert segData.hash == keccak(data)
    assert len(segData.hash) == 32
    assert segData.seq == 7
    assert segData.duration == 2000
    assert segData.manifestId == b"stream-1"
    assert segData.profiles == b"invalid"
    assert profilesFromSegData(segData) == TWO_PROFILES
    assert len(segData.fullProfiles) == 2 and not segData.fullProfiles3
    assert headers["Livepeer-Payment"] == ""
    assert headers["Content-Type"] == "video/MP2T"


def test_segmentHeadersProfileFields():
    """
    Profiles go into fullProfiles2 when an output is MP4 and into
    fullProfiles3 for a fractional frame rate, as go-livepeer writes them.
    """
    mp4 = Profile("mp4out", 640, 360, 1_000_000, 30, format="mp4")
    ntsc = Profile("ntsc", 640, 360, 1_000_000, 30000, fpsDen=1001)
    segData = _decodeSegData(buildSegmentHeaders(0, b"x", [PRESETS["P240p30fps16x9"], mp4], b"m", 0))
    assert len(segData.fullProfiles2) == 2 and not segData.fullProfiles
    assert profilesFromSegData(segData)[1] == mp4
    segData = _decodeSegData(buildSegmentHeaders(0, b"x", [ntsc], b"m", 0))
    assert len(segData.fullProfiles3) == 1
    assert profilesFromSegData(segData) == [ntsc]


def test_segmentHeadersAuthToken():
    """
    An auth token from GetOrchestrator travels in SegData.
    """
    token = pb.AuthToken(token=b"t" * 32, session_id="abcd0123", expiration=1700000000)
    segData = _decodeSegData(buildSegmentHeaders(1, b"x", TWO_PROFILES, "m", 2000, authToken=token))
    assert segData.auth_token == token


def test_parseOrchAddr():
    """
    Orchestrator addresses parse like go-livepeer's -orchAddr.
    """
    assert parseOrchAddr("127.0.0.1:9000") == ("https", "127.0.0.1", 9000)
    assert parseOrchAddr(":9000") == ("https", "127.0.0.1", 9000)
    assert parseOrchAddr("o.example.com") == ("https", "o.example.com", 8935)
    assert parseOrchAddr("http://[::1]:81") == ("http", "::1", 81)
    for bad in ("ftp://x:1", "x:notaport", "https://x:1/path"):
        with pytest.raises(ValueError):
            parseOrchAddr(bad)


def test_segmentTimeoutAndSummary():
    """
    The deadline is go-livepeer's max(8 s, 4 x duration); the summary counts
    failures and computes nearest-rank percentiles over successes only.
    """
    assert segmentTimeout(2000) == 8.0
    assert segmentTimeout(0) == 8.0
    assert segmentTimeout(5000) == 20.0
    assert percentile([], 0.5) is None
    assert percentile([3, 1, 2, 4], 0.5) == 2
    assert percentile(list(range(1, 101)), 0.95) == 95
    from livepeer_tx.gateway.push import SegmentResult

    results = [
        SegmentResult(seq=0, durationMs=2000, status=200, latency=1.0),
        SegmentResult(seq=1, durationMs=2000, status=200, latency=3.0),
        SegmentResult(seq=2, durationMs=2000, status=403, error="Forbidden", latency=0.1),
    ]
    summary = summarize(results)
    assert (summary["segments"], summary["ok"], summary["failed"]) == (3, 2, 1)
    assert summary["latencyP50"] == 1.0 and summary["latencyP95"] == 3.0
    assert summary["sourceSeconds"] == 6.0


# --- segmenter ------------------------------------------------------------------------


class SegmenterTests(TestCase):
    """
    The segmenter, with real FFmpeg on real clips.
    """

    timeout = 120

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def _outDir(self, name):
        path = os.path.join(self.dir, name)
        os.makedirs(path)
        return path

    async def _checkSegments(self, segments, count, totalMs):
        self.assertEqual(len(segments), count)
        for segment in segments:
            with open(segment.path, "rb") as f:
                self.assertEqual(f.read(1), b"\x47", "not MPEG-TS")
        self.assertLessEqual(abs(sum(s.durationMs for s in segments) - totalMs), 250)

    async def _copyCut(self):
        clip = await generateTestClip(
            globalReactor, os.path.join(self.dir, "clip.ts"), seconds=6, width=320, height=180
        )
        segments = await segmentFile(globalReactor, clip, self._outDir("out"), 2)
        await self._checkSegments(segments, 3, 6000)
        for segment in segments:
            self.assertLessEqual(abs(segment.durationMs - 2000), 150)
        self.assertEqual(readSegmentList(os.path.join(self.dir, "out", "segments.csv")), segments)

    def test_copyCut(self):
        """
        A clip with a key frame every 2 s is cut into three ~2 s MPEG-TS segments.
        """
        return Deferred.fromCoroutine(self._copyCut())

    async def _sparseKeyframes(self):
        clip = await generateTestClip(
            globalReactor, os.path.join(self.dir, "sparse.mp4"), seconds=6, width=320,
            height=180, keyframeSeconds=6, audio=False,
        )
        copied = await segmentFile(globalReactor, clip, self._outDir("copy"), 2, reencode=False)
        await self._checkSegments(copied, 1, 6000)
        cut = await segmentFile(globalReactor, clip, self._outDir("auto"), 2)
        await self._checkSegments(cut, 3, 6000)
        self.assertEqual(sorted(os.listdir(os.path.join(self.dir, "auto")))[-1], "segments.csv")

    def test_sparseKeyframesReencode(self):
        """
        An MP4 with one key frame in 6 s cannot be cut by copying; the default
        mode notices and re-encodes with a key frame every segment.
        """
        return Deferred.fromCoroutine(self._sparseKeyframes())

    def test_missingInput(self):
        """
        A missing input fails with L{SegmenterError}.
        """
        d = segmentFile(globalReactor, os.path.join(self.dir, "nope.ts"), self.dir, 2)
        return self.assertFailure(d, SegmenterError)

    async def _garbage(self):
        path = os.path.join(self.dir, "garbage.ts")
        with open(path, "wb") as f:
            f.write(b"this is not video" * 100)
        with self.assertRaises(SegmenterError) as raised:
            await segmentFile(globalReactor, path, self._outDir("g"), 2)
        self.assertIn("ffmpeg failed", str(raised.exception))

    def test_garbageInput(self):
        """
        An input FFmpeg cannot read fails with its error text.
        """
        return Deferred.fromCoroutine(self._garbage())


# --- a fake orchestrator on real TLS -------------------------------------------------


class FakeOrchestrator(Resource):
    """
    Answers C{POST /segment} like go-livepeer (a TranscodeResult with rendition
    URLs on itself) and serves those URLs.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.mode = "ok"
        self.files = {}
        self.received = []
        self.hosts = []
        self.port = None

    def render_POST(self, request):
        if request.path != b"/segment":
            request.setResponseCode(404)
            return b"not found"
        body = request.content.read()
        segData = pb.SegData.FromString(
            base64.b64decode(request.getHeader("Livepeer-Segment"), validate=True)
        )
        self.received.append(
            (segData, body, request.getHeader("Content-Type"), request.getHeader("Livepeer-Payment"))
        )
        self.hosts.append(request.getHeader("Host"))
        if keccak(body) != segData.hash:
            request.setResponseCode(403)
            return b"Forbidden\n"
        if self.mode == "forbidden":
            request.setResponseCode(403)
            return b"invalid auth token\n"
        if self.mode == "hang":
            return NOT_DONE_YET
        result = pb.TranscodeResult(seq=segData.seq)
        if self.mode == "busy":
            result.error = "OrchestratorBusy"
            return result.SerializeToString()
        for profile in profilesFromSegData(segData):
            path = f"/stream/sess0001/{profile.name}/{segData.seq}.ts"
            content = f"{profile.name}:{segData.seq}:".encode() + body[:64]
            if self.mode != "lost":
                self.files[path.encode()] = content
            result.data.segments.add(
                url=f"https://127.0.0.1:{self.port}{path}", pixels=profile.width * profile.height * 60
            )
        return result.SerializeToString()

    def render_GET(self, request):
        if request.path in self.files:
            request.setHeader("Content-Type", "video/mp2t")
            return self.files[request.path]
        request.setResponseCode(404)
        return b"ErrNotFound"


class HTTP11Site(Site):
    """
    A Site offering only C{http/1.1} in ALPN, as the orchestrator's public
    port did before it served gRPC.
    """

    def acceptableProtocols(self):
        return [b"http/1.1"]


class TrackingTLSFactory(TLSMemoryBIOFactory):
    """
    Serves a Site over TLS and can wait for all its connections to close
    (for a clean reactor), whatever protocol they negotiated.
    """

    def __init__(self, serverOptions, site):
        super().__init__(serverOptions, False, site)
        self.closed = []
        self._lost = {}

    def registerProtocol(self, protocol):
        # TLS registers a protocol on both makeConnection and connectionMade.
        super().registerProtocol(protocol)
        if protocol not in self._lost:
            self._lost[protocol] = Deferred()
            self.closed.append(self._lost[protocol])

    def unregisterProtocol(self, protocol):
        super().unregisterProtocol(protocol)
        self._lost.pop(protocol).callback(None)


class FakeOrchestratorService:
    """
    C{GetOrchestrator} as a stock orchestrator answers it, recording calls;
    C{mode} C{capped} refuses as go-livepeer does, C{hang} never answers.
    """

    def __init__(self, orchestrator, wallClock):
        self.orchestrator = orchestrator
        self.wallClock = wallClock
        self.mode = "ok"
        self.requests = []
        self.issued = []
        self.host = "127.0.0.1"

    def getOrchestrator(self, request, call):
        self.requests.append(request)
        if self.mode == "capped":
            raise GRPCError(StatusCode.UNKNOWN, "Invalid orchestrator request: OrchestratorCapped")
        if self.mode == "hang":
            return Deferred()
        token = pb.AuthToken(
            token=os.urandom(32), session_id=f"{len(self.issued):08x}", expiration=int(self.wallClock()) + 1800
        )
        self.issued.append(token)
        return pb.OrchestratorInfo(
            transcoder=f"https://{self.host}:{self.orchestrator.port}", auth_token=token, address=bytes(20)
        )


class PusherTests(TestCase):
    """
    L{SegmentPusher} against a real TLS server on 127.0.0.1.
    """

    timeout = 60

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        certPEM, keyPEM = createSelfSigned("127.0.0.1")
        self.certPath = os.path.join(self.dir, "cert.pem")
        with open(self.certPath, "wb") as f:
            f.write(certPEM)
        self.fingerprint = certificateFingerprint(certPEM)
        self.serverOptions = ssl.PrivateCertificate.loadPEM(keyPEM + certPEM).options()
        self.orchestrator = FakeOrchestrator()
        self.now = 1_700_000_000.0
        self.service = FakeOrchestratorService(self.orchestrator, lambda: self.now)
        self.listen(HTTP11Site(self.orchestrator))
        self.pushers = []

    def listen(self, site):
        """
        Serve C{site} over TLS on 127.0.0.1, as the orchestrator.
        """
        self.tls = TrackingTLSFactory(self.serverOptions, site)
        self.listening = globalReactor.listenTCP(0, self.tls, interface="127.0.0.1")
        self.orchestrator.port = self.listening.getHost().port
        self.orchAddr = f"127.0.0.1:{self.orchestrator.port}"

    def serveGRPC(self, registered=True):
        """
        Serve gRPC (with C{GetOrchestrator} when C{registered}) and the
        segment resources on one port, as a stock orchestrator.
        """
        registry = ServiceRegistry()
        if registered:
            registry.addUnary(GET_ORCHESTRATOR, pb.OrchestratorRequest, self.service.getOrchestrator)
        site = Site(self.orchestrator)
        site.protocol = channelFactory(registry)
        self.listening.stopListening()
        self.listen(site)

    async def _tearDown(self):
        for pusher in self.pushers:
            await pusher.close()
        await self.listening.stopListening()
        await gatherResults(self.tls.closed)

    def tearDown(self):
        return Deferred.fromCoroutine(self._tearDown())

    def pusher(self, tlsOptions, profiles=TWO_PROFILES, **kwargs):
        kwargs.setdefault("wallClock", lambda: self.now)
        pusher = SegmentPusher(globalReactor, self.orchAddr, tlsOptions, profiles, "manifest-1", **kwargs)
        self.pushers.append(pusher)
        return pusher

    def pinned(self):
        return clientTLSOptions("127.0.0.1", fingerprint=self.fingerprint)

    async def _pinnedFingerprint(self):
        data = b"\x47segment" * 500
        result = await self.pusher(self.pinned()).pushSegment(3, data, 2000)
        self.assertTrue(result.ok, result.error)
        self.assertEqual(result.status, 200)
        self.assertEqual([r.profile for r in result.renditions], ["P240p30fps16x9", "P360p30fps16x9"])
        for rendition in result.renditions:
            self.assertEqual(rendition.data, f"{rendition.profile}:3:".encode() + data[:64])
            self.assertTrue(rendition.url.endswith(f"/{rendition.profile}/3.ts"))
        self.assertEqual(result.pixels, (426 * 240 + 640 * 360) * 60)
        self.assertGreater(result.latency, 0)
        self.assertLessEqual(result.uploadSeconds, result.latency)
        segData, body, contentType, payment = self.orchestrator.received[0]
        self.assertFalse(segData.HasField("auth_token"))
        self.assertEqual(body, data)
        self.assertEqual((segData.seq, segData.duration, segData.manifestId), (3, 2000, b"manifest-1"))
        self.assertEqual(contentType, "video/MP2T")
        self.assertEqual(payment, "")
        summary = result.toDict()
        self.assertEqual(summary["renditions"][0]["bytes"], len(result.renditions[0].data))
        json.dumps(summary)

    def test_pinnedFingerprint(self):
        """
        With the right pinned fingerprint the segment is uploaded, its
        TranscodeResult parsed and every rendition downloaded.
        """
        return Deferred.fromCoroutine(self._pinnedFingerprint())

    async def _wrongFingerprint(self):
        wrong = bytes(32)
        result = await self.pusher(clientTLSOptions("127.0.0.1", fingerprint=wrong)).pushSegment(
            0, b"data", 2000
        )
        self.assertFalse(result.ok)
        self.assertIsNone(result.status)
        self.assertIn("certificate verify failed", result.error)
        self.assertEqual(self.orchestrator.received, [])

    def test_wrongFingerprint(self):
        """
        A pinned fingerprint that does not match refuses the server before
        anything is sent.
        """
        return Deferred.fromCoroutine(self._wrongFingerprint())

    async def _caFile(self):
        result = await self.pusher(clientTLSOptions("127.0.0.1", caFile=self.certPath)).pushSegment(
            0, b"data", 2000
        )
        self.assertTrue(result.ok, result.error)
        other = os.path.join(self.dir, "other.pem")
        with open(other, "wb") as f:
            f.write(createSelfSigned("127.0.0.1")[0])
        result = await self.pusher(clientTLSOptions("127.0.0.1", caFile=other)).pushSegment(
            1, b"data", 2000
        )
        self.assertFalse(result.ok)
        self.assertIn("certificate verify failed", result.error)

    def test_trustCertificateFile(self):
        """
        Trusting the orchestrator's certificate file works; another
        self-signed certificate is not trusted.
        """
        return Deferred.fromCoroutine(self._caFile())

    async def _errors(self):
        pusher = self.pusher(self.pinned())
        self.orchestrator.mode = "forbidden"
        result = await pusher.pushSegment(0, b"data", 2000)
        self.assertEqual((result.status, result.error), (403, "invalid auth token"))
        self.orchestrator.mode = "busy"
        result = await pusher.pushSegment(1, b"data", 2000)
        self.assertEqual((result.status, result.error, result.renditions), (200, "OrchestratorBusy", []))
        self.assertFalse(result.ok)
        self.orchestrator.mode = "lost"
        result = await pusher.pushSegment(2, b"data", 2000)
        self.assertFalse(result.ok)
        self.assertIn("404", result.error)

    def test_orchestratorErrors(self):
        """
        HTTP errors, an error inside the TranscodeResult and a missing
        rendition are reported in the result.
        """
        return Deferred.fromCoroutine(self._errors())

    async def _timeout(self):
        self.orchestrator.mode = "hang"
        result = await self.pusher(self.pinned(), timeout=0.5).pushSegment(0, b"data", 2000)
        self.assertFalse(result.ok)
        self.assertIn("timed out after 0.5 s", result.error)
        self.assertEqual(result.status, None)

    def test_timeout(self):
        """
        A segment that gets no answer fails at the deadline.
        """
        return Deferred.fromCoroutine(self._timeout())

    async def _pushSegments(self):
        segments = []
        for i in range(4):
            path = os.path.join(self.dir, f"{i}.ts")
            with open(path, "wb") as f:
                f.write(b"\x47" + bytes([i]) * 100)
            segments.append((path, 2000))
        out = os.path.join(self.dir, "out")
        seen = []

        def onResult(result):
            seen.append(result.seq)
            return writeRenditions(globalReactor, result, out)

        results = await pushSegments(
            globalReactor, self.pusher(self.pinned()), segments, concurrency=2, onResult=onResult
        )
        self.assertEqual([r.seq for r in results], [0, 1, 2, 3])
        self.assertEqual(sorted(seen), [0, 1, 2, 3])
        self.assertTrue(all(r.ok for r in results))
        with open(os.path.join(out, "P360p30fps16x9", "2.ts"), "rb") as f:
            self.assertEqual(f.read(), b"P360p30fps16x9:2:\x47" + b"\x02" * 63)

    def test_pushSegmentsWritesRenditions(self):
        """
        L{pushSegments} numbers files in order and the renditions are written
        as <out>/<profile>/<seq>.ts.
        """
        return Deferred.fromCoroutine(self._pushSegments())

    async def _cli(self):
        clip = await generateTestClip(
            globalReactor, os.path.join(self.dir, "clip.ts"), seconds=4, width=320, height=180
        )
        env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
        base = [
            "-m", "livepeer_tx.cli", "push", "--orchAddr", self.orchAddr, "--json",
            "--profiles", "P144p30fps16x9", "--manifestId", "cli-test",
        ]
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            base
            + ["--orchCertFingerprint", self.fingerprint.hex(), "--out", os.path.join(self.dir, "r")]
            + [clip],
            env=env, reactor=globalReactor,
        )
        self.assertEqual(code, 0, err)
        document = json.loads(out)
        self.assertEqual(document["summary"]["ok"], 2)
        self.assertEqual(document["manifestId"], "cli-test")
        self.assertEqual([s["seq"] for s in document["segments"]], [0, 1])
        self.assertTrue(os.path.isfile(os.path.join(self.dir, "r", "P144p30fps16x9", "1.ts")))
        out, err, code = await getProcessOutputAndValue(
            sys.executable, base + ["--orchCertFingerprint", "00" * 32, clip],
            env=env, reactor=globalReactor,
        )
        self.assertEqual(code, 1)
        document = json.loads(out)
        self.assertEqual(document["summary"]["failed"], 2)

    def withoutGRPCLogged(self, events):
        return [e for e in events if "does not serve gRPC" in e.get("log_format", "")]

    async def _fallbackWithoutH2(self):
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        pusher = self.pusher(self.pinned())
        for seq in range(2):
            result = await pusher.pushSegment(seq, b"data", 2000)
            self.assertTrue(result.ok, result.error)
        self.assertEqual([s.HasField("auth_token") for s, _, _, _ in self.orchestrator.received], [False, False])
        logged = self.withoutGRPCLogged(events)
        self.assertEqual(len(logged), 1)
        self.assertIn("http/1.1", logged[0]["reason"])
        self.assertIsNone(pusher.orchestratorInfo)

    def test_fallbackWithoutH2(self):
        """
        An orchestrator that does not choose h2 in ALPN (one without gRPC)
        gets segments without an auth token; that is logged once.
        """
        return Deferred.fromCoroutine(self._fallbackWithoutH2())

    async def _fallbackUnimplemented(self):
        self.serveGRPC(registered=False)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        pusher = self.pusher(self.pinned())
        for seq in range(2):
            result = await pusher.pushSegment(seq, b"data", 2000)
            self.assertTrue(result.ok, result.error)
        self.assertFalse(any(s.HasField("auth_token") for s, _, _, _ in self.orchestrator.received))
        logged = self.withoutGRPCLogged(events)
        self.assertEqual(len(logged), 1)
        self.assertIn("not implemented", logged[0]["reason"])

    def test_fallbackUnimplemented(self):
        """
        An orchestrator serving gRPC without C{net.Orchestrator} (UNIMPLEMENTED)
        gets segments without an auth token, logged once.
        """
        return Deferred.fromCoroutine(self._fallbackUnimplemented())

    async def _fallbackPlainHTTP2(self):
        self.listening.stopListening()
        self.listen(Site(self.orchestrator))
        result = await self.pusher(self.pinned()).pushSegment(0, b"data", 2000)
        self.assertTrue(result.ok, result.error)
        self.assertFalse(self.orchestrator.received[0][0].HasField("auth_token"))

    def test_fallbackPlainHTTP2(self):
        """
        A server that speaks HTTP/2 but not gRPC (404 to the gRPC path) is
        used without an auth token.
        """
        return Deferred.fromCoroutine(self._fallbackPlainHTTP2())

    async def _getOrchestratorFirst(self):
        self.serveGRPC()
        self.service.host = "localhost"
        pusher = self.pusher(self.pinned())
        results = await gatherResults([pusher.pushSegment(seq, b"data %d" % seq, 2000) for seq in range(3)])
        self.assertTrue(all(r.ok for r in results), [r.error for r in results])
        self.assertEqual(len(self.service.requests), 1)
        self.assertEqual(self.service.requests[0], pb.OrchestratorRequest())
        (token,) = self.service.issued
        self.assertEqual([s.auth_token for s, _, _, _ in self.orchestrator.received], [token] * 3)
        # Segments go to the URI GetOrchestrator named, as a stock gateway posts them.
        self.assertEqual(self.orchestrator.hosts, [f"localhost:{self.orchestrator.port}"] * 3)
        self.assertEqual(pusher.segmentURL, f"https://localhost:{self.orchestrator.port}/segment")
        self.assertEqual(pusher.orchestratorInfo.auth_token, token)

    def test_getOrchestratorFirst(self):
        """
        Over a real gRPC call the pusher gets one session for concurrent
        segments, sends its auth token in every SegData and posts to the
        orchestrator's service URI.
        """
        return Deferred.fromCoroutine(self._getOrchestratorFirst())

    async def _tokenRefresh(self):
        self.serveGRPC()
        pusher = self.pusher(self.pinned())
        self.assertTrue((await pusher.pushSegment(0, b"a", 2000)).ok)
        self.now += 1800 - TOKEN_REFRESH_SECONDS - 1
        self.assertTrue((await pusher.pushSegment(1, b"b", 2000)).ok)
        self.assertEqual(len(self.service.issued), 1)
        self.now += 2
        self.assertTrue((await pusher.pushSegment(2, b"c", 2000)).ok)
        self.assertEqual([s.auth_token for s, _, _, _ in self.orchestrator.received],
                         [self.service.issued[0]] * 2 + [self.service.issued[1]])

    def test_tokenRefresh(self):
        """
        A token within a minute of its expiry is replaced by a new
        GetOrchestrator; until then the session's is reused.
        """
        return Deferred.fromCoroutine(self._tokenRefresh())

    async def _getOrchestratorRefused(self):
        self.serveGRPC()
        self.service.mode = "capped"
        pusher = self.pusher(self.pinned())
        result = await pusher.pushSegment(0, b"data", 2000)
        self.assertFalse(result.ok)
        self.assertIsNone(result.status)
        self.assertIn("GetOrchestrator: Invalid orchestrator request: OrchestratorCapped", result.error)
        self.assertEqual(self.orchestrator.received, [])
        self.service.mode = "ok"
        result = await pusher.pushSegment(1, b"data", 2000)
        self.assertTrue(result.ok, result.error)
        self.assertEqual(len(self.service.requests), 2)
        self.assertEqual(self.orchestrator.received[0][0].auth_token, self.service.issued[0])

    def test_getOrchestratorRefused(self):
        """
        A refused GetOrchestrator fails the segment with the orchestrator's
        text and sends nothing; the next segment asks again.
        """
        return Deferred.fromCoroutine(self._getOrchestratorRefused())

    async def _getOrchestratorHangs(self):
        self.serveGRPC()
        self.service.mode = "hang"
        result = await self.pusher(self.pinned(), timeout=0.5).pushSegment(0, b"data", 2000)
        self.assertFalse(result.ok)
        self.assertIn("timed out after 0.5 s", result.error)
        self.assertEqual(self.orchestrator.received, [])

    def test_getOrchestratorHangs(self):
        """
        A GetOrchestrator that never answers is abandoned at the segment's
        deadline (its connection closed: the tear-down waits for that).
        """
        return Deferred.fromCoroutine(self._getOrchestratorHangs())

    def test_cliPush(self):
        """
        C{livepeer-tx push --json} segments a file, pushes it and prints one
        JSON document; a wrong fingerprint makes it exit 1.
        """
        return Deferred.fromCoroutine(self._cli())


def test_demoClipOptions(capsys):
    """
    C{livepeer-tx demo} takes the clip's length and size and defaults to 6 s
    of 1280x720; a length that is not a whole number of seconds from 1 to
    600, or a size that is not two even sides from 16 to 4096, is a usage error
    (exit 2) naming the option and the reason.
    """
    parser = buildParser()
    args = parser.parse_args(["demo"])
    assert (args.clipSeconds, args.clipSize) == (6, (1280, 720))
    args = parser.parse_args(["demo", "--clipSeconds", "3", "--clipSize", "426x240"])
    assert (args.clipSeconds, args.clipSize) == (3, (426, 240))
    refusals = {
        ("--clipSeconds", "0"): "must be greater than zero",
        ("--clipSeconds", "1.5"): "not a whole number",
        ("--clipSeconds", "601"): "at most 600 seconds",
        ("--clipSize", "1280"): "not WIDTHxHEIGHT",
        ("--clipSize", "-2x4"): "not WIDTHxHEIGHT",
        ("--clipSize", "427x240"): "width and height must be even numbers from 16 to 4096",
        ("--clipSize", "8x8"): "width and height must be even numbers from 16 to 4096",
        ("--clipSize", "4098x720"): "width and height must be even numbers from 16 to 4096",
    }
    for (option, value), reason in refusals.items():
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(["demo", f"{option}={value}"])
        assert exited.value.code == 2
        assert f"argument {option}: {reason}" in capsys.readouterr().err
    for value, reason in (("soon", "not a number: 'soon'"), ("0", "must be greater than zero")):
        with pytest.raises(SystemExit):
            parser.parse_args(["push", "--orchAddr", "x:1", "--segmentDuration", value, "in.ts"])
        assert f"argument --segmentDuration: {reason}" in capsys.readouterr().err


def test_cliHelp():
    """
    C{livepeer-tx push --help} documents the options; bad arguments exit 2.
    """
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
    run = subprocess.run(
        [sys.executable, "-m", "livepeer_tx.cli", "push", "--help"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert run.returncode == 0
    for option in ("--orchAddr", "--orchCertFingerprint", "--profiles", "--segmentDuration", "--json"):
        assert option in run.stdout
    run = subprocess.run(
        [sys.executable, "-m", "livepeer_tx.cli", "push", "--orchAddr", "x:1"]
        + ["--profiles", "P9000p", "in.ts"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert run.returncode == 2
    assert "unknown profile" in run.stderr


# --- LocalNodes process handling ----------------------------------------------------


def test_freePortComesFromBelowTheEphemeralRange(monkeypatch):
    """
    Nodes' ports are picked below the kernel's ephemeral range, where no
    outgoing connection takes them before the node binds them, and are free;
    a port already bound is never returned; with no room below the range,
    or no free port found there, C{bind(0)} chooses.
    """
    from livepeer_tx.gateway import launcher

    low, high = launcher._ephemeralPorts()
    ports = {freePort() for _ in range(20)}
    assert all(max(1024, low - 16384) <= port < low for port in ports)
    with socket.socket() as held:
        held.bind(("127.0.0.1", min(ports)))
        monkeypatch.setattr(launcher.random, "randrange", lambda first, last: min(ports))
        fallback = freePort()
        assert fallback != min(ports) and low <= fallback <= high
    monkeypatch.setattr(launcher, "_ephemeralPorts", lambda: (1500, 60999))
    assert freePort() >= low


def test_optionArguments():
    """
    Keyword options become command-line arguments.
    """
    assert optionArguments({"a": 1, "b": True, "c": None, "d": False, "e": ["x", "y"]}) == [
        "--a", "1", "--b", "--e", "x", "--e", "y",
    ]


def _pidAlive(pid, settle=5.0):
    """
    Whether C{pid} is a live (non-zombie) process, giving a killed one up to
    C{settle} seconds to die.
    """
    deadline = time.monotonic() + settle
    while _pidRunning(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _pidRunning(pid)


def _pidRunning(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[1].split()[0] != "Z"


def test_localNodesProcesses(tmp_path):
    """
    A managed process logs to its file, L{Node.waitForLog} finds lines and
    reports an exit with the log tail, and stopping kills the whole process
    group (children included). The secret file is private.
    """
    script = textwrap.dedent(
        """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("ready child=%d" % child.pid, flush=True)
        signal_name = sys.argv[1]
        if signal_name == "exit":
            print("giving up", flush=True)
            sys.exit(3)
        time.sleep(60)
        """
    )
    with LocalNodes(str(tmp_path)) as nodes:
        assert os.stat(nodes.secretPath).st_mode & 0o777 == 0o600
        node = nodes.startProcess("sleeper", [sys.executable, "-c", script, "stay"])
        match = node.waitForLog(r"ready child=(\d+)", timeout=30)
        child = int(match.group(1))
        assert node.running and _pidRunning(child)
        offset = node.logOffset()
        with pytest.raises(NodeError, match="did not log"):
            node.waitForLog("ready", timeout=0.3, since=offset)
        status = node.stop(timeout=5)
        assert status == -signal.SIGTERM
        assert not _pidAlive(child)

        quitter = nodes.startProcess("quitter", [sys.executable, "-c", script, "exit"])
        with pytest.raises(NodeError) as raised:
            quitter.waitForLog("never printed", timeout=30)
        assert "exited with status 3" in str(raised.value)
        assert "giving up" in str(raised.value)

        crasher = nodes.startProcess("crasher", [sys.executable, "-c", script, "stay"])
        crasher.waitForLog("ready", timeout=30)
        assert crasher.kill() == -signal.SIGKILL
        crasher.restart()
        crasher.waitForLog(r"ready[\s\S]*ready", timeout=30)
        assert crasher.running
    assert not crasher.running
    assert nodes.stopAll() == {"sleeper": -signal.SIGTERM, "quitter": 3, "crasher": -signal.SIGTERM}


# --- the demo ---------------------------------------------------------------------------


def test_demo(tmp_path):
    """
    C{livepeer-tx demo} with a short small clip starts both nodes,
    transcodes each segment into every profile's rendition (P720p's upscaled
    to 1280x720), stops the nodes and exits 0.
    """
    out = tmp_path / "demo-output"
    clipSeconds = 3
    segments = math.ceil(clipSeconds / SEGMENT_SECONDS)
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "livepeer_tx.cli", "demo", "--out", str(out)]
        + ["--workDir", str(tmp_path / "work"), "--clipSeconds", str(clipSeconds), "--clipSize", "256x144"],
        capture_output=True, text=True, timeout=240,
        env=dict(os.environ, PYTHONPATH=PROJECT_ROOT),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for profile in DEMO_PROFILES.split(","):
        assert sorted(os.listdir(out / profile)) == sorted(f"{seq}.ts" for seq in range(segments))
    assert "426x240" in run.stdout and "1280x720" in run.stdout
    assert f"{segments}/{segments} segments transcoded" in run.stdout
    print(f"demo took {time.monotonic() - started:.1f} s")
