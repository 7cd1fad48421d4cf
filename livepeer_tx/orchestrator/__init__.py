# -*- test-case-name: tests.test_tap_wiring -*-
"""
The orchestrator: accepts gateways' segments and routes them to remote transcoders.
"""
