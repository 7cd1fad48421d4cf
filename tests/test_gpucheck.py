"""
Tests for L{livepeer_tx.transcoder.gpucheck}: the error classifier on
captured-style FFmpeg logs, and real start-up checks (CPU, and a GPU check
that must fail clearly on a machine without a usable CUDA device).
"""

import os
import shutil
import tempfile

from twisted.internet import defer, reactor
from twisted.trial import unittest

from livepeer_tx.transcoder import gpucheck
from livepeer_tx.transcoder.ffmpeg import FFmpegTranscoder, findFFmpeg
from livepeer_tx.transcoder.gpucheck import (
    DRIVER_TOO_OLD,
    NO_NVENC,
    NO_SUCH_DEVICE,
    SESSION_LIMIT,
    GPUCheckError,
    checkDevices,
    classifyFFmpegError,
    listNvidiaDevices,
    loadTestClip,
)

# Log excerpts as FFmpeg prints them (-loglevel level+verbose) in each case.
NO_LIBCUDA = """\
[AVHWDeviceContext @ 0x55ef9a07d6c0] [error] Cannot load libcuda.so.1
[AVHWDeviceContext @ 0x55ef9a07d6c0] [error] Could not dynamically load CUDA
[error] Device creation failed: -1.
[h264 @ 0x55ef9a08bd00] [error] No device available for decoder: device type cuda needed for codec h264.
[error] Device setup failed for decoder on input stream #0:0 : Operation not permitted
"""
BAD_ORDINAL = """\
[AVHWDeviceContext @ 0x5581] [error] cu->cuDeviceGet(&hwctx->internal->cuda_device, device_idx) failed \
-> CUDA_ERROR_INVALID_DEVICE: invalid device ordinal
[error] Device creation failed: -542398533.
"""
NO_GPU = """\
[AVHWDeviceContext @ 0x5581] [error] cu->cuInit(0) failed -> CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected
[fatal] Error binding filtergraph inputs/outputs: Generic error in an external library
"""
HOPPER = """\
[h264_nvenc @ 0x55d0] [error] OpenEncodeSessionEx failed: unsupported device (2): (no details)
[h264_nvenc @ 0x55d0] [error] No capable devices found
[vost#0:0/h264_nvenc @ 0x55c0] [error] Error while opening encoder - maybe incorrect parameters such as \
bit_rate, rate, width or height.
[fatal] Error sending frames to consumers: Function not implemented
"""
OLD_DRIVER = """\
[h264_nvenc @ 0x5600] [error] Driver does not support the required nvenc API version. Required: 13.1 Found: 13.0
[h264_nvenc @ 0x5600] [error] The minimum required Nvidia driver for nvenc is 610.00 or newer
[error] Error while opening encoder for output stream #0:0 - maybe incorrect parameters
"""
SESSIONS = """\
[h264_nvenc @ 0x5600] [error] OpenEncodeSessionEx failed: out of memory (10): (no details)
[h264_nvenc @ 0x5600] [error] No capable devices found
[error] Error initializing output stream 3:0 -- Error while opening encoder for output stream #3:0
[error] Conversion failed! Cannot allocate memory
"""
UNKNOWN = """\
[info] Stream mapping:
[mpegts @ 0x55] [error] Something unexpected happened here
"""


def tempDir(testCase):
    """
    A new absolute temporary directory, removed after the test.
    """
    path = tempfile.mkdtemp(prefix="lptx-test-")
    testCase.addCleanup(shutil.rmtree, path, True)
    return path


