"""How containerd's configuration changes (plugins/plugin_utils/containerd_config.py).

What is asserted is what a user relies on: the parsed data is the old data plus (or minus) the handlers'
keys, every line of the user's file outside the managed tables is still there in order, comments
included, and a removal gives back what was there. Quoting and indentation are not part of it.
"""

from __future__ import annotations

import copy
import tomllib

import pytest

from unit_support import FIXTURES, REPO, collection_module

cc = collection_module("plugins.plugin_utils.containerd_config")

CONFIG = "/etc/containerd/config.toml"
DROPIN = "/etc/containerd/conf.d/gvisor.toml"
RUNSC_TOML = "/etc/containerd/runsc.toml"
V2 = ("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes")
V3 = ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes")
GVISOR = {"runtime_type": "io.containerd.runsc.v1",
          "options": {"TypeUrl": "io.containerd.runsc.v1.options", "ConfigPath": RUNSC_TOML}}
WANTED = {"gvisor": cc.handler_table(RUNSC_TOML)}
TWO = {"gvisor": cc.handler_table(RUNSC_TOML), "gvisor-debug": cc.handler_table("/etc/containerd/runsc-debug.toml")}

KUBEADM = (REPO / "tests" / "fixtures" / "containerd" / "bookworm-v2.toml").read_text()
SID_V3 = (REPO / "tests" / "fixtures" / "containerd" / "sid-v3.toml").read_text()
DEBIAN = (FIXTURES / "debian-packaged-config.toml").read_text()
DEFAULTS_16 = (FIXTURES / "containerd-1.6-config-default.toml").read_text()


def edit_1x(text, wanted=None, remove=(), defaults=DEFAULTS_16, imported=None):
    """config.toml's new text on containerd 1.7 (the text itself when nothing changes); the gvisor handler by default."""
    wanted = WANTED if wanted is None else wanted
    return cc.changes("1.7.24", CONFIG, text, DROPIN, None, imported or {}, wanted, list(remove), defaults).get(CONFIG, text)


def edit_2x(text, wanted=None, remove=(), dropin=None, imported=None, containerd="2.1.9"):
    wanted = WANTED if wanted is None else wanted
    return cc.changes(containerd, CONFIG, text, DROPIN, dropin, imported or {}, wanted, list(remove), "")


def dig(data, path):
    for key in path:
        data = data[key]
    return data


def with_runtimes(data, path, **runtimes):
    """A copy of data with these runtimes set (None: taken out)."""
    data = copy.deepcopy(data)
    for name, table in runtimes.items():
        cc.set_table(data, path + (name,), table)
    return data


def assert_lines_kept(original, result):
    """Every line of the original is still in the result, in the same order."""
    lines = iter(result.splitlines())
    for line in original.splitlines():
        assert any(candidate == line for candidate in lines), f"lost or reordered: {line!r}"


# --- containerd 1.x: the handlers in config.toml ----------------------------------------------------------------


def test_1x_adds_the_handler_and_keeps_every_line_of_a_kubeadm_config():
    result = edit_1x(KUBEADM)
    assert tomllib.loads(result) == with_runtimes(tomllib.loads(KUBEADM), V2, gvisor=GVISOR)
    assert_lines_kept(KUBEADM, result)


def test_1x_is_idempotent_and_removal_gives_back_the_file_byte_for_byte():
    once = edit_1x(KUBEADM)
    assert edit_1x(once) == once
    assert edit_1x(once, wanted={}, remove=["gvisor"]) == KUBEADM


def test_1x_debian_stock_file_gets_containerds_own_runc_and_absent_gives_the_stock_file_back():
    result = edit_1x(DEBIAN)
    runtimes = dig(tomllib.loads(result), V2)
    assert runtimes["runc"] == dig(tomllib.loads(DEFAULTS_16), V2)["runc"]  # 1.x drops its built-in runc otherwise
    assert runtimes["gvisor"] == GVISOR
    assert_lines_kept(DEBIAN, result)
    assert edit_1x(result, wanted={}, remove=["gvisor"]) == DEBIAN


def test_1x_removal_keeps_runc_while_another_runtime_still_needs_it():
    kata = DEBIAN + '\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]\n  runtime_type = "io.containerd.kata.v2"\n'
    with_gvisor = edit_1x(kata)
    result = edit_1x(with_gvisor, wanted={}, remove=["gvisor"])
    runtimes = dig(tomllib.loads(result), V2)
    assert set(runtimes) == {"kata", "runc"}
    assert edit_1x(result, wanted={}, remove=["gvisor"]) == result


