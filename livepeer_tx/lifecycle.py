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
