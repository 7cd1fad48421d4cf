"""
The tests' fork server (C{tests/forkserver.py}) starts twistd nodes as a cold
start would: twistd's own exit status and signals come back as
L{subprocess.Popen} reports them, the node gets its own session, directory,
environment and log, and inherits no descriptor of the server; what is not a
twistd node, or is asked to start cold, is not forked.
"""

import os
import signal
import subprocess
import sys

import pytest

from forkserver import COLD_START_VARIABLE, canFork, forkServerFor

from livepeer_tx.gateway.launcher import TWISTD_CODE


@pytest.fixture
def forkingNodes(nodes):
    """
    The C{nodes} fixture, whose launcher forks its twistd nodes, unless this
    run starts every node cold.
    """
    if os.environ.get(COLD_START_VARIABLE) == "1":
        pytest.skip(f"{COLD_START_VARIABLE}=1: every node starts cold in this run")
    return nodes


def test_onlyTwistdNodesAreForked():
    """
    A twistd command line of the launcher's shape can be forked; any other
    command, or any command with the cold-start variable set, cannot.
    """
    twistd = [sys.executable, "-c", TWISTD_CODE, "-n", "web"]
    assert canFork(twistd, {})
    assert not canFork(twistd, {COLD_START_VARIABLE: "1"})
    assert not canFork([sys.executable, "-c", "print(1)"], {})
    assert not canFork(["/bin/true"], {})


def test_exitStatusAndUsageErrorComeBack(forkingNodes):
    """
    A twistd that refuses its options exits with status 1 and says why in
    its log, and the status reaches the node's process object.
    """
    node = forkingNodes.startProcess(
        "refused", forkingNodes.twistdCommand("livepeer-orchestrator", {"noSuchOption": "x"}))
    assert node.process.wait(30) == 1
    assert "unknown option -noSuchOption" in node.logText()
    assert node.process.poll() == 1 and not node.running


def test_forkedNodeIsItsOwnProcess(forkingNodes, tmp_path):
    """
    A forked node runs in its own session and directory, with the
    launcher's environment, stdin on /dev/null, stdout and stderr on its log
    and no other descriptor of the server; SIGKILL is reported as -9, and a
    wait with a timeout raises as Popen's does.
    """
    port = forkingNodes.allocatePort()
    node = forkingNodes.startProcess(
        "web", forkingNodes.twistdCommand("web", {"listen": f"tcp:{port}:interface=127.0.0.1"}))
    node.waitForPort(port)
    assert node.process.__class__.__name__ == "ForkedProcess"
    assert os.getsid(node.pid) == node.pid
    assert os.readlink(f"/proc/{node.pid}/cwd") == node.dataDir
    with open(f"/proc/{node.pid}/environ", "rb") as f:
        environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if item)
    assert environ[b"PYTHONPATH"] == forkingNodes.env["PYTHONPATH"].encode()
    descriptors = {int(fd): os.readlink(f"/proc/{node.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{node.pid}/fd")}
    assert descriptors[0] == os.devnull
    assert descriptors[1] == descriptors[2] == node.logPath
    server = forkServerFor(sys.executable, forkingNodes.env).pid
    serverSockets = {os.readlink(f"/proc/{server}/fd/{fd}") for fd in os.listdir(f"/proc/{server}/fd")
                     if os.readlink(f"/proc/{server}/fd/{fd}").startswith("socket:")}
    assert serverSockets and not serverSockets & set(descriptors.values())
    with pytest.raises(subprocess.TimeoutExpired):
        node.process.wait(0.1)
    os.kill(node.pid, signal.SIGKILL)
    assert node.process.wait(30) == -signal.SIGKILL


def test_oneServerPerInterpreterAndPath(forkingNodes):
    """
    The nodes of one interpreter and C{PYTHONPATH} share one server.
    """
    env = forkingNodes.env
    assert forkServerFor(sys.executable, env) is forkServerFor(sys.executable, dict(env))


def test_aNodeThatCannotStartFailsAlone(forkingNodes, tmp_path):
    """
    A node that fails before twistd runs (its directory is gone) exits 1
    with the traceback in its log, and the server goes on forking nodes.
    """
    server = forkServerFor(sys.executable, forkingNodes.env)
    argv = forkingNodes.twistdCommand("web", {"help": True})
    with open(tmp_path / "doomed.log", "ab") as log:
        doomed = server.spawn(argv, log, str(tmp_path / "gone"), forkingNodes.env)
        assert doomed.wait(30) == 1
    assert "FileNotFoundError" in (tmp_path / "doomed.log").read_text()
    with open(tmp_path / "help.log", "ab") as log:
        helped = server.spawn(argv, log, str(tmp_path), forkingNodes.env)
        assert helped.wait(30) == 0
    assert "Usage: twistd" in (tmp_path / "help.log").read_text()
