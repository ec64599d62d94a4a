"""The mirror tests/mirror/build made matches gVisor's release bucket release by release.

Usage: python -m pytest tests/mirror -q   (skipped until tests/mirror/build has run; the mirror
read is $CONTAINERD_GVISOR_MIRROR_DIR, else .cache/mirror)
"""

from __future__ import annotations

import bz2
import hashlib
import platform
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests/ helpers

from gvisor_testinfra import (  # noqa: E402
    SHIM,
    STAND_IN_MARK,
    expected_files,
    release_name,
    runsc_version_line,
    uses_archive,
)

ARCH = platform.machine()
LOOSE = ["runsc", SHIM]
BZ2, ZSTD = "gvisor.tar.bz2", "gvisor.tar.zstd"
HELPERS = ["checkpointgofer", "gvisor-sentry-prewarmer", "gvisor_sentry", "runsc-fd-parking", "runsc-metric-server"]
# What the bucket serves: loose files up to 20260714, loose files and the .bz2 archive from
# 20260721 to 20260817, the archive alone from 20260824, with a .zstd beside it from 20260907.
RELEASES = {
    "20221219.0": LOOSE,
    "20240729.0": LOOSE,
    "20260601.0": LOOSE,
    "20260728.0": LOOSE + [BZ2],
    "20260831.0": [BZ2],
    "20261005.0": [BZ2, ZSTD],
}
LATEST = "20261005.0"
DEBIAN_RUNSC = {"20221219.0", "20240729.0"}  # the real runsc from Debian bookworm and trixie
MEMBERS = ["./", "./containerd-shim-runsc-v1", "./gvisor-bin/"] + [f"./gvisor-bin/{h}" for h in HELPERS] + ["./runsc"]


def release(root, name):
    return root / "release" / name / ARCH


def archive_members(path):
    """{name: (TarInfo, bytes or None)}; names as in the archive, directories with their trailing
    slash (Python's tarfile drops it, so they are read from the raw headers)."""
    with tarfile.open(path, "r:bz2") as tar:
        members = tar.getmembers()
        data = [tar.extractfile(member).read() if member.isfile() else None for member in members]
    with open(path, "rb") as handle:
        raw = bz2.decompress(handle.read())
    # The name field of each member's header (short names: no GNU long-name entries here).
    names = [raw[member.offset:member.offset + 100].split(b"\0", 1)[0].decode() for member in members]
    return {name: (member, body) for name, member, body in zip(names, members, data)}


def test_the_release_folder_holds_the_releases_their_aliases_and_latest(built_mirror):
    entries = {path.name: path for path in (built_mirror / "release").iterdir()}
    aliases = {name.split(".")[0]: name for name in RELEASES}
    assert sorted(entries) == sorted([*RELEASES, *aliases, "latest"])
    for name in RELEASES:
        assert entries[name].is_dir() and not entries[name].is_symlink()
    for alias, name in aliases.items():
        assert entries[alias].is_symlink() and entries[alias].readlink().name == name
    assert entries["latest"].readlink().name == LATEST


@pytest.mark.parametrize("name", RELEASES)
def test_each_release_serves_the_buckets_files_with_checksums(built_mirror, name):
    folder = release(built_mirror, name)
    files = RELEASES[name]
    assert sorted(path.name for path in folder.iterdir()) == sorted(files + [f"{f}.sha512" for f in files])
    for file in files:
        digest = hashlib.sha512((folder / file).read_bytes()).hexdigest()
        assert (folder / f"{file}.sha512").read_text() == f"{digest}  {file}\n"


@pytest.mark.parametrize("name", [name for name, files in RELEASES.items() if BZ2 in files])
def test_archives_are_named_and_owned_as_real_releases(built_mirror, name):
    members = archive_members(release(built_mirror, name) / BZ2)
    assert sorted(members) == sorted(MEMBERS)
    for member_name, (member, _data) in members.items():
        assert member.isdir() == member_name.endswith("/"), member_name
        assert member.isdir() or member.isreg(), member_name
        assert (member.uid, member.gid, member.mode) == (0, 0, 0o755), member_name
    for helper in HELPERS:
        data = members[f"./gvisor-bin/{helper}"][1]
        assert STAND_IN_MARK in data and f"`{helper}` of release {name}".encode() in data


def test_the_zstd_archive_holds_the_same_tar_as_the_bz2(built_mirror):
    if not shutil.which("zstd"):
        pytest.skip("no zstd binary")
    folder = release(built_mirror, LATEST)
    tar_from_zstd = subprocess.run(["zstd", "-dc", str(folder / ZSTD)], capture_output=True, check=True).stdout
    tar_from_bz2 = subprocess.run(["bzip2", "-dc", str(folder / BZ2)], capture_output=True, check=True).stdout
    assert tar_from_zstd == tar_from_bz2


def test_a_release_with_both_layouts_has_the_same_bytes_in_both(built_mirror):
    name = "20260728.0"
    members = archive_members(release(built_mirror, name) / BZ2)
    for file in LOOSE:
        assert (release(built_mirror, name) / file).read_bytes() == members[f"./{file}"][1]


@pytest.mark.parametrize("name", RELEASES)
def test_runsc_is_debians_real_one_or_a_marked_stand_in(built_mirror, name):
    expected_line = f"runsc version 0.0~{name}" if name in DEBIAN_RUNSC else f"runsc version release-{name}"
    assert runsc_version_line(name, ARCH) == expected_line
    if name in DEBIAN_RUNSC:
        assert (release(built_mirror, name) / "runsc").read_bytes()[:4] == b"\x7fELF"


@pytest.mark.parametrize("name", RELEASES)
def test_stand_ins_differ_between_releases_and_say_what_they_are(built_mirror, name):
    files = expected_files(name, ARCH)
    others = {other: expected_files(other, ARCH) for other in RELEASES if other != name}
    for path, digest in files.items():
        if path == "runsc" and name in DEBIAN_RUNSC:
            continue
        assert all(other.get(path) != digest for other in others.values()), f"{path} of {name} is not unique"


def test_the_testinfra_helpers_read_the_layouts(built_mirror):
    for name, files in RELEASES.items():
        assert uses_archive(name, ARCH) == (BZ2 in files)
        assert uses_archive(name.split(".", maxsplit=1)[0], ARCH) == (BZ2 in files)
        wanted = sorted(LOOSE + [f"gvisor-bin/{h}" for h in HELPERS]) if BZ2 in files else sorted(LOOSE)
        assert sorted(expected_files(name, ARCH)) == wanted
    assert release_name("latest", ARCH) == LATEST
    assert expected_files("latest", ARCH) == expected_files(LATEST, ARCH)
