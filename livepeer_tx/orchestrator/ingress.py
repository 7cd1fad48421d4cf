# -*- test-case-name: tests.test_ingress -*-
"""
Gateway ingress: go-livepeer's C{POST /segment}, off-chain mode.

Request and response follow go-livepeer (see golivepeer-wire.md §2.4): a
base64 protobuf C{SegData} in the C{Livepeer-Segment} header, a C{Livepeer-Payment}
header, the segment as the body, and a protobuf C{TranscodeResult} back.
"""

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import secrets

from eth_utils import keccak
from google.protobuf.message import DecodeError
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from livepeer_tx.chain.payments import PaymentError, decodePayment
from livepeer_tx.orchestrator.dispatch import (
    MISMATCHED, ORCHESTRATOR_BUSY, TOO_LONG, ZERO_SEGMENTS, SegmentJob, TranscodeFailed,
)
from livepeer_tx.orchestrator.routing import NO_TRANSCODERS, ORCHESTRATOR_CAPPED
from livepeer_tx.profiles import ProfileError, profilesFromSegData
from livepeer_tx.proto import lp_rpc_pb2 as pb

SEGMENT_HEADER = b"livepeer-segment"
PAYMENT_HEADER = b"livepeer-payment"
MAX_DURATION_MS = 5 * 60 * 1000
SESSION_ID_LENGTH = 16
INTERNAL_ERROR = "internal orchestrator error"
PROTOBUF = b"application/x-protobuf"
TEXT = b"text/plain; charset=utf-8"
_PRINTABLE_MANIFEST = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# The reasons of the rejected-segments metric (a bounded set).
REJECTED_PAYMENT = "payment"
REJECTED_HEADER = "segment header"
REJECTED_PROFILES = "profiles"
REJECTED_DURATION = "duration"
REJECTED_SEQ = "seq"
REJECTED_AUTH = "auth token"
REJECTED_HASH = "hash"
REJECTED_SIZE = "size"
REJECTED_CAPPED = "capped"
REJECTED_ADDRESS_CAPPED = "address capped"


class SegmentRejected(Exception):
    """
    A segment is refused before transcoding; carries the HTTP status, the
    text and the metric's reason label.
    """

    def __init__(self, status, message, reason):
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


class SessionNamer:
    """
    Names sessions so that one gateway cannot reach another's.

    Until auth tokens are served, a session is named by an HMAC-SHA256, keyed
    with a random per-process key, of the gateway's source address and the
    segment's manifest id: the same manifest id sent from elsewhere is another
    session, and the name (visible in rendition URLs) reveals neither input.

    @param key: the HMAC key; random when not given.
    """

    def __init__(self, key=None):
        self._key = key if key is not None else secrets.token_bytes(32)

    def sessionIdFor(self, segData, source):
        """
        The session of a segment from C{source}: L{SESSION_ID_LENGTH} hex digits.
        """
        sourceBytes = source.encode("utf-8")
        message = len(sourceBytes).to_bytes(2, "big") + sourceBytes + segData.manifestId
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:SESSION_ID_LENGTH]


def sourceOf(address):
    """
    The source a connection counts against: its IPv4 address, or its IPv6
    /64 network (one host usually has a whole /64).
    """
    host = getattr(address, "host", None)
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def manifestLabel(manifestId):
    """
    A manifest id fit for a log line: itself when it is short printable text,
    else (the start of) its hex.
    """
    try:
        text = manifestId.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if _PRINTABLE_MANIFEST.match(text):
        return text
    return manifestId[:32].hex() or "-"


