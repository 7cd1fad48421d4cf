# -*- test-case-name: tests.test_forkserver -*-
"""
A fork server for the end-to-end tests' nodes: one process per test
worker imports Twisted, twistd and the daemons' modules once, then forks a
child for every node that a L{LocalNodes} made with C{forkNodes=True}
starts. The child takes its own session, the node's log file as stdout and
stderr, /dev/null as stdin, the node's directory and environment, closes
every other descriptor, then runs twistd's own C{run()} with the node's
command line; its exit status comes back as L{subprocess.Popen} reports
one.

Only the import is shared, which is most of a node's start-up CPU (a
forked orchestrator is ready for 0.03 CPU-s here, a cold one for 0.9): the
suite starts some fifty nodes. Nothing is imported before the fork that
installs a reactor or starts a thread (the server checks), so each child
installs its own reactor as twistd does. What differs from a cold start:
the process's command line (ps, C{/proc/PID/cmdline}) is the server's, and
what the interpreter reads from the environment only at start
(L{STARTUP_VARIABLES}: hash seed, warnings, locale...) is the server's, so
only nodes whose environment agrees on those are forked from it.

A command that is not a twistd node starts cold, as does every node when
C{LIVEPEER_TX_TEST_COLD_START=1} is set. Cold starts stay where start-up
itself is under test or measured: the demo (C{livepeer-tx demo}, as
operators run it), the package test, the logging and configuration-file
tests, the keyless-import tests, and the benchmarks.

The server's protocol: a C{SOCK_SEQPACKET} socket pair. A request is a JSON
object (C{args}: twistd's arguments, C{env}, C{cwd}) carrying the log
file's descriptor; the answer is C{{"pid": N}}. When a child exits, the
server reaps it and sends C{{"exited": N, "returncode": R}} (negative for a
signal, as L{subprocess.Popen.returncode}); if the server fails, it sends
C{{"error": traceback}} before it exits.
"""

import importlib
import json
import os
import pkgutil
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback

COLD_START_VARIABLE = "LIVEPEER_TX_TEST_COLD_START"
_MESSAGE_BYTES = 1 << 20


#: Subpackages of livepeer_tx that keyless nodes never import: the chain
#: code (web3, a second at import) and the gateway's tools.
_NOT_PRELOADED = ("livepeer_tx.chain", "livepeer_tx.gateway")


def _nodeModules(path, prefix):
    """
    The names of the modules under C{path} (a package's C{__path__}) but
    for L{_NOT_PRELOADED}, found without importing any of them
    (C{pkgutil.walk_packages} would import the chain package to walk it).
    """
    for module in pkgutil.iter_modules(path, prefix):
        if module.name in _NOT_PRELOADED:
            continue
        yield module.name
        if module.ispkg:
            yield from _nodeModules([os.path.join(path[0], module.name.rpartition(".")[2])], module.name + ".")


def _preload():
    """
    Import what nodes import (twistd, the reactor's module, every module of
    the daemons), and check that nothing of it must not cross a fork (an
    installed reactor, a thread).
    """
    import twisted.application.app  # noqa: F401
    import twisted.internet.default  # noqa: F401
    import twisted.internet.epollreactor  # noqa: F401
    import twisted.scripts._twistd_unix  # noqa: F401
    import twisted.scripts.twistd  # noqa: F401
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    import livepeer_tx

    for name in _nodeModules(livepeer_tx.__path__, "livepeer_tx."):
        importlib.import_module(name)
    list(getPlugins(IServiceMaker))
    if "twisted.internet.reactor" in sys.modules:
        raise RuntimeError("a preloaded module installed a reactor")
    if threading.active_count() != 1:
        raise RuntimeError(f"a preloaded module started threads: {threading.enumerate()}")


def _becomeNode(request, logFD, control):
    """
    In the forked child: become the node C{request} describes and run
    twistd; never returns.
    """
    control.detach()
    os.setsid()
    devNull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devNull, 0)
    os.dup2(logFD, 1)
    os.dup2(logFD, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    from twisted.scripts.twistd import run

    sys.argv = ["twistd"] + request["args"]
    sys.exit(run())


def serve(controlFD):
    """
    The server's loop: fork a node for each request on C{controlFD}, report
    each child's exit; return when the client closes its end.
    """
    control = socket.socket(fileno=controlFD)
    try:
        _preload()
        control.send(json.dumps({"ready": os.getpid()}).encode())
        _forkNodes(control)
    except Exception:
        control.send(json.dumps({"error": traceback.format_exc()}).encode())


def _forkNodes(control):
    children = {}
    while True:
        readable, _, _ = select.select([control] + list(children), [], [])
        for ready in readable:
            if ready is control:
                message, fds, _, _ = socket.recv_fds(control, _MESSAGE_BYTES, 1)
                if not message:
                    return
                request = json.loads(message)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    try:
                        _becomeNode(request, fds[0], control)
                    except SystemExit:
                        raise
                    except BaseException:
                        # Never back into the server's loop: fail as a cold start would.
                        traceback.print_exc()
                        sys.stderr.flush()
                        os._exit(1)
                os.close(fds[0])
                children[os.pidfd_open(pid)] = pid
                control.send(json.dumps({"pid": pid}).encode())
            else:
                pid = children.pop(ready)
                os.close(ready)
                _, status = os.waitpid(pid, 0)
                control.send(json.dumps({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)}).encode())


