"""The collection as a user gets it: built, installed and run from outside the repository.

From a clone of the repository: `ansible-galaxy collection build` (and what the tarball leaves
out), `ansible-galaxy collection install` from that tarball, from `git+file://CLONE` and from a
requirements.yml, each into an empty collections path that is then the only one Ansible searches
(besides the collections the ansible package bundles, for community.docker and ansible.posix),
and playbooks run from a directory outside the repository: the collection's own playbooks by FQCN,
and a user's playbook that lists the role by FQCN. Last, the oldest controller the collection
declares (meta/runtime.yml's requires_ansible, on the oldest Python pyproject.toml allows), from a
virtualenv that tests/harness/oldest-ansible makes, runs playbooks/gvisor.yml from the clone.

One bookworm node container (containerd 1.6, so release 20240729) serves every test, in this order,
each route with at least one run that changes the node: the tarball's FQCN playbook installs and
removes, the user's playbook installs, the git URL install removes, the requirements.yml install
installs (with the node playbook), the oldest controller removes, installs and changes nothing. A test
run alone first brings the node to the state it needs. Every install ends with gVisor's dmesg banner
printed from a sandbox the installed runsc starts on the node.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from gvisor_node import ARCH, BIN_DIR, CONFIG, STATE_DIR, Play, remove_node, start_node
from gvisor_testinfra import REPO, RUNTIME_TYPE, assert_gvisor_banner, handler_table, runsc_version_line

NODE = "install-bookworm"
IMAGE = "containerd-gvisor-node:bookworm"
INITIAL_CONFIG = (REPO / "tests" / "fixtures" / "containerd" / "bookworm-v2.toml").read_bytes()
VERSION = "20240729"  # a release whose shim containerd 1.6 can run
VENV_BIN = Path(sys.executable).parent  # the project's virtualenv: ansible 12, ansible-core 2.19
OLDEST_ANSIBLE = REPO / "tests" / "harness" / "oldest-ansible"

GALAXY = yaml.safe_load((REPO / "galaxy.yml").read_text())
FQCN = f"{GALAXY['namespace']}.{GALAXY['name']}"
# What a user's checkout holds besides the collection: none of it may reach the tarball.
LEFT_OUT = ("tests", "bench", "molecule", ".venv", ".cache", "playbooks/collections")


# --- the clone -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A clone of the repository, as a user's checkout, holding the work tree as it is now.

    `git clone` alone would test the last commit, not the work that is about to be committed, and
    a copy of the work tree would carry its ignored files (.venv, .cache, old tarballs) and be no
    git repository for the git+file:// routes. So: clone (a clean tree, only what git knows), lay
    the work tree's tracked and not-ignored untracked files over it (removing tracked files that
    were deleted), and commit that inside the throwaway clone, so that `ansible-galaxy collection
    install git+file://CLONE`, which clones the clone, gets the same files the tarball is built from.
    """
    dest = tmp_path_factory.mktemp("clone") / "containerd-gvisor"
    git(None, "clone", "--quiet", str(REPO), str(dest))
    listed = git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, listed):
        src, dst = REPO / name, dest / name
        if dst.is_symlink() or dst.is_file():
            dst.unlink()
        if src.is_symlink():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(os.readlink(src))
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    git(dest, "add", "--all")
    git(dest, "-c", "user.name=tests", "-c", "user.email=tests@localhost", "commit", "--quiet", "--allow-empty",
        "-m", "The work tree, for test_collection_install")
    return dest


def git(cwd, *args):
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


