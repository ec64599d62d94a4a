"""containerd's configuration on real containerd: a drop-in on 2.x (sid, 2.1.9), and the refusal a split 1.x config gets.

On containerd 2.x the handlers go into the role's drop-in, in config.toml's config version, and config.toml
gains at most its `imports` entry; success is containerd's effective configuration (`containerd config dump`)
holding every handler beside everything config.toml had, a CRI plugin that loads, and a sandbox that starts.
Taking gVisor off gives config.toml back.
"""

from __future__ import annotations

import os
import sys
import tomllib

import pytest

from gvisor_node import ARCH, CONFIG, assert_ctr_reaches_the_shim, remove_node, start_node
from gvisor_testinfra import REPO, RUNTIME_TYPE, handler_table

sys.path.insert(0, str(REPO / "playbooks" / "collections"))
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.plugin_utils import containerd_config  # noqa: E402

DROPIN = "/etc/containerd/conf.d/gvisor.toml"
RELEASE = "20240729"
DEBIAN_STOCK = (REPO / "tests" / "unit" / "fixtures" / "debian-packaged-config.toml").read_bytes()
SID_V3 = (REPO / "tests" / "fixtures" / "containerd" / "sid-v3.toml").read_bytes()
KUBEADM_V2 = (REPO / "tests" / "fixtures" / "containerd" / "bookworm-v2.toml").read_bytes()
# kubernetes-sigs/image-builder's config.toml template, as it renders with gVisor on: conf.d imported and a bare
# gvisor runtime beside runc.
# What an install on containerd 1.7 wrote into the kubeadm config: the handler between the role's markers.
CONFIG_OF_A_1X_INSTALL = containerd_config.changes(
    "1.7.24", CONFIG, KUBEADM_V2.decode(), DROPIN, None, {},
    {"gvisor": containerd_config.handler_table("/etc/containerd/runsc.toml")}, [], "")[CONFIG].encode()
IMAGE_BUILDER = b"""version = 2
imports = ["/etc/containerd/conf.d/*.toml"]

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.10"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor]
    runtime_type = "io.containerd.runsc.v1"
"""


@pytest.fixture(scope="module")
def sid(mirror, tmp_path_factory):
    node = start_node("config-sid", "containerd-gvisor-node:sid")
    node.vars.update({
        "containerd_gvisor_runtime": True, "containerd_gvisor_mirror_url": mirror.url, "containerd_gvisor_arch": ARCH,
        "containerd_gvisor_version": RELEASE, "containerd_gvisor_download_delay": 1,
        "containerd_gvisor_download_cache_dir": str(tmp_path_factory.mktemp("cache")),
        # sid's cgroup v2 hierarchy has no controllers here.
        "containerd_gvisor_runsc_config": {"ignore-cgroups": True},
    })
    yield node
    if not os.environ.get("CONTAINERD_GVISOR_KEEP_NODE"):
        remove_node(node.name)


def assert_cri_loads_with_gvisor(node):
    cri = [line for line in node.sh("ctr plugins ls").splitlines() if " cri " in f" {line} "]
    assert cri and all(line.split()[-1] == "ok" for line in cri), cri
    gvisor = handler_table(node.effective_config(), "gvisor")
    assert gvisor["runtime_type"] == RUNTIME_TYPE
    assert gvisor["options"]["ConfigPath"] == "/etc/containerd/runsc.toml"


