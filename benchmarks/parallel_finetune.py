"""Fine-tuning several basins side by side (``&`` in a bash loop) against one after another.

The readme's loop over basins may start each ``fine_train.py`` in the background. On a small
machine that only pays when each process keeps to its share of the cores: PyTorch's default
intra-op threads (one per core in every process) oversubscribe the CPU. This benchmark runs the
same N fine-tunes twice for each thread setting, as separate processes, exactly as the shell
would: one after another, then all at once, and reports both wall times and their ratio.

Usage::

    python benchmarks/parallel_finetune.py --data_dir /data/CAMELS_GB
    python benchmarks/parallel_finetune.py --data_dir /data/CAMELS_GB --threads 1,0 --epochs 3
    python benchmarks/parallel_finetune.py --demo --epochs 1        # a quick check

``--threads 0`` is PyTorch's default (all cores in every process). A pretrained checkpoint is
made first with a short pretraining run, unless ``--pretrained_model`` names one. Writes
``--output`` (one row per thread setting and schedule).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from utils import UserError, csv_list, log, positive_int, run_cli, setup_logging, write_csv  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", help="CAMELS-GB folder (default: $CAMELS_GB_DIR)")
    p.add_argument("--demo", action="store_true", help="use the synthetic demo data")
    p.add_argument("--basins", type=csv_list, default=["22001", "22006", "32006", "42003"])
    p.add_argument("--threads", type=csv_list, default=["1", "0"], help="NUM_THREADS values")
    p.add_argument("--epochs", type=positive_int, default=3, help="fine-tuning epochs per basin")
    p.add_argument("--pretrained_model", help="checkpoint to fine-tune (default: pretrain one)")
    p.add_argument("--work_dir", default=str(ROOT / "model_output" / "bench_parallel"))
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/parallel_finetune.csv"))
    return p


def _data_args(args: argparse.Namespace, work: Path) -> list[str]:
    data = ["--demo"] if args.demo else ["--data_dir", args.data_dir or os.environ["CAMELS_GB_DIR"]]
    return [*data, "--set", f"INPUT_DIR={work / 'model_input_data'}"]


def pretrained_model(args: argparse.Namespace, work: Path) -> Path:
    """The checkpoint to fine-tune: the one given, or a short pretraining run's best model."""
    if args.pretrained_model:
        return Path(args.pretrained_model)
    cmd = [
        sys.executable, str(ROOT / "sca2lstm.py"), *_data_args(args, work), "--epochs", "1",
        "--set", "SAMPLES_PER_EPOCH=4096", "--output_dir", str(work / "pretrain"),
        "--threads", "0",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return max((work / "pretrain" / "pretrain").glob("*/best_model.pth"), key=os.path.getmtime)


def run_schedule(args, work: Path, ckpt: Path, threads: str, parallel: bool) -> float:
    """Wall seconds of fine-tuning every basin, all at once or one after another."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    commands = [
        [
            sys.executable, str(ROOT / "fine_train.py"), *_data_args(args, work),
            "--target_basin", basin, "--pretrained_model", str(ckpt), "--epochs", str(args.epochs),
            "--threads", threads, "--output_dir", str(work / f"tune_{threads}"),
        ]
        for basin in args.basins
    ]  # fmt: skip
    start = time.perf_counter()
    if parallel:
        procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL) for c in commands]
        codes = [p.wait() for p in procs]
    else:
        codes = [subprocess.call(c, env=env, stdout=subprocess.DEVNULL) for c in commands]
    wall = time.perf_counter() - start
    if any(codes):
        raise UserError(f"a fine-tuning run failed (exit codes {codes}); run it alone to see why")
    return wall


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    args = build_parser().parse_args(argv)
    setup_logging()
    if not args.demo and not (args.data_dir or os.environ.get("CAMELS_GB_DIR")):
        raise UserError("give --data_dir (or set CAMELS_GB_DIR), or --demo")
    work = Path(args.work_dir)
    ckpt = pretrained_model(args, work)
    rows = []
    for threads in args.threads:
        seq = run_schedule(args, work, ckpt, threads, parallel=False)
        par = run_schedule(args, work, ckpt, threads, parallel=True)
        rows.append(
            {
                "threads_per_process": threads,
                "basins": len(args.basins),
                "epochs": args.epochs,
                "cores": os.cpu_count(),
                "sequential_s": round(seq, 2),
                "parallel_s": round(par, 2),
                "parallel_over_sequential": round(par / seq, 3),
            }
        )
        log.info(
            "NUM_THREADS=%s: %d fine-tunes one after another %.1f s, side by side %.1f s (%.2fx)",
            threads,
            len(args.basins),
            seq,
            par,
            par / seq,
        )
    table = pd.DataFrame(rows)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_csv(Path(args.output), table)
    return table


if __name__ == "__main__":
    run_cli(main)
