# -*- test-case-name: tests.test_bench -*-
"""
Benchmark 1: one segment through gateway -> orchestrator -> transcoder -> back,
against running the transcoder's own FFmpeg command on the same input directly.

A 2 s 1080p30 H.264/AAC MPEG-TS clip is generated; a real orchestrator and a
real CPU transcoder run as C{twistd -n} processes on 127.0.0.1
(L{tests.localnodes.LocalNodes}); segments are pushed one after the other
with L{livepeer_tx.gateway.push.SegmentPusher} (upload, transcode, rendition
downloads). The direct runs execute the command built by
L{livepeer_tx.transcoder.ffmpeg.buildCommand} for the same input and ladder.
Runs are interleaved (direct, pushed, direct, pushed, ...) after one warm-up
of each. Prints the medians and their ratio (target <= 1.10).

    .venv/bin/python bench/e2e_vs_direct.py [--segments 5] [--wan]

With C{--wan} the gateway's and the transcoder's connections to the
orchestrator go through shaping relays (L{shaping.ShapingRelay}; the
orchestrator advertises the gateway relay's address, so rendition downloads
cross that link too), and two transcoders serve two streams: one takes
streamed segments (the default), the other runs with C{--noStreaming}
(store-and-forward). Each interleaved round runs FFmpeg directly, pushes the
streamed stream's segment with the relays passing bytes straight through,
then each stream's segment with the relays shaping.
"""

import argparse
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    LADDER, PROJECT_ROOT, cpuSeconds, ladder, median, printHeader, printTable, verdict,
)
from shaping import Shape, ShapingRelay  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.threads import deferToThreadPool  # noqa: E402
from twisted.internet.utils import getProcessOutputAndValue  # noqa: E402

from livepeer_tx.gateway.push import SegmentPusher  # noqa: E402
from tests.localnodes import REGISTRATION_LOG, LocalNodes, freePort  # noqa: E402
from livepeer_tx.transcoder.ffmpeg import buildCommand, findFFmpeg  # noqa: E402
from tests.media import makeClip  # noqa: E402

TARGET_RATIO = 1.10
#: The WAN links of --wan (issue 10): gateway <-> orchestrator and
#: orchestrator <-> transcoder, (Mbit/s, one-way ms) each way.
GATEWAY_LINK = (100, 20)
TRANSCODER_LINK = (50, 30)
TARGET_WAN_STREAMING_RATIO = 1.15
_DONE = re.compile(r"Transcoding done for taskId=(\d+) dur=([0-9.]+)s")


async def runDirect(reactor, ffmpegPath, inputPath, profiles, workDir):
    """
    Run the transcoder's FFmpeg command on C{inputPath} once.

    @return: the wall time in seconds.
    """
    outDir = tempfile.mkdtemp(prefix="direct-", dir=workDir)
    try:
        outputs = [os.path.join(outDir, f"out{i}{p.extension}") for i, p in enumerate(profiles)]
        args = buildCommand(ffmpegPath, inputPath, outputs, profiles)
        started = time.perf_counter()
        _, err, code = await getProcessOutputAndValue(args[0], args[1:], env=dict(os.environ), reactor=reactor)
        elapsed = time.perf_counter() - started
        if code != 0:
            raise RuntimeError(f"FFmpeg failed ({code}): {err[-800:].decode('utf-8', 'replace')}")
        return elapsed
    finally:
        shutil.rmtree(outDir, ignore_errors=True)