class ForkedProcess:
    """
    A node forked by a L{ForkServer}, with the part of L{subprocess.Popen}'s
    interface that L{Node} and the tests use.

    @ivar pid: its process id.
    @ivar args: its command line, as it would have been run cold.
    @ivar returncode: its exit status once reaped (negative for a
        signal), else L{None}.
    """

    def __init__(self, server, pid, args):
        self._server = server
        self.pid = pid
        self.args = args
        self.returncode = None

    def poll(self):
        """
        The exit status if it has exited, else L{None}.
        """
        if self.returncode is None:
            self.returncode = self._server.exitStatus(self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout=None):
        """
        Wait for it to exit.

        @raise subprocess.TimeoutExpired: if it is still running after C{timeout} s.
        """
        if self.returncode is None:
            self.returncode = self._server.exitStatus(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, signum):
        """
        Send C{signum} unless it has already been reaped.
        """
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self):
        """
        Send SIGTERM.
        """
        self.send_signal(signal.SIGTERM)

    def kill(self):
        """
        Send SIGKILL.
        """
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """
    The client side: starts the server process and asks it for nodes. The
    server lives until this process exits (its end of the socket pair
    closes then), so that the nodes' statuses can still be collected by
    exit hooks such as L{NodeLauncher.stopAll}.
    """

    def __init__(self, python, env):
        """
        @param python: the interpreter the nodes would run cold (the server
            runs on it, so that what it imports is theirs).
        @param env: the environment the server starts with (see
            L{STARTUP_VARIABLES}).
        """
        self._lock = threading.Lock()
        self._exited = {}
        self._replies = []
        self._failure = None
        self._changed = threading.Condition()
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        bootstrap = "import runpy, sys; runpy.run_path(sys.argv[1])['serve'](int(sys.argv[2]))"
        self._process = subprocess.Popen(
            [python, "-c", bootstrap, os.path.abspath(__file__), str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        theirs.close()
        self._control.settimeout(60)
        ready = json.loads(self._control.recv(_MESSAGE_BYTES) or b"{}")
        self._control.settimeout(None)
        if "ready" not in ready:
            self._process.kill()
            self._process.wait(10)
            raise RuntimeError(f"the fork server did not start: {ready.get('error', 'it exited')}")
        self.pid = ready["ready"]
        self._reader = threading.Thread(target=self._read, name="fork-server-reader", daemon=True)
        self._reader.start()

    @property
    def alive(self):
        """
        Whether the server still answers.
        """
        return self._failure is None

    def _read(self):
        failure = "it exited"
        try:
            while True:
                reply = json.loads(self._control.recv(_MESSAGE_BYTES) or b"null")
                if reply is None:
                    return
                if "error" in reply:
                    failure = reply["error"]
                    continue
                with self._changed:
                    if "exited" in reply:
                        self._exited[reply["exited"]] = reply["returncode"]
                    else:
                        # A new child may have an earlier one's pid.
                        self._exited.pop(reply["pid"], None)
                        self._replies.append(reply["pid"])
                    self._changed.notify_all()
        except Exception as e:
            failure = f"its answers could not be read: {e!r}"
        finally:
            self._fail(failure)

    def _fail(self, reason):
        with self._changed:
            if self._failure is None:
                self._failure = f"the fork server (pid {self.pid}) failed: {reason}"
            self._changed.notify_all()

    def spawn(self, argv, logFile, cwd, env):
        """
        Fork a node running twistd with C{argv[3:]}.

        @return: a L{ForkedProcess}.
        @raise RuntimeError: if the server is gone or does not answer (it is
            then given up).
        """
        request = json.dumps({"args": list(argv[3:]), "env": dict(env), "cwd": cwd}).encode()
        with self._lock:
            if self._failure is not None:
                raise RuntimeError(self._failure)
            socket.send_fds(self._control, [request], [logFile.fileno()])
            with self._changed:
                if not self._changed.wait_for(lambda: self._replies or self._failure, timeout=30):
                    self._fail("no answer to a request within 30 s")
                if not self._replies:
                    raise RuntimeError(self._failure)
                pid = self._replies.pop(0)
        return ForkedProcess(self, pid, list(argv))

    def exitStatus(self, pid, timeout):
        """
        The exit status of child C{pid}, waiting up to C{timeout} s for it
        (forever if L{None}); L{None} if it is still running.

        @raise RuntimeError: if the server failed before reporting it.
        """
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exited or self._failure, timeout=timeout)
            if pid not in self._exited and self._failure is not None:
                raise RuntimeError(f"{self._failure}; the status of {pid} is lost")
            return self._exited.get(pid)


#: What the interpreter reads once, at start: a forked node has the
#: server's, so only nodes whose environment has the same values are forked.
STARTUP_VARIABLES = (
    "PYTHONPATH", "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONDEVMODE", "PYTHONFAULTHANDLER",
    "PYTHONIOENCODING", "PYTHONUNBUFFERED", "PYTHONUTF8", "PYTHONMALLOC", "LANG", "LC_ALL", "LC_CTYPE", "TZ",
)


def canFork(argv, env):
    """
    Whether the node C{argv} (run with C{env}) can be forked: a twistd
    command line of L{NodeLauncher.twistdCommand}'s shape, and no
    C{LIVEPEER_TX_TEST_COLD_START=1}.
    """
    from livepeer_tx.gateway.launcher import TWISTD_CODE

    return len(argv) >= 3 and argv[1:3] == ["-c", TWISTD_CODE] and env.get(COLD_START_VARIABLE) != "1"


_servers = {}


def forkServerFor(python, env):
    """
    This process's L{ForkServer} for C{python} and C{env}'s
    L{STARTUP_VARIABLES}, started on first use (again if it failed).
    """
    key = (python,) + tuple(env.get(name) for name in STARTUP_VARIABLES)
    if key not in _servers or not _servers[key].alive:
        _servers[key] = ForkServer(python, env)
    return _servers[key]
