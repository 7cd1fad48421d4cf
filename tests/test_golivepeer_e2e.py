"""
Stock go-livepeer peers against a real orchestrator (twistd, its real public
port): grpcio as a conformance client for gRPC, curl over HTTP/2, a
go-livepeer-style gateway (grpcio GetOrchestrator, then /segment over HTTP/2
with its token) and go-livepeer-style transcoders (tests/golivepeer_transcoder.py)
beside one of our WebSocket transcoders, and hostile input. The tests wait
on log lines and answers, never on sleeps.
"""

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from e2e import (
    HTTP2Client, getOrchestrator, grpcChannel, mintToken, segmentHeader, tlsContext, transcodeResult, unaryMethod,
)
from livepeer_tx.capabilities import MPEG7_SIGNATURE, SEGMENT_SLICING, capabilitiesOf, parseVersion
from localnodes import LocalNodes
from livepeer_tx.orchestrator.grpctranscoders import REGISTER_TRANSCODER
from livepeer_tx.orchestrator.orchservice import END_TRANSCODING_SESSION, GET_ORCHESTRATOR, PING
from livepeer_tx.profiles import PRESETS
from livepeer_tx.proto import lp_rpc_pb2 as pb
from livepeer_tx.rpc.wire import frameMessage
from media import ffprobePath, probe

HERE = os.path.dirname(os.path.abspath(__file__))
PROFILES = ("P240p30fps16x9", "P144p30fps16x9")
REGISTERED = r"Successful transcoder registration transcoder=(127\.0\.0\.1:\d+) capacity={}"
MIB = 1024 * 1024


def registerMethod(channel):
    return channel.unary_stream(REGISTER_TRANSCODER, request_serializer=pb.RegisterRequest.SerializeToString,
                                response_deserializer=pb.NotifySegment.FromString)


class GRPCTranscoder:
    """
    grpcio's C{RegisterTranscoder}, held open in a thread: what a stock
    transcoder's stream receives, without its work.
    """

    def __init__(self, orchestrator, capacity, timeout=None):
        self.channel = grpcChannel(orchestrator)
        self.call = registerMethod(self.channel)(
            pb.RegisterRequest(secret=open(orchestrator.secretPath).read().strip(), capacity=capacity),
            timeout=timeout)
        self.messages = []
        self.error = None
        self.received = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for message in self.call:
                with self.received:
                    self.messages.append(message)
                    self.received.notify_all()
        except grpc.RpcError as e:
            self.error = e
        with self.received:
            self.received.notify_all()

    def waitFor(self, count, timeout=30):
        with self.received:
            assert self.received.wait_for(lambda: len(self.messages) >= count or self.error, timeout)
        return self.messages[:count]

    def close(self):
        self.call.cancel()
        self.thread.join(30)
        self.channel.close()


# Under xdist (run.sh: --dist loadgroup) the module runs on one worker, so its orchestrator starts once.
pytestmark = pytest.mark.xdist_group("test_golivepeer_e2e.port")


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    """
    One orchestrator for the conformance tests; each test leaves its pool empty.
    """
    with LocalNodes(str(tmp_path_factory.mktemp("golivepeer")), forkNodes=True) as nodes:
        yield nodes.startOrchestrator()


@pytest.fixture(scope="session")
def segment(segment2s):
    """
    The suite's 2 s 640x360 30 fps segment (L{segment2s}, made once per
    worker), as bytes.
    """
    return segment2s


def registered(orchestrator, capacity, since):
    return orchestrator.waitForLog(REGISTERED.format(capacity), since=since)


def removed(orchestrator, since):
    return orchestrator.waitForLog(r"eof, removing from live transcoders map", since=since)


def grpcError(call):
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details()


def postInBackground(orchestrator, segment, token, manifestId, **options):
    """
    A gateway's C{POST /segment} over HTTP/2 in a thread of its own; join
    the thread, then read C{outcome["answer"]}.
    """
    outcome = {}

    def post():
        with HTTP2Client(orchestrator) as gateway:
            outcome["answer"] = gateway.postSegment(orchestrator, segment, authToken=token,
                                                    manifestId=manifestId, **options)

    thread = threading.Thread(target=post)
    thread.start()
    return thread, outcome


