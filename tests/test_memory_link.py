"""
The transcoder's link to its orchestrator, end to end in memory: the real
L{OrchestratorLink} connects through the orchestrator's real HTTP site, gate
and WebSocket over L{twisted.test.iosim}, on a L{MemoryReactorClock}. Every
wait is a step of that clock, so refusals, backoffs, rotation and failover
are checked without real processes or real time.
"""

import base64
import json
import os

from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel

from livepeer_tx import wsproto
from livepeer_tx.orchestrator.authtoken import AuthTokens
from livepeer_tx.orchestrator.dispatch import SegmentJob, TranscodeFailed
from livepeer_tx.orchestrator.orchservice import OrchestratorService
from livepeer_tx.payments import OffchainPayments
from livepeer_tx.proto import lp_rpc_pb2 as pb
from livepeer_tx.secret import Secret
from livepeer_tx.transcoder.client import Backoff, OrchestratorLink
from livepeer_tx.transcoder.worker import TranscodeWorker
from memorywire import (  # noqa: F401 (events is a fixture)
    PROFILES,
    SECRET,
    SEGMENT,
    Harness,
    HangingEngine,
    RawClient,
    events,
    named,
    outcome,
    output,
    retries,
    texts,
)


# The transcoder pings every 10 s and waits 10 s for the pong (see
# OrchestratorLink.webSocketFactory).
DEAD_PEER_SECONDS = 20.0


def fixedBackoff():
    """
    The transcoder's backoff with its jitter pinned to the middle: delays
    of exactly C{initial * factor ** n}, and 30 s for the slow rate.
    """
    return Backoff(random=lambda: 0.5)


def secretFile(directory, value, name="orchSecret"):
    """
    A private secret file holding C{value}.
    """
    path = os.path.join(str(directory), name)
    with open(path, "w") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)
    return path


def rewrite(path, value):
    """
    Give the secret file at C{path} a new value.
    """
    with open(path, "w") as f:
        f.write(value + "\n")


def registered(harness):
    return [t.address for t in harness.app.pool.transcoders]


def startedLink(secret=None, reachable=True, **options):
    """
    A transcoder link with the pinned backoff, started in memory against a
    new orchestrator (unreachable unless C{reachable}): its clock, harness
    and link.
    """
    clock = MemoryReactorClock()
    harness = Harness(clock=clock)
    harness.reachable = reachable
    link = harness.link(secret or Secret(literal=SECRET), backoff=fixedBackoff(), **options)
    link.startService()
    harness.flush()
    return clock, harness, link


def refusedLink(directory):
    """
    A transcoder link, started in memory, whose secret file in C{directory}
    holds the wrong secret: its clock, harness, secret file and link.
    """
    path = secretFile(directory, "not-the-secret")
    clock, harness, link = startedLink(Secret.fromOption(path))
    return clock, harness, path, link


def test_registrationThroughTheGate(events):
    """
    A link started with the right secret is admitted by the gate, upgraded,
    registered with its capacity, and logs go-livepeer's lines on both
    sides; the secret appears in no event.
    """
    harness = Harness(clock=MemoryReactorClock())
    link = harness.link(Secret(literal=SECRET), capacity=3)
    link.startService()
    harness.flush()
    assert registered(harness) == ["10.0.0.100:40000"]
    assert link.isRegistered and link.protocol is not None
    request, = named(events, "Got a RegisterTranscoder request")
    assert (request["transcoder"], request["capacity"]) == ("10.0.0.100:40000", 3)
    success, = named(events, "Successful transcoder registration orchestrator=")
    assert success["capacity"] == 3
    assert SECRET not in repr(events)


