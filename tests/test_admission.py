"""
Gateway admission in memory (issue 7): sessions keyed per gateway, sessions
limited per address, profiles, seq and duration bounded, and what the gateway
gets when something breaks after the 200. Each test runs the attack, then
shows a legitimate gateway still served.
"""

import base64

import pytest
from eth_utils import keccak
from twisted.logger import globalLogPublisher

from livepeer_tx.profiles import MAX_PROFILES, PRESETS, Profile, ProfileError
from livepeer_tx.proto import lp_rpc_pb2 as pb
from test_ingress import BODY, answer, post, response, sessionOf, tokenFor, withTranscoder
from e2e import transcodeResult


def served(app, resource, link, client="192.0.2.99", manifestId=b"legit", seq=0):
    """
    A legitimate gateway's segment is transcoded and answered with renditions.
    """
    request = post(resource, client=client, manifestId=manifestId, seq=seq)
    answer(app, link)
    status, body = response(request)
    result = transcodeResult(body)
    return status == 200 and result.WhichOneof("result") == "data"


def rejected(app, reason):
    return app.metrics.registry.get_sample_value("livepeer_segment_rejected_total", {"reason": reason}) or 0


def customHeader(body, profiles, seq=0, manifestId=b"custom", durationMs=2000):
    segData = pb.SegData(manifestId=manifestId, seq=seq, hash=keccak(body), profiles=b"invalid",
                         duration=durationMs)
    segData.fullProfiles3.extend(profiles)
    segData.auth_token.CopyFrom(tokenFor(manifestId))
    return base64.b64encode(segData.SerializeToString()).decode("ascii")


def video(name="p", width=640, height=360, bitrate=1_000_000, fps=30, fpsDen=1, gop=0):
    return pb.VideoProfile(name=name, width=width, height=height, bitrate=bitrate, fps=fps, fpsDen=fpsDen, gop=gop)


def test_reusedManifestIdFromElsewhereIsAnotherSession():
    """
    The attack: a stranger reuses a victim's manifest id (visible in every
    rendition URL). It lands in a session of its own: the victim's stored
    rendition is not overwritten and the victim's next segment is not made
    busy.
    """
    app, resource, link = withTranscoder()
    victim = post(resource, client="192.0.2.10", manifestId=b"show", seq=0)
    answer(app, link, data=b"v" * 100)
    victimURL = transcodeResult(response(victim)[1]).data.segments[0].url
    victimSession = sessionOf(b"show", "192.0.2.10")
    assert f"/stream/{victimSession}/" in victimURL

    attacks = [post(resource, client="198.51.100.7", manifestId=b"show", seq=0) for _ in range(5)]
    attackerJob = answer(app, link, taskId=link.tasks[1][0], data=b"a" * 100)
    assert attackerJob.sessionId != victimSession
    assert app.store.get(victimSession, "P240p30fps16x9/0.ts")[0] == b"v" * 100
    assert transcodeResult(response(attacks[-1])[1]).error == "OrchestratorBusy"

    assert served(app, resource, link, client="192.0.2.10", manifestId=b"show", seq=1)
    assert link.tasks[-1][1].sessionId == victimSession


def test_oneAddressCannotFillTheNode():
    """
    The attack: 31 one-segment requests with fresh manifest ids from one
    address against a 32-session node. Off-chain, one address gets at most
    half the session limit (16); the rest are refused with 403
    OrchestratorCapped before any work, and another gateway is served.
    """
    app, resource, link = withTranscoder(capacity=32)
    outcomes = []
    for i in range(31):
        request = post(resource, client="203.0.113.5", manifestId=f"fresh-{i}".encode())
        if link.tasks and len(outcomes) < len(link.tasks):
            answer(app, link)
        outcomes.append(response(request))
    assert [status for status, _ in outcomes].count(200) == 16
    assert outcomes[16:] == [(403, b"OrchestratorCapped\n")] * 15
    assert len(link.tasks) == 16 and app.pool.sessionsFrom("203.0.113.5") == 16
    assert rejected(app, "address capped") == 15
    for i in range(3):
        assert served(app, resource, link, client=f"192.0.2.{20 + i}", manifestId=b"legit")
    # An existing session of the capped address is still served.
    assert served(app, resource, link, client="203.0.113.5", manifestId=b"fresh-0", seq=1)


