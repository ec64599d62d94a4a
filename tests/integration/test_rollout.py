"""Rolling rollouts: four nodes in batches of two, and a node that fails in the first batch.

The playbook runs with containerd_gvisor_serial 2 and the default containerd_gvisor_max_fail_percentage
(0): the failed batch must stop the rollout before the second batch starts, so the second batch's
nodes keep every byte and containerd's process.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from gvisor_node import ANSIBLE_PLAYBOOK, ARCH, CONFIG, PLAYBOOK, REPO, remove_node, start_node

IMAGE = "containerd-gvisor-node:bookworm"
NODES = [f"rollout-{i}" for i in range(1, 5)]


@pytest.fixture(scope="module")
def nodes(mirror, tmp_path_factory):
    with ThreadPoolExecutor(max_workers=4) as pool:
        started = list(pool.map(lambda name: start_node(name, IMAGE), NODES))
    yield {node.name: node for node in started}
    if not os.environ.get("CONTAINERD_GVISOR_KEEP_NODE"):
        for name in NODES:
            remove_node(name)


def rollout(mirror, cache, **variables):
    """Run playbooks/gvisor.yml over the four nodes; return (rc, hosts that ran the role's first task)."""
    inventory = cache / "inventory.ini"
    inventory.write_text("".join(f"{name} ansible_connection=community.docker.docker\n" for name in NODES))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_PIPELINING="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1")
    extra = {"containerd_gvisor_runtime": True, "containerd_gvisor_version": "20240729", "containerd_gvisor_arch": ARCH,
             "containerd_gvisor_mirror_url": mirror.url, "containerd_gvisor_download_cache_dir": str(cache / "downloads"),
             **variables}
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(inventory), "-e", json.dumps(extra), str(PLAYBOOK)],
                          capture_output=True, text=True, env=env, check=False, timeout=900)
    data = json.loads(proc.stdout)
    batches = [sorted(play["tasks"][0]["hosts"]) for play in data["plays"]]
    return proc.returncode, batches, data["stats"]


def test_a_failed_batch_stops_the_rollout_before_the_next_batch(nodes, mirror, tmp_path):
    first, second = NODES[:2], NODES[2:]
    # containerd cannot parse this node's configuration: the role stops there, before any change.
    nodes[first[0]].write(CONFIG, b"version = 2\n[plugins\n")
    before = {name: nodes[name].snapshot() for name in second}

    rc, batches, stats = rollout(mirror, tmp_path, containerd_gvisor_serial=2)

    assert rc != 0
    assert batches == [first]  # the second batch never started
    assert stats[first[0]]["failures"] == 1
    for name in second:
        assert name not in stats
        assert nodes[name].snapshot() == before[name]  # every byte and containerd's process as they were
        assert nodes[name].read("/usr/local/bin/runsc") is None


def test_with_every_node_healthy_the_batches_run_one_after_the_other(nodes, mirror, tmp_path):
    nodes[NODES[0]].write(CONFIG, (REPO / "tests" / "fixtures" / "containerd" / "bookworm-v2.toml").read_bytes())
    seen = len(mirror.requests())
    rc, batches, stats = rollout(mirror, tmp_path, containerd_gvisor_serial=2)

    assert rc == 0, stats
    assert batches == [NODES[:2], NODES[2:]]
    assert all(stats[name]["failures"] == 0 for name in NODES)
    # In controller mode the control node asks for each checksum once per batch, not once per node, and
    # fetches each file once: the second batch finds it in the download cache.
    requests = Counter(request["path"] for request in mirror.requests()[seen:])
    base = f"/release/20240729/{ARCH}"
    assert requests == {f"{base}/gvisor.tar.bz2.sha512": 2, f"{base}/runsc.sha512": 2,
                        f"{base}/containerd-shim-runsc-v1.sha512": 2, f"{base}/runsc": 1,
                        f"{base}/containerd-shim-runsc-v1": 1}
    for node in nodes.values():
        assert "Starting gVisor" in node.sh("/usr/local/bin/runsc --network=none do dmesg")
