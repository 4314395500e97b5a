"""fine_train.py on the synthetic demo data: outputs, freezing, the time split, incremental
fine-tuning, parallel runs and bad input."""

# The demo fixtures are imported, so pytest finds them, and then named as test parameters.
# ruff: noqa: F811

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from demo_fixtures import demo_args

import fine_train
from demo_data import write_demo_dataset
from hydrologyDataset import BasinData, FeatureSpec, Scalers, WindowData, load_input_data
from sca2lstm import SCA2LSTM
from utils import (
    FitResult,
    UserError,
    load_checkpoint,
    load_config,
    median_nse,
    predict_windows,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
BASIN = "22001"  # a test basin: never seen in pretraining
OUTPUTS = {
    f"best_model_basin_{BASIN}.pth",
    "training_curve.png",
    "fine_tune.log",
    "config.yaml",
    "finetune_history.json",
    "metrics_before_after.csv",
}


def ft_argv(data: Path, work: Path, ckpt: Path, *extra: str, start: str = "1994-01-01"):
    """Arguments of a short fine-tuning run (four years of record) that writes inside ``work``."""
    flags = {
        "--target_basin": BASIN,
        "--pretrained_model": str(ckpt),
        "--device": "cpu",
        "--batch_size": "256",
        "--start": start,
    }
    return demo_args(data, work, *(part for pair in flags.items() for part in pair), *extra)


def spying_fit(seen: dict):
    """A stand-in for utils.fit that records submodule modes, trainable flags and the weights."""
    real = fine_train.fit

    def spy(model, train, val, settings, device, **kwargs):
        def hook(module, inputs, output):
            if module.training:  # a training step, not a validation pass
                seen["modes"].append({n: c.training for n, c in module.named_children()})

        seen.update(modes=[], trainable={n: p.requires_grad for n, p in model.named_parameters()})
        handle = model.register_forward_hook(hook)
        try:
            result = real(model, train, val, settings, device, **kwargs)
        finally:
            handle.remove()
        seen["after_fit"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return result

    return spy


def group_of(name: str) -> str:
    return name.split(".")[0]


@pytest.fixture(scope="module")
def tuned(demo_dir, pretrained_forecast, tmp_path_factory):
    """One two-epoch fine-tuning run with the default freezing, watched by the fit spy."""
    work = tmp_path_factory.mktemp("fine_tune")
    seen: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fine_train, "fit", spying_fit(seen))
        result = fine_train.main(ft_argv(demo_dir, work, pretrained_forecast, "--epochs", "2"))
    return {"result": result, "work": work, "seen": seen}


# --------------------------------------------------------------------------- command line


def test_parser_leaves_every_default_to_run_config():
    args = fine_train.build_parser().parse_args(["--target_basin", "1", "--pretrained_model", "m"])
    for name in (
        "epochs",
        "batch_size",
        "learning_rate",
        "weight_decay",
        "patience",
        "fine_tune_ratio",
        "seed",
        "start",
        "end",
        "config",
        "data_dir",
        "output_dir",
    ):
        assert getattr(args, name) is None, name
    assert not (args.unfreeze_embedding or args.unfreeze_lstm1 or args.unfreeze_weight_head)


def test_required_flags_are_argparse_errors():
    with pytest.raises(SystemExit) as err:
        fine_train.main(["--target_basin", "32006"])
    assert err.value.code == 2


def test_cli_writes_every_output_in_its_basin_folder(tuned, pretrained_forecast):
    result, work = tuned["result"], tuned["work"]
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == work / "model_output" / "fine_tune" / f"basin_{BASIN}"
    assert re.fullmatch(r"\d{8}_\d{6}(_\d+)?", run_dir.name)
    assert OUTPUTS <= {p.name for p in run_dir.iterdir()}
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert Path(result["checkpoint"]) == run_dir / f"best_model_basin_{BASIN}.pth"

    ckpt = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)
    parent = load_checkpoint(pretrained_forecast)
    assert ckpt["stage"] == "fine_tune" and ckpt["target_basin"] == BASIN
    assert ckpt["freeze"] == {"embedding": True, "lstm1": True, "weight_head": True}
    assert ckpt["parent"] == str(pretrained_forecast.resolve())
    assert ckpt["scalers"] == parent["scalers"] and ckpt["features"] == parent["features"]
    assert ckpt["model_args"] == parent["model_args"]

    # Defaults from run.config's fine_tune section, flags on top, model keys from the checkpoint.
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert config["N_EPOCHS"] == 2 and config["BATCH_SIZE"] == 256
    assert config["LR"] == pytest.approx(1.0e-4) and config["WEIGHT_DECAY"] == pytest.approx(1.0e-5)
    assert config["PATIENCE"] == 8 and config["SEED"] == 42
    assert config["FINE_TUNE_RATIO"] == pytest.approx(0.8)
    assert config["LSTM_HIDDEN_DIM"] == parent["config"]["LSTM_HIDDEN_DIM"] == 16

    history = json.loads((run_dir / "finetune_history.json").read_text(encoding="utf-8"))
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert {"train_loss", "val_loss", "val_nse", "lr"} <= set(history["epochs"][0])
    assert history["target_basin"] == BASIN and history["zero_shot_val_nse"] is not None

    metrics = pd.read_csv(run_dir / "metrics_before_after.csv", dtype={"basin": str})
    assert sorted(zip(metrics["period"], metrics["model"], strict=True)) == [
        ("test", "fine_tuned"),
        ("test", "zero_shot"),
        ("validation", "fine_tuned"),
        ("validation", "zero_shot"),
    ]
    assert set(metrics["basin"]) == {BASIN} and metrics["nse"].notna().all()
    assert set(result["summary"]) == {"validation", "test"}

    text = (run_dir / "fine_tune.log").read_text(encoding="utf-8")
    assert "zero-shot" in text and "fine-tuned" in text and "epoch 2/2" in text
    n_valid = result["split"]["n_valid"]
    assert n_valid < fine_train.MIN_RECORDS
    assert re.search(rf"WARNING .*{n_valid} valid daily records", text)


