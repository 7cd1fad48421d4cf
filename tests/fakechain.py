# -*- test-case-name: tests.test_chain_reward,tests.test_chain_payments,tests.test_chain_service,tests.test_chain_conformance -*-
"""
An in-memory Ethereum JSON-RPC node running the Livepeer contracts' logic,
for chain tests on a L{twisted.internet.task.Clock}.

L{FakeChain.agent} is an L{IAgent}: the real L{JsonRpcClient} given it
(L{FakeChain.client}) sends its JSON-RPC requests here instead of over HTTP,
and the node answers the calls the chain code makes: C{eth_chainId},
C{eth_blockNumber}, C{eth_getBlockByNumber}, C{eth_getBalance},
C{eth_getTransactionCount}, C{eth_maxPriorityFeePerGas}, C{eth_call},
C{eth_estimateGas}, C{eth_sendRawTransaction} (the signed transaction is
decoded with eth-account and its effect applied when it is mined) and
C{eth_getTransactionReceipt}.

The contracts are modelled on the stand-ins (contracts/*.sol): the same checks
in the same order with the same revert strings. Calldata is decoded, and
results and event logs encoded, with eth-abi from the stand-ins' compiled ABI
(the deployed signatures), so what the chain code encodes is checked by
selector here; tests/test_chain_conformance.py runs the same scenarios here
and on anvil with the stand-ins, which keeps this model honest.

Blocks are mined when the test says (L{FakeChain.mine}, L{FakeChain.mineTo})
and, with automine on (the default, as on anvil), one per transaction.
The node can be made to refuse connections (L{FakeChain.stop}), take requests
and never answer (L{FakeChain.hang}), answer late (L{FakeChain.answerAfter}),
and accept a transaction but drop it (L{FakeChain.dropNextTransaction}).
"""

import copy
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from eth_abi import decode as abiDecode
from eth_abi import encode as abiEncode
from eth_abi.packed import encode_packed
from eth_account import Account
from eth_keys import keys
from eth_utils import keccak, to_checksum_address
from eth_utils.abi import (
    event_abi_to_log_topic, function_abi_to_4byte_selector, get_abi_input_types, get_abi_output_types,
)
from hexbytes import HexBytes
from eth_account.typed_transactions import TypedTransaction
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse, UNKNOWN_LENGTH
from zope.interface import implementer

from livepeer_tx.chain.contracts import LivepeerContracts
from livepeer_tx.chain.rpc import JsonRpcClient

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS_PATH = ROOT / "contracts" / "build" / "standins.json"

CHAIN_ID = 31337
MAX_UINT256 = 2**256 - 1
MAX_FUTURE_ROUND = 2**256 - 1
HALF_CURVE_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
ERROR_SELECTOR = keccak(text="Error(string)")[:4]
TRANSFER_GAS = 21000
CALL_GAS = 150_000
TICKET_TYPES = ["address", "address", "uint256", "uint256", "uint256", "bytes32", "bytes"]


@lru_cache(maxsize=1)
def loadArtifacts():
    """
    The compiled stand-ins: C{{name: {"abi": [...], "bytecode": "0x..."}}}.
    """
    with open(ARTIFACTS_PATH, encoding="utf-8") as f:
        return json.load(f)


class Revert(Exception):
    """
    A contract call reverted, with C{reason} (a revert string) or L{None}.
    """

    def __init__(self, reason=None):
        Exception.__init__(self, reason)
        self.reason = reason


def _require(condition, reason):
    if not condition:
        raise Revert(reason)


class NodeError(Exception):
    """
    The node refuses a request (a JSON-RPC error that is not a revert).
    """

    def __init__(self, message, code=-32000):
        Exception.__init__(self, message)
        self.code = code
        self.message = message


def address(value):
    """
    A checksummed address from an address string, 20 raw bytes or a
    C{LocalAccount}.
    """
    if hasattr(value, "address"):
        value = value.address
    if isinstance(value, (bytes, bytearray)):
        value = "0x" + bytes(value).hex()
    return _checksummed(value)


_checksummed = lru_cache(maxsize=4096)(to_checksum_address)


def blockHash(number):
    """
    The (made-up, fixed) hash of block C{number}.
    """
    return keccak(b"fake block " + number.to_bytes(32, "big"))


# ---- Contract state ----------------------------------------------------------


@dataclass
class _Transcoder:
    lastRewardRound: int = 0
    rewardCut: int = 0
    feeShare: int = 0
    lastActiveStakeUpdateRound: int = 0
    activationRound: int = 0
    deactivationRound: int = 0
    activeCumulativeRewards: int = 0
    cumulativeRewards: int = 0
    cumulativeFees: int = 0
    lastFeeRound: int = 0
    bonded: int = 0
    fees: int = 0


