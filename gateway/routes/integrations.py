"""Integrations: define (integrator+), invoke (app+), test (integrator+; stores nothing).

Bodies are read by the routes themselves (bounded, hashed for ``Idempotency-Key``, errors
naming the field), so their schemas are documented with ``openapi_extra``. Database work
runs off the event loop."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from gateway.deps import Caller, GatewayState, State
from gateway.domain import integration_store as store
from gateway.domain import integrations as integ
from gateway.domain.admin import Actor
from gateway.domain.generation import answer_text
from gateway.domain.keys import Principal
from gateway.domain.templates import check_template, render
from gateway.domain.upstream import internal_headers, passed_headers
from gateway.routes import proxy
from shared.app import request_id_of
from shared.errors import InvalidRequest, error_from_envelope
from shared.jsonbody import loads_untrusted
from shared.offloop import in_session
from shared.openapi import json_body
from shared.schemas.common import ListResponse
from shared.schemas.integrations import (
    IntegrationDeleted,
    IntegrationOut,
    InvokeOut,
    InvokeRequest,
    TestReport,
    TestRequest,
    TestRow,
)

router = APIRouter(prefix="/v1/integrations", tags=["integrations"])


async def _json(request: Request, st: GatewayState) -> Any:
    raw = await proxy.read_body(request, st.settings.max_body_bytes)
    return loads_untrusted(raw, what="request body")


def _validate(data: Any) -> integ.IntegrationSpec:
    try:
        return integ.IntegrationSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"{param}: {first['msg']}", param=param) from exc


async def _spec(st: GatewayState, tenant: str, name: str) -> integ.IntegrationSpec:
    return await in_session(st.db, lambda s: store.load_spec(s, tenant, name))


@router.post(
    "",
    status_code=201,
    response_model=IntegrationOut,
    openapi_extra=json_body(integ.IntegrationSpec),
)
async def create(request: Request, st: State, who: Caller) -> Response:
    who.require("write")
    raw = await proxy.read_body(request, st.settings.max_body_bytes)
    actor = Actor(who, request_id_of(request), st.audit_keys)

    async def call() -> Response:
        spec = _validate(loads_untrusted(raw, what="request body"))
        check_template(spec.template, spec.input_mapping)
        out = await in_session(
            st.db, lambda s: store.create(s, who.tenant, spec, actor), write=True
        )
        return JSONResponse(out.model_dump(mode="json"), status_code=201)

    return await proxy.idempotent(request, st, who, raw, call)


@router.get("")
def list_integrations(st: State, who: Caller) -> ListResponse[IntegrationOut]:
    who.require("read")
    with st.db.session() as s:
        return ListResponse(data=store.list_for(s, who.tenant))


@router.get("/{name}")
def get_integration(name: str, st: State, who: Caller) -> IntegrationOut:
    who.require("read")
    with st.db.session() as s:
        return store.get(s, who.tenant, name)


@router.delete("/{name}")
async def delete_integration(
    name: str, request: Request, st: State, who: Caller
) -> IntegrationDeleted:
    who.require("write")
    actor = Actor(who, request_id_of(request), st.audit_keys)
    await in_session(st.db, lambda s: store.delete(s, who.tenant, name, actor), write=True)
    return IntegrationDeleted(id=name)


async def _run(
    request: Request,
    st: GatewayState,
    who: Principal,
    spec: integ.IntegrationSpec,
    record: Any,
    where: str,
) -> tuple[str, str]:
    """(answer, completion id) of the model call for one record; the prompt goes through the
    tenant's PII guard like any other completion."""
    prompt = render(spec.template, integ.extract(spec, record, where))
    path, body = integ.model_call(spec, prompt)
    await st.pii.enforce(who.pii_mode, body)
    quota = await st.quotas.admission(who)
    headers = internal_headers(st.internal_token, who, passed_headers(request.headers))
    headers["content-type"] = "application/json"
    answer = await st.generations.complete(quota, path, body, headers)
    data = json.loads(answer.body or b"{}")
    if answer.status != 200:
        raise error_from_envelope(answer.status, data)
    return answer_text(data), str(data.get("id", ""))


@router.post("/{name}/invoke", openapi_extra=json_body(InvokeRequest))
async def invoke(name: str, request: Request, st: State, who: Caller) -> InvokeOut:
    """One record or a batch → ``{"data": [{<id field>: …, <output.field>: answer}], "ids"}``;
    ``ids`` are the completion ids to send feedback for."""
    who.require("infer")
    spec = await _spec(st, who.tenant, name)
    records = integ.records_of(await _json(request, st))
    # Check every record before calling the model for any: a bad batch costs nothing.
    for i, r in enumerate(records):
        integ.extract(spec, r, f"records[{i}]")
    data, ids = [], []
    for i, r in enumerate(records):
        answer, cid = await _run(request, st, who, spec, r, f"records[{i}]")
        data.append(integ.mapped(spec, r, answer))
        ids.append(cid)
    return InvokeOut(data=data, ids=ids)


@router.post("/{name}/test", openapi_extra=json_body(TestRequest))
async def test_integration(name: str, request: Request, st: State, who: Caller) -> TestReport:
    """Sample records with expected values → a pass/fail table and accuracy; stores nothing."""
    who.require("write")
    spec = await _spec(st, who.tenant, name)
    body = await _json(request, st)
    samples = body.get("samples") if isinstance(body, dict) else None
    if not isinstance(samples, list) or not 1 <= len(samples) <= integ.MAX_BATCH:
        raise InvalidRequest(
            f"samples must be a list of 1 to {integ.MAX_BATCH} {{record, expected}} objects",
            param="samples",
        )
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict) or "expected" not in sample:
            raise InvalidRequest(
                f"samples[{i}] needs record and expected", param=f"samples[{i}].expected"
            )
        integ.extract(spec, sample.get("record"), f"samples[{i}].record")
    rows = []
    for i, sample in enumerate(samples):
        answer, _ = await _run(request, st, who, spec, sample["record"], f"samples[{i}].record")
        expected = str(sample["expected"])
        record = sample["record"]
        rows.append(
            TestRow.model_validate(
                {
                    "index": i,
                    "id": record.get(spec.record_id_field),
                    "expected": expected,
                    "predicted": answer.strip(),
                    "pass": answer.strip().casefold() == expected.strip().casefold(),
                }
            )
        )
    passed = sum(r.passed for r in rows)
    return TestReport(
        integration=name, results=rows, passed=passed, total=len(rows), accuracy=passed / len(rows)
    )
