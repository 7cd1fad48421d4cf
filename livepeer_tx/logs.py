# -*- test-case-name: tests.test_logs -*-
"""
Log output for the daemons under twistd: journal priorities and log files
that logrotate can rotate.

Under systemd, with standard output connected to the journal (systemd sets
C{JOURNAL_STREAM} to that stream's C{device:inode}), every line starts with
its level as a syslog priority (C{<3>} error, C{<4>} warning, C{<6>} info,
C{<7>} debug, C{<2>} critical) and carries no timestamp of its own: the
journal has one. Elsewhere lines are twistd's classic text, timestamp
included.

With twistd's C{--logfile PATH}, the file is opened for appending, every
event is one C{write} of whole lines, and L{ReopeningLogFile.reopen} (SIGUSR1)
opens the path again: logrotate renames the file, sends the signal, and no
line is lost or written twice. twistd's own log file, which rotates itself at
1 MB and on SIGUSR1, is not used.

L{LoggingServiceMaker} applies this to the twistd plugins: it gives twistd's
application a log observer (the C{ILogObserver} component twistd looks for),
unless C{--logger} or C{--syslog} chose one.
"""

import os
import signal
import sys
import threading

from twisted.application import service
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    eventAsText,
    formatEventAsClassicLogText,
)
from zope.interface import implementer

from livepeer_tx.signals import SERVICE_NAME as SIGNALS_SERVICE

SYSLOG_PRIORITIES = {
    LogLevel.critical: 2,
    LogLevel.error: 3,
    LogLevel.warn: 4,
    LogLevel.info: 6,
    LogLevel.debug: 7,
}
DEBUG_VERBOSITY = 5
LOG_FILE_MODE = 0o640

_log = Logger()


def formatJournalEvent(event):
    """
    Format an event for the journal: each line (a traceback's too) starts
    with the event's syslog priority, continuation lines are indented with a
    tab, and there is no timestamp.

    @return: the text ending in a newline, or L{None} for an event with
        nothing to say.
    """
    text = eventAsText(event, includeTraceback=True, includeTimestamp=False, includeSystem=True)
    if not text:
        return None
    prefix = "<%d>" % (SYSLOG_PRIORITIES.get(event.get("log_level"), 6),)
    lines = text.splitlines() or [""]
    return "".join([prefix + lines[0] + "\n"] + [prefix + "\t" + line + "\n" for line in lines[1:]])


def formatFileEvent(event):
    """
    Format an event as twistd does: timestamp, C{[namespace#level]}, the text,
    continuation lines indented with a tab.

    @return: the text ending in a newline, or L{None}.
    """
    return formatEventAsClassicLogText(event)


def isJournalStream(environ, fd):
    """
    Whether C{fd} is the journal stream systemd names in C{JOURNAL_STREAM}
    (C{device:inode}), as systemd documents for detecting it.
    """
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat(fd)
    except OSError:
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def _writeAll(fd, data):
    while data:
        written = os.write(fd, data)
        data = data[written:]


class DescriptorWriter:
    """
    Writes bytes to an open file descriptor (standard output), one event per
    call, never buffering part of a line.
    """

    def __init__(self, fd):
        self.fd = fd

    def write(self, data):
        """
        Write C{data} whole.
        """
        _writeAll(self.fd, data)


class ReopeningLogFile:
    """
    A log file opened for appending by path, which L{reopen} opens again
    after logrotate has renamed it.

    Each L{write} is one C{write(2)} of whole lines on an C{O_APPEND}
    descriptor, so lines from before a rename stay in the renamed file, later
    ones go to the new file, and no line is split or duplicated.

    @ivar path: the absolute path.
    """

    def __init__(self, path, mode=LOG_FILE_MODE):
        self.path = os.path.abspath(path)
        self._mode = mode
        self._lock = threading.Lock()
        self._fd = self._open()

    def _open(self):
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self._mode)

    def write(self, data):
        """
        Append C{data}.
        """
        with self._lock:
            _writeAll(self._fd, data)

    def reopen(self):
        """
        Open the path again and write there from now on. When it cannot be
        opened, keep writing to the file already open and log why.

        @return: whether the path was opened.
        """
        try:
            fd = self._open()
        except OSError as e:
            _log.error("Cannot reopen the log file {path}: {error}; still writing to the file open before",
                       path=self.path, error=e.strerror)
            return False
        with self._lock:
            old, self._fd = self._fd, fd
        os.close(old)
        _log.info("Reopened the log file {path}", path=self.path)
        return True

    def close(self):
        """
        Close the file.
        """
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


