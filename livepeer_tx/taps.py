# -*- test-case-name: tests.test_tap_helpers -*-
"""
What the orchestrator's and the transcoder's C{makeService} do alike: the
start-up preamble, the signal handlers and the CLI port.
"""

import signal

from twisted.application import strports
from twisted.internet.endpoints import quoteStringArgument

from livepeer_tx.lifecycle import preventCoreDumps

# The CLI port's actions take a few form fields.
CLI_MAX_BODY_BYTES = 64 * 1024


def prepareNode(config, log):
    """
    The preamble of a node's C{makeService}: no core dumps (they would hold
    the secret), and a warning when C{--orchSecret} was given literally.

    @param log: the tap's L{twisted.logger.Logger}.
    @return: the node's L{livepeer_tx.secret.Secret}.
    """
    preventCoreDumps()
    secret = config["secret"]
    if secret.isLiteral:
        log.warn("--orchSecret was given as a literal: it is visible in the process list; use a file (mode 600)")
    return secret


def makeSignalService(reactor, log, reload, statusLine, drain):
    """
    A node's L{SignalService<livepeer_tx.signals.SignalService>}: SIGHUP
    reloads, SIGUSR2 logs a status line, SIGTERM and SIGINT drain then stop.

    @param log: the tap's L{twisted.logger.Logger}, for the status line.
    @param reload: called on SIGHUP.
    @param statusLine: returns the status line's text.
    @param drain: the node's L{livepeer_tx.lifecycle.Drain}.
    """
    from livepeer_tx.signals import GracefulStop, SignalService

    signals = SignalService(reactor)
    signals.addHandler(signal.SIGHUP, reload)
    signals.addHandler(signal.SIGUSR2, lambda: log.info("Status: {line}", line=statusLine()))
    graceful = GracefulStop(reactor, drain)
    signals.addHandler(signal.SIGTERM, lambda: graceful.stop("SIGTERM"))
    signals.addHandler(signal.SIGINT, lambda: graceful.stop("SIGINT"))
    return signals


def cliPortService(reactor, config, root):
    """
    The CLI port: C{root} served on C{--cliAddr} over plain HTTP with small
    request bodies; a failure to listen stops the start-up.

    @return: the listening service, to add to the node's parent.
    """
    from livepeer_tx.web import BoundedSite

    site = BoundedSite(root, maxBodyBytes=CLI_MAX_BODY_BYTES, reactor=reactor)
    endpoint = f"tcp:{config['cliPort']}:interface={quoteStringArgument(config['cliHost'])}"
    return strports.service(endpoint, site, reactor=reactor)
