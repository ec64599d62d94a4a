# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Which of the files a run manages must change, from what the node_info module read."""

from __future__ import annotations

import base64


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


class FilterModule:
    """Filters that compare what a node has with what a run wants."""

    def filters(self):
        return {"file_changes": file_changes}
