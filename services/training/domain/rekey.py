"""Reseal the training store's blobs under the current key, bound to their tenant and key.

Key rotation and the upgrade of blobs sealed before the (tenant, key) binding (``TFE1``,
``shared.crypto``) both need each blob's tenant, which only the database knows, so the
generic ``python -m shared.crypto rotate`` (files with no context) cannot do it for this store.

    TUNEFLEET_DATA_KEYS=NEW,OLD python -m services.training.domain.rekey [--old-keys OLD]

reads the service's settings (database, data directory), reseals every file and dataset split
that needs it with the first key of ``TUNEFLEET_DATA_KEYS`` and reports how many changed; a
rerun resumes (current blobs are skipped). ``--old-keys``: the ring the blobs are sealed with
now when it is not the configured one (default: the configured ring, which decrypts with any
of its keys); ``--plaintext`` when encryption is being turned on.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from services.training.domain.erasure_scan import all_datasets, all_files
from services.training.domain.files import SPLITS, dataset_key, file_key
from services.training.storage.files import BlobStore, Cipher
from shared.db import Database


def rekey_store(db: Database, store: BlobStore, old: Cipher | None) -> tuple[int, int]:
    """Reseal what needs it; returns (changed, blobs looked at)."""
    changed = seen = 0
    for file_id, tenant in all_files(db):
        seen += 1
        changed += store.rewrap(file_key(file_id), tenant=tenant, old=old)
    for ds_id, tenant, *_ in all_datasets(db):
        for split in SPLITS:
            seen += 1
            changed += store.rewrap(dataset_key(ds_id, split), tenant=tenant, old=old)
    return changed, seen


def main(argv: Sequence[str] | None = None) -> int:
    from services.training.settings import TrainingSettings
    from shared.crypto import DataCipher, DecryptionError
    from shared.errors import InvalidRequest

    parser = argparse.ArgumentParser(prog="python -m services.training.domain.rekey")
    parser.add_argument("--old-keys", default=None, help="ring the blobs are sealed with now")
    parser.add_argument("--plaintext", action="store_true", help="the blobs are not encrypted")
    args = parser.parse_args(argv)
    settings = TrainingSettings()
    try:
        new = DataCipher.from_settings()
        if new is None:
            raise InvalidRequest("TUNEFLEET_DATA_KEYS is not set: nothing to seal with")
        old = None if args.plaintext else DataCipher.from_settings(args.old_keys) or new
        db = Database(settings.db_url())
        try:
            changed, seen = rekey_store(db, BlobStore(settings.data_root() / "blobs", new), old)
        finally:
            db.dispose()
    except (InvalidRequest, DecryptionError) as exc:
        print(f"rekey failed: {exc.message}", file=sys.stderr)
        return 2
    print(f"resealed {changed} of {seen} blobs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
