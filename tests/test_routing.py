"""
Routing and dispatch logic, in memory, with a fake clock and fake links.
"""

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from livepeer_tx.orchestrator.dispatch import (
    MAX_TASK_SECONDS, Dispatcher, Rendition, SegmentJob, TranscodeFailed,
)
from livepeer_tx.orchestrator.routing import RemoteTranscoder, RoutingError, TranscoderPool
from livepeer_tx.profiles import PRESETS


class FakeLink:
    """
    Records what the dispatcher sends to a transcoder.
    """

    def __init__(self):
        self.sent = []
        self.cancelled = []
        self.ended = []

    def sendTask(self, taskId, job):
        self.sent.append((taskId, job))

    def cancelTask(self, taskId):
        self.cancelled.append(taskId)

    def endSession(self, sessionId):
        self.ended.append(sessionId)


def makePool(*capacities, maxSessions=None):
    clock = Clock()
    pool = TranscoderPool(clock, sessionIdleTimeout=70, maxSessions=maxSessions)
    transcoders = []
    for i, capacity in enumerate(capacities):
        t = RemoteTranscoder(f"10.0.0.{i}:1", capacity, link=FakeLink())
        pool.add(t)
        transcoders.append(t)
    return clock, pool, transcoders


def test_noTranscoders():
    """
    Without transcoders, go-livepeer's error.
    """
    _, pool, _ = makePool()
    with pytest.raises(RoutingError, match="no transcoders available"):
        pool.select("s")


def test_spreadByRelativeLoadAndCapacityTieBreak():
    """
    Sessions go to the lowest load/capacity, the bigger transcoder winning a
    tie, and never beyond capacity.
    """
    _, pool, (small, medium, large) = makePool(1, 2, 3)
    chosen = [pool.select(f"s{i}") for i in range(6)]
    assert chosen[0] is large and chosen[1] is medium and chosen[2] is small
    assert [t.load for t in (small, medium, large)] == [1, 2, 3]
    with pytest.raises(RoutingError, match="OrchestratorCapped"):
        pool.select("s6")


def test_capacityNeverExceededWithFixedCap():
    """
    With a fixed --maxSessions above the capacity sum, a full pool says no
    transcoders available rather than overloading one.
    """
    _, pool, (t,) = makePool(2, maxSessions=10)
    pool.select("a")
    pool.select("b")
    with pytest.raises(RoutingError, match="no transcoders available"):
        pool.select("c")
    assert t.load == 2


def test_affinityAndReleaseOnLoss():
    """
    A session stays on its transcoder; when that one goes, the session moves.
    """
    _, pool, (a, b) = makePool(2, 2)
    first = pool.select("s")
    assert all(pool.select("s") is first for _ in range(5))
    assert first.load == 1
    orphaned = pool.remove(first)
    assert orphaned == {"s"}
    other = a if first is b else b
    assert pool.select("s") is other


def test_idleSessionsExpire():
    """
    A session unused for the idle timeout is released.
    """
    clock, pool, (t,) = makePool(1)
    pool.select("s")
    clock.advance(69)
    assert pool.expireIdleSessions() == []
    clock.advance(2)
    assert pool.expireIdleSessions() == [("s", t)]
    assert t.load == 0


def job(session="s", seq=0, profiles=("P240p30fps16x9",)):
    return SegmentJob(session, seq, b"x" * 100, [PRESETS[p] for p in profiles], 2000)


def rendition():
    return Rendition("P240p30fps16x9", b"y" * 100, pixels=60 * 426 * 240)


def test_dispatchSuccess():
    """
    A result for the task fires the gateway's Deferred.
    """
    clock, pool, (t,) = makePool(1)
    dispatcher = Dispatcher(pool, clock)
    d = dispatcher.transcode(job())
    (taskId, sent), = t.link.sent
    assert t.tasksInFlight == 1
    dispatcher.taskSucceeded(taskId, [rendition()], 123)
    result = self_result(d)
    assert result.renditions[0].pixels == 60 * 426 * 240 and result.attempts == 1
    assert t.tasksInFlight == 0


def self_result(d):
    results = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    return results[0]