@dataclass
class _Sender:
    deposit: int = 0
    withdrawRound: int = 0
    reserve: int = 0
    claimedForRound: dict = field(default_factory=dict)
    claimedByAddress: dict = field(default_factory=dict)  # (round, claimant) -> amount


@dataclass
class _State:
    """
    Everything a transaction may change; copied for calls and rolled back on revert.
    """

    paused: bool = False
    lastInitializedRound: int = 0
    roundBlockHash: dict = field(default_factory=dict)
    mintable: int = 0
    minted: int = 0
    transcoders: dict = field(default_factory=dict)
    pool: list = field(default_factory=list)
    senders: dict = field(default_factory=dict)
    usedTickets: set = field(default_factory=set)
    forcedRewardRevert: dict = field(default_factory=dict)
    balances: dict = field(default_factory=dict)

    def transcoder(self, who):
        """
        The transcoder record of C{who}, created empty if need be.
        """
        return self.transcoders.setdefault(who, _Transcoder())

    def sender(self, who):
        """
        The TicketBroker record of C{who}, created empty if need be.
        """
        return self.senders.setdefault(who, _Sender())


class _Execution:
    """
    One call or transaction: who sends it, in which block, on which state,
    and the logs it emits.
    """

    def __init__(self, chain, state, sender, value, block):
        self.chain = chain
        self.state = state
        self.sender = sender
        self.value = value
        self.block = block
        self.logs = []

    @property
    def currentRound(self):
        """
        RoundsManager.currentRound() in this execution's block.
        """
        return self.block // self.chain.roundLength

    def emit(self, contract, event, *values):
        """
        Log C{event} of C{contract} with C{values}, in ABI argument order.
        """
        self.logs.append((contract, event, values))


class _Contract:
    """
    A contract model: methods named after the ABI functions it implements,
    called as C{method(execution, *decodedArguments)}.
    """

    name = None

    def __init__(self, chain):
        self.chain = chain
        self.address = address(keccak(text="fake " + self.name)[:20])
        self.abi = loadArtifacts()[self.name]["abi"]


class _Controller(_Contract):
    """
    The Controller functions the chain code uses, as contracts/Controller.sol has them.
    """

    name = "Controller"

    def getContract(self, x, contractId):
        return self.chain.registry.get(bytes(contractId), "0x" + "00" * 20)

    def paused(self, x):
        return x.state.paused


class _RoundsManager(_Contract):
    """
    The RoundsManager functions the chain code uses, as contracts/RoundsManager.sol has them.
    """

    name = "RoundsManager"

    def roundLength(self, x):
        return self.chain.roundLength

    def blockNum(self, x):
        return x.block

    def currentRound(self, x):
        return x.currentRound

    def currentRoundStartBlock(self, x):
        return x.currentRound * self.chain.roundLength

    def currentRoundInitialized(self, x):
        return x.state.lastInitializedRound == x.currentRound

    def lastInitializedRound(self, x):
        return x.state.lastInitializedRound

    def blockHashForRound(self, x, round_):
        return x.state.roundBlockHash.get(round_, b"\x00" * 32)

    def initializeRound(self, x):
        _require(not x.state.paused, "system is paused")
        _require(x.state.lastInitializedRound < x.currentRound, "round already initialized")
        x.state.lastInitializedRound = x.currentRound
        x.state.roundBlockHash[x.currentRound] = blockHash(x.block - 1)
        x.state.mintable, x.state.minted = self.chain.mintablePerRound, 0
        x.emit(self, "NewRound", x.currentRound, blockHash(x.block - 1))


def _requireInitialized(x):
    _require(not x.state.paused, "system is paused")
    _require(x.state.lastInitializedRound == x.currentRound, "current round is not initialized")


