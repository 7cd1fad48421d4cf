"""
Seeded fuzzing of the public port's HTTP/2 side in memory, as the daemon
assembles it (L{test_public_port.Port}): gRPC calls of both services
(C{net.Orchestrator} for gateways, C{net.Transcoder} for stock transcoders)
with mangled messages, C{/segment} and C{/transcodeResults} over HTTP/2 with
mangled headers and bodies, and byte-level damage to the frames themselves.
Afterwards no failure is logged, no connection, stream, timer, registered
transcoder or reserved upload byte is left over, and a gateway is still
served.

The seed is printed on failure; set C{LIVEPEER_FUZZ_SEED} to replay a run and
C{LIVEPEER_FUZZ_ROUNDS} to run more cases (L{fuzzing.fuzzCases}).
"""

import os
import random

import h2.events
import h2.exceptions
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from e2e import segmentHeader, transcodeResult
from fuzzing import JSON_BYTES, fuzzCases, mutate
from livepeer_tx.orchestrator.dispatch import Rendition
from livepeer_tx.orchestrator.grpctranscoders import REGISTER_TRANSCODER
from livepeer_tx.orchestrator.orchservice import END_TRANSCODING_SESSION, GET_ORCHESTRATOR, PING
from livepeer_tx.proto import lp_rpc_pb2 as pb
from livepeer_tx.rpc.wire import frameMessage
from memorywire import events  # noqa: F401 (a fixture)
from test_grpc_transcoders import multipart, resultHeaders
from test_public_port import SECRET, Port, getOrchestrator

SEED = int(os.environ.get("LIVEPEER_FUZZ_SEED", "20261203"))
CASES = fuzzCases(250)


def grpcRequest(rng):
    """
    A gRPC call's path and request bytes (framed, sometimes wrongly).
    """
    path, message = rng.choice([
        (GET_ORCHESTRATOR, pb.OrchestratorRequest(address=os.urandom(rng.choice([0, 20, 64])))),
        (REGISTER_TRANSCODER, pb.RegisterRequest(secret=rng.choice([SECRET, "", "guess"]),
                                                 capacity=rng.choice([0, 1, -1, 2**31 - 1]))),
        (END_TRANSCODING_SESSION, pb.EndTranscodingSessionRequest()),
        (PING, pb.PingPong(value=os.urandom(rng.randrange(40)))),
        ("/net.Nope/Nothing", pb.PingPong()),
    ])
    payload = message.SerializeToString()
    if rng.random() < 0.3:
        payload = mutate(rng, payload, JSON_BYTES)
    framed = frameMessage(payload)
    if rng.random() < 0.2:
        framed = rng.choice([framed[: rng.randrange(len(framed) + 1)], framed + framed, b"\x01" + framed[1:],
                             b"\x00\xff\xff\xff\xff", b"\x00\x00\x3f\xff\xff" + os.urandom(100)])
    return path, framed


def httpRequest(rng):
    """
    A C{/segment}, C{/transcodeResults} or other request: path, headers, body.
    """
    body = os.urandom(rng.choice([0, 10, 700, 5000]))
    kind = rng.randrange(3)
    if kind == 0:
        header = segmentHeader(body, seq=rng.choice([0, -1, 2**62]))
        if rng.random() < 0.3:
            header = mutate(rng, header.encode(), JSON_BYTES).decode("latin-1")
        headers = [(b"livepeer-segment", header.encode("latin-1")), (b"livepeer-payment", b"")]
        return b"/segment", headers, body
    if kind == 1:
        data = os.urandom(rng.randrange(300))
        parts = [([("Content-Length", rng.choice([len(data), len(data) + 5, -1])), ("Content-Type", "video/mp2t"),
                   ("Pixels", rng.choice([1000, -5, 2**70, "x"]))], data)]
        body = multipart(parts)
        if rng.random() < 0.4:
            body = mutate(rng, body, JSON_BYTES)
        headers = [(k.lower().encode(), v.encode()) for k, v in resultHeaders(
            rng.choice([1, 0, -1]), pixels=rng.choice([1, -1, 2**70]), secret=rng.choice([SECRET, "guess"]))]
        return b"/transcodeResults", headers, body
    return rng.choice([b"/status", b"/healthz", b"/stream/x/y.ts", b"/%00", b"/" + b"a" * 3000]), [], body


