"""Wire models of the training service (API.md: files and fine-tuning), plus the internal
messages between the Ray job runner and the service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

from shared.modelref import ALIAS_RE, NAME_RE

Task = Literal["classification", "sentiment", "translation", "generation"]
TrainingMethod = Literal["transfer", "lora", "hybrid", "full"]
JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
LINEAR_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The default LoRA targets: every linear of the blocks plus the token embedding and the output
# head (as low-rank updates, which vLLM serves; not ``modules_to_save``, which it refuses).
# The two vocabulary modules let an adapter tie words the base barely read to its labels:
# on the `hobby` set of shared.datasets.quality, 60 steps reached 0.27 without
# them and 0.75 with them (BENCHMARKS.md, "The default recipe on wording the base never read").
LORA_TARGETS = (*LINEAR_TARGETS, "embed_tokens", "lm_head")


def _auto_number(kind: type, lo: float, hi: float) -> Callable[[Any], Any]:
    """``"auto"`` or a ``kind`` in [lo, hi]; the message names the allowed values."""
    what = "an integer" if kind is int else "a number"

    def check(value: Any) -> Any:
        if value == "auto":
            return value
        ok_type = isinstance(value, int | float) and not isinstance(value, bool)
        if kind is int and ok_type and float(value).is_integer():
            value = int(value)
        elif kind is int:
            ok_type = False
        if not ok_type or not lo <= value <= hi:
            raise ValueError(f'must be "auto" or {what} in [{lo:g}, {hi:g}], got {value!r}')
        return kind(value)

    return check


def _auto(kind: type, lo: float, hi: float) -> Any:
    schema = {"anyOf": [{"const": "auto"}, {"type": "integer" if kind is int else "number"}]}
    return Annotated[
        int | float | str, PlainValidator(_auto_number(kind, lo, hi)), WithJsonSchema(schema)
    ]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyperparameters(_Strict):
    """OpenAI's three knobs ("auto" allowed) plus tunefleet extras for short runs."""

    n_epochs: _auto(int, 1, 50) = "auto"  # type: ignore[valid-type]
    batch_size: _auto(int, 1, 256) = "auto"  # type: ignore[valid-type]
    learning_rate_multiplier: _auto(float, 1e-4, 100) = "auto"  # type: ignore[valid-type]
    max_steps: int | None = Field(default=None, ge=1, le=1_000_000)
    checkpoint_every: int | None = Field(default=None, ge=1, le=1_000_000)
    max_len: int | None = Field(default=None, ge=16, le=32768)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="tunefleet: compute precision of the forward pass (weights and optimizer "
        "state stay fp32). auto = bf16 on a GPU that supports it, fp32 elsewhere",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="tunefleet: recompute activations in the backward pass (less memory, "
        "about a third more compute)",
    )


class SupervisedMethod(_Strict):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(_Strict):
    type: Literal["supervised"] = "supervised"
    supervised: SupervisedMethod | None = None


class LoraConfig(_Strict):
    r: int = Field(default=8, ge=1, le=256)
    alpha: float = Field(default=16, gt=0, le=1024)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[Literal[LORA_TARGETS]] | None = Field(  # type: ignore[valid-type]
        default=None, min_length=1
    )
    use_rslora: bool = False
    use_dora: bool = False


class Resources(_Strict):
    num_workers: int = Field(default=2, ge=1, le=64)
    use_gpu: bool = False


class AutoPromote(_Strict):
    alias: str = Field(pattern=ALIAS_RE.pattern)
    gate: str = Field(
        default="auto", max_length=32, description="metric to beat; auto = the task's metric"
    )


