#!/usr/bin/python
# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Change a node's gVisor as one transaction: release, configuration, restarts and sandboxes that start.

What Ansible's own modules cannot do: check every staged byte, ask the staged runsc which release it
really is and refuse one the node's containerd cannot run, swap runsc, its shim and gvisor-bin/ into
place so that no runsc is ever there without the files it needs (runsc last), write the configuration
files, prove containerd's effective configuration, restart containerd and Docker and start real
sandboxes, and put all of it back when anything fails, in one round trip under one lock, with a
journal that lets the next run finish or undo a change that was killed half way.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release
short_description: Install, configure and prove gVisor on a node as one transaction, or take it off
description:
  - V(present) verifies O(release) from O(sources) and asks the staged runsc for its version (checking
    O(compatibility) and O(platforms)), keeps what it replaces aside with a journal, installs the release, writes
    O(files), checks containerd's effective configuration, starts each O(smoke) sandbox, restarts containerd and
    Docker as O(containerd) and O(docker) say and proves them; when any step fails everything is put back.
  - V(absent) does the same with the configuration that takes gVisor off, then removes the release and O(remove).
  - V(recovered) finishes a change an earlier run left unfinished (it had been proven) or puts it back.
  - The action plugin of the same name copies release files from the control node to the node first.
author: containerd-gvisor maintainers (@gvisor-nodes)
options:
  state:
    description: What to do.
    type: str
    choices: [present, absent, recovered]
    default: present
  bin_dir:
    description: Directory of runsc, containerd-shim-runsc-v1 and gvisor-bin/.
    type: path
    required: true
  state_dir:
    description: Directory of the install record C(release.json), the lock and the journal.
    type: path
    required: true
  staging_dir:
    description:
      - This run's staging directory. Its parent's other C(run-*) directories untouched for O(staging_age) seconds are
        leftovers of interrupted runs and removed.
    type: path
  staging_age:
    description: Seconds after which another run's staging directory counts as left behind (longer than a download takes).
    type: int
    default: 3600
  release:
    description: The release to install (C(version), C(arch), C(layout), C(url), C(artifacts) file name to sha512); none keeps the installed one.
    type: dict
  record:
    description: The installed release under another name (its files unchanged), to write into C(release.json).
    type: dict
  sources:
    description: File name to the path of each downloaded release file on the node.
    type: dict
    default: {}
  compatibility:
    description: C(containerd) (the node's version) and C(ignore) (install a refused pair anyway).
    type: dict
    default: {}
  platforms:
    description: The platforms the handlers use; the staged release must have each.
    type: list
    elements: str
    default: []
  files:
    description:
      - Files to write (C(path), C(content), C(mode)), root-owned; C(content) null removes the file. C(backup) keeps a
        timestamped copy first. A symlink is followed, so its target is written and the link kept.
    type: list
    elements: dict
    default: []
  remove:
    description: Further files that V(absent) removes once containerd runs without gVisor.
    type: list
    elements: path
    default: []
  smoke:
    description: Sandboxes to start (C(name), C(argv)); each must print gVisor's banner within O(timeout).
    type: list
    elements: dict
    default: []
  timeout:
    description: Seconds each sandbox may take.
    type: int
    default: 60
  containerd:
    description:
      - C(config_path), C(socket), C(handlers) (name to the runtime type its effective configuration must show, empty
        for none), C(restart) and C(ctr_smoke) (sandboxes through containerd, as O(smoke)).
    type: dict
    default: {}
  docker:
    description: C(restart), C(runtime) (Docker's name for it), C(present) (whether Docker must list it) and C(smoke) (an argv).
    type: dict
    default: {}
  metrics:
    description:
      - gVisor's metric servers. C(start) (servers to enable and restart, each C(unit), C(root), C(address) and the
        rest of its unit), C(stop) (units to stop and disable) and C(proofs) (C(server), C(name) and C(argv), runsc with a
        handler's flags, for a sandbox the server must export).
      - Before any change, the release must have a metric server when C(start) is not empty.
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Finish or undo a change an earlier run left unfinished
  gvisor_nodes.containerd_gvisor.release:
    state: recovered
    bin_dir: /usr/local/bin
    state_dir: /var/lib/containerd-gvisor
"""

RETURN = r"""
runsc_version:
  description: What the installed runsc says of itself (C(runsc --version), first line, without C(runsc version)).
  returned: success
  type: str
smoke:
  description: Name, argv, rc and stdout of each sandbox started.
  returned: always
  type: list
restarted:
  description: The services restarted on the new configuration (C(containerd), C(docker)).
  returned: always
  type: list
msg:
  description: What a V(recovered) call did.
  returned: always
  type: str
"""

import contextlib
import json
import os
import shutil
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils import metrics, proof
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils.release_record import (
    RECORD,
    locked,
    read_record,
    stat_key,
)
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils.transaction import (
    NAMES,
    Failure,
    Transaction,
    clean_leftovers,
    install,
    remove,
    stage,
    target,
    test_hook,
    write,
)


def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except (FileNotFoundError, IsADirectoryError):
        return ""


def write_files(files, tx, bin_dir):
    for entry in files:
        path = target(entry["path"])
        if entry.get("content") is None:
            remove(path)
            continue
        if entry.get("server"):  # a metric server's unit starts the helper the installed release has
            entry["content"] = metrics.unit_text(entry["server"], os.path.isfile(os.path.join(bin_dir, metrics.HELPER)))
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if entry.get("backup") and os.path.isfile(path):
            backup = f"{path}.{os.getpid()}.{time.strftime('%Y-%m-%d@%H:%M:%S')}~"
            tx.created(backup)  # a change put back takes its backup with it
            shutil.copy2(path, backup)
        write(path, entry["content"].encode("utf-8"), int(str(entry.get("mode") or "0644"), 8))


def holding(bin_dir, state_dir):
    """What the node holds now, read from it: for messages after a rollback."""
    release = read_record(state_dir).get("release", {})
    held = f"gVisor {release['version']} ({release['layout']})" if release else "no gVisor"
    return f"{held} in {bin_dir}"


class Change:
    """One call's change: keep aside, change, prove; put back and explain on failure."""

    def __init__(self, module):
        self.module, self.p = module, module.params
        self.run = self.command
        self.tx = Transaction(self.p["bin_dir"], self.p["state_dir"])
        self.restarted = []  # services restarted on the new configuration
        self.metrics = {"start": [], "stop": [], "proofs": [], **(self.p["metrics"] or {})}
        self.started, self.stopped = [], []  # metric server units started on the new configuration, and stopped
        self.units_before = {server["unit"]: os.path.exists(f"{metrics.UNIT_DIR}/{server['unit']}")
                             for server in self.metrics["start"]}
        self.result = {"changed": False, "smoke": [], "restarted": self.restarted, "msg": ""}

    def fail(self, msg):
        self.module.fail_json(**{**self.result, "msg": msg})

    def command(self, argv):
        """(rc, stdout, stderr) of a command; one that cannot be started answers like a shell would (127)."""
        try:
            return self.module.run_command(argv, handle_exceptions=False)
        except OSError as err:
            return 127, "", f"{argv[0]}: {err.strerror}"

    def prove(self, containerd, docker):
        """Every check, in the order a user would run them; the restarts come after the cheap checks."""
        if containerd.get("handlers") and (self.p["files"] or self.p["release"]):
            proof.effective_config(self.run, containerd["config_path"], containerd["handlers"])
        for command in self.p["smoke"]:
            self.result["smoke"].append(proof.sandbox(self.run, command, self.p["timeout"]))
        test_hook("smoked")
        if containerd.get("restart"):
            self.restarted.append("containerd")
            proof.restart_containerd(self.run, containerd)
            test_hook("restarted")
        for command in containerd.get("ctr_smoke") or []:
            self.result["smoke"].append(proof.ctr_sandbox(self.run, command, containerd["socket"], self.p["timeout"]))
        if docker.get("restart"):
            self.restarted.append("docker")
            proof.restart_docker(self.run, docker)
        if docker.get("smoke"):
            self.result["smoke"].append(proof.sandbox(self.run, {"name": docker["runtime"], "argv": docker["smoke"]},
                                                      self.p["timeout"]))
        for server in self.metrics["start"]:
            self.started.append(server["unit"])
            self.run(["systemctl", "enable", server["unit"]])
            proof.restart(self.run, server["unit"])
        servers = {server["unit"]: server for server in self.metrics["start"] + [p["server"] for p in self.metrics["proofs"]]}
        for server in servers.values():
            metrics.wait_until_answers(self.run, server)
        for command in self.metrics["proofs"]:
            self.result["smoke"].append(metrics.prove(command["server"], command, self.p["timeout"]))

    def apply(self, staged):
        containerd, docker = self.p["containerd"], self.p["docker"]
        restarts = [name for name, spec in (("containerd", containerd), ("docker", docker)) if spec.get("restart")]
        restarts += [server["unit"] for server in self.metrics["start"]] + self.metrics["stop"]
        self.tx.begin(bool(staged) or self.p["state"] == "absent", [target(f["path"]) for f in self.p["files"]]
                      + self.p["remove"], restarts, self.p["staging_dir"])
        test_hook("kept")
        try:
            for unit in self.metrics["stop"]:  # while its unit file is there to disable
                self.stopped.append(unit)
                self.run(["systemctl", "disable", "--now", unit])
            if staged:
                installed = install(self.p["bin_dir"], staged)
                record = {"release": self.p["release"], "installed_files": installed, "runsc_version": self.result["runsc_version"],
                          "installed_stat": {path: stat_key(os.path.join(self.p["bin_dir"], path)) for path in installed}}
                write(os.path.join(self.p["state_dir"], RECORD), json.dumps(record, indent=2, sort_keys=True).encode() + b"\n", 0o600)
                test_hook("installed")
            write_files(self.p["files"], self.tx, self.p["bin_dir"])
            if self.stopped or any(f["path"].startswith(metrics.UNIT_DIR + "/") for f in self.p["files"]):
                self.run(["systemctl", "daemon-reload"])
            test_hook("written")
            self.prove(containerd, docker)
            self.tx.mark("proven")
            test_hook("proven")
        except Failure as why:
            self.fail_back(str(why))
        except Exception as err:  # an unexpected error must not leave the node half changed either
            self.fail_back(f"{type(err).__name__}: {err}")
        if self.p["state"] == "absent":
            for path in [os.path.join(self.p["bin_dir"], name) for name in NAMES] + self.p["remove"]:
                remove(path)
            remove(os.path.join(self.p["state_dir"], RECORD))
        self.tx.commit()

    def fail_back(self, why):
        """Put back what this change kept, restart what it restarted, and fail saying what the node has now."""
        for unit in self.started:
            if not self.units_before.get(unit):
                self.run(["systemctl", "disable", "--now", unit])  # a new server goes, while its unit file is there
        self.tx.put_back()
        if self.started or self.stopped:
            self.run(["systemctl", "daemon-reload"])
        for unit in self.started:
            if self.units_before.get(unit):
                proof.restart(self.run, unit)
        for unit in self.stopped:
            self.run(["systemctl", "enable", "--now", unit])
        containerd, journal, back = self.p["containerd"], "", False
        if "containerd" in self.restarted:
            journal = proof.last_log_lines(self.run)
            proof.restart(self.run, "containerd")
            back = proof.wait(self.run, ["ctr", "--address", containerd["socket"], "version"])[0] == 0
        if "docker" in self.restarted:
            proof.restart(self.run, "docker")
        now, config = holding(self.p["bin_dir"], self.p["state_dir"]), containerd.get("config_path", "config.toml")
        servers = (" gVisor's metric server runs on its previous unit again" if any(self.units_before.get(u) for u in self.started)
                   else " The metric server this change added was stopped and removed" if self.started else "")
        if not self.restarted and not why.startswith("gVisor's metric server"):
            what = "installed" if self.p["release"] else "configured" if self.p["state"] == "present" else "removed"
            name = (self.p["release"] or {}).get("version", "")
            msg = (f"gVisor {name + ' ' if name else ''}was not {what}: {why}. The node is back on its previous release and "
                   f"configuration: it keeps {now} and its configuration, and containerd was not restarted."
                   + (servers + "." if servers else ""))
        else:
            lead = ("A gVisor sandbox did not start" if why.startswith("a gVisor sandbox") else
                    "gVisor's metric server did not work" if why.startswith("gVisor's metric server") else
                    f"containerd did not come up with the new {config}" if self.restarted == ["containerd"]
                    else "Docker did not take gVisor")
            msg = (f"{lead} ({why}). "
                   + (f"containerd's last log lines: [{journal}]. " if "containerd" in self.restarted else "")
                   + (f"The previous {config} was put back" if "containerd" in self.restarted else "The previous configuration was put back")
                   + (f" and containerd {'is running with it again' if back else 'did not start with it either: see journalctl -u containerd'}"
                      if "containerd" in self.restarted else "")
                   + f". So were gVisor's previous files: the node has {now}." + (servers + "." if servers else ""))
        self.fail(msg)

    def present(self):
        staging = self.p["staging_dir"]
        staged = None
        if self.p["release"] and not self.module.check_mode:  # (check mode downloads nothing)
            try:
                staged = stage(self.p["sources"], self.p["release"], staging)
                self.result["runsc_version"] = proof.runsc_release(self.run, staged["runsc"], self.p["compatibility"],
                                                                   self.p["platforms"], self.module.warn)
            except Failure as why:
                self.fail(f"gVisor {self.p['release']['version']} was not installed: {why}. The node is unchanged: it keeps "
                          f"{holding(self.p['bin_dir'], self.p['state_dir'])} and its configuration, and containerd was not "
                          "restarted.")
        if self.metrics["start"] and (staged or not self.p["release"]):
            missing = metrics.missing_server(self.run, os.path.dirname(staged["runsc"]) if staged else self.p["bin_dir"])
            if missing:
                self.fail(f"gVisor's metric server (containerd_gvisor_metrics) cannot run: the release "
                          f"{(self.p['release'] or {}).get('version') or 'installed'} has none: {missing}. Install a "
                          "release that has one (the gVisor release bucket's and GitHub's builds do; Debian's runsc "
                          "package does not), or turn containerd_gvisor_metrics off. The node is unchanged: it keeps "
                          f"{holding(self.p['bin_dir'], self.p['state_dir'])} and its configuration, and containerd was "
                          "not restarted.")
        self.result["changed"] = bool(self.p["release"] or self.p["record"] or self.p["files"]
                                      or self.p["containerd"].get("restart") or self.metrics["start"] or self.metrics["stop"])
        if self.p["record"] and not self.module.check_mode:
            record = read_record(self.p["state_dir"])
            write(os.path.join(self.p["state_dir"], RECORD), json.dumps({**record, "release": self.p["record"]}, indent=2,
                                                                        sort_keys=True).encode() + b"\n", 0o600)
        if not self.module.check_mode and (self.result["changed"] or self.p["smoke"] or self.metrics["proofs"]):
            self.apply(staged)
        self.result.setdefault("runsc_version", read_record(self.p["state_dir"]).get("runsc_version", ""))

    def absent(self):
        installed = [os.path.join(self.p["bin_dir"], name) for name in NAMES] + self.p["remove"]
        self.result["changed"] = bool(self.p["files"] or self.metrics["stop"]) or any(os.path.lexists(path) for path in installed) or os.path.isdir(
            self.p["state_dir"])
        if self.module.check_mode or not self.result["changed"]:
            return
        self.apply(None)
        if self.stopped:
            self.run(["systemctl", "daemon-reload"])  # their unit files are gone
        for name in (RECORD + ".lock", "handlers.json", "staging"):
            remove(os.path.join(self.p["state_dir"], name))
        if os.path.isdir(self.p["state_dir"]) and not os.listdir(self.p["state_dir"]):
            os.rmdir(self.p["state_dir"])

    def recovered(self):
        journal = self.tx.journal()
        if not journal:
            return
        self.result["changed"] = True
        if self.module.check_mode:
            return
        if journal.get("staging"):
            remove(journal["staging"])  # the stopped run's own staging directory: that run is over
        if journal["phase"] == "proven":
            self.tx.commit()
            self.result["msg"] = "A change was stopped half way after it had been proven: it was kept."
            return
        restarts = self.tx.put_back()
        units = [service for service in restarts if service.startswith(metrics.UNIT_PREFIX)]
        if units:
            self.run(["systemctl", "daemon-reload"])
        for service in restarts:
            if service in units and not os.path.exists(f"{metrics.UNIT_DIR}/{service}"):
                metrics.remove_unit(self.run, service)  # a server the change added: its unit file is gone
                continue
            if service in units:
                self.run(["systemctl", "enable", service])  # one the change had stopped and disabled
            proof.restart(self.run, service)
        self.result["msg"] = (f"A change was stopped half way before it was proven: what it had replaced was put back"
                              f"{' and ' + ' and '.join(restarts) + ' restarted' if restarts else ''}; the node has "
                              f"{holding(self.p['bin_dir'], self.p['state_dir'])}.")


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["present", "absent", "recovered"], "default": "present"},
            "bin_dir": {"type": "path", "required": True},
            "state_dir": {"type": "path", "required": True},
            "staging_dir": {"type": "path"},
            "staging_age": {"type": "int", "default": 3600},
            "release": {"type": "dict"},
            "record": {"type": "dict"},
            "sources": {"type": "dict", "default": {}},
            "compatibility": {"type": "dict", "default": {}},
            "platforms": {"type": "list", "elements": "str", "default": []},
            "files": {"type": "list", "elements": "dict", "default": []},
            "remove": {"type": "list", "elements": "path", "default": []},
            "smoke": {"type": "list", "elements": "dict", "default": []},
            "timeout": {"type": "int", "default": 60},
            "containerd": {"type": "dict", "default": {}},
            "docker": {"type": "dict", "default": {}},
            "metrics": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    params = module.params
    change = Change(module)
    # A state directory this call creates must not stay behind when no change happens.
    created = not os.path.isdir(params["state_dir"])
    if module._diff:
        change.result["diff"] = [{"before_header": f["path"], "after_header": f["path"], "after": f.get("content") or "",
                                  "before": read_text(target(f["path"]))} for f in params["files"]]
    try:
        with locked(params["state_dir"], create=params["state"] == "present" and not module.check_mode):
            if params["state"] != "recovered" and change.tx.journal():
                change.fail("Another run's change of gVisor on this node was stopped half way after this run read "
                            "the node; run again: it finishes or undoes that change first.")
            if params["staging_dir"]:
                clean_leftovers(params["bin_dir"], os.path.dirname(params["staging_dir"]), params["staging_dir"],
                                params["staging_age"])
            getattr(change, params["state"])()
    except OSError as err:
        change.fail(f"gVisor could not be changed in {params['bin_dir']}: {err}")
    finally:
        if params["staging_dir"]:
            remove(params["staging_dir"])
            with contextlib.suppress(OSError):  # removed only when empty: another run may be downloading into it
                os.rmdir(os.path.dirname(params["staging_dir"]))
        # A state directory that holds nothing but the lock (a change that did not happen, or one put back that was
        # the first) goes.
        if ((created or params["state"] == "recovered") and os.path.isdir(params["state_dir"])
                and set(os.listdir(params["state_dir"])) <= {RECORD + ".lock"}):
            shutil.rmtree(params["state_dir"])
    module.exit_json(**change.result)


if __name__ == "__main__":
    main()
