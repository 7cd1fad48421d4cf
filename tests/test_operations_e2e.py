"""
Operations end to end, with real C{twistd} processes and signals: reload
(secret rotation with segments in flight, a new TLS pair), signals that
never kill, and drains that lose no segment (a transcoder's SIGTERM while it
holds a segment, the orchestrator's SIGTERM while segments are in flight).

A gateway thread pushes a live stream the way a go-livepeer gateway does:
one segment per segment duration, not as fast as the nodes take them (which
would transcode many more segments than the tests need). A segment refused
before its upload is accepted (503, C{GetOrchestrator} refused, connection
refused or closed before a status line) is sent to the next orchestrator;
anything else that is not renditions, downloaded, counts as lost.
"""

import http.client
import os
import signal
import ssl
import threading
import time

import grpc
from e2e import getURL, postSegment, transcodeResult
from livepeer_tx.tls import certificateFingerprint, createSelfSigned
from localnodes import gatedFFmpeg


def writeAtomically(path, data, mode=0o600):
    """
    Replace a file in one step, as an operator's C{mv} does.
    """
    temporary = f"{path}.new"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


class GatewayStream(threading.Thread):
    """
    One live stream of a gateway, as a go-livepeer gateway sends it: a
    segment (C{body} each time, announced as C{durationMs} long) every
    C{durationMs} until L{finish}, each to the first orchestrator of
    C{orchestrators} that takes it, whose renditions it downloads before the
    next. A segment whose turn comes while the previous one is still on its
    way goes as soon as that one is done, and the turns after it count from
    then: a held segment delays the stream, it leaves no burst behind it.

    @ivar served: per seq, the name of the orchestrator that transcoded it.
    @ivar lost: per seq, what went wrong once the segment was taken.
    @ivar refusals: C{(seq, orchestrator, how)} for each refusal.
    """

    def __init__(self, orchestrators, body, manifestId, durationMs):
        super().__init__(daemon=True)
        self.orchestrators = list(orchestrators)
        self.body = body
        self.manifestId = manifestId
        self.durationMs = durationMs
        self.served = {}
        self.lost = {}
        self.refusals = []
        self._finishing = threading.Event()

    def run(self):
        for seq in range(1000):
            turn = time.monotonic() + self.durationMs / 1000
            self.sendOne(seq)
            # The stream's pace; finish() ends the wait at once.
            if self._finishing.wait(max(0.0, turn - time.monotonic())):
                return

    def finish(self, timeout=60):
        """
        Send no more segments; wait for the one on its way.
        """
        self._finishing.set()
        self.join(timeout)
        assert not self.is_alive()

    def sendOne(self, seq):
        """
        Send segment C{seq} and download its renditions; record the outcome.
        """
        for orchestrator in self.orchestrators:
            if not orchestrator.running:
                continue
            try:
                status, body = postSegment(orchestrator, self.body, seq=seq, manifestId=self.manifestId,
                                           durationMs=self.durationMs)
            except (grpc.RpcError, ConnectionError, http.client.RemoteDisconnected, ssl.SSLEOFError) as e:
                # Refused before the upload was taken: GetOrchestrator said
                # no, nobody listens any more, or the connection closed
                # before a status line (an exiting node's, mid-handshake).
                self.refusals.append((seq, orchestrator.name, type(e).__name__))
                continue
            except Exception as e:
                self.lost[seq] = f"{orchestrator.name}: {e!r}"
                return
            if status == 503 and body.startswith(b"OrchestratorCapped"):
                self.refusals.append((seq, orchestrator.name, "503"))
                continue
            result = transcodeResult(body) if status == 200 else None
            if result is None or result.WhichOneof("result") != "data":
                self.lost[seq] = f"{orchestrator.name}: {status} {result or body!r}"
                return
            for segment in result.data.segments:
                code, data = getURL(orchestrator, segment.url)
                if code != 200 or not data:
                    self.lost[seq] = f"{orchestrator.name}: rendition {segment.url} {code}"
                    return
            self.served[seq] = orchestrator.name
            return
        self.lost[seq] = "no orchestrator took it"


