# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Run ansible.builtin.get_url or ansible.builtin.uri against a release mirror, retrying with a doubling wait.

What the builtins cannot do: Ansible's until/retries/delay waits the same time before every try,
and a task must spell out which failures to retry. This adds only that, and creates the directory
of get_url's dest when it is missing. Every HTTP feature (TLS, CA and client certificates, basic
auth, headers, proxies, checksum checks) is the builtins' own.
"""

from __future__ import annotations

import os
import re
import time

from ansible.plugins.action import ActionBase


CERTIFICATE = re.compile(r"\[SSL: CERTIFICATE_VERIFY_FAILED\] ([^(>]*)")


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
    if "timed out" in msg:
        return f"no answer within {timeout} s"
    cut = re.search(r"Incomplete read.*cl=(\d+), st.st_size=(\d+)", msg)
    if cut:
        return f"the body was cut off after {cut.group(2)} of {cut.group(1)} bytes"
    if isinstance(status, int) and status >= 400:
        text = re.search(r"HTTP Error \d+: (.*)", str(result.get("response", msg)))
        return f"HTTP {status} {text.group(1) if text else ''}".strip()
    return msg


def transient(result):
    """Whether a failed request may succeed when tried again: no answer, 408, 429, 5xx or a cut-off body."""
    status = result.get("status", result.get("status_code"))
    if isinstance(status, int) and (status in (408, 429) or status >= 500):
        return True
    if CERTIFICATE.search(str(result.get("msg", ""))):
        return False
    return bool(re.search(r"timed out|Incomplete read|Connection (failure|refused|reset)|Request failed",
                          str(result.get("msg", ""))))


class ActionModule(ActionBase):
    """get_url when dest is given, else uri; tries and delay set the retries. `files` fetches several, in turn."""

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
        module = "ansible.builtin.get_url" if "dest" in args else "ansible.builtin.uri"
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
            if module == "ansible.builtin.get_url":
                # get_url has no ca_path (uri has): OpenSSL reads the bundle SSL_CERT_FILE names instead.
                args.pop("ca_path")
                environment = self._task.environment
                environment = environment if isinstance(environment, list) else [environment] if environment else []
                self._task.environment = [*environment, {"SSL_CERT_FILE": ca_path}]
        if "dest" in args and not self._task.check_mode:
            # get_url downloads before it finds that dest's directory is missing.
            directory = os.path.dirname(os.path.expanduser(args["dest"]))
            if local:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            else:
                self._execute_module(module_name="ansible.builtin.file", task_vars=task_vars,
                                     module_args={"path": directory, "state": "directory", "mode": "0700"})
        for attempt in range(1, tries + 1):
            result = self._execute_module(module_name=module, module_args=args, task_vars=task_vars)
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
            if transient(result):
                result["msg"] = f"GET {args['url']} failed: {result['reason']} (gave up after {attempt} tries)"
            elif CERTIFICATE.search(str(result.get("msg", ""))) or result.get("status") in (401, 403):
                result["msg"] = f"GET {args['url']} failed: {result['reason']}"
        return result
