# -*- test-case-name: tests.test_push -*-
"""
Start orchestrator and transcoder processes on this machine: what
C{livepeer-tx demo} runs (the end-to-end tests and the benchmarks build their
harness, C{tests/localnodes.py}, on it).

This module is synchronous on purpose (C{subprocess}, polling): it drives
separate processes from a thread, never from inside a running reactor. Every
process runs C{twistd -n} with the project's plugins, listens on free ports
of 127.0.0.1, logs to its own file and lives in its own process group, so
that L{NodeLauncher.stopAll} leaves nothing behind (FFmpeg children included).
"""

import atexit
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import livepeer_tx
from livepeer_tx.tls import CERT_FILENAME, certificateFingerprint, clientTLSOptions

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(livepeer_tx.__file__)))
REGISTRATION_LOG = re.compile(
    r"Successful transcoder registration transcoder=(?P<transcoder>\S+) capacity=(?P<capacity>\d+)"
)
#: What C{python -c} runs to start twistd (see L{NodeLauncher.twistdCommand}).
TWISTD_CODE = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; sys.exit(run())"


class NodeError(Exception):
    """
    A node did not do what was waited for; the message ends with its log tail.
    """


def _ephemeralPorts():
    """
    The range the kernel takes the local ports of outgoing connections from.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(part) for part in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def freePort(host="127.0.0.1", attempts=64):
    """
    A TCP port that is free on C{host} right now, picked at random below
    the ephemeral range: between this check and the node's bind, no
    outgoing connection of this machine can take it as its local port (with
    C{bind(0)}, a port from that range could be, by a busy test or bench
    next door), and two launchers seldom pick the same one. Falls back to
    C{bind(0)} when no such port is free.
    """
    low = _ephemeralPorts()[0]
    first = max(1024, low - 16384)
    for _ in range(attempts if low - first >= 1024 else 0):
        port = random.randrange(first, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def optionArguments(options):
    """
    Turn keyword options into command-line arguments: C{name=value} gives
    C{--name value}, C{True} a bare C{--name}, C{None}/C{False} nothing, and a
    list or tuple repeats the option.
    """
    args = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        if value is True:
            args.append(f"--{name}")
        elif isinstance(value, (list, tuple)):
            for item in value:
                args.extend([f"--{name}", str(item)])
        else:
            args.extend([f"--{name}", str(value)])
    return args


class Node:
    """
    One running process and its log file.

    @ivar name: a label, also the stem of the log file.
    @ivar argv: the command line.
    @ivar process: the C{subprocess.Popen}.
    @ivar logPath: the file receiving its stdout and stderr.
    @ivar dataDir: its data directory.
    @ivar cliAddr: its plain-HTTP admin address C{host:port}, if any.
    """

    def __init__(self, name, argv, logPath, dataDir, env, cliAddr=None):
        self.name = name
        self.argv = list(argv)
        self.logPath = logPath
        self.dataDir = dataDir
        self.cliAddr = cliAddr
        self._env = env
        self.process = None
        self._logFile = None
        self._groupKilled = False
        self.start()

    def start(self):
        """
        Start (or restart, after L{stop} or L{kill}) the process, appending to its log.
        """
        if self.running:
            raise NodeError(f"{self.name} is already running")
        if self._logFile is not None:
            self._logFile.close()
        self._logFile = open(self.logPath, "ab")
        self.process = self._spawn()
        self._groupKilled = False

    restart = start

    def _spawn(self):
        """
        Run L{argv} in a new session, logging to the open log file: the
        C{subprocess.Popen} L{start} keeps.
        """
        return subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._logFile,
            stderr=subprocess.STDOUT,
            cwd=self.dataDir,
            env=self._env,
            start_new_session=True,
        )

    @property
    def pid(self):
        """
        The process id.
        """
        return self.process.pid

    @property
    def running(self):
        """
        Whether the process is alive.
        """
        return self.process is not None and self.process.poll() is None

    def logText(self):
        """
        Everything the process has logged so far.
        """
        with open(self.logPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def logOffset(self):
        """
        The current length of the log, to wait for lines logged after now
        (pass it as C{since} to L{waitForLog}).
        """
        return len(self.logText())

    def logTail(self, lines=40):
        """
        The last C{lines} lines of the log.
        """
        return "\n".join(self.logText().splitlines()[-lines:])

    def _failure(self, message):
        return NodeError(f"{self.name}: {message}\n--- log tail ({self.logPath}) ---\n{self.logTail()}")

    def waitForLog(self, pattern, timeout=30.0, since=0):
        """
        Wait until the log (from character offset C{since}) matches C{pattern}.

        @param pattern: a regular expression (string or compiled).
        @return: the C{re.Match}.
        @raise NodeError: on timeout, or when the process exits first.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        return self._pollUntil(
            lambda: regex.search(self.logText(), since), f"logging {regex.pattern!r}", f"log {regex.pattern!r}",
            timeout)

    def waitForPort(self, port, host="127.0.0.1", timeout=30.0):
        """
        Wait until something accepts TCP connections on C{host:port}.

        @raise NodeError: on timeout, or when the process exits first.
        """

        def accepts():
            try:
                with socket.create_connection((host, port), timeout=1):
                    return True
            except OSError:
                return False

        self._pollUntil(accepts, f"listening on {host}:{port}", f"listen on {host}:{port}", timeout)

    def _pollUntil(self, attempt, before, didNot, timeout):
        """
        Call C{attempt} every 50 ms until it returns something true, and
        return that.

        @param before: what the process did not get to do if it exits first,
            for the error ("exited with status N before C{before}").
        @param didNot: what it did not do in time, for the error ("did not
            C{didNot} within T s").
        @raise NodeError: on timeout, or when the process exits first.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = attempt()
            if result:
                return result
            if not self.running:
                raise self._failure(f"exited with status {self.process.returncode} before {before}")
            if time.monotonic() > deadline:
                raise self._failure(f"did not {didNot} within {timeout:g} s")
            time.sleep(0.05)

    def stop(self, timeout=10.0):
        """
        Ask the process to stop (SIGTERM), wait, then SIGKILL its whole process
        group if it (or anything it started) is still there.

        @return: the exit status (negative for a signal), or C{None} if never started.
        """
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                self.process.terminate()
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._killGroup()
        self.process.wait()
        self._closeLog()
        return self.process.returncode

    def _killGroup(self):
        # Once the leader is reaped its id may be reused: kill the group only once.
        if self._groupKilled:
            return
        self._groupKilled = True
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _closeLog(self):
        if self._logFile is not None:
            self._logFile.close()
            self._logFile = None

    def __repr__(self):
        state = "running" if self.running else "stopped"
        return f"<Node {self.name} pid={self.process.pid if self.process else None} {state}>"


class OrchestratorNode(Node):
    """
    A running C{livepeer-orchestrator}.

    @ivar serviceAddr: its public TLS address C{127.0.0.1:port}.
    @ivar secretPath: the file holding the transcoders' shared secret.
    @ivar certPath: its certificate: C{--tlsCert} if given, else the
        self-signed C{cert.pem} it writes into its data directory.
    """

    def __init__(
        self, name, argv, logPath, dataDir, env, cliAddr, serviceAddr, secretPath, certPath=None
    ):
        self.serviceAddr = serviceAddr
        self.secretPath = secretPath
        self.certPath = certPath or os.path.join(dataDir, CERT_FILENAME)
        super().__init__(name, argv, logPath, dataDir, env, cliAddr)

    @property
    def host(self):
        """
        The host of the public address.
        """
        return self.serviceAddr.rsplit(":", 1)[0]

    @property
    def port(self):
        """
        The port of the public address.
        """
        return int(self.serviceAddr.rsplit(":", 1)[1])

    @property
    def publicUrl(self):
        """
        The public base URL, C{https://127.0.0.1:port}.
        """
        return f"https://{self.serviceAddr}"

    @property
    def fingerprintBytes(self):
        """
        The SHA-256 digest of the orchestrator's certificate.

        @raise NodeError: the certificate does not exist yet.
        """
        try:
            with open(self.certPath, "rb") as f:
                return certificateFingerprint(f.read())
        except FileNotFoundError:
            raise self._failure(f"no certificate at {self.certPath} yet") from None

    @property
    def fingerprint(self):
        """
        The SHA-256 fingerprint of the orchestrator's certificate as lowercase hex,
        the form C{--orchCertFingerprint} takes.
        """
        return self.fingerprintBytes.hex()

    def clientTLSOptions(self):
        """
        Client TLS that pins this orchestrator's certificate, for a
        L{livepeer_tx.gateway.push.SegmentPusher}.
        """
        return clientTLSOptions(self.host, fingerprint=self.fingerprintBytes)


class NodeLauncher:
    """
    Orchestrators and transcoders started on 127.0.0.1 under one work directory.

    Use as a context manager, or call L{stopAll}; processes still running when
    the interpreter exits are stopped too.

    @cvar orchestratorClass: the L{OrchestratorNode} class orchestrators get.
    @cvar nodeClass: the L{Node} class every other process gets.
    """

    orchestratorClass = OrchestratorNode
    nodeClass = Node

    def __init__(self, workDir, python=None, env=None, secret=None):
        """
        @param workDir: a directory for data directories, logs and the secret.
        @param python: the interpreter to run twistd with (default: this one).
        @param env: extra environment variables for every node.
        @param secret: the shared secret (default: random).
        """
        self.workDir = os.path.abspath(workDir)
        os.makedirs(self.workDir, exist_ok=True)
        self.python = python or sys.executable
        self.nodes = []
        self._counts = {}
        self._usedPorts = set()
        self.secretPath = os.path.join(self.workDir, "orchSecret")
        self.writeSecret(secret or os.urandom(24).hex())
        self._env = dict(os.environ)
        self._env["PYTHONPATH"] = os.pathsep.join(
            [PROJECT_ROOT] + [p for p in self._env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        self._env["PYTHONUNBUFFERED"] = "1"
        self._env.update(env or {})
        atexit.register(self.stopAll)

    @property
    def env(self):
        """
        The environment every node runs with (a copy).
        """
        return dict(self._env)

    def writeSecret(self, secret, path=None):
        """
        Write a secret file readable only by its owner.

        @return: its path.
        """
        path = path or self.secretPath
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        os.chmod(path, 0o600)
        return path

    def allocatePort(self):
        """
        A free port on 127.0.0.1 not handed out before by this object.
        """
        while True:
            port = freePort()
            if port not in self._usedPorts:
                self._usedPorts.add(port)
                return port

    def _nextName(self, role):
        self._counts[role] = self._counts.get(role, 0) + 1
        return f"{role}-{self._counts[role]}"

    def twistdCommand(self, plugin, options):
        """
        The command line running twistd in the foreground with C{plugin}.
        """
        return [self.python, "-c", TWISTD_CODE, "-n", "--pidfile=", plugin] + optionArguments(options)

    def startProcess(self, name, argv, dataDir=None, cliAddr=None, nodeClass=None, **nodeArgs):
        """
        Start any command as a managed L{Node} (a C{nodeClass}, by default
        L{NodeLauncher.nodeClass}) logging to C{<workDir>/<name>.log}.
        """
        nodeClass = nodeClass or self.nodeClass
        dataDir = dataDir or os.path.join(self.workDir, name)
        os.makedirs(dataDir, mode=0o700, exist_ok=True)
        logPath = os.path.join(self.workDir, f"{name}.log")
        node = nodeClass(
            name=name, argv=argv, logPath=logPath, dataDir=dataDir, env=self._env,
            cliAddr=cliAddr, **nodeArgs,
        )
        self.nodes.append(node)
        return node

    def _startTwistd(self, name, plugin, options, **nodeArgs):
        return self.startProcess(name, self.twistdCommand(plugin, options), dataDir=options["dataDir"],
                                 cliAddr=options["cliAddr"], **nodeArgs)

    def startOrchestrator(self, wait=True, timeout=30.0, **extraOptions):
        """
        Start C{livepeer-orchestrator} on free ports of 127.0.0.1.

        Keyword options are passed as command-line options and override the
        defaults (C{orchSecret}, C{serviceAddr}, C{httpAddr}, C{cliAddr},
        C{dataDir}).

        @param wait: wait until the public and CLI ports accept connections and
            the certificate exists.
        @return: an L{OrchestratorNode}.
        """
        name = self._nextName("orchestrator")
        port, cliPort = self.allocatePort(), self.allocatePort()
        options = {
            "orchSecret": self.secretPath,
            "serviceAddr": f"127.0.0.1:{port}",
            "httpAddr": f"127.0.0.1:{port}",
            "cliAddr": f"127.0.0.1:{cliPort}",
            "dataDir": os.path.join(self.workDir, name),
        }
        options.update(extraOptions)
        node = self._startTwistd(
            name,
            "livepeer-orchestrator",
            options,
            nodeClass=self.orchestratorClass,
            serviceAddr=options["serviceAddr"],
            secretPath=options["orchSecret"],
            certPath=options.get("tlsCert"),
        )
        if wait:
            self.waitUntilReady(node, timeout)
        return node

    def waitUntilReady(self, node, timeout=30.0):
        """
        Wait until a node's listening ports accept connections (and, for an
        orchestrator, its certificate exists).
        """
        deadline = time.monotonic() + timeout
        if isinstance(node, OrchestratorNode):
            node.waitForPort(node.port, node.host, timeout)
            node._pollUntil(lambda: os.path.exists(node.certPath), f"writing its certificate {node.certPath}",
                            f"write its certificate {node.certPath}", max(0.0, deadline - time.monotonic()))
        if node.cliAddr:
            host, port = node.cliAddr.rsplit(":", 1)
            node.waitForPort(int(port), host, max(1.0, deadline - time.monotonic()))

    def startTranscoder(self, orchestrator, maxSessions=1, wait=True, timeout=30.0, **extraOptions):
        """
        Start C{livepeer-transcoder} against C{orchestrator}, trusting its
        certificate by fingerprint.

        @param maxSessions: the capacity it registers with.
        @param wait: wait until its CLI port accepts connections (registration
            itself is not waited for: see L{REGISTRATION_LOG}).
        @return: a L{Node}.
        """
        name = self._nextName("transcoder")
        options = {
            "orchAddr": orchestrator.serviceAddr,
            "orchSecret": orchestrator.secretPath,
            "orchCertFingerprint": orchestrator.fingerprint,
            "maxSessions": maxSessions,
            "dataDir": os.path.join(self.workDir, name),
            "cliAddr": f"127.0.0.1:{self.allocatePort()}",
        }
        options.update(extraOptions)
        node = self._startTwistd(name, "livepeer-transcoder", options)
        if wait and node.cliAddr:
            self.waitUntilReady(node, timeout)
        return node

    def stopAll(self, timeout=10.0):
        """
        Stop every node, transcoders first.

        @return: a dict of node name to exit status.
        """
        statuses = {}
        for node in sorted(self.nodes, key=lambda n: isinstance(n, OrchestratorNode)):
            statuses[node.name] = node.stop(timeout)
        return statuses

    def close(self):
        """
        Stop every node and forget the exit hook.
        """
        try:
            return self.stopAll()
        finally:
            atexit.unregister(self.stopAll)

    def __enter__(self):
        return self

    def __exit__(self, *excInfo):
        self.close()
        return False


__all__ = [
    "NodeLauncher",
    "Node",
    "OrchestratorNode",
    "NodeError",
    "REGISTRATION_LOG",
    "TWISTD_CODE",
    "freePort",
    "optionArguments",
]
