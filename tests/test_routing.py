"""
Routing and dispatch logic, in memory, with a fake clock and fake links.
"""

import pytest
from twisted.internet.task import Clock

from livepeer_tx.orchestrator.dispatch import (
    Dispatcher, Rendition, SegmentJob, TranscodeFailed,
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


def test_no_transcoders():
    """
    Without transcoders, go-livepeer's error.
    """
    _, pool, _ = makePool()
    with pytest.raises(RoutingError, match="no transcoders available"):
        pool.select("s")


def test_spread_by_relative_load_and_capacity_tie_break():
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


def test_capacity_never_exceeded_with_fixed_cap():
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


def test_affinity_and_release_on_loss():
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


def test_idle_sessions_expire():
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


def test_dispatch_success():
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


def test_transcoder_lost_mid_segment_retries_elsewhere():
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


def test_timeout_cancels_and_fails():
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


def test_mismatched_and_zero_segments():
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


def test_per_session_queue_bound_and_order():
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


def test_transcoder_error_is_not_retried():
    """
    An error the transcoder reports goes to the gateway as is.
    """
    clock, pool, (a, b) = makePool(1, 1)
    dispatcher = Dispatcher(pool, clock)
    d = dispatcher.transcode(job())
    holder = a if a.link.sent else b
    dispatcher.taskFailed(holder.link.sent[0][0], "Invalid data found when processing input")
    assert str(self_result(d).value) == "Invalid data found when processing input"
    assert not (b if holder is a else a).link.sent


def test_no_bookkeeping_left_for_refused_or_orphaned_sessions():
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
