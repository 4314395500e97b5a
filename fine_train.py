"""Fine-tune a pretrained SCA2LSTM on one catchment.

The checkpoint fixes the model, its scalers, input features, mode and periods; nothing is refitted.
The target basin's record before the test period is split in time order: the first
``--fine_tune_ratio`` share trains, the rest validates and early-stops. The test period is only
scored: the pretrained (zero-shot) and fine-tuned scores are logged and saved side by side.

Usage::

    python fine_train.py --target_basin 32006 --pretrained_model ./model_output/sca2lstm.pth
    python fine_train.py --target_basin 32006 --pretrained_model ./model_output/sca2lstm.pth \\
        --unfreeze_embedding --unfreeze_lstm1 --learning_rate 1e-5
    python fine_train.py --target_basin 32006 --start 1995-01-01 \\
        --pretrained_model model_output/fine_tune/basin_32006/<run>/best_model_basin_32006.pth
    python fine_train.py --target_basin 32006 --pretrained_model model_output/sca2lstm_ensemble.json

Each run writes ``model_output/fine_tune/basin_<id>/<timestamp>/`` with
``best_model_basin_<id>.pth``, ``training_curve.png``, ``fine_tune.log``, ``config.yaml``,
``feature_classification.json``, ``finetune_history.json`` and ``metrics_before_after.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hydrologyDataset import (
    HINDCAST_NOTE,
    BasinData,
    FeatureSpec,
    InputData,
    Scalers,
    WindowData,
    block_end,
    load_input_data,
    load_model,
    resolve_data_dir,
)
from hyperopt import (
    SearchSettings,
    TrialOutcome,
    add_search_args,
    best_config,
    open_search,
    parse_space,
    run_search,
    search_flags,
    write_results,
)
from sca2lstm import SCA2LSTM
from utils import (
    ENSEMBLE_MANIFEST,
    MODEL_KEYS,
    HelpFormatter,
    LogFile,
    RunFolder,
    TrainSettings,
    UserError,
    add_common_args,
    basin_metrics_table,
    check_ensemble_members,
    checkpoint_payload,
    ensemble_prediction,
    ensure_writable,
    eval_batch_size,
    explicit_keys,
    fit,
    is_ensemble_manifest,
    iso_date,
    load_checkpoint,
    load_config,
    log,
    log_device,
    mark_synthetic,
    members_vs_ensemble,
    output_root,
    parse_horizon_weights,
    parse_set,
    period,
    plot_training_curve,
    positive_int,
    predict_windows,
    read_ensemble_manifest,
    resolve_device,
    run_cli,
    save_checkpoint,
    seed_everything,
    setup_logging,
    show_config_defaults,
    validate_config,
    window_device,
    write_csv,
    write_ensemble_manifest,
    write_json,
    write_run_config,
)

__all__ = [
    "FREEZE_GROUPS",
    "FineTuneRequest",
    "TimeSplit",
    "plan_split",
    "prepare",
    "fine_tune",
    "main",
]

# Frozen unless released with --unfreeze_<group>; lstm2 and head are always trained.
FREEZE_GROUPS = ("embedding", "lstm1", "weight_head")
TRAINED_GROUPS = ("lstm2", "head")
# The product README advises at least about 5000 valid daily records for fine-tuning.
MIN_RECORDS = 5000
CHECKPOINT_NAME = "best_model_basin_{basin}.pth"


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        description=(
            "Fine-tune a pretrained SCA2LSTM on one CAMELS-GB basin. Flags left out take their "
            "value from run.config (its fine_tune section); the model, scalers, inputs and "
            "periods come from the checkpoint."
        ),
    )
    parser.add_argument("--target_basin", required=True, metavar="ID", help="gauge id, e.g. 32006")
    parser.add_argument(
        "--pretrained_model",
        required=True,
        metavar="PATH",
        help="SCA2LSTM checkpoint (model_output/sca2lstm.pth or an earlier fine-tuned one), or "
        "an ensemble.json: every member is fine-tuned, in one run folder",
    )
    parser.add_argument("--epochs", type=positive_int, help="epochs (N_EPOCHS)")
    parser.add_argument("--batch_size", type=positive_int, help="BATCH_SIZE (and BATCH_SIZE_GPU)")
    parser.add_argument("--learning_rate", type=float, help="LR (and LR_GPU)")
    parser.add_argument("--weight_decay", type=float, help="AdamW WEIGHT_DECAY")
    parser.add_argument("--patience", type=int, help="early-stopping PATIENCE in epochs")
    parser.add_argument(
        "--fine_tune_ratio",
        type=float,
        help="FINE_TUNE_RATIO: share of the record, in time order, that trains; the rest validates",
    )
    for group, what in (
        ("embedding", "the static-attribute embedding"),
        ("lstm1", "the first (context) LSTM"),
        ("weight_head", "the channel-weight head"),
    ):
        parser.add_argument(f"--unfreeze_{group}", action="store_true", help=f"also train {what}")
    parser.add_argument(
        "--start",
        type=iso_date,
        help="first day of the record to tune on (default: the first observed discharge)",
    )
    parser.add_argument(
        "--end",
        type=iso_date,
        help="last day of the record to tune on (default and latest: the day before TEST_START)",
    )
    parser.add_argument(
        "--horizon_weights",
        metavar="W1,W2,...",
        help="HORIZON_WEIGHTS: one loss weight per lead day of the checkpoint's PRED_LEN, e.g. "
        '"1.5,1.5,1.2,1.0,1.0,0.9,0.9" (normalised to mean 1)',
    )
    parser.add_argument("--seed", type=int, help="SEED")
    parser.add_argument("--no_cuda", action="store_true", help="run on the CPU")
    parser.add_argument("--demo", action="store_true", help="use the synthetic demo dataset")
    add_search_args(parser)
    add_common_args(parser)
    show_config_defaults(parser, "fine_tune")
    return parser


def resolve_fine_tune_config(args: argparse.Namespace) -> dict:
    """run.config -> its fine_tune section -> --config -> --set -> flags (before the checkpoint)."""
    flags = {
        "N_EPOCHS": args.epochs,
        "PATIENCE": args.patience,
        "WEIGHT_DECAY": args.weight_decay,
        "FINE_TUNE_RATIO": args.fine_tune_ratio,
        "SEED": args.seed,
        "OUTPUT_DIR": args.output_dir,
        "NUM_THREADS": args.threads,
        "HORIZON_WEIGHTS": (
            parse_horizon_weights(args.horizon_weights) if args.horizon_weights else None
        ),
        **search_flags(args),
    }
    if args.batch_size is not None:
        flags["BATCH_SIZE"] = flags["BATCH_SIZE_GPU"] = args.batch_size
    if args.learning_rate is not None:
        flags["LR"] = flags["LR_GPU"] = args.learning_rate
    # HORIZON_WEIGHTS count against the checkpoint's PRED_LEN: checked after the merge.
    overrides = parse_set(args.set)
    horizon = flags.pop("HORIZON_WEIGHTS") or overrides.pop("HORIZON_WEIGHTS", None)
    config = load_config(args.config, stage="fine_tune", overrides=overrides, flags=flags)
    if isinstance(horizon, str):
        horizon = parse_horizon_weights(horizon)
    if horizon is not None:
        config["HORIZON_WEIGHTS"] = horizon if isinstance(horizon, list) else [horizon]
    return config


# --------------------------------------------------------------------------- checkpoint


def model_from_checkpoint(ckpt: dict, path: Path) -> tuple[SCA2LSTM, FeatureSpec, Scalers]:
    """A fresh SCA2LSTM, its features and scalers from a loaded checkpoint
    (:func:`hydrologyDataset.load_model`, with its consistency checks)."""
    hint = (
        "; fine_train.py tunes checkpoints of sca2lstm.py (model_output/sca2lstm.pth) or of "
        "earlier fine-tuning runs"
    )
    loaded = load_model(path, SCA2LSTM, ckpt=ckpt, hint=hint)
    return loaded.model, loaded.spec, loaded.scalers


def merge_checkpoint_config(run_config: dict, ckpt: dict, explicit: set[str], path: Path) -> dict:
    """The run's config with MODEL_KEYS taken from the checkpoint's config.

    Raises
    ------
    UserError
        The checkpoint's config lacks keys, or the user set an inherited key to another value.
    """
    saved = ckpt["config"] if isinstance(ckpt["config"], dict) else {}
    # A checkpoint from before FUTURE_INPUTS had none.
    saved = {"FUTURE_INPUTS": [], **saved}
    missing = [k for k in MODEL_KEYS if k not in saved]
    if missing:
        raise UserError(f"{path} has no {', '.join(missing)} in its config; retrain it")
    clash = [k for k in MODEL_KEYS if k in explicit and run_config[k] != saved[k]]
    if clash:
        given = ", ".join(f"{k}={run_config[k]!r} (checkpoint: {saved[k]!r})" for k in clash)
        raise UserError(
            f"{given}: the model's inputs, windows, size and periods come from the checkpoint "
            f"{path} and cannot change when fine-tuning; drop them from --set/--config"
        )
    config = {**run_config, **{k: saved[k] for k in MODEL_KEYS}}
    validate_config(config)
    return config


# --------------------------------------------------------------------------- the time split


@dataclass(frozen=True)
class TimeSplit:
    """The target basin's record split in time order; all dates inclusive, datetime64[D].

    ``train_start..train_end`` trains, ``val_start..val_end`` validates and early-stops, both end
    before ``test_start``; ``test_start..test_end`` is only scored. ``n_valid`` counts the valid
    daily records (observed target, complete forcings) of the two blocks, ``n_test`` those of the
    test period.
    """

    train_start: np.datetime64
    train_end: np.datetime64
    val_start: np.datetime64
    val_end: np.datetime64
    test_start: np.datetime64
    test_end: np.datetime64
    n_valid: int
    n_test: int

    def to_dict(self) -> dict:
        return {
            k: str(v) if isinstance(v, np.datetime64) else int(v) for k, v in vars(self).items()
        }


def valid_days(basin: BasinData, spec: FeatureSpec) -> np.ndarray:
    """``[T]`` bool: the target is observed and every forcing of ``spec`` is present."""
    ok = np.isfinite(basin.column(spec.target))
    for column in spec.forcings:
        ok &= np.isfinite(basin.column(column))
    return ok


def plan_split(
    basin: BasinData,
    spec: FeatureSpec,
    config: dict,
    ratio: float,
    start: np.datetime64 | None = None,
    end: np.datetime64 | None = None,
) -> TimeSplit:
    """Split the basin's record outside the test period in time order (never at random).

    The record runs from the first valid day on or after ``start`` (default: the first one) to
    the last valid day on or before ``end`` (default and latest: the day before TEST_START).
    A ``start`` after TEST_END tunes on newer observations instead (to ``end`` or the end of the
    data); a record that overlaps the test period is refused.
    :func:`hydrologyDataset.block_end` puts the first ``ratio`` share of those days in the
    training block; the rest is the validation block.

    Raises
    ------
    UserError
        ``end`` inside or after the test period, ``start`` after ``end``, no valid record, or a
        block without a valid record.
    """
    test_start, test_end = period(config, "test")
    limit = test_start - np.timedelta64(1, "D")
    if start is not None and start > test_end:
        # New observations after the test period: tune on them; the test period stays unseen.
        lo, hi = start, end if end is not None else basin.end
    else:
        if end is not None and end > limit:
            raise UserError(
                f"--end {end} reaches into the test period ({test_start}..{test_end}, from the "
                f"checkpoint's config): tune on the record up to {limit}, or on newer "
                f"observations with --start after {test_end}"
            )
        lo = start if start is not None else basin.start
        hi = end if end is not None else limit
    if lo > hi:
        raise UserError(f"--start {lo} is after the end of the record to tune on ({hi})")
    dates = basin.dates()
    ok = valid_days(basin, spec)
    inside = ok & (dates >= lo) & (dates <= hi)
    n_valid = int(inside.sum())
    if n_valid == 0:
        raise UserError(
            f"basin {basin.basin} has no valid record (observed {spec.target} with complete "
            f"forcings) in {lo}..{hi}; choose another basin or other --start/--end dates"
        )
    first, last = dates[inside][0], dates[inside][-1]
    train_end = block_end(first, last, ratio)
    n_train = int((inside & (dates <= train_end)).sum())
    if n_train == 0 or n_train == n_valid:
        block = "training" if n_train == 0 else "validation"
        raise UserError(
            f"--fine_tune_ratio {ratio} splits {first}..{last} of basin {basin.basin} so that the "
            f"{block} block holds no valid record ({n_valid} in all); change --fine_tune_ratio "
            "or --start/--end"
        )
    n_test = int((ok & (dates >= test_start) & (dates <= test_end)).sum())
    return TimeSplit(
        first,
        train_end,
        train_end + np.timedelta64(1, "D"),
        last,
        test_start,
        test_end,
        n_valid,
        n_test,
    )


# --------------------------------------------------------------------------- preparation


@dataclass
class FineTuneRequest:
    """What a fine-tuning run is asked to do: the run's config and the paths, no argparse.

    A notebook builds one directly::

        request = FineTuneRequest(load_config(stage="fine_tune"), "22001",
                                  Path("model_output/sca2lstm.pth"), data_dir="../shared/camels_gb")
        job = prepare(request)
        fine_tune(job, run_dir)

    Attributes
    ----------
    config : dict
        The run's config before the checkpoint's model keys are laid over it.
    basin : str
        The CAMELS-GB gauge id to fine-tune on.
    pretrained : Path
        The checkpoint (or, for :func:`fine_tune_ensemble`, an ensemble manifest).
    explicit : set of str
        Keys the user set (--config/--set); such a model key that differs from the checkpoint's
        is an error, the others are inherited from it.
    data_dir : str or None
        The CAMELS-GB folder (None: DATA_DIR of the config).
    demo : bool
        Use the synthetic demo data.
    device : str
        auto, cpu, cuda or cuda:N.
    start, end : numpy.datetime64 or None
        The span of the record to split into training and validation blocks.
    unfreeze : list of str
        Freeze groups to train besides the default ones.
    """

    config: dict
    basin: str
    pretrained: Path
    explicit: set[str] = field(default_factory=set)
    data_dir: str | None = None
    demo: bool = False
    device: str = "auto"
    no_cuda: bool = False
    start: np.datetime64 | None = None
    end: np.datetime64 | None = None
    unfreeze: list[str] = field(default_factory=list)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FineTuneRequest:
        """The request of the command line."""
        return cls(
            config=resolve_fine_tune_config(args),
            basin=str(args.target_basin).strip(),
            pretrained=Path(args.pretrained_model).expanduser(),
            explicit=explicit_keys(args.config, args.set, stage="fine_tune"),
            data_dir=args.data_dir,
            demo=args.demo,
            device=args.device,
            no_cuda=args.no_cuda,
            start=args.start,
            end=args.end,
            unfreeze=[g for g in FREEZE_GROUPS if getattr(args, f"unfreeze_{g}")],
        )


@dataclass
class FineTuneJob:
    """Everything a run needs, checked before its folder exists."""

    basin: str
    parent: Path
    ckpt: dict
    model: SCA2LSTM
    spec: FeatureSpec
    scalers: Scalers
    config: dict
    data: InputData
    split: TimeSplit
    train: WindowData
    val: WindowData
    test: WindowData | None
    unfrozen: list[str]
    device: torch.device


def freeze(model: SCA2LSTM, unfrozen: Sequence[str]) -> None:
    """Freeze FREEZE_GROUPS except ``unfrozen``; TRAINED_GROUPS are always trainable."""
    for group in FREEZE_GROUPS + TRAINED_GROUPS:
        trainable = group in TRAINED_GROUPS or group in unfrozen
        for param in getattr(model, group).parameters():
            param.requires_grad_(trainable)


def prepare(request: FineTuneRequest) -> FineTuneJob:
    """Check every input and build the model and windows; writes no run folder.

    Raises
    ------
    UserError
        Any bad input: config values, basin id, checkpoint, data, dates, ratio.
    """
    ensure_writable(output_root(request.config), "the output folder")
    basin = request.basin
    if not basin.isdigit():
        raise UserError(f"--target_basin {basin!r} is not a CAMELS-GB gauge id (e.g. 32006)")
    parent = Path(request.pretrained)
    ckpt = load_checkpoint(parent)
    model, spec, scalers = model_from_checkpoint(ckpt, parent)
    config = merge_checkpoint_config(request.config, ckpt, request.explicit, parent)
    try:
        data_dir = resolve_data_dir(request.data_dir, config, demo=request.demo)
    except UserError as err:
        trained_on = ckpt.get("data_dir")
        if request.demo or request.data_dir or not trained_on:
            raise
        raise UserError(f"{err} (the checkpoint was trained on {trained_on})") from None
    device = resolve_device(request.device, request.no_cuda, config)
    data = load_input_data(config, data_dir, [basin])
    spec.check(data)
    split = plan_split(
        data.basins[basin], spec, config, config["FINE_TUNE_RATIO"], request.start, request.end
    )
    stride = spec.eval_stride
    train = WindowData(
        data,
        spec,
        scalers,
        [basin],
        split.train_start,
        split.train_end,
        device=window_device(config, device),
    )
    val = WindowData(
        data, spec, scalers, [basin], split.val_start, split.val_end, device=device, stride=stride
    )
    test = None
    if split.n_test:
        test = WindowData(
            data,
            spec,
            scalers,
            [basin],
            split.test_start,
            split.test_end,
            device=device,
            stride=stride,
        )
    unfrozen = [g for g in FREEZE_GROUPS if g in request.unfreeze]
    freeze(model, unfrozen)
    model.to(device)
    return FineTuneJob(
        basin=basin,
        parent=parent,
        ckpt=ckpt,
        model=model,
        spec=spec,
        scalers=scalers,
        config=config,
        data=data,
        split=split,
        train=train,
        val=val,
        test=test,
        unfrozen=unfrozen,
        device=device,
    )


# --------------------------------------------------------------------------- fine-tuning


def score(
    job: FineTuneJob, batch_size: int, label: str, members: Sequence[FineTuneJob] = ()
) -> pd.DataFrame:
    """Per-period scores of the model as it is now (validation block and test period).

    With ``members`` (the jobs of an ensemble's members, ``job`` among them), the score of the
    mean of their predictions in mm/day (:func:`utils.ensemble_prediction`).
    """
    frames = []
    sets = (
        ("validation", "val", job.split.val_start, job.split.val_end),
        ("test", "test", job.split.test_start, job.split.test_end),
    )
    for name, attr, start, end in sets:
        windows = getattr(job, attr)
        if windows is None:
            continue
        if members:
            preds = [predict_windows(m.model, getattr(m, attr), batch_size) for m in members]
            scalers = [m.scalers for m in members]
            pred = ensemble_prediction(preds, scalers, job.scalers)["mean"]
        else:
            pred = predict_windows(job.model, windows, batch_size=batch_size)
        table = basin_metrics_table(windows, pred, job.data, {}).drop(columns="group")
        table.insert(0, "model", label)
        table.insert(0, "end", str(end))
        table.insert(0, "start", str(start))
        table.insert(0, "period", name)
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def summarise(metrics: pd.DataFrame) -> dict:
    """period -> zero-shot and fine-tuned NSE and KGE, and the NSE change."""
    out = {}
    for name, rows in metrics.groupby("period", sort=False):
        by = rows.set_index("model")
        zero, tuned = by.loc["zero_shot"], by.loc["fine_tuned"]
        out[name] = {
            "zero_shot_nse": float(zero["nse"]),
            "fine_tuned_nse": float(tuned["nse"]),
            "delta_nse": float(tuned["nse"] - zero["nse"]),
            "zero_shot_kge": float(zero["kge"]),
            "fine_tuned_kge": float(tuned["kge"]),
        }
    return out


def _cudnn_guard(job: FineTuneJob):
    # cuDNN refuses an RNN backward in eval mode. A frozen lstm1 stays in eval mode, and with a
    # trainable embedding the gradient has to pass through it: use the native LSTM kernels then.
    if job.device.type == "cuda" and "embedding" in job.unfrozen and "lstm1" not in job.unfrozen:
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


def describe(job: FineTuneJob, run_dir: Path) -> None:
    """Write the run's config and feature split, and log what the run will do."""
    basin, config, model, spec, split = job.basin, job.config, job.model, job.spec, job.split
    b = job.data.basins[basin]
    log_device(job.device)
    write_run_config(run_dir, config)
    write_json(run_dir / "feature_classification.json", spec.feature_classification())
    if spec.future_inputs:
        log.info(
            "future inputs over t+1..t+%d: %s; %s",
            spec.pred_len,
            ", ".join(spec.future_inputs),
            HINDCAST_NOTE,
        )
    log.info(
        "fine-tuning basin %s (%s) from %s (stage %s, %s mode, %d channels)",
        basin,
        b.name,
        job.parent,
        job.ckpt.get("stage"),
        spec.mode,
        len(spec.channels),
    )
    tuned_for = job.ckpt.get("target_basin")
    if tuned_for and tuned_for != basin:
        log.warning(
            "%s was fine-tuned for basin %s, now tuned for %s", job.parent, tuned_for, basin
        )
    if basin in config["TRAIN_BASINS"]:
        log.info("basin %s was a pretraining basin: its zero-shot score is not unseen", basin)
    if bool(job.ckpt.get("synthetic_data")) != job.data.synthetic:
        log.warning(
            "the checkpoint was trained on %s data, the target basin's data are %s",
            "synthetic" if job.ckpt.get("synthetic_data") else "real",
            "synthetic" if job.data.synthetic else "real",
        )
    frozen = [g for g in FREEZE_GROUPS if g not in job.unfrozen]
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "frozen: %s; trained: %s (%d of %d parameters)",
        ", ".join(frozen) or "none",
        ", ".join([*job.unfrozen, *TRAINED_GROUPS]),
        n_train,
        sum(p.numel() for p in model.parameters()),
    )
    log.info(
        "training block %s..%s (%d windows), validation block %s..%s (%d windows); "
        "test period %s..%s is only scored",
        split.train_start,
        split.train_end,
        len(job.train),
        split.val_start,
        split.val_end,
        len(job.val),
        split.test_start,
        split.test_end,
    )
    if split.n_valid < MIN_RECORDS:
        log.warning(
            "basin %s has %d valid daily records in %s..%s, fewer than the about %d advised: "
            "scores will be noisy; keep layers frozen and epochs few",
            basin,
            split.n_valid,
            split.train_start,
            split.val_end,
            MIN_RECORDS,
        )
    if job.test is None:
        log.warning("basin %s has no valid record in the test period: no test scores", basin)


