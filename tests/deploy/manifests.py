"""Rendering deploy/k8s overlays with kubectl and finding objects in what comes out."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.server_process import ROOT

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu", "keda")
NO_KUBECTL = "kubectl not installed (Debian package kubernetes-client; `make test` installs it when run as root)"
# Kinds Kubernetes itself defines have schemas in kubernetes-validate; these come from operators' CRDs.
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}


def has_kubectl() -> bool:
    return shutil.which("kubectl") is not None


def render(overlay: str) -> list[dict]:
    """`kubectl kustomize deploy/k8s/<overlay>` as a list of objects."""
    result = subprocess.run(["kubectl", "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: list[dict], kind: str, name_prefix: str = "mlserve") -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)]
    assert len(matches) == 1, f"{len(matches)} {kind} named {name_prefix}*"
    return matches[0]


def kinds(objects: list[dict]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def adapter_rules() -> list[dict]:
    return yaml.safe_load(Path(K8S / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"]
