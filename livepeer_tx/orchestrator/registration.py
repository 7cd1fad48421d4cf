# -*- test-case-name: tests.test_e2e -*-
"""
The transcoder-facing WebSocket edge of the orchestrator.

A transcoder opens C{wss://<orchestrator>:8935/transcoder} with the
C{livepeer-tx.v1} subprotocol. The secret and capacity travel in HTTP headers
and are checked before the upgrade, so a wrong secret gets an HTTP 403 and never
a WebSocket. See docs/protocol.md for the message catalogue.

What a transcoder sends is checked before it goes further: every JSON text is
bounded in size and depth before it is parsed (L{wsproto}), every field of a
result is checked by L{parseResult}, and error texts are cleaned of paths and
control characters. A transcoder that breaks the protocol is taken out of
rotation at once, and the tasks it held move to other transcoders.
"""

import math
from collections import OrderedDict, deque

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource
from zope.interface import implementer

from livepeer_tx import __version__, wsproto
from livepeer_tx.addresses import describeAddress
from livepeer_tx.capabilities import parseReport
from livepeer_tx.interfaces import ITranscoderLink
from livepeer_tx.orchestrator.dispatch import Rendition
from livepeer_tx.orchestrator.routing import RemoteTranscoder
from livepeer_tx.profiles import MAX_SIDE
from livepeer_tx.secret import SecretFileError

INVALID_SECRET = wsproto.INVALID_SECRET
ZERO_CAPACITY = wsproto.ZERO_CAPACITY
TOO_MANY_ATTEMPTS = "too many failed attempts"
UNAUTHORIZED = "Unauthorized"
SERVICE_UNAVAILABLE = "service unavailable"
REGISTER_TIMEOUT = 10.0
DEFAULT_PING_INTERVAL = 2.0

# Bounds of a result's numbers. Renditions are at most MAX_SIDE on a side (the
# transcoder's scale filter caps them); a million frames is over an hour at
# 240 fps; 2**50 pixels is far above any real count and keeps any sum of
# MAX_RENDITIONS of them far below 2**63, go-livepeer's int64.
MAX_RENDITIONS = 256
MAX_RENDITION_NAME = 256
MAX_FRAMES = 1_000_000
MAX_PIXELS = 2**50
MAX_FFMPEG_SECONDS = 3600.0
MAX_DEVICES = 64
MAX_REGISTER_TEXT = 128
MAX_CAPACITY = wsproto.MAX_CAPACITY
MAX_FEATURES = 16
# A streamed task's segment goes in pieces of this size: the transcoder's
# FFmpeg starts on the first, and each is a sign of life (see Liveness).
SEGMENT_PIECE_BYTES = 256 * 1024
# A segment still arriving from the gateway is forwarded once this much has
# come in (the last piece excepted): a few milliseconds of a gateway link.
FORWARD_BYTES = 64 * 1024
SECRET_ROTATED = "secret rotated; re-read the secret file"


def maxResultBytes(maxSegmentBytes):
    """
    The per-message limit for a transcoder's binary messages: a result holds
    every rendition of one segment, re-encoded at the gateway's bitrates, so
    twice the largest segment (at most L{wsproto.MAX_MEDIA_BYTES}) plus the
    header.
    """
    return wsproto.mediaMessageLimit(2 * maxSegmentBytes)


