"""shared.adapters.archive: safe extraction and strict validation of PEFT LoRA adapter archives.

Real adapters are made with ``peft`` on tiny random Llama models saved to temporary dirs;
malicious archives are crafted with ``tarfile``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.archive import (
    AdapterInfo,
    ArchiveLimits,
    BaseModelSpec,
    inspect_adapter_dir,
    linear_shapes_from_model_dir,
    pack_adapter_dir,
    read_safetensors_header,
    safe_extract,
    validate_archive,
)
from shared.errors import InvalidRequest, PayloadTooLarge, TunefleetError, Unprocessable

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 300,
}
LORA_FILES = ("README.md", "adapter_config.json", "adapter_model.safetensors")


# --------------------------------------------------------------------------- fixtures


def _save_base(path: Path, **overrides: Any) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**TINY, **overrides}))
    model.save_pretrained(path, safe_serialization=True)
    return path


def _save_adapter(base_dir: Path, out: Path, **lora: Any) -> Path:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model = transformers.LlamaForCausalLM.from_pretrained(base_dir)
    config = peft.LoraConfig(
        task_type="CAUSAL_LM",
        **{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], **lora},
    )
    peft.get_peft_model(model, config).save_pretrained(out)
    return out


@dataclass
class Env:
    base_dir: Path
    spec: BaseModelSpec
    adapter: Path  # r=8 on q_proj, v_proj
    root: Path

    def made(self, name: str, base_dir: Path | None = None, **lora: Any) -> Path:
        out = self.root / name
        return out if out.exists() else _save_adapter(base_dir or self.base_dir, out, **lora)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("archives")
    base_dir = _save_base(root / "models" / "tiny-llama")
    spec = BaseModelSpec(
        id="tiny-llama",
        names=(str(base_dir),),
        linear_shapes=linear_shapes_from_model_dir(base_dir),
    )
    return Env(base_dir, spec, _save_adapter(base_dir, root / "adapter-r8"), root)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "dest"
    d.mkdir()
    return d


@pytest.fixture
def work(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def _member(
    name: str, data: bytes | None = None, *, kind: bytes = tarfile.REGTYPE, **attrs: Any
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    if data is not None:
        info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], **kw: Any) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT, **kw) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _config(adapter: Path) -> bytes:
    return (adapter / "adapter_config.json").read_bytes()


def _variant(
    src: Path,
    tmp_path: Path,
    *,
    config: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    raw_config: bytes | None = None,
    weights: Callable[[Path], None] | None = None,
) -> Path:
    """Copy an adapter dir, alter it, and pack it."""
    d = tmp_path / "variant"
    shutil.copytree(src, d)
    if config is not None:
        cfg = json.loads(_config(d))
        cfg.update(config)
        (d / "adapter_config.json").write_text(json.dumps(cfg))
    if raw_config is not None:
        (d / "adapter_config.json").write_bytes(raw_config)
    if weights is not None:
        weights(d / "adapter_model.safetensors")
    for name in drop:
        (d / name).unlink()
    return pack_adapter_dir(d, tmp_path / "variant.tar.gz")


def _rejected(exc: pytest.ExceptionInfo[TunefleetError], cls: type, code: str) -> str:
    assert type(exc.value) is cls, exc.value
    assert exc.value.code == code, exc.value.message
    return exc.value.message


def _empty(d: Path) -> bool:
    return list(d.iterdir()) == []


def _extract_rejects(
    archive: Path, dest: Path, cls: type, code: str, limits: ArchiveLimits = ArchiveLimits()
) -> str:
    with pytest.raises(TunefleetError) as exc:
        safe_extract(archive, dest, limits)
    assert _empty(dest)
    return _rejected(exc, cls, code)


def _validate_rejects(
    env: Env, archive: Path, work: Path, cls: type, code: str, max_rank: int = 16
) -> str:
    with pytest.raises(TunefleetError) as exc:
        validate_archive(archive, work, env.spec, max_rank=max_rank)
    assert _empty(work)
    return _rejected(exc, cls, code)


# --------------------------------------------------------------------------- happy paths


def test_base_shapes_from_model_dir(env: Env) -> None:
    shapes = env.spec.linear_shapes
    assert shapes["model.layers.0.self_attn.q_proj"] == (64, 64)
    assert shapes["model.layers.1.self_attn.k_proj"] == (32, 64)  # 2 kv heads x head_dim 16
    assert shapes["model.layers.0.mlp.down_proj"] == (64, 128)
    assert shapes["model.embed_tokens"] == (300, 64)
    assert shapes["lm_head"] == (300, 64)
    assert not any("norm" in k for k in shapes)


def test_read_safetensors_header(env: Env) -> None:
    header = read_safetensors_header(env.adapter / "adapter_model.safetensors")
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert header[name] == {"dtype": "F32", "shape": [8, 64]}
    assert len(header) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)


def test_valid_archive_passes(env: Env, tmp_path: Path, work: Path) -> None:
    archive = pack_adapter_dir(env.adapter, tmp_path / "a.tar.gz")
    adapter_dir, info = validate_archive(archive, work, env.spec, max_rank=16)
    assert adapter_dir.parent == work
    assert sorted(p.name for p in adapter_dir.iterdir()) == list(LORA_FILES)
    assert info == AdapterInfo(
        peft_type="LORA",
        rank=8,
        alpha=16.0,
        target_modules=("q_proj", "v_proj"),
        base_model_name=str(env.base_dir),
        files=LORA_FILES,
        weights_bytes=(env.adapter / "adapter_model.safetensors").stat().st_size,
        config=json.loads(_config(env.adapter)),
    )


def test_single_top_level_directory_is_stripped(env: Env, tmp_path: Path, dest: Path) -> None:
    members = [_member("my-adapter", kind=tarfile.DIRTYPE)]
    members += [_member(f"my-adapter/{n}", (env.adapter / n).read_bytes()) for n in LORA_FILES]
    archive = _tar(tmp_path / "wrapped.tar.gz", members)
    assert safe_extract(archive, dest) == list(LORA_FILES)
    assert inspect_adapter_dir(dest, env.spec, max_rank=8).rank == 8


def test_dot_prefixed_members_are_accepted(env: Env, tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "dot.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:  # like `tar -C adapter -czf dot.tar.gz .`
        tf.add(env.adapter, arcname=".")
    assert safe_extract(archive, dest) == list(LORA_FILES)


def test_regex_target_modules_and_basename_match(env: Env, tmp_path: Path, work: Path) -> None:
    archive = _variant(
        env.adapter,
        tmp_path,
        config={
            "target_modules": r".*\.self_attn\.(q_proj|v_proj)",
            "base_model_name_or_path": "/elsewhere/models/tiny-llama/",
        },
    )
    _, info = validate_archive(archive, work, env.spec, max_rank=8)
    assert info.target_modules == ("q_proj", "v_proj")
    assert info.base_model_name == "/elsewhere/models/tiny-llama/"


def test_pack_is_deterministic(env: Env, tmp_path: Path) -> None:
    first = pack_adapter_dir(env.adapter, tmp_path / "one.tar.gz")
    copy = shutil.copytree(env.adapter, tmp_path / "copy")
    for p in copy.iterdir():
        os.utime(p, (1_000_000, 1_000_000))
    second = pack_adapter_dir(copy, tmp_path / "two.tar.gz")
    sha = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (first, second)]
    assert sha[0] == sha[1]
    assert first.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime
    with tarfile.open(first) as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == list(LORA_FILES)
    assert {(m.mtime, m.uid, m.gid, m.mode, m.uname) for m in members} == {(0, 0, 0, 0o644, "")}


# --------------------------------------------------------------------------- unsafe archives


def test_rejects_absolute_path(env: Env, tmp_path: Path, dest: Path) -> None:
    archive = _tar(
        tmp_path / "x.tar.gz",
        [_member("adapter_config.json", _config(env.adapter)), _member("/etc/README.md", b"x")],
    )
    assert "/etc/README.md" in _extract_rejects(
        archive, dest, InvalidRequest, "unsafe_archive_path"
    )


def test_rejects_dotdot(env: Env, tmp_path: Path, dest: Path) -> None:
    archive = _tar(
        tmp_path / "x.tar.gz",
        [_member("adapter_config.json", _config(env.adapter)), _member("../README.md", b"x")],
    )
    assert "../README.md" in _extract_rejects(archive, dest, InvalidRequest, "unsafe_archive_path")


@pytest.mark.parametrize("name", ["a\\README.md", "C:README.md", "x\x01/README.md"])
def test_rejects_odd_paths(tmp_path: Path, dest: Path, name: str) -> None:
    archive = _tar(tmp_path / "x.tar.gz", [_member(name, b"x")])
    _extract_rejects(archive, dest, InvalidRequest, "unsafe_archive_path")


def test_rejects_long_name(env: Env, tmp_path: Path, dest: Path) -> None:
    archive = pack_adapter_dir(env.adapter, tmp_path / "a.tar.gz")
    msg = _extract_rejects(
        archive, dest, InvalidRequest, "unsafe_archive_path", ArchiveLimits(max_name_length=10)
    )
    assert "longer than 10" in msg


@pytest.mark.parametrize(
    ("kind", "attrs", "word"),
    [
        pytest.param(tarfile.SYMTYPE, {"linkname": "/etc/passwd"}, "symlink", id="symlink"),
        pytest.param(
            tarfile.LNKTYPE, {"linkname": "adapter_config.json"}, "hardlink", id="hardlink"
        ),
        pytest.param(tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3}, "character device", id="chr"),
        pytest.param(tarfile.BLKTYPE, {"devmajor": 8, "devminor": 0}, "block device", id="blk"),
        pytest.param(tarfile.FIFOTYPE, {}, "fifo", id="fifo"),
    ],
)
def test_rejects_special_members(
    env: Env, tmp_path: Path, dest: Path, kind: bytes, attrs: dict[str, Any], word: str
) -> None:
    archive = _tar(
        tmp_path / "x.tar.gz",
        [
            _member("adapter_config.json", _config(env.adapter)),
            _member("README.md", kind=kind, **attrs),
        ],
    )
    msg = _extract_rejects(archive, dest, InvalidRequest, "unsafe_archive_member")
    assert "README.md" in msg and word in msg


def test_rejects_duplicate_members(env: Env, tmp_path: Path, dest: Path) -> None:
    cfg = _config(env.adapter)
    archive = _tar(
        tmp_path / "x.tar.gz",
        [_member("adapter_config.json", cfg), _member("./adapter_config.json", cfg)],
    )
    assert "more than once" in _extract_rejects(
        archive, dest, InvalidRequest, "unsafe_archive_member"
    )


def test_rejects_too_many_members(env: Env, tmp_path: Path, dest: Path) -> None:
    archive = pack_adapter_dir(env.adapter, tmp_path / "a.tar.gz")
    _extract_rejects(
        archive, dest, PayloadTooLarge, "archive_too_many_members", ArchiveLimits(max_members=2)
    )


def test_rejects_gzip_bomb(env: Env, tmp_path: Path, dest: Path) -> None:
    archive = _tar(
        tmp_path / "bomb.tar.gz",
        [
            _member("adapter_config.json", _config(env.adapter)),
            _member("README.md", bytes(50 * 2**20)),
        ],
        compresslevel=1,
    )
    assert archive.stat().st_size < 2**20
    _extract_rejects(
        archive,
        dest,
        PayloadTooLarge,
        "archive_too_large",
        ArchiveLimits(max_uncompressed_bytes=2**20),
    )


def test_rejects_oversized_metadata_header(tmp_path: Path, dest: Path) -> None:
    info, data = _member("README.md", b"x")
    info.pax_headers = {"comment": "x" * (5 * 2**20)}  # read into memory by tarfile
    archive = _tar(tmp_path / "pax.tar.gz", [(info, data)], compresslevel=1)
    _extract_rejects(
        archive,
        dest,
        PayloadTooLarge,
        "archive_too_large",
        ArchiveLimits(max_uncompressed_bytes=2**20),
    )


def test_rejects_too_big_archive(env: Env, tmp_path: Path, dest: Path) -> None:
    archive = pack_adapter_dir(env.adapter, tmp_path / "a.tar.gz")
    _extract_rejects(
        archive, dest, PayloadTooLarge, "archive_too_large", ArchiveLimits(max_archive_bytes=1024)
    )


def test_rejects_garbage(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(os.urandom(4096))
    _extract_rejects(archive, dest, InvalidRequest, "invalid_archive")


def test_rejects_uncompressed_tar(env: Env, tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "x.tar.gz"
    with tarfile.open(archive, "w") as tf:
        tf.add(env.adapter / "adapter_config.json", arcname="adapter_config.json")
    assert "gzip" in _extract_rejects(archive, dest, InvalidRequest, "invalid_archive")


def test_rejects_truncated_gzip(env: Env, tmp_path: Path, dest: Path) -> None:
    whole = pack_adapter_dir(env.adapter, tmp_path / "a.tar.gz").read_bytes()
    for cut in (len(whole) // 2, len(whole) - 4):  # mid-data, and inside the gzip trailer
        archive = tmp_path / f"cut{cut}.tar.gz"
        archive.write_bytes(whole[:cut])
        _extract_rejects(archive, dest, InvalidRequest, "invalid_archive")


def test_rejects_truncated_tar_inside_valid_gzip(env: Env, tmp_path: Path, dest: Path) -> None:
    packed = pack_adapter_dir(env.adapter, tmp_path / "a.tar.gz")
    with tarfile.open(packed) as tf:
        second, last = tf.getmembers()[1], tf.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    raw = gzip.decompress(packed.read_bytes())
    # inside a later header (tarfile alone would stop quietly there), inside member data,
    # and without the end-of-archive blocks
    for cut in (second.offset + 100, second.offset_data + 10, end):
        archive = tmp_path / f"t{cut}.tar.gz"
        archive.write_bytes(gzip.compress(raw[:cut]))
        _extract_rejects(archive, dest, InvalidRequest, "invalid_archive")


def test_rejects_empty_archive(tmp_path: Path, dest: Path) -> None:
    _extract_rejects(_tar(tmp_path / "e.tar.gz", []), dest, InvalidRequest, "invalid_archive")


def test_rejects_nested_directory(env: Env, tmp_path: Path, dest: Path) -> None:
    archive = _tar(
        tmp_path / "x.tar.gz", [_member("a/b/adapter_config.json", _config(env.adapter))]
    )
    _extract_rejects(archive, dest, InvalidRequest, "unsafe_archive_path")


def test_rejects_mixed_layout(env: Env, tmp_path: Path, dest: Path) -> None:
    archive = _tar(
        tmp_path / "x.tar.gz",
        [_member("adapter_config.json", _config(env.adapter)), _member("wrap/README.md", b"x")],
    )
    _extract_rejects(archive, dest, InvalidRequest, "unsafe_archive_path")


def test_rejects_pickle_weights(env: Env, tmp_path: Path, dest: Path) -> None:
    archive = _tar(
        tmp_path / "x.tar.gz",
        [
            _member("adapter_config.json", _config(env.adapter)),
            _member("adapter_model.bin", b"\x80\x04pickle"),
        ],
    )
    msg = _extract_rejects(archive, dest, InvalidRequest, "unexpected_archive_member")
    assert "adapter_model.bin" in msg and "only safetensors weights are accepted" in msg


def test_rejects_unexpected_file(tmp_path: Path, dest: Path) -> None:
    archive = _tar(tmp_path / "x.tar.gz", [_member("tokenizer.json", b"{}")])
    _extract_rejects(archive, dest, InvalidRequest, "unexpected_archive_member")


# --------------------------------------------------------------------------- bad adapters


def test_rejects_missing_config(env: Env, tmp_path: Path, work: Path) -> None:
    archive = _variant(env.adapter, tmp_path, drop=("adapter_config.json",))
    msg = _validate_rejects(env, archive, work, InvalidRequest, "invalid_adapter")
    assert "adapter_config.json" in msg


def test_rejects_missing_weights(env: Env, tmp_path: Path, work: Path) -> None:
    archive = _variant(env.adapter, tmp_path, drop=("adapter_model.safetensors",))
    msg = _validate_rejects(env, archive, work, InvalidRequest, "invalid_adapter")
    assert "adapter_model.safetensors" in msg


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'{"r": NaN}', b"\xff\xfe"])
def test_rejects_config_not_json_object(env: Env, tmp_path: Path, work: Path, raw: bytes) -> None:
    archive = _variant(env.adapter, tmp_path, raw_config=raw)
    with pytest.raises(InvalidRequest) as exc:
        validate_archive(archive, work, env.spec, max_rank=16)
    assert (exc.value.code, exc.value.param) == ("invalid_adapter", "adapter_config.json")
    assert _empty(work)


def test_rejects_rank_above_max(env: Env, tmp_path: Path, work: Path) -> None:
    archive = pack_adapter_dir(env.made("adapter-r32", r=32), tmp_path / "r32.tar.gz")
    msg = _validate_rejects(env, archive, work, Unprocessable, "adapter_rank_too_large")
    assert "32" in msg and "16" in msg


def test_rejects_rank_pattern_above_max(env: Env, tmp_path: Path, work: Path) -> None:
    archive = _variant(env.adapter, tmp_path, config={"rank_pattern": {"q_proj": 64}})
    _validate_rejects(env, archive, work, Unprocessable, "adapter_rank_too_large")


def test_rejects_bad_r(env: Env, tmp_path: Path, work: Path) -> None:
    archive = _variant(env.adapter, tmp_path, config={"r": "8"})
    with pytest.raises(InvalidRequest) as exc:
        validate_archive(archive, work, env.spec, max_rank=16)
    assert (exc.value.code, exc.value.param) == ("invalid_adapter", "r")


def test_rejects_modules_to_save(env: Env, tmp_path: Path, work: Path) -> None:
    archive = _variant(env.adapter, tmp_path, config={"modules_to_save": ["lm_head"]})
    msg = _validate_rejects(env, archive, work, Unprocessable, "modules_to_save_unsupported")
    assert "full model" in msg


def test_rejects_non_lora(env: Env, tmp_path: Path, work: Path) -> None:
    archive = _variant(env.adapter, tmp_path, config={"peft_type": "PREFIX_TUNING"})
    _validate_rejects(env, archive, work, Unprocessable, "unsupported_adapter_type")


def test_rejects_unknown_target_module(env: Env, tmp_path: Path, work: Path) -> None:
    archive = _variant(env.adapter, tmp_path, config={"target_modules": ["q_proj", "qkv_proj"]})
    msg = _validate_rejects(env, archive, work, Unprocessable, "unknown_target_modules")
    assert "qkv_proj" in msg


@pytest.mark.parametrize("regex", [r"(a+)+b", r"(.*\.)*q_proj", r"(q_proj|v_proj)+", r"(x)\1"])
def test_rejects_dangerous_regex(env: Env, tmp_path: Path, work: Path, regex: str) -> None:
    archive = _variant(env.adapter, tmp_path, config={"target_modules": regex})
    _validate_rejects(env, archive, work, InvalidRequest, "invalid_adapter")


def test_rejects_adapter_for_different_base(env: Env, tmp_path: Path, work: Path) -> None:
    # Same directory name as ours, so the name check passes and the shapes must catch it.
    other = _save_base(env.root / "elsewhere" / "tiny-llama", hidden_size=96)
    archive = pack_adapter_dir(env.made("adapter-96", base_dir=other), tmp_path / "96.tar.gz")
    msg = _validate_rejects(env, archive, work, Unprocessable, "base_model_mismatch")
    assert "[8, 96]" in msg and "[r, 64]" in msg


def test_rejects_base_name_mismatch(env: Env, tmp_path: Path, work: Path) -> None:
    archive = _variant(
        env.adapter, tmp_path, config={"base_model_name_or_path": "meta-llama/Llama-3.1-8B"}
    )
    msg = _validate_rejects(env, archive, work, Unprocessable, "base_model_mismatch")
    assert "meta-llama/Llama-3.1-8B" in msg and "tiny-llama" in msg


def _huge_header_length(p: Path) -> None:
    p.write_bytes((2**40).to_bytes(8, "little") + p.read_bytes()[8:])


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-100])


def _garble_json(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[8:12] = b"\xff\x00[["
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_huge_header_length, _truncate, _garble_json])
def test_rejects_corrupt_safetensors(
    env: Env, tmp_path: Path, work: Path, damage: Callable[[Path], None]
) -> None:
    archive = _variant(env.adapter, tmp_path, weights=damage)
    _validate_rejects(env, archive, work, InvalidRequest, "corrupt_weights")


def test_rejects_weights_without_tensors(env: Env, tmp_path: Path, work: Path) -> None:
    archive = _variant(
        env.adapter, tmp_path, weights=lambda p: p.write_bytes((2).to_bytes(8, "little") + b"{}")
    )
    assert "no tensors" in _validate_rejects(env, archive, work, InvalidRequest, "invalid_adapter")


def test_rejects_integer_weights(env: Env, tmp_path: Path, work: Path) -> None:
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")

    def as_int8(p: Path) -> None:
        tensors = st.load_file(p)
        st.save_file({k: v.to(torch.int8) for k, v in tensors.items()}, p)

    archive = _variant(env.adapter, tmp_path, weights=as_int8)
    _validate_rejects(env, archive, work, Unprocessable, "unsupported_adapter_dtype")


def test_rejects_dora(env: Env, tmp_path: Path, work: Path) -> None:
    dora = env.made("adapter-dora", use_dora=True)
    archive = pack_adapter_dir(dora, tmp_path / "dora.tar.gz")
    assert "DoRA" in _validate_rejects(
        env, archive, work, Unprocessable, "unsupported_adapter_type"
    )
    # Even when the config hides it, the magnitude vectors in the weights give it away.
    hidden = _variant(dora, tmp_path, config={"use_dora": False})
    assert "magnitude" in _validate_rejects(
        env, hidden, work, Unprocessable, "unsupported_adapter_type"
    )
