"""
The orchestrator's bulk TLS transport (L{livepeer_tx.tls.BulkTLSTransport}):
what it delivers and sends is exactly what Twisted's transport would, in
fewer and larger calls; the ends of a connection (the peer's close, a
corrupted record) come after the data before them; and the Twisted internals
it overrides or relies on are still there (a Twisted release that changes
them fails here, not in production).
"""

import inspect
import os

import pytest
from OpenSSL import SSL
from twisted.internet import ssl, tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols import tls
from twisted.test import iosim

from livepeer_tx.tls import (
    DELIVERY_BYTES, SOCKET_READ_BYTES, TLS_WRITE_BYTES, BulkTLSFactory, BulkTLSServerEndpoint, BulkTLSTransport,
    ReloadableServerTLS, createSelfSigned,
)


class Recorder(Protocol):
    """
    Records every piece of data it receives and how its connection ended.
    """

    def __init__(self):
        self.pieces = []
        self.reason = None

    def dataReceived(self, data):
        self.pieces.append(data)

    def connectionLost(self, reason):
        self.reason = reason


class CountingTransport(iosim.FakeTransport):
    """
    An in-memory transport that counts the writes made to it.
    """

    writes = 0

    def write(self, data):
        self.writes += 1
        super().write(data)

    def writeSequence(self, data):
        self.writes += 1
        super().writeSequence(data)


@pytest.fixture
def serverTLS(tmp_path):
    """
    The orchestrator's server TLS on a fresh self-signed pair.
    """
    certPEM, keyPEM = createSelfSigned("localhost")
    certPath, keyPath = tmp_path / "cert.pem", tmp_path / "key.pem"
    certPath.write_bytes(certPEM)
    keyPath.write_bytes(keyPEM)
    keyPath.chmod(0o600)
    return ReloadableServerTLS(str(certPath), str(keyPath))


def connectedPair(serverTLS):
    """
    A L{BulkTLSTransport} server and a Twisted TLS client in memory, past
    their handshake.

    @return: C{(server, serverRecorder, serverTransport, client,
        clientRecorder, clientTransport, pump)}.
    """
    serverRecorder, clientRecorder = Recorder(), Recorder()
    server = BulkTLSFactory(serverTLS, False, Factory.forProtocol(lambda: serverRecorder)).buildProtocol(None)
    client = tls.TLSMemoryBIOFactory(ssl.CertificateOptions(verify=False), True,
                                     Factory.forProtocol(lambda: clientRecorder)).buildProtocol(None)
    serverTransport, clientTransport = CountingTransport(server, False), CountingTransport(client, True)
    pump = iosim.connect(server, serverTransport, client, clientTransport)
    pump.flush()
    return server, serverRecorder, serverTransport, client, clientRecorder, clientTransport, pump


def test_largeWriteGoesOutInFewSocketWrites(serverTLS):
    """
    A megabyte written by the application reaches the peer intact through a
    handful of socket writes, one per L{TLS_WRITE_BYTES} of plaintext (Twisted
    writes once per 16 KiB record). A transport that sliced, dropped or
    reordered data, or went back to a write per record, fails here.
    """
    server, _, serverTransport, _, clientRecorder, _, pump = connectedPair(serverTLS)
    data = os.urandom(1024 * 1024)
    before = serverTransport.writes
    server.write(data)
    server._aggregator.flush()
    pump.flush()
    assert b"".join(clientRecorder.pieces) == data
    assert serverTransport.writes - before <= len(data) // TLS_WRITE_BYTES + 1


