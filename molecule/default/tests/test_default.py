"""What a user checks on a node after converging playbooks/gvisor.yml against the test mirror."""

import json
import os
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from gvisor_testinfra import (
    DROPIN,
    REPO,
    RUNTIME_TYPE,
    SHIM,
    assert_gvisor_banner,
    containerd_2,
    expected_files,
    handler_table,
    handlers_file,
    node_sha512,
    node_toml,
    runsc_version_line,
    sandbox_flags,
    shell,
    uses_archive,
    without_handler,
)

CONFIG = "/etc/containerd/config.toml"
OFF_PATH = {"/opt/bin"}


@pytest.fixture(scope="module")
def node(host):
    """The node's Molecule variables, with the role's defaults filled in."""
    v = host.ansible.get_variables()
    handlers = v.get("containerd_gvisor_handlers") or [{"name": "gvisor", "runsc_config_path": "/etc/containerd/runsc.toml"}]
    return {
        "version": str(v.get("containerd_gvisor_version", "latest")),
        "bin_dir": v.get("containerd_gvisor_bin_dir", "/usr/local/bin"),
        "fixture": v.get("gvisor_test_config_fixture", ""),
        "handlers": [{"platform": "systrap", "runsc_config": {}, "shim_config": {}, **h} for h in handlers],
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
        assert sorted(gvisor_bin.listdir()) == sorted(
            p.split("/", 1)[1] for p in expected_files(node["version"], node["arch"]) if p.startswith("gvisor-bin/"))
        assert len(gvisor_bin.listdir()) == 5
    else:
        assert not gvisor_bin.exists


def test_runsc_reports_the_release(host, node):
    out = host.check_output("%s/runsc --version", node["bin_dir"])
    assert out.splitlines()[0] == runsc_version_line(node["version"], node["arch"])


def test_each_handler_has_its_table_at_the_path_for_the_files_version(host, node):
    # containerd 2.x: in the role's drop-in, in config.toml's version; 1.x: in config.toml itself.
    path = handlers_file(host, CONFIG)
    config = node_toml(host, path)
    assert config.get("version", 1) == node_toml(host, CONFIG).get("version", 1)
    for handler in node["handlers"]:
        table = handler_table(config, handler["name"])
        assert table is not None, f"no {handler['name']} runtime in {path}"
        assert table["runtime_type"] == RUNTIME_TYPE
        assert table["options"] == {"TypeUrl": "io.containerd.runsc.v1.options", "ConfigPath": handler["runsc_config_path"]}
        assert table.get("runtime_path") == (f"{node['bin_dir']}/{SHIM}" if node["bin_dir"] in OFF_PATH else None)


def test_effective_config_registers_every_handler(host, node):
    dump = tomllib.loads(host.check_output("containerd --config %s config dump", CONFIG))
    for handler in node["handlers"]:
        assert handler_table(dump, handler["name"])["runtime_type"] == RUNTIME_TYPE


def test_everything_already_in_the_config_is_kept(host, node):
    text = host.file(CONFIG).content_string
    after = node_toml(host, CONFIG)
    for handler in node["handlers"]:
        after = without_handler(after, handler["name"])
    if containerd_2(host):
        # containerd 2.x: config.toml gains only the import of the role's drop-in, unless it had it.
        assert after.pop("imports") == [DROPIN]
    if not node["fixture"]:
        # The role created the file: the version, the handlers and containerd's own runc.
        assert set(after) == {"version", "plugins"}
        return
    fixture = (REPO / "tests" / "fixtures" / "containerd" / node["fixture"]).read_text()
    assert after == tomllib.loads(fixture)
    # Comments and layout survive too: every line of the original is still there, in order.
    lines = iter(text.splitlines())
    for line in fixture.splitlines():
        assert any(candidate == line for candidate in lines), f"lost or reordered: {line!r}"


def test_each_runsc_toml_holds_the_platform_and_flags_as_strings(host, node):
    runc = handler_table(node_toml(host, CONFIG), "runc") or {}
    for handler in node["handlers"]:
        f = host.file(handler["runsc_config_path"])
        assert f.user == "root" and f.mode == 0o644
        toml = node_toml(host, handler["runsc_config_path"])
        flags = toml["runsc_config"]
        assert flags["platform"] == handler["platform"]
        assert all(isinstance(value, str) for value in flags.values())
        for key, value in handler["runsc_config"].items():
            assert flags[key] == str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in handler["shim_config"].items():
            assert toml[key] == value
        assert toml.get("binary_name") == (f"{node['bin_dir']}/runsc" if node["bin_dir"] in OFF_PATH else None)
        assert ("systemd-cgroup" in flags) == bool(runc.get("options", {}).get("SystemdCgroup"))


def test_the_handler_record_lists_every_handler(host, node):
    record = json.loads(host.file("/var/lib/containerd-gvisor/handlers.json").content_string)
    assert record == {h["name"]: h["runsc_config_path"] for h in node["handlers"]}


def test_containerd_is_running(host):
    assert host.service("containerd").is_running


def test_dmesg_shows_gvisor_banner_with_each_handlers_flags(host, node):
    for handler in node["handlers"]:
        argv = [f"{node['bin_dir']}/runsc", *sandbox_flags(host, handler["runsc_config_path"]), "do", "dmesg"]
        assert_gvisor_banner(host.check_output(shell(*argv)))


def test_the_debug_handlers_flags_take_effect(host, node):
    debug = [h for h in node["handlers"] if h["runsc_config"].get("debug")]
    if not debug:
        pytest.skip("no handler with debug flags on this node")
    host.check_output("rm -rf /var/log/runsc")
    argv = [f"{node['bin_dir']}/runsc", *sandbox_flags(host, debug[0]["runsc_config_path"]), "do", "true"]
    host.check_output(shell(*argv))
    assert host.check_output("find /var/log/runsc -type f -name '*.txt' | wc -l").strip() != "0"


def test_containerd_starts_a_gvisor_sandbox(host, node):
    # The shim in the test mirror is a stand-in, so containerd drives the installed runsc
    # through the runc shim, with a wrapper that adds the first handler's runsc flags.
    wrapper = "/usr/local/sbin/runsc-for-ctr"
    flags = sandbox_flags(host, node["handlers"][0]["runsc_config_path"])
    script = "#!/bin/sh\nexec %s \"$@\"\n" % shell(f"{node['bin_dir']}/runsc", *flags)
    host.check_output(f"printf %s {shell(script)} > {wrapper} && chmod 0755 {wrapper}")
    rootfs = "/var/tmp/gvisor-test-rootfs"
    host.check_output(
        "rm -rf {r} && mkdir -p {r}/bin {r}/proc {r}/dev {r}/sys {r}/tmp"
        " && cp /bin/busybox {r}/bin/busybox && ln -s busybox {r}/bin/dmesg".format(r=rootfs)
    )
    out = host.check_output(
        shell("ctr", "run", "--rm", "--runtime", "io.containerd.runc.v2", "--runc-binary", wrapper,
              "--rootfs", rootfs, "gvisor-dmesg-test", "/bin/dmesg"))
    assert_gvisor_banner(out)


def test_a_valid_runtimeclass_was_written_for_each_handler(node):
    directory = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "runtimeclasses"
    for handler in node["handlers"]:
        manifest = yaml.safe_load((directory / f"runtimeclass-{handler['name']}.yaml").read_text())
        kubernetes_validate.validate(manifest, "1.30", strict=True)
        assert manifest["handler"] == handler["name"]
        assert manifest["scheduling"]["nodeSelector"] == {"sandbox.gvisor.dev/runtime": "gvisor"}
        assert manifest["scheduling"]["tolerations"][0]["effect"] == "NoSchedule"
        assert manifest["overhead"]["podFixed"] == {"cpu": "250m", "memory": "64Mi"}


def test_install_record_names_the_release(host, node):
    record = json.loads(host.file("/var/lib/containerd-gvisor/release.json").content_string)
    assert record["release"]["version"] == node["version"]
    assert record["runsc_version"] == runsc_version_line(node["version"], node["arch"]).removeprefix("runsc version ")