def train(job: FineTuneJob, run_dir: Path):
    """Score the pretrained model, fine-tune, and keep the pretrained weights if no epoch beat
    them on the validation block. Returns ``(result, best_epoch, zero, zero_val_nse, history_doc)``.
    """
    basin, config, model, split = job.basin, job.config, job.model, job.split
    settings = TrainSettings.from_config(config, job.device)
    eval_batch = eval_batch_size(settings.batch_size)
    zero = score(job, eval_batch, "zero_shot")
    # For one basin this is the score fit() early-stops on (the median NSE over basins).
    zero_val_nse = float(zero.loc[zero["period"] == "validation", "nse"].iloc[0])
    log.info("zero-shot (pretrained) validation NSE %.4f", zero_val_nse)
    pretrained_state = copy.deepcopy(model.state_dict())
    history_path = run_dir / "finetune_history.json"

    def history_doc(history: list[dict], best_epoch: int) -> dict:
        return {
            "target_basin": basin,
            "parent": str(job.parent.resolve()),
            "split": split.to_dict(),
            "unfrozen": job.unfrozen,
            "zero_shot_val_nse": zero_val_nse,
            "best_epoch": best_epoch,
            "epochs": history,
        }

    def on_epoch(record, model_, is_best, state) -> None:
        write_json(history_path, history_doc(state["history"], state["best_epoch"]))

    with _cudnn_guard(job):
        result = fit(model, job.train, job.val, settings, job.device, on_epoch=on_epoch)
    best_epoch = result.best_epoch
    if math.isfinite(zero_val_nse) and not result.best_score > zero_val_nse:
        log.warning(
            "no epoch beat the pretrained model on the validation block (best NSE %.4f vs "
            "zero-shot %.4f): keeping the pretrained weights",
            result.best_score,
            zero_val_nse,
        )
        model.load_state_dict(pretrained_state)
        best_epoch = 0
    return result, best_epoch, zero, zero_val_nse, history_doc


