# -*- test-case-name: tests.test_units,tests.test_memory_link,tests.test_fuzz_transcoder_link -*-
"""
The transcoder protocol: message catalogue and framing (see docs/protocol.md).

Control messages are JSON objects in WebSocket text frames. Media travels in
binary frames laid out as::

    uint32 big-endian header length | JSON header | payload

where the header's C{sizes} list splits the payload into its parts (the source
segment for C{transcode}, one part per rendition for C{result}; one piece for
the streamed C{segmentData} and C{renditionData}).

Every JSON text a peer sends is bounded in size and nesting depth before it is
parsed (L{checkJSONBounds}), so no message can make the parser recurse deeply,
whatever the interpreter's recursion limit is.
"""

import json
import math
import re
import struct
from itertools import accumulate

SUBPROTOCOL = "livepeer-tx.v1"
RESOURCE_PATH = b"transcoder"  # mounted as /transcoder on the public port
AUTH_HEADER = "Authorization"
AUTH_VALUE = "Livepeer-Transcoder-1.0"  # go-livepeer's constant for transcoder requests
CREDENTIALS_HEADER = "Credentials"  # carries the shared secret, as in go-livepeer
CAPACITY_HEADER = "Livepeer-Capacity"

# go-livepeer's refusal words: a Go transcoder stops retrying on exactly these.
INVALID_SECRET = "invalid secret"
ZERO_CAPACITY = "zero capacity"

# The largest capacity a transcoder may announce (a 9-digit Livepeer-Capacity).
MAX_CAPACITY = 999_999_999

# Close codes (private range 4000-4999).
CLOSE_REFUSED = 4001
CLOSE_PROTOCOL_ERROR = 4002
CLOSE_SHUTDOWN = 4003
# The orchestrator's secret changed and ours is no longer valid: re-read the
# secret file and reconnect.
CLOSE_SECRET_ROTATED = 4004

# What an orchestrator can do beyond the first version of the protocol, listed
# in its C{registered} message; a transcoder sends C{drain} and C{capacity}
# only to an orchestrator that lists them (an older one would close with 4002).
FEATURE_DRAIN = "drain"
FEATURE_CAPACITY = "capacity"
# Streamed tasks: transcodeStart, segmentData, segmentEnd one way,
# renditionData and resultEnd back. A transcoder lists it in its C{register}
# message (the orchestrator streams only to one that does), and the
# orchestrator in its C{registered} message.
FEATURE_STREAM = "stream"
FEATURES = (FEATURE_DRAIN, FEATURE_CAPACITY, FEATURE_STREAM)
TRANSCODER_FEATURES = (FEATURE_STREAM,)

_HEADER_LENGTH = struct.Struct(">I")
# Limits on what a peer may send. Control messages and binary-frame headers are
# a few hundred bytes (a result header for dozens of renditions a few KiB).
MAX_CONTROL_BYTES = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_JSON_DEPTH = 16
MAX_ERROR_TEXT = 500
# The largest payload (the parts after the header) of a binary message either
# side accepts: a segment, or the renditions of one.
MAX_MEDIA_BYTES = 512 * 1024 * 1024


class ProtocolError(ValueError):
    """
    A peer sent a message that does not follow the protocol.
    """


def encodeControl(messageType, **fields):
    """
    Encode a control message for a text frame.
    """
    fields["type"] = messageType
    return json.dumps(fields, separators=(",", ":")).encode("utf-8")


_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
# After deleting every other byte: an opening bracket counts +1, a closing one
# -1 (0xff read as a signed byte).
_BRACKET_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def checkJSONBounds(text, maxBytes, maxDepth=MAX_JSON_DEPTH, what="message"):
    """
    Refuse a JSON text that is longer than C{maxBytes} or nests arrays and
    objects deeper than C{maxDepth}, without parsing it.

    The scan is linear and does not recurse: escapes are dropped, the quotes
    that remain split the text into strings and the rest, and the brackets
    outside strings are summed as a running depth. On any text that
    C{json.loads} accepts (and on the part of any other text it reads before
    failing) this is exactly the depth the parser would reach.

    @param text: the UTF-8 JSON text, as L{bytes}.
    @raise ProtocolError: it is too long or too deep.
    """
    if len(text) > maxBytes:
        raise ProtocolError(f"{what} of {len(text)} bytes is over the {maxBytes}-byte limit")
    outside = b"".join(_ESCAPE.sub(b"", bytes(text)).split(b'"')[0::2])
    steps = memoryview(outside.translate(_BRACKET_STEP, _NOT_BRACKET)).cast("b")
    depth = max(accumulate(steps), default=0)
    if depth > maxDepth:
        raise ProtocolError(f"{what} nests deeper than {maxDepth} levels")


def _refuseConstant(name):
    raise ValueError(f"{name} is not a JSON number")


def _finiteFloat(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} overflows a float")
    return value


def decodeControl(payload, maxBytes=MAX_CONTROL_BYTES, what="control message"):
    """
    Decode a text-frame control message (or a binary frame's header).

    @param maxBytes: the longest text accepted.
    @raise ProtocolError: it is too long or too deep, or not a JSON object
        with a string C{type}.
    """
    checkJSONBounds(payload, maxBytes, what=what)
    try:
        message = json.loads(bytes(payload).decode("utf-8"), parse_constant=_refuseConstant,
                             parse_float=_finiteFloat)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"{what} is not JSON: {e}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("control message must be a JSON object with a string 'type'")
    return message