def servedFingerprint(orchestrator):
    """
    The SHA-256 digest of the certificate a new TLS connection is served.
    """
    pem = ssl.get_server_certificate((orchestrator.host, orchestrator.port))
    return certificateFingerprint(pem.encode())


def test_signalsNeverKillAndHupReloadsTheTlsPair(nodes):
    """
    SIGUSR1, SIGUSR2 and SIGHUP leave both daemons running (SIGUSR2 logs a
    status line, SIGHUP a reload summary); after the certificate and key in
    the data directory are replaced, SIGHUP serves the new pair to new
    connections while the transcoder's connection stays up.
    """
    orchestrator = nodes.startOrchestrator()
    transcoder = nodes.startTranscoder(orchestrator)
    orchestrator.waitForTranscoders(1)
    transcoder.waitForLog(r"Successful transcoder registration orchestrator=")
    for node in (orchestrator, transcoder):
        offset = node.logOffset()
        os.kill(node.pid, signal.SIGUSR2)
        node.waitForLog(r"Status: .*draining=no", since=offset)
        os.kill(node.pid, signal.SIGUSR1)
        node.waitForLog(r"Received SIGUSR1", since=offset)
        os.kill(node.pid, signal.SIGHUP)
        node.waitForLog(r"Reloaded \(SIGHUP\): configuration \w[\w ]*, secret unchanged", since=offset)
        assert node.running
    before = servedFingerprint(orchestrator)
    certPEM, keyPEM = createSelfSigned("127.0.0.1")
    writeAtomically(os.path.join(orchestrator.dataDir, "key.pem"), keyPEM)
    writeAtomically(os.path.join(orchestrator.dataDir, "cert.pem"), certPEM, mode=0o644)
    assert servedFingerprint(orchestrator) == before
    offset = orchestrator.logOffset()
    os.kill(orchestrator.pid, signal.SIGHUP)
    orchestrator.waitForLog(r"Reloaded \(SIGHUP\): .*TLS certificate changed", since=offset)
    assert servedFingerprint(orchestrator) == certificateFingerprint(certPEM) != before
    assert len(orchestrator.cliStatus()["transcoders"]) == 1 and transcoder.running
    assert "Unregistering" not in transcoder.logText()