def report(job: FineTuneJob, run_dir: Path, result, best_epoch, zero, zero_val_nse, history_doc):
    """Score the fine-tuned model; write the tables, history, plot and the checkpoint."""
    basin, config, model, spec, split = job.basin, job.config, job.model, job.spec, job.split
    b = job.data.basins[basin]
    eval_batch = eval_batch_size(TrainSettings.from_config(config, job.device).batch_size)
    history_path = run_dir / "finetune_history.json"
    tuned = score(job, eval_batch, "fine_tuned")
    metrics = pd.concat([zero, tuned], ignore_index=True)
    mark_synthetic(metrics, job.data.synthetic)
    write_csv(run_dir / "metrics_before_after.csv", metrics)
    summary = summarise(metrics)
    for name, s in summary.items():
        log.info(
            "%-10s NSE zero-shot %.3f -> fine-tuned %.3f (%+.3f); KGE %.3f -> %.3f",
            name,
            s["zero_shot_nse"],
            s["fine_tuned_nse"],
            s["delta_nse"],
            s["zero_shot_kge"],
            s["fine_tuned_kge"],
        )
    write_json(history_path, history_doc(result.history, best_epoch))
    plot_training_curve(
        result.history,
        run_dir / "training_curve.png",
        f"Fine-tuning basin {basin} {b.name} ({spec.mode})",
    )

    entry = {
        "basin": basin,
        "start": str(split.train_start),
        "end": str(split.val_end),
        "ratio": float(config["FINE_TUNE_RATIO"]),
        "train_end": str(split.train_end),
        "unfrozen": list(job.unfrozen),
        "epochs": len(result.history),
        "best_epoch": best_epoch,
        "parent": str(job.parent.resolve()),
    }
    tuning_history = [*(job.ckpt.get("tuning_history") or []), entry]
    checkpoint = run_dir / CHECKPOINT_NAME.format(basin=basin)
    save_checkpoint(
        checkpoint,
        checkpoint_payload(
            model,
            config,
            spec,
            job.scalers,
            job.data,
            "fine_tune",
            best_epoch,
            {
                "summary": summary,
                "zero_shot_val_nse": zero_val_nse,
                "best_val_nse": result.best_score if best_epoch else zero_val_nse,
                "per_period": metrics.to_dict(orient="records"),
            },
            parent=str(job.parent.resolve()),
            extra={
                "target_basin": basin,
                "freeze": {g: g not in job.unfrozen for g in FREEZE_GROUPS},
                "unfrozen": list(job.unfrozen),
                "split": split.to_dict(),
                "tuning_history": tuning_history,
                "history": result.history,
            },
        ),
    )
    log.info("fine-tuned checkpoint %s (best epoch %d)", checkpoint, best_epoch)
    return {
        "run_dir": run_dir,
        "checkpoint": checkpoint,
        "metrics": metrics,
        "summary": summary,
        "history": result.history,
        "split": split.to_dict(),
        "best_epoch": best_epoch,
    }


