"""Recipe probe: one LoRA fine-tune in this process, scored per epoch on both held-out kinds.

    .venv/bin/python benchmarks/recipe_probe.py --task hobby [--lr 4e-3] [--epochs 3]
        [--r 8] [--alpha 16] [--batch-size 10] [--targets q_proj,...] [--method full]
        [--n-train 400] [--n-heldout 60] [--curve]

For quick iteration on the default recipe (issue 15, item 8) without a fleet: the same
pieces the Ray train loop uses (``build_model``, ``encode_example`` = the one renderer,
``collate``, the warmup + linear-decay schedule), one process, one thread. Defaults are the
service's default recipe for 400 rows (:mod:`services.training.domain.hyper`: LoRA r 8 /
alpha 16 on the linears, embed_tokens and lm_head, lr ``BASE_LR["lora"]``, a batch of
``n_train // STEPS_PER_EPOCH``, 3 epochs). Scores are
label log-likelihoods (the label's tokens + end of turn after the rendered chat prompt),
which is what constrained decoding over ``choices_allowed`` picks in all but near-ties.
Reported: ``heldout`` (the paraphrasing family of :mod:`shared.datasets.quality`) and
``in_distribution`` (unseen cases of the training family). Numbers that go in BENCHMARKS.md
come from ``benchmarks/quality.py`` through a fleet, not from this script.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, log

from services.training.domain.hyper import BASE_LR, STEPS_PER_EPOCH
from services.training.ray.train_loop import METHODS, build_model, collate, encode_example
from shared.datasets import quality as Q
from shared.rendering import render_chat


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--task", default="hobby", choices=[t for t in Q.TASKS if Q.labels(t)])
    p.add_argument("--model", default=str(ROOT / "var/models/tiny-llama"))
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--targets", default="", help="comma-separated; default: the service's")
    p.add_argument("--method", default="lora", choices=METHODS)
    p.add_argument("--lr", type=float, default=None, help="default: the method's BASE_LR")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=None, help="default: n_train / 40")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-heldout", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curve", action="store_true", help="score held-out after every epoch")
    return p.parse_args(argv)


def label_scores(model: Any, tok: Any, task: str, cases: list[Q.Case]) -> list[str]:
    """The label with the highest log-likelihood for each case."""
    import torch

    labels = Q.labels(task)
    targets = [[*tok(x, add_special_tokens=False)["input_ids"], tok.eos_token_id] for x in labels]
    preds = []
    model.eval()
    with torch.no_grad():
        for case in cases:
            prompt = render_chat(
                tok,
                [
                    {"role": "system", "content": Q.system_prompt(task)},
                    {"role": "user", "content": case.text},
                ],
            )
            rows = [(prompt + t, [-100] * len(prompt) + t) for t in targets]
            batch = collate(rows, tok.pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logp = torch.log_softmax(logits.logits[:, :-1].float(), -1)
            gold = batch["labels"][:, 1:]
            picked = logp.gather(-1, gold.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            preds.append(labels[int((picked * (gold != -100)).sum(-1).argmax())])
    model.train()
    return preds


def accuracy(preds: list[str], cases: list[Q.Case]) -> float:
    return round(sum(p == c.answer for p, c in zip(preds, cases, strict=True)) / len(cases), 4)


def main(argv: list[str] | None = None) -> None:
    import torch
    from transformers import AutoTokenizer

    a = parse_args(argv)
    a.lr = a.lr or BASE_LR[a.method]
    a.batch_size = a.batch_size or max(1, a.n_train // STEPS_PER_EPOCH)
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    tok = AutoTokenizer.from_pretrained(a.model)
    lora = {"r": a.r, "alpha": a.alpha, "dropout": a.dropout}
    if a.targets:
        lora["target_modules"] = a.targets.split(",")
    model = build_model({"base_model_path": a.model, "method": a.method, "lora": lora})
    train = [encode_example(tok, r, 256) for r in Q.chat_rows(a.task, "train", a.n_train, a.seed)]
    held = Q.cases(a.task, "heldout", a.n_heldout, a.seed)
    in_dist = Q.cases(a.task, "train", a.n_heldout, a.seed + 1000)
    t0 = time.perf_counter()
    base = accuracy(label_scores(model, tok, a.task, held), held)
    base_in = accuracy(label_scores(model, tok, a.task, in_dist), in_dist)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    total = math.ceil(len(train) / a.batch_size) * a.epochs
    warm = int(total * 0.05)

    def factor(s: int) -> float:  # the train loop's schedule: warmup, linear decay to 10 %
        return (
            (s + 1) / max(1, warm)
            if s < warm
            else 0.1 + 0.9 * max(0.0, 1 - (s - warm) / max(1, total - warm))
        )

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    curve, losses = [], []
    for epoch in range(a.epochs):
        order = list(range(len(train)))
        random.Random(a.seed * 1_000_003 + epoch).shuffle(order)
        for i in range(0, len(order), a.batch_size):
            loss = model(
                **collate([train[j] for j in order[i : i + a.batch_size]], tok.pad_token_id)
            ).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        if a.curve and epoch + 1 < a.epochs:
            acc = accuracy(label_scores(model, tok, a.task, held), held)
            acc_in = accuracy(label_scores(model, tok, a.task, in_dist), in_dist)
            curve.append(
                {"epoch": epoch + 1, "loss": round(losses[-1], 4), "heldout": acc, "in": acc_in}
            )
            log(f"epoch {epoch + 1}: loss {losses[-1]:.3f}, held-out {acc}, in-dist {acc_in}")
    preds = label_scores(model, tok, a.task, held)
    print(
        json.dumps(
            {
                **{k: v for k, v in vars(a).items() if k != "model"},
                "steps": total,
                "base_heldout": base,
                "base_in_distribution": base_in,
                "heldout": accuracy(preds, held),
                "in_distribution": accuracy(label_scores(model, tok, a.task, in_dist), in_dist),
                "heldout_predictions": dict(Counter(preds)),
                "final_loss": round(sum(losses[-5:]) / len(losses[-5:]), 4),
                "curve": curve,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
