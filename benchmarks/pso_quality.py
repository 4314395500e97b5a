"""Quality of PSO-LSTM: test-period NSE per basin next to persistence and the untuned default LSTM.

For each basin, ``pso_lstm.py`` runs twice with the same data, periods and final-training budget:
once with the particle swarm search, once with ``--no_pso`` (the run.config hyperparameters of the
pso_lstm section, i.e. the untuned default LSTM). Persistence (Q(t+1) = Q(t)) is scored on the same
test days. The search budget used is written next to the scores.

Usage::

    python benchmarks/pso_quality.py --data_dir /data/CAMELS_GB          # the 7 test basins
    python benchmarks/pso_quality.py --data_dir /data/CAMELS_GB --n_particles 8 --iters 5
    python benchmarks/pso_quality.py --demo --basins 22001 --n_particles 2 --iters 1 \\
        --pso_epochs 1 --final_epochs 1 --set TRAIN_START=1985-01-01      # a smoke run

Writes ``pso_quality.csv`` (one row per basin) into a new folder ``<output dir>/<timestamp>/``
(output dir: ``--output_dir``, else ``OUTPUT_DIR/benchmarks/pso_quality``), next to the run folders
of both variants (``pso/`` and ``default/``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/pso_quality.py`
    sys.path.insert(0, str(ROOT))

from utils import (  # noqa: E402
    add_common_args,
    csv_list,
    load_config,
    log,
    make_run_dir,
    positive_int,
    run_cli,
    setup_logging,
    write_csv,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Test NSE of PSO-LSTM, the untuned default LSTM and persistence per basin."
    )
    parser.add_argument("--basins", type=csv_list, help="gauge ids (default: TEST_BASINS)")
    parser.add_argument("--n_particles", type=positive_int, help="PSO_N_PARTICLES")
    parser.add_argument("--iters", type=positive_int, help="PSO_ITERS")
    parser.add_argument("--pso_epochs", type=positive_int, help="PSO_EPOCHS")
    parser.add_argument("--final_epochs", type=positive_int, help="N_EPOCHS of both final models")
    parser.add_argument("--inputs", choices=("q", "forcings+q", "forcings"), help="PSO_INPUTS")
    parser.add_argument("--seed", type=int, help="SEED")
    parser.add_argument("--no_cuda", action="store_true", help="run on the CPU")
    parser.add_argument("--demo", action="store_true", help="use the synthetic demo dataset")
    add_common_args(parser)
    return parser


def _passthrough(args: argparse.Namespace) -> list[str]:
    """The pso_lstm.py arguments both variants share."""
    out: list[str] = []
    for flag in ("final_epochs", "inputs", "seed", "config", "data_dir"):
        value = getattr(args, flag)
        if value is not None:
            out += [f"--{flag}", str(value)]
    for item in args.set:
        out += ["--set", item]
    out += ["--device", args.device]
    if args.no_cuda:
        out.append("--no_cuda")
    if args.demo:
        out.append("--demo")
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    """Run both variants on every basin; return the table and the CSV path."""
    import pandas as pd

    import pso_lstm

    args = build_parser().parse_args(argv)
    config = load_config(args.config, stage="pso_lstm", overrides=args.set)
    basins = args.basins or config["TEST_BASINS"]
    out = Path(args.output_dir) if args.output_dir else None
    out = out or ROOT / config["OUTPUT_DIR"] / "benchmarks" / "pso_quality"
    setup_logging()
    common = ["--basin_id", ",".join(basins), *_passthrough(args)]
    budget = []
    for flag in ("n_particles", "iters", "pso_epochs"):
        value = getattr(args, flag)
        if value is not None:
            budget += [f"--{flag}", str(value)]
    # Check the arguments (and the basins) before the first run folder is made.
    pso_lstm.resolve_config(pso_lstm.build_parser().parse_args([*common, *budget]))
    run_dir = make_run_dir(out)
    try:
        t0 = time.perf_counter()
        tuned = pso_lstm.main([*common, *budget, "--output_dir", str(run_dir / "pso")])
        tuned_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        default = pso_lstm.main([*common, "--no_pso", "--output_dir", str(run_dir / "default")])
        default_s = time.perf_counter() - t0
    except BaseException:
        if not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise

    rows = []
    for basin in basins:
        pso_run, default_run = tuned["basins"][basin], default["basins"][basin]
        pso_m = pso_run["metrics"].set_index("period")
        default_m = default_run["metrics"].set_index("period")
        search = pso_run["search"]
        row = {
            "basin": basin,
            "gauge_name": pso_m.loc["test", "gauge_name"],
            "data": "SYNTHETIC" if "data" in pso_m.columns else "CAMELS-GB",
            "test_nse_pso_lstm": pso_m.loc["test", "nse"],
            "test_nse_default_lstm": default_m.loc["test", "nse"],
            "test_nse_persistence": pso_m.loc["test", "persistence_nse"],
            "pso_beats_persistence": bool(
                pso_m.loc["test", "nse"] > pso_m.loc["test", "persistence_nse"]
            ),
            "pso_beats_default": bool(pso_m.loc["test", "nse"] > default_m.loc["test", "nse"]),
            "val_nse_pso_lstm": pso_m.loc["validation", "nse"],
            "val_nse_default_lstm": default_m.loc["validation", "nse"],
            "test_kge_pso_lstm": pso_m.loc["test", "kge"],
            "test_kge_default_lstm": default_m.loc["test", "kge"],
            "searched": " ".join(pso_run["searched"]) or "none",
            "n_particles": search["n_particles"],
            "iters": search["iters"],
            "pso_epochs": search["pso_epochs"],
            "evaluations": search["evaluations"],
            "settings_trained": search["trained_settings"],
            "search_seconds": search["seconds"],
            **{f"best_{k}": v for k, v in pso_run["best_params"].items()},
            "default_params": " ".join(f"{k}={v:g}" for k, v in default_run["best_params"].items()),
            "validation_period": "..".join(pso_run["periods"]["validation"]),
            "test_period": "..".join(pso_run["periods"]["test"]),
        }
        rows.append(row)
    table = pd.DataFrame(rows)
    table["pso_lstm_call_seconds"] = tuned_s
    table["default_call_seconds"] = default_s
    csv = run_dir / "pso_quality.csv"
    write_csv(csv, table)
    for row in rows:
        log.info(
            "%s %-30s test NSE: PSO-LSTM %.3f  default LSTM %.3f  persistence %.3f  "
            "(%d evaluations)",
            row["basin"],
            str(row["gauge_name"])[:30],
            row["test_nse_pso_lstm"],
            row["test_nse_default_lstm"],
            row["test_nse_persistence"],
            row["evaluations"],
        )
    log.info(
        "PSO-LSTM beats persistence in %d of %d basins and the default LSTM in %d; table %s",
        int(table["pso_beats_persistence"].sum()),
        len(table),
        int(table["pso_beats_default"].sum()),
        csv,
    )
    return {"table": table, "csv": csv, "run_dir": run_dir}


if __name__ == "__main__":
    run_cli(main)
