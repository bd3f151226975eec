"""The GPU collector's timing: one configuration's operands on a CUDA device and the CUDA-event timing of
its calls, through torch (:class:`training.collect.gpu_backend.TorchBackend` reads the energy around it).

What is timed. Per configuration the operands are allocated once on the device, filled with standard
normal numbers from a generator seeded by the key (never zeros: they run faster than real data), and the
output is preallocated: ``gemm`` and ``linear`` call ``torch.matmul(a, b, out=c)`` (``linear`` is
``x @ W.T`` with ``W`` stored ``(n, k)``: layout ``nt``), ``bmm`` calls ``torch.bmm(a, b, out=c)``. A
layout letter ``t`` means that operand is stored transposed and passed as a transposed view. TF32 is off
(``torch.backends.cuda.matmul.allow_tf32 = False``, precision "highest"), so float32 is true FP32, as in
the public cuBLAS data (neusight-gemm). Warm-up: calls until at least 3 and 50 ms have run (module load,
cuBLAS handle and workspace, clocks leaving idle). Then batches of back-to-back calls on the current
stream, each batch between two CUDA events (``torch.cuda.Event(enable_timing=True)``), a batch sized to
about ``min_time / 20`` (at least one call), until at least ``--min-time`` seconds and 5 batches (at most
2000 batches). ``runtime_ms`` is the median over batches of the batch's time per call and
``runtime_spread`` is ``(p90 - p10) / median`` of the same; ``repeats`` counts the timed calls. For tiny
shapes the time per call is the eager dispatch rate (Python + ATen + launch, several microseconds), which
is what such a call costs in a PyTorch program. The operands are reused by every call, so a shape
whose operands fit in the L2 cache is timed with them resident there (no rotation of input sets).
"""

from __future__ import annotations

import math
import statistics
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from training.collect.gpu_sweep import GpuGemmConfig

WARMUP_CALLS, WARMUP_SECONDS = 3, 0.05
MIN_BATCHES, MAX_BATCHES, BATCHES_PER_MIN_TIME = 5, 2000, 20
MAX_CALLS_PER_BATCH = 10_000


def summarize(per_call_ms: Sequence[float]) -> tuple[float, float]:
    """Median of the per-call times of the batches, and (p90 - p10) / median."""
    p10, median, p90 = np.percentile(np.asarray(per_call_ms, dtype=float), [10, 50, 90])
    return float(median), float((p90 - p10) / median) if median > 0 else 0.0


def make_operands(torch: Any, cfg: GpuGemmConfig, device: Any) -> Callable[[], Any]:
    """Allocate ``cfg``'s operands and output on ``device`` (random normal, seeded by the key) and
    return the call to time (see the module docstring)."""
    dtype = getattr(torch, cfg.dtype)
    gen = torch.Generator(device=device)
    gen.manual_seed(zlib.crc32(cfg.key.encode()))
    lead = (cfg.batch,) if cfg.op == "bmm" else ()

    def operand(rows: int, cols: int, transposed: bool) -> Any:
        shape = (*lead, cols, rows) if transposed else (*lead, rows, cols)
        x = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)
        return x.transpose(-1, -2) if transposed else x

    a = operand(cfg.m, cfg.k, cfg.layout[0] == "t")
    b = operand(cfg.k, cfg.n, cfg.layout[1] == "t")  # linear: W stored (n, k), used as W.T
    c = torch.empty((*lead, cfg.m, cfg.n), device=device, dtype=dtype)
    if cfg.op == "bmm":
        return lambda: torch.bmm(a, b, out=c)
    return lambda: torch.matmul(a, b, out=c)


def _event(torch: Any) -> Any:
    return torch.cuda.Event(enable_timing=True)


def warm_up(torch: Any, device: Any, call: Callable[[], Any], min_time: float) -> tuple[float, int]:
    """Run ``call`` until warm (see the module docstring); a first estimate of one call (ms) and the
    number of calls per timed batch it gives."""
    calls, started = 0, time.perf_counter()
    while calls < WARMUP_CALLS or time.perf_counter() - started < WARMUP_SECONDS:
        call()
        calls += 1
        torch.cuda.synchronize(device)
    start, end = _event(torch), _event(torch)
    start.record()
    for _ in range(WARMUP_CALLS):
        call()
    end.record()
    end.synchronize()
    estimate_ms = max(start.elapsed_time(end) / WARMUP_CALLS, 1e-4)
    per_batch = max(1, min(MAX_CALLS_PER_BATCH, round(min_time * 1000 / BATCHES_PER_MIN_TIME / estimate_ms)))
    return estimate_ms, per_batch


def timed_batches(
    torch: Any, call: Callable[[], Any], per_batch: int, estimate_ms: float, min_time: float
) -> list[float]:
    """The time per call (ms) of each timed batch of ``per_batch`` calls, until ``min_time`` seconds and
    :data:`MIN_BATCHES` batches have run (at most :data:`MAX_BATCHES`)."""
    per_call: list[float] = []
    total_ms = 0.0
    while len(per_call) < MAX_BATCHES and (len(per_call) < MIN_BATCHES or total_ms < min_time * 1000):
        # Queue the batches expected to fill the remaining time, then wait for all of them.
        left_ms = max(min_time * 1000 - total_ms, 0.0)
        planned = max(MIN_BATCHES - len(per_call), math.ceil(left_ms / (per_batch * estimate_ms)), 1)
        planned = min(planned, MAX_BATCHES - len(per_call))
        events = [_event(torch) for _ in range(planned + 1)]
        events[0].record()
        for i in range(planned):
            for _ in range(per_batch):
                call()
            events[i + 1].record()
        events[-1].synchronize()
        for before, after in zip(events, events[1:], strict=False):
            elapsed = before.elapsed_time(after)
            total_ms += elapsed
            per_call.append(elapsed / per_batch)
        estimate_ms = max(statistics.median(per_call), 1e-4)
    return per_call
