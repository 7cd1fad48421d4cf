# -*- test-case-name: tests.test_orchservice -*-
"""
go-livepeer's gateway-facing gRPC service, C{net.Orchestrator}:
C{GetOrchestrator}, C{Ping} and C{EndTranscodingSession}
(golivepeer-wire.md, 2.1 to 2.3 and 2.6).

L{OrchestratorService} is a plain class over the orchestrator's
collaborators; L{OrchestratorService.register} puts its handlers in a
L{livepeer_tx.rpc.ServiceRegistry}. Refusals end the call with status
UNKNOWN and go-livepeer's text, as a Go handler's plain error does.
"""

from fractions import Fraction

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from livepeer_tx import __version__
from livepeer_tx.capabilities import NOT_HONOURED, orchestratorCapabilities
from livepeer_tx.ethaddress import checksumAddress
from livepeer_tx.payments import PaymentError
from livepeer_tx.orchestrator.routing import NO_TRANSCODERS, ORCHESTRATOR_CAPPED
from livepeer_tx.proto import lp_rpc_pb2 as pb
from livepeer_tx.rpc import GRPCError, StatusCode

GET_ORCHESTRATOR = "/net.Orchestrator/GetOrchestrator"
END_TRANSCODING_SESSION = "/net.Orchestrator/EndTranscodingSession"
PING = "/net.Orchestrator/Ping"

# go-livepeer's texts, as a gateway sees them in the gRPC status message.
INVALID_REQUEST = "Invalid orchestrator request: {reason}"
SIG_CHECK_FAILED = "orchestrator req sig check failed"
ENDING_INVALID_AUTH_TOKEN = "Invalid auth token"

# Off chain go-livepeer's node has the zero address, and sends it.
OFFCHAIN_ADDRESS = bytes(20)
ADDRESS_BYTES = 20


def senderAddress(raw):
    """
    The 20-byte address in C{OrchestratorRequest.address}, read as
    go-ethereum's C{BytesToAddress}: its last 20 bytes, left-padded with zeros
    when shorter.
    """
    return bytes(raw)[-ADDRESS_BYTES:].rjust(ADDRESS_BYTES, b"\0")


def priceInfo(price):
    """
    The C{PriceInfo} of a price in wei per pixel: the reduced fraction, as
    go-livepeer's C{big.Rat}.
    """
    price = Fraction(price)
    return pb.PriceInfo(pricePerUnit=price.numerator, pixelsPerUnit=price.denominator)


def refuse(reason):
    """
    The L{GRPCError} of a refused C{GetOrchestrator}: UNKNOWN with
    go-livepeer's C{Invalid orchestrator request: <reason>}.
    """
    return GRPCError(StatusCode.UNKNOWN, INVALID_REQUEST.format(reason=reason))


