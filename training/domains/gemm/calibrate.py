"""Stage: calibrate. ``perfcost calibrate gemm`` adapts the served GEMM model to a user's own device.

A user with a GPU the model never saw runs the shipped calibration sweep on it (``perfcost collect
gpu-gemm --sweep calibration``, at most 32 shapes, or any measurements CSV of theirs) and calls this
command: the newest published version is refit on its own training data plus those rows, and published
as a new version that the service loads like any other. The calibration rows themselves, with the sha256
of the file they came from, are written into the card, so that the version can be reproduced and a later
calibration keeps the earlier ones.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
from rich.console import Console

from service.core.devices import DeviceCatalog, DeviceError, DeviceSpec, read_device_file
from service.core.model import file_sha256
from service.core.registry import Refusal, newest_usable
from service.core.settings import Settings
from service.domains import DOMAINS
from service.domains.gemm import DOMAIN as GEMM
from service.domains.gemm.cards import GemmCard
from training.core.datasets import DatasetError
from training.core.publish import publish
from training.core.report import LoadReport
from training.domains.gemm.data import COLUMNS, GemmData, load_gemm, load_measurements
from training.domains.gemm.train import dataset_entry, fit_gemm, gemm_card, merged

log = logging.getLogger(__name__)


def latest_card(settings: Settings, name: str) -> GemmCard:
    """The card of the version the service serves (the registry's rule: the newest that loads)."""
    refused: list[Refusal] = []
    model = newest_usable(settings.model_dir, name, DOMAINS, refused)
    if model is None:
        why = "; ".join(f"version {r.version}: {r.reason}" for r in refused)
        raise DatasetError(
            f"no published {name!r} model in {settings.model_dir} that loads"
            + (f" ({why})" if why else ": run 'perfcost train gemm' first")
        )
    if model.meta is None or model.meta.domain != "gemm":
        raise DatasetError(f"model {name!r} version {model.version} is not a GEMM model")
    return model.typed_card(GemmCard)


def training_data(card: GemmCard, settings: Settings) -> list[GemmData]:
    """The datasets the version was trained on, reloaded (and checked) through the registry."""
    loaded = []
    for entry in card.datasets:
        try:
            data = load_gemm(entry["name"], settings)
        except DatasetError as exc:
            raise DatasetError(
                f"version {card.version} was trained on {entry['name']!r}, which cannot be reloaded "
                f"({exc}); retrain with 'perfcost train gemm' on data the registry knows, then calibrate"
            ) from exc
        recorded = {f["file"]: f["sha256"] for f in entry.get("files", [])}
        if recorded and recorded != {f["file"]: f["sha256"] for f in data.files}:
            raise DatasetError(
                f"{entry['name']}: the files on disk differ from those version {card.version} was "
                "trained on; retrain with 'perfcost train gemm' first"
            )
        loaded.append(data)
    return loaded


def calibration_frame(calibrations: list[dict[str, Any]]) -> pd.DataFrame:
    """Every calibration's rows, as stored in a card, in the normalised GEMM table."""
    frames = [pd.DataFrame.from_records(c["rows"]) for c in calibrations]
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    frame = pd.concat(frames, ignore_index=True)
    for col in COLUMNS:
        if col not in frame:
            frame[col] = np.nan
    return frame.loc[:, list(COLUMNS)]


def resolve_device(name: str | None, spec_file: Path | None, settings: Settings) -> DeviceSpec:
    if spec_file is not None:
        specs = read_device_file(spec_file)
        if len(specs) != 1:
            raise DeviceError(f"{spec_file}: describes {len(specs)} devices; give exactly one")
        if name is not None and specs[0].name != name:
            raise DeviceError(f"{spec_file}: describes {specs[0].name!r}, not --device {name!r}")
        return specs[0]
    if name is None:
        raise DeviceError("give --device (a catalog name) or --device-spec (a JSON/YAML device file)")
    return DeviceCatalog.default(settings.device_dir).get(name)


def calibrate_gemm_model(
    settings: Settings, device: DeviceSpec, measurements: Path, name: str = "gemm"
) -> tuple[str, int]:
    """Refit the newest version of ``name`` with the device's measurements added; returns the new
    version and the number of calibration rows."""
    started = time.perf_counter()
    card = latest_card(settings, name)
    loaded = training_data(card, settings)
    report = LoadReport(measurements.name)
    rows = load_measurements(measurements, device, report)
    report.rows = len(rows)
    report.log()
    rows = rows.assign(source=f"calibration:{measurements.name}")
    for col in COLUMNS:
        if col not in rows:
            rows[col] = np.nan
    rows = rows.loc[:, list(COLUMNS)]
    # A device calibrated again replaces its earlier rows; other devices' calibrations are kept.
    kept = [c for c in card.calibrations if c["device"] != device.name]
    frame, devices = merged(loaded)
    for spec in card.devices:
        devices.setdefault(spec.name, spec)
    devices[device.name] = device
    frame = pd.concat([frame, calibration_frame(kept), rows], ignore_index=True)
    fit = fit_gemm(frame, devices)
    this = {
        "device": device.name,
        "file": measurements.name,
        "sha256": file_sha256(measurements),
        "rejected": report.rejected,
        "rows": json.loads(rows.to_json(orient="records")),
    }
    new_card = gemm_card(
        frame,
        {d: devices[d] for d in sorted(frame["device"].unique())},
        [dataset_entry(d) for d in loaded],
        time.perf_counter() - started,
        calibrations=[*kept, this],
        calibrated_from=card.version,
    )
    path = publish(settings.model_dir, name, GEMM, new_card, fit.models)
    return path.name, len(rows)


def calibrate_gemm(
    measurements: Annotated[
        Path,
        typer.Option(
            "--from",
            exists=True,
            dir_okay=False,
            help="Your device's measurements CSV (m, n, k, runtime_ms; e.g. the calibration sweep's)",
        ),
    ],
    device: Annotated[str | None, typer.Option(help="The device's catalog name")] = None,
    device_spec: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="A JSON/YAML file describing a device the catalog lacks"
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Model name in the registry")] = "gemm",
) -> None:
    """Publish a new version of the GEMM model adapted to one device's measurements."""
    settings = Settings()
    try:
        spec = resolve_device(device, device_spec, settings)
    except DeviceError as exc:
        raise typer.BadParameter(str(exc), param_hint="--device / --device-spec") from exc
    try:
        version, rows = calibrate_gemm_model(settings, spec, measurements, name)
    except DatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--from") from exc
    Console().print(
        f"published [bold]{name}[/] version {version} calibrated on {rows} rows of {spec.name!r} "
        f"to {settings.model_dir / name / version}"
    )
