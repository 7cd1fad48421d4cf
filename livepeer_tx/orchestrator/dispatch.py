# -*- test-case-name: tests.test_routing -*-
"""
Sending segments to transcoders and getting their renditions back.

The L{Dispatcher} turns a gateway's segment into a task on a transcoder chosen
by the L{TranscoderPool}, waits for its result within the gateway's deadline,
and moves the task to another transcoder when the first one fails it (reports
an error, answers too late or with a bad result, or disconnects) and time is
left. It tells the pool how each transcoder did. It knows transcoders only
through their C{link} (see L{RemoteTranscoder}), so it is tested without
sockets.

A job may start while its segment is still arriving from the gateway
(L{ArrivingSegment}): a transcoder that takes streamed tasks gets the bytes
as they come, any other gets the whole segment once it is in, and a retry
elsewhere starts from the bytes kept so far. An upload that is cancelled
(the gateway went away, or its hash did not match) ends the job.
"""

import itertools
import mmap
from dataclasses import dataclass, replace

from twisted.internet import defer
from twisted.logger import Logger

from livepeer_tx.orchestrator.routing import (
    FAILURE_BAD_RESULT, FAILURE_ERROR, FAILURE_LOST, FAILURE_TIMEOUT, RoutingError,
)
from livepeer_tx.profiles import DEFAULT_DURATION_MS, segmentTimeout

TOO_LONG = "Remote transcoder took too long"
MISMATCHED = "MismatchedSegments"
ZERO_SEGMENTS = "ZeroSegments"
ORCHESTRATOR_BUSY = "OrchestratorBusy"
UPLOAD_CANCELLED = "segment upload cancelled"
MIN_RENDITION_BYTES = 25
# The longest the orchestrator works on one segment, whatever its duration
# (go-livepeer's 4 x duration would allow 20 minutes).
MAX_TASK_SECONDS = 60.0
# A retry elsewhere is only worth starting with at least this much time left.
MIN_RETRY_SECONDS = 1.0


class TranscodeFailed(Exception):
    """
    A segment could not be transcoded; the message goes to the gateway.
    """


class AttemptFailed(Exception):
    """
    One attempt at a task failed on one transcoder.

    @ivar kind: one of L{FAILURE_KINDS<livepeer_tx.orchestrator.routing.FAILURE_KINDS>}.
    @ivar message: the gateway-facing error text, or L{None} when the
        transcoder went away without one.
    """

    def __init__(self, kind, message=None):
        super().__init__(message or kind)
        self.kind = kind
        self.message = message


class UploadCancelled(Exception):
    """
    A segment's upload ended before its last byte, or was refused once in.
    """


