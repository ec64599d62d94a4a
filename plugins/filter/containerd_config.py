# Copyright: containerd-gvisor maintainers
# Apache License 2.0 (see LICENSE)
"""The one place that reads and edits containerd's config.toml.

The file is edited as a tomlkit document, which keeps comments, blank lines, key order and
spelling; every edit is then checked by parsing the result with tomllib, which must give exactly
the old data plus (or minus) the runtime handlers' own keys, so a file that cannot be edited
safely is refused instead of being damaged. tomlkit's public API appends a new table inside the
last table of its name and cannot place blank lines, so a few of its internals are used
(Container._insert_at, _remove_at, _map, _raw_append): the version is pinned in requirements.txt,
and the tomllib check catches any change in them.
"""

from __future__ import annotations

import collections
import collections.abc
import copy
import re
import tomllib
from typing import NamedTuple

from ansible.errors import AnsibleFilterError

try:
    import tomlkit
    from tomlkit.container import Container
    from tomlkit.items import AoT, Comment, Key, Null, SingleKey, Table, Trivia, Whitespace
except ImportError as err:  # reported when a filter is used, with the fix
    TOMLKIT_ERROR = err
    Container = Key = object
else:
    TOMLKIT_ERROR = None

SUPPORTED_VERSIONS = (1, 2, 3, 4)

# The CRI runtimes table of each config version, spelled as containerd's docs spell it.
RUNTIMES_TABLE = {
    1: "plugins.cri.containerd.runtimes",
    2: 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes',
    3: "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes",
    4: "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes",
}

RUNC_RUNTIME_TYPE = "io.containerd.runc.v2"
DEFAULT_INDENT = "  "
DEFAULT_RUNTIME_COMMENT = "# From `containerd config default`: containerd 1.x drops its built-in runc once a file defines a runtime."

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SHOWN_CHARS = 80


# --- small helpers -----------------------------------------------------------


def _show(value):
    """Quote at most the first 80 characters of a received value for a message."""
    if value is None:
        return "None"
    text = str(value)
    shown = repr(text[:_SHOWN_CHARS])
    return shown + "..." if len(text) > _SHOWN_CHARS else shown


def _type_name(value):
    """Name a value's type the way YAML users think of it."""
    if isinstance(value, collections.abc.Mapping):
        return "dict"
    if isinstance(value, (list, tuple)):
        return "list"
    return "null" if value is None else type(value).__name__


def _as_text(text):
    """Accept bytes as well as str, since slurped files may arrive as either."""
    if isinstance(text, bytes):
        return text.decode("utf-8")
    return text


def _is_empty(text):
    """A missing (None) or whitespace-only config counts as no config at all."""
    return text is None or not _as_text(text).strip()


def toml_string(value):
    """Render a str as a TOML basic string, escaping what TOML requires."""
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif char in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append("\\u%04x" % ord(char))
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_key(key):
    """Render one key part bare when TOML allows it, quoted otherwise."""
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


# --- TOML documents (tomlkit) -----------------------------------------------------


def _header_keys(dotted):
    """Return the tomlkit keys of a dotted table name, each spelled as written."""
    keys, container = [], tomlkit.parse(f"[{dotted}]\n")
    while container.body:
        key, table = container.body[0]
        keys.append(key)
        container = table.value
    return keys


def _table_path(dotted):
    """Turn a dotted table name such as RUNTIMES_TABLE[2] into its key parts."""
    return tuple(key.key for key in _header_keys(dotted))


class _Entry(NamedTuple):
    """One item of a tomlkit document, where it sits and the full key path it stands for."""

    container: Container
    index: int
    path: tuple
    key: Key | None
    item: object


def _entries(container, prefix=()):
    """Yield every item of a document in the order tomlkit writes them out."""
    for index, (key, item) in enumerate(container.body):
        if isinstance(item, Null):
            continue
        path = prefix + tuple(part.key for part in key) if key is not None else prefix
        yield _Entry(container, index, path, key, item)
        if isinstance(item, Table):
            yield from _entries(item.value, path)


def _has_header(entry):
    """Whether an entry is a table written as a [header] of its own."""
    return isinstance(entry.item, Table) and not entry.item.is_super_table() and not entry.key.is_dotted()


