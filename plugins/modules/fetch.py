#!/usr/bin/python
"""Fetch one file of a gVisor release: bounded retries with backoff, verified, explained."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fetch
short_description: Fetch one file from a gVisor release mirror, with retries and a sha512 check
description:
  - Sends GET requests for O(url) until one succeeds or O(tries) requests were made, waiting
    O(delay) seconds before the second try and twice as long before each further one (at most 60 s).
  - Retried are answers that may be transient, each with its reason kept in RV(errors); no answer
    within O(timeout) seconds, a refused or reset connection, HTTP 408, 429 and 5xx, and a body that
    ends before its Content-Length.
  - Not retried, and reported at once, are HTTP 404 and 410 (RV(found) is false with O(missing_ok)),
    any other HTTP error, and a complete body whose sha512 is not O(sha512).
  - With O(dest) the body is written to O(dest) only once it matches O(sha512); without it the
    body (at most 1 MiB, e.g. a C(.sha512) file) is returned in RV(content).
  - A O(dest) that already holds a file with the sha512 O(sha512) is kept and nothing is fetched
    (RV(cached)), so a download cache needs no other bookkeeping. Missing parent directories of
    O(dest) are created, and runs for the same O(dest) take turns (a lock on its directory), so
    concurrent runs fetch a file once.
options:
  url:
    description: The http or https URL to fetch.
    type: str
    required: true
  dest:
    description: File to write the body to; it is created with mode 0600 once the whole body is verified.
    type: path
  sha512:
    description: The sha512 hex digest the body must have; a body that differs is discarded.
    type: str
  checksum_source:
    description: Where O(sha512) comes from (a C(.sha512) URL or a variable), for messages.
    type: str
    default: the expected checksum
  missing_ok:
    description: Report HTTP 404 and 410 as RV(found=false) instead of failing.
    type: bool
    default: false
  timeout:
    description: Seconds one request may wait for the server before it counts as failed.
    type: int
    default: 60
  tries:
    description: Requests to make at most.
    type: int
    default: 4
  delay:
    description: Seconds to wait before the second try; the wait doubles before each further try.
    type: float
    default: 3
notes:
  - Supports check mode; with O(dest) nothing is downloaded in check mode.
"""

EXAMPLES = r"""
- name: Look for the release archive's checksum
  gvisor_nodes.containerd_gvisor.fetch:
    url: https://storage.googleapis.com/gvisor/releases/release/latest/x86_64/gvisor.tar.bz2.sha512
    missing_ok: true
  register: archive_sum

- name: Download the release archive
  gvisor_nodes.containerd_gvisor.fetch:
    url: https://storage.googleapis.com/gvisor/releases/release/latest/x86_64/gvisor.tar.bz2
    dest: /tmp/staging/gvisor.tar.bz2
    sha512: "{{ archive_sha512 }}"
"""

RETURN = r"""
found:
  description: False when the server answered 404 or 410 (a failure unless O(missing_ok) is set).
  returned: always
  type: bool
status:
  description: HTTP status of the last answer, or 0 when there was none.
  returned: always
  type: int
url:
  description: The URL fetched.
  returned: always
  type: str
content:
  description: The body as text, when there is no O(dest).
  returned: when found and dest is not given
  type: str
sha512:
  description: sha512 hex digest of the body.
  returned: when found
  type: str
size:
  description: Bytes in the body.
  returned: when found
  type: int
cached:
  description: True when O(dest) already held the verified file and nothing was fetched.
  returned: when nothing was fetched for that reason
  type: bool
attempts:
  description: Requests made.
  returned: always
  type: int
errors:
  description: Why each failed request failed, oldest first.
  returned: always
  type: list
  elements: str
"""

import fcntl
import hashlib
import http.client
import os
import ssl
import tempfile
import time
import urllib.error

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

