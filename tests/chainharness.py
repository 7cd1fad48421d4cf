# -*- test-case-name: tests.test_standins,tests.test_chain_reward -*-
"""
A local Ethereum chain for tests: an anvil node and the Livepeer contract
stand-ins deployed on it.

The stand-ins (contracts/*.sol, compiled into
contracts/build/standins.json) expose the deployed Livepeer
signatures, events and revert strings, so chain code runs against them
unchanged; only the Controller address differs. Their test controls are the
functions whose names start with C{test}.

Typical use in a pytest module::

    @pytest.fixture
    def chain():
        if ensureAnvil() is None:
            pytest.skip(ANVIL_MISSING)
        with standInsOnAnvil() as (anvil, deployment):
            yield deployment

This module is synchronous (urllib and web3's HTTPProvider); it is for test
set-up and assertions, not for code under test.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from eth_abi.packed import encode_packed
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak, to_checksum_address
from web3 import Web3

from localnodes import freePort
from tests.fakechain import ARTIFACTS_PATH, loadArtifacts  # noqa: F401 (re-exported)

ROOT = Path(__file__).resolve().parent.parent
ANVIL_PATH = ROOT / "node_modules" / ".bin" / "anvil"
ANVIL_MISSING = "anvil not found: run `npm install` in the repository root (package.json pins @foundry-rs/anvil)"

# anvil's default dev accounts come from this mnemonic.
MNEMONIC = "test test test test test test test test test test test junk"
CHAIN_ID = 31337
MAX_UINT256 = 2**256 - 1
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
ZERO_HASH = b"\x00" * 32

# Controller ids registered by deployStandIns, and the contract behind each.
REGISTRATIONS = (
    ("Minter", "Minter"),
    ("RoundsManager", "RoundsManager"),
    ("BondingManager", "BondingManager"),
    ("TicketBroker", "TicketBroker"),
    ("JobsManager", "TicketBroker"),
    ("ServiceRegistry", "ServiceRegistry"),
)


# The node is local: never go through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RPCError(Exception):
    """
    A JSON-RPC error answer: C{code}, C{message} and C{data} as the node sent them.
    """

    def __init__(self, code, message, data=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


@lru_cache(maxsize=1)
def ensureAnvil():
    """
    The path of a working anvil binary, or C{None}.

    C{$ANVIL} wins, then node_modules/.bin/anvil (from C{npm install}), then
    C{anvil} on C{$PATH}. A binary that does not answer C{--version} is
    ignored.
    """
    candidates = [os.environ.get("ANVIL"), *map(str, sorted(ROOT.glob("node_modules/@foundry-rs/anvil-*/bin/anvil"))),
                  str(ANVIL_PATH), shutil.which("anvil")]
    for path in candidates:
        if not path or not os.access(path, os.X_OK):
            continue
        try:
            subprocess.run([path, "--version"], capture_output=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError):
            continue
        return path
    return None


@lru_cache(maxsize=16)
def devAccounts(count=10):
    """
    anvil's default accounts as eth-account C{LocalAccount}s (index 0 first).
    """
    Account.enable_unaudited_hdwallet_features()
    return tuple(Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(count))


def contractId(name):
    """
    The Controller id of a contract name: keccak256 of the UTF-8 name.
    """
    return keccak(text=name)


class Anvil:
    """
    An anvil node on 127.0.0.1 whose chain state survives L{stop} and L{start}.

    @ivar port: the TCP port; the same across restarts.
    @ivar url: the node's HTTP JSON-RPC URL.
    @ivar blockTime: seconds between blocks, or C{None} for automine (one
        block per transaction).
    @ivar accounts: the funded dev accounts' addresses (checksummed).
    @ivar privateKeys: their private keys, as 0x-prefixed hex.
    """

    def __init__(self, blockTime=None, port=None, accounts=10, binary=None, extraArgs=()):
        self.binary = binary or ensureAnvil()
        if self.binary is None:
            raise RuntimeError(ANVIL_MISSING)
        self.blockTime = blockTime
        self.port = port or freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extraArgs = tuple(extraArgs)
        self._accounts = devAccounts(accounts)
        self.accounts = [a.address for a in self._accounts]
        self.privateKeys = [a.key.to_0x_hex() for a in self._accounts]
        self._dir = tempfile.TemporaryDirectory(prefix="anvil-")
        self.statePath = os.path.join(self._dir.name, "state.json")
        self.logPath = os.path.join(self._dir.name, "anvil.log")
        self._process = None
        self._requestId = 0

    def account(self, index=0):
        """
        Dev account C{index} as an eth-account C{LocalAccount} (it can sign).
        """
        return self._accounts[index]

    @property
    def running(self):
        """
        Whether the anvil process is alive.
        """
        return self._process is not None and self._process.poll() is None

    def start(self, timeout=30):
        """
        Start anvil (again) on L{port}, loading the state a previous L{stop}
        saved, and wait until it answers.
        """
        if self.running:
            return
        args = [
            self.binary,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--accounts",
            str(len(self._accounts)),
            "--chain-id",
            str(CHAIN_ID),
            "--state",
            self.statePath,
        ]
        if self.blockTime is not None:
            args += ["--block-time", str(self.blockTime)]
        args += list(self.extraArgs)
        with open(self.logPath, "ab") as log:
            # Its own process group: npm's anvil is a node wrapper around the real binary.
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"anvil exited with {self._process.returncode}:\n{self.log()[-2000:]}")
            try:
                self.rpc("eth_chainId", timeout=1)
                return
            except (OSError, RPCError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"anvil did not answer within {timeout}s:\n{self.log()[-2000:]}")
                time.sleep(0.05)

    def stop(self, timeout=30):
        """
        Stop anvil; it saves the chain state for the next L{start}.
        """
        process, self._process = self._process, None
        if process is None:
            return
        # Signal the whole group (wrapper and binary), and wait until every
        # member is gone, so the saved state is complete and nothing writes after.
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                process.poll()
                try:
                    os.killpg(process.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                continue
            break
        process.wait()

    def close(self):
        """
        Stop anvil and delete its saved state and log.
        """
        self.stop()
        self._dir.cleanup()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *excInfo):
        self.close()

    def log(self):
        """
        What anvil has printed so far.
        """
        try:
            with open(self.logPath, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def rpc(self, method, *params, timeout=30):
        """
        Call a JSON-RPC method and return its result.

        @raise RPCError: if the node answers with an error.
        """
        self._requestId += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self._requestId, "method": method, "params": list(params)})
        request = urllib.request.Request(
            self.url, data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        with _DIRECT.open(request, timeout=timeout) as response:
            answer = json.loads(response.read())
        if "error" in answer:
            error = answer["error"]
            raise RPCError(error.get("code"), error.get("message"), error.get("data"))
        return answer.get("result")

    def web3(self):
        """
        A synchronous web3.Web3 connected to this node.
        """
        return Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 30}))

    def blockNumber(self):
        """
        The latest block number.
        """
        return int(self.rpc("eth_blockNumber"), 16)

    def mine(self, blocks=1):
        """
        Mine C{blocks} blocks at once (with any pending transactions in the first).
        """
        if blocks > 0:
            self.rpc("anvil_mine", hex(blocks))

    def mineTo(self, blockNumber):
        """
        Mine until the latest block is C{blockNumber} (no-op if already past).
        """
        self.mine(blockNumber - self.blockNumber())

    def setAutomine(self, enabled):
        """
        Turn automine on or off; while off, sent transactions stay pending
        until L{mine}.
        """
        self.rpc("evm_setAutomine", bool(enabled))

    def setNextBlockBaseFee(self, wei):
        """
        Set the base fee per gas of the next block (later blocks follow EIP-1559).
        """
        self.rpc("anvil_setNextBlockBaseFeePerGas", hex(wei))

    def setGasPrice(self, wei):
        """
        Make the chain's gas price C{wei}: on this EIP-1559 chain that is the
        next block's base fee (L{setNextBlockBaseFee}).
        """
        self.setNextBlockBaseFee(wei)

    def setBalance(self, address, wei):
        """
        Set an account's ETH balance.
        """
        self.rpc("anvil_setBalance", to_checksum_address(address), hex(wei))

    def dropTransaction(self, txHash):
        """
        Remove a pending transaction from the pool.
        """
        return self.rpc("anvil_dropTransaction", txHash)

    def pendingTransactions(self):
        """
        The transactions in the pool that are not mined yet.
        """
        return self.rpc("eth_getBlockByNumber", "pending", True)["transactions"]

    def snapshot(self):
        """
        Save the chain state; returns an id for L{revert}.
        """
        return self.rpc("evm_snapshot")

    def revert(self, snapshotId):
        """
        Go back to a L{snapshot} (which is used up by this).
        """
        return self.rpc("evm_revert", snapshotId)


def _address(account):
    if isinstance(account, str):
        return to_checksum_address(account)
    return account.address


@dataclass
class Deployment:
    """
    The stand-ins deployed on an L{Anvil} node.

    @ivar controller: the Controller address, the only address chain code needs.
    @ivar addresses: C{{contract id name: address}}, "Controller" and
        "JobsManager" (the TicketBroker) included.
    @ivar owner: the deployer and Controller owner (dev account 0); it alone
        may call the C{test*} controls.
    @ivar round: the round initialized at deployment.
    """

    anvil: Anvil
    w3: Web3
    controller: str
    addresses: dict
    owner: str
    roundLength: int
    round: int
    _contracts: dict = field(default_factory=dict, repr=False)

    def contract(self, name):
        """
        A web3 contract for a deployed stand-in, by contract id name.
        """
        if name not in self._contracts:
            artifact = "TicketBroker" if name == "JobsManager" else name
            self._contracts[name] = self.w3.eth.contract(
                address=self.addresses[name], abi=loadArtifacts()[artifact]["abi"]
            )
        return self._contracts[name]

    def transact(self, function, sender=None, value=0, gas=None):
        """
        Send a contract call as a transaction and return its receipt.

        C{sender} is an address (a dev account, or any address, impersonated)
        or an eth-account C{LocalAccount} (signed locally); the owner by
        default. Reverts raise web3's C{ContractLogicError} from the gas
        estimate, before anything is sent. Needs automine or a block time.
        """
        sender = self.owner if sender is None else sender
        params = {"from": _address(sender), "value": value}
        if gas is not None:
            params["gas"] = gas
        if isinstance(sender, str):
            impersonate = sender not in self.anvil.accounts
            if impersonate:
                self.anvil.rpc("anvil_impersonateAccount", params["from"])
            try:
                txHash = function.transact(params)
            finally:
                if impersonate:
                    self.anvil.rpc("anvil_stopImpersonatingAccount", params["from"])
        else:
            params["nonce"] = self.w3.eth.get_transaction_count(sender.address, "pending")
            tx = function.build_transaction(params)
            txHash = self.w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)
        return self.w3.eth.wait_for_transaction_receipt(txHash, timeout=60, poll_latency=0.02)

    def call(self, name, function, *args):
        """
        Call a view of contract C{name} at the latest block.
        """
        return getattr(self.contract(name).functions, function)(*args).call()

    def currentRound(self):
        """
        RoundsManager.currentRound() at the latest block.
        """
        return self.call("RoundsManager", "currentRound")

    def mineTo(self, blockNumber):
        """
        Mine until the latest block is C{blockNumber} (see L{Anvil.mineTo}).
        """
        self.anvil.mineTo(blockNumber)

    def pause(self):
        """
        Pause the system through the Controller.
        """
        self.transact(self.contract("Controller").functions.pause())

    def unpause(self):
        """
        Unpause the system through the Controller.
        """
        self.transact(self.contract("Controller").functions.unpause())

    def initializeRound(self, sender=None):
        """
        Call RoundsManager.initializeRound(); returns the receipt.
        """
        return self.transact(self.contract("RoundsManager").functions.initializeRound(), sender)

    def advanceToNextRound(self, initialize=True):
        """
        Mine up to the first block of the next round, so that the latest block
        (what calls see) is in it, and initialize it unless told not to.

        @return: the new round number.
        """
        rounds = self.contract("RoundsManager").functions
        nextStart = rounds.currentRoundStartBlock().call() + rounds.roundLength().call()
        self.anvil.mineTo(nextStart)
        if initialize:
            self.initializeRound()
        return rounds.currentRound().call()

    def advanceRounds(self, count, initialize=True):
        """
        L{advanceToNextRound} C{count} times, initializing only the last round
        if C{initialize}; the skipped rounds stay uninitialized.
        """
        current = self.currentRound()
        for i in range(count):
            current = self.advanceToNextRound(initialize=initialize and i == count - 1)
        return current

    def registerTranscoder(self, transcoder, stake, active=True, rewardCut=0, feeShare=0):
        """
        Register C{transcoder} (an address or account) as a self-bonded
        transcoder with C{stake}; if C{active}, put it in the pool, active in
        the current round at once.
        """
        address = _address(transcoder)
        bonding = self.contract("BondingManager").functions
        self.transact(bonding.testRegisterTranscoder(address, stake, rewardCut, feeShare))
        if active:
            self.transact(bonding.testActivateTranscoder(address, 0))

    def fundSender(self, sender, deposit, reserve):
        """
        Fund a broadcaster's TicketBroker deposit and reserve, paid by the
        sender itself (a dev account address or a C{LocalAccount}, which gets
        ETH from the chain first if it lacks it).
        """
        address = _address(sender)
        needed = deposit + reserve + 10**18
        if self.w3.eth.get_balance(address) < needed:
            self.anvil.setBalance(address, needed)
        broker = self.contract("TicketBroker").functions
        return self.transact(broker.fundDepositAndReserve(deposit, reserve), sender, value=deposit + reserve)

    def auxData(self, creationRound=None):
        """
        Ticket auxData: the creation round (the latest initialized round by
        default) and its stored block hash.
        """
        rounds = self.contract("RoundsManager").functions
        if creationRound is None:
            creationRound = rounds.lastInitializedRound().call()
        blockHash = rounds.blockHashForRound(creationRound).call()
        return creationRound.to_bytes(32, "big") + bytes(blockHash)

    def makeTicket(
        self,
        sender,
        recipient,
        faceValue,
        winProb=MAX_UINT256,
        senderNonce=1,
        recipientRand=12345,
        auxData=None,
    ):
        """
        A ticket signed by C{sender} (a C{LocalAccount}).

        @return: C{(ticket, sig, recipientRand)}, ready for
            redeemWinningTicket; C{ticket} is the ABI tuple.
        """
        if auxData is None:
            auxData = self.auxData()
        ticket = (
            _address(recipient),
            sender.address,
            faceValue,
            winProb,
            senderNonce,
            keccak(recipientRand.to_bytes(32, "big")),
            auxData,
        )
        return ticket, signTicket(sender, ticketHash(ticket)), recipientRand


def ticketHash(ticket):
    """
    The TicketBroker hash of an ABI ticket tuple (computed off chain).
    """
    types = ["address", "address", "uint256", "uint256", "uint256", "bytes32", "bytes"]
    return keccak(encode_packed(types, list(ticket)))


def signTicket(sender, hashBytes):
    """
    C{sender}'s 65-byte EIP-191 signature (v 27/28, low s) over a ticket hash.
    """
    return bytes(sender.sign_message(encode_defunct(primitive=hashBytes)).signature)


@contextmanager
def standInsOnAnvil(**deployArguments):
    """
    A fresh anvil with the stand-ins deployed (L{deployStandIns} arguments
    pass through); yields C{(anvil, deployment)} and closes anvil after.
    """
    anvil = Anvil()
    anvil.start()
    try:
        yield anvil, deployStandIns(anvil, **deployArguments)
    finally:
        anvil.close()


def deployStandIns(
    anvil,
    roundLength=20,
    roundLockAmount=100000,
    unlockPeriod=2,
    ticketValidityPeriod=2,
    mintablePerRound=1000 * 10**18,
    poolMaxSize=100,
):
    """
    Deploy the stand-ins on a running L{Anvil} from dev account 0, register
    them in the Controller (TicketBroker also as "JobsManager"), unpause, and
    initialize the first round that starts after deployment (round 1 unless
    C{roundLength} is shorter than the deployment, about 15 blocks); the
    latest block is then in that round, near its start.

    Needs automine or a block time; with a block time every transaction
    waits for its block.
    """
    w3 = anvil.web3()
    owner = anvil.accounts[0]
    artifacts = loadArtifacts()

    def deploy(name, *args):
        factory = w3.eth.contract(abi=artifacts[name]["abi"], bytecode=artifacts[name]["bytecode"])
        txHash = factory.constructor(*args).transact({"from": owner})
        receipt = w3.eth.wait_for_transaction_receipt(txHash, timeout=60, poll_latency=0.02)
        if receipt.status != 1:
            raise RuntimeError(f"deploying {name} failed")
        return receipt.contractAddress

    controller = deploy("Controller")
    deployed = {
        "Minter": deploy("Minter", controller, mintablePerRound, 0),
        "RoundsManager": deploy("RoundsManager", controller, roundLength, roundLockAmount),
        "BondingManager": deploy("BondingManager", controller, poolMaxSize),
        "TicketBroker": deploy("TicketBroker", controller, unlockPeriod, ticketValidityPeriod),
        "ServiceRegistry": deploy("ServiceRegistry", controller),
    }
    addresses = {"Controller": controller}
    for contractName, artifact in REGISTRATIONS:
        addresses[contractName] = deployed[artifact]
    deployment = Deployment(
        anvil=anvil, w3=w3, controller=controller, addresses=addresses, owner=owner, roundLength=roundLength, round=0
    )
    registry = deployment.contract("Controller").functions
    for contractName, _ in REGISTRATIONS:
        deployment.transact(registry.setContractInfo(contractId(contractName), addresses[contractName], b"\x00" * 20))
    deployment.unpause()
    deployment.round = deployment.advanceToNextRound(initialize=True)
    return deployment
