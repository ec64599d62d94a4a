"""A node container to run the role against, and ways to read it.

The role runs with ansible-playbook (playbooks/gvisor.yml over the community.docker.docker
connection, results read from the ansible.posix.json callback); the node is read with `docker exec`.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from gvisor_testinfra import REPO

ARCH = platform.machine()
PLAYBOOK = REPO / "playbooks" / "gvisor.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
CONFIG = "/etc/containerd/config.toml"
RUNSC_TOML = "/etc/containerd/runsc.toml"
BIN_DIR = "/usr/local/bin"
STATE_DIR = "/var/lib/containerd-gvisor"
# The task that changes the node: its result holds the sandboxes started ("smoke") and the services restarted.
CHANGE_TASK = "Install the release, write the configuration, restart containerd and start gVisor sandboxes"

# Everything a run may change, read in one `docker exec`: files by sha512, staging directories a run
# left, and containerd's main process (a restart changes MainPID and ActiveEnterTimestamp).
SNAPSHOT = r"""
import glob, hashlib, json, os, subprocess, sys
files = {}
for top in sys.argv[1:]:
    for root, dirs, names in os.walk(top):
        for name in dirs:
            files[os.path.join(root, name) + "/"] = "directory"
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                files[path] = hashlib.sha512(handle.read()).hexdigest()
show = subprocess.run(["systemctl", "show", "containerd", "-p", "MainPID", "-p", "ActiveEnterTimestamp",
                       "-p", "ActiveState"], capture_output=True, text=True).stdout
print(json.dumps({"files": files, "staging": sorted(glob.glob("/var/lib/containerd-gvisor/staging/run-*")),
                  "containerd": dict(line.split("=", 1) for line in show.splitlines() if "=" in line)}))
"""


# What makes a node whole after any run, failed or not, read in one `docker exec`: containerd runs and its CRI
# plugin loaded; no change is left half done (no journal); the installed files are the ones the record names;
# and, with gVisor installed, a sandbox starts with each recorded handler's runsc.toml flags.
WHOLE = r"""
import hashlib, json, os, subprocess, sys, tomllib
bin_dir, state_dir = sys.argv[1:3]
problems = []
if subprocess.run(["systemctl", "is-active", "--quiet", "containerd"]).returncode != 0:
    problems.append("containerd is not running")
else:
    cri = [l for l in subprocess.run(["ctr", "plugins", "ls"], capture_output=True, text=True).stdout.splitlines()
           if " cri " in f" {l} "]
    if not cri or any(l.split()[-1] != "ok" for l in cri):
        problems.append(f"containerd's CRI plugin did not load: {cri}")
if os.path.exists(os.path.join(state_dir, "transaction")):
    problems.append("a change was left half done (its journal is still there)")
try:
    record = json.load(open(os.path.join(state_dir, "release.json")))
except OSError:
    record = {}
for rel, digest in record.get("installed_files", {}).items():
    path = os.path.join(bin_dir, rel)
    if not os.path.isfile(path) or hashlib.sha512(open(path, "rb").read()).hexdigest() != digest:
        problems.append(f"{path} is not the file the record names")
