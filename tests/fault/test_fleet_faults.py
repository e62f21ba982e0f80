"""The fleet as real processes (registry + two inference replicas + gateway on loopback)
under faults.

One fleet for the module (a vLLM start costs a minute on 2 cores); each test leaves it
healthy. Each replica is its own process with its own vLLM engine and home (tiny-llama fits
twice). In order: the registry goes down (loaded adapters keep serving, a new model is 503
with Retry-After, everything recovers when it returns, nothing restarted); the replica serving
an adapter is killed (-9, EngineCore too) under mixed streamed and non-streamed load (streams
in flight end with a clean SSE error event, non-streamed ones not yet answered are retried on
the other replica, every later request succeeds, the restarted replica rejoins); SIGTERM of the
gateway under load (in-flight requests finish, later ones are refused); and last, every
captured log is searched for the API keys, the internal token and the PII sent. Each test
prints a ``RESULT <scenario> {json}`` line that RELIABILITY.md quotes.
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
from prometheus_client.parser import text_string_to_metric_families

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
    "inference2": ("services.inference", "TUNEFLEET_INFERENCE_PORT"),
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

    def launch(self, name: str) -> ServiceProcess:
        module, port_var = MODULES[name]
        sp = start_at(name, module, self.home, self.env[name], port_var, self.ports[name])
        self.procs[name] = sp
        return sp

    def start(self, name: str, timeout: float = 600) -> float:
        t0 = time.monotonic()
        self.launch(name).wait_ready(timeout)
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
    replica_urls = [f"http://127.0.0.1:{ports[name]}" for name in ("inference", "inference2")]
    reg_url = f"http://127.0.0.1:{ports['registry']}"
    env = {
        "registry": {
            **base,
            "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
            "TUNEFLEET_REGISTRY_NOTIFY_URLS": json.dumps(
                [f"{url}/internal/registry-events" for url in replica_urls]
            ),
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
            "TUNEFLEET_GATEWAY_INFERENCE_URLS": json.dumps(replica_urls),
            "TUNEFLEET_GATEWAY_TRAINING_URL": f"http://127.0.0.1:{free_port()}",
        },
    }
    # the second replica: same settings, its own home (adapter copies, engine files)
    env["inference2"] = {**env["inference"], "TUNEFLEET_HOME": str(home / "replica2")}
    fleet = ProcFleet(home, ports, env, secrets=[TOKEN, ADMIN_KEY])
    try:
        fleet.start("registry")
        replicas = [fleet.launch(name) for name in ("inference", "inference2")]  # in parallel
        for sp in replicas:
            sp.wait_ready(600)
        fleet.start("gateway")
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


def served_requests(pf: ProcFleet, name: str) -> float:
    """Generation requests a replica has counted (its Prometheus counter, every label)."""
    text = httpx.get(f"{pf.url(name)}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "tunefleet_inference_requests"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


@dataclass
class Outcome:
    streamed: bool
    started: float
    ended: float = 0.0
    status: int | str = 0
    error_event: str | None = None
    done: bool = False
    events: int = 0


async def one_request(client: httpx.AsyncClient, streamed: bool, log: list[Outcome]) -> None:
    """One generation through the gateway, its outcome appended to ``log`` as it goes."""
    out = Outcome(streamed, time.monotonic())
    log.append(out)
    # long enough to be cut: ~1-3 s of generation each (tiny-llama would stop at EOS early)
    body = _completion("steady", max_tokens=300, stream=streamed, ignore_eos=True)
    try:
        if streamed:
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                out.status = resp.status_code
                async for line in resp.aiter_lines():
                    out.events += 1
                    if line.startswith("data: {") and '"error"' in line:
                        out.error_event = json.loads(line[6:])["error"]["code"]
                    out.done = out.done or line == "data: [DONE]"
        else:
            resp = await client.post("/v1/completions", json=body)
            out.status = resp.status_code
    except httpx.TransportError as exc:
        out.status = type(exc).__name__
    out.ended = time.monotonic()


async def test_replica_killed_under_mixed_load_fails_over(
    pf: ProcFleet, model_dir: Path, tmp_path: Path
) -> None:
    """Two replicas with their own engines; the one serving ``steady`` is killed -9 under
    streamed and non-streamed load: streams in flight end with an error event, non-streamed
    calls not yet answered are retried on the other replica, later requests all succeed, the
    restarted replica rejoins and gets its adapter's traffic back (affinity)."""
    if "steady" not in httpx.get(f"{pf.url('gateway')}/v1/models", headers=pf.gw()).text:
        steady = pack(make_adapter(model_dir, tmp_path / "s", seed=11), tmp_path / "s.tar.gz")
        push_and_promote(pf, "steady", steady)  # run alone (-k): the adapter of the first test
    before = {n: served_requests(pf, n) for n in ("inference", "inference2")}
    assert complete(pf, "steady", max_tokens=4).status_code == 200
    gained = {n: served_requests(pf, n) - before[n] for n in before}
    victim = max(gained, key=lambda n: gained[n])
    survivor = "inference2" if victim == "inference" else "inference"
    outcomes: list[Outcome] = []
    stop = asyncio.Event()

    async def worker(client: httpx.AsyncClient, streamed: bool) -> None:
        while not stop.is_set():
            await one_request(client, streamed, outcomes)

    def both_kinds_mid_generation() -> bool:
        live = [o for o in outcomes if not o.ended]
        now = time.monotonic()
        return any(o.streamed and o.events >= 3 for o in live) and any(
            not o.streamed and now - o.started > 0.3 for o in live
        )

    async with httpx.AsyncClient(base_url=pf.url("gateway"), headers=pf.gw(), timeout=120) as c:
        workers = [asyncio.create_task(worker(c, i % 2 == 0)) for i in range(4)]
        deadline = time.monotonic() + 60
        while not both_kinds_mid_generation() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(kill_hard, pf.procs[victim])
        killed_at = time.monotonic()
        await asyncio.sleep(8.0)
        stop.set()
        await asyncio.gather(*workers)
    in_flight = [o for o in outcomes if o.started < killed_at < o.ended]
    ready = httpx.get(f"{pf.url(survivor)}/readyz").json()
    later = [o for o in outcomes if o.started > killed_at]

    restart_s = pf.start(victim)
    t0 = time.monotonic()
    rejoined = None
    while time.monotonic() - t0 < 120:
        before_victim = served_requests(pf, victim)
        assert complete(pf, "steady", max_tokens=4).status_code == 200
        if served_requests(pf, victim) > before_victim:
            rejoined = time.monotonic() - t0
            break
        await asyncio.sleep(0.5)
    result = {
        "victim": victim,
        "survivor": survivor,
        "requests": len(outcomes),
        "in_flight_at_kill": {
            "streamed": [(o.status, o.error_event, o.done) for o in in_flight if o.streamed],
            "non_streamed": [o.status for o in in_flight if not o.streamed],
        },
        "started_after_kill": len(later),
        "failed_after_kill": sum(o.status != 200 or o.error_event is not None for o in later),
        "streams_after_kill_in_s": [round(o.ended - killed_at, 2) for o in in_flight if o.streamed],
        "survivor_ready": ready,
        "replica_restart_s": round(restart_s, 1),
        "affinity_back_after_ready_s": None if rejoined is None else round(rejoined, 2),
    }
    print("RESULT replica_failover " + json.dumps(result))
    assert {o.streamed for o in in_flight} == {True, False}, result  # both kinds were cut
    streams_cut = [o for o in in_flight if o.streamed and o.error_event is not None]
    assert streams_cut, result  # a stream the victim was generating ends with an error event
    assert all(o.done for o in streams_cut), result  # ... then [DONE]: no hang
    assert all(o.status == 200 for o in in_flight), result  # the stream's 200 was sent before
    assert all(o.error_event is None for o in in_flight if not o.streamed), result
    assert later and not result["failed_after_kill"], result
    assert rejoined is not None, result
    assert ready["bases"] == ["tiny-llama"]  # what the gateway routes by


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
