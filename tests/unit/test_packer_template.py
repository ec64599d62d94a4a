"""packer/node.json hands the role's variables over unchanged and finds the playbook and roles.

The Packer template declares its own defaults for the variables it passes to Ansible; these tests
keep them equal to the role's defaults, so defaults/main.yml stays the one source of truth.
"""

import json
import re

import pytest
import yaml

from conftest import REPO

PACKER = REPO / "packer"
TEMPLATE = json.loads((PACKER / "node.json").read_text())
GVISOR_DEFAULTS = yaml.safe_load((REPO / "roles" / "containerd_gvisor" / "defaults" / "main.yml").read_text())
PASSED = ["containerd_gvisor_runtime", "containerd_gvisor_version", "containerd_gvisor_mirror_url"]


def ansible_provisioner():
    (provisioner,) = [p for p in TEMPLATE["provisioners"] if p["type"] == "ansible"]
    return provisioner


def resolve(value):
    """A path in the template, with {{template_dir}} replaced."""
    return (PACKER / value.replace("{{template_dir}}/", "")).resolve()


def packer_string(value):
    """A role default as a Packer user variable spells it: a string, booleans in lower case."""
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("name", PASSED)
def test_template_default_is_the_roles_default(name):
    assert TEMPLATE["variables"][name] == packer_string(GVISOR_DEFAULTS[name])


def test_every_gvisor_variable_reaches_ansible():
    args = ansible_provisioner()["extra_arguments"]
    values = [args[i + 1] for i, arg in enumerate(args) if arg == "--extra-vars"]
    passed = dict(value.split("=", 1) for value in values)
    assert passed == {name: "{{user `%s`}}" % name for name in PASSED}
    assert {n for n in TEMPLATE["variables"] if n.startswith("containerd_gvisor_")} == set(PASSED)


def test_playbook_roles_and_config_are_found():
    provisioner = ansible_provisioner()
    assert resolve(provisioner["playbook_file"]) == REPO / "playbooks" / "node.yml"
    env = dict(e.split("=", 1) for e in provisioner["ansible_env_vars"])
    assert resolve(env["ANSIBLE_CONFIG"]) == REPO / "ansible.cfg"
    # The playbook finds the collection through the link beside it.
    collection = resolve("{{template_dir}}/../playbooks/collections/ansible_collections/gvisor_nodes/containerd_gvisor")
    assert collection == REPO
    # Packer's SSH proxy offers only ssh-rsa host and user keys.
    assert "HostKeyAlgorithms=+ssh-rsa" in env["ANSIBLE_SSH_ARGS"]
    assert "PubkeyAcceptedKeyTypes=+ssh-rsa" in env["ANSIBLE_SSH_ARGS"]


def test_docker_builder_uses_a_local_image_and_the_host_network():
    (docker,) = [b for b in TEMPLATE["builders"] if b["type"] == "docker"]
    assert docker["pull"] is False and docker["commit"] is True
    assert "--network=host" in docker["run_command"]


def test_example_var_file_asks_for_gvisor_as_a_string():
    example = json.loads((PACKER / "vars" / "gvisor.json").read_text())
    assert set(example) <= set(TEMPLATE["variables"])
    assert example["containerd_gvisor_runtime"] == "true"
    assert re.fullmatch(r"latest|[0-9]{8}(\.[0-9]+)?", example["containerd_gvisor_version"])
