"""
Gateway ingress in memory: go-livepeer's check order and status codes, auth
tokens, capabilities, segment signatures on chain, the refreshed
OrchestratorInfo, the TranscodeResult and the rendition URLs, with a
stand-in transcoder link; the pipeline called directly and through its
HTTP resource.
"""

import base64
import io
from fractions import Fraction

import pytest
from eth_account import Account
from eth_utils import keccak
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from e2e import segmentHeader, transcodeResult
from livepeer_tx.capabilities import (
    DEFAULT_CAPABILITIES, MPEG7_SIGNATURE, SEGMENT_SLICING, capabilitiesOf, capabilityBitstring,
)
from livepeer_tx.chain.identity import NodeSigner
from livepeer_tx.payments import OffchainPayments, PaymentError
from livepeer_tx.orchestrator.app import Orchestrator
from livepeer_tx.orchestrator.authtoken import VALID_SECONDS, AuthTokens
from livepeer_tx.orchestrator.dispatch import Rendition
from livepeer_tx.orchestrator.ingress import (
    SEGMENT_URI_REFUSED, SegmentResource, SegmentService, SegmentSubmission, flattenSegment, resultSignature,
    sourceOf,
)
from livepeer_tx.orchestrator.orchservice import OrchestratorService
from livepeer_tx.orchestrator.routing import RemoteTranscoder
from livepeer_tx.orchestrator.store import StreamResource
from livepeer_tx.profiles import PRESETS
from livepeer_tx.proto import lp_rpc_pb2 as pb
from memorywire import events, named  # noqa: F401 (events is a fixture)

BODY = b"\x47" * 1880
NOW = 1_700_000_000.0
TOKENS = AuthTokens(b"k" * 32, wallClock=lambda: NOW)
GATEWAY = NodeSigner(Account.from_key(b"\x11" * 32))
ORCHESTRATOR = NodeSigner(Account.from_key(b"\x22" * 32))
# Each (client, manifest id) is one stream of a gateway that asked
# GetOrchestrator for its session once.
_SESSIONS = {}


class AnsweringLink:
    """
    A transcoder link that records tasks; the test answers them.
    """

    def __init__(self):
        self.tasks = []
        self.ended = []

    def sendTask(self, taskId, job):
        self.tasks.append((taskId, job))

    def streamsJob(self, job):
        return False

    def cancelTask(self, taskId):
        pass

    def endSession(self, sessionId):
        self.ended.append(sessionId)


def tokenFor(manifestId=b"stream-a", client="192.0.2.10"):
    """
    The auth token of a stream's session.
    """
    key = (client, manifestId)
    if key not in _SESSIONS:
        _SESSIONS[key] = TOKENS.issue()
    return _SESSIONS[key]


def sessionOf(manifestId, client="192.0.2.10"):
    """
    The session id of a stream.
    """
    return tokenFor(manifestId, client).session_id


def post(resource, body=BODY, headers=None, client="192.0.2.10", token=None, signer=None, payment="",
         **segmentOptions):
    """
    POST /segment through the resource, as a gateway at C{client} with the
    token of its stream's session (or C{token}; C{False} for none).
    """
    request = DummyRequest([b"segment"])
    request.method = b"POST"
    request.client = (IPv6Address if ":" in client else IPv4Address)("TCP", client, 40000)
    request.content = io.BytesIO(body)
    if token is None:
        token = tokenFor(segmentOptions.get("manifestId", b"stream-a"), client)
    values = {"Livepeer-Segment": segmentHeader(body, authToken=token or None, signer=signer, **segmentOptions),
              "Livepeer-Payment": payment}
    values.update(headers or {})
    for name, value in values.items():
        request.requestHeaders.setRawHeaders(name, [value])
    resource.render(request)
    return request


def response(request):
    return request.responseCode or 200, b"".join(request.written)


class TicketPayments:
    """
    An on-chain payment processor: a price, ticket parameters for any sender,
    and payments that are recorded.
    """

    price = Fraction(1, 1000)

    def __init__(self):
        self.processed = []
        self.debited = []
        self.paramsError = None
        self.seeds = 0

    def ticketParams(self, sender):
        if self.paramsError is not None:
            return fail(PaymentError(400, self.paramsError))
        self.seeds += 1
        return succeed(pb.TicketParams(recipient=ORCHESTRATOR.address, seed=b"%d" % self.seeds))

    def processPayment(self, payment, sessionId):
        self.processed.append((payment, sessionId))
        return succeed(None)

    def checkBalance(self, sessionId):
        pass

    def debit(self, sessionId, pixels):
        self.debited.append((sessionId, pixels))


