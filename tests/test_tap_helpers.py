"""
What both taps share (L{livepeer_tx.taps}): the literal-secret warning, the
signal handlers and the CLI port. A node whose SIGHUP stopped reloading,
whose SIGTERM stopped draining, or whose CLI port moved off --cliAddr would
fail here.
"""

import signal

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel, capturedLogs
from twisted.web import resource

from livepeer_tx.secret import Secret
from livepeer_tx.taps import CLI_MAX_BODY_BYTES, cliPortService, makeSignalService, prepareNode


def test_prepareNodeWarnsOnALiteralSecret(monkeypatch, tmp_path):
    """
    A literal C{--orchSecret} is warned about (without its value); a file is not.
    """
    monkeypatch.setattr("livepeer_tx.taps.preventCoreDumps", lambda: None)
    path = tmp_path / "secret"
    path.write_text("s3cr3t-file\n")
    path.chmod(0o600)
    for value, warned in (("s3cr3t-literal", True), (str(path), False)):
        with capturedLogs() as events:
            secret = prepareNode({"secret": Secret.fromOption(value)}, Logger())
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        assert bool(warnings) == warned and secret.isLiteral == warned
        assert all("s3cr3t" not in repr(e) for e in events)


class FakeDrain:
    """
    Records why a graceful stop began.
    """

    def __init__(self):
        self.started = []
        self.active = False

    def start(self, reason, final=False):
        self.started.append((reason, final))
        self.active = True


def test_signalHandlers():
    """
    SIGHUP reloads, SIGUSR2 logs the status line through the tap's logger,
    SIGTERM and SIGINT begin a drain that ends in a stop.
    """
    reloads, drain = [], FakeDrain()
    signals = makeSignalService(MemoryReactorClock(), Logger(namespace="tap"), lambda: reloads.append(1),
                                lambda: "draining=no", drain)
    signals.dispatch(signal.SIGHUP)
    assert reloads == [1]
    with capturedLogs() as events:
        signals.dispatch(signal.SIGUSR2)
    assert [e["line"] for e in events if e.get("log_namespace") == "tap"] == ["draining=no"]
    signals.dispatch(signal.SIGTERM)
    signals.dispatch(signal.SIGINT)
    assert [reason for reason, final in drain.started][:1] == ["SIGTERM"]
    assert all(final for reason, final in drain.started)


def test_cliPortListensOnCliAddr():
    """
    The CLI port listens on C{--cliAddr}'s host and port and serves the
    given root with small request bodies.
    """
    reactor = MemoryReactorClock()
    root = resource.Resource()
    svc = cliPortService(reactor, {"cliHost": "127.0.0.1", "cliPort": 7935}, root)
    svc.privilegedStartService()
    port, factory, backlog, interface = reactor.tcpServers[0]
    assert (port, interface) == (7935, "127.0.0.1")
    assert factory.resource is root and factory.maxBodyBytes == CLI_MAX_BODY_BYTES