def test_reportedCapacitiesReachGetOrchestrator():
    """
    The capacities a WebSocket transcoder reports in C{register}, parsed
    once at registration, are what GetOrchestrator adds to our own
    (capacity 1 each) and to a real link's default set: the capability only
    it offers (15) at its capacity, the others summed. A report parsed
    wrongly (its text keys, say), or not added, changes these numbers.
    """
    harness = Harness(clock=MemoryReactorClock())
    harness.link(Secret(literal=SECRET)).startService()
    harness.flush()
    client, pump, _ = rawUpgrade(harness, {"Credentials": SECRET})
    client.transport.write(frame(0x1, json.dumps(
        {"type": "register", "capacity": 1, "capabilities": {"bitstring": [1], "capacities": {"0": 3, "15": 2}}},
    ).encode()))
    pump.flush()
    assert registered(harness) == ["10.0.0.100:40000", "10.0.0.200:40000"]
    service = OrchestratorService(harness.app.pool, AuthTokens(bytes(32), wallClock=harness.app.wallClock),
                                  harness.app.serviceURL, OffchainPayments(), harness.app.endSession)
    capacities = outcome(service.getOrchestrator(pb.OrchestratorRequest(), None)).capabilities.capacities
    assert {c: capacities[c] for c in (0, 1, 15)} == {0: 5, 1: 2, 15: 2}


def test_wrongSecretFileRetriesSlowlyThenPicksUpTheNewFile(tmp_path, events):
    """
    A wrong secret file is refused with 'invalid secret'; the link keeps
    running, waits the slow rate (30 s +/- 20 %), re-reads the file on the
    next attempt and registers once it holds the right secret.
    """
    clock, harness, path, _ = refusedLink(tmp_path)
    refused, = named(events, "Cannot register transcoder=")
    assert refused["err"] == wsproto.INVALID_SECRET
    slow, = named(events, "The orchestrator refused our secret ({error}); will re-read")
    assert slow["log_level"] == LogLevel.error and slow["delay"] == 30.0
    assert registered(harness) == [] and not clock.whenRunningHooks
    rewrite(path, SECRET)
    clock.advance(29.9)
    harness.flush()
    assert registered(harness) == []
    clock.advance(0.1)
    harness.flush()
    assert registered(harness) == ["10.0.0.100:40000"]
    assert "not-the-secret" not in repr(events)


def test_aReloadRetriesAtOnceAfterARefusal(tmp_path, events):
    """
    While it waits out the slow rate after a refusal, a reload that
    changed the secret file reconnects at once.
    """
    _, harness, path, link = refusedLink(tmp_path)
    assert retries(events) == [30.0]
    rewrite(path, SECRET)
    link.secretChanged()
    harness.flush()
    assert registered(harness) == ["10.0.0.100:40000"]
    assert named(events, "Secret changed; reconnecting to {orchestrator} now")


def test_wrongLiteralSecretStopsTheTranscoderWithStatus1(events):
    """
    A literal wrong secret cannot change: the transcoder stops the reactor
    and exits with status 1, and schedules no retry.
    """
    clock, _, _ = startedLink(Secret(literal="literal-wrong-secret"))
    critical, = named(events, "Terminating transcoder because of {error}", LogLevel.critical)
    assert critical["error"] == wsproto.INVALID_SECRET
    assert clock.whenRunningHooks == [(clock.stop, (), {})]
    assert len(clock.triggers["after"]["shutdown"]) == 1
    assert retries(events) == []
    assert "literal-wrong-secret" not in repr(events)


def test_unreachableOrchestratorBacksOffThenRegistersAndResets(events):
    """
    While the orchestrator cannot be reached, attempts follow the backoff
    (0.5 s growing by 1.5 up to 30 s); the first success registers and
    starts the backoff again from the beginning.
    """
    clock, harness, link = startedLink(reachable=False)
    for _ in range(12):
        clock.advance(retries(events)[-1])
    assert retries(events) == [min(30.0, 0.5 * 1.5 ** n) for n in range(13)]
    assert len(named(events, "Could not register transcoder to orchestrator {orchestrator}: {error}")) == 13
    harness.reachable = True
    clock.advance(30.0)
    harness.flush()
    assert registered(harness) == ["10.0.0.100:40000"] and link.backoff.attempts == 0


