"""
A transcoder that holds the secret but misbehaves, and a secret file that goes
bad at run time: the orchestrator's WebSocket edge refuses what is wrong,
closes only the offender, and keeps serving the others.

Everything here runs in memory: the real orchestrator protocol, dispatcher and
pool talk to the real transcoder protocol and worker over
L{twisted.test.iosim}, with stand-in transcoding engines and a test clock.
"""

import gc
import json
import os
import struct
import subprocess
import sys

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from livepeer_tx import wsproto
from livepeer_tx.orchestrator.dispatch import TranscodeFailed
from livepeer_tx.orchestrator.registration import (
    DEFAULT_PING_INTERVAL,
    MAX_PIXELS,
    FailedAttemptLimiter,
    maxResultBytes,
)
from livepeer_tx.secret import Secret
from livepeer_tx.transcoder.client import TranscoderClientProtocol
from livepeer_tx.transcoder.worker import TranscodeWorker
from memorywire import (  # noqa: F401 (events is a fixture)
    GO_LIVEPEER_TASK_DEADLINE,
    PROFILES,
    SECRET,
    FailingEngine,
    Harness,
    HangingEngine,
    StreamingEngine,
    events,
    outcome,
    output,
    texts,
)


def deep(depth):
    return b"[" * depth + b"]" * depth


def maskedFrame(opcode, payload):
    """
    A client's WebSocket frame, written by hand (payload under 126 bytes).
    """
    key = b"\x01\x02\x03\x04"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + masked


def mediaFrame(header, parts=(b"x",)):
    headerBytes = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">I", len(headerBytes)) + headerBytes + b"".join(parts)


# --- item 2: bounded JSON -------------------------------------------------------------------------


def test_jsonIsBoundedBeforeItIsParsed(monkeypatch):
    """
    Texts over the size limit, or nested deeper than the depth limit, are
    refused without reaching the JSON parser; brackets inside strings and
    after escapes do not count, and the deepest allowed message decodes.
    """
    parsed = []
    realLoads = json.loads
    monkeypatch.setattr(wsproto.json, "loads", lambda text, **kw: parsed.append(text) or realLoads(text, **kw))
    limit = wsproto.MAX_JSON_DEPTH
    refused = [
        (deep(100_000), "over the 65536-byte limit"),
        (deep(30_000), f"deeper than {limit}"),
        (b'{"type":"x","a":' + deep(limit) + b"}", f"deeper than {limit}"),
        (b'{"type":"x","s":"\\\\",' + b'"a":' + deep(limit) + b"}", f"deeper than {limit}"),
    ]
    for text, reason in refused:
        with pytest.raises(wsproto.ProtocolError, match=reason):
            wsproto.decodeControl(text)
    assert parsed == []
    for header in (deep(30_000), b'{"type":"result","x":' + deep(40) + b"}"):
        with pytest.raises(wsproto.ProtocolError, match="binary frame header nests deeper"):
            wsproto.decodeMedia(mediaFrame(header, []))
    with pytest.raises(wsproto.ProtocolError, match="header length out of range"):
        wsproto.decodeMedia(mediaFrame(b" " * (wsproto.MAX_HEADER_BYTES + 1), []))
    assert parsed == []
    allowed = b'{"type":"x","s":"[[[[\\"[[[[[[[[[[[[[[[[[[[[[[","a":' + deep(limit - 1) + b"}"
    assert wsproto.decodeControl(allowed)["s"].startswith('[[[[\"[[')
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(wsproto.ProtocolError, match="not JSON"):
            wsproto.decodeControl(b'{"type":"x","n":' + constant + b"}")


