"""Checks that match a PEFT LoRA adapter's config and weights header to a base model's modules.

``check_lora_tensors``, ``resolve_target_modules``, ``check_base_model_name``,
``load_adapter_config``, ``config_ranks`` and ``config_alpha`` are the pieces of
:func:`shared.adapters.archive.inspect_adapter_dir` that read an adapter's config and compare
it and the weights header (from :mod:`shared.adapters.safetensors_header`) with a base model's
module shapes. ``adapter_dir_rank`` and ``has_adapter_weights`` are the inference engine's
last look at an adapter directory before it is handed to vLLM.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from re import _parser as _sre_parser  # type: ignore[attr-defined]
from typing import Any

from shared.errors import InvalidRequest, Unprocessable

__all__ = [
    "ADAPTER_WEIGHT_FILES",
    "adapter_dir_rank",
    "check_base_model_name",
    "check_lora_tensors",
    "config_alpha",
    "config_ranks",
    "has_adapter_weights",
    "load_adapter_config",
    "resolve_target_modules",
]

MAX_CONFIG_BYTES = 1 * 2**20  # adapter_config.json


# --------------------------------------------------------------------------- LoRA weights

_WEIGHTS = "adapter_model.safetensors"
# what vLLM loads from a PEFT directory (archives carry only the safetensors file)
ADAPTER_WEIGHT_FILES = (_WEIGHTS, "adapter_model.bin")
_LORA_DTYPES = ("F32", "F16", "BF16")
_LORA_TENSOR = re.compile(
    r"base_model\.model\.(?P<module>[\w.]+?)\."
    r"(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?P<suffix>\.weight)?"
)
_DORA_TENSOR = re.compile(r".*\.lora_magnitude_vector(\..*)?")


def check_lora_tensors(
    header: Mapping[str, Mapping[str, Any]],
    linear_shapes: Mapping[str, tuple[int, int]],
    *,
    base_id: str,
    targeted: Collection[str],
    ranks: Collection[int],
    max_rank: int,
) -> None:
    """Check a PEFT LoRA weights header (from ``read_safetensors_header``) against a base model.

    Every tensor must be ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight``
    (``lora_A`` is ``(r, in)``, ``lora_B`` is ``(out, r)``) or, for embeddings,
    ``.lora_embedding_A`` ``(r, num_embeddings)`` / ``.lora_embedding_B`` ``(dim, r)``, with
    ``(out, in)`` / ``(num_embeddings, dim)`` taken from ``linear_shapes``; dtype F32/F16/BF16;
    the module selected by ``targeted``; the rank one of ``ranks`` and at most ``max_rank``.
    """

    def invalid(message: str) -> InvalidRequest:
        return InvalidRequest(message, param=_WEIGHTS, code="invalid_adapter")

    def mismatch(name: str, shape: list[int], expected: list[Any], module: str) -> Unprocessable:
        d0, d1 = linear_shapes[module]
        return Unprocessable(
            f"tensor {name!r} has shape {shape} but base model {base_id!r} needs "
            f"[{', '.join(map(str, expected))}] (module {module!r} weight is [{d0}, {d1}])",
            param=_WEIGHTS,
            code="base_model_mismatch",
        )

    if not header:
        raise invalid(f"{_WEIGHTS} contains no tensors")
    dora = next((n for n in sorted(header) if _DORA_TENSOR.fullmatch(n)), None)
    if dora is not None:
        raise Unprocessable(
            f"tensor {dora!r} is a DoRA magnitude vector: DoRA adapters are not "
            "supported (vLLM cannot serve them)",
            param=_WEIGHTS,
            code="unsupported_adapter_type",
        )
    modules: dict[str, dict[str, tuple[str, list[int]]]] = {}
    for name, info in sorted(header.items()):
        if info["dtype"] not in _LORA_DTYPES:
            raise Unprocessable(
                f"tensor {name!r} has dtype {info['dtype']}; LoRA weights must be "
                f"{', '.join(_LORA_DTYPES)}",
                param=_WEIGHTS,
                code="unsupported_adapter_dtype",
            )
        m = _LORA_TENSOR.fullmatch(name)
        if m is None or bool(m["suffix"]) != (m["kind"] in ("lora_A", "lora_B")):
            raise invalid(
                f"tensor {name!r} is not a LoRA weight (expected "
                "base_model.model.<module>.lora_A.weight / .lora_B.weight)"
            )
        module = m["module"]
        if module not in linear_shapes:
            raise Unprocessable(
                f"tensor {name!r} is for module {module!r}, which base model "
                f"{base_id!r} does not have",
                param=_WEIGHTS,
                code="base_model_mismatch",
            )
        if module not in targeted:
            raise invalid(
                f"tensor {name!r} is for module {module!r}, which the target_modules "
                "of adapter_config.json do not select"
            )
        modules.setdefault(module, {})[m["kind"]] = (name, list(info["shape"]))

    for module, parts in sorted(modules.items()):
        emb = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if emb else ("lora_A", "lora_B")
        if set(parts) != {a_key, b_key}:
            raise invalid(
                f"module {module!r} has tensors {sorted(parts)}; a LoRA module needs "
                f"exactly {a_key} and {b_key}"
            )
        d0, d1 = linear_shapes[module]
        a_in, b_out = (d0, d1) if emb else (d1, d0)
        (a_name, a_shape), (b_name, b_shape) = parts[a_key], parts[b_key]
        if len(a_shape) != 2 or a_shape[1] != a_in:
            raise mismatch(a_name, a_shape, ["r", a_in], module)
        r = a_shape[0]
        if r > max_rank:
            raise Unprocessable(
                f"tensor {a_name!r} has rank {r}, above the maximum LoRA rank "
                f"{max_rank} of this deployment",
                param=_WEIGHTS,
                code="adapter_rank_too_large",
            )
        if r == 0 or r not in ranks:
            raise invalid(
                f"tensor {a_name!r} has rank {r}, which matches neither r nor "
                "rank_pattern of adapter_config.json"
            )
        if b_shape != [b_out, r]:
            raise mismatch(b_name, b_shape, [b_out, r], module)


# --------------------------------------------------------------------------- adapter config


def _bad_config(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_adapter")


def _reject_constant(token: str) -> Any:
    raise ValueError(f"non-standard JSON constant {token}")


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def load_adapter_config(path: Path) -> dict[str, Any]:
    """Read ``adapter_config.json`` (at most 1 MiB, strict JSON) and return it as a dict."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise _bad_config(
            f"adapter_config.json is {size} bytes; at most {MAX_CONFIG_BYTES} are allowed",
            "adapter_config.json",
        )
    try:
        config = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad_config(
            f"adapter_config.json is not valid JSON ({exc})", "adapter_config.json"
        ) from None
    if not isinstance(config, dict):
        raise _bad_config(
            f"adapter_config.json must be a JSON object, got {type(config).__name__}",
            "adapter_config.json",
        )
    return config


