# -*- test-case-name: tests.test_ingress,tests.test_public_port,tests.test_e2e -*-
"""
Blocking clients for end-to-end tests against real C{twistd} nodes: a gateway
(C{GetOrchestrator} over gRPC with grpcio, then C{POST /segment} with the
session's auth token), the C{livepeer-tx push} command, and a raw WebSocket
client that can send what a well-behaved library never would.
"""

import base64
import http.client
import json
import os
import socket
import ssl
import struct
import subprocess
import sys

import grpc
import h2.config
import h2.connection
import h2.events
from eth_utils import keccak

from livepeer_tx.ethaddress import checksumAddress
from livepeer_tx.orchestrator.authtoken import VALID_SECONDS, AuthTokens, loadOrCreateKey
from livepeer_tx.orchestrator.ingress import flattenSegment
from livepeer_tx.orchestrator.orchservice import GET_ORCHESTRATOR
from livepeer_tx.profiles import PRESETS, profilesFromSegData
from livepeer_tx.proto import lp_rpc_pb2 as pb

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each stream (orchestrator and manifest id) of the tests' gateway keeps the
# session GetOrchestrator gave it, as a stock gateway does.
_SESSIONS = {}


def tlsContext(orchestrator):
    """
    An SSL context trusting the orchestrator's self-signed certificate.
    """
    return ssl.create_default_context(cafile=orchestrator.certPath)


