"""Quality protocol of per-basin fine-tuning: zero-shot against fine-tuned test-period NSE.

For each seed: pretrain SCA2LSTM on the training basins (``sca2lstm.main``), then fine-tune it on
every test basin (``fine_train.main``) and read both scores on the test period. The report is per
basin (mean over seeds) and the median over basins (mean over seeds of the per-seed medians),
checked against the fine-tuning issue's targets: in simulate mode the fine-tuned median beats the
zero-shot one by at least 0.05 and reaches 0.80, and no basin loses more than 0.02.

Both stages read one recipe, ``configs/fine_tune.yaml`` unless ``--config`` names another: its
``pretrain`` section for ``sca2lstm.py`` and its ``fine_tune`` section for ``fine_train.py``. The
other flags change it for one run.

Usage::

    # the measured protocol (benchmarks/README.md)
    python benchmarks/fine_tune_quality.py --data_dir /data/CAMELS_GB --seeds 1,2,3
    # with 365-day windows (a GPU is advised: they are slow on two CPU cores)
    python benchmarks/fine_tune_quality.py --data_dir /data/CAMELS_GB --seeds 1,2,3 \\
        --seq_len 365 --set PREDICT_LAST_N=30 --pretrain_epochs 30
    # a minute-long check on the synthetic demo data
    python benchmarks/fine_tune_quality.py --demo --seeds 1 --seq_len 30 \\
        --test_basins 22001,39025 --pretrain_epochs 1 --fine_tune_epochs 2 \\
        --set PREDICT_LAST_N=10 --set BATCH_SIZE=256 --fine_tune_set BATCH_SIZE=256

Writes ``--output`` (one row per seed and basin), ``<output>_summary.csv`` (per basin, mean over
seeds) and ``<output>.json`` (medians, targets met, wall time, the command).

``--ensemble`` pretrains the seeds as the members of one ensemble (``sca2lstm.py --seeds``) and
fine-tunes it on each test basin (``fine_train.py`` on its ``ensemble.json``). ``--output``
then holds, per basin and stage (zero-shot, fine-tuned), each member's test NSE, the mean of the
members and the ensemble's (the mean of their predictions); the ensemble target of issue 15 is a
fine-tuned median of at least 0.85::

    python benchmarks/fine_tune_quality.py --data_dir /data/CAMELS_GB --seeds 1,2,3 --ensemble \\
        --output model_output/benchmarks/fine_tune_quality_ensemble.csv
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

import fine_train  # noqa: E402
import sca2lstm  # noqa: E402
from utils import (  # noqa: E402
    UserError,
    csv_list,
    load_config,
    log,
    make_run_dir,
    positive_int,
    run_cli,
    setup_logging,
    write_csv,
    write_json,
)

# Targets of the fine-tuning issue (simulate mode, 7 unseen test basins, mean of 3 seeds).
MIN_MEDIAN_GAIN = 0.05
MIN_MEDIAN_NSE = 0.80
MAX_BASIN_LOSS = 0.02
RECIPE = ROOT / "configs" / "fine_tune.yaml"
MIN_ENSEMBLE_MEDIAN_NSE = 0.85  # issue 15: the fine-tuned ensemble of 3 seeds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Pretrain, then fine-tune every test basin; zero-shot vs fine-tuned NSE.",
    )
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data_dir", help="CAMELS-GB folder")
    data.add_argument("--demo", action="store_true", help="the synthetic demo dataset")
    parser.add_argument(
        "--config",
        default=str(RECIPE),
        help="recipe for both stages (its pretrain and fine_tune sections)",
    )
    parser.add_argument("--train_basins", type=csv_list, help="default: run.config TRAIN_BASINS")
    parser.add_argument("--val_basins", type=csv_list, help="default: run.config VAL_BASINS")
    parser.add_argument("--test_basins", type=csv_list, help="default: run.config TEST_BASINS")
    parser.add_argument("--seeds", type=csv_list, default=["1", "2", "3"], help="e.g. 1,2,3")
    parser.add_argument("--mode", choices=("forecast", "simulate"), help="default: the recipe's")
    parser.add_argument("--seq_len", type=positive_int, help="SEQ_LEN (default: run.config)")
    parser.add_argument("--pretrain_epochs", type=positive_int, help="default: run.config")
    parser.add_argument("--fine_tune_epochs", type=positive_int, help="default: run.config (20)")
    parser.add_argument(
        "--unfreeze",
        type=csv_list,
        default=[],
        help=f"freeze groups to release when fine-tuning ({', '.join(fine_train.FREEZE_GROUPS)})",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run.config override for pretraining (repeatable), e.g. PREDICT_LAST_N=30",
    )
    parser.add_argument(
        "--fine_tune_set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run.config override for fine-tuning (repeatable), e.g. BATCH_SIZE=64",
    )
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help="pretrain the seeds as one ensemble, fine-tune it per basin, and compare the "
        "ensemble with its members",
    )
    parser.add_argument("--input_dir", help="INPUT_DIR for both stages (default: run.config)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--work_dir",
        help="where the run folders go (default: model_output/benchmarks/fine_tune_quality/<time>)",
    )
    parser.add_argument(
        "--output",
        default=str(ROOT / "model_output" / "benchmarks" / "fine_tune_quality.csv"),
        help="per seed and basin CSV; _summary.csv and .json are written next to it",
    )
    return parser


def _data_args(args: argparse.Namespace) -> list[str]:
    out = ["--demo"] if args.demo else ["--data_dir", args.data_dir]
    out += ["--config", args.config]
    if args.input_dir:
        out += ["--set", f"INPUT_DIR={args.input_dir}"]
    return [*out, "--device", args.device]


def _pretrain_argv(
    args: argparse.Namespace, seed: str, out_dir: Path, seed_flag: str = "--seed"
) -> list[str]:
    argv = [*_data_args(args), "--output_dir", str(out_dir), seed_flag, seed]
    for flag, value in (
        ("--mode", args.mode),
        ("--seq_len", args.seq_len),
        ("--epochs", args.pretrain_epochs),
        ("--train_basins", args.train_basins),
        ("--val_basins", args.val_basins),
        ("--test_basins", args.test_basins),
    ):
        if value:
            argv += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    for item in args.set:
        argv += ["--set", item]
    return argv


def _fine_tune_argv(
    args: argparse.Namespace, seed: str | None, basin: str, ckpt: Path, out_dir: Path
) -> list[str]:
    argv = [*_data_args(args), "--output_dir", str(out_dir)]
    argv += ["--seed", seed] if seed is not None else []  # an ensemble's members keep theirs
    argv += ["--target_basin", basin, "--pretrained_model", str(ckpt)]
    if args.fine_tune_epochs:
        argv += ["--epochs", str(args.fine_tune_epochs)]
    argv += [f"--unfreeze_{group}" for group in args.unfreeze]
    for item in args.fine_tune_set:
        argv += ["--set", item]
    return argv


def summarise(rows: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per-basin means over seeds and the protocol's medians and targets."""
    per_basin = (
        rows.groupby(["basin", "gauge_name"], sort=False)
        .agg(
            zero_shot_nse=("zero_shot_nse", "mean"),
            fine_tuned_nse=("fine_tuned_nse", "mean"),
            n_seeds=("seed", "nunique"),
        )
        .reset_index()
    )
    per_basin["delta_nse"] = per_basin["fine_tuned_nse"] - per_basin["zero_shot_nse"]
    medians = rows.groupby("seed")[["zero_shot_nse", "fine_tuned_nse"]].median()
    zero, tuned = float(medians["zero_shot_nse"].mean()), float(medians["fine_tuned_nse"].mean())
    worst = float(per_basin["delta_nse"].min())
    report = {
        "median_zero_shot_nse": zero,
        "median_fine_tuned_nse": tuned,
        "median_gain": tuned - zero,
        "median_of_basin_means": {
            "zero_shot_nse": float(per_basin["zero_shot_nse"].median()),
            "fine_tuned_nse": float(per_basin["fine_tuned_nse"].median()),
        },
        "worst_basin_change": worst,
        "targets": {
            f"median gain >= {MIN_MEDIAN_GAIN}": bool(tuned - zero >= MIN_MEDIAN_GAIN),
            f"fine-tuned median >= {MIN_MEDIAN_NSE}": bool(tuned >= MIN_MEDIAN_NSE),
            f"no basin worse by more than {MAX_BASIN_LOSS}": bool(worst >= -MAX_BASIN_LOSS),
        },
    }
    return per_basin, report


