"""Tests of the containerd_gvisor filter plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

import containerd_config as filters
from conftest import REPO

PATH = "/etc/containerd/config.toml"
URL = "https://example.invalid/release/20240729.0/x86_64/runsc.sha512"
DIGEST = "ab" * 64
OPTIONS = {"TypeUrl": "io.containerd.runsc.v1.options", "ConfigPath": "/etc/containerd/runsc.toml"}
V2_TABLE = 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor'
V3_TABLE = "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.gvisor"

GVISOR_V2_TABLES = f"""[{V2_TABLE}]
  runtime_type = "io.containerd.runsc.v1"

[{V2_TABLE}.options]
  TypeUrl = "io.containerd.runsc.v1.options"
  ConfigPath = "/etc/containerd/runsc.toml"
"""


def merge(text, **kwargs):
    """Merge the gvisor handler with the role's usual options."""
    kwargs.setdefault("options", OPTIONS)
    return filters.containerd_gvisor_merge_config(text, PATH, "gvisor", **kwargs)


def gvisor_of(text, version=2):
    """Return the parsed gvisor runtime table of a config text."""
    data = tomllib.loads(text)
    cri = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}[version]
    return data["plugins"][cri]["containerd"]["runtimes"]["gvisor"]


def without_gvisor(text, version=2):
    """Return the parsed config minus the gvisor runtime."""
    data = tomllib.loads(text)
    cri = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}[version]
    del data["plugins"][cri]["containerd"]["runtimes"]["gvisor"]
    return data


# --- containerd_gvisor_bool -----------------------------------------------------


@pytest.mark.parametrize("value", [True, 1, "true", "True", " TRUE ", "yes", "on", "1", "y", "t"])
def test_bool_accepts_true_spellings(value):
    assert filters.containerd_gvisor_bool(value, "containerd_gvisor_debug") is True


@pytest.mark.parametrize("value", [False, 0, "false", "False", "no", "off", "0", "n", "f"])
def test_bool_accepts_false_spellings(value):
    assert filters.containerd_gvisor_bool(value, "containerd_gvisor_debug") is False


def test_bool_refuses_a_typo_naming_the_variable():
    with pytest.raises(AnsibleFilterError) as err:
        filters.containerd_gvisor_bool("ture", "containerd_gvisor_debug")
    assert str(err.value) == (
        "containerd_gvisor_debug must be a boolean (true or false; Packer's strings \"true\" and \"false\" "
        "also work), got 'ture'"
    )


@pytest.mark.parametrize("value", ["", None, 2, "maybe", [], {}])
def test_bool_refuses_non_booleans(value):
    with pytest.raises(AnsibleFilterError, match="^containerd_gvisor_debug must be a boolean"):
        filters.containerd_gvisor_bool(value, "containerd_gvisor_debug")


# --- containerd_gvisor_parse_sha512 -----------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"{DIGEST}  runsc\n",
        f"{DIGEST} *runsc\n",
        f"{DIGEST}  release/20240729.0/x86_64/runsc\n",
        f"{DIGEST} */tmp/build/runsc",
        f"{DIGEST}\n",
        f"\n\n  {DIGEST.upper()}  runsc\r\n",
        f"{DIGEST}  runsc\n{'cd' * 64}  containerd-shim-runsc-v1\n",
    ],
)
def test_parse_sha512_accepts_sha512sum_output(text):
    assert filters.containerd_gvisor_parse_sha512(text, "runsc", URL) == DIGEST


@pytest.mark.parametrize(
    "text",
    [
        "",
        None,
        f"{DIGEST[:-1]}  runsc\n",
        f"{DIGEST}0  runsc\n",
        f"{DIGEST[:-1]}g  runsc\n",
        "sha512:" + DIGEST,
    ],
)
def test_parse_sha512_refuses_malformed_text_naming_the_url(text):
    with pytest.raises(AnsibleFilterError) as err:
        filters.containerd_gvisor_parse_sha512(text, "runsc", URL)
    assert str(err.value).startswith(f"{URL} is not a sha512sum line for runsc: got ")


def test_parse_sha512_quotes_only_the_start_of_an_html_page():
    page = "<html><head><title>404 Not Found</title></head><body>" + "x" * 500 + "</body></html>"
    with pytest.raises(AnsibleFilterError) as err:
        filters.containerd_gvisor_parse_sha512(page, "runsc", URL)
    assert str(err.value) == f"{URL} is not a sha512sum line for runsc: got {page[:80]!r}..."


