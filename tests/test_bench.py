"""
The benchmark scripts in bench/ import, parse their default arguments and
compute their figures as they say: a benchmark that no longer starts, or
whose statistics or verdicts drifted, would fail here (they are not run).
"""

import importlib
import io
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
SCRIPTS = ["e2e_vs_direct", "grpc_http2", "idle_memory", "orchestrator_overhead"]


@pytest.fixture(scope="module")
def bench():
    """
    Import a bench module by name, with bench/ on C{sys.path} as when the
    scripts run.
    """
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    return importlib.import_module


@pytest.mark.parametrize("name", SCRIPTS)
def test_scriptParsesItsDefaults(bench, name):
    """
    Each benchmark script imports (its helpers from bench/, tests/ and the
    package) and parses an empty command line.
    """
    arguments = bench(name).parseArguments([])
    assert vars(arguments)


def test_statisticsAndVerdicts(bench):
    """
    The median and nearest-rank p50/p99 the benchmarks print, and their
    verdict against a target.
    """
    common = bench("common")
    values = list(range(1, 101))
    assert common.median([3, 1, 2]) == 2 and common.median([]) is None
    assert common.p50p99(values) == (50, 99)
    assert common.verdict(1.0, 2.0) == "ok" and common.verdict(3.0, 2.0) == "MISSED"
    assert common.verdict(None, 2.0).startswith("MISSED")
    assert [p.name for p in common.ladder()] == common.LADDER.split(",")


def test_tableIsAligned(bench):
    """
    printTable pads every column to its widest cell: left-aligned first
    column, right-aligned figures.
    """
    stream = io.StringIO()
    bench("common").printTable(["level", "p50"], [["1 stream", 12], ["8", 3]], stream)
    assert stream.getvalue().splitlines() == ["level     p50", "--------  ---", "1 stream   12", "8           3"]


def test_shapeInMegabits(bench):
    """
    A link shape given in Mbit/s and ms is bytes per second and seconds.
    """
    shape = bench("shaping").Shape.mbit(8, 25)
    assert (shape.rate, shape.delay, shape.enabled) == (1e6, 0.025, True)
