"""The Dockerfile, .ci/run and README must describe the same install and start commands.

There is no Docker engine here, so the image is kept honest by checking that its steps are the commands
the README and CI run.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from unittest import mock

import lightgbm
import pytest

import service.__main__ as service_main
from service.app import app_from_env
from training import serve

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_runs() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.removeprefix("RUN ").strip() for line in text.splitlines() if line.startswith("RUN ")]


def readme_commands() -> str:
    """The README's shell blocks (blocks in other languages, e.g. Python examples, are not commands)."""
    blocks = re.findall(r"```(\w*)\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return "\n".join(body for language, body in blocks if language in ("", "bash", "sh"))


def test_package_install_step_is_shared() -> None:
    install = "python -m pip install --quiet -c constraints.txt -e"
    assert f"{install} ." in dockerfile_runs()
    assert f'{install} ".[dev,mlir]"' in (ROOT / ".ci" / "run").read_text()
    assert "pip install -c constraints.txt -e ." in readme_commands()


def test_models_are_trained_by_the_documented_command() -> None:
    for command in ("perfcost train gemm", "perfcost train mlir"):
        assert command in dockerfile_runs()
        assert command in readme_commands()


def test_quick_start_is_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\n.*?```bash\n(.*?)```", readme, flags=re.S)
    assert block is not None
    commands = [line for line in block.group(1).splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert commands[0].endswith("perfcost serve")
    assert commands[1] == "bash .ci/run"
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text()


def test_image_runs_the_service_entry_point_that_perfcost_serve_hands_over_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``perfcost serve`` replaces itself with ``python -m service``, which runs uvicorn on the app factory;
    the image's entry point is that same module."""
    executed: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: executed.append((path, argv, env)))
    serve.serve(host="0.0.0.0", port=9000, workers=None, train_if_empty=False)
    assert executed == [
        (sys.executable, [sys.executable, "-m", "service", "--host=0.0.0.0", "--port=9000"], mock.ANY)
    ]
    assert executed[0][2]["PERFCOST_TRAIN_MISSING"] == "false"
    ran: list[tuple[str, dict[str, object]]] = []
    monkeypatch.setattr(service_main.uvicorn, "run", lambda app, **options: ran.append((app, options)))
    service_main.serve(port=9001)
    [(factory, options)] = ran
    module, attribute = factory.split(":")
    assert getattr(importlib.import_module(module), attribute) is app_from_env
    assert options["factory"] is True and options["port"] == 9001
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "service"]' in dockerfile
    runtime = dockerfile.split("AS runtime", 1)[1]
    assert "training" not in runtime.replace("needs no training code", ""), (
        "the runtime stage copies training"
    )
    assert re.search(r"^USER perfcost$", dockerfile, flags=re.M), "the image must not run as root"
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile


def test_every_image_stage_has_the_openmp_runtime_lightgbm_links() -> None:
    """LightGBM's wheel links the system's libgomp.so.1 instead of bundling it, and python:*-slim lacks it:
    without it the build's training step and the service's import of lightgbm fail."""
    library = Path(lightgbm.__file__).parent / "lib" / "lib_lightgbm.so"
    if b"libgomp.so.1" not in library.read_bytes():
        pytest.skip("this LightGBM build does not link libgomp")
    stages = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.M)[1:]
    fresh = [stage for stage in stages if stage.startswith("python:")]
    assert len(fresh) == 2, "expected the deps and runtime stages to start from a Python image"
    for stage in fresh:
        assert "install --yes --no-install-recommends libgomp1" in stage, stage.splitlines()[0]
