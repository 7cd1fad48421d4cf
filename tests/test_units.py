"""
Small units: secrets, TLS trust, addresses, keccak-256 and EIP-55, framing, the rendition store,
the transcoder's worker and backoff, and both plugins' options.
"""

import os
import ssl as stdlibssl

import pytest
from twisted.internet import defer
from twisted.python import usage

from livepeer_tx import wsproto
from livepeer_tx.addresses import describeAddress, parseHostPort
from livepeer_tx.capabilities import capabilityBitstring
from livepeer_tx.ethaddress import checksumAddress, keccak256
from livepeer_tx.orchestrator import tap as orchestratorTap
from livepeer_tx.orchestrator.store import RenditionStore
from livepeer_tx.secret import Secret, SecretFileError
from livepeer_tx.tls import ServerCertificate, formatFingerprint, parseFingerprint
from livepeer_tx.transcoder import tap as transcoderTap
from livepeer_tx.transcoder.client import Backoff
from livepeer_tx.transcoder.worker import TranscodeWorker


def writeFile(path, text, mode):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return str(path)


def test_secretFileTrimmedRereadAndHidden(tmp_path):
    """
    A 0600 file is read trimmed, re-read on every use, and never shown in repr.
    """
    path = writeFile(tmp_path / "s", "  abc \n", 0o600)
    secret = Secret.fromOption(path)
    assert secret.read() == "abc" and secret.matches("abc") and not secret.matches("abd")
    writeFile(tmp_path / "s", "rotated\n", 0o600)
    assert secret.matches(b"rotated")
    assert "rotated" not in repr(secret) and "abc" not in repr(Secret.fromOption("abc"))


def test_secretFilePermissionsAndEmpty(tmp_path):
    """
    Group/other-readable and empty secret files are refused.
    """
    with pytest.raises(SecretFileError, match="group or others"):
        Secret.fromOption(writeFile(tmp_path / "s", "abc", 0o640))
    with pytest.raises(SecretFileError, match="empty"):
        Secret.fromOption(writeFile(tmp_path / "e", "\n", 0o600))
    assert Secret.fromOption("literal").isLiteral


def test_certificateReusedAndKeyPrivate(tmp_path):
    """
    The self-signed certificate is created once, reused, with a 0600 key; it
    names the service host and verifies with Python's own TLS stack.
    """
    first = ServerCertificate.loadOrCreate(str(tmp_path), "127.0.0.1")
    second = ServerCertificate.loadOrCreate(str(tmp_path), "127.0.0.1")
    assert first.generated and not second.generated
    assert first.fingerprint == second.fingerprint
    assert os.stat(first.keyPath).st_mode & 0o777 == 0o600
    context = stdlibssl.create_default_context(cafile=first.certPath)
    assert context.get_ca_certs()
    os.chmod(first.keyPath, 0o644)
    with pytest.raises(Exception, match="group or others"):
        ServerCertificate.loadOrCreate(str(tmp_path), "127.0.0.1")


def test_fingerprintForms():
    """
    Fingerprints parse with or without colons and round-trip.
    """
    digest = bytes(range(32))
    assert parseFingerprint(formatFingerprint(digest)) == digest
    assert parseFingerprint(digest.hex().upper()) == digest
    with pytest.raises(ValueError):
        parseFingerprint("abcd")


@pytest.mark.parametrize("text,expected", [
    ("", ("h", 8935)), (":9000", ("h", 9000)), ("1.2.3.4", ("1.2.3.4", 8935)),
    ("example.com:443", ("example.com", 443)), ("[::1]:8935", ("::1", 8935)),
    ("https://o.example:8936", ("o.example", 8936)),
])
def test_parseHostPort(text, expected):
    """
    go-livepeer's address forms.
    """
    assert parseHostPort(text, "h", 8935) == expected


@pytest.mark.parametrize("text", ["host:notaport", "host:70000", "http://x:1", "https://x:1/path"])
def test_parseHostPortErrors(text):
    """
    Bad addresses are refused.
    """
    with pytest.raises(ValueError):
        parseHostPort(text, "h", 8935)


