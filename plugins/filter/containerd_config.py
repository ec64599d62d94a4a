"""Filters of the containerd_gvisor role.

They check the role's inputs strictly (booleans, sha512sum files) and edit
containerd's config.toml without losing anything: the text is changed line by
line, and every edit is verified by parsing the result with tomllib, so a
config that cannot be edited safely is refused instead of being damaged.
"""

from __future__ import annotations

import collections
import collections.abc
import copy
import posixpath
import re
import tomllib
from typing import NamedTuple

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

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
RUNSC_TOML_HEADER = "# Managed by Ansible (containerd_gvisor role): runsc flags for the containerd shim."

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_RUNSC_FLAG = re.compile(r"[a-z0-9][a-z0-9_-]*")
_SHA512_HEX = re.compile(r"[0-9a-fA-F]{128}")
_WS = " \t"
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


# --- 1. strict booleans --------------------------------------------------------


def containerd_gvisor_bool(value, name):
    """Return value as a bool, accepting exactly what argument_spec's type: bool accepts."""
    try:
        # strict=True refuses anything outside Ansible's documented boolean spellings.
        return boolean(value, strict=True)
    except TypeError:
        raise AnsibleFilterError(
            f"{name} must be a boolean (true or false; Packer's strings \"true\" and "
            f"\"false\" also work), got {_show(value)}"
        ) from None


# --- 2. sha512sum files ---------------------------------------------------------


def containerd_gvisor_parse_sha512(text, file_name, url):
    """Return the lowercase sha512 digest that a sha512sum file states for file_name."""
    text = _as_text(text) or ""
    line = next((candidate.strip() for candidate in text.splitlines() if candidate.strip()), "")
    fields = line.split(None, 1)
    digest = fields[0] if fields else ""
    if not _SHA512_HEX.fullmatch(digest):
        raise AnsibleFilterError(f"{url} is not a sha512sum line for {file_name}: got {_show(text)}")
    if len(fields) == 2:
        # sha512sum marks binary mode with '*' and keeps any directory it was given.
        named = posixpath.basename(fields[1].strip().lstrip("*"))
        if named != file_name:
            raise AnsibleFilterError(
                f"{url} is a sha512sum line for {named}, not for {file_name}: got {_show(text)}"
            )
    return digest.lower()


def containerd_gvisor_release_checksums(names, pinned, published, url):
    """Return {file name: sha512} for names: a pinned checksum wins, else the published .sha512 text."""
    pinned = pinned or {}
    published = published or {}
    checksums = {}
    for name in names:
        if name in pinned:
            digest = pinned[name]
            if not isinstance(digest, str) or not _SHA512_HEX.fullmatch(digest.strip()):
                raise AnsibleFilterError(
                    f"containerd_gvisor_checksums.{name} must be a sha512 checksum (128 hex digits), "
                    f"got {_show(digest)}"
                )
            checksums[name] = digest.strip().lower()
        else:
            checksums[name] = containerd_gvisor_parse_sha512(published.get(name), name, f"{url}/{name}.sha512")
    return checksums


# --- TOML keys and lines ----------------------------------------------------------


def _skip_ws(text, pos):
    """Return the first position at or after pos that is not a space or tab."""
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _string_end(text, pos):
    """Return the position just past the one-line string opening at text[pos], or None."""
    quote = text[pos]
    pos += 1
    while pos < len(text):
        if quote == '"' and text[pos] == "\\":
            pos += 2
            continue
        if text[pos] == quote:
            return pos + 1
        pos += 1
    return None


def _decode_quoted_key(raw):
    """Return the value of a quoted key part, or None when it is not valid TOML."""
    if raw.startswith("'"):
        return raw[1:-1]
    try:
        # tomllib knows every escape sequence, so let it decode the basic string.
        return tomllib.loads(f"k = {raw}")["k"]
    except tomllib.TOMLDecodeError:
        return None