def sendCase(rng, client):
    """
    Queue a few streams' worth of hostile requests on C{client}'s h2
    connection (nothing is delivered yet).
    """
    for _ in range(rng.randrange(1, 4)):
        try:
            if rng.random() < 0.5:
                path, framed = grpcRequest(rng)
                streamID = client.start(path, contentType=rng.choice(
                    [b"application/grpc", b"application/grpc", b"application/grpc+proto", b"application/grpc+json"]))
                client.conn.send_data(streamID, framed[:16_000], end_stream=rng.random() < 0.8)
            else:
                path, headers, body = httpRequest(rng)
                streamID = client.conn.get_next_available_stream_id()
                length = rng.choice([len(body), len(body), len(body) + 100, None])
                request = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"o"), (b":path", path)]
                if length is not None:
                    request.append((b"content-length", b"%d" % length))
                client.conn.send_headers(streamID, request + headers, end_stream=not body)
                if body:
                    client.conn.send_data(streamID, body[:16_000], end_stream=rng.random() < 0.8)
            if rng.random() < 0.1:
                client.conn.reset_stream(streamID)
        except h2.exceptions.H2Error:
            return


def deliver(rng, client, corrupt):
    """
    Move bytes both ways until quiet, corrupting what the client sends when
    told; the client stops reading once the server's answer no longer fits
    its own (corrupted) view of the connection.
    """
    readable = True
    for _ in range(200):
        outbound = client.conn.data_to_send()
        if outbound:
            client.protocol.dataReceived(mutate(rng, outbound, JSON_BYTES) if corrupt else outbound)
        client.clock.advance(0)
        inbound = client.transport.value()
        client.transport.clear()
        if inbound and readable:
            try:
                for event in client.conn.receive_data(inbound):
                    if isinstance(event, h2.events.DataReceived):
                        client.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            except h2.exceptions.H2Error:
                readable = False
        if not outbound and not inbound:
            return


def test_fuzzedHttp2AndGrpcOnThePublicPort(events):
    """
    Hundreds of seeded hostile HTTP/2 connections leave no failure logged and
    nothing held, and a gateway is then served over HTTP/2.
    """
    port = Port()
    budget = port.site.uploadBudget
    rng = random.Random(SEED)
    timersBefore = len(port.clock.getDelayedCalls())
    for case in range(CASES):
        client = port.client()
        sendCase(rng, client)
        deliver(rng, client, corrupt=rng.random() < 0.3)
        port.clock.advance(rng.choice([0, 1, 30]))
        deliver(rng, client, corrupt=False)
        client.protocol.connectionLost(Failure(ConnectionDone()))

    failures = [e for e in events if "log_failure" in e or e["log_level"].name == "critical"]
    assert not failures, f"seed {SEED}: {len(failures)} failures logged, first: {failures[0]}"
    assert budget.held == 0, f"seed {SEED}: {budget.held} upload bytes still reserved"
    assert port.app.pool.transcoders == [], f"seed {SEED}: transcoders of closed connections still registered"
    port.clock.advance(0)
    leftover = [c for c in port.clock.getDelayedCalls() if c.active()]
    assert len(leftover) <= timersBefore, f"seed {SEED}: timers left behind: {leftover}"

    port.addTranscoder()
    client = port.client()
    [info] = getOrchestrator(client).messages(pb.OrchestratorInfo)
    body = b"\x47" * 1880
    headers = [(b"livepeer-segment", segmentHeader(body, seq=1, authToken=info.auth_token).encode()),
               (b"livepeer-payment", b""), (b"content-type", b"video/MP2T")]
    streamID = client.post(b"/segment", headers, body)
    taskId, job = port.link.tasks[-1]
    assert job.data == body
    port.app.dispatcher.taskSucceeded(taskId, [Rendition(job.profiles[0].name, b"R" * 64, pixels=9)], 1)
    client.pump()
    result = transcodeResult(client.response(streamID).data)
    assert not result.error and len(result.data.segments) == 1
