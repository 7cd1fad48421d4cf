"""
Drain, graceful stop and capacity at run time, in memory: the drain itself
on a test clock, the orchestrator's drain and health, a transcoder that
drains over the real protocols (L{twisted.test.iosim}), capacity changes
reported to the orchestrator, and the CLI port's actions.
"""

import json

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web.error import UnsupportedMethod
from twisted.web.test.requesthelper import DummyRequest

from livepeer_tx import wsproto
from livepeer_tx.admin import CROSS_SITE_REFUSED, ActionResource, HealthResource, parseMaxSessions
from livepeer_tx.lifecycle import Drain
from livepeer_tx.orchestrator.app import RENDITION_PICKUP_SECONDS
from livepeer_tx.orchestrator.routing import RETIRING_DRAIN
from livepeer_tx.signals import GracefulStop
from livepeer_tx.transcoder import tap as transcoderTap
from livepeer_tx.transcoder.client import TranscoderClientProtocol
from livepeer_tx.transcoder.worker import TranscodeWorker

from memorywire import (  # noqa: F401 (events is a fixture)
    PROFILES, Harness, HangingEngine, events, outcome, output, texts,
)


class Target:
    """
    A drain target whose work the test sets.
    """

    def __init__(self):
        self.work = 0
        self.draining = None

    def startDraining(self):
        self.draining = True

    def stopDraining(self):
        self.draining = False

    def isDrained(self):
        return self.work == 0

    def describeWork(self):
        return f"{self.work} thing(s)"


def fired(d):
    results = []
    d.addBoth(results.append)
    return results


def test_drainWaitsForTheWorkThenFires(events):
    """
    A drain tells its target, fires with True once the target has no work,
    and a later start fires at once with the same outcome.
    """
    clock, target = Clock(), Target()
    target.work = 2
    drain = Drain(clock, target, timeout=30)
    outcomeOf = fired(drain.start("test"))
    assert target.draining and drain.active and outcomeOf == []
    clock.advance(5)
    target.work = 0
    clock.advance(0.1)
    assert outcomeOf == [True] and drain.drained
    assert fired(drain.start("again")) == [True]
    assert any("Draining (test): no new work; waiting for 2 thing(s)" in t for t in texts(events))
    assert any("Drained in 5.1 s" in t for t in texts(events))


def test_drainTimesOutAndCanBeResumedUnlessFinal(events):
    """
    A drain whose work does not end fires with False at its timeout; a
    resumed drain gives the target its work back; a final one (before a
    stop) cannot be resumed.
    """
    clock, target = Clock(), Target()
    target.work = 1
    drain = Drain(clock, target, timeout=10)
    outcomeOf = fired(drain.start("test"))
    clock.advance(9.9)
    assert outcomeOf == []
    clock.advance(0.2)
    assert outcomeOf == [False]
    assert any("Drain timed out after 10 s with 1 thing(s) left" in t for t in texts(events, LogLevel.warn))
    assert drain.resume() and target.draining is False and not drain.active
    pending = fired(drain.start("again"))
    assert drain.resume() and pending == [False]
    drain.start("stop", final=True)
    assert not drain.resume() and drain.active and target.draining


class StoppingReactor:
    """
    Records C{stop} calls.
    """

    def __init__(self):
        self.stops = 0

    def stop(self):
        self.stops += 1


def test_gracefulStopDrainsFirstAndASecondSignalStopsAtOnce():
    """
    The first stop signal waits for the drain; a second one does not.
    """
    clock, target, reactor = Clock(), Target(), StoppingReactor()
    target.work = 1
    graceful = GracefulStop(reactor, Drain(clock, target, timeout=60))
    graceful.stop("SIGTERM")
    clock.advance(1)
    assert reactor.stops == 0 and target.draining
    target.work = 0
    clock.advance(0.1)
    assert reactor.stops == 1
    other = GracefulStop(reactor, Drain(Clock(), Target(), timeout=60))
    other._drain._target.work = 1
    other.stop("SIGTERM")
    other.stop("SIGTERM")
    assert reactor.stops == 2


# --- the orchestrator -------------------------------------------------------------------------------


def get(resource, headers=None):
    request = DummyRequest([b""])
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    body = resource.render(request)
    return request.responseCode or 200, body


def post(resource, fields=None, headers=None):
    request = DummyRequest([b""])
    request.method = b"POST"
    request.args = {k.encode(): [v.encode()] for k, v in (fields or {}).items()}
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    body = resource.render(request)
    return request.responseCode or 200, body


