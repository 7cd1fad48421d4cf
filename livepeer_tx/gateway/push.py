# -*- test-case-name: tests.test_push -*-
"""
Push segments to an orchestrator the way a go-livepeer gateway does.

First the gateway asks the orchestrator C{GetOrchestrator} over gRPC (HTTP/2
on the same TLS port) for a session: an auth token and the URL to post to.
An orchestrator that does not serve gRPC there (it does not choose C{h2} in
ALPN, or answers UNIMPLEMENTED) is used without a token, which older
livepeer-tx orchestrators accept; that is logged once.

A segment travels as C{POST /segment} on the orchestrator's public TLS port:
the job description is a base64 protobuf C{SegData} in the C{Livepeer-Segment}
header (with the session's auth token), the body is the MPEG-TS segment. The
answer is a protobuf C{TranscodeResult} naming one URL per rendition, which
the gateway then downloads with plain C{GET}s.
"""

import base64
import os
import time
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urlsplit

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredLock,
    DeferredSemaphore,
    FirstError,
    TimeoutError,
    gatherResults,
    maybeDeferred,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseFailed,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from livepeer_tx.addresses import formatHostPort, parseHostPort
from livepeer_tx.ethaddress import keccak256
from livepeer_tx.gateway.grpcclient import GRPCUnavailable, unaryCall
from livepeer_tx.profiles import LEGACY_PROFILES, addProfilesToSegData, segmentTimeout
from livepeer_tx.proto import lp_rpc_pb2 as pb
from livepeer_tx.rpc.wire import GRPCError, StatusCode
from livepeer_tx.web import BytesProducer

DEFAULT_ORCHESTRATOR_PORT = 8935
SEGMENT_CONTENT_TYPE = "video/MP2T"
CONNECT_TIMEOUT = 5
GET_ORCHESTRATOR = "/net.Orchestrator/GetOrchestrator"
# go-livepeer's GRPCTimeout, the gateway's limit on a GetOrchestrator call.
GET_ORCHESTRATOR_TIMEOUT = 8.0
# A session token this close to its expiry is replaced (a new session).
TOKEN_REFRESH_SECONDS = 60


class Rendition(NamedTuple):
    """
    One transcoded rendition of a segment, as downloaded from the orchestrator.
    """

    profile: str
    url: str
    pixels: int
    data: bytes


@dataclass
class SegmentResult:
    """
    What happened to one pushed segment.

    @ivar seq: the segment's sequence number.
    @ivar status: HTTP status of C{POST /segment}, or C{None} when no response came.
    @ivar error: why the segment failed (HTTP error body, the orchestrator's
        C{TranscodeResult.error}, a refused C{GetOrchestrator}, a transport
        error or a timeout), or C{None}.
    @ivar renditions: the downloaded renditions, in profile order.
    @ivar latency: seconds from the start of the exchange (including a
        C{GetOrchestrator} call it waited for) to the last rendition
        downloaded (or to the failure).
    @ivar uploadSeconds: seconds from the start of the upload until the
        orchestrator answered with headers (it does so once it has the whole
        segment).
    @ivar transcodeSeconds: seconds from the response headers to the end of the
        C{TranscodeResult} body, i.e. the transcoding itself.
    @ivar downloadSeconds: seconds spent fetching the renditions.
    """

    seq: int
    durationMs: int = 0
    bytesSent: int = 0
    status: int | None = None
    error: str | None = None
    renditions: list = field(default_factory=list)
    latency: float = 0.0
    uploadSeconds: float | None = None
    transcodeSeconds: float | None = None
    downloadSeconds: float | None = None

    @property
    def ok(self):
        """
        Whether the segment was transcoded and every rendition downloaded.
        """
        return self.status == 200 and self.error is None

    @property
    def pixels(self):
        """
        The encoded pixels of all renditions, as reported by the orchestrator.
        """
        return sum(r.pixels for r in self.renditions)

    def toDict(self):
        """
        The result as a JSON-compatible dict (rendition bytes become sizes).
        """
        return {
            "seq": self.seq,
            "ok": self.ok,
            "status": self.status,
            "error": self.error,
            "durationMs": self.durationMs,
            "bytesSent": self.bytesSent,
            "latency": self.latency,
            "uploadSeconds": self.uploadSeconds,
            "transcodeSeconds": self.transcodeSeconds,
            "downloadSeconds": self.downloadSeconds,
            "pixels": self.pixels,
            "renditions": [
                {
                    "profile": r.profile,
                    "url": r.url,
                    "pixels": r.pixels,
                    "bytes": len(r.data),
                }
                for r in self.renditions
            ],
        }


