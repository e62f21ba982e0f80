"""PEFT LoRA adapters: everything that decides whether an adapter may be stored or served.

One package, used by the registry (before anything is stored), by inference replicas (before
an adapter reaches vLLM) and by training (packing the result):

* :mod:`.archive`: the public API: ``validate_archive``, ``inspect_adapter_dir``,
  ``pack_adapter_dir``, ``BaseModelSpec``, ``AdapterInfo``.
* :mod:`.extract`: safe, bounded extraction of the ``.tar.gz`` (``safe_extract``).
* :mod:`.checks`: the adapter config and weights header against a base's module shapes, and
  the engine's last look at an adapter directory.
* :mod:`.safetensors_header`: bounded safetensors header parsing and a base's linear shapes.
"""

from shared.adapters.archive import (
    ALLOWED_FILES,
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

__all__ = [
    "ALLOWED_FILES",
    "AdapterInfo",
    "ArchiveLimits",
    "BaseModelSpec",
    "inspect_adapter_dir",
    "linear_shapes_from_model_dir",
    "pack_adapter_dir",
    "read_safetensors_header",
    "safe_extract",
    "validate_archive",
]