def test_orchestratorDrainFinishesSegmentsInFlightAndRefusesNewSessions(events):
    """
    While draining, the orchestrator admits no session (GetOrchestrator and
    segments see a capped pool), C{/healthz} answers 503 and C{/status}
    says so; a segment in flight is answered, and the drain ends once its
    renditions are downloaded.
    """
    harness = Harness()
    engine = HangingEngine()
    harness.connect(engine)
    app = harness.app
    app.drain = Drain(harness.clock, app, timeout=60)
    health = HealthResource(lambda: app.draining)
    assert get(health) == (200, b"{}\n")
    app.segmentStarted()
    inFlight = harness.transcode("stream")
    drainOutcome = fired(app.drain.start("SIGTERM"))
    assert app.draining and app.pool.wouldExceedLimit("stream") and app.pool.wouldExceedLimit("new")
    assert get(health) == (503, b'{"Draining": true}\n')
    assert app.publicStatus()["AcceptingWork"] is False and app.fullStatus()["SegmentsInFlight"] == 1
    harness.advance(2.0)
    assert drainOutcome == []
    engine.calls[0].callback(output(PROFILES))
    harness.flush()
    assert not isinstance(outcome(inFlight), Failure)
    app.store.put("stream", "P240p30fps16x9/0.ts", b"\x47" * 376, "video/mp2t")
    app.segmentEnded()
    harness.advance(1.0)
    assert drainOutcome == [], "the renditions are not downloaded yet"
    assert app.store.fetch("stream", "P240p30fps16x9/0.ts") is not None
    harness.advance(0.2)
    assert drainOutcome == [True] and app.fullStatus()["Drained"] is True


def test_orchestratorDrainGivesUpOnDownloadsAfterThePickupTime():
    """
    Renditions nobody downloads hold the drain for the pickup time only.
    """
    harness = Harness()
    app = harness.app
    app.drain = Drain(harness.clock, app, timeout=60)
    app.segmentStarted()
    app.store.put("stream", "P240p30fps16x9/0.ts", b"\x47" * 376, "video/mp2t")
    app.segmentEnded()
    drainOutcome = fired(app.drain.start("test"))
    harness.advance(RENDITION_PICKUP_SECONDS - 0.5)
    assert drainOutcome == []
    harness.advance(1.0)
    assert drainOutcome == [True]


