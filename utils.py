"""Shared pieces of the SCA2LSTM toolkit: configuration, errors, logging, run folders,
checkpoints, devices and the hydrological metrics.

Nothing here runs at import. Every stage script imports what it needs, e.g.::

    from utils import load_config, compute_metrics
    config = load_config(stage="fine_tune", overrides=["LR=5.0e-5"])
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import logging
import math
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

try:
    import numpy as np
    import yaml
except ModuleNotFoundError as _missing:
    if __name__ != "__main__":
        raise
    # `python utils.py --check_env` in an environment that lacks even these two.
    _dist = {"yaml": "PyYAML"}.get(_missing.name, _missing.name)
    sys.exit(
        f"error: the toolkit cannot run: {_dist} is missing, install it with pip install {_dist}"
    )

ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = ROOT / "run.config"
STAGES = ("pretrain", "fine_tune", "predict", "pso_lstm", "data_process")
CHECKPOINT_FORMAT = 1
CAMELS_GB_DOI = "10.5285/8344e4f3-d2ea-44f5-8afa-86d2987543a9"

log = logging.getLogger("sca2lstm")


# --------------------------------------------------------------------------- errors


class UserError(Exception):
    """A problem with the user's input: reported as one message, exit code 2, no traceback."""


def run_cli(main: Callable[[Sequence[str] | None], Any]) -> None:
    """Run a script's ``main`` and turn a :class:`UserError` into a message and exit code 2."""
    try:
        main(None)
    except UserError as err:
        logging.getLogger("sca2lstm").handlers.clear()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            "interrupted: completed files are intact; partial ones were not kept", file=sys.stderr
        )
        sys.exit(130)


# --------------------------------------------------------------------------- configuration

# Types of every key run.config may hold. The defaults themselves live in run.config only.
SCHEMA: dict[str, type | tuple[type, ...]] = {
    "DATA_DIR": (str, type(None)),
    "INPUT_DIR": str,
    "OUTPUT_DIR": str,
    "MODE": str,
    "DYNAMIC_INPUTS": list,
    "FUTURE_INPUTS": (list, type(None)),
    "TARGET": str,
    "STATIC_ATTRIBUTES": list,
    "STATIC_CLAMP": (float, type(None)),
    "TRAIN_START": str,
    "TRAIN_END": str,
    "VAL_START": str,
    "VAL_END": str,
    "TEST_START": str,
    "TEST_END": str,
    "TRAIN_BASINS": list,
    "VAL_BASINS": list,
    "TEST_BASINS": list,
    "SEQ_LEN": int,
    "PRED_LEN": int,
    "LSTM_HIDDEN_DIM": int,
    "DROPOUT": float,
    "EMBEDDING_DIM": int,
    "NUM_LAYERS": int,
    "PREDICT_LAST_N": int,
    "HORIZON_WEIGHTS": (list, type(None)),
    "MODEL_SIZE": (str, type(None)),
    "MODEL_SIZES": dict,
    "SEED": int,
    "BATCH_SIZE": int,
    "BATCH_SIZE_GPU": int,
    "N_EPOCHS": int,
    "SAMPLES_PER_EPOCH": int,
    "LR": float,
    "LR_GPU": float,
    "PATIENCE": int,
    "WARMUP_STEPS": int,
    "GRADIENT_CLIP": float,
    "WEIGHT_DECAY": float,
    "EMA_DECAY": (float, type(None)),
    "GRADIENT_ACCUMULATION": int,
    "FINE_TUNE_RATIO": float,
    "USE_COMPILE": bool,
    "BACKEND": str,
    "MIXED_PRECISION": bool,
    "CUDA_VISIBLE_DEVICES": str,
    "CUDA_MEMORY_FRACTION": float,
    "CUDA_DETERMINISTIC": bool,
    "GRADIENT_CHECKPOINTING": bool,
    "DATA_PATH": str,
    "NUM_WORKERS": int,
    "PIN_MEMORY": bool,
    "PREFETCH_FACTOR": int,
    "PERSISTENT_WORKERS": bool,
    "NUM_THREADS": int,
    "FLUSH_DENORMAL": bool,
    "PSO_N_PARTICLES": int,
    "PSO_ITERS": int,
    "PSO_EPOCHS": int,
    "PSO_C1": float,
    "PSO_C2": float,
    "PSO_W": float,
    "PSO_INPUTS": str,
    "PSO_BOUNDS": dict,
    "ENABLE_HYPEROPT": bool,
    "N_TRIALS": int,
    "OPTUNA_TIMEOUT": (float, type(None)),
    "OPTUNA_PRUNING": bool,
    "OPTUNA_STUDY_NAME": (str, type(None)),
    "OPTUNA_STORAGE": (str, type(None)),
    "OPTUNA_HEARTBEAT_INTERVAL": int,
    "OPTUNA_TPE": dict,
    "OPTUNA_MEDIAN_PRUNER": dict,
    "HYPEROPT_SPACE": dict,
}
# Settings of optuna.samplers.TPESampler and optuna.pruners.MedianPruner that run.config writes
# out (Optuna 5 changed TPE defaults, so the search never relies on them), with their types.
OPTUNA_TPE_KEYS = {
    "n_startup_trials": int,
    "n_ei_candidates": int,
    "multivariate": bool,
    "group": bool,
    "constant_liar": bool,
}
OPTUNA_PRUNER_KEYS = {
    "n_startup_trials": int,
    "n_warmup_steps": int,
    "interval_steps": int,
    "n_min_trials": int,
}
PSO_DIMENSIONS = (
    "time_steps",
    "hidden_size",
    "batch_size",
    "learning_rate",
    "dropout",
    "num_layers",
)
BASIN_KEYS = ("TRAIN_BASINS", "VAL_BASINS", "TEST_BASINS")

# Keys that describe the model's inputs, windows, size, periods and basin lists: they come from the
# checkpoint, never from the current run (the weights and scalers only make sense with them).
MODEL_KEYS = (
    "MODE",
    "DYNAMIC_INPUTS",
    "FUTURE_INPUTS",
    "TARGET",
    "STATIC_ATTRIBUTES",
    "SEQ_LEN",
    "PRED_LEN",
    "PREDICT_LAST_N",
    "LSTM_HIDDEN_DIM",
    "DROPOUT",
    "EMBEDDING_DIM",
    "NUM_LAYERS",
    "TRAIN_START",
    "TRAIN_END",
    "VAL_START",
    "VAL_END",
    "TEST_START",
    "TEST_END",
    "TRAIN_BASINS",
    "VAL_BASINS",
    "TEST_BASINS",
)
MODEL_SIZE_KEYS = ("LSTM_HIDDEN_DIM", "NUM_LAYERS", "EMBEDDING_DIM")
PERIODS = {
    "train": ("TRAIN_START", "TRAIN_END"),
    "validation": ("VAL_START", "VAL_END"),
    "test": ("TEST_START", "TEST_END"),
}


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"config file {path} not found; pass an existing YAML file to --config"
        ) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML ({err}); fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold KEY: value pairs at its top level")
    return data


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check ``value`` against SCHEMA[key]; convert the harmless cases (int -> float, '1e-3')."""
    if key not in SCHEMA:
        close = [k for k in SCHEMA if k.startswith(key[:3].upper())]
        hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
        raise UserError(f"unknown config key {key!r} in {source}{hint}; see run.config for keys")
    expected = SCHEMA[key]
    types = expected if isinstance(expected, tuple) else (expected,)
    if float in types and isinstance(value, str):
        try:
            value = float(value)  # PyYAML reads 1e-3 as a string
        except ValueError:
            pass
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, dt.date) and str in types:
        value = value.isoformat()  # YAML reads 1990-01-01 as a date
    if str in types and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # --set CUDA_VISIBLE_DEVICES=0 reads as an int
    if key in BASIN_KEYS and isinstance(value, list):
        value = [str(v) for v in value]
    if key in ("DYNAMIC_INPUTS", "STATIC_ATTRIBUTES", "FUTURE_INPUTS") and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if key == "HORIZON_WEIGHTS" and isinstance(value, str):
        value = parse_horizon_weights(value)
    if key == "HORIZON_WEIGHTS" and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [float(value)]  # --set HORIZON_WEIGHTS=1.0 with PRED_LEN 1
    if key in BASIN_KEYS and isinstance(value, (str, int)):
        value = [v.strip() for v in str(value).split(",") if v.strip()]
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise UserError(f"config key {key} in {source} must be {names}, got {value!r}")
    return value


def coerce_value(key: str, value: Any, source: str) -> Any:
    """Check one value of config key ``key`` against its type (as load_config does).

    Raises
    ------
    UserError
        An unknown key or a value of the wrong type; the message names ``source``.
    """
    return _coerce(key, value, source)


def _merge(config: dict, data: dict, source: str) -> None:
    for key, value in data.items():
        if key in STAGES:
            continue
        config[key] = _coerce(key, value, source)


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``--set KEY=VALUE`` items; values are read as YAML scalars or lists."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r} is not KEY=VALUE; write e.g. --set LR=5.0e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out


def explicit_keys(
    config_file: str | Path | None,
    overrides: Iterable[str] = (),
    flags: dict[str, Any] | None = None,
    stage: str | None = None,
) -> set[str]:
    """Config keys the user set on purpose for this call: by flag, ``--set`` or ``--config``.

    Parameters
    ----------
    config_file : str or Path, optional
        The ``--config`` file; its top level and its ``stage`` section count.
    overrides : iterable of str
        ``--set KEY=VALUE`` items.
    flags : dict, optional
        Dedicated flags as passed to :func:`load_config`; those not given (None) do not count.
    stage : str, optional
        The running stage.
    """
    keys = set(parse_set(overrides)) | {k for k, v in (flags or {}).items() if v is not None}
    if config_file:
        data = _read_yaml(Path(config_file))
        keys |= {k for k in data if k not in STAGES}
        if stage:
            keys |= set(data.get(stage) or {})
    return keys


def load_config(
    path: str | Path | None = None,
    stage: str | None = None,
    overrides: Iterable[str] | dict | None = None,
    flags: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Resolve the configuration.

    Parameters
    ----------
    path : str or Path, optional
        A YAML file laid over run.config (same keys; may be partial and have stage sections).
    stage : str, optional
        One of ``STAGES``; its section of each file overrides the top level.
    overrides : list of "KEY=VALUE" or dict, optional
        ``--set`` values.
    flags : dict, optional
        Values of dedicated command-line flags, applied last; None values are skipped.

    Returns
    -------
    dict
        Upper-case keys to validated values (plain Python types only).

    Raises
    ------
    UserError
        Unknown keys, wrong types or impossible values.
    """
    if stage is not None and stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    config: dict[str, Any] = {}
    sources = [DEFAULT_CONFIG] + ([Path(path)] if path else [])
    for src in sources:
        data = _read_yaml(src)
        for section in set(data) & set(STAGES):
            if not isinstance(data[section] or {}, dict):
                raise UserError(f"section {section!r} of {src} must hold KEY: value pairs")
        _merge(config, data, str(src))
        if stage and data.get(stage):
            _merge(config, data[stage], f"{src} [{stage}]")
    missing = sorted(set(SCHEMA) - set(config))
    if missing:
        raise UserError(f"{DEFAULT_CONFIG} lacks keys {missing}; restore them from the repository")
    if overrides:
        items = overrides if isinstance(overrides, dict) else parse_set(overrides)
        if set(items) & set(STAGES):
            raise UserError("--set sets keys, not sections; write e.g. --set LR=1.0e-4")
        _merge(config, items, "--set")
    if flags:
        _merge(config, {k: v for k, v in flags.items() if v is not None}, "command-line flags")
    apply_model_size(config)
    validate_config(config)
    return config


def _check_model_sizes(presets: dict) -> None:
    for name, preset in presets.items():
        if not isinstance(preset, dict) or set(preset) != set(MODEL_SIZE_KEYS):
            raise UserError(
                f"MODEL_SIZES.{name} must set exactly {', '.join(MODEL_SIZE_KEYS)}, got {preset!r}"
            )
        for key, value in preset.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"MODEL_SIZES.{name}.{key} must be an integer >= 1, got {value!r}")


def apply_model_size(config: dict[str, Any]) -> None:
    """Replace LSTM_HIDDEN_DIM, NUM_LAYERS and EMBEDDING_DIM by the MODEL_SIZES preset that
    MODEL_SIZE names (in place); MODEL_SIZE null keeps the three keys as given.

    Raises
    ------
    UserError
        An unknown preset name or a malformed MODEL_SIZES table.
    """
    _check_model_sizes(config["MODEL_SIZES"])
    name = config["MODEL_SIZE"]
    if name is None:
        return
    if name not in config["MODEL_SIZES"]:
        raise UserError(
            f"MODEL_SIZE {name!r} is not a preset; choose one of "
            f"{', '.join(config['MODEL_SIZES'])} (MODEL_SIZES in run.config) or null"
        )
    config.update(config["MODEL_SIZES"][name])


def to_day(value: str, what: str) -> np.datetime64:
    """A YYYY-MM-DD date as datetime64[D]; ``what`` names the key or flag in the error.

    Raises
    ------
    UserError
        Not a date of the calendar (``1970-11-31`` included).
    """
    try:
        return np.datetime64(dt.date.fromisoformat(str(value).strip()), "D")
    except ValueError:
        raise UserError(f"{what} {value!r} is not a date; write it as YYYY-MM-DD") from None