class ClassifyTests(unittest.TestCase):
    """
    L{classifyFFmpegError} names the cause of typical GPU failures.
    """

    def assertCause(self, text, prefix, *words):
        cause = classifyFFmpegError(text)
        self.assertTrue(cause.startswith(prefix), cause)
        for word in words:
            self.assertIn(word, cause)

    def test_noLibcuda(self):
        """
        A host without libcuda.so is reported as no such device, naming libcuda;
        a wrong cause would send the operator after the wrong fix.
        """
        self.assertCause(NO_LIBCUDA, NO_SUCH_DEVICE, "libcuda")

    def test_badOrdinal(self):
        """
        A device index the driver does not know is reported as no such device,
        naming the device index.
        """
        self.assertCause(BAD_ORDINAL, NO_SUCH_DEVICE, "device index")

    def test_noGPU(self):
        """
        A driver that finds no CUDA device is reported as no such device.
        """
        self.assertCause(NO_GPU, NO_SUCH_DEVICE, "CUDA")

    def test_noNVENC(self):
        """
        A GPU without NVENC (H100/H200) is reported as such, naming the H100,
        not as a parameter error.
        """
        self.assertCause(HOPPER, NO_NVENC, "H100")

    def test_driverTooOld(self):
        """
        An NVENC API newer than the driver is reported as a driver to upgrade.
        """
        self.assertCause(OLD_DRIVER, DRIVER_TOO_OLD, "upgrade")

    def test_sessionLimit(self):
        """
        An out-of-memory NVENC session open is reported as the consumer-GPU
        session limit.
        """
        self.assertCause(SESSIONS, SESSION_LIMIT, "consumer-GPU NVENC session limit")

    def test_noLibx264(self):
        """
        An FFmpeg without libx264 (the CPU transcoder's encoder) is reported
        as such, not as FFmpeg's last line.
        """
        self.assertCause("[vost#0:0 @ 0x5] Unknown encoder 'libx264'\n", "this FFmpeg was built without libx264")

    def test_unknown(self):
        """
        An unrecognised failure reports FFmpeg's own last error line.
        """
        self.assertEqual(
            classifyFFmpegError(UNKNOWN), "FFmpeg failed: [mpegts @ 0x55] [error] Something unexpected happened here"
        )

    def test_empty(self):
        """
        A failure with no log at all still gets a readable cause.
        """
        self.assertEqual(classifyFFmpegError(""), "FFmpeg failed: FFmpeg logged nothing")


class CheckTests(unittest.TestCase):
    """
    Real start-up checks through L{FFmpegTranscoder}.
    """

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor
        self.ffmpegPath = findFFmpeg()
        self.workDir = tempDir(self)
        self.transcoder = FFmpegTranscoder(reactor, self.ffmpegPath, self.workDir, timeout=30)

    @defer.inlineCallbacks
    def test_cpu(self):
        """
        The CPU check transcodes the packaged clip with libx264: all of its
        ten 144x144 frames are decoded and one rendition of the test profile
        comes out.
        """
        clip = loadTestClip()
        self.assertEqual(clip[0], 0x47, "not MPEG-TS")
        calls = []
        realTranscode = self.transcoder.transcode

        def transcode(*args, **kwargs):
            d = realTranscode(*args, **kwargs)
            d.addCallback(lambda result: calls.append(result) or result)
            return d

        self.patch(self.transcoder, "transcode", transcode)
        devices = yield checkDevices(self.transcoder, None, clip)
        self.assertEqual(devices, [])
        (result,) = calls
        width, height = gpucheck.TEST_CLIP_SIZE
        self.assertEqual(result.decodedFrames, 10)
        self.assertEqual(result.decodedPixels, 10 * width * height)
        (rendition,) = result.renditions
        self.assertEqual((rendition.width, rendition.height), gpucheck.TEST_PROFILE.outputSize(width, height))
        self.assertEqual(os.listdir(self.workDir), [])

    @defer.inlineCallbacks
    def test_cpuGarbage(self):
        """
        A clip FFmpeg cannot read makes the check fail with that cause.
        """
        d = checkDevices(self.transcoder, None, b"\x00" * 1000)
        failure = yield self.assertFailure(d, GPUCheckError)
        self.assertIn("CPU (libx264)", str(failure))
        self.assertIn("could not read the input", str(failure))

    @defer.inlineCallbacks
    def test_bogusDevice(self):
        """
        On this GPU-less machine a GPU check fails with a no-such-device cause
        naming the device (a real FFmpeg run with -hwaccel cuda).
        """
        if shutil.which("nvidia-smi"):
            raise unittest.SkipTest("this machine has an NVIDIA driver; device 97 might not fail as expected")
        failure = yield self.assertFailure(checkDevices(self.transcoder, ["97"], loadTestClip()), GPUCheckError)
        self.assertIn("GPU 97: " + NO_SUCH_DEVICE, str(failure))
        self.assertEqual(os.listdir(self.workDir), [])

    def test_noDevices(self):
        """
        An empty device list is an error, not a check that passes vacuously.
        """
        return self.assertFailure(checkDevices(self.transcoder, [], b""), GPUCheckError)


