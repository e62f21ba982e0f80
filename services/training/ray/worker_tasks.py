"""Evaluation, pruning and merging as Ray tasks with one training worker's resources.

The job runner is the Ray job's driver and runs on the head, which reserves nothing for
work (KubeRay: ``num-cpus: 0``, 8 GiB); scoring models there competed with scheduling and
ran on CPU even for GPU jobs. So the runner's evaluations (base model, tuned result, the
incumbent behind the ``auto_promote`` alias), the pruning search (which scores every
candidate rank), the merge of a hybrid result into its base and base-model selection (the
training service is a Ray driver too: one task per candidate, in parallel) are tasks asking
for 1 CPU, or 1 GPU with ``use_gpu``, on whichever node has them; packing a full-weight
result into the registry archive (gzip of every weight) is a 1-CPU task. Nothing node-local
crosses over: the base model is on the models volume every node mounts, an adapter (a few
MB) travels as its files through the object store (and so does a merged model coming back),
a full model as its checkpoint on the job's shared ``storage_path``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import InvalidRequest, ServiceUnavailable

Row = dict[str, Any]  # a prepared row (chat or prompt/completion)


@dataclass(frozen=True)
class ModelSource:
    """The model to score: the base, the base + an adapter's files, or a checkpoint."""

    base_model_path: str
    adapter_files: dict[str, bytes] | None = None  # a (flat) PEFT adapter dir's files
    checkpoint: str | None = None  # a Ray Train checkpoint path or URI (shared storage)

    @classmethod
    def adapter(cls, base_model_path: str, adapter_dir: Path) -> ModelSource:
        files = {p.name: p.read_bytes() for p in sorted(Path(adapter_dir).iterdir()) if p.is_file()}
        return cls(base_model_path, adapter_files=files)

    def materialize(self, tmp: Path) -> Path:
        """A local directory holding this model (under ``tmp`` unless it is the base)."""
        if self.adapter_files is not None:
            out = tmp / "adapter"
            out.mkdir(parents=True, exist_ok=True)
            for name, data in self.adapter_files.items():
                (out / name).write_bytes(data)
            return out
        if self.checkpoint is not None:
            from ray.train import Checkpoint

            from services.training.ray.driver import export_weights

            with Checkpoint(self.checkpoint).as_directory() as ckpt_dir:
                adapter, model = export_weights(Path(ckpt_dir), tmp, Path(self.base_model_path))
            found = adapter or model
            assert found is not None
            return found
        return Path(self.base_model_path)


def score(
    source: ModelSource, rows: Sequence[Row], task: str, labels: Sequence[str] | None
) -> dict[str, Any]:
    """Evaluate ``source`` on ``rows`` here; the scores without per-row predictions."""
    with tempfile.TemporaryDirectory(prefix="tf-eval-") as tmp:
        path = source.materialize(Path(tmp))
        return _score_dir(path, source.base_model_path, rows, task, labels)


def _score_dir(
    path: Path, base: str, rows: Sequence[Row], task: str, labels: Sequence[str] | None
) -> dict[str, Any]:
    from services.training.ray.evaluate import evaluate, load_model, load_tokenizer

    model = load_model(path, base_model_path=base, merge=True)
    result = evaluate(model, load_tokenizer(base), rows, task, labels)
    return {k: v for k, v in result.items() if k not in ("predictions", "labels")}


