# -*- test-case-name: tests.test_chain_payments,tests.test_chain_tickets -*-
"""
Winning tickets: a durable queue in C{--dataDir} and their redemption.

A winning ticket is appended to an fsynced JSON-lines file before the segment
it paid for is answered; outcomes are appended to the same file. A restart
replays the file, so no winning ticket is lost, and compacts it: pending
tickets and the outcomes of the last C{outcomeRetention} seconds are kept.
"""

import json
import os
import time

from twisted.internet.defer import DeferredLock, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from livepeer_tx.metrics import ChainMetrics

from .contracts import WINNING_TICKET_REDEEMED_EVENT, WINNING_TICKET_TRANSFER_EVENT
from .periodic import PeriodicService
from .rpc import RpcError, RpcTransportError
from .tickets import Ticket, appendDurably, replaceDurably
from .transactions import GasPriceTooHigh, TransactionFailed, TransactionTimeout

STORE_FILE = "winning-tickets.jsonl"

# Outcomes that end a ticket's life.
REDEEMED = "redeemed"
USED = "used"
EXPIRED = "expired"
FAILED = "failed"

NON_RETRYABLE = {
    "ticket is used": USED,
    "ticket is expired": EXPIRED,
    "ticket creationRound does not have a block hash": FAILED,
    "ticket creationRoundBlockHash invalid for creationRound": FAILED,
    "invalid length for ticket auxData: must be 64 bytes": FAILED,
    "recipientRand does not match recipientRandHash": FAILED,
    "ticket did not win": FAILED,
    "invalid signature over ticket hash": FAILED,
    "sender is unlocked": FAILED,
}


class PendingTicket:
    """
    A winning ticket waiting for redemption.
    """

    def __init__(self, ticket, sig, recipientRand, expirationBlock, addedAt=None):
        self.ticket = ticket
        self.sig = bytes(sig)
        self.recipientRand = recipientRand
        self.expirationBlock = expirationBlock
        self.addedAt = addedAt if addedAt is not None else time.time()
        self.id = "0x" + ticket.hash().hex()

    def toRecord(self):
        """
        The JSON record that adds this ticket.
        """
        return {
            "op": "add",
            "id": self.id,
            "ticket": self.ticket.toJson(),
            "sig": self.sig.hex(),
            "recipientRand": str(self.recipientRand),
            "expirationBlock": self.expirationBlock,
            "addedAt": self.addedAt,
        }

    @classmethod
    def fromRecord(cls, record):
        """
        The inverse of L{toRecord}.
        """
        return cls(
            Ticket.fromJson(record["ticket"]),
            bytes.fromhex(record["sig"]),
            int(record["recipientRand"]),
            int(record["expirationBlock"]),
            record.get("addedAt"),
        )


class TicketStore:
    """
    The durable queue of winning tickets.

    @ivar pending: ticket id → L{PendingTicket} not yet finished.
    @ivar outcomes: ticket id → outcome of the tickets finished in the last
        C{outcomeRetention} seconds (this run and the file's).
    """

    _log = Logger()

    def __init__(self, reactor, dataDir, outcomeRetention=7 * 86400.0):
        self._reactor = reactor
        self.path = os.path.join(dataDir, STORE_FILE)
        self._lock = DeferredLock()
        self.outcomeRetention = outcomeRetention
        self.pending = {}
        self.outcomes = {}
        self._finishedAt = {}
        self._load()

    def _load(self):
        if not os.path.exists(self.path):
            return
        now = self._reactor.seconds()
        lines = 0
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                lines += 1
                try:
                    record = json.loads(line)
                except ValueError:
                    # A torn last line from a crash mid-write.
                    self._log.warn("Ignoring unreadable line {n} of {path}", n=number, path=self.path)
                    continue
                if record.get("op") == "add":
                    pending = PendingTicket.fromRecord(record)
                    if pending.id not in self.outcomes:
                        self.pending[pending.id] = pending
                elif record.get("op") == "done":
                    self.outcomes[record["id"]] = record["outcome"]
                    self._finishedAt[record["id"]] = record.get("at", now)
                    self.pending.pop(record["id"], None)
        self._forgetOldOutcomes()
        self._compact(lines)
        if self.pending:
            self._log.info(
                "{n} winning ticket(s) waiting for redemption in {path}",
                n=len(self.pending),
                path=self.path,
            )

    def _forgetOldOutcomes(self):
        oldest = self._reactor.seconds() - self.outcomeRetention
        for ticketId, at in list(self._finishedAt.items()):
            if at < oldest:
                del self._finishedAt[ticketId]
                del self.outcomes[ticketId]

    def _compact(self, lines):
        records = [p.toRecord() for p in self.pending.values()] + [
            {"op": "done", "id": i, "outcome": o, "at": self._finishedAt[i]}
            for i, o in self.outcomes.items()
        ]
        if len(records) == lines:
            return
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        replaceDurably(self.path, data.encode("utf-8"))
        self._log.info(
            "Compacted {path}: {before} records, {after} kept", path=self.path, before=lines,
            after=len(records),
        )

    def _append(self, record):
        appendDurably(self.path, (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))

    def _write(self, record):
        return self._lock.run(
            deferToThreadPool, self._reactor, self._reactor.getThreadPool(), self._append, record
        )

    def add(self, pending):
        """
        Queue a winning ticket; the L{Deferred} fires once it is on disk.
        """
        if pending.id in self.pending or pending.id in self.outcomes:
            return succeed(None)
        self.pending[pending.id] = pending
        return self._write(pending.toRecord())

    def finish(self, ticketId, outcome, detail=""):
        """
        Record a ticket's final outcome.
        """
        self.pending.pop(ticketId, None)
        self._forgetOldOutcomes()
        now = self._reactor.seconds()
        self.outcomes[ticketId] = outcome
        self._finishedAt[ticketId] = now
        return self._write(
            {"op": "done", "id": ticketId, "outcome": outcome, "detail": detail, "at": now}
        )


