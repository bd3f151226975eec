"""What every collector's output directory relies on: one collector at a time, durable records, repair.

An exclusive ``flock`` on ``.collect.lock`` makes a second collector on the same directory refuse instead
of interleaving records. Each record is appended with a single ``write`` and ``fsync``-ed before the next
measurement starts, so a killed run loses at most the measurement in flight; whole files (``device.json``,
``environment.json``, a repaired ``measurements.csv``) are replaced atomically. The GEMM collectors'
``measurements.csv`` is repaired on restart: a partially written last line, malformed lines and repeated
keys are dropped, and the keys left are the ones a rerun skips.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.core.devices import DeviceSpec

log = logging.getLogger(__name__)

MEASUREMENTS = "measurements.csv"
DEVICE_FILE = "device.json"
ENVIRONMENT_FILE = "environment.json"
LOCK_FILE = ".collect.lock"
# Measured columns that may be blank (not measured), but when present must be finite and >= 0.
OPTIONAL_MEASURES = ("power_w", "energy_j")


class CollectError(RuntimeError):
    """The collection cannot proceed; the message says why and what to do."""


@contextmanager
def exclusive_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``out/.collect.lock`` (released when the process dies)."""
    lock_path = out / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        by = f" by pid {holder}" if holder.isdigit() else ""
        raise CollectError(
            f"another collector is already writing to {out} (lock {lock_path} is held{by}); "
            "wait for it to finish or pass a different --out"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_durably(fd: int, data: bytes) -> None:
    """Write all of ``data`` to an append-mode descriptor and fsync it before returning, so a record is
    either wholly on disk or (after a kill mid-write) a torn tail the resuming reader discards."""
    while data:
        written = os.write(fd, data)
        data = data[written:]
    os.fsync(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8): a reader sees the old file or the new one, whole."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _valid_row(fields: list[str], columns: tuple[str, ...]) -> bool:
    if len(fields) != len(columns) or not fields[0]:
        return False
    row = dict(zip(columns, fields, strict=True))
    try:
        runtime = float(row["runtime_ms"])
        optional = [float(row[c]) for c in OPTIONAL_MEASURES if row.get(c)]
    except ValueError:
        return False
    return math.isfinite(runtime) and runtime > 0 and all(math.isfinite(v) and v >= 0 for v in optional)


def recover_measurements(path: Path, columns: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Rows already in ``path`` (a collector's CSV of ``columns``, the key first) by key, after repairing
    the file: a missing or half-written header is written, and a partially written last line, malformed
    lines and repeated keys are dropped (the file is rewritten atomically). A header with other columns
    is refused rather than overwritten."""
    header = ",".join(columns)
    raw = path.read_bytes() if path.exists() else b""
    lines = raw.decode("utf-8", errors="replace").split("\n")
    partial = lines.pop()  # the text after the last newline: "" unless a write was cut short
    if not lines:  # empty file or a header cut short: nothing to keep
        if partial:
            log.warning("%s: dropping a partially written header", path)
        atomic_write(path, header + "\n")
        return {}
    if lines[0] != header:
        raise CollectError(
            f"{path} has columns {lines[0][:200]!r}, not the collector's {header!r}; "
            "move it away or pass a different --out"
        )
    rows: dict[str, dict[str, str]] = {}
    kept: list[str] = []
    malformed = duplicates = 0
    for line in lines[1:]:
        fields = next(csv.reader([line]), [])
        if not _valid_row(fields, columns):
            malformed += 1
        elif fields[0] in rows:
            duplicates += 1
        else:
            rows[fields[0]] = dict(zip(columns, fields, strict=True))
            kept.append(line)
    if partial or malformed or duplicates:
        log.warning(
            "%s: repairing: dropping %s%d malformed and %d duplicated lines; keeping %d rows",
            path,
            "a partially written last line, " if partial else "",
            malformed,
            duplicates,
            len(rows),
        )
        atomic_write(path, "\n".join([header, *kept]) + "\n")
    return rows


@contextmanager
def locked_measurements(out: Path, columns: tuple[str, ...]) -> Iterator[dict[str, dict[str, str]]]:
    """Under ``out``'s lock (the directory created), the rows already in its ``measurements.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out):
        yield recover_measurements(out / MEASUREMENTS, columns)


def check_device(out: Path, existing: dict[str, dict[str, str]], device: str, this: str) -> None:
    """Refuse to add ``device``'s rows (``this`` names it: "this machine") to another device's."""
    recorded = {row["device"] for row in existing.values()}
    if recorded and recorded != {device}:
        raise CollectError(
            f"{out / MEASUREMENTS} holds measurements of {sorted(recorded)}, but {this} is {device!r}; "
            "pass a different --out"
        )


class RowWriter:
    """Appends CSV rows of ``columns``, each with one ``write`` followed by ``fsync``."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._columns = columns

    def append(self, row: dict[str, Any]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow([row[c] for c in self._columns])
        write_durably(self._fd, buffer.getvalue().encode("utf-8"))

    def close(self) -> None:
        os.close(self._fd)


def record_run(
    out: Path,
    device: DeviceSpec,
    env: dict[str, Any],
    compared: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """Write this run's ``device.json`` and ``environment.json``, after warning about each value
    ``compared`` picks from an environment (library versions, the kernel) that differs from what the run
    before recorded, so rows of two setups do not mix in one directory unnoticed."""
    path = out / ENVIRONMENT_FILE
    try:
        previous = compared(json.loads(path.read_text()))
    except (OSError, ValueError):
        previous = {}
    now = compared(env)
    for name, before in previous.items():
        if before != (after := now.get(name)):
            log.warning(
                "%s: earlier rows were collected with %s=%s, this run has %s", path, name, before, after
            )
    atomic_write(out / DEVICE_FILE, json.dumps(device.model_dump(), indent=2) + "\n")
    atomic_write(path, json.dumps(env, indent=2) + "\n")
