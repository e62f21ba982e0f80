"""The fleet as real processes (registry + inference + gateway on loopback) under faults.

One fleet for the module (a vLLM start costs minutes on 2 cores); each test leaves it
healthy. In order: the registry goes down (loaded adapters keep serving, a new model is 503
with Retry-After, everything recovers when it returns, nothing restarted); the inference
replica is killed mid-stream (clean SSE error event, replica marked down, 503 while none is
left, the restarted replica rejoins: one replica only, 2 cores cannot hold two engines);
SIGTERM of the gateway under load (in-flight requests finish, later ones are refused); and
last, every captured log is searched for the API keys, the internal token and the PII sent.
Each test prints a ``RESULT <scenario> {json}`` line that RELIABILITY.md quotes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.fault.procs import kill_hard, start_at, wait_port_free
from tests.support.adapters import make_adapter, pack
from tests.support.postgres import free_port
from tests.support.procs import ServiceProcess

pytestmark = [pytest.mark.slow]
TOKEN = "fleet-fault-internal-token"
ADMIN_KEY = "tf-fleet-fault-admin-key"
PII = ("jane.roe@example.com", "4111 1111 1111 1111", "+1 201-555-0123")
MODULES = {
    "registry": ("services.registry", "TUNEFLEET_REGISTRY_PORT"),
    "inference": ("services.inference", "TUNEFLEET_INFERENCE_PORT"),
    "gateway": ("gateway", "TUNEFLEET_GATEWAY_PORT"),
}


@dataclass
class ProcFleet:
    home: Path
    ports: dict[str, int]
    env: dict[str, dict[str, str]]
    procs: dict[str, ServiceProcess] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self, name: str, timeout: float = 600) -> float:
        module, port_var = MODULES[name]
        t0 = time.monotonic()
        sp = start_at(name, module, self.home, self.env[name], port_var, self.ports[name])
        self.procs[name] = sp
        sp.wait_ready(timeout)
        return time.monotonic() - t0

    def gw(self, key: str = "app") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]}"}


def _completion(model: str, max_tokens: int = 16, **kw: object) -> dict[str, object]:
    prompt = f"Ticket from {PII[0]}, card {PII[1]}, call {PII[2]}: refund?\nCategory:"
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **kw}


@pytest.fixture(scope="module")
def pf(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcFleet]:
    home = tmp_path_factory.mktemp("procfleet")
    ports = {name: free_port() for name in MODULES}
    base = {"TUNEFLEET_INTERNAL_TOKEN": TOKEN}
    inf_url = f"http://127.0.0.1:{ports['inference']}"
    reg_url = f"http://127.0.0.1:{ports['registry']}"
    env = {
        "registry": {
            **base,
            "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
            "TUNEFLEET_REGISTRY_NOTIFY_URLS": json.dumps([f"{inf_url}/internal/registry-events"]),
        },
        "inference": {
            **base,
            "TUNEFLEET_INFERENCE_MODEL_DIR": str(model_dir),
            "TUNEFLEET_INFERENCE_REGISTRY_URL": reg_url,
            "TUNEFLEET_INFERENCE_MAX_MODEL_LEN": "512",
            "TUNEFLEET_INFERENCE_MAX_LORA_RANK": "16",
            "TUNEFLEET_INFERENCE_MAX_LORAS": "2",
            "TUNEFLEET_INFERENCE_MAX_CPU_LORAS": "4",
            "TUNEFLEET_INFERENCE_DRAIN_TIMEOUT_S": "60",
        },
        "gateway": {
            **base,
            "TUNEFLEET_ADMIN_KEY": ADMIN_KEY,
            "TUNEFLEET_GATEWAY_REGISTRY_URL": reg_url,
            "TUNEFLEET_GATEWAY_INFERENCE_URLS": json.dumps([inf_url]),
            "TUNEFLEET_GATEWAY_TRAINING_URL": f"http://127.0.0.1:{free_port()}",
        },
    }
    fleet = ProcFleet(home, ports, env, secrets=[TOKEN, ADMIN_KEY])
    try:
        for name in MODULES:
            fleet.start(name)
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        r = httpx.post(f"{fleet.url('gateway')}/admin/tenants", json={"id": "acme"}, headers=admin)
        assert r.status_code == 201, r.text
        for role in ("app", "integrator"):
            r = httpx.post(
                f"{fleet.url('gateway')}/admin/keys",
                json={"tenant": "acme", "role": role},
                headers=admin,
            )
            assert r.status_code == 201, r.text
            fleet.keys[role] = r.json()["key"]
            fleet.secrets.append(r.json()["key"])
        yield fleet
    finally:
        for sp in reversed(list(fleet.procs.values())):
            if sp.proc.poll() is None:
                sp.stop(90)
            if sp.proc.poll() is None:
                kill_hard(sp)


def push_and_promote(pf: ProcFleet, name: str, archive: Path) -> None:
    h = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}
    with archive.open("rb") as fh:
        r = httpx.post(
            f"{pf.url('registry')}/v1/adapters/{name}/versions",
            headers=h,
            files={"file": ("a.tar.gz", fh)},
            data={"metadata": '{"base_model": "tiny-llama"}'},
            timeout=60,
        )
    assert r.status_code == 201, r.text
    r = httpx.put(
        f"{pf.url('registry')}/v1/adapters/{name}/aliases/production",
        json={"version": 1},
        headers=h,
    )
    assert r.status_code == 200, r.text


def complete(pf: ProcFleet, model: str, **kw: object) -> httpx.Response:
    return httpx.post(
        f"{pf.url('gateway')}/v1/completions",
        json=_completion(model, **kw),
        headers=pf.gw(),
        timeout=120,
    )


def test_registry_down_loaded_adapters_keep_serving(
    pf: ProcFleet, model_dir: Path, tmp_path: Path
) -> None:
    steady = pack(make_adapter(model_dir, tmp_path / "s", seed=11), tmp_path / "s.tar.gz")
    fresh = pack(make_adapter(model_dir, tmp_path / "f", seed=12), tmp_path / "f.tar.gz")
    push_and_promote(pf, "steady", steady)
    assert complete(pf, "steady").status_code == 200

    kill_hard(pf.procs["registry"])
    wait_port_free(pf.url("registry"))
    statuses: list[int] = []
    deadline = time.monotonic() + 12  # > 2x every resolution cache TTL (5 s)
    while time.monotonic() < deadline:
        statuses.append(complete(pf, "steady", max_tokens=4).status_code)
    unknown = complete(pf, "fresh", max_tokens=4)

    pf.start("registry")
    t_up = time.monotonic()
    push_and_promote(pf, "fresh", fresh)
    recovered = None
    while time.monotonic() - t_up < 60:
        if complete(pf, "fresh", max_tokens=4).status_code == 200:
            recovered = time.monotonic() - t_up
            break
        time.sleep(0.5)
    result = {
        "loaded_requests_sent": len(statuses),
        "loaded_failed": sum(s != 200 for s in statuses),
        "loaded_statuses": sorted(set(statuses)),
        "new_model_status": unknown.status_code,
        "new_model_retry_after": unknown.headers.get("retry-after"),
        "recovered_s": None if recovered is None else round(recovered, 2),
    }
    print("RESULT registry_down " + json.dumps(result))
    assert unknown.status_code == 503 and unknown.headers.get("retry-after"), unknown.text
    assert unknown.json()["error"]["code"]
    assert recovered is not None, "the fleet did not recover after the registry came back"
    # stale-if-error in gateway/domain/resolver.py: loaded adapters keep serving
    assert not result["loaded_failed"], result


async def test_inference_killed_mid_stream(pf: ProcFleet) -> None:
    lines: list[str] = []
    killed_at = ended_at = 0.0
    body = _completion("steady", max_tokens=300, stream=True)
    async with httpx.AsyncClient(timeout=60) as client:
        async with client.stream(
            "POST", f"{pf.url('gateway')}/v1/completions", json=body, headers=pf.gw()
        ) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                lines.append(line)
                if not killed_at and line.startswith("data: {") and len(lines) > 4:
                    await asyncio.to_thread(kill_hard, pf.procs["inference"])
                    killed_at = time.monotonic()
        ended_at = time.monotonic()
    assert killed_at, f"the stream ended before the kill: {lines[-3:]}"
    errors = [json.loads(ln[6:]) for ln in lines if ln.startswith("data: {") and '"error"' in ln]
    after = complete(pf, "steady", max_tokens=4)
    ready = httpx.get(f"{pf.url('gateway')}/readyz")

    restart_s = pf.start("inference")
    t0 = time.monotonic()
    rejoined = None
    while time.monotonic() - t0 < 120:
        if complete(pf, "steady", max_tokens=4).status_code == 200:
            rejoined = time.monotonic() - t0
            break
        await asyncio.sleep(0.5)
    result = {
        "stream_end_after_kill_s": round(ended_at - killed_at, 2),
        "error_event": errors[-1]["error"]["code"] if errors else None,
        "ended_with_done": [ln for ln in lines if ln.strip()][-1:] == ["data: [DONE]"],
        "next_request_status": after.status_code,
        "gateway_readyz_while_down": ready.status_code,
        "replica_restart_s": round(restart_s, 1),
        "rejoined_after_ready_s": None if rejoined is None else round(rejoined, 2),
    }
    print("RESULT inference_kill " + json.dumps(result))
    assert errors and errors[-1]["error"]["code"], lines[-5:]
    assert result["ended_with_done"]
    assert after.status_code == 503 and after.headers.get("retry-after")
    assert ready.status_code == 503
    assert rejoined is not None


async def test_sigterm_registry_and_gateway_under_load(
    pf: ProcFleet, model_dir: Path, tmp_path: Path
) -> None:
    archives = [
        pack(make_adapter(model_dir, tmp_path / f"t{i}", seed=20 + i), tmp_path / f"t{i}.tar.gz")
        for i in range(3)
    ]
    reg_h = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}
    refused = (503, "ConnectError", "RemoteProtocolError", "ReadError")

    async def push_async(client: httpx.AsyncClient, i: int) -> int:
        r = await client.post(
            f"/v1/adapters/term{i}/versions",
            files={"file": ("a.tar.gz", archives[i].read_bytes())},
            data={"metadata": '{"base_model": "tiny-llama"}'},
        )
        return r.status_code

    async def late(client: httpx.AsyncClient, method: str, path: str, **kw: object) -> object:
        try:
            return (await client.request(method, path, **kw)).status_code  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            return type(exc).__name__

    result: dict[str, object] = {}
    async with httpx.AsyncClient(base_url=pf.url("registry"), headers=reg_h, timeout=120) as c:
        inflight = [asyncio.create_task(push_async(c, i)) for i in range(3)]
        await asyncio.sleep(0.15)
        pf.procs["registry"].proc.terminate()
        await asyncio.sleep(0.2)
        late_reg = await late(c, "GET", "/v1/adapters")
        reg_results = await asyncio.gather(*inflight, return_exceptions=True)
    pf.procs["registry"].proc.wait(60)
    result["registry"] = {"in_flight": [str(r) for r in reg_results], "late": late_reg}
    pf.start("registry")

    async with httpx.AsyncClient(base_url=pf.url("gateway"), headers=pf.gw(), timeout=120) as c:
        body = _completion("steady", max_tokens=48)
        inflight = [asyncio.create_task(c.post("/v1/completions", json=body)) for _ in range(6)]
        await asyncio.sleep(0.5)
        pf.procs["gateway"].proc.terminate()
        await asyncio.sleep(0.3)
        late_gw = await late(c, "POST", "/v1/completions", json=body)
        gw_results = await asyncio.gather(*inflight, return_exceptions=True)
    pf.procs["gateway"].proc.wait(90)
    result["gateway"] = {
        "in_flight": [getattr(r, "status_code", repr(r)) for r in gw_results],
        "late": late_gw,
    }
    pf.start("gateway")
    print("RESULT sigterm " + json.dumps(result))
    assert all(r == 201 for r in reg_results), result
    assert late_reg in refused, result
    assert all(getattr(r, "status_code", None) == 200 for r in gw_results), result
    assert late_gw in refused, result
    assert complete(pf, "steady", max_tokens=4).status_code == 200  # restarted gateway serves


def test_inference_schema_fuzz(pf: ProcFleet) -> None:
    """Schemathesis against the real inference process (it needs the engine): no 5xx."""
    import schemathesis

    from tests.security.fuzz import fuzz

    schema = schemathesis.openapi.from_url(f"{pf.url('inference')}/openapi.json")
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}
    sent, problems = fuzz(schema, headers, max_examples=8, skip=("POST /internal",))
    print("RESULT inference_fuzz " + json.dumps({"sent": sent, "problems": len(problems)}))
    assert not problems, "\n".join(problems)
    assert httpx.get(f"{pf.url('inference')}/readyz").status_code == 200  # engine survived


def test_secrets_and_pii_never_logged(pf: ProcFleet) -> None:
    """After everything above (keys created, PII sent in prompts), grep every service log."""
    r = httpx.post(
        f"{pf.url('gateway')}/v1/chat/completions",
        json={
            "model": "steady",
            "messages": [{"role": "user", "content": f"I am {PII[0]}, card {PII[1]}"}],
            "max_tokens": 4,
        },
        headers=pf.gw(),
        timeout=120,
    )
    assert r.status_code == 200, r.text
    time.sleep(0.5)
    needles = [*pf.secrets, *PII, PII[1].replace(" ", ""), "201-555-0123"]
    logs = {p.name: p.read_text(errors="replace") for p in pf.home.glob("*.log")}
    assert set(logs) >= {"registry.log", "inference.log", "gateway.log"}
    leaks = {name: [n[:8] + "…" for n in needles if n in text] for name, text in logs.items()}
    sizes = {name: len(text) for name, text in logs.items()}
    print("RESULT secrets_in_logs " + json.dumps({"log_bytes": sizes, "leaks": leaks}))
    assert not any(leaks.values()), leaks