def test_describeAddress():
    """
    Peers are written C{host:port}, IPv6 in brackets, and an address
    without a host (a UNIX socket, a test transport's) as C{unknown}.
    """
    from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

    assert describeAddress(IPv4Address("TCP", "10.0.0.7", 8935)) == "10.0.0.7:8935"
    assert describeAddress(IPv6Address("TCP", "2001:db8::1", 443)) == "[2001:db8::1]:443"
    assert describeAddress(UNIXAddress(b"/run/x.sock")) == "unknown"
    assert describeAddress(None) == "unknown"


def test_keccak256IsEthereumsHash():
    """
    L{keccak256} is Ethereum's keccak-256 (not NIST SHA3-256, whose digest of
    the empty string differs) and agrees with eth-utils on other input.
    """
    from eth_utils import keccak

    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    for data in (b"a", b"P240p30fps16x9", os.urandom(1 << 16)):
        assert keccak256(data) == keccak(data)


@pytest.mark.parametrize("text", [
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
])
def test_checksumAddressEip55Vectors(text):
    """
    L{checksumAddress} writes EIP-55's own examples exactly as they are
    spelled there (a wrong nibble rule changes a letter's case).
    """
    assert checksumAddress(bytes.fromhex(text[2:])) == text


def test_checksumAddressAgreesAndRefusesOtherLengths():
    """
    L{checksumAddress} agrees with eth-utils on random addresses, and an
    input that is not 20 bytes is an error, not a short or long address.
    """
    from eth_utils import to_checksum_address

    for _ in range(50):
        address = os.urandom(20)
        assert checksumAddress(address) == to_checksum_address(address)
    for length in (0, 19, 21, 32):
        with pytest.raises(ValueError, match="20 bytes"):
            checksumAddress(b"\x01" * length)


def test_mediaFramingRoundTripAndErrors():
    """
    Binary frames split back into their parts; inconsistent frames are refused.
    """
    frame = wsproto.encodeMedia({"type": "result", "taskId": 3}, [b"abc", b"", b"defg"])
    header, parts = wsproto.decodeMedia(frame)
    assert header["taskId"] == 3 and parts == [b"abc", b"", b"defg"]
    for bad in (b"", b"\x00\x00\x00\x50{}", frame[:-1], b"\x00\x00\x00\x02[]", b"\x00\x00\x00\x02{}"):
        with pytest.raises(wsproto.ProtocolError):
            wsproto.decodeMedia(bad)
    with pytest.raises(wsproto.ProtocolError):
        wsproto.decodeControl(b'{"no":"type"}')


def test_storeBounds():
    """
    The store keeps a bounded number per session and bounded bytes overall.
    """
    store = RenditionStore(maxBytes=250, perSession=2)
    for i in range(3):
        store.put("a", f"p/{i}.ts", b"x" * 100, "video/mp2t")
    assert store.get("a", "p/0.ts") is None and store.get("a", "p/2.ts")
    store.put("b", "p/0.ts", b"y" * 100, "video/mp2t")
    assert store.totalBytes <= 250 and store.get("b", "p/0.ts")


class SlowTranscoder:
    """
    A stand-in FFmpeg engine whose transcodes finish when the test says.
    """

    def __init__(self):
        self.calls = []

    def transcode(self, segment, profiles, device=None, timeout=None):
        d = defer.Deferred(lambda d: self.calls.remove((segment, device, d)) if (segment, device, d) in self.calls else None)
        self.calls.append((segment, device, d))
        return d


def test_workerLimitsConcurrencyAndSpreadsDevices():
    """
    No more than maxSessions run at once; sessions spread over devices and
    keep theirs; a queued task can be cancelled without running.
    """
    engine = SlowTranscoder()
    worker = TranscodeWorker(engine, maxSessions=2, devices=["0", "1"])
    results = [worker.run(i, f"s{i % 3}", f"seg{i}".encode(), []) for i in range(4)]
    assert len(engine.calls) == 2 and worker.running == 2 and worker.queued == 2
    assert {engine.calls[0][1], engine.calls[1][1]} == {"0", "1"}
    worker.cancel(3)
    failures = []
    results[3].addErrback(failures.append)
    assert failures and failures[0].check(defer.CancelledError)
    engine.calls[0][2].callback("done")
    assert len(engine.calls) == 3 and engine.calls[2][0] == b"seg2"
    assert worker.deviceFor("s0") == engine.calls[0][1]