class SegmentError(Exception):
    """
    A segment exchange failed in a way the orchestrator did not report itself.
    """


def parseOrchAddr(text):
    """
    Parse an orchestrator address like go-livepeer's C{-orchAddr}.

    C{host:port}, C{:port} (host 127.0.0.1), C{host} (port 8935) and
    C{https://host:port} are accepted; C{http://} selects cleartext.

    @return: C{(scheme, host, port)}.
    @raise ValueError: the address cannot be parsed.
    """
    text = text.strip()
    scheme = "https"
    if text.startswith("http://"):
        scheme, text = "http", text[len("http://"):]
    host, port = parseHostPort(text, "127.0.0.1", DEFAULT_ORCHESTRATOR_PORT)
    return scheme, host, port


def buildSegmentHeaders(seq, data, profiles, manifestId, durationMs, authToken=None):
    """
    The headers of a go-livepeer C{POST /segment} request.

    @param seq: the segment sequence number.
    @param data: the segment bytes (their keccak-256 goes into C{SegData.hash}).
    @param profiles: the L{livepeer_tx.profiles.Profile} list to transcode to.
    @param manifestId: the stream's manifest id (C{str} or C{bytes}).
    @param durationMs: the segment duration in milliseconds.
    @param authToken: an optional C{AuthToken} message from C{GetOrchestrator}.
    @return: a dict of header name to value, both C{str}.
    """
    if isinstance(manifestId, str):
        manifestId = manifestId.encode("utf-8")
    segData = pb.SegData(
        manifestId=manifestId,
        seq=seq,
        hash=keccak256(data),
        profiles=LEGACY_PROFILES,
        duration=int(durationMs),
    )
    addProfilesToSegData(segData, profiles)
    if authToken is not None:
        segData.auth_token.CopyFrom(authToken)
    return {
        "Livepeer-Segment": base64.b64encode(segData.SerializeToString()).decode("ascii"),
        "Livepeer-Payment": "",
        "Content-Type": SEGMENT_CONTENT_TYPE,
    }


@implementer(IPolicyForHTTPS)
class FixedTrustPolicy:
    """
    An HTTPS policy that uses one client TLS creator for every host: the
    orchestrator's renditions live on the same server as C{/segment}, so
    whatever trusts it (a pinned fingerprint, its certificate) trusts them.
    """

    def __init__(self, tlsOptions):
        self._tlsOptions = tlsOptions

    def creatorForNetloc(self, hostname, port):
        """
        Return the configured creator, whatever the host.
        """
        return self._tlsOptions


def describeFailure(failure):
    """
    A one-line reason for a failed exchange, unwrapping Agent's wrappers.
    """
    if failure.check(TimeoutError):
        return "timed out"
    if failure.check(FirstError):
        return describeFailure(failure.value.subFailure)
    reasons = getattr(failure.value, "reasons", None)
    if failure.check(ResponseFailed) or reasons:
        inner = [describeFailure(r) for r in reasons or ()]
        return f"{type(failure.value).__name__}: {'; '.join(inner)}"
    return f"{type(failure.value).__name__}: {failure.getErrorMessage()}"


