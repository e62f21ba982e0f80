"""The base-model catalog: what adapters may be trained on and served against."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from services.registry.storage.tables import BaseModelRow, VersionRow
from shared.adapters.archive import BaseModelSpec, linear_shapes_from_model_dir
from shared.errors import Conflict, InvalidRequest, NotFound

log = logging.getLogger(__name__)


def describe_model_dir(path: Path) -> dict[str, object]:
    """Read what the catalog records about a local HF model directory (errors never show
    the directory: for an upload it is a staging directory of the registry host)."""

    def invalid(message: str, param: str) -> InvalidRequest:
        return InvalidRequest(message, param=param, code="invalid_model_dir")

    config_file = path / "config.json"
    if not config_file.is_file():
        raise invalid("no config.json: not a Hugging Face model directory", "config.json")
    try:
        config = json.loads(config_file.read_text())
        tok_cfg = path / "tokenizer_config.json"
        tok = json.loads(tok_cfg.read_text()) if tok_cfg.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = f"config.json or tokenizer_config.json is not valid JSON: {exc}"
        raise invalid(why, "config.json") from exc
    if not isinstance(config, dict) or not isinstance(tok, dict):
        raise invalid("config.json and tokenizer_config.json must be JSON objects", "config.json")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise invalid("no *.safetensors weights", "weights")
    has_template = (path / "chat_template.jinja").exists() or "chat_template" in tok
    try:
        max_context = int(config.get("max_position_embeddings") or 2048)
    except (TypeError, ValueError) as exc:
        why = "config.json max_position_embeddings is not an integer"
        raise invalid(why, "config.json") from exc
    architectures = config.get("architectures")
    return {
        "architecture": str((architectures or ["unknown"])[0])[:64]
        if isinstance(architectures, list)
        else "unknown",
        "max_context": max_context,
        "weights_sha256": _weights_digest(path, weights),
        "has_chat_template": has_template,
        "linear_shapes": {k: list(v) for k, v in linear_shapes_from_model_dir(path).items()},
    }


def _weights_digest(path: Path, weights: list[Path]) -> str:
    manifest = path / "manifest.json"
    if manifest.exists():
        recorded = json.loads(manifest.read_text()).get("weights_sha256")
        if recorded:
            return str(recorded)
    h = hashlib.sha256()
    for w in weights:
        with w.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def visible(tenant: str | None):  # type: ignore[no-untyped-def]
    """Catalog rows a tenant may use: system models plus its own (full fine-tunes)."""
    if tenant is None:
        return BaseModelRow.owner == "system"
    return or_(BaseModelRow.owner == "system", BaseModelRow.owner == tenant)


def list_models(s: Session, tenant: str | None) -> list[BaseModelRow]:
    return list(s.scalars(select(BaseModelRow).where(visible(tenant)).order_by(BaseModelRow.id)))


def get_model(
    s: Session, tenant: str | None, model_id: str, *, param: str = "model"
) -> BaseModelRow:
    row = s.scalars(
        select(BaseModelRow).where(BaseModelRow.id == model_id, visible(tenant))
    ).first()
    if row is None:
        raise NotFound(
            f"base model {model_id!r} is not in the catalog",
            param=param,
            code="base_model_not_found",
        )
    return row


def register_model(
    s: Session,
    *,
    model_id: str,
    path: Path,
    owner: str = "system",
    hub_id: str | None = None,
    revision: str | None = None,
    max_context: int | None = None,
    replace: bool = False,
) -> BaseModelRow:
    """Add a local model directory to the catalog (or refresh it when ``replace``)."""
    info = describe_model_dir(path)
    row = s.get(BaseModelRow, model_id)
    if row is not None and not replace:
        raise Conflict(f"base model {model_id!r} already exists", param="id")
    if row is None:
        row = BaseModelRow(id=model_id)
        s.add(row)
    row.owner = owner
    row.path = str(path.resolve())
    row.hub_id = hub_id
    row.revision = revision
    row.architecture = str(info["architecture"])
    row.max_context = max_context or int(info["max_context"])  # type: ignore[call-overload]
    row.weights_sha256 = str(info["weights_sha256"])
    row.has_chat_template = bool(info["has_chat_template"])
    row.linear_shapes = info["linear_shapes"]  # type: ignore[assignment]
    s.flush()  # column defaults (created_at) are applied at flush; callers render the row
    return row


def delete_model(s: Session, tenant: str, model_id: str) -> str | None:
    """Remove a tenant's own base model (a full fine-tune registered by a job) from the
    catalog; the fleet's models (owner ``system``) are not a tenant's to delete (404, as
    for another tenant's). Refused (409) while adapter versions are trained on it.
    Returns the sha256 of its archive, for the caller to drop once unused."""
    row = s.scalars(
        select(BaseModelRow).where(BaseModelRow.id == model_id, BaseModelRow.owner == tenant)
    ).first()
    if row is None or tenant == "system":
        raise NotFound(
            f"base model {model_id!r} is not one of this tenant's",
            param="model_id",
            code="base_model_not_found",
        )
    used = s.scalars(select(VersionRow.id).where(VersionRow.base_model == model_id)).first()
    if used is not None:
        raise Conflict(
            f"adapter versions are trained on base model {model_id!r}; delete them first",
            param="model_id",
            code="base_model_in_use",
        )
    digest = row.artifact_sha256
    s.delete(row)
    return digest


def seed_catalog(s: Session, models_root: Path) -> list[str]:
    """Register every model directory under ``models_root`` (start-up); refresh changed ones."""
    seeded: list[str] = []
    if not models_root.is_dir():
        return seeded
    for path in sorted(p for p in models_root.iterdir() if (p / "config.json").is_file()):
        try:
            existing = s.get(BaseModelRow, path.name)
            if existing is not None and existing.artifact_sha256 is not None:
                log.warning("model dir shadows an uploaded model", extra={"model": path.name})
                continue
            if existing is not None and existing.path == str(path.resolve()):
                digest = _weights_digest(path, sorted(path.glob("*.safetensors")))
                if digest == existing.weights_sha256:
                    continue
            register_model(s, model_id=path.name, path=path, replace=True)
            seeded.append(path.name)
        except InvalidRequest as exc:
            log.warning("skipping model dir", extra={"path": str(path), "reason": exc.message})
    return seeded


def spec_of(row: BaseModelRow) -> BaseModelSpec:
    """What adapter validation needs to know about a catalog entry."""
    names = {row.id}
    if row.path:  # a seeded directory: adapters may name it by path
        names |= {row.path, Path(row.path).name}
    if row.hub_id:
        names.add(row.hub_id)
    return BaseModelSpec(
        id=row.id,
        names=tuple(sorted(names)),
        linear_shapes={k: (int(v[0]), int(v[1])) for k, v in row.linear_shapes.items()},
    )
