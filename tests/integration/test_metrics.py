"""gVisor's metric server: the unit, the handlers' flags, the proof in the smoke test, the refusals, and a real
Prometheus (Debian's, from tests/harness/prometheus) scraping a long-lived sandbox with the README's scrape job.

The release is the test mirror's 20261005, whose gvisor-bin/runsc-metric-server is the mirror's TEST STAND-IN
metric server (tests/mirror/metric-server-stand-in.py.in): Debian's runsc, the only real runsc here, is built
without one. The stand-in exports real sandboxes, started by the real runsc, from their state files and
`runsc export-metrics`. Node containers share the host's network, so every address is a free port on 127.0.0.1,
and the host reads the node's server directly.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from gvisor_node import ARCH, BIN_DIR, CHANGE_TASK, RUNSC_TOML, remove_node, start_node
from gvisor_testinfra import REPO, free_port, sandbox_series, scrape

NEW, DEBIAN = "20261005", "20240729"  # a release with a metric server, and Debian's runsc without one
UNIT = "/etc/systemd/system/containerd-gvisor-metrics.service"
ROOT = "/run/containerd/runsc/k8s.io"
FAULT = "/run/containerd-gvisor-test-metric-server"
HOOK = "/run/containerd-gvisor-test-hook"  # the release module's journal hook (module_utils/transaction.py)


def main_pid(node, unit="containerd-gvisor-metrics"):
    return node.sh(f"systemctl show {unit} -p MainPID --value").strip()


def start_sandbox(node, sandbox, address):
    """A long-lived sandbox in containerd's Kubernetes root, with the handler's flags from its runsc.toml, as the
    shim would start it (the node's own file system as its root, no network)."""
    flags = node.sh(f"python3 -c 'import tomllib; print(\" \".join(f\"--{{k}}={{v}}\" for k, v in "
                    f"tomllib.load(open(\"{RUNSC_TOML}\", \"rb\"))[\"runsc_config\"].items() if k != \"network\"))'").strip()
    assert f"--metric-server={address}" in flags.split()
    spec = {"ociVersion": "1.0.0", "process": {"args": ["sleep", "600"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                                               "env": ["PATH=/usr/bin:/bin"]},
            "root": {"path": "/", "readonly": True},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": [{"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount")]}}
    node.sh(f"mkdir -p /root/{sandbox}")
    node.write(f"/root/{sandbox}/config.json", json.dumps(spec).encode())
    node.sh(f"{BIN_DIR}/runsc --root={ROOT} {flags} --network=none run --detach --bundle /root/{sandbox} {sandbox}"
            " </dev/null >/dev/null 2>&1")


def delete_sandbox(node, sandbox):
    node.sh(f"{BIN_DIR}/runsc --root={ROOT} delete --force {sandbox}; rm -rf /root/{sandbox}", check=False)


@pytest.fixture(scope="module")
def node(mirror, tmp_path_factory):
    node = start_node("metrics-trixie", "containerd-gvisor-node:trixie", env={"CONTAINERD_GVISOR_TEST_HOOK": HOOK})
    node.vars.update({
        # docker exec already runs as root, and sudo would drop CONTAINERD_GVISOR_TEST_HOOK from the environment.
        "ansible_become": False,
        "containerd_gvisor_runtime": True, "containerd_gvisor_mirror_url": mirror.url, "containerd_gvisor_arch": ARCH,
        "containerd_gvisor_version": NEW, "containerd_gvisor_download_delay": 1,
        "containerd_gvisor_download_cache_dir": str(tmp_path_factory.mktemp("cache")),
        "containerd_gvisor_runsc_config": {"network": "none"},  # runsc refuses the host's network namespace
        "containerd_gvisor_metrics": True, "containerd_gvisor_metrics_address": f"127.0.0.1:{free_port()}",
    })
    yield node
    if not os.environ.get("CONTAINERD_GVISOR_KEEP_NODE"):
        remove_node(node.name)


@pytest.fixture()
def converged(node):
    """The node with gVisor and its metric server as the node's variables ask."""
    node.sh(f"rm -f {FAULT}")
    play = node.play()
    assert play.ok, play
    return node


def test_the_metric_server_runs_and_exports_a_sandbox_started_with_the_handlers_flags(node):
    play = node.play()

    assert play.ok, play
    address = node.vars["containerd_gvisor_metrics_address"]
    assert node.sh("systemctl is-active containerd-gvisor-metrics; systemctl is-enabled containerd-gvisor-metrics").split() \
        == ["active", "enabled"]
    # The release's own helper serves, on the address the handler's runsc.toml names.
    assert f"ExecStart={BIN_DIR}/gvisor-bin/runsc-metric-server --root={ROOT} --metric-server={address} metric-server" \
        in node.read(UNIT).decode()
    assert f'metric-server = "{address}"' in node.read(RUNSC_TOML).decode()
    # The role's proof: a sandbox with the handler's flags, found in the server's /metrics.
    proofs = [run for run in play.result(CHANGE_TASK)["smoke"] if "sandbox" in run]
    assert [(run["name"], run["address"]) for run in proofs] == [("gvisor", address)]
    assert "runsc_meta_metric_server_presence 1" in scrape(address)
    assert not sandbox_series(scrape(address), "runsc_meta_sandbox_presence", proofs[0]["sandbox"])  # and it went


def test_a_run_that_changes_nothing_leaves_the_server_running(converged):
    pid = main_pid(converged)
    play = converged.play()
    assert play.ok and play.changed == 0, play
    assert main_pid(converged) == pid


def test_prometheus_scrapes_a_long_lived_sandbox_with_the_readme_scrape_job(converged, tmp_path):
    node, address = converged, converged.vars["containerd_gvisor_metrics_address"]
    readme = (REPO / "README.md").read_text()
    block = next(text for text in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "static_configs" in text)
    config = yaml.safe_load(block)
    job = config["scrape_configs"][0]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:1337"]  # the default address, as documented
    job["static_configs"][0]["targets"] = [address]
    job["scrape_interval"] = "1s"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = subprocess.run([str(REPO / "tests" / "harness" / "prometheus")], capture_output=True, text=True,
                                check=True).stdout.strip()
    web = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--web.listen-address={web}",
                               f"--storage.tsdb.path={tmp_path / 'data'}"], stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "prometheus.log", "w", encoding="utf-8"))
    sandbox = "long-lived-metrics"
    start_sandbox(node, sandbox, address)
    try:
        def query(promql):
            url = f"http://{web}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return json.load(response)["data"]["result"]
            except OSError:
                return []

        deadline, running = time.monotonic() + 90, []
        while not running and time.monotonic() < deadline:
            running = query(f'runsc_meta_sandbox_running{{sandbox="{sandbox}"}}')
            time.sleep(1)
        log = (tmp_path / "prometheus.log").read_text()[-2000:]
        assert running, f"no gVisor series for {sandbox} in Prometheus within 90 s; its log: {log}"
        labels = running[0]["metric"]
        assert running[0]["value"][1] == "1"
        assert labels["job"] == "gvisor" and labels["instance"] == address and labels["node"] == "worker-1"
        assert labels["iteration"]  # gVisor's labels, as the README explains them
        # The sandbox's own metrics, from inside gVisor, arrive too.
        assert query(f'runsc_fs_opens{{sandbox="{sandbox}"}}')
    finally:
        delete_sandbox(node, sandbox)
        server.terminate()
        server.wait(timeout=30)


