# -*- test-case-name: tests.test_units -*-
"""
C{twistd livepeer-transcoder}: options and service assembly.
"""

import os

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from livepeer_tx import __version__
from livepeer_tx.addresses import formatHostPort, parseHostPort
from livepeer_tx.admin import ActionError, addActions, drainActions, parseMaxSessions
from livepeer_tx.chainoptions import ETH_OPTION_NAMES
from livepeer_tx.goflags import FixedBoolean, GoFlagOptions
from livepeer_tx.lifecycle import DEFAULT_DRAIN_SECONDS, MAX_DRAIN_SECONDS, stopWithStatus
from livepeer_tx.secret import Secret, SecretFileError
from livepeer_tx.taps import cliPortService, makeSignalService, prepareNode
from livepeer_tx.tls import clientTLSOptions, parseFingerprint

_log = Logger()

DEFAULT_ORCH_PORT = 8935
DEFAULT_CLI_ADDR = "127.0.0.1:6935"

LONGDESC = """\
Run a Livepeer transcoder. It holds no keys: it tests its GPUs (or libx264)
at start, connects out to the orchestrator's port 8935 over TLS, registers its
capacity (--maxSessions) with the shared --orchSecret, and runs one FFmpeg
process per segment. It reconnects by itself when the orchestrator restarts.
The orchestrator's certificate is verified by default: use --orchCert for a
self-signed certificate or private CA, or --orchCertFingerprint to pin one.
"""


