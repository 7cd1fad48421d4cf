# -*- test-case-name: tests.test_ingress -*-
"""
Gateway ingress: go-livepeer's C{POST /segment}.

Request and response follow go-livepeer (see golivepeer-wire.md §2.4): a
base64 protobuf C{SegData} in the C{Livepeer-Segment} header, carrying the
session's auth token from C{GetOrchestrator}; a C{Livepeer-Payment} header;
the segment as the body; and a protobuf C{TranscodeResult} back, whose
C{info} is a refreshed C{OrchestratorInfo} (new ticket parameters, the same
token).

L{SegmentService} is the pipeline, free of any transport: payment decoding,
the segment's credentials (signature on chain, capabilities, auth token),
admission, payment, the hash check, dispatch, storage and the answer.
L{SegmentResource} adapts HTTP/1.1 and HTTP/2 requests to it; on a site that
hands it the body as it arrives (L{SegmentResource.startUpload}), the
segment goes to a transcoder as it arrives, and nothing of the work is
released before its hash matched.
"""

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from livepeer_tx.addresses import describeAddress
from livepeer_tx.capabilities import (
    MPEG7_SIGNATURE, SEGMENT_SLICING, IncompatibleCapabilities, capabilitiesOf, checkCompatible,
)
from livepeer_tx.ethaddress import keccak256
from livepeer_tx.payments import PaymentError, decodePayment
from livepeer_tx.orchestrator.authtoken import AuthTokenError
from livepeer_tx.orchestrator.dispatch import (
    MISMATCHED, ORCHESTRATOR_BUSY, TOO_LONG, UPLOAD_CANCELLED, ZERO_SEGMENTS, ArrivingSegment, SegmentJob,
    TranscodeFailed, UploadCancelled,
)
from livepeer_tx.orchestrator.orchservice import senderAddress
from livepeer_tx.orchestrator.routing import NO_TRANSCODERS, ORCHESTRATOR_CAPPED
from livepeer_tx.profiles import ProfileError, profilesFromSegData
from livepeer_tx.proto import lp_rpc_pb2 as pb

SEGMENT_HEADER = b"livepeer-segment"
PAYMENT_HEADER = b"livepeer-payment"
CONTENT_TYPE_HEADER = b"content-type"
# go-livepeer's gateway may send a URL to fetch the segment from instead of
# the segment itself; we do not fetch URLs for gateways.
SEGMENT_URI_TYPE = "application/vnd+livepeer.uri"
SEGMENT_URI_REFUSED = (
    "segment URLs (Content-Type: application/vnd+livepeer.uri) are not accepted by this orchestrator; "
    "send the segment itself")
MAX_DURATION_MS = 5 * 60 * 1000
INTERNAL_ERROR = "internal orchestrator error"
SEGMENT_SIGNATURE_ERROR = "ErrSegSig"
PROTOBUF = b"application/x-protobuf"
TEXT = b"text/plain; charset=utf-8"
_PRINTABLE_MANIFEST = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# The reasons of the rejected-segments metric (a bounded set).
REJECTED_PAYMENT = "payment"
REJECTED_HEADER = "segment header"
REJECTED_PROFILES = "profiles"
REJECTED_DURATION = "duration"
REJECTED_SEQ = "seq"
REJECTED_SIGNATURE = "signature"
REJECTED_CAPABILITIES = "capabilities"
REJECTED_AUTH = "auth token"
REJECTED_CONTENT_TYPE = "content type"
REJECTED_HASH = "hash"
REJECTED_SIZE = "size"
REJECTED_CAPPED = "capped"
REJECTED_ADDRESS_CAPPED = "address capped"
REJECTED_DRAINING = "draining"
REJECTED_CANCELLED = "cancelled"
REJECTED_INTERNAL = "internal"


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
    Decode and check a C{Livepeer-Segment} header (its auth token is checked
    later, by L{SegmentService}).

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
    if len(segData.hash) != 32:
        raise SegmentRejected(403, "invalid segment hash", REJECTED_HASH)
    return segData, profiles


def flattenSegment(segData, profiles):
    """
    What a gateway signs for a segment (go-livepeer's C{Flatten}): the
    manifest id, the seq as 32 big-endian bytes, the hash, then for each
    profile the hex of the first 4 bytes of keccak-256 of its name.
    """
    profileIds = "".join(keccak256(profile.name.encode("utf-8"))[:4].hex() for profile in profiles)
    return bytes(segData.manifestId) + segData.seq.to_bytes(32, "big") + bytes(segData.hash) + profileIds.encode()


