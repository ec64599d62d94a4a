"""Faults, bad input, upgrades and removal on a node that already runs gVisor.

Every failure must stop before the node changes (or put back what it changed), say what went
wrong in one message, and leave the node as it was: the tests compare a snapshot of the node
(every file the role may touch, by sha512, and containerd's main process) before and after.
The tests share one node and run in this order; each first brings the node to the state it needs.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shlex
import shutil
import tomllib
from pathlib import Path

import pytest

from gvisor_mirror import point_latest, served_bytes
from gvisor_node import ARCH, BIN_DIR, CHANGE_TASK, CONFIG, RUNSC_TOML, STATE_DIR, assert_ctr_reaches_the_shim, remove_node, start_node
from gvisor_testinfra import REPO, RUNTIME_TYPE, expected_files, handler_table, runsc_version_line, uses_archive

# containerd 1.7 runs every release the mirror serves, of both layouts.
NODE = "faults-trixie"
IMAGE = "containerd-gvisor-node:trixie"
# The kubeadm-style configuration the node starts with (as molecule/default's bookworm node).
INITIAL_CONFIG = (REPO / "tests" / "fixtures" / "containerd" / "bookworm-v2.toml").read_bytes()
BASELINE = "20261005"  # the archive layout
OLD = "20240729"  # the loose layout


@pytest.fixture(scope="module")
def node(mirror, tmp_path_factory):
    """One fresh node for the module, removed afterwards (kept with CONTAINERD_GVISOR_KEEP_NODE=1)."""
    node = start_node(NODE, IMAGE, INITIAL_CONFIG)
    node.vars.update({
        "containerd_gvisor_runtime": "true",
        "containerd_gvisor_mirror_url": mirror.url,
        "containerd_gvisor_version": BASELINE,
        # Given, so that no run spends time gathering it (the Molecule scenarios do).
        "containerd_gvisor_arch": ARCH,
        # The control node's download cache of this module alone: a file cached by another run
        # would never meet the faults set here.
        "containerd_gvisor_download_cache_dir": str(tmp_path_factory.mktemp("download-cache")),
        # Short waits keep the suite fast; the faults below are sized to them.
        "containerd_gvisor_download_timeout": 2,
        "containerd_gvisor_download_retries": 3,
        "containerd_gvisor_download_delay": 1,
    })
    yield node
    if not os.environ.get("CONTAINERD_GVISOR_KEEP_NODE"):
        remove_node(NODE)


def ensure_release(node, version):
    """Install a release unless the node already holds exactly its files (under any name, e.g. latest)."""
    if node.bin_dir_files() != expected_files(version, ARCH):
        play = node.play(containerd_gvisor_version=version)
        assert play.ok, play


@pytest.fixture
def installed(node):
    """The node with a working gVisor install of the baseline release; returns its snapshot."""
    ensure_release(node, BASELINE)
    return node.snapshot()


def empty_download_cache(node):
    cache = Path(node.vars["containerd_gvisor_download_cache_dir"])
    shutil.rmtree(cache)
    cache.mkdir()


def assert_installed(node, version):
    """The bin dir holds exactly the mirror's files of a release: nothing stale, nothing half-written."""
    assert node.bin_dir_files() == expected_files(version, ARCH)
    has_helpers = f"{BIN_DIR}/gvisor-bin/" in node.snapshot()["files"]
    assert has_helpers == uses_archive(version, ARCH)
    assert node.sh(f"{BIN_DIR}/runsc --version").splitlines()[0] == runsc_version_line(version, ARCH)


def assert_cri_ok(node):
    """containerd runs and its CRI plugin loaded (it drops the plugin over a runtime it cannot load)."""
    assert node.containerd_active()
    cri = [line for line in node.sh("ctr plugins ls").splitlines() if " cri " in f" {line} "]
    assert cri and all(line.split()[-1] == "ok" for line in cri), cri


def effective_runtime_type(node, handler="gvisor"):
    dump = tomllib.loads(node.sh(f"containerd --config {CONFIG} config dump"))
    return (handler_table(dump, handler) or {}).get("runtime_type")


def requests_since(mirror, seen):
    return mirror.requests()[seen:]


