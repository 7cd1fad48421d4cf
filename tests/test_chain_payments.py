"""
Payment tickets against the stand-ins: the hash cross-check, payment
processing, and a winning ticket redeemed on chain after a restart.
"""

import base64
import os
from fractions import Fraction

from twisted.internet import reactor

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

from tests.test_chain_reward import STAKE, ChainTestCase, deferred, waitFor

EV = 10**16
PRICE_PER_UNIT, PIXELS_PER_UNIT = 3000, 2


def paymentHeader(params, sender, nonces=(1,), badSig=False, other=None, badNonces=()):
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


class PaymentTests(ChainTestCase):
    roundLength = 50

    async def setUpPayments(self, dataDir, active=True, **kw):
        self.sender = self.anvil.account(2)
        self.chain.registerTranscoder(self.orch.address, STAKE, active=active)
        self.chain.fundSender(self.sender, 10**18, 10**18)
        await self.contracts.resolve()
        self.watcher = ChainWatcher(reactor, self.contracts, interval=0.1)
        self.watcher.startService()
        self.addCleanup(self.watcher.stopService)
        await self.watcher.ready
        self.store = TicketStore(reactor, dataDir)
        return self.makePayments(dataDir, **kw)

    def makePayments(self, dataDir, **kw):
        recipient = TicketRecipient(
            self.orch.address, loadRecipientKey(dataDir), ticketEV=EV, maxFaceValue=EV,
            nonces=SeenNonces(reactor, os.path.join(dataDir, NONCES_FILE)),
        )
        return TicketPayments(
            self.contracts, recipient, self.watcher, self.store,
            Fraction(PRICE_PER_UNIT, PIXELS_PER_UNIT), reactor=reactor, **kw
        )

    async def redeemer(self, store):
        tx = TransactionManager(reactor, self.rpc, self.orch, await self.rpc.chainId(), pollInterval=0.05)
        redeemer = Redeemer(reactor, self.contracts, tx, store, self.watcher, interval=0.1)
        self.addCleanup(redeemer.stopService)
        return redeemer

    @deferred
    async def test_ticketHashMatchesContract(self):
        await self.contracts.resolve()
        for aux in ((0, b"\0" * 32), (7, b"\x42" * 32)):
            t = Ticket(b"\x01" * 20, b"\x02" * 20, 10**18, MAX_WIN_PROB, 2**32 - 1, b"\x03" * 32, *aux)
            onChain = await self.contracts.ticketBroker.call("getTicketHash", t.asAbiTuple())
            self.assertEqual(onChain, t.hash())

    @deferred
    async def test_winningTicketRedeemedAfterRestart(self):
        dataDir = self.mktemp()
        os.makedirs(dataDir)
        payments = await self.setUpPayments(dataDir)
        params = await payments.ticketParams(bytes.fromhex(self.sender.address[2:]))
        self.assertEqual(bytesInt(params.face_value), EV)
        self.assertEqual(bytesInt(params.win_prob), MAX_WIN_PROB)
        with self.assertRaises(PaymentError) as caught:
            payments.checkBalance("s1")
        self.assertEqual((caught.exception.status, caught.exception.message), (400, "Insufficient balance"))
        await payments.processPayment(signedPayment(params, self.sender), "s1")
        self.assertEqual(payments.balances["s1"], EV)
        payments.checkBalance("s1")
        payments.debit("s1", 1000)
        self.assertEqual(payments.balances["s1"], EV - 1000 * Fraction(PRICE_PER_UNIT, PIXELS_PER_UNIT))
        self.assertEqual(len(self.store.pending), 1)
        # Restart: a new store reads the queue back from disk.
        store = TicketStore(reactor, dataDir)
        self.assertEqual(list(store.pending), list(self.store.pending))
        redeemer = await self.redeemer(store)
        redeemer.startService()
        expiration = bytesInt(params.expiration_block)
        self.anvil.mineTo(expiration + 1)
        await waitFor(lambda: not store.pending)
        ticketId = next(iter(self.store.pending))
        self.assertEqual(store.outcomes[ticketId], REDEEMED)
        self.assertTrue(self.chain.call("TicketBroker", "usedTickets", bytes.fromhex(ticketId[2:])))
        self.assertEqual(self.chain.call("BondingManager", "pendingFees", self.orch.address, 0), EV)
        self.assertEqual(TicketStore(reactor, dataDir).pending, {})

    @deferred
    async def test_expiredTicketClassified(self):
        dataDir = self.mktemp()
        os.makedirs(dataDir)
        payments = await self.setUpPayments(dataDir)
        params = await payments.ticketParams(bytes.fromhex(self.sender.address[2:]))
        await payments.processPayment(signedPayment(params, self.sender), "s1")
        self.chain.advanceRounds(2)
        await waitFor(lambda: self.watcher.currentRound == self.chain.currentRound())
        redeemer = await self.redeemer(self.store)
        self.assertEqual(await redeemer.redeemDue(), 1)
        self.assertEqual(list(self.store.outcomes.values()), [EXPIRED])
        self.assertEqual(self.chain.call("BondingManager", "pendingFees", self.orch.address, 0), 0)

    @deferred
    async def test_paymentRefusals(self):
        dataDir = self.mktemp()
        os.makedirs(dataDir)
        payments = await self.setUpPayments(dataDir)
        params = await payments.ticketParams(bytes.fromhex(self.sender.address[2:]))
        for header, status, message in [
            ("!!!", 402, "base64 decode error"),
            (base64.b64encode(b"\xff\xff\xff").decode(), 402, "protobuf unmarshal error"),
            (paymentHeader(params, self.sender, badSig=True, other=self.anvil.account(3)), 400,
             "invalid ticket signature"),
        ]:
            with self.assertRaises(PaymentError) as caught:
                await payments.processPayment(decodePayment(header), "s2")
            self.assertEqual(caught.exception.status, status)
            self.assertIn(message, caught.exception.message)
        await payments.processPayment(signedPayment(params, self.sender, nonces=(5,)), "s2")
        with self.assertRaises(PaymentError) as caught:
            await payments.processPayment(signedPayment(params, self.sender, nonces=(5,)), "s2")
        self.assertIn("already seen", caught.exception.message)
        self.assertEqual(payments.balances["s2"], EV)
        # A sender without funds gets no ticket parameters.
        with self.assertRaises(PaymentError) as caught:
            await payments.ticketParams(bytes.fromhex(self.anvil.accounts[4][2:]))
        self.assertEqual(caught.exception.message, "insufficient sender reserve")
        # Unlocking in the round after next: still accepted; one round later, refused.
        self.chain.transact(self.chain.contract("TicketBroker").functions.unlock(), self.sender)
        await payments.processPayment(signedPayment(params, self.sender, nonces=(6,)), "s2")
        self.chain.advanceToNextRound()
        await waitFor(lambda: self.watcher.currentRound == self.chain.currentRound())
        with self.assertRaises(PaymentError) as caught:
            await payments.processPayment(signedPayment(params, self.sender, nonces=(7,)), "s2")
        self.assertIn("is set to unlock soon", caught.exception.message)

    def test_offchain(self):
        payments = OffchainPayments()
        self.assertIsNone(self.successResultOf(payments.processPayment(None, "s")))
        with self.assertRaises(PaymentError) as caught:
            decodePayment("garbage!")
        self.assertEqual(caught.exception.status, 402)
        payments.checkBalance("s")
        payments.debit("s", 10**9)

    async def issue(self, payments, winProb=None):
        params = await payments.ticketParams(bytes.fromhex(self.sender.address[2:]))
        if winProb is not None:
            # Reissue with another win probability (same recipientRand rules).
            w = self.watcher
            params = payments.recipient.makeParams(
                bytes.fromhex(self.sender.address[2:]), bytesInt(params.face_value), winProb,
                Fraction(PRICE_PER_UNIT, PIXELS_PER_UNIT), w.lastL1Block, w.creationRound,
                w.creationRoundBlockHash,
            )
        return params

    @deferred
    async def test_nodeDownGives503Quickly(self):
        dataDir = self.mktemp()
        os.makedirs(dataDir)
        payments = await self.setUpPayments(dataDir, chainTimeout=1.0)
        params = await self.issue(payments)
        self.anvil.stop()
        started = reactor.seconds()
        with self.assertRaises(PaymentError) as caught:
            await payments.processPayment(signedPayment(params, self.sender), "s1")
        self.assertEqual((caught.exception.status, caught.exception.message),
                         (503, "chain node unavailable"))
        self.assertLess(reactor.seconds() - started, 10)
        with self.assertRaises(PaymentError) as caught:
            await payments.ticketParams(bytes.fromhex(self.sender.address[2:]))
        self.assertEqual(caught.exception.status, 503)

    @deferred
    async def test_watcherNeverReadyGives503(self):
        dataDir = self.mktemp()
        os.makedirs(dataDir)
        self.watcher = ChainWatcher(reactor, self.contracts, interval=0.1)  # never started
        self.store = TicketStore(reactor, dataDir)
        payments = self.makePayments(dataDir, chainTimeout=0.2)
        sender = self.anvil.account(2)
        params = lp_rpc_pb2.TicketParams(recipient=bytes.fromhex(self.orch.address[2:]))
        with self.assertRaises(PaymentError) as caught:
            await payments.processPayment(signedPayment(params, sender), "s1")
        self.assertEqual((caught.exception.status, caught.exception.message),
                         (503, "chain node unavailable"))
        self.assertFalse(self.watcher.ready.called)

    @deferred
    async def test_inactiveOrchestratorRefused(self):
        dataDir = self.mktemp()
        os.makedirs(dataDir)
        payments = await self.setUpPayments(dataDir, active=False)
        params = await self.issue(payments)
        for nonce in (1, 2):
            with self.assertRaises(PaymentError) as caught:
                await payments.processPayment(signedPayment(params, self.sender, nonces=(nonce,)), "s1")
            self.assertEqual(caught.exception.status, 400)
            self.assertEqual(
                caught.exception.message,
                f"orchestrator {self.orch.address} is inactive in round "
                f"{self.chain.currentRound()}, cannot process payments",
            )
        self.assertEqual(payments.balances, {})
        self.assertEqual(len(payments.recipient.nonces), 0)

    @deferred
    async def test_invalidSignatureIsNotFatal(self):
        dataDir = self.mktemp()
        os.makedirs(dataDir)
        payments = await self.setUpPayments(dataDir)
        params = await self.issue(payments, winProb=MAX_WIN_PROB)
        ev = expectedValue(bytesInt(params.face_value), MAX_WIN_PROB)
        with self.assertRaises(PaymentError) as caught:
            await payments.processPayment(
                signedPayment(params, self.sender, nonces=(1, 2, 3), badNonces=(2,),
                              other=self.anvil.account(3)), "s1")
        self.assertEqual(caught.exception.message, "invalid ticket signature")
        # Ticket 1 credited; 2 refused; 3 received (nonce seen, winner queued) but not credited.
        self.assertEqual(payments.balances["s1"], ev)
        self.assertEqual(payments.recipient.nonces.nonces(bytes(params.recipient_rand_hash)), {1, 3})
        self.assertEqual(sorted(p.ticket.senderNonce for p in self.store.pending.values()), [1, 3])
        # A fatal error (a replayed nonce) stops at once: nonce 5 is never read.
        with self.assertRaises(PaymentError) as caught:
            await payments.processPayment(
                signedPayment(params, self.sender, nonces=(4, 3, 5)), "s1")
        self.assertIn("already seen", caught.exception.message)
        self.assertEqual(payments.balances["s1"], 2 * ev)
        self.assertEqual(payments.recipient.nonces.nonces(bytes(params.recipient_rand_hash)), {1, 3, 4})

    @deferred
    async def test_noncesSurviveRestartAndExpire(self):
        dataDir = self.mktemp()
        os.makedirs(dataDir)
        payments = await self.setUpPayments(dataDir)
        params = await self.issue(payments)
        await payments.processPayment(signedPayment(params, self.sender, nonces=(1, 2)), "s1")
        # Restart: the same non-winning tickets are not credited again.
        restarted = self.makePayments(dataDir)
        with self.assertRaises(PaymentError) as caught:
            await restarted.processPayment(signedPayment(params, self.sender, nonces=(2,)), "s1")
        self.assertIn("already seen", caught.exception.message)
        self.assertNotIn("s1", restarted.balances)
        await restarted.processPayment(signedPayment(params, self.sender, nonces=(3,)), "s1")
        # Once the parameters expire, the watcher's polls make both forget them.
        self.anvil.mineTo(bytesInt(params.expiration_block) + 1)
        await waitFor(lambda: len(restarted.recipient.nonces) == 0 and len(payments.recipient.nonces) == 0)
        self.assertEqual(len(SeenNonces(reactor, os.path.join(dataDir, NONCES_FILE))), 3)
        # The file is rewritten once most of its records are expired.
        nonces = restarted.recipient.nonces
        nonces.compactSlack = 0
        await nonces.forgetExpired(self.watcher.lastL1Block)
        self.assertEqual(len(SeenNonces(reactor, os.path.join(dataDir, NONCES_FILE))), 0)
