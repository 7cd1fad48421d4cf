"""
Log output under twistd (L{livepeer_tx.logs}), in memory: journal priority
prefixes, whole-event writes, log files reopened by path, and the choice
twistd's options lead to.
"""

import os
import signal
import stat
import threading

import pytest
from twisted.application import service
from twisted.application.app import AppLogger
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import ILogObserver, Logger, LogLevel, formatTime, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.scripts._twistd_unix import ServerOptions

from livepeer_tx.logs import (
    DescriptorWriter,
    LineLogObserver,
    LoggingServiceMaker,
    LogOutputService,
    ReopeningLogFile,
    formatFileEvent,
    formatJournalEvent,
    isJournalStream,
    observerForTwistd,
)
from livepeer_tx.signals import SERVICE_NAME

NAMESPACE = "livepeer_tx.example"


def emitted(emit):
    """
    The events C{emit(log)} sends through a L{Logger}.
    """
    observer = EventLoggingObserver()
    emit(Logger(namespace=NAMESPACE, observer=observer))
    return list(observer)


class CollectingWriter:
    """
    A writer keeping each C{write} call's bytes.
    """

    def __init__(self):
        self.writes = []

    def write(self, data):
        self.writes.append(data)


class BrokenWriter:
    """
    A writer whose every write fails, as a full disk would.
    """

    def write(self, data):
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("method, prefix", [
    ("debug", "<7>"), ("info", "<6>"), ("warn", "<4>"), ("error", "<3>"), ("critical", "<2>"),
])
def test_journalLinesStartWithTheSyslogPriority(method, prefix):
    """
    Each level becomes its syslog priority, and the line has no timestamp.
    """
    [event] = emitted(lambda log: getattr(log, method)("Transcoder {name} said {what!r}", name="t1", what="hi"))
    assert formatJournalEvent(event) == f"{prefix}[{NAMESPACE}#{method}] Transcoder t1 said 'hi'\n"


def test_journalLinesHaveNoTimestampFileLinesDo():
    """
    The journal stamps its entries itself; a log file carries twistd's
    timestamp.
    """
    [event] = emitted(lambda log: log.info("hello"))
    stamp = formatTime(event["log_time"])
    assert stamp not in formatJournalEvent(event)
    assert formatFileEvent(event) == f"{stamp} [{NAMESPACE}#info] hello\n"


def test_everyLineOfAMultiLineEventHasThePrefix():
    """
    A message of several lines: every line carries the priority, the
    following ones indented.
    """
    [event] = emitted(lambda log: log.warn("first\nsecond\nthird"))
    assert formatJournalEvent(event) == f"<4>[{NAMESPACE}#warn] first\n<4>\tsecond\n<4>\tthird\n"


@pytest.mark.parametrize("level, prefix", [(LogLevel.critical, "<2>"), (LogLevel.error, "<3>")])
def test_everyTracebackLineHasThePrefix(level, prefix):
    """
    A logged failure's traceback lines all carry the event's priority, so
    C{journalctl -p err} shows the whole traceback.
    """
    try:
        raise ValueError("boom")
    except ValueError:
        failure = Failure()
    [event] = emitted(lambda log: log.failure("Handling a segment failed", failure, level=level))
    lines = formatJournalEvent(event).splitlines()
    assert len(lines) > 3
    assert all(line.startswith(prefix) for line in lines)
    assert lines[0] == f"{prefix}[{NAMESPACE}#{level.name}] Handling a segment failed"
    assert any("Traceback" in line for line in lines)
    assert lines[-1] == f"{prefix}\tbuiltins.ValueError: boom"


def test_anEventWithNothingToSayWritesNothing():
    """
    An event without a format is not written at all.
    """
    writer = CollectingWriter()
    LineLogObserver(writer, formatJournalEvent)({"log_level": LogLevel.info, "log_namespace": "x"})
    assert writer.writes == []


def test_observerWritesEachEventInOneCallAndHidesDebug():
    """
    One write per event, all its lines in it; debug events only when asked.
    """
    events = emitted(lambda log: (log.debug("detail"), log.info("one\ntwo"), log.error("bad")))
    quiet, verbose = CollectingWriter(), CollectingWriter()
    for event in events:
        LineLogObserver(quiet, formatJournalEvent)(event)
        LineLogObserver(verbose, formatJournalEvent, debug=True)(event)
    assert quiet.writes == [f"<6>[{NAMESPACE}#info] one\n<6>\ttwo\n".encode(),
                            f"<3>[{NAMESPACE}#error] bad\n".encode()]
    assert verbose.writes[0] == f"<7>[{NAMESPACE}#debug] detail\n".encode()
    assert verbose.writes[1:] == quiet.writes