def validate_config(config: dict[str, Any]) -> None:
    """Check values that a type alone cannot (ranges, choices, dates); raise UserError."""
    if config["MODE"] not in ("forecast", "simulate"):
        raise UserError(f"MODE must be 'forecast' or 'simulate', got {config['MODE']!r}")
    for key in (
        "SEQ_LEN",
        "PRED_LEN",
        "LSTM_HIDDEN_DIM",
        "EMBEDDING_DIM",
        "NUM_LAYERS",
        "BATCH_SIZE",
        "BATCH_SIZE_GPU",
        "N_EPOCHS",
        "GRADIENT_ACCUMULATION",
        "PREDICT_LAST_N",
        "PSO_N_PARTICLES",
        "PSO_ITERS",
        "PSO_EPOCHS",
        "PREFETCH_FACTOR",
    ):
        if config[key] < 1:
            raise UserError(f"{key} must be at least 1, got {config[key]}")
    for key in ("PATIENCE", "WARMUP_STEPS", "NUM_WORKERS", "SAMPLES_PER_EPOCH", "NUM_THREADS"):
        if config[key] < 0:
            raise UserError(f"{key} must be 0 or more, got {config[key]}")
    for key in ("PSO_C1", "PSO_C2", "PSO_W"):
        if not config[key] >= 0:
            raise UserError(f"{key} must be 0 or more, got {config[key]}")
    if not config["WEIGHT_DECAY"] >= 0:  # also NaN
        raise UserError(f"WEIGHT_DECAY must be 0 or more, got {config['WEIGHT_DECAY']}")
    for key in ("LR", "LR_GPU"):
        if not config[key] > 0:
            raise UserError(f"{key} must be positive, got {config[key]}")
    if config["STATIC_CLAMP"] is not None and config["STATIC_CLAMP"] < 0:
        raise UserError(
            f"STATIC_CLAMP must be 0 or more, or null for no clamp; got {config['STATIC_CLAMP']}"
        )
    if config["EMA_DECAY"] is not None and not 0 < config["EMA_DECAY"] < 1:
        raise UserError(
            f"EMA_DECAY must be strictly between 0 and 1, or null for no weight averaging; "
            f"got {config['EMA_DECAY']}"
        )
    if not 0 <= config["DROPOUT"] < 1:
        raise UserError(f"DROPOUT must be in [0, 1), got {config['DROPOUT']}")
    if not 0 < config["FINE_TUNE_RATIO"] < 1:
        raise UserError(
            f"FINE_TUNE_RATIO (--fine_tune_ratio) must be strictly between 0 and 1, "
            f"got {config['FINE_TUNE_RATIO']}"
        )
    if not 0 < config["CUDA_MEMORY_FRACTION"] <= 1:
        raise UserError(
            f"CUDA_MEMORY_FRACTION must be in (0, 1], got {config['CUDA_MEMORY_FRACTION']}"
        )
    _check_model_sizes(config["MODEL_SIZES"])
    if config["MODEL_SIZE"] is not None and config["MODEL_SIZE"] not in config["MODEL_SIZES"]:
        raise UserError(
            f"MODEL_SIZE {config['MODEL_SIZE']!r} is not a preset of MODEL_SIZES "
            f"({', '.join(config['MODEL_SIZES'])}) or null"
        )
    if config["DATA_PATH"] not in ("resident", "stream"):
        raise UserError(f"DATA_PATH must be 'resident' or 'stream', got {config['DATA_PATH']!r}")
    if config["PSO_INPUTS"] not in ("q", "forcings+q", "forcings"):
        raise UserError(
            f"PSO_INPUTS must be q, forcings+q or forcings, got {config['PSO_INPUTS']!r}"
        )
    if config["MODE"] == "simulate" and config["PRED_LEN"] != 1:
        raise UserError(
            "PRED_LEN applies to forecast mode; simulate mode predicts Q_t (PRED_LEN=1)"
        )
    if config["PREDICT_LAST_N"] > config["SEQ_LEN"]:
        raise UserError(
            f"PREDICT_LAST_N={config['PREDICT_LAST_N']} exceeds SEQ_LEN={config['SEQ_LEN']}"
        )
    if config["MODE"] == "forecast" and config["PREDICT_LAST_N"] != 1:
        raise UserError(
            "PREDICT_LAST_N applies to simulate mode only; set it to 1 in forecast mode"
        )
    for name, (k_start, k_end) in PERIODS.items():
        start, end = to_day(config[k_start], f"{k_start}="), to_day(config[k_end], f"{k_end}=")
        if end < start:
            raise UserError(f"the {name} period ends ({end}) before it starts ({start})")
    for key in BASIN_KEYS:
        for basin in config[key]:
            if not basin.isdigit():
                raise UserError(f"{key} holds {basin!r}, which is not a CAMELS-GB gauge id")
    dynamic = config["DYNAMIC_INPUTS"]
    if not dynamic or not all(isinstance(v, str) for v in dynamic):
        raise UserError("DYNAMIC_INPUTS must be a non-empty list of column names")
    # [] is allowed: the embedding is then a learned constant (see SCA2LSTM).
    if not all(isinstance(v, str) for v in config["STATIC_ATTRIBUTES"]):
        raise UserError("STATIC_ATTRIBUTES must be a list of column names ([] for none)")
    _check_future_inputs(config)
    check_horizon_weights(config["HORIZON_WEIGHTS"], config)
    _validate_pso_bounds(config["PSO_BOUNDS"])
    _validate_hyperopt(config)


def _validate_pso_bounds(bounds: dict) -> None:
    """PSO_BOUNDS: known dimensions, each [lower, upper] numbers with lower <= upper."""
    unknown = set(bounds) - set(PSO_DIMENSIONS)
    if unknown:
        raise UserError(
            f"PSO_BOUNDS has unknown dimensions {sorted(unknown)}; use {PSO_DIMENSIONS}"
        )
    for dim, pair in bounds.items():
        if not (isinstance(pair, list) and len(pair) == 2):
            raise UserError(f"PSO_BOUNDS.{dim} must be [lower, upper], got {pair!r}")
        try:
            lo, hi = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise UserError(f"PSO_BOUNDS.{dim} must hold two numbers, got {pair!r}") from None
        problem = pso_bounds_problem(dim, lo, hi)
        if problem:
            raise UserError(f"PSO_BOUNDS.{dim} [{lo:g}, {hi:g}]: {problem}")


# The PSO dimensions that take whole numbers (the others are real-valued).
PSO_INTEGER_DIMENSIONS = frozenset({"time_steps", "hidden_size", "batch_size", "num_layers"})


def pso_bounds_problem(dim: str, lo: float, hi: float) -> str | None:
    """What makes ``[lo, hi]`` impossible bounds of PSO dimension ``dim`` (None: they are fine).

    The one rule for PSO_BOUNDS in a config, ``--bounds_<dim>`` and the search space.
    """
    if lo > hi:
        return "the lower bound is above the upper bound; write LO,HI"
    if dim in PSO_INTEGER_DIMENSIONS and not (
        float(lo).is_integer() and float(hi).is_integer() and lo >= 1
    ):
        return f"{dim} takes whole numbers of at least 1"
    if dim == "learning_rate" and lo <= 0:
        return "the learning rate must be positive"
    if dim == "dropout" and not (0 <= lo and hi < 1):
        return "dropout must lie in [0, 1)"
    return None


def _validate_hyperopt(config: dict[str, Any]) -> None:
    """The search keys; hyperopt.parse_space checks HYPEROPT_SPACE entry by entry."""
    if config["N_TRIALS"] < 1:
        raise UserError(
            f"N_TRIALS (--n_trials) must be at least 1, got {config['N_TRIALS']}: it is the "
            "number of trials the study runs"
        )
    timeout = config["OPTUNA_TIMEOUT"]
    if timeout is not None and not timeout > 0:
        raise UserError(
            f"OPTUNA_TIMEOUT (--optuna_timeout) must be a positive number of seconds, or null "
            f"for no time limit; got {timeout}"
        )
    if config["OPTUNA_HEARTBEAT_INTERVAL"] < 1:
        raise UserError(
            f"OPTUNA_HEARTBEAT_INTERVAL must be at least 1 second, "
            f"got {config['OPTUNA_HEARTBEAT_INTERVAL']}"
        )
    name = config["OPTUNA_STUDY_NAME"]
    if name is not None and (not name or not all(c.isalnum() or c in "-_." for c in name)):
        raise UserError(
            f"OPTUNA_STUDY_NAME (--study_name) {name!r} may hold only letters, digits, '-', '_' "
            "and '.' (it names the study folder)"
        )
    tables = (("OPTUNA_TPE", OPTUNA_TPE_KEYS), ("OPTUNA_MEDIAN_PRUNER", OPTUNA_PRUNER_KEYS))
    for key, allowed in tables:
        table = config[key]
        if set(table) != set(allowed):
            raise UserError(f"{key} must set exactly {', '.join(allowed)}; got {sorted(table)}")
        for name_, kind in allowed.items():
            value = table[name_]
            if type(value) is not kind or (kind is int and value < 0):
                what = "an integer >= 0" if kind is int else "true or false"
                raise UserError(f"{key}.{name_} must be {what}, got {value!r}")
    if config["OPTUNA_MEDIAN_PRUNER"]["interval_steps"] < 1:
        raise UserError("OPTUNA_MEDIAN_PRUNER.interval_steps must be at least 1")
    for key, entry in config["HYPEROPT_SPACE"].items():
        if not isinstance(entry, dict):
            raise UserError(
                f"HYPEROPT_SPACE.{key} must be a table such as {{choices: [16, 32]}} or "
                f"{{low: 1.0e-4, high: 1.0e-2, log: true}}, got {entry!r}"
            )


def _check_future_inputs(config: dict[str, Any]) -> None:
    """FUTURE_INPUTS: null (all DYNAMIC_INPUTS), [] or some DYNAMIC_INPUTS; never discharge."""
    value = config["FUTURE_INPUTS"]
    if value is None:
        value = config["DYNAMIC_INPUTS"]
    if not all(isinstance(v, str) for v in value):
        raise UserError(f"FUTURE_INPUTS must be a list of column names, got {value!r}")
    leaky = [v for v in value if "discharge" in v or v == config["TARGET"]]
    if leaky:
        raise UserError(
            f"FUTURE_INPUTS holds {', '.join(leaky)}: discharge and its missing flag are never "
            "known past the forecast day; list forcings only (or [] for none)"
        )
    unknown = [v for v in value if v not in config["DYNAMIC_INPUTS"]]
    if unknown:
        raise UserError(
            f"FUTURE_INPUTS holds {', '.join(unknown)}, which is not in DYNAMIC_INPUTS "
            f"({', '.join(config['DYNAMIC_INPUTS'])}); list dynamic inputs only"
        )
    if len(set(value)) != len(value):
        raise UserError(f"FUTURE_INPUTS lists a channel twice: {value!r}")


def parse_horizon_weights(text: str) -> list[float]:
    """``--horizon_weights "1.5,1.5,1.2"`` as a list of floats ('null' or '' for uniform: [])."""
    items = [t.strip() for t in str(text).replace(" ", ",").split(",") if t.strip()]
    values = []
    for item in items:
        try:
            values.append(float(item))
        except ValueError:
            raise UserError(
                f"--horizon_weights / HORIZON_WEIGHTS: {item!r} is not a number; give PRED_LEN "
                'comma-separated numbers, e.g. "1.5,1.2,1.0"'
            ) from None
    return values


def check_horizon_weights(weights: list | None, config: dict[str, Any]) -> None:
    """HORIZON_WEIGHTS: null, or PRED_LEN finite numbers >= 0, not all 0 (forecast mode).

    Raises
    ------
    UserError
        A wrong count, a negative, non-numeric or non-finite value, or weights in simulate mode.
    """
    if weights is None:
        return
    where = "HORIZON_WEIGHTS (--horizon_weights)"
    if config["MODE"] != "forecast":
        raise UserError(f"{where} weights the forecast lead days; simulate mode takes null")
    bad = [w for w in weights if isinstance(w, bool) or not isinstance(w, (int, float))]
    if bad:
        raise UserError(f"{where} holds {bad[0]!r}, which is not a number")
    if len(weights) != config["PRED_LEN"]:
        raise UserError(
            f"{where} has {len(weights)} value(s) but PRED_LEN is {config['PRED_LEN']}: give one "
            "weight per lead day, or null for uniform weights"
        )
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights) > 0:
        raise UserError(
            f"{where} must hold finite values >= 0 (not all 0), got {list(weights)}; they are "
            "normalised to mean 1"
        )


def normalised_horizon_weights(weights: list | None) -> tuple[float, ...] | None:
    """HORIZON_WEIGHTS scaled to mean 1 (None stays None: uniform)."""
    if weights is None:
        return None
    mean = sum(weights) / len(weights)
    return tuple(float(w) / mean for w in weights)


def period(config: dict, name: str) -> tuple[np.datetime64, np.datetime64]:
    """(start, end) of period ``name`` (train, validation, test) as datetime64[D]."""
    k_start, k_end = PERIODS[name]
    return np.datetime64(config[k_start], "D"), np.datetime64(config[k_end], "D")


def add_common_args(
    parser: argparse.ArgumentParser, device: bool = True, output_dir: bool = True
) -> None:
    """Add the flags every stage shares: --config, --set, --data_dir, --output_dir, --device and
    --check_env (the environment report, which exits before anything else runs)."""
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--config", help="YAML file laid over run.config (same keys, may be partial)"
    )
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one run.config key (repeatable), e.g. --set SEQ_LEN=365",
    )
    group.add_argument(
        "--data_dir",
        help="CAMELS-GB folder (default: DATA_DIR, else $CAMELS_GB_DIR, else datasets/CAMELS_GB)",
    )
    if output_dir:
        group.add_argument("--output_dir", help="where run folders are written (OUTPUT_DIR)")
    if device:
        group.add_argument(
            "--device",
            default="auto",
            help="auto | cpu | cuda | cuda:N; an unavailable device is an error unless auto",
        )
        group.add_argument(
            "--threads",
            type=int,
            metavar="N",
            help="PyTorch CPU threads of this process (NUM_THREADS; 0: PyTorch's default)",
        )
    group.add_argument("--check_env", action=CheckEnvAction)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with real defaults only: a flag whose default comes from run.config shows that
    value (see :func:`show_config_defaults`), never ``(default: None)``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in (
            action.help or ""
        ):
            return action.help or ""
        return super()._get_help_string(action)


