"""
Blocking clients for end-to-end tests against real C{twistd} nodes: a gateway
C{POST /segment}, the C{livepeer-tx push} command, and a raw WebSocket client
that can send what a well-behaved library never would.
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

from eth_utils import keccak

from livepeer_tx.profiles import PRESETS
from livepeer_tx.proto import lp_rpc_pb2 as pb

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tlsContext(orchestrator):
    """
    An SSL context trusting the orchestrator's self-signed certificate.
    """
    return ssl.create_default_context(cafile=orchestrator.certPath)


def segmentHeader(body, seq=0, manifestId=b"stream-a", profiles=("P240p30fps16x9",), durationMs=2000, hash=None):
    """
    A go-livepeer C{Livepeer-Segment} header value.
    """
    segData = pb.SegData(
        manifestId=manifestId, seq=seq, hash=keccak(body) if hash is None else hash, profiles=b"invalid",
        duration=durationMs,
    )
    segData.fullProfiles.extend(PRESETS[name].toProto() for name in profiles)
    return base64.b64encode(segData.SerializeToString()).decode("ascii")


def postSegment(orchestrator, body, headers=None, timeout=60, **segmentOptions):
    """
    C{POST /segment} and return C{(status, bodyBytes)}.
    """
    connection = http.client.HTTPSConnection(
        orchestrator.host, orchestrator.port, context=tlsContext(orchestrator), timeout=timeout)
    allHeaders = {"Livepeer-Segment": segmentHeader(body, **segmentOptions), "Livepeer-Payment": "",
                  "Content-Type": "video/MP2T"}
    allHeaders.update(headers or {})
    try:
        connection.request("POST", "/segment", body=body, headers=allHeaders)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


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
