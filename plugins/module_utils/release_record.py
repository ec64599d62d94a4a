# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""What the node_info and release modules share: the install record, the sha512 of a file, the lock."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os

RECORD = "release.json"


def sha512_of(path):
    """Return the sha512 hex digest of a file."""
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_record(state_dir):
    """Return the install record ({} when there is none or it cannot be read)."""
    try:
        with open(os.path.join(state_dir, RECORD), encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and isinstance(record.get("installed_files"), dict) else {}


def stat_key(path):
    """What changes whenever a file's content does: size, inode and ctime, which no one can set back."""
    st = os.stat(path)
    return [st.st_size, st.st_ino, st.st_ctime_ns]


def record_problem(bin_dir, record):
    """Return why the files on disk differ from the record, or '' when every one matches.

    A file whose stat_key is the one recorded at install has not changed since; any other is hashed."""
    if not record:
        return "no gVisor release is recorded"
    for relpath, digest in sorted(record["installed_files"].items()):
        path = os.path.join(bin_dir, relpath)
        if ".." in relpath.split("/") or relpath.startswith("/"):
            return f"the record names {relpath!r}, which is outside {bin_dir}"
        if not os.path.isfile(path) or os.path.islink(path):
            return f"{path} is missing"
        if record.get("installed_stat", {}).get(relpath) != stat_key(path) and sha512_of(path) != digest:
            return f"{path} is not the file the record names"
    return ""


@contextlib.contextmanager
def locked(state_dir, create=True):
    """Hold an exclusive lock on the state directory's lock file, creating both when needed (and asked to)."""
    if not create and not os.path.isdir(state_dir):
        yield
        return
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    fd = os.open(os.path.join(state_dir, RECORD + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
