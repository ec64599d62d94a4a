"""A node converged against gVisor's official release bucket, with the real shim."""

import json
import tomllib
import urllib.request

from gvisor_testinfra import RUNTIME_TYPE, SHIM, assert_gvisor_banner, handler_table, node_sha512, shell

BIN = "/usr/local/bin"


def published_sha512(url):
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read().decode().split()[0]


def test_installed_release_matches_the_buckets_checksums(host):
    release = json.loads(host.file("/var/lib/containerd-gvisor/release.json").content_string)["release"]
    for name, sha512 in release["artifacts"].items():
        assert published_sha512(f"{release['url']}/{name}.sha512") == sha512
    for name in ("runsc", SHIM):
        f = host.file(f"{BIN}/{name}")
        assert f.mode == 0o755 and f.user == "root"
        assert len(node_sha512(host, f.path)) == 128


def test_gvisor_bin_beside_runsc_for_archive_releases(host):
    release = json.loads(host.file("/var/lib/containerd-gvisor/release.json").content_string)["release"]
    assert host.file(f"{BIN}/gvisor-bin").is_directory == (release["layout"] == "archive")


def test_effective_config_registers_gvisor(host):
    dump = tomllib.loads(host.check_output("containerd config dump"))
    assert handler_table(dump, "gvisor")["runtime_type"] == RUNTIME_TYPE


def test_dmesg_shows_gvisor_banner(host):
    assert_gvisor_banner(host.check_output(f"{BIN}/runsc --network=none do dmesg"))


def test_real_shim_runs_a_sandbox_through_containerd(host):
    rootfs = "/var/tmp/gvisor-test-rootfs"
    host.check_output(
        "rm -rf {r} && mkdir -p {r}/bin {r}/proc {r}/dev {r}/sys {r}/tmp"
        " && cp /bin/busybox {r}/bin/busybox && ln -s busybox {r}/bin/dmesg".format(r=rootfs)
    )
    out = host.check_output(
        shell("ctr", "run", "--rm", "--runtime", RUNTIME_TYPE, "--rootfs", rootfs, "gvisor-shim-test", "/bin/dmesg")
    )
    assert_gvisor_banner(out)
