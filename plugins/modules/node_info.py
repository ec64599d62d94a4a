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
  - Reads only; changes nothing. Returns the architecture, containerd's version, its configuration file and
    the files that imports, whether containerd parses them and its effective configuration (C(containerd config
    dump)), its built-in defaults on containerd 1.x, which services run, the given files, the install record
    checked against the files on disk, a change an earlier run left unfinished, the installed runsc's version,
    which device nodes exist and whether the staging directory is on a noexec mount.
author: containerd-gvisor maintainers (@gvisor-nodes)
options:
  config_path:
    description: containerd's configuration file.
    type: path
    required: true
  bin_dir:
    description: Where runsc and its shim are installed.
    type: path
    required: true
  state_dir:
    description: The directory holding the install record C(release.json), C(handlers.json) and the journal.
    type: path
    required: true
  staging_dir:
    description: Where release files are staged; reported when its filesystem is mounted noexec.
    type: path
  files:
    description: Further files to read (for example runsc.toml files or Docker's daemon.json).
    type: list
    elements: path
    default: []
  devices:
    description: Device nodes whose existence to report, besides C(/dev/kvm) and those of NVIDIA's driver.
    type: list
    elements: path
    default: []
  services:
    description: systemd services whose state to report.
    type: list
    elements: str
    default: [containerd, docker, containerd-gvisor-metrics.service, containerd-gvisor-metrics-docker.service]
  metrics_addresses:
    description: Addresses of gVisor's metric server (as runsc takes them) to report the holder of.
    type: list
    elements: str
    default: []
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
  description:
    - The configuration file as O(files) returns files, plus C(dump_rc), C(dump_error) and C(dump) of C(containerd config dump),
      containerd's effective configuration (C(containerd config default) when there is no file).
  returned: always
  type: dict
imports:
  description: Each file the configuration imports (globs and nested imports resolved as containerd does), as O(files) returns files.
  returned: always
  type: dict
config_newer:
  description: Whether the configuration file changed after the running containerd started (a restart is pending).
  returned: always
  type: bool
services:
  description: Service name to C(true) when systemd runs it; empty when systemd does not run the system.
  returned: always
  type: dict
files:
  description:
    - Path to C(exists) and, when it does, C(content) (base64), C(owner), C(group) and C(mode), for O(files), the runsc.toml
      files of the recorded handlers, C(handlers.json), the list of kernel modules the role has loaded at boot and the
      metric server units.
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
unfinished:
  description: The phase of a change an earlier run left unfinished (its journal), empty when there is none.
  returned: always
  type: str
runsc_version:
  description: The first line of the installed runsc's C(--version), empty when it does not run.
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
metrics:
  description:
    - Each of O(metrics_addresses) to who listens there, empty when nobody does, C(ours) when one of the role's metric
      server units.
  returned: always
  type: dict
staging_noexec:
  description: The mount point holding O(staging_dir) when it is mounted noexec, else empty.
  returned: always
  type: str
"""

import base64
import glob
import grp
import json
import os
import pwd
import re
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils import metrics
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils.release_record import (
    read_record,
    record_problem,
)
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils.transaction import Transaction
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils.upstream import KVM_MODULES_LOAD, NVIDIA_DEVICES


def read_file(path):
    """Return exists and, for an existing file, its base64 content, owner, group and mode."""
    try:
        with open(path, "rb") as handle:
            content = handle.read()
        st = os.stat(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return {"exists": False}

    def name(lookup, ident):
        try:
            return lookup(ident)[0]
        except KeyError:
            return str(ident)

    return {"exists": True, "content": base64.b64encode(content).decode("ascii"), "mode": "%04o" % (st.st_mode & 0o7777),
            "owner": name(pwd.getpwuid, st.st_uid), "group": name(grp.getgrgid, st.st_gid)}


def imports_of(path, seen):
    """The files a configuration file imports, resolved as containerd does (absolute, globs, nested)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return []
    top = re.split(r"(?m)^\s*\[", text, maxsplit=1)[0]
    found = re.search(r"(?m)^\s*imports\s*=\s*\[([^\]]*)\]", top)
    resolved = []
    for quoted in re.findall(r"\"((?:[^\"\\]|\\.)*)\"|'([^']*)'", found.group(1) if found else ""):
        entry = os.path.normpath(os.path.join(os.path.dirname(path), quoted[0] or quoted[1]))
        for match in sorted(glob.glob(entry)) if "*" in entry else [entry]:
            if match not in seen:
                seen.add(match)
                resolved += [match] + imports_of(match, seen)
    return resolved


def cpu_vendor():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            match = re.search(r"^vendor_id\s*:\s*(\S+)", handle.read(), re.M)
    except OSError:
        return ""
    return match.group(1) if match else ""


def config_newer(module, systemctl, paths):
    """Whether a configuration file changed after containerd's main process started (a restart is pending)."""
    pid = module.run_command([systemctl, "show", "--property", "MainPID", "--value", "containerd"])[1].strip()
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as handle:
            boot = int(next(line for line in handle if line.startswith("btime")).split()[1])
        return max(os.stat(path).st_mtime for path in paths if os.path.exists(path)) > boot + ticks / os.sysconf("SC_CLK_TCK") + 1
    except (OSError, ValueError, IndexError, StopIteration):
        return False


def noexec_mount(path):
    """The mount point holding path (or its nearest existing parent) when it is mounted noexec."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    path, best = os.path.realpath(path), ("", False)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                point = fields[4].replace("\\040", " ")
                if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
                    best = (point, "noexec" in fields[5].split(","))
    except OSError:
        return ""
    return best[0] if best[1] else ""


UNITS = [metrics.unit_name(root_of) for root_of in ("containerd", "docker")]


def main():
    module = AnsibleModule(
        argument_spec={
            "config_path": {"type": "path", "required": True},
            "bin_dir": {"type": "path", "required": True},
            "state_dir": {"type": "path", "required": True},
            "staging_dir": {"type": "path"},
            "files": {"type": "list", "elements": "path", "default": []},
            "devices": {"type": "list", "elements": "path", "default": []},
            "services": {"type": "list", "elements": "str", "default": ["containerd", "docker", *UNITS]},
            "metrics_addresses": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    params = module.params
    containerd, systemctl = module.get_bin_path("containerd"), module.get_bin_path("systemctl")
    systemctl = systemctl if systemctl and os.path.isdir("/run/systemd/system") else None
    runsc = os.path.join(params["bin_dir"], "runsc")
    record_path = os.path.join(params["state_dir"], "handlers.json")
    result = {"changed": False, "arch": os.uname().machine, "cpu_vendor": cpu_vendor(),
              "containerd": {"rc": 127, "version": "", "stderr": "containerd: command not found"},
              "config": read_file(params["config_path"]), "record": read_record(params["state_dir"])}
    # The commands and the hashing run side by side: together they take as long as the slowest of them.
    with ThreadPoolExecutor(max_workers=8) as pool:
        def start(*argv):
            return pool.submit(module.run_command, list(argv))

        version = start(containerd, "--version") if containerd else None
        # Without a file, containerd runs on its built-in defaults (and 1.x cannot dump a missing file).
        default = start(containerd, "config", "default") if containerd and not result["config"]["exists"] else None
        dump = start(containerd, "--config", params["config_path"], "config", "dump") if containerd and result["config"]["exists"] else None
        services = {name: start(systemctl, "is-active", "--quiet", name) for name in params["services"]} if systemctl else {}
        pids = start(systemctl, "show", "--property", "MainPID", "--value", *UNITS) if systemctl and params["metrics_addresses"] else None
        runsc_version = start(runsc, "--version") if os.path.isfile(runsc) else None
        problem = pool.submit(record_problem, params["bin_dir"], result["record"])
        result["imports"] = {path: read_file(path) for path in imports_of(params["config_path"], {params["config_path"]})}
        handlers = read_file(record_path)
        try:
            result["handlers"] = json.loads(base64.b64decode(handlers["content"])) if handlers["exists"] else {}
        except ValueError:
            result["handlers"] = {}
        paths = (params["files"] + [KVM_MODULES_LOAD, record_path] + [f"{metrics.UNIT_DIR}/{unit}" for unit in UNITS]
                 + [p for p in result["handlers"].values() if isinstance(p, str)])
        result["files"] = {path: read_file(path) for path in paths}
        result["devices"] = {path: os.path.exists(path) for path in ["/dev/kvm", *NVIDIA_DEVICES, *params["devices"]]}
        result["commands"] = {name: module.get_bin_path(name) or "" for name in ("ctr", "docker")}
        result["staging_noexec"] = noexec_mount(params["staging_dir"]) if params["staging_dir"] else ""
        result["unfinished"] = (Transaction(params["bin_dir"], params["state_dir"]).journal() or {}).get("phase", "")
        if version:
            rc, out, err = version.result()
            found = re.search(r"\sv?(\d+\.\d+\.\d+)", out)
            result["containerd"] = {"rc": rc, "version": found.group(1) if found else "", "stderr": err}
        if dump or default:
            rc, out, err = (dump or default).result()
            result["config"].update(dump_rc=rc, dump_error=err.strip(), dump=out)
        result["services"] = {name: job.result()[0] == 0 for name, job in services.items()}
        result["runsc_version"] = runsc_version.result()[1].split("\n")[0] if runsc_version else ""
        result["record_problem"] = problem.result()
        ours = {int(pid) for pid in (pids.result()[1].split() if pids else []) if pid.isdigit() and pid != "0"}
        result["metrics"] = {}
        for address in params["metrics_addresses"]:
            try:
                result["metrics"][address] = metrics.holder(address, ours)
            except metrics.AddressError:
                result["metrics"][address] = ""  # the plan refuses it, naming the variable
    result["config_newer"] = (config_newer(module, systemctl, [params["config_path"], *result["imports"]])
                              if result["services"].get("containerd") else False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
