"""Quality of the Optuna search (issue 14) against the hand-picked settings, on the real sample.

The all-12 simulate protocol of ``benchmarks/README.md`` (all 12 basins trained, 11 validate,
test period 1998-2008 scored for all 12), reduced as the CPU needs:

- ``hand_picked``: the recipe ``configs/simulate_lees2021.yaml`` with the model settings it had
  before this search chose its own (HAND_PICKED below: hidden 64, 1 layer, embedding 32, dropout
  0.2, batch 64, LR 1e-3, weight decay 1e-4; EMA 0.99), trained for ``--epochs`` epochs with
  early stopping;
- ``search``: ``--n_trials`` (at least 20) TPE trials over HYPEROPT_SPACE below, each for up to
  ``--epochs`` epochs, median-pruned on the validation NSE; then the best settings train the
  final model for the same ``--epochs``, as a normal pretraining run.

Both final models therefore have the same budget of epochs. Reported: the best trial's validation
median NSE, each final model's test median NSE against the measured 0.883 of the hand-picked
settings at the full protocol (365-day windows, 40 epochs; the search's settings gave 0.894),
and the epochs the search trained and the epochs pruning saved.

Usage::

    python benchmarks/hyperopt_quality.py --data_dir ../shared/camels_gb --n_trials 20 \\
        --epochs 20 --seq_len 180 --predict_last_n 90 --samples_per_epoch 2048 --device cpu
    python benchmarks/hyperopt_quality.py --dry_run     # a seconds-long smoke run (the tests)

Writes ``benchmarks/results/hyperopt_quality.csv`` (one row per arm, per-basin test NSE) and the
study folder under ``--work_dir`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sca2lstm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The all-12 protocol: simulate mode, all 12 basins trained and tested, 11 validate.
RECIPE = ROOT / "configs" / "simulate_lees2021.yaml"
# The recipe's model settings before the search chose them (its measured 0.883 in full).
HAND_PICKED = {
    "LSTM_HIDDEN_DIM": 64, "EMBEDDING_DIM": 32, "DROPOUT": 0.2, "BATCH_SIZE": 64,
    "BATCH_SIZE_GPU": 64, "LR": 1.0e-3, "LR_GPU": 1.0e-3, "WEIGHT_DECAY": 1.0e-4,
}  # fmt: skip
REFERENCE = 0.883  # their median test NSE at the full protocol (365-day windows, 40 epochs)
SPACE = {
    "LSTM_HIDDEN_DIM": {"choices": [32, 64, 128]},
    "NUM_LAYERS": {"low": 1, "high": 2},
    "EMBEDDING_DIM": {"choices": [16, 32, 64]},
    "DROPOUT": {"low": 0.0, "high": 0.4},
    "LR": {"low": 3.0e-4, "high": 3.0e-3, "log": True},
    "BATCH_SIZE": {"choices": [32, 64, 128]},
    "WEIGHT_DECAY": {"low": 1.0e-6, "high": 1.0e-3, "log": True},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=os.environ.get("CAMELS_GB_DIR", "../shared/camels_gb"))
    p.add_argument("--n_trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=20, help="per trial and per final model")
    p.add_argument("--seq_len", type=int, default=180)
    p.add_argument("--predict_last_n", type=int, default=90)
    p.add_argument("--samples_per_epoch", type=int, default=2048)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work_dir", help="keep the runs and the study here (default: a temp folder)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="more run.config keys"
    )
    p.add_argument("--dry_run", action="store_true", help="2 basins, 2 trials, 1 short epoch")
    p.add_argument("--output", default="benchmarks/results/hyperopt_quality.csv")
    return p


def protocol_args(a: argparse.Namespace, work: Path) -> list[str]:
    """The recipe of the all-12 protocol with the hand-picked settings, reduced by the flags."""
    args = [
        "--config", str(RECIPE), "--data_dir", a.data_dir, "--device", a.device,
        "--seed", str(a.seed), "--seq_len", str(a.seq_len),
        "--set", f"PREDICT_LAST_N={a.predict_last_n}", "--epochs", str(a.epochs),
        "--set", f"SAMPLES_PER_EPOCH={a.samples_per_epoch}", "--set", f"PATIENCE={a.patience}",
        "--output_dir", str(work / "out"), "--set", f"INPUT_DIR={work / 'input'}",
        *[arg for k, v in HAND_PICKED.items() for arg in ("--set", f"{k}={v}")],
        *[arg for kv in a.set for arg in ("--set", kv)],
    ]  # fmt: skip
    if a.dry_run:
        two = "32006,42003"
        args += ["--dry-run", "--set", "VAL_START=1979-10-01", "--train_basins", two,
                 "--val_basins", "32006", "--test_basins", two]  # fmt: skip
    return args


def run_arms(a: argparse.Namespace, work: Path) -> tuple[list[dict], list[str]]:
    base = protocol_args(a, work)
    search = [
        *base, "--set", f"HYPEROPT_SPACE={json.dumps(SPACE)}", "--enable_hyperopt",
        "--n_trials", str(a.n_trials), "--study_name", "hyperopt_quality",
    ]  # fmt: skip
    rows, commands = [], []
    for arm, args in (("hand_picked", base), ("search", search)):
        commands.append("python sca2lstm.py " + " ".join(args))
        out = sca2lstm.main(args)
        metrics = out["metrics"].set_index("basin")["nse"]
        row = {
            "arm": arm,
            "best_val_nse": max(h["val_nse"] for h in out["history"]),
            "test_median_nse": float(metrics.median()),
            "reference_test_median_nse": REFERENCE,
            "final_epochs": len(out["history"]),
        }
        if arm == "search":
            doc = json.loads(
                (work / "out/hyperopt/hyperopt_quality/hyperopt_results.json").read_text()
            )
            row.update(
                best_val_nse=doc["best_score"],
                n_trials=doc["n_trials"],
                n_pruned=doc["n_pruned"],
                search_epochs=doc["epochs_run"],
                epochs_saved_by_pruning=doc["epochs_saved_by_pruning"],
                best_params=json.dumps(doc["best_params"]),
            )
        row.update({f"nse_{b}": v for b, v in metrics.items()})
        rows.append(row)
    return rows, commands


def main(argv=None) -> pd.DataFrame:
    a = build_parser().parse_args(argv)
    if not a.dry_run and a.n_trials < 20:
        raise SystemExit("the protocol asks for at least 20 trials (--n_trials 20)")
    if a.dry_run:
        a.n_trials, a.epochs, a.seq_len, a.predict_last_n = 2, 1, 30, 10
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows, commands = run_arms(a, work)
    table = pd.DataFrame(rows)
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.4f")
    search = table.set_index("arm").loc["search"]
    hand = table.set_index("arm").loc["hand_picked"]
    print(table.drop(columns=[c for c in table if c.startswith("nse_")]).to_string(index=False))
    print(
        f"\nbest trial validation median NSE {search['best_val_nse']:.3f} "
        f"(hand-picked run: {hand['best_val_nse']:.3f})"
    )
    print(
        f"final test median NSE: search {search['test_median_nse']:.3f}, hand-picked "
        f"{hand['test_median_nse']:.3f}, reference {REFERENCE}"
    )
    print(
        f"search: {int(search['n_trials'])} trials, {int(search['n_pruned'])} pruned, "
        f"{int(search['search_epochs'])} epochs trained, "
        f"{int(search['epochs_saved_by_pruning'])} epochs saved by pruning"
    )
    print(f"device {a.device}; wall time {(time.perf_counter() - t0) / 60:.1f} min")
    print("commands:\n  " + "\n  ".join(commands))
    print(f"table written to {out}")
    return table


if __name__ == "__main__":
    main()
