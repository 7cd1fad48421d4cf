# -*- test-case-name: tests.test_units -*-
"""
C{twistd livepeer-orchestrator}: options and service assembly.
"""

import os
import socket

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.logger import Logger
from twisted.python import usage

from livepeer_tx import __version__
from livepeer_tx.addresses import formatHostPort, parseHostPort
from livepeer_tx.admin import ActionError, parseMaxSessions
from livepeer_tx.chainoptions import CHAIN_OPT_FLAGS, CHAIN_OPT_PARAMETERS, isOnChain, validateChainOptions
from livepeer_tx.goflags import FixedBoolean, GoFlagOptions
from livepeer_tx.lifecycle import DEFAULT_DRAIN_SECONDS, MAX_DRAIN_SECONDS
from livepeer_tx.limits import ConnectionLimiter, HTTPLimits, MemoryReturner, UploadBudget
from livepeer_tx.payments import OffchainPayments
from livepeer_tx.secret import Secret, SecretFileError
from livepeer_tx.taps import cliPortService, makeSignalService, prepareNode
from livepeer_tx.tls import CertificateError, ServerCertificate
from livepeer_tx.web import ConnectionCapFactory, HTTPEdgeMetrics

_log = Logger()

DEFAULT_SERVICE_PORT = 8935
DEFAULT_CLI_ADDR = "127.0.0.1:7935"
MAX_SEGMENT_BYTES = 300_000_000

LONGDESC = """\
Run a standalone Livepeer orchestrator. It transcodes nothing itself: gateways
(stock go-livepeer ones too) ask for a session over gRPC and send segments to
its public TLS port (8935 by default, go-livepeer's wire format, HTTP/2 or
HTTP/1.1), transcoders connect to the same port over a WebSocket (ours) or
gRPC (stock go-livepeer ones) authenticated by the shared secret, and every
segment is routed to a transcoder with free capacity. The CLI port
(127.0.0.1:7935) serves the full /status and, with --monitor, /metrics.
"""


