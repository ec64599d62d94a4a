"""A private mirror: HTTPS with a certificate from its own CA, and basic auth.

One trixie node (containerd 1.7 runs both release layouts) and one server.py of this module's own,
speaking HTTPS with a throwaway CA's certificate and wanting basic auth on every request. The role
must install through it in both download modes when given the CA (containerd_gvisor_ca_path) and
the credentials on the machine that downloads; refuse without them before the node changes, in a
message that names the URL, the cause and what to set; and never write the password anywhere.
Every run here is ansible-playbook -vvv with a log file, and the last test looks for the password in
everything the runs left: their output, their logs, the node's files, the mirror's access log and
the control node's download caches.

The tests share the node and run in this order: controller mode installs `latest` (the archive),
node mode installs 20240729 (the loose files), the refusals ask for `latest` (so the role has to
ask the mirror whatever the node holds), and validate_certs: false installs `latest` without the CA.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess

import pytest

from gvisor_mirror import MirrorServer, copy_mirror, make_test_ca
from gvisor_node import ARCH, BIN_DIR, CONFIG, STATE_DIR, remove_node, start_node
from gvisor_testinfra import ARCHIVE, REPO, SHIM, archive_files, expected_files, mirror_dir, runsc_version_line

NODE = "private-mirror-trixie"
IMAGE = "containerd-gvisor-node:trixie"
INITIAL_CONFIG = (REPO / "tests" / "fixtures" / "containerd" / "bookworm-v2.toml").read_bytes()
ARCHIVE_RELEASE = "latest"  # the archive layout
LOOSE_RELEASE = "20240729"  # the loose layout (real runsc)
USER = "mirror-user"
PASSWORD = f"s3cret-{secrets.token_hex(12)}"  # distinctive: found anywhere, it leaked
WRONG_PASSWORD = f"wr0ng-{secrets.token_hex(12)}"  # a secret too, though the mirror refuses it
# Where node mode finds the CA: a path on the node only (the control node has no such file).
NODE_CA = "/etc/containerd-gvisor-test/private-mirror-ca.pem"
# Where the node's files are searched for the password: everything the role writes, the staging and
# temporary directories, Ansible's remote temporary files, and the logs (journald's files included).
NODE_SEARCH = [BIN_DIR, os.path.dirname(CONFIG), STATE_DIR, "/var/tmp", "/tmp", "/root/.ansible", "/var/log",
               "/run/log", os.path.dirname(NODE_CA)]
# Prints each file under the directories given whose bytes contain stdin's (the password stays out of argv).
FIND = r"""
import os, sys
needle = sys.stdin.buffer.read()
for top in sys.argv[1:]:
    for root, dirs, names in os.walk(top):
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as handle:
                    if needle in handle.read():
                        print(path)
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("private-mirror")


@pytest.fixture(scope="module")
def private_mirror(work):
    """server.py over a copy of the built mirror, on HTTPS with a throwaway CA, wanting USER:PASSWORD."""
    tls = make_test_ca(work / "tls")
    server = MirrorServer(copy_mirror(work / "root"), work / "access.log", tls=tls, auth=(USER, PASSWORD))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node(private_mirror, work):
    assert not os.path.exists(NODE_CA), f"{NODE_CA} must exist on the node only"
    node = start_node(NODE, IMAGE, INITIAL_CONFIG)
    node.vars.update({
        "containerd_gvisor_runtime": True,
        "containerd_gvisor_mirror_url": private_mirror.url,
        "containerd_gvisor_arch": ARCH,
        "containerd_gvisor_download_cache_dir": str(work / "cache-default"),
        # Two tries, one second apart: a request that is retried shows as "gave up after 2 tries".
        "containerd_gvisor_download_retries": 2,
        "containerd_gvisor_download_delay": 1,
    })
    # The CA file node mode uses, on the node; the role is never told about it unless a run says so.
    node.sh(f"mkdir -p {os.path.dirname(NODE_CA)}")
    node.write(NODE_CA, private_mirror.ca_file.read_bytes())
    yield node
    if not os.environ.get("CONTAINERD_GVISOR_KEEP_NODE"):
        remove_node(NODE)


# Every run of the module, for the last test: name -> Run.
RUNS = {}


