# -*- test-case-name: tests.test_grpc_h2 -*-
"""
gRPC on Twisted's HTTP/2 server, beside the Site on the same port.

L{GRPCH2Connection} extends C{twisted.web._http2.H2Connection}: a stream whose
request C{content-type} starts with C{application/grpc} is served by a
L{GRPCStream}, which writes HEADERS, DATA and the trailers gRPC needs straight
to the C{h2} state machine; every other stream is Twisted's own C{H2Stream}
and reaches the Site's resources unchanged. L{channelFactory} builds the
Site's protocol: HTTP/2 with gRPC when TLS ALPN chose C{h2}, the given HTTP/1.1
channel otherwise.

Twisted's HTTP/2 module is private. What this module overrides or calls there
is listed in L{TWISTED_INTERNALS} and checked by
C{tests/test_grpc_h2.py::test_twistedInternalsPinned}; setup.cfg pins the
Twisted range it was checked against.
"""

import itertools
from collections import deque
from dataclasses import dataclass

import h2.errors
import h2.exceptions
import priority
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IProtocol, IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from twisted.web._http2 import H2Connection
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers

from livepeer_tx.rpc.registry import MethodKind
from livepeer_tx.rpc.wire import (
    DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
    GRPCError,
    MessageReader,
    StatusCode,
    encodeStatusMessage,
    frameMessage,
    isGRPCContentType,
    isProtobufContentType,
    parseTimeout,
)

ALPN_PROTOCOLS = (b"h2", b"http/1.1")
"""
What a port serving gRPC and HTTP/1.1 offers in TLS ALPN, in preference order.
"""

TWISTED_INTERNALS = {
    "H2Connection methods overridden": (
        "__init__(self, reactor=None)",
        "connectionMade(self)",
        "dataReceived(self, data)",
        "connectionLost(self, reason, _cancelTimeouts=True)",
        "resumeProducing(self)",
        "_requestReceived(self, event)",
        "_requestDataReceived(self, event)",
        "_requestEnded(self, event)",
        "_requestAborted(self, event)",
        "_requestDone(self, streamID)",
        "timeoutConnection(self)",
    ),
    "H2Connection methods called": (
        "openStreamWindow(self, streamID, increment)",
        "_streamIsActive(self, streamID)",
        "_tryToWriteControlData(self)",
        "_terminate(self, reason: twisted.python.failure.Failure) -> None",
    ),
    "H2Connection attributes": (
        "conn", "streams", "priority", "_outboundStreamQueues",
        "_streamCleanupCallbacks", "_consumerBlocked", "_bufferedControlFrames",
        "_reactor", "_resetTokens", "_resetTokenTimestamp", "_resetTokenBurst", "_resetTokenRate",
    ),
    "H2Stream methods a GRPCStream stands in for": (
        "receiveDataChunk(self, data, flowControlledLength)",
        "requestComplete(self)",
        "connectionLost(self, reason)",
        "windowUpdated(self)",
        "flowControlBlocked(self)",
    ),
    "H2Stream attributes": ("streamID", "_conn"),
    "Request attributes (livepeer_tx.rpc.refusal)": ("_disconnected",),
}
"""
The private parts of C{twisted.web._http2} this module relies on.
"""

_RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))


@dataclass(frozen=True)
class GRPCSettings:
    """
    Limits and timers of the gRPC side of a connection.

    @ivar maxReceiveMessageBytes: the largest request message accepted (grpc-go's
        default); a larger one ends the call with RESOURCE_EXHAUSTED.
    @ivar maxQueuedBytes: how much a server-streaming handler may queue ahead
        of a client that does not read; past it, C{send} raises
        RESOURCE_EXHAUSTED.
    @ivar pingInterval: seconds without anything received, while a gRPC call
        is open, before a keepalive PING; L{None} for no PINGs.
    @ivar pingTimeout: seconds a PING may go unanswered (nothing at all
        received) before the connection is closed.
    @ivar messageTimeout: seconds from a call's headers by which its request
        message must have arrived whole, or L{None} for no limit; a call
        still waiting for it then ends with DEADLINE_EXCEEDED (a stalled
        upload holds neither its stream nor, with it, its connection).
    @ivar reserveMessage: L{None}, or a function called with the peer's
        address and a request message's declared length once the message is
        kept across reads; it returns an object whose C{release()} gives the
        bytes back when the message is complete or the call ends, or raises
        with a reason, and the call ends with RESOURCE_EXHAUSTED and that
        reason (an upload memory budget).
    """

    maxReceiveMessageBytes: int = DEFAULT_MAX_RECEIVE_MESSAGE_BYTES
    maxQueuedBytes: int = 16 * 1024 * 1024
    pingInterval: float = 30.0
    pingTimeout: float = 20.0
    messageTimeout: float | None = None
    reserveMessage: object = None


