"""Compiling and benchmarking a program with IREE's tools: ``iree-import-onnx`` for the ONNX families,
``iree-compile`` for llvm-cpu on this CPU (with the executables' assembly dumped for :mod:`.assembly`)
and ``iree-benchmark-module`` on the local-task driver."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.collect.local_cpu import local_cpu_count
from training.collect.mlir.assembly import assembly_stats, code_bytes, count_dispatches
from training.collect.mlir.linalg import render_linalg
from training.collect.mlir.onnx_models import build_onnx
from training.collect.mlir.sweep import LINALG_FAMILIES, ProgramSpec
from training.collect.storage import CollectError

COMPILE_FLAGS = (
    "--iree-hal-target-backends=llvm-cpu",
    "--iree-llvmcpu-target-cpu=host",
)
COMPILE_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 300.0


class RenderError(RuntimeError):
    """A program could not be turned into MLIR text (the ONNX importer failed)."""


def _tool(name: str) -> str:
    """Path of an IREE command-line tool: next to this Python first (the venv), then on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise CollectError(f"{name} not found; install iree-base-compiler and iree-base-runtime")
    return found


def first_error_line(stderr: str) -> str:
    """The first line mentioning an error (else the first non-empty line), trimmed to 500 characters."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    picked = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "")
    return picked[:500]


def render(spec: ProgramSpec, workdir: Path) -> str:
    """The MLIR text of a program (ONNX families go through ``iree-import-onnx``)."""
    if spec.family in LINALG_FAMILIES:
        return render_linalg(spec)
    import onnx

    path = workdir / "model.onnx"
    onnx.save(build_onnx(spec), str(path))
    out = workdir / "imported.mlir"
    proc = subprocess.run(
        [_tool("iree-import-onnx"), str(path), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=COMPILE_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RenderError(first_error_line(proc.stderr) or f"iree-import-onnx exited {proc.returncode}")
    return out.read_text()


_INPUT_TYPE = re.compile(r"tensor<([^>]*)>|vtensor<\[([^\]]*)\],(\w+)>")


def benchmark_inputs(mlir: str) -> list[str]:
    """``--input`` values (``2x3xf32=1``) for ``@main``'s arguments, read from its signature."""
    match = re.search(r"func\.func @main\((.*?)\)\s*->", mlir, re.S)
    if not match:
        raise ValueError("no func.func @main(...) -> signature in the program")
    values = []
    for arg in re.split(r",\s*(?=%)", match.group(1).strip()):
        found = _INPUT_TYPE.search(arg)
        if not found:
            raise ValueError(f"unsupported argument type in {arg!r}")
        if found.group(1) is not None:
            spec = found.group(1)
        else:
            dims = [d.strip() for d in found.group(2).split(",") if d.strip()]
            spec = "x".join([*dims, found.group(3)])
        values.append(f"{spec}=1")
    return values


def default_workers() -> int:
    """IREE worker threads: every usable CPU but one. A worker sharing its CPU with the benchmark's own
    thread, the collector or the OS waits for it, and the whole dispatch with it: on this 2-vCPU guest,
    two workers moved a program's runtime between launches by a median of 10% (mean 17%), one worker by
    5% (mean 9%), measured back to back on the same 30 programs."""
    return max(1, local_cpu_count() - 1)


@dataclass(frozen=True)
class BenchSettings:
    repetitions: int = 5
    min_time_s: float = 0.02
    warmup_s: float = 0.02
    threads: int = field(default_factory=default_workers)
    # Separate launches of iree-benchmark-module per program, their median the runtime: where the threads
    # land at a launch moves a short program's time far more than the repetitions within one launch do.
    invocations: int = 3

    @classmethod
    def from_environment(cls, environment: dict[str, Any]) -> BenchSettings:
        """The settings a collection recorded in its ``environment.json`` (see :func:`environment`); data
        collected before launches were counted had one launch per program."""
        bench = environment["benchmark"]
        return cls(
            repetitions=int(bench["repetitions"]),
            min_time_s=float(bench["min_time_s"]),
            warmup_s=float(bench["warmup_s"]),
            threads=int(bench["worker_threads"]),
            invocations=int(bench.get("invocations", 1)),
        )


def compile_program(mlir_path: Path, workdir: Path) -> dict[str, Any]:
    """Compile with iree-compile (llvm-cpu, host CPU), dumping executable assembly; the compile and
    assembly fields of a record (``status`` "ok" or "compile_error" with ``error``)."""
    dump = workdir / "dump"
    vmfb = workdir / "module.vmfb"
    cmd = [
        _tool("iree-compile"),
        *COMPILE_FLAGS,
        f"--iree-hal-dump-executable-intermediates-to={dump}",
        str(mlir_path),
        "-o",
        str(vmfb),
    ]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "compile_error", "error": f"iree-compile timed out after {COMPILE_TIMEOUT_S:.0f} s"}
    compile_ms = (time.perf_counter() - start) * 1e3
    if proc.returncode != 0 or not vmfb.is_file():
        return {
            "status": "compile_error",
            # The temporary directory's name says nothing about the program: drop it from the line.
            "error": first_error_line(proc.stderr.replace(f"{workdir}/", ""))
            or f"iree-compile exited {proc.returncode}",
            "compile_ms": round(compile_ms, 3),
        }
    text = "\n".join(p.read_text(errors="replace") for p in sorted(dump.glob("*.s")))
    stats = assembly_stats(text)
    sizes = [code_bytes(p) for p in dump.glob("*.o")]
    return {
        "status": "ok",
        "compile_ms": round(compile_ms, 3),
        "dispatches": count_dispatches(text),
        **stats,
        "vector_share": round(stats["vector_instructions"] / stats["instructions"], 6)
        if stats["instructions"]
        else 0.0,
        "spills": stats["spill_stores"] + stats["spill_reloads"],
        "code_bytes": sum(d for d, _ in sizes),
        "executable_code_bytes": sum(t for _, t in sizes),
        "vmfb_bytes": vmfb.stat().st_size,
    }