def test_saved_checkpoint_reproduces_the_reported_validation_score(tuned, demo_dir):
    result = tuned["result"]
    ckpt = load_checkpoint(result["checkpoint"])
    model = SCA2LSTM.from_checkpoint(result["checkpoint"])
    spec, scalers = FeatureSpec.from_dict(ckpt["features"]), Scalers.from_dict(ckpt["scalers"])
    data = load_input_data(ckpt["config"], demo_dir, [BASIN])
    split = result["split"]
    val = WindowData(
        data,
        spec,
        scalers,
        [BASIN],
        np.datetime64(split["val_start"]),
        np.datetime64(split["val_end"]),
        stride=spec.eval_stride,
    )
    score = median_nse(val, predict_windows(model, val))
    assert score == pytest.approx(result["summary"]["validation"]["fine_tuned_nse"], abs=1e-6)


# --------------------------------------------------------------------------- freezing


def test_default_freeze_keeps_groups_bit_identical_and_in_eval_mode(tuned, pretrained_forecast):
    seen = tuned["seen"]
    parent = load_checkpoint(pretrained_forecast)["model_state_dict"]
    saved = load_checkpoint(tuned["result"]["checkpoint"])["model_state_dict"]
    for state in (seen["after_fit"], saved):
        for name, tensor in parent.items():
            if group_of(name) in fine_train.FREEZE_GROUPS:
                assert torch.equal(state[name], tensor), name
    # Training did move the trained groups (checked on fit's weights, before any fallback).
    for group in fine_train.TRAINED_GROUPS:
        assert any(
            not torch.equal(seen["after_fit"][n], parent[n]) for n in parent if group_of(n) == group
        ), group
    assert {group_of(n) for n, on in seen["trainable"].items() if on} == {"lstm2", "head"}
    assert seen["modes"], "no training step was observed"
    for modes in seen["modes"]:
        assert modes == {
            "embedding": False,
            "lstm1": False,
            "weight_head": False,
            "lstm2": True,
            "head": True,
        }


def test_unfreeze_lstm1_trains_it_in_simulate_mode(
    demo_dir, pretrained_simulate, tmp_path, monkeypatch
):
    seen: dict = {}
    monkeypatch.setattr(fine_train, "fit", spying_fit(seen))
    argv = ft_argv(demo_dir, tmp_path, pretrained_simulate, "--epochs", "1", "--unfreeze_lstm1")
    result = fine_train.main(argv)
    parent = load_checkpoint(pretrained_simulate)["model_state_dict"]
    after = seen["after_fit"]
    assert any(not torch.equal(after[n], parent[n]) for n in parent if group_of(n) == "lstm1")
    for name in parent:
        if group_of(name) in ("embedding", "weight_head"):
            assert torch.equal(after[name], parent[name]), name
    assert all(m["lstm1"] and not m["embedding"] and not m["weight_head"] for m in seen["modes"])
    ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt["freeze"] == {"embedding": True, "lstm1": False, "weight_head": True}
    assert ckpt["tuning_history"][-1]["unfrozen"] == ["lstm1"]
    assert ckpt["features"]["mode"] == "simulate"