@pytest.mark.parametrize("config, version", [(DEBIAN_STOCK, 2), (SID_V3, 3)], ids=["debian-stock-v2", "platform-v3"])
def test_the_handler_goes_into_a_drop_in_of_config_tomls_version_and_comes_out_again(sid, config, version):
    sid.fresh_containerd(config)
    play = sid.play()
    assert play.ok, play

    assert tomllib.loads(sid.read(DROPIN).decode())["version"] == version
    main = tomllib.loads(sid.read(CONFIG).decode())
    assert main == {**tomllib.loads(config.decode()), "imports": [DROPIN]}  # the import, and nothing else
    assert_cri_loads_with_gvisor(sid)
    # Everything config.toml says still holds in containerd's effective configuration.
    if version == 3:
        runc = handler_table(sid.effective_config(), "runc")
        assert runc["options"]["SystemdCgroup"] is False
        assert sid.effective_config()["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"] == "/etc/containerd/certs.d"
    else:
        assert sid.effective_config()["plugins"]["io.containerd.cri.v1.runtime"]["cni"]["bin_dirs"] == ["/usr/lib/cni"]

    again = sid.play()
    assert again.ok and again.changed == 0, again
    removed = sid.play(containerd_gvisor_state="absent")
    assert removed.ok, removed
    assert sid.read(CONFIG) == config and sid.read(DROPIN) is None
    assert handler_table(sid.effective_config(), "gvisor") is None


def test_a_config_toml_that_imports_conf_d_is_left_byte_for_byte(sid):
    config = SID_V3.replace(b"version = 3\n", b"version = 3\nimports = ['/etc/containerd/conf.d/*.toml']\n")
    sid.fresh_containerd(config)
    play = sid.play()
    assert play.ok, play
    assert sid.read(CONFIG) == config
    assert_cri_loads_with_gvisor(sid)


def test_image_builders_bare_gvisor_table_moves_into_the_drop_in(sid):
    sid.fresh_containerd(IMAGE_BUILDER)
    play = sid.play()
    assert play.ok, play
    main = tomllib.loads(sid.read(CONFIG).decode())
    assert "gvisor" not in main["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert main["imports"] == ["/etc/containerd/conf.d/*.toml"]  # already imports the drop-in
    assert_cri_loads_with_gvisor(sid)
    assert handler_table(sid.effective_config(), "runc")["options"]["SystemdCgroup"] is True
    assert sid.effective_config()["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == "registry.k8s.io/pause:3.10"


def test_handlers_a_containerd_1x_install_wrote_into_config_toml_move_into_the_drop_in(sid):
    # The node was installed on containerd 1.x (the handlers between the markers), then containerd became 2.x.
    sid.fresh_containerd(KUBEADM_V2)
    sid.write(CONFIG, CONFIG_OF_A_1X_INSTALL)
    sid.sh("systemctl restart containerd")
    play = sid.play()
    assert play.ok, play
    assert sid.read(CONFIG) == KUBEADM_V2.replace(b"oom_score", b'imports = ["/etc/containerd/conf.d/gvisor.toml"]\noom_score', 1)
    assert_cri_loads_with_gvisor(sid)


def test_the_ctr_smoke_test_reaches_the_shim_on_containerd_21(sid):
    sid.fresh_containerd(KUBEADM_V2)
    assert sid.play().ok
    assert_ctr_reaches_the_shim(sid)


def test_containerd_1x_with_the_cri_section_in_an_imported_file_is_refused_before_any_change(mirror, tmp_path_factory):
    node = start_node("config-trixie", "containerd-gvisor-node:trixie")
    try:
        node.sh("mkdir -p /etc/containerd/conf.d")
        node.write("/etc/containerd/conf.d/99-nvidia.toml", b'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n'
                                                            b'  enable_cdi = true\n')
        node.write(CONFIG, KUBEADM_V2.replace(b"oom_score", b'imports = ["/etc/containerd/conf.d/99-nvidia.toml"]\noom_score', 1))
        node.sh("systemctl restart containerd")
        before = node.snapshot()
        play = node.play(containerd_gvisor_runtime=True, containerd_gvisor_mirror_url=mirror.url, containerd_gvisor_version=RELEASE,
                         containerd_gvisor_download_cache_dir=str(tmp_path_factory.mktemp("cache")))
        assert not play.ok
        assert ("containerd 1.x replaces the whole CRI plugin section of /etc/containerd/config.toml with the one in "
                "/etc/containerd/conf.d/99-nvidia.toml") in play.message
        assert node.snapshot() == before
    finally:
        if not os.environ.get("CONTAINERD_GVISOR_KEEP_NODE"):
            remove_node(node.name)
