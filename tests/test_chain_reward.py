"""
The reward service and the transaction manager on an in-memory chain
(L{tests.fakechain.FakeChain}) and a test clock: a tick is a clock step and a
block is one the test mines, so nothing waits on the wall clock.
"""

from unittest.mock import Mock

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from livepeer_tx.chain.contracts import REWARD_EVENT
from livepeer_tx.chain.reward import RewardService
from livepeer_tx.chain.rpc import RpcError
from livepeer_tx.chain.transactions import GasPriceTooHigh, TransactionManager, TransactionTimeout

from tests.fakechain import CHAIN_ID, FakeChain, FakeChainTestCase, account

STAKE = 1000 * 10**18
INTERVAL = 1.0


class RewardTestCase(FakeChainTestCase):
    """
    Reward services for the orchestrator on the fake chain.
    """

    def makeTransactions(self, **kw):
        """
        The orchestrator's L{TransactionManager}, polling every second.
        """
        return TransactionManager(self.clock, self.rpc, self.orch, CHAIN_ID, pollInterval=1.0, **kw)

    def makeService(self, **kw):
        """
        A reward service ticking every L{INTERVAL} seconds (not started).
        """
        self.finished(self.contracts.resolve())
        txKw = {k: kw.pop(k) for k in ("maxGasPrice", "replaceAfter") if k in kw}
        service = RewardService(self.clock, self.contracts, self.makeTransactions(**txKw), interval=INTERVAL, **kw)
        self.stopAfterTest(service)
        return service

    def rewardRounds(self):
        """
        The round of every mined Reward event of the orchestrator.
        """
        return [block // self.roundLength for (who, _), block, _ in self.chain.eventsNamed("Reward")
                if who == self.orch.address]

    def lastRewardRound(self):
        """
        The orchestrator's lastRewardRound on chain.
        """
        return self.chain.call("BondingManager", "getTranscoder", self.orch.address)[0]