def test_no_better_epoch_keeps_the_pretrained_weights(
    demo_dir, pretrained_forecast, tmp_path, monkeypatch
):
    def ruinous_fit(model, train, val, settings, device, **kwargs):
        with torch.no_grad():
            model.head[1].bias.add_(3.0)
        record = {"epoch": 1, "train_loss": 9.0, "val_loss": 9.0, "val_nse": -5.0, "lr": 1e-4}
        return FitResult(model.state_dict(), 1, -5.0, [record])

    monkeypatch.setattr(fine_train, "fit", ruinous_fit)
    result = fine_train.main(ft_argv(demo_dir, tmp_path, pretrained_forecast, "--epochs", "1"))
    parent = load_checkpoint(pretrained_forecast)["model_state_dict"]
    saved = load_checkpoint(result["checkpoint"])["model_state_dict"]
    assert all(torch.equal(saved[n], t) for n, t in parent.items())
    assert result["best_epoch"] == 0
    assert result["summary"]["validation"]["delta_nse"] == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- the time split


@pytest.mark.parametrize("fixture", ["pretrained_forecast", "pretrained_simulate"])
def test_time_split_is_ordered_and_never_touches_the_test_period(
    request, demo_dir, tmp_path, fixture
):
    ckpt = request.getfixturevalue(fixture)
    argv = ft_argv(demo_dir, tmp_path, ckpt, "--fine_tune_ratio", "0.7", start="1990-01-01")
    job = fine_train.prepare(
        fine_train.FineTuneRequest.from_args(fine_train.build_parser().parse_args(argv))
    )
    s = job.split
    test_start = np.datetime64(job.config["TEST_START"], "D")
    assert s.train_start <= s.train_end < s.val_start <= s.val_end < test_start
    assert s.val_start == s.train_end + np.timedelta64(1, "D")
    days = int((s.val_end - s.train_start).astype(int)) + 1
    assert (int((s.train_end - s.train_start).astype(int)) + 1) / days == pytest.approx(
        0.7, abs=0.01
    )

    def scored(windows):
        return windows.target_dates()[windows.y_mask.cpu().numpy()]

    train, val, test = scored(job.train), scored(job.val), scored(job.test)
    assert s.train_start <= train.min() and train.max() == s.train_end
    assert val.min() == s.val_start and val.max() == s.val_end
    assert test.min() >= test_start
    assert not (set(train.tolist()) & set(val.tolist()))
    assert not (fine_train.output_root(job.config) / "fine_tune").exists()  # prepare writes none


def split_basin(n_days: int = 400, gap: int = 50) -> BasinData:
    values = np.ones((n_days, 2), np.float32)
    values[:gap, 1] = np.nan  # no discharge in the first `gap` days
    return BasinData("1", np.datetime64("1990-01-01"), values, ("precipitation", "discharge_spec"))


def split_config() -> dict:
    return {**load_config(stage="fine_tune"), "TEST_START": "1990-12-01", "TEST_END": "1991-01-31"}


def test_plan_split_starts_at_the_first_observation_and_ends_before_the_test_period():
    spec = FeatureSpec(("precipitation",), ("area",), "discharge_spec", "simulate", 5)
    s = fine_train.plan_split(split_basin(), spec, split_config(), 0.8)
    assert s.train_start == np.datetime64("1990-02-20")  # day 50, the first observed one
    assert s.val_end == np.datetime64("1990-11-30")  # the day before TEST_START
    assert s.n_valid == 284 and s.n_test == 62  # 1990-12-01..1991-01-31
    s2 = fine_train.plan_split(
        split_basin(),
        spec,
        split_config(),
        0.5,
        np.datetime64("1990-06-01"),
        np.datetime64("1990-06-30"),
    )
    assert (s2.train_start, s2.train_end, s2.val_end) == (
        np.datetime64("1990-06-01"),
        np.datetime64("1990-06-15"),
        np.datetime64("1990-06-30"),
    )


