# -*- test-case-name: tests.test_processes -*-
"""
Running the programs we call out to (FFmpeg, nvidia-smi) to completion: one
runner for the transcoding job, the start-up test, the segmenter and the
demo, with output collected or streamed, a stop that escalates from SIGTERM
to SIGKILL, an optional timeout and cancellation. A program may also be fed
through its stdin and write to extra pipes (file descriptors 3 and up) that
are read as it writes them.
"""

from dataclasses import dataclass
from typing import Optional

from twisted.internet import error, protocol
from twisted.internet.defer import Deferred

__all__ = ["ProcessResult", "ProcessRun", "runProcess"]


@dataclass
class ProcessResult:
    """
    How a program ended.

    @ivar out: what it wrote to stdout.
    @ivar err: what it wrote to stderr (empty when streamed elsewhere).
    @ivar exitCode: its exit status, or L{None} when a signal ended it.
    @ivar signal: the number of the signal that ended it, or L{None}.
    @ivar timedOut: whether it was stopped because its timeout passed.
    @ivar seconds: how long it ran, by the reactor's clock.
    """

    out: bytes
    err: bytes
    exitCode: Optional[int]
    signal: Optional[int]
    timedOut: bool
    seconds: float

    @property
    def succeeded(self):
        """
        Whether it exited by itself with status 0.
        """
        return self.exitCode == 0 and self.signal is None


class _Collector(protocol.ProcessProtocol):
    def __init__(self, onStderr, ended, keepStdin=False, onOutput=None):
        self._onStderr = onStderr
        self._ended = ended
        self._keepStdin = keepStdin
        self._onOutput = onOutput
        self.out = []
        self.err = []

    def connectionMade(self):
        if not self._keepStdin:
            self.transport.closeStdin()

    def childDataReceived(self, childFD, data):
        if childFD in (1, 2) or self._onOutput is None:
            super().childDataReceived(childFD, data)
        else:
            self._onOutput(childFD, data)

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        if self._onStderr is not None:
            self._onStderr(data)
        else:
            self.err.append(data)

    def processEnded(self, reason):
        self._ended(reason)


class ProcessRun:
    """
    One program, spawned at construction and run until it exits.

    @ivar ended: a L{Deferred} that fires with a L{ProcessResult} once the
        process is reaped; it never fails. Cancelling it stops the process
        (see L{stop}) and fails it with C{CancelledError} at once.
    """

    def __init__(self, reactor, executable, args, timeout=None, killGrace=0.0, env=None, path=None,
                 onStderr=None, stdinPipe=False, outputFDs=(), onOutput=None):
        """
        @param reactor: provides C{spawnProcess}, C{callLater} and C{seconds}.
        @param executable: the program's path (also its C{argv[0]}).
        @param args: its arguments after C{argv[0]}.
        @param timeout: seconds before it is stopped, or L{None} for no limit.
        @param killGrace: seconds between SIGTERM and SIGKILL when stopping;
            0 sends SIGKILL at once.
        @param env: its environment (L{None}: an empty one on POSIX).
        @param path: its working directory (L{None}: ours).
        @param onStderr: called with each chunk of its stderr instead of
            collecting it.
        @param stdinPipe: keep its stdin open, for L{writeStdin} and
            L{closeStdin} (else it is closed at once).
        @param outputFDs: extra file descriptors (3 and up) it gets as the
            write ends of pipes; what it writes there goes to C{onOutput}.
        @param onOutput: called with C{(fd, data)} for each chunk read from
            one of C{outputFDs}.
        @raise OSError: it cannot be spawned (as C{spawnProcess} raises).
        """
        self._reactor = reactor
        self._killGrace = killGrace
        self._stopping = False
        self._timedOut = False
        self._reaped = False
        self._killTimer = None
        self._timer = None
        self.ended = Deferred(lambda _: self.stop())
        self._started = reactor.seconds()
        self._protocol = _Collector(onStderr, self._processEnded, stdinPipe, onOutput)
        pipes = {}
        if outputFDs:
            pipes["childFDs"] = {0: "w", 1: "r", 2: "r", **{fd: "r" for fd in outputFDs}}
        self._process = reactor.spawnProcess(self._protocol, executable, [executable, *args], env=env, path=path,
                                             **pipes)
        if timeout is not None and not self._reaped:
            self._timer = reactor.callLater(timeout, self._timeoutPassed)

    def _timeoutPassed(self):
        self._timer = None
        self._timedOut = True
        self.stop()

    def stop(self):
        """
        Stop the process: SIGTERM, then SIGKILL after the kill grace (at once
        without one). Does nothing once it is stopping or gone.
        """
        if self._stopping or self._reaped:
            return
        self._stopping = True
        if self._killGrace > 0:
            self._signal("TERM")
            self._killTimer = self._reactor.callLater(self._killGrace, self._signal, "KILL")
        else:
            self._signal("KILL")

    def writeStdin(self, data):
        """
        Write C{data} to its stdin (dropped once stdin is closed or the
        process gone); what it has not read yet is buffered.
        """
        if not self._reaped:
            self._process.write(data)

    def closeStdin(self):
        """
        Close its stdin once what was written is flushed: end of input.
        """
        if not self._reaped:
            self._process.closeStdin()

    def _signal(self, name):
        if name == "KILL":
            self._killTimer = None
        try:
            self._process.signalProcess(name)
        except error.ProcessExitedAlready:
            pass

    def _processEnded(self, reason):
        self._reaped = True
        for timer in (self._timer, self._killTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._killTimer = None
        if self.ended.called:
            return
        status = reason.value
        self.ended.callback(ProcessResult(
            out=b"".join(self._protocol.out), err=b"".join(self._protocol.err),
            exitCode=getattr(status, "exitCode", None), signal=getattr(status, "signal", None),
            timedOut=self._timedOut, seconds=self._reactor.seconds() - self._started,
        ))


def runProcess(reactor, executable, args, timeout=None, env=None, path=None):
    """
    Run a short helper program to completion, collecting its output; past
    C{timeout} seconds it is killed.

    @return: a L{Deferred} firing with a L{ProcessResult} once the process
        is reaped.
    @raise OSError: it cannot be spawned.
    """
    return ProcessRun(reactor, executable, args, timeout=timeout, env=env, path=path).ended
