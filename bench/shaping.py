# -*- test-case-name: tests.test_bench -*-
"""
A shaping TCP relay for the benchmarks: a WAN link between two local
processes without netem.

Each accepted connection is relayed to a fixed target over a new TCP
connection. Each direction is a L{ShapedLink}: a rate (a token bucket with a
bucket of one packet, so bytes leave no faster than the rate) and a one-way
delay (every piece is delivered by the reactor's clock C{delay} seconds after
the link finished sending it). The bytes are opaque (TLS passes through).
Reading stops while more than a window of bytes waits in a direction, as a
TCP sender stops when its window is full.

    relay = ShapingRelay(reactor, "127.0.0.1", 8935,
                         Shape(100e6 / 8, 0.020), Shape(100e6 / 8, 0.020))
    port = await relay.listen(0)
"""

import collections
from dataclasses import dataclass

from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.logger import Logger

#: The relay's unit of delivery: a link sends at most this much in one piece.
PIECE_BYTES = 16 * 1024

#: Bytes a direction holds (in the bucket's queue and in flight) before it
#: stops reading from its source.
WINDOW_BYTES = 4 * 1024 * 1024


@dataclass
class Shape:
    """
    One direction of a link: C{rate} in bytes per second (L{None}: no limit)
    and a one-way C{delay} in seconds. C{enabled} off relays at once.
    """

    rate: float = None
    delay: float = 0.0
    enabled: bool = True

    @classmethod
    def mbit(cls, megabits, delayMs):
        """
        A shape of C{megabits} Mbit/s and C{delayMs} ms one way.
        """
        return cls(megabits * 1e6 / 8, delayMs / 1000.0)


class ShapedLink:
    """
    Bytes written to it come out of C{sink.write} no faster than the shape's
    rate and its delay later, in order.

    @param clock: an C{IReactorTime}.
    @param shape: a L{Shape}, read at every write (so it can be changed).
    @param sink: has C{write(bytes)}.
    @param source: has C{pauseProducing()} / C{resumeProducing()}, or
        L{None}.
    """

    def __init__(self, clock, shape, sink, source=None):
        self._clock = clock
        self._shape = shape
        self._sink = sink
        self._source = source
        self._queue = collections.deque()  # (deliver at, piece)
        self._held = 0
        self._linkFreeAt = 0.0
        self._call = None
        self._paused = False
        self.closeWhenDone = False

    def write(self, data):
        """
        Schedule C{data}, cut into pieces, for delivery.
        """
        shape = self._shape
        if not shape.enabled:
            if not self._queue:
                self._sink.write(data)
                return
            at = self._queue[-1][0]
            self._queue.append((at, data))
            self._held += len(data)
        else:
            now = self._clock.seconds()
            view = memoryview(data)
            for offset in range(0, len(data), PIECE_BYTES):
                piece = view[offset:offset + PIECE_BYTES]
                start = max(now, self._linkFreeAt)
                self._linkFreeAt = start + (len(piece) / shape.rate if shape.rate else 0.0)
                at = self._linkFreeAt + shape.delay
                if self._queue and self._queue[-1][0] > at:
                    at = self._queue[-1][0]
                self._queue.append((at, piece))
                self._held += len(piece)
        if self._held > WINDOW_BYTES and self._source is not None and not self._paused:
            self._paused = True
            self._source.pauseProducing()
        self._schedule()

    def _schedule(self):
        if self._call is not None and self._call.active():
            return
        if not self._queue:
            if self.closeWhenDone:
                self._sink.loseConnection()
            return
        delay = max(0.0, self._queue[0][0] - self._clock.seconds())
        self._call = self._clock.callLater(delay, self._deliver)

    def _deliver(self):
        now = self._clock.seconds()
        pieces = []
        while self._queue and self._queue[0][0] <= now:
            _, piece = self._queue.popleft()
            self._held -= len(piece)
            pieces.append(piece)
        if pieces:
            self._sink.write(b"".join(pieces))
        if self._paused and self._held <= WINDOW_BYTES // 2 and self._source is not None:
            self._paused = False
            self._source.resumeProducing()
        self._schedule()

    def finish(self):
        """
        Close the sink once everything queued is delivered.
        """
        self.closeWhenDone = True
        self._schedule()

    def abort(self):
        """
        Drop what is queued.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._queue.clear()
        self._held = 0


class _Outbound(protocol.Protocol):
    """
    The relay's connection to the target: what arrives goes down the
    inbound connection's downstream link.
    """

    def __init__(self, inbound):
        self.inbound = inbound

    def connectionMade(self):
        self.inbound.outboundReady(self)

    def dataReceived(self, data):
        self.inbound.down.write(data)

    def connectionLost(self, reason):
        self.inbound.down.finish()


class _Inbound(protocol.Protocol):
    """
    An accepted connection: what arrives goes up to the target through the
    upstream link, once the outbound connection is made.
    """

    _log = Logger()

    def connectionMade(self):
        relay = self.factory.relay
        self.outbound = None
        self.pending = []
        self.closed = False
        self.down = ShapedLink(relay.clock, relay.downstream, self.transport, None)
        self.transport.pauseProducing()
        endpoint = TCP4ClientEndpoint(relay.clock, relay.targetHost, relay.targetPort, timeout=10)
        d = endpoint.connect(protocol.Factory.forProtocol(lambda: _Outbound(self)))
        d.addErrback(self._failed)

    def _failed(self, failure):
        self._log.debug("relay: cannot reach the target: {error}", error=failure.getErrorMessage())
        self.transport.loseConnection()

    def outboundReady(self, outbound):
        relay = self.factory.relay
        self.outbound = outbound
        self.up = ShapedLink(relay.clock, relay.upstream, outbound.transport, self.transport)
        self.down._source = outbound.transport
        if self.closed:
            self.up.finish()
        else:
            self.transport.resumeProducing()

    def dataReceived(self, data):
        self.up.write(data)

    def connectionLost(self, reason):
        self.closed = True
        if self.outbound is not None:
            self.up.finish()
        self.down.abort()


class ShapingRelay:
    """
    Relays every connection accepted on its port to C{targetHost:targetPort},
    shaping the C{upstream} direction (client to target) and the
    C{downstream} one (target to client) with their L{Shape}s.
    """

    def __init__(self, clock, targetHost, targetPort, upstream, downstream):
        self.clock = clock
        self.targetHost = targetHost
        self.targetPort = targetPort
        self.upstream = upstream
        self.downstream = downstream

    def setEnabled(self, enabled):
        """
        Turn shaping on or off in both directions (for later writes).
        """
        self.upstream.enabled = self.downstream.enabled = enabled

    async def listen(self, port=0, host="127.0.0.1"):
        """
        Listen on C{host:port} (0: a free port).

        @return: the C{IListeningPort}.
        """
        factory = protocol.Factory.forProtocol(_Inbound)
        factory.relay = self
        return await TCP4ServerEndpoint(self.clock, port, interface=host).listen(factory)