def resultSignature(signer, renditions):
    """
    go-livepeer's C{TranscodeData.sig}: the node's signature over the
    keccak-256 of the renditions' keccak-256 hashes, in order.
    """
    return signer.sign(keccak256(b"".join(keccak256(data) for data in renditions)))


@dataclass
class SegmentSubmission:
    """
    One segment as a gateway submitted it, whatever carried it.

    @ivar segmentHeader: the C{Livepeer-Segment} value (bytes or text), or
        L{None}.
    @ivar paymentHeader: the C{Livepeer-Payment} value, as text.
    @ivar body: the segment's bytes, or the
        L{ArrivingSegment<livepeer_tx.orchestrator.dispatch.ArrivingSegment>}
        they are arriving in.
    @ivar source: what admission counts it against (see L{sourceOf}).
    @ivar peer: the gateway's C{host:port}, for log lines.
    @ivar contentType: the request's content type, as text.
    @ivar bodyDigest: the body's keccak-256 if computed as it arrived (or a
        L{Deferred} of it, hashed off the reactor thread), else L{None};
        for a body still arriving, set once it is in.
    """

    segmentHeader: object
    paymentHeader: str
    body: bytes
    source: str
    peer: str = "?"
    contentType: str = ""
    bodyDigest: bytes = None


@dataclass
class SegmentAnswer:
    """
    What the gateway gets: an HTTP status, a body and its content type.
    Once the segment is accepted the status is 200 and the body a
    C{TranscodeResult}.
    """

    status: int
    body: bytes
    contentType: bytes


