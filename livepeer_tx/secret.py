# -*- test-case-name: tests.test_units,tests.test_reload,tests.test_authtoken,tests.test_chain_tickets -*-
"""
Reading the shared C{orchSecret} and other secret values from the command line.

go-livepeer accepts a literal or the path of a file; we do the same, but refuse a
file that other users can read, and remember where the value came from so that a
file can be re-read (secret rotation) and a literal can be warned about.
"""

import contextlib
import hashlib
import hmac
import os
import secrets
import stat

from twisted.logger import Logger


_MAX_SECRET_FILE_BYTES = 64 * 1024


class SecretFileError(Exception):
    """
    A secret file exists but cannot be used (unsafe permissions, empty, unreadable).
    """


def refuseSharedFile(description, mode, error=SecretFileError):
    """
    Refuse a private file (a secret, a key) that its group or others may
    access, with one message for every such file.

    @param description: how the message names the file, e.g.
        C{"secret file /etc/livepeer/secret"}.
    @param mode: the file's C{st_mode}.
    @param error: the exception type to raise.
    @raise error: any group or other permission bit is set.
    """
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise error(
            f"refusing {description}: it is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 on it"
        )


def readPrivateFile(path, description, limit=_MAX_SECRET_FILE_BYTES):
    """
    The bytes of a private file (a secret, a key), checked on what was
    opened: a regular file that neither group nor others may access, of at
    most C{limit} bytes.

    @param description: how errors name the file, e.g. C{"secret file"}.
    @raise SecretFileError: the file is unreadable, not a regular file,
        shared, or too long.
    """
    try:
        # Non-blocking, so that a FIFO put in its place cannot hang us.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise SecretFileError(f"refusing {description} {path}: it is not a regular file")
            refuseSharedFile(f"{description} {path}", info.st_mode)
            value = f.read(limit + 1)
    except OSError as e:
        raise SecretFileError(f"cannot read {description} {path}: {e.strerror}") from None
    if len(value) > limit:
        raise SecretFileError(f"{description} {path} is over {limit} bytes")
    return value


def loadOrCreateKeyFile(path, size, description, hexText=False):
    """
    A random key of C{size} bytes kept in C{path}: created (mode 0600,
    never over an existing file, synced to disk) when missing, read back
    otherwise, so that what it protects outlives a restart.

    @param description: how errors name the file, e.g. C{"auth token key"}.
    @param hexText: keep the key as one line of hex; otherwise raw bytes.
    @raise SecretFileError: the file cannot be created or written (a file
        it could not finish is removed), is unsafe (see L{readPrivateFile})
        or does not hold a key of C{size} bytes; a bad file found there is
        never replaced.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        content = readPrivateFile(path, description)
        if hexText:
            try:
                content = bytes.fromhex(content.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                content = b""
        if len(content) != size:
            form = "in hex" if hexText else "exactly"
            raise SecretFileError(f"{description} {path} does not hold {size} bytes {form}") from None
        return content
    except OSError as e:
        raise SecretFileError(f"cannot create {description} {path}: {e.strerror}") from None
    key = secrets.token_bytes(size)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key.hex().encode("ascii") + b"\n" if hexText else key)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        # A half-written key would be refused at every later start: leave none.
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise SecretFileError(f"cannot write {description} {path}: {e.strerror}") from None
    return key


def _looksLikeMissingFile(value):
    """
    Whether C{value} reads as a path to a file that is missing: it starts
    like a path and the directory it names exists. (A random literal secret
    that starts with a slash almost never names an existing directory.)
    """
    if not value.startswith(("/", "./", "../", "~/")):
        return False
    directory = os.path.dirname(os.path.expanduser(value))
    return directory not in ("", "/") and os.path.isdir(directory)


class Secret:
    """
    A secret given on the command line, either as a literal or as a file path.

    The value never appears in C{repr}, so it cannot leak through logged objects
    or tracebacks.

    @ivar path: the file the secret is read from, or L{None} for a literal.
    """

    _log = Logger()

    def __init__(self, literal=None, path=None):
        self._literal = literal
        self.path = path
        self._tagKey = secrets.token_bytes(32)

    @classmethod
    def fromOption(cls, value, optionName="--orchSecret"):
        """
        Interpret a command-line value: a path to an existing file, or a literal.

        @raise SecretFileError: the file is unsafe or empty.
        """
        if value is None or value == "":
            return None
        if os.path.isfile(value):
            secret = cls(path=value)
            secret.read()  # fail early on permissions or emptiness
            return secret
        if _looksLikeMissingFile(value):
            raise SecretFileError(
                f"{optionName} names {value}, which does not exist: create it (mode 600) or fix the path; "
                "a path is never used as the secret itself")
        return cls(literal=value)

    @property
    def isLiteral(self):
        """
        Whether the secret was given literally (and so is visible in C{ps}).
        """
        return self.path is None

    def read(self):
        """
        Return the secret as a string, re-reading its file if it has one.

        @raise SecretFileError: the file is readable by group or others, not
            a regular file, not UTF-8 text, empty or unreadable.
        """
        if self._literal is not None:
            return self._literal
        value = readPrivateFile(self.path, "secret file")
        try:
            value = value.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise SecretFileError(f"secret file {self.path} is not UTF-8 text") from None
        if not value:
            raise SecretFileError(f"secret file {self.path} is empty")
        return value

    def matches(self, candidate):
        """
        Compare C{candidate} with the secret in constant time.
        """
        if isinstance(candidate, bytes):
            candidate = candidate.decode("utf-8", "replace")
        return hmac.compare_digest(candidate.encode("utf-8"), self.read().encode("utf-8"))

    def tag(self, value):
        """
        A keyed digest of C{value} (HMAC-SHA256 under a random per-process
        key): two values have the same tag only if they are equal, and a tag
        reveals nothing of its value, so it can be kept to recognise the
        secret a transcoder registered with.
        """
        if isinstance(value, str):
            value = value.encode("utf-8", "replace")
        return hmac.new(self._tagKey, value, hashlib.sha256).digest()

    def currentTag(self):
        """
        The L{tag} of the secret as it reads now.

        @raise SecretFileError: the file cannot be used now.
        """
        return self.tag(self.read())

    def __repr__(self):
        if self.path is None:
            return "<Secret literal>"
        return f"<Secret file={self.path!r}>"
