# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""What proves a change on the node: the release's own runsc, containerd's effective configuration,
containerd and Docker restarted on it, and real sandboxes. Each check raises Failure saying why."""

from __future__ import annotations

import os
import re
import time

from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils import upstream
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils.transaction import Failure

BANNER = "Starting gVisor"


def runsc_release(run, runsc, compatibility, platforms, warn):
    """Ask the staged runsc what it is; refuse a release this containerd cannot run or that lacks a platform."""
    os.chmod(runsc, 0o700)
    rc, out, err = run([runsc, "--version"])
    if rc != 0:
        raise Failure(f"the staged runsc does not run ({runsc} --version: {(err or out).strip()})")
    name = out.splitlines()[0].replace("runsc version ", "") if out else ""
    date = re.search(r"(?:release-|~)(\d{8})", name)
    date = date.group(1) if date else ""
    containerd = compatibility.get("containerd") or ""
    for rule in upstream.INCOMPATIBLE:
        if date and containerd and date >= rule["gvisor_from"] and (
                upstream.version_tuple(containerd) < upstream.version_tuple(rule["containerd_below"])):
            if compatibility.get("ignore"):
                warn(f"gVisor {name} with containerd {containerd}: {rule['why']}; installed anyway, as asked.")
                continue
            raise Failure(f"gVisor {name} (what the release's runsc --version says) does not work with containerd "
                          f"{containerd} on this node: {rule['why']} ({rule['source']}). {rule['fix']}")
    missing = sorted(set(platforms) - set(upstream.platforms_of(date)))
    if missing:
        raise Failure(f"gVisor {name} has no {' or '.join(missing)} platform (it has {', '.join(upstream.platforms_of(date))}); "
                      "set containerd_gvisor_platform (or the handler's platform) to one of them, or auto")
    return name


def sandbox(run, command, timeout):
    """Start one sandbox; coreutils' timeout kills it when it takes too long. Raises Failure with runsc's last words."""
    rc, out, err = run(["timeout", "--kill-after=5", str(timeout)] + command["argv"])
    if rc == 0 and BANNER in out:
        return {"name": command["name"], "argv": command["argv"], "rc": rc, "stdout": out}
    said = f"timed out after {timeout} s" if rc in (124, 137) else err
    said = " | ".join(said.split("Usage:", 1)[0].strip().splitlines()[-3:]) or out.strip() or "no output"
    raise Failure(f"a gVisor sandbox did not start with runtime handler {command['name']} ({' '.join(command['argv'])}): {said}")


def dump_runtimes(text):
    """{handler: runtime_type} of the CRI runtimes in `containerd config dump` output (any version, any quoting)."""
    found, current = {}, None
    for line in text.splitlines():
        header = re.match(r"""\s*\[.*\.runtimes\.["']?([^"'\].]+)["']?\]\s*$""", line)
        if header:
            current = header.group(1)
            found.setdefault(current, "")
        elif re.match(r"\s*\[", line):
            current = None if not re.match(r"""\s*\[.*\.runtimes\.["']?[^"'\].]+["']?\.""", line) else current
        elif current:
            value = re.match(r"""\s*runtime_type\s*=\s*["'](.*)["']\s*$""", line)
            if value:
                found[current] = value.group(1)
    return found


def effective_config(run, config_path, handlers):
    """containerd's effective configuration (imports included) must have each handler as wanted ('' for none)."""
    rc, out, err = run(["containerd", "--config", config_path, "config", "dump"])
    if rc != 0:
        raise Failure(f"containerd cannot read the new configuration ({err.strip()})")
    types = dump_runtimes(out)
    wrong = {name: types.get(name, "") for name, wanted in handlers.items() if types.get(name, "") != wanted}
    if wrong:
        raise Failure("containerd's effective configuration (containerd config dump) does not have the runtime handlers as "
                      "written: " + ", ".join(f"{name} has runtime type {found or 'none'}, expected {handlers[name] or 'none'}"
                                              for name, found in wrong.items()))


def wait(run, argv, seconds=30):
    """Run argv (each try at most 5 s) until it succeeds or seconds have passed; returns its last (rc, out, err)."""
    deadline = time.monotonic() + seconds
    while True:
        rc, out, err = run(["timeout", "5"] + argv)
        if rc == 0 or time.monotonic() > deadline:
            return rc, out, err
        time.sleep(1)


def restart(run, service):
    """systemctl restart, with systemd's start limit cleared first: a node restarted several times in a row (a change
    and its rollback, say) would otherwise be refused ("Start request repeated too quickly")."""
    run(["systemctl", "reset-failed", service])
    return run(["systemctl", "restart", service])


def restart_containerd(run, containerd):
    """Restart containerd and check it loaded its CRI plugin and every handler as written."""
    rc, _out, err = restart(run, "containerd")
    if rc != 0:
        raise Failure(f"Restart containerd: {err.strip() or 'systemctl restart containerd failed'}")
    rc, out, err = wait(run, ["ctr", "--address", containerd["socket"], "plugins", "ls"])
    if rc != 0:
        raise Failure(f"Wait for containerd: it does not answer on {containerd['socket']} ({err.strip()})")
    cri = [line for line in out.splitlines() if re.search(r"\scri\s", line)]
    if not cri or any(not line.rstrip().endswith(" ok") for line in cri):
        raise Failure(f"Check containerd's CRI plugin: {'; '.join(' '.join(line.split()) for line in cri) or 'not loaded'}")
    effective_config(run, containerd["config_path"], containerd["handlers"])


def ctr_sandbox(run, command, socket, timeout):
    """A sandbox through containerd itself; the container is removed whatever happens."""
    container = command["argv"][-2]
    try:
        return sandbox(run, command, timeout)
    finally:
        run(["ctr", "--address", socket, "tasks", "rm", "-f", container])
        run(["ctr", "--address", socket, "containers", "rm", container])


def restart_docker(run, docker):
    """Restart Docker and check it lists gVisor's runtime (or, when taking it off, does not)."""
    rc, _out, err = restart(run, "docker")
    if rc != 0:
        raise Failure(f"Restart Docker: {err.strip()}")
    rc, out, err = wait(run, ["docker", "info", "--format", "{{json .Runtimes}}"])
    if rc != 0 or (f'"{docker["runtime"]}"' in out) != docker["present"]:
        raise Failure(f"Check Docker lists gVisor's runtime: docker info says {out.strip() or err.strip()}")


def last_log_lines(run):
    _rc, out, _err = run(["journalctl", "--unit", "containerd.service", "--lines", "6", "--no-pager", "--output", "cat"])
    return " | ".join(line.strip() for line in out.splitlines() if line.strip())
