"""
HTTP pieces shared by the orchestrator and the transcoder: a Site that refuses
oversized request bodies before reading them, JSON resources, and the
C{/metrics} resource.
"""

import json

from prometheus_client import REGISTRY
from prometheus_client.twisted import MetricsResource
from twisted.logger import Logger
from twisted.web import resource, server


class BoundedRequest(server.Request):
    """
    A request that refuses a body larger than its site's C{maxBodyBytes} with
    413 as soon as the length is known, instead of buffering it.
    """

    _log = Logger()

    def gotLength(self, length):
        """
        Refuse a declared length over the limit before the body arrives.
        """
        limit = getattr(self.channel.site, "maxBodyBytes", None)
        if limit is not None and length is not None and length > limit:
            self._refuseTooLarge(length, limit)
            return
        self._received = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        """
        Count chunked bodies against the limit as they arrive.
        """
        if getattr(self, "_refused", False):
            return
        limit = getattr(self.channel.site, "maxBodyBytes", None)
        self._received = getattr(self, "_received", 0) + len(data)
        if limit is not None and self._received > limit:
            self._refuseTooLarge(self._received, limit)
            return
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
    """

    requestFactory = BoundedRequest

    def __init__(self, root, maxBodyBytes, **kwargs):
        super().__init__(root, **kwargs)
        self.maxBodyBytes = maxBodyBytes

    def log(self, request):
        """
        Write no access log.
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
