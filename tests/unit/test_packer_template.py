"""packer/node.json and packer/node.pkr.hcl hand the role's variables over unchanged and find the playbook.

The Packer templates declare their own defaults for the variables they pass to Ansible; these tests
keep them equal to the role's defaults, so defaults/main.yml stays the one source of truth, and keep
the HCL2 template the same template as the JSON one.

The HCL2 template is read two ways:
- `packer console` (Packer 1.6.6 evaluates HCL2 expressions and prints them with jsonencode) gives
  its variables and the provisioner's arguments and environment (locals), so Packer itself says
  what Ansible receives, and Ansible's own parser then reads those arguments;
- `packer inspect` lists its sources, provisioners and post-processors but not their settings, so a
  small reader below (blocks, attributes, strings, lists, objects and `var.`, `local.`, `path.root`
  references: the part of HCL2 the template uses, and an error on anything else) spells the file
  the way node.json does, and the two templates are compared whole. The reader is checked against
  `packer inspect`'s list of blocks.
"""

import json
import os
import re
import subprocess

import pytest
import yaml
from ansible import context
from ansible.module_utils.common.collections import ImmutableDict
from ansible.parsing.dataloader import DataLoader
from ansible.utils.vars import load_extra_vars

from unit_support import REPO

PACKER = REPO / "packer"
JSON_PATH = PACKER / "node.json"
HCL_PATH = PACKER / "node.pkr.hcl"
PLUGINS_PATH = PACKER / "plugins.pkr.hcl"
TEMPLATE = json.loads(JSON_PATH.read_text())
GVISOR_DEFAULTS = yaml.safe_load((REPO / "roles" / "containerd_gvisor" / "defaults" / "main.yml").read_text())
PASSED = ["containerd_gvisor_runtime", "containerd_gvisor_version", "containerd_gvisor_mirror_url"]
EXTRA_VARS = "ansible_extra_vars"

# Values for every variable the provisioner hands to Ansible, none of them a default; the extra vars
# set nested values and a variable the first three arguments also set.
SET_VARIABLES = {
    "containerd_gvisor_runtime": "true",
    "containerd_gvisor_version": "20221219",
    "containerd_gvisor_mirror_url": "http://127.0.0.1:18080",
    EXTRA_VARS: json.dumps(
        {
            "containerd_gvisor_runsc_config": {"debug": "true", "debug-log": "/var/log/runsc/"},
            "containerd_gvisor_checksums": {"runsc": "0" * 128},
            "containerd_gvisor_bin_dir": "/opt/bin",
            "containerd_gvisor_version": "20240729",
        }
    ),
}