def test_backoffGrowsCapsAndResets():
    """
    Delays grow from about 0.5 s to a cap near 30 s, and reset.
    """
    backoff = Backoff(random=lambda: 0.5)
    delays = [backoff.next() for _ in range(20)]
    assert delays[0] == 0.5 and delays[1] > delays[0] and max(delays) == 30.0
    backoff.reset()
    assert backoff.next() == 0.5
    jittered = Backoff(random=lambda: 0.0)
    assert jittered.next() == 0.25


def test_capabilityBitstring():
    """
    go-livepeer's default capabilities as one 64-bit word.
    """
    (word,) = capabilityBitstring()
    assert word & 1 and word & (1 << 26) and not word & (1 << 13)


def test_transcoderRefusesEthOptions(tmp_path):
    """
    Keys belong on the orchestrator: every Ethereum option is refused.
    """
    secret = writeFile(tmp_path / "s", "x", 0o600)
    for option in ("--ethUrl", "--ethKeystorePath", "--ethPassword", "--ethAcctAddr", "--ethController"):
        with pytest.raises(usage.UsageError, match="belong on the orchestrator"):
            transcoderTap.Options().parseOptions(["--orchAddr", "h", "--orchSecret", secret, option, "v"])


def test_transcoderOptions(tmp_path):
    """
    Defaults and validation of the transcoder's options.
    """
    secret = writeFile(tmp_path / "s", "x", 0o600)
    options = transcoderTap.Options()
    options.parseOptions(["--orchAddr", "o.example", "--orchSecret", secret, "--nvidia", "0,1"])
    assert (options["orchHost"], options["orchPort"], options["capacity"]) == ("o.example", 8935, 10)
    assert options["devices"] == ["0", "1"]
    for bad in (["--maxSessions", "0"], ["--nvidia", "x"], ["--orchCertFingerprint", "zz"],
                ["--orchInsecure", "--orchCertFingerprint", "00" * 32]):
        with pytest.raises(usage.UsageError):
            transcoderTap.Options().parseOptions(["--orchAddr", "h", "--orchSecret", secret] + bad)
    with pytest.raises(usage.UsageError, match="Missing --orchSecret"):
        transcoderTap.Options().parseOptions(["--orchAddr", "h"])


def test_orchestratorOptions(tmp_path):
    """
    Defaults and validation of the orchestrator's options.
    """
    secret = writeFile(tmp_path / "s", "x", 0o600)
    options = orchestratorTap.Options()
    options.parseOptions(["--orchSecret", secret, "--serviceAddr", "o.example", "--dataDir", str(tmp_path)])
    assert (options["servicePort"], options["listenHost"], options["listenPort"]) == (8935, "", 8935)
    assert (options["cliHost"], options["cliPort"], options["maxSessionsLimit"]) == ("127.0.0.1", 7935, None)
    for bad in (["--maxSessions", "0"], ["--maxSessions", "many"], ["--tlsCert", "x"], ["--httpAddr", "h:bad"]):
        with pytest.raises(usage.UsageError):
            orchestratorTap.Options().parseOptions(["--orchSecret", secret] + bad)
    with pytest.raises(usage.UsageError, match="requires an --orchSecret"):
        orchestratorTap.Options().parseOptions([])


def test_transcoderRefusesEveryChainOptionName(tmp_path):
    """
    Every Ethereum option the orchestrator knows is refused by the transcoder.
    """
    from livepeer_tx.chainoptions import ETH_OPTION_NAMES

    secret = writeFile(tmp_path / "s", "x", 0o600)
    for name in ETH_OPTION_NAMES:
        with pytest.raises(usage.UsageError, match="belong on the orchestrator"):
            transcoderTap.Options().parseOptions(["--orchAddr", "h", "--orchSecret", secret, f"--{name}", "v"])


