"""Lets the Packer tests import the shared node helpers in tests/gvisor_testinfra.py."""

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent.parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
