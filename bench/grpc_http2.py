# -*- test-case-name: tests.test_bench -*-
"""
Benchmark 4: gRPC and HTTP/2 on the orchestrator's public port (issue 6).

- C{GetOrchestrator} calls per second, with grpcio as the gateway on one
  channel (one HTTP/2 connection), at several numbers of calls in flight.
- A 2 MiB segment's round trip (request sent to C{TranscodeResult} read) over
  HTTP/2, as a stock gateway posts it, versus HTTP/1.1, one segment at a time
  on one persistent connection each, interleaved; printed as a ratio.

A real orchestrator runs as a C{twistd -n} process on 127.0.0.1; the
transcoder is the fake-work one of C{bench/common.py} (it echoes the segment
as its one rendition at once), so the round trip is the orchestrator's and the
transports' own cost. The gateway clients are the tests' blocking ones
(C{tests/e2e.py}: grpcio, C{HTTP2Client} over the C{h2} library, and
C{http.client}), run in a thread beside the reactor that hosts the fake
transcoder.

    .venv/bin/python bench/grpc_http2.py [--calls 2000] [--inFlight 1,16,64] [--segments 30]
"""

import argparse
import http.client
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from common import (  # noqa: E402
    connectFakeTranscoder, cpuSeconds, fakeTranscoderFactory, median, p50p99, printHeader, printTable, readSecret,
)
from twisted.internet import task  # noqa: E402
from twisted.internet.threads import deferToThreadPool  # noqa: E402

from e2e import HTTP2Client, getOrchestrator, grpcChannel, segmentHeaders, tlsContext, unaryMethod  # noqa: E402
from tests.localnodes import LocalNodes  # noqa: E402
from livepeer_tx.orchestrator.orchservice import GET_ORCHESTRATOR  # noqa: E402
from livepeer_tx.proto import lp_rpc_pb2 as pb  # noqa: E402

SEGMENT_BYTES = 2 * 1024 * 1024
CAPACITY = 64


def getOrchestratorRate(orchestrator, calls, inFlight):
    """
    Make C{calls} GetOrchestrator calls on one channel with at most
    C{inFlight} of them outstanding.

    @return: C{(calls per second, latencies in seconds, orchestrator CPU
        seconds per call)}.
    """
    with grpcChannel(orchestrator) as channel:
        method = unaryMethod(channel, GET_ORCHESTRATOR, pb.OrchestratorRequest, pb.OrchestratorInfo)
        for _ in range(20):
            method(pb.OrchestratorRequest(), timeout=30)
        latencies, pending = [], []
        cpuBefore, started = cpuSeconds(orchestrator.pid), time.perf_counter()
        for _ in range(calls):
            if len(pending) >= inFlight:
                sent, future = pending.pop(0)
                future.result()
                latencies.append(time.perf_counter() - sent)
            pending.append((time.perf_counter(), method.future(pb.OrchestratorRequest(), timeout=60)))
        for sent, future in pending:
            future.result()
            latencies.append(time.perf_counter() - sent)
        wall = time.perf_counter() - started
        cpu = cpuSeconds(orchestrator.pid) - cpuBefore
    return calls / wall, latencies, cpu / calls


class HTTP11Gateway:
    """
    C{POST /segment} over one persistent HTTP/1.1 connection.
    """

    def __init__(self, orchestrator):
        self.connection = http.client.HTTPSConnection(
            orchestrator.host, orchestrator.port, context=tlsContext(orchestrator), timeout=60)

    def post(self, headers, body):
        self.connection.request("POST", "/segment", body=body, headers=headers)
        response = self.connection.getresponse()
        return response.status, response.read()

    def close(self):
        self.connection.close()


class HTTP2Gateway:
    """
    C{POST /segment} over one HTTP/2 connection, as go-livepeer's gateway.
    """

    def __init__(self, orchestrator):
        self.client = HTTP2Client(orchestrator)

    def post(self, headers, body):
        answer = self.client.request("POST", "/segment", list(headers.items()), body)
        return answer.status, answer.body

    def close(self):
        self.client.close()


