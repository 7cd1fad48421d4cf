"""
Gateway ingress in memory: go-livepeer's check order and status codes, the
TranscodeResult, and the rendition URLs, with a stand-in transcoder link.
"""

import re

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from e2e import segmentHeader, transcodeResult
from livepeer_tx.chain.payments import OffchainPayments
from livepeer_tx.orchestrator.app import Orchestrator
from livepeer_tx.orchestrator.dispatch import Rendition
from livepeer_tx.orchestrator.ingress import SegmentResource, SessionNamer, sourceOf
from livepeer_tx.orchestrator.routing import RemoteTranscoder
from livepeer_tx.orchestrator.store import StreamResource
from livepeer_tx.proto import lp_rpc_pb2 as pb

BODY = b"\x47" * 1880


class AnsweringLink:
    """
    A transcoder link that records tasks; the test answers them.
    """

    def __init__(self):
        self.tasks = []

    def sendTask(self, taskId, job):
        self.tasks.append((taskId, job))

    def cancelTask(self, taskId):
        pass

    def endSession(self, sessionId):
        pass


def post(resource, body=BODY, headers=None, client="192.0.2.10", **segmentOptions):
    request = DummyRequest([b"segment"])
    request.method = b"POST"
    request.client = IPv4Address("TCP", client, 40000)
    request.content = __import__("io").BytesIO(body)
    values = {"Livepeer-Segment": segmentHeader(body, **segmentOptions), "Livepeer-Payment": ""}
    values.update(headers or {})
    for name, value in values.items():
        request.requestHeaders.setRawHeaders(name, [value])
    resource.render(request)
    return request


def response(request):
    return request.responseCode or 200, b"".join(request.written)


NAMER = SessionNamer(b"k" * 32)


def makeOrchestrator(maxSessions=None, maxSegmentBytes=10_000, payments=None, **options):
    app = Orchestrator(Clock(), "https://orch.example:8935", maxSessions=maxSessions, **options)
    return app, SegmentResource(app, payments or OffchainPayments(), maxSegmentBytes, sessionNamer=NAMER)


def sessionOf(manifestId, client="192.0.2.10"):
    """
    The session id the test orchestrators give a manifest id from a client.
    """
    return NAMER.sessionIdFor(pb.SegData(manifestId=manifestId), client)


def test_payment_is_decoded_before_the_segment_header():
    """
    go-livepeer decodes Livepeer-Payment first: with both headers bad, 402.
    """
    _, resource = makeOrchestrator()
    request = post(resource, headers={"Livepeer-Payment": "!!", "Livepeer-Segment": "!!"})
    assert response(request)[0] == 402


def test_header_errors_and_hash():
    """
    Bad base64, a profile-less SegData, a bad duration and a wrong hash get
    403 with go-livepeer's words; an oversized body 413.
    """
    _, resource = makeOrchestrator(maxSegmentBytes=len(BODY) - 1)
    assert response(post(resource, headers={"Livepeer-Segment": "%%"})) == (403, b"ErrorSegEncoding\n")
    assert response(post(resource, profiles=()))[0] == 403
    assert response(post(resource, durationMs=-5)) == (403, b"invalid duration\n")
    assert response(post(resource))[0] == 413
    _, resource = makeOrchestrator()
    assert response(post(resource, hash=b"\x01" * 32)) == (403, b"Forbidden\n")


def test_no_transcoders():
    """
    Without transcoders the gateway gets 200 and go-livepeer's error text.
    """
    _, resource = makeOrchestrator()
    status, body = response(post(resource))
    assert status == 200 and transcodeResult(body).error == "no transcoders available"


def test_renditions_stored_and_served():
    """
    A transcoded segment comes back as URLs under /stream/<session>/ with the
    encoded pixels, and the URLs serve the renditions' bytes.
    """
    app, resource = makeOrchestrator()
    link = AnsweringLink()
    app.transcoderRegistered(RemoteTranscoder("10.0.0.1:1", 2, link=link))
    request = post(resource, seq=7, manifestId=b"show", profiles=("P240p30fps16x9", "P360p30fps16x9"))
    assert request.finished == 0 and len(link.tasks) == 1
    taskId, job = link.tasks[0]
    assert job.data == BODY and [p.name for p in job.profiles] == ["P240p30fps16x9", "P360p30fps16x9"]
    app.dispatcher.taskSucceeded(taskId, [
        Rendition("P240p30fps16x9", b"a" * 100, pixels=111),
        Rendition("P360p30fps16x9", b"b" * 200, pixels=222),
    ], decodedPixels=5)
    status, body = response(request)
    result = transcodeResult(body)
    assert status == 200 and result.seq == 7
    session = sessionOf(b"show")
    assert job.sessionId == session
    assert [(s.url, s.pixels) for s in result.data.segments] == [
        (f"https://orch.example:8935/stream/{session}/P240p30fps16x9/7.ts", 111),
        (f"https://orch.example:8935/stream/{session}/P360p30fps16x9/7.ts", 222),
    ]
    fetch = DummyRequest([session.encode(), b"P360p30fps16x9", b"7.ts"])
    assert StreamResource(app.store).render_GET(fetch) == b"b" * 200
    assert fetch.responseHeaders.getRawHeaders(b"content-type") == [b"video/mp2t"]


def test_capped_at_max_sessions():
    """
    With --maxSessions 1, a second stream is refused with 403 OrchestratorCapped
    while the first keeps its transcoder.
    """
    app, resource = makeOrchestrator(maxSessions=1)
    link = AnsweringLink()
    app.transcoderRegistered(RemoteTranscoder("10.0.0.1:1", 5, link=link))
    post(resource, manifestId=b"first")
    assert response(post(resource, manifestId=b"second")) == (403, b"OrchestratorCapped\n")
    post(resource, manifestId=b"first", seq=1)
    assert len(link.tasks) == 1  # the first stream's second segment waits its turn


def test_session_named_by_keyed_hash_of_source_and_manifest_id():
    """
    A session id is 16 hex digits that depend on the source address, the
    manifest id and the per-process key, and reveal neither.
    """
    segData = pb.SegData(manifestId=b"show")
    session = NAMER.sessionIdFor(segData, "192.0.2.10")
    assert re.fullmatch(r"[0-9a-f]{16}", session) and session == sessionOf(b"show")
    assert NAMER.sessionIdFor(segData, "198.51.100.7") != session
    assert NAMER.sessionIdFor(pb.SegData(manifestId=b"show2"), "192.0.2.10") != session
    assert SessionNamer().sessionIdFor(segData, "192.0.2.10") != SessionNamer().sessionIdFor(segData, "192.0.2.10")
    assert re.fullmatch(r"[0-9a-f]{16}", NAMER.sessionIdFor(pb.SegData(manifestId=b"../\xff\n"), "192.0.2.10"))


def test_source_of_an_address():
    """
    IPv4 addresses count as themselves, IPv6 ones by /64, mapped IPv4 as IPv4.
    """
    assert sourceOf(IPv4Address("TCP", "192.0.2.10", 1)) == "192.0.2.10"
    assert sourceOf(IPv6Address("TCP", "2001:db8:1:2:aaaa::1", 1)) == "2001:db8:1:2::/64"
    assert sourceOf(IPv6Address("TCP", "2001:db8:1:2:bbbb::9", 1)) == "2001:db8:1:2::/64"
    assert sourceOf(IPv6Address("TCP", "::ffff:192.0.2.10", 1)) == "192.0.2.10"
    assert sourceOf(None) == "unknown"
