# -*- test-case-name: tests.test_orchservice -*-
"""
The node's Ethereum identity, as go-livepeer's node-level C{Sign} and
C{VerifySig} use it: a signature is EIP-191 C{personal_sign} over the
keccak-256 of the message, 65 bytes with V 27 or 28 (golivepeer-wire.md, 2.2).
"""

from eth_account.messages import encode_defunct
from eth_utils import keccak, to_checksum_address

from .tickets import verifySignature


class NodeSigner:
    """
    Signs for the orchestrator and checks its peers' signatures.

    @ivar address: the account's 20-byte address (C{OrchestratorInfo.address}).
    """

    def __init__(self, account):
        """
        @param account: the node's eth-account C{LocalAccount}.
        """
        self._account = account
        self.address = bytes.fromhex(account.address[2:])

    def sign(self, message):
        """
        go-livepeer's C{Sign}: personal_sign over keccak-256(C{message}).
        """
        signed = self._account.sign_message(encode_defunct(primitive=keccak(bytes(message))))
        return bytes(signed.signature)

    def verify(self, address, message, sig):
        """
        go-livepeer's C{VerifySig}: whether C{sig} is C{address}'s signature
        over keccak-256(C{message}), with low S and V 27 or 28.
        """
        return verifySignature(keccak(bytes(message)), bytes(sig), bytes(address))

    def __repr__(self):
        return f"<NodeSigner {to_checksum_address(self.address)}>"
