# -*- test-case-name: tests.test_grpc_transcoders -*-
"""
Stock go-livepeer transcoders (C{livepeer -transcoder -orchAddr ...
-orchSecret ...}) on the orchestrator's public port, beside our WebSocket
transcoders (golivepeer-wire.md, section 1).

A stock transcoder opens the server-streaming gRPC call
C{/net.Transcoder/RegisterTranscoder} with the shared secret and its capacity
in the request message. The call stays open for as long as the transcoder
works for us, and every task goes down it as one C{NotifySegment}. The
transcoder downloads the task's source segment from the URL in that message
(C{<serviceURI>/stream/<session>/<seq>-<token>.tempfile}: unauthenticated, as
go-livepeer's, but unguessable and served once) and posts its renditions as
C{multipart/mixed}, or its error as C{livepeer/transcoding-error}, to
C{/transcodeResults} over HTTP/2 with the secret in C{Credentials}.

Each registered transcoder is a L{RemoteTranscoder} whose C{link} is a
L{GRPCTranscoderLink}, in the same pool as the WebSocket ones: one routing
policy, one failover path (the L{Dispatcher}), one C{/status}. What a
transcoder posts is checked before it is used: the body is bounded, every part
is parsed from memory without copies beyond the renditions themselves, and the
numbers are bounded.

Where we differ from go-livepeer, on purpose: a task that times out is
forgotten (its input removed, a late result dropped) but the transcoder's
stream stays open, as for our WebSocket transcoders; the pool's health record
takes a transcoder that keeps timing out out of rotation. go-livepeer closes
the stream instead, and the stock transcoder's backoff then keeps it away for
up to a minute.
"""

import collections
import re
import secrets
from dataclasses import dataclass
from email.policy import default as _emailPolicy
from urllib.parse import quote

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web import resource
from zope.interface import implementer

from livepeer_tx import wsproto
from livepeer_tx.addresses import describeAddress
from livepeer_tx.capabilities import (
    AUTH_TOKEN, FRACTIONAL_FRAMERATES, GOP, H264, H264_BASELINE, H264_CONSTRAINED_HIGH,
    H264_HIGH, H264_MAIN, MP4, MPEGTS, capabilityBitstring, parseReport,
)
from livepeer_tx.interfaces import ITranscoderLink
from livepeer_tx.orchestrator.dispatch import Rendition
from livepeer_tx.orchestrator.registration import (
    MAX_PIXELS, MAX_RENDITIONS, SECRET_ROTATED, SERVICE_UNAVAILABLE, TOO_MANY_ATTEMPTS, UNAUTHORIZED,
)
from livepeer_tx.orchestrator.routing import RemoteTranscoder
from livepeer_tx.profiles import LEGACY_PROFILES, addProfilesToSegData
from livepeer_tx.proto import lp_rpc_pb2 as pb
from livepeer_tx.rpc import GRPCError, StatusCode
from livepeer_tx.secret import SecretFileError

REGISTER_TRANSCODER = "/net.Transcoder/RegisterTranscoder"
RESULTS_PATH = b"transcodeResults"  # mounted as /transcodeResults on the public port
TASK_INPUT_SUFFIX = ".tempfile"

TRANSCODING_ERROR = "livepeer/transcoding-error"
MULTIPART_MIXED = "multipart/mixed"
PERCEPTUAL_HASH_TYPE = "application/octet-stream"
AUTHORIZATION_HEADER = wsproto.AUTH_HEADER.lower().encode("ascii")
CREDENTIALS_HEADER = wsproto.CREDENTIALS_HEADER.lower().encode("ascii")
CONTENT_TYPE_HEADER = b"content-type"
TASK_ID_HEADER = b"taskid"
PIXELS_HEADER = b"pixels"
INVALID_TASK_ID = "Invalid Task ID"
INVALID_PIXELS = "Invalid Pixels"
UNKNOWN_PERCEPTUAL_HASH = "Unknown perceptual hash"
OFFCHAIN_ORCH_ID = "offchain"

