"""Every decision of a run (plugins/plugin_utils/plan.py), from the role's inputs and what node_info read."""

from __future__ import annotations

import base64
import json
import tomllib

import pytest
import yaml

from unit_support import FIXTURES, REPO, ROLE, collection_module

plan = collection_module("plugins.plugin_utils.plan")

DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
DUMP_17 = (FIXTURES / "containerd-1.6-config-default.toml").read_text()
KUBEADM = (REPO / "tests" / "fixtures" / "containerd" / "bookworm-v2.toml").read_text()
ARCHIVE_SUM = "a" * 128
RUNSC_SUM, SHIM_SUM = "b" * 128, "c" * 128


def inputs(**overrides):
    """The role's variables as the tasks hand them over: the defaults, templated, plus overrides."""
    variables = {**DEFAULTS, "containerd_gvisor_enabled": True, "containerd_gvisor_runtime": True,
                 "containerd_gvisor_staging_dir": "/var/lib/containerd-gvisor/staging"}
    return {**variables, **{f"containerd_gvisor_{name}": value for name, value in overrides.items()}}


def read(text, mode="0644"):
    return {"exists": True, "content": base64.b64encode(text.encode() if isinstance(text, str) else text).decode(),
            "mode": mode, "owner": "root", "group": "root"}


def node(config=KUBEADM, containerd="1.7.24", files=None, record=None, **overrides):
    """What node_info returns for a trixie node with containerd running."""
    result = {"arch": "x86_64", "cpu_vendor": "GenuineIntel", "containerd": {"rc": 0, "version": containerd, "stderr": ""},
              "config": {**(read(config) if config is not None else {"exists": False}), "dump_rc": 0, "dump_error": "",
                         "dump": config or DUMP_17}, "imports": {}, "config_newer": False,
              "services": {"containerd": True, "docker": False}, "files": files or {}, "record": record or {},
              "handlers": {}, "record_problem": "" if record else "no gVisor release is recorded", "unfinished": "",
              "runsc_version": "", "devices": {"/dev/kvm": False}, "commands": {"ctr": "/usr/bin/ctr", "docker": ""},
              "staging_noexec": ""}
    return {**result, **overrides}


def installed(version="20240729", layout="loose", artifacts=None, runsc="runsc version 0.0~20240729.0"):
    """A node that recorded and verified a release."""
    url = f"https://storage.googleapis.com/gvisor/releases/release/{version}/x86_64"
    record = {"release": {"version": version, "channel": "release", "arch": "x86_64", "layout": layout, "url": url,
                          "artifacts": artifacts or {"runsc": RUNSC_SUM, "containerd-shim-runsc-v1": SHIM_SUM}}}
    return {"record": record, "record_problem": "", "runsc_version": runsc}


def answer(url, status, content="", item=None):
    """A uri result as the checksum tasks register it: its item is the release (or [release, file name])."""
    release = {"url": url.rsplit("/", 1)[0]}
    return {"item": item or release, "url": url, "status": status, "content": content}


def bucket_source(version, base):
    """A release in the bucket whose checksums are not known yet, as the first plan reports it."""
    return {"version": version, "arch": "x86_64", "url": base, "sums": f"{base}/gvisor.tar.bz2.sha512",
            "archive": "gvisor.tar.bz2", "loose": True, "layout": "", "artifacts": {}}


def archive_answers(base="https://storage.googleapis.com/gvisor/releases/release/latest/x86_64"):
    return [answer(f"{base}/gvisor.tar.bz2.sha512", 200, f"{ARCHIVE_SUM}  gvisor.tar.bz2\n")]


def run(variables=None, state_node=None, answers=None):
    """The plan as the tasks make it: once, and again with the mirror's answers when it asks for them."""
    variables = variables or inputs()
    state_node = state_node or node()
    first = plan.plan(variables, state_node)
    return plan.plan(variables, state_node, answers if answers is not None else archive_answers()) if first["ask"] else first


def refusal(function, *args):
    with pytest.raises(plan.Refusal) as err:
        function(*args)
    return str(err.value)


