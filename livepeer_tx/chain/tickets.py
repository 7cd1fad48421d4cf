# -*- test-case-name: tests.test_chain_tickets,tests.test_chain_payments -*-
"""
Probabilistic micropayment tickets: hashing, signatures, the win check, the
recipientRand secret, ticket parameters and validation (recipient side).

The layouts follow the TicketBroker contract and go-livepeer's C{pm}
package; error strings are go-livepeer's so that gateways see familiar text.
"""

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from fractions import Fraction

from eth_abi.packed import encode_packed
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak, to_checksum_address
from twisted.internet.defer import DeferredLock, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from livepeer_tx.proto import lp_rpc_pb2
from livepeer_tx.secret import loadOrCreateKeyFile

MAX_WIN_PROB = 2**256 - 1
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
PARAMS_EXPIRY_BLOCKS = 40
MAX_SENDER_NONCES = 600
KEY_FILE = "ticket-recipient.key"
NONCES_FILE = "ticket-nonces.jsonl"


def intBytes(value):
    """
    Minimal big-endian bytes of a non-negative integer (Go's C{big.Int.Bytes}).
    """
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def bytesInt(value):
    """
    The integer of big-endian bytes (empty is 0).
    """
    return int.from_bytes(value, "big")


def pad32(value):
    """
    An integer as 32 big-endian bytes.
    """
    return value.to_bytes(32, "big")


@dataclass(frozen=True)
class Ticket:
    """
    A ticket as the TicketBroker sees it (addresses are 20 raw bytes).
    """

    recipient: bytes
    sender: bytes
    faceValue: int
    winProb: int
    senderNonce: int
    recipientRandHash: bytes
    creationRound: int = 0
    creationRoundBlockHash: bytes = b"\x00" * 32

    @classmethod
    def fromParams(cls, params, sender, senderNonce, expiration=None):
        """
        The ticket a sender made from our C{TicketParams} (a protobuf).

        @param sender: the sender's 20-byte address.
        @param expiration: the C{TicketExpirationParams} to use instead of
            the ones inside C{params} (a C{Payment} may carry its own).
        """
        expiration = params.expiration_params if expiration is None else expiration
        return cls(
            recipient=bytes(params.recipient),
            sender=sender,
            faceValue=bytesInt(params.face_value),
            winProb=bytesInt(params.win_prob),
            senderNonce=senderNonce,
            recipientRandHash=bytes(params.recipient_rand_hash),
            creationRound=expiration.creation_round,
            creationRoundBlockHash=bytes(expiration.creation_round_block_hash).rjust(32, b"\0"),
        )

    @property
    def auxData(self):
        """
        creationRound ‖ creationRoundBlockHash, or empty when both are zero.
        """
        if self.creationRound == 0 and bytesInt(self.creationRoundBlockHash) == 0:
            return b""
        return pad32(self.creationRound) + self.creationRoundBlockHash

    def hash(self):
        """
        keccak256 of the packed encoding, as C{TicketBroker.getTicketHash}.
        """
        return keccak(
            encode_packed(
                ["address", "address", "uint256", "uint256", "uint256", "bytes32", "bytes"],
                [
                    self.recipient,
                    self.sender,
                    self.faceValue,
                    self.winProb,
                    self.senderNonce,
                    self.recipientRandHash,
                    self.auxData,
                ],
            )
        )

    def asAbiTuple(self):
        """
        The C{(address,address,uint256,uint256,uint256,bytes32,bytes)} tuple.
        """
        return (
            to_checksum_address(self.recipient),
            to_checksum_address(self.sender),
            self.faceValue,
            self.winProb,
            self.senderNonce,
            self.recipientRandHash,
            self.auxData,
        )

    def toJson(self):
        """
        A JSON-serialisable dictionary.
        """
        return {
            "recipient": self.recipient.hex(),
            "sender": self.sender.hex(),
            "faceValue": str(self.faceValue),
            "winProb": str(self.winProb),
            "senderNonce": self.senderNonce,
            "recipientRandHash": self.recipientRandHash.hex(),
            "creationRound": self.creationRound,
            "creationRoundBlockHash": self.creationRoundBlockHash.hex(),
        }

    @classmethod
    def fromJson(cls, data):
        """
        The inverse of L{toJson}.
        """
        return cls(
            recipient=bytes.fromhex(data["recipient"]),
            sender=bytes.fromhex(data["sender"]),
            faceValue=int(data["faceValue"]),
            winProb=int(data["winProb"]),
            senderNonce=int(data["senderNonce"]),
            recipientRandHash=bytes.fromhex(data["recipientRandHash"]),
            creationRound=int(data["creationRound"]),
            creationRoundBlockHash=bytes.fromhex(data["creationRoundBlockHash"]),
        )


