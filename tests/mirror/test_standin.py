"""The test stand-ins made from tests/mirror/stand-in.sh.in, on the host and in a node container.

Usage: python -m pytest tests/mirror -q
The host tests fill in the template as tests/mirror/build does. The node tests need Docker, the
node image (tests/harness/build-images trixie) and a built mirror, and are skipped without them:
in a trixie node container they run the stand-in runsc of the mirror's latest release against the
real runsc fixture (copied in when the image does not carry it yet) and start a gVisor sandbox.
The container (CONTAINERD_GVISOR_STANDIN_NODE, default standin-trixie) is removed afterwards
unless CONTAINERD_GVISOR_KEEP_NODE=1.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests/ helpers

from gvisor_testinfra import REPO, assert_gvisor_banner  # noqa: E402

TEMPLATE = REPO / "tests" / "mirror" / "stand-in.sh.in"
FIXTURE = "/opt/containerd-gvisor-test/runsc"
FIXTURE_LINE = f"real_runsc={FIXTURE}\n"
HELPERS = ["checkpointgofer", "runsc-metric-server", "gvisor_sentry", "gvisor-sentry-prewarmer", "runsc-fd-parking"]
RELEASE = "20261005.0"
VERSION = f"runsc version release-{RELEASE}\nspec: 1.1.0-rc.1\n"
ARCH = platform.machine()
NODE = os.environ.get("CONTAINERD_GVISOR_STANDIN_NODE", "standin-trixie")
IMAGE = os.environ.get("CONTAINERD_GVISOR_NODE_IMAGE", "containerd-gvisor-node") + ":trixie"


def stand_in(tmp_path, name, release=RELEASE, real_runsc=None):
    """Fill in the template as tests/mirror/build does; real_runsc replaces the fixture path."""
    text = TEMPLATE.read_text().replace("@NAME@", name).replace("@RELEASE@", release)
    if real_runsc is not None:
        assert FIXTURE_LINE in text
        text = text.replace(FIXTURE_LINE, f"real_runsc={real_runsc}\n")
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def run(*argv):
    return subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, timeout=30, check=False)


def test_the_template_has_only_name_and_release_placeholders():
    assert set(re.findall(r"@[A-Za-z_]+@", TEMPLATE.read_text())) == {"@NAME@", "@RELEASE@"}


@pytest.mark.parametrize("name", ["containerd-shim-runsc-v1", *HELPERS, "runsc"])
def test_each_stand_in_says_inside_what_it_stands_in_for(tmp_path, name):
    text = stand_in(tmp_path, name).read_text()
    assert text.startswith("#!/bin/sh\n")
    assert f"# TEST STAND-IN for gVisor's `{name}` of release {RELEASE}. It is NOT the real gVisor binary." in text
    assert "@" + "NAME@" not in text and "@" + "RELEASE@" not in text


@pytest.mark.parametrize("name", ["containerd-shim-runsc-v1", *HELPERS])
def test_shim_and_helpers_print_their_release_and_refuse_the_rest(tmp_path, name):
    path = stand_in(tmp_path, name)
    for flag in ("--version", "-v"):
        result = run(path, flag)
        assert (result.returncode, result.stdout) == (0, f"{name} stand-in for gVisor release {RELEASE}\n")
    for argv in ([], ["start"], ["--help"], ["delete", "--version"]):
        result = run(path, *argv)
        assert (result.returncode, result.stdout) == (1, ""), argv
        assert f"{name}: TEST STAND-IN" in result.stderr


@pytest.mark.parametrize("argv", [["--version"], ["-version"], ["--debug", "--version"],
                                  ["--root=/run/x", "list", "--version"]])
def test_runsc_answers_version_as_a_real_release(tmp_path, argv):
    result = run(stand_in(tmp_path, "runsc", real_runsc=tmp_path / "absent"), *argv)
    assert (result.returncode, result.stdout, result.stderr) == (0, VERSION, "")


def test_runsc_hands_every_other_command_to_the_real_runsc(tmp_path):
    real = tmp_path / "real-runsc"
    real.write_text('#!/bin/sh\necho "pid $$"\nfor arg in "$@"; do echo "arg [$arg]"; done\nexit 7\n')
    real.chmod(0o755)
    path = stand_in(tmp_path, "runsc", real_runsc=real)
    argv = ["--network=none", "do", "sh", "-c", "echo 'a  b' \"$x\"", "", "*"]
    proc = subprocess.Popen([str(path), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 7 and stderr == ""
    lines = stdout.splitlines()
    assert lines[0] == f"pid {proc.pid}"  # exec: the real runsc replaced the stand-in's process
    assert lines[1:] == [f"arg [{arg}]" for arg in argv]


def test_runsc_without_the_fixture_says_so(tmp_path):
    missing = tmp_path / "no" / "runsc"
    result = run(stand_in(tmp_path, "runsc", real_runsc=missing), "--network=none", "do", "true")
    assert (result.returncode, result.stdout) == (1, "")
    assert "TEST STAND-IN" in result.stderr and f"missing at {missing}" in result.stderr
    assert "test fixture" in result.stderr


# --- in a node container -----------------------------------------------------------------------


def docker_ready():
    if not shutil.which("docker"):
        return "no docker command"
    if run("docker", "info").returncode != 0:
        return "the Docker engine does not answer (tests/harness/start-docker)"
    if run("docker", "image", "inspect", IMAGE).returncode != 0:
        return f"no {IMAGE} image (tests/harness/build-images trixie)"
    return None


@pytest.fixture(scope="module")
def node(built_mirror, tmp_path_factory):
    """A trixie node container with the real runsc fixture and the latest release's stand-in runsc
    as /usr/local/bin/runsc."""
    missing = docker_ready()
    if missing:
        pytest.skip(missing)
    from gvisor_node import remove_node, start_node

    work = tmp_path_factory.mktemp("standin")
    with tarfile.open(built_mirror / "release" / RELEASE / ARCH / "gvisor.tar.bz2", "r:bz2") as tar:
        (work / "runsc").write_bytes(tar.extractfile("./runsc").read())
    (work / "runsc").chmod(0o755)
    node = start_node(NODE, IMAGE)
    try:
        if node.sh(f"test -x {FIXTURE} && echo yes", check=False).strip() != "yes":
            # An image built before it carried the fixture: the mirror's 20240729.0 runsc is the same
            # Debian trixie runsc the images carry.
            node.sh(f"mkdir -p {os.path.dirname(FIXTURE)}")
            fixture = built_mirror / "release" / "20240729.0" / ARCH / "runsc"
            subprocess.run(["docker", "cp", str(fixture), f"{NODE}:{FIXTURE}"], check=True)
            node.sh(f"chmod 0755 {FIXTURE}")
        subprocess.run(["docker", "cp", str(work / "runsc"), f"{NODE}:/usr/local/bin/runsc"], check=True)
        yield node
    finally:
        if not os.environ.get("CONTAINERD_GVISOR_KEEP_NODE"):
            remove_node(NODE)


def node_run(node, *argv, timeout=120):
    return subprocess.run(["docker", "exec", node.name, *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_the_node_has_the_fixture_and_the_stand_in(node):
    mode = node.sh(f"stat -c %a {FIXTURE}").strip()
    assert mode == "755"
    assert node_run(node, FIXTURE, "--version").stdout.startswith("runsc version 0.0~20240729.0\n")
    assert "TEST STAND-IN for gVisor's `runsc`" in node.sh("head -n 3 /usr/local/bin/runsc")


def test_stand_in_runsc_prints_the_release_version_in_the_node(node):
    result = node_run(node, "runsc", "--version")
    assert (result.returncode, result.stdout) == (0, VERSION)


def test_stand_in_runsc_starts_a_gvisor_sandbox(node):
    result = node_run(node, "runsc", "--network=none", "do", "dmesg")
    assert result.returncode == 0, result.stderr
    assert_gvisor_banner(result.stdout)
    failed = node_run(node, "runsc", "--network=none", "do", "sh", "-c", "exit 3")
    assert failed.returncode == 3, failed.stderr  # the sandbox's exit status comes back through the stand-in