# gRPC conformance, with grpcio.


def test_grpcioUnaryStreamingAndRefusals(port, segment):
    """
    GetOrchestrator is refused with go-livepeer's words until a transcoder
    registers over RegisterTranscoder (a server stream); then it answers our
    URI, capabilities (semver, 14 and 26 withheld) and a fresh token. Ping
    answers (empty off chain); wrong secret, zero capacity and unknown
    methods get their statuses. A segment posted with the token reaches the
    stream as NotifySegment, its input downloads over HTTP/2, and
    EndTranscodingSession sends the empty-URL teardown.
    """
    with grpcChannel(port) as channel:
        getInfo = unaryMethod(channel, GET_ORCHESTRATOR, pb.OrchestratorRequest, pb.OrchestratorInfo)
        assert grpcError(lambda: getInfo(pb.OrchestratorRequest(), timeout=30)) == (
            grpc.StatusCode.UNKNOWN, "Invalid orchestrator request: no transcoders available")
        register = registerMethod(channel)
        for secret, capacity, words in (("wrong", 1, "invalid secret"), (None, 0, "zero capacity")):
            secret = secret or open(port.secretPath).read().strip()
            assert grpcError(lambda: list(register(pb.RegisterRequest(secret=secret, capacity=capacity),
                                                   timeout=30))) == (grpc.StatusCode.UNKNOWN, words)
        assert grpcError(lambda: unaryMethod(channel, "/net.Orchestrator/Nope", pb.PingPong, pb.PingPong)(
            pb.PingPong(), timeout=30))[0] == grpc.StatusCode.UNIMPLEMENTED
        assert unaryMethod(channel, PING, pb.PingPong, pb.PingPong)(pb.PingPong(value=b"hi"), timeout=30) == (
            pb.PingPong())

        offset = port.logOffset()
        transcoder = GRPCTranscoder(port, capacity=100)
        try:
            registered(port, 100, offset)
            info = getInfo(pb.OrchestratorRequest(), timeout=30)
            assert info.transcoder == port.publicUrl
            assert re.fullmatch(r"[0-9a-f]{8}", info.auth_token.session_id)
            assert abs(info.auth_token.expiration - (time.time() + 1800)) < 60
            offered = capabilitiesOf(info.capabilities.bitstring)
            assert {0, 1, 12} <= offered and not {MPEG7_SIGNATURE, SEGMENT_SLICING} & offered
            assert parseVersion(info.capabilities.version) is not None

            posting, outcome = postInBackground(port, segment, info.auth_token, b"conformance")
            [notify] = transcoder.waitFor(1)
            assert notify.segData.auth_token.session_id == info.auth_token.session_id
            assert notify.url.startswith(f"{port.publicUrl}/stream/{info.auth_token.session_id}/")
            with HTTP2Client(port) as downloader:
                assert downloader.get(notify.url).body == segment
            end = unaryMethod(channel, END_TRANSCODING_SESSION, pb.EndTranscodingSessionRequest,
                              pb.EndTranscodingSessionResponse)
            end(pb.EndTranscodingSessionRequest(auth_token=info.auth_token), timeout=30)
            teardown = transcoder.waitFor(2)[1]
            assert teardown.url == "" and teardown.segData.auth_token.session_id == info.auth_token.session_id
        finally:
            offset = port.logOffset()
            transcoder.close()
            removed(port, offset)
    # Its transcoder gone and no other: the segment gets go-livepeer's error.
    posting.join(60)
    assert transcodeResult(outcome["answer"].body).error == "no transcoders available"


def test_grpcioDeadlineAndCancellationEndRegistrations(port):
    """
    A RegisterTranscoder call whose deadline passes (grpc-timeout), or that
    its client cancels, ends on both sides: the transcoder leaves the pool.
    """
    offset = port.logOffset()
    timed = GRPCTranscoder(port, capacity=2, timeout=2)
    registered(port, 2, offset)
    timed.thread.join(30)
    assert timed.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Whichever comes first: our deadline, or grpcio's RST_STREAM at its own.
    port.waitForLog(r"eof, removing from live transcoders map \(call (DEADLINE_EXCEEDED|CANCELLED)\)",
                    since=offset)
    timed.close()

    offset = port.logOffset()
    cancelled = GRPCTranscoder(port, capacity=3)
    registered(port, 3, offset)
    cancelled.close()
    port.waitForLog(r"eof, removing from live transcoders map \(call CANCELLED\)", since=offset)
    assert port.cliStatus()["RegisteredTranscodersNumber"] == 0


