# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""A change of gVisor on a node as one transaction that survives being killed at any point.

Before anything is replaced, what the change replaces is copied into <state_dir>/transaction together
with a journal naming the change and its phase. A change that is proven drops the copy; one that
fails puts it back. A change that never got to either (the process was killed) is found by the next
run before it plans anything: rolled forward when it had been proven, rolled back otherwise. So the
copy is only ever used by the change that made it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tarfile
import tempfile
import time

from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils.release_record import RECORD, sha512_of
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils.upstream import HELPERS, RUNSC, SHIM

NAMES = (HELPERS, SHIM, RUNSC)  # the order files go into place: runsc last
JOURNAL = "journal.json"


class Failure(Exception):
    """Why a change did not happen or was put back."""


def test_hook(step):
    """Tests stop the module dead after a step: CONTAINERD_GVISOR_TEST_HOOK names a file that holds the step, and
    "pause" after it to have the module stopped (SIGSTOP) rather than killed, for the test to kill later."""
    hook = os.environ.get("CONTAINERD_GVISOR_TEST_HOOK")
    if hook and os.path.isfile(hook):
        with open(hook, encoding="utf-8") as handle:
            words = handle.read().split()
        if words[:1] == [step]:
            os.kill(os.getpid(), signal.SIGSTOP if words[1:] == ["pause"] else signal.SIGKILL)


def remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def target(path):
    """The file a path names: a symlinked config.toml is edited where the link points, and keeps its link."""
    return os.path.realpath(path) if os.path.islink(path) else path