# --- bad downloads -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["controller", "node"])
def test_tampered_file_fails_naming_it_and_both_checksums(node, mirror, installed, mode):
    path = f"/release/{OLD}/{ARCH}/runsc"
    mirror.set_faults({path: {"kind": "corrupt"}})
    play = node.play(containerd_gvisor_version=OLD, containerd_gvisor_download_mode=mode)

    assert not play.ok
    data = (mirror.root / path.lstrip("/")).read_bytes()
    expected = hashlib.sha512(data).hexdigest()
    served = hashlib.sha512(served_bytes(data, "corrupt")).hexdigest()
    assert f"runsc from {mirror.url}{path} does not match its checksum" in play.message
    assert f"expected sha512 {expected} ({mirror.url}{path}.sha512)" in play.message
    assert f"got sha512 {served}" in play.message
    assert f"The node is unchanged: it keeps gVisor {BASELINE} (archive) in {BIN_DIR}" in play.message
    assert node.snapshot() == installed  # binaries, config and containerd's process as they were
    # A whole body with other bytes is refused at once.
    assert mirror.faults()[path]["hits"] == 1


@pytest.mark.parametrize("mode", ["controller", "node"])
def test_a_file_cut_off_on_every_try_fails_after_bounded_tries(node, mirror, installed, mode):
    path = f"/release/{OLD}/{ARCH}/runsc"
    mirror.set_faults({path: {"kind": "truncate"}})
    play = node.play(containerd_gvisor_version=OLD, containerd_gvisor_download_mode=mode)

    assert not play.ok
    size = (mirror.root / path.lstrip("/")).stat().st_size
    assert f"GET {mirror.url}{path} failed: the body was cut off after {size // 2} of {size} bytes (gave up after 3 tries)" \
        in play.message
    assert f"The node is unchanged: it keeps gVisor {BASELINE} (archive) in {BIN_DIR}" in play.message
    assert node.snapshot() == installed
    # A cut-off body may be a glitch, so it is retried.
    assert mirror.faults()[path]["hits"] == 3


def test_malformed_sha512_fails_before_anything_is_downloaded(node, mirror, installed):
    path = f"/release/{OLD}/{ARCH}/runsc.sha512"
    mirror.set_faults({path: {"kind": "bad_sha512"}})
    seen = len(mirror.requests())
    play = node.play(containerd_gvisor_version=OLD)

    assert not play.ok
    assert f"{mirror.url}{path} is not a sha512sum line for runsc: got 'not-a-checksum  runsc" in play.message
    assert all(request["path"].endswith(".sha512") for request in requests_since(mirror, seen))
    assert node.snapshot() == installed


@pytest.mark.parametrize("fault, reason", [
    ({"kind": "500"}, "HTTP 500 Internal Server Error"),
    ({"kind": "stall", "seconds": 3}, "no answer within 2 s"),
])
def test_a_mirror_that_keeps_failing_is_named_after_bounded_tries(node, mirror, installed, fault, reason):
    path = f"/release/{OLD}/{ARCH}/gvisor.tar.bz2.sha512"
    mirror.set_faults({path: fault})
    play = node.play(containerd_gvisor_version=OLD)

    assert not play.ok
    assert f"GET {mirror.url}{path} failed: {reason} (gave up after 3 tries)" in play.message
    assert mirror.faults()[path]["hits"] == 3
    assert node.snapshot() == installed


@pytest.mark.parametrize("version, faults", [
    ("20991231", []),
    # A release the node does not have yet (the installed one needs no request at all).
    (OLD, ["gvisor.tar.bz2.sha512", "runsc.sha512", "containerd-shim-runsc-v1.sha512"]),
], ids=["missing-release", "404-on-every-layout"])
def test_release_not_found_names_every_url_tried(node, mirror, installed, version, faults):
    base = f"/release/{version}/{ARCH}"
    mirror.set_faults({f"{base}/{name}": {"kind": "404"} for name in faults})
    play = node.play(containerd_gvisor_version=version)

    assert not play.ok
    assert f"gVisor release '{version}' for {ARCH} was not found: tried " in play.message
    for name in ("gvisor.tar.bz2", "runsc", "containerd-shim-runsc-v1"):
        assert f"{mirror.url}{base}/{name}.sha512" in play.message
    assert node.snapshot() == installed


# --- bad input -----------------------------------------------------------------------------------