def show_config_defaults(parser: argparse.ArgumentParser, stage: str) -> None:
    """Append the run.config value (with the stage's section) to each config-backed flag's help.

    A flag is config-backed when its help names a run.config key (the first upper-case key in
    it) and it has no default of its own; the value shown is what the stage uses when the flag
    is left out and no --config/--set changes it.
    """
    defaults = load_config(stage=stage)
    for action in parser._actions:
        if action.default is not None or action.nargs == 0 or not action.help:
            continue
        named = re.findall(r"\b[A-Z][A-Z0-9_]+\b", action.help)
        key = next((k for k in named if k in SCHEMA), None)
        if key is not None:
            value = defaults[key]
            shown = ",".join(map(str, value)) if isinstance(value, list) else value
            action.help += f" (run.config: {'null' if shown is None else shown})"


def csv_list(text: str) -> list[str]:
    """argparse type for comma-separated lists such as ``--basin_id 22001,22006``."""
    items = [t.strip() for t in text.replace(" ", ",").split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def iso_date(text: str) -> np.datetime64:
    """argparse type for a YYYY-MM-DD date, as datetime64[D]."""
    try:
        return to_day(text, "")
    except UserError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; write YYYY-MM-DD") from None


def positive_int(text: str) -> int:
    """argparse type for an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# --------------------------------------------------------------------------- logging, progress


def setup_logging(log_file: Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to stdout and, when given, to ``log_file``; returns the toolkit's logger."""
    logger = logging.getLogger("sca2lstm")
    logger.setLevel(level)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    if not any(getattr(h, "_sca2lstm_stdout", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(fmt)
        handler._sca2lstm_stdout = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    if log_file is not None:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    else:
        _SAID.clear()  # a new run (a stage's main) hears each note once more
    return logger


_SAID: set[str] = set()


def log_once(message: str, *args: Any) -> None:
    """``log.info`` a note once per run (from one ``setup_logging()`` to the next), however often
    it is asked for."""
    text = message % args if args else message
    if text not in _SAID:
        _SAID.add(text)
        log.info(text)


def synthetic_tag(synthetic: bool) -> str:
    """The tag of plot titles and log lines from synthetic demo data ("" for CAMELS-GB)."""
    return "  [SYNTHETIC DATA]" if synthetic else ""


def mark_synthetic(table, synthetic: bool):
    """Put a first column ``data = SYNTHETIC`` in a score table from demo data (in place)."""
    if synthetic and table is not None and len(table) and "data" not in table:
        table.insert(0, "data", "SYNTHETIC")
    return table


def warn_synthetic(synthetic: bool, what: str = "the data") -> None:
    """The one warning that scores on synthetic demo data say nothing about real catchments."""
    if synthetic:
        log.warning(
            "%s holds SYNTHETIC demo data, not CAMELS-GB; scores say nothing about real catchments",
            what,
        )


def close_log_files() -> None:
    """Detach and close the file handlers that :func:`setup_logging` added."""
    logger = logging.getLogger("sca2lstm")
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()
            logger.removeHandler(handler)


def progress(iterable=None, **kwargs):
    """A tqdm bar that stays quiet when stdout is not a terminal (CI, log files)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not sys.stdout.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


# --------------------------------------------------------------------------- files


def unique_path(parent: Path, prefix: str = "", suffix: str = "", folder: bool = True) -> Path:
    """Create a new, unique ``parent/<prefix><YYYYmmdd_HHMMSS>[_N]<suffix>``: a folder, or an
    empty file with ``folder=False``.

    ``os.mkdir`` and ``O_CREAT | O_EXCL`` are atomic, so two runs started in the same second get
    different names.
    """
    parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    for n in range(10_000):
        path = parent / f"{prefix}{stamp}{'' if n == 0 else f'_{n}'}{suffix}"
        try:
            if folder:
                path.mkdir()
            else:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a unique {'folder' if folder else 'file'} in {parent}")


def make_run_dir(parent: Path, prefix: str = "") -> Path:
    """Create a new, unique run folder ``parent/<prefix><YYYYmmdd_HHMMSS>[_N]``."""
    return unique_path(parent, prefix)


def write_run_config(run_dir: Path, config: dict, training: bool = True) -> None:
    """Write the resolved config to ``run_dir/config.yaml`` and log its short line (without the
    training keys when the stage trains nothing: ``training=False``)."""
    write_yaml(run_dir / "config.yaml", config)
    log.info("config: %s (every key: config.yaml)", config_summary(config, training))


class LogBacklog(logging.Handler):
    """Keeps the log records of a stage until its run folder's log file exists.

    ``attach()`` it before the checks that run before any folder is made; :class:`RunFolder`
    writes the kept records into its log file first and detaches it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def attach(self) -> LogBacklog:
        log.addHandler(self)
        return self

    def replay(self, path: Path) -> None:
        """Write the kept records into the open log file ``path``; stop keeping records."""
        for handler in log.handlers:
            if isinstance(handler, logging.FileHandler) and handler.baseFilename == str(
                Path(path).resolve()
            ):
                for record in self.records:
                    handler.handle(record)
        log.removeHandler(self)


class RunFolder:
    """Context manager: the lifecycle of one stage's run folder, the same for every stage.

    On entry it makes the folder (a new, unique one under ``parent``; or ``resume``, an existing
    one to continue), opens its log file ``log_name``, writes the kept records of ``backlog``,
    and with ``config`` writes ``config.yaml`` and the config line (``trains=False``: without
    the training keys, for a stage that trains nothing). On exit it closes the log
    files. When the block fails, a new folder is removed, unless ``keep(folder)`` says it holds
    something worth keeping (a checkpoint to resume from); a resumed folder is never removed.

    ``hidden=True`` builds the folder as ``parent/.<log stem>-<random>`` and renames it to a new,
    unique one when the block succeeds, so even a killed run leaves no half-written folder under
    a name a user would open; :attr:`path` is the final folder after the block.

    Usage::

        with RunFolder(output_root(config) / "pretrain", "train.log", config) as run:
            train(..., run.path)
    """

    def __init__(
        self,
        parent: Path,
        log_name: str,
        config: dict | None = None,
        *,
        resume: Path | None = None,
        keep: Callable[[Path], bool] | None = None,
        hidden: bool = False,
        backlog: LogBacklog | None = None,
        trains: bool = True,
    ) -> None:
        self.parent, self.log_name, self.config = Path(parent), log_name, config
        self.trains = trains
        self.resume, self.keep, self.hidden, self.backlog = resume, keep, hidden, backlog
        self.path = Path(resume) if resume is not None else Path(parent)

    def __enter__(self) -> RunFolder:
        if self.resume is None and self.hidden:
            self.parent.mkdir(parents=True, exist_ok=True)
            self.path = self.parent / f".{Path(self.log_name).stem}-{os.urandom(8).hex()}"
            self.path.mkdir()
        elif self.resume is None:
            self.path = make_run_dir(self.parent)
        try:
            setup_logging(self.path / self.log_name)
            if self.backlog is not None:
                self.backlog.replay(self.path / self.log_name)
            if not self.hidden:
                log.info("run folder %s", self.path)
            if self.config is not None:
                write_run_config(self.path, self.config, self.trains)
        except BaseException:
            self._discard()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard()
            return
        close_log_files()
        if self.hidden:
            self.path = self._publish()
            setup_logging(self.path / self.log_name)  # appends to the renamed log
            log.info("outputs in %s", self.path)
            close_log_files()

    def _discard(self) -> None:
        close_log_files()
        if self.resume is None and not (self.keep is not None and self.keep(self.path)):
            shutil.rmtree(self.path, ignore_errors=True)

    def _publish(self) -> Path:
        """Rename the finished hidden folder to a new, unique run folder."""
        final = make_run_dir(self.parent)
        try:
            os.replace(self.path, final)  # POSIX: atomically replaces the empty folder just made
        except OSError:
            final.rmdir()
            os.rename(self.path, final)
        return final


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    _atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (NaN written as null)."""
    atomic_write_text(path, json.dumps(_json_safe(data), indent=2) + "\n")


def all_basins(config: dict) -> list[str]:
    """TRAIN_BASINS, then VAL_BASINS, then TEST_BASINS, each basin once."""
    return list(dict.fromkeys(b for key in BASIN_KEYS for b in config[key]))


def config_summary(config: dict, training: bool = True) -> str:
    """One short line with the settings a reader checks first (the whole config is a file).

    ``training=False`` leaves out epochs, batch, learning rate and seed: a stage that trains
    nothing (predict.py) would state run.config's, not its model's."""
    basins = ", ".join(f"{len(config[k])} {k.split('_')[0].lower()}" for k in BASIN_KEYS)
    trained = (
        f", {config['N_EPOCHS']} epochs, batch {config['BATCH_SIZE']}, LR {config['LR']:g}, "
        f"seed {config['SEED']}"
    )
    return (
        f"{config['MODE']} mode, SEQ_LEN {config['SEQ_LEN']}, PRED_LEN {config['PRED_LEN']}, "
        f"hidden {config['LSTM_HIDDEN_DIM']} x {config['NUM_LAYERS']}, "
        f"embedding {config['EMBEDDING_DIM']}{trained if training else ''}; basins: {basins}; "
        f"train {config['TRAIN_START']}..{config['TRAIN_END']}, "
        f"validation {config['VAL_START']}..{config['VAL_END']}, "
        f"test {config['TEST_START']}..{config['TEST_END']}"
    )


def write_yaml(path: Path, data: dict) -> None:
    """Write a resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(_json_safe(data), sort_keys=False, width=100))


def write_csv(path: Path, frame) -> None:
    """Write a pandas DataFrame as CSV, atomically."""
    _atomic_write(path, lambda p: frame.to_csv(p, index=False, float_format="%.10g"))


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    _atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def output_root(config: dict) -> Path:
    """The output root (``OUTPUT_DIR``, relative to the repository): stage folders go below it."""
    out = Path(config["OUTPUT_DIR"])
    return out if out.is_absolute() else ROOT / out


_PROBE_ATTEMPTS = 20  # ensure_writable: tries when a concurrent run removes a parent


def ensure_writable(folder: Path, what: str) -> None:
    """Check up front that run folders can be written under ``folder``; create nothing.

    Folders it made are removed again. Runs probing side by side under a new shared parent may
    leave that parent behind, empty: which of them made it is not known, and a folder that was
    there before must stay.

    Raises
    ------
    UserError
        ``folder`` (or the first existing folder above it) is a file, read-only, or refuses a
        new file (a read-only mount, ``/proc``).
    """
    folder = Path(folder)
    created: set[Path] = set()
    try:
        for attempt in range(_PROBE_ATTEMPTS):
            probe = folder
            while not probe.exists():
                created.add(probe)
                probe = probe.parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
                tempfile.TemporaryFile(dir=folder).close()
                break
            except (FileNotFoundError, FileExistsError):
                # Runs started side by side (a bash loop with ``&``) probe sibling folders: one
                # may remove the empty parent it created while another is making it (pathlib
                # then raises one of these two). Try again; a file in the way fails every time.
                if attempt == _PROBE_ATTEMPTS - 1:
                    raise
    except OSError as err:
        reason = err.strerror or str(err)
        raise UserError(
            f"{what} {folder} cannot be written ({reason}); choose a folder you can write to "
            "with --output_dir"
        ) from None
    finally:
        # deepest first: leave the file system as it was
        for path in sorted(created, key=lambda p: len(p.parts), reverse=True):
            try:
                path.rmdir()
            except OSError:
                pass


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curve(history: list[dict], path: Path, title: str) -> None:
    """Training and validation loss, and validation NSE, per epoch."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="training loss (NSE*)")
    ax.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation loss (NSE*)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss (scaled units)")
    ax2 = ax.twinx()
    ax2.plot(
        epochs,
        [h["val_nse"] for h in history],
        "^--",
        color="tab:green",
        label="validation median NSE",
    )
    ax2.set_ylabel("validation median NSE (-)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="best", fontsize=8)
    ax.set_title(title)
    save_figure(fig, path)


def plot_channel_weights(table, path: Path, title: str) -> None:
    """Heat map of the mean channel weight per basin (rows) and channel (columns)."""
    plt = pyplot()
    values = table.drop(columns=["basin", "gauge_name"]).to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * values.shape[1], 1.0 + 0.45 * len(table)))
    # A diverging scale centred on 1 (uniform use), as wide as the largest departure: a 1 %
    # difference then looks like one, not like the whole colour range.
    spread = float(np.nanmax(np.abs(values - 1.0))) if np.isfinite(values).any() else 0.0
    spread = max(spread, 1e-3)
    image = ax.imshow(values, cmap="RdBu_r", vmin=1.0 - spread, vmax=1.0 + spread, aspect="auto")
    ax.set_xticks(range(values.shape[1]), table.columns[2:], rotation=45, ha="right")
    ax.set_yticks(
        range(len(table)),
        [f"{b} {n}"[:40] for b, n in zip(table.basin, table.gauge_name, strict=True)],
    )
    fig.colorbar(image, ax=ax, label="mean channel weight (1 = uniform)")
    ax.set_title(title)
    save_figure(fig, path)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically; ``payload`` must hold only tensors and plain Python types."""
    import torch

    payload = {"format_version": CHECKPOINT_FORMAT, **payload}
    _atomic_write(path, lambda p: torch.save(payload, p))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a toolkit checkpoint with ``weights_only=True``.

    Raises
    ------
    UserError
        Missing file, a file that is not a checkpoint, or one from another format version.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pth"))
        raise UserError(
            f"{path} is a folder, not a checkpoint; give the .pth file "
            + (f"inside it ({', '.join(inside)})" if inside else "itself (this folder holds none)")
        )
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; train one first or check the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for foreign files
        raise UserError(
            f"{path} is not a readable checkpoint ({type(err).__name__}); it may be truncated "
            "or not a .pth written by this toolkit: retrain or point at another file"
        ) from None
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt or "model_class" not in ckpt:
        raise UserError(
            f"{path} is not a checkpoint written by this toolkit (no model_state_dict/model_class)"
        )
    if ckpt.get("format_version") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{path} has checkpoint format {ckpt.get('format_version')}, this toolkit reads "
            f"format {CHECKPOINT_FORMAT}; retrain it with this version"
        )
    return ckpt


def checkpoint_payload(
    model,
    config: dict,
    spec,
    scalers,
    data,
    stage: str,
    epoch: int,
    metrics: dict,
    parent: str | None = None,
    extra: dict | None = None,
) -> dict:
    """The self-contained checkpoint dict (tensors and plain Python types only).

    ``model`` is any toolkit model with an ``args`` dataclass; ``spec``, ``scalers`` and ``data``
    are the ``hydrologyDataset`` FeatureSpec, Scalers and InputData it was trained with.
    """
    state = {
        k.removeprefix("module.").removeprefix("_orig_mod."): v.detach().cpu()
        for k, v in model.state_dict().items()
    }
    return {
        "model_class": type(model).__name__,
        "model_args": asdict(model.args),
        "model_state_dict": state,
        "config": dict(config),
        "scalers": scalers.to_dict(),
        "features": spec.to_dict(),
        "feature_classification": spec.feature_classification(),
        "stage": stage,
        "epoch": int(epoch),
        "metrics": metrics,
        "parent": parent,
        "synthetic_data": bool(data.synthetic),
        "data_dir": str(data.source.root),
        **(extra or {}),
    }


# --------------------------------------------------------------------------- devices, seeds


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(n: int) -> int:
    """Set PyTorch's intra-op CPU threads to ``n`` (0 keeps PyTorch's default) and log it once.

    Small batches of short windows gain nothing from intra-op threads, and several processes
    that each use every core oversubscribe the CPU: measured on two cores, one busy process
    beside a fine-tuning run slowed it from 4,107 to 37 samples/s with PyTorch's default
    threads. Hence the default of one thread per process (NUM_THREADS).

    Returns
    -------
    int
        The number of threads PyTorch now uses.
    """
    import torch

    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    used = torch.get_num_threads()
    log.info(
        "CPU threads: %d of %d cores (NUM_THREADS=%d; --threads N changes it, 0 is PyTorch's "
        "default; keep 1 when several runs share the machine)",
        used,
        os.cpu_count() or 1,
        n,
    )
    return used


def flush_denormal_supported() -> bool:
    """Whether this CPU can flush subnormal floats to zero (x86 with SSE3); the current setting
    is kept."""
    import torch

    flushing = denormals_flushed()
    supported = torch.set_flush_denormal(True)
    torch.set_flush_denormal(flushing)
    return supported


def denormals_flushed() -> bool:
    """Whether float32 arithmetic in this process flushes subnormal results to zero now."""
    import torch

    tiny = torch.tensor([1.0e-37], dtype=torch.float32)
    return bool((tiny * 1.0e-3).item() == 0.0)  # 1e-40 is subnormal in float32


def set_flush_denormal(on: bool) -> bool:
    """Flush subnormal floats to zero in CPU arithmetic (FLUSH_DENORMAL), probing support first.

    In training, the gradient that flows back from the scored days of a long window shrinks
    step by step, and far back in the window it reaches subnormal magnitudes (below 1.2e-38 in
    float32), which x86 CPUs compute in slow microcode. Flushing them to zero changes no result
    that matters: measured on this project's 2-core CPU, the same losses and validation NSE to
    the last printed digit, and an epoch of 1,024 windows of 365 days 6.5 times faster in
    forecast mode (16.9 s against 2.6 s, two threads; 7.4 times on one) and 3 times faster in
    simulate mode (benchmarks/README.md).

    Returns
    -------
    bool
        Whether subnormals are now flushed (False when asked not to, or when the CPU cannot).
    """
    import torch

    if not on:
        torch.set_flush_denormal(False)
        return False
    if torch.set_flush_denormal(True):
        return True
    log.info(
        "FLUSH_DENORMAL: this CPU cannot flush subnormal floats to zero; training on long "
        "windows runs slower here (see run.config)"
    )
    return False


def resolve_device(name: str = "auto", no_cuda: bool = False, config: dict | None = None):
    """Return the ``torch.device`` to train on and apply the CUDA settings of ``config``.

    Parameters
    ----------
    name : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    no_cuda : bool
        Force the CPU (the ``--no_cuda`` flag).
    config : dict, optional
        Applies CUDA_VISIBLE_DEVICES (when the environment does not set it),
        CUDA_MEMORY_FRACTION, CUDA_DETERMINISTIC, TF32 and cudnn.benchmark on CUDA.

    Raises
    ------
    UserError
        An explicit CUDA device that this machine does not have.
    """
    if config is not None and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = config["CUDA_VISIBLE_DEVICES"]
    import torch

    if config is not None:
        set_threads(config["NUM_THREADS"])
        set_flush_denormal(config["FLUSH_DENORMAL"])

    name = (name or "auto").strip().lower()
    if no_cuda:
        if name.startswith("cuda"):
            raise UserError("--no_cuda and --device cuda contradict each other; drop one")
        name = "cpu"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {name} was asked for but CUDA is not available on this machine; "
                "use --device cpu or --device auto"
            )
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(f"--device {name!r} is not a device name; use cuda or cuda:N") from None
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise UserError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        if config is not None:
            torch.cuda.set_per_process_memory_fraction(config["CUDA_MEMORY_FRACTION"], index)
            torch.backends.cudnn.benchmark = not config["CUDA_DETERMINISTIC"]
            if config["CUDA_DETERMINISTIC"]:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True)
                torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return device
    if name != "cpu":
        raise UserError(f"--device {name!r} is not known; use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def window_device(config: dict, device, training: bool = True):
    """Where a WindowData lives: training windows on ``device`` with DATA_PATH resident, else on
    the CPU (DATA_PATH stream: a DataLoader feeds the device); evaluation windows on ``device``."""
    import torch

    if training and config["DATA_PATH"] != "resident":
        return torch.device("cpu")
    return device


def describe_device(device) -> str:
    """The device in one line: GPU name, memory and compute capability on CUDA; CPU cores and the
    threads torch uses otherwise."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"device {device}: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute "
            f"capability {props.major}.{props.minor} (torch {torch.__version__}, CUDA "
            f"{torch.version.cuda})"
        )
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"device cpu: {os.cpu_count()} cores ({usable} usable), {torch.get_num_threads()} torch "
        f"threads, {platform.machine()} (torch {torch.__version__})"
    )


def log_device(device) -> None:
    """Log :func:`describe_device` once, at the start of a training or prediction run."""
    log.info("%s", describe_device(device))


# --------------------------------------------------------------------------- environment check

# (import name, distribution) of the runtime dependencies (requirements.txt) and of the optional
# packages that the tests (HydroErr, pytest) and benchmarks (neuralhydrology, scipy) use.
REQUIRED_PACKAGES = (
    ("torch", "torch"),
    ("numpy", "numpy"),
    ("pandas", "pandas"),
    ("yaml", "PyYAML"),
    ("tqdm", "tqdm"),
    ("matplotlib", "matplotlib"),
    ("pyswarms", "pyswarms"),
)
OPTIONAL_PACKAGES = (
    ("scipy", "scipy"),
    ("optuna", "optuna"),
    ("HydroErr", "HydroErr"),
    ("neuralhydrology", "neuralhydrology"),
    ("pytest", "pytest"),
)


def _pip_requirement(distribution: str) -> str:
    """The requirement line of ``distribution`` in requirements*.txt, else its bare name."""
    for path in sorted(ROOT.glob("requirements*.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#")[0].strip()
            name = line.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip()
            if name.lower() == distribution.lower():
                return line
    return distribution


def package_status(module: str, distribution: str) -> dict[str, Any]:
    """Import ``module`` and return its version, or why it cannot be imported.

    Returns
    -------
    dict
        ``module``, ``distribution``, ``version`` (None when the import fails), ``error`` (None
        when it works) and ``install``, the pip command that installs it.
    """
    import importlib
    import importlib.metadata
    from unittest import mock

    status = {"module": module, "distribution": distribution, "version": None, "error": None}
    status["install"] = f"pip install '{_pip_requirement(distribution)}'"
    try:
        # pyswarms reconfigures logging on import (see pso_lstm._contained_pyswarms_logging).
        with mock.patch("logging.config.dictConfig"):
            imported = importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - a broken install raises more than ImportError
        status["error"] = f"{type(err).__name__}: {err}"
        return status
    try:
        status["version"] = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        status["version"] = str(getattr(imported, "__version__", "unknown"))
    return status


@functools.lru_cache(maxsize=1)
def cpu_bf16_lstm_supported() -> bool:
    """Whether an LSTM runs on this CPU under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

    Probed by running a tiny ``nn.LSTM`` forward and backward: oneDNN on a CPU without AVX-512
    raises "could not create a primitive descriptor for the LSTM forward propagation primitive",
    which no CPU flag predicts reliably. The answer is cached for the process.
    """
    import torch

    lstm = torch.nn.LSTM(3, 4, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = lstm(torch.randn(2, 5, 3))
        out.float().sum().backward()
    except RuntimeError as err:
        log.debug("CPU bf16 LSTM probe failed: %s", err)
        return False
    return True


def _gpu_driver() -> str | None:
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else None


def _configured_threads() -> int | None:
    """NUM_THREADS of run.config (the threads every script sets), None when it cannot be read."""
    try:
        return load_config()["NUM_THREADS"]
    except (UserError, OSError):
        return None


def _torch_report() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    gpus = []
    for index in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(index)
        gpus.append(
            {
                "index": index,
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "compute_capability": f"{props.major}.{props.minor}",
            }
        )
    return {
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version()
        if torch.backends.cudnn.is_available()
        else None,
        "gpu_count": len(gpus),
        "gpus": gpus,
        "gpu_driver": _gpu_driver() if cuda else None,
        "torch_threads": _configured_threads() or torch.get_num_threads(),
        "torch_default_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_lstm": cpu_bf16_lstm_supported(),
        "cpu_flush_denormal": flush_denormal_supported(),
    }


def environment_report() -> dict[str, Any]:
    """What the toolkit runs on: Python, PyTorch, CUDA and its GPUs, the CPU, the dependencies.

    Returns
    -------
    dict
        ``python``, ``platform``, ``cpu_cores``, ``cpu_usable``; from torch (None when torch
        cannot be imported): ``torch``, ``cuda_available``, ``cuda_version``, ``cudnn_version``,
        ``gpu_count``, ``gpus`` (name, memory_gib, compute_capability each), ``gpu_driver``,
        ``torch_threads`` (NUM_THREADS, else PyTorch's default), ``torch_default_threads``,
        ``cpu_capability``, ``cpu_bf16_lstm``, ``cpu_flush_denormal``; ``required`` and ``optional``
        (lists of :func:`package_status`), and ``missing``, the required ones that fail.
    """
    required = [package_status(m, d) for m, d in REQUIRED_PACKAGES]
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_cores": os.cpu_count(),
        "cpu_usable": (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ),
        "required": required,
        "optional": [package_status(m, d) for m, d in OPTIONAL_PACKAGES],
        "missing": [s for s in required if s["error"]],
    }
    torch_keys = ("torch", "cuda_available", "cuda_version", "cudnn_version", "gpu_count")
    torch_keys += ("gpus", "gpu_driver", "torch_threads", "torch_default_threads")
    torch_keys += ("cpu_capability", "cpu_bf16_lstm", "cpu_flush_denormal")
    report.update(dict.fromkeys(torch_keys))
    if required[0]["error"] is None:
        report.update(_torch_report())
    return report


def format_environment(report: dict[str, Any]) -> str:
    """The report of :func:`environment_report` as aligned text, one item per line."""

    def show(value: Any) -> str:
        if value is None or value == []:
            return "none"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return str(value)

    rows = [("Python", report["python"]), ("platform", report["platform"])]
    torch_rows = [
        ("PyTorch", report["torch"]),
        ("CUDA available", show(report["cuda_available"])),
        ("CUDA version", show(report["cuda_version"])),
        ("cuDNN version", show(report["cudnn_version"])),
        ("GPU count", show(report["gpu_count"])),
    ]
    torch_rows += [
        (
            "GPU",
            f"{g['index']}: {g['name']}, {g['memory_gib']} GiB, compute capability "
            f"{g['compute_capability']}",
        )
        for g in report["gpus"] or []
    ] or [("GPU", "none")]
    bf16 = "supported" if report["cpu_bf16_lstm"] else "not supported (fp32 is used instead)"
    torch_rows += [
        ("GPU driver", show(report["gpu_driver"])),
        ("CPU cores", f"{report['cpu_cores']} ({report['cpu_usable']} usable)"),
        (
            "torch threads",
            f"{show(report['torch_threads'])} (NUM_THREADS of run.config, else PyTorch's "
            f"default, here {show(report['torch_default_threads'])})",
        ),
        ("CPU capability", show(report["cpu_capability"])),
        ("CPU bf16 LSTM kernels", bf16),
        (
            "CPU flushes subnormals",
            "yes (FLUSH_DENORMAL applies)"
            if report["cpu_flush_denormal"]
            else "no (FLUSH_DENORMAL has no effect; long windows train slower)",
        ),
    ]
    if report["torch"] is None:
        unknown = "unknown (torch cannot be imported)"
        torch_rows = [
            (name, value if name == "CPU cores" else unknown) for name, value in torch_rows
        ]
    rows += torch_rows
    for kind in ("required", "optional"):
        rows.append((f"{kind} packages:", ""))
        for s in report[kind]:
            if s["error"] is None:
                value = s["version"]
            elif kind == "required":
                value = f"MISSING ({s['error']}); install: {s['install']}"
            else:
                value = f"not available (optional; {s['error']}); install: {s['install']}"
            rows.append((f"  {s['distribution']}", value))
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"{name:<{width}}{value}".rstrip() for name, value in rows]
    if report["missing"]:
        names = ", ".join(s["distribution"] for s in report["missing"])
        lines.append(f"result: NOT ready, missing {names}")
    else:
        lines.append("result: ready")
    return "\n".join(lines) + "\n"


def missing_message(report: dict[str, Any]) -> str:
    """One line naming each missing required package and the command that installs it."""
    return "the toolkit cannot run: " + "; ".join(
        f"{s['distribution']} is missing ({s['error']}), install it with {s['install']}"
        for s in report["missing"]
    )


def check_environment() -> int:
    """Print the environment report; return the exit code (0 ready, 1 a package is missing)."""
    report = environment_report()
    sys.stdout.write(format_environment(report))
    sys.stdout.flush()
    if report["missing"]:
        print(f"error: {missing_message(report)}", file=sys.stderr)
        return 1
    return 0


class CheckEnvAction(argparse.Action):
    """``--check_env``: print the environment report and exit, before anything else runs."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        kwargs.setdefault(
            "help",
            "print PyTorch, CUDA, GPU, CPU and package versions and exit "
            "(0 when the toolkit can run)",
        )
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.exit(check_environment())


# --------------------------------------------------------------------------- metrics


def _pairs(obs, sim) -> tuple[np.ndarray, np.ndarray]:
    obs = np.asarray(obs, dtype=np.float64).ravel()
    sim = np.asarray(sim, dtype=np.float64).ravel()
    if obs.shape != sim.shape:
        raise ValueError(f"obs and sim differ in length: {obs.shape} vs {sim.shape}")
    keep = np.isfinite(obs) & np.isfinite(sim)
    return obs[keep], sim[keep]


def _undefined(name: str, reason: str = "constant or empty observations") -> float:
    warnings.warn(
        f"{name} is undefined for {reason}; returning NaN",
        RuntimeWarning,
        stacklevel=3,
    )
    return float("nan")


def nse(obs, sim) -> float:
    """Nash–Sutcliffe efficiency, 1 − Σ(sim−obs)² / Σ(obs−mean(obs))² (Nash & Sutcliffe 1970)."""
    o, s = _pairs(obs, sim)
    denom = np.sum((o - o.mean()) ** 2) if o.size else 0.0
    if o.size < 2 or denom == 0:
        return _undefined("NSE")
    return float(1.0 - np.sum((s - o) ** 2) / denom)


def kge_parts(obs, sim) -> dict[str, float]:
    """Kling–Gupta efficiency (Gupta et al. 2009) with its parts r, alpha = σs/σo, beta = μs/μo."""
    o, s = _pairs(obs, sim)
    if o.size < 2 or o.std() == 0 or o.mean() == 0:
        nan = _undefined("KGE")
        return {"kge": nan, "r": nan, "alpha": nan, "beta": nan}
    r = float(np.corrcoef(o, s)[0, 1]) if s.std() > 0 else float("nan")
    alpha = float(s.std() / o.std())
    beta = float(s.mean() / o.mean())
    kge = 1.0 - math.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + (beta - 1) ** 2)
    return {"kge": kge, "r": r, "alpha": alpha, "beta": beta}