def _is_pair(entry):
    """Whether an entry is a key = value line."""
    return entry.key is not None and not isinstance(entry.item, (Table, AoT))


def _last_line(indent):
    """Return the part of an indent after any line breaks it holds."""
    return indent.rsplit("\n", 1)[-1]


class Style(NamedTuple):
    """How new lines are written so that they look like the rest of the file."""

    newline: str
    indent_step: str


def _newline(text):
    """Return the file's line ending (that of its first line)."""
    first_ending = re.search(r"\r?\n", text)
    return first_ending.group() if first_ending else "\n"


def _style(text, doc):
    """Detect the file's line ending and how far it indents keys beyond their table header."""
    steps, header = collections.Counter(), None
    for entry in _entries(doc):
        if _has_header(entry):
            header = _last_line(entry.item.trivia.indent)
        elif _is_pair(entry) and header is not None and entry.item.trivia.indent.startswith(header):
            steps[entry.item.trivia.indent[len(header):]] += 1
    return Style(_newline(text), steps.most_common(1)[0][0] if steps else DEFAULT_INDENT)


def _parse_document(text, newline):
    """Parse text with tomlkit, giving it a final newline so that new lines can follow."""
    return tomlkit.parse(text if text.endswith("\n") else text + newline)


def _dump(original, doc):
    """Write the document out, without a final newline when the original had none."""
    result = tomlkit.dumps(doc)
    return result if original.endswith("\n") else result.rstrip("\r\n")

# --- containerd config: versions and tables --------------------------------------


def _parse_config(text, path):
    """Parse config text, explaining which file is broken when it is not TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise AnsibleFilterError(f"containerd config {path} is not valid TOML ({err}); it was left unchanged") from None


def _supported_version(version, where, allow_text=False):
    """Return version as an int when containerd_gvisor supports it, else raise naming where."""
    if allow_text and isinstance(version, str) and version.strip().isdigit():
        version = int(version)  # Ansible variables may carry the version as text
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_VERSIONS:
        raise AnsibleFilterError(
            f"{where} has version {version!r}; supported containerd config versions are 1, 2, 3 and 4"
        )
    return version


def _config_version(data, path):
    """Return the config's version (1 when it has none), which must be supported."""
    return _supported_version(data.get("version", 1), f"containerd config {path}")


def _check_name(value, what):
    """Require a non-empty string such as a handler name."""
    if not isinstance(value, str) or not value:
        raise AnsibleFilterError(f"{what} must be a non-empty string, got {_show(value)}")
    return value


def containerd_gvisor_handler_table(version, handler):
    """Return the dotted name of the handler's table, e.g. for messages."""
    version = _supported_version(version, "containerd_gvisor_handler_table", allow_text=True)
    return f"{RUNTIMES_TABLE[version]}.{toml_key(_check_name(handler, 'the runtime handler name'))}"


def _lookup(data, parts):
    """Return the value at a dotted path, or None when any part is missing."""
    node = data
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def containerd_gvisor_uses_systemd_cgroup(text, path):
    """Whether a runc runtime of the config runs with SystemdCgroup = true."""
    if _is_empty(text):
        return False
    data = _parse_config(_as_text(text), path)
    runtimes = _lookup(data, _table_path(RUNTIMES_TABLE[_config_version(data, path)]))
    if not isinstance(runtimes, dict):
        return False
    for name, runtime in runtimes.items():
        if not isinstance(runtime, dict):
            continue
        is_runc = name == "runc" or runtime.get("runtime_type") == RUNC_RUNTIME_TYPE
        options = runtime.get("options")
        if is_runc and isinstance(options, dict) and options.get("SystemdCgroup") is True:
            return True
    return False


# --- 3. merging the runtime handler ------------------------------------------------


def _check_options(options):
    """Return the managed options as a dict of strings."""
    if options is None:
        return {}
    if not isinstance(options, collections.abc.Mapping):
        raise AnsibleFilterError(
            f"containerd_gvisor_merge_config options must be a mapping of option names to strings, "
            f"got {_type_name(options)}"
        )
    for key, value in options.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise AnsibleFilterError(
                f"containerd_gvisor_merge_config options.{key} must be a string, got {_type_name(value)}"
            )
    return dict(options)


