# -*- test-case-name: tests.test_e2e,tests.test_fuzz -*-
"""
Shared fixtures: a work directory for real nodes, and test clips.
"""

import gc
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_finish(session):
    """
    Put what collection left alive (Twisted, web3, eth-account, the project's
    modules and the test items: most of a worker's heap, and alive until the
    run ends) out of the garbage collector's reach, so its full collections
    during the run, and pytest's own five at the end of it, need not walk it
    again.
    """
    gc.collect()
    gc.freeze()


@pytest.fixture
def nodes(tmp_path):
    """
    A L{LocalNodes} in a temporary directory; every node is stopped afterwards.
    """
    from localnodes import LocalNodes

    with LocalNodes(str(tmp_path / "nodes"), forkNodes=True) as local:
        yield local


@pytest.fixture(scope="session")
def clip4s(tmp_path_factory):
    """
    A 4 s 640x360 30 fps H.264 + AAC MPEG-TS clip (two 2 s segments).
    """
    from media import makeClip

    path = str(tmp_path_factory.mktemp("clips") / "clip4s.ts")
    makeClip(path, 640, 360, seconds=4, fps=30)
    return path


@pytest.fixture(scope="session")
def segment2s(tmp_path_factory):
    """
    A 2 s 640x360 30 fps segment, as bytes.
    """
    return _clipBytes(tmp_path_factory, "seg2s.ts", 640, 360, seconds=2, fps=30)


@pytest.fixture(scope="session")
def tinySegment(tmp_path_factory):
    """
    A 1 s 256x144 10 fps segment, as bytes: for tests that need segments
    flowing through real transcoders but not what is in them, at a fraction
    of L{segment2s}'s FFmpeg time.
    """
    return _clipBytes(tmp_path_factory, "tiny.ts", 256, 144, seconds=1, fps=10)


def _clipBytes(tmp_path_factory, name, width, height, seconds, fps):
    from media import makeClip

    path = str(tmp_path_factory.mktemp("clips") / name)
    makeClip(path, width, height, seconds=seconds, fps=fps)
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(autouse=True)
def _workInTemporaryDirectory(tmp_path, monkeypatch):
    """
    Run every test in its own directory, so files a test makes relative to the
    working directory (trial's C{mktemp}) never land in the source tree.
    """
    monkeypatch.chdir(tmp_path)