def _invocation(cmd: list[str]) -> tuple[np.ndarray, np.ndarray, int] | dict[str, Any]:
    """Per-call wall and CPU times (ms) of each repetition of one launch and the calls per repetition, or
    the run_error record."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {
            "status": "run_error",
            "error": f"iree-benchmark-module timed out after {RUN_TIMEOUT_S:.0f} s",
        }
    try:
        report = json.loads(proc.stdout)
        runs = [b for b in report["benchmarks"] if b.get("run_type") == "iteration"]
    except (ValueError, KeyError, TypeError):
        runs = []
    if proc.returncode != 0 or not runs:
        return {"status": "run_error", "error": first_error_line(proc.stderr) or f"exit {proc.returncode}"}
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
    wall = np.array([r["real_time"] * scale[r.get("time_unit", "ns")] for r in runs], dtype=float)
    cpu = np.array([r["cpu_time"] * scale[r.get("time_unit", "ns")] for r in runs], dtype=float)
    return wall, cpu, int(runs[0].get("iterations", 0))


def _spread(wall: np.ndarray) -> float:
    """(p75 - p25) / median of one launch's repetitions."""
    p25, median, p75 = np.percentile(wall, [25, 50, 75])
    return float((p75 - p25) / median) if median > 0 else 0.0


def benchmark_module(vmfb: Path, inputs: list[str], settings: BenchSettings) -> dict[str, Any]:
    """Run ``@main`` with iree-benchmark-module on the local-task driver, ``settings.invocations`` times;
    per-call wall and CPU time (median over launches of each launch's median over repetitions), the spread
    within a launch and between launches, and the utilization of the worker threads."""
    cmd = [
        _tool("iree-benchmark-module"),
        f"--module={vmfb}",
        "--device=local-task",
        "--function=main",
        *(f"--input={v}" for v in inputs),
        f"--task_topology_group_count={settings.threads}",
        f"--benchmark_repetitions={settings.repetitions}",
        f"--benchmark_min_time={settings.min_time_s}s",
        f"--benchmark_min_warmup_time={settings.warmup_s}",
        "--benchmark_format=json",
    ]
    walls, cpus, iterations = [], [], 0
    for _ in range(settings.invocations):
        result = _invocation(cmd)
        if isinstance(result, dict):
            return result
        walls.append(result[0])
        cpus.append(result[1])
        iterations = result[2]
    medians = np.array([np.median(w) for w in walls])
    median = float(np.median(medians))
    cpu_median = float(np.median([np.median(c) for c in cpus]))
    return {
        "status": "ok",
        "runtime_ms": float(f"{median:.6g}"),
        "runtime_min_ms": float(f"{min(w.min() for w in walls):.6g}"),
        "runtime_spread": round(float(np.median([_spread(w) for w in walls])), 5),
        "runtime_launch_spread": round(float(np.ptp(medians) / median), 5) if median > 0 else 0.0,
        "cpu_time_ms": float(f"{cpu_median:.6g}"),
        "utilization": round(cpu_median / (median * settings.threads), 5) if median > 0 else 0.0,
        "threads": settings.threads,
        "invocations": settings.invocations,
        "repetitions": len(walls[0]),
        "iterations": iterations,
    }


def measure_program(spec: ProgramSpec, settings: BenchSettings, mlir: str | None = None) -> dict[str, Any]:
    """The full record of one program: key, family, dtype, parameters, MLIR text, compile and benchmark
    results (a failure is recorded with its status and first error line)."""
    record: dict[str, Any] = {
        "key": spec.key,
        "family": spec.family,
        "dtype": spec.dtype,
        "params": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.params},
    }
    with tempfile.TemporaryDirectory(prefix="perfcost-mlir-") as tmp:
        workdir = Path(tmp)
        try:
            text = mlir if mlir is not None else render(spec, workdir)
        except (RenderError, subprocess.TimeoutExpired) as exc:
            return {**record, "status": "import_error", "error": str(exc)[:500], "mlir": None}
        record["mlir"] = text
        path = workdir / "program.mlir"
        path.write_text(text)
        compiled = compile_program(path, workdir)
        record.update(compiled)
        if compiled["status"] != "ok":
            return record
        try:
            inputs = benchmark_inputs(text)
        except ValueError as exc:
            return {**record, "status": "run_error", "error": str(exc)}
        record.update(benchmark_module(workdir / "module.vmfb", inputs, settings))
    return record
