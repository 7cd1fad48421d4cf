# -*- test-case-name: tests.test_hostile_transcoder,tests.test_chain_service -*-
"""
The orchestrator's on-chain side: JSON-RPC over Twisted, Livepeer contract
access through the Controller, transactions with a nonce manager and capped
EIP-1559 fees, the reward service, payment tickets and their redemption.

Nothing here blocks the reactor: JSON-RPC goes through a L{twisted.web.client.Agent},
and eth-abi / eth-account / eth-utils are used offline for encoding and signing.
"""

from livepeer_tx.interpreter import interpreterSettingsKept

with interpreterSettingsKept():
    # py_ecc (imported by eth-account) raises the recursion limit on import:
    # import it once here, so that it never changes it for us later.
    import py_ecc  # noqa: F401
