"""The service's side of first-start training: it starts ``python -m training.first_start`` in a process of
its own when default models are missing (the service imports no training code), reloads the registry as
each model is published, says in ``/readyz`` and in 503 answers what is training and how far, and stops
the training (and its worker processes) when the service stops."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from service.core.settings import Settings

log = logging.getLogger(__name__)

STATUS_FILE = ".first-start.json"
POLL_S = 1.0
# Settings the training process must share with the service (it reads its own from the environment).
SHARED_SETTINGS = ("model_dir", "data_home", "data_mirror", "bundled_data_dir", "device_dir")


class FirstStart:
    def __init__(
        self, settings: Settings, reload: Callable[[], Awaitable[None]], defaults: Sequence[str]
    ) -> None:
        self.settings = settings
        self.reload = reload
        # The domains whose default model first start trains when none is published.
        self.defaults = tuple(defaults)
        self.status_path = settings.model_dir / STATUS_FILE
        self.process: asyncio.subprocess.Process | None = None
        # The models this service asked first start for (None: it asked for none).
        self.missing: list[str] | None = None
        self.note: str | None = None
        self._task: asyncio.Task[None] | None = None

    def status(self) -> dict[str, Any] | None:
        """The training process's status document, while this service started one."""
        if self.missing is None:
            return None
        try:
            doc: dict[str, Any] = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {"state": "starting", "models": {name: {"state": "pending"} for name in self.missing}}
        return doc

    def reason(self, name: str) -> str | None:
        """Why model ``name`` is not served yet, as far as first start knows."""
        if self.note is not None and name in self.defaults:
            return self.note
        doc = self.status()
        entry = (doc or {}).get("models", {}).get(name)
        if entry is None:
            return None
        state = entry.get("state")
        if state == "training":
            elapsed = time.time() - entry["started_at"]
            return f"the {name!r} model is training on first start ({elapsed:.0f} s so far)"
        if state == "pending":
            return f"the {name!r} model waits to be trained on first start"
        return f"first start {state} the {name!r} model: {entry.get('detail', '')}".rstrip(": ")

    def stale(self, name: str) -> str | None:
        """Why a serving model ``name`` is out of date with the data on disk, if first start found so."""
        entry = (self.status() or {}).get("models", {}).get(name, {})
        return entry.get("detail") if entry.get("state") == "stale" else None

    def start(self, loaded: set[str]) -> None:
        """Train what is missing; also when nothing is, to check the served models against the data."""
        missing = [name for name in self.defaults if name not in loaded]
        if importlib.util.find_spec("training") is None:
            if not missing:
                return
            self.note = (
                "no model is published and this installation has no training code; install perfcost with "
                "its training package and run 'perfcost train gemm' (mlir, cpu), then reload"
            )
            log.warning("%s", self.note)
            return
        self.status_path.unlink(missing_ok=True)
        self.missing = missing
        self._task = asyncio.get_running_loop().create_task(self._run(list(self.defaults)))

    async def _run(self, names: list[str]) -> None:
        env = dict(os.environ)
        for name in SHARED_SETTINGS:
            value = getattr(self.settings, name)
            env.pop(f"PERFCOST_{name.upper()}", None)
            if value is not None:
                env[f"PERFCOST_{name.upper()}"] = str(value)
        if self.missing:
            log.info(
                "first start: training the default %s model(s) in the background", ", ".join(self.missing)
            )
        # A session of its own, so that stopping it stops the worker processes its fits start too.
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "training.first_start",
            "--status",
            str(self.status_path),
            "--only",
            ",".join(names),
            env=env,
            start_new_session=True,
        )
        published: set[str] = set()
        while True:
            exited = self.process.returncode is not None
            doc = self.status() or {}
            done = {n for n, e in doc.get("models", {}).items() if e.get("state") == "published"}
            if done - published or exited:
                published = done
                await self.reload()
            if exited:
                log.info("first start finished (exit status %s)", self.process.returncode)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), POLL_S)

    async def stop(self) -> None:
        process = self.process
        if process is not None:
            # The whole session: fits start worker processes that would outlive the training otherwise.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
