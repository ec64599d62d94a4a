"""Success means a gVisor sandbox starts: compatibility, platforms and the smoke test that rolls back.

Two bookworm node containers (containerd 1.6): one as a plain node, one given the host's /dev/kvm,
on which runsc's KVM platform hangs (the machines lack CAP_SYS_RESOURCE), a real "kvm configured
but unusable" node. Each failure must leave the node as it was, byte for byte, containerd running.
"""

from __future__ import annotations

import os
import tomllib

import pytest

from gvisor_node import ARCH, BIN_DIR, CHANGE_TASK, CONFIG, RUNSC_TOML, assert_ctr_reaches_the_shim, remove_node, start_node
from gvisor_testinfra import REPO, RUNTIME_TYPE, handler_table, runsc_version_line

IMAGE = "containerd-gvisor-node:bookworm"
INITIAL_CONFIG = (REPO / "tests" / "fixtures" / "containerd" / "bookworm-v2.toml").read_bytes()
COMPATIBLE = "20240729"  # real runsc with systrap, from before the shim's JSON bootstrap (20260520)
OLDEST = "20221219"  # real runsc that has no systrap platform yet
NEW = "20261005"  # a release from 20260520 on: its shim cannot work with containerd 1.6


def node_fixture(name, tmp_path_factory, mirror, devices=()):
    node = start_node(name, IMAGE, INITIAL_CONFIG, devices=devices)
    node.vars.update({
        "containerd_gvisor_runtime": True, "containerd_gvisor_mirror_url": mirror.url, "containerd_gvisor_arch": ARCH,
        "containerd_gvisor_download_cache_dir": str(tmp_path_factory.mktemp("cache")),
        "containerd_gvisor_download_delay": 1, "containerd_gvisor_smoke_test_timeout": 15,
    })
    return node


@pytest.fixture(scope="module")
def node(mirror, tmp_path_factory):
    node = node_fixture("sandbox-bookworm", tmp_path_factory, mirror)
    yield node
    if not os.environ.get("CONTAINERD_GVISOR_KEEP_NODE"):
        remove_node(node.name)


@pytest.fixture(scope="module")
def kvm_node(mirror, tmp_path_factory):
    if not os.path.exists("/dev/kvm"):
        pytest.skip("this machine has no /dev/kvm to give a node")
    node = node_fixture("sandbox-kvm-bookworm", tmp_path_factory, mirror, devices=["/dev/kvm"])
    yield node
    if not os.environ.get("CONTAINERD_GVISOR_KEEP_NODE"):
        remove_node(node.name)


def assert_containerd_runs_handler(node):
    assert node.containerd_active()
    dump = tomllib.loads(node.sh(f"containerd --config {CONFIG} config dump"))
    assert (handler_table(dump, "gvisor") or {}).get("runtime_type") == RUNTIME_TYPE


def test_a_release_containerd_16_cannot_run_is_refused_and_the_node_is_unchanged(node):
    before = node.snapshot()
    play = node.play(containerd_gvisor_version=NEW)

    assert not play.ok
    assert (f"gVisor release-{NEW}.0 (what the release's runsc --version says) does not work with containerd 1.6.20 "
            "on this node") in play.message
    assert "Upgrade containerd to 1.7 or later, or pin a gVisor release from before 20260520" in play.message
    assert "containerd_gvisor_ignore_compatibility: true installs it anyway" in play.message
    assert node.snapshot() == before  # bin dir, /etc/containerd, state dir, containerd's PID


def test_latest_is_judged_by_what_it_really_is(node):
    before = node.snapshot()
    play = node.play(containerd_gvisor_version="latest")
    assert not play.ok and f"gVisor release-{NEW}.0 (what the release's runsc --version says)" in play.message
    assert node.snapshot() == before


