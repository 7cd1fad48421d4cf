# -*- test-case-name: tests.test_chain_payments,tests.test_chain_reward -*-
"""
Sending transactions from one account: nonces, capped EIP-1559 fees, stuck
transaction replacement and receipt checks.
"""

from eth_utils import to_checksum_address
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.task import deferLater
from twisted.logger import Logger

from .rpc import RpcError, RpcTransportError, fromHex, toHex


class GasPriceTooHigh(Exception):
    """
    The current base fee is above C{--maxGasPrice}; nothing was sent.
    """

    def __init__(self, baseFee, cap):
        Exception.__init__(self, f"base fee {baseFee} wei is above --maxGasPrice {cap} wei")
        self.baseFee = baseFee
        self.cap = cap


class TransactionFailed(Exception):
    """
    The transaction was mined with status 0.

    @ivar receipt: its receipt.
    """

    def __init__(self, receipt):
        Exception.__init__(self, f"transaction {receipt['transactionHash']} failed (status 0)")
        self.receipt = receipt


class TransactionTimeout(Exception):
    """
    No receipt arrived in time; the transaction may still be mined later.
    """


class NonceTaken(Exception):
    """
    Our nonce was used by a transaction we did not send from this process.
    """


def bumpFee(value):
    """
    A fee raised by more than 10 %, as nodes require for a replacement.
    """
    return value * 11 // 10 + 1


def feePaid(receipt):
    """
    The fee in wei that a receipt says was paid.
    """
    return fromHex(receipt["gasUsed"]) * fromHex(receipt.get("effectiveGasPrice") or "0x0")


