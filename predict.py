"""Predictions, metrics and plots from any checkpoint of the toolkit (SCA2LSTM, PSO-LSTM).

The model, its scalers, input features and mode are rebuilt from the checkpoint alone; nothing is
refitted. Every day of the range with a full input window is predicted; days without observed
discharge (gaps, or the days after the last observation) are predicted and left unscored.

Usage::

    python predict.py --model ./model_output/fine_tune/basin_32006/*/best_model_basin_32006.pth \\
        --basin 32006
    python predict.py --model model_output/sca2lstm.pth --basins all --start 2000-01-01 \\
        --end 2000-12-31 --export_weights
    python predict.py --model model_output/sca2lstm.pth --basin 22001 \\
        --compare "model_output/pso_lstm/basin_22001/*/best_model_basin_22001.pth"
    python predict.py --model model_output/sca2lstm.pth --basins all --device cuda --compile \\
        --mixed_precision                     # compiled bf16 inference, as in training
    python predict.py --ensemble --model model_output/sca2lstm_ensemble.json

Outputs, in a new run folder ``<OUTPUT_DIR>/predict/<YYYYmmdd_HHMMSS>/`` (built in a hidden
temporary folder and renamed at the end, so a failed run leaves no folder behind):

- ``predictions.csv``: date, basin, model, lead (forecast: days ahead; simulate: 0), obs_mm_day,
  sim_mm_day, obs_m3s, sim_m3s; one row per target day and lead.
- ``metrics.csv`` (one row per model and basin) and ``metrics.json`` (the same, plus the run's
  settings and notes): NSE, KGE with r/alpha/beta, RMSE and MAE in mm/day and m³/s, R², bias %,
  Pearson r, alpha-/beta-NSE, FHV/FLV/FMS, peak timing and missed peaks (NaN with several forecast
  leads), the number of scored days; in forecast mode also persistence NSE and the skill over it.
- Forecast models: ``metrics_by_lead.csv`` (model, basin, lead: NSE, KGE, RMSE, bias %,
  persistence NSE, skill over persistence, number of scored days) and ``skill_by_lead.png``.
- ``operational_forecast.csv``, where the range reaches past the last observed discharge: the
  PRED_LEN days ahead of the newest data (issue date, lead, date, simulated flow), unscored.
- ``config.yaml`` (resolved config) and ``predict.log``.
- Per basin (first model, lead ``--lead``, default 1, in forecast mode): ``hydrograph_<id>.png``
  (and ``hydrograph_<id>_zoom.png``, the year around the highest flow, for ranges over 2 years),
  ``scatter_<id>.png``, ``residuals_<id>.png``, ``fdc_<id>.png``; with ``--compare`` also
  ``compare_hydrograph_<id>.png``, ``model_comparison.png`` and ``error_distribution.png``.
- ``--ensemble``: the ensemble (the mean of the members in mm/day) is the first model, then each
  member; its rows of ``predictions.csv`` add the members' range (``sim_min_mm_day``,
  ``sim_max_mm_day``, ``sim_min_m3s``, ``sim_max_m3s``), drawn as a band on the hydrographs.
- ``--export_weights`` (SCA2LSTM): ``channel_weights_daily.csv`` (date = issue day t of the
  window, basin, step 0..L-1 with L-1 that day, then L..L+P-1 the lead days with future inputs,
  channel, weight), ``channel_weights_mean.csv``,
  ``channel_weights_season.csv`` (DJF/MAM/JJA/SON) and ``channel_weights.png``. The weights show
  what the model uses, not causal importance.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import glob
import importlib
import os
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hydrologyDataset import (
    HINDCAST_NOTE,
    FeatureSpec,
    InputData,
    LoadedModel,
    WindowData,
    find_source,
    load_input_data,
    load_model,
    resolve_data_dir,
)
from utils import (
    BASIN_KEYS,
    MODEL_KEYS,
    ROOT,
    HelpFormatter,
    InferenceSettings,
    LogBacklog,
    RunFolder,
    UserError,
    add_common_args,
    basin_metrics_table,
    check_ensemble_members,
    close_log_files,
    config_summary,
    csv_list,
    ensemble_prediction,
    ensure_writable,
    eval_batch_size,
    is_ensemble_manifest,
    lead_metrics_table,
    load_checkpoint,
    load_config,
    log,
    log_device,
    mark_synthetic,
    mm_per_day_to_m3s,
    output_root,
    plot_channel_weights,
    positive_int,
    predict_windows,
    progress,
    pyplot,
    read_ensemble_manifest,
    resolve_device,
    run_cli,
    save_figure,
    series_by_basin,
    setup_logging,
    show_config_defaults,
    synthetic_tag,
    to_day,
    warn_synthetic,
    write_csv,
    write_json,
)

__all__ = [
    "MODEL_CLASSES",
    "PredictRequest",
    "build_parser",
    "main",
    "model_class",
    "predict",
    "read_model",
]

# Model class name in a checkpoint -> module defining it. Modules are imported only when a
# checkpoint names their class; every class offers ``from_checkpoint(path, map_location)``.
MODEL_CLASSES: dict[str, str] = {"SCA2LSTM": "sca2lstm", "PSOLSTM": "pso_lstm"}
SEASONS = ("DJF", "MAM", "JJA", "SON")
_SEASON_OF_MONTH = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0])  # index: month 1..12
METRIC_COLUMNS = (
    "model", "basin", "gauge_name", "group", "days_seen_in_training", "n_scored", "nse", "kge",
    "kge_r", "kge_alpha", "kge_beta", "rmse_mm_day", "mae_mm_day", "rmse_m3s", "mae_m3s", "r2",
    "bias_pct", "pearson_r", "alpha_nse", "beta_nse", "fhv", "flv", "fms", "peak_timing",
    "missed_peaks", "persistence_nse", "skill_vs_persistence", "checkpoint",
)  # fmt: skip
LEAD_COLUMNS = (
    "model", "basin", "gauge_name", "group", "lead", "n_scored", "nse", "kge", "rmse_mm_day",
    "bias_pct", "persistence_nse", "skill_vs_persistence",
)  # fmt: skip


# --------------------------------------------------------------------------- models


def model_class(ckpt: dict, path: str | Path) -> type:
    """The model class a checkpoint names, imported from its module.

    Raises
    ------
    UserError
        A model class that is not in :data:`MODEL_CLASSES`, or whose module is missing.
    """
    name = ckpt["model_class"]
    module_name = MODEL_CLASSES.get(name)
    if module_name is None:
        raise UserError(
            f"{path} holds a {name} model; predict.py reads {', '.join(MODEL_CLASSES)} checkpoints"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise UserError(
            f"{path} holds a {name} model, defined in {module_name}.py, which this copy of the "
            "toolkit does not have; update the toolkit or pass another checkpoint"
        ) from None
    cls = getattr(module, name, None)
    if cls is None or not hasattr(cls, "args_class"):
        raise UserError(f"{module_name}.py defines no loadable {name} model; update it")
    return cls


def read_model(path: Path, device: torch.device) -> LoadedModel:
    """A checkpoint's model, features and scalers (never refitted), in eval mode on ``device``."""
    ckpt = load_checkpoint(path)
    loaded = load_model(path, model_class(ckpt, path), device, ckpt=ckpt)
    loaded.model.eval()
    return loaded


def resolve_checkpoint(patterns: Sequence[str], flag: str) -> Path:
    """One checkpoint from paths or glob patterns: the newest (mtime) when several match.

    Raises
    ------
    UserError
        A pattern without a match, or a named file that does not exist.
    """
    found: list[str] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if any(c in expanded for c in "*?["):
            matches = sorted(p for p in glob.glob(expanded) if os.path.isfile(p))
            if not matches:
                raise UserError(
                    f"{flag} {pattern}: no file matches; check the path (fine-tuned models are "
                    "model_output/fine_tune/basin_<id>/<timestamp>/best_model_basin_<id>.pth)"
                )
            found += matches
        else:
            if os.path.isdir(expanded):
                load_checkpoint(expanded)  # raises the error that names the .pth files inside
            if not os.path.isfile(expanded):
                raise UserError(f"{flag} {pattern}: checkpoint not found; check the path")
            found.append(expanded)
    found = list(dict.fromkeys(found))
    if len(found) == 1:
        return Path(found[0])
    newest = max(found, key=lambda p: (os.path.getmtime(p), p))
    stamp = dt.datetime.fromtimestamp(os.path.getmtime(newest)).isoformat(timespec="seconds")
    log.info(
        "%s matches %d files; using the newest, %s (modified %s); not used: %s",
        flag,
        len(found),
        newest,
        stamp,
        ", ".join(p for p in found if p != newest),
    )
    return Path(newest)


