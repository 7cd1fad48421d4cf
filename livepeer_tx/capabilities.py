# -*- test-case-name: tests.test_orchservice -*-
"""
go-livepeer's transcoding capabilities: their ids, the default set, the
bitstring layout, per-capability capacities, the C{version} check and the
compatibility of a job with what a node offers (golivepeer-wire.md, 1.3).

A capability set is a C{{capability id: capacity}} dict here; it travels as
a C{Capabilities} message (C{bitstring}: bit i of word i/64 set for
capability i; C{capacities}: the map; C{version}: a semver text) or, from our
WebSocket transcoders, as a JSON object with the same fields.
"""

import re

from livepeer_tx import __version__
from livepeer_tx.proto import lp_rpc_pb2 as pb

H264 = 0
MPEGTS = 1
MP4 = 2
FRACTIONAL_FRAMERATES = 3
STORAGE_DIRECT = 4
STORAGE_S3 = 5
STORAGE_GCS = 6
H264_BASELINE = 7
H264_MAIN = 8
H264_HIGH = 9
H264_CONSTRAINED_HIGH = 10
GOP = 11
AUTH_TOKEN = 12
MPEG7_SIGNATURE = 14
SEGMENT_SLICING = 26

# go-livepeer's default set: what every node is assumed to do, and what a
# transcoder that reports nothing is taken to do.
DEFAULT_CAPABILITIES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 26)

# Default capabilities the orchestrator does not advertise while its segment
# path does not honour them: C{calc_perceptual_hash} (14) and
# C{segment_parameters} (26). A job that needs one is refused with
# L{INCOMPATIBLE_CAPABILITIES} instead of being transcoded without it.
NOT_HONOURED = frozenset({MPEG7_SIGNATURE, SEGMENT_SLICING})

INCOMPATIBLE_CAPABILITIES = "incompatible capabilities"

# Bounds on what a peer may report: go-livepeer knows 38 capabilities.
MAX_BITSTRING_WORDS = 64
MAX_CAPACITY_ENTRIES = 1024
_UINT32 = 2**32
_UINT64 = 2**64

# Lenient semver, as go-livepeer parses it: an optional "v", one to three
# numbers, an optional pre-release and build.
_SEMVER = re.compile(r"\Av?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?\Z")


class IncompatibleCapabilities(Exception):
    """
    A job needs something the node does not offer; the message is
    go-livepeer's C{incompatible capabilities}.
    """

    def __init__(self):
        super().__init__(INCOMPATIBLE_CAPABILITIES)
        self.message = INCOMPATIBLE_CAPABILITIES