class OrchestratorService:
    """
    Answers gateways' C{net.Orchestrator} calls.

    @param pool: the transcoder pool (L{livepeer_tx.orchestrator.routing.TranscoderPool}
        or anything with C{transcoders}, each with its C{capabilities} as
        parsed at registration (a C{{capability: capacity}} dict),
        C{sessionCount}, C{sessionLimit} and C{wouldExceedLimit(sessionId)}).
    @param tokens: the L{livepeer_tx.orchestrator.authtoken.AuthTokens} that
        issue and check session tokens.
    @param serviceURI: the public base URL gateways post segments to
        (C{OrchestratorInfo.transcoder}).
    @param payments: the payment processor; its C{ticketParams(sender)}
        fires with a C{TicketParams} on chain, L{None} off chain, or fails
        with L{PaymentError}; C{price} is its price in wei per pixel.
    @param endSession: C{endSession(sessionId)} frees a session and tells
        its transcoder to drop it; may return a Deferred.
    @param signer: the node's L{livepeer_tx.chain.identity.NodeSigner} on
        chain, L{None} off chain (then, as in go-livepeer, no signature is
        checked, C{Ping} answers an empty value and the address is zero).
    @param version: the semver version advertised in the capabilities.
    @param withheld: capabilities never advertised (see
        L{livepeer_tx.capabilities.NOT_HONOURED}).
    """

    _log = Logger()

    def __init__(self, pool, tokens, serviceURI, payments, endSession, signer=None, version=__version__,
                 withheld=NOT_HONOURED):
        self._pool = pool
        self._tokens = tokens
        self.serviceURI = serviceURI
        self._payments = payments
        self._endSession = endSession
        self._signer = signer
        self.version = version
        self.withheld = frozenset(withheld)

    def register(self, registry):
        """
        Serve the three methods from C{registry} (a
        L{livepeer_tx.rpc.ServiceRegistry}).
        """
        registry.addUnary(GET_ORCHESTRATOR, pb.OrchestratorRequest, self.getOrchestrator)
        registry.addUnary(END_TRANSCODING_SESSION, pb.EndTranscodingSessionRequest, self.endTranscodingSession)
        registry.addUnary(PING, pb.PingPong, self.ping)

    @property
    def address(self):
        """
        Our 20-byte address: the signer's, or zeros off chain.
        """
        return OFFCHAIN_ADDRESS if self._signer is None else self._signer.address

    def capabilities(self):
        """
        What we offer now: the default set plus what the connected
        transcoders report, less the withheld capabilities.

        @return: a C{Capabilities} message.
        """
        return orchestratorCapabilities(
            [t.capabilities for t in self._pool.transcoders], version=self.version, withheld=self.withheld)

    def getOrchestrator(self, request, call):
        """
        C{GetOrchestrator}: check the gateway's signature (on chain) and our
        capacity, then answer an C{OrchestratorInfo} with a fresh auth token.

        @return: a Deferred firing with the C{OrchestratorInfo}, or failing
            with L{GRPCError} (UNKNOWN, go-livepeer's text).
        """
        return Deferred.fromCoroutine(self._getOrchestrator(request))

    async def _getOrchestrator(self, request):
        sender = senderAddress(request.address)
        if self._signer is not None:
            if not self._signer.verify(sender, checksumAddress(sender).encode("ascii"), request.sig):
                self._log.warn("GetOrchestrator refused: " + SIG_CHECK_FAILED + " sender={sender}",
                               sender=checksumAddress(sender))
                raise refuse(SIG_CHECK_FAILED)
        token = self._tokens.issue()
        pool = self._pool
        if not pool.transcoders:
            self._log.debug("GetOrchestrator refused: no transcoder is connected")
            raise refuse(NO_TRANSCODERS)
        if pool.wouldExceedLimit(token.session_id):
            self._log.debug("GetOrchestrator refused: {sessions} sessions of {limit}",
                            sessions=pool.sessionCount, limit=pool.sessionLimit)
            raise refuse(ORCHESTRATOR_CAPPED)
        try:
            return await self.orchestratorInfo(sender, token)
        except PaymentError as e:
            raise GRPCError(StatusCode.UNKNOWN, e.message) from None

    def orchestratorInfo(self, sender, authToken, capabilities=None):
        """
        An C{OrchestratorInfo} for C{sender} carrying C{authToken}: what
        C{GetOrchestrator} answers, and what every segment's
        C{TranscodeResult.info} carries (fresh ticket parameters, the same
        token), as go-livepeer builds it.

        @param sender: the gateway's 20-byte address (zeros when unknown).
        @param authToken: the session's C{AuthToken}.
        @param capabilities: our L{capabilities} when the caller has just
            computed them (a segment, checked against them), so that they
            are not computed again; L{None} to compute them here.
        @return: a Deferred firing with the C{OrchestratorInfo}, or failing
            with L{PaymentError} when no ticket parameters can be made.
        """
        return Deferred.fromCoroutine(self._orchestratorInfo(sender, authToken, capabilities))

    async def _orchestratorInfo(self, sender, authToken, capabilities):
        ticketParams = await self._payments.ticketParams(sender)
        info = pb.OrchestratorInfo(
            transcoder=self.serviceURI,
            address=self.address,
            capabilities=self.capabilities() if capabilities is None else capabilities,
            auth_token=authToken,
        )
        if self._signer is not None:
            info.price_info.CopyFrom(priceInfo(getattr(self._payments, "price", 0)))
            if ticketParams is not None:
                info.ticket_params.CopyFrom(ticketParams)
        return info

    def ping(self, request, call):
        """
        C{Ping}: answer our signature of the value (go-livepeer's node
        C{Sign}), which is empty off chain.
        """
        self._log.info("Received Ping request")
        value = b"" if self._signer is None else self._signer.sign(request.value)
        return pb.PingPong(value=value)

    def endTranscodingSession(self, request, call):
        """
        C{EndTranscodingSession}: for a token we issued (expired or not, as
        in go-livepeer), end its session.

        @return: a Deferred firing with the empty response once
            C{endSession} is done.
        @raise GRPCError: UNKNOWN C{Invalid auth token}.
        """
        if not request.HasField("auth_token") or not self._tokens.isGenuine(request.auth_token):
            raise GRPCError(StatusCode.UNKNOWN, ENDING_INVALID_AUTH_TOKEN)
        d = maybeDeferred(self._endSession, request.auth_token.session_id)
        d.addCallback(lambda _: pb.EndTranscodingSessionResponse())
        return d
