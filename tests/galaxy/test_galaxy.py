"""The collection as Galaxy and execution environments take it: the built tarball through Galaxy's own importer
(galaxy-importer, offline: its ansible-lint run, no ansible-test containers), and ansible-builder making a build
context from docs/execution-environment.yml with the tarball. Both tools come from tests/harness/galaxy-tools."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GALAXY = yaml.safe_load((REPO / "galaxy.yml").read_text())
TARBALL = f"{GALAXY['namespace']}-{GALAXY['name']}-{GALAXY['version']}.tar.gz"


@pytest.fixture(scope="module")
def tools():
    return Path(subprocess.run([str(REPO / "tests" / "harness" / "galaxy-tools")], capture_output=True, text=True,
                               check=True).stdout.strip())


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    galaxy = Path(sys.executable).with_name("ansible-galaxy")
    subprocess.run([str(galaxy), "collection", "build", "--output-path", str(out), str(REPO)], check=True, capture_output=True)
    return out / TARBALL


def test_galaxys_importer_accepts_the_tarball(tools, tarball, tmp_path):
    config = tmp_path / "importer.cfg"
    config.write_text("[galaxy-importer]\nRUN_ANSIBLE_TEST = False\nRUN_ANSIBLE_LINT = True\n")
    proc = subprocess.run([str(tools / "bin" / "python"), "-m", "galaxy_importer.main", str(tarball)], cwd=tmp_path, check=False,
                          env={"PATH": f"{tools / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
                               "GALAXY_IMPORTER_CONFIG": str(config)}, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Importer processing completed successfully" in output
    assert [line for line in output.splitlines() if line.startswith(("ERROR", "WARNING"))] == []
    result = json.loads((tmp_path / "importer_result.json").read_text())
    roles = {item["name"]: item["description"] for item in result["contents"] if item["content_type"] == "role"}
    assert set(roles) == {"containerd", "containerd_gvisor"} and all(roles.values())
    readmes = {item["content_name"]: item.get("readme_html") for item in result["docs_blob"]["contents"]
               if item["content_type"] == "role"}
    assert readmes.keys() == roles.keys() and all(readmes.values())
    assert result["metadata"]["license"] == ["Apache-2.0"]


def test_the_tarball_leaves_the_benchmark_and_the_tests_out(tarball):
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert not [name for name in names if name.startswith(("docs/bench", "bench", "tests", "molecule"))]
    assert "docs/execution-environment.yml" in names and "roles/containerd/README.md" in names
    assert tarball.stat().st_size < 200_000


def test_ansible_builder_makes_a_context_that_installs_the_tarball(tools, tarball, tmp_path):
    shutil.copy(REPO / "docs" / "execution-environment.yml", tmp_path / "execution-environment.yml")
    shutil.copy(tarball, tmp_path / TARBALL)
    subprocess.run([str(tools / "bin" / "ansible-builder"), "create", "-f", "execution-environment.yml", "-c", "context",
                    "--output-filename", "Containerfile"],
                   cwd=tmp_path, check=True, capture_output=True, text=True, timeout=300)
    build = tmp_path / "context" / "_build"
    assert (build / "collections" / TARBALL).read_bytes() == tarball.read_bytes()
    requirements = yaml.safe_load((build / "requirements.yml").read_text())
    assert {"name": f"/build/collections/{TARBALL}", "type": "file"} in requirements["collections"]
    containerfile = (tmp_path / "context" / "Containerfile").read_text()
    assert "COPY _build/collections/ /build/collections/" in containerfile
    assert containerfile.index("COPY _build/collections/") < containerfile.index("ansible-galaxy collection install")
    assert "kubernetes" in (build / "requirements.txt").read_text()
