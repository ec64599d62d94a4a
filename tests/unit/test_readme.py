"""The README's variable tables say what argument_specs says: every input, with its default."""

import json
import re

import pytest
import yaml

from unit_support import REPO

README = (REPO / "README.md").read_text()
ROW = re.compile(r"^\| `(?P<name>[a-z_]+)` \| `(?P<default>[^`]*)` \|", re.M)


def documented():
    return {m["name"]: m["default"] for m in ROW.finditer(README)}


def shown(value):
    """A default as the README writes it: YAML's own spelling for scalars, JSON for lists and dicts."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, str) and (value == "" or value.startswith("{{")):
        return json.dumps(value)
    return str(value)


@pytest.mark.parametrize("role", ["containerd_gvisor", "containerd"])
def test_every_input_of_the_role_is_in_the_readme_with_its_default(role):
    options = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    table = documented()
    missing = sorted(set(options) - set(table))
    assert not missing, f"README lacks {missing}"
    for name, spec in options.items():
        assert table[name] == shown(spec.get("default")), name


def test_the_readme_documents_no_input_that_does_not_exist():
    known = set()
    for role in ("containerd_gvisor", "containerd"):
        for entry in yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())["argument_specs"].values():
            known |= set(entry["options"])
    assert set(documented()) <= known