def test_a_new_address_restarts_the_server_there(converged):
    node, old = converged, converged.vars["containerd_gvisor_metrics_address"]
    pid, new = main_pid(node), f"127.0.0.1:{free_port()}"
    try:
        play = node.play(containerd_gvisor_metrics_address=new)
        assert play.ok, play
        assert main_pid(node) != pid
        assert f'metric-server = "{new}"' in node.read(RUNSC_TOML).decode()
        assert "runsc_meta_metric_server_presence 1" in scrape(new)
        with pytest.raises(OSError):
            scrape(old)
    finally:
        assert node.play().ok  # back on the module's address


def test_a_unix_socket_address(converged):
    node, path = converged, "/run/containerd-gvisor-metrics.sock"
    try:
        play = node.play(containerd_gvisor_metrics_address=path)
        assert play.ok, play
        said = node.sh(f"python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.connect(\"{path}\"); "
                       "s.sendall(b\"GET /metrics HTTP/1.0\\r\\n\\r\\n\"); print(s.makefile().read())'")
        assert "runsc_meta_metric_server_presence 1" in said
    finally:
        assert node.play().ok


def test_an_address_in_use_is_refused_before_any_change(converged, fault_case):
    node, port = converged, free_port()
    node.sh(f"(setsid python3 -m http.server --bind 127.0.0.1 {port} >/dev/null 2>&1 &) ; sleep 1")
    try:
        before, unit, pid = node.snapshot(), node.read(UNIT), main_pid(node)
        play = node.play(containerd_gvisor_metrics_address=f"127.0.0.1:{port}")

        assert not play.ok
        assert (f"containerd_gvisor_metrics_address 127.0.0.1:{port} is already in use on this node, by pid "
                in play.message), play.message
        assert "http.server" in play.message  # who holds it
        assert node.snapshot() == before and node.read(UNIT) == unit and main_pid(node) == pid
        fault_case("metrics address in use", node)
    finally:
        node.sh(f"pkill -f 'http.server --bind 127.0.0.1 {port}'", check=False)


