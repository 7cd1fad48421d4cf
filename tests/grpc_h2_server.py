# -*- test-case-name: tests.test_grpc_h2_tls -*-
"""
A TLS port serving gRPC and plain HTTP side by side, for
tests/test_grpc_h2_tls.py; run as C{python grpc_h2_server.py DATADIR}.

It offers C{h2} and C{http/1.1} in ALPN with the self-signed certificate of
L{livepeer_tx.tls.ServerCertificate} in DATADIR, and prints
C{listening PORT} once the port is open. Methods, under C{/test.Lab/}:

  - C{Transcode} (unary, SegData to TranscodeResult): echoes C{seq}, and the
    size of C{hash} as C{error}; C{manifestId} C{refuse} answers UNKNOWN
    C{invalid secret}; C{big} answers a result of C{seq} bytes.
  - C{Watch} (server streaming): C{seq} results, then OK; C{manifestId}
    C{wait} then waits until the call is cancelled.

Resources: C{/hello} (GET says which HTTP version, POST counts the body;
bodies over 1 MiB are refused with 413), and C{/cancelled?count=N}, which
answers once N calls have been cancelled, with their status codes.
"""

import json
import sys

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import react
from twisted.web import resource, server

from livepeer_tx.proto import lp_rpc_pb2 as pb
from livepeer_tx.rpc import GRPCError, ServiceRegistry, StatusCode, refuseRequest
from tlsgrpcserver import QuietSite, serveAndAnnounce

BODY_LIMIT = 1024 * 1024


class Lab:
    """
    The test methods, and the cancellations they saw.
    """

    def __init__(self):
        self.cancelled = []
        self._waiters = []

    def transcode(self, request, call):
        if request.manifestId == b"refuse":
            raise GRPCError(StatusCode.UNKNOWN, "invalid secret")
        if request.manifestId == b"big":
            return pb.TranscodeResult(seq=request.seq, error="b" * request.seq)
        return pb.TranscodeResult(seq=request.seq, error=str(len(request.hash)))

    @inlineCallbacks
    def watch(self, request, call):
        call.whenCancelled().addCallback(self._cancelled)
        for index in range(request.seq):
            yield call.send(pb.TranscodeResult(seq=index))
        if request.manifestId == b"wait":
            yield Deferred()

    def _cancelled(self, code):
        self.cancelled.append(int(code))
        waiters, self._waiters = self._waiters, []
        for count, waiter in waiters:
            self.whenCancelled(count).chainDeferred(waiter)

    def whenCancelled(self, count):
        """
        A Deferred firing with the codes once C{count} calls were cancelled.
        """
        if len(self.cancelled) >= count:
            return succeed(list(self.cancelled))
        waiter = Deferred()
        self._waiters.append((count, waiter))
        return waiter


class Hello(resource.Resource):
    """
    GET says which HTTP version served it; POST counts the body.
    """

    isLeaf = True

    def render_GET(self, request):
        return b"hello over " + request.clientproto

    def render_POST(self, request):
        return b"got %d bytes" % len(request.content.read())


class Cancelled(resource.Resource):
    """
    Answers once C{count} calls have been cancelled.
    """

    isLeaf = True

    def __init__(self, lab):
        super().__init__()
        self._lab = lab

    def render_GET(self, request):
        count = int(request.args.get(b"count", [b"1"])[0])

        def answer(codes):
            request.write(json.dumps(codes).encode())
            request.finish()

        self._lab.whenCancelled(count).addCallback(answer)
        return server.NOT_DONE_YET


class LimitedRequest(server.Request):
    """
    Refuses a body over L{BODY_LIMIT} with 413 through L{refuseRequest}.
    """

    refused = False

    def gotLength(self, length):
        if length is not None and length > BODY_LIMIT:
            self.refused = True
            refuseRequest(self, 413, f"request body of {length} bytes is larger than {BODY_LIMIT} bytes\n")
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if not self.refused:
            super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if not self.refused:
            super().requestReceived(command, path, version)


class LabSite(QuietSite):
    """
    A L{QuietSite} whose requests refuse bodies over L{BODY_LIMIT}.
    """

    requestFactory = LimitedRequest


def main(reactor, dataDir):
    lab = Lab()
    registry = ServiceRegistry()
    registry.addUnary("/test.Lab/Transcode", pb.SegData, lab.transcode)
    registry.addServerStreaming("/test.Lab/Watch", pb.SegData, lab.watch)
    root = resource.Resource()
    root.putChild(b"hello", Hello())
    root.putChild(b"cancelled", Cancelled(lab))
    return serveAndAnnounce(reactor, dataDir, LabSite(root, reactor=reactor), registry)


if __name__ == "__main__":
    react(main, sys.argv[1:])
