#!/usr/bin/python
# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Documentation of the mirror_get action plugin (plugins/action/mirror_get.py), which does the work."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mirror_get
short_description: Fetch from a release mirror with Ansible's own HTTP code, retrying with a doubling wait
description:
  - Without O(dest) asks with M(ansible.builtin.uri). With O(dest) (or O(files)) downloads a file, checked against its
    C(checksum) before it is kept. On the control node the action does that itself with Ansible's
    C(ansible.module_utils.urls.open_url), which M(ansible.builtin.get_url) uses too; on a node it runs
    M(ansible.builtin.get_url) under Ansible's async wrapper. Either way the whole download of a file is bounded by
    C(timeout), where M(ansible.builtin.get_url) bounds each read only.
  - Every other option (TLS, certificates, credentials, headers, proxies) is Ansible's own.
  - Tries again what may be transient (no answer, a refused or reset connection, HTTP 408, 429 and 5xx, a body cut off
    before its length, a download that outlasts C(timeout)), waiting O(delay) seconds before the second try and twice as
    long before each further one, at most 60 s. A failure that is not transient ends it at once.
author: containerd-gvisor maintainers (@gvisor-nodes)
options:
  url:
    description: The URL to fetch (unless O(files) is given).
    type: str
  dest:
    description: Where M(ansible.builtin.get_url) writes the file; without it M(ansible.builtin.uri) is used.
    type: path
  files:
    description:
      - Several files to fetch with M(ansible.builtin.get_url), in turn, each a dict of C(url), C(dest), C(checksum) and
        C(checksum_source) (where the checksum comes from, for the message when a file does not match it); the
        first failure ends the task. Instead of O(url) and O(dest).
    type: list
    elements: dict
  tries:
    description: Requests to make at most.
    type: int
    default: 4
  delay:
    description: Seconds before the second try.
    type: float
    default: 3
notes:
  - Further options are those of M(ansible.builtin.get_url) or M(ansible.builtin.uri).
"""

EXAMPLES = r"""
- name: Ask for a release's checksum
  gvisor_nodes.containerd_gvisor.mirror_get:
    url: https://storage.googleapis.com/gvisor/releases/release/latest/x86_64/gvisor.tar.bz2.sha512
    status_code: [200, 404]
    return_content: true
"""

RETURN = r"""
attempts:
  description: Requests made.
  returned: always
  type: int
reason:
  description: Why the last request failed, in a few words.
  returned: on failure
  type: str
"""