def parse_key(text, pos=0):
    """Parse a dotted key at text[pos:]; return (parts, end) or None when there is none."""
    parts = []
    while True:
        pos = _skip_ws(text, pos)
        bare = _BARE_KEY.match(text, pos)
        if bare:
            part, pos = bare.group(), bare.end()
        elif pos < len(text) and text[pos] in "\"'":
            if text.startswith(text[pos] * 3, pos):
                return None  # a multi-line string is never a key
            end = _string_end(text, pos)
            part = None if end is None else _decode_quoted_key(text[pos:end])
            if part is None:
                return None
            pos = end
        else:
            return None
        parts.append(part)
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return tuple(parts), pos


def _table_path(dotted):
    """Turn a dotted table name such as RUNTIMES_TABLE[2] into its key parts."""
    return parse_key(dotted)[0]


class Line(NamedTuple):
    """What one physical line of a TOML document is."""

    kind: str  # table, array, key, blank, comment, inside (of a multi-line value) or other
    parts: tuple  # the table's or key's dotted path, () for other kinds
    indent: str
    comment: int | None  # where a trailing comment starts
    value_start: int | None  # where a key line's value starts


def split_lines(text):
    """Split text into lines that keep their own line endings."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def _body(line):
    """Return a line without its line ending."""
    if line.endswith("\r\n"):
        return line[:-2]
    return line[:-1] if line.endswith("\n") else line


def _multiline_end(text, pos, delimiter):
    """Return the position just past the multi-line string's closing delimiter, or None."""
    while pos < len(text):
        if delimiter == '"""' and text[pos] == "\\":
            pos += 2
            continue
        if text.startswith(delimiter, pos):
            end = pos + 3
            # Up to two more quotes still belong to the string (e.g. """a"""").
            while end < len(text) and end - pos < 5 and text[end] == delimiter[0]:
                end += 1
            return end
        pos += 1
    return None


def _scan(text, open_string, depth):
    """Scan one line; return (comment position, still-open multi-line string, bracket depth)."""
    pos = 0
    while pos < len(text):
        if open_string:
            end = _multiline_end(text, pos, open_string)
            if end is None:
                return None, open_string, depth
            open_string, pos = None, end
            continue
        char = text[pos]
        if char == "#":
            return pos, None, depth
        if text.startswith('"""', pos) or text.startswith("'''", pos):
            open_string, pos = text[pos:pos + 3], pos + 3
            continue
        if char in "\"'":
            pos = _string_end(text, pos) or len(text)
            continue
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(depth - 1, 0)
        pos += 1
    return None, open_string, depth


def _parse_header(body):
    """Return ("table" or "array", parts) when body is a table header line, else None."""
    is_array = body.startswith("[[")
    key = parse_key(body, 2 if is_array else 1)
    if key is None:
        return None
    parts, pos = key
    close = "]]" if is_array else "]"
    if not body.startswith(close, pos):
        return None
    rest = body[pos + len(close):].lstrip(_WS)
    if rest and not rest.startswith("#"):
        return None
    return ("array" if is_array else "table"), parts


def _classify(text, top_level, comment):
    """Describe one line, given whether it starts outside any multi-line value."""
    body = text.lstrip(_WS)
    indent = text[:len(text) - len(body)]
    if not top_level:
        return Line("inside", (), indent, comment, None)
    if not body:
        return Line("blank", (), indent, None, None)
    if body.startswith("#"):
        return Line("comment", (), indent, comment, None)
    header = _parse_header(body) if body.startswith("[") else None
    if header:
        return Line(header[0], header[1], indent, comment, None)
    key = parse_key(body)
    if key and body.startswith("=", key[1]):
        return Line("key", key[0], indent, comment, len(indent) + _skip_ws(body, key[1] + 1))
    return Line("other", (), indent, comment, None)


def analyse(lines):
    """Describe every line, tracking multi-line strings and arrays across lines."""
    result = []
    open_string, depth = None, 0
    for line in lines:
        text = _body(line)
        top_level = open_string is None and depth == 0
        comment, open_string, depth = _scan(text, open_string, depth)
        result.append(_classify(text, top_level, comment))
    return result


