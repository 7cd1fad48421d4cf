# -*- test-case-name: tests.test_goflags,tests.test_orchservice -*-
"""
livepeer-tx: the Livepeer Orchestrator-Transcoder split, on Twisted.
"""

__version__ = "0.1.0"
