# -*- test-case-name: tests.test_http_hardening,tests.test_public_port -*-
"""
HTTP pieces shared by the orchestrator and the transcoder: a Site whose
connections always end (deadlines that request processing cannot turn off, an
abort when a close does not complete), which refuses oversized or unaffordable
request bodies before reading them, over HTTP/1.1 and, with a gRPC registry,
over HTTP/2 beside gRPC; a cap on concurrent connections; JSON resources; and
the C{/metrics} resource.

The limits themselves are plain classes in L{livepeer_tx.limits}; this module
applies them to connections.
"""

import json
import threading
from functools import partial
from io import BytesIO

import h2.errors
import h2.settings
from Crypto.Hash import keccak
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.exposition import make_wsgi_app
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocolNegotiationFactory, IReactorCore, IReactorFromThreads
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import http, resource, server
from twisted.web.iweb import IBodyProducer
from twisted.web.wsgi import WSGIResource
from zope.interface import implementer

from livepeer_tx.addresses import describeAddress
from livepeer_tx.limits import (
    CLOSE_TOO_SLOW, HEADERS_TOO_SLOW, REQUEST_TOO_LONG, TOTAL_CAP, UPLOAD_TOO_SLOW, ConnectionDeadlines,
    HTTPLimits, LogThrottle, UploadRefused,
)
from livepeer_tx.metrics import addScrapedGauge
from livepeer_tx.rpc import (
    ALPN_PROTOCOLS, GRPCH2Connection, GRPCSettings, channelFactory, http11Refusal, isHTTP2, refuseRequest,
)

MALFORMED_REQUEST_LINE = "malformed request line"
MALFORMED_HEADER = "malformed header line"
BAD_BODY_LENGTH = "bad Content-Length or Transfer-Encoding"
HEADERS_TOO_LARGE = "request headers too large"
LINE_TOO_LONG = "request line or header line too long"
MALFORMED_BODY = "malformed chunked body"
BODY_TOO_LARGE = "request body too large"
UPLOAD_MEMORY_FULL = "upload memory budget exhausted"
RETRY_AFTER_SECONDS = 5

#: Body bytes handed to a hashing thread at once: large enough that the
#: hand-off costs little next to the hash, small enough to overlap the upload.
HASH_BATCH_BYTES = 256 * 1024

#: Threads hashing request bodies (pycryptodome's keccak runs without the
#: GIL, so they use the cores the reactor thread does not).
HASH_THREADS = 2


def noteRefusal(log, metrics, peer, code, reason):
    """
    Log the one line about a request refused with C{code} for C{reason} and
    count it in C{metrics} (an L{HTTPEdgeMetrics}, or L{None}).
    """
    log.info("Refused a request from {peer}: {code} {reason}", peer=peer, code=code, reason=reason)
    if metrics is not None:
        metrics.requestsRefused.labels(reason=reason).inc()


def hostOf(address):
    """
    The default source of a connection for per-address limits: its host.
    """
    return getattr(address, "host", None) or str(address)