def test_a_compatible_release_is_installed_and_its_sandbox_started(node):
    play = node.play(containerd_gvisor_version=COMPATIBLE)

    assert play.ok, play
    smoke = play.result(CHANGE_TASK)["smoke"]
    assert [run["name"] for run in smoke] == ["gvisor"] and "Starting gVisor" in smoke[0]["stdout"]
    assert node.sh(f"{BIN_DIR}/runsc --version").splitlines()[0] == runsc_version_line(COMPATIBLE, ARCH)
    assert 'platform = "systrap"' in node.read(RUNSC_TOML).decode()
    assert_containerd_runs_handler(node)


def test_the_ctr_smoke_test_reaches_the_shim_on_containerd_16(node):
    assert node.play(containerd_gvisor_version=COMPATIBLE).ok
    assert_ctr_reaches_the_shim(node, containerd_gvisor_version=COMPATIBLE)


def test_kvm_on_a_node_without_dev_kvm_is_refused_before_any_change(node):
    before = node.snapshot()
    play = node.play(containerd_gvisor_version=COMPATIBLE, containerd_gvisor_platform="kvm")

    assert not play.ok
    assert "A handler uses the kvm platform, but this node has no /dev/kvm" in play.message
    assert "modprobe kvm_intel" in play.message and "nested virtualisation" in play.message
    assert node.snapshot() == before


def test_a_gpu_handler_on_a_node_without_the_nvidia_devices_is_refused_before_any_change(node):
    before = node.snapshot()
    handlers = [{"name": "gvisor", "runsc_config_path": RUNSC_TOML},
                {"name": "gvisor-gpu", "runsc_config_path": "/etc/containerd/runsc-gpu.toml", "runsc_config": {"nvproxy": True}}]
    play = node.play(containerd_gvisor_version=COMPATIBLE, containerd_gvisor_handlers=handlers)

    assert not play.ok
    assert "A handler uses nvproxy (GPU), but /dev/nvidiactl, /dev/nvidia-uvm, /dev/nvidia0 are missing" in play.message
    assert node.snapshot() == before


def test_kvm_that_does_not_work_is_caught_by_the_smoke_test_and_rolled_back(kvm_node):
    assert kvm_node.play(containerd_gvisor_version=COMPATIBLE).ok  # systrap, working
    before = kvm_node.snapshot()
    play = kvm_node.play(containerd_gvisor_version=COMPATIBLE, containerd_gvisor_platform="kvm")

    assert not play.ok
    # runsc's KVM platform either hangs here (then the sandbox is killed after the timeout) or fails
    # to start; either way runsc's own last words are in the message.
    assert "a gVisor sandbox did not start with runtime handler gvisor (/usr/local/bin/runsc --platform=kvm" in play.message
    assert "timed out after 15 s" in play.message or "cannot create sandbox" in play.message
    assert "The node is back on its previous release and configuration: it keeps gVisor 20240729 (loose)" in play.message
    assert kvm_node.snapshot() == before  # runsc.toml back on systrap, no modules-load file, containerd untouched
    assert "runsc" not in kvm_node.sh("ps -eo comm=")  # no sandbox left hanging


def test_a_flag_that_stops_the_sandbox_rolls_back_release_and_configuration(kvm_node):
    assert kvm_node.play(containerd_gvisor_version=OLDEST, containerd_gvisor_platform="ptrace").ok
    before = kvm_node.snapshot()
    play = kvm_node.play(containerd_gvisor_version=COMPATIBLE, containerd_gvisor_platform="ptrace",
                         containerd_gvisor_runsc_config={"overlay2": "bogus"})

    assert not play.ok
    assert 'invalid value "bogus" for flag -overlay2' in play.message  # runsc's own words
    assert f"The node is back on its previous release and configuration: it keeps gVisor {OLDEST} (loose)" in play.message
    assert kvm_node.snapshot() == before  # the previous release, runsc.toml and config.toml, containerd untouched
    assert kvm_node.sh(f"{BIN_DIR}/runsc --version").splitlines()[0] == runsc_version_line(OLDEST, ARCH)
    assert_containerd_runs_handler(kvm_node)