class ServerCall:
    """
    A gRPC call as its handler sees it.

    @ivar method: the full method path, e.g. C{/net.Orchestrator/GetOrchestrator}.
    @ivar metadata: the request headers other than pseudo-headers, as
        L{Headers}.
    @ivar peer: the client's address.
    @ivar deadline: when the client gives up, in the clock's seconds, or
        L{None}.
    @ivar cancelled: whether the call was cancelled (client reset, connection
        lost, or deadline passed).
    @ivar cancelCode: CANCELLED or DEADLINE_EXCEEDED once cancelled.
    """

    def __init__(self, stream, method, metadata, peer, deadline, streaming):
        self._stream = stream
        self._streaming = streaming
        self._cancelWaiters = []
        self.method = method
        self.metadata = metadata
        self.peer = peer
        self.deadline = deadline
        self.cancelled = False
        self.cancelCode = None

    def send(self, message):
        """
        Send one message of a server-streaming call.

        @return: a Deferred that fires with C{True} once the message is written
            to the connection, or with C{False} if the call ended before it
            could be. Waiting on it keeps a handler within the client's flow
            control window.
        @raise GRPCError: RESOURCE_EXHAUSTED when too much is queued already.
        """
        if not self._streaming:
            raise TypeError(f"{self.method} is unary: return the response instead of sending it")
        return self._stream.sendMessage(message.SerializeToString())

    def whenCancelled(self):
        """
        A Deferred that fires with the L{StatusCode} (CANCELLED or
        DEADLINE_EXCEEDED) if the call is cancelled; it never fires for a call
        that ends normally.
        """
        if self.cancelled:
            return succeed(self.cancelCode)
        waiter = Deferred()
        self._cancelWaiters.append(waiter)
        return waiter

    def _cancel(self, code):
        if self.cancelled:
            return
        self.cancelled = True
        self.cancelCode = code
        waiters, self._cancelWaiters = self._cancelWaiters, []
        for waiter in waiters:
            waiter.callback(code)


