# -*- test-case-name: tests.test_chain_reward,tests.test_chain_payments -*-
"""
The shape of the chain code's background jobs: one async pass every few
seconds, never two at once, never killed by one failed pass.
"""

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


class PeriodicService(Service):
    """
    Runs C{await self.runOnce()} every C{interval} seconds.

    A pass still running when the next tick comes (a transaction waiting for
    its receipt) is not doubled. A failed pass goes to L{passFailed} and the
    loop carries on. Stopping waits for a pass in flight.

    Subclasses implement C{runOnce}, and may override L{shouldRun},
    L{passFailed} and L{passFinished}.

    @ivar reactor: the reactor (or L{twisted.internet.task.Clock}) the loop runs on.
    """

    _log = Logger()

    def __init__(self, reactor, interval):
        self._reactor = self.reactor = reactor
        self.interval = interval
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        self._running = None

    def startService(self):
        """
        Start the loop, with a first pass now.
        """
        Service.startService(self)
        self._loop.start(self.interval, now=True)

    def stopService(self):
        """
        Stop the loop; the Deferred fires when a pass in flight has ended.
        """
        Service.stopService(self)
        if self._loop.running:
            self._loop.stop()
        if self._running is not None:
            d = Deferred()
            self._running.addBoth(lambda _: d.callback(None))
            return d
        return succeed(None)

    def shouldRun(self):
        """
        Whether this tick has work to do.
        """
        return True

    def passFailed(self, failure):
        """
        Log a failed pass; the loop goes on.
        """
        self._log.failure("{name} pass failed; will retry", failure, name=type(self).__name__)

    def passFinished(self):
        """
        Called after every pass, failed or not.
        """

    def _tick(self):
        if self._running is not None or not self.shouldRun():
            return
        d = Deferred.fromCoroutine(self.runOnce())
        d.addErrback(self._passFailedSafely)

        def finished(_):
            self._running = None
            self.passFinished()

        d.addBoth(finished)
        if not d.called:
            self._running = d

    def _passFailedSafely(self, failure):
        try:
            self.passFailed(failure)
        except Exception:
            self._log.failure("Error while handling a failed pass")