def _labels(models: list[LoadedModel]) -> list[str]:
    """Short unique names: class, stage, mode and window length (+ run folder when needed)."""
    labels = [
        f"{m.model_class}_{m.ckpt.get('stage', 'model')}_{m.spec.mode}_L{m.spec.seq_len}"
        + (f"_P{m.spec.pred_len}" if m.spec.mode == "forecast" and m.spec.pred_len > 1 else "")
        + ("_future" if m.spec.future_inputs else "")
        for m in models
    ]
    dup = {lab for lab in labels if labels.count(lab) > 1}
    labels = [
        f"{lab}_{m.path.parent.name}" if lab in dup else lab
        for lab, m in zip(labels, models, strict=True)
    ]
    return [lab if labels.count(lab) == 1 else f"{lab}_{i + 1}" for i, lab in enumerate(labels)]


def checkpoint_basin(ckpt: dict) -> str | None:
    """The one basin a fine-tuned or PSO-LSTM checkpoint was trained for (None otherwise)."""
    for key in ("target_basin", "basin"):  # fine_train.py writes the first, pso_lstm.py the second
        value = ckpt.get(key)
        if isinstance(value, (str, int)) and str(value).strip():
            return str(value).strip()
    if ckpt.get("stage") in ("fine_tune", "pso_lstm"):
        train = basin_lists(ckpt)["TRAIN_BASINS"]
        if len(train) == 1:
            return str(train[0])
    return None


def basin_lists(ckpt: dict) -> dict[str, list[str]]:
    """TRAIN_BASINS, VAL_BASINS and TEST_BASINS of the checkpoint's config ([] when absent)."""
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    return {k: [str(b) for b in config.get(k) or []] for k in BASIN_KEYS}


def basin_groups(ckpt: dict) -> dict[str, str]:
    """Basin -> its role in the checkpoint's training (train / validation / test)."""
    lists = basin_lists(ckpt)
    group: dict[str, str] = {}
    for key, name in (("TEST_BASINS", "test"), ("VAL_BASINS", "validation")):
        group.update({str(b): name for b in lists.get(key) or []})
    group.update({str(b): "train" for b in lists.get("TRAIN_BASINS") or []})
    own = checkpoint_basin(ckpt)
    if own:
        group[own] = "train"
    return group


def training_spans(ckpt: dict) -> dict[str, list[tuple[np.datetime64, np.datetime64]]]:
    """Basin -> the date ranges whose observations trained this checkpoint (inclusive)."""
    config = ckpt.get("config") or {}
    spans: dict[str, list[tuple[np.datetime64, np.datetime64]]] = {}
    if "TRAIN_START" in config:
        train = (np.datetime64(config["TRAIN_START"], "D"), np.datetime64(config["TRAIN_END"], "D"))
        for b in basin_lists(ckpt)["TRAIN_BASINS"]:
            spans.setdefault(str(b), []).append(train)
    own, split = checkpoint_basin(ckpt), ckpt.get("split")
    if own and isinstance(split, dict) and "train_start" in split:
        block = (np.datetime64(split["train_start"], "D"), np.datetime64(split["train_end"], "D"))
        spans.setdefault(own, []).append(block)
    return spans


def days_seen_in_training(spans: list, dates: np.ndarray, obs: np.ndarray) -> int:
    """How many distinct scored days (observed target) lie inside the training ``spans``."""
    scored = np.unique(dates[np.isfinite(obs)])
    seen = np.zeros(scored.shape, dtype=bool)
    for lo, hi in spans:
        seen |= (scored >= lo) & (scored <= hi)
    return int(seen.sum())


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Predict with a checkpoint; write predictions, metrics and plots "
        "(defaults from run.config and the checkpoint).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--model",
        nargs="+",
        required=True,
        metavar="CKPT",
        help="checkpoint path or glob (quoted or expanded by the shell); when several files "
        "match, the newest is used",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--basin", type=csv_list, help="basin id(s), e.g. 32006 or 22001,22006")
    which.add_argument(
        "--basins",
        help="comma-separated basin ids, or 'all' for every basin in the data folder "
        "(default: the checkpoint's basin, else its test basins)",
    )
    parser.add_argument(
        "--start", help="first day, YYYY-MM-DD (default: the checkpoint's test start)"
    )
    parser.add_argument("--end", help="last day, YYYY-MM-DD (default: the checkpoint's test end)")
    parser.add_argument("--no_plots", action="store_true", help="write no PNG plots")
    parser.add_argument(
        "--export_weights",
        action="store_true",
        help="export the SCA2LSTM channel weights per day, per basin and season, and a heat map",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="CKPT",
        help="more checkpoints (each a path or a quoted glob) run on the same basins and days",
    )
    parser.add_argument(
        "--lead",
        type=positive_int,
        metavar="K",
        help="forecast lead day (1..PRED_LEN) shown in the hydrograph, scatter, residual and FDC "
        "plots and the --compare charts (default 1)",
    )
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help="--model lists the members of an ensemble (several checkpoints, a quoted glob whose "
        "every match is a member, or an ensemble.json); reports their mean, each member and "
        "their spread",
    )
    parser.add_argument("--log_scale", action="store_true", help="log axes on the scatter plot")
    parser.add_argument("--demo", action="store_true", help="use the synthetic demo dataset")
    parser.add_argument(
        "--compile", action="store_true", help="USE_COMPILE on: torch.compile the model (CUDA)"
    )
    parser.add_argument(
        "--mixed_precision",
        action="store_true",
        help="MIXED_PRECISION on: predict under bf16/fp16 autocast (CUDA)",
    )
    add_common_args(parser)
    show_config_defaults(parser, "predict")
    return parser


@dataclass
class PredictRequest:
    """What a prediction run is asked for: the flags of ``predict.py``, no argparse.

    A notebook builds one directly and calls :func:`predict`::

        request = PredictRequest(["model_output/sca2lstm.pth"], basin=["22001"],
                                 data_dir="../shared/camels_gb", no_plots=True)
        result = predict(request, load_config(stage="predict"))

    Attributes
    ----------
    model : list of str
        Checkpoint paths or glob patterns (the newest match is used; with ``ensemble``, all).
    compare : list of str
        Checkpoints to score next to ``model``.
    ensemble : bool
        ``model`` names the members of an ensemble (or an ensemble manifest).
    basin : list of str, optional
        Basin ids; ``basins`` instead takes a comma list or ``all``. Neither: the checkpoint's.
    start, end : str, optional
        YYYY-MM-DD (default: the checkpoint's test period).
    lead : int, optional
        The lead day of the hydrograph and comparison plots (forecast mode).
    data_dir, demo, device
        As the flags of the same names.
    export_weights, no_plots, log_scale : bool
        As the flags of the same names.
    """

    model: list[str]
    compare: list[str] = field(default_factory=list)
    ensemble: bool = False
    basin: list[str] | None = None
    basins: str | None = None
    start: str | None = None
    end: str | None = None
    lead: int | None = None
    data_dir: str | None = None
    demo: bool = False
    device: str = "auto"
    export_weights: bool = False
    no_plots: bool = False
    log_scale: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PredictRequest:
        """The request of the command line."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def resolve_period(request: PredictRequest, ckpt: dict) -> tuple[np.datetime64, np.datetime64]:
    """``--start``/``--end``, else the checkpoint's test period."""
    config = ckpt.get("config") or {}
    values = []
    for flag, given, key in (
        ("--start", request.start, "TEST_START"),
        ("--end", request.end, "TEST_END"),
    ):
        if given is None and key not in config:
            raise UserError(f"the checkpoint holds no {key}; pass {flag} YYYY-MM-DD")
        values.append(to_day(given, flag) if given is not None else to_day(config[key], key))
    start, end = values
    if end < start:
        said_end = "--end" if request.end is not None else "the checkpoint's test end"
        said_start = "--start" if request.start is not None else "the checkpoint's test start"
        raise UserError(f"{said_end} {end} is before {said_start} {start}; fix the dates")
    return start, end


