# -*- test-case-name: tests.test_units -*-
"""
The transcoder's local scheduling: at most C{maxSessions} FFmpeg processes at
once, and sessions spread over the GPUs by load, each session staying on its
device.
"""

from collections import deque

from twisted.internet import defer
from twisted.logger import Logger

from livepeer_tx import wsproto


class Slots:
    """
    At most C{limit} holders at once, the others waiting in order; unlike
    L{defer.DeferredSemaphore}, the limit can change while slots are held (a
    lower limit takes effect as holders release).

    @ivar limit: how many may hold a slot at once.
    @ivar held: how many hold one now.
    """

    def __init__(self, limit):
        self.limit = limit
        self.held = 0
        self.waiting = deque()

    def acquire(self):
        """
        A Deferred that fires once a slot is ours; cancelling it while it
        waits leaves the queue.
        """
        d = defer.Deferred(self.waiting.remove)
        self.waiting.append(d)
        self._grant()
        return d

    def release(self):
        """
        Give a slot back.
        """
        self.held -= 1
        self._grant()

    def resize(self, limit):
        """
        Change the limit; waiters start at once if it grew.
        """
        self.limit = limit
        self._grant()

    def _grant(self):
        while self.waiting and self.held < self.limit:
            self.held += 1
            self.waiting.popleft().callback(self)


class TranscodeWorker:
    """
    Runs segments through an FFmpeg transcoder within a concurrency limit.

    @param transcoder: an object with C{transcode(segment, profiles, device,
        timeout)} returning a cancellable Deferred, and for streamed segments
        C{transcodeStream(segment, profiles, onRenditionData, device,
        timeout)} (L{FFmpegTranscoder}).
    @param maxSessions: how many segments may transcode at once.
    @param devices: GPU ids to spread sessions over, or L{None} for CPU.
    @param streaming: whether it takes streamed segments (L{runStreamed});
        C{--noStreaming} turns it off.
    @ivar features: what it takes beyond the first version of the
        protocol, for the C{register} message (L{wsproto.TRANSCODER_FEATURES}).
    """

    _log = Logger()

    def __init__(self, transcoder, maxSessions, devices=None, streaming=True):
        self._transcoder = transcoder
        self.features = wsproto.TRANSCODER_FEATURES if streaming else ()
        self.maxSessions = maxSessions
        self.devices = list(devices) if devices else None
        self._slots = Slots(maxSessions)
        self._deviceOfSession = {}
        self._tasks = {}

    @property
    def running(self):
        """
        Segments transcoding now (each holds a slot).
        """
        return self._slots.held

    @property
    def queued(self):
        """
        Segments waiting for a free slot.
        """
        return len(self._slots.waiting)

    @property
    def pending(self):
        """
        Tasks not finished yet, running or queued.
        """
        return len(self._tasks)

    def setCapacity(self, maxSessions):
        """
        Run at most C{maxSessions} segments at once from now on; with a lower
        limit, running segments finish and queued ones wait for the new limit.
        """
        self.maxSessions = maxSessions
        self._slots.resize(maxSessions)

    def deviceFor(self, sessionId):
        """
        The device a session uses, choosing the least-loaded one for a new session.
        """
        if self.devices is None:
            return None
        device = self._deviceOfSession.get(sessionId)
        if device is None:
            loads = {d: 0 for d in self.devices}
            for assigned in self._deviceOfSession.values():
                loads[assigned] += 1
            device = min(self.devices, key=lambda d: loads[d])
            self._deviceOfSession[sessionId] = device
        return device

    def endSession(self, sessionId):
        """
        Forget a session's device assignment.
        """
        self._deviceOfSession.pop(sessionId, None)

    def endAllSessions(self):
        """
        Forget every session (the orchestrator connection ended: its sessions
        will be assigned afresh).
        """
        self._deviceOfSession.clear()

    def run(self, taskId, sessionId, segment, profiles, timeout=None):
        """
        Transcode one segment when a slot is free.

        @return: a Deferred with the transcoder's output; cancelling it (or
            L{cancel}) kills FFmpeg or drops the queued segment.
        """
        return self._runWhenFree(taskId, sessionId, lambda device: self._transcoder.transcode(
            segment, profiles, device=device, timeout=timeout))

    def runStreamed(self, taskId, sessionId, segment, profiles, onRenditionData, timeout=None):
        """
        Transcode a segment that is still arriving (a
        L{StreamedSegment<livepeer_tx.transcoder.ffmpeg.StreamedSegment>},
        which keeps its pieces while the task waits for a slot), handing the
        renditions' bytes to C{onRenditionData(index, bytes)} as they come.

        @return: as L{run}.
        """
        return self._runWhenFree(taskId, sessionId, lambda device: self._transcoder.transcodeStream(
            segment, profiles, onRenditionData, device=device, timeout=timeout))

    def _runWhenFree(self, taskId, sessionId, transcode):
        device = self.deviceFor(sessionId)
        started = []

        def start(_):
            started.append(True)
            return defer.maybeDeferred(transcode, device)

        def release(result):
            if started:
                self._slots.release()
            if self._tasks.get(taskId) is task:
                del self._tasks[taskId]
            return result

        # One Deferred from the slot to the result: cancelling it while it
        # waits for a slot leaves the queue; while the engine runs, Twisted
        # cancels the engine's Deferred it is waiting on, and it fires once
        # the engine has stopped (FFmpeg reaped), exactly once.
        task = self._slots.acquire()
        self._tasks[taskId] = task
        task.addCallback(start)
        task.addBoth(release)
        return task

    def cancel(self, taskId):
        """
        Stop a task: kill its FFmpeg, or drop it from the queue.
        """
        entry = self._tasks.get(taskId)
        if entry is not None:
            entry.cancel()

    def whenIdle(self, clock, timeout=5.0, interval=0.05):
        """
        A Deferred that fires once no FFmpeg process of ours is left unreaped
        (or after C{timeout} seconds), for a clean shutdown.
        """
        d = defer.Deferred()
        deadline = clock.seconds() + timeout

        def check():
            if getattr(self._transcoder, "running", 0) == 0 or clock.seconds() >= deadline:
                d.callback(None)
            else:
                clock.callLater(interval, check)

        check()
        return d

    def cancelAll(self):
        """
        Stop every task (the orchestrator connection was lost).
        """
        for taskId in list(self._tasks):
            self.cancel(taskId)
