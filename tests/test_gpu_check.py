"""benchmarks/gpu_check.sh: its dry run on this CPU (the rehearsal of the GPU check), the time
caps of its steps, and the epoch budget of its quality step. No time is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[1]
FILES = {
    "environment.txt",
    "cuda_tests.txt",
    "train_throughput.csv",
    "memory.csv",
    "quality_all12.csv",
    "quality_zeroshot.csv",
    "summary.json",
    "gpu_check.log",
}


def test_quality_epochs_fill_the_budget_within_their_bounds():
    sizes = replace(gpu_check.GPU, samples_per_epoch=1000, overhead_s=10.0, max_epochs=50)
    # an epoch counts 2 × 1000 / 100 + 0.5 = 20.5 s; (215 - 10) / 20.5 = 10 epochs
    assert gpu_check.quality_epochs(215, sizes, rate=100.0) == 10
    assert gpu_check.quality_epochs(214, sizes, rate=100.0) == 9
    assert gpu_check.quality_epochs(5, sizes, rate=100.0) == 1
    assert gpu_check.quality_epochs(10_000, sizes, rate=100.0) == 50


def test_quality_uses_the_measured_rate_of_its_own_settings():
    runs = [
        {"compile": True, "mixed_precision": True, "end_to_end_samples_s": 9000.0},
        {"compile": False, "mixed_precision": True, "end_to_end_samples_s": 7000.0},
    ]
    step = gpu_check.StepResult("train_throughput", "ok", figures={"runs": runs})
    assert gpu_check._samples_per_s(step) == 7000.0  # no compile, mixed precision: as trained
    assert gpu_check._samples_per_s(gpu_check.StepResult("train_throughput", "skipped")) is None


@pytest.mark.slow
def test_a_step_past_its_cap_is_killed_and_the_next_still_runs(tmp_path):
    check = gpu_check.Check(tmp_path, deadline_s=120, dry_run=True)
    sleeper = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    slow, output = check.run("sleeper", sleeper, cap_s=5)
    assert slow.status == "timed out" and "started" in output
    assert slow.seconds < 30
    fast, output = check.run("echo", [sys.executable, "-c", "print('done')"], cap_s=30)
    assert (fast.status, output.strip()) == ("ok", "done")
    failing, _ = check.run("fails", [sys.executable, "-c", "raise SystemExit(3)"], cap_s=30)
    assert (failing.status, failing.note) == ("failed", "exit code 3")
    check.log.close()
    log = (tmp_path / "gpu_check.log").read_text(encoding="utf-8")
    assert "=== sleeper: timed out" in log and "done" in log


@pytest.mark.slow
def test_dry_run_writes_the_eight_files_with_every_step_reported(tmp_path, camels_gb_dir):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "CAMELS_GB_DIR": str(camels_gb_dir),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--deadline", "400"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == FILES  # at most 8 files, none in folders
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["dry_run"] is True and summary["cuda"] is False
    assert "no figure here is a GPU figure" in summary["note"]
    assert sorted(summary["files"]) == sorted(FILES)
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == [
        "environment", "cuda_tests", "train_throughput", "memory",
        "quality all12", "quality zeroshot",
    ]  # fmt: skip
    assert steps["cuda_tests"]["status"] == "skipped"
    assert "no CUDA device (dry run)" in steps["cuda_tests"]["note"]
    assert all(s["status"] == "ok" for n, s in steps.items() if n != "cuda_tests"), steps
    assert steps["environment"]["figures"]["GPU"] == "none"

    # the CUDA tests were collected, and the gradient-checkpointing one is among them
    tests = (out / "cuda_tests.txt").read_text(encoding="utf-8")
    assert "test_gradient_checkpointing_is_identical_on_cuda_with_inter_layer_dropout" in tests
    assert "tests collected" in steps["cuda_tests"]["figures"]["result_line"]

    throughput = pd.read_csv(out / "train_throughput.csv")
    assert len(throughput) == 4
    combos = set(zip(throughput["compile"], throughput["mixed_precision"], strict=True))
    assert combos == set(gpu_check.COMBOS)
    assert (throughput["end_to_end_samples_s"] > 0).all()
    assert "neuralhydrology" in throughput["peer"].iloc[0]
    runs = steps["train_throughput"]["figures"]["runs"]
    assert all(r["target_end_to_end_over_step_0.8_met"] is None for r in runs)  # not GPU figures

    memory = pd.read_csv(out / "memory.csv")
    assert (memory["measured_mib"] > 0).all() and set(memory["model_size"]) == {"micro"}

    all12 = pd.read_csv(out / "quality_all12.csv", dtype={"basin": str})
    zeroshot = pd.read_csv(out / "quality_zeroshot.csv", dtype={"basin": str})
    assert len(all12) == 12 and len(zeroshot) == 7
    assert all12["nse_mean"].notna().all()
    for name in ("quality all12", "quality zeroshot"):
        figures = steps[name]["figures"]
        assert 1 <= figures["epochs"] <= gpu_check.DRY.max_epochs
        assert figures["samples_s_measured_in_step_3"] is True
        assert figures["median_nse"] == pytest.approx(
            (all12 if "all12" in name else zeroshot)["nse_mean"].median(), abs=1e-4
        )

    log = (out / "gpu_check.log").read_text(encoding="utf-8")
    for step in ("environment", "cuda_tests", "memory", "quality all12", "quality zeroshot"):
        assert f"=== {step} (cap" in log
    env_text = (out / "environment.txt").read_text(encoding="utf-8")
    assert "result: ready" in env_text and "$ nvidia-smi" in env_text
    assert "=== summary" in done.stdout


@pytest.mark.slow
def test_without_out_the_check_refuses_to_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run"],
        cwd=REPO,
        env={**env, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "OUT" in done.stderr


@pytest.mark.slow
def test_without_the_data_sample_the_data_steps_say_why_and_the_rest_runs(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out),
         "--data_dir", str(tmp_path / "no_sample"), "--deadline", "200"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = {s["name"]: s for s in json.loads((out / "summary.json").read_text())["steps"]}
    for name in ("train_throughput", "quality all12", "quality zeroshot"):
        assert steps[name]["status"] == "skipped"
        assert ".gpu_data/camels_gb" in steps[name]["note"]
    assert steps["environment"]["status"] == steps["memory"]["status"] == "ok"
    assert not (out / "train_throughput.csv").exists() and (out / "memory.csv").is_file()