class _Refusal(Exception):
    """A reason why an edit cannot be made safely."""


def _set_in(data, parts, values):
    """Return a deep copy of data with values set in the table at parts."""
    result = copy.deepcopy(data)
    node = result
    for depth, part in enumerate(parts, 1):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise _Refusal(f"{'.'.join(toml_key(p) for p in parts[:depth])} is not a table")
    for key, value in values.items():
        if value is None:
            node.pop(key, None)  # None asks for the key to be absent
        else:
            node[key] = value
    return result


def _verify(result, expected, difference):
    """Require the edited text to parse to exactly the expected data, else refuse with difference."""
    try:
        parsed = tomllib.loads(result)
    except tomllib.TOMLDecodeError as err:
        raise _Refusal(f"the edited text would not be valid TOML ({err})") from None
    if parsed != expected:
        raise _Refusal(difference)


def _missing_default_runtime(data, version, defaults_text):
    """Return (name, table) of containerd's default runtime when the config does not define it.

    containerd 1.x replaces its whole built-in runtimes map with the file's: a file that
    defines only the gVisor runtime loses runc, and the CRI plugin then refuses to load
    ("no corresponding runtime configured ... default_runtime_name"). The table is taken
    from the node's own `containerd config default`, so it is what containerd would use.
    """
    if _is_empty(defaults_text):
        return None
    defaults = _parse_config(_as_text(defaults_text), "(containerd config default)")
    defaults_containerd = _lookup(defaults, _table_path(RUNTIMES_TABLE[_config_version(defaults, "default")])[:-1])
    containerd = _lookup(data, _table_path(RUNTIMES_TABLE[version])[:-1]) if data else None
    defaults_containerd = defaults_containerd if isinstance(defaults_containerd, dict) else {}
    containerd = containerd if isinstance(containerd, dict) else {}
    name = containerd.get("default_runtime_name") or defaults_containerd.get("default_runtime_name") or "runc"
    runtimes = containerd.get("runtimes")
    if isinstance(runtimes, dict) and name in runtimes:
        return None
    table = (defaults_containerd.get("runtimes") or {}).get(name)
    return (name, table) if isinstance(table, dict) else None


def _handler_keys(runtime_type, runtime_path):
    """Return the managed keys of the handler table; a None value means the key must be absent."""
    keys = {"runtime_type": _check_name(runtime_type, "runtime_type")}
    if runtime_path is not None:
        if not isinstance(runtime_path, str):
            raise AnsibleFilterError(f"runtime_path must be a string, got {_type_name(runtime_path)}")
        # An empty runtime_path drops one set before, e.g. for another bin dir.
        keys["runtime_path"] = runtime_path or None
    return keys


def _pair(value, indent, style):
    """Return a new value item written on a line of its own."""
    item = tomlkit.item(value)
    item.trivia.indent, item.trivia.trail = indent, style.newline
    return item


def _new_table(values, header_indent, style, blank_before=True):
    """Return a new [table] holding values; dict values become sub-tables below it."""
    table = tomlkit.table(is_super_table=False)
    table.trivia.indent = (style.newline if blank_before else "") + header_indent
    table.trivia.trail = style.newline
    for key, value in values.items():
        if not isinstance(value, dict):
            table.raw_append(key, _pair(value, header_indent + style.indent_step, style))
    for key, value in values.items():
        if isinstance(value, dict):
            table.raw_append(key, _new_table(value, header_indent, style))
    return table


def _append_at_end(doc, keys, table):
    """Add table as the last thing in the document, under a header naming its whole path."""
    item = table
    for key in reversed(keys[1:]):
        parent = tomlkit.table(is_super_table=True)
        parent.raw_append(key, item)
        item = parent
    doc._raw_append(keys[0], item)  # always at the end: append() would merge into an existing table


def _ends_with_blank_line(text):
    """Whether the last line of text is blank (or there is no text)."""
    lines = text.splitlines()
    return not lines or not lines[-1].strip()


