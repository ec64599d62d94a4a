"""The Kubernetes manifests in kubernetes/ refer to what the containerd_gvisor role registers."""

import yaml

from conftest import REPO

GVISOR_DEFAULTS = yaml.safe_load((REPO / "roles" / "containerd_gvisor" / "defaults" / "main.yml").read_text())


def manifest(name):
    return yaml.safe_load((REPO / "kubernetes" / name).read_text())


def test_runtimeclass_handler_is_the_roles_handler():
    runtime_class = manifest("runtimeclass.yaml")
    assert runtime_class["apiVersion"] == "node.k8s.io/v1" and runtime_class["kind"] == "RuntimeClass"
    assert runtime_class["handler"] == GVISOR_DEFAULTS["containerd_gvisor_runtime_handler"]


def test_example_pod_uses_the_runtimeclass():
    pod = manifest("pod-dmesg.yaml")
    assert pod["spec"]["runtimeClassName"] == manifest("runtimeclass.yaml")["metadata"]["name"]