class SegmentService:
    """
    The segment pipeline, in go-livepeer's order and words
    (golivepeer-wire.md, 2.4):

     1. the payment header is decoded (402);
     2. the segment header: encoding, profiles, duration (403); on chain the
        gateway's signature of the segment (C{ErrSegSig}); the job's
        capabilities against ours (C{incompatible capabilities}); its auth
        token (C{missing}, C{invalid} or C{expired auth token}), whose session
        id names the session; the session limit (C{OrchestratorCapped}), and
        for free work the per-address limit;
     3. the refreshed C{OrchestratorInfo} for the answer (500 if it cannot be
        made);
     4. the payment and the session's balance (400);
     5. the body: a segment URL is refused (400), then its size (413) and
        its hash (403 C{Forbidden});
     6. the upload is accepted (200 goes out at once), then the segment is
        transcoded, its renditions stored under
        C{/stream/<session>/<profile>/<seq><ext>}, and a C{TranscodeResult}
        answered, with the error text if it failed.

    A segment still arriving (an L{ArrivingSegment} body) is given to the
    dispatcher after step 4, so that a transcoder works on it while the rest
    comes; steps 5 and 6 wait for its last byte, and a refused body or a
    cancelled upload cancels that work. The renditions are only awaited,
    stored and answered once the hash matched.

    @param app: the L{Orchestrator} (pool, dispatcher, store, metrics, clock).
    @param payments: the payment processor (off-chain or ticket based).
    @param tokens: the L{livepeer_tx.orchestrator.authtoken.AuthTokens}.
    @param orchestrator: the L{livepeer_tx.orchestrator.orchservice.OrchestratorService}:
        our C{capabilities()} and C{orchestratorInfo(sender, authToken, capabilities)}.
    @param maxSegmentBytes: larger bodies are refused with 413.
    @param signer: the node's L{livepeer_tx.chain.identity.NodeSigner} on
        chain (segment signatures are then checked and results signed), or
        L{None} off chain.
    """

    _log = Logger()

    def __init__(self, app, payments, tokens, orchestrator, maxSegmentBytes, signer=None):
        self._app = app
        self._payments = payments
        self._tokens = tokens
        self._orchestrator = orchestrator
        self.maxSegmentBytes = maxSegmentBytes
        self._signer = signer

    @property
    def limitPerSource(self):
        """
        Whether sessions are limited per source address: when work is free
        (off-chain, or at a price of 0).
        """
        return getattr(self._payments, "price", 0) == 0

    async def process(self, submission, accepted=lambda: None):
        """
        Run one segment through the pipeline.

        @param submission: the L{SegmentSubmission}.
        @param accepted: called once the upload is accepted, before the
            segment is transcoded: a transport sends the 200 status then, as
            go-livepeer does, and every later answer is a C{TranscodeResult}.
        @return: the L{SegmentAnswer}; never raises.
        """
        # In flight until answered: a drain waits for it.
        self._app.segmentStarted()
        try:
            return await self._process(submission, accepted)
        finally:
            self._app.segmentEnded()

    async def _process(self, submission, accepted):
        metrics = self._app.metrics
        try:
            checked = await self._check(submission)
        except SegmentRejected as e:
            metrics.segmentsRejected.labels(reason=e.reason).inc()
            self._log.info("Rejected segment from {peer}: {status} {message}",
                           peer=submission.peer, status=e.status, message=e.message)
            return SegmentAnswer(e.status, e.message.encode("utf-8") + b"\n", TEXT)
        except UploadCancelled:
            # The gateway went away, or the site refused the rest: nobody reads this.
            metrics.segmentsRejected.labels(reason=REJECTED_CANCELLED).inc()
            self._log.info("Segment upload from {peer} cancelled before its end", peer=submission.peer)
            return SegmentAnswer(400, UPLOAD_CANCELLED.encode() + b"\n", TEXT)
        except Exception:
            self._log.failure("Unexpected error checking a segment from {peer}", peer=submission.peer)
            metrics.segmentsRejected.labels(reason=REJECTED_INTERNAL).inc()
            return SegmentAnswer(500, b"Internal Server Error\n", TEXT)
        segData = checked.segData
        metrics.segmentsReceived.inc()
        accepted()
        try:
            if checked.task is None:
                checked.task = self._startTranscoding(checked, checked.body)
            result = await self._transcode(checked)
        except Exception:
            # The 200 has gone out: the gateway must still get a TranscodeResult.
            self._log.failure("Unexpected error handling a segment sessionID={sessionId} seqNo={seq}",
                              sessionId=checked.sessionId, seq=segData.seq)
            metrics.segmentsFailed.labels(reason=INTERNAL_ERROR).inc()
            result = pb.TranscodeResult(seq=segData.seq, error=INTERNAL_ERROR, info=checked.info)
        return SegmentAnswer(200, result.SerializeToString(), PROTOBUF)

    async def _check(self, submission):
        # Steps 1-5; a segment still arriving starts transcoding after step 4.
        arriving = submission.body if isinstance(submission.body, ArrivingSegment) else None
        checked = None
        try:
            checked = await self._checkHeaders(submission)
            if arriving is not None:
                checked.task = self._startTranscoding(checked, None, arriving)
            checked.body = await self._checkBody(submission, checked.segData)
        except BaseException:
            if arriving is not None:
                # Refused: the rest of it is dropped, and any work on it cancelled.
                arriving.cancel()
            if checked is not None and checked.task is not None:
                # Its failure (the cancelled upload) is of no interest.
                checked.task.addErrback(lambda _: None)
            raise
        return checked

    async def _checkHeaders(self, submission):
        pool = self._app.pool
        source = submission.source
        if self._app.draining:
            # Before anything else: a gateway sends the segment elsewhere.
            raise SegmentRejected(503, ORCHESTRATOR_CAPPED, REJECTED_DRAINING)
        # go-livepeer decodes the payment before it looks at the segment.
        try:
            payment = decodePayment(submission.paymentHeader) if submission.paymentHeader else None
        except PaymentError as e:
            raise SegmentRejected(e.status, e.message, REJECTED_PAYMENT) from None
        segData, profiles = parseSegmentHeader(submission.segmentHeader)
        sender = senderAddress(payment.sender) if payment is not None else bytes(20)
        if self._signer is not None and not self._signer.verify(
                sender, flattenSegment(segData, profiles), segData.sig):
            raise SegmentRejected(403, SEGMENT_SIGNATURE_ERROR, REJECTED_SIGNATURE)
        offered = self._checkCapabilities(segData)
        try:
            sessionId = self._tokens.verifySegment(segData)
        except AuthTokenError as e:
            raise SegmentRejected(403, e.message, REJECTED_AUTH) from None
        limitedSource = source if self.limitPerSource else None
        if pool.wouldExceedLimit(sessionId):
            raise SegmentRejected(403, ORCHESTRATOR_CAPPED, REJECTED_CAPPED)
        if pool.wouldExceedLimit(sessionId, limitedSource):
            self._log.info("Too many sessions from source={source}: {count} of {limit}", source=source,
                           count=pool.sessionsFrom(source), limit=pool.sourceSessionLimit)
            raise SegmentRejected(403, ORCHESTRATOR_CAPPED, REJECTED_ADDRESS_CAPPED)
        if submission.contentType.split(";", 1)[0].strip().lower() == SEGMENT_URI_TYPE:
            raise SegmentRejected(400, SEGMENT_URI_REFUSED, REJECTED_CONTENT_TYPE)
        try:
            info = await self._orchestrator.orchestratorInfo(sender, segData.auth_token, offered)
        except PaymentError as e:
            self._log.warn("Cannot refresh the OrchestratorInfo of sessionID={sessionId}: {error}",
                           sessionId=sessionId, error=e.message)
            raise SegmentRejected(500, "Internal Server Error", REJECTED_PAYMENT) from None
        try:
            await self._payments.processPayment(payment, sessionId)
            self._payments.checkBalance(sessionId)
        except PaymentError as e:
            raise SegmentRejected(e.status, e.message, REJECTED_PAYMENT) from None
        return _CheckedSegment(segData, profiles, sessionId, limitedSource, info)

    async def _checkBody(self, submission, segData):
        # A segment that arrived in pieces is only joined if it must be hashed here.
        body = submission.body
        if isinstance(body, ArrivingSegment):
            await body.whenEnded()
            size = body.received
        else:
            size = len(body)
        if size > self.maxSegmentBytes:
            raise SegmentRejected(413, f"segment larger than {self.maxSegmentBytes} bytes", REJECTED_SIZE)
        digest = submission.bodyDigest
        if digest is None:
            digest = keccak256(body.data if isinstance(body, ArrivingSegment) else body)
        elif isinstance(digest, defer.Deferred):
            digest = await digest
        if digest != segData.hash:
            raise SegmentRejected(403, "Forbidden", REJECTED_HASH)
        return body

    def _checkCapabilities(self, segData):
        # What the job asks for by its fields counts as asked for by its
        # capabilities: a perceptual hash or a clip window we would not honour
        # must not be silently dropped. Returns what we offer, for the
        # answer's OrchestratorInfo.
        offered = self._orchestrator.capabilities()
        offeredIds = capabilitiesOf(offered.bitstring)
        try:
            if segData.calc_perceptual_hash and MPEG7_SIGNATURE not in offeredIds:
                raise IncompatibleCapabilities()
            if segData.HasField("segment_parameters") and SEGMENT_SLICING not in offeredIds:
                raise IncompatibleCapabilities()
            checkCompatible(segData.capabilities if segData.HasField("capabilities") else None, offered)
        except IncompatibleCapabilities as e:
            raise SegmentRejected(403, e.message, REJECTED_CAPABILITIES) from None
        return offered

    def _startTranscoding(self, checked, body, arriving=None):
        segData = checked.segData
        checked.job = SegmentJob(checked.sessionId, segData.seq, body, checked.profiles, segData.duration or 2000,
                                 source=checked.limitedSource, arriving=arriving)
        checked.started = self._app.clock.seconds()
        return self._app.dispatcher.transcode(checked.job)

    async def _transcode(self, checked):
        app = self._app
        metrics = app.metrics
        segData, profiles, sessionId, job = checked.segData, checked.profiles, checked.sessionId, checked.job
        manifest = manifestLabel(segData.manifestId)
        result = pb.TranscodeResult(seq=segData.seq, info=checked.info)
        started = checked.started
        try:
            taskResult = await checked.task
        except TranscodeFailed as e:
            metrics.segmentsFailed.labels(reason=_reasonLabel(str(e))).inc()
            self._log.warn("Segment failed manifestID={manifest} sessionID={sessionId} seqNo={seq} err={err!r}",
                           manifest=manifest, sessionId=sessionId, seq=job.seq, err=str(e))
            result.error = str(e)
            return result
        elapsed = app.clock.seconds() - started
        metrics.transcodeSeconds.observe(elapsed)
        if taskResult.ffmpegSeconds:
            metrics.overheadSeconds.observe(max(0.0, elapsed - taskResult.ffmpegSeconds))
        encodedPixels = 0
        base = app.serviceURL
        for profile, rendition in zip(profiles, taskResult.renditions):
            name = f"{profile.name}/{job.seq}{profile.extension}"
            app.store.put(sessionId, name, rendition.data, profile.mimeType)
            result.data.segments.add(url=f"{base}/stream/{sessionId}/{name}", pixels=rendition.pixels)
            encodedPixels += rendition.pixels
        if self._signer is not None:
            result.data.sig = resultSignature(self._signer, [r.data for r in taskResult.renditions])
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
        return result


