"""The release module: one transaction that installs a release, writes configuration files and proves a sandbox."""

from __future__ import annotations

import json
import stat

import pytest

from unit_support import make_tar, run_module, sha512

# A runsc for the tests: answers --version with $RELEASE, and `do` with gVisor's banner unless $FAIL is set.
RUNSC = """#!/bin/sh
case "$*" in
  *--version*) echo "runsc version @RELEASE@"; echo "spec: 1.1.0-rc.1" ;;
  *--fail*) echo "invalid value \\"bogus\\" for flag -overlay2" >&2; exit 2 ;;
  *--hang*) sleep 30 ;;
  *) echo "[    0.000000] Starting gVisor..."; echo "[    0.500000] Ready!" ;;
esac
"""
SHIM = b"#!/bin/sh\necho shim\n"
RULE = {"gvisor_from": 20260520, "containerd_below": "1.7.0", "why": "the shim answers with JSON",
        "fix": "Upgrade containerd to 1.7 or later, or pin a gVisor release from before 20260520.",
        "source": "https://github.com/cri-o/cri-o/pull/9974"}


def runsc(release="release-20240729.0"):
    return RUNSC.replace("@RELEASE@", release).encode()


@pytest.fixture
def node(tmp_path):
    """A bin dir, a state dir and a staging dir for the module to work in."""
    dirs = {name: tmp_path / name for name in ("bin", "state", "staging", "etc")}
    for path in dirs.values():
        path.mkdir()
    return dirs


def stage_loose(node, release="release-20240729.0"):
    files = {"runsc": runsc(release), "containerd-shim-runsc-v1": SHIM}
    for name, data in files.items():
        (node["staging"] / name).write_bytes(data)
    return {"version": "20240729", "arch": "x86_64", "layout": "loose", "url": "http://mirror/release/20240729/x86_64",
            "artifacts": {name: sha512(data) for name, data in files.items()}}


def stage_archive(node, members=None, release="release-20261005.0"):
    members = members or {"./": None, "./runsc": runsc(release), "./containerd-shim-runsc-v1": SHIM, "./gvisor-bin/": None,
                          "./gvisor-bin/gvisor_sentry": b"sentry", "./gvisor-bin/checkpointgofer": b"gofer"}
    digest = make_tar(node["staging"] / "gvisor.tar.bz2", members)
    return {"version": "20261005", "arch": "x86_64", "layout": "archive", "url": "http://mirror/release/20261005/x86_64",
            "artifacts": {"gvisor.tar.bz2": digest}}


def present(node, release=None, **args):
    args = {"bin_dir": str(node["bin"]), "state_dir": str(node["state"]), **args}
    if release:
        args.update(release=release, staging_dir=str(node["staging"]))
    return run_module(args)


def snapshot(*dirs):
    """Every file under dirs by content; equal snapshots mean nothing changed."""
    return {str(path): path.read_bytes() for top in dirs for path in sorted(top.rglob("*")) if path.is_file()}


def test_installs_a_loose_release_runsc_last_and_records_it(node):
    release = stage_loose(node)
    rc, result = present(node, release)

    assert rc == 0, result
    for name in ("runsc", "containerd-shim-runsc-v1"):
        path = node["bin"] / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
        assert sha512(path.read_bytes()) == release["artifacts"][name]
    record = json.loads((node["state"] / "release.json").read_text())
    assert record["release"] == release and record["runsc_version"] == "release-20240729.0"
    assert result["runsc_version"] == "release-20240729.0"
    assert not node["staging"].exists()  # the download is not left behind
    assert (node["state"] / "previous").is_dir()  # kept until the run commits


def test_archive_with_real_member_names_installs_gvisor_bin_and_a_loose_release_removes_it(node):
    rc, result = present(node, stage_archive(node))
    assert rc == 0, result
    assert sorted(p.name for p in (node["bin"] / "gvisor-bin").iterdir()) == ["checkpointgofer", "gvisor_sentry"]

    node["staging"].mkdir()
    rc, result = present(node, stage_loose(node))
    assert rc == 0, result
    assert not (node["bin"] / "gvisor-bin").exists()
    assert result["previous"]["version"] == "20261005"


@pytest.mark.parametrize("members, message", [
    ({"./runsc": runsc(), "../etc/passwd": b"x", "./containerd-shim-runsc-v1": SHIM}, "unsafe member '../etc/passwd'"),
    ({"./runsc": runsc()}, "lacks containerd-shim-runsc-v1 at its top level"),
    ({"./runsc": ("symlink", "/bin/sh"), "./containerd-shim-runsc-v1": SHIM}, "'./runsc' is not a regular file"),
])
def test_a_bad_archive_is_refused_and_nothing_changes(node, members, message):
    before = snapshot(node["bin"], node["state"])
    rc, result = present(node, stage_archive(node, members))
    assert rc != 0 and message in result["msg"]
    assert snapshot(node["bin"], node["state"]) == before


def test_a_staged_file_that_does_not_match_its_checksum_is_refused(node):
    release = stage_loose(node)
    (node["staging"] / "runsc").write_bytes(b"tampered")
    rc, result = present(node, release)
    assert rc != 0 and "does not match its sha512" in result["msg"]
    assert not (node["bin"] / "runsc").exists()


