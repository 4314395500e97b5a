"""Scale test: 671 synthetic catchments through data_process.py and one epoch of sca2lstm.py.

Three stages, each in a subprocess of its own so that each stage's peak memory is its own:

1. ``generate``: ``data_process.py --make_demo`` writes a synthetic dataset in the official
   CAMELS-GB layout (``timeseries/``, ``attributes/``) for N generated gauge ids (5-6 digits,
   ``10001 + 150·i``), 1970-10-01..2015-09-30. Not a target; reused when ``--dataset_dir``
   already holds those ids.
2. ``preprocess``: ``data_process.py --basins all --workers W --overwrite`` (every CSV read,
   checked and written again).
3. ``train``: ``sca2lstm.py`` for one epoch with all N basins as training basins (forecast mode
   unless ``--mode simulate``), two of them for validation and test.

Per stage: wall time; peak resident memory as ``ru_maxrss`` of the stage (``os.wait4``: the
largest single process of the stage, its worker processes included); the peak of the whole
process tree's summed resident memory, sampled from ``/proc`` every 0.2 s; for ``train`` also
the training samples/s and epoch seconds from the run's ``history.csv``. Targets on the two-core
CPU: preprocessing under 2 minutes, peak resident memory under 4 GB.

Usage::

    python benchmarks/scale.py                                     # 671 basins, full epoch
    python benchmarks/scale.py --workers 2 --samples_per_epoch 262144 --dataset_dir /tmp/gb671
    python benchmarks/scale.py --mode simulate --seq_len 365 --samples_per_epoch 8192
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"preprocess": ("wall_s", 120.0)}
RSS_TARGET_MIB = 4096.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n_basins", type=int, default=671, help="catchments to generate")
    p.add_argument("--workers", type=int, default=2, help="data_process.py --workers")
    p.add_argument("--mode", choices=("forecast", "simulate"), default="forecast")
    p.add_argument("--seq_len", type=int, help="SEQ_LEN (default: run.config)")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument(
        "--samples_per_epoch",
        type=int,
        default=0,
        help="SAMPLES_PER_EPOCH of the training epoch; 0 = every window of every basin",
    )
    p.add_argument("--model_size", help="MODEL_SIZE preset (default: run.config)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the stages")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="passed to sca2lstm.py"
    )
    p.add_argument(
        "--dataset_dir", help="where the synthetic dataset is written or reused (default: temp)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, runs)")
    p.add_argument("--output", default="benchmarks/results/scale.csv")
    return p


def basin_ids(n: int) -> list[str]:
    """N distinct 5-6 digit gauge ids: 10001, 10151, 10301, ..."""
    return [str(10001 + 150 * i) for i in range(n)]


def _tree_rss_bytes(root: int) -> int:
    """Summed resident memory of ``root`` and its descendants (Linux /proc; 0 elsewhere)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return 0
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    page = os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            total += int((proc / str(pid) / "statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


def _shown(cmd: list[str]) -> str:
    """A command as a user would type it: ``python`` and long id lists shortened."""
    words = ["python", *cmd[1:]]
    return " ".join(f"<{w.count(',') + 1} ids>" if len(w) > 200 else w for w in words)


def run_stage(name: str, cmd: list[str], log_path: Path, env: dict) -> dict:
    """Run one stage; wall time, ru_maxrss and the sampled peak of the process tree."""
    print(f"[{name}] {_shown(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        tree_peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            tree_peak = max(tree_peak, _tree_rss_bytes(proc.pid))
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"stage {name} failed (exit {proc.returncode}); log tail:\n{tail}")
    return {
        "stage": name,
        "wall_s": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        "tree_peak_rss_mib": tree_peak / 2**20,
    }


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Run the three stages, print the table with the device and targets, write the CSV."""
    a = build_parser().parse_args(argv)
    ids = basin_ids(a.n_basins)
    env = dict(os.environ)
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    cpus = os.cpu_count() or 1
    device = f"{a.device} ({cpus} cores, {platform.machine()}" + (
        f", {a.threads} thread(s) per stage)" if a.threads else ")"
    )
    work = Path(tempfile.mkdtemp(prefix="scale_"))
    data_dir = Path(a.dataset_dir) if a.dataset_dir else work / "CAMELS_GB_synthetic"
    rows, commands = [], []
    python = sys.executable
    try:
        present = {p.name.split("_")[4] for p in (data_dir / "timeseries").glob("CAMELS_GB_*.csv")}
        if present != set(ids):
            cmd = [python, "data_process.py", "--make_demo", "--demo_dir", str(data_dir),
                   "--basins", ",".join(ids)]  # fmt: skip
            rows.append(run_stage("generate", cmd, work / "generate.log", env))
            commands.append(_shown(cmd))
        else:
            print(f"[generate] reusing the {len(ids)} basins in {data_dir}")
        input_dir = work / "model_input_data"
        cmd = [python, "data_process.py", "--data_dir", str(data_dir), "--basins", "all",
               "--workers", str(a.workers), "--overwrite",
               "--set", f"INPUT_DIR={input_dir}"]  # fmt: skip
        rows.append(run_stage("preprocess", cmd, work / "preprocess.log", env))
        commands.append(_shown(cmd))

        config = {
            "MODE": a.mode,
            "TRAIN_BASINS": ids,
            "VAL_BASINS": ids[:2],
            "TEST_BASINS": ids[:2],
            "SAMPLES_PER_EPOCH": a.samples_per_epoch,
            "INPUT_DIR": str(input_dir),
        }
        if a.seq_len:
            config["SEQ_LEN"] = a.seq_len
        if a.model_size:
            config["MODEL_SIZE"] = a.model_size
        config_path = work / "scale.yaml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        cmd = [python, "sca2lstm.py", "--data_dir", str(data_dir), "--config", str(config_path),
               "--epochs", "1", "--batch_size", str(a.batch_size), "--device", a.device,
               "--output_dir", str(work / "model_output")]  # fmt: skip
        for item in a.set:
            cmd += ["--set", item]
        row = run_stage("train", cmd, work / "train.log", env)
        commands.append(_shown(cmd))
        history = next((work / "model_output" / "pretrain").glob("*/history.csv"))
        epoch = pd.read_csv(history).iloc[-1]
        row["samples_per_s"] = float(epoch["samples_per_s"])
        row["epoch_s"] = float(epoch["seconds"])
        text = (work / "train.log").read_text(encoding="utf-8", errors="replace")
        found = re.search(r"training windows: (\d+) from (\d+) basins", text)
        row["training_windows"] = int(found.group(1)) if found else None
        row["samples_trained"] = round(row["samples_per_s"] * row["epoch_s"])
        rows.append(row)
    finally:
        if a.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    table = pd.DataFrame(rows)
    table.insert(1, "basins", a.n_basins)
    table["device"] = device
    table["rss_target_met"] = table["peak_rss_mib"] < RSS_TARGET_MIB
    table["wall_target_met"] = [
        (r["wall_s"] < TARGETS[r["stage"]][1]) if r["stage"] in TARGETS else None
        for _, r in table.iterrows()
    ]
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.4g")
    print(table.drop(columns=["device"]).to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"\ndevice: {device}; targets: preprocess < 120 s, peak RSS < {RSS_TARGET_MIB:.0f} MiB")
    if "training_windows" in table and table["training_windows"].notna().any():
        train = table[table["stage"] == "train"].iloc[0]
        full = train["training_windows"] / train["samples_per_s"]
        print(f"a full epoch of {int(train['training_windows']):,} windows: about {full:.0f} s")
    print("commands:\n  " + "\n  ".join(commands))
    print(f"table written to {out}")
    return table


if __name__ == "__main__":
    main()
