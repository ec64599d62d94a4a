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


def reason(result, timeout):
    """Say in a few words why a request failed."""
    msg = str(result.get("msg", ""))
    status = result.get("status", result.get("status_code"))
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
    return bool(re.search(r"timed out|Incomplete read|Connection (failure|refused|reset)|Request failed: <urlopen",
                          str(result.get("msg", ""))))


class ActionModule(ActionBase):
    """get_url when dest is given, else uri; tries and delay set the retries."""

    def run(self, tmp=None, task_vars=None):
        super().run(tmp, task_vars)
        args = dict(self._task.args)
        tries, delay = int(args.pop("tries", 4)), float(args.pop("delay", 3))
        module = "ansible.builtin.get_url" if "dest" in args else "ansible.builtin.uri"
        if "dest" in args and not self._task.check_mode:
            # get_url downloads before it finds that dest's directory is missing.
            directory = os.path.dirname(os.path.expanduser(args["dest"]))
            if self._connection.transport == "local":
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
        if result.get("failed"):
            result["reason"] = reason(result, args.get("timeout", 10))
            if transient(result):
                result["msg"] = f"GET {args['url']} failed: {result['reason']} (gave up after {attempt} tries)"
        return result