def _is_content(line):
    """Whether a line holds TOML rather than being blank or a comment."""
    return line.kind not in ("blank", "comment")


def _find_table(info, parts):
    """Return the index of the [table] header for parts, or None."""
    return next((i for i, line in enumerate(info) if line.kind == "table" and line.parts == parts), None)


def _block_end(info, header):
    """Return the index of the header after the block that starts at header."""
    return next((i for i in range(header + 1, len(info)) if info[i].kind in ("table", "array")), len(info))


def _last_content(info, header):
    """Return the last line of a table's block that holds TOML (the header if none does)."""
    end = _block_end(info, header)
    return next((i for i in range(end - 1, header, -1) if _is_content(info[i])), header)


def _key_indent_step(info):
    """Return how far this file indents keys beyond their table header (two spaces by default)."""
    steps = collections.Counter()
    header_indent = None
    for line in info:
        if line.kind in ("table", "array"):
            header_indent = line.indent
        elif line.kind == "key" and header_indent is not None and line.indent.startswith(header_indent):
            steps[line.indent[len(header_indent):]] += 1
    return steps.most_common(1)[0][0] if steps else DEFAULT_INDENT


class Style(NamedTuple):
    """How new lines are written so that they look like the rest of the file."""

    newline: str
    indent_step: str


def _style(text, lines):
    """Detect the file's line ending and key indentation."""
    first_ending = re.search(r"\r?\n", text)
    newline = first_ending.group() if first_ending else "\n"
    return Style(newline, _key_indent_step(analyse(lines)))


def _insert(lines, at, new_lines, style):
    """Insert new_lines (without endings) before index at, ending the line above if needed."""
    if at > 0 and not lines[at - 1].endswith("\n"):
        lines[at - 1] += style.newline
    lines[at:at] = [line + style.newline for line in new_lines]


def _keep_final_newline(original, result):
    """Leave the file without a final newline when it had none."""
    if not original.endswith("\n"):
        return result.rstrip("\r\n")
    return result


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


def containerd_gvisor_config_version(text, path):
    """Return the config's version (1 when absent), or None when there is no config."""
    if _is_empty(text):
        return None
    return _config_version(_parse_config(_as_text(text), path), path)


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


def containerd_gvisor_handler_runtime_type(text, path, handler):
    """Return the runtime_type of a runtime handler in a config ('' when it has none)."""
    if _is_empty(text):
        return ""
    data = _parse_config(_as_text(text), path)
    runtime = _lookup(data, _table_path(containerd_gvisor_handler_table(_config_version(data, path), handler)))
    value = runtime.get("runtime_type") if isinstance(runtime, dict) else None
    return value if isinstance(value, str) else ""


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


def _replacement(lines, info, first, last, value):
    """Return the key line first..last (a multi-line value spans several) with a new value."""
    head = _body(lines[first])[:info[first].value_start]
    tail_text = _body(lines[last])
    comment = info[last].comment
    # Keep a trailing comment and the spaces before it.
    trail = "" if comment is None else tail_text[len(tail_text[:comment].rstrip(_WS)):]
    ending = lines[last][len(tail_text):]
    return head + toml_string(value) + trail + ending


def _set_keys(lines, header, values, style):
    """Set values in the existing table whose header is at index header."""
    missing = []
    for key, value in values.items():
        info = analyse(lines)
        end = _block_end(info, header)
        first = next((i for i in range(header + 1, end) if info[i].kind == "key" and info[i].parts == (key,)), None)
        if first is None:
            missing.append(key)
            continue
        last = first
        while last + 1 < end and info[last + 1].kind == "inside":
            last += 1
        lines[first:last + 1] = [] if value is None else [_replacement(lines, info, first, last, value)]
    missing = [key for key in missing if values[key] is not None]
    if missing:
        info = analyse(lines)
        end = _block_end(info, header)
        indent = next(
            (info[i].indent for i in range(header + 1, end) if info[i].kind == "key"),
            info[header].indent + style.indent_step,
        )
        new_lines = [f"{indent}{toml_key(key)} = {toml_string(values[key])}" for key in missing]
        _insert(lines, _last_content(info, header) + 1, new_lines, style)


