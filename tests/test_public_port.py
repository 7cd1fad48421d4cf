"""
The orchestrator's public port in memory, as tap.makeService assembles it:
one L{BoundedSite} serving gRPC (net.Orchestrator, net.Transcoder) and the
resources over HTTP/2, and the resources over HTTP/1.1; the HTTP/2 edge's own
limits (early refusals on a stream, per-path limits, the upload budget, a
stream's upload rate and run time, the idle timeout without open streams,
the concurrent streams); and a gateway's whole exchange (GetOrchestrator,
then /segment with its token, then /stream) over HTTP/2 and HTTP/1.1.
"""

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from eth_utils import keccak
from twisted.internet.address import IPv4Address
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.web import resource, server

from livepeer_tx.payments import OffchainPayments
from livepeer_tx.limits import HTTPLimits, UploadBudget
from livepeer_tx.orchestrator.app import Orchestrator
from livepeer_tx.orchestrator.authtoken import AuthTokens
from livepeer_tx.orchestrator.dispatch import Rendition, SegmentJob
from livepeer_tx.orchestrator.grpctranscoders import REGISTER_TRANSCODER
from livepeer_tx.orchestrator.orchservice import GET_ORCHESTRATOR
from livepeer_tx.orchestrator.routing import RemoteTranscoder
from livepeer_tx.profiles import PRESETS
from livepeer_tx.proto import lp_rpc_pb2 as pb
from livepeer_tx.rpc import ALPN_PROTOCOLS, ServiceRegistry, StatusCode
from livepeer_tx.rpc.wire import frameMessage
from livepeer_tx.secret import Secret
from livepeer_tx.web import BoundedSite, FrameSizeGuard, HardenedH2Connection, HTTPEdgeMetrics
from e2e import segmentHeader, transcodeResult
from test_grpc_h2 import TRANSCODE, Client, Lab
from test_grpc_transcoders import multipart, resultHeaders
from test_ingress import AnsweringLink

PEER = IPv4Address("TCP", "192.0.2.7", 41000)
SECRET = "s3cret-for-tests"
NOW = 1_700_000_000.0
LIMITS = HTTPLimits(headerTimeout=20.0, idleTimeout=60.0, minUploadRate=1000.0, uploadRateGrace=2.0,
                    maxRequestSeconds=600.0, closeGrace=10.0, refusalGrace=1.0)


class Recorder(resource.Resource):
    """
    Records the requests it renders; holds them open when told to.
    """

    isLeaf = True

    def __init__(self, hold=False):
        super().__init__()
        self.requests = []
        self.hold = hold

    def render(self, request):
        self.requests.append((request.path, request.content.read()))
        if self.hold:
            self.held = request
            return server.NOT_DONE_YET
        return b"ok %d" % len(self.requests[-1][1])


class PortClient(Client):
    """
    An C{h2} client (or, with C{negotiated=b"http/1.1"}, raw bytes) talking to
    the protocol a L{BoundedSite} builds.
    """

    def __init__(self, site, clock, negotiated=b"h2", peer=PEER):
        self.clock = clock
        self.protocol = site.buildProtocol(peer)
        self.transport = StringTransport(peerAddress=peer)
        self.transport.negotiatedProtocol = negotiated
        self.protocol.makeConnection(self.transport)
        self.events = []
        self.acknowledge = True
        self.deliver = True
        if negotiated == b"h2":
            self.conn = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=True, header_encoding=None))
            self.conn.initiate_connection()
            self.pump()

    def post(self, path, headers=(), body=b"", length=True):
        streamID = self.conn.get_next_available_stream_id()
        request = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"orch.example"), (b":path", path)]
        if length:
            request.append((b"content-length", b"%d" % len(body)))
        self.conn.send_headers(streamID, request + list(headers), end_stream=not body)
        if body:
            self.sendData(streamID, body, endStream=True)
        self.pump()
        return streamID

    def startPost(self, path, length):
        """
        Send the headers of a POST to C{path} declaring C{length} body bytes,
        leaving the stream open and nothing delivered yet; the stream's ID.
        """
        streamID = self.conn.get_next_available_stream_id()
        self.conn.send_headers(streamID, [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"o"),
                                          (b":path", path), (b"content-length", b"%d" % length)])
        return streamID

    def http11(self, data):
        self.protocol.dataReceived(data)
        return self.transport.value()


