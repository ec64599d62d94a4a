"""Tests of the offline mirror server (tests/mirror/server.py).

Usage: python -m pytest tests/mirror -q
Each test talks to one server.py started on a free 127.0.0.1 port over a
small mirror made in a temporary folder; the HTTPS and basic-auth tests start
theirs through tests/gvisor_mirror.MirrorServer, with a throwaway CA.
"""

import base64
import hashlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests/ helpers

from gvisor_mirror import MirrorServer, make_test_ca  # noqa: E402

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


def request_(srv, method, path, body=None, headers=None, context=None, host="127.0.0.1"):
    """Send one request (over TLS with an SSL context); return (status, headers, body bytes, complete?)."""
    if context is None:
        conn = http.client.HTTPConnection(host, srv.port, timeout=10)
    else:
        conn = http.client.HTTPSConnection(host, srv.port, timeout=10, context=context)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        try:
            data, complete = resp.read(), True
        except http.client.IncompleteRead as err:
            data, complete = err.partial, False
        return resp.status, resp.headers, data, complete
    finally:
        conn.close()


def set_faults(srv, faults):
    status, _ignored, body, _ignored = request_(srv, "PUT", "/_control/faults", json.dumps(faults))
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
    status, _ignored, body, _ignored = request_(server, "GET", f"/release/latest/{ARCH}/gvisor.tar.bz2.sha512")
    assert status == 200
    assert body.decode() == f"{hashlib.sha512(PAYLOAD).hexdigest()}  gvisor.tar.bz2\n"


def test_head_has_length_and_no_body(server):
    before = len(log_lines(server))
    status, headers, body, _ignored = request_(server, "HEAD", URL)
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
    status, headers, body, _ignored = request_(server, "GET", path)
    assert status == 404
    assert b"outside" not in body
    assert headers["Content-Length"] == str(len(body))


def test_other_methods_refused(server):
    assert request_(server, "POST", URL, b"x")[0] == 405


def test_control_faults_roundtrip(server):
    assert request_(server, "GET", "/_control/health")[::2] == (200, b"ok")
    set_faults(server, {URL: {"kind": "404"}})
    _ignored, _ignored, body, _ignored = request_(server, "GET", "/_control/faults")
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
    assert [request_(server, "GET", URL)[0] for _ignored in range(3)] == [500, 500, 200]
    faults = json.loads(request_(server, "GET", "/_control/faults")[2])
    assert faults[URL]["hits"] == 2


def test_fault_stall(server):
    set_faults(server, {URL: {"kind": "stall", "seconds": 1}})
    start = time.monotonic()
    status, _ignored, body, _ignored = request_(server, "GET", URL)
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
    status, headers, body, _ignored = request_(server, "GET", path)
    assert (status, body) == (200, b"not-a-checksum  gvisor.tar.bz2\n")
    assert headers["Content-Length"] == str(len(body))


