# -*- test-case-name: tests.test_ffmpeg,tests.test_ingress,tests.test_push,tests.test_grpc_transcoders -*-
"""
Video profiles (renditions) with go-livepeer's semantics.

A L{Profile} is what one rendition must look like. It travels as a protobuf
C{VideoProfile} between gateway and orchestrator and as a plain dict in our
transcoder protocol.
"""

import re
from dataclasses import asdict, dataclass

from livepeer_tx.proto import lp_rpc_pb2 as pb


# go-livepeer's common.HTTPTimeout: the floor of the per-segment deadline.
MIN_SEGMENT_TIMEOUT = 8.0
# A duration of 0 means "2 s" to go-livepeer receivers.
DEFAULT_DURATION_MS = 2000


def segmentTimeout(durationMs):
    """
    go-livepeer's deadline for a whole segment exchange: max(8 s, 4 x
    duration), a missing duration counting as L{DEFAULT_DURATION_MS}.
    """
    seconds = (durationMs or DEFAULT_DURATION_MS) / 1000.0
    return max(MIN_SEGMENT_TIMEOUT, 4 * seconds)


class ProfileError(ValueError):
    """
    A profile cannot be honoured; the message is go-livepeer's error text.
    """


FORMAT_EXTENSIONS = {"mpegts": ".ts", "mp4": ".mp4"}
FORMAT_MIME = {"mpegts": "video/mp2t", "mp4": "video/mp4"}
_FORMATS = {pb.VideoProfile.MPEGTS: "mpegts", pb.VideoProfile.MP4: "mp4"}
_ENCODER_PROFILES = {
    pb.VideoProfile.ENCODER_DEFAULT: "",
    pb.VideoProfile.H264_BASELINE: "baseline",
    pb.VideoProfile.H264_MAIN: "main",
    pb.VideoProfile.H264_HIGH: "high",
    pb.VideoProfile.H264_CONSTRAINED_HIGH: "constrained_high",
}

# H.264 encoder limits used by LPMS.
MIN_WIDTH, MIN_HEIGHT, MAX_SIDE = 146, 50, 4096

# Bounds of our own (go-livepeer has none): every preset and every real ladder
# fits; a segment that asks for more is refused before any work starts.
MAX_PROFILES = 12
MAX_PROFILE_PIXELS = 4096 * 2304
MAX_SEGMENT_PIXELS = 2 * MAX_PROFILE_PIXELS
MAX_FRAME_RATE = 240
MAX_FPS_DENOMINATOR = 65535
MIN_BITRATE, MAX_BITRATE = 1_000, 100_000_000
GOP_INTRA_ONLY, MAX_GOP_MS = -1, 60_000
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")


