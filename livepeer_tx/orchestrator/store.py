# -*- test-case-name: tests.test_units -*-
"""
The bounded in-memory store that serves renditions to gateways under
C{/stream/<session>/<profile>/<seq><ext>}.
"""

from collections import OrderedDict

from twisted.web import resource


class RenditionStore:
    """
    Keeps the newest renditions, bounded per session (like go-livepeer's ring
    of 12 objects) and in total bytes; the oldest go first.

    @param maxBytes: the total size of all stored renditions.
    @param perSession: objects kept per session.
    @ivar unfetched: how many stored objects nobody has downloaded yet.
    """

    def __init__(self, maxBytes=512 * 1024 * 1024, perSession=36):
        self.maxBytes = maxBytes
        self.perSession = perSession
        self.totalBytes = 0
        self._objects = OrderedDict()
        self._perSessionKeys = {}
        self._unfetched = set()

    def put(self, sessionId, name, data, mimeType):
        """
        Store C{data} as C{<sessionId>/<name>}, evicting old objects as needed.
        """
        key = (sessionId, name)
        self._drop(key)
        keys = self._perSessionKeys.setdefault(sessionId, [])
        keys.append(key)
        self._objects[key] = (data, mimeType)
        self._unfetched.add(key)
        self.totalBytes += len(data)
        while len(keys) > self.perSession:
            self._drop(keys[0])
        while self.totalBytes > self.maxBytes and self._objects:
            self._drop(next(iter(self._objects)))

    def get(self, sessionId, name):
        """
        The C{(data, mimeType)} stored under C{<sessionId>/<name>}, or L{None}.
        """
        return self._objects.get((sessionId, name))

    def fetch(self, sessionId, name):
        """
        Like L{get}, for a download: the object counts as fetched from now on.
        """
        self._unfetched.discard((sessionId, name))
        return self.get(sessionId, name)

    @property
    def unfetched(self):
        """
        The number of stored objects not downloaded yet.
        """
        return len(self._unfetched)

    def _drop(self, key):
        entry = self._objects.pop(key, None)
        if entry is None:
            return
        self._unfetched.discard(key)
        self.totalBytes -= len(entry[0])
        keys = self._perSessionKeys.get(key[0])
        if keys is not None:
            keys.remove(key)
            if not keys:
                del self._perSessionKeys[key[0]]

    def __len__(self):
        return len(self._objects)


class StreamResource(resource.Resource):
    """
    Serves C{GET /stream/<session>/<path>} from a L{RenditionStore}.
    """

    isLeaf = True

    def __init__(self, store):
        super().__init__()
        self._store = store

    def render_GET(self, request):
        """
        Return the stored object, or 404.
        """
        parts = [p.decode("utf-8", "replace") for p in request.postpath]
        if len(parts) < 2 or not all(parts):
            request.setResponseCode(404)
            return b"ErrNotFound\n"
        entry = self._store.fetch(parts[0], "/".join(parts[1:]))
        if entry is None:
            request.setResponseCode(404)
            return b"ErrNotFound\n"
        data, mimeType = entry
        request.setHeader(b"content-type", mimeType.encode("ascii"))
        request.setHeader(b"cache-control", b"max-age=5")
        request.setHeader(b"access-control-allow-origin", b"*")
        return data
