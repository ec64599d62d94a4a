# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Fetch from a release mirror with Ansible's own HTTP code, retrying what may pass with a doubling wait.

What the builtins cannot do: Ansible's until/retries/delay waits the same time before every try and
retries whatever failed; get_url bounds each read of a file, never its whole download, so a mirror that
sends a byte a second holds a run for hours. So: a checksum file is asked with ansible.builtin.uri; a
file on the control node is fetched in this action with ansible.module_utils.urls.open_url (what get_url
uses) under a deadline, verified against its sha512 while it streams and moved into place only whole;
a file on a node is fetched with ansible.builtin.get_url under Ansible's async wrapper, which stops it
at the deadline. TLS, CA and client certificates, basic auth, headers and proxies are Ansible's own.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import tempfile
import time
import urllib.error

from ansible.module_utils.urls import open_url
from ansible.plugins.action import ActionBase
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils.release_record import sha512_of

CERTIFICATE = re.compile(r"\[SSL: CERTIFICATE_VERIFY_FAILED\] ([^(>]*)")
# The arguments open_url takes as they are.
URL_ARGS = ("headers", "use_proxy", "validate_certs", "url_username", "url_password", "force_basic_auth", "client_cert",
            "client_key", "ca_path")


def reason(result, timeout, username="", where="the machine that downloads"):
    """Say in a few words why a request failed, and for a refusal what to set."""
    msg = str(result.get("msg", ""))
    status = result.get("status", result.get("status_code"))
    cert = CERTIFICATE.search(msg)
    if cert:
        return (f"the mirror's TLS certificate could not be verified on {where} ({cert.group(1).strip()}): set "
                "containerd_gvisor_ca_path to the CA bundle that signed it, a file on the machine that downloads "
                "(see containerd_gvisor_download_mode); containerd_gvisor_validate_certs: false is for test mirrors only")
    if status in (401, 403):
        text = "HTTP 401 Unauthorized" if status == 401 else "HTTP 403 Forbidden"
        given = f"it refused user '{username}'" if username else "none were given"
        return (f"{text}: the mirror wants basic auth credentials, and {given}; set containerd_gvisor_url_username "
                "and containerd_gvisor_url_password (or containerd_gvisor_headers for a token)")
    if result.get("deadline") or msg == "Timeout exceeded":
        return f"the download took longer than {timeout} s (containerd_gvisor_download_timeout) and was stopped"
    if "timed out" in msg:
        return f"no answer within {timeout} s"
    cut = re.search(r"Incomplete read.*cl=(\d+), st.st_size=(\d+)", msg)
    if cut:
        return f"the body was cut off after {cut.group(2)} of {cut.group(1)} bytes"
    if isinstance(status, int) and status >= 300:
        text = re.search(r"HTTP Error \d+: (.*)", str(result.get("response", msg)))
        return f"HTTP {status} {text.group(1) if text else ''}".strip()
    return msg


def transient(result):
    """Whether a failed request may succeed when tried again: no answer, 408, 429, 5xx, a cut-off body, a deadline."""
    status = result.get("status", result.get("status_code"))
    if isinstance(status, int) and (status in (408, 429) or status >= 500):
        return True
    if CERTIFICATE.search(str(result.get("msg", ""))):
        return False
    return bool(re.search(r"timed out|Timeout exceeded|Incomplete read|Connection (failure|refused|reset)|Request failed",
                          str(result.get("msg", ""))))


def download_here(args, seconds):
    """Fetch args["url"] to args["dest"] on this machine, as get_url would (nothing to do when dest already has the
    checksum), but within `seconds` for the whole download."""
    dest, digest = os.path.expanduser(args["dest"]), args["checksum"].split(":", 1)[1].lower()
    if os.path.isfile(dest) and sha512_of(dest) == digest:
        return {"changed": False, "dest": dest, "url": args["url"]}
    deadline = time.monotonic() + seconds
    kept = {name: args[name] for name in URL_ARGS if args.get(name) is not None}
    for name in os.listdir(os.path.dirname(dest)):  # what a download that was killed left
        if name.startswith(f".{os.path.basename(dest)}.part-"):
            os.unlink(os.path.join(os.path.dirname(dest), name))
    fd, part = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=f".{os.path.basename(dest)}.part-")
    size = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            response = open_url(args["url"], timeout=int(args.get("timeout", 10)), **kept)
            got, length = hashlib.sha512(), int(response.headers.get("Content-Length") or -1)
            # read1: whatever has arrived, so a mirror that trickles meets the deadline too.
            for chunk in iter(lambda: response.read1(1 << 16), b""):
                handle.write(chunk)
                got.update(chunk)
                size += len(chunk)
                if time.monotonic() > deadline:
                    return {"failed": True, "deadline": seconds, "url": args["url"], "msg": "Timeout exceeded"}
        if 0 <= length != size:
            return {"failed": True, "url": args["url"], "msg": f"Incomplete read (cl={length}, st.st_size={size})"}
        if got.hexdigest() != digest:
            return {"failed": True, "url": args["url"], "msg": f"did not match {digest}; it was {got.hexdigest()}"}
        os.chmod(part, int(str(args.get("mode", "0600")), 8))
        os.replace(part, dest)
        return {"changed": True, "dest": dest, "url": args["url"], "status_code": response.status}
    except urllib.error.HTTPError as err:
        return {"failed": True, "url": args["url"], "status": err.code, "msg": f"HTTP Error {err.code}: {err.reason}"}
    except http.client.IncompleteRead as err:
        size += len(err.partial)
        return {"failed": True, "url": args["url"], "msg": f"Incomplete read (cl={size + (err.expected or 0)}, st.st_size={size})"}
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        text = f"Connection failure: {err}" if isinstance(err, socket.timeout) else f"Request failed: {err}"
        return {"failed": True, "url": args["url"], "msg": text}
    finally:
        if os.path.exists(part):
            os.unlink(part)


