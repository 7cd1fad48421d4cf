# -*- test-case-name: tests.test_units,tests.test_orchservice,tests.test_keyless_imports -*-
"""
Keccak-256 and Ethereum account addresses as go-livepeer writes them, for
the orchestrator on chain or off and for the gateway.

Keyless code needs only these two: pycryptodome's keccak does both (eth-hash
uses it too), without eth-utils, whose import brings pydantic and costs a
third of a second at every start. L{livepeer_tx.chain} keeps eth-utils for
the ABI work.
"""

from Crypto.Hash import keccak


def keccak256(data):
    """
    The 32-byte keccak-256 digest of C{data} (Ethereum's hash, not SHA3-256).
    """
    return keccak.new(data=data, digest_bits=256).digest()


def checksumAddress(address):
    """
    The EIP-55 text of a 20-byte address (go-ethereum's C{Address.Hex()}),
    the message a gateway signs for C{GetOrchestrator}.

    @raise ValueError: if C{address} is not 20 bytes.
    """
    address = bytes(address)
    if len(address) != 20:
        raise ValueError(f"an address is 20 bytes, not {len(address)}")
    hexAddress = address.hex()
    nibbles = keccak256(hexAddress.encode("ascii")).hex()
    return "0x" + "".join(
        character.upper() if int(nibble, 16) >= 8 else character
        for character, nibble in zip(hexAddress, nibbles)
    )
