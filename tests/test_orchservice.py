"""
The gateway-facing C{net.Orchestrator} service and go-livepeer's
capabilities: L{livepeer_tx.capabilities} and
L{livepeer_tx.orchestrator.orchservice.OrchestratorService}, called
directly, through the gRPC layer in memory, and with grpcio against a
server process (tests/orchservice_server.py).
"""

import http.client
import json
import os
import ssl
import subprocess
import sys
from fractions import Fraction

import grpc
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak, to_checksum_address
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from livepeer_tx import __version__
from livepeer_tx.capabilities import (
    DEFAULT_CAPABILITIES,
    INCOMPATIBLE_CAPABILITIES,
    MPEG7_SIGNATURE,
    SEGMENT_SLICING,
    IncompatibleCapabilities,
    capabilitiesOf,
    capabilityBitstring,
    checkCompatible,
    isCompatible,
    orchestratorCapabilities,
    parseReport,
    versionAtLeast,
)
from livepeer_tx.chain.identity import NodeSigner
from livepeer_tx.payments import OffchainPayments, PaymentError
from livepeer_tx.orchestrator.authtoken import AuthTokens
from livepeer_tx.orchestrator.orchservice import (
    END_TRANSCODING_SESSION,
    GET_ORCHESTRATOR,
    PING,
    OrchestratorService,
    priceInfo,
    senderAddress,
)
from livepeer_tx.orchestrator.routing import RemoteTranscoder, TranscoderPool
from livepeer_tx.proto import lp_rpc_pb2 as pb
from livepeer_tx.rpc import GRPCError, ServiceRegistry, StatusCode
from livepeer_tx.rpc.wire import MessageReader

SERVICE_URI = "https://orch.example:8935"
KEY = bytes(range(32))
NOW = 1_700_000_000
GATEWAY = Account.from_key(b"\x11" * 32)
ORCHESTRATOR = Account.from_key(b"\x22" * 32)
OFFERED_BY_DEFAULT = sorted(set(DEFAULT_CAPABILITIES) - {MPEG7_SIGNATURE, SEGMENT_SLICING})
SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "orchservice_server.py")


def caps(*ids, version="", minVersion="", mandatories=()):
    message = pb.Capabilities(
        bitstring=capabilityBitstring(ids), version=version, mandatories=capabilityBitstring(mandatories))
    if minVersion:
        message.constraints.minVersion = minVersion
    return message


# --- capabilities ----------------------------------------------------------------------


def test_bitstringLayout():
    """
    go-livepeer's default set is bit i of word i/64: 67133439 in one word
    (the value our transcoders have always sent); id 64 starts a second word.
    """
    assert capabilityBitstring(DEFAULT_CAPABILITIES) == [67133439]
    assert capabilityBitstring([0, 64, 127]) == [1, 1 | 1 << 63]
    assert capabilityBitstring([]) == []
    assert capabilitiesOf([67133439]) == set(DEFAULT_CAPABILITIES)
    assert capabilitiesOf([1, 1 | 1 << 63]) == {0, 64, 127}


def test_parseReport():
    """
    A report is read as go-livepeer reads one: the capacities map, else
    capacity 1 per bit; nothing reported is the default set.
    """
    assert parseReport({"bitstring": capabilityBitstring([0, 1, 15])}) == {0: 1, 1: 1, 15: 1}
    message = pb.Capabilities(bitstring=capabilityBitstring([0, 15]), capacities={0: 1, 15: 3})
    assert parseReport(message) == {0: 1, 15: 3}
    assert parseReport({"capacities": {"0": 2}}) == {0: 2}
    assert parseReport(None) == parseReport({}) == dict.fromkeys(DEFAULT_CAPABILITIES, 1)


@pytest.mark.parametrize("report", [
    {"bitstring": "1"},
    {"bitstring": [-1]},
    {"bitstring": [2**64]},
    {"bitstring": ["1"]},
    {"bitstring": [True]},
    {"bitstring": [1] * 65},
    {"capacities": {"x": 1}},
    {"capacities": {"1": -1}},
    {"capacities": []},
    ["not", "an", "object"],
    pb.Capabilities(mandatories=[1] * 65),
    pb.Capabilities(capacities=dict.fromkeys(range(1025), 1)),
])
def test_parseReportRefusesMalformed(report):
    """
    A malformed or oversized report is a ValueError, for registration to refuse.
    """
    with pytest.raises(ValueError):
        parseReport(report)