def test_transcoderLostMidSegmentRetriesElsewhere():
    """
    A transcoder that disconnects while holding a task: the task is sent to
    another transcoder and the gateway gets that result.
    """
    clock, pool, (a, b) = makePool(1, 1)
    dispatcher = Dispatcher(pool, clock)
    d = dispatcher.transcode(job())
    holder = a if a.link.sent else b
    other = b if holder is a else a
    dispatcher.transcoderLost(holder)
    (taskId, _), = other.link.sent
    dispatcher.taskSucceeded(taskId, [rendition()], 1)
    result = self_result(d)
    assert result.attempts == 2 and result.transcoder == other.address


def test_timeoutCancelsAndFails():
    """
    A task not answered within the deadline fails with go-livepeer's words and
    is cancelled on the transcoder; a late result is dropped.
    """
    clock, pool, (t,) = makePool(1)
    dispatcher = Dispatcher(pool, clock)
    d = dispatcher.transcode(job())
    clock.advance(8.1)
    failure = self_result(d)
    assert failure.check(TranscodeFailed) and str(failure.value) == "Remote transcoder took too long"
    (taskId, _), = t.link.sent
    assert t.link.cancelled == [taskId]
    dispatcher.taskSucceeded(taskId, [rendition()], 1)  # late: ignored
    assert t.load == 0


def test_mismatchedAndZeroSegments():
    """
    A result with the wrong number of renditions, or a tiny one, is refused.
    """
    clock, pool, (t,) = makePool(1)
    dispatcher = Dispatcher(pool, clock)
    d = dispatcher.transcode(job(profiles=("P240p30fps16x9", "P360p30fps16x9")))
    (taskId, _), = t.link.sent
    dispatcher.taskSucceeded(taskId, [rendition()], 1)
    assert str(self_result(d).value) == "MismatchedSegments"
    d = dispatcher.transcode(job(seq=1))
    taskId = t.link.sent[-1][0]
    dispatcher.taskSucceeded(taskId, [Rendition("P240p30fps16x9", b"tiny", 1)], 1)
    assert str(self_result(d).value) == "ZeroSegments"


def test_perSessionQueueBoundAndOrder():
    """
    A session's segments run one at a time; past the bound, OrchestratorBusy.
    """
    clock, pool, (t,) = makePool(1)
    dispatcher = Dispatcher(pool, clock, maxQueuedPerSession=2)
    first = dispatcher.transcode(job(seq=0))
    second = dispatcher.transcode(job(seq=1))
    third = dispatcher.transcode(job(seq=2))
    assert str(self_result(third).value) == "OrchestratorBusy"
    assert len(t.link.sent) == 1
    dispatcher.taskSucceeded(t.link.sent[0][0], [rendition()], 1)
    self_result(first)
    assert len(t.link.sent) == 2 and t.link.sent[1][1].seq == 1
    dispatcher.taskSucceeded(t.link.sent[1][0], [rendition()], 1)
    self_result(second)


def test_transcoderErrorRetriedElsewhereAndBlamed():
    """
    An error the transcoder reports is retried on another transcoder; the
    gateway gets that result, and the failing transcoder is blamed (its
    failure is confirmed by the success elsewhere).
    """
    clock, pool, (a, b) = makePool(1, 1)
    dispatcher = Dispatcher(pool, clock)
    d = dispatcher.transcode(job())
    holder = a if a.link.sent else b
    other = b if holder is a else a
    dispatcher.taskFailed(holder.link.sent[0][0], "Invalid data found when processing input")
    (taskId, _), = other.link.sent
    dispatcher.taskSucceeded(taskId, [rendition()], 1)
    result = self_result(d)
    assert result.attempts == 2 and result.transcoder == other.address
    assert holder.health.consecutiveFailures == 1 and other.health.consecutiveFailures == 0
    assert pool.failureTotals["error"] == 1
    assert pool.select("s") is other  # the session moved with the retry


def test_errorOfTheOnlyTranscoderGoesToTheGatewayUnblamed():
    """
    With no other transcoder, the transcoder's error goes to the gateway as
    is; nothing confirms it is the transcoder's fault, so it is not blamed.
    """
    clock, pool, (t,) = makePool(1)
    dispatcher = Dispatcher(pool, clock)
    d = dispatcher.transcode(job())
    dispatcher.taskFailed(t.link.sent[0][0], "Invalid data found when processing input")
    assert str(self_result(d).value) == "Invalid data found when processing input"
    assert t.health.consecutiveFailures == 0 and t.load == 0


