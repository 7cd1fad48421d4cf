"""
The conventions of this code base that a reader relies on (issue 9): every
test says in its docstring what would break, test names follow one
convention, and every module of the package names the tests that exercise it
in a C{test-case-name} line that points at real test modules.
"""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
PACKAGE = os.path.join(ROOT, "livepeer_tx")
# protoc rewrites it whole: a line added by hand would not survive a regeneration.
GENERATED = {os.path.join("livepeer_tx", "proto", "lp_rpc_pb2.py")}
TEST_NAME = re.compile(r"test_[a-z][A-Za-z0-9]*\Z")
TEST_CASE_NAME = re.compile(r"#.*-\*-\s*test-case-name:\s*([\w.,\s]+?)\s*-\*-")


def allTestModules():
    """
    The test modules, as paths.
    """
    return sorted(os.path.join(TESTS, name) for name in os.listdir(TESTS)
                  if name.startswith("test_") and name.endswith(".py"))


def collectedTests(path):
    """
    The test functions and test methods (what pytest collects: module-level
    functions and methods of classes named C{test...}) in the module at C{path}.
    """
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    found = []
    for node in tree.body:
        members = node.body if isinstance(node, ast.ClassDef) else [node]
        found.extend(member for member in members
                     if isinstance(member, functions) and member.name.startswith("test"))
    return found


def packageModules():
    """
    Every module of the package, relative to the project root.
    """
    for directory, _, names in os.walk(PACKAGE):
        for name in sorted(names):
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(directory, name), ROOT)


@pytest.mark.parametrize("path", allTestModules(), ids=os.path.basename)
def test_everyTestSaysWhatWouldBreak(path):
    """
    A test without a docstring leaves its reader to guess what failure it is
    there to catch; every test function and method has one.
    """
    missing = [node.name for node in collectedTests(path) if not ast.get_docstring(node)]
    assert missing == []


@pytest.mark.parametrize("path", allTestModules(), ids=os.path.basename)
def test_testNamesAreCamelCase(path):
    """
    Test names follow Twisted's convention, C{test_} then camelCase words, so
    one grep finds a test by what it checks.
    """
    wrong = [node.name for node in collectedTests(path) if not TEST_NAME.match(node.name)]
    assert wrong == []


@pytest.mark.parametrize("module", sorted(set(packageModules()) - GENERATED))
def test_everyModuleNamesItsTests(module):
    """
    Every module of the package starts with a C{test-case-name} line, and each
    test module it names exists (a renamed or removed test module would leave
    the line pointing nowhere).
    """
    with open(os.path.join(ROOT, module)) as f:
        first = f.readline()
    match = TEST_CASE_NAME.match(first)
    assert match, f"{module}: first line is {first!r}"
    for name in match.group(1).split(","):
        dotted = name.strip()
        assert dotted.startswith("tests."), dotted
        assert os.path.exists(os.path.join(ROOT, *dotted.split(".")) + ".py"), dotted
