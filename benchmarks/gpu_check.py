"""One prepared GPU check: every GPU figure of the toolkit in one short command (issue 16).

Runs five steps in order of value, each in its own process under its own time cap, so that a slow
step cannot eat the rest, within a total deadline (``--deadline``, 480 s):

1. ``environment``: ``utils.py --check_env`` and ``nvidia-smi``;
2. ``cuda_tests``: ``pytest -m cuda`` with its result lines;
3. ``train_throughput``: ``train_throughput.py`` at the Lees shape (B 256, L 365, H 64, 12
   basins) on cuda, with compile and mixed precision both on (and neuralhydrology's CudaLSTM as
   the peer when it is importable), both off, then each alone;
4. ``memory``: ``memory.py --device cuda`` over the presets, precision and checkpointing;
5. ``quality``: the ``all12`` and ``zeroshot`` simulate protocols of ``pretrain_quality.py``, one
   seed, with as many epochs as the time left allows (estimated from step 3's samples/s).

It writes at most 8 files into ``--out`` (default ``$OUT``): ``environment.txt``,
``cuda_tests.txt``, ``train_throughput.csv``, ``memory.csv``, ``quality_all12.csv``,
``quality_zeroshot.csv``, ``summary.json`` (every step's status, time and figures against the
targets of the issue) and ``gpu_check.log`` (every command and its output).

``--dry-run`` rehearses the same steps on a CPU with tiny sizes: the CUDA tests are only
collected and reported as skipped, and no figure it writes is a GPU figure.

Usage (``benchmarks/gpu_check.sh`` installs carried wheels first, then calls this)::

    OUT=/tmp/gpu bash benchmarks/gpu_check.sh
    OUT=/tmp/gpu python benchmarks/gpu_check.py --dry-run --deadline 240
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.pretrain_quality import TARGETS  # noqa: E402

DATA_HINT = "copy the 12-basin sample to .gpu_data/camels_gb or set CAMELS_GB_DIR"
# (USE_COMPILE, MIXED_PRECISION) in order of value: the default, the plain step, each alone.
COMBOS = ((True, True), (False, False), (False, True), (True, False))
RESERVE_S = 15  # kept back from the deadline for writing the summary


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU check and its CPU rehearsal."""

    device: str
    shape: str
    repeats: int
    workers: int
    memory: tuple[str, ...]
    quality: tuple[str, ...]  # changes to the recipes of pretrain_quality.py (none on a GPU)
    quality_batch: int  # the recipes' batch
    samples_per_epoch: int  # the recipes' SAMPLES_PER_EPOCH
    max_epochs: int
    overhead_s: float  # per quality run: process start, data, test prediction, plots
    caps: dict[str, float]


GPU = Sizes(
    device="cuda",
    shape="256,365,64,12,20",
    repeats=3,
    workers=8,
    memory=("--seq_len", "365", "--batch_size", "256"),
    quality=(),
    quality_batch=64,
    samples_per_epoch=4096,
    max_epochs=200,
    overhead_s=45.0,
    caps={
        "environment": 60,
        "cuda_tests": 150,
        "combo_first": 150,
        "combo": 75,
        "memory": 60,
        "later_steps": 240,  # memory, and two quality runs of 90 s
    },
)
DRY = Sizes(
    device="cpu",
    shape="8,10,8,2,2",
    repeats=1,
    workers=0,
    memory=("--seq_len", "12", "--batch_size", "4", "--sizes", "micro"),
    quality=(
        "--seq_len",
        "30",
        "--predict_last_n",
        "10",
        "--batch_size",
        "32",
        "--hidden",
        "8",
        "--embedding_dim",
        "4",
    ),  # fmt: skip
    quality_batch=32,
    samples_per_epoch=64,
    max_epochs=2,
    overhead_s=10.0,
    caps={
        "environment": 60,
        "cuda_tests": 90,
        "combo_first": 90,
        "combo": 60,
        "memory": 60,
        "later_steps": 60,
    },
)