# Bounds of what a transcoder sends: those of our WebSocket results
# (registration.parseResult), and a multipart body's own.
MAX_RESULT_PARTS = 2 * MAX_RENDITIONS + 16
MAX_PART_HEADER_BYTES = 8 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_CAPACITY = wsproto.MAX_CAPACITY  # what our WebSocket transcoders may announce
MAX_VERSION_LENGTH = 128
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VERSION = re.compile(r"^[\x21-\x7e]{1,%d}$" % MAX_VERSION_LENGTH)

# The capability a job needs for each H.264 encoder profile.
_ENCODER_PROFILE_CAPABILITIES = {
    "baseline": H264_BASELINE, "main": H264_MAIN, "high": H264_HIGH, "constrained_high": H264_CONSTRAINED_HIGH,
}


# The task input store and its resource.


class TaskInputs:
    """
    The source segments of tasks on gRPC transcoders, each under an
    unguessable name until its transcoder has downloaded it once or its task
    has ended.

    It keeps references to the jobs' bytes, which the dispatcher holds anyway
    while their tasks run, so it adds no copies; the number of entries is
    bounded, and an entry older than C{maxAge} is dropped when the next one is
    added, should its task's end ever go unreported.

    @param clock: an L{IReactorTime}.
    """

    def __init__(self, clock, maxEntries=4096, maxAge=120.0):
        self._clock = clock
        self.maxEntries = maxEntries
        self.maxAge = maxAge
        self._entries = collections.OrderedDict()
        self.totalBytes = 0

    def add(self, sessionId, seq, data):
        """
        Keep C{data} for download.

        @return: its file name (C{<seq>-<token>.tempfile}).
        @raise TaskInputsFull: C{maxEntries} are kept already.
        """
        self._expire()
        if len(self._entries) >= self.maxEntries:
            raise TaskInputsFull(f"{self.maxEntries} task inputs are waiting for download already")
        name = f"{seq}-{secrets.token_hex(16)}{TASK_INPUT_SUFFIX}"
        self._entries[(sessionId, name)] = (data, self._clock.seconds())
        self.totalBytes += len(data)
        return name

    def take(self, sessionId, name):
        """
        Remove and return the bytes stored as C{<sessionId>/<name>}, or L{None}.
        """
        entry = self._entries.pop((sessionId, name), None)
        if entry is None:
            return None
        self.totalBytes -= len(entry[0])
        return entry[0]

    def size(self, sessionId, name):
        """
        The length of what is stored as C{<sessionId>/<name>}, or L{None}.
        """
        entry = self._entries.get((sessionId, name))
        return None if entry is None else len(entry[0])

    def discard(self, sessionId, name):
        """
        Forget C{<sessionId>/<name>}, downloaded or not.
        """
        self.take(sessionId, name)

    def _expire(self):
        cutoff = self._clock.seconds() - self.maxAge
        while self._entries:
            key, (data, added) = next(iter(self._entries.items()))
            if added > cutoff:
                return
            self.take(*key)

    def __len__(self):
        return len(self._entries)


class TaskInputsFull(Exception):
    """
    No room for one more task input.
    """


