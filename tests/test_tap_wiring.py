"""
The two taps' service trees, as C{twistd} would get them from
C{makeService}, built and started on a L{MemoryReactorClock}: which
services they hold, where their listeners listen, which limits the public
site enforces, and which signals they handle. Nothing listens for real, no
signal handler is installed and no FFmpeg runs.
"""

import os
import signal

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python import usage

from livepeer_tx import wsproto
from livepeer_tx.orchestrator import tap as orchestratorTap
from livepeer_tx.orchestrator.app import Orchestrator
from livepeer_tx.signals import SignalService
from livepeer_tx.transcoder import tap as transcoderTap
from livepeer_tx.transcoder.client import OrchestratorLink
from livepeer_tx.web import BoundedSite


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


def test_orchestrator_tree_listens_where_the_options_say(tmp_path):
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
        (sslPort, sslFactory, _, sslContext, sslInterface), = reactor.sslServers
        assert (sslPort, sslInterface) == (18935, "0.0.0.0")
        (cliPort, cliSite, _, cliInterface), = reactor.tcpServers
        assert (cliPort, cliInterface) == (7935, "127.0.0.1")
        assert isinstance(cliSite, BoundedSite) and cliSite.maxBodyBytes == 64 * 1024
    finally:
        parent.stopService()


def test_orchestrator_public_site_takes_its_limits_from_the_options(tmp_path):
    """
    The public port's site refuses bodies over --maxSegmentSize (in bytes)
    and hashes bodies for /segment; its connection factory caps
    connections as --maxConnections says.
    """
    reactor, config, parent = orchestratorTree(
        tmp_path, "--maxSegmentSize", "3000000", "--maxConnections", "123")
    parent.startService()
    try:
        (_, publicFactory, _, _, _), = reactor.sslServers
        site = publicFactory.wrappedFactory
        assert site.maxBodyBytes == config["maxSegmentBytes"] == 3_000_000
        assert publicFactory.limiter.maxConnections == 123
        assert site.limits.headerTimeout == config["headerTimeoutValue"]
        assert site.limits.idleTimeout == config["idleTimeoutValue"]
    finally:
        parent.stopService()


def test_orchestrator_transcoder_pings_follow_the_option(tmp_path):
    """
    --transcoderPingInterval reaches the WebSocket factory behind
    C{/transcoder}: pings that often, and a pong must come within as long.
    """
    reactor, config, parent = orchestratorTree(tmp_path, "--transcoderPingInterval", "1")
    parent.startService()
    try:
        (_, publicFactory, _, _, _), = reactor.sslServers
        gate = publicFactory.wrappedFactory.resource.children[wsproto.RESOURCE_PATH]
        factory = gate._webSocket._factory
        assert factory.autoPingInterval == factory.autoPingTimeout == 1
    finally:
        parent.stopService()


def test_orchestrator_signals_run_reload_status_and_graceful_stop(tmp_path):
    """
    The signals service handles SIGHUP (reload), SIGUSR2 (status line),
    SIGTERM and SIGINT (graceful stop); it installs nothing until the
    reactor runs.
    """
    reactor, config, parent = orchestratorTree(tmp_path)
    signals = parent.getServiceNamed("signals")
    assert {signal.SIGHUP, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT} <= set(signals._callbacks)
    parent.startService()
    try:
        assert signals._previous == {}
        assert any(hook[0] == signals._install for hook in reactor.whenRunningHooks)
    finally:
        parent.stopService()


def transcoderTree(tmp_path, *arguments):
    """
    Parse a transcoder command line and build its service tree on a memory
    reactor.
    """
    config = transcoderTap.Options()
    config.parseOptions([
        "--orchAddr", "orch.example:8935", "--orchSecret", secretFile(tmp_path), "--orchInsecure",
        "--cliAddr", "127.0.0.1:7936", "--dataDir", str(tmp_path / "transcoder"), *arguments])
    reactor = MemoryReactorClock()
    return reactor, config, transcoderTap.makeService(config, reactor=reactor)


def test_transcoder_tree_and_its_link(tmp_path):
    """
    The transcoder's tree holds a signals service and the CLI listener on
    --cliAddr; the link it makes after the start-up test goes to
    --orchAddr with --maxSessions, reading the secret file it was given.
    """
    reactor, config, node = transcoderTree(tmp_path, "--maxSessions", "3")
    assert isinstance(node.getServiceNamed("signals"), SignalService)
    listener, = services(node, StreamServerEndpointService)
    listener.privilegedStartService()
    (cliPort, cliSite, _, cliInterface), = reactor.tcpServers
    assert (cliPort, cliInterface) == (7936, "127.0.0.1")
    assert isinstance(cliSite, BoundedSite)
    link = node._makeLink(None)
    assert isinstance(link, OrchestratorLink)
    assert (link.host, link.port, link.capacity) == ("orch.example", 8935, 3)
    assert link._secret is config["secret"] and config["secret"].path
    assert link.worker.maxSessions == 3
    assert {signal.SIGHUP, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT} <= set(
        node.getServiceNamed("signals")._callbacks)


def test_transcoder_refuses_zero_capacity():
    """
    --maxSessions 0 is refused when the options are parsed, before anything
    starts, with the option's name.
    """
    config = transcoderTap.Options()
    with pytest.raises(usage.UsageError, match="--maxSessions must be an integer greater than zero"):
        config.parseOptions(["--orchAddr", "orch.example:8935", "--orchSecret", "s", "--maxSessions", "0"])


def test_a_literal_secret_is_warned_about(tmp_path):
    """
    A transcoder given its secret as a literal warns that it is visible in
    the process list (and never logs the secret itself).
    """
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
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
