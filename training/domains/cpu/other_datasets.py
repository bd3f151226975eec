"""CPU evaluations on the two datasets the served model is not trained on, as outside checks of the method.

UCI computer hardware (209 CPUs, Ein-Dor & Feldmesser 1987: published relative performance "prp") is
scored against the authors' own linear-regression estimate "erp"; the NCPP sample of PerfCastDB (Sapphire
Rapids systems, one result per workload and test) against the mean of the same test in its training file.
Neither feeds a served model, so their features (:func:`uci_features`, :func:`ncpp_features`) live here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, train_test_split

from service.core.settings import Settings
from service.core.targets import halfwidth
from service.domains.cpu import features as cpu_features
from training.core.datasets import DatasetError
from training.core.metrics import COVERAGE, point_metrics, summarize
from training.core.models import CostRegressor
from training.domains.cpu.data import load_ncpp, load_uci_hardware

# ----------------------------------------------------------------------------------------------- UCI


def uci_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Six 1987 mainframe specs plus clock rate and memory/channel products (not served: evaluation only)."""
    out = frame.loc[:, ["myct", "mmin", "mmax", "cach", "chmin", "chmax"]].astype(float)
    mhz = 1000.0 / out["myct"]
    out["mhz"] = mhz
    out["mem_mid"] = (out["mmin"] + out["mmax"]) / 2
    out["mhz_x_mem"] = mhz * out["mem_mid"]
    out["mhz_x_cach"] = mhz * out["cach"]
    out["mhz_x_chmax"] = mhz * out["chmax"]
    out["vendor_code"] = [cpu_features.category_code(v) for v in frame["vendor_name"]]
    return out


def _uci_fit_predict(train: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str]:
    model = CostRegressor(n_splits=5).fit(uci_features(train), np.log(train["prp"].to_numpy()))
    center = model.predict(uci_features(test))
    return center, np.full(len(test), halfwidth(model.calibration_["seen"], COVERAGE)), model.best_name_


def evaluate_uci(settings: Settings, protocol: str) -> tuple[dict[str, Any], pd.DataFrame]:
    data = load_uci_hardware(settings)
    frame = data.frame
    if protocol == "random":
        train, test = train_test_split(frame, test_size=0.2, random_state=0)
        center, width, best = _uci_fit_predict(train, test)
        held = test.assign(center=center, width=width, model=best)
        n_train = len(train)
    elif protocol == "kfold":
        parts = []
        for train_idx, test_idx in KFold(10, shuffle=True, random_state=0).split(frame):
            train, test = frame.iloc[train_idx], frame.iloc[test_idx]
            center, width, best = _uci_fit_predict(train, test)
            parts.append(test.assign(center=center, width=width, model=best))
        held = pd.concat(parts)
        n_train = int(len(frame) * 0.9)
    else:
        raise DatasetError(
            f"unknown protocol {protocol!r} for uci-computer-hardware; choose from random, kfold"
        )
    predictions = pd.DataFrame(
        {
            "target": "prp",
            "suite": "prp",
            "column": "prp",
            "model": held["model"].to_numpy(),
            "vendor": held["vendor_name"].to_numpy(),
            "family": held["vendor_name"].to_numpy(),
            "true": held["prp"].to_numpy(),
            "pred": np.exp(held["center"].to_numpy()),
            "low": np.exp(held["center"].to_numpy() - held["width"].to_numpy()),
            "high": np.exp(held["center"].to_numpy() + held["width"].to_numpy()),
            "erp": held["erp"].to_numpy(),
        }
    )
    header = {"dataset": "uci-computer-hardware", "protocol": protocol, "n_train": n_train}
    metrics = summarize(predictions, {**header, "n_test": len(predictions)}, [])
    # 209 CPUs of some 30 vendors: per-vendor figures would rest on a few rows each, so the report has none.
    metrics.pop("groups")
    ours = metrics["targets"]["prp"]
    erp = point_metrics(predictions["true"].to_numpy(), predictions["erp"].to_numpy())
    metrics["baseline"] = {"erp": erp}
    metrics["acceptance"] = {"prp": {"pass": ours["mape"] <= erp["mape"] / 2, "bar": "MAPE ≤ half of ERP's"}}
    return metrics, predictions


# ---------------------------------------------------------------------------------------------- NCPP

NCPP_EXTRA = ("allcore_ghz", "tdp_w", "power_freq_mhz", "dimm_total_gb", "hbm_gb")


