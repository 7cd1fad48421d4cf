# -*- test-case-name: tests.test_reload -*-
"""
The transcoder's reload (SIGHUP, C{systemctl reload}): the configuration,
the secret file and the certificate it trusts the orchestrator with.
"""

from twisted.logger import Logger

from livepeer_tx.reload import NodeReloader, rereadSecret


class TranscoderReloader(NodeReloader):
    """
    Re-reads what a transcoder can change while it runs, and logs what
    changed (never the secret itself).

    @param node: the L{TranscoderNode<livepeer_tx.transcoder.tap.TranscoderNode>}
        (its C{link}, once connected).
    @param secret: the shared L{Secret}.
    @param makeTLSOptions: a callable building the client TLS options from
        the files named on the command line (C{--orchCert}), or L{None} when
        no file is involved.
    @param options: the L{OptionsReload<livepeer_tx.reload.OptionsReload>}.
    """

    _log = Logger()
    tlsStep = "orchestrator certificate"

    def __init__(self, node, secret, makeTLSOptions, options):
        NodeReloader.__init__(self, secret, options)
        self._node = node
        self._makeTLSOptions = makeTLSOptions

    def _reloadSecret(self):
        tag, outcome = rereadSecret(self._secret, self._log)
        if outcome is not None:
            return outcome
        if tag == self._secretTag:
            return "unchanged"
        self._secretTag = tag
        self._log.info("Reload: the secret in {path} changed; it is used from the next connection",
                       path=self._secret.path)
        link = self._node.link
        if link is not None:
            link.secretChanged()
        return "changed"

    def _reloadTLS(self):
        if self._makeTLSOptions is None:
            return "not used"
        try:
            tlsOptions = self._makeTLSOptions()
        except Exception as e:
            self._log.error("Reload: cannot load the orchestrator's certificate ({error}); keeping the one loaded "
                            "before", error=str(e))
            return "error"
        self._node.setTLSOptions(tlsOptions)
        return "reloaded"