def resolve_basins(request: PredictRequest, ckpt: dict, data_dir: Path) -> list[str]:
    """``--basin``/``--basins``, else the checkpoint's basin, else its test basins."""
    if request.basin:
        return list(dict.fromkeys(request.basin))
    if request.basins:
        if request.basins.strip().lower() == "all":
            return find_source(data_dir).basins
        try:
            return list(dict.fromkeys(csv_list(request.basins)))
        except argparse.ArgumentTypeError:
            raise UserError("--basins needs basin ids, e.g. 22001,22006, or 'all'") from None
    own = checkpoint_basin(ckpt)
    if own:
        return [own]
    test = basin_lists(ckpt)["TEST_BASINS"]
    if not test:
        raise UserError("the checkpoint names no test basins; pass --basin or --basins")
    return [str(b) for b in test]


def resolve_data(request: PredictRequest, config: dict, ckpt: dict) -> Path:
    """``--data_dir``/DATA_DIR/$CAMELS_GB_DIR; else the default folder, else the checkpoint's."""
    chosen = (
        request.demo
        or request.data_dir
        or config.get("DATA_DIR")
        or os.environ.get("CAMELS_GB_DIR")
    )
    default = ROOT / "datasets" / "CAMELS_GB"
    saved = ckpt.get("data_dir")
    if not chosen and not default.is_dir() and saved and Path(saved).is_dir():
        log.info(
            "no data folder given and %s is missing; using the checkpoint's, %s", default, saved
        )
        return Path(saved)
    return resolve_data_dir(request.data_dir, config, demo=request.demo)


# --------------------------------------------------------------------------- prediction


@dataclass
class ModelRun:
    """Predictions and scores of one model over the requested basins and days."""

    loaded: LoadedModel
    windows: WindowData
    series: dict[str, dict[str, np.ndarray]]
    metrics: pd.DataFrame
    pred: np.ndarray | None = None  # [S, n_out] scaled
    by_lead: pd.DataFrame | None = None  # forecast: metrics per basin and lead day


def build_windows(
    lm: LoadedModel,
    data: InputData,
    basins: list[str],
    start: np.datetime64,
    end: np.datetime64,
    device: torch.device,
) -> WindowData:
    """Every window whose targets start inside the range (observed or not).

    Raises
    ------
    UserError
        A basin without any day that has a full input window.
    """
    windows = WindowData(
        data,
        lm.spec,
        lm.scalers,
        basins,
        start,
        end,
        need_target=False,
        device=device,
        stride=lm.spec.eval_stride,
    )
    empty = [b for b, n in zip(basins, windows.n_samples_per_basin, strict=True) if n == 0]
    if empty:
        spans = ", ".join(f"{b}: {data.basins[b].start}..{data.basins[b].end}" for b in empty)
        raise UserError(
            f"no day of {start}..{end} has a full input window ({lm.spec.seq_len} days of complete "
            f"inputs{future_need(lm.spec)}) for basin(s) {', '.join(empty)} ({spans}); choose a "
            "range inside the data that starts at least one window length after its first day"
        )
    return windows


def future_need(spec: FeatureSpec) -> str:
    """What a window needs past day t (for messages): the known forcings of the lead days."""
    if not spec.future_inputs:
        return ""
    return f", plus {', '.join(spec.future_inputs)} on the {spec.pred_len} lead days"


def run_model(
    lm: LoadedModel,
    data: InputData,
    basins: list[str],
    start: np.datetime64,
    end: np.datetime64,
    device: torch.device,
    batch_size: int,
    inference: InferenceSettings | None = None,
) -> ModelRun:
    """Predict with one model and score each basin in physical units."""
    windows = build_windows(lm, data, basins, start, end, device)
    # [S, n_out] scaled
    pred = predict_windows(lm.model, windows, batch_size=batch_size, inference=inference)
    series = series_by_basin(windows, pred)
    groups = basin_groups(lm.ckpt)
    with warnings.catch_warnings():
        # Unscored basins (forecasts past the last observation) have undefined scores; the
        # log says so once per basin instead.
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics = basin_metrics_table(
            windows, pred, data, {b: groups.get(b, "unseen") for b in basins}
        )
        by_lead = None
        if lm.spec.mode == "forecast":
            by_lead = lead_metrics_table(
                windows, pred, data, {b: groups.get(b, "unseen") for b in basins}
            )
            by_lead = by_lead.rename(columns={"rmse": "rmse_mm_day"})
            by_lead.insert(0, "model", lm.label)
            by_lead = by_lead.reindex(columns=list(LEAD_COLUMNS))
    metrics = metrics.rename(columns={"rmse": "rmse_mm_day", "mae": "mae_mm_day"})
    spans = training_spans(lm.ckpt)
    metrics["days_seen_in_training"] = [
        days_seen_in_training(spans.get(b, []), series[b]["date"], series[b]["obs"])
        if b in series
        else 0
        for b in metrics["basin"]
    ]
    metrics.insert(0, "model", lm.label)
    metrics["checkpoint"] = str(lm.path)
    metrics = metrics.reindex(columns=list(METRIC_COLUMNS))
    return ModelRun(lm, windows, series, metrics, pred, by_lead)


