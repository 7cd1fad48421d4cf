# -*- test-case-name: tests.test_chain_reward -*-
"""
The Livepeer contracts we use, found through the Controller.

Only the Controller address is configured; every other contract is looked up
with C{Controller.getContract(keccak256(name))} at start and periodically, so
that the same code runs against Arbitrum One and against a local deployment.
The function and event signatures are the deployed ones (see
C{docs/chain.md}); calls are encoded and decoded offline with eth-abi.
"""

from dataclasses import dataclass

from eth_abi import decode as abiDecode
from eth_abi import encode as abiEncode
from eth_utils import function_signature_to_4byte_selector, keccak, to_checksum_address
from twisted.logger import Logger

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
TICKET_TUPLE = "(address,address,uint256,uint256,uint256,bytes32,bytes)"


@dataclass(frozen=True)
class Function:
    """
    One contract function: its name, argument types and result types.
    """

    name: str
    inputs: tuple = ()
    outputs: tuple = ()

    @property
    def signature(self):
        """
        The canonical signature, e.g. C{getContract(bytes32)}.
        """
        return f"{self.name}({','.join(self.inputs)})"

    @property
    def selector(self):
        """
        The 4-byte selector.
        """
        return function_signature_to_4byte_selector(self.signature)

    def encode(self, *args):
        """
        The call data for C{args}.
        """
        return self.selector + abiEncode(list(self.inputs), list(args))

    def decode(self, output):
        """
        Decode the call's output: a single value or a tuple.
        """
        values = abiDecode(list(self.outputs), output)
        return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class Event:
    """
    One contract event: its signature, which arguments are indexed, and types.
    """

    name: str
    inputs: tuple  # (type, indexed) pairs

    @property
    def topic(self):
        """
        topic0 as bytes.
        """
        return keccak(text=f"{self.name}({','.join(t for t, _ in self.inputs)})")

    def decodeLog(self, log):
        """
        Decode a receipt log entry into a list of values, in argument order.
        """
        topics = [bytes.fromhex(t[2:]) for t in log["topics"]][1:]
        data = bytes.fromhex(log["data"][2:])
        unindexed = abiDecode([t for t, indexed in self.inputs if not indexed], data)
        values, ti, ui = [], 0, 0
        for t, indexed in self.inputs:
            if indexed:
                values.append(abiDecode([t], topics[ti])[0])
                ti += 1
            else:
                values.append(unindexed[ui])
                ui += 1
        return values

    def find(self, receipt, address=None):
        """
        The decoded values of every log of this event in C{receipt}, optionally
        only those emitted by C{address}.
        """
        found = []
        for log in receipt.get("logs", []):
            if not log["topics"] or bytes.fromhex(log["topics"][0][2:]) != self.topic:
                continue
            if address is not None and log["address"].lower() != address.lower():
                continue
            found.append(self.decodeLog(log))
        return found


def _functions(*specs):
    return {f.name: f for f in specs}


CONTROLLER = _functions(
    Function("getContract", ("bytes32",), ("address",)),
    Function("paused", (), ("bool",)),
)

ROUNDS_MANAGER = _functions(
    Function("currentRound", (), ("uint256",)),
    Function("currentRoundInitialized", (), ("bool",)),
    Function("currentRoundStartBlock", (), ("uint256",)),
    Function("lastInitializedRound", (), ("uint256",)),
    Function("roundLength", (), ("uint256",)),
    Function("blockNum", (), ("uint256",)),
    Function("blockHashForRound", ("uint256",), ("bytes32",)),
    Function("initializeRound"),
)

BONDING_MANAGER = _functions(
    Function("reward"),
    Function("rewardWithHint", ("address", "address")),
    Function("getTranscoder", ("address",), ("uint256",) * 10),
    Function("isActiveTranscoder", ("address",), ("bool",)),
    Function("isRegisteredTranscoder", ("address",), ("bool",)),
    Function("transcoderStatus", ("address",), ("uint8",)),
    Function("getTranscoderPoolSize", (), ("uint256",)),
    Function("pendingFees", ("address", "uint256"), ("uint256",)),
)