def test_orchestratorShutdownThenReconnect(events):
    """
    An orchestrator that stops closes its transcoders with 4003; the link
    logs go-livepeer's 'Unregistering transcoder' line and reconnects after
    the first backoff step.
    """
    clock, harness, _ = startedLink()
    transcoder, = harness.app.pool.transcoders
    transcoder.link.closeForShutdown()
    harness.flush()
    unregistered, = named(events, "Unregistering transcoder: {reason} (code {code})")
    assert (unregistered["reason"], unregistered["code"]) == ("orchestrator shutting down", wsproto.CLOSE_SHUTDOWN)
    assert registered(harness) == [] and retries(events) == [0.5]
    clock.advance(0.5)
    harness.flush()
    assert registered(harness) == ["10.0.0.100:40000"]


def test_secretRotationClosesWith4004AndTheLinkReregisters(tmp_path, events):
    """
    When the orchestrator's secret is rotated, the transcoder it closes
    with 4004 re-reads its own secret file and registers with the new
    secret after the first backoff step; the old secret is then refused.
    """
    clock = MemoryReactorClock()
    orchestratorPath = secretFile(tmp_path, SECRET, "orchestrator")
    harness = Harness(clock=clock, secret=Secret.fromOption(orchestratorPath))
    transcoderPath = secretFile(tmp_path, SECRET, "transcoder")
    link = harness.link(Secret.fromOption(transcoderPath), backoff=fixedBackoff())
    link.startService()
    harness.flush()
    rewrite(orchestratorPath, "the-new-secret")
    rewrite(transcoderPath, "the-new-secret")
    transcoder, = harness.app.pool.transcoders
    transcoder.link.closeForStaleSecret()
    harness.flush()
    rotated, = named(events, "The orchestrator no longer accepts the secret we registered with")
    assert rotated["delay"] == 0.5 and retries(events) == [0.5]
    assert registered(harness) == []
    clock.advance(0.5)
    harness.flush()
    assert registered(harness) == ["10.0.0.100:40000"]
    assert not named(events, "Cannot register transcoder=")
    assert SECRET not in repr(events) and "the-new-secret" not in repr(events)


def test_failoverWhenATranscoderConnectionDropsMidTask(events):
    """
    A transcoder whose connection drops (a killed process) while it holds a
    segment: the segment is transcoded by the other transcoder, on the
    second attempt, and the dropped one is gone from the pool.
    """
    clock = MemoryReactorClock()
    harness = Harness(clock=clock)
    engines = [HangingEngine(), HangingEngine()]
    links = [harness.link(Secret(literal=SECRET), engine=engine, host=f"10.0.0.{n}")
             for n, engine in enumerate(engines, 1)]
    for link in links:
        link.startService()
    harness.flush()
    assert len(registered(harness)) == 2
    d = harness.app.dispatcher.transcode(SegmentJob("victim", 0, SEGMENT, PROFILES, 2000))
    harness.flush()
    victimIndex = next(i for i, engine in enumerate(engines) if engine.calls)
    victimPump = harness.pumps[victimIndex]
    victimPump.serverIO.loseConnection()
    harness.flush()
    survivor = engines[1 - victimIndex]
    assert len(survivor.calls) == 1
    survivor.calls[0].callback(output(PROFILES))
    harness.flush()
    result = outcome(d)
    assert result.attempts == 2 and result.transcoder == f"10.0.0.{2 - victimIndex}:40000"
    assert registered(harness) == [f"10.0.0.{2 - victimIndex}:40000"]