@pytest.mark.parametrize("tap", [orchestratorTap, transcoderTap])
def test_drainTimeoutRangeIsTheSameForBothDaemons(tmp_path, tap):
    """
    Both daemons take a C{--drainTimeout} from 0 to a day and refuse more,
    with the same words (the transcoder's range once stopped at an hour).
    """
    secret = writeFile(tmp_path / "secret", "s3cret\n", 0o600)
    base = ["--orchSecret", secret, "--orchAddr", "o.example:8935"] if tap is transcoderTap else [
        "--orchSecret", secret, "--serviceAddr", "127.0.0.1:8935"]
    config = tap.Options()
    config.parseOptions(base + ["--drainTimeout", "7200"])
    assert config["drainSeconds"] == 7200.0
    with pytest.raises(usage.UsageError, match="--drainTimeout must be a number of seconds from 0 to 86400"):
        tap.Options().parseOptions(base + ["--drainTimeout", "86401"])


def test_workerSurvivesATranscoderThatRaises():
    """
    A transcoder raising synchronously fails that task only: the slot is
    given back and the next task runs.
    """
    class Raising:
        def __init__(self):
            self.calls = 0

        def transcode(self, segment, profiles, device=None, timeout=None):
            self.calls += 1
            raise OSError("spawn failed")

    engine = Raising()
    worker = TranscodeWorker(engine, maxSessions=1)
    failures = []
    for i in range(3):
        worker.run(i, "s", b"x", []).addErrback(failures.append)
    assert engine.calls == 3 and len(failures) == 3
    assert worker.running == 0 and worker.queued == 0


@pytest.mark.parametrize("value,expected", [
    ("3", 3), (" 12 ", 12), ("0", 0), ("-1", 0), ("1e3", 0), ("", 0), (None, 0), ("7\nforged line", 0),
    ("١٢", 0), ("9" * 12, 0),
])
def test_capacityHeaderParsing(value, expected):
    """
    Only a plain decimal capacity is taken (and logged); anything else is 0.
    """
    from livepeer_tx.orchestrator.registration import parseCapacity

    assert parseCapacity(value) == expected


def test_segmentTimeoutMustBePositive(tmp_path):
    """
    A zero, negative or non-numeric --segmentTimeout is refused.
    """
    secret = writeFile(tmp_path / "s", "x", 0o600)
    for bad in ("0", "-1", "nan", "soon"):
        with pytest.raises(usage.UsageError, match="segmentTimeout"):
            transcoderTap.Options().parseOptions(["--orchAddr", "h", "--orchSecret", secret, "--segmentTimeout", bad])


def test_missingSecretFileIsNotTakenAsALiteral(tmp_path):
    """
    A path to a missing file in an existing directory is refused rather than
    used as the secret itself; a literal that merely starts with a slash works.
    """
    with pytest.raises(SecretFileError, match="does not exist"):
        Secret.fromOption(str(tmp_path / "orchSecret"))
    assert Secret.fromOption("/Zq9+random/base64").isLiteral


def test_workerTaskIdsReusedAfterReconnect():
    """
    A new task reusing the id of a task still being killed stays cancellable,
    and a lost connection forgets every session's device.
    """
    engine = SlowTranscoder()
    worker = TranscodeWorker(engine, maxSessions=2, devices=["0", "1"])
    old = worker.run(1, "a", b"old", [])
    old.addErrback(lambda f: None)
    worker.cancel(1)  # the old FFmpeg is still being reaped
    new = worker.run(1, "b", b"new", [])
    failures = []
    new.addErrback(failures.append)
    engine.calls[0][2].errback(defer.CancelledError())  # the old one finally ends
    worker.cancel(1)
    assert failures and failures[0].check(defer.CancelledError)
    worker.endAllSessions()
    assert worker._deviceOfSession == {}


def test_staleWorkDirectoriesRemoved(tmp_path):
    """
    Work directories left by a killed transcoder are removed at start.
    """
    from livepeer_tx.transcoder.ffmpeg import WORK_DIR_PREFIX, FFmpegTranscoder

    (tmp_path / (WORK_DIR_PREFIX + "abc")).mkdir()
    (tmp_path / (WORK_DIR_PREFIX + "abc") / "input.tempfile").write_bytes(b"x")
    (tmp_path / "cert.pem").write_bytes(b"keep")
    transcoder = FFmpegTranscoder(None, "ffmpeg", str(tmp_path))
    assert transcoder.removeStaleWorkFiles() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o610, 0o601])
