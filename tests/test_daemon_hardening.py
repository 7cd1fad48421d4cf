"""
Process-level hardening of the daemons: no core dumps that could hold the
secret or keys, and unusable key files refused as usage errors.
"""

import os
import re
import subprocess
import sys

import pytest
from twisted.python import usage

from livepeer_tx.orchestrator import tap as orchestratorTap
from livepeer_tx.tls import ServerCertificate

PROBE = """
import ctypes, resource
from livepeer_tx.lifecycle import preventCoreDumps
before = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)
cleared = preventCoreDumps()
print(before, int(cleared), ctypes.CDLL(None).prctl(3, 0, 0, 0, 0), resource.getrlimit(resource.RLIMIT_CORE)[1])
"""


def writeFile(path, text, mode):
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_preventCoreDumpsClearsDumpableAndCoreLimit():
    """
    After L{preventCoreDumps} the process is no longer dumpable
    (C{PR_GET_DUMPABLE} reads 0) and its hard core size limit is 0.
    """
    output = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    ).stdout.split()
    assert output == ["1", "1", "0", "0"]


def test_orchestratorProcessCannotDumpCore(nodes):
    """
    A running orchestrator holds the secret and the TLS key: its core limit is 0.
    """
    orchestrator = nodes.startOrchestrator()
    with open(f"/proc/{orchestrator.pid}/limits") as f:
        limits = {line[:26].strip(): line[26:].split() for line in f.read().splitlines()[1:]}
    assert limits["Max core file size"][:2] == ["0", "0"]


@pytest.mark.parametrize("ownKey", [True, False])
def test_readableTlsKeyIsAUsageError(tmp_path, ownKey):
    """
    A group- or world-readable key (the operator's --tlsKey, or the
    self-signed key in --dataDir) is refused while the options are parsed,
    so twistd prints a usage message instead of a traceback.
    """
    secret = writeFile(tmp_path / "secret", "s3cret", 0o600)
    dataDir = tmp_path / "data"
    certificate = ServerCertificate.loadOrCreate(str(dataDir), "127.0.0.1")
    arguments = ["--orchSecret", secret, "--dataDir", str(dataDir)]
    if ownKey:
        keyPath = writeFile(tmp_path / "key.pem", open(certificate.keyPath).read(), 0o640)
        arguments += ["--tlsCert", certificate.certPath, "--tlsKey", keyPath]
    else:
        os.chmod(certificate.keyPath, 0o644)
    with pytest.raises(usage.UsageError, match="group or others"):
        orchestratorTap.Options().parseOptions(arguments)


def test_twistdReportsAReadableKeyWithoutATraceback(tmp_path, nodes):
    """
    Through the real twistd, the refusal is one usage line and a failing exit.
    """
    secret = writeFile(tmp_path / "secret", "s3cret", 0o600)
    certificate = ServerCertificate.loadOrCreate(str(tmp_path / "own"), "127.0.0.1")
    keyPath = writeFile(tmp_path / "key.pem", open(certificate.keyPath).read(), 0o644)
    argv = nodes.twistdCommand("livepeer-orchestrator", {
        "orchSecret": secret, "tlsCert": certificate.certPath, "tlsKey": keyPath,
        "dataDir": str(tmp_path / "data"), "httpAddr": "127.0.0.1:1", "cliAddr": "127.0.0.1:1",
    })
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=nodes.env)
    output = finished.stdout + finished.stderr
    assert "accessible by group or others" in output
    assert "Traceback" not in output
    assert finished.returncode != 0


@pytest.mark.parametrize("name", ["orchestrator", "transcoder"])
def test_unitsAllowNoCoreAndEnoughDescriptors(name):
    """
    Issue 7: systemd's default of 1024 descriptors was filled by a thousand
    leaked sockets, and a core dump held the secret. Both units set
    C{LimitCORE=0} and a C{LimitNOFILE} well above the orchestrator's
    default C{--maxConnections}, so the connection cap is reached first.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "etc", "systemd", f"livepeer-{name}.service")) as f:
        unit = f.read()
    assert re.search(r"^LimitCORE=0$", unit, re.M)
    descriptors = int(re.search(r"^LimitNOFILE=(\d+)$", unit, re.M).group(1))
    options = orchestratorTap.Options()
    maxConnections = int(next(default for longName, _, default, *_ in options.optParameters
                              if longName == "maxConnections"))
    assert descriptors >= 4 * maxConnections
