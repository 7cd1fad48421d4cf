"""
Streamed tasks over the transcoder WebSocket (C{transcodeStart},
C{segmentData}, C{segmentEnd}; C{renditionData}, C{resultEnd}), in memory:
the real orchestrator protocol and dispatcher talk to the real transcoder
protocol, link and worker over L{twisted.test.iosim} on a test clock, with
stand-in engines in place of FFmpeg (tests/test_ffmpeg.py runs the real pipe
job). Then the gateway hop: a segment posted to the orchestrator's public
port (its L{BoundedSite}, over HTTP/2 or HTTP/1.1) reaches the transcoder as
it arrives.
"""

import h2.errors
import pytest
from eth_utils import keccak
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel

from e2e import segmentHeader, transcodeResult
from livepeer_tx import wsproto
from livepeer_tx.orchestrator.authtoken import AuthTokens
from livepeer_tx.orchestrator.dispatch import ArrivingSegment, SegmentJob, TranscodeFailed, UploadCancelled
from livepeer_tx.orchestrator.ingress import SegmentSubmission
from livepeer_tx.orchestrator.registration import FORWARD_BYTES, SEGMENT_PIECE_BYTES
from livepeer_tx.payments import OffchainPayments
from livepeer_tx.profiles import Profile
from livepeer_tx.proto import lp_rpc_pb2 as pb
from test_public_port import PortClient
from livepeer_tx.transcoder.client import TranscoderClientProtocol
from livepeer_tx.transcoder.ffmpeg import StreamedSegment
from memorywire import (  # noqa: F401 (events is a fixture)
    GO_LIVEPEER_TASK_DEADLINE,
    PROFILES,
    AnsweringEngine,
    Harness,
    SEGMENT,
    HangingEngine,
    events,
    outcome,
    output,
    texts,
)

