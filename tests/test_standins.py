"""
Tests for the Livepeer contract stand-ins (contracts/*.sol) on a real anvil
node, through tests/chainharness.py.
"""

import os
import shutil
import subprocess
import sys
import time

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import event_signature_to_log_topic, function_signature_to_4byte_selector, keccak
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from tests.chainharness import (
    ANVIL_MISSING,
    MAX_UINT256,
    ROOT,
    ZERO_ADDRESS,
    Anvil,
    contractId,
    deployStandIns,
    ensureAnvil,
    loadArtifacts,
    standInsOnAnvil,
    ticketHash,
)

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
ETH = 10**18
STAKE = 1000 * ETH
MINTABLE = 1000 * ETH

# Selectors and topics of the deployed Livepeer contracts (verified against
# their bytecode; see the chain reference notes). The stand-ins must match.
DEPLOYED_FUNCTIONS = {
    "Controller": {
        "getContract(bytes32)": "0xe16c7d98",
        "getContractInfo(bytes32)": "0x613e2de2",
        "paused()": "0x5c975abb",
        "owner()": "0x8da5cb5b",
    },
    "RoundsManager": {
        "currentRound()": "0x8a19c8bc",
        "currentRoundInitialized()": "0x219bc76c",
        "currentRoundStartBlock()": "0x8fa148f2",
        "currentRoundLocked()": "0x6841f253",
        "roundLength()": "0x8b649b94",
        "roundLockAmount()": "0xf5b490d5",
        "lastInitializedRound()": "0x8807f36e",
        "blockHashForRound(uint256)": "0x3aa4add4",
        "blockNum()": "0x8ae63d6d",
        "initializeRound()": "0xd4807fb2",
        "lipUpgradeRound(uint256)": "0x1e6d4c22",
    },
    "BondingManager": {
        "reward()": "0x228cb733",
        "rewardWithHint(address,address)": "0x81871056",
        "getTranscoder(address)": "0x5dce9948",
        "isActiveTranscoder(address)": "0x08802374",
        "isRegisteredTranscoder(address)": "0x68ba170c",
        "transcoderStatus(address)": "0x8b2f1652",
        "getTranscoderPoolSize()": "0x2a4e0d55",
        "getTranscoderPoolMaxSize()": "0x5a2a75a9",
        "getFirstTranscoderInPool()": "0x88a6c749",
        "getNextTranscoderInPool(address)": "0x235c9603",
        "transcoderTotalStake(address)": "0x9ef9df94",
        "getDelegator(address)": "0xa64ad595",
        "withdrawFees(address,uint256)": "0xad3b1b47",
        "pendingFees(address,uint256)": "0xf595f1cc",
        "pendingStake(address,uint256)": "0x9d0b2c7a",
        "claimEarnings(uint256)": "0x24b1babf",
        "getTotalBonded()": "0x5c50c356",
        "currentRoundTotalActiveStake()": "0x4196ee75",
        "nextRoundTotalActiveStake()": "0x465501d3",
        "getTranscoderEarningsPoolForRound(address,uint256)": "0x24454fc4",
    },
    "TicketBroker": {
        "redeemWinningTicket((address,address,uint256,uint256,uint256,bytes32,bytes),bytes,uint256)": "0xec8b3cb6",
        "batchRedeemWinningTickets((address,address,uint256,uint256,uint256,bytes32,bytes)[],bytes[],uint256[])": (
            "0xd01b808e"
        ),
        "getTicketHash((address,address,uint256,uint256,uint256,bytes32,bytes))": "0xb03fa864",
        "getSenderInfo(address)": "0xe1a589da",
        "usedTickets(bytes32)": "0x59a515ba",
        "claimableReserve(address,address)": "0x81779f38",
        "claimedReserve(address,address)": "0x4ac826da",
        "getReserveInfo(address)": "0x5b6333eb",
        "ticketValidityPeriod()": "0x856a2cf8",
        "unlockPeriod()": "0x20d3a0b4",
        "fundDeposit()": "0x6caa736b",
        "fundReserve()": "0x6f9c3c8f",
        "fundDepositAndReserve(uint256,uint256)": "0x511f4073",
        "fundDepositAndReserveFor(address,uint256,uint256)": "0x989f789c",
        "unlock()": "0xa69df4b5",
        "cancelUnlock()": "0xc2c4c2c8",
        "withdraw()": "0x3ccfd60b",
        "isUnlockInProgress(address)": "0x121cdcc2",
    },
    "ServiceRegistry": {
        "getServiceURI(address)": "0x214c2a4b",
        "setServiceURI(string)": "0x5f11301b",
    },
    "Minter": {
        "currentMintableTokens()": "0x9ae6309a",
        "currentMintedTokens()": "0x2de22cdb",
        "inflation()": "0xbe0522e0",
    },
}

