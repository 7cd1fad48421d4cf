"""
End-to-end tests: real C{twistd} orchestrators and transcoders on loopback,
real TLS, real WebSockets and real FFmpeg.

The checks that leave a node as they found it share one orchestrator and
one transcoder (L{sharedNodes}); those that crash, restart, signal or
configure a node start their own. Routing and secret handling are tested in
memory (C{test_routing}, C{test_memory_link}, C{test_tap_wiring}).
"""

import os
import re
import threading
import time
import urllib.request

import pytest

from e2e import getOrchestrator, getURL, mintToken, postSegment, push, transcodeResult
from livepeer_tx.profiles import PRESETS
from localnodes import LocalNodes, gatedFFmpeg
from media import ffprobePath, probe

REGISTERED = r"Successful transcoder registration transcoder=127\.0\.0\.1:\d+ capacity={}"
SHARED_CAPACITY = 4  # room for the sessions the tests open, which stay until their idle timeout
SHARED_MAX_SEGMENT = 4_000_000  # above any segment the tests push as valid

# Under xdist (run.sh: --dist loadgroup) the tests on the shared nodes run on one worker, so one set starts.
shared = pytest.mark.xdist_group("test_e2e.sharedNodes")


@pytest.fixture(scope="module")
def sharedNodes(tmp_path_factory):
    """
    The module's L{LocalNodes} with one orchestrator (C{--monitor},
    C{--maxSegmentSize} L{SHARED_MAX_SEGMENT}, every session open to the
    one gateway address) and one transcoder of capacity
    L{SHARED_CAPACITY}, registered. Tests using it leave both running with
    that one transcoder; each opens at most one session.

    @return: C{(nodes, orchestrator, transcoder)}.
    """
    with LocalNodes(str(tmp_path_factory.mktemp("shared-nodes")), forkNodes=True) as nodes:
        orchestrator = nodes.startOrchestrator(
            monitor=True, maxSegmentSize=SHARED_MAX_SEGMENT, maxSessionsPerAddress=SHARED_CAPACITY)
        transcoder = nodes.startTranscoder(orchestrator, maxSessions=SHARED_CAPACITY)
        orchestrator.waitForTranscoders(1)
        yield nodes, orchestrator, transcoder