# --- inputs and node ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"version": "release-20240729.0"}, "is a git tag; the release bucket names releases without the prefix: use '20240729.0'"),
    ({"version": "20240729-rc1"}, "'20240729-rc1' is not a release name"),
    ({"version": "yyyymmdd"}, "(yyyymmdd is a placeholder)"),
    ({"mirror_url": "ftp://127.0.0.1/gvisor"}, "must be an http:// or https:// URL"),
    ({"mirror_url": "http://user:pass@mirror/gvisor"}, "holds credentials (user:password@): they would show in logs"),
    ({"checksums": {"runsc": "abc"}}, "containerd_gvisor_checksums.runsc must be a sha512 checksum (128 hex digits), got 'abc'"),
    ({"download_retries": 0}, "containerd_gvisor_download_retries must be positive"),
    ({"bin_dir": "opt/bin"}, "containerd_gvisor_bin_dir 'opt/bin' must be an absolute path"),
    ({"runtime_handler": "gVisor"}, "containerd_gvisor_runtime_handler 'gVisor' is not a valid handler name"),
    ({"runsc_config": {"debug": [True]}}, "containerd_gvisor_runsc_config.debug must be a string, number or boolean"),
    ({"runsc_config": {"debug": None}}, "got null"),
    ({"runsc_config": {"--debug": "true"}}, "is not a runsc flag name"),
    ({"handlers": [{"name": "a", "runsc_config_path": "/etc/a.toml"}, {"name": "a", "runsc_config_path": "/etc/b.toml"}]},
     "names a handler twice"),
    ({"handlers": [{"name": "a", "runsc_config_path": "/etc/x.toml"}, {"name": "b", "runsc_config_path": "/etc/x.toml"}]},
     "Handlers a and b share the runsc.toml /etc/x.toml: each handler needs a runsc_config_path of its own"),
    ({"handlers": [{"name": "a", "runsc_config_path": "/etc/a.toml", "shim_config": {"Log-Level": "x"}}]},
     "containerd_gvisor_handlers[0].shim_config key 'Log-Level' is not an option"),
])
def test_bad_inputs_are_refused_naming_the_variable(overrides, message):
    assert message in refusal(plan.plan, inputs(**overrides), node())


def test_every_input_problem_is_named_at_once():
    message = refusal(plan.plan, inputs(version="x", download_timeout=0), node())
    assert "containerd_gvisor_version 'x'" in message and "containerd_gvisor_download_timeout must be positive" in message


@pytest.mark.parametrize("overrides, state_node, message", [
    ({"arch": "amd64"}, node(), "no release for architecture 'amd64'"),
    ({}, {**node(), "containerd": {"rc": 127, "version": "", "stderr": "containerd: command not found"}},
     "containerd is not installed"),
    ({"platform": "kvm"}, node(), "A handler uses the kvm platform, but this node has no /dev/kvm"),
    ({"runsc_config": {"nvproxy": True}}, node(), "A handler uses nvproxy (GPU), but /dev/nvidiactl"),
    ({}, node(staging_noexec="/var/lib"), "is on a filesystem mounted noexec (/var/lib)"),
    ({}, node(config="version = 2\n[x"),
     "containerd cannot parse /etc/containerd/config.toml: failed to load TOML. The file was left unchanged"),
])
def test_a_node_that_cannot_run_gvisor_as_asked_is_refused(overrides, state_node, message):
    if state_node["config"].get("content") == base64.b64encode(b"version = 2\n[x").decode():
        state_node["config"].update(dump_rc=1, dump_error="failed to load TOML")
    assert message in refusal(plan.plan, inputs(**overrides), state_node)


def test_a_containerd_with_known_gvisor_bugs_is_a_warning():
    assert "containerd/issues/11871" in plan.plan(inputs(), node(containerd="2.1.1"))["warnings"][0]
    assert plan.plan(inputs(), node(containerd="2.1.9"))["warnings"] == []
    # Said once: not again by the plan made with the mirror's answers.
    assert run(inputs(), node(containerd="2.1.1"))["warnings"] == []


# --- where the release comes from ---------------------------------------------------------------------------------


def test_a_dated_release_the_node_has_needs_no_request_and_latest_always_asks():
    known = plan.plan(inputs(version="20240729"), node(**installed()))
    assert not known["ask"] and known["release"]["artifacts"] == {"runsc": RUNSC_SUM, "containerd-shim-runsc-v1": SHIM_SUM}
    latest = plan.plan(inputs(version="latest"), node(**installed(version="latest")))
    assert latest["ask"] and latest["release"]["artifacts"] == {}
    # A pin the record does not hold means asking again.
    pinned = inputs(version="20240729", checksums={"runsc": "d" * 128})
    assert plan.plan(pinned, node(**installed()))["ask"]