class Run:
    """One verbose run of the role: its Play, its Ansible log, the mirror's requests, the node before and after."""

    def __init__(self, node, private_mirror, work, name, **overrides):
        seen = len(private_mirror.requests())
        log = work / f"{name}.ansible.log"
        self.before = node.snapshot()
        # -vvv output goes to stderr: stdout stays the json callback's.
        env = {"ANSIBLE_LOG_PATH": str(log), "ANSIBLE_VERBOSE_TO_STDERR": "1"}
        self.play = node.play(ansible_args=["-vvv"], ansible_env=env, **overrides)
        self.after = node.snapshot()
        self.log = log.read_text() if log.exists() else ""
        # (path, status) of each request the mirror answered during the run.
        self.requests = [(entry["path"], entry["status"]) for entry in private_mirror.requests()[seen:]]
        RUNS[name] = self


def credentials(password=PASSWORD):
    return {"containerd_gvisor_url_username": USER, "containerd_gvisor_url_password": password}


def fresh_cache(work, name):
    """An empty download cache on the control node, so that a controller-mode run really downloads."""
    cache = work / f"cache-{name}"
    cache.mkdir()
    return cache


def assert_installed(node, version):
    """The bin dir holds exactly the mirror's files of the release, runsc runs, containerd runs."""
    assert node.bin_dir_files() == expected_files(version, ARCH)
    assert node.sh(f"{BIN_DIR}/runsc --version").splitlines()[0] == runsc_version_line(version, ARCH)
    assert node.containerd_active()


# --- installs through the private mirror ---------------------------------------------------------


@pytest.fixture(scope="module")
def controller_install(node, private_mirror, work):
    cache = fresh_cache(work, "controller")
    run = Run(node, private_mirror, work, "controller-install", containerd_gvisor_version=ARCHIVE_RELEASE,
              containerd_gvisor_ca_path=str(private_mirror.ca_file), containerd_gvisor_download_cache_dir=str(cache),
              **credentials())
    return run, cache


def test_controller_mode_installs_with_the_ca_and_credentials_on_the_control_node(node, controller_install):
    run, cache = controller_install
    assert run.play.ok, run.play
    assert_installed(node, ARCHIVE_RELEASE)
    assert node.release()["release"]["layout"] == "archive"
    # The control node fetched: its cache holds the archive (the node's requests would need NODE_CA) ...
    assert [path.name for path in cache.rglob(ARCHIVE)] == [ARCHIVE]
    # ... and sent the credentials with every request from the first (force_basic_auth): no 401 first.
    release = f"/release/{ARCHIVE_RELEASE}/{ARCH}"
    assert run.requests == [(f"{release}/{ARCHIVE}.sha512", 200), (f"{release}/{ARCHIVE}", 200)]


@pytest.fixture(scope="module")
def node_install(node, private_mirror, work, controller_install):
    cache = fresh_cache(work, "node-mode")
    # ca_path names a file on the node only: the node's own requests must use it.
    run = Run(node, private_mirror, work, "node-install", containerd_gvisor_version=LOOSE_RELEASE,
              containerd_gvisor_download_mode="node", containerd_gvisor_ca_path=NODE_CA,
              containerd_gvisor_download_cache_dir=str(cache), **credentials())
    return run, cache


def test_node_mode_installs_with_the_ca_file_on_the_node(node, node_install):
    run, cache = node_install
    assert run.play.ok, run.play
    assert_installed(node, LOOSE_RELEASE)
    assert node.release()["release"]["layout"] == "loose"
    assert not any(cache.iterdir())  # nothing went through the control node
    # The role asks for the archive's checksum first; this release has none, so that answer is an
    # authenticated 404. Everything else is an authenticated 200, and nothing was refused (no 401).
    release = f"/release/{LOOSE_RELEASE}/{ARCH}"
    assert sorted(run.requests) == sorted([
        (f"{release}/{ARCHIVE}.sha512", 404), (f"{release}/runsc.sha512", 200), (f"{release}/{SHIM}.sha512", 200),
        (f"{release}/runsc", 200), (f"{release}/{SHIM}", 200)])


# Every other channel and GitHub's releases through the same private mirror, in both download modes, in this order
# (each installs another release than the one before, so each downloads): variables, download mode, and the archive
# in the mirror the install comes from.
CHANNELS = {
    "nightly-controller": ({"containerd_gvisor_channel": "nightly", "containerd_gvisor_version": "2026-10-12"}, "controller",
                           f"nightly/2026-10-12/{ARCH}/{ARCHIVE}"),
    "github-node": ({"containerd_gvisor_release_source": "github", "containerd_gvisor_version": "20261005"}, "node",
                    f"github/download/release-20261005.0/gvisor-{ARCH}.tar.bz2"),
    "master-node": ({"containerd_gvisor_channel": "master"}, "node", f"master/latest/{ARCH}/{ARCHIVE}"),
    "github-controller": ({"containerd_gvisor_release_source": "github", "containerd_gvisor_version": "20261005.0"},
                          "controller",
                          f"github/download/release-20261005.0/gvisor-{ARCH}.tar.bz2"),
}