def config_ranks(config: Mapping[str, Any]) -> set[int]:
    """Every rank an adapter config declares: ``r`` and the values of ``rank_pattern``."""
    r = config.get("r")
    if not _pos_int(r):
        raise _bad_config(f"adapter_config.json r must be a positive integer, got {r!r}", "r")
    pattern = config.get("rank_pattern") or {}
    if not isinstance(pattern, dict) or not all(_pos_int(v) for v in pattern.values()):
        raise _bad_config(
            "rank_pattern must map module patterns to positive integers", "rank_pattern"
        )
    return {r, *pattern.values()}


def adapter_dir_rank(adapter_dir: Path) -> int:
    """The largest LoRA rank an adapter directory's ``adapter_config.json`` declares."""
    return max(config_ranks(load_adapter_config(adapter_dir / "adapter_config.json")))


def has_adapter_weights(adapter_dir: Path) -> bool:
    """Whether ``adapter_dir`` holds a weights file vLLM can load."""
    return any((adapter_dir / name).is_file() for name in ADAPTER_WEIGHT_FILES)


def config_alpha(config: Mapping[str, Any]) -> float:
    """``lora_alpha`` (PEFT default 8) after checking it and ``alpha_pattern`` are finite."""
    alpha = config.get("lora_alpha", 8)  # PEFT's default
    if not _finite(alpha):
        raise _bad_config(f"lora_alpha must be a finite number, got {alpha!r}", "lora_alpha")
    pattern = config.get("alpha_pattern") or {}
    if not isinstance(pattern, dict) or not all(_finite(v) for v in pattern.values()):
        raise _bad_config(
            "alpha_pattern must map module patterns to finite numbers", "alpha_pattern"
        )
    return float(alpha)