def test_perAddressCapIsAnOptionAndOffForPaidWork():
    """
    --maxSessionsPerAddress sets the cap; when segments are paid for (a
    price above 0) sessions are not limited per address.
    """
    app, resource, link = withTranscoder(capacity=32, maxSessionsPerAddress=2)
    statuses = [response(post(resource, client="203.0.113.5", manifestId=f"m{i}".encode()))[0] for i in range(3)]
    assert statuses[2] == 403 and len(link.tasks) == 2

    class PaidWork:
        price = 1

        def processPayment(self, payment, sessionId):
            from twisted.internet.defer import succeed
            return succeed(None)

        def checkBalance(self, sessionId):
            pass

        def debit(self, sessionId, pixels):
            pass

        def ticketParams(self, sender):
            from twisted.internet.defer import succeed
            return succeed(None)

    app, resource, link = withTranscoder(capacity=32, maxSessionsPerAddress=2, payments=PaidWork())
    assert not resource.service.limitPerSource
    for i in range(5):
        post(resource, client="203.0.113.5", manifestId=f"m{i}".encode())
    assert len(link.tasks) == 5


def customRefused(resource, link, profiles, **options):
    request = post(resource, headers={"Livepeer-Segment": customHeader(BODY, profiles, **options)})
    status, body = response(request)
    return status == 403 and not link.tasks and body


@pytest.mark.parametrize("profiles, text", [
    ([video(f"p{i}") for i in range(MAX_PROFILES + 1)], b"too many profiles: 13 (at most 12)"),
    ([video(f"p{i}") for i in range(200)], b"too many profiles: 200"),
    ([video("same"), video("same", width=426, height=240)], b"duplicate profile name 'same'"),
    ([video("bad\nname")], b"invalid profile name 'bad\\nname'"),
    ([video("a\x00b")], b"invalid profile name"),
    ([video("../etc")], b"invalid profile name"),
    ([video("a/b")], b"invalid profile name"),
    ([video("x" * 65)], b"invalid profile name"),
    ([video(width=4096, height=4096)], b"invalid profile resolution 4096x4096"),
    ([video(width=4097, height=100)], b"invalid profile resolution"),
    ([video(width=-640)], b"invalid profile resolution"),
    ([video(f"k{i}", width=4096, height=2304) for i in range(3)], b"profiles too large together"),
    ([video(fps=30, fpsDen=2 ** 32 - 1)], b"invalid profile frame rate 30/4294967295"),
    ([video(fps=2 ** 32 - 1)], b"invalid profile frame rate"),
    ([video(fps=1, fpsDen=2)], b"invalid profile frame rate"),
    ([video(bitrate=0)], b"invalid profile bitrate 0"),
    ([video(bitrate=2 ** 31 - 1)], b"invalid profile bitrate"),
    ([video(gop=-5)], b"invalid profile GOP -5"),
    ([video(gop=2 ** 31 - 1)], b"invalid profile GOP"),
])
def test_unboundedProfilesRefusedBeforeAnyWork(profiles, text):
    """
    The attacks: hundreds of profiles (E2BIG at the FFmpeg exec), duplicate
    names (one rendition overwrites the other), control characters and
    slashes in names, a 4096x4096 rendition of a tiny clip, fpsDen 2^32-1
    (a 0-frame rendition reported as success), absurd bitrates and GOPs.
    Each is refused with 403 before a transcoder sees it.
    """
    app, resource, link = withTranscoder()
    body = customRefused(resource, link, profiles)
    assert body and body.startswith(text), body
    assert rejected(app, "profiles") == 1
    assert served(app, resource, link)


def test_realLaddersStillAccepted():
    """
    Every go-livepeer preset, fps 0 (keep the input's, as in go-livepeer),
    NTSC rates, intra-only and 2 s GOPs, unnamed profiles and a 4K rung on
    top of a full ladder are all accepted.
    """
    for preset in PRESETS.values():
        preset.validate()
    ladder = [p.toProto() for p in PRESETS.values()][:MAX_PROFILES - 2]
    ladder += [video("4k", width=3840, height=2160, bitrate=20_000_000, fps=60),
               video("", width=1920, height=1080, fps=30000, fpsDen=1001, gop=2000)]
    ladder[0].fps, ladder[1].gop = 0, -1
    app, resource, link = withTranscoder()
    request = post(resource, headers={"Livepeer-Segment": customHeader(BODY, ladder)})
    job = answer(app, link)
    assert len(job.profiles) == MAX_PROFILES and job.profiles[-1].name == "net_1920x1080_1000000"
    assert response(request)[0] == 200 and len(transcodeResult(response(request)[1]).data.segments) == MAX_PROFILES
    with pytest.raises(ProfileError):
        Profile.fromDict(dict(PRESETS["P240p30fps16x9"].toDict(), name="a\nb"))


