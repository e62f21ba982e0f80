"""Where preparation keeps the examples it kept until their split is known.

The split of a training row depends on every row (each label sends ``round(n * fraction)``
rows to validation), so rows are written once as they are read and routed in a second pass.
:class:`FileSpill` keeps them in an unlinked temp file sealed with a key that exists only in
this process (a crash leaves nothing readable; tenant text never sits on disk in clear);
:class:`ListSpill` keeps them in memory, for callers that want lists anyway.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from services.training.data.example import Example
from shared.crypto import DataCipher, SealingWriter, reader_over


class RowSpill(Protocol):
    def append(self, example: Example) -> None: ...

    def __iter__(self) -> Iterator[Example]: ...

    def close(self) -> None: ...


class ListSpill:
    def __init__(self) -> None:
        self._rows: list[Example] = []

    def append(self, example: Example) -> None:
        self._rows.append(example)

    def __iter__(self) -> Iterator[Example]:
        return iter(self._rows)

    def close(self) -> None:
        self._rows = []


class FileSpill:
    """Examples in an anonymous, encrypted temp file in ``directory``; read back once."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(prefix=".tmp-spill-", dir=directory)
        os.unlink(name)  # nothing to sweep after a crash
        self._fh = os.fdopen(fd, "w+b")
        self._cipher = DataCipher([os.urandom(32)])
        self._writer: SealingWriter | None = self._cipher.sealing_writer(self._fh)

    def append(self, example: Example) -> None:
        assert self._writer is not None, "a spill is written before it is read"
        row = [example.line, example.prompt, example.completion, example.label, example.messages]
        self._writer.write(json.dumps(row).encode() + b"\n")  # ASCII: lone surrogates too

    def __iter__(self) -> Iterator[Example]:
        if self._writer is not None:
            self._writer.finish()
            self._writer = None
        self._fh.seek(0)
        for raw in reader_over(self._cipher.open_stream(self._fh)):
            line, prompt, completion, label, messages = json.loads(raw)
            yield Example(line, prompt, completion, label, messages)

    def close(self) -> None:
        self._fh.close()
