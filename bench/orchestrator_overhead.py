# -*- test-case-name: tests.test_bench -*-
"""
Benchmark 2: the orchestrator's overhead per segment, p50 and p99, with 1, 8
and 32 concurrent streams of 2 MB segments over loopback TLS.

A real orchestrator runs as a C{twistd -n} process on 127.0.0.1
(L{tests.localnodes.LocalNodes}). The transcoder is a fake-work one
inside this process: a WebSocket client speaking the transcoder protocol
(L{livepeer_tx.wsproto}; TLS pinned to the orchestrator's certificate) that
answers each C{transcode} at once with one rendition of the segment's size and
reports the time it spent as C{seconds}. The orchestrator's code path is the
real one: TLS, C{POST /segment} parsing and keccak check, routing, the
WebSocket task and result frames, the rendition store, the C{TranscodeResult}.

Each stream is one L{livepeer_tx.gateway.push.SegmentPusher} pushing segments
one after another (one warm-up segment, not counted). Per segment:

    overhead = time until the TranscodeResult arrived - the transcoder's seconds

and, since the gateway hashes each 2 MB segment inside that window too, the
same figure net of the gateway's keccak-256 time (measured apart). Rendition
downloads come after the TranscodeResult and are shown separately.

    .venv/bin/python bench/orchestrator_overhead.py [--streams 1,8,32] [--modes live,back-to-back] [--noStreaming]
"""

import argparse
import os
import pstats
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    PROJECT_ROOT, connectFakeTranscoder, cpuSeconds, fakeTranscoderFactory, median, p50p99, printHeader, printTable,
    raiseFileLimit, readSecret, rssKB, userSystemSeconds, verdict,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from eth_utils import keccak  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred, gatherResults  # noqa: E402
from twisted.internet.threads import deferToThreadPool  # noqa: E402

from livepeer_tx.gateway.push import SegmentPusher  # noqa: E402
from tests.localnodes import LocalNodes  # noqa: E402
from livepeer_tx.profiles import parsePresetList  # noqa: E402

SEGMENT_BYTES = 2 * 1024 * 1024
TARGET_P50_MS = 5.0
TARGET_P99_MS = 25.0
TARGET_FLOOR_RATIO = 1.5
KNEE_P99_MS = 50.0
# Sessions outlive their level: room for every stream of every level.
CAPACITY = 256


def gatewayHashSeconds(data, rounds=10):
    """
    The median time the gateway spends on keccak-256 of C{data}.
    """
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        keccak(data)
        times.append(time.perf_counter() - started)
    return median(times)


def floorSeconds(data, rounds=10):
    """
    The CPU time, on this thread, of the work no orchestrator can avoid for
    one segment: keccak-256 of C{data} (go-livepeer's hash check) and
    AES-128-GCM over four times its size (TLS in from the gateway, out to the
    transcoder, back from it, out again on the download).

    @return: C{(keccak seconds, AES-GCM seconds)}, each the median of
        C{rounds}.
    """
    aead = AESGCM(AESGCM.generate_key(bit_length=128))
    nonce = os.urandom(12)
    hashTimes, aesTimes = [], []
    for _ in range(rounds):
        started = time.thread_time()
        keccak(data)
        hashed = time.thread_time()
        for _ in range(4):
            aead.encrypt(nonce, data, None)
        hashTimes.append(hashed - started)
        aesTimes.append(time.thread_time() - hashed)
    return median(hashTimes), median(aesTimes)


def loadAverage():
    """
    The 1-minute load average and the CPU count, for the record.
    """
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"


