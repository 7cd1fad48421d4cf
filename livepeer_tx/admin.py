# -*- test-case-name: tests.test_drain -*-
"""
Operator-facing resources: C{/healthz} on the public port, and the CLI
port's actions (C{POST /drain}, C{POST /resume}, C{POST /setMaxSessions}).

The CLI port has no authentication (as go-livepeer's): it must stay on
127.0.0.1. Its actions are refused to web browsers (a request carrying an
C{Origin} or a cross-site C{Sec-Fetch-Site} header), so that a web page
cannot drain a node through a visitor's browser.
"""

import json

from twisted.web import resource

from livepeer_tx.wsproto import MAX_CAPACITY as MAX_SESSIONS_LIMIT
CROSS_SITE_REFUSED = "cross-origin requests are refused on the CLI port"


class ActionError(Exception):
    """
    An action's input is wrong; the message is the answer (HTTP 400).
    """


def drainActions(getDrain, status):
    """
    A node's C{POST /drain} and C{POST /resume}, for L{addActions}: both
    answer the node's status, or refuse with L{ActionError} when there is
    no drain, nothing to resume, or the drain leads to a stop.

    @param getDrain: returns the node's L{livepeer_tx.lifecycle.Drain}, or
        L{None} while it has none.
    @param status: returns the node's status (the answer).
    @return: the C{drain} and C{resume} entries of an actions mapping.
    """

    def drain(fields):
        current = getDrain()
        if current is None:
            raise ActionError("draining is not available")
        current.start("POST /drain")
        return status()

    def resume(fields):
        current = getDrain()
        if current is None or not current.active:
            raise ActionError("not draining")
        if not current.resume():
            raise ActionError("stopping: a drain before a stop cannot be resumed")
        return status()

    return {"drain": drain, "resume": resume}


def parseMaxSessions(text, allowAuto, name="maxSessions"):
    """
    A C{maxSessions} value, from the CLI port or the command line: a whole
    number from 1 to L{MAX_SESSIONS_LIMIT}, or, when C{allowAuto}, C{auto}
    (returned as L{None}).

    @param name: how the error names the value (C{--maxSessions} for an
        option).
    @raise ActionError: it is neither.
    """
    text = (text or "").strip()
    if allowAuto and text == "auto":
        return None
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= MAX_SESSIONS_LIMIT:
        expected = "'auto' or a whole number" if allowAuto else "a whole number"
        raise ActionError(f"{name} must be {expected} from 1 to {MAX_SESSIONS_LIMIT}, not {text[:32]!r}")
    return int(text)


class HealthResource(resource.Resource):
    """
    C{GET /healthz}: 200 C{{}} while the node takes work, 503
    C{{"Draining": true}} while it drains, so that a load balancer or a
    monitor stops sending to it.

    @param draining: a callable telling whether the node drains.
    """

    isLeaf = True

    def __init__(self, draining):
        super().__init__()
        self._draining = draining

    def render_GET(self, request):
        """
        The node's health.
        """
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if self._draining():
            request.setResponseCode(503)
            return b'{"Draining": true}\n'
        return b"{}\n"


class ActionResource(resource.Resource):
    """
    A CLI-port action: C{POST} only, with its input as form fields (in the
    body or the query string); the answer is one line of text, or a JSON
    document.

    @param action: called with the form fields (a dict of text); returns
        the answer (text, or a dict sent as JSON), or raises L{ActionError}.
    """

    isLeaf = True
    allowedMethods = (b"POST",)

    def __init__(self, action):
        super().__init__()
        self._action = action

    def render_POST(self, request):
        """
        Run the action.
        """
        site = (request.getHeader(b"sec-fetch-site") or b"none").lower()
        if request.getHeader(b"origin") is not None or site not in (b"none", b"same-origin"):
            return _answer(request, 403, CROSS_SITE_REFUSED)
        fields = {
            key.decode("utf-8", "replace"): values[-1].decode("utf-8", "replace")
            for key, values in (request.args or {}).items() if values
        }
        try:
            result = self._action(fields)
        except ActionError as e:
            return _answer(request, 400, str(e))
        if isinstance(result, dict):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(result, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        return _answer(request, 200, result)


def _answer(request, code, text):
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return text.encode("utf-8") + b"\n"


def addActions(root, actions):
    """
    Mount C{actions} (a dict of path to action callable) on C{root} as
    L{ActionResource}s.
    """
    for path, action in actions.items():
        root.putChild(path.encode("ascii"), ActionResource(action))
    return root