def ncpp_features(frame: pd.DataFrame) -> pd.DataFrame:
    """The CPU feature module's columns, the SPR-only extras, and the workload and test as codes."""
    out = cpu_features.build_features(frame)
    for col in NCPP_EXTRA:
        out[col] = frame[col].to_numpy(dtype=float)
    out["workload_code"] = [cpu_features.category_code(v) for v in frame["workload"]]
    out["test_code"] = [cpu_features.category_code(v) for v in frame["test"]]
    return out


def _ncpp_baseline(train: pd.DataFrame, frame: pd.DataFrame) -> np.ndarray:
    """Mean log value of the same test in the training file (else of its workload, else overall).

    Values span 1 ns to 2 TB/s, so the model learns each row's deviation from its test's level instead.
    """
    logs = np.log(train["value"])
    by_test = logs.groupby([train["workload"], train["test"]]).mean()
    by_workload = logs.groupby(train["workload"]).mean()
    out = []
    for workload, test in zip(frame["workload"], frame["test"], strict=True):
        if (workload, test) in by_test.index:
            out.append(by_test[(workload, test)])
        else:
            out.append(by_workload.get(workload, float(logs.mean())))
    return np.asarray(out, dtype=float)


def evaluate_ncpp(settings: Settings, protocol: str) -> tuple[dict[str, Any], pd.DataFrame]:
    if protocol != "train-test":
        raise DatasetError(f"unknown protocol {protocol!r} for ncpp-spr; its only protocol is train-test")
    data = load_ncpp(settings)
    train, test = data["train_data.csv"].frame, data["test_data.csv"].frame
    base_train, base_test = _ncpp_baseline(train, train), _ncpp_baseline(train, test)
    model = CostRegressor(n_splits=5).fit(
        ncpp_features(train), np.log(train["value"].to_numpy()) - base_train
    )
    center = model.predict(ncpp_features(test)) + base_test
    width = halfwidth(model.calibration_["seen"], COVERAGE)
    true = test["value"].to_numpy()
    pred = np.exp(center)
    ape = np.abs(pred - true) / true
    baseline_ape = np.abs(np.exp(base_test) - true) / true
    metrics: dict[str, Any] = {
        "dataset": "ncpp-spr",
        "protocol": protocol,
        "n_train": len(train),
        "n_test": len(test),
        "targets": {"value": {"model": model.best_name_, **_ncpp_value(true, center, width)}},
        "baseline": {
            "train_mean_of_test": {
                "mape": float(baseline_ape.mean()),
                "within_3pct": float(np.mean(baseline_ape <= 0.03)),
                "within_5pct": float(np.mean(baseline_ape <= 0.05)),
            }
        },
        "groups": _ncpp_workloads(test, ape),
        "unseen_tests": _ncpp_unseen_tests(train, test),
    }
    predictions = pd.DataFrame(
        {
            "target": "value",
            "suite": test["workload"].to_numpy(),
            "column": test["test"].to_numpy(),
            "model": model.best_name_,
            "true": true,
            "pred": pred,
        }
    )
    return metrics, predictions


def _ncpp_value(true: np.ndarray, center: np.ndarray, width: float) -> dict[str, Any]:
    """Held-out figures of the one target: point metrics, interval coverage, APE quantiles."""
    pred = np.exp(center)
    ape = np.abs(pred - true) / true
    return {
        **point_metrics(true, pred),
        "interval_coverage_90": float(
            np.mean((true >= np.exp(center - width)) & (true <= np.exp(center + width)))
        ),
        "p50_ape": float(np.quantile(ape, 0.5)),
        "p95_ape": float(np.quantile(ape, 0.95)),
        "p99_ape": float(np.quantile(ape, 0.99)),
        "within_3pct": float(np.mean(ape <= 0.03)),
        "within_5pct": float(np.mean(ape <= 0.05)),
        "n_test": len(true),
    }


def _ncpp_workloads(test: pd.DataFrame, ape: np.ndarray) -> dict[str, Any]:
    """The error per workload, keyed ``workload:<name>``."""
    groups = {}
    for workload, idx in test.groupby("workload").groups.items():
        part = ape[test.index.get_indexer(idx)]
        groups[f"workload:{workload}"] = {
            "value": {
                "mape": float(part.mean()),
                "median_ape": float(np.median(part)),
                "n_test": len(part),
                "within_5pct": float(np.mean(part <= 0.05)),
            }
        }
    return groups


def _ncpp_unseen_tests(train: pd.DataFrame, test: pd.DataFrame) -> list[str]:
    """The ``workload/test`` pairs of the test file the training file never ran."""
    seen_tests = set(zip(train["workload"], train["test"], strict=True))
    return sorted(
        {f"{w}/{t}" for w, t in zip(test["workload"], test["test"], strict=True)}
        - {f"{w}/{t}" for w, t in seen_tests}
    )