def makeSite(root=None, maxBodyBytes=1000, bodyLimits=None, budget=None, registry=None, limits=LIMITS):
    clock = MemoryReactorClock()
    metrics = HTTPEdgeMetrics()
    site = BoundedSite(root or Recorder(), maxBodyBytes=maxBodyBytes, limits=limits, uploadBudget=budget,
                       metrics=metrics, bodyLimits=bodyLimits, reactor=clock,
                       grpcRegistry=ServiceRegistry() if registry is None else registry)
    return site, clock


@pytest.fixture
def logEvents():
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def refusedCount(site, reason):
    return site.metrics.registry.get_sample_value("livepeer_http_requests_refused_total", {"reason": reason}) or 0


# The HTTP/2 edge.


def test_alpnOffersH2ThenHttp11WithARegistryOnly():
    """
    With gRPC services the site offers h2 then http/1.1; without, http/1.1.
    """
    site, _ = makeSite()
    assert site.acceptableProtocols() == list(ALPN_PROTOCOLS) == [b"h2", b"http/1.1"]
    assert BoundedSite(Recorder(), maxBodyBytes=1).acceptableProtocols() == [b"http/1.1"]


def test_sameResourcesOverHttp2AndHttp11():
    """
    One resource tree: a POST reaches it over HTTP/2 and over HTTP/1.1 alike.
    """
    root = Recorder()
    site, clock = makeSite(root)
    client = PortClient(site, clock)
    answer = client.response(client.post(b"/x", body=b"abc"))
    assert (answer.headers[b":status"], answer.data) == (b"200", b"ok 3")
    old = PortClient(site, clock, negotiated=b"http/1.1")
    written = old.http11(b"POST /x HTTP/1.1\r\nHost: o\r\nContent-Length: 2\r\n\r\nde")
    assert written.startswith(b"HTTP/1.1 200 ") and written.endswith(b"ok 2")
    assert root.requests == [(b"/x", b"abc"), (b"/x", b"de")]


def test_early413OverHttp2ResetsOnlyItsStream(logEvents):
    """
    A declared body over the limit gets 413 before it is read, with
    RST_STREAM NO_ERROR; the resource never sees it; one log line, one
    count; the connection's next stream is served.
    """
    root = Recorder()
    site, clock = makeSite(root)
    client = PortClient(site, clock)
    streamID = client.startPost(b"/x", 5000)
    client.conn.send_data(streamID, b"x" * 1000)
    client.pump()
    answer = client.response(streamID)
    assert answer.headers[b":status"] == b"413" and answer.reset == 0
    assert answer.data == b"request body of 5000 bytes is larger than 1000 bytes\n"
    assert root.requests == [] and refusedCount(site, "request body too large") == 1
    assert [e for e in logEvents if "Refused a request" in e.get("log_format", "")]
    assert client.response(client.post(b"/x", body=b"fine")).data == b"ok 4"
    assert not client.transport.disconnecting


def test_bodyWithoutLengthRefusedAsItPassesTheLimitAndNeverProcessed():
    """
    Over HTTP/2 a body need not declare its length: it is refused as it
    passes the limit, and its END_STREAM afterwards does not dispatch it.
    """
    root = Recorder()
    site, clock = makeSite(root)
    client = PortClient(site, clock)
    streamID = client.post(b"/x", body=b"y" * 3000, length=False)
    assert client.response(streamID).headers[b":status"] == b"413"
    assert root.requests == []
    assert client.response(client.post(b"/x", body=b"z")).data == b"ok 1"


def test_perPathLimitOverBothProtocols():
    """
    /transcodeResults may carry more than the site's limit, up to its own;
    other paths keep the site's limit; over HTTP/1.1 as over HTTP/2.
    """
    root = Recorder()
    site, clock = makeSite(root, maxBodyBytes=1000, bodyLimits={b"/transcodeResults": 5000})
    client = PortClient(site, clock)
    assert client.response(client.post(b"/transcodeResults", body=b"r" * 4000)).data == b"ok 4000"
    assert client.response(client.post(b"/transcodeResults?x=1", body=b"r" * 5001)).headers[b":status"] == b"413"
    assert client.response(client.post(b"/segment", body=b"s" * 1001)).headers[b":status"] == b"413"
    old = PortClient(site, clock, negotiated=b"http/1.1")
    assert old.http11(b"POST /transcodeResults HTTP/1.1\r\nHost: o\r\nContent-Length: 4000\r\n\r\n" + b"r" * 4000
                      ).endswith(b"ok 4000")
    refused = PortClient(site, clock, negotiated=b"http/1.1")
    assert refused.http11(b"POST /segment HTTP/1.1\r\nHost: o\r\nContent-Length: 4000\r\n\r\n").startswith(
        b"HTTP/1.1 413 ")


