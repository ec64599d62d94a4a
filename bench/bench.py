"""Benchmark: what a converge costs on 1, 4 and 8 nodes, per download mode.

For each download mode and fleet size it starts that many node containers, runs
playbooks/gvisor.yml three times against the local test mirror and records:
  - first:     a first converge (gVisor not installed yet),
  - no change: a second converge with the same inputs,
  - pinned:    a no-change converge with the release's checksums pinned,
each run's wall time, the requests and bytes the mirror served (from its own access log),
and where the time went (task wall times, grouped). It writes docs/bench.md, docs/bench.json
and docs/bench.png. A benchmark, not a test: it asserts nothing.

    bench/run [--sizes 1,4,8] [--modes controller,node]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from gvisor_mirror import MirrorServer  # noqa: E402
from gvisor_node import ANSIBLE_PLAYBOOK, PLAYBOOK, remove_node, start_node  # noqa: E402
from gvisor_testinfra import mirror_dir, release_dir  # noqa: E402

IMAGE = "containerd-gvisor-node:bookworm"
DOCS = REPO / "docs"
RUNS = ("first", "no change", "pinned")
# Task name fragments -> where the time goes. Tasks that match none are "checks and other".
PHASES = [
    # The role reads the node in one module call instead of gathering facts.
    ("reading the node", ("Read the node", "Gather")),
    ("mirror checksums", ("checksum", "Look for the release")),
    ("download", ("Download", "Fetch", "Copy the release", "staging")),
    ("extract and install", ("Install runsc", "Compare the installed")),
    ("containerd restart", ("Restart containerd", "Wait for containerd", "registered", "plugins",
                            "effective configuration")),
]


def phase_of(task):
    for phase, fragments in PHASES:
        if any(fragment in task for fragment in fragments):
            return phase
    return "checks and other"


def pinned_checksums(arch):
    rel = release_dir("latest", arch)
    return {p.name: hashlib.sha512(p.read_bytes()).hexdigest() for p in rel.glob("gvisor.tar.bz2")}


def converge(nodes, variables, workdir, label):
    inventory = workdir / "inventory.ini"
    inventory.write_text("".join(f"{n} ansible_connection=community.docker.docker\n" for n in nodes))
    timings = workdir / f"timings-{label}.json"
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_PIPELINING="1",
               ANSIBLE_CALLBACK_PLUGINS=str(REPO / "bench" / "callback_plugins"),
               ANSIBLE_CALLBACKS_ENABLED="bench_timer", BENCH_TIMINGS=str(timings), ANSIBLE_NOCOLOR="1")
    start = time.monotonic()
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(inventory), "-f", str(max(5, len(nodes))),
                           "-e", json.dumps(variables), str(PLAYBOOK)],
                          capture_output=True, text=True, env=env, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"converge {label} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    phases = {}
    for task in json.loads(timings.read_text()):
        phase = phase_of(task["task"])
        phases[phase] = round(phases.get(phase, 0) + task["seconds"], 2)
    return wall, phases


def bench_one(mode, size, arch):
    workdir = Path(tempfile.mkdtemp(prefix="containerd-gvisor-bench."))
    server = MirrorServer(mirror_dir(), workdir / "access.log")
    nodes = [f"bench-{i}" for i in range(1, size + 1)]
    rows = []
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda name: start_node(name, IMAGE), nodes))
        # A cache of its own, so the first converge starts cold as on a new control node.
        base = {"containerd_gvisor_runtime": True, "containerd_gvisor_version": "latest",
                "containerd_gvisor_mirror_url": server.url, "containerd_gvisor_download_mode": mode,
                "containerd_gvisor_download_cache_dir": str(workdir / "cache")}
        for run in RUNS:
            variables = dict(base)
            if run == "pinned":
                variables["containerd_gvisor_checksums"] = pinned_checksums(arch)
            seen = len(server.requests())
            wall, phases = converge(nodes, variables, workdir, run.replace(" ", "-"))
            served = server.requests()[seen:]
            rows.append({"mode": mode, "nodes": size, "run": run, "wall_s": round(wall, 1),
                         "requests": len(served), "bytes": sum(r["bytes"] for r in served),
                         "sha512_requests": sum(1 for r in served if r["path"].endswith(".sha512")),
                         "phases": phases})
            print(f"bench: {mode:10} {size} nodes  {run:9}  {wall:6.1f} s  {len(served):3} requests  "
                  f"{rows[-1]['bytes']:>10} bytes", flush=True)
    finally:
        for name in nodes:
            remove_node(name)
        server.stop()
    return rows


def write_table(rows):
    lines = ["| mode | nodes | run | wall time (s) | requests | bytes served |", "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['nodes']} | {r['run']} | {r['wall_s']} | {r['requests']} | {r['bytes']:,} |")
    return "\n".join(lines)


def write_phases(rows):
    phases = [p for p, _ in PHASES] + ["checks and other"]
    lines = ["| mode | nodes | run | " + " | ".join(phases) + " |", "|---|---:|---|" + "---:|" * len(phases)]
    rows = [r for r in rows if r["run"] != "pinned"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['nodes']} | {r['run']} | "
                     + " | ".join(f"{r['phases'].get(p, 0):.1f}" for p in phases) + " |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode in sorted({r["mode"] for r in rows}):
        for run, style in (("first", "-o"), ("no change", "--s")):
            pts = [(r["nodes"], r["wall_s"], r["bytes"]) for r in rows if r["mode"] == mode and r["run"] == run]
            if not pts:
                continue
            left.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{mode}, {run}")
            if run == "first":
                right.plot([p[0] for p in pts], [p[2] / 1e6 for p in pts], style, label=f"{mode}, first converge")
    left.set(title="Converge wall time", xlabel="nodes", ylabel="seconds")
    right.set(title="Bytes served by the mirror", xlabel="nodes", ylabel="MB")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_xticks(sorted({r["nodes"] for r in rows}))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4,8")
    parser.add_argument("--modes", default="controller,node")
    args = parser.parse_args()
    arch = os.uname().machine
    started = time.monotonic()
    rows = []
    for mode in args.modes.split(","):
        for size in [int(s) for s in args.sizes.split(",")]:
            rows += bench_one(mode, size, arch)
    DOCS.mkdir(exist_ok=True)
    (DOCS / "bench.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, DOCS / "bench.png")
    cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    (DOCS / "bench.md").write_text(
        "# Benchmark: converge cost by fleet size and download mode\n\n"
        f"Made by `bench/run` on {cpu} cores against the local test mirror (release `latest`, the "
        "9 MB archive), node containers from `containerd-gvisor-node:bookworm`, "
        f"in {time.monotonic() - started:.0f} s.\n\n"
        "Runs: **first** converge; **no change**, the same converge again; **pinned**, again with "
        "`containerd_gvisor_checksums` set. Requests and bytes are what the mirror's access log shows.\n\n"
        + write_table(rows) + "\n\n## Where the time goes (seconds of task wall time)\n\n" + write_phases(rows)
        + "\n\n![converge wall time and bytes served](bench.png)\n")
    print(f"bench: wrote docs/bench.md, docs/bench.json, docs/bench.png in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
