# -*- test-case-name: tests.test_push -*-
"""
Cut a video file into MPEG-TS segments, as a live gateway receives them.

One FFmpeg process does the cutting with the C{segment} muxer. Stream copy is
tried first; when the input's key frames are too far apart for the requested
segment length (copy can only cut at key frames), or its codecs cannot go into
MPEG-TS, the file is re-encoded with a key frame forced every segment.
"""

import csv
import os
from typing import NamedTuple

import ffmpeg
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from livepeer_tx.processes import runProcess
from livepeer_tx.transcoder.ffmpeg import FFmpegNotFound, findFFmpeg

_log = Logger()

SEGMENT_PATTERN = "%05d.ts"
SEGMENT_LIST = "segments.csv"
# A copied segment longer than this many times the target means the input's
# key frames are too sparse to cut there.
SPARSE_KEYFRAME_FACTOR = 1.5


class SegmenterError(Exception):
    """
    FFmpeg could not segment (or generate) a file; the message has its stderr tail.
    """


class Segment(NamedTuple):
    """
    One cut segment: its file and its duration in milliseconds.
    """

    path: str
    durationMs: int


def findFFmpegExecutable():
    """
    The FFmpeg executable, found as the transcoder finds it.

    @raise SegmenterError: there is none.
    """
    try:
        return findFFmpeg()
    except FFmpegNotFound as e:
        raise SegmenterError(str(e)) from None


async def _runFFmpeg(reactor, ffmpegPath, stream, what):
    args = ["-hide_banner", "-nostdin", "-y", "-loglevel", "error"] + stream.get_args()
    _log.debug("Running {ffmpeg} {args}", ffmpeg=ffmpegPath, args=args)
    result = await runProcess(reactor, ffmpegPath, args)
    if not result.succeeded:
        tail = result.err.decode("utf-8", "replace").strip()[-2000:]
        raise SegmenterError(f"ffmpeg failed to {what} (exit {result.exitCode}): {tail}")


def readSegmentList(listPath):
    """
    Read an FFmpeg C{segment_list_type=csv} file.

    @return: a list of L{Segment}, paths made absolute next to the list file.
    """
    directory = os.path.dirname(os.path.abspath(listPath))
    segments = []
    with open(listPath, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 3:
                continue
            name, start, end = row[0], float(row[1]), float(row[2])
            segments.append(
                Segment(os.path.join(directory, name), int(round((end - start) * 1000)))
            )
    return segments


def _clearOutputs(outDir):
    for name in os.listdir(outDir):
        if name.endswith(".ts") or name == SEGMENT_LIST:
            os.remove(os.path.join(outDir, name))


def segmentFile(
    reactor, inputPath, outDir, segmentSeconds=2.0, reencode=None, ffmpegPath=None
):
    """
    Cut C{inputPath} into MPEG-TS segments of about C{segmentSeconds} each.

    @param reactor: the reactor FFmpeg is spawned with.
    @param outDir: an existing directory that receives C{00000.ts}, C{00001.ts}, ...
        and the C{segments.csv} list (the caller owns and removes it).
    @param reencode: C{True} always re-encodes (H.264/AAC, a key frame every
        segment), C{False} only copies, C{None} copies and falls back to
        re-encoding when copying fails or gives segments that are too long.
    @param ffmpegPath: the FFmpeg executable; found automatically if C{None}.
    @return: a L{Deferred} firing with the list of L{Segment}s, in order, or
        failing with L{SegmenterError} when FFmpeg failed or produced no segment.
    """
    return Deferred.fromCoroutine(
        _segmentFile(reactor, inputPath, outDir, segmentSeconds, reencode, ffmpegPath)
    )


async def _segmentFile(reactor, inputPath, outDir, segmentSeconds, reencode, ffmpegPath):
    if not os.path.isfile(inputPath):
        raise SegmenterError(f"input file not found: {inputPath}")
    ffmpegPath = ffmpegPath or findFFmpegExecutable()
    listPath = os.path.join(outDir, SEGMENT_LIST)
    if not reencode:
        try:
            await _runFFmpeg(
                reactor, ffmpegPath, _segmentCommand(inputPath, outDir, segmentSeconds, False), "segment"
            )
            segments = readSegmentList(listPath)
        except SegmenterError:
            if reencode is False:
                raise
            _log.info("Stream copy failed; re-encoding {input}", input=inputPath)
            segments = []
        else:
            longest = max((s.durationMs for s in segments), default=0)
            if reencode is False or longest <= SPARSE_KEYFRAME_FACTOR * segmentSeconds * 1000:
                return _checked(segments, inputPath)
            _log.info(
                "Key frames of {input} are too sparse for {seconds} s segments "
                "(longest copied segment {longest} ms); re-encoding",
                input=inputPath,
                seconds=segmentSeconds,
                longest=longest,
            )
        _clearOutputs(outDir)
    await _runFFmpeg(
        reactor, ffmpegPath, _segmentCommand(inputPath, outDir, segmentSeconds, True), "segment"
    )
    return _checked(readSegmentList(listPath), inputPath)


def _checked(segments, inputPath):
    if not segments:
        raise SegmenterError(f"ffmpeg produced no segment from {inputPath}")
    return segments


def _segmentCommand(inputPath, outDir, segmentSeconds, reencode):
    codecs = (
        {
            "vcodec": "libx264",
            "preset": "veryfast",
            "pix_fmt": "yuv420p",
            "force_key_frames": f"expr:gte(t,n_forced*{segmentSeconds:g})",
            "acodec": "aac",
        }
        if reencode
        else {"c": "copy"}
    )
    return ffmpeg.input(inputPath).output(
        os.path.join(outDir, SEGMENT_PATTERN),
        f="segment",
        segment_format="mpegts",
        segment_time=f"{segmentSeconds:g}",
        segment_list=os.path.join(outDir, SEGMENT_LIST),
        segment_list_type="csv",
        **codecs,
    )


def generateTestClip(
    reactor,
    path,
    seconds=6,
    width=1280,
    height=720,
    fps=30,
    keyframeSeconds=2,
    audio=True,
    ffmpegPath=None,
):
    """
    Write a synthetic H.264/AAC clip (FFmpeg's C{testsrc2} pattern and a sine
    tone) with a key frame every C{keyframeSeconds}; the container follows
    C{path}'s extension.

    @return: a L{Deferred} firing with C{path}, or failing with
        L{SegmenterError}.
    """
    return Deferred.fromCoroutine(
        _generateTestClip(
            reactor, path, seconds, width, height, fps, keyframeSeconds, audio, ffmpegPath
        )
    )


async def _generateTestClip(
    reactor, path, seconds, width, height, fps, keyframeSeconds, audio, ffmpegPath
):
    ffmpegPath = ffmpegPath or findFFmpegExecutable()
    video = ffmpeg.input(
        f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}", f="lavfi"
    )
    streams = [video]
    options = {
        "vcodec": "libx264",
        "preset": "veryfast",
        "pix_fmt": "yuv420p",
        "g": int(keyframeSeconds * fps),
        "keyint_min": int(keyframeSeconds * fps),
        "sc_threshold": 0,
    }
    if audio:
        streams.append(
            ffmpeg.input(f"sine=frequency=440:sample_rate=48000:duration={seconds}", f="lavfi")
        )
        options["acodec"] = "aac"
    await _runFFmpeg(
        reactor, ffmpegPath, ffmpeg.output(*streams, path, **options), "generate a test clip"
    )
    return path


__all__ = [
    "Segment",
    "SegmenterError",
    "segmentFile",
    "readSegmentList",
    "generateTestClip",
    "findFFmpegExecutable",
]
