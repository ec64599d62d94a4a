"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest
from unit_support import FIXTURES


@pytest.fixture
def fixture_text():
    """Return the text of a file in tests/unit/fixtures."""
    return lambda name: (FIXTURES / name).read_text()