@pytest.mark.parametrize("name", CHANNELS)
def test_every_channel_and_source_installs_through_the_private_mirror(node, private_mirror, work, node_install, name):
    variables, mode, archive = CHANNELS[name]
    ca = str(private_mirror.ca_file) if mode == "controller" else NODE_CA
    run = Run(node, private_mirror, work, f"channel-{name}", containerd_gvisor_download_mode=mode,
              containerd_gvisor_ca_path=ca, containerd_gvisor_github_url=f"{private_mirror.url}/github",
              containerd_gvisor_download_cache_dir=str(fresh_cache(work, name)), **variables, **credentials())
    assert run.play.ok, run.play
    assert node.bin_dir_files() == archive_files(mirror_dir() / archive)
    # The archive came through the mirror, every request authenticated from the first (no 401) and answered.
    assert (f"/{archive}", 200) in run.requests and all(status == 200 for _path, status in run.requests), run.requests


# --- refusals --------------------------------------------------------------------------------------

# What each refusal leaves out, where it downloads, and what its message must say besides the URL:
# the cause, and the variables that fix it.
REFUSALS = {
    "no-ca-controller": dict(overrides=credentials(), cause="certificate verify failed",
                             fix=["containerd_gvisor_ca_path"]),
    "no-ca-node": dict(overrides={**credentials(), "containerd_gvisor_download_mode": "node"},
                       cause="certificate verify failed", fix=["containerd_gvisor_ca_path"]),
    # A usual mistake in node mode: the CA's path on the control node.
    "ca-not-on-node": dict(overrides={**credentials(), "containerd_gvisor_download_mode": "node",
                                      "containerd_gvisor_ca_path": "/nonexistent/private-mirror-ca.pem"},
                           cause="/nonexistent/private-mirror-ca.pem", fix=["containerd_gvisor_ca_path"]),
    "wrong-password": dict(overrides={"ca": True, **credentials(WRONG_PASSWORD)}, status=401, cause="HTTP 401",
                           fix=["containerd_gvisor_url_username", "containerd_gvisor_url_password"]),
    "no-credentials": dict(overrides={"ca": True}, status=401, cause="HTTP 401",
                           fix=["containerd_gvisor_url_username", "containerd_gvisor_url_password"]),
    "wrong-password-node": dict(overrides={"ca": True, "containerd_gvisor_download_mode": "node",
                                           **credentials(WRONG_PASSWORD)}, status=401, cause="HTTP 401",
                                fix=["containerd_gvisor_url_username", "containerd_gvisor_url_password"]),
}


@pytest.fixture(scope="module")
def refusals(node, private_mirror, work, node_install):
    """Each refusal's run, once, on the node as the installs left it."""
    runs = {}

    def run(name):
        if name not in runs:
            overrides = dict(REFUSALS[name]["overrides"])
            if overrides.pop("ca", False):
                node_mode = overrides.get("containerd_gvisor_download_mode") == "node"
                overrides["containerd_gvisor_ca_path"] = NODE_CA if node_mode else str(private_mirror.ca_file)
            cache = fresh_cache(work, f"refused-{name}")
            runs[name] = Run(node, private_mirror, work, f"refused-{name}", containerd_gvisor_version=ARCHIVE_RELEASE,
                             containerd_gvisor_download_cache_dir=str(cache), **overrides)
        return runs[name]

    return run


CHECKSUM_PATH = f"/release/{ARCHIVE_RELEASE}/{ARCH}/{ARCHIVE}.sha512"  # the first request of every refusal


@pytest.mark.parametrize("name", REFUSALS)
def test_refused_at_the_first_request_before_the_node_changes(refusals, private_mirror, name):
    run = refusals(name)
    assert not run.play.ok
    assert run.after == run.before  # bin dir, /etc/containerd, state dir, containerd's process
    failed = [task for task, result in run.play.results() if result.get("failed")]
    # The request's own failure, reported by the plan of the host that needed its answer.
    assert failed == ["Plan the run"]
    status = REFUSALS[name].get("status")
    # A 401 is logged by the mirror; a refused certificate never gets as far as a request.
    assert run.requests == ([(CHECKSUM_PATH, status)] if status else [])