class GRPCStream:
    """
    One gRPC call on one HTTP/2 stream: it decodes the request message, runs
    the method's handler and writes the response HEADERS, DATA and trailers
    within the peer's flow-control windows.

    The connection keeps it among Twisted's streams and calls it through the
    methods Twisted's C{H2Stream} has (L{receiveDataChunk}, L{requestComplete},
    L{connectionLost}, L{windowUpdated}, L{flowControlBlocked}).
    """

    _log = Logger()

    def __init__(self, streamID, connection, headers, registry, settings, clock):
        self.streamID = streamID
        self._connection = connection
        self._headers = headers
        self._registry = registry
        self._settings = settings
        self._clock = clock
        self._reader = MessageReader(settings.maxReceiveMessageBytes)
        self._messageReservation = None
        self._messageDeadlineCall = None
        self._path = ""
        self._method = None
        self._call = None
        self._running = None
        self._requestSeen = False
        self._deadlineCall = None
        self._outbound = deque()
        self._outboundOffset = 0
        self._queuedBytes = 0
        self._enqueuedTotal = 0
        self._writtenTotal = 0
        self._sendWaiters = deque()
        self._headersSent = False
        self._trailers = None
        self._finished = False
        self._closed = False
        self._flushing = False

    def start(self):
        """
        Check the request headers and find the method; the call ends at once
        with an error status if they will not do.
        """
        pseudo = {}
        metadata = Headers()
        for name, value in self._headers:
            if name.startswith(b":"):
                pseudo[name] = value
            else:
                metadata.addRawHeader(name, value)
        self._headers = None
        self._path = pseudo.get(b":path", b"").decode("utf-8", "replace")
        httpMethod = pseudo.get(b":method", b"")
        if httpMethod != b"POST":
            self._end(StatusCode.INTERNAL, f"grpc: the HTTP method must be POST, not {httpMethod.decode('ascii', 'replace')}")
            return
        contentType = metadata.getRawHeaders(b"content-type", [b""])[0]
        if not isProtobufContentType(contentType):
            self._end(StatusCode.INTERNAL, f"grpc: unsupported content-type {contentType.decode('ascii', 'replace')}")
            return
        encoding = metadata.getRawHeaders(b"grpc-encoding", [b"identity"])[0]
        if encoding != b"identity":
            self._end(
                StatusCode.UNIMPLEMENTED,
                f'grpc: Decompressor is not installed for grpc-encoding "{encoding.decode("ascii", "replace")}"',
            )
            return
        deadline = None
        timeout = metadata.getRawHeaders(b"grpc-timeout")
        if timeout:
            try:
                seconds = parseTimeout(timeout[0])
            except ValueError as e:
                self._end(StatusCode.INTERNAL, str(e))
                return
            deadline = self._clock.seconds() + seconds
            self._deadlineCall = self._clock.callLater(seconds, self._deadlineExpired)
        try:
            self._method = self._registry.lookup(self._path)
        except GRPCError as e:
            self._end(e.code, e.message)
            return
        streaming = self._method.kind is MethodKind.SERVER_STREAMING
        self._call = ServerCall(self, self._path, metadata, self._connection.getPeer(), deadline, streaming)
        if self._settings.messageTimeout is not None:
            self._messageDeadlineCall = self._clock.callLater(self._settings.messageTimeout, self._messageLate)

    # What the connection calls, as it would on Twisted's H2Stream.

    def receiveDataChunk(self, data, flowControlledLength):
        """
        Take request DATA: acknowledge it at once (what is kept is bounded by
        the message size limit) and decode the messages it completes.
        """
        self._connection.openStreamWindow(self.streamID, flowControlledLength)
        if self._finished:
            return
        try:
            messages = self._reader.feed(data)
        except GRPCError as e:
            self._end(e.code, e.message)
            return
        if not self._reserveMessage():
            return
        for message in messages:
            if self._finished:
                return
            self._messageReceived(message)
        if self._finished:
            return
        if not self._reader.inMessage and self._messageReservation is not None:
            self._messageReservation.release()
            self._messageReservation = None

    def _reserveMessage(self):
        """
        Reserve a message kept across reads (see
        L{GRPCSettings.reserveMessage}); end the call if it does not fit.

        @return: whether the call goes on.
        """
        length = self._reader.declaredLength
        reserve = self._settings.reserveMessage
        if reserve is None or self._messageReservation is not None or not length:
            return True
        try:
            self._messageReservation = reserve(self._connection.getPeer(), length)
        except Exception as e:
            self._end(StatusCode.RESOURCE_EXHAUSTED, f"grpc: {e}")
            return False
        return True

    def requestComplete(self):
        """
        The client ended its side of the stream.
        """
        if self._finished:
            return
        if self._reader.inMessage:
            self._end(StatusCode.INTERNAL, "grpc: the request ended inside a message")
        elif not self._requestSeen:
            self._end(StatusCode.INTERNAL, "grpc: the request ended without a message")

    def connectionLost(self, reason):
        """
        The client reset the stream or the connection is gone: write nothing
        more and cancel the handler.
        """
        self._closed = True
        self._finished = True
        self._cancelDeadline()
        self._dropRequest()
        self._outbound.clear()
        self._queuedBytes = 0
        self._releaseSendWaiters(False)
        self._cancelHandler(StatusCode.CANCELLED)

    def windowUpdated(self):
        """
        Nothing to do here: the connection flushes every gRPC stream after
        each read, which covers window updates and settings changes.
        """

    def flowControlBlocked(self):
        """
        Nothing to pause: L{flush} writes only what the window allows.
        """

    # The call.

    def _messageReceived(self, message):
        if self._messageDeadlineCall is not None:
            self._messageDeadlineCall.cancel()
            self._messageDeadlineCall = None
        if self._requestSeen:
            self._end(StatusCode.INTERNAL, "grpc: more than one request message for a unary or server-streaming method")
            return
        self._requestSeen = True
        try:
            request = self._method.requestClass.FromString(message)
        except Exception as e:
            self._end(StatusCode.INTERNAL, f"grpc: error unmarshalling request: {e}")
            return
        running = maybeDeferred(self._method.handler, request, self._call)
        if not running.called:
            self._running = running
        running.addCallbacks(self._handlerReturned, self._handlerFailed)

    def _handlerReturned(self, result):
        self._running = None
        if self._finished:
            return
        if self._method.kind is MethodKind.UNARY:
            try:
                payload = result.SerializeToString()
            except Exception:
                self._log.failure("gRPC method {method} returned {result!r}, not a message", method=self._path, result=result)
                self._end(StatusCode.INTERNAL, "grpc: error while marshaling the response")
                return
            self._enqueue(frameMessage(payload))
        self._end(StatusCode.OK, "")

    def _handlerFailed(self, failure):
        self._running = None
        if self._finished:
            return None
        if failure.check(GRPCError):
            self._end(failure.value.code, failure.value.message)
        else:
            self._log.failure("gRPC method {method} failed", failure, method=self._path)
            self._end(StatusCode.INTERNAL, "internal server error")
        return None

    def _deadlineExpired(self):
        self._deadlineCall = None
        self._end(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded", handlerCode=StatusCode.DEADLINE_EXCEEDED)

    def _cancelHandler(self, code):
        """
        Cancel the handler if it is still running, its call cancelled with
        C{code} (CANCELLED or DEADLINE_EXCEEDED) first. Only once the call is
        finished: the handler's failure then ends nothing more.
        """
        running, self._running = self._running, None
        if running is not None:
            self._call._cancel(code)
            running.cancel()

    def _messageLate(self):
        self._messageDeadlineCall = None
        self._end(StatusCode.DEADLINE_EXCEEDED,
                  f"grpc: the request message did not arrive within {self._settings.messageTimeout:g} seconds")

    def _dropRequest(self):
        """
        Forget the request message being received: its deadline, its
        reserved bytes and what arrived of it.
        """
        if self._messageDeadlineCall is not None:
            self._messageDeadlineCall.cancel()
            self._messageDeadlineCall = None
        if self._messageReservation is not None:
            self._messageReservation.release()
            self._messageReservation = None
        self._reader = None

    def _cancelDeadline(self):
        if self._deadlineCall is not None:
            self._deadlineCall.cancel()
            self._deadlineCall = None

    # Output.

    def sendMessage(self, payload):
        """
        Queue one serialized message of a server-streaming call.

        @see: L{ServerCall.send}
        """
        if self._finished:
            return succeed(False)
        if self._queuedBytes > self._settings.maxQueuedBytes:
            raise GRPCError(StatusCode.RESOURCE_EXHAUSTED, "grpc: the client is not reading the stream")
        waiter = Deferred()
        self._enqueue(frameMessage(payload), waiter)
        self.flush()
        return waiter

    def _enqueue(self, data, waiter=None):
        self._outbound.append(data)
        self._queuedBytes += len(data)
        self._enqueuedTotal += len(data)
        if waiter is not None:
            self._sendWaiters.append((self._enqueuedTotal, waiter))

    def _end(self, code, message, handlerCode=StatusCode.CANCELLED):
        """
        Decide the call's status: the trailers follow whatever is queued. A
        handler still running (the call ends for a protocol error, say a
        second request message, or its deadline passed) is cancelled with
        C{handlerCode}: nothing it sends would arrive.
        """
        if self._finished:
            return
        self._finished = True
        self._cancelDeadline()
        self._dropRequest()
        self._cancelHandler(handlerCode)
        trailers = [(b"grpc-status", b"%d" % code)]
        if message:
            trailers.append((b"grpc-message", encodeStatusMessage(message)))
        self._trailers = trailers
        self.flush()

    def flush(self):
        """
        Write what the connection and the peer's windows allow: the response
        headers, queued DATA, then the trailers once everything is out.
        """
        if self._flushing:
            return
        self._flushing = True
        try:
            while True:
                self._writeAllowed()
                written = []
                while self._sendWaiters and self._sendWaiters[0][0] <= self._writtenTotal:
                    written.append(self._sendWaiters.popleft()[1])
                if not written:
                    break
                for waiter in written:
                    waiter.callback(True)
        finally:
            self._flushing = False

    def _writeAllowed(self):
        connection = self._connection
        if self._closed or not connection.writable():
            return
        state = connection.conn
        if self.streamID not in state.streams:
            # h2 closed and forgot the stream in frames that Twisted has not
            # handed on yet (a request reset in the same read): its
            # StreamReset event cancels the call.
            self._closed = True
            return
        try:
            if self._outbound and not self._headersSent:
                state.send_headers(self.streamID, _RESPONSE_HEADERS)
                self._headersSent = True
                connection.writeFrames()
            while self._outbound:
                window = state.local_flow_control_window(self.streamID)
                if window <= 0 or not connection.writable():
                    return
                chunk = self._outbound[0]
                size = min(len(chunk) - self._outboundOffset, window, state.max_outbound_frame_size)
                state.send_data(self.streamID, chunk[self._outboundOffset:self._outboundOffset + size])
                self._outboundOffset += size
                if self._outboundOffset == len(chunk):
                    self._outbound.popleft()
                    self._outboundOffset = 0
                self._queuedBytes -= size
                self._writtenTotal += size
                connection.writeFrames()
            if self._trailers is None or not connection.writable():
                return
            headers = self._trailers if self._headersSent else list(_RESPONSE_HEADERS) + self._trailers
            state.send_headers(self.streamID, headers, end_stream=True)
            self._closed = True
            connection.writeFrames()
            connection.streamEnded(self.streamID)
        except h2.exceptions.StreamClosedError:
            # The client reset the stream in the frames being processed; its
            # StreamReset event cancels the call.
            self._closed = True

    def _releaseSendWaiters(self, written):
        waiters, self._sendWaiters = self._sendWaiters, deque()
        for _, waiter in waiters:
            if not waiter.called:
                waiter.callback(written)


class GRPCH2Connection(H2Connection):
    """
    Twisted's HTTP/2 server connection, with streams whose content type starts
    with C{application/grpc} served by L{GRPCStream}s from a registry, and
    keepalive PINGs while gRPC calls are open.

    Every other stream is Twisted's C{H2Stream}, served by the Site. Beyond
    Twisted, a stream answered before its request body ends is reset with
    NO_ERROR so the client stops sending, and frames for streams already
    answered are acknowledged and dropped instead of raising.

    @ivar registry: the L{livepeer_tx.rpc.registry.ServiceRegistry} served.
    @ivar settings: the L{GRPCSettings}.
    """

    _log = Logger()

    def __init__(self, registry, reactor=None, settings=None):
        if reactor is None:
            from twisted.internet import reactor
        super().__init__(reactor)
        self.registry = registry
        self.settings = settings or GRPCSettings()
        self._clock = reactor
        self._grpcStreams = {}
        self._pendingRefusals = {}
        self._arrivingStreamID = None
        self._lost = False
        self._lastReceived = reactor.seconds()
        self._keepalive = None
        self._pingTimeoutCall = None
        self._pingCounter = itertools.count(1)

    def connectionMade(self):
        """
        Start the HTTP/2 connection and the keepalive timer.
        """
        super().connectionMade()
        if self.settings.pingInterval:
            self._keepalive = LoopingCall(self._keepaliveTick)
            self._keepalive.clock = self._clock
            self._keepalive.start(self.settings.pingInterval, now=False)

    def dataReceived(self, data):
        """
        Note that the peer is alive, process the frames, then write what the
        gRPC streams can now send (windows may have opened).
        """
        self._lastReceived = self._clock.seconds()
        if self._pingTimeoutCall is not None:
            self._pingTimeoutCall.cancel()
            self._pingTimeoutCall = None
        super().dataReceived(data)
        self._flushGRPCStreams()

    def connectionLost(self, reason, _cancelTimeouts=True):
        """
        Stop the keepalive timers and cancel every open call.
        """
        self._lost = True
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        if self._pingTimeoutCall is not None:
            self._pingTimeoutCall.cancel()
            self._pingTimeoutCall = None
        super().connectionLost(reason, _cancelTimeouts)

    def resumeProducing(self):
        """
        The transport drained: write what Twisted buffered, then the gRPC streams.
        """
        super().resumeProducing()
        self._flushGRPCStreams()

    def _closedAlready(self, streamID):
        """
        Whether h2 has closed the stream already: the client reset it in
        frames that h2 has read and Twisted has not handed on yet (its
        StreamReset event follows). Nothing may be written to it any more.
        """
        state = self.conn.streams.get(streamID)
        return state is None or state.closed

    def _requestReceived(self, event):
        if self._closedAlready(event.stream_id):
            return
        headers = event.headers
        contentType = next((value for name, value in headers if name == b"content-type"), None)
        if not isGRPCContentType(contentType):
            self._arrivingStreamID = event.stream_id
            try:
                super()._requestReceived(event)
            finally:
                self._arrivingStreamID = None
            refusal = self._pendingRefusals.pop(event.stream_id, None)
            if refusal is not None:
                refusal()
            return
        streamID = event.stream_id
        stream = GRPCStream(streamID, self, headers, self.registry, self.settings, self._clock)
        self.streams[streamID] = stream
        self._grpcStreams[streamID] = stream
        self._streamCleanupCallbacks[streamID] = Deferred()
        self._outboundStreamQueues[streamID] = deque()
        try:
            self.priority.insert_stream(streamID)
        except priority.DuplicateStreamError:
            pass
        else:
            self.priority.block(streamID)
        stream.start()

    def _requestDataReceived(self, event):
        if event.stream_id not in self.streams or self._closedAlready(event.stream_id):
            self.openStreamWindow(event.stream_id, event.flow_controlled_length)
            return
        super()._requestDataReceived(event)

    def _requestEnded(self, event):
        if event.stream_id not in self.streams or self._closedAlready(event.stream_id):
            return
        super()._requestEnded(event)

    def _requestAborted(self, event):
        if event.stream_id in self.streams:
            super()._requestAborted(event)
            return
        # Reset before it was handed on (HEADERS and RST_STREAM read
        # together, as HTTP/2 Rapid Reset sends them, CVE-2023-44487): no
        # request was made, but Twisted's reset budget must count it.
        self._spendResetToken()

    def _spendResetToken(self):
        """
        Spend one of Twisted's peer-reset tokens (a burst, refilled at a
        rate), as C{H2Connection._requestAborted} does for the streams it
        knows; with none left, end the connection with GOAWAY
        ENHANCE_YOUR_CALM.
        """
        now = self._reactor.seconds()
        refilled = self._resetTokens + max(0.0, now - self._resetTokenTimestamp) * self._resetTokenRate
        self._resetTokens = min(self._resetTokenBurst, refilled)
        self._resetTokenTimestamp = now
        if self._resetTokens < 1:
            self.conn.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            self._terminate(Failure(ConnectionLost("Too many stream resets")))
        else:
            self._resetTokens -= 1

    def _requestDone(self, streamID):
        super()._requestDone(streamID)
        self._grpcStreams.pop(streamID, None)
        if self._lost:
            return
        state = self.conn.streams.get(streamID)
        if state is not None and state.open:
            # The response is complete while the request is not: ask the
            # client to stop sending (RFC 9113, section 8.1).
            try:
                self.conn.reset_stream(streamID, h2.errors.ErrorCodes.NO_ERROR)
            except h2.exceptions.StreamClosedError:
                return
            self._tryToWriteControlData()

    # For GRPCStream.

    def writable(self):
        """
        Whether frames may be written now: the transport is not pushing back
        and Twisted has no control frames waiting.
        """
        return not self._lost and self._consumerBlocked is None and not self._bufferedControlFrames

    def writeFrames(self):
        """
        Write what the C{h2} state machine has ready; the connection is busy,
        not idle.
        """
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)
            self.resetTimeout()

    def streamEnded(self, streamID):
        """
        A gRPC stream wrote its trailers: forget it as Twisted forgets its own.
        """
        self._requestDone(streamID)

    def _flushGRPCStreams(self):
        if self._lost:
            return
        for stream in list(self._grpcStreams.values()):
            stream.flush()

    # For refuseRequest.

    def refuseStream(self, streamID, respond):
        """
        Run C{respond} (which answers the request of stream C{streamID}) as soon
        as the stream can be answered: now, or right after Twisted has set the
        stream up if it is still doing so (a request refused from C{gotLength}).
        """
        if streamID == self._arrivingStreamID:
            self._pendingRefusals[streamID] = respond
        elif self._streamIsActive(streamID):
            respond()

    # Keepalive.

    def _keepaliveTick(self):
        try:
            if self._lost or self._pingTimeoutCall is not None or not self._grpcStreams:
                return
            if self._clock.seconds() - self._lastReceived < self.settings.pingInterval:
                return
            self.conn.ping(next(self._pingCounter).to_bytes(8, "big"))
            self._tryToWriteControlData()
            self._pingTimeoutCall = self._clock.callLater(self.settings.pingTimeout, self._pingTimedOut)
        except Exception:
            self._log.failure("Keepalive PING failed")

    def _pingTimedOut(self):
        self._pingTimeoutCall = None
        if self._lost:
            return
        self._log.info(
            "No answer to a keepalive PING from {peer} in {timeout} s: closing the connection",
            peer=self.transport.getPeer(),
            timeout=self.settings.pingTimeout,
        )
        self.conn.close_connection()
        self._tryToWriteControlData()
        self.transport.abortConnection()