class Options(GoFlagOptions):
    """
    Command-line options, with go-livepeer's names, also taken from
    C{LP_*} variables and a C{--config} file (L{GoFlagOptions}).
    """

    synopsis = "--orchAddr HOST:PORT --orchSecret FILE [options]"
    longdesc = LONGDESC
    goProgram = "livepeer-transcoder"
    goFixedBooleans = {
        "transcoder": FixedBoolean(True, "livepeer-transcoder always runs as a standalone transcoder"),
        "orchestrator": FixedBoolean(
            False, "go-livepeer's orchestrator-and-transcoder mode has no equivalent: run livepeer-orchestrator "
            "and point this transcoder at it with -orchAddr"),
        "testTranscoder": FixedBoolean(True, "livepeer-transcoder always tests its hardware at start"),
    }
    goHints = {
        "netint": "only NVIDIA GPUs (-nvidia) and the CPU are supported",
        "network": "a transcoder holds no keys and needs no network; give -dataDir for its work files",
    }
    optParameters = [
        ["orchAddr", None, None, "The orchestrator's host:port (port 8935 if omitted)."],
        ["orchSecret", None, None,
         "Shared secret: a file path (recommended; must be mode 600, re-read before every connection attempt) "
         "or a literal (visible in the process list)."],
        ["maxSessions", None, "10", "Capacity announced to the orchestrator: segments transcoded at once."],
        ["nvidia", None, None, "Comma list of NVIDIA GPU ids, or 'all'. Absent: transcode on the CPU (libx264)."],
        ["ffmpeg", None, None, "FFmpeg binary [default: ffmpeg on PATH, else the imageio-ffmpeg one where the bundled-ffmpeg extra is installed]."],
        ["dataDir", None, None, "Directory for work files [default: ~/.lpData/transcoder]."],
        ["cliAddr", None, DEFAULT_CLI_ADDR, "Address of the local CLI port (/status, /metrics)."],
        ["orchCert", None, None, "PEM certificate or CA to trust for the orchestrator instead of the system store."],
        ["orchCertFingerprint", None, None,
         "Accept only the orchestrator certificate with this SHA-256 fingerprint (hex, colons optional)."],
        ["segmentTimeout", None, "60", "Seconds after which a segment's FFmpeg is killed."],
        ["drainTimeout", None, str(DEFAULT_DRAIN_SECONDS),
         "Seconds a drain (SIGTERM, or POST /drain on the CLI port) waits for the segments in progress before "
         "it stops them; keep it below the unit's TimeoutStopSec."],
    ]
    optFlags = [
        ["monitor", None, "Serve Prometheus metrics at /metrics on the CLI port."],
        ["noStreaming", None,
         "Take whole segments (store-and-forward) instead of streamed ones: FFmpeg then starts only once the "
         "segment has arrived, and the renditions go back once it is done."],
        ["orchInsecure", None,
         "Do NOT verify the orchestrator's certificate (anyone on the path can impersonate it). Tests only."],
    ]

    def postOptions(self):
        """
        Validate and convert the options; raise L{usage.UsageError} on bad input.
        """
        super().postOptions()
        if not self["orchAddr"]:
            raise usage.UsageError("Missing --orchAddr")
        if not self["orchSecret"]:
            raise usage.UsageError("Missing --orchSecret")
        try:
            self["secret"] = Secret.fromOption(self["orchSecret"])
        except SecretFileError as e:
            raise usage.UsageError(str(e))
        try:
            self["orchHost"], self["orchPort"] = parseHostPort(self["orchAddr"], "127.0.0.1", DEFAULT_ORCH_PORT)
            self["cliHost"], self["cliPort"] = parseHostPort(self["cliAddr"], "127.0.0.1", 6935)
        except ValueError as e:
            raise usage.UsageError(str(e))
        try:
            self["capacity"] = parseMaxSessions(self["maxSessions"], allowAuto=False, name="--maxSessions")
        except ActionError as e:
            raise usage.UsageError(str(e))
        try:
            self["timeoutSeconds"] = float(self["segmentTimeout"])
        except ValueError:
            self["timeoutSeconds"] = 0.0
        if not 0 < self["timeoutSeconds"] < 3600:
            raise usage.UsageError("--segmentTimeout must be a number of seconds between 0 and 3600")
        try:
            self["drainSeconds"] = float(self["drainTimeout"])
        except ValueError:
            self["drainSeconds"] = -1.0
        if not 0 <= self["drainSeconds"] <= MAX_DRAIN_SECONDS:
            raise usage.UsageError(f"--drainTimeout must be a number of seconds from 0 to {MAX_DRAIN_SECONDS}")
        trustChoices = [bool(self["orchCert"]), bool(self["orchCertFingerprint"]), bool(self["orchInsecure"])]
        if sum(trustChoices) > 1:
            raise usage.UsageError("choose one of --orchCert, --orchCertFingerprint and --orchInsecure")
        self["fingerprintBytes"] = None
        if self["orchCertFingerprint"]:
            try:
                self["fingerprintBytes"] = parseFingerprint(self["orchCertFingerprint"])
            except ValueError as e:
                raise usage.UsageError(f"--orchCertFingerprint: {e}")
        if self["orchCert"] and not os.path.isfile(self["orchCert"]):
            raise usage.UsageError(f"--orchCert: no such file {self['orchCert']}")
        nvidia = (self["nvidia"] or "").strip()
        if nvidia and nvidia != "all":
            devices = [d.strip() for d in nvidia.split(",") if d.strip()]
            if not devices or not all(d.isdigit() for d in devices):
                raise usage.UsageError("--nvidia takes a comma list of GPU ids (e.g. 0,1) or 'all'")
            self["devices"] = devices
        else:
            self["devices"] = "all" if nvidia == "all" else None
        if not self["dataDir"]:
            self["dataDir"] = os.path.expanduser(os.path.join("~", ".lpData", "transcoder"))
        from livepeer_tx.transcoder.ffmpeg import FFmpegNotFound, findFFmpeg

        try:
            self["ffmpegPath"] = findFFmpeg(self["ffmpeg"])
        except FFmpegNotFound as e:
            raise usage.UsageError(str(e))


def _refuseEthereumOption(name):
    def refuse(self, value):
        raise usage.UsageError(
            f"--{name} is not a transcoder option: Ethereum keys and RPC belong on the orchestrator; "
            "a transcoder holds no keys")

    refuse.__doc__ = "Refused: Ethereum keys and RPC belong on the orchestrator."
    return refuse