def parseSegmentHeader(value):
    """
    Decode and check a C{Livepeer-Segment} header.

    @return: C{(segData, profiles)}.
    @raise SegmentRejected: with go-livepeer's status (403) and wording where
        it has one.
    """
    if not value:
        raise SegmentRejected(403, "ErrorSegEncoding: missing Livepeer-Segment header", REJECTED_HEADER)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SegmentRejected(403, "ErrorSegEncoding", REJECTED_HEADER) from None
    segData = pb.SegData()
    try:
        segData.ParseFromString(raw)
    except DecodeError as e:
        raise SegmentRejected(403, f"proto: cannot parse SegData: {e}", REJECTED_HEADER) from None
    try:
        profiles = profilesFromSegData(segData)
    except ProfileError as e:
        raise SegmentRejected(403, str(e), REJECTED_PROFILES) from None
    if not profiles:
        raise SegmentRejected(403, "no profiles requested", REJECTED_PROFILES)
    if segData.duration < 0 or segData.duration > MAX_DURATION_MS:
        raise SegmentRejected(403, "invalid duration", REJECTED_DURATION)
    if segData.seq < 0:
        raise SegmentRejected(403, "invalid seq", REJECTED_SEQ)
    if segData.HasField("auth_token") and segData.auth_token.token:
        # Tokens come from GetOrchestrator, which this orchestrator does not serve yet.
        raise SegmentRejected(403, "invalid auth token", REJECTED_AUTH)
    if len(segData.hash) != 32:
        raise SegmentRejected(403, "invalid segment hash", REJECTED_HASH)
    return segData, profiles


class _Progress:
    """
    How far one segment got: once C{accepted}, the 200 status line has gone
    out and every answer must be a C{TranscodeResult}.
    """

    accepted = False
    seq = 0