def _existing_table(doc, parts, dotted):
    """Return the [table] at parts, None when there is none, or refuse when it is not a [table]."""
    found = [entry for entry in _entries(doc) if entry.path == parts and entry.key is not None]
    tables = [entry.item for entry in found if _has_header(entry)]
    if any(not isinstance(entry.item, Table) or entry.key.is_dotted() for entry in found):
        raise _Refusal(f"{dotted} is an inline table or uses dotted keys")
    return tables[0] if len(tables) == 1 else None


def _insert(container, at, key, item):
    """Insert an item before position at of a container (at its end when at is past it)."""
    if at >= len(container.body):
        container.append(key, item)
    elif key is not None:
        container._insert_at(at, key, item)
    else:  # tomlkit inserts only keyed items: shift the key index by hand for a blank line or comment
        for name, index in container._map.items():
            container._map[name] = (tuple(i + (i >= at) for i in index) if isinstance(index, tuple)
                                    else index + (index >= at))
        container.body.insert(at, (None, item))


def _after_last_pair(table):
    """Return the position just after the table's last key = value line (0 when it has none)."""
    body = table.value.body
    return next((i + 1 for i in range(len(body) - 1, -1, -1)
                 if body[i][0] is not None and not isinstance(body[i][1], (Table, AoT))), 0)


def _set_keys(table, changes, style):
    """Set or drop values in an existing [table], keeping each line's indent and comment."""
    missing = {}
    for key, value in changes.items():
        if value is None:
            del table[key]
        elif key in table:
            table[key] = value
        else:
            missing[key] = value
    pairs = [item for key, item in table.value.body if key is not None and not isinstance(item, (Table, AoT, Null))]
    indent = pairs[0].trivia.indent if pairs else _last_line(table.trivia.indent) + style.indent_step
    for key, value in missing.items():
        _insert(table.value, _after_last_pair(table), key, _pair(value, indent, style))


def _add_below(doc, parent, key, values, style):
    """Add a new sub-table right after the parent table's own keys, set apart by blank lines."""
    table = _new_table(values, _last_line(parent.trivia.indent), style)
    _insert(parent.value, _after_last_pair(parent), key, table)
    entries = list(_entries(doc))
    at = next(i for i, entry in enumerate(entries) if entry.item is table)
    following = next((entry for entry in entries[at + 1:] if entry.container is not table.value), None)
    if following is not None and not isinstance(following.item, Whitespace):
        _insert(following.container, following.index, None, tomlkit.ws(style.newline))


def _apply(doc, data, keys, parts, values, style, new_table_at_end):
    """Make the table at parts hold values, changing only keys whose value differs."""
    current = _lookup(data, parts)
    current = current if isinstance(current, dict) else {}
    changes = {key: value for key, value in values.items()
               if (key in current if value is None else current.get(key) != value)}
    if not changes:
        return
    table = _existing_table(doc, parts, ".".join(key.as_string() for key in keys))
    if table is not None:
        _set_keys(table, changes, style)
        return
    additions = {key: value for key, value in changes.items() if value is not None}
    parent = None if new_table_at_end else _existing_table(doc, parts[:-1], ".".join(k.as_string() for k in keys[:-1]))
    if not additions:
        return  # a key to drop that is not under a [header] is left for the verification to refuse
    if parent is None:
        blank = not _ends_with_blank_line(tomlkit.dumps(doc))
        _append_at_end(doc, keys, _new_table(additions, "", style, blank_before=blank))
    else:
        _add_below(doc, parent, keys[-1], additions, style)