def run(argv, cwd, env=None, timeout=300):
    """Run a command; fail the test with its output when it fails."""
    proc = subprocess.run([str(arg) for arg in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def user_env(collections_path, bin_dir=VENV_BIN):
    """The environment of a user who runs Ansible from bin_dir with one collections path: none of the
    test suite's ANSIBLE_* settings, no repository ansible.cfg."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env.update({
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path),
        "ANSIBLE_NOCOLOR": "1",
        # Fewer round trips over `docker exec`; a setting many users have anyway.
        "ANSIBLE_PIPELINING": "1",
    })
    return env


# --- the node --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node(mirror, tmp_path_factory):
    node = start_node(NODE, IMAGE, INITIAL_CONFIG)
    node.vars.update({
        "containerd_gvisor_runtime": True,
        "containerd_gvisor_version": VERSION,
        "containerd_gvisor_mirror_url": mirror.url,
        # The control node's download cache of this module alone, not the user's ~/.cache.
        "containerd_gvisor_download_cache_dir": str(tmp_path_factory.mktemp("download-cache")),
    })
    yield node
    if not os.environ.get("CONTAINERD_GVISOR_KEEP_NODE"):
        remove_node(NODE)


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """Where the user runs Ansible from: outside the repository, no ansible.cfg."""
    return tmp_path_factory.mktemp("user")


def play(node, playbook, env, cwd, bin_dir=VENV_BIN, extra_vars=True, **overrides):
    """ansible-playbook (from bin_dir) against the node over community.docker.docker, read through
    the ansible.posix.json callback. Returns (Play, stderr)."""
    argv = [bin_dir / "ansible-playbook", "-i", f"{node.name},", "-c", "community.docker.docker"]
    if extra_vars:
        argv += ["-e", json.dumps({**node.vars, **overrides})]
    env = dict(env, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    proc = subprocess.run([str(arg) for arg in [*argv, playbook]], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False, timeout=600)
    return Play(node.name, proc.returncode, proc.stdout, proc.stderr), proc.stderr


def describe(result, stderr):
    """What a run ended with, for a failed assertion: each failed task's message and module error."""
    lines = [repr(result)]
    for task, outcome in result.results():
        if outcome.get("failed"):
            lines.append(f"task {task!r}: {outcome.get('msg', '')}")
            shown = set()
            for key in ("module_stderr", "exception", "stderr"):
                if outcome.get(key) and str(outcome[key]).strip() not in shown:
                    shown.add(str(outcome[key]).strip())
                    lines.append(f"  {key}: {str(outcome[key])[-2000:]}")
    if stderr.strip():
        lines.append(f"stderr: {stderr[-2000:]}")
    return "\n".join(lines)


def has_runsc(node):
    return node.sh(f"test -e {BIN_DIR}/runsc && echo yes || true").strip() == "yes"


def take_gvisor_off(node, playbook, env, cwd, bin_dir=VENV_BIN):
    """containerd_gvisor_state=absent, so that the next converge really installs."""
    if has_runsc(node) or node.release() is not None:
        result, stderr = play(node, playbook, env, cwd, bin_dir, containerd_gvisor_state="absent")
        assert result.ok, describe(result, stderr)
    assert_removed(node)


def put_gvisor_on(node, playbook, env, cwd, bin_dir=VENV_BIN):
    """An installed gVisor, so that the next run of state absent really removes it."""
    if not has_runsc(node) or node.release() is None:
        result, stderr = play(node, playbook, env, cwd, bin_dir)
        assert result.ok, describe(result, stderr)
    assert has_runsc(node) and node.release() is not None


def assert_removed(node):
    """No gVisor files, no install record, no handler in containerd's effective configuration."""
    assert not has_runsc(node) and node.release() is None
    assert node.sh(f"test -e {STATE_DIR} && echo left || true").strip() == ""
    assert node.containerd_active()
    dump = tomllib.loads(node.sh(f"containerd --config {CONFIG} config dump"))
    assert handler_table(dump, "gvisor") is None


def assert_converged(node, result, stderr, installs=True):
    """The run succeeded, installed the release, registered the handler, and a sandbox starts."""
    assert result.ok, describe(result, stderr)
    if installs:
        assert result.changed > 0, result
    assert node.sh(f"{BIN_DIR}/runsc --version").splitlines()[0] == runsc_version_line(VERSION, ARCH)
    assert node.release() is not None
    assert node.containerd_active()
    dump = tomllib.loads(node.sh(f"containerd --config {CONFIG} config dump"))
    assert (handler_table(dump, "gvisor") or {}).get("runtime_type") == RUNTIME_TYPE
    assert_gvisor_banner(node.sh(f"{BIN_DIR}/runsc --network=none do dmesg"))


# --- the installed collection ----------------------------------------------------------------

def installed_path(collections_path):
    return Path(collections_path) / "ansible_collections" / GALAXY["namespace"] / GALAXY["name"]


def assert_installed(collections_path, env, cwd):
    """The collection galaxy.yml describes is installed there, without the repository's extras, and
    is the one Ansible finds with that environment. Returns its FILES.json entries."""
    path = installed_path(collections_path)
    info = json.loads((path / "MANIFEST.json").read_text())["collection_info"]
    want = (GALAXY["namespace"], GALAXY["name"], GALAXY["version"])
    assert (info["namespace"], info["name"], info["version"]) == want
    for name in LEFT_OUT:
        assert not (path / name).exists() and not (path / name).is_symlink(), f"{name} was installed"
    for name in ("roles/containerd_gvisor/tasks/main.yml", "roles/containerd/tasks/main.yml", "playbooks/gvisor.yml",
                 "playbooks/node.yml", "plugins/modules/release.py", "meta/runtime.yml", "requirements.txt"):
        assert (path / name).is_file(), f"{name} is missing from {path}"
    listed = run([VENV_BIN / "ansible-galaxy", "collection", "list", FQCN, "--format", "json"], cwd, env)
    assert json.loads(listed) == {str(Path(collections_path) / "ansible_collections"): {FQCN: {
        "version": GALAXY["version"]}}}, listed
    return files_json(json.loads((path / "FILES.json").read_text()))


def files_json(data):
    return sorted((entry["name"], entry["ftype"], entry["chksum_sha256"]) for entry in data["files"])


def syntax_check(env, cwd):
    """The collection's playbooks parse, by FQCN, with what the collections path holds."""
    run([VENV_BIN / "ansible-playbook", "--syntax-check", "-i", "localhost,",
         f"{FQCN}.gvisor", f"{FQCN}.node", f"{FQCN}.mirror"], cwd, env)


# --- 1. the tarball --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tarball(clone, tmp_path_factory):
    """`ansible-galaxy collection build` in the clone, after a user's test run left its usual
    clutter there (a virtualenv, caches, an old tarball): build_ignore must keep all of it out."""
    (clone / ".venv" / "bin").mkdir(parents=True)
    (clone / ".venv" / "bin" / "python").write_text("clutter\n")
    (clone / ".cache" / "mirror").mkdir(parents=True)
    (clone / ".cache" / "mirror" / "runsc").write_text("clutter\n")
    (clone / f"{GALAXY['namespace']}-{GALAXY['name']}-0.0.1.tar.gz").write_text("clutter\n")
    out = tmp_path_factory.mktemp("build")
    run([VENV_BIN / "ansible-galaxy", "collection", "build", "--output-path", out], clone, user_env(out))
    built = sorted(out.glob("*.tar.gz"))
    assert [path.name for path in built] == [f"{GALAXY['namespace']}-{GALAXY['name']}-{GALAXY['version']}.tar.gz"]
    return built[0]


def test_build_leaves_out_tests_benchmarks_scenarios_and_caches(clone, tarball, capsys, record_property):
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
    names = [member.name.removeprefix("./").rstrip("/") for member in members]
    for left_out in LEFT_OUT:
        found = [name for name in names if name == left_out or name.startswith(left_out + "/")]
        assert not found, f"the tarball holds {left_out}: {found[:5]}"
    assert not [name for name in names if name.endswith(".tar.gz")]
    for name in ("MANIFEST.json", "FILES.json", "README.md", "LICENSE", "meta/runtime.yml", "requirements.txt",
                 "roles/containerd_gvisor/tasks/main.yml", "roles/containerd/tasks/main.yml",
                 "playbooks/gvisor.yml", "playbooks/node.yml", "plugins/modules/release.py",
                 "plugins/plugin_utils/containerd_config.py"):
        assert name in names, f"{name} is missing from the tarball"
    # Nothing but files git knows: no stray build products or local files.
    tracked = set(filter(None, git(clone, "ls-files", "-z").split("\0")))
    stray = [member.name for member in members if member.isfile() and member.name not in tracked
             and member.name not in ("MANIFEST.json", "FILES.json")]
    assert not stray, stray
    assert not [member.name for member in members if member.issym() or member.islnk()]

    size = tarball.stat().st_size
    record_property("tarball_bytes", size)
    with capsys.disabled():
        print(f"\n  {tarball.name}: {size:,} bytes, {len(members)} members")
    assert size < 1024 * 1024, f"{tarball.name} is {size:,} bytes: what made it this big?"


# --- 2. installed from the tarball -----------------------------------------------------------

@pytest.fixture(scope="module")
def from_tarball(tarball, user_dir, tmp_path_factory):
    """The tarball installed into an empty collections path, the only one Ansible then searches."""
    path = tmp_path_factory.mktemp("collections-tarball")
    env = user_env(path)
    run([VENV_BIN / "ansible-galaxy", "collection", "install", tarball, "-p", path], user_dir, env)
    return path, env


def test_tarball_install_holds_the_collection(from_tarball, tarball, user_dir):
    path, env = from_tarball
    installed = assert_installed(path, env, user_dir)
    with tarfile.open(tarball) as tar:
        assert installed == files_json(json.load(tar.extractfile("FILES.json")))
    syntax_check(env, user_dir)


def test_fqcn_playbook_from_the_tarball_install_installs_gvisor(node, from_tarball, user_dir):
    path, env = from_tarball
    take_gvisor_off(node, f"{FQCN}.gvisor", env, user_dir)
    result, stderr = play(node, f"{FQCN}.gvisor", env, user_dir)
    assert_converged(node, result, stderr)

    # And off again, with the same playbook, so the user's playbook below really installs.
    result, stderr = play(node, f"{FQCN}.gvisor", env, user_dir, containerd_gvisor_state="absent")
    assert result.ok and result.changed > 0, describe(result, stderr)
    assert_removed(node)


def test_a_users_playbook_with_the_role_by_fqcn_installs_gvisor(node, from_tarball, user_dir):
    path, env = from_tarball
    take_gvisor_off(node, f"{FQCN}.gvisor", env, user_dir)
    # Written as a user would: the role by FQCN, the settings in the play, facts gathered as usual.
    playbook = user_dir / "site.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Run pods in gVisor on my nodes",
        "hosts": "all",
        "become": True,
        "vars": {key: node.vars[key] for key in sorted(node.vars)},
        "roles": [f"{FQCN}.containerd_gvisor"],
    }], sort_keys=False))
    result, stderr = play(node, playbook.name, env, user_dir, extra_vars=False)
    assert_converged(node, result, stderr)


