"""The README's recipes for kubernetes-sigs/image-builder and kubespray, run as those tools run them.

image-builder runs each role of node_custom_roles_post with include_role by the name given, after its own
containerd role wrote config.toml from its template: version 2 (containerd 1.x), conf.d imported, and, as the Packer
string "false" is true to a Jinja `if`, a bare gvisor runtime. kubespray re-templates config.toml and restarts
containerd on every run, carrying extra runtimes through containerd_additional_runtimes; the recipe leaves
containerd's configuration to it (containerd_gvisor_configure_containerd: false), and gVisor must survive the
re-templating. Both on trixie (containerd 1.7).
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib

import pytest

from gvisor_node import ANSIBLE_PLAYBOOK, ARCH, BIN_DIR, CONFIG, CHANGE_TASK, Play, remove_node, start_node
from gvisor_testinfra import REPO, RUNTIME_TYPE, handler_table

FIXTURES = REPO / "tests" / "fixtures" / "containerd"
IMAGE_BUILDER = (FIXTURES / "image-builder-v2.toml").read_bytes()
KUBESPRAY = (FIXTURES / "kubespray-v2.toml").read_bytes()
RELEASE = "20240729"

# images/capi/ansible/node.yml's post-node custom roles, as image-builder runs them (facts gathered, become).
IMAGE_BUILDER_PLAY = """- name: Provision node
  hosts: all
  become: true
  vars:
    node_custom_roles_pre: ""
    node_custom_roles_post: ""
    custom_role_names: ""
    node_custom_roles_post_sysprep: ""
  tasks:
    - name: Include post-node custom roles
      ansible.builtin.include_role:
        name: "{{ role }}"
      loop: >-
        {{ (custom_role_names.split() | reject('in', node_custom_roles_pre.split() + node_custom_roles_post_sysprep.split())
            | list) + node_custom_roles_post.split() }}
      loop_control:
        loop_var: role
      when: custom_role_names != "" or node_custom_roles_post != ""
"""


@pytest.fixture(scope="module")
def node(mirror, tmp_path_factory):
    node = start_node("recipes-trixie", "containerd-gvisor-node:trixie")
    node.vars.update({"containerd_gvisor_runtime": True, "containerd_gvisor_mirror_url": mirror.url,
                      "containerd_gvisor_version": RELEASE, "containerd_gvisor_arch": ARCH,
                      "containerd_gvisor_download_cache_dir": str(tmp_path_factory.mktemp("cache"))})
    yield node
    if not os.environ.get("CONTAINERD_GVISOR_KEEP_NODE"):
        remove_node(node.name)


def sandbox_starts(node):
    return "Starting gVisor" in node.sh(f"{BIN_DIR}/runsc --network=none do dmesg")


def test_image_builders_custom_role_loop_installs_gvisor_beside_its_template(node, mirror, tmp_path):
    node.fresh_containerd(IMAGE_BUILDER)
    playbook = tmp_path / "node.yml"
    playbook.write_text(IMAGE_BUILDER_PLAY)
    # The Packer var file's strings: image-builder's own switch "false", this role's switch through ansible_user_vars.
    variables = {"node_custom_roles_post": "gvisor_nodes.containerd_gvisor.containerd_gvisor",
                 "containerd_gvisor_runtime": "false", "containerd_gvisor_enabled": "true",
                 "containerd_gvisor_version": RELEASE, "containerd_gvisor_mirror_url": mirror.url,
                 "containerd_gvisor_download_cache_dir": str(tmp_path / "cache")}
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_PIPELINING="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=str(REPO / "playbooks" / "collections"))
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", f"{node.name},", "-c", "community.docker.docker",
                           "-e", json.dumps(variables), str(playbook)], capture_output=True, text=True, env=env, check=False)
    play = Play(node.name, proc.returncode, proc.stdout, proc.stderr)
    assert play.ok, play

    gvisor = handler_table(node.effective_config(), "gvisor")
    assert gvisor["runtime_type"] == RUNTIME_TYPE and gvisor["options"]["ConfigPath"] == "/etc/containerd/runsc.toml"
    config = tomllib.loads(node.read(CONFIG).decode())
    runtimes = config["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert runtimes["runc"] == tomllib.loads(IMAGE_BUILDER.decode())["plugins"]["io.containerd.grpc.v1.cri"]["containerd"][
        "runtimes"]["runc"]
    assert config["imports"] == ["/etc/containerd/conf.d/*.toml"]
    assert sandbox_starts(node)


def test_kubespray_keeps_containerds_configuration_and_gvisor_survives_its_re_templating(node):
    node.fresh_containerd(KUBESPRAY)
    play = node.play(containerd_gvisor_configure_containerd=False)
    assert play.ok, play
    assert node.read(CONFIG) == KUBESPRAY  # kubespray's, byte for byte
    assert play.result(CHANGE_TASK)["restarted"] == []
    assert handler_table(node.effective_config(), "gvisor")["options"]["ConfigPath"] == "/etc/containerd/runsc.toml"
    assert sandbox_starts(node)

    # kubespray runs again: the same template, containerd restarted.
    node.write(CONFIG, KUBESPRAY)
    node.sh("systemctl restart containerd")
    assert handler_table(node.effective_config(), "gvisor")["runtime_type"] == RUNTIME_TYPE
    assert sandbox_starts(node)
    again = node.play(containerd_gvisor_configure_containerd=False)
    assert again.ok and again.changed == 0, again


def test_kubespray_without_the_entry_gets_told_what_to_add(node):
    without = KUBESPRAY.split(b'        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor]')[0] + \
        b'    [plugins."io.containerd.grpc.v1.cri".registry]\n      config_path = "/etc/containerd/certs.d"\n'
    node.fresh_containerd(without)
    play = node.play(containerd_gvisor_configure_containerd=False)
    assert play.ok, play
    warnings = json.dumps(play.data)
    assert "containerd_additional_runtimes" in warnings and "ConfigPath: /etc/containerd/runsc.toml" in warnings
    assert node.read(CONFIG) == without
