# -*- test-case-name: tests.test_bench -*-
"""
Shared pieces of the benchmarks: the project on C{sys.path}, statistics,
tables, a verdict against a target, process memory, and a fake-work transcoder
that speaks the real transcoder protocol (C{livepeer_tx.wsproto}) from inside
the benchmark process.

Benchmarks print figures; they never assert and always exit 0.
"""

import datetime
import os
import platform
import resource
import statistics
import sys
import time

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PROJECT_ROOT not in sys.path:
    sys.path.insert(0, PROJECT_ROOT)

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol  # noqa: E402
from twisted.internet import defer  # noqa: E402
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS  # noqa: E402

from livepeer_tx import __version__, wsproto  # noqa: E402
from livepeer_tx.gateway.push import percentile  # noqa: E402
from livepeer_tx.profiles import parsePresetList  # noqa: E402
from livepeer_tx.transcoder.ffmpeg import RENDITION_PIECE_BYTES  # noqa: E402

LADDER = "P720p30fps16x9,P360p30fps16x9,P240p30fps16x9"


def ladder():
    """
    The benchmarks' three-rendition ladder as L{livepeer_tx.profiles.Profile}s.
    """
    return parsePresetList(LADDER)


def median(values):
    """
    The median of C{values}, or C{None} when there are none.
    """
    return statistics.median(values) if values else None


def p50p99(values):
    """
    Nearest-rank p50 and p99 of C{values} (C{None}s when empty).
    """
    return percentile(values, 0.50), percentile(values, 0.99)


def verdict(value, target):
    """
    C{"ok"} when C{value} is at most C{target}, else C{"MISSED"}.
    """
    if value is None:
        return "MISSED (no figure)"
    return "ok" if value <= target else "MISSED"


def printTable(headers, rows, stream=None):
    """
    Print rows of strings as an aligned plain-text table.
    """
    stream = stream or sys.stdout
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in
                         enumerate(zip(cells, widths)))

    print(line([str(h) for h in headers]), file=stream)
    print("  ".join("-" * width for width in widths), file=stream)
    for row in rows:
        print(line(row), file=stream)
    stream.flush()


def printHeader(title):
    """
    Print a benchmark's title with the date, machine and Python.
    """
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(f"== {title}")
    print(f"   {now}; {os.cpu_count()} CPUs; {platform.machine()}; Python {platform.python_version()}; "
          f"livepeer-tx {__version__}")
    sys.stdout.flush()