def test_pinned_checksums_need_no_request():
    result = plan.plan(inputs(checksums={"gvisor.tar.bz2": "A" * 128}), node())
    assert not result["ask"]
    assert {key: result["release"][key] for key in ("version", "arch", "layout", "url", "artifacts")} == {
        "version": "latest", "arch": "x86_64", "layout": "archive",
        "url": "https://storage.googleapis.com/gvisor/releases/release/latest/x86_64", "artifacts": {"gvisor.tar.bz2": "a" * 128}}


def test_checksums_of_the_archive_or_of_the_loose_files():
    base = "http://m/release/20240729/x86_64"
    source = bucket_source("20240729", base)
    archive = plan.with_checksums(source, [answer(f"{base}/gvisor.tar.bz2.sha512", 200, f"{ARCHIVE_SUM.upper()} *./gvisor.tar.bz2")])
    assert archive["layout"] == "archive" and archive["artifacts"] == {"gvisor.tar.bz2": ARCHIVE_SUM}
    loose = plan.with_checksums(source, [
        answer(f"{base}/gvisor.tar.bz2.sha512", 404),
        answer(f"{base}/runsc.sha512", 200, RUNSC_SUM, item=[{"url": base}, "runsc"]),
        answer(f"{base}/containerd-shim-runsc-v1.sha512", 200, f"{SHIM_SUM}  containerd-shim-runsc-v1",
               item=[{"url": base}, "containerd-shim-runsc-v1"])])
    assert loose["layout"] == "loose" and loose["artifacts"] == {"runsc": RUNSC_SUM, "containerd-shim-runsc-v1": SHIM_SUM}
    # Answers for another release of the batch are not this one's.
    assert refusal(plan.with_checksums, source, archive_answers()).startswith("gVisor release '20240729' for x86_64 was not found")


def test_a_release_the_mirror_does_not_have_names_every_url_tried():
    base = "http://m/release/20991231/x86_64"
    source = bucket_source("20991231", base)
    message = refusal(plan.with_checksums, source, [answer(f"{base}/gvisor.tar.bz2.sha512", 404)] + [
        answer(f"{base}/{name}.sha512", 404, item=[{"url": base}, name]) for name in ("runsc", "containerd-shim-runsc-v1")])
    assert message == (f"gVisor release '20991231' for x86_64 was not found: tried {base}/gvisor.tar.bz2.sha512 and "
                       f"{base}/runsc.sha512 and {base}/containerd-shim-runsc-v1.sha512 (HTTP 404). Check "
                       "containerd_gvisor_version and containerd_gvisor_mirror_url.")


def test_a_failed_request_or_a_checksum_file_that_is_not_one_stops_the_run():
    base = "http://m/release/latest/x86_64"
    source = bucket_source("latest", base)
    failed = {**answer(f"{base}/gvisor.tar.bz2.sha512", -1), "msg": "GET ... failed: HTTP 500 (gave up after 3 tries)"}
    assert refusal(plan.with_checksums, source, [failed]) == failed["msg"]
    html = answer(f"{base}/gvisor.tar.bz2.sha512", 200, "<html>" + "x" * 100)
    assert refusal(plan.with_checksums, source, [html]) == (
        f"{base}/gvisor.tar.bz2.sha512 is not a sha512sum line for gvisor.tar.bz2: got '<html>{'x' * 71}...'.")


# --- the plan ---------------------------------------------------------------------------------------------------------


def runsc_toml(result, path="/etc/containerd/runsc.toml"):
    return tomllib.loads(next(f["content"] for f in result["module_args"]["files"] if f["path"] == path))


@pytest.mark.parametrize("version, platform", [("20221219", "ptrace"), ("20230620", "ptrace"), ("20230621", "systrap"),
                                               ("20240729.0", "systrap"), ("latest", "systrap")])
def test_auto_platform_is_the_releases_own_default(version, platform):
    base = f"https://storage.googleapis.com/gvisor/releases/release/{version}/x86_64"
    result = run(inputs(version=version), answers=archive_answers(base))
    assert runsc_toml(result)["runsc_config"]["platform"] == platform
    assert result["module_args"]["platforms"] == [platform]


def test_auto_platform_of_an_installed_release_comes_from_its_runsc():
    result = run(inputs(version="20221219"), node(**installed(version="20221219", runsc="runsc version 0.0~20221219.0")))
    assert not result["install"]
    assert runsc_toml(result)["runsc_config"]["platform"] == "ptrace"


