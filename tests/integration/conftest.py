"""A private test mirror per test module, and the tests/ helpers on the import path.

Needs a running Docker engine, the node image (tests/harness/build-images bookworm) and a built
mirror (tests/mirror/build); tests/run --faults sets all of that up.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gvisor_mirror import MirrorServer, copy_mirror  # noqa: E402


# Every failure case a test tried on a node, and what it left broken (Node.problems()): counted for the summary.
FAULT_CASES = []


@pytest.fixture(scope="session")
def fault_case():
    """Record a failure case: fault_case(name, node) checks the node is whole afterwards and counts it."""

    def check(name, node):
        problems = node.problems()
        FAULT_CASES.append((name, problems))
        assert not problems, f"{name} left {node.name} broken: {problems}"

    return check


def pytest_terminal_summary(terminalreporter):
    if FAULT_CASES:
        broken = [name for name, problems in FAULT_CASES if problems]
        terminalreporter.write_line(f"failure cases tried: {len(FAULT_CASES)}; nodes left broken: {len(broken)}"
                                    + (f" ({', '.join(broken)})" if broken else ""))


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A server.py of its own on a free port, over a copy of the mirror whose `latest` tests may move."""
    base = tmp_path_factory.mktemp("mirror")
    server = MirrorServer(copy_mirror(base / "root"), base / "access.log")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_faults(request):
    """Every test starts and ends with a mirror that serves every file as built."""
    if "mirror" not in request.fixturenames:
        yield
        return
    mirror = request.getfixturevalue("mirror")
    mirror.clear_faults()
    yield
    mirror.clear_faults()
