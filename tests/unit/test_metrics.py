"""gVisor's metric server on a node (plugins/module_utils/metrics.py): addresses as runsc reads them, the unit, whether a
release has a server, who holds an address, and reading a server."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from unit_support import collection_module

metrics = collection_module("plugins.module_utils.metrics")


@pytest.mark.parametrize("address, parsed", [
    ("127.0.0.1:1337", ("tcp", "127.0.0.1", 1337)),
    (":1337", ("tcp", "", 1337)),
    ("[::1]:1337", ("tcp", "::1", 1337)),
    ("localhost:9100", ("tcp", "localhost", 9100)),
    ("/run/containerd-gvisor/metrics.sock", ("unix", "/run/containerd-gvisor/metrics.sock")),
])
def test_addresses_runsc_listens_on(address, parsed):
    assert metrics.parse_address(address) == parsed


@pytest.mark.parametrize("address, why", [
    ("1337", "use host:port, :port or an absolute unix socket path"),
    ("127.0.0.1:0", "use host:port"),
    ("127.0.0.1:65536", "use host:port"),
    ("run/metrics.sock", "use host:port"),
    ("::1:1337", "an IPv6 address goes in brackets"),
    ("[::1:1337", "write an IPv6 address in brackets"),
    ("/run/" + "x" * 110, "at most 107 bytes"),
])
def test_other_addresses_are_refused_saying_what_works(address, why):
    with pytest.raises(metrics.AddressError, match=why.replace("(", r"\(")):
        metrics.parse_address(address)


@pytest.mark.parametrize("address, only_here", [
    ("127.0.0.1:1337", True), ("127.0.0.2:1337", True), ("localhost:1337", True), ("[::1]:1337", True),
    ("/run/metrics.sock", True), (":1337", False), ("0.0.0.0:1337", False), ("[::]:1337", False),
    ("192.0.2.10:1337", False), ("metrics.example.org:1337", False),
])
def test_which_addresses_only_the_node_reaches(address, only_here):
    assert metrics.loopback(address) is only_here


def server(root_of="containerd"):
    return {"root_of": root_of, "root": "/run/containerd/runsc/k8s.io", "address": "127.0.0.1:1337",
            "bin_dir": "/usr/local/bin", "after": "containerd.service"}


def test_the_unit_runs_the_releases_helper_where_it_has_one_else_runsc():
    with_helper, without = metrics.unit_text(server(), True), metrics.unit_text(server(), False)
    assert ("ExecStart=/usr/local/bin/gvisor-bin/runsc-metric-server --root=/run/containerd/runsc/k8s.io "
            "--metric-server=127.0.0.1:1337 metric-server --allow-unknown-root\n") in with_helper
    assert "ExecStart=/usr/local/bin/runsc --root=/run/containerd/runsc/k8s.io --metric-server=127.0.0.1:1337 " \
        "metric-server" in without
    assert "After=containerd.service" in with_helper and "WantedBy=multi-user.target" in with_helper
    assert metrics.unit_name("containerd") == "containerd-gvisor-metrics.service"
    assert metrics.unit_name("docker") == "containerd-gvisor-metrics-docker.service"


@pytest.mark.parametrize("said, rc, missing", [
    ("this build does not support the metric-server subcommand", 128, "does not support the metric-server subcommand"),
    ('metric server: sidecar binary "runsc-metric-server" not found (expected at "/x")', 128, "not found"),
    ("Usage: runsc <flags> <subcommand> <subcommand args>\n\nSubcommands:\n\tcheckpoint", 0, "no such subcommand"),
    ("", 124, "it did not answer"),
    ("-root=<root dir> -metric-server=<addr> metric-server [-exporter-prefix=<runsc_>]", 2, ""),  # it has one: flags missing
])
def test_whether_runsc_has_a_metric_server(said, rc, missing):
    with tempfile.TemporaryDirectory() as bin_dir:
        why = metrics.missing_server(lambda argv: (rc, "", said), bin_dir)
    assert (missing in why) if missing else why == ""
    assert not missing or "and it has no gvisor-bin/runsc-metric-server" in why


def test_a_release_with_the_helper_has_a_metric_server_without_running_anything():
    with tempfile.TemporaryDirectory() as bin_dir:
        os.makedirs(os.path.join(bin_dir, "gvisor-bin"))
        open(os.path.join(bin_dir, metrics.HELPER), "w", encoding="utf-8").close()
        assert metrics.missing_server(lambda argv: pytest.fail("ran runsc"), bin_dir) == ""


def test_who_holds_an_address():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        held = metrics.holder(address, set())
        assert held.startswith(f"pid {os.getpid()} (") and "python" in held
        assert metrics.holder(address, {os.getpid()}) == "ours"
    assert metrics.holder(address, set()) == ""  # free again
    assert metrics.holder("metrics.example.org:1337", set()) == ""  # names are not looked up on the node


def test_who_holds_a_unix_socket():
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "metrics.sock")
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path)
            listener.listen()
            assert metrics.holder(path, {os.getpid()}) == "ours"
        assert metrics.holder(path, set()) == ""  # a socket file nobody listens on


METRICS = """# Data for runsc metric server exporting data for sandboxes in root directory /run/containerd/runsc/k8s.io
runsc_meta_sandbox_presence{iteration="abc",sandbox="pod-1",pod_name="web",namespace_name="shop"} 1 1796439178223
runsc_meta_sandbox_running{sandbox="pod-12",iteration="def"} 1
runsc_meta_sandbox_running{sandbox="pod-3",iteration="ghi"} 0
runsc_fs_opens{iteration="abc",sandbox="pod-4"} 15 1796439178223
runsc_meta_metric_server_presence 1
"""


@pytest.mark.parametrize("sandbox, found", [
    ("pod-1", True), ("pod-12", True), ("pod", False), ("pod-3", False), ("pod-4", False)])
def test_a_sandbox_counts_as_exported_by_the_servers_own_series(sandbox, found):
    assert metrics.exported(METRICS, sandbox) is found
    assert metrics.exported(METRICS.replace("runsc_", "gvisor_"), sandbox) is found  # any exporter prefix


@pytest.fixture()
def fake_server():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            ok = self.path == "/runsc-metrics/healthcheck?root=/run/containerd/runsc/k8s.io"
            body = b"runsc-metrics:OK" if ok else METRICS.encode() if self.path == "/metrics" else b"wrong root"
            self.send_response(200 if ok or self.path == "/metrics" else 400)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_server_answers_when_its_health_check_names_the_root(fake_server):
    assert metrics.answers(fake_server, "/run/containerd/runsc/k8s.io")
    assert not metrics.answers(fake_server, "/run/containerd/runsc/default")
    assert metrics.get(fake_server, "/metrics") == (200, METRICS)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        assert not metrics.answers(f"127.0.0.1:{probe.getsockname()[1]}", "/run/containerd/runsc/k8s.io")  # nobody there
