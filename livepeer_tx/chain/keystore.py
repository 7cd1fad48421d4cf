# -*- test-case-name: tests.test_chain_service -*-
"""
Loading the orchestrator's key from a go-ethereum keystore.
"""

import json
import os

from eth_account import Account
from eth_utils import is_address, to_checksum_address
from twisted.logger import Logger

from livepeer_tx.secret import Secret

_log = Logger()


class KeystoreError(Exception):
    """
    The key cannot be found or decrypted.
    """


def _keyFiles(path):
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise KeystoreError(f"--ethKeystorePath {path} is neither a file nor a directory")
    return sorted(
        os.path.join(path, name)
        for name in os.listdir(path)
        if os.path.isfile(os.path.join(path, name)) and not name.startswith(".")
    )


def _address(keyfile):
    try:
        with open(keyfile, encoding="utf-8") as f:
            data = json.load(f)
        return to_checksum_address("0x" + data["address"].removeprefix("0x")), data
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def loadAccount(keystorePath, ethAcctAddr=None, password=None):
    """
    Decrypt the account's key.

    @param keystorePath: a keystore directory or one key file.
    @param ethAcctAddr: which account to use when the directory holds several.
    @param password: the C{--ethPassword} value (a file path or a literal), or
        L{None} for an empty password. A literal is accepted with a warning.
    @return: an eth-account C{LocalAccount}.
    @raise KeystoreError: no matching key, several candidates, or a wrong password.
    @raise livepeer_tx.secret.SecretFileError: the password file is unsafe.
    """
    secret = Secret.fromOption(password, optionName="--ethPassword")
    if secret is not None and secret.isLiteral:
        _log.warn(
            "--ethPassword was given literally; it is visible to other users in the process "
            "list. Put it in a file readable only by you instead."
        )
    if ethAcctAddr is not None and not is_address(ethAcctAddr):
        raise KeystoreError(f"--ethAcctAddr {ethAcctAddr!r} is not an Ethereum address")
    keys = [(address, data) for address, data in map(_address, _keyFiles(keystorePath)) if address]
    if ethAcctAddr is not None:
        keys = [(a, d) for a, d in keys if a == to_checksum_address(ethAcctAddr)]
    if not keys:
        wanted = f" for {ethAcctAddr}" if ethAcctAddr else ""
        raise KeystoreError(f"no key file{wanted} in {keystorePath}")
    if len(keys) > 1:
        raise KeystoreError(
            f"{keystorePath} holds {len(keys)} keys; choose one with --ethAcctAddr"
        )
    address, data = keys[0]
    try:
        key = Account.decrypt(data, secret.read() if secret is not None else "")
    except ValueError as e:
        raise KeystoreError(f"cannot decrypt the key of {address}: {e}") from None
    account = Account.from_key(key)
    _log.info("Using Ethereum account {address}", address=account.address)
    return account
