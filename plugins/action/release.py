# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Carry a plan's release files from the control node's download cache to the node, then run the release module.

One file transfer per release file and one module call: the copy module would add a stat and a module
run per file.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase

MODULE = "gvisor_nodes.containerd_gvisor.release"


class ActionModule(ActionBase):
    """With `plan` (the plan action's result): the module's arguments from it; otherwise the arguments as given."""

    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        if "plan" not in self._task.args:
            return {**result, **self._execute_module(MODULE, module_args=self._task.args, task_vars=task_vars)}
        plan = self._task.args["plan"]
        args = dict(plan["module_args"])
        if plan["install"] and plan["controller_download"] and not self._task.check_mode:
            tmpdir = self._make_tmp_path()
            args["sources"] = {item["name"]: self._connection._shell.join_path(tmpdir, item["name"]) for item in plan["downloads"]}
            for item in plan["downloads"]:
                self._transfer_file(item["dest"], args["sources"][item["name"]])
            self._fixup_perms2([tmpdir, *args["sources"].values()])
        elif plan["install"]:
            args["sources"] = {item["name"]: item["dest"] for item in plan["downloads"]}
        try:
            return {**result, **self._execute_module(MODULE, module_args=args, task_vars=task_vars)}
        finally:
            if self._connection._shell.tmpdir:
                self._remove_tmp_path(self._connection._shell.tmpdir)
