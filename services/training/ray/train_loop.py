"""Ray Train (V2) per-worker fine-tuning loop for causal LMs on prepared JSONL rows.

``train_loop_per_worker(config)`` is handed to ``ray.train.torch.TorchTrainer``. Config::

    base_model_path   model dir (HF format)
    datasets          {split: rows or ObjectRef} (:mod:`services.training.ray.datasets`):
                      "train" prepared rows ({"messages"} or {"prompt", "completion"});
                      "validation" likewise (optional)
    method            "lora" | "hybrid" | "full" | "transfer"
    lora              {r, alpha, dropout, target_modules, use_rslora, use_dora}
    hyperparameters   {n_epochs, batch_size (per worker), learning_rate, max_len,
                       max_steps?, warmup_ratio?, weight_decay?, grad_clip?,
                       precision ("auto" | "fp32" | "bf16": autocast of the forward, weights
                       stay fp32), gradient_checkpointing (bool)}
    seed, checkpoint_every (steps; a final checkpoint is always written), task,
    report_every (1), append_eos (True), num_threads (1), max_valid (256),
    fail_at_step / fail_rank / fail_marker   test hook: that rank ``os._exit(1)``s once

Methods: ``lora`` = PEFT LoRA on q/k/v/o/gate/up/down, embed_tokens and lm_head;
``hybrid`` = LoRA on the linears + ``modules_to_save=["embed_tokens", "lm_head"]``;
``full`` = every weight trainable, no PEFT; ``transfer`` = base frozen, only ``lm_head``
trained (exported as a full model dir, since PEFT has no "modules_to_save only" adapter).

Rows are encoded by the one renderer inference uses (:mod:`shared.rendering`): chat rows
through the base's chat template with the loss on assistant turns only, prompt rows raw with
the loss on the completion. With ``append_eos`` the eos (end-of-turn) token follows the
answer so served models stop by themselves.
Sharding: each epoch every rank shuffles the full row list with ``seed + epoch`` and takes
``rows[rank::world]`` padded by wrap-around, so all ranks run the same number of steps
(DDP and ``ray.train.report`` are collective) and a resumed run replays the same order.

Every ``report_every`` steps *all* ranks call ``ray.train.report`` (V2 rule: every worker
must report the same number of times, it is a barrier); only rank 0 attaches a checkpoint:
``adapter/`` (PEFT ``save_pretrained``) or ``model/`` (full weights), ``optimizer.pt``,
``scheduler.pt``, ``state.json`` (step, epoch, method). After a worker failure Ray
restarts the group and ``ray.train.get_checkpoint()`` resumes from that step; every
report carries ``resumed_from`` (the step restored, 0 for a fresh start).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.schemas.training import LINEAR_TARGETS, LORA_TARGETS

if TYPE_CHECKING:
    from services.training.ray.sessions import LoopSession

DEFAULT_TARGETS = LORA_TARGETS  # every linear of the blocks + embed_tokens + lm_head
METHODS = ("lora", "hybrid", "full", "transfer")
STATE_FILE = "state.json"


def encode_example(
    tokenizer: Any, row: dict[str, Any], max_len: int, append_eos: bool = True
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a prepared row, through the one renderer inference uses
    (:func:`shared.rendering.encode_training_row`: chat template for ``messages`` with the
    loss on assistant turns only, raw prompt + completion otherwise)."""
    from shared.rendering import encode_training_row

    return encode_training_row(tokenizer, row, max_len, append_eos)


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (seq, lab) in enumerate(batch):
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_shard(
    n_rows: int, epoch: int, seed: int, rank: int, world: int, steps: int, bs: int
) -> list[int]:
    """Row indices of ``rank`` for ``epoch``: shuffled, strided, wrapped to steps*bs."""
    order = list(range(n_rows))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    mine = order[rank::world] or order
    need = steps * bs
    return [mine[i % len(mine)] for i in range(need)]


def build_model(config: dict[str, Any], resume_dir: Path | None = None, *, base: Any = None) -> Any:
    """Base model wrapped for ``config["method"]``; weights from ``resume_dir`` if given.

    ``base``: the base model already in memory (a private copy the result may own, e.g.
    the warm runner's), instead of reading it from ``base_model_path``."""
    import torch
    from transformers import AutoModelForCausalLM

    method = config.get("method", "lora")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    base_path = config["base_model_path"]
    if method in ("full", "transfer"):
        if resume_dir is None and base is not None:
            model = base
        else:
            src = resume_dir / "model" if resume_dir else base_path
            model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
        if method == "transfer":
            for name, param in model.named_parameters():
                param.requires_grad = name.startswith("lm_head.")
        return model

    from peft import LoraConfig, PeftModel, get_peft_model

    if base is None:
        base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
    if resume_dir is not None:
        return PeftModel.from_pretrained(base, str(resume_dir / "adapter"), is_trainable=True)
    lora = dict(config.get("lora") or {})
    targets = list(lora.get("target_modules") or DEFAULT_TARGETS)
    saved = ["embed_tokens", "lm_head"] if method == "hybrid" else None
    if saved:  # trained whole there: a LoRA on them too would be a second copy
        targets = [t for t in targets if t not in saved] or list(LINEAR_TARGETS)
    peft_cfg = LoraConfig(
        task_type="CAUSAL_LM",
        r=int(lora.get("r", 8)),
        lora_alpha=int(lora.get("alpha", 16)),
        lora_dropout=float(lora.get("dropout", 0.05)),
        target_modules=targets,
        use_rslora=bool(lora.get("use_rslora", False)),
        use_dora=bool(lora.get("use_dora", False)),
        modules_to_save=saved,
    )
    return get_peft_model(base, peft_cfg)


