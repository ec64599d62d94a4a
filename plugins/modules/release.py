#!/usr/bin/python
"""Install a verified gVisor release (runsc and its containerd shim) atomically."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release
short_description: Install a verified gVisor release into a bin directory atomically
description:
  - Installs C(runsc), C(containerd-shim-runsc-v1) and, for releases that ship them,
    the helpers in C(gvisor-bin/) from artifacts that were already downloaded to O(staging_dir).
  - Every artifact is checked against the sha512 digests given in O(release) before anything
    is installed; each file is written under a temporary name in O(bin_dir) and renamed into
    place, C(runsc) last, so a failure never leaves a half-written binary.
  - Records what it installed (release and per-file sha512) in O(state_file), and reinstalls
    only when that record, or a recorded file, differs from what is asked for.
  - Holds an exclusive lock on C(<state_file>.lock) while it works, so concurrent runs do not
    corrupt the installation.
options:
  bin_dir:
    description: Directory that receives C(runsc), C(containerd-shim-runsc-v1) and C(gvisor-bin/).
    type: path
    required: true
  state_file:
    description: JSON file that records the installed release and files.
    type: path
    required: true
  state:
    description: Whether gVisor should be installed (V(present)) or removed (V(absent)).
    type: str
    choices: [present, absent]
    default: present
  release:
    description: The release to install; required when O(state=present).
    type: dict
    suboptions:
      version:
        description: gVisor release name, for example V(20240729.0).
        type: str
        required: true
      arch:
        description: Machine architecture of the release, for example V(x86_64).
        type: str
        required: true
      layout:
        description:
          - V(archive) for releases shipped as C(gvisor.tar.bz2), V(loose) for releases
            shipped as separate C(runsc) and C(containerd-shim-runsc-v1) files.
        type: str
        choices: [archive, loose]
        required: true
      url:
        description: Where the release was downloaded from; recorded for reference only.
        type: str
        default: ""
      artifacts:
        description:
          - Downloaded file name to sha512 hex digest.
          - For the archive layout one key, C(gvisor.tar.bz2); for the loose layout two keys,
            C(runsc) and C(containerd-shim-runsc-v1). Each value is the file's sha512 as 128 hex digits.
        type: dict
        required: true
  staging_dir:
    description: Directory that holds the downloaded artifacts, named as in O(release.artifacts).
    type: path
  check_only:
    description: Only report whether an installation is needed, without changing anything.
    type: bool
    default: false
notes:
  - Supports check mode.
  - Only C(.tar.bz2) archives are supported unless the Python running the module can read zstd archives.
"""

EXAMPLES = r"""
- name: Install gVisor from the downloaded archive
  gvisor_nodes.containerd_gvisor.release:
    bin_dir: /usr/local/bin
    state_file: /var/lib/containerd-gvisor/release.json
    staging_dir: /var/cache/containerd-gvisor/20240729.0
    release:
      version: "20240729.0"
      arch: x86_64
      layout: archive
      url: https://storage.googleapis.com/gvisor/releases/release/20240729.0/x86_64
      artifacts:
        gvisor.tar.bz2: "{{ gvisor_archive_sha512 }}"

- name: Find out whether the release still has to be downloaded
  gvisor_nodes.containerd_gvisor.release:
    bin_dir: /usr/local/bin
    state_file: /var/lib/containerd-gvisor/release.json
    release: "{{ gvisor_release }}"
    check_only: true
  register: gvisor_install_check

- name: Remove gVisor
  gvisor_nodes.containerd_gvisor.release:
    bin_dir: /usr/local/bin
    state_file: /var/lib/containerd-gvisor/release.json
    state: absent
"""