def test_a_first_install_downloads_writes_and_proves_everything():
    result = run()
    args = result["module_args"]
    assert result["install"] and result["change"]
    bucket = "https://storage.googleapis.com/gvisor/releases/release/latest/x86_64"
    [download] = result["downloads"]
    assert download == {"name": "gvisor.tar.bz2", "url": f"{bucket}/gvisor.tar.bz2", "checksum": f"sha512:{ARCHIVE_SUM}",
                        "checksum_source": f"{bucket}/gvisor.tar.bz2.sha512", "dest": download["dest"]}
    assert download["dest"].endswith(f"/.cache/containerd-gvisor/{ARCHIVE_SUM}/gvisor.tar.bz2")
    paths = {f["path"] for f in args["files"]}
    assert {"/etc/containerd/config.toml", "/etc/containerd/runsc.toml", "/var/lib/containerd-gvisor/handlers.json"} <= paths
    assert json.loads(next(f["content"] for f in args["files"] if f["path"].endswith("handlers.json"))) == {
        "gvisor": "/etc/containerd/runsc.toml"}
    # The kubeadm node runs runc with SystemdCgroup = true: runsc must use systemd cgroups too (not in runsc do).
    assert runsc_toml(result)["runsc_config"] == {"platform": "systrap", "systemd-cgroup": "true"}
    argv = ["/usr/local/bin/runsc", "--platform=systrap", "--network=none", "do", "dmesg"]
    assert args["smoke"] == [{"name": "gvisor", "argv": argv}]
    assert args["containerd"]["restart"] and args["containerd"]["handlers"] == {"gvisor": "io.containerd.runsc.v1"}
    assert result["unchanged"] == ("The node is unchanged: it keeps no gVisor in /usr/local/bin and its configuration, "
                                   "and containerd was not restarted.")


def test_node_mode_downloads_into_the_runs_staging_directory_and_pins_are_named_as_the_source():
    result = run(inputs(download_mode="node", checksums={"gvisor.tar.bz2": ARCHIVE_SUM}), answers=[])
    [download] = result["downloads"]
    assert download["dest"] == f"{result['module_args']['staging_dir']}/gvisor.tar.bz2"
    assert download["checksum_source"] == "containerd_gvisor_checksums"
    assert result["module_args"]["staging_dir"].startswith("/var/lib/containerd-gvisor/staging/run-")


def test_a_run_that_changes_nothing_plans_no_change_and_no_sandbox():
    first = run(inputs(version="20240729"), node(**installed()))
    files = {f["path"]: read(f["content"]) for f in first["module_args"]["files"] if f["content"] is not None}
    config = next(f["content"] for f in first["module_args"]["files"] if f["path"] == "/etc/containerd/config.toml")
    again = run(inputs(version="20240729"), node(config=config, files=files, **installed()))
    assert not again["change"] and again["module_args"]["smoke"] == [] and not again["module_args"]["containerd"]["restart"]
    always = run(inputs(version="20240729", smoke_test="always"), node(config=config, files=files, **installed()))
    assert not always["change"] and len(always["module_args"]["smoke"]) == 1