def compute_dtype(precision: str, device: Any) -> Any | None:
    """The autocast dtype for the job's ``precision`` on ``device`` (None: plain fp32).

    Mixed precision only: weights, gradients and optimizer state stay fp32, so checkpoints
    and exported adapters do not depend on it. ``auto`` takes bf16 where a GPU supports it;
    on CPU it stays fp32 (bf16 matmuls are slower than fp32 on CPUs without AMX).
    """
    import torch

    gpu_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16":
        if device.type == "cuda" and not gpu_bf16:
            raise ValueError("hyperparameters.precision: bf16 is not supported by this GPU")
        return torch.bfloat16
    if precision == "auto" and gpu_bf16:
        return torch.bfloat16
    if precision not in ("auto", "fp32"):
        raise ValueError(f"hyperparameters.precision: unknown value {precision!r}")
    return None


def autocast(dtype: Any | None, device: Any) -> Any:
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _lr_lambda(total: int, warmup: int):
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 1.0 - progress) * 0.9 + 0.1  # linear decay to 10 %

    return fn


def _all_reduce_sum(values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _valid_loss(
    model: Any,
    encoded: list[tuple[list[int], list[int]]],
    rank: int,
    world: int,
    bs: int,
    pad_id: int,
    device: Any,
    dtype: Any | None = None,
) -> float:
    """Token-weighted completion loss over all ranks' shards of ``encoded``."""
    import torch

    inner = getattr(model, "module", model)  # no DDP: ranks may run different batch counts
    mine = encoded[rank::world]
    loss_sum, n_tok = 0.0, 0.0
    inner.eval()
    with torch.no_grad():
        for i in range(0, len(mine), bs):
            batch = {k: v.to(device) for k, v in collate(mine[i : i + bs], pad_id).items()}
            n = float((batch["labels"][:, 1:] != -100).sum())
            if n:
                with autocast(dtype, device):
                    loss_sum += float(inner(**batch).loss) * n
                n_tok += n
    inner.train()
    loss_sum, n_tok = _all_reduce_sum([loss_sum, n_tok])
    return loss_sum / n_tok if n_tok else float("nan")


def _save_checkpoint(
    d: Path, model: Any, optimizer: Any, scheduler: Any, state: dict, method: str, tokenizer: Any
) -> None:
    import torch

    inner = getattr(model, "module", model)  # unwrap DDP
    if method in ("lora", "hybrid"):
        # LoRA on embed_tokens/lm_head: save the low-rank pairs only, not (PEFT's default
        # then) a copy of the base's whole embedding and head (10 MB here, GBs on a 7B base)
        inner.save_pretrained(str(d / "adapter"), save_embedding_layers=False)
    else:
        inner.save_pretrained(str(d / "model"))
        tokenizer.save_pretrained(str(d / "model"))
    torch.save(optimizer.state_dict(), d / "optimizer.pt")
    torch.save(scheduler.state_dict(), d / "scheduler.pt")
    (d / STATE_FILE).write_text(json.dumps(state, indent=2))


def _maybe_fail(config: dict[str, Any], step: int, rank: int, world: int, experiment: str) -> None:
    fail_at = config.get("fail_at_step")
    if fail_at is None or step != int(fail_at):
        return
    if rank != int(config.get("fail_rank", 1 if world > 1 else 0)):
        return
    marker = Path(
        config.get("fail_marker") or Path(tempfile.gettempdir()) / f"tf-fail-{experiment}"
    )
    if marker.exists():
        return
    marker.write_text(f"rank {rank} killed at step {step} pid {os.getpid()}\n")
    os._exit(1)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """TorchTrainer entry point (see module docstring for the config)."""
    t_enter, wall_enter = time.perf_counter(), time.time()
    from services.training.ray.sessions import RayTrainSession

    return run_loop(config, RayTrainSession(), t_enter=t_enter, wall_enter=wall_enter)


def run_loop(
    config: dict[str, Any],
    session: LoopSession,
    *,
    t_enter: float | None = None,
    wall_enter: float | None = None,
) -> dict[str, Any] | None:
    """The training loop proper, wherever it runs (``session``); see the module docstring.

    Every report carries ``loop_started_at`` (wall clock when the loop was entered),
    ``setup_seconds`` (imports, tokenization, model load) and, at checkpoints,
    ``checkpoint_seconds`` and ``reported_at``: the driver turns them into a per-phase
    breakdown of the run (:attr:`~services.training.ray.driver.TrainOutcome.phases`).
    """
    t_enter = time.perf_counter() if t_enter is None else t_enter
    wall_enter = time.time() if wall_enter is None else wall_enter
    import torch
    from transformers.utils import logging as hf_logging

    from services.training.ray.datasets import split_rows

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(int(config.get("num_threads", 1)))
    rank, world = session.rank, session.world
    method = config.get("method", "lora")
    hp = dict(config.get("hyperparameters") or {})
    bs = int(hp.get("batch_size", 8))
    max_len = int(hp.get("max_len", 256))
    seed = int(config.get("seed", 0))
    append_eos = bool(config.get("append_eos", True))
    report_every = max(1, int(config.get("report_every", 1)))
    ckpt_every = int(config.get("checkpoint_every") or 0)

    tokenizer = session.tokenizer(config["base_model_path"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = split_rows(config, "train")
    encoded = [encode_example(tokenizer, r, max_len, append_eos) for r in rows]
    valid = []
    if vrows := split_rows(config, "validation", int(config.get("max_valid", 256))):
        valid = [encode_example(tokenizer, r, max_len, append_eos) for r in vrows]

    steps_per_epoch = max(1, math.ceil(len(encoded) / (world * bs)))
    total = int(hp.get("max_steps") or steps_per_epoch * int(hp.get("n_epochs", 1)))

    torch.manual_seed(seed)
    resume_state: dict[str, Any] = {}
    with session.restore() as resume_dir:
        model = build_model(config, resume_dir, base=session.base_model(config))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=float(hp.get("learning_rate", 2e-4)),
            weight_decay=float(hp.get("weight_decay", 0.0)),
        )
        warmup = int(total * float(hp.get("warmup_ratio", 0.05)))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, warmup))
        if resume_dir is not None:
            optimizer.load_state_dict(torch.load(resume_dir / "optimizer.pt", weights_only=True))
            scheduler.load_state_dict(torch.load(resume_dir / "scheduler.pt", weights_only=True))
            resume_state = json.loads((resume_dir / STATE_FILE).read_text())
    if hp.get("gradient_checkpointing"):
        # non-reentrant: works with frozen inputs (LoRA) and with DDP without a static graph
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model, device = session.prepare(model)  # DDP (gloo on CPU, NCCL on GPU) when world > 1
    model.train()
    dtype = compute_dtype(str(hp.get("precision", "auto")), device)
    setup_seconds = time.perf_counter() - t_enter

    step = int(resume_state.get("step", 0))
    resumed_from = step
    n_trainable = sum(p.numel() for p in params)
    grad_clip = float(hp.get("grad_clip", 1.0))
    history: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    window = [0.0, 0.0, 0.0, 0.0]  # loss sum, steps, tokens, seconds since the last report
    while step < total:
        if session.should_stop():
            return None
        epoch, pos = divmod(step, steps_per_epoch)
        shard = epoch_shard(len(encoded), epoch, seed, rank, world, steps_per_epoch, bs)
        idx = shard[pos * bs : (pos + 1) * bs]
        _maybe_fail(config, step + 1, rank, world, session.experiment)
        t0 = time.perf_counter()
        torch.manual_seed(seed + 7919 * step + rank)  # dropout: reproducible across resumes
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in idx], pad_id).items()}
        with autocast(dtype, device):
            loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        window[0] += float(loss.detach())
        window[1] += 1
        window[2] += float(batch["attention_mask"].sum())
        window[3] += time.perf_counter() - t0
        is_ckpt = step == total or (ckpt_every > 0 and step % ckpt_every == 0)
        if not (is_ckpt or step % report_every == 0):
            continue
        # collective: every rank reaches here at the same steps
        loss_sum, n_steps, n_tokens, seconds = _all_reduce_sum(window)
        window = [0.0, 0.0, 0.0, 0.0]
        metrics = {
            "step": step,
            "epoch": step / steps_per_epoch,
            "train_loss": loss_sum / max(1.0, n_steps),  # mean over ranks and window steps
            "tokens_per_second": n_tokens / max(1e-9, seconds / world),
            "learning_rate": scheduler.get_last_lr()[0],
            "resumed_from": resumed_from,
            "total_steps": total,
            "world_size": world,
            "trainable_params": n_trainable,
            "setup_seconds": setup_seconds,
            "precision": "bf16" if dtype is not None else "fp32",
            "loop_started_at": wall_enter,
        }
        if is_ckpt and valid:
            metrics["valid_loss"] = _valid_loss(
                model, valid, rank, world, bs, pad_id, device, dtype
            )
        history.append(metrics)
        last = metrics
        if is_ckpt and rank == 0:
            with tempfile.TemporaryDirectory(prefix="tf-ckpt-") as tmp:
                state = {
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    "method": method,
                    "seed": seed,
                }
                t_save = time.perf_counter()
                _save_checkpoint(Path(tmp), model, optimizer, scheduler, state, method, tokenizer)
                metrics["checkpoint_seconds"] = time.perf_counter() - t_save
                metrics["reported_at"] = time.time()
                session.report(metrics, Path(tmp))
        else:
            metrics["reported_at"] = time.time()
            session.report(metrics, None)
    return {"history": history, "final": last, "resumed_from": resumed_from} if rank == 0 else None