def test_grpcioMessagesOfSeveralMibAndTooLarge(port):
    """
    A 3 MiB request message is served; one over grpc-go's 4 MiB limit gets
    RESOURCE_EXHAUSTED, and the channel goes on.
    """
    with grpcChannel(port) as channel:
        ping = unaryMethod(channel, PING, pb.PingPong, pb.PingPong)
        assert ping(pb.PingPong(value=b"p" * (3 * MIB)), timeout=30) == pb.PingPong()
        code, details = grpcError(lambda: ping(pb.PingPong(value=b"p" * (5 * MIB)), timeout=30))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than" in details
        assert ping(pb.PingPong(value=b"again"), timeout=30) == pb.PingPong()


def test_grpcioHundredConcurrentCallsOnOneConnection(port):
    """
    100 GetOrchestrator calls at once on one channel (one HTTP/2 connection,
    the most streams it allows) each get a session of their own.
    """
    offset = port.logOffset()
    transcoder = GRPCTranscoder(port, capacity=4)
    try:
        registered(port, 4, offset)
        with grpcChannel(port) as channel:
            getInfo = unaryMethod(channel, GET_ORCHESTRATOR, pb.OrchestratorRequest, pb.OrchestratorInfo)
            calls = [getInfo.future(pb.OrchestratorRequest(), timeout=60) for _ in range(100)]
            sessions = {call.result().auth_token.session_id for call in calls}
        assert len(sessions) == 100
    finally:
        offset = port.logOffset()
        transcoder.close()
        removed(port, offset)


# HTTP/2 with curl.


def curl(port, tmp_path, path, *options):
    """
    curl --http2 against the orchestrator; C{(httpVersion, status, body)}.
    """
    out = tmp_path / "curl.out"
    completed = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", port.certPath, "-o", str(out), "-w", "%{http_version} %{http_code}",
         *options, f"{port.publicUrl}{path}"], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    version, status = completed.stdout.split()
    return version, int(status), out.read_bytes()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curlHttp2SegmentStreamAndStatus(port, segment, tmp_path):
    """
    curl --http2 posts a segment with a GetOrchestrator token and gets its
    TranscodeResult, downloads a rendition from /stream, and reads /status,
    all over HTTP/2; a go-livepeer-style transcoder (stand-in renditions)
    does the work.
    """
    offset = port.logOffset()
    transcoder = startGoTranscoder(port, "ok")
    try:
        registered(port, 1, offset)
        info = getOrchestrator(port)
        body = tmp_path / "seg.ts"
        body.write_bytes(segment)
        header = segmentHeader(segment, manifestId=b"curl", authToken=info.auth_token)
        version, status, answer = curl(port, tmp_path, "/segment", "--data-binary", f"@{body}",
                                       "-H", f"Livepeer-Segment: {header}", "-H", "Content-Type: video/MP2T")
        result = transcodeResult(answer)
        assert (version, status, result.WhichOneof("result")) == ("2", 200, "data")
        url = result.data.segments[0].url
        version, status, rendition = curl(port, tmp_path, url.split(port.serviceAddr, 1)[1])
        assert (version, status) == ("2", 200) and rendition.startswith(b"P240p30fps16x9:")
        version, status, document = curl(port, tmp_path, "/status")
        assert (version, status) == ("2", 200) and b'"RegisteredTranscodersNumber": 1' in document
    finally:
        offset = port.logOffset()
        stopProcess(transcoder)
        removed(port, offset)


# Hostile input on the same port.


def rawH2(port):
    context = tlsContext(port)
    context.set_alpn_protocols(["h2"])
    sock = context.wrap_socket(socket.create_connection((port.host, port.port), timeout=30),
                               server_hostname=port.host)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    return sock, conn