class ArrivingSegment:
    """
    A segment's bytes as they arrive from the gateway: kept (for a retry
    elsewhere, or a transcoder that takes whole segments) and handed on to
    whoever follows them.

    A segment of declared size is kept in an anonymous memory map of that
    size: its pages are used only as bytes arrive, and they go back to the
    system when the segment is dropped. (Kept as many small pieces instead,
    a stalled or abandoned upload would leave its memory on the allocator's
    heap, where the process's resident size never shrinks again.) A segment
    of unknown size, or one that outgrows its declared size, is kept as
    the pieces it came in.

    @ivar size: the declared size in bytes, or L{None} when unknown.
    @ivar received: the bytes received so far.
    @ivar ended: whether the last byte is in.
    @ivar aborted: whether the upload was cancelled, or refused once in
        (its bytes are dropped).
    @ivar cancelled: a L{Deferred} that fires (with L{None}) if it is.
    """

    #: The pieces a follower that comes late (a retry) gets the bytes so far in.
    REPLAY_PIECE_BYTES = 256 * 1024

    def __init__(self, size=None):
        self.size = size
        self.received = 0
        self.ended = False
        self.aborted = False
        self.cancelled = defer.Deferred()
        self._buffer = None
        self._pieces = []
        self._followers = []
        self._waiting = []

    def write(self, data):
        """
        The next bytes; dropped once the upload ended or was cancelled.
        """
        if self.ended or self.aborted:
            return
        end = self.received + len(data)
        if self.size and end <= self.size and not self._pieces:
            if self._buffer is None:
                self._buffer = mmap.mmap(-1, self.size)
            self._buffer[self.received:end] = data
        else:
            self._spill()
            self._pieces.append(data)
        self.received = end
        for follower in list(self._followers):
            follower.write(data)

    def end(self):
        """
        The last byte is in: followers are told, L{whenEnded} fires.
        """
        if self.ended or self.aborted:
            return
        self.ended = True
        followers, self._followers = self._followers, []
        for follower in followers:
            follower.end()
        self._fire(lambda d: d.callback(self))

    def cancel(self):
        """
        Cancel the upload, or refuse it once in (its hash did not match):
        its bytes are dropped, followers let go of, L{whenEnded} fails with
        L{UploadCancelled} and L{cancelled} fires. Safe to call twice.
        """
        if self.aborted:
            return
        self.aborted = True
        self._buffer = None
        self._pieces = []
        self._followers = []
        self._fire(lambda d: d.errback(UploadCancelled()))
        self.cancelled.callback(None)

    def _fire(self, fire):
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            fire(d)

    @property
    def data(self):
        """
        The whole segment, once it L{ended}.
        """
        if not self.ended or self.aborted:
            raise ValueError("the segment is not all in")
        self._spill()
        if len(self._pieces) != 1:
            self._pieces = [b"".join(self._pieces)]
        return self._pieces[0]

    def _spill(self):
        """
        Keep the bytes in the memory map as one piece from now on (and let
        the map go).
        """
        if self._buffer is not None:
            self._pieces.insert(0, self._buffer[:self.received])
            self._buffer = None

    def follow(self, follower):
        """
        Hand C{follower} (C{write(data)}, C{end()}) the bytes so far, then
        each later piece, then the end; nothing once the upload is
        cancelled.
        """
        if self.aborted:
            return
        if self._buffer is not None:
            for offset in range(0, self.received, self.REPLAY_PIECE_BYTES):
                follower.write(self._buffer[offset:min(self.received, offset + self.REPLAY_PIECE_BYTES)])
        for piece in self._pieces:
            follower.write(piece)
        if self.ended:
            follower.end()
        else:
            self._followers.append(follower)

    def unfollow(self, follower):
        """
        Hand C{follower} nothing more.
        """
        if follower in self._followers:
            self._followers.remove(follower)

    def whenEnded(self):
        """
        @return: a L{Deferred} firing with this segment once its last byte
            is in, or failing with L{UploadCancelled} if it is cancelled
            first.
        """
        if self.aborted:
            return defer.fail(UploadCancelled())
        if self.ended:
            return defer.succeed(self)
        d = defer.Deferred()
        self._waiting.append(d)
        return d


@dataclass
class SegmentJob:
    """
    One gateway segment to transcode.

    @ivar data: the segment's bytes, or L{None} while it is still arriving.
    @ivar arriving: the L{ArrivingSegment} the bytes come from, for a job
        started during the upload, else L{None}.
    """

    sessionId: str
    seq: int
    data: bytes
    profiles: list
    durationMs: int = DEFAULT_DURATION_MS
    source: str = None
    arriving: ArrivingSegment = None

    def whole(self):
        """
        This job with its whole segment in C{data}: itself unless its
        upload has ended since it started.
        """
        if self.arriving is not None and self.arriving.ended and not self.arriving.aborted:
            return replace(self, data=self.arriving.data, arriving=None)
        return self

    @property
    def timeout(self):
        """
        How long the orchestrator works on it: go-livepeer's max(8 s, 4 x
        duration), capped at L{MAX_TASK_SECONDS}.
        """
        return min(MAX_TASK_SECONDS, segmentTimeout(self.durationMs))


@dataclass
class Rendition:
    """
    One transcoded rendition as a transcoder returned it.
    """

    name: str
    data: bytes
    pixels: int
    frames: int = 0
    width: int = 0
    height: int = 0


@dataclass
class TaskResult:
    """
    A transcoder's answer to a task.
    """

    renditions: list
    decodedPixels: int = 0
    transcoder: str = ""
    attempts: int = 1
    ffmpegSeconds: float = 0.0


class _Task:
    def __init__(self, taskId, job, transcoder, deferred):
        self.taskId = taskId
        self.job = job
        self.transcoder = transcoder
        self.deferred = deferred