def test_orchestratorCapabilities():
    """
    Our own default set at capacity 1, plus what each transcoder reports,
    less MPEG-7 signatures (14) and segment slicing (26), with our semver
    version and go-livepeer's (empty) constraints. The reports come parsed
    (registration parsed them): a wrong sum or a report counted twice shows
    in the capacities.
    """
    alone = orchestratorCapabilities([])
    assert sorted(capabilitiesOf(alone.bitstring)) == OFFERED_BY_DEFAULT
    assert dict(alone.capacities) == dict.fromkeys(OFFERED_BY_DEFAULT, 1)
    assert alone.version == __version__ and versionAtLeast(alone.version, "0.0.1")
    assert alone.HasField("constraints") and not alone.mandatories

    websocket = parseReport({"bitstring": capabilityBitstring(DEFAULT_CAPABILITIES)})
    stock = parseReport(pb.Capabilities(
        bitstring=capabilityBitstring([0, 1, 15, 14]), capacities={0: 1, 1: 1, 15: 1, 14: 1}))
    offered = orchestratorCapabilities([websocket, stock])
    assert offered.capacities[0] == 3 and offered.capacities[1] == 3 and offered.capacities[2] == 2
    assert offered.capacities[15] == 1
    assert MPEG7_SIGNATURE not in offered.capacities and SEGMENT_SLICING not in offered.capacities
    assert capabilitiesOf(offered.bitstring) == set(offered.capacities)

    everything = orchestratorCapabilities([stock], withheld=())
    assert everything.capacities[MPEG7_SIGNATURE] == 2 and everything.capacities[SEGMENT_SLICING] == 1


def test_compatibility():
    """
    go-livepeer's rule: the job's bitstring within ours (never longer), our
    mandatory capabilities within the job's, our version at least the job's
    minimum.
    """
    offered = caps(0, 1, 2, 12, version="0.4.1")
    assert isCompatible(None, offered)
    assert isCompatible(caps(0, 1, 12), offered)
    assert not isCompatible(caps(0, 15), offered)
    assert not isCompatible(pb.Capabilities(bitstring=[1, 0]), offered)
    assert isCompatible(caps(0, minVersion="0.4.0"), offered)
    assert isCompatible(caps(0, minVersion="v0.4.1-rc.2"), offered)
    assert not isCompatible(caps(0, minVersion="0.5"), offered)
    assert isCompatible(caps(0, minVersion="not a version"), offered)
    for version in ("", "undefined", "latest"):
        assert not isCompatible(caps(0, minVersion="0.1.0"), caps(0, version=version))
    demanding = caps(0, 12, mandatories=[12])
    assert isCompatible(caps(0, 12), demanding)
    assert not isCompatible(caps(0), demanding)


def test_jobNeedingWithheldCapabilityRefused():
    """
    A job asking for MPEG-7 signatures or segment slicing is refused with
    go-livepeer's C{incompatible capabilities} while we withhold them.
    """
    offered = orchestratorCapabilities([parseReport({"bitstring": capabilityBitstring(DEFAULT_CAPABILITIES)})])
    checkCompatible(caps(0, 1, 12), offered)
    for needed in (MPEG7_SIGNATURE, SEGMENT_SLICING):
        with pytest.raises(IncompatibleCapabilities) as raised:
            checkCompatible(caps(0, 1, 12, needed), offered)
        assert raised.value.message == INCOMPATIBLE_CAPABILITIES == "incompatible capabilities"


# --- OrchestratorService, called directly -----------------------------------------------


class FakeTicketPayments:
    """
    The on-chain payment processor's C{ticketParams} and C{price}.
    """

    price = Fraction(3, 6)

    def __init__(self):
        self.senders = []
        self.error = None

    def ticketParams(self, sender):
        self.senders.append(sender)
        if self.error is not None:
            return fail(PaymentError(400, self.error))
        return succeed(pb.TicketParams(recipient=ORCHESTRATOR_ADDRESS, face_value=b"\x01\x00", seed=b"s" * 32))


ORCHESTRATOR_ADDRESS = bytes.fromhex(ORCHESTRATOR.address[2:])
GATEWAY_ADDRESS = bytes.fromhex(GATEWAY.address[2:])


def signedRequest(account=GATEWAY, message=None):
    """
    An OrchestratorRequest as a go-livepeer gateway signs it: personal_sign
    over keccak-256 of its EIP-55 address text.
    """
    address = bytes.fromhex(account.address[2:])
    text = to_checksum_address(address) if message is None else message
    sig = account.sign_message(encode_defunct(primitive=keccak(text.encode("ascii")))).signature
    return pb.OrchestratorRequest(address=address, sig=bytes(sig))


