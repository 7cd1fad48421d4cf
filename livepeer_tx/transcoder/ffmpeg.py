# -*- test-case-name: tests.test_ffmpeg,tests.test_gpucheck -*-
"""
The FFmpeg transcoding engine.

Each segment is transcoded by exactly one FFmpeg process, spawned with
C{reactor.spawnProcess}: the input is decoded once, C{split} into one branch per
rendition, and every branch is scaled, frame-rate converted and encoded in the
same process, as go-livepeer's LPMS does in-process.

The output size is computed inside FFmpeg by scale-filter expressions that are
the exact equivalent of L{Profile.outputSize}, so no separate probe is needed.
What was really encoded (sizes, frame counts) is read back from FFmpeg's own
log (C{-loglevel level+verbose}): the stream lines of each C{Output #N}
section and the final per-stream statistics, whose formats differ between
FFmpeg 5.1 and 7+ and are both understood here.

Encoder choices, following LPMS (C{ffmpeg/ffmpeg.go}, C{encoder.c}):
  - CPU: C{libx264} with preset C{veryfast} (LPMS uses C{medium}; C{veryfast}
    is several times cheaper for a small quality loss, which suits a
    per-segment CLI process). NVIDIA: C{h264_nvenc} with its default preset.
  - CBR-like rate control: C{b:v = minrate = maxrate = bufsize = bitrate};
    C{forced-idr=1}.
  - B-frames: baseline and constrained high get C{bf=0}; main and high
    C{bf=3}; the default profile C{bf=3} on x264 and C{bf=0} on NVENC (also
    with frame-rate passthrough). x264 has no "constrained high" profile, so it
    is encoded as C{high} without B-frames, as LPMS does.
  - GOP (milliseconds): C{-g round(gop × fps)} when the profile sets a frame
    rate, otherwise time-based C{-force_key_frames}; C{-1} means intra only.
  - Audio is copied (go-livepeer always passes C{copy}).
  - Timestamps are kept (C{-copyts}; C{mpegts_copyts} for MPEG-TS) so that
    consecutive renditions line up like their source segments; MP4 outputs
    start near zero (no edit list) and are written C{faststart}.
"""

import glob
import os
import re
import shutil
import signal
import stat
import tempfile
from collections import deque
from dataclasses import dataclass, field

import ffmpeg as ffmpegpy
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.procutils import which

from livepeer_tx.processes import ProcessRun
from livepeer_tx.profiles import MAX_SIDE, MIN_HEIGHT, MIN_WIDTH, Profile

__all__ = [
    "FFmpegNotFound",
    "TranscodeError",
    "RenditionOutput",
    "TranscodeOutput",
    "StreamedSegment",
    "FFmpegTranscoder",
    "findFFmpeg",
    "buildCommand",
    "scaleExpressions",
    "PIPE_ANALYZE_MICROSECONDS",
]

# How long FFmpeg gets to exit after SIGTERM before it is sent SIGKILL.
KILL_GRACE = 1.0
# How many log lines are kept for error messages and classification.
_TAIL_LINES = 200
_ERROR_LEVELS = ("error", "fatal", "panic")


class FFmpegNotFound(Exception):
    """
    No usable FFmpeg executable could be found.
    """


class TranscodeError(Exception):
    """
    A segment could not be transcoded; the message says why, for an operator.

    @ivar stderr: the last lines FFmpeg logged (empty if it never ran).
    @ivar exitCode: FFmpeg's exit status, or L{None}.
    """

    def __init__(self, message, stderr="", exitCode=None):
        super().__init__(message)
        self.stderr = stderr
        self.exitCode = exitCode


@dataclass
class RenditionOutput:
    """
    One encoded rendition: its bytes and what FFmpeg reported encoding.

    C{pixels} is C{frames × width × height}, the encoded pixel count that is
    reported to the orchestrator and billed. A streamed transcode
    (L{FFmpegTranscoder.transcodeStream}) has handed its bytes on as FFmpeg
    wrote them: its C{data} is L{None} and C{size} counts them.
    """

    profile: Profile
    data: bytes
    width: int
    height: int
    frames: int
    pixels: int
    size: int = None

    def __post_init__(self):
        if self.size is None and self.data is not None:
            self.size = len(self.data)


