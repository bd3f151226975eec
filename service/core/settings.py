"""The one settings class. Every knob is an environment variable with the ``PERFCOST_`` prefix."""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_cache_dir, user_data_dir
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PERFCOST_", extra="ignore")

    data_home: Path = Field(
        default_factory=lambda: Path(user_cache_dir("perfcost")) / "datasets",
        description="Cache directory for downloaded public datasets.",
    )
    data_mirror: Path | None = Field(
        default=None,
        description="Offline mirror laid out as <dataset>/<file>; used instead of downloading.",
    )
    bundled_data_dir: Path = Field(
        default=REPO_ROOT / "datasets",
        description="Directory holding the datasets this project measured itself.",
    )
    model_dir: Path = Field(
        default_factory=lambda: Path(user_data_dir("perfcost")) / "models",
        description="Model registry: one folder per model, one sub-folder per version.",
    )
    device_dir: Path | None = Field(
        default=None, description="Extra device descriptions (one JSON or YAML file per device)."
    )
    report_dir: Path = Field(
        default=Path("reports"), description="Where evaluation writes metrics and plots."
    )

    train_missing: bool = Field(
        default=False,
        description="On start, train the default models the model directory lacks in a background process "
        "(python -m training.first_start; needs the training package), serving each as soon as it is "
        "published. perfcost serve turns it on.",
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)

    # Request limits and server timeouts: every one of them is set here.
    max_batch: int = Field(default=10_000, ge=1, description="Most instances one request may carry.")
    max_search_rows: int = Field(
        default=20_000,
        ge=1,
        description="Most GEMMs one search may predict (candidate devices x configurations x layers).",
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest request body accepted."
    )
    max_program_bytes: int = Field(
        default=1 << 20, ge=1024, description="Largest MLIR program (UTF-8 bytes) one instance may carry."
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="Time budget of one request; past it the answer is 503."
    )
    access_log: bool = Field(
        default=True, description="Log one line per request (client, method, path, status) to stdout."
    )
    opentelemetry: bool = Field(
        default=False,
        description="Let FastAPI send request traces, metrics and logs to the configured OpenTelemetry "
        "providers (Prometheus metrics at /metrics are always on).",
    )
    # Longer than the idle timeouts of common clients and proxies: a server that closes an idle connection
    # just as a client reuses it drops that request (64-client load here: 13 ReadErrors in 60 s at 5 s,
    # none at 75 s; nginx's default is also 75 s).
    keep_alive_s: int = Field(default=75, ge=1, description="Idle keep-alive connections close after this.")
    graceful_shutdown_s: int = Field(default=10, ge=1, description="In-flight requests get this to finish.")
    admin_token: SecretStr | None = Field(
        default=None, description="Token for POST /v1/admin/reload; reload is disabled when unset."
    )
    download_retries: int = Field(default=3, ge=0)
