# -*- test-case-name: tests.test_gpucheck -*-
"""
The transcoder's start-up test, like go-livepeer's
C{TestTranscoderCapabilities}: before connecting to an orchestrator, transcode
a short clip that ships with the package through the very code path real
segments take, on the CPU or on every NVIDIA GPU to be used, and refuse to
start with a clear cause if that fails.
"""

import re
from importlib import resources

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.procutils import which

from livepeer_tx.processes import runProcess
from livepeer_tx.profiles import Profile
from livepeer_tx.transcoder.ffmpeg import TranscodeError

__all__ = [
    "GPUCheckError",
    "checkDevices",
    "TEST_CLIP_SIZE",
    "loadTestClip",
    "classifyFFmpegError",
    "listNvidiaDevices",
    "TEST_PROFILE",
    "GPU_TEST_RENDITIONS",
]

_log = Logger()

# go-livepeer's H.264 test output: the smallest H.264 size LPMS accepts.
TEST_PROFILE = Profile("startup-test", 146, 146, 1_000_000)
# Renditions per GPU in the test, as go-livepeer (it needs 4 NVENC sessions).
GPU_TEST_RENDITIONS = 4

NO_SUCH_DEVICE = "no such device"
NO_NVENC = "no NVENC on this GPU"
DRIVER_TOO_OLD = "NVIDIA driver too old for this FFmpeg's NVENC"
SESSION_LIMIT = "NVENC session limit reached"

# (pattern, cause); the first match wins, so specific patterns come first.
_CAUSES = [
    (
        r"does not support the required nvenc API version|minimum required Nvidia driver for nvenc",
        DRIVER_TOO_OLD
        + ": the driver does not support the NVENC API version this FFmpeg needs; "
        "upgrade the NVIDIA driver or use an FFmpeg built for an older NVENC API",
    ),
    (
        r"OpenEncodeSessionEx failed: out of memory|OpenEncodeSessionEx failed: incompatible client key"
        r"|Cannot allocate memory|maximum number of simultaneous NVENC",
        SESSION_LIMIT
        + ": the consumer-GPU NVENC session limit is reached (each rendition is one encoding "
        "session); use fewer renditions or concurrent streams, or a GPU without the driver's limit",
    ),
    (
        r"No capable devices found|No NVENC capable devices found|OpenEncodeSessionEx failed: unsupported device"
        r"|Cannot load libnvidia-encode|nvenc.*(?:not supported|unsupported)",
        NO_NVENC
        + ": this GPU has no NVENC video encoder (data-centre GPUs such as H100/H200 have none) "
        "or the driver's encode library is missing",
    ),
    (
        r"CUDA_ERROR_OUT_OF_MEMORY",
        "GPU out of memory: CUDA could not allocate memory on the device",
    ),
    (
        r"Cannot load libcuda|Could not dynamically load CUDA|no CUDA-capable device|CUDA_ERROR_NO_DEVICE"
        r"|CUDA_ERROR_INVALID_DEVICE|invalid device ordinal|Invalid device|Device creation failed"
        r"|No device available for decoder",
        NO_SUCH_DEVICE
        + ": CUDA cannot open this GPU (no NVIDIA driver/libcuda, no CUDA-capable device, "
        "or the device index does not exist)",
    ),
    (
        r"Unknown encoder 'h264_nvenc'|Encoder h264_nvenc not found|No such filter: 'scale_cuda'",
        "this FFmpeg was built without NVIDIA support (h264_nvenc/scale_cuda missing)",
    ),
    (
        r"Unknown encoder 'libx264'|Encoder libx264 not found",
        "this FFmpeg was built without libx264",
    ),
    (
        r"Invalid data found when processing input",
        "FFmpeg could not read the input (not a media file FFmpeg understands)",
    ),
]
_COMPILED = [(re.compile(pattern, re.IGNORECASE), cause) for pattern, cause in _CAUSES]


class GPUCheckError(Exception):
    """
    The start-up test failed; the message names the device(s) and the cause.
    """


def classifyFFmpegError(stderrText):
    """
    Map FFmpeg's log of a failed run to an operator-readable cause.

    @return: the cause; for an unknown failure, FFmpeg's last error line.
    """
    for pattern, cause in _COMPILED:
        if pattern.search(stderrText):
            return cause
    lines = [line.strip() for line in stderrText.splitlines() if line.strip()]
    errorLines = [line for line in lines if re.search(r"\[(?:error|fatal|panic)\]|error|failed", line, re.I)]
    last = (errorLines or lines or ["FFmpeg logged nothing"])[-1]
    return f"FFmpeg failed: {last}"


TOOL_TIMEOUT = 30.0


def runWithTimeout(reactor, executable, args, timeout, what):
    """
    Run a helper program to completion, killing it after C{timeout} seconds
    (a hung driver must not hang the transcoder's start-up forever).

    @return: a L{Deferred} firing with C{(stdout, stderr, exitCode)}, or
        failing with L{GPUCheckError} naming C{what} on timeout.
    """

    def done(result):
        if result.timedOut:
            raise GPUCheckError(f"{what} did not finish within {timeout:g} s (a hung driver or GPU?)")
        return result.out, result.err, result.exitCode

    return runProcess(reactor, executable, args, timeout=timeout).addCallback(done)