def fine_tune(job: FineTuneJob, run_dir: Path) -> dict:
    """Fine-tune ``job.model`` and write the run's files into ``run_dir``.

    Returns
    -------
    dict
        ``run_dir``, ``checkpoint``, ``metrics`` (DataFrame: period x zero_shot/fine_tuned),
        ``summary``, ``history``, ``split``, ``best_epoch``.
    """
    describe(job, run_dir)
    return report(job, run_dir, *train(job, run_dir))


# --------------------------------------------------------------------------- hyperparameter search


def parse_unfreeze(value: str) -> list[str]:
    """``UNFREEZE`` choice -> freeze groups; ``none`` or a comma list like ``embedding,lstm1``."""
    text = str(value).strip()
    groups = [] if text == "none" else [g.strip() for g in text.split(",") if g.strip()]
    return [g for g in FREEZE_GROUPS if g in groups]


def _check_unfreeze(value) -> str | None:
    text = str(value).strip()
    groups = [] if text == "none" else [g.strip() for g in text.split(",") if g.strip()]
    bad = [g for g in groups if g not in FREEZE_GROUPS]
    if bad or (not groups and text != "none"):
        return (
            f"{value!r} is not 'none' or a comma list of {', '.join(FREEZE_GROUPS)} "
            "(the groups trained besides lstm2 and head)"
        )
    return None


