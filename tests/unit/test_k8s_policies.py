"""deploy/k8s network exposure (issue 18 item 14): who may open a connection to which pod and
port, evaluated from the NetworkPolicies in the manifests with the Kubernetes semantics
(``networking.k8s.io/v1``, ingress rules) over the pods the manifests create, plus the public
entry (Ingress: TLS, HTTPS redirect, HSTS, only the API published) and Ray's dashboard/Jobs API.

The matrix lists every allowed (source, destination, port); every other combination of the
sources and destination ports below must be denied."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.unit.test_deploy import DEPLOY, k8s_objects, load_docs, workloads

NAMESPACE = "tunefleet"


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # named container ports


# ------------------------------------------------------------------ NetworkPolicy semantics
def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector: matchLabels and matchExpressions ANDed; ``{}`` selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def namespace_labels(namespace: str) -> dict[str, str]:
    """What a namespace carries for sure: the API server's ``kubernetes.io/metadata.name``."""
    return {"kubernetes.io/metadata.name": namespace}


def peer_admits(peer: dict[str, Any], policy_namespace: str, source: Pod) -> bool:
    if "ipBlock" in peer:
        raise AssertionError(f"ipBlock peers are not modelled (and not wanted): {peer}")
    ns_selector, pod_selector = peer.get("namespaceSelector"), peer.get("podSelector")
    if ns_selector is None:  # a podSelector alone: pods of the policy's own namespace
        in_namespace = source.namespace == policy_namespace
    else:
        in_namespace = selects(ns_selector, namespace_labels(source.namespace))
    return in_namespace and (pod_selector is None or selects(pod_selector, source.labels))


def port_admits(ports: list[dict[str, Any]], dest: Pod, port: int) -> bool:
    if not ports:
        return True  # no ports: every port
    for entry in ports:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        value = entry.get("port")
        if value is None:
            return True
        number = dest.ports.get(value) if isinstance(value, str) else value
        if number is not None and number <= port <= entry.get("endPort", number):
            return True
    return False