def test_uploadBudgetPerStreamAndReleased():
    """
    Each HTTP/2 stream reserves its body in the same budget as HTTP/1.1
    requests: one that does not fit gets 503 with Retry-After; the
    reservations come back when streams end, answered or reset.
    """
    budget = UploadBudget(total=10_000, perAddress=1500)
    root = Recorder(hold=True)
    site, clock = makeSite(root, budget=budget)
    client = PortClient(site, clock)
    first = client.startPost(b"/x", 1000)
    client.pump()
    assert budget.heldBy("192.0.2.7") == 1000
    second = client.post(b"/x", body=b"b" * 600)
    answer = client.response(second)
    assert answer.headers[b":status"] == b"503" and answer.headers[b"retry-after"] == b"5"
    assert refusedCount(site, "upload memory budget exhausted") == 1
    client.conn.reset_stream(first)
    client.pump()
    assert budget.held == 0
    third = client.post(b"/x", body=b"c" * 600)
    assert budget.heldBy("192.0.2.7") == 600
    root.held.write(b"done")
    root.held.finish()
    client.pump()
    assert client.response(third).data == b"done" and budget.held == 0


@pytest.mark.parametrize("lengths, refusedBy", [([b"10", b"10"], "us"), ([b"10", b"20"], "h2"), ([b"-5"], "h2")])
def test_badContentLengthOverHttp2ReservesNothing(lengths, refusedBy):
    """
    Two Content-Length headers get 400 on their stream; h2 itself ends the
    connection for a negative one or two that differ. Neither reaches the
    budget.
    """
    budget = UploadBudget(total=10_000, perAddress=10_000)
    site, clock = makeSite(budget=budget)
    client = PortClient(site, clock)
    client.conn.config.validate_outbound_headers = False
    streamID = client.conn.get_next_available_stream_id()
    client.conn.send_headers(streamID, [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"o"),
                                        (b":path", b"/x")] + [(b"content-length", v) for v in lengths])
    client.pump()
    answer = client.response(streamID)
    if refusedBy == "us":
        assert answer.headers[b":status"] == b"400" and not client.transport.disconnecting
        assert refusedCount(site, "bad Content-Length or Transfer-Encoding") == 1
    else:
        assert answer.headers is None and client.transport.disconnecting
    assert budget.held == 0


def test_slowUploadOnOneStreamGets408AndOthersGoOn():
    """
    A stream whose body falls below --minUploadRate gets 408 (its
    reservation freed); the connection and a stream beside it go on.
    """
    budget = UploadBudget(total=100_000, perAddress=100_000)
    root = Recorder()
    site, clock = makeSite(root, budget=budget, maxBodyBytes=100_000)
    client = PortClient(site, clock)
    slow = client.startPost(b"/x", 50000)
    client.conn.send_data(slow, b"s" * 100)
    client.pump()
    clock.advance(LIMITS.uploadRateGrace - 0.5)  # within the grace
    client.pump()
    assert client.response(slow).headers is None
    clock.advance(1.0)  # past it, 100 bytes are behind 1000 bytes/s
    client.pump()
    answer = client.response(slow)
    assert answer.headers[b":status"] == b"408" and answer.data == b"request body slower than 1000 bytes/s\n"
    assert budget.held == 0 and refusedCount(site, "upload too slow") == 1
    assert client.response(client.post(b"/x", body=b"quick")).data == b"ok 5"


def test_requestRunningTooLongOnAStreamIsReset():
    """
    The run-time backstop applies per stream: the stream is reset and the
    request learns its client is gone; the connection stays.
    """
    root = Recorder(hold=True)
    site, clock = makeSite(root)
    client = PortClient(site, clock)
    streamID = client.post(b"/x", body=b"q")
    lost = []
    root.held.notifyFinish().addErrback(lost.append)
    clock.advance(LIMITS.maxRequestSeconds + 1)
    client.pump()
    assert client.response(streamID).reset is not None and lost
    assert not client.transport.disconnecting