def test_seqAndDurationBounds():
    """
    seq -2^63 is refused ("invalid seq"); a duration over 5 minutes gets
    go-livepeer's "invalid duration"; a 300,000 ms segment is accepted but
    the orchestrator gives up after 60 s, not 20 minutes.
    """
    app, resource, link = withTranscoder()
    assert response(post(resource, seq=-2 ** 63)) == (403, b"invalid seq\n")
    assert response(post(resource, durationMs=300_001)) == (403, b"invalid duration\n")
    assert rejected(app, "seq") == 1 and rejected(app, "duration") == 1
    assert not link.tasks
    request = post(resource, durationMs=300_000, manifestId=b"long")
    app.clock.advance(59.9)
    assert not request.finished
    app.clock.advance(0.2)
    assert transcodeResult(response(request)[1]).error == "Remote transcoder took too long"
    assert served(app, resource, link, manifestId=b"long", seq=1)


class ExplodingStore:
    """
    A rendition store that fails as a full disk would.
    """

    def put(self, sessionId, name, data, mimeType):
        raise OSError(28, "No space left on device: '/var/lib/livepeer/secret-path'")


@pytest.mark.parametrize("breakIt", ["store", "pixels"])
def test_failureAfterThe200StillAnswersATranscodeResult(breakIt):
    """
    The attack: something raises after the 200 status line went out (a
    failing store, or a transcoder's pixel count of 2^70). The gateway gets a
    protobuf TranscodeResult with a generic error, not "Internal Server
    Error" text; the log gets the failure once; the next segment is served.
    """
    app, resource, link = withTranscoder()
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        original = app.store
        if breakIt == "store":
            app.store = ExplodingStore()
        request = post(resource, seq=4)
        answer(app, link, pixels=2 ** 70 if breakIt == "pixels" else 1000)
    finally:
        globalLogPublisher.removeObserver(events.append)
    status, body = response(request)
    result = transcodeResult(body)
    assert status == 200 and request.responseHeaders.getRawHeaders(b"content-type") == [b"application/x-protobuf"]
    assert (result.seq, result.error) == (4, "internal orchestrator error")
    assert b"secret-path" not in body and b"Traceback" not in body
    assert len([e for e in events if "log_failure" in e]) == 1
    failed = app.metrics.registry.get_sample_value(
        "livepeer_segment_transcode_failed_total", {"reason": "internal orchestrator error"})
    assert failed == 1
    app.store = original
    assert served(app, resource, link, seq=5)


def test_healthInStatusAndMetrics():
    """
    The CLI /status shows each transcoder's health; /metrics counts failures
    by kind and the transcoders cooling off.
    """
    app, resource, link = withTranscoder()
    transcoder = app.pool.transcoders[0]
    for _ in range(3):
        app.pool.countFailure("error")
        app.pool.recordFailure(transcoder, "error")
    described, = app.fullStatus()["transcoders"]
    assert described["state"] == "coolingOff" and described["consecutiveFailures"] == 3
    assert described["coolingOffUntil"] == pytest.approx(app.wallClock() + 30, abs=5)
    assert app.fullStatus()["CoolingOffTranscoders"] == 1
    registry = app.metrics.registry
    assert registry.get_sample_value("livepeer_transcoders_cooling_off") == 1
    assert registry.get_sample_value("livepeer_transcoder_failures_total", {"kind": "error"}) == 3
    assert registry.get_sample_value("livepeer_transcoder_failures_total", {"kind": "timeout"}) == 0
    app.clock.advance(30)
    assert served(app, resource, link)  # the probe
    described, = app.fullStatus()["transcoders"]
    assert (described["state"], described["coolingOffUntil"]) == ("healthy", None)
    assert registry.get_sample_value("livepeer_transcoders_cooling_off") == 0


def test_maxSessionsPerAddressOption(tmp_path):
    """
    --maxSessionsPerAddress takes 'auto' (the default) or a number above 0.
    """
    from twisted.python import usage

    from livepeer_tx.orchestrator import tap

    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0o600)
    base = ["--orchSecret", str(secret), "--dataDir", str(tmp_path)]
    options = tap.Options()
    options.parseOptions(base)
    assert options["maxSessionsPerAddressLimit"] is None
    options = tap.Options()
    options.parseOptions(base + ["--maxSessionsPerAddress", "4"])
    assert options["maxSessionsPerAddressLimit"] == 4
    for bad in ("0", "-1", "many"):
        with pytest.raises(usage.UsageError, match="--maxSessionsPerAddress must be 'auto' or a whole number from 1 to"):
            tap.Options().parseOptions(base + ["--maxSessionsPerAddress", bad])
