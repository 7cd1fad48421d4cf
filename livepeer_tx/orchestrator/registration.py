# -*- test-case-name: tests.test_e2e -*-
"""
The transcoder-facing WebSocket edge of the orchestrator.

A transcoder opens C{wss://<orchestrator>:8935/transcoder} with the
C{livepeer-tx.v1} subprotocol. The secret and capacity travel in HTTP headers
and are checked before the upgrade, so a wrong secret gets an HTTP 403 and never
a WebSocket. See docs/protocol.md for the message catalogue.
"""

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource

from livepeer_tx import __version__, wsproto
from livepeer_tx.addresses import formatHostPort
from livepeer_tx.orchestrator.dispatch import Rendition
from livepeer_tx.orchestrator.routing import RemoteTranscoder

INVALID_SECRET = wsproto.INVALID_SECRET
ZERO_CAPACITY = wsproto.ZERO_CAPACITY
TOO_MANY_ATTEMPTS = "too many failed attempts"
UNAUTHORIZED = "Unauthorized"
REGISTER_TIMEOUT = 10.0


class FailedAttemptLimiter:
    """
    Counts failed authentication attempts per source address in a sliding
    window, so a peer guessing secrets is refused before its guess is checked.

    @param clock: an L{IReactorTime}.
    @param maxFailures: failures allowed per window.
    @param window: window length in seconds.
    """

    def __init__(self, clock, maxFailures=5, window=60.0):
        self._clock = clock
        self.maxFailures = maxFailures
        self.window = window
        self._failures = {}

    def _recent(self, host):
        cutoff = self._clock.seconds() - self.window
        times = [t for t in self._failures.get(host, ()) if t > cutoff]
        if times:
            self._failures[host] = times
        else:
            self._failures.pop(host, None)
        return times

    def isBlocked(self, host):
        """
        Whether C{host} has used up its failed attempts.
        """
        return len(self._recent(host)) >= self.maxFailures

    def recordFailure(self, host):
        """
        Count one failed attempt from C{host}.
        """
        self._recent(host)
        self._failures.setdefault(host, []).append(self._clock.seconds())


