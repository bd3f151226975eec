"""``perfcost score`` on Dask: partitions of the input table stream through the workers into Parquet.

The served model version of the domain (GEMM by default) is chosen once, here, and every worker loads that
version once (its card's sha256 checked, then every model file's, as the service loads it). A partition is
read, scored chunk by chunk (memory stays bounded whatever the partition size) and written as one Parquet
file, under a temporary name renamed when complete; the output folder itself appears only when every
partition is written. Refused rows go to ``errors.csv`` with their row number (and CSV line) and reason; a
partition that still fails after its retries fails the run, and nothing is published.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client, as_completed
from tqdm import tqdm

from service.core.devices import DeviceCatalog
from service.core.model import CARD, ModelLoadError, TabularModel, file_sha256
from service.core.registry import Refusal, load_version, newest_usable
from service.domains import DOMAINS
from training.core.domain import TableScorer
from training.domains import trainings

log = logging.getLogger(__name__)
MANIFEST = "_perfcost_score.json"
ERRORS = "_errors.csv"
RETRIES = 2
# CSV partitions by bytes (Parquet by row group); ~16 MB is ~300k GEMM rows.
CSV_BLOCKSIZE = "16MB"


class ScoreError(RuntimeError):
    """The run cannot start or did not complete; the message says why (nothing was published)."""


@dataclass(frozen=True)
class ScoreJob:
    """What every partition task needs: small, so it ships with each task."""

    domain: str
    model_path: str
    card_sha256: str
    coverage: float
    device_dir: str | None
    out_dir: str
    chunk_rows: int
    columns: tuple[str, ...]


# Per worker process: the model version and catalog of the current job, loaded on its first partition.
_LOADED: dict[tuple[str, str, str | None], tuple[TabularModel, DeviceCatalog]] = {}


def worker_state(job: ScoreJob) -> tuple[TabularModel, DeviceCatalog]:
    key = (job.model_path, job.card_sha256, job.device_dir)
    if key not in _LOADED:
        path = Path(job.model_path)
        actual = file_sha256(path / CARD)
        if actual != job.card_sha256:
            raise ModelLoadError(
                f"{path}: card sha256 {actual[:12]}… is not the {job.card_sha256[:12]}… the run started with"
            )
        model = load_version(path, DOMAINS)
        catalog = DeviceCatalog.default(Path(job.device_dir) if job.device_dir else None)
        _LOADED.clear()
        _LOADED[key] = (model, catalog)
    return _LOADED[key]


def score_partition(part: pd.DataFrame, index: int, first_row: int, job: ScoreJob) -> dict[str, Any]:
    """Score one partition into ``part.NNNNN.parquet`` (and its refused rows into ``errors.NNNNN.csv``)."""
    model, catalog = worker_state(job)
    out = Path(job.out_dir)
    target = out / f"part.{index:05d}.parquet"
    partial = out / f".part.{index:05d}.{uuid.uuid4().hex}.partial"
    scorer = table_scorer(job.domain)
    schema = scorer.output_schema(list(job.columns))
    errors: list[tuple[int, str, str]] = []
    written = 0
    with pq.ParquetWriter(partial, schema) as writer:
        for start in range(0, max(len(part), 1), job.chunk_rows):
            chunk = scorer.score_chunk(
                part.iloc[start : start + job.chunk_rows], first_row + start, job.coverage, model, catalog
            )
            writer.write_table(chunk.table)
            errors += chunk.errors
            written += chunk.table.num_rows
    os.replace(partial, target)
    if errors:
        with (out / f"errors.{index:05d}.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows(errors)
    return {"index": index, "rows": len(part), "written": written, "refused": len(errors)}


STATS = pd.DataFrame({key: pd.Series(dtype="int64") for key in ("index", "rows", "written", "refused")})


def _score_in_place(
    part: pd.DataFrame, offsets: np.ndarray, job: ScoreJob, partition_info: dict[str, Any] | None = None
) -> pd.DataFrame:
    """:func:`score_partition` as a map over the input's partitions, so each is scored in the task that
    reads it, on the worker that holds it (a separate task would ship the rows between workers)."""
    assert partition_info is not None  # dask passes it to a function that takes it
    index = int(partition_info["number"])
    return pd.DataFrame([score_partition(part, index, int(offsets[index]), job)], columns=STATS.columns)


def table_scorer(domain: str) -> TableScorer:
    """How the domain scores a table; ScoreError naming the domains that can otherwise."""
    found = {name: t.table for name, t in trainings().items() if t.table is not None}
    if domain not in found:
        raise ScoreError(f"--domain {domain}: this domain cannot score tables; these can: {', '.join(found)}")
    return found[domain]


def read_table(path: Path, scorer: TableScorer) -> tuple[dd.DataFrame, bool]:
    """The input as a Dask dataframe, and whether it is CSV (whose rows have line numbers)."""
    if not path.exists():
        raise ScoreError(f"input {path} does not exist")
    is_csv = path.suffix.lower() in (".csv", ".gz") and ".csv" in path.name.lower()
    try:
        if is_csv:
            # Text, converted field by field as a JSON request's values would be (see training.score.table).
            frame = dd.read_csv(path, dtype=str, blocksize=None if path.suffix == ".gz" else CSV_BLOCKSIZE)
        else:
            frame = dd.read_parquet(path, split_row_groups=True)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ScoreError(f"input {path} cannot be read as {'CSV' if is_csv else 'Parquet'}: {exc}") from exc
    try:
        scorer.check_columns(list(frame.columns))
    except ValueError as exc:
        raise ScoreError(f"input {path}: {exc}") from exc
    return frame, is_csv


def _served_version(model_dir: Path, domain: str, version: str | None) -> Path:
    root = model_dir / domain
    label = domain.upper()
    if version is not None:
        path = root / version
        if not (path / CARD).is_file():
            raise ScoreError(f"--version {version}: no such {label} model in {root}")
        return path
    # The version the service would serve: the registry's rule (the newest that loads), not a copy of it.
    refused: list[Refusal] = []
    model = newest_usable(model_dir, domain, DOMAINS, refused)
    if model is None:
        why = "; ".join(f"{r.version}: {r.reason}" for r in refused)
        raise ScoreError(
            f"no {label} model that loads in {model_dir} ({why or f'run perfcost train {domain}'})"
        )
    return model.path


def _merge_errors(out: Path, is_csv: bool) -> int:
    """The partitions' refused rows as one ``errors.csv`` in row order; their count."""
    parts = sorted(out.glob("errors.*.csv"))
    count = 0
    with (out / ERRORS).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row", "line", "field", "reason"] if is_csv else ["row", "field", "reason"])
        for part in parts:
            with part.open(newline="") as src:
                for row, field, reason in csv.reader(src):
                    # Line 1 is the header: data row 0 is on line 2 (for files without quoted newlines).
                    writer.writerow([row, int(row) + 2, field, reason] if is_csv else [row, field, reason])
                    count += 1
            part.unlink()
    return count


