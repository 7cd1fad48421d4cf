# -*- test-case-name: tests.test_units,tests.test_memory_link,tests.test_hostile_transcoder -*-
"""
The transcoder's connection to its orchestrator: registration over a
WebSocket, work in binary frames, and reconnection (a L{ClientService}) with
backoff.
"""

import random

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger, globalLogPublisher
from zope.interface import implementer

from livepeer_tx import __version__, wsproto
from livepeer_tx.addresses import formatHostPort
from livepeer_tx.capabilities import capabilityBitstring
from livepeer_tx.lifecycle import stopWithStatus
from livepeer_tx.profiles import Profile
from livepeer_tx.reload import secretTag
from livepeer_tx.secret import SecretFileError
from livepeer_tx.transcoder.ffmpeg import StreamedSegment

INVALID_SECRET = wsproto.INVALID_SECRET
ZERO_CAPACITY = wsproto.ZERO_CAPACITY

class Backoff:
    """
    Exponential backoff with jitter: about C{initial} seconds first, growing by
    C{factor} up to C{cap}, each delay randomised by +/- C{jitter}.
    """

    def __init__(self, initial=0.5, factor=1.5, cap=30.0, jitter=0.5, random=random.random):
        self.initial = initial
        self.factor = factor
        self.cap = cap
        self.jitter = jitter
        self._random = random
        self.attempts = 0

    def next(self):
        """
        The delay before the next attempt.
        """
        base = min(self.cap, self.initial * self.factor ** self.attempts)
        self.attempts += 1
        return base * (1 - self.jitter + 2 * self.jitter * self._random())

    def slow(self):
        """
        The delay used while the orchestrator refuses our secret: C{cap}
        +/- 20 %, so that many transcoders do not retry at once.
        """
        return self.cap * (0.8 + 0.4 * self._random())

    def reset(self):
        """
        Start again from the initial delay (after a successful registration).
        """
        self.attempts = 0


def resultFields(taskId, output):
    """
    The fields of a C{result} (or C{resultEnd}) message for a transcode
    output: what FFmpeg decoded and encoded, per rendition.
    """
    return {
        "taskId": taskId,
        "decodedPixels": output.decodedPixels,
        "decodedFrames": output.decodedFrames,
        "seconds": output.seconds,
        "renditions": [
            {"name": r.profile.name, "pixels": r.pixels, "frames": r.frames, "width": r.width, "height": r.height}
            for r in output.renditions
        ],
    }


