# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""gVisor's metric server on a node (gvisor.dev/docs/user_guide/observability): its address, its systemd unit,
whether a release has one, who holds its address, and the proof that it exports a sandbox started with a
handler's flags.

A metric server watches one runsc root directory and exports the sandboxes there that were created with
the same --metric-server value it listens on. containerd's shim keeps a namespace's sandboxes in
/run/containerd/runsc/<namespace> (Kubernetes' is k8s.io), Docker in its own root, so each gets a server.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils.transaction import Failure

HELPER = "gvisor-bin/runsc-metric-server"
UNIT_DIR, UNIT_PREFIX = "/etc/systemd/system", "containerd-gvisor-metrics"
# What runsc says when it cannot serve metrics: a build without the server (Debian's), a release whose helper is
# missing, and a release from before the subcommand (its usage lists the subcommands it has).
NO_SERVER = ("does not support the metric-server subcommand", 'sidecar binary "runsc-metric-server" not found',
             "Subcommands:", "flag provided but not defined: -metric-server")
# The series the server itself writes for each sandbox it knows (with the exporter prefix before them).
SANDBOX_SERIES = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*meta_sandbox_(?:running|presence)\{(?P<labels>[^}]*)\}\s+1(?:\s|$)")


class AddressError(ValueError):
    """An address runsc would not listen on."""


def parse_address(address):
    """("unix", path) or ("tcp", host, port) of a --metric-server value, as runsc reads it: an absolute path is a
    unix socket, anything else host:port (host empty for every interface, an IPv6 address in brackets)."""
    address = str(address)
    if address.startswith("/"):
        if len(address.encode()) > 107:
            raise AddressError("a unix socket path may have at most 107 bytes")
        return ("unix", address)
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError("use host:port, :port or an absolute unix socket path")
    if host.startswith("["):
        if not host.endswith("]") or not is_ip(host[1:-1]):
            raise AddressError("write an IPv6 address in brackets, e.g. [::1]:1337")
        return ("tcp", host[1:-1], int(port))
    if not re.fullmatch(r"[A-Za-z0-9.-]*", host):
        raise AddressError("the host is neither a name nor an IP address (an IPv6 address goes in brackets)")
    return ("tcp", host, int(port))


