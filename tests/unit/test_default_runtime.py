"""The merge keeps containerd's default runtime (runc) working.

containerd 1.x replaces its built-in runtimes map with the file's, so a config.toml that
defines only the gvisor runtime loses runc and the CRI plugin refuses to load. The merge
copies runc's table from the node's own `containerd config default` when the file lacks it.
"""

from __future__ import annotations

import tomllib

import containerd_config as filters
from unit_support import FIXTURES

DEFAULTS_16 = (FIXTURES / "containerd-1.6-config-default.toml").read_text()
DEFAULTS_21 = (FIXTURES / "containerd-2.1-config-default.toml").read_text()
DEBIAN_PACKAGED = (FIXTURES / "debian-packaged-config.toml").read_text()
CRI_V2 = ("plugins", "io.containerd.grpc.v1.cri", "containerd")
CRI_V3 = ("plugins", "io.containerd.cri.v1.runtime", "containerd")


def dig(data, keys):
    for key in keys:
        data = data[key]
    return data


def merge(text, defaults, **kwargs):
    return filters.containerd_gvisor_merge_config(text, "/etc/containerd/config.toml", "gvisor",
                                                  defaults=defaults, **kwargs)


def test_debian_packaged_config_gets_containerds_own_runc_table():
    result = tomllib.loads(merge(DEBIAN_PACKAGED, DEFAULTS_16))
    runtimes = dig(result, CRI_V2)["runtimes"]
    defaults_runc = dig(tomllib.loads(DEFAULTS_16), CRI_V2)["runtimes"]["runc"]
    assert runtimes["runc"] == defaults_runc
    assert runtimes["gvisor"] == {"runtime_type": "io.containerd.runsc.v1"}


def test_debian_packaged_config_keeps_its_own_lines_first():
    text = merge(DEBIAN_PACKAGED, DEFAULTS_16)
    assert text.startswith(DEBIAN_PACKAGED)
    assert "containerd config default" in text  # a comment says where runc came from


def test_new_file_for_containerd_2_copies_runc_in_version_3_form():
    result = tomllib.loads(merge(None, DEFAULTS_21, new_version=3))
    assert result["version"] == 3
    runtimes = dig(result, CRI_V3)["runtimes"]
    assert runtimes["runc"] == dig(tomllib.loads(DEFAULTS_21), CRI_V3)["runtimes"]["runc"]
    assert runtimes["gvisor"]["runtime_type"] == "io.containerd.runsc.v1"


def test_config_that_defines_runc_is_not_given_another():
    text = (FIXTURES / "containerd-1.6-v2.toml").read_text()
    merged = merge(text, DEFAULTS_16)
    assert merged.count("runtimes.runc]") == text.count("runtimes.runc]")


def test_custom_default_runtime_name_is_respected():
    text = (
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  default_runtime_name = "crun"\n'
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]\n  runtime_type = "io.containerd.runc.v2"\n'
    )
    result = tomllib.loads(merge(text, DEFAULTS_16))
    assert set(dig(result, CRI_V2)["runtimes"]) == {"crun", "gvisor"}


def test_merging_twice_changes_nothing_the_second_time():
    once = merge(DEBIAN_PACKAGED, DEFAULTS_16)
    assert merge(once, DEFAULTS_16) == once


def test_without_defaults_only_the_handler_is_added():
    result = tomllib.loads(merge(DEBIAN_PACKAGED, None))
    assert set(dig(result, CRI_V2)["runtimes"]) == {"gvisor"}