def test_1x_custom_default_runtime_name_is_respected():
    text = ('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  default_runtime_name = "crun"\n'
            '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]\n  runtime_type = "io.containerd.runc.v2"\n')
    assert set(dig(tomllib.loads(edit_1x(text)), V2)) == {"crun", "gvisor"}


def test_1x_missing_file_is_created_with_runc_and_the_handler():
    result = edit_1x(None)
    data = tomllib.loads(result)
    assert data["version"] == 2 and set(dig(data, V2)) == {"runc", "gvisor"}
    # Taking gVisor off deletes the file the role created.
    assert cc.changes("1.7.24", CONFIG, result, DROPIN, None, {}, {}, ["gvisor"], DEFAULTS_16) == {CONFIG: None}


def test_1x_a_config_that_already_holds_the_handler_is_left_exactly_as_it_is():
    # As kubespray's template writes it through containerd_additional_runtimes: quoted differently, inline options.
    text = ("version = 2\n"
            "[plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.runc]\n  runtime_type = 'io.containerd.runc.v2'\n"
            "[plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.gvisor]\n"
            "  runtime_type = 'io.containerd.runsc.v1'\n  pod_annotations = ['dev.gvisor.*']\n"
            "  options = { TypeUrl = 'io.containerd.runsc.v1.options', ConfigPath = '/etc/containerd/runsc.toml' }\n")
    assert cc.changes("1.7.24", CONFIG, text, DROPIN, None, {}, WANTED, [], DEFAULTS_16) == {}


def test_1x_a_users_table_of_the_same_name_is_replaced_keeping_its_extra_keys():
    text = ('version = 2\n\n# gVisor, set up by hand\n'
            '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n  runtime_type = "io.containerd.runc.v2"\n\n'
            '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor]  # gVisor\n'
            '    pod_annotations = ["dev.gvisor.*"]\n    runtime_type = \'io.containerd.runc.v2\'   # copied from runc\n\n'
            '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor.options]\n    Debug = "yes"\n\n'
            "# The end.\n[metrics]\n  address = \"\"\n")
    result = edit_1x(text)
    gvisor = dig(tomllib.loads(result), V2)["gvisor"]
    assert gvisor == {"pod_annotations": ["dev.gvisor.*"], **GVISOR, "options": {"Debug": "yes", **GVISOR["options"]}}
    assert tomllib.loads(result) == with_runtimes(tomllib.loads(text), V2, gvisor=gvisor)
    for line in ("# gVisor, set up by hand", "# The end.", "[metrics]", '  address = ""'):
        assert line in result.splitlines()


@pytest.mark.parametrize("header", [
    "[plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.gvisor]",
    "[plugins . 'io.containerd.grpc.v1.cri' . containerd.runtimes.\"gvisor\"]",
    '[ plugins."io.containerd.grpc.v1.cri"."containerd".runtimes.gvisor ]  # gVisor',
    '\t[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.\'gvisor\']',
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes."\\u0067visor"]',
])
def test_1x_every_spelling_of_the_handlers_header_is_found(header):
    text = f'version = 2\n{header}\n  runtime_type = "io.containerd.runc.v2"\n[grpc]\n  gid = 0\n'
    result = edit_1x(text, defaults="")
    assert result.count("gvisor]") == 1  # no second table: the old one went
    assert dig(tomllib.loads(result), V2)["gvisor"] == GVISOR
    assert tomllib.loads(result)["grpc"] == {"gid": 0}


def test_1x_headers_inside_multi_line_values_are_not_tables():
    text = ('version = 2\nbanner = """\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor]\n'
            'runtime_type = "not a key"\n"""\nnested = [\n  ["gvisor"]\n]\n')
    result = edit_1x(text, defaults="")
    assert tomllib.loads(result)["banner"] == tomllib.loads(text)["banner"]
    assert tomllib.loads(result)["nested"] == [["gvisor"]]
    assert dig(tomllib.loads(result), V2)["gvisor"] == GVISOR