def test_aFailingWriteDropsTheEventNotTheDaemon():
    """
    A write error (full disk) is not raised into the code that logged.
    """
    [event] = emitted(lambda log: log.info("lost"))
    LineLogObserver(BrokenWriter(), formatFileEvent)(event)


def test_journalStreamDetection(tmp_path):
    """
    C{JOURNAL_STREAM} names the stream by device and inode: it must match
    the descriptor, as systemd documents.
    """
    with open(tmp_path / "journal", "wb") as journal, open(tmp_path / "other", "wb") as other:
        status = os.fstat(journal.fileno())
        environ = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        assert isJournalStream(environ, journal.fileno())
        assert not isJournalStream(environ, other.fileno())
        assert not isJournalStream({}, journal.fileno())
        assert not isJournalStream({"JOURNAL_STREAM": "garbage"}, journal.fileno())
        closed = os.dup(journal.fileno())
        os.close(closed)
        assert not isJournalStream(environ, closed)


def test_logFileRenameThenReopen(tmp_path):
    """
    After a rename, lines go on to the renamed file until L{reopen}; then to
    a new file at the path, created with mode 640 (less the umask).
    """
    path = tmp_path / "orchestrator.log"
    logFile = ReopeningLogFile(str(path))
    try:
        logFile.write(b"one\n")
        os.rename(path, tmp_path / "orchestrator.log.1")
        logFile.write(b"two\n")
        assert logFile.reopen()
        logFile.write(b"three\n")
    finally:
        logFile.close()
    assert (tmp_path / "orchestrator.log.1").read_bytes() == b"one\ntwo\n"
    assert path.read_bytes() == b"three\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 & ~umask


