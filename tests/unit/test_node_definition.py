"""One definition of a node container (tests/gvisor_node.py): the copies Molecule and Packer carry agree with it."""

import json
import sys

import pytest
import yaml

from unit_support import REPO

sys.path.insert(0, str(REPO / "tests"))
import gvisor_node  # noqa: E402  (the tests/ helpers, beside the unit tests)

SCENARIOS = sorted(path.parent.name for path in (REPO / "molecule").glob("*/molecule.yml"))


def platforms():
    for scenario in SCENARIOS:
        for platform in yaml.safe_load((REPO / "molecule" / scenario / "molecule.yml").read_text())["platforms"]:
            if platform.get("command") == gvisor_node.COMMAND:  # nodes that boot systemd
                yield pytest.param(platform, id=f"{scenario}/{platform['name']}")


@pytest.mark.parametrize("platform", list(platforms()))
def test_molecule_platform_is_the_node_definition(platform):
    assert platform["capabilities"] == gvisor_node.CAPABILITIES
    assert platform["security_opts"] == gvisor_node.SECURITY_OPTS
    assert platform["tmpfs"] == gvisor_node.TMPFS
    assert platform["network_mode"] == "host" and platform["cgroupns_mode"] == "host"
    assert platform["volumes"] == [gvisor_node.cgroup_volume(platform["image"])]


def test_the_definition_has_every_capability_but_sys_resource():
    assert "SYS_RESOURCE" not in gvisor_node.CAPABILITIES and "SYS_ADMIN" in gvisor_node.CAPABILITIES
    assert len(gvisor_node.CAPABILITIES) == len(set(gvisor_node.CAPABILITIES)) == 37


def test_packer_build_container_is_the_node_definition():
    (docker,) = [b for b in json.loads((REPO / "packer" / "node.json").read_text())["builders"] if b["type"] == "docker"]
    args = docker["run_command"]
    # Every capability but SYS_RESOURCE, as the definition lists them one by one.
    assert "--cap-add=ALL" in args and "--cap-drop=SYS_RESOURCE" in args
    assert {f"--security-opt={opt}" for opt in gvisor_node.SECURITY_OPTS} <= set(args)
    assert {f"--tmpfs={path}" for path in gvisor_node.TMPFS} <= set(args)
    assert {"--network=host", "--cgroupns=host"} <= set(args) and args[-1] == gvisor_node.COMMAND