class Redeemer(PeriodicService):
    """
    Redeem queued winning tickets once their parameters have expired.

    @ivar redeemGas: the gas a redemption is assumed to cost, to judge whether
        a ticket or the sender's funds are worth it.
    @ivar metrics: the L{ChainMetrics} it counts redeemed value and errors in.
    """

    _log = Logger()

    def __init__(self, reactor, contracts, transactions, store, watcher, interval=5.0,
                 redeemGas=1_200_000, metrics=None):
        super().__init__(reactor, interval)
        self.metrics = metrics if metrics is not None else ChainMetrics()
        self._contracts = contracts
        self._tx = transactions
        self.store = store
        self._watcher = watcher
        self.redeemGas = redeemGas
        self._said = set()

    def shouldRun(self):
        """
        Only when tickets are queued.
        """
        return bool(self.store.pending)

    def runOnce(self):
        """
        One redemption pass (see L{redeemDue}).
        """
        return self.redeemDue()

    async def redeemDue(self):
        """
        Try every queued ticket whose parameters have expired once.

        @return: the number of tickets finished in this pass.
        """
        w = self._watcher
        if w.lastL1Block is None:
            return 0
        finished = 0
        for pending in sorted(self.store.pending.values(), key=lambda p: p.expirationBlock):
            if pending.expirationBlock > w.lastL1Block:
                continue
            try:
                outcome = await self._redeem(pending)
            except (RpcError, RpcTransportError, TransactionTimeout) as e:
                self.metrics.redemptionErrors.inc()
                self._log.warn(
                    "Cannot redeem ticket {id} yet, will retry: {error}", id=pending.id, error=str(e)
                )
                continue
            if outcome is not None:
                finished += 1
        return finished

    async def _redeem(self, pending):
        w = self._watcher
        ticket = pending.ticket
        tb = self._contracts.ticketBroker
        if ticket.creationRound + w.ticketValidityPeriod <= w.currentRound:
            return await self._finish(pending, EXPIRED, "ticket is expired")
        if await tb.call("usedTickets", ticket.hash()):
            return await self._finish(pending, USED, "ticket is used")
        (deposit, _), (reserve, _) = await tb.call("getSenderInfo", ticket.sender)
        claimed = await tb.call("claimedReserve", ticket.sender, self._tx.address)
        available = deposit + max(0, reserve // max(1, w.poolSize) - claimed)
        txCost = self.redeemGas * (w.gasPrice or 0)
        if ticket.faceValue <= txCost or available <= txCost:
            key = (pending.id, "cost")
            if key not in self._said:
                self._said.add(key)
                self._log.info(
                    "Not redeeming ticket {id} yet: face value {faceValue} / sender funds "
                    "{available} do not cover the gas ({cost} wei)",
                    id=pending.id,
                    faceValue=ticket.faceValue,
                    available=available,
                    cost=txCost,
                )
            return None
        data = tb.encode("redeemWinningTicket", ticket.asAbiTuple(), pending.sig, pending.recipientRand)
        try:
            receipt = await self._tx.send(tb.address, data, description=f"redeem ticket {pending.id}")
        except GasPriceTooHigh as e:
            self._log.info("Not redeeming ticket {id} yet: {error}", id=pending.id, error=str(e))
            return None
        except TransactionFailed as e:
            self.metrics.redemptionErrors.inc()
            return await self._finish(pending, FAILED, str(e))
        except RpcError as e:
            outcome = NON_RETRYABLE.get(e.revertReason)
            if outcome is None:
                raise
            self.metrics.redemptionErrors.inc()
            return await self._finish(pending, outcome, e.revertReason)
        redeemed = WINNING_TICKET_REDEEMED_EVENT.find(receipt, tb.address)
        if not redeemed:
            self.metrics.redemptionErrors.inc()
            return await self._finish(pending, FAILED, "no WinningTicketRedeemed event")
        amount = sum(v[2] for v in WINNING_TICKET_TRANSFER_EVENT.find(receipt, tb.address))
        self.metrics.valueRedeemed.inc(amount)
        self._log.info(
            "Redeemed winning ticket {id}: {amount} wei (face value {faceValue}), tx {hash}",
            id=pending.id,
            amount=amount,
            faceValue=ticket.faceValue,
            hash=receipt["transactionHash"],
        )
        return await self._finish(pending, REDEEMED, receipt["transactionHash"])

    async def _finish(self, pending, outcome, detail):
        if outcome != REDEEMED:
            self._log.warn(
                "Winning ticket {id} will not be redeemed: {outcome} ({detail})",
                id=pending.id,
                outcome=outcome,
                detail=detail,
            )
        await self.store.finish(pending.id, outcome, detail)
        return outcome