class SegmentResource(resource.Resource):
    """
    C{POST /segment}: check the segment, transcode it on a remote transcoder,
    store the renditions and answer with their URLs.

    @param app: the L{Orchestrator} (pool, dispatcher, store, metrics).
    @param payments: the payment processor (off-chain or ticket based).
    @param maxSegmentBytes: larger bodies are refused with 413.
    @param sessionNamer: the L{SessionNamer} (one with a random key by default).
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, app, payments, maxSegmentBytes, sessionNamer=None):
        super().__init__()
        self._app = app
        self._payments = payments
        self.maxSegmentBytes = maxSegmentBytes
        self._sessionNamer = sessionNamer or SessionNamer()

    @property
    def limitPerSource(self):
        """
        Whether sessions are limited per source address: when work is free
        (off-chain, or at a price of 0).
        """
        return getattr(self._payments, "price", 0) == 0

    def render_POST(self, request):
        """
        Handle one segment; the answer is written when the renditions are back.
        """
        progress = _Progress()
        d = defer.ensureDeferred(self._handle(request, progress))
        finished = []
        request.notifyFinish().addBoth(finished.append)

        def respond(outcome):
            status, body, contentType = outcome
            if finished:
                return
            if not progress.accepted:
                request.setResponseCode(status)
                request.setHeader(b"content-type", contentType)
            request.write(body)
            request.finish()

        def crashed(failure):
            self._log.failure("Unexpected error handling a segment", failure)
            if progress.accepted:
                # The 200 has gone out: the gateway must still get a TranscodeResult.
                self._app.metrics.segmentsFailed.labels(reason=INTERNAL_ERROR).inc()
                result = pb.TranscodeResult(seq=progress.seq, error=INTERNAL_ERROR)
                return 200, result.SerializeToString(), PROTOBUF
            return 500, b"Internal Server Error\n", TEXT

        d.addErrback(crashed).addCallback(respond)
        return server.NOT_DONE_YET

    async def _handle(self, request, progress):
        metrics = self._app.metrics
        pool = self._app.pool
        paymentHeader = (request.getHeader(PAYMENT_HEADER) or b"").decode("latin-1")
        source = sourceOf(request.getClientAddress())
        try:
            # go-livepeer decodes the payment before it looks at the segment.
            try:
                payment = decodePayment(paymentHeader) if paymentHeader else None
            except PaymentError as e:
                raise SegmentRejected(e.status, e.message, REJECTED_PAYMENT) from None
            segData, profiles = parseSegmentHeader(request.getHeader(SEGMENT_HEADER))
            sessionId = self._sessionNamer.sessionIdFor(segData, source)
            limitedSource = source if self.limitPerSource else None
            if pool.wouldExceedLimit(sessionId):
                raise SegmentRejected(403, ORCHESTRATOR_CAPPED, REJECTED_CAPPED)
            if pool.wouldExceedLimit(sessionId, limitedSource):
                self._log.info("Too many sessions from source={source}: {count} of {limit}", source=source,
                               count=pool.sessionsFrom(source), limit=pool.sourceSessionLimit)
                raise SegmentRejected(403, ORCHESTRATOR_CAPPED, REJECTED_ADDRESS_CAPPED)
            try:
                await self._payments.processPayment(payment, sessionId)
                self._payments.checkBalance(sessionId)
            except PaymentError as e:
                raise SegmentRejected(e.status, e.message, REJECTED_PAYMENT) from None
            body = request.content.read(self.maxSegmentBytes + 1)
            if len(body) > self.maxSegmentBytes:
                raise SegmentRejected(413, f"segment larger than {self.maxSegmentBytes} bytes", REJECTED_SIZE)
            digest = request.bodyKeccak.digest() if getattr(request, "bodyKeccak", None) else keccak(body)
            if digest != segData.hash:
                raise SegmentRejected(403, "Forbidden", REJECTED_HASH)
        except SegmentRejected as e:
            metrics.segmentsRejected.labels(reason=e.reason).inc()
            self._log.info("Rejected segment from {peer}: {status} {message}",
                           peer=_peer(request), status=e.status, message=e.message)
            return e.status, e.message.encode("utf-8") + b"\n", TEXT

        metrics.segmentsReceived.inc()
        # Like go-livepeer: answer 200 as soon as the upload is accepted, so the
        # gateway knows its upload is done; later errors travel in the body.
        request.setResponseCode(200)
        request.setHeader(b"content-type", PROTOBUF)
        request.write(b"")
        progress.accepted, progress.seq = True, segData.seq
        manifest = manifestLabel(segData.manifestId)
        job = SegmentJob(sessionId, segData.seq, body, profiles, segData.duration or 2000, source=limitedSource)
        result = pb.TranscodeResult(seq=segData.seq)
        started = self._app.clock.seconds()
        try:
            taskResult = await self._app.dispatcher.transcode(job)
        except TranscodeFailed as e:
            metrics.segmentsFailed.labels(reason=_reasonLabel(str(e))).inc()
            self._log.warn("Segment failed manifestID={manifest} sessionID={sessionId} seqNo={seq} err={err!r}",
                           manifest=manifest, sessionId=sessionId, seq=job.seq, err=str(e))
            result.error = str(e)
            return 200, result.SerializeToString(), PROTOBUF
        elapsed = self._app.clock.seconds() - started
        metrics.transcodeSeconds.observe(elapsed)
        if taskResult.ffmpegSeconds:
            metrics.overheadSeconds.observe(max(0.0, elapsed - taskResult.ffmpegSeconds))
        encodedPixels = 0
        base = self._app.serviceURL
        for profile, rendition in zip(profiles, taskResult.renditions):
            name = f"{profile.name}/{job.seq}{profile.extension}"
            self._app.store.put(sessionId, name, rendition.data, profile.mimeType)
            result.data.segments.add(url=f"{base}/stream/{sessionId}/{name}", pixels=rendition.pixels)
            encodedPixels += rendition.pixels
        body = result.SerializeToString()
        metrics.segmentsTranscoded.inc()
        metrics.pixelsProcessed.inc(encodedPixels)
        if taskResult.attempts > 1:
            metrics.segmentsRetried.inc()
        self._payments.debit(sessionId, encodedPixels)
        self._log.info(
            "Successfully received results from remote transcoder={transcoder} segments={segments} "
            "manifestID={manifest} sessionID={sessionId} seqNo={seq} attempts={attempts}",
            transcoder=taskResult.transcoder, segments=len(taskResult.renditions),
            manifest=manifest, sessionId=sessionId, seq=job.seq, attempts=taskResult.attempts,
        )
        return 200, body, PROTOBUF


_KNOWN_ERRORS = frozenset(
    (NO_TRANSCODERS, ORCHESTRATOR_BUSY, ORCHESTRATOR_CAPPED, TOO_LONG, MISMATCHED, ZERO_SEGMENTS, INTERNAL_ERROR))


def _reasonLabel(error):
    return error if error in _KNOWN_ERRORS else "transcoder error"


def _peer(request):
    address = request.getClientAddress()
    return f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
