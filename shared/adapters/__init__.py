"""PEFT LoRA adapters: everything that decides whether an adapter may be stored or served.

One package, used by the registry (before anything is stored), by inference replicas (before
an adapter reaches vLLM) and by training (packing the result):

* :mod:`.archive`: the API callers import: ``validate_archive``, ``inspect_adapter_dir``,
  ``pack_adapter_dir``, ``BaseModelSpec``, ``AdapterInfo``, ``ArchiveLimits``.
* :mod:`.extract`: safe, bounded extraction of the ``.tar.gz`` (``safe_extract``).
* :mod:`.checks`: the adapter config and weights header against a base's module shapes, and
  the engine's last look at an adapter directory.
* :mod:`.safetensors_header`: bounded safetensors header parsing and a base's linear shapes.
"""