#: Width and height of the start-up clip's video.
TEST_CLIP_SIZE = (144, 144)


def loadTestClip():
    """
    The start-up test's clip, like go-livepeer's embedded one: 0.4 s of
    144x144 C{testsrc} at 25 fps (10 frames), H.264 (libx264, yuv420p) with
    an AAC tone, in MPEG-TS (9 KB). It was made with::

        ffmpeg -f lavfi -i testsrc=size=144x144:rate=25:duration=0.4
            -f lavfi -i sine=frequency=440:sample_rate=44100:duration=0.4
            -c:v libx264 -preset veryfast -pix_fmt yuv420p -g 10
            -c:a aac -b:a 32k -fflags +bitexact -f mpegts startup-test.ts

    Shipping it saves an FFmpeg run at every start and keeps the test from
    depending on FFmpeg's test sources and AAC encoder.

    @return: the clip's bytes.
    """
    return resources.files(__package__).joinpath("startup-test.ts").read_bytes()


def _sessionLimitHint(transcoder, clip, device):
    """
    After a multi-rendition failure: if one rendition works, the failure was
    the per-GPU NVENC session limit (go-livepeer retries likewise).
    """
    d = transcoder.transcode(clip, [TEST_PROFILE], device=device)
    d.addCallbacks(lambda _: True, lambda _: False)
    return d


@defer.inlineCallbacks
def _checkOne(transcoder, clip, device):
    renditions = 1 if device is None else GPU_TEST_RENDITIONS
    where = "CPU (libx264)" if device is None else f"GPU {device}"
    try:
        result = yield transcoder.transcode(clip, [TEST_PROFILE] * renditions, device=device)
    except TranscodeError as e:
        cause = classifyFFmpegError(e.stderr or str(e))
        known = (SESSION_LIMIT, NO_SUCH_DEVICE, NO_NVENC, DRIVER_TOO_OLD)
        if device is not None and not cause.startswith(known):
            if (yield _sessionLimitHint(transcoder, clip, device)):
                cause = (
                    f"{SESSION_LIMIT}: one rendition works but {renditions} at once fail; "
                    "the consumer-GPU NVENC session limit is reached"
                )
        return f"{where}: {cause}"
    if result.decodedPixels <= 0 or not result.renditions or not all(r.data for r in result.renditions):
        return f"{where}: empty result when transcoding the test clip"
    _log.info(
        "Start-up test passed on {where}: {n} rendition(s) in {seconds:.2f}s",
        where=where,
        n=len(result.renditions),
        seconds=result.seconds,
    )
    return None


@defer.inlineCallbacks
def checkDevices(transcoder, devices, testClip):
    """
    Run the start-up test through C{transcoder}: with C{devices} L{None}, one
    small libx264 rendition; otherwise, on each listed GPU in turn,
    L{GPU_TEST_RENDITIONS} renditions decoded, scaled and encoded on the GPU.

    @param transcoder: the L{FFmpegTranscoder} real work will use.
    @param devices: GPU indices, or L{None} for the CPU.
    @param testClip: the clip to transcode (see L{loadTestClip}).
    @return: a L{Deferred} firing with the devices that passed (all of them;
        C{[]} for the CPU), or failing with L{GPUCheckError} naming every
        failed device and its cause.
    """
    failures = []
    if devices is None:
        failure = yield _checkOne(transcoder, testClip, None)
        if failure:
            failures.append(failure)
        checked = []
    else:
        if not devices:
            raise GPUCheckError("no GPU devices to test")
        checked = list(devices)
        for device in checked:
            failure = yield _checkOne(transcoder, testClip, device)
            if failure:
                failures.append(failure)
    if failures:
        raise GPUCheckError("start-up transcoding test failed: " + "; ".join(failures))
    return checked


_GPU_LINE = re.compile(r"^GPU (\d+): ")


def listNvidiaDevices(reactor):
    """
    The indices of the NVIDIA GPUs here, from C{nvidia-smi -L} (for
    C{--nvidia all}).

    @return: a L{Deferred} firing with e.g. C{["0", "1"]}, or failing with
        L{GPUCheckError} if nvidia-smi is missing, fails or lists no GPU.
    """
    found = which("nvidia-smi")
    if not found:
        return defer.fail(GPUCheckError("nvidia-smi not found: no NVIDIA driver installed, so no GPU to use"))
    d = runWithTimeout(reactor, found[0], ["-L"], TOOL_TIMEOUT, "nvidia-smi -L")

    def parse(result):
        out, err, code = result
        text = (out + err).decode("utf-8", "replace").strip()
        if code != 0:
            raise GPUCheckError(f"nvidia-smi -L failed (status {code}): {text or 'no output'}")
        devices = [m.group(1) for m in map(_GPU_LINE.match, text.splitlines()) if m]
        if not devices:
            raise GPUCheckError(f"nvidia-smi lists no GPU: {text or 'no output'}")
        return devices

    return d.addCallback(parse)