@dataclass
class StepResult:
    """How one step (or one run inside a step) ended."""

    name: str
    status: str  # ok | failed | timed out | skipped
    seconds: float = 0.0
    cap_s: float = 0.0
    note: str = ""
    figures: dict = field(default_factory=dict)


class Check:
    """The run's clock, its log and its results."""

    def __init__(self, out: Path, deadline_s: float, dry_run: bool) -> None:
        self.out, self.dry_run = out, dry_run
        self.t0 = time.monotonic()
        self.deadline_s = deadline_s
        self.log = (out / "gpu_check.log").open("w", encoding="utf-8")
        self.steps: list[StepResult] = []

    def left(self) -> float:
        """Seconds left before the deadline, less the reserve for the summary."""
        return self.deadline_s - RESERVE_S - (time.monotonic() - self.t0)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def run(self, name: str, cmd: list[str], cap_s: float) -> tuple[StepResult, str]:
        """Run ``cmd`` in its own process group under ``min(cap_s, time left)``; log its output."""
        cap = min(cap_s, self.left())
        if cap < 5:
            return StepResult(name, "skipped", note="no time left before the deadline"), ""
        self.say(f"\n=== {name} (cap {cap:.0f} s): {' '.join(cmd)}")
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # output up to a kill is kept
            start_new_session=True,  # a timeout kills its DataLoader and compile workers too
        )
        try:
            output, _ = proc.communicate(timeout=cap)
            status = "ok" if proc.returncode == 0 else "failed"
            note = "" if proc.returncode == 0 else f"exit code {proc.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            status, note = "timed out", f"killed after its cap of {cap:.0f} s"
        seconds = time.monotonic() - t0
        self.log.write(output or "")
        self.say(f"=== {name}: {status} in {seconds:.1f} s {note}".rstrip())
        return StepResult(name, status, round(seconds, 1), round(cap, 1), note), output or ""


# --------------------------------------------------------------------------- steps


def met(check: Check, condition) -> bool | None:
    """Whether a target is met; None in a dry run, whose figures are not GPU figures."""
    return None if check.dry_run else bool(condition)


def step_environment(check: Check, sizes: Sizes) -> StepResult:
    """utils.py --check_env and nvidia-smi, into environment.txt."""
    result, output = check.run(
        "environment", [sys.executable, "utils.py", "--check_env"], sizes.caps["environment"]
    )
    text = output
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        text += "\n$ nvidia-smi\n" + smi.stdout + smi.stderr
    except (OSError, subprocess.SubprocessError) as err:
        text += f"\n$ nvidia-smi\nnot available: {err}\n"
    (check.out / "environment.txt").write_text(text, encoding="utf-8")
    missing = re.search(r"^result: NOT ready, (missing .+)$", output, re.MULTILINE)
    if result.status == "failed" and missing:
        # A package the GPU steps do not need (pyswarms without its wheel) stops no step here.
        result.status, result.note = "ok", f"the toolkit reports {missing.group(1)}"
    for key in ("PyTorch", "CUDA available", "CUDA version", "cuDNN version", "GPU", "GPU driver"):
        found = re.search(rf"^{re.escape(key)}\s{{2,}}(.+)$", output, re.MULTILINE)
        result.figures[key] = found.group(1).strip() if found else None
    return result


def step_cuda_tests(check: Check, sizes: Sizes, cuda: bool) -> StepResult:
    """pytest -m cuda (collected only when there is no CUDA device), into cuda_tests.txt."""
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-rA", "-q", "-p", "no:cacheprovider"]
    cmd += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if "pytest.mark.cuda" in p.read_text(encoding="utf-8"))  # fmt: skip
    if not cuda:
        cmd.append("--collect-only")
    result, output = check.run("cuda_tests", cmd, sizes.caps["cuda_tests"])
    (check.out / "cuda_tests.txt").write_text(output, encoding="utf-8")
    lines = output.strip().splitlines()
    result.figures["result_line"] = lines[-1].strip("= ") if lines else None
    result.figures["passed"] = re.findall(r"^PASSED (\S+)", output, re.MULTILINE)
    result.figures["failed"] = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    result.figures["checkpointing_test_passed"] = met(
        check,
        any(
            "test_gradient_checkpointing_is_identical_on_cuda" in t
            for t in result.figures["passed"]
        ),
    )
    if not cuda and result.status == "ok":
        result.status = "skipped"
        result.note = f"no CUDA device{' (dry run)' if check.dry_run else ''}: tests only collected"
    return result