def kge(obs, sim) -> float:
    """Kling–Gupta efficiency (2009)."""
    return kge_parts(obs, sim)["kge"]


def rmse(obs, sim) -> float:
    """Root mean square error, in the units of the inputs."""
    o, s = _pairs(obs, sim)
    return float(np.sqrt(np.mean((s - o) ** 2))) if o.size else _undefined("RMSE")


def mae(obs, sim) -> float:
    """Mean absolute error, in the units of the inputs."""
    o, s = _pairs(obs, sim)
    return float(np.mean(np.abs(s - o))) if o.size else _undefined("MAE")


def r2(obs, sim) -> float:
    """Coefficient of determination as the squared Pearson correlation."""
    o, s = _pairs(obs, sim)
    if o.size < 2 or o.std() == 0 or s.std() == 0:
        return _undefined("R²")
    return float(np.corrcoef(o, s)[0, 1] ** 2)


def bias_pct(obs, sim) -> float:
    """Percent bias, 100 · Σ(sim − obs) / Σ obs."""
    o, s = _pairs(obs, sim)
    if not o.size or o.sum() == 0:
        return _undefined("bias %")
    return float(100.0 * np.sum(s - o) / np.sum(o))


def pearson_r(obs, sim) -> float:
    """Pearson correlation r = Σ(o−ō)(s−s̄) / √(Σ(o−ō)² Σ(s−s̄)²) (Pearson 1895).

    The same r as :func:`kge_parts`; reported on its own under the name neuralhydrology uses.
    NaN with a warning for constant observations or a constant simulation.
    """
    o, s = _pairs(obs, sim)
    if o.size < 2 or o.std() == 0:
        return _undefined("Pearson r")
    if s.std() == 0:
        return _undefined("Pearson r", "a constant simulation")
    return float(np.corrcoef(o, s)[0, 1])