DEPLOYED_EVENTS = {
    "BondingManager": {
        "Reward(address,uint256)": "0x619caafabdd75649b302ba8419e48cccf64f37f1983ac4727cfb38b57703ffc9",
        "TreasuryReward(address,address,uint256)": "0x40e200718fe552021167687e5491d09f5931275b6f88f14a462650f0effb5237",
        "WithdrawFees(address,address,uint256)": "0x4f1b51dd7a2fcb861aa2670f668be66835c4ee12b4bbbf037e4d0018f39819e4",
        "TranscoderActivated(address,uint256)": "0x65d72d782835d64c3287844a829608d5abdc7e864cc9affe96d910ab3db665e9",
        "TranscoderDeactivated(address,uint256)": "0xfee3e693fc72d0a0a673805f3e606c551f4c677b9072444b90dd2d0406bc995c",
        "TranscoderUpdate(address,uint256,uint256)": "0x7346854431dbb3eb8e373c604abf89e90f4865b8447e1e2834d7b3e4677bf544",
        "EarningsClaimed(address,address,uint256,uint256,uint256,uint256)": (
            "0xd7eab0765b772ea6ea859d5633baf737502198012e930f257f90013d9b211094"
        ),
    },
    "RoundsManager": {
        "NewRound(uint256,bytes32)": "0x22f2fc17c5daf07db2379b3a03a8ef20a183f761097a58fce219c8a14619e786",
    },
    "TicketBroker": {
        "WinningTicketRedeemed(address,address,uint256,uint256,uint256,uint256,bytes)": (
            "0xc389eb51ed006dbf2528507f010efdf5225ea596e1e1741d74f550dab1925ee7"
        ),
        "WinningTicketTransfer(address,address,uint256)": (
            "0x8b87351a208c06e3ceee59d80725fd77a23b4129e1b51ca231fc89b40712649c"
        ),
        "DepositFunded(address,uint256)": "0x5159e237d952190e68d5215430f305831be7c9c8776d1377c76679ae4773413f",
        "ReserveFunded(address,uint256)": "0xb52b99b9e83551fcbd069b559cc3e823e2a1a3bad8ece46561ea77524394c850",
        "ReserveClaimed(address,address,uint256)": "0x5c2b394723f408a40a60335e24b71829642e35f350cebe2036a96a66e895ea98",
        "Unlock(address,uint256,uint256)": "0xf7870c5b224cbc19873599e46ccfc7103934650509b1af0c3ce90138377c2004",
        "UnlockCancelled(address)": "0xfa044b7b93a40365dc68049797c2eb06918523d694e5d56e406cac3eb35578e5",
        "Withdrawal(address,uint256,uint256)": "0xdf273cb619d95419a9cd0ec88123a0538c85064229baa6363788f743fff90deb",
    },
    "Controller": {
        "SetContractInfo(bytes32,address,bytes20)": "0xf9a6cf519167d81bc5cb3d26c60c0c9a19704aa908c148e82a861b570f4cd2d7",
    },
    "ServiceRegistry": {
        "ServiceURIUpdate(address,string)": "0xfbb63068732c85741c9f8e61caffaabe038d577bfafd2d2dcc0e352a4f653a4c",
    },
    "Minter": {
        "SetCurrentRewardTokens(uint256,uint256)": "0x39567a366345edf17f50c1967a31b597745186c4632f34c4f8ebe06b6890784d",
    },
}

# Indexed flags of the events chain code decodes.
INDEXED = {
    ("BondingManager", "Reward"): [True, False],
    ("BondingManager", "WithdrawFees"): [True, False, False],
    ("RoundsManager", "NewRound"): [True, False],
    ("TicketBroker", "WinningTicketRedeemed"): [True, True, False, False, False, False, False],
    ("TicketBroker", "WinningTicketTransfer"): [True, True, False],
    ("TicketBroker", "ReserveClaimed"): [True, False, False],
}

CONTRACT_IDS = {
    "BondingManager": "0x2517d59a36a86548e38734e8ab416f42afff4bca78706a66ad65750dae7f9e37",
    "RoundsManager": "0xe8438ea868df48e3fc21f2f087b993c9b1837dc0f6135064161ce7d7a1701fe8",
    "TicketBroker": "0xbd1aa3e8d2464256d7fd3dcf645c16418d5d8c51d971f1ad7d57e7b1b5eee239",
    "JobsManager": "0x3d7456535a3155a46f15a2313c3915bd07137ffdc56464f4fc9a82bae7215c2d",
    "Minter": "0x6e58ad548d72b425ea94c15f453bf26caddb061d82b2551db7fdd3cefe0e9940",
    "ServiceRegistry": "0x79c5d2a4a07754f4bacb0ffba18ac516030ee589ebc89db8627680c4d4cdb230",
}


def canonicalType(param):
    """
    The canonical ABI type of an ABI JSON parameter (tuples spelled out).
    """
    kind = param["type"]
    if kind.startswith("tuple"):
        return "(" + ",".join(canonicalType(c) for c in param["components"]) + ")" + kind[len("tuple") :]
    return kind


def abiSignatures(name, kind):
    """
    C{{signature: ABI entry}} of contract C{name}'s functions or events.
    """
    return {
        f"{e['name']}({','.join(canonicalType(i) for i in e['inputs'])})": e
        for e in loadArtifacts()[name]["abi"]
        if e["type"] == kind
    }


def revertMessage(excinfo):
    """
    The revert reason of a caught ContractLogicError.
    """
    return excinfo.value.message.removeprefix("execution reverted: ")


def assertReverts(reason, thunk):
    """
    Assert that C{thunk()} reverts with exactly C{reason}.
    """
    with pytest.raises(ContractLogicError) as excinfo:
        thunk()
    assert revertMessage(excinfo) == reason