class ListDevicesTests(unittest.TestCase):
    """
    L{listNvidiaDevices} reads C{nvidia-smi -L}.
    """

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor
        self.binDir = tempDir(self)
        self.patch(os, "environ", dict(os.environ, PATH=self.binDir))

    def fakeSmi(self, output, status=0):
        text = os.path.join(self.binDir, "output.txt")
        with open(text, "w") as f:
            f.write(output + "\n")
        path = os.path.join(self.binDir, "nvidia-smi")
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\n/bin/cat {text}\nexit {status}\n")
        os.chmod(path, 0o755)

    @defer.inlineCallbacks
    def test_devices(self):
        """
        GPU lines of C{nvidia-smi -L} become device ids; MIG lines are not
        counted as separate GPUs.
        """
        self.fakeSmi(
            "GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-aaaa)\nGPU 1: NVIDIA L4 (UUID: GPU-bbbb)\n"
            "  MIG 1g.10gb Device 0: (UUID: MIG-cccc)"
        )
        devices = yield listNvidiaDevices(self.reactor)
        self.assertEqual(devices, ["0", "1"])

    def test_absent(self):
        """
        No C{nvidia-smi} on C{PATH} fails the listing with L{GPUCheckError}.
        """
        return self.assertFailure(listNvidiaDevices(self.reactor), GPUCheckError)

    @defer.inlineCallbacks
    def test_failing(self):
        """
        A failing C{nvidia-smi} reports its own message.
        """
        self.fakeSmi("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", 9)
        failure = yield self.assertFailure(listNvidiaDevices(self.reactor), GPUCheckError)
        self.assertIn("couldn't communicate", str(failure))

    @defer.inlineCallbacks
    def test_none(self):
        """
        C{nvidia-smi} listing no devices fails with a no-GPU message rather
        than an empty list.
        """
        self.fakeSmi("No devices found.")
        failure = yield self.assertFailure(listNvidiaDevices(self.reactor), GPUCheckError)
        self.assertIn("no GPU", str(failure))


class RunWithTimeoutTests(unittest.TestCase):
    """
    Helper programs of the start-up test cannot hang it.
    """

    def test_hungProgramIsKilled(self):
        """
        A program that does not finish in time is killed and reported.
        """
        from livepeer_tx.transcoder.gpucheck import GPUCheckError, runWithTimeout

        d = runWithTimeout(reactor, "/bin/sleep", ["30"], 0.3, "sleep")
        return self.assertFailure(d, GPUCheckError).addCallback(
            lambda e: self.assertIn("did not finish within 0.3 s", str(e)))

    def test_outputAndStatus(self):
        """
        Output and exit status come back when the program ends in time.
        """
        from livepeer_tx.transcoder.gpucheck import runWithTimeout

        d = runWithTimeout(reactor, "/bin/sh", ["-c", "echo out; echo err >&2; exit 3"], 10, "sh")
        return d.addCallback(self.assertEqual, (b"out\n", b"err\n", 3))
