"""
End-to-end tests: real C{twistd} orchestrators and transcoders on loopback,
real TLS, real WebSockets and real FFmpeg.
"""

import os
import re
import threading
import time
import urllib.request

import grpc
import pytest

from e2e import getOrchestrator, getURL, mintToken, postSegment, push, sessionToken, transcodeResult
from livepeer_tx.profiles import PRESETS
from localnodes import gatedFFmpeg
from media import ffprobePath, probe

REGISTERED = r"Successful transcoder registration transcoder=127\.0\.0\.1:\d+ capacity={}"


def transcoderStartupFailure(node, timeout=30):
    """
    Wait for a node to exit and return its exit status.
    """
    node.process.wait(timeout)
    return node.process.returncode



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


def test_registration_transcode_and_renditions(nodes, clip720, tmp_path):
    """
    A transcoder registers with its capacity, a clip pushed through the
    orchestrator comes back as renditions of the right size, frame count and
    duration, and the reported pixels are the frames really encoded.
    """
    orchestrator = nodes.startOrchestrator()
    nodes.startTranscoder(orchestrator, maxSessions=2)
    orchestrator.waitForLog(r"Got a RegisterTranscoder request from transcoder=127\.0\.0\.1:\d+ capacity=2")
    orchestrator.waitForLog(REGISTERED.format(2))
    out = str(tmp_path / "out")
    document, status = push(orchestrator, clip720, out=out)
    assert status == 0, document
    segments = document["segments"]
    assert len(segments) == 2 and all(s["ok"] for s in segments)
    if ffprobePath() is None:
        pytest.skip("ffprobe is not installed: renditions cannot be probed")
    for segment in segments:
        for rendition in segment["renditions"]:
            path = os.path.join(out, rendition["profile"], f"{segment['seq']}.ts")
            info = probe(path)
            expected = PRESETS[rendition["profile"]].outputSize(1280, 720)
            assert (info["width"], info["height"]) == expected
            assert abs(info["duration"] - segment["durationMs"] / 1000) < 0.15
            assert abs(info["frames"] - segment["durationMs"] / 1000 * 30) <= 1
            assert rendition["pixels"] == info["frames"] * info["width"] * info["height"]
            assert info["audio"]


def test_status_is_public_safe_and_metrics(nodes):
    """
    The public /status tells capacity but no secret and no transcoder
    addresses; the CLI /status lists transcoders; /metrics uses go-livepeer's names.
    """
    orchestrator = nodes.startOrchestrator(monitor=True)
    nodes.startTranscoder(orchestrator, maxSessions=3)
    orchestrator.waitForTranscoders(1)
    status, body = getURL(orchestrator, f"{orchestrator.publicUrl}/status")
    assert status == 200
    text = body.decode()
    with open(orchestrator.secretPath) as f:
        secret = f.read().strip()
    assert secret not in text and "127.0.0.1:" not in text
    assert '"TotalCapacity": 3' in text
    full = orchestrator.cliStatus()
    assert full["transcoders"][0]["capacity"] == 3 and full["transcoders"][0]["version"]
    host, port = orchestrator.cliAddr.split(":")
    metrics = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    assert re.search(r"^livepeer_transcoders_number 1\.0$", metrics, re.M)
    assert re.search(r"^livepeer_transcoders_capacity 3\.0$", metrics, re.M)
    assert secret not in orchestrator.logText()


def test_public_port_negotiates_h2_then_http11(nodes):
    """
    The public port offers h2 first in ALPN (gRPC and stock gateways), and
    HTTP/1.1 to clients that offer only that (our WebSocket transcoders) or
    no ALPN at all (plain HTTP/1.1 then).
    """
    import socket
    import ssl

    orchestrator = nodes.startOrchestrator()
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



def test_wrong_literal_secret_exits(nodes):
    """
    A literal wrong secret cannot change, so the transcoder exits non-zero.
    """
    orchestrator = nodes.startOrchestrator()
    transcoder = nodes.startTranscoder(orchestrator, orchSecret="literal-wrong-secret", wait=False)
    assert transcoderStartupFailure(transcoder) == 1
    assert "invalid secret" in transcoder.logText()
    assert "visible in the process list" in transcoder.logText()


def test_unsafe_secret_file_refused(nodes):
    """
    A secret file readable by others is refused at start.
    """
    path = os.path.join(nodes.workDir, "open-secret")
    with open(path, "w") as f:
        f.write("s3cret\n")
    os.chmod(path, 0o644)
    orchestrator = nodes.startOrchestrator(orchSecret=path, wait=False)
    assert transcoderStartupFailure(orchestrator) != 0
    assert "accessible by group or others" in orchestrator.logText()




