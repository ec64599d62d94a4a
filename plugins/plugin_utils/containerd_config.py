# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""The one place that decides how containerd's configuration changes (on the control node).

containerd 2.0 and later merge a file named in `imports` into the main file key by key, so there the
handlers go into one drop-in file the role owns, in the main file's config version (a mismatch makes
containerd drop either the handlers or the main file's CRI settings), and config.toml gains at most
the `imports` entry. containerd 1.x replaces a whole plugin section with an imported one, so there
the handlers' tables are written into config.toml itself, between two marker comments at its end.

Every edit works on lines: a table of the same name found elsewhere is taken out with its lines (its
extra keys carried over), the new tables are appended, and the result must parse with tomllib to
exactly the old data plus (or minus) the managed keys. Anything else is refused, so the user's
lines and comments outside the managed tables stay as they were, or nothing changes at all.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import os
import re

try:
    import tomllib
except ImportError:  # Python 3.10: said by the check action, in words
    tomllib = None

from ansible_collections.gvisor_nodes.containerd_gvisor.plugins.module_utils.upstream import (
    OPTIONS_TYPE,
    RUNTIME_TYPE,
    RUNTIMES_TABLE,
    version_tuple,
)

BEGIN = "# BEGIN gvisor_nodes.containerd_gvisor"
BEGIN_LINE = BEGIN + ": gVisor's runtime handlers, written by Ansible (edits here are replaced)"
END = "# END gvisor_nodes.containerd_gvisor"
DROPIN_HEADER = "# gVisor's runtime handlers, written by Ansible (gvisor_nodes.containerd_gvisor); edits here are replaced."
RUNC_COMMENT = "# From `containerd config default`: containerd 1.x drops its built-in runc once a file defines a runtime."


class ConfigError(Exception):
    """Why a configuration cannot be changed safely; nothing was changed."""


# --- TOML text ---------------------------------------------------------------------------------


def toml_string(text):
    """A TOML basic string; characters outside ASCII are written as themselves (UTF-8)."""
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    return '"' + "".join(escapes.get(char) or (f"\\u{ord(char):04x}" if ord(char) < 0x20 or ord(char) == 0x7F else char)
                         for char in text) + '"'


def toml_key(key):
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_string(key)


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return value.isoformat() if hasattr(value, "isoformat") else repr(value)


