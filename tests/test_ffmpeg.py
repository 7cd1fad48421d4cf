"""
Tests for L{livepeer_tx.transcoder.ffmpeg}, with real FFmpeg runs against both
the system FFmpeg (Debian 5.1) and the imageio-ffmpeg static binary when
present, checking the outputs with ffprobe.
"""

import atexit
import os
import random
import shutil
import stat
import tempfile

import ffmpeg as ffmpegpy
from twisted.internet import defer
from twisted.trial import unittest

from livepeer_tx.profiles import MAX_SIDE, MIN_HEIGHT, MIN_WIDTH, PRESETS, Profile
from livepeer_tx.transcoder import ffmpeg
from livepeer_tx.transcoder.ffmpeg import (
    FFmpegNotFound,
    PIPE_ANALYZE_MICROSECONDS,
    FFmpegTranscoder,
    TranscodeError,
    buildCommand,
    findFFmpeg,
    scaleExpressions,
)
from tests.media import ffmpegBinaries, makeClip, probe

import forkserver

BINARIES = ffmpegBinaries()
_CLIP_DIR = tempfile.mkdtemp(prefix="lptx-clips-")
atexit.register(shutil.rmtree, _CLIP_DIR, True)
_clips = {}


def clip(width, height, seconds, fps=30, audio=True):
    """
    The bytes of a generated test clip, made once per test run.
    """
    key = (width, height, seconds, fps, audio)
    if key not in _clips:
        path = os.path.join(_CLIP_DIR, "clip-{}x{}-{}s-{}fps-{}.ts".format(*key))
        makeClip(path, width, height, seconds, fps, audio=audio)
        with open(path, "rb") as f:
            _clips[key] = f.read()
    return _clips[key]


def tempDir(testCase):
    """
    A new absolute temporary directory, removed after the test.
    """
    path = tempfile.mkdtemp(prefix="lptx-test-")
    testCase.addCleanup(shutil.rmtree, path, True)
    return path


