"""
Seeded fuzzing of the orchestrator's public port, as a hostile peer would
send: hundreds of malformed HTTP requests and transcoder WebSocket
sessions against a real C{twistd} orchestrator over TLS. Afterwards the
orchestrator must have logged no traceback, hold no more descriptors than
before, and still serve a legitimate gateway and transcoder.

The seed is printed on failure; set C{LIVEPEER_FUZZ_SEED} to replay a run and
C{LIVEPEER_FUZZ_ROUNDS} to run more cases (L{fuzzing.fuzzCases}).
"""

import base64
import json
import os
import random
import socket
import ssl
import struct
import time
from concurrent.futures import ThreadPoolExecutor

from eth_utils import keccak

from e2e import RawWebSocket, assertNewTranscoderServes, tlsContext
from fuzzing import HTTP_BYTES, fuzzCases, mutate
from livepeer_tx.profiles import PRESETS
from livepeer_tx.proto import lp_rpc_pb2 as pb

SEED = int(os.environ.get("LIVEPEER_FUZZ_SEED", "20261201"))
HTTP_CASES = fuzzCases(300)
WEBSOCKET_CASES = fuzzCases(80)
READ_SECONDS = 0.3
TRACEBACK_MARKERS = ("Traceback (most recent call last)", "Unhandled Error", "Unhandled error")


def openDescriptors(pid):
    """
    The number of descriptors process C{pid} holds open.
    """
    return len(os.listdir(f"/proc/{pid}/fd"))


def waitForDescriptors(pid, limit, timeout=30.0):
    """
    Wait until process C{pid} holds at most C{limit} descriptors; return the
    last count seen.
    """
    deadline = time.monotonic() + timeout
    count = openDescriptors(pid)
    while count > limit and time.monotonic() < deadline:
        time.sleep(0.1)
        count = openDescriptors(pid)
    return count


def validSegData(rng, body):
    """
    A go-livepeer C{SegData} for C{body}, with random but plausible fields.
    """
    segData = pb.SegData(
        manifestId=rng.choice([b"fuzz", b"stream-a", bytes(rng.getrandbits(8) for _ in range(rng.randrange(40)))]),
        seq=rng.choice([0, 1, -1, 2**62, -(2**63)]), hash=keccak(body),
        duration=rng.choice([0, 2000, -1, 300_000, 300_001, 2**31 - 1]),
    )
    for _ in range(rng.choice([0, 1, 2, 3, 40])):
        profile = rng.choice(list(PRESETS.values())).toProto()
        if rng.random() < 0.3:
            profile.width = rng.choice([0, 1, 4096, 65535, 2**31 - 1])
        if rng.random() < 0.2:
            profile.fpsDen = rng.choice([0, 2**32 - 1])
        if rng.random() < 0.2:
            profile.name = rng.choice(["", "a/b", "x\nInjected: 1", "..", "é" * 300])
        segData.fullProfiles.append(profile)
    return segData.SerializeToString()