class ActionModule(ActionBase):
    """uri when no dest is given, else a download (see above); tries and delay set the retries. `files` fetches several."""

    def run(self, tmp=None, task_vars=None):
        super().run(tmp, task_vars)
        args = dict(self._task.args)
        if "files" not in args:
            return self.fetch(args, task_vars)
        files, results = args.pop("files"), []
        for item in files:
            result = self.fetch({**args, **{key: item[key] for key in ("url", "dest", "checksum")}}, task_vars,
                                item.get("checksum_source"))
            results.append(result)
            if result.get("failed"):
                return {**result, "results": results}
        return {"changed": any(result.get("changed") for result in results), "results": results}

    def fetch(self, args, task_vars, checksum_source=None):
        tries, delay = int(args.pop("tries", 4)), float(args.pop("delay", 3))
        download = "dest" in args
        local = self._connection.transport == "local"
        where = "the control node" if local else task_vars.get("inventory_hostname", "the node")
        ca_path = args.get("ca_path")
        if ca_path:
            # A CA file that is missing would otherwise read "Connection failure: [Errno 2] No such file or directory".
            if local:
                exists = os.path.isfile(os.path.expanduser(ca_path))
            else:
                stat = self._execute_module(module_name="ansible.builtin.stat", task_vars=task_vars,
                                            module_args={"path": ca_path, "get_checksum": False})
                exists = stat.get("stat", {}).get("isreg", False)
            if not exists:
                return {"failed": True, "url": args["url"], "attempts": 0,
                        "msg": f"GET {args['url']} failed: the CA bundle {ca_path} (containerd_gvisor_ca_path) is not a file "
                               f"on {where}, the machine that downloads; with containerd_gvisor_download_mode: node it "
                               "must be on every node"}
            if download and not local:
                # get_url has no ca_path (uri has): OpenSSL reads the bundle SSL_CERT_FILE names instead.
                args.pop("ca_path")
                environment = self._task.environment
                environment = environment if isinstance(environment, list) else [environment] if environment else []
                self._task.environment = [*environment, {"SSL_CERT_FILE": ca_path}]
        if download and not self._task.check_mode:
            # get_url downloads before it finds that dest's directory is missing.
            directory = os.path.dirname(os.path.expanduser(args["dest"]))
            if local:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            else:
                self._execute_module(module_name="ansible.builtin.file", task_vars=task_vars,
                                     module_args={"path": directory, "state": "directory", "mode": "0700"})
        for attempt in range(1, tries + 1):
            seconds = int(args.get("timeout", 10))
            if download and local and not self._task.check_mode:
                result = download_here(args, seconds)
            elif download and not self._task.check_mode:
                result = self.bounded("ansible.builtin.get_url", args, task_vars, seconds)
            else:
                result = self._execute_module(module_name="ansible.builtin.get_url" if download else "ansible.builtin.uri",
                                              module_args=args, task_vars=task_vars)
            if not result.get("failed") or not transient(result) or attempt == tries:
                break
            time.sleep(min(delay * 2 ** (attempt - 1), 60))
        result["attempts"] = attempt
        mismatch = re.search(r"did not match ([0-9a-f]+); it was ([0-9a-f]+)", str(result.get("msg", "")))
        if result.get("failed") and mismatch:
            source = f" ({checksum_source})" if checksum_source else ""
            result["msg"] = (f"{os.path.basename(args['dest'])} from {args['url']} does not match its checksum: "
                             f"expected sha512 {mismatch.group(1)}{source}, got sha512 {mismatch.group(2)}")
        elif result.get("failed"):
            result["reason"] = reason(result, args.get("timeout", 10), args.get("url_username") or "", where)
            tried = f" (gave up after {attempt} tries)" if transient(result) else ""
            result["msg"] = f"GET {args['url']} failed: {result['reason']}{tried}"
        return result

    def bounded(self, module, args, task_vars, seconds):
        """Run get_url on the node under Ansible's async wrapper, which kills it after `seconds`."""
        self._task.async_val = seconds
        try:
            started = self._execute_module(module_name=module, module_args=args, task_vars=task_vars, wrap_async=True)
        finally:
            self._task.async_val = 0
        if started.get("failed") or "ansible_job_id" not in started:
            return started
        # As the async_status action asks: in the shell's async directory, which async_wrapper wrote to.
        job = {"jid": started["ansible_job_id"], "_async_dir": self.get_shell_option("async_dir", default="~/.ansible_async")}
        status, deadline = {}, time.monotonic() + seconds + 30
        while not status.get("finished") and time.monotonic() < deadline:
            time.sleep(0.2)
            status = self._execute_module(module_name="ansible.builtin.async_status", task_vars=task_vars, module_args=job)
        self._execute_module(module_name="ansible.builtin.async_status", task_vars=task_vars,
                             module_args={**job, "mode": "cleanup"})
        return status
