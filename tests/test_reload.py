"""
Signals and reload, in memory: the signal service, re-reading options, the
server TLS pair, and the retirement of transcoders whose secret is no
longer valid (the real orchestrator and transcoder protocols over
L{twisted.test.iosim}, on a test clock).
"""

import signal

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from zope.interface import implementer
from twisted.logger import LogLevel
from twisted.python import usage
from twisted.python.failure import Failure

from livepeer_tx import wsproto
from livepeer_tx.orchestrator.reload import ROLLING_WAIT_SECONDS, OrchestratorReloader, SecretRotation
from livepeer_tx.orchestrator.routing import RETIRING_SECRET, NO_TRANSCODERS
from livepeer_tx.reload import OptionsReload
from livepeer_tx.secret import Secret
from livepeer_tx.signals import SignalService
from livepeer_tx.tls import CertificateError, FingerprintPinnedTLS, ReloadableServerTLS, createSelfSigned
from livepeer_tx.transcoder.client import Backoff
from livepeer_tx.transcoder.reload import TranscoderReloader

from memorywire import (  # noqa: F401 (events is a fixture)
    PROFILES, SECRET, Harness, HangingEngine, events, named, outcome, output, retries, texts,
)

NEW_SECRET = "the-new-secret-after-rotation"


# --- the signal service ---------------------------------------------------------------------------


class FakeSignals:
    """
    Stands in for the C{signal} module: records the handlers installed.
    """

    def __init__(self):
        self.handlers = {signal.SIGHUP: "default-hup", signal.SIGTERM: "reactor-term"}

    def signal(self, signum, handler):
        previous = self.handlers.get(signum, "default")
        self.handlers[signum] = handler
        return previous


class FakeReactor:
    """
    Runs C{callWhenRunning} and C{callFromThread} calls at once.
    """

    def callWhenRunning(self, f, *args):
        f(*args)

    def callFromThread(self, f, *args):
        f(*args)


def test_signalServiceInstallsDispatchesAndRestores(events):
    """
    Once running, the service handles SIGHUP, SIGUSR1 and SIGUSR2 (so they
    cannot kill) and every signal with a callback; a signal runs its
    callbacks in order, one that raises does not stop the others, one with
    none is only logged; stopping puts the previous handlers back.
    """
    fake = FakeSignals()
    signals = SignalService(FakeReactor(), signalModule=fake)
    calls = []
    signals.addHandler(signal.SIGHUP, lambda: calls.append("reload"))
    signals.addHandler(signal.SIGHUP, lambda: 1 / 0)
    signals.addHandler(signal.SIGHUP, lambda: calls.append("after"))
    signals.addHandler(signal.SIGTERM, lambda: calls.append("drain"))
    assert fake.handlers[signal.SIGHUP] == "default-hup"
    signals.startService()
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
        assert fake.handlers[signum] == signals._received
    fake.handlers[signal.SIGHUP](signal.SIGHUP, None)
    fake.handlers[signal.SIGUSR1](signal.SIGUSR1, None)
    fake.handlers[signal.SIGTERM](signal.SIGTERM, None)
    assert calls == ["reload", "after", "drain"]
    assert any("Nothing is configured for SIGUSR1" in t for t in texts(events))
    assert sum("Handling SIGHUP failed" in t for t in texts(events, LogLevel.critical)) == 1
    late = []
    signals.addHandler(signal.SIGUSR1, lambda: late.append(True))
    fake.handlers[signal.SIGUSR1](signal.SIGUSR1, None)
    assert late == [True]
    signals.stopService()
    assert fake.handlers[signal.SIGHUP] == "default-hup"
    assert fake.handlers[signal.SIGTERM] == "reactor-term"
    assert fake.handlers[signal.SIGUSR1] == "default"


# --- options ----------------------------------------------------------------------------------------


class FakeOptions(dict):
    """
    A parsed C{Options}: its values and the option names it declares.
    """

    longOpt = ["maxSessions=", "httpAddr=", "monitor", "help", "version"]


