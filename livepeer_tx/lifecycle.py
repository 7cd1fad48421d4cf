"""
Ending a twistd process with a chosen exit status.
"""

import os
import sys


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

    @return: whether the dumpable flag could be cleared (Linux only).
    """
    import ctypes
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