def run_ensemble(args: argparse.Namespace, work: Path, test_basins: list[str]) -> pd.DataFrame:
    """Pretrain the seeds as one ensemble and fine-tune it on each test basin.

    Returns
    -------
    pandas.DataFrame
        Per basin and stage (zero_shot, fine_tuned): ``nse_seed_<s>`` of each member,
        ``nse_member_mean`` and ``nse_ensemble`` on the test period.
    """
    pre = sca2lstm.main(_pretrain_argv(args, ",".join(args.seeds), work, "--seeds"))
    rows = []
    for basin in test_basins:
        res = fine_train.main(_fine_tune_argv(args, None, basin, pre["manifest"], work))
        side = res["members_vs_ensemble"]
        test = side[side["period"] == "test"]
        cols = [f"nse_seed_{s}" for s in args.seeds] + ["nse_member_mean", "nse_ensemble"]
        for _, row in test.iterrows():
            rows.append(
                {
                    "basin": basin,
                    "gauge_name": row["gauge_name"],
                    "stage": row["model"],
                    **{c: row[c] for c in cols},
                    "run_dir": str(res["run_dir"]),
                }
            )
    return pd.DataFrame(rows)


def ensemble_report(table: pd.DataFrame, seeds: Sequence[str]) -> dict:
    """Medians over basins per stage: each member, the members' mean and the ensemble."""
    report = {}
    for stage, rows in table.groupby("stage", sort=False):
        members = [float(rows[f"nse_seed_{s}"].median()) for s in seeds]
        report[stage] = {
            "members_median_nse": members,
            "mean_of_members_median_nse": sum(members) / len(members),
            "median_of_member_mean_nse": float(rows["nse_member_mean"].median()),
            "ensemble_median_nse": float(rows["nse_ensemble"].median()),
        }
    tuned = report.get("fine_tuned", {}).get("ensemble_median_nse", math.nan)
    report["targets"] = {
        f"fine-tuned ensemble median >= {MIN_ENSEMBLE_MEDIAN_NSE}": bool(
            tuned >= MIN_ENSEMBLE_MEDIAN_NSE
        )
    }
    return report