def search_trainer(job: FineTuneJob):
    """Training function of a trial: a fresh copy of the pretrained model, fine-tuned on the
    training block and scored on the validation block each epoch; the test period is never
    scored and nothing is written."""

    def train(config: dict, params: dict, report) -> TrialOutcome:
        model, _, _ = model_from_checkpoint(job.ckpt, job.parent)
        unfrozen = parse_unfreeze(params["UNFREEZE"]) if "UNFREEZE" in params else job.unfrozen
        freeze(model, unfrozen)
        model.to(job.device)
        seed_everything(config["SEED"])
        trial_job = replace(job, model=model, config=config, unfrozen=unfrozen)

        def on_epoch(record, model_, is_best, state) -> None:
            report(record["epoch"], record["val_nse"])

        settings = TrainSettings.from_config(config, job.device)
        with _cudnn_guard(trial_job):
            result = fit(model, job.train, job.val, settings, job.device, on_epoch=on_epoch)
        return TrialOutcome(result.best_score, len(result.history), {job.basin: result.best_score})

    return train


def search(job: FineTuneJob, search_only: bool) -> tuple[FineTuneJob, dict]:
    """Search HYPEROPT_SPACE (its fine_tune section) for this basin; the job with the best
    settings and the search results."""
    space = parse_space(
        job.config["HYPEROPT_SPACE"], job.config, extra={"UNFREEZE": _check_unfreeze}
    )
    fixed = [k for k in space if k in MODEL_KEYS]
    if fixed:
        raise UserError(
            f"HYPEROPT_SPACE searches {', '.join(fixed)}, which the checkpoint fixes; fine-tuning "
            "searches training keys (LR, N_EPOCHS, ...) and UNFREEZE"
        )
    settings = SearchSettings.from_config(job.config, default_name=f"fine_tune_basin_{job.basin}")
    opened = open_search(
        settings, space, stage=f"fine_tune basin {job.basin} from {job.parent.resolve()}"
    )
    study = run_search(opened, search_trainer(job), job.config)
    results = write_results(opened)
    results["study_dir"] = str(settings.study_dir)
    if search_only:
        return job, results
    config, params = best_config(study, space, job.config)
    config["ENABLE_HYPEROPT"] = True
    config["OPTUNA_STUDY_NAME"] = settings.study_name
    unfrozen = parse_unfreeze(params["UNFREEZE"]) if "UNFREEZE" in params else job.unfrozen
    model, _, _ = model_from_checkpoint(job.ckpt, job.parent)
    freeze(model, unfrozen)
    model.to(job.device)
    log.info(
        "fine-tuning with the best trial %d of study %s (validation NSE %.4f): %s",
        results["best_trial"],
        settings.study_name,
        results["best_score"],
        params,
    )
    return replace(job, config=config, unfrozen=unfrozen, model=model), results


