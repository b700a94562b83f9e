"""deploy/k8s: each overlay renders with kubectl, every built-in object passes the Kubernetes schemas
(kubernetes-validate, strict: unknown fields fail), and the pieces agree with each other and with
mlserve's own settings (drain timing, probe paths, selectors, metric names)."""

from __future__ import annotations

import asyncio
import copy
import re
import secrets
import signal
import socket
import urllib.error
import urllib.request
from functools import cache
from urllib.parse import urlsplit

import kubernetes_validate
import pytest

from mlserve.config import check_state_url, load_config
from mlserve.examples import write_identity_onnx
from mlserve.state import open_state
from tests.deploy.cluster import poll
from tests.deploy.manifests import (
    CRD_KINDS, NO_KUBECTL, OVERLAYS, adapter_rules, container, find, has_kubectl, kinds, render, selects,
)
from tests.server_process import ROOT, MlserveProcess
from tests.state.redis_server import NO_REDIS, RedisServer, has_redis

pytestmark = pytest.mark.skipif(not has_kubectl(), reason=NO_KUBECTL)
# The oldest and newest Kubernetes the manifests are meant for.
KUBE_VERSIONS = ("1.29.0", "1.37.0")

rendered = cache(render)


def overlay_id(overlay: str) -> str:
    """Not the bare word "gpu": tests/conftest.py skips items with that keyword where no CUDA device is."""
    return f"{overlay}-overlay"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=overlay_id)
