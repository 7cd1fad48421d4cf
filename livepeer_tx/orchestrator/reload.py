# -*- test-case-name: tests.test_reload -*-
"""
The orchestrator's reload (SIGHUP, C{systemctl reload}): the secret file,
the TLS certificate and key, and the configuration; and the retirement of
transcoders whose secret is no longer valid.
"""

from twisted.internet import task
from twisted.logger import Logger

from livepeer_tx.orchestrator.routing import RETIRING_SECRET
from livepeer_tx.reload import NodeReloader, rereadSecret
from livepeer_tx.tls import CertificateError, formatFingerprint

# With a grace period, how long to wait for a retired transcoder to come back
# before retiring the next one anyway.
ROLLING_WAIT_SECONDS = 10.0


class SecretRotation:
    """
    Retires the transcoders that registered with a secret that is no longer
    valid. A retired transcoder gets no new segments; it is closed (WebSocket
    close code 4004, or a gRPC call ended with UNAVAILABLE) as soon as it
    holds none.

    With a C{grace} of 0 every stale transcoder is retired at once. With a
    grace period they are retired one at a time, so that the others keep
    serving: the next one once the previous one is gone and a transcoder
    has registered since (it came back with the new secret), or
    L{ROLLING_WAIT_SECONDS} after it went; whatever is left when the grace
    period ends is retired at once.

    @param app: the L{Orchestrator} (its C{pool} and C{registrations}).
    @param clock: an L{IReactorTime}.
    @param grace: seconds, see above.
    """

    _log = Logger()

    def __init__(self, app, clock, grace=0.0, interval=0.25):
        self._app = app
        self._clock = clock
        self.grace = grace
        self.interval = interval
        self._waiting = []
        self._retired = []
        self._closed = set()
        self._deadline = None
        self._lastGone = None
        self._registrationsAtRetirement = 0
        self._loop = None

    @property
    def active(self):
        """
        Whether stale transcoders are still connected.
        """
        return self._loop is not None

    def start(self, currentTag):
        """
        Retire every transcoder whose secret's tag is not C{currentTag}.

        @return: how many are stale.
        """
        stale = [t for t in self._app.pool.transcoders
                 if t.credentialTag is not None and t.credentialTag != currentTag and t not in self._retired]
        self._waiting = [t for t in self._waiting if t.live and t.credentialTag != currentTag]
        self._waiting += [t for t in stale if t not in self._waiting]
        if not self._waiting and not self._retired:
            return 0
        count = len(self._waiting)
        self._deadline = self._clock.seconds() + self.grace
        self._log.info(
            "{count} transcoder(s) registered with a secret that is no longer valid: {how}",
            count=count,
            how="retiring them now" if self.grace <= 0 else
            f"replacing them one at a time, all retired within {self.grace:g} s")
        if self._loop is None:
            self._loop = task.LoopingCall(self._step)
            self._loop.clock = self._clock
            self._loop.start(self.interval, now=True)
        else:
            self._step()
        return count

    def _step(self):
        try:
            self._advance()
        except Exception:
            self._log.failure("Secret rotation step failed; trying again")

    def _advance(self):
        now = self._clock.seconds()
        for transcoder in list(self._retired):
            if not transcoder.live:
                self._retired.remove(transcoder)
                self._closed.discard(transcoder)
                self._lastGone = now
            elif transcoder.tasksInFlight == 0 and transcoder not in self._closed:
                self._closed.add(transcoder)
                self._log.info("Closing transcoder={transcoder}: its secret is no longer valid",
                               transcoder=transcoder.address)
                transcoder.link.closeForStaleSecret()
        self._waiting = [t for t in self._waiting if t.live]
        if now >= self._deadline:
            for transcoder in self._waiting:
                self._retire(transcoder)
            self._waiting = []
        elif self._waiting and not self._retired and self._previousReplaced(now):
            self._retire(self._waiting.pop(0))
        if not self._waiting and not self._retired:
            self._log.info("Every transcoder with the old secret is gone")
            loop, self._loop = self._loop, None
            loop.stop()

    def _previousReplaced(self, now):
        if self._lastGone is None:
            return True
        return (self._app.registrations > self._registrationsAtRetirement
                or now - self._lastGone >= ROLLING_WAIT_SECONDS)

    def _retire(self, transcoder):
        self._app.pool.retire(transcoder, RETIRING_SECRET)
        self._retired.append(transcoder)
        self._registrationsAtRetirement = self._app.registrations
        self._log.info("Retiring transcoder={transcoder}: its secret is no longer valid; {tasks} segment(s) in "
                       "flight on it", transcoder=transcoder.address, tasks=transcoder.tasksInFlight)
        if transcoder.tasksInFlight == 0:
            self._closed.add(transcoder)
            transcoder.link.closeForStaleSecret()


class OrchestratorReloader(NodeReloader):
    """
    Re-reads what an orchestrator can change while it runs (the
    configuration, the secret and the TLS pair), and logs what changed
    (never the secret itself).

    @param app: the L{Orchestrator}.
    @param secret: the shared L{Secret}.
    @param serverTLS: the L{ReloadableServerTLS<livepeer_tx.tls.ReloadableServerTLS>}
        of the public port, or L{None}.
    @param rotation: the L{SecretRotation}.
    @param options: the L{OptionsReload<livepeer_tx.reload.OptionsReload>}.
    """

    _log = Logger()

    def __init__(self, app, secret, serverTLS, rotation, options):
        NodeReloader.__init__(self, secret, options)
        self._app = app
        self._serverTLS = serverTLS
        self._rotation = rotation

    def _reloadSecret(self):
        tag, outcome = rereadSecret(self._secret, self._log, "; registrations are refused until it is fixed")
        if outcome is not None:
            return outcome
        changed, self._secretTag = tag != self._secretTag, tag
        if changed:
            self._log.info("Reload: the secret in {path} changed", path=self._secret.path)
        stale = self._rotation.start(tag)
        if stale:
            return f"changed ({stale} transcoder(s) with the old one)" if changed else \
                f"unchanged ({stale} transcoder(s) with another one)"
        return "changed" if changed else "unchanged"

    def _reloadTLS(self):
        if self._serverTLS is None:
            return "not used"
        try:
            previous, current = self._serverTLS.reload()
        except CertificateError as e:
            self._log.error("Reload: {error}; still serving the certificate loaded before", error=str(e))
            return "error"
        if previous == current:
            return "unchanged"
        self._log.info("TLS certificate {path} SHA-256 fingerprint {fingerprint} (was {previous}), served to new "
                       "connections", path=self._serverTLS.certPath, fingerprint=formatFingerprint(current),
                       previous=formatFingerprint(previous))
        return "changed"