def test_runsc_flags_are_strings_and_the_shim_options_and_binary_name_are_written():
    handlers = [{"name": "gvisor-debug", "runsc_config_path": "/etc/containerd/runsc-debug.toml", "platform": "ptrace",
                 "runsc_config": {"debug": True, "debug-log": "/var/log/runsc/%ID%/", "network": "none"},
                 "shim_config": {"log_level": "debug"}}]
    result = run(inputs(handlers=handlers, bin_dir="/opt/bin/"))
    toml = runsc_toml(result, "/etc/containerd/runsc-debug.toml")
    assert toml == {"binary_name": "/opt/bin/runsc", "log_level": "debug", "runsc_config": {
        "platform": "ptrace", "systemd-cgroup": "true", "debug": "true", "debug-log": "/var/log/runsc/%ID%/", "network": "none"}}
    assert result["module_args"]["smoke"][0]["argv"] == [
        "/opt/bin/runsc", "--platform=ptrace", "--debug=true", "--debug-log=/var/log/runsc/%ID%/", "--network=none", "do", "dmesg"]
    config = tomllib.loads(next(f["content"] for f in result["module_args"]["files"] if f["path"] == "/etc/containerd/config.toml"))
    table = config["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["gvisor-debug"]
    assert table["runtime_path"] == "/opt/bin/containerd-shim-runsc-v1"


def test_a_handler_taken_off_the_list_leaves_containerd_and_its_runsc_toml_goes():
    state = node(handlers={"gvisor": "/etc/containerd/runsc.toml", "old": "/etc/containerd/runsc-old.toml"},
                 files={"/etc/containerd/runsc-old.toml": read("[runsc_config]\n")})
    result = run(inputs(), state)
    files = {f["path"]: f["content"] for f in result["module_args"]["files"]}
    assert files["/etc/containerd/runsc-old.toml"] is None
    assert result["module_args"]["containerd"]["handlers"]["old"] == ""


def test_on_containerd_2_the_handlers_go_into_the_drop_in():
    sid = (REPO / "tests" / "fixtures" / "containerd" / "sid-v3.toml").read_text()
    result = run(inputs(), node(config=sid, containerd="2.1.9"))
    files = {f["path"]: f["content"] for f in result["module_args"]["files"]}
    dropin = tomllib.loads(files["/etc/containerd/conf.d/gvisor.toml"])
    assert dropin["version"] == 3 and "gvisor" in dropin["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]
    assert tomllib.loads(files["/etc/containerd/config.toml"])["imports"] == ["/etc/containerd/conf.d/gvisor.toml"]


def test_an_inline_handler_table_is_refused_as_documented():
    text = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\n  gvisor = { runtime_type = "x" }\n'
    assert "cannot merge the gvisor runtime into /etc/containerd/config.toml safely" in refusal(run, inputs(), node(config=text))


def test_a_config_toml_that_is_not_utf8_is_refused_naming_the_byte_and_line():
    state = node()
    state["config"] = {**state["config"], **read(b"version = 2\n# caf\xe9\n")}
    assert refusal(run, inputs(), state).startswith(
        "/etc/containerd/config.toml line 2 holds the byte 0xe9, which is not UTF-8")


def test_docker_gets_the_runtime_merged_into_its_daemon_json_and_restarts_only_when_it_changed():
    daemon = '{"log-driver": "journald", "runtimes": {"other": {"path": "/x"}}}'
    state = node(files={"/etc/docker/daemon.json": read(daemon)}, services={"containerd": True, "docker": True})
    result = run(inputs(docker=True, docker_smoke_image="local/busybox"), state)
    merged = json.loads(next(f["content"] for f in result["module_args"]["files"] if f["path"] == "/etc/docker/daemon.json"))
    assert merged == {"log-driver": "journald", "runtimes": {"other": {"path": "/x"}, "runsc": {
        "path": "/usr/local/bin/runsc", "runtimeArgs": ["--platform=systrap"]}}}
    assert result["module_args"]["docker"]["restart"]
    assert result["module_args"]["docker"]["smoke"][-3:] == ["--network=none", "local/busybox", "dmesg"]
    assert "is not valid JSON" in refusal(run, inputs(docker=True), node(files={"/etc/docker/daemon.json": read("{")}))


def test_the_ctr_sandbox_puts_every_flag_before_the_root_file_system():
    argv = run(inputs(smoke_test_ctr=True))["module_args"]["containerd"]["ctr_smoke"][0]["argv"]
    rootfs = argv.index("--rootfs")
    assert all(not arg.startswith("--") for arg in argv[rootfs + 2:])  # ctr stops reading flags at the first argument
    assert argv[rootfs + 1:] == ["/", "containerd-gvisor-smoke-gvisor", "dmesg"]


def test_absent_takes_out_every_recorded_handler_and_the_files_it_wrote():
    with_gvisor = run(inputs())
    config = next(f["content"] for f in with_gvisor["module_args"]["files"] if f["path"] == "/etc/containerd/config.toml")
    state = node(config=config, handlers={"gvisor": "/etc/containerd/runsc.toml"},
                 files={"/etc/containerd/runsc.toml": read("x"), "/etc/containerd/conf.d/gvisor.toml": {"exists": False}},
                 **installed())
    result = run(inputs(state="absent"), state)
    args = result["module_args"]
    assert result["change"] and args["state"] == "absent"
    assert [f["content"] for f in args["files"]] == [KUBEADM]  # config.toml as it was before the install
    assert args["remove"] == ["/etc/containerd/runsc.toml"]
    assert args["containerd"] == {"restart": True, "config_path": "/etc/containerd/config.toml",
                                  "socket": "/run/containerd/containerd.sock", "handlers": {"gvisor": ""}}


def test_playbooks_mirror_plans_each_file_into_the_buckets_layout():
    variables = inputs(mirror_dir="/srv/gvisor/", arch="aarch64", version="20240729")
    assert plan.plan(variables)["ask"]
    base = "https://storage.googleapis.com/gvisor/releases/release/20240729/aarch64"
    result = plan.plan(variables, None, [answer(f"{base}/gvisor.tar.bz2.sha512", 200, ARCHIVE_SUM)])
    assert result["mirror_dir"] == "/srv/gvisor/release/20240729/aarch64"
    assert [d["dest"] for d in result["downloads"]] == ["/srv/gvisor/release/20240729/aarch64/gvisor.tar.bz2"]


# --- channels and sources ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, url, sums", [
    ({}, "https://storage.googleapis.com/gvisor/releases/release/latest/x86_64",
     "https://storage.googleapis.com/gvisor/releases/release/latest/x86_64/gvisor.tar.bz2.sha512"),
    ({"channel": "nightly", "version": "2026-10-12"}, "https://storage.googleapis.com/gvisor/releases/nightly/2026-10-12/x86_64",
     "https://storage.googleapis.com/gvisor/releases/nightly/2026-10-12/x86_64/gvisor.tar.bz2.sha512"),
    ({"channel": "master"}, "https://storage.googleapis.com/gvisor/releases/master/latest/x86_64",
     "https://storage.googleapis.com/gvisor/releases/master/latest/x86_64/gvisor.tar.bz2.sha512"),
    ({"release_source": "github", "version": "20260831"}, "https://github.com/google/gvisor/releases/download/release-20260831.0",
     "https://github.com/google/gvisor/releases/download/release-20260831.0/SHA512SUMS"),
    ({"release_source": "github"}, "https://github.com/google/gvisor/releases/latest/download",
     "https://github.com/google/gvisor/releases/latest/download/SHA512SUMS"),
], ids=["release", "nightly", "master", "github-dated", "github-latest"])
def test_each_channel_and_source_is_asked_where_it_lives(overrides, url, sums):
    first = plan.plan(inputs(**overrides), node())
    assert first["ask"] and (first["release"]["url"], first["release"]["sums"]) == (url, sums)