def test_plan_split_tunes_on_newer_observations_after_the_test_period():
    spec = FeatureSpec(("precipitation",), ("area",), "discharge_spec", "simulate", 5)
    config = {**split_config(), "TEST_START": "1990-06-01", "TEST_END": "1990-08-31"}
    s = fine_train.plan_split(split_basin(), spec, config, 0.5, np.datetime64("1990-09-01"))
    assert s.train_start == np.datetime64("1990-09-01")
    assert s.val_end == np.datetime64("1991-02-04")  # the last day of the data
    assert s.train_start > np.datetime64(config["TEST_END"])


@pytest.mark.parametrize(
    "ratio, start, end, needle",
    [
        (0.8, None, "1990-12-01", "test period"),
        (0.8, "1990-06-01", "1990-05-01", "after the end"),
        (0.8, "1990-01-01", "1990-02-01", "no valid record"),
        (0.5, "1990-06-01", "1990-06-01", "holds no valid record"),
    ],
)
def test_plan_split_rejects_impossible_periods(ratio, start, end, needle):
    spec = FeatureSpec(("precipitation",), ("area",), "discharge_spec", "simulate", 5)
    dates = [np.datetime64(d) if d else None for d in (start, end)]
    with pytest.raises(UserError, match=needle):
        fine_train.plan_split(split_basin(), spec, split_config(), ratio, *dates)


# --------------------------------------------------------------------------- incremental, parallel


def test_incremental_fine_tuning_keeps_the_history(tuned, demo_dir, pretrained_forecast, tmp_path):
    first = Path(tuned["result"]["checkpoint"])
    argv = ft_argv(demo_dir, tmp_path, first, "--epochs", "1", start="1996-01-01")
    second = fine_train.main(argv)
    ckpt = load_checkpoint(second["checkpoint"])
    history = ckpt["tuning_history"]
    assert [h["basin"] for h in history] == [BASIN, BASIN]
    assert [h["start"] for h in history] == ["1994-01-01", "1996-01-01"]
    assert all(h["end"] == "1997-12-31" for h in history)
    assert history[0]["parent"] == str(pretrained_forecast.resolve())
    assert history[1]["parent"] == ckpt["parent"] == str(first.resolve())
    for h in history:
        assert {"basin", "start", "end", "ratio", "unfrozen", "epochs", "parent"} <= set(h)
    assert ckpt["scalers"] == load_checkpoint(pretrained_forecast)["scalers"]


@pytest.mark.slow
def test_runs_started_in_parallel_get_their_own_folders(demo_dir, pretrained_forecast, tmp_path):
    # The product README's loop with `&`: same basin, same second, separate processes.
    argv = ft_argv(demo_dir, tmp_path, pretrained_forecast, "--epochs", "1", start="1996-01-01")
    procs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "fine_train.py"), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = sorted((tmp_path / "model_output" / "fine_tune" / f"basin_{BASIN}").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert OUTPUTS <= {p.name for p in run.iterdir()}
        load_checkpoint(run / f"best_model_basin_{BASIN}.pth")
        text = (run / "fine_tune.log").read_text(encoding="utf-8")
        assert text.count("run folder ") == 1 and f"run folder {run}" in text


# --------------------------------------------------------------------------- bad input


def _bad_checkpoint(kind: str, tmp_path: Path, good: Path) -> Path:
    path = tmp_path / f"{kind}.pth"
    if kind == "missing":
        return path
    if kind == "text":
        path.write_text("basin,nse\n22001,0.8\n", encoding="utf-8")
    elif kind == "truncated":
        blob = good.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    elif kind == "foreign_dict":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "other_model":
        save_checkpoint(path, {"model_class": "PSOLSTM", "model_state_dict": {}})
    return path


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("missing", "not found"),
        ("text", "not a readable checkpoint"),
        ("truncated", "truncated"),
        ("foreign_dict", "not a checkpoint written by this toolkit"),
        ("other_model", "not an SCA2LSTM"),
    ],
)
def test_bad_pretrained_model_is_a_user_error(
    kind, needle, demo_dir, pretrained_forecast, tmp_path
):
    path = _bad_checkpoint(kind, tmp_path, pretrained_forecast)
    with pytest.raises(UserError, match=needle):
        fine_train.main(ft_argv(demo_dir, tmp_path, path, "--epochs", "1"))
    assert not (tmp_path / "model_output").exists()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--target_basin", "99999"], "99999"),
        (["--target_basin", "river"], "not a CAMELS-GB gauge id"),
        (["--fine_tune_ratio", "0"], "FINE_TUNE_RATIO"),
        (["--fine_tune_ratio", "1"], "FINE_TUNE_RATIO"),
        (["--fine_tune_ratio", "1.5"], "FINE_TUNE_RATIO"),
        (["--fine_tune_ratio", "-0.2"], "FINE_TUNE_RATIO"),
        (["--weight_decay", "-1"], "WEIGHT_DECAY"),
        (["--patience", "-1"], "PATIENCE"),
        (["--learning_rate", "0"], "LR"),
        (["--end", "2000-01-01"], "test period"),
        (["--start", "1997-06-01", "--end", "1997-01-01"], "after the end"),
        (["--set", "SEQ_LEN=10"], "SEQ_LEN"),
        (["--set", "MODE=simulate"], "MODE=.simulate. .checkpoint: .forecast"),
        (
            ["--target_basin", "10003", "--start", "1975-01-01", "--end", "1983-01-01"],
            "no valid record",
        ),
    ],
)
def test_bad_arguments_are_user_errors_and_leave_no_folder(
    extra, needle, demo_dir, pretrained_forecast, tmp_path
):
    with pytest.raises(UserError, match=needle):
        fine_train.main(ft_argv(demo_dir, tmp_path, pretrained_forecast, "--epochs", "1", *extra))
    assert not (tmp_path / "model_output").exists()


