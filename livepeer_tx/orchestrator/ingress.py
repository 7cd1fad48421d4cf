# -*- test-case-name: tests.test_ingress -*-
"""
Gateway ingress: go-livepeer's C{POST /segment}, off-chain mode.

Request and response follow go-livepeer (see golivepeer-wire.md §2.4): a
base64 protobuf C{SegData} in the C{Livepeer-Segment} header, a C{Livepeer-Payment}
header, the segment as the body, and a protobuf C{TranscodeResult} back.
"""

import base64
import binascii
import re

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
_SAFE_SESSION = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class SegmentRejected(Exception):
    """
    A segment is refused before transcoding; carries the HTTP status and text.
    """

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def sessionIdFor(segData):
    """
    The session a segment belongs to. Without gRPC C{GetOrchestrator} there are
    no auth tokens yet, so a session is named by the manifest id (hex when the
    manifest id is not URL-safe text).
    """
    manifestId = segData.manifestId
    try:
        text = manifestId.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if _SAFE_SESSION.match(text) and text not in (".", ".."):
        return text
    return manifestId.hex() or "default"


def parseSegmentHeader(value):
    """
    Decode and check a C{Livepeer-Segment} header.

    @return: C{(segData, profiles, sessionId)}.
    @raise SegmentRejected: with go-livepeer's status (403) and wording.
    """
    if not value:
        raise SegmentRejected(403, "ErrorSegEncoding: missing Livepeer-Segment header")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SegmentRejected(403, "ErrorSegEncoding") from None
    segData = pb.SegData()
    try:
        segData.ParseFromString(raw)
    except DecodeError as e:
        raise SegmentRejected(403, f"proto: cannot parse SegData: {e}") from None
    try:
        profiles = profilesFromSegData(segData)
    except ProfileError as e:
        raise SegmentRejected(403, str(e)) from None
    if not profiles:
        raise SegmentRejected(403, "no profiles requested")
    if segData.duration < 0 or segData.duration > MAX_DURATION_MS:
        raise SegmentRejected(403, "invalid duration")
    if segData.HasField("auth_token") and segData.auth_token.token:
        # Tokens come from GetOrchestrator, which this orchestrator does not serve yet.
        raise SegmentRejected(403, "invalid auth token")
    if len(segData.hash) != 32:
        raise SegmentRejected(403, "invalid segment hash")
    return segData, profiles, sessionIdFor(segData)