class Fixture:
    """
    An OrchestratorService over a real pool, off chain or on chain.
    """

    def __init__(self, onChain=False, maxSessions=None, transcoders=1):
        self.clock = Clock()
        self.wallClock = lambda: NOW
        self.pool = TranscoderPool(self.clock, maxSessions=maxSessions)
        for index in range(transcoders):
            self.pool.add(RemoteTranscoder(
                f"192.0.2.{index}:4000", 2,
                capabilities=parseReport({"bitstring": capabilityBitstring(DEFAULT_CAPABILITIES)})))
        self.tokens = AuthTokens(KEY, wallClock=self.wallClock)
        self.ended = []
        self.payments = FakeTicketPayments() if onChain else OffchainPayments()
        self.signer = NodeSigner(ORCHESTRATOR) if onChain else None
        self.service = OrchestratorService(
            self.pool, self.tokens, SERVICE_URI, self.payments, self.ended.append, signer=self.signer)

    def get(self, request=None):
        return self.result(self.service.getOrchestrator(request or pb.OrchestratorRequest(), None))

    @staticmethod
    def result(d):
        outcome = []
        d.addBoth(outcome.append)
        assert outcome, "the Deferred did not fire"
        if hasattr(outcome[0], "raiseException"):
            outcome[0].raiseException()
        return outcome[0]


def refusalOf(call):
    with pytest.raises(GRPCError) as raised:
        call()
    assert raised.value.code == StatusCode.UNKNOWN
    return raised.value.message


def test_getOrchestratorOffchain():
    """
    Off chain the answer names our service URI, carries a fresh token that
    verifies, our capabilities and go-livepeer's zero address, and no ticket
    parameters or price.
    """
    fixture = Fixture()
    info = fixture.get()
    assert info.transcoder == SERVICE_URI
    assert fixture.tokens.verify(info.auth_token) == info.auth_token.session_id
    assert info.auth_token.expiration == NOW + 1800
    assert info.capabilities == orchestratorCapabilities([parseReport({"bitstring": [67133439]})])
    assert info.address == bytes(20)
    assert not info.HasField("ticket_params") and not info.HasField("price_info")
    assert fixture.get().auth_token.session_id != info.auth_token.session_id


def test_getOrchestratorWithoutTranscoders():
    """
    With no transcoder connected the request is refused with go-livepeer's
    prefix and its C{no transcoders available}.
    """
    fixture = Fixture(transcoders=0, maxSessions=10)
    assert refusalOf(fixture.get) == "Invalid orchestrator request: no transcoders available"


def test_getOrchestratorCapped():
    """
    At the session limit the request is refused with go-livepeer's
    C{Invalid orchestrator request: OrchestratorCapped}; a free slot lets
    the next one through.
    """
    fixture = Fixture(maxSessions=1)
    fixture.pool.select("busy")
    assert refusalOf(fixture.get) == "Invalid orchestrator request: OrchestratorCapped"
    fixture.pool.release("busy")
    assert fixture.get().auth_token.session_id


def test_getOrchestratorOnChain():
    """
    On chain a request signed over the gateway's EIP-55 address gets ticket
    parameters for that sender, the price as a reduced fraction and our
    address.
    """
    fixture = Fixture(onChain=True)
    info = fixture.get(signedRequest())
    assert fixture.payments.senders == [GATEWAY_ADDRESS]
    assert info.ticket_params.recipient == ORCHESTRATOR_ADDRESS
    assert (info.price_info.pricePerUnit, info.price_info.pixelsPerUnit) == (1, 2)
    assert info.address == ORCHESTRATOR_ADDRESS
    assert fixture.tokens.verify(info.auth_token)


@pytest.mark.parametrize("request_", [
    pb.OrchestratorRequest(address=GATEWAY_ADDRESS),
    signedRequest(Account.from_key(b"\x33" * 32)),
    signedRequest(message=GATEWAY.address.lower()),
    pb.OrchestratorRequest(address=GATEWAY_ADDRESS, sig=signedRequest().sig[:64]),
], ids=["unsigned", "other signer", "not checksummed", "short signature"])
def test_getOrchestratorBadSignature(request_):
    """
    On chain a request not signed by its address over the EIP-55 text is
    refused with go-livepeer's text, before anything else is done.
    """
    if request_.address != GATEWAY_ADDRESS:
        request_ = pb.OrchestratorRequest(address=GATEWAY_ADDRESS, sig=request_.sig)
    fixture = Fixture(onChain=True)
    assert refusalOf(lambda: fixture.get(request_)) == "Invalid orchestrator request: orchestrator req sig check failed"
    assert fixture.payments.senders == []


