# -*- test-case-name: tests.test_push -*-
"""
A unary gRPC call over HTTP/2 and TLS, on Twisted, with the C{h2} library:
what C{livepeer-tx push} needs to ask an orchestrator C{GetOrchestrator} as
a stock gateway does, trusting the orchestrator the same way as its segment
uploads (a pinned fingerprint, a certificate file, or C{--insecure}).

One call per connection: the client offers C{h2} and C{http/1.1} in ALPN, and
a server that does not pick C{h2} does not serve gRPC (L{GRPCUnavailable}).
The wire format (framing, status trailers) is L{livepeer_tx.rpc.wire}'s.
"""

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from livepeer_tx import __version__
from livepeer_tx.addresses import formatHostPort
from livepeer_tx.rpc.h2grpc import ALPN_PROTOCOLS
from livepeer_tx.rpc.wire import (
    DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
    GRPCError,
    MessageReader,
    StatusCode,
    decodeStatusMessage,
    frameMessage,
    isGRPCContentType,
)

USER_AGENT = f"livepeer-tx/{__version__}".encode("ascii")

# How gRPC clients read an HTTP status that is not 200 (the gRPC spec's
# "HTTP to gRPC status code mapping").
_HTTP_STATUS_CODES = {
    400: StatusCode.INTERNAL,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.UNIMPLEMENTED,
    429: StatusCode.UNAVAILABLE,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.UNAVAILABLE,
}


class GRPCUnavailable(Exception):
    """
    The server does not speak gRPC on this port: it did not choose C{h2}.
    """


@implementer(IOpenSSLClientConnectionCreator)
class ALPNClientCreator:
    """
    Wraps a client TLS creator (or a context factory such as
    C{CertificateOptions}) to offer what our gRPC port offers
    (L{ALPN_PROTOCOLS}: C{h2}, then C{http/1.1}), keeping its trust rules.
    """

    def __init__(self, creator, protocols=ALPN_PROTOCOLS):
        self._creator = creator
        self._protocols = list(protocols)

    def clientConnectionForTLS(self, tlsProtocol):
        """
        The wrapped creator's connection, offering our protocols.
        """
        if IOpenSSLClientConnectionCreator.providedBy(self._creator):
            connection = self._creator.clientConnectionForTLS(tlsProtocol)
        else:
            connection = SSL.Connection(self._creator.getContext(), None)
            connection.set_app_data(tlsProtocol)
        connection.set_alpn_protos(self._protocols)
        return connection


