"""Tests of the containerd_gvisor_install module, run as Ansible runs it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile

import pytest

from conftest import MODULE, make_tar, run_module, sha512

RUNSC = b"#!/bin/sh\necho 'runsc version release-20240729.0'\n"
SHIM = b"#!/bin/sh\necho 'containerd-shim-runsc-v1 20240729.0'\n"
HELPERS = {"gvisor_sentry": b"sentry\n", "checkpointgofer": b"gofer\n", "runsc-metric-server": b"metrics\n"}
OLD_RUNSC = b"#!/bin/sh\necho 'runsc version release-20221219.0'\n"
OLD_SHIM = b"#!/bin/sh\necho 'containerd-shim-runsc-v1 20221219.0'\n"


def archive_members(prefix="", helpers=None, runsc=RUNSC):
    """Return the members of a gvisor.tar.bz2 as the release bucket ships it."""
    members = {f"{prefix}runsc": runsc, f"{prefix}containerd-shim-runsc-v1": SHIM, f"{prefix}gvisor-bin": None}
    members.update({f"{prefix}gvisor-bin/{name}": data for name, data in (helpers or HELPERS).items()})
    return members


class Node:
    """A scratch node: staging, bin and state directories under tmp_path."""

    def __init__(self, tmp_path):
        self.root = tmp_path
        self.bin_dir = tmp_path / "usr-local-bin"
        self.state_file = tmp_path / "var-lib" / "containerd-gvisor" / "release.json"

    def staging(self, version):
        """Return an empty staging directory for a release."""
        path = self.root / "staging" / version
        path.mkdir(parents=True, exist_ok=True)
        return path

    def archive_release(self, version="20240729.0", members=None, name="gvisor.tar.bz2"):
        """Stage an archive release and return its release option."""
        staging = self.staging(version)
        digest = make_tar(staging / name, members or archive_members())
        return self.release(version, "archive", {name: digest})

    def loose_release(self, version="20221219.0", runsc=OLD_RUNSC, shim=OLD_SHIM):
        """Stage a loose-files release and return its release option."""
        staging = self.staging(version)
        (staging / "runsc").write_bytes(runsc)
        (staging / "containerd-shim-runsc-v1").write_bytes(shim)
        return self.release(version, "loose", {"runsc": sha512(runsc), "containerd-shim-runsc-v1": sha512(shim)})

    def release(self, version, layout, artifacts):
        """Return a release option."""
        return {
            "version": version,
            "arch": "x86_64",
            "layout": layout,
            "url": f"https://example.invalid/release/{version}/x86_64",
            "artifacts": artifacts,
        }

    def run(self, release=None, check_mode=False, **extra):
        """Run the module for this node; return (rc, result)."""
        args = {"bin_dir": str(self.bin_dir), "state_file": str(self.state_file)}
        if release is not None:
            args["release"] = release
            args["staging_dir"] = str(self.staging(release["version"]))
        args.update(extra)
        return run_module(args, check_mode=check_mode)

    def install(self, release):
        """Install a release and require success."""
        rc, result = self.run(release)
        assert rc == 0, result
        return result

    def tree(self):
        """Return {relative path: (mode, bytes or None)} of everything in bin_dir."""
        found = {}
        for folder, dirs, files in os.walk(self.bin_dir):
            for name in dirs + files:
                path = os.path.join(folder, name)
                info = os.lstat(path)
                content = open(path, "rb").read() if stat.S_ISREG(info.st_mode) else None
                found[os.path.relpath(path, self.bin_dir)] = (stat.S_IMODE(info.st_mode), content)
        return found

    def state(self):
        """Return the recorded state."""
        return json.loads(self.state_file.read_text())


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path)


def expected_archive_tree(helpers=None):
    tree = {"runsc": (0o755, RUNSC), "containerd-shim-runsc-v1": (0o755, SHIM), "gvisor-bin": (0o755, None)}
    tree.update({f"gvisor-bin/{n}": (0o755, d) for n, d in (helpers or HELPERS).items()})
    return tree


# --- installing ----------------------------------------------------------------------


def test_archive_install(node):
    release = node.archive_release()
    result = node.install(release)

    assert result["changed"] is True
    assert result["previous"] is None
    assert node.tree() == expected_archive_tree()  # no temporary files are left behind
    files = {"runsc": sha512(RUNSC), "containerd-shim-runsc-v1": sha512(SHIM)}
    files.update({f"gvisor-bin/{n}": sha512(d) for n, d in HELPERS.items()})
    assert result["installed_files"] == files
    assert node.state() == {"release": release, "installed_files": files}
    assert stat.S_IMODE(node.state_file.stat().st_mode) == 0o644
    assert sorted(os.listdir(node.staging("20240729.0"))) == ["gvisor.tar.bz2"]  # extraction cleaned up


def test_archive_with_a_leading_directory(node):
    release = node.archive_release(members=archive_members(prefix="./gvisor-20240729.0/"))
    node.install(release)
    assert node.tree() == expected_archive_tree()


def test_second_run_changes_nothing(node):
    release = node.archive_release()
    node.install(release)
    before = node.tree()
    rc, result = node.run(release)
    assert (rc, result["changed"], result["needed"]) == (0, False, False)
    assert "is installed in" in result["reason"]
    assert result["installed_files"] == node.state()["installed_files"]
    assert node.tree() == before


def test_a_different_mirror_url_is_not_a_new_release(node):
    release = node.archive_release()
    node.install(release)
    rc, result = node.run(dict(release, url="https://mirror.example.invalid/gvisor"))
    assert (rc, result["changed"]) == (0, False)


def test_loose_install(node):
    release = node.loose_release()
    result = node.install(release)
    assert result["changed"] is True
    assert node.tree() == {"runsc": (0o755, OLD_RUNSC), "containerd-shim-runsc-v1": (0o755, OLD_SHIM)}
    assert set(node.state()["installed_files"]) == {"runsc", "containerd-shim-runsc-v1"}


def test_downgrade_from_archive_to_loose_removes_stale_helpers(node):
    new = node.archive_release()
    node.install(new)
    result = node.install(node.loose_release())
    assert result["previous"] == new
    assert node.tree() == {"runsc": (0o755, OLD_RUNSC), "containerd-shim-runsc-v1": (0o755, OLD_SHIM)}


def test_upgrade_replaces_the_whole_helpers_directory(node):
    node.install(node.archive_release("20240101.0", members=archive_members(helpers={"old_helper": b"old\n"})))
    node.install(node.archive_release())
    assert node.tree() == expected_archive_tree()


def test_changed_checksums_of_the_same_version_reinstall(node):
    node.install(node.archive_release())
    release = node.archive_release(members=archive_members(runsc=b"#!/bin/sh\necho rebuilt\n"))
    rc, result = node.run(release, check_only=True)
    assert result["needed"] is True
    assert result["reason"] == f"{node.state_file} records other sha512 digests for gVisor 20240729.0 (x86_64, archive)"
    node.install(release)
    assert (node.bin_dir / "runsc").read_bytes() == b"#!/bin/sh\necho rebuilt\n"


def test_a_modified_installed_file_is_reinstalled(node):
    release = node.archive_release()
    node.install(release)
    (node.bin_dir / "gvisor-bin" / "gvisor_sentry").write_bytes(b"tampered\n")
    rc, result = node.run(release, check_only=True)
    assert result["reason"] == f"{node.bin_dir}/gvisor-bin/gvisor_sentry does not match its recorded sha512"
    assert node.install(release)["changed"] is True
    assert node.tree() == expected_archive_tree()


def test_a_wrong_mode_is_reinstalled(node):
    release = node.loose_release()
    node.install(release)
    os.chmod(node.bin_dir / "runsc", 0o700)
    rc, result = node.run(release, check_only=True)
    assert result["reason"] == f"{node.bin_dir}/runsc has mode 0700, not 0755"
    node.install(release)
    assert stat.S_IMODE((node.bin_dir / "runsc").stat().st_mode) == 0o755


# --- check mode and check_only -------------------------------------------------------------


def test_check_mode_writes_nothing(node):
    release = node.archive_release()
    rc, result = node.run(release, check_mode=True)
    assert (rc, result["changed"], result["needed"]) == (0, True, True)
    assert not node.bin_dir.exists()
    assert not node.state_file.parent.exists()


def test_check_only_reports_without_installing(node):
    release = node.archive_release()
    rc, result = node.run(release, check_only=True)
    assert rc == 0
    assert result == {
        "changed": False,
        "needed": True,
        "reason": f"no gVisor release is recorded in {node.state_file}",
        "installed": {},
        "installed_files": {},
        "previous": None,
        "invocation": result["invocation"],
    }
    assert not node.bin_dir.exists()

    node.install(release)
    rc, result = node.run(node.loose_release(), check_only=True)
    assert result["needed"] is True
    assert result["installed"] == node.state()
    assert result["reason"] == (
        f"{node.state_file} records gVisor 20240729.0 (x86_64, archive), not gVisor 20221219.0 (x86_64, loose)"
    )


def test_an_unreadable_state_file_means_install(node):
    node.state_file.parent.mkdir(parents=True)
    node.state_file.write_text("{not json")
    rc, result = node.run(node.loose_release(), check_only=True)
    assert result["needed"] is True
    assert result["reason"].startswith(f"{node.state_file} cannot be read (")


# --- refusals -------------------------------------------------------------------------------


def test_tampered_staged_file_fails_and_leaves_bin_dir_unchanged(node):
    node.install(node.loose_release())
    before = node.tree()
    release = node.archive_release()
    archive = node.staging("20240729.0") / "gvisor.tar.bz2"
    archive.write_bytes(archive.read_bytes() + b"tampered")
    rc, result = node.run(release)
    assert rc != 0 and result["failed"] is True
    actual = sha512(archive.read_bytes())
    assert result["msg"] == (
        f"{archive} has sha512 {actual}, but gVisor 20240729.0 (x86_64, archive) expects "
        f"{release['artifacts']['gvisor.tar.bz2']}; nothing was installed"
    )
    assert node.tree() == before
    assert node.state()["release"]["version"] == "20221219.0"


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "gvisor-bin/../../evil"])
def test_path_traversal_member_is_refused(node, name):
    members = archive_members()
    members[name] = b"evil\n"
    rc, result = node.run(node.archive_release(members=members))
    assert rc != 0
    assert "unsafe member" in result["msg"] and name in result["msg"]
    assert not node.bin_dir.exists()
    assert not (node.root / "evil").exists() and not (node.root / "staging" / "evil").exists()


def test_a_symlinked_helper_is_refused(node):
    members = archive_members()
    members["gvisor-bin/gvisor_sentry"] = ("symlink", "/etc/passwd")
    rc, result = node.run(node.archive_release(members=members))
    assert rc != 0
    assert result["msg"].endswith("member 'gvisor-bin/gvisor_sentry' is a link or special file, not a regular file")
    assert not node.bin_dir.exists()


def test_an_archive_without_the_shim_is_refused(node):
    members = archive_members()
    del members["containerd-shim-runsc-v1"]
    rc, result = node.run(node.archive_release(members=members))
    assert rc != 0
    assert result["msg"].endswith("gvisor.tar.bz2 has no containerd-shim-runsc-v1 beside runsc")


def test_an_archive_without_runsc_is_refused(node):
    rc, result = node.run(node.archive_release(members={"a/b/runsc": RUNSC, "containerd-shim-runsc-v1": SHIM}))
    assert rc != 0
    assert result["msg"].endswith("has no runsc at its top level or under one leading directory")


def test_a_zstd_archive_is_explained(node):
    staging = node.staging("20240729.0")
    data = b"\x28\xb5\x2f\xfd" + b"\0" * 64
    (staging / "gvisor.tar.zstd").write_bytes(data)
    rc, result = node.run(node.release("20240729.0", "archive", {"gvisor.tar.zstd": sha512(data)}))
    assert rc != 0
    assert "is zstd-compressed" in result["msg"] and "only .tar.bz2 archives are supported" in result["msg"]
    assert not node.bin_dir.exists()


def test_a_missing_staged_artifact_is_named(node):
    release = node.loose_release()
    os.unlink(node.staging(release["version"]) / "containerd-shim-runsc-v1")
    rc, result = node.run(release)
    assert rc != 0
    assert result["msg"] == (
        f"{node.staging(release['version'])}/containerd-shim-runsc-v1 is missing, "
        "so gVisor 20221219.0 (x86_64, loose) cannot be installed"
    )


def test_staging_dir_is_required_to_install(node):
    release = node.loose_release()
    rc, result = run_module({"bin_dir": str(node.bin_dir), "state_file": str(node.state_file), "release": release})
    assert rc != 0
    assert result["msg"].startswith("staging_dir is required to install gVisor 20221219.0")


@pytest.mark.parametrize(
    ("artifacts", "message"),
    [
        ({"runsc": "00"}, "release.artifacts.runsc must be a 128-character hex sha512 digest, got '00'"),
        ({"runsc": "a" * 128}, "release.artifacts must name exactly runsc and containerd-shim-runsc-v1"),
        ({"../runsc": "a" * 128, "containerd-shim-runsc-v1": "a" * 128}, "must be a plain file name"),
    ],
)
def test_bad_release_options_are_refused(node, artifacts, message):
    rc, result = node.run(node.release("20221219.0", "loose", artifacts))
    assert rc != 0
    assert message in result["msg"]


# --- absent ---------------------------------------------------------------------------------


def test_absent_removes_everything_recorded(node):
    node.install(node.archive_release())
    rc, result = node.run(state="absent", check_mode=True)
    assert (rc, result["changed"]) == (0, True)
    assert node.tree() == expected_archive_tree()

    rc, result = node.run(state="absent")
    assert (rc, result["changed"]) == (0, True)
    assert sorted(result["removed"]) == sorted(
        [str(node.bin_dir / n) for n in ("runsc", "containerd-shim-runsc-v1", "gvisor-bin")] + [str(node.state_file)]
    )
    assert node.tree() == {}
    assert not node.state_file.exists()
    assert not node.state_file.parent.exists()  # the lock file went too, and the emptied directory

    rc, result = node.run(state="absent")
    assert (rc, result["changed"], result["removed"]) == (0, False, [])


def test_absent_keeps_a_state_directory_that_holds_other_files(node):
    node.install(node.archive_release())
    (node.state_file.parent / "notes.txt").write_text("someone else's\n")
    rc, result = node.run(state="absent")
    assert (rc, result["changed"]) == (0, True)
    assert sorted(os.listdir(node.state_file.parent)) == ["notes.txt"]


def test_absent_without_any_state_still_removes_the_binaries(node):
    node.bin_dir.mkdir()
    (node.bin_dir / "runsc").write_bytes(RUNSC)
    (node.bin_dir / "other-tool").write_bytes(b"keep me\n")
    os.chmod(node.bin_dir / "other-tool", 0o755)
    rc, result = node.run(state="absent")
    assert (rc, result["changed"], result["removed"]) == (0, True, [str(node.bin_dir / "runsc")])
    assert node.tree() == {"other-tool": (0o755, b"keep me\n")}


# --- concurrency --------------------------------------------------------------------------------


def test_concurrent_runs_do_not_corrupt_the_install(node):
    release = node.archive_release()
    args = {"bin_dir": str(node.bin_dir), "state_file": str(node.state_file), "release": release,
            "staging_dir": str(node.staging(release["version"]))}
    runs = []
    for _run in range(4):
        handle = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, dir=node.root)
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
        handle.close()
        runs.append(subprocess.Popen([sys.executable, str(MODULE), handle.name],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [json.loads(proc.communicate(timeout=120)[0]) for proc in runs]
    assert all(not r.get("failed") for r in results), results
    assert sum(r["changed"] for r in results) == 1  # the others waited for the lock, then found it done
    assert node.tree() == expected_archive_tree()
