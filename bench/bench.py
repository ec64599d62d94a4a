"""Benchmark: this role against kubernetes-sigs/image-builder's gVisor tasks, converge cost by fleet size, rollouts.

Peer comparison (paired, one node): for each of --pairs pairs it starts two fresh node containers
from the same bookworm image, and runs on one this role (playbooks/gvisor.yml, default settings:
controller download mode, smoke test on change) and on the other the peer's tasks that install
gVisor, both against the same loopback mirror and the same dated release:
  - first:     a first converge (gVisor not installed),
  - no change: the same converge again.
Which side goes first alternates from pair to pair; a warm-up pair that is not recorded runs first.
Every run is the whole `ansible-playbook` process, timed from start to exit.

The peer's tasks are read at run time from the image-builder checkout given with --peer (a
checkout) or --peer-git-dir (a git directory, bare or not, at --peer-rev): the get_url loop that
downloads runsc and containerd-shim-runsc-v1 from gVisor's bucket and the `runsc install` command
task, picked by what they do, not by name. Only the bucket URL is rewritten (to the local mirror);
they get the variables they need (containerd_gvisor_version, sysusr_prefix=/usr/local,
containerd_gvisor_runtime=true) and run in a temporary playbook that gathers facts and becomes root
as image-builder's node.yml play does. Nothing of the peer is written into this repository.

Fleet (optional, --fleet-sizes): for each download mode and fleet size, that many node containers
and three runs of this role (first, no change, pinned: no change with containerd_gvisor_checksums
set), with the requests and bytes the mirror served.

Rolling rollouts (--rollout-sizes, --rollout-serials; --no-rollout to skip them): for each fleet size and
containerd_gvisor_serial, that many fresh node containers and two runs of this role (first, no change)
in batches; each batch is a play of its own, timed by the callback from its start to the next one's.
--only-rollout measures only these (no peer needed) and merges them into the existing docs/bench.json,
whose peer and fleet rows it keeps, then writes docs/bench.md and docs/bench.png again from it all.

Metrics (--metrics-reps, 0 skips them): on one node with release 20261005 (the test mirror's, whose
gvisor-bin/runsc-metric-server is the mirror's stand-in metric server; bookworm's containerd 1.6 only gets
a warning with containerd_gvisor_ignore_compatibility), the no-change converge with containerd_gvisor_metrics
off and on, alternating which goes first; each recorded run follows the (unrecorded) run that turned the
setting on or off.

Every run also records, from bench/callback_plugins/bench_timer.py, each task's wall time and
how many tasks reached the node (not skipped, not run on the control node): the round trips.
Writes docs/bench.md, docs/bench.json and docs/bench.png. A benchmark, not a test: it asserts nothing.

    bench/run --peer-git-dir /path/to/image-builder/.git [--pairs 5] [--fleet-sizes 1,4]
    bench/run --peer /path/to/image-builder [--no-fleet] [--rollout-serials 1,2,100%]
    bench/run --only-rollout [--rollout-sizes 4] [--rollout-serials 2] [--rollout-reps 1]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from gvisor_mirror import MirrorServer  # noqa: E402
from gvisor_node import ANSIBLE_PLAYBOOK, remove_node, start_node  # noqa: E402
from gvisor_testinfra import SHIM, free_port, mirror_dir, release_dir  # noqa: E402

IMAGE = "containerd-gvisor-node:bookworm"
# What this role's runs use: a copy of the collection taken when the bench starts (so edits made in the
# working tree during a run do not change what is measured), and the node image's ID resolved then.
SNAPSHOT_PATHS = ("ansible.cfg", "galaxy.yml", "meta", "plugins", "roles", "playbooks", "requirements.txt")
CURRENT = {"root": REPO, "image": IMAGE}
DOCS = REPO / "docs"
ARCH = platform.machine()
# gVisor's public release bucket: the peer's tasks name it; it is the one thing rewritten in them.
BUCKET = "https://storage.googleapis.com/gvisor/releases"
PEER_TASKS = "images/capi/ansible/roles/containerd/tasks/main.yml"
PEER_PLAY = "images/capi/ansible/node.yml"
PEER_VARS = {"sysusr_prefix": "/usr/local", "containerd_gvisor_runtime": True}
# The peer's tasks by what they do, as this benchmark names them (none of the peer's text is kept).
PEER_LABELS = {
    "gather": "gather facts (setup)",
    "download": "download loop (get_url: runsc, shim)",
    "install": "runsc install (command)",
}
LOOSE = ("runsc", SHIM)
RUNS = ("first", "no change")
FLEET_RUNS = ("first", "no change", "pinned")
OVERHEAD = "\0overhead"  # a run's wall time outside every task
# What each run is measured against, and the ratio it may reach at most: the first converge against
# image-builder's tasks, the no-change converge against the floor, a playbook that only pings the node (start-up
# plus one round trip, which no run that reads the node can beat).
TARGETS = {"first": ("peer", 2.0), "no change": ("floor", 1.3)}
FLOOR_PLAYBOOK = """- name: The floor, start-up and one round trip
  hosts: all
  gather_facts: false
  become: true
  tasks:
    - name: Ping the node
      ansible.builtin.ping:
"""
# Task name fragments -> where the time goes (fleet table). Tasks that match none are "planning and other".
PHASES = [
    ("reading the node", ("Read the node", "Gathering Facts")),
    ("mirror checksums", ("checksum",)),
    ("download", ("Download the release",)),
    ("install, restart and sandboxes", ("Install the release",)),
]


def phase_of(task):
    for phase, fragments in PHASES:
        if any(fragment in task for fragment in fragments):
            return phase
    return "planning and other"


def log(message):
    print(f"bench: {message}", flush=True)


def git(*args, cwd=None):
    proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


# --- the peer ---------------------------------------------------------------------------------


def _module(task, names):
    """The (key, arguments) of a task whose module's short name is in names, else (None, None)."""
    for key, value in task.items():
        if isinstance(key, str) and key.rsplit(".", 1)[-1] in names:
            return key, value
    return None, None


def _walk(tasks):
    for task in tasks or []:
        if isinstance(task, dict):
            yield task
            for key in ("block", "rescue", "always"):
                yield from _walk(task.get(key))


def _rewrite(value, url):
    if isinstance(value, str):
        return value.replace(BUCKET, url)
    if isinstance(value, list):
        return [_rewrite(v, url) for v in value]
    if isinstance(value, dict):
        return {k: _rewrite(v, url) for k, v in value.items()}
    return value