CHUNK = 1024 * 1024
CONTENT_LIMIT = 1024 * 1024
MAX_WAIT = 60
NOT_FOUND = (404, 410)
TRANSIENT_STATUS = (408, 429)


class FetchError(Exception):
    """Why a request failed; retry says whether another try may fix it."""

    retry = False

    def __init__(self, message, status=0):
        super().__init__(message)
        self.status = status  # the HTTP status of the answer, 0 when there was none

    def message(self, url):
        return f"GET {url} failed: {self}"


class Transient(FetchError):
    """A failed try that another try may fix."""

    retry = True


class Permanent(FetchError):
    """A failure that no further try can fix."""


class NotFound(Permanent):
    """The server says the file does not exist."""


class Mismatch(FetchError):
    """The body is not the expected file; a short one (the connection closed early) is retried."""

    def __init__(self, message, status, retry):
        super().__init__(message, status)
        self.retry = retry

    def message(self, url):
        return str(self)


class Body:
    """What one answered request delivered: how much, its sha512 and, without a file, the bytes."""

    def __init__(self, status, size, digest, expected_size, data):
        self.status, self.size, self.digest, self.expected_size, self.data = status, size, digest, expected_size, data

    @property
    def complete(self):
        return self.expected_size is None or self.size == self.expected_size


def _no_answer(err, timeout):
    """Say in a few words why a request got no answer."""
    reason = getattr(err, "reason", err)
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"no answer within {timeout} s"
    return f"no answer ({reason or type(reason).__name__})"


def read_body(response, out):
    """Copy a response body to out (a file, or None to keep it); return (size, digest, data)."""
    digest, size, kept = hashlib.sha512(), 0, []
    while True:
        try:
            chunk = response.read(CHUNK)
        except http.client.IncompleteRead as err:
            chunk = err.partial  # the server closed early; comparing sizes says so
            if not chunk:
                break
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
        if out is None:
            if size > CONTENT_LIMIT:
                raise Permanent(f"the body is larger than {CONTENT_LIMIT} bytes, so it is not a checksum file")
            kept.append(chunk)
        else:
            out.write(chunk)
    return size, digest.hexdigest(), b"".join(kept)


def fetch_once(url, timeout, out):
    """Make one request; return its Body or raise a FetchError."""
    try:
        response = open_url(url, timeout=timeout, http_agent="containerd-gvisor", follow_redirects="safe")
    except urllib.error.HTTPError as err:
        message = f"HTTP {err.code} {err.reason}"
        if err.code in NOT_FOUND:
            raise NotFound(message, err.code) from None
        if err.code >= 500 or err.code in TRANSIENT_STATUS:
            raise Transient(message, err.code) from None
        raise Permanent(message, err.code) from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLCertVerificationError):
            raise Permanent(f"the server's certificate was refused ({err.reason})") from None
        raise Transient(_no_answer(err, timeout)) from None
    except ValueError as err:  # not a URL urllib can open
        raise Permanent(str(err)) from None
    except (OSError, http.client.HTTPException) as err:
        raise Transient(_no_answer(err, timeout)) from None
    with response:
        length = response.headers.get("Content-Length")
        expected_size = int(length) if length and length.isdigit() else None
        try:
            size, digest, data = read_body(response, out)
        except (OSError, http.client.HTTPException) as err:
            raise Transient(f"the body stopped arriving: {_no_answer(err, timeout)}") from None
        return Body(response.status, size, digest, expected_size, data)


def check_body(params, body, name):
    """Raise when the body is short or, with an expected sha512, not the expected file."""
    expected = params["sha512"]
    if body.complete and (not expected or body.digest == expected):
        return
    short = "" if body.complete else f"only {body.size} of {body.expected_size} bytes arrived"
    if not expected:
        raise Transient(f"the connection closed early: {short}")
    raise Mismatch(
        f"{name} from {params['url']} does not match its checksum: expected sha512 {expected} "
        f"({params['checksum_source']}), got sha512 {body.digest}{f' ({short})' if short else ''}; "
        f"the download was discarded",
        body.status,
        retry=not body.complete,
    )


