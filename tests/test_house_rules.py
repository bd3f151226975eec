"""House rules of the code base that a tool can check: sizes of files and functions in the packages, and
that the service process holds none of the offline stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "training")
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_no_file_over_600_lines_and_no_function_over_80() -> None:
    too_long = []
    for path in sources():
        text = path.read_text()
        name = path.relative_to(ROOT)
        if text.count("\n") > MAX_FILE_LINES:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, too_long


def test_the_service_process_imports_no_training_code_and_no_matplotlib() -> None:
    """What ``python -m service`` imports: the app, its factory and uvicorn, never the offline side."""
    probe = (
        "import sys, service.__main__, service.app; "
        "service.app.create_app(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'training', 'matplotlib'}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
