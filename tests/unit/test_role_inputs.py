"""Each role's inputs are described once: meta/argument_specs.yml and defaults/main.yml agree."""

import pytest
import yaml

from conftest import REPO

ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks" / "main.yml").exists())


def load(path):
    return yaml.safe_load(path.read_text()) or {}


@pytest.mark.parametrize("role", ROLES)
def test_every_role_has_argument_specs(role):
    assert (REPO / "roles" / role / "meta" / "argument_specs.yml").exists()


@pytest.mark.parametrize("role", ROLES)
def test_defaults_and_argument_specs_agree(role):
    defaults = load(REPO / "roles" / role / "defaults" / "main.yml")
    options = load(REPO / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options), "a variable is in one file only"
    for name, spec in options.items():
        assert spec.get("default") == defaults[name], name
        assert name.startswith(role + "_"), f"{name} lacks the role's prefix"
