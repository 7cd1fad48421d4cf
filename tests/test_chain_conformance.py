"""
The conformance suite: the chain code's encodings against the contracts, one
test per contract function family, run twice with the same assertions: on
anvil with the compiled stand-ins (which proves our selectors, tuple
layouts, event decoding and revert-reason decoding against real EVM
contracts), and on L{tests.fakechain.FakeChain} (which proves that the
in-memory chain the other chain tests run on answers as those contracts do).
"""

import os
from fractions import Fraction

from twisted.internet import reactor
from twisted.trial.unittest import SkipTest, TestCase

from livepeer_tx.chain.contracts import NEW_ROUND_EVENT, LivepeerContracts
from livepeer_tx.chain.redemption import REDEEMED, Redeemer, TicketStore
from livepeer_tx.chain.reward import (
    ALREADY_CALLED, NOT_ACTIVE, NOT_INITIALIZED, PAUSED, ROUND_ALREADY_INITIALIZED, RewardService,
)
from livepeer_tx.chain.payments import TicketPayments
from livepeer_tx.chain.rpc import JsonRpcClient, RpcError
from livepeer_tx.chain.tickets import MAX_WIN_PROB, Ticket, TicketRecipient, bytesInt, loadRecipientKey
from livepeer_tx.chain.transactions import TransactionManager
from livepeer_tx.chain.watcher import ChainWatcher

from tests.chainharness import ANVIL_MISSING, Anvil, deployStandIns, ensureAnvil
from tests.fakechain import CHAIN_ID, FakeChain, account
from tests.test_chain_payments import EV, PIXELS_PER_UNIT, PRICE_PER_UNIT, signedPayment

STAKE = 1000 * 10**18
ROUND_LENGTH = 50