def upgradeRequest(headers, subprotocol=wsproto.SUBPROTOCOL):
    """
    A WebSocket upgrade request for C{/transcoder}, written by hand.
    """
    lines = [
        b"GET /transcoder HTTP/1.1", b"Host: orch.example:8935", b"Upgrade: websocket", b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + base64.b64encode(b"0123456789abcdef"), b"Sec-WebSocket-Version: 13",
    ]
    if subprotocol:
        lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode())
    for name, value in headers.items():
        if value is not None:
            lines.append(f"{name}: {value}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def rawUpgrade(harness, headers, subprotocol=wsproto.SUBPROTOCOL, host="10.0.0.200"):
    """
    Send one upgrade request to the site in memory: the client, its pump
    and the response's status line.
    """
    client = RawClient()
    pump = harness.connectToSite(client, host)
    client.transport.write(upgradeRequest(
        dict({"Authorization": wsproto.AUTH_VALUE, "Livepeer-Capacity": "1"}, **headers), subprotocol))
    pump.flush()
    return client, pump, client.received.split(b"\r\n", 1)[0]


def frame(opcode, payload, mask=True):
    """
    A client's WebSocket frame (payload under 126 bytes).
    """
    if not mask:
        return bytes([0x80 | opcode, len(payload)]) + payload
    key = b"\x01\x02\x03\x04"
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def closeCode(received):
    """
    The code of the close frame at the end of what the server sent after
    its 101 answer (unmasked server frames, payloads under 126 bytes).
    """
    frames = received.split(b"\r\n\r\n", 1)[1]
    codes = []
    while frames:
        opcode, length = frames[0] & 0x0F, frames[1]
        payload, frames = frames[2:2 + length], frames[2 + length:]
        if opcode == 0x8:
            codes.append((int.from_bytes(payload[:2], "big"), payload[2:]))
    return codes[-1] if codes else None


def test_gateRefusalsInGoLivepeerWords(events):
    """
    Before the upgrade: no go-livepeer Authorization value gets 401, a
    wrong secret 403 'invalid secret', capacity 0 with the right secret
    403 'zero capacity', and no subprotocol 400; each is logged as a
    structured event and nothing registers.
    """
    harness = Harness(clock=MemoryReactorClock())
    cases = [
        ({"Authorization": None, "Credentials": SECRET}, wsproto.SUBPROTOCOL, b"HTTP/1.1 401 Unauthorized"),
        ({"Credentials": "guess"}, wsproto.SUBPROTOCOL, b"HTTP/1.1 403 invalid secret"),
        ({"Credentials": SECRET, "Livepeer-Capacity": "0"}, wsproto.SUBPROTOCOL, b"HTTP/1.1 403 zero capacity"),
        ({"Credentials": SECRET}, None, b"HTTP/1.1 400"),
    ]
    for headers, subprotocol, status in cases:
        _, _, line = rawUpgrade(harness, headers, subprotocol)
        assert line.startswith(status), (headers, line)
    assert named(events, "Invalid auth type {value!r}")
    assert [e["err"] for e in named(events, "Cannot register transcoder=")] == [
        wsproto.INVALID_SECRET, wsproto.ZERO_CAPACITY]
    assert registered(harness) == []


def test_failedAttemptsRateLimitedButTheRightSecretAdmitted(events):
    """
    Five wrong secrets from one address get 403, further ones 429; the
    right secret from that address still gets its WebSocket (101).
    """
    harness = Harness(clock=MemoryReactorClock())
    lines = [rawUpgrade(harness, {"Credentials": "guess"})[2] for _ in range(8)]
    assert [line.split(b" ")[1] for line in lines] == [b"403"] * 5 + [b"429"] * 3
    assert rawUpgrade(harness, {"Credentials": SECRET})[2] == b"HTTP/1.1 101 Switching Protocols"
    assert len(named(events, "Too many failed attempts from {host}")) == 1


def test_malformedWebsocketInputClosesOnlyItsSender(events):
    """
    Text that is not JSON, a binary message before registration, an
    unmasked frame, and a register message whose capacity differs from the
    header each close only their own connection (4002 where the
    WebSocket protocol got that far); a real link keeps its registration
    and transcodes.
    """
    harness = Harness(clock=MemoryReactorClock())
    link = harness.link(Secret(literal=SECRET))
    link.startService()
    harness.flush()
    headers = {"Credentials": SECRET}

    client, pump, line = rawUpgrade(harness, headers)
    assert line == b"HTTP/1.1 101 Switching Protocols"
    client.transport.write(frame(0x1, b"this is not json"))
    pump.flush()
    assert closeCode(client.received)[0] == wsproto.CLOSE_PROTOCOL_ERROR

    client, pump, _ = rawUpgrade(harness, headers)
    client.transport.write(frame(0x2, b"\x00\x00\x00\x05{}"))
    pump.flush()
    assert closeCode(client.received)[0] == wsproto.CLOSE_PROTOCOL_ERROR

    client, pump, _ = rawUpgrade(harness, headers)
    client.transport.write(frame(0x1, b'{"type":"register","capacity":1}', mask=False))
    pump.flush()
    assert b"registered" not in client.received.split(b"\r\n\r\n", 1)[1]
    assert client.lost or closeCode(client.received) is not None

    client, pump, _ = rawUpgrade(harness, headers)
    client.transport.write(frame(0x1, b'{"type":"register","capacity":50,"devices":[],"version":"x"}'))
    pump.flush()
    code, reason = closeCode(client.received)
    assert code == wsproto.CLOSE_PROTOCOL_ERROR and b"differs from" in reason

    assert registered(harness) == ["10.0.0.100:40000"]
    d = harness.app.dispatcher.transcode(SegmentJob("still-serving", 0, SEGMENT, PROFILES, 2000))
    harness.flush()
    assert outcome(d).attempts == 1


def freeze(pump):
    """
    One step of a connection whose far end stopped (a frozen process or a
    dead path): nothing written arrives, and each side sees only its own
    side's close.
    """
    pump.serverIO.getOutBuffer()
    pump.clientIO.getOutBuffer()
    for transport in (pump.clientIO, pump.serverIO):
        if transport.disconnecting and not transport.disconnected:
            transport.disconnected = True
            transport.reportDisconnect()


def test_aSilentOrchestratorIsFoundByPingsAndTheLinkReconnects(events):
    """
    When the orchestrator stops answering, the transcoder's own pings find
    it dead within their interval plus timeout (20 s); the link unregisters
    and reconnects after the first backoff step, and registers again.
    """
    clock, harness, link = startedLink()
    assert link.isRegistered
    silent = harness.pumps.pop()
    for _ in range(int(DEAD_PEER_SECONDS)):
        clock.advance(1)
        freeze(silent)
        if not link.isRegistered:
            break
    assert not link.isRegistered and link.protocol is None
    assert clock.seconds() <= DEAD_PEER_SECONDS
    unregistered, = named(events, "Unregistering transcoder: {reason} (code {code})")
    assert unregistered["code"] == 1006 and "ping timeout" in unregistered["reason"]
    assert retries(events) == [0.5]
    clock.advance(0.5)
    harness.flush()
    assert link.isRegistered
    assert len(named(events, "Successful transcoder registration orchestrator=")) == 2


def test_refusedHandshakesBackOffThoughEachConnects(tmp_path, events):
    """
    Every attempt reaches the orchestrator but its upgrade is refused (its
    own secret file is unusable: 503): the delays still grow as the backoff
    says, since only a registration resets it (the ClientService's own count
    restarts at every connection, and its own retry line is left out).
    Breaks if the link's retry policy used that count, or if a refused
    handshake reset the backoff.
    """
    clock = MemoryReactorClock()
    orchestratorPath = secretFile(tmp_path, SECRET, "orchestrator")
    os.chmod(orchestratorPath, 0o644)
    harness = Harness(clock=clock, secret=Secret(path=orchestratorPath))
    link = harness.link(Secret(literal=SECRET), backoff=fixedBackoff())
    link.startService()
    harness.flush()
    for _ in range(3):
        clock.advance(retries(events)[-1])
        harness.flush()
    assert retries(events) == [0.5, 0.75, 1.125, 1.6875]
    assert len(named(events, "Could not register transcoder to orchestrator {orchestrator}: {reason}")) == 4
    assert not named(events, "Scheduling retry"), "ClientService's own line counts from the last connection"
    os.chmod(orchestratorPath, 0o600)
    clock.advance(retries(events)[-1])
    harness.flush()
    assert registered(harness) == ["10.0.0.100:40000"] and link.backoff.attempts == 0


def test_unreadableSecretFileRetriesSlowly(tmp_path, events):
    """
    A secret file that cannot be read when an attempt starts fails that
    attempt with one clear error line (no secret, no traceback) and the
    slow delay; once the file is fixed, the next attempt registers. Breaks
    if the secret were read once at start, or if a read error stopped the
    retries.
    """
    path = secretFile(tmp_path, SECRET)
    os.chmod(path, 0o644)
    clock, harness, _ = startedLink(Secret(path=path))
    error, = named(events, "Cannot read the secret: {error}; retrying", LogLevel.error)
    assert "0644" in error["error"] and retries(events) == [30.0]
    assert not named(events, "Registering transcoder to") and registered(harness) == []
    os.chmod(path, 0o600)
    clock.advance(30.0)
    harness.flush()
    assert registered(harness) == ["10.0.0.100:40000"]
    assert not [e for e in events if "log_failure" in e] and SECRET not in repr(events)


def test_zeroCapacityStopsTheTranscoderWithStatus1(events):
    """
    A registration refused for zero capacity is fatal: the transcoder stops
    with status 1 and schedules no retry. Breaks if that refusal were
    classified as a lost connection.
    """
    clock, _, _ = startedLink(capacity=0)
    critical, = named(events, "Terminating transcoder because of {error}", LogLevel.critical)
    assert critical["error"] == wsproto.ZERO_CAPACITY
    assert clock.whenRunningHooks == [(clock.stop, (), {})] and retries(events) == []
    clock.advance(60.0)
    assert len(named(events, "Registering transcoder to")) == 1


def test_drainedLinkDoesNotReconnectUntilStopDraining(events):
    """
    A registered link that drains closes its connection cleanly once idle
    and makes no further attempt, however long it waits; stopDraining
    connects again at once and registers. Breaks if the end of a drained
    connection were taken for a lost one (a retry), or if stopDraining did
    not restart the connection.
    """
    _, harness, link = startedLink()
    link.startDraining()
    harness.advance(1.0)
    assert link.isDrained() and registered(harness) == []
    assert named(events, "Unregistered from {orchestrator} while draining; not reconnecting")
    assert any("code=4003 reason=transcoder draining" in text for text in texts(events))
    harness.advance(120.0, step=10.0)
    assert retries(events) == [] and len(named(events, "Registering transcoder to")) == 1
    link.stopDraining()
    harness.flush()
    assert registered(harness) == ["10.0.0.100:40000"] and not link.isDrained()


def test_drainWhileWaitingToRetryCancelsTheRetry(events):
    """
    A drain that starts while the link waits to retry (the orchestrator
    unreachable) cancels the retry and is complete at once; stopDraining
    tries again at once. Breaks if a pending retry outlived the drain.
    """
    clock, harness, link = startedLink(reachable=False)
    assert retries(events) == [0.5]
    link.startDraining()
    assert link.isDrained() and not clock.getDelayedCalls()
    clock.advance(60.0)
    assert len(named(events, "Registering transcoder to")) == 1
    harness.reachable = True
    link.stopDraining()
    harness.flush()
    assert registered(harness) == ["10.0.0.100:40000"]


def test_stopServiceDuringAPendingRetry(events):
    """
    Stopping the link while it waits to retry cancels the retry: no attempt
    follows, and nothing is left on the clock. Breaks if the stop left the
    ClientService's retry scheduled.
    """
    clock, harness, link = startedLink(reachable=False)
    clock.advance(0.5)
    assert retries(events) == [0.5, 0.75]
    stopped = link.stopService()
    assert outcome(stopped) is None and not clock.getDelayedCalls()
    harness.reachable = True
    clock.advance(60.0)
    assert len(named(events, "Registering transcoder to")) == 2 and registered(harness) == []


def test_stopServiceClosesTheConnectionWithoutReconnecting(events):
    """
    Stopping a registered link says goodbye with 4003 and does not
    reconnect. Breaks if the stop dropped the connection without its close
    frame or if the end of that connection scheduled a retry.
    """
    _, harness, link = startedLink()
    link.stopService()
    harness.advance(10.0)
    assert registered(harness) == [] and link.protocol is None and retries(events) == []
    assert any("code=4003 reason=transcoder shutting down" in text for text in texts(events))
    assert len(named(events, "Registering transcoder to")) == 1


def test_secretChangedDoesNothingUnlessWaiting(tmp_path, events):
    """
    A reload that changes the secret file while the link is registered
    leaves the connection alone (the new secret is used from the next
    attempt). Breaks if secretChanged restarted a live connection.
    """
    path = secretFile(tmp_path, SECRET)
    _, harness, link = startedLink(Secret.fromOption(path))
    rewrite(path, "not-the-secret")
    link.secretChanged()
    harness.flush()
    assert registered(harness) == ["10.0.0.100:40000"] and link.isRegistered
    assert not named(events, "Secret changed; reconnecting") and len(named(events, "Registering transcoder to")) == 1


def test_drainOrStopDuringATCPConnectCancelsItQuietly(events):
    """
    A drain, or a stop, while the real TLS-over-TCP endpoint is still
    connecting cancels that attempt without a failure line or a retry, and
    the drain is complete at once. Breaks if the cancelled connect were
    taken for an unreachable orchestrator (a warning and a retry).
    """
    for end in ("startDraining", "stopService"):
        reactor = MemoryReactorClock()
        link = OrchestratorLink(reactor, "127.0.0.1", 18935, Secret(literal=SECRET),
                                optionsForClientTLS("orch.example"), TranscodeWorker(None, 1), 1)
        link.startService()
        assert [client[:2] for client in reactor.tcpClients] == [("127.0.0.1", 18935)]
        getattr(link, end)()
        reactor.advance(60.0)
        assert link.isDrained() and len(reactor.tcpClients) == 1
    assert not named(events, "Could not register transcoder") and retries(events) == []


def test_drainDuringTheOpeningHandshakeClosesWith4003(events):
    """
    A drain that starts while the WebSocket is being opened lets it open,
    then closes it with 4003 without registering, and does not reconnect.
    Breaks if the drain dropped the half-open connection instead (no
    WebSocket close), or if that close were followed by a retry.
    """
    clock = MemoryReactorClock()
    harness = Harness(clock=clock)
    link = harness.link(Secret(literal=SECRET), backoff=fixedBackoff())
    link.startService()
    link.startDraining()
    harness.advance(1.0)
    assert link.isDrained() and registered(harness) == [] and retries(events) == []
    assert named(events, "Unregistered from {orchestrator} while draining; not reconnecting")
    client = harness.pumps[0].client
    assert (client.localCloseCode, client.wasClean) == (wsproto.CLOSE_SHUTDOWN, True)


def test_sessionsSpreadByRegisteredCapacityAndStayOnTheirTranscoder(events):
    """
    Three links registering capacities 1, 2 and 3 through the gate get
    exactly that many of six streams, every later segment of a stream goes
    to the transcoder of its first, and a seventh stream is refused with
    OrchestratorCapped. Breaks if the capacity a transcoder registers with
    is lost on its way to the pool, if sessions are not sticky, or if the
    session limit does not follow the registered capacities.
    """
    harness = Harness(clock=MemoryReactorClock())
    for n, capacity in enumerate((1, 2, 3), 1):
        harness.link(Secret(literal=SECRET), capacity=capacity, host=f"10.0.0.{n}").startService()
    harness.flush()

    def send(stream, seq):
        d = harness.app.dispatcher.transcode(SegmentJob(stream, seq, SEGMENT, PROFILES, 2000))
        harness.flush()
        return outcome(d)

    first = {f"stream-{i}": send(f"stream-{i}", 0).transcoder for i in range(6)}
    assert sorted(first.values()) == ["10.0.0.1:40000"] + ["10.0.0.2:40000"] * 2 + ["10.0.0.3:40000"] * 3
    for seq in (1, 2):
        assert {stream: send(stream, seq).transcoder for stream in first} == first
    assert {t.address: t.load for t in harness.app.pool.transcoders} == {
        "10.0.0.1:40000": 1, "10.0.0.2:40000": 2, "10.0.0.3:40000": 3}
    refused = send("stream-6", 0)
    assert refused.check(TranscodeFailed) and str(refused.value) == "OrchestratorCapped"