# --------------------------------------------------------------------------- ensembles


def prepare_ensemble(args: argparse.Namespace) -> tuple[Path, dict, list[FineTuneJob]]:
    """One :class:`FineTuneJob` per member of the ensemble manifest ``--pretrained_model``.

    Raises
    ------
    UserError
        A bad manifest, a missing member, members that cannot form one ensemble, or any bad
        input :func:`prepare` finds for a member.
    """
    if args.seed is not None:
        raise UserError(
            f"--seed with the ensemble {args.pretrained_model}: each member is fine-tuned with "
            "its own seed, the one it was pretrained with; drop --seed"
        )
    request = FineTuneRequest.from_args(args)
    manifest, parents = read_ensemble_manifest(request.pretrained)
    jobs = [prepare(replace(request, pretrained=Path(p))) for p in parents]
    check_ensemble_members([(job.parent, job.ckpt) for job in jobs])
    return request.pretrained, manifest, jobs


def fine_tune_ensemble(args: argparse.Namespace) -> dict:
    """Fine-tune every member of an ensemble on the basin, in one run folder.

    ``<run>/member_<seed>/`` holds each member's fine-tuning run (the files of one run), tuned
    with the member's seed;
    ``<run>/ensemble.json`` the fine-tuned ensemble, which ``predict.py --ensemble`` and
    ``fine_train.py`` read; ``metrics_before_after.csv`` the ensemble's zero-shot and fine-tuned
    scores (the mean of the members in mm/day) and ``members_vs_ensemble.csv`` the members',
    their mean and the ensemble's side by side.

    Returns
    -------
    dict
        ``run_dir``, ``manifest`` and ``checkpoint`` (both the new ensemble.json),
        ``checkpoints`` (the members'), ``metrics`` (the ensemble's, DataFrame), ``summary``,
        ``members`` (each member's :func:`fine_tune` result) and ``members_vs_ensemble``.
    """
    parent, manifest, jobs = prepare_ensemble(args)
    first = jobs[0]
    # Every input is checked above; a failure from here on removes the whole run folder.
    with RunFolder(run_parent(first), "fine_tune.log") as folder:
        run_dir = folder.path
        log.info("fine-tuning the %d members of %s on basin %s", len(jobs), parent, first.basin)
        settings = TrainSettings.from_config(first.config, first.device)
        eval_batch = eval_batch_size(settings.batch_size)
        zero = score(first, eval_batch, "zero_shot", members=jobs)
        results = []
        for seed, job in zip(manifest["seeds"], jobs, strict=True):
            member_dir = run_dir / f"member_{seed}"
            member_dir.mkdir()
            job.config["SEED"] = seed  # the member's own seed, as a single run with --seed
            seed_everything(seed)
            with LogFile(member_dir / "fine_tune.log"):
                log.info("ensemble member %s (seed %d)", member_dir.name, seed)
                results.append(fine_tune(job, member_dir))
        tuned = score(first, eval_batch, "fine_tuned", members=jobs)
        return report_ensemble(run_dir, parent, manifest, jobs, results, zero, tuned)