@dataclass
class TranscodeOutput:
    """
    The result of transcoding one segment.

    C{decodedPixels} is C{decodedFrames × input width × input height};
    C{seconds} is how long the FFmpeg process ran.
    """

    decodedFrames: int
    decodedPixels: int
    renditions: list = field(default_factory=list)
    seconds: float = 0.0


def findFFmpeg(explicit=None):
    """
    Find the FFmpeg executable to use.

    @param explicit: a path given by the operator, used if not L{None}.
    @return: the explicit path; else C{ffmpeg} on C{PATH}; else the binary of
        the C{imageio-ffmpeg} wheel (the C{bundled-ffmpeg} extra), if installed.
    @raise FFmpegNotFound: the explicit path is not an executable file, or
        no FFmpeg is available at all.
    """
    if explicit is not None:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise FFmpegNotFound(f"FFmpeg executable {explicit!r} does not exist or is not executable")
    found = which("ffmpeg")
    if found:
        return found[0]
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as e:
        raise FFmpegNotFound(
            f"no ffmpeg on PATH and the imageio-ffmpeg binary is unavailable ({e}); "
            "install FFmpeg or give its path"
        ) from None


def _bankersEven(expr):
    """
    FFmpeg expression for C{profiles._even}: C{2 × round-half-to-even(x / 2)},
    at least 2. (FFmpeg's C{round} rounds halves away from zero; Python's to
    even, which at an exact half is C{2 × round(v / 2)}.)
    """
    v = f"({expr})/2"
    rounded = f"if(eq({v}-floor({v}),0.5),2*round({v}/2),round({v}))"
    return f"max(2,({rounded})*2)"


def scaleExpressions(profile):
    """
    The C{w} and C{h} expressions for FFmpeg's C{scale}/C{scale_cuda} filters
    that give exactly L{Profile.outputSize} for the filter's input size.

    @return: C{(widthExpression, heightExpression)}
    """
    boxW, boxH = profile.width, profile.height
    # outputSize swaps the box when (ih > iw) != (boxH > boxW).
    swap = "lte(ih,iw)" if boxH > boxW else "gt(ih,iw)"
    bw = f"if({swap},{boxH},{boxW})"
    bh = f"if({swap},{boxW},{boxH})"
    scale = f"min({bw}/iw,{bh}/ih)"
    width = f"max({MIN_WIDTH},min({MAX_SIDE},{_bankersEven(f'iw*{scale}')}))"
    height = f"max({MIN_HEIGHT},min({MAX_SIDE},{_bankersEven(f'ih*{scale}')}))"
    return width, height


def _bFrames(profile, nvidia):
    if profile.encoderProfile in ("baseline", "constrained_high"):
        return 0
    if nvidia and (profile.encoderProfile == "" or profile.fps == 0):
        return 0
    return 3


def _encoderOptions(profile, device):
    nvidia = device is not None
    bitrate = str(profile.bitrate)
    options = {
        "c:v": "h264_nvenc" if nvidia else "libx264",
        "b:v": bitrate,
        "minrate": bitrate,
        "maxrate": bitrate,
        "bufsize": bitrate,
        "forced-idr": "1",
        "bf": str(_bFrames(profile, nvidia)),
    }
    if nvidia:
        options["gpu"] = str(device)
    else:
        options["preset"] = "veryfast"
        options["pix_fmt"] = "yuv420p"
    if profile.encoderProfile:
        options["profile:v"] = "high" if profile.encoderProfile == "constrained_high" else profile.encoderProfile
    if profile.gop == -1:
        options["g"] = "1"
    elif profile.gop > 0:
        if profile.fps > 0:
            options["g"] = str(max(1, round(profile.gop / 1000 * profile.fps / profile.fpsDen)))
        else:
            options["force_key_frames"] = f"expr:gte(t,n_forced*{profile.gop / 1000:g})"
    return options


# How much of a piped input FFmpeg analyses before it decodes. A segment's
# first audio packet can come ~0.7 s of video after its start (FFmpeg's
# MPEG-TS muxer delays audio by up to 0.7 s), and the stream copy of that
# audio needs its sample rate from the probe: 1 s covers it and halves the
# wait for a 2 s segment (bench/README.md, "FFmpeg's probing of pipe input").
PIPE_ANALYZE_MICROSECONDS = 1_000_000


