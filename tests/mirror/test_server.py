"""Tests of the offline mirror server (tests/mirror/server.py).

Usage: python -m pytest tests/mirror -q
Each test talks to one server.py started on a free 127.0.0.1 port over a
small mirror made in a temporary folder.
"""

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time

import pytest

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")
PAYLOAD = bytes(range(256)) * 400  # 102400 bytes
ARCH = "x86_64"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    base = tmp_path_factory.mktemp("mirror")
    root = base / "root"
    release = root / "release" / "20240729.0" / ARCH
    release.mkdir(parents=True)
    (release / "gvisor.tar.bz2").write_bytes(PAYLOAD)
    digest = hashlib.sha512(PAYLOAD).hexdigest()
    (release / "gvisor.tar.bz2.sha512").write_text(f"{digest}  gvisor.tar.bz2\n")
    os.symlink("20240729.0", root / "release" / "latest")
    (base / "secret").write_text("outside the root\n")
    os.symlink("../../secret", root / "release" / "escape")
    return base


@pytest.fixture(scope="module")
def server(mirror):
    log = mirror / "access.log"
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--root", str(mirror / "root"), "--port", "0",
         "--log", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("serving "), line + proc.stderr.read()
    port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
    proc.port, proc.log = port, log
    yield proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert proc.stderr.read() == ""  # quiet: no per-request noise


@pytest.fixture(autouse=True)
def no_faults(request):
    if "server" in request.fixturenames:
        srv = request.getfixturevalue("server")
        request_(srv, "DELETE", "/_control/faults")
        yield
        request_(srv, "DELETE", "/_control/faults")
    else:
        yield


def request_(srv, method, path, body=None):
    """Send one request; return (status, headers, body bytes, complete?)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        try:
            data, complete = resp.read(), True
        except http.client.IncompleteRead as err:
            data, complete = err.partial, False
        return resp.status, resp.headers, data, complete
    finally:
        conn.close()


def set_faults(srv, faults):
    status, _, body, _ = request_(srv, "PUT", "/_control/faults", json.dumps(faults))
    assert status == 200, body
    return json.loads(body)


def log_lines(srv):
    with open(srv.log, encoding="utf-8") as log:
        return [json.loads(line) for line in log]


def logged_after(srv, before, count=1):
    """The log lines after the first `before`, once `count` of them are there: the server
    writes a request's line just after its response, so a client may read the log first."""
    deadline = time.monotonic() + 5
    while len(log_lines(srv)) < before + count and time.monotonic() < deadline:
        time.sleep(0.02)
    return log_lines(srv)[before:]


URL = f"/release/20240729.0/{ARCH}/gvisor.tar.bz2"


def test_serves_file_with_length(server):
    status, headers, body, complete = request_(server, "GET", URL)
    assert (status, body, complete) == (200, PAYLOAD, True)
    assert headers["Content-Length"] == str(len(PAYLOAD))


def test_follows_symlink_inside_root(server):
    status, _, body, _ = request_(server, "GET", f"/release/latest/{ARCH}/gvisor.tar.bz2.sha512")
    assert status == 200
    assert body.decode() == f"{hashlib.sha512(PAYLOAD).hexdigest()}  gvisor.tar.bz2\n"


def test_head_has_length_and_no_body(server):
    before = len(log_lines(server))
    status, headers, body, _ = request_(server, "HEAD", URL)
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(len(PAYLOAD))
    line = logged_after(server, before)[-1]
    assert (line["method"], line["status"], line["bytes"]) == ("HEAD", 200, 0)


@pytest.mark.parametrize("path", [
    "/release/missing",
    "/release/20240729.0",              # a folder
    "/release/20240729.0/",
    "/release/escape",                  # symlink leading out of the root
    "/../secret",
    "/release/%2e%2e/%2e%2e/secret",
    "/release/latest/../../../secret",
])
def test_404(server, path):
    status, headers, body, _ = request_(server, "GET", path)
    assert status == 404
    assert b"outside" not in body
    assert headers["Content-Length"] == str(len(body))