def readUntilClosed(sock, conn):
    events = []
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            break
        if not data:
            break
        try:
            events += conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            break
    return events


@pytest.mark.parametrize("garbage", [
    b"\x00\x00\x04\x00\x01\x00\x00\x00\x00abcd",  # DATA on stream 0
    b"\xff\xff\xff\x01\x04\x00\x00\x00\x01" + b"x" * 64,  # a frame far over the size limit
    b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"12345678",  # PING on a stream
])
def test_malformedHttp2FramesEndThatConnectionOnly(port, garbage):
    """
    Frames no HTTP/2 peer may send get GOAWAY and the connection closes;
    another connection is served at once.
    """
    sock, conn = rawH2(port)
    sock.sendall(conn.data_to_send() + garbage)
    events = readUntilClosed(sock, conn)
    sock.close()
    terminated = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert terminated and terminated[0].error_code != h2.errors.ErrorCodes.NO_ERROR
    with grpcChannel(port) as channel:
        assert unaryMethod(channel, PING, pb.PingPong, pb.PingPong)(pb.PingPong(), timeout=30) == pb.PingPong()


@pytest.mark.parametrize("body, code, words", [
    (b"\x00\x00\x00\x00\x0a\x08", 13, "grpc: the request ended inside a message"),
    (frameMessage(b"\xff\xff\xff\xff"), 13, "grpc: error unmarshalling request"),
    (b"\x01" + frameMessage(b"")[1:], 13, "grpc: compressed flag set with identity or empty encoding"),
    (b"\x00\xff\xff\xff\xff", 8, "grpc: received message larger than max"),
])
def test_malformedGrpcMessagesGetAStatus(port, body, code, words):
    """
    A truncated message, undecodable protobuf, a compressed message, a
    length prefix of 4 GiB: each call ends with its gRPC status, and the
    connection serves the next call.
    """
    with HTTP2Client(port) as client:
        headers = [("content-type", "application/grpc"), ("te", "trailers")]
        answer = client.request("POST", GET_ORCHESTRATOR, headers, body)
        trailers = answer.trailers or answer.headers
        assert answer.status == 200 and int(trailers[b"grpc-status"]) == code
        assert words in trailers.get(b"grpc-message", b"").decode()
        ping = client.request("POST", PING, headers, frameMessage(b""))
        assert ping.trailers[b"grpc-status"] == b"0"


def test_badAndExpiredTokensOverHttp2AndStillServing(port, segment):
    """
    Over HTTP/2 a segment without a token, with a forged one and with an
    expired one (made with the orchestrator's own key) get go-livepeer's 403
    texts; a WebSocket-era secret is no token either. The port serves a good
    exchange afterwards, and logged no traceback.
    """
    offset = port.logOffset()
    transcoder = GRPCTranscoder(port, capacity=1)
    try:
        registered(port, 1, offset)
        good = getOrchestrator(port).auth_token
        forged = pb.AuthToken(token=b"\x00" * 32, session_id=good.session_id, expiration=good.expiration)
        expired = mintToken(port, expiration=int(time.time()) - 10)
        with HTTP2Client(port) as gateway:
            answers = []
            for token in (None, forged, expired):
                header = segmentHeader(segment, manifestId=b"hostile", authToken=token)
                answer = gateway.request("POST", "/segment", [("livepeer-segment", header)], segment)
                answers.append((answer.status, answer.body))
            assert answers == [(403, b"missing auth token\n"), (403, b"invalid auth token\n"),
                               (403, b"expired auth token\n")]
            assert transcoder.messages == []
        posting, outcome = postInBackground(port, segment, good, b"hostile")
        assert transcoder.waitFor(1)[0].segData.auth_token.session_id == good.session_id
    finally:
        offset = port.logOffset()
        transcoder.close()
        removed(port, offset)
    posting.join(60)
    assert outcome["answer"].status == 200
    assert "Traceback" not in port.logText()


# A go-livepeer-style gateway and transcoders, beside one of ours.


def startGoTranscoder(orchestrator, mode, capacity=1):
    """
    tests/golivepeer_transcoder.py against C{orchestrator}.
    """
    secret = open(orchestrator.secretPath).read().strip()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE]))
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "golivepeer_transcoder.py"), orchestrator.serviceAddr, secret,
         str(capacity), mode, orchestrator.certPath],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def stopProcess(process):
    if process.poll() is None:
        process.kill()
    process.wait(30)


