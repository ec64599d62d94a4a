"""The RuntimeClasses the role writes, and the examples in kubernetes/, are valid Kubernetes objects.

Each manifest is checked against Kubernetes' OpenAPI schema (kubernetes-validate, strict: no unknown
fields) and against what the role registers on the nodes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from unit_support import REPO

KUBERNETES = "1.30"  # the oldest Kubernetes whose schema the manifests must pass
GVISOR_DEFAULTS = yaml.safe_load((REPO / "roles" / "containerd_gvisor" / "defaults" / "main.yml").read_text())
TEMPLATE = REPO / "roles" / "containerd_gvisor" / "templates" / "runtimeclass.yaml.j2"


def validate(manifest):
    kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    return manifest


def render(tmp_path, handler, **variables):
    """The RuntimeClass the role writes for a handler, rendered by ansible-core as the role does."""
    values = {"containerd_gvisor_node_labels": {}, "containerd_gvisor_node_taints": [], "containerd_gvisor_pod_overhead": {},
              **variables, "given_handler": handler}
    env = dict(os.environ, ANSIBLE_LOCAL_TEMP=str(tmp_path), ANSIBLE_STDOUT_CALLBACK="minimal", ANSIBLE_CALLBACK_RESULT_FORMAT="json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_NOCOLOR="1")
    expression = f"{{{{ lookup('ansible.builtin.template', '{TEMPLATE}', template_vars={{'name': given_handler['name']}}) }}}}"
    proc = subprocess.run([str(Path(sys.executable).with_name("ansible")), "localhost", "-c", "local", "-m", "debug",
                           "-a", json.dumps({"msg": expression}), "-e", json.dumps(values)],
                          capture_output=True, text=True, env=env, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The minimal callback, which every ansible-core has: "localhost | SUCCESS => {...}".
    return yaml.safe_load(json.loads(proc.stdout.split(" => ", 1)[1])["msg"])


def test_a_runtimeclass_names_its_handler(tmp_path):
    manifest = validate(render(tmp_path, {"name": "gvisor-debug"}))
    assert manifest["metadata"]["name"] == manifest["handler"] == "gvisor-debug"
    assert "scheduling" not in manifest and "overhead" not in manifest


def test_labels_taints_and_overhead_become_scheduling_and_pod_overhead(tmp_path):
    manifest = validate(render(
        tmp_path, {"name": "gvisor"},
        containerd_gvisor_node_labels={"sandbox.gvisor.dev/runtime": "gvisor"},
        containerd_gvisor_node_taints=[{"key": "sandbox.gvisor.dev/runtime", "value": "gvisor", "effect": "NoSchedule"},
                                       {"key": "dedicated", "effect": "NoExecute"}],
        containerd_gvisor_pod_overhead={"cpu": "250m", "memory": "64Mi"}))
    assert manifest["scheduling"] == {
        "nodeSelector": {"sandbox.gvisor.dev/runtime": "gvisor"},
        "tolerations": [
            {"key": "sandbox.gvisor.dev/runtime", "operator": "Equal", "value": "gvisor", "effect": "NoSchedule"},
            {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"},
        ],
    }
    assert manifest["overhead"] == {"podFixed": {"cpu": "250m", "memory": "64Mi"}}


def test_the_schema_check_catches_a_bad_manifest():
    with pytest.raises(kubernetes_validate.ValidationError):
        validate({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "gvisor"}, "handlr": "gvisor"})


def example(name):
    return validate(yaml.safe_load((REPO / "kubernetes" / name).read_text()))


def test_example_runtimeclass_handler_is_the_roles_handler():
    runtime_class = example("runtimeclass.yaml")
    assert runtime_class["handler"] == GVISOR_DEFAULTS["containerd_gvisor_runtime_handler"]


def test_example_pod_uses_the_runtimeclass():
    pod = example("pod-dmesg.yaml")
    assert pod["spec"]["runtimeClassName"] == example("runtimeclass.yaml")["metadata"]["name"]