class _BondingManager(_Contract):
    """
    The BondingManager functions the chain code uses, as contracts/BondingManager.sol has them.
    """

    name = "BondingManager"

    def isActiveTranscoder(self, x, who):
        t = x.state.transcoders.get(who)
        return t is not None and t.activationRound <= x.currentRound < t.deactivationRound

    def isRegisteredTranscoder(self, x, who):
        t = x.state.transcoders.get(who)
        return t is not None and t.bonded > 0

    def transcoderStatus(self, x, who):
        return 1 if self.isRegisteredTranscoder(x, who) else 0

    def getTranscoder(self, x, who):
        t = x.state.transcoders.get(who, _Transcoder())
        return (t.lastRewardRound, t.rewardCut, t.feeShare, t.lastActiveStakeUpdateRound, t.activationRound,
                t.deactivationRound, t.activeCumulativeRewards, t.cumulativeRewards, t.cumulativeFees,
                t.lastFeeRound)

    def getTranscoderPoolSize(self, x):
        return len(x.state.pool)

    def pendingFees(self, x, who, endRound):
        return x.state.transcoders.get(who, _Transcoder()).fees

    def reward(self, x):
        return self.rewardWithHint(x, None, None)

    def rewardWithHint(self, x, newPosPrev, newPosNext):
        _requireInitialized(x)
        _require(self.isActiveTranscoder(x, x.sender), "caller must be an active transcoder")
        t = x.state.transcoders[x.sender]
        _require(t.lastRewardRound != x.currentRound, "caller has already called reward for the current round")
        forced = x.state.forcedRewardRevert.get(x.sender)
        _require(not forced, forced)
        activeStake = sum(
            x.state.transcoders[a].bonded for a in x.state.pool if self.isActiveTranscoder(x, a)
        )
        minted = x.state.mintable * t.bonded // max(1, activeStake)
        x.state.minted += minted
        _require(x.state.minted <= x.state.mintable, "minted tokens cannot exceed mintable tokens")
        t.cumulativeRewards += minted
        t.activeCumulativeRewards = t.cumulativeRewards
        t.bonded += minted
        t.lastRewardRound = x.currentRound
        x.emit(self, "Reward", x.sender, minted)

    def updateTranscoderWithFees(self, x, who, fees, round_):
        _require(self.isRegisteredTranscoder(x, who), "transcoder must be registered")
        t = x.state.transcoders[who]
        t.cumulativeFees += fees
        t.lastFeeRound = x.currentRound
        t.fees += fees


class _TicketBroker(_Contract):
    """
    The TicketBroker functions the chain code uses, as contracts/TicketBroker.sol has them.
    """

    name = "TicketBroker"

    def ticketValidityPeriod(self, x):
        return self.chain.ticketValidityPeriod

    def usedTickets(self, x, ticketHash):
        return bytes(ticketHash) in x.state.usedTickets

    def getTicketHash(self, x, ticket):
        return keccak(encode_packed(TICKET_TYPES, list(ticket)))

    def getSenderInfo(self, x, who):
        s = x.state.senders.get(who, _Sender())
        return (s.deposit, s.withdrawRound), (s.reserve, s.claimedForRound.get(x.currentRound, 0))

    def claimedReserve(self, x, holder, claimant):
        s = x.state.senders.get(holder, _Sender())
        return s.claimedByAddress.get((x.currentRound, claimant), 0)

    def claimableReserve(self, x, holder, claimant):
        bm = self.chain.bondingManager
        if not bm.isActiveTranscoder(x, claimant) or not x.state.pool:
            return 0
        s = x.state.senders.get(holder, _Sender())
        share = (s.reserve + s.claimedForRound.get(x.currentRound, 0)) // len(x.state.pool)
        return max(0, share - self.claimedReserve(x, holder, claimant))

    def _locked(self, x, s):
        return s.withdrawRound == 0 or x.currentRound < s.withdrawRound

    def unlock(self, x):
        _require(not x.state.paused, "system is paused")
        s = x.state.sender(x.sender)
        _require(s.deposit > 0 or s.reserve > 0, "sender deposit and reserve are zero")
        _require(s.withdrawRound == 0, "unlock already initiated")
        s.withdrawRound = x.currentRound + self.chain.unlockPeriod

    def redeemWinningTicket(self, x, ticket, sig, recipientRand):
        _requireInitialized(x)
        recipient, sender, faceValue, winProb, senderNonce, randHash, auxData = ticket
        recipient, sender = address(recipient), address(sender)
        ticketHash = self.getTicketHash(x, ticket)
        _require(int(recipient, 16) != 0, "ticket recipient is null address")
        _require(int(sender, 16) != 0, "ticket sender is null address")
        _require(len(auxData) == 64, "invalid length for ticket auxData: must be 64 bytes")
        creationRound, creationHash = int.from_bytes(auxData[:32], "big"), bytes(auxData[32:])
        stored = x.state.roundBlockHash.get(creationRound, b"\x00" * 32)
        _require(stored != b"\x00" * 32, "ticket creationRound does not have a block hash")
        _require(creationHash == stored, "ticket creationRoundBlockHash invalid for creationRound")
        _require(creationRound + self.chain.ticketValidityPeriod > x.currentRound, "ticket is expired")
        _require(keccak(recipientRand.to_bytes(32, "big")) == bytes(randHash),
                 "recipientRand does not match recipientRandHash")
        _require(ticketHash not in x.state.usedTickets, "ticket is used")
        _require(_signer(bytes(sig), bytes(ticketHash)) == sender, "invalid signature over ticket hash")
        _require(int.from_bytes(keccak(bytes(sig) + recipientRand.to_bytes(32, "big")), "big") < winProb,
                 "ticket did not win")
        s = x.state.sender(sender)
        _require(self._locked(x, s), "sender is unlocked")
        _require(s.deposit > 0 or s.reserve > 0, "sender deposit and reserve are zero")
        x.state.usedTickets.add(ticketHash)
        if faceValue > s.deposit:
            claim = min(faceValue - s.deposit, self.claimableReserve(x, sender, recipient))
            if claim:
                s.claimedForRound[x.currentRound] = s.claimedForRound.get(x.currentRound, 0) + claim
                key = (x.currentRound, recipient)
                s.claimedByAddress[key] = s.claimedByAddress.get(key, 0) + claim
                s.reserve -= claim
                x.emit(self, "ReserveClaimed", sender, recipient, claim)
            amount, s.deposit = s.deposit + claim, 0
        else:
            amount = faceValue
            s.deposit -= faceValue
        if amount:
            self.chain.bondingManager.updateTranscoderWithFees(x, recipient, amount, creationRound)
            x.emit(self, "WinningTicketTransfer", sender, recipient, amount)
        x.emit(self, "WinningTicketRedeemed", sender, recipient, faceValue, winProb, senderNonce, recipientRand,
               bytes(auxData))