def write(path, data, mode=0o644):
    """Write bytes to a temporary file beside path, then rename it over path."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.new-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), mode)
            if os.geteuid() == 0:
                os.fchown(handle.fileno(), 0, 0)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def stage(sources, release, staging):
    """Verify the release's files against their sha512 and return {path relative to bin_dir: staged file}."""
    for name, digest in release["artifacts"].items():
        path = sources.get(name, "")
        if not os.path.isfile(path) or sha512_of(path) != digest.lower():
            raise Failure(f"{path or name} is missing or does not match its sha512 {digest}")
    os.makedirs(os.path.join(staging, "unpacked"), mode=0o700, exist_ok=True)
    if release["layout"] == "loose":
        files = {}
        for name in (RUNSC, SHIM):
            files[name] = os.path.join(staging, "unpacked", name)
            shutil.copyfile(sources[name], files[name])
        return files
    archive, files = sources[next(iter(release["artifacts"]))], {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                parts = [part for part in member.name.split("/") if part not in ("", ".")]
                if member.name.startswith("/") or ".." in parts:
                    raise Failure(f"{archive} holds the unsafe member {member.name!r}")
                parts = parts[1:] if parts[:1] == ["gvisor"] else parts  # GitHub's archives hold gvisor/runsc and so on
                if member.isdir() or not (parts in ([RUNSC], [SHIM]) or parts[:1] == [HELPERS]):
                    continue
                if not member.isreg():
                    raise Failure(f"{archive} member {member.name!r} is not a regular file")
                path = os.path.join(staging, "unpacked", *parts)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with tar.extractfile(member) as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                files["/".join(parts)] = path
    except (tarfile.TarError, EOFError, OSError) as err:
        raise Failure(f"{archive} cannot be unpacked ({err}); tar.bz2 and tar.gz archives are supported") from None
    missing = sorted({RUNSC, SHIM} - set(files))
    if missing:
        raise Failure(f"{archive} lacks {' and '.join(missing)} at its top level")
    return files


def install(bin_dir, files):
    """Put the files in place: gvisor-bin/ swapped whole, then the shim, then runsc. Returns their sha512."""
    os.makedirs(bin_dir, mode=0o755, exist_ok=True)
    helpers_dir = os.path.join(bin_dir, HELPERS)
    helpers = {path[len(HELPERS) + 1:]: src for path, src in files.items() if path.startswith(HELPERS + "/")}
    if helpers:
        new = tempfile.mkdtemp(dir=bin_dir, prefix=f".{HELPERS}.new-")
        os.chmod(new, 0o755)
        for path, src in helpers.items():
            os.makedirs(os.path.dirname(os.path.join(new, path)), mode=0o755, exist_ok=True)
            with open(src, "rb") as handle:
                write(os.path.join(new, path), handle.read(), 0o755)
        remove(helpers_dir + ".old")
        if os.path.lexists(helpers_dir):
            os.rename(helpers_dir, helpers_dir + ".old")
        os.rename(new, helpers_dir)
        remove(helpers_dir + ".old")
    else:
        remove(helpers_dir)  # the helpers of the release installed before
    for name in (SHIM, RUNSC):
        with open(files[name], "rb") as handle:
            write(os.path.join(bin_dir, name), handle.read(), 0o755)
    return {path: sha512_of(os.path.join(bin_dir, path)) for path in files}


def clean_leftovers(bin_dir, staging_root, keep, age):
    """What interrupted runs left: staging directories untouched for age seconds (a younger one may belong to a run
    that is still downloading, which the lock does not cover), half-written helper directories and files."""
    if os.path.isdir(staging_root):
        for name in os.listdir(staging_root):
            path = os.path.join(staging_root, name)
            try:
                if name.startswith("run-") and path != keep and time.time() - os.lstat(path).st_mtime > age:
                    remove(path)
            except FileNotFoundError:
                pass  # its own run, which removes it without the lock, was quicker
    if os.path.isdir(bin_dir):
        for name in os.listdir(bin_dir):
            if name.startswith((f".{HELPERS}.new-", f".{RUNSC}.new-", f".{SHIM}.new-")) or name == HELPERS + ".old":
                remove(os.path.join(bin_dir, name))


class Transaction:
    """What one change replaces, kept in <state_dir>/transaction with its journal until proven or put back."""

    def __init__(self, bin_dir, state_dir):
        self.bin_dir, self.state_dir = bin_dir, state_dir
        self.dir = os.path.join(state_dir, "transaction")

    def journal(self):
        """The journal of a change in progress (or interrupted), None when there is none."""
        try:
            with open(os.path.join(self.dir, JOURNAL), encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None if not os.path.isdir(self.dir) else {"phase": "keeping"}

    def mark(self, phase, **details):
        journal = {**(self.journal() or {}), "phase": phase, **details}
        write(os.path.join(self.dir, JOURNAL), json.dumps(journal).encode(), 0o600)

    def begin(self, binaries, paths, restarts, staging=None):
        """Copy the installed release (when it is about to change) and the given files aside, then journal them.
        restarts: the services to restart after putting them back; staging: the change's staging directory, which a
        recovery removes."""
        remove(self.dir)
        os.makedirs(os.path.join(self.dir, "files"), mode=0o700)
        entries = []
        for index, path in enumerate(paths):
            entry = {"path": path, "exists": os.path.lexists(path)}
            if entry["exists"]:
                st = os.stat(path)
                entry.update(mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid)
                shutil.copyfile(path, os.path.join(self.dir, "files", str(index)))
            entries.append(entry)
        for name in NAMES + (RECORD,) if binaries else ():
            source = os.path.join(self.state_dir if name == RECORD else self.bin_dir, name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(self.dir, name), symlinks=True)
            elif os.path.lexists(source):
                shutil.copy2(source, os.path.join(self.dir, name), follow_symlinks=False)
        self.mark("kept", id=f"{time.time():.0f}-{os.getpid()}", binaries=binaries, files=entries, restarts=restarts,
                  staging=staging)

    def created(self, path):
        """Note a file this change makes besides those it replaces (a backup): put back, the change removes it."""
        self.mark(self.journal()["phase"], created=self.journal().get("created", []) + [path])

    def put_back(self):
        """Restore what this change kept aside and drop the copy; returns the services to restart."""
        journal = self.journal()
        if not journal or journal["phase"] == "keeping":
            remove(self.dir)  # killed while copying: nothing had been replaced yet
            return []
        for path in journal.get("created", []):
            remove(path)
        for index, entry in enumerate(journal["files"]):
            if not entry["exists"]:
                remove(entry["path"])
                continue
            with open(os.path.join(self.dir, "files", str(index)), "rb") as handle:
                write(entry["path"], handle.read(), entry["mode"])
            os.chown(entry["path"], entry["uid"], entry["gid"])
        if journal["binaries"]:
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
        return journal.get("restarts", [])

    def commit(self):
        remove(self.dir)