def makeOrchestrator(maxSessions=None, maxSegmentBytes=10_000, payments=None, signer=None, **options):
    """
    An orchestrator and its /segment resource; its L{SegmentService} is the
    resource's C{service}.
    """
    app = Orchestrator(Clock(), "https://orch.example:8935", maxSessions=maxSessions, **options)
    payments = payments or OffchainPayments()
    orchestrator = OrchestratorService(app.pool, TOKENS, app.serviceURL, payments, app.endSession, signer=signer)
    service = SegmentService(app, payments, TOKENS, orchestrator, maxSegmentBytes, signer=signer)
    return app, SegmentResource(service)


def withTranscoder(capacity=32, capabilities=None, **options):
    """
    L{makeOrchestrator} with one transcoder registered, answering through an
    L{AnsweringLink}: the orchestrator, its resource and the link.
    """
    app, resource = makeOrchestrator(**options)
    link = AnsweringLink()
    app.transcoderRegistered(RemoteTranscoder("10.0.0.1:1", capacity, link=link, capabilities=capabilities))
    return app, resource, link


def answer(app, link, taskId=None, data=b"r" * 100, pixels=1000):
    """
    Answer a task (the last one sent by default) with one rendition per profile.
    """
    taskId, job = next((t, j) for t, j in reversed(link.tasks) if taskId in (None, t))
    app.dispatcher.taskSucceeded(taskId, [
        Rendition(p.name, data, pixels=pixels) for p in job.profiles], decodedPixels=1)
    return job


def test_paymentIsDecodedBeforeTheSegmentHeader():
    """
    go-livepeer decodes Livepeer-Payment first: with both headers bad, 402.
    """
    _, resource = makeOrchestrator()
    request = post(resource, headers={"Livepeer-Payment": "!!", "Livepeer-Segment": "!!"})
    assert response(request)[0] == 402


def test_headerErrorsAndHash():
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


def test_rejectedSegmentLogNamesBracketedIPv6Peer(events):
    """
    The line about a refused segment names its gateway as every other line
    of the public port does: an IPv6 peer in brackets, then its port (a
    gateway address written unbracketed would fail this).
    """
    _, resource = makeOrchestrator()
    assert response(post(resource, client="2001:db8::7", hash=b"\x01" * 32))[0] == 403
    [line] = named(events, "Rejected segment from")
    assert line["peer"] == "[2001:db8::7]:40000"


def test_authTokensMissingForgedAndExpired():
    """
    A segment without a token, with a token we did not issue (one byte off,
    or a real session id with a made-up HMAC), or with an expired one, gets
    go-livepeer's 403 text before any work; a good token is served.
    """
    app, resource, link = withTranscoder()
    good = tokenFor(b"tokens")
    forged = pb.AuthToken(token=bytes(32), session_id=good.session_id, expiration=good.expiration)
    tampered = pb.AuthToken(token=good.token[:-1] + bytes([good.token[-1] ^ 1]), session_id=good.session_id,
                            expiration=good.expiration)
    longer = pb.AuthToken(token=good.token, session_id=good.session_id, expiration=good.expiration + 3600)
    expired = AuthTokens(b"k" * 32, wallClock=lambda: NOW - VALID_SECONDS - 1).issue()
    outcomes = [response(post(resource, token=token, manifestId=b"tokens"))
                for token in (False, forged, tampered, longer, expired)]
    assert outcomes == [(403, b"missing auth token\n")] + [(403, b"invalid auth token\n")] * 3 + [
        (403, b"expired auth token\n")]
    assert not link.tasks
    assert app.metrics.registry.get_sample_value("livepeer_segment_rejected_total", {"reason": "auth token"}) == 5
    request = post(resource, token=good, manifestId=b"tokens")
    answer(app, link)
    assert transcodeResult(response(request)[1]).WhichOneof("result") == "data"