def grpcChannel(orchestrator):
    """
    A grpcio channel to the orchestrator's public port, trusting its
    certificate (use it as a context manager).
    """
    with open(orchestrator.certPath, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel(orchestrator.serviceAddr, credentials)


def unaryMethod(channel, path, requestClass, responseClass):
    """
    A grpcio callable for a unary method.
    """
    return channel.unary_unary(path, request_serializer=requestClass.SerializeToString,
                               response_deserializer=responseClass.FromString)


def getOrchestrator(orchestrator, signer=None, timeout=30):
    """
    C{GetOrchestrator} as a stock gateway asks it: with its address and its
    signature of that address on chain (C{signer}, a
    L{livepeer_tx.chain.identity.NodeSigner}), with neither off chain.

    @return: the C{OrchestratorInfo}.
    @raise grpc.RpcError: it was refused.
    """
    request = pb.OrchestratorRequest()
    if signer is not None:
        request.address = signer.address
        request.sig = signer.sign(checksumAddress(signer.address).encode("ascii"))
    with grpcChannel(orchestrator) as channel:
        return unaryMethod(channel, GET_ORCHESTRATOR, pb.OrchestratorRequest, pb.OrchestratorInfo)(
            request, timeout=timeout)


def sessionToken(orchestrator, manifestId, signer=None):
    """
    The auth token of a stream's session: asked of C{GetOrchestrator} the
    first time, then kept.
    """
    key = (orchestrator.serviceAddr, orchestrator.dataDir, manifestId)
    if key not in _SESSIONS:
        _SESSIONS[key] = getOrchestrator(orchestrator, signer).auth_token
    return _SESSIONS[key]


def mintToken(orchestrator, expiration=None, sessionId=None):
    """
    A token made with the key the orchestrator keeps in its data directory,
    without asking it: for a session it would not open now, or, with
    C{expiration} in the past, an expired one.
    """
    options = {}
    if expiration is not None:
        options["wallClock"] = lambda: expiration - VALID_SECONDS
    if sessionId is not None:
        options["randomBytes"] = lambda count: bytes.fromhex(sessionId)
    return AuthTokens(loadOrCreateKey(orchestrator.dataDir), **options).issue()


def segmentHeader(body, seq=0, manifestId=b"stream-a", profiles=("P240p30fps16x9",), durationMs=2000, hash=None,
                  authToken=None, signer=None):
    """
    A go-livepeer C{Livepeer-Segment} header value, with C{authToken} and,
    given a C{signer}, the gateway's signature of the segment.
    """
    segData = pb.SegData(
        manifestId=manifestId, seq=seq, hash=keccak(body) if hash is None else hash, profiles=b"invalid",
        duration=durationMs,
    )
    segData.fullProfiles.extend(PRESETS[name].toProto() for name in profiles)
    if authToken is not None:
        segData.auth_token.CopyFrom(authToken)
    if signer is not None:
        segData.sig = signer.sign(flattenSegment(segData, profilesFromSegData(segData)))
    return base64.b64encode(segData.SerializeToString()).decode("ascii")


def paymentHeader(signer=None):
    """
    A C{Livepeer-Payment} value: empty off chain; a payment naming the
    gateway (and carrying no ticket) for a C{signer}.
    """
    if signer is None:
        return ""
    return base64.b64encode(pb.Payment(sender=signer.address).SerializeToString()).decode("ascii")


def segmentHeaders(orchestrator, body, authToken=None, signer=None, **segmentOptions):
    """
    The headers of a stock gateway's C{POST /segment}: the session's token
    (asked of C{GetOrchestrator} once per manifest id unless given).
    """
    if authToken is None:
        authToken = sessionToken(orchestrator, segmentOptions.get("manifestId", b"stream-a"), signer)
    return {"Livepeer-Segment": segmentHeader(body, authToken=authToken, signer=signer, **segmentOptions),
            "Livepeer-Payment": paymentHeader(signer), "Content-Type": "video/MP2T"}


def postSegment(orchestrator, body, headers=None, timeout=60, authToken=None, signer=None, **segmentOptions):
    """
    C{POST /segment} over HTTP/1.1 as a gateway does, after C{GetOrchestrator}
    for the stream's session (unless C{headers} give the C{Livepeer-Segment}
    or an C{authToken} is given); return C{(status, bodyBytes)}.
    """
    headers = dict(headers or {})
    if "Livepeer-Segment" in headers:
        allHeaders = {"Livepeer-Payment": paymentHeader(signer), "Content-Type": "video/MP2T"}
    else:
        allHeaders = segmentHeaders(orchestrator, body, authToken, signer, **segmentOptions)
    allHeaders.update(headers)
    connection = http.client.HTTPSConnection(
        orchestrator.host, orchestrator.port, context=tlsContext(orchestrator), timeout=timeout)
    try:
        connection.request("POST", "/segment", body=body, headers=allHeaders)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class HTTP2Response:
    """
    What an L{HTTP2Client} request got: the status, headers, body and
    trailers (empty when none), and the RST_STREAM code if the stream was
    reset.
    """

    def __init__(self):
        self.status = None
        self.headers = {}
        self.body = b""
        self.trailers = {}
        self.reset = None


class HTTP2Client:
    """
    A blocking HTTP/2 client on one TLS connection that offers only C{h2}, as
    go-livepeer's gateway (for C{/segment}) and transcoder (for
    C{/transcodeResults}) do; requests go one after the other on the same
    connection.
    """

    def __init__(self, orchestrator, timeout=60):
        context = tlsContext(orchestrator)
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection((orchestrator.host, orchestrator.port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Go's clients
        self.sock = context.wrap_socket(raw, server_hostname=orchestrator.host)
        if self.sock.selected_alpn_protocol() != "h2":
            raise AssertionError(f"ALPN chose {self.sock.selected_alpn_protocol()!r}, not h2")
        self.authority = orchestrator.serviceAddr.encode()
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.events = []

    def request(self, method, path, headers=(), body=b""):
        """
        Send one request and read its whole response.

        @param headers: C{(name, value)} pairs, as text or bytes.
        @return: an L{HTTP2Response}.
        """
        def raw(value):
            return value if isinstance(value, bytes) else value.encode("latin-1")

        streamID = self.conn.get_next_available_stream_id()
        request = [(b":method", raw(method)), (b":scheme", b"https"), (b":authority", self.authority),
                   (b":path", raw(path))]
        if body or method in ("POST", b"POST"):
            request.append((b"content-length", b"%d" % len(body)))
        self.conn.send_headers(streamID, request + [(raw(k).lower(), raw(v)) for k, v in headers],
                               end_stream=not body)
        response, sent, done = HTTP2Response(), 0, False
        while not done:
            while sent < len(body):
                window = min(self.conn.local_flow_control_window(streamID), self.conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = body[sent:sent + window]
                sent += len(chunk)
                self.conn.send_data(streamID, chunk, end_stream=sent == len(body))
            self.sock.sendall(self.conn.data_to_send())
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the orchestrator closed the connection")
            for event in self.conn.receive_data(data):
                self.events.append(event)
                if getattr(event, "stream_id", None) != streamID:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    response.headers = dict(event.headers)
                    response.status = int(response.headers.pop(b":status"))
                elif isinstance(event, h2.events.DataReceived):
                    response.body += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, streamID)
                elif isinstance(event, h2.events.TrailersReceived):
                    response.trailers = dict(event.headers)
                elif isinstance(event, h2.events.StreamReset):
                    response.reset = event.error_code
                    done = True
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
        self.sock.sendall(self.conn.data_to_send())
        return response

    def postSegment(self, orchestrator, body, authToken=None, signer=None, **segmentOptions):
        """
        C{POST /segment} over this connection as a stock gateway does.
        """
        headers = segmentHeaders(orchestrator, body, authToken, signer, **segmentOptions)
        return self.request("POST", "/segment", list(headers.items()), body)

    def get(self, url):
        """
        GET a URL (or path) of the orchestrator over this connection.
        """
        return self.request("GET", "/" + url.split("://", 1)[-1].split("/", 1)[-1] if "://" in url else url)

    def close(self):
        """
        Close the connection (GOAWAY first).
        """
        try:
            self.conn.close_connection()
            self.sock.sendall(self.conn.data_to_send())
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *excInfo):
        self.close()
        return False


def getURL(orchestrator, url, timeout=30):
    """
    GET a URL on the orchestrator's public port; return C{(status, body)}.
    """
    path = url.split(f":{orchestrator.port}", 1)[-1]
    connection = http.client.HTTPSConnection(
        orchestrator.host, orchestrator.port, context=tlsContext(orchestrator), timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def transcodeResult(body):
    """
    Parse a C{TranscodeResult} body.
    """
    result = pb.TranscodeResult()
    result.ParseFromString(body)
    return result



def assertNewTranscoderServes(nodes, orchestrator, segment, manifestId):
    """
    A transcoder started now registers with C{orchestrator}, and a
    gateway's C{segment} posted under C{manifestId} is transcoded into one
    rendition.
    """
    offset = orchestrator.logOffset()
    nodes.startTranscoder(orchestrator, maxSessions=1)
    orchestrator.waitForLog(r"Successful transcoder registration", since=offset)
    status, body = postSegment(orchestrator, segment, manifestId=manifestId)
    assert status == 200
    result = transcodeResult(body)
    assert not result.error and len(result.data.segments) == 1

def push(orchestrator, path, profiles="P240p30fps16x9,P360p30fps16x9", manifestId=None, out=None,
         concurrency=1, timeout=180):
    """
    Run C{livepeer-tx push --json} and return its JSON document and exit status.
    """
    argv = [sys.executable, "-m", "livepeer_tx.cli", "push", "--orchAddr", orchestrator.serviceAddr,
            "--orchCert", orchestrator.certPath, "--profiles", profiles, "--json",
            "--concurrency", str(concurrency), path]
    if manifestId:
        argv[4:4] = ["--manifestId", manifestId]
    if out:
        argv[4:4] = ["--out", out]
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
    completed = subprocess.run(argv, capture_output=True, timeout=timeout, env=env)
    try:
        document = json.loads(completed.stdout)
    except ValueError:
        raise AssertionError(f"push printed no JSON: {completed.stdout[-2000:]!r} {completed.stderr[-2000:]!r}")
    return document, completed.returncode


class RawWebSocket:
    """
    A hand-rolled WebSocket client over TLS, for malformed input tests.
    """

    def __init__(self, orchestrator, headers, subprotocol="livepeer-tx.v1", timeout=10):
        raw = socket.create_connection((orchestrator.host, orchestrator.port), timeout=timeout)
        self.sock = tlsContext(orchestrator).wrap_socket(raw, server_hostname=orchestrator.host)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET /transcoder HTTP/1.1", f"Host: {orchestrator.serviceAddr}", "Upgrade: websocket",
            "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
        ]
        if subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        headers = dict({"Authorization": "Livepeer-Transcoder-1.0"}, **headers)
        lines += [f"{k}: {v}" for k, v in headers.items() if v is not None]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            response += chunk
        head, _, self._buffer = response.partition(b"\r\n\r\n")
        statusLine = head.split(b"\r\n", 1)[0].decode()
        parts = statusLine.split(" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 else 0
        self.reason = parts[2] if len(parts) > 2 else ""

    def sendFrame(self, opcode, payload, fin=True, mask=True, rsv=0):
        """
        Send one frame, masked like a client must (unless told otherwise).
        """
        first = (0x80 if fin else 0) | (rsv << 4) | opcode
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", first, (0x80 if mask else 0) | length)
        elif length < 65536:
            header = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, length)
        else:
            header = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, length)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            header += key
        self.sock.sendall(header + payload)

    def sendText(self, text):
        """
        Send a text frame.
        """
        self.sendFrame(0x1, text.encode() if isinstance(text, str) else text)

    def recvFrame(self):
        """
        Read one frame: C{(opcode, payload)}; C{(None, b"")} on EOF.
        """
        def need(n):
            while len(self._buffer) < n:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError
                self._buffer += chunk
            data, self._buffer = self._buffer[:n], self._buffer[n:]
            return data

        try:
            first, second = need(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", need(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", need(8))
            return first & 0x0F, need(length)
        except (EOFError, ConnectionError, ssl.SSLError, socket.timeout):
            return None, b""

    def recvUntilClose(self, limit=20):
        """
        Read frames until a close frame or EOF; return them.
        """
        frames = []
        for _ in range(limit):
            opcode, payload = self.recvFrame()
            frames.append((opcode, payload))
            if opcode in (None, 0x8):
                break
        return frames

    def close(self):
        """
        Close the socket.
        """
        try:
            self.sock.close()
        except OSError:
            pass