class SegmentResource(resource.Resource):
    """
    C{POST /segment}: check the segment, transcode it on a remote transcoder,
    store the renditions and answer with their URLs.

    @param app: the L{Orchestrator} (pool, dispatcher, store, metrics).
    @param payments: the payment processor (off-chain or ticket based).
    @param maxSegmentBytes: larger bodies are refused with 413.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, app, payments, maxSegmentBytes):
        super().__init__()
        self._app = app
        self._payments = payments
        self.maxSegmentBytes = maxSegmentBytes

    def render_POST(self, request):
        """
        Handle one segment; the answer is written when the renditions are back.
        """
        accepted = []
        d = defer.ensureDeferred(self._handle(request, accepted))
        finished = []
        request.notifyFinish().addBoth(finished.append)

        def respond(outcome):
            status, body, contentType = outcome
            if finished:
                return
            if not accepted:
                request.setResponseCode(status)
                request.setHeader(b"content-type", contentType)
            request.write(body)
            request.finish()

        def crashed(failure):
            self._log.failure("Unexpected error handling a segment", failure)
            return 500, b"Internal Server Error\n", b"text/plain; charset=utf-8"

        d.addErrback(crashed).addCallback(respond)
        return server.NOT_DONE_YET

    async def _handle(self, request, accepted):
        metrics = self._app.metrics
        paymentHeader = (request.getHeader(PAYMENT_HEADER) or b"").decode("latin-1")
        try:
            # go-livepeer decodes the payment before it looks at the segment.
            try:
                payment = decodePayment(paymentHeader) if paymentHeader else None
            except PaymentError as e:
                raise SegmentRejected(e.status, e.message) from None
            segData, profiles, sessionId = parseSegmentHeader(request.getHeader(SEGMENT_HEADER))
            if self._app.pool.wouldExceedLimit(sessionId):
                raise SegmentRejected(403, ORCHESTRATOR_CAPPED)
            try:
                await self._payments.processPayment(payment, sessionId)
                self._payments.checkBalance(sessionId)
            except PaymentError as e:
                raise SegmentRejected(e.status, e.message) from None
            body = request.content.read(self.maxSegmentBytes + 1)
            if len(body) > self.maxSegmentBytes:
                raise SegmentRejected(413, f"segment larger than {self.maxSegmentBytes} bytes")
            digest = request.bodyKeccak.digest() if getattr(request, "bodyKeccak", None) else keccak(body)
            if digest != segData.hash:
                raise SegmentRejected(403, "Forbidden")
        except SegmentRejected as e:
            metrics.segmentsRejected.labels(reason=str(e.status)).inc()
            self._log.info("Rejected segment from {peer}: {status} {message}",
                           peer=_peer(request), status=e.status, message=e.message)
            return e.status, e.message.encode("utf-8") + b"\n", b"text/plain; charset=utf-8"

        metrics.segmentsReceived.inc()
        # Like go-livepeer: answer 200 as soon as the upload is accepted, so the
        # gateway knows its upload is done; later errors travel in the body.
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/x-protobuf")
        request.write(b"")
        accepted.append(True)
        job = SegmentJob(sessionId, segData.seq, body, profiles, segData.duration or 2000)
        result = pb.TranscodeResult(seq=segData.seq)
        started = self._app.clock.seconds()
        try:
            taskResult = await self._app.dispatcher.transcode(job)
        except TranscodeFailed as e:
            metrics.segmentsFailed.labels(reason=_reasonLabel(str(e))).inc()
            self._log.warn("Segment failed sessionID={sessionId} seqNo={seq} err={err!r}",
                           sessionId=sessionId, seq=job.seq, err=str(e))
            result.error = str(e)
            return 200, result.SerializeToString(), b"application/x-protobuf"
        elapsed = self._app.clock.seconds() - started
        metrics.transcodeSeconds.observe(elapsed)
        if taskResult.ffmpegSeconds:
            metrics.overheadSeconds.observe(max(0.0, elapsed - taskResult.ffmpegSeconds))
        metrics.segmentsTranscoded.inc()
        encodedPixels = 0
        base = self._app.serviceURL
        for profile, rendition in zip(profiles, taskResult.renditions):
            name = f"{profile.name}/{job.seq}{profile.extension}"
            self._app.store.put(sessionId, name, rendition.data, profile.mimeType)
            result.data.segments.add(url=f"{base}/stream/{sessionId}/{name}", pixels=rendition.pixels)
            encodedPixels += rendition.pixels
        metrics.pixelsProcessed.inc(encodedPixels)
        if taskResult.attempts > 1:
            metrics.segmentsRetried.inc()
        self._payments.debit(sessionId, encodedPixels)
        self._log.info(
            "Successfully received results from remote transcoder={transcoder} segments={segments} "
            "sessionID={sessionId} seqNo={seq} attempts={attempts}",
            transcoder=taskResult.transcoder, segments=len(taskResult.renditions),
            sessionId=sessionId, seq=job.seq, attempts=taskResult.attempts,
        )
        return 200, result.SerializeToString(), b"application/x-protobuf"


_KNOWN_ERRORS = frozenset(
    (NO_TRANSCODERS, ORCHESTRATOR_BUSY, ORCHESTRATOR_CAPPED, TOO_LONG, MISMATCHED, ZERO_SEGMENTS))


def _reasonLabel(error):
    return error if error in _KNOWN_ERRORS else "transcoder error"


def _peer(request):
    address = request.getClientAddress()
    return f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