def _muxerOptions(profile):
    if profile.format == "mp4":
        return {"f": "mp4", "movflags": "faststart", "use_editlist": "0"}
    return {"f": "mpegts", "mpegts_copyts": "1"}


def buildCommand(ffmpegPath, inputPath, outputPaths, profiles, device=None):
    """
    The FFmpeg command line transcoding C{inputPath} into one output per
    profile, in a single process, on the CPU (C{device} L{None}) or the given
    NVIDIA GPU.

    Input read from a pipe (C{pipe:0}, a streamed segment still arriving) is
    probed for L{PIPE_ANALYZE_MICROSECONDS} only: by default FFmpeg analyses
    5 s of input before it decodes, more than a whole segment, so it would
    wait for the last byte. When every profile sets its frame rate, the
    input's is not estimated either (C{-fpsprobesize 0}): probing then ends
    as soon as the streams' parameters are known.

    @return: the argument list, C{ffmpegPath} first.
    """
    nvidia = device is not None
    inputOptions = {}
    if inputPath.startswith("pipe:"):
        inputOptions["analyzeduration"] = str(PIPE_ANALYZE_MICROSECONDS)
        if all(profile.fps > 0 for profile in profiles):
            inputOptions["fpsprobesize"] = "0"
    if nvidia:
        inputOptions.update({
            "hwaccel": "cuda",
            "hwaccel_device": str(device),
            "hwaccel_output_format": "cuda",
        })
    source = ffmpegpy.input(inputPath, **inputOptions)
    video = source["v:0"]
    if len(profiles) > 1:
        split = video.filter_multi_output("split", len(profiles))
        branches = [split.stream(i) for i in range(len(profiles))]
    else:
        branches = [video]
    outputs = []
    for branch, profile, path in zip(branches, profiles, outputPaths):
        width, height = scaleExpressions(profile)
        scaled = branch.filter("scale_cuda" if nvidia else "scale", w=width, h=height)
        if profile.fps > 0:
            scaled = scaled.filter("fps", fps=f"{profile.fps}/{profile.fpsDen}")
        options = _encoderOptions(profile, device)
        options.update(_muxerOptions(profile))
        options["c:a"] = "copy"
        outputs.append(ffmpegpy.output(scaled, source["a?"], path, **options))
    globalArgs = ["-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+verbose", "-y", "-copyts"]
    return [ffmpegPath, *globalArgs, *ffmpegpy.merge_outputs(*outputs).get_args()]


_LINE = re.compile(r"^(?:\[[^\]]* @ 0x[0-9a-fA-F]+\] )*(?:\[(?P<level>[a-z]+)\] )?(?P<text>.*)$")
_SECTION = re.compile(r"^(?P<kind>Input|Output) #(?P<file>\d+), .*(?:from|to) '(?P<path>.*)':$")
_VIDEO_STREAM = re.compile(r"^\s*Stream #(?P<file>\d+):(?P<stream>\d+)\S*: Video: (?P<rest>.*)$")
_SIZE = re.compile(r"\s(?P<w>\d+)x(?P<h>\d+)(?=[\s,\[]|$)")
_DECODED = re.compile(r"^\s*Input stream #0:(?P<stream>\d+) \(video\): .*?(?P<frames>\d+) frames decoded")
_ENCODED = re.compile(r"^\s*Output stream #(?P<file>\d+):(?P<stream>\d+) \(video\): (?P<frames>\d+) frames encoded")