def test_orchestratorCliActions(events):
    """
    C{POST /setMaxSessions} takes a number or C{auto} (go-livepeer's form
    field), C{POST /drain} and C{POST /resume} act on the drain; bad input
    gets 400, a browser's cross-site request 403, and a GET 405.
    """
    harness = Harness()
    harness.connect(capacity=3)
    app = harness.app
    app.drain = Drain(harness.clock, app, timeout=60)
    root = app.makeCLIRoot(harness.clock, monitor=False)
    setMax = root.children[b"setMaxSessions"]
    assert post(setMax, {"maxSessions": "2"})[0] == 200
    assert app.pool.sessionLimit == 2 and app.fullStatus()["MaxSessions"] == 2
    code, body = post(setMax, {"maxSessions": "auto"})
    assert code == 200 and app.pool.maxSessions is None and b"session limit 3" in body
    for bad in ("0", "-1", "lots", "", "1" * 12):
        code, body = post(setMax, {"maxSessions": bad})
        assert code == 400 and b"maxSessions must be 'auto' or a whole number" in body
    assert post(setMax)[0] == 400
    assert post(setMax, {"maxSessions": "5"}, {"Origin": "https://evil.example"}) == (
        403, CROSS_SITE_REFUSED.encode() + b"\n")
    assert post(setMax, {"maxSessions": "5"}, {"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert app.pool.maxSessions is None
    request = DummyRequest([b""])
    request.method = b"GET"
    with pytest.raises(UnsupportedMethod) as refused:
        setMax.render(request)
    assert refused.value.allowedMethods == (b"POST",)
    assert post(root.children[b"resume"]) == (400, b"not draining\n")
    code, body = post(root.children[b"drain"])
    assert code == 200 and json.loads(body)["Draining"] is True and app.draining
    code, body = post(root.children[b"resume"])
    assert code == 200 and not app.draining and json.loads(body)["Draining"] is False
    assert any("maxSessions set to 2 by the CLI port" in t for t in texts(events))


def test_parseMaxSessions():
    """
    A transcoder's capacity is a whole number; an orchestrator's may be auto.
    """
    assert parseMaxSessions(" 7 ", allowAuto=False) == 7
    assert parseMaxSessions("auto", allowAuto=True) is None
    for bad in ("auto", "0", "1.5", "٣"):
        try:
            parseMaxSessions(bad, allowAuto=False)
        except Exception as e:
            assert "whole number" in str(e)
        else:
            raise AssertionError(bad)


# --- transcoders ------------------------------------------------------------------------------------


def test_transcoderDrainFinishesItsTaskAndClosesCleanly(events):
    """
    A draining transcoder tells the orchestrator, which sends it no more
    segments (its session moves to another transcoder) and acknowledges;
    the transcoder answers the segment it holds, then closes with 4003 and
    does not reconnect.
    """
    harness = Harness()
    engine = HangingEngine()
    leaving = harness.connect(engine)
    leavingAddress = leaving.address
    inFlight = harness.transcode("stream")
    staying = harness.connect(capacity=2)
    assert leaving.link.taskIds and wsproto.FEATURE_DRAIN in leaving.link.orchestratorFeatures
    leaving.link.startDraining()
    harness.flush()
    assert leaving.server.transcoder.retiring == RETIRING_DRAIN
    assert leaving.link._drainAcknowledged and not leaving.link.isDrained()
    assert leaving.link.closeCodes == []
    assert outcome(harness.transcode("another")).transcoder == staying.address
    engine.calls[0].callback(output(PROFILES))
    harness.flush()
    answer = outcome(inFlight)
    assert not isinstance(answer, Failure) and answer.transcoder == leavingAddress
    harness.advance(1.0)
    assert len(leaving.link.closeCodes) == 1 and leaving.link.scheduled == []
    assert leaving.link.isDrained() and harness.live == [staying.address]
    assert outcome(harness.transcode("stream")).transcoder == staying.address
    logged = texts(events)
    assert any("Transcoder=10.0.0.1:40000 is draining" in t for t in logged)
    assert any("eof, removing from live transcoders map (code=4003 reason=transcoder draining)" in t
               for t in logged)


def test_transcoderDrainWithAnOrchestratorThatDoesNotKnowIt():
    """
    An orchestrator that lists no C{drain} feature gets no drain message
    (it would take it for a protocol error): the transcoder closes once idle.
    """
    harness = Harness()
    engine = HangingEngine()
    leaving = harness.connect(engine)
    harness.transcode()
    leaving.link.orchestratorFeatures = frozenset()
    leaving.link.startDraining()
    harness.flush()
    assert leaving.server.transcoder.retiring is None and leaving.link.closeCodes == []
    engine.calls[0].callback(output(PROFILES))
    harness.advance(1.0)
    assert len(leaving.link.closeCodes) == 1 and leaving.link.isDrained() and harness.live == []


def test_capacityChangeReachesTheOrchestrator(events):
    """
    A transcoder's new capacity goes to the orchestrator, which routes by it
    and shows it in C{/status}; a capacity out of range is a protocol error.
    """
    harness = Harness()
    first = harness.connect(capacity=1)
    harness.connect(capacity=1)
    first.link.setCapacity(4)
    harness.flush()
    assert first.server.transcoder.capacity == 4 and first.link.worker.maxSessions == 4
    status = harness.app.fullStatus()
    assert status["TotalCapacity"] == 5 and status["SessionLimit"] == 5
    assert sorted(t["capacity"] for t in status["transcoders"]) == [1, 4]
    assert any("changed its capacity from 1 to 4" in t for t in texts(events))
    first.sendText(wsproto.encodeControl("capacity", capacity=0))
    assert first.link.closeCodes == [wsproto.CLOSE_PROTOCOL_ERROR] and len(harness.live) == 1


def test_workerCapacityChangesWhileSegmentsRun():
    """
    A higher capacity starts queued segments at once; a lower one lets the
    running ones finish and holds the queue to the new limit.
    """
    engine = HangingEngine()
    worker = TranscodeWorker(engine, 1)
    tasks = [worker.run(i, "s", b"x", PROFILES) for i in range(4)]
    assert (worker.running, worker.queued) == (1, 3)
    worker.setCapacity(3)
    assert (worker.running, worker.queued) == (3, 1)
    worker.setCapacity(1)
    engine.calls[0].callback(output(PROFILES))
    engine.calls[1].callback(output(PROFILES))
    assert (worker.running, worker.queued) == (1, 1)
    engine.calls[2].callback(output(PROFILES))
    assert (worker.running, worker.queued) == (1, 0) and worker.pending == 1
    tasks[3].cancel()
    assert worker.pending == 0 and worker.running == 0


def test_transcoderCliSetMaxSessions():
    """
    The transcoder's C{POST /setMaxSessions} takes a whole number (not
    C{auto}) and shows it in C{/status}.
    """
    config = {"capacity": 2, "orchHost": "orch.example", "orchPort": 8935}
    node = transcoderTap.TranscoderNode(Clock(), config, None, None)
    node.drain = Drain(Clock(), node, timeout=10)
    action = ActionResource(lambda fields: transcoderTap._setMaxSessionsAction(node, fields))
    assert post(action, {"maxSessions": "6"}) == (200, b"maxSessions set to 6\n")
    assert node.status()["MaxSessions"] == 6
    assert post(action, {"maxSessions": "auto"})[0] == 400 and node.capacity == 6


def test_segmentsDuringADrain(events):
    """
    Through the segment pipeline: a segment taken before the drain counts
    as in flight until answered, and is answered with its renditions; a
    segment arriving during the drain gets 503 C{OrchestratorCapped} before
    anything else, so a gateway sends it to another orchestrator.
    """
    from test_ingress import answer, post, response, transcodeResult, withTranscoder

    app, resource, link = withTranscoder()
    app.drain = Drain(app.clock, app, timeout=60)
    taken = post(resource, manifestId=b"stream-a")
    assert app.segmentsInFlight == 1 and app.fullStatus()["SegmentsInFlight"] == 1
    drainOutcome = fired(app.drain.start("POST /drain"))
    refused = post(resource, manifestId=b"stream-a", seq=1)
    assert response(refused) == (503, b"OrchestratorCapped\n")
    assert response(post(resource, manifestId=b"stream-b")) == (503, b"OrchestratorCapped\n")
    assert app.metrics.segmentsRejected.labels(reason="draining")._value.get() == 2
    assert len(link.tasks) == 1 and app.segmentsInFlight == 1
    answer(app, link)
    status, body = response(taken)
    assert status == 200 and len(transcodeResult(body).data.segments) == 1
    assert app.segmentsInFlight == 0
    for segment in transcodeResult(body).data.segments:
        sessionId, name = segment.url.split("/stream/", 1)[1].split("/", 1)
        assert app.store.fetch(sessionId, name) is not None
    app.clock.advance(0.1)
    assert drainOutcome == [True]


def test_unitsReloadAndOutlastTheDrain():
    """
    Both systemd units send SIGHUP for C{systemctl reload}, and give a stop
    more time than the default drain; every option of both daemons is in
    its man page.
    """
    import os
    import re

    from livepeer_tx.orchestrator import tap as orchestratorTap

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name, tap in (("orchestrator", orchestratorTap), ("transcoder", transcoderTap)):
        with open(os.path.join(root, "etc", "systemd", f"livepeer-{name}.service")) as f:
            unit = f.read()
        assert re.search(r"^ExecReload=/bin/kill -HUP \$MAINPID$", unit, re.M)
        stopSeconds = int(re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.M).group(1))
        assert stopSeconds >= tap.DEFAULT_DRAIN_SECONDS + 10
        with open(os.path.join(root, "man", f"livepeer-{name}.1")) as f:
            manPage = f.read().replace("\\-", "-")
        options = {option.rstrip("=") for option in tap.Options().longOpt} - {"help"}
        assert sorted(o for o in options if f"--{o}" not in manPage) == []


class DrainStartsDuringTheHandshake(TranscoderClientProtocol):
    """
    A transcoder whose drain started while its WebSocket was being opened.
    """

    def onOpen(self):
        self.factory.link.draining = True
        super().onOpen()


def test_drainDuringTheOpeningHandshakeClosesWithoutRegistering():
    """
    A drain that starts while the WebSocket is being opened closes it as
    soon as it opens, without registering, so the drain completes.
    """
    harness = Harness()
    transcoder = harness.connect(protocol=DrainStartsDuringTheHandshake)
    harness.advance(1.0)
    assert harness.live == [] and transcoder.server.transcoder is None
    assert len(transcoder.link.closeCodes) == 1 and transcoder.link.scheduled == []
    assert transcoder.link.isDrained()