def test_sessionsAreNamedByTheirTokens():
    """
    A session is the token's session id, whoever sends its segments and
    whatever their manifest id: one token from two addresses is one session
    (its transcoder keeps it); the same manifest id with another token is
    another session. A stranger who saw the session id in a rendition URL
    cannot post into it without the token.
    """
    app, resource, link = withTranscoder()
    token = tokenFor(b"named")
    post(resource, token=token, manifestId=b"named", client="192.0.2.10")
    first = answer(app, link)
    post(resource, token=token, manifestId=b"other", client="198.51.100.7", seq=1)
    second = answer(app, link)
    assert first.sessionId == second.sessionId == token.session_id
    post(resource, manifestId=b"named", client="203.0.113.9")
    assert answer(app, link).sessionId != token.session_id
    stolen = pb.AuthToken(session_id=token.session_id, expiration=token.expiration, token=b"guess" * 6 + b"xx")
    assert response(post(resource, token=stolen, manifestId=b"named", client="203.0.113.9")) == (
        403, b"invalid auth token\n")
    assert len(link.tasks) == 3


def test_noTranscoders():
    """
    Without transcoders the gateway gets 200 and go-livepeer's error text.
    """
    _, resource = makeOrchestrator()
    status, body = response(post(resource))
    assert status == 200 and transcodeResult(body).error == "no transcoders available"


def test_renditionsStoredAndServed():
    """
    A transcoded segment comes back as URLs under /stream/<session>/ with the
    encoded pixels, the URLs serve the renditions' bytes, and the answer
    carries a refreshed OrchestratorInfo with the same token.
    """
    app, resource, link = withTranscoder(capacity=2)
    request = post(resource, seq=7, manifestId=b"show", profiles=("P240p30fps16x9", "P360p30fps16x9"))
    assert request.finished == 0 and len(link.tasks) == 1
    assert request.responseCode == 200 and request.written == [b""]  # the 200 went out before the work
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
    assert result.data.sig == b""  # off chain
    assert result.info.transcoder == "https://orch.example:8935"
    assert result.info.auth_token == tokenFor(b"show")
    assert not result.info.HasField("ticket_params")
    fetch = DummyRequest([session.encode(), b"P360p30fps16x9", b"7.ts"])
    assert StreamResource(app.store).render_GET(fetch) == b"b" * 200
    assert fetch.responseHeaders.getRawHeaders(b"content-type") == [b"video/mp2t"]


def test_cappedAtMaxSessions():
    """
    With --maxSessions 1, a second stream is refused with 403 OrchestratorCapped
    while the first keeps its transcoder.
    """
    app, resource, link = withTranscoder(capacity=5, maxSessions=1)
    post(resource, manifestId=b"first")
    assert response(post(resource, manifestId=b"second")) == (403, b"OrchestratorCapped\n")
    post(resource, manifestId=b"first", seq=1)
    assert len(link.tasks) == 1  # the first stream's second segment waits its turn


def jobCapabilities(*ids, minVersion=""):
    capabilities = pb.Capabilities(bitstring=capabilityBitstring(ids))
    capabilities.constraints.minVersion = minVersion
    return capabilities


def customSegment(body=BODY, token=None, **fields):
    segData = pb.SegData(manifestId=b"caps", hash=keccak(body), profiles=b"invalid", duration=2000, **fields)
    segData.fullProfiles.append(PRESETS["P240p30fps16x9"].toProto())
    segData.auth_token.CopyFrom(token or tokenFor(b"caps"))
    return segData


def submit(service, segData, body=BODY, **options):
    """
    Run a segment through the service, without HTTP; the answer and whether
    the upload was accepted.
    """
    accepted = []
    submission = SegmentSubmission(base64.b64encode(segData.SerializeToString()), options.pop("payment", ""),
                                   body, source=options.pop("source", "192.0.2.10"), **options)
    d = Deferred.fromCoroutine(service.process(submission, lambda: accepted.append(True)))
    outcome = []
    d.addBoth(outcome.append)
    return outcome, accepted


