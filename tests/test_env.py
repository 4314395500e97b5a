"""The environment check (``--check_env``), the device line of every run log, and the inference
options of predict.py (compile, mixed precision) with their CPU notes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from demo_fixtures import demo_args

import data_process
import predict
import sca2lstm
from hydrologyDataset import load_input_data
from utils import (
    InferenceSettings,
    check_environment,
    cpu_bf16_lstm_supported,
    denormals_flushed,
    describe_device,
    environment_report,
    format_environment,
    load_config,
    predict_windows,
)

REPO = Path(__file__).resolve().parents[1]
ITEMS = (
    "Python",
    "PyTorch",
    "CUDA available",
    "CUDA version",
    "cuDNN version",
    "GPU count",
    "GPU",
    "GPU driver",
    "CPU cores",
    "torch threads",
    "CPU bf16 LSTM kernels",
    "CPU flushes subnormals",
)
PACKAGES = ("torch", "numpy", "pandas", "PyYAML", "tqdm", "matplotlib", "pyswarms")
CPU_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def item(text: str, name: str) -> str:
    """The value of report line ``name``."""
    found = re.search(rf"^\s*{re.escape(name)}\s{{2,}}(.+)$", text, re.MULTILINE)
    assert found, f"{name!r} missing from the report:\n{text}"
    return found.group(1).strip()


def run_hiding(module: str, *argv: str) -> subprocess.CompletedProcess:
    """Run a script of the repository with ``module`` made unimportable (None in sys.modules)."""
    wrapper = (
        "import runpy, sys; "
        f"sys.modules[{module!r}] = None; "
        f"sys.argv = {list(argv)!r}; "
        f"runpy.run_path({argv[0]!r}, run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", wrapper],
        cwd=REPO,
        env=CPU_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --------------------------------------------------------------------------- environment check


def test_environment_report_names_every_item_and_gpu_items_as_none(capsys):
    assert check_environment() == 0
    text = capsys.readouterr().out
    for name in ITEMS:
        assert item(text, name)
    for name in PACKAGES:
        assert re.match(r"\d+\.\d+", item(text, name)), name  # a version, not MISSING
    assert item(text, "PyTorch") == torch.__version__
    assert item(text, "CPU cores").startswith(f"{os.cpu_count()} (")
    threads = load_config()["NUM_THREADS"] or torch.get_num_threads()
    assert item(text, "torch threads").startswith(f"{threads} (NUM_THREADS")
    bf16 = item(text, "CPU bf16 LSTM kernels")
    assert bf16.startswith("supported" if cpu_bf16_lstm_supported() else "not supported")
    flushed_before = denormals_flushed()
    flush = item(text, "CPU flushes subnormals")
    assert flush.startswith("yes" if torch.set_flush_denormal(flushed_before) else "no")
    assert denormals_flushed() == flushed_before  # the report probes without changing it
    assert text.rstrip().endswith("result: ready")
    if not torch.cuda.is_available():
        for name in ("CUDA version", "cuDNN version", "GPU", "GPU driver"):
            assert item(text, name) == "none", name
        assert item(text, "CUDA available") == "no"
        assert item(text, "GPU count") == "0"


def test_every_stage_script_checks_the_environment_before_anything_else(capsys):
    # predict.py requires --model and data_process.py reads data: --check_env exits first.
    for main in (predict.main, data_process.main, sca2lstm.main):
        with pytest.raises(SystemExit) as exit_:
            main(["--check_env"])
        assert exit_.value.code == 0
        assert "result: ready" in capsys.readouterr().out


def test_a_missing_package_is_named_with_its_pip_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyswarms", None)
    report = environment_report()
    assert [s["distribution"] for s in report["missing"]] == ["pyswarms"]
    assert check_environment() == 1
    captured = capsys.readouterr()
    assert "pyswarms" in item(captured.out, "pyswarms") and "MISSING" in captured.out
    assert captured.out.rstrip().endswith("result: NOT ready, missing pyswarms")
    assert captured.err.startswith("error: the toolkit cannot run: pyswarms is missing")
    assert "pip install 'pyswarms>=1.3'" in captured.err


def test_report_without_torch_says_unknown_instead_of_guessing():
    # Hiding torch inside this process would break modules that probe for it (scipy), so the
    # report is this machine's with its torch part taken away; a slow test below hides it for real.
    report = environment_report()
    torch_status = {**report["required"][0], "version": None, "error": "ModuleNotFoundError"}
    report.update(
        dict.fromkeys(("torch", "cuda_available", "gpus", "cpu_bf16_lstm", "cpu_flush_denormal"))
    )
    report.update(required=[torch_status, *report["required"][1:]], missing=[torch_status])
    text = format_environment(report)
    for name in ITEMS:
        if name not in ("Python", "CPU cores"):
            assert item(text, name) == "unknown (torch cannot be imported)"
    assert item(text, "CPU cores").startswith(str(os.cpu_count()))
    assert "pip install 'torch>=2.2'" in text and "result: NOT ready, missing torch" in text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("hidden", "argv", "needle"),
    [
        ("pyswarms", ("utils.py", "--check_env"), "pip install 'pyswarms>=1.3'"),
        ("torch", ("utils.py", "--check_env"), "torch is missing"),
        ("tqdm", ("fine_train.py", "--check_env"), "pip install 'tqdm>=4.64'"),
        ("yaml", ("utils.py", "--check_env"), "PyYAML is missing, install it with pip install"),
    ],
)
def test_cli_with_a_module_made_unimportable_exits_nonzero_with_one_clear_message(
    hidden, argv, needle
):
    done = run_hiding(hidden, *argv)
    assert done.returncode == 1, done.stderr
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: the toolkit cannot run: ")
    assert needle in errors[0]
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_cli_check_env_exits_zero_here():
    done = subprocess.run(
        [sys.executable, "utils.py", "--check_env"],
        cwd=REPO,
        env=CPU_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert item(done.stdout, "GPU") == "none"  # CUDA_VISIBLE_DEVICES hides any GPU
    assert done.stdout.rstrip().endswith("result: ready")


@pytest.mark.slow
def test_bf16_lstm_probe_and_memory_benchmark_agree_when_onednn_is_held_to_avx2(tmp_path):
    # ONEDNN_MAX_CPU_ISA=AVX2 gives the oneDNN of an AVX2-only CPU, whose bf16 LSTM fails.
    env = {**CPU_ENV, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    probe = subprocess.run(
        [sys.executable, "-c", "import utils; print(utils.cpu_bf16_lstm_supported())"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    supported = probe.stdout.strip() == "True"
    out = tmp_path / "memory.csv"
    done = subprocess.run(
        [sys.executable, "benchmarks/memory.py", "--seq_len", "12", "--batch_size", "4",
         "--sizes", "micro", "--device", "cpu", "--output", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out)
    assert set(table["precision"]) == ({"fp32", "bf16 autocast"} if supported else {"fp32"})
    assert ("no bf16 LSTM kernel" in done.stdout) == (not supported)
    assert (table["measured_mib"] > 0).all()


# --------------------------------------------------------------------------- device line


def test_device_line_names_cpu_cores_and_threads():
    line = describe_device(torch.device("cpu"))
    assert line.startswith(f"device cpu: {os.cpu_count()} cores")
    assert f"{torch.get_num_threads()} torch threads" in line


def test_training_log_states_the_device_once(demo_dir, tmp_path, sca2lstm_log):
    result = sca2lstm.main(
        demo_args(
            demo_dir, tmp_path, "--dry-run", "--device", "cpu",
            "--set", "LSTM_HIDDEN_DIM=8", "--set", "EMBEDDING_DIM=4",
        )
    )  # fmt: skip
    text = (result["run_dir"] / "train.log").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if "device cpu:" in line]
    assert len(lines) == 1
    assert f"{os.cpu_count()} cores" in lines[0] and "torch threads" in lines[0]
    assert "GPU memory" not in text  # the epoch line shows it on CUDA only


def test_prediction_log_states_the_device_and_cpu_notes_once(
    demo_dir,
    demo_workdir,
    pretrained_forecast,
    tmp_path,
):
    out = tmp_path / "out"
    args = demo_args(demo_dir, demo_workdir / "forecast", "--output_dir", str(out))
    args += ["--device", "cpu", "--model", str(pretrained_forecast), "--basin", "22001"]
    args += ["--start", "2000-01-01", "--end", "2000-03-31", "--no_plots"]
    result = predict.main([*args, "--compile", "--mixed_precision"])
    text = (result["run_dir"] / "predict.log").read_text(encoding="utf-8")
    assert sum("device cpu:" in line for line in text.splitlines()) == 1
    for key in ("USE_COMPILE", "MIXED_PRECISION"):
        note = f"{key} is on but applies to CUDA devices only; predicting on cpu without it"
        assert text.count(note) == 1, key
    plain = predict.main([*args, "--set", "USE_COMPILE=false", "--set", "MIXED_PRECISION=false"])
    text = (plain["run_dir"] / "predict.log").read_text(encoding="utf-8")
    assert "applies to CUDA devices only" not in text
    pd.testing.assert_frame_equal(result["predictions"], plain["predictions"])


def test_predict_flags_reach_the_config(demo_dir, demo_workdir, pretrained_forecast, tmp_path):
    args = demo_args(demo_dir, demo_workdir / "forecast", "--output_dir", str(tmp_path))
    args += ["--device", "cpu", "--model", str(pretrained_forecast), "--basin", "22001"]
    args += ["--start", "2000-01-01", "--end", "2000-01-31", "--no_plots"]
    args += ["--set", "USE_COMPILE=false", "--set", "MIXED_PRECISION=false"]
    result = predict.main([*args, "--compile", "--mixed_precision"])
    saved = (result["run_dir"] / "config.yaml").read_text(encoding="utf-8")
    assert "USE_COMPILE: true" in saved and "MIXED_PRECISION: true" in saved


# --------------------------------------------------------------------------- inference options


def _windows(demo_dir, workdir, checkpoint, device):
    lm = predict.read_model(checkpoint, device)
    config = load_config(stage="predict", overrides=[f"INPUT_DIR={workdir / 'model_input_data'}"])
    config = {**config, "DYNAMIC_INPUTS": list(lm.spec.dynamic_inputs), "TARGET": lm.spec.target}
    data = load_input_data(config, demo_dir, ["22001"])
    start, end = np.datetime64("2000-01-01"), np.datetime64("2000-06-30")
    return lm, predict.build_windows(lm, data, ["22001"], start, end, device)


def test_compiled_inference_gives_the_plain_predictions(
    demo_dir, demo_workdir, pretrained_forecast
):
    lm, windows = _windows(
        demo_dir, demo_workdir / "forecast", pretrained_forecast, torch.device("cpu")
    )
    plain = predict_windows(lm.model, windows, batch_size=64)
    # The eager backend runs the graph torch.compile captured, without a C++ toolchain.
    compiled = predict_windows(
        lm.model, windows, batch_size=64, inference=InferenceSettings(compile=True, backend="eager")
    )
    assert plain.shape == (len(windows), 1)
    np.testing.assert_allclose(compiled, plain, rtol=1e-5, atol=1e-6)


def test_inference_options_apply_on_cuda_only(sca2lstm_log):
    config = load_config(overrides=["USE_COMPILE=true", "MIXED_PRECISION=true"])
    on_cpu = InferenceSettings.from_config(config, torch.device("cpu"))
    assert (on_cpu.compile, on_cpu.mixed_precision) == (False, False)
    assert sca2lstm_log.text.count("applies to CUDA devices only; predicting on cpu") == 2
    on_cuda = InferenceSettings.from_config(config, torch.device("cuda"))
    assert (on_cuda.compile, on_cuda.mixed_precision, on_cuda.backend) == (True, True, "inductor")


# --------------------------------------------------------------------------- on a CUDA device


@pytest.mark.cuda
def test_cuda_device_line_and_report_name_the_gpu():
    line = describe_device(torch.device("cuda"))
    props = torch.cuda.get_device_properties(0)
    assert props.name in line and f"compute capability {props.major}.{props.minor}" in line
    assert re.search(r"\d+\.\d GiB", line)
    report = environment_report()
    assert report["cuda_available"] and report["gpu_count"] == torch.cuda.device_count() >= 1
    assert report["gpus"][0]["name"] == props.name and report["cudnn_version"]


@pytest.mark.cuda
def test_mixed_precision_and_compiled_inference_on_cuda_match_fp32(
    demo_dir,
    demo_workdir,
    pretrained_forecast,
):
    lm, windows = _windows(
        demo_dir, demo_workdir / "forecast", pretrained_forecast, torch.device("cuda")
    )
    plain = predict_windows(lm.model, windows, batch_size=64)
    fast = predict_windows(
        lm.model, windows, batch_size=64, inference=InferenceSettings(True, True, "inductor")
    )
    assert fast.dtype == np.float32 and fast.shape == plain.shape
    # bf16 keeps about 3 significant digits: scaled predictions agree to a few hundredths.
    np.testing.assert_allclose(fast, plain, atol=0.05)
    assert np.corrcoef(fast.ravel(), plain.ravel())[0, 1] > 0.999


@pytest.mark.cuda
def test_epoch_log_line_shows_gpu_memory_on_cuda(demo_dir, tmp_path, sca2lstm_log):
    result = sca2lstm.main(
        demo_args(
            demo_dir, tmp_path, "--dry-run", "--device", "cuda",
            "--set", "LSTM_HIDDEN_DIM=8", "--set", "EMBEDDING_DIM=4",
            "--set", "USE_COMPILE=false",
        )
    )  # fmt: skip
    text = (result["run_dir"] / "train.log").read_text(encoding="utf-8")
    assert re.search(r"device cuda(:0)?: .+ GiB, compute capability \d+\.\d", text)
    epoch = [line for line in text.splitlines() if re.search(r"epoch 1/\d+ ", line)]
    assert epoch and re.search(r"GPU memory \d+ MiB allocated, \d+ MiB reserved", epoch[0])
    history = pd.read_csv(result["run_dir"] / "history.csv")
    assert history["gpu_mem_allocated_mb"].iloc[0] > 0
