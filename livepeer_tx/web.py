"""
HTTP pieces shared by the orchestrator and the transcoder: a Site that refuses
oversized request bodies before reading them, JSON resources, and the
C{/metrics} resource.
"""

import json
from io import BytesIO

from eth_hash.auto import keccak
from prometheus_client import REGISTRY
from prometheus_client.twisted import MetricsResource
from twisted.internet.defer import succeed
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

MEMORY_BODY_BYTES = 64 * 1024 * 1024


class BoundedRequest(server.Request):
    """
    A request that refuses a body larger than its site's C{maxBodyBytes} with
    413 as soon as the length is known, instead of buffering it.

    Bodies up to L{MEMORY_BODY_BYTES} are kept in memory (Twisted spools any
    body over 100 kB to a temporary file, which costs a segment a write and a
    read). On a site with C{hashBodies}, the body's keccak-256 is computed as
    it arrives, so checking a segment's hash costs nothing once it is in.

    @ivar bodyKeccak: the running keccak-256 of the body, or L{None}.
    """

    _log = Logger()
    bodyKeccak = None

    def gotLength(self, length):
        """
        Refuse a declared length over the limit before the body arrives.
        """
        limit = getattr(self.channel.site, "maxBodyBytes", None)
        if limit is not None and length is not None and length > limit:
            self._refuseTooLarge(length, limit)
            return
        self._received = 0
        if getattr(self.channel.site, "hashBodies", False):
            self.bodyKeccak = keccak.new(b"")
        if length is not None and length <= MEMORY_BODY_BYTES:
            self.content = BytesIO()
        else:
            super().gotLength(length)

    def handleContentChunk(self, data):
        """
        Count chunked bodies against the limit as they arrive, and hash them.
        """
        if getattr(self, "_refused", False):
            return
        limit = getattr(self.channel.site, "maxBodyBytes", None)
        self._received = getattr(self, "_received", 0) + len(data)
        if limit is not None and self._received > limit:
            self._refuseTooLarge(self._received, limit)
            return
        if self.bodyKeccak is not None:
            self.bodyKeccak.update(data)
        super().handleContentChunk(data)

    def _refuseTooLarge(self, length, limit):
        self._refused = True
        self.content = None
        self._log.info("Refusing a request body of {length} bytes (limit {limit})", length=length, limit=limit)
        body = f"request body of {length} bytes is larger than {limit} bytes\n".encode()
        transport = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        transport.loseConnection()


class BoundedSite(server.Site):
    """
    A Site whose requests cannot carry bodies over C{maxBodyBytes}, with no
    access log lines (segment URLs would flood the log).

    @ivar hashBodies: compute each request body's keccak-256 as it arrives.
    """

    requestFactory = BoundedRequest

    def __init__(self, root, maxBodyBytes, hashBodies=False, alpnProtocols=(b"http/1.1",), **kwargs):
        super().__init__(root, **kwargs)
        self.maxBodyBytes = maxBodyBytes
        self.hashBodies = hashBodies
        self.alpnProtocols = list(alpnProtocols)

    def acceptableProtocols(self):
        """
        The protocols offered in TLS ALPN. HTTP/1.1 only for now: WebSocket
        upgrades and the early 413 need it. Offering C{h2} here (and routing
        C{application/grpc} requests) is how gRPC joins this port.
        """
        return self.alpnProtocols

    def log(self, request):
        """
        Write no access log.
        """


@implementer(IBodyProducer)
class BytesProducer:
    """
    A client request body already in memory, handed to the transport in one
    write (no cooperator, no copy).
    """

    def __init__(self, data):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer):
        """
        Write the whole body.
        """
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self):
        """
        Nothing to pause: the body was written at once.
        """

    def resumeProducing(self):
        """
        Nothing to resume.
        """

    def stopProducing(self):
        """
        Nothing to stop.
        """


class JSONResource(resource.Resource):
    """
    Serves the JSON document returned by a callable on GET.
    """

    isLeaf = True

    def __init__(self, produce):
        super().__init__()
        self._produce = produce

    def render_GET(self, request):
        """
        Return the current document.
        """
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self._produce(), indent=2, sort_keys=True).encode("utf-8") + b"\n"


class CombinedRegistry:
    """
    Collects from this node's own registry and from prometheus_client's
    default one (process metrics and the chain code's module-level metrics).
    """

    def __init__(self, *registries):
        self._registries = registries

    def collect(self):
        """
        Every metric family of every registry.
        """
        for registry in self._registries:
            yield from registry.collect()


def makeCLIRoot(status, registry=None):
    """
    The CLI (admin) port's root: C{/status} and, with a registry, C{/metrics}.
    """
    root = resource.Resource()
    root.putChild(b"status", JSONResource(status))
    if registry is not None:
        combined = CombinedRegistry(registry, REGISTRY)
        root.putChild(b"metrics", MetricsResource(registry=combined))
    return root