def file_sha512(path):
    """sha512 hex digest and size of a file on disk."""
    digest, size = hashlib.sha512(), 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def fetch(module):
    """Fetch with retries; exit with the module result."""
    params = module.params
    url, dest, tries = params["url"], params["dest"], params["tries"]
    name = os.path.basename(dest) if dest else url.rstrip("/").rsplit("/", 1)[-1]
    result = {"changed": False, "found": True, "status": 0, "url": url, "attempts": 0, "errors": []}
    for attempt in range(1, tries + 1):
        result["attempts"] = attempt
        tmp = None
        try:
            if dest:
                # Written under a temporary name: dest exists only once its bytes are verified.
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest) or ".", prefix=f".{name}.part-")
                with os.fdopen(fd, "wb") as out:
                    body = fetch_once(url, params["timeout"], out)
            else:
                body = fetch_once(url, params["timeout"], None)
            check_body(params, body, name)
            result.update(status=body.status, sha512=body.digest, size=body.size)
            if dest:
                os.chmod(tmp, 0o600)
                os.replace(tmp, dest)
                tmp = None
                result["changed"] = True
            else:
                result["content"] = body.data.decode("utf-8", errors="replace")
            module.exit_json(**result)
        except NotFound as err:
            result.update(found=False, status=err.status, errors=result["errors"] + [str(err)])
            if params["missing_ok"]:
                module.exit_json(**result)
            module.fail_json(msg=err.message(url), **result)
        except FetchError as err:
            result.update(status=err.status, errors=result["errors"] + [str(err)])
            if not err.retry:
                module.fail_json(msg=err.message(url), **result)
            if attempt == tries:
                module.fail_json(msg=f"{err.message(url)} (gave up after {tries} tries)", **result)
        finally:
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)
        time.sleep(min(params["delay"] * 2 ** (attempt - 1), MAX_WAIT))


def main():
    """Run the module."""
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "dest": {"type": "path"},
            "sha512": {"type": "str"},
            "checksum_source": {"type": "str", "default": "the expected checksum"},
            "missing_ok": {"type": "bool", "default": False},
            "timeout": {"type": "int", "default": 60},
            "tries": {"type": "int", "default": 4},
            "delay": {"type": "float", "default": 3},
        },
        supports_check_mode=True,
    )
    params = module.params
    if not params["url"].startswith(("http://", "https://")):
        module.fail_json(msg=f"url {params['url']!r} must be an http:// or https:// URL")
    if params["tries"] < 1 or params["timeout"] < 1 or params["delay"] < 0:
        module.fail_json(msg="tries and timeout must be at least 1 and delay must not be negative")
    if params["sha512"]:
        params["sha512"] = params["sha512"].strip().lower()
    dest = params["dest"]
    if module.check_mode and dest and not os.path.isfile(dest):
        module.exit_json(changed=True, found=True, status=0, url=params["url"], attempts=0, errors=[])
    if not dest:
        fetch(module)
    os.makedirs(os.path.dirname(dest) or ".", mode=0o755, exist_ok=True)
    # Runs for several nodes share a cache on the control node: one of them fetches, the
    # others wait for it (a lock on dest's directory, so no lock file is left) and then find
    # the verified file.
    lock = os.open(os.path.dirname(dest) or ".", os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if params["sha512"] and os.path.isfile(dest):
            digest, size = file_sha512(dest)
            if digest == params["sha512"]:
                module.exit_json(changed=False, found=True, status=0, url=params["url"], attempts=0, errors=[],
                                 sha512=digest, size=size, cached=True)
        if module.check_mode:
            module.exit_json(changed=True, found=True, status=0, url=params["url"], attempts=0, errors=[])
        fetch(module)
    finally:
        os.close(lock)


if __name__ == "__main__":
    main()
