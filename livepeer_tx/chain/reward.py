# -*- test-case-name: tests.test_chain_reward -*-
"""
The reward service: call C{BondingManager.reward} exactly once per round.

Every tick reads the chain (paused, current round, initialized, our
C{lastRewardRound}, whether we are active); no local state decides whether a
round was rewarded. A pre-flight C{eth_call} classifies the revert reasons
before any gas is spent.
"""

from twisted.logger import Logger

from livepeer_tx.metrics import ChainMetrics

from .contracts import REWARD_EVENT
from .periodic import PeriodicService
from .rpc import RpcError, RpcTransportError, fromHex
from .transactions import GasPriceTooHigh, TransactionFailed, feePaid

ALREADY_CALLED = "caller has already called reward for the current round"
NOT_ACTIVE = "caller must be an active transcoder"
NOT_INITIALIZED = "current round is not initialized"
PAUSED = "system is paused"
ROUND_ALREADY_INITIALIZED = "round already initialized"


class RewardService(PeriodicService):
    """
    Call reward once per round, checking the chain every C{interval} seconds.

    @ivar lastRewardRound: the last rewarded round as last read from the chain.
    @ivar state: a short word for the last tick's outcome (for tests and status):
        C{rewarded}, C{done}, C{paused}, C{notInitialized}, C{initializing},
        C{notActive}, C{gasTooHigh}, C{pendingTransactions}, C{error}.
    @ivar metrics: the L{ChainMetrics} it counts calls, rounds and the balance in.
    """

    _log = Logger()

    def __init__(
        self,
        reactor,
        contracts,
        transactions,
        interval=15.0,
        initializeRound=False,
        initializeGrace=60.0,
        pausedBackoff=(15.0, 600.0),
        metrics=None,
    ):
        super().__init__(reactor, interval)
        self.metrics = metrics if metrics is not None else ChainMetrics()
        self._contracts = contracts
        self._tx = transactions
        self.address = transactions.address
        self.initializeRound = initializeRound
        self.initializeGrace = initializeGrace
        self._pausedBackoff = pausedBackoff
        self._pausedUntil = 0.0
        self._pausedDelay = 0.0
        self._said = set()
        self._uninitializedSince = {}
        self.lastRewardRound = None
        self.state = None
        self.ticks = 0

    def runOnce(self):
        """
        One reward check (see L{checkOnce}).
        """
        return self.checkOnce()

    def passFailed(self, failure):
        """
        Count and log a failed check; the next tick tries again.
        """
        self.metrics.rewardCallErrors.inc()
        self.state = "error"
        self._log.failure("Reward check failed; will retry", failure)

    def passFinished(self):
        """
        Count ticks (tests wait on them).
        """
        self.ticks += 1

    def _sayOnce(self, key, level, fmt, **kw):
        if key not in self._said:
            self._said.add(key)
            getattr(self._log, level)(fmt, **kw)

    async def checkOnce(self):
        """
        One look at the chain, and a reward transaction if it is due.

        @return: the outcome, as in L{state}.
        """
        try:
            self.state = await self._check()
        except (RpcError, RpcTransportError) as e:
            self.metrics.rewardCallErrors.inc()
            self.state = "error"
            self._log.warn("Reward check: RPC error, will retry: {error}", error=str(e))
        await self._updateBalance()
        return self.state

    async def _updateBalance(self):
        try:
            self.metrics.ethBalance.set(await self._contracts.rpc.getBalance(self.address))
        except (RpcError, RpcTransportError):
            pass

    async def _check(self):
        if self._reactor.seconds() < self._pausedUntil:
            return "paused"
        bm = self._contracts.bondingManager
        rm = self._contracts.roundsManager
        if await self._contracts.controller.call("paused"):
            return self._paused()
        self._pausedDelay = 0.0
        currentRound = await rm.call("currentRound")
        lastRewardRound = (await bm.call("getTranscoder", self.address))[0]
        self._recordRewarded(lastRewardRound)
        if lastRewardRound >= currentRound:
            return "done"
        if not await rm.call("currentRoundInitialized"):
            return await self._notInitialized(currentRound)
        if not await bm.call("isActiveTranscoder", self.address):
            return self._notActive(currentRound)
        pending = await self._contracts.rpc.getTransactionCount(self.address, "pending")
        mined = await self._contracts.rpc.getTransactionCount(self.address, "latest")
        if pending > mined:
            # A transaction from before a restart may be this round's reward.
            self._sayOnce(
                ("pending", currentRound, mined),
                "warn",
                "Account {address} has {n} pending transaction(s); waiting before calling reward",
                address=self.address,
                n=pending - mined,
            )
            return "pendingTransactions"
        try:
            await bm.call("reward", sender=self.address)
        except RpcError as e:
            return self._classifyRevert(e, currentRound)
        return await self._sendReward(currentRound)

    def _paused(self):
        low, high = self._pausedBackoff
        self._pausedDelay = min(high, max(low, self._pausedDelay * 2))
        self._pausedUntil = self._reactor.seconds() + self._pausedDelay
        self._log.warn(
            "The protocol is paused; checking reward again in {delay:.0f}s", delay=self._pausedDelay
        )
        return "paused"

    def _recordRewarded(self, lastRewardRound):
        self.lastRewardRound = lastRewardRound
        self.metrics.lastRewardRound.set(lastRewardRound)

    async def _notInitialized(self, currentRound):
        since = self._uninitializedSince.setdefault(currentRound, self._reactor.seconds())
        if not self.initializeRound:
            self._sayOnce(
                ("notInitialized", currentRound),
                "info",
                "Round {round} is not initialized; waiting for it before calling reward",
                round=currentRound,
            )
            return "notInitialized"
        if self._reactor.seconds() - since < self.initializeGrace:
            return "notInitialized"
        rm = self._contracts.roundsManager
        try:
            await rm.call("initializeRound", sender=self.address)
        except RpcError as e:
            if e.revertReason == ROUND_ALREADY_INITIALIZED:
                return "notInitialized"
            if e.revertReason == PAUSED:
                return self._paused()
            raise
        self._log.info("Initializing round {round}", round=currentRound)
        try:
            receipt = await self._tx.send(
                rm.address, rm.encode("initializeRound"), description="initializeRound"
            )
        except GasPriceTooHigh as e:
            self._sayOnce(("gas", "init", currentRound), "warn", "Not initializing round: {e}", e=e)
            return "gasTooHigh"
        except TransactionFailed as e:
            self._log.warn("initializeRound failed: {error}", error=str(e))
            return "notInitialized"
        except RpcError as e:
            if e.revertReason == ROUND_ALREADY_INITIALIZED:
                return "notInitialized"
            raise
        self._log.info(
            "Initialized round {round} (tx {hash})", round=currentRound, hash=receipt["transactionHash"]
        )
        return "initializing"

    def _notActive(self, currentRound):
        self._sayOnce(
            ("notActive", currentRound),
            "info",
            "Not an active transcoder in round {round}; not calling reward this round",
            round=currentRound,
        )
        return "notActive"

    def _classifyRevert(self, error, currentRound):
        reason = error.revertReason
        if reason == ALREADY_CALLED:
            return "done"
        if reason == NOT_ACTIVE:
            return self._notActive(currentRound)
        if reason == NOT_INITIALIZED:
            return "notInitialized"
        if reason == PAUSED:
            return self._paused()
        self.metrics.rewardCallErrors.inc()
        self._log.error(
            "Error trying to call reward for round {round} err={error!r}",
            round=currentRound,
            error=reason or str(error),
        )
        return "error"

    async def _sendReward(self, currentRound):
        bm = self._contracts.bondingManager
        try:
            receipt = await self._tx.send(
                bm.address, bm.encode("reward"), description=f"reward for round {currentRound}"
            )
        except GasPriceTooHigh as e:
            self._sayOnce(
                ("gas", currentRound),
                "warn",
                "Not calling reward for round {round} yet: {error}; will send when it drops",
                round=currentRound,
                error=str(e),
            )
            return "gasTooHigh"
        except RpcError as e:
            if e.revertReason is not None:
                return self._classifyRevert(e, currentRound)
            raise
        except TransactionFailed as e:
            # Mined but reverted, e.g. the round turned between check and
            # inclusion; the next tick re-reads the chain.
            self.metrics.rewardCallErrors.inc()
            self._log.error(
                "Error trying to call reward for round {round} err={error!r}",
                round=currentRound,
                error=str(e),
            )
            return "error"
        events = [
            values
            for values in REWARD_EVENT.find(receipt, bm.address)
            if values[0].lower() == self.address.lower()
        ]
        if not events:
            self.metrics.rewardCallErrors.inc()
            self._log.error(
                "Reward transaction {hash} for round {round} succeeded without a Reward event",
                hash=receipt["transactionHash"],
                round=currentRound,
            )
            return "error"
        self._recordRewarded(currentRound)
        self._log.info(
            "Called reward for round {round}: minted {amount} LPT wei, gas used {gasUsed}, "
            "fee {fee} wei (tx {hash})",
            round=currentRound,
            amount=events[0][1],
            gasUsed=fromHex(receipt["gasUsed"]),
            fee=feePaid(receipt),
            hash=receipt["transactionHash"],
        )
        return "rewarded"