def alpha_nse(obs, sim) -> float:
    """Variability ratio α = σ_sim / σ_obs of the NSE decomposition (Gupta et al. 2009).

    NSE = 2·α·r − α² − β_n², so α and :func:`beta_nse` are the two parts of NSE
    besides correlation. Population standard deviations (ddof 0); 1 is perfect.
    """
    o, s = _pairs(obs, sim)
    if o.size < 2 or o.std() == 0:
        return _undefined("alpha-NSE")
    return float(s.std() / o.std())


def beta_nse(obs, sim) -> float:
    """Bias normalised by the observed spread, β_n = (μ_sim − μ_obs) / σ_obs (Gupta et al. 2009).

    The bias term of the NSE decomposition NSE = 2·α·r − α² − β_n²; 0 is perfect. Population
    standard deviation (ddof 0).
    """
    o, s = _pairs(obs, sim)
    if o.size < 2 or o.std() == 0:
        return _undefined("beta-NSE")
    return float((s.mean() - o.mean()) / o.std())


# Flows below this (in the units of the series: mm/day in the toolkit's tables) are raised to it
# before a logarithm: FLV and FMS need log Q, and observed flows can be 0 and simulated ones 0 or
# negative. CAMELS-GB gives discharge_spec to 0.01 mm/day, so real flows never reach the floor.
LOG_FLOW_FLOOR = 1.0e-6


def _fdc(values: np.ndarray) -> np.ndarray:
    """Flow-duration curve: the flows sorted from highest to lowest (exceedance rises)."""
    return np.sort(values)[::-1]


def fhv(obs, sim, h: float = 0.02) -> float:
    """Percent bias of the high-flow segment of the flow-duration curve (Yilmaz et al. 2008).

    %BiasFHV = 100 · Σ_{i=1..H} (QS_i − QO_i) / Σ_{i=1..H} QO_i (Yilmaz et al. 2008),
    where QO and QS are the observed and simulated flow-duration curves (each sorted on its own,
    highest first) and H = round(h·n) the flows with exceedance probability below ``h`` (2 %).
    Positive: the simulated high flows are too high. NaN with a warning when H is 0 (25 pairs or
    fewer at 2 %) or the observed high flows sum to 0.

    Yilmaz, K. K., Gupta, H. V. and Wagener, T. (2008). A process-based diagnostic approach to
    model evaluation: application to the NWS distributed hydrologic model. Water Resour. Res. 44,
    W09417, doi:10.1029/2007WR006716.
    """
    o, s = _pairs(obs, sim)
    n_high = int(np.round(h * o.size))
    if n_high < 1:
        return _undefined("FHV", f"too few pairs to hold a top {h:.0%}")
    qo, qs = _fdc(o)[:n_high], _fdc(s)[:n_high]
    if qo.sum() == 0:
        return _undefined("FHV", "high flows that sum to 0")
    return float(100.0 * np.sum(qs - qo) / np.sum(qo))


def flv(obs, sim, l: float = 0.3) -> float:  # noqa: E741 - the paper's symbol
    """Percent bias of the low-flow segment of the flow-duration curve, in log space.

    %BiasFLV = −100 · [Σ_l (log QS_l − log QS_L) − Σ_l (log QO_l − log QO_L)]
    / Σ_l (log QO_l − log QO_L) (Yilmaz et al. 2008; see :func:`fhv`), over the
    round(l·n) lowest flows of each flow-duration curve (exceedance 0.7–1.0 for ``l`` = 0.3),
    where L is the segment's minimum flow. Each sum measures how far the low flows rise above the
    series' own minimum; with the sign of Yilmaz et al., FLV < 0 when the simulated ones rise
    further than the observed ones.

    Notes
    -----
    Zero flows: observed and simulated flows below ``LOG_FLOW_FLOOR`` are raised to it before
    the log (simulated flows can also be negative), so a dry day counts as a very low flow rather
    than minus infinity. Where the observed low segment is all at one value (constant flow, or
    a basin dry for 30 % of the days) the denominator is 0 and FLV is NaN with a warning.
    """
    o, s = _pairs(obs, sim)
    n_low = int(np.round(l * o.size))
    if n_low < 2:
        return _undefined("FLV", "fewer than 2 low flows")
    qo = np.log(np.maximum(_fdc(o)[-n_low:], LOG_FLOW_FLOOR))
    qs = np.log(np.maximum(_fdc(s)[-n_low:], LOG_FLOW_FLOOR))
    qol, qsl = np.sum(qo - qo.min()), np.sum(qs - qs.min())
    if qol == 0:
        return _undefined("FLV", "low flows that are all equal")
    return float(100.0 * (qol - qsl) / qol)  # = −100 · (qsl − qol) / qol


def fms(obs, sim, lower: float = 0.2, upper: float = 0.7) -> float:
    """Percent bias of the mid-segment slope of the flow-duration curve, in log space.

    %BiasFMS = 100 · [(log QS_m1 − log QS_m2) − (log QO_m1 − log QO_m2)] / (log QO_m1 − log QO_m2)
    (Yilmaz et al. 2008; see :func:`fhv`), with m1 and m2 the flows at exceedance ``lower`` (0.2)
    and ``upper`` (0.7): the entries round(lower·n) and round(upper·n) of each flow-duration curve,
    highest first. Positive: the simulated mid-range curve is too steep (too flashy). Flows are
    floored at ``LOG_FLOW_FLOOR`` before the log, as in :func:`flv`; equal observed flows at m1
    and m2 give NaN with a warning.
    """
    o, s = _pairs(obs, sim)
    if o.size < 2:
        return _undefined("FMS")
    i1, i2 = int(np.round(lower * o.size)), min(int(np.round(upper * o.size)), o.size - 1)
    qo = np.log(np.maximum(_fdc(o)[[i1, i2]], LOG_FLOW_FLOOR))
    qs = np.log(np.maximum(_fdc(s)[[i1, i2]], LOG_FLOW_FLOOR))
    slope_obs = qo[0] - qo[1]
    if slope_obs == 0:
        return _undefined("FMS", "equal observed flows at both ends of the mid segment")
    return float(100.0 * ((qs[0] - qs[1]) - slope_obs) / slope_obs)


