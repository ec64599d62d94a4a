# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Facts about gVisor releases and containerd that change upstream, each with its source.

Data only: the planning code on the control node and the release module on the node read it.
Change an entry here when upstream changes; nothing else has to follow.
"""

from __future__ import annotations

# Architectures gVisor publishes releases for, as the kernel names them.
ARCHES = ("x86_64", "aarch64")

# A release's files. The release bucket served loose files up to 20260817 and the archive from
# 20260721 (gvisor.dev/docs/user_guide/install); the role asks for the archive's checksum first.
ARCHIVE = "gvisor.tar.bz2"
# Since release 20260817.0 gVisor's GitHub releases carry one archive per architecture (its members under gvisor/)
# with SHA512SUMS beside them (kubernetes-sigs/kubespray#13465).
GITHUB_ARCHIVE = "gvisor-{arch}.tar.bz2"
GITHUB_SINCE = "20260817"
# The bucket's channels (gvisor.dev/docs/user_guide/install): dated and point releases, nightly builds by day, and
# every commit of master; each as <channel>/<version>/<arch>/ with the same files.
CHANNELS = {"release": r"latest|\d{8}(\.\d+)?", "nightly": r"latest|\d{4}-\d{2}-\d{2}", "master": r"latest"}
LOOSE_FILES = ("runsc", "containerd-shim-runsc-v1")
RUNSC, SHIM, HELPERS = "runsc", "containerd-shim-runsc-v1", "gvisor-bin"

# containerd's runtime type for gVisor's shim, and the type of its options (gvisor.dev/docs/user_guide/containerd).
RUNTIME_TYPE = "io.containerd.runsc.v1"
OPTIONS_TYPE = "io.containerd.runsc.v1.options"

# Directories containerd finds a shim in without runtime_path (its own PATH under systemd).
CONTAINERD_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

# The CRI runtimes table of each containerd config version (containerd's docs/cri/config.md). Version 1 is
# gone from containerd 2.0; version 4 (containerd 2.3) moved only server settings.
RUNTIMES_TABLE = {
    1: ("plugins", "cri", "containerd", "runtimes"),
    2: ("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"),
    3: ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"),
    4: ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"),  # containerd 2.3
}

# The platforms runsc knows, from which release each exists, and which one a release picks itself.
# systrap: google/gvisor commit 192bfb03f "Open-sourcing the systrap platform" (first in release-20230227.0);
# the default since commit e5f2478be "Make Systrap the default platform" (first in release-20230621.0).
PLATFORMS = {"ptrace": "00000000", "kvm": "00000000", "systrap": "20230227"}
DEFAULT_PLATFORMS = (("20230621", "systrap"), ("00000000", "ptrace"))

# Pairs that cannot work: releases from gvisor_from with containerd older than containerd_below.
# The release module judges a release by what its staged runsc --version says.
INCOMPATIBLE = (
    {
        # From 20260520 the shim is built on containerd 2.1's shim library and answers containerd's start
        # call with a JSON bootstrap message, which containerd 1.6 takes for a socket path.
        "gvisor_from": "20260520",
        "containerd_below": "1.7.0",
        "why": "since release 20260520.0 gVisor's containerd-shim-runsc-v1 answers containerd's start call with a JSON "
               'bootstrap message ({"version":2,"address":...}) that containerd 1.6 reads as a socket path, so no gVisor '
               'sandbox can start ("dial unix {...}: connect: invalid argument"); gVisor\'s CI tests containerd 1.7, 2.0, '
               "2.1 and 2.2 only",
        "fix": 'Upgrade containerd to 1.7 or later, or pin a gVisor release from before 20260520 (containerd_gvisor_version, '
               'e.g. "20260513"). containerd_gvisor_ignore_compatibility: true installs it anyway.',
        "source": "https://github.com/cri-o/cri-o/pull/9974",
    },
)

# containerd releases with gVisor bugs, and where they are fixed: a warning, not a refusal.
BUGGY_CONTAINERD = (
    {"from": "2.0.0", "below": "2.0.6",
     "why": "containerd 2.0.0 to 2.0.5 do not shut gVisor's shim down when a pod is deleted "
            "(https://github.com/containerd/containerd/issues/11708); fixed in 2.0.6 "
            "(https://github.com/containerd/containerd/pull/11741)."},
    {"from": "2.1.0", "below": "2.1.2",
     "why": "containerd 2.1.0 and 2.1.1 leak gVisor's shim process after a pod ends "
            "(https://github.com/containerd/containerd/issues/11871); fixed in 2.1.2 "
            "(https://github.com/siderolabs/pkgs/pull/1264)."},
)

# The runsc root Docker gives a runtime registered by path: its sandboxes' state (gvisor.dev/docs/user_guide/observability;
# Docker 26 passes --root=/var/run/docker/runtime-runc/moby whatever the runtime's name).
DOCKER_RUNSC_ROOT = "/var/run/docker/runtime-runc/moby"

# The kernel module of the kvm platform, by CPU vendor (aarch64 has KVM built in), and where the role
# has it loaded at boot.
KVM_MODULES = {"GenuineIntel": "kvm_intel", "AuthenticAMD": "kvm_amd"}
KVM_MODULES_LOAD = "/etc/modules-load.d/containerd-gvisor-kvm.conf"
# Device nodes gVisor's GPU support (nvproxy) needs on the host (gvisor.dev/docs/user_guide/gpu).
NVIDIA_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0")


def version_tuple(text):
    """(major, minor, patch) of a version such as 1.7.24; missing parts count as 0."""
    parts = [int(part) for part in text.split(".")[:3] if part.isdigit()]
    return tuple(parts + [0] * (3 - len(parts)))


def platforms_of(date):
    """The platforms a release of that date (yyyymmdd; '' for an unknown or current one) knows."""
    return sorted(name for name, since in PLATFORMS.items() if not date or date >= since)


def default_platform(date):
    """The platform a release of that date picks when runsc.toml names none."""
    return next(name for since, name in DEFAULT_PLATFORMS if not date or date >= since)
