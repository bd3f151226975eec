"""``perfcost collect mlir``: generate MLIR programs, compile them with IREE for this CPU and measure them.

The sweep (:func:`build_sweep`) is a deterministic list of :class:`ProgramSpec` s over fifteen families:
linalg-on-tensors programs written here as text (matmul, batch_matmul, matmul_transpose_b, conv_2d NHWC,
depthwise conv, pooling, elementwise chains, reductions, transposes, softmax, layer-norm, fused
matmul + bias + activation) and whole ONNX graphs (MLP, conv block, attention block) built with ``onnx``
and imported with ``iree-import-onnx`` into torch-dialect MLIR. Shapes are drawn log-uniformly so that
every family spans at least four orders of magnitude of work; dtypes are f32, f16, bf16 and i8 where
the family has an integer form. Families are interleaved round-robin, so any prefix of the sweep (a
``--limit`` or a collection stopped early) covers all of them evenly.

Each program is compiled with ``iree-compile`` for llvm-cpu with ``--iree-llvmcpu-target-cpu=host``
(compile time, dispatch count, and from the dumped executable assembly: static instruction count,
vector-instruction share, distinct vector registers, spills and reloads, code size) and then run with
``iree-benchmark-module`` (warm-up, then ``--repetitions`` repetitions of at least ``--min-time`` s each;
median wall and CPU time per call and the spread between repetitions, ``(p75 - p25) / median``).
Thread utilization is CPU time / (wall time x worker threads). A program that fails to compile or run
is recorded with the tool's first error line and a status, never dropped.

Storage and crash safety: ``programs.jsonl.gz`` holds one gzip member per program (its JSON record,
MLIR text included), each appended with one ``write`` and ``fsync``-ed. On restart a truncated last
member or a duplicated key is dropped (the file is rewritten atomically) and every key already present
is skipped; the collectors' ``flock`` (:mod:`training.collect.storage`) makes a second collector on the
same directory refuse.

Modules: :mod:`.sweep` draws the programs, :mod:`.builder`, :mod:`.linalg` and :mod:`.norm` write the
linalg ones as MLIR text, :mod:`.onnx_models` builds the ONNX ones, :mod:`.iree` compiles and benchmarks
them (with :mod:`.assembly` reading the compiled code), :mod:`.records` stores the records,
:mod:`.collector` runs a collection and :mod:`.cli` is the command.
"""