def segmentRoundTrips(orchestrator, segments):
    """
    Post C{segments} timed segments (after 2 warm-ups) over each protocol,
    alternating, all in one session.

    @return: C{{"HTTP/1.1": (seconds, CPU seconds), "HTTP/2": ...}}.
    """
    data = os.urandom(SEGMENT_BYTES)
    token = getOrchestrator(orchestrator).auth_token
    gateways = {"HTTP/1.1": HTTP11Gateway(orchestrator), "HTTP/2": HTTP2Gateway(orchestrator)}
    figures = {name: ([], []) for name in gateways}
    try:
        for seq in range(segments + 2):
            for name, gateway in gateways.items():
                # The gateway's own hashing stays outside the timed window.
                headers = segmentHeaders(orchestrator, data, authToken=token, manifestId=b"bench",
                                         seq=seq * 2 + (name == "HTTP/2"))
                cpuBefore, started = cpuSeconds(orchestrator.pid), time.perf_counter()
                status, body = gateway.post(headers, data)
                elapsed = time.perf_counter() - started
                cpu = cpuSeconds(orchestrator.pid) - cpuBefore
                result = pb.TranscodeResult.FromString(body) if status == 200 else None
                if result is None or result.WhichOneof("result") != "data":
                    print(f"  {name} segment {seq} failed: {status} {body[:200]!r}", flush=True)
                    continue
                if seq >= 2:
                    figures[name][0].append(elapsed)
                    figures[name][1].append(cpu)
    finally:
        for gateway in gateways.values():
            gateway.close()
    return figures


async def main(reactor, args):
    """
    Run the benchmark and print its tables.
    """
    printHeader("grpc_http2: GetOrchestrator calls/s; 2 MiB segment round trip, HTTP/2 vs HTTP/1.1, loopback TLS")
    workDir = tempfile.mkdtemp(prefix="bench-grpc-")
    pool = reactor.getThreadPool()
    nodes = LocalNodes(workDir)
    try:
        orchestrator = await deferToThreadPool(reactor, pool, nodes.startOrchestrator)
        factory = fakeTranscoderFactory(reactor, orchestrator, readSecret(nodes.secretPath), CAPACITY)
        protocol = await connectFakeTranscoder(reactor, orchestrator, factory)
        print(f"orchestrator: real twistd process pid {orchestrator.pid}, {orchestrator.publicUrl}; "
              f"transcoder: fake-work WebSocket client in this process (capacity {CAPACITY}, echoes the segment)",
              flush=True)
        rateRows = []
        for inFlight in [int(n) for n in args.inFlight.split(",")]:
            rate, latencies, cpu = await deferToThreadPool(
                reactor, pool, getOrchestratorRate, orchestrator, args.calls, inFlight)
            p50, p99 = p50p99(latencies)
            rateRows.append([str(inFlight), str(args.calls), f"{rate:.0f}", f"{p50 * 1000:.2f}", f"{p99 * 1000:.2f}",
                             f"{cpu * 1000:.3f}"])
            print(f"  GetOrchestrator, {inFlight} in flight: {rate:.0f} calls/s", flush=True)
        trips = await deferToThreadPool(reactor, pool, segmentRoundTrips, orchestrator, args.segments)
        protocol.sendClose()
    finally:
        await deferToThreadPool(reactor, pool, nodes.close)
        shutil.rmtree(workDir, ignore_errors=True)

    print()
    print("[GetOrchestrator, grpcio, one channel]")
    printTable(["in flight", "calls", "calls/s", "p50 ms", "p99 ms", "orch CPU ms/call"], rateRows)
    print()
    print(f"[2 MiB segment round trip, one connection each, {args.segments} segments each, interleaved]")
    rows = []
    for name, (seconds, cpu) in trips.items():
        p50, p99 = p50p99(seconds)
        rows.append([name, str(len(seconds)), f"{p50 * 1000:.1f}" if seconds else "-",
                     f"{p99 * 1000:.1f}" if seconds else "-",
                     f"{sum(cpu) / len(cpu) * 1000:.1f}" if cpu else "-"])
    printTable(["protocol", "segments", "p50 ms", "p99 ms", "orch CPU ms/seg"], rows)
    h1, h2 = median(trips["HTTP/1.1"][0]), median(trips["HTTP/2"][0])
    if h1 and h2:
        print()
        print(f"round trip p50, HTTP/2 / HTTP/1.1 = {h2 / h1:.2f}")
    print("Round trip: request sent to TranscodeResult read, the transcoder answering at once; the gateway's "
          "keccak-256 of the segment is done before. CPU ms/seg: the orchestrator process, from /proc.")


def parseArguments(argv):
    """
    Command-line arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="GetOrchestrator calls per level")
    parser.add_argument("--inFlight", default="1,16,64", help="GetOrchestrator calls in flight, per level")
    parser.add_argument("--segments", type=int, default=30, help="timed segments per protocol")
    return parser.parse_args(argv)


if __name__ == "__main__":
    task.react(main, [parseArguments(sys.argv[1:])])