@pytest.mark.parametrize("address", [":1337", "0.0.0.0:1337", "metrics.example.org:1337"])
def test_an_address_other_machines_reach_needs_consent(converged, fault_case, address):
    before = converged.snapshot()
    play = converged.play(containerd_gvisor_metrics_address=address)

    assert not play.ok
    assert f"containerd_gvisor_metrics_address '{address}' can be reached from other machines" in play.message
    assert "containerd_gvisor_metrics_expose: true" in play.message
    assert converged.snapshot() == before
    fault_case("metrics address reachable from other machines, without consent", converged)


def test_an_address_other_machines_reach_is_served_with_consent(converged):
    port = free_port()
    try:
        play = converged.play(containerd_gvisor_metrics_address=f"0.0.0.0:{port}", containerd_gvisor_metrics_expose=True)
        assert play.ok, play
        assert "runsc_meta_metric_server_presence 1" in scrape(f"127.0.0.1:{port}")
    finally:
        assert converged.play().ok


def test_a_release_without_a_metric_server_is_refused_before_any_change(converged, fault_case):
    before, unit = converged.snapshot(), converged.read(UNIT)
    play = converged.play(containerd_gvisor_version=DEBIAN)

    assert not play.ok
    assert "gVisor's metric server (containerd_gvisor_metrics) cannot run: the release 20240729 has none" in play.message
    assert "does not support the metric-server subcommand" in play.message  # Debian's runsc's own words
    assert "The node is unchanged" in play.message
    assert converged.snapshot()["files"] == before["files"] and converged.read(UNIT) == unit
    fault_case("release without a metric server", converged)


