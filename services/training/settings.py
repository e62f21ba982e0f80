"""Training-service settings (env prefix ``TUNEFLEET_TRAINING_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from shared import db
from shared.settings import ServiceSettings
from shared.uploads import DEFAULT_MAX_UPLOAD_BYTES


class TrainingSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="TUNEFLEET_TRAINING_", extra="ignore", populate_by_name=True
    )

    port: int = Field(default=8002, ge=1, le=65535)
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TUNEFLEET_TRAINING_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL; default SQLite at $TUNEFLEET_HOME/training/training.db",
    )
    data_dir: Path | None = Field(
        default=None, description="uploads and prepared datasets; default $TUNEFLEET_HOME/training"
    )
    registry_url: str = Field(default="http://127.0.0.1:8001")
    callback_url: str | None = Field(
        default=None,
        description="URL the Ray job runner reports to; default http://<host>:<port>",
    )
    ray_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TUNEFLEET_TRAINING_RAY_ADDRESS", "RAY_ADDRESS"),
        description="join this Ray cluster; unset → embedded head on 127.0.0.1",
    )
    ray_temp_dir: Path | None = Field(
        default=None,
        description="embedded head's temp dir (short path!); default /tmp/tf-ray-<port>",
    )
    ray_num_cpus: int | None = Field(default=None, ge=1)
    storage_path: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Ray Train checkpoints and results: a path every Ray node sees (shared "
            "filesystem) or an S3-compatible URI (s3://bucket/prefix); default "
            "<data_dir>/ray-runs (one machine)"
        ),
    )
    runner_work_dir: Path | None = Field(
        default=None,
        description=(
            "where Ray job runners keep their work dirs (exported weights, archives), so an "
            "erasure finds a killed runner's leftovers; default <data_dir>/runner-work"
        ),
    )
    runner_python: str | None = Field(
        default=None, description="interpreter for the Ray job entrypoint; default this one"
    )
    # Uploads are spooled to disk and prepared as a stream (fixed-size columns per row, not
    # the rows): 1 GiB keeps the service's memory bounded (BENCHMARKS.md, large uploads).
    max_upload_bytes: int = Field(
        default=DEFAULT_MAX_UPLOAD_BYTES,
        ge=1024,
        description="largest training file accepted (413 naming the limit above it)",
    )
    max_result_bytes: int = Field(
        default=DEFAULT_MAX_UPLOAD_BYTES,
        ge=1024,
        description="largest result archive a job's runner may send back",
    )
    default_base_model: str = Field(default="tiny-llama")
    max_len: int = Field(default=256, ge=16, le=32768)
    # Held-out share of a training upload when a job names no test_file: the job's base and
    # tuned metrics are reported on it (validation drives sweeps, pruning, auto_promote).
    test_fraction: float = Field(default=0.1, ge=0.0, lt=0.5)
    warm_runner_ttl_s: float = Field(
        default=300.0,
        ge=0,
        description=(
            "single-worker CPU jobs run on a warm Ray actor per base model (imports done, "
            "base weights in memory; 1 CPU) that exits after this many idle seconds; 0 runs "
            "every job as a fresh TorchTrainer"
        ),
    )
    max_workers: int = Field(default=8, ge=1)
    selection_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description=(
            "model selection scores each candidate as a Ray task; a request whose tasks have "
            "not finished in this time (e.g. the cluster busy training) answers 503"
        ),
    )
    monitor_poll_s: float = Field(default=1.0, gt=0)
    retention_interval_s: float = Field(
        default=3600.0, gt=0, description="how often data past a tenant's retention is purged"
    )

    def db_url(self) -> str:
        return db.db_url(self.database_url, self.data_root() / "training.db")

    def data_root(self) -> Path:
        return self.data_dir or self.home / "training"

    def runner_work_root(self) -> Path:
        return (self.runner_work_dir or self.data_root() / "runner-work").resolve()

    def ray_storage(self) -> str:
        """``storage_path``, a local one made absolute (Ray needs that), or the default."""
        if self.storage_path and "://" in self.storage_path:
            return self.storage_path.rstrip("/")
        return str(Path(self.storage_path or self.data_root() / "ray-runs").resolve())

    def runner_callback_url(self) -> str:
        return (self.callback_url or f"http://{self.host}:{self.port}").rstrip("/")