def test_parse_sha512_refuses_the_line_of_another_file():
    with pytest.raises(AnsibleFilterError) as err:
        filters.containerd_gvisor_parse_sha512(f"{DIGEST}  containerd-shim-runsc-v1\n", "runsc", URL)
    assert str(err.value).startswith(f"{URL} is a sha512sum line for containerd-shim-runsc-v1, not for runsc")


# --- containerd_gvisor_release_checksums ----------------------------------------------


RELEASE_URL = "https://example.invalid/release/20221219.0/x86_64"
LOOSE = ["runsc", "containerd-shim-runsc-v1"]


def test_release_checksums_from_published_sha512_files():
    published = {"runsc": f"{DIGEST}  runsc\n", "containerd-shim-runsc-v1": f"{'CD' * 64}  containerd-shim-runsc-v1\n"}
    assert filters.containerd_gvisor_release_checksums(LOOSE, {}, published, RELEASE_URL) == {
        "runsc": DIGEST,
        "containerd-shim-runsc-v1": "cd" * 64,
    }


def test_release_checksums_prefer_pinned_ones():
    published = {"runsc": "<html>not found</html>", "containerd-shim-runsc-v1": f"{DIGEST}  containerd-shim-runsc-v1"}
    pinned = {"runsc": "EF" * 64, "gvisor.tar.bz2": "00" * 64}
    assert filters.containerd_gvisor_release_checksums(LOOSE, pinned, published, RELEASE_URL) == {
        "runsc": "ef" * 64,
        "containerd-shim-runsc-v1": DIGEST,
    }


def test_release_checksums_name_the_bad_sha512_url():
    with pytest.raises(AnsibleFilterError) as err:
        filters.containerd_gvisor_release_checksums(LOOSE, None, {"runsc": f"{DIGEST}  runsc"}, RELEASE_URL)
    assert str(err.value) == (
        f"{RELEASE_URL}/containerd-shim-runsc-v1.sha512 is not a sha512sum line for containerd-shim-runsc-v1: got ''"
    )


def test_release_checksums_name_the_bad_pinned_variable():
    with pytest.raises(AnsibleFilterError) as err:
        filters.containerd_gvisor_release_checksums(["gvisor.tar.bz2"], {"gvisor.tar.bz2": "abc"}, {}, RELEASE_URL)
    assert str(err.value) == (
        "containerd_gvisor_checksums.gvisor.tar.bz2 must be a sha512 checksum (128 hex digits), got 'abc'"
    )


# --- containerd_gvisor_merge_config: realistic configs -----------------------------


def test_merge_into_containerd_1_6_default_config_keeps_everything(fixture_text):
    text = fixture_text("containerd-1.6-v2.toml")
    result = merge(text)
    # Everything that was there stays byte for byte; the handler comes after it.
    assert result == text + "\n" + GVISOR_V2_TABLES
    assert without_gvisor(result) == tomllib.loads(text)
    assert gvisor_of(result) == {"runtime_type": "io.containerd.runsc.v1", "options": OPTIONS}


def test_merge_is_idempotent(fixture_text):
    once = merge(fixture_text("containerd-1.6-v2.toml"))
    assert merge(once) is once


def test_merge_into_a_containerd_2_version_3_config(fixture_text):
    text = fixture_text("containerd-2.0-v3.toml")
    result = merge(text)
    assert result.startswith(text)
    assert f"\n[{V3_TABLE}]\n" in result
    assert f"\n[{V3_TABLE}.options]\n" in result
    assert gvisor_of(result, 3)["options"] == OPTIONS
    assert without_gvisor(result, 3) == tomllib.loads(text)


def test_merge_into_a_version_1_config():
    text = '[plugins.cri.containerd]\n  snapshotter = "overlayfs"\n'
    result = merge(text, options=None)
    assert result == text + '\n[plugins.cri.containerd.runtimes.gvisor]\n  runtime_type = "io.containerd.runsc.v1"\n'


@pytest.mark.parametrize("text", [None, "", "  \n\n"])
def test_merge_into_a_missing_or_empty_file_writes_a_new_one(text):
    assert merge(text) == "version = 2\n\n" + GVISOR_V2_TABLES