# ---- Static checks: no node needed ------------------------------------------


def test_selectorsMatchDeployedContracts():
    """
    Every function selector and event topic of the deployed contracts is
    produced by the stand-ins' compiled ABI.
    """
    for name, functions in DEPLOYED_FUNCTIONS.items():
        compiled = abiSignatures(name, "function")
        for signature, selector in functions.items():
            assert signature in compiled, f"{name} lacks {signature}"
            assert "0x" + function_signature_to_4byte_selector(signature).hex() == selector
    for name, events in DEPLOYED_EVENTS.items():
        compiled = abiSignatures(name, "event")
        for signature, topic in events.items():
            assert signature in compiled, f"{name} lacks event {signature}"
            assert "0x" + event_signature_to_log_topic(signature).hex() == topic
    for (name, event), flags in INDEXED.items():
        [entry] = [e for e in loadArtifacts()[name]["abi"] if e["type"] == "event" and e["name"] == event]
        assert [i["indexed"] for i in entry["inputs"]] == flags


def test_selectorsMatchSharedReference():
    """
    Every signature listed in the shared chain reference (chain-hashes.txt)
    that a stand-in declares hashes to the listed value, and every
    reference signature is declared by some stand-in.
    """
    path = ROOT.parent / "shared" / "reference" / "chain-hashes.txt"
    if not path.exists():
        pytest.skip(f"{path} not present (the shared reference is outside the repository)")
    declared = set()
    for name in loadArtifacts():
        declared.update(abiSignatures(name, "function"))
        declared.update(abiSignatures(name, "event"))
    checked = 0
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 2 or not parts[0].startswith("0x"):
            continue
        value, label = parts
        if "(" in label:
            assert label in declared, f"no stand-in declares {label}"
            assert keccak(text=label).hex().startswith(value.removeprefix("0x"))
            checked += 1
        elif label in CONTRACT_IDS:
            assert "0x" + contractId(label).hex() == value
    assert checked > 50


def test_tupleLayouts():
    """
    The tuples chain code decodes have the deployed layouts.
    """
    functions = abiSignatures("BondingManager", "function")
    getTranscoder = functions["getTranscoder(address)"]
    assert [o["name"] for o in getTranscoder["outputs"]] == [
        "lastRewardRound",
        "rewardCut",
        "feeShare",
        "lastActiveStakeUpdateRound",
        "activationRound",
        "deactivationRound",
        "activeCumulativeRewards",
        "cumulativeRewards",
        "cumulativeFees",
        "lastFeeRound",
    ]
    assert {o["type"] for o in getTranscoder["outputs"]} == {"uint256"}
    assert [canonicalType(o) for o in functions["getDelegator(address)"]["outputs"]] == [
        "uint256",
        "uint256",
        "address",
        "uint256",
        "uint256",
        "uint256",
        "uint256",
    ]
    broker = abiSignatures("TicketBroker", "function")
    assert [canonicalType(o) for o in broker["getSenderInfo(address)"]["outputs"]] == [
        "(uint256,uint256)",
        "(uint256,uint256)",
    ]
    assert [canonicalType(o) for o in functions["transcoderStatus(address)"]["outputs"]] == ["uint8"]


def test_contractIds():
    """
    Contract ids are keccak256 of the name, as the deployed Controller uses.
    """
    for name, value in CONTRACT_IDS.items():
        assert "0x" + contractId(name).hex() == value


def test_artifactsUpToDate():
    """
    The committed standins.json is what solcjs makes of contracts/*.sol.
    """
    if not os.access(ROOT / "node_modules" / ".bin" / "solcjs", os.X_OK) or shutil.which("node") is None:
        pytest.skip("solcjs not installed: run `npm install` in the repository root")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_contracts.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr + result.stdout


# ---- On a node --------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed():
    """
    One anvil with the stand-ins for this module; tests revert to a snapshot.
    """
    if ensureAnvil() is None:
        pytest.skip(ANVIL_MISSING)
    with standInsOnAnvil() as (anvil, deployment):
        yield deployment


@pytest.fixture
def chain(deployed):
    """
    The module's deployment, rolled back after the test.
    """
    snapshot = deployed.anvil.snapshot()
    try:
        yield deployed
    finally:
        deployed.anvil.revert(snapshot)


@pytest.fixture
def accounts(chain):
    """
    Named dev accounts: orchestrator, broadcaster, redeemer (hot key), other.
    """
    anvil = chain.anvil

    class Accounts:
        orchestrator = anvil.account(1)
        broadcaster = anvil.account(2)
        redeemer = anvil.account(3)
        other = anvil.account(4)

    return Accounts


