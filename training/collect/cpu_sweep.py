"""The CPU collector's sweep: a fixed, seeded list of GEMM and batched-GEMM configurations (square,
skinny and random shapes × dtypes × BLAS thread counts, :func:`build_sweep`), minus the ones the skip
rule leaves out because one call would take too long or need too much memory.

The list depends only on the thread counts (by default 1..usable CPUs) and the skip rule's limit, never
on a measured speed, so keys stay stable across runs and an interrupted collection resumes where it
stopped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from training.collect.gemm import GemmShape
from training.collect.local_cpu import local_cpu_count

SWEEP_SEED = 20_240_611
DTYPES = ("float32", "float64")
# Skip rule: a configuration is left out when one call would take longer than ``max_call_seconds`` at
# these deliberately conservative rates (well below what a current x86 core reaches with AVX2/AVX-512)
# or when its three arrays would exceed MAX_CONFIG_BYTES.
CONSERVATIVE_GFLOPS_PER_THREAD = {"float32": 30.0, "float64": 15.0}
THREAD_EFFICIENCY = 0.7  # each thread beyond the first adds this fraction of a thread
CONSERVATIVE_BANDWIDTH_GBPS = 5.0
CALL_OVERHEAD_S = 5e-6
MAX_CONFIG_BYTES = 1 << 30
DEFAULT_MAX_CALL_SECONDS = 1.5

SQUARE_SIZES = (
    *(1, 2, 3, 4, 5, 8, 12, 16, 17, 24, 31, 32, 33, 48, 63, 64, 65, 96, 100, 127, 128, 129),
    *(192, 200, 255, 256, 257, 320, 384, 500, 511, 512, 513, 640, 768, 777, 1000, 1023, 1024, 1025),
    *(1280, 1500, 1536, 1537, 2000, 2047, 2048, 2049, 2500, 3001, 3072, 4096),
)
SKINNY_SHAPES = (  # (m, n, k): tall/flat operands, GEMV-like and outer-product-like shapes
    (4096, 64, 4096),
    (64, 4096, 4096),
    (4096, 4096, 64),
    (1, 2048, 2048),
    (2048, 1, 2048),
    (2048, 2048, 1),
    (1, 4096, 4096),
    (4096, 1, 4096),
    (4096, 4096, 1),
    (1, 1, 4096),
    (1, 4096, 1),
    (4096, 1, 1),
    (2, 2048, 2048),
    (2048, 2, 2048),
    (8, 4096, 4096),
    (4096, 8, 4096),
    (16, 1024, 8192),
    (1024, 16, 8192),
    (32, 3001, 1537),
    (1537, 32, 3001),
    (3001, 1537, 32),
    (127, 1000, 3001),
    (1000, 127, 1537),
    (64, 64, 16384),
    (256, 256, 16384),
    (16384, 64, 64),
    (64, 16384, 64),
    (1, 16384, 1024),
    (1024, 1, 16384),
    (128, 8192, 128),
    (8192, 128, 1024),
    (1000, 1000, 1),
    (3, 1537, 1537),
    (1537, 1537, 3),
    (512, 512, 8192),
    (8192, 512, 512),
)
NICE_DIMS = (
    1,
    2,
    4,
    8,
    16,
    32,
    64,
    96,
    127,
    128,
    129,
    255,
    256,
    257,
    500,
    511,
    512,
    1000,
    1024,
    1537,
    2048,
    3001,
)
RANDOM_GEMM_SHAPES = 900
RANDOM_BMM_SHAPES = 320
BMM_BATCHES = (2, 3, 4, 8, 16, 32, 64)


@dataclass(frozen=True, order=True)
class GemmConfig(GemmShape):
    """One point of the sweep. ``op`` is "gemm" for 2-D operands and "bmm" for 3-D (batched) ones."""

    threads: int

    def variant(self) -> str:
        return f"t={self.threads}"

    def conservative_call_seconds(self) -> float:
        """A pessimistic estimate of one call, the basis of the skip rule."""
        rate = CONSERVATIVE_GFLOPS_PER_THREAD[self.dtype] * 1e9 * (1 + THREAD_EFFICIENCY * (self.threads - 1))
        return (
            self.flops / rate
            + self.nbytes / (CONSERVATIVE_BANDWIDTH_GBPS * 1e9)
            + CALL_OVERHEAD_S * self.batch
        )

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        lead = (self.batch,) if self.op == "bmm" else ()
        return (*lead, self.m, self.k), (*lead, self.k, self.n), (*lead, self.m, self.n)


@dataclass
class Sweep:
    configs: list[GemmConfig]
    skipped: list[tuple[GemmConfig, str]] = field(default_factory=list)

    def keys(self) -> list[str]:
        return [c.key for c in self.configs]


def default_threads(max_threads: int | None = None) -> list[int]:
    """1..N (N = usable cores or ``max_threads``); above 8, powers of two plus N."""
    top = max_threads or local_cpu_count()
    if top <= 8:
        return list(range(1, top + 1))
    return sorted({2**i for i in range(int(math.log2(top)) + 1)} | {top})


def _dim(rng: random.Random, high: int) -> int:
    """A random dimension in [1, high]: 30% from NICE_DIMS, otherwise log-distributed with the density
    tilted toward the large end (log(d) = u**0.6 * log(high), u uniform), so that medium and large
    shapes, which say most about a BLAS, are not outnumbered by tiny ones."""
    if rng.random() < 0.3:
        return rng.choice([d for d in NICE_DIMS if d <= high])
    return max(1, min(high, round(math.exp(rng.random() ** 0.6 * math.log(high)))))


def _shapes() -> list[tuple[str, int, int, int, int]]:
    """All (op, batch, m, n, k) shapes, deduplicated, in a fixed shuffled order."""
    rng = random.Random(SWEEP_SEED)
    shapes: list[tuple[str, int, int, int, int]] = [("gemm", 1, s, s, s) for s in SQUARE_SIZES]
    shapes += [("gemm", 1, m, n, k) for m, n, k in SKINNY_SHAPES]
    shapes += [
        ("gemm", 1, _dim(rng, 4096), _dim(rng, 4096), _dim(rng, 4096)) for _ in range(RANDOM_GEMM_SHAPES)
    ]
    for _ in range(RANDOM_BMM_SHAPES):
        batch = rng.choice(BMM_BATCHES)
        shapes.append(("bmm", batch, _dim(rng, 1024), _dim(rng, 1024), _dim(rng, 1024)))
    unique = list(dict.fromkeys(shapes))
    rng.shuffle(unique)
    return unique


def build_sweep(
    threads: Sequence[int] | None = None, max_call_seconds: float = DEFAULT_MAX_CALL_SECONDS
) -> Sweep:
    """The deterministic configuration list: every shape × dtype × thread count, in a fixed order
    (shapes shuffled with a fixed seed; the variants of one shape stay next to each other), minus the
    configurations the skip rule removes (they are returned in ``skipped`` with the reason)."""
    thread_list = list(dict.fromkeys(threads)) if threads else default_threads()
    sweep = Sweep(configs=[])
    for op, batch, m, n, k in _shapes():
        for dtype in DTYPES:
            for t in thread_list:
                cfg = GemmConfig(op, batch, m, n, k, dtype, t)
                if cfg.nbytes > MAX_CONFIG_BYTES:
                    sweep.skipped.append((cfg, f"arrays need {cfg.nbytes / 2**20:.0f} MiB"))
                elif (est := cfg.conservative_call_seconds()) > max_call_seconds:
                    sweep.skipped.append((cfg, f"one call estimated at {est:.2f} s > {max_call_seconds} s"))
                else:
                    sweep.configs.append(cfg)
    return sweep
