"""Record the wall time of every task of a run into the JSON file $BENCH_TIMINGS.

A task's time runs from its start until its last host reported, which is what a fleet
waits for. Used by bench/bench.py only.
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: bench_timer
type: aggregate
short_description: task wall times for bench/bench.py
description: Writes [{task, role, seconds}] to the file named by $BENCH_TIMINGS.
requirements: [enable in callbacks_enabled]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._tasks = []
        self._current = None

    def _start(self, task):
        self._finish()
        self._current = {"task": task.get_name(), "start": time.monotonic(), "end": time.monotonic()}

    def _finish(self):
        if self._current:
            self._current["seconds"] = round(self._current.pop("end") - self._current.pop("start"), 3)
            self._tasks.append(self._current)
            self._current = None

    def _result(self, *_args, **_kwargs):
        if self._current:
            self._current["end"] = time.monotonic()

    v2_playbook_on_task_start = lambda self, task, is_conditional: self._start(task)  # noqa: E731
    v2_playbook_on_handler_task_start = lambda self, task: self._start(task)  # noqa: E731
    v2_runner_on_ok = v2_runner_on_failed = v2_runner_on_skipped = v2_runner_on_unreachable = _result

    def v2_playbook_on_stats(self, stats):
        self._finish()
        path = os.environ.get("BENCH_TIMINGS")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(self._tasks, handle, indent=1)