RETURN = r"""
needed:
  description: Whether the release was (or, in check mode or with check_only, would be) installed or removed.
  returned: always
  type: bool
reason:
  description: One sentence saying why an installation is or is not needed.
  returned: always
  type: str
installed:
  description: The state recorded before this run (release and installed_files), or {} if none.
  returned: always
  type: dict
installed_files:
  description: Installed files after this run, as path relative to bin_dir to sha512 hex digest.
  returned: always
  type: dict
  sample: {"runsc": "<sha512>", "containerd-shim-runsc-v1": "<sha512>", "gvisor-bin/gvisor_sentry": "<sha512>"}
previous:
  description: The release recorded before this run, or null if none was.
  returned: always
  type: dict
removed:
  description: Paths removed (or, in check mode or with check_only, that would be removed).
  returned: when state=absent
  type: list
  elements: str
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile

from ansible.module_utils.basic import AnsibleModule

RUNSC = "runsc"
SHIM = "containerd-shim-runsc-v1"
HELPERS_DIR = "gvisor-bin"
BINARY_MODE = 0o755
STATE_MODE = 0o644
DIR_MODE = 0o755
CHUNK = 1024 * 1024
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SHA512_HEX = re.compile(r"[0-9a-fA-F]{128}")


class InstallError(Exception):
    """A failure explained in one sentence, reported through fail_json."""


# --- files -------------------------------------------------------------------


def sha512_of(path):
    """Return the sha512 hex digest of a file."""
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def chown_root(path_or_fd):
    """Give a file to root:root when running as root (as an unprivileged user we cannot)."""
    if os.geteuid() == 0:
        if isinstance(path_or_fd, int):
            os.fchown(path_or_fd, 0, 0)
        else:
            os.lchown(path_or_fd, 0, 0)


def fsync_dir(path):
    """Flush a directory so that renames in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_path(path):
    """Remove a file, symlink or directory tree without following symlinks."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def write_binary(source, target_fd):
    """Copy source into an open file as an executable and return its sha512 hex digest."""
    digest = hashlib.sha512()
    with os.fdopen(target_fd, "wb") as dst, open(source, "rb") as src:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fchmod(dst.fileno(), BINARY_MODE)  # explicit, since mkstemp creates 0600 files
        chown_root(dst.fileno())
        os.fsync(dst.fileno())
    return digest.hexdigest()


def make_dir(path):
    """Create a directory with mode 0755 and root ownership, whatever the umask."""
    os.mkdir(path)
    os.chmod(path, DIR_MODE)
    chown_root(path)


# --- release and state ---------------------------------------------------------


def normalize_release(release):
    """Check the release option and return it with lowercase digests."""
    if not release:
        raise InstallError("release is required when state is present")
    artifacts = release["artifacts"]
    for name, digest in artifacts.items():
        if not name or "/" in name or name in (".", ".."):
            raise InstallError(f"release.artifacts key {name!r} must be a plain file name")
        if not isinstance(digest, str) or not SHA512_HEX.fullmatch(digest):
            raise InstallError(
                f"release.artifacts.{name} must be a 128-character hex sha512 digest, got {str(digest)[:80]!r}"
            )
    if release["layout"] == "loose" and set(artifacts) != {RUNSC, SHIM}:
        raise InstallError(
            f"release.artifacts must name exactly {RUNSC} and {SHIM} for the loose layout, got {sorted(artifacts)}"
        )
    if release["layout"] == "archive" and len(artifacts) != 1:
        raise InstallError(
            f"release.artifacts must name exactly one archive (gvisor.tar.bz2) for the archive layout, "
            f"got {sorted(artifacts)}"
        )
    return {
        "version": release["version"],
        "arch": release["arch"],
        "layout": release["layout"],
        "url": release.get("url") or "",
        "artifacts": {name: digest.lower() for name, digest in artifacts.items()},
    }


def safe_relpath(relpath):
    """Whether a recorded path stays inside bin_dir (a damaged state file must not reach outside)."""
    parts = relpath.split("/")
    return bool(relpath) and not relpath.startswith("/") and ".." not in parts and "" not in parts


def read_state(state_file):
    """Return (state, problem): the recorded state, or None and why it cannot be used."""
    if not os.path.exists(state_file):
        return None, f"no gVisor release is recorded in {state_file}"
    try:
        with open(state_file, encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError) as err:
        return None, f"{state_file} cannot be read ({err})"
    if not valid_state(state):
        return None, f"{state_file} does not hold a release and its installed files"
    return state, None


def valid_state(state):
    """Whether a loaded state file has the shape this module writes."""
    if not isinstance(state, dict) or not isinstance(state.get("release"), dict):
        return False
    files = state.get("installed_files")
    return isinstance(files, dict) and all(
        isinstance(path, str) and safe_relpath(path) and isinstance(digest, str) for path, digest in files.items()
    )


def same_release(recorded, release):
    """Whether the recorded release is the requested one (the URL may differ, e.g. a mirror)."""
    return all(recorded.get(key) == release[key] for key in ("version", "arch", "layout", "artifacts"))


def describe(release):
    """Name a release in messages, e.g. 'gVisor 20240729.0 (x86_64, archive)'."""
    return f"gVisor {release.get('version')} ({release.get('arch')}, {release.get('layout')})"


def file_problem(path, expected_digest):
    """Return why an installed file is not as recorded, or None if it is."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return f"{path} is missing"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file"
    if stat.S_IMODE(info.st_mode) != BINARY_MODE:
        return f"{path} has mode {stat.S_IMODE(info.st_mode):04o}, not {BINARY_MODE:04o}"
    if sha512_of(path) != expected_digest:
        return f"{path} does not match its recorded sha512"
    return None