def check_base_model_name(name: Any, base_id: str, names: Collection[str]) -> str | None:
    """Check adapter_config ``base_model_name_or_path`` against a base's id and other names.

    Exact matches and matches of the last path component are accepted; absent/empty -> None.
    """
    if name is None or name == "":
        return None
    if not isinstance(name, str):
        raise _bad_config("base_model_name_or_path must be a string", "base_model_name_or_path")

    def tail(s: str) -> str:
        return s.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]

    accepted = {base_id, *names}
    if name in accepted or tail(name) in {tail(a) for a in accepted}:
        return name

    def shown(s: str) -> str:
        # the accepted names include the model's directory on this server, and a fleet-trained
        # adapter names the trainer's: a path shows its last component only (what the match
        # above compares); hub ids (``org/model``) stay whole
        return tail(s) if s.startswith(("/", "~", "\\")) or ":\\" in s else s

    raise Unprocessable(
        f"adapter was trained on base model {shown(name)!r}, not on {base_id!r} "
        f"(accepted names: {', '.join(sorted({shown(a) for a in accepted}))})",
        param="base_model_name_or_path",
        code="base_model_mismatch",
    )


def resolve_target_modules(
    spec: Any,
    linear_shapes: Mapping[str, tuple[int, int]],
    base_id: str,
) -> set[str]:
    """Module paths of the base selected by adapter_config ``target_modules``, as PEFT matches.

    A list entry selects paths equal to it or ending in ``.<entry>``; a string is a regex
    full-matched against each path (``"all-linear"``: every linear module but ``lm_head``).
    """
    paths = sorted(linear_shapes)
    if spec == "all-linear":
        return {p for p in paths if not p.endswith(("lm_head", "embed_tokens"))}
    if isinstance(spec, str):
        rx = _tame_regex(spec)
        matched = {p for p in paths if rx.fullmatch(p)}
        if not matched:
            raise Unprocessable(
                f"target_modules regex {spec!r} matches no module of base model {base_id!r}",
                param="target_modules",
                code="unknown_target_modules",
            )
        return matched
    if not isinstance(spec, list) or not spec or not all(isinstance(n, str) and n for n in spec):
        raise _bad_config(
            "target_modules must be a non-empty list of module names or a regex string",
            "target_modules",
        )
    matched, unknown = set(), []
    for name in spec:
        hits = {p for p in paths if p == name or p.endswith("." + name)}
        matched |= hits
        if not hits:
            unknown.append(name)
    if unknown:
        known = sorted({p.rsplit(".", 1)[-1] for p in paths})
        raise Unprocessable(
            f"target_modules {unknown} do not exist in base model {base_id!r} "
            f"(its modules: {', '.join(known)})",
            param="target_modules",
            code="unknown_target_modules",
        )
    return matched


def _tame_regex(pattern: str) -> re.Pattern[str]:
    """Compile a tenant-supplied regex, refusing shapes that backtrack catastrophically."""

    def bad(reason: str) -> InvalidRequest:
        return _bad_config(f"target_modules regex {pattern[:100]!r} {reason}", "target_modules")

    if len(pattern) > 1000:
        raise bad("is longer than 1000 characters")
    try:
        compiled, tree = re.compile(pattern), _sre_parser.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise bad(f"is invalid ({exc})") from None
    unbounded = 0

    def walk(items: Any, repeated: bool) -> None:
        nonlocal unbounded
        for op, av in items:
            kind = str(op)
            if kind in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                many = av[1] > 1
                if many and repeated:
                    raise bad("nests repetitions (catastrophic backtracking)")
                unbounded += av[1] > 100
                walk(av[2], repeated or many)
            elif kind == "BRANCH":
                if repeated:
                    raise bad("repeats an alternation (catastrophic backtracking)")
                for alt in av[1]:
                    walk(alt, repeated)
            elif kind in ("SUBPATTERN", "ASSERT", "ASSERT_NOT"):
                walk(av[-1], repeated)
            elif kind == "ATOMIC_GROUP":
                walk(av, repeated)
            elif kind in ("GROUPREF", "GROUPREF_EXISTS"):
                raise bad("uses backreferences")

    walk(tree, False)
    if unbounded > 4:
        raise bad("has more than 4 unbounded repetitions")
    return compiled