def test_checkpoint_needing_inputs_the_data_lacks(tmp_path, pretrained_forecast):
    root = tmp_path / "no_wind"
    write_demo_dataset(root, [BASIN], "1990-10-01", "2000-12-31", seed=3)
    csv = next((root / "timeseries").glob("*.csv"))
    pd.read_csv(csv, dtype=str).drop(columns="windspeed").to_csv(csv, index=False)
    with pytest.raises(UserError, match="windspeed"):
        fine_train.main(ft_argv(root, tmp_path, pretrained_forecast, "--epochs", "1"))
    assert not (tmp_path / "model_output").exists()


def test_failure_after_the_run_folder_exists_removes_it(
    demo_dir, pretrained_forecast, tmp_path, monkeypatch
):
    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash mid-training")

    monkeypatch.setattr(fine_train, "fit", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        fine_train.main(ft_argv(demo_dir, tmp_path, pretrained_forecast, "--epochs", "1"))
    basin_dir = tmp_path / "model_output" / "fine_tune" / f"basin_{BASIN}"
    assert not any(basin_dir.iterdir())


@pytest.mark.slow
def test_cli_exits_2_without_traceback_on_a_truncated_checkpoint(
    demo_dir, pretrained_forecast, tmp_path
):
    path = _bad_checkpoint("truncated", tmp_path, pretrained_forecast)
    proc = subprocess.run(
        [sys.executable, str(REPO / "fine_train.py"), *ft_argv(demo_dir, tmp_path, path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "truncated" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0  # one message
    assert not (tmp_path / "model_output").exists()


def test_every_frozen_group_released_is_still_finite(demo_dir, pretrained_forecast, tmp_path):
    argv = ft_argv(
        demo_dir,
        tmp_path,
        pretrained_forecast,
        "--epochs",
        "1",
        "--unfreeze_embedding",
        "--unfreeze_lstm1",
        "--unfreeze_weight_head",
        start="1996-01-01",
    )
    result = fine_train.main(argv)
    ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt["freeze"] == dict.fromkeys(fine_train.FREEZE_GROUPS, False)
    assert all(torch.isfinite(t).all() for t in ckpt["model_state_dict"].values())
    assert all(math.isfinite(v["fine_tuned_nse"]) for v in result["summary"].values())


def test_a_notebook_fine_tunes_without_argparse(demo_dir, pretrained_forecast, tmp_path):
    config = load_config(
        stage="fine_tune",
        overrides={
            "INPUT_DIR": str(tmp_path / "model_input_data"),
            "N_EPOCHS": 1,
            "BATCH_SIZE": 256,
        },
    )
    request = fine_train.FineTuneRequest(
        config,
        BASIN,
        pretrained_forecast,
        data_dir=str(demo_dir),
        device="cpu",
        start=np.datetime64("1994-01-01"),
    )
    job = fine_train.prepare(request)
    assert job.basin == BASIN and job.split.train_start == np.datetime64("1994-01-01")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = fine_train.fine_tune(job, run_dir)
    assert Path(result["checkpoint"]).is_file()
    assert set(result["metrics"]["model"]) == {"zero_shot", "fine_tuned"}
