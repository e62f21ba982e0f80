"""Deterministic causal-LM pretraining of ``tiny-llama`` on CPU with plain torch.

Determinism on one machine + torch build comes from:

* ``torch.manual_seed`` before the model is created (weight init) and a seeded
  ``random.Random`` for the data order (no DataLoader workers);
* ``torch.set_num_threads(2)`` — fixed, because the number of intra-op threads decides how
  matmul/reduction work is split, and float addition is not associative: a different thread
  count sums partial results in a different order and changes the low bits of the weights;
* ``torch.use_deterministic_algorithms(True)``, which makes torch raise instead of silently
  using a nondeterministic kernel.

Bit-identical weights across different CPUs (e.g. AVX2 vs AVX-512 kernels) are not promised.
"""

from __future__ import annotations

import math
import random
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

NUM_THREADS = 2
CHAT_FRACTION = 0.4  # share of labelled corpus lines also rendered as a chat conversation

_TICKET = re.compile(r"^Ticket: (.+)\nCategory: (\w+)$", re.M)
_REVIEW = re.compile(r"^Review: (.+)\nSentiment: (\w+)$", re.M)
_PAIR = re.compile(r"^English: (.+)\nGerman: (.+)$", re.M)
_TICKET_PROMPTS = (
    "Classify this support ticket. Answer with one category.\n\n{text}",
    "Which category fits this ticket?\n{text}",
    "Ticket: {text}\nCategory?",
)
_REVIEW_PROMPTS = (
    "What is the sentiment of this review? Answer positive, negative or neutral.\n\n{text}",
    "Review: {text}\nSentiment?",
)
_PAIR_PROMPTS = ("Translate to German: {text}", "Translate into German:\n{text}")


@dataclass
class PretrainResult:
    """Outcome of :func:`pretrain`."""

    final_loss: float
    steps: int
    tokens_seen: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def chat_documents(corpus_docs: Sequence[str], seed: int) -> list[list[dict[str, str]]]:
    """Turn the corpus's labelled lines into short chat conversations (user → assistant).

    This teaches the base the chat format (headers, ``<|eot|>`` after an answer) and puts the
    label words in the assistant position, which later LoRA fine-tunes build on.
    """
    rng = random.Random(seed)
    chats: list[list[dict[str, str]]] = []
    for doc in corpus_docs:
        for pattern, prompts in (
            (_TICKET, _TICKET_PROMPTS),
            (_REVIEW, _REVIEW_PROMPTS),
            (_PAIR, _PAIR_PROMPTS),
        ):
            for text, answer in pattern.findall(doc):
                if rng.random() >= CHAT_FRACTION:
                    continue
                prompt = rng.choice(prompts).format(text=text)
                chats.append(
                    [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
                )
    return chats


def encode_documents(
    tokenizer: PreTrainedTokenizerFast, corpus_docs: Sequence[str], seed: int
) -> list[list[int]]:
    """Token ids of every training document: ``bos + text + <|end_of_text|>``, then chats."""
    eot_text = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    enc = tokenizer(list(corpus_docs), add_special_tokens=True)["input_ids"]
    out = [[*ids, eot_text] for ids in enc]
    for chat in chat_documents(corpus_docs, seed):
        rendered = tokenizer.apply_chat_template(chat, tokenize=False)
        out.append(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return out


def _batches(
    docs: list[list[int]], seq_len: int, batch_size: int, seed: int
) -> Iterator[list[list[int]]]:
    """Endless packed batches: each epoch shuffles documents, concatenates and chunks them."""
    epoch = 0
    while True:
        order = list(range(len(docs)))
        random.Random(seed * 1000 + epoch).shuffle(order)
        stream = [tok for i in order for tok in docs[i]]
        rows = [stream[i : i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
        for b in range(0, len(rows) - batch_size + 1, batch_size):
            yield rows[b : b + batch_size]
        epoch += 1


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup to ``peak``, then cosine decay to ``peak * min_ratio``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_determinism(seed: int) -> Callable[[], None]:
    """Fix torch's seed, thread count and deterministic mode; return a restore function."""
    import torch

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)

    def restore() -> None:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)

    return restore


def pretrain(
    model: LlamaForCausalLM,
    docs: list[list[int]],
    hp: dict[str, Any],
    *,
    log: TextIO = sys.stderr,
    log_every: int = 10,
) -> PretrainResult:
    """Train ``model`` in place on packed ``docs`` for ``hp['steps']`` AdamW steps.

    ``hp`` keys: steps, seq_len, batch_size, lr, warmup, min_lr_ratio, weight_decay, betas,
    grad_clip, seed. Logs ``step/loss/lr/tok/s`` to ``log`` every ``log_every`` steps.
    """
    import torch

    steps, seq_len, bsz = int(hp["steps"]), int(hp["seq_len"]), int(hp["batch_size"])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": hp["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=hp["lr"],
        betas=tuple(hp["betas"]),
        eps=1e-8,
    )
    model.train()
    batches = _batches(docs, seq_len, bsz, int(hp["seed"]))
    losses: list[float] = []
    t0 = t_log = time.perf_counter()
    for step in range(steps):
        lr = lr_at(step, steps, hp["lr"], hp["warmup"], hp["min_lr_ratio"])
        for group in opt.param_groups:
            group["lr"] = lr
        ids = torch.tensor(next(batches), dtype=torch.long)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            now = time.perf_counter()
            n_steps = (step % log_every) + 1
            tps = n_steps * bsz * seq_len / max(now - t_log, 1e-9)
            avg = sum(losses[-n_steps:]) / n_steps
            print(
                f"  step {step + 1:4d}/{steps}  loss {avg:.3f}  lr {lr:.2e}  "
                f"{tps:,.0f} tok/s  {now - t0:5.1f}s",
                file=log,
                flush=True,
            )
            t_log = now
    model.eval()
    tail = losses[-10:]
    return PretrainResult(
        final_loss=round(sum(tail) / len(tail), 4),
        steps=steps,
        tokens_seen=steps * bsz * seq_len,
        seconds=round(time.perf_counter() - t0, 2),
        losses=losses,
    )