class TaskInputResource(resource.Resource):
    """
    Serves C{GET /stream/<session>/<name>.tempfile} once from L{TaskInputs},
    without authentication (the stock transcoder sends none; the name is the
    secret); every other C{/stream/} path goes to C{fallback} (the rendition
    store's resource).
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, inputs, fallback=None):
        super().__init__()
        self._inputs = inputs
        self._fallback = fallback

    @staticmethod
    def _key(request):
        path = request.postpath
        if len(path) != 2 or not path[0] or not path[1].endswith(TASK_INPUT_SUFFIX.encode("ascii")):
            return None
        return path[0].decode("utf-8", "replace"), path[1].decode("utf-8", "replace")

    def render(self, request):
        """
        Task inputs here, everything else to the fallback.
        """
        if self._key(request) is None and self._fallback is not None:
            return self._fallback.render(request)
        return super().render(request)

    def render_GET(self, request):
        """
        Hand the task input over, once.
        """
        key = self._key(request)
        data = self._inputs.take(*key) if key is not None else None
        if data is None:
            return _notFound(request)
        self._log.debug("Serving task input {name} ({size} bytes) to {peer}",
                        name="/".join(key), size=len(data), peer=describeAddress(request.getClientAddress()))
        _setInputHeaders(request, len(data))
        return data

    def render_HEAD(self, request):
        """
        The headers of a GET, without handing the input over.
        """
        key = self._key(request)
        size = self._inputs.size(*key) if key is not None else None
        if size is None:
            return _notFound(request)
        _setInputHeaders(request, size)
        return b""


def _setInputHeaders(request, size):
    request.setHeader(b"content-type", b"application/octet-stream")
    request.setHeader(b"content-length", b"%d" % size)
    request.setHeader(b"cache-control", b"no-store")


def _notFound(request):
    request.setResponseCode(404)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"ErrNotFound\n"


# Results.


class ResultError(ValueError):
    """
    What a transcoder posted cannot be used; the message says why.
    """


@dataclass
class ResultPart:
    """
    One rendition as a stock transcoder posts it: its bytes, its encoded
    pixel count and, when asked for, its MPEG-7 signature.
    """

    data: bytes
    pixels: int
    perceptualHash: bytes = None


def checkPixelCount(text, what):
    """
    A pixel count from a C{Pixels} header: decimal, 0 to L{MAX_PIXELS}.

    @raise ResultError: it is not.
    """
    text = (text or "").strip()
    if not text.isascii() or not text.isdigit() or len(text) > 16 or int(text) > MAX_PIXELS:
        raise ResultError(f"{what}: a pixel count must be a number from 0 to {MAX_PIXELS}")
    return int(text)


def parseMediaType(value):
    """
    The media type (lower case) and parameters of a C{Content-Type} value.

    @raise ResultError: it cannot be parsed (go-livepeer answers 415).
    """
    try:
        header = _emailPolicy.header_factory("content-type", value)
        defects = header.defects
    except Exception as e:  # the email parser's own errors on odd input
        raise ResultError(f"mime: {e}") from None
    if defects:
        raise ResultError(f"mime: {defects[0]}")
    return header.content_type, dict(header.params)


def iterMultipart(body, boundary, maxParts=MAX_RESULT_PARTS, maxHeaderBytes=MAX_PART_HEADER_BYTES):
    """
    The parts of a C{multipart/mixed} body held in memory (RFC 2046), as
    C{(headers, data)}: header names in lower case mapped to their text, the
    data as a memoryview of C{body}.

    @raise ResultError: the body is not a well-formed multipart body, or has
        more than C{maxParts} parts or a part header block over
        C{maxHeaderBytes}.
    """
    if not boundary or len(boundary) > 70:
        raise ResultError("multipart: the boundary must be 1 to 70 characters")
    dash = b"--" + boundary.encode("latin-1", "replace")
    delimiter = b"\r\n" + dash
    view = memoryview(body)
    if body.startswith(dash):
        position = len(dash)
    else:
        found = body.find(delimiter)
        if found < 0:
            raise ResultError("multipart: no part found")
        position = found + len(delimiter)
    count = 0
    while True:
        if body.startswith(b"--", position):
            return
        lineEnd = body.find(b"\r\n", position, position + 256)
        if lineEnd < 0 or body[position:lineEnd].strip(b" \t"):
            raise ResultError("multipart: malformed boundary line")
        count += 1
        if count > maxParts:
            raise ResultError(f"multipart: more than {maxParts} parts")
        headersStart = lineEnd + 2
        if body.startswith(b"\r\n", headersStart):
            headersEnd, dataStart = headersStart, headersStart + 2
        else:
            headersEnd = body.find(b"\r\n\r\n", headersStart, headersStart + maxHeaderBytes)
            if headersEnd < 0:
                raise ResultError(f"multipart: part {count} has no end of headers within {maxHeaderBytes} bytes")
            dataStart = headersEnd + 4
        headers = {}
        for line in body[headersStart:headersEnd].split(b"\r\n") if headersEnd > headersStart else ():
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.match(name):
                raise ResultError(f"multipart: part {count} has a malformed header line")
            headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
        dataEnd = body.find(delimiter, dataStart)
        if dataEnd < 0:
            raise ResultError("multipart: unexpected end of body")
        yield headers, view[dataStart:dataEnd]
        position = dataEnd + len(delimiter)


def parseResultParts(body, boundary):
    """
    The renditions of a stock transcoder's C{multipart/mixed} result, as
    go-livepeer reads them: a part with a C{Pixels} header is a rendition, an
    C{application/octet-stream} part without one is the perceptual hash of the
    rendition before it, any other part is ignored.

    @return: a list of L{ResultPart}s in the order posted.
    @raise ResultError: a part is malformed or out of bounds.
    """
    renditions = []
    for headers, data in iterMultipart(body, boundary):
        pixels = headers.get("pixels")
        if pixels is not None:
            if len(renditions) >= MAX_RENDITIONS:
                raise ResultError(f"more than {MAX_RENDITIONS} renditions")
            renditions.append(ResultPart(bytes(data), checkPixelCount(pixels, f"rendition {len(renditions)}")))
        elif headers.get("content-type", "").split(";")[0].strip().lower() == PERCEPTUAL_HASH_TYPE:
            if not renditions:
                raise ResultError(UNKNOWN_PERCEPTUAL_HASH)
            renditions[-1].perceptualHash = bytes(data)
    return renditions


class TranscodeResultsResource(resource.Resource):
    """
    C{POST /transcodeResults}: a stock transcoder's answer to a task, checked
    and answered in go-livepeer's order and words (golivepeer-wire.md, 1.7).

    Works on HTTP/1.1 and HTTP/2 requests alike. The body must already be
    bounded by the site (see L{GRPCTranscoderService.maxResultBytes}); a body
    over that bound that got through anyway is refused here.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, service):
        super().__init__()
        self._service = service

    def render_POST(self, request):
        """
        Authenticate, parse, and hand the result or error to the dispatcher.
        """
        service = self._service
        peer = request.getClientAddress()
        address = describeAddress(peer)
        authorization = _header(request, AUTHORIZATION_HEADER)
        if authorization != wsproto.AUTH_VALUE:
            self._log.error("Invalid auth type {value!r} from transcoder={transcoder}",
                            value=authorization[:64], transcoder=address)
            return _httpError(request, 401, UNAUTHORIZED)
        try:
            matches, quiet = service.checkCredentials(
                getattr(peer, "host", "unknown"), request.getHeader(CREDENTIALS_HEADER) or b"", address)
        except SecretFileError:
            return _httpError(request, 503, SERVICE_UNAVAILABLE)
        if not matches:
            if not quiet:
                self._log.error("Invalid shared secret from transcoder={transcoder}", transcoder=address)
            return _httpError(request, 401, UNAUTHORIZED)
        try:
            mediaType, params = parseMediaType(_header(request, CONTENT_TYPE_HEADER))
        except ResultError as e:
            return _httpError(request, 415, str(e))
        taskId = _parseTaskId(_header(request, TASK_ID_HEADER))
        if taskId is None:
            return _httpError(request, 400, INVALID_TASK_ID)
        if mediaType == TRANSCODING_ERROR:
            error = wsproto.cleanErrorText(
                request.content.read(MAX_ERROR_BODY_BYTES).decode("utf-8", "replace"),
                default="unknown transcoder error")
            self._log.info("Transcoding error for taskId={taskId} err={err!r}", taskId=taskId, err=error)
            service.deliverError(taskId, error)
            return _ok(request)
        try:
            decodedPixels = checkPixelCount(_header(request, PIXELS_HEADER), "Pixels")
        except ResultError:
            return _httpError(request, 400, INVALID_PIXELS)
        if mediaType != MULTIPART_MIXED:
            return _ok(request)
        limit = service.maxResultBytes
        body = request.content.read(limit + 1)
        if len(body) > limit:
            error = f"results larger than {limit} bytes"
            service.deliverError(taskId, error)
            return _httpError(request, 413, error)
        try:
            parts = parseResultParts(body, params.get("boundary", ""))
        except ResultError as e:
            self._log.info("Bad results from transcoder={transcoder} taskId={taskId}: {err}",
                           transcoder=address, taskId=taskId, err=str(e))
            service.deliverError(taskId, str(e))
            return _httpError(request, 500, str(e))
        self._log.debug("Downloaded results from remote transcoder={transcoder} taskId={taskId} bytes={size}",
                        transcoder=address, taskId=taskId, size=len(body))
        service.deliverResult(taskId, parts, decodedPixels)
        return _ok(request)