class TranscoderClientProtocol(wsproto.MessageLimits, WebSocketClientProtocol):
    """
    One connection to the orchestrator. Decodes work, runs it on the worker,
    sends results back.
    """

    _log = Logger()

    def __init__(self):
        super().__init__()
        # The streamed segments of this connection's running tasks, by task id.
        self._segments = {}

    def onOpen(self):
        """
        Announce ourselves: capacity, devices, capabilities, version (or,
        if a drain started while we connected, close at once).
        """
        self.factory.link.connectionOpened(self)
        if self.factory.link.draining:
            self.sendClose(wsproto.CLOSE_SHUTDOWN, "transcoder draining")
            return
        self.sendMessage(wsproto.encodeControl(
            "register",
            capacity=self.factory.link.capacity,
            devices=self.factory.link.devices or [],
            capabilities={"bitstring": capabilityBitstring()},
            version=__version__,
            features=list(self.factory.link.worker.features),
        ))

    def onMessage(self, payload, isBinary):
        """
        Dispatch one message from the orchestrator (none once the
        connection is closing: nothing could be answered).
        """
        if self.state != self.STATE_OPEN:
            return
        try:
            wsproto.dispatchMessage(self, payload, isBinary)
        except (wsproto.ProtocolError, KeyError, TypeError, ValueError) as e:
            self._log.error("Protocol error from orchestrator: {reason}", reason=str(e))
            self.sendClose(wsproto.CLOSE_PROTOCOL_ERROR, str(e)[:120])
        except Exception:
            self._log.failure("Error handling a message from the orchestrator")
            self.sendClose(wsproto.CLOSE_PROTOCOL_ERROR, "internal error")

    def handle_registered(self, message, parts):
        """
        The orchestrator accepted our registration.
        """
        self.factory.link.registered(message)

    def handle_refused(self, message, parts):
        """
        The orchestrator refused our registration.
        """
        self.factory.link.refusal = wsproto.cleanErrorText(message.get("error"), default="")

    def handle_drainAck(self, message, parts):
        """
        The orchestrator took note of our drain: no task follows.
        """
        self.factory.link.drainAcknowledged()

    def handle_error(self, message, parts):
        """
        The orchestrator reports a problem with something we sent.
        """
        self._log.warn("Orchestrator reported an error: {error}", error=wsproto.cleanErrorText(message.get("error")))

    def handle_transcode(self, header, parts):
        """
        Transcode one segment and send the renditions back.
        """
        if len(parts) != 1:
            raise wsproto.ProtocolError("transcode: needs an integer taskId and one segment part")
        task = self._taskFields(header)
        if task is not None:
            self.factory.link.runTask(self, *task[:3], parts[0], task[3])

    def handle_transcodeStart(self, message, parts):
        """
        A streamed task starts: transcode its segment as its pieces
        (C{segmentData}) arrive, and send the renditions back as FFmpeg
        writes them.
        """
        size = message.get("size")
        if size is not None and (type(size) is not int or not 0 <= size <= wsproto.MAX_MEDIA_BYTES):
            raise wsproto.ProtocolError(f"transcodeStart: size must be an integer from 0 to {wsproto.MAX_MEDIA_BYTES}")
        task = self._taskFields(message)
        if task is None:
            return
        taskId = task[0]
        if taskId in self._segments:
            raise wsproto.ProtocolError(f"transcodeStart: task {taskId} is already streaming")
        segment = self._segments[taskId] = StreamedSegment(size)
        self.factory.link.runTask(self, *task[:3], segment, task[3])

    def handle_segmentData(self, header, parts):
        """
        The next piece of a streamed task's segment (dropped once the task
        is over: it failed or was cancelled while its segment was arriving).
        """
        segment = self._streamedSegment(header, "segmentData")
        if len(parts) != 1:
            raise wsproto.ProtocolError("segmentData: needs one part")
        if segment is not None:
            try:
                segment.write(parts[0])
            except ValueError as e:
                raise wsproto.ProtocolError(f"segmentData: {e}") from None

    def handle_segmentEnd(self, message, parts):
        """
        A streamed task's segment is complete.
        """
        segment = self._streamedSegment(message, "segmentEnd")
        if segment is not None:
            try:
                segment.end()
            except ValueError as e:
                raise wsproto.ProtocolError(f"segmentEnd: {e}") from None

    def _streamedSegment(self, message, kind):
        taskId = message.get("taskId")
        if type(taskId) is not int:
            raise wsproto.ProtocolError(f"{kind}: taskId must be an integer")
        return self._segments.get(taskId)

    def _taskFields(self, header):
        """
        C{(taskId, sessionId, seq, profiles)} of a task's header, or L{None}
        when its profiles are refused (the orchestrator is told).
        """
        kind = header["type"]
        taskId, sessionId, seq = header.get("taskId"), header.get("sessionId", ""), header.get("seq", 0)
        if type(taskId) is not int:
            raise wsproto.ProtocolError(f"{kind}: needs an integer taskId")
        if not isinstance(sessionId, str) or type(seq) is not int:
            raise wsproto.ProtocolError(f"{kind}: sessionId must be a string and seq an integer")
        try:
            profiles = [Profile.fromDict(item) for item in header.get("profiles") or []]
        except ValueError as e:
            self.sendError(taskId, f"invalid profiles: {e}")
            return None
        if not profiles:
            self.sendError(taskId, "no profiles requested")
            return None
        return taskId, sessionId, seq, profiles

    def handle_cancel(self, message, parts):
        """
        The orchestrator gave up on a task: kill its FFmpeg (and drop the
        rest of its segment, if it streams).
        """
        taskId = message.get("taskId")
        self.factory.link.worker.cancel(taskId)
        if type(taskId) is int:
            self._segments.pop(taskId, None)

    def handle_endSession(self, message, parts):
        """
        A session ended: free what we keep for it.
        """
        self.factory.link.worker.endSession(message.get("sessionId"))

    def _sendWhileOpen(self, payload, isBinary=False):
        """
        Send a message about a task, dropped once the connection is closing
        (the task ended after it: nobody is left to answer).
        """
        if self.state == self.STATE_OPEN:
            self.sendMessage(payload, isBinary=isBinary)

    def sendResult(self, taskId, output):
        """
        Send a transcode output as a C{result} frame.
        """
        header = {"type": "result", **resultFields(taskId, output)}
        self._sendWhileOpen(wsproto.encodeMedia(header, [r.data for r in output.renditions]), isBinary=True)

    def sendRenditionData(self, taskId, index, data):
        """
        Send the next bytes of a streamed task's rendition C{index} (the
        place of its profile in the task's list), as FFmpeg wrote them.
        """
        header = {"type": "renditionData", "taskId": taskId, "rendition": index}
        self._sendWhileOpen(wsproto.encodeMedia(header, [data]), isBinary=True)

    def sendResultEnd(self, taskId, output):
        """
        End a streamed task: every rendition byte has been sent; what FFmpeg
        decoded and encoded, as in C{result}, with each rendition's size.
        """
        self._sendWhileOpen(wsproto.encodeControl(
            "resultEnd", **resultFields(taskId, output), sizes=[r.size for r in output.renditions]))

    def taskEnded(self, taskId):
        """
        A task is over (answered, failed or cancelled): forget its segment.
        """
        self._segments.pop(taskId, None)

    def sendError(self, taskId, error):
        """
        Tell the orchestrator a task failed, with the reason (without local
        paths or control characters, and bounded: it goes on to a gateway).
        """
        self._sendWhileOpen(wsproto.encodeControl("error", taskId=taskId, error=wsproto.cleanErrorText(error)))

    def onClose(self, wasClean, code, reason):
        """
        Report the end of this connection to the link, which reconnects.
        """
        self.factory.link.connectionEnded(self, code, reason)


