"""Helpers the Molecule scenarios' testinfra tests share.

They read what the local test mirror serves (tests/mirror) and what a node holds, so each
scenario's tests stay a short list of what a user checks after a run.
"""

import copy
import hashlib
import os
import re
import shlex
import socket
import tarfile
import time
import tomllib
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIM = "containerd-shim-runsc-v1"
ARCHIVE = "gvisor.tar.bz2"
STAND_IN_MARK = b"TEST STAND-IN"  # in every file of the test mirror that is not a real binary
RUNTIME_TYPE = "io.containerd.runsc.v1"


def mirror_dir():
    """The directory tests/mirror/build filled and tests/mirror/serve serves."""
    return Path(os.environ.get("CONTAINERD_GVISOR_MIRROR_DIR", REPO / ".cache" / "mirror"))


def release_dir(version, arch):
    """The mirror's directory of one release, `latest` and YYYYMMDD aliases resolved like the mirror does."""
    return (mirror_dir() / "release" / str(version) / arch).resolve()


def release_name(version, arch):
    """The dated release a version names on the mirror, e.g. latest -> 20261005.0."""
    return release_dir(version, arch).parent.name


def uses_archive(version, arch):
    """Whether the role installs the release from gvisor.tar.bz2: every release that serves it,
    including those that also serve the loose files (20260721 to 20260817), as the role asks for the
    archive first."""
    return (release_dir(version, arch) / ARCHIVE).exists()


def archive_files(archive):
    """Map of path (./ prefix removed) to the sha512 of every regular file in a .tar.bz2."""
    files = {}
    with tarfile.open(archive, "r:bz2") as tar:
        for member in tar.getmembers():
            if member.isfile():
                name = member.name.removeprefix("./").removeprefix("gvisor/")  # GitHub's archives: under gvisor/
                files[name] = hashlib.sha512(tar.extractfile(member).read()).hexdigest()
    return files


def expected_files(version, arch):
    """Map of path (relative to the bin dir) to the sha512 the role installs from the mirror's
    release: the archive's runsc, shim and gvisor-bin/ helpers, else the two loose files."""
    rel = release_dir(version, arch)
    if uses_archive(version, arch):
        return archive_files(rel / ARCHIVE)
    return {name: sha512_file(rel / name) for name in ("runsc", SHIM)}


def release_runsc(version, arch):
    """The bytes of the runsc the role installs from the mirror's release."""
    rel = release_dir(version, arch)
    if not uses_archive(version, arch):
        return (rel / "runsc").read_bytes()
    with tarfile.open(rel / ARCHIVE, "r:bz2") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.removeprefix("./") == "runsc":
                return tar.extractfile(member).read()
    raise AssertionError(f"{rel / ARCHIVE} has no runsc")


def runsc_version_line(version, arch):
    """The first line `runsc --version` prints once the release is installed: Debian's real runsc
    (20221219.0, 20240729.0) says 'runsc version 0.0~<release>', the mirror's stand-in runsc of
    later releases 'runsc version release-<release>', as gVisor's own builds do."""
    release = release_name(version, arch)
    if STAND_IN_MARK in release_runsc(version, arch)[:4096]:
        return f"runsc version release-{release}"
    return f"runsc version 0.0~{release}"


def sha512_file(path):
    return hashlib.sha512(Path(path).read_bytes()).hexdigest()


def node_sha512(host, path):
    return host.check_output("sha512sum %s", path).split()[0]


def node_toml(host, path):
    return tomllib.loads(host.file(path).content_string)


DROPIN = "/etc/containerd/conf.d/gvisor.toml"


def containerd_2(host):
    """Whether the node runs containerd 2.x, which reads the handlers from the role's drop-in."""
    return host.check_output("containerd --version").split()[2].lstrip("v").startswith("2.")


def handlers_file(host, config="/etc/containerd/config.toml"):
    """Where the role wrote the handlers' tables: its drop-in on containerd 2.x, config.toml on 1.x."""
    return DROPIN if containerd_2(host) else config


def dig(data, *keys):
    """data[k1][k2]... or None when any key is missing."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def cri_runtimes_path(version):
    """The keys of the CRI runtimes table for a config file's `version`."""
    if version in (3, 4):
        return ["plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"]
    return ["plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"]


def handler_table(config, handler):
    return dig(config, *cri_runtimes_path(config.get("version", 1)), handler)


def without_handler(config, handler):
    """A deep copy of config without the handler's table."""
    config = copy.deepcopy(config)
    runtimes = dig(config, *cri_runtimes_path(config.get("version", 1)))
    if runtimes is not None:
        runtimes.pop(handler, None)
    return config


def runsc_flags(host, runsc_toml):
    """The runsc flags containerd's shim would pass, read from the node's runsc.toml."""
    if not host.file(runsc_toml).exists:
        return []
    table = node_toml(host, runsc_toml).get("runsc_config", {})
    return ["--%s=%s" % (key, value) for key, value in sorted(table.items())]


def sandbox_flags(host, runsc_toml):
    """Flags for starting a sandbox by hand: the node's runsc.toml flags, as the shim passes them,
    but no network (runsc refuses the host's network namespace in a test container) and no
    systemd-cgroup (it reads the slice:prefix:name cgroup paths only the CRI plugin gives)."""
    return [flag for flag in runsc_flags(host, runsc_toml) if not flag.startswith("--systemd-cgroup=")] + ["--network=none"]


def dmesg_lines(output):
    return [line for line in output.splitlines() if line.strip()]


def assert_gvisor_banner(output):
    """gVisor's dmesg: 'Starting gVisor...' first, 'Ready!' last, random lines between."""
    lines = dmesg_lines(output)
    assert lines, "dmesg printed nothing"
    assert "Starting gVisor..." in lines[0], output
    assert "Ready!" in lines[-1], output


def shell(*argv):
    return " ".join(shlex.quote(str(a)) for a in argv)


def free_port():
    """A TCP port nobody on this machine listens on now (node containers share its network)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(address, wait=0):
    """A gVisor metric server's /metrics, read from this machine; wait: seconds to let a server that is starting
    begin to answer."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def sandbox_series(text, name, sandbox):
    """The lines of series name (e.g. runsc_meta_sandbox_running) for one sandbox."""
    return [line for line in text.splitlines() if re.match(rf'{name}\{{[^}}]*sandbox="{re.escape(sandbox)}"', line)]
