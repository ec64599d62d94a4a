"""Tests of the containerd_gvisor_fetch module against a private test mirror with faults."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import time

import pytest

from conftest import PLUGINS, REPO, run_module

sys.path.insert(0, str(REPO / "tests"))
from gvisor_mirror import MirrorServer, served_bytes  # noqa: E402

FETCH = PLUGINS / "modules" / "fetch.py"
PAYLOAD = bytes(range(256)) * 512  # 128 KiB
DIGEST = hashlib.sha512(PAYLOAD).hexdigest()
RELEASE = "/release/20240729.0/x86_64"
ARCHIVE = f"{RELEASE}/gvisor.tar.bz2"
SUM = f"{ARCHIVE}.sha512"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    release = root / RELEASE.lstrip("/")
    release.mkdir(parents=True)
    (release / "gvisor.tar.bz2").write_bytes(PAYLOAD)
    (release / "gvisor.tar.bz2.sha512").write_text(f"{DIGEST}  gvisor.tar.bz2\n")
    (release / "huge.sha512").write_bytes(b"0" * (1024 * 1024 + 1))
    server = MirrorServer(root, tmp_path_factory.mktemp("log") / "access.log")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_faults(mirror):
    mirror.clear_faults()
    yield
    mirror.clear_faults()


def fetch(mirror, path, check_mode=False, **args):
    """Run the module for a mirror path with short waits; return (rc, result)."""
    return run_module({"url": mirror.url + path, "delay": 0.1, "timeout": 1, "tries": 3, **args},
                      check_mode=check_mode, module=FETCH)


def test_returns_a_checksum_file(mirror):
    rc, result = fetch(mirror, SUM)
    assert rc == 0 and result["found"] and not result["changed"]
    assert result["content"] == f"{DIGEST}  gvisor.tar.bz2\n"
    assert (result["status"], result["attempts"], result["errors"]) == (200, 1, [])


def test_a_missing_file_is_reported_when_allowed(mirror):
    rc, result = fetch(mirror, f"{RELEASE}/runsc.sha512", missing_ok=True)
    assert rc == 0 and not result.get("failed")
    assert (result["found"], result["status"], result["attempts"]) == (False, 404, 1)


def test_a_missing_file_fails_naming_the_url(mirror):
    rc, result = fetch(mirror, f"{RELEASE}/runsc.sha512")
    assert result["failed"] and result["attempts"] == 1  # a 404 is not retried
    assert result["msg"] == f"GET {mirror.url}{RELEASE}/runsc.sha512 failed: HTTP 404 Not Found"


def test_server_errors_are_retried_then_succeed(mirror):
    mirror.set_faults({SUM: {"kind": "500", "count": 2}})
    rc, result = fetch(mirror, SUM)
    assert rc == 0 and result["content"].startswith(DIGEST)
    assert result["attempts"] == 3
    assert result["errors"] == ["HTTP 500 Internal Server Error"] * 2


def test_a_server_that_keeps_failing_fails_after_the_tries_with_the_url(mirror):
    mirror.set_faults({SUM: {"kind": "500"}})
    started = time.monotonic()
    rc, result = fetch(mirror, SUM, delay=0.3)
    elapsed = time.monotonic() - started
    assert result["failed"] and result["status"] == 500
    assert result["msg"] == f"GET {mirror.url}{SUM} failed: HTTP 500 Internal Server Error (gave up after 3 tries)"
    assert mirror.faults()[SUM]["hits"] == 3
    assert elapsed >= 0.3 + 0.6  # the wait doubles: 0.3 s, then 0.6 s


def test_a_stalled_answer_times_out_and_is_retried(mirror):
    mirror.set_faults({SUM: {"kind": "stall", "seconds": 2, "count": 1}})
    rc, result = fetch(mirror, SUM)
    assert rc == 0 and result["attempts"] == 2
    assert result["errors"] == ["no answer within 1 s"]


def test_a_refused_connection_is_retried_then_named(mirror):
    rc, result = run_module({"url": "http://127.0.0.1:1/x.sha512", "delay": 0, "tries": 2}, module=FETCH)
    assert result["failed"] and result["attempts"] == 2
    assert result["msg"].startswith("GET http://127.0.0.1:1/x.sha512 failed: no answer (")
    assert result["msg"].endswith("(gave up after 2 tries)")


def test_a_verified_download_is_written_with_mode_0600(mirror, tmp_path):
    dest = tmp_path / "gvisor.tar.bz2"
    rc, result = fetch(mirror, ARCHIVE, dest=str(dest), sha512=DIGEST.upper())
    assert rc == 0 and result["changed"]
    assert dest.read_bytes() == PAYLOAD and stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert (result["sha512"], result["size"]) == (DIGEST, len(PAYLOAD))
    assert "content" not in result


def test_a_tampered_body_fails_at_once_naming_the_file_and_both_checksums(mirror, tmp_path):
    mirror.set_faults({ARCHIVE: {"kind": "corrupt"}})
    dest = tmp_path / "gvisor.tar.bz2"
    rc, result = fetch(mirror, ARCHIVE, dest=str(dest), sha512=DIGEST, checksum_source=f"{mirror.url}{SUM}")
    got = hashlib.sha512(served_bytes(PAYLOAD, "corrupt")).hexdigest()
    assert result["failed"] and result["attempts"] == 1  # complete but wrong bytes: no retry
    assert result["msg"] == (
        f"gvisor.tar.bz2 from {mirror.url}{ARCHIVE} does not match its checksum: expected sha512 {DIGEST} "
        f"({mirror.url}{SUM}), got sha512 {got}; the download was discarded"
    )
    assert os.listdir(tmp_path) == []


def test_a_cut_off_body_is_retried_then_fails_naming_both_checksums(mirror, tmp_path):
    mirror.set_faults({ARCHIVE: {"kind": "truncate"}})
    dest = tmp_path / "gvisor.tar.bz2"
    rc, result = fetch(mirror, ARCHIVE, dest=str(dest), sha512=DIGEST)
    got = hashlib.sha512(served_bytes(PAYLOAD, "truncate")).hexdigest()
    assert result["failed"] and result["attempts"] == 3
    assert f"expected sha512 {DIGEST} (the expected checksum), got sha512 {got}" in result["msg"]
    assert f"(only {len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes arrived)" in result["msg"]
    assert result["msg"].endswith("(gave up after 3 tries)")
    assert os.listdir(tmp_path) == []


def test_a_cut_off_body_succeeds_on_the_next_try(mirror, tmp_path):
    mirror.set_faults({ARCHIVE: {"kind": "truncate", "count": 1}})
    dest = tmp_path / "gvisor.tar.bz2"
    rc, result = fetch(mirror, ARCHIVE, dest=str(dest), sha512=DIGEST)
    assert rc == 0 and result["attempts"] == 2
    assert dest.read_bytes() == PAYLOAD


def test_a_cut_off_checksum_file_is_retried(mirror):
    mirror.set_faults({SUM: {"kind": "truncate", "count": 1}})
    rc, result = fetch(mirror, SUM)
    assert rc == 0 and result["attempts"] == 2 and result["content"].startswith(DIGEST)
    assert result["errors"][0].startswith("the connection closed early: only ")


def test_a_large_body_is_not_taken_for_a_checksum_file(mirror):
    rc, result = fetch(mirror, f"{RELEASE}/huge.sha512")
    assert result["failed"] and result["attempts"] == 1
    assert "is larger than 1048576 bytes, so it is not a checksum file" in result["msg"]


def test_check_mode_downloads_nothing(mirror, tmp_path):
    rc, result = fetch(mirror, ARCHIVE, check_mode=True, dest=str(tmp_path / "gvisor.tar.bz2"), sha512=DIGEST)
    assert rc == 0 and result["changed"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    ({"url": "ftp://127.0.0.1/x"}, "must be an http:// or https:// URL"),
    ({"url": "http://127.0.0.1/x", "tries": 0}, "tries and timeout must be at least 1"),
])
def test_bad_arguments_are_refused(args, message):
    rc, result = run_module(args, module=FETCH)
    assert result["failed"] and message in result["msg"]


def test_a_verified_file_already_at_dest_is_not_fetched_again(mirror, tmp_path):
    dest = tmp_path / "cache" / DIGEST / "gvisor.tar.bz2"
    seen = len(mirror.requests())
    rc, first = fetch(mirror, ARCHIVE, dest=str(dest), sha512=DIGEST)
    rc2, second = fetch(mirror, ARCHIVE, dest=str(dest), sha512=DIGEST)
    assert rc == rc2 == 0 and first["changed"] and not second["changed"] and second["cached"]
    assert [r["path"] for r in mirror.requests()[seen:]] == [ARCHIVE]  # one request for two runs


def test_a_damaged_file_at_dest_is_fetched_again(mirror, tmp_path):
    dest = tmp_path / "gvisor.tar.bz2"
    dest.write_bytes(b"not the release")
    rc, result = fetch(mirror, ARCHIVE, dest=str(dest), sha512=DIGEST)
    assert rc == 0 and result["changed"] and "cached" not in result
    assert dest.read_bytes() == PAYLOAD


def test_concurrent_runs_for_one_dest_fetch_it_once(mirror, tmp_path):
    import concurrent.futures

    mirror.set_faults({ARCHIVE: {"kind": "stall", "seconds": 0.5}})  # keep the first fetch in flight
    dest = tmp_path / "gvisor.tar.bz2"
    seen = len(mirror.requests())
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: fetch(mirror, ARCHIVE, dest=str(dest), sha512=DIGEST), range(4)))
    assert all(rc == 0 for rc, _result in results)
    assert sum(1 for _rc, r in results if r.get("cached")) == 3
    assert [r["path"] for r in mirror.requests()[seen:]] == [ARCHIVE]
    assert sorted(os.listdir(tmp_path)) == ["gvisor.tar.bz2"]
