"""Tests of the filters that read and edit containerd's config.toml (plugins/filter/containerd_config.py)."""

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
from unit_support import REPO

PATH = "/etc/containerd/config.toml"
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


def test_runtime_types(fixture_text):
    merged = merge(fixture_text("containerd-2.0-v3.toml"))
    assert filters.runtime_types(merged, "containerd config dump") == {
        "gvisor": "io.containerd.runsc.v1", "runc": "io.containerd.runc.v2"}
    assert filters.runtime_types("", "containerd config dump") == {}
    with pytest.raises(AnsibleFilterError, match="^containerd config containerd config dump is not valid TOML"):
        filters.runtime_types("time=... level=warning", "containerd config dump")


# --- merge_config: several handlers at once ---------------------------------------------------


HANDLERS = [{"name": "gvisor", "runsc_config_path": "/etc/containerd/runsc.toml"},
            {"name": "gvisor-debug", "runsc_config_path": "/etc/containerd/runsc-debug.toml"}]


def test_merge_config_adds_each_handler_with_its_own_runsc_toml(fixture_text):
    text = fixture_text("containerd-1.6-v2.toml")
    merged = filters.merge_config(text, PATH, HANDLERS)
    runtimes = tomllib.loads(merged)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    for handler in HANDLERS:
        assert runtimes[handler["name"]] == {"runtime_type": "io.containerd.runsc.v1", "options": {
            "TypeUrl": "io.containerd.runsc.v1.options", "ConfigPath": handler["runsc_config_path"]}}
    assert merged.startswith(text.rstrip("\n"))  # every byte of the file is still there, first
    assert filters.merge_config(merged, PATH, HANDLERS) == merged  # nothing more to do


def test_merge_config_takes_out_a_handler_no_longer_wanted_and_keeps_the_other(fixture_text):
    text = fixture_text("containerd-2.0-v3.toml")
    both = filters.merge_config(text, PATH, HANDLERS, new_version=3)
    one = filters.merge_config(both, PATH, HANDLERS[:1], remove=["gvisor-debug"])
    assert one == filters.merge_config(text, PATH, HANDLERS[:1], new_version=3)
    assert filters.merge_config(one, PATH, remove=["gvisor"]) == text  # removal undoes the merge byte for byte


def test_merge_config_sets_runtime_path_outside_containerds_path():
    merged = filters.merge_config("", PATH, HANDLERS[:1], runtime_path="/opt/bin/containerd-shim-runsc-v1")
    assert tomllib.loads(merged)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["gvisor"][
        "runtime_path"] == "/opt/bin/containerd-shim-runsc-v1"


def test_merge_config_names_the_missing_library(monkeypatch):
    monkeypatch.setattr(filters, "TOMLKIT_ERROR", ImportError("No module named 'tomlkit'"))
    with pytest.raises(AnsibleFilterError, match="needs the Python library tomlkit on the control node"):
        filters.merge_config("", PATH, HANDLERS)


# --- through Ansible ------------------------------------------------------------------------


def ansible_debug(expression, tmp_path, variables=None):
    """Evaluate an expression with the collection's filters inside ansible-core."""
    ansible = Path(sys.executable).with_name("ansible")
    environment = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / "playbooks" / "collections"),
                       ANSIBLE_LOCAL_TEMP=str(tmp_path), ANSIBLE_STDOUT_CALLBACK="json",
                       ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([str(ansible), "localhost", "-c", "local", "-m", "debug", "-a", json.dumps({"msg": expression}),
                           "-e", json.dumps(variables or {})],
                          capture_output=True, text=True, env=environment, check=False, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_filters_work_inside_ansible(tmp_path):
    rc, out, err = ansible_debug(
        "{{ '' | gvisor_nodes.containerd_gvisor.merge_config('/etc/c.toml', [{'name': 'gvisor', "
        "'runsc_config_path': '/etc/containerd/runsc.toml'}]) | gvisor_nodes.containerd_gvisor.runtime_types('x') }}",
        tmp_path)
    assert rc == 0, out + err
    assert json.loads(out)["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"] == {"gvisor": "io.containerd.runsc.v1"}

    rc, out, err = ansible_debug("{{ 'version = 2\\n[x' | gvisor_nodes.containerd_gvisor.merge_config('/etc/c.toml', remove=['gvisor']) }}", tmp_path)
    assert rc != 0
    assert "containerd config /etc/c.toml is not valid TOML" in out + err


def test_runsc_toml_template_writes_flags_and_shim_options_as_toml_strings(tmp_path):
    template = REPO / "roles" / "containerd_gvisor" / "templates" / "runsc.toml.j2"
    handler = {"name": "gvisor-debug", "shim_config": {"log_level": "debug", "log_path": "/var/log/runsc/%ID%/shim.log"}}
    flags = {"platform": "systrap", "debug": "true", "debug-log": 'C:\\odd "path"\n'}
    rc, out, err = ansible_debug(f"{{{{ lookup('ansible.builtin.template', '{template}', template_vars=given) }}}}", tmp_path,
                                 {"given": {"handler": handler, "flags": flags, "binary_name": "/opt/bin/runsc"}})
    assert rc == 0, out + err
    text = json.loads(out)["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]
    assert tomllib.loads(text) == {"binary_name": "/opt/bin/runsc", "log_level": "debug",
                                   "log_path": "/var/log/runsc/%ID%/shim.log", "runsc_config": flags}
    assert 'runtime handler "gvisor-debug"' in text
