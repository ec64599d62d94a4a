"""Build node images with packer/node.json and packer/node.pkr.hcl and check a node booted from each, as a user would.

Each case builds a template's docker builder from a JSON var file (packer/vars/gvisor.json, or
a copy with values changed, or packer/vars/gvisor-debug.json, which sets runsc flags through
ansible_extra_vars) with the mirror pointed at the local test mirror (tests/mirror), starts a
container from the image with systemd as PID 1, and checks it. tests/packer/run sets up the
machine and runs this file.
"""

import json
import os
import subprocess
import tomllib

import pytest
import testinfra

from gvisor_node import start_node
from gvisor_testinfra import (
    REPO,
    RUNTIME_TYPE,
    SHIM,
    assert_gvisor_banner,
    expected_files,
    handler_table,
    node_sha512,
    node_toml,
    release_dir,
    runsc_version_line,
    sandbox_flags,
    shell,
)

JSON_TEMPLATE = REPO / "packer" / "node.json"
HCL_TEMPLATE = REPO / "packer" / "node.pkr.hcl"
VAR_FILE = REPO / "packer" / "vars" / "gvisor.json"
DEBUG_VAR_FILE = REPO / "packer" / "vars" / "gvisor-debug.json"
MIRROR_URL = "http://127.0.0.1:%s" % os.environ.get("CONTAINERD_GVISOR_MIRROR_PORT", "18080")
IMAGE_REPOSITORY = "packer-test-node"
BIN_DIR = "/usr/local/bin"
CONFIG = "/etc/containerd/config.toml"
RUNSC_TOML = "/etc/containerd/runsc.toml"
HANDLER = "gvisor"

# Each template's builders, as -only names them (HCL2: source type.name).
BUILDERS = {JSON_TEMPLATE: ["docker", "qemu"], HCL_TEMPLATE: ["docker.docker", "qemu.qemu"]}
# A value each builder rejects: `packer validate -only=NAME` with it fails only if NAME picked that builder.
REJECTED = {"docker": "docker_image=", "qemu": "qemu_accelerator=bogus"}

# Case name -> template, var file and the values that differ from it. Packer variables are strings.
CASES = {
    "gvisor": (JSON_TEMPLATE, VAR_FILE, {}),
    "disabled": (JSON_TEMPLATE, VAR_FILE, {"containerd_gvisor_runtime": "false"}),
    # A runsc flag through the extra-vars passthrough too (ptrace is that release's default platform).
    "pinned": (
        JSON_TEMPLATE,
        VAR_FILE,
        {
            "containerd_gvisor_version": "20221219",
            "ansible_extra_vars": json.dumps({"containerd_gvisor_runsc_config": {"platform": "ptrace"}}),
        },
    ),
    # runsc flags through the extra-vars passthrough (containerd_gvisor_runsc_config).
    "hcl2-debug": (HCL_TEMPLATE, DEBUG_VAR_FILE, {}),
}


def run(argv, timeout=120):
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