def test_jobCapabilitiesCheckedAgainstOurs():
    """
    A job needing what neither we nor our transcoders offer (HEVC encode,
    a newer minimum version, a perceptual hash or a clip window, which we
    do not honour) gets 403 incompatible capabilities; what a transcoder
    reports joins what we offer.
    """
    app, resource, link = withTranscoder()
    service = resource.service
    HEVC_ENCODE = 16
    for segData in (
        customSegment(capabilities=jobCapabilities(0, 1, HEVC_ENCODE)),
        customSegment(capabilities=jobCapabilities(0, 1, minVersion="999.0.0")),
        customSegment(capabilities=jobCapabilities(0, 1, MPEG7_SIGNATURE)),
        customSegment(calc_perceptual_hash=True),
        customSegment(segment_parameters=pb.SegParameters(to=1000)),
    ):
        outcome, accepted = submit(service, segData)
        assert (outcome[0].status, outcome[0].body) == (403, b"incompatible capabilities\n")
        assert not accepted
    assert not link.tasks
    assert app.metrics.registry.get_sample_value("livepeer_segment_rejected_total", {"reason": "capabilities"}) == 5
    app.transcoderRegistered(RemoteTranscoder("10.0.0.2:1", 1, link=AnsweringLink(), capabilities=dict.fromkeys(
        set(DEFAULT_CAPABILITIES) | {HEVC_ENCODE}, 1)))
    outcome, accepted = submit(service, customSegment(capabilities=jobCapabilities(0, 1, 12, HEVC_ENCODE)))
    assert accepted and not outcome  # transcoding
    offered = capabilitiesOf(resource.service._orchestrator.capabilities().bitstring)
    assert HEVC_ENCODE in offered and not {MPEG7_SIGNATURE, SEGMENT_SLICING} & offered


def test_segmentUrlsAreRefusedClearly():
    """
    A gateway sending a URL to fetch (application/vnd+livepeer.uri) gets 400
    with a text saying what to send instead; nothing is paid or transcoded.
    """
    app, resource, link = withTranscoder(payments=TicketPayments())
    payments = resource.service._payments
    request = post(resource, body=b"https://b.example/seg.ts",
                   headers={"Content-Type": "application/vnd+livepeer.uri"})
    assert response(request) == (400, SEGMENT_URI_REFUSED.encode() + b"\n")
    assert not link.tasks and not payments.processed


def signedPost(resource, signer=GATEWAY, sender=GATEWAY, **options):
    payment = pb.Payment(sender=sender.address)
    return post(resource, signer=signer, payment=base64.b64encode(payment.SerializeToString()).decode(), **options)


def test_onChainSegmentSignatureAndSignedResults():
    """
    On chain the segment must carry its sender's signature of go-livepeer's
    flattened segment (403 ErrSegSig otherwise, before the token is looked
    at); the answer carries fresh ticket parameters for every segment with
    the same token, and the renditions' hashes signed by the orchestrator.
    """
    payments = TicketPayments()
    app, resource, link = withTranscoder(payments=payments, signer=ORCHESTRATOR)
    stranger = NodeSigner(Account.from_key(b"\x33" * 32))
    assert response(post(resource, manifestId=b"chain")) == (403, b"ErrSegSig\n")
    assert response(signedPost(resource, signer=stranger, manifestId=b"chain")) == (403, b"ErrSegSig\n")
    signed = pb.SegData.FromString(base64.b64decode(segmentHeader(
        BODY, manifestId=b"chain", authToken=tokenFor(b"chain"), signer=GATEWAY, seq=5)))
    signed.seq = 6  # what the gateway did not sign
    tampered = base64.b64encode(signed.SerializeToString()).decode()
    assert response(signedPost(resource, headers={"Livepeer-Segment": tampered})) == (403, b"ErrSegSig\n")
    assert response(signedPost(resource, token=False, manifestId=b"chain")) == (403, b"missing auth token\n")
    assert not link.tasks and not payments.processed

    infos = []
    for seq in range(2):
        request = signedPost(resource, manifestId=b"chain", seq=seq)
        answer(app, link, data=b"%d" % seq * 100)
        result = transcodeResult(response(request)[1])
        assert result.WhichOneof("result") == "data"
        assert result.data.sig == resultSignature(ORCHESTRATOR, [b"%d" % seq * 100])
        infos.append(result.info)
    assert [info.auth_token for info in infos] == [tokenFor(b"chain")] * 2
    assert infos[0].ticket_params.seed != infos[1].ticket_params.seed
    assert infos[0].address == ORCHESTRATOR.address
    assert (infos[0].price_info.pricePerUnit, infos[0].price_info.pixelsPerUnit) == (1, 1000)
    assert [(p.sender, s) for p, s in payments.processed] == [(GATEWAY.address, sessionOf(b"chain"))] * 2


