"""Quality protocol of SCA2LSTM pretraining on the real CAMELS-GB sample (issue: SCA2LSTM).

Three scenarios, each run for several seeds; per-basin test-period NSE averaged over seeds:

- ``all12``: simulate mode, all 12 basins trained, scored on the test period (median ≥ 0.88);
- ``zeroshot``: simulate mode, the 5 training basins → the 7 unseen test basins (median ≥ 0.65);
- ``forecast``: forecast mode (SEQ_LEN 3, PRED_LEN 1): NSE above persistence in every test basin.

Usage::

    python benchmarks/pretrain_quality.py --scenario forecast --seeds 1 2 3
    python benchmarks/pretrain_quality.py --scenario all12 --seq_len 365 --predict_last_n 100 \\
        --epochs 30 --samples_per_epoch 8192 --batch_size 256 --device cuda
    python benchmarks/pretrain_quality.py --scenario zeroshot --seq_len 120 --predict_last_n 60 \\
        --epochs 15 --samples_per_epoch 4096 --batch_size 128      # reduced CPU protocol

Writes a per-basin CSV (one column per seed, the mean, and persistence NSE in forecast mode) and
prints the table, the commands it ran, the device and the wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sca2lstm  # noqa: E402

SAMPLE = "10002 10003 22001 22006 32006 39025 42003 45003 51001 54017 75003 79005".split()
TRAIN5 = "32006 42003 51001 75003 79005".split()
TEST7 = "10002 10003 22001 22006 39025 45003 54017".split()
# 10003 has no observed flow in the validation period (1975-1980), so it cannot validate.
VAL11 = [b for b in SAMPLE if b != "10003"]
TARGETS = {"all12": ("median NSE", 0.88), "zeroshot": ("median NSE", 0.65)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=("all12", "zeroshot", "forecast"), required=True)
    p.add_argument("--data_dir", default=os.environ.get("CAMELS_GB_DIR", "../shared/camels_gb"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seq_len", type=int, default=365, help="simulate scenarios")
    p.add_argument("--predict_last_n", type=int, default=100, help="simulate scenarios")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--num_layers", type=int, default=1)
    p.add_argument("--embedding_dim", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--samples_per_epoch", type=int, default=0)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other run.config key for sca2lstm.py, e.g. --set STATIC_CLAMP=null",
    )
    p.add_argument("--output", default="benchmarks/results/pretrain_quality.csv")
    return p


def common_args(a: argparse.Namespace) -> list[str]:
    """The hyperparameter arguments every scenario shares (also used by forecast_quality.py)."""
    return [
        "--data_dir", a.data_dir, "--epochs", str(a.epochs), "--batch_size", str(a.batch_size),
        "--learning_rate", str(a.learning_rate), "--device", a.device,
        "--accumulation_steps", "1",
        "--set", f"LSTM_HIDDEN_DIM={a.hidden}", "--set", f"NUM_LAYERS={a.num_layers}",
        "--set", f"EMBEDDING_DIM={a.embedding_dim}", "--set", f"DROPOUT={a.dropout}",
        "--set", f"SAMPLES_PER_EPOCH={a.samples_per_epoch}", "--set", f"PATIENCE={a.patience}",
        "--set", "WARMUP_STEPS=50", *[arg for kv in a.set for arg in ("--set", kv)],
    ]  # fmt: skip


def scenario_args(a: argparse.Namespace) -> list[str]:
    common = common_args(a)
    if a.scenario == "forecast":
        # Today's forecast windows end on day t: no future inputs.
        return [*common, "--set", "FUTURE_INPUTS=[]",
                "--mode", "forecast", "--seq_len", "3", "--pred_len", "1"]  # fmt: skip
    sim = [*common, "--mode", "simulate", "--seq_len", str(a.seq_len),
           "--set", f"PREDICT_LAST_N={a.predict_last_n}"]  # fmt: skip
    if a.scenario == "all12":
        return [*sim, "--train_basins", ",".join(SAMPLE), "--val_basins", ",".join(VAL11),
                "--test_basins", ",".join(SAMPLE)]  # fmt: skip
    return [*sim, "--train_basins", ",".join(TRAIN5), "--val_basins", ",".join(TRAIN5),
            "--test_basins", ",".join(TEST7)]  # fmt: skip


def main(argv=None) -> pd.DataFrame:
    a = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    columns, persistence, commands = {}, None, []
    with tempfile.TemporaryDirectory() as work:
        for seed in a.seeds:
            args = [*scenario_args(a), "--seed", str(seed), "--output_dir", f"{work}/out",
                    "--set", f"INPUT_DIR={work}/input"]  # fmt: skip
            commands.append("python sca2lstm.py " + " ".join(args))
            result = sca2lstm.main(args)
            m = result["metrics"].set_index("basin")
            if a.scenario == "zeroshot":
                m = m[m.index.isin(TEST7)]
            columns[f"nse_seed{seed}"] = m["nse"]
            if "persistence_nse" in m:
                persistence = m["persistence_nse"]
            device = result.get("device", a.device)
    table = pd.DataFrame(columns)
    table["nse_mean"] = table.mean(axis=1)
    if persistence is not None:
        table["persistence_nse"] = persistence
        table["beats_persistence"] = table["nse_mean"] > table["persistence_nse"]
    table.index.name = "basin"
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, float_format="%.4f")
    wall = time.perf_counter() - t0
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print(
        f"\nscenario {a.scenario}; seeds {a.seeds}; device {device}; wall time {wall / 60:.1f} min"
    )
    print(f"median of seed-mean NSE: {table['nse_mean'].median():.3f}")
    if a.scenario in TARGETS:
        name, target = TARGETS[a.scenario]
        ok = table["nse_mean"].median() >= target
        print(f"target {name} >= {target}: {'met' if ok else 'NOT met'}")
    else:
        print(f"beats persistence in every basin: {bool(table['beats_persistence'].all())}")
    print("commands:\n  " + "\n  ".join(commands))
    print(f"table written to {out}")
    return table


if __name__ == "__main__":
    main()