class HTTPEdgeMetrics:
    """
    Metrics of a public HTTP port: refused connections and requests, open
    connections and upload bytes held.

    @param registry: the registry to add them to (default: a new one).
    @param connections: a L{ConnectionLimiter} to report open connections of.
    @param budget: an L{UploadBudget} to report bytes held of.
    """

    def __init__(self, registry=None, connections=None, budget=None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connectionsRefused = Counter(
            "livepeer_http_connections_refused", "Connections closed at once because a cap was reached, by cap",
            ["cap"], registry=r)
        self.requestsRefused = Counter(
            "livepeer_http_requests_refused", "Requests refused or timed out before dispatch, by reason",
            ["reason"], registry=r)
        if connections is not None:
            addScrapedGauge(r, "livepeer_http_connections_open", "Open connections on the public port",
                            lambda: connections.open)
        if budget is not None:
            addScrapedGauge(r, "livepeer_http_upload_bytes_held", "Bytes of request bodies reserved in memory",
                            lambda: budget.held)


class HardenedHTTPChannel(http.HTTPChannel):
    """
    An HTTP/1.1 channel that can always die.

    - A malformed request line, header line, Content-Length or chunked body
      gets a 400; the channel then reads nothing more (no request is
      dispatched after a refusal) and logs one line, never a traceback.
    - The request line and headers must arrive within C{headerTimeout} of the
      request's first byte, and a body must keep C{minUploadRate}; otherwise
      408. Twisted's idle timeout (C{idleTimeout}) still covers a connection
      between requests.
    - A dispatched request still running after C{maxRequestSeconds} has its
      connection aborted.
    - Whenever the connection is being closed, reading resumes (and what is
      read is dropped) so the peer's close can be seen, and the connection is
      aborted if the close has not completed within a grace period. A TLS
      connection closed while reading was paused otherwise waits forever for
      a close_notify it cannot read.
    - Data after a C{Connection: close} request is dropped instead of
      buffered, so reading is never paused for it.

    Its limits are the site's C{limits} (an L{HTTPLimits}); the clock is the
    site's reactor.
    """

    _log = Logger()
    # The close deadline below replaces Twisted's abort after an idle timeout.
    abortTimeout = None
    _lowerProtocol = None

    def __init__(self):
        super().__init__()
        self.closing = False
        self._limits = HTTPLimits()
        self._deadlines = None
        self._idle = True
        self._badRequestReason = MALFORMED_REQUEST_LINE

    def _peer(self):
        return describeAddress(self.transport.getPeer()) if self.transport is not None else "?"

    def connectionMade(self):
        """
        Start the idle timeout, with this site's limits and clock.
        """
        self._limits = self.site.limits
        self._deadlines = ConnectionDeadlines(self.site.reactor, self._limits, self._deadlinePassed)
        self._lowerProtocol = _protocolOf(self.transport)
        super().connectionMade()

    def connectionLost(self, reason):
        """
        Stop every deadline; the requests learn that the connection is gone.
        """
        if self._deadlines is not None:
            self._deadlines.stop()
        super().connectionLost(reason)

    def dataReceived(self, data):
        """
        Drop input once closing; start the header deadline at a request's first byte.
        """
        if self.closing:
            return
        if self._idle and not self._handlingRequest and data:
            self._idle = False
            self._deadlines.requestStarted()
        super().dataReceived(data)

    def lineReceived(self, line):
        """
        A request line or header line.
        """
        if self.closing:
            return
        # Twisted holds the parsed request line (_command, _path) from then
        # until the request is dispatched.
        self._badRequestReason = HEADERS_TOO_LARGE if hasattr(self, "_command") else MALFORMED_REQUEST_LINE
        return super().lineReceived(line)

    def lineLengthExceeded(self, line):
        """
        A request line or header line is longer than C{MAX_LENGTH}.
        """
        self.refuse(400, LINE_TOO_LONG)

    def headerReceived(self, line):
        """
        Check and store one header.
        """
        if self.closing:
            return False
        self._badRequestReason = MALFORMED_HEADER
        return super().headerReceived(line)

    def _maybeChooseTransferDecoder(self, header, data):
        self._badRequestReason = BAD_BODY_LENGTH
        ok = super()._maybeChooseTransferDecoder(header, data)
        self._badRequestReason = HEADERS_TOO_LARGE
        return ok

    def allHeadersReceived(self):
        """
        Stop the header deadline; start the body-rate check if a body follows.
        """
        if self.closing:
            return
        self._deadlines.headersReceived()
        super().allHeadersReceived()
        if not self.closing and self.length != 0:
            self._deadlines.bodyStarted()

    def rawDataReceived(self, data):
        """
        Body bytes (counted for the rate check), or data pipelined behind a
        request being processed.
        """
        if self.closing:
            return
        if self._handlingRequest:
            if not self.persistent:
                return
            super().rawDataReceived(data)
            return
        self._badRequestReason = MALFORMED_BODY
        self._deadlines.bodyReceived(len(data))
        super().rawDataReceived(data)

    def allContentReceived(self):
        """
        Dispatch the request, under the run-time backstop.
        """
        if self.closing:
            return
        self._deadlines.bodyFinished()
        self._deadlines.dispatched()
        super().allContentReceived()
        if self.transport is None:
            self._handedOver()

    def _handedOver(self):
        # A WebSocket resource took the transport: the connection is no longer ours.
        self._deadlines.stop()
        protocolReplaced = getattr(self._lowerProtocol, "protocolReplaced", None)
        if protocolReplaced is not None:
            protocolReplaced()
        for request in self.requests:
            releaseUpload = getattr(request, "releaseUpload", None)
            if releaseUpload is not None:
                releaseUpload()

    def requestDone(self, request):
        """
        The response is complete: keep the connection for the next request,
        or close it.
        """
        self._deadlines.requestFinished()
        if self.closing:
            if request in self.requests:
                self.requests.remove(request)
            return
        if self.persistent:
            self._idle = True
        super().requestDone(request)

    def _send100Continue(self):
        if not self.closing:
            super()._send100Continue()

    def _respondToBadRequestAndDisconnect(self):
        self.refuse(400, self._badRequestReason)

    def refuse(self, code, reason, message=None, retryAfter=None):
        """
        Answer C{code} with a short text, log one line, read nothing more and
        close the connection (aborting it after C{refusalGrace}).

        Only for a request whose response has not started.

        @param reason: a short fixed text (a metric label and the log line).
        @param message: the text for the client (default: C{reason}).
        @param retryAfter: seconds for a C{Retry-After} header, or L{None}.
        """
        if self.closing or self.transport is None:
            return
        self.transport.write(http11Refusal(code, (message or reason) + "\n", retryAfter))
        noteRefusal(self._log, self.site.metrics, self._peer(), code, reason)
        self._close(self._limits.refusalGrace)

    def loseConnection(self):
        """
        Close after the response, aborting if the close does not complete
        within C{closeGrace}.
        """
        self._close(self._limits.closeGrace)

    def timeoutConnection(self):
        """
        The idle timeout passed: close.
        """
        self._log.debug("Closing idle connection from {peer}", peer=self._peer())
        self._close(self._limits.refusalGrace)

    def _close(self, grace):
        if self.transport is None:
            return
        self._deadlines.closing(grace)
        if self.closing:
            return
        self.closing = True
        self.setTimeout(None)
        self._dataBuffer = []
        # Read (and drop) from now on, so the peer's close or close_notify is seen.
        if not self.transport.disconnecting:
            self._networkProducer.resumeProducing()
        super().loseConnection()

    def _deadlinePassed(self, kind):
        if kind == HEADERS_TOO_SLOW:
            self.refuse(408, kind, f"request line and headers not received within {self._limits.headerTimeout:g} s")
        elif kind == UPLOAD_TOO_SLOW:
            self.refuse(408, kind, f"request body slower than {self._limits.minUploadRate:g} bytes/s")
        elif kind == REQUEST_TOO_LONG:
            self._log.info("Aborting the connection from {peer}: a request still running after {seconds:g} s",
                           peer=self._peer(), seconds=self._limits.maxRequestSeconds)
            self._abort()
        elif kind == CLOSE_TOO_SLOW:
            self._log.debug("Aborting the connection from {peer}: its close did not complete", peer=self._peer())
            self._abort()

    def _abort(self):
        self.closing = True
        if self.transport is not None:
            self.transport.abortConnection()


def _daemonThread(*args, **kwargs):
    thread = threading.Thread(*args, **kwargs)
    thread.daemon = True
    return thread


class _HashThreadPool(ThreadPool):
    """
    A thread pool whose threads never keep the interpreter alive (the site
    stops it at the reactor's shutdown; a process that never runs its
    reactor, as a test, must still exit).
    """

    threadFactory = staticmethod(_daemonThread)


def _hashPieces(hasher, pieces):
    for piece in pieces:
        hasher.update(piece)


class BodyKeccak:
    """
    The keccak-256 of a request body fed in the pieces it arrives in.

    With C{run} (a function that runs C{f(*args)} on another thread and
    returns a L{Deferred} of its result), pieces are kept as they are (no
    copy) until at least C{batchBytes} wait, then hashed on another thread,
    one batch after the other; pycryptodome's keccak releases the GIL, so
    the reactor thread goes on meanwhile. Without C{run} each piece is hashed
    at once.
    """

    def __init__(self, run=None, batchBytes=HASH_BATCH_BYTES):
        # pycryptodome's own object: eth_hash's wrapper keeps every part
        # it is given (for copy()), which would hold the body twice.
        self._hasher = keccak.new(digest_bits=256)
        self._run = run
        self._batchBytes = batchBytes
        self._pieces = []
        self._waiting = 0
        self._last = None

    def update(self, data):
        """
        Add the body's next piece.
        """
        if self._run is None:
            self._hasher.update(data)
            return
        self._pieces.append(data)
        self._waiting += len(data)
        if self._waiting >= self._batchBytes:
            self._dispatch()

    def _dispatch(self):
        pieces, self._pieces, self._waiting = self._pieces, [], 0
        run = partial(self._run, _hashPieces, self._hasher, pieces)
        self._last = run() if self._last is None else self._last.addCallback(lambda _: run())

    def digestLater(self):
        """
        The digest of everything given to L{update}, once it is all hashed;
        call once, after the last piece.

        @return: a L{Deferred} firing with the 32-byte digest.
        """
        if self._pieces:
            self._dispatch()
        if self._last is None:
            return succeed(self._hasher.digest())
        return self._last.addCallback(lambda _: self._hasher.digest())


class BoundedRequest(server.Request):
    """
    A request whose body is bounded before it is read, over HTTP/1.1 or
    HTTP/2: larger than the site's limit for its path (L{BoundedSite.maxBodyBytesFor})
    gets 413, and on a site with an C{uploadBudget} the declared length is
    reserved first (a body of unknown length as it arrives); a body that does
    not fit gets 503 with C{Retry-After}. The reservation is given back when
    the request finishes or its connection (or stream) is lost.

    A refused request is never processed: over HTTP/1.1 its connection reads
    nothing more and closes; over HTTP/2 only its stream ends (the client is
    told to stop sending), and the connection's other streams go on.

    Over HTTP/2, where the connection's deadlines cannot see one stream's
    body, the request keeps its own: a body slower than the site's
    C{minUploadRate} gets 408, and a request still running after
    C{maxRequestSeconds} has its stream reset.

    Bodies are kept in memory (the budget bounds them); reading the whole body
    from C{content} returns it without a copy. On a site with C{hashBodies},
    the body's keccak-256 is computed as it arrives, off the reactor thread
    where the site's reactor runs threads, so checking a segment's hash costs
    the reactor nothing once it is in.

    A C{POST} to a path of the site's C{bodyStreams} is handed over at its
    body's first bytes: the path's function gets the request (its headers
    are all in) and may return a sink (C{write(data)}, C{abort()}) that
    takes every byte of the body from then on, instead of C{content}; the
    sink is aborted if the request is refused or its connection (or stream)
    is lost. The resource finds it as C{bodySink} once the body is in.

    @ivar bodyKeccak: the body's L{BodyKeccak}, or L{None}.
    @ivar bodySink: the sink the body went to, or L{None}.
    @ivar refused: whether the request was refused before its body was read.
    """

    _log = Logger()
    bodyKeccak = None
    bodySink = None
    refused = False
    _bodyStarted = False
    _upload = None
    _received = 0
    _limit = None
    _lengthSeen = False
    _streamDeadlines = None

    def _site(self):
        return self.channel.site

    def _requestLine(self):
        # The method and path, known before the request is received.
        if isHTTP2(self):
            return self.channel.command, self.channel.path
        # Twisted's HTTP/1.1 channel holds the parsed request line until dispatch.
        return getattr(self.channel, "_command", None), getattr(self.channel, "_path", None)

    def _bodyLimit(self):
        return self._site().maxBodyBytesFor(self._requestLine()[1])

    def gotLength(self, length):
        """
        Refuse a declared length over the limit or the budget before the body
        arrives. Over HTTP/2 this runs while the request's headers are still
        being added (all the pseudo-headers, the path among them, come first).
        """
        if self.refused:
            return
        if self._lengthSeen or (length is not None and length < 0):
            # HTTP/2 calls this once per content-length header.
            self.refuse(400, BAD_BODY_LENGTH)
            return
        self._lengthSeen = True
        site = self._site()
        self._limit = limit = self._bodyLimit()
        if limit is not None and length is not None and length > limit:
            self.refuse(413, BODY_TOO_LARGE, f"request body of {length} bytes is larger than {limit} bytes")
            return
        budget = site.uploadBudget
        if budget is not None and length != 0:
            try:
                self._upload = budget.reserve(site.sourceOf(self.getClientAddress()), length or 0)
            except UploadRefused as e:
                self.refuse(503, UPLOAD_MEMORY_FULL, e.message, retryAfter=RETRY_AFTER_SECONDS)
                return
            self.notifyFinish().addBoth(lambda _: self.releaseUpload())
        if isHTTP2(self):
            self._startStreamDeadlines(site, length)
        if site.hashBodies:
            self.bodyKeccak = site.bodyHasher()
        self.content = BytesIO()

    def handleContentChunk(self, data):
        """
        Count a body's bytes against the limit (a body of unknown length
        against the budget too) as they arrive, hash them and keep them.
        """
        if self.refused:
            return
        channel = getattr(self, "channel", None)
        if channel is None or getattr(channel, "closing", False):
            return
        self._received += len(data)
        limit = self._limit
        if limit is not None and self._received > limit:
            self.refuse(413, BODY_TOO_LARGE, f"request body larger than {limit} bytes")
            return
        upload = self._upload
        if upload is not None and self._received > upload.size:
            try:
                upload.grow(self._received - upload.size)
            except UploadRefused as e:
                self.refuse(503, UPLOAD_MEMORY_FULL, e.message, retryAfter=RETRY_AFTER_SECONDS)
                return
        if self._streamDeadlines is not None:
            self._streamDeadlines.bodyReceived(len(data))
        if self.bodyKeccak is not None:
            self.bodyKeccak.update(data)
        if not self._bodyStarted:
            self._bodyStarted = True
            self.bodySink = self._site().bodySinkFor(self, *self._requestLine())
        if self.bodySink is not None:
            self.bodySink.write(data)
        else:
            self.content.write(data)

    def requestReceived(self, command, path, version):
        """
        Unless the request was refused: trim the body buffer to its size (no
        copy: reading it whole then returns the buffer itself), then process
        the request.
        """
        if self.refused:
            return
        if self._streamDeadlines is not None:
            self._streamDeadlines.headersReceived()
            self._streamDeadlines.bodyFinished()
            self._streamDeadlines.dispatched()
        if isinstance(self.content, BytesIO):
            self.content.getvalue()
        super().requestReceived(command, path, version)

    def refuse(self, code, reason, message=None, retryAfter=None):
        """
        Answer C{code} with a short text before the body is read, log one line
        and count it; the request is never processed. Only for a request whose
        response has not started.

        @param reason: a short fixed text (a metric label and the log line).
        @param message: the text for the client (default: C{reason}).
        @param retryAfter: seconds for a C{Retry-After} header, or L{None}.
        """
        if self.refused:
            return
        self.refused = True
        self.releaseUpload()
        self._abortSink()
        if self._streamDeadlines is not None:
            self._streamDeadlines.stop()
        channel = self.channel
        if isinstance(channel, HardenedHTTPChannel):
            # It logs, counts, and reads nothing more from the connection.
            channel.refuse(code, reason, message, retryAfter)
            return
        metrics = channel.site.metrics
        # The answer may finish the request (and let go of its channel) at once.
        refuseRequest(self, code, (message or reason) + "\n", retryAfter)
        noteRefusal(self._log, metrics, describeAddress(self.getClientAddress()), code, reason)

    def connectionLost(self, reason):
        """
        The connection (or stream) is gone: a body sink is aborted.
        """
        self._abortSink()
        super().connectionLost(reason)

    def _abortSink(self):
        if self.bodySink is not None:
            self.bodySink.abort()

    def _startStreamDeadlines(self, site, length):
        self._streamDeadlines = ConnectionDeadlines(site.reactor, site.limits, self._streamDeadlinePassed)
        if length != 0:
            self._streamDeadlines.bodyStarted()
        else:
            # No body declared: the stream must still end (END_STREAM) in time.
            self._streamDeadlines.requestStarted()
        self.notifyFinish().addBoth(lambda _: self._streamDeadlines.stop())

    def _streamDeadlinePassed(self, kind):
        limits = self._site().limits
        if kind == UPLOAD_TOO_SLOW:
            self.refuse(408, kind, f"request body slower than {limits.minUploadRate:g} bytes/s")
        elif kind == HEADERS_TOO_SLOW:
            self.refuse(408, kind, f"request declaring no body not ended within {limits.headerTimeout:g} s")
        elif kind == REQUEST_TOO_LONG:
            self._log.info("Resetting a stream from {peer}: a request still running after {seconds:g} s",
                           peer=describeAddress(self.getClientAddress()), seconds=limits.maxRequestSeconds)
            stream = self.channel
            stream.abortConnection()
            stream.connectionLost(Failure(ConnectionLost(f"request running for over {limits.maxRequestSeconds:g} s")))

    def releaseUpload(self):
        """
        Give the body's reservation back and drop the body; safe to call twice.
        """
        if self._upload is not None:
            self._upload.release()
        if self.content is not None:
            self.content.close()


class FrameSizeGuard:
    """
    Follows the frame boundaries of the bytes an HTTP/2 client sends (the
    connection preface, then 9-byte frame headers and their payloads), to
    find a frame announced larger than allowed as soon as its header
    arrives.
    """

    PREFACE_BYTES = len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    HEADER_BYTES = 9

    def __init__(self):
        self._skip = self.PREFACE_BYTES
        self._header = b""

    def feed(self, data, maxFrameBytes):
        """
        Take the next bytes received.

        @return: whether every frame header so far announces at most
            C{maxFrameBytes}.
        """
        position, end = 0, len(data)
        while position < end:
            if self._skip:
                taken = min(self._skip, end - position)
                self._skip -= taken
                position += taken
                continue
            wanted = self.HEADER_BYTES - len(self._header)
            self._header += data[position:position + wanted]
            position += wanted
            if len(self._header) < self.HEADER_BYTES:
                break
            length = int.from_bytes(self._header[:3], "big")
            self._header = b""
            if length > maxFrameBytes:
                return False
            self._skip = length
        return True


class HardenedH2Connection(GRPCH2Connection):
    """
    The public port's HTTP/2 connection: gRPC calls and Site requests on one
    connection (L{GRPCH2Connection}), with limits of its own beside those of
    each request (L{BoundedRequest}).

    - The idle timeout (the site's C{timeOut}, C{--idleTimeout}) runs only
      while no stream is open, and no frame restarts it: a connection that
      keeps no request open, whatever PING, SETTINGS or WINDOW_UPDATE frames
      it sends, gets GOAWAY and is closed once it has run out. While a stream
      is open, that stream's own deadlines apply, and keepalive PINGs find a
      dead peer under a long gRPC call.
    - A frame announcing more than the SETTINGS_MAX_FRAME_SIZE we sent gets
      GOAWAY FRAME_SIZE_ERROR as soon as its header arrives (h2 would keep
      up to 16 MiB of it before checking).
    - Whenever the connection is being closed (GOAWAY sent or received, or
      the idle timeout), TLS may close at once, and the connection is aborted
      if the peer has not closed it within the site's C{refusalGrace} (or
      C{closeGrace} after the idle timeout).
    - At most L{MAX_CONCURRENT_STREAMS} streams at once (h2's setting, pinned
      by a test); a client opening more breaks its connection. Request
      headers are bounded by h2 (a 64 KiB header list, a limit on
      CONTINUATION frames).
    - Flow control as go-livepeer's Go server sets it: 1 MiB per stream
      (L{STREAM_WINDOW_BYTES}; with HTTP/2's 64 KiB a segment upload would
      wait for a window update every 32 KiB), more per connection. DATA
      frames may be up to L{MAX_FRAME_BYTES}: each frame costs h2 and Twisted
      a fixed amount of work, and an incomplete one is held in memory, so
      this is a trade between CPU per segment and memory per connection.
    """

    MAX_CONCURRENT_STREAMS = 100
    STREAM_WINDOW_BYTES = 1 << 20
    CONNECTION_WINDOW_BYTES = 1 << 24
    MAX_FRAME_BYTES = 1 << 16
    _idleTimeOut = None
    _abortCall = None
    _frameSizes = None

    def _limits(self):
        return self.site.limits

    def connectionMade(self):
        """
        Start the connection, with go-livepeer's flow-control windows; the
        idle timeout's abort comes after C{closeGrace}.
        """
        self.abortTimeout = self._limits().closeGrace
        super().connectionMade()
        self.conn.update_settings({
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.STREAM_WINDOW_BYTES,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: self.MAX_FRAME_BYTES,
        })
        # h2 takes larger frames only once the peer's SETTINGS ACK has been
        # processed, and checks every frame of one read against the size in
        # force when the read began: an ACK followed, in the same read, by a
        # frame of the size it allows (as Go's client sends them) would be a
        # connection error. Our own guard (dataReceived) enforces the size.
        self.conn.max_inbound_frame_size = self.MAX_FRAME_BYTES
        self.conn.increment_flow_control_window(self.CONNECTION_WINDOW_BYTES - self.conn.inbound_flow_control_window)
        self._tryToWriteControlData()

    def resetTimeout(self):
        """
        Frames do not restart the idle timeout: only the end of the last open
        stream does.
        """

    def dataReceived(self, data):
        """
        Refuse a frame announced larger than allowed before any of it is
        kept; process the rest.
        """
        if self._frameSizes is None:
            self._frameSizes = FrameSizeGuard()
        if self._lost or self._frameSizes.feed(data, self.MAX_FRAME_BYTES):
            super().dataReceived(data)
            return
        self._log.info("Closing the HTTP/2 connection from {peer}: a frame over {limit} bytes",
                       peer=describeAddress(self.transport.getPeer()), limit=self.MAX_FRAME_BYTES)
        self.conn.close_connection(error_code=h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
        self._tryToWriteControlData()
        self.transport.loseConnection()
        self.connectionLost(Failure(ConnectionLost("frame too large")), _cancelTimeouts=False)

    def connectionLost(self, reason, _cancelTimeouts=True):
        """
        Twisted calls this with C{_cancelTimeouts=False} when it ends the
        connection itself: let TLS close now (it waits while a producer is
        registered) and abort if the peer does not close in time. The real
        end of the connection stops that abort.
        """
        if _cancelTimeouts:
            if self._abortCall is not None and self._abortCall.active():
                self._abortCall.cancel()
        elif self._abortCall is None and self.transport is not None:
            self._letTransportClose(self._limits().refusalGrace)
        super().connectionLost(reason, _cancelTimeouts)

    def timeoutConnection(self):
        """
        The idle timeout passed: GOAWAY and close (Twisted aborts after
        C{abortTimeout}).
        """
        super().timeoutConnection()
        self._letTransportClose(None)

    def _letTransportClose(self, abortAfter):
        try:
            self.transport.unregisterProducer()
        except RuntimeError:
            pass  # none was registered
        if abortAfter is not None:
            self._abortCall = self._clock.callLater(abortAfter, self._abortTransport)

    def _abortTransport(self):
        self._log.debug("Aborting the HTTP/2 connection from {peer}: its close did not complete",
                        peer=describeAddress(self.transport.getPeer()))
        self.transport.abortConnection()

    def _requestReceived(self, event):
        super()._requestReceived(event)
        if self.streams and self.timeOut is not None:
            # Busy: the streams' own deadlines apply until the last one ends.
            self._idleTimeOut = self.setTimeout(None)

    def _requestDone(self, streamID):
        super()._requestDone(streamID)
        if not self.streams and not self._lost and self._idleTimeOut is not None:
            self.setTimeout(self._idleTimeOut)
            self._idleTimeOut = None


class BoundedSite(server.Site):
    """
    A Site of L{HardenedHTTPChannel}s whose requests cannot carry bodies over
    the limit for their path (L{maxBodyBytesFor}), with no access log lines
    (segment URLs would flood the log).

    Given a gRPC registry, it also serves HTTP/2: TLS ALPN offers C{h2} then
    C{http/1.1}; on an HTTP/2 connection (a L{HardenedH2Connection}) requests
    whose content type starts with C{application/grpc} go to the registry and
    every other request reaches the same resources as over HTTP/1.1, bounded
    the same way (L{BoundedRequest}).

    @param limits: the connections' L{HTTPLimits} (its C{idleTimeout} is the
        site's timeout).
    @param uploadBudget: an L{UploadBudget} for request bodies, or L{None}.
    @param metrics: an L{HTTPEdgeMetrics} counting refusals, or L{None}.
    @param sourceOf: maps a peer address to the source that the upload budget
        counts per address (default: L{hostOf}).
    @param bodyLimits: paths (C{b"/transcodeResults"}) whose bodies may be
        larger or must be smaller than C{maxBodyBytes}, to their limit.
    @param bodyStreams: paths (C{b"/segment"}) whose C{POST} bodies are
        handed over as they arrive, to a function of the request that returns
        the body's sink or L{None} (see L{BoundedRequest}).
    @param grpcRegistry: a L{livepeer_tx.rpc.ServiceRegistry} to serve over
        HTTP/2, or L{None} for HTTP/1.1 only.
    @param grpcSettings: the L{livepeer_tx.rpc.GRPCSettings} of its calls;
        by default a call's request message must arrive within the limits'
        C{headerTimeout} and, while it arrives, holds its declared length of
        the C{uploadBudget}.
    @ivar hashBodies: compute each request body's keccak-256 as it arrives
        (see L{bodyHasher}).
    """

    _hashRun = None

    requestFactory = BoundedRequest

    def __init__(self, root, maxBodyBytes, hashBodies=False, alpnProtocols=None, limits=None,
                 uploadBudget=None, metrics=None, sourceOf=hostOf, bodyLimits=None, grpcRegistry=None,
                 grpcSettings=None, bodyStreams=None, **kwargs):
        self.limits = limits or HTTPLimits()
        super().__init__(root, timeout=self.limits.idleTimeout, **kwargs)
        self.maxBodyBytes = maxBodyBytes
        self.bodyLimits = dict(bodyLimits or {})
        self.bodyStreams = dict(bodyStreams or {})
        self.hashBodies = hashBodies
        if alpnProtocols is None:
            alpnProtocols = ALPN_PROTOCOLS if grpcRegistry is not None else (b"http/1.1",)
        self.alpnProtocols = list(alpnProtocols)
        self.uploadBudget = uploadBudget
        self.metrics = metrics
        self.sourceOf = sourceOf
        if grpcRegistry is not None:
            if grpcSettings is None:
                grpcSettings = GRPCSettings(messageTimeout=self.limits.headerTimeout,
                                            reserveMessage=self._reserveMessage if uploadBudget is not None else None)
            self.protocol = channelFactory(grpcRegistry, http11Channel=HardenedHTTPChannel, settings=grpcSettings,
                                           http2Connection=HardenedH2Connection)

    def _reserveMessage(self, peer, size):
        """
        Reserve a gRPC request message's C{size} bytes from C{peer} in the
        upload budget (its text on refusal: the call ends with it).
        """
        try:
            return self.uploadBudget.reserve(self.sourceOf(peer), size)
        except UploadRefused:
            if self.metrics is not None:
                self.metrics.requestsRefused.labels(reason=UPLOAD_MEMORY_FULL).inc()
            raise

    def bodyHasher(self):
        """
        A new L{BodyKeccak} for a request body: hashed on this site's
        L{HASH_THREADS} hashing threads (started on first use, stopped at
        the reactor's shutdown) where its reactor runs threads, else on the
        reactor thread.
        """
        if self._hashRun is None:
            reactor = self.reactor
            if IReactorFromThreads.providedBy(reactor) and IReactorCore.providedBy(reactor):
                pool = _HashThreadPool(0, HASH_THREADS, name="keccak")
                pool.start()
                reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
                self._hashRun = partial(deferToThreadPool, reactor, pool)
            else:
                self._hashRun = False
        return BodyKeccak(self._hashRun or None)

    def bodySinkFor(self, request, method, path):
        """
        The sink of a request body whose first bytes just arrived: what the
        function of its path in C{bodyStreams} returns for a C{POST}, else
        L{None} (the body goes to C{content}).
        """
        if method != b"POST" or path is None or not self.bodyStreams:
            return None
        startBody = self.bodyStreams.get(path.split(b"?", 1)[0])
        return startBody(request) if startBody is not None else None

    def maxBodyBytesFor(self, path):
        """
        The largest body a request for C{path} (bytes, with or without a
        query; L{None} when unknown) may carry.
        """
        if path is not None and self.bodyLimits:
            return self.bodyLimits.get(path.split(b"?", 1)[0], self.maxBodyBytes)
        return self.maxBodyBytes

    def protocol(self):
        """
        A new connection's protocol without a gRPC registry: a
        L{HardenedHTTPChannel} behind Twisted's wrapper (which would switch to
        HTTP/2 if ALPN negotiated it; it offers only C{http/1.1} then).
        """
        return http._GenericHTTPChannelProtocol(HardenedHTTPChannel())

    def acceptableProtocols(self):
        """
        The protocols offered in TLS ALPN: C{h2} then C{http/1.1} with a gRPC
        registry (the WebSocket upgrade and curl without C{--http2} take
        C{http/1.1}), else C{http/1.1} only.
        """
        return self.alpnProtocols

    def log(self, request):
        """
        Write no access log.
        """


def _protocolOf(transport):
    """
    The protocol a transport delivers to: where a resource taking the
    transport over (autobahn's WebSocket resource) puts its own protocol.
    """
    if isinstance(transport, policies.ProtocolWrapper):
        return transport.wrappedProtocol
    return getattr(transport, "protocol", None)


class _CountedConnection(Protocol):
    """
    Stands in front of one connection's protocol, counted by a
    L{ConnectionCapFactory}, and gives its place back when the connection is
    lost. It hands the transport below (TLS) straight to the protocol, so
    the protocol sees its real transport (autobahn needs the TLS one).

    @ivar wrappedProtocol: the protocol receiving the connection's events.
    @ivar sourceKey: the source address the connection was counted for.
    """

    def __init__(self, factory, wrappedProtocol, sourceKey):
        self.factory = factory
        self.wrappedProtocol = wrappedProtocol
        self.sourceKey = sourceKey
        self._counted = True

    def logPrefix(self):
        """
        The wrapped protocol's log prefix.
        """
        logPrefix = getattr(self.wrappedProtocol, "logPrefix", None)
        return logPrefix() if logPrefix is not None else self.wrappedProtocol.__class__.__name__

    def connectionMade(self):
        """
        Connect the wrapped protocol to the transport itself.
        """
        self.wrappedProtocol.makeConnection(self.transport)

    def dataReceived(self, data):
        """
        Pass received bytes on.
        """
        self.wrappedProtocol.dataReceived(data)

    def connectionLost(self, reason):
        """
        Give the place back, then tell the wrapped protocol.
        """
        self._release()
        self.wrappedProtocol.connectionLost(reason)

    def protocolReplaced(self):
        """
        A resource took the transport over and put its own protocol where
        this one was (autobahn's WebSocket resource does): stand in front of
        that protocol, so the connection stays counted until it closes.
        """
        replacement = _protocolOf(self.transport)
        if replacement is None or replacement is self:
            self._release()
            return
        self.wrappedProtocol = replacement
        if isinstance(self.transport, policies.ProtocolWrapper):
            self.transport.wrappedProtocol = self
        else:
            self.transport.protocol = self

    def _release(self):
        if self._counted:
            self._counted = False
            self.factory.limiter.release(self.sourceKey)


class _RefusedConnection(Protocol):
    """
    A connection over a cap: aborted as soon as it is made.
    """

    def connectionMade(self):
        self.transport.abortConnection()


@implementer(IProtocolNegotiationFactory)
class ConnectionCapFactory(policies.WrappingFactory):
    """
    Caps a factory's concurrent connections in total and per source address:
    a connection over a cap is aborted at once, counted in C{metrics}, and
    logged at most once per C{logInterval} seconds.

    Wrap the site, not the TLS factory: the TLS endpoint builds one protocol
    from this factory for every TCP connection, so every connection is seen,
    and an over-cap one is aborted before its TLS handshake. A connection
    that a WebSocket takes over stays counted until it closes.

    @param wrappedFactory: the factory to cap (a site).
    @param limiter: a L{ConnectionLimiter}.
    @param clock: an L{IReactorTime} for the log throttle.
    @param metrics: an L{HTTPEdgeMetrics}, or L{None}.
    @param sourceOf: maps a peer address to the source counted per address
        (default: L{hostOf}).
    """

    _log = Logger()

    def __init__(self, wrappedFactory, limiter, clock, metrics=None, logInterval=10.0, sourceOf=hostOf):
        super().__init__(wrappedFactory)
        self.limiter = limiter
        self.metrics = metrics
        self.sourceOf = sourceOf
        self._throttle = LogThrottle(clock, logInterval)

    def acceptableProtocols(self):
        """
        The wrapped factory's ALPN protocols.
        """
        negotiation = IProtocolNegotiationFactory(self.wrappedFactory, None)
        return negotiation.acceptableProtocols() if negotiation is not None else []

    def buildProtocol(self, addr):
        """
        Count the connection, or refuse it if a cap is reached.
        """
        key = self.sourceOf(addr)
        cap = self.limiter.acquire(key)
        if cap is not None:
            if self.metrics is not None:
                self.metrics.connectionsRefused.labels(cap=cap).inc()
            count = self._throttle.event()
            if count is not None:
                self._log.warn(
                    "Refused {count} connection(s) over --{cap} ({limit}) since the last such line; "
                    "the latest from {address}",
                    count=count, cap=cap, address=key,
                    limit=self.limiter.maxConnections if cap == TOTAL_CAP else self.limiter.maxPerAddress)
            return _RefusedConnection()
        try:
            return _CountedConnection(self, self.wrappedFactory.buildProtocol(addr), key)
        except BaseException:
            self.limiter.release(key)
            raise


@implementer(IBodyProducer)
class BytesProducer:
    """
    A client request body already in memory, handed to the transport in one
    write (no cooperator, no copy).
    """

    def __init__(self, data):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer):
        """
        Write the whole body.
        """
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self):
        """
        Nothing to pause: the body was written at once.
        """

    def resumeProducing(self):
        """
        Nothing to resume.
        """

    def stopProducing(self):
        """
        Nothing to stop.
        """