def test_chainImportsKeepTheRecursionLimitAndDeepJsonIsSafeAnyway():
    """
    Importing the chain modules (eth-account, hence py_ecc) leaves the
    recursion limit as it was; and with the limit raised to py_ecc's 100,000
    by hand, the deep messages of the attack are still refused cleanly (the
    unguarded parser overflows the C stack and kills the process).
    """
    script = r"""
import sys
before = sys.getrecursionlimit()
import livepeer_tx.chain
import livepeer_tx.chain.keystore, livepeer_tx.chain.tickets, livepeer_tx.chain.payments
import livepeer_tx.chain.service, livepeer_tx.chain.redemption, livepeer_tx.chain.reward
import eth_account, py_ecc.bn128
assert sys.getrecursionlimit() == before, (before, sys.getrecursionlimit())
from livepeer_tx import wsproto
sys.setrecursionlimit(100_000)
deep = lambda n: b"[" * n + b"]" * n
for attack in (lambda: wsproto.decodeControl(deep(100_000)), lambda: wsproto.decodeControl(deep(32_000)),
               lambda: wsproto.decodeMedia(len(deep(32_000)).to_bytes(4, "big") + deep(32_000))):
    try:
        attack()
    except wsproto.ProtocolError:
        pass
    else:
        raise AssertionError("a deep message was accepted")
print("limit kept", before)
"""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith("limit kept")


def test_deepMessagesCloseOnlyTheirSender(events):
    """
    A 100,000-deep text frame (over the text-message limit), a 30,000-deep
    one (under it) and a deep binary header each close their sender, which
    leaves the pool; a well-behaved transcoder keeps transcoding.
    """
    harness = Harness()
    good = harness.connect(capacity=1)
    attackers = [harness.connect(capacity=2) for _ in range(3)]
    attackers[0].sendText(deep(100_000))
    attackers[1].sendText(deep(30_000))
    attackers[2].client.sendMessage(mediaFrame(deep(30_000)), isBinary=True)
    harness.flush()
    assert attackers[0].server.wasMaxMessagePayloadSizeExceeded
    assert attackers[1].link.closeCodes == [wsproto.CLOSE_PROTOCOL_ERROR]
    assert attackers[2].link.closeCodes == [wsproto.CLOSE_PROTOCOL_ERROR]
    assert all(a.server.state == a.server.STATE_CLOSED for a in attackers)
    errors = texts(events, LogLevel.error)
    assert sum("nests deeper than" in text for text in errors) == 2
    assert harness.live == [good.address]
    result = outcome(harness.transcode())
    assert result.transcoder == good.address and len(result.renditions) == 2
    assert not texts(events, LogLevel.critical)


class SilentClientProtocol(TranscoderClientProtocol):
    """
    A transcoder protocol that does not register by itself.
    """

    def onOpen(self):
        self.factory.link.connectionOpened(self)


def test_messagesAfterAProtocolErrorAreDropped(events):
    """
    Once a protocol error has started the close, the peer's further messages
    (here a register that would be refused with a message) are not handled:
    nothing can be answered on a closing connection, and nothing is logged
    as critical.
    """
    harness = Harness()
    peer = harness.connect(protocol=SilentClientProtocol)
    peer.client.transport.write(
        maskedFrame(0x1, b'{"type":"nope"}') + maskedFrame(0x1, b'{"type":"register","capacity":0}'))
    harness.flush()
    assert peer.link.closeCodes == [wsproto.CLOSE_PROTOCOL_ERROR] and harness.live == []
    assert not [e for e in events if e["log_level"] == LogLevel.critical or "log_failure" in e]
    assert not any("zero capacity" in text for text in texts(events))


