"""PSO-LSTM: search-space decoding, the swarm, the model, and small end-to-end runs on demo data."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from demo_fixtures import demo_args

import pso_lstm
from hydrologyDataset import BasinData, FeatureSpec, Scalers, WindowData, load_input_data
from pso_lstm import PSOLSTM, Dimension, PSOLSTMArgs, SwarmObjective
from utils import PSO_DIMENSIONS, UserError, load_config, period, predict_windows

REPO = Path(__file__).resolve().parents[1]
# One year each: training 1985-86, validation 1984, test 1987 (demo data span 1970-2015).
SHORT = [
    "--set", "TRAIN_START=1985-01-01", "--set", "TRAIN_END=1986-12-31",
    "--set", "VAL_START=1984-01-01", "--set", "VAL_END=1984-12-31",
    "--set", "TEST_START=1987-01-01", "--set", "TEST_END=1987-12-31",
    "--device", "cpu",
]  # fmt: skip
TINY_BOUNDS = ["--bounds_time_steps", "3,6", "--bounds_num_layers", "1,2"]
DEFAULTS = {
    "time_steps": 12,
    "hidden_size": 64,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "dropout": 0.3,
    "num_layers": 2,
}
BOUNDS = {
    "time_steps": [3, 30],
    "hidden_size": [16, 128],
    "batch_size": [16, 256],
    "learning_rate": [1.0e-4, 1.0e-2],
    "dropout": [0.0, 0.5],
    "num_layers": [1, 3],
}


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("pso_lstm/basin_*/*") if p.is_dir())


# --------------------------------------------------------------------------- decoding


def test_integer_dimension_rounds_and_reaches_both_bounds():
    dim = Dimension("num_layers", 1, 3, integer=True)
    lo, hi = dim.search_bounds()
    assert dim.decode(lo) == 1 and dim.decode(hi) == 3
    assert dim.decode(1.49) == 1 and dim.decode(1.5) == 2 and dim.decode(2.5) == 3
    # Every integer owns an equal share of the search interval, the bounds included.
    counts = np.bincount([dim.decode(x) for x in np.linspace(lo, hi, 30_001)], minlength=4)[1:]
    assert counts.min() / counts.max() > 0.99
    assert all(isinstance(dim.decode(x), int) for x in (lo, 2.2, hi))


def test_log_scale_dimensions():
    batch = Dimension("batch_size", 16, 256, integer=True, log=True)
    lo, hi = batch.search_bounds()
    assert (lo, hi) == pytest.approx((math.log10(15.5), math.log10(256.5)), abs=1e-6)
    assert batch.decode(lo) == 16 and batch.decode(hi) == 256
    assert batch.decode((lo + hi) / 2) == 63  # the geometric middle, not (16 + 256) / 2
    rate = Dimension("learning_rate", 1e-4, 1e-2, log=True)
    assert rate.search_bounds() == pytest.approx((-4.0, -2.0))
    assert rate.decode(-4.0) == pytest.approx(1e-4) and rate.decode(-2.0) == pytest.approx(1e-2)
    assert rate.decode(-3.0) == pytest.approx(1e-3)
    assert rate.decode(-2.5) == pytest.approx(0.00316)  # 3 significant digits
    drop = Dimension("dropout", 0.0, 0.5)
    assert drop.search_bounds() == (0.0, 0.5) and drop.decode(0.12345) == 0.123


def test_fixed_dimensions_are_left_out_of_the_search():
    space = pso_lstm.build_search_space(BOUNDS, DEFAULTS, {"time_steps", "hidden_size"})
    assert space.names == ("batch_size", "learning_rate", "dropout", "num_layers")
    assert space.fixed == {"time_steps": 12, "hidden_size": 64}
    params = space.decode(np.array([b for b in space.bounds()[1]]))  # every upper bound
    assert params == {
        "time_steps": 12,
        "hidden_size": 64,
        "batch_size": 256,
        "learning_rate": pytest.approx(1e-2),
        "dropout": 0.5,
        "num_layers": 3,
    }
    assert list(params) == list(PSO_DIMENSIONS)
    # Equal bounds fix a dimension too.
    space = pso_lstm.build_search_space({**BOUNDS, "num_layers": [2, 2]}, DEFAULTS, set())
    assert "num_layers" not in space.names and space.fixed == {"num_layers": 2}


def test_flags_fix_dimensions_and_no_pso_fixes_all():
    parser = pso_lstm.build_parser()
    args = parser.parse_args(
        ["--basin_id", "22001", "--time_steps", "12", "--batch_size", "32", "--hidden_size", "64"]
    )
    config, fixed = pso_lstm.resolve_config(args)
    assert fixed == {"time_steps", "batch_size", "hidden_size"}
    assert config["SEQ_LEN"] == 12 and config["BATCH_SIZE"] == config["BATCH_SIZE_GPU"] == 32
    config, fixed = pso_lstm.resolve_config(parser.parse_args(["--basin_id", "1", "--no_pso"]))
    assert fixed == set(PSO_DIMENSIONS)
    space = pso_lstm.build_search_space(config["PSO_BOUNDS"], DEFAULTS, fixed)
    assert space.dims == () and space.decode([]) == DEFAULTS
    args = parser.parse_args(["--basin_id", "1", "--bounds_hidden_size", "8,32"])
    config, _ = pso_lstm.resolve_config(args)
    assert config["PSO_BOUNDS"]["hidden_size"] == [8, 32]
    assert config["PSO_BOUNDS"]["time_steps"] == load_config()["PSO_BOUNDS"]["time_steps"]
    help_text = parser.format_help()
    assert "Searched" in help_text and "(log" in help_text and "--bounds_dropout" in help_text


@pytest.mark.parametrize(
    "bounds, match",
    [
        ({"hidden_size": [128, 16]}, "lower bound is above the upper"),
        ({"num_layers": [1, 2.5]}, "whole numbers"),
        ({"dropout": [0.0, 1.0]}, r"\[0, 1\)"),
        ({"learning_rate": [0.0, 1e-2]}, "positive"),
    ],
)
def test_impossible_bounds_are_user_errors(bounds, match):
    with pytest.raises(UserError, match=match):
        pso_lstm.build_search_space({**BOUNDS, **bounds}, DEFAULTS, set())


# --------------------------------------------------------------------------- the swarm


def test_cache_answers_an_identical_decoded_setting():
    space = pso_lstm.build_search_space(BOUNDS, DEFAULTS, set(PSO_DIMENSIONS) - {"num_layers"})
    calls = []

    def evaluate(params):
        calls.append(params)
        return {"cost": float(params["num_layers"]), "val_nse": 0.5, "seconds": 1.0}

    objective = SwarmObjective(space, evaluate)
    # 1.8 and 2.3 both decode to num_layers=2; 3.4 decodes to 3.
    costs = objective(np.array([[1.8], [2.3], [3.4]]))
    assert costs.tolist() == [2.0, 2.0, 3.0]
    assert [c["num_layers"] for c in calls] == [2, 3]
    objective(np.array([[2.1], [2.9], [3.0]]))
    assert len(calls) == 2 and objective.n_evaluated == 2
    assert [row["cached"] for row in objective.history] == [False, True, False, True, True, True]
    assert [row["iteration"] for row in objective.history] == [1, 1, 1, 2, 2, 2]


def test_particles_leaving_the_bounds_are_clipped_not_wrapped():
    # The cost falls without limit as hidden_size grows: the swarm pushes past the upper bound.
    space = pso_lstm.build_search_space(BOUNDS, DEFAULTS, set(PSO_DIMENSIONS) - {"hidden_size"})
    objective = SwarmObjective(
        space, lambda p: {"cost": -float(p["hidden_size"]), "val_nse": 0.0, "seconds": 0.0}
    )
    best, cost = pso_lstm.run_swarm(space, objective, 4, 12, {"c1": 0.5, "c2": 0.3, "w": 0.9}, 0)
    assert best["hidden_size"] == 128 and cost == -128.0
    sizes = [row["hidden_size"] for row in objective.history]
    assert min(sizes) >= 16 and max(sizes) == 128
    # Once at the boundary, particles stay there instead of reappearing near the lower bound.
    last = [row["hidden_size"] for row in objective.history if row["iteration"] == 12]
    assert min(last) > 100
    # Same seed, same swarm.
    again = SwarmObjective(space, objective.evaluate)
    pso_lstm.run_swarm(space, again, 4, 12, {"c1": 0.5, "c2": 0.3, "w": 0.9}, 0)
    assert [r["hidden_size"] for r in again.history] == sizes


# --------------------------------------------------------------------------- the model


def test_untrained_model_is_persistence_and_forcings_mode_ignores_discharge():
    args = PSOLSTMArgs(n_dynamic=5, hidden=8, num_layers=2, q_channel=3, q_flag_channel=4)
    model = PSOLSTM(args).eval()
    x, static = torch.randn(6, 10, 5), torch.randn(6, 22)
    assert torch.equal(model(x, static), x[:, -1, 3:4])
    assert torch.equal(model(x, None), model(x, static))
    with pytest.raises(ValueError, match="channel weights"):
        model(x, static, return_weights=True)
    forcings = PSOLSTM(PSOLSTMArgs(5, 8, 1, 0.0, 2, 3, 4, inputs="forcings")).eval()
    assert forcings.lstm.input_size == 3
    other = x.clone()
    other[..., 3:] = torch.randn(6, 10, 2)
    out = forcings(x, static)
    assert out.shape == (6, 2) and torch.equal(out, forcings(other, static))
    assert PSOLSTM(dataclasses.asdict(args)).args == args  # a checkpoint's model_args dict


def test_basin_without_validation_observations_is_validated_at_the_end_of_training():
    config = load_config(stage="pso_lstm")
    start = np.datetime64("1970-10-01")
    q = np.ones(20000, np.float32)
    q[: int((np.datetime64("1983-05-19") - start).astype(int))] = np.nan  # like 10003
    b = BasinData("10003", start, q[:, None], ("discharge_spec",), "Ythan at Ellon")
    overrides, note = pso_lstm.basin_periods(config, b)
    # A validation block as many days long as the configured one (1827), ending with training.
    assert overrides == {
        "VAL_START": "1992-12-31",
        "VAL_END": "1997-12-31",
        "TRAIN_END": "1992-12-30",
    }
    assert "10003" in note
    full = BasinData("22001", start, np.ones((20000, 1), np.float32), ("discharge_spec",))
    assert pso_lstm.basin_periods(config, full) == ({}, None)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def search_run(demo_dir, demo_workdir):
    out = demo_workdir / "pso_search"
    args = demo_args(
        demo_dir, demo_workdir, *SHORT, *TINY_BOUNDS,
        "--basin_id", "22001", "--hidden_size", "6",
        "--n_particles", "2", "--iters", "2", "--pso_epochs", "1", "--final_epochs", "2",
        "--plot_prediction", "--start", "1987-03-01", "--end", "1987-06-30",
    )  # fmt: skip
    args[args.index("--output_dir") + 1] = str(out)
    return pso_lstm.main(args), out


def test_search_writes_all_outputs(search_run):
    result, out = search_run
    basin = result["basins"]["22001"]
    run_dir = basin["run_dir"]
    assert run_dirs(out) == [run_dir] and run_dir.parent == out / "pso_lstm" / "basin_22001"
    for name in (
        "pso_history.csv",
        "best_params.json",
        "pso_convergence.png",
        "best_model_basin_22001.pth",
        "metrics.csv",
        "prediction.png",
        "prediction.csv",
        "config.yaml",
        "pso_lstm.log",
    ):
        assert (run_dir / name).is_file(), name
    history = pd.read_csv(run_dir / "pso_history.csv")
    assert len(history) == 4 and history["iteration"].tolist() == [1, 1, 2, 2]
    assert {"particle", "cost", *PSO_DIMENSIONS} <= set(history.columns)
    assert (history["hidden_size"] == 6).all()  # fixed by its flag
    assert history["time_steps"].between(3, 6).all() and history["num_layers"].between(1, 2).all()
    best = json.loads((run_dir / "best_params.json").read_text())
    assert "hidden_size" not in best["searched"] and best["params"]["hidden_size"] == 6
    assert best["search"]["cost"] == pytest.approx(history["cost"].min(), rel=1e-5)
    assert best["params"] == basin["best_params"]
    metrics = pd.read_csv(run_dir / "metrics.csv").set_index("period")
    assert list(metrics.index) == ["validation", "test", "plot"]
    for col in ("nse", "rmse", "bias_pct", "kge", "mae", "r2", "persistence_nse"):
        assert np.isfinite(metrics[col]).all(), col
    assert (metrics.loc["plot", "start"], metrics.loc["plot", "end"]) == (
        "1987-03-01",
        "1987-06-30",
    )
    assert "searched: time_steps" in (run_dir / "pso_lstm.log").read_text()
    summary = pd.read_csv(result["summary"], dtype={"basin": str})
    assert result["summary"].parent == out / "pso_lstm" and summary["basin"].tolist() == ["22001"]
    assert summary.loc[0, "test_nse"] == pytest.approx(metrics.loc["test", "nse"], rel=1e-5)


def test_checkpoint_reloads_and_predicts_identically(search_run, demo_dir):
    result, _ = search_run
    basin = result["basins"]["22001"]
    ckpt = torch.load(basin["checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["model_class"] == "PSOLSTM" and ckpt["stage"] == "pso_lstm"
    assert ckpt["config"]["SEQ_LEN"] == basin["best_params"]["time_steps"]
    assert ckpt["features"]["seq_len"] == basin["best_params"]["time_steps"]
    assert ckpt["scalers"]["fitted_on"]["basins"] == ["22001"]
    model = PSOLSTM.from_checkpoint(basin["checkpoint"])
    config = ckpt["config"]
    spec = FeatureSpec.from_dict(ckpt["features"])
    data = load_input_data(config, demo_dir, ["22001"])
    windows = WindowData(
        data, spec, Scalers.from_dict(ckpt["scalers"]), ["22001"], *period(config, "test")
    )
    np.testing.assert_array_equal(
        predict_windows(model, windows), predict_windows(basin["model"].cpu(), windows)
    )
    assert ckpt["metrics"]["test"]["nse"] == pytest.approx(
        basin["metrics"].set_index("period").loc["test", "nse"]
    )


def test_several_basins_share_one_summary(demo_dir, demo_workdir, tmp_path):
    args = demo_args(
        demo_dir, demo_workdir, *SHORT,
        "--basin_id", "22001,22006", "--no_pso", "--time_steps", "4", "--hidden_size", "4",
        "--final_epochs", "1",
    )  # fmt: skip
    args[args.index("--output_dir") + 1] = str(tmp_path)
    result = pso_lstm.main(args)
    assert list(result["basins"]) == ["22001", "22006"]
    summary = pd.read_csv(result["summary"], dtype={"basin": str})
    assert summary["basin"].tolist() == ["22001", "22006"]
    assert (summary["searched"] == "none").all() and (summary["time_steps"] == 4).all()
    assert {"val_nse", "test_nse", "test_persistence_nse", "test_kge"} <= set(summary.columns)
    assert [p.parent.name for p in run_dirs(tmp_path)] == ["basin_22001", "basin_22006"]
    assert not list(tmp_path.glob("pso_lstm/basin_*/*/pso_history.csv"))  # nothing searched


@pytest.mark.parametrize("inputs, channels", [("q", 2), ("forcings", 7)])
def test_inputs_choose_what_the_model_reads(inputs, channels, demo_dir, demo_workdir, tmp_path):
    args = demo_args(
        demo_dir, demo_workdir, *SHORT,
        "--basin_id", "22001", "--no_pso", "--time_steps", "3", "--hidden_size", "4",
        "--final_epochs", "1", "--inputs", inputs,
    )  # fmt: skip
    args[args.index("--output_dir") + 1] = str(tmp_path)
    basin = pso_lstm.main(args)["basins"]["22001"]
    model = PSOLSTM.from_checkpoint(basin["checkpoint"])
    assert model.args.inputs == inputs and model.lstm.input_size == channels
    features = torch.load(basin["checkpoint"], weights_only=True)["features"]
    assert features["use_forcings"] == (inputs != "q")


BAD_INPUTS = {
    "unknown basin": (["--basin_id", "22001,99999"], r"99999 not found"),
    "bounds reversed": (
        ["--basin_id", "22001", "--bounds_hidden_size", "64,16"],
        r"--bounds_hidden_size 64,16: the lower bound is above the upper bound",
    ),
    "bounds of a fixed dimension": (
        ["--basin_id", "22001", "--hidden_size", "8", "--bounds_hidden_size", "4,16"],
        r"--bounds_hidden_size and --hidden_size contradict",
    ),
    "plot window outside the data": (
        [
            "--basin_id",
            "22001",
            "--plot_prediction",
            "--start",
            "1960-01-01",
            "--end",
            "1960-12-31",
        ],
        r"1960-01-01\.\.1960-12-31 .*lies outside the data of basin 22001",
    ),
    "plot window without observations": (
        # demo basin 10002 has no discharge from 1981-05-16 to 1981-06-19
        [
            "--basin_id",
            "10002",
            "--plot_prediction",
            "--start",
            "1981-05-20",
            "--end",
            "1981-06-10",
        ],
        r"basin 10002 .*no observed discharge_spec in the plot window",
    ),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_user_error_and_runs_nothing(name, demo_dir, demo_workdir, tmp_path):
    extra, pattern = BAD_INPUTS[name]
    args = demo_args(demo_dir, demo_workdir, *SHORT, *extra)
    args[args.index("--output_dir") + 1] = str(tmp_path / "out")
    with pytest.raises(UserError, match=pattern):
        pso_lstm.main(args)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_bad_input_exits_2_without_traceback(demo_dir, demo_workdir, tmp_path):
    args = demo_args(demo_dir, demo_workdir, "--basin_id", "22001,99999", "--no_pso")
    args[args.index("--output_dir") + 1] = str(tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, str(REPO / "pso_lstm.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    assert "99999" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "report.log").exists()


def test_pso_checkpoint_with_the_old_hidden_size_name_still_loads():
    args = PSOLSTMArgs.from_saved(
        {"n_dynamic": 5, "hidden_size": 8, "num_layers": 1, "q_channel": 3, "q_flag_channel": 4}
    )
    assert args.hidden == 8 and PSOLSTM(args).lstm.hidden_size == 8
