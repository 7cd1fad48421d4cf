# -*- test-case-name: tests.test_orchservice -*-
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

from twisted.internet.task import react
from twisted.web import resource

from livepeer_tx.payments import OffchainPayments
from livepeer_tx.orchestrator.authtoken import AuthTokens
from livepeer_tx.orchestrator.orchservice import OrchestratorService
from livepeer_tx.orchestrator.routing import RemoteTranscoder, TranscoderPool
from livepeer_tx.rpc import ServiceRegistry
from tlsgrpcserver import QuietSite, serveAndAnnounce

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
                self._pool.add(RemoteTranscoder(f"192.0.2.{index}:1000", 4))
        elif request.path == b"/sessions":
            for index in range(count):
                self._pool.select(f"control{index}")
        return b"ok"

    def render_GET(self, request):
        return json.dumps(self._ended).encode()


def main(reactor, dataDir):
    pool = TranscoderPool(reactor, maxSessions=2)
    ended = []
    service = OrchestratorService(
        pool, AuthTokens.fromDataDir(dataDir), SERVICE_URI, OffchainPayments(), ended.append)
    registry = ServiceRegistry()
    service.register(registry)
    return serveAndAnnounce(reactor, dataDir, QuietSite(Control(pool, ended), reactor=reactor), registry)


if __name__ == "__main__":
    react(main, sys.argv[1:])
