# -*- test-case-name: tests.test_units,tests.test_reload,tests.test_daemon_hardening -*-
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
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from livepeer_tx.secret import refuseSharedFile

_log = Logger()

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
        A server endpoint on C{port} serving with this context factory.
        """
        return SSL4ServerEndpoint(reactor, port, self, interface=interface)


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
