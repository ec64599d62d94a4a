"""Record every task of a run, and which of them reached a node, into the JSON file $BENCH_TIMINGS.

A task's time runs from its start until its last host reported, which is what a fleet waits
for. A task result "reached the node" when it was not skipped, did not run on the control node
(delegated to localhost) and is not an action that only ever runs on the control node (set_fact,
assert, include_tasks, ...): each such result is at least one round trip to the node. For a loop,
every item that reached the node is one module call ("node_calls"); the task counts once per host
("on_node"). Every play is recorded too, from its start to the next play's start (or the end of the
run), with the hosts that reported in it: with `serial`, ansible-playbook starts the play once per
batch, so each batch is a play of its own. Used by bench/bench.py only.
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: bench_timer
type: aggregate
short_description: task wall times and round trips for bench/bench.py
description:
  - Writes {tasks, plays, stats} to the file named by $BENCH_TIMINGS; every task as
    {task, role, action, play, seconds, hosts, skipped, on_node, node_calls}, every play (a
    batch, with serial) as {play, name, seconds, hosts}.
requirements: [enable in callbacks_enabled]
"""

# Actions that never leave the control node, whatever host they run "on".
CONTROLLER_ACTIONS = {
    "set_fact",
    "debug",
    "assert",
    "fail",
    "meta",
    "include_tasks",
    "import_tasks",
    "include_role",
    "import_role",
    "include_vars",
    "set_stats",
    "add_host",
    "group_by",
    "validate_argument_spec",
    "pause",
    "import_playbook",
    "end_play",
    "end_host",
    "end_batch",
    # This collection's actions that decide on the control node from what node_info read.
    "check",
    "plan",
}
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def _short(action):
    return (action or "").rsplit(".", 1)[-1]


def _task_of(result):
    return getattr(result, "task", None) or result._task  # ansible-core 2.19 renamed _task to task


def _host_of(result):
    return (getattr(result, "host", None) or result._host).get_name()


def _delegated_locally(data):
    delegated = data.get("_ansible_delegated_vars") or {}
    return delegated.get("ansible_delegated_host") in LOCAL_HOSTS or delegated.get("ansible_connection") == "local"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._tasks = []
        self._current = None
        self._item_hits = {}
        self._plays = []
        self._play = None

    def _start(self, task):
        self._finish()
        now = time.monotonic()
        role = task._role.get_name() if getattr(task, "_role", None) else ""
        self._current = {
            "task": task.get_name(),
            "role": role,
            "action": _short(task.action),
            "play": len(self._plays) - 1 if self._play else None,
            "start": now,
            "end": now,
            "hosts": 0,
            "skipped": 0,
            "on_node": 0,
            "node_calls": 0,
        }
        self._item_hits = {}

    def _finish(self):
        if self._current:
            self._current["seconds"] = round(self._current.pop("end") - self._current.pop("start"), 3)
            self._tasks.append(self._current)
            self._current = None

    def _finish_play(self):
        self._finish()
        if self._play:
            play, hosts = self._play
            play["seconds"] = round(time.monotonic() - play.pop("start"), 3)
            play["hosts"] = sorted(hosts)
            self._play = None

    # Callbacks get results without their "skipped" key, so which callback fired tells a skip.
    @staticmethod
    def _reaches_node(result):
        if _short(_task_of(result).action) in CONTROLLER_ACTIONS:
            return False
        return not _delegated_locally(result._result)

    def _item(self, result, skipped=False):
        if not self._current:
            return
        self._current["end"] = time.monotonic()
        if not skipped and self._reaches_node(result):
            host = _host_of(result)
            self._item_hits[host] = self._item_hits.get(host, 0) + 1
            self._current["node_calls"] += 1

    def _result(self, result, skipped=False):
        if not self._current:
            return
        current = self._current
        current["end"] = time.monotonic()
        current["hosts"] += 1
        host = _host_of(result)
        if self._play:
            self._play[1].add(host)
        if skipped:
            current["skipped"] += 1
        elif isinstance(result._result.get("results"), list):  # a loop: its items were counted one by one
            current["on_node"] += 1 if self._item_hits.get(host) else 0
        elif self._reaches_node(result):
            current["on_node"] += 1
            current["node_calls"] += 1

    def v2_playbook_on_play_start(self, play):
        self._finish_play()
        record = {"play": len(self._plays), "name": play.get_name(), "start": time.monotonic()}
        self._plays.append(record)
        self._play = (record, set())

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._start(task)

    def v2_runner_on_ok(self, result, *_args, **_kwargs):
        self._result(result)

    v2_runner_on_failed = v2_runner_on_unreachable = v2_runner_on_ok

    def v2_runner_on_skipped(self, result, *_args, **_kwargs):
        self._result(result, skipped=True)

    def v2_runner_item_on_ok(self, result, *_args, **_kwargs):
        self._item(result)

    v2_runner_item_on_failed = v2_runner_item_on_ok

    def v2_runner_item_on_skipped(self, result, *_args, **_kwargs):
        self._item(result, skipped=True)

    def v2_playbook_on_stats(self, stats):
        self._finish_play()
        path = os.environ.get("BENCH_TIMINGS")
        if path:
            hosts = sorted(stats.processed.keys())
            with open(path, "w", encoding="utf-8") as handle:
                summary = {h: stats.summarize(h) for h in hosts}
                json.dump({"tasks": self._tasks, "plays": self._plays, "stats": summary}, handle, indent=1)
