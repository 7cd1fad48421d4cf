# -*- test-case-name: tests.test_authtoken -*-
"""
go-livepeer's session auth tokens: C{GetOrchestrator} hands a gateway a fresh
C{AuthToken}, and every segment of that session carries it back.

A token is HMAC-SHA256, under a 32-byte key, of the session id's bytes
followed by the minimal big-endian bytes of its expiration (unix seconds);
the session id is 8 lowercase hex digits from 4 random bytes, and a token
is good for 30 minutes (golivepeer-wire.md, 2.3).

go-livepeer draws a new key at every start, so its tokens die with the
process. Ours is kept in the data directory (mode 0600), so that streams go
on across a restart of the orchestrator.
"""

import hashlib
import hmac
import os
import time

from livepeer_tx.proto import lp_rpc_pb2 as pb
from livepeer_tx.secret import loadOrCreateKeyFile

KEY_FILE = "auth-token.key"
KEY_BYTES = 32
SESSION_ID_BYTES = 4
VALID_SECONDS = 30 * 60

# go-livepeer's texts, which a gateway sees in the 403 body.
MISSING_AUTH_TOKEN = "missing auth token"
INVALID_AUTH_TOKEN = "invalid auth token"
EXPIRED_AUTH_TOKEN = "expired auth token"


class AuthTokenError(Exception):
    """
    A segment's auth token was refused.

    @ivar message: go-livepeer's text: L{MISSING_AUTH_TOKEN},
        L{INVALID_AUTH_TOKEN} or L{EXPIRED_AUTH_TOKEN}.
    """

    def __init__(self, message):
        super().__init__(message)
        self.message = message


def loadOrCreateKey(dataDir):
    """
    The token key kept in C{dataDir}, created (mode 0600, never over an
    existing file) when missing.

    @raise SecretFileError: the file is readable by group or others, is not
        a regular file, or does not hold a key; or it cannot be created.
    """
    return loadOrCreateKeyFile(os.path.join(dataDir, KEY_FILE), KEY_BYTES, "auth token key", hexText=True)


def _intBytes(value):
    # Go's big.Int.Bytes(): the absolute value, minimal big-endian, empty for 0.
    value = abs(value)
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


class AuthTokens:
    """
    Issues and checks session auth tokens.

    @param key: the 32-byte HMAC key (see L{loadOrCreateKey}).
    @param wallClock: unix time now, in seconds.
    @param randomBytes: C{randomBytes(n)} returns n random bytes (the
        session ids).
    @param validSeconds: how long a token is good for.
    """

    def __init__(self, key, wallClock=time.time, randomBytes=os.urandom, validSeconds=VALID_SECONDS):
        if len(key) != KEY_BYTES:
            raise ValueError(f"an auth token key is {KEY_BYTES} bytes")
        self._key = bytes(key)
        self._wallClock = wallClock
        self._randomBytes = randomBytes
        self.validSeconds = validSeconds

    @classmethod
    def fromDataDir(cls, dataDir, **kwargs):
        """
        Tokens under the key kept in C{dataDir} (see L{loadOrCreateKey}).

        @raise SecretFileError: the key file cannot be used.
        """
        return cls(loadOrCreateKey(dataDir), **kwargs)

    def _digest(self, sessionId, expiration):
        message = sessionId.encode("utf-8") + _intBytes(expiration)
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def issue(self):
        """
        A token for a new session.

        @return: an C{AuthToken} message.
        """
        sessionId = self._randomBytes(SESSION_ID_BYTES).hex()
        expiration = int(self._wallClock()) + self.validSeconds
        return pb.AuthToken(token=self._digest(sessionId, expiration), session_id=sessionId, expiration=expiration)

    def isGenuine(self, authToken):
        """
        Whether we issued C{authToken} (expired or not).
        """
        expected = self._digest(authToken.session_id, authToken.expiration)
        return hmac.compare_digest(expected, bytes(authToken.token))

    def verify(self, authToken):
        """
        Check a token in go-livepeer's order: present, genuine, not expired.

        @param authToken: an C{AuthToken} message, or L{None} when the
            segment carried none.
        @return: its session id.
        @raise AuthTokenError: with go-livepeer's text.
        """
        if authToken is None:
            raise AuthTokenError(MISSING_AUTH_TOKEN)
        if not self.isGenuine(authToken):
            raise AuthTokenError(INVALID_AUTH_TOKEN)
        if self._wallClock() > authToken.expiration:
            raise AuthTokenError(EXPIRED_AUTH_TOKEN)
        return authToken.session_id

    def verifySegment(self, segData):
        """
        L{verify} the token of a segment's C{SegData}.

        @return: the session id the segment belongs to.
        @raise AuthTokenError: with go-livepeer's text.
        """
        return self.verify(segData.auth_token if segData.HasField("auth_token") else None)

    def __repr__(self):
        return f"<AuthTokens valid for {self.validSeconds} s>"