class _LogParser:
    """
    Reads FFmpeg's C{level+verbose} log line by line and keeps what we need:
    the input video size, each output's video size, decoded and encoded frame
    counts, and the last lines (and error lines) for error messages.
    """

    def __init__(self):
        self._buffer = b""
        self._section = None
        self.inputSize = None
        self.inputVideoStream = None
        self.decodedFrames = {}
        self.outputPaths = {}
        self.outputSizes = {}
        self.encodedFrames = {}
        self.tail = deque(maxlen=_TAIL_LINES)
        self.errors = deque(maxlen=_TAIL_LINES)

    def feed(self, data):
        self._buffer += data.replace(b"\r", b"\n")
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > 65536:
            lines.append(self._buffer)
            self._buffer = b""
        for line in lines:
            self._line(line.decode("utf-8", "replace"))

    def close(self):
        if self._buffer:
            self._line(self._buffer.decode("utf-8", "replace"))
            self._buffer = b""

    def _line(self, raw):
        if not raw.strip():
            return
        match = _LINE.match(raw)
        level, text = match.group("level"), match.group("text")
        self.tail.append(raw)
        if level in _ERROR_LEVELS:
            self.errors.append(text)
        section = _SECTION.match(text)
        if section:
            self._section = (section.group("kind"), int(section.group("file")))
            if section.group("kind") == "Output":
                self.outputPaths[int(section.group("file"))] = section.group("path")
            return
        stream = _VIDEO_STREAM.match(text)
        if stream and self._section is not None:
            size = _SIZE.search(" " + stream.group("rest"))
            if size:
                kind, fileIndex = self._section
                dimensions = (int(size.group("w")), int(size.group("h")))
                if kind == "Input" and fileIndex == 0 and self.inputSize is None:
                    self.inputSize = dimensions
                    self.inputVideoStream = int(stream.group("stream"))
                elif kind == "Output" and int(stream.group("file")) == fileIndex:
                    self.outputSizes.setdefault(fileIndex, dimensions)
            return
        if text.startswith("Stream mapping:"):
            self._section = None
            return
        decoded = _DECODED.match(text)
        if decoded:
            self.decodedFrames[int(decoded.group("stream"))] = int(decoded.group("frames"))
            return
        encoded = _ENCODED.match(text)
        if encoded:
            self.encodedFrames.setdefault(int(encoded.group("file")), int(encoded.group("frames")))

    def tailText(self):
        """
        The kept log lines, as text.
        """
        return "\n".join(self.tail)

    def cause(self, lines=4):
        """
        The most telling last lines: FFmpeg's last error lines, or its last
        lines if it logged no error.
        """
        chosen = list(self.errors)[-lines:] or [_LINE.match(line).group("text") for line in list(self.tail)[-lines:]]
        return " | ".join(line.strip() for line in chosen if line.strip())


WORK_DIR_PREFIX = "transcode-"
INPUT_NAME = "input.tempfile"


def _describeError(error):
    """
    An exception as text, without the file name an L{OSError} carries (the
    work directory's path is nobody's business but ours).
    """
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


