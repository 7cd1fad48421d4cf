"""
The transcoder protocol: message catalogue and framing (see docs/protocol.md).

Control messages are JSON objects in WebSocket text frames. Media travels in
binary frames laid out as::

    uint32 big-endian header length | JSON header | payload

where the header's C{sizes} list splits the payload into its parts (the source
segment for C{transcode}, one part per rendition for C{result}).
"""

import json
import struct

SUBPROTOCOL = "livepeer-tx.v1"
RESOURCE_PATH = b"transcoder"  # mounted as /transcoder on the public port
AUTH_HEADER = "Authorization"
AUTH_VALUE = "Livepeer-Transcoder-1.0"  # go-livepeer's constant for transcoder requests
CREDENTIALS_HEADER = "Credentials"  # carries the shared secret, as in go-livepeer
CAPACITY_HEADER = "Livepeer-Capacity"

# go-livepeer's refusal words: a Go transcoder stops retrying on exactly these.
INVALID_SECRET = "invalid secret"
ZERO_CAPACITY = "zero capacity"

# Close codes (private range 4000-4999).
CLOSE_REFUSED = 4001
CLOSE_PROTOCOL_ERROR = 4002
CLOSE_SHUTDOWN = 4003

_HEADER_LENGTH = struct.Struct(">I")
MAX_HEADER_BYTES = 256 * 1024


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


def decodeControl(payload):
    """
    Decode a text-frame control message.

    @raise ProtocolError: it is not a JSON object with a string C{type}.
    """
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"control message is not JSON: {e}") from None
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
    header = decodeControl(bytes(payload[start : start + headerLength]))
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
