"""
Seeded fuzzing of the transcoder's side of the WebSocket: a hostile (or
broken) orchestrator sends malformed frames and messages to the real
transcoder protocol, link and worker, in memory (L{memorywire}). The
transcoder must log no failure, keep nothing of a closed connection, and a
fresh connection must still register and transcode.

The seed is printed on failure; set C{LIVEPEER_FUZZ_SEED} to replay a run and
C{LIVEPEER_FUZZ_ROUNDS} to run more cases (L{fuzzing.fuzzCases}).
"""

import json
import os
import random
import re
import struct

import pytest

from fuzzing import JSON_BYTES, fuzzCases, mutate
from livepeer_tx import wsproto
from livepeer_tx.profiles import PRESETS, Profile, ProfileError
from memorywire import Harness, events, outcome  # noqa: F401 (events is a fixture)

SEED = int(os.environ.get("LIVEPEER_FUZZ_SEED", "20261202"))
CASES = fuzzCases(300)
MESSAGES_PER_CASE = 4


def serverFrame(opcode, payload, fin=True, rsv=0, mask=False):
    """
    One WebSocket frame as a server writes it (unmasked unless told).
    """
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    maskBit = 0x80 if mask else 0
    if length < 126:
        header = struct.pack("!BB", first, maskBit | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, maskBit | 126, length)
    else:
        header = struct.pack("!BBQ", first, maskBit | 127, length)
    if mask:
        key = b"\x05\x06\x07\x08"
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        header += key
    return header + payload


def oddValue(rng):
    """
    A JSON value of a type or range a field should not have.
    """
    return rng.choice([None, True, -1, 0, 2**63, -(2**70), 1.5, 1e308, "", "x" * 300, "1", [], {}, [1], {"a": 1}])


def hostileProfile(rng):
    """
    A profile dictionary, sometimes with a field missing or odd.
    """
    profile = rng.choice(list(PRESETS.values())).toDict()
    for _ in range(rng.randrange(3)):
        key = rng.choice(list(profile) + ["extra"])
        if rng.random() < 0.2:
            profile.pop(key, None)
        else:
            profile[key] = oddValue(rng)
    if rng.random() < 0.1:
        profile = oddValue(rng)
    return profile


def transcodeHeader(rng):
    """
    A C{transcode} media header with some fields made hostile.
    """
    header = {"type": "transcode", "taskId": rng.randrange(1, 5), "sessionId": "fuzz", "seq": 0,
              "profiles": [hostileProfile(rng) for _ in range(rng.choice([0, 1, 2, 40]))]}
    for _ in range(rng.randrange(3)):
        header[rng.choice(["taskId", "sessionId", "seq", "profiles", "type"])] = oddValue(rng)
    return header


def media(header, parts, sizes=None, rng=None):
    """
    A binary message: header length, header (with C{sizes}), parts. Given
    C{rng}, some numbers in the header may become ones that overflow a
    float (C{1e999}), which C{json.dumps} never writes.
    """
    header = dict(header, sizes=[len(p) for p in parts] if sizes is None else sizes)
    headerBytes = json.dumps(header).encode()
    if rng is not None and rng.random() < 0.2:
        headerBytes = re.sub(rb"(?<=: )\d+", lambda m: b"1e999" if rng.random() < 0.3 else m.group(), headerBytes)
    return struct.pack(">I", len(headerBytes)) + headerBytes + b"".join(parts)