class Peer:
    """image-builder's gVisor tasks, read at run time from a checkout or a git directory."""

    def __init__(self, checkout=None, git_dir=None, rev="HEAD"):
        if checkout:
            root = Path(checkout).resolve()
            if not (root / PEER_TASKS).exists() and (root / "ansible" / "roles").exists():  # images/capi given
                root = root.parent.parent
            if not (root / PEER_TASKS).exists():
                raise SystemExit(f"bench: {root} is not an image-builder checkout: no {PEER_TASKS}")
            self.tasks_text = (root / PEER_TASKS).read_text()
            play = root / PEER_PLAY
            self.play_text = play.read_text() if play.exists() else ""
            self.commit = git("rev-parse", "HEAD", cwd=root) or "unknown (not a git checkout)"
            self.commit_date = git("log", "-1", "--format=%cI", cwd=root)
            dirty = git("status", "--porcelain", "--", PEER_TASKS, PEER_PLAY, cwd=root)
            self.source = f"checkout {root}" + (" (those files modified)" if dirty else "")
        else:
            git_dir = str(Path(git_dir).resolve())
            self.commit = git("--git-dir", git_dir, "rev-parse", f"{rev}^{{commit}}")
            if not self.commit:
                raise SystemExit(f"bench: {git_dir} has no commit {rev}")
            self.tasks_text = git("--git-dir", git_dir, "show", f"{self.commit}:{PEER_TASKS}")
            if not self.tasks_text:
                raise SystemExit(f"bench: {git_dir} at {rev} has no {PEER_TASKS}")
            self.play_text = git("--git-dir", git_dir, "show", f"{self.commit}:{PEER_PLAY}")
            self.commit_date = git("--git-dir", git_dir, "log", "-1", "--format=%cI", self.commit)
            self.source = f"git directory {git_dir} at {rev}"
        self.tasks_sha256 = hashlib.sha256(self.tasks_text.encode()).hexdigest()
        self._extract()

    def _extract(self):
        tasks = yaml.safe_load(self.tasks_text)
        downloads = [
            t
            for t in _walk(tasks)
            if (args := _module(t, {"get_url"})[1]) and isinstance(args, dict) and BUCKET in str(args.get("url", ""))
        ]
        installs = []
        for task in _walk(tasks):
            _key, args = _module(task, {"command", "shell"})
            cmd = (
                args
                if isinstance(args, str)
                else (
                    " ".join(str(args.get(k, "")) for k in ("cmd", "argv", "_raw_params"))
                    if isinstance(args, dict)
                    else ""
                )
            )
            if re.search(r"runsc\S*['\"]?\s+install\b", cmd):
                installs.append(task)
        if len(downloads) != 1 or len(installs) != 1:
            raise SystemExit(
                f"bench: expected one get_url task from {BUCKET} and one `runsc install` task in the "
                f"peer's {PEER_TASKS}, found {len(downloads)} and {len(installs)}"
            )
        self.download, self.install = downloads[0], installs[0]
        # What node.yml's play does before its roles run: gather facts unless it says otherwise, become root.
        play = (
            next((p for p in (yaml.safe_load(self.play_text) or []) if isinstance(p, dict) and "hosts" in p), {})
            if self.play_text
            else {}
        )
        self.gather_facts = play.get("gather_facts", True)
        self.become = play.get("become", True)
        self.labels = {
            "Gathering Facts": PEER_LABELS["gather"],
            self.download.get("name", ""): PEER_LABELS["download"],
            self.install.get("name", ""): PEER_LABELS["install"],
        }

    def playbook(self, mirror_url, release, dest):
        """Write the temporary playbook running the peer's two tasks against the mirror; return its path."""
        download = _rewrite(self.download, mirror_url)
        if BUCKET in json.dumps(download) or mirror_url not in json.dumps(download):
            raise SystemExit("bench: could not point the peer's download task at the mirror")
        variables = dict(PEER_VARS, containerd_gvisor_version=str(release))
        used = set(re.findall(r"\{\{-?\s*([A-Za-z_]\w*)", json.dumps([download, self.install])))
        known = set(variables) | {"item", "ansible_facts", "omit", self.install.get("register", "")}
        if used - known:
            raise SystemExit(
                f"bench: the peer's tasks use variables this benchmark does not set: {sorted(used - known)}"
            )
        play = [
            {
                "name": "gVisor tasks of image-builder's containerd role (extracted by bench/bench.py)",
                "hosts": "all",
                "become": self.become,
                "gather_facts": self.gather_facts,
                "vars": variables,
                "tasks": [download, self.install],
            }
        ]
        dest.write_text(yaml.safe_dump(play, sort_keys=False))
        return dest

    def meta(self):
        return {
            "repository": "kubernetes-sigs/image-builder",
            "commit": self.commit,
            "commit_date": self.commit_date,
            "tasks_file": PEER_TASKS,
            "tasks_file_sha256": self.tasks_sha256,
            "source": self.source,
            "gather_facts": self.gather_facts,
            "become": self.become,
            "variables": dict(PEER_VARS, containerd_gvisor_version="(the release)"),
            "rewritten": BUCKET,
        }


# --- the role, as it was when the bench started ---


def role_playbook():
    return CURRENT["root"] / "playbooks" / "gvisor.yml"


def snapshot_collection(dest):
    """Copy the collection's files (the playbooks' link to it included) to dest and return dest."""
    dest.mkdir(parents=True)
    for name in SNAPSHOT_PATHS:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def fingerprint(root):
    """sha256 over the collection's files under root (names and bytes), links not followed."""
    digest = hashlib.sha256()
    files = []
    for name in SNAPSHOT_PATHS:
        if (root / name).is_file():
            files.append(root / name)
        for top, dirs, names in os.walk(root / name):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            files += [Path(top) / n for n in names if not n.endswith(".pyc")]
    for path in sorted(files):
        if path.is_file() and not path.is_symlink():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def image_id(image):
    proc = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", image], capture_output=True, text=True, check=False)
    return proc.stdout.strip()


# --- running ansible-playbook --------------------------------------------------------------------


def converge(playbook, nodes, workdir, label, variables=None, labels=None):
    """One whole ansible-playbook process against nodes; returns wall time and what the callback saw."""
    inventory = workdir / f"inventory-{label}.ini"
    inventory.write_text("".join(f"{n} ansible_connection=community.docker.docker\n" for n in nodes))
    timings = workdir / f"timings-{label}.json"
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(CURRENT["root"] / "ansible.cfg"),
        ANSIBLE_PIPELINING="1",
        ANSIBLE_CALLBACK_PLUGINS=str(REPO / "bench" / "callback_plugins"),
        ANSIBLE_CALLBACKS_ENABLED="bench_timer",
        BENCH_TIMINGS=str(timings),
        ANSIBLE_NOCOLOR="1",
    )
    argv = [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), "-f", str(max(5, len(nodes)))]
    if variables:
        argv += ["-e", json.dumps(variables)]
    load = os.getloadavg()[0]
    start = time.monotonic()
    proc = subprocess.run(argv + [str(playbook)], capture_output=True, text=True, env=env, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"converge {label} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}")
    data = json.loads(timings.read_text())
    tasks = data["tasks"]
    plays = data.get("plays", [])
    for task in tasks:
        task["task"] = (labels or {}).get(task["task"], task["task"])
    ran = [t for t in tasks if t["hosts"] > t["skipped"]]
    return {
        "wall_s": round(wall, 2),
        "load_before": round(load, 2),
        "tasks_run": len(ran),
        "tasks_on_node": round(sum(t["on_node"] for t in tasks) / len(nodes), 2),
        "node_calls": round(sum(t["node_calls"] for t in tasks) / len(nodes), 2),
        "changed": sum(s.get("changed", 0) for s in data["stats"].values()),
        "task_seconds": round(sum(t["seconds"] for t in tasks), 2),
        "plays": plays,
        "tasks": tasks,
    }


