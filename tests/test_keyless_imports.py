"""
Keyless nodes import no chain code: an off-chain orchestrator and a
transcoder build their services without L{livepeer_tx.chain}, eth-abi,
eth-account, py_ecc or eth-utils (with its pydantic: a third of a second at
every start, for a hash and an address that pycryptodome gives). A module-level chain import anywhere on those paths
(an option name, an exception class, a helper) would fail here.

Each tap runs in a fresh interpreter, since this one has imported the
chain modules for other tests. The same runs check that building a
service on a given reactor installs no global one (twistd installs the
reactor it is asked for; the tests' fork server forks nodes from an
interpreter that has imported both taps, and a reactor must not cross a
fork).
"""

import json
import os
import subprocess
import sys

import pytest

CHAIN_MODULES = ("livepeer_tx.chain", "eth_abi", "eth_account", "py_ecc", "eth_utils", "pydantic")

_BUILD = """
import json, sys
from twisted.internet.testing import MemoryReactorClock
from twisted.python.threadpool import ThreadPool
import twisted.plugins.livepeer_tx_orchestrator, twisted.plugins.livepeer_tx_transcoder
from livepeer_tx.{role} import tap
class PooledMemoryReactor(MemoryReactorClock):
    def getThreadPool(self):
        return ThreadPool()
config = tap.Options()
config.parseOptions(json.loads(sys.argv[1]))
service = tap.makeService(config, reactor=PooledMemoryReactor())
assert not service.running
print(json.dumps(sorted(sys.modules)))
"""


def importedBuilding(role, arguments):
    """
    The modules a fresh interpreter holds after parsing C{arguments} with
    the C{role} tap's options and building (not starting) its service.
    """
    result = subprocess.run(
        [sys.executable, "-c", _BUILD.format(role=role), json.dumps(arguments)],
        capture_output=True, text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def chainModulesIn(modules):
    """
    The chain modules (or their submodules) among C{modules}.
    """
    return [m for m in modules if any(m == name or m.startswith(name + ".") for name in CHAIN_MODULES)]


@pytest.fixture
def secretFile(tmp_path):
    path = tmp_path / "secret"
    path.write_text("keyless\n")
    path.chmod(0o600)
    return str(path)


def test_offchainOrchestratorImportsNoChainCode(tmp_path, secretFile):
    """
    The off-chain orchestrator's options and service tree (with
    C{/metrics}) come without the chain package, the Ethereum key libraries
    and a global reactor.
    """
    modules = importedBuilding("orchestrator", [
        "--orchSecret", secretFile, "--dataDir", str(tmp_path / "data"),
        "--serviceAddr", "127.0.0.1:8935", "--cliAddr", "127.0.0.1:7935", "--monitor",
    ])
    assert "livepeer_tx.orchestrator.ingress" in modules
    assert chainModulesIn(modules) == []
    assert "twisted.internet.reactor" not in modules


def test_transcoderImportsNoChainCode(tmp_path, secretFile):
    """
    The transcoder's options and service tree (with C{/metrics}) come
    without the chain package, the Ethereum key libraries and a global
    reactor.
    """
    modules = importedBuilding("transcoder", [
        "--orchAddr", "127.0.0.1:8935", "--orchSecret", secretFile, "--dataDir", str(tmp_path / "work"),
        "--cliAddr", "127.0.0.1:7936", "--monitor",
    ])
    assert "livepeer_tx.transcoder.client" in modules
    assert chainModulesIn(modules) == []
    assert "twisted.internet.reactor" not in modules


def test_chainModulesAreDetected():
    """
    The check sees a chain import: importing the ticket processor brings in
    the chain package and eth-account.
    """
    result = subprocess.run(
        [sys.executable, "-c", "import json, sys, livepeer_tx.chain.payments; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    found = chainModulesIn(json.loads(result.stdout))
    assert "livepeer_tx.chain" in found and "eth_account" in found and "py_ecc" in found