def _header(request, name):
    # Header values are bytes on the wire: decoded here, never by guessing.
    return (request.getHeader(name) or b"").decode("latin-1").strip()


def _parseTaskId(text):
    # Go's strconv.ParseInt(text, 10, 64).
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > 19:
        return None
    taskId = int(text)
    return taskId if -(2**63) <= taskId < 2**63 else None


def _httpError(request, code, text):
    # As Go's http.Error writes it.
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return text.encode("utf-8") + b"\n"


def _ok(request):
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"OK"


# What goes down the stream.


def jobCapabilities(profiles):
    """
    The capabilities a transcoder needs for C{profiles}, as go-livepeer
    derives a job's from its renditions: H.264, the containers, fractional
    frame rates, H.264 profiles, GOP, and the auth token every job carries.

    @return: a C{Capabilities} message.
    """
    needed = {H264, AUTH_TOKEN}
    for profile in profiles:
        needed.add(MP4 if profile.format == "mp4" else MPEGTS)
        if profile.fpsDen > 1:
            needed.add(FRACTIONAL_FRAMERATES)
        if profile.encoderProfile:
            needed.add(_ENCODER_PROFILE_CAPABILITIES[profile.encoderProfile])
        if profile.gop:
            needed.add(GOP)
    return pb.Capabilities(bitstring=capabilityBitstring(needed))