def test_deployment(chain):
    """
    The Controller resolves every id (JobsManager to the TicketBroker), is
    unpaused, and the first round is initialized.
    """
    controller = chain.contract("Controller").functions
    for name, value in CONTRACT_IDS.items():
        assert controller.getContract(bytes.fromhex(value[2:])).call() == chain.addresses[name]
        address, commit = controller.getContractInfo(contractId(name)).call()
        assert address == chain.addresses[name]
    assert chain.addresses["JobsManager"] == chain.addresses["TicketBroker"]
    assert controller.getContract(contractId("Nothing")).call() == ZERO_ADDRESS
    assert controller.owner().call() == chain.owner
    assert controller.paused().call() is False
    assert chain.round == 1
    assert chain.call("RoundsManager", "currentRoundInitialized") is True
    assert chain.call("RoundsManager", "lastInitializedRound") == 1
    assert chain.call("Minter", "currentMintableTokens") == MINTABLE
    assert chain.call("TicketBroker", "unlockPeriod") == 2
    assert chain.call("TicketBroker", "ticketValidityPeriod") == 2


def test_controllerStartsPaused(chain):
    """
    A new Controller starts paused, like the deployed one, and only its owner
    registers contracts.
    """
    artifact = loadArtifacts()["Controller"]
    factory = chain.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = chain.transact(factory.constructor())
    fresh = chain.w3.eth.contract(address=receipt.contractAddress, abi=artifact["abi"])
    assert fresh.functions.paused().call() is True
    assertReverts(
        "caller is not the owner",
        lambda: chain.transact(
            fresh.functions.setContractInfo(contractId("Minter"), chain.owner, b"\x00" * 20), chain.anvil.accounts[1]
        ),
    )