def test_merge_into_a_missing_file_for_containerd_2():
    result = merge(None, new_version=3)
    assert result.startswith(f"version = 3\n\n[{V3_TABLE}]\n")
    assert gvisor_of(result, 3)["runtime_type"] == "io.containerd.runsc.v1"


def test_merge_keeps_a_users_extra_key_and_fixes_only_managed_ones():
    text = (
        "version = 2\n"
        "\n"
        f"[{V2_TABLE}]  # gVisor\n"
        '    pod_annotations = ["dev.gvisor.*"]\n'
        "    runtime_type = 'io.containerd.runc.v2'   # copied from runc\n"
        "\n"
        f"[{V2_TABLE}.options]\n"
        '    TypeUrl = "io.containerd.runsc.v1.options"\n'
        '    Debug = "yes"\n'
        "\n"
        "# The end.\n"
    )
    assert merge(text) == (
        "version = 2\n"
        "\n"
        f"[{V2_TABLE}]  # gVisor\n"
        '    pod_annotations = ["dev.gvisor.*"]\n'
        '    runtime_type = "io.containerd.runsc.v1"   # copied from runc\n'
        "\n"
        f"[{V2_TABLE}.options]\n"
        '    TypeUrl = "io.containerd.runsc.v1.options"\n'
        '    Debug = "yes"\n'
        '    ConfigPath = "/etc/containerd/runsc.toml"\n'
        "\n"
        "# The end.\n"
    )


def test_merge_leaves_a_correct_config_untouched_even_if_spelled_differently():
    text = (
        "version = 2\n"
        "[plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.gvisor]\n"
        "runtime_type = 'io.containerd.runsc.v1'\n"
        "options = { TypeUrl = 'io.containerd.runsc.v1.options', ConfigPath = '/etc/containerd/runsc.toml' }\n"
    )
    assert merge(text) is text


def test_merge_adds_options_right_below_an_existing_handler_table():
    text = (
        "version = 2\n"
        "\n"
        f"[{V2_TABLE}]\n"
        '  runtime_type = "io.containerd.runsc.v1"\n'
        "\n"
        "[metrics]\n"
        '  address = ""\n'
    )
    assert merge(text) == (
        "version = 2\n"
        "\n"
        f"[{V2_TABLE}]\n"
        '  runtime_type = "io.containerd.runsc.v1"\n'
        "\n"
        f"[{V2_TABLE}.options]\n"
        '  TypeUrl = "io.containerd.runsc.v1.options"\n'
        '  ConfigPath = "/etc/containerd/runsc.toml"\n'
        "\n"
        "[metrics]\n"
        '  address = ""\n'
    )


@pytest.mark.parametrize(
    "header",
    [
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor]',
        "[plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.gvisor]",
        "[plugins . 'io.containerd.grpc.v1.cri' . containerd.runtimes.\"gvisor\"]",
        '[ plugins."io.containerd.grpc.v1.cri"."containerd".runtimes.gvisor ]  # gVisor',
        '\t[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.\'gvisor\']',
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes."\\u0067visor"]',
    ],
)
def test_merge_recognises_every_spelling_of_the_table_header(header):
    text = f'version = 2\n{header}\n  runtime_type = "io.containerd.runc.v2"\n'
    result = merge(text, options=None)
    # The existing table is edited in place: no second table is added.
    assert result == text.replace("io.containerd.runc.v2", "io.containerd.runsc.v1")


def test_merge_keeps_crlf_line_endings():
    text = '# containerd\r\nversion = 2\r\n\r\n[grpc]\r\n  address = "/run/containerd/containerd.sock"\r\n'
    result = merge(text)
    assert result.startswith(text)
    assert "\n" not in result.replace("\r\n", "")
    assert gvisor_of(result)["options"] == OPTIONS


def test_merge_keeps_a_missing_final_newline():
    text = 'version = 2\n[grpc]\n  address = "/run/containerd/containerd.sock"'
    result = merge(text, options=None)
    assert result == text + f'\n\n[{V2_TABLE}]\n  runtime_type = "io.containerd.runsc.v1"'


