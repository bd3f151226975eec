"""The MLIR collector's output: ``programs.jsonl.gz``, one gzip member per program record, each appended
durably; a truncated last member (a killed run) or a repeated key is dropped on recovery."""

from __future__ import annotations

import gzip
import json
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.collect.storage import ENVIRONMENT_FILE, atomic_write, write_durably

__all__ = ["ENVIRONMENT_FILE", "PROGRAMS", "RecordWriter", "read_records", "recover"]

log = logging.getLogger(__name__)

PROGRAMS = "programs.jsonl.gz"


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record of a ``programs.jsonl.gz`` (a truncated last member is ignored)."""
    for _, record in _members(path.read_bytes() if path.exists() else b""):
        yield record


def _members(raw: bytes) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(member bytes, record) for each complete, parseable gzip member, stopping at the first bad one."""
    pos = 0
    while pos < len(raw):
        d = zlib.decompressobj(wbits=31)
        try:
            data = d.decompress(raw[pos:])
        except zlib.error:
            return
        if not d.eof:
            return
        end = len(raw) - len(d.unused_data)
        try:
            record = json.loads(data)
        except ValueError:
            return
        if not isinstance(record, dict) or not record.get("key"):
            return
        yield raw[pos:end], record
        pos = end


def recover(path: Path) -> set[str]:
    """Keys already in ``path``, after dropping a truncated tail, unreadable members and repeated keys
    (the file is rewritten atomically when anything was dropped)."""
    raw = path.read_bytes() if path.exists() else b""
    kept: list[bytes] = []
    keys: set[str] = set()
    duplicates = 0
    for member, record in _members(raw):
        if record["key"] in keys:
            duplicates += 1
            continue
        keys.add(record["key"])
        kept.append(member)
    good = sum(len(m) for m in kept)
    if good != len(raw) or duplicates or not path.exists():
        if path.exists():
            log.warning(
                "%s: repairing: dropping %d bytes of unreadable tail and %d duplicated records; keeping %d",
                path,
                len(raw) - good,
                duplicates,
                len(keys),
            )
        atomic_write(path, b"".join(kept))
    return keys


class RecordWriter:
    """Appends each record as its own gzip member with one ``write`` followed by ``fsync``."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def append(self, record: dict[str, Any]) -> None:
        write_durably(
            self._fd, gzip.compress((json.dumps(record, separators=(",", ":")) + "\n").encode(), mtime=0)
        )

    def close(self) -> None:
        os.close(self._fd)