@pytest.mark.parametrize("fault, said", [
    ("hide", "does not export the sandbox containerd-gvisor-metrics-gvisor-"),
    ("exit", "gVisor's metric server containerd-gvisor-metrics.service does not answer on 127.0.0.1:"),
])
def test_a_server_that_does_not_work_puts_the_node_back(converged, fault_case, fault, said):
    node, old = converged, converged.vars["containerd_gvisor_metrics_address"]
    before, unit = node.snapshot(), node.read(UNIT)
    node.write(FAULT, fault.encode())
    try:
        play = node.play(containerd_gvisor_metrics_address=f"127.0.0.1:{free_port()}",
                         containerd_gvisor_smoke_test_timeout=10)
    finally:
        node.sh(f"rm -f {FAULT}")

    assert not play.ok
    assert "gVisor's metric server did not work" in play.message and said in play.message, play.message
    assert node.snapshot()["files"] == before["files"] and node.read(UNIT) == unit
    # The server is back on the address it had, on the unit it had (the stand-in told to exit does so at every start,
    # the put-back one's too, until the fault is gone).
    if fault == "exit":
        node.sh("systemctl restart containerd-gvisor-metrics")
    assert "runsc_meta_metric_server_presence 1" in scrape(old, wait=15)
    fault_case(f"metric server that does not work ({fault})", node)


@pytest.mark.parametrize("change", ["a new address", "metrics off"])
def test_a_change_killed_half_way_is_put_back_with_the_server_as_it_was(converged, fault_case, change):
    node, address = converged, converged.vars["containerd_gvisor_metrics_address"]
    unit, runsc_toml = node.read(UNIT), node.read(RUNSC_TOML)
    node.write(HOOK, b"written")  # the module is killed once the files are written, before any proof
    try:
        play = node.play(**({"containerd_gvisor_metrics_address": f"127.0.0.1:{free_port()}"} if change == "a new address"
                            else {"containerd_gvisor_metrics": False}))
    finally:
        node.sh(f"rm -f {HOOK}")

    assert not play.ok
    assert "A change was stopped half way before it was proven: what it had replaced was put back" in play.message
    assert node.read(UNIT) == unit and node.read(RUNSC_TOML) == runsc_toml
    assert node.sh("systemctl is-active containerd-gvisor-metrics; systemctl is-enabled containerd-gvisor-metrics").split() \
        == ["active", "enabled"]
    assert "runsc_meta_metric_server_presence 1" in scrape(address, wait=15)
    fault_case(f"module killed half way through {change}", node)


def test_a_handler_can_keep_its_sandboxes_out(converged):
    handlers = [{"name": "gvisor", "runsc_config_path": RUNSC_TOML, "runsc_config": {"network": "none"}},
                {"name": "gvisor-quiet", "runsc_config_path": "/etc/containerd/runsc-quiet.toml", "metrics": False,
                 "runsc_config": {"network": "none"}}]
    try:
        play = converged.play(containerd_gvisor_handlers=handlers)
        assert play.ok, play
        assert "metric-server" in converged.read(RUNSC_TOML).decode()
        assert "metric-server" not in converged.read("/etc/containerd/runsc-quiet.toml").decode()
        assert [run["name"] for run in play.result(CHANGE_TASK)["smoke"] if "sandbox" in run] == ["gvisor"]
    finally:
        assert converged.play().ok


def test_metrics_off_stops_and_removes_the_server(converged):
    play = converged.play(containerd_gvisor_metrics=False)

    assert play.ok, play
    assert converged.read(UNIT) is None
    assert converged.sh("systemctl is-active containerd-gvisor-metrics", check=False).strip() != "active"
    assert not converged.sh("ls /etc/systemd/system/*.wants/ | grep containerd-gvisor-metrics", check=False).strip()
    assert "metric-server" not in converged.read(RUNSC_TOML).decode()
    assert converged.play(containerd_gvisor_metrics=False).changed == 0


def test_absent_takes_the_server_off_too(converged):
    play = converged.play(containerd_gvisor_state="absent")

    assert play.ok, play
    assert converged.read(UNIT) is None
    assert converged.sh("systemctl is-active containerd-gvisor-metrics", check=False).strip() != "active"
    with pytest.raises(OSError):
        scrape(converged.vars["containerd_gvisor_metrics_address"])
    assert converged.release() is None
