"""
The on-chain orchestrator as operators run it: a real C{twistd} process with
a keystore, against anvil and the contract stand-ins.
"""

import re

import pytest

from e2e import postSegment, sessionToken
from livepeer_tx.chain.identity import NodeSigner
from tests.chainharness import ANVIL_MISSING, ensureAnvil, standInsOnAnvil
from tests.test_chain_service import writeKey, writePassword

pytestmark = pytest.mark.skipif(ensureAnvil() is None, reason=ANVIL_MISSING)


@pytest.fixture
def chain():
    with standInsOnAnvil(roundLength=20) as pair:
        yield pair


def test_onchainOrchestratorRewardsAndRequiresPayment(nodes, chain, segment2s, tmp_path):
    """
    With a keystore and --network custom, the orchestrator calls reward for
    the current round, keeps routing to transcoders, answers a funded
    gateway's signed GetOrchestrator, refuses a segment its gateway did not
    sign (ErrSegSig) and an unpaid one with go-livepeer's 'Insufficient
    balance'. The password never reaches the log.
    """
    anvil, deployment = chain
    account = anvil.account(3)
    deployment.registerTranscoder(account.address, 1000 * 10**18)
    keys = tmp_path / "keys"
    keys.mkdir()
    writeKey(str(keys), account, password="correct horse")
    password = writePassword(str(tmp_path), password="correct horse")
    orchestrator = nodes.startOrchestrator(
        network="localdev", ethUrl=anvil.url, ethController=deployment.controller,
        ethKeystorePath=str(keys), ethPassword=password, pricePerUnit=1, reward="on",
        rewardInterval=0.5, blockPollingInterval=0.5,
    )
    round_ = deployment.currentRound()
    orchestrator.waitForLog(rf"Called reward for round {round_}", timeout=60)
    nodes.startTranscoder(orchestrator, maxSessions=1)
    orchestrator.waitForTranscoders(1)
    # A funded gateway signs GetOrchestrator and its segment, as go-livepeer's
    # does, and sends a payment without tickets.
    gateway = anvil.account(4)
    deployment.fundSender(gateway, 10**18, 10**18)
    signer = NodeSigner(gateway)
    token = sessionToken(orchestrator, b"unpaid", signer)
    status, body = postSegment(orchestrator, segment2s, manifestId=b"unpaid", authToken=token)
    assert (status, body.strip()) == (403, b"ErrSegSig")
    status, body = postSegment(orchestrator, segment2s, manifestId=b"unpaid", signer=signer)
    assert (status, body.strip()) == (400, b"Insufficient balance")
    lastRewardRound = deployment.call("BondingManager", "getTranscoder", account.address)[0]
    assert lastRewardRound == round_
    log = orchestrator.logText()
    assert "correct horse" not in log
    assert len(re.findall(r"Called reward for round", log)) == 1