class RewardTests(RewardTestCase):
    def test_oncePerRoundAcrossRounds(self):
        """
        Reward is called once in each of three rounds, however many ticks
        each round sees: three Reward events with positive amounts, one per
        round, and three transactions in all. A service that re-sent within a
        round, or missed a new one, fails.
        """
        self.chain.registerTranscoder(self.orch, STAKE)
        service = self.makeService()
        service.startService()
        rounds = []
        for _ in range(3):
            current = self.chain.currentRound()
            self.advance(INTERVAL)
            self.assertEqual(service.lastRewardRound, current)
            rounds.append(current)
            # More ticks in the same round send nothing more.
            self.advance(3 * INTERVAL)
            self.chain.advanceToNextRound()
        self.assertEqual(self.rewardRounds(), rounds)
        self.assertEqual(self.chain.nonce(self.orch), 3)
        self.assertTrue(all(amount > 0 for (_, amount), _, _ in self.chain.eventsNamed("Reward")))

    def test_restartMidRoundDoesNotSendAgain(self):
        """
        A service started after another rewarded this round reads that from
        the chain and sends nothing: state C{done}, one transaction, one
        Reward event.
        """
        self.chain.registerTranscoder(self.orch, STAKE)
        first = self.makeService()
        first.startService()
        self.assertEqual(first.lastRewardRound, self.chain.currentRound())
        first.stopService()
        second = self.makeService()
        second.startService()
        self.advance(3 * INTERVAL)
        self.assertEqual(second.state, "done")
        self.assertEqual(self.chain.nonce(self.orch), 1)
        self.assertEqual(len(self.rewardRounds()), 1)

    def test_notActiveThenPaused(self):
        """
        A registered but inactive transcoder does not call reward (state
        C{notActive}); once the protocol is paused the state is C{paused}.
        Nothing is sent in either case.
        """
        self.chain.registerTranscoder(self.orch, STAKE, active=False)
        service = self.makeService(pausedBackoff=(1.0, 2.0))
        service.startService()
        self.advance(3 * INTERVAL)
        self.assertEqual(service.state, "notActive")
        self.chain.pause()
        self.advance(2 * INTERVAL)
        self.assertEqual(service.state, "paused")
        self.assertEqual(self.chain.nonce(self.orch), 0)

    def test_notInitializedWaitsOrInitializes(self):
        """
        In an uninitialized round the service waits (state
        C{notInitialized}, nothing sent); with C{initializeRound} it waits out
        the grace period, then initializes the round and calls reward: two
        transactions, the round initialized, lastRewardRound the round.
        """
        self.chain.registerTranscoder(self.orch, STAKE)
        current = self.chain.advanceToNextRound(initialize=False)
        waiting = self.makeService()
        waiting.startService()
        self.advance(3 * INTERVAL)
        self.assertEqual(waiting.state, "notInitialized")
        waiting.stopService()
        self.assertEqual(self.chain.nonce(self.orch), 0)
        initializing = self.makeService(initializeRound=True, initializeGrace=20.0)
        initializing.startService()
        self.advance(19.0)
        self.assertEqual(self.chain.nonce(self.orch), 0)
        self.advance(2 * INTERVAL)
        self.assertEqual(initializing.lastRewardRound, current)
        self.assertTrue(self.chain.call("RoundsManager", "currentRoundInitialized"))
        self.assertEqual(self.chain.nonce(self.orch), 2)  # initializeRound, then reward
        self.assertEqual(self.lastRewardRound(), current)

    def test_gasAboveCapThenBelow(self):
        """
        While the base fee is above C{--maxGasPrice} nothing is sent (state
        C{gasTooHigh}); once it drops, reward is sent and paid at most the cap.
        """
        self.chain.registerTranscoder(self.orch, STAKE)
        cap = 5 * 10**9
        self.chain.setBaseFee(50 * 10**9)
        service = self.makeService(maxGasPrice=cap)
        service.startService()
        self.advance(3 * INTERVAL)
        self.assertEqual(service.state, "gasTooHigh")
        self.assertEqual(self.chain.nonce(self.orch), 0)
        self.chain.setBaseFee(10**9)
        self.advance(INTERVAL)
        self.assertEqual(service.lastRewardRound, self.chain.currentRound())
        [(_, _, txHash)] = self.chain.eventsNamed("Reward")
        self.assertLessEqual(int(self.chain.receipt(txHash)["effectiveGasPrice"], 16), cap)

    def test_stuckTransactionReplaced(self):
        """
        A reward transaction left unmined for C{replaceAfter} seconds is
        replaced (same nonce, higher fees); when a block comes, one of them is
        mined: one Reward event, one nonce used, and later ticks send nothing.
        """
        self.chain.registerTranscoder(self.orch, STAKE)
        current = self.chain.currentRound()
        self.chain.setAutomine(False)
        service = self.makeService(replaceAfter=30.0)
        service.startService()
        self.advance(29.0)
        self.assertEqual(service._tx.replacements, 0)
        self.advance(2.0)
        self.assertEqual(service._tx.replacements, 1)
        self.assertEqual(service.lastRewardRound, 0)
        self.assertEqual(len(self.chain.pendingTransactions()), 1)
        self.chain.mine(1)
        self.advance(INTERVAL)
        self.assertEqual(service.lastRewardRound, current)
        self.chain.setAutomine(True)
        self.advance(3 * INTERVAL)
        self.assertEqual(len(self.rewardRounds()), 1)
        self.assertEqual(self.chain.nonce(self.orch), 1)

    def test_droppedTransactionReplaced(self):
        """
        A reward transaction the node accepted and then dropped is never
        mined; after C{replaceAfter} seconds its replacement is, and reward
        is recorded once.
        """
        self.chain.registerTranscoder(self.orch, STAKE)
        self.chain.dropNextTransaction()
        service = self.makeService(replaceAfter=30.0)
        service.startService()
        self.advance(10.0)
        self.assertEqual((self.chain.nonce(self.orch), service.lastRewardRound), (0, 0))
        self.advance(25.0)
        self.assertEqual(service._tx.replacements, 1)
        self.assertEqual(service.lastRewardRound, self.chain.currentRound())
        self.assertEqual(len(self.rewardRounds()), 1)

    def test_rpcNodeStoppedAndRestarted(self):
        """
        While the node refuses connections every tick fails (state C{error})
        and the loop keeps running; once it is back, the next round is
        rewarded: two Reward events in all.
        """
        self.chain.registerTranscoder(self.orch, STAKE)
        service = self.makeService()
        service.startService()
        self.assertEqual(service.lastRewardRound, self.chain.currentRound())
        self.chain.stop()
        self.advance(3 * INTERVAL)
        self.assertEqual(service.state, "error")
        self.assertTrue(service._loop.running)
        self.chain.start()
        second = self.chain.advanceToNextRound()
        self.advance(INTERVAL)
        self.assertEqual(service.lastRewardRound, second)
        self.assertEqual(len(self.rewardRounds()), 2)

    def test_hangingNodeTimesOut(self):
        """
        A node that takes requests and never answers holds one check until
        the client's timeout (no second check starts meanwhile), which then
        fails (state C{error}); once it answers again, reward is sent once.
        """
        self.chain.registerTranscoder(self.orch, STAKE)
        service = self.makeService()
        self.chain.hang()
        before = len(self.chain.requests)
        service.startService()
        self.advance(4.0)
        self.assertEqual(self.chain.requests[before:], ["eth_call"])
        self.assertIsNone(service.state)
        self.advance(2.0)
        self.assertEqual(service.state, "error")
        self.chain.start()
        # The pass still waits out its balance read, which hangs as well.
        self.advance(6.0)
        self.assertEqual(service.lastRewardRound, self.chain.currentRound())
        self.assertEqual(len(self.rewardRounds()), 1)

    def test_slowNodeRewardsOnce(self):
        """
        A node that answers every request 2 s late (the ticks come every
        second) still gets one reward transaction: ticks do not overlap.
        """
        self.chain.registerTranscoder(self.orch, STAKE)
        service = self.makeService()
        self.chain.answerAfter(2.0)
        service.startService()
        self.advance(120.0)
        self.assertEqual(service.lastRewardRound, self.chain.currentRound())
        self.assertEqual(self.chain.requests.count("eth_sendRawTransaction"), 1)
        self.assertEqual(self.chain.nonce(self.orch), 1)

    def test_forcedRevertClassified(self):
        """
        A reward that the pre-flight call shows reverting for a reason the
        service does not know is logged as an error and not sent.
        """
        self.chain.registerTranscoder(self.orch, STAKE)
        self.chain.setRewardRevert(self.orch, "some new contract check")
        service = self.makeService()
        service.startService()
        self.assertEqual(service.state, "error")
        self.assertEqual(self.chain.nonce(self.orch), 0)
        self.assertEqual(service.metrics.rewardCallErrors._value.get(), 1)