def _throughput_cmd(sizes: Sizes, data_dir: Path, combo, first: bool, out: Path, cache: Path):
    compile_, mixed = combo
    return [
        sys.executable, "benchmarks/train_throughput.py", "--data_dir", str(data_dir),
        "--shape", sizes.shape, "--device", sizes.device, "--repeats", str(sizes.repeats),
        "--workers", str(sizes.workers), "--peer", "auto" if first else "off",
        "--set", f"USE_COMPILE={str(compile_).lower()}",
        "--set", f"MIXED_PRECISION={str(mixed).lower()}",
        "--input_dir", str(cache), "--output", str(out),
    ]  # fmt: skip


def _throughput_figures(check: Check, table: pd.DataFrame) -> list[dict]:
    rows = []
    for _, r in table.iterrows():
        peer = r["peer_samples_s"]
        rows.append(
            {
                "compile": bool(r["compile"]),
                "mixed_precision": bool(r["mixed_precision"]),
                "end_to_end_samples_s": round(float(r["end_to_end_samples_s"]), 1),
                "model_step_samples_s": round(float(r["model_step_samples_s"]), 1),
                "end_to_end_over_model_step": round(float(r["end_to_end_over_model_step"]), 3),
                "target_end_to_end_over_step_0.8_met": met(
                    check, r["end_to_end_over_model_step"] >= 0.8
                ),
                "peer": r["peer"],
                "ours_over_peer": None if pd.isna(peer) else round(float(r["ours_over_peer"]), 2),
                "target_ours_over_peer_3_met": (
                    None if pd.isna(peer) else met(check, r["ours_over_peer"] >= 3)
                ),
            }
        )
    return rows


def step_throughput(check: Check, sizes: Sizes, data_dir: Path | None, work: Path) -> StepResult:
    """Every compile × mixed-precision combination, each under its own cap; one CSV."""
    if data_dir is None:
        return StepResult("train_throughput", "skipped", note=f"no data sample: {DATA_HINT}")
    frames, runs = [], []
    for i, combo in enumerate(COMBOS):
        out = work / f"throughput_{i}.csv"
        cap = sizes.caps["combo_first" if i == 0 else "combo"]
        name = f"train_throughput compile={combo[0]} mixed={combo[1]}"
        if i >= 2 and check.left() - cap < sizes.caps["later_steps"]:
            # Each option alone is worth less than the memory and quality steps that follow.
            runs.append(StepResult(name, "skipped", note="time kept for the later steps"))
            continue
        cmd = _throughput_cmd(sizes, data_dir, combo, i == 0, out, work / "input")
        run, _ = check.run(name, cmd, cap)
        runs.append(run)
        if run.status == "ok":
            frames.append(pd.read_csv(out).assign(compile=combo[0], mixed_precision=combo[1]))
    ran = [r for r in runs if r.status != "skipped"]
    result = StepResult("train_throughput", "ok" if frames else "failed")
    result.seconds = round(sum(r.seconds for r in runs), 1)
    result.cap_s = round(sum(r.cap_s for r in runs), 1)
    result.note = "; ".join(f"{r.name}: {r.status} {r.note}".strip() for r in runs)
    if frames:
        table = pd.concat(frames, ignore_index=True)
        table.to_csv(check.out / "train_throughput.csv", index=False, float_format="%.4g")
        result.figures = {
            "runs": _throughput_figures(check, table),
            "peer": str(table["peer"].iloc[0]),
        }
        if len(frames) < len(ran):
            result.status = "partly ok"
    return result


