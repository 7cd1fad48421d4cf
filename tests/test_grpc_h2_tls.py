"""
gRPC and HTTP on one real TLS port: tests/grpc_h2_server.py runs in its own
process (its own reactor) and grpcio, http.client, curl and an C{h2} socket
client talk to it.
"""

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from livepeer_tx.proto import lp_rpc_pb2 as pb

SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpc_h2_server.py")
TRANSCODE = "/test.Lab/Transcode"
WATCH = "/test.Lab/Watch"
MIB = 1024 * 1024


class LabServer:
    """
    The server process, its port and its certificate.
    """

    def __init__(self, process, port, certPath):
        self.process = process
        self.port = port
        self.certPath = certPath
        with open(certPath, "rb") as f:
            self.certPEM = f.read()
        self.target = f"127.0.0.1:{port}"

    def channel(self, **options):
        credentials = grpc.ssl_channel_credentials(root_certificates=self.certPEM)
        return grpc.secure_channel(self.target, credentials, options=list(options.items()))

    def tlsContext(self, alpn=None):
        context = ssl.create_default_context(cadata=self.certPEM.decode())
        if alpn:
            context.set_alpn_protocols(alpn)
        return context

    def connect(self, alpn=None):
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        return self.tlsContext(alpn).wrap_socket(raw, server_hostname="127.0.0.1")

    def cancelled(self, count=0):
        """
        The status codes of cancelled calls, once there are C{count} of them.
        """
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.tlsContext(), timeout=30)
        connection.request("GET", f"/cancelled?count={count}")
        return json.loads(connection.getresponse().read())


# Under xdist (run.sh: --dist loadgroup) the module runs on one worker, so its server starts once.
pytestmark = pytest.mark.xdist_group("test_grpc_h2_tls.lab")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    dataDir = tmp_path_factory.mktemp("grpc-tls")
    stderrPath = dataDir / "server.err"
    with open(stderrPath, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, SERVER_SCRIPT, str(dataDir)], stdout=subprocess.PIPE, stderr=stderr,
        )
    try:
        line = process.stdout.readline().decode()
        if not line.startswith("listening "):
            process.wait(10)
            pytest.fail(f"the test server did not start: {stderrPath.read_text()}")
        yield LabServer(process, int(line.split()[1]), str(dataDir / "cert.pem"))
    finally:
        process.terminate()
        process.wait(30)


def unary(channel, path=TRANSCODE):
    return channel.unary_unary(path, request_serializer=pb.SegData.SerializeToString,
                               response_deserializer=pb.TranscodeResult.FromString)


def streaming(channel, path=WATCH):
    return channel.unary_stream(path, request_serializer=pb.SegData.SerializeToString,
                                response_deserializer=pb.TranscodeResult.FromString)


def test_alpnOffersH2ThenHttp11(lab):
    """
    A client offering h2 gets h2; one offering only http/1.1 gets that.
    """
    with lab.connect(["h2", "http/1.1"]) as tls:
        assert tls.selected_alpn_protocol() == "h2"
    with lab.connect(["http/1.1"]) as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"


def test_grpcioUnaryCall(lab):
    """
    A unary call from grpcio, with a deadline (grpc-timeout) it meets.
    """
    with lab.channel() as channel:
        result = unary(channel)(pb.SegData(seq=5, hash=b"h" * 10), timeout=30)
    assert result.seq == 5 and result.error == "10"


def test_grpcioServerStreamingCall(lab):
    """
    Fifty messages in order, then a clean end.
    """
    with lab.channel() as channel:
        results = list(streaming(channel)(pb.SegData(seq=50), timeout=30))
    assert [r.seq for r in results] == list(range(50))