def test_1x_keeps_crlf_line_endings_and_a_missing_final_newline():
    text = '# containerd\r\nversion = 2\r\n\r\n[grpc]\r\n  address = "/run/containerd/containerd.sock"'
    result = edit_1x(text, defaults="")
    assert "\n" not in result.replace("\r\n", "")
    assert result.startswith(text)
    assert dig(tomllib.loads(result), V2)["gvisor"] == GVISOR


def test_1x_sets_runtime_path_for_a_shim_outside_containerds_path_and_drops_it_again():
    shim = "/opt/bin/containerd-shim-runsc-v1"
    result = edit_1x(DEBIAN, wanted={"gvisor": cc.handler_table(RUNSC_TOML, shim)})
    assert dig(tomllib.loads(result), V2)["gvisor"]["runtime_path"] == shim
    assert "runtime_path" not in dig(tomllib.loads(edit_1x(result)), V2)["gvisor"]


def test_1x_a_handler_no_longer_wanted_leaves_and_the_other_stays():
    both = edit_1x(KUBEADM, wanted=TWO)
    one = edit_1x(both, wanted={"gvisor": TWO["gvisor"]}, remove=["gvisor-debug"])
    assert set(dig(tomllib.loads(one), V2)) == {"runc", "kata", "gvisor"}
    assert one == edit_1x(KUBEADM)


@pytest.mark.parametrize("text, line", [
    ('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\n  gvisor = { runtime_type = "x" }\n', 3),
    ('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\n  gvisor.runtime_type = "x"\n', 3),
], ids=["inline", "dotted"])
def test_1x_an_inline_or_dotted_handler_is_refused_naming_the_line(text, line):
    with pytest.raises(cc.ConfigError) as refusal:
        edit_1x(text)
    assert str(refusal.value).startswith(f"cannot merge the gvisor runtime into {CONFIG} safely: the table at line {line}")
    assert "Define plugins.io.containerd.grpc.v1.cri" not in str(refusal.value)  # the dotted name keeps its quotes
    assert 'Define plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor as a [table] or remove it.' in str(refusal.value)


def test_1x_an_imported_file_that_holds_the_cri_section_is_refused_naming_it():
    imported = {"/etc/containerd/conf.d/99-nvidia.toml": 'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  x = 1\n'}
    with pytest.raises(cc.ConfigError, match="replaces the whole CRI plugin section of .* with the one in "
                                             "/etc/containerd/conf.d/99-nvidia.toml"):
        edit_1x(KUBEADM, imported=imported)


@pytest.mark.parametrize("text, message", [
    ("version = 2\n[grpc\n", f"{CONFIG} is not valid TOML ("),
    ("\ufeffversion = 2\n", "byte order mark"),
    ("version = 5\n", "has version 5; supported containerd config versions are 1, 2, 3 and 4"),
    ('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  runtimes = "none"\n', "is not a table"),
    (f"version = 2\n{cc.BEGIN_LINE}\n[x]\n", "the block between"),
])
def test_1x_files_that_cannot_be_edited_safely_are_refused(text, message):
    with pytest.raises(cc.ConfigError) as refusal:
        edit_1x(text)
    assert message in str(refusal.value)


def test_values_are_escaped_and_characters_outside_the_bmp_stay_valid_toml():
    odd = 'C:\\odd "path"\n\U0001F600\x7f'
    result = edit_1x(None, wanted={"gvisor": cc.handler_table(odd)}, defaults="")
    assert dig(tomllib.loads(result), V2)["gvisor"]["options"]["ConfigPath"] == odd
    assert "\\ud83d" not in result


# --- containerd 2.x: a drop-in of the main file's version -------------------------------------------------------


@pytest.mark.parametrize("main, version, path", [(SID_V3, 3, V3), (DEBIAN, 2, V2)], ids=["v3", "v2"])
def test_2x_handlers_go_into_a_drop_in_of_the_main_files_version(main, version, path):
    changed = edit_2x(main, wanted=TWO)
    dropin = tomllib.loads(changed[DROPIN])
    assert dropin["version"] == version
    assert dig(dropin, path) == {"gvisor": GVISOR, "gvisor-debug": cc.merged(None, TWO["gvisor-debug"])}
    # config.toml gains the imports entry and nothing else.
    assert tomllib.loads(changed[CONFIG]) == {**tomllib.loads(main), "imports": [DROPIN]}
    assert_lines_kept(main, changed[CONFIG])