def test_optionsReloadAppliesWhatChangedAndCanBeApplied(events):
    """
    A changed option the daemon can apply is applied; one it cannot is
    logged as needing a restart (again at every reload until then); an
    unchanged one is left alone, and a configuration that does not parse
    changes nothing.
    """
    current = FakeOptions(maxSessions="10", httpAddr=":8935", monitor=0)
    readings = [FakeOptions(current), FakeOptions(current, maxSessions="4", httpAddr=":9000"),
                FakeOptions(current, maxSessions="4", httpAddr=":9000"), usage.UsageError("bad line 3")]
    applied = []

    def read():
        reading = readings.pop(0)
        if isinstance(reading, Exception):
            raise reading
        return reading

    reload = OptionsReload(read, current, {"maxSessions": lambda new: applied.append(new["maxSessions"])})
    assert reload.reload() == "unchanged" and applied == []
    assert reload.reload() == "changed" and applied == ["4"]
    assert reload.reload() == "changed" and applied == ["4"]
    restarts = [t for t in texts(events, LogLevel.warn) if "--httpAddr changed" in t]
    assert len(restarts) == 2
    assert reload.reload() == "error" and reload.current["maxSessions"] == "4"
    assert OptionsReload(None, current, {}).reload() == "not used"


# --- TLS ------------------------------------------------------------------------------------------


def writePair(directory, name, hostname="orch.example"):
    certPEM, keyPEM = createSelfSigned(hostname)
    certPath, keyPath = directory / f"{name}.pem", directory / f"{name}.key"
    certPath.write_bytes(certPEM)
    keyPath.write_bytes(keyPEM)
    keyPath.chmod(0o600)
    return certPath, keyPath


def handshake(serverTLS, fingerprint):
    """
    A TLS handshake in memory with a client that accepts only the
    certificate with C{fingerprint}: whether it succeeded.
    """
    server = TLSMemoryBIOFactory(serverTLS, False, Factory.forProtocol(Protocol)).buildProtocol(None)
    recorder = HandshakeRecorder()
    client = TLSMemoryBIOFactory(FingerprintPinnedTLS(fingerprint), True, Factory.forProtocol(lambda: recorder)
                                 ).buildProtocol(None)
    pump = iosim.connect(server, iosim.FakeTransport(server, True), client, iosim.FakeTransport(client, False))
    pump.flush()
    return recorder.completed


@implementer(IHandshakeListener)
class HandshakeRecorder(Protocol):
    """
    Records whether its TLS handshake completed.
    """

    completed = False

    def handshakeCompleted(self):
        self.completed = True


def test_serverTlsReloadSwapsThePairForNewConnections(tmp_path):
    """
    A reload serves the files' new pair from the next handshake on; a pair
    that cannot be used (a key of another certificate, a key open to
    others) is refused and the one loaded before stays.
    """
    certPath, keyPath = writePair(tmp_path, "served")
    serverTLS = ReloadableServerTLS(str(certPath), str(keyPath))
    before = serverTLS.fingerprint
    assert handshake(serverTLS, before)
    assert serverTLS.reload() == (before, before)
    otherCert, otherKey = writePair(tmp_path, "other")
    certPath.write_bytes(otherCert.read_bytes())
    with pytest.raises(CertificateError, match="does not match"):
        serverTLS.reload()
    assert serverTLS.fingerprint == before and handshake(serverTLS, before)
    keyPath.write_bytes(otherKey.read_bytes())
    keyPath.chmod(0o644)
    with pytest.raises(CertificateError, match="accessible by group or others"):
        serverTLS.reload()
    keyPath.chmod(0o600)
    previous, current = serverTLS.reload()
    assert previous == before and current != before
    assert handshake(serverTLS, current) and not handshake(serverTLS, before)


# --- the secret and the transcoders registered with it ------------------------------------------------


class RotationHarness(Harness):
    """
    The in-memory orchestrator of L{memorywire.Harness}, with its secret in
    a file, and its reloader.
    """

    def __init__(self, path, grace=0.0, **options):
        self.path = path
        self.writeSecret(SECRET)
        super().__init__(secret=Secret(path=str(path)), **options)
        self.rotation = SecretRotation(self.app, self.clock, grace)
        self.reloader = OrchestratorReloader(
            self.app, self.secret, None, self.rotation, OptionsReload(None, {}, {}))

    def writeSecret(self, value):
        self.path.write_text(value + "\n")
        self.path.chmod(0o600)


