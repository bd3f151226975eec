"""Collectors: measurements taken on this machine, each into a resumable, crash-safe output directory.

``perfcost collect`` (:mod:`training.collect.cli`) runs them: ``cpu-gemm`` (:mod:`.cpu_gemm`, numpy's BLAS),
``gpu-gemm`` (:mod:`.gpu_gemm`, cuBLAS through torch) and ``mlir`` (:mod:`.mlir`, programs compiled and run
with IREE). :mod:`.storage` holds what they share on disk: the lock, durable appends and atomic rewrites.
Nothing heavy is imported here: torch, NVML and ONNX are imported only where they are used.
"""
