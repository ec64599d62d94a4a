"""What the unit tests share: import paths of the collection's Python code, and helpers.

A module of its own rather than conftest.py: pytest collects tests/unit and tests/mirror in one run,
and `from conftest import` would find whichever conftest was imported first.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "containerd_gvisor"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PLUGINS = REPO / "plugins"
MODULE = PLUGINS / "modules" / "release.py"

# Importing the collection's Python must not leave __pycache__ folders inside it.
sys.dont_write_bytecode = True


# The collection's Python as Ansible imports it: ansible_collections.gvisor_nodes.containerd_gvisor.
if str(REPO / "playbooks" / "collections") not in sys.path:
    sys.path.insert(0, str(REPO / "playbooks" / "collections"))


def collection_module(name):
    """Import plugins.<...> of the collection, e.g. collection_module("plugins.plugin_utils.plan")."""
    return importlib.import_module(f"ansible_collections.gvisor_nodes.containerd_gvisor.{name}")


def sha512(data: bytes) -> str:
    """Return the sha512 hex digest of some bytes."""
    return hashlib.sha512(data).hexdigest()


def make_tar(path: Path, members: dict, mode: str = "w:bz2") -> str:
    """Write a tar archive of members and return its sha512.

    members maps a member name to bytes (a regular file, mode 0755), None (a
    directory) or ("symlink", target).
    """
    with tarfile.open(path, mode) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.mode = 0o755
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(content, tuple):
                info.type = tarfile.SYMTYPE
                info.linkname = content[1]
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return sha512(path.read_bytes())


def run_module(args: dict, check_mode: bool = False, module: Path = MODULE, env: dict | None = None) -> tuple[int, dict]:
    """Run a module of the role (the install module unless told) the way Ansible does (args file, JSON on stdout)."""
    payload = dict(args)
    if check_mode:
        payload["_ansible_check_mode"] = True
    with tempfile.NamedTemporaryFile("w", suffix=".json") as args_file:
        json.dump({"ANSIBLE_MODULE_ARGS": payload}, args_file)
        args_file.flush()
        # The modules import the collection's module_utils as Ansible ships them: from ansible_collections.
        env = dict(os.environ, PYTHONPATH=str(REPO / "playbooks" / "collections"), **(env or {}))
        proc = subprocess.run(
            [sys.executable, str(module), args_file.name], capture_output=True, text=True, check=False, timeout=120, env=env
        )
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError:
        if proc.returncode == -9:  # killed, as the test hook does
            return proc.returncode, {}
        pytest.fail(f"module printed no JSON (rc {proc.returncode}): {proc.stdout!r} {proc.stderr!r}")