def test_reloadRetiresStaleTranscodersAtOnceAndLosesNoSegment(tmp_path, events):
    """
    With no grace period, a reload after the secret file changed retires
    every transcoder that registered with the old secret: idle ones are
    closed with 4004 at once, a busy one takes no new segment and is closed
    once its segment is answered. A transcoder of the new secret is not
    touched. The secrets never reach the log.
    """
    harness = RotationHarness(tmp_path / "orchSecret")
    busyEngine = HangingEngine()
    busy = harness.connect(busyEngine)
    busyAddress = busy.address
    idle = harness.connect()
    inFlight = harness.transcode("busy-session")
    assert busy.link.taskIds and busy.server.transcoder.tasksInFlight == 1
    harness.writeSecret(NEW_SECRET)
    fresh = harness.connect(secretValue=NEW_SECRET)
    summary = harness.reloader.reload()
    harness.flush()
    assert summary["secret"] == "changed (2 transcoder(s) with the old one)"
    assert idle.link.closeCodes == [wsproto.CLOSE_SECRET_ROTATED]
    assert busy.link.closeCodes == [] and busy.server.transcoder.retiring == RETIRING_SECRET
    result = outcome(harness.transcode("another-session"))
    assert result.transcoder == fresh.address
    busyEngine.calls[0].callback(output(PROFILES))
    harness.advance(0.5)
    answer = outcome(inFlight)
    assert not isinstance(answer, Failure) and answer.transcoder == busyAddress
    assert busy.link.closeCodes == [wsproto.CLOSE_SECRET_ROTATED]
    assert harness.live == [fresh.address] and not harness.rotation.active
    for link in (busy.link, idle.link):
        assert link.scheduled and link.scheduled[-1] < 1.0
    logged = "\n".join(texts(events))
    assert SECRET not in logged and NEW_SECRET not in logged
    assert "will re-read" in logged and "Every transcoder with the old secret is gone" in logged


def test_withoutAnyTranscoderOfTheNewSecretNewSegmentsFindNone(tmp_path):
    """
    With no grace period and every transcoder stale, new segments find no
    transcoder until one comes back with the new secret.
    """
    harness = RotationHarness(tmp_path / "orchSecret")
    harness.connect()
    harness.writeSecret(NEW_SECRET)
    harness.reloader.reload()
    harness.flush()
    failure = outcome(harness.transcode())
    assert isinstance(failure, Failure) and str(failure.value) == NO_TRANSCODERS
    harness.connect(secretValue=NEW_SECRET)
    assert not isinstance(outcome(harness.transcode()), Failure)


def test_gracePeriodReplacesStaleTranscodersOneAtATime(tmp_path, events):
    """
    With a grace period, stale transcoders are retired one at a time: the
    next once the previous is gone and a transcoder registered since (or
    after the rolling wait), so the others keep serving a stream throughout;
    whatever is left at the end of the grace period goes at once.
    """
    harness = RotationHarness(tmp_path / "orchSecret", grace=60.0)
    stale = [harness.connect() for _ in range(3)]
    harness.writeSecret(NEW_SECRET)
    harness.reloader.reload()
    harness.flush()
    closed = [t for t in stale if t.link.closeCodes]
    assert len(closed) == 1 and len(harness.live) == 2
    for _ in range(3):
        assert not isinstance(outcome(harness.transcode("stream")), Failure)
    harness.advance(1.0)
    assert len([t for t in stale if t.link.closeCodes]) == 1, "the next waits for a replacement"
    harness.connect(secretValue=NEW_SECRET)
    harness.advance(0.5)
    assert len([t for t in stale if t.link.closeCodes]) == 2
    # No replacement this time: the third goes after the rolling wait.
    harness.advance(ROLLING_WAIT_SECONDS - 1.0)
    assert len([t for t in stale if t.link.closeCodes]) == 2
    harness.advance(1.5)
    assert all(t.link.closeCodes == [wsproto.CLOSE_SECRET_ROTATED] for t in stale)
    assert len(harness.live) == 1 and not harness.rotation.active


def test_endOfGracePeriodRetiresWhatIsLeft(tmp_path):
    """
    Stale transcoders still there when the grace period ends are retired
    together.
    """
    harness = RotationHarness(tmp_path / "orchSecret", grace=5.0)
    stale = [harness.connect() for _ in range(3)]
    harness.writeSecret(NEW_SECRET)
    harness.reloader.reload()
    harness.advance(4.5)
    assert len([t for t in stale if t.link.closeCodes]) == 1
    harness.advance(1.0)
    assert all(t.link.closeCodes for t in stale) and harness.live == []


