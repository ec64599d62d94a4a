#!/usr/bin/python
# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Documentation of the plan action plugin (plugins/action/plan.py), which does the work on the control node."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: plan
short_description: Check the inputs and the node, and decide everything a containerd_gvisor run does, on the control node
description:
  - Runs on the control node and changes nothing. Fails, naming each variable or file and what would be valid, on
    inputs the role's argument specification cannot catch and on nodes that cannot run gVisor as asked.
  - When the release's checksums are not known yet (a release the node has not installed and verified, or C(latest)),
    and no O(answers) are given, returns only where to ask for them (RV(ask)).
  - Otherwise takes the checksums from O(answers) (failing on a failed request, a release the mirror does not have or a
    checksum file that is not one) and decides what to download, each configuration file's new text (a drop-in on
    containerd 2.x, the marked block of config.toml on 1.x), the sandboxes that prove the change and whether containerd
    and Docker restart. RV(module_args) is the argument of M(gvisor_nodes.containerd_gvisor.release).
author: containerd-gvisor maintainers (@gvisor-nodes)
options:
  inputs:
    description: The role's variables (C(containerd_gvisor_*)), by name.
    type: dict
    required: true
  node:
    description: The result of M(gvisor_nodes.containerd_gvisor.node_info); without it, the copy of playbooks/mirror.yml.
    type: dict
  answers:
    description: The M(gvisor_nodes.containerd_gvisor.mirror_get) results of the release's C(.sha512) files.
    type: list
    elements: dict
"""

EXAMPLES = r"""
- name: Check the inputs and the node, and plan the run
  gvisor_nodes.containerd_gvisor.plan:
    inputs: "{{ dict(names | zip(query('ansible.builtin.vars', *names))) }}"
    node: "{{ node }}"
  vars:
    names: "{{ query('ansible.builtin.varnames', '^containerd_gvisor_') }}"
  register: plan
"""

RETURN = r"""
ask:
  description: Whether the release's checksums must be asked for first; RV(release) then says where.
  returned: success
  type: bool
release:
  description: C(version), C(arch), C(url), C(layout) and C(artifacts) (file name to sha512).
  returned: success
  type: dict
change:
  description: Whether the run changes the node.
  returned: unless RV(ask)
  type: bool
downloads:
  description: The release files to fetch (C(name), C(url), C(checksum), C(checksum_source), C(dest)).
  returned: unless RV(ask)
  type: list
module_args:
  description: The arguments of M(gvisor_nodes.containerd_gvisor.release).
  returned: unless RV(ask)
  type: dict
"""