def test_merge_follows_the_files_key_indentation():
    text = f'version = 2\n[{V2_TABLE}]\n    pod_annotations = []\n\n[grpc]\n    gid = 0\n'
    result = merge(text)
    assert f'[{V2_TABLE}]\n    pod_annotations = []\n    runtime_type = "io.containerd.runsc.v1"\n' in result
    assert f'[{V2_TABLE}.options]\n    TypeUrl = "io.containerd.runsc.v1.options"\n' in result


def test_merge_is_not_fooled_by_headers_inside_multi_line_values():
    text = (
        "version = 2\n"
        'banner = """\n'
        f"[{V2_TABLE}]\n"
        'runtime_type = "not a key"\n'
        '"""\n'
        "nested = [\n"
        '  ["gvisor"]\n'
        "]\n"
    )
    result = merge(text)
    assert result.startswith(text)
    assert tomllib.loads(result)["banner"] == tomllib.loads(text)["banner"]
    assert gvisor_of(result)["runtime_type"] == "io.containerd.runsc.v1"


def test_merge_replaces_a_multi_line_managed_value_whole():
    text = f'version = 2\n[{V2_TABLE}]\nruntime_type = """\nio.containerd.runc.v2"""  # old\nx = 1\n'
    result = merge(text, options=None)
    assert result == f'version = 2\n[{V2_TABLE}]\nruntime_type = "io.containerd.runsc.v1"  # old\nx = 1\n'


def test_merge_escapes_option_values():
    options = {"ConfigPath": 'C:\\odd "path"\n'}
    result = merge(None, options=options)
    assert gvisor_of(result)["options"] == options


def test_merge_with_another_handler_name_and_runtime_type():
    result = filters.containerd_gvisor_merge_config(
        None, PATH, "runsc-kvm", runtime_type="io.containerd.runsc.v1", options=None
    )
    assert tomllib.loads(result)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runsc-kvm"]


def test_merge_sets_runtime_path_for_a_shim_outside_path():
    shim = "/opt/bin/containerd-shim-runsc-v1"
    result = merge(None, runtime_path=shim)
    assert gvisor_of(result) == {"runtime_type": "io.containerd.runsc.v1", "runtime_path": shim, "options": OPTIONS}
    assert merge(result, runtime_path=shim) is result


def test_merge_with_an_empty_runtime_path_drops_the_old_one():
    text = (
        "version = 2\n"
        f"[{V2_TABLE}]\n"
        '  runtime_type = "io.containerd.runsc.v1"\n'
        '  runtime_path = "/opt/bin/containerd-shim-runsc-v1"  # old bin dir\n'
        '  pod_annotations = ["dev.gvisor.*"]\n'
    )
    result = merge(text, options=None, runtime_path="")
    assert result == text.replace('  runtime_path = "/opt/bin/containerd-shim-runsc-v1"  # old bin dir\n', "")
    assert merge(result, options=None, runtime_path="") is result


def test_merge_without_runtime_path_leaves_a_users_one_alone():
    text = f'version = 2\n[{V2_TABLE}]\n  runtime_type = "io.containerd.runsc.v1"\n  runtime_path = "/x"\n'
    assert merge(text, options=None) is text


# --- containerd_gvisor_merge_config: refusals ------------------------------------------


def refusal(text, **kwargs):
    """Return the message of the error that merging raises."""
    with pytest.raises(AnsibleFilterError) as err:
        merge(text, **kwargs)
    return str(err.value)


def test_merge_refuses_an_inline_table_handler():
    text = (
        "version = 2\n"
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\n'
        '  gvisor = { runtime_type = "io.containerd.runsc.v1" }\n'
    )
    message = refusal(text)
    assert message.startswith(f"cannot merge the gvisor runtime into {PATH} safely: ")
    assert message.endswith(f"; the file was left unchanged. Define {V2_TABLE} as a [table] or remove it.")


def test_merge_refuses_a_handler_defined_with_dotted_keys():
    text = (
        "version = 2\n"
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\n'
        '  gvisor.runtime_type = "io.containerd.runc.v2"\n'
    )
    assert refusal(text, options=None).startswith(f"cannot merge the gvisor runtime into {PATH} safely")


def test_merge_refuses_options_given_as_dotted_keys_of_the_handler():
    text = f'version = 2\n[{V2_TABLE}]\n  runtime_type = "io.containerd.runsc.v1"\n  options.TypeUrl = "x"\n'
    assert f"Define {V2_TABLE} as a [table] or remove it." in refusal(text)


