"""What the tests of the test mirror share: the tests/ helpers on the import path, and the built mirror."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests/ helpers

from gvisor_testinfra import mirror_dir  # noqa: E402


@pytest.fixture(scope="module")
def built_mirror():
    """The mirror tests/mirror/build made; the tests that read it are skipped until it is built."""
    root = mirror_dir()
    if not (root / ".complete").is_file():
        pytest.skip(f"no built mirror in {root}: run tests/mirror/build")
    return root