BAD_INPUTS = {
    "git-tag": ({"containerd_gvisor_version": "release-20240729.0"}, "is a git tag; the release bucket names "
                "releases without the prefix: use '20240729.0'"),
    "version-suffix": ({"containerd_gvisor_version": "20240729-rc1"}, "'20240729-rc1' is not a release name"),
    "version-placeholder": ({"containerd_gvisor_version": "yyyymmdd"}, "(yyyymmdd is a placeholder)"),
    "runtime-not-boolean": ({"containerd_gvisor_runtime": "ture"}, "'ture' is not a valid boolean"),
    "arch-debian-name": ({"containerd_gvisor_arch": "amd64"}, "no release for architecture 'amd64'"),
    "arch-unsupported": ({"containerd_gvisor_arch": "riscv64"}, "supported are x86_64, aarch64"),
    "url-ftp": ({"containerd_gvisor_mirror_url": "ftp://127.0.0.1/gvisor"}, "must be an http:// or https:// URL"),
    "url-no-scheme": ({"containerd_gvisor_mirror_url": "127.0.0.1/gvisor"}, "must be an http:// or https:// URL"),
    "handler-uppercase": ({"containerd_gvisor_runtime_handler": "gVisor"}, "'gVisor' is not a valid handler name"),
    "handler-dotted": ({"containerd_gvisor_runtime_handler": "runsc.v1"}, "'runsc.v1' is not a valid handler name"),
    "runsc-value-list": ({"containerd_gvisor_runsc_config": {"debug": [True]}},
                         "containerd_gvisor_runsc_config.debug must be a string, number or boolean"),
    "runsc-value-dict": ({"containerd_gvisor_runsc_config": {"debug": {"on": True}}}, "got dict"),
    "runsc-value-null": ({"containerd_gvisor_runsc_config": {"debug": None}}, "got null"),
    "runsc-flag-name": ({"containerd_gvisor_runsc_config": {"--debug": "true"}}, "is not a runsc flag name"),
    "pinned-checksum": ({"containerd_gvisor_version": OLD, "containerd_gvisor_checksums": {"runsc": "abc"}},
                        "containerd_gvisor_checksums.runsc must be a sha512 checksum"),
    "state": ({"containerd_gvisor_state": "removed"}, "containerd_gvisor_state"),
    "download-tries": ({"containerd_gvisor_download_retries": 0}, "must be positive"),
    "shared-runsc-toml": ({"containerd_gvisor_handlers": [{"name": "gvisor", "runsc_config_path": RUNSC_TOML},
                                                          {"name": "gvisor-kvm", "runsc_config_path": RUNSC_TOML}]},
                          f"Handlers gvisor and gvisor-kvm share the runsc.toml {RUNSC_TOML}"),
    "platform": ({"containerd_gvisor_handlers": [{"name": "gvisor", "runsc_config_path": RUNSC_TOML, "platform": "x"}]},
                 "value of platform must be one of: auto, systrap, kvm, ptrace, got: x found in containerd_gvisor_handlers"),
}


@pytest.fixture(scope="module")
def bad_input_plays(node):
    """Every bad-input run, all started at once (none may change the node), with snapshots around them."""
    ensure_release(node, BASELINE)
    before = node.snapshot()
    runs = {case: node.start_play(**overrides) for case, (overrides, _message) in BAD_INPUTS.items()}
    plays = {case: node.finish(run) for case, run in runs.items()}
    return before, plays, node.snapshot()


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_fails_before_any_change(bad_input_plays, case):
    before, plays, after = bad_input_plays
    play = plays[case]

    assert not play.ok
    assert BAD_INPUTS[case][1] in play.message
    assert after == before


# --- containerd's configuration ----------------------------------------------------------------------


def test_unparsable_containerd_config_is_named_and_left_byte_for_byte(node, installed):
    good = node.read(CONFIG)
    broken = good + b'\n[plugins."io.containerd.grpc.v1.cri"\n'  # a table header left open
    node.write(CONFIG, broken)
    try:
        before = node.snapshot()
        play = node.play()

        assert not play.ok
        assert f"containerd cannot parse {CONFIG}: " in play.message
        assert "failed to load TOML" in play.message and "unclosed table key" in play.message
        assert node.read(CONFIG) == broken
        assert node.snapshot() == before  # and containerd was not restarted
    finally:
        node.write(CONFIG, good)


REFUSING_DROP_IN = "/etc/systemd/system/containerd.service.d/zz-test-refuse.conf"


