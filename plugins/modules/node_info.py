#!/usr/bin/python
# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Read in one round trip everything the containerd_gvisor role decides on.

Ansible's own modules would need a dozen calls for this (setup, stat, slurp per file, command per
probe, and hashing every installed file against the install record); each call is a round trip
to the node, so a run that changes nothing would cost ten times as long.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: node_info
short_description: Read what the containerd_gvisor role needs to know about a node, in one call
description:
  - Reads only; changes nothing. Returns the architecture, containerd's version, whether its
    configuration parses (C(containerd config dump)) and its built-in defaults, which services
    run, the contents of the given files, the gVisor install record checked against the files on
    disk, the installed runsc's version and which device nodes exist.
author: containerd-gvisor maintainers (@gvisor-nodes)
options:
  config_path:
    description: containerd's configuration file.
    type: path
    required: true
  config_default:
    description: Also return C(containerd config default).
    type: bool
    default: false
  bin_dir:
    description: Where runsc and its shim are installed.
    type: path
    required: true
  state_dir:
    description: The directory holding the install record C(release.json).
    type: path
    required: true
  files:
    description: Further files to read (for example runsc.toml files or Docker's daemon.json).
    type: list
    elements: path
    default: []
  devices:
    description: Device nodes whose existence to report.
    type: list
    elements: path
    default: []
  services:
    description: systemd services whose state to report.
    type: list
    elements: str
    default: [containerd]
"""

EXAMPLES = r"""
- name: Read the node
  gvisor_nodes.containerd_gvisor.node_info:
    config_path: /etc/containerd/config.toml
    bin_dir: /usr/local/bin
    state_dir: /var/lib/containerd-gvisor
    files: [/etc/containerd/runsc.toml]
    devices: [/dev/kvm]
  register: node
"""

RETURN = r"""
arch:
  description: The kernel's machine name.
  returned: always
  type: str
cpu_vendor:
  description: The CPU vendor from /proc/cpuinfo (for example C(GenuineIntel)), empty when unknown.
  returned: always
  type: str
containerd:
  description: C(rc), C(version) (such as C(1.7.24), empty when unknown) and C(stderr) of C(containerd --version).
  returned: always
  type: dict
config:
  description: The configuration file as O(files) returns files, plus C(dump_rc) and C(dump_error) of C(containerd config dump).
  returned: always
  type: dict
config_default:
  description: The output of C(containerd config default), empty unless asked for.
  returned: always
  type: str
config_newer:
  description: Whether the configuration file changed after the running containerd started (a restart is pending).
  returned: always
  type: bool
services:
  description: Service name to C(true) when systemd runs it; empty when systemd does not run the system.
  returned: always
  type: dict
files:
  description: Path to C(exists) and, when it does, C(content) (base64), C(owner), C(group) and C(mode).
  returned: always
  type: dict
record:
  description: The install record (release and installed files), empty when there is none.
  returned: always
  type: dict
handlers:
  description: The handlers record C(handlers.json) of O(state_dir) (name to its runsc.toml); its files are read too.
  returned: always
  type: dict
record_problem:
  description: Why the files on disk differ from the record; empty when every recorded file matches.
  returned: always
  type: str
runsc_version:
  description: The output of the installed runsc's C(--version), empty when it does not run.
  returned: always
  type: str
devices:
  description: Device path to whether it exists.
  returned: always
  type: dict
commands:
  description: C(ctr) and C(docker) to their path, empty when missing.
  returned: always
  type: dict
"""

import base64
import grp
import json
import os
import pwd
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils.release_record import (
    read_record,
    record_problem,
)


def read_file(path):
    """Return exists and, for an existing file, its base64 content, owner, group and mode."""
    try:
        with open(path, "rb") as handle:
            content = handle.read()
        st = os.stat(path)
    except FileNotFoundError:
        return {"exists": False}

    def name(lookup, ident):
        try:
            return lookup(ident)[0]
        except KeyError:
            return str(ident)

    return {"exists": True, "content": base64.b64encode(content).decode("ascii"), "mode": "%04o" % (st.st_mode & 0o7777),
            "owner": name(pwd.getpwuid, st.st_uid), "group": name(grp.getgrgid, st.st_gid)}


def cpu_vendor():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            match = re.search(r"^vendor_id\s*:\s*(\S+)", handle.read(), re.M)
    except OSError:
        return ""
    return match.group(1) if match else ""


def config_newer(module, systemctl, path):
    """Whether path changed after containerd's main process started (a run stopped before its restart)."""
    pid = module.run_command([systemctl, "show", "--property", "MainPID", "--value", "containerd"])[1].strip()
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as handle:
            boot = int(next(line for line in handle if line.startswith("btime")).split()[1])
        return os.stat(path).st_mtime > boot + ticks / os.sysconf("SC_CLK_TCK") + 1
    except (OSError, ValueError, IndexError, StopIteration):
        return False


def main():
    module = AnsibleModule(
        argument_spec={
            "config_path": {"type": "path", "required": True},
            "config_default": {"type": "bool", "default": False},
            "bin_dir": {"type": "path", "required": True},
            "state_dir": {"type": "path", "required": True},
            "files": {"type": "list", "elements": "path", "default": []},
            "devices": {"type": "list", "elements": "path", "default": []},
            "services": {"type": "list", "elements": "str", "default": ["containerd"]},
        },
        supports_check_mode=True,
    )
    params = module.params
    containerd = module.get_bin_path("containerd")
    result = {"changed": False, "arch": os.uname().machine, "cpu_vendor": cpu_vendor(), "config_default": "",
              "containerd": {"rc": 127, "version": "", "stderr": "containerd: command not found"}}
    if containerd:
        rc, out, err = module.run_command([containerd, "--version"])
        version = re.search(r"\sv?(\d+\.\d+\.\d+)", out)
        result["containerd"] = {"rc": rc, "version": version.group(1) if version else "", "stderr": err}
    result["config"] = read_file(params["config_path"])
    if containerd and result["config"]["exists"]:
        rc, _out, err = module.run_command([containerd, "--config", params["config_path"], "config", "dump"])
        result["config"].update(dump_rc=rc, dump_error=err.strip())
    if containerd and params["config_default"]:
        result["config_default"] = module.run_command([containerd, "config", "default"])[1]
    systemctl = module.get_bin_path("systemctl")
    result["services"] = {}
    if systemctl and os.path.isdir("/run/systemd/system"):
        result["services"] = {name: module.run_command([systemctl, "is-active", "--quiet", name])[0] == 0
                              for name in params["services"]}
    handlers = read_file(os.path.join(params["state_dir"], "handlers.json"))
    try:
        result["handlers"] = json.loads(base64.b64decode(handlers["content"])) if handlers["exists"] else {}
    except ValueError:
        result["handlers"] = {}
    paths = params["files"] + [path for path in result["handlers"].values() if isinstance(path, str)]
    result["files"] = {path: read_file(path) for path in paths}
    result["config_newer"] = config_newer(module, systemctl, params["config_path"]) if result["services"].get("containerd") else False
    result["record"] = read_record(params["state_dir"])
    result["record_problem"] = record_problem(params["bin_dir"], result["record"])
    runsc = os.path.join(params["bin_dir"], "runsc")
    result["runsc_version"] = module.run_command([runsc, "--version"])[1] if os.path.isfile(runsc) else ""
    result["devices"] = {path: os.path.exists(path) for path in params["devices"]}
    result["commands"] = {name: module.get_bin_path(name) or "" for name in ("ctr", "docker")}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