def _forwarded(name):
    def get(self):
        return getattr(self._channel, name)

    def set(self, value):
        setattr(self._channel, name, value)

    return property(get, set, doc=f"The serving channel's C{{{name}}}.")


class HTTPChannelSelector(proxyForInterface(IProtocol, "_channel")):
    """
    Serves one connection with an HTTP/1.1 channel or, when TLS ALPN chose
    C{h2}, with a L{GRPCH2Connection}: what Twisted's own selector does, with
    the HTTP/1.1 channel and the HTTP/2 connection given.

    The choice is made on the first bytes received, after the TLS handshake;
    on a switch the HTTP/1.1 channel, which has served nothing, gets
    C{connectionLost} so its timers stop. The attributes a Site sets on the
    protocol it builds go to the channel serving the connection.
    """

    factory = _forwarded("factory")
    site = _forwarded("site")
    requestFactory = _forwarded("requestFactory")
    timeOut = _forwarded("timeOut")
    callLater = _forwarded("callLater")

    def __init__(self, http11Channel, makeHTTP2Connection):
        """
        @param http11Channel: the HTTP/1.1 channel, not yet connected.
        @param makeHTTP2Connection: called with the reactor of the Site to
            build the HTTP/2 connection.
        """
        self._channel = http11Channel
        self._makeHTTP2Connection = makeHTTP2Connection
        self._selected = False

    def dataReceived(self, data):
        """
        Pick the channel on the first bytes, then hand them on.
        """
        if not self._selected:
            self._selected = True
            transport = self._channel.transport
            if getattr(transport, "negotiatedProtocol", None) == b"h2":
                self._switchToHTTP2(transport)
        return self._channel.dataReceived(data)

    def _switchToHTTP2(self, transport):
        http11 = self._channel
        http2 = self._makeHTTP2Connection(getattr(http11.factory, "reactor", None))
        for name in ("factory", "site", "requestFactory", "timeOut", "callLater"):
            setattr(http2, name, getattr(http11, name))
        producing = IPushProducer.providedBy(transport)
        if producing:
            # The HTTP/1.1 channel registered itself as the transport's producer.
            transport.unregisterProducer()
        # It served no request; ending it stops its timers (and a subclass's).
        http11.connectionLost(Failure(ConnectionDone("the connection switched to HTTP/2")))
        self._channel = http2
        http2.makeConnection(transport)
        if producing:
            transport.registerProducer(http2, True)


def channelFactory(registry, http11Channel=HTTPChannel, settings=None, http2Connection=GRPCH2Connection):
    """
    A protocol factory for a Site that serves gRPC over HTTP/2 beside its
    resources: assign the result to the Site's C{protocol} attribute (and offer
    L{ALPN_PROTOCOLS} from its C{acceptableProtocols}).

    @param registry: the L{livepeer_tx.rpc.registry.ServiceRegistry} to serve.
    @param http11Channel: builds the channel for HTTP/1.1 connections (an
        C{HTTPChannel} subclass, or a callable returning one).
    @param settings: L{GRPCSettings}, or L{None} for the defaults.
    @param http2Connection: the HTTP/2 connection class: L{GRPCH2Connection}
        or a subclass, called as C{http2Connection(registry, reactor=...,
        settings=...)}.
    @return: a callable taking no arguments that returns a new protocol.
    """

    def makeHTTP2Connection(reactor):
        return http2Connection(registry, reactor=reactor, settings=settings)

    def buildChannel():
        return HTTPChannelSelector(http11Channel(), makeHTTP2Connection)

    return buildChannel
