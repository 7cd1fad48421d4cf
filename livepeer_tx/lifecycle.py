"""
Process lifecycle of the daemons: ending with a chosen exit status, and
keeping secrets out of core dumps.
"""

import os
import sys

from twisted.logger import Logger


def stopWithStatus(reactor, status):
    """
    Stop the reactor cleanly, then exit the process with C{status} (twistd
    itself always exits 0, and operators' supervisors need to see failures).
    """

    def exitNow():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    reactor.addSystemEventTrigger("after", "shutdown", exitNow)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)


PR_SET_DUMPABLE = 4


def preventCoreDumps():
    """
    Keep the secret, keys and tickets this process holds out of core dumps and
    away from other processes of the same user (C{ptrace}, C{/proc/<pid>/mem}):
    set the core size limit to 0 and clear the dumpable flag.

    @return: whether the dumpable flag could be cleared (Linux only); when
        not, a warning is logged.
    """
    import ctypes
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    try:
        cleared = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        cleared = False
    if not cleared:
        Logger().warn("Could not make this process non-dumpable; set LimitCORE=0 so a crash cannot dump the secret")
    return cleared