def test_2x_a_main_file_that_imports_conf_d_is_not_touched():
    main = SID_V3.replace("version = 3\n", 'version = 3\nimports = ["/etc/containerd/conf.d/*.toml"]\n')
    assert set(edit_2x(main)) == {DROPIN}
    relative = SID_V3.replace("version = 3\n", "version = 3\nimports = ['conf.d/*.toml']\n")
    assert set(edit_2x(relative)) == {DROPIN}


def test_2x_an_existing_imports_list_gains_the_drop_in_and_removal_takes_only_it_out():
    main = SID_V3.replace("version = 3\n", 'version = 3\nimports = [\n  "/etc/containerd/extra.toml",\n]\n')
    changed = edit_2x(main)
    assert tomllib.loads(changed[CONFIG])["imports"] == ["/etc/containerd/extra.toml", DROPIN]
    removed = edit_2x(changed[CONFIG], wanted={}, remove=["gvisor"], dropin=changed[DROPIN])
    assert removed[DROPIN] is None
    assert tomllib.loads(removed[CONFIG]) == tomllib.loads(main)


def test_2x_is_idempotent_and_removal_gives_back_the_main_file_byte_for_byte():
    changed = edit_2x(SID_V3)
    assert edit_2x(changed[CONFIG], dropin=changed[DROPIN]) == {}
    removed = edit_2x(changed[CONFIG], wanted={}, remove=["gvisor"], dropin=changed[DROPIN])
    assert removed == {CONFIG: SID_V3, DROPIN: None}


def test_2x_image_builders_bare_gvisor_table_moves_out_of_config_toml():
    # image-builder's template: conf.d imported, and a gvisor runtime without options.
    main = ('version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n\n[plugins."io.containerd.grpc.v1.cri".containerd]\n'
            '  default_runtime_name = "runc"\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
            '  runtime_type = "io.containerd.runc.v2"\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor]\n'
            '  runtime_type = "io.containerd.runsc.v1"\n\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = ""\n')
    changed = edit_2x(main)
    assert "gvisor" not in dig(tomllib.loads(changed[CONFIG]), V2)
    assert tomllib.loads(changed[CONFIG]) == with_runtimes(tomllib.loads(main), V2, gvisor=None)
    assert dig(tomllib.loads(changed[DROPIN]), V2) == {"gvisor": GVISOR}


def test_2x_handlers_an_install_on_containerd_1x_wrote_move_into_the_drop_in():
    on_1x = edit_1x(KUBEADM)
    changed = edit_2x(on_1x)
    assert changed[CONFIG].replace('imports = ["/etc/containerd/conf.d/gvisor.toml"]\n', "") == KUBEADM
    assert dig(tomllib.loads(changed[DROPIN]), V2) == {"gvisor": GVISOR}


def test_2x_another_imported_file_defining_the_handler_is_refused_naming_it():
    other = "/etc/containerd/conf.d/10-other.toml"
    with pytest.raises(cc.ConfigError, match=f"{other}, which {CONFIG} imports, defines runtime handler gvisor too"):
        edit_2x(SID_V3, imported={other: 'version = 3\n[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.gvisor]\n'})


def test_2x_without_a_config_toml_one_is_created_that_imports_the_drop_in_and_absent_deletes_both():
    changed = edit_2x(None)
    assert tomllib.loads(changed[CONFIG]) == {"version": 3, "imports": [DROPIN]}
    assert tomllib.loads(changed[DROPIN])["version"] == 3
    assert tomllib.loads(edit_2x(None, containerd="2.3.0")[CONFIG])["version"] == 4
    assert edit_2x(changed[CONFIG], wanted={}, remove=["gvisor"], dropin=changed[DROPIN]) == {CONFIG: None, DROPIN: None}


def test_imports_entries_match_as_go_globs():
    assert cc.covers("/etc/containerd/conf.d/*.toml", DROPIN)
    assert not cc.covers("/etc/containerd/*.toml", DROPIN)  # * does not cross a /
    assert cc.covers(cc.imported_path("conf.d/gvisor.toml", CONFIG), DROPIN)


def test_2x_a_main_file_without_a_version_is_refused_with_the_way_out():
    # containerd 2.x reads a version 1 file without its CRI settings, and would ignore the handlers too.
    with pytest.raises(cc.ConfigError, match="has no version .* containerd config migrate"):
        edit_2x('[plugins.cri.containerd]\n  snapshotter = "native"\n')