def start_nodes(names):
    """Start fresh node containers and wait until systemd booted and containerd is active on each."""

    def boot(name):
        node = start_node(name, CURRENT["image"])
        deadline = time.monotonic() + 60
        while node.sh("systemctl is-active containerd", check=False).strip() != "active":
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start on {name}")
            time.sleep(0.3)
        return node

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(4, len(names)))) as pool:
        return list(pool.map(boot, names))


def runsc_version(node):
    return node.sh("/usr/local/bin/runsc --version 2>&1 | head -n1", check=False).strip()


def served(server, seen):
    requests = server.requests()[seen:]
    return {
        "requests": len(requests),
        "bytes": sum(r["bytes"] for r in requests),
        "sha512_requests": sum(1 for r in requests if r["path"].endswith(".sha512")),
    }


def role_vars(release, server, cache, **extra):
    # A cache of its own for each first converge, so it starts cold as on a new control node.
    return {
        "containerd_gvisor_runtime": True,
        "containerd_gvisor_version": str(release),
        "containerd_gvisor_mirror_url": server.url,
        "containerd_gvisor_download_cache_dir": str(cache),
        **extra,
    }


# --- the peer comparison ---------------------------------------------------------------------------


def compare(peer, pairs, release, warmup, workdir):
    server = MirrorServer(mirror_dir(), workdir / "access-pairs.log")
    rows, versions = [], {}
    try:
        playbook = peer.playbook(server.url, release, workdir / "peer-playbook.yml")
        floor = workdir / "floor-playbook.yml"
        floor.write_text(FLOOR_PLAYBOOK)
        for pair in range(0 if warmup else 1, pairs + 1):
            order = ("role", "peer") if pair % 2 else ("peer", "role")
            names = {"role": "bench-role", "peer": "bench-peer"}
            nodes = dict(zip(order, start_nodes([names[s] for s in order])))
            try:
                # The warm-up pair (not recorded) only needs the first converges.
                for run in RUNS if pair else RUNS[:1]:
                    for position, side in enumerate(order, 1):
                        label = f"{pair}-{side}-{run.replace(' ', '-')}"
                        seen = len(server.requests())
                        if side == "role":
                            result = converge(
                                role_playbook(),
                                [names[side]],
                                workdir,
                                label,
                                role_vars(release, server, workdir / f"cache-{pair}"),
                            )
                        else:
                            result = converge(playbook, [names[side]], workdir, label, labels=peer.labels)
                        row = {
                            "pair": pair,
                            "side": side,
                            "run": run,
                            "position": position,
                            **served(server, seen),
                            **result,
                        }
                        log(
                            f"{'warm-up' if pair == 0 else f'pair {pair}'}  {side:4}  {run:9}  {row['wall_s']:6.2f} s  "
                            f"{row['tasks_on_node']:4} tasks on the node  {row['requests']} requests  "
                            f"{row['bytes']:>10} bytes  changed {row['changed']}"
                        )
                        if pair:
                            rows.append(row)
                    if pair and run == "no change":
                        # The floor, on the role's node right after its no-change converge.
                        seen = len(server.requests())
                        result = converge(floor, [names["role"]], workdir, f"{pair}-floor")
                        rows.append({"pair": pair, "side": "floor", "run": run, "position": 3, **served(server, seen),
                                     **result})
                        log(f"pair {pair}  floor  {run:9}  {result['wall_s']:6.2f} s")
                for side, node in nodes.items():
                    versions.setdefault(side, set()).add(runsc_version(node))
            finally:
                for name in names.values():
                    remove_node(name)
    finally:
        server.stop()
    return rows, {side: sorted(v) for side, v in versions.items()}


# --- metrics on and off ---------------------------------------------------------------------------

METRICS_RELEASE = "20261005"  # a release with a metric server on the test mirror


def metrics_pairs(reps, workdir):
    """The no-change converge with gVisor's metric server off and on, on one node, in alternating order."""
    server = MirrorServer(mirror_dir(), workdir / "access-metrics.log")
    name, rows = "bench-metrics", []
    start_nodes([name])
    try:
        base = role_vars(METRICS_RELEASE, server, workdir / "cache-metrics", containerd_gvisor_ignore_compatibility=True,
                         containerd_gvisor_metrics_address=f"127.0.0.1:{free_port()}")
        converge(role_playbook(), [name], workdir, "metrics-first", base)
        for rep in range(1, reps + 1):
            for on in (False, True) if rep % 2 else (True, False):
                variables = {**base, "containerd_gvisor_metrics": on}
                converge(role_playbook(), [name], workdir, f"metrics-{rep}-{on}-change", variables)
                result = converge(role_playbook(), [name], workdir, f"metrics-{rep}-{on}", variables)
                rows.append({"rep": rep, "metrics": on, **result})
                log(f"metrics {'on ' if on else 'off'}  no change  {result['wall_s']:6.2f} s  changed {result['changed']}")
    finally:
        remove_node(name)
        server.stop()
    return rows


def metrics_summary(rows):
    """Medians with metrics off and on, their ratio, and the noise: the spread of the off runs over their median."""
    off = [r["wall_s"] for r in rows if not r["metrics"]]
    on = [r["wall_s"] for r in rows if r["metrics"]]
    noise = (max(off) - min(off)) / med(off)
    ratio = med(on) / med(off)
    return {"off": off, "on": on, "ratio_of_medians": round(ratio, 3), "noise": round(noise, 3),
            "met": ratio <= 1 + noise, "changed": sum(r["changed"] for r in rows)}


def metrics_report(data):
    s = data["metrics"]["summary"]
    return [
        "## gVisor's metric server on and off",
        "",
        f"On one node, release `{METRICS_RELEASE}` (the test mirror's stand-in metric server), "
        f"{len(s['off'])} no-change converges with `containerd_gvisor_metrics` off and as many on, in alternating order, "
        "each right after the run that turned the setting off or on. Target: on no slower than off, within noise "
        "(the spread of the off runs over their median).",
        "",
        "| no change | metrics off (s) | metrics on (s) | on / off, ratio of medians | noise | target met |",
        "|---|---|---|---:|---:|---|",
        f"| whole run | {spread(s['off'], 2)} | {spread(s['on'], 2)} | **{s['ratio_of_medians']:.2f}x** | "
        f"{s['noise']:.2f} | {'yes' if s['met'] else 'no'} |",
        "",
        f"Tasks that changed something in the recorded runs: {s['changed']}.",
        "",
    ]


# --- the fleet -----------------------------------------------------------------------------------


def pinned_checksums(release):
    rel = release_dir(release, ARCH)
    names = ["gvisor.tar.bz2"] if (rel / "gvisor.tar.bz2").exists() else list(LOOSE)
    return {n: hashlib.sha512((rel / n).read_bytes()).hexdigest() for n in names}