def encodeMedia(header, parts):
    """
    Encode a binary frame: C{header} (a dict with a C{type}) and payload parts.
    """
    header = dict(header, sizes=[len(part) for part in parts])
    headerBytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return b"".join([_HEADER_LENGTH.pack(len(headerBytes)), headerBytes, *parts])


def mediaMessageLimit(payloadBytes):
    """
    The WebSocket message size limit for binary messages carrying up to
    C{payloadBytes} of parts (never more than L{MAX_MEDIA_BYTES}).
    """
    return _HEADER_LENGTH.size + MAX_HEADER_BYTES + min(payloadBytes, MAX_MEDIA_BYTES)


def decodeMedia(payload):
    """
    Decode a binary frame into C{(header, parts)}.

    @raise ProtocolError: the framing is inconsistent.
    """
    if len(payload) < _HEADER_LENGTH.size:
        raise ProtocolError("binary frame shorter than its header length")
    (headerLength,) = _HEADER_LENGTH.unpack_from(payload)
    if headerLength > MAX_HEADER_BYTES or _HEADER_LENGTH.size + headerLength > len(payload):
        raise ProtocolError("binary frame header length out of range")
    start = _HEADER_LENGTH.size
    header = decodeControl(payload[start : start + headerLength], MAX_HEADER_BYTES, "binary frame header")
    sizes = header.get("sizes")
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 0 for s in sizes):
        raise ProtocolError("binary frame header needs a 'sizes' list of lengths")
    offset = start + headerLength
    if offset + sum(sizes) != len(payload):
        raise ProtocolError("binary frame sizes do not add up to its payload")
    view = memoryview(payload)
    parts = []
    for size in sizes:
        parts.append(bytes(view[offset : offset + size]))
        offset += size
    return header, parts


# A path starts a word (or follows a quote, bracket, '=' or ','): "/x", "~/x", "./x", "../x".
_PATH = re.compile(r"(?:^|(?<=[\s'\"(\[=,;]))(?:~|\.{1,2})?/[^\s'\"()\[\],;:]+")
# C0 and C1 controls, line and paragraph separators, bidirectional overrides.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028-\u202e\u2066-\u2069]+")


def dispatchMessage(target, payload, isBinary, expected=None):
    """
    Decode one WebSocket message (a media frame when binary, else a control
    message) and call C{target.handle_<type>(header, parts)}.

    @param expected: the only type accepted now, or L{None} for any.
    @raise ProtocolError: the message cannot be decoded, is not the
        expected type, or has a type C{target} does not handle (or what the
        handler raises).
    """
    if isBinary:
        header, parts = decodeMedia(payload)
    else:
        header, parts = decodeControl(payload), []
    kind = header["type"]
    if expected is not None and kind != expected:
        raise ProtocolError(f"expected {expected!r}, got {kind!r}")
    handler = getattr(target, "handle_" + kind, None)
    if handler is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    handler(header, parts)


def cleanErrorText(text, default="transcoding failed", maxLength=MAX_ERROR_TEXT):
    """
    An error text fit to travel to the other side and on to a gateway:
    filesystem paths replaced by C{<path>}, control characters (newlines
    included) collapsed to one space, at most C{maxLength} characters.

    @param text: the text, or anything else (then C{default} is used).
    """
    if not isinstance(text, str) or not text.strip():
        return default
    text = _CONTROL_CHARACTERS.sub(" ", text[: maxLength * 4])
    text = _PATH.sub("<path>", text).strip()
    if len(text) > maxLength:
        text = text[: maxLength - 3].rstrip() + "..."
    return text or default


class MessageLimits:
    """
    Mixin for autobahn protocols: a text message may be at most
    L{MAX_CONTROL_BYTES} long (binary ones keep the factory's
    C{maxMessagePayloadSize}); autobahn fails a longer one with close code
    1009 as soon as a frame header announces it. The fragments of an
    unfinished message are dropped when the connection ends, so a peer that
    goes away mid-message leaves nothing behind.
    """

    def onMessageFrameBegin(self, length):
        """
        Count the frame towards its message, and refuse a text message that
        grows past the control-message limit.
        """
        super().onMessageFrameBegin(length)
        if not self.message_is_binary and not self.failedByMe and self.message_data_total_length > MAX_CONTROL_BYTES:
            self.wasMaxMessagePayloadSizeExceeded = True
            self._max_message_size_exceeded(
                self.message_data_total_length, MAX_CONTROL_BYTES,
                f"text message over the {MAX_CONTROL_BYTES}-byte limit")

    def connectionLost(self, reason):
        """
        Let autobahn report the close, then drop what was being received.
        """
        try:
            super().connectionLost(reason)
        finally:
            self.dropMessageBuffers()

    def dropMessageBuffers(self):
        """
        Forget the data of a message still being received.
        """
        self.message_data = None
        self.frame_data = None
        self.message_data_total_length = 0
        self.data = b""