def test_reloadWithAnUnreadableSecretFileKeepsEveryone(tmp_path, events):
    """
    A secret file gone bad is reported by the reload and retires nobody.
    """
    harness = RotationHarness(tmp_path / "orchSecret")
    harness.connect()
    harness.path.chmod(0o644)
    assert harness.reloader.reload()["secret"] == "error"
    harness.flush()
    assert len(harness.live) == 1
    assert any("accessible by group or others" in t for t in texts(events, LogLevel.error))


def test_reloadWithTheSameSecretChangesNothing(tmp_path):
    """
    A reload with the file unchanged keeps every transcoder.
    """
    harness = RotationHarness(tmp_path / "orchSecret")
    harness.connect()
    assert harness.reloader.reload()["secret"] == "unchanged"
    harness.advance(1.0)
    assert len(harness.live) == 1


def test_stockTranscoderOfAStaleSecretIsToldToRetry(tmp_path):
    """
    A stock go-livepeer transcoder (gRPC) that registered with the old
    secret is retired too: its call ends with UNAVAILABLE C{secret rotated},
    on which it reconnects (never C{invalid secret}, on which it would stop
    for good); one that registered with the new secret stays.
    """
    from livepeer_tx.rpc import StatusCode
    from test_grpc_transcoders import Orch

    path = tmp_path / "orchSecret"
    path.write_text(SECRET)
    path.chmod(0o600)
    secret = Secret(path=str(path))
    orch = Orch(secret=secret)
    reloader = OrchestratorReloader(orch.app, secret, None, SecretRotation(orch.app, orch.clock),
                                    OptionsReload(None, {}, {}))
    client, staleStream = orch.register(secret=SECRET)
    path.write_text(NEW_SECRET)
    freshClient, freshStream = orch.register(secret=NEW_SECRET)
    assert reloader.reload()["secret"] == "changed (1 transcoder(s) with the old one)"
    client.pump()
    response = client.response(staleStream)
    assert response.ended and response.status == StatusCode.UNAVAILABLE
    assert response.message == "secret rotated; re-read the secret file"
    assert len(orch.app.pool.transcoders) == 1 and not freshClient.response(freshStream).ended


class LinkNode:
    """
    What the transcoder's reloader needs of its node.
    """

    def __init__(self, link):
        self.link = link
        self.tlsOptions = []

    def setTLSOptions(self, options):
        self.tlsOptions.append(options)


def test_transcoderReloadRetriesAtOnceWithAChangedSecret(tmp_path, events):
    """
    A transcoder refused for its secret waits about 30 s, unless its file
    changed since the attempt; a reload that finds the file changed retries
    at once (and registers); one that finds it unchanged does nothing.
    Neither secret is logged. Breaks if the link stops re-reading the secret
    on every attempt or if a reload no longer cuts the wait short.
    """
    path = tmp_path / "orchSecret"
    path.write_text(NEW_SECRET)
    path.chmod(0o600)
    clock = MemoryReactorClock()
    harness = Harness(clock=clock)
    link = harness.link(Secret(path=str(path)), backoff=Backoff(random=lambda: 0.5))
    reloader = TranscoderReloader(LinkNode(link), link._secret, None, OptionsReload(None, {}, {}))
    link.startService()
    harness.flush()
    assert retries(events) == [30.0] and len(named(events, "Registering transcoder to")) == 1
    assert reloader.reload()["secret"] == "unchanged" and len(named(events, "Registering transcoder to")) == 1
    path.write_text(SECRET)
    assert reloader.reload()["secret"] == "changed" and len(named(events, "Registering transcoder to")) == 2
    harness.flush()
    assert link.isRegistered and retries(events) == [30.0]
    path.write_text(NEW_SECRET)
    harness.app.pool.transcoders[0].link.closeForShutdown()
    harness.flush()
    clock.advance(retries(events)[-1])
    path.write_text(SECRET)
    harness.flush()
    assert named(events, "The orchestrator refused our secret ({error}), but {path} changed since")
    assert retries(events)[-1] < 1.0, "the file changed since the attempt: retry soon"
    logged = "\n".join(texts(events))
    assert SECRET not in logged and NEW_SECRET not in logged