class Conformance:
    """
    The scenarios. A subclass's C{setUp} provides C{self.chain} (with the
    test controls both L{tests.chainharness.Deployment} and L{FakeChain}
    have), C{self.reactor} and C{self.rpc}; C{account(1)} is the
    orchestrator, C{account(2)} a broadcaster, C{account(3)} a registered
    transcoder outside the active set.
    """

    def setUpContracts(self):
        """
        Accounts, contracts and the orchestrator's transaction manager.
        """
        self.orch, self.sender, self.idle = account(1), account(2), account(3)
        self.contracts = LivepeerContracts(self.rpc, self.chain.controller)
        self.tx = TransactionManager(self.reactor, self.rpc, self.orch, CHAIN_ID, pollInterval=0.05)

    async def assertReverts(self, reason, call):
        """
        C{call} (an awaitable) fails with an L{RpcError} whose decoded revert
        reason is C{reason}.
        """
        with self.assertRaises(RpcError) as caught:
            await call
        self.assertEqual(caught.exception.revertReason, reason)

    async def test_controllerAndRoundsManager(self):
        """
        Controller.getContract resolves every contract; the watcher's
        RoundsManager reads (blockNum, currentRound, lastInitializedRound,
        blockHashForRound) and TicketBroker.ticketValidityPeriod decode to
        the chain's values; initializeRound's NewRound event decodes to the
        round and its stored block hash; the revert strings of a second
        initializeRound and of a paused system decode.
        """
        await self.contracts.resolve()
        watcher = ChainWatcher(self.reactor, self.contracts)
        await watcher.refresh()
        current = self.chain.currentRound()
        self.assertEqual(watcher.lastL1Block, await self.rpc.blockNumber())
        self.assertEqual((watcher.currentRound, watcher.lastInitializedRound, watcher.creationRound),
                         (current, current, current))
        stored = bytes(self.chain.call("RoundsManager", "blockHashForRound", current))
        self.assertEqual(watcher.creationRoundBlockHash, stored)
        self.assertNotEqual(stored, b"\x00" * 32)
        self.assertEqual(watcher.ticketValidityPeriod, 2)
        self.assertFalse(await self.contracts.controller.call("paused"))
        rm = self.contracts.roundsManager
        following = self.chain.advanceToNextRound(initialize=False)
        self.assertFalse(await rm.call("currentRoundInitialized"))
        receipt = await self.tx.send(rm.address, rm.encode("initializeRound"), description="initializeRound")
        [(round_, blockHash)] = NEW_ROUND_EVENT.find(receipt, rm.address)
        self.assertEqual((round_, blockHash), (following, await rm.call("blockHashForRound", following)))
        self.assertTrue(await rm.call("currentRoundInitialized"))
        await self.assertReverts(ROUND_ALREADY_INITIALIZED, rm.call("initializeRound", sender=self.orch.address))
        self.chain.advanceToNextRound(initialize=False)
        self.chain.pause()
        self.assertTrue(await self.contracts.controller.call("paused"))
        await self.assertReverts(PAUSED, rm.call("initializeRound", sender=self.orch.address))

    async def test_bondingManagerReward(self):
        """
        The reward service's reads (getTranscoder's tuple, isActiveTranscoder,
        the pre-flight reward call) and its Reward-event check work on the
        contract: C{rewarded}, then C{done}, C{notActive} for a transcoder
        outside the active set, C{notInitialized} and C{paused}; each revert
        string of reward decodes; transcoderStatus and the pool size read back.
        """
        self.chain.registerTranscoder(self.orch.address, STAKE)
        self.chain.registerTranscoder(self.idle.address, STAKE, active=False)
        await self.contracts.resolve()
        bm = self.contracts.bondingManager
        self.assertEqual([await bm.call("transcoderStatus", a.address) for a in (self.orch, self.idle, self.sender)],
                         [1, 1, 0])
        self.assertEqual(await bm.call("getTranscoderPoolSize"), 1)
        service = RewardService(self.reactor, self.contracts, self.tx)
        idle = RewardService(self.reactor, self.contracts, TransactionManager(
            self.reactor, self.rpc, self.idle, CHAIN_ID, pollInterval=0.05))
        current = self.chain.currentRound()
        self.assertEqual(await service.checkOnce(), "rewarded")
        self.assertEqual((await bm.call("getTranscoder", self.orch.address))[0], current)
        self.assertEqual(self.chain.call("BondingManager", "getTranscoder", self.orch.address)[0], current)
        self.assertEqual(await service.checkOnce(), "done")
        await self.assertReverts(ALREADY_CALLED, bm.call("reward", sender=self.orch.address))
        self.assertEqual(await idle.checkOnce(), "notActive")
        await self.assertReverts(NOT_ACTIVE, bm.call("reward", sender=self.idle.address))
        self.chain.advanceToNextRound(initialize=False)
        self.assertEqual(await service.checkOnce(), "notInitialized")
        await self.assertReverts(NOT_INITIALIZED, bm.call("reward", sender=self.orch.address))
        self.chain.pause()
        self.assertEqual(await service.checkOnce(), "paused")
        await self.assertReverts(PAUSED, bm.call("reward", sender=self.orch.address))

    async def test_ticketBrokerViews(self):
        """
        TicketBroker.getTicketHash equals our ticket hash (two auxData
        values), and getSenderInfo's nested tuples, claimedReserve and
        usedTickets decode to a funded sender's state.
        """
        await self.contracts.resolve()
        tb = self.contracts.ticketBroker
        for aux in ((0, b"\0" * 32), (7, b"\x42" * 32)):
            t = Ticket(b"\x01" * 20, b"\x02" * 20, 10**18, MAX_WIN_PROB, 2**32 - 1, b"\x03" * 32, *aux)
            self.assertEqual(await tb.call("getTicketHash", t.asAbiTuple()), t.hash())
        self.chain.fundSender(self.sender, 10**18, 2 * 10**18)
        self.assertEqual(await tb.call("getSenderInfo", self.sender.address), ((10**18, 0), (2 * 10**18, 0)))
        self.assertEqual(await tb.call("claimedReserve", self.sender.address, self.orch.address), 0)
        self.assertFalse(await tb.call("usedTickets", b"\x05" * 32))

    async def test_redeemWinningTicket(self):
        """
        A winning ticket issued and validated by our code, half covered by
        the deposit, is redeemed with our redeemWinningTicket encoding: its
        WinningTicketRedeemed and WinningTicketTransfer events decode (the
        face value reaches the redeemed metric), the rest comes from the
        reserve (claimedReserve), the ticket is used and the fees are the
        orchestrator's; redeeming it again reverts with "ticket is used".
        """
        self.chain.registerTranscoder(self.orch.address, STAKE)
        self.chain.fundSender(self.sender, EV // 2, 10**18)
        await self.contracts.resolve()
        watcher = ChainWatcher(self.reactor, self.contracts)
        await watcher.refresh()
        dataDir = self.mktemp()
        os.makedirs(dataDir)
        store = TicketStore(self.reactor, dataDir)
        recipient = TicketRecipient(self.orch.address, loadRecipientKey(dataDir), ticketEV=EV, maxFaceValue=EV)
        payments = TicketPayments(self.contracts, recipient, watcher, store,
                                  Fraction(PRICE_PER_UNIT, PIXELS_PER_UNIT), reactor=self.reactor)
        params = await payments.ticketParams(bytes.fromhex(self.sender.address[2:]))
        await payments.processPayment(signedPayment(params, self.sender), "s1")
        [pending] = store.pending.values()
        self.chain.mineTo(bytesInt(params.expiration_block) + 1)
        await watcher.refresh()
        redeemer = Redeemer(self.reactor, self.contracts, self.tx, store, watcher)
        self.assertEqual(await redeemer.redeemDue(), 1)
        self.assertEqual(store.outcomes[pending.id], REDEEMED)
        self.assertEqual(redeemer.metrics.valueRedeemed._value.get(), EV)
        tb = self.contracts.ticketBroker
        self.assertEqual(await tb.call("claimedReserve", self.sender.address, self.orch.address), EV - EV // 2)
        self.assertTrue(await tb.call("usedTickets", pending.ticket.hash()))
        self.assertEqual(self.chain.call("BondingManager", "pendingFees", self.orch.address, 0), EV)
        data = tb.encode("redeemWinningTicket", pending.ticket.asAbiTuple(), pending.sig, pending.recipientRand)
        await self.assertReverts("ticket is used", self.tx.send(tb.address, data))


class AnvilConformanceTests(Conformance, TestCase):
    """
    The scenarios on anvil with the stand-ins, on the real reactor.
    """

    def setUp(self):
        if ensureAnvil() is None:
            raise SkipTest(ANVIL_MISSING)
        anvil = Anvil()
        anvil.start()
        self.addCleanup(anvil.close)
        self.chain = deployStandIns(anvil, roundLength=ROUND_LENGTH)
        self.reactor = reactor
        self.rpc = JsonRpcClient(reactor, anvil.url, timeout=10)
        self.addCleanup(self.rpc.close)
        self.setUpContracts()
        for a in (self.orch, self.idle):
            anvil.setBalance(a.address, 10**20)


class FakeChainConformanceTests(Conformance, TestCase):
    """
    The same scenarios on the in-memory chain.
    """

    def setUp(self):
        self.chain = FakeChain(roundLength=ROUND_LENGTH)
        self.reactor = self.chain.clock
        self.rpc = self.chain.client()
        self.setUpContracts()
        self.addCleanup(lambda: self.assertEqual(self.chain.internalErrors, []))
