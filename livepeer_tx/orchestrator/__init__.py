"""
The orchestrator: accepts gateways' segments and routes them to remote transcoders.
"""