def fleet_one(mode, size, release, workdir):
    server = MirrorServer(mirror_dir(), workdir / f"access-{mode}-{size}.log")
    names = [f"bench-{i}" for i in range(1, size + 1)]
    rows = []
    try:
        start_nodes(names)
        base = role_vars(release, server, workdir / f"cache-{mode}-{size}", containerd_gvisor_download_mode=mode)
        for run in FLEET_RUNS:
            variables = dict(base)
            if run == "pinned":
                variables["containerd_gvisor_checksums"] = pinned_checksums(release)
            seen = len(server.requests())
            result = converge(role_playbook(), names, workdir, f"{mode}-{size}-{run.replace(' ', '-')}", variables)
            phases = {}
            for task in result["tasks"]:
                phase = phase_of(task["task"])
                phases[phase] = round(phases.get(phase, 0) + task["seconds"], 2)
            rows.append({"mode": mode, "nodes": size, "run": run, **served(server, seen), **result, "phases": phases})
            r = rows[-1]
            log(
                f"fleet {mode:10} {size} nodes  {run:9}  {r['wall_s']:6.1f} s  "
                f"{r['tasks_on_node']:4} tasks on each node  {r['requests']:3} requests  {r['bytes']:>10} bytes"
            )
    finally:
        for name in names:
            remove_node(name)
        server.stop()
    return rows


# --- rolling rollouts --------------------------------------------------------------------------


def serial_value(text):
    """containerd_gvisor_serial as given: "100%" stays a string, "2" becomes 2."""
    text = text.strip()
    if text.endswith("%"):
        if not 0 < float(text[:-1]) <= 100:
            raise ValueError(f"serial {text}: a percentage above 0 and at most 100")
        return text
    if int(text) < 1:
        raise ValueError(f"serial {text}: at least 1")
    return int(text)


def batch_sizes(size, serial):
    """The batches ansible-playbook makes of size hosts with this serial (a percentage rounds down, at least 1)."""
    per = max(1, int(float(serial[:-1]) / 100 * size)) if isinstance(serial, str) else serial
    return [min(per, size - start) for start in range(0, size, per)]


def rollout_one(size, serial, release, workdir, rep):
    """Fresh nodes, then a first and a no-change converge in batches of serial; one row per run."""
    tag = f"{size}-{str(serial).replace('%', 'pct')}-{rep}"
    server = MirrorServer(mirror_dir(), workdir / f"access-rollout-{tag}.log")
    # Not rollout-*: a CI run on the same machine owns those names (and docker's name filter matches substrings).
    names = [f"bench-serial-{i}" for i in range(1, size + 1)]
    expected = batch_sizes(size, serial)
    rows = []
    try:
        start_nodes(names)
        variables = role_vars(release, server, workdir / f"cache-rollout-{tag}", containerd_gvisor_serial=serial)
        for run in RUNS:
            seen = len(server.requests())
            result = converge(role_playbook(), names, workdir, f"rollout-{tag}-{run.replace(' ', '-')}", variables)
            batches = result["plays"]
            seconds = [b["seconds"] for b in batches]
            row = {
                "nodes": size,
                "serial": serial,
                "run": run,
                "rep": rep,
                "batches": len(batches),
                "batch_s": seconds,
                "batch_hosts": [b["hosts"] for b in batches],
                "median_batch_s": round(med(seconds), 2),
                "outside_batches_s": round(result["wall_s"] - sum(seconds), 2),
                **served(server, seen),
                **result,
            }
            rows.append(row)
            log(
                f"rollout {size} nodes, serial {serial}  {run:9}  {row['wall_s']:6.1f} s  {len(batches)} batches: "
                + ", ".join(f"{s:.1f} s" for s in seconds)
                + f"  {row['requests']} requests  changed {row['changed']}"
            )
            if [len(b["hosts"]) for b in batches] != expected:
                log(f"note: expected batches of {expected} hosts, the callback saw {[b['hosts'] for b in batches]}")
    finally:
        for name in names:
            remove_node(name)
        server.stop()
    return rows


# --- the report ----------------------------------------------------------------------------------


def med(values):
    return statistics.median(values) if values else float("nan")


def spread(values, digits=1):
    return f"{med(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def same_or_range(values):
    values = sorted(set(values))
    low, high = (f"{v:,}" if isinstance(v, int) else f"{v:g}" for v in (values[0], values[-1]))
    return low if len(values) == 1 else f"{low}–{high}"


def pair_summary(rows):
    out = {}
    for run in RUNS:
        base, target = TARGETS[run]
        side = {name: {r["pair"]: r["wall_s"] for r in rows if r["run"] == run and r["side"] == name}
                for name in ("role", "peer", "floor")}
        both = sorted(set(side["role"]) & set(side[base]))
        out[run] = {
            **{name: [side[name][p] for p in sorted(side[name])] for name in ("role", "peer", "floor")},
            "base": base,
            "ratio_of_medians": med([side["role"][p] for p in both]) / med([side[base][p] for p in both]),
            "pair_ratios": [side["role"][p] / side[base][p] for p in both],
            "target": target,
        }
        out[run]["met"] = out[run]["ratio_of_medians"] <= target
    return out