def loopback(address):
    """Whether only the node itself can reach the address: a unix socket, localhost or a loopback IP."""
    parsed = parse_address(address)
    if parsed[0] == "unix":
        return True
    host = parsed[1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # every interface (""), or a name that may resolve to anything


def unit_name(root_of):
    """The systemd unit of the server for containerd's sandboxes or Docker's."""
    return f"{UNIT_PREFIX}.service" if root_of == "containerd" else f"{UNIT_PREFIX}-{root_of}.service"


def remove_unit(run, unit):
    """Stop a unit whose file is already gone, and drop the links that enabled it."""
    run(["systemctl", "stop", unit])
    for wants in os.listdir(UNIT_DIR) if os.path.isdir(UNIT_DIR) else []:
        link = os.path.join(UNIT_DIR, wants, unit)
        if wants.endswith(".wants") and os.path.islink(link):
            os.unlink(link)


def argv(bin_dir, root, address, helper):
    """How the unit starts the server: the release's gvisor-bin/ helper where it has one, else runsc's subcommand.
    Both take runsc's command line (runsc execs its helper with it)."""
    program = os.path.join(bin_dir, HELPER) if helper else os.path.join(bin_dir, "runsc")
    return [program, f"--root={root}", f"--metric-server={address}", "metric-server", "--allow-unknown-root"]


def unit_text(server, helper):
    """The unit file of a server ({root_of, root, address, bin_dir, after})."""
    command = " ".join(argv(server["bin_dir"], server["root"], server["address"], helper))
    return (f"# Written by gvisor_nodes.containerd_gvisor: gVisor's metric server for {server['root_of']}'s sandboxes.\n"
            "[Unit]\n"
            f"Description=gVisor metric server for the sandboxes in {server['root']}\n"
            "Documentation=https://gvisor.dev/docs/user_guide/observability/\n"
            f"After={server['after']}\n"
            "\n[Service]\n"
            # The root directory appears with the first sandbox; until then the server serves no sandbox.
            f"ExecStart={command}\n"
            "Restart=on-failure\n"
            "RestartSec=5\n"
            "NoNewPrivileges=yes\n"
            "\n[Install]\n"
            "WantedBy=multi-user.target\n")


def missing_server(run, bin_dir):
    """Why the release in bin_dir (installed or staged) cannot serve metrics, '' when it can."""
    if os.path.isfile(os.path.join(bin_dir, HELPER)):
        return ""
    runsc = os.path.join(bin_dir, "runsc")
    rc, out, err = run(["timeout", "10", runsc, "metric-server"])
    said = f"{out}\n{err}"
    if rc in (124, 137) or any(marker in said for marker in NO_SERVER):
        line = next((marker for marker in NO_SERVER if marker in said), "it did not answer")
        return (f"its runsc has no metric server ({runsc} metric-server: {'no such subcommand' if line == 'Subcommands:' else line}), "
                f"and it has no {HELPER}")
    return ""


def holder(address, unit_pids):
    """Who listens on the address now: '' when nobody, 'ours' when one of the units, else who (pid and command)."""
    parsed = parse_address(address)
    if parsed[0] == "unix":
        if not os.path.exists(parsed[1]):
            return ""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(2)
            probe.connect(parsed[1])
        except OSError:
            return ""  # a socket file nobody listens on: runsc binds over it
        finally:
            probe.close()
        inode = unix_inode(parsed[1])
    else:
        if parsed[1] not in ("", "localhost") and not is_ip(parsed[1]):
            return ""  # a name: no lookup on the node (the plan asks for consent; runsc reports what it cannot bind)
        family = socket.AF_INET6 if ":" in parsed[1] else socket.AF_INET
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((parsed[1], parsed[2]))
            return ""
        except OSError as err:
            if err.errno not in (98, 13):  # EADDRINUSE, EACCES: another address error is runsc's to report
                return ""
        finally:
            probe.close()
        inode = tcp_inode(parsed[2])
    pid = pid_of_socket(inode, unit_pids) if inode else 0
    if pid and pid in unit_pids:
        return "ours"
    if not pid:
        return "a process this node's process list does not show"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        command = "?"
    return f"pid {pid} ({command[:120]})"


def is_ip(host):
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def tcp_inode(port):
    """The inode of a socket listening on the port (any local address), from /proc/net/tcp and tcp6."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                for line in list(handle)[1:]:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return fields[9]
        except OSError:
            continue
    return ""


def unix_inode(path):
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as handle:
            for line in list(handle)[1:]:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == path and fields[5] == "01":  # listening
                    return fields[6]
    except OSError:
        pass
    return ""


def pid_of_socket(inode, first=()):
    """The process holding the socket: the given ones are looked at first (the units' own, usually it)."""
    wanted = f"socket:[{inode}]"
    for pid in [*map(str, first), *filter(str.isdigit, os.listdir("/proc"))]:
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == wanted for fd in os.listdir(f"/proc/{pid}/fd")):
                return int(pid)
        except OSError:
            continue
    return 0


def get(address, path, timeout=5):
    """(status, body) of an HTTP GET to the server at the address (a TCP address or a unix socket)."""
    parsed = parse_address(address)
    if parsed[0] == "unix":
        connection = http.client.HTTPConnection("localhost", timeout=timeout)
        connection.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.sock.settimeout(timeout)
        connection.sock.connect(parsed[1])
    else:
        host = parsed[1] if parsed[1] not in ("", "0.0.0.0", "::") else "127.0.0.1"
        connection = http.client.HTTPConnection(host, parsed[2], timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def answers(address, root):
    """Whether a metric server serving root answers on the address (its health check names the root it serves)."""
    try:
        status, body = get(address, f"/runsc-metrics/healthcheck?root={root}")
    except OSError:
        return False
    return status == 200 and body.startswith("runsc-metrics:OK")


def wait_until_answers(run, server, seconds=30):
    """The server must answer on its address, serving its root, within seconds of its start."""
    deadline = time.monotonic() + seconds
    while not answers(server["address"], server["root"]):
        if time.monotonic() > deadline:
            _rc, out, _err = run(["journalctl", "--unit", server["unit"], "--lines", "4", "--no-pager", "--output", "cat"])
            said = " | ".join(line.strip() for line in out.splitlines() if line.strip())
            raise Failure(f"gVisor's metric server {server['unit']} does not answer on {server['address']} for the "
                          f"sandboxes in {server['root']} within {seconds} s (its last log lines: [{said}])")
        time.sleep(0.5)


def exported(text, sandbox):
    """Whether the /metrics text has the server's own series for the sandbox (its sandbox label)."""
    for line in text.splitlines():
        found = SANDBOX_SERIES.match(line)
        if found and re.search(r'(?:^|,)sandbox="%s"' % re.escape(sandbox), found.group("labels")):
            return True
    return False


def bundle(directory, seconds):
    """An OCI bundle for a sandbox that sleeps: the node's own file system, read-only, as runsc spec writes it."""
    spec = {
        "ociVersion": "1.0.0",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sleep", str(seconds)], "cwd": "/",
                    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "root": {"path": "/", "readonly": True},
        "hostname": "containerd-gvisor-metrics",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}],
        "linux": {"namespaces": [{"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount")]},
    }
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(spec, handle)