def test_merge_refuses_invalid_toml_naming_the_path():
    message = refusal("version = 2\n[grpc\n")
    assert message.startswith(f"containerd config {PATH} is not valid TOML (")
    assert message.endswith("); it was left unchanged")


@pytest.mark.parametrize("version", ["5", "'2'", "2.0", "true"])
def test_merge_refuses_unsupported_versions_naming_the_path(version):
    message = refusal(f"version = {version}\n")
    assert message.startswith(f"containerd config {PATH} has version ")
    assert message.endswith("supported containerd config versions are 1, 2, 3 and 4")


def test_merge_refuses_options_that_are_not_strings():
    assert refusal(None, options={"Debug": True}) == (
        "containerd_gvisor_merge_config options.Debug must be a string, got bool"
    )
    assert "must be a mapping" in refusal(None, options=["TypeUrl"])


def test_merge_refuses_a_runtimes_value_that_is_not_a_table():
    text = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  runtimes = "none"\n'
    assert "runtimes is not a table" in refusal(text)


# --- containerd_gvisor_remove_handler --------------------------------------------------


@pytest.mark.parametrize("name", ["containerd-1.6-v2.toml", "containerd-2.0-v3.toml"])
def test_remove_undoes_merge_exactly(fixture_text, name):
    text = fixture_text(name)
    assert filters.containerd_gvisor_remove_handler(merge(text), PATH, "gvisor") == text


def test_remove_takes_all_sub_tables_and_keeps_the_rest():
    text = (
        "version = 2\n"
        "\n"
        f"[{V2_TABLE}]\n"
        '  runtime_type = "io.containerd.runsc.v1"\n'
        "\n"
        f"[{V2_TABLE}.options]\n"
        '  TypeUrl = "io.containerd.runsc.v1.options"\n'
        "\n"
        f"  [{V2_TABLE}.options.extra]\n"
        "    a = 1\n"
        "\n"
        "# metrics go here\n"
        "[metrics]\n"
        '  address = ""\n'
    )
    assert filters.containerd_gvisor_remove_handler(text, PATH, "gvisor") == (
        'version = 2\n\n# metrics go here\n[metrics]\n  address = ""\n'
    )


def test_remove_leaves_parent_tables_alone():
    text = (
        "version = 2\n"
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\n'
        "\n"
        f"[{V2_TABLE}]\n"
        '  runtime_type = "io.containerd.runsc.v1"\n'
    )
    result = filters.containerd_gvisor_remove_handler(text, PATH, "gvisor")
    assert result == 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\n'


def test_remove_without_the_handler_returns_the_text_unchanged(fixture_text):
    text = fixture_text("containerd-1.6-v2.toml")
    assert filters.containerd_gvisor_remove_handler(text, PATH, "gvisor") is text
    assert filters.containerd_gvisor_remove_handler(None, PATH, "gvisor") is None


def test_remove_refuses_an_inline_table_handler():
    text = (
        "version = 2\n"
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\n'
        '  gvisor = { runtime_type = "io.containerd.runsc.v1" }\n'
    )
    with pytest.raises(AnsibleFilterError) as err:
        filters.containerd_gvisor_remove_handler(text, PATH, "gvisor")
    assert str(err.value).startswith(f"cannot remove the gvisor runtime from {PATH} safely: ")
    assert str(err.value).endswith("; the file was left unchanged. "
                                   f"Define {V2_TABLE} as a [table] or remove it by hand.")


def test_remove_refuses_invalid_toml_naming_the_path():
    with pytest.raises(AnsibleFilterError, match=f"^containerd config {PATH} is not valid TOML"):
        filters.containerd_gvisor_remove_handler("[[[", PATH, "gvisor")


# --- versions, tables and cgroups -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "version"),
    [(None, None), ("", None), ("[grpc]\n", 1), ("version = 2\n", 2), ("version = 3\n", 3)],
)
def test_config_version(text, version):
    assert filters.containerd_gvisor_config_version(text, PATH) == version


def test_config_version_errors_name_the_path():
    with pytest.raises(AnsibleFilterError, match=f"^containerd config {PATH} is not valid TOML"):
        filters.containerd_gvisor_config_version("version = ", PATH)
    with pytest.raises(AnsibleFilterError, match=f"^containerd config {PATH} has version 7;"):
        filters.containerd_gvisor_config_version("version = 7", PATH)