def capabilityBitstring(capabilities=DEFAULT_CAPABILITIES):
    """
    go-livepeer's bitstring of a set of capability ids: bit i of word i/64 set
    for capability i, as few words as hold the largest id (none when empty).
    """
    capabilities = list(capabilities)
    if not capabilities:
        return []
    words = [0] * (max(capabilities) // 64 + 1)
    for capability in capabilities:
        words[capability // 64] |= 1 << (capability % 64)
    return words


def capabilitiesOf(bitstring):
    """
    The capability ids set in a bitstring (the low 64 bits of each word).
    """
    ids = []
    for index, word in enumerate(bitstring):
        # Only the set bits are visited: a word may have all 64 set.
        word &= _UINT64 - 1
        while word:
            lowest = word & -word
            ids.append(index * 64 + lowest.bit_length() - 1)
            word ^= lowest
    return frozenset(ids)


def parseReport(report):
    """
    The capabilities a transcoder reported at registration, as a
    C{{capability: capacity}} dict, read as go-livepeer does: the
    C{capacities} map when there is one, else capacity 1 for each capability
    of the bitstring; the default set when nothing was reported (a legacy
    transcoder). Registration parses each report once, refuses the
    transcoder when this raises, and keeps the result as the C{capabilities}
    of its L{livepeer_tx.orchestrator.routing.RemoteTranscoder}.

    @param report: a C{Capabilities} message (gRPC transcoders), a dict with
        C{bitstring} and optionally C{capacities} (our WebSocket transcoders'
        C{register} message; keys may be text), or L{None} / an empty dict.
    @raise ValueError: the report is malformed or too large; the message
        says which field and why.
    """
    if report is None or (isinstance(report, dict) and not report):
        return dict.fromkeys(DEFAULT_CAPABILITIES, 1)
    if isinstance(report, pb.Capabilities):
        # Mandatories are not kept (go-livepeer ignores a transcoder's), but
        # an absurd list of them is as malformed as an absurd bitstring.
        if len(report.mandatories) > MAX_BITSTRING_WORDS:
            raise ValueError(f"mandatories must be a list of at most {MAX_BITSTRING_WORDS} words")
        bitstring, capacities = list(report.bitstring), dict(report.capacities)
    elif isinstance(report, dict):
        bitstring, capacities = report.get("bitstring", []), report.get("capacities", {})
    else:
        raise ValueError(f"capabilities must be an object, not {type(report).__name__}")
    if not isinstance(bitstring, list) or len(bitstring) > MAX_BITSTRING_WORDS:
        raise ValueError(f"bitstring must be a list of at most {MAX_BITSTRING_WORDS} words")
    if any(type(word) is not int or not 0 <= word < _UINT64 for word in bitstring):
        raise ValueError("bitstring words must be unsigned 64-bit integers")
    if not isinstance(capacities, dict) or len(capacities) > MAX_CAPACITY_ENTRIES:
        raise ValueError(f"capacities must be a map of at most {MAX_CAPACITY_ENTRIES} entries")
    if not capacities:
        return dict.fromkeys(capabilitiesOf(bitstring), 1)
    parsed = {}
    for key, value in capacities.items():
        try:
            capability = int(key)
        except (TypeError, ValueError):
            # At most 32 characters of the key: the message reaches logs and the peer.
            raise ValueError(f"capacities key {str(key)[:32]!r} is not a capability id") from None
        if not 0 <= capability < _UINT32 or type(value) is not int or not 0 <= value < _UINT32:
            raise ValueError("capacities must map unsigned 32-bit ids to unsigned 32-bit capacities")
        parsed[capability] = value
    return parsed


def orchestratorCapabilities(reports, version=__version__, withheld=NOT_HONOURED):
    """
    What the orchestrator advertises in C{OrchestratorInfo.capabilities}, as
    go-livepeer computes it: its own default set at capacity 1 each, plus
    the capacities every connected transcoder reported, less the capabilities
    in C{withheld}.

    @param reports: the transcoders' parsed reports, C{{capability:
        capacity}} dicts as L{parseReport} returns them, e.g.
        C{[t.capabilities for t in pool.transcoders]} (parsed, and the
        malformed ones refused, at registration).
    @param version: our semver version.
    @param withheld: capability ids never advertised (L{NOT_HONOURED} until
        the segment path honours them).
    @return: a C{Capabilities} message.
    """
    capacities = dict.fromkeys(DEFAULT_CAPABILITIES, 1)
    for reported in reports:
        for capability, capacity in reported.items():
            capacities[capability] = capacities.get(capability, 0) + capacity
    for capability in withheld:
        capacities.pop(capability, None)
    message = pb.Capabilities(
        bitstring=capabilityBitstring(c for c, capacity in capacities.items() if capacity > 0),
        capacities={c: min(capacity, _UINT32 - 1) for c, capacity in capacities.items() if capacity > 0},
        version=version,
    )
    # go-livepeer always sends its (here empty) constraints.
    message.constraints.SetInParent()
    return message


def parseVersion(text):
    """
    C{(major, minor, patch)} of a semver text, its pre-release and build
    ignored as go-livepeer ignores them; L{None} when it does not parse.
    """
    match = _SEMVER.match(text or "")
    if match is None:
        return None
    return tuple(int(part or 0) for part in match.groups())


def versionAtLeast(version, minVersion):
    """
    go-livepeer's version constraint: any version meets an empty minimum (or
    one that does not parse); an empty, C{undefined} or unparsable version
    meets no other.
    """
    if not minVersion:
        return True
    if not version or version == "undefined":
        return False
    minimum = parseVersion(minVersion)
    if minimum is None:
        return True
    actual = parseVersion(version)
    return actual is not None and actual >= minimum


def _bitstringWithin(needed, offered):
    # go-livepeer: a longer bitstring is never within a shorter one.
    if len(needed) > len(offered):
        return False
    return all(word & have == word for word, have in zip(needed, offered))


def isCompatible(job, offered):
    """
    Whether a node offering C{offered} can take a job needing C{job}, by
    go-livepeer's rule: the job's minimum version is met, the node's
    mandatory capabilities are all in the job's bitstring, and the job's
    bitstring is within the node's. (Per-capability constraints concern AI
    models only; with none offered, go-livepeer assumes compatibility.)

    @param job: the job's C{Capabilities} (C{SegData.capabilities}), or
        L{None} when it carries none (then it needs nothing).
    @param offered: the node's C{Capabilities}.
    """
    if job is None:
        job = pb.Capabilities()
    if not versionAtLeast(offered.version, job.constraints.minVersion):
        return False
    if not _bitstringWithin(list(offered.mandatories), list(job.bitstring)):
        return False
    return _bitstringWithin(list(job.bitstring), list(offered.bitstring))


def checkCompatible(job, offered):
    """
    L{isCompatible}, raising instead of answering C{False}.

    @raise IncompatibleCapabilities: the job needs what is not offered.
    """
    if not isCompatible(job, offered):
        raise IncompatibleCapabilities()
