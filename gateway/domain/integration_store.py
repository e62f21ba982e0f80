"""Integrations as stored (``integrations`` table): create, list, load, delete.

One unit of work per call on a session the caller opens off the event loop; another
tenant's integration is just as unknown as a missing one (404). Calling one is
``gateway.domain.integrations`` (mapping, prompt, answer)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.domain import integrations as integ
from gateway.domain.admin import Actor
from gateway.storage.tables import IntegrationRow
from shared.errors import Conflict, NotFound
from shared.schemas.integrations import IntegrationOut


def integration_out(row: IntegrationRow) -> IntegrationOut:
    return IntegrationOut(
        id=row.name,
        name=row.name,
        system=row.system,
        task=row.task,
        model=row.model,
        input_mapping=row.input_mapping,
        template=row.template,
        output=row.output,
        created=row.created_at,
    )


def spec_of(row: IntegrationRow) -> integ.IntegrationSpec:
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


def _row(s: Session, tenant: str, name: str) -> IntegrationRow:
    row = s.get(IntegrationRow, (tenant, name))
    if row is None:
        raise NotFound(f"integration {name!r} not found", param="name")
    return row


def create(s: Session, tenant: str, spec: integ.IntegrationSpec, actor: Actor) -> IntegrationOut:
    if s.get(IntegrationRow, (tenant, spec.name)) is not None:
        raise Conflict(f"integration {spec.name!r} already exists", param="name")
    output = spec.output.model_dump(exclude_none=True)
    output["_options"] = {"id_field": spec.id_field, "max_tokens": spec.max_tokens}
    row = IntegrationRow(
        tenant=tenant,
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
    actor.record(s, tenant=tenant, action="integration.create", target=spec.name)
    return integration_out(row)


def list_for(s: Session, tenant: str) -> list[IntegrationOut]:
    stmt = select(IntegrationRow).where(IntegrationRow.tenant == tenant)
    return [integration_out(r) for r in s.scalars(stmt.order_by(IntegrationRow.name))]


def get(s: Session, tenant: str, name: str) -> IntegrationOut:
    return integration_out(_row(s, tenant, name))


def load_spec(s: Session, tenant: str, name: str) -> integ.IntegrationSpec:
    return spec_of(_row(s, tenant, name))


def delete(s: Session, tenant: str, name: str, actor: Actor) -> None:
    s.delete(_row(s, tenant, name))
    actor.record(s, tenant=tenant, action="integration.delete", target=name)