@implementer(IHandshakeListener)
class UnaryCallProtocol(Protocol):
    """
    One unary call on a fresh connection: sends the request once TLS chose
    C{h2}, reads one response message and the status, then closes.

    @ivar result: fires with the response message, or fails with
        L{GRPCError} (the call's status), L{GRPCUnavailable}, or the reason
        the connection was lost. Cancelling it aborts the connection.
    """

    def __init__(self, authority, path, request, responseClass, timeout=None,
                 maxReceiveBytes=DEFAULT_MAX_RECEIVE_MESSAGE_BYTES):
        self._authority = authority
        self._path = path
        self._payload = frameMessage(request.SerializeToString())
        self._responseClass = responseClass
        self._timeout = timeout
        self._reader = MessageReader(maxReceiveBytes)
        self._messages = []
        self._headers = {}
        self._trailers = {}
        self._conn = None
        self._streamId = None
        self.result = Deferred(lambda _: self.transport.abortConnection())

    def handshakeCompleted(self):
        """
        TLS is up: call if the server chose C{h2}.
        """
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        if negotiated != b"h2":
            chosen = negotiated.decode("ascii", "replace") if negotiated else "no protocol"
            self._finish(GRPCUnavailable(f"the server chose {chosen} in ALPN, not h2"))
            return
        self._start()

    def _start(self):
        self._conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self._conn.initiate_connection()
        self._streamId = self._conn.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":path", self._path.encode("ascii")),
            (b":authority", self._authority.encode("idna")),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", USER_AGENT),
        ]
        if self._timeout is not None:
            headers.append((b"grpc-timeout", b"%dm" % max(1, int(self._timeout * 1000))))
        self._conn.send_headers(self._streamId, headers)
        self._sendBody()
        self._flush()

    def _sendBody(self):
        while self._payload:
            size = min(len(self._payload), self._conn.local_flow_control_window(self._streamId),
                       self._conn.max_outbound_frame_size)
            if size <= 0:
                return
            self._conn.send_data(self._streamId, self._payload[:size])
            self._payload = self._payload[size:]
        if self._payload is not None:
            self._conn.end_stream(self._streamId)
            self._payload = None

    def _flush(self):
        data = self._conn.data_to_send()
        if data:
            self.transport.write(data)

    def dataReceived(self, data):
        """
        Feed the server's bytes to the HTTP/2 state machine.
        """
        if self._conn is None or self.result.called:
            return
        try:
            events = self._conn.receive_data(data)
            for event in events:
                self._handle(event)
                if self.result.called:
                    return
            self._flush()
        except h2.exceptions.ProtocolError as e:
            self._finish(GRPCError(StatusCode.INTERNAL, f"HTTP/2 protocol error: {e}"))
        except GRPCError as e:
            self._finish(e)

    def _handle(self, event):
        mine = getattr(event, "stream_id", self._streamId) == self._streamId
        if isinstance(event, h2.events.ResponseReceived) and mine:
            self._headers = dict(event.headers)
            self._checkHeaders()
        elif isinstance(event, h2.events.TrailersReceived) and mine:
            self._trailers = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived) and mine:
            self._conn.acknowledge_received_data(event.flow_controlled_length, self._streamId)
            self._messages.extend(self._reader.feed(event.data))
        elif isinstance(event, h2.events.StreamEnded) and mine:
            self._ended()
        elif isinstance(event, h2.events.StreamReset) and mine:
            self._finish(GRPCError(StatusCode.UNAVAILABLE, f"stream reset by the server (error {event.error_code})"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._finish(GRPCError(StatusCode.UNAVAILABLE, f"connection closed by the server (error {event.error_code})"))
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            if self._payload is not None:
                self._sendBody()

    def _checkHeaders(self):
        # Before any of the body is read as gRPC messages.
        status = self._headers.get(b":status", b"")
        if status != b"200":
            code = _HTTP_STATUS_CODES.get(int(status) if status.isdigit() else 0, StatusCode.UNKNOWN)
            raise GRPCError(code, f"HTTP status {status.decode('ascii', 'replace') or 'missing'}")
        if not isGRPCContentType(self._headers.get(b"content-type")):
            raise GRPCError(StatusCode.UNKNOWN, "the response is not gRPC")

    def _ended(self):
        # Trailers-only responses carry the status in the headers.
        trailers = self._trailers or self._headers
        try:
            code = StatusCode(int(trailers.get(b"grpc-status", b"")))
        except ValueError:
            raise GRPCError(StatusCode.UNKNOWN, "the response has no valid grpc-status") from None
        if code != StatusCode.OK:
            raise GRPCError(code, decodeStatusMessage(trailers.get(b"grpc-message", b"")))
        if len(self._messages) != 1:
            raise GRPCError(StatusCode.INTERNAL, f"a unary call answered {len(self._messages)} messages")
        try:
            response = self._responseClass.FromString(self._messages[0])
        except Exception:
            raise GRPCError(StatusCode.INTERNAL, "the response does not parse") from None
        self._finish(response)

    def _finish(self, outcome):
        if self.result.called:
            return
        self.transport.loseConnection()
        if isinstance(outcome, Exception):
            self.result.errback(outcome)
        else:
            self.result.callback(outcome)

    def connectionLost(self, reason):
        """
        The connection ended before the call did: fail it with the reason.
        """
        if not self.result.called:
            self.result.errback(reason)


async def unaryCall(reactor, host, port, tlsOptions, path, request, responseClass, timeout,
                    connectTimeout=5):
    """
    Make one unary gRPC call to C{host:port} over TLS.

    @param tlsOptions: the client TLS creator (see
        L{livepeer_tx.tls.clientTLSOptions}); ALPN is added to it.
    @param path: C{/package.Service/Method}.
    @param request: the request message.
    @param responseClass: the protobuf class of the response.
    @param timeout: seconds for the whole call (also sent as C{grpc-timeout}).
    @return: the response message.
    @raise GRPCError: the call ended with a status other than OK.
    @raise GRPCUnavailable: the server does not serve gRPC on this port.
    """
    endpoint = wrapClientTLS(
        ALPNClientCreator(tlsOptions), HostnameEndpoint(reactor, host, port, timeout=connectTimeout))
    protocol = UnaryCallProtocol(formatHostPort(host, port), path, request, responseClass, timeout)
    factory = Factory.forProtocol(lambda: protocol)
    factory.noisy = False
    connecting = endpoint.connect(factory)
    # Cancelling the call (its timeout) cancels whichever step it is in.
    call = Deferred(lambda _: connecting.cancel() if not connecting.called else protocol.result.cancel())

    def connected(_):
        protocol.result.chainDeferred(call)

    connecting.addCallbacks(connected, call.errback)
    call.addTimeout(timeout, reactor)
    return await call
