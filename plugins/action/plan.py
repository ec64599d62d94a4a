# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Plan the run: every decision, once, from the inputs, the node and the release's checksums (plugin_utils/plan.py)."""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.plugin_utils import plan


class ActionModule(ActionBase):
    """Runs on the control node only: no round trip to the node."""

    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        try:
            result.update(plan.plan(args["inputs"], args.get("node"), args.get("answers")))
        except plan.Refusal as refusal:
            return {**result, "failed": True, "msg": str(refusal)}
        return result
