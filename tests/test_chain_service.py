"""
Options, keystore loading and the assembled chain service.
"""

import json
import os
import socket
from urllib.parse import urlsplit

import pytest
from eth_account import Account
from prometheus_client import REGISTRY, CollectorRegistry
from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from livepeer_tx.chain.keystore import KeystoreError, loadAccount
from livepeer_tx.chain.payments import TicketPayments
from livepeer_tx.chain.rpc import JsonRpcClient, RpcError, RpcTransportError, redactUrl
from livepeer_tx.chain.service import makeChainService
from livepeer_tx.chainoptions import (
    ARBITRUM_ONE_CONTROLLER, CHAIN_OPT_FLAGS, CHAIN_OPT_PARAMETERS, ETH_OPTION_NAMES, validateChainOptions,
)
from livepeer_tx.orchestrator.tap import makePayments
from livepeer_tx.payments import OffchainPayments, PaymentError
from livepeer_tx.proto import lp_rpc_pb2
from livepeer_tx.secret import SecretFileError

from tests.fakechain import FakeChainTestCase
from tests.test_chain_reward import STAKE


class Options(usage.Options):
    optParameters = CHAIN_OPT_PARAMETERS
    optFlags = CHAIN_OPT_FLAGS

    def postOptions(self):
        validateChainOptions(self)


def parse(*args):
    options = Options()
    options.parseOptions(list(args))
    return options


def writeKey(directory, account, password="pw"):
    data = Account.encrypt(account.key, password, kdf="pbkdf2", iterations=2)
    path = os.path.join(directory, "UTC--key--" + account.address[2:].lower())
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def writePassword(directory, password="pw", mode=0o600):
    path = os.path.join(directory, "password")
    with open(path, "w") as f:
        f.write(password + "\n")
    os.chmod(path, mode)
    return path


def test_offchainDefaults():
    """
    Off chain by default: the documented defaults, every eth option declared, and no chain
    service (off-chain payments) from the orchestrator's makePayments.
    """
    options = parse()
    assert options["network"] == "offchain"
    assert options["maxGasPrice"] == 0 and options["ticketEV"] == 8 * 10**9
    assert set(ETH_OPTION_NAMES) <= {p[0] for p in CHAIN_OPT_PARAMETERS}
    service, payments = makePayments(options, reactor, "/nonexistent", None)
    assert service is None and isinstance(payments, OffchainPayments)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--network", "arbitrum-one-mainnet"], "needs --ethUrl"),
        (["--ethUrl", "http://x"], "--network is offchain"),
        (["--network", "devnet", "--ethUrl", "http://x"], "give --ethController"),
        (["--network", "arbitrum-one-mainnet", "--ethUrl", "http://x"], "needs --ethKeystorePath"),
        (["--network", "arbitrum-one-mainnet", "--ethUrl", "http://x", "--ethKeystorePath", "/k"],
         "--pricePerUnit must be set"),
        (["--reward", "maybe"], "on, off or auto"),
        (["--maxGasPrice", "lots"], "--maxGasPrice must be an integer"),
        (["--network", "devnet", "--ethUrl", "http://x", "--ethController", "0x12"], "not an address"),
    ],
)
def test_refusals(args, message):
    """
    Inconsistent or malformed chain options are refused with a message naming the problem.
    """
    with pytest.raises(usage.UsageError, match=message):
        parse(*args)


def test_arbitrumControllerBuiltIn(tmp_path):
    """
    On arbitrum-one-mainnet the Controller address is built in; --pricePerUnit is parsed as an
    integer.
    """
    options = parse("--network", "arbitrum-one-mainnet", "--ethUrl", "http://x",
                    "--ethKeystorePath", str(tmp_path), "--pricePerUnit", "1200",
                    "--ethPassword", writePassword(str(tmp_path)))
    assert options["ethController"] == ARBITRUM_ONE_CONTROLLER
    assert options["pricePerUnit"] == 1200


def test_passwordFileReadableByOthersRefused(tmp_path):
    """
    A keystore password file readable by others is refused, by the options and by the keystore
    loader.
    """
    path = writePassword(str(tmp_path), mode=0o644)
    with pytest.raises(usage.UsageError, match="chmod 600"):
        parse("--network", "arbitrum-one-mainnet", "--ethUrl", "http://x",
              "--ethKeystorePath", str(tmp_path), "--pricePerUnit", "1", "--ethPassword", path)
    with pytest.raises(SecretFileError):
        loadAccount(str(tmp_path), password=path)