@pytest.mark.parametrize("report, reason", [
    ({"bitstring": [2**64]}, "bitstring words must be unsigned 64-bit integers"),
    ({"bitstring": [1] * 65}, "bitstring must be a list of at most 64 words"),
    ({"capacities": {"h264": 1}}, "capacities key 'h264' is not a capability id"),
    ({"capacities": {"x" * 1000: 1}}, f"capacities key {'x' * 32!r} is not a capability id"),
    ({"capacities": {"0": -1}}, "capacities must map unsigned 32-bit ids to unsigned 32-bit capacities"),
])
def test_malformedCapabilitiesRefusedAtRegistration(events, report, reason):
    """
    A register message whose capabilities do not parse closes its sender
    with 4002 and an error naming C{capabilities} and the fault (told to the
    transcoder and logged, quoting at most 32 characters of what it sent);
    it never joins the pool, and a well-behaved transcoder keeps
    transcoding. Were the report stored unparsed, the offender would join
    the pool.
    """
    harness = Harness()
    good = harness.connect(capacity=1)
    peer = harness.connect(protocol=SilentClientProtocol)
    peer.sendText(json.dumps({"type": "register", "capacity": 1, "capabilities": report}).encode())
    assert peer.link.closeCodes == [wsproto.CLOSE_PROTOCOL_ERROR]
    error = f"register: capabilities: {reason}"
    assert f"Protocol error from transcoder=10.0.0.2:40000: {error}" in texts(events, LogLevel.error)
    assert f"Orchestrator reported an error: {error}" in texts(events, LogLevel.warn)
    assert harness.live == [good.address]
    assert outcome(harness.transcode()).transcoder == good.address


# --- item 4: every field of a result ----------------------------------------------------------------


def validResult(taskId):
    return {
        "type": "result", "taskId": taskId, "decodedPixels": 60 * 640 * 360, "decodedFrames": 60, "seconds": 0.5,
        "renditions": [
            {"name": p.name, "pixels": 60 * p.width * p.height, "frames": 60, "width": p.width, "height": p.height}
            for p in PROFILES
        ],
    }


def rendition(index, **changes):
    def change(header):
        header["renditions"][index].update(changes)
    return change


def field(**changes):
    def change(header):
        header.update(changes)
    return change


def without(name):
    def change(header):
        header.pop(name)
    return change


BOGUS_RESULTS = {
    "negative pixels": (rendition(0, pixels=-10**12), "pixels must be an integer"),
    "pixels of 2**70": (rendition(0, pixels=2**70), "pixels must be an integer"),
    "negative count with a positive sum": (
        lambda h: (rendition(0, pixels=-5)(h), rendition(1, pixels=10**9)(h)), "pixels must be an integer"),
    "pixels as a boolean": (rendition(0, pixels=True), "pixels must be an integer"),
    "pixels as a float": (rendition(0, pixels=1.5), "pixels must be an integer"),
    "pixels as a string": (rendition(0, pixels="100"), "pixels must be an integer"),
    "pixels beyond frames x size": (rendition(1, pixels=61 * 640 * 360), "exceed frames x width x height"),
    "huge width": (rendition(0, width=10**6), "width must be an integer"),
    "negative frames": (rendition(1, frames=-1), "frames must be an integer"),
    "no frames field": (lambda h: h["renditions"][0].pop("frames"), "frames must be an integer"),
    "name not a string": (rendition(0, name=5), "needs a name"),
    "name too long": (rendition(0, name="P" * 1000), "needs a name"),
    "rendition not an object": (lambda h: h["renditions"].__setitem__(0, [1, 2]), "must be an object"),
    "negative decodedPixels": (field(decodedPixels=-1), "decodedPixels must be"),
    "decodedPixels over the cap": (field(decodedPixels=MAX_PIXELS + 1), "decodedPixels must be"),
    "no decodedPixels": (without("decodedPixels"), "decodedPixels must be"),
    "decodedFrames as a string": (field(decodedFrames="60"), "decodedFrames must be"),
    "negative seconds": (field(seconds=-1.0), "seconds must be"),
    "seconds as a string": (field(seconds="0.5"), "seconds must be"),
    "seconds NaN": (field(seconds=float("nan")), "not JSON"),
    "taskId as a boolean": (field(taskId=True), "taskId must be an integer"),
    "one entry short": (lambda h: h["renditions"].pop(), "one rendition entry per part"),
}