def run_parent(job: FineTuneJob) -> Path:
    """Where a fine-tuning run's folder goes: ``<output root>/fine_tune/basin_<id>/``."""
    return output_root(job.config) / "fine_tune" / f"basin_{job.basin}"


def report_ensemble(
    run_dir: Path,
    parent: Path,
    manifest: dict,
    jobs: list[FineTuneJob],
    results: list[dict],
    zero: pd.DataFrame,
    tuned: pd.DataFrame,
) -> dict:
    """Write the fine-tuned ensemble's tables and manifest; log the scores."""
    metrics = pd.concat([zero, tuned], ignore_index=True)
    mark_synthetic(metrics, jobs[0].data.synthetic)
    write_csv(run_dir / "metrics_before_after.csv", metrics)
    keys = [c for c in ("data", "period", "model", "basin", "gauge_name") if c in metrics]
    tables = {f"seed_{s}": r["metrics"] for s, r in zip(manifest["seeds"], results, strict=True)}
    side = members_vs_ensemble(tables, metrics, keys)
    write_csv(run_dir / "members_vs_ensemble.csv", side)
    summary = summarise(metrics)
    entries = []
    for seed, res in zip(manifest["seeds"], results, strict=True):
        ckpt = load_checkpoint(res["checkpoint"])
        entries.append(
            {
                "seed": seed,
                "checkpoint": res["checkpoint"],
                "done": True,
                "best_epoch": res["best_epoch"],
                "val_nse": ckpt["metrics"]["best_val_nse"],
                "summary": res["summary"],
            }
        )
    write_ensemble_manifest(
        run_dir / ENSEMBLE_MANIFEST,
        "fine_tune",
        entries,
        complete=True,
        target_basin=jobs[0].basin,
        parent=str(parent.resolve()),
        ensemble_metrics=summary,
        tables={"ensemble": "metrics_before_after.csv", "side_by_side": "members_vs_ensemble.csv"},
    )
    for _, row in side.iterrows():
        log.info(
            "%-10s %-10s NSE members %s  mean %.3f  ensemble %.3f",
            row["period"],
            row["model"],
            " ".join(f"{row[f'nse_{name}']:.3f}" for name in tables),
            row["nse_member_mean"],
            row["nse_ensemble"],
        )
    log.info("fine-tuned ensemble %s", run_dir / ENSEMBLE_MANIFEST)
    return {
        "run_dir": run_dir,
        "manifest": run_dir / ENSEMBLE_MANIFEST,
        "checkpoint": run_dir / ENSEMBLE_MANIFEST,
        "checkpoints": [r["checkpoint"] for r in results],
        "metrics": metrics,
        "summary": summary,
        "members": results,
        "members_vs_ensemble": side,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point; returns what :func:`fine_tune` returns (with ``--search_only``:
    the search results)."""
    args = build_parser().parse_args(argv)
    setup_logging()
    if is_ensemble_manifest(args.pretrained_model):
        return fine_tune_ensemble(args)
    job = prepare(FineTuneRequest.from_args(args))
    results = None
    if args.search_only and not job.config["ENABLE_HYPEROPT"]:
        raise UserError("--search_only applies to a search: add --enable_hyperopt")
    if job.config["ENABLE_HYPEROPT"]:
        job, results = search(job, args.search_only)
        if args.search_only:
            return results
    seed_everything(job.config["SEED"])
    # Every input is checked above; a failure from here on removes the whole run folder.
    with RunFolder(run_parent(job), "fine_tune.log") as folder:
        if results is not None:
            keys = ("study_name", "storage", "study_dir", "best_trial", "best_score", "best_params")
            write_json(folder.path / "hyperopt_source.json", {k: results[k] for k in keys})
        return fine_tune(job, folder.path)


if __name__ == "__main__":
    run_cli(main)