def test_other_methods_refused(server):
    assert request_(server, "POST", URL, b"x")[0] == 405


def test_control_faults_roundtrip(server):
    assert request_(server, "GET", "/_control/health")[::2] == (200, b"ok")
    set_faults(server, {URL: {"kind": "404"}})
    _, _, body, _ = request_(server, "GET", "/_control/faults")
    assert json.loads(body) == {URL: {"kind": "404", "hits": 0}}
    assert request_(server, "DELETE", "/_control/faults")[0] == 200
    assert json.loads(request_(server, "GET", "/_control/faults")[2]) == {}
    assert request_(server, "PUT", "/_control/faults", b'{"/x": {"kind": "nope"}}')[0] == 400
    assert request_(server, "PUT", "/_control/faults", b"not json")[0] == 400


def test_control_requests_not_logged(server):
    before = len(log_lines(server))
    request_(server, "GET", "/_control/health")
    request_(server, "GET", "/_control/faults")
    assert len(log_lines(server)) == before


def test_fault_404(server):
    set_faults(server, {URL: {"kind": "404"}})
    assert request_(server, "GET", URL)[0] == 404
    assert request_(server, "HEAD", URL)[0] == 404


def test_fault_500_count_then_success(server):
    set_faults(server, {URL: {"kind": "500", "count": 2}})
    assert [request_(server, "GET", URL)[0] for _ in range(3)] == [500, 500, 200]
    faults = json.loads(request_(server, "GET", "/_control/faults")[2])
    assert faults[URL]["hits"] == 2


def test_fault_stall(server):
    set_faults(server, {URL: {"kind": "stall", "seconds": 1}})
    start = time.monotonic()
    status, _, body, _ = request_(server, "GET", URL)
    assert time.monotonic() - start >= 0.9
    assert (status, body) == (200, PAYLOAD)


def test_fault_truncate(server):
    set_faults(server, {URL: {"kind": "truncate"}})
    before = len(log_lines(server))
    status, headers, body, complete = request_(server, "GET", URL)
    assert status == 200 and not complete
    assert int(headers["Content-Length"]) == len(PAYLOAD)
    assert len(body) < len(PAYLOAD)
    line = logged_after(server, before)[-1]
    assert (line["path"], line["fault"], line["bytes"]) == (URL, "truncate", len(PAYLOAD) // 2)


def test_fault_corrupt(server):
    set_faults(server, {URL: {"kind": "corrupt"}})
    status, headers, body, complete = request_(server, "GET", URL)
    assert (status, complete, len(body)) == (200, True, len(PAYLOAD))
    assert body != PAYLOAD


def test_fault_bad_sha512(server):
    path = f"/release/latest/{ARCH}/gvisor.tar.bz2.sha512"
    set_faults(server, {path: {"kind": "bad_sha512"}})
    status, headers, body, _ = request_(server, "GET", path)
    assert (status, body) == (200, b"not-a-checksum  gvisor.tar.bz2\n")
    assert headers["Content-Length"] == str(len(body))


def test_fault_count_applies_to_any_kind(server):
    set_faults(server, {URL: {"kind": "corrupt", "count": 1}})
    assert request_(server, "GET", URL)[2] != PAYLOAD
    assert request_(server, "GET", URL)[2] == PAYLOAD


def test_log_lines(server):
    before = len(log_lines(server))
    request_(server, "GET", URL)
    request_(server, "GET", "/release/missing")
    ok, missing = logged_after(server, before, count=2)
    assert set(ok) >= {"time", "method", "path", "status", "bytes"}
    assert (ok["method"], ok["path"], ok["status"], ok["bytes"]) == ("GET", URL, 200, len(PAYLOAD))
    assert (missing["status"], missing["path"]) == (404, "/release/missing")


def test_refuses_other_bind_address(mirror):
    result = subprocess.run(
        [sys.executable, SERVER, "--root", str(mirror / "root"), "--port", "0",
         "--bind", "0.0.0.0"], capture_output=True, text=True, timeout=10)
    assert result.returncode != 0
    assert "127.0.0.1" in result.stderr