class FailedAttemptLimiter:
    """
    Counts failed authentication attempts per source address in a sliding
    window. Once an address is over the limit its wrong secrets are answered
    with 429 and no longer logged one by one; a right secret is admitted from
    any address, so failures from others behind the same address (a NAT)
    never lock a legitimate transcoder out.

    @param clock: an L{IReactorTime}.
    @param maxFailures: failures allowed per window.
    @param window: window length in seconds.
    @param maxHosts: addresses remembered at most; the one that failed least
        recently is forgotten first.
    """

    def __init__(self, clock, maxFailures=5, window=60.0, maxHosts=10_000):
        self._clock = clock
        self.maxFailures = maxFailures
        self.window = window
        self.maxHosts = maxHosts
        self._failures = OrderedDict()

    def _recent(self, host):
        times = self._failures.get(host)
        if times is None:
            return ()
        cutoff = self._clock.seconds() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[host]
        return times

    def isBlocked(self, host):
        """
        Whether C{host} has used up its failed attempts.
        """
        return len(self._recent(host)) >= self.maxFailures

    def recordFailure(self, host):
        """
        Count one failed attempt from C{host}.

        @return: whether C{host} is over the limit now.
        """
        self._recent(host)
        times = self._failures.pop(host, None) or deque(maxlen=self.maxFailures)
        times.append(self._clock.seconds())
        self._failures[host] = times
        while len(self._failures) > self.maxHosts:
            self._failures.popitem(last=False)
        return len(times) >= self.maxFailures

    def checkSecret(self, secret, host, candidate):
        """
        Whether C{candidate} is C{secret} (a L{livepeer_tx.secret.Secret},
        compared in constant time), counting a failure against C{host}: the
        check every transcoder registration makes, whatever its transport.

        @return: C{(matches, wasBlocked, nowBlocked)}: whether C{host} had
            used up its failed attempts before this one, and whether this
            failure used them up.
        @raise SecretFileError: the secret cannot be read now (nothing is
            counted).
        """
        wasBlocked = self.isBlocked(host)
        if secret.matches(candidate):
            return True, wasBlocked, False
        blocked = self.recordFailure(host)
        return False, wasBlocked, blocked and not wasBlocked