@pytest.mark.parametrize(
    ("version", "table"),
    [
        (1, "plugins.cri.containerd.runtimes.gvisor"),
        (2, V2_TABLE),
        ("2", V2_TABLE),
        (3, V3_TABLE),
        (4, V3_TABLE),
    ],
)
def test_handler_table(version, table):
    assert filters.containerd_gvisor_handler_table(version, "gvisor") == table


def test_handler_table_refuses_unknown_versions():
    with pytest.raises(AnsibleFilterError, match="supported containerd config versions are 1, 2, 3 and 4"):
        filters.containerd_gvisor_handler_table(5, "gvisor")


def test_uses_systemd_cgroup(fixture_text):
    assert filters.containerd_gvisor_uses_systemd_cgroup(fixture_text("containerd-1.6-v2.toml"), PATH) is True
    assert filters.containerd_gvisor_uses_systemd_cgroup(fixture_text("containerd-2.0-v3.toml"), PATH) is False
    assert filters.containerd_gvisor_uses_systemd_cgroup(None, PATH) is False
    assert filters.containerd_gvisor_uses_systemd_cgroup("", PATH) is False


def test_uses_systemd_cgroup_looks_at_runc_runtimes_only():
    runtimes = '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes'
    custom_runc = f'version = 2\n{runtimes}.custom]\n  runtime_type = "io.containerd.runc.v2"\n' \
                  f"{runtimes}.custom.options]\n  SystemdCgroup = true\n"
    other = f'version = 2\n{runtimes}.kata]\n  runtime_type = "io.containerd.kata.v2"\n' \
            f"{runtimes}.kata.options]\n  SystemdCgroup = true\n"
    assert filters.containerd_gvisor_uses_systemd_cgroup(custom_runc, PATH) is True
    assert filters.containerd_gvisor_uses_systemd_cgroup(other, PATH) is False


def test_handler_runtime_type(fixture_text):
    merged = merge(fixture_text("containerd-2.0-v3.toml"))
    assert filters.containerd_gvisor_handler_runtime_type(merged, "containerd config dump", "gvisor") == (
        "io.containerd.runsc.v1"
    )
    assert filters.containerd_gvisor_handler_runtime_type(merged, "containerd config dump", "runc") == (
        "io.containerd.runc.v2"
    )
    assert filters.containerd_gvisor_handler_runtime_type(merged, "containerd config dump", "kata") == ""
    assert filters.containerd_gvisor_handler_runtime_type("", "containerd config dump", "gvisor") == ""
    with pytest.raises(AnsibleFilterError, match="^containerd config containerd config dump is not valid TOML"):
        filters.containerd_gvisor_handler_runtime_type("time=... level=warning", "containerd config dump", "gvisor")


# --- containerd_gvisor_runsc_toml ----------------------------------------------------------


def test_runsc_toml_renders_flags_as_sorted_strings():
    rendered = filters.containerd_gvisor_runsc_toml(
        {"systemd-cgroup": True, "debug": "true", "debug-log": "/var/log/runsc/%ID%/", "watchdog_x": 3, "f": 0.5,
         "overlay2": False}
    )
    assert rendered == (
        "# Managed by Ansible (containerd_gvisor role): runsc flags for the containerd shim.\n"
        "[runsc_config]\n"
        '  debug = "true"\n'
        '  debug-log = "/var/log/runsc/%ID%/"\n'
        '  f = "0.5"\n'
        '  overlay2 = "false"\n'
        '  systemd-cgroup = "true"\n'
        '  watchdog_x = "3"\n'
    )
    assert all(isinstance(v, str) for v in tomllib.loads(rendered)["runsc_config"].values())


@pytest.mark.parametrize("config", [{}, None])
def test_runsc_toml_without_flags_still_has_the_table(config):
    assert filters.containerd_gvisor_runsc_toml(config) == (
        "# Managed by Ansible (containerd_gvisor role): runsc flags for the containerd shim.\n[runsc_config]\n"
    )