class JSONResource(resource.Resource):
    """
    Serves the JSON document returned by a callable on GET.
    """

    isLeaf = True

    def __init__(self, produce):
        super().__init__()
        self._produce = produce

    def render_GET(self, request):
        """
        Return the current document.
        """
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self._produce(), indent=2, sort_keys=True).encode("utf-8") + b"\n"


class CombinedRegistry:
    """
    Collects from this node's own registry and from prometheus_client's
    default one (process metrics and the chain code's module-level metrics).
    """

    def __init__(self, *registries):
        self._registries = registries

    def collect(self):
        """
        Every metric family of every registry.
        """
        for registry in self._registries:
            yield from registry.collect()

    def restricted_registry(self, names):
        """
        The collector that C{/metrics?name[]=...} reads (prometheus_client's
        name): each registry's own restriction to the samples called one of
        C{names}.
        """
        return CombinedRegistry(*(registry.restricted_registry(names) for registry in self._registries))


def makeCLIRoot(reactor, status, registry=None):
    """
    The CLI (admin) port's root: C{/status} and, with a registry, C{/metrics}
    (prometheus_client's WSGI application, on C{reactor}'s thread pool).
    """
    root = resource.Resource()
    root.putChild(b"status", JSONResource(status))
    if registry is not None:
        combined = CombinedRegistry(registry, REGISTRY)
        root.putChild(b"metrics", WSGIResource(reactor, reactor.getThreadPool(), make_wsgi_app(combined)))
    return root