class Options(GoFlagOptions):
    """
    Command-line options, with go-livepeer's names, also taken from
    C{LP_*} variables and a C{--config} file (L{GoFlagOptions}).
    """

    synopsis = "[options]"
    longdesc = LONGDESC
    goProgram = "livepeer-orchestrator"
    goBooleanParameters = {"reward": ("on", "off", frozenset(["on", "off", "auto"]))}
    goFixedBooleans = {
        "orchestrator": FixedBoolean(True, "livepeer-orchestrator always runs as an orchestrator"),
        "transcoder": FixedBoolean(
            False, "go-livepeer's orchestrator-and-transcoder mode has no equivalent: run livepeer-transcoder "
            "processes that connect to this orchestrator (-orchAddr, -orchSecret)"),
        "startupAvailabilityCheck": FixedBoolean(
            False, "livepeer-orchestrator does not call itself at its -serviceAddr on start-up"),
        "autoAdjustPrice": FixedBoolean(
            False, "livepeer-orchestrator does not adjust -pricePerUnit for redemption costs"),
    }
    goHints = {
        "nvidia": "transcoding runs in livepeer-transcoder processes",
        "netint": "transcoding runs in livepeer-transcoder processes",
        "testTranscoder": "transcoding runs in livepeer-transcoder processes, which test their hardware",
        "ethOrchAddr": "the keystore account is the orchestrator's address and ticket recipient",
        "pricePerGateway": "one -pricePerUnit applies to every gateway",
        "pricePerBroadcaster": "one -pricePerUnit applies to every gateway",
    }
    optParameters = [
        ["orchSecret", None, None,
         "Shared secret of the orchestrator and its transcoders: a file path (recommended; must be mode 600) "
         "or a literal (visible in the process list)."],
        ["serviceAddr", None, None,
         "Public host:port advertised to gateways and named in the self-signed certificate "
         "[default: this host's FQDN, port 8935]."],
        ["httpAddr", None, None,
         "Address the public TLS port listens on [default: all interfaces, the serviceAddr port]."],
        ["cliAddr", None, DEFAULT_CLI_ADDR, "Address of the local CLI port (/status, /metrics)."],
        ["maxSessions", None, "auto",
         "Cap on concurrent sessions, or 'auto' for the sum of the connected transcoders' capacities."],
        ["maxSessionsPerAddress", None, "auto",
         "Off-chain (or at a price of 0): cap on the concurrent sessions of one gateway address (an IPv6 /64 "
         "counts as one), or 'auto' for half the session limit."],
        ["dataDir", None, None, "Directory for the TLS certificate and other state [default: ~/.lpData/<network>]."],
        ["tlsCert", None, None, "PEM certificate chain to serve instead of the self-signed certificate."],
        ["tlsKey", None, None, "PEM private key of --tlsCert (mode 600)."],
        ["maxSegmentSize", None, str(MAX_SEGMENT_BYTES), "Largest segment body accepted, in bytes (413 above)."],
        ["transcoderPingInterval", None, "2",
         "Seconds between WebSocket pings to each transcoder; one that does not answer within as long is "
         "dropped and its segments move to other transcoders (so a frozen transcoder is found within twice "
         "this, inside go-livepeer's 8 s segment deadline at the default)."],
        ["drainTimeout", None, str(DEFAULT_DRAIN_SECONDS),
         "Seconds a drain (SIGTERM, or POST /drain on the CLI port) waits for the segments in flight and the "
         "download of their renditions; keep it below the unit's TimeoutStopSec."],
        ["secretRotationGrace", None, "0",
         "Seconds transcoders that registered with a secret no longer in the --orchSecret file may keep working "
         "after a reload (SIGHUP); 0 retires them at once (each closes when its segments are done), more "
         "replaces them one at a time."],
        ["maxConnections", None, "4096",
         "Cap on concurrent connections to the public port; more are closed at once. Keep it well below the "
         "process's file descriptor limit (LimitNOFILE)."],
        ["maxConnectionsPerAddress", None, "256",
         "Cap on concurrent public-port connections from one IP address (an IPv6 /64 counts as one)."],
        ["headerTimeout", None, "20",
         "Seconds a client has to send a request line and all its headers, from the request's first byte "
         "(408 after), or a gRPC call its request message (DEADLINE_EXCEEDED after)."],
        ["idleTimeout", None, "60", "Seconds an idle public-port connection (no request in progress) stays open."],
        ["minUploadRate", None, "16384",
         "Bytes per second a request body must average, after a 10 s grace (408 and the connection closed below)."],
        ["uploadMemory", None, str(1024 ** 3),
         "Bytes of request bodies held in memory at once, in total; a body that does not fit gets 503 "
         "before it is read."],
        ["uploadMemoryPerAddress", None, "320000000",
         "Bytes of request bodies held in memory at once for one IP address or IPv6 /64 (at least "
         "--maxSegmentSize)."],
    ] + CHAIN_OPT_PARAMETERS
    optFlags = [
        ["monitor", None, "Serve Prometheus metrics at /metrics on the CLI port."],
    ] + CHAIN_OPT_FLAGS

    def postOptions(self):
        """
        Validate and convert the options; raise L{usage.UsageError} on bad input.
        """
        super().postOptions()
        if not self["orchSecret"]:
            raise usage.UsageError(
                "Running an orchestrator requires an --orchSecret (a file path, mode 600) for standalone mode")
        try:
            self["secret"] = Secret.fromOption(self["orchSecret"])
        except SecretFileError as e:
            raise usage.UsageError(str(e))
        try:
            host, port = parseHostPort(self["serviceAddr"], socket.getfqdn(), DEFAULT_SERVICE_PORT)
            self["serviceHost"], self["servicePort"] = host, port
            self["listenHost"], self["listenPort"] = parseHostPort(self["httpAddr"], "", port)
            self["cliHost"], self["cliPort"] = parseHostPort(self["cliAddr"], "127.0.0.1", 7935)
        except ValueError as e:
            raise usage.UsageError(str(e))
        for name in ("maxSessions", "maxSessionsPerAddress"):
            try:
                self[name + "Limit"] = parseMaxSessions(self[name], allowAuto=True, name="--" + name)
            except ActionError as e:
                raise usage.UsageError(str(e))
        try:
            self["maxSegmentBytes"] = int(self["maxSegmentSize"])
            if self["maxSegmentBytes"] <= 0:
                raise ValueError
        except ValueError:
            raise usage.UsageError("--maxSegmentSize must be a positive number of bytes")
        try:
            self["pingSeconds"] = float(self["transcoderPingInterval"])
        except ValueError:
            self["pingSeconds"] = 0.0
        if not 0.5 <= self["pingSeconds"] <= 300:
            raise usage.UsageError("--transcoderPingInterval must be between 0.5 and 300 seconds")
        self._parseHTTPLimits()
        self._parseOperations()
        if bool(self["tlsCert"]) != bool(self["tlsKey"]):
            raise usage.UsageError("--tlsCert and --tlsKey must be given together")
        validateChainOptions(self)
        if not self["dataDir"]:
            self["dataDir"] = os.path.expanduser(os.path.join("~", ".lpData", self.get("network") or "offchain"))
        try:
            ServerCertificate.checkFiles(self["dataDir"], self["tlsCert"], self["tlsKey"])
        except CertificateError as e:
            raise usage.UsageError(str(e))

    def _parseOperations(self):
        """
        Check the drain and secret rotation options.
        """
        for name, key in (("drainTimeout", "drainSeconds"), ("secretRotationGrace", "rotationGraceSeconds")):
            try:
                self[key] = float(self[name])
            except ValueError:
                self[key] = -1.0
            if not 0 <= self[key] <= MAX_DRAIN_SECONDS:
                raise usage.UsageError(f"--{name} must be a number of seconds from 0 to {MAX_DRAIN_SECONDS}")

    def _parseHTTPLimits(self):
        """
        Check the public port's connection, deadline and upload-memory options.
        """
        for name, convert, unit in (
            ("maxConnections", int, "a number of connections"),
            ("maxConnectionsPerAddress", int, "a number of connections"),
            ("headerTimeout", float, "seconds"),
            ("idleTimeout", float, "seconds"),
            ("minUploadRate", float, "bytes per second"),
            ("uploadMemory", int, "bytes"),
            ("uploadMemoryPerAddress", int, "bytes"),
        ):
            try:
                value = convert(self[name])
                if not value > 0:
                    raise ValueError
            except ValueError:
                raise usage.UsageError(f"--{name} must be a positive {unit}") from None
            self[name + "Value"] = value
        if self["uploadMemoryPerAddressValue"] < self["maxSegmentBytes"]:
            raise usage.UsageError("--uploadMemoryPerAddress must be at least --maxSegmentSize")
        if self["uploadMemoryValue"] < self["uploadMemoryPerAddressValue"]:
            raise usage.UsageError("--uploadMemory must be at least --uploadMemoryPerAddress")