def test_containerd_refusing_the_new_config_gets_the_previous_one_back(node, installed):
    # containerd fails to start once the file names the handler below; the file is still valid,
    # so it passes `containerd config dump` and is written before the restart finds the problem.
    node.sh(f"mkdir -p {shlex.quote(REFUSING_DROP_IN.rsplit('/', 1)[0])}")
    node.write(REFUSING_DROP_IN, (
        "[Service]\n"
        "ExecStartPre=/bin/sh -c 'if grep -q gvisor-refused " + CONFIG + "; then "
        "echo containerd refuses this configuration, a test drop-in >&2; exit 1; fi'\n"
    ).encode())
    node.sh("systemctl daemon-reload")
    try:
        before = node.read(CONFIG)
        play = node.play(containerd_gvisor_runtime_handler="gvisor-refused")

        assert not play.ok
        assert f"containerd did not come up with the new {CONFIG} (Restart containerd: " in play.message
        assert "containerd refuses this configuration, a test drop-in" in play.message  # from containerd's log
        assert f"The previous {CONFIG} was put back and containerd is running with it again." in play.message
        assert node.read(CONFIG) == before
        assert_cri_ok(node)
        assert effective_runtime_type(node) == RUNTIME_TYPE
    finally:
        node.sh(f"rm -f {REFUSING_DROP_IN} && systemctl daemon-reload")


# --- upgrades -----------------------------------------------------------------------------------------


def test_transient_failures_are_retried_with_backoff_then_succeed(node, mirror, installed):
    empty_download_cache(node)  # so that every release file is fetched, and meets its fault
    base = f"/release/{OLD}/{ARCH}"
    faults = {
        f"{base}/gvisor.tar.bz2.sha512": {"kind": "500", "count": 2},
        f"{base}/runsc.sha512": {"kind": "stall", "seconds": 3, "count": 1},
        f"{base}/runsc": {"kind": "truncate", "count": 1},
        f"{base}/containerd-shim-runsc-v1": {"kind": "500", "count": 1},
    }
    mirror.set_faults(faults)
    seen = len(mirror.requests())
    play = node.play(containerd_gvisor_version=OLD)

    assert play.ok, play
    assert {path: fault["hits"] for path, fault in mirror.faults().items()} == {
        path: fault["count"] for path, fault in faults.items()}
    assert_installed(node, f"{OLD}.0")  # the archive's gvisor-bin/ went with the downgrade
    # The wait doubles: 1 s after the first 500, 2 s after the second.
    times = [datetime.datetime.fromisoformat(request["time"]) for request in requests_since(mirror, seen)
             if request["path"] == f"{base}/gvisor.tar.bz2.sha512"]
    assert len(times) == 3
    assert (times[1] - times[0]).total_seconds() >= 1 and (times[2] - times[1]).total_seconds() >= 2


def test_upgrade_downgrade_and_latest_moving_install_the_right_files(node, mirror):
    ensure_release(node, BASELINE)  # the archive layout, with gvisor-bin/
    try:
        # latest is the loose-layout release: the archive's gvisor-bin/ must not linger.
        point_latest(mirror.root, f"{OLD}.0")
        play = node.play(containerd_gvisor_version="latest")
        assert play.ok and play.changed, play
        assert_installed(node, f"{OLD}.0")

        # latest moved on to the archive layout between two runs.
        point_latest(mirror.root, f"{BASELINE}.0")
        play = node.play(containerd_gvisor_version="latest")
        assert play.ok and play.changed, play
        assert_installed(node, f"{BASELINE}.0")

        # Nothing to do: no change reported, and only the small .sha512 files fetched.
        seen = len(mirror.requests())
        play = node.play(containerd_gvisor_version="latest")
        assert play.ok and play.changed == 0, play
        assert all(request["path"].endswith(".sha512") for request in requests_since(mirror, seen))
        assert_cri_ok(node)
    finally:
        point_latest(mirror.root, f"{BASELINE}.0")


def test_a_run_stopped_before_restarting_containerd_is_finished_by_the_next(node, installed):
    # As if a run had written config.toml and stopped (interrupted, or its batch aborted) before the restart.
    # The file is newer than containerd's start (by more than node_info's 1 s margin), and older than the
    # restart the run makes. (A time in the future raced the run: a restart within it left the file newer.)
    node.sh(f"sleep 2; touch {CONFIG}")
    pid = node.snapshot()["containerd"]["MainPID"]
    play = node.play()

    assert play.ok and play.result(CHANGE_TASK)["restarted"] == ["containerd"], play
    assert node.snapshot()["containerd"]["MainPID"] != pid
    assert_cri_ok(node)
    again = node.play()
    assert again.ok and again.changed == 0, again


# --- several handlers --------------------------------------------------------------------------------