def httpCase(rng):
    """
    One hostile request, as raw bytes.
    """
    body = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 188, 2000])))
    segment = validSegData(rng, body)
    segmentHeader = base64.b64encode(segment)
    if rng.random() < 0.2:
        segmentHeader = mutate(rng, segmentHeader, HTTP_BYTES)
    method = rng.choice([b"POST", b"GET", b"PUT", b"OPTIONS", b"POST" * 50, b"G\x00T", b""])
    path = rng.choice([b"/segment", b"/segment", b"/stream/fuzz/P240p30fps16x9/0.ts", b"/stream/../../etc/passwd",
                       b"/status", b"/healthz", b"/transcoder", b"/" + b"a" * 5000, b"/%00", b"*"])
    version = rng.choice([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 extra", b""])
    headers = [
        b"Host: orchestrator",
        b"Livepeer-Segment: " + segmentHeader,
        b"Livepeer-Payment: " + rng.choice([b"", b"!!", base64.b64encode(os.urandom(rng.randrange(64)))]),
    ]
    length = rng.choice([len(body), len(body), len(body) + 10, 0, -1, 2**64, None])
    if length is not None:
        headers.append(b"Content-Length: " + str(length).encode() + rng.choice([b"", b"", b" ", b",5", b"x"]))
    if rng.random() < 0.1:
        headers.append(b"Transfer-Encoding: chunked")
        body = rng.choice([b"zz\r\n" + body, b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n", b"ffffffffffff\r\n"])
    if rng.random() < 0.15:
        headers.insert(rng.randrange(len(headers) + 1), rng.choice([b"no colon here", b":", b"X" * 20000 + b": y"]))
    if rng.random() < 0.1:
        headers.append(b"Connection: close")
    request = method + b" " + path + b" " + version + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body
    if rng.random() < 0.1:
        request += rng.choice([b"GET /status HTTP/1.1\r\n\r\n", b"\x00" * rng.randrange(40_000)])
    if rng.random() < 0.25:
        request = mutate(rng, request, HTTP_BYTES)
    if rng.random() < 0.1:
        request = request[: rng.randrange(len(request) + 1)]
    return request


def sendRaw(orchestrator, context, data):
    """
    Send C{data} on a fresh TLS connection, read briefly, close.
    """
    try:
        raw = socket.create_connection((orchestrator.host, orchestrator.port), timeout=5)
        with context.wrap_socket(raw, server_hostname=orchestrator.host) as sock:
            sock.sendall(data)
            sock.settimeout(READ_SECONDS)
            try:
                while sock.recv(65536):
                    pass
            except (socket.timeout, ssl.SSLError, OSError):
                pass
    except (ssl.SSLError, OSError):
        pass


def websocketCase(rng, orchestrator, secret):
    """
    One transcoder session that goes wrong somewhere: bad headers, or a
    registration followed by hostile frames.
    """
    headers = {"Credentials": secret, "Livepeer-Capacity": rng.choice(["1", "1", "0", "-1", "99999999999", "x"])}
    if rng.random() < 0.1:
        headers["Credentials"] = rng.choice(["", "guess", secret + "x"])
    try:
        client = RawWebSocket(orchestrator, headers, timeout=5)
    except (ssl.SSLError, OSError):
        return
    try:
        client.sock.settimeout(READ_SECONDS)
        if client.status != 101:
            return
        if rng.random() < 0.8:
            client.sendText(json.dumps({"type": "register", "capacity": int(headers["Livepeer-Capacity"])
                                        if headers["Livepeer-Capacity"].lstrip("-").isdigit() else 1,
                                        "devices": [], "version": "fuzz"}))
        for _ in range(rng.randrange(1, 5)):
            sendHostileFrame(rng, client)
        client.recvUntilClose(limit=5)
    except (ssl.SSLError, OSError):
        pass
    finally:
        client.close()


def sendHostileFrame(rng, client):
    """
    One frame a well-behaved library would never send.
    """
    kind = rng.randrange(7)
    if kind == 0:
        header = {"type": rng.choice(["result", "error", "register", "nope", 5]), "taskId": rng.choice([1, -1, "1", None]),
                  "renditions": [{"name": "P240p30fps16x9", "pixels": rng.choice([-(10**12), 2**70, 1.5, "1", True]),
                                  "frames": 1}], "sizes": [rng.randrange(100)]}
        headerBytes = json.dumps(header).encode()
        payload = struct.pack(">I", len(headerBytes)) + headerBytes + os.urandom(rng.randrange(100))
        client.sendFrame(0x2, payload)
    elif kind == 1:
        client.sendText(b"[" * 100_000 + b"]" * 100_000)
    elif kind == 2:
        client.sendText(mutate(rng, json.dumps({"type": "error", "taskId": 1, "error": "x"}).encode(), HTTP_BYTES))
    elif kind == 3:
        client.sendFrame(rng.choice([0x0, 0x3, 0x7, 0xB, 0xF]), os.urandom(rng.randrange(20)))
    elif kind == 4:
        client.sendFrame(0x1, b'{"type":"error"', fin=False)
        client.sendFrame(0x0, os.urandom(rng.randrange(200)), fin=rng.random() < 0.5)
    elif kind == 5:
        client.sendFrame(0x1, os.urandom(rng.randrange(50)), mask=rng.random() < 0.5, rsv=rng.randrange(8))
    else:
        payload = struct.pack(">I", rng.choice([0, 3, 2**31, 256 * 1024])) + os.urandom(rng.randrange(64))
        client.sendFrame(0x2, payload)


def test_fuzzedHttpAndTranscoderInput(nodes, segment2s):
    """
    Hundreds of seeded hostile inputs (more with LIVEPEER_FUZZ_ROUNDS)
    leave no traceback and no leaked descriptor, and the node still
    registers a transcoder and transcodes.
    """
    orchestrator = nodes.startOrchestrator()
    with open(nodes.secretPath) as f:
        secret = f.read().strip()
    context = tlsContext(orchestrator)
    context.check_hostname = False
    baseline = openDescriptors(orchestrator.pid)
    rng = random.Random(SEED)
    httpInputs = [httpCase(rng) for _ in range(HTTP_CASES)]
    websocketSeeds = [rng.getrandbits(32) for _ in range(WEBSOCKET_CASES)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda data: sendRaw(orchestrator, context, data), httpInputs))
        list(pool.map(lambda seed: websocketCase(random.Random(seed), orchestrator, secret), websocketSeeds))

    settled = waitForDescriptors(orchestrator.pid, baseline + 4)
    assert settled <= baseline + 4, f"seed {SEED}: {settled} descriptors open, {baseline} before the fuzzing"
    log = orchestrator.logText()
    tracebacks = sum(log.count(marker) for marker in TRACEBACK_MARKERS)
    assert tracebacks == 0, f"seed {SEED}: {tracebacks} tracebacks logged:\n{orchestrator.logTail(60)}"
    assert orchestrator.running

    assertNewTranscoderServes(nodes, orchestrator, segment2s, b"after-fuzz")