def makeService(config, reactor=None):
    """
    Build the orchestrator's service tree from parsed L{Options}.
    """
    if reactor is None:
        from twisted.internet import reactor
    from livepeer_tx.orchestrator.app import Orchestrator
    from livepeer_tx.orchestrator.authtoken import AuthTokens
    from livepeer_tx.orchestrator.ingress import sourceOf

    secret = prepareNode(config, _log)
    dataDir = config["dataDir"]
    os.makedirs(dataDir, mode=0o700, exist_ok=True)
    try:
        certificate = ServerCertificate.loadOrCreate(
            dataDir, config["serviceHost"], config["tlsCert"], config["tlsKey"])
    except CertificateError as e:
        raise usage.UsageError(str(e))
    from livepeer_tx.tls import formatFingerprint

    if certificate.generated:
        _log.info("Private key and cert not found. Generating cert for {host} in {path}",
                  host=config["serviceHost"], path=certificate.certPath)
    _log.info("TLS certificate {path} SHA-256 fingerprint {fingerprint}",
              path=certificate.certPath, fingerprint=formatFingerprint(certificate.fingerprint))

    serviceURL = "https://" + formatHostPort(config["serviceHost"], config["servicePort"])
    parent = service.MultiService()
    app = Orchestrator(reactor, serviceURL, maxSessions=config["maxSessionsLimit"],
                       maxSessionsPerAddress=config["maxSessionsPerAddressLimit"])
    app.setServiceParent(parent)
    try:
        chainService, payments = makePayments(config, reactor, dataDir, app.metrics.registry)
        # Kept in the data directory: gateways' sessions outlive a restart.
        tokens = AuthTokens.fromDataDir(dataDir, wallClock=app.wallClock)
    except SecretFileError as e:
        raise usage.UsageError(str(e))
    if chainService is not None:
        chainService.setServiceParent(parent)
    signer = chainService.signer if chainService is not None else None
    maxSegmentBytes = config["maxSegmentBytes"]
    public = app.makePublicRoot(reactor, secret, payments, maxSegmentBytes, config["pingSeconds"],
                                tokens=tokens, signer=signer)
    connections = ConnectionLimiter(config["maxConnectionsValue"], config["maxConnectionsPerAddressValue"])
    uploadBudget = UploadBudget(config["uploadMemoryValue"], config["uploadMemoryPerAddressValue"],
                                memoryReturner=MemoryReturner(reactor))
    edgeMetrics = HTTPEdgeMetrics(app.metrics.registry, connections, uploadBudget)
    limits = HTTPLimits(headerTimeout=config["headerTimeoutValue"], idleTimeout=config["idleTimeoutValue"],
                        minUploadRate=config["minUploadRateValue"])
    # Per-address limits count an IPv6 /64 as one source, like gateway admission.
    # One TLS port: gRPC over HTTP/2 beside the resources over HTTP/2 and HTTP/1.1.
    publicSite = public.makeSite(hashBodies=True, limits=limits, uploadBudget=uploadBudget, metrics=edgeMetrics,
                                 reactor=reactor, sourceOf=sourceOf)
    publicFactory = ConnectionCapFactory(publicSite, connections, reactor, edgeMetrics, sourceOf=sourceOf)
    # Served through a context that a reload can replace (SIGHUP).
    try:
        serverTLS = certificate.serverTLS()
    except CertificateError as e:
        raise usage.UsageError(str(e))
    publicEndpoint = serverTLS.endpoint(reactor, config["listenPort"], config["listenHost"])
    StreamServerEndpointService(publicEndpoint, publicFactory).setServiceParent(parent)

    cliPortService(reactor, config, app.makeCLIRoot(reactor, config["monitor"])).setServiceParent(parent)
    _addOperations(reactor, parent, app, secret, serverTLS, config)

    _log.info("***Livepeer Running in Orchestrator Mode*** version={version}", version=__version__)
    _log.info("Listening for RPC on https://{addr} (service URI {uri})",
              addr=formatHostPort(config["listenHost"] or "0.0.0.0", config["listenPort"]), uri=serviceURL)
    _log.info("CLI server listening on {addr}", addr=formatHostPort(config["cliHost"], config["cliPort"]))
    return parent