def test_roundArithmetic(chain):
    """
    Rounds follow the block number; the lock covers the last 10%; a new round
    needs initializeRound, which stores the previous block's hash.
    """
    rounds = chain.contract("RoundsManager").functions
    length = chain.roundLength
    block = chain.anvil.blockNumber()
    assert rounds.blockNum().call() == block
    assert rounds.currentRound().call() == block // length
    assert rounds.currentRoundStartBlock().call() == (block // length) * length
    assert rounds.roundLength().call() == length

    start = rounds.currentRoundStartBlock().call()
    chain.anvil.mineTo(start + length - 3)
    assert rounds.currentRoundLocked().call() is False
    chain.anvil.mine(1)
    assert rounds.currentRoundLocked().call() is True

    newRound = chain.advanceToNextRound(initialize=False)
    assert newRound == 2
    assert chain.anvil.blockNumber() == 2 * length
    assert rounds.currentRoundInitialized().call() is False
    assert rounds.currentRoundLocked().call() is False
    assert rounds.blockHashForRound(2).call() == b"\x00" * 32

    receipt = chain.initializeRound(chain.anvil.accounts[5])
    [event] = chain.contract("RoundsManager").events.NewRound().process_receipt(receipt, errors=DISCARD)
    previous = chain.w3.eth.get_block(receipt.blockNumber - 1)
    assert event.args.round == 2
    assert event.args.blockHash == previous.hash
    assert rounds.blockHashForRound(2).call() == previous.hash
    assert receipt.logs[-1]["topics"][0].hex() == DEPLOYED_EVENTS["RoundsManager"]["NewRound(uint256,bytes32)"][2:]
    assert rounds.currentRoundInitialized().call() is True
    assert rounds.lastInitializedRound().call() == 2
    assertReverts("round already initialized", lambda: chain.initializeRound())


def test_initializeRoundWhenPaused(chain):
    """
    initializeRound reverts while the system is paused.
    """
    chain.advanceToNextRound(initialize=False)
    chain.pause()
    assertReverts("system is paused", lambda: chain.initializeRound())
    chain.unpause()
    chain.initializeRound()
    assert chain.call("RoundsManager", "currentRoundInitialized") is True


def test_setRoundLengthKeepsRoundCount(chain):
    """
    Changing the round length rebases, so the round number does not jump.
    """
    rounds = chain.contract("RoundsManager").functions
    before = rounds.currentRound().call()
    chain.transact(rounds.setRoundLength(5))
    assert rounds.currentRound().call() == before
    start = rounds.currentRoundStartBlock().call()
    chain.anvil.mineTo(start + 5)
    assert rounds.currentRound().call() == before + 1
    assertReverts(
        "caller must be Controller owner",
        lambda: chain.transact(rounds.setRoundLength(7), chain.anvil.accounts[1]),
    )


def test_rewardCheckOrder(chain, accounts):
    """
    reward() checks paused, then round initialized, then active transcoder,
    with the deployed revert strings.
    """
    bonding = chain.contract("BondingManager").functions
    orchestrator = accounts.orchestrator.address
    chain.advanceToNextRound(initialize=False)
    chain.pause()
    assertReverts("system is paused", lambda: bonding.reward().call({"from": orchestrator}))
    chain.unpause()
    assertReverts("current round is not initialized", lambda: bonding.reward().call({"from": orchestrator}))
    assertReverts(
        "current round is not initialized",
        lambda: bonding.rewardWithHint(ZERO_ADDRESS, ZERO_ADDRESS).call({"from": orchestrator}),
    )
    chain.initializeRound()
    assertReverts("caller must be an active transcoder", lambda: bonding.reward().call({"from": orchestrator}))


def test_rewardOncePerRound(chain, accounts):
    """
    An active transcoder is rewarded once per round with its share of the
    mintable tokens; the Reward event names it; a missed round is lost.
    """
    bonding = chain.contract("BondingManager").functions
    orchestrator = accounts.orchestrator.address
    chain.registerTranscoder(orchestrator, STAKE)
    chain.registerTranscoder(accounts.other.address, 3 * STAKE)
    assert bonding.isActiveTranscoder(orchestrator).call() is True
    assert bonding.isRegisteredTranscoder(orchestrator).call() is True
    assert bonding.transcoderStatus(orchestrator).call() == 1
    assert bonding.getTranscoderPoolSize().call() == 2
    assert bonding.getFirstTranscoderInPool().call() == accounts.other.address
    assert bonding.getNextTranscoderInPool(accounts.other.address).call() == orchestrator
    assert bonding.getTotalBonded().call() == 4 * STAKE

    receipt = chain.transact(bonding.reward(), orchestrator)
    assert receipt.status == 1
    [log] = [entry for entry in receipt.logs if entry["address"] == chain.addresses["BondingManager"]]
    assert "0x" + log["topics"][0].hex() == DEPLOYED_EVENTS["BondingManager"]["Reward(address,uint256)"]
    assert log["topics"][1][-20:] == bytes.fromhex(orchestrator[2:])
    [event] = chain.contract("BondingManager").events.Reward().process_receipt(receipt, errors=DISCARD)
    assert event.args.transcoder == orchestrator
    assert event.args.amount == MINTABLE // 4
    transcoder = bonding.getTranscoder(orchestrator).call()
    assert transcoder[0] == chain.round
    assert transcoder[7] == MINTABLE // 4
    assert bonding.transcoderTotalStake(orchestrator).call() == STAKE + MINTABLE // 4
    assert chain.call("Minter", "currentMintedTokens") == MINTABLE // 4

    assertReverts(
        "caller has already called reward for the current round",
        lambda: chain.transact(bonding.reward(), orchestrator),
    )

    # Skip a round entirely: the next reward is for the round after it.
    newRound = chain.advanceRounds(2)
    assert newRound == chain.round + 2
    chain.transact(bonding.rewardWithHint(accounts.other.address, ZERO_ADDRESS), orchestrator)
    assert bonding.getTranscoder(orchestrator).call()[0] == newRound


def test_activationAndDeactivation(chain, accounts):
    """
    A transcoder joining the pool is active from the next round; one leaving
    it stops being active when told.
    """
    bonding = chain.contract("BondingManager").functions
    orchestrator = accounts.orchestrator.address
    chain.registerTranscoder(orchestrator, STAKE, active=False)
    assert bonding.isRegisteredTranscoder(orchestrator).call() is True
    assert bonding.isActiveTranscoder(orchestrator).call() is False
    chain.transact(bonding.testActivateTranscoder(orchestrator, 1))
    assert bonding.isActiveTranscoder(orchestrator).call() is False
    assertReverts("caller must be an active transcoder", lambda: bonding.reward().call({"from": orchestrator}))
    chain.advanceToNextRound()
    assert bonding.isActiveTranscoder(orchestrator).call() is True
    assert bonding.getTotalBonded().call() == STAKE
    chain.transact(bonding.reward(), orchestrator)
    assert bonding.getTranscoder(orchestrator).call()[0] == chain.currentRound()

    chain.transact(bonding.testDeactivateTranscoder(orchestrator, True))
    assert bonding.isActiveTranscoder(orchestrator).call() is False
    assert bonding.isRegisteredTranscoder(orchestrator).call() is True
    assert bonding.getTranscoderPoolSize().call() == 0


def test_rewardTestControls(chain, accounts):
    """
    A forced revert reason and a treasury cut apply to reward.
    """
    bonding = chain.contract("BondingManager").functions
    orchestrator = accounts.orchestrator.address
    chain.registerTranscoder(orchestrator, STAKE)
    chain.transact(bonding.testSetRewardRevert(orchestrator, "boom"))
    assertReverts("boom", lambda: bonding.reward().call({"from": orchestrator}))
    chain.transact(bonding.testSetRewardRevert(orchestrator, ""))
    chain.transact(bonding.testSetTreasuryRewardCut(accounts.other.address, 10**26))
    receipt = chain.transact(bonding.reward(), orchestrator)
    [treasury] = chain.contract("BondingManager").events.TreasuryReward().process_receipt(receipt, errors=DISCARD)
    [reward] = chain.contract("BondingManager").events.Reward().process_receipt(receipt, errors=DISCARD)
    assert treasury.args.amount == MINTABLE // 10
    assert reward.args.amount == MINTABLE - MINTABLE // 10
    assertReverts(
        "caller must be Controller owner",
        lambda: chain.transact(bonding.testSetRewardRevert(orchestrator, "x"), orchestrator),
    )


def test_redeemWinningTicket(chain, accounts):
    """
    A hot key redeems a winning ticket for the orchestrator: the deposit pays
    the face value into its fees, the events carry the deployed topics, and
    withdrawFees sends the ETH from the Minter.
    """
    broker = chain.contract("TicketBroker")
    bonding = chain.contract("BondingManager").functions
    orchestrator = accounts.orchestrator.address
    chain.registerTranscoder(orchestrator, STAKE)
    chain.fundSender(accounts.broadcaster, ETH, 2 * ETH)
    assert broker.functions.getSenderInfo(accounts.broadcaster.address).call() == [(ETH, 0), (2 * ETH, 0)]
    assert chain.w3.eth.get_balance(chain.addresses["Minter"]) == 3 * ETH

    faceValue = ETH // 10
    ticket, sig, rand = chain.makeTicket(accounts.broadcaster, orchestrator, faceValue, senderNonce=7)
    assert broker.functions.getTicketHash(ticket).call() == ticketHash(ticket)
    assert len(sig) == 65 and sig[64] in (27, 28)
    receipt = chain.transact(broker.functions.redeemWinningTicket(ticket, sig, rand), accounts.redeemer)
    assert receipt.status == 1
    topics = ["0x" + entry["topics"][0].hex() for entry in receipt.logs]
    events = DEPLOYED_EVENTS["TicketBroker"]
    assert topics == [
        events["WinningTicketTransfer(address,address,uint256)"],
        events["WinningTicketRedeemed(address,address,uint256,uint256,uint256,uint256,bytes)"],
    ]
    [redeemed] = broker.events.WinningTicketRedeemed().process_receipt(receipt, errors=DISCARD)
    assert redeemed.args.sender == accounts.broadcaster.address
    assert redeemed.args.recipient == orchestrator
    assert redeemed.args.faceValue == faceValue
    assert redeemed.args.winProb == MAX_UINT256
    assert redeemed.args.senderNonce == 7
    assert redeemed.args.recipientRand == rand
    assert redeemed.args.auxData == ticket[6]
    assert broker.functions.usedTickets(ticketHash(ticket)).call() is True
    assert broker.functions.getSenderInfo(accounts.broadcaster.address).call()[0] == (ETH - faceValue, 0)
    assert bonding.pendingFees(orchestrator, 99999).call() == faceValue
    transcoder = bonding.getTranscoder(orchestrator).call()
    assert transcoder[8] == faceValue
    assert transcoder[9] == chain.round

    assertReverts(
        "ticket is used",
        lambda: chain.transact(broker.functions.redeemWinningTicket(ticket, sig, rand), accounts.redeemer),
    )

    payee = Account.create().address
    receipt = chain.transact(bonding.withdrawFees(payee, faceValue), orchestrator)
    [withdrawn] = chain.contract("BondingManager").events.WithdrawFees().process_receipt(receipt, errors=DISCARD)
    assert (withdrawn.args.delegator, withdrawn.args.recipient, withdrawn.args.amount) == (
        orchestrator,
        payee,
        faceValue,
    )
    assert chain.w3.eth.get_balance(payee) == faceValue
    assert chain.w3.eth.get_balance(chain.addresses["Minter"]) == 3 * ETH - faceValue
    assert bonding.pendingFees(orchestrator, 0).call() == 0
    assertReverts("insufficient fees to withdraw", lambda: bonding.withdrawFees(payee, 1).call({"from": orchestrator}))
    assertReverts("invalid recipient", lambda: bonding.withdrawFees(ZERO_ADDRESS, 0).call({"from": orchestrator}))


def test_signatureRejections(chain, accounts):
    """
    The chain rejects 64-byte (EIP-2098), high-s and v=0/1 signatures, and
    signatures by anyone but the ticket sender, with the deployed reasons.
    """
    broker = chain.contract("TicketBroker").functions
    orchestrator = accounts.orchestrator.address
    chain.registerTranscoder(orchestrator, STAKE)
    chain.fundSender(accounts.broadcaster, ETH, ETH)
    ticket, sig, rand = chain.makeTicket(accounts.broadcaster, orchestrator, 1000)
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]

    def redeem(signature):
        return broker.redeemWinningTicket(ticket, signature, rand).call({"from": accounts.redeemer.address})

    compact = r + ((v - 27) << 255 | s).to_bytes(32, "big")
    assertReverts("INVALID_SIGNATURE_LENGTH", lambda: redeem(compact))
    assertReverts("INVALID_SIGNATURE_LENGTH", lambda: redeem(sig + b"\x00"))
    highS = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])
    # eth-account accepts it (same signer); the chain must not.
    assert Account.recover_message(encode_defunct(primitive=ticketHash(ticket)), signature=highS) == (
        accounts.broadcaster.address
    )
    assertReverts("ECDSA: invalid signature 's' value", lambda: redeem(highS))
    assertReverts("ECDSA: invalid signature 'v' value", lambda: redeem(r + sig[32:64] + bytes([v - 27])))
    assertReverts("ECDSA: invalid signature 'v' value", lambda: redeem(r + sig[32:64] + bytes([29])))
    assertReverts("ECDSA: invalid signature", lambda: redeem(b"\x00" * 32 + sig[32:64] + bytes([v])))
    wrongKey = bytes(accounts.other.sign_message(encode_defunct(primitive=ticketHash(ticket))).signature)
    assertReverts("invalid signature over ticket hash", lambda: redeem(wrongKey))
    redeem(sig)


