# -*- test-case-name: tests.test_chain_reward,tests.test_chain_service -*-
"""
An asynchronous Ethereum JSON-RPC client on a Twisted HTTP L{Agent}.

web3.py's HTTP provider is synchronous and would block the reactor, so requests
are made here and only the encoding (eth-abi) and signing (eth-account) come
from the Ethereum libraries.
"""

import base64
import itertools
import json
from urllib.parse import unquote, urlsplit, urlunsplit

from eth_abi import decode as abiDecode
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers

from livepeer_tx.web import BytesProducer

# Error(string) and Panic(uint256) selectors used by Solidity reverts.
ERROR_SELECTOR = bytes.fromhex("08c379a0")
PANIC_SELECTOR = bytes.fromhex("4e487b71")


class RpcError(Exception):
    """
    The node answered with a JSON-RPC error object.

    @ivar code: the JSON-RPC error code.
    @ivar message: the node's message.
    @ivar data: the error's C{data} member, if any.
    @ivar revertReason: the decoded revert string when the error is an EVM
        revert with an C{Error(string)} payload (or a reason in the message),
        otherwise L{None}.
    """

    def __init__(self, code, message, data=None):
        Exception.__init__(self, f"JSON-RPC error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data
        self.revertReason = decodeRevertReason(data, message)


class RpcTransportError(Exception):
    """
    The node could not be reached or answered something that is not JSON-RPC.
    """


def redactUrl(url):
    """
    The C{scheme://host:port} part of a URL, safe to log.

    Hosted JSON-RPC URLs carry API keys in their path, query or user
    information; none of these is kept.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return "<unparseable URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def decodeRevertReason(data, message=""):
    """
    Extract a Solidity revert string from a JSON-RPC error.

    @param data: the error's C{data} (hex string, or a dict holding one).
    @param message: the error message, used when C{data} has no payload
        (some nodes only say C{execution reverted: <reason>}).
    @return: the reason string, or L{None}.
    """
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        try:
            raw = bytes.fromhex(data[2:])
        except ValueError:
            raw = b""
        if raw[:4] == ERROR_SELECTOR:
            try:
                return abiDecode(["string"], raw[4:])[0]
            except Exception:
                return None
        if raw[:4] == PANIC_SELECTOR:
            try:
                return f"panic code {abiDecode(['uint256'], raw[4:])[0]:#x}"
            except Exception:
                return None
    prefix = "execution reverted: "
    if message and message.startswith(prefix):
        return message[len(prefix):]
    return None


def toHex(value):
    """
    Encode an integer as a JSON-RPC quantity or bytes as JSON-RPC data.
    """
    if isinstance(value, int):
        return hex(value)
    return "0x" + bytes(value).hex()


def fromHex(value):
    """
    Decode a JSON-RPC quantity.
    """
    return int(value, 16)


def _requestTarget(url):
    """
    The URL to request and the headers to send: user information in the URL
    becomes an HTTP Basic C{Authorization} header (the HTTP client does not
    accept it in the URL).
    """
    headers = {b"Content-Type": [b"application/json"]}
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, headers
    if "@" not in parts.netloc:
        return url, headers
    userinfo, hostport = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode("utf-8"))
    headers[b"Authorization"] = [b"Basic " + token]
    return urlunsplit(parts._replace(netloc=hostport)), headers


def _secretParts(url):
    """
    The parts of C{url} that L{redactUrl} leaves out, longest first, to be
    scrubbed from any text that may quote them.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    secrets = [url, parts.path, parts.query, parts.fragment]
    if "@" in parts.netloc:
        secrets.append(parts.netloc.rsplit("@", 1)[0])
    return sorted((s for s in secrets if len(s) > 1), key=len, reverse=True)


class _BodyReader(Protocol):
    """
    Collect a response body; C{finished} fires with it, or fails on data loss.
    """

    def __init__(self, maxSize=64 * 1024 * 1024):
        self.finished = Deferred(lambda _: self.transport and self.transport.stopProducing())
        self._chunks = []
        self._size = 0
        self._maxSize = maxSize

    def dataReceived(self, data):
        self._size += len(data)
        if self._size > self._maxSize:
            self.transport.stopProducing()
            return
        self._chunks.append(data)

    def connectionLost(self, reason):
        if self.finished.called:
            return
        if reason.check(ResponseDone) and self._size <= self._maxSize:
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(reason)


class JsonRpcClient:
    """
    Send Ethereum JSON-RPC requests over HTTP(S) without blocking the reactor.

    @ivar url: the node's URL redacted by L{redactUrl}: the only form that
        appears in messages and logs.
    """

    _log = Logger()

    def __init__(self, reactor, url, timeout=15.0, agent=None):
        """
        @param agent: the L{twisted.web.iweb.IAgent} that carries the
            requests; by default an L{Agent} with a persistent pool (tests
            pass an in-memory node).
        """
        self._reactor = reactor
        self._url, self._headers = _requestTarget(url)
        self.url = redactUrl(url)
        self._secrets = _secretParts(url)
        self._timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 4
        self._pool.cachedConnectionTimeout = 30
        self._agent = agent if agent is not None else Agent(reactor, pool=self._pool, connectTimeout=timeout)
        self._ids = itertools.count(1)

    async def request(self, method, params=()):
        """
        Call one JSON-RPC method.

        @return: the C{result} member of the answer.
        @raise RpcError: the node answered with an error object.
        @raise RpcTransportError: the node could not be reached or answered garbage.
        """
        body = json.dumps(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        ).encode("utf-8")
        try:
            d = self._agent.request(
                b"POST",
                self._url.encode("ascii"),
                Headers(dict(self._headers)),
                BytesProducer(body),
            )
            d.addTimeout(self._timeout, self._reactor)
            response = await d
            reader = _BodyReader()
            response.deliverBody(reader)
            d = reader.finished
            d.addTimeout(self._timeout, self._reactor)
            raw = await d
        except Exception as e:
            raise RpcTransportError(self._scrub(f"{method} to {self.url} failed: {e!r}")) from None
        try:
            answer = json.loads(raw)
        except ValueError:
            raise RpcTransportError(
                self._scrub(f"{method} to {self.url}: HTTP {response.code}, not JSON: {raw[:200]!r}")
            ) from None
        if not isinstance(answer, dict):
            raise RpcTransportError(
                self._scrub(f"{method} to {self.url}: unexpected answer {raw[:200]!r}")
            )
        error = answer.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise RpcTransportError(
                    self._scrub(f"{method} to {self.url}: malformed error member {raw[:200]!r}")
                )
            code, message = error.get("code"), error.get("message")
            raise RpcError(code, self._scrub("" if message is None else str(message)), error.get("data"))
        if "result" not in answer:
            raise RpcTransportError(self._scrub(f"{method} to {self.url}: no result in {raw[:200]!r}"))
        return answer["result"]

    def _scrub(self, text):
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    def close(self):
        """
        Close the persistent connections.

        @rtype: L{Deferred}
        """
        return self._pool.closeCachedConnections()

    async def chainId(self):
        """
        The chain id (C{eth_chainId}).
        """
        return fromHex(await self.request("eth_chainId"))

    async def blockNumber(self):
        """
        The latest block number of the node's own chain.
        """
        return fromHex(await self.request("eth_blockNumber"))

    async def getBlock(self, block="latest"):
        """
        A block header (without transactions).
        """
        return await self.request("eth_getBlockByNumber", [block, False])

    async def getBalance(self, address, block="latest"):
        """
        The balance of C{address} in wei.
        """
        return fromHex(await self.request("eth_getBalance", [address, block]))

    async def getTransactionCount(self, address, block="pending"):
        """
        The nonce of the next transaction of C{address} at C{block}.
        """
        return fromHex(await self.request("eth_getTransactionCount", [address, block]))

    async def maxPriorityFeePerGas(self):
        """
        The node's suggested priority fee, or 0 when it cannot say.
        """
        try:
            return fromHex(await self.request("eth_maxPriorityFeePerGas"))
        except RpcError:
            return 0

    async def call(self, to, data, sender=None, block="latest"):
        """
        Run C{eth_call}; return the raw output bytes.

        @raise RpcError: with C{revertReason} set when the call reverts.
        """
        tx = {"to": to, "data": toHex(data)}
        if sender is not None:
            tx["from"] = sender
        result = await self.request("eth_call", [tx, block])
        try:
            return bytes.fromhex(result[2:])
        except (TypeError, ValueError):
            raise RpcTransportError(f"eth_call to {self.url}: result is not hex data") from None

    async def estimateGas(self, tx):
        """
        Run C{eth_estimateGas} for a transaction dictionary of JSON-RPC values.
        """
        return fromHex(await self.request("eth_estimateGas", [tx]))

    async def sendRawTransaction(self, raw):
        """
        Broadcast a signed transaction; return its hash as a hex string.
        """
        return await self.request("eth_sendRawTransaction", [toHex(raw)])

    async def getTransactionReceipt(self, txHash):
        """
        The receipt of C{txHash}, or L{None} while it is not mined.
        """
        return await self.request("eth_getTransactionReceipt", [txHash])
