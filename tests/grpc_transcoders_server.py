# -*- test-case-name: tests.test_grpc_transcoders -*-
"""
A real L{Orchestrator} serving stock go-livepeer transcoders on a TLS port,
for tests/test_grpc_transcoders.py; run as
C{python grpc_transcoders_server.py DATADIR SECRET}.

It offers C{h2} and C{http/1.1} in ALPN with the self-signed certificate of
L{livepeer_tx.tls.ServerCertificate} in DATADIR, serves
C{/net.Transcoder/RegisterTranscoder}, C{/transcodeResults} and C{/stream/}
as the public port will, logs to stderr, and prints C{listening PORT} once the
port is open. Test controls:

  - C{GET /control/wait?transcoders=N} answers C{{"transcoders": N}} once
    exactly N transcoders are in the pool.
  - C{POST /control/transcode?session=S&seq=N&duration=MS} submits the body
    as a segment to the dispatcher, with two profiles, and answers with the
    renditions (name, sha256, pixels), the decoded pixels and the attempts,
    or C{{"error": ...}}.
"""

import hashlib
import json
import sys

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web import resource, server

from livepeer_tx.orchestrator.app import Orchestrator
from livepeer_tx.orchestrator.dispatch import SegmentJob
from livepeer_tx.orchestrator.grpctranscoders import RESULTS_PATH, GRPCTranscoderService
from livepeer_tx.orchestrator.registration import FailedAttemptLimiter
from livepeer_tx.orchestrator.store import StreamResource
from livepeer_tx.profiles import PRESETS
from livepeer_tx.rpc import ServiceRegistry
from livepeer_tx.secret import Secret
from tlsgrpcserver import QuietSite, serveAndAnnounce

PROFILES = [PRESETS["P240p30fps16x9"], PRESETS["P360p30fps16x9"]]
MAX_RESULT_BYTES = 64 * 1024 * 1024


class WatchedOrchestrator(Orchestrator):
    """
    An orchestrator that tells waiters how many transcoders it has.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._waiters = []

    def transcoderRegistered(self, transcoder):
        super().transcoderRegistered(transcoder)
        self._notify()

    def transcoderLost(self, transcoder):
        super().transcoderLost(transcoder)
        self._notify()

    def whenTranscoders(self, count):
        """
        A Deferred firing once exactly C{count} transcoders are in the pool.
        """
        waiter = Deferred()
        self._waiters.append((count, waiter))
        self._notify()
        return waiter

    def _notify(self):
        count = len(self.pool.transcoders)
        ready = [w for w in self._waiters if w[0] == count]
        self._waiters = [w for w in self._waiters if w[0] != count]
        for _, waiter in ready:
            waiter.callback(count)


def _answer(request, document):
    request.setHeader(b"content-type", b"application/json")
    request.write(json.dumps(document).encode())
    request.finish()


class Wait(resource.Resource):
    """
    C{/control/wait?transcoders=N}.
    """

    isLeaf = True

    def __init__(self, app):
        super().__init__()
        self._app = app

    def render_GET(self, request):
        count = int(request.args[b"transcoders"][0])
        self._app.whenTranscoders(count).addCallback(lambda n: _answer(request, {"transcoders": n}))
        return server.NOT_DONE_YET


class Transcode(resource.Resource):
    """
    C{/control/transcode?session=S&seq=N&duration=MS}.
    """

    isLeaf = True

    def __init__(self, app):
        super().__init__()
        self._app = app

    def render_POST(self, request):
        job = SegmentJob(
            request.args[b"session"][0].decode(), int(request.args[b"seq"][0]), request.content.read(),
            list(PROFILES), int(request.args[b"duration"][0]))

        def done(result):
            _answer(request, {
                "renditions": [{"name": r.name, "sha256": hashlib.sha256(r.data).hexdigest(), "pixels": r.pixels}
                               for r in result.renditions],
                "decodedPixels": result.decodedPixels, "attempts": result.attempts,
                "transcoder": result.transcoder,
            })

        self._app.dispatcher.transcode(job).addCallbacks(done, lambda f: _answer(request, {"error": str(f.value)}))
        return server.NOT_DONE_YET


def main(reactor, dataDir, secret):
    """
    Serve until terminated.
    """
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    app = WatchedOrchestrator(clock=reactor, serviceURL="https://127.0.0.1")
    service = GRPCTranscoderService(app, Secret(literal=secret), FailedAttemptLimiter(reactor), MAX_RESULT_BYTES)
    registry = ServiceRegistry()
    service.addTo(registry)
    root = resource.Resource()
    root.putChild(RESULTS_PATH, service.resultsResource)
    root.putChild(b"stream", service.streamResource(StreamResource(app.store)))
    control = resource.Resource()
    control.putChild(b"wait", Wait(app))
    control.putChild(b"transcode", Transcode(app))
    root.putChild(b"control", control)

    def listening(port):
        app.serviceURL = f"https://127.0.0.1:{port.getHost().port}"

    return serveAndAnnounce(reactor, dataDir, QuietSite(root, reactor=reactor), registry, listening)


if __name__ == "__main__":
    react(main, sys.argv[1:])
