"""Safetensors headers, and the linear-module shapes of a base model read from them.

``read_safetensors_header`` is a pure-Python, bounded parse (no tensor data is loaded).

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``) and the
tensor bytes. The checks here mirror what the Rust ``safetensors`` loader enforces (offsets
contiguous from 0, covering the data buffer exactly, byte sizes matching dtype x shape), so a
file accepted here will not make vLLM's loader fail on its structure.

The checks that compare an adapter's config and weights header with a base model's module
shapes live in ``shared.adapters.checks``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from shared.errors import InvalidRequest

__all__ = [
    "MAX_HEADER_BYTES",
    "linear_shapes_from_model_dir",
    "read_safetensors_header",
]

# The Rust loader accepts 100 MB; a LoRA adapter's header is a few KB (~150 bytes per tensor)
# and a big base model shard's well under 1 MB, so 16 MiB is generous and a crafted header
# cannot make every upload parse 100 MB of JSON.
MAX_HEADER_BYTES = 16 * 2**20

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


def read_safetensors_header(
    path: Path, *, max_header_bytes: int = MAX_HEADER_BYTES
) -> dict[str, dict[str, Any]]:
    """Parse and validate the header of ``path``; return ``{tensor: {"dtype", "shape"}}``.

    ``shape`` is a list of ints. ``__metadata__`` is validated (str -> str) but not returned.
    Raises ``InvalidRequest(code="corrupt_weights")`` for: a file shorter than 8 bytes, a header
    length above ``max_header_bytes`` (16 MiB) or beyond the file, a header that is not UTF-8
    JSON object, malformed entries, unknown dtypes, data offsets outside the data buffer,
    overlapping or non-contiguous offsets, or a byte size that does not match dtype x shape.
    """
    path = Path(path)
    with path.open("rb") as fh:
        file_size = path.stat().st_size
        if file_size < 8:
            raise _corrupt(path, f"file is {file_size} bytes, shorter than the header length")
        n = int.from_bytes(fh.read(8), "little")
        if n > max_header_bytes:
            raise _corrupt(path, f"header length {n} exceeds the {max_header_bytes}-byte limit")
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
