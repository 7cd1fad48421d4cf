# -*- test-case-name: tests.test_http_hardening -*-
"""
The limits of a public HTTP port, as plain classes that know nothing of
sockets: per-connection deadlines, connection caps, the memory budget for
request bodies (and giving their memory back to the system), and a throttle
for log lines about refusals.

L{livepeer_tx.web} applies them to connections; each class here takes its
clock as an argument and is tested on its own.
"""

import ctypes
from dataclasses import dataclass

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

HEADERS_TOO_SLOW = "request headers too slow"
UPLOAD_TOO_SLOW = "upload too slow"
REQUEST_TOO_LONG = "request running too long"
CLOSE_TOO_SLOW = "close not completed"

TOTAL_CAP = "maxConnections"
ADDRESS_CAP = "maxConnectionsPerAddress"


@dataclass(frozen=True)
class HTTPLimits:
    """
    Deadlines of one HTTP/1.1 connection, in seconds (rates in bytes per second).

    @ivar headerTimeout: the request line and every header must have arrived
        this long after the request's first byte.
    @ivar idleTimeout: a connection with no request in progress (before the
        first one, or between keep-alive requests) is closed after this long
        without a byte.
    @ivar minUploadRate: a request body must average at least this rate,
        counted from the body's start with L{uploadRateGrace} of slack; L{None}
        turns the check off.
    @ivar uploadRateGrace: seconds of slack before L{minUploadRate} applies.
    @ivar maxRequestSeconds: a dispatched request still running after this
        long has its connection aborted (a backstop: the orchestrator's own
        per-segment deadlines are far shorter).
    @ivar closeGrace: a connection being closed after a complete response
        is aborted if it is still open after this long (for instance, TLS
        waiting for a close_notify that never comes).
    @ivar refusalGrace: the same for a connection closed after a refusal
        (400, 408, 413, 503): long enough for the answer to leave.
    """

    headerTimeout: float = 20.0
    idleTimeout: float = 60.0
    minUploadRate: float | None = 16 * 1024
    uploadRateGrace: float = 10.0
    maxRequestSeconds: float = 600.0
    closeGrace: float = 10.0
    refusalGrace: float = 1.0


class ConnectionDeadlines:
    """
    The timers of one HTTP connection. They are separate from Twisted's idle
    timeout, which request processing turns off, so nothing that happens to a
    request can leave a connection without a deadline.

    The connection reports its progress; when a deadline passes,
    C{expired(kind)} is called with one of L{HEADERS_TOO_SLOW},
    L{UPLOAD_TOO_SLOW}, L{REQUEST_TOO_LONG} or L{CLOSE_TOO_SLOW}, and the
    connection decides how to end.

    @param clock: an L{IReactorTime}.
    @param limits: the L{HTTPLimits}.
    @param expired: called with the kind of deadline that passed.
    """

    # The upload-rate check never runs more often than this.
    MIN_RATE_CHECK_SECONDS = 1.0

    def __init__(self, clock, limits, expired):
        self._clock = clock
        self._limits = limits
        self._expired = expired
        self._calls = {}
        self._bodyStarted = None
        self._bodyBytes = 0

    def _schedule(self, kind, delay):
        self._cancel(kind)
        self._calls[kind] = self._clock.callLater(delay, self._fire, kind)

    def _cancel(self, kind):
        call = self._calls.pop(kind, None)
        if call is not None and call.active():
            call.cancel()

    def _fire(self, kind):
        del self._calls[kind]
        if kind == UPLOAD_TOO_SLOW and self._bodyBytes >= self._uploadRequiredBy(self._clock.seconds()):
            self._scheduleRateCheck()
            return
        self._expired(kind)

    def _uploadRequiredBy(self, now):
        elapsed = now - self._bodyStarted - self._limits.uploadRateGrace
        return self._limits.minUploadRate * max(0.0, elapsed)

    def _scheduleRateCheck(self):
        # The first moment the bytes received so far fall behind the rate.
        behindAt = self._bodyStarted + self._limits.uploadRateGrace + self._bodyBytes / self._limits.minUploadRate
        delay = max(behindAt - self._clock.seconds(), self.MIN_RATE_CHECK_SECONDS)
        self._schedule(UPLOAD_TOO_SLOW, delay)

    def pending(self):
        """
        The kinds of deadline now running (for tests and diagnostics).
        """
        return set(self._calls)

    def requestStarted(self):
        """
        The first byte of a request arrived: start the header deadline.
        """
        self._schedule(HEADERS_TOO_SLOW, self._limits.headerTimeout)

    def headersReceived(self):
        """
        The request's headers are complete.
        """
        self._cancel(HEADERS_TOO_SLOW)

    def bodyStarted(self):
        """
        A request body is expected: start counting its rate.
        """
        self._bodyStarted = self._clock.seconds()
        self._bodyBytes = 0
        if self._limits.minUploadRate:
            self._scheduleRateCheck()

    def bodyReceived(self, count):
        """
        C{count} more bytes of the body arrived.
        """
        self._bodyBytes += count

    def bodyFinished(self):
        """
        The body is complete (or there was none).
        """
        self._cancel(UPLOAD_TOO_SLOW)
        self._bodyStarted = None

    def dispatched(self):
        """
        The request went to the application: start the backstop on its run time.
        """
        self._schedule(REQUEST_TOO_LONG, self._limits.maxRequestSeconds)

    def requestFinished(self):
        """
        The response is complete.
        """
        self._cancel(REQUEST_TOO_LONG)

    def closing(self, grace):
        """
        The connection is being closed: every other deadline stops, and the
        close must complete within C{grace} seconds (an earlier close deadline
        already running is kept).
        """
        call = self._calls.get(CLOSE_TOO_SLOW)
        keep = call is not None and call.active() and call.getTime() <= self._clock.seconds() + grace
        for kind in list(self._calls):
            if kind != CLOSE_TOO_SLOW or not keep:
                self._cancel(kind)
        if not keep:
            self._schedule(CLOSE_TOO_SLOW, grace)

    def stop(self):
        """
        The connection is gone (or no longer ours): cancel everything.
        """
        for kind in list(self._calls):
            self._cancel(kind)