@pytest.mark.parametrize("case", sorted(BOGUS_RESULTS))
def test_bogusResultNeverReachesTheGateway(case, events):
    """
    A result with any bad field closes its transcoder with a protocol error,
    takes it out of rotation, and the segment is transcoded by another
    transcoder within its deadline.
    """
    breakField, reason = BOGUS_RESULTS[case]
    harness = Harness()
    liar = harness.connect(HangingEngine(), capacity=2)
    honest = harness.connect(capacity=1)
    d = harness.transcode()
    (taskId,) = liar.link.taskIds
    header = validResult(taskId)
    breakField(header)
    liar.sendBinary(header, [b"\x47" * 376, b"\x47" * 376])
    result = outcome(d)
    assert not isinstance(result, Failure), result
    assert result.transcoder == honest.address and result.attempts == 2
    assert all(r.pixels >= 0 for r in result.renditions)
    assert any(reason in text for text in texts(events, LogLevel.error)), texts(events, LogLevel.error)
    assert harness.live == [honest.address]
    assert liar.link.closeCodes == [wsproto.CLOSE_PROTOCOL_ERROR]


def test_emptyRenditionBytesAreRefused(events):
    """
    A rendition without bytes is a protocol error, like a bad number.
    """
    harness = Harness()
    liar = harness.connect(HangingEngine(), capacity=2)
    honest = harness.connect(capacity=1)
    d = harness.transcode()
    liar.sendBinary(validResult(liar.link.taskIds[0]), [b"\x47" * 376, b""])
    assert outcome(d).transcoder == honest.address
    assert any("rendition 1 has no bytes" in text for text in texts(events, LogLevel.error))


def test_validResultPassesUnchanged():
    """
    The checks let an honest result through with its numbers.
    """
    harness = Harness()
    transcoder = harness.connect(HangingEngine(), capacity=1)
    d = harness.transcode()
    header = validResult(transcoder.link.taskIds[0])
    transcoder.sendBinary(header, [b"\x47" * 376, b"\x47" * 752])
    result = outcome(d)
    assert [r.pixels for r in result.renditions] == [r["pixels"] for r in header["renditions"]]
    assert result.decodedPixels == header["decodedPixels"] and result.ffmpegSeconds == 0.5
    assert harness.live == [transcoder.address]


# --- item 5: message size and unfinished messages --------------------------------------------------