@pytest.mark.parametrize("overrides, message", [
    ({"channel": "nightly", "version": "20261012"}, "is not a release name of the nightly channel (containerd_gvisor_channel): "
                                                    "use 'latest' or a day such as '2026-10-12'"),
    ({"channel": "master", "version": "20261012"}, "of the master channel (containerd_gvisor_channel): use 'latest'"),
    ({"release_source": "github", "version": "20240729"}, "gVisor's GitHub releases carry the release channel from 20260817.0"),
    ({"release_source": "github", "channel": "nightly"}, "set containerd_gvisor_release_source: bucket"),
    ({"github_url": "ftp://example/gvisor"}, "containerd_gvisor_github_url 'ftp://example/gvisor' must be an http"),
])
def test_a_version_the_channel_or_source_does_not_have_is_refused(overrides, message):
    assert message in refusal(plan.plan, inputs(**overrides), node())


def test_a_github_release_is_its_archive_checked_against_sha512sums():
    variables = inputs(release_source="github", version="20260831.0")
    base = "https://github.com/google/gvisor/releases/download/release-20260831.0"
    release = plan.plan(variables, node())["release"]
    sums = f"{'d' * 128}  gvisor-aarch64.tar.bz2\n{ARCHIVE_SUM}  gvisor-x86_64.tar.bz2\n"
    result = plan.plan(variables, node(), [{**answer(f"{base}/SHA512SUMS", 200, sums), "item": release}])
    assert result["release"]["artifacts"] == {"gvisor-x86_64.tar.bz2": ARCHIVE_SUM}
    [download] = result["downloads"]
    assert download["url"] == f"{base}/gvisor-x86_64.tar.bz2" and download["checksum_source"] == f"{base}/SHA512SUMS"
    # A SHA512SUMS without this architecture's archive is not a checksum for it.
    other = f"{'d' * 128}  gvisor-aarch64.tar.bz2\n"
    assert "is not a sha512sum line for gvisor-x86_64.tar.bz2" in refusal(
        plan.plan, variables, node(), [{**answer(f"{base}/SHA512SUMS", 200, other), "item": release}])
    assert "Check containerd_gvisor_version and containerd_gvisor_github_url" in refusal(
        plan.plan, variables, node(), [{**answer(f"{base}/SHA512SUMS", 404), "item": release}])