def signTicket(account, ticket):
    """
    Sign a ticket as a gateway does (EIP-191 over the 32-byte hash).
    """
    return bytes(account.sign_message(encode_defunct(primitive=ticket.hash())).signature)


def verifySignature(ticketHash, sig, sender):
    """
    Whether C{sig} is a signature by C{sender} over C{ticketHash} that the
    chain accepts: 65 bytes, low s, v 27 or 28 (eth-account alone also
    accepts v 0/1 and high s).
    """
    if len(sig) != 65:
        return False
    if bytesInt(sig[32:64]) > SECP256K1_N // 2 or sig[64] not in (27, 28):
        return False
    try:
        signer = Account.recover_message(encode_defunct(primitive=ticketHash), signature=sig)
    except Exception:
        return False
    return bytes.fromhex(signer[2:]) == bytes(sender)


def isWinning(sig, recipientRand, winProb):
    """
    keccak256(sig ‖ recipientRand) < winProb, as the TicketBroker checks.
    """
    return bytesInt(keccak(bytes(sig) + pad32(recipientRand))) < winProb


def expectedValue(faceValue, winProb):
    """
    A ticket's expected value in wei, exact.
    """
    return Fraction(faceValue * winProb, MAX_WIN_PROB)


class TicketError(Exception):
    """
    A ticket was refused.

    @ivar fatal: whether the payment's later tickets are left unread. Only a
        bad signature is not fatal (as in go-livepeer): the later tickets are
        still validated and their winners queued, but none is credited.
    """

    def __init__(self, message, fatal=True):
        Exception.__init__(self, message)
        self.message = message
        self.fatal = fatal


def loadRecipientKey(dataDir):
    """
    The 32-byte recipientRand key from C{dataDir}, created (mode 0600) if missing.

    Keeping it on disk lets ticket parameters issued before a restart still
    validate after it.

    @raise SecretFileError: the file is unusable, or readable by group or
        others.
    """
    return loadOrCreateKeyFile(os.path.join(dataDir, KEY_FILE), 32, "ticket recipient key")