for _name in ETH_OPTION_NAMES:
    setattr(Options, "opt_" + _name, _refuseEthereumOption(_name))


class TranscoderNode(service.MultiService):
    """
    Runs the start-up transcode test, then keeps the orchestrator link up.
    A failed test stops the process with status 1 before it connects.

    It is the target of the transcoder's L{Drain<livepeer_tx.lifecycle.Drain>}.

    @ivar capacity: the capacity in force (C{--maxSessions}, or as changed since).
    @ivar tlsOptions: how the orchestrator's certificate is trusted.
    @ivar drain: the transcoder's drain (set by L{makeService}).
    """

    _log = Logger()

    def __init__(self, reactor, config, transcoder, makeLink, tlsOptions=None):
        super().__init__()
        self._reactor = reactor
        self._config = config
        self._transcoder = transcoder
        self._makeLink = makeLink
        self.capacity = config["capacity"]
        self.tlsOptions = tlsOptions
        self.drain = None
        self.link = None

    def startService(self):
        """
        Start the CLI port, then test the hardware and connect.
        """
        super().startService()
        from twisted.internet import defer

        d = defer.ensureDeferred(self._startUp())
        d.addErrback(self._startUpFailed)

    async def _startUp(self):
        from livepeer_tx.transcoder import gpucheck

        devices = self._config["devices"]
        if devices == "all":
            devices = await gpucheck.listNvidiaDevices(self._reactor)
        if devices:
            self._log.info("Transcoding on these Nvidia devices: {devices}", devices=devices)
        await gpucheck.checkDevices(self._transcoder, devices, gpucheck.loadTestClip())
        self._log.info("Start-up transcode test passed on {what}", what=devices or "CPU (libx264)")
        self._log.info("**Livepeer Running in Transcoder Mode*** version={version}", version=__version__)
        self.link = self._makeLink(devices)
        if self.drain is not None and self.drain.active:
            self.link.draining = True
        if self.running:
            self.link.setServiceParent(self)

    def _startUpFailed(self, failure):
        self._log.critical("Transcoder start-up test failed: {error}", error=failure.getErrorMessage())
        stopWithStatus(self._reactor, 1)

    def status(self):
        """
        The CLI port's C{/status}.
        """
        link = self.link
        return {
            "Version": __version__,
            "Orchestrator": formatHostPort(self._config["orchHost"], self._config["orchPort"]),
            "Registered": bool(link and link.isRegistered),
            "MaxSessions": self.capacity,
            "Running": link.worker.running if link else 0,
            "Queued": link.worker.queued if link else 0,
            "Devices": (link.devices if link else None) or [],
            "Draining": bool(self.drain and self.drain.active),
            "Drained": bool(self.drain and self.drain.active and self.drain.drained),
        }

    def statusLine(self):
        """
        A one-line summary of the state, for the log (SIGUSR2).
        """
        status = self.status()
        return (f"orchestrator={status['Orchestrator']} registered={'yes' if status['Registered'] else 'no'} "
                f"maxSessions={status['MaxSessions']} running={status['Running']} queued={status['Queued']} "
                f"draining={'yes' if status['Draining'] else 'no'}")

    def setCapacity(self, capacity, source):
        """
        Change the capacity at run time, and report it to the orchestrator.

        @param source: who asked, for the log.
        """
        self.capacity = capacity
        self._log.info("maxSessions set to {capacity} by {source}", capacity=capacity, source=source)
        if self.link is not None:
            self.link.setCapacity(capacity)

    def setTLSOptions(self, tlsOptions):
        """
        Trust the orchestrator's certificate as C{tlsOptions} say, from the
        next connection on.
        """
        self.tlsOptions = tlsOptions
        if self.link is not None:
            self.link.setTLSOptions(tlsOptions)

    # The drain target (see livepeer_tx.lifecycle.Drain).

    def startDraining(self):
        """
        Take no more tasks; close the orchestrator link once its tasks are done.
        """
        if self.link is not None:
            self.link.startDraining()

    def stopDraining(self):
        """
        Take tasks again.
        """
        if self.link is not None:
            self.link.stopDraining()

    def isDrained(self):
        """
        Whether no task is left and the link is closed.
        """
        return self.link is None or self.link.isDrained()

    def describeWork(self):
        """
        What a drain waits for, for its log lines.
        """
        if self.link is None:
            return "no segment (not connected yet)"
        return f"{self.link.worker.pending} segment(s) in progress"