def makePayments(config, reactor, dataDir, registry):
    """
    The chain service and payment processor the options choose.

    Only an on-chain orchestrator imports L{livepeer_tx.chain} (eth-abi,
    eth-account): off-chain, payments are L{OffchainPayments} and there is
    no chain service. On chain, its metrics go in C{registry}, the node's.

    @return: C{(chainService, payments)}; C{chainService} is L{None}
        off-chain.
    """
    if not isOnChain(config):
        return None, OffchainPayments()
    from livepeer_tx.chain.service import makeChainService

    return makeChainService(config, reactor, dataDir, registry)


def _addOperations(reactor, parent, app, secret, serverTLS, config):
    """
    Signals, reload, drain and graceful stop: a L{SignalService} named
    C{signals} in C{parent} (see L{livepeer_tx.signals}).
    """
    from livepeer_tx.lifecycle import Drain
    from livepeer_tx.orchestrator.reload import OrchestratorReloader, SecretRotation
    from livepeer_tx.reload import OptionsReload, rereadFunction

    app.drain = Drain(reactor, app, config["drainSeconds"])
    rotation = SecretRotation(app, reactor, config["rotationGraceSeconds"])
    options = OptionsReload(rereadFunction(config), config, {
        "maxSessions": lambda new: app.setMaxSessions(new["maxSessionsLimit"], "the configuration"),
        "maxSessionsPerAddress": lambda new: setattr(app.pool, "maxSessionsPerSource",
                                                     new["maxSessionsPerAddressLimit"]),
        "drainTimeout": lambda new: setattr(app.drain, "timeout", new["drainSeconds"]),
        "secretRotationGrace": lambda new: setattr(rotation, "grace", new["rotationGraceSeconds"]),
    })
    reloader = OrchestratorReloader(app, secret, serverTLS, rotation, options)
    makeSignalService(reactor, _log, reloader.reload, app.statusLine, app.drain).setServiceParent(parent)
