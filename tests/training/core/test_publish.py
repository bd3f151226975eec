"""Publishing is atomic: a publisher SIGKILLed at any moment leaves only complete versions behind."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from service.core.model import CARD, file_sha256, list_versions

PUBLISHER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np, pandas as pd
    from training.core.models import CostRegressor
    from training.core.publish import publish
    from service.domains import DOMAINS

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.random((400, 4)), columns=list("abcd"))
    y = X["a"].to_numpy() * 3 + rng.random(400) * 0.1
    model = CostRegressor(candidates=("random_forest",), n_splits=2).fit(X, y)
    print("ready", flush=True)
    while True:
        publish(Path(sys.argv[1]), "toy", DOMAINS["gemm"], {}, {"t1": (model, {}), "t2": (model, {})})
    """
)


def assert_only_complete_versions(model_dir: Path) -> int:
    versions = list_versions(model_dir, "toy")
    for version in versions:
        card = json.loads((version / CARD).read_text())
        assert set(card["targets"]) == {"t1", "t2"}
        for name, digest in card["files"].items():
            assert file_sha256(version / name) == digest, (version, name)
    return len(versions)


def test_sigkill_during_publish_leaves_only_complete_versions(tmp_path: Path) -> None:
    rng = random.Random(0)
    model_dir = tmp_path / "models"
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(model_dir)], stdout=subprocess.PIPE, env={**os.environ}
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert_only_complete_versions(model_dir)
    assert assert_only_complete_versions(model_dir) >= 1
