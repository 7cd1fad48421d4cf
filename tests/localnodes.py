# -*- test-case-name: tests.test_push -*-
"""
Real orchestrator and transcoder processes for the end-to-end tests and the
benchmarks: the demo's L{NodeLauncher}, with what only tests need on top
(the CLI C{/status}, waiting for registered transcoders, a crash by
SIGKILL).
"""

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import time
import urllib.request

from livepeer_tx.gateway.launcher import (
    PROJECT_ROOT,
    REGISTRATION_LOG,
    Node,
    NodeError,
    NodeLauncher,
    OrchestratorNode,
    freePort,
    optionArguments,
)
from livepeer_tx.transcoder.ffmpeg import findFFmpeg


def gatedFFmpeg(directory, name="gated"):
    """
    An FFmpeg (for a transcoder's C{--ffmpeg}) that waits while its gate
    file exists, so a test can hold a segment in progress for as long as it
    needs, however fast or slow the machine: create the gate once the
    transcoder has registered (its start-up test runs FFmpeg too), remove
    it to let the segment through.

    @return: C{(path of the wrapper, path of the gate file)}.
    """
    gate = os.path.join(directory, f"{name}.hold")
    wrapper = os.path.join(directory, f"{name}-ffmpeg")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nwhile [ -e {shlex.quote(gate)} ]; do sleep 0.05; done\n"
                f"exec {shlex.quote(findFFmpeg())} \"$@\"\n")
    os.chmod(wrapper, stat.S_IRWXU)
    return wrapper, gate


_DRAINING = re.compile(r"Draining \(SIGTERM\)")


class LocalNode(Node):
    """
    A node a test can query on its CLI port, crash, and stop without
    waiting for its drain.

    @cvar forkNodes: whether a twistd node is forked from this process's
        fork server when it can be (see C{tests/forkserver.py}).
    """

    forkNodes = False

    def _spawn(self):
        """
        Fork a twistd node from the fork server if this class forks; start
        anything else cold.
        """
        if self.forkNodes:
            from forkserver import canFork, forkServerFor

            if canFork(self.argv, self._env):
                return forkServerFor(self.argv[0], self._env).spawn(
                    self.argv, self._logFile, self.dataDir, self._env)
        return super()._spawn()

    def skipDrain(self, timeout=10.0):
        """
        Send SIGTERM, and once the node has started draining, SIGTERM again:
        it stops at once instead of waiting for its work (an orchestrator
        waits for renditions nobody will download). Does nothing to a node
        that is not running; returns once the node exited (or C{timeout}
        seconds later: L{Node.stop} then kills it).
        """
        if not self.running:
            return
        offset = self.logOffset()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.waitForLog(_DRAINING, timeout, since=offset)
        except NodeError:
            return
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def cliStatus(self, timeout=5.0):
        """
        C{GET /status} on the CLI port, decoded from JSON.
        """
        if self.cliAddr is None:
            raise NodeError(f"{self.name} has no CLI address")
        with urllib.request.urlopen(f"http://{self.cliAddr}/status", timeout=timeout) as response:
            return json.loads(response.read())

    def kill(self):
        """
        SIGKILL the process and its process group at once, as a crash would.

        @return: the exit status.
        """
        if self.process is None:
            return None
        self._killGroup()
        self.process.wait()
        self._closeLog()
        return self.process.returncode


class LocalOrchestratorNode(OrchestratorNode, LocalNode):
    """
    An orchestrator a test can wait on for its transcoders.
    """

    def waitForTranscoders(self, count, timeout=30.0):
        """
        Wait until the CLI C{/status} reports at least C{count} transcoders.

        @return: the status dict.
        @raise NodeError: on timeout or when the process exits.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise self._failure(f"exited with status {self.process.returncode}")
            try:
                status = self.cliStatus()
                if status.get("numTranscoders", len(status.get("transcoders", []))) >= count:
                    return status
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise self._failure(f"fewer than {count} transcoders after {timeout:g} s")
            time.sleep(0.1)


class ForkedLocalNode(LocalNode):
    """
    A L{LocalNode} forked from the fork server.
    """

    forkNodes = True


class ForkedLocalOrchestratorNode(LocalOrchestratorNode):
    """
    A L{LocalOrchestratorNode} forked from the fork server.
    """

    forkNodes = True


class LocalNodes(NodeLauncher):
    """
    A L{NodeLauncher} whose nodes are L{LocalNode}s and
    L{LocalOrchestratorNode}s.
    """

    orchestratorClass = LocalOrchestratorNode
    nodeClass = LocalNode

    def __init__(self, workDir, python=None, env=None, secret=None, forkNodes=False):
        """
        @param forkNodes: fork twistd nodes from a fork server that has
            imported Twisted and the daemons once (the tests' choice),
            instead of starting each in a new interpreter (the benchmarks',
            whose figures are an operator's).
        @see: L{NodeLauncher.__init__} for the rest.
        """
        super().__init__(workDir, python, env, secret)
        if forkNodes:
            self.orchestratorClass = ForkedLocalOrchestratorNode
            self.nodeClass = ForkedLocalNode

    def stopAll(self, timeout=10.0):
        """
        Stop every node, transcoders first, without waiting for drains (the
        tests that check drains stop their nodes themselves).

        @return: a dict of node name to exit status.
        """
        for node in sorted(self.nodes, key=lambda n: isinstance(n, OrchestratorNode)):
            node.skipDrain(timeout)
        return super().stopAll(timeout)


__all__ = [
    "LocalNode",
    "LocalNodes",
    "LocalOrchestratorNode",
    "Node",
    "NodeError",
    "OrchestratorNode",
    "PROJECT_ROOT",
    "REGISTRATION_LOG",
    "freePort",
    "gatedFFmpeg",
    "optionArguments",
]
