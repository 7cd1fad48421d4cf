# -*- test-case-name: tests.test_grpc_h2 -*-
"""
gRPC's wire format over HTTP/2, apart from any connection: status codes, the
5-byte message framing, C{grpc-timeout} and the percent-encoded
C{grpc-message}. Nothing here does I/O.
"""

import enum
import re

DEFAULT_MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024
MESSAGE_PREFIX_BYTES = 5
GRPC_CONTENT_TYPE = b"application/grpc"


class StatusCode(enum.IntEnum):
    """
    The gRPC status codes, as numbered on the wire.
    """

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class GRPCError(Exception):
    """
    A call ends with this status and message: raise it (or fail a Deferred with
    it) from a method's handler to refuse deliberately. The message reaches the
    peer as it is, so it must hold nothing secret.

    @ivar code: a L{StatusCode}.
    @ivar message: the text the peer sees as the status details.
    """

    def __init__(self, code, message=""):
        super().__init__(code, message)
        self.code = StatusCode(code)
        self.message = message

    def __str__(self):
        return f"{self.code.name}: {self.message}"


def isGRPCContentType(contentType):
    """
    Whether an HTTP/2 request with this C{content-type} goes to gRPC: any value
    starting with C{application/grpc}, the rule go-livepeer's port uses.

    @param contentType: the header value as bytes, or L{None}.
    """
    return contentType is not None and contentType.lower().startswith(GRPC_CONTENT_TYPE)


def isProtobufContentType(contentType):
    """
    Whether a gRPC content type names the protobuf codec: C{application/grpc}
    alone, with C{+proto}, or with parameters.
    """
    value = contentType.lower()
    if value == GRPC_CONTENT_TYPE:
        return True
    rest = value[len(GRPC_CONTENT_TYPE):]
    return rest.startswith(b";") or rest.split(b";", 1)[0] == b"+proto"


def frameMessage(payload):
    """
    Prefix a serialized message with gRPC's uncompressed-flag byte and its
    big-endian 4-byte length.
    """
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class MessageReader:
    """
    Splits a stream of DATA payloads into gRPC messages, whatever the frame
    boundaries. A declared length over the limit is refused before any of the
    message is kept.

    @ivar maxMessageBytes: the largest message accepted.
    """

    def __init__(self, maxMessageBytes=DEFAULT_MAX_RECEIVE_MESSAGE_BYTES):
        self.maxMessageBytes = maxMessageBytes
        self._prefix = b""
        self._length = None
        self._chunks = []
        self._received = 0

    @property
    def declaredLength(self):
        """
        The length the message being received declared in its prefix, or
        L{None} between messages and while the prefix is incomplete.
        """
        return self._length

    @property
    def inMessage(self):
        """
        Whether part of a message has arrived and the rest has not.
        """
        return bool(self._prefix) or self._length is not None

    def feed(self, data):
        """
        Take the next bytes of the stream.

        @return: the messages completed by C{data}, as bytes, in order.
        @raise GRPCError: a message is compressed or larger than the limit.
        """
        messages = []
        position = 0
        end = len(data)
        while position < end:
            if self._length is None:
                wanted = MESSAGE_PREFIX_BYTES - len(self._prefix)
                self._prefix += data[position:position + wanted]
                position += min(wanted, end - position)
                if len(self._prefix) < MESSAGE_PREFIX_BYTES:
                    break
                self._startMessage(self._prefix)
                self._prefix = b""
            take = min(self._length - self._received, end - position)
            if take:
                self._chunks.append(data[position:position + take])
                self._received += take
                position += take
            if self._messageComplete():
                messages.append(b"".join(self._chunks))
                self._length = None
                self._chunks = []
                self._received = 0
        return messages

    def _messageComplete(self):
        return self._length is not None and self._received == self._length

    def _startMessage(self, prefix):
        flag = prefix[0]
        length = int.from_bytes(prefix[1:], "big")
        if flag == 1:
            raise GRPCError(StatusCode.INTERNAL, "grpc: compressed flag set with identity or empty encoding")
        if flag != 0:
            raise GRPCError(StatusCode.INTERNAL, f"grpc: received unexpected payload format {flag}")
        if length > self.maxMessageBytes:
            raise GRPCError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"grpc: received message larger than max ({length} vs. {self.maxMessageBytes})",
            )
        self._length = length


_TIMEOUT = re.compile(rb"\A([0-9]{1,8})([HMSmun])\Z")
_TIMEOUT_UNIT_SECONDS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parseTimeout(value):
    """
    Parse a C{grpc-timeout} header value (up to 8 digits and a unit: C{H},
    C{M}, C{S}, C{m}, C{u} or C{n}).

    @return: the timeout in seconds, as a float.
    @raise ValueError: the value is malformed.
    """
    match = _TIMEOUT.match(value.strip())
    if match is None:
        raise ValueError(f"malformed grpc-timeout: {value!r}")
    return int(match.group(1)) * _TIMEOUT_UNIT_SECONDS[match.group(2)]


def encodeStatusMessage(text):
    """
    Percent-encode a status message for the C{grpc-message} trailer: its UTF-8
    bytes, with C{%} and every byte outside printable ASCII written as C{%XX}.
    """
    out = bytearray()
    for byte in text.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def decodeStatusMessage(value):
    """
    Undo L{encodeStatusMessage}; a C{%} not followed by two hex digits is kept
    as it is, as the gRPC spec asks.
    """
    out = bytearray()
    index = 0
    while index < len(value):
        byte = value[index]
        if byte == 0x25 and _isHex(value[index + 1:index + 3]):
            out.append(int(value[index + 1:index + 3], 16))
            index += 3
        else:
            out.append(byte)
            index += 1
    return out.decode("utf-8", errors="replace")


def _isHex(two):
    return len(two) == 2 and all(c in b"0123456789abcdefABCDEF" for c in two)
