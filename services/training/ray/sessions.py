"""Where the train loop (:func:`~services.training.ray.train_loop.run_loop`) runs.

:class:`LoopSession` is what the loop needs from its host: rank and world, the checkpoint to
resume from, the base model and tokenizer, model preparation (DDP), reports with
checkpoints, and whether to stop. :class:`RayTrainSession` is a Ray Train V2 worker; the
warm runner (:mod:`services.training.ray.warm`) has its own, single-process one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol


class LoopSession(Protocol):
    """Where :func:`run_loop` runs: a Ray Train worker, or the warm runner (:mod:`.warm`)."""

    rank: int
    world: int
    experiment: str

    def restore(self) -> contextlib.AbstractContextManager[Path | None]:
        """The checkpoint dir to resume from (None for a fresh start)."""
        ...

    def base_model(self, config: dict[str, Any]) -> Any:
        """A fresh, private copy of the base model (None: load it from disk)."""
        ...

    def tokenizer(self, path: str) -> Any: ...

    def prepare(self, model: Any) -> tuple[Any, Any]:
        """(the model ready to train, its device): DDP-wrapped when world > 1."""
        ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """Collective on every rank at the same steps; only rank 0 passes a checkpoint."""
        ...

    def should_stop(self) -> bool:
        """True when whoever asked for the run is gone (the loop then returns early)."""
        ...


class RayTrainSession:
    """:class:`LoopSession` of a Ray Train V2 worker (``ray.train`` context)."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.experiment = ctx.get_experiment_name()

    def restore(self) -> contextlib.AbstractContextManager[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return contextlib.nullcontext()
        return _as_path(checkpoint.as_directory())

    def base_model(self, config: dict[str, Any]) -> Any:
        return None

    def tokenizer(self, path: str) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)

    def prepare(self, model: Any) -> tuple[Any, Any]:
        from ray.train.torch import get_device, prepare_model

        # DDP (gloo on CPU) when world > 1; the only buffers (rotary inv_freq) are constant,
        # so skip DDP's per-forward buffer broadcast
        model = prepare_model(model, parallel_strategy_kwargs={"forward_sync_buffers": False})
        return model, get_device()

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train
        from ray.train import Checkpoint

        checkpoint = Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def should_stop(self) -> bool:
        return False  # Ray Train stops the worker group itself


@contextlib.contextmanager
def _as_path(cm: contextlib.AbstractContextManager[str]) -> Iterator[Path]:
    with cm as d:
        yield Path(d)