class TranscoderGate(resource.Resource):
    """
    Authenticates a transcoder's upgrade request, then hands it to the
    WebSocket resource.

    Logs go-livepeer's C{Got a RegisterTranscoder request} line for every
    attempt and refuses with its words C{invalid secret} and C{zero capacity}.
    A secret file that cannot be used at the moment (unreadable, or open to
    group or others) refuses every registration with 503 and an error line.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, secret, limiter, webSocketResource, metrics):
        super().__init__()
        self._secret = secret
        self._limiter = limiter
        self._webSocket = webSocketResource
        self._metrics = metrics

    def _refuse(self, request, code, message):
        self._metrics.registrationsRefused.labels(reason=message).inc()
        request.setResponseCode(code, message.encode("ascii"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return message.encode("ascii") + b"\n"

    def render(self, request):
        """
        Check the secret and capacity, then upgrade or refuse.
        """
        peer = request.getClientAddress()
        host = getattr(peer, "host", "unknown")
        address = describeAddress(peer)
        capacity = parseCapacity(request.getHeader(wsproto.CAPACITY_HEADER))
        self._log.info(
            "Got a RegisterTranscoder request from transcoder={transcoder} capacity={capacity}",
            transcoder=address, capacity=capacity,
        )
        authorization = request.getHeader(wsproto.AUTH_HEADER) or ""
        if authorization != wsproto.AUTH_VALUE:
            self._log.error("Invalid auth type {value!r} from transcoder={transcoder}",
                            value=authorization[:64], transcoder=address)
            return self._refuse(request, 401, UNAUTHORIZED)
        credentials = request.getHeader(wsproto.CREDENTIALS_HEADER) or ""
        try:
            matches, wasBlocked, nowBlocked = self._limiter.checkSecret(self._secret, host, credentials)
        except SecretFileError as e:
            self._log.error("Refusing transcoder={transcoder}: the secret cannot be checked: {error}",
                            transcoder=address, error=str(e))
            return self._refuse(request, 503, SERVICE_UNAVAILABLE)
        if not matches:
            if wasBlocked:
                return self._refuse(request, 429, TOO_MANY_ATTEMPTS)
            self._log.error("Cannot register transcoder={transcoder} err={err!r}",
                            transcoder=address, err=INVALID_SECRET)
            if nowBlocked:
                self._log.warn(
                    "Too many failed attempts from {host}: its wrong secrets get 429 for {window:g} s "
                    "(a right secret is still admitted)", host=host, window=self._limiter.window)
            return self._refuse(request, 403, INVALID_SECRET)
        if capacity <= 0:
            self._log.error("Cannot register transcoder={transcoder} err={err!r}",
                            transcoder=address, err=ZERO_CAPACITY)
            return self._refuse(request, 403, ZERO_CAPACITY)
        return self._webSocket.render(request)


def parseCapacity(value):
    """
    The capacity a C{Livepeer-Capacity} header announces; 0 when it is absent
    or not a plain decimal number (so it is refused, and safe to log).
    """
    value = (value or "").strip()
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        return 0
    return int(value)


def _count(value, what, limit):
    if type(value) is not int or not 0 <= value <= limit:
        raise wsproto.ProtocolError(f"result: {what} must be an integer from 0 to {limit}")
    return value


def parseResult(header, parts):
    """
    Check every field of a C{result} frame before anything of it is used.

    @return: C{(taskId, renditions, decodedPixels, seconds)}, the renditions
        as L{Rendition}s.
    @raise wsproto.ProtocolError: a field is missing, of the wrong type or out
        of range, or a rendition has no bytes.
    """
    taskId = header.get("taskId")
    if type(taskId) is not int:
        raise wsproto.ProtocolError("result: taskId must be an integer")
    renditions = header.get("renditions")
    if not isinstance(renditions, list) or len(renditions) != len(parts):
        raise wsproto.ProtocolError("result: needs one rendition entry per part")
    if not 0 < len(parts) <= MAX_RENDITIONS:
        raise wsproto.ProtocolError(f"result: needs 1 to {MAX_RENDITIONS} renditions")
    decoded = []
    for index, (info, data) in enumerate(zip(renditions, parts)):
        if not isinstance(info, dict):
            raise wsproto.ProtocolError(f"result: rendition {index} must be an object")
        name = info.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_RENDITION_NAME:
            raise wsproto.ProtocolError(
                f"result: rendition {index} needs a name of 1 to {MAX_RENDITION_NAME} characters")
        frames = _count(info.get("frames"), f"rendition {index} frames", MAX_FRAMES)
        width = _count(info.get("width"), f"rendition {index} width", MAX_SIDE)
        height = _count(info.get("height"), f"rendition {index} height", MAX_SIDE)
        pixels = _count(info.get("pixels"), f"rendition {index} pixels", MAX_PIXELS)
        if pixels > frames * width * height:
            raise wsproto.ProtocolError(f"result: rendition {index} pixels exceed frames x width x height")
        if not data:
            raise wsproto.ProtocolError(f"result: rendition {index} has no bytes")
        decoded.append(Rendition(name=name, data=data, pixels=pixels, frames=frames, width=width, height=height))
    decodedPixels = _count(header.get("decodedPixels"), "decodedPixels", MAX_PIXELS)
    if "decodedFrames" in header:
        _count(header["decodedFrames"], "decodedFrames", MAX_FRAMES)
    seconds = header.get("seconds")
    if type(seconds) not in (int, float) or not (math.isfinite(seconds) and 0 <= seconds <= MAX_FFMPEG_SECONDS):
        raise wsproto.ProtocolError(f"result: seconds must be a number from 0 to {MAX_FFMPEG_SECONDS:g}")
    return taskId, decoded, decodedPixels, float(seconds)


@implementer(ITranscoderLink)
class TranscoderServerProtocol(wsproto.MessageLimits, WebSocketServerProtocol):
    """
    One transcoder's connection: decodes frames and dispatches them to the
    L{Dispatcher}; encodes tasks for the transcoder.

    autobahn owns C{self.log}, so our logger is C{_log}.
    """

    _log = Logger()

    def __init__(self):
        super().__init__()
        self.transcoder = None
        self._registerTimer = None
        self._closingForError = False
        self.takesStreams = False
        # The renditions of streamed tasks as they arrive, by task id.
        self._streamedResults = {}

    @property
    def _app(self):
        return self.factory.app

    def onConnect(self, request):
        """
        Accept only our subprotocol.
        """
        if wsproto.SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, f"subprotocol {wsproto.SUBPROTOCOL} required")
        self._peerAddress = describeAddress(self.transport.getPeer())
        self._announcedCapacity = parseCapacity(request.headers.get(wsproto.CAPACITY_HEADER.lower()))
        # Which secret it registered with, to recognise it once the secret changes.
        secret = self.factory.secret
        credentials = request.headers.get(wsproto.CREDENTIALS_HEADER.lower())
        self._credentialTag = secret.tag(credentials) if secret is not None and credentials is not None else None
        return wsproto.SUBPROTOCOL

    def onOpen(self):
        """
        Wait for the C{register} message.
        """
        try:
            self._registerTimer = self._app.clock.callLater(REGISTER_TIMEOUT, self._registerTimedOut)
        except Exception:
            self._log.failure("onOpen failed")
            self.sendClose(self.CLOSE_STATUS_CODE_INTERNAL_ERROR)

    def _registerTimedOut(self):
        self._registerTimer = None
        self._protocolError("no register message within {} s".format(REGISTER_TIMEOUT))

    def onMessage(self, payload, isBinary):
        """
        Decode one message and hand it to its handler. Messages that arrive
        once the connection is closing (after a close frame or a protocol
        error) are dropped: nothing can be answered on it any more.
        """
        if self.state != self.STATE_OPEN:
            return
        try:
            wsproto.dispatchMessage(self, payload, isBinary, expected="register" if self.transcoder is None else None)
        except wsproto.ProtocolError as e:
            self._protocolError(str(e))
        except Exception:
            self._log.failure("Error handling a message from transcoder={transcoder}",
                              transcoder=self._peerAddress)
            self._protocolError("internal error")

    def _protocolError(self, reason):
        self._log.error("Protocol error from transcoder={transcoder}: {reason}",
                        transcoder=self._peerAddress, reason=reason)
        if self.transcoder is not None:
            # No new work during the closing handshake, and its tasks move now.
            transcoder, self.transcoder = self.transcoder, None
            self._log.info("Removing transcoder={transcoder} from live transcoders map after a protocol error",
                           transcoder=transcoder.address)
            self._app.transcoderLost(transcoder)
        if not self._closingForError:
            self._closingForError = True
            try:
                self.sendMessage(wsproto.encodeControl("error", error=reason))
            except Exception:
                pass
            self.sendClose(wsproto.CLOSE_PROTOCOL_ERROR, reason[:120])

    def handle_register(self, message, parts):
        """
        Register the transcoder: capacity, devices, capabilities (parsed
        here, once; a malformed report is a protocol error), version.
        """
        if self.transcoder is not None:
            raise wsproto.ProtocolError("already registered")
        capacity = message.get("capacity")
        if type(capacity) is not int or capacity <= 0:
            self._log.error("Cannot register transcoder={transcoder} err={err!r}",
                            transcoder=self._peerAddress, err=ZERO_CAPACITY)
            self.sendMessage(wsproto.encodeControl("refused", error=ZERO_CAPACITY))
            self.sendClose(wsproto.CLOSE_REFUSED, ZERO_CAPACITY)
            return
        if capacity != self._announcedCapacity:
            raise wsproto.ProtocolError(
                f"register: capacity {capacity} differs from the {self._announcedCapacity} "
                f"announced in {wsproto.CAPACITY_HEADER}")
        devices = message.get("devices") or []
        version = message.get("version") or ""
        capabilities = message.get("capabilities") or {}
        features = message.get("features") or []
        if not isinstance(devices, list) or not isinstance(version, str) or not isinstance(capabilities, dict):
            raise wsproto.ProtocolError("register: devices must be a list, version a string, capabilities an object")
        if not isinstance(features, list) or len(features) > MAX_FEATURES or not all(
                isinstance(f, str) and len(f) <= MAX_REGISTER_TEXT for f in features):
            raise wsproto.ProtocolError(f"register: features must be a list of at most {MAX_FEATURES} names")
        if len(devices) > MAX_DEVICES or len(version) > MAX_REGISTER_TEXT or not all(
                isinstance(d, (str, int)) and not isinstance(d, bool) and len(str(d)) <= MAX_REGISTER_TEXT
                for d in devices):
            raise wsproto.ProtocolError(
                f"register: at most {MAX_DEVICES} devices and {MAX_REGISTER_TEXT}-character names")
        try:
            capabilities = parseReport(capabilities)
        except ValueError as e:
            raise wsproto.ProtocolError(f"register: capabilities: {e}") from None
        if self._registerTimer is not None and self._registerTimer.active():
            self._registerTimer.cancel()
        self._registerTimer = None
        self.takesStreams = wsproto.FEATURE_STREAM in features
        self.transcoder = RemoteTranscoder(
            self._peerAddress, capacity, link=self, devices=[str(d) for d in devices], version=version,
            capabilities=capabilities, connectedSince=self._app.wallClock(), credentialTag=self._credentialTag,
        )
        self._app.transcoderRegistered(self.transcoder)
        self.sendMessage(wsproto.encodeControl(
            "registered", transcoder=self._peerAddress, capacity=capacity, version=__version__,
            features=list(wsproto.FEATURES),
        ))
        self._log.info(
            "Successful transcoder registration transcoder={transcoder} capacity={capacity}",
            transcoder=self._peerAddress, capacity=capacity,
        )

    def handle_result(self, header, parts):
        """
        Renditions for a task: one binary part per requested profile.
        """
        self._resultReceived(*parseResult(header, parts))

    def _resultReceived(self, taskId, decoded, decodedPixels, seconds):
        self._streamEnded(taskId)
        if not self._app.dispatcher.isKnownTask(taskId, self.transcoder):
            self._log.info("Dropping result for unknown or expired taskId={taskId}", taskId=taskId)
            return
        self._app.dispatcher.taskSucceeded(taskId, decoded, decodedPixels, seconds)

    def handle_renditionData(self, header, parts):
        """
        The next bytes of one rendition of a streamed task, kept until its
        C{resultEnd} (dropped for a task that is over here).
        """
        taskId, index = header.get("taskId"), header.get("rendition")
        if type(taskId) is not int or type(index) is not int or len(parts) != 1 or not parts[0]:
            raise wsproto.ProtocolError("renditionData: needs an integer taskId and rendition, and one part")
        streamed = self._streamedResults.get(taskId)
        if streamed is None:
            return
        if not 0 <= index < len(streamed.pieces):
            raise wsproto.ProtocolError(f"renditionData: task {taskId} has no rendition {index}")
        streamed.size += len(parts[0])
        if streamed.size > self.maxMessagePayloadSize:
            raise wsproto.ProtocolError(
                f"renditionData: task {taskId} sent over the {self.maxMessagePayloadSize}-byte result limit")
        streamed.pieces[index].append(parts[0])

    def handle_resultEnd(self, message, parts):
        """
        The end of a streamed task: every rendition byte is in; the fields
        are those of C{result}, checked the same way, and C{sizes} must be
        what arrived.
        """
        taskId = message.get("taskId")
        if type(taskId) is not int:
            raise wsproto.ProtocolError("resultEnd: taskId must be an integer")
        streamed = self._streamEnded(taskId)
        if streamed is None:
            self._log.info("Dropping result for unknown or expired taskId={taskId}", taskId=taskId)
            return
        renditions = [b"".join(pieces) for pieces in streamed.pieces]
        if message.get("sizes") != [len(data) for data in renditions]:
            raise wsproto.ProtocolError("resultEnd: sizes differ from the rendition bytes received")
        self._resultReceived(*parseResult(message, renditions))

    def handle_error(self, message, parts):
        """
        The transcoder could not transcode a task (or reports a protocol error).
        """
        taskId = message.get("taskId")
        error = wsproto.cleanErrorText(message.get("error"), default="unknown transcoder error")
        self._streamEnded(taskId)
        if taskId is None:
            self._log.warn("Transcoder={transcoder} reported: {error}", transcoder=self._peerAddress, error=error)
            return
        if type(taskId) is not int:
            raise wsproto.ProtocolError("error: taskId must be an integer")
        if not self._app.dispatcher.isKnownTask(taskId, self.transcoder):
            return
        self._log.info("Transcoding error for taskId={taskId} transcoder={transcoder} err={err!r}",
                       taskId=taskId, transcoder=self._peerAddress, err=error)
        self._app.dispatcher.taskFailed(taskId, error)

    def handle_drain(self, message, parts):
        """
        The transcoder drains: no new segments for it. The acknowledgement
        tells it that no task follows.
        """
        self._app.transcoderDraining(self.transcoder)
        self.sendMessage(wsproto.encodeControl("drainAck"))

    def handle_capacity(self, message, parts):
        """
        The transcoder's capacity changed.
        """
        capacity = message.get("capacity")
        if type(capacity) is not int or not 0 < capacity <= MAX_CAPACITY:
            raise wsproto.ProtocolError(f"capacity: must be an integer from 1 to {MAX_CAPACITY}")
        self._app.transcoderCapacityChanged(self.transcoder, capacity)

    def sendTask(self, taskId, job):
        """
        Send one segment to transcode (called by the dispatcher): streamed
        (L{streamsJob}), in pieces its FFmpeg reads as they arrive (a
        segment still arriving from the gateway is forwarded as it comes),
        the renditions coming back as they are written; else in one
        C{transcode} frame.
        """
        fields = {
            "taskId": taskId, "sessionId": job.sessionId, "seq": job.seq, "durationMs": job.durationMs,
            "profiles": [p.toDict() for p in job.profiles],
        }
        if not self.streamsJob(job):
            self.sendMessage(wsproto.encodeMedia(dict(fields, type="transcode"), [job.data]), isBinary=True)
            return
        arriving = job.arriving
        size = len(job.data) if arriving is None else arriving.size
        if size is not None:
            fields["size"] = size
        forwarder = _SegmentForwarder(self, taskId, arriving)
        self._streamedResults[taskId] = _StreamedResult([[] for _ in job.profiles], forwarder)
        self.sendMessage(wsproto.encodeControl("transcodeStart", **fields))
        if arriving is None:
            forwarder.write(job.data)
            forwarder.end()
        else:
            arriving.follow(forwarder)

    def streamsJob(self, job):
        """
        Whether C{job} goes to this transcoder streamed, even while its
        segment is still arriving: it takes streamed
        tasks (it listed L{wsproto.FEATURE_STREAM}) and every rendition is
        MPEG-TS (an MP4 muxer cannot write to a pipe).
        """
        return self.takesStreams and all(p.format == "mpegts" for p in job.profiles)

    def sendSegmentData(self, taskId, data):
        """
        Send the next piece of a streamed task's segment.
        """
        self.sendMessage(wsproto.encodeMedia({"type": "segmentData", "taskId": taskId}, [data]), isBinary=True)

    def cancelTask(self, taskId):
        """
        Ask the transcoder to stop a task the orchestrator gave up on.
        """
        self._streamEnded(taskId)
        self.sendMessage(wsproto.encodeControl("cancel", taskId=taskId))

    def _streamEnded(self, taskId):
        # The task is over here: its segment is no longer forwarded.
        streamed = self._streamedResults.pop(taskId, None)
        if streamed is not None:
            streamed.forwarder.stop()
        return streamed

    def endSession(self, sessionId):
        """
        Tell the transcoder a session ended, so it can free what it keeps for it.
        """
        self.sendMessage(wsproto.encodeControl("endSession", sessionId=sessionId))

    def closeForShutdown(self):
        """
        Start the closing handshake; the Deferred fires once the connection is gone.
        """
        self._closed = getattr(self, "_closed", None) or defer.Deferred()
        self.sendClose(wsproto.CLOSE_SHUTDOWN, "orchestrator shutting down")
        return self._closed

    def closeForStaleSecret(self):
        """
        Close with 4004: the secret the transcoder registered with is no
        longer valid; it re-reads its secret file and reconnects.
        """
        self.sendClose(wsproto.CLOSE_SECRET_ROTATED, SECRET_ROTATED)

    def onClose(self, wasClean, code, reason):
        """
        Take the transcoder out of the pool and move its tasks elsewhere.
        """
        for taskId in list(self._streamedResults):
            self._streamEnded(taskId)
        closed, self._closed = getattr(self, "_closed", None), None
        if closed is not None:
            self._app.clock.callLater(0, closed.callback, None)
        if self._registerTimer is not None and self._registerTimer.active():
            self._registerTimer.cancel()
        if self.transcoder is not None:
            transcoder, self.transcoder = self.transcoder, None
            self._log.info(
                "Got transcoder={transcoder} eof, removing from live transcoders map (code={code} reason={reason})",
                transcoder=transcoder.address, code=code, reason=reason,
            )
            self._app.transcoderLost(transcoder)


class _StreamedResult:
    """
    A streamed task's renditions as they arrive: the pieces of each, and
    their total size; and the L{_SegmentForwarder} of its segment.
    """

    def __init__(self, pieces, forwarder):
        self.pieces = pieces
        self.size = 0
        self.forwarder = forwarder


class _SegmentForwarder:
    """
    Sends a streamed task's segment as C{segmentData} messages, then
    C{segmentEnd}: each time at least L{FORWARD_BYTES} are waiting, in
    pieces of at most L{SEGMENT_PIECE_BYTES}.

    @param link: the L{TranscoderServerProtocol}.
    @param arriving: the L{livepeer_tx.orchestrator.dispatch.ArrivingSegment}
        it follows, or L{None} for a segment given whole.
    """

    def __init__(self, link, taskId, arriving):
        self._link = link
        self._taskId = taskId
        self._arriving = arriving
        self._waiting = []
        self._waitingBytes = 0

    def write(self, data):
        """
        The segment's next bytes.
        """
        self._waiting.append(data)
        self._waitingBytes += len(data)
        if self._waitingBytes >= FORWARD_BYTES:
            self._send()

    def end(self):
        """
        The segment is complete.
        """
        self._send()
        self._link.sendMessage(wsproto.encodeControl("segmentEnd", taskId=self._taskId))

    def stop(self):
        """
        Forward nothing more (the task is over).
        """
        if self._arriving is not None:
            self._arriving.unfollow(self)
        self._waiting = []

    def _send(self):
        waiting, self._waiting, self._waitingBytes = self._waiting, [], 0
        if not waiting:
            return
        data = memoryview(waiting[0] if len(waiting) == 1 else b"".join(waiting))
        for start in range(0, len(data), SEGMENT_PIECE_BYTES):
            self._link.sendSegmentData(self._taskId, data[start:start + SEGMENT_PIECE_BYTES])


class TranscoderServerFactory(WebSocketServerFactory):
    """
    Builds L{TranscoderServerProtocol}s bound to the orchestrator application.

    @param app: the L{Orchestrator}; protocols call its C{transcoderRegistered},
        C{transcoderLost}, C{transcoderDraining}, C{transcoderCapacityChanged},
        C{dispatcher}, C{clock} and C{wallClock}.
    @param secret: the shared L{Secret}, to tag the secret each transcoder
        registered with, or L{None}.
    """

    protocol = TranscoderServerProtocol

    def __init__(self, app, reactor, maxMessageBytes, pingInterval=DEFAULT_PING_INTERVAL, pingTimeout=None,
                 secret=None):
        super().__init__(reactor=reactor)
        self.app = app
        self.secret = secret
        self.server = f"livepeer-tx/{__version__}"
        self.setProtocolOptions(
            maxMessagePayloadSize=maxMessageBytes,
            maxFramePayloadSize=maxMessageBytes,
            autoPingInterval=pingInterval,
            autoPingTimeout=pingInterval if pingTimeout is None else pingTimeout,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
            autoFragmentSize=1024 * 1024,
        )


def makeTranscoderResource(app, reactor, secret, limiter, maxMessageBytes, pingInterval=DEFAULT_PING_INTERVAL):
    """
    The C{/transcoder} resource: authentication gate in front of the WebSocket.

    @param maxMessageBytes: the largest binary message a transcoder may send
        (see L{maxResultBytes}); text messages are limited to
        L{wsproto.MAX_CONTROL_BYTES}.
    @param pingInterval: seconds between WebSocket pings, and how long a pong
        may take before the transcoder counts as dead: a frozen transcoder is
        found within twice this, well inside go-livepeer's 8 s task deadline
        at the default.
    """
    factory = TranscoderServerFactory(app, reactor, maxMessageBytes, pingInterval, pingInterval, secret=secret)
    return TranscoderGate(secret, limiter, WebSocketResource(factory), app.metrics), factory
