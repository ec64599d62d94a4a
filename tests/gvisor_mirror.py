"""A private instance of the test mirror (tests/mirror/server.py) and its fault control.

Tests that inject faults, or move `latest`, start their own server on a free port over their
own copy of the mirror, so they never disturb the shared server on port 18080.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from gvisor_testinfra import REPO, mirror_dir

SERVER = REPO / "tests" / "mirror" / "server.py"


def copy_mirror(dest, source=None):
    """Copy a built mirror to dest (hard links where the filesystem allows) and return dest."""
    source = Path(source or mirror_dir())
    if not (source / ".complete").exists():
        raise RuntimeError(f"{source} is not a built mirror; run tests/mirror/build first")

    def link_or_copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, symlinks=True, copy_function=link_or_copy)
    return Path(dest)


def point_latest(root, version):
    """Make release/latest of a mirror copy point at another release, atomically."""
    release = Path(root) / "release"
    new = release / ".latest.new"
    new.unlink(missing_ok=True)
    new.symlink_to(version)
    new.replace(release / "latest")


class MirrorServer:
    """One server.py on a free 127.0.0.1 port, with its access log and fault table."""

    def __init__(self, root, log):
        self.root, self.log = Path(root), Path(log)
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--root", str(self.root), "--port", "0", "--log", str(self.log)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("serving "):
            self.proc.kill()
            raise RuntimeError(f"server.py did not start: {line}{self.proc.stderr.read()}")
        self.port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def _control(self, method, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/_control/faults", data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def set_faults(self, faults):
        """Replace the fault table, e.g. {"/release/20240729.0/x86_64/gvisor.tar.bz2": {"kind": "corrupt"}}."""
        return self._control("PUT", faults)

    def clear_faults(self):
        return self._control("DELETE")

    def faults(self):
        """The fault table, each fault with the number of requests it changed ("hits")."""
        return self._control("GET")

    def requests(self):
        """Every request served so far, oldest first, as the access log's JSON objects."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


def served_bytes(data, kind):
    """The body server.py sends for a file's bytes under a "corrupt" or "truncate" fault."""
    if kind == "truncate":
        return data[: len(data) // 2]
    if kind == "corrupt" and data:
        body = bytearray(data)
        for pos in {0, len(data) // 2, len(data) - 1}:  # first, middle and last byte, flipped
            body[pos] ^= 0xFF
        return bytes(body)
    return data