TICKET_BROKER = _functions(
    Function("redeemWinningTicket", (TICKET_TUPLE, "bytes", "uint256")),
    Function("getTicketHash", (TICKET_TUPLE,), ("bytes32",)),
    Function("getSenderInfo", ("address",), ("(uint256,uint256)", "(uint256,uint256)")),
    Function("usedTickets", ("bytes32",), ("bool",)),
    Function("claimedReserve", ("address", "address"), ("uint256",)),
    Function("ticketValidityPeriod", (), ("uint256",)),
)

REWARD_EVENT = Event("Reward", (("address", True), ("uint256", False)))
NEW_ROUND_EVENT = Event("NewRound", (("uint256", True), ("bytes32", False)))
WINNING_TICKET_REDEEMED_EVENT = Event(
    "WinningTicketRedeemed",
    (
        ("address", True),
        ("address", True),
        ("uint256", False),
        ("uint256", False),
        ("uint256", False),
        ("uint256", False),
        ("bytes", False),
    ),
)
WINNING_TICKET_TRANSFER_EVENT = Event(
    "WinningTicketTransfer", (("address", True), ("address", True), ("uint256", False))
)


def contractId(name):
    """
    The Controller id of a contract: keccak256 of its name.
    """
    return keccak(text=name)


class BoundContract:
    """
    A contract at an address with the functions we use.
    """

    def __init__(self, rpc, name, address, functions):
        self._rpc = rpc
        self.name = name
        self.address = to_checksum_address(address)
        self.functions = functions

    def encode(self, function, *args):
        """
        Call data for C{function(*args)}.
        """
        return self.functions[function].encode(*args)

    async def call(self, function, *args, sender=None, block="latest"):
        """
        C{eth_call} C{function(*args)} and decode its result.

        @raise livepeer_tx.chain.rpc.RpcError: the call reverted (see
            C{revertReason}) or the node refused it.
        """
        f = self.functions[function]
        output = await self._rpc.call(self.address, f.encode(*args), sender=sender, block=block)
        if not f.outputs:
            return None
        return f.decode(output)

    def __repr__(self):
        return f"<{self.name} at {self.address}>"


class ContractNotRegistered(Exception):
    """
    The Controller returned the zero address for a contract we need.
    """


class LivepeerContracts:
    """
    The Controller and the contracts it names.

    @ivar controller: the Controller.
    @ivar roundsManager: the RoundsManager proxy (after L{resolve}).
    @ivar bondingManager: the BondingManager proxy (after L{resolve}).
    @ivar ticketBroker: the TicketBroker proxy (after L{resolve}).
    """

    _log = Logger()
    NEEDED = (
        ("RoundsManager", "roundsManager", ROUNDS_MANAGER),
        ("BondingManager", "bondingManager", BONDING_MANAGER),
        ("TicketBroker", "ticketBroker", TICKET_BROKER),
    )

    def __init__(self, rpc, controllerAddress):
        self.rpc = rpc
        self.controller = BoundContract(rpc, "Controller", controllerAddress, CONTROLLER)
        self.roundsManager = self.bondingManager = self.ticketBroker = None

    @property
    def resolved(self):
        """
        Whether every contract has been looked up at least once.
        """
        return self.ticketBroker is not None

    async def resolve(self):
        """
        Look every contract up through the Controller; log any address change.

        @raise ContractNotRegistered: the Controller does not know one of them.
        """
        found = {}
        for name, attribute, functions in self.NEEDED:
            address = await self.controller.call("getContract", contractId(name))
            if int(address, 16) == 0:
                raise ContractNotRegistered(
                    f"Controller {self.controller.address} has no {name} registered"
                )
            found[attribute] = (name, address, functions)
        for attribute, (name, address, functions) in found.items():
            current = getattr(self, attribute)
            if current is None or current.address != to_checksum_address(address):
                if current is not None:
                    self._log.warn(
                        "{name} moved from {old} to {new}",
                        name=name,
                        old=current.address,
                        new=to_checksum_address(address),
                    )
                setattr(self, attribute, BoundContract(self.rpc, name, address, functions))
        return self