def run_packer(*args, stdin=None):
    env = dict(os.environ, CHECKPOINT_DISABLE="1")
    proc = subprocess.run(
        ["packer", *args], cwd=REPO, env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"packer {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def packer_console(expression, variables=None):
    """An HCL2 expression evaluated by `packer console` on node.pkr.hcl, as Python data."""
    var_args = [f"-var={name}={value}" for name, value in (variables or {}).items()]
    return json.loads(run_packer("console", *var_args, str(HCL_PATH), stdin=f"jsonencode({expression})\n"))


# --- A reader for the part of HCL2 that node.pkr.hcl uses, spelling it as node.json does ---

HCL_TOKEN = re.compile(
    r"""(?P<space>[ \t]+)|(?P<comment>(?:\#|//)[^\n]*)|(?P<newline>\n)
    |(?P<string>"(?:[^"\\\n]|\\.)*")|(?P<name>[A-Za-z_][\w.-]*)|(?P<punct>[\[\]{}=,])""",
    re.X,
)


def hcl_tokens(text):
    tokens, pos = [], 0
    while pos < len(text):
        match = HCL_TOKEN.match(text, pos)
        if not match:
            raise ValueError(f"node.pkr.hcl uses HCL2 this reader does not know at {text[pos:pos + 40]!r}")
        if match.lastgroup not in ("space", "comment"):
            tokens.append((match.lastgroup, match.group()))
        pos = match.end()
    return tokens + [("end", "")]


class HclReader:
    """Reads blocks and attributes; values stay expressions until spelled by as_json_template."""

    def __init__(self, text):
        self.tokens, self.pos = hcl_tokens(text), 0

    def peek(self, skip_newlines=True):
        while skip_newlines and self.tokens[self.pos][0] == "newline":
            self.pos += 1
        return self.tokens[self.pos]

    def take(self, value=None):
        token = self.peek()
        if value is not None and token[1] != value:
            raise ValueError(f"expected {value!r}, found {token[1]!r}")
        self.pos += 1
        return token

    def body(self, closing):
        """Attributes {name: expression} and blocks [(type, labels, body)] up to the closing token."""
        attributes, blocks = {}, []
        while self.peek()[1] != closing:
            _ignored, name = self.take()
            if self.peek()[1] == "=":
                self.take("=")
                attributes[name] = self.expression()
                continue
            labels = []
            while self.peek()[0] == "string":
                labels.append(json.loads(self.take()[1]))
            self.take("{")
            blocks.append((name, labels, self.body("}")))
            self.take("}")
        return attributes, blocks

    def expression(self):
        kind, value = self.take()
        if value == "[":
            items = []
            while self.peek()[1] != "]":
                items.append(self.expression())
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("]")
            return ("list", items)
        if value == "{":
            items = {}
            while self.peek()[1] != "}":
                key = self.take()[1]
                self.take("=")
                items[key] = self.expression()
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("}")
            return ("object", items)
        if kind in ("string", "name"):
            return (kind, value)
        raise ValueError(f"unexpected {value!r} in an expression")


def as_json_template(expression, hcl_locals):
    """An expression of node.pkr.hcl spelled as node.json spells the same value."""
    kind, value = expression
    if kind == "list":
        return [as_json_template(item, hcl_locals) for item in value]
    if kind == "object":
        return {key: as_json_template(item, hcl_locals) for key, item in value.items()}
    if kind == "string":
        return re.sub(r"\$\{([^}]*)\}", lambda m: reference(m.group(1), hcl_locals), json.loads(value))
    if value in ("true", "false"):
        return value == "true"
    if value.startswith("local."):
        return as_json_template(hcl_locals[value.removeprefix("local.")], hcl_locals)
    return reference(value, hcl_locals)


def reference(name, hcl_locals):
    if name.startswith("var."):
        return "{{user `%s`}}" % name.removeprefix("var.")
    if name == "path.root":
        return "{{template_dir}}"
    raise ValueError(f"node.pkr.hcl refers to {name}, which node.json has no spelling for")


def read_hcl_template():
    """node.pkr.hcl in node.json's shape: variables, builders, provisioners, post-processors."""
    _ignored, blocks = HclReader(HCL_PATH.read_text()).body("")
    hcl_locals = {}
    for block_type, _ignored, (attributes, _ignored) in blocks:
        if block_type == "locals":
            hcl_locals |= attributes
    variables, sources, builds = {}, {}, []
    for block_type, labels, (attributes, inner) in blocks:
        if block_type == "variable":
            assert attributes["type"] == ("name", "string"), f"{labels[0]}: Packer JSON variables are strings"
            variables[labels[0]] = as_json_template(attributes["default"], hcl_locals)
        elif block_type == "source":
            sources["source.%s.%s" % tuple(labels)] = {
                "type": labels[0],
                "name": labels[1],
                **{key: as_json_template(value, hcl_locals) for key, value in attributes.items()},
            }
        elif block_type == "build":
            builds.append((attributes, inner))
    ((build_attributes, build_blocks),) = builds
    builders = [sources[ref] for ref in as_json_template(build_attributes["sources"], hcl_locals)]
    names = {"%s.%s" % (b["type"], b["name"]): b["name"] for b in builders}
    steps = {"provisioner": [], "post-processor": []}
    for block_type, labels, (attributes, _ignored) in build_blocks:
        step = {"type": labels[0], **{key: as_json_template(value, hcl_locals) for key, value in attributes.items()}}
        for key in ("only", "except"):
            if key in step:
                step[key] = [names[source] for source in step[key]]
        steps[block_type].append(step)
    return {
        "variables": variables,
        "builders": builders,
        "provisioners": steps["provisioner"],
        "post-processors": steps["post-processor"],
    }


HCL_TEMPLATE = read_hcl_template()
TEMPLATES = {"node.json": TEMPLATE, "node.pkr.hcl": HCL_TEMPLATE}


def ansible_provisioner(template):
    (provisioner,) = [p for p in template["provisioners"] if p["type"] == "ansible"]
    return provisioner


def resolve(value):
    """A path in the template, with {{template_dir}} replaced."""
    return (PACKER / value.replace("{{template_dir}}/", "")).resolve()


def packer_string(value):
    """A role default as a Packer user variable spells it: a string, booleans in lower case."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def render_json_arguments(variables):
    """node.json's extra_arguments with its user variables set (defaults for those not given)."""
    values = TEMPLATE["variables"] | variables
    return [
        re.sub(r"\{\{user `(\w+)`\}\}", lambda m: values[m.group(1)], arg)
        for arg in ansible_provisioner(TEMPLATE)["extra_arguments"]
    ]


def ansible_reads(monkeypatch, extra_arguments):
    """The extra vars ansible-playbook makes of these arguments, read by Ansible's own code."""
    values = [extra_arguments[i + 1] for i, arg in enumerate(extra_arguments) if arg == "--extra-vars"]
    assert len(values) * 2 == len(extra_arguments), f"only --extra-vars arguments expected: {extra_arguments}"
    monkeypatch.setattr(context, "CLIARGS", ImmutableDict(extra_vars=tuple(values)))
    monkeypatch.setattr(load_extra_vars, "extra_vars", None, raising=False)  # it keeps the first result
    return dict(load_extra_vars(DataLoader()))


# --- Both templates ---


def test_hcl2_template_is_the_json_template():
    expected = {key: value for key, value in TEMPLATE.items() if key != "description"}
    assert HCL_TEMPLATE == expected


def test_reader_sees_the_blocks_packer_sees():
    out = run_packer("inspect", str(HCL_PATH))
    sources = re.findall(r"^ {6}(\S+\.\S+)$", out, re.M)
    assert sources == ["%s.%s" % (b["type"], b["name"]) for b in HCL_TEMPLATE["builders"]]
    provisioners = out.split("provisioners:")[1].split("post-processors:")[0].split()
    assert provisioners == [p["type"] for p in HCL_TEMPLATE["provisioners"]]
    post_processors = [w for w in out.split("post-processors:")[1].split() if not w.endswith(":")]
    assert post_processors == [p["type"] for p in HCL_TEMPLATE["post-processors"]]


def test_packer_reads_the_same_defaults_from_both():
    assert packer_console("var") == TEMPLATE["variables"]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("name", PASSED)
def test_template_default_is_the_roles_default(template, name):
    assert TEMPLATES[template]["variables"][name] == packer_string(GVISOR_DEFAULTS[name])


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_gvisor_variable_reaches_ansible(template):
    args = ansible_provisioner(TEMPLATES[template])["extra_arguments"]
    values = [args[i + 1] for i, arg in enumerate(args) if arg == "--extra-vars"]
    # The three role variables as name=value, then the free-form JSON object on its own, last.
    passed = dict(value.split("=", 1) for value in values[:-1])
    assert passed == {name: "{{user `%s`}}" % name for name in PASSED}
    assert values[-1] == "{{user `%s`}}" % EXTRA_VARS
    variables = TEMPLATES[template]["variables"]
    assert {n for n in variables if n.startswith("containerd_gvisor_")} == set(PASSED)


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("case", ["defaults", "set"])
def test_ansible_gets_the_variables_and_extra_vars(monkeypatch, template, case):
    variables = SET_VARIABLES if case == "set" else {}
    if template == "node.pkr.hcl":
        # Packer evaluates the provisioner's arguments itself.
        args = packer_console("local.ansible_extra_arguments", variables)
    else:
        args = render_json_arguments(variables)
    values = TEMPLATE["variables"] | variables
    expected = {name: values[name] for name in PASSED} | json.loads(values[EXTRA_VARS])
    # The default "{}" adds nothing; a JSON object keeps its nesting and, passed last, wins.
    assert ansible_reads(monkeypatch, args) == expected
    if case == "set":
        assert expected["containerd_gvisor_version"] == "20240729"
        assert expected["containerd_gvisor_runsc_config"]["debug-log"] == "/var/log/runsc/"


@pytest.mark.parametrize("template", TEMPLATES)
def test_playbook_roles_and_config_are_found(template):
    provisioner = ansible_provisioner(TEMPLATES[template])
    assert resolve(provisioner["playbook_file"]) == REPO / "playbooks" / "node.yml"
    env = dict(e.split("=", 1) for e in provisioner["ansible_env_vars"])
    assert resolve(env["ANSIBLE_CONFIG"]) == REPO / "ansible.cfg"
    # The playbook finds the collection through the link beside it.
    collection = resolve("{{template_dir}}/../playbooks/collections/ansible_collections/gvisor_nodes/containerd_gvisor")
    assert collection == REPO
    # Packer's SSH proxy offers only ssh-rsa host and user keys.
    assert "HostKeyAlgorithms=+ssh-rsa" in env["ANSIBLE_SSH_ARGS"]
    assert "PubkeyAcceptedKeyTypes=+ssh-rsa" in env["ANSIBLE_SSH_ARGS"]


def test_packer_finds_the_playbook_and_config_from_the_hcl2_template():
    env = dict(e.split("=", 1) for e in packer_console("local.ansible_env_vars"))
    assert os.path.realpath(env["ANSIBLE_CONFIG"]) == str(REPO / "ansible.cfg")


@pytest.mark.parametrize("template", TEMPLATES)
def test_docker_builder_uses_a_local_image_and_the_host_network(template):
    (docker,) = [b for b in TEMPLATES[template]["builders"] if b["type"] == "docker"]
    assert docker["pull"] is False and docker["commit"] is True
    assert "--network=host" in docker["run_command"]


def test_hcl2_files_are_formatted_as_packer_fmt_writes_them():
    # packer fmt parses the plugins file too, though Packer 1.6 cannot build with its block.
    assert run_packer("fmt", "-check", str(PACKER)) == ""


def test_plugins_file_requires_the_three_plugins_of_major_version_1():
    text = PLUGINS_PATH.read_text()
    required = dict(re.findall(r'source\s*=\s*"(github\.com/hashicorp/\w+)"\s*\n\s*version\s*=\s*"([^"]+)"', text))
    assert required == {f"github.com/hashicorp/{name}": ">= 1.0.0, < 2.0.0" for name in ("docker", "ansible", "qemu")}
    assert {b["type"] for b in HCL_TEMPLATE["builders"]} | {"ansible"} == {"docker", "ansible", "qemu"}


@pytest.mark.parametrize("var_file", sorted(p.name for p in (PACKER / "vars").glob("*.json")))
def test_example_var_files_ask_for_gvisor_as_a_string(var_file):
    example = json.loads((PACKER / "vars" / var_file).read_text())
    assert set(example) <= set(TEMPLATE["variables"])
    assert all(isinstance(value, str) for value in example.values())
    assert example["containerd_gvisor_runtime"] == "true"
    assert re.fullmatch(r"latest|[0-9]{8}(\.[0-9]+)?", example["containerd_gvisor_version"])
    assert isinstance(json.loads(example.get(EXTRA_VARS, "{}")), dict)
