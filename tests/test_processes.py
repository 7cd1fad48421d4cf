"""
The one runner for the programs we call out to (L{livepeer_tx.processes}),
on a fake reactor: output collected or streamed, the exit described, the
stop escalating from SIGTERM to SIGKILL, the timeout and cancellation. A
runner that leaked a timer, forgot to kill, or lost output would fail here.
"""

import pytest
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from livepeer_tx.processes import ProcessRun, runProcess


class FakeProcess:
    """
    A spawned process: records the signals sent, until it is reaped.
    """

    def __init__(self, protocol):
        self.protocol = protocol
        self.signals = []
        self.stdinClosed = False
        self.gone = False
        self.stdin = []

    def closeStdin(self):
        self.stdinClosed = True

    def write(self, data):
        self.stdin.append(data)

    def signalProcess(self, name):
        if self.gone:
            raise error.ProcessExitedAlready()
        self.signals.append(name)

    def end(self, exitCode=0, signal=None):
        self.gone = True
        if signal is not None:
            exitCode = None
        if exitCode == 0:
            reason = error.ProcessDone(0)
        else:
            reason = error.ProcessTerminated(exitCode, signal)
        self.protocol.processEnded(Failure(reason))


class ProcessReactor(Clock):
    """
    A clock that spawns L{FakeProcess}es.
    """

    def __init__(self):
        Clock.__init__(self)
        self.spawned = []

    def spawnProcess(self, protocol, executable, args, env=None, path=None, childFDs=None):
        process = FakeProcess(protocol)
        process.childFDs = childFDs
        self.spawned.append((executable, args, env, path, process))
        protocol.makeConnection(process)
        return process


def test_collectsOutputAndExit():
    """
    stdout and stderr are collected, stdin is closed, the exit status and
    the run time are reported, and argv[0] is the executable.
    """
    reactor = ProcessReactor()
    d = runProcess(reactor, "/bin/tool", ["-x"], env={"A": "1"}, path="/tmp")
    executable, args, env, path, process = reactor.spawned[0]
    assert (executable, args, env, path) == ("/bin/tool", ["/bin/tool", "-x"], {"A": "1"}, "/tmp")
    assert process.stdinClosed
    process.protocol.outReceived(b"o1")
    process.protocol.errReceived(b"e1")
    process.protocol.outReceived(b"o2")
    reactor.advance(2)
    process.end(3)
    result = d.result
    assert (result.out, result.err, result.exitCode, result.signal) == (b"o1o2", b"e1", 3, None)
    assert not result.succeeded and not result.timedOut and result.seconds == 2


def test_stderrStreamed():
    """
    With C{onStderr}, stderr goes to it chunk by chunk and is not kept.
    """
    reactor = ProcessReactor()
    chunks = []
    run = ProcessRun(reactor, "/bin/tool", [], onStderr=chunks.append)
    process = reactor.spawned[0][-1]
    process.protocol.errReceived(b"a")
    process.protocol.errReceived(b"b")
    process.end()
    assert chunks == [b"a", b"b"] and run.ended.result.err == b"" and run.ended.result.succeeded


def test_timeoutKills():
    """
    Past its timeout a process is killed at once (no kill grace) and the
    result says it timed out; no timer is left behind.
    """
    reactor = ProcessReactor()
    d = runProcess(reactor, "/bin/tool", [], timeout=5)
    process = reactor.spawned[0][-1]
    reactor.advance(4.9)
    assert process.signals == []
    reactor.advance(0.1)
    assert process.signals == ["KILL"]
    process.end(signal=9)
    assert d.result.timedOut and d.result.signal == 9 and d.result.exitCode is None
    assert reactor.getDelayedCalls() == []


def test_stopEscalates():
    """
    With a kill grace, a stop sends SIGTERM, then SIGKILL after the grace
    if the process is still there; a second stop sends nothing more.
    """
    reactor = ProcessReactor()
    run = ProcessRun(reactor, "/bin/tool", [], killGrace=1.0)
    process = reactor.spawned[0][-1]
    run.stop()
    run.stop()
    assert process.signals == ["TERM"]
    reactor.advance(1.0)
    assert process.signals == ["TERM", "KILL"]
    process.end(signal=9)
    assert not run.ended.result.timedOut


def test_exitDuringGraceCancelsKill():
    """
    A process that exits on SIGTERM is not sent SIGKILL, and the pending
    kill is cancelled.
    """
    reactor = ProcessReactor()
    run = ProcessRun(reactor, "/bin/tool", [], timeout=10, killGrace=1.0)
    process = reactor.spawned[0][-1]
    run.stop()
    process.end(signal=15)
    assert reactor.getDelayedCalls() == []
    assert process.signals == ["TERM"] and run.ended.result.signal == 15


def test_cancelStops():
    """
    Cancelling the result stops the process and fails with
    C{CancelledError}; its later exit is ignored.
    """
    reactor = ProcessReactor()
    d = runProcess(reactor, "/bin/tool", [])
    process = reactor.spawned[0][-1]
    d.cancel()
    assert process.signals == ["KILL"]
    with pytest.raises(defer.CancelledError):
        d.result.raiseException()
    d.addErrback(lambda f: None)
    process.end(signal=9)


def test_stdinPipeAndExtraOutputs():
    """
    With C{stdinPipe} and C{outputFDs}, stdin stays open for
    L{ProcessRun.writeStdin} until L{ProcessRun.closeStdin}, the extra
    descriptors are pipes read into C{onOutput} (stdout and stderr still go
    where they went), and nothing is written once the process is reaped.
    """
    reactor = ProcessReactor()
    outputs = []
    run = ProcessRun(reactor, "/bin/tool", [], stdinPipe=True, outputFDs=(3, 4),
                     onOutput=lambda fd, data: outputs.append((fd, data)))
    process = reactor.spawned[0][-1]
    assert process.childFDs == {0: "w", 1: "r", 2: "r", 3: "r", 4: "r"}
    assert not process.stdinClosed
    run.writeStdin(b"in1")
    process.protocol.childDataReceived(4, b"four")
    process.protocol.childDataReceived(3, b"three")
    process.protocol.childDataReceived(1, b"out")
    run.closeStdin()
    assert process.stdin == [b"in1"] and process.stdinClosed
    process.end()
    run.writeStdin(b"late")
    assert process.stdin == [b"in1"]
    assert outputs == [(4, b"four"), (3, b"three")] and run.ended.result.out == b"out"
