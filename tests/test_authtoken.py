"""
Session auth tokens (L{livepeer_tx.orchestrator.authtoken}): go-livepeer's
layout, its refusal texts, expiry on an injected clock, and the key kept in
the data directory.
"""

import errno
import hashlib
import hmac
import os
import stat

import pytest

from livepeer_tx.orchestrator.authtoken import (
    EXPIRED_AUTH_TOKEN,
    INVALID_AUTH_TOKEN,
    KEY_FILE,
    MISSING_AUTH_TOKEN,
    VALID_SECONDS,
    AuthTokenError,
    AuthTokens,
    loadOrCreateKey,
)
from livepeer_tx.proto import lp_rpc_pb2 as pb
from livepeer_tx.secret import SecretFileError

KEY = bytes(range(32))
NOW = 1_700_000_000


class FakeClock:
    """
    A settable wall clock.
    """

    def __init__(self, now=NOW):
        self.now = now

    def __call__(self):
        return self.now


def randomFrom(*chunks):
    """
    A random source that hands out C{chunks} in order.
    """
    queue = list(chunks)
    return lambda size: queue.pop(0)[:size]


def refusal(tokens, token):
    with pytest.raises(AuthTokenError) as raised:
        tokens.verify(token)
    return raised.value.message


def test_layout():
    """
    The session id is the 4 random bytes in lowercase hex, the expiration is
    30 minutes on, and the token is HMAC-SHA256 over the session id followed
    by the expiration's minimal big-endian bytes.
    """
    clock = FakeClock(NOW + 0.75)
    tokens = AuthTokens(KEY, wallClock=clock, randomBytes=randomFrom(b"\xde\xad\xbe\xef"))
    token = tokens.issue()
    assert token.session_id == "deadbeef"
    assert token.expiration == NOW + 30 * 60 == NOW + VALID_SECONDS
    # 1700001800 is 0x6553F808: four bytes.
    expected = hmac.new(KEY, b"deadbeef" + bytes.fromhex("6553f808"), hashlib.sha256).digest()
    assert token.token == expected


def test_roundTrip():
    """
    A token we issued verifies to its session id, also inside a SegData; two
    tokens name two sessions.
    """
    tokens = AuthTokens(KEY, wallClock=FakeClock())
    first, second = tokens.issue(), tokens.issue()
    assert tokens.verify(first) == first.session_id
    assert tokens.verifySegment(pb.SegData(auth_token=second)) == second.session_id
    assert first.session_id != second.session_id
    assert len(first.session_id) == 8 and int(first.session_id, 16) >= 0
    assert first.session_id == first.session_id.lower()


def test_missing():
    """
    No token at all is go-livepeer's C{missing auth token}.
    """
    tokens = AuthTokens(KEY, wallClock=FakeClock())
    assert refusal(tokens, None) == MISSING_AUTH_TOKEN == "missing auth token"
    with pytest.raises(AuthTokenError) as raised:
        tokens.verifySegment(pb.SegData(seq=1))
    assert raised.value.message == MISSING_AUTH_TOKEN


@pytest.mark.parametrize("field, value", [
    ("token", b"\x00" * 32),
    ("session_id", "deadbeee"),
    ("expiration", NOW + VALID_SECONDS + 3600),
])
def test_tampered(field, value):
    """
    Changing the token, its session id or its expiration makes it
    C{invalid auth token}.
    """
    tokens = AuthTokens(KEY, wallClock=FakeClock(), randomBytes=randomFrom(b"\xde\xad\xbe\xef"))
    token = tokens.issue()
    setattr(token, field, value)
    assert refusal(tokens, token) == INVALID_AUTH_TOKEN == "invalid auth token"
    assert not tokens.isGenuine(token)


def test_otherKey():
    """
    A token made under another key is invalid.
    """
    clock = FakeClock()
    token = AuthTokens(os.urandom(32), wallClock=clock).issue()
    assert refusal(AuthTokens(KEY, wallClock=clock), token) == INVALID_AUTH_TOKEN


def test_expiry():
    """
    A token is good up to its expiration second and C{expired auth token}
    after it; an expired token is still genuine, and a forged expired one is
    invalid first (go-livepeer's order).
    """
    clock = FakeClock()
    tokens = AuthTokens(KEY, wallClock=clock)
    token = tokens.issue()
    clock.now = token.expiration
    assert tokens.verify(token) == token.session_id
    clock.now = token.expiration + 0.5
    assert refusal(tokens, token) == EXPIRED_AUTH_TOKEN == "expired auth token"
    assert tokens.isGenuine(token)
    forged = pb.AuthToken(token=b"x", session_id=token.session_id, expiration=token.expiration)
    assert refusal(tokens, forged) == INVALID_AUTH_TOKEN


def test_keyKeptInDataDir(tmp_path):
    """
    The key is created once, mode 0600, and read back by the next start: a
    token issued before a restart verifies after it.
    """
    clock = FakeClock()
    before = AuthTokens.fromDataDir(str(tmp_path), wallClock=clock)
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_text()
    token = before.issue()
    after = AuthTokens.fromDataDir(str(tmp_path), wallClock=clock)
    assert after.verify(token) == token.session_id
    assert path.read_text() == content
    assert content.strip() not in repr(after)


def test_keyReadableByOthersRefused(tmp_path):
    """
    A key file other users can read is refused with a clear error that does
    not show the key.
    """
    loadOrCreateKey(str(tmp_path))
    path = tmp_path / KEY_FILE
    path.chmod(0o644)
    with pytest.raises(SecretFileError) as raised:
        AuthTokens.fromDataDir(str(tmp_path))
    message = str(raised.value)
    assert "accessible by group or others" in message and "chmod 600" in message
    assert path.read_text().strip() not in message


@pytest.mark.parametrize("content", ["", "not hex\n", "abcd\n"])
def test_keyFileMalformed(tmp_path, content):
    """
    An empty, non-hex or short key file is refused, not replaced.
    """
    path = tmp_path / KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content.encode())
    os.close(fd)
    with pytest.raises(SecretFileError):
        loadOrCreateKey(str(tmp_path))
    assert path.read_text() == content


def test_missingDataDir(tmp_path):
    """
    A data directory that does not exist is a clear error.
    """
    with pytest.raises(SecretFileError) as raised:
        loadOrCreateKey(str(tmp_path / "nope"))
    assert "cannot create auth token key" in str(raised.value)


def test_keyFileNotWrittenIsRemoved(tmp_path, monkeypatch):
    """
    A key file that cannot be written to the end (the disk full at the
    sync) is a clear error and is removed, so the next start creates the
    key instead of refusing an empty file; were it left, that start would
    fail with "does not hold 32 bytes".
    """

    def diskFull(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", diskFull)
    with pytest.raises(SecretFileError, match="cannot write auth token key .*: No space left on device"):
        loadOrCreateKey(str(tmp_path))
    assert not (tmp_path / KEY_FILE).exists()
    monkeypatch.undo()
    assert len(loadOrCreateKey(str(tmp_path))) == 32


def test_keyLength():
    """
    Only a 32-byte key is accepted.
    """
    with pytest.raises(ValueError):
        AuthTokens(b"short")