# Three pieces and a bit: the segment crosses in several segmentData messages.
BIG_SEGMENT = bytes(range(256)) * (3 * SEGMENT_PIECE_BYTES // 256 + 10)


class RecordingEngine(AnsweringEngine):
    """
    Answers at once, recording what each transcode got: the segment as
    L{StreamedSegment} pieces, or as one C{bytes}.
    """

    def __init__(self):
        self.streamed = []
        self.whole = []

    def transcodeStream(self, segment, profiles, onRenditionData, device=None, timeout=None):
        pieces = []
        self.streamed.append(pieces)
        return super().transcodeStream(RecordedSegment(segment, pieces), profiles, onRenditionData, device, timeout)

    def transcode(self, segment, profiles, device=None, timeout=None):
        self.whole.append(segment)
        return super().transcode(segment, profiles, device, timeout)


class RecordedSegment:
    """
    A L{StreamedSegment} whose pieces are also kept in C{pieces}.
    """

    def __init__(self, segment, pieces):
        self._segment = segment
        self._pieces = pieces

    def attach(self, write, end):
        def record(data):
            self._pieces.append(data)
            write(data)

        self._segment.attach(record, end)


class UnstreamedClientProtocol(TranscoderClientProtocol):
    """
    A transcoder from before streamed tasks: its C{register} lists no features.
    """

    def sendMessage(self, payload, isBinary=False):
        if not isBinary and payload.startswith(b'{"capacity"'):
            payload = payload.replace(b',"features":["stream"]', b"")
        super().sendMessage(payload, isBinary)


def transcode(harness, data=BIG_SEGMENT, profiles=PROFILES):
    d = harness.app.dispatcher.transcode(SegmentJob("s", 0, data, profiles, 2000))
    harness.flush()
    return d


def test_streamedTaskRoundTrip():
    """
    A transcoder that lists the C{stream} feature gets an MPEG-TS task
    streamed: the segment arrives in pieces of at most
    L{SEGMENT_PIECE_BYTES} that add up to it, and the renditions it sends
    back piece by piece reach the gateway's side whole, with their counts.
    """
    harness = Harness()
    engine = RecordingEngine()
    transcoder = harness.connect(engine)
    assert transcoder.server.takesStreams
    result = outcome(transcode(harness))
    (pieces,) = engine.streamed
    assert len(pieces) == 4 and max(len(p) for p in pieces) == SEGMENT_PIECE_BYTES
    assert b"".join(pieces) == BIG_SEGMENT
    expected = output(PROFILES)
    assert [(r.name, r.data, r.pixels, r.frames, r.width, r.height) for r in result.renditions] == [
        (e.profile.name, e.data, e.pixels, e.frames, e.width, e.height) for e in expected.renditions]
    assert result.decodedPixels == expected.decodedPixels
    assert transcoder.server._streamedResults == {} and transcoder.client._segments == {}


@pytest.mark.parametrize("protocol, streaming, profiles", [
    (UnstreamedClientProtocol, True, PROFILES),
    (TranscoderClientProtocol, False, PROFILES),
    (TranscoderClientProtocol, True, [PROFILES[0], Profile("mp4ish", 426, 240, 600_000, 30, format="mp4")]),
])
def test_wholeFrameWhenStreamingCannotBeUsed(protocol, streaming, profiles):
    """
    A transcoder that does not list C{stream} (one from before streamed
    tasks, or one run with C{--noStreaming}), or a task with an MP4
    rendition (its muxer needs to seek, a pipe cannot), gets the segment in
    one C{transcode} frame as before, and the answer still arrives.
    """
    harness = Harness()
    engine = RecordingEngine()
    transcoder = harness.connect(engine, protocol=protocol, streaming=streaming)
    assert transcoder.server.takesStreams == (protocol is TranscoderClientProtocol and streaming)
    result = outcome(transcode(harness, profiles=profiles))
    assert engine.streamed == [] and engine.whole == [BIG_SEGMENT]
    assert len(result.renditions) == 2


def test_deadlineCancelsAStreamedTask(events):
    """
    At the task's deadline the orchestrator cancels a streamed task: the
    transcoder's engine is cancelled, both sides forget the task, a late
    C{resultEnd} is dropped, and the gateway gets the timeout error.
    """
    harness = Harness()
    engine = HangingEngine()
    transcoder = harness.connect(engine)
    d = transcode(harness)
    assert len(engine.calls) == 1
    harness.advance(GO_LIVEPEER_TASK_DEADLINE + 0.5, step=0.5)
    assert transcoder.link.worker.pending == 0
    assert isinstance(outcome(d).value, TranscodeFailed)
    assert transcoder.server._streamedResults == {} and transcoder.client._segments == {}
    transcoder.sendText(wsproto.encodeControl("resultEnd", taskId=1, sizes=[]))
    assert transcoder.link.closeCodes == [] and harness.live == [transcoder.address]
    assert not texts(events, LogLevel.critical)


def test_transcoderErrorEndsAStreamedTask():
    """
    An engine that fails while the segment is still arriving: the error goes
    back at once, the rest of the segment is dropped on the transcoder, and
    the connection stays up.
    """
    harness = Harness()
    transcoder = harness.connect(HangingEngine())
    transcoder.client.factory.link.worker._transcoder.transcodeStream = (
        lambda *args, **kwargs: defer.fail(ValueError("broken input")))
    d = transcode(harness)
    assert str(outcome(d).value) == "broken input"
    assert transcoder.server._streamedResults == {} and transcoder.client._segments == {}
    assert transcoder.link.closeCodes == []


@pytest.mark.parametrize("sizes, error", [
    ("short", "resultEnd: sizes differ"),
    ("bad rendition", "has no rendition 2"),
])
def test_streamedResultsAreChecked(sizes, error, events):
    """
    A C{resultEnd} whose sizes are not what arrived, or C{renditionData} for
    a rendition the task does not have, is a protocol error: the transcoder
    is closed with 4002 and leaves the pool.
    """
    harness = Harness()
    liar = harness.connect(HangingEngine())
    transcode(harness)
    data = b"\x47" * 376
    index = 2 if sizes == "bad rendition" else 0
    liar.sendBinary({"type": "renditionData", "taskId": 1, "rendition": index}, [data])
    fields = {"decodedPixels": 1, "decodedFrames": 1, "seconds": 0.1, "renditions": [
        {"name": p.name, "pixels": 1, "frames": 1, "width": p.width, "height": p.height} for p in PROFILES]}
    if liar.client.state == liar.client.STATE_OPEN:
        liar.sendText(wsproto.encodeControl("resultEnd", taskId=1, sizes=[376, 376], **fields))
    assert liar.link.closeCodes == [wsproto.CLOSE_PROTOCOL_ERROR]
    assert harness.live == []
    assert any(error in text for text in texts(events, LogLevel.error))


def test_segmentOverItsDeclaredSizeIsAProtocolError(events):
    """
    An orchestrator that sends more segment bytes than its C{transcodeStart}
    declared breaks the protocol: the transcoder closes with 4002 (and kills
    what runs).
    """
    harness = Harness()
    engine = HangingEngine()
    transcoder = harness.connect(engine)
    transcoder.server.sendMessage(wsproto.encodeControl(
        "transcodeStart", taskId=9, sessionId="s", seq=0, durationMs=2000, size=3,
        profiles=[p.toDict() for p in PROFILES]))
    transcoder.server.sendMessage(wsproto.encodeMedia({"type": "segmentData", "taskId": 9}, [b"four"]),
                                  isBinary=True)
    harness.flush()
    assert transcoder.link.closeCodes and transcoder.client.state == transcoder.client.STATE_CLOSED
    assert "Protocol error from orchestrator: segmentData: segment data over its declared 3 bytes" in texts(
        events, LogLevel.error)
    assert transcoder.link.worker.pending == 0


def test_streamedSegmentWaitsForItsJob():
    """
    Pieces that arrive while a streamed task waits for a slot are kept and
    handed over in order when its job attaches, then the rest as it comes;
    an end short of the declared size is refused, and after a detach
    nothing is handed on.
    """
    segment = StreamedSegment(6)
    segment.write(b"ab")
    segment.write(b"cd")
    got, ends = [], []
    segment.attach(got.append, lambda: ends.append(True))
    assert got == [b"ab", b"cd"] and ends == []
    with pytest.raises(ValueError):
        segment.end()
    segment.write(b"ef")
    segment.end()
    assert got == [b"ab", b"cd", b"ef"] and ends == [True]
    with pytest.raises(ValueError):
        segment.write(b"g")
    late = StreamedSegment()
    late.attach(got.append, lambda: None)
    late.detach()
    late.write(b"dropped")
    assert got[-1] == b"ef"


# The gateway hop.

MAX_SEGMENT_BYTES = 2_000_000
TOKENS = AuthTokens(b"t" * 32)


def rejected(harness, reason):
    return harness.app.metrics.registry.get_sample_value("livepeer_segment_rejected_total", {"reason": reason}) or 0


def dechunk(data):
    """
    The body of an HTTP/1.1 response in chunked transfer coding, as far as
    it arrived.
    """
    body = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        length = int(size, 16)
        body += rest[:length]
        data = rest[length + 2:]
    return body


class Gateway:
    """
    A gateway posting one segment to an orchestrator's public port in
    memory (the site the daemon builds, over HTTP/2 or HTTP/1.1), beside
    the transcoders of a L{Harness} connected to the same orchestrator.
    """

    def __init__(self, harness, protocol=b"h2", hashBodies=True):
        self.harness = harness
        self.protocol = protocol
        public = harness.app.makePublicRoot(harness.clock, harness.secret, OffchainPayments(), MAX_SEGMENT_BYTES,
                                            tokens=TOKENS)
        self.site = public.makeSite(hashBodies=hashBodies, reactor=harness.clock)
        self.client = PortClient(self.site, harness.clock, negotiated=protocol)
        self.token = TOKENS.issue()

    def start(self, body, hash=None, length=True):
        """
        Send the headers of C{POST /segment} for C{body} (whose hash the
        segment header claims is C{hash}, by default its own), declaring its
        length unless told not to (over HTTP/2 only).
        """
        header = segmentHeader(body, authToken=self.token, profiles=tuple(p.name for p in PROFILES), hash=hash)
        headers = [(b"livepeer-segment", header.encode()), (b"livepeer-payment", b""),
                   (b"content-type", b"video/MP2T")]
        if length:
            headers.append((b"content-length", b"%d" % len(body)))
        if self.protocol == b"h2":
            self.streamID = self.client.conn.get_next_available_stream_id()
            self.client.conn.send_headers(self.streamID, [
                (b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"o"), (b":path", b"/segment"),
            ] + headers)
        else:
            self.client.http11(b"POST /segment HTTP/1.1\r\nHost: o\r\n"
                               + b"".join(b"%s: %s\r\n" % header for header in headers) + b"\r\n")

    def send(self, data, end=False):
        """
        Send the next body bytes (the last ones with C{end}), and move
        everything that follows from them.
        """
        if self.protocol == b"h2":
            self.client.sendData(self.streamID, data, endStream=end)
        else:
            self.client.http11(data)
        self.flush()

    def flush(self):
        for _ in range(5):
            if self.protocol == b"h2":
                self.client.pump()
            self.harness.flush()

    def answer(self):
        """
        C{(status, body)} once the answer has ended, else L{None}.
        """
        if self.protocol == b"h2":
            response = self.client.response(self.streamID)
            if not response.ended:
                return None
            return int(response.headers[b":status"]), response.data
        head, _, body = self.client.transport.value().partition(b"\r\n\r\n")
        if not head or not body.endswith(b"0\r\n\r\n"):
            return None
        return int(head.split()[1]), dechunk(body)

    def cancel(self):
        """
        The gateway gives up on its upload (resets its stream).
        """
        self.client.conn.reset_stream(self.streamID, h2.errors.ErrorCodes.CANCEL)
        self.flush()


def received(engine):
    """
    The segment bytes the engine's (only) streamed transcode got so far.
    """
    (pieces,) = engine.streamed
    return b"".join(pieces)


class HeldEngine(RecordingEngine):
    """
    Records what it gets, and answers a streamed transcode only when the
    test says so (L{answer}), after its segment has ended.
    """

    def __init__(self):
        super().__init__()
        self.held = []

    def transcode(self, segment, profiles, device=None, timeout=None):
        d = defer.Deferred()
        self.held.append((d, profiles))
        return d

    def answer(self):
        for d, profiles in self.held:
            d.callback(output(profiles))


@pytest.mark.parametrize("protocol, hashBodies", [(b"h2", True), (b"http/1.1", False)])
def test_gatewayUploadForwardedAsItArrives(protocol, hashBodies):
    """
    A segment posted over HTTP/2 or HTTP/1.1 reaches a streaming transcoder
    while its upload goes on: after part of the body, the transcoder has had
    all of it but at most the L{FORWARD_BYTES} not yet sent, and the
    gateway no answer; after the rest, the transcoder has exactly the
    segment and the gateway a 200 C{TranscodeResult} with every rendition,
    whether the site hashed the body as it came or the pipeline hashes it
    once in.
    """
    harness = Harness(maxSegmentBytes=MAX_SEGMENT_BYTES, clock=MemoryReactorClock())
    engine = RecordingEngine()
    harness.connect(engine)
    gateway = Gateway(harness, protocol, hashBodies)
    half = len(BIG_SEGMENT) // 2
    gateway.start(BIG_SEGMENT)
    gateway.send(BIG_SEGMENT[:half])
    sofar = received(engine)
    assert BIG_SEGMENT.startswith(sofar) and half - FORWARD_BYTES < len(sofar) <= half
    assert gateway.answer() is None
    gateway.send(BIG_SEGMENT[half:], end=True)
    assert received(engine) == BIG_SEGMENT
    status, body = gateway.answer()
    result = transcodeResult(body)
    assert status == 200 and result.error == "" and len(result.data.segments) == len(PROFILES)


def test_badHashCancelsTheStreamedTask(events):
    """
    A body whose keccak-256 is not the one its segment header claims is
    refused with go-livepeer's 403 once it is in, and the task that started
    on it is cancelled: the transcoder is told (its worker lets the task
    go), the dispatcher forgets it, and the metric counts a hash refusal.
    """
    harness = Harness(maxSegmentBytes=MAX_SEGMENT_BYTES, clock=MemoryReactorClock())
    engine = HeldEngine()
    transcoder = harness.connect(engine)
    gateway = Gateway(harness)
    gateway.start(BIG_SEGMENT, hash=keccak(b"another segment"))
    gateway.send(BIG_SEGMENT[:100_000])
    assert transcoder.link.worker.pending == 1
    gateway.send(BIG_SEGMENT[100_000:], end=True)
    assert gateway.answer() == (403, b"Forbidden\n")
    assert transcoder.link.worker.pending == 0 and transcoder.client._segments == {}
    assert harness.app.dispatcher.pendingSegments == 0 and transcoder.server._streamedResults == {}
    assert rejected(harness, "hash") == 1
    assert harness.live == [transcoder.address]


def test_refusedHeadersAnsweredOnceTheBodyIsIn():
    """
    A segment whose headers are refused (a forged auth token) never reaches
    a transcoder, however much of it arrives, and gets go-livepeer's 403
    once its body is in, as when the pipeline started on the whole body.
    """
    harness = Harness(maxSegmentBytes=MAX_SEGMENT_BYTES, clock=MemoryReactorClock())
    engine = RecordingEngine()
    transcoder = harness.connect(engine)
    gateway = Gateway(harness)
    gateway.token = pb.AuthToken(token=keccak(b"guess"), session_id=gateway.token.session_id,
                                 expiration=gateway.token.expiration)
    gateway.start(BIG_SEGMENT)
    gateway.send(BIG_SEGMENT[:300_000])
    assert gateway.answer() is None and transcoder.link.worker.pending == 0
    gateway.send(BIG_SEGMENT[300_000:], end=True)
    assert gateway.answer() == (403, b"invalid auth token\n")
    assert engine.streamed == [] and engine.whole == [] and rejected(harness, "auth token") == 1


def test_bodyRefusedMidUploadCancelsTheTask(events):
    """
    A segment of undeclared length that the port refuses once it passes the
    size limit (413) had its task started, with no size in its
    C{transcodeStart}: the refusal cancels it, and the transcoder is told.
    """
    harness = Harness(maxSegmentBytes=MAX_SEGMENT_BYTES, clock=MemoryReactorClock())
    engine = HeldEngine()
    transcoder = harness.connect(engine)
    gateway = Gateway(harness)
    body = BIG_SEGMENT * 3
    gateway.start(body, length=False)
    gateway.send(body[:300_000])
    assert transcoder.link.worker.pending == 1 and received(engine) == body[:len(received(engine))]
    gateway.send(body[300_000:])
    status, text = gateway.answer()
    assert status == 413 and text.startswith(b"request body larger than")
    assert transcoder.link.worker.pending == 0 and harness.app.dispatcher.pendingSegments == 0
    assert rejected(harness, "cancelled") == 1


def test_gatewayGoneMidUploadCancelsTheTask(events):
    """
    A gateway that resets its stream halfway through the upload cancels
    the task it started: the transcoder is told, nothing stays in flight,
    the metric counts a cancelled upload, and the transcoder takes the next
    segment.
    """
    harness = Harness(maxSegmentBytes=MAX_SEGMENT_BYTES, clock=MemoryReactorClock())
    engine = HeldEngine()
    transcoder = harness.connect(engine)
    gateway = Gateway(harness)
    gateway.start(BIG_SEGMENT)
    gateway.send(BIG_SEGMENT[:100_000])
    assert transcoder.link.worker.pending == 1
    gateway.cancel()
    assert transcoder.link.worker.pending == 0 and transcoder.client._segments == {}
    assert harness.app.dispatcher.pendingSegments == 0 and transcoder.server._streamedResults == {}
    assert rejected(harness, "cancelled") == 1
    again = Gateway(harness)
    again.start(SEGMENT)
    again.send(SEGMENT, end=True)
    engine.answer()
    harness.flush()
    again.flush()
    assert again.answer()[0] == 200


def test_transcoderLostMidUploadRetriesWithTheWholeSegment():
    """
    The transcoder that took a streamed task goes away halfway through the
    upload: the task moves to the other one, which gets the bytes kept so
    far and then the rest, so the whole segment, and the gateway its
    renditions.
    """
    harness = Harness(maxSegmentBytes=MAX_SEGMENT_BYTES, clock=MemoryReactorClock())
    engines = [RecordingEngine(), RecordingEngine()]
    transcoders = [harness.connect(engine) for engine in engines]
    gateway = Gateway(harness)
    gateway.start(BIG_SEGMENT)
    gateway.send(BIG_SEGMENT[:300_000])
    [(first, victim)] = [(e, t) for e, t in zip(engines, transcoders) if e.streamed]
    assert len(received(first)) > 0
    victim.pump.clientIO.loseConnection()
    gateway.flush()
    [second] = [e for e in engines if e is not first]
    assert BIG_SEGMENT.startswith(received(second)) and len(received(second)) >= len(received(first))
    gateway.send(BIG_SEGMENT[300_000:], end=True)
    assert received(second) == BIG_SEGMENT
    status, body = gateway.answer()
    assert status == 200 and len(transcodeResult(body).data.segments) == len(PROFILES)


def test_wholeSegmentTranscoderGetsItOnceIn():
    """
    A transcoder that takes no streamed tasks gets nothing while the
    segment arrives, then the whole segment in one C{transcode} frame.
    """
    harness = Harness(maxSegmentBytes=MAX_SEGMENT_BYTES, clock=MemoryReactorClock())
    engine = RecordingEngine()
    harness.connect(engine, streaming=False)
    gateway = Gateway(harness)
    gateway.start(BIG_SEGMENT)
    gateway.send(BIG_SEGMENT[:300_000])
    assert engine.whole == [] and engine.streamed == []
    gateway.send(BIG_SEGMENT[300_000:], end=True)
    assert engine.whole == [BIG_SEGMENT] and engine.streamed == []
    assert gateway.answer()[0] == 200


@pytest.mark.parametrize("matches", [True, False])
def test_renditionsHeldUntilTheHashMatched(matches):
    """
    The pipeline with a digest computed elsewhere (as on the hashing
    threads): the transcoder may be done before the digest is, but nothing
    is stored or answered, and the upload is not accepted, until it is;
    then a matching digest releases the renditions and a wrong one gets
    403 with nothing stored.
    """
    harness = Harness(maxSegmentBytes=MAX_SEGMENT_BYTES, clock=MemoryReactorClock())
    engine = RecordingEngine()
    harness.connect(engine)
    gateway = Gateway(harness)
    service = gateway.site.resource.children[b"segment"].service
    arriving = ArrivingSegment(len(BIG_SEGMENT))
    header = segmentHeader(BIG_SEGMENT, authToken=gateway.token, profiles=tuple(p.name for p in PROFILES))
    submission = SegmentSubmission(header, "", arriving, "192.0.2.7")
    accepted = []
    answer = defer.Deferred.fromCoroutine(service.process(submission, lambda: accepted.append(True)))
    arriving.write(BIG_SEGMENT)
    submission.bodyDigest = digest = defer.Deferred()
    arriving.end()
    harness.flush()
    assert received(engine) == BIG_SEGMENT
    assert not answer.called and accepted == [] and len(harness.app.store) == 0
    digest.callback(keccak(BIG_SEGMENT) if matches else keccak(b"other"))
    status = outcome(answer).status
    assert (status, accepted, len(harness.app.store)) == ((200, [True], 2) if matches else (403, [], 0))


def test_arrivingSegmentKeepsWhatArrived():
    """
    An arriving segment hands a late follower everything so far, then the
    rest and its end; a follower let go of gets nothing more; cancelling it
    (even once in) drops its bytes and fails whoever waits for its end.
    """
    segment = ArrivingSegment(6)
    segment.write(b"ab")
    early = RecordingFollower()
    segment.follow(early)
    segment.write(b"cd")
    late = RecordingFollower()
    segment.follow(late)
    segment.unfollow(early)
    waiting = segment.whenEnded()
    segment.write(b"ef")
    segment.end()
    assert (early.data, early.ended, late.data, late.ended) == (b"abcd", False, b"abcdef", True)
    assert segment.data == b"abcdef" and segment.received == 6 and outcome(waiting) is segment
    segment.cancel()
    assert segment.aborted and outcome(segment.cancelled) is None
    with pytest.raises(ValueError):
        segment.data
    cancelled = ArrivingSegment()
    waiting = cancelled.whenEnded()
    cancelled.cancel()
    cancelled.write(b"late")
    outcome(waiting).trap(UploadCancelled)


@pytest.mark.parametrize("declared", [None, 700_000, 300_000], ids=["unknown", "declared", "outgrown"])
def test_arrivingSegmentKeepsEveryByteHoweverItIsHeld(declared):
    """
    Whether the size was declared (the bytes go into a memory map of that
    size), unknown, or outgrown by the bytes that came (the map's bytes then
    join the pieces), a late follower and the whole segment get exactly the
    bytes that arrived, in order; the replay to a late follower comes in
    pieces of at most C{REPLAY_PIECE_BYTES}.
    """
    pieces = [bytes([n % 251]) * 65_536 for n in range(10)] + [b"tail"]
    segment = ArrivingSegment(declared)
    for piece in pieces[:7]:
        segment.write(piece)
    late = RecordingFollower()
    late.sizes = []
    late.write = lambda data: (late.sizes.append(len(data)), setattr(late, "data", late.data + bytes(data)))
    segment.follow(late)
    for piece in pieces[7:]:
        segment.write(piece)
    segment.end()
    whole = b"".join(pieces)
    assert late.data == whole and late.ended
    assert max(late.sizes) <= ArrivingSegment.REPLAY_PIECE_BYTES
    assert segment.data == whole and segment.received == len(whole)


class RecordingFollower:
    """
    Follows an L{ArrivingSegment}: what it was handed, and whether it ended.
    """

    def __init__(self):
        self.data = b""
        self.ended = False

    def write(self, data):
        self.data += data

    def end(self):
        self.ended = True