# --- 3. installed from git -------------------------------------------------------------------

def test_git_url_install_holds_the_same_collection_and_removes_gvisor(node, clone, tarball, user_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("collections-git")
    env = user_env(path)
    run([VENV_BIN / "ansible-galaxy", "collection", "install", f"git+file://{clone}", "-p", path], user_dir, env)
    installed = assert_installed(path, env, user_dir)
    with tarfile.open(tarball) as tar:
        assert installed == files_json(json.load(tar.extractfile("FILES.json")))
    syntax_check(env, user_dir)

    # A real run that changes the node, at half the cost of an install: the previous test left
    # gVisor installed, and this route takes it off (the requirements route below installs).
    put_gvisor_on(node, f"{FQCN}.gvisor", env, user_dir)
    result, stderr = play(node, f"{FQCN}.gvisor", env, user_dir, containerd_gvisor_state="absent")
    assert result.ok and result.changed > 0, describe(result, stderr)
    assert_removed(node)


def test_requirements_file_install_holds_the_same_collection_and_converges(
        node, clone, tarball, user_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("collections-requirements")
    env = user_env(path)
    branch = git(clone, "rev-parse", "--abbrev-ref", "HEAD").strip()
    requirements = user_dir / "requirements.yml"
    requirements.write_text(yaml.safe_dump({"collections": [
        {"name": f"git+file://{clone}", "type": "git", "version": branch}]}, sort_keys=False))
    run([VENV_BIN / "ansible-galaxy", "collection", "install", "-r", requirements.name, "-p", path], user_dir, env)
    installed = assert_installed(path, env, user_dir)
    with tarfile.open(tarball) as tar:
        assert installed == files_json(json.load(tar.extractfile("FILES.json")))
    syntax_check(env, user_dir)

    # This time the node playbook: the containerd role (containerd is there: it is kept) then gVisor.
    take_gvisor_off(node, f"{FQCN}.gvisor", env, user_dir)
    result, stderr = play(node, f"{FQCN}.node", env, user_dir)
    assert_converged(node, result, stderr)


# --- 4. the oldest controller the collection declares ----------------------------------------

def lowest_version(specifier):
    """The lower bound of a '>=X.Y[.Z]' requirement, e.g. '>=2.17.0' -> 2.17.0."""
    match = re.search(r">=\s*([0-9][0-9.]*)", specifier)
    assert match, f"no lower bound in {specifier!r}"
    return Version(match.group(1))


@pytest.fixture(scope="module")
def oldest():
    """tests/harness/oldest-ansible's virtualenv; skips only when pip cannot reach the registry."""
    proc = subprocess.run([str(OLDEST_ANSIBLE)], capture_output=True, text=True, check=False, timeout=900)
    if proc.returncode == 3:
        pytest.skip(f"tests/harness/oldest-ansible: pip cannot reach the package registry:\n{proc.stderr[-2000:]}")
    assert proc.returncode == 0, f"tests/harness/oldest-ansible failed ({proc.returncode}):\n{proc.stderr}"
    return Path(proc.stdout.strip().splitlines()[-1])


def venv_python(venv, code):
    return run([venv / "bin" / "python", "-c", code], REPO).strip()


def test_the_oldest_controller_is_the_one_the_collection_declares(oldest):
    requires = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())["requires_ansible"]
    lowest = lowest_version(requires)
    core = Version(venv_python(oldest, "import ansible.release; print(ansible.release.__version__)"))
    assert (core.major, core.minor) == (lowest.major, lowest.minor), f"{core} is not the {lowest} series"
    assert core in SpecifierSet(requires), f"ansible-core {core} does not meet requires_ansible {requires!r}"

    requires_python = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    lowest_python = lowest_version(requires_python)
    python = Version(venv_python(oldest, "import platform; print(platform.python_version())"))
    assert (python.major, python.minor) == (lowest_python.major, lowest_python.minor), python

    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", line).groups()
            have = venv_python(oldest, f"import importlib.metadata as m; print(m.version({name!r}))")
            assert Version(have) in SpecifierSet(spec), f"{name} {have} does not meet {line!r}"


def test_the_oldest_controller_runs_the_playbook_from_the_clone(node, clone, oldest, tmp_path_factory):
    # The collection comes only from the clone's playbooks/collections link (an empty
    # ANSIBLE_COLLECTIONS_PATH), with the clone's ansible.cfg, as README.md tells a user of a clone.
    env = user_env(tmp_path_factory.mktemp("collections-none"), oldest / "bin")
    playbook = "playbooks/gvisor.yml"
    bin_dir = oldest / "bin"
    # Removal (the previous test left gVisor installed), install, and a run that changes nothing.
    take_gvisor_off(node, playbook, env, clone, bin_dir)
    result, stderr = play(node, playbook, env, clone, bin_dir)
    assert_converged(node, result, stderr)

    result, stderr = play(node, playbook, env, clone, bin_dir)
    assert result.ok and result.changed == 0, "a second run changed something: " + describe(result, stderr)