def step_memory(check: Check, sizes: Sizes) -> StepResult:
    """memory.py over presets × precision × checkpointing, into memory.csv."""
    out = check.out / "memory.csv"
    cmd = [sys.executable, "benchmarks/memory.py", "--device", sizes.device, *sizes.memory]
    result, _ = check.run("memory", [*cmd, "--output", str(out)], sizes.caps["memory"])
    if result.status == "ok":
        table = pd.read_csv(out)
        ratio = table["measured_over_estimate"]
        result.figures = {
            "measure": str(table["measure"].iloc[0]),
            "rows": len(table),
            "measured_over_estimate_min": round(float(ratio.min()), 3),
            "measured_over_estimate_max": round(float(ratio.max()), 3),
            "target_within_25pct_met": met(check, ((ratio - 1).abs() <= 0.25).all()),
        }
    return result


def _samples_per_s(throughput: StepResult) -> float | None:
    """End-to-end samples/s of the combination the quality runs use (no compile, mixed on)."""
    runs = {(r["compile"], r["mixed_precision"]): r for r in throughput.figures.get("runs", [])}
    for combo in ((False, True), (False, False), (True, True), (True, False)):
        if combo in runs:
            return runs[combo]["end_to_end_samples_s"]
    return None


def quality_epochs(budget_s: float, sizes: Sizes, rate: float) -> int:
    """Epochs that fit in ``budget_s`` after the fixed overhead of a run, at ``rate`` training
    samples/s: an epoch is counted as twice its training time plus 0.5 s (validation, the
    checkpoint, and a margin for the estimate). At least 1, at most ``sizes.max_epochs``."""
    epoch_s = 2.0 * sizes.samples_per_epoch / rate + 0.5
    fits = math.floor((budget_s - sizes.overhead_s) / epoch_s)
    return int(min(sizes.max_epochs, max(1, fits)))


def step_quality(
    check: Check, sizes: Sizes, data_dir: Path | None, throughput: StepResult
) -> list[StepResult]:
    """all12 then zeroshot, one seed each, sharing the time left; quality_<scenario>.csv."""
    scenarios = ("all12", "zeroshot")
    if data_dir is None:
        return [
            StepResult(f"quality {s}", "skipped", note=f"no data sample: {DATA_HINT}")
            for s in scenarios
        ]
    measured = _samples_per_s(throughput)
    # Step 3 runs batches of 256. A step of the recipes' smaller batch takes at most as long, so
    # scaling the rate by the batch ratio gives a lower bound: the epochs fit, if anything, easily.
    scale = sizes.quality_batch / int(sizes.shape.split(",")[0])
    rate = (measured or (2000.0 if sizes.device == "cuda" else 200.0)) * scale
    results = []
    for i, scenario in enumerate(scenarios):
        budget = check.left() / (len(scenarios) - i)
        if budget < sizes.overhead_s + 10:
            results.append(StepResult(f"quality {scenario}", "skipped", note="no time left"))
            continue
        epochs = quality_epochs(budget, sizes, rate)
        out = check.out / f"quality_{scenario}.csv"
        cmd = [
            sys.executable, "benchmarks/pretrain_quality.py", "--scenario", scenario,
            "--seeds", "1", "--epochs", str(epochs),
            "--samples_per_epoch", str(sizes.samples_per_epoch), "--device", sizes.device,
            "--data_dir", str(data_dir), *sizes.quality,
            # A compiled graph costs more than it saves in runs of a few minutes.
            "--set", "USE_COMPILE=false", "--output", str(out),
        ]  # fmt: skip
        result, _ = check.run(f"quality {scenario}", cmd, budget)
        result.figures = {
            "epochs": epochs,
            "samples_per_epoch": sizes.samples_per_epoch,
            "samples_s_assumed": round(rate, 1),
            "samples_s_measured_in_step_3": measured is not None,
        }
        if result.status == "ok":
            median = float(pd.read_csv(out, dtype={"basin": str})["nse_mean"].median())
            name, target = TARGETS[scenario]
            result.figures.update(
                {"median_nse": round(median, 4), "target": f"{name} >= {target}",
                 "target_met": met(check, median >= target)}
            )  # fmt: skip
        results.append(result)
    return results


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="rehearse on a CPU with tiny sizes")
    p.add_argument(
        "--deadline", type=float, default=480.0, help="total seconds for all steps (default 480)"
    )
    p.add_argument("--out", default=os.environ.get("OUT"), help="result folder (default: $OUT)")
    p.add_argument(
        "--data_dir",
        default=os.environ.get("CAMELS_GB_DIR") or str(ROOT / ".gpu_data" / "camels_gb"),
        help="the CAMELS-GB sample (default: $CAMELS_GB_DIR, else .gpu_data/camels_gb)",
    )
    return p