def policy_types(spec: dict[str, Any]) -> list[str]:
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def allowed(policies: list[dict[str, Any]], source: Pod, dest: Pod, port: int) -> bool:
    """May ``source`` open a TCP connection to ``dest:port``? A pod no ingress policy selects
    accepts everything; a selected pod accepts what at least one rule of one of them allows
    (a rule: any of its peers, and any of its ports)."""
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", NAMESPACE) == dest.namespace
        and "Ingress" in policy_types(p["spec"])
        and selects(p["spec"]["podSelector"], dest.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        policy_ns = policy["metadata"].get("namespace", NAMESPACE)
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from") or []
            if peers and not any(peer_admits(peer, policy_ns, source) for peer in peers):
                continue
            if port_admits(rule.get("ports") or [], dest, port):
                return True
    return False


def test_evaluator_semantics() -> None:
    """The evaluator itself, on small policies with known answers."""
    a = Pod("a", "ns", {"app": "a"}, {"http": 80})
    b = Pod("b", "ns", {"app": "b"})
    b_elsewhere = Pod("b2", "other", {"app": "b"})
    assert allowed([], b, a, 80)  # nothing selects a: open
    deny = {"metadata": {"namespace": "ns"}, "spec": {"podSelector": {}}}
    assert not allowed([deny], b, a, 80)
    only_b = {
        "metadata": {"namespace": "ns"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "a"}},
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"app": "b"}}}],
                    "ports": [{"port": "http"}],
                }
            ],
        },
    }
    assert allowed([deny, only_b], b, a, 80)
    assert not allowed([deny, only_b], b, a, 81)  # another port
    assert not allowed([deny, only_b], b_elsewhere, a, 80)  # same labels, other namespace
    both = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}},
        "podSelector": {"matchLabels": {"app": "b"}},
    }
    ns_and_pod = {
        "metadata": {"namespace": "ns"},
        "spec": {"podSelector": {}, "ingress": [{"from": [both]}]},
    }
    assert allowed([ns_and_pod], b_elsewhere, a, 80)
    assert not allowed([ns_and_pod], Pod("c", "other", {"app": "c"}), a, 80)  # AND, not OR
    either = {
        "metadata": {"namespace": "ns"},
        "spec": {
            "podSelector": {},
            "ingress": [
                {
                    "from": [
                        {"namespaceSelector": both["namespaceSelector"]},
                        {"podSelector": both["podSelector"]},
                    ]
                }
            ],
        },
    }
    assert allowed([either], Pod("c", "other", {"app": "c"}), a, 80)  # two peers: OR
    expr = {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "x"]}]}
    assert selects(expr, a.labels) and not selects(expr, b.labels)
    egress_only = {
        "metadata": {"namespace": "ns"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"]},
    }
    assert allowed([egress_only], b, a, 80)


# ------------------------------------------------------------------ the manifests' pods
@functools.cache  # the manifests are read once for the whole matrix
def policies() -> list[dict[str, Any]]:
    return [o for o in k8s_objects() if o["kind"] == "NetworkPolicy"]


def ray_cluster() -> dict[str, Any]:
    (cluster,) = [o for o in k8s_objects() if o["kind"] == "RayCluster"]
    return cluster


@functools.cache
def fleet_pods() -> dict[str, Pod]:
    """Every pod the manifests create, with its template labels and named ports; Ray pods
    with the labels KubeRay gives them (``ray.io/cluster``, ``ray.io/node-type``)."""
    pods: dict[str, Pod] = {}
    for name, obj in workloads().items():
        template = obj["spec"]["template"]
        ports = {
            p["name"]: p["containerPort"]
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
            if "name" in p
        }
        pods[name] = Pod(name, NAMESPACE, dict(template["metadata"]["labels"]), ports)
    cluster = ray_cluster()
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    base = {"ray.io/cluster": cluster["metadata"]["name"]}
    pods["ray-head"] = Pod(
        "ray-head",
        NAMESPACE,
        base | {"ray.io/node-type": "head"},
        {p["name"]: p["containerPort"] for p in head["ports"]},
    )
    for group in cluster["spec"]["workerGroupSpecs"]:
        name = f"ray-{group['groupName']}"
        labels = base | {"ray.io/node-type": "worker", "ray.io/group": group["groupName"]}
        pods[name] = Pod(name, NAMESPACE, labels)
    return pods


# Outside the fleet: the ingress controller, Prometheus, and look-alikes that must get nothing.
OUTSIDE = {
    "ingress-controller": Pod(
        "ingress-controller", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}
    ),
    "prometheus": Pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
    # Any pod someone runs in the fleet's namespace (a debug shell, a compromised sidecar).
    "stray-pod": Pod("stray-pod", NAMESPACE, {"run": "debug"}),
    # Pods in another namespace copying fleet labels: labels alone open nothing.
    "fake-gateway": Pod("fake-gateway", "other", {"app.kubernetes.io/name": "gateway"}),
    "fake-ingress": Pod("fake-ingress", "other", {"app.kubernetes.io/name": "ingress-nginx"}),
    "fake-ray": Pod("fake-ray", "other", {"ray.io/cluster": "tunefleet-ray"}),
    "fake-prometheus": Pod("fake-prometheus", "other", {"app.kubernetes.io/name": "prometheus"}),
}
RAY_PORTS = (8265, 6379, 10001)
# (destination, port) pairs checked for every source.
TARGETS = [
    ("gateway", 8000),
    ("gateway", 9000),
    ("registry", 8001),
    ("training", 8002),
    ("inference", 8003),
    ("inference", 9000),
    *(("ray-head", p) for p in RAY_PORTS),
    ("ray-gpu-workers", 10002),
    ("ray-cpu-workers", 10002),  # a worker's raylet/object port
]
METRICS = {("gateway", 8000), ("registry", 8001), ("training", 8002), ("inference", 8003)}
RAY_PODS = ("ray-head", "ray-gpu-workers", "ray-cpu-workers")
RAY_TARGETS = {t for t in TARGETS if t[0] in RAY_PODS}
ALLOWED: dict[str, set[tuple[str, int]]] = {
    "ingress-controller": {("gateway", 8000)},
    "prometheus": METRICS,
    "gateway": {("registry", 8001), ("training", 8002), ("inference", 8003)},
    "registry": {("gateway", 8000), ("inference", 8003)},  # registry events
    "inference": {("registry", 8001)},
    "training": {("registry", 8001), *(("ray-head", p) for p in RAY_PORTS)},
    **{ray: {("training", 8002)} | RAY_TARGETS for ray in RAY_PODS},
}


def matrix() -> list[tuple[str, str, int, bool]]:
    sources = set(fleet_pods()) | set(OUTSIDE)
    return [
        (src, dest, port, (dest, port) in ALLOWED.get(src, set()))
        for src in sorted(sources)
        for dest, port in TARGETS
    ]