def segDataFor(job):
    """
    The C{SegData} a stock transcoder gets for C{job}: go-livepeer's, with the
    hash zeroed, no storage, no signature and the session id in the auth token
    (the transcoder keys its sessions on it).
    """
    segData = pb.SegData(
        manifestId=job.sessionId.encode("utf-8"),
        seq=job.seq,
        hash=bytes(32),
        profiles=LEGACY_PROFILES,
        duration=job.durationMs,
        capabilities=jobCapabilities(job.profiles),
        auth_token=pb.AuthToken(session_id=job.sessionId),
    )
    addProfilesToSegData(segData, job.profiles)
    return segData


def sessionTeardown(sessionId):
    """
    go-livepeer's end-of-session message: a C{NotifySegment} with an empty URL
    and only the session id.
    """
    return pb.NotifySegment(segData=pb.SegData(auth_token=pb.AuthToken(session_id=sessionId)))


def describeCapabilities(message):
    """
    What a C{RegisterRequest}'s capabilities say, for the L{RemoteTranscoder},
    parsed once here (the default set when a legacy transcoder sends none,
    as go-livepeer).

    @return: C{(capabilities, version)}: the C{{capability: capacity}} dict
        of L{parseReport}, and the version text (empty unless printable).
    @raise GRPCError: INVALID_ARGUMENT, naming the fault, when they are
        malformed or too large to be real.
    """
    if not message.HasField("capabilities"):
        return parseReport(None), ""
    try:
        capabilities = parseReport(message.capabilities)
    except ValueError as e:
        raise GRPCError(StatusCode.INVALID_ARGUMENT, f"capabilities: {e}") from None
    version = message.capabilities.version
    return capabilities, version if _VERSION.match(version) else ""


