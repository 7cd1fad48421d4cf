# -*- test-case-name: tests.test_units,tests.test_reload,tests.test_daemon_hardening,tests.test_tls_transport -*-
"""
TLS for port 8935: the orchestrator's certificate, and the ways a client trusts it.

The orchestrator serves an operator's certificate chain or, when none is given, a
self-signed ECDSA P-256 certificate that it creates once in its data directory and
reuses across restarts (go-livepeer regenerates it at every start, which breaks
fingerprint pinning). Clients verify by default; they can trust a given
certificate or CA, pin a SHA-256 fingerprint, or opt out loudly.
"""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator, IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from livepeer_tx.secret import refuseSharedFile

_log = Logger()

# The bulk TLS transport's unit sizes (see BulkTLSTransport): a socket read,
# the application data handed on at once, a plaintext write to OpenSSL.
SOCKET_READ_BYTES = 256 * 1024
DELIVERY_BYTES = 256 * 1024
TLS_WRITE_BYTES = 256 * 1024
# The most one TLS record carries.
TLS_RECORD_BYTES = 16 * 1024

CERT_FILENAME = "cert.pem"
KEY_FILENAME = "key.pem"
SELF_SIGNED_VALIDITY = datetime.timedelta(days=825)


class CertificateError(Exception):
    """
    A certificate or key file is missing, unreadable or unsafe.
    """


def formatFingerprint(digest):
    """
    Format a SHA-256 digest the way C{openssl x509 -fingerprint -sha256} does.
    """
    return ":".join(f"{b:02X}" for b in digest)


def parseFingerprint(text):
    """
    Parse a SHA-256 fingerprint given with or without colons, in any case.

    @raise ValueError: it is not 32 bytes of hex.
    """
    cleaned = text.replace(":", "").replace(" ", "").strip()
    try:
        digest = bytes.fromhex(cleaned)
    except ValueError:
        raise ValueError(f"not a hex SHA-256 fingerprint: {text!r}") from None
    if len(digest) != 32:
        raise ValueError(f"a SHA-256 fingerprint has 32 bytes, got {len(digest)}")
    return digest


def certificateFingerprint(pemBytes):
    """
    Return the SHA-256 digest of the first certificate in C{pemBytes}.
    """
    cert = x509.load_pem_x509_certificate(pemBytes)
    return cert.fingerprint(hashes.SHA256())


def _subjectAlternativeName(hostname):
    names = [x509.DNSName("localhost")]
    try:
        names.insert(0, x509.IPAddress(ipaddress.ip_address(hostname)))
    except ValueError:
        if hostname != "localhost":
            names.insert(0, x509.DNSName(hostname))
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    unique = []
    for name in names:
        if name not in unique:
            unique.append(name)
    return x509.SubjectAlternativeName(unique)