def test_keystore(tmp_path):
    """
    A key is found in a directory or by file, chosen by --ethAcctAddr among several, and a wrong
    password or address is a clear error.
    """
    keys = tmp_path / "keys"
    keys.mkdir()
    a, b = Account.from_key(b"\x07" * 32), Account.from_key(b"\x08" * 32)
    keyfile = writeKey(str(keys), a)
    password = writePassword(str(tmp_path))
    assert loadAccount(str(keys), password=password).address == a.address
    assert loadAccount(keyfile, password=password).address == a.address
    assert loadAccount(str(keys), password="pw").address == a.address  # literal, with a warning
    writeKey(str(keys), b)
    with pytest.raises(KeystoreError, match="choose one with --ethAcctAddr"):
        loadAccount(str(keys), password=password)
    assert loadAccount(str(keys), b.address, password).address == b.address
    with pytest.raises(KeystoreError, match="cannot decrypt"):
        loadAccount(str(keys), a.address, "wrong")
    with pytest.raises(KeystoreError, match="no key file"):
        loadAccount(str(keys), Account.from_key(b"\x09" * 32).address, password)


def test_sharedTicketKeyStopsStartUpWithAUsageError(tmp_path):
    """
    A ticket recipient key in the data directory that others can read stops
    the on-chain orchestrator's C{makeService} with a usage error naming
    the fix (as a shared secret file does), not a traceback; the file is
    left as it was.
    """
    from livepeer_tx.orchestrator import tap as orchestratorTap

    keys = tmp_path / "keys"
    keys.mkdir()
    writeKey(str(keys), Account.from_key(b"\x07" * 32))
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    dataDir = tmp_path / "data"
    dataDir.mkdir()
    ticketKey = dataDir / "ticket-recipient.key"
    ticketKey.write_bytes(b"\x01" * 32)
    ticketKey.chmod(0o644)
    config = orchestratorTap.Options()
    config.parseOptions([
        "--orchSecret", str(secret), "--dataDir", str(dataDir), "--serviceAddr", "127.0.0.1:8935",
        "--cliAddr", "127.0.0.1:7935", "--network", "localdev", "--ethUrl", "http://chain.invalid:8545",
        "--ethController", "0x" + "11" * 20, "--ethKeystorePath", str(keys),
        "--ethPassword", writePassword(str(tmp_path)), "--pricePerUnit", "1",
    ])
    with pytest.raises(usage.UsageError, match=r"ticket recipient key .* chmod 600"):
        orchestratorTap.makeService(config, reactor=MemoryReactorClock())
    assert ticketKey.read_bytes() == b"\x01" * 32


class ServiceTests(FakeChainTestCase):
    def test_makeChainServiceRewards(self):
        """
        The service C{makeChainService} assembles from options and a keystore
        sets itself up once the node answers, calls reward for the current
        round, runs the redeemer and the watcher, and counts in the node's
        own metrics registry (the same L{ChainMetrics} as the payments), not
        the process-wide one.
        """
        self.chain.registerTranscoder(self.orch, STAKE)
        directory = self.mktemp()
        keys = os.path.join(directory, "keys")
        os.makedirs(keys)
        writeKey(keys, self.orch)
        options = parse(
            "--network", "localdev", "--ethUrl", "http://fake-chain.invalid:8545",
            "--ethController", self.chain.controller,
            "--ethKeystorePath", keys, "--ethPassword", writePassword(directory),
            "--pricePerUnit", "1", "--rewardInterval", "1", "--blockPollingInterval", "1",
        )
        registry = CollectorRegistry()
        service, payments = makeChainService(options, self.clock, directory, registry, rpcAgent=self.chain.agent())
        self.assertIsInstance(payments, TicketPayments)
        self.chain.stop()
        service.startService()
        self.stopAfterTest(service)
        self.advance(12.0)
        self.assertIsNone(service.reward)
        self.chain.start()
        self.advance(6.0)
        current = self.chain.currentRound()
        self.assertEqual(service.reward.lastRewardRound, current)
        self.assertEqual(self.chain.call("BondingManager", "getTranscoder", self.orch.address)[0], current)
        self.assertIsNotNone(service.redeemer)
        self.assertEqual(service.watcher.currentRound, current)
        # The node's metrics, in the node's registry (not the process-wide one).
        self.assertIs(service.reward.metrics, payments.metrics)
        self.assertIs(service.redeemer.metrics, payments.metrics)
        self.assertEqual(registry.get_sample_value("livepeer_last_reward_round"), current)
        self.assertIsNone(REGISTRY.get_sample_value("livepeer_last_reward_round"))


SECRET_PATH = "/v2/sEcReTkEy0123456789"
SECRET_QUERY = "apikey=qUeRySeCrEt987"


class _Canned(resource.Resource):
    isLeaf = True

    def __init__(self, body):
        resource.Resource.__init__(self)
        self.body = body

    def render_POST(self, request):
        return self.body


