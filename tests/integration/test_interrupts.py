"""Interrupted changes: the module killed on the node after each step, and the control node killed mid-run.

The release module keeps what a change replaces with a journal. Killed on the node, the run's own rescue
finishes or undoes the change at once; with the control node killed too, the next run does, before it plans.
After each case the node must be whole (Node.problems(): containerd and its CRI plugin up, no journal left, the
installed files those the record names, a sandbox that starts), the next run must converge, and a later
failing run must put back exactly the state before it, never an older one.

The module stops after a step when the node's CONTAINERD_GVISOR_TEST_HOOK file names that step ("STEP" kills
it; "STEP pause" stops it, for the test to kill the control node first).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from gvisor_node import ARCH, BIN_DIR, STATE_DIR, remove_node, start_node
from gvisor_testinfra import REPO, expected_files

NODE = "interrupts-trixie"
HOOK = "/run/containerd-gvisor-test-hook"
INITIAL_CONFIG = (REPO / "tests" / "fixtures" / "containerd" / "bookworm-v2.toml").read_bytes()
NEW, OLD = "20261005", "20240729"  # the archive layout, and the loose one
TWO_HANDLERS = {"containerd_gvisor_handlers": [{"name": "gvisor", "runsc_config_path": "/etc/containerd/runsc.toml"},
                                               {"name": "gvisor-ptrace", "platform": "ptrace",
                                                "runsc_config_path": "/etc/containerd/runsc-ptrace.toml"}]}


@pytest.fixture(scope="module")
def node(mirror, tmp_path_factory):
    node = start_node(NODE, "containerd-gvisor-node:trixie", INITIAL_CONFIG, env={"CONTAINERD_GVISOR_TEST_HOOK": HOOK})
    node.vars.update({
        "containerd_gvisor_runtime": True, "containerd_gvisor_mirror_url": mirror.url, "containerd_gvisor_arch": ARCH,
        "containerd_gvisor_download_cache_dir": str(tmp_path_factory.mktemp("cache")), "containerd_gvisor_download_delay": 1,
        # docker exec already runs as root, and sudo would drop CONTAINERD_GVISOR_TEST_HOOK from the environment.
        "ansible_become": False,
    })
    yield node
    if not os.environ.get("CONTAINERD_GVISOR_KEEP_NODE"):
        remove_node(NODE)


def start_from(node, version):
    """The node with nothing of gVisor's (version None) or with exactly that release installed."""
    node.sh(f"rm -f {HOOK}")
    if version is None:
        assert node.play(containerd_gvisor_state="absent").ok
    elif node.bin_dir_files() != expected_files(version, ARCH):
        assert node.play(containerd_gvisor_version=version).ok
    return node.snapshot()


def assert_converges_and_a_later_failure_puts_back_only_its_own_change(node, version):
    play = node.play(containerd_gvisor_version=version)
    assert play.ok, play
    assert node.bin_dir_files() == expected_files(version, ARCH)  # one release, whole
    before = node.snapshot()
    failing = node.play(containerd_gvisor_version=version, containerd_gvisor_runsc_config={"overlay2": "bogus"})
    assert not failing.ok and 'invalid value "bogus" for flag -overlay2' in failing.message
    assert node.snapshot() == before


STEPS = ["kept", "installed", "written", "smoked", "restarted", "proven"]
CASES = [("first-install", None, step) for step in STEPS] + [("upgrade", OLD, step) for step in ("installed", "written", "proven")]


@pytest.mark.parametrize("scenario, start, step", CASES, ids=[f"{scenario}-{step}" for scenario, _start, step in CASES])
def test_the_module_killed_after_a_step_is_finished_or_undone_by_the_same_run(node, fault_case, scenario, start, step):
    before = start_from(node, start)
    node.write(HOOK, step.encode())
    play = node.play(containerd_gvisor_version=NEW)
    node.sh(f"rm -f {HOOK}")

    assert not play.ok
    if step == "proven":
        # Proven before the kill: the change is kept, whole.
        assert "A change was stopped half way after it had been proven: it was kept" in play.message
        assert node.bin_dir_files() == expected_files(NEW, ARCH)
    else:
        assert "was put back" in play.message
        held = f"gVisor {start} (loose)" if start else "no gVisor"
        assert f"the node has {held} in {BIN_DIR}" in play.message
        assert node.snapshot()["files"] == before["files"]
    fault_case(f"module killed after {step} ({scenario})", node)
    assert_converges_and_a_later_failure_puts_back_only_its_own_change(node, NEW)


def descendants(pid):
    """pid and every process below it, whatever session it runs in (Ansible's workers start their own)."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                parents.setdefault(int(handle.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += parents.get(found[-1], [])
    return found


def kill_control_node(proc):
    """SIGKILL ansible-playbook and every process below it at once, as a crash or an OOM kill would."""
    for pid in descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()


def wait_for(predicate, seconds=120):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.parametrize("scenario, start, step", [("first-install", None, "written"), ("upgrade", OLD, "restarted")])
def test_a_change_left_unfinished_with_the_control_node_killed_is_undone_by_the_next_run(
        node, fault_case, scenario, start, step):
    before = start_from(node, start)
    node.write(HOOK, f"{step} pause".encode())
    # The upgrade also adds a handler, so that containerd's configuration changes and containerd restarts.
    proc = node.start_play(containerd_gvisor_version=NEW, **(TWO_HANDLERS if step == "restarted" else {}))
    # The module stops itself after the step: kill the control node, then the module.
    stopped = "grep -l 'State:.*(stopped)' /proc/[0-9]*/status 2>/dev/null | cut -d/ -f3"
    wait_for(lambda: node.sh(stopped, check=False).strip())
    kill_control_node(proc)
    node.sh(f"kill -9 $({stopped})")
    node.sh(f"rm -f {HOOK}")
    assert node.read(f"{STATE_DIR}/transaction/journal.json") is not None  # the change is unfinished

    play = node.play(containerd_gvisor_version=start or NEW)
    assert play.ok, play
    said = play.result("Say what was done")["msg"]
    assert "A change was stopped half way before it was proven: what it had replaced was put back" in said
    assert node.read(f"{STATE_DIR}/transaction/journal.json") is None
    if start:
        assert node.snapshot()["files"] == before["files"]
    fault_case(f"control node and module killed after {step} ({scenario})", node)
    assert_converges_and_a_later_failure_puts_back_only_its_own_change(node, NEW)


def test_the_control_node_killed_during_the_download_leaves_nothing_to_undo(node, mirror, fault_case):
    before = start_from(node, OLD)
    path = f"/release/{NEW}/{ARCH}/gvisor.tar.bz2"
    mirror.set_faults({path: {"kind": "trickle", "bytes_per_second": 4096}})
    empty = node.vars["containerd_gvisor_download_cache_dir"] + "-empty"
    proc = node.start_play(containerd_gvisor_version=NEW, containerd_gvisor_download_cache_dir=empty)
    wait_for(lambda: mirror.faults()[path]["hits"] > 0)
    kill_control_node(proc)
    mirror.clear_faults()

    assert node.snapshot() == before
    fault_case("control node killed during the download", node)
    assert_converges_and_a_later_failure_puts_back_only_its_own_change(node, NEW)