@implementer(ILogObserver)
class LineLogObserver:
    """
    Formats each event and hands it to a writer in one call, leaving out
    debug events unless asked for.

    A write that fails (a full disk, a closed journal) drops that event
    rather than the daemon.
    """

    def __init__(self, writer, formatEvent, debug=False):
        self._writer = writer
        self._format = formatEvent
        self._debug = debug

    def __call__(self, event):
        if not self._debug and event.get("log_level") is LogLevel.debug:
            return
        text = self._format(event)
        if not text:
            return
        try:
            self._writer.write(text.encode("utf-8", "backslashreplace"))
        except OSError:
            pass


def observerForTwistd(serverOptions, verbosity, environ, stdoutFD=1):
    """
    Choose the log output for a daemon started by twistd with
    C{serverOptions}.

    @param verbosity: go-livepeer's C{-v}; debug events are written from
        L{DEBUG_VERBOSITY}.
    @return: C{(observer, logFile)}, C{logFile} being the
        L{ReopeningLogFile} or L{None} for standard output; or L{None} to
        leave the choice to twistd (C{--logger}, C{--syslog}, or C{--logfile=-}
        without C{--nodaemon}, which twistd refuses).
    """
    if serverOptions.get("logger") or serverOptions.get("syslog"):
        return None
    path = serverOptions.get("logfile") or ""
    nodaemon = serverOptions.get("nodaemon")
    debug = verbosity >= DEBUG_VERBOSITY
    if path == "-" and not nodaemon:
        return None
    if path in ("", "-") and nodaemon:
        sys.stdout.flush()
        writer = DescriptorWriter(stdoutFD)
        formatEvent = formatJournalEvent if isJournalStream(environ, stdoutFD) else formatFileEvent
        return LineLogObserver(writer, formatEvent, debug), None
    logFile = ReopeningLogFile(path or "twistd.log")
    return LineLogObserver(logFile, formatFileEvent, debug), logFile


class LogOutputService(service.MultiService):
    """
    The root of a daemon's service tree under twistd: gives twistd's
    application its log observer when it becomes the application's child,
    and has the daemon's signal service (L{livepeer_tx.signals}) reopen the
    log file on SIGUSR1.

    @ivar observer: the log observer.
    @ivar logFile: the L{ReopeningLogFile}, or L{None}.
    """

    def __init__(self, child, observer, logFile):
        super().__init__()
        self.observer = observer
        self.logFile = logFile
        child.setServiceParent(self)
        if logFile is not None:
            child.getServiceNamed(SIGNALS_SERVICE).addHandler(signal.SIGUSR1, logFile.reopen)

    def setServiceParent(self, parent):
        """
        Become C{parent}'s child and its C{ILogObserver}, which twistd's
        logger uses when no C{--logger} was given.
        """
        parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)


class LoggingServiceMaker(service.ServiceMaker):
    """
    A twistd plugin whose daemon logs with L{observerForTwistd}'s choice.
    """

    def makeService(self, options):
        """
        Build the daemon's service; under twistd, wrap it in a
        L{LogOutputService}.
        """
        root = super().makeService(options)
        serverOptions = getattr(options, "parent", None)
        if serverOptions is None:
            return root
        choice = observerForTwistd(serverOptions, options.get("verbosityLevel", 3), os.environ)
        if choice is None:
            return root
        return LogOutputService(root, *choice)