def test_idleTimeoutRunsOnlyWithoutOpenStreamsAndPingsDoNotRestartIt():
    """
    A connection with no open stream is closed (GOAWAY) after --idleTimeout
    although it keeps sending PINGs; one with a stream open is not, and its
    idle time starts when its last stream ends.
    """
    root = Recorder(hold=True)
    site, clock = makeSite(root)
    busy = PortClient(site, clock)
    busy.post(b"/x", body=b"held")
    idle = PortClient(site, clock)
    started = clock.seconds()

    def terminated():
        return any(isinstance(e, h2.events.ConnectionTerminated) for e in idle.events)

    while not terminated() and clock.seconds() - started < 5 * LIMITS.idleTimeout:
        clock.advance(15)
        idle.pump()
        if not terminated():
            idle.conn.ping(b"12345678")
            idle.pump()
        busy.pump()
    assert clock.seconds() - started == LIMITS.idleTimeout
    assert idle.transport.disconnecting and not busy.transport.disconnecting
    root.held.finish()
    busy.pump()
    clock.advance(LIMITS.idleTimeout - 1)
    assert not busy.transport.disconnecting
    clock.advance(2)
    assert busy.transport.disconnecting


def test_streamHeaderAndFlowControlSettings():
    """
    What HTTP/2 clients are told, as HardenedH2Connection documents: 100
    concurrent streams and a 64 KiB header list (h2's), 1 MiB stream windows,
    a 16 MiB connection window and DATA frames of up to 64 KiB; a 2 MiB body
    then goes up in 64 KiB frames with a window update every 512 KiB.
    """
    root = Recorder()
    site, clock = makeSite(root, maxBodyBytes=10**7)
    client = PortClient(site, clock)
    settings = client.conn.remote_settings
    assert settings.max_concurrent_streams == HardenedH2Connection.MAX_CONCURRENT_STREAMS == 100
    assert settings.max_header_list_size == 64 * 1024
    assert settings.initial_window_size == 1 << 20 and settings.max_frame_size == 1 << 16
    assert client.conn.outbound_flow_control_window == 1 << 24
    assert isinstance(client.protocol._channel, HardenedH2Connection)
    received = len(client.events)
    client.post(b"/x", body=b"b" * (2 << 20))
    assert root.requests[-1][1] == b"b" * (2 << 20)
    updates = [e for e in client.events[received:] if isinstance(e, h2.events.WindowUpdated) and e.stream_id]
    assert 3 <= len(updates) <= 4


def test_settingsAckAndALargeFrameInOneRead():
    """
    A client that has our SETTINGS sends its ACK and, in the same read, a
    DATA frame of the 64 KiB they allow (Go's HTTP/2 client does; the bulk
    TLS transport hands on up to 256 KiB of records at once): the body
    arrives. h2 alone checks the whole read against the 16 KiB in force
    before the ACK, and would close the connection with FRAME_SIZE_ERROR.
    """
    root = Recorder()
    site, clock = makeSite(root, maxBodyBytes=10**7)
    protocol = site.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    transport.negotiatedProtocol = b"h2"
    protocol.makeConnection(transport)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    protocol.dataReceived(conn.data_to_send())
    conn.receive_data(transport.value())
    transport.clear()
    assert conn.max_outbound_frame_size == HardenedH2Connection.MAX_FRAME_BYTES
    body = b"b" * HardenedH2Connection.MAX_FRAME_BYTES
    conn.send_headers(1, [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"o"),
                          (b":path", b"/x"), (b"content-length", b"%d" % len(body))])
    conn.send_data(1, body, end_stream=True)
    protocol.dataReceived(conn.data_to_send())
    clock.advance(0)
    events = conn.receive_data(transport.value())
    assert not [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert root.requests == [(b"/x", body)]
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"ok %d" % len(body)


# The orchestrator's port.


class Port:
    """
    An orchestrator's public port as the daemon assembles it, in memory.
    """

    def __init__(self, maxSegmentBytes=100_000):
        self.clock = MemoryReactorClock()
        self.app = Orchestrator(self.clock, "https://orch.example:8935", wallClock=lambda: NOW)
        self.tokens = AuthTokens(b"t" * 32, wallClock=lambda: NOW)
        public = self.app.makePublicRoot(self.clock, Secret(literal=SECRET), OffchainPayments(), maxSegmentBytes,
                                         tokens=self.tokens)
        self.site = public.makeSite(hashBodies=True, limits=LIMITS, uploadBudget=UploadBudget(10**9, 10**9),
                                    reactor=self.clock)
        self.link = AnsweringLink()

    def client(self, negotiated=b"h2"):
        return PortClient(self.site, self.clock, negotiated)

    def addTranscoder(self, capacity=4):
        self.app.transcoderRegistered(RemoteTranscoder("10.0.0.1:1", capacity, link=self.link))


def getOrchestrator(client):
    streamID = client.call(GET_ORCHESTRATOR, pb.OrchestratorRequest())
    return client.response(streamID)


def test_gatewayOverHttp2EndToEnd():
    """
    A stock gateway's exchange on one HTTP/2 connection: GetOrchestrator
    (refused while no transcoder is connected), then /segment with the
    token (200 before the work, a TranscodeResult after), then the
    rendition from /stream.
    """
    port = Port()
    client = port.client()
    refused = getOrchestrator(client)
    assert (refused.status, refused.message) == (StatusCode.UNKNOWN,
                                                 "Invalid orchestrator request: no transcoders available")
    port.addTranscoder()
    [info] = getOrchestrator(client).messages(pb.OrchestratorInfo)
    assert info.transcoder == "https://orch.example:8935" and len(info.auth_token.session_id) == 8
    body = b"\x47" * 5000
    headers = [(b"livepeer-segment", segmentHeader(body, seq=3, authToken=info.auth_token).encode()),
               (b"livepeer-payment", b""), (b"content-type", b"video/MP2T")]
    streamID = client.post(b"/segment", headers, body)
    early = client.response(streamID)
    assert early.headers[b":status"] == b"200" and not early.ended
    [(taskId, job)] = port.link.tasks
    assert job.sessionId == info.auth_token.session_id and job.data == body
    port.app.dispatcher.taskSucceeded(taskId, [Rendition(job.profiles[0].name, b"R" * 64, pixels=9)], 1)
    client.pump()
    answer = client.response(streamID)
    result = transcodeResult(answer.data)
    assert answer.ended and result.seq == 3 and result.info.auth_token == info.auth_token
    [segment] = result.data.segments
    path = segment.url.split("orch.example:8935", 1)[1].encode()
    rendition = client.response(client.get(path))
    assert rendition.headers[b":status"] == b"200" and rendition.data == b"R" * 64


def test_gatewayOverHttp11WithTheSameToken():
    """
    The same segment pipeline over HTTP/1.1: a token from GetOrchestrator
    (over HTTP/2) names the session; a forged one is refused.
    """
    port = Port()
    port.addTranscoder()
    [info] = getOrchestrator(port.client()).messages(pb.OrchestratorInfo)
    body = b"\x47" * 700

    def post(token):
        header = segmentHeader(body, authToken=token)
        request = (b"POST /segment HTTP/1.1\r\nHost: o\r\nLivepeer-Segment: " + header.encode()
                   + b"\r\nLivepeer-Payment: \r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        return port.client(negotiated=b"http/1.1").http11(request)

    forged = pb.AuthToken(token=keccak(b"guess"), session_id=info.auth_token.session_id,
                          expiration=info.auth_token.expiration)
    refused = post(forged)
    assert refused.startswith(b"HTTP/1.1 403 ") and b"\r\ninvalid auth token\n\r\n" in refused
    written = post(info.auth_token)
    assert written.startswith(b"HTTP/1.1 200 ") and port.link.tasks[0][1].sessionId == info.auth_token.session_id


def test_stockTranscoderResultsOverHttp2MayExceedTheSegmentLimit():
    """
    A stock transcoder registers over gRPC and posts results larger than the
    largest segment (every rendition of it) to /transcodeResults over HTTP/2;
    /segment still refuses that size before reading it.
    """
    port = Port(maxSegmentBytes=2000)
    client = port.client()
    register = client.call(REGISTER_TRANSCODER, pb.RegisterRequest(secret=SECRET, capacity=1))
    assert len(port.app.pool.transcoders) == 1
    job = port.app.dispatcher.transcode(SegmentJob("abcd0001", 1, b"\x47" * 1500, [PRESETS["P240p30fps16x9"]]))
    client.pump()
    [notify] = client.response(register).messages(pb.NotifySegment)
    data = b"R" * 3000
    parts = [([("Content-Length", len(data)), ("Content-Type", "video/mp2t"), ("Pixels", 1000)], data)]
    body = multipart(parts)
    assert len(body) > 2000
    headers = [(k.lower().encode(), v.encode()) for k, v in resultHeaders(notify.taskId, secret=SECRET)]
    answer = client.response(client.post(b"/transcodeResults", headers, body))
    assert (answer.headers[b":status"], answer.data) == (b"200", b"OK")
    done = []
    job.addCallback(done.append)
    assert done and done[0].renditions[0].data == data
    assert client.response(client.post(b"/segment", body=b"x" * 2001)).headers[b":status"] == b"413"


@pytest.mark.parametrize("garbage, code", [
    (b"\x00\x00\x04\x00\x01\x00\x00\x00\x00abcd", h2.errors.ErrorCodes.PROTOCOL_ERROR),  # DATA on stream 0
    (b"\xff\xff\xff\x01\x04\x00\x00\x00\x01", h2.errors.ErrorCodes.FRAME_SIZE_ERROR),  # a 16 MiB frame announced
    (b"\x01\x00\x01\x00\x00\x00\x00\x00\x01", h2.errors.ErrorCodes.FRAME_SIZE_ERROR),  # 64 KiB + 1
])
def test_connectionErrorClosesAtOnceAndAbortsAPeerThatStays(garbage, code):
    """
    A frame no client may send gets GOAWAY with its error at once (an
    oversized one from its header alone, before its payload); TLS may close
    at once (the connection lets go of the transport), and a peer that does
    not close is aborted after the refusal grace.
    """
    site, clock = makeSite()
    client = PortClient(site, clock)
    client.transport.clear()
    client.protocol.dataReceived(garbage)
    [terminated] = [e for e in client.conn.receive_data(client.transport.value())
                    if isinstance(e, h2.events.ConnectionTerminated)]
    assert terminated.error_code == code
    assert client.transport.disconnecting and client.transport.producer is None
    aborted = []
    client.transport.abortConnection = lambda: aborted.append(True)
    clock.advance(LIMITS.refusalGrace)
    assert aborted == [True]


def test_frameSizeGuardFollowsFramesAcrossReads():
    """
    Frame headers split across reads, payloads skipped, the preface first.
    """
    guard = FrameSizeGuard()
    stream = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"s" * 6
              + b"\x00\x40\x00\x00\x00\x00\x00\x00\x01" + b"d" * 0x4000 + b"\x00\x40\x01\x00\x00\x00\x00\x00\x01")
    for index in range(len(stream)):
        ok = guard.feed(stream[index:index + 1], 0x4000)
        if index < len(stream) - 1:
            assert ok, index
    assert not ok
    assert FrameSizeGuard().feed(stream[:-9], 0x4000)


# gRPC request messages on the public port: bounded in time and in memory like request bodies.


def test_stalledGrpcRequestMessageEndsAtTheHeaderDeadlineAndFreesTheConnection():
    """
    A gRPC call whose request message stops arriving (a slowloris on
    HTTP/2) ends with DEADLINE_EXCEEDED after --headerTimeout whatever PINGs
    keep coming; with its stream gone the connection's idle timeout runs
    again, and a whole call on the same connection still succeeds.
    """
    site, clock = makeSite(registry=Lab().registry())
    client = PortClient(site, clock)
    stalled = client.start(TRANSCODE)
    client.conn.send_data(stalled, frameMessage(b"\x0a" * 500)[:200])
    client.pump()
    clock.advance(LIMITS.headerTimeout - 1)
    client.conn.ping(b"12345678")
    client.pump()
    assert client.response(stalled).trailers is None and client.response(stalled).headers is None
    clock.advance(1)
    client.pump()
    answer = client.response(stalled)
    assert answer.status == StatusCode.DEADLINE_EXCEEDED and "did not arrive within 20 seconds" in answer.message
    assert client.server.streams == {}
    whole = client.call(TRANSCODE, pb.SegData(manifestId=b"fine", seq=3))
    assert client.response(whole).status == StatusCode.OK
    clock.advance(LIMITS.idleTimeout)
    assert client.transport.disconnecting


def test_grpcRequestMessagesHoldTheUploadBudgetWhileTheyArrive():
    """
    A gRPC request message kept across reads reserves its declared length
    in the upload budget, per source address like HTTP bodies: one that
    does not fit ends with RESOURCE_EXHAUSTED before more of it is kept;
    the bytes come back when the message is complete or its stream is reset.
    """
    budget = UploadBudget(total=100_000, perAddress=1500)
    site, clock = makeSite(registry=Lab().registry(), budget=budget)
    client = PortClient(site, clock)
    message = pb.SegData(manifestId=b"big", hash=b"h" * 990).SerializeToString()
    first = client.start(TRANSCODE)
    client.conn.send_data(first, frameMessage(message)[:100])
    client.pump()
    assert budget.heldBy("192.0.2.7") == len(message)
    second = client.start(TRANSCODE)
    client.conn.send_data(second, frameMessage(message)[:100])
    client.pump()
    answer = client.response(second)
    assert answer.status == StatusCode.RESOURCE_EXHAUSTED and "allowed per address" in answer.message
    assert refusedCount(site, "upload memory budget exhausted") == 1
    assert budget.heldBy("192.0.2.7") == len(message)
    client.conn.reset_stream(first)
    client.pump()
    assert budget.held == 0
    whole = client.start(TRANSCODE)
    client.sendData(whole, frameMessage(message)[:100])
    assert budget.held == len(message)
    client.sendData(whole, frameMessage(message)[100:], endStream=True)
    assert client.response(whole).status == StatusCode.OK and budget.held == 0


def test_secondRegisterMessageLeavesNoTranscoderRegistered():
    """
    A RegisterTranscoder call that sends a second request message ends with
    INTERNAL, and the transcoder its first message registered leaves the
    pool with it (it stayed, unreachable, and drew segments).
    """
    port = Port()
    client = port.client()
    message = frameMessage(pb.RegisterRequest(secret=SECRET, capacity=1).SerializeToString())
    streamID = client.start(REGISTER_TRANSCODER)
    client.sendData(streamID, message + message, endStream=True)
    answer = client.response(streamID)
    assert answer.status == StatusCode.INTERNAL and "more than one" in answer.message
    assert port.app.pool.transcoders == []


@pytest.mark.parametrize("path", [GET_ORCHESTRATOR, "/segment"])
def test_requestResetInTheSameReadIsDroppedWithoutAnError(path, logEvents):
    """
    A client that sends a whole request and resets it in one read (h2 has
    closed the stream before Twisted hands on the request): nothing is run
    or written for it, nothing is logged as a failure, and the next stream
    on the connection is served.
    """
    port = Port()
    port.addTranscoder()
    client = port.client()
    body = b"\x47" * 700
    if path == "/segment":
        headers = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"o"), (b":path", b"/segment"),
                   (b"livepeer-segment", segmentHeader(body).encode()), (b"livepeer-payment", b"")]
        streamID = client.conn.get_next_available_stream_id()
        client.conn.send_headers(streamID, headers)
        client.conn.send_data(streamID, body, end_stream=True)
    else:
        streamID = client.start(GET_ORCHESTRATOR)
        client.conn.send_data(streamID, frameMessage(b"\xff\xff"), end_stream=True)
    client.conn.reset_stream(streamID)
    following = client.start(GET_ORCHESTRATOR)
    client.conn.send_data(following, frameMessage(pb.OrchestratorRequest().SerializeToString()), end_stream=True)
    client.pump()
    assert [e for e in logEvents if "log_failure" in e] == []
    assert client.response(streamID).headers is None and port.link.tasks == []
    [info] = client.response(following).messages(pb.OrchestratorInfo)
    assert info.transcoder == "https://orch.example:8935"


def test_streamDeclaringNoBodyMustStillEndInTime():
    """
    A stream with C{content-length: 0} that never sends END_STREAM (no body
    to measure a rate on) gets 408 after --headerTimeout; its connection's
    idle timeout then runs again.
    """
    site, clock = makeSite(Recorder())
    client = PortClient(site, clock)
    streamID = client.startPost(b"/x", 0)
    client.pump()
    clock.advance(LIMITS.headerTimeout - 1)
    client.pump()
    assert client.response(streamID).headers is None
    clock.advance(1)
    client.pump()
    answer = client.response(streamID)
    assert answer.headers[b":status"] == b"408" and answer.data == b"request declaring no body not ended within 20 s\n"
    assert refusedCount(site, "request headers too slow") == 1 and site.resource.requests == []
    clock.advance(LIMITS.idleTimeout)
    assert client.transport.disconnecting
