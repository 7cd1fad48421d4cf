# -*- test-case-name: tests.test_chain_payments -*-
"""
What the C{POST /segment} handler calls to take payment on chain:
probabilistic micropayment tickets (off-chain, L{livepeer_tx.payments}).
"""

from fractions import Fraction

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import Logger
from zope.interface import implementer

from livepeer_tx.interfaces import IPaymentProcessor
from livepeer_tx.metrics import ChainMetrics
from livepeer_tx.payments import PaymentError

from eth_utils import to_checksum_address

from .redemption import PendingTicket
from .rpc import RpcError, RpcTransportError
from .tickets import Ticket, TicketError, SenderInfo, bytesInt, expectedValue
from .watcher import ChainNotReady

CHAIN_UNAVAILABLE = "chain node unavailable"


@implementer(IPaymentProcessor)
class TicketPayments:
    """
    On-chain mode: validate tickets, credit their expected value per session,
    debit price × encoded pixels, queue winning tickets durably.

    When the chain node cannot be read (not yet, or not any more) a payment
    is refused with 503 C{chain node unavailable} within about C{chainTimeout}
    seconds. A session's balance is dropped after C{balanceTTL} seconds
    without payment or debit; expired nonces and idle balances are swept
    after every chain poll of the watcher.

    @ivar price: wei per pixel (a L{Fraction}).
    @ivar balances: session id → credit in wei (a L{Fraction}).
    @ivar metrics: the L{ChainMetrics} it counts tickets and refusals in.
    """

    _log = Logger()

    def __init__(self, contracts, recipient, watcher, store, price, redeemGas=1_200_000,
                 reactor=None, chainTimeout=5.0, balanceTTL=600.0, metrics=None):
        self._contracts = contracts
        self.recipient = recipient
        self._watcher = watcher
        self.store = store
        self.price = Fraction(price)
        self.redeemGas = redeemGas
        self.balances = {}
        self._lastActivity = {}
        self._reactor = reactor if reactor is not None else watcher.reactor
        self.chainTimeout = chainTimeout
        self.balanceTTL = balanceTTL
        self.metrics = metrics if metrics is not None else ChainMetrics()
        watcher.addListener(self._chainPolled)

    def _chainPolled(self, watcher):
        self.expireIdleBalances()
        if watcher.lastL1Block is not None:
            d = self.recipient.forgetExpired(watcher.lastL1Block)
            d.addErrback(lambda f: self._log.failure("Cannot compact the ticket nonce file", f))

    def expireIdleBalances(self):
        """
        Forget the balances of sessions idle for more than C{balanceTTL} seconds.

        @return: the number of balances dropped.
        """
        oldest = self._reactor.seconds() - self.balanceTTL
        idle = [s for s, at in self._lastActivity.items() if at < oldest]
        for sessionId in idle:
            del self._lastActivity[sessionId]
            self.balances.pop(sessionId, None)
        return len(idle)

    def _touch(self, sessionId):
        self._lastActivity[sessionId] = self._reactor.seconds()

    async def _chain(self, what, awaitable):
        d = awaitable if isinstance(awaitable, Deferred) else Deferred.fromCoroutine(awaitable)
        d.addTimeout(self.chainTimeout, self._reactor)
        try:
            return await d
        except (RpcError, RpcTransportError, ChainNotReady, DeferredTimeout) as e:
            self.metrics.paymentErrors.inc()
            self._log.warn(
                "Cannot take payment: " + CHAIN_UNAVAILABLE + " ({what}: {error})",
                what=what,
                error=str(e) or type(e).__name__,
            )
            raise PaymentError(503, CHAIN_UNAVAILABLE) from None

    async def _senderInfo(self, sender):
        (deposit, withdrawRound), (reserve, claimed) = await self._contracts.ticketBroker.call(
            "getSenderInfo", sender
        )
        return SenderInfo(deposit, withdrawRound, reserve, claimed)

    def processPayment(self, payment, sessionId):
        """
        Validate and credit a payment's tickets.

        @param payment: the C{Payment} message (see L{livepeer_tx.payments.decodePayment}), or
            L{None} when the segment carried none.

        @return: a L{Deferred} that fires once every winning ticket and every
            accepted nonce is on disk, or fails with L{PaymentError}.
        """
        return Deferred.fromCoroutine(self._processPayment(payment, sessionId))

    async def _processPayment(self, payment, sessionId):
        if payment is None or not payment.HasField("ticket_params") or not payment.ticket_sender_params:
            return
        w = await self._chain("waiting for the first chain poll",
                              self._watcher.whenReady(self.chainTimeout))
        sender = bytes(payment.sender)
        if len(sender) != 20:
            self.metrics.paymentErrors.inc()
            raise PaymentError(400, "invalid ticket sender")
        if not await self._chain("isActiveTranscoder", w.isActive(self.recipient.address)):
            self.metrics.paymentErrors.inc()
            raise PaymentError(
                400,
                f"orchestrator {to_checksum_address(self.recipient.address)} is inactive in round "
                f"{w.currentRound}, cannot process payments",
            )
        senderInfo = await self._chain("getSenderInfo", self._senderInfo(sender))
        params = payment.ticket_params
        expiration = (
            payment.expiration_params
            if payment.HasField("expiration_params")
            else params.expiration_params
        )
        price = Fraction(0)
        if payment.HasField("expected_price") and payment.expected_price.pixelsPerUnit > 0:
            price = Fraction(payment.expected_price.pricePerUnit, payment.expected_price.pixelsPerUnit)
        error = None
        credit = Fraction(0)
        winners = []
        for senderParams in payment.ticket_sender_params:
            self.metrics.ticketsReceived.inc()
            ticket = Ticket.fromParams(params, sender, senderParams.sender_nonce, expiration)
            try:
                won, rand = self.recipient.validate(
                    ticket,
                    bytes(senderParams.sig),
                    bytes(params.seed),
                    bytesInt(params.expiration_block),
                    price,
                    senderInfo,
                    w.currentRound,
                    w.lastL1Block,
                )
            except TicketError as e:
                self._log.warn(
                    "Error receiving ticket sessionID={session} recipientRandHash={hash} "
                    "senderNonce={nonce}: {error}",
                    session=sessionId,
                    hash=ticket.recipientRandHash.hex(),
                    nonce=ticket.senderNonce,
                    error=e.message,
                )
                if e.fatal:
                    error = e
                    break
                # Like go-livepeer: after a non-fatal error the later tickets
                # are still received (winners queued) but not credited.
                error = error or e
                continue
            if error is None:
                credit += expectedValue(ticket.faceValue, ticket.winProb)
            if won:
                self.metrics.winningTicketsReceived.inc()
                self._log.info(
                    "Received winning ticket sessionID={session} faceValue={faceValue}",
                    session=sessionId,
                    faceValue=ticket.faceValue,
                )
                winners.append(
                    PendingTicket(ticket, bytes(senderParams.sig), rand, bytesInt(params.expiration_block))
                )
        for pending in winners:
            await self.store.add(pending)
        await self.recipient.nonces.save()
        if credit:
            self.balances[sessionId] = self.balances.get(sessionId, Fraction(0)) + credit
            self._touch(sessionId)
        if error is not None:
            self.metrics.paymentErrors.inc()
            raise PaymentError(400, error.message)

    def checkBalance(self, sessionId):
        """
        @raise PaymentError: 400 C{Insufficient balance} when the price is not
            zero and the session's credit is below one ticket's EV.
        """
        if self.price > 0 and self.balances.get(sessionId, 0) < self.recipient.ticketEV:
            raise PaymentError(400, "Insufficient balance")

    def debit(self, sessionId, encodedPixels):
        """
        Charge a session for C{encodedPixels} encoded pixels.
        """
        if self.price > 0:
            self.balances[sessionId] = self.balances.get(sessionId, Fraction(0)) - (
                self.price * encodedPixels
            )
            self._touch(sessionId)

    def ticketParams(self, senderAddress):
        """
        Fresh ticket parameters for a sender, for C{OrchestratorInfo}.

        @return: a L{Deferred} firing with L{lp_rpc_pb2.TicketParams}, or failing
            with L{PaymentError} (400 C{insufficient sender reserve}, 503
            C{chain node unavailable}).
        """
        return Deferred.fromCoroutine(self._ticketParams(bytes(senderAddress)))

    async def _ticketParams(self, sender):
        w = await self._chain("waiting for the first chain poll",
                              self._watcher.whenReady(self.chainTimeout))
        faceValue = winProb = 0
        if self.price > 0:
            info = await self._chain("getSenderInfo", self._senderInfo(sender))
            claimed = await self._chain("claimedReserve", self._contracts.ticketBroker.call(
                "claimedReserve", sender, self.recipient.address
            ))
            maxFloat = max(0, info.reserve // max(1, w.poolSize) - claimed)
            try:
                faceValue = self.recipient.faceValue(self.redeemGas * w.gasPrice, maxFloat)
            except TicketError as e:
                raise PaymentError(400, e.message) from None
            winProb = self.recipient.winProb(faceValue)
        return self.recipient.makeParams(
            sender, faceValue, winProb, self.price, w.lastL1Block, w.creationRound,
            w.creationRoundBlockHash,
        )