TWO_HANDLERS = [
    {"name": "gvisor", "runsc_config_path": RUNSC_TOML},
    {"name": "gvisor-debug", "runsc_config_path": "/etc/containerd/runsc-debug.toml",
     "runsc_config": {"debug": True, "debug-log": "/var/log/runsc/%ID%/"},
     "shim_config": {"log_level": "debug", "log_path": "/var/log/runsc/%ID%/shim.log"}},
]


def test_a_handler_taken_off_the_list_leaves_containerd_and_the_other_stays(node):
    ensure_release(node, BASELINE)
    play = node.play(containerd_gvisor_handlers=TWO_HANDLERS)
    assert play.ok, play
    assert effective_runtime_type(node, "gvisor-debug") == RUNTIME_TYPE
    assert tomllib.loads(node.read("/etc/containerd/runsc-debug.toml").decode())["log_level"] == "debug"
    smoke = play.result(CHANGE_TASK)["smoke"]
    assert [run["name"] for run in smoke] == ["gvisor", "gvisor-debug"]

    play = node.play(containerd_gvisor_handlers=TWO_HANDLERS[:1])
    assert play.ok and play.changed, play
    assert effective_runtime_type(node, "gvisor-debug") is None
    assert effective_runtime_type(node, "gvisor") == RUNTIME_TYPE
    assert node.read("/etc/containerd/runsc-debug.toml") is None
    config = tomllib.loads(node.read(CONFIG).decode())
    assert handler_table(config, "gvisor-debug") is None and handler_table(config, "gvisor") is not None
    assert_cri_ok(node)


# --- removal and concurrency -------------------------------------------------------------------------


def test_removal_takes_gvisor_off_and_keeps_everything_else(node):
    ensure_release(node, BASELINE)
    assert node.read(RUNSC_TOML) is not None  # written for SystemdCgroup = true
    play = node.play(containerd_gvisor_state="absent")

    assert play.ok and play.changed, play
    files = node.snapshot()["files"]
    assert not [path for path in files if path.startswith((BIN_DIR + "/", STATE_DIR))]
    assert RUNSC_TOML not in files
    # Only the handler's tables went: the node's own file is back, every byte of it.
    assert node.read(CONFIG) == INITIAL_CONFIG
    assert effective_runtime_type(node) is None
    assert_cri_ok(node)

    again = node.play(containerd_gvisor_state="absent")
    assert again.ok and again.changed == 0, again


def test_two_runs_at_once_leave_one_whole_release(node):
    # Two releases of both layouts at once onto a node without gVisor: the install module holds a
    # lock, so whichever installs last leaves its release whole, as its record says.
    runs = [node.start_play(containerd_gvisor_version=version) for version in (OLD, BASELINE)]
    plays = [node.finish(run) for run in runs]

    assert all(play.ok for play in plays), plays
    assert all(play.result(CHANGE_TASK)["changed"]
               for play in plays)
    recorded = node.release()["release"]["version"]
    assert recorded in (OLD, BASELINE)
    assert_installed(node, f"{recorded}.0")
    assert node.snapshot()["staging"] == []
    assert effective_runtime_type(node) == RUNTIME_TYPE
    assert_cri_ok(node)


# --- defects found by trying faults and attacks ----------------------------------------------------------------


def test_a_mirror_that_trickles_is_stopped_at_the_download_timeout(node, mirror, installed, fault_case):
    empty_download_cache(node)
    path = f"/release/{OLD}/{ARCH}/runsc"
    mirror.set_faults({path: {"kind": "trickle", "bytes_per_second": 1024}})
    for mode in ("controller", "node"):
        started = datetime.datetime.now()
        play = node.play(containerd_gvisor_version=OLD, containerd_gvisor_download_mode=mode)
        took = (datetime.datetime.now() - started).total_seconds()
        assert not play.ok
        assert (f"GET {mirror.url}{path} failed: the download took longer than 2 s (containerd_gvisor_download_timeout) "
                "and was stopped (gave up after 3 tries)") in play.message, play.message
        # Three tries of 2 s, a second and two between them, and the rest of the run: not hours.
        assert took < 60, took
        assert node.snapshot() == installed
        fault_case(f"a mirror that trickles ({mode} mode)", node)


def test_a_redirect_loop_is_refused_naming_the_url(node, mirror, installed, fault_case):
    path = f"/release/{OLD}/{ARCH}/gvisor.tar.bz2.sha512"
    mirror.set_faults({path: {"kind": "redirect_loop"}})
    play = node.play(containerd_gvisor_version=OLD)
    assert not play.ok
    assert f"GET {mirror.url}{path} failed: HTTP 302" in play.message, play.message
    assert node.snapshot() == installed
    fault_case("a redirect loop", node)


