"""
Streamed tasks over the transcoder WebSocket (C{transcodeStart},
C{segmentData}, C{segmentEnd}; C{renditionData}, C{resultEnd}), in memory:
the real orchestrator protocol and dispatcher talk to the real transcoder
protocol, link and worker over L{twisted.test.iosim} on a test clock, with
stand-in engines in place of FFmpeg (tests/test_ffmpeg.py runs the real pipe
job).
"""

import pytest
from twisted.internet import defer
from twisted.logger import LogLevel

from livepeer_tx import wsproto
from livepeer_tx.orchestrator.dispatch import SegmentJob, TranscodeFailed
from livepeer_tx.orchestrator.registration import SEGMENT_PIECE_BYTES
from livepeer_tx.profiles import Profile
from livepeer_tx.transcoder.client import TranscoderClientProtocol
from livepeer_tx.transcoder.ffmpeg import StreamedSegment
from memorywire import (  # noqa: F401 (events is a fixture)
    GO_LIVEPEER_TASK_DEADLINE,
    PROFILES,
    AnsweringEngine,
    Harness,
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