if record and not problems:
    try:
        handlers = json.load(open(os.path.join(state_dir, "handlers.json")))
    except OSError:
        handlers = {}
    for name, toml in handlers.items():
        flags = tomllib.load(open(toml, "rb")).get("runsc_config", {})
        argv = [os.path.join(bin_dir, "runsc")] + [f"--{k}={v}" for k, v in sorted(flags.items())
                                                   if k not in ("systemd-cgroup", "network")] + ["--network=none", "do", "dmesg"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if "Starting gVisor" not in out.stdout:
            problems.append(f"no sandbox starts with handler {name}: {out.stderr.strip()[-200:]}")
print(json.dumps(problems))
"""


class Play:
    """One finished ansible-playbook run against one node, read from the ansible.posix.json callback."""

    def __init__(self, node, rc, stdout, stderr):
        self.node, self.rc = node, rc
        self.stdout, self.stderr = stdout, stderr  # as ansible-playbook printed them
        try:
            self.data = json.loads(stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"ansible-playbook printed no JSON (rc {rc}):\n{stdout}\n{stderr}") from None

    @property
    def ok(self):
        return self.rc == 0

    @property
    def changed(self):
        """How many tasks reported a change."""
        return self.data["stats"][self.node]["changed"]

    def results(self):
        """(task name, result) of every task run, in order."""
        return [(task["task"]["name"].split(" : ", 1)[-1], task["hosts"][self.node])
                for play in self.data["plays"] for task in play["tasks"] if self.node in task["hosts"]]

    def result(self, name):
        """The result of the last task run with this name."""
        found = [result for task, result in self.results() if task == name]
        assert found, f"no task {name!r} ran: {[task for task, _result in self.results()]}"
        return found[-1]

    @property
    def message(self):
        """What the run ended with: the message of the last task that failed."""
        failed = [result.get("msg", "") for _task, result in self.results() if result.get("failed")]
        return failed[-1] if failed else ""

    def __repr__(self):
        return f"<Play rc={self.rc} changed={self.changed} message={self.message!r}>"


class Node:
    """The node container, the role's variables for it, and ways to read it."""

    def __init__(self, name, variables=None):
        self.name = name
        self.vars = dict(variables or {})  # the role's variables for every run

    def sh(self, script, check=True, stdin=None):
        """Run a shell script on the node and return its stdout."""
        proc = subprocess.run(["docker", "exec", "-i", self.name, "sh", "-c", script], input=stdin,
                              capture_output=True, check=False, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"{script!r} failed on {self.name}: {proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode(errors="replace")

    def read(self, path):
        """A file's bytes, or None when it does not exist."""
        proc = subprocess.run(["docker", "exec", self.name, "cat", path], capture_output=True, check=False)
        return proc.stdout if proc.returncode == 0 else None

    def write(self, path, data):
        self.sh(f"cat > {shlex.quote(path)}", stdin=data)

    def snapshot(self):
        """What the role may change on the node, as SNAPSHOT reads it; equal snapshots mean nothing changed."""
        argv = ["docker", "exec", self.name, "python3", "-c", SNAPSHOT, BIN_DIR, os.path.dirname(CONFIG), STATE_DIR]
        return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)

    def bin_dir_files(self):
        """Every file under the bin dir (relative path -> sha512); the node's image has nothing else there."""
        return {path[len(BIN_DIR) + 1:]: digest for path, digest in self.snapshot()["files"].items()
                if path.startswith(BIN_DIR + "/") and digest != "directory"}

    def problems(self):
        """What keeps the node from being whole (see WHOLE); empty when it is."""
        argv = ["docker", "exec", self.name, "python3", "-c", WHOLE, BIN_DIR, STATE_DIR]
        return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=180).stdout)

    def release(self):
        """The install record (release.json), or None."""
        data = self.read(f"{STATE_DIR}/release.json")
        return json.loads(data) if data else None

    def fresh_containerd(self, config):
        """containerd restarted on this config.toml, with nothing of gVisor's on the node."""
        self.sh(f"rm -rf /etc/containerd/conf.d {BIN_DIR}/runsc {BIN_DIR}/containerd-shim-runsc-v1 {BIN_DIR}/gvisor-bin "
                f"{STATE_DIR} {RUNSC_TOML}")
        self.write(CONFIG, config)
        self.sh("systemctl restart containerd")

    def effective_config(self):
        """containerd's effective configuration (config dump, imports merged), parsed."""
        return tomllib.loads(self.sh(f"containerd --config {CONFIG} config dump"))

    def containerd_active(self):
        return self.sh("systemctl is-active containerd", check=False).strip() == "active"

    def start_play(self, *, ansible_args=(), ansible_env=None, **overrides):
        """Start playbooks/gvisor.yml against the node with the node's variables plus overrides.
        ansible_args go to ansible-playbook before the playbook (e.g. "-vvv"); ansible_env is
        added to its environment (e.g. ANSIBLE_LOG_PATH)."""
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_PIPELINING="1",
                   ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1")
        env.update(ansible_env or {})
        argv = [str(ANSIBLE_PLAYBOOK), "-i", f"{self.name},", "-c", "community.docker.docker",
                "-e", json.dumps({**self.vars, **overrides}), *ansible_args, str(PLAYBOOK)]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def finish(self, proc):
        """Wait for a run start_play began and return the finished Play."""
        stdout, stderr = proc.communicate(timeout=600)
        return Play(self.name, proc.returncode, stdout, stderr)

    def play(self, *, ansible_args=(), ansible_env=None, **overrides):
        """Run the role and return the finished Play."""
        return self.finish(self.start_play(ansible_args=ansible_args, ansible_env=ansible_env, **overrides))


