"""One MLIR collection: every program of a sweep not yet in the output directory, measured and appended
durably, with the environment (tool versions, benchmark settings, this CPU) in ``environment.json``."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from training.collect.local_cpu import cpu_flags, cpuinfo, local_cpu_count
from training.collect.mlir.iree import COMPILE_FLAGS, BenchSettings, measure_program
from training.collect.mlir.records import ENVIRONMENT_FILE, PROGRAMS, RecordWriter, recover
from training.collect.mlir.sweep import ProgramSpec
from training.collect.storage import atomic_write, exclusive_lock

log = logging.getLogger(__name__)


def iree_versions() -> dict[str, str]:
    out = {}
    for dist in ("iree-base-compiler", "iree-base-runtime", "onnx"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def environment(settings: BenchSettings, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "collector": "perfcost collect mlir",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": iree_versions(),
        "compile_flags": list(COMPILE_FLAGS),
        "benchmark": {
            "driver": "local-task",
            "repetitions": settings.repetitions,
            "min_time_s": settings.min_time_s,
            "warmup_s": settings.warmup_s,
            "worker_threads": settings.threads,
            "invocations": settings.invocations,
            "runtime": "median over launches of each launch's median over repetitions of the mean wall time "
            "per call; runtime_spread = median over launches of (p75 - p25) / median over repetitions; "
            "runtime_launch_spread = (max - min) / runtime of the launches' medians; "
            "utilization = cpu_time / (runtime x worker_threads)",
        },
        "cpu_model": cpuinfo().get("model name", ""),
        "cpu_flags": cpu_flags(),
        "usable_cpus": local_cpu_count(),
        "python": sys.version,
        "platform": platform.platform(),
        **extra,
    }


def collect(
    out: Path,
    specs: list[ProgramSpec],
    settings: BenchSettings,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> int:
    """Measure every spec not yet in ``out/programs.jsonl.gz``; returns how many were measured now."""
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out):
        path = out / PROGRAMS
        existing = recover(path)
        load = os.getloadavg()[0]
        env = environment(settings, {"load_average_at_start": round(load, 2), "sweep_size": len(specs)})
        atomic_write(out / ENVIRONMENT_FILE, json.dumps(env, indent=2) + "\n")
        todo = [s for s in specs if s.key not in existing]
        log.info("%d of %d programs already measured in %s", len(specs) - len(todo), len(specs), path)
        writer = RecordWriter(path)
        try:
            for i, spec in enumerate(todo):
                record = measure_program(spec, settings)
                record["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
                record["load_average"] = round(os.getloadavg()[0], 2)
                writer.append(record)
                if progress is not None:
                    progress(i + 1, len(todo), record)
        finally:
            writer.close()
        return len(todo)
