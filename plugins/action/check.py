# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Check the role's inputs and the node, and find where the release comes from (plugin_utils/plan.py)."""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.plugin_utils import plan


class ActionModule(ActionBase):
    """Runs on the control node only: no round trip to the node."""

    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        try:
            result.update(plan.check(self._task.args["inputs"], self._task.args.get("node")))
        except plan.Refusal as refusal:
            return {**result, "failed": True, "msg": str(refusal)}
        return {**result, "changed": False}
