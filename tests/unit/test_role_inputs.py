"""Each role's inputs are described once: meta/argument_specs.yml and defaults/main.yml agree."""

import pytest
import yaml

from unit_support import REPO

ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks" / "main.yml").exists())


def load(path):
    return yaml.safe_load(path.read_text()) or {}


@pytest.mark.parametrize("role", ROLES)
def test_every_role_has_argument_specs(role):
    assert (REPO / "roles" / role / "meta" / "argument_specs.yml").exists()


@pytest.mark.parametrize("role", ROLES)
def test_defaults_and_argument_specs_agree(role):
    defaults = load(REPO / "roles" / role / "defaults" / "main.yml")
    entry_points = load(REPO / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"].values()
    options = [(name, spec) for entry in entry_points for name, spec in entry["options"].items()]
    assert set(defaults) == {name for name, _spec in options}, "a variable is in one file only"
    for name, spec in options:
        # A required option has no default to document; defaults/main.yml holds a placeholder.
        if not spec.get("required"):
            assert spec.get("default") == defaults[name], name
        assert name.startswith(role + "_"), f"{name} lacks the role's prefix"