def _table_lines(header_indent, dotted, values, style):
    """Return the lines of a new table: its header and its keys."""
    keys = [f"{header_indent}{style.indent_step}{toml_key(k)} = {toml_string(v)}" for k, v in values.items()]
    return [f"{header_indent}[{dotted}]"] + keys


def _add_table(lines, dotted, parts, values, style, after_parent):
    """Add a new table right after its parent table's block if asked to, else at the end of the file."""
    info = analyse(lines)
    parent = _find_table(info, parts[:-1]) if after_parent else None
    if parent is None:
        blank = [""] if lines and _body(lines[-1]).strip() else []
        _insert(lines, len(lines), blank + _table_lines("", dotted, values, style), style)
        return
    at = _last_content(info, parent) + 1
    new_lines = [""] + _table_lines(info[parent].indent, dotted, values, style)
    if at < len(lines) and info[at].kind != "blank":
        new_lines.append("")  # keep a blank line before whatever follows
    _insert(lines, at, new_lines, style)


def _apply(lines, data, dotted, parts, values, style, after_parent):
    """Make the table at parts hold values, changing only keys whose value differs."""
    current = _lookup(data, parts)
    current = current if isinstance(current, dict) else {}
    changes = {key: value for key, value in values.items()
               if (key in current if value is None else current.get(key) != value)}
    if not changes:
        return
    header = _find_table(analyse(lines), parts)
    if header is None:
        additions = {key: value for key, value in changes.items() if value is not None}
        # A key to drop that is not under a [header] is left for the verification to refuse.
        if additions:
            _add_table(lines, dotted, parts, additions, style, after_parent)
    else:
        _set_keys(lines, header, changes, style)


def _verify(result, expected, difference):
    """Require the edited text to parse to exactly the expected data, else refuse with difference."""
    try:
        parsed = tomllib.loads(result)
    except tomllib.TOMLDecodeError as err:
        raise _Refusal(f"the edited text would not be valid TOML ({err})") from None
    if parsed != expected:
        raise _Refusal(difference)


def _toml_value(value):
    """Render a parsed TOML value (as containerd's own default config holds them) as TOML text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise _Refusal(f"containerd's default configuration holds a value this role cannot copy ({_show(value)})")


def _table_block(dotted, table, style):
    """Return the lines of a table and its sub-tables, as [headers] with their keys."""
    lines = [f"[{dotted}]"]
    lines += [f"{style.indent_step}{toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for key, value in table.items():
        if isinstance(value, dict):
            lines += [""] + _table_block(f"{dotted}.{toml_key(key)}", value, style)
    return lines


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


def _new_config(version, tables, blocks=()):
    """Return a whole new config holding only the version, any extra blocks and the handler's tables."""
    style = Style("\n", DEFAULT_INDENT)
    lines = [f"version = {version}"]
    for block in blocks:
        lines += [""] + block
    for dotted, values in tables:
        lines += [""] + _table_lines("", dotted, values, style)
    return "\n".join(lines) + "\n"