def test_badInputCannotPutGoodTranscodersOutOfRotation():
    """
    The attack: a gateway sends segments that fail on every transcoder. Each
    is tried at most twice, nobody is blamed, and a good segment afterwards
    is served at once.
    """
    clock, pool, transcoders = makePool(1, 1, 1)
    dispatcher = Dispatcher(pool, clock)
    for seq in range(10):
        d = dispatcher.transcode(job(session=f"bad-{seq}", seq=seq))
        for _ in range(2):
            (taskId, holder), = [(t.link.sent[-1][0], t) for t in transcoders if t.tasksInFlight]
            dispatcher.taskFailed(taskId, "Invalid data found when processing input")
        assert str(self_result(d).value) == "Invalid data found when processing input"
    assert sum(len(t.link.sent) for t in transcoders) == 20
    assert all(t.health.consecutiveFailures == 0 for t in transcoders) and pool.coolingOffCount == 0
    d = dispatcher.transcode(job(session="good"))
    (taskId, _), = [(t.link.sent[-1][0], t) for t in transcoders if t.tasksInFlight]
    dispatcher.taskSucceeded(taskId, [rendition()], 1)
    assert self_result(d).attempts == 1


class ScriptedLink(FakeLink):
    """
    A stand-in transcoder that answers every task at once: with renditions,
    or with an error when it is broken.
    """

    def __init__(self, broken):
        super().__init__()
        self.broken = broken
        self.dispatcher = None

    def sendTask(self, taskId, job):
        super().sendTask(taskId, job)
        if self.broken:
            self.dispatcher.taskFailed(taskId, "No space left on device")
        else:
            self.dispatcher.taskSucceeded(taskId, [rendition() for _ in job.profiles], 1)


def test_failingTranscoderDoesNotCaptureNewSessions():
    """
    The attack of issue 7: a transcoder that answers every task with an error
    beside a healthy one of equal capacity. Before health scoring, 10 of 10
    new sessions failed (the failed session's release made the broken
    transcoder the least loaded again). Now 10 of 10 succeed: the first is
    retried on the healthy transcoder, the others never go to the broken one.
    """
    clock = Clock()
    pool = TranscoderPool(clock, sessionIdleTimeout=70)
    dispatcher = Dispatcher(pool, clock)
    broken = RemoteTranscoder("10.0.0.1:1", 10, link=ScriptedLink(broken=True))
    healthy = RemoteTranscoder("10.0.0.2:1", 10, link=ScriptedLink(broken=False))
    for t in (broken, healthy):
        t.link.dispatcher = dispatcher
        pool.add(t)
    outcomes = [self_result(dispatcher.transcode(job(session=f"stream-{i}"))) for i in range(10)]
    assert all(not isinstance(o, Failure) for o in outcomes), outcomes
    assert len(broken.link.sent) == 1 and len(healthy.link.sent) == 10
    assert broken.load == 0 and healthy.load == 10
    assert pool.failureTotals["error"] == 1


def test_coolOffDoublesThenProbeRestores():
    """
    Three confirmed failures in a row take a transcoder out of rotation for
    30 s; its sessions move. Afterwards it gets one probe session first; a
    failed probe doubles the cool-off (capped), a successful one makes it
    healthy again.
    """
    clock, pool, (suspect, other) = makePool(3, 3)
    pool.select("kept")
    assert pool._sessionOwner["kept"] is suspect
    for _ in range(2):
        pool.recordFailure(suspect, "timeout")
    assert suspect.health.state(clock.seconds()) == "failing"
    assert pool.select("new-1") is other  # pushed back behind a healthy one
    pool.recordFailure(suspect, "error")
    assert pool.coolingOffCount == 1
    assert suspect.describe(clock.seconds())["state"] == "coolingOff"
    assert suspect.describe(clock.seconds())["coolingOffSeconds"] == 30
    assert pool.select("kept") is other  # moved off the cooling transcoder
    other.capacity = 2
    with pytest.raises(RoutingError, match="no transcoders available"):
        pool.select("new-2")
    clock.advance(30)
    assert suspect.health.state(clock.seconds()) == "probing"
    other.capacity = 10
    assert pool.select("probe-1") is suspect
    assert pool.select("new-3") is other  # one probe at a time
    pool.recordFailure(suspect, "error")  # the probe failed
    assert suspect.health.coolingOffUntil == clock.seconds() + 60
    for expected in (120, 240, 240):
        pool.release("probe-1")
        clock.advance(suspect.health.coolingOffUntil - clock.seconds())
        assert pool.select("probe-1") is suspect
        pool.recordFailure(suspect, "error")
        assert suspect.health.coolingOffUntil - clock.seconds() == expected
    pool.release("probe-1")
    clock.advance(240)
    assert pool.select("probe-2") is suspect
    pool.recordSuccess(suspect)
    assert suspect.health.state(clock.seconds()) == "healthy" and pool.coolingOffCount == 0
    other.capacity = other.load
    assert pool.select("new-4") is suspect and pool.select("new-5") is suspect  # more than one session again


