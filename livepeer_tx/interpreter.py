# -*- test-case-name: tests.test_hostile_transcoder -*-
"""
Keeping third-party imports from changing interpreter-wide settings.

Some libraries change settings of the whole interpreter when imported: py_ecc
(pulled in by eth-account) raises the recursion limit to 100,000, which lets a
deeply nested input overflow the C stack instead of raising RecursionError.
"""

import contextlib
import sys


@contextlib.contextmanager
def interpreterSettingsKept():
    """
    Run the body (typically an import), then put back the interpreter-wide
    settings it changed: the recursion limit, the integer string-conversion
    limit and the thread switch interval.
    """
    recursionLimit = sys.getrecursionlimit()
    intDigits = sys.get_int_max_str_digits()
    switchInterval = sys.getswitchinterval()
    try:
        yield
    finally:
        if sys.getrecursionlimit() != recursionLimit:
            sys.setrecursionlimit(recursionLimit)
        if sys.get_int_max_str_digits() != intDigits:
            sys.set_int_max_str_digits(intDigits)
        if sys.getswitchinterval() != switchInterval:
            sys.setswitchinterval(switchInterval)