async def main(reactor, args):
    """
    Run the benchmark and print its table.
    """
    printHeader("e2e_vs_direct: gateway -> orchestrator -> transcoder -> back vs. FFmpeg directly")
    profiles = ladder()
    workDir = tempfile.mkdtemp(prefix="bench-e2e-")
    pool = reactor.getThreadPool()
    nodes = LocalNodes(workDir)
    try:
        ffmpegPath = findFFmpeg()
        clip = os.path.join(workDir, "source-1080p.ts")
        await deferToThreadPool(reactor, pool, makeClip, clip, 1920, 1080, 2, 30, True, ffmpegPath)
        with open(clip, "rb") as f:
            data = f.read()
        print(f"source: 2 s 1920x1080 30 fps H.264 + AAC, {len(data)} bytes; ladder {LADDER}; "
              f"FFmpeg {ffmpegPath}")
        relays = []
        if args.wan:
            # The orchestrator listens on one port and advertises the gateway
            # relay's (so the rendition downloads cross the link too); the
            # transcoder dials the transcoder relay.
            listenPort = freePort()
            gatewayRelay = ShapingRelay(reactor, "127.0.0.1", listenPort, Shape.mbit(*GATEWAY_LINK),
                                        Shape.mbit(*GATEWAY_LINK))
            transcoderRelay = ShapingRelay(reactor, "127.0.0.1", listenPort, Shape.mbit(*TRANSCODER_LINK),
                                           Shape.mbit(*TRANSCODER_LINK))
            relays = [gatewayRelay, transcoderRelay]
            gatewayPort = (await gatewayRelay.listen()).getHost().port
            transcoderPort = (await transcoderRelay.listen()).getHost().port
            orchestrator = await deferToThreadPool(
                reactor, pool, lambda: nodes.startOrchestrator(
                    serviceAddr=f"127.0.0.1:{gatewayPort}", httpAddr=f"127.0.0.1:{listenPort}",
                    maxSessionsPerAddress=2))
            # The streaming transcoder registers first and takes the first
            # stream's session; the store-and-forward one, started once that
            # session is taken, gets the second (each has room for one).
            transcoder = await deferToThreadPool(
                reactor, pool, lambda: nodes.startTranscoder(orchestrator, 1, orchAddr=f"127.0.0.1:{transcoderPort}"))
            print(f"WAN: gateway <-> orchestrator {GATEWAY_LINK[0]} Mbit/s, {GATEWAY_LINK[1]} ms one way; "
                  f"orchestrator <-> transcoder {TRANSCODER_LINK[0]} Mbit/s, {TRANSCODER_LINK[1]} ms one way "
                  "(bench/shaping.py relays in this process); each round pushes the streaming transcoder's stream "
                  "once unshaped and once shaped, and the store-and-forward (--noStreaming) transcoder's once shaped")
        else:
            orchestrator = await deferToThreadPool(reactor, pool, nodes.startOrchestrator)
            transcoder = await deferToThreadPool(reactor, pool, nodes.startTranscoder, orchestrator, 1)
        await deferToThreadPool(reactor, pool, orchestrator.waitForLog, REGISTRATION_LOG, 60.0)

        def newPusher(name):
            return SegmentPusher(reactor, orchestrator.serviceAddr, orchestrator.clientTLSOptions(), profiles,
                                 name, timeout=60)

        async def pushOne(pusher, seq):
            result = await pusher.pushSegment(seq, data, 2000)
            if not result.ok:
                raise RuntimeError(f"segment {seq} failed: {result.error}")
            return result

        def shaping(enabled):
            for relay in relays:
                relay.setEnabled(enabled)

        pusher = newPusher("bench-e2e")
        await runDirect(reactor, ffmpegPath, clip, profiles, workDir)
        await pushOne(pusher, 0)
        storeAndForward = None
        if relays:
            # The second transcoder, store-and-forward, for the second stream.
            plain = await deferToThreadPool(reactor, pool, lambda: nodes.startTranscoder(
                orchestrator, 1, orchAddr=f"127.0.0.1:{transcoderPort}", noStreaming=True))
            await deferToThreadPool(reactor, pool, plain.waitForLog, "Successful transcoder registration", 60.0)
            storeAndForward = newPusher("bench-e2e-store-and-forward")
            await pushOne(storeAndForward, 0)
        direct, pushed, uploads, downloads, unshaped, stored, cpu = [], [], [], [], [], [], []

        def cpuSpent():
            # What competes with the transcoder's FFmpeg for the CPUs here:
            # the orchestrator, the transcoder's own process (not its
            # FFmpeg), and this one (gateway, relays).
            return cpuSeconds(orchestrator.pid), cpuSeconds(transcoder.pid), time.process_time()
        seq = 0
        for _ in range(args.segments):
            direct.append(await runDirect(reactor, ffmpegPath, clip, profiles, workDir))
            seq += 1
            if relays:
                shaping(False)
                unshaped.append((await pushOne(pusher, seq)).latency)
                shaping(True)
                stored.append((await pushOne(storeAndForward, seq)).latency)
            before = cpuSpent()
            result = await pushOne(pusher, seq + 1000)
            cpu.append([after - start for start, after in zip(before, cpuSpent())])
            pushed.append(result.latency)
            uploads.append(result.uploadSeconds)
            downloads.append(result.downloadSeconds)
        await pusher.close()
        if storeAndForward is not None:
            await storeAndForward.close()
            tasks = [node.logText().count("Transcoding taskId=") for node in (transcoder, plain)]
            print(f"tasks run: streaming transcoder {tasks[0]}, store-and-forward transcoder {tasks[1]} "
                  f"(expected {1 + 2 * args.segments} and {1 + args.segments})")
        inside = [float(m.group(2)) for m in _DONE.finditer(transcoder.logText())][1:]
    finally:
        await deferToThreadPool(reactor, pool, nodes.close)
        shutil.rmtree(workDir, ignore_errors=True)

    directMedian, pushedMedian = median(direct), median(pushed)
    ratio = pushedMedian / directMedian
    unshapedRows = [["pushed through the relays, unshaped (streaming)", f"{median(unshaped):.3f}",
                     f"{min(unshaped):.3f}", f"{max(unshaped):.3f}"],
                    ["pushed, WAN-shaped, store-and-forward (--noStreaming)", f"{median(stored):.3f}",
                     f"{min(stored):.3f}", f"{max(stored):.3f}"]] if unshaped else []
    print()
    printTable(
        ["measure", f"median of {args.segments} (s)", "min (s)", "max (s)"],
        [
            ["FFmpeg run directly", f"{directMedian:.3f}", f"{min(direct):.3f}", f"{max(direct):.3f}"],
            *unshapedRows,
            ["pushed end to end (SegmentPusher)" + (", WAN-shaped, streaming" if args.wan else ""),
             f"{pushedMedian:.3f}",
             f"{min(pushed):.3f}", f"{max(pushed):.3f}"],
            ["  of which: FFmpeg in the transcoder (its log)", f"{median(inside):.3f}" if inside else "-",
             f"{min(inside):.3f}" if inside else "-", f"{max(inside):.3f}" if inside else "-"],
            ["  of which: upload (until the 200 headers)", f"{median(uploads):.3f}", f"{min(uploads):.3f}",
             f"{max(uploads):.3f}"],
            ["  of which: rendition downloads", f"{median(downloads):.3f}", f"{min(downloads):.3f}",
             f"{max(downloads):.3f}"],
            *[[f"  CPU meanwhile: {name}", f"{median(spent):.3f}", f"{min(spent):.3f}", f"{max(spent):.3f}"]
              for name, spent in zip(("orchestrator", "transcoder process (without FFmpeg)",
                                      "bench process (gateway" + (", relays)" if args.wan else ")")),
                                     zip(*cpu))],
        ],
    )
    print()
    if args.wan:
        print(f"unshaped (same relays, streaming) / direct = {median(unshaped) / directMedian:.3f}")
        print(f"WAN store-and-forward: end-to-end / direct = {median(stored) / directMedian:.3f}")
        print(f"WAN streaming: end-to-end / direct = {ratio:.3f}  (target <= {TARGET_WAN_STREAMING_RATIO:.2f}): "
              f"{verdict(ratio, TARGET_WAN_STREAMING_RATIO)}")
    else:
        print(f"ratio end-to-end / direct = {ratio:.3f}  (target <= {TARGET_RATIO:.2f}): "
              f"{verdict(ratio, TARGET_RATIO)}")


def parseArguments(argv):
    """
    Command-line arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=5, help="timed segments (and direct runs) [5]")
    parser.add_argument("--wan", action="store_true",
                        help="put shaping relays (bench/shaping.py) on the gateway and transcoder links: "
                             f"{GATEWAY_LINK[0]} Mbit/s {GATEWAY_LINK[1]} ms and {TRANSCODER_LINK[0]} Mbit/s "
                             f"{TRANSCODER_LINK[1]} ms one way")
    return parser.parse_args(argv)


if __name__ == "__main__":
    os.chdir(PROJECT_ROOT)
    arguments = parseArguments(sys.argv[1:])
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, arguments)))