def prove(server, command, timeout):
    """Start a sandbox with the handler's flags (command: {name, argv} up to the subcommand) in the server's root,
    and wait until the server exports it; Failure when it does not. The sandbox goes whatever happens."""
    root, address = server["root"], server["address"]
    sandbox = f"containerd-gvisor-metrics-{command['name']}-{os.getpid()}"
    runsc = [command["argv"][0], f"--root={root}", *command["argv"][1:]]
    directory = tempfile.mkdtemp(prefix="containerd-gvisor-metrics-")
    try:
        bundle(directory, timeout + 30)
        os.makedirs(root, mode=0o711, exist_ok=True)
        # Detached, its output to files: the sandbox keeps running after runsc returns.
        with open(os.path.join(directory, "stderr"), "w+", encoding="utf-8") as stderr:
            started = subprocess.run(["timeout", "--kill-after=5", str(timeout), *runsc, "run", "--detach", "--bundle",
                                      directory, sandbox], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=stderr, check=False)
            stderr.seek(0)
            said = " | ".join(stderr.read().strip().splitlines()[-3:])
        if started.returncode != 0:
            raise Failure(f"a gVisor sandbox with handler {command['name']}'s flags did not start in {root} "
                          f"({' '.join(runsc)} run): {said or 'exit ' + str(started.returncode)}")
        deadline, text = time.monotonic() + timeout, ""
        while True:
            try:
                status, text = get(address, "/metrics", timeout=10)
                text = text if status == 200 else f"HTTP {status}: {text[:200]}"
            except OSError as err:
                text = f"no answer ({err})"
            if exported(text, sandbox):
                return {"name": command["name"], "sandbox": sandbox, "address": address}
            if time.monotonic() > deadline:
                break
            time.sleep(1)
        raise Failure(f"gVisor's metric server on {address} does not export the sandbox {sandbox} that handler "
                      f"{command['name']}'s flags started in {root} (no sandbox_running or sandbox_presence series for it "
                      f"within {timeout} s{'; ' + text if text.startswith(('no answer', 'HTTP')) else ''})")
    finally:
        subprocess.run([*runsc[:2], "delete", "--force", sandbox], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        shutil.rmtree(directory, ignore_errors=True)
