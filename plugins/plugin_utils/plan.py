# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""Every decision of a run, made once on the control node from the role's inputs and one read of the node.

check() refuses bad inputs and nodes that cannot run gVisor before anything is fetched or changed, and
says where the release comes from; plan() then decides, from the release's checksums, everything the
run does: what to download, each file's new text, the sandboxes that prove it, whether containerd and
Docker restart. The tasks only carry the result to the node.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import sys

from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils import metrics, upstream
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.plugin_utils import containerd_config
from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.plugin_utils.containerd_config import ConfigError

PREFIX = "containerd_gvisor_"
SHA512 = re.compile(r"[0-9a-fA-F]{128}")


class Refusal(Exception):
    """Why the run stops; nothing on the node changed."""


def release_date(version):
    """yyyymmdd of a release name or a runsc --version line; '' when it names none (latest)."""
    found = re.search(r"(?:^|release-|~)(\d{8})", version or "")
    return found.group(1) if found else ""


def text_of(read, path):
    """The text of a file node_info read, None when it does not exist; refuses bytes that are not UTF-8."""
    if not read or not read.get("exists"):
        return None
    data = base64.b64decode(read["content"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise Refusal(f"{path} line {line} holds the byte 0x{data[err.start]:02x}, which is not UTF-8 (TOML files are "
                      "UTF-8; containerd reads it as Latin-1): write that character in UTF-8. The node was left unchanged") from None


class Inputs(dict):
    """The role's variables without their containerd_gvisor_ prefix."""

    @classmethod
    def of(cls, variables):
        return cls({name[len(PREFIX):]: value for name, value in variables.items() if name.startswith(PREFIX)})

    def flag(self, name):
        return boolean(self[name], strict=False)

    def handlers(self):
        """Each handler with every key: the list, or the one built from the single-handler variables."""
        given = self["handlers"] or [{"name": self["runtime_handler"], "platform": self["platform"],
                                      "runsc_config": self["runsc_config"], "runsc_config_path": self["runsc_config_path"]}]
        return [{"platform": "auto", "runsc_config": {}, "shim_config": {}, "metrics": True, **handler} for handler in given]

    def where(self, index, key):
        """The variable a handler's key comes from, for messages."""
        if self["handlers"]:
            return f"containerd_gvisor_handlers[{index}].{key}"
        return PREFIX + {"name": "runtime_handler"}.get(key, key if key in ("platform", "runsc_config") else "runsc_config_path")


def input_problems(inputs):
    """Every input problem argument_specs cannot catch, each naming the variable and what would be valid."""
    problems, version, channel = [], str(inputs["version"]), inputs["channel"]
    forms = {"release": "'latest', a date such as '20240729' or a point release such as '20240729.0' (yyyymmdd is a "
                        "placeholder)", "nightly": "'latest' or a day such as '2026-10-12'", "master": "'latest'"}
    if version.startswith("release-"):
        problems.append(f"containerd_gvisor_version '{version}' is a git tag; the release bucket names releases "
                        f"without the prefix: use '{version[8:]}'.")
    elif not re.fullmatch(upstream.CHANNELS[channel], version):
        problems.append(f"containerd_gvisor_version '{version}' is not a release name of the {channel} channel "
                        f"(containerd_gvisor_channel): use {forms[channel]}.")
    elif inputs["release_source"] == "github" and (
            channel != "release" or version != "latest" and version[:8] < upstream.GITHUB_SINCE):
        problems.append(f"gVisor's GitHub releases carry the release channel from {upstream.GITHUB_SINCE}.0 on: for "
                        f"{channel} {version}, set containerd_gvisor_release_source: bucket.")
    for name, example in (("mirror_url", "https://storage.googleapis.com/gvisor/releases"),
                          ("github_url", "https://github.com/google/gvisor/releases")):
        url = str(inputs[name])
        if not re.match(r"https?://[^/]+", url):
            problems.append(f"{PREFIX}{name} '{url}' must be an http:// or https:// URL, e.g. {example}.")
        elif re.match(r"https?://[^/@]*@", url):
            problems.append(f"{PREFIX}{name} holds credentials (user:password@): they would show in logs and records; "
                            "set containerd_gvisor_url_username and containerd_gvisor_url_password instead (the password "
                            "is never shown).")
    for name, value in inputs["checksums"].items():
        if not isinstance(value, str) or not SHA512.fullmatch(value):
            problems.append(f"containerd_gvisor_checksums.{name} must be a sha512 checksum (128 hex digits), got "
                            f"'{str(value)[:77] + '...' if len(str(value)) > 80 else value}'.")
    problems += [f"{PREFIX}{name} must be positive." for name in ("download_timeout", "download_retries")
                 if int(inputs[name]) < 1]
    problems += [f"{PREFIX}{name} '{inputs[name]}' must be an absolute path." for name in
                 ("bin_dir", "state_dir", "staging_dir", "containerd_config_path", "containerd_dropin_path")
                 if not str(inputs[name]).startswith("/")]
    handlers = inputs.handlers()
    for index, handler in enumerate(handlers):
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", str(handler["name"])):
            problems.append(f"{inputs.where(index, 'name')} '{handler['name']}' is not a valid handler name: use a DNS "
                            "label (lower-case letters, digits and '-', at most 63 characters), e.g. 'gvisor'.")
        if handler["platform"] not in ("auto", *upstream.PLATFORMS):
            problems.append(f"{inputs.where(index, 'platform')} '{handler['platform']}' is not a platform: use auto, "
                            f"{', '.join(sorted(upstream.PLATFORMS))}.")
        where = inputs.where(index, "runsc_config")
        for key, value in handler["runsc_config"].items():
            if not isinstance(key, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", key):
                problems.append(f"{where} key '{key}' is not a runsc flag name (lowercase letters, digits, '-' and '_', "
                                "starting with a letter or digit).")
            elif not isinstance(value, (str, int, float, bool)):
                kind = "null" if value is None else "dict" if isinstance(value, dict) else "list"
                problems.append(f"{where}.{key} must be a string, number or boolean (runsc flags are strings), got {kind}.")
        problems += [f"containerd_gvisor_handlers[{index}].shim_config key '{key}' is not an option of the shim's "
                     "runsc.toml (e.g. log_path, log_level)." for key in handler["shim_config"]
                     if not re.fullmatch(r"[a-z_]+", str(key))]
        if not str(handler["runsc_config_path"]).startswith("/"):
            problems.append(f"The runsc.toml path of handler '{handler['name']}' must be an absolute path.")
    if inputs.flag("metrics") and inputs["state"] == "present":
        problems += metrics_problems(inputs, handlers)
    names = [handler["name"] for handler in handlers]
    if len(set(names)) != len(names):
        problems.append(f"containerd_gvisor_handlers names a handler twice: {', '.join(names)}.")
    paths = [handler["runsc_config_path"] for handler in handlers]
    for path in sorted({path for path in paths if paths.count(path) > 1}):
        sharing = [handler["name"] for handler in handlers if handler["runsc_config_path"] == path]
        problems.append(f"Handlers {' and '.join(sharing)} share the runsc.toml {path}: each handler needs a "
                        "runsc_config_path of its own, as the file holds one handler's platform and flags.")
    return problems


def node_problems(inputs, node, arch):
    """What keeps this node from running gVisor as asked."""
    problems, handlers = [], inputs.handlers()
    if arch not in upstream.ARCHES:
        problems.append(f"gVisor has no release for architecture '{arch}' (containerd_gvisor_arch, or the node's own): "
                        f"supported are {', '.join(upstream.ARCHES)}, named as the kernel names them (x86_64, not amd64; "
                        "aarch64, not arm64).")
    if node["containerd"]["rc"] != 0:
        problems.append(f"containerd is not installed on this node (containerd --version: {node['containerd']['stderr'].strip()}). "
                        "Install containerd first; the playbook gvisor_nodes.containerd_gvisor.node does both.")
    if any(handler["platform"] == "kvm" for handler in handlers) and not node["devices"].get("/dev/kvm"):
        problems.append("A handler uses the kvm platform, but this node has no /dev/kvm. Load the kvm module (modprobe "
                        "kvm_intel, or kvm_amd), enable nested virtualisation when the node is a VM (on its host: kvm_intel "
                        "nested=1), or use the systrap platform.")
    missing = [path for path in upstream.NVIDIA_DEVICES if not node["devices"].get(path)]
    if any(boolean(h["runsc_config"].get("nvproxy", False), strict=False) for h in handlers) and missing:
        problems.append(f"A handler uses nvproxy (GPU), but {', '.join(missing)} are missing: install and load the NVIDIA "
                        "driver on the node first (nvidia-smi must work, and nvidia-modprobe -u -c=0 creates /dev/nvidia-uvm).")
    for server in metrics_servers(inputs, ""):
        held = node.get("metrics", {}).get(server["address"], "")
        if held not in ("", "ours"):
            problems.append(f"{PREFIX}{server['variable']} {server['address']} is already in use on this node, by {held}: "
                            f"choose a free address for gVisor's metric server ({PREFIX}{server['variable']}), or stop "
                            "what listens there.")
    if node.get("staging_noexec"):
        problems.append(f"containerd_gvisor_staging_dir {inputs['staging_dir']} is on a filesystem mounted noexec "
                        f"({node['staging_noexec']}): the role runs the downloaded runsc there to check it before "
                        "installing it. Set containerd_gvisor_staging_dir to a directory on another filesystem.")
    return problems


def metrics_problems(inputs, handlers):
    """What keeps the metric servers' addresses from working, and flags that would contradict them."""
    problems, servers = [], metrics_servers(inputs, "")
    for server in servers:
        name, address = PREFIX + server["variable"], server["address"]
        try:
            exposed = not metrics.loopback(address)
        except metrics.AddressError as err:
            problems.append(f"{name} '{address}' is not an address gVisor's metric server listens on: {err} (e.g. "
                            "127.0.0.1:1337, :1337 or /run/containerd-gvisor/metrics.sock).")
            continue
        if exposed and not inputs.flag("metrics_expose"):
            problems.append(f"{name} '{address}' can be reached from other machines, and gVisor's metric server has no "
                            "authentication: whoever reaches it can list every sandbox on the node, with its pod and "
                            "namespace. Set containerd_gvisor_metrics_expose: true to serve it there anyway (and limit who "
                            "can reach it), or listen on loopback (127.0.0.1:1337) or a unix socket path.")
    if len(servers) == 2 and servers[0]["address"] == servers[1]["address"]:
        problems.append("containerd_gvisor_metrics_docker_address must differ from containerd_gvisor_metrics_address: a "
                        "metric server watches one runsc root, and Docker keeps its sandboxes in another one than "
                        "containerd, so each has a server of its own.")
    if not str(inputs["metrics_root"]).startswith("/"):
        problems.append(f"containerd_gvisor_metrics_root '{inputs['metrics_root']}' must be an absolute path.")
    for index, handler in enumerate(handlers):
        if "metric-server" in handler["runsc_config"] and boolean(handler["metrics"], strict=False):
            problems.append(f"{inputs.where(index, 'runsc_config')}.metric-server: with containerd_gvisor_metrics on, each "
                            "handler's metric-server flag is containerd_gvisor_metrics_address (it must match the "
                            "server's); remove it, or set the handler's metrics: false.")
    return problems


def metrics_servers(inputs, bin_dir):
    """The metric servers asked for: containerd's, and Docker's when Docker is on; none with metrics off."""
    if not inputs.flag("metrics") or inputs["state"] != "present":
        return []
    servers = [("containerd", inputs["metrics_root"], "metrics_address")]
    servers += [("docker", upstream.DOCKER_RUNSC_ROOT, "metrics_docker_address")] if inputs.flag("docker") else []
    return [{"root_of": root_of, "root": str(root), "address": str(inputs[variable]), "variable": variable,
             "bin_dir": bin_dir, "after": f"{root_of}.service", "unit": metrics.unit_name(root_of)}
            for root_of, root, variable in servers]


def check(inputs, node=None):
    """Refuse what cannot work; return where the release comes from (without a node: for playbooks/mirror.yml)."""
    if containerd_config.tomllib is None:
        raise Refusal(f"gvisor_nodes.containerd_gvisor needs Python 3.11 or later on the control node (for tomllib); "
                      f"this one is {sys.version.split()[0]}")
    problems = input_problems(inputs)
    if problems:
        raise Refusal(" ".join(problems))
    if node is None:
        return {"release": release_source(inputs, {"record": {}, "record_problem": ""}, inputs["arch"]), "warnings": []}
    if node["config"].get("dump_rc", 0) != 0:
        raise Refusal(f"containerd cannot parse {inputs['containerd_config_path']}: {node['config']['dump_error']}. "
                      "The file was left unchanged; fix it and run again.")
    arch = inputs["arch"] or node["arch"]
    if inputs["state"] == "present":
        problems = node_problems(inputs, node, arch)
        if problems:
            raise Refusal(" ".join(problems))
    containerd = node["containerd"]["version"] or "0"
    warnings = [bug["why"] for bug in upstream.BUGGY_CONTAINERD if upstream.version_tuple(bug["from"])
                <= upstream.version_tuple(containerd) < upstream.version_tuple(bug["below"])]
    return {"release": release_source(inputs, node, arch), "warnings": warnings}


def release_source(inputs, node, arch):
    """Where the release lives, and its files' sha512 when they are known without asking the mirror: from the
    install record (whose files on disk were verified) for a dated release already installed, or pinned.

    The release bucket serves each channel as <mirror>/<channel>/<version>/<arch>/, every file with a .sha512
    beside it; GitHub serves a release's assets under <github>/download/release-<version>/ (<github>/latest/download/
    for the newest), gvisor-<arch>.tar.bz2 among them, with one SHA512SUMS for all.
    """
    version, channel = str(inputs["version"]), inputs["channel"]
    pins = {name: digest.lower() for name, digest in inputs["checksums"].items()}
    record = node["record"].get("release", {}) if not node["record_problem"] else {}
    if inputs["release_source"] == "github":
        base = str(inputs["github_url"]).rstrip("/")
        path = "latest/download" if version == "latest" else f"download/release-{version if '.' in version else version + '.0'}"
        source = {"url": f"{base}/{path}", "path": path, "sums": f"{base}/{path}/SHA512SUMS",
                  "archive": upstream.GITHUB_ARCHIVE.format(arch=arch), "loose": False}
    else:
        path = f"{channel}/{version}/{arch}"
        url = f"{str(inputs['mirror_url']).rstrip('/')}/{path}"
        source = {"url": url, "path": path, "sums": f"{url}/{upstream.ARCHIVE}.sha512", "archive": upstream.ARCHIVE,
                  "loose": True}
    source.update(version=version, channel=channel, arch=arch, layout="", artifacts={})
    if (version != "latest" and record.get("version") == version and record.get("channel", "release") == channel
            and record.get("arch") == arch and pins.items() <= record.get("artifacts", {}).items()):
        source.update(layout=record["layout"], artifacts=record["artifacts"])
    elif source["archive"] in pins:
        source.update(layout="archive", artifacts={source["archive"]: pins[source["archive"]]})
    elif source["loose"] and set(upstream.LOOSE_FILES) <= set(pins):
        source.update(layout="loose", artifacts={name: pins[name] for name in upstream.LOOSE_FILES})
    return source


def sha512_line(text, name):
    """The sha512 of name in a sha512sum file (a bare checksum counts for the file it is named after), or None."""
    for line in text.splitlines():
        found = re.fullmatch(r"\s*([0-9a-fA-F]{128})(?:\s+\*?(?:\S*/)?(\S+))?\s*", line)
        if found and found.group(2) in (None, name):
            return found.group(1).lower()
    return None


def with_checksums(source, answers):
    """The source with the sha512 of its files from the mirror's answers: the archive's checksum file (on GitHub,
    SHA512SUMS), and for a bucket release without an archive the loose files' ones."""
    if source["artifacts"]:
        return source
    mine = {}
    for answer in answers:
        item = answer.get("item") or {}
        release, name = (item, None) if isinstance(item, dict) else (item[0], item[1])
        if release.get("url") == source["url"]:
            mine[name] = answer
    loose = [mine.get(name, {}) for name in upstream.LOOSE_FILES] if source["loose"] else []
    failed = [answer for answer in [mine.get(None, {})] + loose if answer and answer.get("status") not in (200, 404)]
    if failed:
        raise Refusal(failed[0].get("msg") or f"GET {failed[0].get('url')} failed")
    if mine.get(None, {}).get("status") == 200:
        sums = {source["archive"]: mine[None]}
    elif loose and all(answer.get("status") == 200 for answer in loose):
        sums = dict(zip(upstream.LOOSE_FILES, loose))
    else:
        tried = [source["sums"]] + [f"{source['url']}/{name}.sha512" for name in upstream.LOOSE_FILES if source["loose"]]
        where = "containerd_gvisor_github_url" if not source["loose"] else "containerd_gvisor_mirror_url"
        raise Refusal(f"gVisor release '{source['version']}' for {source['arch']} was not found: tried "
                      f"{' and '.join(tried)} (HTTP 404). Check containerd_gvisor_version and {where}.")
    artifacts = {}
    for name, answer in sums.items():
        content = answer.get("content", "")
        artifacts[name] = sha512_line(content, name)
        if not artifacts[name]:
            shown = content if len(content) <= 80 else content[:77] + "..."
            raise Refusal(f"{answer['url']} is not a sha512sum line for {name}: got '{shown}'.")
    return {**source, "layout": "archive" if source["archive"] in artifacts else "loose", "artifacts": artifacts}


def runsc_toml(handler, flags, binary_name):
    """The shim's runsc.toml for one handler: its options, then runsc's flags as strings."""
    lines = ["# Managed by Ansible (gvisor_nodes.containerd_gvisor): options of containerd's gVisor shim for the",
             f'# runtime handler "{handler["name"]}". [runsc_config] holds runsc flags, as strings.']
    lines += [f"binary_name = {containerd_config.toml_string(binary_name)}"] if binary_name else []
    lines += [f"{key} = {containerd_config.toml_string(str(value))}" for key, value in sorted(handler["shim_config"].items())]
    lines += ["", "[runsc_config]"]
    lines += [f"  {key} = {containerd_config.toml_string(value)}" for key, value in sorted(flags.items())]
    return "\n".join(lines) + "\n"


def docker_daemon_json(text, path, runtime, runsc="", args=()):
    """Docker's daemon.json with the runtime registered (runsc given) or taken out; everything else kept."""
    try:
        data = json.loads(text) if text and text.strip() else {}
    except ValueError as err:
        raise Refusal(f"{path} is not valid JSON ({err}); fix it or remove it, the node was left unchanged") from None
    if not isinstance(data, dict) or not isinstance(data.get("runtimes", {}), dict):
        raise Refusal(f"{path} must hold a JSON object whose runtimes is an object; the node was left unchanged")
    merged = json.loads(json.dumps(data))
    runtimes = merged.setdefault("runtimes", {})
    if runsc:
        runtimes[runtime] = {"path": runsc, "runtimeArgs": list(args)}
    else:
        runtimes.pop(runtime, None)
        if not runtimes:
            del merged["runtimes"]
    return text or "" if merged == data else json.dumps(merged, indent=2, sort_keys=True) + "\n"


def uses_systemd_cgroup(dump):
    """Whether containerd's effective configuration runs runc with SystemdCgroup = true."""
    try:
        data = containerd_config.parse(dump or "", "containerd config dump")
        runtimes = containerd_config.dig(data, upstream.RUNTIMES_TABLE[containerd_config.config_version(data, "dump")])
    except ConfigError:
        return False
    return any(isinstance(table, dict) and (name == "runc" or table.get("runtime_type") == "io.containerd.runc.v2")
               and (table.get("options") or {}).get("SystemdCgroup") is True for name, table in (runtimes or {}).items())


def file_changes(wanted, read):
    """[{path, content, mode}] of each file whose wanted text (None: absent), owner or mode differs from the node's."""
    changes = []
    for path, content in wanted.items():
        old = read.get(path) or {"exists": False}
        if content is None:
            changed = old["exists"]
        else:
            changed = not old["exists"] or (text_of(old, path), old["owner"], old["group"], old["mode"]) != (
                content, "root", "root", "0644")
        if changed:
            changes.append({"path": path, "content": content, "mode": "0644"})
    return changes


def plan(variables, node=None, answers=None):
    """Everything the run does, for the release module, the download and the messages.

    Without answers, when the release's checksums are not known yet, only where to ask for them ("ask");
    the tasks ask the mirror and call again with its answers. Without a node: playbooks/mirror.yml's copy.
    """
    inputs = Inputs.of(variables)
    checked = check(inputs, node)
    if answers is None and not checked["release"]["artifacts"] and inputs["state"] == "present":
        return {"changed": False, "ask": True, "release": checked["release"], "warnings": checked["warnings"]}
    # Warnings are said once, by the first call.
    warnings = checked.pop("warnings") if answers is None else []
    if node is None:
        return mirror(inputs, with_checksums(checked["release"], answers or []))
    try:
        result = (present(inputs, node, with_checksums(checked["release"], answers or [])) if inputs["state"] == "present"
                  else absent(inputs, node))
    except ConfigError as err:
        raise Refusal(str(err)) from None
    return {**result, "ask": False, "warnings": warnings + result.pop("warnings", [])}


def checksum_source(inputs, release, name):
    """Where a file's checksum comes from, for messages."""
    if name.lower() in {pinned.lower() for pinned in inputs["checksums"]}:
        return "containerd_gvisor_checksums"
    return release["sums"] if name == release["archive"] else f"{release['url']}/{name}.sha512"


def mirror(inputs, release):
    """playbooks/mirror.yml: the release's files, each into the mirror directory where its source has it, and
    their checksum files (a .sha512 beside each in the bucket's layout, SHA512SUMS in GitHub's)."""
    directory = f"{str(inputs['mirror_dir']).rstrip('/')}/{release['path']}"
    lines = {name: f"{digest}  {name}\n" for name, digest in release["artifacts"].items()}
    sums = ([{"dest": f"{directory}/{name}.sha512", "content": line} for name, line in lines.items()] if release["loose"]
            else [{"dest": f"{directory}/SHA512SUMS", "content": "".join(lines.values())}])
    return {"changed": False, "release": release, "mirror_dir": directory, "checksum_files": sums,
            "downloads": [{"name": name, "url": f"{release['url']}/{name}", "checksum": f"sha512:{digest}",
                           "checksum_source": checksum_source(inputs, release, name), "dest": f"{directory}/{name}"}
                          for name, digest in release["artifacts"].items()]}


def config_changes(inputs, node, wanted, remove):
    """The configuration files containerd reads, changed (containerd_config.changes) into module file entries."""
    config = node["config"]
    imported = {path: text_of(read, path) for path, read in node["imports"].items()}
    changed = containerd_config.changes(
        node["containerd"]["version"] or "0", inputs["containerd_config_path"], text_of(config, inputs["containerd_config_path"]),
        inputs["containerd_dropin_path"], text_of(node["files"].get(inputs["containerd_dropin_path"]), inputs["containerd_dropin_path"]),
        {path: text for path, text in imported.items() if text is not None}, wanted, remove, config.get("dump", ""))
    return [{"path": path, "content": text, "mode": config.get("mode", "0644") if path == inputs["containerd_config_path"]
             else "0644", "backup": inputs.flag("containerd_config_backup") and path == inputs["containerd_config_path"]}
            for path, text in changed.items()]


def present(inputs, node, release):
    installed = node["record"].get("release", {}) if not node["record_problem"] else {}
    install = installed.get("arch") != release["arch"] or installed.get("artifacts") != release["artifacts"]
    # The same files under another name (latest, then its date; another channel or source): only the record changes,
    # so that the next run knows the release by the name it is asked for.
    renamed = not install and any(installed.get(key) != release[key] for key in ("version", "channel", "url"))
    bin_dir = str(inputs["bin_dir"]).rstrip("/") or "/"
    in_path = bin_dir in upstream.CONTAINERD_PATH
    runsc = f"{bin_dir}/{upstream.RUNSC}"
    date = release_date(release["version"]) if install else release_date(node["runsc_version"].split("\n")[0])
    systemd = uses_systemd_cgroup(node["config"].get("dump"))
    handlers, wanted, tables, smoke, args = inputs.handlers(), {}, {}, [], {}
    servers = metrics_servers(inputs, bin_dir)
    for handler in handlers:
        platform = upstream.default_platform(date) if handler["platform"] == "auto" else handler["platform"]
        reports = bool(servers) and boolean(handler["metrics"], strict=False)
        given = {"platform": platform, **({"systemd-cgroup": "true"} if systemd else {}),
                 **({"metric-server": servers[0]["address"]} if reports else {}), **handler["runsc_config"]}
        flags = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in given.items()}
        args[handler["name"]] = [f"--{key}={value}" for key, value in flags.items() if key != "systemd-cgroup"]
        wanted[handler["runsc_config_path"]] = runsc_toml(handler, flags, "" if in_path else runsc)
        tables[handler["name"]] = containerd_config.handler_table(
            handler["runsc_config_path"], "" if in_path else f"{bin_dir}/{upstream.SHIM}")
        # runsc do, as the shim starts a sandbox but without a network (systemd-cgroup fits only the shim).
        smoke.append({"name": handler["name"], "argv": [runsc, *[arg for arg in args[handler["name"]] if not
                                                                 arg.startswith("--network=")], "--network=none", "do", "dmesg"]})
    recorded = node["handlers"]
    removed = [name for name in recorded if name not in tables]
    wanted.update({recorded[name]: None for name in removed if recorded[name] not in wanted})
    kvm = upstream.KVM_MODULES.get(node["cpu_vendor"], "")
    wanted[upstream.KVM_MODULES_LOAD] = kvm + "\n" if kvm and any(h["platform"] == "kvm" for h in handlers) else None
    record = {handler["name"]: handler["runsc_config_path"] for handler in handlers}
    wanted[f"{inputs['state_dir']}/handlers.json"] = json.dumps(record, indent=4, sort_keys=True) + "\n"
    docker = inputs.flag("docker")
    # Docker's sandboxes report to Docker's own metric server (they live in another runsc root).
    docker_args = [arg for arg in args[handlers[0]["name"]] if not arg.startswith("--metric-server=")]
    docker_args += [f"--metric-server={server['address']}" for server in servers if server["root_of"] == "docker"]
    if docker:
        path = inputs["docker_daemon_json"]
        wanted[path] = docker_daemon_json(text_of(node["files"].get(path), path), path, inputs["docker_runtime"], runsc,
                                          docker_args)
    # The release's metric-server helper decides how the unit starts the server; the module looks again after installing.
    helper = release["layout"] != "loose" if install else metrics.HELPER in node["record"].get("installed_files", {})
    units = {f"{metrics.UNIT_DIR}/{metrics.unit_name(root_of)}": next((s for s in servers if s["root_of"] == root_of), None)
             for root_of in ("containerd", "docker")}
    wanted.update({path: metrics.unit_text(server, helper) if server else None for path, server in units.items()})
    configure = inputs.flag("configure_containerd")
    configs = config_changes(inputs, node, tables, removed) if configure else []
    files = configs + file_changes(wanted, node["files"])
    written = {entry["path"] for entry in files}
    files += [{"path": path, "content": wanted[path], "mode": "0644"} for path, server in units.items()
              if server and install and path not in written]
    for entry in files:
        if units.get(entry["path"]):
            entry["server"] = units[entry["path"]]
    running = node["services"]
    # A server starts (or restarts) with a new unit, a new release, or when it is not running.
    start = [server for path, server in units.items() if server and (install or path in written or not running.get(server["unit"]))]
    stop = metrics_units_to_stop(node, [path for path, server in units.items() if not server])
    # With containerd's configuration left to another tool, say what it must carry when containerd lacks it.
    effective = uses_runtimes(node["config"].get("dump"))
    missing = [] if configure else [name for name, table in tables.items() if not containerd_config.holds(effective.get(name), table)]
    # containerd reads its configuration only at start: after a change, or a change an earlier run made behind its back.
    restart = (inputs.flag("restart_containerd") and running.get("containerd", False)
               and (bool(configs) or node["config_newer"]))
    change = install or renamed or bool(files) or restart or bool(start) or bool(stop)
    smoke_test = inputs["smoke_test"] == "always" or inputs["smoke_test"] == "changed" and change
    docker_restart = docker and running.get("docker", False) and any(f["path"] == inputs["docker_daemon_json"] for f in files)
    staging = f"{str(inputs['staging_dir']).rstrip('/')}/run-{secrets.token_hex(8)}"
    controller = inputs["download_mode"] == "controller"
    cache = os.path.expanduser(str(inputs["download_cache_dir"]))
    downloads = [{"name": name, "url": f"{release['url']}/{name}", "checksum": f"sha512:{digest}",
                  "checksum_source": checksum_source(inputs, release, name),
                  "dest": f"{cache}/{digest}/{name}" if controller else f"{staging}/{name}"}
                 for name, digest in release["artifacts"].items()] if install else []
    previous = node["record"].get("release", {})
    held = f"gVisor {previous['version']} ({previous['layout']})" if previous else "no gVisor"
    ctr = smoke_test and inputs.flag("smoke_test_ctr") and bool(node["commands"]["ctr"])
    warnings = [f"containerd does not run the gVisor handlers {', '.join(missing)} as this role would register them, and "
                "containerd_gvisor_configure_containerd is false: give the tool that writes its configuration this entry, "
                "for kubespray in containerd_additional_runtimes:\n" + kubespray_runtimes(
                    {name: tables[name] for name in missing})] if missing else []
    return {
        "changed": False, "release": release, "install": install, "change": change, "downloads": downloads,
        "warnings": warnings,
        "unchanged": f"The node is unchanged: it keeps {held} in {bin_dir} and its configuration, and containerd was not restarted.",
        "controller_download": controller, "runsc_version": node["runsc_version"].split("\n")[0].replace("runsc version ", ""),
        "handlers": [handler["name"] for handler in handlers],
        "module_args": {
            "state": "present", "bin_dir": bin_dir, "state_dir": inputs["state_dir"], "staging_dir": staging,
            # Another run's staging directory younger than its longest download may still be in use.
            "staging_age": (int(inputs["download_timeout"]) + 60) * int(inputs["download_retries"]) + 600,
            "release": release if install else None, "record": release if renamed else None,
            "compatibility": {"containerd": node["containerd"]["version"], "ignore": inputs.flag("ignore_compatibility")},
            "platforms": sorted({flags_platform(a) for a in args.values()}),
            "files": files, "smoke": smoke if smoke_test else [], "timeout": int(inputs["smoke_test_timeout"]),
            "containerd": {"restart": restart, "config_path": inputs["containerd_config_path"], "socket": inputs["containerd_socket"],
                           "handlers": {name: upstream.RUNTIME_TYPE for name in tables} | {name: "" for name in removed}
                           if configure else {},
                           "ctr_smoke": [ctr_smoke(inputs, h) for h in handlers] if ctr else []},
            "docker": {"restart": docker_restart, "runtime": inputs["docker_runtime"], "present": True,
                       "smoke": docker_smoke(inputs) if docker and smoke_test and running.get("docker", False) else []},
            "metrics": {"start": start, "stop": stop, "proofs": metrics_proofs(servers, handlers, args, runsc, docker_args)
                        if smoke_test else []},
        },
    }


def metrics_units_to_stop(node, paths):
    """The metric server units (of these unit files) that run or are installed, to stop and disable."""
    return [os.path.basename(path) for path in paths
            if node["services"].get(os.path.basename(path)) or (node["files"].get(path) or {}).get("exists")]


def metrics_proofs(servers, handlers, args, runsc, docker_args):
    """A sandbox per handler that reports to containerd's server, and one with Docker's flags for Docker's: each started
    in its server's root with the handler's flags (no network), to be found in the server's /metrics."""
    proofs = []
    for server in servers:
        flags = ([(handler["name"], args[handler["name"]]) for handler in handlers if boolean(handler["metrics"], strict=False)]
                 if server["root_of"] == "containerd" else [("docker", docker_args)])
        for name, given in flags:
            argv = [runsc, *[arg for arg in given if not arg.startswith("--network=")], "--network=none"]
            proofs.append({"server": server, "name": name, "argv": argv})
    return proofs


def uses_runtimes(dump):
    """{handler: table} of the CRI runtimes in containerd's effective configuration."""
    try:
        data = containerd_config.parse(dump or "", "containerd config dump")
        return containerd_config.dig(data, upstream.RUNTIMES_TABLE[containerd_config.config_version(data, "dump")]) or {}
    except ConfigError:
        return {}


def kubespray_runtimes(tables):
    """The entries of kubespray's containerd_additional_runtimes that register these handlers, as YAML."""
    lines = []
    for name, table in tables.items():
        lines += [f"  - name: {name}", f"    type: {table['runtime_type']}", '    engine: ""', '    root: ""', "    options:"]
        lines += [f"      {key}: {value}" for key, value in table["options"].items()]
    return "\n".join(lines)


def flags_platform(args):
    return next(arg.split("=", 1)[1] for arg in args if arg.startswith("--platform="))


def ctr_smoke(inputs, handler):
    """A sandbox through containerd itself with the handler's runtime type and runsc.toml."""
    # Every flag before the root file system (--rootfs is a switch: the path is the first argument), and a PATH,
    # which ctr does not put into the container's environment.
    return {"name": handler["name"], "argv": ["ctr", "--address", inputs["containerd_socket"], "run", "--rm",
                                              "--runtime", upstream.RUNTIME_TYPE, "--runtime-config-path",
                                              handler["runsc_config_path"], "--env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                                              "--rootfs", "/", f"containerd-gvisor-smoke-{handler['name']}", "dmesg"]}


def docker_smoke(inputs):
    image = inputs["docker_smoke_image"]
    return ["docker", "run", "--rm", "--pull=never", f"--runtime={inputs['docker_runtime']}", "--network=none", image,
            "dmesg"] if image else []


def absent(inputs, node):
    """Taking gVisor off: every handler the role recorded and those it is told of now, then its files."""
    names = list(node["handlers"]) + [h["name"] for h in inputs.handlers() if h["name"] not in node["handlers"]]
    files = config_changes(inputs, node, {}, names)
    restart = inputs.flag("restart_containerd") and node["services"].get("containerd", False) and bool(files)
    path, docker_restart = inputs["docker_daemon_json"], False
    if inputs.flag("docker"):
        old = text_of(node["files"].get(path), path)
        new = docker_daemon_json(old, path, inputs["docker_runtime"])
        if new != (old or ""):
            files.append({"path": path, "content": new, "mode": node["files"][path].get("mode", "0644")})
            docker_restart = node["services"].get("docker", False)
    remove = sorted(p for p, read in node["files"].items() if read.get("exists") and p not in (path, inputs["containerd_dropin_path"]))
    stop = metrics_units_to_stop(node, [f"{metrics.UNIT_DIR}/{metrics.unit_name(root_of)}" for root_of in ("containerd", "docker")])
    return {
        "changed": False, "install": False, "change": bool(files or remove or stop or node["record"] or node["runsc_version"]),
        "downloads": [], "controller_download": False, "release": {}, "runsc_version": "", "handlers": names,
        "module_args": {
            "state": "absent", "bin_dir": str(inputs["bin_dir"]), "state_dir": inputs["state_dir"], "files": files,
            "remove": remove,
            "containerd": {"restart": restart, "config_path": inputs["containerd_config_path"],
                           "socket": inputs["containerd_socket"], "handlers": {name: "" for name in names}},
            "docker": {"restart": docker_restart, "runtime": inputs["docker_runtime"], "present": False},
            "metrics": {"start": [], "stop": stop, "proofs": []},
        },
    }