class ConnectionLimiter:
    """
    Counts open connections in total and per source address against two caps.

    @param maxConnections: the cap on all connections.
    @param maxPerAddress: the cap on connections from one source address.
    """

    def __init__(self, maxConnections, maxPerAddress):
        self.maxConnections = maxConnections
        self.maxPerAddress = maxPerAddress
        self.open = 0
        self._byAddress = {}

    def openFrom(self, address):
        """
        How many connections from C{address} are open.
        """
        return self._byAddress.get(address, 0)

    def acquire(self, address):
        """
        Count a new connection from C{address} if both caps allow it.

        @return: L{None} when it was counted, or the name of the cap it would
            exceed (L{TOTAL_CAP} or L{ADDRESS_CAP}); then nothing is counted.
        """
        if self.open >= self.maxConnections:
            return TOTAL_CAP
        count = self._byAddress.get(address, 0)
        if count >= self.maxPerAddress:
            return ADDRESS_CAP
        self._byAddress[address] = count + 1
        self.open += 1
        return None

    def release(self, address):
        """
        A connection from C{address} counted by L{acquire} has closed.
        """
        count = self._byAddress.get(address, 0)
        if count <= 0:
            return
        if count == 1:
            del self._byAddress[address]
        else:
            self._byAddress[address] = count - 1
        self.open -= 1