@pytest.mark.parametrize(
    ("source", "dest", "port", "expected"),
    matrix(),
    ids=[f"{s}->{d}:{p}-{'allow' if e else 'deny'}" for s, d, p, e in matrix()],
)
def test_network_policy_matrix(source: str, dest: str, port: int, expected: bool) -> None:
    pods = fleet_pods()
    src = pods.get(source) or OUTSIDE[source]
    assert allowed(policies(), src, pods[dest], port) is expected


def test_every_fleet_pod_is_default_deny() -> None:
    """A pod added later without its own policy is closed, not open: one policy selects
    every pod of the namespace and allows nothing."""
    deny = [
        p
        for p in policies()
        if p["spec"]["podSelector"] == {}
        and not p["spec"].get("ingress")
        and "Ingress" in policy_types(p["spec"])
    ]
    assert deny, "no default-deny ingress policy in the namespace"
    newcomer = Pod("new", NAMESPACE, {"app.kubernetes.io/name": "newcomer"}, {"http": 8080})
    for src in (*fleet_pods().values(), *OUTSIDE.values()):
        assert not allowed(policies(), src, newcomer, 8080), src.name


def test_ray_dashboard_open_to_all_hosts_only_with_token_and_policy() -> None:
    """``dashboard-host: 0.0.0.0`` (the Jobs API on every interface) only with token auth on
    the head and a policy that keeps the dashboard and GCS to Ray pods and training."""
    cluster = ray_cluster()
    head = cluster["spec"]["headGroupSpec"]
    env = {e["name"]: e for e in head["template"]["spec"]["containers"][0]["env"]}
    if head["rayStartParams"].get("dashboard-host") == "0.0.0.0":
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
    pods = fleet_pods()
    admitted = {
        name
        for name, src in (pods | OUTSIDE).items()
        if any(allowed(policies(), src, pods["ray-head"], port) for port in (8265, 6379))
    }
    assert admitted == {"training", *RAY_PODS}


# ------------------------------------------------------------------ public entry: Ingress
def ingress() -> dict[str, Any]:
    (found,) = [o for o in k8s_objects() if o["kind"] == "Ingress"]
    return found


PRIVATE_PATHS = ("/metrics", "/healthz", "/readyz", "/internal/registry-events", "/")


def path_matches(rule: dict[str, Any], path: str) -> bool:
    """Ingress path matching: Exact, or Prefix by whole path elements."""
    want = rule["path"]
    if rule["pathType"] == "Exact":
        return path == want
    want = want.rstrip("/")
    return want == "" or path == want or path.startswith(want + "/")


def test_gateway_ingress_terminates_tls_redirects_and_publishes_only_the_api() -> None:
    obj = ingress()
    notes = obj["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    assert "cert-manager.io/cluster-issuer" in notes or "cert-manager.io/issuer" in notes
    (tls,) = obj["spec"]["tls"]
    assert tls["secretName"]
    hosts = [r["host"] for r in obj["spec"]["rules"]]
    assert hosts and set(hosts) <= set(tls["hosts"]), "a host served without its certificate"
    (service,) = [
        o for o in k8s_objects() if o["kind"] == "Service" and o["metadata"]["name"] == "gateway"
    ]
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    paths = [p for r in obj["spec"]["rules"] for p in r["http"]["paths"]]
    for p in paths:
        backend = p["backend"]["service"]
        assert backend["name"] == "gateway", p
        assert backend["port"].get("name") in service_ports, p
    for private in PRIVATE_PATHS:
        assert not any(path_matches(p, private) for p in paths), f"{private} published"
    for public in ("/v1/chat/completions", "/admin/tenants", "/console/", "/openapi.json"):
        assert any(path_matches(p, public) for p in paths), f"{public} not published"


def test_gateway_sends_hsts_through_the_ingress() -> None:
    (gw,) = workloads()["gateway"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in gw["env"]}
    assert int(env["TUNEFLEET_GATEWAY_HSTS_MAX_AGE_S"]) >= 180 * 24 * 3600


def test_kustomization_applies_every_manifest() -> None:
    (kustomization,) = load_docs(DEPLOY / "k8s" / "kustomization.yaml")
    files = {
        p.name
        for p in (DEPLOY / "k8s").glob("*.yaml")
        if p.name not in ("kustomization.yaml", "secret.example.yaml")
    }
    assert set(kustomization["resources"]) == files