def test_credentials_in_the_mirror_url_are_refused_and_never_shown_or_stored(node, mirror, installed, tmp_path):
    secret = "s3cret-in-the-url"
    url = mirror.url.replace("://", f"://user:{secret}@")
    log = tmp_path / "ansible.log"
    play = node.play(ansible_args=["-vvv"], ansible_env={"ANSIBLE_LOG_PATH": str(log), "ANSIBLE_VERBOSE_TO_STDERR": "1"},
                     containerd_gvisor_mirror_url=url)
    assert not play.ok
    assert "containerd_gvisor_mirror_url holds credentials" in play.message
    assert "containerd_gvisor_url_username and containerd_gvisor_url_password" in play.message
    assert node.snapshot() == installed
    shown = [where for where, text in (("the result", play.stdout), ("the log", log.read_text()), ("stderr", play.stderr))
             if secret in text]
    assert shown == []
    assert node.sh(f"grep -rl {shlex.quote(secret)} {BIN_DIR} /etc/containerd {STATE_DIR} /var/tmp /tmp || true").strip() == ""


def test_a_symlinked_config_toml_keeps_its_link_and_its_target_is_edited_and_restored(node, fault_case):
    ensure_release(node, BASELINE)
    assert node.play(containerd_gvisor_state="absent").ok
    target = "/etc/containerd/config-real.toml"
    node.sh(f"mv {CONFIG} {target} && ln -s {target} {CONFIG} && systemctl restart containerd")
    original = node.read(target)
    try:
        play = node.play()
        assert play.ok, play
        assert node.sh(f"readlink {CONFIG}").strip() == target
        assert handler_table(tomllib.loads(node.read(target).decode()), "gvisor")["runtime_type"] == RUNTIME_TYPE
        assert effective_runtime_type(node) == RUNTIME_TYPE
        play = node.play(containerd_gvisor_state="absent")
        assert play.ok, play
        assert node.sh(f"readlink {CONFIG}").strip() == target
        assert node.read(target) == original
    finally:
        node.sh(f"rm -f {CONFIG} && mv {target} {CONFIG} && systemctl restart containerd")


def test_a_noexec_staging_directory_is_refused_before_any_change(node, installed):
    staging = f"{STATE_DIR}/staging"
    node.sh(f"mkdir -p {staging} && mount -t tmpfs -o noexec tmpfs {staging}")
    try:
        before = node.snapshot()
        play = node.play(containerd_gvisor_version=OLD)
        assert not play.ok
        assert (f"containerd_gvisor_staging_dir {staging} is on a filesystem mounted noexec ({staging}): the role runs the "
                "downloaded runsc there") in play.message
        assert node.snapshot() == before
        # Elsewhere it works.
        play = node.play(containerd_gvisor_version=OLD, containerd_gvisor_staging_dir="/var/tmp/containerd-gvisor")
        assert play.ok, play
        assert node.sh("ls -A /var/tmp/containerd-gvisor 2>/dev/null || true").strip() == ""
    finally:
        node.sh(f"umount {staging}; rmdir {staging} || true")


@pytest.mark.parametrize("text, said", [
    (b"version = 2\n# caf\xe9 au lait\n", "line 2 holds the byte 0xe9, which is not UTF-8"),
    (b"\xef\xbb\xbfversion = 2\n", "starts with a UTF-8 byte order mark"),
    (b'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\n  gvisor = { runtime_type = "x" }\n',
     f"cannot merge the gvisor runtime into {CONFIG} safely: the table at line 3 is an inline table or uses dotted keys"),
    (b'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\n  gvisor.runtime_type = "x"\n',
     f"cannot merge the gvisor runtime into {CONFIG} safely: the table at line 3 is an inline table or uses dotted keys"),
], ids=["latin-1", "bom", "inline-table", "dotted-keys"])
def test_a_config_toml_that_cannot_be_edited_is_refused_with_the_line_before_any_change(node, installed, text, said):
    good = node.read(CONFIG)
    node.write(CONFIG, text)
    try:
        before = node.snapshot()
        play = node.play()
        assert not play.ok
        assert said in play.message, play.message
        assert "CapturedExceptionMarker" not in play.message
        assert node.snapshot() == before
    finally:
        node.write(CONFIG, good)


def test_the_ctr_smoke_test_reaches_the_shim_on_containerd_17(node, installed):
    assert_ctr_reaches_the_shim(node)
