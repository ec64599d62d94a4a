"""playbooks/mirror.yml fills a directory that a node can install from, verified file by file.

The test mirror stands in for the official bucket as the source.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from gvisor_testinfra import REPO

ARCH = platform.machine()
PLAYBOOK = REPO / "playbooks" / "mirror.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def fill(mirror, dest, version):
    variables = {"containerd_gvisor_mirror_dir": str(dest), "containerd_gvisor_version": version,
                 "containerd_gvisor_mirror_url": mirror.url, "containerd_gvisor_mirror_arches": [ARCH],
                 "containerd_gvisor_download_delay": 0, "containerd_gvisor_download_retries": 1}
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run([str(ANSIBLE_PLAYBOOK), "-e", json.dumps(variables), str(PLAYBOOK)],
                          capture_output=True, text=True, env=env, check=False)


def files_under(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_a_filled_mirror_holds_the_sources_bytes_and_checksums(mirror, tmp_path):
    for version in ("20221219", "latest"):
        result = fill(mirror, tmp_path, version)
        assert result.returncode == 0, result.stdout[-3000:]
    filled = files_under(tmp_path / "release")
    assert sorted(filled) == sorted([
        f"20221219/{ARCH}/runsc", f"20221219/{ARCH}/runsc.sha512",
        f"20221219/{ARCH}/containerd-shim-runsc-v1", f"20221219/{ARCH}/containerd-shim-runsc-v1.sha512",
        f"latest/{ARCH}/gvisor.tar.bz2", f"latest/{ARCH}/gvisor.tar.bz2.sha512",
    ])
    source = mirror.root / "release"
    for name, data in filled.items():
        if not name.endswith(".sha512"):
            assert data == (source / name).read_bytes(), name
            digest, file_name = filled[name + ".sha512"].decode().split()
            assert (digest, file_name) == (hashlib.sha512(data).hexdigest(), Path(name).name)
            assert oct((tmp_path / "release" / name).stat().st_mode & 0o777) == "0o644"


def test_a_second_fill_fetches_only_the_checksums(mirror, tmp_path):
    assert fill(mirror, tmp_path, "latest").returncode == 0
    seen = len(mirror.requests())
    assert fill(mirror, tmp_path, "latest").returncode == 0
    assert all(r["path"].endswith(".sha512") for r in mirror.requests()[seen:])


def test_a_tampered_file_is_not_kept(mirror, tmp_path):
    mirror.set_faults({f"/release/latest/{ARCH}/gvisor.tar.bz2": {"kind": "corrupt"}})
    result = fill(mirror, tmp_path, "latest")
    assert result.returncode != 0
    assert "does not match its checksum" in result.stdout
    assert files_under(tmp_path) == {}