def test_grpcioSeesStatusAndMessage(lab):
    """
    A deliberate refusal arrives as UNKNOWN with its text; an unknown method
    as UNIMPLEMENTED.
    """
    with lab.channel() as channel:
        with pytest.raises(grpc.RpcError) as refused:
            unary(channel)(pb.SegData(manifestId=b"refuse"), timeout=30)
        with pytest.raises(grpc.RpcError) as unknown:
            unary(channel, "/test.Lab/Nope")(pb.SegData(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNKNOWN and refused.value.details() == "invalid secret"
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert unknown.value.details() == "unknown method Nope for service test.Lab"


def test_grpcioMessagesOfSeveralMib(lab):
    """
    A 3 MiB request and a 6 MiB response pass the flow-control windows; a
    5 MiB request is over the 4 MiB limit.
    """
    with lab.channel(**{"grpc.max_receive_message_length": 16 * MIB}) as channel:
        assert unary(channel)(pb.SegData(hash=b"r" * (3 * MIB)), timeout=60).error == str(3 * MIB)
        big = unary(channel)(pb.SegData(manifestId=b"big", seq=6 * MIB), timeout=60)
        assert len(big.error) == 6 * MIB
        with pytest.raises(grpc.RpcError) as oversized:
            unary(channel)(pb.SegData(hash=b"o" * (5 * MIB)), timeout=60)
    assert oversized.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in oversized.value.details()


def test_grpcioDeadlineAndCancelReachTheHandler(lab):
    """
    A stream past its deadline ends DEADLINE_EXCEEDED, and a stream the client
    cancels is cancelled: both times the server's handler learns of it.
    """
    before = len(lab.cancelled())
    with lab.channel() as channel:
        late = streaming(channel)(pb.SegData(manifestId=b"wait", seq=1), timeout=1)
        with pytest.raises(grpc.RpcError) as expired:
            list(late)
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        codes = lab.cancelled(before + 1)
        assert set(codes[before:]) <= {1, 4}
        cancelled = streaming(channel)(pb.SegData(manifestId=b"wait", seq=1))
        assert next(cancelled).seq == 0
        cancelled.cancel()
        assert lab.cancelled(before + 2)[before + 1] == 1


def test_grpcioHundredConcurrentCallsOnOneChannel(lab):
    """
    A hundred unary calls and ten streams at once on one connection.
    """
    with lab.channel() as channel:
        calls = [unary(channel).future(pb.SegData(seq=n), timeout=60) for n in range(100)]
        streams = [streaming(channel)(pb.SegData(seq=20), timeout=60) for _ in range(10)]
        assert [call.result().seq for call in calls] == list(range(100))
        assert all([r.seq for r in stream] == list(range(20)) for stream in streams)


def test_http11OnTheSamePort(lab):
    """
    http.client (no ALPN) is served HTTP/1.1 by the same resources.
    """
    connection = http.client.HTTPSConnection("127.0.0.1", lab.port, context=lab.tlsContext(), timeout=30)
    connection.request("GET", "/hello")
    response = connection.getresponse()
    assert response.status == 200 and response.version == 11
    assert response.read() == b"hello over HTTP/1.1"


def test_http11RefusalOnTheSamePort(lab):
    """
    A declared body over the limit is answered 413 on HTTP/1.1 before it is sent.
    """
    with lab.connect(["http/1.1"]) as tls:
        tls.sendall(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 * MIB))
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b"request body of 2097152 bytes is larger than 1048576 bytes\n")


def h2Request(lab, method, path, body=None):
    """
    One HTTP/2 request with the C{h2} library over a TLS socket.

    @return: C{(status, body)}.
    """
    with lab.connect(["h2"]) as tls:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        headers = [(b":method", method), (b":scheme", b"https"), (b":authority", b"127.0.0.1"), (b":path", path)]
        if body is not None:
            headers.append((b"content-length", b"%d" % len(body)))
        conn.send_headers(1, headers, end_stream=body is None)
        tls.sendall(conn.data_to_send())
        status, data, sent, done = None, b"", 0, False
        while not done:
            while body is not None and sent < len(body) and status is None:
                window = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                conn.send_data(1, body[sent:sent + window], end_stream=sent + window >= len(body))
                sent += window
            tls.sendall(conn.data_to_send())
            for event in conn.receive_data(tls.recv(65536)):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done = status is not None
            tls.sendall(conn.data_to_send())
    return status, data


def curlRequest(lab, tmp_path, path, body=None, version="--http2"):
    """
    One request with curl; C{(status, HTTP version, body)}.
    """
    argv = ["curl", "-sS", version, "--cacert", lab.certPath, "-o", str(tmp_path / "body"),
            "-w", "%{http_code} %{http_version}", f"https://127.0.0.1:{lab.port}{path}"]
    if body is not None:
        (tmp_path / "upload").write_bytes(body)
        argv += ["--data-binary", f"@{tmp_path / 'upload'}", "-H", "Content-Type: application/octet-stream"]
    completed = subprocess.run(argv, capture_output=True, timeout=60, check=True)
    code, httpVersion = completed.stdout.decode().split()
    return int(code), httpVersion, (tmp_path / "body").read_bytes()


def test_http2RequestReachesTheResource(lab, tmp_path):
    """
    A non-gRPC HTTP/2 request is served by the Site's resource (curl --http2
    when curl is installed, else an h2 client), and an HTTP/2 body over the
    limit is refused with 413 while the connection survives.
    """
    if shutil.which("curl"):
        assert curlRequest(lab, tmp_path, "/hello") == (200, "2", b"hello over HTTP/2")
        assert curlRequest(lab, tmp_path, "/hello", body=b"p" * 1000) == (200, "2", b"got 1000 bytes")
        status, httpVersion, text = curlRequest(lab, tmp_path, "/hello", body=b"p" * (2 * MIB))
        assert (status, httpVersion) == (413, "2") and b"larger than 1048576 bytes" in text
        assert curlRequest(lab, tmp_path, "/hello", version="--http1.1")[:2] == (200, "1.1")
    assert h2Request(lab, b"GET", b"/hello") == (200, b"hello over HTTP/2")
    status, text = h2Request(lab, b"POST", b"/hello", body=b"q" * (2 * MIB))
    assert status == 413 and text.startswith(b"request body of ")
