"""Building blocks of the linalg programs' MLIR text: types, affine maps, SSA lines, scalar casts and
activations. Every renderer writes through these, so programs differ only where their ops do."""

from __future__ import annotations

from collections.abc import Callable

# -inf in each float type, as MLIR hex literals (the identity of a max reduction).
NEG_INF = {"f32": "0xFF800000", "f16": "0xFC00", "bf16": "0xFF80"}


def tensor(shape: tuple[int, ...] | list[int], dtype: str) -> str:
    return f"tensor<{'x'.join(str(d) for d in shape)}x{dtype}>" if shape else f"tensor<{dtype}>"


def acc_dtype(dtype: str) -> str:
    """The type a contraction or sum of ``dtype`` accumulates in."""
    return "i32" if dtype == "i8" else "f32"


def zero(dtype: str) -> str:
    """0 as a literal of ``dtype``."""
    return "0" if dtype.startswith("i") else "0.000000e+00"


def ident_map(rank: int, dims: tuple[int, ...] | None = None) -> str:
    """The affine map of a ``rank``-d iteration space onto all its dims, or onto ``dims`` only."""
    names = [f"d{i}" for i in range(rank)]
    kept = names if dims is None else [names[i] for i in dims]
    return f"affine_map<({', '.join(names)}) -> ({', '.join(kept)})>"


class Builder:
    """Accumulates SSA lines of one ``func.func @main``."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0

    def fresh(self) -> str:
        self.count += 1
        return f"%v{self.count}"

    def emit(self, text: str) -> str:
        name = self.fresh()
        self.lines.append(f"    {name} = {text}")
        return name

    def filled(self, shape: tuple[int, ...], dtype: str, value: str) -> str:
        cst = self.emit(f"arith.constant {value} : {dtype}")
        empty = self.emit(f"tensor.empty() : {tensor(shape, dtype)}")
        t = tensor(shape, dtype)
        return self.emit(f"linalg.fill ins({cst} : {dtype}) outs({empty} : {t}) -> {t}")

    def generic(
        self,
        inputs: list[tuple[str, str, str]],
        out: tuple[str, str, str],
        iterators: list[str],
        body: Callable[[list[str], str], list[str]],
    ) -> str:
        """``linalg.generic`` over ``inputs`` (name, tensor type, map) into ``out``; ``body`` gets the block
        argument names and the output's block argument and returns lines ending in ``linalg.yield``."""
        maps = ", ".join(m for _, _, m in [*inputs, out])
        its = ", ".join(f'"{i}"' for i in iterators)
        ins = ", ".join(n for n, _, _ in inputs)
        in_types = ", ".join(t for _, t, _ in inputs)
        args = [f"%in{i}" for i in range(len(inputs))]
        block_args = ", ".join(
            [*(f"{a}: {_elem(t)}" for a, (_, t, _) in zip(args, inputs, strict=True)), f"%o: {_elem(out[1])}"]
        )
        lines = [
            f"linalg.generic {{indexing_maps = [{maps}], iterator_types = [{its}]}} "
            f"ins({ins} : {in_types}) outs({out[0]} : {out[1]}) {{",
            f"    ^bb0({block_args}):",
            *(f"      {line}" for line in body(args, "%o")),
            f"    }} -> {out[1]}",
        ]
        name = self.fresh()
        self.lines.append(f"    {name} = " + "\n".join(lines))
        return name


def _elem(tensor_type: str) -> str:
    return tensor_type.rsplit("x", 1)[-1].rstrip(">") if "x" in tensor_type else tensor_type[7:-1]


def module(args: list[tuple[str, str]], results: list[tuple[str, str]], b: Builder) -> str:
    sig = ", ".join(f"{n}: {t}" for n, t in args)
    res_types = ", ".join(t for _, t in results)
    ret = f"    return {', '.join(n for n, _ in results)} : {res_types}"
    return "\n".join(
        ["module {", f"  func.func @main({sig}) -> ({res_types}) {{", *b.lines, ret, "  }", "}", ""]
    )


def cast(value: str, src: str, dst: str, fresh: Callable[[], str], lines: list[str]) -> str:
    """Lines converting a scalar between element types (extension or truncation), in place in ``lines``."""
    if src == dst:
        return value
    name = fresh()
    if src.startswith("i") and dst.startswith("i"):
        op = "arith.extsi" if int(src[1:]) < int(dst[1:]) else "arith.trunci"
    elif src.startswith("i"):
        op = "arith.sitofp"
    elif dst.startswith("i"):
        op = "arith.fptosi"
    else:
        op = "arith.extf" if _fbits(src) < _fbits(dst) else "arith.truncf"
    lines.append(f"{name} = {op} {value} : {src} to {dst}")
    return name


def _fbits(dtype: str) -> int:
    return {"f16": 16, "bf16": 16, "f32": 32, "f64": 64}[dtype]


def local_names() -> Callable[[], str]:
    """Fresh SSA names (``%t1``, ``%t2``...) for the lines of one block body."""
    counter = iter(range(1, 1 << 30))
    return lambda: f"%t{next(counter)}"


def activation(act: str, x: str, dtype: str, fresh: Callable[[], str], lines: list[str]) -> str:
    """Lines applying ``act`` (relu, tanh, sigmoid, gelu or none) to the scalar ``x``; returns the result."""

    def op(text: str) -> str:
        name = fresh()
        lines.append(f"{name} = {text}")
        return name

    if act == "none":
        return x
    if act == "relu":
        zero = op(f"arith.constant 0.000000e+00 : {dtype}")
        return op(f"arith.maximumf {x}, {zero} : {dtype}")
    if act == "tanh":
        return op(f"math.tanh {x} : {dtype}")
    if act == "sigmoid":
        one = op(f"arith.constant 1.000000e+00 : {dtype}")
        e = op(f"math.exp {op(f'arith.negf {x} : {dtype}')} : {dtype}")
        return op(f"arith.divf {one}, {op(f'arith.addf {one}, {e} : {dtype}')} : {dtype}")
    # gelu, tanh approximation: 0.5 x (1 + tanh(0.79788456 (x + 0.044715 x^3)))
    half, one = op(f"arith.constant 5.000000e-01 : {dtype}"), op(f"arith.constant 1.000000e+00 : {dtype}")
    c1, c2 = op(f"arith.constant 7.978846e-01 : {dtype}"), op(f"arith.constant 4.471500e-02 : {dtype}")
    x3 = op(f"arith.mulf {op(f'arith.mulf {x}, {x} : {dtype}')}, {x} : {dtype}")
    inner = op(f"arith.addf {x}, {op(f'arith.mulf {c2}, {x3} : {dtype}')} : {dtype}")
    t = op(f"math.tanh {op(f'arith.mulf {c1}, {inner} : {dtype}')} : {dtype}")
    left, right = op(f"arith.mulf {half}, {x} : {dtype}"), op(f"arith.addf {one}, {t} : {dtype}")
    return op(f"arith.mulf {left}, {right} : {dtype}")