def compare_tables(rows, summary):
    lines = [
        "| run | this role (s) | image-builder (s) | floor: ping (s) | measured against | role / that, ratio of medians "
        "| per-pair ratios | target | met |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for run, s in summary.items():
        floor = spread(s["floor"], 2) if s.get("floor") else "–"
        lines.append(
            f"| {run} | {spread(s['role'], 2)} | {spread(s['peer'], 2)} | {floor} | "
            f"{'image-builder' if s.get('base', 'peer') == 'peer' else 'the floor'} | **{s['ratio_of_medians']:.2f}x** | "
            f"{spread(s['pair_ratios'], 2)} | ≤ {s['target']}x | {'yes' if s['met'] else '**no**'} |"
        )
    lines += [
        "",
        "Round trips and mirror traffic per run (one node; a range when the pairs differ):",
        "",
        "| run | side | tasks run | tasks that reached the node | module calls on the node | mirror requests "
        "| bytes served | tasks changed |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in RUNS:
        for side, title in (("role", "this role"), ("peer", "image-builder")):
            rs = [r for r in rows if r["run"] == run and r["side"] == side]
            lines.append(
                f"| {run} | {title} | {same_or_range([r['tasks_run'] for r in rs])} | "
                f"{same_or_range([r['tasks_on_node'] for r in rs])} | {same_or_range([r['node_calls'] for r in rs])} | "
                f"{same_or_range([r['requests'] for r in rs])} | {same_or_range([r['bytes'] for r in rs])} | "
                f"{same_or_range([r['changed'] for r in rs])} |"
            )
    return "\n".join(lines)


def reach_label(values):
    """How a task met the node over a row's runs: values are tasks on the node, None (skipped) or "absent"."""
    if any(isinstance(v, (int, float)) and v > 0 for v in values):
        return "yes"
    if any(v == 0 for v in values):
        return "no"
    return "skipped" if any(v is None for v in values) else "–"


def task_table(rows, side, threshold=0.1):
    """Median seconds per task (summed over same-named tasks of a run) for first and no-change runs."""
    per_run = {}
    order = []
    for run in RUNS:
        runs = [r for r in rows if r["side"] == side and r["run"] == run]
        sums = []
        for r in runs:
            seconds, reached = {}, {}
            for t in r["tasks"]:
                seconds[t["task"]] = seconds.get(t["task"], 0) + t["seconds"]
                # None: skipped on every host; 0: ran, on the control node only.
                ran = t["hosts"] > t["skipped"]
                if ran or t["task"] not in reached:
                    reached[t["task"]] = (reached.get(t["task"]) or 0) + t["on_node"] if ran else None
                if t["task"] not in order:
                    order.append(t["task"])
            seconds[OVERHEAD] = r["wall_s"] - r["task_seconds"]
            sums.append((seconds, reached))
        per_run[run] = sums
    lines = ["| task | reached the node (first / no change) | first (s) | no change (s) |", "|---|---|---:|---:|"]
    small = {run: [0.0] * len(per_run[run]) for run in RUNS}
    small_count = 0
    for name in order:
        meds = {run: med([s.get(name, 0) for s, _ignored in per_run[run]]) for run in RUNS}
        if max(meds.values()) < threshold:
            small_count += 1
            for run in RUNS:
                for i, (s, _ignored) in enumerate(per_run[run]):
                    small[run][i] += s.get(name, 0)
            continue
        reach = " / ".join(reach_label([r.get(name, "absent") for _ignored, r in per_run[run]]) for run in RUNS)
        lines.append(f"| {name.split(' : ', 1)[-1]} | {reach} | {meds['first']:.2f} | {meds['no change']:.2f} |")
    if small_count:
        lines.append(
            f"| {small_count} other tasks (run or skipped), under {threshold} s each | | {med(small['first']):.2f} | "
            f"{med(small['no change']):.2f} |"
        )
    lines.append(
        "| ansible-playbook start-up, parsing and exit (wall time not in any task) | | "
        f"{med([s[OVERHEAD] for s, _ignored in per_run['first']]):.2f} | "
        f"{med([s[OVERHEAD] for s, _ignored in per_run['no change']]):.2f} |"
    )
    walls = {run: med([r["wall_s"] for r in rows if r["side"] == side and r["run"] == run]) for run in RUNS}
    lines.append(f"| **whole run (median wall time)** | | **{walls['first']:.2f}** | **{walls['no change']:.2f}** |")
    return "\n".join(lines)


def fleet_table(rows):
    lines = [
        "| mode | nodes | run | wall time (s) | tasks that reached each node | requests | bytes served |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['nodes']} | {r['run']} | {r['wall_s']:.1f} | {r['tasks_on_node']:g} | "
            f"{r['requests']} | {r['bytes']:,} |"
        )
    return "\n".join(lines)


def fleet_phases(rows):
    phases = [p for p, _ignored in PHASES] + ["planning and other"]
    lines = ["| mode | nodes | run | " + " | ".join(phases) + " |", "|---|---:|---|" + "---:|" * len(phases)]
    for r in rows:
        if r["run"] == "pinned":
            continue
        lines.append(
            f"| {r['mode']} | {r['nodes']} | {r['run']} | "
            + " | ".join(f"{r['phases'].get(p, 0):.1f}" for p in phases)
            + " |"
        )
    return "\n".join(lines)


def rollout_groups(rows):
    """Rollout rows by (nodes, serial, run), in the order measured; each group holds one row per repetition."""
    groups = {}
    for r in rows:
        groups.setdefault((r["nodes"], str(r["serial"]), r["run"]), []).append(r)
    return groups


def batch_medians(rows):
    """Each batch's median seconds over the repetitions (batch 1, batch 2, ...)."""
    count = max(len(r["batch_s"]) for r in rows)
    return [med([r["batch_s"][i] for r in rows if i < len(r["batch_s"])]) for i in range(count)]


def rollout_table(rows):
    lines = [
        "| nodes | serial | run | batches | seconds per batch (median) | each batch (s) | outside the batches (s) "
        "| total (s) | mirror requests |",
        "|---:|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    for (nodes, serial, run), group in rollout_groups(rows).items():
        per_batch = med([s for r in group for s in r["batch_s"]])
        each = ", ".join(f"{s:.1f}" for s in batch_medians(group))
        walls = [r["wall_s"] for r in group]
        total = spread(walls) if len(walls) > 1 else f"{walls[0]:.1f}"
        outside = med([r["outside_batches_s"] for r in group])
        lines.append(
            f"| {nodes} | {serial} | {run} | {same_or_range([r['batches'] for r in group])} | {per_batch:.1f} | "
            f"{each} | {outside:.1f} | **{total}** | {same_or_range([r['requests'] for r in group])} |"
        )
    return "\n".join(lines)


def plot_pairs(ax, summary):
    width = 0.36
    for offset, side, title, color in (
        (-width / 2, "role", "this role", "C0"),
        (width / 2, "peer", "image-builder", "C1"),
    ):
        for i, run in enumerate(RUNS):
            values = summary[run][side]
            ax.bar(
                i + offset,
                med(values),
                width,
                color=color,
                alpha=0.75,
                label=title if i == 0 else None,
                yerr=[[med(values) - min(values)], [max(values) - med(values)]],
                capsize=4,
            )
            ax.plot([i + offset] * len(values), values, "k.", markersize=4)
    ax.set_xticks(
        range(len(RUNS)),
        [f"{run}\n{summary[run]['ratio_of_medians']:.2f}x {'image-builder' if summary[run].get('base', 'peer') == 'peer' else 'the floor'} "
         f"(target ≤ {summary[run]['target']}x)" for run in RUNS],
    )
    ax.set(
        title=f"One node, {len(summary['first']['role'])} pairs: median, min–max",
        ylabel="ansible-playbook wall time (s)",
    )
    ax.grid(alpha=0.3, axis="y")
    ax.legend()


def plot_fleet(left, right, fleet):
    for mode in sorted({r["mode"] for r in fleet}):
        for run, style in (("first", "-o"), ("no change", "--s")):
            pts = [(r["nodes"], r["wall_s"], r["bytes"]) for r in fleet if r["mode"] == mode and r["run"] == run]
            if not pts:
                continue
            left.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{mode}, {run}")
            if run == "first":
                right.plot([p[0] for p in pts], [p[2] / 1e6 for p in pts], style, label=f"{mode}, first converge")
    left.set(title="This role: converge wall time by fleet size", xlabel="nodes", ylabel="seconds")
    right.set(title="Bytes served by the mirror, first converge", xlabel="nodes", ylabel="MB")
    right.set_ylim(bottom=0)
    left.set_ylim(bottom=0)
    for a in (left, right):
        a.grid(alpha=0.3)
        a.legend()
        a.set_xticks(sorted({r["nodes"] for r in fleet}))


def plot_rollout(ax, rows):
    """One stacked bar per (nodes, serial, run): its batches (median over repetitions), then the rest of the run."""
    groups = rollout_groups(rows)
    most = 0
    for x, group in enumerate(groups.values()):
        bottom = 0.0
        batches = batch_medians(group)
        most = max(most, len(batches))
        for i, seconds in enumerate(batches):
            ax.bar(x, seconds, 0.6, bottom=bottom, color=f"C{i % 10}", alpha=0.8, edgecolor="white")
            ax.text(x, bottom + seconds / 2, f"{seconds:.1f}", ha="center", va="center", fontsize=7)
            bottom += seconds
        ax.bar(x, med([r["outside_batches_s"] for r in group]), 0.6, bottom=bottom, color="0.75", edgecolor="white")
    handles = [plt_patch(f"C{i % 10}", f"batch {i + 1}") for i in range(min(most, 8))]
    handles.append(plt_patch("0.75", "outside the batches"))
    ax.legend(handles=handles, fontsize=8)
    ax.set_xticks(
        range(len(groups)),
        [f"{nodes} nodes\nserial {serial}\n{run}" for nodes, serial, run in groups],
        fontsize=8,
    )
    ax.set(title="Rolling rollouts: seconds per batch", ylabel="ansible-playbook wall time (s)")
    ax.grid(alpha=0.3, axis="y")


def plt_patch(color, label):
    from matplotlib.patches import Patch

    return Patch(color=color, alpha=0.8, label=label)


def plot(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs, fleet = data.get("pairs"), data.get("fleet")
    rollout = (data.get("rollout") or {}).get("rows")
    panels = (1 if pairs else 0) + (2 if fleet else 0) + (1 if rollout else 0)
    if not panels:
        return
    rows, cols = (2, 2) if panels == 4 else (1, panels)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    axes = list(axes.flat)
    if pairs:
        plot_pairs(axes.pop(0), data["summary"])
    if fleet:
        plot_fleet(axes.pop(0), axes.pop(0), fleet)
    if rollout:
        plot_rollout(axes.pop(0), rollout)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine():
    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    memory = ""
    try:
        kb = int(
            next(
                line.split()[1]
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            )
        )
        memory = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    ansible_version = subprocess.run([str(ANSIBLE_PLAYBOOK), "--version"], capture_output=True, text=True, check=False).stdout
    core = re.search(r"core ([\w.]+)", ansible_version)
    docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, check=False)
    return {
        "nproc": subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip(),
        "cpu": cpu,
        "memory": memory,
        "kernel": platform.release(),
        "ansible_core": core.group(1) if core else "",
        "python": platform.python_version(),
        "docker": docker.stdout.strip(),
    }


def options_of(meta):
    """The options the peer and fleet rows were measured with: kept in meta since the rollout rows came, read
    back from the recorded command line for a docs/bench.json written before."""
    if "options" in meta:
        return meta["options"]
    parser = option_parser()
    argv = shlex.split(meta.get("command", ""))[1:]
    try:
        known = parser.parse_known_args(argv)[0]
    except SystemExit:
        known = parser.parse_known_args([])[0]
    return vars(known)


def peer_and_fleet_report(data):
    """The sections of the peer comparison and the fleet rows, as lines of markdown."""
    meta, pairs, summary = data["meta"], data["pairs"], data["summary"]
    versions, fleet = data.get("runsc_versions", {}), data.get("fleet") or []
    opts = options_of(meta)
    elapsed = meta.get("elapsed_s", 0)
    m, peer, repo = meta["machine"], meta["peer"], meta["repository"]
    n = len(summary["first"]["role"])
    installed = "; ".join(
        f"{'this role' if side == 'role' else 'image-builder'}: `{', '.join(v)}`" for side, v in versions.items()
    )
    loads = [r["load_before"] for r in pairs + fleet]
    header = (
        f"Generated by `bench/bench.py`; do not edit by hand. Run {meta['date']} on {m['nproc']} cores "
        f"({m['cpu']}, {m['memory']}, kernel {m['kernel']}), Docker {m['docker']}, ansible-core {m['ansible_core']}, "
        f"Python {m['python']}; the whole run took {elapsed:.0f} s. The machine's 1-minute load average before each "
        f"run was {spread(loads, 1)} (median, min–max): what is above the bench's own share is other work on the "
        "machine, which the pairing spreads over both sides."
    )
    method = (
        f"{n} pair{'s' if n != 1 else ''}. In each pair two fresh node containers start from the same image; one "
        "gets this role (`playbooks/gvisor.yml` with its default settings: controller download mode with a cold "
        "download cache, smoke test on change), the other image-builder's tasks; then each gets a first converge "
        "(gVisor not installed) and a no-change converge (the same run again). Which side runs first alternates "
        f"from pair to pair{', after a warm-up pair that is not recorded' if opts['warmup'] else ''}. Times are the "
        "wall time of the whole `ansible-playbook` process. Both sides: `ANSIBLE_PIPELINING=1`, this repository's "
        "ansible.cfg, the same inventory style (`<node> ansible_connection=community.docker.docker`), "
        "`become: true`."
    )
    peer_side = (
        "image-builder's side is a temporary playbook holding its `get_url` loop that downloads runsc and "
        "containerd-shim-runsc-v1 with their published `.sha512`, and its `runsc install` command task, taken "
        f"unchanged except for the bucket URL (`{BUCKET}` → the mirror); it gathers facts as its node.yml play does "
        f"(`gather_facts: {str(peer['gather_facts']).lower()}`) and gets `sysusr_prefix: /usr/local`, "
        f'`containerd_gvisor_runtime: true`, `containerd_gvisor_version: "{meta["release"]}"`. It does less: '
        "`runsc install` registers runsc with Docker (`/etc/docker/daemon.json`), not containerd: image-builder "
        "registers its `gvisor` handler in its containerd config.toml template, written (and containerd restarted) "
        "earlier in the same role for all of containerd, which is not part of this measurement. This role's first "
        "converge also merges containerd's config.toml, writes runsc.toml, restarts containerd and checks it, and "
        "starts a gVisor sandbox."
    )
    text = [
        header,
        "",
        f"- Command: `{meta['command']}`",
        f"- This repository: commit `{repo['commit']}`{' with uncommitted changes' if repo['dirty'] else ''}; "
        f"this role's runs used a copy of the collection taken at the start (its files' sha256 "
        f"`{meta['role_files_sha256'][:16]}…`)"
        + (
            "; the working tree changed during the run, which did not affect them."
            if meta["working_tree_changed"]
            else "."
        )
        + f" Node image `{IMAGE}`, ID `{meta['image_id'].split(':')[-1][:12]}`"
        + (" (the tag moved during the run; the runs used this ID)." if meta["image_tag_moved"] else "."),
        f"- Peer: kubernetes-sigs/image-builder commit `{peer['commit']}` ({peer['commit_date']}), the gVisor "
        f"tasks of `{PEER_TASKS}` (sha256 `{peer['tasks_file_sha256'][:16]}…`), read at run time from the "
        f"{peer['source']}.",
        f"- Release `{meta['release']}` ({', '.join(LOOSE)}: loose files, as the peer expects), "
        f"a loopback mirror (tests/mirror/server.py over the test mirror); runsc installed: {installed}.",
        "",
        "## This role against image-builder",
        "",
        method,
        "",
        peer_side,
        "",
        "Targets: the first converge at most 2x image-builder's; the no-change converge at most 1.3x the floor, a "
        "playbook with a single `ansible.builtin.ping` run on the role's node right after its no-change converge "
        "(ansible-playbook's start-up plus one round trip, which a run that reads the node cannot beat).",
        "",
        compare_tables(pairs, summary),
        "",
        '"Tasks that reached the node": task results that were not skipped, not run on the control node '
        "(delegated to localhost) and not control-node-only actions (set_fact, assert, include_tasks, ...); a loop "
        "counts once, its items as module calls. From bench/callback_plugins/bench_timer.py.",
        "",
        "### Where this role's time goes (median seconds per task over the pairs)",
        "",
        "Task time runs from a task's start until its last host reported, so it includes the control node's work "
        "for the task (templating, and modules it runs there).",
        "",
        task_table(pairs, "role"),
        "",
        "### Where image-builder's time goes",
        "",
        task_table(pairs, "peer", threshold=0.0),
        "",
    ]
    if fleet:
        fleet_reps = max(r.get("rep", 1) for r in fleet)
        reps = f"{fleet_reps} run{'s' if fleet_reps > 1 else ''}"
        text += [
            "## This role by fleet size and download mode",
            "",
            f"Release `{meta['release']}`, {reps} of each. Runs: **first** converge; **no change**, the same converge "
            "again; **pinned**, again with `containerd_gvisor_checksums` set. Requests and bytes are what the "
            "mirror's access log shows; a dated release already installed is recorded on the node, so neither "
            "no-change run asks the mirror anything.",
            "",
            fleet_table(fleet),
            "",
            "### Where the time goes (seconds of task wall time)",
            "",
            fleet_phases(fleet),
            "",
        ]
    if meta.get("fleet_skipped"):
        text += [
            f"Fleet runs skipped to stay within `--budget {opts['budget']:g}` s: {'; '.join(meta['fleet_skipped'])}.",
            "",
        ]
    return text


def rollout_report(data):
    """The rolling rollouts section, as lines of markdown."""
    rollout = data["rollout"]
    meta, rows = rollout["meta"], rollout["rows"]
    main_meta = data.get("meta") or {}
    if main_meta.get("date") == meta["date"] and main_meta.get("command") == meta["command"]:
        source = f"Measured in the same run as the sections above (release `{meta['release']}`)."
    else:
        m, repo = meta["machine"], meta["repository"]
        source = (
            f"Measured{' on their own' if main_meta else ''} with `{meta['command']}`, {meta['date']}, on "
            f"{m['nproc']} cores ({m['cpu']}, {m['memory']}, kernel {m['kernel']}), Docker {m['docker']}, "
            f"ansible-core {m['ansible_core']}, Python {m['python']}; it took {meta['elapsed_s']:.0f} s. This "
            f"repository: commit `{repo['commit']}`{' with uncommitted changes' if repo['dirty'] else ''}; the runs "
            "used a copy of the collection taken at the start (its files' sha256 "
            f"`{meta['role_files_sha256'][:16]}…`)"
            f", node image `{meta['image']}`, ID `{meta['image_id'].split(':')[-1][:12]}`, release "
            f"`{meta['release']}`."
            + (
                f" The sections above come from the run of {main_meta['date']}, kept from docs/bench.json."
                if main_meta
                else ""
            )
        )
    loads = [r["load_before"] for r in rows]
    reps = len({r["rep"] for r in rows})
    text = [
        "## Rolling rollouts",
        "",
        source,
        "",
        "`playbooks/gvisor.yml` over fresh node containers with `-e containerd_gvisor_serial=N` "
        "(`containerd_gvisor_max_fail_percentage` left at its default, 0) and otherwise the role's default "
        "settings (controller download mode, smoke test on change), against the bench's own loopback mirror. "
        "ansible-playbook runs the play once per batch, one batch after the other. Runs: **first** converge "
        "(gVisor not installed; the download cache is cold when the first batch starts, and kept for the later "
        "batches), **no change**, the same converge again. A batch's time runs from its play's start to the next "
        "play's start (or the end of the run), from bench/callback_plugins/bench_timer.py; the total is the wall "
        "time of the whole `ansible-playbook` process, which adds its start-up, parsing and exit (outside the "
        f"batches). {reps} repetition{'s' if reps != 1 else ''} of each; the machine's 1-minute load average "
        f"before each run was {spread(loads, 1)} (median, min–max).",
        "",
        rollout_table(rows),
        "",
    ]
    if meta.get("skipped"):
        text += [
            f"Rollouts skipped to stay within `--budget {meta['options']['budget']:g}` s: "
            f"{'; '.join(meta['skipped'])}.",
            "",
        ]
    return text


def write_report(data):
    sections = [
        part
        for part, present in (
            ("this role against image-builder's gVisor tasks", data.get("pairs")),
            ("converge cost by fleet size", data.get("fleet")),
            ("rolling rollouts", (data.get("rollout") or {}).get("rows")),
            ("gVisor's metric server on and off", (data.get("metrics") or {}).get("rows")),
        )
        if present
    ]
    title = ", ".join(sections[:-1]) + (" and " if len(sections) > 1 else "") + sections[-1]
    text = [f"# Benchmark: {title}", ""]
    if data.get("pairs"):
        text += peer_and_fleet_report(data)
    else:
        text += ["Generated by `bench/bench.py`; do not edit by hand.", ""]
    if (data.get("rollout") or {}).get("rows"):
        text += rollout_report(data)
    if (data.get("metrics") or {}).get("rows"):
        text += metrics_report(data)
    text += [f"![{title}](bench.png)", ""]
    (DOCS / "bench.md").write_text("\n".join(text))


def option_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--peer", metavar="DIR", help="an image-builder checkout (its root, or images/capi)")
    source.add_argument("--peer-git-dir", metavar="GIT_DIR", help="an image-builder git directory (bare or .git)")
    parser.add_argument("--peer-rev", default="HEAD", help="the revision of --peer-git-dir to read (default HEAD)")
    parser.add_argument("--pairs", type=int, default=5, help="role/peer pairs (default 5)")
    parser.add_argument(
        "--release", default="20240729", help="dated gVisor release with loose files on the mirror (default 20240729)"
    )
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="no unrecorded warm-up pair")
    parser.add_argument("--metrics-reps", type=int, default=5,
                        help="no-change converges with metrics off and on, each (default 5, 0: none)")
    parser.add_argument("--fleet-sizes", default="1,4", help="fleet sizes for this role alone (default 1,4)")
    parser.add_argument("--fleet-modes", default="controller,node")
    parser.add_argument("--fleet-reps", type=int, default=1, help="repetitions of each fleet size (default 1)")
    parser.add_argument("--no-fleet", action="store_true", help="no fleet rows")
    parser.add_argument("--rollout-sizes", default="4", help="fleet sizes of the rolling rollouts (default 4)")
    parser.add_argument(
        "--rollout-serials",
        default="2",
        help="containerd_gvisor_serial values of the rolling rollouts, e.g. 1,2,100%% (default 2)",
    )
    parser.add_argument("--rollout-reps", type=int, default=1, help="repetitions of each rollout (default 1)")
    rollout = parser.add_mutually_exclusive_group()
    rollout.add_argument("--no-rollout", action="store_true", help="no rolling rollouts")
    rollout.add_argument(
        "--only-rollout",
        action="store_true",
        help="only the rolling rollouts (no peer needed): they replace the rollout rows of docs/bench.json, whose "
        "peer and fleet rows are kept, and docs/bench.md and bench.png are written again from it",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=840,
        help="seconds the run should stay under: fleet and rollout groups that would pass it are skipped "
        "(default 840, 0: none)",
    )
    return parser


def previous_data():
    """docs/bench.json as the last run left it, or {} when there is none (or it cannot be read)."""
    try:
        data = json.loads((DOCS / "bench.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def main():
    parser = option_parser()
    args = parser.parse_args()
    if not args.only_rollout and not (args.peer or args.peer_git_dir):
        parser.error("one of the arguments --peer --peer-git-dir is required (unless --only-rollout)")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    try:
        rollout_sizes = [int(s) for s in args.rollout_sizes.split(",") if s.strip()]
        rollout_serials = [serial_value(s) for s in args.rollout_serials.split(",") if s.strip()]
    except ValueError as error:
        parser.error(f"--rollout-sizes/--rollout-serials: {error}")
    if args.only_rollout and not (rollout_sizes and rollout_serials and args.rollout_reps > 0):
        parser.error("--only-rollout needs at least one rollout size, serial and repetition")
    if any(size < 1 for size in rollout_sizes):
        parser.error("--rollout-sizes must be at least 1")
    release = release_dir(args.release, ARCH)
    missing = [name for file in LOOSE for name in (file, file + ".sha512") if not (release / name).exists()]
    if args.only_rollout and not release.is_dir():
        raise SystemExit(f"bench: the mirror has no release {args.release} ({release}); run tests/mirror/build")
    if missing and not args.only_rollout:
        raise SystemExit(
            f"bench: the mirror's release {args.release} ({release}) lacks {', '.join(missing)}; "
            "run tests/mirror/build"
        )
    if (release / "gvisor.tar.bz2").exists() and not args.only_rollout:
        log(
            f"note: release {args.release} also serves gvisor.tar.bz2, which this role prefers: the sides fetch "
            "different files"
        )

    peer = None if args.only_rollout else Peer(args.peer, args.peer_git_dir, args.peer_rev)
    started = time.monotonic()
    options = {
        key: value
        for key, value in vars(args).items()
        if key not in ("peer", "peer_git_dir", "peer_rev")  # the peer's source is in meta["peer"]
    }
    common = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": os.environ.get("BENCH_COMMAND") or shlex.join([sys.argv[0]] + sys.argv[1:]),
        "machine": machine(),
        "release": args.release,
        "image": IMAGE,
        "pipelining": True,
        "options": options,
        "repository": {
            "commit": git("rev-parse", "HEAD", cwd=REPO),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no", cwd=REPO)),
        },
    }
    if peer:
        log(
            f"peer: image-builder {peer.commit[:12]} from the {peer.source}; {args.pairs} pairs, "
            f"release {args.release}"
        )
    workdir = Path(tempfile.mkdtemp(prefix="containerd-gvisor-bench."))
    CURRENT["root"] = snapshot_collection(workdir / "collection")
    CURRENT["image"] = image_id(IMAGE) or IMAGE
    common["role_files_sha256"] = fingerprint(CURRENT["root"])
    common["image_id"] = CURRENT["image"]
    pairs, summary, versions, fleet, rollout, metrics = [], {}, {}, [], [], []
    fleet_skipped, rollout_skipped = [], []
    try:
        # A one-node group's time (first converge, no change, start-up), guessed from the pairs when there are some.
        one = 35.0
        if peer:
            pairs, versions = compare(peer, args.pairs, args.release, args.warmup, workdir)
            summary = pair_summary(pairs)
            for run, s in summary.items():
                log(
                    f"{run}: role {med(s['role']):.2f} s, peer {med(s['peer']):.2f} s, "
                    f"floor {med(s['floor']) if s['floor'] else float('nan'):.2f} s, ratio to the {s['base']} "
                    f"{s['ratio_of_medians']:.2f}x "
                    f"(target ≤ {s['target']}x: {'met' if s['met'] else 'NOT met'})"
                )
            one = med(summary["first"]["role"]) + 2 * med(summary["no change"]["role"]) + 5
        if peer and args.metrics_reps > 0:
            metrics = metrics_pairs(args.metrics_reps, workdir)
            log(f"metrics: on / off {metrics_summary(metrics)['ratio_of_medians']:.2f}x")
        if peer and not args.no_fleet:
            # The first converge grows about half as fast as the fleet.
            for size in [int(s) for s in args.fleet_sizes.split(",") if s]:
                for mode in args.fleet_modes.split(","):
                    for rep in range(args.fleet_reps):
                        guess = one * (1 + 0.5 * (size - 1))
                        if args.budget and time.monotonic() - started + guess > args.budget:
                            log(f"fleet {mode} {size} nodes: skipped, about {guess:.0f} s more would pass --budget")
                            fleet_skipped.append(f"{mode}, {size} nodes")
                            continue
                        fleet += [dict(r, rep=rep + 1) for r in fleet_one(mode, size, args.release, workdir)]
        if not args.no_rollout:
            for size in rollout_sizes:
                for serial in rollout_serials:
                    for rep in range(1, args.rollout_reps + 1):
                        batches = batch_sizes(size, serial)
                        # Batches run one after the other, each growing with its nodes as a fleet does.
                        guess = sum(one * (1 + 0.5 * (b - 1)) for b in batches)
                        if args.budget and time.monotonic() - started + guess > args.budget:
                            log(
                                f"rollout {size} nodes, serial {serial}: skipped, about {guess:.0f} s more "
                                "would pass --budget"
                            )
                            rollout_skipped.append(f"{size} nodes, serial {serial}, repetition {rep}")
                            continue
                        rollout += rollout_one(size, serial, args.release, workdir, rep)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    common["elapsed_s"] = round(elapsed, 1)
    common["working_tree_changed"] = fingerprint(REPO) != common["role_files_sha256"]
    common["image_tag_moved"] = image_id(IMAGE) != common["image_id"]
    rollout_section = {"meta": dict(common, skipped=rollout_skipped), "rows": rollout}
    if args.only_rollout:
        # Keep what the last full run measured (its meta, the pairs and the fleet); replace only the rollouts.
        data = previous_data()
        if data.get("pairs"):
            log(f"kept the peer comparison and fleet rows of {data['meta']['date']} from docs/bench.json")
        else:
            log("docs/bench.json holds no peer comparison: the report will have the rollouts only")
        data["rollout"] = rollout_section
    else:
        meta = dict(common, peer=peer.meta(), fleet_skipped=fleet_skipped)
        data = {
            "meta": meta,
            "summary": {run: dict(s.items()) for run, s in summary.items()},
            "runsc_versions": versions,
            "pairs": pairs,
            "fleet": fleet,
        }
        if not args.no_rollout:
            data["rollout"] = rollout_section
        if metrics:
            data["metrics"] = {"summary": metrics_summary(metrics), "rows": metrics}
    DOCS.mkdir(exist_ok=True)
    (DOCS / "bench.json").write_text(json.dumps(data, indent=1) + "\n")
    plot(data, DOCS / "bench.png")
    write_report(data)
    log(f"wrote docs/bench.md, docs/bench.json, docs/bench.png in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