def cliPost(node, path, **fields):
    """
    C{POST} a form to a node's CLI port: C{(status, body)}.
    """
    import urllib.error
    import urllib.parse
    import urllib.request

    data = urllib.parse.urlencode(fields).encode()
    try:
        with urllib.request.urlopen(f"http://{node.cliAddr}{path}", data=data, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_capacityFromTheCliPortAndTheConfiguration(nodes, tmp_path):
    """
    C{maxSessions} changes at run time: on the orchestrator's and the
    transcoder's CLI ports (the transcoder reports it to the orchestrator),
    and from their C{--config} files on SIGHUP.
    """
    orchestratorConfig, transcoderConfig = tmp_path / "orchestrator.conf", tmp_path / "transcoder.conf"
    orchestratorConfig.write_text("maxSessions 5\n")
    transcoderConfig.write_text("maxSessions 2\n")
    orchestrator = nodes.startOrchestrator(config=orchestratorConfig)
    transcoder = nodes.startTranscoder(orchestrator, maxSessions=None, config=transcoderConfig)
    status = orchestrator.waitForTranscoders(1)
    assert status["MaxSessions"] == 5 and status["transcoders"][0]["capacity"] == 2

    assert cliPost(orchestrator, "/setMaxSessions", maxSessions="auto")[0] == 200
    assert orchestrator.cliStatus()["SessionLimit"] == 2
    assert cliPost(orchestrator, "/setMaxSessions", maxSessions="zero") == (
        400, b"maxSessions must be 'auto' or a whole number from 1 to 999999999, not 'zero'\n")
    assert cliPost(transcoder, "/setMaxSessions", maxSessions="3") == (200, b"maxSessions set to 3\n")
    orchestrator.waitForLog(r"changed its capacity from 2 to 3")
    assert orchestrator.cliStatus()["transcoders"][0]["capacity"] == 3
    assert transcoder.cliStatus()["MaxSessions"] == 3

    offsets = orchestrator.logOffset(), transcoder.logOffset()
    orchestratorConfig.write_text("maxSessions 7\n")
    transcoderConfig.write_text("maxSessions 4\n")
    os.kill(orchestrator.pid, signal.SIGHUP)
    os.kill(transcoder.pid, signal.SIGHUP)
    orchestrator.waitForLog(r"Reloaded \(SIGHUP\): configuration changed", since=offsets[0])
    transcoder.waitForLog(r"Reloaded \(SIGHUP\): configuration changed", since=offsets[1])
    orchestrator.waitForLog(r"changed its capacity from 3 to 4", since=offsets[0])
    status = orchestrator.cliStatus()
    assert status["MaxSessions"] == 7 and status["transcoders"][0]["capacity"] == 4
    assert transcoder.cliStatus()["MaxSessions"] == 4


def test_secretRotationWithThreeTranscodersAndSegmentsInFlight(nodes, tinySegment, tmp_path):
    """
    The orchestrator's secret file is rotated and reloaded while a live
    stream's segment is held in flight on one of three transcoders (a gated
    FFmpeg); their own files are updated and reloaded after. With a grace
    period the stale transcoders are replaced one at a time while the stream
    flows: the one holding the segment is retired with it in flight and
    closed once it is answered, each is closed with 4004, reconnects with the
    new secret and registers again, and no segment is lost.
    """
    orchestrator = nodes.startOrchestrator(secretRotationGrace=120)
    ffmpeg, gate = gatedFFmpeg(str(tmp_path))
    transcoders = []
    for index in range(3):
        secretFile = os.path.join(nodes.workDir, f"transcoder-{index}.secret")
        writeAtomically(secretFile, open(orchestrator.secretPath).read())
        transcoders.append(nodes.startTranscoder(orchestrator, maxSessions=1, orchSecret=secretFile, ffmpeg=ffmpeg))
        transcoders[-1].secretFile = secretFile
        orchestrator.waitForTranscoders(index + 1)
    open(gate, "w").close()
    stream = GatewayStream([orchestrator], tinySegment, b"rotation", durationMs=1000)
    stream.start()
    # All three are idle and alike: the stream's session goes to the first
    # that registered, which the rotation retires first.
    transcoders[0].waitForLog(r"Transcoding taskId=\S+ sessionID=\S+ seqNo=0")

    newSecret = os.urandom(24).hex()
    offset = orchestrator.logOffset()
    offsets = [t.logOffset() for t in transcoders]
    writeAtomically(orchestrator.secretPath, newSecret + "\n")
    os.kill(orchestrator.pid, signal.SIGHUP)
    orchestrator.waitForLog(r"Reloaded \(SIGHUP\): .*secret changed \(3 transcoder\(s\) with the old one\)",
                            since=offset)
    orchestrator.waitForLog(r"Retiring transcoder=\S+: its secret is no longer valid; 1 segment\(s\) in flight on it",
                            since=offset)
    os.remove(gate)
    for transcoder in transcoders:
        writeAtomically(transcoder.secretFile, newSecret + "\n")
        os.kill(transcoder.pid, signal.SIGHUP)
    orchestrator.waitForLog(r"Every transcoder with the old secret is gone", since=offset, timeout=90)
    for transcoder, since in zip(transcoders, offsets):
        transcoder.waitForLog(r"Reloaded \(SIGHUP\): configuration \w[\w ]*, secret changed", since=since)
    for transcoder, since in zip(transcoders, offsets):
        transcoder.waitForLog(
            r"The orchestrator no longer accepts the secret we registered with[\s\S]*Successful transcoder "
            r"registration", since=since)
    # Each stale transcoder either was closed by the orchestrator or left on
    # its own after its reload; either way all three registered again.
    assert orchestrator.logText()[offset:].count("Successful transcoder registration") >= 3
    status = orchestrator.waitForTranscoders(3)
    assert all(t["retiring"] is None for t in status["transcoders"])
    served = len(stream.served)
    orchestrator.waitForLog(rf"Successfully received results .* seqNo={served + 2} ")
    stream.finish()
    assert stream.lost == {} and stream.refusals == []
    assert len(stream.served) > served + 2
    logged = orchestrator.logText() + "".join(t.logText() for t in transcoders)
    assert newSecret not in logged


def test_drainsLoseNoSegment(nodes, tinySegment, tmp_path):
    """
    A transcoder's SIGTERM while it holds a segment: it tells the
    orchestrator, finishes the segment, closes and exits 0; its stream moves
    to the other transcoder. The orchestrator's SIGTERM while a segment is
    in flight: C{/healthz} turns 503, new segments get 503 and go to another
    orchestrator, the segment in flight is answered and its renditions
    downloaded, then it exits 0. No segment is lost.
    """
    first = nodes.startOrchestrator(drainTimeout=60, maxSessionsPerAddress=8)
    fallback = nodes.startOrchestrator(maxSessionsPerAddress=8)
    wrappers = [gatedFFmpeg(str(tmp_path), f"t{i}") for i in range(2)]
    leaving = nodes.startTranscoder(first, maxSessions=2, ffmpeg=wrappers[0][0])
    first.waitForTranscoders(1)
    staying = nodes.startTranscoder(first, maxSessions=2, ffmpeg=wrappers[1][0])
    first.waitForTranscoders(2)
    nodes.startTranscoder(fallback, maxSessions=2)
    fallback.waitForTranscoders(1)

    # The transcoder's drain.
    open(wrappers[0][1], "w").close()
    streams = [GatewayStream([first, fallback], tinySegment, name, durationMs=1000)
               for name in (b"stream-a", b"stream-b")]
    streams[0].start()
    leaving.waitForLog(r"Transcoding taskId=")
    streams[1].start()
    staying.waitForLog(r"Transcoding done for taskId=")
    os.kill(leaving.pid, signal.SIGTERM)
    leaving.waitForLog(r"Draining \(SIGTERM\): no new work; waiting for 1 segment\(s\) in progress")
    first.waitForLog(r"Transcoder=127\.0\.0\.1:\d+ is draining")
    os.remove(wrappers[0][1])
    assert leaving.process.wait(30) == 0
    log = leaving.logText()
    drainStart = log.index("Draining (SIGTERM)")
    assert "Transcoding done for taskId=" in log[drainStart:] and "Transcoding cancelled" not in log
    assert "Drained: closing the connection" in log[drainStart:]
    first.waitForLog(r"eof, removing from live transcoders map \(code=4003 reason=transcoder draining\)")

    # The orchestrator's drain.
    open(wrappers[1][1], "w").close()
    offset = staying.logOffset()
    staying.waitForLog(r"Transcoding taskId=", since=offset)
    os.kill(first.pid, signal.SIGTERM)
    first.waitForLog(r"Draining \(SIGTERM\): no new work; waiting for [12] segment\(s\) in flight")
    assert getURL(first, "/healthz") == (503, b'{"Draining": true}\n')
    assert postSegment(first, tinySegment, seq=10_000, manifestId=b"stream-a", durationMs=1000) == (
        503, b"OrchestratorCapped\n")
    os.remove(wrappers[1][1])
    assert first.process.wait(60) == 0
    assert "Drained in" in first.logText() and "Drain timed out" not in first.logText()

    fallbackOffset = fallback.logOffset()
    for stream in streams:
        fallback.waitForLog(rf"manifestID={stream.manifestId.decode()} .*seqNo=", since=fallbackOffset)
    for stream in streams:
        stream.finish()
        assert stream.lost == {}, stream.lost
        assert set(stream.served.values()) == {first.name, fallback.name}
    assert leaving.process.returncode == 0
