# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Files on the node the role manages besides containerd's config.toml: which must change, and Docker's daemon.json."""

from __future__ import annotations

import base64
import json

from ansible.errors import AnsibleFilterError


def file_changes(wanted, read, owner="root", group="root", mode="0644"):
    """Return [{path, content, mode}] for each path whose wanted content (None: absent) differs from the node's.

    read: node_info's files ({path: {exists, content (base64), owner, group, mode}}).
    """
    changes = []
    for path, content in wanted.items():
        old = dict(read.get(path) or {"exists": False})
        if old["exists"]:
            old["content"] = base64.b64decode(old["content"]).decode("utf-8", errors="replace")
        if content is None:
            changed = old["exists"]
        else:
            changed = not old["exists"] or (old["content"], old["owner"], old["group"], old["mode"]) != (
                content, owner, group, mode)
        if changed:
            changes.append({"path": path, "content": content, "mode": mode})
    return changes


def docker_daemon_json(text, path, runtime, runsc="", args=()):
    """Return Docker's daemon.json text with the runtime registered (runsc given) or taken out (runsc empty).

    Every other key and runtime is kept; text comes back unchanged when it already says the same.
    """
    try:
        data = json.loads(text) if text and text.strip() else {}
    except ValueError as err:
        raise AnsibleFilterError(f"{path} is not valid JSON ({err}); fix it or remove it, the node was left unchanged") from None
    if not isinstance(data, dict) or not isinstance(data.get("runtimes", {}), dict):
        raise AnsibleFilterError(f"{path} must hold a JSON object whose runtimes is an object; the node was left unchanged")
    merged = json.loads(json.dumps(data))
    runtimes = merged.setdefault("runtimes", {})
    if runsc:
        runtimes[runtime] = {"path": runsc, "runtimeArgs": list(args)}
    else:
        runtimes.pop(runtime, None)
        if not runtimes:
            del merged["runtimes"]
    if merged == data:
        return text or ""
    return json.dumps(merged, indent=2, sort_keys=True) + "\n"


class FilterModule:
    """Filters that compare what a node has with what a run wants."""

    def filters(self):
        return {"file_changes": file_changes, "docker_daemon_json": docker_daemon_json}