@implementer(ITranscoderLink)
class GRPCTranscoderLink:
    """
    The link of one stock transcoder's L{RemoteTranscoder}: its open
    C{RegisterTranscoder} call. The dispatcher calls L{sendTask},
    L{cancelTask} and L{endSession}; the orchestrator L{closeForShutdown}.

    @ivar done: the Deferred the call's handler returned; firing it ends the
        call, cancelling it (the transcoder went away) takes the transcoder
        out of the pool.
    @ivar transcoder: its L{RemoteTranscoder} while it is in the pool.
    """

    _log = Logger()

    def __init__(self, service, call, address):
        self._service = service
        self._call = call
        self.address = address
        self.transcoder = None
        self.taskIds = set()
        self.closed = False
        self.done = Deferred(self._callCancelled)

    def sendTask(self, taskId, job):
        """
        Keep the segment for download and tell the transcoder where it is.

        @raise TaskInputsFull: no room for the segment (the dispatcher moves
            the task elsewhere).
        """
        if self.closed:
            raise RuntimeError(f"transcoder {self.address} is gone")
        url = self._service.taskStarted(taskId, self, job)
        message = pb.NotifySegment(
            url=url, taskId=taskId, segData=segDataFor(job), profiles=LEGACY_PROFILES, orchId=self._service.orchId)
        if self._send(message):
            self._log.debug("Sent taskId={taskId} to transcoder={transcoder} url={url}",
                            taskId=taskId, transcoder=self.address, url=url)

    def streamsJob(self, job):
        """
        Never: a stock transcoder downloads the whole segment.
        """
        return False

    def cancelTask(self, taskId):
        """
        The orchestrator gave up on C{taskId}: the stock transcoder has no
        cancel message, so forget it (its input goes, a late result is
        dropped).
        """
        self._service.taskEnded(taskId)

    def endSession(self, sessionId):
        """
        Tell the transcoder a session ended (go-livepeer's empty-URL message),
        so it can free what it keeps for it.
        """
        if not self.closed:
            self._send(sessionTeardown(sessionId))

    def closeForShutdown(self):
        """
        End the call with status OK (the stock transcoder reconnects) and take
        the transcoder out of the pool.

        @return: a Deferred that has fired: the call's trailers are written
            (or queued behind what the transcoder has not read) at once.
        """
        self.close()
        return succeed(None)

    def closeForStaleSecret(self):
        """
        The secret the transcoder registered with is no longer valid: end
        the call with UNAVAILABLE C{secret rotated}, on which a stock
        transcoder reconnects (go-livepeer reads its secret once, at start:
        unless restarted with the new one it is then refused with C{invalid
        secret} and stops).
        """
        self.close(GRPCError(StatusCode.UNAVAILABLE, SECRET_ROTATED))

    def close(self, error=None):
        """
        End the call from our side: with status OK, or with C{error} (a
        L{GRPCError}); the transcoder leaves the pool and its tasks move.
        """
        if self.closed:
            return
        self._gone("closed by the orchestrator")
        if error is None:
            self.done.callback(None)
        else:
            self.done.errback(error)

    def _send(self, message):
        try:
            self._call.send(message)
        except GRPCError as e:
            # The transcoder does not read its stream: it cannot work for us.
            self._log.warn("Transcoder={transcoder} is not reading its stream ({error}); closing it",
                           transcoder=self.address, error=e.message)
            self.close(GRPCError(StatusCode.UNAVAILABLE, "transcoder not reading its stream"))
            return False
        return True

    def _callCancelled(self, deferred):
        # The call's canceller: the transcoder reset the stream, its
        # connection was lost or the call's deadline passed.
        code = self._call.cancelCode
        self._gone(f"call {code.name if code is not None else 'CANCELLED'}")

    def _gone(self, reason):
        if self.closed:
            return
        self.closed = True
        for taskId in list(self.taskIds):
            self._service.taskEnded(taskId)
        transcoder, self.transcoder = self.transcoder, None
        if transcoder is not None:
            self._log.info("Got transcoder={transcoder} eof, removing from live transcoders map ({reason})",
                           transcoder=transcoder.address, reason=reason)
            self._service.app.transcoderLost(transcoder)


@dataclass
class _TaskEntry:
    link: GRPCTranscoderLink
    sessionId: str
    inputName: str
    profiles: list