def test_getOrchestratorTicketParamsRefused():
    """
    A sender whose reserve cannot back a ticket gets the payment error's text.
    """
    fixture = Fixture(onChain=True)
    fixture.payments.error = "insufficient sender reserve"
    assert refusalOf(lambda: fixture.get(signedRequest())) == "insufficient sender reserve"


def test_senderAddressAndPrice():
    """
    The request's address is read as go-ethereum's BytesToAddress; a price is
    sent reduced.
    """
    assert senderAddress(b"\x01" * 20) == b"\x01" * 20
    assert senderAddress(b"\x09" + b"\x01" * 20) == b"\x01" * 20
    assert senderAddress(b"\x01") == bytes(19) + b"\x01"
    assert priceInfo(Fraction(10, 4)) == pb.PriceInfo(pricePerUnit=5, pixelsPerUnit=2)
    assert priceInfo(0) == pb.PriceInfo(pricePerUnit=0, pixelsPerUnit=1)


def test_ping():
    """
    Ping answers go-livepeer's node signature of the value: empty off chain,
    the orchestrator's personal_sign over its keccak-256 on chain; each ping
    is logged.
    """
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert Fixture().service.ping(pb.PingPong(value=b"hello"), None).value == b""
        signed = Fixture(onChain=True).service.ping(pb.PingPong(value=b"hello"), None).value
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert len(signed) == 65 and signed[64] in (27, 28)
    signer = Account.recover_message(encode_defunct(primitive=keccak(b"hello")), signature=signed)
    assert signer == ORCHESTRATOR.address
    assert sum(e.get("log_format") == "Received Ping request" for e in events) == 2


def test_endTranscodingSession():
    """
    A token we issued ends its session, even once expired (as go-livepeer);
    a forged or missing one is refused with go-livepeer's
    C{Invalid auth token} and ends nothing.
    """
    fixture = Fixture()
    token = fixture.get().auth_token
    response = Fixture.result(fixture.service.endTranscodingSession(
        pb.EndTranscodingSessionRequest(auth_token=token), None))
    assert response == pb.EndTranscodingSessionResponse()
    assert fixture.ended == [token.session_id]
    forged = pb.AuthToken(token=bytes(32), session_id=token.session_id, expiration=token.expiration)
    for request in (pb.EndTranscodingSessionRequest(auth_token=forged), pb.EndTranscodingSessionRequest()):
        assert refusalOf(lambda: fixture.service.endTranscodingSession(request, None)) == "Invalid auth token"
    assert fixture.ended == [token.session_id]


def test_methodPaths():
    """
    The paths served are the proto's C{net.Orchestrator} methods, with their
    request types.
    """
    registry = ServiceRegistry()
    Fixture().service.register(registry)
    service = pb.DESCRIPTOR.services_by_name["Orchestrator"]
    for path in (GET_ORCHESTRATOR, END_TRANSCODING_SESSION, PING):
        name = path.rsplit("/", 1)[1]
        assert path == f"/{service.full_name}/{name}"
        assert registry.lookup(path).requestClass.DESCRIPTOR == service.methods_by_name[name].input_type


# --- through the gRPC layer, in memory ------------------------------------------------


def test_throughGRPCLayer():
    """
    The handlers answer over HTTP/2 gRPC in memory: GetOrchestrator's info,
    a refusal as UNKNOWN with go-livepeer's text, Ping and
    EndTranscodingSession.
    """
    from test_grpc_h2 import Client

    fixture = Fixture(maxSessions=1)
    registry = ServiceRegistry()
    fixture.service.register(registry)
    client = Client(registry, clock=fixture.clock)

    response = client.response(client.call(GET_ORCHESTRATOR, pb.OrchestratorRequest()))
    assert response.status == 0
    (info,) = response.messages(pb.OrchestratorInfo)
    assert info.transcoder == SERVICE_URI and fixture.tokens.verify(info.auth_token)

    response = client.response(client.call(PING, pb.PingPong(value=b"x")))
    assert response.status == 0 and response.messages(pb.PingPong) == [pb.PingPong()]

    response = client.response(client.call(
        END_TRANSCODING_SESSION, pb.EndTranscodingSessionRequest(auth_token=info.auth_token)))
    assert response.status == 0 and response.messages(pb.EndTranscodingSessionResponse) == [
        pb.EndTranscodingSessionResponse()]
    assert fixture.ended == [info.auth_token.session_id]

    fixture.pool.select("busy")
    response = client.response(client.call(GET_ORCHESTRATOR, pb.OrchestratorRequest()))
    assert (response.status, response.message) == (
        StatusCode.UNKNOWN, "Invalid orchestrator request: OrchestratorCapped")
    assert MessageReader().feed(response.data) == []