class _Job:
    """
    One segment being transcoded: work directory, process, timers, result.
    """

    _log = Logger()

    def __init__(self, transcoder, segment, profiles, device, timeout):
        self._reactor = transcoder._reactor
        self._transcoder = transcoder
        self._segment = segment
        self._profiles = list(profiles)
        self._device = device
        self._timeout = timeout
        self._parser = _LogParser()
        self._cancelled = False
        self._process = None
        self._workDir = None
        self.result = defer.Deferred(self._cancel)

    def start(self):
        """
        Write the input (off the reactor thread), then spawn FFmpeg.
        """
        d = self._inThread(self._prepareFiles)
        d.addCallbacks(self._spawn, self._prepareFailed)
        return self.result

    def _inThread(self, function, *args):
        return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), function, *args)

    def _prepareFiles(self):
        ffmpegPath = self._transcoder._ffmpegPath
        if shutil.which(ffmpegPath) is None:
            raise TranscodeError(f"FFmpeg executable {ffmpegPath!r} not found or not executable")
        workDir = tempfile.mkdtemp(prefix=WORK_DIR_PREFIX, dir=self._transcoder._workDir)
        try:
            inputPath = os.path.join(workDir, INPUT_NAME)
            fd = os.open(inputPath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
            with os.fdopen(fd, "wb") as f:
                f.write(self._segment)
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return workDir

    def _prepareFailed(self, failure):
        if self._cancelled:
            self.result.unpause()
            return
        if failure.check(TranscodeError):
            self.result.errback(failure)
        else:
            self.result.errback(TranscodeError(f"cannot prepare the work files: {_describeError(failure.value)}"))

    def _spawn(self, workDir):
        self._workDir = workDir
        if self._cancelled:
            self._finishWith(None)
            return
        ffmpegPath = self._transcoder._ffmpegPath
        try:
            # FFmpeg runs in the work directory and sees only names relative
            # to it, so no path of ours appears in what it logs.
            self._outputNames = [f"out{index}{profile.extension}" for index, profile in enumerate(self._profiles)]
            args = buildCommand(ffmpegPath, INPUT_NAME, self._outputNames, self._profiles, self._device)
            self._process = ProcessRun(self._reactor, args[0], args[1:], timeout=self._timeout,
                                       killGrace=KILL_GRACE, path=self._workDir, onStderr=self._parser.feed)
        except Exception as e:
            self._finishWith(Failure(TranscodeError(f"cannot start FFmpeg: {_describeError(e)}")))
            return
        self._process.ended.addCallback(self._ended)

    def _cancel(self, result):
        self._cancelled = True
        if self._process is not None:
            self._process.stop()
        # Deliver the CancelledError only after FFmpeg is reaped and the work
        # files are gone (see _ended).
        result.pause()

    def _ended(self, process):
        self._parser.close()
        try:
            outcome = self._outcome(process)
        except Exception as e:
            outcome = Failure(e)
        if outcome is self._COLLECT:
            d = self._inThread(self._collect, process.seconds)
            d.addBoth(self._finishWith)
        else:
            self._finishWith(outcome)

    _COLLECT = object()

    def _finishWith(self, outcome):
        d = self._inThread(self._removeWorkDir)
        d.addErrback(lambda f: self._log.failure("Could not remove a work directory", f))
        d.addCallback(lambda _: self._deliver(outcome))

    def _deliver(self, outcome):
        if self._cancelled:
            self.result.unpause()
        elif isinstance(outcome, Failure):
            self.result.errback(outcome)
        else:
            self.result.callback(outcome)

    def _outcome(self, process):
        if self._cancelled:
            return None
        if process.timedOut:
            self._log.warn("transcode timed out after {timeout}s; FFmpeg stopped", timeout=self._timeout)
            return Failure(
                TranscodeError(f"transcode timed out after {self._timeout:g}s", self._parser.tailText())
            )
        if not process.succeeded:
            if process.signal is not None:
                what = f"FFmpeg was killed by signal {signal.Signals(process.signal).name}"
            else:
                what = f"FFmpeg exited with status {process.exitCode}"
            return Failure(TranscodeError(f"{what}: {self._parser.cause()}", self._parser.tailText(),
                                          process.exitCode))
        return self._COLLECT

    def _collect(self, seconds):
        # Runs in a thread: reads the renditions back.
        def read(name):
            with open(os.path.join(self._workDir, name), "rb") as f:
                return f.read()

        return self._counted(seconds, read)

    def _counted(self, seconds, renditionData):
        # What FFmpeg's log says it decoded and encoded, with each
        # rendition's bytes from renditionData(outputName).
        parser = self._parser

        def missing(what):
            return TranscodeError(
                f"FFmpeg succeeded but its log does not show {what}: {parser.cause()}", parser.tailText(), 0
            )

        if parser.inputSize is None or parser.inputVideoStream not in parser.decodedFrames:
            raise missing("the input video size and decoded frames")
        decodedFrames = parser.decodedFrames[parser.inputVideoStream]
        inW, inH = parser.inputSize
        byPath = {path: index for index, path in parser.outputPaths.items()}
        renditions = []
        for profile, name in zip(self._profiles, self._outputNames):
            index = byPath.get(name)
            if index is None or index not in parser.outputSizes or index not in parser.encodedFrames:
                raise missing(f"the size and frames of rendition {profile.name!r}")
            width, height = parser.outputSizes[index]
            frames = parser.encodedFrames[index]
            renditions.append(RenditionOutput(profile, renditionData(name), width, height, frames,
                                              frames * width * height))
        return TranscodeOutput(decodedFrames, decodedFrames * inW * inH, renditions, seconds)

    def _removeWorkDir(self):
        if self._workDir is not None:
            shutil.rmtree(self._workDir, ignore_errors=True)
            self._workDir = None


# Rendition bytes are handed on in pieces of at least this much (the last
# piece of each rendition excepted), not in every 8 KiB read of its pipe:
# each piece is one message the orchestrator parses, and what is still
# waiting when FFmpeg exits crosses the link after it. 256 KiB saved the
# orchestrator about 8% of its CPU but made segments 0.06-0.1 s slower over
# the WAN benchmark's links (bench/README.md, section 5).
RENDITION_PIECE_BYTES = 64 * 1024
# FFmpeg's first rendition pipe: pipe:3 for the first profile, pipe:4 ...
FIRST_OUTPUT_FD = 3
STREAM_INPUT = "pipe:0"


class StreamedSegment:
    """
    A segment whose bytes arrive in pieces (from the orchestrator) while it
    may already be transcoding: pieces wait here until a job attaches, then
    go straight on to it.

    @ivar size: the declared size in bytes, or L{None} when unknown.
    @ivar received: the bytes received so far.
    @ivar ended: whether the last piece has arrived.
    """

    def __init__(self, size=None):
        self.size = size
        self.received = 0
        self.ended = False
        self._waiting = []
        self._write = self._end = None

    def write(self, data):
        """
        The segment's next piece.

        @raise ValueError: it ended already, or the piece takes it over its
            declared size.
        """
        if self.ended:
            raise ValueError("segment data after its end")
        self.received += len(data)
        if self.size is not None and self.received > self.size:
            raise ValueError(f"segment data over its declared {self.size} bytes")
        if self._write is not None:
            self._write(data)
        else:
            self._waiting.append(data)

    def end(self):
        """
        The last piece has arrived.

        @raise ValueError: fewer bytes arrived than declared.
        """
        if self.size is not None and self.received != self.size:
            raise ValueError(f"segment ended after {self.received} of its declared {self.size} bytes")
        self.ended = True
        if self._end is not None:
            self._end()

    def attach(self, write, end):
        """
        Send the pieces received so far, and every later one, to C{write};
        call C{end} once the last has arrived.
        """
        waiting, self._waiting = self._waiting, []
        for data in waiting:
            write(data)
        self._write, self._end = write, end
        if self.ended:
            end()

    def detach(self):
        """
        Drop whatever arrives from now on (the job is over).
        """
        self._write = self._end = None
        self._waiting = []


class _PipeJob(_Job):
    """
    One streamed segment: FFmpeg reads it from its stdin as it arrives and
    writes each rendition to its own pipe (C{pipe:3}, C{pipe:4}, ...), whose
    bytes are handed on as FFmpeg writes them. No file is written.
    """

    def __init__(self, transcoder, segment, profiles, device, timeout, onRenditionData):
        super().__init__(transcoder, segment, profiles, device, timeout)
        self._onRenditionData = onRenditionData
        self._pending = [[] for _ in self._profiles]
        self._pendingBytes = [0] * len(self._profiles)
        self._sizes = [0] * len(self._profiles)

    def start(self):
        """
        Spawn FFmpeg at once and feed it the segment as it arrives.
        """
        ffmpegPath = self._transcoder._ffmpegPath
        count = len(self._profiles)
        self._outputNames = [f"pipe:{FIRST_OUTPUT_FD + index}" for index in range(count)]
        try:
            args = buildCommand(ffmpegPath, STREAM_INPUT, self._outputNames, self._profiles, self._device)
            self._process = ProcessRun(
                self._reactor, args[0], args[1:], timeout=self._timeout, killGrace=KILL_GRACE,
                path=self._transcoder._workDir, onStderr=self._parser.feed, stdinPipe=True,
                outputFDs=range(FIRST_OUTPUT_FD, FIRST_OUTPUT_FD + count), onOutput=self._output)
        except Exception as e:
            self._finishWith(Failure(TranscodeError(f"cannot start FFmpeg: {_describeError(e)}")))
            return self.result
        self._process.ended.addCallback(self._ended)
        self._segment.attach(self._process.writeStdin, self._process.closeStdin)
        return self.result

    def _output(self, fd, data):
        index = fd - FIRST_OUTPUT_FD
        self._sizes[index] += len(data)
        self._pending[index].append(data)
        self._pendingBytes[index] += len(data)
        if self._pendingBytes[index] >= RENDITION_PIECE_BYTES:
            self._handOn(index)

    def _handOn(self, index):
        pieces, self._pending[index], self._pendingBytes[index] = self._pending[index], [], 0
        if pieces and not self._cancelled:
            self._onRenditionData(index, b"".join(pieces))

    def _ended(self, process):
        self._segment.detach()
        for index in range(len(self._profiles)):
            self._handOn(index)
        super()._ended(process)

    def _collect(self, seconds):
        # The renditions follow the profiles, as do the sizes counted.
        output = self._counted(seconds, lambda name: None)
        for rendition, size in zip(output.renditions, self._sizes):
            rendition.size = size
        return output

    def _inThread(self, function, *args):
        # Nothing to read or remove on disk: no thread needed.
        return defer.maybeDeferred(function, *args)


class FFmpegTranscoder:
    """
    Transcodes segments with one FFmpeg process each.

    @ivar running: the number of FFmpeg processes not yet reaped.
    """

    _log = Logger()

    def __init__(self, reactor, ffmpegPath, workDir, timeout=60.0):
        """
        @param reactor: provides C{spawnProcess} and C{callLater}.
        @param ffmpegPath: the FFmpeg executable (see L{findFFmpeg}).
        @param workDir: an existing directory for per-segment work files.
        @param timeout: default seconds a transcode may take before FFmpeg is killed.
        """
        self._reactor = reactor
        self._ffmpegPath = ffmpegPath
        self._workDir = os.path.abspath(workDir)
        self._timeout = timeout
        self.running = 0

    def removeStaleWorkFiles(self):
        """
        Remove the per-segment work directories a previous run left behind
        (a crash, or a kill after the stop timeout). Call before any transcode.

        @return: how many were removed.
        """
        removed = 0
        for path in glob.glob(os.path.join(self._workDir, WORK_DIR_PREFIX + "*")):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        return removed

    def transcode(self, segment, profiles, device=None, timeout=None):
        """
        Transcode one segment into one rendition per profile.

        @param segment: the input (MPEG-TS or anything FFmpeg can read).
        @param profiles: the L{Profile}s to encode, in order.
        @param device: an NVIDIA GPU index (as a string) to decode, scale and
            encode on, or L{None} for the CPU.
        @param timeout: seconds before FFmpeg is killed; the default if L{None}.
        @return: a L{Deferred} firing with a L{TranscodeOutput} whose
            renditions follow C{profiles}, or failing with L{TranscodeError}.
            Cancelling it kills FFmpeg; it then fails with C{CancelledError}
            once the process is reaped and the work files removed.
        """
        return self._run(_Job, segment, profiles, device, timeout)

    def transcodeStream(self, segment, profiles, onRenditionData, device=None, timeout=None):
        """
        Transcode a segment that is still arriving, through pipes: FFmpeg
        starts at once, reads the segment from its stdin as it arrives, and
        writes each rendition (MPEG-TS only: it needs no seeking) to its own
        pipe, whose bytes are handed on as they come.

        @param segment: a L{StreamedSegment}.
        @param onRenditionData: called with C{(index, bytes)}, C{index} the
            rendition's place in C{profiles}, in the order FFmpeg wrote them;
            never after the result fires.
        @return: as L{transcode}, but each L{RenditionOutput} has C{data}
            L{None} and its C{size}; C{onRenditionData} has had every byte
            before the result fires.
        """
        notTS = [p.name for p in profiles if p.format != "mpegts"]
        if notTS:
            return defer.fail(TranscodeError(f"streamed renditions must be mpegts, not {', '.join(notTS)}"))
        return self._run(_PipeJob, segment, profiles, device, timeout, onRenditionData)

    def _run(self, jobClass, segment, profiles, device, timeout, *extra):
        if not profiles:
            return defer.fail(TranscodeError("no renditions requested"))
        if device is not None and not str(device).isdigit():
            return defer.fail(TranscodeError(f"invalid GPU device {device!r}: expected an index like 0"))
        job = jobClass(self, segment, profiles, device, self._timeout if timeout is None else timeout, *extra)
        self.running += 1

        def finished(result):
            self.running -= 1
            return result

        job.result.addBoth(finished)
        return job.start()
