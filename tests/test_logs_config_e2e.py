"""
End to end with real twistd processes: a log file renamed and reopened
(SIGUSR1) while the orchestrator logs fast loses and repeats no line;
journal output carries priorities; go-livepeer config files and LP_
variables start an orchestrator and a transcoder that register.
"""

import collections
import itertools
import os
import re
import signal
import socket
import threading
import time
import urllib.request

from e2e import RawWebSocket

from localnodes import REGISTRATION_LOG, LocalNodes, LocalOrchestratorNode

REFUSED = re.compile(rb"Refused a request from (127\.\d+\.\d+\.\d+):\d+: 400 malformed header line")
FILE_LINE = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^\]]+\] ")
JOURNAL_LINE = re.compile(r"<[2-7]>")


def waitUntil(predicate, timeout, what):
    """
    Poll C{predicate} until it is true; fail after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def catches(pid, signum):
    """
    Whether process C{pid} has a handler for C{signum} (Linux's
    C{/proc/PID/status}).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


def sourceAddress(sequence):
    """
    A distinct loopback address for request C{sequence}: it names the
    request in the orchestrator's log line.
    """
    return f"127.{20 + sequence // 62500}.{(sequence // 250) % 250 + 1}.{sequence % 250 + 1}"


def malformedRequest(cliPort, sequence):
    """
    Send the CLI port a request with a malformed header from
    L{sourceAddress}C{(sequence)}; the orchestrator answers 400 and logs one
    line naming that address.
    """
    with socket.socket() as s:
        s.settimeout(30)
        s.bind((sourceAddress(sequence), 0))
        s.connect(("127.0.0.1", cliPort))
        s.sendall(b"GET /status HTTP/1.1\r\nthis is no header\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer


def startFileLoggingOrchestrator(nodes, logPath, **options):
    """
    Start an orchestrator with twistd's C{--logfile}.
    """
    port, cliPort = nodes.allocatePort(), nodes.allocatePort()
    dataDir = os.path.join(nodes.workDir, "orchestrator-file")
    options = dict({"orchSecret": nodes.secretPath, "serviceAddr": f"127.0.0.1:{port}",
                    "httpAddr": f"127.0.0.1:{port}", "cliAddr": f"127.0.0.1:{cliPort}", "dataDir": dataDir},
                   **options)
    argv = nodes.twistdCommand("livepeer-orchestrator", options)
    argv.insert(argv.index("--pidfile=") + 1, f"--logfile={logPath}")
    node = nodes.startProcess("orchestrator-file", argv, dataDir=dataDir, cliAddr=options["cliAddr"],
                              nodeClass=LocalOrchestratorNode, serviceAddr=options["serviceAddr"],
                              secretPath=nodes.secretPath)
    nodes.waitUntilReady(node)
    return node, cliPort


def test_logFileRotationUnderLoad(nodes, tmp_path):
    """
    While four clients make the orchestrator log a line per request, the log
    file is renamed and SIGUSR1 sent, again and again (the clients go on
    until the last rotation): across all the files every request's line is
    there exactly once, every line is whole, and there is no NUL byte.
    """
    logPath = str(tmp_path / "orchestrator.log")
    node, cliPort = startFileLoggingOrchestrator(nodes, logPath)
    waitUntil(lambda: catches(node.pid, signal.SIGUSR1), 30, "the SIGUSR1 handler")
    clients, rotations = 4, 6
    sequence, answered, failures, rotating = itertools.count(), [], [], threading.Event()
    rotating.set()

    def load():
        try:
            while rotating.is_set():
                n = next(sequence)
                malformedRequest(cliPort, n)
                answered.append(n)
        except Exception as e:  # reported below
            failures.append(e)

    threads = [threading.Thread(target=load) for _ in range(clients)]
    for thread in threads:
        thread.start()
    rotated = []
    try:
        while len(rotated) < rotations and not failures:
            waitUntil(lambda: os.path.getsize(logPath) > 2000 or failures, 60, "lines in the new log file")
            renamed = f"{logPath}.{len(rotated) + 1}"
            os.rename(logPath, renamed)
            os.kill(node.pid, signal.SIGUSR1)
            rotated.append(renamed)
            waitUntil(lambda: os.path.exists(logPath), 30, "the log file reopened")
    finally:
        rotating.clear()
        for thread in threads:
            thread.join()
    assert not failures, failures

    seen = collections.Counter()
    for path in rotated + [logPath]:
        with open(path, "rb") as f:
            data = f.read()
        assert b"\0" not in data, path
        assert data.endswith(b"\n"), path
        for line in data.splitlines():
            assert FILE_LINE.match(line), (path, line)
            match = REFUSED.search(line)
            if match:
                seen[match.group(1).decode()] += 1
    expected = {sourceAddress(n) for n in answered}
    assert set(seen) == expected
    assert set(seen.values()) == {1}
    assert node.running
    with open(logPath, "rb") as f:
        assert b"Reopened the log file " + logPath.encode() in f.read()


def test_journalLinesCarryPriorities(tmp_path):
    """
    With standard output connected to the journal (C{JOURNAL_STREAM} names
    it), every line starts with its syslog priority and has no timestamp:
    info, a warning and an error here, and debug lines with C{-v 6}.
    """
    workDir = tmp_path / "nodes"
    workDir.mkdir()
    stdoutPath = workDir / "orchestrator-1.log"
    stdoutPath.touch()
    status = os.stat(stdoutPath)
    with LocalNodes(str(workDir), env={"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}) as nodes:
        with open(nodes.secretPath) as f:
            secret = f.read().strip()
        orchestrator = nodes.startOrchestrator(orchSecret=secret, v=6, idleTimeout=0.5)
        assert orchestrator.logPath == str(stdoutPath)
        client = RawWebSocket(orchestrator, {"Credentials": "not-the-secret", "Livepeer-Capacity": "1"})
        assert client.status == 403
        client.close()
        orchestrator.waitForLog(r"<3>\[[^\]]+\] Cannot register transcoder=\S+ err=.invalid secret")
        with socket.create_connection((orchestrator.host, orchestrator.port)) as idle:
            idle.settimeout(30)
            try:
                assert idle.recv(1) == b""
            except ConnectionResetError:
                pass
        orchestrator.waitForLog(r"<7>\[[^\]]+\] Closing idle connection from")
    text = stdoutPath.read_text()
    assert re.search(r"^<4>\[[^\]]+\] --orchSecret was given as a literal", text, re.M)
    assert re.search(r"^<6>\[[^\]]+\] CLI server listening on", text, re.M)
    lines = text.splitlines()
    assert [line for line in lines if not JOURNAL_LINE.match(line)] == []
    assert not any(re.match(r"<\d>\d{4}-\d\d-\d\dT", line) for line in lines)
    assert secret not in text


def test_goLivepeerConfigFilesAndLpVariables(tmp_path):
    """
    An orchestrator and a transcoder started from go-livepeer config files
    (role flags, C{monitor true}, C{-v}) with an C{LP_MAXSESSIONS} variable
    overriding the files: the transcoder registers with the variable's
    capacity and the orchestrator serves /metrics as its file asks.
    """
    with LocalNodes(str(tmp_path / "nodes"), env={"LP_MAXSESSIONS": "3"}) as nodes:
        port, cliPort, transcoderCli = nodes.allocatePort(), nodes.allocatePort(), nodes.allocatePort()
        orchestratorData = tmp_path / "nodes" / "orchestrator-config"
        orchestratorConfig = tmp_path / "orchestrator.conf"
        orchestratorConfig.write_text("\n".join([
            "# go-livepeer standalone orchestrator",
            "orchestrator",
            "transcoder false",
            f"orchSecret {nodes.secretPath}",
            f"serviceAddr 127.0.0.1:{port}",
            f"httpAddr 127.0.0.1:{port}",
            f"cliAddr 127.0.0.1:{cliPort}",
            f"dataDir {orchestratorData}",
            "maxSessions 8",
            "monitor true",
            "v 6",
            "",
        ]))
        orchestrator = nodes.startProcess(
            "orchestrator-config", nodes.twistdCommand("livepeer-orchestrator", {"config": orchestratorConfig}),
            dataDir=str(orchestratorData), cliAddr=f"127.0.0.1:{cliPort}", nodeClass=LocalOrchestratorNode,
            serviceAddr=f"127.0.0.1:{port}", secretPath=nodes.secretPath)
        nodes.waitUntilReady(orchestrator)
        with urllib.request.urlopen(f"http://127.0.0.1:{cliPort}/metrics", timeout=10) as response:
            assert response.status == 200

        transcoderConfig = tmp_path / "transcoder.conf"
        transcoderConfig.write_text("\n".join([
            "transcoder",
            f"orchAddr 127.0.0.1:{port}",
            f"orchSecret {nodes.secretPath}",
            "maxSessions 2",
            "testTranscoder true",
            f"cliAddr 127.0.0.1:{transcoderCli}",
            f"dataDir {tmp_path / 'nodes' / 'transcoder-config'}",
            "monitor",
            "v 4",
            "",
        ]))
        transcoder = nodes.startProcess(
            "transcoder-config",
            nodes.twistdCommand("livepeer-transcoder", {"config": transcoderConfig,
                                                        "orchCertFingerprint": orchestrator.fingerprint}),
            cliAddr=f"127.0.0.1:{transcoderCli}")
        match = orchestrator.waitForLog(REGISTRATION_LOG, timeout=60)
        assert match.group("capacity") == "3"
        assert transcoder.cliStatus()["MaxSessions"] == 3