class TranscoderGate(resource.Resource):
    """
    Authenticates a transcoder's upgrade request, then hands it to the
    WebSocket resource.

    Logs go-livepeer's C{Got a RegisterTranscoder request} line for every
    attempt and refuses with its words C{invalid secret} and C{zero capacity}.
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
        address = _formatPeer(peer)
        capacity = parseCapacity(request.getHeader(wsproto.CAPACITY_HEADER))
        self._log.info(
            "Got a RegisterTranscoder request from transcoder={transcoder} capacity={capacity}",
            transcoder=address, capacity=capacity,
        )
        if self._limiter.isBlocked(host):
            self._log.warn(
                "Refusing transcoder={transcoder}: too many failed attempts from {host}",
                transcoder=address, host=host,
            )
            return self._refuse(request, 429, TOO_MANY_ATTEMPTS)
        authorization = request.getHeader(wsproto.AUTH_HEADER) or ""
        if authorization != wsproto.AUTH_VALUE:
            self._log.error("Invalid auth type {value!r} from transcoder={transcoder}",
                            value=authorization[:64], transcoder=address)
            return self._refuse(request, 401, UNAUTHORIZED)
        credentials = request.getHeader(wsproto.CREDENTIALS_HEADER) or ""
        if not self._secret.matches(credentials):
            self._limiter.recordFailure(host)
            self._log.error("Cannot register transcoder={transcoder} err={err!r}",
                            transcoder=address, err=INVALID_SECRET)
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


def _formatPeer(peer):
    host = getattr(peer, "host", None)
    return "unknown" if host is None else formatHostPort(host, peer.port)


class TranscoderServerProtocol(WebSocketServerProtocol):
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

    @property
    def _app(self):
        return self.factory.app

    def onConnect(self, request):
        """
        Accept only our subprotocol.
        """
        if wsproto.SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, f"subprotocol {wsproto.SUBPROTOCOL} required")
        self._peerAddress = _formatPeer(self.transport.getPeer())
        self._announcedCapacity = parseCapacity(request.headers.get(wsproto.CAPACITY_HEADER.lower()))
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
        Decode one message and hand it to its handler.
        """
        try:
            if isBinary:
                header, parts = wsproto.decodeMedia(payload)
            else:
                header, parts = wsproto.decodeControl(payload), []
            kind = header["type"]
            if self.transcoder is None and kind != "register":
                raise wsproto.ProtocolError(f"expected 'register', got {kind!r}")
            handler = getattr(self, "handle_" + kind, None)
            if handler is None:
                raise wsproto.ProtocolError(f"unknown message type {kind!r}")
            handler(header, parts)
        except wsproto.ProtocolError as e:
            self._protocolError(str(e))
        except Exception:
            self._log.failure("Error handling a message from transcoder={transcoder}",
                              transcoder=self._peerAddress)
            self._protocolError("internal error")

    def _protocolError(self, reason):
        self._log.error("Protocol error from transcoder={transcoder}: {reason}",
                        transcoder=self._peerAddress, reason=reason)
        if not self._closingForError:
            self._closingForError = True
            try:
                self.sendMessage(wsproto.encodeControl("error", error=reason))
            except Exception:
                pass
            self.sendClose(wsproto.CLOSE_PROTOCOL_ERROR, reason[:120])

    def handle_register(self, message, parts):
        """
        Register the transcoder: capacity, devices, capabilities, version.
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
        if not isinstance(devices, list) or not isinstance(version, str) or not isinstance(capabilities, dict):
            raise wsproto.ProtocolError("register: devices must be a list, version a string, capabilities an object")
        if self._registerTimer is not None and self._registerTimer.active():
            self._registerTimer.cancel()
        self._registerTimer = None
        self.transcoder = RemoteTranscoder(
            self._peerAddress, capacity, link=self, devices=[str(d) for d in devices], version=version,
            capabilities=capabilities, connectedSince=self._app.wallClock(),
        )
        self._app.transcoderRegistered(self.transcoder)
        self.sendMessage(wsproto.encodeControl(
            "registered", transcoder=self._peerAddress, capacity=capacity, version=__version__,
        ))
        self._log.info(
            "Successful transcoder registration transcoder={transcoder} capacity={capacity}",
            transcoder=self._peerAddress, capacity=capacity,
        )

    def handle_result(self, header, parts):
        """
        Renditions for a task: one binary part per requested profile.
        """
        taskId = header.get("taskId")
        renditions = header.get("renditions")
        if not isinstance(taskId, int) or not isinstance(renditions, list) or len(renditions) != len(parts):
            raise wsproto.ProtocolError("result: needs an integer taskId and one rendition entry per part")
        if not self._app.dispatcher.isKnownTask(taskId, self.transcoder):
            self._log.info("Dropping result for unknown or expired taskId={taskId}", taskId=taskId)
            return
        try:
            decoded = [
                Rendition(
                    name=str(info["name"]), data=data, pixels=int(info["pixels"]),
                    frames=int(info.get("frames", 0)), width=int(info.get("width", 0)),
                    height=int(info.get("height", 0)),
                )
                for info, data in zip(renditions, parts)
            ]
            decodedPixels = int(header.get("decodedPixels", 0))
            seconds = float(header.get("seconds", 0.0))
        except (KeyError, TypeError, ValueError) as e:
            raise wsproto.ProtocolError(f"result: bad rendition entry: {e}") from None
        self._app.dispatcher.taskSucceeded(taskId, decoded, decodedPixels, seconds)

    def handle_error(self, message, parts):
        """
        The transcoder could not transcode a task (or reports a protocol error).
        """
        taskId = message.get("taskId")
        error = str(message.get("error", "unknown transcoder error"))[:1000]
        if taskId is None:
            self._log.warn("Transcoder={transcoder} reported: {error}", transcoder=self._peerAddress, error=error)
            return
        if not isinstance(taskId, int):
            raise wsproto.ProtocolError("error: taskId must be an integer")
        if not self._app.dispatcher.isKnownTask(taskId, self.transcoder):
            return
        self._log.info("Transcoding error for taskId={taskId} transcoder={transcoder} err={err!r}",
                       taskId=taskId, transcoder=self._peerAddress, err=error)
        self._app.dispatcher.taskFailed(taskId, error)

    def sendTask(self, taskId, job):
        """
        Send one segment to transcode (called by the dispatcher).
        """
        header = {
            "type": "transcode", "taskId": taskId, "sessionId": job.sessionId, "seq": job.seq,
            "durationMs": job.durationMs, "profiles": [p.toDict() for p in job.profiles],
        }
        self.sendMessage(wsproto.encodeMedia(header, [job.data]), isBinary=True)

    def cancelTask(self, taskId):
        """
        Ask the transcoder to stop a task the orchestrator gave up on.
        """
        self.sendMessage(wsproto.encodeControl("cancel", taskId=taskId))

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

    def onClose(self, wasClean, code, reason):
        """
        Take the transcoder out of the pool and move its tasks elsewhere.
        """
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


class TranscoderServerFactory(WebSocketServerFactory):
    """
    Builds L{TranscoderServerProtocol}s bound to the orchestrator application.

    @param app: the L{Orchestrator}; protocols call its C{transcoderRegistered},
        C{transcoderLost}, C{dispatcher}, C{clock} and C{wallClock}.
    """

    protocol = TranscoderServerProtocol

    def __init__(self, app, reactor, maxMessageBytes, pingInterval=10.0, pingTimeout=10.0):
        super().__init__(reactor=reactor)
        self.app = app
        self.server = f"livepeer-tx/{__version__}"
        self.setProtocolOptions(
            maxMessagePayloadSize=maxMessageBytes,
            maxFramePayloadSize=maxMessageBytes,
            autoPingInterval=pingInterval,
            autoPingTimeout=pingTimeout,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
            autoFragmentSize=1024 * 1024,
        )


def makeTranscoderResource(app, reactor, secret, limiter, maxMessageBytes, pingInterval=10.0):
    """
    The C{/transcoder} resource: authentication gate in front of the WebSocket.

    @param pingInterval: seconds between WebSocket pings, and how long a pong
        may take before the transcoder counts as dead.
    """
    factory = TranscoderServerFactory(app, reactor, maxMessageBytes, pingInterval, pingInterval)
    return TranscoderGate(secret, limiter, WebSocketResource(factory), app.metrics), factory