def render_table(path, table, newline="\n"):
    """[path] with its keys, then its sub-tables, each as a [header] of its own."""
    out = [f"[{'.'.join(toml_key(part) for part in path)}]"]
    out += [f"  {toml_key(k)} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    text = newline.join(out) + newline
    return text + "".join(render_table(path + (k,), v, newline) for k, v in table.items() if isinstance(v, dict))


def newline_of(text):
    return "\r\n" if "\r\n" in text.split("\n", 1)[0] + "\n" else "\n"


def parse(text, path):
    if text.startswith("\ufeff"):
        raise ConfigError(f"{path} starts with a UTF-8 byte order mark, which TOML does not allow; remove it (the file was left unchanged)")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML ({err}); it was left unchanged") from None


def config_version(data, path):
    version = data.get("version", 1)
    if isinstance(version, bool) or version not in RUNTIMES_TABLE:
        raise ConfigError(f"{path} has version {version!r}; supported containerd config versions are 1, 2, 3 and 4")
    return version


def dig(data, path):
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def headers(lines):
    """(index, key path) of each line that is a [table] or [[array]] header."""
    for index, line in enumerate(lines):
        if not line.lstrip().startswith("["):
            continue
        try:
            node = tomllib.loads(line)
        except tomllib.TOMLDecodeError:
            continue
        path = []
        while isinstance(node, dict) and len(node) == 1:
            [(key, node)] = node.items()
            path.append(key)
        yield index, tuple(path)


def is_filler(line):
    return not line.strip() or line.lstrip().startswith("#")


def without_tables(text, path):
    """text without the lines of the table at path and its sub-tables; the comments and blank lines
    that close a table stay with what follows it."""
    lines = text.splitlines(keepends=True)
    found = list(headers(lines)) + [(len(lines), None)]
    ranges = []
    for (start, key), (stop, _next) in zip(found, found[1:]):
        if key[:len(path)] == path:
            while stop > start + 1 and is_filler(lines[stop - 1]):
                stop -= 1
            ranges.append((start, stop))
    for start, stop in reversed(ranges):
        del lines[start:stop]
        # One blank line where two would meet.
        if start > 0 and not lines[start - 1].strip() and (start == len(lines) or not lines[start].strip()):
            del lines[start - 1]
    return "".join(lines)


def line_naming(text, name):
    """The number of the first line (1-based) that names a key, for messages."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.lstrip().startswith("#") and re.search(rf"""(^|[\s.{{,["'])["']?{re.escape(name)}["']?\s*[.=\]]""", line):
            return number
    return 0


def pruned(data, path):
    """A copy of data without the empty tables along path (TOML does not tell them from missing ones)."""
    data = copy.deepcopy(data)
    for depth in range(len(path), 0, -1):
        parent = dig(data, path[:depth - 1])
        if isinstance(parent, dict) and parent.get(path[depth - 1]) == {}:
            del parent[path[depth - 1]]
    return data


def set_table(data, path, value):
    """Set (value) or drop (None) the table at path in data, creating its parents."""
    for depth, part in enumerate(path[:-1], 1):
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise ConfigError(f"{'.'.join(path[:depth])} is not a table")
    if value is None:
        data.pop(path[-1], None)
    else:
        data[path[-1]] = value


# --- the handlers' tables ------------------------------------------------------------------------


def handler_table(config_path, runtime_path=""):
    """The managed keys of one handler's runtime table."""
    table = {"runtime_type": RUNTIME_TYPE}
    if runtime_path:
        table["runtime_path"] = runtime_path
    table["options"] = {"TypeUrl": OPTIONS_TYPE, "ConfigPath": config_path}
    return table


def holds(current, wanted):
    """Whether an existing table already has every managed key as wanted (extra keys are the user's)."""
    return (isinstance(current, dict) and current.get("runtime_type") == wanted["runtime_type"]
            and current.get("runtime_path") == wanted.get("runtime_path")
            and isinstance(current.get("options"), dict)
            and all(current["options"].get(k) == v for k, v in wanted["options"].items()))


def merged(current, wanted):
    """wanted, plus the keys a table of the same name had beside the managed ones."""
    if not isinstance(current, dict):
        return copy.deepcopy(wanted)
    table = {k: copy.deepcopy(v) for k, v in current.items() if k not in ("runtime_type", "runtime_path", "options")}
    options = current.get("options") if isinstance(current.get("options"), dict) else {}
    return {**table, **copy.deepcopy(wanted), "options": {**options, **wanted["options"]}}


class Editor:
    """One file's text and data, edited table by table, each step checked."""

    def __init__(self, text, path):
        self.path, self.text = path, text
        self.newline = newline_of(text)
        self.data = parse(text, path)
        self.version = config_version(self.data, path)
        self.runtimes_path = RUNTIMES_TABLE[self.version]

    def runtimes(self):
        runtimes = dig(self.data, self.runtimes_path)
        if runtimes is not None and not isinstance(runtimes, dict):
            raise ConfigError(f"{'.'.join(self.runtimes_path)} in {self.path} is not a table")
        return runtimes or {}

    def take_out(self, name, what="merge the {name} runtime into"):
        """Remove a handler's table; refuse one that has no [header] of its own (inline, dotted keys)."""
        path = self.runtimes_path + (name,)
        text = without_tables(self.text, path)
        expected = copy.deepcopy(self.data)
        set_table(expected, path, None)
        self.commit(text, expected, lambda: (
            f"cannot {what.format(name=name)} {self.path} safely: the table at line {line_naming(self.text, name)} "
            f"is an inline table or uses dotted keys; the file was left unchanged. Define "
            f"{'.'.join(toml_key(p) for p in path)} as a [table] or remove it."))

    def commit(self, text, expected, refusal):
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            data = None
        if data is None or pruned(data, self.runtimes_path) != pruned(expected, self.runtimes_path):
            raise ConfigError(refusal())
        self.text, self.data = text, expected

    def strip_block(self):
        lines = self.text.splitlines(keepends=True)
        begins = [i for i, line in enumerate(lines) if line.strip().startswith(BEGIN)]
        ends = [i for i, line in enumerate(lines) if line.strip() == END]
        if not begins and not ends:
            return
        if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
            line = (begins or ends)[0] + 1
            raise ConfigError(f"{self.path} line {line}: the block between '{BEGIN}' and '{END}' is damaged (a marker is "
                              "missing or doubled); restore or remove both markers and what is between them. The file was left unchanged")
        start, stop = begins[0], ends[0] + 1
        if start > 0 and not lines[start - 1].strip():
            start -= 1
        text = "".join(lines[:start] + lines[stop:])
        self.text, self.data = text, parse(text, self.path)

    def append_block(self, tables):
        """Append tables ({key path: table}) between the markers; containerd 1.x reads them from here."""
        text = self.text if not self.text or self.text.endswith("\n") else self.text + self.newline
        body = self.newline.join(render_table(path, table, self.newline) for path, table in tables.items())
        block = self.newline.join([BEGIN_LINE, body.rstrip(self.newline), END]) + self.newline
        expected = copy.deepcopy(self.data)
        for path, table in tables.items():
            set_table(expected, path, table)
        self.commit(text + (self.newline if text.strip() else "") + block, expected, lambda: (
            f"cannot add gVisor's runtime handlers to {self.path} safely: a table of the same name is defined in another "
            "way (an inline table or dotted keys); the file was left unchanged"))

    def imports(self):
        imports = self.data.get("imports", [])
        return imports if isinstance(imports, list) else []

    def set_imports(self, imports):
        """Rewrite the top-level `imports` key (dropped when empty), or add it after `version`."""
        lines = self.text.splitlines(keepends=True)
        first_table = next((index for index, _path in headers(lines)), len(lines))
        new = [f"imports = {toml_value(imports)}{self.newline}"] if imports else []
        start = next((i for i in range(first_table) if re.match(r"\s*imports\s*=", lines[i])), None)
        if start is None:
            after = next((i + 1 for i in range(first_table) if re.match(r"\s*version\s*=", lines[i])), 0)
            lines[after:after] = new
        else:
            stop = start + 1
            while stop < first_table and not self._parses("".join(lines[start:stop])):
                stop += 1
            lines[start:stop] = new
        expected = copy.deepcopy(self.data)
        expected.pop("imports", None)
        if imports:
            expected["imports"] = imports
        self.commit("".join(lines), expected, lambda: f"cannot change the imports of {self.path} safely; the file was left unchanged")

    @staticmethod
    def _parses(text):
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return False
        return True


def imported_path(entry, config_path):
    path = entry if os.path.isabs(entry) else os.path.join(os.path.dirname(config_path), entry)
    return os.path.normpath(path)


def covers(pattern, path):
    """Whether an imports entry (a path or a glob, resolved) names path, as Go's filepath.Glob matches it."""
    parts, names = pattern.split("/"), path.split("/")
    return len(parts) == len(names) and all(fnmatch.fnmatchcase(n, p) for p, n in zip(parts, names))


def default_runtime(data, runtimes_path, effective):
    """{key path: table} of containerd's default runtime when the file defines runtimes but not that one, taken
    from containerd's effective configuration (`containerd config dump`, which shows the built-in runc while
    the file defines no runtime)."""
    containerd = dig(data, runtimes_path[:-1]) or {}
    runtimes = containerd.get("runtimes") or {}
    if not effective or not runtimes:
        return {}
    defaults = tomllib.loads(effective)
    default = dig(defaults, RUNTIMES_TABLE[config_version(defaults, "containerd config dump")][:-1]) or {}
    name = containerd.get("default_runtime_name") or default.get("default_runtime_name") or "runc"
    table = (default.get("runtimes") or {}).get(name)
    return {runtimes_path + (name,): table} if name not in runtimes and isinstance(table, dict) else {}


# --- what the plan calls -------------------------------------------------------------------------


def changes(containerd, config_path, config_text, dropin_path, dropin_text, imported, wanted, remove, effective=""):
    """{path: new text, or None to delete} of each configuration file that must change.

    containerd: the node's version; config_text/dropin_text: None for a missing file; imported: {path:
    text} of the files config.toml imports; wanted: {handler: table} (empty to take gVisor off); remove:
    handler names to take out besides those not wanted; effective: `containerd config dump` (1.x's runc).
    """
    names = list(wanted) + sorted(set(remove) - set(wanted))
    if version_tuple(containerd) >= (2, 0, 0):
        result = dropin_changes(containerd, config_path, config_text, dropin_path, dropin_text, imported, wanted, names)
    else:
        result = in_place_changes(config_path, config_text, imported, wanted, names, effective)
    return {path: text for path, text in result.items() if text != (config_text if path == config_path else dropin_text)}


def in_place_changes(config_path, config_text, imported, wanted, names, effective):
    """containerd 1.x: the handlers' tables in config.toml, between the markers."""
    created = "version = 2\n"
    editor = Editor(config_text or created, config_path)
    for path, text in imported.items():
        cri = RUNTIMES_TABLE[config_version(parse(text, path), path)][:2]
        if wanted and dig(parse(text, path), cri) is not None:
            raise ConfigError(
                f"containerd 1.x replaces the whole CRI plugin section of {config_path} with the one in {path}, which it "
                f"imports, so runtime handlers written into {config_path} would not be seen. Move that section into "
                f"{config_path}; the file was left unchanged")
    editor.strip_block()
    block = {}
    for name in names:
        current = editor.runtimes().get(name)
        if name in wanted and holds(current, wanted[name]):
            continue  # already registered, e.g. by kubespray's own template: leave the user's table as it is
        if current is not None:
            editor.take_out(name, "merge the {name} runtime into" if name in wanted else "remove the {name} runtime from")
        if name in wanted:
            block[editor.runtimes_path + (name,)] = merged(current, wanted[name])
    expected = copy.deepcopy(editor.data)
    for path, table in block.items():
        set_table(expected, path, table)
    runc = default_runtime(expected, editor.runtimes_path, effective)
    if block or runc:
        editor.append_block({**runc, **block})
    return {config_path: None if not wanted and editor.text == created != config_text else editor.text}


def dropin_changes(containerd, config_path, config_text, dropin_path, dropin_text, imported, wanted, names):
    """containerd 2.x: the handlers in a drop-in of the main file's version, imported by config.toml."""
    created = f"version = {4 if version_tuple(containerd) >= (2, 3, 0) else 3}\n"
    editor = Editor(config_text or created, config_path)
    if editor.version == 1:
        raise ConfigError(f"{config_path} has no version (version 1), which containerd 2.x reads without its CRI settings "
                          f"(they are ignored with a warning); migrate it first: containerd config migrate > {config_path}.new, "
                          "check it, then move it into place. It was left unchanged")
    for path, text in imported.items():
        data = parse(text, path)
        runtimes = dig(data, RUNTIMES_TABLE[config_version(data, path)]) or {}
        clash = sorted(set(runtimes) & set(wanted)) if path != dropin_path else []
        if clash:
            raise ConfigError(f"{path}, which {config_path} imports, defines runtime handler {clash[0]} too (line "
                              f"{line_naming(text, clash[0])}); containerd would merge it with gVisor's. Take it out of {path}")
    editor.strip_block()  # handlers an install on containerd 1.x wrote into config.toml move to the drop-in
    tables = {}
    for name in names:
        current = editor.runtimes().get(name)
        if current is not None:
            editor.take_out(name, "move the {name} runtime out of" if name in wanted else "remove the {name} runtime from")
        if name in wanted:
            tables[name] = merged(current, wanted[name])
    imports = [entry for entry in editor.imports() if isinstance(entry, str)]
    if wanted and not any(covers(imported_path(entry, config_path), dropin_path) for entry in imports):
        editor.set_imports(imports + [dropin_path])
    elif not wanted and dropin_path in imports:
        editor.set_imports([entry for entry in imports if entry != dropin_path])
    if not tables:
        # What is left of a config.toml the role created goes with the drop-in.
        return {config_path: None if editor.text == created != config_text else editor.text, dropin_path: None}
    runtimes_path = RUNTIMES_TABLE[editor.version]
    nl = editor.newline
    dropin = nl.join([DROPIN_HEADER, f"version = {editor.version}", ""]) + nl + nl.join(
        render_table(runtimes_path + (name,), table, nl) for name, table in tables.items())
    return {config_path: editor.text, dropin_path: dropin}