@dataclass(frozen=True)
class Profile:
    """
    One rendition: size bound, bitrate (bits/s), frame rate (0 = keep the
    input's), container format and H.264 profile.
    """

    name: str
    width: int
    height: int
    bitrate: int
    fps: int = 0
    fpsDen: int = 1
    format: str = "mpegts"
    encoderProfile: str = ""
    gop: int = 0

    @property
    def extension(self):
        """
        The file extension of this profile's container.
        """
        return FORMAT_EXTENSIONS[self.format]

    @property
    def mimeType(self):
        """
        The MIME type of this profile's container.
        """
        return FORMAT_MIME[self.format]

    def toDict(self):
        """
        The profile as a JSON-compatible dict (our transcoder protocol).
        """
        return asdict(self)

    @classmethod
    def fromDict(cls, data):
        """
        Build a profile from L{toDict} output, validating types.

        @raise ProfileError: a field is missing or has the wrong type.
        """
        try:
            profile = cls(
                name=str(data["name"]),
                width=int(data["width"]),
                height=int(data["height"]),
                bitrate=int(data["bitrate"]),
                fps=int(data.get("fps", 0)),
                fpsDen=int(data.get("fpsDen", 1)) or 1,
                format=str(data.get("format", "mpegts")),
                encoderProfile=str(data.get("encoderProfile", "")),
                gop=int(data.get("gop", 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise ProfileError(f"invalid profile: {e}") from None
        profile.validate()
        return profile

    def validate(self):
        """
        Check the profile can be encoded.

        @raise ProfileError: it cannot.
        """
        if self.format not in FORMAT_EXTENSIONS:
            raise ProfileError("unrecognized profile output format")
        if self.encoderProfile not in _ENCODER_PROFILES.values():
            raise ProfileError("unrecognized encoder profile")
        if not _PROFILE_NAME.match(self.name):
            raise ProfileError(
                f"invalid profile name {self.name[:64]!r}: 1 to 64 letters, digits, '_', '.', '+' or '-'")
        if (self.width <= 0 or self.height <= 0 or max(self.width, self.height) > MAX_SIDE
                or self.width * self.height > MAX_PROFILE_PIXELS):
            raise ProfileError(
                f"invalid profile resolution {self.width}x{self.height}: at most {MAX_SIDE} a side "
                f"and {MAX_PROFILE_PIXELS} pixels")
        if not MIN_BITRATE <= self.bitrate <= MAX_BITRATE:
            raise ProfileError(
                f"invalid profile bitrate {self.bitrate}: from {MIN_BITRATE} to {MAX_BITRATE} bits/s")
        if (self.fps < 0 or not 0 < self.fpsDen <= MAX_FPS_DENOMINATOR
                or (self.fps and not 1 <= self.fps / self.fpsDen <= MAX_FRAME_RATE)):
            raise ProfileError(
                f"invalid profile frame rate {self.fps}/{self.fpsDen}: 0 (keep the input's) "
                f"or 1 to {MAX_FRAME_RATE} frames/s")
        if self.gop != GOP_INTRA_ONLY and not 0 <= self.gop <= MAX_GOP_MS:
            raise ProfileError(
                f"invalid profile GOP {self.gop}: -1 (intra only), 0 (default) or up to {MAX_GOP_MS} ms")

    @classmethod
    def fromProto(cls, message):
        """
        Build a profile from a go-livepeer C{VideoProfile} message.

        @raise ProfileError: with go-livepeer's wording for unsupported fields.
        """
        if message.format not in _FORMATS:
            raise ProfileError("unrecognized profile output format")
        if message.profile not in _ENCODER_PROFILES:
            raise ProfileError("unrecognized encoder profile")
        if message.encoder != pb.VideoProfile.H264:
            raise ProfileError("unrecognized video codec")
        name = message.name or f"net_{message.width}x{message.height}_{message.bitrate}"
        profile = cls(
            name=name,
            width=message.width,
            height=message.height,
            bitrate=message.bitrate,
            fps=message.fps,
            fpsDen=message.fpsDen or 1,
            format=_FORMATS[message.format],
            encoderProfile=_ENCODER_PROFILES[message.profile],
            gop=message.gop,
        )
        profile.validate()
        return profile

    def toProto(self):
        """
        The profile as a go-livepeer C{VideoProfile} message.
        """
        formats = {v: k for k, v in _FORMATS.items()}
        encoderProfiles = {v: k for k, v in _ENCODER_PROFILES.items()}
        return pb.VideoProfile(
            name=self.name,
            width=self.width,
            height=self.height,
            bitrate=self.bitrate,
            fps=self.fps,
            fpsDen=self.fpsDen,
            format=formats[self.format],
            profile=encoderProfiles[self.encoderProfile],
            gop=self.gop,
        )

    def outputSize(self, inputWidth, inputHeight):
        """
        The size this profile encodes an input of the given size to.

        The input's aspect ratio is kept and the result fits inside the
        profile's box, oriented like the input (a portrait input gets a portrait
        box); both sides are even and within the H.264 limits.
        """
        boxW, boxH = self.width, self.height
        if (inputHeight > inputWidth) != (boxH > boxW):
            boxW, boxH = boxH, boxW
        scale = min(boxW / inputWidth, boxH / inputHeight)
        width = max(MIN_WIDTH, min(MAX_SIDE, _even(inputWidth * scale)))
        height = max(MIN_HEIGHT, min(MAX_SIDE, _even(inputHeight * scale)))
        return width, height


def _even(value):
    return max(2, int(round(value / 2.0)) * 2)


PRESETS = {
    p.name: p
    for p in [
        Profile("P720p60fps16x9", 1280, 720, 6_000_000, 60),
        Profile("P720p30fps16x9", 1280, 720, 4_000_000, 30),
        Profile("P720p25fps16x9", 1280, 720, 3_500_000, 25),
        Profile("P720p30fps4x3", 960, 720, 3_500_000, 30),
        Profile("P576p30fps16x9", 1024, 576, 1_500_000, 30),
        Profile("P576p25fps16x9", 1024, 576, 1_500_000, 25),
        Profile("P360p30fps16x9", 640, 360, 1_200_000, 30),
        Profile("P360p25fps16x9", 640, 360, 1_000_000, 25),
        Profile("P360p30fps4x3", 480, 360, 1_000_000, 30),
        Profile("P240p30fps16x9", 426, 240, 600_000, 30),
        Profile("P240p25fps16x9", 426, 240, 600_000, 25),
        Profile("P240p30fps4x3", 320, 240, 600_000, 30),
        Profile("P144p30fps16x9", 256, 144, 400_000, 30),
    ]
}


def parsePresetList(text):
    """
    Parse a comma list of preset names, like go-livepeer's C{-transcodingOptions}.

    @raise ProfileError: a name is not a known preset.
    """
    profiles = []
    for name in filter(None, (part.strip() for part in text.split(","))):
        if name not in PRESETS:
            raise ProfileError(f"unknown profile {name!r}; known: {', '.join(sorted(PRESETS))}")
        profiles.append(PRESETS[name])
    return profiles


#: What go-livepeer puts in C{SegData}'s deprecated C{profiles} field, to break
#: transcoders too old to read the full profiles.
LEGACY_PROFILES = b"invalid"


def addProfilesToSegData(segData, profiles):
    """
    Put C{profiles} in the C{SegData} field go-livepeer writes them to:
    C{fullProfiles} for MPEG-TS outputs at integer frame rates with the
    default codec profile and GOP, C{fullProfiles2} for the same with some
    MP4 output, C{fullProfiles3} for anything else (the reverse of
    L{profilesFromSegData}).
    """
    if any(p.fpsDen > 1 or p.encoderProfile or p.gop for p in profiles):
        field = segData.fullProfiles3
    elif any(p.format == "mp4" for p in profiles):
        field = segData.fullProfiles2
    else:
        field = segData.fullProfiles
    field.extend(p.toProto() for p in profiles)


def profilesFromSegData(segData):
    """
    The profiles a C{SegData} asks for: the first non-empty of C{fullProfiles3},
    C{fullProfiles2} and C{fullProfiles}, as go-livepeer reads them.

    @raise ProfileError: a profile is unsupported.
    """
    for field in (segData.fullProfiles3, segData.fullProfiles2, segData.fullProfiles):
        if len(field):
            if len(field) > MAX_PROFILES:
                raise ProfileError(f"too many profiles: {len(field)} (at most {MAX_PROFILES})")
            profiles = [Profile.fromProto(message) for message in field]
            validateLadder(profiles)
            return profiles
    return []


def validateLadder(profiles):
    """
    Check the profiles of one segment together: a bounded number, distinct
    names (each names a rendition URL) and a bounded total size.

    @raise ProfileError: they cannot be honoured together.
    """
    if len(profiles) > MAX_PROFILES:
        raise ProfileError(f"too many profiles: {len(profiles)} (at most {MAX_PROFILES})")
    names = set()
    for profile in profiles:
        if profile.name in names:
            raise ProfileError(f"duplicate profile name {profile.name!r}")
        names.add(profile.name)
    pixels = sum(p.width * p.height for p in profiles)
    if pixels > MAX_SEGMENT_PIXELS:
        raise ProfileError(
            f"profiles too large together: {pixels} pixels a frame (at most {MAX_SEGMENT_PIXELS})")