def containerd_gvisor_merge_config(text, path, handler, runtime_type="io.containerd.runsc.v1",
                                   options=None, new_version=2, runtime_path=None, defaults=None):
    """Return config text with the handler registered; everything else is kept byte for byte.

    runtime_path: None leaves the handler's runtime_path alone, "" removes it, a path sets it.
    defaults: the text of the node's `containerd config default`; when given and the file does
    not define containerd's default runtime (runc), that runtime's table is added from it too.
    """
    handler = _check_name(handler, "the runtime handler name")
    handler_keys = _handler_keys(runtime_type, runtime_path)
    options = _check_options(options)
    original = None
    if _is_empty(text):
        version = _supported_version(new_version, "containerd_gvisor_merge_config new_version", allow_text=True)
        text = f"version = {version}\n"  # a new file: the version, then what the merge adds
    else:
        text = original = _as_text(text)
    data = _parse_config(text, path)
    version = _config_version(data, path)
    handler_dotted = containerd_gvisor_handler_table(version, handler)
    handler_keys_path = _header_keys(handler_dotted)
    handler_parts = tuple(key.key for key in handler_keys_path)
    tables = [(handler_keys_path, handler_keys)]
    if options:
        tables.append((handler_keys_path + [SingleKey("options")], options))
    try:
        expected = data
        for keys, values in tables:
            expected = _set_in(expected, tuple(key.key for key in keys), values)
        missing = _missing_default_runtime(data, version, defaults)
        if missing:
            name, table = missing
            expected = _set_in(expected, handler_parts[:-1], {name: copy.deepcopy(table)})
        if expected == data:
            return original  # already registered: leave the file exactly as it is
        doc = _parse_document(text, _newline(text))
        style = _style(text, doc)
        if missing:
            if not _ends_with_blank_line(text):
                doc.add(tomlkit.ws(style.newline))
            doc.add(Comment(Trivia(comment_ws="", comment=DEFAULT_RUNTIME_COMMENT, trail=style.newline)))
            _append_at_end(doc, handler_keys_path[:-1] + [SingleKey(name)],
                           _new_table(table, "", style, blank_before=False))
        for keys, values in tables:
            # A new .options table goes right below its handler table; a new handler table at the end.
            parts = tuple(key.key for key in keys)
            _apply(doc, data, keys, parts, values, style, new_table_at_end=parts == handler_parts)
        result = _dump(text, doc)
        _verify(result, expected, "the edited text would change more than the runtime's own keys")
    except _Refusal as refusal:
        raise AnsibleFilterError(
            f"cannot merge the {handler} runtime into {path} safely: {refusal}; the file was left unchanged. "
            f"Define {handler_dotted} as a [table] or remove it."
        ) from None
    return result


# --- 4. removing the runtime handler --------------------------------------------------


def _without_table(data, parts, headers):
    """Return a deep copy of data without the table at parts.

    Parent tables that only existed implicitly (no [header] of their own) and
    are left empty vanish from the parsed text too, so they go as well.
    """
    result = copy.deepcopy(data)
    del _lookup(result, parts[:-1])[parts[-1]]
    for depth in range(len(parts) - 1, 0, -1):
        if _lookup(result, parts[:depth]) or parts[:depth] in headers:
            break
        del _lookup(result, parts[:depth - 1])[parts[depth - 1]]
    return result


def _one_line_less(item):
    """Return a whitespace item with one line break less, or None when nothing is left of it."""
    rest = re.sub(r"[ \t]*\r?\n$", "", item.s, count=1)
    return tomlkit.ws(rest) if rest else None


def _writes_nothing(entry):
    """Whether an entry is a table without a [header], which writes nothing of its own."""
    return isinstance(entry.item, Table) and not _has_header(entry)


def _remove_subtree(doc, target):
    """Remove one table with its sub-tables, keeping the comments in it and the blank lines around them.

    Each stretch of removed lines also takes the blank line above it when a blank line (or the end) follows it.
    """
    entries = list(_entries(doc))
    at = next(i for i, entry in enumerate(entries) if entry.item is target)
    inside, end = {id(target.value)}, at + 1
    while end < len(entries) and id(entries[end].container) in inside:
        if isinstance(entries[end].item, Table):
            inside.add(id(entries[end].item.value))
        end += 1
    # Blank lines and comments after a table's last key: those before a sub-table stay when they hold a
    # comment, and those at the very end stay; the others go with the lines around them.
    runs, run = [], []
    for entry in entries[at + 1:end]:
        if entry.key is None:
            run.append(entry.item)
            continue
        if isinstance(entry.item, Table) and any(isinstance(item, Comment) for item in run):
            runs.append(run)
        run = []
    runs.append(run)
    before = next((entries[i] for i in range(at - 1, -1, -1) if not _writes_nothing(entries[i])), None)
    after = next((entry.item for entry in entries[end:] if not _writes_nothing(entry)), None)
    kept, above, drop_before = [], before.item if before else None, False
    for run in runs:
        below = run[0] if run else after
        if isinstance(above, Whitespace) and (below is None or isinstance(below, Whitespace)):
            if kept:
                kept[-1:] = [item for item in [_one_line_less(kept[-1])] if item]
            else:
                drop_before = True
        kept += run
        above = kept[-1] if kept else above
    entries[at].container._remove_at(entries[at].index)
    if before is None:
        container, index = doc, 0
    elif isinstance(before.item, Table):
        container, index = before.item.value, 0
    else:
        container, index = before.container, before.index + 1
    for offset, item in enumerate(kept):
        _insert(container, index + offset, None, item)
    if drop_before:
        rest = _one_line_less(before.item)
        before.container.body[before.index] = (None, rest if rest else Null())


