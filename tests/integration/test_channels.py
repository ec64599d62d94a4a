"""Every channel gVisor publishes, from the offline mirror laid out as each source lays out its files.

The bucket's release, nightly and master channels (<mirror>/<channel>/<version>/<arch>/, a .sha512 beside each file)
and GitHub's releases (<github>/download/release-<version>/gvisor-<arch>.tar.bz2 with SHA512SUMS, members under
gvisor/). Each install must put exactly the archive's files in place, runsc saying which build it is, and a second
run of a dated one must change nothing and ask nothing.
"""

from __future__ import annotations

import os

import pytest

from gvisor_node import ARCH, BIN_DIR, remove_node, start_node
from gvisor_testinfra import REPO, archive_files, mirror_dir

NODE = "channels-trixie"

# (variables, the archive in the mirror the install comes from, what its runsc says)
SOURCES = {
    "nightly-latest": ({"containerd_gvisor_channel": "nightly"}, f"nightly/2026-10-12/{ARCH}/gvisor.tar.bz2",
                       "runsc version release-20261012.0-nightly"),
    "nightly-day": ({"containerd_gvisor_channel": "nightly", "containerd_gvisor_version": "2026-10-12"},
                    f"nightly/2026-10-12/{ARCH}/gvisor.tar.bz2", "runsc version release-20261012.0-nightly"),
    "master": ({"containerd_gvisor_channel": "master"}, f"master/latest/{ARCH}/gvisor.tar.bz2",
               "runsc version release-20261019.0-master"),
    "github-latest": ({"containerd_gvisor_release_source": "github"},
                      f"github/download/release-20261005.0/gvisor-{ARCH}.tar.bz2", "runsc version release-20261005.0"),
    "github-dated": ({"containerd_gvisor_release_source": "github", "containerd_gvisor_version": "20261005"},
                     f"github/download/release-20261005.0/gvisor-{ARCH}.tar.bz2", "runsc version release-20261005.0"),
}


@pytest.fixture(scope="module")
def node(mirror, tmp_path_factory):
    node = start_node(NODE, "containerd-gvisor-node:trixie")
    node.vars.update({
        "containerd_gvisor_runtime": True, "containerd_gvisor_arch": ARCH, "containerd_gvisor_download_delay": 1,
        "containerd_gvisor_mirror_url": mirror.url, "containerd_gvisor_github_url": f"{mirror.url}/github",
        "containerd_gvisor_download_cache_dir": str(tmp_path_factory.mktemp("cache")),
    })
    yield node
    if not os.environ.get("CONTAINERD_GVISOR_KEEP_NODE"):
        remove_node(NODE)


@pytest.mark.parametrize("name", SOURCES)
def test_each_channel_and_source_installs_its_archive(node, mirror, name):
    variables, archive, said = SOURCES[name]
    play = node.play(**variables)
    assert play.ok, play
    assert node.bin_dir_files() == archive_files(mirror_dir() / archive)
    assert node.sh(f"{BIN_DIR}/runsc --version").splitlines()[0] == said
    assert node.release()["release"]["url"].startswith(mirror.url)
    if "latest" not in name and name != "master":
        seen = len(mirror.requests())
        again = node.play(**variables)
        assert again.ok and again.changed == 0, again
        assert mirror.requests()[seen:] == []  # a dated release the node holds needs no request


def test_a_github_release_is_checked_against_its_sha512sums(node, mirror):
    path = f"/github/download/release-20261005.0/gvisor-{ARCH}.tar.bz2"
    node.play(containerd_gvisor_version="20240729")  # away from the release below
    mirror.set_faults({path: {"kind": "corrupt"}})
    before = node.snapshot()
    play = node.play(containerd_gvisor_release_source="github", containerd_gvisor_version="20261005.0",
                     containerd_gvisor_download_cache_dir=str(REPO / ".cache" / "channels-empty-cache"))
    assert not play.ok
    assert f"gvisor-{ARCH}.tar.bz2 from {mirror.url}{path} does not match its checksum" in play.message
    assert f"({mirror.url}/github/download/release-20261005.0/SHA512SUMS)" in play.message
    assert node.snapshot() == before
