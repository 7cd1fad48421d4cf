"""
The two taps' service trees, as C{twistd} would get them from
C{makeService}, built and started on a L{MemoryReactorClock}: which
services they hold, where their listeners listen, which limits the public
site enforces, which signals they handle and where the transcoder's link
connects. They look only at what the trees show from outside: their child
services, public attributes, the reactor's listeners and connection
attempts, signal handlers and log events. Nothing listens or connects for
real, and no FFmpeg runs.
"""

import os
import signal

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python import usage

from livepeer_tx.orchestrator import tap as orchestratorTap
from livepeer_tx.orchestrator.app import Orchestrator
from livepeer_tx.signals import SignalService
from livepeer_tx.transcoder import gpucheck
from livepeer_tx.transcoder import tap as transcoderTap
from livepeer_tx.tls import BulkTLSFactory
from livepeer_tx.transcoder.client import OrchestratorLink
from livepeer_tx.web import BoundedSite

NODE_SIGNALS = (signal.SIGHUP, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


def secretFile(directory):
    """
    A private secret file.
    """
    path = os.path.join(str(directory), "orchSecret")
    with open(path, "w") as f:
        f.write("s3cret-for-wiring\n")
    os.chmod(path, 0o600)
    return path


def services(parent, kind):
    """
    The direct children of C{parent} that are instances of C{kind}.
    """
    return [child for child in parent if isinstance(child, kind)]


def orchestratorTree(tmp_path, *arguments):
    """
    Parse an orchestrator command line and build its service tree on a
    memory reactor.
    """
    config = orchestratorTap.Options()
    config.parseOptions([
        "--orchSecret", secretFile(tmp_path), "--serviceAddr", "orch.example:8935",
        "--cliAddr", "127.0.0.1:7935", "--dataDir", str(tmp_path / "orchestrator"), *arguments])
    reactor = MemoryReactorClock()
    return reactor, config, orchestratorTap.makeService(config, reactor=reactor)


def publicListeners(reactor):
    """
    The listeners on C{reactor} that serve TLS (L{BulkTLSFactory} over TCP):
    C{(port, factory, backlog, interface)} each.
    """
    return [listener for listener in reactor.tcpServers if isinstance(listener[1], BulkTLSFactory)]


def test_orchestratorTreeListensWhereTheOptionsSay(tmp_path):
    """
    The orchestrator's tree holds the application, a signals service, the
    public TLS listener on --serviceAddr's port (or --httpAddr) and the
    plain CLI listener on --cliAddr's interface; starting it listens on the
    reactor it was given, not on real sockets.
    """
    reactor, config, parent = orchestratorTree(tmp_path, "--httpAddr", "0.0.0.0:18935")
    assert not parent.running
    assert len(services(parent, Orchestrator)) == 1
    assert isinstance(parent.getServiceNamed("signals"), SignalService)
    listeners = services(parent, StreamServerEndpointService)
    assert len(listeners) == 2
    parent.startService()
    try:
        (tlsPort, tlsFactory, _, tlsInterface), = publicListeners(reactor)
        assert (tlsPort, tlsInterface) == (18935, "0.0.0.0")
        assert not reactor.sslServers
        (cliPort, cliSite, _, cliInterface), = set(reactor.tcpServers) - set(publicListeners(reactor))
        assert (cliPort, cliInterface) == (7935, "127.0.0.1")
        assert isinstance(cliSite, BoundedSite) and cliSite.maxBodyBytes == 64 * 1024
    finally:
        parent.stopService()


def test_orchestratorRefusesASecretFileOthersCanRead(tmp_path):
    """
    A --orchSecret file readable by group or others is refused while the
    options are parsed, naming the file and its mode, so twistd exits with
    a usage message before anything starts (as for a readable TLS key in
    C{test_daemon_hardening}). Breaks if the orchestrator took the secret
    from a file others can read.
    """
    path = tmp_path / "open-secret"
    path.write_text("s3cret\n")
    path.chmod(0o644)
    with pytest.raises(usage.UsageError, match=rf"{path}: it is accessible by group or others \(mode 0644\)"):
        orchestratorTap.Options().parseOptions(["--orchSecret", str(path), "--dataDir", str(tmp_path / "data")])


def test_orchestratorPublicSiteTakesItsLimitsFromTheOptions(tmp_path):
    """
    The public port's site refuses bodies over --maxSegmentSize (in bytes)
    and hashes bodies for /segment; its connection factory caps
    connections as --maxConnections says.
    """
    reactor, config, parent = orchestratorTree(
        tmp_path, "--maxSegmentSize", "3000000", "--maxConnections", "123")
    parent.startService()
    try:
        (_, tlsFactory, _, _), = publicListeners(reactor)
        publicFactory = tlsFactory.wrappedFactory
        site = publicFactory.wrappedFactory
        assert site.maxBodyBytes == config["maxSegmentBytes"] == 3_000_000
        assert publicFactory.limiter.maxConnections == 123
        assert site.limits.headerTimeout == config["headerTimeoutValue"]
        assert site.limits.idleTimeout == config["idleTimeoutValue"]
    finally:
        parent.stopService()


def test_orchestratorTranscoderPingsFollowTheOption(tmp_path):
    """
    --transcoderPingInterval reaches the WebSocket factory behind
    C{/transcoder}: it pings that often, and a pong must come within as
    long. A tree that left the factory at its default would fail here.
    """
    reactor, config, parent = orchestratorTree(tmp_path, "--transcoderPingInterval", "1")
    app, = services(parent, Orchestrator)
    factory = app.transcoderFactory
    assert factory.autoPingInterval == factory.autoPingTimeout == config["pingSeconds"] == 1


def events():
    """
    An L{EventLoggingObserver} on the global log publisher; remove it with
    C{globalLogPublisher.removeObserver}.
    """
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    return observer


def assertSignalsWired(reactor, signals, statusLine, drain):
    """
    Dispatch the node's signals through its C{signals} service and check
    what each does: SIGHUP reloads (one summary line), SIGUSR2 logs the
    status line, SIGTERM starts the final drain (which, with no work in
    flight, stops the reactor) and SIGINT, a second stop signal, stops at
    once.
    """
    observer = events()
    try:
        signals.dispatch(signal.SIGHUP)
        signals.dispatch(signal.SIGUSR2)
        expectedLine = statusLine().split(" uptime=")[0]
        assert not reactor.hasStopped and not drain.active
        signals.dispatch(signal.SIGTERM)
        assert drain.active and drain.final and reactor.hasStopped
        signals.dispatch(signal.SIGINT)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert not [e for e in observer if e.get("log_format", "").startswith("Nothing is configured")]
    assert [e["reason"] for e in observer if e.get("log_format", "").startswith("Reloaded (")] == ["SIGHUP"]
    assert [e["line"].split(" uptime=")[0] for e in observer if "line" in e] == [expectedLine]
    stopsAgain = [e for e in observer if e["log_level"] == LogLevel.warn and e.get("reason") == "SIGINT"]
    assert len(stopsAgain) == 1


def test_orchestratorSignalsReloadReportAndStopGracefully(tmp_path):
    """
    The orchestrator's signals service reloads on SIGHUP, logs the status
    line on SIGUSR2 and drains then stops on SIGTERM and SIGINT. A tree that
    dropped or swapped one of these handlers would fail here.
    """
    reactor, config, parent = orchestratorTree(tmp_path)
    app, = services(parent, Orchestrator)
    assertSignalsWired(reactor, parent.getServiceNamed("signals"), app.statusLine, app.drain)
    assert app.draining


def test_orchestratorSignalHandlersInstalledOnlyWhileRunning(tmp_path):
    """
    Starting the tree installs no signal handler; they are installed once
    the reactor runs (so they replace the reactor's own) and the previous
    ones are back once the tree stops. A tree whose handlers were installed
    at import or start-up, or left behind after a stop, would fail here.
    """
    before = {signum: signal.getsignal(signum) for signum in NODE_SIGNALS}
    reactor, config, parent = orchestratorTree(tmp_path)
    parent.startService()
    try:
        assert {signum: signal.getsignal(signum) for signum in NODE_SIGNALS} == before
        reactor.run()
        installed = {signum: signal.getsignal(signum) for signum in NODE_SIGNALS}
        assert all(installed[signum] != before[signum] for signum in NODE_SIGNALS)
    finally:
        parent.stopService()
    assert {signum: signal.getsignal(signum) for signum in NODE_SIGNALS} == before


def transcoderTree(tmp_path, *arguments):
    """
    Parse a transcoder command line and build its service tree on a memory
    reactor.
    """
    config = transcoderTap.Options()
    config.parseOptions([
        "--orchAddr", "127.0.0.1:18935", "--orchSecret", secretFile(tmp_path), "--orchInsecure",
        "--cliAddr", "127.0.0.1:7936", "--dataDir", str(tmp_path / "transcoder"), *arguments])
    reactor = MemoryReactorClock()
    return reactor, config, transcoderTap.makeService(config, reactor=reactor)


def passStartUpTest(monkeypatch):
    """
    Make the transcoder's start-up transcode test pass at once, without
    FFmpeg.
    """
    async def nothing(*args):
        return None

    monkeypatch.setattr(gpucheck, "listNvidiaDevices", nothing)
    monkeypatch.setattr(gpucheck, "loadTestClip", lambda: b"test clip")
    monkeypatch.setattr(gpucheck, "checkDevices", nothing)


def test_transcoderTreeAndItsLink(tmp_path, monkeypatch):
    """
    The transcoder's tree holds a signals service and the CLI listener on
    --cliAddr; once the start-up test
    passes it links to --orchAddr with --maxSessions, and every connection
    attempt reads the secret file it was given: while the file is missing
    nothing connects, and once it is back the link connects to --orchAddr's
    host and port. A tree that built the link from other options, or with
    a secret read once at start, would fail here.
    """
    passStartUpTest(monkeypatch)
    reactor, config, node = transcoderTree(tmp_path, "--maxSessions", "3")
    assert isinstance(node.getServiceNamed("signals"), SignalService)
    assert len(services(node, StreamServerEndpointService)) == 1
    secretPath = config["secret"].path
    os.remove(secretPath)
    node.startService()
    try:
        (cliPort, cliSite, _, cliInterface), = reactor.tcpServers
        assert (cliPort, cliInterface) == (7936, "127.0.0.1")
        assert isinstance(cliSite, BoundedSite)
        link = node.link
        assert isinstance(link, OrchestratorLink) and link.running
        assert (link.host, link.port, link.capacity) == ("127.0.0.1", 18935, 3)
        assert link.worker.maxSessions == 3
        reactor.advance(0)
        assert reactor.tcpClients == []
        assert secretFile(tmp_path) == secretPath
        for _ in range(240):
            reactor.advance(0.5)
            if reactor.tcpClients:
                break
        assert [client[:2] for client in reactor.tcpClients] == [("127.0.0.1", 18935)]
    finally:
        node.stopService()


def test_transcoderSignalsReloadReportAndStopGracefully(tmp_path, monkeypatch):
    """
    The transcoder's signals service reloads on SIGHUP, logs the status
    line on SIGUSR2 and drains then stops on SIGTERM and SIGINT. A tree that
    dropped or swapped one of these handlers would fail here.
    """
    passStartUpTest(monkeypatch)
    reactor, config, node = transcoderTree(tmp_path)
    node.startService()
    try:
        assertSignalsWired(reactor, node.getServiceNamed("signals"), node.statusLine, node.drain)
        assert node.link.draining
    finally:
        node.stopService()


def test_transcoderRefusesZeroCapacity():
    """
    --maxSessions 0 is refused when the options are parsed, before anything
    starts, with the option's name.
    """
    config = transcoderTap.Options()
    with pytest.raises(usage.UsageError, match="--maxSessions must be a whole number from 1 to 999999999, not '0'"):
        config.parseOptions(["--orchAddr", "orch.example:8935", "--orchSecret", "s", "--maxSessions", "0"])


def test_aLiteralSecretIsWarnedAbout(tmp_path):
    """
    A transcoder given its secret as a literal warns that it is visible in
    the process list (and never logs the secret itself).
    """
    observer = events()
    try:
        config = transcoderTap.Options()
        config.parseOptions([
            "--orchAddr", "orch.example:8935", "--orchSecret", "literal-secret-value", "--orchInsecure",
            "--cliAddr", "127.0.0.1:7936", "--dataDir", str(tmp_path / "transcoder")])
        transcoderTap.makeService(config, reactor=MemoryReactorClock())
    finally:
        globalLogPublisher.removeObserver(observer)
    warnings = [e for e in observer if e["log_level"] == LogLevel.warn
                and "visible in the process list" in e.get("log_format", "")]
    assert len(warnings) == 1
    assert "literal-secret-value" not in repr(list(observer))