def test_ticketRejections(chain, accounts):
    """
    Each ticket check reverts with the deployed reason.
    """
    broker = chain.contract("TicketBroker").functions
    rounds = chain.contract("RoundsManager").functions
    orchestrator = accounts.orchestrator.address
    sender = accounts.broadcaster
    chain.registerTranscoder(orchestrator, STAKE)
    chain.fundSender(sender, ETH, ETH)

    def redeem(ticket, sig, rand):
        return broker.redeemWinningTicket(ticket, sig, rand).call({"from": accounts.redeemer.address})

    def check(reason, **kwargs):
        ticket, sig, rand = chain.makeTicket(sender, kwargs.pop("recipient", orchestrator), 1000, **kwargs)
        assertReverts(reason, lambda: redeem(ticket, sig, rand))

    check("ticket did not win", winProb=0)
    check("ticket recipient is null address", recipient=ZERO_ADDRESS)
    check("invalid length for ticket auxData: must be 64 bytes", auxData=b"")
    check(
        "ticket creationRound does not have a block hash",
        auxData=(chain.round + 5).to_bytes(32, "big") + b"\x01" * 32,
    )
    check(
        "ticket creationRoundBlockHash invalid for creationRound",
        auxData=chain.round.to_bytes(32, "big") + b"\x01" * 32,
    )
    check("transcoder must be registered", recipient=accounts.other.address)

    ticket, sig, rand = chain.makeTicket(sender, orchestrator, 1000)
    assertReverts("recipientRand does not match recipientRandHash", lambda: redeem(ticket, sig, rand + 1))
    nullSender = (ticket[0], ZERO_ADDRESS) + ticket[2:]
    assertReverts("ticket sender is null address", lambda: redeem(nullSender, sig, rand))

    # Arbitrum's zero block hash, simulated.
    stored = rounds.blockHashForRound(chain.round).call()
    chain.transact(rounds.testSetBlockHashForRound(chain.round, b"\x00" * 32))
    assertReverts("ticket creationRound does not have a block hash", lambda: redeem(ticket, sig, rand))
    chain.transact(rounds.testSetBlockHashForRound(chain.round, stored))
    redeem(ticket, sig, rand)

    # Valid in the creation round and the next; expired after ticketValidityPeriod.
    chain.advanceToNextRound(initialize=False)
    assertReverts("current round is not initialized", lambda: redeem(ticket, sig, rand))
    chain.initializeRound()
    redeem(ticket, sig, rand)
    chain.advanceToNextRound()
    assertReverts("ticket is expired", lambda: redeem(ticket, sig, rand))

    chain.pause()
    assertReverts("system is paused", lambda: redeem(ticket, sig, rand))