def _run_partitions(client: Client, frame: dd.DataFrame, job: ScoreJob) -> list[dict[str, Any]]:
    lengths = np.asarray(client.compute(frame.map_partitions(len)).result(), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    parts = frame.map_partitions(_score_in_place, offsets, job, meta=STATS).to_delayed()
    if len(parts) != len(lengths):
        raise ScoreError(f"the input's partitions changed between passes ({len(lengths)} then {len(parts)})")
    futures = client.compute(parts, retries=RETRIES)
    index_of = {future.key: i for i, future in enumerate(futures)}
    done, failed = [], []
    with tqdm(total=int(lengths.sum()), unit="row", unit_scale=True, desc="score") as bar:
        for future in as_completed(futures):
            i = index_of[future.key]
            if future.status == "error":
                start = int(offsets[i])
                failed.append(
                    f"partition {i} (rows {start}-{start + int(lengths[i]) - 1}): {future.exception()!r}"
                )
            else:
                done.append(future.result().iloc[0].to_dict())
            bar.update(int(lengths[i]))
    if failed:
        raise ScoreError(
            f"{len(failed)} of {len(parts)} partitions failed after {RETRIES} retries, so nothing was "
            "published: " + "; ".join(failed[:5])
        )
    return sorted(done, key=lambda d: d["index"])


def score(
    source: Path,
    output: Path,
    client: Client,
    model_dir: Path,
    coverage: float,
    device_dir: Path | None = None,
    version: str | None = None,
    chunk_rows: int = 20_000,
    overwrite: bool = False,
    domain: str = "gemm",
) -> dict[str, Any]:
    """Score ``source`` into the folder ``output``; return the run's manifest (also written into it)."""
    if output.exists() and not overwrite:
        raise ScoreError(f"output {output} exists; pass --overwrite to replace it")
    frame, is_csv = read_table(source, table_scorer(domain))
    path = _served_version(model_dir, domain, version)
    card = json.loads((path / CARD).read_text())
    started = time.perf_counter()
    tmp = output.parent / f".{output.name}.{uuid.uuid4().hex}.partial"
    tmp.mkdir(parents=True)
    job = ScoreJob(
        domain=domain,
        model_path=str(path.resolve()),
        card_sha256=file_sha256(path / CARD),
        coverage=coverage,
        device_dir=str(device_dir) if device_dir else None,
        out_dir=str(tmp.resolve()),
        chunk_rows=chunk_rows,
        columns=tuple(frame.columns),
    )
    try:
        parts = _run_partitions(client, frame, job)
        refused = _merge_errors(tmp, is_csv)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = {
        "model": card.get("name", domain),
        "version": card.get("version", path.name),
        "card_sha256": job.card_sha256,
        "input": str(source),
        "coverage": coverage,
        "rows": sum(p["rows"] for p in parts),
        "scored": sum(p["written"] for p in parts),
        "refused": refused,
        "partitions": len(parts),
        "seconds": round(time.perf_counter() - started, 2),
        "job": {k: v for k, v in asdict(job).items() if k in ("chunk_rows", "columns")},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)
    return manifest