@dataclass
class _CheckedSegment:
    segData: object
    profiles: list
    sessionId: str
    limitedSource: str
    info: object
    body: bytes = None
    job: SegmentJob = None
    task: defer.Deferred = None
    started: float = 0.0


class SegmentResource(resource.Resource):
    """
    C{POST /segment} over HTTP/1.1 or HTTP/2: hands the request to a
    L{SegmentService}, sends the 200 status as soon as the service accepts the
    upload, and writes its answer.

    On a L{livepeer_tx.web.BoundedSite} whose C{bodyStreams} map
    C{/segment} to L{startUpload}, the service gets the segment at its first
    bytes, as an L{ArrivingSegment}; else once it is all in.

    @ivar service: the L{SegmentService}.
    """

    isLeaf = True

    def __init__(self, service):
        super().__init__()
        self.service = service

    def startUpload(self, request):
        """
        A segment's first bytes arrived (its headers are all in): start its
        pipeline now.

        @return: the sink the rest of the body goes to (C{write}, C{abort}).
        """
        exchange = _SegmentExchange(request)
        exchange.start(self.service, _submission(request, ArrivingSegment(_declaredLength(request))))
        return exchange

    def render_POST(self, request):
        """
        The whole segment is in: hand it to the service (or to the pipeline
        that started at its first bytes); the answer is written when the
        service has it.
        """
        bodyKeccak = getattr(request, "bodyKeccak", None)
        digest = bodyKeccak.digestLater() if bodyKeccak is not None else None
        exchange = getattr(request, "bodySink", None)
        if isinstance(exchange, _SegmentExchange):
            exchange.received(digest)
        else:
            exchange = _SegmentExchange(request)
            exchange.received()
            body = request.content.read(self.service.maxSegmentBytes + 1)
            exchange.start(self.service, _submission(request, body, digest))
        return server.NOT_DONE_YET


