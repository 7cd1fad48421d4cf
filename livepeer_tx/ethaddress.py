# -*- test-case-name: tests.test_orchservice -*-
"""
Ethereum account addresses as go-livepeer writes them, for the orchestrator
on chain or off (L{livepeer_tx.chain} brings eth-abi and eth-account, which
an address's text does not need).
"""

from eth_utils import to_checksum_address


def checksumAddress(address):
    """
    The EIP-55 text of a 20-byte address (go-ethereum's C{Address.Hex()}),
    the message a gateway signs for C{GetOrchestrator}.
    """
    return to_checksum_address(bytes(address))