def run_packer(*args, timeout=120):
    """Run packer offline (no version check)."""
    env = dict(os.environ, CHECKPOINT_DISABLE="1")
    return subprocess.run(
        ["packer", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def packer(*args, timeout=120):
    """Run packer offline and return its output, failing the test on an error."""
    proc = run_packer(*args, timeout=timeout)
    assert proc.returncode == 0, "packer %s failed:\n%s%s" % (" ".join(args), proc.stdout[-6000:], proc.stderr)
    return proc.stdout


def remove(container, image):
    run(["docker", "rm", "--force", container])
    run(["docker", "image", "rm", "--force", image])


class Node:
    def __init__(self, case, variables, host):
        self.case = case
        self.variables = variables
        self.host = host

    @property
    def gvisor(self):
        return self.variables["containerd_gvisor_runtime"] == "true"

    @property
    def version(self):
        return self.variables["containerd_gvisor_version"]

    @property
    def runsc_config(self):
        """The runsc flags the build set through ansible_extra_vars (the role writes them as strings)."""
        extra_vars = json.loads(self.variables.get("ansible_extra_vars", "{}"))
        return {key: str(value).lower() for key, value in extra_vars.get("containerd_gvisor_runsc_config", {}).items()}


@pytest.fixture(scope="module", params=list(CASES))
def node(request, tmp_path_factory):
    """Build the case's image and boot a container from it; both are removed after the case's tests."""
    case = request.param
    template, var_file, changes = CASES[case]
    variables = json.loads(var_file.read_text()) | changes
    if changes:
        var_file = tmp_path_factory.mktemp(case) / "vars.json"
        var_file.write_text(json.dumps(variables, indent=2))
    image = f"{IMAGE_REPOSITORY}:{case}"
    container = f"packer-{case}"
    remove(container, image)
    request.addfinalizer(lambda: remove(container, image))

    packer(
        "build", "-color=false", f"-only={BUILDERS[template][0]}", f"-var-file={var_file}",
        f"-var=containerd_gvisor_mirror_url={MIRROR_URL}",
        f"-var=docker_repository={IMAGE_REPOSITORY}", f"-var=docker_tag={case}",
        str(template), timeout=900,
    )  # fmt: skip

    # Booted like every node container of the tests (tests/gvisor_node.py): systemd as PID 1,
    # waited for until it finished booting.
    start_node(container, image)
    host = testinfra.get_host(f"docker://{container}")
    return Node(case, variables, host)


@pytest.mark.parametrize(
    "template,builder",
    [(t, b) for t in BUILDERS for b in ["all", *BUILDERS[t]]],
    ids=lambda value: value.name if hasattr(value, "name") else value,
)
def test_packer_validate_passes(template, builder):
    # qemu's default checksum is a URL that Packer fetches while validating; a literal keeps this offline.
    offline_checksum = "sha512:" + "0" * 128
    only = [] if builder == "all" else [f"-only={builder}"]
    args = [*only, f"-var-file={VAR_FILE}", f"-var=qemu_image_checksum={offline_checksum}"]
    packer("validate", *args, str(template))
    if builder != "all":
        # An -only name that matches no builder validates nothing and passes: this one must pick its builder.
        rejected = run_packer("validate", *args, f"-var={REJECTED[builder.split('.')[0]]}", str(template))
        assert rejected.returncode != 0, f"-only={builder} validated no {builder} builder"


def test_containerd_runs_when_the_image_boots(node):
    assert node.host.service("containerd").is_enabled
    assert node.host.service("containerd").is_running
    plugins = node.host.check_output("ctr plugins ls")
    assert any(line.split()[1] == "cri" and line.split()[-1] == "ok" for line in plugins.splitlines()[1:]), plugins


def test_runsc_shim_and_gvisor_bin_have_the_mirrors_checksums(node):
    if not node.gvisor:
        pytest.skip("built without gVisor")
    arch = node.host.system_info.arch
    expected = expected_files(node.version, arch)
    assert "runsc" in expected and SHIM in expected
    for rel_path, sha512 in expected.items():
        assert node_sha512(node.host, f"{BIN_DIR}/{rel_path}") == sha512, f"{rel_path} differs from the mirror's bytes"
    gvisor_bin = node.host.file(f"{BIN_DIR}/gvisor-bin")
    assert gvisor_bin.exists == any(p.startswith("gvisor-bin/") for p in expected)


def test_runsc_is_the_release_the_var_file_names(node):
    if not node.gvisor:
        pytest.skip("built without gVisor")
    # latest resolves to a dated release on the mirror; a pinned date must not.
    arch = node.host.system_info.arch
    release = release_dir(node.version, arch).parent.name.split(".")[0]
    if node.version != "latest":
        assert release == node.version
    assert node.host.check_output(f"{BIN_DIR}/runsc --version").splitlines()[0] == runsc_version_line(node.version, arch)
    record = json.loads(node.host.file("/var/lib/containerd-gvisor/release.json").content_string)
    assert record["release"]["version"] == node.version


def test_effective_config_registers_the_gvisor_handler(node):
    dump = tomllib.loads(node.host.check_output("containerd --config %s config dump", CONFIG))
    table = handler_table(dump, HANDLER)
    if node.gvisor:
        assert table is not None and table["runtime_type"] == RUNTIME_TYPE
    else:
        assert table is None, "a gVisor handler in an image built without gVisor"


def test_dmesg_in_a_sandbox_shows_the_gvisor_banner(node):
    if not node.gvisor:
        pytest.skip("built without gVisor")
    argv = [f"{BIN_DIR}/runsc", *sandbox_flags(node.host, RUNSC_TOML), "do", "dmesg"]
    assert_gvisor_banner(node.host.check_output(shell(*argv)))


def test_runsc_toml_holds_the_flags_the_build_asked_for(node):
    if not node.gvisor:
        pytest.skip("built without gVisor")
    # The platform (systrap unless the flags name one) and what ansible_extra_vars asked for; the
    # default "{}" adds nothing.
    flags = node_toml(node.host, RUNSC_TOML)["runsc_config"]
    expected = {"platform": "systrap", **node.runsc_config}
    runc = handler_table(node_toml(node.host, CONFIG), "runc") or {}
    if runc.get("options", {}).get("SystemdCgroup"):
        expected["systemd-cgroup"] = "true"
    assert flags == expected
    # containerd's shim reads the flags from the file the handler names.
    table = handler_table(node_toml(node.host, CONFIG), HANDLER)
    assert table["options"]["ConfigPath"] == RUNSC_TOML


def test_a_sandbox_writes_the_debug_log_the_flags_ask_for(node):
    if "debug-log" not in node.runsc_config:
        pytest.skip("built without a runsc debug log")
    log_dir = node.runsc_config["debug-log"]
    before = set(node.host.check_output("find %s -type f 2>/dev/null || true", log_dir).split())
    argv = [f"{BIN_DIR}/runsc", *sandbox_flags(node.host, RUNSC_TOML), "do", "true"]
    node.host.check_output(shell(*argv))
    after = set(node.host.check_output("find %s -type f", log_dir).split())
    assert after - before, f"runsc wrote no debug log into {log_dir}"


def test_image_built_with_the_string_false_has_no_gvisor(node):
    if node.gvisor:
        pytest.skip("built with gVisor")
    for path in ("runsc", SHIM, "gvisor-bin"):
        assert not node.host.file(f"{BIN_DIR}/{path}").exists, path
    assert not node.host.file(RUNSC_TOML).exists
    assert not node.host.file("/var/lib/containerd-gvisor").exists
    assert "runsc" not in node.host.file(CONFIG).content_string