def test_timeoutLeavesTimeForARetryElsewhere():
    """
    A transcoder that never answers: with another transcoder available, the
    first attempt gets 3/4 of the gateway's deadline, so the segment is
    retried and delivered in time; the silent transcoder is blamed with a
    timeout and its task cancelled.
    """
    clock, pool, (a, b) = makePool(1, 1)
    dispatcher = Dispatcher(pool, clock)
    d = dispatcher.transcode(job())
    silent = a if a.link.sent else b
    other = b if silent is a else a
    clock.advance(5.9)
    assert not other.link.sent
    clock.advance(0.2)
    assert silent.link.cancelled == [silent.link.sent[0][0]]
    (taskId, _), = other.link.sent
    clock.advance(1.5)
    dispatcher.taskSucceeded(taskId, [rendition()], 1)
    assert self_result(d).attempts == 2
    assert (silent.health.consecutiveFailures, silent.health.consecutiveTimeouts) == (1, 1)
    assert pool.failureTotals["timeout"] == 1


def test_deadlineCappedWhateverTheDuration():
    """
    A 300,000 ms segment does not make a 20-minute deadline.
    """
    assert SegmentJob("s", 0, b"", [], 300_000).timeout == MAX_TASK_SECONDS == 60
    assert SegmentJob("s", 0, b"", [], 2000).timeout == 8
    assert SegmentJob("s", 0, b"", [], 10_000).timeout == 40


def test_sessionsLimitedPerSource():
    """
    With a per-source limit, one source cannot hold more sessions than it;
    sessions without a source, and other sources, are not affected; released
    sessions free their slots.
    """
    _, pool, _ = makePool(10, 10, maxSessions=8)
    assert pool.sourceSessionLimit == 4
    for i in range(4):
        pool.select(f"a{i}", source="10.9.9.9")
    assert pool.wouldExceedLimit("a4", "10.9.9.9") and not pool.wouldExceedLimit("a0", "10.9.9.9")
    with pytest.raises(RoutingError, match="OrchestratorCapped"):
        pool.select("a4", source="10.9.9.9")
    pool.select("b0", source="10.8.8.8")
    pool.select("c0")
    pool.release("a0")
    pool.select("a4", source="10.9.9.9")
    assert pool.sessionsFrom("10.9.9.9") == 4
    pool.maxSessionsPerSource = 1
    assert pool.sourceSessionLimit == 1


def test_noBookkeepingLeftForRefusedOrOrphanedSessions():
    """
    Sessions refused, orphaned by a lost transcoder or released leave no
    entries behind (a long-running orchestrator must not grow).
    """
    clock, pool, (t,) = makePool(1)
    pool.select("kept")
    for i in range(50):
        with pytest.raises(RoutingError):
            pool.select(f"refused-{i}")
    pool.remove(t)
    assert pool._sessionLastUsed == {} and pool._sessionOwner == {}
    pool = makePool(1)[1]
    pool.select("from-source", source="10.1.1.1")
    pool.remove(pool.transcoders[0])
    assert pool._sessionSource == {} and pool._sourceSessions == {}


@pytest.mark.parametrize("durationMs, expected", [(0, 8.0), (2000, 8.0), (2500, 10.0), (5000, 20.0), (600_000, 60.0)])
def test_taskTimeoutIsTheGatewaysDeadlineCapped(durationMs, expected):
    """
    The orchestrator works on a segment for the gateway's deadline (the same
    L{segmentTimeout} as the push client), capped at L{MAX_TASK_SECONDS}.
    """
    from livepeer_tx.profiles import segmentTimeout

    job = SegmentJob("s", 1, b"x", [], durationMs=durationMs)
    assert job.timeout == expected == min(MAX_TASK_SECONDS, segmentTimeout(durationMs))