def readLine(process, prefix):
    for line in process.stdout:
        line = line.decode().strip()
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no {prefix!r} line: {process.stderr.read().decode()[-3000:]}")


def checkRenditions(gateway, result, tmp_path, name):
    """
    Download every rendition of a TranscodeResult over HTTP/2 and probe it.
    """
    assert result.WhichOneof("result") == "data", result.error
    assert len(result.data.segments) == len(PROFILES)
    for profile, segment in zip(PROFILES, result.data.segments):
        answer = gateway.get(segment.url)
        assert answer.status == 200
        path = tmp_path / f"{name}-{profile}.ts"
        path.write_bytes(answer.body)
        info = probe(str(path))
        assert (info["width"], info["height"]) == PRESETS[profile].outputSize(640, 360)
        assert abs(info["frames"] - 60) <= 1
        assert segment.pixels == info["frames"] * info["width"] * info["height"]


@pytest.mark.skipif(ffprobePath() is None, reason="ffprobe is not installed: renditions cannot be probed")
def test_stockGatewayAndTranscodersBesideOurs(nodes, segment, tmp_path):
    """
    A go-livepeer-style gateway asks GetOrchestrator for two sessions and
    posts a segment of each over HTTP/2; the sessions go one to our
    WebSocket transcoder and one to a go-livepeer-style transcoder (gRPC,
    results over HTTP/2), and every rendition probes right. The gateway ends
    its sessions (the stock transcoder is told). Then a stock transcoder
    that takes a segment and is killed loses nothing: the segment is done
    elsewhere.
    """
    # All the gateway's sessions come from one address.
    orchestrator = nodes.startOrchestrator(maxSessionsPerAddress=8)
    nodes.startTranscoder(orchestrator, maxSessions=1)
    goTranscoder = startGoTranscoder(orchestrator, "ffmpeg")
    hanging = None
    try:
        orchestrator.waitForTranscoders(2, timeout=60)
        with HTTP2Client(orchestrator) as gateway:
            tokens = [getOrchestrator(orchestrator).auth_token for _ in range(2)]
            for index, token in enumerate(tokens):
                answer = gateway.postSegment(orchestrator, segment, authToken=token, profiles=PROFILES,
                                             manifestId=b"stock-%d" % index)
                assert answer.status == 200
                result = transcodeResult(answer.body)
                assert result.info.auth_token == token
                checkRenditions(gateway, result, tmp_path, f"s{index}")
        used = set(re.findall(r"from remote transcoder=(\S+) segments=2 ", orchestrator.logText()))
        assert len(used) == 2
        assert readLine(goTranscoder, "posted ").split()[2] == "200"

        with grpcChannel(orchestrator) as channel:
            end = unaryMethod(channel, END_TRANSCODING_SESSION, pb.EndTranscodingSessionRequest,
                              pb.EndTranscodingSessionResponse)
            for token in tokens:
                end(pb.EndTranscodingSessionRequest(auth_token=token), timeout=30)
        assert readLine(goTranscoder, "teardown ").split()[1] in {t.session_id for t in tokens}

        # The most capacity: the next session goes to the hanging transcoder.
        offset = orchestrator.logOffset()
        hanging = startGoTranscoder(orchestrator, "hang", capacity=4)
        registered(orchestrator, 4, offset)
        token = getOrchestrator(orchestrator).auth_token
        posting, outcome = postInBackground(orchestrator, segment, token, b"killed", profiles=PROFILES)
        assert readLine(hanging, "notify ").split()[2].endswith(".tempfile")
        hanging.kill()
        posting.join(60)
        result = transcodeResult(outcome["answer"].body)
        with HTTP2Client(orchestrator) as gateway:
            checkRenditions(gateway, result, tmp_path, "moved")
        orchestrator.waitForLog(r"segments=2 manifestID=killed sessionID=\S+ seqNo=0 attempts=2")
    finally:
        stopProcess(goTranscoder)
        if hanging is not None:
            stopProcess(hanging)