def test_fragmentsOverTheLimitCloseTheConnectionAndAreDropped():
    """
    A fragmented binary message growing past the per-message limit fails
    the connection (code 1009) as soon as a frame header announces it, and
    what was buffered is dropped.
    """
    harness = Harness(maxSegmentBytes=100_000)
    limit = harness.factory.maxMessagePayloadSize
    assert limit == maxResultBytes(100_000) < 300_000
    attacker = harness.connect(capacity=2)
    attacker.client.beginMessage(isBinary=True)
    chunk = b"\x00" * 64 * 1024
    for _ in range(limit // len(chunk)):
        attacker.client.sendMessageFrame(chunk)
    harness.flush()
    assert sum(map(len, attacker.server.message_data)) == (limit // len(chunk)) * len(chunk)
    attacker.client.sendMessageFrame(chunk)
    harness.flush()
    assert attacker.server.wasMaxMessagePayloadSizeExceeded
    assert attacker.server.state == attacker.server.STATE_CLOSED
    assert attacker.server.message_data is None and attacker.server.frame_data is None
    assert harness.live == []


def test_unfinishedMessageDroppedWhenThePeerGoes():
    """
    A peer that sends part of a large message and disconnects leaves
    nothing of it behind.
    """
    harness = Harness()
    peer = harness.connect()
    peer.client.beginMessage(isBinary=True)
    for _ in range(8):
        peer.client.sendMessageFrame(b"\x01" * 64 * 1024)
    harness.flush()
    assert sum(map(len, peer.server.message_data)) == 8 * 64 * 1024
    peer.pump.clientIO.loseConnection()
    harness.flush()
    assert peer.server.message_data is None and peer.server.data == b""
    assert harness.live == []


def test_textMessagesLimitedToTheControlSize():
    """
    A text message longer than the control limit is refused from its frame
    header, before its payload is buffered, while binary messages keep the
    larger limit.
    """
    harness = Harness()
    peer = harness.connect()
    peer.client.beginMessage(isBinary=False)
    peer.client.beginMessageFrame(wsproto.MAX_CONTROL_BYTES + 1)
    peer.client.sendMessageFrameData(b" " * 1024)
    harness.flush()
    assert peer.server.wasMaxMessagePayloadSizeExceeded
    assert peer.server.message_data is None
    other = harness.connect()
    other.sendBinary({"type": "error-not-a-type"}, [b"\x00" * (wsproto.MAX_CONTROL_BYTES * 2)])
    assert not other.server.wasMaxMessagePayloadSizeExceeded  # refused for its type, not its size
    assert other.link.closeCodes == [wsproto.CLOSE_PROTOCOL_ERROR]


# --- item 8: a frozen transcoder with the default pings ----------------------------------------------


def test_frozenTranscoderFoundAndItsSegmentMovedWithTheDefaults(events):
    """
    With the default ping interval a transcoder that stops answering while
    it holds a 2 s segment is dropped within two intervals, and the segment
    is transcoded elsewhere within go-livepeer's 8 s deadline.
    """
    assert 2 * DEFAULT_PING_INTERVAL <= GO_LIVEPEER_TASK_DEADLINE / 2
    harness = Harness()
    assert harness.factory.autoPingInterval == harness.factory.autoPingTimeout == DEFAULT_PING_INTERVAL
    victim = harness.connect(HangingEngine(), capacity=2)
    survivor = harness.connect(capacity=1)
    harness.advance(0.7)  # some pings have come and gone
    d = harness.transcode()
    assert victim.link.taskIds
    victim.frozen = True
    frozenAt = harness.clock.seconds()
    results = []
    d.addBoth(results.append)
    while not results and harness.clock.seconds() - frozenAt < GO_LIVEPEER_TASK_DEADLINE:
        harness.advance(0.1)
    assert results and not isinstance(results[0], Failure), results
    assert results[0].transcoder == survivor.address and results[0].attempts == 2
    assert harness.clock.seconds() - frozenAt <= 2 * DEFAULT_PING_INTERVAL + 0.5
    assert harness.live == [survivor.address]
    assert any("ping timeout" in text for text in texts(events))


def test_aBusyHonestTranscoderIsNotDropped():
    """
    A transcoder that answers its pings keeps its tasks however long they
    run.
    """
    harness = Harness()
    engine = HangingEngine()
    transcoder = harness.connect(engine)
    d = harness.transcode(durationMs=10_000)  # a 40 s deadline
    harness.advance(15 * DEFAULT_PING_INTERVAL, step=0.5)
    assert harness.live == [transcoder.address]
    engine.calls[0].callback(output(PROFILES))
    harness.flush()
    assert outcome(d).attempts == 1


# --- item 9: failed attempts throttle guessing, not the right secret ---------------------------------


class RecordingWebSocket:
    """
    Stands in for the WebSocket resource behind the gate.
    """

    def __init__(self):
        self.upgraded = []

    def render(self, request):
        self.upgraded.append(request)
        return b""


def register(gate, credentials, host="192.0.2.7", capacity="1"):
    request = DummyRequest([b""])
    request.client = IPv4Address("TCP", host, 51000)
    for name, value in (("Authorization", wsproto.AUTH_VALUE), ("Credentials", credentials),
                        ("Livepeer-Capacity", capacity)):
        request.requestHeaders.setRawHeaders(name, [value])
    gate.render(request)
    return request.responseCode or 101


def makeGate(secret, clock=None):
    from livepeer_tx.metrics import OrchestratorMetrics
    from livepeer_tx.orchestrator.registration import TranscoderGate
    from livepeer_tx.orchestrator.routing import TranscoderPool

    clock = clock or Clock()
    webSocket = RecordingWebSocket()
    gate = TranscoderGate(secret, FailedAttemptLimiter(clock), webSocket, OrchestratorMetrics(TranscoderPool(clock)))
    return gate, webSocket, clock


def test_rightSecretAdmittedWhileItsAddressIsBlocked(events):
    """
    Wrong secrets from one address are refused with 403, then 429 once over
    the limit; a right secret from the same address is admitted meanwhile;
    other addresses are unaffected; the block ends after the window.
    """
    gate, webSocket, clock = makeGate(Secret(literal=SECRET))
    assert [register(gate, "guess") for _ in range(5)] == [403] * 5
    assert [register(gate, "guess") for _ in range(20)] == [429] * 20
    assert register(gate, SECRET) == 101 and len(webSocket.upgraded) == 1
    assert register(gate, "guess", host="198.51.100.1") == 403
    assert register(gate, "guess") == 429
    logged = texts(events)
    assert sum("err='invalid secret'" in text for text in logged) == 6  # none for the 429s
    assert sum("Too many failed attempts from 192.0.2.7" in text for text in logged) == 1
    clock.advance(61)
    assert register(gate, "guess") == 403
    assert SECRET not in "\n".join(logged)


def test_failedAttemptMemoryIsBounded():
    """
    The limiter keeps at most maxFailures times per address and maxHosts
    addresses.
    """
    clock = Clock()
    limiter = FailedAttemptLimiter(clock, maxFailures=3, maxHosts=100)
    for i in range(1000):
        limiter.recordFailure("192.0.2.1")
        limiter.recordFailure(f"10.1.{i // 256}.{i % 256}")
    assert limiter.isBlocked("192.0.2.1")
    assert len(limiter._failures) == 100 and len(limiter._failures["192.0.2.1"]) == 3


# --- 10f: a secret file that goes bad at run time ----------------------------------------------------


def test_secretFileGoneBadFailsClosedWithAClearLine(tmp_path, events):
    """
    A secret file that becomes group/world-readable or disappears after the
    start refuses registrations with 503 and one error line naming the
    file, with no traceback and no secret; fixing the file restores them.
    """
    path = tmp_path / "orchSecret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    gate, webSocket, _ = makeGate(Secret.fromOption(str(path)))
    assert register(gate, SECRET) == 101
    path.chmod(0o644)
    assert register(gate, SECRET) == 503
    assert register(gate, "guess") == 503
    path.unlink()
    assert register(gate, SECRET) == 503
    errors = texts(events, LogLevel.error)
    assert sum("accessible by group or others (mode 0644)" in text for text in errors) == 2
    assert sum("cannot read secret file" in text and "No such file" in text for text in errors) == 1
    assert not [e for e in events if "log_failure" in e or e["log_level"] == LogLevel.critical]
    assert SECRET not in "\n".join(texts(events))
    path.write_text(SECRET)
    path.chmod(0o600)
    assert register(gate, SECRET) == 101 and len(webSocket.upgraded) == 2


def test_secretFileThatIsNotARegularFileOrNotText(tmp_path):
    """
    A FIFO put in place of the secret file is refused without blocking, and
    a file that is not UTF-8 is refused with a clear error.
    """
    from livepeer_tx.secret import SecretFileError

    path = tmp_path / "orchSecret"
    path.write_text(SECRET)
    path.chmod(0o600)
    secret = Secret.fromOption(str(path))
    path.unlink()
    os.mkfifo(path, 0o600)
    with pytest.raises(SecretFileError, match="not a regular file"):
        secret.read()
    path.unlink()
    path.write_bytes(b"\xff\xfe\x00secret")
    path.chmod(0o600)
    with pytest.raises(SecretFileError, match="not UTF-8"):
        secret.read()


# --- 10a: cancelling a running task ------------------------------------------------------------------


class FFmpegLikeEngine(StreamingEngine):
    """
    Like L{FFmpegTranscoder}: cancelling a transcode signals the process and
    pauses the Deferred, which delivers its CancelledError once the process
    is reaped.
    """

    def __init__(self):
        self.running = []

    def transcode(self, segment, profiles, device=None, timeout=None):
        d = defer.Deferred(lambda d: d.pause())
        self.running.append(d)
        return d

    def reap(self, d):
        self.running.remove(d)
        d.unpause()


def test_cancellingARunningTaskLogsNothingCritical(events):
    """
    Cancelling a task whose engine takes time to stop fires the task's
    Deferred once, with CancelledError, after the engine stopped; its slot
    goes to the next task and no AlreadyCalledError is logged.
    """
    engine = FFmpegLikeEngine()
    worker = TranscodeWorker(engine, maxSessions=1)
    first = worker.run(1, "a", b"one", PROFILES)
    second = worker.run(2, "b", b"two", PROFILES)
    results = []
    first.addBoth(results.append)
    worker.cancel(1)
    assert results == [] and worker.running == 1 and worker.queued == 1
    engine.reap(engine.running[0])
    assert len(results) == 1 and results[0].check(defer.CancelledError)
    assert worker.running == 1 and len(engine.running) == 1  # the second task got the slot
    worker.cancel(1)  # late cancel: nothing left to do
    worker.cancelAll()
    engine.reap(engine.running[0])
    second.addErrback(lambda f: f.trap(defer.CancelledError))
    del first, second, results
    gc.collect()
    assert worker.running == 0 and worker._tasks == {}
    bad = [e for e in events if e["log_level"] in (LogLevel.critical, LogLevel.error) or "log_failure" in e]
    assert bad == [], [formatEvent(e) for e in bad]


def test_cancelThroughTheOrchestratorLink(events):
    """
    The orchestrator's cancel message reaches a running task and nothing
    critical is logged, on both sides.
    """
    harness = Harness()
    engine = FFmpegLikeEngine()
    transcoder = harness.connect(engine)
    d = harness.transcode()
    d.addErrback(lambda f: f.trap(TranscodeFailed))
    harness.advance(GO_LIVEPEER_TASK_DEADLINE + 0.5, step=0.5)  # the deadline sends the cancel
    assert engine.running
    engine.reap(engine.running[0])
    harness.flush()
    gc.collect()
    assert transcoder.link.worker.running == 0
    assert not [e for e in events if e["log_level"] == LogLevel.critical or "log_failure" in e]
    assert any("Transcoding cancelled for taskId=" in text for text in texts(events))


# --- 10c: error texts carry no local paths -----------------------------------------------------------


def test_transcoderErrorReachesTheGatewayWithoutPaths(events):
    """
    An engine error naming the work directory reaches the gateway's error
    text with the path replaced, on one line.
    """
    harness = Harness()
    harness.connect(FailingEngine(
        "FFmpeg exited with status 1: /home/tx/.lpData/transcoder/transcode-k2j3/input.tempfile: "
        "Invalid data found when processing input\n[Errno 2] No such file: '/var/tmp/x'"))
    failure = outcome(harness.transcode())
    assert failure.check(TranscodeFailed)
    text = str(failure.value)
    assert "Invalid data found when processing input" in text and "<path>" in text
    assert "/home" not in text and "/var/tmp" not in text and "\n" not in text


def test_orchestratorCleansErrorTextsItself(events):
    """
    A transcoder's raw error message (paths, control characters, a huge
    text, a non-string) is cleaned and bounded before the gateway sees it.
    """
    cases = [
        ("/srv/work/transcode-1/out0.ts: Permission denied\r\nforged log line\x1b[31m" + "x" * 5000,
         lambda t: "<path>" in t and "/srv" not in t and "\n" not in t and "\x1b" not in t
         and len(t) <= wsproto.MAX_ERROR_TEXT),
        (["not", "a", "string"], lambda t: t == "unknown transcoder error"),
    ]
    for raw, check in cases:
        harness = Harness()
        transcoder = harness.connect(HangingEngine())
        d = harness.transcode()
        transcoder.sendText(json.dumps({"type": "error", "taskId": transcoder.link.taskIds[0],
                                        "error": raw}).encode())
        failure = outcome(d)
        assert failure.check(TranscodeFailed) and check(str(failure.value)), str(failure.value)
    logged = "\n".join(texts(events))
    assert "/srv/work" not in logged and "forged log line\n" not in logged
