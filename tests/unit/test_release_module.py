"""The release module: one transaction that installs a release, writes files, proves them, or puts everything back."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from unit_support import collection_module, make_tar, run_module, sha512

# A runsc for the tests: answers --version with @RELEASE@, and `do` with gVisor's banner unless told otherwise.
RUNSC = """#!/bin/sh
case "$*" in
  *--version*) echo "runsc version @RELEASE@"; echo "spec: 1.1.0-rc.1" ;;
  *--fail*) echo "invalid value \\"bogus\\" for flag -overlay2" >&2; exit 2 ;;
  *--hang*) sleep 30 ;;
  *metric-server*) echo "this build does not support the metric-server subcommand" >&2; exit 128 ;;
  *) echo "[    0.000000] Starting gVisor..."; echo "[    0.500000] Ready!" ;;
esac
"""
SHIM = b"#!/bin/sh\necho shim\n"
# A containerd for `containerd --config FILE config dump`: prints the runtime tables of the file it is given.
CONTAINERD = """#!/bin/sh
[ "$3 $4" = "config dump" ] || exit 1
cat "$2"
"""
STEPS = ["kept", "installed", "written", "smoked", "proven"]


def runsc(release="release-20240729.0"):
    return RUNSC.replace("@RELEASE@", release).encode()


@pytest.fixture
def node(tmp_path):
    """A bin dir, a state dir, downloads and an etc dir for the module to work in."""
    dirs = {name: tmp_path / name for name in ("bin", "state", "downloads", "etc", "path")}
    for path in dirs.values():
        path.mkdir()
    containerd = dirs["path"] / "containerd"
    containerd.write_text(CONTAINERD)
    containerd.chmod(0o755)
    return dirs


def download_loose(node, release="release-20240729.0"):
    files = {"runsc": runsc(release), "containerd-shim-runsc-v1": SHIM}
    for name, data in files.items():
        (node["downloads"] / name).write_bytes(data)
    return {"version": "20240729", "arch": "x86_64", "layout": "loose", "url": "http://mirror/release/20240729/x86_64",
            "artifacts": {name: sha512(data) for name, data in files.items()}}


def download_archive(node, members=None, release="release-20261005.0"):
    members = members or {"./": None, "./runsc": runsc(release), "./containerd-shim-runsc-v1": SHIM, "./gvisor-bin/": None,
                          "./gvisor-bin/gvisor_sentry": b"sentry", "./gvisor-bin/checkpointgofer": b"gofer"}
    digest = make_tar(node["downloads"] / "gvisor.tar.bz2", members)
    return {"version": "20261005", "arch": "x86_64", "layout": "archive", "url": "http://mirror/release/20261005/x86_64",
            "artifacts": {"gvisor.tar.bz2": digest}}


def call(node, release=None, hook=None, check_mode=False, **args):
    args = {"bin_dir": str(node["bin"]), "state_dir": str(node["state"]),
            "staging_dir": str(node["state"] / "staging" / "run-test"), **args}
    if release:
        args.update(release=release, sources={name: str(node["downloads"] / name) for name in release["artifacts"]})
    env = {"PATH": f"{node['path']}:{os.environ['PATH']}"}
    if hook:
        (node["state"].parent / "hook").write_text(hook)
        env["CONTAINERD_GVISOR_TEST_HOOK"] = str(node["state"].parent / "hook")
    return run_module(args, check_mode=check_mode, env=env)


def snapshot(*dirs):
    """Every file under dirs by content, and every directory; equal snapshots mean nothing changed."""
    return {str(path): path.read_bytes() if path.is_file() else "dir" for top in dirs for path in sorted(top.rglob("*"))
            if path.name != "release.json.lock"}


def test_installs_a_loose_release_runsc_last_records_it_and_leaves_nothing_behind(node):
    release = download_loose(node)
    rc, result = call(node, release)

    assert rc == 0, result
    for name in ("runsc", "containerd-shim-runsc-v1"):
        path = node["bin"] / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
        assert sha512(path.read_bytes()) == release["artifacts"][name]
    record = json.loads((node["state"] / "release.json").read_text())
    assert record["release"] == release and record["runsc_version"] == "release-20240729.0"
    assert stat.S_IMODE((node["state"] / "release.json").stat().st_mode) == 0o600
    assert result["runsc_version"] == "release-20240729.0"
    assert not (node["state"] / "staging" / "run-test").exists() and not (node["state"] / "transaction").exists()


def test_archive_with_real_member_names_installs_gvisor_bin_and_a_loose_release_removes_it(node):
    rc, result = call(node, download_archive(node))
    assert rc == 0, result
    assert sorted(p.name for p in (node["bin"] / "gvisor-bin").iterdir()) == ["checkpointgofer", "gvisor_sentry"]
    rc, result = call(node, download_loose(node))
    assert rc == 0, result
    assert not (node["bin"] / "gvisor-bin").exists()


@pytest.mark.parametrize("members, message", [
    ({"./runsc": runsc(), "../etc/passwd": b"x", "./containerd-shim-runsc-v1": SHIM}, "unsafe member '../etc/passwd'"),
    ({"./runsc": runsc()}, "lacks containerd-shim-runsc-v1 at its top level"),
    ({"./runsc": ("symlink", "/bin/sh"), "./containerd-shim-runsc-v1": SHIM}, "'./runsc' is not a regular file"),
])
def test_a_bad_archive_is_refused_and_nothing_changes(node, members, message):
    assert call(node, download_loose(node))[0] == 0
    before = snapshot(node["bin"], node["state"])
    rc, result = call(node, download_archive(node, members))
    assert rc != 0 and message in result["msg"]
    assert result["msg"].endswith("The node is unchanged: it keeps gVisor 20240729 (loose) in "
                                  f"{node['bin']} and its configuration, and containerd was not restarted.")
    assert snapshot(node["bin"], node["state"]) == before


def test_a_downloaded_file_that_does_not_match_its_checksum_is_refused(node):
    release = download_loose(node)
    (node["downloads"] / "runsc").write_bytes(b"tampered")
    rc, result = call(node, release)
    assert rc != 0 and "does not match its sha512" in result["msg"]
    assert not (node["bin"] / "runsc").exists()


def test_a_release_containerd_cannot_run_is_refused_before_anything_changes(node):
    assert call(node, download_loose(node))[0] == 0
    before = snapshot(node["bin"], node["state"])
    rc, result = call(node, download_archive(node, release="release-20261005.0"), compatibility={"containerd": "1.6.20"})

    assert rc != 0
    assert result["msg"].startswith("gVisor 20261005 was not installed: gVisor release-20261005.0 (what the release's runsc "
                                    "--version says) does not work with containerd 1.6.20 on this node: since release "
                                    "20260520.0 gVisor's containerd-shim-runsc-v1 answers")
    assert "(https://github.com/cri-o/cri-o/pull/9974). Upgrade containerd to 1.7 or later" in result["msg"]
    assert snapshot(node["bin"], node["state"]) == before


@pytest.mark.parametrize("containerd, release", [("1.7.24", "release-20261005.0"), ("1.6.20", "release-20260513.0"),
                                                 ("2.1.9", "0.0~20261005.0")])
def test_pairs_the_rules_do_not_name_are_installed(node, containerd, release):
    rc, result = call(node, download_archive(node, release=release), compatibility={"containerd": containerd})
    assert rc == 0, result


def test_the_switch_installs_a_refused_pair_with_a_warning(node):
    rc, result = call(node, download_archive(node), compatibility={"containerd": "1.6.20", "ignore": True})
    assert rc == 0, result
    # ansible-core 2.19 hands warnings over as structured events.
    assert any("installed anyway" in json.dumps(warning) for warning in result.get("warnings", [])), result


def test_a_platform_the_release_does_not_have_is_refused_naming_the_ones_it_has(node):
    rc, result = call(node, download_loose(node, release="0.0~20221219.0"), platforms=["systrap"])
    assert rc != 0
    assert "gVisor 0.0~20221219.0 has no systrap platform (it has kvm, ptrace)" in result["msg"]
    assert not (node["bin"] / "runsc").exists()


def test_writes_files_root_owned_with_a_backup_and_follows_a_symlinked_config(node):
    real = node["etc"] / "real-config.toml"
    real.write_text("old\n")
    (node["etc"] / "config.toml").symlink_to(real)
    files = [{"path": str(node["etc"] / "runsc.toml"), "content": "[runsc_config]\n", "mode": "0644"},
             {"path": str(node["etc"] / "config.toml"), "content": "new\n", "mode": "0600", "backup": True}]
    rc, result = call(node, files=files)
    assert rc == 0, result
    assert (node["etc"] / "runsc.toml").read_text() == "[runsc_config]\n"
    assert (node["etc"] / "config.toml").is_symlink() and real.read_text() == "new\n"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert [p.read_text() for p in node["etc"].glob("real-config.toml.*~")] == ["old\n"]


def test_a_sandbox_that_does_not_start_puts_release_and_files_back_and_says_what_the_node_has(node):
    assert call(node, download_loose(node))[0] == 0
    config = node["etc"] / "config.toml"
    config.write_text("old\n")
    before = snapshot(node["bin"], node["state"], node["etc"])
    # (Its backup too goes with a change that is put back.)
    files = [{"path": str(config), "content": "new\n", "backup": True}, {"path": str(node["etc"] / "runsc.toml"), "content": "x\n"}]
    argv = [str(node["bin"] / "runsc"), "--overlay2=bogus", "--fail", "do", "dmesg"]
    rc, result = call(node, download_archive(node), files=files, smoke=[{"name": "gvisor", "argv": argv}])

    assert rc != 0
    assert result["msg"].startswith("gVisor 20261005 was not installed: a gVisor sandbox did not start with runtime handler "
                                    "gvisor (")
    assert 'invalid value "bogus" for flag -overlay2' in result["msg"]  # runsc's own words
    assert result["msg"].endswith(f"The node is back on its previous release and configuration: it keeps gVisor 20240729 "
                                  f"(loose) in {node['bin']} and its configuration, and containerd was not restarted.")
    assert snapshot(node["bin"], node["state"], node["etc"]) == before


def test_a_sandbox_that_hangs_is_killed_after_the_timeout(node):
    (node["downloads"] / "runsc").write_bytes(runsc())
    (node["downloads"] / "runsc").chmod(0o755)
    rc, result = call(node, files=[{"path": str(node["etc"] / "x"), "content": "x"}],
                      smoke=[{"name": "gvisor-kvm", "argv": [str(node["downloads"] / "runsc"), "--hang"]}], timeout=1)
    assert rc != 0 and "runtime handler gvisor-kvm" in result["msg"] and "timed out after 1 s" in result["msg"]
    assert not (node["etc"] / "x").exists()


def test_containerds_effective_configuration_must_show_each_handler(node):
    config = node["etc"] / "config.toml"
    config.write_text("version = 2\n")
    containerd = {"config_path": str(config), "handlers": {"gvisor": "io.containerd.runsc.v1"}}
    good = ('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor]\n'
            '  runtime_type = "io.containerd.runsc.v1"\n')
    assert call(node, files=[{"path": str(config), "content": good}], containerd=containerd)[0] == 0

    wrong = good.replace("runsc.v1", "runc.v2")
    rc, result = call(node, files=[{"path": str(config), "content": wrong}], containerd=containerd)
    assert rc != 0 and "gvisor has runtime type io.containerd.runc.v2, expected io.containerd.runsc.v1" in result["msg"]
    assert config.read_text() == good


@pytest.mark.parametrize("step", STEPS)
def test_a_change_killed_after_any_step_is_finished_or_undone_by_the_next_run(node, step):
    assert call(node, download_loose(node))[0] == 0
    config = node["etc"] / "config.toml"
    config.write_text("old\n")
    before = snapshot(node["bin"], node["state"], node["etc"])
    rc, result = call(node, download_archive(node), hook=step, files=[{"path": str(config), "content": "new\n"}],
                      smoke=[{"name": "gvisor", "argv": [str(node["bin"] / "runsc"), "do", "dmesg"]}])
    assert rc != 0  # killed: no answer
    assert (node["state"] / "transaction").is_dir()

    rc, result = call(node, state="recovered")
    assert rc == 0 and result["changed"]
    assert not (node["state"] / "transaction").exists()
    if step == "proven":
        assert "it was kept" in result["msg"]
        assert config.read_text() == "new\n" and (node["bin"] / "gvisor-bin").is_dir()
    else:
        assert "was put back" in result["msg"] and "the node has gVisor 20240729 (loose)" in result["msg"]
        assert snapshot(node["bin"], node["state"], node["etc"]) == before
    # And nothing of that change is ever used again.
    assert call(node, state="recovered")[1]["changed"] is False


def test_a_run_removes_what_interrupted_runs_left_but_not_a_download_in_progress(node):
    leftovers = [node["state"] / "staging" / "run-old" / "unpacked", node["bin"] / ".gvisor-bin.new-x1y2"]
    for path in leftovers:
        path.mkdir(parents=True)
    two_hours_ago = time.time() - 7200
    os.utime(node["state"] / "staging" / "run-old", (two_hours_ago, two_hours_ago))
    # Another run's staging directory, written a moment ago: that run may still be downloading into it.
    in_progress = node["state"] / "staging" / "run-other"
    in_progress.mkdir()
    (in_progress / "runsc").write_bytes(b"half")
    assert call(node, download_loose(node))[0] == 0
    assert not any(path.exists() for path in leftovers)
    assert (in_progress / "runsc").read_bytes() == b"half"


def test_leftover_cleaning_passes_over_a_staging_directory_its_own_run_removes_meanwhile(tmp_path, monkeypatch):
    transaction = collection_module("plugins.module_utils.transaction")
    root = tmp_path / "staging"
    for name in ("run-finishing", "run-old"):
        (root / name).mkdir(parents=True)
        os.utime(root / name, (time.time() - 7200,) * 2)
    lstat = os.lstat

    def finishing_run_removes_its_directory_first(path, *args, **kwargs):
        if str(path).endswith("run-finishing"):
            os.rmdir(path)  # as that run's module does when it ends, without the lock
        return lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", finishing_run_removes_its_directory_first)
    transaction.clean_leftovers(str(tmp_path / "bin"), str(root), str(root / "run-this"), 3600)
    assert list(root.iterdir()) == []


def test_a_recovery_removes_the_stopped_runs_staging_directory_whatever_its_age(node):
    staging = node["state"] / "staging" / "run-stopped"
    rc, _result = call(node, download_loose(node), hook="installed", staging_dir=str(staging))
    assert rc != 0 and staging.is_dir()  # killed after installing: its staging directory is still there
    assert call(node, state="recovered", staging_dir=str(node["state"] / "staging" / "run-recovery"))[1]["changed"]
    assert not staging.exists()


def test_absent_removes_binaries_files_and_the_state_dir(node):
    assert call(node, download_archive(node))[0] == 0
    extra = node["etc"] / "runsc.toml"
    extra.write_text("x")
    rc, result = call(node, state="absent", remove=[str(extra)])
    assert rc == 0 and result["changed"]
    assert list(node["bin"].iterdir()) == [] and not node["state"].exists() and not extra.exists()
    rc, result = call(node, state="absent", remove=[str(extra)])
    assert rc == 0 and not result["changed"]


def test_check_mode_changes_nothing(node):
    release = download_loose(node)
    before = snapshot(node["bin"], node["state"], node["downloads"])
    rc, result = call(node, release, check_mode=True, files=[{"path": str(node["etc"] / "x"), "content": "x"}])
    assert rc == 0 and result["changed"]
    assert snapshot(node["bin"], node["state"], node["downloads"]) == before
    assert not (node["etc"] / "x").exists()


SERVER = {"root_of": "containerd", "root": "/run/containerd/runsc/k8s.io", "address": "127.0.0.1:1337",
          "bin_dir": "/usr/local/bin", "after": "containerd.service", "unit": "containerd-gvisor-metrics.service"}


def test_metrics_with_a_release_that_has_no_metric_server_are_refused_before_anything_changes(node):
    before = snapshot(node["bin"], node["state"], node["etc"])
    rc, result = call(node, release=download_loose(node), metrics={"start": [SERVER], "stop": [], "proofs": []},
                      files=[{"path": str(node["etc"] / "runsc.toml"), "content": "x\n"}])
    assert rc != 0 and result["failed"]
    assert result["msg"].startswith("gVisor's metric server (containerd_gvisor_metrics) cannot run: the release 20240729 "
                                    "has none: its runsc has no metric server")
    assert "does not support the metric-server subcommand" in result["msg"] and "The node is unchanged" in result["msg"]
    assert snapshot(node["bin"], node["state"], node["etc"]) == before