@pytest.mark.parametrize("name", ["no-ca-controller", "no-ca-node", "ca-not-on-node", "wrong-password", "no-credentials",
                                  "wrong-password-node"])
def test_the_refusal_names_the_url_and_the_cause(refusals, private_mirror, name):
    message = refusals(name).play.message
    assert private_mirror.url + CHECKSUM_PATH in message, message
    assert REFUSALS[name]["cause"] in message, message


@pytest.mark.parametrize("name", list(REFUSALS))
def test_the_refusal_says_what_to_set(refusals, name):
    message = refusals(name).play.message
    assert all(variable in message for variable in REFUSALS[name]["fix"]), message


@pytest.mark.parametrize("name", list(REFUSALS))
def test_the_refusal_is_not_retried(refusals, name):
    # Neither a certificate the CA does not sign, nor a missing CA file, nor a 401 goes away by waiting.
    [result] = refusals(name).play.result("Ask for the release archive's checksum")["results"]
    assert result["attempts"] <= 1, result.get("msg")  # (0: refused before any request)


# --- validate_certs: false -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_validation_install(node, private_mirror, work, refusals):
    # For tests and legacy mirrors only: without verification anyone in the path can serve the
    # release (the checksums come from the same unverified mirror) and read the credentials.
    cache = fresh_cache(work, "no-validation")
    run = Run(node, private_mirror, work, "no-validation-install", containerd_gvisor_version=ARCHIVE_RELEASE,
              containerd_gvisor_validate_certs=False, containerd_gvisor_download_cache_dir=str(cache), **credentials())
    return run, cache


def test_validate_certs_false_installs_without_the_ca(node, no_validation_install):
    run, cache = no_validation_install
    assert run.play.ok, run.play
    assert_installed(node, ARCHIVE_RELEASE)
    assert [path.name for path in cache.rglob(ARCHIVE)] == [ARCHIVE]
    release = f"/release/{ARCHIVE_RELEASE}/{ARCH}"
    assert run.requests == [(f"{release}/{ARCHIVE}.sha512", 200), (f"{release}/{ARCHIVE}", 200)]


# --- the password ---------------------------------------------------------------------------------


def test_the_password_is_written_nowhere(node, private_mirror, work, controller_install, node_install, refusals,
                                         no_validation_install):
    for name in ("no-ca-controller", "wrong-password"):  # failing runs given the password, and a wrong one
        refusals(name)  # (run already, unless this test runs alone)
    checked = {"controller-install", "node-install", "refused-no-ca-controller", "refused-wrong-password",
               "no-validation-install"}
    assert checked <= RUNS.keys()
    for name, run in RUNS.items():
        # -vvv shows each connection in stderr and the log; the log also holds the json callback's output,
        # with each request's arguments, the password masked: where a leak would show.
        assert "ESTABLISH" in run.play.stderr and "ESTABLISH" in run.log and '"plays"' in run.log, \
            f"{name}: not a verbose run with a log"
        shown = set(re.findall(r'"url_password": ("[^"]*"|null)', run.log))
        assert shown <= {'"VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"', "null"}, shown
        if name in checked:
            assert '"VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"' in shown, name
        for where, text in [("stdout", run.play.stdout), ("stderr", run.play.stderr), ("the Ansible log", run.log)]:
            assert PASSWORD not in text and WRONG_PASSWORD not in text, f"{name}: a password is in {where}"
    assert node.release() is not None  # a run wrote release.json, which is searched below
    found = subprocess.run(["docker", "exec", "-i", node.name, "python3", "-c", FIND, *NODE_SEARCH],
                           input=PASSWORD.encode(), capture_output=True, check=True).stdout.decode().split()
    assert found == [], f"the password is in these files on the node: {found}"
    journal = node.sh("journalctl --no-pager -o cat")
    assert "Invoked with" in journal  # the modules' own log of their arguments, where a leak would show
    assert PASSWORD not in journal and WRONG_PASSWORD not in journal
    assert PASSWORD not in private_mirror.log.read_text() and WRONG_PASSWORD not in private_mirror.log.read_text()
    cached = [path for cache in work.glob("cache-*") for path in cache.rglob("*") if path.is_file()]
    assert [path for path in cached if PASSWORD.encode() in path.read_bytes()] == []