class SegmentPusher:
    """
    Uploads segments of one stream to one orchestrator and downloads the
    renditions, over a pool of persistent HTTPS connections.

    Before the first segment it asks C{GetOrchestrator} for a session (see
    the module docstring), and again when the session's token is about to
    expire; a refusal fails the segments that waited for it, and the next
    segment asks again.

    @ivar manifestId: the stream's manifest id, sent with every segment.
    @ivar profiles: the renditions asked for.
    @ivar orchestratorInfo: the last C{OrchestratorInfo} received, or L{None}.
    """

    _log = Logger()

    def __init__(
        self,
        reactor,
        orchAddr,
        tlsOptions,
        profiles,
        manifestId,
        timeout=None,
        authToken=None,
        maxConnections=8,
        getOrchestrator=True,
        wallClock=time.time,
    ):
        """
        @param reactor: the reactor to run on.
        @param orchAddr: the orchestrator's public address (see L{parseOrchAddr}).
        @param tlsOptions: a client TLS creator from
            L{livepeer_tx.tls.clientTLSOptions}, used for every host; C{None}
            trusts the system's CA store with host name checks.
        @param profiles: the L{livepeer_tx.profiles.Profile} list.
        @param manifestId: the stream's manifest id.
        @param timeout: seconds allowed per segment (upload, transcode and
            downloads); C{None} uses go-livepeer's max(8 s, 4 x duration).
        @param authToken: an C{AuthToken} message to send with every segment
            instead of asking C{GetOrchestrator} for one.
        @param maxConnections: persistent connections kept per host.
        @param getOrchestrator: whether to ask C{GetOrchestrator} for a
            session first (as a stock gateway does).
        @param wallClock: unix time now, to tell when a token expires.
        """
        scheme, host, port = parseOrchAddr(orchAddr)
        self._reactor = reactor
        self._orchAddr = orchAddr
        self._scheme, self._host, self._port = scheme, host, port
        self._segmentURL = f"{scheme}://{formatHostPort(host, port)}/segment".encode("ascii")
        self.profiles = list(profiles)
        self.manifestId = manifestId
        self._timeout = timeout
        self._authToken = authToken
        self._askOrchestrator = getOrchestrator and authToken is None
        self._wallClock = wallClock
        self._sessionLock = DeferredLock()
        self.orchestratorInfo = None
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = maxConnections
        self._policy = BrowserLikePolicyForHTTPS() if tlsOptions is None else FixedTrustPolicy(tlsOptions)
        self._agent = Agent(
            reactor, contextFactory=self._policy, connectTimeout=CONNECT_TIMEOUT, pool=self._pool
        )

    @property
    def segmentURL(self):
        """
        The URL segments are posted to.
        """
        return self._segmentURL.decode("ascii")

    def pushSegment(self, seq, data, durationMs):
        """
        Upload one segment, wait for the transcode and download every rendition.

        Failures of any kind (HTTP errors, an error in the C{TranscodeResult},
        TLS or connection errors, the deadline) are reported in the result,
        never as an errback.

        @return: a L{Deferred} firing with a L{SegmentResult}.
        """
        result = SegmentResult(seq=seq, durationMs=durationMs, bytesSent=len(data))
        started = self._reactor.seconds()
        deadline = self._timeout if self._timeout is not None else segmentTimeout(durationMs)
        d = Deferred.fromCoroutine(self._exchange(result, data))
        timedOut = []

        def timeOut():
            timedOut.append(True)
            d.cancel()

        timer = self._reactor.callLater(deadline, timeOut)

        def failed(failure):
            # Agent wraps the cancellation (ResponseNeverReceived etc.), so
            # the timer, not the failure type, says whether the deadline hit.
            if timedOut:
                reason = f"timed out after {deadline:g} s"
            else:
                reason = describeFailure(failure)
            result.error = reason
            self._log.warn("Segment seq={seq} failed: {reason}", seq=seq, reason=reason)

        def finished(_):
            if timer.active():
                timer.cancel()
            result.latency = self._reactor.seconds() - started
            return result

        d.addErrback(failed)
        d.addCallback(finished)
        return d

    def _sessionIsFresh(self):
        info = self.orchestratorInfo
        if info is None:
            return False
        if not info.HasField("auth_token"):
            return True
        return info.auth_token.expiration - TOKEN_REFRESH_SECONDS > self._wallClock()

    async def sessionToken(self):
        """
        The auth token to send with the next segment: the one given, the
        current session's (asking C{GetOrchestrator} for a new session when
        there is none or it is about to expire), or L{None} when the
        orchestrator does not serve gRPC.

        @raise SegmentError: C{GetOrchestrator} failed.
        """
        if self._askOrchestrator and not self._sessionIsFresh():
            await self._sessionLock.acquire()
            try:
                # Concurrent segments wait for one call.
                if self._askOrchestrator and not self._sessionIsFresh():
                    await self._getOrchestrator()
            finally:
                self._sessionLock.release()
        if self._askOrchestrator and self.orchestratorInfo.HasField("auth_token"):
            return self.orchestratorInfo.auth_token
        return self._authToken

    async def _getOrchestrator(self):
        if self._scheme != "https":
            self._withoutGRPC("gRPC needs TLS")
            return
        tlsOptions = self._policy.creatorForNetloc(self._host.encode("idna"), self._port)
        try:
            info = await unaryCall(
                self._reactor, self._host, self._port, tlsOptions, GET_ORCHESTRATOR,
                pb.OrchestratorRequest(), pb.OrchestratorInfo, GET_ORCHESTRATOR_TIMEOUT,
                connectTimeout=CONNECT_TIMEOUT,
            )
        except GRPCUnavailable as e:
            self._withoutGRPC(str(e))
            return
        except GRPCError as e:
            if e.code == StatusCode.UNIMPLEMENTED:
                self._withoutGRPC(f"GetOrchestrator is not implemented: {e.message}")
                return
            raise SegmentError(f"GetOrchestrator: {e.message or e.code.name}") from None
        except CancelledError:
            raise
        except Exception:
            raise SegmentError(f"GetOrchestrator: {describeFailure(Failure())}") from None
        self.orchestratorInfo = info
        base = urlsplit(info.transcoder)
        if base.scheme in ("http", "https") and base.netloc:
            self._segmentURL = info.transcoder.rstrip("/").encode("ascii") + b"/segment"
        self._log.info(
            "GetOrchestrator: sessionID={sessionId} posting to {url}",
            sessionId=info.auth_token.session_id, url=self.segmentURL,
        )

    def _withoutGRPC(self, reason):
        self._askOrchestrator = False
        self._log.info(
            "The orchestrator at {orchAddr} does not serve gRPC ({reason}): pushing without "
            "GetOrchestrator or an auth token",
            orchAddr=self._orchAddr, reason=reason,
        )

    async def _exchange(self, result, data):
        authToken = await self.sessionToken()
        headers = buildSegmentHeaders(
            result.seq, data, self.profiles, self.manifestId, result.durationMs, authToken
        )
        postedAt = self._reactor.seconds()
        response = await self._agent.request(
            b"POST",
            self._segmentURL,
            Headers({name: [value] for name, value in headers.items()}),
            BytesProducer(data),
        )
        headersAt = self._reactor.seconds()
        result.uploadSeconds = headersAt - postedAt
        result.status = response.code
        body = await readBody(response)
        result.transcodeSeconds = self._reactor.seconds() - headersAt
        if response.code != 200:
            text = body.decode("utf-8", "replace").strip()
            result.error = text or response.phrase.decode("ascii", "replace")
            return
        transcoded = pb.TranscodeResult.FromString(body)
        if transcoded.WhichOneof("result") == "error":
            result.error = transcoded.error or "unknown error"
            return
        if transcoded.WhichOneof("result") != "data":
            result.error = "TranscodeResult carries neither data nor error"
            return
        segments = list(transcoded.data.segments)
        if len(segments) != len(self.profiles):
            result.error = (
                f"expected {len(self.profiles)} renditions, orchestrator returned {len(segments)}"
            )
            return
        downloadStarted = self._reactor.seconds()
        # Wait for every download, failed or not, so no connection is left mid-flight.
        outcomes = await DeferredList(
            [Deferred.fromCoroutine(self._fetch(segment.url)) for segment in segments],
            consumeErrors=True,
        )
        for succeeded, value in outcomes:
            if not succeeded:
                value.raiseException()
        datas = [value for _, value in outcomes]
        result.downloadSeconds = self._reactor.seconds() - downloadStarted
        result.renditions = [
            Rendition(profile.name, segment.url, segment.pixels, content)
            for profile, segment, content in zip(self.profiles, segments, datas)
        ]

    async def _fetch(self, url):
        response = await self._agent.request(b"GET", url.encode("ascii"))
        body = await readBody(response)
        if response.code != 200:
            raise SegmentError(
                f"GET {url}: {response.code} {response.phrase.decode('ascii', 'replace')}"
            )
        return body

    def close(self):
        """
        Close the pooled connections.

        @return: a L{Deferred} that fires once they are closed.
        """
        return self._pool.closeCachedConnections()


