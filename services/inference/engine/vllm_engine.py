""":class:`VllmEngine`: the :class:`InferenceEngine` protocol on vLLM's ``AsyncLLM``.

The engine runs in-process (``AsyncLLM`` spawns its ``VLLM::EngineCore`` process, which on
CPU spawns one ``VLLM::Worker``); callers must guard their entry point with
``if __name__ == "__main__"`` and ``await shutdown()`` on exit.

Adapters are validated here before vLLM sees them (directory, ``adapter_config.json``,
rank): vLLM refuses such adapters in ``add_lora`` without dying, but a bad adapter reaching
``generate`` kills the engine core, so every request's adapter is checked and loaded first.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil
from vllm.exceptions import GracefulHTTPError, VLLMClientError
from vllm.inputs import TextPrompt, TokensPrompt
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError
from vllm.v1.engine.exceptions import EngineGenerateError

from services.inference.engine import cpu_lora
from services.inference.engine.base import (
    AdapterHandle,
    AdapterLoadError,
    EngineConfig,
    EngineDeadError,
    EngineError,
    EngineOverloadedError,
    GenerationChunk,
    GenerationRequest,
    InvalidGenerationRequest,
)
from services.inference.engine.vllm_config import (
    SHUTDOWN_GRACE_S,
    StatsRecorder,
    engine_args,  # looked up at start(): benchmarks patch vllm_engine.engine_args
    refusal_reason,
    resolve_device,
)
from shared.adapters.checks import adapter_dir_rank, has_adapter_weights
from shared.errors import InvalidRequest, without_paths

log = logging.getLogger(__name__)


class VllmEngine:
    """:class:`~services.inference.engine.base.InferenceEngine` on vLLM ``AsyncLLM``."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device: str | None = None
        self.start_seconds: float | None = None
        self._llm: AsyncLLM | None = None
        self._stats: dict[str, Any] = {}
        self._adapters: dict[int, AdapterHandle] = {}
        self._adapter_lock = asyncio.Lock()
        self._engine_procs: list[psutil.Process] = []
        self._tokenizer: Any = None
        self._closed = False
        self._adapter_ids = itertools.count(1)
        self.fast_cpu_lora_state: str | None = None  # cpu_lora.status(), set by start()

    def new_adapter_id(self) -> int:
        """A LoRA int id never used before on this engine (vLLM keys adapters by it)."""
        return next(self._adapter_ids)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start ``AsyncLLM`` (in a worker thread, so the event loop stays responsive)."""
        if self._llm is not None:
            return
        if self._closed:
            raise EngineDeadError("engine was shut down; create a new one")
        self.device = resolve_device(self.config.device)
        if self.device == "cpu" and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            gib = self.config.kv_cache_gib
            if gib >= 1 and float(gib).is_integer():  # the variable only takes whole GiB
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(gib))
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        # Read by the cpu_lora plugin in the engine's processes, which inherit this env.
        os.environ[cpu_lora.ENV] = "1" if self.config.fast_cpu_lora else "0"
        os.environ[cpu_lora.PIECES_ENV] = str(max(self.config.max_cpu_loras, self.config.max_loras))
        version = cpu_lora.vllm_version()
        self.fast_cpu_lora_state = cpu_lora.status(
            requested=self.config.fast_cpu_lora, device=self.device, version=version
        )
        if self.fast_cpu_lora_state == cpu_lora.UNSUPPORTED:
            cpu_lora.warn_unsupported(version)  # here too: the worker's log may go elsewhere
        args = engine_args(self.config, self.device)
        me = psutil.Process()
        before = {p.pid for p in me.children(recursive=True)}
        t0 = time.monotonic()
        llm = await asyncio.to_thread(
            AsyncLLM.from_engine_args,
            args,
            stat_loggers=[lambda cfg, idx: StatsRecorder(cfg, idx, sink=self._stats)],
        )
        # Built off-loop, so start the output handler here (it watches for core failures).
        llm._run_output_handler()
        self._llm = llm
        self.start_seconds = time.monotonic() - t0
        self._engine_procs = [
            p
            for p in me.children(recursive=True)
            if p.pid not in before and "resource_tracker" not in " ".join(_cmdline(p))
        ]
        self._tokenizer = llm.get_tokenizer()
        log.info(
            "vLLM engine for %s started on %s in %.1fs (processes %s)",
            self.config.model_id,
            self.device,
            self.start_seconds,
            [p.pid for p in self._engine_procs],
        )

    async def fast_cpu_lora(self, enable: bool | None = None) -> bool | None:
        """Whether the fast CPU LoRA path is on in the worker (switch it with ``enable``);
        ``None`` when it is not installed there (GPU, or the plugin is not registered)."""
        llm = self.llm
        if self.device != "cpu":  # the plugin never patches GPU workers
            return None
        try:
            results = await llm.collective_rpc(cpu_lora.RPC_METHOD, args=(enable,))
        except NotImplementedError:
            return None
        except Exception as e:  # the RPC error comes back wrapped by the engine core
            if "not implemented" in str(e).lower():
                return None
            raise
        return bool(results[0])

    async def fast_cpu_lora_pack(self, cache_pieces: bool | None = None) -> dict[str, Any]:
        """The fast path's pack counters in the worker; ``cache_pieces`` switches per-adapter
        piece caching (benchmarks measure what it saves)."""
        results = await self.llm.collective_rpc(cpu_lora.PACK_RPC_METHOD, args=(cache_pieces,))
        return dict(results[0])

    async def shutdown(self) -> None:
        """Stop the engine core and make sure none of its processes outlives this call."""
        self._closed = True
        llm, self._llm = self._llm, None
        if llm is not None:
            try:
                # vLLM's default grace (~5 s) is just short of a clean EngineCore exit on
                # CPU (~5.7 s: the worker takes ~3 s), so it would be SIGKILLed.
                llm.shutdown(timeout=SHUTDOWN_GRACE_S)
            finally:
                # Drop the last reference now: AsyncLLM.__del__ calls shutdown() again,
                # which fails noisily if it only runs during interpreter teardown.
                del llm
                gc.collect()
        self._adapters.clear()
        procs, self._engine_procs = self._engine_procs, []
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            log.warning("engine process %s outlived shutdown; killing it", proc.pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)

    def is_dead(self) -> bool:
        """True after shutdown, or when the engine core has died."""
        return self._closed or (self._llm is not None and self._llm.errored)

    @property
    def llm(self) -> AsyncLLM:
        """The underlying ``AsyncLLM`` (diagnostics and tests)."""
        if self._llm is None:
            raise EngineDeadError("engine is not running")
        if self._llm.errored:
            raise EngineDeadError("vLLM engine core is dead")
        return self._llm

    @property
    def tokenizer(self) -> Any:
        """The base model's HF tokenizer (vLLM's cached one once started)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.config.model_path)
        return self._tokenizer

    def stats(self) -> dict[str, Any]:
        """Latest scheduler figures (as of the last engine step) plus local counters."""
        sched = self._stats.get("scheduler")
        llm = self._llm
        return {
            "running": getattr(sched, "num_running_reqs", 0),
            "waiting": getattr(sched, "num_waiting_reqs", 0),
            "kv_cache_usage": getattr(sched, "kv_cache_usage", 0.0),
            "running_lora_adapters": dict(getattr(sched, "running_lora_adapters", {})),
            "waiting_lora_adapters": dict(getattr(sched, "waiting_lora_adapters", {})),
            "unfinished_requests": llm.get_num_unfinished_requests() if llm else 0,
            "adapters": len(self._adapters),
            "device": self.device,
            "start_seconds": self.start_seconds,
            "fast_cpu_lora": self.fast_cpu_lora_state,
            "dead": self.is_dead(),
        }

    # ------------------------------------------------------------------ adapters

    def _check_adapter(self, handle: AdapterHandle) -> None:
        """Refuse, without asking vLLM, what would make it fail (or kill it later)."""
        ref, path = handle.ref, handle.path
        if handle.int_id < 1:
            raise AdapterLoadError(
                f"adapter {ref}: int_id must be > 0", ref=ref, reason="invalid_id"
            )
        if not path.is_dir() or not (path / "adapter_config.json").is_file():
            raise AdapterLoadError(
                f"adapter {ref}: no PEFT adapter directory at {path}", ref=ref, reason="not_found"
            )
        if not has_adapter_weights(path):
            raise AdapterLoadError(
                f"adapter {ref}: no adapter weights in {path}", ref=ref, reason="not_found"
            )
        try:
            rank = adapter_dir_rank(path)
        except (OSError, InvalidRequest) as e:
            raise AdapterLoadError(
                f"adapter {ref}: unreadable adapter_config.json: {e}",
                ref=ref,
                reason="invalid_config",
            ) from e
        if rank > self.config.max_lora_rank:
            raise AdapterLoadError(
                f"adapter {ref}: LoRA rank {rank} exceeds this engine's max_lora_rank "
                f"{self.config.max_lora_rank}",
                ref=ref,
                reason="rank_too_large",
            )
        known = self._adapters.get(handle.int_id)
        if known is not None and known != handle:
            raise AdapterLoadError(
                f"adapter {ref}: int_id {handle.int_id} already used by {known.ref}",
                ref=ref,
                reason="conflict",
            )

    async def add_adapter(self, handle: AdapterHandle) -> None:
        """Validate and load ``handle`` into vLLM (idempotent for a loaded adapter)."""
        llm = self.llm
        async with self._adapter_lock:
            self._check_adapter(handle)
            request = LoRARequest(
                lora_name=handle.ref, lora_int_id=handle.int_id, lora_path=str(handle.path)
            )
            try:
                ok = await llm.add_lora(request)
            except Exception as e:
                if llm.errored:
                    raise EngineDeadError(f"engine died loading adapter {handle.ref}") from e
                raise AdapterLoadError(
                    f"adapter {handle.ref}: vLLM refused it: {e}",
                    ref=handle.ref,
                    reason=refusal_reason(str(e)),
                ) from e
            if not ok:
                raise AdapterLoadError(f"adapter {handle.ref}: vLLM refused it", ref=handle.ref)
            self._adapters[handle.int_id] = handle

    async def remove_adapter(self, handle: AdapterHandle) -> None:
        """Unload ``handle`` from vLLM (no error when it was not loaded)."""
        llm = self.llm
        async with self._adapter_lock:
            self._adapters.pop(handle.int_id, None)
            await llm.remove_lora(handle.int_id)

    async def _lora_request(self, handle: AdapterHandle | None) -> LoRARequest | None:
        """The ``LoRARequest`` for a generation, loading the adapter first if needed."""
        if handle is None:
            return None
        if self._adapters.get(handle.int_id) != handle:
            await self.add_adapter(handle)
        elif not handle.path.is_dir():
            # vLLM may have evicted it from its CPU cache and would reload from disk.
            raise AdapterLoadError(
                f"adapter {handle.ref}: files gone from {handle.path}",
                ref=handle.ref,
                reason="not_found",
            )
        return LoRARequest(
            lora_name=handle.ref, lora_int_id=handle.int_id, lora_path=str(handle.path)
        )

    # ------------------------------------------------------------------ generation

    @staticmethod
    def sampling_params(req: GenerationRequest) -> SamplingParams:
        """Map a :class:`GenerationRequest` to delta-streaming ``SamplingParams``."""
        structured = None
        if req.choices is not None:
            structured = StructuredOutputsParams(choice=list(req.choices))
        elif req.json_schema is not None:
            structured = StructuredOutputsParams(json=req.json_schema)
        try:
            return SamplingParams(
                n=req.n,
                temperature=req.temperature,
                top_p=req.top_p,
                max_tokens=req.max_tokens,
                min_tokens=req.min_tokens,
                ignore_eos=req.ignore_eos,
                stop=list(req.stop) if req.stop else None,
                seed=req.seed,
                structured_outputs=structured,
                output_kind=RequestOutputKind.DELTA,
            )
        except (ValueError, VLLMClientError) as e:
            raise InvalidGenerationRequest(without_paths(str(e))) from e

    async def generate(self, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream :class:`GenerationChunk` deltas; closing the iterator aborts the request."""
        llm = self.llm
        params = self.sampling_params(req)
        lora = await self._lora_request(req.adapter)
        prompt: TextPrompt | TokensPrompt = (
            TextPrompt(prompt=req.prompt)
            if req.prompt is not None
            else TokensPrompt(prompt_token_ids=list(req.prompt_token_ids or []))
        )
        completion: dict[int, int] = {}
        try:
            (engine_input,) = await llm.renderer.render_cmpl_async([prompt])
            prompt_tokens = len(engine_input.get("prompt_token_ids") or [])
            stream = llm.generate(engine_input, params, req.request_id, lora_request=lora)
            async with contextlib.aclosing(stream):
                async for out in stream:
                    if out.prompt_token_ids is not None:
                        prompt_tokens = len(out.prompt_token_ids)
                    for c in out.outputs:
                        n_new = len(c.token_ids)
                        if not n_new and not c.text and c.finish_reason is None:
                            continue
                        first = c.index not in completion
                        completion[c.index] = completion.get(c.index, 0) + n_new
                        yield GenerationChunk(
                            index=c.index,
                            text_delta=c.text,
                            finish_reason=c.finish_reason,
                            prompt_tokens=prompt_tokens,
                            completion_tokens=completion[c.index],
                            first_token=first,
                        )
        except VllmEngineDeadError as e:
            raise EngineDeadError("vLLM engine core is dead") from e
        except GracefulHTTPError as e:
            raise EngineOverloadedError(without_paths(str(e))) from e
        except VLLMClientError as e:
            raise InvalidGenerationRequest(without_paths(str(e))) from e
        except EngineGenerateError as e:
            if llm.errored:
                raise EngineDeadError("vLLM engine core is dead") from e
            raise EngineError(f"generation failed: {e.__cause__ or e}") from e

    async def abort(self, request_id: str) -> None:
        """Abort ``request_id`` (its stream ends with ``finish_reason="abort"``)."""
        if self._llm is not None:
            await self._llm.abort(request_id)


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []
