"""
The public port's HTTP/1.1 edge in memory: a connection can always die
(refusals abort, deadlines that request processing cannot turn off, an abort
when a close does not complete), connection caps, and the upload memory
budget. The limit classes are tested on their own with a clock.
"""

import pytest
from eth_utils import keccak
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import AccumulatingProtocol, EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols import policies
from twisted.python.failure import Failure
from twisted.web import resource, server

from livepeer_tx.limits import (
    ADDRESS_CAP, CLOSE_TOO_SLOW, HEADERS_TOO_SLOW, REQUEST_TOO_LONG, TOTAL_CAP, UPLOAD_TOO_SLOW,
    ConnectionDeadlines, ConnectionLimiter, HTTPLimits, LogThrottle, MemoryReturner, UploadBudget, UploadRefused,
)
from livepeer_tx.web import BodyKeccak, BoundedSite, ConnectionCapFactory, HTTPEdgeMetrics

from tests.fakechain import ThreadlessClock

LIMITS = HTTPLimits(headerTimeout=20.0, idleTimeout=60.0, minUploadRate=1000.0, uploadRateGrace=2.0,
                    maxRequestSeconds=600.0, closeGrace=10.0, refusalGrace=1.0)


class RecordingTransport(StringTransport):
    """
    A StringTransport that records an abort apart from a graceful close.
    """

    aborted = False

    def abortConnection(self):
        self.aborted = True
        super().abortConnection()


class Recorder(resource.Resource):
    """
    Records every request it renders; answers at once or holds the request.
    """

    isLeaf = True

    def __init__(self, hold=False):
        super().__init__()
        self.requests = []
        self.bodies = []
        self.hold = hold

    def render(self, request):
        self.requests.append(request)
        self.bodies.append(request.content.read())
        if self.hold:
            return server.NOT_DONE_YET
        return b"ok"


class Connection:
    """
    One in-memory connection to a site: the protocol the site built, its
    transport and the HTTP channel behind Twisted's protocol switcher.
    """

    def __init__(self, factory, host="10.0.0.1", port=5000):
        self.address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)
        self.protocol = factory.buildProtocol(self.address)
        self.transport = RecordingTransport(peerAddress=self.address)
        self.protocol.makeConnection(self.transport)
        self.channel = self.transport.producer

    def send(self, *parts):
        for part in parts:
            self.protocol.dataReceived(part)

    def lose(self):
        self.protocol.connectionLost(Failure(ConnectionDone()))

    @property
    def written(self):
        return self.transport.value()


def makeSite(root=None, limits=LIMITS, maxBodyBytes=100_000, budget=None, metrics=None, **kwargs):
    clock = MemoryReactorClock()
    site = BoundedSite(root or Recorder(), maxBodyBytes=maxBodyBytes, limits=limits, uploadBudget=budget,
                       metrics=metrics, reactor=clock, **kwargs)
    return site, clock


@pytest.fixture
def logEvents():
    """
    Every event logged during the test.
    """
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def failures(events):
    return [event for event in events if "log_failure" in event or event.get("isError")]


def infoLines(events, text):
    return [formatEvent(e) for e in events if text in formatEvent(e) and e["log_level"] == LogLevel.info]


ATTACK = [b"GET /x HTTP/1.1\r\n", b"Host: o\r\n", b"a header line without a colon\r\n", b"Connection: close\r\n",
          b"\r\n", b"x" * 40_000]


def test_malformedHeaderLineIsRefusedAndNothingIsDispatched(logEvents):
    """
    The reported attack: each piece arrives on its own (as TLS records do).
    The request is never dispatched, the answer is one 400, reading goes on
    (so the peer's close can be seen), and the connection is aborted once the
    refusal's grace has passed. One info line, no traceback.
    """
    root = Recorder()
    site, clock = makeSite(root)
    connection = Connection(site)
    connection.send(*ATTACK)
    assert root.requests == []
    assert connection.written.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert connection.written.count(b"HTTP/1.1") == 1
    assert b"Connection: close" in connection.written
    assert connection.transport.disconnecting and connection.transport.producerState == "producing"
    assert not connection.transport.aborted
    clock.advance(LIMITS.refusalGrace)
    assert connection.transport.aborted
    connection.lose()
    assert clock.getDelayedCalls() == []
    assert infoLines(logEvents, "Refused a request from 10.0.0.1:5000: 400 malformed header line")
    assert failures(logEvents) == []


@pytest.mark.parametrize("parts, reason", [
    ([b"GET /x HTTP/1.1 extra\r\n", b"Host: o\r\n", b"\r\n"], "malformed request line"),
    ([b"\x00\x01garbage\r\n", b"Host: o\r\n", b"\r\n", b"body"], "malformed request line"),
    ([b"POST /x HTTP/1.1\r\n", b"Content-Length: 12a\r\n", b"\r\n", b"x" * 100], "Content-Length"),
    ([b"POST /x HTTP/1.1\r\n", b"Content-Length: -1\r\n", b"\r\n", b"x" * 100], "Content-Length"),
    ([b"POST /x HTTP/1.1\r\n", b"Content-Length: 1\r\n", b"Content-Length: 2\r\n", b"\r\n", b"xx"],
     "Content-Length"),
    ([b"POST /x HTTP/1.1\r\n", b"Transfer-Encoding: gzip\r\n", b"\r\n", b"xx"], "Transfer-Encoding"),
    ([b"POST /x HTTP/1.1\r\n", b"Transfer-Encoding: chunked\r\n", b"\r\n", b"zz\r\nxx\r\n"], "chunked body"),
    ([b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n", b"Host: o\r\n", b"\r\n"], "too long"),
    ([b"GET /x HTTP/1.1\r\n"] + [b"X-%d: " % i + b"v" * 6000 + b"\r\n" for i in range(3)] + [b"\r\n"],
     "request headers too large"),
])
def test_malformedRequestsGet400AndOneLineWithoutTraceback(logEvents, parts, reason):
    """
    Malformed request lines, Content-Length and Transfer-Encoding values,
    chunked bodies and headers too large in total: a 400, one info line naming the peer and the reason, no
    traceback, nothing dispatched and nothing parsed after it (Twisted's own
    channel goes on parsing after its 400 and raises on the next line).
    """
    root = Recorder()
    site, clock = makeSite(root)
    connection = Connection(site)
    connection.send(*parts)
    connection.send(b"GET /after HTTP/1.1\r\n\r\n")
    assert root.requests == []
    assert connection.written.startswith(b"HTTP/1.1 400 ")
    assert connection.written.count(b"HTTP/1.1") == 1
    lines = infoLines(logEvents, "Refused a request from 10.0.0.1:5000: 400")
    assert len(lines) == 1 and reason in lines[0]
    assert failures(logEvents) == []


def test_headerDeadlineFromTheFirstByte(logEvents):
    """
    A client trickling header lines (each one resets Twisted's idle timeout)
    gets 408 once the headers have taken longer than headerTimeout from the
    request's first byte; the time before that first byte is the idle
    timeout's business.
    """
    site, clock = makeSite()
    connection = Connection(site)
    clock.advance(LIMITS.idleTimeout - 1)
    connection.send(b"GET /x HTTP/1.1\r\n")
    for i in range(int(LIMITS.headerTimeout) - 1):
        clock.advance(1)
        connection.send(b"X-Trickle-%d: 1\r\n" % i)
    assert connection.written == b""
    clock.advance(1)
    assert connection.written.startswith(b"HTTP/1.1 408 ")
    assert b"not received within 20 s" in connection.written
    clock.advance(LIMITS.refusalGrace)
    assert connection.transport.aborted
    assert failures(logEvents) == []


def test_idleKeepaliveConnectionIsClosedAndThenAborted():
    """
    Between keep-alive requests the idle timeout applies; a close that does
    not complete (no close from the peer) is aborted after the grace.
    """
    site, clock = makeSite()
    connection = Connection(site)
    connection.send(b"GET /x HTTP/1.1\r\nHost: o\r\n\r\n")
    assert b"200 OK" in connection.written
    clock.advance(LIMITS.idleTimeout - 1)
    assert not connection.transport.disconnecting
    clock.advance(1)
    assert connection.transport.disconnecting and not connection.transport.aborted
    clock.advance(LIMITS.refusalGrace)
    assert connection.transport.aborted


def test_slowUploadGets408AlthoughEachByteResetsTheIdleTimeout(logEvents):
    """
    A body must average minUploadRate after uploadRateGrace: one that keeps
    the rate is accepted, one that trickles (a byte every 5 s, well inside
    the idle timeout) is refused and its connection closed.
    """
    root = Recorder()
    site, clock = makeSite(root)
    good = Connection(site, port=1)
    good.send(b"POST /x HTTP/1.1\r\nContent-Length: 8000\r\n\r\n")
    for _ in range(8):
        clock.advance(1)
        good.send(b"x" * 1000)
    assert len(root.requests) == 1 and b"200 OK" in good.written

    slow = Connection(site, port=2)
    slow.send(b"POST /x HTTP/1.1\r\nContent-Length: 8000\r\n\r\n")
    for _ in range(3):
        clock.advance(5)
        slow.send(b"x")
        if slow.written:
            break
    assert slow.written.startswith(b"HTTP/1.1 408 ")
    assert b"slower than 1000 bytes/s" in slow.written
    assert len(root.requests) == 1
    assert infoLines(logEvents, "408 upload too slow")
    assert failures(logEvents) == []


def test_requestRunningTooLongIsAborted():
    """
    A dispatched request still running after maxRequestSeconds has its
    connection aborted (Twisted turns its own timeout off while a request runs).
    """
    site, clock = makeSite(Recorder(hold=True))
    connection = Connection(site)
    connection.send(b"GET /x HTTP/1.1\r\nHost: o\r\n\r\n")
    clock.advance(LIMITS.maxRequestSeconds - 1)
    assert not connection.transport.aborted
    clock.advance(1)
    assert connection.transport.aborted


def test_finishedConnectionCloseResponseIsAbortedIfTheCloseHangs():
    """
    After a Connection: close response, a close that has not completed within
    closeGrace is aborted; a close that completes cancels every timer.
    """
    root = Recorder(hold=True)
    site, clock = makeSite(root)
    hanging = Connection(site, port=1)
    hanging.send(b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
    root.requests[-1].finish()
    assert hanging.transport.disconnecting and not hanging.transport.aborted
    clock.advance(LIMITS.closeGrace)
    assert hanging.transport.aborted
    hanging.lose()

    closing = Connection(site, port=2)
    closing.send(b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
    root.requests[-1].finish()
    closing.lose()
    assert clock.getDelayedCalls() == []


def test_dataAfterAConnectionCloseRequestIsDroppedNotBuffered():
    """
    Bytes sent behind a Connection: close request are dropped, so reading is
    never paused and the peer's close is seen while the request runs; a
    keep-alive connection still pauses (Twisted's pipelining back-pressure).
    """
    root = Recorder(hold=True)
    site, clock = makeSite(root)
    closing = Connection(site, port=1)
    closing.send(b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n", b"x" * 40_000)
    assert closing.transport.producerState == "producing"
    assert closing.channel._dataBuffer == []
    keepAlive = Connection(site, port=2)
    keepAlive.send(b"GET /x HTTP/1.1\r\n\r\n", b"x" * 40_000)
    assert keepAlive.transport.producerState == "paused"


def test_bodyTooLargeRefusedBeforeItIsRead():
    """
    A declared length over maxBodyBytes, or a chunked body growing past it,
    gets 413 and is never dispatched.
    """
    root = Recorder()
    site, clock = makeSite(root, maxBodyBytes=1000)
    declared = Connection(site, port=1)
    declared.send(b"POST /x HTTP/1.1\r\nContent-Length: 1001\r\n\r\n")
    assert declared.written.startswith(b"HTTP/1.1 413 ")
    chunked = Connection(site, port=2)
    chunked.send(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunked.send(b"3e8\r\n" + b"x" * 1000 + b"\r\n", b"1\r\nx\r\n0\r\n\r\n")
    assert chunked.written.startswith(b"HTTP/1.1 413 ")
    assert root.requests == []


def test_bodyIsKeptHashedAndReadWithoutACopy():
    """
    The body arrives whole, its keccak-256 is ready, and reading it whole
    returns the buffer itself rather than a copy.
    """
    root = Recorder(hold=True)
    site, clock = makeSite(root, hashBodies=True)
    body = bytes(range(256)) * 40
    connection = Connection(site)
    connection.send(b"POST /x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body), body[:5000], body[5000:])
    request = root.requests[0]
    assert root.bodies == [body]
    digests = []
    request.bodyKeccak.digestLater().addCallback(digests.append)
    assert digests == [keccak(body)]
    request.content.seek(0)
    whole = request.content.read()
    assert whole is request.content.getvalue()


def test_bodyHashRunsInOrderedBatchesOffTheCaller():
    """
    With a runner, the pieces wait (not copied) until a batch is full, each
    batch is handed over only after the one before it finished, and the
    digest comes once the last one has run.
    """
    jobs = []

    def run(f, *args):
        d = Deferred()
        jobs.append((f, args, d))
        return d

    def finish(job):
        f, args, d = job
        d.callback(f(*args))

    pieces = [bytes([n]) * 300 for n in range(7)]
    hasher = BodyKeccak(run, batchBytes=1000)
    for piece in pieces[:4]:
        hasher.update(piece)
    assert len(jobs) == 1
    assert all(a is b for a, b in zip(jobs[0][1][1], pieces[:4]))
    for piece in pieces[4:]:
        hasher.update(piece)
    digests = []
    hasher.digestLater().addCallback(digests.append)
    assert len(jobs) == 1
    finish(jobs[0])
    assert len(jobs) == 2 and digests == []
    finish(jobs[1])
    assert digests == [keccak(b"".join(pieces))]


def test_uploadBudgetRefusesWith503AndReleases(logEvents):
    """
    Declared lengths are reserved per address and in total before the body
    is read; a body that does not fit gets 503 with Retry-After and is never
    read. A stalled upload's reservation returns when its connection is lost,
    a finished request's when it finishes.
    """
    budget = UploadBudget(total=1000, perAddress=600)
    metrics = HTTPEdgeMetrics(budget=budget)
    root = Recorder(hold=True)
    site, clock = makeSite(root, budget=budget, metrics=metrics)

    stalled = Connection(site, host="10.0.0.1")
    stalled.send(b"POST /x HTTP/1.1\r\nContent-Length: 500\r\n\r\n", b"x" * 100)
    assert budget.held == 500 and budget.heldBy("10.0.0.1") == 500

    sameAddress = Connection(site, host="10.0.0.1", port=2)
    sameAddress.send(b"POST /x HTTP/1.1\r\nContent-Length: 200\r\nExpect: 100-continue\r\n\r\n")
    assert sameAddress.written.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 5\r\n" in sameAddress.written
    assert b"100 Continue" not in sameAddress.written
    assert b"per address" in sameAddress.written

    other = Connection(site, host="10.0.0.2")
    other.send(b"POST /x HTTP/1.1\r\nContent-Length: 400\r\n\r\n", b"y" * 400)
    assert budget.held == 900 and len(root.requests) == 1

    third = Connection(site, host="10.0.0.3")
    third.send(b"POST /x HTTP/1.1\r\nContent-Length: 200\r\n\r\n")
    assert third.written.startswith(b"HTTP/1.1 503 ") and b"retry later" in third.written

    stalled.lose()
    assert budget.held == 400 and budget.heldBy("10.0.0.1") == 0
    root.requests[0].finish()
    assert budget.held == 0
    assert metrics.registry.get_sample_value(
        "livepeer_http_requests_refused_total", {"reason": "upload memory budget exhausted"}) == 2
    assert failures(logEvents) == []


def test_largeReleasesGiveMemoryBackAtMostOncePerInterval():
    """
    A released reservation of C{minimumBytes} or more trims the heap (with
    0) on the reactor's thread pool at the next turn, not during the release
    (the body is still referenced then); releases during the interval after
    a trim make one more trim once it ends; smaller releases, and a C
    library without C{malloc_trim}, trim nothing.
    """
    clock, trims = ThreadlessClock(), []
    threadPool = clock.getThreadPool()
    inThread = []
    clock.getThreadPool = lambda: inThread.append(True) or threadPool
    returner = MemoryReturner(clock, trim=trims.append, minimumBytes=1000, interval=1.0)
    budget = UploadBudget(total=10_000, perAddress=10_000, memoryReturner=returner)
    budget.reserve("10.0.0.1", 999).release()
    clock.advance(5)
    assert trims == []

    budget.reserve("10.0.0.1", 1000).release()
    assert trims == []
    clock.advance(0)
    assert trims == [0] and inThread == [True]

    clock.advance(0.5)
    for _ in range(3):
        budget.reserve("10.0.0.1", 4000).release()
    clock.advance(0.4)
    assert trims == [0]
    clock.advance(0.1)
    assert trims == [0, 0]
    clock.advance(10)
    assert trims == [0, 0]

    without = MemoryReturner(clock, trim=None, minimumBytes=1)
    UploadBudget(total=10, perAddress=10, memoryReturner=without).reserve("10.0.0.1", 10).release()
    clock.advance(10)
    assert trims == [0, 0] and clock.getDelayedCalls() == []


def test_chunkedUploadReservesAsItArrives():
    """
    A chunked body has no declared length: it reserves its bytes as they come,
    gets 503 when they stop fitting, and gives everything back.
    """
    budget = UploadBudget(total=10_000, perAddress=1500)
    root = Recorder()
    site, clock = makeSite(root, budget=budget)
    connection = Connection(site)
    connection.send(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"3e8\r\n" + b"x" * 1000 + b"\r\n")
    assert budget.held == 1000
    connection.send(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
    assert connection.written.startswith(b"HTTP/1.1 503 ")
    connection.lose()
    assert budget.held == 0 and root.requests == []


class TakeOver(resource.Resource):
    """
    Takes the transport over the way autobahn's WebSocket resource does.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.protocols = []

    def render(self, request):
        protocol = AccumulatingProtocol()
        self.protocols.append(protocol)
        transport, request.channel.transport = request.channel.transport, None
        if isinstance(transport, policies.ProtocolWrapper):
            transport.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        protocol.makeConnection(transport)
        return server.NOT_DONE_YET


def test_websocketTakeoverStopsTheDeadlinesAndStaysCounted():
    """
    A resource that takes the transport over leaves the channel: its
    deadlines stop and its upload reservation returns. The connection stays
    counted against the caps until it closes, and the new protocol gets the
    real transport below (autobahn needs the TLS one), every later byte and
    the connection's end.
    """
    root = TakeOver()
    budget = UploadBudget(total=1000, perAddress=1000)
    site, clock = makeSite(root, budget=budget)
    limiter = ConnectionLimiter(maxConnections=10, maxPerAddress=10)
    address = IPv4Address("TCP", "10.0.0.1", 5000)
    tls = policies.WrappingFactory(ConnectionCapFactory(site, limiter, clock)).buildProtocol(address)
    tls.makeConnection(StringTransport(peerAddress=address))
    tls.dataReceived(b"GET /transcoder HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    [protocol] = root.protocols
    assert protocol.transport is tls
    assert budget.held == 0 and clock.getDelayedCalls() == []
    assert limiter.open == 1
    tls.dataReceived(b"frames")
    assert protocol.data == b"frames"
    tls.connectionLost(Failure(ConnectionDone()))
    assert limiter.open == 0 and protocol.closed


def test_connectionCaps(logEvents):
    """
    Over a cap a connection is aborted at once (before TLS would start),
    counted in the metrics, and logged once per interval, not per connection.
    Closing a counted connection frees its place.
    """
    limiter = ConnectionLimiter(maxConnections=3, maxPerAddress=2)
    metrics = HTTPEdgeMetrics(connections=limiter)
    site, clock = makeSite()
    factory = ConnectionCapFactory(site, limiter, clock, metrics)
    first, second = Connection(factory, host="10.0.0.1", port=1), Connection(factory, host="10.0.0.1", port=2)
    refused = [Connection(factory, host="10.0.0.1", port=3 + i) for i in range(3)]
    assert [c.transport.aborted for c in (first, second)] == [False, False]
    assert all(c.transport.aborted for c in refused)
    elsewhere = Connection(factory, host="10.0.0.2")
    overall = Connection(factory, host="10.0.0.3")
    assert not elsewhere.transport.aborted and overall.transport.aborted
    assert limiter.open == 3
    assert metrics.registry.get_sample_value("livepeer_http_connections_refused_total", {"cap": ADDRESS_CAP}) == 3
    assert metrics.registry.get_sample_value("livepeer_http_connections_refused_total", {"cap": TOTAL_CAP}) == 1
    assert metrics.registry.get_sample_value("livepeer_http_connections_open") == 3
    warnings = [e for e in logEvents if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 1 and "Refused 1 connection" in formatEvent(warnings[0])
    clock.advance(10)
    Connection(factory, host="10.0.0.1", port=99)
    warnings = [e for e in logEvents if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 2 and "Refused 4 connection" in formatEvent(warnings[1])

    first.lose()
    assert limiter.openFrom("10.0.0.1") == 1
    again = Connection(factory, host="10.0.0.1", port=100)
    assert not again.transport.aborted
    again.send(b"GET /x HTTP/1.1\r\nHost: o\r\n\r\n")
    assert b"200 OK" in again.written
    assert factory.acceptableProtocols() == [b"http/1.1"]


def test_perAddressLimitsCountSourcesAsNamed():
    """
    With the orchestrator's sourceOf, an IPv6 /64 is one source for the
    connection cap and the upload budget; another /64 is not.
    """
    from livepeer_tx.orchestrator.ingress import sourceOf

    limiter = ConnectionLimiter(maxConnections=10, maxPerAddress=1)
    budget = UploadBudget(total=1000, perAddress=600)
    site, clock = makeSite(Recorder(hold=True), budget=budget, sourceOf=sourceOf)
    factory = ConnectionCapFactory(site, limiter, clock, sourceOf=sourceOf)
    first = Connection(factory, host="2001:db8:0:1::1")
    sameNetwork = Connection(factory, host="2001:db8:0:1::2")
    otherNetwork = Connection(factory, host="2001:db8:0:2::1")
    assert (first.transport.aborted, sameNetwork.transport.aborted, otherNetwork.transport.aborted) == (
        False, True, False)
    first.send(b"POST /x HTTP/1.1\r\nContent-Length: 500\r\n\r\n")
    assert budget.heldBy("2001:db8:0:1::/64") == 500


# The limit classes on their own.

def test_connectionLimiterCounts():
    """
    acquire() counts within both caps and names the cap it would exceed;
    release() gives places back and ignores unknown addresses.
    """
    limiter = ConnectionLimiter(maxConnections=3, maxPerAddress=2)
    assert [limiter.acquire("a"), limiter.acquire("a"), limiter.acquire("a")] == [None, None, ADDRESS_CAP]
    assert limiter.acquire("b") is None and limiter.acquire("c") == TOTAL_CAP
    limiter.release("a")
    limiter.release("nobody")
    assert limiter.open == 2 and limiter.openFrom("a") == 1
    assert limiter.acquire("c") is None


def test_uploadBudgetCapsAndIdempotentRelease():
    """
    Reservations fit both caps or raise without reserving; growing follows
    the same rule; releasing twice gives back once.
    """
    budget = UploadBudget(total=100, perAddress=60)
    a = budget.reserve("a", 60)
    with pytest.raises(UploadRefused):
        budget.reserve("a", 1)
    b = budget.reserve("b", 40)
    with pytest.raises(UploadRefused, match="limit 100"):
        budget.reserve("c", 1)
    with pytest.raises(UploadRefused):
        b.grow(1)
    a.release()
    a.release()
    assert budget.held == 40 and budget.heldBy("a") == 0
    b.grow(20)
    assert b.size == 60 and budget.held == 60
    b.release()
    assert budget.held == 0
    with pytest.raises(UploadRefused):
        b.grow(1)


class Expiries:
    def __init__(self):
        self.kinds = []

    def __call__(self, kind):
        self.kinds.append(kind)


def test_deadlinesHeaderAndRequest():
    """
    The header deadline runs from the request's first byte until the headers
    are in; the request backstop from dispatch until the response is done.
    """
    clock, expired = Clock(), Expiries()
    deadlines = ConnectionDeadlines(clock, LIMITS, expired)
    deadlines.requestStarted()
    clock.advance(19)
    deadlines.headersReceived()
    clock.advance(100)
    assert expired.kinds == []
    deadlines.dispatched()
    clock.advance(599)
    deadlines.requestFinished()
    clock.advance(100)
    assert expired.kinds == []
    deadlines.requestStarted()
    clock.advance(20)
    deadlines.dispatched()
    clock.advance(600)
    assert expired.kinds == [HEADERS_TOO_SLOW, REQUEST_TOO_LONG]


def test_deadlinesUploadRate():
    """
    A body keeping minUploadRate (after the grace) is never expired, however
    long it takes; one that falls behind is expired; bursts count as an average.
    """
    clock, expired = Clock(), Expiries()
    deadlines = ConnectionDeadlines(clock, LIMITS, expired)
    deadlines.bodyStarted()
    for _ in range(100):
        clock.advance(1)
        deadlines.bodyReceived(1000)
    deadlines.bodyFinished()
    assert expired.kinds == [] and deadlines.pending() == set()

    deadlines.bodyStarted()
    clock.advance(1)
    deadlines.bodyReceived(10_000)
    clock.advance(11)
    assert expired.kinds == []
    clock.advance(1)
    assert expired.kinds == [UPLOAD_TOO_SLOW]


def test_deadlinesClosingReplacesTheOthersAndKeepsTheEarliest():
    """
    Closing stops every other deadline; a later, longer close grace does not
    postpone an earlier one; stop() cancels everything.
    """
    clock, expired = Clock(), Expiries()
    deadlines = ConnectionDeadlines(clock, LIMITS, expired)
    deadlines.requestStarted()
    deadlines.bodyStarted()
    deadlines.closing(1.0)
    deadlines.closing(10.0)
    assert deadlines.pending() == {CLOSE_TOO_SLOW}
    clock.advance(1)
    assert expired.kinds == [CLOSE_TOO_SLOW]
    deadlines.dispatched()
    deadlines.stop()
    assert clock.getDelayedCalls() == []


def test_logThrottle():
    """
    One line per interval, reporting how many events it stands for.
    """
    clock = Clock()
    throttle = LogThrottle(clock, interval=10)
    assert [throttle.event() for _ in range(4)] == [1, None, None, None]
    clock.advance(10)
    assert throttle.event() == 4


def test_orchestratorLimitOptions(tmp_path):
    """
    The public port's limit options: defaults, and clear usage errors for
    values that are not positive or budgets that could never hold a largest
    segment.
    """
    import os

    from twisted.python import usage

    from livepeer_tx.orchestrator.tap import Options

    secret = tmp_path / "secret"
    secret.write_text("x\n")
    os.chmod(secret, 0o600)
    base = ["--orchSecret", str(secret), "--serviceAddr", "o.example", "--dataDir", str(tmp_path)]
    options = Options()
    options.parseOptions(base)
    assert [options[name + "Value"] for name in (
        "maxConnections", "maxConnectionsPerAddress", "headerTimeout", "idleTimeout", "minUploadRate",
        "uploadMemory", "uploadMemoryPerAddress")] == [4096, 256, 20.0, 60.0, 16384.0, 1024 ** 3, 320_000_000]
    for bad, message in (
        (["--maxConnections", "0"], "--maxConnections must be a positive"),
        (["--headerTimeout", "soon"], "--headerTimeout must be a positive"),
        (["--uploadMemoryPerAddress", "1000"], "at least --maxSegmentSize"),
        (["--uploadMemory", "300000000", "--uploadMemoryPerAddress", "310000000"], "at least --uploadMemoryPerAddress"),
    ):
        with pytest.raises(usage.UsageError, match=message):
            Options().parseOptions(base + bad)
