"""Full model directories as registry artifacts: pack, validate, unpack.

A merged model (``hybrid``/``full``/``transfer`` job result) travels as a deterministic
``.tar.gz`` of its Hugging Face files, like an adapter archive: the training service packs and
uploads it, the registry validates and stores it by sha256, each inference replica downloads,
verifies and unpacks it into a directory of its own. Nobody reads another host's path.

Validation is the adapter archive's (``shared.adapters.extract.safe_extract``: member by member,
regular files only, bounded sizes) with the model's file names, then each ``*.safetensors``
header is parsed with the same bounds as an adapter's and ``config.json`` must be a JSON
object. Errors name the member or the file (``param``), never a server path.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from shared.adapters.archive import pack_adapter_dir
from shared.adapters.extract import ArchiveLimits, MemberPolicy, safe_extract
from shared.adapters.safetensors_header import MAX_HEADER_BYTES, read_safetensors_header
from shared.errors import InvalidRequest
from shared.jsonbody import loads_untrusted

__all__ = [
    "MODEL_FILES",
    "MODEL_MEMBERS",
    "PACKED_NAME",
    "is_model_file",
    "pack_model_dir",
    "unpack_model_archive",
]

# What serving a Hugging Face causal LM needs; pickles (.bin, .pt) are never accepted.
MODEL_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.model",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
        "chat_template.jinja",
        "model.safetensors.index.json",
        "manifest.json",
        "README.md",
    }
)
_WEIGHTS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,120}\.safetensors")
MAX_CONFIG_BYTES = 1 * 2**20


def is_model_file(name: str) -> bool:
    return name in MODEL_FILES or _WEIGHTS.fullmatch(name) is not None


MODEL_MEMBERS = MemberPolicy(
    allows=is_model_file,
    expected="a model archive may only contain *.safetensors weights and "
    + ", ".join(sorted(MODEL_FILES)),
)


# The archive a job runner leaves in a merged model's directory (packed by a Ray task), which
# the training service uploads as it is instead of packing the model itself.
PACKED_NAME = "model.tar.gz"


def pack_model_dir(model_dir: Path, out: Path) -> Path:
    """Deterministic ``.tar.gz`` of the model files in ``model_dir`` (others are left out:
    a trainer's extra files are not part of the served model). Returns ``out``."""
    model_dir = Path(model_dir)
    with tempfile.TemporaryDirectory(prefix="pack-", dir=Path(out).parent) as tmp:
        for p in sorted(model_dir.iterdir()):
            if p.is_file() and not p.is_symlink() and is_model_file(p.name):
                (Path(tmp) / p.name).hardlink_to(p)
        return pack_adapter_dir(Path(tmp), out)


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_model_archive")


def unpack_model_archive(
    archive: Path,
    dest: Path,
    limits: ArchiveLimits,
    *,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> list[str]:
    """Extract and check a model archive into ``dest`` (created, must be empty); returns the
    file names. On any failure ``dest``'s content is removed and the error raised:
    ``InvalidRequest``/``PayloadTooLarge`` with ``param`` naming the archive member or file."""
    dest = Path(dest)
    try:
        names = safe_extract(archive, dest, limits, MODEL_MEMBERS)
        if "config.json" not in names:
            raise _invalid("model archive has no config.json", "config.json")
        config = dest / "config.json"
        if config.stat().st_size > MAX_CONFIG_BYTES:
            raise _invalid(f"config.json is larger than {MAX_CONFIG_BYTES} bytes", "config.json")
        try:
            parsed = loads_untrusted(config.read_bytes(), what="config.json")
        except InvalidRequest as exc:
            raise _invalid(exc.message, "config.json") from None
        if not isinstance(parsed, dict):
            raise _invalid("config.json is not a JSON object", "config.json")
        weights = [n for n in names if n.endswith(".safetensors")]
        if not weights:
            raise _invalid("model archive has no *.safetensors weights", "archive")
        for name in weights:
            read_safetensors_header(dest / name, max_header_bytes=max_header_bytes)
        return names
    except BaseException:
        for child in dest.iterdir() if dest.is_dir() else ():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        raise