def test_recordsHandedOnInLargerPieces(serverTLS):
    """
    A megabyte of records that arrive together is handed to the application
    in pieces of L{DELIVERY_BYTES} (Twisted hands on each 16 KiB record),
    in order and complete.
    """
    _, serverRecorder, _, client, _, _, pump = connectedPair(serverTLS)
    data = os.urandom(1024 * 1024)
    client.write(data)
    client._aggregator.flush()
    pump.flush()
    assert b"".join(serverRecorder.pieces) == data
    assert [len(piece) for piece in serverRecorder.pieces] == [DELIVERY_BYTES] * (len(data) // DELIVERY_BYTES)


def test_peerCloseComesAfterItsData(serverTLS):
    """
    Data followed at once by the peer's close_notify is all handed on, and
    then the connection ends cleanly: reading on past the data must not
    lose it, nor turn the clean close into an error.
    """
    _, serverRecorder, serverTransport, client, _, _, pump = connectedPair(serverTLS)
    data = os.urandom(40_000)
    client.write(data)
    client.loseConnection()
    pump.flush()
    assert b"".join(serverRecorder.pieces) == data
    assert serverTransport.disconnecting
    assert serverRecorder.reason.check(tcp.error.ConnectionDone)


def test_corruptRecordEndsConnectionAfterTheGoodOnes(serverTLS):
    """
    A record that fails its integrity check ends the connection with the
    TLS error, after the records before it were handed on; nothing of it
    or after it is.
    """
    server, serverRecorder, serverTransport, client, _, clientTransport, pump = connectedPair(serverTLS)
    data = os.urandom(40_000)
    client.write(data)
    client._aggregator.flush()
    wire = bytearray(clientTransport.getOutBuffer())
    wire[-100] ^= 0xFF  # inside the last of three records
    server.dataReceived(bytes(wire))
    assert b"".join(serverRecorder.pieces) == data[:32 * 1024]
    assert serverTransport.disconnecting
    pump.flush()
    assert serverRecorder.reason.check(SSL.Error)


def test_socketReadSizeRaised(serverTLS):
    """
    The TCP transport under a bulk TLS connection reads
    L{SOCKET_READ_BYTES} at a time (Twisted's default is 64 KiB), and the
    connection's handle is still the C{OpenSSL.SSL.Connection} (autobahn
    refuses a WebSocket on anything else).
    """
    server = BulkTLSFactory(serverTLS, False, Factory.forProtocol(Recorder)).buildProtocol(None)
    transport = iosim.FakeTransport(server, False)
    transport.bufferSize = 64 * 1024
    server.makeConnection(transport)
    assert transport.bufferSize == SOCKET_READ_BYTES
    assert isinstance(server.getHandle(), SSL.Connection)


def test_endpointServesBulkTLS(serverTLS):
    """
    The orchestrator's TLS endpoint wraps its TCP endpoint's factory in a
    L{BulkTLSFactory} with the server TLS.
    """
    listened = []

    class TCPEndpoint:
        def listen(self, factory):
            listened.append(factory)

    endpoint = serverTLS.endpoint(None, 0)
    assert isinstance(endpoint, BulkTLSServerEndpoint)
    wrapped = Factory.forProtocol(Recorder)
    BulkTLSServerEndpoint(TCPEndpoint(), serverTLS).listen(wrapped)
    (factory,) = listened
    assert isinstance(factory, BulkTLSFactory) and factory.wrappedFactory is wrapped
    assert isinstance(factory.buildProtocol(None), BulkTLSTransport)


def test_twistedInternalsPinned():
    """
    What L{BulkTLSTransport} overrides and relies on in Twisted: the TLS
    protocol's methods and attributes, its receive loop reading C{recv}
    until C{WantReadError}, and the TCP transport reading C{bufferSize}
    bytes. A Twisted that renamed or reworked any of them fails here.
    """
    for name in ("makeConnection", "getHandle", "_write", "_flushSendBIO", "_flushReceiveBIO", "_bufferedWrite",
                 "_tlsShutdownFinished"):
        assert callable(getattr(tls.TLSMemoryBIOProtocol, name)), name
    receiveLoop = inspect.getsource(tls.TLSMemoryBIOProtocol._flushReceiveBIO)
    assert "self._tlsConnection.recv(" in receiveLoop and "except WantReadError" in receiveLoop
    assert "_lostTLSConnection" in receiveLoop
    assert "self._tlsConnection = " in inspect.getsource(tls.TLSMemoryBIOProtocol.makeConnection)
    assert "self.socket.recv(self.bufferSize)" in inspect.getsource(tcp.Connection.doRead)
    assert issubclass(BulkTLSTransport, tls.BufferingTLSTransport)


def test_webSocketChannelBindingReadable(serverTLS):
    """
    autobahn reads a new WebSocket's TLS channel binding through the
    transport's handle, which must be the C{OpenSSL.SSL.Connection}
    (the wrapper reading records on made it fail an assertion and drop
    every transcoder).
    """
    from autobahn.twisted.util import transport_channel_id

    server = connectedPair(serverTLS)[0]
    assert len(transport_channel_id(server, True, "tls-unique")) == 32