def makeService(config, reactor=None):
    """
    Build the transcoder's service tree from parsed L{Options}.
    """
    if reactor is None:
        from twisted.internet import reactor
    from prometheus_client import CollectorRegistry

    from livepeer_tx.metrics import TranscoderMetrics
    from livepeer_tx.transcoder.client import OrchestratorLink
    from livepeer_tx.transcoder.ffmpeg import FFmpegTranscoder
    from livepeer_tx.transcoder.worker import TranscodeWorker
    from livepeer_tx.lifecycle import Drain
    from livepeer_tx.reload import OptionsReload, rereadFunction
    from livepeer_tx.transcoder.reload import TranscoderReloader
    from livepeer_tx.web import makeCLIRoot

    secret = prepareNode(config, _log)
    if config["orchInsecure"]:
        _log.warn("!!! --orchInsecure: the orchestrator's TLS certificate is NOT verified; anyone on the network "
                  "path can impersonate it and receive the secret !!!")
    ffmpegPath = config["ffmpegPath"]
    workDir = config["dataDir"]
    os.makedirs(workDir, mode=0o700, exist_ok=True)
    transcoder = FFmpegTranscoder(reactor, ffmpegPath, workDir, timeout=config["timeoutSeconds"])
    stale = transcoder.removeStaleWorkFiles()
    if stale:
        _log.info("Removed {count} work directories left by an earlier run in {workDir}", count=stale,
                  workDir=workDir)
    def makeTLSOptions():
        return clientTLSOptions(
            config["orchHost"], caFile=config["orchCert"], fingerprint=config["fingerprintBytes"],
            insecure=config["orchInsecure"])

    worker = TranscodeWorker(transcoder, config["capacity"], streaming=not config["noStreaming"])
    registry = CollectorRegistry()
    metrics = TranscoderMetrics(worker, registry=registry)

    def makeLink(devices):
        worker.devices = list(devices) if devices else None
        worker.setCapacity(node.capacity)
        return OrchestratorLink(reactor, config["orchHost"], config["orchPort"], secret, node.tlsOptions, worker,
                                node.capacity, devices, metrics=metrics)

    node = TranscoderNode(reactor, config, transcoder, makeLink, makeTLSOptions())
    node.drain = Drain(reactor, node, config["drainSeconds"])
    options = OptionsReload(rereadFunction(config), config, {
        "maxSessions": lambda new: node.setCapacity(new["capacity"], "the configuration"),
        "drainTimeout": lambda new: setattr(node.drain, "timeout", new["drainSeconds"]),
    })
    reloader = TranscoderReloader(node, secret, makeTLSOptions if config["orchCert"] else None, options)
    makeSignalService(reactor, _log, reloader.reload, node.statusLine, node.drain).setServiceParent(node)

    cliRoot = makeCLIRoot(reactor, node.status, registry if config["monitor"] else None)
    addActions(cliRoot, {**drainActions(lambda: node.drain, node.status),
                         "setMaxSessions": lambda fields: _setMaxSessionsAction(node, fields)})
    cliPortService(reactor, config, cliRoot).setServiceParent(node)
    _log.info("Livepeer Node version: {version}; FFmpeg {ffmpeg}; work dir {workDir}",
              version=__version__, ffmpeg=ffmpegPath, workDir=workDir)
    _log.info("CLI server listening on {addr}", addr=formatHostPort(config["cliHost"], config["cliPort"]))
    return node


def _setMaxSessionsAction(node, fields):
    capacity = parseMaxSessions(fields.get("maxSessions"), allowAuto=False)
    node.setCapacity(capacity, "the CLI port")
    return f"maxSessions set to {capacity}"