def _daily_pairs(obs, sim) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed pairs of a daily series and the day number (position) of each."""
    obs = np.asarray(obs, dtype=np.float64).ravel()
    sim = np.asarray(sim, dtype=np.float64).ravel()
    if obs.shape != sim.shape:
        raise ValueError(f"obs and sim differ in length: {obs.shape} vs {sim.shape}")
    day = np.flatnonzero(np.isfinite(obs) & np.isfinite(sim))
    return obs[day], sim[day], day


def _gap_free(day: np.ndarray, i: int, window: int) -> bool:
    """Whether pairs i−window..i+window exist and fall on consecutive days."""
    lo, hi = i - window, i + window
    return lo >= 0 and hi < day.size and day[hi] - day[lo] == 2 * window


def peak_timing(obs, sim, window: int = 3) -> float:
    """Mean absolute timing error of the simulated peaks, in days (Kratzert et al. 2021).

    As neuralhydrology's ``mean_peak_timing``: the observed peaks are those that
    ``scipy.signal.find_peaks`` returns with a prominence of at least σ_obs and at least 100 days
    apart. For each, the simulated peak is the simulation on that day if it is a local maximum
    there, else the largest simulated value within ±``window`` days. The metric is the mean of
    |day of simulated peak − day of observed peak|; 0 is perfect, ``window`` the worst.

    Parameters
    ----------
    obs, sim : array_like
        One daily series in date order, one value per consecutive day; NaN where unobserved or
        unsimulated (a gap).

    Notes
    -----
    Gaps: peaks are sought in the observed pairs, and a peak is scored only when all 2·window + 1
    days around it are observed and simulated; peaks at the series' ends or next to a gap are
    skipped (neuralhydrology skips them the same way). NaN with a warning when no peak is scored
    (e.g. constant flow).

    Kratzert, F., Klotz, D., Hochreiter, S. and Nearing, G. S. (2021). A note on leveraging synergy
    in multiple meteorological data sets with deep learning for rainfall-runoff modeling. HESS 25,
    2685–2703 (appendix).
    """
    from scipy.signal import find_peaks

    o, s, day = _daily_pairs(obs, sim)
    if o.size < 3 or o.std() == 0:
        return _undefined("peak timing")
    peaks, _ = find_peaks(o, distance=100, prominence=o.std())
    errors = []
    for i in peaks:
        if not _gap_free(day, i, window):
            continue
        if s[i] > s[i - 1] and s[i] > s[i + 1]:
            j = i
        else:
            j = i - window + int(np.argmax(s[i - window : i + window + 1]))
        errors.append(abs(int(day[j] - day[i])))
    if not errors:
        return _undefined("peak timing", "a series without a peak clear of gaps and ends")
    return float(np.mean(errors))


def missed_peaks(obs, sim, window: int = 1, percentile: float = 80.0) -> float:
    """Share of the observed peaks that the simulation misses (as neuralhydrology defines it).

    Peaks of each series are those that ``scipy.signal.find_peaks`` returns above the series'
    own ``percentile`` (80th) and at least 30 days apart. An observed peak is missed when no
    simulated peak lies within ±``window`` days (1) of it. 0 is perfect, 1 the worst.

    Parameters
    ----------
    obs, sim : array_like
        One daily series in date order, one value per consecutive day; NaN where unobserved or
        unsimulated (a gap).

    Notes
    -----
    Gaps: peaks are sought in the observed pairs. Observed peaks whose ±window days are not all
    present (ends, gaps) are left out, and so are simulated peaks whose neighbours are not the
    adjacent days. The share counts only the observed peaks that are scored; neuralhydrology
    keeps the skipped ones in the denominator, which reads them as hits. NaN with a warning when
    no observed peak is scored.

    Kratzert, F., Gauch, M., Klotz, D. and Nearing, G. (2022). NeuralHydrology — a Python library
    for deep learning research in hydrology. J. Open Source Softw. 7, 4050 (``missed_peaks``).
    """
    from scipy.signal import find_peaks

    o, s, day = _daily_pairs(obs, sim)
    if o.size < 3 or o.std() == 0:
        return _undefined("missed peaks")
    obs_peaks, _ = find_peaks(o, distance=30, height=np.percentile(o, percentile))
    sim_peaks, _ = find_peaks(s, distance=30, height=np.percentile(s, percentile))
    sim_days = np.array([day[j] for j in sim_peaks if _gap_free(day, j, 1)], dtype=np.int64)
    scored = [i for i in obs_peaks if _gap_free(day, i, window)]
    if not scored:
        return _undefined("missed peaks", "a series without a peak clear of gaps and ends")
    missed = sum(not np.any(np.abs(sim_days - day[i]) <= window) for i in scored)
    return float(missed / len(scored))


def daily_series(dates, obs, sim) -> tuple[np.ndarray, np.ndarray] | None:
    """Lay values with dates on a daily calendar from the first to the last date.

    Parameters
    ----------
    dates : array_like of datetime64
        The day of each value, in any order.
    obs, sim : array_like
        Values of the same length.

    Returns
    -------
    tuple of numpy.ndarray or None
        obs and sim, one entry per day (NaN on days without a value); None when a day holds
        several values (forecasts at several leads, overlapping windows), which the peak metrics
        cannot read as one series.
    """
    days = np.asarray(dates, dtype="datetime64[D]").ravel()
    obs = np.asarray(obs, dtype=np.float64).ravel()
    sim = np.asarray(sim, dtype=np.float64).ravel()
    if not days.size:
        return obs, sim
    if np.unique(days).size != days.size:
        return None
    pos = (days - days.min()).astype(np.int64)
    out_obs, out_sim = np.full(pos.max() + 1, np.nan), np.full(pos.max() + 1, np.nan)
    out_obs[pos], out_sim[pos] = obs, sim
    return out_obs, out_sim


def persistence_nse(obs, lead: int = 1) -> float:
    """NSE of the persistence forecast: Q(t+lead) predicted by Q(t), on one continuous series."""
    obs = np.asarray(obs, dtype=np.float64).ravel()
    if obs.size <= lead:
        return _undefined("persistence NSE")
    return nse(obs[lead:], obs[:-lead])


def compute_metrics(obs, sim, dates=None) -> dict[str, float]:
    """All scores of the toolkit for one series, in the units of ``obs`` (NaN pairs masked).

    Parameters
    ----------
    obs, sim : array_like
        Observed and simulated values. Without ``dates`` they are taken as one daily series in
        date order (consecutive days, NaN in gaps), which the peak metrics need.
    dates : array_like of datetime64, optional
        The day of each value, in any order; the values are then laid on a daily calendar for
        the peak metrics (:func:`daily_series`). When a day holds several values (several
        forecast leads) ``peak_timing`` and ``missed_peaks`` are NaN with a warning.

    Returns
    -------
    dict
        nse, kge, kge_r, kge_alpha, kge_beta, rmse, mae, r2, bias_pct, pearson_r, alpha_nse,
        beta_nse, fhv, flv, fms, peak_timing, missed_peaks, n_scored.
    """
    daily = (obs, sim) if dates is None else daily_series(dates, obs, sim)
    o, s = _pairs(obs, sim)
    parts = kge_parts(o, s)
    out = {
        "nse": nse(o, s),
        "kge": parts["kge"],
        "kge_r": parts["r"],
        "kge_alpha": parts["alpha"],
        "kge_beta": parts["beta"],
        "rmse": rmse(o, s),
        "mae": mae(o, s),
        "r2": r2(o, s),
        "bias_pct": bias_pct(o, s),
        "pearson_r": pearson_r(o, s),
        "alpha_nse": alpha_nse(o, s),
        "beta_nse": beta_nse(o, s),
        "fhv": fhv(o, s),
        "flv": flv(o, s),
        "fms": fms(o, s),
    }
    if daily is None:
        warnings.warn(
            "peak timing and missed peaks need one value per day, and some days hold several "
            "(forecasts at several leads, or overlapping windows); returning NaN for both",
            RuntimeWarning,
            stacklevel=2,
        )
        out.update(peak_timing=float("nan"), missed_peaks=float("nan"))
    else:
        out.update(peak_timing=peak_timing(*daily), missed_peaks=missed_peaks(*daily))
    out["n_scored"] = int(o.size)
    return out


def mm_per_day_to_m3s(values, area_km2: float):
    """Convert specific discharge (mm/day) to m³/s: 1 mm over 1 km² is 1000 m³, a day 86400 s."""
    return np.asarray(values, dtype=np.float64) * float(area_km2) * 1000.0 / 86400.0


def persistence_scores(obs, sim, prev) -> dict[str, float]:
    """Persistence NSE and the model's skill over persistence, on the same scored days.

    Parameters
    ----------
    obs, sim : array_like
        Observed and simulated flow on the scored days.
    prev : array_like
        The persistence forecast of each day: the last observation when the forecast was issued.

    Returns
    -------
    dict
        ``persistence_nse`` (NSE of ``prev``) and ``skill_vs_persistence``
        (1 − MSE_model / MSE_persistence), over the days where all three are finite.
    """
    o, s, p = (np.asarray(a, dtype=np.float64) for a in (obs, sim, prev))
    same = np.isfinite(o) & np.isfinite(s) & np.isfinite(p)
    o, s, p = o[same], s[same], p[same]
    mse_persistence = float(np.mean((p - o) ** 2)) if o.size else 0.0
    mse_model = float(np.mean((s - o) ** 2)) if o.size else math.nan
    skill = 1.0 - mse_model / mse_persistence if mse_persistence > 0 else math.nan
    return {"persistence_nse": nse(o, p), "skill_vs_persistence": skill}


def persistence_forecast(series: dict, basin_data, target: str) -> np.ndarray:
    """The persistence forecast of each target of ``series``: Q(d - lead), the last observation
    when the forecast was issued (NaN where that day is unobserved or before the data).

    Parameters
    ----------
    series : dict
        One basin of :func:`series_by_basin` (``date`` and ``lead`` arrays).
    basin_data : hydrologyDataset.BasinData
        The basin's series.
    target : str
        The discharge column.
    """
    offset = (series["date"] - basin_data.start).astype(int) - series["lead"]
    full = basin_data.column(target).astype(np.float64)
    return np.where(offset >= 0, full[offset.clip(0)], np.nan)


def lead_metrics_table(windows, pred: np.ndarray, data, group: dict):
    """Forecast scores per basin and lead day (physical units) as a DataFrame.

    Columns: basin, gauge_name, group, lead, n_scored, nse, kge, rmse, bias_pct, persistence_nse
    and skill_vs_persistence, from :func:`compute_metrics` and :func:`persistence_scores` on the
    targets of that lead.
    """
    import pandas as pd

    rows = []
    target = windows.spec.target
    for basin, s in series_by_basin(windows, pred).items():
        b = data.basins[basin]
        prev = persistence_forecast(s, b, target)
        for lead in range(1, windows.spec.pred_len + 1):
            sel = s["lead"] == lead
            scores = compute_metrics(s["obs"][sel], s["sim"][sel])
            row = {
                "basin": basin,
                "gauge_name": b.name,
                "group": group.get(basin, ""),
                "lead": lead,
            }
            row.update({k: scores[k] for k in ("n_scored", "nse", "kge", "rmse", "bias_pct")})
            row.update(persistence_scores(s["obs"][sel], s["sim"][sel], prev[sel]))
            rows.append(row)
    return pd.DataFrame(rows)


def basin_metrics_table(windows, pred: np.ndarray, data, group: dict):
    """Per-basin scores (physical units) as a DataFrame.

    Forecast mode adds ``persistence_nse`` and ``skill_vs_persistence`` (1 − MSE_model /
    MSE_persistence), both over the model's scored targets of every lead. The peak metrics read
    each basin's targets as one daily series by date; forecasts at several leads give several
    values per day, so there they are NaN (the log says why).
    """
    import pandas as pd

    several_leads = windows.spec.mode == "forecast" and windows.spec.pred_len > 1
    if several_leads:
        log.info(
            "peak timing and missed peaks are left NaN: with PRED_LEN %d each day has %d "
            "forecasts, not one daily series",
            windows.spec.pred_len,
            windows.spec.pred_len,
        )
    rows = []
    for basin, s in series_by_basin(windows, pred).items():
        b = data.basins[basin]
        row = {"basin": basin, "gauge_name": b.name, "group": group.get(basin, "")}
        with warnings.catch_warnings():
            if several_leads:  # said once above, not once per basin
                warnings.filterwarnings("ignore", "peak timing and missed peaks need")
            row.update(compute_metrics(s["obs"], s["sim"], dates=s["date"]))
        q_obs, q_sim = mm_per_day_to_m3s(s["obs"], b.area), mm_per_day_to_m3s(s["sim"], b.area)
        row["rmse_m3s"] = rmse(q_obs, q_sim)
        row["mae_m3s"] = mae(q_obs, q_sim)
        if windows.spec.mode == "forecast":
            # Persistence on the same scored targets: Q(d) predicted by Q(d - lead).
            prev = persistence_forecast(s, b, windows.spec.target)
            row.update(persistence_scores(s["obs"], s["sim"], prev))
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- ensembles
# An ensemble is a few members (checkpoints) listed in a JSON manifest next to them; its
# prediction is the mean of the members' predictions in physical units (Kratzert et al. 2019).

ENSEMBLE_FORMAT = "sca2lstm-ensemble"
ENSEMBLE_FORMAT_VERSION = 1
ENSEMBLE_MANIFEST = "ensemble.json"
# What every member must share: the FeatureSpec fields (checkpoint "features").
ENSEMBLE_SHARED = {
    "dynamic_inputs": "inputs (DYNAMIC_INPUTS)",
    "static_attributes": "static attributes (STATIC_ATTRIBUTES)",
    "use_forcings": "use of the forcings",
    "target": "target (TARGET)",
    "mode": "mode (MODE)",
    "seq_len": "window (SEQ_LEN)",
    "pred_len": "forecast lead (PRED_LEN)",
    "predict_last_n": "scored days per window (PREDICT_LAST_N)",
}


def parse_seeds(text: str, flag: str = "--seeds") -> list[int]:
    """The seeds of ``--seeds 1,2,3``: two or more distinct integers.

    Raises
    ------
    UserError
        Not integers, a seed given twice, or fewer than two seeds.
    """
    try:
        seeds = [int(t) for t in csv_list(text)]
    except (ValueError, argparse.ArgumentTypeError):
        raise UserError(
            f"{flag} {text!r} is not a comma list of integer seeds, e.g. 1,2,3"
        ) from None
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise UserError(
            f"{flag} {text!r}: seed(s) {', '.join(map(str, dup))} given twice; each member needs "
            "its own seed"
        )
    if len(seeds) < 2:
        raise UserError(
            f"{flag} {text!r} names one seed; an ensemble needs two or more (one model: --seed)"
        )
    return seeds


def write_ensemble_manifest(path: Path, stage: str, members: list[dict], **extra: Any) -> None:
    """Write an ensemble manifest; member checkpoints are stored relative to its folder.

    Parameters
    ----------
    path : Path
        The manifest file (``<run>/ensemble.json``).
    stage : str
        ``pretrain`` or ``fine_tune``.
    members : list of dict
        One dict per member with at least ``seed`` and ``checkpoint`` (a path inside the run
        folder); other keys (scores) are stored as given.
    **extra
        More top-level entries (the ensemble's metrics, the best member, ...).
    """
    path = Path(path)
    rows = []
    for m in members:
        rel = Path(os.path.relpath(Path(m["checkpoint"]).resolve(), path.parent.resolve()))
        rows.append({**m, "checkpoint": rel.as_posix()})
    write_json(
        path,
        {
            "format": ENSEMBLE_FORMAT,
            "format_version": ENSEMBLE_FORMAT_VERSION,
            "stage": stage,
            "seeds": [m["seed"] for m in members],
            "members": rows,
            **extra,
        },
    )


def is_ensemble_manifest(path: str | Path) -> bool:
    """True for a ``.json`` file: the toolkit's checkpoints are ``.pth``, manifests ``.json``."""
    return Path(path).suffix.lower() == ".json"


def read_ensemble_manifest(path: str | Path, need_all: bool = True) -> tuple[dict, list[Path]]:
    """Read an ensemble manifest and resolve its members' checkpoints.

    Parameters
    ----------
    path : str or Path
        The manifest (``ensemble.json``); member paths are relative to its folder, so a moved or
        copied run folder keeps working.
    need_all : bool
        Raise when a member's checkpoint is missing (an unfinished ensemble).

    Returns
    -------
    (dict, list of Path)
        The manifest and the absolute member checkpoint paths, in its order.

    Raises
    ------
    UserError
        Missing or unreadable file, another format, or missing member checkpoints.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"ensemble manifest {path} not found; check the path")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not a readable JSON ensemble manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ENSEMBLE_FORMAT:
        raise UserError(
            f"{path} is not an ensemble manifest of this toolkit (no format {ENSEMBLE_FORMAT!r}); "
            "give the ensemble.json of an ensemble run, or a .pth checkpoint"
        )
    if manifest.get("format_version") != ENSEMBLE_FORMAT_VERSION:
        raise UserError(
            f"{path} has ensemble format {manifest.get('format_version')}, this toolkit reads "
            f"format {ENSEMBLE_FORMAT_VERSION}; retrain the ensemble with this version"
        )
    members = [path.parent / m["checkpoint"] for m in manifest.get("members") or []]
    missing = [str(p) for p in members if not p.is_file()]
    if need_all and missing:
        raise UserError(
            f"{path}: member checkpoint(s) {', '.join(missing)} missing; an interrupted ensemble "
            "run continues with sca2lstm.py --resume RUN_DIR"
        )
    if need_all and len(members) < 2:
        raise UserError(f"{path} lists {len(members)} member(s); an ensemble needs two or more")
    return manifest, members


def check_ensemble_members(members: Sequence[tuple[Path, dict]]) -> None:
    """Check that checkpoints can form one ensemble: the same inputs, mode, windows and target.

    Parameters
    ----------
    members : sequence of (Path, dict)
        Each member's checkpoint file and its content (:func:`load_checkpoint`).

    Raises
    ------
    UserError
        Fewer than two members, or one that differs from the first (the message names what).
    """
    if len(members) < 2:
        raise UserError(
            f"an ensemble needs two or more checkpoints, got {len(members)}; pass several paths, "
            "a quoted glob or an ensemble.json"
        )
    first_path, first = members[0]
    ref = first.get("features") or {}
    for path, ckpt in members[1:]:
        features = ckpt.get("features") or {}
        for key, what in ENSEMBLE_SHARED.items():
            if features.get(key) != ref.get(key):
                raise UserError(
                    f"ensemble members differ in their {what}: {first_path} has "
                    f"{ref.get(key)!r}, {path} has {features.get(key)!r}; an ensemble needs "
                    "members with the same inputs, mode, windows and target"
                )
        for key in ("dynamic_mean", "static_mean"):
            if len((ckpt.get("scalers") or {}).get(key, [])) != len(
                (first.get("scalers") or {}).get(key, [])
            ):
                raise UserError(
                    f"ensemble members' scalers cover other features: {first_path} and {path}; "
                    "retrain the members with the same inputs"
                )


def ensemble_prediction(preds: Sequence[np.ndarray], scalers: Sequence, into) -> dict:
    """The members' mean, minimum and maximum, in physical units, as scaled by ``into``.

    Each member's output is unscaled with its own scalers (mm/day) before averaging, so members
    with different target scalers still average in physical units; the result is scaled with
    ``into`` (the scalers of the windows it is scored on, e.g. by :func:`basin_metrics_table`).

    Parameters
    ----------
    preds : sequence of numpy.ndarray
        ``[S, n_out]`` scaled predictions of each member over the same windows.
    scalers : sequence of hydrologyDataset.Scalers
        Each member's scalers.
    into : hydrologyDataset.Scalers
        The scalers the returned arrays are in.

    Returns
    -------
    dict
        ``mean``, ``low`` (minimum) and ``high`` (maximum over members), each ``[S, n_out]``.

    Raises
    ------
    UserError
        Members that predicted different windows.
    """
    shapes = {p.shape for p in preds}
    if len(shapes) != 1:
        raise UserError(
            f"ensemble members predicted different windows (shapes {sorted(shapes)}); they need "
            "the same inputs and windows on the same data"
        )
    phys = np.stack(
        [s.unscale_target(p.astype(np.float64)) for p, s in zip(preds, scalers, strict=True)]
    )  # [M, S, n_out] mm/day
    out = {"mean": phys.mean(axis=0), "low": phys.min(axis=0), "high": phys.max(axis=0)}
    return {k: into.scale_target(v) for k, v in out.items()}


def members_vs_ensemble(
    member_tables: dict[str, Any], ensemble_table, keys: Sequence[str], metrics=("nse", "kge")
):
    """Side-by-side per-basin scores: each member, the mean of the members, the ensemble.

    Parameters
    ----------
    member_tables : dict
        Member name (e.g. ``seed_1``) -> its metrics table (pandas.DataFrame).
    ensemble_table : pandas.DataFrame
        The ensemble's table, with the same ``keys`` rows.
    keys : sequence of str
        Columns that identify a row (``basin``, ``gauge_name``, ...), kept in front.
    metrics : sequence of str
        Score columns to put side by side.

    Returns
    -------
    pandas.DataFrame
        ``keys``, then per metric ``<metric>_<member>`` for each member,
        ``<metric>_member_mean`` and ``<metric>_ensemble``.
    """
    out = ensemble_table[list(keys)].copy()
    for metric in metrics:
        cols = []
        for name, table in member_tables.items():
            col = f"{metric}_{name}"
            merged = out[list(keys)].merge(table[[*keys, metric]], on=list(keys), how="left")
            out[col] = merged[metric].to_numpy()
            cols.append(col)
        out[f"{metric}_member_mean"] = out[cols].mean(axis=1)
        out[f"{metric}_ensemble"] = ensemble_table[metric].to_numpy()
    return out


class LogFile:
    """Context manager: also log to ``path`` inside ``with LogFile(path):``; other log files
    stay open (unlike :func:`close_log_files`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.handler: logging.FileHandler | None = None

    def __enter__(self) -> Path:
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(self.handler)
        return self.path

    def __exit__(self, *exc: object) -> None:
        log.removeHandler(self.handler)
        self.handler.close()


# --------------------------------------------------------------------------- training engine
# Shared by sca2lstm.py, fine_train.py and pso_lstm.py. The `windows` arguments are
# hydrologyDataset.WindowData objects (duck-typed, so the imports keep flowing one way).


@dataclass
class TrainSettings:
    """Optimisation settings of one training run (resolved from the config and the device)."""

    epochs: int
    lr: float
    batch_size: int
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 0.0
    accumulation: int = 1
    patience: int = 10
    seed: int = 42
    samples_per_epoch: int = 0
    mixed_precision: bool = False
    compile: bool = False
    backend: str = "inductor"
    data_path: str = "resident"
    num_workers: int = 0
    pin_memory: bool = False
    prefetch_factor: int = 2
    persistent_workers: bool = False
    gradient_checkpointing: bool = False
    ema_decay: float | None = None
    # HORIZON_WEIGHTS normalised to mean 1; None: every lead day weighs the same.
    horizon_weights: tuple[float, ...] | None = None

    @classmethod
    def from_config(cls, config: dict, device) -> TrainSettings:
        """GPU variants of BATCH_SIZE and LR on CUDA; GPU-only options say once on a CPU."""
        cuda = getattr(device, "type", str(device)) == "cuda"
        if not cuda:
            for key in ("USE_COMPILE", "MIXED_PRECISION"):
                if config[key]:
                    log_once(
                        "%s is on but applies to CUDA devices only; training on %s without it",
                        key,
                        device,
                    )
        return cls(
            epochs=config["N_EPOCHS"],
            lr=config["LR_GPU"] if cuda else config["LR"],
            batch_size=config["BATCH_SIZE_GPU"] if cuda else config["BATCH_SIZE"],
            weight_decay=config["WEIGHT_DECAY"],
            warmup_steps=config["WARMUP_STEPS"],
            grad_clip=config["GRADIENT_CLIP"],
            accumulation=config["GRADIENT_ACCUMULATION"],
            patience=config["PATIENCE"],
            seed=config["SEED"],
            samples_per_epoch=config["SAMPLES_PER_EPOCH"],
            mixed_precision=config["MIXED_PRECISION"] and cuda,
            compile=config["USE_COMPILE"] and cuda,
            backend=config["BACKEND"],
            data_path=config["DATA_PATH"],
            num_workers=config["NUM_WORKERS"],
            pin_memory=config["PIN_MEMORY"] and cuda,
            prefetch_factor=config["PREFETCH_FACTOR"],
            persistent_workers=config["PERSISTENT_WORKERS"],
            gradient_checkpointing=config["GRADIENT_CHECKPOINTING"],
            ema_decay=config["EMA_DECAY"],
            horizon_weights=normalised_horizon_weights(config.get("HORIZON_WEIGHTS")),
        )


def nse_star_loss(pred, y, mask, basin_std, lead_weight=None):
    """NSE* loss of Kratzert et al. (2019, HESS 23, 5089): squared error weighted by 1/(σ_b+0.1)².

    Parameters
    ----------
    pred, y : torch.Tensor
        ``[B, n_out]`` scaled predictions and targets.
    mask : torch.Tensor
        ``[B, n_out]`` bool, True where the target is observed.
    basin_std : torch.Tensor
        ``[B]`` training-period standard deviation of each sample's basin (scaled units).
    lead_weight : torch.Tensor, optional
        ``[n_out]`` weight of each lead day's squared errors (HORIZON_WEIGHTS, mean 1); the
        normalisation by the number of observed targets is unchanged. None: all weigh 1.
    """
    weight = 1.0 / (basin_std[:, None] + 0.1) ** 2  # [B, 1]
    err = (pred.float() - y) ** 2 * weight  # [B, n_out]
    if lead_weight is not None:
        err = err * lead_weight[None, :]  # [B, n_out]
    n = mask.sum()
    return (err * mask).sum() / n.clamp(min=1)


def optimizer_step(optimizer, scaler, params, grad_clip: float) -> None:
    """One optimiser step: unscale, clip the gradient norm to ``grad_clip`` (0: off), step, zero."""
    import torch

    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device):
    """Join the process group that torchrun set up (NCCL on GPUs, Gloo on CPUs).

    Returns
    -------
    torch.device
        This process's device: ``cuda:LOCAL_RANK`` on GPUs, else the CPU.
    """
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"torchrun started more processes than the {torch.cuda.device_count()} visible GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def _set_train_mode(model) -> None:
    """Train mode, except submodules with no trainable parameter (frozen groups stay in eval)."""
    model.train()
    for child in model.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()


def _autocast(device, enabled: bool):
    import contextlib

    import torch

    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


EVAL_BATCH = 1024  # windows per forward pass when only predicting: no gradients to keep


def eval_batch_size(batch_size: int) -> int:
    """Batch for prediction and scoring: the training batch, but at least EVAL_BATCH windows."""
    return max(EVAL_BATCH, int(batch_size))


@dataclass(frozen=True)
class InferenceSettings:
    """How prediction runs the model: USE_COMPILE, BACKEND and MIXED_PRECISION, as in training."""

    mixed_precision: bool = False
    compile: bool = False
    backend: str = "inductor"

    @classmethod
    def from_config(cls, config: dict, device) -> InferenceSettings:
        """The config's options on CUDA; on a CPU, say once that they do not apply."""
        cuda = getattr(device, "type", str(device)) == "cuda"
        if not cuda:
            for key in ("USE_COMPILE", "MIXED_PRECISION"):
                if config[key]:
                    log.info(
                        "%s is on but applies to CUDA devices only; predicting on %s without it",
                        key,
                        device,
                    )
        return cls(
            mixed_precision=config["MIXED_PRECISION"] and cuda,
            compile=config["USE_COMPILE"] and cuda,
            backend=config["BACKEND"],
        )


def predict_windows(
    model,
    windows,
    batch_size: int = EVAL_BATCH,
    mean_weights: bool = False,
    inference: InferenceSettings | None = None,
):
    """Run ``model`` over every sample of ``windows`` in order.

    ``inference`` compiles the model (``torch.compile``) and runs it under the autocast of
    training; by default it runs as it is, in fp32.

    Returns
    -------
    numpy.ndarray
        ``[S, n_out]`` predictions in scaled units; with ``mean_weights`` also each window's
        channel weights averaged over its days, ``[S, C]`` (float32), from the same pass (the
        full ``[S, L, C]`` weights of a long test period would not fit in memory).
    """
    import torch

    model.eval()
    inference = inference or InferenceSettings()
    step = torch.compile(model, backend=inference.backend) if inference.compile else model
    preds, weights = [], []
    with torch.no_grad(), _autocast(windows.device, inference.mixed_precision):
        for batch in windows.iter_batches(batch_size, shuffle=False):
            if mean_weights:
                out, w = step(
                    batch["x"], batch["static"], return_weights=True, n_last=batch["y"].shape[1]
                )
                weights.append(w.float().mean(dim=1).cpu().numpy())
            else:
                out = step(batch["x"], batch["static"], n_last=batch["y"].shape[1])
            preds.append(out.float().cpu().numpy())
    n_out = windows.spec.n_out
    pred = np.concatenate(preds) if preds else np.zeros((0, n_out), np.float32)
    if mean_weights:
        shape = (0, len(windows.spec.channels))
        return pred, (np.concatenate(weights) if weights else np.zeros(shape, np.float32))
    return pred


def series_by_basin(windows, pred_scaled: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Observed and simulated series per basin in mm/day, flattened over targets.

    Returns
    -------
    dict
        basin -> {"date": [n], "lead": [n], "obs": [n], "sim": [n]} with NaN obs where unobserved.
    """
    dates = windows.target_dates()  # [S, n_out]
    y = windows.targets().cpu().numpy()
    mask = windows.y_mask.cpu().numpy()
    obs = np.where(mask, windows.scalers.unscale_target(y.astype(np.float64)), np.nan)
    sim = windows.scalers.unscale_target(pred_scaled.astype(np.float64))
    owner = windows.sample_basin.cpu().numpy()
    n_out = obs.shape[1]
    # Forecast: lead days 1..P. Simulate: every target is the same-day simulation (lead 0).
    lead = np.arange(1, n_out + 1) if windows.spec.mode == "forecast" else np.zeros(n_out, int)
    leads = np.broadcast_to(lead, obs.shape)
    inside = windows.in_period
    out = {}
    for k, basin in enumerate(windows.basins):
        sel = (owner == k)[:, None] & inside
        out[basin] = {
            "date": dates[sel],
            "lead": leads[sel],
            "obs": obs[sel],
            "sim": sim[sel],
        }
    return out


def median_nse(windows, pred_scaled: np.ndarray) -> float:
    """Median over basins of the NSE of all targets (the early-stopping score)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = [nse(s["obs"], s["sim"]) for s in series_by_basin(windows, pred_scaled).values()]
    scores = [s for s in scores if np.isfinite(s)]
    return float(np.median(scores)) if scores else float("nan")


@dataclass
class FitResult:
    """What :func:`fit` returns: the best weights and the per-epoch history."""

    best_state: dict
    best_epoch: int
    best_score: float
    history: list[dict]
    stopped_early: bool = False


@dataclass
class _Training:
    """Everything one :func:`fit` call builds and updates, epoch after epoch."""

    model: Any
    step_model: Any  # the model as stepped: DDP- and/or compile-wrapped
    eval_model: Any  # the model as validated and kept: the moving average with EMA_DECAY
    ema: Any
    params: list
    optimizer: Any
    scheduler: Any
    scaler: Any
    generator: Any
    loader: Any
    basin_std: Any
    per_epoch: int
    n_batches: int
    rank: int
    world: int
    history: list[dict]
    best_state: dict
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    first_epoch: int = 1
    lead_weight: Any = None  # [n_out] HORIZON_WEIGHTS on the device; None: uniform

    def state(self, epoch: int) -> dict:
        """What a checkpoint keeps to resume after ``epoch``."""
        return {
            "epoch": epoch,
            "model_state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "best_state": self.best_state,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "ema_state_dict": self.ema.state_dict() if self.ema is not None else None,
        }

    def restore(self, resume: dict) -> None:
        """Continue from a :meth:`state` of an earlier call."""
        self.model.load_state_dict(resume["model_state_dict"])
        self.optimizer.load_state_dict(resume["optimizer"])
        self.scheduler.load_state_dict(resume["scheduler"])
        self.generator.set_state(resume["generator"])
        self.best_state, self.best_score = resume["best_state"], resume["best_score"]
        self.best_epoch, self.bad_epochs = resume["best_epoch"], resume["bad_epochs"]
        if self.ema is not None and resume.get("ema_state_dict") is not None:
            self.ema.load_state_dict(resume["ema_state_dict"])
        self.history, self.first_epoch = list(resume["history"]), resume["epoch"] + 1
        log.info(
            "resuming after epoch %d (best validation NSE %.4f at epoch %d)",
            resume["epoch"],
            self.best_score,
            self.best_epoch,
        )


def _trainable(model, settings: TrainSettings) -> list:
    """Set gradient checkpointing where the model has it; the parameters that train."""
    if hasattr(model, "gradient_checkpointing"):
        model.gradient_checkpointing = settings.gradient_checkpointing
    elif settings.gradient_checkpointing:
        log.info(
            "GRADIENT_CHECKPOINTING applies to SCA2LSTM; %s trains without it",
            type(model).__name__,
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("every layer is frozen, so there is nothing to train; unfreeze a group")
    return params


def _scheduler(optimizer, settings: TrainSettings, n_batches: int):
    """Linear warm-up, then cosine decay to 10 % of the learning rate, per optimiser step."""
    import torch

    total_steps = max(1, settings.epochs * math.ceil(n_batches / settings.accumulation))

    def lr_factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress_ = (step - settings.warmup_steps) / max(1, total_steps - settings.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def _stream_loader(train, settings: TrainSettings, per_epoch: int, generator, rank, world):
    """The DataLoader of ``DATA_PATH: stream`` (None for the resident path)."""
    if settings.data_path != "stream":
        return None
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    workers = settings.num_workers
    dataset = train.to_dataset()
    if world > 1:
        sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=settings.seed)
    else:
        sampler = RandomSampler(dataset, num_samples=per_epoch, generator=generator)
    return DataLoader(
        dataset,
        batch_size=settings.batch_size // world,
        sampler=sampler,
        num_workers=workers,
        pin_memory=settings.pin_memory,
        prefetch_factor=settings.prefetch_factor if workers > 0 else None,
        persistent_workers=settings.persistent_workers and workers > 0,
    )


def _prepare_training(model, train, settings: TrainSettings, device) -> _Training:
    """Optimiser, schedule, wrappers, averaging and batches of one :func:`fit` call."""
    import copy

    import torch

    model.to(device)
    params = _trainable(model, settings)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    per_epoch = len(train)
    if settings.samples_per_epoch and settings.samples_per_epoch < per_epoch:
        per_epoch = settings.samples_per_epoch
    n_batches = math.ceil(per_epoch / settings.batch_size)
    use_scaler = settings.mixed_precision and not torch.cuda.is_bf16_supported()
    rank, world = distributed_rank()
    step_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if settings.batch_size < world:
            raise UserError(f"BATCH_SIZE {settings.batch_size} is smaller than {world} processes")
        ids = [device.index] if device.type == "cuda" else None
        step_model = DistributedDataParallel(model, device_ids=ids)
    if settings.compile:
        step_model = torch.compile(step_model, backend=settings.backend)
    ema = None
    if settings.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay))
    generator = torch.Generator().manual_seed(settings.seed)
    lead_weight = None
    if settings.horizon_weights is not None:
        lead_weight = torch.tensor(settings.horizon_weights, dtype=torch.float32, device=device)
        log.info(
            "loss weights per lead day (HORIZON_WEIGHTS, mean 1): %s",
            ", ".join(f"{w:.3f}" for w in settings.horizon_weights),
        )
    return _Training(
        model=model,
        step_model=step_model,
        eval_model=ema.module if ema is not None else model,
        ema=ema,
        params=params,
        optimizer=optimizer,
        scheduler=_scheduler(optimizer, settings, n_batches),
        scaler=torch.amp.GradScaler("cuda", enabled=use_scaler),
        generator=generator,
        loader=_stream_loader(train, settings, per_epoch, generator, rank, world),
        basin_std=train.basin_target_std(),
        per_epoch=per_epoch,
        n_batches=n_batches,
        rank=rank,
        world=world,
        history=[],
        best_state=copy.deepcopy(model.state_dict()),
        lead_weight=lead_weight,
    )


def _train_epoch(t: _Training, train, settings: TrainSettings, device, epoch: int) -> dict:
    """One pass over the epoch's batches; the epoch's record, validation not yet filled in."""
    import time

    import torch

    _set_train_mode(t.step_model if t.step_model is t.model else t.model)
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if t.loader is not None and t.world > 1:
        t.loader.sampler.set_epoch(epoch)
    batches = (
        t.loader
        if t.loader is not None
        else train.iter_batches(
            settings.batch_size,
            shuffle=True,
            generator=t.generator,
            limit=t.per_epoch,
            shard=(t.rank, t.world),
        )
    )
    # The loss sum stays on the device: no host synchronisation per batch on a GPU (a CPU
    # checks every batch for free and stops at the first non-finite loss).
    loss_sum, seen = torch.zeros((), dtype=torch.float64, device=device), 0
    t.optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(batches, start=1):
        if t.loader is not None:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with _autocast(device, settings.mixed_precision):
            pred = t.step_model(batch["x"], batch["static"], n_last=batch["y"].shape[1])
            loss = nse_star_loss(
                pred, batch["y"], batch["y_mask"], t.basin_std[batch["basin"]], t.lead_weight
            )
        if device.type != "cuda" and not torch.isfinite(loss):
            raise RuntimeError(f"the training loss became {loss.item()} in epoch {epoch}")
        t.scaler.scale(loss / settings.accumulation).backward()
        if i % settings.accumulation == 0 or i == t.n_batches:
            optimizer_step(t.optimizer, t.scaler, t.params, settings.grad_clip)
            t.scheduler.step()
            if t.ema is not None:
                t.ema.update_parameters(t.model)
        n = batch["x"].shape[0]
        loss_sum += loss.detach().double() * n
        seen += n
    total_loss = float(loss_sum)  # one synchronisation per epoch
    if not math.isfinite(total_loss):
        raise RuntimeError(f"the training loss became {total_loss} in epoch {epoch}")
    if t.world > 1:
        # Every rank saw its own share of each global batch: report the global mean loss.
        totals = torch.tensor([total_loss, float(seen)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(totals)
        total_loss, seen = float(totals[0]), int(totals[1])
    seconds = time.perf_counter() - t0
    record = {
        "epoch": epoch,
        "train_loss": total_loss / max(1, seen),
        "val_loss": float("nan"),
        "val_nse": float("nan"),
        "lr": t.optimizer.param_groups[0]["lr"],
        "seconds": seconds,
        "samples_per_s": seen / seconds if seconds > 0 else float("nan"),
    }
    if device.type == "cuda":
        record["gpu_mem_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        record["gpu_mem_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    return record


def evaluate(model, val, batch_size: int, lead_weight=None) -> tuple[float, float]:
    """Validation loss (NSE*, scaled units; ``lead_weight`` as in :func:`nse_star_loss`) and
    median NSE of ``model`` over ``val``."""
    import torch

    pred = predict_windows(model, val, batch_size=eval_batch_size(batch_size))
    pred_t = torch.from_numpy(pred).to(val.device)
    basin_std = val.basin_target_std()[val.sample_basin]
    with torch.no_grad():
        lead_w = None if lead_weight is None else lead_weight.to(val.device)
        loss = nse_star_loss(pred_t, val.targets(), val.y_mask, basin_std, lead_w)
    return float(loss), median_nse(val, pred)


def _log_epoch(record: dict, epochs: int, is_best: bool) -> None:
    gpu_mem = ""
    if "gpu_mem_allocated_mb" in record:  # on CUDA: the epoch's peaks, as in history.csv
        gpu_mem = (
            f"  GPU memory {record['gpu_mem_allocated_mb']:.0f} MiB allocated, "
            f"{record['gpu_mem_reserved_mb']:.0f} MiB reserved"
        )
    log.info(
        "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_NSE %.4f  lr %.2e  %.1f s  "
        "%.0f samples/s%s%s",
        record["epoch"],
        epochs,
        record["train_loss"],
        record["val_loss"],
        record["val_nse"],
        record["lr"],
        record["seconds"],
        record["samples_per_s"],
        gpu_mem,
        "  *best*" if is_best else "",
    )


def fit(
    model, train, val, settings: TrainSettings, device, on_epoch=None, resume: dict | None = None
):
    """Train ``model`` on ``train`` with early stopping on the validation median NSE.

    AdamW on the trainable parameters, linear warm-up then cosine decay to 10 % of the learning
    rate, gradient accumulation and clipping, NSE* loss with missing targets masked. The best
    weights (by validation NSE; by training loss when ``val`` is None) are restored at the end.
    With ``settings.ema_decay`` the weights validated, saved and restored are an exponential
    moving average of the trained ones, updated after every optimiser step
    (``torch.optim.swa_utils.AveragedModel``): it smooths the step-to-step noise of small batches.

    Parameters
    ----------
    model : torch.nn.Module
        Called as ``model(x, static, n_last=n)``, returns ``[B, n_out]``.
    train, val : WindowData
        Training windows (``val`` may be None).
    settings : TrainSettings
    device : torch.device
    on_epoch : callable, optional
        ``on_epoch(record, model, is_best, state)`` after every epoch (checkpoints, plots);
        ``model`` is the evaluated one (the moving average when ``settings.ema_decay`` is set).
    resume : dict, optional
        A ``state`` from an earlier call's ``on_epoch``, to continue that run.

    Returns
    -------
    FitResult
    """
    import copy

    t = _prepare_training(model, train, settings, device)
    if resume:
        t.restore(resume)
    stopped_early = False
    bar = progress(range(t.first_epoch, settings.epochs + 1), desc="epochs", unit="epoch")
    for epoch in bar:
        record = _train_epoch(t, train, settings, device, epoch)
        if val is not None:
            record["val_loss"], record["val_nse"] = evaluate(
                t.eval_model, val, settings.batch_size, t.lead_weight
            )
            score = record["val_nse"] if math.isfinite(record["val_nse"]) else -math.inf
        else:
            score = -record["train_loss"]
        is_best = score > t.best_score
        if is_best:
            t.best_score, t.best_epoch, t.bad_epochs = score, epoch, 0
            t.best_state = copy.deepcopy(t.eval_model.state_dict())
        else:
            t.bad_epochs += 1
        t.history.append(record)
        _log_epoch(record, settings.epochs, is_best)
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", val_nse=f"{record['val_nse']:.3f}")
        if on_epoch is not None and t.rank == 0:
            on_epoch(record, t.eval_model, is_best, t.state(epoch))
        if val is not None and settings.patience and t.bad_epochs >= settings.patience:
            log.info("early stopping: no better validation NSE for %d epochs", t.bad_epochs)
            stopped_early = True
            break
    bar.close()
    model.load_state_dict(t.best_state)
    if not t.history:
        raise UserError("no epoch left to train: the run had already finished (raise --epochs)")
    return FitResult(t.best_state, t.best_epoch, t.best_score, t.history, stopped_early)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(
        description="Shared pieces of the toolkit; run directly, it checks the environment."
    )
    _parser.add_argument("--check_env", action=CheckEnvAction)
    _parser.parse_args()
    _parser.print_help()
