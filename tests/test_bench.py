"""
The benchmark scripts in bench/ import, parse their default arguments and
compute their figures as they say: a benchmark that no longer starts, or
whose statistics or verdicts drifted, would fail here (they are not run).
"""

import importlib
import io
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
SCRIPTS = ["e2e_vs_direct", "grpc_http2", "idle_memory", "orchestrator_overhead"]


@pytest.fixture(scope="module")
def bench():
    """
    Import a bench module by name, with bench/ on C{sys.path} as when the
    scripts run.
    """
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    return importlib.import_module


@pytest.mark.parametrize("name", SCRIPTS)
def test_scriptParsesItsDefaults(bench, name):
    """
    Each benchmark script imports (its helpers from bench/, tests/ and the
    package) and parses an empty command line.
    """
    arguments = bench(name).parseArguments([])
    assert vars(arguments)


def test_statisticsAndVerdicts(bench):
    """
    The median and nearest-rank p50/p99 the benchmarks print, and their
    verdict against a target.
    """
    common = bench("common")
    values = list(range(1, 101))
    assert common.median([3, 1, 2]) == 2 and common.median([]) is None
    assert common.p50p99(values) == (50, 99)
    assert common.verdict(1.0, 2.0) == "ok" and common.verdict(3.0, 2.0) == "MISSED"
    assert common.verdict(None, 2.0).startswith("MISSED")
    assert [p.name for p in common.ladder()] == common.LADDER.split(",")


def test_tableIsAligned(bench):
    """
    printTable pads every column to its widest cell: left-aligned first
    column, right-aligned figures.
    """
    stream = io.StringIO()
    bench("common").printTable(["level", "p50"], [["1 stream", 12], ["8", 3]], stream)
    assert stream.getvalue().splitlines() == ["level     p50", "--------  ---", "1 stream   12", "8           3"]


def test_shapeInMegabits(bench):
    """
    A link shape given in Mbit/s and ms is bytes per second and seconds.
    """
    shape = bench("shaping").Shape.mbit(8, 25)
    assert (shape.rate, shape.delay, shape.enabled) == (1e6, 0.025, True)


def test_fakeTranscoderStreamsItsAnswer(bench):
    """
    The overhead benchmark's fake transcoder, when it takes streamed tasks,
    lists the C{stream} feature, gathers C{segmentData} pieces until
    C{segmentEnd}, and answers with C{renditionData} pieces of at most the
    real transcoder's piece size that rebuild the segment for every profile,
    then a C{resultEnd} the orchestrator's result checks accept. A fake that
    drifted from the protocol would time every segment out, or measure the
    old one-frame path instead.
    """
    from livepeer_tx import wsproto
    from livepeer_tx.orchestrator.registration import parseResult

    common = bench("common")
    sent = []
    transcoder = common.FakeTranscoderProtocol()
    transcoder.factory = type("Factory", (), {"capacity": 2, "echo": True, "stream": True, "workSeconds": {}})()
    transcoder.sendMessage = lambda payload, isBinary=False: sent.append((payload, isBinary))
    transcoder.onOpen()
    assert wsproto.decodeControl(sent.pop()[0])["features"] == [wsproto.FEATURE_STREAM]

    segment = bytes(range(256)) * 1200
    profiles = [{"name": "P240p30fps16x9"}, {"name": "P360p30fps16x9"}]
    transcoder.onMessage(wsproto.encodeControl(
        "transcodeStart", taskId=7, sessionId="s", seq=3, durationMs=2000, profiles=profiles, size=len(segment)), False)
    for at in (0, 100_000):
        piece = segment[at:at + 100_000] if at == 0 else segment[at:]
        transcoder.onMessage(wsproto.encodeMedia({"type": "segmentData", "taskId": 7}, [piece]), True)
    assert sent == []
    transcoder.onMessage(wsproto.encodeControl("segmentEnd", taskId=7), False)

    end = wsproto.decodeControl(sent.pop()[0])
    renditions = [b"", b""]
    for payload, isBinary in sent:
        header, (piece,) = wsproto.decodeMedia(payload)
        assert isBinary and header["type"] == "renditionData" and header["taskId"] == 7
        assert len(piece) <= common.RENDITION_PIECE_BYTES
        renditions[header["rendition"]] += piece
    assert renditions == [segment, segment]
    assert end["type"] == "resultEnd" and end["sizes"] == [len(segment)] * 2
    assert parseResult(end, renditions)[0] == 7
    assert ("s", 3) in transcoder.factory.workSeconds