class UploadRefused(Exception):
    """
    A request body does not fit the upload memory budget; carries the text for
    the client.
    """

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class UploadBudget:
    """
    Bounds the bytes of request bodies held in memory, in total and per source
    address. A request reserves its declared length before its body is read
    (a chunked body reserves as it arrives) and releases it when it ends.

    @param total: the cap on all reservations together, in bytes.
    @param perAddress: the cap on the reservations of one source address.
    @param memoryReturner: told the size of each released reservation (a
        L{MemoryReturner}), or L{None}.
    """

    def __init__(self, total, perAddress, memoryReturner=None):
        self.total = total
        self.perAddress = perAddress
        self.held = 0
        self._byAddress = {}
        self._memoryReturner = memoryReturner

    def heldBy(self, address):
        """
        The bytes reserved by requests from C{address}.
        """
        return self._byAddress.get(address, 0)

    def _take(self, address, size):
        byAddress = self._byAddress.get(address, 0)
        if byAddress + size > self.perAddress:
            raise UploadRefused(
                f"uploads from {address} would hold {byAddress + size} bytes, more than the "
                f"{self.perAddress} allowed per address; retry when an upload has finished")
        if self.held + size > self.total:
            raise UploadRefused(
                f"the orchestrator holds {self.held} bytes of uploads and cannot take {size} more "
                f"(limit {self.total}); retry later")
        self._byAddress[address] = byAddress + size
        self.held += size

    def _give(self, address, size):
        remaining = self._byAddress.get(address, 0) - size
        if remaining > 0:
            self._byAddress[address] = remaining
        else:
            self._byAddress.pop(address, None)
        self.held -= size
        if self._memoryReturner is not None:
            self._memoryReturner.released(size)

    def reserve(self, address, size):
        """
        Reserve C{size} bytes for a body from C{address}.

        @return: an L{UploadReservation}.
        @raise UploadRefused: it does not fit; nothing is reserved.
        """
        self._take(address, size)
        return UploadReservation(self, address, size)


class UploadReservation:
    """
    Bytes of an L{UploadBudget} held for one request body.

    @ivar size: the bytes reserved now.
    """

    def __init__(self, budget, address, size):
        self._budget = budget
        self._address = address
        self.size = size
        self.released = False

    def grow(self, size):
        """
        Reserve C{size} more bytes (a chunked body that keeps coming).

        @raise UploadRefused: they do not fit; the reservation is unchanged.
        """
        if self.released:
            raise UploadRefused("the upload has already ended")
        self._budget._take(self._address, size)
        self.size += size

    def release(self):
        """
        Give the bytes back; calling it again does nothing.
        """
        if self.released:
            return
        self.released = True
        self._budget._give(self._address, self.size)


def _libcMallocTrim():
    """
    glibc's C{malloc_trim}, or L{None} on a C library without it.
    """
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


class MemoryReturner:
    """
    Gives the memory of large request bodies back to the system once they
    are freed. glibc keeps freed heap memory for reuse and returns only the
    top of the heap by itself, so the megabytes of a body that ended (a
    stalled upload closed, a segment answered) mostly stay in the process's
    resident memory; C{malloc_trim} returns every free page.

    A release of at least C{minimumBytes} asks for one trim on the reactor's
    next turn (the body is dropped by then), at most one per C{interval}
    seconds, run on the reactor's thread pool (it takes a few milliseconds
    per hundred megabytes, without the GIL).

    @param reactor: an L{IReactorTime} with a C{getThreadPool}.
    @param trim: the C function, called with 0 (default: glibc's
        C{malloc_trim}; L{None} disables this).
    """

    _log = Logger()

    def __init__(self, reactor, trim=_libcMallocTrim(), minimumBytes=4 * 1024 * 1024, interval=1.0):
        self._reactor = reactor
        self._trim = trim
        self._minimumBytes = minimumBytes
        self._interval = interval
        self._lastTrim = None
        self._scheduled = None

    def released(self, size):
        """
        C{size} bytes of a body were given back to the upload budget.
        """
        if self._trim is None or size < self._minimumBytes or self._scheduled is not None:
            return
        delay = 0.0
        if self._lastTrim is not None:
            delay = max(0.0, self._lastTrim + self._interval - self._reactor.seconds())
        self._scheduled = self._reactor.callLater(delay, self._trimNow)

    def _trimNow(self):
        self._scheduled = None
        self._lastTrim = self._reactor.seconds()
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._trim, 0)
        d.addErrback(lambda failure: self._log.failure("Could not give freed memory back", failure))


class LogThrottle:
    """
    Lets one log line through per C{interval} seconds for a kind of event
    that can come by the thousand, and counts the events in between.

    @param clock: an L{IReactorTime}.
    @param interval: seconds between log lines.
    """

    def __init__(self, clock, interval=10.0):
        self._clock = clock
        self.interval = interval
        self._nextLine = None
        self._count = 0

    def event(self):
        """
        Count one event.

        @return: the number of events since the last line let through
            (this one included) when a line is due now, else L{None}.
        """
        self._count += 1
        now = self._clock.seconds()
        if self._nextLine is not None and now < self._nextLine:
            return None
        count, self._count = self._count, 0
        self._nextLine = now + self.interval
        return count
