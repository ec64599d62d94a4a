"""What a user checks on a node after converging playbooks/gvisor.yml against the test mirror."""

import json
import tomllib

import pytest

from gvisor_testinfra import (
    REPO,
    RUNTIME_TYPE,
    SHIM,
    assert_gvisor_banner,
    expected_files,
    handler_table,
    node_sha512,
    node_toml,
    sandbox_flags,
    shell,
    uses_archive,
    without_handler,
)

CONFIG = "/etc/containerd/config.toml"
RUNSC_TOML = "/etc/containerd/runsc.toml"
HANDLER = "gvisor"


@pytest.fixture(scope="module")
def node(host):
    """The node's Molecule variables, with the role's defaults filled in."""
    v = host.ansible.get_variables()
    return {
        "version": str(v.get("containerd_gvisor_version", "latest")),
        "bin_dir": v.get("containerd_gvisor_bin_dir", "/usr/local/bin"),
        "fixture": v.get("gvisor_test_config_fixture", ""),
        "runsc_config": v.get("containerd_gvisor_runsc_config", {}),
        "arch": host.system_info.arch,
    }


def test_runsc_and_shim_installed_with_mirror_checksums(host, node):
    expected = expected_files(node["version"], node["arch"])
    assert "runsc" in expected and SHIM in expected
    for rel_path, sha512 in expected.items():
        f = host.file(f"{node['bin_dir']}/{rel_path}")
        assert f.is_file, rel_path
        assert f.user == "root" and f.group == "root", rel_path
        assert f.mode == 0o755, rel_path
        assert node_sha512(host, f.path) == sha512, f"{rel_path} differs from the mirror's bytes"


def test_gvisor_bin_sits_beside_runsc_only_for_archive_releases(host, node):
    gvisor_bin = host.file(f"{node['bin_dir']}/gvisor-bin")
    if uses_archive(node["version"], node["arch"]):
        assert gvisor_bin.is_directory
        assert sorted(gvisor_bin.listdir()) == sorted(
            p.split("/", 1)[1] for p in expected_files(node["version"], node["arch"]) if p.startswith("gvisor-bin/")
        )
    else:
        assert not gvisor_bin.exists


def test_runsc_reports_the_release(host, node):
    out = host.check_output("%s/runsc --version", node["bin_dir"])
    wanted = node["version"] if node["version"] != "latest" else "20240729"
    assert f"runsc version 0.0~{wanted.split('.')[0]}" in out


def test_handler_table_at_the_path_for_the_files_version(host, node):
    config = node_toml(host, CONFIG)
    table = handler_table(config, HANDLER)
    assert table is not None, f"no {HANDLER} runtime in {CONFIG}"
    assert table["runtime_type"] == RUNTIME_TYPE
    if node["bin_dir"] != "/usr/local/bin":
        assert table["runtime_path"] == f"{node['bin_dir']}/{SHIM}"
    if host.file(RUNSC_TOML).exists:
        assert table["options"] == {"TypeUrl": "io.containerd.runsc.v1.options", "ConfigPath": RUNSC_TOML}
    else:
        assert "options" not in table


def test_effective_config_registers_gvisor(host):
    dump = tomllib.loads(host.check_output("containerd --config %s config dump", CONFIG))
    assert handler_table(dump, HANDLER)["runtime_type"] == RUNTIME_TYPE


def test_everything_already_in_the_config_is_kept(host, node):
    text = host.file(CONFIG).content_string
    after = tomllib.loads(text)
    if not node["fixture"]:
        # The role created the file: only the version and the handler.
        assert set(after) == {"version", "plugins"}
        assert after["version"] == 2 or after["version"] == 3
        return
    fixture = (REPO / "tests" / "fixtures" / "containerd" / node["fixture"]).read_text()
    assert without_handler(after, HANDLER) == tomllib.loads(fixture)
    # Comments and layout survive too: every line of the original is still there, in order.
    lines = iter(text.splitlines())
    for line in fixture.splitlines():
        assert any(candidate == line for candidate in lines), f"lost or reordered: {line!r}"


def test_runsc_config_holds_strings(host, node):
    if not host.file(RUNSC_TOML).exists:
        # Written only when there is something to say: flags, systemd cgroups or a bin dir off PATH.
        assert not node["runsc_config"] and node["bin_dir"] == "/usr/local/bin"
        return
    config = node_toml(host, RUNSC_TOML)["runsc_config"]
    assert all(isinstance(v, str) for v in config.values())
    for key, value in node["runsc_config"].items():
        assert config[key] == str(value).lower()
    runc = handler_table(node_toml(host, CONFIG), "runc") or {}
    if runc.get("options", {}).get("SystemdCgroup"):
        assert config["systemd-cgroup"] == "true"


def test_containerd_is_running(host):
    assert host.service("containerd").is_running


def test_dmesg_shows_gvisor_banner(host, node):
    argv = [f"{node['bin_dir']}/runsc", *sandbox_flags(host, RUNSC_TOML), "do", "dmesg"]
    assert_gvisor_banner(host.check_output(shell(*argv)))


def test_containerd_starts_a_gvisor_sandbox(host, node):
    # The shim in the test mirror is a stand-in, so containerd drives the installed runsc
    # through the runc shim, with a wrapper that adds the node's runsc flags.
    wrapper = "/usr/local/sbin/runsc-for-ctr"
    script = "#!/bin/sh\nexec %s \"$@\"\n" % shell(f"{node['bin_dir']}/runsc", *sandbox_flags(host, RUNSC_TOML))
    host.check_output(f"printf %s {shell(script)} > {wrapper} && chmod 0755 {wrapper}")
    rootfs = "/var/tmp/gvisor-test-rootfs"
    host.check_output(
        "rm -rf {r} && mkdir -p {r}/bin {r}/proc {r}/dev {r}/sys {r}/tmp"
        " && cp /bin/busybox {r}/bin/busybox && ln -s busybox {r}/bin/dmesg".format(r=rootfs)
    )
    out = host.check_output(
        shell(
            "ctr", "run", "--rm", "--runtime", "io.containerd.runc.v2", "--runc-binary", wrapper,
            "--rootfs", rootfs, "gvisor-dmesg-test", "/bin/dmesg",
        )
    )
    assert_gvisor_banner(out)


def test_install_record_names_the_release(host, node):
    record = host.file("/var/lib/containerd-gvisor/release.json")
    assert record.exists
    assert json.loads(record.content_string)["release"]["version"] == node["version"]
