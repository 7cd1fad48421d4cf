# -*- test-case-name: tests.test_chain_service -*-
"""
Assembling the on-chain services for the orchestrator.
"""

import os
from fractions import Fraction

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from livepeer_tx.metrics import ChainMetrics

from .contracts import LivepeerContracts
from .identity import NodeSigner
from .keystore import loadAccount
from .payments import TicketPayments
from .redemption import Redeemer, TicketStore
from .reward import RewardService
from .rpc import JsonRpcClient, RpcError, RpcTransportError
from .tickets import NONCES_FILE, SeenNonces, TicketRecipient, loadRecipientKey
from .transactions import TransactionManager
from .watcher import ChainWatcher


class ChainService(MultiService):
    """
    The chain watcher, the reward service and the ticket redeemer.

    The watcher starts at once; the transaction manager, the redeemer and the
    reward service are added once the node answers (retried until it does).

    @ivar account: the node's eth-account C{LocalAccount}.
    @ivar transactions: the account's L{TransactionManager} (once set up).
    @ivar reward: the L{RewardService}, or L{None} when reward is off.
    @ivar redeemer: the L{Redeemer} (once set up).
    @ivar metrics: the L{ChainMetrics} its services count in.
    """

    _log = Logger()

    def __init__(self, reactor, config, account, rpc, contracts, watcher, store, setupRetry=5.0, metrics=None):
        MultiService.__init__(self)
        self.metrics = metrics if metrics is not None else ChainMetrics()
        self._reactor = reactor
        self._config = config
        self.account = account
        self.rpc = rpc
        self.contracts = contracts
        self.watcher = watcher
        self.store = store
        self.transactions = None
        self.reward = None
        self.redeemer = None
        self._setupRetry = setupRetry
        self._setup = None
        watcher.setServiceParent(self)

    @property
    def signer(self):
        """
        A L{NodeSigner} of L{account}: the node's signatures in
        C{OrchestratorInfo}, segment results and C{GetOrchestrator} checks.
        """
        return NodeSigner(self.account)

    def startService(self):
        """
        Start the watcher and set up the rest in the background.
        """
        MultiService.startService(self)
        self._setup = Deferred.fromCoroutine(self._setUp())
        self._setup.addErrback(
            lambda f: None if f.check(CancelledError)
            else self._log.failure("Chain service set-up failed", f)
        )

    async def _setUp(self):
        while self.running:
            try:
                chainId = await self.rpc.chainId()
                await self.contracts.resolve()
                status = await self.contracts.bondingManager.call(
                    "transcoderStatus", self.account.address
                )
                break
            except (RpcError, RpcTransportError) as e:
                self._log.warn(
                    "Cannot reach the chain at {url} yet: {error}", url=self.rpc.url, error=str(e)
                )
                await deferLater(self._reactor, self._setupRetry, lambda: None)
        else:
            return
        c = self._config
        self.transactions = TransactionManager(
            self._reactor, self.rpc, self.account, chainId, maxGasPrice=c["maxGasPrice"]
        )
        self.redeemer = Redeemer(
            self._reactor, self.contracts, self.transactions, self.store, self.watcher,
            interval=c["blockPollingInterval"], redeemGas=c["redeemGas"], metrics=self.metrics,
        )
        self.redeemer.setServiceParent(self)
        rewardOn = c["reward"] == "on" or (c["reward"] == "auto" and status == 1)
        if c["reward"] == "auto":
            self._log.info(
                "--reward auto: {address} is {what}; reward service {state}",
                address=self.account.address,
                what="a registered transcoder" if status == 1 else "not a registered transcoder",
                state="on" if rewardOn else "off",
            )
        if rewardOn:
            self.reward = RewardService(
                self._reactor, self.contracts, self.transactions,
                interval=c["rewardInterval"], initializeRound=bool(c.get("initializeRound")),
                initializeGrace=c["initializeRoundGrace"], metrics=self.metrics,
            )
            self.reward.setServiceParent(self)

    def stopService(self):
        """
        Stop every child (and a set-up still waiting for the node), then close
        the RPC connections.
        """
        if self._setup is not None and not self._setup.called:
            self._setup.cancel()
        d = MultiService.stopService(self)
        if d is None:
            return self.rpc.close()
        d.addBoth(lambda _: self.rpc.close())
        return d


def makeChainService(config, reactor, dataDir, registry=None, rpcAgent=None):
    """
    Build the on-chain services from validated options.

    @param config: options checked by L{livepeer_tx.chainoptions.validateChainOptions}.
    @param dataDir: where the recipientRand key and the winning-ticket queue live.
    @param registry: the node's Prometheus registry, for L{ChainMetrics}.
    @param rpcAgent: the L{twisted.web.iweb.IAgent} JSON-RPC goes through
        (see L{JsonRpcClient}); by default a real HTTP one.
    @return: C{(service, payments)}. Off-chain, nothing here is used: see
        L{livepeer_tx.orchestrator.tap.makePayments}.
    """
    account = loadAccount(config["ethKeystorePath"], config.get("ethAcctAddr"), config.get("ethPassword"))
    rpc = JsonRpcClient(reactor, config["ethUrl"], agent=rpcAgent)
    contracts = LivepeerContracts(rpc, config["ethController"])
    watcher = ChainWatcher(reactor, contracts, interval=config["blockPollingInterval"])
    store = TicketStore(reactor, dataDir)
    recipient = TicketRecipient(
        account.address, loadRecipientKey(dataDir), config["ticketEV"], config["maxFaceValue"],
        nonces=SeenNonces(reactor, os.path.join(dataDir, NONCES_FILE)),
    )
    price = Fraction(config["pricePerUnit"], config["pixelsPerUnit"])
    metrics = ChainMetrics(registry)
    payments = TicketPayments(
        contracts, recipient, watcher, store, price, redeemGas=config["redeemGas"], reactor=reactor, metrics=metrics
    )
    service = ChainService(reactor, config, account, rpc, contracts, watcher, store, metrics=metrics)
    return service, payments