async def runLevel(reactor, orchestrator, factory, profiles, data, streams, perStream, period):
    """
    Push C{perStream} timed segments (plus one warm-up) on each of C{streams}
    concurrent streams: one segment every C{period} seconds per stream, the
    streams' starts spread evenly over one period (a live gateway), or back to
    back when C{period} is 0 (saturation).

    @return: a dict of lists (seconds): C{toResult}, C{work}, C{downloads},
        and C{wall}, C{failed}, C{rssGrowthKB}, and the orchestrator's and
        this process's CPU seconds per pushed segment (C{orchestratorCPU},
        of which C{orchestratorSystemCPU} in the kernel; C{benchCPU}).
    """
    figures = {"toResult": [], "work": [], "downloads": [], "failed": 0}

    async def stream(index):
        manifestId = f"bench-c{streams}-s{index}"
        pusher = SegmentPusher(reactor, orchestrator.serviceAddr, orchestrator.clientTLSOptions(), profiles,
                               manifestId, timeout=60)
        start = reactor.seconds() + period * index / streams
        try:
            for seq in range(perStream + 1):
                wait = start + seq * period - reactor.seconds()
                if wait > 0:
                    await task.deferLater(reactor, wait, lambda: None)
                result = await pusher.pushSegment(seq, data, 2000)
                if not result.ok:
                    figures["failed"] += 1
                    print(f"  segment {manifestId}/{seq} failed: {result.error}", flush=True)
                    continue
                if seq == 0:
                    continue
                figures["toResult"].append(result.uploadSeconds + result.transcodeSeconds)
                figures["work"].append(factory.workSeconds.pop((manifestId, seq), 0.0))
                figures["downloads"].append(result.downloadSeconds)
        finally:
            await pusher.close()

    started = time.perf_counter()
    rssBefore = resetPeakRSS(orchestrator.pid)
    orchestratorCPU, benchCPU = userSystemSeconds(orchestrator.pid), cpuSeconds(os.getpid())
    await gatherResults([Deferred.fromCoroutine(stream(i)) for i in range(streams)], consumeErrors=True)
    figures["wall"] = time.perf_counter() - started
    figures["rssGrowthKB"] = peakRSSKB(orchestrator.pid) - rssBefore if rssBefore is not None else None
    pushed = streams * (perStream + 1)
    user, system = (after - before for after, before in zip(userSystemSeconds(orchestrator.pid), orchestratorCPU))
    figures["orchestratorCPU"] = (user + system) / pushed
    figures["orchestratorSystemCPU"] = system / pushed
    figures["benchCPU"] = (cpuSeconds(os.getpid()) - benchCPU) / pushed
    return figures


def resetPeakRSS(pid):
    """
    Reset process C{pid}'s peak RSS (C{VmHWM}) to its current RSS through
    C{/proc/<pid>/clear_refs}.

    @return: the RSS in kB after the reset, or L{None} where the kernel does
        not allow it.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return rssKB(pid)


def peakRSSKB(pid):
    """
    C{VmHWM} (peak RSS) of process C{pid} in kB.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise ValueError(f"no VmHWM for pid {pid}")