def test_the_mirror_playbook_lays_a_github_release_out_as_github_does():
    variables = inputs(mirror_dir="/srv/gvisor", release_source="github", version="20260831", arch="x86_64")
    release = plan.plan(variables)["release"]
    base = "https://github.com/google/gvisor/releases/download/release-20260831.0"
    result = plan.plan(variables, None, [{**answer(f"{base}/SHA512SUMS", 200, f"{ARCHIVE_SUM}  gvisor-x86_64.tar.bz2"),
                                          "item": release}])
    assert result["checksum_files"] == [{"dest": "/srv/gvisor/download/release-20260831.0/SHA512SUMS",
                                         "content": f"{ARCHIVE_SUM}  gvisor-x86_64.tar.bz2\n"}]
    assert [d["dest"] for d in result["downloads"]] == ["/srv/gvisor/download/release-20260831.0/gvisor-x86_64.tar.bz2"]


def test_the_same_files_asked_for_by_another_name_only_update_the_record():
    state = node(**installed(version="latest", layout="archive", artifacts={"gvisor.tar.bz2": ARCHIVE_SUM}))
    base = "https://storage.googleapis.com/gvisor/releases/release/20261005/x86_64"
    result = run(inputs(version="20261005"), state, archive_answers(base))
    assert not result["install"] and result["change"] and result["downloads"] == []
    assert result["module_args"]["record"]["version"] == "20261005"


def test_with_containerds_configuration_left_to_kubespray_nothing_of_it_changes_and_the_entry_is_said():
    result = run(inputs(configure_containerd=False))
    paths = [f["path"] for f in result["module_args"]["files"]]
    assert "/etc/containerd/config.toml" not in paths and "/etc/containerd/runsc.toml" in paths
    assert result["module_args"]["containerd"]["handlers"] == {} and not result["module_args"]["containerd"]["restart"]
    [warning] = result["warnings"]
    entry = yaml.safe_load(warning.split("containerd_additional_runtimes:\n", 1)[1])
    assert entry == [{"name": "gvisor", "type": "io.containerd.runsc.v1", "engine": "", "root": "",
                      "options": {"TypeUrl": "io.containerd.runsc.v1.options", "ConfigPath": "/etc/containerd/runsc.toml"}}]
    # Once kubespray's template carries it, nothing is said.
    with_entry = KUBEADM + ('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor]\n  runtime_type = "io.containerd.runsc.v1"\n'
                            '  runtime_engine = ""\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor.options]\n'
                            '  TypeUrl = "io.containerd.runsc.v1.options"\n  ConfigPath = "/etc/containerd/runsc.toml"\n')
    assert run(inputs(configure_containerd=False), node(config=with_entry))["warnings"] == []


# --- gVisor's metric server -----------------------------------------------------------------------------------

UNIT = "/etc/systemd/system/containerd-gvisor-metrics.service"
DOCKER_UNIT = "/etc/systemd/system/containerd-gvisor-metrics-docker.service"


def test_metrics_put_the_servers_flag_into_each_handlers_runsc_toml_and_start_its_unit():
    result = run(inputs(metrics=True))
    assert runsc_toml(result, "/etc/containerd/runsc.toml")["runsc_config"]["metric-server"] == "127.0.0.1:1337"
    [unit] = [f for f in result["module_args"]["files"] if f["path"] == UNIT]
    assert unit["server"]["root"] == "/run/containerd/runsc/k8s.io" and "gvisor-bin/runsc-metric-server" in unit["content"]
    metrics_args = result["module_args"]["metrics"]
    assert [server["unit"] for server in metrics_args["start"]] == ["containerd-gvisor-metrics.service"]
    [proof] = metrics_args["proofs"]
    assert proof["name"] == "gvisor" and proof["server"]["address"] == "127.0.0.1:1337"
    assert proof["argv"] == ["/usr/local/bin/runsc", "--platform=systrap", "--metric-server=127.0.0.1:1337", "--network=none"]


def test_a_handler_with_metrics_off_keeps_its_sandboxes_out():
    handlers = [{"name": "gvisor", "runsc_config_path": "/etc/containerd/runsc.toml"},
                {"name": "quiet", "runsc_config_path": "/etc/containerd/runsc-quiet.toml", "metrics": False}]
    result = run(inputs(metrics=True, handlers=handlers))
    assert "metric-server" not in runsc_toml(result, "/etc/containerd/runsc-quiet.toml")["runsc_config"]
    assert [proof["name"] for proof in result["module_args"]["metrics"]["proofs"]] == ["gvisor"]


