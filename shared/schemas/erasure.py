"""Wire models of erasure and retention, shared by the gateway's `/admin` routes and the
training service's `/internal` routes (the gateway forwards the same bodies)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from shared.auth import TENANT_RE
from shared.errors import InvalidRequest
from shared.schemas.registry import Lineage

EMAIL_RE = r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$"


class Subject(BaseModel):
    email: str | None = Field(default=None, max_length=254, pattern=EMAIL_RE)
    # at least 3 characters: a one-digit "id" would match half the store
    id: str | None = Field(default=None, min_length=3, max_length=200)


class ErasureRequest(BaseModel):
    """Exactly one of ``tenant`` (all its data) and ``subject`` (in every tenant)."""

    tenant: str | None = Field(default=None, pattern=TENANT_RE.pattern)
    subject: Subject | None = None

    def check(self) -> None:
        if self.tenant is None and self.subject is None:
            raise InvalidRequest("give a tenant or a subject to erase", param="tenant")
        if self.tenant is not None and self.subject is not None:
            raise InvalidRequest(
                "give a tenant or a subject, not both (a subject is erased in every tenant)",
                param="subject",
            )
        if self.subject is not None and not (self.subject.email or self.subject.id):
            raise InvalidRequest("subject needs an email or an id", param="subject.email")


class RetentionSet(BaseModel):
    days: int | None = Field(
        ge=1, le=36_500, description="keep files and datasets this many days; null: forever"
    )


class ErasedItem(BaseModel):
    id: str
    tenant: str


class DerivedCopies(BaseModel):
    """Copies of erased data that training derived outside the files and datasets."""

    checkpoints: list[ErasedItem] = Field(
        default_factory=list,
        description="jobs (id) whose Ray Train run (checkpoints, results) was deleted",
    )
    runner_dirs: list[ErasedItem] = Field(
        default_factory=list,
        description="jobs (id) whose runner work dir (left by a killed runner) was deleted",
    )
    models: list[ErasedItem] = Field(
        default_factory=list,
        description="merged models (full/transfer/hybrid results, tenant base models, id) "
        "whose weights were deleted; retire their catalog entries",
    )
    counts: dict[str, int] = Field(
        default_factory=dict, description="how many of each kind: files, datasets, jobs, ..."
    )
    erasures: list[str] = Field(
        default_factory=list,
        description="erasure ids this answer completes (earlier ones a crash cut short too)",
    )


class UnsettledErasures(BaseModel):
    """Earlier erasures whose data is gone but whose adapter versions the gateway has not
    confirmed deleted (a crash, a registry failure): their ids, to delete those versions now
    and then settle them (``POST /internal/erasure/settle``)."""

    erasures: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    datasets: list[str] = Field(default_factory=list)
    jobs: list[str] = Field(default_factory=list)


class ErasureOut(DerivedCopies):
    """What the training service erased (``POST /internal/erasure``)."""

    object: str = "training.erasure"
    files: list[ErasedItem]
    datasets: list[ErasedItem]
    jobs: list[ErasedItem]
    jobs_cancelled: list[str]
    unsettled: UnsettledErasures = Field(default_factory=UnsettledErasures)


class SettleErasures(BaseModel):
    """``POST /internal/erasure/settle``: the adapter versions of these erasures are deleted."""

    erasures: list[str] = Field(max_length=1000)


class RetentionOut(BaseModel):
    object: str = "training.retention"
    tenant: str
    days: int | None


class AffectedVersion(BaseModel):
    """An adapter version trained on erased data: retrain or retire it."""

    object: Literal["adapter.version.affected"] = "adapter.version.affected"
    ref: str
    tenant: str
    adapter: str
    version: int
    lineage: Lineage
    matched: list[str] = Field(description="the erased ids its lineage names")
    deleted: bool = Field(
        default=False,
        description="deleted from the registry by this erasure (or found gone already)",
    )
    aliases_deleted: list[str] = Field(
        default_factory=list, description="its aliases, deleted with it"
    )


class ErasureReport(DerivedCopies):
    """The gateway's answer to ``POST /admin/erasure`` (audited as ``audit_id``)."""

    object: Literal["erasure.report"] = "erasure.report"
    files: list[ErasedItem]
    datasets: list[ErasedItem]
    jobs: list[ErasedItem]
    jobs_cancelled: list[str]
    adapter_versions: list[AffectedVersion] | None = Field(
        description="null when the registry could not answer (see lineage_error)"
    )
    lineage_error: str | None
    models_error: str | None = Field(
        default=None, description="merged models whose catalog entry could not be removed"
    )
    deletion_error: str | None = Field(
        default=None,
        description="adapter versions that could not be deleted (the next erasure retries)",
    )
    replays_forgotten: int
    audit_id: int
    scope: Literal["tenant", "subject"]
    tenant: str | None
    subject_hmac: str | None


class TenantRetention(BaseModel):
    """``/admin/retention/{tenant}``: how long a tenant's files and datasets are kept."""

    object: Literal["tenant.retention"] = "tenant.retention"
    tenant: str
    days: int | None