class Dispatcher:
    """
    Routes segment jobs to transcoders and collects their results.

    A failed attempt is retried on another transcoder while at least
    L{MIN_RETRY_SECONDS} of the job's deadline are left: a transcoder that
    went away, on every other transcoder if need be; an error, a timeout or a
    bad result, C{maxRetries} times (so bad input costs little). When another
    transcoder could take over, the first attempt gets only
    C{1 - retryShare} of the time, so that even a timeout leaves time for a
    retry. A transcoder is blamed in the pool's health record only when the
    same segment then succeeds elsewhere: a segment that fails everywhere is
    taken to be the gateway's problem, so bad input cannot put good
    transcoders out of rotation.

    @param pool: the L{TranscoderPool}.
    @param clock: an L{IReactorTime} for per-task deadlines.
    @param maxQueuedPerSession: segments of one session that may wait or run at
        once before further ones are refused with C{OrchestratorBusy}.
    @param retryShare: the share of a job's time kept back for a retry.
    @param maxRetries: retries after errors, timeouts and bad results.
    """

    _log = Logger()

    def __init__(self, pool, clock, maxQueuedPerSession=4, retryShare=0.25, maxRetries=1):
        self.pool = pool
        self._clock = clock
        self.maxQueuedPerSession = maxQueuedPerSession
        self.retryShare = retryShare
        self.maxRetries = maxRetries
        self._taskIds = itertools.count(1)
        self._tasks = {}
        self._sessionQueues = {}

    def transcode(self, job):
        """
        Transcode C{job}, one segment of a session at a time.

        @return: a Deferred firing with a L{TaskResult}, or failing with
            L{TranscodeFailed} carrying the gateway-facing error text.
        """
        queue = self._sessionQueues.get(job.sessionId)
        if queue is None:
            queue = self._sessionQueues[job.sessionId] = _SessionQueue()
        if queue.pending >= self.maxQueuedPerSession:
            return defer.fail(TranscodeFailed(ORCHESTRATOR_BUSY))
        if job.arriving is not None:
            job.arriving.cancelled.addCallback(self._uploadCancelled, job)
        deadline = self._clock.seconds() + job.timeout
        queue.pending += 1

        def done(result):
            queue.pending -= 1
            if queue.pending == 0 and self._sessionQueues.get(job.sessionId) is queue:
                del self._sessionQueues[job.sessionId]
            return result

        d = queue.lock.run(self._transcodeWithRetry, job, deadline)
        d.addBoth(done)
        return d

    @property
    def pendingSegments(self):
        """
        Segments taken and not answered yet, running or waiting behind their
        session's earlier segments.
        """
        return sum(queue.pending for queue in self._sessionQueues.values())

    @defer.inlineCallbacks
    def _transcodeWithRetry(self, job, deadline):
        failed, kinds = [], []
        attempts = 0
        lastError = None
        while True:
            if job.arriving is not None and job.arriving.aborted:
                self.pool.release(job.sessionId)
                raise TranscodeFailed(UPLOAD_CANCELLED)
            remaining = deadline - self._clock.seconds()
            gaveUp = sum(kind != FAILURE_LOST for kind in kinds) > self.maxRetries
            if gaveUp or remaining <= 0 or (failed and remaining < MIN_RETRY_SECONDS):
                self.pool.release(job.sessionId)
                raise TranscodeFailed(lastError or TOO_LONG)
            try:
                transcoder = self.pool.select(job.sessionId, exclude=failed, source=job.source)
            except RoutingError as e:
                self.pool.release(job.sessionId)
                raise TranscodeFailed(lastError or str(e))
            attempts += 1
            timeout = remaining
            if not failed and self.pool.hasAlternativeTo(transcoder):
                timeout = remaining * (1 - self.retryShare)
            try:
                result = yield self._runTask(job, transcoder, timeout)
            except UploadCancelled:
                self.pool.release(job.sessionId)
                raise TranscodeFailed(UPLOAD_CANCELLED)
            except AttemptFailed as e:
                failed.append(transcoder)
                kinds.append(e.kind)
                self.pool.countFailure(e.kind)
                lastError = e.message or lastError
                if e.kind == FAILURE_LOST:
                    self._log.warn(
                        "Transcoder lost while it held a segment transcoder={transcoder} "
                        "sessionID={sessionId} seqNo={seq}; retrying on another transcoder",
                        transcoder=transcoder.address, sessionId=job.sessionId, seq=job.seq)
                else:
                    self._log.warn(
                        "Segment attempt failed on transcoder={transcoder} sessionID={sessionId} seqNo={seq} "
                        "kind={kind} err={err!r}",
                        transcoder=transcoder.address, sessionId=job.sessionId, seq=job.seq,
                        kind=e.kind, err=e.message)
                continue
            self.pool.recordSuccess(transcoder)
            for culprit, kind in zip(failed, kinds):
                self.pool.recordFailure(culprit, kind)
            result.attempts = attempts
            result.transcoder = transcoder.address
            return result

    def _runTask(self, job, transcoder, timeout):
        taskId = next(self._taskIds)
        d = defer.Deferred()
        task = _Task(taskId, job, transcoder, d)
        self._tasks[taskId] = task
        transcoder.tasksInFlight += 1
        self.pool.markBusy(job.sessionId)

        def onTimeout():
            if self._tasks.get(taskId) is task:
                self._log.error(
                    "Remote transcoder took too long to transcode transcoder={transcoder} "
                    "taskId={taskId} seqNo={seq}",
                    transcoder=transcoder.address, taskId=taskId, seq=job.seq,
                )
                self._cancel(task, AttemptFailed(FAILURE_TIMEOUT, TOO_LONG))

        task.timer = self._clock.callLater(timeout, onTimeout)
        job = job.whole()
        if job.arriving is not None and not transcoder.link.streamsJob(job):
            # This transcoder takes whole segments: it gets this one once it is in.
            job.arriving.whenEnded().addCallbacks(lambda _: self._send(task, job.whole()), lambda _: None)
        else:
            self._send(task, job)
        return d

    def _send(self, task, job):
        if self._tasks.get(task.taskId) is not task:
            return
        try:
            task.transcoder.link.sendTask(task.taskId, job)
        except Exception:
            self._log.failure("Could not send task {taskId} to transcoder={transcoder}",
                              taskId=task.taskId, transcoder=task.transcoder.address)
            self._finish(task.taskId, failure=AttemptFailed(FAILURE_LOST))

    def _uploadCancelled(self, _, job):
        for taskId, task in list(self._tasks.items()):
            if task.job is job:
                self._log.info("Cancelling taskId={taskId} on transcoder={transcoder}: its upload was cancelled",
                               taskId=taskId, transcoder=task.transcoder.address)
                self._cancel(task, UploadCancelled())

    def _cancel(self, task, failure):
        # The orchestrator gives up on the task: the transcoder is told.
        self._finish(task.taskId, failure=failure)
        try:
            task.transcoder.link.cancelTask(task.taskId)
        except Exception:
            self._log.failure("Could not cancel task {taskId}", taskId=task.taskId)

    def _finish(self, taskId, result=None, failure=None):
        task = self._tasks.pop(taskId, None)
        if task is None:
            return False
        task.transcoder.tasksInFlight -= 1
        if task.timer.active():
            task.timer.cancel()
        if failure is not None:
            task.deferred.errback(failure)
        else:
            task.deferred.callback(result)
        return True

    def taskSucceeded(self, taskId, renditions, decodedPixels, ffmpegSeconds=0.0):
        """
        A transcoder returned renditions for C{taskId}.

        Late results for unknown or expired tasks are dropped.
        """
        task = self._tasks.get(taskId)
        if task is None:
            self._log.info("Dropping result for unknown or expired taskId={taskId}", taskId=taskId)
            return
        if len(renditions) != len(task.job.profiles):
            self._finish(taskId, failure=AttemptFailed(FAILURE_BAD_RESULT, MISMATCHED))
            return
        if any(len(r.data) < MIN_RENDITION_BYTES for r in renditions):
            self._finish(taskId, failure=AttemptFailed(FAILURE_BAD_RESULT, ZERO_SEGMENTS))
            return
        self._finish(
            taskId,
            TaskResult(renditions=renditions, decodedPixels=decodedPixels, ffmpegSeconds=ffmpegSeconds),
        )

    def taskFailed(self, taskId, error):
        """
        A transcoder reported that it could not transcode C{taskId}.
        """
        if not self._finish(taskId, failure=AttemptFailed(FAILURE_ERROR, error)):
            self._log.info("Dropping error for unknown or expired taskId={taskId}", taskId=taskId)

    def transcoderLost(self, transcoder):
        """
        A transcoder disconnected: take it out of the pool and move its tasks.
        """
        self.pool.remove(transcoder)
        for taskId, task in list(self._tasks.items()):
            if task.transcoder is transcoder:
                self._finish(taskId, failure=AttemptFailed(FAILURE_LOST))

    def isKnownTask(self, taskId, transcoder):
        """
        Whether C{taskId} is in flight on C{transcoder} (results from others are refused).
        """
        task = self._tasks.get(taskId)
        return task is not None and task.transcoder is transcoder


class _SessionQueue:
    def __init__(self):
        self.lock = defer.DeferredLock()
        self.pending = 0
