# -*- test-case-name: tests.test_grpc_h2 -*-
"""
Refusing a request before its body is read, over HTTP/1.1 or HTTP/2.
"""

from twisted.web.http import RESPONSES
from twisted.web._http2 import H2Stream


def refuseRequest(request, code, text, retryAfter=None):
    """
    Answer C{request} with status C{code} and C{text} as a plain-text body,
    without waiting for the rest of its body; callable from C{gotLength} or
    C{handleContentChunk}, before the request is complete.

    Over HTTP/1.1 the answer is written on the connection, which is then
    closed: the unread body cannot be skipped. Over HTTP/2 it is the stream's
    response, written through the request; the connection and its other
    streams go on, and a client still sending the body is told to stop
    (RST_STREAM NO_ERROR, on a L{livepeer_tx.rpc.h2grpc.GRPCH2Connection}).

    The caller must drop the rest of the body and must not process the request
    when it completes: C{requestReceived} can still be called after this.

    @param request: a L{twisted.web.http.Request} whose channel is an
        HTTP/1.1 channel or an HTTP/2 stream.
    @param code: the HTTP status code.
    @param text: the body, as text.
    @param retryAfter: seconds for a C{Retry-After} header, or L{None}.
    """
    body = text.encode("utf-8")
    headers = _refusalHeaders(body, retryAfter)
    channel = request.channel
    if isinstance(channel, H2Stream):
        _refuseHTTP2(request, channel, code, headers, body)
    else:
        channel.transport.write(_http11Response(code, headers, body))
        # The channel's loseConnection, not the transport's: the channel is the
        # transport's producer, and TLS does not close while one is registered.
        channel.loseConnection()


def http11Refusal(code, text, retryAfter=None):
    """
    The bytes of the HTTP/1.1 answer L{refuseRequest} writes: status C{code},
    C{text} as a plain-text body, C{Retry-After} when given, and
    C{Connection: close}. For a channel refusing before it has a request
    (a malformed request line); the caller then closes the connection.

    @param code: the HTTP status code.
    @param text: the body, as text.
    @param retryAfter: seconds for a C{Retry-After} header, or L{None}.
    """
    body = text.encode("utf-8")
    return _http11Response(code, _refusalHeaders(body, retryAfter), body)


def isHTTP2(request):
    """
    Whether C{request} arrived on an HTTP/2 stream (it then has no transport of
    its own: C{request.channel.transport} is L{None}).
    """
    return isinstance(request.channel, H2Stream)


def _refusalHeaders(body, retryAfter):
    headers = [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Content-Length", b"%d" % len(body))]
    if retryAfter is not None:
        headers.append((b"Retry-After", b"%d" % retryAfter))
    return headers


def _http11Response(code, headers, body):
    head = b"HTTP/1.1 %d %s\r\n" % (code, RESPONSES.get(code, b"Error"))
    head += b"".join(b"%s: %s\r\n" % header for header in headers)
    return head + b"Connection: close\r\n\r\n" + body


def _refuseHTTP2(request, stream, code, headers, body):
    def respond():
        if request.finished or request._disconnected:
            return
        request.setResponseCode(code)
        for name, value in headers:
            request.responseHeaders.setRawHeaders(name, [value])
        request.write(body)
        request.finish()

    refuseStream = getattr(stream._conn, "refuseStream", None)
    if refuseStream is not None:
        refuseStream(stream.streamID, respond)
    else:
        # Twisted's own connection: only correct once the stream is set up
        # (not from gotLength, which runs while Twisted builds the stream).
        respond()