def createSelfSigned(hostname, now=None):
    """
    Create a self-signed ECDSA P-256 certificate for C{hostname}.

    @return: C{(certPEM, keyPEM)} as bytes.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + SELF_SIGNED_VALIDITY)
        .add_extension(_subjectAlternativeName(hostname), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    keyPEM = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), keyPEM


class ServerCertificate:
    """
    The certificate chain and key the orchestrator serves, as files on disk.

    @ivar certPath: PEM file holding the leaf certificate and any chain after it.
    @ivar keyPath: PEM file holding the private key.
    @ivar fingerprint: SHA-256 digest of the leaf certificate.
    @ivar generated: whether this start created a new self-signed certificate.
    """

    def __init__(self, certPath, keyPath, generated=False):
        self.certPath = certPath
        self.keyPath = keyPath
        self.generated = generated
        with open(certPath, "rb") as f:
            self.certPEM = f.read()
        self.fingerprint = certificateFingerprint(self.certPEM)

    @staticmethod
    def checkFiles(dataDir, certPath=None, keyPath=None):
        """
        Check, without creating anything, that the operator's pair (or the
        self-signed pair already in C{dataDir}) can be used: both files exist
        and the key is private. Option parsing calls this so a bad file is a
        usage message, not a traceback.

        @raise CertificateError: a file is missing, or the key is readable by others.
        """
        if certPath or keyPath:
            if not (certPath and keyPath):
                raise CertificateError("--tlsCert and --tlsKey must be given together")
            for path in (certPath, keyPath):
                if not os.path.isfile(path):
                    raise CertificateError(f"TLS file not found: {path}")
            _checkKeyPermissions(keyPath)
            return
        keyPath = os.path.join(dataDir, KEY_FILENAME)
        if os.path.isfile(keyPath):
            _checkKeyPermissions(keyPath)

    @classmethod
    def loadOrCreate(cls, dataDir, hostname, certPath=None, keyPath=None):
        """
        Use the operator's C{certPath}/C{keyPath}, or the self-signed pair in
        C{dataDir}, creating that pair if it does not exist yet.

        @raise CertificateError: a file is missing, or the key is readable by others.
        """
        cls.checkFiles(dataDir, certPath, keyPath)
        if certPath:
            return cls(certPath, keyPath)
        certPath = os.path.join(dataDir, CERT_FILENAME)
        keyPath = os.path.join(dataDir, KEY_FILENAME)
        if os.path.isfile(certPath) and os.path.isfile(keyPath):
            return cls(certPath, keyPath)
        certPEM, keyPEM = createSelfSigned(hostname)
        os.makedirs(dataDir, mode=0o700, exist_ok=True)
        fd = os.open(keyPath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(keyPEM)
        with open(certPath, "wb") as f:
            f.write(certPEM)
        return cls(certPath, keyPath, generated=True)

    def serverTLS(self):
        """
        A L{ReloadableServerTLS} serving this pair.

        @raise CertificateError: the pair cannot be used.
        """
        return ReloadableServerTLS(self.certPath, self.keyPath)


def loadServerOptions(certPath, keyPath):
    """
    Server TLS options for the chain in C{certPath} (leaf first, every
    certificate after it sent as the chain) and the key in C{keyPath}.

    @return: C{(options, fingerprint)}: the L{ssl.CertificateOptions} and the
        SHA-256 digest of the leaf certificate.

    @raise CertificateError: a file is missing, unreadable or malformed, the
        key is readable by others, or it does not match the certificate.
    """
    _checkKeyPermissions(keyPath)
    try:
        with open(certPath, "rb") as f:
            certificates = x509.load_pem_x509_certificates(f.read())
        with open(keyPath, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise CertificateError(f"cannot read TLS file {e.filename}: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise CertificateError(f"cannot load the TLS pair {certPath} / {keyPath}: {e}") from None
    options = ssl.CertificateOptions(
        privateKey=key, certificate=certificates[0], extraCertChain=certificates[1:] or None)
    try:
        options.getContext()
    except SSL.Error as e:
        raise CertificateError(f"the key {keyPath} does not match the certificate {certPath}: {e}") from None
    return options, certificates[0].fingerprint(hashes.SHA256())


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """
    The orchestrator's server TLS, whose certificate and key can be replaced
    while the port listens: Twisted's TLS endpoint asks this connection
    creator for every new connection, so each new handshake uses the pair
    loaded last (with ALPN as before); open connections keep theirs.

    @ivar certPath: the certificate chain file.
    @ivar keyPath: the key file.
    @ivar fingerprint: the SHA-256 digest of the leaf served now.
    """

    def __init__(self, certPath, keyPath):
        self.certPath = certPath
        self.keyPath = keyPath
        self._options, self.fingerprint = loadServerOptions(certPath, keyPath)

    def serverConnectionForTLS(self, tlsProtocol):
        """
        The OpenSSL connection for a new TLS connection, with the current pair.
        """
        return self._options.serverConnectionForTLS(tlsProtocol)

    def reload(self):
        """
        Read the certificate and key files again and serve them from the next
        handshake on. When they cannot be used, the pair served until now
        stays.

        @return: C{(previous, current)}: the SHA-256 digests of the leaf
            served until now and from now on (equal when the files did not
            change).
        @raise CertificateError: the files cannot be used; nothing changed.
        """
        previous = self.fingerprint
        self._options, self.fingerprint = loadServerOptions(self.certPath, self.keyPath)
        return previous, self.fingerprint

    def endpoint(self, reactor, port, interface=""):
        """
        A server endpoint on C{port} serving with this context factory over
        L{BulkTLSTransport}.
        """
        return BulkTLSServerEndpoint(TCP4ServerEndpoint(reactor, port, interface=interface), self)


class _ReadOnConnection:
    """
    An C{OpenSSL.SSL.Connection} whose C{recv} goes on reading records while
    OpenSSL has whole ones, up to a size, and returns them as one piece; an
    exception met after some data (no more records, the peer's close, a TLS
    error) is raised by the next C{recv}, once that data was handed on.
    Everything else is the connection's own.
    """

    def __init__(self, connection, deliveryBytes):
        self._connection = connection
        self._deliveryBytes = deliveryBytes
        self._pending = None
        # The calls made once or more per record, without the delegation.
        self.send = connection.send
        self.bio_read = connection.bio_read
        self.bio_write = connection.bio_write

    def __getattr__(self, name):
        return getattr(self._connection, name)

    def recv(self, size):
        """
        Up to C{max(size, deliveryBytes)} bytes of application data, read
        record by record.
        """
        if self._pending is not None:
            pending, self._pending = self._pending, None
            raise pending
        read = self._connection.recv
        pieces = [read(size)]
        wanted = max(size, self._deliveryBytes) - TLS_RECORD_BYTES
        received = len(pieces[0])
        while received <= wanted:
            try:
                piece = read(TLS_RECORD_BYTES)
            except SSL.Error as e:
                self._pending = e
                break
            pieces.append(piece)
            received += len(piece)
        return b"".join(pieces)


class BulkTLSTransport(BufferingTLSTransport):
    """
    Twisted's TLS transport with fewer, larger calls per megabyte, for the
    segments and renditions of port 8935:

      - the socket is read L{SOCKET_READ_BYTES} at a time (Twisted reads 64
        KiB), so fewer reads, TLS record parses and wake-ups per segment;
      - received records are handed to the application in pieces of up to
        L{DELIVERY_BYTES} (Twisted hands on each 16 KiB record by itself),
        so HTTP and WebSocket parsing run once per piece, not per record
        (L{_ReadOnConnection});
      - application data goes to OpenSSL up to L{TLS_WRITE_BYTES} at a time,
        without copying it into 16 KiB slices first, and everything OpenSSL
        then has to send is written to the socket at once (Twisted encrypts
        16 KiB, reads 32 KiB out and writes it, per record).

    It overrides C{makeConnection}, C{getHandle}, C{_write} and C{_flushSendBIO} of
    L{twisted.protocols.tls.TLSMemoryBIOProtocol} and relies on its
    C{_tlsConnection}, C{_lostTLSConnection}, C{_bufferedWrite},
    C{_tlsShutdownFinished} and C{_flushReceiveBIO} (which reads with
    C{recv} until C{WantReadError}), and on the TCP transport's
    C{bufferSize} being its read size: tests/test_tls_transport.py pins
    them (with C{twisted<27} in setup.cfg).
    """

    def makeConnection(self, transport):
        """
        Read the socket in larger pieces, set up TLS as Twisted does, and
        read records on in L{DELIVERY_BYTES} pieces.
        """
        if getattr(transport, "bufferSize", SOCKET_READ_BYTES) < SOCKET_READ_BYTES:
            transport.bufferSize = SOCKET_READ_BYTES
        super().makeConnection(transport)
        self._tlsConnection = _ReadOnConnection(self._tlsConnection, DELIVERY_BYTES)

    def getHandle(self):
        """
        The C{OpenSSL.SSL.Connection} itself (autobahn reads its TLS channel
        binding from it).
        """
        return self._tlsConnection._connection

    def _write(self, data):
        if self._lostTLSConnection:
            return
        view = memoryview(data)
        written = 0
        while written < len(view):
            try:
                written += self._tlsConnection.send(view[written:written + TLS_WRITE_BYTES])
            except SSL.WantReadError:
                self._bufferedWrite(bytes(view[written:]))
                break
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
                return
        self._flushSendBIO()

    def _flushSendBIO(self):
        # Everything OpenSSL has for the peer, in one write when it fits.
        pieces = []
        while True:
            try:
                pieces.append(self._tlsConnection.bio_read(TLS_WRITE_BYTES + TLS_RECORD_BYTES))
            except SSL.WantReadError:
                break
        if len(pieces) == 1:
            self.transport.write(pieces[0])
        elif pieces:
            self.transport.writeSequence(pieces)


class BulkTLSFactory(TLSMemoryBIOFactory):
    """
    Twisted's TLS wrapping factory building L{BulkTLSTransport}s.
    """

    protocol = BulkTLSTransport


@implementer(IStreamServerEndpoint)
class BulkTLSServerEndpoint:
    """
    A server endpoint serving TLS with L{BulkTLSTransport} over a TCP one.

    @param tcpEndpoint: the TCP server endpoint to listen on.
    @param serverTLS: the L{IOpenSSLServerConnectionCreator} of each
        connection's TLS.
    """

    def __init__(self, tcpEndpoint, serverTLS):
        self._tcpEndpoint = tcpEndpoint
        self._serverTLS = serverTLS

    def listen(self, protocolFactory):
        """
        Listen with C{protocolFactory}'s protocols behind TLS.
        """
        return self._tcpEndpoint.listen(BulkTLSFactory(self._serverTLS, False, protocolFactory))


def _checkKeyPermissions(keyPath):
    refuseSharedFile(f"TLS key {keyPath}", os.stat(keyPath).st_mode, CertificateError)


@implementer(IOpenSSLClientConnectionCreator)
class FingerprintPinnedTLS:
    """
    Client TLS that accepts exactly one server certificate, named by its SHA-256
    fingerprint, whatever its issuer or host name.
    """

    def __init__(self, fingerprint):
        self.fingerprint = fingerprint

    def _verify(self, connection, x509cert, errno, depth, ok):
        if depth != 0:
            return True
        digest = x509cert.to_cryptography().fingerprint(hashes.SHA256())
        return digest == self.fingerprint

    def clientConnectionForTLS(self, tlsProtocol):
        """
        Make an OpenSSL connection that checks the peer's leaf fingerprint.
        """
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_verify(SSL.VERIFY_PEER, self._verify)
        connection = SSL.Connection(context, None)
        connection.set_app_data(tlsProtocol)
        return connection


def clientTLSOptions(hostname, caFile=None, fingerprint=None, insecure=False):
    """
    Choose how a client trusts the orchestrator's certificate.

    @param hostname: the host name (or IP) the certificate must name.
    @param caFile: PEM file of a certificate or CA to trust instead of the system store.
    @param fingerprint: SHA-256 digest of the one certificate to accept.
    @param insecure: accept any certificate (a test setup only).
    """
    if insecure:
        return ssl.CertificateOptions(verify=False)
    if fingerprint is not None:
        return FingerprintPinnedTLS(fingerprint)
    if caFile is not None:
        with open(caFile, "rb") as f:
            trustRoot = ssl.Certificate.loadPEM(f.read())
        return ssl.optionsForClientTLS(hostname, trustRoot=trustRoot)
    return ssl.optionsForClientTLS(hostname)