def operational_forecast(run: ModelRun, data: InputData) -> pd.DataFrame:
    """The forecast issued on the newest day of each basin, where it reaches past the last
    observed discharge: PRED_LEN lead days, unscored (operational use).

    Returns
    -------
    pandas.DataFrame
        model, basin, issue_date, last_observation, lead, date, sim_mm_day, sim_m3s; empty when
        every newest forecast falls on observed days, or for simulate-mode models.
    """
    spec, windows = run.loaded.spec, run.windows
    if spec.mode != "forecast" or not len(windows):
        return pd.DataFrame()
    owner = windows.sample_basin.cpu().numpy()
    ends = windows.sample_end.cpu().numpy()
    issue, targets = windows.sample_dates(), windows.target_dates()
    frames = []
    for k, basin in enumerate(windows.basins):
        rows = np.flatnonzero(owner == k)
        if not rows.size:
            continue
        i = rows[np.argmax(ends[rows])]  # the newest window of this basin
        b = data.basins[basin]
        seen = np.flatnonzero(np.isfinite(b.column(spec.target)))
        last_obs = b.start + np.timedelta64(int(seen[-1]), "D") if seen.size else None
        if last_obs is not None and targets[i, -1] <= last_obs:
            if spec.future_inputs and windows.end > b.end:
                log.info(
                    "%s basin %s: no forecast past %s, the end of the data: with future inputs "
                    "the lead days need their known forcings (%s); append the weather forecast "
                    "to the timeseries to forecast ahead",
                    run.loaded.label,
                    basin,
                    b.end,
                    ", ".join(spec.future_inputs),
                )
            continue
        if last_obs is None or issue[i] > last_obs:
            log.info(
                "%s basin %s: discharge is unobserved on the issue day %s (last observed %s), so "
                "the forecast starts from the training mean flow",
                run.loaded.label,
                basin,
                issue[i],
                last_obs or "never",
            )
        sim = windows.scalers.unscale_target(run.pred[i].astype(np.float64))  # [P] mm/day
        frames.append(
            pd.DataFrame(
                {
                    "model": run.loaded.label,
                    "basin": basin,
                    "issue_date": str(issue[i]),
                    "last_observation": str(last_obs) if last_obs is not None else "",
                    "lead": np.arange(1, spec.pred_len + 1),
                    "date": np.datetime_as_string(targets[i], unit="D"),
                    "sim_mm_day": sim,
                    "sim_m3s": mm_per_day_to_m3s(sim, b.area),
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def predictions_frame(run: ModelRun, data: InputData) -> pd.DataFrame:
    """One row per target day and lead, in mm/day and m³/s."""
    frames = []
    for basin, s in run.series.items():
        area = data.basins[basin].area
        # An ensemble's series carry its members' range (minimum and maximum).
        spread = {}
        for key, name in (("low", "sim_min"), ("high", "sim_max")):
            if key in s:
                spread[f"{name}_mm_day"] = s[key]
                spread[f"{name}_m3s"] = mm_per_day_to_m3s(s[key], area)
        frames.append(
            pd.DataFrame(
                {
                    "date": np.datetime_as_string(s["date"], unit="D"),
                    "basin": basin,
                    "model": run.loaded.label,
                    "lead": s["lead"].astype(int),
                    "obs_mm_day": s["obs"],
                    "sim_mm_day": s["sim"],
                    "obs_m3s": mm_per_day_to_m3s(s["obs"], area),
                    "sim_m3s": mm_per_day_to_m3s(s["sim"], area),
                    **spread,
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values(["basin", "date", "lead"], kind="stable", ignore_index=True)


def _missing_lag_note(run: ModelRun, b, s: dict, where: str) -> str | None:
    """A warning when most forecasts were issued without an observed discharge on day t.

    A forecast model reads the discharge observed when the forecast is issued; where it is
    missing the model sees only its missing flag and the forcings, and the forecast is far
    weaker than the scores of observed days suggest.
    """
    args = getattr(run.loaded.model, "args", None)
    if (
        run.loaded.spec.mode != "forecast"
        or not getattr(args, "reads_q", True)
        or not len(s["date"])
    ):
        return None
    issued = (s["date"] - s["lead"].astype("timedelta64[D]") - b.start).astype(int)
    column = b.column(run.loaded.spec.target)
    lag = np.where(
        (issued >= 0) & (issued < len(column)), column[issued.clip(0, len(column) - 1)], np.nan
    )
    share = float(np.mean(~np.isfinite(lag)))
    if share <= 0.5:
        return None
    return (
        f"{where}: {share:.0%} of the forecasts were issued on days without observed discharge; "
        "they rest on the forcings alone, and the hydrograph shades the unobserved days"
    )


def coverage_notes(run: ModelRun, data: InputData, end: np.datetime64) -> list[str]:
    """Say where predictions are unscored forecasts, or stop before the end of the range."""
    notes = []
    target = run.loaded.spec.target
    for basin, s in run.series.items():
        b = data.basins[basin]
        seen = np.flatnonzero(np.isfinite(b.column(target)))
        last_obs = b.start + np.timedelta64(int(seen[-1]), "D") if seen.size else None
        scored = int(np.isfinite(s["obs"]).sum())
        where = f"{run.loaded.label}, basin {basin}"
        if last_obs is None:
            notes.append(f"{where}: the data hold no observed discharge; nothing is scored")
        elif last_obs < end:
            notes.append(
                f"{where}: discharge is observed until {last_obs}; predictions from "
                f"{max(s['date'].min(), last_obs + 1)} on are forecasts without observations "
                "and are not scored"
            )
        if scored == 0:
            notes.append(f"{where}: no observed discharge in the range, so no metrics")
        lag_note = _missing_lag_note(run, b, s, where)
        if lag_note:
            log.warning(lag_note)
            notes.append(lag_note)
        last_pred = s["date"].max()
        if last_pred < end:
            notes.append(
                f"{where}: predictions end on {last_pred} because the inputs end on {b.end}"
            )
    return notes


# --------------------------------------------------------------------------- channel weights


def export_channel_weights(
    lm: LoadedModel, windows: WindowData, data: InputData, out_dir: Path, batch_size: int, tag: str
) -> pd.DataFrame:
    """Write the channel weights per window and step, their means per basin and season, a heat map.

    The long CSV is written batch by batch, so long windows over many basins fit in memory.

    Returns
    -------
    pandas.DataFrame
        Mean weight per basin (columns basin, gauge_name, one per channel).
    """
    channels = list(windows.spec.channels)
    L, C = windows.spec.window_len, len(channels)
    owner = windows.sample_basin.cpu().numpy()
    dates = windows.sample_dates()  # [S] issue day t of each window
    months = (dates.astype("datetime64[M]").astype(int) % 12) + 1
    season = _SEASON_OF_MONTH[months - 1]  # [S]
    daily = out_dir / "channel_weights_daily.csv"
    sums = np.zeros((len(windows.basins), len(SEASONS), C))  # Σ weights over windows and steps
    counts = np.zeros((len(windows.basins), len(SEASONS)))  # windows · steps
    header = True
    lm.model.eval()
    with torch.no_grad():
        for i in range(0, len(windows), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(windows)), device=windows.device)
            batch = windows.batch(idx)
            _, w = lm.model(
                batch["x"], batch["static"], return_weights=True, n_last=batch["y"].shape[1]
            )
            w = w.float().cpu().numpy()  # [B, L, C]
            sel = idx.cpu().numpy()
            B = len(sel)
            pd.DataFrame(
                {
                    "date": np.repeat(np.datetime_as_string(dates[sel], unit="D"), L * C),
                    "basin": np.repeat(np.asarray(windows.basins)[owner[sel]], L * C),
                    "step": np.tile(np.repeat(np.arange(L), C), B),
                    "channel": np.tile(channels, B * L),
                    "weight": w.reshape(-1),
                }
            ).to_csv(daily, mode="a", header=header, index=False, float_format="%.6g")
            header = False
            np.add.at(sums, (owner[sel], season[sel]), w.sum(axis=1))  # [B, C] per window
            np.add.at(counts, (owner[sel], season[sel]), L)
    mean_rows, season_rows = [], []
    for k, basin in enumerate(windows.basins):
        name = data.basins[basin].name
        total = sums[k].sum(axis=0) / max(counts[k].sum(), 1)
        mean_rows.append(
            {"basin": basin, "gauge_name": name, **dict(zip(channels, total, strict=True))}
        )
        for j, label in enumerate(SEASONS):
            if counts[k, j]:
                values = sums[k, j] / counts[k, j]
                season_rows.append(
                    {
                        "basin": basin,
                        "gauge_name": name,
                        "season": label,
                        **dict(zip(channels, values, strict=True)),
                    }
                )
    mean = pd.DataFrame(mean_rows)
    write_csv(out_dir / "channel_weights_mean.csv", mean)
    write_csv(out_dir / "channel_weights_season.csv", pd.DataFrame(season_rows))
    plot_channel_weights(
        mean,
        out_dir / "channel_weights.png",
        f"{lm.label}{tag}\nmean channel weights, {windows.start}..{windows.end}\n"
        "(what the model uses, not causal importance)",
    )
    log.info(
        "channel weights of %d windows written (what the model uses, not causal importance)",
        len(windows),
    )
    return mean


# --------------------------------------------------------------------------- plots


def _fmt(value: float, spec: str = ".3f") -> str:
    if not np.isfinite(value):
        return "n/a"
    return format(value, spec.removesuffix("%")) + ("%" if spec.endswith("%") else "")


def _score_line(row: pd.Series) -> str:
    line = (
        f"NSE {_fmt(row['nse'])}  KGE {_fmt(row['kge'])}  bias {_fmt(row['bias_pct'], '+.1f%')}  "
        f"RMSE {_fmt(row['rmse_mm_day'])} mm/day  n={int(row['n_scored'])} days"
    )
    if np.isfinite(row.get("persistence_nse", np.nan)):
        line += f"  (persistence NSE {_fmt(row['persistence_nse'])})"
    seen = row.get("days_seen_in_training", 0)
    if pd.notna(seen) and int(seen) > 0:
        line += f"  IN-SAMPLE: {int(seen)} scored days trained the model"
    return line


def _lead_series(s: dict, lead: int) -> dict:
    """The targets of forecast lead ``lead`` (simulate: all, lead 0), sorted by date."""
    sel = s["lead"] == (lead if s["lead"].size and s["lead"].max() > 0 else 0)
    order = np.argsort(s["date"][sel], kind="stable")
    return {k: v[sel][order] for k, v in s.items()}


def _row_at_lead(run: ModelRun, basin: str, lead: int) -> pd.Series:
    """The basin's scores at ``lead`` (forecast) or over all days (simulate)."""
    if run.by_lead is None:
        return run.metrics.set_index("basin").loc[basin]
    rows = run.by_lead[(run.by_lead["basin"] == basin) & (run.by_lead["lead"] == lead)]
    return rows.iloc[0]


def _what(run: ModelRun, lead: int) -> str:
    return f"lead {lead} day{'s' if lead > 1 else ''}" if run.by_lead is not None else "simulation"


def _date_axis(ax) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def plot_hydrograph(
    path: Path,
    basin_data,
    start: np.datetime64,
    end: np.datetime64,
    sims: dict[str, dict],
    title: str,
    target: str,
    forecast: pd.DataFrame | None = None,
) -> None:
    """Observed and simulated discharge, with daily precipitation as inverted bars above.

    ``forecast`` (rows of :func:`operational_forecast` for this basin) is drawn apart and
    labelled: the PRED_LEN days ahead of the newest data, without observations.
    """
    plt = pyplot()
    b = basin_data
    dates = b.dates()
    inside = (dates >= start) & (dates <= end)
    day = dates[inside].astype("datetime64[ns]")
    fig, (ax_p, ax_q) = plt.subplots(
        2, 1, sharex=True, figsize=(11, 5.5), gridspec_kw={"height_ratios": [1, 3], "hspace": 0.05}
    )
    ax_p.bar(day, b.column("precipitation")[inside], width=1.0, color="tab:blue", linewidth=0)
    ax_p.invert_yaxis()
    ax_p.set_ylabel("precipitation\n(mm/day)")
    observed = b.column(target)[inside]
    # observations drawn last, on top: a simulation never hides them
    ax_q.plot(day, observed, color="black", lw=0.9, label="observed", zorder=5)
    if (~np.isfinite(observed)).any():
        ax_q.fill_between(
            day,
            0,
            1,
            where=~np.isfinite(observed),
            transform=ax_q.get_xaxis_transform(),
            color="0.85",
            lw=0,
            step="mid",
            label="no observation: not scored",
        )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (label, s) in enumerate(sims.items()):
        colour = colours[(k + 1) % len(colours)]
        ax_q.plot(s["date"].astype("datetime64[ns]"), s["sim"], lw=0.9, color=colour, label=label)
        if "low" in s:  # an ensemble: its members' range as a band
            ax_q.fill_between(
                s["date"].astype("datetime64[ns]"),
                s["low"],
                s["high"],
                color=colour,
                alpha=0.3,
                lw=0,
                label=f"{label}: range of the members",
            )
    seen = np.flatnonzero(np.isfinite(b.column(target)))
    last = b.start + np.timedelta64(int(seen[-1]), "D") if seen.size else None
    if last is not None and start <= last < end:
        ax_q.axvline(last.astype("datetime64[ns]"), color="grey", ls=":", label="last observation")
    if forecast is not None and len(forecast):
        issued = forecast["issue_date"].iloc[0]
        ax_q.plot(
            pd.to_datetime(forecast["date"]).to_numpy(),
            forecast["sim_mm_day"].to_numpy(),
            "o--",
            ms=3,
            lw=1.2,
            color="tab:red",
            label=f"forecast issued {issued}, leads 1-{len(forecast)} (no observations, unscored)",
        )
    ax_q.set_ylabel("discharge (mm/day)")
    ax_q.ticklabel_format(axis="y", style="plain", useOffset=False)  # a flat line looks flat
    if np.isfinite(b.area) and b.area > 0:
        factor = b.area * 1000.0 / 86400.0
        right = ax_q.secondary_yaxis(
            "right", functions=(lambda q: q * factor, lambda q: q / factor)
        )
        right.set_ylabel("discharge (m³/s)")
    ax_q.legend(loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=8)  # clear of the peaks
    _date_axis(ax_q)
    ax_q.set_xlabel("date")
    ax_p.set_title(title, fontsize=9)
    save_figure(fig, path)


def plot_scatter(path: Path, s: dict, title: str, log_scale: bool) -> None:
    """Simulated against observed discharge with the 1:1 line."""
    plt = pyplot()
    ok = np.isfinite(s["obs"]) & np.isfinite(s["sim"])
    if log_scale:
        ok &= (s["obs"] > 0) & (s["sim"] > 0)
    obs, sim = s["obs"][ok], s["sim"][ok]
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(obs, sim, s=6, alpha=0.5, color="tab:blue", label=f"{obs.size} days")
    if obs.size:
        lo, hi = float(min(obs.min(), sim.min())), float(max(obs.max(), sim.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="1:1")
    if log_scale:
        from matplotlib import ticker

        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            axis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("observed discharge (mm/day)")
    ax.set_ylabel("simulated discharge (mm/day)")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def plot_residuals(path: Path, s: dict, title: str) -> None:
    """Residuals (simulated − observed) over time and their distribution."""
    plt = pyplot()
    ok = np.isfinite(s["obs"]) & np.isfinite(s["sim"])
    res = s["sim"][ok] - s["obs"][ok]
    fig, (ax_t, ax_h) = plt.subplots(
        1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 1], "wspace": 0.25}
    )
    ax_t.plot(s["date"][ok].astype("datetime64[ns]"), res, lw=0.8, color="tab:red")
    ax_t.axhline(0, color="black", lw=0.8)
    ax_t.set_ylabel("simulated − observed (mm/day)")
    ax_t.set_xlabel("date")
    _date_axis(ax_t)
    ax_h.hist(res, bins=min(50, max(5, res.size // 10)), color="tab:red", alpha=0.8)
    ax_h.axvline(0, color="black", lw=0.8)
    ax_h.set_xlabel("residual (mm/day)")
    ax_h.set_ylabel("days")
    if res.size:
        ax_h.text(
            0.97,
            0.97,
            f"mean {res.mean():+.3f}\nsd {res.std():.3f}\n(mm/day)",
            transform=ax_h.transAxes,
            ha="right",
            va="top",
            fontsize=8,
        )
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def plot_fdc(path: Path, s: dict, title: str) -> None:
    """Flow-duration curves of observed and simulated discharge on the same scored days."""
    plt = pyplot()
    ok = np.isfinite(s["obs"]) & np.isfinite(s["sim"])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for values, label, colour in (
        (s["obs"][ok], "observed", "black"),
        (s["sim"][ok], "simulated", "tab:orange"),
    ):
        q = np.sort(values)[::-1]
        exceed = 100.0 * np.arange(1, q.size + 1) / (q.size + 1)  # Weibull plotting position
        ax.plot(exceed, q, color=colour, lw=1.2, label=label)
    if ok.any() and (s["obs"][ok] > 0).all() and (s["sim"][ok] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("exceedance probability (%)")
    ax.set_ylabel("discharge (mm/day)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def zoom_window(s: dict, start: np.datetime64, end: np.datetime64, days: int = 365):
    """The ``days`` around the highest observed flow, for ranges over two years (else None):
    a decade of daily flow in one plot shows no single event."""
    if (end - start).astype(int) <= 2 * days or not np.isfinite(s["obs"]).any():
        return None
    peak = s["date"][int(np.nanargmax(s["obs"]))]
    lo = max(start, min(peak - np.timedelta64(days // 2, "D"), end - np.timedelta64(days - 1, "D")))
    return lo, lo + np.timedelta64(days - 1, "D")


def write_plots(
    runs: list[ModelRun],
    data: InputData,
    start: np.datetime64,
    end: np.datetime64,
    out_dir: Path,
    log_scale: bool,
    tag: str,
    lead: int = 1,
    forecast: pd.DataFrame | None = None,
) -> None:
    """The four plots per basin for the first model (at ``lead``), overlaid hydrographs for
    --compare; ``forecast``: the first model's operational forecast, drawn on its hydrograph."""
    main_run = runs[0]
    target = main_run.loaded.spec.target
    for basin in progress(main_run.windows.basins, desc="plots", unit="basin"):
        b = data.basins[basin]
        head = f"{basin} {b.name}{tag}"
        s = _lead_series(main_run.series[basin], lead)
        row = _row_at_lead(main_run, basin, lead)
        title = f"{head}\n{main_run.loaded.label} ({_what(main_run, lead)}): {_score_line(row)}"
        own = None
        if forecast is not None and len(forecast):
            own = forecast[
                (forecast["basin"] == basin) & (forecast["model"] == main_run.loaded.label)
            ]
        plot_hydrograph(
            out_dir / f"hydrograph_{basin}.png",
            b,
            start,
            end,
            {main_run.loaded.label: s},
            title,
            target,
            own,
        )
        zoom = zoom_window(s, start, end)
        if zoom is not None:
            plot_hydrograph(
                out_dir / f"hydrograph_{basin}_zoom.png",
                b,
                *zoom,
                {main_run.loaded.label: s},
                f"{title}\nzoom: {zoom[0]}..{zoom[1]}, the year around the highest observed flow",
                target,
            )
        if int(row["n_scored"]) > 0:
            plot_scatter(out_dir / f"scatter_{basin}.png", s, title, log_scale)
            plot_residuals(out_dir / f"residuals_{basin}.png", s, title)
            plot_fdc(out_dir / f"fdc_{basin}.png", s, title)
        else:
            log.info(
                "basin %s: nothing observed to compare, so no scatter, residual or FDC plot", basin
            )
        if len(runs) > 1:
            sims, lines = {}, [head]
            for run in runs:
                sims[run.loaded.label] = _lead_series(run.series[basin], lead)
                r = _row_at_lead(run, basin, lead)
                lines.append(f"{run.loaded.label} ({_what(run, lead)}): {_score_line(r)}")
            plot_hydrograph(
                out_dir / f"compare_hydrograph_{basin}.png",
                b,
                start,
                end,
                sims,
                "\n".join(lines),
                target,
            )


def plot_skill_by_lead(path: Path, by_lead: pd.DataFrame, title: str) -> None:
    """NSE against lead day, each forecast model next to persistence.

    Up to six basins: one line per basin (model solid, persistence dashed, same colour). More:
    the median over basins with the range (min to max) shaded.
    """
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    models = list(dict.fromkeys(by_lead["model"]))
    basins = list(dict.fromkeys(by_lead["basin"]))
    fig, axes = plt.subplots(
        1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False, sharey=True
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, model in zip(axes[0], models, strict=True):
        rows = by_lead[by_lead["model"] == model]
        if len(basins) <= 6:
            for k, basin in enumerate(basins):
                r = rows[rows["basin"] == basin].sort_values("lead")
                colour = colours[k % len(colours)]
                ax.plot(r["lead"], r["nse"], "o-", color=colour, label=f"{basin} model")
                ax.plot(
                    r["lead"], r["persistence_nse"], "s--", color=colour, alpha=0.6,
                    label=f"{basin} persistence",
                )  # fmt: skip
        else:
            for column, style, colour, name in (
                ("nse", "o-", "tab:blue", "model"),
                ("persistence_nse", "s--", "grey", "persistence"),
            ):
                stats = rows.groupby("lead")[column].agg(["median", "min", "max"])
                ax.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.2)
                ax.plot(
                    stats.index, stats["median"], style, color=colour,
                    label=f"{name}: median, range of {len(basins)} basins",
                )  # fmt: skip
        ax.set_xlabel("lead (days)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("NSE (-)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(model, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()  # room for the suptitle above the panels' titles
    save_figure(fig, path)


def _compare_table(runs: list[ModelRun], lead: int) -> pd.DataFrame:
    """Scores per model and basin at ``lead`` (simulate models: all days), for the charts."""
    rows = []
    for run in runs:
        for basin in run.windows.basins:
            r = _row_at_lead(run, basin, lead)
            rows.append(
                {
                    "model": run.loaded.label,
                    "basin": basin,
                    "nse": r["nse"],
                    "kge": r["kge"],
                    "rmse_mm_day": r["rmse_mm_day"],
                    "bias_pct": r["bias_pct"],
                }
            )
    return pd.DataFrame(rows)


def plot_model_comparison(path: Path, runs: list[ModelRun], lead: int, title: str) -> None:
    """One panel per metric (NSE, KGE, RMSE, bias %): bars per basin, one per model."""
    plt = pyplot()
    table = _compare_table(runs, lead)
    models = list(dict.fromkeys(table["model"]))
    basins = list(dict.fromkeys(table["basin"]))
    metrics = (
        ("nse", "NSE (-)"), ("kge", "KGE (-)"), ("rmse_mm_day", "RMSE (mm/day)"),
        ("bias_pct", "bias (%)"),
    )  # fmt: skip
    fig, axes = plt.subplots(2, 2, figsize=(max(9, 1.2 * len(basins) * len(models)), 7.5))
    width = 0.8 / len(models)
    x = np.arange(len(basins))
    for ax, (column, label) in zip(axes.ravel(), metrics, strict=True):
        for j, model in enumerate(models):
            values = table[table["model"] == model].set_index("basin").reindex(basins)[column]
            ax.bar(x + (j - (len(models) - 1) / 2) * width, values, width, label=model)
        ax.set_xticks(x, basins, rotation=45, ha="right")
        ax.set_xlabel("basin")
        ax.set_ylabel(label)
        ax.axhline(0, color="black", lw=0.6)
        ax.grid(alpha=0.3, axis="y")
    # One legend under the panels, where it covers no bar.
    ncol = 1 if max(map(len, models)) > 45 else min(3, len(models))
    rows = -(-len(models) // ncol)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.025 * rows + 0.01, 1, 1))
    save_figure(fig, path)


def plot_error_distribution(path: Path, runs: list[ModelRun], lead: int, title: str) -> None:
    """Errors (simulated − observed, mm/day) per model: box plots and histograms, all basins."""
    plt = pyplot()
    errors = {}
    for run in runs:
        parts = []
        for basin in run.windows.basins:
            s = _lead_series(run.series[basin], lead)
            ok = np.isfinite(s["obs"]) & np.isfinite(s["sim"])
            parts.append(s["sim"][ok] - s["obs"][ok])
        errors[run.loaded.label] = np.concatenate(parts)
    fig, (ax_b, ax_h) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = list(errors)
    ax_b.boxplot([errors[k] for k in labels], showfliers=False)
    # Whole labels, wrapped: two runs' labels often differ only in their ends (the run folder).
    wrapped = {k: "\n".join(textwrap.wrap(k, 32, break_on_hyphens=False)) for k in labels}
    ax_b.set_xticks(range(1, len(labels) + 1), [wrapped[k] for k in labels], fontsize=8)
    ax_b.axhline(0, color="black", lw=0.6)
    ax_b.set_ylabel("simulated − observed (mm/day)")
    ax_b.set_xlabel("model (whiskers 1.5 IQR, outliers not drawn)")
    values = np.concatenate(list(errors.values()))
    lo, hi = np.percentile(values, [0.5, 99.5]) if values.size else (-1.0, 1.0)
    bins = np.linspace(lo, hi, 60) if hi > lo else 30
    for label, err in errors.items():
        ax_h.hist(err, bins=bins, density=True, histtype="step", lw=1.2, label=wrapped[label])
    ax_h.axvline(0, color="black", lw=0.6)
    ax_h.set_xlabel("simulated − observed (mm/day), central 99 %")
    ax_h.set_ylabel("density (1/(mm/day))")
    ax_h.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()  # room for the suptitle above the panels' titles
    save_figure(fig, path)


# --------------------------------------------------------------------------- ensembles


def ensemble_members(request: PredictRequest) -> tuple[list[Path], Path | None]:
    """The member checkpoints of ``--ensemble``: every file ``--model`` names or matches.

    Each ``--model`` item is a checkpoint, a glob (every match is a member, not only the
    newest) or an ensemble manifest (``ensemble.json``, its members).

    Returns
    -------
    (list of Path, Path or None)
        The members in order, and the manifest when one was given; none without ``--ensemble``.

    Raises
    ------
    UserError
        Fewer than two members, a member named twice, options an ensemble cannot take, or a
        manifest without ``--ensemble``.
    """
    if not request.ensemble:
        manifests = [m for m in request.model if is_ensemble_manifest(m)]
        if manifests:
            raise UserError(
                f"--model {manifests[0]} is an ensemble manifest; add --ensemble to predict "
                "with its members"
            )
        return [], None
    if request.export_weights:
        raise UserError(
            "--export_weights with --ensemble: the channel weights are a member's; predict "
            "with one member's checkpoint to export them"
        )
    paths: list[Path] = []
    manifest = None
    for item in request.model:
        if is_ensemble_manifest(item) and not any(c in item for c in "*?["):
            manifest = Path(item).expanduser()
            paths += read_ensemble_manifest(manifest)[1]
        elif any(c in item for c in "*?["):
            matches = sorted(glob.glob(os.path.expanduser(item)))
            matches = [Path(p) for p in matches if os.path.isfile(p)]
            if not matches:
                raise UserError(f"--model {item}: no file matches; check the path")
            paths += matches
        else:
            paths.append(resolve_checkpoint([item], "--model"))
    resolved = [p.resolve() for p in paths]
    dup = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if dup:
        raise UserError(f"--ensemble: {', '.join(dup)} named twice; give each member once")
    if len(paths) < 2:
        raise UserError(
            f"--ensemble needs two or more member checkpoints, --model gave {len(paths)}; pass "
            "several paths, a quoted glob or an ensemble.json"
        )
    log.info("ensemble of %d members: %s", len(paths), ", ".join(map(str, paths)))
    return paths, manifest


def ensemble_run(
    members: list[ModelRun],
    data: InputData,
    basins: list[str],
    batch_size: int,
    source: Path,
) -> ModelRun:
    """The ensemble as one more model: the members' mean in mm/day, scored like a model.

    Each member predicts its own windows with its own scalers; :func:`utils.ensemble_prediction`
    averages them in physical units. The series carry the members' range (``low``/``high``,
    their minimum and maximum), which the hydrograph draws as a band.
    """
    first = members[0]
    ref = (first.windows.sample_end.cpu(), first.windows.sample_basin.cpu())
    for run in members[1:]:
        if not (
            torch.equal(run.windows.sample_end.cpu(), ref[0])
            and torch.equal(run.windows.sample_basin.cpu(), ref[1])
        ):
            raise UserError(
                f"ensemble members {first.loaded.path} and {run.loaded.path} have different "
                "windows on these data; members need the same inputs and windows"
            )
    preds = [predict_windows(r.loaded.model, r.windows, batch_size=batch_size) for r in members]
    ens = ensemble_prediction(preds, [r.loaded.scalers for r in members], first.loaded.scalers)
    windows = first.windows
    series = series_by_basin(windows, ens["mean"])
    for key in ("low", "high"):
        for basin, s in series_by_basin(windows, ens[key]).items():
            series[basin][key] = s["sim"]
    groups = basin_groups(first.loaded.ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # as in run_model
        metrics = basin_metrics_table(
            windows, ens["mean"], data, {b: groups.get(b, "unseen") for b in basins}
        )
    metrics = metrics.rename(columns={"rmse": "rmse_mm_day", "mae": "mae_mm_day"})
    # A day counts as seen when it trained any member.
    spans: dict[str, list] = {}
    for run in members:
        for basin, basin_spans in training_spans(run.loaded.ckpt).items():
            spans.setdefault(basin, []).extend(basin_spans)
    metrics["days_seen_in_training"] = [
        days_seen_in_training(spans.get(b, []), series[b]["date"], series[b]["obs"])
        if b in series
        else 0
        for b in metrics["basin"]
    ]
    loaded = dataclasses.replace(first.loaded, path=source, label=f"ensemble_of_{len(members)}")
    metrics.insert(0, "model", loaded.label)
    metrics["checkpoint"] = str(source)
    metrics = metrics.reindex(columns=list(METRIC_COLUMNS))
    by_lead = None
    if first.loaded.spec.mode == "forecast":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            by_lead = lead_metrics_table(
                windows, ens["mean"], data, {b: groups.get(b, "unseen") for b in basins}
            )
        by_lead = by_lead.rename(columns={"rmse": "rmse_mm_day"})
        by_lead.insert(0, "model", loaded.label)
        by_lead = by_lead.reindex(columns=list(LEAD_COLUMNS))
    return ModelRun(loaded, windows, series, metrics, ens["mean"], by_lead)


def ensemble_summary(run: ModelRun, members: list[LoadedModel]) -> dict:
    """The ``ensemble`` entry of metrics.json: its label, source and members."""
    return {
        "label": run.loaded.label,
        "source": str(run.loaded.path),
        "prediction": "mean of the members in mm/day; spread: their minimum and maximum",
        "members": [{"label": m.label, "checkpoint": str(m.path)} for m in members],
    }


# --------------------------------------------------------------------------- main


def check_lead(lead: int | None, models: list[LoadedModel]) -> int:
    """``--lead``: 1 when not given; UserError past a forecast model's PRED_LEN."""
    if lead is None:
        return 1
    forecasts = [lm for lm in models if lm.spec.mode == "forecast"]
    if not forecasts:
        raise UserError(
            f"--lead {lead} picks a forecast lead day; {models[0].path} is a simulate-mode model "
            "(it predicts the same day): drop --lead"
        )
    short = [lm for lm in forecasts if lead > lm.spec.pred_len]
    if short:
        raise UserError(
            f"--lead {lead} is beyond PRED_LEN {short[0].spec.pred_len} of {short[0].path}; "
            f"choose a lead from 1 to {min(lm.spec.pred_len for lm in forecasts)}"
        )
    return lead


def log_operational(forecast: pd.DataFrame) -> None:
    """One log line per operational forecast (past the last observation, unscored)."""
    for (model, basin), rows in forecast.groupby(["model", "basin"]) if len(forecast) else []:
        log.info(
            "%s basin %s: operational forecast issued %s for %s..%s (observed discharge until "
            "%s; no observations, not scored): %s mm/day",
            model,
            basin,
            rows["issue_date"].iloc[0],
            rows["date"].iloc[0],
            rows["date"].iloc[-1],
            rows["last_observation"].iloc[0] or "never",
            ", ".join(f"{v:.3f}" for v in rows["sim_mm_day"]),
        )


def write_summary_plots(
    runs: list[ModelRun], by_lead: pd.DataFrame | None, out_dir: Path, lead: int, span: str
) -> None:
    """skill_by_lead.png (forecast models); with --compare model_comparison.png and
    error_distribution.png."""
    if by_lead is not None:
        names = by_lead.drop_duplicates("basin")
        basins = (
            ", ".join(f"{b} {n[:25]}" for b, n in zip(names.basin, names.gauge_name, strict=True))
            if len(names) <= 6
            else f"{len(names)} basins"
        )
        plot_skill_by_lead(
            out_dir / "skill_by_lead.png",
            by_lead,
            f"NSE by lead day, model and persistence, {span}\n{basins}",
        )
    if len(runs) > 1:
        what = f"forecast lead {lead} (simulate-mode models: same day)"
        plot_model_comparison(
            out_dir / "model_comparison.png", runs, lead, f"scores per basin, {what}, {span}"
        )
        plot_error_distribution(
            out_dir / "error_distribution.png", runs, lead, f"errors per model, {what}, {span}"
        )


@dataclass
class PredictJob:
    """Everything :func:`prepare` checked and loaded; no file written yet."""

    request: PredictRequest
    config: dict
    device: torch.device
    inference: InferenceSettings
    models: list[LoadedModel]
    members: list[Path]
    manifest: Path | None
    paths: list[Path]
    lead: int
    start: np.datetime64
    end: np.datetime64
    data_dir: Path
    basins: list[str]
    data: InputData
    synthetic: bool

    @property
    def tag(self) -> str:
        return synthetic_tag(self.synthetic)


def _load_models(request: PredictRequest, device) -> tuple[list, list, Path | None, list]:
    """The checkpoints of --model/--ensemble and --compare, loaded and labelled."""
    members, manifest = ensemble_members(request)
    paths = members or [resolve_checkpoint(request.model, "--model")]
    paths += [resolve_checkpoint([p], "--compare") for p in request.compare or []]
    models = [read_model(p, device) for p in paths]
    for lm, label in zip(models, _labels(models), strict=True):
        lm.label = label
        log.info(
            "model %s: %s (%s, stage %s)", label, lm.path, lm.model_class, lm.ckpt.get("stage")
        )
    if members:
        check_ensemble_members([(lm.path, lm.ckpt) for lm in models[: len(members)]])
    return models, members, manifest, paths


def prepare(request: PredictRequest, config: dict) -> PredictJob:
    """Check every input and load the models and the data; writes nothing."""
    device = resolve_device(request.device, config=config)
    log_device(device)
    inference = InferenceSettings.from_config(config, device)
    models, members, manifest, paths = _load_models(request, device)
    first = models[0]
    # What the run did is the checkpoint's model, inputs, windows and periods, not run.config's.
    saved = first.ckpt.get("config") or {}
    config = {**config, **{k: saved[k] for k in MODEL_KEYS if k in saved}}
    # The summary's training keys (epochs, batch, seed) are the checkpoint's too, not run.config's.
    log.info("config of %s as trained: %s", first.label, config_summary({**config, **saved}))
    if request.export_weights and first.model_class != "SCA2LSTM":
        raise UserError(
            f"--export_weights needs an SCA2LSTM checkpoint; {first.path} holds a "
            f"{first.model_class}, which has no channel weights"
        )
    lead = check_lead(request.lead, models)
    targets = {lm.spec.target for lm in models}
    if len(targets) > 1:
        raise UserError(f"the checkpoints predict different targets ({', '.join(sorted(targets))})")
    start, end = resolve_period(request, first.ckpt)
    data_dir = resolve_data(request, config, first.ckpt)
    basins = resolve_basins(request, first.ckpt, data_dir)
    # The data must hold every model's inputs, and precipitation for the hydrographs.
    dynamic: list[str] = []
    for lm in models:
        dynamic += [c for c in lm.spec.dynamic_inputs if c not in dynamic]
    if "precipitation" not in dynamic:
        dynamic.append("precipitation")
    data_config = {**config, "DYNAMIC_INPUTS": dynamic, "TARGET": targets.pop()}
    data = load_input_data(data_config, data_dir, basins)
    synthetic = data.synthetic or any(lm.synthetic for lm in models)
    return PredictJob(
        request, config, device, inference, models, members, manifest, paths, lead, start, end,
        data_dir, basins, data, synthetic,
    )  # fmt: skip


def run(job: PredictJob) -> dict:
    """Predict with every model and build the tables (in memory)."""
    warn_synthetic(job.synthetic, "the data or a checkpoint")
    for lm in job.models:
        if lm.spec.future_inputs:
            log.info(
                "model %s knows %s over the %d lead days; %s",
                lm.label,
                ", ".join(lm.spec.future_inputs),
                lm.spec.pred_len,
                HINDCAST_NOTE,
            )
    log.info(
        "predicting %d basin(s) over %s..%s with %d model(s) on %s",
        len(job.basins),
        job.start,
        job.end,
        len(job.models),
        job.device,
    )
    data, batch_size = job.data, eval_batch_size(job.config["BATCH_SIZE"])
    runs = [
        run_model(lm, data, job.basins, job.start, job.end, job.device, batch_size, job.inference)
        for lm in job.models
    ]
    if job.members:
        source = job.manifest or Path(os.path.commonpath([str(p.resolve()) for p in job.members]))
        runs.insert(0, ensemble_run(runs[: len(job.members)], data, job.basins, batch_size, source))
    notes = [note for run_ in runs for note in coverage_notes(run_, data, job.end)]
    for note in notes:
        log.info("note: %s", note)
    leads = [r.by_lead for r in runs if r.by_lead is not None]
    ahead = [f for f in (operational_forecast(r, data) for r in runs) if len(f)]
    tables = {
        "metrics": pd.concat([r.metrics for r in runs], ignore_index=True),
        "predictions": pd.concat([predictions_frame(r, data) for r in runs], ignore_index=True),
        "by_lead": pd.concat(leads, ignore_index=True) if leads else None,
        "forecast": pd.concat(ahead, ignore_index=True) if ahead else pd.DataFrame(),
    }
    for frame in tables.values():
        mark_synthetic(frame, job.synthetic)
    log_operational(tables["forecast"])
    _log_scores(tables["metrics"])
    return {"runs": runs, "notes": notes, "batch_size": batch_size, **tables}


def _log_scores(metrics: pd.DataFrame) -> None:
    for _, row in metrics.iterrows():
        seen = int(row["days_seen_in_training"])
        log.info(
            "%s  %s %-28s %s%s",
            row["model"],
            row["basin"],
            str(row["gauge_name"])[:28],
            _score_line(row),
            f"  [IN-SAMPLE: {seen} of the scored days trained this model]" if seen else "",
        )
    if (metrics["days_seen_in_training"] > 0).any():
        log.warning(
            "some scores are in-sample (column days_seen_in_training): those days trained the "
            "model, so they overstate its skill; score the test period for an honest figure"
        )


def _metrics_doc(job: PredictJob, result: dict) -> dict:
    models = job.models
    return {
        "data": "SYNTHETIC" if job.synthetic else "CAMELS-GB",
        "data_dir": str(job.data_dir),
        "start": str(job.start),
        "end": str(job.end),
        "basins": job.basins,
        "models": [
            {
                "label": lm.label,
                "checkpoint": str(lm.path),
                "model_class": lm.model_class,
                "stage": lm.ckpt.get("stage"),
                "mode": lm.spec.mode,
                "seq_len": lm.spec.seq_len,
                "pred_len": lm.spec.pred_len,
                "future_inputs": list(lm.spec.future_inputs),
                "synthetic_data": lm.synthetic,
            }
            for lm in models
        ],
        "notes": result["notes"]
        + ([HINDCAST_NOTE] if any(lm.spec.future_inputs for lm in models) else []),
        "ensemble": (
            ensemble_summary(result["runs"][0], models[: len(job.members)]) if job.members else None
        ),
        "metrics": result["metrics"].to_dict(orient="records"),
    }


def report(job: PredictJob, result: dict, backlog: LogBacklog) -> Path:
    """Write the run folder: built hidden, renamed at the end, so a failure leaves none."""
    request, tag = job.request, job.tag
    parent = output_root(job.config) / "predict"
    with RunFolder(
        parent, "predict.log", job.config, hidden=True, backlog=backlog, trains=False
    ) as folder:
        out = folder.path
        write_csv(out / "predictions.csv", result["predictions"])
        write_csv(out / "metrics.csv", result["metrics"])
        if result["by_lead"] is not None:
            write_csv(out / "metrics_by_lead.csv", result["by_lead"])
        if len(result["forecast"]):
            write_csv(out / "operational_forecast.csv", result["forecast"])
        write_json(out / "metrics.json", _metrics_doc(job, result))
        runs = result["runs"]
        if request.export_weights:
            export_channel_weights(
                job.models[0], runs[0].windows, job.data, out, result["batch_size"], tag
            )
        if not request.no_plots:
            write_plots(
                runs, job.data, job.start, job.end, out, request.log_scale, tag, job.lead,
                result["forecast"],
            )  # fmt: skip
            write_summary_plots(
                runs, result["by_lead"], out, job.lead, f"{job.start}..{job.end}{tag}"
            )
    return folder.path


def predict(request: PredictRequest, config: dict, backlog: LogBacklog | None = None) -> dict:
    """Everything after the arguments: check all input, predict, then write the run folder.

    ``backlog`` holds what was logged before the run folder existed (the command line's)."""
    job = prepare(request, config)
    result = run(job)
    run_dir = report(job, result, backlog)
    return {
        "run_dir": run_dir,
        "metrics": result["metrics"],
        "predictions": result["predictions"],
        "checkpoints": job.paths,
        "notes": result["notes"],
    }


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point.

    Returns
    -------
    dict
        ``run_dir`` (Path), ``metrics`` and ``predictions`` (DataFrames), ``checkpoints`` (the
        files used, first the --model one) and ``notes``.
    """
    args = build_parser().parse_args(argv)
    flags = {
        "OUTPUT_DIR": args.output_dir,
        "NUM_THREADS": args.threads,
        "USE_COMPILE": True if args.compile else None,
        "MIXED_PRECISION": True if args.mixed_precision else None,
    }
    config = load_config(args.config, stage="predict", overrides=args.set, flags=flags)
    setup_logging()
    ensure_writable(output_root(config), "the output folder")
    backlog = LogBacklog().attach()
    try:
        log.info("model, inputs, scalers and mode come from the checkpoint; none is refitted")
        return predict(PredictRequest.from_args(args), config, backlog)
    finally:
        log.removeHandler(backlog)
        close_log_files()


if __name__ == "__main__":
    run_cli(main)
