"""Noise floor of a collected MLIR dataset's runtimes: re-measure programs drawn at random and compare.

Draws ``--programs`` measured programs from ``DATASET/programs.jsonl.gz`` (seeded), compiles and benchmarks
each again with the collector's own protocol (the settings recorded in ``environment.json``), and prints
how far the new runtime lies from the recorded one: median, mean, p90 of |new / recorded - 1|, and the
share beyond 30% and beyond 2x. The mean is the MAPE a perfect re-run would score against the labels, so
no model can be judged below it. Run it on an otherwise idle machine, like the collection itself.

    python benchmarks/mlir_label_noise.py datasets/mlir-cpu-local --programs 60 --seed 1
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.collect.mlir.iree import BenchSettings, measure_program
from training.collect.mlir.records import ENVIRONMENT_FILE, PROGRAMS, read_records
from training.collect.mlir.sweep import ProgramSpec

log = logging.getLogger("mlir_label_noise")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="A collected MLIR dataset directory")
    parser.add_argument("--programs", type=int, default=60, help="Programs to re-measure")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.programs < 2:
        parser.error(f"--programs: must be at least 2, got {args.programs}")
    if not (args.dataset / PROGRAMS).is_file() or not (args.dataset / ENVIRONMENT_FILE).is_file():
        parser.error(f"dataset: {args.dataset} holds no {PROGRAMS} and {ENVIRONMENT_FILE}")
    try:
        settings = BenchSettings.from_environment(json.loads((args.dataset / ENVIRONMENT_FILE).read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        parser.error(f"dataset: {args.dataset / ENVIRONMENT_FILE} has no usable benchmark settings: {exc!r}")
    measured = [r for r in read_records(args.dataset / PROGRAMS) if r["status"] == "ok"]
    if not measured:
        parser.error(f"dataset: {args.dataset / PROGRAMS} holds no measured program")
    sample = random.Random(args.seed).sample(measured, min(args.programs, len(measured)))
    ratios = []
    for record in tqdm(sample, desc="re-measuring", unit="program"):
        spec = ProgramSpec(record["family"], record["dtype"], tuple(record["params"].items()))
        again = measure_program(spec, settings, mlir=record["mlir"])
        if again["status"] != "ok":
            log.warning("%s: %s on re-measure: %s", record["key"], again["status"], again.get("error"))
            continue
        ratios.append(again["runtime_ms"] / record["runtime_ms"])
    if not ratios:
        log.error("no program could be re-measured")
        return 1
    off = np.abs(np.array(ratios) - 1)
    log.info(
        "%d programs re-measured with %d launch(es) of %d repetitions: |new/recorded - 1| median %.1f%%, "
        "mean %.1f%%, p90 %.1f%%; beyond 30%%: %.0f%%, beyond 2x: %.0f%%; median ratio %.3f",
        len(off),
        settings.invocations,
        settings.repetitions,
        100 * np.median(off),
        100 * off.mean(),
        100 * np.percentile(off, 90),
        100 * (off > 0.3).mean(),
        100 * (np.maximum(ratios, 1 / np.array(ratios)) > 2).mean(),
        np.median(ratios),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