def closedPort():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class RpcClientTests(TestCase):
    """
    The JSON-RPC client against a canned local HTTP server (no chain).
    """

    def serve(self, body):
        port = reactor.listenTCP(0, server.Site(_Canned(body)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://user:pAsSwOrD@127.0.0.1:{port.getHost().port}{SECRET_PATH}?{SECRET_QUERY}"
        rpc = JsonRpcClient(reactor, url, timeout=5)
        self.addCleanup(rpc.close)
        return rpc

    def assertNoSecret(self, text):
        for secret in (SECRET_PATH, "sEcReTkEy", "qUeRySeCrEt", "pAsSwOrD"):
            self.assertNotIn(secret, text)

    def test_redactUrl(self):
        """
        Only scheme, host and port of a node URL are kept (no path, query or user
        information).
        """
        self.assertEqual(redactUrl(f"https://rpc.example.com{SECRET_PATH}?{SECRET_QUERY}"),
                         "https://rpc.example.com:443")
        self.assertEqual(redactUrl("http://u:p@[::1]:8545/x"), "http://[::1]:8545")
        self.assertEqual(redactUrl("http://127.0.0.1:8545"), "http://127.0.0.1:8545")

    async def test_errorMemberNotADict(self):
        """
        An error member that is not an object is a transport error, without the URL's
        secrets.
        """
        rpc = self.serve(b'{"jsonrpc": "2.0", "id": 1, "error": "boom"}')
        with self.assertRaises(RpcTransportError) as caught:
            await rpc.blockNumber()
        self.assertIn("malformed error member", str(caught.exception))
        self.assertNoSecret(str(caught.exception))

    async def test_errorMessageNotAString(self):
        """
        A non-string error message becomes text; no revert reason is made up.
        """
        rpc = self.serve(b'{"jsonrpc": "2.0", "id": 1, "error": {"code": 3, "message": 42}}')
        with self.assertRaises(RpcError) as caught:
            await rpc.blockNumber()
        self.assertEqual((caught.exception.code, caught.exception.message), (3, "42"))
        self.assertIsNone(caught.exception.revertReason)

    async def test_secretsNotInErrors(self):
        """
        A non-JSON answer and a refused connection are transport errors that quote none of
        the URL's secrets.
        """
        rpc = self.serve(b"<html>Service Unavailable</html>")
        self.assertEqual(rpc.url, f"http://127.0.0.1:{urlsplit(rpc._url).port}")
        with self.assertRaises(RpcTransportError) as caught:
            await rpc.blockNumber()
        self.assertIn("not JSON", str(caught.exception))
        self.assertNoSecret(str(caught.exception))
        dead = JsonRpcClient(
            reactor, f"http://127.0.0.1:{closedPort()}{SECRET_PATH}?{SECRET_QUERY}", timeout=5
        )
        self.addCleanup(dead.close)
        with self.assertRaises(RpcTransportError) as caught:
            await dead.chainId()
        self.assertNoSecret(str(caught.exception))


class SecretsNotLoggedTests(FakeChainTestCase):
    def test_secretsNotLoggedByChainService(self):
        """
        With the node down, and its refusal quoting the whole request URL,
        the chain service's set-up retries, the watcher's failed polls and a
        payment refused with 503 C{chain node unavailable} log neither the
        URL's path, query nor password: a log line or event field quoting the
        configured URL fails.
        """
        directory = self.mktemp()
        keys = os.path.join(directory, "keys")
        os.makedirs(keys)
        writeKey(keys, Account.from_key(b"\x07" * 32))
        url = f"http://user:pAsSwOrD@fake-chain.invalid:8545{SECRET_PATH}?{SECRET_QUERY}"
        options = parse(
            "--network", "localdev", "--ethUrl", url,
            "--ethController", self.chain.controller, "--ethKeystorePath", keys,
            "--ethPassword", writePassword(directory), "--pricePerUnit", "1",
            "--blockPollingInterval", "1",
        )
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.chain.stop()
        service, payments = makeChainService(options, self.clock, directory, rpcAgent=self.chain.agent())
        payments.chainTimeout = 3.0
        service.startService()
        self.stopAfterTest(service)
        self.advance(6.0)
        texts = [formatEvent(e) or "" for e in events]
        self.assertTrue(any("Cannot reach the chain" in t for t in texts))
        self.assertTrue(any("Chain poll failed" in t and "nothing listens at" in t for t in texts))
        d = payments.processPayment(lp_rpc_pb2.Payment(
            ticket_params=lp_rpc_pb2.TicketParams(recipient=b"\1" * 20),
            sender=b"\2" * 20,
            ticket_sender_params=[lp_rpc_pb2.TicketSenderParams(sender_nonce=1)],
        ), "s")
        self.advance(3.0)
        self.assertEqual(self.failureResultOf(d, PaymentError).value.status, 503)
        self.assertTrue(any("chain node unavailable" in (formatEvent(e) or "") for e in events))
        for event in events:
            RpcClientTests.assertNoSecret(self, formatEvent(event) or "")
            RpcClientTests.assertNoSecret(self, repr(event))