def _handler_keys(runtime_type, runtime_path):
    """Return the managed keys of the handler table; a None value means the key must be absent."""
    keys = {"runtime_type": _check_name(runtime_type, "runtime_type")}
    if runtime_path is not None:
        if not isinstance(runtime_path, str):
            raise AnsibleFilterError(f"runtime_path must be a string, got {_type_name(runtime_path)}")
        # An empty runtime_path drops one set before, e.g. for another bin dir.
        keys["runtime_path"] = runtime_path or None
    return keys


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
    if _is_empty(text):
        version = _supported_version(new_version, "containerd_gvisor_merge_config new_version", allow_text=True)
        handler_dotted = containerd_gvisor_handler_table(version, handler)
        tables = [(handler_dotted, {k: v for k, v in handler_keys.items() if v is not None})]
        tables += [(handler_dotted + ".options", options)] if options else []
        blocks = []
        try:
            missing = _missing_default_runtime({}, version, defaults)
            if missing:
                name, table = missing
                blocks.append([DEFAULT_RUNTIME_COMMENT] + _table_block(
                    f"{RUNTIMES_TABLE[version]}.{toml_key(name)}", table, Style("\n", DEFAULT_INDENT)))
        except _Refusal as refusal:
            raise AnsibleFilterError(f"cannot write {path}: {refusal}") from None
        return _new_config(version, tables, blocks)

    text = _as_text(text)
    data = _parse_config(text, path)
    handler_dotted = containerd_gvisor_handler_table(_config_version(data, path), handler)
    handler_parts = _table_path(handler_dotted)
    tables = [(handler_dotted, handler_parts, handler_keys)]
    if options:
        tables.append((handler_dotted + ".options", handler_parts + ("options",), options))
    try:
        expected = data
        for _dotted, parts, values in tables:
            expected = _set_in(expected, parts, values)
        missing = _missing_default_runtime(data, _config_version(data, path), defaults)
        if missing:
            name, table = missing
            expected = _set_in(expected, handler_parts[:-1], {name: copy.deepcopy(table)})
        if expected == data:
            return text  # already registered: leave the file exactly as it is
        lines = split_lines(text)
        style = _style(text, lines)
        if missing:
            blank = [""] if lines and _body(lines[-1]).strip() else []
            runtimes_dotted = RUNTIMES_TABLE[_config_version(data, path)]
            block = [DEFAULT_RUNTIME_COMMENT] + _table_block(f"{runtimes_dotted}.{toml_key(name)}", table, style)
            _insert(lines, len(lines), blank + block, style)
        for dotted, parts, values in tables:
            # A new .options table goes right below its handler table; a new handler table at the end.
            _apply(lines, data, dotted, parts, values, style, after_parent=parts != handler_parts)
        result = _keep_final_newline(text, "".join(lines))
        _verify(result, expected, "the edited text would change more than the runtime's own keys")
    except _Refusal as refusal:
        raise AnsibleFilterError(
            f"cannot merge the {handler} runtime into {path} safely: {refusal}; the file was left unchanged. "
            f"Define {handler_dotted} as a [table] or remove it."
        ) from None
    return result


# --- 4. removing the runtime handler --------------------------------------------------


def _removal_ranges(info, parts):
    """Return (first, last) line ranges holding the tables at or below parts."""
    ranges = []
    for header, line in enumerate(info):
        if line.kind not in ("table", "array") or line.parts[:len(parts)] != parts:
            continue
        last = _last_content(info, header)
        # Tables separated only by blank lines go together, with those blank lines.
        if ranges and all(info[i].kind == "blank" for i in range(ranges[-1][1] + 1, header)):
            ranges[-1] = (ranges[-1][0], last)
        else:
            ranges.append((header, last))
    return ranges


def _without_ranges(lines, info, ranges):
    """Return lines without the ranges, also dropping the blank line that set each one apart."""
    drop = set()
    for first, last in ranges:
        followed_by_blank = last + 1 >= len(info) or info[last + 1].kind == "blank"
        if first > 0 and info[first - 1].kind == "blank" and followed_by_blank:
            first -= 1
        drop.update(range(first, last + 1))
    return [line for i, line in enumerate(lines) if i not in drop]