@lru_cache(maxsize=256)
def _signer(sig, ticketHash):
    """
    Who signed a ticket hash, with OpenZeppelin 4.4 ECDSA.recover's checks.
    """
    sig = bytes(sig)
    _require(len(sig) == 65, "INVALID_SIGNATURE_LENGTH")
    r, s, v = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
    _require(s <= HALF_CURVE_ORDER, "ECDSA: invalid signature 's' value")
    _require(v in (27, 28), "ECDSA: invalid signature 'v' value")
    digest = keccak(b"\x19Ethereum Signed Message:\n32" + bytes(ticketHash))
    try:
        public = keys.Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(digest)
    except Exception:
        raise Revert("ECDSA: invalid signature") from None
    return public.to_checksum_address()


# ---- The node ------------------------------------------------------------------------


class _ImmediateThreadPool:
    """
    Runs "threaded" work at once, in the caller.
    """

    def callInThreadWithCallback(self, onResult, function, *args, **kwargs):
        try:
            result = function(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class ThreadlessClock(Clock):
    """
    A test clock that is also reactor enough for code that runs work on the
    reactor's thread pool through C{deferToThreadPool} (the chain code's
    ticket queue and nonce files, the upload budget's heap trims): it runs
    at once.
    """

    def getThreadPool(self):
        """
        A pool that runs each call at once.
        """
        return _ImmediateThreadPool()

    def callFromThread(self, function, *args, **kwargs):
        """
        Run C{function} now.
        """
        function(*args, **kwargs)


@implementer(IResponse)
class _JsonResponse:
    version = (b"HTTP", 1, 1)
    code = 200
    phrase = b"OK"
    request = None
    previousResponse = None

    def __init__(self, body):
        self._body = body
        self.length = len(body)
        self.headers = Headers({b"Content-Type": [b"application/json"]})

    def deliverBody(self, protocol):
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(self._body)
        protocol.connectionLost(Failure(ResponseDone()))

    def setPreviousResponse(self, response):
        self.previousResponse = response


@implementer(IAgent)
class _NodeAgent:
    """
    Carries a JSON-RPC client's HTTP requests to a L{FakeChain}.
    """

    def __init__(self, chain):
        self._chain = chain

    def request(self, method, uri, headers=None, bodyProducer=None):
        body = StringTransport()
        if bodyProducer is not None:
            bodyProducer.startProducing(body)
        return self._chain._receive(uri, body.value())


class FakeChain:
    """
    An Ethereum node with the Livepeer Controller, RoundsManager,
    BondingManager and TicketBroker, in memory.

    It starts like L{tests.chainharness.deployStandIns} leaves anvil: unpaused,
    the latest block at the start of round 1, round 1 initialized.

    @ivar clock: the clock that times late answers (see L{answerAfter}).
    @ivar blockNumber: the latest block.
    @ivar baseFee: the base fee per gas of the next block, in wei.
    @ivar tip: what C{eth_maxPriorityFeePerGas} answers.
    @ivar automine: whether every accepted transaction is mined in a block of its own at once.
    @ivar requests: the JSON-RPC method names received, in order.
    @ivar internalErrors: failures of this model while answering (a bug here;
        the client saw a JSON-RPC internal error).
    @ivar state: the contracts' state (see L{_State}).
    @ivar events: C{(name, values, blockNumber, txHash)} of every event mined.
    @ivar controller: the Controller address, the one address chain code is given.
    """

    def __init__(self, clock=None, roundLength=20, ticketValidityPeriod=2, unlockPeriod=2,
                 mintablePerRound=1000 * 10**18, baseFee=10**9, tip=10**8):
        self.clock = clock if clock is not None else ThreadlessClock()
        self.roundLength = roundLength
        self.ticketValidityPeriod = ticketValidityPeriod
        self.unlockPeriod = unlockPeriod
        self.mintablePerRound = mintablePerRound
        self.baseFee = baseFee
        self.tip = tip
        self.automine = True
        self.requests = []
        self.internalErrors = []
        self.events = []
        self.state = _State()
        self.nonces = {}
        self.owner = address(keccak(text="fake owner")[:20])
        self._pending = {}  # hash -> (sender, tx dict, raw)
        self._receipts = {}
        self._mode = "answering"
        self._delay = 0.0
        self._dropNext = 0
        self.controllerContract = _Controller(self)
        self.roundsManager = _RoundsManager(self)
        self.bondingManager = _BondingManager(self)
        self.ticketBroker = _TicketBroker(self)
        self.contracts = {c.name: c for c in (self.controllerContract, self.roundsManager, self.bondingManager,
                                              self.ticketBroker)}
        self.controller = self.controllerContract.address
        self.registry = {keccak(text=c.name): c.address for c in self.contracts.values() if c.name != "Controller"}
        self.registry[keccak(text="JobsManager")] = self.ticketBroker.address
        self._functions = {}
        for contract in self.contracts.values():
            for item in contract.abi:
                if item["type"] == "function" and hasattr(contract, item["name"]):
                    self._functions[(contract.address, function_abi_to_4byte_selector(item))] = (contract, item)
        self.blockNumber = roundLength
        self.round = 1
        self.transact("RoundsManager", "initializeRound")

    # ---- Test controls -------------------------------------------------------

    def agent(self):
        """
        An L{IAgent} whose requests this node answers.
        """
        return _NodeAgent(self)

    def client(self, timeout=5.0):
        """
        A real L{JsonRpcClient} on L{clock}, talking to this node.
        """
        return JsonRpcClient(self.clock, "http://fake-chain.invalid:8545", timeout=timeout, agent=self.agent())

    def stop(self):
        """
        Refuse every connection from now on (the node is down).
        """
        self._mode = "down"

    def hang(self):
        """
        Take requests and never answer them (a stuck node).
        """
        self._mode = "hanging"

    def start(self):
        """
        Answer again, at once (see L{answerAfter}).
        """
        self._mode = "answering"

    def answerAfter(self, seconds):
        """
        Answer every request C{seconds} later on L{clock} (0: at once).
        """
        self._delay = seconds

    def dropNextTransaction(self, count=1):
        """
        Accept the next C{count} transactions and forget them: they are never mined.
        """
        self._dropNext = count

    def mine(self, blocks=1):
        """
        Mine C{blocks} blocks; the first takes the pending transactions it can.
        """
        for i in range(blocks):
            self.blockNumber += 1
            if i == 0:
                self._includePending()

    def mineTo(self, blockNumber):
        """
        Mine until the latest block is C{blockNumber} (nothing if already there).
        """
        self.mine(max(0, blockNumber - self.blockNumber))

    def setAutomine(self, enabled):
        """
        Turn automine on or off; while off, transactions wait for L{mine}.
        """
        self.automine = bool(enabled)

    def setBaseFee(self, wei):
        """
        Set the base fee per gas of the blocks to come.
        """
        self.baseFee = wei

    def currentRound(self):
        """
        RoundsManager.currentRound() at the latest block.
        """
        return self.blockNumber // self.roundLength

    def advanceToNextRound(self, initialize=True):
        """
        Mine to the first block of the next round and initialize it unless told not to.

        @return: the new round.
        """
        self.mineTo((self.currentRound() + 1) * self.roundLength)
        if initialize:
            self.transact("RoundsManager", "initializeRound")
        return self.currentRound()

    def advanceRounds(self, count, initialize=True):
        """
        L{advanceToNextRound} C{count} times, initializing only the last round if C{initialize}.
        """
        for i in range(count):
            self.advanceToNextRound(initialize=initialize and i == count - 1)
        return self.currentRound()

    def pause(self):
        """
        Pause the system (Controller.pause()).
        """
        self.state.paused = True

    def unpause(self):
        """
        Unpause the system.
        """
        self.state.paused = False

    def registerTranscoder(self, transcoder, stake, active=True):
        """
        Register C{transcoder} with C{stake}, self-bonded; if C{active}, put it
        in the pool, active in the current round at once.
        """
        t = self.state.transcoder(address(transcoder))
        t.bonded = stake
        if active:
            self.state.pool.append(address(transcoder))
            t.activationRound = t.lastActiveStakeUpdateRound = self.currentRound()
            t.deactivationRound = MAX_FUTURE_ROUND

    def setRewardRevert(self, transcoder, reason):
        """
        Make every reward call of C{transcoder} revert with C{reason} after the
        real checks pass ("" turns it off).
        """
        self.state.forcedRewardRevert[address(transcoder)] = reason

    def fundSender(self, sender, deposit, reserve):
        """
        Give a broadcaster a TicketBroker deposit and reserve.
        """
        s = self.state.sender(address(sender))
        s.deposit += deposit
        s.reserve += reserve
        s.withdrawRound = 0

    def transact(self, contract, function, *args, sender=None):
        """
        Mine a block with one unsigned call of C{contract.function(*args)}
        from C{sender} (the owner by default), as anvil does for an
        impersonated account.

        @return: its receipt.
        """
        tx = {"to": self.contracts[contract].address, "value": 0, "gas": CALL_GAS, "nonce": None,
              "maxFeePerGas": self.baseFee, "maxPriorityFeePerGas": 0,
              "data": self._encodeCall(contract, function, args)}
        self.blockNumber += 1
        txHash = "0x" + keccak(repr((self.blockNumber, contract, function, args)).encode()).hex()
        return self._execute(address(sender or self.owner), tx, txHash)

    def call(self, contract, function, *args):
        """
        A view of C{contract} at the latest block, as Python values.
        """
        x = _Execution(self, copy.deepcopy(self.state), self.owner, 0, self.blockNumber)
        return getattr(self.contracts[contract], function)(x, *args)

    def nonce(self, account):
        """
        The mined transaction count of C{account}.
        """
        return self.nonces.get(address(account), 0)

    def receipt(self, txHash):
        """
        The receipt of a mined transaction, as C{eth_getTransactionReceipt} gives it.
        """
        return self._receipts[txHash]

    def pendingTransactions(self):
        """
        The hashes of the transactions waiting to be mined.
        """
        return list(self._pending)

    def eventsNamed(self, name):
        """
        The mined C{name} events, as C{(values, blockNumber, txHash)}.
        """
        return [(values, block, txHash) for event, values, block, txHash in self.events if event == name]

    # ---- JSON-RPC ----------------------------------------------------------------

    def _receive(self, uri, body):
        if self._mode == "down":
            return fail(ConnectionRefusedError(string=f"nothing listens at {uri.decode('ascii', 'replace')}"))
        request = json.loads(body)
        self.requests.append(request["method"])
        if self._mode == "hanging":
            return Deferred()

        def respond():
            return _JsonResponse(json.dumps(self.answer(request)).encode("utf-8"))

        if self._delay:
            return deferLater(self.clock, self._delay, respond)
        return succeed(respond())

    def answer(self, request):
        """
        The JSON-RPC answer object to one request object.
        """
        method, params = request["method"], request.get("params", [])
        reply = {"jsonrpc": "2.0", "id": request.get("id")}
        handler = self._methods().get(method)
        try:
            if handler is None:
                raise NodeError(f"the method {method} does not exist/is not available", -32601)
            reply["result"] = handler(*params)
        except Revert as e:
            reply["error"] = _revertError(e.reason)
        except NodeError as e:
            reply["error"] = {"code": e.code, "message": e.message}
        except Exception:
            # A bug in this model, not an answer a node would give: kept for
            # the test to fail on (see assertNoInternalErrors).
            self.internalErrors.append(Failure())
            reply["error"] = {"code": -32603, "message": "fake chain internal error"}
        return reply

    def _methods(self):
        return {
            "eth_chainId": lambda: hex(CHAIN_ID),
            "eth_blockNumber": lambda: hex(self.blockNumber),
            "eth_getBlockByNumber": self._getBlock,
            "eth_getBalance": lambda who, block="latest": hex(self._balance(address(who))),
            "eth_getTransactionCount": self._transactionCount,
            "eth_maxPriorityFeePerGas": lambda: hex(self.tip),
            "eth_call": self._call,
            "eth_estimateGas": self._estimateGas,
            "eth_sendRawTransaction": self._sendRawTransaction,
            "eth_getTransactionReceipt": lambda txHash: self._receipts.get(txHash),
        }

    def _getBlock(self, block, full=False):
        number = self.blockNumber if block in ("latest", "pending") else int(block, 16)
        return {"number": hex(number), "hash": "0x" + blockHash(number).hex(),
                "baseFeePerGas": hex(self.baseFee), "transactions": []}

    def _balance(self, who):
        return self.state.balances.get(who, 100 * 10**18)

    def _transactionCount(self, who, block="latest"):
        who = address(who)
        count = self.nonces.get(who, 0)
        if block == "pending":
            waiting = [tx["nonce"] for sender, tx, _ in self._pending.values() if sender == who]
            count = max([count] + [n + 1 for n in waiting])
        return hex(count)

    def _decodeCall(self, tx):
        """
        The contract, ABI function and arguments a call's data names.
        """
        to = address(tx["to"])
        data = bytes(HexBytes(tx.get("data") or tx.get("input") or "0x"))
        entry = self._functions.get((to, data[:4]))
        if entry is None:
            raise Revert(None)
        contract, function = entry
        try:
            args = abiDecode(get_abi_input_types(function), data[4:])
        except Exception:
            raise Revert(None) from None
        args = [address(a) if t == "address" else a for t, a in zip(get_abi_input_types(function), args)]
        return contract, function, args

    def _encodeCall(self, contract, function, args):
        item = next(i for i in self.contracts[contract].abi if i.get("name") == function)
        return function_abi_to_4byte_selector(item) + abiEncode(get_abi_input_types(item), list(args))

    def _run(self, state, sender, tx, block):
        """
        Run a transaction or call on C{state}; return C{(output, execution)}.
        """
        x = _Execution(self, state, sender, tx.get("value", 0), block)
        if address(tx["to"]) not in self._contractAddresses():
            return b"", x
        contract, function, args = self._decodeCall(tx)
        result = getattr(contract, function["name"])(x, *args)
        outputs = get_abi_output_types(function)
        if not outputs:
            return b"", x
        if len(outputs) == 1:
            result = (result,)
        return abiEncode(outputs, list(result)), x

    def _call(self, tx, block="latest"):
        sender = address(tx["from"]) if tx.get("from") else "0x" + "00" * 20
        output, _ = self._run(copy.deepcopy(self.state), sender, tx, self.blockNumber)
        return "0x" + output.hex()

    def _estimateGas(self, tx):
        sender = address(tx["from"])
        call = dict(tx, value=int(tx.get("value") or "0x0", 16))
        self._run(copy.deepcopy(self.state), sender, call, self.blockNumber + 1)
        return hex(CALL_GAS if address(tx["to"]) in self._contractAddresses() else TRANSFER_GAS)

    def _contractAddresses(self):
        return {c.address for c in self.contracts.values()}

    def _sendRawTransaction(self, raw):
        raw = bytes(HexBytes(raw))
        tx = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        sender = _transactionSender(raw)
        txHash = "0x" + keccak(raw).hex()
        if tx["chainId"] != CHAIN_ID:
            raise NodeError("invalid chain id")
        if txHash in self._pending or txHash in self._receipts:
            raise NodeError("already known")
        if tx["nonce"] < self.nonces.get(sender, 0):
            raise NodeError("nonce too low")
        for other, (otherSender, otherTx, _) in list(self._pending.items()):
            if otherSender == sender and otherTx["nonce"] == tx["nonce"]:
                if (tx["maxFeePerGas"] < otherTx["maxFeePerGas"] * 11 // 10
                        or tx["maxPriorityFeePerGas"] < otherTx["maxPriorityFeePerGas"] * 11 // 10):
                    raise NodeError("replacement transaction underpriced")
                del self._pending[other]
        if self._dropNext:
            self._dropNext -= 1
            return txHash
        self._pending[txHash] = (sender, tx, raw)
        if self.automine:
            self.mine(1)
        return txHash

    def _includePending(self):
        progress = True
        while progress:
            progress = False
            for txHash, (sender, tx, _) in sorted(self._pending.items(), key=lambda i: i[1][1]["nonce"]):
                if tx["nonce"] == self.nonces.get(sender, 0) and tx["maxFeePerGas"] >= self.baseFee:
                    del self._pending[txHash]
                    self.nonces[sender] = tx["nonce"] + 1
                    self._execute(sender, tx, txHash)
                    progress = True
                    break

    def _execute(self, sender, tx, txHash):
        price = min(tx["maxFeePerGas"], self.baseFee + tx["maxPriorityFeePerGas"])
        state = copy.deepcopy(self.state)
        gasUsed = CALL_GAS if address(tx["to"]) in self._contractAddresses() else TRANSFER_GAS
        try:
            _, x = self._run(state, sender, tx, self.blockNumber)
        except Revert:
            status, logs = 0, []
        else:
            status, logs = 1, x.logs
            self.state = state
        self.state.balances[sender] = self._balance(sender) - gasUsed * price - (tx["value"] if status else 0)
        if status and tx["value"]:
            self.state.balances[address(tx["to"])] = self._balance(address(tx["to"])) + tx["value"]
        receipt = {
            "transactionHash": txHash, "blockNumber": hex(self.blockNumber),
            "blockHash": "0x" + blockHash(self.blockNumber).hex(), "from": sender.lower(),
            "to": address(tx["to"]).lower(), "status": hex(status), "gasUsed": hex(gasUsed),
            "cumulativeGasUsed": hex(gasUsed), "effectiveGasPrice": hex(price), "contractAddress": None,
            "logs": [self._encodeLog(contract, event, values, i, txHash)
                     for i, (contract, event, values) in enumerate(logs)],
        }
        for contract, event, values in logs:
            self.events.append((event, values, self.blockNumber, txHash))
        self._receipts[txHash] = receipt
        return receipt

    def _encodeLog(self, contract, event, values, index, txHash):
        item = next(i for i in contract.abi if i["type"] == "event" and i["name"] == event)
        topics = [event_abi_to_log_topic(item)]
        data = []
        for spec, value in zip(item["inputs"], values):
            if spec["indexed"]:
                topics.append(abiEncode([spec["type"]], [value]))
            else:
                data.append((spec["type"], value))
        return {
            "address": contract.address.lower(),
            "topics": ["0x" + bytes(t).hex() for t in topics],
            "data": "0x" + abiEncode([t for t, _ in data], [v for _, v in data]).hex(),
            "blockNumber": hex(self.blockNumber), "transactionHash": txHash, "logIndex": hex(index),
        }


@lru_cache(maxsize=256)
def _transactionSender(raw):
    """
    Who signed a raw transaction (ECDSA recovery is slow in pure Python).
    """
    return address(Account.recover_transaction(raw))


def _revertError(reason):
    """
    The JSON-RPC error a node gives for a revert, as anvil words it.
    """
    if reason is None:
        return {"code": 3, "message": "execution reverted", "data": "0x"}
    data = ERROR_SELECTOR + abiEncode(["string"], [reason])
    return {"code": 3, "message": f"execution reverted: {reason}", "data": "0x" + data.hex()}


@lru_cache(maxsize=None)
def account(index):
    """
    Test account C{index}: an eth-account C{LocalAccount} with a fixed key.
    """
    return Account.from_key(keccak(text=f"fake chain account {index}"))


class FakeChainTestCase(TestCase):
    """
    A fresh L{FakeChain} on its L{ThreadlessClock} per test, a real
    L{JsonRpcClient} and L{LivepeerContracts} on it; C{account(1)} is the
    orchestrator. A test fails if the model broke while answering.
    """

    roundLength = 20

    def setUp(self):
        self.chain = FakeChain(roundLength=self.roundLength)
        self.clock = self.chain.clock
        self.rpc = self.chain.client()
        self.contracts = LivepeerContracts(self.rpc, self.chain.controller)
        self.orch = account(1)
        self.addCleanup(self.assertNoInternalErrors)

    def assertNoInternalErrors(self):
        """
        The fake chain answered every request without a bug of its own.
        """
        self.assertEqual([f.getTraceback() for f in self.chain.internalErrors], [])

    def stopAfterTest(self, service):
        """
        Stop C{service} when the test ends, if it runs, without waiting for
        a pass still in flight (it would wait on the clock).
        """
        self.addCleanup(lambda: service.running and service.stopService() and None)

    def finished(self, coroutine):
        """
        The result of C{coroutine}, which must finish without the clock moving.
        """
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def advance(self, seconds, step=1.0):
        """
        Move the clock on by C{seconds}, in steps of C{step}.
        """
        self.clock.pump([step] * round(seconds / step))