def rssKB(pid):
    """
    C{VmRSS} of process C{pid} in kB, from C{/proc/<pid>/status}.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def cpuSeconds(pid):
    """
    User plus system CPU seconds process C{pid} has used, from C{/proc/<pid>/stat}.
    """
    return sum(userSystemSeconds(pid))


def userSystemSeconds(pid):
    """
    C{(user, system)}: the CPU seconds process C{pid} has used in user space
    and in the kernel (socket copies, loopback TCP), from C{/proc/<pid>/stat}.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def raiseFileLimit(wanted):
    """
    Raise this process's soft C{RLIMIT_NOFILE} to at least C{wanted} (capped
    by the hard limit); children started afterwards inherit it.

    @return: the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def readSecret(path):
    """
    The shared secret from the file L{tests.localnodes.LocalNodes} wrote.
    """
    with open(path) as f:
        return f.read().strip()


class FakeTranscoderProtocol(WebSocketClientProtocol):
    """
    A transcoder that registers with the given capacity and, if the factory
    says so, answers every task at once with one rendition per profile, each
    a copy of the segment (so as many bytes travel back as went out). Its
    C{seconds} is the time it really spent, from the whole segment being in
    to the result being queued.

    When the factory's C{stream} is true it lists the C{stream} feature, as
    our transcoders do: tasks come as C{transcodeStart}, C{segmentData}
    pieces and C{segmentEnd}, and each rendition goes back in
    C{renditionData} pieces of L{RENDITION_PIECE_BYTES} (the size our
    transcoder hands on from FFmpeg's pipes) before C{resultEnd}. Otherwise
    tasks come as one C{transcode} and go back as one C{result}.

    @ivar registered: a L{Deferred} firing with the C{registered} message.
    """

    def __init__(self):
        super().__init__()
        self.registered = defer.Deferred()
        self.tasks = 0
        # Streamed tasks' headers and segment pieces, by task id.
        self._streamed = {}

    def onOpen(self):
        """
        Send C{register}.
        """
        features = [wsproto.FEATURE_STREAM] if getattr(self.factory, "stream", False) else []
        self.sendMessage(wsproto.encodeControl(
            "register", capacity=self.factory.capacity, devices=[], capabilities={},
            version=f"bench-{__version__}", features=features,
        ))

    def onMessage(self, payload, isBinary):
        """
        Handle C{registered}, C{refused} and C{transcode}; ignore the rest.
        """
        started = time.perf_counter()
        if isBinary:
            header, parts = wsproto.decodeMedia(payload)
        else:
            header, parts = wsproto.decodeControl(payload), []
        kind = header["type"]
        if kind == "registered" and not self.registered.called:
            self.registered.callback(header)
        elif kind == "refused" and not self.registered.called:
            self.registered.errback(RuntimeError(f"registration refused: {header.get('error')}"))
        elif kind == "transcode" and self.factory.echo:
            self._answer(header, parts[0], started)
        elif kind == "transcodeStart" and self.factory.echo:
            self._streamed[header["taskId"]] = (header, [])
        elif kind == "segmentData" and header.get("taskId") in self._streamed:
            self._streamed[header["taskId"]][1].append(parts[0])
        elif kind == "segmentEnd" and header.get("taskId") in self._streamed:
            start, pieces = self._streamed.pop(header["taskId"])
            self._answer(start, b"".join(pieces), started)

    def _answer(self, task, segment, started):
        """
        Answer C{task} (its C{transcode} or C{transcodeStart} header) with one
        copy of C{segment} per profile, as C{result} or streamed.
        """
        self.tasks += 1
        profiles = task.get("profiles") or []
        renditions = [
            {"name": p.get("name", f"r{i}"), "pixels": 1, "frames": 1, "width": 2, "height": 2}
            for i, p in enumerate(profiles)
        ]
        result = {"taskId": task["taskId"], "decodedPixels": 1, "decodedFrames": 1, "renditions": renditions}
        # The header carries the time spent so far; encoding and sending
        # the reply come after, as they would for a real transcoder.
        result["seconds"] = time.perf_counter() - started
        workSeconds = getattr(self.factory, "workSeconds", None)
        if workSeconds is not None:
            workSeconds[(str(task.get("sessionId")), task.get("seq"))] = result["seconds"]
        if task["type"] == "transcode":
            self.sendMessage(wsproto.encodeMedia(dict(result, type="result"), [segment] * len(profiles)),
                             isBinary=True)
            return
        view = memoryview(segment)
        for index in range(len(profiles)):
            for at in range(0, len(view), RENDITION_PIECE_BYTES):
                header = {"type": "renditionData", "taskId": task["taskId"], "rendition": index}
                self.sendMessage(wsproto.encodeMedia(header, [view[at:at + RENDITION_PIECE_BYTES]]), isBinary=True)
        self.sendMessage(wsproto.encodeControl("resultEnd", sizes=[len(segment)] * len(profiles), **result))

    def onClose(self, wasClean, code, reason):
        """
        Fail C{registered} if the connection ends before registration.
        """
        if not self.registered.called:
            self.registered.errback(RuntimeError(f"closed before registration: {code} {reason}"))


def fakeTranscoderFactory(reactor, orchestrator, secret, capacity, echo=True, stream=False):
    """
    A WebSocket client factory for L{FakeTranscoderProtocol}s, with the
    handshake headers of the transcoder protocol.

    @param stream: whether the transcoder takes streamed tasks.

    @param orchestrator: an L{tests.localnodes.OrchestratorNode}.
    """
    url = f"wss://{orchestrator.serviceAddr}/{wsproto.RESOURCE_PATH.decode()}"
    factory = WebSocketClientFactory(
        url, protocols=[wsproto.SUBPROTOCOL], reactor=reactor,
        headers={
            wsproto.AUTH_HEADER: wsproto.AUTH_VALUE,
            "Credentials": secret,
            "Livepeer-Capacity": str(capacity),
        },
        useragent=f"livepeer-tx-bench/{__version__}",
    )
    factory.setProtocolOptions(
        autoPingInterval=0, openHandshakeTimeout=30, closeHandshakeTimeout=2,
        maxMessagePayloadSize=0, maxFramePayloadSize=0,
    )
    factory.protocol = FakeTranscoderProtocol
    factory.capacity = capacity
    factory.echo = echo
    factory.stream = stream
    return factory


async def connectFakeTranscoder(reactor, orchestrator, factory):
    """
    Open one connection with C{factory} over TLS pinned to the orchestrator's
    certificate, and wait for its registration.

    @return: the registered L{FakeTranscoderProtocol}.
    """
    endpoint = wrapClientTLS(
        orchestrator.clientTLSOptions(),
        HostnameEndpoint(reactor, orchestrator.host, orchestrator.port, timeout=30),
    )
    protocol = await endpoint.connect(factory)
    await protocol.registered
    return protocol