def hostileMessage(rng):
    """
    The bytes of one hostile frame (or a few) from the orchestrator.
    """
    kind = rng.randrange(10)
    if kind == 0:
        return serverFrame(0x2, media(transcodeHeader(rng), [os.urandom(rng.randrange(200))], rng=rng))
    if kind == 1:
        parts = [os.urandom(rng.randrange(50)) for _ in range(rng.randrange(3))]
        sizes = rng.choice([None, [-1], [2**64], [1, 2, 3], ["1"], "x"])
        return serverFrame(0x2, media({"type": rng.choice(["transcode", "cancel", "nope", 7])}, parts, sizes))
    if kind == 2:
        control = {"type": rng.choice(["registered", "refused", "cancel", "endSession", "drainAck", "error",
                                       "transcode", "result", "nope", 3, None])}
        for field in rng.sample(["taskId", "sessionId", "error", "features", "capacity"], rng.randrange(4)):
            control[field] = oddValue(rng)
        text = json.dumps(control).encode()
        return serverFrame(0x1, mutate(rng, text, JSON_BYTES) if rng.random() < 0.4 else text)
    if kind == 3:
        depth = rng.choice([17, 1000, 100_000])
        nested = b"[" * depth + b"]" * depth
        if rng.random() < 0.5:
            return serverFrame(0x1, nested)
        return serverFrame(0x2, struct.pack(">I", len(nested)) + nested)
    if kind == 4:
        return serverFrame(0x2, struct.pack(">I", rng.choice([0, 3, 2**31, 2**32 - 1, 64 * 1024 + 1]))
                           + os.urandom(rng.randrange(64)))
    if kind == 5:
        return serverFrame(rng.choice([0x3, 0x7, 0xB, 0xF]), os.urandom(rng.randrange(20)))
    if kind == 6:
        return (serverFrame(0x1, b'{"type":"error"', fin=False)
                + serverFrame(rng.choice([0x0, 0x1, 0x2]), os.urandom(rng.randrange(200)), fin=rng.random() < 0.5))
    if kind == 7:
        return serverFrame(rng.choice([0x1, 0x2]), os.urandom(rng.randrange(50)),
                           rsv=rng.randrange(8), mask=rng.random() < 0.5)
    if kind == 8:
        return rng.choice([serverFrame(0x9, os.urandom(rng.choice([0, 125, 126]))),
                           serverFrame(0x8, struct.pack("!H", rng.choice([0, 999, 1005, 4002, 65535]))
                                       + os.urandom(rng.randrange(10))),
                           serverFrame(0x8, b"\x03"),
                           serverFrame(0xA, b"", fin=False)])
    return os.urandom(rng.randrange(1, 300))


def test_fuzzedOrchestratorMessagesToTheTranscoder(events):
    """
    Hundreds of seeded sessions of hostile orchestrator frames: no failure
    is logged, every connection ends with its buffers dropped and no task
    left running, and a fresh transcoder still registers and transcodes.
    """
    harness = Harness()
    rng = random.Random(SEED)
    fuzzed = []
    for case in range(CASES):
        transcoder = harness.connect()
        fuzzed.append(transcoder)
        for _ in range(rng.randrange(1, MESSAGES_PER_CASE + 1)):
            transcoder.server.transport.write(hostileMessage(rng))
            harness.flush()
        harness.advance(1.0, step=0.5)
        transcoder.client.transport.loseConnection()
        harness.flush()
        harness.transcoders.remove(transcoder)

    failures = [e for e in events if "log_failure" in e or e["log_level"].name == "critical"]
    assert not failures, f"seed {SEED}: {len(failures)} failures logged, first: {failures[0]}"
    for transcoder in fuzzed:
        assert transcoder.client.transport.disconnected
        assert transcoder.client.message_data is None and transcoder.client.data == b""
        assert transcoder.link.worker.running == 0
    assert harness.app.pool.transcoders == []

    legitimate = harness.connect()
    assert legitimate.address in harness.live
    result = outcome(harness.transcode())
    assert not isinstance(result, Exception) and not hasattr(result, "value"), result
    assert len(result.renditions) == 2


def test_numbersThatOverflowAFloatAreAProtocolError():
    """
    C{1e999} parses to infinity, which no integer field can take: it is
    refused with the message, whoever sent it, and a profile holding one is
    a profile error, not an C{OverflowError}.
    """
    for text in (b'{"type": "transcode", "seq": 1e999}', b'{"type": "result", "pixels": -1e999}'):
        with pytest.raises(wsproto.ProtocolError, match="overflows a float"):
            wsproto.decodeControl(text)
    profile = dict(PRESETS["P240p30fps16x9"].toDict(), width=float("inf"))
    with pytest.raises(ProfileError):
        Profile.fromDict(profile)
