"""
The orchestrator's C{net.Orchestrator} service on a TLS port, for
tests/test_orchservice.py; run as C{python orchservice_server.py DATADIR}.

It serves L{OrchestratorService} over a real L{TranscoderPool} (session limit
2) with auth tokens keyed in DATADIR, off chain, through a
L{livepeer_tx.rpc.ServiceRegistry}, and prints C{listening PORT} once the
port is open. Its state is driven over plain HTTPS on the same port:
C{POST /transcoders?count=N} connects N transcoders, C{POST /sessions?count=N}
assigns N sessions, C{GET /ended} lists the sessions EndTranscodingSession ended.
"""

import json
import sys

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import react
from twisted.web import resource, server

from livepeer_tx.payments import OffchainPayments
from livepeer_tx.orchestrator.authtoken import AuthTokens
from livepeer_tx.orchestrator.orchservice import OrchestratorService
from livepeer_tx.orchestrator.routing import RemoteTranscoder, TranscoderPool
from livepeer_tx.rpc import ALPN_PROTOCOLS, ServiceRegistry, channelFactory
from livepeer_tx.tls import ServerCertificate

SERVICE_URI = "https://orch.example:8935"


class Control(resource.Resource):
    """
    Drives the pool and reports ended sessions.
    """

    isLeaf = True

    def __init__(self, pool, ended):
        super().__init__()
        self._pool = pool
        self._ended = ended

    def render_POST(self, request):
        count = int(request.args.get(b"count", [b"1"])[0])
        if request.path == b"/transcoders":
            for index in range(count):
                self._pool.add(RemoteTranscoder(f"192.0.2.{index}:1000", 4, capabilities={}))
        elif request.path == b"/sessions":
            for index in range(count):
                self._pool.select(f"control{index}")
        return b"ok"

    def render_GET(self, request):
        return json.dumps(self._ended).encode()


class ControlSite(server.Site):
    """
    Offers h2 and http/1.1; no access log.
    """

    def acceptableProtocols(self):
        return list(ALPN_PROTOCOLS)

    def log(self, request):
        pass


def main(reactor, dataDir):
    pool = TranscoderPool(reactor, maxSessions=2)
    ended = []
    service = OrchestratorService(
        pool, AuthTokens.fromDataDir(dataDir), SERVICE_URI, OffchainPayments(), ended.append)
    registry = ServiceRegistry()
    service.register(registry)
    site = ControlSite(Control(pool, ended), reactor=reactor)
    site.protocol = channelFactory(registry)
    certificate = ServerCertificate.loadOrCreate(dataDir, "localhost")
    endpoint = serverFromString(reactor, certificate.endpointDescription(0, "127.0.0.1"))

    def listening(port):
        print(f"listening {port.getHost().port}", flush=True)
        return Deferred()

    return endpoint.listen(site).addCallback(listening)


if __name__ == "__main__":
    react(main, sys.argv[1:])