def pushSegments(reactor, pusher, segments, concurrency=1, onResult=None, firstSeq=0):
    """
    Push segment files through C{pusher}, at most C{concurrency} at a time,
    numbering them from C{firstSeq} in order.

    @param segments: C{(path, durationMs)} pairs, e.g. from
        L{livepeer_tx.gateway.segmenter.segmentFile}.
    @param onResult: called with each L{SegmentResult} as it completes; may
        return a L{Deferred} (for instance to write the renditions).
    @return: a L{Deferred} firing with the L{SegmentResult}s in sequence order.
    """
    semaphore = DeferredSemaphore(max(1, concurrency))

    async def one(seq, path, durationMs):
        data = await deferToThreadPool(reactor, reactor.getThreadPool(), _readFile, path)
        result = await pusher.pushSegment(seq, data, durationMs)
        if onResult is not None:
            await maybeDeferred(onResult, result)
        return result

    return gatherResults(
        [
            semaphore.run(lambda s=seq, p=path, d=durationMs: Deferred.fromCoroutine(one(s, p, d)))
            for seq, (path, durationMs) in enumerate(segments, firstSeq)
        ],
        consumeErrors=True,
    )


def writeRenditions(reactor, result, outDir):
    """
    Write a result's renditions as C{<outDir>/<profile>/<seq>.ts}, in a thread.

    @return: a L{Deferred} firing with the list of paths written.
    """
    return deferToThreadPool(reactor, reactor.getThreadPool(), _writeRenditions, result, outDir)