def test_every_object_validates_against_the_kubernetes_schemas(overlay):
    objects = rendered(overlay)
    expected = {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "ServiceMonitor"}
    assert expected <= set(kinds(objects))
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue  # no schema ships for operators' CRDs: test_crd_objects_point_at_real_objects checks them
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_rejects_a_misspelt_field():
    deployment = copy.deepcopy(find(rendered("cpu"), "Deployment"))
    container(deployment)["readinessProbe"]["periodSecond"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


def _mlserve_config(objects, tmp_path):
    config_map = find(objects, "ConfigMap", "mlserve-config")
    path = tmp_path / "mlserve.toml"
    path.write_text(config_map["data"]["mlserve.toml"])
    return load_config(path, environ={})


@pytest.mark.parametrize("overlay", OVERLAYS, ids=overlay_id)
def test_grace_period_covers_prestop_and_mlserve_drain(overlay, tmp_path):
    objects = rendered(overlay)
    config = _mlserve_config(objects, tmp_path)  # mlserve's own parser: an unknown key fails here
    deployment = find(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    pre_stop = float(command[1])
    drain = pre_stop + config.limits.shutdown_delay_s + config.server.shutdown_grace_s
    assert drain < pod["terminationGracePeriodSeconds"] <= drain + 10
    assert config.limits.shutdown_delay_s > 0  # readiness turns 503 before the listener closes
    assert config.registry.models.startswith("s3://") and config.registry.poll_interval_s > 0
    assert config.auth.keys_file.startswith(_mount_of(pod, "keys"))


def _mount_of(pod: dict, volume: str) -> str:
    mounts = {m["name"]: m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
    return mounts[volume]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=overlay_id)
def test_probes_ports_and_user(overlay, tmp_path):
    objects = rendered(overlay)
    config = _mlserve_config(objects, tmp_path)
    deployment = find(objects, "Deployment")
    main = container(deployment)
    assert main["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert main["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # slow loads are not killed
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["http"] == config.server.port
    env = {e["name"]: e.get("value") for e in main.get("env", [])}
    assert env.get("MLSERVE_SERVER_PORT", str(config.server.port)) == str(config.server.port)
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == find(objects, "ConfigMap", "mlserve-config")["metadata"]["name"]
    assert volumes["keys"]["secret"]["secretName"] == find(objects, "Secret", "mlserve-keys")["metadata"]["name"]
    assert _mount_of(deployment["spec"]["template"]["spec"], "cache") == config.registry.cache_dir


@pytest.mark.parametrize("overlay", OVERLAYS, ids=overlay_id)
def test_service_and_budget_select_the_pods(overlay):
    objects = rendered(overlay)
    deployment = find(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    service = find(objects, "Service")
    assert selects(service["spec"]["selector"], pod_labels)
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert selects(find(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert selects(constraint["labelSelector"]["matchLabels"], pod_labels)
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"mlserve"}


def test_gpu_overlay_asks_for_a_gpu_and_the_cuda_image():
    main = container(find(rendered("gpu"), "Deployment"))
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert main["image"].endswith(":cuda")
    assert container(find(rendered("cpu"), "Deployment"))["image"].endswith(":cpu")
    assert "nvidia.com/gpu" not in container(find(rendered("cpu"), "Deployment"))["resources"]["limits"]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"], ids=overlay_id)
def test_hpa_scales_the_deployment_on_metrics_the_adapter_publishes(overlay):
    objects = rendered(overlay)
    hpa = find(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == find(objects, "Deployment")["metadata"]["name"]
    published = {rule["name"]["as"] for rule in adapter_rules()}
    pods_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert pods_metrics == {"mlserve_queue_depth", "mlserve_in_flight_requests"} <= published
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    if overlay == "cpu":
        assert cpu[0]["resource"]["name"] == "cpu"  # the fallback when the adapter has no data
    else:
        assert not cpu  # a GPU pod's CPU says little about its load
    assert find(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"] + 1


def test_adapter_rules_sum_each_series_per_pod():
    for rule in adapter_rules():
        series = re.match(r"^(mlserve_[a-z_]+)\{", rule["seriesQuery"]).group(1)
        assert re.fullmatch(rule["name"]["matches"], series)
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert "by (<<.GroupBy>>)" in rule["metricsQuery"]


def test_crd_objects_point_at_real_objects():
    cpu = rendered("cpu")
    service = find(cpu, "Service")
    monitor = find(cpu, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("http", "/metrics")]
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    keda = rendered("keda")
    assert "HorizontalPodAutoscaler" not in kinds(keda)  # KEDA owns the HPA it makes; two would fight
    scaled = find(keda, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == find(keda, "Deployment")["metadata"]["name"]
    queries = [t["metadata"]["query"] for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    assert {re.match(r"sum\((mlserve_[a-z_]+)\{", q).group(1) for q in queries} == {
        "mlserve_queue_depth", "mlserve_in_flight_requests"}
    assert {"cpu"} <= {t["type"] for t in scaled["spec"]["triggers"]}


def test_image_healthcheck_and_user():
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (ROOT / name).read_text()
        assert len(re.findall(r"(?m)^FROM ", text)) == 2, name  # build stage + runtime stage
        final = text[text.rindex("\nFROM "):]
        assert "/v2/health/ready" in final.split("HEALTHCHECK", 1)[1].split("\n\n")[0]
        user = re.search(r"(?m)^USER (\S+)", final).group(1)
        assert not user.startswith(("0", "root")), user
        assert not re.search(r"(?m)^RUN .*\b(gcc|build-essential|g\+\+)\b", final), name
        assert re.search(r'(?m)^ENTRYPOINT \["mlserve", "start"\]$', final), name  # exec form: SIGTERM reaches mlserve


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_shipped_config_and_keys_serve_and_drain(tmp_path):
    """A real mlserve on the ConfigMap's mlserve.toml and the Secret's keys file (repository, address
    and cache moved to this machine by MLSERVE_* variables, as the pod's env would): health and
    /metrics open, inference refused without a key, and SIGTERM turns readiness 503 before it exits."""
    objects = rendered("cpu")
    (tmp_path / "mlserve.toml").write_text(find(objects, "ConfigMap", "mlserve-config")["data"]["mlserve.toml"])
    (tmp_path / "keys.json").write_text(find(objects, "Secret", "mlserve-keys")["stringData"]["keys.json"])
    write_identity_onnx(tmp_path / "repo" / "m" / "1" / "model.onnx", "FP32")
    env = {"MLSERVE_SERVER_HOST": "127.0.0.1", "MLSERVE_REGISTRY_CACHE_DIR": str(tmp_path / "cache"),
           "MLSERVE_AUTH_KEYS_FILE": str(tmp_path / "keys.json")}
    server = MlserveProcess(tmp_path / "repo", "--config", str(tmp_path / "mlserve.toml"),
                            log_path=tmp_path / "mlserve.log", env=env).wait_ready()
    try:
        assert _status(f"{server.url}/v2/health/live") == 200
        assert _status(f"{server.url}/metrics") == 200
        assert _status(f"{server.url}/v2/models/m") == 401
        server.signal(signal.SIGTERM)
        poll(lambda: _status(f"{server.url}/v2/health/ready") == 503, timeout=10, interval=0.05)
        assert server.proc.wait(60) == 0
    finally:
        server.stop()
    assert "closing the listener in 2.0 s" in server.log()


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of a container's args and env values."""
    return re.sub(r"\$\(([A-Z_]+)\)", lambda m: env[m.group(1)], value)


def _secret_ref(container_spec: dict, name: str) -> tuple[str, str]:
    (entry,) = [e for e in container_spec["env"] if e["name"] == name]
    ref = entry["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=overlay_id)
def test_every_replica_is_pointed_at_the_state_redis_with_its_password(overlay):
    objects = rendered(overlay)
    redis = find(objects, "StatefulSet", "state-redis")
    redis_service = find(objects, "Service", "state-redis")
    server_service = find(objects, "Service", "mlserve")
    redis_pod_labels = redis["spec"]["template"]["metadata"]["labels"]
    server_pod_labels = find(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects(redis_service["spec"]["selector"], redis_pod_labels)
    assert not selects(redis_service["spec"]["selector"], server_pod_labels)
    assert not selects(server_service["spec"]["selector"], redis_pod_labels)
    assert redis["spec"]["serviceName"] == redis_service["metadata"]["name"]
    redis_container = container(redis)
    main = container(find(objects, "Deployment"))
    assert _secret_ref(main, "REDIS_PASSWORD") == _secret_ref(redis_container, "REDIS_PASSWORD")
    find(objects, "Secret", _secret_ref(main, "REDIS_PASSWORD")[0])  # the Secret ships in the overlay
    (url,) = [e["value"] for e in main["env"] if e["name"] == "MLSERVE_STATE_URL"]
    expanded = _expand(url, {"REDIS_PASSWORD": "pw"})
    parts = urlsplit(check_state_url(expanded))
    assert parts.hostname == redis_service["metadata"]["name"] and parts.password == "pw"
    assert parts.port == redis_service["spec"]["ports"][0]["port"]
    assert redis_service["spec"]["ports"][0]["targetPort"] == redis_container["ports"][0]["name"]
    mounts = {m["name"]: m["mountPath"] for m in redis_container["volumeMounts"]}
    args = redis_container["args"]
    assert mounts[redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]] == args[args.index("--dir") + 1]
    # The pod's environment reaches mlserve's own settings: the store it opens is that Redis.
    config = load_config(None, environ={"MLSERVE_STATE_URL": expanded})
    assert config.state.url == expanded


@pytest.mark.skipif(not has_redis(), reason=NO_REDIS)
def test_the_state_redis_arguments_run_a_redis_that_keeps_mlserve_state_across_a_restart(tmp_path):
    """The StatefulSet's own arguments, given to a real redis-server: it asks mlserve for the password,
    and a document mlserve wrote is there after Redis restarts (the append-only file on its volume)."""
    redis_container = container(find(rendered("cpu"), "StatefulSet", "state-redis"))
    password = secrets.token_hex(8)
    args = [_expand(a, {"REDIS_PASSWORD": password}) for a in redis_container["args"]]
    args[args.index("--dir") + 1] = str(tmp_path)
    server = RedisServer(tmp_path, password=password)
    server.start(extra_args=args)

    async def write_then_read(expect_written: bool):
        store = open_state(server.url, "mlserve")
        await store.start()
        try:
            if expect_written:
                return await store.get("control:m")
            return await store.put("control:m", {"split": {"1": 10, "2": 90}}, expect=0)
        finally:
            await store.close()

    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(64).startswith(b"-NOAUTH")  # a client without the password gets nothing
        assert asyncio.run(write_then_read(False)).version == 1
        server.stop(graceful=True)
        server.start(extra_args=args)
        kept = asyncio.run(write_then_read(True))
        assert kept is not None and kept.data == {"split": {"1": 10, "2": 90}}
    finally:
        server.stop()