# The one definition of a node container: systemd as PID 1 with the host's network, every capability
# Docker knows but SYS_RESOURCE (which the CI machines lack, so `privileged` fails), seccomp and
# AppArmor unconfined, tmpfs on /run, and the host's cgroups: the v1 tree for bookworm and trixie, the
# v2 tree without controllers for sid (systemd 262 has no cgroup v1). Molecule's platforms and the
# Packer templates, which cannot read it, carry copies that tests/unit/test_node_definition.py checks.
CAPABILITIES = [line.strip() for line in (REPO / "tests" / "harness" / "node-capabilities").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
SECURITY_OPTS = ["seccomp=unconfined", "apparmor=unconfined"]
TMPFS = ["/run", "/run/lock"]
COMMAND = "/lib/systemd/systemd"


def cgroup_volume(image):
    """The cgroup mount a node image's systemd needs."""
    return ("/sys/fs/cgroup/unified" if image.endswith(":sid") else "/sys/fs/cgroup") + ":/sys/fs/cgroup:rw"


def start_node(name, image, initial_config=None, devices=(), env=None):
    """Start a node container as defined above and wait for systemd to finish booting it; with
    initial_config, containerd restarts with that config.toml. devices are the host's device nodes it gets;
    env is its environment, which every `docker exec` (so every module Ansible runs there) inherits."""
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode != 0:
        raise RuntimeError(f"no {image} image: run tests/harness/start-docker and "
                           f"tests/harness/build-images {image.rsplit(':', 1)[-1]}")
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    subprocess.run(["docker", "run", "-d", "--name", name, "--network", "host", "--cgroupns", "host",
                    *[arg for cap in CAPABILITIES for arg in ("--cap-add", cap)],
                    *[arg for opt in SECURITY_OPTS for arg in ("--security-opt", opt)],
                    *[arg for path in TMPFS for arg in ("--tmpfs", path)], "-v", cgroup_volume(image),
                    *[arg for device in devices for arg in ("--device", device)],
                    *[arg for key, value in (env or {}).items() for arg in ("--env", f"{key}={value}")],
                    image, COMMAND], capture_output=True, text=True, check=True)
    node = Node(name)
    deadline = time.monotonic() + 60
    while node.sh("systemctl is-system-running", check=False).strip() not in ("running", "degraded"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"systemd did not finish booting {name} within 60 s")
        time.sleep(0.5)
    if initial_config is not None:
        node.write(CONFIG, initial_config)
        node.sh("systemctl restart containerd")
    return node


def remove_node(name):
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def assert_ctr_reaches_the_shim(node, **overrides):
    """containerd_gvisor_smoke_test_ctr on this node's real containerd: ctr must take the role's command line and
    hand the sandbox to gVisor's shim. Offline the shim is the test mirror's stand-in, which refuses to start one, so
    the run fails there and puts the node back; the real shim is proven in molecule/official."""
    before = node.snapshot()
    play = node.play(containerd_gvisor_smoke_test="always", containerd_gvisor_smoke_test_ctr=True, **overrides)
    assert not play.ok
    assert "a gVisor sandbox did not start with runtime handler gvisor (ctr --address /run/containerd/containerd.sock run " \
        "--rm --runtime io.containerd.runsc.v1 --runtime-config-path " in play.message, play.message
    assert "TEST STAND-IN for gVisor's containerd-shim-runsc-v1" in play.message, play.message  # the shim's own words
    assert "Incorrect Usage" not in play.message and "must match" not in play.message
    assert node.snapshot()["files"] == before["files"]
    assert "containerd-gvisor-smoke" not in node.sh("ctr containers ls -q")  # nothing left behind