class _AttemptFactory(Factory):
    """
    The factory a link's L{ClientService} connects with: each connection's
    protocol comes from the autobahn factory of the attempt in progress,
    which carries the secret read for that attempt.

    @ivar current: that autobahn factory.
    """

    current = None

    def buildProtocol(self, addr):
        """
        The protocol of the attempt in progress.
        """
        return self.current.buildProtocol(addr)


def _withoutRetryLines(event):
    """
    Publish C{event} unless it is L{ClientService}'s own retry line.
    """
    if not (event.get("log_format") or "").startswith("Scheduling retry"):
        globalLogPublisher(event)


class _LinkConnector(ClientService):
    """
    The L{ClientService} of an L{OrchestratorLink}, without its own retry
    line in the log: it counts attempts since the last TCP connection, while
    the link's delays follow refusals and registrations, and the link logs
    each retry itself (C{Reconnecting to ...}).
    """

    _log = Logger(observer=_withoutRetryLines)


@implementer(IStreamClientEndpoint)
class _AttemptEndpoint:
    """
    Where a link's L{ClientService} connects: each attempt is the link's
    C{_attempt}, which re-reads the secret and goes through the link's
    L{OrchestratorLink.endpoint} as it is then.
    """

    def __init__(self, link):
        self._link = link

    def connect(self, protocolFactory):
        """
        Make one connection attempt.
        """
        return self._link._attempt(protocolFactory)

    def __repr__(self):
        return f"<orchestrator {self._link.address}>"


