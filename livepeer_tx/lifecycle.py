# -*- test-case-name: tests.test_drain -*-
"""
Process lifecycle of the daemons: ending with a chosen exit status, keeping
secrets out of core dumps, and draining work before a stop.
"""

import os
import sys

from twisted.internet import defer, task
from twisted.logger import Logger

#: C{--drainTimeout}'s default (go-livepeer waits about as long for a
#: segment) and its largest value, the same for both daemons.
DEFAULT_DRAIN_SECONDS = 70
MAX_DRAIN_SECONDS = 86400


def stopWithStatus(reactor, status):
    """
    Stop the reactor cleanly, then exit the process with C{status} (twistd
    itself always exits 0, and operators' supervisors need to see failures).
    """

    def exitNow():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    reactor.addSystemEventTrigger("after", "shutdown", exitNow)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)


PR_SET_DUMPABLE = 4


def preventCoreDumps():
    """
    Keep the secret, keys and tickets this process holds out of core dumps and
    away from other processes of the same user (C{ptrace}, C{/proc/<pid>/mem}):
    set the core size limit to 0 and clear the dumpable flag.

    @return: whether the dumpable flag could be cleared (Linux only); when
        not, a warning is logged.
    """
    import ctypes
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    try:
        cleared = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        cleared = False
    if not cleared:
        Logger().warn("Could not make this process non-dumpable; set LimitCORE=0 so a crash cannot dump the secret")
    return cleared


class Drain:
    """
    Drains one node: it stops taking new work and the drain waits until the
    work it holds is done, or until C{timeout} seconds have passed.

    The node is the C{target}, with four methods: C{startDraining()} (take
    no new work), C{stopDraining()} (take work again), C{isDrained()} (nothing
    left in flight) and C{describeWork()} (what is in flight, for a log line).
    Whether it is drained is checked every C{interval} seconds on C{clock}.

    @ivar active: whether a drain is under way or complete (until L{resume}).
    @ivar drained: whether the target was found drained (until L{resume}).
    @ivar final: whether the drain leads to a stop (then it cannot be resumed).
    """

    _log = Logger()

    def __init__(self, clock, target, timeout, interval=0.1):
        self._clock = clock
        self._target = target
        self.timeout = timeout
        self.interval = interval
        self.active = False
        self.drained = False
        self.final = False
        self._waiters = []
        self._loop = None
        self._deadline = None
        self._started = None

    def start(self, reason, final=False):
        """
        Start draining (if not under way already).

        @param reason: why, for the log (C{SIGTERM}, C{POST /drain}).
        @param final: the drain leads to a stop: L{resume} is refused.
        @return: a Deferred that fires with C{True} once the target is
            drained, or C{False} when the timeout passed first (or the drain
            was cancelled by L{resume}).
        """
        waiter = defer.Deferred()
        self.final = self.final or final
        if self.active and self._loop is None:
            waiter.callback(self.drained)
            return waiter
        self._waiters.append(waiter)
        if self.active:
            self._log.info("Already draining; {reason} waits for the same drain", reason=reason)
            return waiter
        self.active = True
        self.drained = False
        self._started = self._clock.seconds()
        self._deadline = self._started + self.timeout
        self._target.startDraining()
        self._log.info("Draining ({reason}): no new work; waiting for {work} (at most {timeout:g} s)",
                       reason=reason, work=self._target.describeWork(), timeout=self.timeout)
        self._loop = task.LoopingCall(self._check)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=True)
        return waiter

    def resume(self):
        """
        Take work again; a drain under way ends without being drained.

        @return: whether a drain was active and could be resumed.
        """
        if not self.active or self.final:
            return False
        self._stopLoop()
        self.active = False
        self.drained = False
        self._target.stopDraining()
        self._log.info("Drain cancelled: taking work again")
        self._fire(False)
        return True

    def _check(self):
        try:
            if self._target.isDrained():
                self.drained = True
                self._log.info("Drained in {seconds:.1f} s", seconds=self._clock.seconds() - self._started)
            elif self._clock.seconds() >= self._deadline:
                self._log.warn("Drain timed out after {timeout:g} s with {work} left; going on anyway",
                               timeout=self.timeout, work=self._target.describeWork())
            else:
                return
        except Exception:
            self._log.failure("Could not check the drain; checking again")
            return
        self._stopLoop()
        self._fire(self.drained)

    def _stopLoop(self):
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def _fire(self, result):
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(result)
