#!/usr/bin/python
# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Change a node's gVisor as one transaction: release, configuration files and a sandbox that starts.

What Ansible's own modules cannot do: check every downloaded byte, ask the staged runsc which
release it really is and refuse one the node's containerd cannot run, swap runsc, its shim and
gvisor-bin/ into place so that no runsc is ever there without the files it needs (runsc last),
write the configuration files beside it, start a real sandbox, and put all of it back when the
sandbox does not start; in one round trip to the node, under one lock, keeping the previous
state aside until the run has proven the new one.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release
short_description: Install, configure, prove or roll back gVisor on a node as one transaction
description:
  - V(present) keeps what is installed aside, installs O(release) from O(staging_dir) (verified against its
    sha512, after asking the staged runsc for its version and checking O(compatibility)), writes O(files),
    then runs each O(smoke) command; when one does not print gVisor's banner in time, everything is put back.
  - V(committed) drops what was kept aside; V(previous) puts it back; V(absent) removes gVisor and O(files).
author: containerd-gvisor maintainers (@gvisor-nodes)
options:
  state:
    description: What to do.
    type: str
    choices: [present, absent, previous, committed]
    default: present
  bin_dir:
    description: Directory of runsc, containerd-shim-runsc-v1 and gvisor-bin/.
    type: path
    required: true
  state_dir:
    description: Directory of the install record C(release.json) and of what is kept aside.
    type: path
    required: true
  release:
    description: The release to install (C(version), C(arch), C(layout), C(url), C(artifacts) file name to sha512); none keeps the installed one.
    type: dict
  staging_dir:
    description: Directory holding the downloaded files of O(release); removed afterwards.
    type: path
  compatibility:
    description: C(containerd) (the node's version), C(rules) (C(gvisor_from), C(containerd_below), C(why), C(fix), C(source)) and C(ignore).
    type: dict
    default: {}
  files:
    description:
      - Files to write (C(path), C(content), C(mode)), root-owned, their directory created when missing; C(content) null removes the file.
      - C(validate) names a command that must accept the new text first (C(%s) is the candidate file); C(backup) keeps a timestamped copy.
    type: list
    elements: dict
    default: []
  remove:
    description: Further files that V(absent) removes.
    type: list
    elements: path
    default: []
  smoke:
    description: Sandboxes to start after the change (C(name), C(argv)); each must print C(Starting gVisor) within O(timeout).
    type: list
    elements: dict
    default: []
  timeout:
    description: Seconds each O(smoke) command may take.
    type: int
    default: 60
"""

EXAMPLES = r"""
- name: Install the staged release and prove it
  gvisor_nodes.containerd_gvisor.release:
    bin_dir: /usr/local/bin
    state_dir: /var/lib/containerd-gvisor
    staging_dir: /var/tmp/containerd-gvisor-staging
    release: "{{ release }}"
    smoke:
      - name: gvisor
        argv: [/usr/local/bin/runsc, --platform=systrap, --network=none, do, dmesg]
"""

RETURN = r"""
runsc_version:
  description: What the installed runsc says of itself (C(runsc --version), first line), when a release was installed.
  returned: success
  type: str
smoke:
  description: Name, argv, rc, stdout and stderr of each O(smoke) command run.
  returned: always
  type: list
previous:
  description: The release recorded before the call, empty when there was none.
  returned: always
  type: dict
"""

import json
import os
import re
import shutil
import tarfile
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils.release_record import (
    RECORD,
    locked,
    read_record,
    sha512_of,
)

RUNSC = "runsc"
SHIM = "containerd-shim-runsc-v1"
HELPERS = "gvisor-bin"
NAMES = (HELPERS, SHIM, RUNSC)  # the order files go into place: runsc last


class Refusal(Exception):
    """Why the change was not made; the node is as it was."""


def remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def read_text(path):
    """A file's text, empty when it does not exist."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def write(path, data, mode=0o644):
    """Write bytes to a temporary file beside path, then rename it over path."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.new-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), mode)
            if os.geteuid() == 0:
                os.fchown(handle.fileno(), 0, 0)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def unpack(staging, release):
    """Verify the staged files and return {path relative to bin_dir: file} of what to install."""
    for name, digest in release["artifacts"].items():
        path = os.path.join(staging, name)
        if not os.path.isfile(path) or sha512_of(path) != digest.lower():
            raise Refusal(f"{path} is missing or does not match its sha512 {digest}")
    if release["layout"] == "loose":
        return {name: os.path.join(staging, name) for name in (RUNSC, SHIM)}
    archive, files = os.path.join(staging, next(iter(release["artifacts"]))), {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                parts = [part for part in member.name.split("/") if part not in ("", ".")]
                if member.name.startswith("/") or ".." in parts:
                    raise Refusal(f"{archive} holds the unsafe member {member.name!r}")
                if member.isdir() or not (parts in ([RUNSC], [SHIM]) or parts[:1] == [HELPERS]):
                    continue
                if not member.isreg():
                    raise Refusal(f"{archive} member {member.name!r} is not a regular file")
                target = os.path.join(staging, "unpacked", *parts)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                files["/".join(parts)] = target
    except (tarfile.TarError, EOFError, OSError) as err:
        raise Refusal(f"{archive} cannot be unpacked ({err}); tar.bz2 and tar.gz archives are supported") from None
    if {RUNSC, SHIM} - set(files):
        raise Refusal(f"{archive} lacks {' and '.join(sorted({RUNSC, SHIM} - set(files)))} at its top level")
    return files


def version_tuple(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def check_compatibility(module, runsc, compatibility):
    """Ask the staged runsc what it is; refuse a release the rules say this containerd cannot run."""
    os.chmod(runsc, 0o700)
    rc, out, err = module.run_command([runsc, "--version"])
    if rc != 0:
        raise Refusal(f"the staged runsc does not run ({runsc} --version: {(err or out).strip()})")
    name = out.splitlines()[0].replace("runsc version ", "") if out else ""
    date = re.search(r"(?:release-|~)(\d{8})", name)
    containerd = compatibility.get("containerd") or ""
    for rule in compatibility.get("rules") or []:
        if (date and containerd and int(date.group(1)) >= int(rule["gvisor_from"])
                and version_tuple(containerd) < version_tuple(str(rule["containerd_below"]))):
            if compatibility.get("ignore"):
                module.warn(f"gVisor {name} with containerd {containerd}: {rule['why']}; installed anyway, as asked.")
                continue
            raise Refusal(f"gVisor {name} (what the release's runsc --version says) does not work with containerd "
                          f"{containerd} on this node: {rule['why']} ({rule['source']}). {rule['fix']}")
    return name


def install(bin_dir, files):
    """Put the files in place: gvisor-bin/ swapped whole, then the shim, then runsc."""
    os.makedirs(bin_dir, mode=0o755, exist_ok=True)
    target = os.path.join(bin_dir, HELPERS)
    helpers = {path[len(HELPERS) + 1:]: src for path, src in files.items() if path.startswith(HELPERS + "/")}
    if helpers:
        new = tempfile.mkdtemp(dir=bin_dir, prefix=f".{HELPERS}.new-")
        os.chmod(new, 0o755)
        for path, src in helpers.items():
            os.makedirs(os.path.dirname(os.path.join(new, path)), mode=0o755, exist_ok=True)
            with open(src, "rb") as handle:
                write(os.path.join(new, path), handle.read(), 0o755)
        remove(target + ".old")
        if os.path.lexists(target):
            os.rename(target, target + ".old")
        os.rename(new, target)
        remove(target + ".old")
    else:
        remove(target)  # the helpers of the release installed before
    for name in (SHIM, RUNSC):
        with open(files[name], "rb") as handle:
            write(os.path.join(bin_dir, name), handle.read(), 0o755)
    return {path: sha512_of(os.path.join(bin_dir, path)) for path in files}


class Transaction:
    """What a change replaces, kept in state_dir/previous until committed or put back."""

    def __init__(self, bin_dir, state_dir):
        self.bin_dir, self.state_dir = bin_dir, state_dir
        self.dir = os.path.join(state_dir, "previous")

    def keep(self, binaries, paths):
        """Copy the installed release (when it is about to change) and the given files aside."""
        remove(self.dir)
        os.makedirs(os.path.join(self.dir, "files"), mode=0o700)
        manifest = {"binaries": binaries, "files": []}
        for index, path in enumerate(paths):
            entry = {"path": path, "exists": os.path.lexists(path)}
            if entry["exists"]:
                st = os.stat(path)
                entry.update(mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid)
                shutil.copyfile(path, os.path.join(self.dir, "files", str(index)))
            manifest["files"].append(entry)
        for name in NAMES + (RECORD,) if binaries else ():
            source = os.path.join(self.state_dir if name == RECORD else self.bin_dir, name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(self.dir, name), symlinks=True)
            elif os.path.lexists(source):
                shutil.copy2(source, os.path.join(self.dir, name), follow_symlinks=False)
        with open(os.path.join(self.dir, "manifest.json"), "w", encoding="utf-8") as handle:
            json.dump(manifest, handle)

    def put_back(self):
        """Restore what was kept aside; False when nothing was."""
        try:
            with open(os.path.join(self.dir, "manifest.json"), encoding="utf-8") as handle:
                manifest = json.load(handle)
        except (OSError, ValueError):
            return False
        for index, entry in enumerate(manifest["files"]):
            if not entry["exists"]:
                remove(entry["path"])
                continue
            with open(os.path.join(self.dir, "files", str(index)), "rb") as handle:
                write(entry["path"], handle.read(), entry["mode"])
            os.chown(entry["path"], entry["uid"], entry["gid"])
        if manifest["binaries"]:
            kept = {name: os.path.join(self.dir, name) for name in (SHIM, RUNSC) if os.path.lexists(os.path.join(self.dir, name))}
            for root, _dirs, names in os.walk(os.path.join(self.dir, HELPERS)):
                kept.update({os.path.relpath(os.path.join(root, n), self.dir): os.path.join(root, n) for n in names})
            if {SHIM, RUNSC} <= set(kept):
                install(self.bin_dir, kept)
            else:
                for name in NAMES:
                    remove(os.path.join(self.bin_dir, name))
            if os.path.exists(os.path.join(self.dir, RECORD)):
                os.replace(os.path.join(self.dir, RECORD), os.path.join(self.state_dir, RECORD))
            else:
                remove(os.path.join(self.state_dir, RECORD))
        remove(self.dir)
        return True


def write_files(module, files):
    """Write or remove each file; a file with a validate command must pass it first."""
    for entry in files:
        path = entry["path"]
        if entry.get("content") is None:
            remove(path)
            continue
        data = entry["content"].encode("utf-8")
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if entry.get("backup") and os.path.isfile(path):
            shutil.copy2(path, f"{path}.{os.getpid()}.{time.strftime('%Y-%m-%d@%H:%M:%S')}~")
        if entry.get("validate"):
            fd, candidate = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.check-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            rc, out, err = module.run_command(entry["validate"].replace("%s", candidate))
            remove(candidate)
            if rc != 0:
                raise Refusal(f"{entry['validate'].replace('%s', path)} refuses the new {path}: {(err or out).strip()}")
        write(path, data, int(str(entry.get("mode") or "0644"), 8))


def start_sandbox(module, command, timeout):
    """Run one smoke-test command; coreutils' timeout kills it, and the sandbox it started, when it takes too long."""
    rc, out, err = module.run_command(["timeout", "--kill-after=5", str(timeout)] + command["argv"])
    return {"name": command["name"], "argv": command["argv"], "rc": rc, "stdout": out,
            "stderr": f"timed out after {timeout} s" if rc in (124, 137) else err}


def present(module, result):
    params = module.params
    bin_dir, state_dir, release = params["bin_dir"], params["state_dir"], params["release"]
    try:
        files = unpack(params["staging_dir"], release) if release else None
        if files:
            result["runsc_version"] = check_compatibility(module, files[RUNSC], params["compatibility"])
        result["changed"] = bool(files or params["files"])
        with locked(state_dir):
            result["previous"] = read_record(state_dir).get("release", {})
            transaction = Transaction(bin_dir, state_dir)
            if result["changed"]:
                transaction.keep(bool(files), [entry["path"] for entry in params["files"]])
            try:
                if files:
                    installed = install(bin_dir, files)
                    write(os.path.join(state_dir, RECORD), json.dumps(
                        {"release": release, "installed_files": installed, "runsc_version": result["runsc_version"]},
                        indent=2, sort_keys=True).encode() + b"\n")
                write_files(module, params["files"])
                for command in params["smoke"]:
                    run = start_sandbox(module, command, params["timeout"])
                    result["smoke"].append(run)
                    if run["rc"] != 0 or "Starting gVisor" not in run["stdout"]:
                        # runsc's last words, without the usage text it prints after a bad flag
                        said = " | ".join(run["stderr"].split("Usage:", maxsplit=1)[0].strip().splitlines()[-3:])
                        said = said or run["stdout"].strip() or "no output"
                        raise Refusal(f"a gVisor sandbox did not start with runtime handler {run['name']} "
                                      f"({' '.join(run['argv'])}): {said}")
            except BaseException:
                transaction.put_back()
                raise
    finally:
        if params["staging_dir"]:
            remove(params["staging_dir"])


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["present", "absent", "previous", "committed"], "default": "present"},
            "bin_dir": {"type": "path", "required": True},
            "state_dir": {"type": "path", "required": True},
            "release": {"type": "dict"},
            "staging_dir": {"type": "path"},
            "compatibility": {"type": "dict", "default": {}},
            "files": {"type": "list", "elements": "dict", "default": []},
            "remove": {"type": "list", "elements": "path", "default": []},
            "smoke": {"type": "list", "elements": "dict", "default": []},
            "timeout": {"type": "int", "default": 60},
        },
        supports_check_mode=True,
    )
    params = module.params
    bin_dir, state_dir, state = params["bin_dir"], params["state_dir"], params["state"]
    result = {"changed": True, "smoke": [], "previous": read_record(state_dir).get("release", {})}
    if module._diff:
        result["diff"] = [{"before_header": entry["path"], "after_header": entry["path"], "after": entry.get("content") or "",
                           "before": read_text(entry["path"])} for entry in params["files"]]
    transaction = Transaction(bin_dir, state_dir)
    try:
        if state in ("committed", "previous"):
            result["changed"] = os.path.isdir(transaction.dir)
            if result["changed"] and not module.check_mode:
                with locked(state_dir):
                    transaction.put_back() if state == "previous" else remove(transaction.dir)
        elif module.check_mode:
            pass
        elif state == "present":
            present(module, result)
        else:
            paths = [os.path.join(bin_dir, name) for name in NAMES] + params["remove"]
            result["changed"] = any(os.path.lexists(path) for path in paths) or os.path.isdir(state_dir)
            for path in paths:
                remove(path)
            for name in ("previous", RECORD, RECORD + ".lock"):
                remove(os.path.join(state_dir, name))
            if os.path.isdir(state_dir) and not os.listdir(state_dir):
                os.rmdir(state_dir)
    except Refusal as err:
        module.fail_json(msg=str(err), **result)
    except OSError as err:
        module.fail_json(msg=f"gVisor could not be changed in {bin_dir}: {err}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
