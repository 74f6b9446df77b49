"""Fixtures and options of the benchmarks (see README.md in this folder).

Tests marked ``big`` (1M-row shapes) are skipped unless ``--run-big`` is given or ``-m``
selects them (``-m big``).
"""

from __future__ import annotations

import pytest

import _peers


def pytest_addoption(parser):
    group = parser.getgroup("fastem benchmarks")
    group.addoption("--run-big", action="store_true", default=False,
                    help="also run the benchmarks marked 'big' (1M rows; minutes, GiBs)")
    group.addoption("--em-rounds", type=int, default=None, metavar="R",
                    help="timed rounds per EM benchmark (default: 5 small, 3 big)")
    group.addoption("--max-run-seconds", type=float, default=300.0, metavar="S",
                    help="test_suite.py: skip a peer whose run of the timed iterations would "
                    "take longer, estimated from a pilot on 20k rows (default: 300)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-big") or "big" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="big benchmark: give --run-big or -m big")
    for item in items:
        if item.get_closest_marker("big") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fastem_compiled():
    """fastem's kernels compiled (or loaded from the cache) before anything is timed."""
    _peers.warm_up_fastem()


@pytest.fixture
def em_rounds(request):
    """Timed rounds for an EM benchmark of the requesting test's size."""
    rounds = request.config.getoption("--em-rounds")
    if rounds is not None:
        return max(1, rounds)
    return 3 if request.node.get_closest_marker("big") is not None else 5


@pytest.fixture
def benchmark_enabled(benchmark):
    """Whether pytest-benchmark measures (``--benchmark-enable``) or runs once (default)."""
    return not benchmark.disabled