def _isForkServer(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.path.abspath(forkserver.__file__).encode() in f.read().split(b"\0")
    except OSError:
        return False


def childProcesses():
    """
    The (pid, state) of this process's children, zombies included, from
    /proc, but for the end-to-end tests' fork server (C{tests/forkserver.py},
    alive for the whole run of a worker).
    """
    me = str(os.getpid())
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and not _isForkServer(entry):
            children.append((int(entry), fields[0]))
    return children


class FindFFmpegTests(unittest.TestCase):
    """
    L{findFFmpeg} picks an explicit path, PATH, or the imageio binary.
    """

    def test_explicitMissing(self):
        """
        An explicit --ffmpeg that does not exist is refused at start-up, not at
        the first segment.
        """
        self.assertRaises(FFmpegNotFound, findFFmpeg, "/nonexistent/ffmpeg")

    def test_explicitNotExecutable(self):
        """
        An explicit --ffmpeg that is not executable is refused at start-up.
        """
        path = os.path.join(tempDir(self), "ffmpeg")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(path, 0o644)
        self.assertRaises(FFmpegNotFound, findFFmpeg, path)

    def test_explicit(self):
        """
        An explicit, usable --ffmpeg is the one used.
        """
        path = next(iter(BINARIES.values()))
        self.assertEqual(findFFmpeg(path), path)

    def test_default(self):
        """
        Without --ffmpeg the system binary is preferred over the bundled one.
        """
        path = findFFmpeg()
        self.assertTrue(os.access(path, os.X_OK))
        if "system" in BINARIES:
            self.assertEqual(path, BINARIES["system"])


class CommandLineTests(unittest.TestCase):
    """
    The same builder makes the CPU and NVIDIA command lines.
    """

    profiles = [
        Profile("a", 640, 360, 1_200_000, 30),
        Profile("b", 426, 240, 600_000, 0, format="mp4", encoderProfile="constrained_high", gop=2000),
        Profile("c", 256, 144, 400_000, 30000, 1001, encoderProfile="main", gop=1000),
    ]

    def command(self, device):
        return buildCommand("/usr/bin/ffmpeg", "in.ts", ["o0.ts", "o1.mp4", "o2.ts"], self.profiles, device)

    def outputArgs(self, args, path):
        """
        The options of one output: the arguments between the previous output
        path (or the filter graph) and C{path}.
        """
        end = args.index(path)
        boundaries = ("o0.ts", "o1.mp4", "o2.ts")
        start = max(i for i in range(end) if args[i] in boundaries or args[i - 1] == "-filter_complex")
        return args[start + 1 : end]

    def option(self, args, name):
        return args[args.index(name) + 1]

    def test_cpu(self):
        """
        Without a GPU the command scales on the CPU with libx264 at go-livepeer's
        rate control (CBR-like bitrate, veryfast, forced IDR), each profile's
        frame rate and muxer, and its H.264 profile's B-frames and GOP.
        """
        args = self.command(None)
        self.assertEqual(args[0], "/usr/bin/ffmpeg")
        self.assertNotIn("-hwaccel", args)
        graph = self.option(args, "-filter_complex")
        self.assertIn("split=3", graph)
        self.assertEqual(graph.count("scale="), 3)
        self.assertNotIn("scale_cuda", graph)
        self.assertIn("fps=fps=30/1", graph)
        self.assertIn("fps=fps=30000/1001", graph)
        self.assertEqual(graph.count("fps=fps="), 2)
        first = self.outputArgs(args, "o0.ts")
        for name in ("-b:v", "-minrate", "-maxrate", "-bufsize"):
            self.assertEqual(self.option(first, name), "1200000")
        self.assertEqual(self.option(first, "-c:v"), "libx264")
        self.assertEqual(self.option(first, "-preset"), "veryfast")
        self.assertEqual(self.option(first, "-forced-idr"), "1")
        self.assertEqual(self.option(first, "-f"), "mpegts")
        self.assertEqual(self.option(first, "-c:a"), "copy")
        self.assertIn("0:a?", first)
        self.assertNotIn("-g", first)
        second = self.outputArgs(args, "o1.mp4")
        self.assertEqual(self.option(second, "-f"), "mp4")
        self.assertEqual(self.option(second, "-movflags"), "faststart")
        self.assertEqual(self.option(second, "-profile:v"), "high")
        self.assertEqual(self.option(second, "-bf"), "0")
        self.assertEqual(self.option(second, "-force_key_frames"), "expr:gte(t,n_forced*2)")
        third = self.outputArgs(args, "o2.ts")
        self.assertEqual(self.option(third, "-profile:v"), "main")
        self.assertEqual(self.option(third, "-bf"), "3")
        self.assertEqual(self.option(third, "-g"), "30")

    def test_nvidia(self):
        """
        With a GPU the command decodes with CUDA on that device, scales with
        scale_cuda and encodes with h264_nvenc on the same GPU; the default
        profile gets no B-frames on NVENC.
        """
        args = self.command("1")
        inputAt = args.index("-i")
        self.assertEqual(self.option(args, "-hwaccel"), "cuda")
        self.assertEqual(self.option(args, "-hwaccel_device"), "1")
        self.assertEqual(self.option(args, "-hwaccel_output_format"), "cuda")
        self.assertLess(args.index("-hwaccel"), inputAt)
        graph = self.option(args, "-filter_complex")
        self.assertEqual(graph.count("scale_cuda="), 3)
        self.assertNotIn("libx264", args)
        for path in ("o0.ts", "o1.mp4", "o2.ts"):
            options = self.outputArgs(args, path)
            self.assertEqual(self.option(options, "-c:v"), "h264_nvenc")
            self.assertEqual(self.option(options, "-gpu"), "1")
        # NVENC: no B-frames with the default profile; main keeps 3.
        self.assertEqual(self.option(self.outputArgs(args, "o0.ts"), "-bf"), "0")
        self.assertEqual(self.option(self.outputArgs(args, "o2.ts"), "-bf"), "3")

    def test_pipeInputProbedBriefly(self):
        """
        A piped input is analysed for PIPE_ANALYZE_MICROSECONDS before it
        is decoded, and its frame rate not estimated when every profile sets
        its own; an input file gets FFmpeg's defaults: without the options a
        streamed segment would wait for its last byte; with them on a file,
        FFmpeg would probe less than it can; without a frame rate estimate a
        profile keeping the input's rate could get a wrong one.
        """
        piped = buildCommand("ffmpeg", "pipe:0", ["pipe:3"], self.profiles[:1], "0")
        self.assertEqual(self.option(piped, "-analyzeduration"), str(PIPE_ANALYZE_MICROSECONDS))
        self.assertEqual(self.option(piped, "-fpsprobesize"), "0")
        self.assertLess(piped.index("-analyzeduration"), piped.index("-i"))
        self.assertLess(piped.index("-fpsprobesize"), piped.index("-i"))
        self.assertEqual(self.option(piped, "-hwaccel"), "cuda")
        keepsRate = buildCommand("ffmpeg", "pipe:0", ["pipe:3", "pipe:4"], self.profiles[:2])
        self.assertIn("-analyzeduration", keepsRate)
        self.assertNotIn("-fpsprobesize", keepsRate)
        self.assertNotIn("-analyzeduration", self.command(None))
        self.assertNotIn("-fpsprobesize", self.command(None))

    def test_intraOnly(self):
        """
        A GOP of -1 (intra only) becomes -g 1, and a single profile needs no split.
        """
        args = buildCommand("ffmpeg", "in.ts", ["o.ts"], [Profile("i", 320, 240, 1000, gop=-1)])
        self.assertEqual(self.option(args, "-g"), "1")
        self.assertNotIn("split", self.option(args, "-filter_complex"))


class _FFmpegBinaryCase:
    """
    Set-up and checks for real transcodes with one FFmpeg binary
    (C{binary}, a key of BINARIES).
    """

    binary = None

    def setUp(self):
        if self.binary not in BINARIES:
            raise unittest.SkipTest(f"no {self.binary} FFmpeg binary here")
        from twisted.internet import reactor

        self.reactor = reactor
        self.workDir = tempDir(self)
        self.transcoder = FFmpegTranscoder(reactor, BINARIES[self.binary], self.workDir, timeout=60)

    def assertClean(self):
        self.assertEqual(os.listdir(self.workDir), [])
        self.assertEqual(self.transcoder.running, 0)
        self.assertEqual(childProcesses(), [])

    def probeRendition(self, rendition):
        path = os.path.join(tempDir(self), "rendition" + rendition.profile.extension)
        with open(path, "wb") as f:
            f.write(rendition.data)
        info = probe(path)
        if info is None:
            raise unittest.SkipTest("no ffprobe to check the outputs with")
        return info


class _FFmpegTestsMixin(_FFmpegBinaryCase):
    """
    Every real transcode case, with one FFmpeg binary.
    """
    @defer.inlineCallbacks
    def test_renditions(self):
        """
        A 2 s 640x360 30 fps clip becomes renditions of the right size, frame
        count, duration and container, with audio; pixels are what was
        really encoded and decoded.
        """
        profiles = [
            PRESETS["P360p30fps16x9"],
            PRESETS["P240p30fps16x9"],
            Profile("half", 256, 144, 300_000, 15, format="mp4", encoderProfile="high"),
        ]
        result = yield self.transcoder.transcode(clip(640, 360, 2), profiles)
        self.assertEqual(result.decodedFrames, 60)
        self.assertEqual(result.decodedPixels, 60 * 640 * 360)
        self.assertGreater(result.seconds, 0)
        self.assertEqual([r.profile for r in result.renditions], profiles)
        expectedFrames = [60, 60, 30]
        for rendition, frames in zip(result.renditions, expectedFrames):
            info = self.probeRendition(rendition)
            size = rendition.profile.outputSize(640, 360)
            self.assertEqual((rendition.width, rendition.height), size)
            self.assertEqual((info["width"], info["height"]), size)
            self.assertEqual(info["frames"], rendition.frames)
            self.assertEqual(rendition.frames, frames)
            self.assertEqual(rendition.pixels, info["frames"] * info["width"] * info["height"])
            self.assertAlmostEqual(info["duration"], 2.0, delta=0.1)
            self.assertTrue(info["audio"], f"{rendition.profile.name} has no audio")
        mp4 = result.renditions[2].data
        self.assertEqual(mp4[4:8], b"ftyp")
        self.assertLess(mp4.index(b"moov"), mp4.index(b"mdat"), "MP4 is not faststart")
        self.assertEqual(result.renditions[0].data[0], 0x47)
        self.assertClean()

    @defer.inlineCallbacks
    def test_aspectRatios(self):
        """
        4:3 and portrait inputs keep their aspect ratio inside a 16:9 box
        oriented like the input; an input without audio still transcodes.
        """
        profile = PRESETS["P240p30fps16x9"]
        for width, height, expected in [(320, 240, (320, 240)), (180, 320, (240, 426))]:
            self.assertEqual(profile.outputSize(width, height), expected)
            result = yield self.transcoder.transcode(clip(width, height, 0.5, audio=False), [profile])
            (rendition,) = result.renditions
            self.assertEqual((rendition.width, rendition.height), expected)
            info = self.probeRendition(rendition)
            self.assertEqual((info["width"], info["height"]), expected)
            self.assertFalse(info["audio"])
            self.assertEqual(result.decodedPixels, 15 * width * height)
            self.assertEqual(rendition.pixels, info["frames"] * expected[0] * expected[1])
        self.assertClean()

    @defer.inlineCallbacks
    def test_timeout(self):
        """
        A transcode past its timeout is killed: it fails with the timeout as
        cause and leaves no work files and no child process.
        """
        profiles = [PRESETS["P720p30fps16x9"], PRESETS["P576p30fps16x9"]]
        d = self.transcoder.transcode(clip(320, 240, 20, audio=False), profiles, timeout=0.3)
        failure = yield self.assertFailure(d, TranscodeError)
        self.assertEqual(str(failure), "transcode timed out after 0.3s")
        self.assertClean()

    @defer.inlineCallbacks
    def test_cancel(self):
        """
        Cancelling kills FFmpeg; the Deferred fails with CancelledError after
        the process is reaped and the work files are gone.
        """
        profiles = [PRESETS["P720p30fps16x9"], PRESETS["P576p30fps16x9"]]
        d = self.transcoder.transcode(clip(320, 240, 20, audio=False), profiles)
        self.reactor.callLater(0.3, d.cancel)
        yield self.assertFailure(d, defer.CancelledError)
        self.assertClean()

    def streamInPieces(self, segment, data, pieceBytes=65536, delay=0.01):
        """
        Feed C{data} to C{segment} in pieces, one every C{delay} seconds of
        the real reactor (as the orchestrator forwards them), then end it.
        """
        pieces = [data[i:i + pieceBytes] for i in range(0, len(data), pieceBytes)]

        def next(index=0):
            if segment.ended:
                return
            if index == len(pieces):
                segment.end()
                return
            segment.write(pieces[index])
            self.reactor.callLater(delay, next, index + 1)

        next()

    @defer.inlineCallbacks
    def test_streamedRenditions(self):
        """
        A streamed transcode reads the segment from stdin as it arrives and
        hands each rendition's bytes on from its own pipe before the result
        fires: the same sizes, frame and pixel counts as the file path, valid
        MPEG-TS, and no work file at any time.
        """
        profiles = [PRESETS["P240p30fps16x9"], PRESETS["P144p30fps16x9"]]
        data = clip(320, 180, 1)
        received = {0: [], 1: []}
        segment = ffmpeg.StreamedSegment(len(data))

        def onData(index, piece):
            self.assertEqual(os.listdir(self.workDir), [])
            received[index].append(piece)

        d = self.transcoder.transcodeStream(segment, profiles, onData)
        self.streamInPieces(segment, data, pieceBytes=16384)
        streamed = yield d
        fromFiles = yield self.transcoder.transcode(data, profiles)
        self.assertEqual((streamed.decodedFrames, streamed.decodedPixels),
                         (fromFiles.decodedFrames, fromFiles.decodedPixels))
        for index, (rendition, reference) in enumerate(zip(streamed.renditions, fromFiles.renditions)):
            self.assertIsNone(rendition.data)
            body = b"".join(received[index])
            self.assertEqual(rendition.size, len(body))
            self.assertEqual((rendition.width, rendition.height, rendition.frames, rendition.pixels),
                             (reference.width, reference.height, reference.frames, reference.pixels))
            self.assertEqual(body[0], 0x47)
            info = self.probeRendition(ffmpeg.RenditionOutput(rendition.profile, body, 0, 0, 0, 0))
            self.assertEqual((info["width"], info["height"], info["frames"]),
                             (rendition.width, rendition.height, rendition.frames))
        self.assertClean()

    @defer.inlineCallbacks
    def test_streamedCancelMidUpload(self):
        """
        Cancelling a streamed transcode while its segment is still arriving
        kills FFmpeg: CancelledError once it is reaped, nothing handed on
        after, and the pieces that arrive later are dropped.
        """
        data = clip(320, 240, 20, audio=False)
        segment = ffmpeg.StreamedSegment(len(data))
        received = []
        d = self.transcoder.transcodeStream(segment, [PRESETS["P720p30fps16x9"]], lambda i, b: received.append(b))
        segment.write(data[:len(data) // 2])
        self.reactor.callLater(0.3, d.cancel)
        yield self.assertFailure(d, defer.CancelledError)
        count = len(received)
        segment.write(data[len(data) // 2:])
        self.assertEqual(len(received), count)
        self.assertClean()

    @defer.inlineCallbacks
    def test_streamedInputNeverEnds(self):
        """
        A streamed segment whose end never comes is stopped at the timeout,
        with the timeout as cause, and leaves no child process.
        """
        data = clip(320, 240, 0.5, audio=False)
        segment = ffmpeg.StreamedSegment()
        d = self.transcoder.transcodeStream(segment, [PRESETS["P240p30fps16x9"]], lambda i, b: None, timeout=1)
        segment.write(data)
        failure = yield self.assertFailure(d, TranscodeError)
        self.assertEqual(str(failure), "transcode timed out after 1s")
        self.assertClean()

    def test_streamedNeedsMPEGTS(self):
        """
        An MP4 rendition cannot be written to a pipe (its muxer seeks): a
        streamed transcode asking for one fails before FFmpeg starts.
        """
        mp4 = Profile("half", 256, 144, 300_000, 15, format="mp4")
        d = self.transcoder.transcodeStream(ffmpeg.StreamedSegment(), [mp4], lambda i, b: None)
        failure = self.failureResultOf(d, TranscodeError)
        self.assertIn("mpegts", str(failure.value))
        self.assertEqual(self.transcoder.running, 0)

    @defer.inlineCallbacks
    def test_garbage(self):
        """
        Input FFmpeg cannot read fails with FFmpeg's cause, which names no
        directory of ours.

        The bytes are the same on every run: fresh random bytes now and
        then look like the start of some format FFmpeg knows, and fail
        with another message.
        """
        garbage = random.Random(9).randbytes(20000)
        d = self.transcoder.transcode(garbage, [PRESETS["P240p30fps16x9"]])
        failure = yield self.assertFailure(d, TranscodeError)
        self.assertIn("Invalid data found when processing input", str(failure))
        self.assertNotIn(self.workDir, str(failure))
        self.assertNotIn(os.path.basename(self.workDir), str(failure))
        self.assertIn("FFmpeg exited with status", str(failure))
        self.assertNotEqual(failure.exitCode, 0)
        self.assertClean()

    @defer.inlineCallbacks
    def test_inputFilePrivate(self):
        """
        The input is written readable by its owner only, in a per-job
        directory under the work directory.
        """
        modes = []
        realSpawn = self.reactor.spawnProcess

        def spawn(proto, executable, args, **kwargs):
            inputPath = os.path.join(kwargs["path"], args[args.index("-i") + 1])
            self.assertEqual(os.path.dirname(os.path.dirname(inputPath)), self.workDir)
            modes.append(stat.S_IMODE(os.stat(inputPath).st_mode))
            return realSpawn(proto, executable, args, **kwargs)

        self.patch(self.reactor, "spawnProcess", spawn)
        yield self.transcoder.transcode(clip(320, 240, 0.5, audio=False), [PRESETS["P144p30fps16x9"]])
        self.assertEqual(modes, [0o600])
        self.assertClean()

    @defer.inlineCallbacks
    def test_scaleExpressions(self):
        """
        The scale-filter expressions give exactly L{Profile.outputSize}, ties
        (round half to even), clamps and orientation included.
        """
        cases = [
            ((1280, 720), (640, 360)),
            ((1280, 720), (1920, 1080)),
            ((640, 360), (720, 1280)),
            ((426, 240), (100, 200)),
            ((426, 240), (110, 220)),
            ((640, 360), (122, 216)),
            ((960, 720), (214, 160)),
            ((256, 144), (4000, 100)),
            ((256, 144), (100, 4000)),
            ((146, 146), (320, 240)),
            ((146, 146), (240, 320)),
            ((4096, 4096), (1000, 998)),
            ((300, 200), (334, 334)),
            ((200, 300), (334, 334)),
            ((320, 240), (1922, 1082)),
        ]
        ffmpegPath = BINARIES[self.binary]
        outputs = []
        for index, ((boxW, boxH), (inW, inH)) in enumerate(cases):
            source = ffmpegpy.input(f"color=size={inW}x{inH}:rate=1:duration=1", f="lavfi")
            width, height = scaleExpressions(Profile(f"p{index}", boxW, boxH, 1000))
            outputs.append(ffmpegpy.output(source.filter("scale", w=width, h=height), "-", f="null"))
        args = ["-hide_banner", "-nostdin", "-loglevel", "level+verbose", *ffmpegpy.merge_outputs(*outputs).get_args()]
        parser = ffmpeg._LogParser()
        from twisted.internet import utils

        out, err, code = yield utils.getProcessOutputAndValue(ffmpegPath, args, env=None, reactor=self.reactor)
        parser.feed(err)
        parser.close()
        self.assertEqual(code, 0, parser.cause())
        got = [parser.outputSizes[i] for i in range(len(cases))]
        expected = [Profile("p", bw, bh, 1000).outputSize(w, h) for (bw, bh), (w, h) in cases]
        self.assertEqual(got, expected)
        # A tie (213 / 2) that FFmpeg's plain round() would make 214, and
        # both minimum-side clamps, are among the cases.
        self.assertEqual(expected[3], (212, 426))
        self.assertEqual(expected[7], (256, MIN_HEIGHT))
        self.assertEqual(expected[8], (MIN_WIDTH, 256))
        self.assertTrue(all(w <= MAX_SIDE and h <= MAX_SIDE for w, h in expected))


class SystemFFmpegTests(_FFmpegTestsMixin, unittest.TestCase):
    """
    With the FFmpeg on PATH (Debian's 5.1).
    """

    binary = "system"


class ImageioFFmpegTests(_FFmpegBinaryCase, unittest.TestCase):
    """
    A smoke test of the imageio-ffmpeg static binary (FFmpeg 7+/9 log
    format), the fallback where no FFmpeg is on PATH: a streamed transcode
    and a file one agree on sizes, frames and pixels, and probe right.
    Breaks if our command line or our reading of FFmpeg's log does not hold
    for that binary. Every other case runs with the system binary.
    """

    binary = "imageio"
    streamInPieces = _FFmpegTestsMixin.streamInPieces
    test_streamedRenditions = _FFmpegTestsMixin.test_streamedRenditions


class StubbornProcessTests(unittest.TestCase):
    """
    An "FFmpeg" that ignores SIGTERM is killed with SIGKILL after the grace
    period and reaped.
    """

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor
        self.workDir = tempDir(self)
        fake = os.path.join(tempDir(self), "ffmpeg")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\ntrap '' TERM\nexec /bin/sleep 30\n")
        os.chmod(fake, 0o755)
        self.transcoder = FFmpegTranscoder(reactor, fake, self.workDir)

    def assertClean(self):
        self.assertEqual(os.listdir(self.workDir), [])
        self.assertEqual(self.transcoder.running, 0)
        self.assertEqual(childProcesses(), [])

    @defer.inlineCallbacks
    def test_timeout(self):
        """
        A transcode that runs past its timeout fails with that reason and
        leaves no process or work file behind.
        """
        d = self.transcoder.transcode(b"segment", [PRESETS["P144p30fps16x9"]], timeout=0.1)
        failure = yield self.assertFailure(d, TranscodeError)
        self.assertEqual(str(failure), "transcode timed out after 0.1s")
        self.assertClean()

    @defer.inlineCallbacks
    def test_cancelDuringGrace(self):
        """
        Cancelling after the timeout, while waiting to SIGKILL, gives
        CancelledError once the process is gone.
        """
        d = self.transcoder.transcode(b"segment", [PRESETS["P144p30fps16x9"]], timeout=0.1)
        self.reactor.callLater(0.1 + ffmpeg.KILL_GRACE / 2, d.cancel)
        yield self.assertFailure(d, defer.CancelledError)
        self.assertClean()


class InvalidRequestTests(unittest.TestCase):
    """
    Requests that cannot be honoured fail before FFmpeg runs.
    """

    def setUp(self):
        from twisted.internet import reactor

        self.workDir = tempDir(self)
        self.transcoder = FFmpegTranscoder(reactor, "/nonexistent/ffmpeg", self.workDir)

    def test_noProfiles(self):
        """
        A transcode with no profiles is refused rather than run for nothing.
        """
        return self.assertFailure(self.transcoder.transcode(b"x", []), TranscodeError)

    def test_badDevice(self):
        """
        A device id that is not a number is refused before it reaches a command line.
        """
        return self.assertFailure(
            self.transcoder.transcode(b"x", [PRESETS["P144p30fps16x9"]], device="0; rm"), TranscodeError
        )

    @defer.inlineCallbacks
    def test_missingExecutable(self):
        """
        An FFmpeg that vanished since start-up fails the task with its path
        named, and leaves no work file behind.
        """
        failure = yield self.assertFailure(
            self.transcoder.transcode(b"x", [PRESETS["P144p30fps16x9"]]), TranscodeError
        )
        self.assertIn("/nonexistent/ffmpeg", str(failure))
        self.assertEqual(os.listdir(self.workDir), [])


class RenditionPieceTests(unittest.TestCase):
    """
    How a streamed transcode hands its renditions' bytes on: in pieces of
    L{ffmpeg.RENDITION_PIECE_BYTES}, whatever size its pipe reads come in.
    """

    def test_piecesOfThePieceSize(self):
        """
        Each rendition's pipe reads (8 KiB, as Twisted reads a pipe) are
        gathered and handed on in order, one piece of
        L{ffmpeg.RENDITION_PIECE_BYTES} each time that much is in, and
        interleaved renditions keep their own pieces. Handing on every read
        would send the orchestrator one message per 8 KiB; a larger threshold
        than the one documented would hold bytes back longer.
        """
        from twisted.internet.task import Clock

        handed = []
        profiles = [PRESETS["P240p30fps16x9"], PRESETS["P360p30fps16x9"]]
        job = ffmpeg._PipeJob(FFmpegTranscoder(Clock(), "ffmpeg", tempDir(self)), ffmpeg.StreamedSegment(),
                              profiles, None, 10, lambda index, data: handed.append((index, data)))
        read = 8 * 1024
        renditions = {index: os.urandom(2 * ffmpeg.RENDITION_PIECE_BYTES + read) for index in (0, 1)}
        for at in range(0, len(renditions[0]), read):
            for index in (0, 1):
                job._output(ffmpeg.FIRST_OUTPUT_FD + index, renditions[index][at:at + read])
        self.assertEqual([(index, len(data)) for index, data in handed],
                         [(0, ffmpeg.RENDITION_PIECE_BYTES), (1, ffmpeg.RENDITION_PIECE_BYTES)] * 2)
        for index in (0, 1):
            job._handOn(index)
            self.assertEqual(b"".join(data for i, data in handed if i == index), renditions[index])
