# -*- test-case-name: tests.test_reload -*-
"""
The daemons' signal handlers, installed in one place.

Both daemons run a L{SignalService}, named C{signals} in their service tree.
It installs its handlers once the reactor runs (after the reactor's own
SIGINT and SIGTERM handlers, which it replaces) and puts the previous
handlers back when it stops. SIGHUP, SIGUSR1 and SIGUSR2 are always handled,
so none of them can kill a daemon: a signal with no callback is only logged.

What each signal does is registered with L{SignalService.addHandler}:

- SIGHUP: reload (the secret file, the TLS files, the configuration);
- SIGUSR2: one status line in the log;
- SIGTERM and SIGINT: drain, then stop (a second one stops at once);
- SIGUSR1: reserved for reopening the log file. The logging code registers
  its reopening with C{application.getServiceNamed("signals").addHandler(
  signal.SIGUSR1, reopen)} (or on the service L{tap.makeService} builds).
"""

import signal as _signal
from collections import defaultdict

from twisted.application import service
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

SERVICE_NAME = "signals"
ALWAYS_HANDLED = (_signal.SIGHUP, _signal.SIGUSR1, _signal.SIGUSR2)


def signalName(signum):
    """
    C{SIGHUP} for 1, and so on.
    """
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class SignalService(service.Service):
    """
    Installs the daemon's signal handlers while it runs; each signal runs its
    registered callbacks in the reactor thread, in the order they were added.
    A callback that raises is logged and the others still run.

    @param reactor: the reactor (C{callWhenRunning}, C{callFromThread}).
    @param signalModule: the module installing handlers (L{signal}; tests
        pass a stand-in).
    """

    _log = Logger()

    def __init__(self, reactor, signalModule=_signal):
        self._reactor = reactor
        self._signal = signalModule
        self._callbacks = defaultdict(list)
        self._previous = {}
        self.setName(SERVICE_NAME)

    def addHandler(self, signum, callback):
        """
        Call C{callback()} whenever C{signum} arrives. Handlers added while
        the service runs take effect at once.
        """
        self._callbacks[signum].append(callback)
        if self._previous:
            self._installOne(signum)

    def startService(self):
        """
        Install the handlers once the reactor runs (so they replace its own).
        """
        super().startService()
        self._reactor.callWhenRunning(self._install)

    def stopService(self):
        """
        Put back the handlers that were there before.
        """
        super().stopService()
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            self._signal.signal(signum, handler)

    def _install(self):
        if not self.running:
            return
        for signum in sorted(set(ALWAYS_HANDLED) | set(self._callbacks)):
            self._installOne(signum)

    def _installOne(self, signum):
        previous = self._signal.signal(signum, self._received)
        self._previous.setdefault(signum, previous)

    def _received(self, signum, frame):
        # A Python signal handler: hand over to the reactor thread at once.
        self._reactor.callFromThread(self.dispatch, signum)

    def dispatch(self, signum):
        """
        Run C{signum}'s callbacks (in the reactor thread).
        """
        callbacks = list(self._callbacks.get(signum, ()))
        self._log.info("Received {signal}", signal=signalName(signum))
        if not callbacks:
            self._log.info("Nothing is configured for {signal}; ignoring it", signal=signalName(signum))
        for callback in callbacks:
            try:
                callback()
            except Exception:
                self._log.failure("Handling {signal} failed", signal=signalName(signum))


class GracefulStop:
    """
    Stops a daemon after draining it: the first stop signal starts the
    L{Drain<livepeer_tx.lifecycle.Drain>} and stops the reactor once it is
    over (drained, or timed out); a second one stops the reactor at once.

    @param reactor: the reactor to stop.
    @param drain: the node's L{Drain<livepeer_tx.lifecycle.Drain>}.
    """

    _log = Logger()

    def __init__(self, reactor, drain):
        self._reactor = reactor
        self._drain = drain
        self.stopping = False

    def stop(self, reason="SIGTERM"):
        """
        Drain, then stop; stop now if a graceful stop is under way already.
        """
        if self.stopping:
            self._log.warn("{reason} again: stopping without waiting for the drain", reason=reason)
            self._stopReactor()
            return
        self.stopping = True
        self._drain.start(reason, final=True).addCallback(lambda _: self._stopReactor())

    def _stopReactor(self):
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass
