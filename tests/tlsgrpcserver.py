# -*- test-case-name: tests.test_grpc_h2_tls,tests.test_grpc_transcoders,tests.test_orchservice -*-
"""
What the test server scripts (tests/grpc_h2_server.py,
tests/orchservice_server.py, tests/grpc_transcoders_server.py) share: a quiet
site offering h2 and http/1.1, served with a registry of gRPC methods on a TLS
port of 127.0.0.1 that is announced on stdout.
"""

from twisted.internet.defer import Deferred
from twisted.web import server

from livepeer_tx.rpc import ALPN_PROTOCOLS, channelFactory
from livepeer_tx.tls import ServerCertificate


class QuietSite(server.Site):
    """
    Offers h2 and http/1.1; no access log.
    """

    def acceptableProtocols(self):
        return list(ALPN_PROTOCOLS)

    def log(self, request):
        pass


def serveAndAnnounce(reactor, dataDir, site, registry, onListening=None):
    """
    Serve C{site}, with the gRPC methods of C{registry}, on a free TLS port of
    127.0.0.1 with the self-signed certificate in C{dataDir}; once listening,
    call C{onListening} with the port, if given, and print C{listening PORT}.
    The result never fires, so C{react} serves until terminated.
    """
    site.protocol = channelFactory(registry)
    certificate = ServerCertificate.loadOrCreate(dataDir, "localhost")
    endpoint = certificate.serverTLS().endpoint(reactor, 0, "127.0.0.1")

    def listening(port):
        if onListening is not None:
            onListening(port)
        print(f"listening {port.getHost().port}", flush=True)
        return Deferred()

    return endpoint.listen(site).addCallback(listening)