def test_docker_sandboxes_get_a_server_of_their_own_and_dockers_runtime_its_address():
    result = run(inputs(metrics=True, docker=True), node(services={"containerd": True, "docker": True}))
    files = {f["path"]: f for f in result["module_args"]["files"]}
    args = json.loads(files["/etc/docker/daemon.json"]["content"])["runtimes"]["runsc"]["runtimeArgs"]
    assert args == ["--platform=systrap", "--metric-server=127.0.0.1:1338"]
    assert files[DOCKER_UNIT]["server"]["root"] == "/var/run/docker/runtime-runc/moby"
    assert [(p["name"], p["server"]["address"]) for p in result["module_args"]["metrics"]["proofs"]] == [
        ("gvisor", "127.0.0.1:1337"), ("docker", "127.0.0.1:1338")]


def converged_with_metrics(**overrides):
    """A node on which a metrics run was carried out: its files written, its server running."""
    first = run(inputs(version="20240729", metrics=True, **overrides), node(**installed()))
    files = {f["path"]: read(f["content"]) for f in first["module_args"]["files"] if f["content"] is not None}
    config = next(f["content"] for f in first["module_args"]["files"] if f["path"] == "/etc/containerd/config.toml")
    services = {"containerd": True, "docker": False, "containerd-gvisor-metrics.service": True}
    return node(config=config, files=files, services=services, metrics={"127.0.0.1:1337": "ours"}, **installed())


def test_a_running_server_on_an_unchanged_node_is_left_alone():
    again = run(inputs(version="20240729", metrics=True), converged_with_metrics())
    assert not again["change"] and again["module_args"]["metrics"] == {"start": [], "stop": [], "proofs": []}


def test_a_server_that_stopped_is_started_again():
    state = converged_with_metrics()
    state["services"]["containerd-gvisor-metrics.service"] = False
    again = run(inputs(version="20240729", metrics=True), state)
    assert again["change"] and [s["unit"] for s in again["module_args"]["metrics"]["start"]] == ["containerd-gvisor-metrics.service"]
    assert again["module_args"]["files"] == []


def test_metrics_turned_off_stop_the_server_and_remove_its_unit_and_flags():
    off = run(inputs(version="20240729"), converged_with_metrics())
    files = {f["path"]: f["content"] for f in off["module_args"]["files"]}
    assert files[UNIT] is None and "metric-server" not in files["/etc/containerd/runsc.toml"]
    assert off["module_args"]["metrics"]["stop"] == ["containerd-gvisor-metrics.service"]


def test_removal_stops_the_server_before_its_unit_file_goes():
    gone = plan.plan(inputs(state="absent"), converged_with_metrics())
    assert gone["module_args"]["metrics"]["stop"] == ["containerd-gvisor-metrics.service"]
    assert UNIT in gone["module_args"]["remove"]


@pytest.mark.parametrize("overrides, message", [
    ({"metrics_address": "1337"}, "containerd_gvisor_metrics_address '1337' is not an address gVisor's metric server "
                                  "listens on: use host:port, :port or an absolute unix socket path"),
    ({"metrics_address": ":1337"}, "containerd_gvisor_metrics_address ':1337' can be reached from other machines, and "
                                   "gVisor's metric server has no authentication"),
    ({"metrics_address": "metrics.example.org:1337"}, "Set containerd_gvisor_metrics_expose: true to serve it there anyway"),
    ({"docker": True, "metrics_docker_address": "127.0.0.1:1337"},
     "containerd_gvisor_metrics_docker_address must differ from containerd_gvisor_metrics_address"),
    ({"metrics_root": "run/runsc"}, "containerd_gvisor_metrics_root 'run/runsc' must be an absolute path"),
    ({"runsc_config": {"metric-server": "127.0.0.1:9"}},
     "containerd_gvisor_runsc_config.metric-server: with containerd_gvisor_metrics on, each handler's metric-server flag"),
])
def test_metrics_inputs_that_cannot_work_are_refused_naming_the_variable(overrides, message):
    assert message in refusal(plan.plan, inputs(metrics=True, **overrides), node())


def test_an_address_other_machines_reach_is_served_with_consent():
    result = run(inputs(metrics=True, metrics_address="0.0.0.0:1337", metrics_expose=True))
    assert result["module_args"]["metrics"]["start"][0]["address"] == "0.0.0.0:1337"


def test_an_address_another_process_holds_is_refused_and_ours_is_not():
    held = node(metrics={"127.0.0.1:1337": "pid 42 (nginx: master process)"})
    assert ("containerd_gvisor_metrics_address 127.0.0.1:1337 is already in use on this node, by pid 42 (nginx: master "
            "process): choose a free address") in refusal(plan.plan, inputs(metrics=True), held)
    assert run(inputs(metrics=True), node(metrics={"127.0.0.1:1337": "ours"}))["change"]