class TransactionManagerTests(RewardTestCase):
    def test_revertReasonAndCap(self):
        """
        A transaction whose gas estimate reverts raises L{RpcError} with the
        decoded revert string; with the base fee above C{maxGasPrice} nothing
        is sent (L{GasPriceTooHigh}); otherwise a plain transfer is mined
        with status 1 and no Reward event.
        """
        self.finished(self.contracts.resolve())
        tx = self.makeTransactions()
        bm = self.contracts.bondingManager
        failure = self.failureResultOf(tx.send(bm.address, bm.encode("reward")), RpcError)
        self.assertEqual(failure.value.revertReason, "caller must be an active transcoder")
        tx.maxGasPrice = 1
        self.failureResultOf(tx.send(account(2).address, b"", value=1), GasPriceTooHigh)
        self.assertEqual(self.chain.nonce(self.orch), 0)
        tx.maxGasPrice = 0
        receipt = self.successResultOf(tx.send(account(2).address, b"", value=1))
        self.assertEqual(receipt["status"], "0x1")
        self.assertEqual(REWARD_EVENT.find(receipt), [])

    def test_transactionReplacedAndTimedOutByClock(self):
        """
        On a node that never mines, a transaction is replaced after
        C{replaceAfter} seconds (at most C{maxReplacements} times) and fails
        with L{TransactionTimeout} after C{confirmTimeout} seconds.
        """
        self.chain.setAutomine(False)
        tx = TransactionManager(self.clock, self.rpc, self.orch, CHAIN_ID, replaceAfter=60, maxReplacements=1,
                                pollInterval=1.0, confirmTimeout=300)
        d = tx.send(self.orch.address, b"")
        self.assertEqual(self.chain.requests.count("eth_sendRawTransaction"), 1)
        self.advance(61.0)
        self.assertEqual((self.chain.requests.count("eth_sendRawTransaction"), tx.replacements), (2, 1))
        self.assertNoResult(d)
        self.advance(250.0)
        self.failureResultOf(d, TransactionTimeout)


class _Unreachable:
    def __getattr__(self, name):
        raise AssertionError(f"the chain was read ({name}) while backing off")


class PausedBackoffTests(TestCase):
    def test_pausedBackoffByClock(self):
        """
        After the protocol was seen paused, the reward service does not read
        the chain again until the backoff has passed on its clock.
        """
        clock = FakeChain().clock
        transactions = Mock(address="0x" + "11" * 20)
        service = RewardService(clock, _Unreachable(), transactions, pausedBackoff=(15.0, 600.0))
        service._paused()
        clock.advance(14)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(service._check())), "paused")
        clock.advance(2)
        failure = self.failureResultOf(Deferred.fromCoroutine(service._check()), AssertionError)
        self.assertIn("while backing off", str(failure.value))