class OrchestratorLink(service.Service):
    """
    Keeps one registered connection to the orchestrator through a
    L{ClientService}; every attempt re-reads the secret file, and the end of
    each connection is classified to choose the delay before the next one
    (the retry policy returns that delay): a rotated secret retries soon, a
    refused one slowly, a lost connection after the backoff, and a fatal
    refusal stops the process.

    It can be drained (L{startDraining}): it tells the orchestrator, which
    then sends no more tasks, finishes the tasks it holds, closes the
    connection cleanly and does not reconnect (its L{ClientService} is
    stopped) until L{stopDraining}.

    @param reactor: the reactor.
    @param host: the orchestrator's host.
    @param port: the orchestrator's port.
    @param secret: a L{livepeer_tx.secret.Secret}.
    @param tlsOptions: the client TLS creator (see L{livepeer_tx.tls.clientTLSOptions}).
    @param worker: the L{TranscodeWorker}.
    @param capacity: our C{maxSessions}.
    @param devices: GPU ids, or L{None}.
    @param backoff: the L{Backoff} for lost connections.
    @ivar orchestratorFeatures: what the orchestrator lists in its
        C{registered} message (L{wsproto.FEATURES}).
    @ivar draining: whether it is draining (see above).
    """

    _log = Logger()

    def __init__(self, reactor, host, port, secret, tlsOptions, worker, capacity, devices=None, backoff=None,
                 metrics=None):
        self._reactor = reactor
        self.host = host
        self.port = port
        self._secret = secret
        self._tlsOptions = tlsOptions
        self.worker = worker
        self.capacity = capacity
        self.devices = devices
        self.backoff = backoff or Backoff()
        self.metrics = metrics
        self.protocol = None
        self.isRegistered = False
        self.refusal = None
        self._stopping = False
        self.orchestratorFeatures = frozenset()
        self.draining = False
        self._drainAcknowledged = False
        self._drainClosing = False
        self._attemptSecretTag = None
        self._attemptFactory = _AttemptFactory()
        # Prepared connections (prepareConnection) are not used: ClientService
        # cannot take a connection that ends while it is being prepared.
        self._connector = _LinkConnector(_AttemptEndpoint(self), self._attemptFactory,
                                         retryPolicy=self._retryDelay, clock=reactor)
        self._connectorStopped = None
        self._nextDelay = None
        self._waiting = False
        self._opening = False

    @property
    def address(self):
        """
        The orchestrator's C{host:port}.
        """
        return formatHostPort(self.host, self.port)

    def startService(self):
        """
        Connect as soon as the service starts (unless draining).
        """
        super().startService()
        self._stopping = False
        if not self.draining:
            self._startConnecting()

    def stopService(self):
        """
        Stop reconnecting, close the connection and kill running FFmpegs.
        """
        super().stopService()
        self._stopping = True
        self.worker.cancelAll()
        if self.protocol is not None:
            self.protocol.sendClose(wsproto.CLOSE_SHUTDOWN, "transcoder shutting down")
        self._stopConnecting()
        return self.worker.whenIdle(self._reactor)

    def _startConnecting(self):
        self._nextDelay = None
        self._connectorStopped = None
        self._connector.startService()

    def _stopConnecting(self):
        """
        Stop the L{ClientService}: cancel a pending retry or an attempt in
        progress, or drop the connection (whose close was sent already).
        """
        self._waiting = False
        if self._connector.running:
            self._connectorStopped = self._connector.stopService()

    def _connectionIdle(self):
        """
        Whether the L{ClientService} holds no connection and makes no attempt.
        """
        return not self._connector.running and (self._connectorStopped is None or self._connectorStopped.called)

    def setTLSOptions(self, tlsOptions):
        """
        Trust the orchestrator's certificate as C{tlsOptions} say from the
        next connection on (a reload re-read C{--orchCert}).
        """
        self._tlsOptions = tlsOptions

    def setCapacity(self, capacity):
        """
        Take at most C{capacity} segments at once from now on, and tell the
        orchestrator (one that does not take the C{capacity} message uses
        the new value from our next registration).
        """
        self.capacity = capacity
        self.worker.setCapacity(capacity)
        if self.protocol is None or not self.isRegistered:
            return
        if wsproto.FEATURE_CAPACITY in self.orchestratorFeatures:
            self.protocol.sendMessage(wsproto.encodeControl("capacity", capacity=capacity))
        else:
            self._log.warn("The orchestrator {orchestrator} does not take capacity changes; it will count "
                           "{capacity} from our next registration", orchestrator=self.address, capacity=capacity)

    def secretChanged(self):
        """
        Our secret file changed (a reload): if we are waiting to retry after
        a refusal, retry now.
        """
        if self._waiting and self._connector.running and not self.draining:
            self._log.info("Secret changed; reconnecting to {orchestrator} now", orchestrator=self.address)
            self._stopConnecting()
            self._startConnecting()

    # Draining (see livepeer_tx.lifecycle.Drain).

    def startDraining(self):
        """
        Take no more tasks: tell the orchestrator, stop reconnecting, and
        close once the tasks held are done.
        """
        self.draining = True
        self._drainAcknowledged = False
        self._drainClosing = False
        protocol = self.protocol
        if protocol is None and not self._opening:
            # Waiting to retry, or connecting: stop trying. (A WebSocket
            # being opened closes as soon as it opens: see onOpen.)
            self._stopConnecting()
        if protocol is not None and self.isRegistered and wsproto.FEATURE_DRAIN in self.orchestratorFeatures:
            protocol.sendMessage(wsproto.encodeControl("drain"))
        else:
            self._drainAcknowledged = True
        self._maybeFinishDrain()

    def stopDraining(self):
        """
        Take tasks again: reconnect if the drain closed the connection.
        """
        self.draining = False
        if self.running and not self._connector.running:
            self.backoff.reset()
            self._startConnecting()

    def isDrained(self):
        """
        Whether the drain is complete: no task left, no connection.
        """
        return self.protocol is None and self._connectionIdle() and self.worker.pending == 0

    def drainAcknowledged(self):
        """
        The orchestrator will send no more tasks.
        """
        self._drainAcknowledged = True
        self._maybeFinishDrain()

    def _maybeFinishDrain(self):
        protocol = self.protocol
        if not self.draining or not self._drainAcknowledged or self.worker.pending or protocol is None:
            return
        if not self._drainClosing:
            self._drainClosing = True
            self._log.info("Drained: closing the connection to {orchestrator}", orchestrator=self.address)
            protocol.sendClose(wsproto.CLOSE_SHUTDOWN, "transcoder draining")

    def _attempt(self, protocolFactory):
        """
        One connection attempt of the L{ClientService}: read the secret, build
        this attempt's WebSocket factory, connect. A failure chooses the
        delay before the next attempt.
        """
        self._waiting = False
        try:
            secretValue = self._secret.read()
        except SecretFileError as e:
            self._log.error("Cannot read the secret: {error}; retrying", error=str(e))
            self._retryAfter(self.backoff.slow())
            return defer.fail(e)
        self.refusal = None
        self._attemptSecretTag = self._secret.tag(secretValue)
        self._attemptFactory.current = self.webSocketFactory(secretValue)
        self._log.info("Registering transcoder to {orchestrator}", orchestrator=self.address)

        def connected(protocol):
            self._opening = True
            return protocol

        def failed(failure):
            # Cancelled: a drain or a stop ended the attempt.
            if not failure.check(defer.CancelledError, ConnectingCancelledError):
                self._log.warn("Could not register transcoder to orchestrator {orchestrator}: {error}",
                               orchestrator=self.address, error=failure.getErrorMessage())
                self._retryAfter(self.backoff.next())
            return failure

        return self.endpoint().connect(protocolFactory).addCallbacks(connected, failed)

    def endpoint(self):
        """
        Where one connection attempt goes: TLS over TCP to the orchestrator,
        trusting it as the current TLS options say.
        """
        return wrapClientTLS(self._tlsOptions, HostnameEndpoint(self._reactor, self.host, self.port, timeout=10))

    def webSocketFactory(self, secretValue):
        """
        The autobahn factory for one connection attempt with C{secretValue}.
        """
        url = f"wss://{self.address}/{wsproto.RESOURCE_PATH.decode()}"
        factory = WebSocketClientFactory(
            url, protocols=[wsproto.SUBPROTOCOL], reactor=self._reactor,
            headers={
                wsproto.AUTH_HEADER: wsproto.AUTH_VALUE,
                wsproto.CREDENTIALS_HEADER: secretValue,
                wsproto.CAPACITY_HEADER: str(self.capacity),
            },
            useragent=f"livepeer-tx-transcoder/{__version__}",
        )
        maxMessageBytes = wsproto.mediaMessageLimit(wsproto.MAX_MEDIA_BYTES)
        factory.setProtocolOptions(
            autoPingInterval=10, autoPingTimeout=10, openHandshakeTimeout=10, closeHandshakeTimeout=5,
            maxMessagePayloadSize=maxMessageBytes, maxFramePayloadSize=maxMessageBytes,
            # Frames of 1 MiB: the orchestrator takes every frame that arrives
            # as a sign of life, so a large result never looks like a missed pong.
            autoFragmentSize=1024 * 1024,
        )
        factory.protocol = TranscoderClientProtocol
        factory.link = self
        return factory

    def _retryAfter(self, delay):
        """
        Make C{delay} the wait before the next attempt (the end of this
        attempt or connection chose it).
        """
        self._nextDelay = delay

    def _retryDelay(self, failedAttempts):
        """
        The L{ClientService}'s retry policy: the delay the last attempt or
        connection chose (L{_retryAfter}), or the next backoff step.
        """
        delay, self._nextDelay = self._nextDelay, None
        if delay is None:
            delay = self.backoff.next()
        self._waiting = True
        self._log.info("Reconnecting to {orchestrator} in {delay:.1f} s", orchestrator=self.address, delay=delay)
        return delay

    def _giveUp(self):
        self._stopConnecting()
        stopWithStatus(self._reactor, 1)

    def connectionOpened(self, protocol):
        """
        The WebSocket opened (the orchestrator accepted our secret).
        """
        self.protocol = protocol
        self._opening = False

    def registered(self, message):
        """
        The orchestrator acknowledged our registration.
        """
        self.isRegistered = True
        features = message.get("features")
        self.orchestratorFeatures = frozenset(
            f for f in features if isinstance(f, str)) if isinstance(features, list) else frozenset()
        self.backoff.reset()
        self._log.info(
            "Successful transcoder registration orchestrator={orchestrator} capacity={capacity}",
            orchestrator=self.address, capacity=message.get("capacity", self.capacity),
        )

    def connectionEnded(self, protocol, code, reason):
        """
        A connection ended: classify why, and choose the delay before the
        next attempt, or stop reconnecting (draining, or a fatal refusal).
        """
        if self.protocol is protocol:
            self.protocol = None
        self._opening = False
        wasRegistered, self.isRegistered = self.isRegistered, False
        self.worker.cancelAll()
        self.worker.endAllSessions()
        reason = self.refusal or reason or ""
        if self._stopping:
            return
        if self.draining:
            self._log.info("Unregistered from {orchestrator} while draining; not reconnecting",
                           orchestrator=self.address)
            # The ClientService learns of this connection's end just after
            # this: stopped now, it does not schedule a retry.
            self._stopConnecting()
            return
        if code == wsproto.CLOSE_SECRET_ROTATED:
            self.backoff.reset()
            delay = self.backoff.next()
            self._log.warn(
                "The orchestrator no longer accepts the secret we registered with; will re-read {path} and "
                "reconnect in {delay:.1f} s", path=self._secret.path or "--orchSecret", delay=delay)
            self._retryAfter(delay)
            return
        if INVALID_SECRET in reason:
            if self._secret.isLiteral:
                self._log.critical(
                    "Terminating transcoder because of {error}: the orchestrator refused our --orchSecret",
                    error=INVALID_SECRET)
                self._giveUp()
                return
            if self._secretChangedSinceAttempt():
                delay = self.backoff.next()
                self._log.warn("The orchestrator refused our secret ({error}), but {path} changed since; retrying "
                               "in {delay:.1f} s", error=INVALID_SECRET, path=self._secret.path, delay=delay)
            else:
                delay = self.backoff.slow()
                self._log.error(
                    "The orchestrator refused our secret ({error}); will re-read {path} and retry in {delay:.0f} s",
                    error=INVALID_SECRET, path=self._secret.path, delay=delay)
            self._retryAfter(delay)
            return
        if ZERO_CAPACITY in reason:
            self._log.critical("Terminating transcoder because of {error}", error=ZERO_CAPACITY)
            self._giveUp()
            return
        if wasRegistered:
            self._log.info("Unregistering transcoder: {reason} (code {code})", reason=reason or "connection lost",
                           code=code)
        else:
            self._log.warn("Could not register transcoder to orchestrator {orchestrator}: {reason}",
                           orchestrator=self.address, reason=reason or "connection lost")
        self._retryAfter(self.backoff.next())

    def _secretChangedSinceAttempt(self):
        tag = secretTag(self._secret)
        return tag is not None and tag != self._attemptSecretTag

    def runTask(self, protocol, taskId, sessionId, seq, segment, profiles):
        """
        Run one task on the worker and answer on C{protocol} if it is still open.
        """
        self._log.info("Transcoding taskId={taskId} sessionID={sessionId} seqNo={seq}",
                       taskId=taskId, sessionId=sessionId, seq=seq)
        if isinstance(segment, StreamedSegment):
            # Streamed: FFmpeg starts now and its bytes go back as it writes them.
            d = self.worker.runStreamed(taskId, sessionId, segment, profiles,
                                        lambda index, data: protocol.sendRenditionData(taskId, index, data))
            sendResult = protocol.sendResultEnd
        else:
            d = self.worker.run(taskId, sessionId, segment, profiles)
            sendResult = protocol.sendResult

        def done(output):
            if self.metrics is not None:
                self.metrics.segmentsTranscoded.inc()
                self.metrics.transcodeSeconds.observe(output.seconds)
                self.metrics.pixelsProcessed.inc(sum(r.pixels for r in output.renditions) / 1e6)
            self._log.info("Transcoding done for taskId={taskId} dur={seconds:.3f}s", taskId=taskId,
                           seconds=output.seconds)
            sendResult(taskId, output)

        def failed(failure):
            if failure.check(defer.CancelledError):
                self._log.info("Transcoding cancelled for taskId={taskId}", taskId=taskId)
                return
            if self.metrics is not None:
                self.metrics.segmentsFailed.inc()
            self._log.error("Unable to transcode taskId={taskId} err={err!r}", taskId=taskId,
                            err=failure.getErrorMessage())
            protocol.sendError(taskId, failure.getErrorMessage())

        d.addCallbacks(done, failed)
        d.addErrback(lambda f: self._log.failure("Could not send the result of taskId={taskId}", f, taskId=taskId))
        d.addBoth(lambda _: protocol.taskEnded(taskId))
        # The last task of a drain: close now.
        d.addCallback(lambda _: self._maybeFinishDrain())
