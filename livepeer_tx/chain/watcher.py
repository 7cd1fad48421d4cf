# -*- test-case-name: tests.test_chain_payments,tests.test_chain_tickets -*-
"""
A periodically refreshed view of the chain used by tickets and redemption.
"""

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import Logger

from .periodic import PeriodicService
from .rpc import RpcError, RpcTransportError, fromHex


class ChainNotReady(Exception):
    """
    The chain has not been read once yet, within the time allowed.
    """


class ChainWatcher(PeriodicService):
    """
    Poll the rounds, the L1 block number and gas price every C{interval} seconds.

    C{RoundsManager.blockNum()} is the block number the contracts see, which
    on Arbitrum is the L1 block; ticket expiry and rounds are counted in it.

    @ivar lastL1Block: the last block number seen by the contracts.
    @ivar currentRound: the current round.
    @ivar lastInitializedRound: the last initialized round.
    @ivar creationRound: the round new tickets are created in.
    @ivar creationRoundBlockHash: its block hash (never zero).
    @ivar gasPrice: base fee plus priority fee, in wei.
    @ivar poolSize: the transcoder pool size.
    @ivar ticketValidityPeriod: rounds a ticket can be redeemed in.
    @ivar ready: a L{Deferred} that fires with the watcher after the first
        complete poll (see L{whenReady} for a bounded wait).
    """

    _log = Logger()

    def __init__(self, reactor, contracts, interval=5.0, resolveEvery=3600.0):
        super().__init__(reactor, interval)
        self._contracts = contracts
        self._resolveEvery = max(1, int(resolveEvery / interval))
        self._ticks = 0
        self.lastL1Block = None
        self.currentRound = None
        self.lastInitializedRound = None
        self.creationRound = None
        self.creationRoundBlockHash = None
        self.gasPrice = None
        self.poolSize = None
        self.ticketValidityPeriod = None
        self.ready = Deferred()
        self._listeners = []
        self._active = None

    def addListener(self, listener):
        """
        Call C{listener(watcher)} after every complete poll. An exception it
        raises is logged and does not stop the watcher.
        """
        self._listeners.append(listener)

    def whenReady(self, timeout):
        """
        Wait at most C{timeout} seconds for the first complete poll.

        @return: a L{Deferred} firing with the watcher, or failing with
            L{ChainNotReady}; cancelling it does not touch L{ready}.
        """
        d = Deferred()
        if self.ready.called:
            d.callback(self)
            return d

        def fired(result):
            if not d.called:
                d.callback(result)
            return result

        self.ready.addCallback(fired)
        d.addTimeout(timeout, self._reactor)

        def timedOut(failure):
            failure.trap(CancelledError, DeferredTimeout)
            raise ChainNotReady(f"no answer from the chain node within {timeout:g}s")

        return d.addErrback(timedOut)

    async def isActive(self, address):
        """
        Whether C{address} is an active transcoder in the current round.

        The answer is read once per round (the active set only changes at
        round boundaries).

        @raise livepeer_tx.chain.rpc.RpcError: the node refused the call.
        @raise livepeer_tx.chain.rpc.RpcTransportError: the node is unreachable.
        """
        key = (self.currentRound, bytes(address))
        if self._active is None or self._active[0] != key:
            active = await self._contracts.bondingManager.call(
                "isActiveTranscoder", "0x" + bytes(address).hex()
            )
            self._active = (key, bool(active))
        return self._active[1]

    def runOnce(self):
        """
        One poll (see L{refresh}).
        """
        return self.refresh()

    def passFailed(self, failure):
        """
        RPC trouble is expected now and then: one line; anything else: a traceback.
        """
        if failure.check(RpcError, RpcTransportError):
            self._log.warn("Chain poll failed, will retry: {error}", error=failure.getErrorMessage())
        else:
            self._log.failure("Chain poll failed", failure)

    async def refresh(self):
        """
        Read everything once.
        """
        self._ticks += 1
        if self._ticks % self._resolveEvery == 0 or not self._contracts.resolved:
            await self._contracts.resolve()
        rm = self._contracts.roundsManager
        self.lastL1Block = await rm.call("blockNum")
        self.currentRound = await rm.call("currentRound")
        lastInitialized = await rm.call("lastInitializedRound")
        blockHash = await rm.call("blockHashForRound", lastInitialized)
        creationRound = lastInitialized
        if int.from_bytes(blockHash, "big") == 0 and lastInitialized > 0:
            creationRound = lastInitialized - 1
            blockHash = await rm.call("blockHashForRound", creationRound)
        self.lastInitializedRound = lastInitialized
        self.creationRound, self.creationRoundBlockHash = creationRound, blockHash
        self.poolSize = await self._contracts.bondingManager.call("getTranscoderPoolSize")
        if self.ticketValidityPeriod is None:
            self.ticketValidityPeriod = await self._contracts.ticketBroker.call("ticketValidityPeriod")
        block = await self._contracts.rpc.getBlock("latest")
        tip = await self._contracts.rpc.maxPriorityFeePerGas()
        self.gasPrice = fromHex(block.get("baseFeePerGas") or "0x0") + tip
        if not self.ready.called:
            self.ready.callback(self)
        for listener in self._listeners:
            try:
                listener(self)
            except Exception:
                self._log.failure("Chain watcher listener {listener!r} failed", listener=listener)
        return self
