# -*- test-case-name: tests.test_bench -*-
"""
Benchmark 3: the orchestrator's memory per idle registered transcoder.

A real orchestrator runs as a C{twistd -n} process on 127.0.0.1
(L{tests.localnodes.LocalNodes}). This process then opens 500
transcoder connections to it: lightweight WebSocket clients speaking the
transcoder protocol over TLS (pinned to the orchestrator's certificate), each
registering with capacity 1 and then staying idle (answering the
orchestrator's pings). The orchestrator's C{VmRSS} (C{/proc/<pid>/status}) is
read before, after the first 100 and after all 500 registrations, and the CLI
C{/status} is checked to report 500 transcoders.

    .venv/bin/python bench/idle_memory.py [--transcoders 500]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    PROJECT_ROOT, connectFakeTranscoder, fakeTranscoderFactory, printHeader, printTable, raiseFileLimit,
    readSecret, rssKB, verdict,
)
from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred, gatherResults  # noqa: E402
from twisted.internet.threads import deferToThreadPool  # noqa: E402

from tests.localnodes import LocalNodes  # noqa: E402

TARGET_KB = 100.0
BATCH = 25
SETTLE_SECONDS = 2.0


async def settledRSS(reactor, pid):
    """
    The process's C{VmRSS} in kB after letting it settle for a moment.
    """
    await task.deferLater(reactor, SETTLE_SECONDS, lambda: None)
    return rssKB(pid)


async def connectMany(reactor, orchestrator, factory, count):
    """
    Open and register C{count} fake transcoders, C{BATCH} at a time.

    @return: the list of protocols.
    """
    protocols = []
    while len(protocols) < count:
        batch = min(BATCH, count - len(protocols))
        protocols += await gatherResults(
            [Deferred.fromCoroutine(connectFakeTranscoder(reactor, orchestrator, factory)) for _ in range(batch)],
            consumeErrors=True,
        )
    return protocols


async def main(reactor, args):
    """
    Run the benchmark and print its table.
    """
    printHeader(f"idle_memory: orchestrator RSS with {args.transcoders} idle registered transcoders")
    limit = raiseFileLimit(args.transcoders * 2 + 256)
    first = min(100, args.transcoders)
    workDir = tempfile.mkdtemp(prefix="bench-memory-")
    pool = reactor.getThreadPool()
    nodes = LocalNodes(workDir)
    try:
        # All the transcoders come from 127.0.0.1: let it hold them all
        # (the default cap is 256 connections per address).
        orchestrator = await deferToThreadPool(
            reactor, pool, lambda: nodes.startOrchestrator(maxConnectionsPerAddress=args.transcoders + 16))
        print(f"orchestrator: real twistd process pid {orchestrator.pid}, {orchestrator.publicUrl}; "
              f"RLIMIT_NOFILE soft limit {limit}")
        print("transcoders: WebSocket clients in this process (transcoder protocol over TLS, capacity 1 each, "
              "idle after registration)", flush=True)
        factory = fakeTranscoderFactory(reactor, orchestrator, readSecret(nodes.secretPath), 1, echo=False)
        await deferToThreadPool(reactor, pool, orchestrator.cliStatus)
        before = await settledRSS(reactor, orchestrator.pid)
        started = time.perf_counter()
        protocols = await connectMany(reactor, orchestrator, factory, first)
        atFirst = await settledRSS(reactor, orchestrator.pid)
        protocols += await connectMany(reactor, orchestrator, factory, args.transcoders - first)
        elapsed = time.perf_counter() - started
        after = await settledRSS(reactor, orchestrator.pid)
        status = await deferToThreadPool(reactor, pool, orchestrator.cliStatus)
        reported = status.get("RegisteredTranscodersNumber")
        alive = sum(1 for p in protocols if p.state == p.STATE_OPEN)
        for protocol in protocols:
            protocol.dropConnection(abort=True)
    finally:
        await deferToThreadPool(reactor, pool, nodes.close)
        shutil.rmtree(workDir, ignore_errors=True)

    count = args.transcoders
    perTranscoder = (after - before) / count
    rest = count - first
    marginal = (after - atFirst) / rest if rest else None
    print(f"registered {len(protocols)} transcoders in {elapsed:.1f} s (plus {2 * SETTLE_SECONDS:g} s settling); "
          f"{alive} still open at the end")
    print()
    printTable(
        ["measure", "value"],
        [
            ["VmRSS before (kB)", str(before)],
            [f"VmRSS after {first} transcoders (kB)", str(atFirst)],
            [f"VmRSS after {count} transcoders (kB)", str(after)],
            [f"KB per transcoder (after - before) / {count}", f"{perTranscoder:.1f}"],
            [f"KB per transcoder, marginal ({first}..{count})",
             f"{marginal:.1f}" if marginal is not None else "-"],
            ["CLI /status RegisteredTranscodersNumber", str(reported)],
        ],
    )
    print()
    print(f"KB per transcoder {perTranscoder:.1f} (target <= {TARGET_KB:g}): {verdict(perTranscoder, TARGET_KB)}")
    print(f"CLI /status shows {reported} transcoders (expected {count}): "
          f"{'ok' if reported == count else 'MISSED'}")


def parseArguments(argv):
    """
    Command-line arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transcoders", type=int, default=500, help="idle transcoders to register [500]")
    return parser.parse_args(argv)


if __name__ == "__main__":
    os.chdir(PROJECT_ROOT)
    arguments = parseArguments(sys.argv[1:])
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, arguments)))