class GRPCTranscoderService:
    """
    The orchestrator's side of stock go-livepeer transcoders: the
    C{RegisterTranscoder} handler, the task inputs they download and the
    results they post.

    Registration checks what our WebSocket gate checks, in go-livepeer's
    order and words: C{Got a RegisterTranscoder request ...} for every
    attempt, then the secret (C{invalid secret}), then the capacity
    (C{zero capacity}), then C{Successful transcoder registration ...}. The
    failed-attempt limiter is the one the WebSocket gate uses; an address over
    its limit still gets C{invalid secret} for a wrong secret (so a stock
    transcoder stops, as it should), but no longer a log line per attempt,
    and a right secret is always admitted.

    @param app: the L{Orchestrator}: its C{dispatcher}, C{transcoderRegistered},
        C{transcoderLost}, C{clock}, C{wallClock}, C{serviceURL} and C{metrics}.
    @param secret: the shared L{Secret}.
    @param limiter: the L{FailedAttemptLimiter} shared with the WebSocket gate.
    @param maxResultBytes: the largest C{/transcodeResults} body (every
        rendition of one segment); the site must refuse larger bodies before
        buffering them.
    @param orchId: C{NotifySegment.orchId}: the ticket recipient address in
        hex on chain, else C{offchain}.
    @ivar inputs: the L{TaskInputs}.
    @ivar resultsResource: the C{/transcodeResults} resource.
    """

    _log = Logger()

    def __init__(self, app, secret, limiter, maxResultBytes, orchId=OFFCHAIN_ORCH_ID):
        self.app = app
        self._secret = secret
        self._limiter = limiter
        self.maxResultBytes = maxResultBytes
        self.orchId = orchId
        self.inputs = TaskInputs(app.clock)
        self.resultsResource = TranscodeResultsResource(self)
        self._tasks = {}

    def addTo(self, registry):
        """
        Serve C{/net.Transcoder/RegisterTranscoder} from C{registry} (a
        L{livepeer_tx.rpc.ServiceRegistry}).
        """
        registry.addServerStreaming(REGISTER_TRANSCODER, pb.RegisterRequest, self.registerTranscoder)

    def streamResource(self, fallback):
        """
        The C{/stream/} resource: task inputs, and everything else from
        C{fallback} (the rendition store's L{StreamResource}).
        """
        return TaskInputResource(self.inputs, fallback)

    # Registration.

    def registerTranscoder(self, request, call):
        """
        The C{RegisterTranscoder} handler: admit the transcoder to the pool
        for as long as its call is open.

        @return: a Deferred that fires when we end the call; cancelled when
            the transcoder goes away.
        @raise GRPCError: UNKNOWN C{invalid secret} or C{zero capacity}
            (a stock transcoder stops on these), UNAVAILABLE when the secret
            cannot be checked now, INVALID_ARGUMENT for malformed or absurd
            capabilities (see L{describeCapabilities}).
        """
        address = describeAddress(call.peer)
        capacity = request.capacity
        self._log.info("Got a RegisterTranscoder request from transcoder={transcoder} capacity={capacity}",
                       transcoder=address, capacity=capacity)
        try:
            matches, quiet = self.checkCredentials(getattr(call.peer, "host", "unknown"), request.secret, address)
        except SecretFileError:
            self._countRefusal(SERVICE_UNAVAILABLE)
            raise GRPCError(StatusCode.UNAVAILABLE, SERVICE_UNAVAILABLE) from None
        if not matches:
            if not quiet:
                self._log.error("Cannot register transcoder={transcoder} err={err!r}",
                                transcoder=address, err=wsproto.INVALID_SECRET)
            raise GRPCError(StatusCode.UNKNOWN, wsproto.INVALID_SECRET)
        if capacity <= 0:
            self._log.error("Cannot register transcoder={transcoder} err={err!r}",
                            transcoder=address, err=wsproto.ZERO_CAPACITY)
            self._countRefusal(wsproto.ZERO_CAPACITY)
            raise GRPCError(StatusCode.UNKNOWN, wsproto.ZERO_CAPACITY)
        if capacity > MAX_CAPACITY:
            self._log.warn("Transcoder={transcoder} announced capacity={capacity}; counting {limit}",
                           transcoder=address, capacity=capacity, limit=MAX_CAPACITY)
            capacity = MAX_CAPACITY
        try:
            capabilities, version = describeCapabilities(request)
        except GRPCError as e:
            self._log.error("Cannot register transcoder={transcoder} err={err!r}", transcoder=address, err=e.message)
            raise
        link = GRPCTranscoderLink(self, call, address)
        link.transcoder = RemoteTranscoder(
            address, capacity, link=link, version=version, capabilities=capabilities,
            connectedSince=self.app.wallClock(), credentialTag=self._secret.tag(request.secret),
        )
        self.app.transcoderRegistered(link.transcoder)
        self._log.info("Successful transcoder registration transcoder={transcoder} capacity={capacity}",
                       transcoder=address, capacity=capacity)
        return link.done

    def checkCredentials(self, host, candidate, address):
        """
        Whether C{candidate} is the shared secret (compared in constant time),
        counting a failure against C{host}.

        @return: C{(matches, quiet)}: C{quiet} when C{host} was over its limit
            already, so the caller does not log this failure.
        @raise SecretFileError: the secret cannot be read now (logged here).
        """
        try:
            matches, wasBlocked, nowBlocked = self._limiter.checkSecret(self._secret, host, candidate)
        except SecretFileError as e:
            self._log.error("Refusing transcoder={transcoder}: the secret cannot be checked: {error}",
                            transcoder=address, error=str(e))
            raise
        if matches:
            return True, False
        self._countRefusal(TOO_MANY_ATTEMPTS if wasBlocked else wsproto.INVALID_SECRET)
        if nowBlocked:
            self._log.warn(
                "Too many failed attempts from {host}: their failures are not logged for {window:g} s "
                "(a right secret is still admitted)", host=host, window=self._limiter.window)
        return False, wasBlocked

    def _countRefusal(self, reason):
        self.app.metrics.registrationsRefused.labels(reason=reason).inc()

    # Tasks.

    def taskStarted(self, taskId, link, job):
        """
        Keep C{job}'s segment for download by C{link}'s transcoder.

        @return: the URL the transcoder downloads it from.
        """
        name = self.inputs.add(job.sessionId, job.seq, job.data)
        self._tasks[taskId] = _TaskEntry(link, job.sessionId, name, list(job.profiles))
        link.taskIds.add(taskId)
        return f"{self.app.serviceURL}/stream/{quote(job.sessionId, safe='')}/{name}"

    def taskEnded(self, taskId):
        """
        C{taskId} is over (answered, given up, or its transcoder is gone):
        drop its input.
        """
        entry = self._tasks.pop(taskId, None)
        if entry is not None:
            entry.link.taskIds.discard(taskId)
            self.inputs.discard(entry.sessionId, entry.inputName)

    def _liveTask(self, taskId):
        # The task's entry while the dispatcher still waits on its
        # transcoder for it, else None (the result is dropped).
        entry = self._tasks.get(taskId)
        transcoder = entry.link.transcoder if entry is not None else None
        if transcoder is None or not self.app.dispatcher.isKnownTask(taskId, transcoder):
            self._log.info("Dropping result for unknown or expired taskId={taskId}", taskId=taskId)
            return None
        return entry

    def deliverResult(self, taskId, parts, decodedPixels):
        """
        Renditions for C{taskId}, named after its profiles in request order;
        dropped when the task is unknown or over.
        """
        entry = self._liveTask(taskId)
        if entry is None:
            return
        names = [p.name for p in entry.profiles] + [""] * max(0, len(parts) - len(entry.profiles))
        renditions = [Rendition(name=name, data=part.data, pixels=part.pixels) for name, part in zip(names, parts)]
        self.taskEnded(taskId)
        self.app.dispatcher.taskSucceeded(taskId, renditions, decodedPixels)

    def deliverError(self, taskId, error):
        """
        The transcoder could not transcode C{taskId} (or posted a result that
        cannot be used); dropped when the task is unknown or over.
        """
        entry = self._liveTask(taskId)
        if entry is None:
            return
        self.taskEnded(taskId)
        self.app.dispatcher.taskFailed(taskId, error)
