#!/usr/bin/env python3
"""
Compile the Livepeer contract stand-ins (contracts/*.sol) with solcjs and write
their ABI and creation bytecode to contracts/build/standins.json.

The JSON is committed so that tests need no Solidity compiler; run this script
after changing a contract (C{npm install} provides solcjs), or with C{--check}
to verify that the committed artifacts match the sources.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = os.path.join(ROOT, "contracts")
OUTPUT = os.path.join(ROOT, "contracts", "build", "standins.json")
SOLCJS = os.path.join(ROOT, "node_modules", ".bin", "solcjs")

# The contracts deployed by tests/chainharness.py; the rest are bases and interfaces.
CONTRACTS = (
    "BondingManager",
    "Controller",
    "Minter",
    "RoundsManager",
    "ServiceRegistry",
    "TicketBroker",
)

# No optimizer: the stand-ins run on a test chain, where their gas does not
# matter, and solc compiles them in a third of the time (the suite checks the
# committed artifacts by compiling them again).
SETTINGS = {
    "optimizer": {"enabled": False},
    "evmVersion": "paris",
    "metadata": {"bytecodeHash": "none"},
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
}


def standardInput(sourceDir=SOURCES):
    """
    The solc standard-JSON input for every C{.sol} file in C{sourceDir}.
    """
    sources = {}
    for name in sorted(os.listdir(sourceDir)):
        if name.endswith(".sol"):
            with open(os.path.join(sourceDir, name), encoding="utf-8") as f:
                sources[name] = {"content": f.read()}
    return {"language": "Solidity", "sources": sources, "settings": SETTINGS}


def _runSolc(command, sourceDir):
    """
    Run solc's standard-JSON mode; return the finished process and its stdout.
    """
    # solcjs exits before a pipe is drained, cutting long output: use a file.
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
        proc = subprocess.run(
            command + ["--standard-json", "--base-path", sourceDir],
            input=json.dumps(standardInput(sourceDir)),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        out.seek(0)
        return proc, out.read()


def compileStandIns(solcjs=SOLCJS, sourceDir=SOURCES):
    """
    Compile the stand-ins and return C{{name: {"abi": [...], "bytecode": "0x..."}}}.

    @raise RuntimeError: if solc reports an error.
    """
    commands = [[solcjs]]
    if os.path.realpath(solcjs).endswith(".js"):
        # Node's baseline WebAssembly compiler alone: for one compile, V8's
        # optimising tier costs solc's 8 MB of wasm more than it saves. A
        # V8 flag, so a Node without it gets the plain command.
        commands.insert(0, [shutil.which("node") or "node", "--liftoff-only", os.path.realpath(solcjs)])
    for command in commands:
        proc, stdout = _runSolc(command, sourceDir)
        if not (proc.returncode == 9 and "bad option" in proc.stderr):
            break
    # solcjs may print notices before the JSON document.
    text = stdout[stdout.find("{") :] if "{" in stdout else ""
    if proc.returncode != 0 or not text:
        raise RuntimeError(f"solcjs failed ({proc.returncode}): {proc.stderr or stdout}")
    result = json.loads(text)
    errors = [e for e in result.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise RuntimeError("\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors))
    for warning in result.get("errors", []):
        print(warning.get("formattedMessage", warning.get("message", "")), file=sys.stderr)
    artifacts = {}
    for fileContracts in result["contracts"].values():
        for name, output in fileContracts.items():
            if name in CONTRACTS:
                artifacts[name] = {"abi": output["abi"], "bytecode": "0x" + output["evm"]["bytecode"]["object"]}
    missing = set(CONTRACTS) - set(artifacts)
    if missing:
        raise RuntimeError(f"not compiled: {sorted(missing)}")
    return artifacts


def render(artifacts):
    """
    The text written to the artifacts file (stable, so diffs stay small).
    """
    return json.dumps(artifacts, indent=1, sort_keys=True) + "\n"


def main(argv=None):
    """
    Command line entry point.
    """
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed artifacts are out of date")
    parser.add_argument("--solcjs", default=SOLCJS, help="path of solcjs (default: %(default)s)")
    parser.add_argument("--output", default=OUTPUT, help="artifacts file (default: %(default)s)")
    args = parser.parse_args(argv)
    text = render(compileStandIns(args.solcjs))
    if args.check:
        with open(args.output, encoding="utf-8") as f:
            if f.read() != text:
                print(f"{args.output} is out of date; run scripts/build_contracts.py", file=sys.stderr)
                return 1
        print(f"{args.output} is up to date")
        return 0
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