def test_logFileAppends(tmp_path):
    """
    An existing file is appended to, never truncated, and writers sharing it
    never overwrite each other's lines.
    """
    path = tmp_path / "shared.log"
    path.write_bytes(b"before\n")
    writers = [ReopeningLogFile(str(path)) for _ in range(2)]

    def writeLines(index):
        for n in range(2000):
            writers[index].write(b"writer %d line %d\n" % (index, n))

    threads = [threading.Thread(target=writeLines, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for writer in writers:
        writer.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[0] == b"before" and lines[-1] == b""
    assert sorted(lines[1:-1]) == sorted(b"writer %d line %d" % (i, n) for i in range(2) for n in range(2000))


def test_reopenFailureKeepsTheOldFile(tmp_path):
    """
    When the path cannot be opened again, lines keep going to the file open
    before, and the failure is logged.
    """
    directory = tmp_path / "logs"
    directory.mkdir()
    logFile = ReopeningLogFile(str(directory / "t.log"))
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        os.rename(directory, tmp_path / "moved")
        assert not logFile.reopen()
        logFile.write(b"still here\n")
    finally:
        globalLogPublisher.removeObserver(observer)
        logFile.close()
    assert (tmp_path / "moved" / "t.log").read_bytes() == b"still here\n"
    [event] = [e for e in observer if e.get("log_level") == LogLevel.error]
    assert event["path"] == str(directory / "t.log")
    assert event["error"] == os.strerror(2)


def serverOptions(*argv):
    """
    twistd's own options, parsed from C{argv} (no plugin).
    """
    options = ServerOptions()
    options.parseOptions(list(argv))
    return options


def test_twistdLoggerAndSyslogKeepTheirOwnObserver():
    """
    C{--logger} and C{--syslog} are twistd's choices; so is refusing
    C{--logfile=-} for a daemon.
    """
    assert observerForTwistd(serverOptions("-n", "--logger", "twisted.logger.textFileLogObserver"), 3, {}) is None
    assert observerForTwistd(serverOptions("-n", "--syslog"), 3, {}) is None
    assert observerForTwistd(serverOptions("--logfile=-"), 3, {}) is None


@pytest.mark.parametrize("argv", [["-n"], ["-n", "--logfile=-"]])
def test_foregroundLogsToStandardOutput(tmp_path, argv):
    """
    In the foreground without a log file: standard output, in twistd's
    format, or with priorities and no timestamp when it is the journal.
    """
    with open(tmp_path / "stdout", "wb") as stdout:
        fd = stdout.fileno()
        observer, logFile = observerForTwistd(serverOptions(*argv), 3, {}, stdoutFD=fd)
        assert logFile is None
        [event] = emitted(lambda log: log.warn("plain"))
        observer(event)
        status = os.fstat(fd)
        journal = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        observer, logFile = observerForTwistd(serverOptions(*argv), 3, journal, stdoutFD=fd)
        observer(event)
    plain, journalLine = (tmp_path / "stdout").read_text().splitlines()
    assert plain == formatFileEvent(event).rstrip("\n")
    assert journalLine == f"<4>[{NAMESPACE}#warn] plain"


def test_logfileOptionGivesAReopeningFile(tmp_path):
    """
    C{--logfile PATH}: a L{ReopeningLogFile} at that path (twistd.log for a
    daemon without one), in twistd's format; C{-v 5} adds debug lines.
    """
    path = str(tmp_path / "o.log")
    observer, logFile = observerForTwistd(serverOptions("-n", "--logfile", path), 5, {})
    try:
        assert isinstance(logFile, ReopeningLogFile) and logFile.path == path
        events = emitted(lambda log: (log.debug("detail"), log.info("hello")))
        for event in events:
            observer(event)
    finally:
        logFile.close()
    assert open(path).read() == "".join(formatFileEvent(event) for event in events)
    observer, logFile = observerForTwistd(serverOptions(), 3, {})
    logFile.close()
    assert logFile.path == os.path.abspath("twistd.log")


class SignalsStandIn(service.Service):
    """
    A stand-in for the daemon's signal service: remembers what is added.
    """

    name = SERVICE_NAME

    def __init__(self):
        self.handlers = []

    def addHandler(self, signum, callback):
        self.handlers.append((signum, callback))


class DaemonOptions(usage.Options):
    """
    A plugin's options with C{-v}.
    """

    optParameters = [["verbosity", "v", "3", "verbosity"]]

    def postOptions(self):
        self["verbosityLevel"] = int(self["verbosity"])


def makeService(options):
    """
    This module as a twistd plugin's module: a root with a signal service.
    """
    root = service.MultiService()
    SignalsStandIn().setServiceParent(root)
    return root


def pluginService(*twistdArguments):
    """
    What twistd does with a L{LoggingServiceMaker} plugin for this command
    line: parse its options and make its service.
    """
    config = serverOptions(*twistdArguments)
    subOptions = DaemonOptions()
    subOptions.parent = config
    subOptions.parseOptions([])
    maker = LoggingServiceMaker("test", __name__, "a test daemon", "test-daemon")
    return config, maker.makeService(subOptions)


def test_twistdUsesThePluginsObserver(tmp_path):
    """
    Under twistd, the plugin's service gives the application its observer
    (twistd's logger has no --logger factory, so it takes the application's)
    and has SIGUSR1 reopen the log file.
    """
    config, root = pluginService("-n", "--logfile", str(tmp_path / "d.log"))
    try:
        assert isinstance(root, LogOutputService)
        application = service.Application("test-daemon")
        root.setServiceParent(application)
        assert application.getComponent(ILogObserver) is root.observer
        assert AppLogger(config)._observerFactory is None
        [daemon] = list(root)
        assert daemon.getServiceNamed(SERVICE_NAME).handlers == [(signal.SIGUSR1, root.logFile.reopen)]
    finally:
        root.logFile.close()


def test_twistdLoggerOptionWins():
    """
    With twistd's C{--logger}, the plugin's service is left as it is.
    """
    _, root = pluginService("-n", "--logger", "twisted.logger.textFileLogObserver")
    assert not isinstance(root, LogOutputService)


def test_standardOutputWriterWritesWhole(tmp_path):
    """
    L{DescriptorWriter} writes all it is given to the descriptor.
    """
    with open(tmp_path / "out", "wb") as f:
        DescriptorWriter(f.fileno()).write(b"x" * 100000 + b"\n")
    assert os.path.getsize(tmp_path / "out") == 100001