def prune(
    source: ModelSource,
    rows: Sequence[Row],
    task: str,
    labels: Sequence[str] | None,
    *,
    metric: str,
    max_quality_drop: float,
    magnitude_sparsity: float | None,
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Prune the adapter ``source`` here: (the pruned adapter's files, the report)."""
    from services.training.ray.prune import prune_adapter

    with tempfile.TemporaryDirectory(prefix="tf-prune-") as tmp:
        adapter_dir = source.materialize(Path(tmp) / "src")

        def metric_of(path: Path) -> float:
            return float(_score_dir(path, source.base_model_path, rows, task, labels)[metric])

        report = prune_adapter(
            adapter_dir,
            Path(tmp) / "pruned",
            metric_of,
            max_quality_drop,
            higher_is_better=metric != "eval_loss",
            magnitude_sparsity=magnitude_sparsity,
        )
        files = {p.name: p.read_bytes() for p in report.out_dir.iterdir() if p.is_file()}
        out = report.to_dict()
    out.pop("out_dir", None)
    return files, out


def merge(source: ModelSource) -> dict[str, bytes]:
    """Fold the adapter ``source`` into its base here (a hybrid result: vLLM refuses
    ``modules_to_save`` adapters); the merged model's weight and config files."""
    from services.training.ray.evaluate import load_model

    with tempfile.TemporaryDirectory(prefix="tf-merge-") as tmp:
        path = source.materialize(Path(tmp) / "src")
        merged = load_model(path, base_model_path=source.base_model_path, merge=True)
        out = Path(tmp) / "merged"
        merged.save_pretrained(out)
        return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def pack(files: dict[str, bytes]) -> bytes:
    """The registry archive (:func:`shared.models.artifact.pack_model_dir`) of a model given
    as its files, packed here."""
    from shared.models.artifact import pack_model_dir

    with tempfile.TemporaryDirectory(prefix="tf-pack-") as tmp:
        src = Path(tmp) / "model"
        src.mkdir()
        for name, data in files.items():
            (src / name).write_bytes(data)
        return pack_model_dir(src, Path(tmp) / "model.tar.gz").read_bytes()


def _on_a_worker(fn: Any, use_gpu: bool) -> Any:
    """``fn`` as a Ray task with one training worker's resources (1 CPU, or 1 GPU)."""
    import ray

    resources: dict[str, Any] = {"num_cpus": 1, "num_gpus": 0}
    if use_gpu:
        resources = {"num_cpus": 0, "num_gpus": 1}
    return ray.remote(max_retries=1, **resources)(fn)


def evaluate_remote(
    source: ModelSource,
    rows: Sequence[Row],
    task: str,
    labels: Sequence[str] | None,
    *,
    use_gpu: bool = False,
) -> dict[str, Any]:
    """:func:`score` as a Ray task."""
    import ray

    scores: dict[str, Any] = ray.get(
        _on_a_worker(score, use_gpu).remote(source, list(rows), task, labels)
    )
    return scores


def prune_remote(
    source: ModelSource,
    rows: Sequence[Row],
    task: str,
    labels: Sequence[str] | None,
    dest: Path,
    *,
    use_gpu: bool = False,
    **options: Any,
) -> tuple[Path, dict[str, Any]]:
    """:func:`prune` as a Ray task; the pruned adapter is written to ``dest`` here."""
    import ray

    ref = _on_a_worker(prune, use_gpu).remote(source, list(rows), task, labels, **options)
    files, report = ray.get(ref)
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (dest / name).write_bytes(data)
    return dest, dict(report)


def merge_remote(source: ModelSource, dest: Path, *, use_gpu: bool = False) -> Path:
    """:func:`merge` as a Ray task; the merged model's files are written to ``dest`` here
    (through the object store: fine for the models a CPU fleet trains; a multi-GB model
    would rather go by the job's shared ``storage_path``)."""
    import ray

    files: dict[str, bytes] = ray.get(_on_a_worker(merge, use_gpu).remote(source))
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (dest / name).write_bytes(data)
    return dest


def select_remote(
    model_dirs: Mapping[str, Path],
    examples: list[Row],
    task: str,
    labels: Sequence[str] | None,
    few_shot: int,
    batch_size: int,
    *,
    use_gpu: bool = False,
    timeout_s: float = 900.0,
) -> list[dict[str, Any]]:
    """:func:`services.training.selection.score_candidate` as one Ray task per candidate
    (a :data:`~services.training.selection.Scorer`). The rows travel with the task; the
    model directories are on the models volume every node mounts. Not done within
    ``timeout_s`` (no free worker on a cluster busy with training, or slow scoring): the
    tasks are cancelled and the caller gets a 503 with ``Retry-After``."""
    import ray
    from ray.exceptions import GetTimeoutError

    from services.training.selection import score_candidate

    if use_gpu and not ray.cluster_resources().get("GPU"):
        raise InvalidRequest("use_gpu: the Ray cluster has no GPU", param="use_gpu")
    task_fn = _on_a_worker(score_candidate, use_gpu)
    refs = [
        task_fn.remote(name, str(path), examples, task, labels, few_shot, batch_size)
        for name, path in model_dirs.items()
    ]
    try:
        return list(ray.get(refs, timeout=timeout_s))
    except GetTimeoutError:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise ServiceUnavailable(
            f"model selection did not finish within {timeout_s:.0f} s (no free Ray worker?)",
            retry_after=60,
            code="ray_busy",
        ) from None


def pack_remote(model_dir: Path, dest: Path) -> Path:
    """:func:`pack` as a 1-CPU Ray task (compression needs no GPU) on ``model_dir``'s model
    files; the archive is written to ``dest`` here."""
    import ray

    from shared.models.artifact import is_model_file

    files = {
        p.name: p.read_bytes()
        for p in sorted(Path(model_dir).iterdir())
        if p.is_file() and not p.is_symlink() and is_model_file(p.name)
    }
    data: bytes = ray.get(_on_a_worker(pack, False).remote(files))
    dest.write_bytes(data)
    return dest
