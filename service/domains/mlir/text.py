"""Reading MLIR text without a compiler: what :mod:`service.domains.mlir.summary` scans.

A small line-oriented scanner rather than an MLIR parser, so that any dialect — including ones never
heard of — is read instead of rejected: large constants are cut out first, statements are joined into
logical lines, and each line yields its op names and its tensor types.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

DTYPE_BYTES = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2, "i64": 8, "i32": 4, "i16": 2, "i8": 1, "i1": 1}


class MlirTextError(ValueError):
    """The text is not an MLIR program (the message says why)."""


_BLOB_SECTION = re.compile(r"\{-#.*?#-\}", re.S)
_DENSE_RESOURCE = re.compile(r"dense_resource<[^>]*>")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_STATEMENT = re.compile(
    r'(?:^|[{=])\s*(?:"([A-Za-z_][\w$]*(?:\.[\w$]+)+)"|([A-Za-z_][\w$]*(?:\.[\w$]+)+|module|return))'
    r"(?![\w$.])(?!\s*=)"
)
_BARE = {"module": "builtin.module", "return": "func.return"}
_ONNX_OP = re.compile(r'torch\.operator\s+"(onnx\.\w+)"')
_TENSOR = re.compile(r"(?<![\w.])tensor<([^<>]*)>")
_VTENSOR = re.compile(r"vtensor<\[([^\]]*)\],\s*(\w+)>")
TOKEN = re.compile(r"%[\w#]+|@[\w$.]+|[A-Za-z_][\w.$]*|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|[{}()\[\]<>=:,\-]")
IN_OUT = re.compile(r"ins\((.*?)\)\s*outs\((.*?)\)")
FUNC_SIG = re.compile(
    r"func\.func\s+(?:\w+\s+)?@[\w$.]+\((.*?)\)\s*(?:->\s*(.*?))?\s*(?:attributes|\{)", re.S
)


def strip_constants(text: str) -> tuple[str, int]:
    """The text without large constants, and how many were cut: the ``{-# ... #-}`` resource section,
    ``dense_resource<name>`` handles and the payload of every ``dense<...>`` literal."""
    count = 0

    def cut(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return ""

    text = _BLOB_SECTION.sub(cut, text)
    text = _DENSE_RESOURCE.sub(lambda m: (cut(m), "dense_resource<blob>")[1], text)
    out: list[str] = []
    pos = 0
    while True:
        start = text.find("dense<", pos)
        if start < 0:
            out.append(text[pos:])
            break
        i = start + len("dense<")
        depth = 1
        in_string = False
        # Scan to the matching '>' (payloads nest brackets and may quote hex strings; a string is skipped).
        while i < len(text) and depth:
            ch = text[i]
            if in_string:
                if ch == "\\":
                    i += 1
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "<":
                depth += 1
            elif ch == ">":
                depth -= 1
            i += 1
        out.append(text[pos:start] + "dense<C>")
        count += 1
        pos = i
    return "".join(out), count


def check_mlir(text: str) -> None:
    """Raise :class:`MlirTextError` unless the text looks like an MLIR program: non-empty, with a
    ``module`` or a ``func.func``, and with balanced braces, parentheses and brackets outside strings."""
    if not text.strip():
        raise MlirTextError("the text is empty")
    body, _ = strip_constants(text)
    body = STRING.sub('""', body)
    if not re.search(r"(^|\s)module\b|func\.func\b", body):
        raise MlirTextError("no 'module' or 'func.func' found: this is not an MLIR program")
    for open_, close in ("{}", "()", "[]"):
        depth = 0
        for line_no, line in enumerate(body.splitlines(), 1):
            for ch in line:
                if ch == open_:
                    depth += 1
                elif ch == close:
                    depth -= 1
                    if depth < 0:
                        raise MlirTextError(f"unbalanced '{close}' at line {line_no}")
        if depth:
            raise MlirTextError(f"unbalanced '{open_}': {depth} left open at the end of the text")


@dataclass
class TensorType:
    shape: tuple[int, ...]
    dtype: str

    @property
    def elements(self) -> float:
        return float(math.prod(self.shape)) if self.shape else 1.0

    @property
    def nbytes(self) -> float:
        return self.elements * DTYPE_BYTES.get(self.dtype, 4)


def parse_types(text: str) -> list[TensorType]:
    """Every ranked tensor type in ``text`` (builtin and torch); dynamic dims (``?``, ``-1``) count as 1."""
    found = []
    for m in _TENSOR.finditer(text):
        parts = m.group(1).split(",")[0].strip().split("x")
        dtype = parts[-1].strip()
        dims = tuple(int(p) if p.isdigit() else 1 for p in parts[:-1])
        found.append(TensorType(dims, dtype))
    for m in _VTENSOR.finditer(text):
        dims = tuple(
            int(p) if p.strip().lstrip("-").isdigit() and int(p) > 0 else 1
            for p in m.group(1).split(",")
            if p.strip()
        )
        found.append(TensorType(dims, m.group(2)))
    return found


def op_names(line: str) -> list[str]:
    """Op names of the statements on one line: usually one, several when a program is written on one
    line (``module { func.func @f() { foo.bar } }``). A dotted name counts as an op at the start of a
    statement (line start, after ``=`` or ``{``) unless an ``=`` follows it (an attribute name)."""
    onnx = _ONNX_OP.search(line)
    if onnx:
        return [onnx.group(1)]
    names = []
    for m in _STATEMENT.finditer(STRING.sub(_keep_op_string, line)):
        word = m.group(1) or m.group(2)
        names.append(_BARE.get(word, word))
    return names


def _keep_op_string(m: re.Match[str]) -> str:
    """Strings are blanked before scanning, except a generic-form op name (``"dialect.op"(``)."""
    return m.group(0) if re.fullmatch(r'"[A-Za-z_][\w$]*(?:\.[\w$]+)+"', m.group(0)) else '""'


_CONTINUATION = ("ins(", "outs(", "->", "iterator_types", "indexing_maps", ":", "attributes", "permutation")


def logical_lines(text: str) -> list[str]:
    """Physical lines joined into one line per statement head: a statement continues while a ``(`` or
    ``[`` is open, after a trailing comma, or when the next line starts with ``ins(``/``outs(``/``->``
    and the like (how hand-written and pretty-printed linalg wraps long ops)."""
    out: list[str] = []
    depth = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if out and (depth > 0 or out[-1].endswith(",") or line.startswith(_CONTINUATION)):
            out[-1] += " " + line
        else:
            out.append(line)
        blank = STRING.sub('""', line)
        depth = max(0, depth + blank.count("(") + blank.count("[") - blank.count(")") - blank.count("]"))
    return out
