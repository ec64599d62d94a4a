#!/usr/bin/python
# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Documentation of the plan action plugin (plugins/action/plan.py), which does the work on the control node."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: plan
short_description: Decide everything a containerd_gvisor run does, once, on the control node
description:
  - Takes the release's checksums from the mirror's answers (failing on a failed request, a release the mirror does
    not have or a checksum file that is not one) and decides what to download, each configuration file's new text
    (a drop-in on containerd 2.x, the marked block of config.toml on 1.x), the sandboxes that prove the change and
    whether containerd and Docker restart.
  - Changes nothing; the result is the argument of M(gvisor_nodes.containerd_gvisor.release).
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
  checked:
    description: The result of M(gvisor_nodes.containerd_gvisor.check).
    type: dict
    required: true
  answers:
    description: The M(gvisor_nodes.containerd_gvisor.mirror_get) results of the release's C(.sha512) files.
    type: list
    elements: dict
    default: []
"""

EXAMPLES = r"""
- name: Plan the run
  gvisor_nodes.containerd_gvisor.plan:
    inputs: "{{ inputs }}"
    node: "{{ node }}"
    checked: "{{ checked }}"
  register: plan
"""

RETURN = r"""
change:
  description: Whether the run changes the node.
  returned: success
  type: bool
downloads:
  description: The release files to fetch (C(name), C(url), C(checksum), C(checksum_source), C(dest)).
  returned: success
  type: list
module_args:
  description: The arguments of M(gvisor_nodes.containerd_gvisor.release).
  returned: success
  type: dict
"""