def test_flattenedSegmentIsWhatGoLivepeerSigns():
    """
    go-livepeer's Flatten: manifest id, seq in 32 bytes, hash, then the
    profiles' ids (P720p30fps16x9 is 49d54ea9, P240p30fps16x9 c0a6517a).
    """
    segData = pb.SegData(manifestId=b"m", seq=258, hash=b"\xaa" * 32)
    profiles = [PRESETS["P720p30fps16x9"], PRESETS["P240p30fps16x9"]]
    assert flattenSegment(segData, profiles) == (
        b"m" + bytes(30) + b"\x01\x02" + b"\xaa" * 32 + b"49d54ea9c0a6517a")


def test_orchestratorInfoThatCannotBeMadeIs500():
    """
    go-livepeer answers 500 when it cannot make the refreshed info (no
    ticket parameters for the sender), before any payment.
    """
    payments = TicketPayments()
    payments.paramsError = "insufficient sender reserve"
    app, resource, link = withTranscoder(payments=payments, signer=ORCHESTRATOR)
    assert response(signedPost(resource, manifestId=b"poor")) == (500, b"Internal Server Error\n")
    assert not payments.processed and not link.tasks


def test_pipelineWithoutHttp():
    """
    The service alone: the upload is accepted once every check passed, and
    the answer is the TranscodeResult; a refusal is never accepted.
    """
    app, resource, link = withTranscoder()
    service = resource.service
    outcome, accepted = submit(service, customSegment(), body=b"other bytes")
    assert (outcome[0].status, outcome[0].body, accepted) == (403, b"Forbidden\n", [])
    outcome, accepted = submit(service, customSegment(), bodyDigest=keccak(BODY))
    assert accepted == [True] and not outcome
    answer(app, link)
    assert outcome[0].status == 200 and outcome[0].contentType == b"application/x-protobuf"
    assert transcodeResult(outcome[0].body).WhichOneof("result") == "data"


def test_hashCheckWaitsForADigestComputedElsewhere():
    """
    A digest still being computed (off the reactor thread) holds the upload
    until it comes: the wrong one is refused with 403 and nothing accepted,
    the right one lets the segment through.
    """
    app, resource, link = withTranscoder()
    service = resource.service
    wrong, right = Deferred(), Deferred()
    outcome, accepted = submit(service, customSegment(), bodyDigest=wrong)
    assert outcome == [] and accepted == []
    wrong.callback(keccak(b"other bytes"))
    assert (outcome[0].status, outcome[0].body, accepted) == (403, b"Forbidden\n", [])
    outcome, accepted = submit(service, customSegment(), bodyDigest=right)
    assert outcome == [] and accepted == []
    right.callback(keccak(BODY))
    assert accepted == [True] and not outcome
    answer(app, link)
    assert outcome[0].status == 200


def test_endTranscodingSessionFreesItAndTellsTheTranscoder():
    """
    EndTranscodingSession's effect: the session is released (its slot free
    at once) and its transcoder told to drop it.
    """
    app, resource, link = withTranscoder(maxSessions=1)
    post(resource, manifestId=b"ending")
    answer(app, link)
    assert response(post(resource, manifestId=b"next"))[0] == 403
    app.endSession(sessionOf(b"ending"))
    assert link.ended == [sessionOf(b"ending")]
    request = post(resource, manifestId=b"next")
    answer(app, link)
    assert transcodeResult(response(request)[1]).WhichOneof("result") == "data"


def test_sourceOfAnAddress():
    """
    IPv4 addresses count as themselves, IPv6 ones by /64, mapped IPv4 as IPv4.
    """
    assert sourceOf(IPv4Address("TCP", "192.0.2.10", 1)) == "192.0.2.10"
    assert sourceOf(IPv6Address("TCP", "2001:db8:1:2:aaaa::1", 1)) == "2001:db8:1:2::/64"
    assert sourceOf(IPv6Address("TCP", "2001:db8:1:2:bbbb::9", 1)) == "2001:db8:1:2::/64"
    assert sourceOf(IPv6Address("TCP", "::ffff:192.0.2.10", 1)) == "192.0.2.10"
    assert sourceOf(None) == "unknown"


@pytest.fixture(autouse=True)
def _freshSessions():
    """
    Every test's streams get sessions of their own.
    """
    _SESSIONS.clear()
    yield