def _writeRenditions(result, outDir):
    paths = []
    for rendition in result.renditions:
        directory = os.path.join(outDir, rendition.profile)
        os.makedirs(directory, exist_ok=True)
        extension = os.path.splitext(urlsplit(rendition.url).path)[1] or ".ts"
        path = os.path.join(directory, f"{result.seq}{extension}")
        with open(path, "wb") as f:
            f.write(rendition.data)
        paths.append(path)
    return paths


def _readFile(path):
    with open(path, "rb") as f:
        return f.read()


def percentile(values, fraction):
    """
    The nearest-rank percentile of C{values} (C{fraction} in 0..1), or C{None}.
    """
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, int(-(-fraction * len(ordered) // 1)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(results, wallSeconds=None):
    """
    Aggregate L{SegmentResult}s: counts, latency percentiles and pixels.

    @return: a JSON-compatible dict.
    """
    latencies = [r.latency for r in results if r.ok]
    summary = {
        "segments": len(results),
        "ok": sum(1 for r in results if r.ok),
        "failed": sum(1 for r in results if not r.ok),
        "latencyP50": percentile(latencies, 0.50),
        "latencyP95": percentile(latencies, 0.95),
        "latencyMax": max(latencies) if latencies else None,
        "pixels": sum(r.pixels for r in results),
        "sourceSeconds": sum(r.durationMs for r in results) / 1000.0,
    }
    if wallSeconds is not None:
        summary["wallSeconds"] = wallSeconds
    return summary


__all__ = [
    "Rendition",
    "SegmentResult",
    "SegmentPusher",
    "pushSegments",
    "writeRenditions",
    "SegmentError",
    "FixedTrustPolicy",
    "buildSegmentHeaders",
    "parseOrchAddr",
    "segmentTimeout",
    "percentile",
    "summarize",
    "describeFailure",
]