# --- grpcio against a server process ----------------------------------------------------


class ServiceServer:
    """
    tests/orchservice_server.py in its own process, on its data directory.
    """

    def __init__(self, dataDir):
        self.dataDir = dataDir
        stderrPath = os.path.join(dataDir, "server.err")
        with open(stderrPath, "ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, SERVER_SCRIPT, dataDir], stdout=subprocess.PIPE, stderr=stderr)
        line = self.process.stdout.readline().decode()
        if not line.startswith("listening "):
            self.stop()
            with open(stderrPath) as f:
                pytest.fail(f"the test server did not start: {f.read()}")
        self.port = int(line.split()[1])
        with open(os.path.join(dataDir, "cert.pem"), "rb") as f:
            self.certPEM = f.read()

    def stop(self):
        self.process.terminate()
        self.process.wait(30)

    def channel(self):
        credentials = grpc.ssl_channel_credentials(root_certificates=self.certPEM)
        return grpc.secure_channel(f"127.0.0.1:{self.port}", credentials,
                                   options=[("grpc.ssl_target_name_override", "localhost")])

    def control(self, method, path):
        context = ssl.create_default_context(cadata=self.certPEM.decode())
        context.check_hostname = False
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=30)
        connection.request(method, path)
        return connection.getresponse().read()


def unary(channel, path, requestClass, responseClass):
    return channel.unary_unary(path, request_serializer=requestClass.SerializeToString,
                               response_deserializer=responseClass.FromString)


def test_grpcioClient(tmp_path):
    """
    grpcio, as a stock gateway: refused (UNKNOWN, go-livepeer's texts) with
    no transcoder and when capped; otherwise GetOrchestrator, Ping and
    EndTranscodingSession answer, and a token survives a restart of the
    server on the same data directory.
    """
    dataDir = str(tmp_path)
    server = ServiceServer(dataDir)
    try:
        with server.channel() as channel:
            getOrchestrator = unary(channel, GET_ORCHESTRATOR, pb.OrchestratorRequest, pb.OrchestratorInfo)
            with pytest.raises(grpc.RpcError) as raised:
                getOrchestrator(pb.OrchestratorRequest(), timeout=30)
            assert raised.value.code() == grpc.StatusCode.UNKNOWN
            assert raised.value.details() == "Invalid orchestrator request: no transcoders available"

            server.control("POST", "/transcoders?count=1")
            info = getOrchestrator(pb.OrchestratorRequest(), timeout=30)
            assert info.transcoder == "https://orch.example:8935"
            assert len(info.auth_token.session_id) == 8 and len(info.auth_token.token) == 32
            assert 0 in capabilitiesOf(info.capabilities.bitstring)

            pong = unary(channel, PING, pb.PingPong, pb.PingPong)(pb.PingPong(value=b"v"), timeout=30)
            assert pong == pb.PingPong()

            server.control("POST", "/sessions?count=2")
            with pytest.raises(grpc.RpcError) as raised:
                getOrchestrator(pb.OrchestratorRequest(), timeout=30)
            assert raised.value.code() == grpc.StatusCode.UNKNOWN
            assert raised.value.details() == "Invalid orchestrator request: OrchestratorCapped"

            end = unary(channel, END_TRANSCODING_SESSION, pb.EndTranscodingSessionRequest,
                        pb.EndTranscodingSessionResponse)
            forged = pb.AuthToken(token=bytes(32), session_id=info.auth_token.session_id,
                                  expiration=info.auth_token.expiration)
            with pytest.raises(grpc.RpcError) as raised:
                end(pb.EndTranscodingSessionRequest(auth_token=forged), timeout=30)
            assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.UNKNOWN, "Invalid auth token")
    finally:
        server.stop()

    server = ServiceServer(dataDir)
    try:
        with server.channel() as channel:
            end = unary(channel, END_TRANSCODING_SESSION, pb.EndTranscodingSessionRequest,
                        pb.EndTranscodingSessionResponse)
            assert end(pb.EndTranscodingSessionRequest(auth_token=info.auth_token), timeout=30) == (
                pb.EndTranscodingSessionResponse())
        assert json.loads(server.control("GET", "/ended")) == [info.auth_token.session_id]
    finally:
        server.stop()
