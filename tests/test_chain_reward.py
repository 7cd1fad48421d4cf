"""
The reward service, the JSON-RPC client and the transaction manager against
a real anvil node with the Livepeer stand-ins.
"""

import time
from unittest.mock import Mock

from eth_account import Account
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SkipTest, TestCase

from livepeer_tx.chain.contracts import REWARD_EVENT, LivepeerContracts
from livepeer_tx.chain.reward import RewardService
from livepeer_tx.chain.rpc import JsonRpcClient, RpcError
from livepeer_tx.chain.transactions import GasPriceTooHigh, TransactionManager, TransactionTimeout

from tests.chainharness import ANVIL_MISSING, Anvil, deployStandIns, ensureAnvil

STAKE = 1000 * 10**18


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


async def waitFor(predicate, timeout=20.0, step=0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        await sleep(step)


def deferred(f):
    def wrapper(self):
        return Deferred.fromCoroutine(f(self))

    wrapper.__name__ = f.__name__
    return wrapper


class ChainTestCase(TestCase):
    """
    A fresh anvil and stand-in deployment per test; dev account 1 is the orchestrator.
    """

    roundLength = 20

    def setUp(self):
        if ensureAnvil() is None:
            raise SkipTest(ANVIL_MISSING)
        self.anvil = Anvil()
        self.anvil.start()
        self.addCleanup(self.anvil.close)
        self.chain = deployStandIns(self.anvil, roundLength=self.roundLength)
        self.orch = self.anvil.account(1)
        self.rpc = JsonRpcClient(reactor, self.anvil.url, timeout=5)
        self.addCleanup(self.rpc.close)
        self.contracts = LivepeerContracts(self.rpc, self.chain.controller)

    async def makeService(self, **kw):
        await self.contracts.resolve()
        txKw = {k: kw.pop(k) for k in ("maxGasPrice", "replaceAfter") if k in kw}
        tx = TransactionManager(
            reactor, self.rpc, self.orch, await self.rpc.chainId(), pollInterval=0.05, **txKw
        )
        service = RewardService(reactor, self.contracts, tx, interval=kw.pop("interval", 0.1), **kw)
        self.addCleanup(lambda: service.running and service.stopService())
        return service

    def rewardEvents(self):
        bm = self.chain.contract("BondingManager")
        return bm.events.Reward().get_logs(from_block=0, argument_filters={"transcoder": self.orch.address})

    def nonce(self):
        return self.chain.w3.eth.get_transaction_count(self.orch.address)

    def lastRewardRound(self):
        return self.chain.call("BondingManager", "getTranscoder", self.orch.address)[0]


class RewardTests(ChainTestCase):
    @deferred
    async def test_oncePerRoundAcrossRounds(self):
        self.chain.registerTranscoder(self.orch.address, STAKE)
        service = await self.makeService()
        service.startService()
        rounds = []
        for _ in range(3):
            current = self.chain.currentRound()
            await waitFor(lambda: service.lastRewardRound == current)
            rounds.append(current)
            # More ticks in the same round send nothing more.
            ticks = service.ticks
            await waitFor(lambda: service.ticks >= ticks + 3)
            self.chain.advanceToNextRound()
        await service.stopService()
        events = self.rewardEvents()
        self.assertEqual([e["blockNumber"] // self.roundLength for e in events], rounds)
        self.assertEqual(len(events), 3)
        self.assertEqual(self.nonce(), 3)
        self.assertTrue(all(e["args"]["amount"] > 0 for e in events))

    @deferred
    async def test_restartMidRoundDoesNotSendAgain(self):
        self.chain.registerTranscoder(self.orch.address, STAKE)
        first = await self.makeService()
        first.startService()
        current = self.chain.currentRound()
        await waitFor(lambda: first.lastRewardRound == current)
        await first.stopService()
        second = await self.makeService()
        second.startService()
        await waitFor(lambda: second.ticks >= 3)
        self.assertEqual(second.state, "done")
        self.assertEqual(self.nonce(), 1)
        self.assertEqual(len(self.rewardEvents()), 1)

    @deferred
    async def test_notActiveThenPaused(self):
        self.chain.registerTranscoder(self.orch.address, STAKE, active=False)
        service = await self.makeService(pausedBackoff=(0.1, 0.2))
        service.startService()
        await waitFor(lambda: service.ticks >= 3)
        self.assertEqual(service.state, "notActive")
        self.chain.pause()
        ticks = service.ticks
        await waitFor(lambda: service.ticks >= ticks + 2)
        self.assertEqual(service.state, "paused")
        self.assertEqual(self.nonce(), 0)

    @deferred
    async def test_notInitializedWaitsOrInitializes(self):
        self.chain.registerTranscoder(self.orch.address, STAKE)
        current = self.chain.advanceToNextRound(initialize=False)
        waiting = await self.makeService()
        waiting.startService()
        await waitFor(lambda: waiting.ticks >= 3)
        self.assertEqual(waiting.state, "notInitialized")
        await waiting.stopService()
        self.assertEqual(self.nonce(), 0)
        initializing = await self.makeService(initializeRound=True, initializeGrace=0.2)
        initializing.startService()
        await waitFor(lambda: initializing.lastRewardRound == current)
        self.assertTrue(self.chain.call("RoundsManager", "currentRoundInitialized"))
        self.assertEqual(self.nonce(), 2)  # initializeRound, then reward
        self.assertEqual(self.lastRewardRound(), current)

    @deferred
    async def test_gasAboveCapThenBelow(self):
        self.chain.registerTranscoder(self.orch.address, STAKE)
        cap = 5 * 10**9
        self.anvil.setNextBlockBaseFee(50 * 10**9)
        self.anvil.mine(1)
        service = await self.makeService(maxGasPrice=cap)
        service.startService()
        await waitFor(lambda: service.ticks >= 3)
        self.assertEqual(service.state, "gasTooHigh")
        self.assertEqual(self.nonce(), 0)
        self.anvil.setNextBlockBaseFee(10**9)
        self.anvil.mine(1)
        current = self.chain.currentRound()
        await waitFor(lambda: service.lastRewardRound == current)
        receipt = self.chain.w3.eth.get_transaction_receipt(self.rewardEvents()[0]["transactionHash"])
        self.assertLessEqual(receipt["effectiveGasPrice"], cap)

    @deferred
    async def test_stuckTransactionReplaced(self):
        self.chain.registerTranscoder(self.orch.address, STAKE)
        current = self.chain.currentRound()
        self.anvil.setAutomine(False)
        service = await self.makeService(replaceAfter=0.3)
        service.startService()
        await waitFor(lambda: service._tx.replacements >= 1)
        self.assertEqual(service.lastRewardRound, 0)
        self.anvil.mine(1)
        await waitFor(lambda: service.lastRewardRound == current)
        self.anvil.setAutomine(True)
        ticks = service.ticks
        await waitFor(lambda: service.ticks >= ticks + 3)
        self.assertEqual(len(self.rewardEvents()), 1)
        self.assertEqual(self.nonce(), 1)

    @deferred
    async def test_rpcNodeStoppedAndRestarted(self):
        self.chain.registerTranscoder(self.orch.address, STAKE)
        service = await self.makeService()
        service.startService()
        first = self.chain.currentRound()
        await waitFor(lambda: service.lastRewardRound == first)
        self.anvil.stop()
        ticks = service.ticks
        await waitFor(lambda: service.ticks >= ticks + 3)
        self.assertEqual(service.state, "error")
        self.assertTrue(service._loop.running)
        self.anvil.start()
        second = self.chain.advanceToNextRound()
        await waitFor(lambda: service.lastRewardRound == second)
        self.assertEqual(len(self.rewardEvents()), 2)


class TransactionManagerTests(ChainTestCase):
    @deferred
    async def test_revertReasonAndCap(self):
        await self.contracts.resolve()
        tx = TransactionManager(reactor, self.rpc, self.orch, await self.rpc.chainId(), pollInterval=0.05)
        bm = self.contracts.bondingManager
        try:
            await tx.send(bm.address, bm.encode("reward"))
        except RpcError as e:
            self.assertEqual(e.revertReason, "caller must be an active transcoder")
        else:
            self.fail("reward by an unregistered account did not revert")
        tx.maxGasPrice = 1
        with self.assertRaises(GasPriceTooHigh):
            await tx.send(self.anvil.accounts[2], b"", value=1)
        self.assertEqual(self.nonce(), 0)
        tx.maxGasPrice = 0
        receipt = await tx.send(self.anvil.accounts[2], b"", value=1)
        self.assertEqual(receipt["status"], "0x1")
        self.assertEqual(REWARD_EVENT.find(receipt), [])


class _FakeRpc:
    """
    A node that takes transactions and never mines them.
    """

    def __init__(self):
        self.sent = []

    async def getBlock(self, block="latest"):
        return {"baseFeePerGas": hex(10**9)}

    async def maxPriorityFeePerGas(self):
        return 10**8

    async def estimateGas(self, tx):
        return 21000

    async def getTransactionCount(self, address, block="pending"):
        return 0

    async def sendRawTransaction(self, raw):
        self.sent.append(raw)

    async def getTransactionReceipt(self, txHash):
        return None


class _Unreachable:
    def __getattr__(self, name):
        raise AssertionError(f"the chain was read ({name}) while backing off")


class ReactorClockTests(TestCase):
    """
    The reward service and the transaction manager keep time with the
    reactor they are given, so a task.Clock drives them.
    """

    def test_transactionReplacedAndTimedOutByClock(self):
        clock = Clock()
        rpc = _FakeRpc()
        account = Account.from_key(b"\x07" * 32)
        tx = TransactionManager(clock, rpc, account, 31337, replaceAfter=60, maxReplacements=1,
                                pollInterval=1.0, confirmTimeout=300)
        d = tx.send(account.address, b"")
        self.assertEqual(len(rpc.sent), 1)
        clock.pump([1.0] * 61)
        self.assertEqual((len(rpc.sent), tx.replacements), (2, 1))
        self.assertNoResult(d)
        clock.pump([1.0] * 250)
        self.failureResultOf(d, TransactionTimeout)

    def test_pausedBackoffByClock(self):
        clock = Clock()
        transactions = Mock(address="0x" + "11" * 20)
        service = RewardService(clock, _Unreachable(), transactions, pausedBackoff=(15.0, 600.0))
        service._paused()
        clock.advance(14)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(service._check())), "paused")
        clock.advance(2)
        failure = self.failureResultOf(Deferred.fromCoroutine(service._check()), AssertionError)
        self.assertIn("while backing off", str(failure.value))