def containerd_gvisor_remove_handler(text, path, handler):
    """Return config text without the handler's tables; everything else is kept byte for byte."""
    handler = _check_name(handler, "the runtime handler name")
    if _is_empty(text):
        return text
    text = _as_text(text)
    data = _parse_config(text, path)
    handler_dotted = containerd_gvisor_handler_table(_config_version(data, path), handler)
    parts = _table_path(handler_dotted)
    runtimes = _lookup(data, parts[:-1])
    if not isinstance(runtimes, dict) or handler not in runtimes:
        return text
    doc = _parse_document(text, _newline(text))
    entries = list(_entries(doc))
    expected = _without_table(data, parts, {entry.path for entry in entries if _has_header(entry)})
    # The topmost tables at or below parts: [header]s, or header-less parents of [parts.sub] headers.
    targets = [entry.item for entry in entries
               if isinstance(entry.item, Table) and entry.path[:len(parts)] == parts
               and not entry.key.is_dotted() and len(entry.path) - len(list(entry.key)) < len(parts)]
    try:
        if not targets:
            raise _Refusal("it has no [table] header of its own (it is an inline table or uses dotted keys)")
        for target in targets:
            _remove_subtree(doc, target)
        result = _dump(text, doc)
        _verify(result, expected, "the edited text would remove more than the runtime's own tables")
    except _Refusal as refusal:
        raise AnsibleFilterError(
            f"cannot remove the {handler} runtime from {path} safely: {refusal}; the file was left unchanged. "
            f"Define {handler_dotted} as a [table] or remove it by hand."
        ) from None
    return result


# --- 5. what the role calls ---------------------------------------------------------


def merge_config(text, path, handlers=(), remove=(), runtime_type="io.containerd.runsc.v1",
                 options_type="io.containerd.runsc.v1.options", runtime_path="", new_version=2, defaults=None):
    """Return config text with the runtimes of remove taken out and a runtime for each of handlers.

    handlers: a list of {name, runsc_config_path}; each becomes a runtime of runtime_type (with
    runtime_path when it is set, without one when it is empty) whose options name its runsc.toml.
    Each step keeps every byte outside the runtime's own tables and is checked on its own; text
    comes back unchanged when there is nothing to do.
    """
    if TOMLKIT_ERROR:
        raise AnsibleFilterError(f"editing {path} needs the Python library tomlkit on the control node "
                                 f"(pip install -r requirements.txt of the collection): {TOMLKIT_ERROR}")
    for name in remove or ():
        text = containerd_gvisor_remove_handler(text, path, name)
    for handler in handlers or ():
        options = {"TypeUrl": options_type, "ConfigPath": handler["runsc_config_path"]}
        text = containerd_gvisor_merge_config(text, path, handler["name"], runtime_type=runtime_type, options=options,
                                              new_version=new_version, runtime_path=runtime_path, defaults=defaults)
    return text


def runtime_types(text, path):
    """Return {runtime handler name: runtime_type} of the CRI runtimes a config defines."""
    if _is_empty(text):
        return {}
    data = _parse_config(_as_text(text), path)
    runtimes = _lookup(data, _table_path(RUNTIMES_TABLE[_config_version(data, path)]))
    return {name: runtime.get("runtime_type", "") for name, runtime in (runtimes or {}).items()
            if isinstance(runtime, dict)}


class FilterModule:
    """Filters that read and edit containerd's configuration."""

    def filters(self):
        return {
            "merge_config": merge_config,
            "runtime_types": runtime_types,
            "uses_systemd_cgroup": containerd_gvisor_uses_systemd_cgroup,
        }
