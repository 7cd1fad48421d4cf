# -*- test-case-name: tests.test_grpc_h2 -*-
"""
Refusing a request before its body is read, over HTTP/1.1 or HTTP/2.
"""

from twisted.web.http import RESPONSES
from twisted.web._http2 import H2Stream


def refuseRequest(request, code, text):
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
    """
    body = text.encode("utf-8")
    channel = request.channel
    if isinstance(channel, H2Stream):
        _refuseHTTP2(request, channel, code, body)
    else:
        _refuseHTTP11(channel, code, body)


def _refuseHTTP11(channel, code, body):
    reason = RESPONSES.get(code, b"Error")
    channel.transport.write(
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (code, reason, len(body), body)
    )
    # The channel's loseConnection, not the transport's: the channel is the
    # transport's producer, and TLS does not close while one is registered.
    channel.loseConnection()


def _refuseHTTP2(request, stream, code, body):
    def respond():
        if request.finished or request._disconnected:
            return
        request.setResponseCode(code)
        request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
        request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
        request.write(body)
        request.finish()

    refuseStream = getattr(stream._conn, "refuseStream", None)
    if refuseStream is not None:
        refuseStream(stream.streamID, respond)
    else:
        # Twisted's own connection: only correct once the stream is set up
        # (not from gotLength, which runs while Twisted builds the stream).
        respond()
