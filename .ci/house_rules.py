"""House rules a tool can check on the packages' source: no file over 400 lines, no function over 60.

Run by ``.ci/run`` beside ruff, mypy and import-linter (a source check, not a test of behaviour)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "training")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def too_long() -> list[str]:
    found = []
    for path in sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(ROOT)
        if text.count("\n") > MAX_FILE_LINES:
            found.append(f"{name}: {text.count(chr(10))} lines (at most {MAX_FILE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(
                        f"{name}:{node.lineno} {node.name}: {length} lines (at most {MAX_FUNCTION_LINES})"
                    )
    return found


if __name__ == "__main__":
    problems = too_long()
    for problem in problems:
        sys.stderr.write(problem + "\n")
    sys.exit(1 if problems else 0)
