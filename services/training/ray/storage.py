"""Where Ray Train keeps checkpoints and results: a path every node sees, or a URI.

``storage_path`` (setting ``TUNEFLEET_TRAINING_STORAGE_PATH``) is handed to Ray Train's
``RunConfig(storage_path=…)`` as is. On one machine the default, a local directory under
the training data dir, is enough; on a cluster it must be storage every node reads and
writes: a shared filesystem mounted at the same path on every node (NFS, a
``ReadWriteMany`` PVC) or an S3-compatible URI (``s3://bucket/prefix``; endpoint and
credentials from the usual ``AWS_*`` environment, ``AWS_ENDPOINT_URL`` for MinIO & co.).
Ray Train workers upload checkpoints there themselves (pyarrow filesystems); drivers read
them back with ``Checkpoint.as_directory()``, which downloads when the storage is remote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def is_uri(storage: str | Path) -> bool:
    """``s3://…``, ``gs://…``, ``file://…`` (a plain path is not)."""
    return "://" in str(storage)


def storage_root(storage: str | Path) -> str:
    """The storage as Ray wants it: a URI unchanged, a local path absolute and created."""
    if is_uri(storage):
        return str(storage).rstrip("/")
    path = Path(storage).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def join(storage: str | Path, *parts: str) -> str:
    """``storage/part/…`` for a path or a URI."""
    return "/".join([str(storage).rstrip("/"), *(p.strip("/") for p in parts)])


def write_text(target: str, text: str) -> None:
    """Write a small text file at a path or URI (parents created)."""
    if not is_uri(target):
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(target)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as out:
        out.write(text.encode("utf-8"))


def checkpoint_uri(checkpoint: Any) -> str:
    """A Ray ``Checkpoint``'s location as a path (local) or a URI (remote storage)."""
    fs = getattr(checkpoint, "filesystem", None)
    kind = getattr(fs, "type_name", "local")
    path = str(checkpoint.path)
    if kind in ("local", "") or is_uri(path):
        return path
    return f"{'gs' if kind == 'gcs' else kind}://{path}"