def test_runsc_toml_with_binary_name():
    rendered = filters.containerd_gvisor_runsc_toml({"debug": True}, binary_name="/opt/bin/runsc")
    assert rendered == (
        "# Managed by Ansible (containerd_gvisor role): runsc flags for the containerd shim.\n"
        'binary_name = "/opt/bin/runsc"\n'
        "[runsc_config]\n"
        '  debug = "true"\n'
    )
    assert tomllib.loads(rendered) == {"binary_name": "/opt/bin/runsc", "runsc_config": {"debug": "true"}}


def test_runsc_toml_escapes_strings():
    config = {"net-raw": 'a "quoted" \\ value'}
    assert tomllib.loads(filters.containerd_gvisor_runsc_toml(config))["runsc_config"] == config


@pytest.mark.parametrize(("value", "kind"), [(["a"], "list"), ({"a": 1}, "dict"), (None, "null")])
def test_runsc_toml_refuses_non_scalars(value, kind):
    with pytest.raises(AnsibleFilterError) as err:
        filters.containerd_gvisor_runsc_toml({"debug": value}, "my_flags")
    assert str(err.value) == (
        f"my_flags.debug must be a string, number or boolean (runsc flags are strings), got {kind}"
    )


@pytest.mark.parametrize("key", ["Debug", "-debug", "debug log", "debug.log", ""])
def test_runsc_toml_refuses_keys_that_are_not_flag_names(key):
    with pytest.raises(AnsibleFilterError, match=r"^containerd_gvisor_runsc_config key .* is not a runsc flag name"):
        filters.containerd_gvisor_runsc_toml({key: "1"})


def test_runsc_toml_refuses_a_list():
    with pytest.raises(AnsibleFilterError, match="^containerd_gvisor_runsc_config must be a mapping"):
        filters.containerd_gvisor_runsc_toml(["debug"])


# --- through Ansible ------------------------------------------------------------------------


def test_filters_work_inside_ansible(tmp_path):
    """The plugin loads in ansible-core and its errors reach the user as written."""
    ansible = Path(sys.executable).with_name("ansible")
    if not ansible.exists():
        pytest.skip("ansible is not installed beside this Python")
    expression = (
        "{{ ['yes' | gvisor_nodes.containerd_gvisor.bool('v'), "
        "2 | gvisor_nodes.containerd_gvisor.handler_table('gvisor'), "
        "none | gvisor_nodes.containerd_gvisor.merge_config('/etc/c.toml', 'gvisor') | gvisor_nodes.containerd_gvisor.config_version('x')] }}"
    )
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / "playbooks" / "collections"), ANSIBLE_LOCAL_TEMP=str(tmp_path),
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(
        [str(ansible), "localhost", "-c", "local", "-m", "debug", "-a", f"msg={expression}"],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    task = json.loads(proc.stdout)["plays"][0]["tasks"][0]
    assert task["hosts"]["localhost"]["msg"] == [True, V2_TABLE, 2]

    proc = subprocess.run(
        [str(ansible), "localhost", "-c", "local", "-m", "debug", "-a",
         "msg={{ 'ture' | gvisor_nodes.containerd_gvisor.bool('v') }}"],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )
    assert proc.returncode != 0
    assert "v must be a boolean (true or false" in proc.stdout + proc.stderr


# --- failure messages ------------------------------------------------------------------------


def test_failure_message_of_a_task():
    assert filters.containerd_gvisor_failure_message({"failed": True, "msg": "GET url failed: HTTP 500"}) == (
        "GET url failed: HTTP 500"
    )


def test_failure_message_of_a_loop_names_every_failed_item_once():
    result = {"failed": True, "msg": "One or more items failed", "results": [
        {"failed": False, "msg": "fine"},
        {"failed": True, "msg": "runsc from url does not match its checksum"},
        {"skipped": True},
        {"failed": True, "msg": "GET shim failed: HTTP 404 Not Found"},
        {"failed": True, "msg": "GET shim failed: HTTP 404 Not Found"},
    ]}
    assert filters.containerd_gvisor_failure_message(result) == (
        "runsc from url does not match its checksum; GET shim failed: HTTP 404 Not Found"
    )


def test_failure_message_without_any_message():
    assert filters.containerd_gvisor_failure_message({"failed": True}) == "the task failed without a message"
    assert filters.containerd_gvisor_failure_message({"results": [{"failed": True}], "msg": "outer"}) == "outer"
