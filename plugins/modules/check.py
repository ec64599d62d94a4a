#!/usr/bin/python
# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Documentation of the check action plugin (plugins/action/check.py), which does the work on the control node."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: check
short_description: Check the containerd_gvisor role's inputs and the node, and find where the release comes from
description:
  - Runs on the control node and changes nothing. Fails, naming each variable or file and what would be valid, on
    inputs the role's argument specification cannot catch and on nodes that cannot run gVisor as asked.
  - Returns the release's URL and, when they are known without asking the mirror (a dated release the node has
    installed and verified, or pinned checksums), its files' sha512.
author: containerd-gvisor maintainers (@gvisor-nodes)
options:
  inputs:
    description: The role's variables (C(containerd_gvisor_*)), by name.
    type: dict
    required: true
  node:
    description: The result of M(gvisor_nodes.containerd_gvisor.node_info).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Check the inputs and the node
  gvisor_nodes.containerd_gvisor.check:
    inputs: "{{ dict(names | zip(query('ansible.builtin.vars', *names))) }}"
    node: "{{ node }}"
  vars:
    names: "{{ query('ansible.builtin.varnames', '^containerd_gvisor_') }}"
"""

RETURN = r"""
release:
  description: C(version), C(arch), C(url), C(layout) and C(artifacts) (file name to sha512, empty when the mirror must be asked).
  returned: success
  type: dict
"""