MODES = {
    # name: (seconds between a stream's segments, timed segments per stream)
    "live": (2.0, lambda streams: min(20, max(4, 64 // streams))),
    "back-to-back": (0.0, lambda streams: max(3, 64 // streams)),
}


def levelRow(streams, figures, hashSeconds, floor):
    """
    One table row for a concurrency level's figures; C{floor} is the
    unavoidable CPU seconds per segment (L{floorSeconds}, summed).
    """
    overheads = [(t - w) * 1000 for t, w in zip(figures["toResult"], figures["work"])]
    count = len(overheads)
    if not count:
        return [str(streams), "0", str(figures["failed"])] + ["-"] * 12 + ["MISSED (no figure)"]
    net = [o - hashSeconds * 1000 for o in overheads]
    p50, p99 = p50p99(overheads)
    n50, n99 = p50p99(net)
    return [
        str(streams), str(count), str(figures["failed"]),
        f"{p50:.1f}", f"{p99:.1f}", f"{n50:.1f}", f"{n99:.1f}",
        f"{median(figures['work']) * 1000:.2f}", f"{median(figures['downloads']) * 1000:.1f}",
        f"{count / figures['wall']:.1f}",
        f"{figures['orchestratorCPU'] * 1000:.1f}", f"{figures['benchCPU'] * 1000:.1f}",
        f"{figures['orchestratorCPU'] / floor:.2f}",
        "-" if figures["rssGrowthKB"] is None else f"{figures['rssGrowthKB'] / 1024:.1f}",
        f"{figures['rssGrowthKB'] * 1024 / (streams * SEGMENT_BYTES):.2f}" if figures["rssGrowthKB"] else "-",
        verdict(n50, TARGET_P50_MS) + "/" + verdict(n99, TARGET_P99_MS),
    ]


class ProfiledNodes(LocalNodes):
    """
    L{LocalNodes} whose twistd processes run under twistd's own cProfile
    (C{--profile --profiler=cprofile --savestats}), the statistics written to
    C{<profileDir>/<plugin>.pstats} when the process stops.
    """

    def __init__(self, workDir, profileDir):
        super().__init__(workDir)
        self.profileDir = profileDir
        os.makedirs(profileDir, exist_ok=True)

    def twistdCommand(self, plugin, options):
        """
        The usual command with twistd's profiling options before the plugin.
        """
        command = super().twistdCommand(plugin, options)
        at = command.index(plugin)
        path = os.path.join(self.profileDir, f"{plugin}.pstats")
        return command[:at] + [f"--profile={path}", "--profiler=cprofile", "--savestats"] + command[at:]


def printProfile(path, entries=25):
    """
    Print the top C{entries} functions of a cProfile statistics file, by
    their own time and by cumulative time.
    """
    if not os.path.exists(path):
        print(f"no profile at {path} (the orchestrator did not stop cleanly)")
        return
    for order in ("tottime", "cumulative"):
        print()
        print(f"[orchestrator profile, top {entries} by {order}]")
        pstats.Stats(path, stream=sys.stdout).strip_dirs().sort_stats(order).print_stats(entries)
    sys.stdout.flush()


async def main(reactor, args):
    """
    Run the benchmark and print its tables.
    """
    printHeader("orchestrator_overhead: per-segment overhead, 2 MB segments, loopback TLS")
    raiseFileLimit(4096)
    levels = [int(n) for n in args.streams.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    profiles = parsePresetList("P240p30fps16x9")
    data = os.urandom(SEGMENT_BYTES)
    hashSeconds = gatewayHashSeconds(data)
    floorHash, floorAES = floorSeconds(data)
    floor = floorHash + floorAES
    workDir = tempfile.mkdtemp(prefix="bench-overhead-")
    pool = reactor.getThreadPool()
    nodes = ProfiledNodes(workDir, args.profile) if args.profile else LocalNodes(workDir)
    tables, nets = {}, {}
    try:
        # Every stream comes from this one address: let it hold them all.
        orchestrator = await deferToThreadPool(
            reactor, pool, lambda: nodes.startOrchestrator(maxSessionsPerAddress=CAPACITY))
        factory = fakeTranscoderFactory(reactor, orchestrator, readSecret(nodes.secretPath), CAPACITY,
                                        stream=not args.noStreaming)
        factory.workSeconds = {}
        protocol = await connectFakeTranscoder(reactor, orchestrator, factory)
        print("transcoder: fake-work WebSocket client in this process (transcoder protocol over TLS, "
              f"capacity {CAPACITY}, no FFmpeg); it echoes one {SEGMENT_BYTES // 1024} KiB rendition per segment, "
              + ("in one transcode/result exchange (--noStreaming)" if args.noStreaming else
                 "streamed (transcodeStart, segmentData, segmentEnd; renditionData, resultEnd)"))
        print(f"orchestrator: real twistd process pid {orchestrator.pid}, {orchestrator.publicUrl}"
              + (f", under cProfile ({args.profile})" if args.profile else ""))
        print(f"gateway-side keccak-256 of a 2 MiB segment: {hashSeconds * 1000:.1f} ms (median of 10)")
        print(f"floor (CPU of this thread, median of 10): keccak-256 of the segment {floorHash * 1000:.1f} ms + "
              f"AES-128-GCM of 4 x 2 MiB {floorAES * 1000:.1f} ms = {floor * 1000:.1f} ms; {loadAverage()}")
        print("live: each stream sends one 2 s segment every 2 s, starts spread over 2 s; "
              "back-to-back: each stream sends its next segment as soon as the previous one is done. "
              "One warm-up segment per stream is not counted.", flush=True)
        for mode in modes:
            period, perStreamFor = MODES[mode]
            rows = tables[mode] = []
            for streams in levels:
                perStream = perStreamFor(streams)
                # The load of a shared machine drifts during a run: each
                # level's ratio uses the floor measured just before it.
                levelFloor = sum(floorSeconds(data))
                figures = await runLevel(
                    reactor, orchestrator, factory, profiles, data, streams, perStream, period)
                rows.append(levelRow(streams, figures, hashSeconds, levelFloor))
                net = [(t - w - hashSeconds) * 1000 for t, w in zip(figures["toResult"], figures["work"])]
                nets[mode, streams] = p50p99(net) if net else (None, None)
                print(f"  {mode}, {streams} stream(s): {len(figures['toResult'])} timed segments "
                      f"in {figures['wall']:.1f} s; orchestrator CPU per segment "
                      f"{figures['orchestratorCPU'] * 1000:.1f} ms, of which in the kernel "
                      f"{figures['orchestratorSystemCPU'] * 1000:.1f} ms; floor before the level "
                      f"{levelFloor * 1000:.1f} ms; {loadAverage()}", flush=True)
        protocol.sendClose()
    finally:
        await deferToThreadPool(reactor, pool, nodes.close)
        if args.profile:
            printProfile(os.path.join(args.profile, "livepeer-orchestrator.pstats"))
        shutil.rmtree(workDir, ignore_errors=True)

    for mode, rows in tables.items():
        print()
        print(f"[{mode}]")
        printTable(
            ["streams", "segments", "failed", "p50 ms", "p99 ms", "net p50 ms", "net p99 ms", "work p50 ms",
             "download p50 ms", "seg/s", "orch CPU ms/seg", "bench CPU ms/seg", "orch CPU / floor",
             "peak RSS growth MiB", "growth / bytes in", "p50/p99 vs target"],
            rows,
        )
    print()
    print("p50/p99: time until the TranscodeResult arrived minus the transcoder's reported seconds.")
    print(f"net: the same minus the gateway's own keccak-256 ({hashSeconds * 1000:.1f} ms); "
          f"targets p50 <= {TARGET_P50_MS:g} ms, p99 <= {TARGET_P99_MS:g} ms (verdict on net figures).")
    print("CPU ms/seg: CPU time used per pushed segment (warm-ups and downloads included) by the orchestrator "
          "process and by this bench process (gateways + fake transcoder); both share this machine's CPUs.")
    print(f"orch CPU / floor: the orchestrator's CPU per segment over the floor measured just before the level "
          f"(at the start {floor * 1000:.1f} ms, "
          f"keccak-256 + 4 x AES-128-GCM of the segment, measured above); target <= {TARGET_FLOOR_RATIO:g}.")
    print("peak RSS growth: the orchestrator's VmHWM during the level minus its VmRSS before (reset through "
          "/proc/<pid>/clear_refs); growth / bytes in: that over streams x 2 MiB (target <= 3 at 32 streams).")
    for mode in tables:
        one = nets.get((mode, 1), (None, None))[0]
        if one is not None:
            print(f"{mode}: net p50 at 1 stream {one:.1f} ms vs floor + 5 ms = {floor * 1000 + 5:.1f} ms: "
                  f"{verdict(one, floor * 1000 + 5)}")
        passed = [n for n in levels if nets.get((mode, n), (None, None))[1] is not None
                  and nets[mode, n][1] > KNEE_P99_MS]
        if passed:
            print(f"{mode}: net p99 first passes {KNEE_P99_MS:g} ms at {passed[0]} streams "
                  f"({passed[0] / os.cpu_count():g} per core)")
        else:
            print(f"{mode}: net p99 stays under {KNEE_P99_MS:g} ms up to {max(levels)} streams "
                  f"({max(levels) / os.cpu_count():g} per core)")


def parseArguments(argv):
    """
    Command-line arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,8,32", help="comma-separated concurrency levels [1,8,32]")
    parser.add_argument("--modes", default="live,back-to-back",
                        help="comma-separated: live (paced, one segment per 2 s per stream) and/or "
                             "back-to-back (saturation) [live,back-to-back]")
    parser.add_argument("--noStreaming", action="store_true",
                        help="the fake transcoder takes tasks in one transcode frame and answers in one result "
                             "frame, as before streamed tasks (default: streamed, as our transcoders do)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="run the orchestrator under cProfile, write its statistics to DIR and print the top "
                             "entries (the figures are then inflated by the profiler)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    os.chdir(PROJECT_ROOT)
    arguments = parseArguments(sys.argv[1:])
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, arguments)))
