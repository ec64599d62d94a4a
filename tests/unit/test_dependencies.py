"""The Python dependencies: the collection needs none beyond ansible-core, and the lowest versions the unit
tests also run with (tests/constraints/lowest.txt) are exactly the declared lower bounds."""

import re
import tomllib

import yaml

from unit_support import REPO

LOWEST = dict(line.split("==") for line in (REPO / "tests" / "constraints" / "lowest.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#"))


def lower_bound(requirement):
    """The version after >=, as three numbers (8 is 8.0.0)."""
    found = re.search(r">=\s*([0-9][0-9.]*)", requirement)
    return ".".join((found.group(1).split(".") + ["0", "0"])[:3]) if found else None


def test_the_collection_needs_no_python_library_on_the_control_node():
    lines = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines == []


def test_ansible_core_is_pinned_at_what_requires_ansible_allows_first():
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())
    assert LOWEST["ansible-core"] == lower_bound(runtime["requires_ansible"])


def test_the_other_pins_are_the_lower_bounds_of_the_test_group():
    group = tomllib.loads((REPO / "pyproject.toml").read_text())["dependency-groups"]["test"]
    declared = {re.split(r"[<>=\[ ]", requirement, maxsplit=1)[0]: lower_bound(requirement) for requirement in group}
    for name, version in LOWEST.items():
        if name != "ansible-core":
            assert declared[name] == version, name