def test_refuseSharedFileNamesTheFileAndMode(mode):
    """
    Any group or other permission is refused with one message naming the
    file and its mode, in the exception type the caller asks for.
    """
    from livepeer_tx.secret import refuseSharedFile

    with pytest.raises(OSError) as caught:
        refuseSharedFile("TLS key /k.pem", 0o100000 | mode, OSError)
    assert str(caught.value) == (
        f"refusing TLS key /k.pem: it is accessible by group or others (mode {mode:04o}); run chmod 600 on it")
    refuseSharedFile("TLS key /k.pem", 0o100600, OSError)


def test_dispatchMessageCallsTheHandlerOfTheType():
    """
    A control message goes to C{handle_<type>} with no parts and a media
    frame with its parts; an unexpected or unknown type is a protocol error
    and calls nothing.
    """
    calls = []

    class Target:
        def handle_ping(self, header, parts):
            calls.append((header["type"], parts))

        def handle_media(self, header, parts):
            calls.append((header["type"], parts))

    wsproto.dispatchMessage(Target(), wsproto.encodeControl("ping"), False)
    wsproto.dispatchMessage(Target(), wsproto.encodeMedia({"type": "media"}, [b"ab", b"c"]), True)
    assert calls == [("ping", []), ("media", [b"ab", b"c"])]
    with pytest.raises(wsproto.ProtocolError, match="expected 'register', got 'ping'"):
        wsproto.dispatchMessage(Target(), wsproto.encodeControl("ping"), False, expected="register")
    with pytest.raises(wsproto.ProtocolError, match="unknown message type 'nope'"):
        wsproto.dispatchMessage(Target(), wsproto.encodeControl("nope"), False)
    assert len(calls) == 2


def test_taskAnswersDroppedOnceTheConnectionCloses():
    """
    A task that ends while its connection is closing sends nothing (autobahn
    would raise on a send in that state), while one on an open connection is
    sent: breaks if the open check leaves the protocol's send methods.
    """
    from livepeer_tx.transcoder.client import TranscoderClientProtocol
    from livepeer_tx.transcoder.ffmpeg import TranscodeOutput

    protocol = TranscoderClientProtocol()
    sent = []
    protocol.sendMessage = lambda payload, isBinary=False: sent.append((payload, isBinary))
    output = TranscodeOutput(decodedFrames=1, decodedPixels=4)

    protocol.state = protocol.STATE_CLOSING
    protocol.sendResult(7, output)
    protocol.sendResultEnd(7, output)
    protocol.sendRenditionData(7, 0, b"ts")
    protocol.sendError(7, "failed")
    assert sent == []

    protocol.state = protocol.STATE_OPEN
    protocol.sendError(7, "failed")
    assert [wsproto.decodeControl(payload)["type"] for payload, _ in sent] == ["error"]


def test_metricsRestrictedToTheNamesAskedFor():
    """
    The CLI's C{/metrics} collector serves the node's registry and the
    default one (process and Python metrics), and C{name[]} restricts it to
    the samples named, from either registry (prometheus_client asks for
    C{restricted_registry}; without it the request fails).
    """
    from prometheus_client import REGISTRY, CollectorRegistry, Counter
    from prometheus_client.exposition import generate_latest

    from livepeer_tx.web import CombinedRegistry

    nodeRegistry = CollectorRegistry()
    Counter("livepeer_test_segments", "Segments.", registry=nodeRegistry).inc(3)
    combined = CombinedRegistry(nodeRegistry, REGISTRY)
    everything = generate_latest(combined).decode()
    assert "livepeer_test_segments_total 3.0" in everything and "python_info{" in everything
    only = generate_latest(combined.restricted_registry(["livepeer_test_segments_total", "python_info"])).decode()
    assert "livepeer_test_segments_total 3.0" in only and "python_info{" in only
    assert "livepeer_test_segments_created" not in only and "process_" not in only
