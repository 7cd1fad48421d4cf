"""
Payment tickets on an in-memory chain (L{tests.fakechain.FakeChain}) and a
test clock: payment processing and bookkeeping, and winning tickets redeemed
(or classified) after a restart.
"""

import base64
import os
from fractions import Fraction

from twisted.trial.unittest import TestCase

from livepeer_tx.chain.payments import TicketPayments
from livepeer_tx.payments import OffchainPayments, PaymentError, decodePayment
from livepeer_tx.chain.redemption import REDEEMED, EXPIRED, Redeemer, TicketStore
from livepeer_tx.chain.tickets import (
    MAX_WIN_PROB, NONCES_FILE, SeenNonces, Ticket, TicketRecipient, bytesInt, expectedValue,
    loadRecipientKey, signTicket,
)
from livepeer_tx.chain.transactions import TransactionManager
from livepeer_tx.chain.watcher import ChainWatcher
from livepeer_tx.proto import lp_rpc_pb2

from tests.fakechain import CHAIN_ID, FakeChainTestCase, account
from tests.test_chain_reward import STAKE

EV = 10**16
PRICE_PER_UNIT, PIXELS_PER_UNIT = 3000, 2
POLL = 1.0


def paymentHeader(params, sender, nonces=(1,), badSig=False, other=None, badNonces=()):
    """
    A gateway's base64 C{Payment} header: tickets from C{params} signed by
    C{sender} (by C{other} where C{badSig}, or for the nonces in C{badNonces}).
    """
    ticketSenderParams = []
    for nonce in nonces:
        ticket = Ticket.fromParams(params, bytes.fromhex(sender.address[2:]), nonce)
        sig = signTicket(other if badSig or nonce in badNonces else sender, ticket)
        ticketSenderParams.append(lp_rpc_pb2.TicketSenderParams(sender_nonce=nonce, sig=sig))
    payment = lp_rpc_pb2.Payment(
        ticket_params=params,
        sender=bytes.fromhex(sender.address[2:]),
        expiration_params=params.expiration_params,
        ticket_sender_params=ticketSenderParams,
        expected_price=lp_rpc_pb2.PriceInfo(pricePerUnit=PRICE_PER_UNIT, pixelsPerUnit=PIXELS_PER_UNIT),
    )
    return base64.b64encode(payment.SerializeToString()).decode("ascii")


def signedPayment(*args, **kwargs):
    """
    The C{Payment} message a gateway's header carries (through base64 and back).
    """
    return decodePayment(paymentHeader(*args, **kwargs))


class PaymentTests(FakeChainTestCase):
    """
    L{TicketPayments} and L{Redeemer} for the orchestrator; C{account(2)} is
    a funded broadcaster.
    """

    roundLength = 50

    def setUp(self):
        super().setUp()
        self.sender = account(2)
        self.dataDir = self.mktemp()
        os.makedirs(self.dataDir)

    def setUpPayments(self, active=True, **kw):
        """
        Register the orchestrator, fund the sender, start a chain watcher
        polling every L{POLL} seconds, and return payments on them.
        """
        self.chain.registerTranscoder(self.orch, STAKE, active=active)
        self.chain.fundSender(self.sender, 10**18, 10**18)
        self.watcher = ChainWatcher(self.clock, self.contracts, interval=POLL)
        self.watcher.startService()
        self.stopAfterTest(self.watcher)
        self.successResultOf(self.watcher.ready)
        self.store = TicketStore(self.clock, self.dataDir)
        return self.makePayments(**kw)

    def makePayments(self, **kw):
        """
        L{TicketPayments} with the recipient key and nonce file in the data directory.
        """
        recipient = TicketRecipient(
            self.orch.address, loadRecipientKey(self.dataDir), ticketEV=EV, maxFaceValue=EV,
            nonces=SeenNonces(self.clock, os.path.join(self.dataDir, NONCES_FILE)),
        )
        return TicketPayments(
            self.contracts, recipient, self.watcher, self.store,
            Fraction(PRICE_PER_UNIT, PIXELS_PER_UNIT), reactor=self.clock, **kw
        )

    def redeemer(self, store):
        """
        A L{Redeemer} for C{store}, polling every L{POLL} seconds (not started).
        """
        tx = TransactionManager(self.clock, self.rpc, self.orch, CHAIN_ID, pollInterval=POLL)
        redeemer = Redeemer(self.clock, self.contracts, tx, store, self.watcher, interval=POLL)
        self.stopAfterTest(redeemer)
        return redeemer

    def issue(self, payments, winProb=None):
        """
        Ticket parameters for the sender, optionally reissued with another
        win probability (same recipientRand rules).
        """
        params = self.successResultOf(payments.ticketParams(bytes.fromhex(self.sender.address[2:])))
        if winProb is not None:
            w = self.watcher
            params = payments.recipient.makeParams(
                bytes.fromhex(self.sender.address[2:]), bytesInt(params.face_value), winProb,
                Fraction(PRICE_PER_UNIT, PIXELS_PER_UNIT), w.lastL1Block, w.creationRound,
                w.creationRoundBlockHash,
            )
        return params

    def pay(self, payments, payment, sessionId):
        """
        Process C{payment}, which must finish without the clock moving.
        """
        return self.successResultOf(payments.processPayment(payment, sessionId))

    def refused(self, payments, payment, sessionId):
        """
        The L{PaymentError} C{payment} is refused with (at once).
        """
        return self.failureResultOf(payments.processPayment(payment, sessionId), PaymentError).value

    def test_winningTicketRedeemedAfterRestart(self):
        """
        A paid ticket credits its EV to the session (checkBalance passes,
        debit charges price × pixels); the winning ticket is queued on disk,
        read back by a new store after a restart, and redeemed once its
        parameters expire: the ticket is used on chain, the orchestrator's
        fees grow by the face value, and the queue is empty on disk.
        """
        payments = self.setUpPayments()
        params = self.issue(payments)
        self.assertEqual(bytesInt(params.face_value), EV)
        self.assertEqual(bytesInt(params.win_prob), MAX_WIN_PROB)
        with self.assertRaises(PaymentError) as caught:
            payments.checkBalance("s1")
        self.assertEqual((caught.exception.status, caught.exception.message), (400, "Insufficient balance"))
        self.pay(payments, signedPayment(params, self.sender), "s1")
        self.assertEqual(payments.balances["s1"], EV)
        payments.checkBalance("s1")
        payments.debit("s1", 1000)
        self.assertEqual(payments.balances["s1"], EV - 1000 * Fraction(PRICE_PER_UNIT, PIXELS_PER_UNIT))
        self.assertEqual(len(self.store.pending), 1)
        # Restart: a new store reads the queue back from disk.
        store = TicketStore(self.clock, self.dataDir)
        self.assertEqual(list(store.pending), list(self.store.pending))
        redeemer = self.redeemer(store)
        redeemer.startService()
        self.advance(3 * POLL)
        self.assertEqual(len(store.pending), 1)
        self.chain.mineTo(bytesInt(params.expiration_block) + 1)
        self.advance(2 * POLL)
        self.assertEqual(store.pending, {})
        ticketId = next(iter(self.store.pending))
        self.assertEqual(store.outcomes[ticketId], REDEEMED)
        self.assertTrue(self.chain.call("TicketBroker", "usedTickets", bytes.fromhex(ticketId[2:])))
        self.assertEqual(self.chain.call("BondingManager", "pendingFees", self.orch.address, 0), EV)
        self.assertEqual(TicketStore(self.clock, self.dataDir).pending, {})

    def test_expiredTicketClassified(self):
        """
        A winning ticket whose creation round is past the validity period is
        finished as C{expired} by one redemption pass, without a transaction:
        no fees reach the orchestrator.
        """
        payments = self.setUpPayments()
        params = self.issue(payments)
        self.pay(payments, signedPayment(params, self.sender), "s1")
        self.chain.advanceRounds(2)
        self.advance(POLL)
        self.assertEqual(self.watcher.currentRound, self.chain.currentRound())
        redeemer = self.redeemer(self.store)
        self.assertEqual(self.finished(redeemer.redeemDue()), 1)
        self.assertEqual(list(self.store.outcomes.values()), [EXPIRED])
        self.assertEqual(self.chain.call("BondingManager", "pendingFees", self.orch.address, 0), 0)
        self.assertNotIn("eth_sendRawTransaction", self.chain.requests)

    def test_redemptionRetriedAfterNodeOutage(self):
        """
        A redemption pass while the node is down finishes nothing and keeps
        the ticket queued; once the node is back the ticket is redeemed.
        """
        payments = self.setUpPayments()
        params = self.issue(payments)
        self.pay(payments, signedPayment(params, self.sender), "s1")
        self.chain.mineTo(bytesInt(params.expiration_block) + 1)
        self.advance(POLL)
        redeemer = self.redeemer(self.store)
        self.chain.stop()
        self.assertEqual(self.finished(redeemer.redeemDue()), 0)
        self.assertEqual(len(self.store.pending), 1)
        self.chain.start()
        self.assertEqual(self.finished(redeemer.redeemDue()), 1)
        self.assertEqual(list(self.store.outcomes.values()), [REDEEMED])

    def test_paymentRefusals(self):
        """
        Undecodable headers (402), a bad signature and a replayed nonce are
        refused with go-livepeer's messages and credit nothing; a sender
        without reserve gets no parameters; a sender unlocking is still paid
        in the round it asked, and refused ("set to unlock soon") once its
        withdraw round is next.
        """
        payments = self.setUpPayments()
        params = self.issue(payments)
        for header, status, message in [
            ("!!!", 402, "base64 decode error"),
            (base64.b64encode(b"\xff\xff\xff").decode(), 402, "protobuf unmarshal error"),
            (paymentHeader(params, self.sender, badSig=True, other=account(3)), 400, "invalid ticket signature"),
        ]:
            with self.assertRaises(PaymentError) as caught:
                self.failureResultOf(payments.processPayment(decodePayment(header), "s2")).raiseException()
            self.assertEqual(caught.exception.status, status)
            self.assertIn(message, caught.exception.message)
        self.pay(payments, signedPayment(params, self.sender, nonces=(5,)), "s2")
        error = self.refused(payments, signedPayment(params, self.sender, nonces=(5,)), "s2")
        self.assertIn("already seen", error.message)
        self.assertEqual(payments.balances["s2"], EV)
        # A sender without funds gets no ticket parameters.
        failure = self.failureResultOf(payments.ticketParams(bytes.fromhex(account(4).address[2:])), PaymentError)
        self.assertEqual(failure.value.message, "insufficient sender reserve")
        # Unlocking in the round after next: still accepted; one round later, refused.
        self.chain.transact("TicketBroker", "unlock", sender=self.sender)
        self.pay(payments, signedPayment(params, self.sender, nonces=(6,)), "s2")
        self.chain.advanceToNextRound()
        self.advance(POLL)
        self.assertEqual(self.watcher.currentRound, self.chain.currentRound())
        error = self.refused(payments, signedPayment(params, self.sender, nonces=(7,)), "s2")
        self.assertIn("is set to unlock soon", error.message)

    def test_nodeDownGives503Quickly(self):
        """
        With the node refusing connections, a payment and a parameter
        request fail at once with 503 C{chain node unavailable}.
        """
        payments = self.setUpPayments(chainTimeout=1.0)
        params = self.issue(payments)
        self.chain.stop()
        error = self.refused(payments, signedPayment(params, self.sender), "s1")
        self.assertEqual((error.status, error.message), (503, "chain node unavailable"))
        failure = self.failureResultOf(payments.ticketParams(bytes.fromhex(self.sender.address[2:])), PaymentError)
        self.assertEqual(failure.value.status, 503)

    def test_hangingNodeGives503AfterChainTimeout(self):
        """
        With the node taking requests and never answering, a payment is
        refused with 503 C{chain node unavailable} once C{chainTimeout} has
        passed on the clock, and not before.
        """
        payments = self.setUpPayments(chainTimeout=3.0)
        params = self.issue(payments)
        self.chain.hang()
        d = payments.processPayment(signedPayment(params, self.sender, nonces=(9,)), "s1")
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        error = self.failureResultOf(d, PaymentError).value
        self.assertEqual((error.status, error.message), (503, "chain node unavailable"))

    def test_watcherNeverReadyGives503(self):
        """
        Before the watcher's first poll (never, here) a payment waits
        C{chainTimeout} seconds, then is refused with 503; the watcher's
        C{ready} is not consumed by the wait.
        """
        self.watcher = ChainWatcher(self.clock, self.contracts, interval=POLL)  # never started
        self.store = TicketStore(self.clock, self.dataDir)
        payments = self.makePayments(chainTimeout=2.0)
        params = lp_rpc_pb2.TicketParams(recipient=bytes.fromhex(self.orch.address[2:]))
        d = payments.processPayment(signedPayment(params, self.sender), "s1")
        self.assertNoResult(d)
        self.clock.advance(2.0)
        error = self.failureResultOf(d, PaymentError).value
        self.assertEqual((error.status, error.message), (503, "chain node unavailable"))
        self.assertFalse(self.watcher.ready.called)

    def test_inactiveOrchestratorRefused(self):
        """
        An orchestrator that is not active refuses every payment with 400
        and go-livepeer's message naming it and the round; nothing is
        credited and no nonce is remembered.
        """
        payments = self.setUpPayments(active=False)
        params = self.issue(payments)
        for nonce in (1, 2):
            error = self.refused(payments, signedPayment(params, self.sender, nonces=(nonce,)), "s1")
            self.assertEqual(error.status, 400)
            self.assertEqual(
                error.message,
                f"orchestrator {self.orch.address} is inactive in round "
                f"{self.chain.currentRound()}, cannot process payments",
            )
        self.assertEqual(payments.balances, {})
        self.assertEqual(len(payments.recipient.nonces), 0)

    def test_invalidSignatureIsNotFatal(self):
        """
        A ticket with a bad signature is refused but later tickets of the
        same payment are received (nonce remembered, winner queued) without
        credit; a replayed nonce is fatal and stops at once.
        """
        payments = self.setUpPayments()
        params = self.issue(payments, winProb=MAX_WIN_PROB)
        ev = expectedValue(bytesInt(params.face_value), MAX_WIN_PROB)
        error = self.refused(payments, signedPayment(params, self.sender, nonces=(1, 2, 3), badNonces=(2,),
                                                     other=account(3)), "s1")
        self.assertEqual(error.message, "invalid ticket signature")
        # Ticket 1 credited; 2 refused; 3 received (nonce seen, winner queued) but not credited.
        self.assertEqual(payments.balances["s1"], ev)
        self.assertEqual(payments.recipient.nonces.nonces(bytes(params.recipient_rand_hash)), {1, 3})
        self.assertEqual(sorted(p.ticket.senderNonce for p in self.store.pending.values()), [1, 3])
        # A fatal error (a replayed nonce) stops at once: nonce 5 is never read.
        error = self.refused(payments, signedPayment(params, self.sender, nonces=(4, 3, 5)), "s1")
        self.assertIn("already seen", error.message)
        self.assertEqual(payments.balances["s1"], 2 * ev)
        self.assertEqual(payments.recipient.nonces.nonces(bytes(params.recipient_rand_hash)), {1, 3, 4})

    def test_noncesSurviveRestartAndExpire(self):
        """
        Seen nonces survive a restart (a replay after it is refused and not
        credited); once the parameters expire, the watcher's polls make every
        instance forget them, and the file is rewritten when mostly expired.
        """
        payments = self.setUpPayments()
        params = self.issue(payments)
        self.pay(payments, signedPayment(params, self.sender, nonces=(1, 2)), "s1")
        # Restart: the same non-winning tickets are not credited again.
        restarted = self.makePayments()
        error = self.refused(restarted, signedPayment(params, self.sender, nonces=(2,)), "s1")
        self.assertIn("already seen", error.message)
        self.assertNotIn("s1", restarted.balances)
        self.pay(restarted, signedPayment(params, self.sender, nonces=(3,)), "s1")
        # Once the parameters expire, the watcher's polls make both forget them.
        self.chain.mineTo(bytesInt(params.expiration_block) + 1)
        self.advance(POLL)
        self.assertEqual((len(restarted.recipient.nonces), len(payments.recipient.nonces)), (0, 0))
        self.assertEqual(len(SeenNonces(self.clock, os.path.join(self.dataDir, NONCES_FILE))), 3)
        # The file is rewritten once most of its records are expired.
        nonces = restarted.recipient.nonces
        nonces.compactSlack = 0
        self.successResultOf(nonces.forgetExpired(self.watcher.lastL1Block))
        self.assertEqual(len(SeenNonces(self.clock, os.path.join(self.dataDir, NONCES_FILE))), 0)


class OffchainPaymentTests(TestCase):
    def test_offchain(self):
        """
        Off chain, a segment without payment is accepted, any balance check
        passes and debits are ignored; an undecodable header is still 402.
        """
        payments = OffchainPayments()
        self.assertIsNone(self.successResultOf(payments.processPayment(None, "s")))
        with self.assertRaises(PaymentError) as caught:
            decodePayment("garbage!")
        self.assertEqual(caught.exception.status, 402)
        payments.checkBalance("s")
        payments.debit("s", 10**9)