class SeenNonces:
    """
    The sender nonces seen per ticket parameters (keyed by recipientRandHash)
    until those parameters expire, optionally kept in a JSON-lines file so
    that a restart does not accept a ticket a second time.

    Each record is C{{"h": recipientRandHash, "e": expirationBlock, "n": nonce}}.
    Expired records are dropped from memory by L{forgetExpired}, which also
    rewrites the file once it holds more than twice the live records plus
    C{compactSlack}.
    """

    _log = Logger()

    def __init__(self, reactor=None, path=None, compactSlack=64):
        self._reactor = reactor
        self.compactSlack = compactSlack
        self.path = path
        self._seen = {}
        self._unsaved = []
        self._fileRecords = 0
        self._lock = DeferredLock()
        if path is not None:
            self._load()

    def _load(self):
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                self._fileRecords += 1
                try:
                    record = json.loads(line)
                    randHash, expiration, nonce = bytes.fromhex(record["h"]), record["e"], record["n"]
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from a crash mid-write
                self._seen.setdefault(randHash, (expiration, set()))[1].add(nonce)

    def __len__(self):
        return sum(len(nonces) for _, nonces in self._seen.values())

    def nonces(self, recipientRandHash):
        """
        The nonces seen for a recipientRandHash (an empty set if none).
        """
        entry = self._seen.get(recipientRandHash)
        return frozenset() if entry is None else frozenset(entry[1])

    def add(self, recipientRandHash, expirationBlock, nonce):
        """
        Remember a nonce now; L{save} makes it durable.
        """
        self._seen.setdefault(recipientRandHash, (expirationBlock, set()))[1].add(nonce)
        if self.path is not None:
            self._unsaved.append({"h": recipientRandHash.hex(), "e": expirationBlock, "n": nonce})

    def save(self):
        """
        Append the nonces added since the last save to the file (fsynced, in
        a thread).

        @return: a L{Deferred} that fires once every nonce added before this
            call is on disk.
        """
        if self.path is None:
            return succeed(None)
        return self._lock.run(self._saveLocked)

    def _saveLocked(self):
        records, self._unsaved = self._unsaved, []
        if not records:
            return succeed(None)
        self._fileRecords += len(records)
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8")
        return self._inThread(appendDurably, self.path, data)

    def _inThread(self, f, *args):
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)

    def forgetExpired(self, lastL1Block):
        """
        Drop the nonces of parameters that have expired at C{lastL1Block}.

        @return: a L{Deferred} that fires when the file, if it was rewritten,
            is on disk.
        """
        for randHash, (expirationBlock, _) in list(self._seen.items()):
            if expirationBlock <= lastL1Block:
                del self._seen[randHash]
        if self.path is None or self._fileRecords <= 2 * len(self) + self.compactSlack:
            return succeed(None)
        return self._lock.run(self._compactLocked)

    def _compactLocked(self):
        records = [
            {"h": randHash.hex(), "e": expiration, "n": nonce}
            for randHash, (expiration, nonces) in self._seen.items()
            for nonce in sorted(nonces)
        ]
        # Unsaved nonces are in the snapshot, so they are written here.
        self._unsaved = []
        self._fileRecords = len(records)
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8")
        return self._inThread(replaceDurably, self.path, data)


