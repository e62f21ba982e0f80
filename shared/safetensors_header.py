"""Safetensors headers, and the checks that match a LoRA adapter to a base model's modules.

``read_safetensors_header`` is a pure-Python, bounded parse (no tensor data is loaded).

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``) and the
tensor bytes. The checks here mirror what the Rust ``safetensors`` loader enforces (offsets
contiguous from 0, covering the data buffer exactly, byte sizes matching dtype x shape), so a
file accepted here will not make vLLM's loader fail on its structure.

The rest (``check_lora_tensors``, ``resolve_target_modules``, ``check_base_model_name``,
``load_adapter_config``, ``config_ranks``, ``config_alpha``) are the pieces of
``shared.archives.inspect_adapter_dir`` that read an adapter's config and compare it and the
weights header with a base model's module shapes.
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
    "MAX_HEADER_BYTES",
    "check_base_model_name",
    "check_lora_tensors",
    "config_alpha",
    "config_ranks",
    "linear_shapes_from_model_dir",
    "load_adapter_config",
    "read_safetensors_header",
    "resolve_target_modules",
]

MAX_HEADER_BYTES = 100_000_000  # the Rust loader's own limit
MAX_CONFIG_BYTES = 1 * 2**20  # adapter_config.json

# Bits per element of every dtype the safetensors format defines.
_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}


def _corrupt(path: Path, reason: str) -> InvalidRequest:
    return InvalidRequest(
        f"{path.name} is not a valid safetensors file: {reason}",
        param=path.name,
        code="corrupt_weights",
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(token: str) -> Any:
    raise ValueError(f"non-standard JSON constant {token}")


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Parse and validate the header of ``path``; return ``{tensor: {"dtype", "shape"}}``.

    ``shape`` is a list of ints. ``__metadata__`` is validated (str -> str) but not returned.
    Raises ``InvalidRequest(code="corrupt_weights")`` for: a file shorter than 8 bytes, a header
    length above 100 MB or beyond the file, a header that is not UTF-8 JSON object, malformed
    entries, unknown dtypes, data offsets outside the data buffer, overlapping or
    non-contiguous offsets, or a byte size that does not match dtype x shape.
    """
    path = Path(path)
    with path.open("rb") as fh:
        file_size = path.stat().st_size
        if file_size < 8:
            raise _corrupt(path, f"file is {file_size} bytes, shorter than the header length")
        n = int.from_bytes(fh.read(8), "little")
        if n > MAX_HEADER_BYTES:
            raise _corrupt(path, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
        if 8 + n > file_size:
            raise _corrupt(
                path, f"header length {n} runs past the end of the {file_size}-byte file"
            )
        raw = fh.read(n)
    if len(raw) != n:
        raise _corrupt(path, "file shrank while being read")
    try:
        header = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _corrupt(path, f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")

    data_size = file_size - 8 - n
    tensors: dict[str, dict[str, Any]] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise _corrupt(path, "__metadata__ must map strings to strings")
            continue
        if not isinstance(entry, dict):
            raise _corrupt(path, f"entry for tensor {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPE_BITS:
            raise _corrupt(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise _corrupt(path, f"tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_uint(o) for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise _corrupt(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if end > data_size:
            raise _corrupt(
                path,
                f"tensor {name!r} data_offsets {offsets} lie outside the "
                f"{data_size}-byte data section",
            )
        bits = math.prod(shape) * _DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != end - begin:
            raise _corrupt(
                path,
                f"tensor {name!r} ({dtype} {shape}) needs {bits / 8:g} bytes "
                f"but its data_offsets span {end - begin}",
            )
        tensors[name] = {"dtype": dtype, "shape": list(shape)}
        spans.append((begin, end, name))

    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            what = "overlaps another tensor" if begin < position else "leaves a gap before it"
            raise _corrupt(
                path, f"tensor {name!r} data {what} (offset {begin}, expected {position})"
            )
        position = end
    if position != data_size:
        raise _corrupt(path, f"tensors cover {position} bytes but the data section is {data_size}")
    return tensors


def linear_shapes_from_model_dir(model_dir: Path) -> dict[str, tuple[int, int]]:
    """Module path -> weight shape ``(out, in)`` of every 2-D ``<module>.weight`` in a HF model dir.

    Reads the headers of every ``*.safetensors`` file directly in ``model_dir``. That covers the
    linear layers, ``model.embed_tokens`` (``(num_embeddings, dim)``) and an untied ``lm_head``.
    When the checkpoint has no ``lm_head.weight`` (tied embeddings) but has
    ``model.embed_tokens.weight``, ``lm_head`` is reported with the embedding's shape unless
    ``config.json`` says ``"tie_word_embeddings": false``.
    """
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise InvalidRequest(
            f"{model_dir} has no *.safetensors weights", param="path", code="invalid_model_dir"
        )
    shapes: dict[str, tuple[int, int]] = {}
    for file in files:
        for name, info in read_safetensors_header(file).items():
            shape = info["shape"]
            if name.endswith(".weight") and len(shape) == 2:
                shapes[name[: -len(".weight")]] = (int(shape[0]), int(shape[1]))
    if "lm_head" not in shapes and "model.embed_tokens" in shapes and _ties_embeddings(model_dir):
        shapes["lm_head"] = shapes["model.embed_tokens"]
    return dict(sorted(shapes.items()))


def _ties_embeddings(model_dir: Path) -> bool:
    config_file = model_dir / "config.json"
    try:
        if config_file.stat().st_size > 10 * 2**20:
            return True
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    return not (isinstance(config, dict) and config.get("tie_word_embeddings") is False)


# --------------------------------------------------------------------------- LoRA weights

_WEIGHTS = "adapter_model.safetensors"
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
    raise Unprocessable(
        f"adapter was trained on base model {name!r}, not on {base_id!r} "
        f"(accepted names: {', '.join(sorted(accepted))})",
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