def test_unlockedAndEmptySenders(chain, accounts):
    """
    An unlocked sender's tickets are refused, it can then withdraw, and a
    sender with nothing left is refused too.
    """
    broker = chain.contract("TicketBroker").functions
    orchestrator = accounts.orchestrator.address
    sender = accounts.broadcaster
    chain.registerTranscoder(orchestrator, STAKE)
    chain.fundSender(sender, ETH, ETH)
    ticket, sig, rand = chain.makeTicket(sender, orchestrator, 1000)

    assertReverts("no unlock request in progress", lambda: chain.transact(broker.cancelUnlock(), sender))
    receipt = chain.transact(broker.unlock(), sender)
    [unlock] = chain.contract("TicketBroker").events.Unlock().process_receipt(receipt, errors=DISCARD)
    assert unlock.args.endRound == chain.round + 2
    assert broker.isUnlockInProgress(sender.address).call() is True
    assertReverts("unlock already initiated", lambda: chain.transact(broker.unlock(), sender))
    assertReverts("account is locked", lambda: chain.transact(broker.withdraw(), sender))

    chain.advanceRounds(2)
    fresh, freshSig, freshRand = chain.makeTicket(sender, orchestrator, 1000, senderNonce=2)
    assertReverts("sender is unlocked", lambda: broker.redeemWinningTicket(fresh, freshSig, freshRand).call())
    before = chain.w3.eth.get_balance(sender.address)
    receipt = chain.transact(broker.withdraw(), sender)
    [withdrawal] = chain.contract("TicketBroker").events.Withdrawal().process_receipt(receipt, errors=DISCARD)
    assert (withdrawal.args.deposit, withdrawal.args.reserve) == (ETH, ETH)
    gas = receipt.gasUsed * receipt.effectiveGasPrice
    assert chain.w3.eth.get_balance(sender.address) == before + 2 * ETH - gas
    # As on chain, withdraw leaves withdrawRound set; funding again cancels it.
    assert broker.getSenderInfo(sender.address).call() == [(0, chain.round + 2), (0, 0)]
    chain.transact(broker.fundDeposit(), sender, value=0)
    assert broker.getSenderInfo(sender.address).call() == [(0, 0), (0, 0)]
    assertReverts(
        "sender deposit and reserve are zero",
        lambda: broker.redeemWinningTicket(fresh, freshSig, freshRand).call(),
    )


def test_reserveCoversShortDeposit(chain, accounts):
    """
    A face value above the deposit takes the whole deposit plus at most the
    recipient's share (reserve / pool size) of the reserve.
    """
    broker = chain.contract("TicketBroker")
    orchestrator = accounts.orchestrator.address
    sender = accounts.broadcaster
    chain.registerTranscoder(orchestrator, STAKE)
    chain.registerTranscoder(accounts.other.address, STAKE)
    chain.fundSender(sender, 100, 1000)
    assert broker.functions.claimableReserve(sender.address, orchestrator).call() == 500
    ticket, sig, rand = chain.makeTicket(sender, orchestrator, 10**6)
    receipt = chain.transact(broker.functions.redeemWinningTicket(ticket, sig, rand), accounts.redeemer)
    [claimed] = broker.events.ReserveClaimed().process_receipt(receipt, errors=DISCARD)
    assert (claimed.args.reserveHolder, claimed.args.claimant) == (sender.address, orchestrator)
    assert claimed.args.amount == 500
    [transfer] = broker.events.WinningTicketTransfer().process_receipt(receipt, errors=DISCARD)
    assert transfer.args.amount == 600
    assert broker.functions.getSenderInfo(sender.address).call() == [(0, 0), (500, 500)]
    assert broker.functions.claimedReserve(sender.address, orchestrator).call() == 500
    assert broker.functions.claimableReserve(sender.address, orchestrator).call() == 0
    assert chain.call("BondingManager", "pendingFees", orchestrator, 0) == 600


def test_fundingRules(chain, accounts):
    """
    Funding must match msg.value, lands in the Minter, and cancels an unlock.
    """
    broker = chain.contract("TicketBroker")
    sender = accounts.broadcaster
    assertReverts(
        "msg.value does not equal sum of deposit amount and reserve amount",
        lambda: chain.transact(broker.functions.fundDepositAndReserve(1, 1), sender, value=3),
    )
    chain.transact(broker.functions.fundReserve(), sender, value=5)
    chain.transact(broker.functions.unlock(), sender)
    receipt = chain.transact(broker.functions.fundDeposit(), sender, value=7)
    assert len(broker.events.UnlockCancelled().process_receipt(receipt, errors=DISCARD)) == 1
    assert len(broker.events.DepositFunded().process_receipt(receipt, errors=DISCARD)) == 1
    assert broker.functions.getSenderInfo(sender.address).call() == [(7, 0), (5, 0)]
    assert chain.w3.eth.get_balance(chain.addresses["Minter"]) == 12
    stranger = Account.create().address
    chain.fundSender(stranger, 3, 4)
    assert broker.functions.getSenderInfo(stranger).call() == [(3, 0), (4, 0)]
    minter = chain.contract("Minter").functions
    assertReverts(
        "msg.sender not Minter or JobsManager", lambda: chain.transact(minter.depositETH(), sender, value=1)
    )
    assertReverts(
        "msg.sender not BondingManager or JobsManager",
        lambda: chain.transact(minter.trustedWithdrawETH(sender.address, 1), sender),
    )


# ---- The node itself ------------------------------------------------------------


@pytest.fixture
def anvil():
    """
    A fresh anvil for one test.
    """
    if ensureAnvil() is None:
        pytest.skip(ANVIL_MISSING)
    node = Anvil()
    node.start()
    try:
        yield node
    finally:
        node.close()


def test_restartKeepsState(anvil):
    """
    Stopping and starting the node keeps its port, blocks and contract state.
    """
    chain = deployStandIns(anvil, roundLength=10)
    orchestrator = anvil.accounts[1]
    chain.registerTranscoder(orchestrator, STAKE)
    chain.transact(chain.contract("BondingManager").functions.reward(), orchestrator)
    block = anvil.blockNumber()
    url = anvil.url
    anvil.stop()
    assert not anvil.running
    with pytest.raises(OSError):
        anvil.rpc("eth_blockNumber", timeout=2)
    anvil.start()
    assert anvil.url == url
    assert anvil.blockNumber() == block
    assert chain.call("BondingManager", "getTranscoder", orchestrator)[0] == chain.round
    assertReverts(
        "caller has already called reward for the current round",
        lambda: chain.contract("BondingManager").functions.reward().call({"from": orchestrator}),
    )
    chain.advanceToNextRound()
    assert chain.currentRound() == chain.round + 1


def test_pendingTransactionsAndBaseFee(anvil):
    """
    With automine off a sent transaction stays pending until mined, and the
    next block's base fee can be set.
    """
    w3 = anvil.web3()
    anvil.setAutomine(False)
    fees = {"maxFeePerGas": 100 * 10**9, "maxPriorityFeePerGas": 10**9}
    txHash = w3.eth.send_transaction({"from": anvil.accounts[0], "to": anvil.accounts[1], "value": 1, **fees})
    assert [tx["hash"] for tx in anvil.pendingTransactions()] == ["0x" + txHash.hex()]
    assert w3.eth.get_transaction_count(anvil.accounts[0], "latest") == 0
    assert w3.eth.get_transaction_count(anvil.accounts[0], "pending") == 1
    anvil.setNextBlockBaseFee(5 * 10**9)
    anvil.mine()
    receipt = w3.eth.get_transaction_receipt(txHash)
    assert receipt.status == 1
    assert w3.eth.get_block(receipt.blockNumber).baseFeePerGas == 5 * 10**9
    assert anvil.pendingTransactions() == []
    anvil.setAutomine(True)
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_transaction({"from": anvil.accounts[0], "to": anvil.accounts[1], "value": 1}), timeout=30
    )
    assert receipt.status == 1


def test_blockTime():
    """
    With a block time, blocks are made without transactions.
    """
    if ensureAnvil() is None:
        pytest.skip(ANVIL_MISSING)
    with Anvil(blockTime=1) as node:
        first = node.blockNumber()
        deadline = time.monotonic() + 10
        while node.blockNumber() == first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert node.blockNumber() > first