def transcoderThatStarted(transcoders, timeout=30):
    """
    The transcoder whose log shows it started a segment.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = next((t for t in transcoders if "Transcoding taskId=" in t.logText()), None)
        if started is not None:
            return started
        time.sleep(0.02)
    raise AssertionError("no transcoder started the segment")


@shared
def test_registrationTranscodeAndRenditions(sharedNodes, clip4s, tmp_path):
    """
    A transcoder registers with its capacity, a clip pushed through the
    orchestrator comes back as renditions of the right size, frame count and
    duration, and the reported pixels are the frames really encoded.
    """
    _, orchestrator, _ = sharedNodes
    orchestrator.waitForLog(
        r"Got a RegisterTranscoder request from transcoder=127\.0\.0\.1:\d+ capacity=%d" % SHARED_CAPACITY)
    orchestrator.waitForLog(REGISTERED.format(SHARED_CAPACITY))
    out = str(tmp_path / "out")
    document, status = push(orchestrator, clip4s, out=out)
    assert status == 0, document
    segments = document["segments"]
    assert len(segments) == 2 and all(s["ok"] for s in segments)
    if ffprobePath() is None:
        pytest.skip("ffprobe is not installed: renditions cannot be probed")
    for segment in segments:
        for rendition in segment["renditions"]:
            path = os.path.join(out, rendition["profile"], f"{segment['seq']}.ts")
            info = probe(path)
            expected = PRESETS[rendition["profile"]].outputSize(640, 360)
            assert (info["width"], info["height"]) == expected
            assert abs(info["duration"] - segment["durationMs"] / 1000) < 0.15
            assert abs(info["frames"] - segment["durationMs"] / 1000 * 30) <= 1
            assert rendition["pixels"] == info["frames"] * info["width"] * info["height"]
            assert info["audio"]


@shared
def test_statusIsPublicSafeAndMetrics(sharedNodes):
    """
    The public /status tells capacity but no secret and no transcoder
    addresses; the CLI /status lists transcoders; /metrics uses go-livepeer's names,
    adds the process's own metrics, and keeps only the samples asked for
    with C{name[]}.
    """
    _, orchestrator, _ = sharedNodes
    status, body = getURL(orchestrator, f"{orchestrator.publicUrl}/status")
    assert status == 200
    text = body.decode()
    with open(orchestrator.secretPath) as f:
        secret = f.read().strip()
    assert secret not in text and "127.0.0.1:" not in text
    assert f'"TotalCapacity": {SHARED_CAPACITY}' in text
    full = orchestrator.cliStatus()
    assert full["transcoders"][0]["capacity"] == SHARED_CAPACITY and full["transcoders"][0]["version"]
    host, port = orchestrator.cliAddr.split(":")
    metrics = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    assert re.search(r"^livepeer_transcoders_number 1\.0$", metrics, re.M)
    assert re.search(rf"^livepeer_transcoders_capacity {SHARED_CAPACITY}\.0$", metrics, re.M)
    assert re.search(r"^python_info\{", metrics, re.M) and re.search(r"^process_start_time_seconds ", metrics, re.M)
    only = urllib.request.urlopen(f"http://{host}:{port}/metrics?name[]=livepeer_transcoders_number",
                                  timeout=5).read().decode()
    assert re.search(r"^livepeer_transcoders_number 1\.0$", only, re.M)
    assert "livepeer_transcoders_capacity" not in only and "python_info" not in only
    assert secret not in orchestrator.logText()


@shared
def test_publicPortNegotiatesH2ThenHttp11(sharedNodes):
    """
    The public port offers h2 first in ALPN (gRPC and stock gateways), and
    HTTP/1.1 to clients that offer only that (our WebSocket transcoders) or
    no ALPN at all (plain HTTP/1.1 then).
    """
    import socket
    import ssl

    _, orchestrator, _ = sharedNodes
    for offered, chosen in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1"), (None, None)):
        context = ssl.create_default_context(cafile=orchestrator.certPath)
        if offered:
            context.set_alpn_protocols(offered)
        with socket.create_connection((orchestrator.host, orchestrator.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=orchestrator.host) as tls:
                assert tls.selected_alpn_protocol() == chosen
                if chosen != "h2":
                    tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n")
                    assert tls.recv(4096).startswith(b"HTTP/1.1 200 ")



def test_transcoderKilledMidSegment(nodes, tinySegment, tmp_path):
    """
    A transcoder killed while it holds a segment: the segment is transcoded
    by the other transcoder and the gateway gets its renditions.
    """
    ffmpeg, gate = gatedFFmpeg(str(tmp_path))
    orchestrator = nodes.startOrchestrator()
    transcoders = [nodes.startTranscoder(orchestrator, maxSessions=1, ffmpeg=ffmpeg) for _ in range(2)]
    orchestrator.waitForTranscoders(2)
    open(gate, "w").close()  # FFmpeg runs wait from now on
    outcome = {}

    def send():
        outcome["response"] = postSegment(orchestrator, tinySegment, manifestId=b"victim", durationMs=1000,
                                          profiles=("P360p30fps16x9", "P240p30fps16x9"))

    sender = threading.Thread(target=send)
    sender.start()
    victim = transcoderThatStarted(transcoders)
    victim.kill()
    os.remove(gate)
    sender.join(60)
    status, body = outcome["response"]
    result = transcodeResult(body)
    assert status == 200 and result.WhichOneof("result") == "data", result
    assert len(result.data.segments) == 2
    orchestrator.waitForLog(r"manifestID=victim sessionID=\w+ seqNo=0 attempts=2")
    survivor = next(t for t in transcoders if t is not victim)
    assert survivor.running and "Transcoding taskId=" in survivor.logText()


def test_orchestratorRestartTranscodersComeBack(nodes, tinySegment):
    """
    After an orchestrator restart, transcoders reconnect by themselves (the
    certificate is kept, so the pinned fingerprint still matches), and a
    gateway's auth token from before the restart is still good (its key is
    kept in the data directory).
    """
    orchestrator = nodes.startOrchestrator()
    transcoder = nodes.startTranscoder(orchestrator, maxSessions=2)
    orchestrator.waitForTranscoders(1)
    fingerprint = orchestrator.fingerprint
    tokenBefore = getOrchestrator(orchestrator).auth_token
    orchestrator.stop()
    transcoder.waitForLog(r"Unregistering transcoder: orchestrator shutting down \(code 4003\)")
    orchestrator.restart()
    nodes.waitUntilReady(orchestrator)
    assert orchestrator.fingerprint == fingerprint
    orchestrator.waitForTranscoders(1, timeout=30)
    status, body = postSegment(orchestrator, tinySegment, manifestId=b"after-restart", authToken=tokenBefore,
                               durationMs=1000)
    assert status == 200 and transcodeResult(body).WhichOneof("result") == "data"
    assert transcodeResult(body).info.auth_token.session_id == tokenBefore.session_id
    assert transcoder.running


@shared
def test_badGatewayInput(sharedNodes, tinySegment):
    """
    Malformed headers, a wrong hash, an oversized body and a bad payment get
    go-livepeer's status codes; the orchestrator keeps serving. (Without a
    transcoder, the gateway's error is C{test_ingress.test_noTranscoders}
    and C{test_orchservice.test_getOrchestratorWithoutTranscoders}.)
    """
    _, orchestrator, _ = sharedNodes
    token = mintToken(orchestrator)
    status, body = postSegment(orchestrator, tinySegment, headers={"Livepeer-Segment": ""})
    assert status == 403 and b"ErrorSegEncoding" in body
    status, body = postSegment(orchestrator, tinySegment, headers={"Livepeer-Segment": "%%%not base64"})
    assert (status, body.strip()) == (403, b"ErrorSegEncoding")
    status, body = postSegment(orchestrator, tinySegment, headers={"Livepeer-Segment": "AAAA////"})
    assert status == 403
    status, body = postSegment(orchestrator, tinySegment, authToken=token, hash=b"\x00" * 32)
    assert (status, body.strip()) == (403, b"Forbidden")
    status, body = postSegment(orchestrator, tinySegment, authToken=token,
                               headers={"Livepeer-Payment": "!!notbase64"})
    assert status == 402
    status, body = postSegment(orchestrator, b"\x47" * (SHARED_MAX_SEGMENT + 100), authToken=token)
    assert status == 413
    status, body = postSegment(orchestrator, tinySegment, authToken=token, durationMs=1000)
    assert status == 200 and transcodeResult(body).WhichOneof("result") == "data"
    assert orchestrator.running



def makeCertificateChain(directory):
    """
    A root CA, an intermediate CA and a leaf for 127.0.0.1/localhost, as an
    operator would have: returns C{(fullchainPath, keyPath, rootPath)}.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def make(name, issuerName, issuerKey, ca, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuerName or name)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(issuerKey or key, hashes.SHA256())

    rootKey, root = make("Test Root", None, None, True)
    midKey, mid = make("Test Intermediate", "Test Root", rootKey, True)
    leafKey, leaf = make("127.0.0.1", "Test Intermediate", midKey, False,
                         [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    pem = serialization.Encoding.PEM
    paths = [os.path.join(directory, n) for n in ("fullchain.pem", "leaf.key", "root.pem")]
    with open(paths[0], "wb") as f:
        f.write(leaf.public_bytes(pem) + mid.public_bytes(pem))
    with open(paths[1], "wb") as f:
        f.write(leafKey.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(paths[1], 0o600)
    with open(paths[2], "wb") as f:
        f.write(root.public_bytes(pem))
    return paths


def test_operatorCertificateChainVerifiedByCa(nodes, tmp_path):
    """
    With an operator's chain (leaf + intermediate), a transcoder that trusts
    only the root CA verifies the orchestrator, host name included.
    """
    fullchain, key, root = makeCertificateChain(str(tmp_path))
    orchestrator = nodes.startOrchestrator(tlsCert=fullchain, tlsKey=key, wait=False)
    orchestrator.waitForPort(orchestrator.port)
    transcoder = nodes.startTranscoder(orchestrator, orchCertFingerprint=None, orchCert=root, wait=False)
    orchestrator.waitForLog(REGISTERED.format(1))
    assert transcoder.running


@shared
def test_untrustedCertificateIsRefused(sharedNodes):
    """
    By default a transcoder verifies the orchestrator: a self-signed
    certificate it was not told to trust is refused, and it never registers.
    """
    nodes, orchestrator, _ = sharedNodes
    offset = orchestrator.logOffset()
    transcoder = nodes.startTranscoder(orchestrator, orchCertFingerprint="00" * 32)
    try:
        transcoder.waitForLog(r"Could not register transcoder to orchestrator")
        assert "Got a RegisterTranscoder request" not in orchestrator.logText()[offset:]
    finally:
        transcoder.stop()


def ffmpegChildren(node, timeout=30):
    """
    The process ids of C{node}'s children, once it has one (FFmpeg starts
    just after the node logs the task).
    """
    import subprocess

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = subprocess.run(["pgrep", "-P", str(node.pid)], capture_output=True, text=True).stdout.split()
        if children:
            return children
        time.sleep(0.02)
    raise AssertionError("FFmpeg was not running")


def test_transcoderShutdownLeavesNoFfmpegOrFiles(nodes, tinySegment, tmp_path):
    """
    A second SIGTERM while a segment is transcoding (the first one started a
    drain that waits for it): FFmpeg is killed and reaped, the work
    directory is left empty, and the transcoder exits cleanly.
    """
    import signal

    ffmpeg, gate = gatedFFmpeg(str(tmp_path))
    orchestrator = nodes.startOrchestrator()
    transcoder = nodes.startTranscoder(orchestrator, maxSessions=1, ffmpeg=ffmpeg)
    orchestrator.waitForTranscoders(1)
    open(gate, "w").close()  # FFmpeg runs wait from now on
    sender = threading.Thread(target=lambda: postSegment(
        orchestrator, tinySegment, durationMs=1000, profiles=("P720p30fps16x9", "P360p30fps16x9")))
    sender.start()
    transcoder.waitForLog(r"Transcoding taskId=")
    children = ffmpegChildren(transcoder)
    offset = transcoder.logOffset()
    os.kill(transcoder.pid, signal.SIGTERM)
    transcoder.waitForLog(r"Draining \(SIGTERM\): no new work; waiting for 1 segment", since=offset)
    assert transcoder.stop() == 0
    assert "stopping without waiting for the drain" in transcoder.logText()[offset:]
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] != "Z"
        assert not os.path.exists(f"/proc/{pid}")
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(transcoder.dataDir) for f in files]
    assert leftovers == []
    sender.join(30)
