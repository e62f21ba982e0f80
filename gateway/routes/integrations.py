"""Integrations: define (integrator+), invoke (app+), test (integrator+; stores nothing)."""

from __future__ import annotations

import json
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy import select

from gateway.deps import Caller, GatewayState, State
from gateway.domain import audit
from gateway.domain import integrations as integ
from gateway.domain.generation import answer_text
from gateway.domain.keys import Principal
from gateway.domain.templates import check_template, render
from gateway.domain.upstream import internal_headers, passed_headers
from gateway.routes import proxy
from gateway.storage.tables import IntegrationRow
from shared.app import request_id_of
from shared.errors import Conflict, InvalidRequest, NotFound, error_from_envelope
from shared.jsonbody import loads_untrusted

router = APIRouter(prefix="/v1/integrations", tags=["integrations"])
FIELDS = ("system", "task", "model", "input_mapping", "template", "output")


def _out(row: IntegrationRow) -> dict[str, Any]:
    return {
        "object": "integration",
        "id": row.name,
        "name": row.name,
        **{f: getattr(row, f) for f in FIELDS},
        "created": row.created_at,
    }


def _spec(row: IntegrationRow) -> integ.IntegrationSpec:
    extra = row.output.get("_options", {})
    output = {k: v for k, v in row.output.items() if k != "_options"}
    return integ.IntegrationSpec(
        name=row.name,
        system=row.system,  # type: ignore[arg-type]
        task=row.task,  # type: ignore[arg-type]
        model=row.model,
        input_mapping=row.input_mapping,
        template=row.template,
        output=integ.OutputSpec(**output),
        **extra,
    )


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


def _load(st: GatewayState, tenant: str, name: str) -> IntegrationRow:
    with st.db.session() as s:
        row = s.get(IntegrationRow, (tenant, name))
        if row is None:  # another tenant's integration is just as unknown
            raise NotFound(f"integration {name!r} not found", param="name")
        s.expunge(row)
        return row


@router.post("", status_code=201)
async def create(request: Request, st: State, who: Caller) -> Response:
    who.require("write")
    raw = await proxy.read_body(request, st.settings.max_body_bytes)

    async def call() -> Response:
        data = loads_untrusted(raw, what="request body")
        spec = _validate(data)
        check_template(spec.template, spec.input_mapping)

        def do() -> dict[str, Any]:
            with st.db.session(write=True) as s:
                if s.get(IntegrationRow, (who.tenant, spec.name)) is not None:
                    raise Conflict(f"integration {spec.name!r} already exists", param="name")
                output = spec.output.model_dump(exclude_none=True)
                output["_options"] = {"id_field": spec.id_field, "max_tokens": spec.max_tokens}
                row = IntegrationRow(
                    tenant=who.tenant,
                    name=spec.name,
                    system=spec.system,
                    task=spec.task,
                    model=spec.model,
                    input_mapping=spec.input_mapping,
                    template=spec.template,
                    output=output,
                )
                s.add(row)
                s.flush()
                audit.record(
                    s,
                    tenant=who.tenant,
                    actor=who.key_id,
                    action="integration.create",
                    target=spec.name,
                    request_id=request_id_of(request),
                )
                return _out(row)

        return JSONResponse(await anyio.to_thread.run_sync(do), status_code=201)

    return await proxy.idempotent(request, st, who, raw, call)


@router.get("")
async def list_integrations(st: State, who: Caller) -> dict[str, Any]:
    who.require("read")
    with st.db.session() as s:
        stmt = select(IntegrationRow).where(IntegrationRow.tenant == who.tenant)
        rows = s.scalars(stmt.order_by(IntegrationRow.name)).all()
        return {"object": "list", "data": [_out(r) for r in rows], "has_more": False}


@router.get("/{name}")
async def get_integration(name: str, st: State, who: Caller) -> dict[str, Any]:
    who.require("read")
    return _out(_load(st, who.tenant, name))


@router.delete("/{name}")
async def delete_integration(name: str, request: Request, st: State, who: Caller) -> dict[str, Any]:
    who.require("write")

    def do() -> None:
        with st.db.session(write=True) as s:
            row = s.get(IntegrationRow, (who.tenant, name))
            if row is None:
                raise NotFound(f"integration {name!r} not found", param="name")
            s.delete(row)
            audit.record(
                s,
                tenant=who.tenant,
                actor=who.key_id,
                action="integration.delete",
                target=name,
                request_id=request_id_of(request),
            )

    await anyio.to_thread.run_sync(do)
    return {"object": "integration", "id": name, "deleted": True}


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


@router.post("/{name}/invoke")
async def invoke(name: str, request: Request, st: State, who: Caller) -> dict[str, Any]:
    """One record or a batch → ``{"data": [{<id field>: …, <output.field>: answer}], "ids"}``;
    ``ids`` are the completion ids to send feedback for."""
    who.require("infer")
    spec = _spec(_load(st, who.tenant, name))
    records = integ.records_of(await _json(request, st))
    # Check every record before calling the model for any: a bad batch costs nothing.
    for i, r in enumerate(records):
        integ.extract(spec, r, f"records[{i}]")
    data, ids = [], []
    for i, r in enumerate(records):
        answer, cid = await _run(request, st, who, spec, r, f"records[{i}]")
        data.append(integ.mapped(spec, r, answer))
        ids.append(cid)
    return {"object": "list", "data": data, "ids": ids, "has_more": False}


@router.post("/{name}/test")
async def test_integration(name: str, request: Request, st: State, who: Caller) -> dict[str, Any]:
    """Sample records with expected values → a pass/fail table and accuracy; stores nothing."""
    who.require("write")
    spec = _spec(_load(st, who.tenant, name))
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
        ok = answer.strip().casefold() == expected.strip().casefold()
        record = sample["record"]
        rows.append(
            {
                "index": i,
                "id": record.get(spec.record_id_field),
                "expected": expected,
                "predicted": answer.strip(),
                "pass": ok,
            }
        )
    passed = sum(r["pass"] for r in rows)
    return {
        "object": "integration.test",
        "integration": name,
        "results": rows,
        "passed": passed,
        "total": len(rows),
        "accuracy": passed / len(rows),
    }