class _SegmentExchange:
    """
    One C{POST /segment} between its request and the L{SegmentService}: the
    pipeline may start before the body is all in (the exchange is then the
    body's sink), and its answer is written once the request is in.
    """

    _log = Logger()

    def __init__(self, request):
        self._request = request
        self._submission = None
        self._upload = None
        self._received = False
        self._answer = None
        self._started = False
        self._finished = False
        request.notifyFinish().addBoth(self._requestFinished)

    def start(self, service, submission):
        """
        Run C{submission} through C{service}.
        """
        self._submission = submission
        if isinstance(submission.body, ArrivingSegment):
            self._upload = submission.body
        d = defer.Deferred.fromCoroutine(service.process(submission, self._accepted))
        d.addCallback(self._answered)
        d.addErrback(lambda f: self._log.failure("Cannot answer a segment from {peer}", f, peer=submission.peer))

    def write(self, data):
        """
        The body's next bytes.
        """
        try:
            self._upload.write(data)
        except Exception:
            self._log.failure("Cannot forward a segment from {peer}", peer=self._submission.peer)
            self._upload.cancel()

    def abort(self):
        """
        The request was refused or its connection lost before the body was
        all in: the upload is cancelled.
        """
        if self._upload is not None and not self._upload.ended:
            self._upload.cancel()

    def received(self, digest=None):
        """
        The request is in (for a body that was arriving: its last byte, and
        the L{Deferred} of its keccak-256 if computed as it came).
        """
        self._received = True
        if self._upload is not None:
            self._submission.bodyDigest = digest
            self._upload.end()
        if self._answer is not None:
            self._respond()

    def _requestFinished(self, result):
        self._finished = True
        self.abort()

    def _accepted(self):
        if not self._finished:
            self._started = True
            request = self._request
            request.setResponseCode(200)
            request.setHeader(b"content-type", PROTOBUF)
            # Like go-livepeer: the gateway learns now that its upload is done.
            request.write(b"")

    def _answered(self, answer):
        self._answer = answer
        if self._received:
            self._respond()

    def _respond(self):
        if self._finished:
            return
        request, answer = self._request, self._answer
        if not self._started:
            request.setResponseCode(answer.status)
            request.setHeader(b"content-type", answer.contentType)
        request.write(answer.body)
        request.finish()


def _submission(request, body, digest=None):
    return SegmentSubmission(
        segmentHeader=request.getHeader(SEGMENT_HEADER),
        paymentHeader=(request.getHeader(PAYMENT_HEADER) or b"").decode("latin-1"),
        body=body,
        source=sourceOf(request.getClientAddress()),
        peer=describeAddress(request.getClientAddress()),
        contentType=(request.getHeader(CONTENT_TYPE_HEADER) or b"").decode("latin-1"),
        bodyDigest=digest,
    )


def _declaredLength(request):
    # The site has checked it (HTTP/1.1 or h2 would have refused a bad one).
    try:
        return int(request.getHeader(b"content-length"))
    except (TypeError, ValueError):
        return None


_KNOWN_ERRORS = frozenset(
    (NO_TRANSCODERS, ORCHESTRATOR_BUSY, ORCHESTRATOR_CAPPED, TOO_LONG, MISMATCHED, ZERO_SEGMENTS, INTERNAL_ERROR))


def _reasonLabel(error):
    return error if error in _KNOWN_ERRORS else "transcoder error"
