"""Docker Engine: gVisor registered in daemon.json (merged, never clobbered) and proven with docker run.

One trixie node container with Debian's docker.io (tests/harness/build-images trixie-docker), whose
Docker the test configures for a container (no bridge, no iptables, the vfs storage driver) and
starts, with a busybox image imported from the node's own busybox-static: there is no registry.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from gvisor_node import ARCH, CHANGE_TASK, remove_node, start_node
from gvisor_testinfra import assert_gvisor_banner, free_port, sandbox_series, scrape

IMAGE = "containerd-gvisor-node:trixie-docker"
DAEMON_JSON = "/etc/docker/daemon.json"
# What the node's Docker needs inside a container; the role must keep every key of it.
SETTINGS = {"bridge": "none", "iptables": False, "ip-masq": False, "storage-driver": "vfs", "log-level": "warn"}


def docker_pid(node):
    return node.sh("systemctl show docker -p MainPID --value").strip()


@pytest.fixture(scope="module")
def node(mirror, tmp_path_factory):
    node = start_node("docker-trixie", IMAGE)
    node.write(DAEMON_JSON, json.dumps(SETTINGS).encode())
    # These tests restart Docker more often in a minute than the start limit of Debian's unit allows.
    node.sh("mkdir -p /etc/systemd/system/docker.service.d && printf '[Unit]\\nStartLimitIntervalSec=0\\n'"
            " > /etc/systemd/system/docker.service.d/zz-test.conf && systemctl daemon-reload")
    node.sh("systemctl enable --now docker.socket docker.service && until docker info >/dev/null 2>&1; do sleep 1; done")
    node.sh("mkdir -p /tmp/bb/bin && cp /bin/busybox /tmp/bb/bin/ && ln -sf busybox /tmp/bb/bin/dmesg"
            " && tar -C /tmp/bb -c . | docker import - local/busybox >/dev/null")
    node.vars.update({
        "containerd_gvisor_runtime": True, "containerd_gvisor_mirror_url": mirror.url, "containerd_gvisor_arch": ARCH,
        "containerd_gvisor_version": "latest", "containerd_gvisor_download_delay": 1,
        "containerd_gvisor_download_cache_dir": str(tmp_path_factory.mktemp("cache")),
        "containerd_gvisor_docker": True, "containerd_gvisor_docker_smoke_image": "local/busybox",
        # runsc refuses the host's network namespace, which these node containers share.
        "containerd_gvisor_runsc_config": {"network": "none"},
    })
    yield node
    if not os.environ.get("CONTAINERD_GVISOR_KEEP_NODE"):
        remove_node(node.name)


def test_runsc_is_merged_into_daemon_json_and_docker_runs_a_gvisor_sandbox(node):
    pid = docker_pid(node)
    play = node.play()

    assert play.ok, play
    config = json.loads(node.read(DAEMON_JSON))
    assert config == {**SETTINGS, "runtimes": {"runsc": {"path": "/usr/local/bin/runsc", "runtimeArgs": ["--platform=systrap", "--network=none"]}}}
    assert docker_pid(node) != pid  # restarted, since the file changed
    # The role's own proof: a sandbox through Docker, after the restart.
    assert "docker" in play.result(CHANGE_TASK)["restarted"]
    assert [run["rc"] for run in play.result(CHANGE_TASK)["smoke"] if run["argv"][:2] == ["docker", "run"]] == [0]
    assert_gvisor_banner(node.sh("docker run --rm --pull=never --runtime=runsc --network=none local/busybox dmesg"))


def test_a_run_that_changes_nothing_leaves_docker_running(node):
    pid = docker_pid(node)
    play = node.play()
    assert play.ok and play.changed == 0, play
    assert docker_pid(node) == pid


def test_invalid_json_is_refused_before_any_change(node):
    good = node.read(DAEMON_JSON)
    broken = good.rstrip()[:-1]  # the closing brace gone
    node.write(DAEMON_JSON, broken)
    try:
        before, pid = node.snapshot(), docker_pid(node)
        play = node.play(containerd_gvisor_runsc_config={"debug": True})

        assert not play.ok
        assert f"{DAEMON_JSON} is not valid JSON" in play.message
        assert node.snapshot() == before and docker_pid(node) == pid
        assert node.read(DAEMON_JSON) == broken
    finally:
        node.write(DAEMON_JSON, good)


def test_a_missing_daemon_json_is_created_and_a_stopped_docker_left_stopped(node):
    saved = node.read(DAEMON_JSON)
    node.sh("systemctl stop docker.socket docker.service")
    node.sh(f"rm {DAEMON_JSON}")
    try:
        play = node.play()
        assert play.ok, play
        assert json.loads(node.read(DAEMON_JSON)) == {
            "runtimes": {"runsc": {"path": "/usr/local/bin/runsc", "runtimeArgs": ["--platform=systrap", "--network=none"]}}}
        assert node.sh("systemctl is-active docker", check=False).strip() != "active"
    finally:
        node.write(DAEMON_JSON, saved)
        node.sh("systemctl start docker.socket docker.service && until docker info >/dev/null 2>&1; do sleep 1; done")


def test_docker_sandboxes_report_to_a_metric_server_of_their_own(node):
    """Docker keeps its sandboxes in a runsc root of its own, so its runtime gets its own server's address."""
    ours, dockers = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    metrics = {"containerd_gvisor_metrics": True, "containerd_gvisor_metrics_address": ours,
               "containerd_gvisor_metrics_docker_address": dockers}
    try:
        play = node.play(**metrics)
        assert play.ok, play
        args = json.loads(node.read(DAEMON_JSON))["runtimes"]["runsc"]["runtimeArgs"]
        assert args == ["--platform=systrap", "--network=none", f"--metric-server={dockers}"]
        assert node.sh("systemctl is-active containerd-gvisor-metrics containerd-gvisor-metrics-docker").split() == [
            "active", "active"]
        # The role's proofs: a sandbox with the handler's flags for containerd's server, one with Docker's for Docker's.
        assert [(run["name"], run["address"]) for run in play.result(CHANGE_TASK)["smoke"] if "sandbox" in run] == [
            ("gvisor", ours), ("docker", dockers)]

        # A real Docker container in gVisor, found by Docker's server.
        container = node.sh("docker run -d --pull=never --runtime=runsc --network=none local/busybox /bin/busybox sleep 300").strip()
        try:
            deadline, found = time.monotonic() + 30, []
            while not found and time.monotonic() < deadline:
                found = sandbox_series(scrape(dockers), "runsc_meta_sandbox_running", container)
                time.sleep(1)
            assert found and found[0].endswith(" 1"), scrape(dockers)
            assert not sandbox_series(scrape(ours), "runsc_meta_sandbox_running", container)
        finally:
            node.sh(f"docker rm -f {container}")
        assert node.play(**metrics).changed == 0
    finally:
        play = node.play()  # metrics off again: both servers go, and Docker's flag
        assert play.ok, play
    assert node.read("/etc/systemd/system/containerd-gvisor-metrics-docker.service") is None
    assert json.loads(node.read(DAEMON_JSON))["runtimes"]["runsc"]["runtimeArgs"] == ["--platform=systrap", "--network=none"]


def test_removal_takes_only_the_runtime_out(node):
    pid = docker_pid(node)
    play = node.play(containerd_gvisor_state="absent")
    assert play.ok, play
    assert json.loads(node.read(DAEMON_JSON)) == SETTINGS
    assert docker_pid(node) != pid
    assert "runsc" not in node.sh("docker info --format '{{json .Runtimes}}'")