def test_load_spread_capacity_and_cap(nodes, segment2s):
    """
    Three transcoders of capacity 1, 2 and 3 end up with exactly that many
    sessions for six streams; a seventh stream is refused (OrchestratorCapped).
    All come from one address, so the per-address cap is raised to the limit.
    """
    orchestrator = nodes.startOrchestrator(maxSessionsPerAddress=6)
    for capacity in (1, 2, 3):
        nodes.startTranscoder(orchestrator, maxSessions=capacity)
    orchestrator.waitForTranscoders(3)
    # Seven gateways' streams get sessions while there is room.
    tokens = [sessionToken(orchestrator, f"stream-{i}".encode()) for i in range(7)]
    for i in range(6):
        status, body = postSegment(orchestrator, segment2s, manifestId=f"stream-{i}".encode())
        assert status == 200
        assert transcodeResult(body).WhichOneof("result") == "data"
    loads = {t["capacity"]: t["load"] for t in orchestrator.cliStatus()["transcoders"]}
    assert loads == {1: 1, 2: 2, 3: 3}
    status, body = postSegment(orchestrator, segment2s, manifestId=b"stream-6", authToken=tokens[6])
    assert status == 403 and b"OrchestratorCapped" in body
    with pytest.raises(grpc.RpcError) as refused:
        getOrchestrator(orchestrator)
    assert refused.value.details() == "Invalid orchestrator request: OrchestratorCapped"


def test_session_affinity(nodes, segment2s):
    """
    Every segment of a stream goes to the same transcoder.
    """
    orchestrator = nodes.startOrchestrator()
    nodes.startTranscoder(orchestrator, maxSessions=2)
    nodes.startTranscoder(orchestrator, maxSessions=2)
    orchestrator.waitForTranscoders(2)
    for seq in range(4):
        status, body = postSegment(orchestrator, segment2s, seq=seq, manifestId=b"sticky")
        assert status == 200 and transcodeResult(body).WhichOneof("result") == "data"
    used = set(re.findall(r"from remote transcoder=(\S+) segments=1 manifestID=sticky ", orchestrator.logText()))
    assert len(used) == 1


def test_transcoder_killed_mid_segment(nodes, segment2s, tmp_path):
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
        outcome["response"] = postSegment(
            orchestrator, segment2s, manifestId=b"victim", durationMs=2000,
            profiles=("P720p30fps16x9", "P360p30fps16x9", "P240p30fps16x9"))

    sender = threading.Thread(target=send)
    sender.start()
    victim = transcoderThatStarted(transcoders)
    victim.kill()
    os.remove(gate)
    sender.join(60)
    status, body = outcome["response"]
    result = transcodeResult(body)
    assert status == 200 and result.WhichOneof("result") == "data", result
    assert len(result.data.segments) == 3
    orchestrator.waitForLog(r"manifestID=victim sessionID=\w+ seqNo=0 attempts=2")
    survivor = next(t for t in transcoders if t is not victim)
    assert survivor.running and "Transcoding taskId=" in survivor.logText()


def test_orchestrator_restart_transcoders_come_back(nodes, segment2s):
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
    status, body = postSegment(orchestrator, segment2s, manifestId=b"after-restart", authToken=tokenBefore)
    assert status == 200 and transcodeResult(body).WhichOneof("result") == "data"
    assert transcodeResult(body).info.auth_token.session_id == tokenBefore.session_id
    assert transcoder.running


def test_bad_gateway_input(nodes, segment2s):
    """
    Malformed headers, a wrong hash, an oversized body and a bad payment get
    go-livepeer's status codes; no transcoder means a clear error; the
    orchestrator keeps serving.
    """
    orchestrator = nodes.startOrchestrator(maxSegmentSize=len(segment2s) + 10)
    token = mintToken(orchestrator)
    status, body = postSegment(orchestrator, segment2s, headers={"Livepeer-Segment": ""})
    assert status == 403 and b"ErrorSegEncoding" in body
    status, body = postSegment(orchestrator, segment2s, headers={"Livepeer-Segment": "%%%not base64"})
    assert (status, body.strip()) == (403, b"ErrorSegEncoding")
    status, body = postSegment(orchestrator, segment2s, headers={"Livepeer-Segment": "AAAA////"})
    assert status == 403
    status, body = postSegment(orchestrator, segment2s, authToken=token, hash=b"\x00" * 32)
    assert (status, body.strip()) == (403, b"Forbidden")
    status, body = postSegment(orchestrator, segment2s, authToken=token, headers={"Livepeer-Payment": "!!notbase64"})
    assert status == 402
    status, body = postSegment(orchestrator, segment2s + b"x" * 100, authToken=token)
    assert status == 413
    # GetOrchestrator opens no session without a transcoder; a token it
    # issued earlier (as after a restart) gets go-livepeer's error.
    with pytest.raises(grpc.RpcError) as refused:
        getOrchestrator(orchestrator)
    assert refused.value.details() == "Invalid orchestrator request: no transcoders available"
    status, body = postSegment(orchestrator, segment2s, authToken=token)
    assert status == 200 and transcodeResult(body).error == "no transcoders available"
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


def test_operator_certificate_chain_verified_by_ca(nodes, tmp_path):
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


def test_untrusted_certificate_is_refused(nodes):
    """
    By default a transcoder verifies the orchestrator: a self-signed
    certificate it was not told to trust is refused, and it never registers.
    """
    orchestrator = nodes.startOrchestrator()
    transcoder = nodes.startTranscoder(orchestrator, orchCertFingerprint="00" * 32)
    transcoder.waitForLog(r"Could not register transcoder to orchestrator")
    assert "Got a RegisterTranscoder request" not in orchestrator.logText()


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


def test_transcoder_shutdown_leaves_no_ffmpeg_or_files(nodes, segment2s, tmp_path):
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
        orchestrator, segment2s, durationMs=2000, profiles=("P720p30fps16x9", "P360p30fps16x9")))
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
