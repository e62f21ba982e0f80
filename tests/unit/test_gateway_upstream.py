"""The gateway's one upstream hop: idempotent calls retried once, POSTs never, generations
fail over to the next replica with the immutable ref attached; a stream slot is an async
context manager that always gives its slot back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import MIGRATIONS, VERSION_TABLE
from gateway.domain.keys import Principal
from gateway.domain.quotas import Admission, Limits, Quotas
from gateway.domain.routing import REPORT_TTL_S, ReplicaSet
from gateway.domain.upstream import Upstream
from shared.db import Database, run_migrations
from shared.errors import RateLimited, ServiceUnavailable
from shared.modelref import RUNNING_HEADER


def flaky(fail_first: int, seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= fail_first:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(handler)


async def test_idempotent_calls_are_retried_once_posts_never() -> None:
    seen: list[httpx.Request] = []
    async with httpx.AsyncClient(transport=flaky(1, seen)) as http:
        up = Upstream(http, ReplicaSet([], http))
        resp = await up.forward("GET", "http://registry/v1/adapters", headers={}, service="x")
        assert resp.status_code == 200 and len(seen) == 2
        seen.clear()
        with pytest.raises(ServiceUnavailable):
            await up.forward(
                "POST", "http://registry/v1/adapters", headers={}, content=b"{}", service="x"
            )
        assert len(seen) == 1


async def test_generation_fails_over_with_the_ref() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"choices": []})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        replicas = ReplicaSet(["http://down", "http://up"], http)
        up = Upstream(http, replicas)
        key = next(
            k
            for k in (f"acme/a@v{i}" for i in range(1, 50))
            if replicas.ranked(k)[0].url == "http://down"
        )
        resp = await up.generate("/v1/completions", key=key, headers={}, raw=b"{}")
        await resp.aclose()
        assert resp.status_code == 200
        assert [r.url.host for r in seen] == ["down", "up"]
        assert seen[-1].headers["x-tunefleet-model-ref"] == key
        assert not replicas.replicas[0].healthy


async def test_generation_goes_to_a_replica_of_its_base() -> None:
    """Replicas announce their bases in /readyz; a request reaches only a replica serving its
    base, and a base nobody serves is a 503 naming it, with Retry-After."""
    seen: list[str] = []
    bases = {"a1": ["tiny-llama"], "a2": ["tiny-llama"], "b1": ["acme/merged-b"]}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            return httpx.Response(200, json={"status": "ready", "bases": bases[request.url.host]})
        seen.append(request.url.host)
        return httpx.Response(200, json={"choices": []})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        replicas = ReplicaSet([f"http://{h}" for h in bases], http)
        await replicas.check_once()
        up = Upstream(http, replicas)
        for i in range(12):
            resp = await up.generate(
                "/v1/completions", key=f"acme/a@v{i}", headers={}, raw=b"{}", base="tiny-llama"
            )
            await resp.aclose()
        assert set(seen) == {"a1", "a2"}  # spread by affinity, never to b1
        seen.clear()
        resp = await up.generate(
            "/v1/completions", key="acme/merged-b", headers={}, raw=b"{}", base="acme/merged-b"
        )
        await resp.aclose()
        assert seen == ["b1"]
        with pytest.raises(ServiceUnavailable) as err:
            await up.generate("/v1/completions", key="k", headers={}, raw=b"{}", base="other")
        assert err.value.code == "base_model_unavailable"
        assert err.value.headers["Retry-After"] == "10"
        assert "'other'" in err.value.message


async def test_a_full_replica_spills_over_to_one_with_room() -> None:
    """One hot model: its first replica takes what it announced it runs at once
    (``max_running``); the next generations go to the other replica of the base; closing an
    answer gives its slot back, and affinity returns."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            info = {"status": "ready", "bases": ["tiny-llama"], "max_running": 2}
            return httpx.Response(200, json=info)
        seen.append(request.url.host)
        return httpx.Response(200, json={"choices": []})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        replicas = ReplicaSet(["http://r1", "http://r2"], http)
        await replicas.check_once()
        assert [r.capacity for r in replicas.replicas] == [2, 2]
        up = Upstream(http, replicas)
        first = replicas.ranked("acme/hot@v1")[0].url.removeprefix("http://")

        async def gen() -> Any:
            return await up.generate(
                "/v1/completions", key="acme/hot@v1", headers={}, raw=b"{}", base="tiny-llama"
            )

        open_answers = [await gen() for _ in range(3)]
        assert seen[:2] == [first, first] and seen[2] != first  # the third spilled over
        assert sorted(r.in_flight for r in replicas.replicas) == [1, 2]
        for resp in open_answers:
            await resp.aclose()
            await resp.aclose()  # closing twice gives back once
        assert [r.in_flight for r in replicas.replicas] == [0, 0]
        seen.clear()
        await (await gen()).aclose()
        assert seen == [first]  # room again: affinity


async def test_spill_over_counts_what_other_gateways_run_on_a_replica() -> None:
    """Two gateways share the replicas: what the other one runs reaches this one through the
    replica's reports (``running`` in its ready answer, ``X-Tunefleet-Replica-Running`` on
    each answer), so a replica the other gateway filled is skipped although this gateway has
    nothing open there; a report stops counting once it is ``REPORT_TTL_S`` old."""
    seen: list[str] = []
    running = {"r1": 0, "r2": 0}  # what each replica runs for the *other* gateway

    def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if request.url.path == "/readyz":
            info = {"status": "ready", "bases": ["tiny-llama"], "max_running": 2}
            return httpx.Response(200, json={**info, "running": running[host]})
        seen.append(host)
        return httpx.Response(
            200, json={"choices": []}, headers={RUNNING_HEADER: str(running[host] + 1)}
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        replicas = ReplicaSet(["http://r1", "http://r2"], http)
        up = Upstream(http, replicas)
        key = "acme/hot@v1"
        first = replicas.ranked(key)[0].url.removeprefix("http://")
        other = "r2" if first == "r1" else "r1"

        async def gen() -> None:
            await (
                await up.generate(
                    "/v1/completions", key=key, headers={}, raw=b"{}", base="tiny-llama"
                )
            ).aclose()

        running[first] = 2  # the other gateway filled the key's first replica
        await replicas.check_once()  # ... as its ready answer says
        await gen()
        assert seen == [other]  # spilled: this gateway had nothing open there

        running[first] = 0  # the other gateway's work there ended
        await replicas.check_once()
        await gen()
        assert seen[-1] == first  # affinity again

        running[first] = 1  # an answer from the first replica: 1 for the other gateway + ours
        await gen()
        assert seen[-1] == first
        r = next(x for x in replicas.replicas if x.url.endswith(first))
        assert (r.in_flight, r.others, r.load()) == (0, 1, 1)
        r.in_flight = 1  # one more of ours open: full with the other gateway's
        assert r.full()
        r.reported_at -= REPORT_TTL_S  # a stale report is forgotten
        assert r.load() == 1 and not r.full()


async def test_stream_slot_is_given_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    run_migrations(url, MIGRATIONS, VERSION_TABLE)
    db = Database(url)
    quotas = Quotas(db, lambda: Limits(600, 1000, 1, 5, 1))
    who = Principal(key_id="key_1", tenant="acme", role="app")
    admission = await quotas.admission(who)
    assert isinstance(admission, Admission)
    async with admission.stream_slot():
        with pytest.raises(RateLimited):
            async with admission.stream_slot():
                pass
    async with admission.stream_slot():  # the slot came back
        pass
    assert quotas.state.gate.open["tenant:acme"] == 0  # type: ignore[attr-defined]
    db.dispose()
