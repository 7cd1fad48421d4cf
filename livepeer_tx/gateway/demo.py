# -*- test-case-name: tests.test_push -*-
"""
C{livepeer-tx demo}: the README quick start in one command.

It generates a test clip, starts an orchestrator and a transcoder on this
machine with L{livepeer_tx.gateway.launcher.NodeLauncher}, pushes the clip through them
with L{livepeer_tx.gateway.push.SegmentPusher}, writes the renditions and stops
both nodes.
"""

import os
import re
import shutil
import signal
import sys
import tempfile
import time

from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThreadPool

from livepeer_tx.gateway.push import (
    SegmentPusher,
    pushSegments,
    summarize,
    writeRenditions,
)
from livepeer_tx.gateway.segmenter import findFFmpegExecutable, generateTestClip, segmentFile
from livepeer_tx.gateway.launcher import REGISTRATION_LOG, NodeLauncher
from livepeer_tx.processes import runProcess
from livepeer_tx.profiles import parsePresetList

DEMO_PROFILES = "P240p30fps16x9,P360p30fps16x9,P720p30fps16x9"
SEGMENT_SECONDS = 2
_VIDEO_SIZE = re.compile(rb"Video: .*?, (\d{2,5})x(\d{2,5})")


async def probeVideoSize(reactor, path, ffmpegPath=None):
    """
    The width and height of the first video stream of C{path}, read from
    C{ffmpeg -i}'s stream description, or C{None}.
    """
    ffmpegPath = ffmpegPath or findFFmpegExecutable()
    result = await runProcess(reactor, ffmpegPath, ["-hide_banner", "-nostdin", "-i", path])
    match = _VIDEO_SIZE.search(result.err)
    return (int(match.group(1)), int(match.group(2))) if match else None


class _Printer:
    def __init__(self, stream):
        self._stream = stream
        self._started = time.monotonic()

    def __call__(self, text=""):
        print(text, file=self._stream, flush=True)

    def step(self, text):
        self(f"[{time.monotonic() - self._started:5.1f}s] {text}")


async def runDemo(reactor, args, stream=None):
    """
    Run the demo.

    @param args: an object with C{out} (rendition directory), C{workDir} (or
        C{None} for a temporary one), C{maxSessions}, C{clipSeconds} (the
        generated clip's length) and C{clipSize} (its C{(width, height)}).
    @param stream: where to print (default: stdout).
    @return: the exit status, 0 when every segment was transcoded.
    """
    say = _Printer(stream or sys.stdout)
    workDir = args.workDir or tempfile.mkdtemp(prefix="livepeer-tx-demo-")
    os.makedirs(workDir, exist_ok=True)
    outDir = os.path.abspath(args.out)
    profiles = parsePresetList(DEMO_PROFILES)
    pool = reactor.getThreadPool()
    nodes = NodeLauncher(workDir)
    # On Ctrl-C, stop the nodes first: waits on their logs then end at once.
    stopTrigger = reactor.addSystemEventTrigger("before", "shutdown", nodes.stopAll, 3.0)
    ok = False
    try:
        say.step(f"work directory {workDir}")
        clipPath = os.path.join(workDir, "clip.ts")
        clipWidth, clipHeight = args.clipSize
        say.step(
            f"generating a {args.clipSeconds} s {clipWidth}x{clipHeight} test clip with audio, "
            "and starting an orchestrator"
        )
        _, orchestrator = await gatherResults(
            [
                generateTestClip(
                    reactor, clipPath, seconds=args.clipSeconds, width=clipWidth, height=clipHeight,
                    keyframeSeconds=SEGMENT_SECONDS,
                ),
                deferToThreadPool(reactor, pool, nodes.startOrchestrator),
            ],
            consumeErrors=True,
        )
        say.step(
            f"orchestrator up: {orchestrator.publicUrl} (CLI http://{orchestrator.cliAddr}), "
            f"certificate SHA-256 {orchestrator.fingerprint}"
        )
        since = orchestrator.logOffset()
        await deferToThreadPool(
            reactor, pool, nodes.startTranscoder, orchestrator, maxSessions=args.maxSessions
        )
        match = await deferToThreadPool(
            reactor, pool, orchestrator.waitForLog, REGISTRATION_LOG, 60.0, since
        )
        say.step(
            f"transcoder registered: transcoder={match.group('transcoder')} "
            f"capacity={match.group('capacity')}"
        )
        segmentDir = os.path.join(workDir, "segments")
        os.makedirs(segmentDir, exist_ok=True)
        segments = await segmentFile(reactor, clipPath, segmentDir, SEGMENT_SECONDS)
        say.step(
            f"pushing {len(segments)} segments for {DEMO_PROFILES} to {orchestrator.publicUrl}/segment"
        )
        pusher = SegmentPusher(
            reactor, orchestrator.serviceAddr, orchestrator.clientTLSOptions(), profiles, "demo"
        )
        try:
            results = await pushSegments(
                reactor,
                pusher,
                segments,
                onResult=lambda result: _report(reactor, say, result, outDir),
            )
        finally:
            await pusher.close()
        summary = summarize(results)
        ok = summary["failed"] == 0 and summary["segments"] == len(segments)
        say()
        say(
            f"{summary['ok']}/{summary['segments']} segments transcoded; latency "
            f"p50 {_ms(summary['latencyP50'])}, p95 {_ms(summary['latencyP95'])}; "
            f"{summary['pixels']} pixels encoded"
        )
        if ok:
            say(f"renditions written under {outDir}/<profile>/<seq>.ts")
    except Exception as e:
        say.step(f"FAILED: {type(e).__name__}: {e}")
    finally:
        if not ok:
            for node in nodes.nodes:
                say(f"--- last lines of {node.logPath} ---\n{node.logTail(20)}")
        say.step("stopping the transcoder and the orchestrator")
        statuses = await deferToThreadPool(reactor, pool, nodes.close)
        reactor.removeSystemEventTrigger(stopTrigger)
        say.step(
            "stopped: "
            + ", ".join(f"{name} ({_describeExit(status)})" for name, status in statuses.items())
        )
    if ok and not args.workDir:
        shutil.rmtree(workDir, ignore_errors=True)
    elif not ok:
        say(f"node logs kept in {workDir}")
    return 0 if ok else 1


def _describeExit(status):
    if status is None:
        return "not started"
    if status < 0:
        try:
            return f"ended by {signal.Signals(-status).name}"
        except ValueError:
            return f"ended by signal {-status}"
    return f"exit status {status}"


def _ms(seconds):
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


async def _report(reactor, say, result, outDir):
    if not result.ok:
        say(f"  segment {result.seq}: FAILED status={result.status} error={result.error}")
        return
    say(
        f"  segment {result.seq}: {result.durationMs} ms of video, "
        f"latency {_ms(result.latency)} (upload {_ms(result.uploadSeconds)}, "
        f"transcode {_ms(result.transcodeSeconds)}, download {_ms(result.downloadSeconds)})"
    )
    paths = await writeRenditions(reactor, result, outDir)
    for rendition, path in zip(result.renditions, paths):
        size = await probeVideoSize(reactor, path)
        resolution = f"{size[0]}x{size[1]}" if size else "?x?"
        say(
            f"    {rendition.profile:<16} {resolution:>9}  {rendition.pixels:>10} pixels  "
            f"{len(rendition.data):>8} bytes  {os.path.relpath(path)}"
        )