def assess(bin_dir, state_file, release):
    """Return (needed, reason, state) for installing release."""
    state, problem = read_state(state_file)
    if state is None:
        return True, problem, None
    recorded = state["release"]
    if not same_release(recorded, release):
        if {k: recorded.get(k) for k in ("version", "arch", "layout")} == {
                k: release[k] for k in ("version", "arch", "layout")}:
            return True, f"{state_file} records other sha512 digests for {describe(release)}", state
        return True, f"{state_file} records {describe(recorded)}, not {describe(release)}", state
    for relpath, digest in sorted(state["installed_files"].items()):
        problem = file_problem(os.path.join(bin_dir, relpath), digest)
        if problem:
            return True, problem, state
    return False, f"{describe(release)} is installed in {bin_dir} as {state_file} records", state


def write_state(state_file, state):
    """Write the state file atomically with mode 0644."""
    directory = os.path.dirname(state_file) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(state_file)}.new-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fchmod(handle.fileno(), STATE_MODE)
            os.fsync(handle.fileno())
        os.replace(tmp, state_file)
    except BaseException:
        remove_path(tmp)
        raise
    fsync_dir(directory)


@contextlib.contextmanager
def exclusive_lock(state_file, may_create):
    """Hold an exclusive flock on <state_file>.lock; read-only runs create nothing to lock."""
    lock_path = f"{state_file}.lock"
    if may_create:
        os.makedirs(os.path.dirname(lock_path) or ".", mode=DIR_MODE, exist_ok=True)
    elif not os.path.exists(lock_path):
        yield
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, STATE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --- artifacts -------------------------------------------------------------------


def verify_staged(staging_dir, release):
    """Check every downloaded artifact against the release's sha512 digests."""
    for name, expected in sorted(release["artifacts"].items()):
        path = os.path.join(staging_dir, name)
        if not os.path.isfile(path):
            raise InstallError(f"{path} is missing, so {describe(release)} cannot be installed")
        actual = sha512_of(path)
        if actual != expected:
            raise InstallError(
                f"{path} has sha512 {actual}, but {describe(release)} expects {expected}; nothing was installed"
            )


def member_parts(archive, member):
    """Return a member's path components, refusing absolute paths and '..'."""
    parts = member.name.split("/")
    if member.name.startswith("/") or ".." in parts:
        raise InstallError(
            f"{archive} holds the unsafe member {member.name!r} (absolute or with '..'); nothing was installed"
        )
    return tuple(part for part in parts if part not in ("", "."))


def find_base(archive, members):
    """Return the directory parts that hold runsc: the top level or one leading directory."""
    candidates = [parts for parts, member in members.items()
                  if parts[-1:] == (RUNSC,) and len(parts) <= 2 and not member.isdir()]
    if not candidates:
        raise InstallError(f"{archive} has no {RUNSC} at its top level or under one leading directory")
    shallowest = min(len(parts) for parts in candidates)
    bases = sorted(parts[:-1] for parts in candidates if len(parts) == shallowest)
    if len(bases) > 1:
        raise InstallError(f"{archive} holds several {RUNSC} files ({bases}), so which one to install is unclear")
    return bases[0]


def wanted(relative):
    """Whether a path relative to the base is installed: runsc, the shim or a file under gvisor-bin/."""
    return relative in ((RUNSC,), (SHIM,)) or (len(relative) > 1 and relative[0] == HELPERS_DIR)


def select_members(archive, tar):
    """Return {relative path: member} for the files to install from an opened archive."""
    members = {}
    for member in tar.getmembers():
        members[member_parts(archive, member)] = member  # a later member wins, as when tar extracts
    base = find_base(archive, members)
    chosen = {}
    for parts, member in members.items():
        relative = parts[len(base):]
        if parts[:len(base)] != base or not wanted(relative) or (member.isdir() and relative[0] == HELPERS_DIR):
            continue
        if not member.isreg():
            raise InstallError(f"{archive} member {member.name!r} is a link or special file, not a regular file")
        chosen["/".join(relative)] = member
    if SHIM not in chosen:
        raise InstallError(f"{archive} has no {SHIM} beside {RUNSC}")
    return chosen