def _data_dir(text: str) -> Path | None:
    path = Path(text).expanduser()
    return path if (path / "timeseries").is_dir() else None


def summarise(check: Check, cuda: bool, data_dir: Path | None) -> dict:
    """summary.json: the run, every step and its figures; the files written."""
    summary = {
        "check": "benchmarks/gpu_check.py" + (" --dry-run" if check.dry_run else ""),
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "dry_run": check.dry_run,
        "cuda": cuda,
        "deadline_s": check.deadline_s,
        "wall_s": round(time.monotonic() - check.t0, 1),
        "data_dir": str(data_dir) if data_dir else None,
        "note": (
            "dry run on a CPU with tiny sizes: the GPU steps are skipped or rehearsed, and no "
            "figure here is a GPU figure"
            if check.dry_run
            else "figures of this machine; read them against the targets"
        ),
        "targets": {
            "end_to_end_over_model_step": ">= 0.8 at the Lees shape (the peer reached 0.23 on "
            "an H100)",
            "ours_over_peer": ">= 3 end-to-end samples/s, same run, same GPU",
            "memory": "peak GPU memory within 25 % of the logged estimate for every preset",
            "cuda_tests": "the CUDA gradient-checkpointing test passes",
            "quality": {k: f"{name} >= {t}" for k, (name, t) in TARGETS.items()},
        },
        "steps": [asdict(s) for s in check.steps],
    }
    files = sorted(p.name for p in check.out.iterdir() if p.is_file())
    summary["files"] = sorted({*files, "summary.json"})
    (check.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    return summary


def main(argv: list[str] | None = None) -> dict:
    """Run every step; write the files; return the summary (exit 1 when a step failed)."""
    a = build_parser().parse_args(argv)
    if not a.out:
        raise SystemExit("error: set OUT (or pass --out) to the folder for the result files")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = DRY if a.dry_run else GPU
    import torch

    cuda = not a.dry_run and torch.cuda.is_available()
    data_dir = _data_dir(a.data_dir)
    check = Check(out, a.deadline, a.dry_run)
    check.say(
        f"gpu_check{' --dry-run' if a.dry_run else ''}: deadline {a.deadline:.0f} s, device "
        f"{sizes.device}, CUDA {'available' if cuda else 'not available'}, data "
        f"{data_dir or f'missing ({DATA_HINT})'}"
    )
    check.steps.append(step_environment(check, sizes))
    check.steps.append(step_cuda_tests(check, sizes, cuda))
    if cuda or a.dry_run:
        with tempfile.TemporaryDirectory() as work:
            throughput = step_throughput(check, sizes, data_dir, Path(work))
        check.steps.append(throughput)
        check.steps.append(step_memory(check, sizes))
        check.steps.extend(step_quality(check, sizes, data_dir, throughput))
    else:
        for name in ("train_throughput", "memory", "quality all12", "quality zeroshot"):
            check.steps.append(StepResult(name, "skipped", note="CUDA is not available here"))
    summary = summarise(check, cuda, data_dir)
    check.say("\n=== summary")
    for step in check.steps:
        check.say(f"{step.name:<44} {step.status:<10} {step.seconds:>6.1f} s  {step.note}")
    check.say(f"files in {out}: {', '.join(summary['files'])}")
    check.log.close()
    bad = [s.name for s in check.steps if s.status in ("failed", "timed out")]
    if bad or not (cuda or a.dry_run):
        raise SystemExit(1)
    return summary


if __name__ == "__main__":
    main()