def _writeSynced(path, flags, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def appendDurably(path, data):
    """
    Append C{data} to a file (created 0600) and fsync it before returning.
    """
    _writeSynced(path, os.O_APPEND, data)


def replaceDurably(path, data):
    """
    Replace a file's content atomically: write a temporary file, fsync it,
    rename it over C{path}, and fsync the directory.
    """
    tmp = path + ".tmp"
    _writeSynced(tmp, os.O_TRUNC, data)
    os.replace(tmp, path)
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass
class SenderInfo:
    """
    What the TicketBroker says about a sender.
    """

    deposit: int
    withdrawRound: int
    reserve: int
    claimedInCurrentRound: int = 0


class TicketRecipient:
    """
    The recipient side of the ticket protocol: parameters and validation.

    @ivar address: our 20-byte address (the tickets' recipient).
    @ivar nonces: the L{SeenNonces} of unexpired parameters (in memory only
        unless one with a file is given).
    """

    _log = Logger()

    def __init__(self, address, key, ticketEV, maxFaceValue=0, txCostMultiplier=100, nonces=None):
        self.address = bytes.fromhex(address[2:]) if isinstance(address, str) else bytes(address)
        self._key = key
        self.ticketEV = ticketEV
        self.maxFaceValue = maxFaceValue
        self.txCostMultiplier = txCostMultiplier
        self.nonces = SeenNonces() if nonces is None else nonces

    def recipientRand(self, seed, sender, faceValue, winProb, expirationBlock, price, auxData):
        """
        HMAC-SHA256 of the parameters under our key, as an integer.
        """
        message = b"".join(
            [
                seed,
                sender,
                intBytes(faceValue),
                intBytes(winProb),
                intBytes(expirationBlock),
                intBytes(price.numerator),
                intBytes(price.denominator),
                auxData,
            ]
        )
        return bytesInt(hmac.new(self._key, message, hashlib.sha256).digest())

    def faceValue(self, txCost, maxFloat):
        """
        The face value for a sender, or raise L{TicketError} when its reserve
        cannot back a ticket.
        """
        faceValue = txCost * self.txCostMultiplier
        if faceValue < self.ticketEV:
            faceValue = self.ticketEV * self.txCostMultiplier
        faceValue = min(faceValue, maxFloat)
        if self.maxFaceValue:
            faceValue = min(faceValue, self.maxFaceValue)
        if faceValue < self.ticketEV or faceValue < txCost:
            raise TicketError("insufficient sender reserve")
        return faceValue

    def winProb(self, faceValue):
        """
        EV × ceil((2^256 − 1) / faceValue), at most 2^256 − 1.
        """
        if faceValue == 0:
            return 0
        return min(MAX_WIN_PROB, self.ticketEV * -(-MAX_WIN_PROB // faceValue))

    def makeParams(self, sender, faceValue, winProb, price, lastL1Block, creationRound,
                   creationRoundBlockHash):
        """
        A fresh L{lp_rpc_pb2.TicketParams} for C{sender}.
        """
        seed = secrets.token_bytes(32)
        expirationBlock = lastL1Block + PARAMS_EXPIRY_BLOCKS
        aux = Ticket(b"", b"", 0, 0, 0, b"", creationRound, creationRoundBlockHash).auxData
        rand = self.recipientRand(seed, sender, faceValue, winProb, expirationBlock, price, aux)
        return lp_rpc_pb2.TicketParams(
            recipient=self.address,
            face_value=intBytes(faceValue),
            win_prob=intBytes(winProb),
            recipient_rand_hash=keccak(pad32(rand)),
            seed=seed,
            expiration_block=intBytes(expirationBlock),
            expiration_params=lp_rpc_pb2.TicketExpirationParams(
                creation_round=creationRound, creation_round_block_hash=creationRoundBlockHash
            ),
        )

    def validate(self, ticket, sig, seed, expirationBlock, price, senderInfo, currentRound,
                 lastL1Block):
        """
        Check one ticket in go-livepeer's order; return C{(won, recipientRand)}.

        An accepted ticket's nonce is remembered in L{nonces} (in memory; the
        caller saves them).

        @raise TicketError: the ticket is refused.
        """
        if senderInfo.withdrawRound != 0 and senderInfo.withdrawRound <= currentRound + 1:
            raise TicketError(
                f"deposit and reserve for sender {to_checksum_address(ticket.sender)} "
                f"is set to unlock soon"
            )
        if senderInfo.deposit == 0 and senderInfo.reserve == 0:
            raise TicketError("sender deposit and reserve are zero")
        if ticket.recipient != self.address:
            raise TicketError("invalid ticket recipient")
        if bytesInt(ticket.sender) == 0:
            raise TicketError("invalid ticket sender")
        rand = self.recipientRand(
            seed, ticket.sender, ticket.faceValue, ticket.winProb, expirationBlock, price,
            ticket.auxData,
        )
        if keccak(pad32(rand)) != ticket.recipientRandHash:
            raise TicketError("invalid recipientRand for ticket recipientRandHash")
        if not verifySignature(ticket.hash(), sig, ticket.sender):
            raise TicketError("invalid ticket signature", fatal=False)
        won = isWinning(sig, rand, ticket.winProb)
        seen = self.nonces.nonces(ticket.recipientRandHash)
        sender = to_checksum_address(ticket.sender)
        if ticket.senderNonce in seen:
            raise TicketError(
                f"invalid ticket senderNonce: already seen sender={sender} nonce={ticket.senderNonce}"
            )
        if len(seen) >= MAX_SENDER_NONCES:
            raise TicketError(
                f"invalid ticket senderNonce: too many values sender={sender} "
                f"nonce={ticket.senderNonce}"
            )
        if expirationBlock <= lastL1Block:
            raise TicketError("TicketParams expired")
        self.nonces.add(ticket.recipientRandHash, expirationBlock, ticket.senderNonce)
        return won, rand

    def forgetExpired(self, lastL1Block):
        """
        Drop the nonces of parameters that have expired (see
        L{SeenNonces.forgetExpired}).
        """
        return self.nonces.forgetExpired(lastL1Block)