class TransactionManager:
    """
    The one place that signs and sends transactions for an account.

    Sends are serialised, so nonces are assigned in order; each send waits for
    its receipt. A transaction without a receipt after C{replaceAfter} seconds
    is re-signed with the same nonce and fees raised by more than 10 %, at most
    C{maxReplacements} times and never above C{maxGasPrice}.

    @ivar address: the checksummed account address.
    @ivar replacements: how many replacement transactions were sent in all.
    """

    _log = Logger()

    def __init__(
        self,
        reactor,
        rpc,
        account,
        chainId,
        maxGasPrice=0,
        gasMargin=1.25,
        replaceAfter=60.0,
        maxReplacements=3,
        pollInterval=1.0,
        confirmTimeout=900.0,
    ):
        self._reactor = reactor
        self._rpc = rpc
        self._account = account
        self.address = to_checksum_address(account.address)
        self.chainId = chainId
        self.maxGasPrice = maxGasPrice
        self.gasMargin = gasMargin
        self.replaceAfter = replaceAfter
        self.maxReplacements = maxReplacements
        self.pollInterval = pollInterval
        self.confirmTimeout = confirmTimeout
        self._lock = DeferredLock()
        self._lastMinedNonce = None
        self.replacements = 0

    async def suggestFees(self):
        """
        EIP-1559 fees for a new transaction: C{(maxFeePerGas, maxPriorityFeePerGas)}.

        @raise GasPriceTooHigh: the base fee is above the cap.
        """
        block = await self._rpc.getBlock("latest")
        baseFee = fromHex(block.get("baseFeePerGas") or "0x0")
        tip = await self._rpc.maxPriorityFeePerGas()
        maxFee = 2 * baseFee + tip
        if self.maxGasPrice:
            if baseFee > self.maxGasPrice:
                raise GasPriceTooHigh(baseFee, self.maxGasPrice)
            maxFee = min(maxFee, self.maxGasPrice)
            tip = min(tip, maxFee - baseFee)
        return maxFee, tip

    async def _nextNonce(self):
        nonce = await self._rpc.getTransactionCount(self.address, "pending")
        if self._lastMinedNonce is not None and nonce <= self._lastMinedNonce:
            # A lagging node must not make us reuse a nonce we saw mined.
            nonce = self._lastMinedNonce + 1
        return nonce

    def send(self, to, data, value=0, description="transaction"):
        """
        Estimate, sign, send and confirm one transaction.

        @return: a L{Deferred} firing with the receipt (status 1).
        @raise GasPriceTooHigh: nothing was sent because gas is too expensive.
        @raise livepeer_tx.chain.rpc.RpcError: the estimate reverted (see its
            C{revertReason}) or the node refused the transaction.
        @raise TransactionFailed: it was mined but reverted.
        @raise TransactionTimeout: no receipt in C{confirmTimeout} seconds.
        """
        return self._lock.run(
            lambda: Deferred.fromCoroutine(self._send(to, data, value, description))
        )

    async def _send(self, to, data, value, description):
        maxFee, tip = await self.suggestFees()
        request = {"from": self.address, "to": to, "data": toHex(data), "value": toHex(value)}
        gas = int((await self._rpc.estimateGas(request)) * self.gasMargin)
        nonce = await self._nextNonce()
        tx = {
            "type": 2,
            "chainId": self.chainId,
            "nonce": nonce,
            "to": to,
            "value": value,
            "data": bytes(data),
            "gas": gas,
            "maxFeePerGas": maxFee,
            "maxPriorityFeePerGas": tip,
        }
        hashes = []
        raw = await self._broadcast(tx, hashes, description)
        started = lastBroadcast = self._reactor.seconds()
        replacements = 0
        while True:
            receipt = await self._findReceipt(hashes)
            if receipt is not None:
                self._lastMinedNonce = max(self._lastMinedNonce or 0, nonce)
                if fromHex(receipt["status"]) != 1:
                    raise TransactionFailed(receipt)
                return receipt
            now = self._reactor.seconds()
            if now - started > self.confirmTimeout:
                raise TransactionTimeout(
                    f"{description}: no receipt for nonce {nonce} after {self.confirmTimeout:.0f}s "
                    f"(hashes {', '.join(hashes)})"
                )
            if await self._nonceTakenElsewhere(nonce):
                receipt = await self._findReceipt(hashes)
                if receipt is None:
                    raise NonceTaken(f"{description}: nonce {nonce} was used by another transaction")
                continue
            if now - lastBroadcast >= self.replaceAfter:
                lastBroadcast = now
                bumped = dict(tx, maxFeePerGas=bumpFee(tx["maxFeePerGas"]),
                              maxPriorityFeePerGas=bumpFee(tx["maxPriorityFeePerGas"]))
                if replacements >= self.maxReplacements:
                    await self._rebroadcast(raw)
                elif self.maxGasPrice and bumped["maxFeePerGas"] > self.maxGasPrice:
                    self._log.warn(
                        "{description} (nonce {nonce}) is not mined, and a bumped fee would exceed "
                        "--maxGasPrice; waiting",
                        description=description,
                        nonce=nonce,
                    )
                    await self._rebroadcast(raw)
                else:
                    replacements += 1
                    self.replacements += 1
                    self._log.warn(
                        "{description} (nonce {nonce}) not mined after {seconds:.0f}s; replacing it "
                        "with maxFeePerGas {maxFee} wei (replacement {n} of {most})",
                        description=description,
                        nonce=nonce,
                        seconds=self.replaceAfter,
                        maxFee=bumped["maxFeePerGas"],
                        n=replacements,
                        most=self.maxReplacements,
                    )
                    tx = bumped
                    raw = await self._broadcast(tx, hashes, description)
            await deferLater(self._reactor, self.pollInterval, lambda: None)

    async def _broadcast(self, tx, hashes, description):
        signed = self._account.sign_transaction(tx)
        raw = bytes(signed.raw_transaction)
        txHash = "0x" + bytes(signed.hash).hex()
        hashes.append(txHash)
        self._log.info(
            "Sending {description}: hash {hash} nonce {nonce} maxFeePerGas {maxFee} "
            "maxPriorityFeePerGas {tip} gas {gas}",
            description=description,
            hash=txHash,
            nonce=tx["nonce"],
            maxFee=tx["maxFeePerGas"],
            tip=tx["maxPriorityFeePerGas"],
            gas=tx["gas"],
        )
        await self._rebroadcast(raw, first=True)
        return raw

    async def _rebroadcast(self, raw, first=False):
        try:
            await self._rpc.sendRawTransaction(raw)
        except RpcTransportError as e:
            # The node may or may not have it; the hash is known, so keep
            # polling and broadcast the same bytes again later.
            self._log.warn("Broadcast failed, will retry: {error}", error=str(e))
        except RpcError as e:
            text = (e.message or "").lower()
            if "already known" in text or "known transaction" in text or "already imported" in text:
                return
            if "nonce too low" in text and not first:
                return
            if "underpriced" in text and not first:
                self._log.warn("Replacement refused by the node: {error}", error=e.message)
                return
            raise

    async def _findReceipt(self, hashes):
        for txHash in hashes:
            try:
                receipt = await self._rpc.getTransactionReceipt(txHash)
            except (RpcError, RpcTransportError) as e:
                self._log.warn("Cannot read receipt of {hash}: {error}", hash=txHash, error=str(e))
                continue
            if receipt is not None and receipt.get("blockNumber"):
                return receipt
        return None

    async def _nonceTakenElsewhere(self, nonce):
        try:
            mined = await self._rpc.getTransactionCount(self.address, "latest")
        except (RpcError, RpcTransportError):
            return False
        return mined > nonce