def test_a_release_containerd_cannot_run_is_refused_before_anything_changes(node):
    rc, result = present(node, stage_loose(node))
    assert rc == 0, result
    present(node, state="committed")
    before = snapshot(node["bin"], node["state"])
    node["staging"].mkdir()
    rc, result = present(node, stage_archive(node, release="release-20261005.0"),
                         compatibility={"containerd": "1.6.20", "rules": [RULE]})

    assert rc != 0
    assert result["msg"] == ("gVisor release-20261005.0 (what the release's runsc --version says) does not work with "
                             "containerd 1.6.20 on this node: the shim answers with JSON "
                             "(https://github.com/cri-o/cri-o/pull/9974). Upgrade containerd to 1.7 or later, or pin a "
                             "gVisor release from before 20260520.")
    assert snapshot(node["bin"], node["state"]) == before


@pytest.mark.parametrize("containerd, release", [("1.7.24", "release-20261005.0"), ("1.6.20", "release-20260513.0"),
                                                 ("2.1.9", "0.0~20261005.0")])
def test_pairs_the_rules_do_not_name_are_installed(node, containerd, release):
    rc, result = present(node, stage_archive(node, release=release), compatibility={"containerd": containerd, "rules": [RULE]})
    assert rc == 0, result


def test_the_switch_installs_a_refused_pair_with_a_warning(node):
    rc, result = present(node, stage_archive(node), compatibility={"containerd": "1.6.20", "rules": [RULE], "ignore": True})
    assert rc == 0, result
    # ansible-core 2.19 hands warnings over as structured events.
    assert any("installed anyway" in json.dumps(warning) for warning in result.get("warnings", [])), result


def test_writes_files_and_validates_them_before_replacing_one(node):
    config = node["etc"] / "config.toml"
    config.write_text("old\n")
    files = [{"path": str(node["etc"] / "runsc.toml"), "content": "[runsc_config]\n", "mode": "0644"},
             {"path": str(config), "content": "new\n", "mode": "0600", "validate": "grep -q new %s", "backup": True}]
    rc, result = present(node, files=files)
    assert rc == 0, result
    assert (node["etc"] / "runsc.toml").read_text() == "[runsc_config]\n"
    assert config.read_text() == "new\n" and stat.S_IMODE(config.stat().st_mode) == 0o600
    assert [p.read_text() for p in node["etc"].glob("config.toml.*~")] == ["old\n"]

    before = snapshot(node["etc"])
    rc, result = present(node, files=[{"path": str(config), "content": "bad\n", "validate": "grep -q new %s"}])
    assert rc != 0 and f"grep -q new {config} refuses the new {config}" in result["msg"]
    assert snapshot(node["etc"]) == before  # the candidate went, the file stayed


def test_a_sandbox_that_does_not_start_puts_release_and_files_back(node):
    assert present(node, stage_loose(node, "release-20240729.0"))[0] == 0
    present(node, state="committed")
    config = node["etc"] / "config.toml"
    config.write_text("old\n")
    before = snapshot(node["bin"], node["state"], node["etc"])
    node["staging"].mkdir()
    files = [{"path": str(config), "content": "new\n"}, {"path": str(node["etc"] / "runsc.toml"), "content": "x\n"}]
    argv = [str(node["bin"] / "runsc"), "--overlay2=bogus", "--fail", "do", "dmesg"]
    rc, result = present(node, stage_archive(node), files=files, smoke=[{"name": "gvisor", "argv": argv}])

    assert rc != 0
    assert result["msg"].startswith("a gVisor sandbox did not start with runtime handler gvisor (")
    assert 'invalid value "bogus" for flag -overlay2' in result["msg"]  # runsc's own words
    assert snapshot(node["bin"], node["state"], node["etc"]) == before  # release, record and files as they were
    assert not (node["state"] / "previous").exists()


def test_a_sandbox_that_hangs_is_killed_after_the_timeout(node):
    argv = [str(node["staging"] / "runsc"), "--hang"]
    (node["staging"] / "runsc").write_bytes(runsc())
    (node["staging"] / "runsc").chmod(0o755)
    rc, result = present(node, files=[{"path": str(node["etc"] / "x"), "content": "x"}],
                         smoke=[{"name": "gvisor-kvm", "argv": argv}], timeout=1)
    assert rc != 0 and "runtime handler gvisor-kvm" in result["msg"] and "timed out after 1 s" in result["msg"]
    assert not (node["etc"] / "x").exists()


def test_previous_puts_back_and_committed_drops_what_was_kept(node):
    assert present(node, stage_loose(node))[0] == 0
    present(node, state="committed")
    first = snapshot(node["bin"], node["state"])
    node["staging"].mkdir()
    assert present(node, stage_archive(node))[0] == 0

    rc, result = present(node, state="previous")
    assert rc == 0 and result["changed"]
    assert snapshot(node["bin"], node["state"]) == first
    rc, result = present(node, state="committed")
    assert rc == 0 and not result["changed"]  # nothing left to drop


def test_absent_removes_binaries_files_and_the_state_dir(node):
    assert present(node, stage_archive(node))[0] == 0
    extra = node["etc"] / "runsc.toml"
    extra.write_text("x")
    rc, result = present(node, state="absent", remove=[str(extra)])
    assert rc == 0 and result["changed"]
    assert list(node["bin"].iterdir()) == [] and not node["state"].exists() and not extra.exists()
    rc, result = present(node, state="absent", remove=[str(extra)])
    assert rc == 0 and not result["changed"]


def test_check_mode_changes_nothing(node):
    release = stage_loose(node)
    before = snapshot(node["bin"], node["state"], node["staging"])
    rc, result = run_module({"bin_dir": str(node["bin"]), "state_dir": str(node["state"]), "release": release,
                             "staging_dir": str(node["staging"])}, check_mode=True)
    assert rc == 0 and result["changed"]
    assert snapshot(node["bin"], node["state"], node["staging"]) == before
