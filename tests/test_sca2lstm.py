"""SCA2LSTM model behaviour, the NSE* loss, checkpoints and the pretraining CLI (demo data)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from demo_fixtures import demo_args

import sca2lstm
from sca2lstm import SCA2LSTM, SCA2LSTMArgs, load_config
from utils import UserError, load_checkpoint, nse_star_loss

REPO = Path(__file__).resolve().parents[1]
# One training/validation basin and one test basin of the demo data, and a tiny model.
ONE_BASIN = ("--train_basins", "32006", "--val_basins", "32006", "--test_basins", "22001")
TINY_MODEL = ("--set", "LSTM_HIDDEN_DIM=8", "--set", "EMBEDDING_DIM=4")


def small_args(**kw) -> SCA2LSTMArgs:
    base = dict(
        n_dynamic=9,
        n_static=4,
        hidden=8,
        num_layers=2,
        dropout=0.0,
        embedding_dim=6,
        pred_len=2,
        mode="forecast",
        q_channel=7,
        q_flag_channel=8,
    )
    base.update(kw)
    return SCA2LSTMArgs(**base)


def test_model_from_default_config_has_freeze_groups():
    model = SCA2LSTM(load_config())
    names = [name for name, _ in model.named_children()]
    assert names == ["embedding", "lstm1", "weight_head", "lstm2", "head"]
    assert model.args.n_dynamic == 9  # 7 forcings + lagged Q + its missing flag
    assert model.args.n_static == len(load_config()["STATIC_ATTRIBUTES"])


def test_untrained_forecast_model_is_persistence_and_weights_start_at_one():
    torch.manual_seed(0)
    model = SCA2LSTM(small_args()).eval()
    x, static = torch.randn(5, 4, 9), torch.randn(5, 4)
    x[..., 8] = 0.0
    out, weights = model(x, static, return_weights=True)
    assert out.shape == (5, 2)
    assert torch.allclose(out, x[:, -1, 7:8].expand(5, 2))
    assert weights.shape == (5, 4, 9)
    assert torch.allclose(weights, torch.ones_like(weights))


def test_missing_discharge_channel_is_masked_and_mean_weight_stays_one():
    torch.manual_seed(0)
    model = SCA2LSTM(small_args())
    torch.nn.init.normal_(model.weight_head.weight)  # non-uniform weights
    x = torch.randn(3, 5, 9)
    x[..., 8] = 0.0
    x[1, 2, 8] = 1.0  # lagged Q unobserved on step 2 of sample 1
    x[1, 2, 7] = 0.0
    _, w = model.eval()(x, torch.randn(3, 4), return_weights=True)
    assert w[1, 2, 7] == 0
    assert torch.allclose(w.sum(-1)[1, 2], torch.tensor(8.0))  # 8 valid channels, mean 1
    assert torch.allclose(w.sum(-1)[0], torch.full((5,), 9.0))


def test_states_carry_across_the_window():
    # The first day of the window must influence the prediction (no per-step state reset).
    torch.manual_seed(0)
    model = SCA2LSTM(
        small_args(mode="simulate", n_dynamic=7, pred_len=1, q_channel=-1, q_flag_channel=-1)
    ).eval()
    x, static = torch.randn(2, 10, 7), torch.randn(2, 4)
    base = model(x, static)
    x2 = x.clone()
    x2[:, 0] += 3.0
    assert not torch.allclose(base, model(x2, static))
    assert model(x, static, n_last=4).shape == (2, 4)
    assert torch.allclose(model(x, static, n_last=4)[:, -1:], base)


def test_nse_star_loss_weights_and_masks():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    y = torch.tensor([[0.0, 0.0], [1.0, 5.0]])
    mask = torch.tensor([[True, False], [True, True]])
    std = torch.tensor([0.9, 0.4])
    # Masked target (2.0 vs 0.0) ignored; weights 1/(0.9+0.1)^2 = 1 and 1/(0.4+0.1)^2 = 4.
    expected = (1.0 * 1 + 1.0 * 4 + 25.0 * 4) / 3
    assert nse_star_loss(pred, y, mask, std).item() == pytest.approx(expected)


def test_pretrain_outputs_and_checkpoint(pretrained_forecast):
    run = pretrained_forecast.parent
    for name in (
        "config.yaml",
        "train.log",
        "history.csv",
        "best_model.pth",
        "last_model.pth",
        "training_curve.png",
        "metrics_test_period.csv",
        "channel_weights.csv",
        "channel_weights.png",
    ):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert not (run.parents[1] / "sca2lstm.pth").exists()  # a --dry-run never replaces it
    ckpt = torch.load(pretrained_forecast, map_location="cpu", weights_only=True)
    for key in (
        "model_state_dict",
        "model_args",
        "config",
        "scalers",
        "features",
        "epoch",
        "metrics",
        "stage",
        "format_version",
    ):
        assert key in ckpt, key
    # channels and basin lists live once, in features and config
    assert "channels" not in ckpt and "basins" not in ckpt
    assert ckpt["config"]["TRAIN_BASINS"] and ckpt["features"]["dynamic_inputs"]
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model_state_dict"])
    assert ckpt["synthetic_data"] is True
    # the static clamp travels with the scalers, so fine-tuning and prediction apply it unchanged
    scalers = ckpt["scalers"]
    assert scalers["static_clamp"] == ckpt["config"]["STATIC_CLAMP"] == 0.5
    n_static = len(ckpt["config"]["STATIC_ATTRIBUTES"])
    assert len(scalers["static_min"]) == len(scalers["static_max"]) == n_static
    metrics = pd.read_csv(run / "metrics_test_period.csv")
    assert set(metrics["basin"].astype(str)) == set(ckpt["config"]["TEST_BASINS"]) | set(
        ckpt["config"]["VAL_BASINS"]
    )
    for col in ("nse", "kge", "rmse", "mae", "r2", "bias_pct", "persistence_nse"):
        assert metrics[col].notna().all(), col
    history = pd.read_csv(run / "history.csv")
    assert {"train_loss", "val_loss", "val_nse", "lr", "seconds", "samples_per_s"} <= set(history)


def test_from_checkpoint_predicts_identically(pretrained_forecast):
    ckpt = load_checkpoint(pretrained_forecast)
    a = SCA2LSTM(SCA2LSTMArgs(**ckpt["model_args"]))
    a.load_state_dict(ckpt["model_state_dict"])
    b = SCA2LSTM.from_checkpoint(pretrained_forecast)
    x, s = torch.randn(4, 3, a.args.n_dynamic), torch.randn(4, a.args.n_static)
    x[..., -1] = 0
    assert torch.equal(a.eval()(x, s), b.eval()(x, s))


def test_no_static_attributes_pretrain_predict_and_fine_tune(demo_dir, tmp_path):
    """STATIC_ATTRIBUTES []: the embedding is one learned vector shared by every basin, and the
    checkpoint carries that through prediction and fine-tuning."""
    import warnings

    import fine_train
    import predict

    none = ("--set", "STATIC_ATTRIBUTES=[]", "--device", "cpu", *TINY_MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # not even torch's zero-element warning
        result = sca2lstm.main(demo_args(demo_dir, tmp_path, "--dry-run", "--pred_len", "2", *none))
    ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt["config"]["STATIC_ATTRIBUTES"] == [] and ckpt["model_args"]["n_static"] == 0
    assert ckpt["scalers"]["static_mean"] == [] and ckpt["scalers"]["static_min"] == []
    metrics = pd.read_csv(result["run_dir"] / "metrics_test_period.csv")
    assert metrics["nse"].notna().all() and len(metrics) >= 2
    model = SCA2LSTM.from_checkpoint(result["checkpoint"]).eval()
    assert model.embedding[0].weight.shape == (4, 0)
    emb = model.embedding(torch.zeros(3, 0))
    assert emb.shape == (3, 4) and torch.equal(emb[0], emb[2]) and emb.abs().sum() > 0
    # trained: the forecasts are no longer persistence (Q on day t at every lead)
    F = model.args.future_len
    assert F == 2
    x = torch.randn(2, 5, model.args.n_dynamic)
    x[..., -1] = 0.0
    with torch.no_grad():
        out = model(x, torch.zeros(2, 0))
    q_t = x[:, -F - 1, model.args.q_channel, None].expand(-1, 2)
    # (an untrained model returns exactly q_t: test_untrained_forecast_model_is_persistence...)
    assert out.shape == (2, 2) and not torch.equal(out, q_t)

    out = predict.main(
        demo_args(
            demo_dir, tmp_path, "--model", str(result["checkpoint"]), "--basins", "22001,54017",
            "--start", "2000-01-01", "--end", "2000-03-31", "--output_dir", str(tmp_path / "p"),
            "--device", "cpu",
        )
    )  # fmt: skip
    assert out["metrics"]["nse"].notna().all() and len(out["metrics"]) == 2
    tuned = fine_train.main(
        demo_args(
            demo_dir, tmp_path, "--target_basin", "22001", "--pretrained_model",
            str(result["checkpoint"]), "--device", "cpu", "--epochs", "1", "--start", "1995-01-01",
        )
    )  # fmt: skip
    tuned_ckpt = load_checkpoint(tuned["checkpoint"])
    assert tuned_ckpt["model_args"]["n_static"] == 0
    assert tuned_ckpt["features"]["static_attributes"] == []


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [({"STATIC_ATTRIBUTES": ["area", 3]}, "STATIC_ATTRIBUTES must be a list of column names"),
     ({"DYNAMIC_INPUTS": []}, "DYNAMIC_INPUTS must be a non-empty list")],
)  # fmt: skip
def test_bad_input_lists_are_user_errors(overrides, needle):
    with pytest.raises(UserError, match=needle):
        load_config(overrides=overrides)


def test_notebook_snippet_with_default_config(demo_dir, tmp_path):
    out = sca2lstm.main(
        demo_args(
            demo_dir,
            tmp_path,
            "--epochs",
            "1",
            "--set",
            "SAMPLES_PER_EPOCH=256",
            *ONE_BASIN,
        )
    )
    path = tmp_path / "model_output" / "sca2lstm.pth"
    assert path.is_file() and out["checkpoint"].is_file()
    config = load_config()
    model = SCA2LSTM(config)
    model.load_state_dict(torch.load(path)["model_state_dict"])
    model.eval()


def test_resume_continues_the_run(demo_dir, tmp_path):
    args = demo_args(
        demo_dir,
        tmp_path,
        *ONE_BASIN,
        *TINY_MODEL,
        "--set",
        "TRAIN_START=1990-01-01",
        "--set",
        "PATIENCE=0",
    )
    first = sca2lstm.main([*args, "--epochs", "1"])
    resumed = sca2lstm.main([*args, "--epochs", "2", "--resume", str(first["run_dir"])])
    assert resumed["run_dir"] == first["run_dir"]
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert len(list((tmp_path / "model_output" / "pretrain").iterdir())) == 1


def test_simulate_mode_eval_predicts_each_day_once(demo_dir, tmp_path):
    out = sca2lstm.main(
        demo_args(
            demo_dir,
            tmp_path,
            "--dry-run",
            "--mode",
            "simulate",
            "--seq_len",
            "20",
            "--set",
            "PREDICT_LAST_N=5",
            *ONE_BASIN,
            "--set",
            "LSTM_HIDDEN_DIM=8",
        )
    )
    metrics = out["metrics"]
    days = (np.datetime64("2008-12-31") - np.datetime64("1998-01-01")).astype(int) + 1
    assert (metrics["n_scored"] <= days).all()
    assert (metrics["n_scored"] > 0.95 * days).all()
    assert "persistence_nse" not in metrics


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--device", "cuda"], "CUDA is not available"),
        (["--train_basins", "99999"], "99999"),
        (["--set", "NOT_A_KEY=1"], "unknown config key"),
        (["--set", "TRAIN_END=1970-01-01"], "ends"),
        (["--horizon_weights", "1,2"], "PRED_LEN is 1"),
    ],
)
@pytest.mark.slow
def test_bad_input_is_one_message_and_leaves_no_run_folder(demo_dir, tmp_path, extra, needle):
    if extra[0] == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match=needle):
        sca2lstm.main(demo_args(demo_dir, tmp_path, "--dry-run", *extra))
    assert not (tmp_path / "model_output" / "pretrain").exists() or not any(
        (tmp_path / "model_output" / "pretrain").iterdir()
    )
    proc = subprocess.run(
        [sys.executable, str(REPO / "sca2lstm.py"), *demo_args(demo_dir, tmp_path, *extra)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and needle in proc.stderr


def test_eval_stride_and_spec_roundtrip():
    from hydrologyDataset import FeatureSpec

    spec = FeatureSpec.from_config(load_config())
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    sim = replace(spec, mode="simulate", predict_last_n=7)
    assert sim.eval_stride == 7 and spec.eval_stride == 1


@pytest.mark.slow
def test_parallel_two_cpu_processes_match_single_process(demo_dir, tmp_path):
    # Data-parallel (torchrun, Gloo, 2 processes) with the same global batch as one process.
    common = [
        "--data_dir",
        str(demo_dir),
        "--train_basins",
        "32006,42003",
        "--val_basins",
        "32006",
        "--test_basins",
        "22001",
        "--set",
        "DROPOUT=0.0",
        "--set",
        "TRAIN_START=1992-01-01",
        "--epochs",
        "2",
        "--batch_size",
        "64",
        "--accumulation_steps",
        "1",
        "--set",
        f"INPUT_DIR={tmp_path / 'in'}",
        "--set",
        "LSTM_HIDDEN_DIM=8",
        "--set",
        "EMBEDDING_DIM=4",
        "--device",
        "cpu",
    ]
    runs = {}
    for name, launcher in {
        "parallel": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(REPO / "sca2lstm.py"),
            "--parallel",
        ],
        "single": [sys.executable, str(REPO / "sca2lstm.py")],
    }.items():
        out = tmp_path / name
        proc = subprocess.run(
            [*launcher, *common, "--output_dir", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert ("2 processes (DistributedDataParallel, Gloo)" in proc.stdout) == (
            name == "parallel"
        )
        (run,) = list((out / "pretrain").iterdir())  # one run folder: rank 0 writes alone
        runs[name] = pd.read_csv(run / "history.csv")
    np.testing.assert_allclose(
        runs["parallel"]["train_loss"], runs["single"]["train_loss"], rtol=1e-3
    )
    np.testing.assert_allclose(runs["parallel"]["val_nse"], runs["single"]["val_nse"], atol=1e-3)


@pytest.mark.slow
def test_resume_after_the_process_is_killed(demo_dir, tmp_path):
    import signal
    import time

    args = [
        str(REPO / "sca2lstm.py"),
        *demo_args(
            demo_dir,
            tmp_path,
            *ONE_BASIN,
            *TINY_MODEL,
            "--set",
            "PATIENCE=0",
            "--set",
            "TRAIN_START=1994-01-01",
            "--set",
            "TEST_END=1999-12-31",
            "--device",
            "cpu",
        ),
    ]
    proc = subprocess.Popen(
        [sys.executable, *args, "--epochs", "200"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs = tmp_path / "model_output" / "pretrain"
    deadline = time.time() + 120
    while time.time() < deadline and not list(runs.glob("*/last_model.pth")):
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: mid-epoch or mid-write
    proc.wait()
    (run,) = list(runs.iterdir())
    done = load_checkpoint(run / "last_model.pth")["training_state"]["history"]
    assert 1 <= len(done) < 200
    out = sca2lstm.main([*args[1:], "--epochs", str(len(done) + 1), "--resume", str(run)])
    assert [h["epoch"] for h in out["history"]] == list(range(1, len(done) + 2))
    assert out["history"][: len(done)] == done
    assert (run / "best_model.pth").is_file() and (run / "metrics_test_period.csv").is_file()