def test_fault_trickle_sends_the_file_that_slowly(server):
    set_faults(server, {URL: {"kind": "trickle", "bytes_per_second": len(PAYLOAD) // 2 + 1}})
    start = time.monotonic()
    status, _ignored, body, complete = request_(server, "GET", URL)
    assert (status, body, complete) == (200, PAYLOAD, True)
    assert time.monotonic() - start >= 1.9  # two chunks, a second each


def test_fault_redirect_loop_points_back_at_itself(server):
    set_faults(server, {URL: {"kind": "redirect_loop"}})
    status, headers, body, _ignored = request_(server, "GET", URL)
    assert (status, headers["Location"], body) == (302, URL, b"")


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
         "--bind", "0.0.0.0"], capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode != 0
    assert "127.0.0.1" in result.stderr


def test_refuses_half_a_tls_setup_and_bad_credentials(mirror, tmp_path):
    tls = make_test_ca(tmp_path)
    for extra, message in [(["--tls-cert", str(tls.cert)], "--tls-cert and --tls-key go together"),
                           (["--tls-key", str(tls.key)], "--tls-cert and --tls-key go together"),
                           (["--tls-cert", str(tls.key), "--tls-key", str(tls.key)], "cannot load"),
                           (["--basic-auth", "no-colon"], "USER:PASSWORD"),
                           (["--basic-auth", ":password"], "USER:PASSWORD")]:
        result = subprocess.run(
            [sys.executable, SERVER, "--root", str(mirror / "root"), "--port", "0", *extra],
            capture_output=True, text=True, timeout=10, check=False)
        assert result.returncode != 0, extra
        assert message in result.stderr, (extra, result.stderr)


# --- HTTPS and basic auth ----------------------------------------------------------------------

USER, PASSWORD = "mirror-user", "s3cret-Pa55:with-colon"
REALM = 'Basic realm="gvisor-mirror"'


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_test_ca(tmp_path_factory.mktemp("tls"))


def stopped_quietly(server):
    server.stop()
    assert server.proc.returncode == 0
    assert server.proc.stderr.read() == ""  # refused handshakes and 401s leave no noise either


@pytest.fixture(scope="module")
def https_server(mirror, tls):
    server = MirrorServer(mirror / "root", mirror / "https-access.log", tls=tls)
    yield server
    stopped_quietly(server)


@pytest.fixture(scope="module")
def auth_server(mirror):
    server = MirrorServer(mirror / "root", mirror / "auth-access.log", auth=(USER, PASSWORD))
    yield server
    stopped_quietly(server)


def test_test_ca_certifies_127_0_0_1_and_localhost(tls):
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert cert.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert oct(tls.key.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_https_is_served_and_verified_against_the_test_ca(https_server, tls, host):
    assert https_server.url == f"https://127.0.0.1:{https_server.port}"
    assert https_server.ca_file == tls.ca
    context = ssl.create_default_context(cafile=str(tls.ca))
    status, headers, body, complete = request_(https_server, "GET", URL, context=context, host=host)
    assert (status, body, complete) == (200, PAYLOAD, True)
    assert headers["Content-Length"] == str(len(PAYLOAD))
    with https_server.open(URL) as response:  # the helper's own client: urllib with the CA
        assert response.read() == PAYLOAD


def test_https_is_refused_without_the_test_ca(https_server, tls):
    with pytest.raises(ssl.SSLCertVerificationError):
        request_(https_server, "GET", URL, context=ssl.create_default_context())
    with pytest.raises(urllib.error.URLError) as err:
        urllib.request.urlopen(f"{https_server.url}{URL}", timeout=10)
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)
    with pytest.raises((http.client.HTTPException, ConnectionError)):  # plain HTTP gets no answer
        request_(https_server, "GET", URL)
    # The server goes on serving clients that trust the CA.
    assert request_(https_server, "GET", URL, context=tls.client_context())[0] == 200


def test_https_carries_faults_and_their_control(https_server, tls):
    https_server.set_faults({URL: {"kind": "truncate", "count": 1}})
    try:
        status, _ignored, body, complete = request_(https_server, "GET", URL, context=tls.client_context())
        assert (status, complete, len(body)) == (200, False, len(PAYLOAD) // 2)
        assert https_server.faults()[URL]["hits"] == 1
        assert request_(https_server, "GET", URL, context=tls.client_context())[2] == PAYLOAD
    finally:
        https_server.clear_faults()


@pytest.mark.parametrize("headers", [
    {},
    basic(USER, "wrong"),
    basic("someone-else", PASSWORD),
    basic(USER, PASSWORD[:-1]),
    {"Authorization": "Basic not-base64!"},
    {"Authorization": "Bearer " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()},
], ids=["none", "wrong-password", "wrong-user", "prefix", "garbage", "other-scheme"])
def test_401_without_the_right_credentials(auth_server, headers):
    for method in ("GET", "HEAD"):
        status, answer, body, _ignored = request_(auth_server, method, URL, headers=headers)
        assert status == 401
        assert answer["WWW-Authenticate"] == REALM
        assert answer["Content-Length"] == str(len(b"authentication required\n"))
        assert body == (b"authentication required\n" if method == "GET" else b"")
    # The fault control is behind the same door.
    assert request_(auth_server, "GET", "/_control/faults", headers=headers)[0] == 401
    assert request_(auth_server, "PUT", "/_control/faults", b'{"/x": {"kind": "404"}}', headers=headers)[0] == 401
    assert auth_server.faults() == {}


def test_200_with_the_credentials(auth_server):
    status, _ignored, body, complete = request_(auth_server, "GET", URL, headers=basic(USER, PASSWORD))
    assert (status, body, complete) == (200, PAYLOAD, True)
    status, _ignored, body, _ignored = request_(auth_server, "GET", "/release/missing", headers=basic(USER, PASSWORD))
    assert status == 404
    # Scheme names are case-insensitive (RFC 7617).
    lower = {"Authorization": basic(USER, PASSWORD)["Authorization"].replace("Basic", "basic")}
    assert request_(auth_server, "GET", URL, headers=lower)[0] == 200
    auth_server.set_faults({URL: {"kind": "500", "count": 1}})
    try:
        assert request_(auth_server, "GET", URL, headers=basic(USER, PASSWORD))[0] == 500
    finally:
        auth_server.clear_faults()


def settled_log_length(server, quiet=0.3, limit=5):
    """The access log's length once it has stopped growing: a handler logs a request after answering it,
    so the last request of an earlier test may still be on its way to the log."""
    deadline, length = time.monotonic() + limit, len(server.requests())
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = len(server.requests())
        if now == length:
            break
        length = now
    return length


def test_the_access_log_has_the_status_and_never_the_password(auth_server):
    before = settled_log_length(auth_server)
    request_(auth_server, "GET", URL)
    request_(auth_server, "GET", URL, headers=basic(USER, "wrong-guess"))
    request_(auth_server, "GET", URL, headers=basic(USER, PASSWORD))
    deadline = time.monotonic() + 5
    while len(auth_server.requests()) < before + 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = auth_server.requests()[before:]
    assert [(line["path"], line["status"]) for line in lines] == [(URL, 401), (URL, 401), (URL, 200)]
    assert lines[-1]["bytes"] == len(PAYLOAD)
    text = auth_server.log.read_text()
    for secret in (PASSWORD, "wrong-guess", basic(USER, PASSWORD)["Authorization"].split()[1]):
        assert secret not in text


def test_https_and_basic_auth_together(mirror):
    server = MirrorServer(mirror / "root", mirror / "both-access.log", tls=True, auth=f"{USER}:{PASSWORD}")
    try:
        assert server.url.startswith("https://127.0.0.1:")
        assert server.ca_file.is_file() and server.ca_file.parent != mirror / "root"
        context = server.ssl_context()
        assert request_(server, "GET", URL, context=context)[0] == 401
        assert request_(server, "GET", URL, context=context, headers=basic(USER, PASSWORD))[2] == PAYLOAD
        server.set_faults({URL: {"kind": "404"}})
        assert server.faults()[URL]["kind"] == "404"
        with pytest.raises(urllib.error.HTTPError) as err:
            server.open(URL)
        assert err.value.code == 404
        server.clear_faults()
        with server.open(URL, method="HEAD") as response:
            assert response.headers["Content-Length"] == str(len(PAYLOAD))
        assert PASSWORD not in server.log.read_text()
    finally:
        stopped_quietly(server)


def test_serve_start_refuses_a_port_another_checkouts_server_holds(server, tmp_path):
    """serve start must not report success because another mirror server answers on its port: the tests would
    then read that server's files (or 404s, when its checkout is gone)."""
    built = tmp_path / "mirror"
    built.mkdir()
    (built / ".complete").write_text("")
    env = {**os.environ, "CONTAINERD_GVISOR_MIRROR_DIR": str(built), "CONTAINERD_GVISOR_MIRROR_PORT": str(server.port)}
    serve = os.path.join(os.path.dirname(SERVER), "serve")
    proc = subprocess.run([serve, "start"], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1, proc
    assert f"http://127.0.0.1:{server.port}/ already answers" in proc.stderr
    assert "CONTAINERD_GVISOR_MIRROR_PORT" in proc.stderr
    assert not (tmp_path / "mirror.pid").exists()
    assert request_(server, "GET", "/_control/health")[0] == 200  # the other server is left alone