def _without_table(data, parts, info):
    """Return a deep copy of data without the table at parts.

    Parent tables that only existed implicitly (no [header] of their own) and
    are left empty vanish from the parsed text too, so they go as well.
    """
    result = copy.deepcopy(data)
    del _lookup(result, parts[:-1])[parts[-1]]
    for depth in range(len(parts) - 1, 0, -1):
        parent = _lookup(result, parts[:depth])
        if parent or _find_table(info, parts[:depth]) is not None:
            break
        del _lookup(result, parts[:depth - 1])[parts[depth - 1]]
    return result


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
    lines = split_lines(text)
    info = analyse(lines)
    expected = _without_table(data, parts, info)
    ranges = _removal_ranges(info, parts)
    result = _keep_final_newline(text, "".join(_without_ranges(lines, info, ranges)))
    try:
        if not ranges:
            raise _Refusal("it has no [table] header of its own (it is an inline table or uses dotted keys)")
        _verify(result, expected, "the edited text would remove more than the runtime's own tables")
    except _Refusal as refusal:
        raise AnsibleFilterError(
            f"cannot remove the {handler} runtime from {path} safely: {refusal}; the file was left unchanged. "
            f"Define {handler_dotted} as a [table] or remove it by hand."
        ) from None
    return result


# --- 8. runsc.toml -------------------------------------------------------------------


def containerd_gvisor_runsc_toml(config, name="containerd_gvisor_runsc_config", binary_name=""):
    """Render /etc/containerd/runsc.toml, whose [runsc_config] values are runsc flags as strings.

    binary_name, when set, tells the shim where runsc is (needed outside containerd's PATH).
    """
    if config is None:
        config = {}
    if not isinstance(config, collections.abc.Mapping):
        raise AnsibleFilterError(f"{name} must be a mapping of runsc flag names to values, got {_type_name(config)}")
    if not isinstance(binary_name, str):
        raise AnsibleFilterError(f"binary_name must be a path to runsc or empty, got {_type_name(binary_name)}")
    lines = [RUNSC_TOML_HEADER]
    lines += [f"binary_name = {toml_string(binary_name)}"] if binary_name else []
    lines.append("[runsc_config]")
    for key in sorted(config, key=str):
        if not isinstance(key, str) or not _RUNSC_FLAG.fullmatch(key):
            raise AnsibleFilterError(
                f"{name} key {_show(key)} is not a runsc flag name "
                f"(lowercase letters, digits, '-' and '_', starting with a letter or digit)"
            )
        lines.append(f"{DEFAULT_INDENT}{key} = {toml_string(_runsc_value(config[key], f'{name}.{key}'))}")
    return "\n".join(lines) + "\n"


def _runsc_value(value, where):
    """Return a runsc flag value as the string runsc expects."""
    if isinstance(value, bool):
        return "true" if value else "false"  # runsc wants lowercase, not Python's True
    if isinstance(value, (int, float, str)):
        return str(value)
    raise AnsibleFilterError(
        f"{where} must be a string, number or boolean (runsc flags are strings), got {_type_name(value)}"
    )


# --- 9. failures -----------------------------------------------------------------------


def containerd_gvisor_failure_message(result):
    """Return what a failed task result says went wrong; for a loop, the message of every failed item."""
    if not isinstance(result, collections.abc.Mapping):
        return str(result)
    items = result.get("results")
    if isinstance(items, list):
        messages = [str(item["msg"]) for item in items
                    if isinstance(item, collections.abc.Mapping) and item.get("failed") and item.get("msg")]
        if messages:
            return "; ".join(dict.fromkeys(messages))  # each once, in order
    return str(result.get("msg") or "the task failed without a message")


class FilterModule:
    """Filters of the containerd_gvisor role."""

    def filters(self):
        return {
            "bool": containerd_gvisor_bool,
            "parse_sha512": containerd_gvisor_parse_sha512,
            "merge_config": containerd_gvisor_merge_config,
            "remove_handler": containerd_gvisor_remove_handler,
            "config_version": containerd_gvisor_config_version,
            "handler_table": containerd_gvisor_handler_table,
            "uses_systemd_cgroup": containerd_gvisor_uses_systemd_cgroup,
            "runsc_toml": containerd_gvisor_runsc_toml,
            "release_checksums": containerd_gvisor_release_checksums,
            "handler_runtime_type": containerd_gvisor_handler_runtime_type,
            "failure_message": containerd_gvisor_failure_message,
        }