def main_ensemble(args: argparse.Namespace, argv: Sequence[str] | None) -> dict:
    """The ``--ensemble`` protocol: write the table and its report, log the medians."""
    flags = {"MODE": args.mode, "SEQ_LEN": args.seq_len, "TEST_BASINS": args.test_basins}
    config = load_config(args.config, stage="pretrain", overrides=args.set, flags=flags)
    test_basins = args.test_basins or config["TEST_BASINS"]
    work = Path(args.work_dir) if args.work_dir else None
    work = work or make_run_dir(ROOT / "model_output" / "benchmarks" / "fine_tune_quality")
    t0 = time.perf_counter()
    table = run_ensemble(args, work, test_basins)
    report = ensemble_report(table, args.seeds)
    report.update(
        {
            "mode": config["MODE"],
            "recipe": args.config,
            "seeds": [int(s) for s in args.seeds],
            "test_basins": list(test_basins),
            "synthetic_data": bool(args.demo),
            "wall_seconds": time.perf_counter() - t0,
            "work_dir": str(work),
            "command": shlex.join(
                ["python", "benchmarks/fine_tune_quality.py", *(argv or sys.argv[1:])]
            ),
        }
    )
    output = Path(args.output)
    write_csv(output, table)
    write_json(output.with_suffix(".json"), report)
    for stage in ("zero_shot", "fine_tuned"):
        r = report.get(stage)
        if r:
            log.info(
                "%-10s median test NSE: members %s (mean %.3f), member mean %.3f, ensemble %.3f",
                stage,
                ", ".join(f"{v:.3f}" for v in r["members_median_nse"]),
                r["mean_of_members_median_nse"],
                r["median_of_member_mean_nse"],
                r["ensemble_median_nse"],
            )
    for target, met in report["targets"].items():
        log.info("target %-40s %s", target, "met" if met else "NOT met")
    if args.demo:
        log.warning("SYNTHETIC demo data: these numbers prove the script runs, nothing more")
    log.info("wrote %s and its .json", output)
    return {"table": table, "report": report}


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the protocol; returns the per-seed rows, the per-basin table and the report."""
    args = build_parser().parse_args(argv)
    setup_logging()
    unknown = sorted(set(args.unfreeze) - set(fine_train.FREEZE_GROUPS))
    if unknown:
        raise UserError(f"--unfreeze: unknown group(s) {unknown}; use {fine_train.FREEZE_GROUPS}")
    if args.ensemble:
        return main_ensemble(args, argv)
    flags = {"MODE": args.mode, "SEQ_LEN": args.seq_len, "TEST_BASINS": args.test_basins}
    config = load_config(args.config, stage="pretrain", overrides=args.set, flags=flags)
    test_basins = args.test_basins or config["TEST_BASINS"]
    work = Path(args.work_dir) if args.work_dir else None
    work = work or make_run_dir(ROOT / "model_output" / "benchmarks" / "fine_tune_quality")
    output = Path(args.output)
    t0 = time.perf_counter()
    records = []
    for seed in args.seeds:
        seed_dir = work / f"seed_{seed}"
        t_seed = time.perf_counter()
        pre = sca2lstm.main(_pretrain_argv(args, seed, seed_dir))
        pretrain_s = time.perf_counter() - t_seed
        for basin in test_basins:
            t_basin = time.perf_counter()
            res = fine_train.main(_fine_tune_argv(args, seed, basin, pre["checkpoint"], seed_dir))
            test = res["summary"].get("test", {})
            name = res["metrics"]["gauge_name"].iloc[0]
            records.append(
                {
                    "seed": int(seed),
                    "basin": basin,
                    "gauge_name": name,
                    "zero_shot_nse": test.get("zero_shot_nse", math.nan),
                    "fine_tuned_nse": test.get("fine_tuned_nse", math.nan),
                    "delta_nse": test.get("delta_nse", math.nan),
                    "best_epoch": res["best_epoch"],
                    "epochs_run": len(res["history"]),
                    "pretrain_seconds": pretrain_s,
                    "fine_tune_seconds": time.perf_counter() - t_basin,
                    "run_dir": str(res["run_dir"]),
                }
            )
    rows = pd.DataFrame(records)
    per_basin, report = summarise(rows)
    wall = time.perf_counter() - t0
    report.update(
        {
            "mode": config["MODE"],
            "recipe": args.config,
            "seeds": [int(s) for s in args.seeds],
            "test_basins": list(test_basins),
            "synthetic_data": bool(args.demo),
            "wall_seconds": wall,
            "work_dir": str(work),
            "command": shlex.join(
                ["python", "benchmarks/fine_tune_quality.py", *(argv or sys.argv[1:])]
            ),
        }
    )
    if config["MODE"] != "simulate":
        report["note"] = "the issue's targets are stated for simulate mode"
    write_csv(output, rows)
    write_csv(output.with_name(f"{output.stem}_summary.csv"), per_basin)
    write_json(output.with_suffix(".json"), report)
    for _, row in per_basin.iterrows():
        log.info(
            "%s %-32s NSE zero-shot %.3f -> fine-tuned %.3f (%+.3f)",
            row["basin"],
            str(row["gauge_name"])[:32],
            row["zero_shot_nse"],
            row["fine_tuned_nse"],
            row["delta_nse"],
        )
    log.info(
        "median test NSE (mean of %d seed(s)): zero-shot %.3f -> fine-tuned %.3f (%+.3f); "
        "worst basin change %+.3f; %.0f s",
        len(args.seeds),
        report["median_zero_shot_nse"],
        report["median_fine_tuned_nse"],
        report["median_gain"],
        report["worst_basin_change"],
        wall,
    )
    for target, met in report["targets"].items():
        log.info("target %-40s %s", target, "met" if met else "NOT met")
    if args.demo:
        log.warning("SYNTHETIC demo data: these numbers prove the script runs, nothing more")
    log.info("wrote %s, its _summary.csv and .json", output)
    return {"rows": rows, "per_basin": per_basin, "report": report}


if __name__ == "__main__":
    run_cli(main)