class JobCreate(_Strict):
    model: str = Field(pattern=NAME_RE.pattern, max_length=64)
    training_file: str = Field(max_length=64)
    validation_file: str | None = Field(default=None, max_length=64)
    test_file: str | None = Field(
        default=None,
        max_length=64,
        description="tunefleet: held-out file the job's base/tuned metrics are reported on; "
        "drawn deterministically from training_file when absent",
    )
    suffix: str | None = Field(default=None, pattern=NAME_RE.pattern, max_length=40)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    task: Task = "generation"
    training_method: TrainingMethod = "lora"
    lora: LoraConfig | None = None
    resources: Resources = Field(default_factory=Resources)
    # validated by services.training.ray.sweep.parse_sweep / prune.parse_prune (the route)
    sweep: dict[str, Any] | None = None
    prune: dict[str, Any] | None = None
    auto_promote: AutoPromote | None = None

    def effective_hyperparameters(self) -> Hyperparameters:
        """``method.supervised.hyperparameters`` wins over the legacy top-level field."""
        if self.method and self.method.supervised:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    status: JobStatus
    training_file: str
    validation_file: str | None
    test_file: str | None = None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    trained_tokens: int | None
    error: JobError | None
    result: dict[str, Any] | None
    result_files: list[str] = []
    seed: int
    suffix: str | None
    metadata: dict[str, str] | None
    # tunefleet extras
    task: Task
    training_method: TrainingMethod
    lora: dict[str, Any] | None
    resources: dict[str, Any]
    sweep: dict[str, Any] | None
    prune: dict[str, Any] | None
    auto_promote: dict[str, Any] | None
    dataset_id: str | None


class EventOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


class CheckpointOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuning_job_id: str
    fine_tuned_model_checkpoint: str
    step_number: int
    metrics: dict[str, Any]


class FileOut(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["fine-tune"]
    status: Literal["processed", "error"]
    status_details: str | None = None
    # tunefleet extras
    sha256: str
    mapping: dict[str, str] | None = None
    prep_report: dict[str, Any] | None = None
    datasets: list[str] = []


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
    datasets_deleted: list[str] = []


class ModelSelectionRequest(BaseModel):
    """``POST /v1/fine_tuning/model_selection``: rank catalog base models on a file."""

    model_config = ConfigDict(extra="forbid")

    validation_file: str = Field(max_length=64, description="a file- id (prompt/completion)")
    task: Task
    models: list[str] | None = Field(
        default=None, min_length=1, max_length=16, description="catalog ids; default all"
    )
    few_shot: int = Field(default=3, ge=0, le=16)
    max_examples: int = Field(default=64, ge=1, le=512)
    use_gpu: bool = Field(
        default=False, description="score each candidate on a GPU worker (one Ray task each)"
    )


class RankedModel(BaseModel):
    """One candidate's scores; task metrics (accuracy, macro_f1, chrf) only where they apply."""

    model_config = ConfigDict(extra="allow")

    model: str
    rank: int
    metric: str
    score: float | None
    eval_loss: float | None
    eval_ppl: float | None
    accuracy: float | None = None
    macro_f1: float | None = None
    chrf: float | None = None
    n: int
    few_shot: int
    seconds: float


class ModelSelectionOut(BaseModel):
    object: Literal["fine_tuning.model_selection"] = "fine_tuning.model_selection"
    task: Task
    data: list[RankedModel] = Field(description="best first")


# --- runner <-> service (internal, per-job token) ---------------------------------------


class RunnerSpec(BaseModel):
    """What the Ray job runner needs to train one job."""

    job_id: str
    task: Task
    method: TrainingMethod
    base_model: str
    base_model_path: str
    hyperparameters: dict[str, Any]
    lora: dict[str, Any]
    num_workers: int
    use_gpu: bool
    seed: int
    checkpoint_every: int
    labels: list[str] | None
    model_output_dir: str
    storage_path: str
    compare_alias: str | None = None
    compare_version: int | None = None
    sweep: dict[str, Any] | None = None
    prune: dict[str, Any] | None = None


class RunnerEvent(_Strict):
    level: Literal["info", "warn", "error"] = "info"
    message: str = Field(max_length=2000)
    data: dict[str, Any] | None = None
    status: Literal["running"] | None = None


class RunnerCheckpoint(_Strict):
    step: int = Field(ge=0)
    metrics: dict[str, Any] = Field(default_factory=dict)
    path: str | None = None


class RunnerFailure(_Strict):
    code: str = Field(max_length=64)
    message: str = Field(max_length=4000)


class RunnerResult(_Strict):
    """Sent with the adapter archive (multipart) or the path of a full model dir."""

    trained_tokens: int = Field(ge=0)
    result: dict[str, Any]
    model_dir: str | None = None