def open_archive(archive):
    """Open a compressed tar archive, explaining clearly when it cannot be read."""
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as err:
        with open(archive, "rb") as handle:
            is_zstd = handle.read(4) == ZSTD_MAGIC
        if is_zstd:
            raise InstallError(
                f"{archive} is zstd-compressed, which Python {sys.version_info.major}.{sys.version_info.minor} "
                f"cannot unpack; only .tar.bz2 archives are supported"
            ) from None
        raise InstallError(f"{archive} is not a readable tar archive ({err})") from None


def extract_archive(archive, dest):
    """Extract runsc, the shim and gvisor-bin/ into dest; return {relative path: extracted file}."""
    sources = {}
    try:
        with open_archive(archive) as tar:
            for relative, member in sorted(select_members(archive, tar).items()):
                target = os.path.join(dest, *relative.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                sources[relative] = target
    except (tarfile.TarError, EOFError, OSError) as err:
        raise InstallError(f"{archive} cannot be unpacked ({err}); nothing was installed") from None
    return sources


# --- installing ------------------------------------------------------------------------


class Staged:
    """Files written under temporary names in bin_dir, waiting to be renamed into place."""

    def __init__(self):
        self.files = {}  # name in bin_dir -> temporary path
        self.helpers_dir = None  # temporary gvisor-bin directory
        self.digests = {}  # relative path -> sha512

    def cleanup(self):
        """Remove whatever was not renamed into place."""
        for path in list(self.files.values()) + [self.helpers_dir]:
            if path and os.path.lexists(path):
                remove_path(path)


def stage_helper(bin_dir, staged, relative, source):
    """Write one gvisor-bin/ file into the temporary helpers directory."""
    if staged.helpers_dir is None:
        staged.helpers_dir = tempfile.mkdtemp(dir=bin_dir, prefix=f".{HELPERS_DIR}.new-")
        os.chmod(staged.helpers_dir, DIR_MODE)  # mkdtemp creates 0700 directories
        chown_root(staged.helpers_dir)
    parts = relative.split("/")[1:]
    directory = staged.helpers_dir
    for part in parts[:-1]:
        directory = os.path.join(directory, part)
        if not os.path.isdir(directory):
            make_dir(directory)
    target = os.path.join(directory, parts[-1])
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    staged.digests[relative] = write_binary(source, fd)


def stage(bin_dir, sources):
    """Write every file under a temporary name in bin_dir (same filesystem, so renames are atomic)."""
    staged = Staged()
    try:
        for relative, source in sorted(sources.items()):
            if relative.startswith(HELPERS_DIR + "/"):
                stage_helper(bin_dir, staged, relative, source)
                continue
            fd, staged.files[relative] = tempfile.mkstemp(dir=bin_dir, prefix=f".{relative}.new-")
            staged.digests[relative] = write_binary(source, fd)
        if staged.helpers_dir:
            fsync_dir(staged.helpers_dir)
    except BaseException:
        staged.cleanup()
        raise
    return staged


def swap_dir(new, target):
    """Replace the directory target by new: old one aside, new one in, old one removed."""
    old = None
    if os.path.lexists(target):
        old = f"{new}.old"  # unique, since new is a fresh mkdtemp name
        os.rename(target, old)
    try:
        os.rename(new, target)
    except OSError:
        if old:
            os.rename(old, target)  # put the previous helpers back
        raise
    if old:
        remove_path(old)


def install(bin_dir, staging_dir, release, previous_state):
    """Verify, unpack and install the release; return {relative path: sha512} of what was installed."""
    if not staging_dir:
        raise InstallError(
            f"staging_dir is required to install {describe(release)}: it must hold {', '.join(release['artifacts'])}"
        )
    verify_staged(staging_dir, release)
    work = None
    try:
        if release["layout"] == "archive":
            work = tempfile.mkdtemp(dir=staging_dir, prefix=".gvisor-extract-")
            sources = extract_archive(os.path.join(staging_dir, next(iter(release["artifacts"]))), work)
        else:
            sources = {name: os.path.join(staging_dir, name) for name in (RUNSC, SHIM)}
        os.makedirs(bin_dir, mode=DIR_MODE, exist_ok=True)
        staged = stage(bin_dir, sources)
        try:
            # Helpers first and runsc last: a runsc is never in place before what it needs.
            if staged.helpers_dir:
                swap_dir(staged.helpers_dir, os.path.join(bin_dir, HELPERS_DIR))
            for name in (SHIM, RUNSC):
                os.replace(staged.files[name], os.path.join(bin_dir, name))
        finally:
            staged.cleanup()
        recorded = (previous_state or {}).get("installed_files", {})
        if not staged.helpers_dir and any(path.startswith(HELPERS_DIR + "/") for path in recorded):
            remove_path(os.path.join(bin_dir, HELPERS_DIR))  # stale helpers of the release installed before
        fsync_dir(bin_dir)
    finally:
        if work:
            shutil.rmtree(work, ignore_errors=True)
    return staged.digests


# --- module entry points -----------------------------------------------------------------


def run_present(module):
    """Install the release when needed; return the module result."""
    params = module.params
    bin_dir, state_file = params["bin_dir"], params["state_file"]
    release = normalize_release(params["release"])
    read_only = module.check_mode or params["check_only"]
    with exclusive_lock(state_file, may_create=not read_only):
        needed, reason, state = assess(bin_dir, state_file, release)
        result = {
            "changed": False,
            "needed": needed,
            "reason": reason,
            "installed": state or {},
            "installed_files": (state or {}).get("installed_files", {}),
            "previous": (state or {}).get("release"),
        }
        if not needed or params["check_only"]:
            return result
        if module.check_mode:
            result["changed"] = True
            return result
        installed_files = install(bin_dir, params["staging_dir"], release, state)
        write_state(state_file, {"release": release, "installed_files": installed_files})
        result.update(changed=True, installed_files=installed_files)
        return result


def removal_targets(bin_dir, state_file, state):
    """Return the existing paths that state=absent removes, the state file last."""
    recorded = (state or {}).get("installed_files", {})
    names = {path.split("/")[0] for path in recorded} | {RUNSC, SHIM, HELPERS_DIR}
    paths = [os.path.join(bin_dir, name) for name in sorted(names)]
    return [path for path in paths + [state_file] if os.path.lexists(path)]


def run_absent(module):
    """Remove the installed release; return the module result."""
    params = module.params
    bin_dir, state_file = params["bin_dir"], params["state_file"]
    with exclusive_lock(state_file, may_create=False):
        state, _problem = read_state(state_file)
        targets = removal_targets(bin_dir, state_file, state)
        result = {
            "changed": False,
            "needed": bool(targets),
            "reason": f"{len(targets)} gVisor paths are installed" if targets else "gVisor is not installed",
            "installed": state or {},
            "installed_files": {},
            "previous": (state or {}).get("release"),
            "removed": targets,
        }
        if not targets or params["check_only"]:
            result["installed_files"] = (state or {}).get("installed_files", {})
            return result
        result["changed"] = True
        if not module.check_mode:
            for path in targets:
                remove_path(path)
            remove_record_dir(state_file)
        return result


def remove_record_dir(state_file):
    """Remove the lock file and, when nothing else is left in it, the install record's directory."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{state_file}.lock")  # a run waiting on it goes on and finds nothing installed
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(state_file))


def main():
    """Run the module."""
    module = AnsibleModule(
        argument_spec={
            "bin_dir": {"type": "path", "required": True},
            "state_file": {"type": "path", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "release": {
                "type": "dict",
                "options": {
                    "version": {"type": "str", "required": True},
                    "arch": {"type": "str", "required": True},
                    "layout": {"type": "str", "required": True, "choices": ["archive", "loose"]},
                    "url": {"type": "str", "default": ""},
                    "artifacts": {"type": "dict", "required": True},
                },
            },
            "staging_dir": {"type": "path"},
            "check_only": {"type": "bool", "default": False},
        },
        required_if=[("state", "present", ("release",))],
        supports_check_mode=True,
    )
    try:
        result = run_present(module) if module.params["state"] == "present" else run_absent(module)
    except InstallError as err:
        module.fail_json(msg=str(err))
    except OSError as err:
        action = "installed" if module.params["state"] == "present" else "removed"
        module.fail_json(msg=f"gVisor could not be {action}: {err}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
