"""The service process holds none of the offline stack (the sizes of files and functions are checked by
``.ci/house_rules.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_service_process_imports_no_training_code_and_no_matplotlib() -> None:
    """What ``python -m service`` imports: the app, its factory and uvicorn, never the offline side."""
    probe = (
        "import sys, service.__main__, service.app; "
        "service.app.create_app(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'training', 'matplotlib'}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
