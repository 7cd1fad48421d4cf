"""
livepeer-tx: the Livepeer Orchestrator-Transcoder split, on Twisted.
"""

__version__ = "0.1.0"
