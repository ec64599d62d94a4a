#!/usr/bin/python
"""Read, in one round trip, what the containerd_gvisor role needs to know about a node."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: node_info
short_description: Read a node's architecture, containerd and containerd configuration in one call
description:
  - Reads only; changes nothing. One call replaces seven separate probes (fact gathering,
    C(containerd --version), stat and read of the configuration, C(containerd config dump),
    C(containerd config default), C(systemctl is-active containerd)), which keeps a run that
    changes nothing short.
options:
  config_path:
    description: containerd's configuration file.
    type: path
    required: true
  config_default:
    description: Also read C(containerd config default).
    type: bool
    default: true
  runsc_config_path:
    description: runsc's configuration for containerd's shim, read like O(config_path).
    type: path
  runsc:
    description: Path of an installed runsc to ask for its version.
    type: path
"""

EXAMPLES = r"""
- name: Read what the node has
  gvisor_nodes.containerd_gvisor.node_info:
    config_path: /etc/containerd/config.toml
  register: node
"""

RETURN = r"""
arch:
  description: The kernel's machine name (C(uname -m)).
  returned: always
  type: str
containerd:
  description: C(containerd --version) as rc, stdout, stderr and msg (msg is set when it could not run).
  returned: always
  type: dict
config_stat:
  description: exists, and when it does pw_name, gr_name and mode (octal string) of the configuration file.
  returned: always
  type: dict
config_content:
  description: The configuration file's bytes, base64 encoded; empty when it does not exist.
  returned: always
  type: str
config_dump:
  description: C(containerd --config FILE config dump) as rc, stdout and stderr; empty when there is no file.
  returned: always
  type: dict
config_default:
  description: C(containerd config default) as rc and stdout; empty when not asked for.
  returned: always
  type: dict
containerd_active:
  description: C(systemctl is-active containerd.service) as rc (0 when running).
  returned: always
  type: dict
runsc_config_stat:
  description: Like RV(config_stat), for O(runsc_config_path).
  returned: when O(runsc_config_path) is given
  type: dict
runsc_config_content:
  description: Like RV(config_content), for O(runsc_config_path).
  returned: when O(runsc_config_path) is given
  type: str
runsc_version:
  description: C(runsc --version) as rc, stdout and stderr; empty when O(runsc) does not exist.
  returned: when O(runsc) is given
  type: dict
"""

import base64
import grp
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule


def run(module, argv):
    """Run a command, reporting a missing executable like the command module does."""
    try:
        rc, out, err = module.run_command(argv)
    except OSError as err:  # pragma: no cover - run_command reports most of these itself
        return {"rc": 127, "stdout": "", "stderr": "", "msg": str(err)}
    return {"rc": rc, "stdout": out, "stderr": err}


def config_stat(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {"exists": False}

    def name(lookup, ident):
        try:
            return lookup(ident)[0]
        except KeyError:
            return str(ident)

    return {"exists": True, "pw_name": name(pwd.getpwuid, st.st_uid), "gr_name": name(grp.getgrgid, st.st_gid),
            "mode": "%04o" % stat.S_IMODE(st.st_mode)}


def read_file(path):
    """(stat, base64 content) of a file; content is empty when it does not exist."""
    st = config_stat(path)
    if not st["exists"]:
        return st, ""
    with open(path, "rb") as handle:
        return st, base64.b64encode(handle.read()).decode("ascii")


def main():
    module = AnsibleModule(
        argument_spec={"config_path": {"type": "path", "required": True},
                       "config_default": {"type": "bool", "default": True},
                       "runsc_config_path": {"type": "path"},
                       "runsc": {"type": "path"}},
        supports_check_mode=True,
    )
    path = module.params["config_path"]
    result = {"changed": False, "arch": os.uname().machine}
    containerd = module.get_bin_path("containerd")
    if containerd is None:
        result["containerd"] = {"rc": 127, "stdout": "", "stderr": "", "msg": "containerd: command not found"}
    else:
        result["containerd"] = run(module, [containerd, "--version"])
    result["config_stat"], result["config_content"] = read_file(path)
    result["config_dump"] = {}
    if result["config_stat"]["exists"]:
        if containerd:
            result["config_dump"] = run(module, [containerd, "--config", path, "config", "dump"])
    result["config_default"] = {}
    if containerd and module.params["config_default"]:
        result["config_default"] = run(module, [containerd, "config", "default"])
    systemctl = module.get_bin_path("systemctl")
    result["containerd_active"] = (run(module, [systemctl, "is-active", "--quiet", "containerd.service"])
                                   if systemctl else {"rc": 4, "stdout": "", "stderr": "no systemctl"})
    if module.params["runsc_config_path"]:
        result["runsc_config_stat"], result["runsc_config_content"] = read_file(module.params["runsc_config_path"])
    if module.params["runsc"]:
        runsc = module.params["runsc"]
        result["runsc_version"] = run(module, [runsc, "--version"]) if os.path.isfile(runsc) else {}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
