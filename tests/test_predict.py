"""predict.py on the synthetic demo data with the tiny pretrained checkpoints of demo_fixtures.

Round trip: the metrics in metrics.csv are recomputed from predictions.csv, with utils and with
plain NumPy formulas; persistence from the raw timeseries CSV.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from demo_fixtures import demo_args, write_short_record

import predict
from hydrologyDataset import FeatureSpec
from sca2lstm import SCA2LSTM
from utils import UserError, compute_metrics, load_config

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEST_BASINS = ["10002", "10003", "22001", "22006", "39025", "45003", "54017"]
CLOSE = {"rel": 1e-4, "abs": 1e-4}  # predictions.csv holds 6 significant digits


def run_args(demo_dir: Path, demo_workdir: Path, out: Path, *extra: str) -> list[str]:
    """Arguments reusing the fixtures' model input data, writing into ``out``."""
    return demo_args(
        demo_dir, demo_workdir / "forecast", "--output_dir", str(out), "--device", "cpu", *extra
    )


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 10_000, path
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 300 and height > 300, (path, width, height)


def read_outputs(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    preds = pd.read_csv(run_dir / "predictions.csv", dtype={"basin": str})
    metrics = pd.read_csv(run_dir / "metrics.csv", dtype={"basin": str})
    return preds, metrics


def numpy_metrics(o: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """The scores from their textbook formulas, independent of utils."""
    r = np.corrcoef(o, s)[0, 1]
    alpha, beta = s.std() / o.std(), s.mean() / o.mean()
    return {
        "nse": 1 - np.sum((s - o) ** 2) / np.sum((o - o.mean()) ** 2),
        "kge": 1 - math.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + (beta - 1) ** 2),
        "kge_r": r,
        "kge_alpha": alpha,
        "kge_beta": beta,
        "rmse_mm_day": math.sqrt(np.mean((s - o) ** 2)),
        "mae_mm_day": np.mean(np.abs(s - o)),
        "r2": r**2,
        "bias_pct": 100 * np.sum(s - o) / np.sum(o),
        "n_scored": o.size,
    }


def raw_discharge(demo_dir: Path, basin: str) -> pd.Series:
    (csv,) = (demo_dir / "timeseries").glob(f"CAMELS_GB_hydromet_timeseries_{basin}_*.csv")
    frame = pd.read_csv(csv)
    return pd.Series(frame["discharge_spec"].to_numpy(float), index=frame["date"].astype(str))


def area_km2(demo_dir: Path, basin: str) -> float:
    table = pd.read_csv(
        demo_dir / "attributes" / "CAMELS_GB_topographic_attributes.csv", dtype={"gauge_id": str}
    )
    return float(table.set_index("gauge_id").at[basin, "area"])


ROUND_TRIP_BASINS = ["22001", "54017"]
ROUND_TRIP_DAYS = [
    str(d) for d in np.arange(np.datetime64("2000-01-01"), np.datetime64("2001-01-01"))
]


@pytest.fixture(scope="module")
def round_trip(demo_dir, demo_workdir, pretrained_forecast, tmp_path_factory) -> dict:
    """One forecast-mode predict.py run over two basins and 2000, with --export_weights."""
    out = tmp_path_factory.mktemp("round_trip") / "out"
    result = predict.main(
        run_args(
            demo_dir, demo_workdir, out, "--model", str(pretrained_forecast),
            "--basins", ",".join(ROUND_TRIP_BASINS), "--start", "2000-01-01",
            "--end", "2000-12-31", "--export_weights",
        )
    )  # fmt: skip
    return {**result, "out": out}


def test_round_trip_leaves_one_finished_run_folder(round_trip):
    run, out = round_trip["run_dir"], round_trip["out"]
    assert run.parent == out / "predict"
    assert [p.name for p in (out / "predict").iterdir()] == [run.name]  # no temporary folder left
    assert not list(run.glob("compare_*"))
    assert (run / "predict.log").stat().st_size > 0 and (run / "config.yaml").is_file()
    saved = pd.read_json(run / "metrics.json", typ="series")
    assert saved["data"] == "SYNTHETIC" and saved["start"] == "2000-01-01"


def test_round_trip_log_states_the_checkpoints_training_not_run_configs(
    round_trip, pretrained_forecast
):
    saved = torch.load(pretrained_forecast, map_location="cpu", weights_only=False)["config"]
    defaults = load_config(stage="predict")
    keys = ("N_EPOCHS", "BATCH_SIZE", "SEED")
    assert any(saved[k] != defaults[k] for k in keys)  # else the check below could not fail
    log = (round_trip["run_dir"] / "predict.log").read_text()
    want = f"{saved['N_EPOCHS']} epochs, batch {saved['BATCH_SIZE']}, LR {saved['LR']:g}, "
    assert f"as trained: {saved['MODE']} mode" in log
    assert want + f"seed {saved['SEED']};" in log
    # The stage's own config line states no training settings: predict.py trains nothing.
    (own,) = [line for line in log.splitlines() if "INFO config: " in line]
    assert "epochs" not in own and "seed" not in own and "SEQ_LEN" in own


def test_round_trip_tables_match_what_main_returned(round_trip):
    preds, metrics = read_outputs(round_trip["run_dir"])
    assert (preds["data"] == "SYNTHETIC").all() and (metrics["data"] == "SYNTHETIC").all()
    assert list(metrics["basin"]) == ROUND_TRIP_BASINS
    drop = ["gauge_name", "checkpoint", "model", "data", "group"]
    pd.testing.assert_frame_equal(
        metrics.drop(columns=drop),
        round_trip["metrics"].drop(columns=drop),
        check_dtype=False,
        rtol=1e-5,
    )


@pytest.mark.parametrize("basin", ROUND_TRIP_BASINS)
def test_round_trip_scores_recompute_from_the_predictions(round_trip, demo_dir, basin):
    preds, metrics = read_outputs(round_trip["run_dir"])
    p = preds[preds["basin"] == basin]
    assert list(p["date"]) == ROUND_TRIP_DAYS and (p["lead"] == 1).all()
    row = metrics.set_index("basin").loc[basin]
    o, s = p["obs_mm_day"].to_numpy(), p["sim_mm_day"].to_numpy()
    # with utils
    ref = compute_metrics(o, s)
    ref["rmse_mm_day"], ref["mae_mm_day"] = ref.pop("rmse"), ref.pop("mae")
    for key, value in ref.items():
        assert row[key] == pytest.approx(value, **CLOSE), key
    q_ref = compute_metrics(p["obs_m3s"], p["sim_m3s"])
    assert row["rmse_m3s"] == pytest.approx(q_ref["rmse"], **CLOSE)
    assert row["mae_m3s"] == pytest.approx(q_ref["mae"], **CLOSE)
    # with plain NumPy, and the units from the attribute table
    for key, value in numpy_metrics(o, s).items():
        assert row[key] == pytest.approx(value, **CLOSE), key
    factor = area_km2(demo_dir, basin) * 1000 / 86400
    np.testing.assert_allclose(p["obs_m3s"], o * factor, rtol=1e-5)
    np.testing.assert_allclose(p["sim_m3s"], s * factor, rtol=1e-5)


@pytest.mark.parametrize("basin", ROUND_TRIP_BASINS)
def test_round_trip_persistence_is_the_raw_csv_of_the_day_before(round_trip, demo_dir, basin):
    preds, metrics = read_outputs(round_trip["run_dir"])
    p = preds[preds["basin"] == basin]
    row = metrics.set_index("basin").loc[basin]
    o, s = p["obs_mm_day"].to_numpy(), p["sim_mm_day"].to_numpy()
    q = raw_discharge(demo_dir, basin)
    np.testing.assert_allclose(o, q.loc[p["date"]].to_numpy(), rtol=1e-5)
    prev_days = [str(np.datetime64(d) - 1) for d in p["date"]]
    prev = q.loc[prev_days].to_numpy()
    assert row["persistence_nse"] == pytest.approx(numpy_metrics(o, prev)["nse"], **CLOSE)
    skill = 1 - np.mean((s - o) ** 2) / np.mean((prev - o) ** 2)
    assert row["skill_vs_persistence"] == pytest.approx(skill, **CLOSE)
    for kind in ("hydrograph", "scatter", "residuals", "fdc"):
        assert_png(round_trip["run_dir"] / f"{kind}_{basin}.png")


def test_round_trip_channel_weights_sum_to_the_valid_channels(round_trip):
    # 9 channels, 3 steps, one window per predicted day; weights sum to the number of valid
    # channels (all 9: discharge is observed throughout 2000)
    run, basins, days = round_trip["run_dir"], ROUND_TRIP_BASINS, ROUND_TRIP_DAYS
    daily = pd.read_csv(run / "channel_weights_daily.csv", dtype={"basin": str})
    assert list(daily.columns) == ["date", "basin", "step", "channel", "weight"]
    assert len(daily) == len(basins) * len(days) * 3 * 9
    assert daily["date"].min() == "1999-12-31" and daily["date"].max() == "2000-12-30"
    sums = daily.groupby(["date", "basin", "step"])["weight"].sum()
    np.testing.assert_allclose(sums, 9.0, rtol=1e-4)
    mean = pd.read_csv(run / "channel_weights_mean.csv", dtype={"basin": str}).set_index("basin")
    by_basin = daily.groupby(["basin", "channel"])["weight"].mean().unstack()
    np.testing.assert_allclose(mean[by_basin.columns].loc[basins], by_basin.loc[basins], rtol=1e-4)
    season = pd.read_csv(run / "channel_weights_season.csv", dtype={"basin": str})
    assert sorted(season["season"].unique()) == sorted(predict.SEASONS)
    assert_png(run / "channel_weights.png")


def test_simulate_defaults_to_checkpoint_test_basins_and_period(
    demo_dir, demo_workdir, pretrained_simulate, tmp_path
):
    out = tmp_path / "out"
    result = predict.main(
        run_args(demo_dir, demo_workdir, out, "--model", str(pretrained_simulate), "--no_plots")
    )
    run = result["run_dir"]
    preds, metrics = read_outputs(run)
    assert list(metrics["basin"]) == TEST_BASINS
    assert (metrics["group"] == "test").all()
    assert metrics["persistence_nse"].isna().all()  # simulate mode has no persistence
    assert not list(run.glob("*.png"))
    n_days = int((np.datetime64("2008-12-31") - np.datetime64("1998-01-01")).astype(int)) + 1
    for basin in TEST_BASINS:
        p = preds[preds["basin"] == basin]
        # every day of the test period exactly once (stride = PREDICT_LAST_N = 10)
        assert len(p) == n_days and p["date"].is_unique and (p["lead"] == 0).all()
        assert p["date"].min() == "1998-01-01" and p["date"].max() == "2008-12-31"
        row = metrics.set_index("basin").loc[basin]
        ref = compute_metrics(p["obs_mm_day"], p["sim_mm_day"])
        assert row["nse"] == pytest.approx(ref["nse"], **CLOSE)
        assert row["kge"] == pytest.approx(ref["kge"], **CLOSE)
        assert row["n_scored"] == ref["n_scored"] == p["obs_mm_day"].notna().sum()


def test_forecast_beyond_last_observation_has_no_metrics(
    demo_workdir, pretrained_forecast, tmp_path, sca2lstm_log
):
    root = write_short_record(tmp_path / "short")

    def run(out: Path, start: str, end: str, *extra: str) -> dict:
        return predict.main(
            demo_args(
                root, tmp_path, "--output_dir", str(out), "--device", "cpu",
                "--model", str(pretrained_forecast), "--basin", "22001",
                "--start", start, "--end", end, *extra,
            )
        )  # fmt: skip

    # partly observed, and reaching past the end of the inputs (2001-12-31)
    result = run(tmp_path / "a", "2001-06-01", "2002-01-31", "--no_plots")
    preds, metrics = read_outputs(result["run_dir"])
    assert preds["date"].min() == "2001-06-01"
    assert preds["date"].max() == "2002-01-01"  # one lead day past the last input day
    assert preds["sim_mm_day"].notna().all()
    assert preds.loc[preds["date"] > "2001-06-30", "obs_mm_day"].isna().all()
    assert metrics.at[0, "n_scored"] == 30
    assert any("inputs end on 2001-12-31" in n for n in result["notes"])

    # nothing observed: a forecast without metrics, and a note saying so
    result = run(tmp_path / "b", "2001-07-01", "2001-12-31")
    preds, metrics = read_outputs(result["run_dir"])
    assert len(preds) == 184 and preds["obs_mm_day"].isna().all()
    assert preds["sim_mm_day"].notna().all()
    assert metrics.at[0, "n_scored"] == 0
    assert metrics[["nse", "kge", "rmse_mm_day", "persistence_nse"]].isna().all(axis=None)
    assert "not scored" in sca2lstm_log.text and "no metrics" in sca2lstm_log.text
    assert_png(result["run_dir"] / "hydrograph_22001.png")
    assert not (result["run_dir"] / "scatter_22001.png").exists()


def test_glob_takes_newest_default_basin_and_compare(
    demo_dir, demo_workdir, pretrained_forecast, pretrained_simulate, tmp_path, sca2lstm_log
):
    ckpt = torch.load(pretrained_forecast, map_location="cpu", weights_only=True)
    tuned = {**ckpt, "stage": "fine_tune", "target_basin": "22001"}
    now = time.time()
    files = {}
    for name, age in (("20240101_000000", 300), ("20240301_000000", 10), ("20240201_000000", 200)):
        path = tmp_path / "fine_tune" / "basin_22001" / name / "best_model_basin_22001.pth"
        path.parent.mkdir(parents=True)
        torch.save(tuned, path)
        os.utime(path, (now - age, now - age))
        files[name] = path
    newest = files["20240301_000000"]
    pattern = str(tmp_path / "fine_tune" / "basin_22001" / "*" / "best_model_basin_22001.pth")
    assert predict.resolve_checkpoint([pattern], "--model") == newest
    out = tmp_path / "out"
    expanded = [str(p) for p in sorted(files.values())]  # as the shell passes an unquoted glob
    result = predict.main(
        run_args(
            demo_dir, demo_workdir, out, "--model", *expanded, "--start", "2000-01-01",
            "--end", "2000-03-31", "--compare", str(pretrained_simulate),
        )
    )  # fmt: skip
    assert result["checkpoints"][0] == newest
    assert "using the newest" in sca2lstm_log.text and str(newest) in sca2lstm_log.text
    run = result["run_dir"]
    preds, metrics = read_outputs(run)
    assert list(metrics["basin"]) == ["22001", "22001"]  # the checkpoint's own basin
    assert metrics["model"].is_unique and len(metrics) == 2
    assert list(metrics["group"]) == ["train", "test"]
    assert metrics.loc[0, "model"].startswith("SCA2LSTM_fine_tune_forecast_L3")
    assert sorted(preds["model"].unique()) == sorted(metrics["model"])
    for model, p in preds.groupby("model"):
        row = metrics.set_index("model").loc[model]
        assert row["nse"] == pytest.approx(
            compute_metrics(p.obs_mm_day, p.sim_mm_day)["nse"], **CLOSE
        )
    assert_png(run / "compare_hydrograph_22001.png")
    assert_png(run / "hydrograph_22001.png")


def test_model_registry_dispatch(
    demo_dir, demo_workdir, pretrained_forecast, tmp_path, monkeypatch
):
    class FakeLSTM(SCA2LSTM):
        """Another model class, reached through the registry only."""

    module = types.ModuleType("fake_model_module")
    module.FakeLSTM = FakeLSTM
    monkeypatch.setitem(sys.modules, "fake_model_module", module)
    monkeypatch.setitem(predict.MODEL_CLASSES, "FakeLSTM", "fake_model_module")
    ckpt = torch.load(pretrained_forecast, map_location="cpu", weights_only=True)
    path = tmp_path / "fake.pth"
    torch.save({**ckpt, "model_class": "FakeLSTM"}, path)
    args = [
        "--model",
        str(path),
        "--basin",
        "22001",
        "--start",
        "2000-01-01",
        "--end",
        "2000-01-31",
    ]
    result = predict.main(run_args(demo_dir, demo_workdir, tmp_path / "out", *args, "--no_plots"))
    assert result["metrics"].loc[0, "model"].startswith("FakeLSTM_pretrain")
    assert result["metrics"].loc[0, "n_scored"] == 31
    with pytest.raises(UserError, match="--export_weights needs an SCA2LSTM"):
        predict.main(run_args(demo_dir, demo_workdir, tmp_path / "w", *args, "--export_weights"))
    assert not (tmp_path / "w").exists()

    monkeypatch.setitem(predict.MODEL_CLASSES, "FakeLSTM", "no_such_module_for_predict")
    with pytest.raises(UserError, match=r"no_such_module_for_predict\.py"):
        predict.model_class({"model_class": "FakeLSTM"}, path)
    with pytest.raises(UserError, match="predict.py reads"):
        predict.model_class({"model_class": "TransformerXL"}, path)
    assert predict.MODEL_CLASSES["PSOLSTM"] == "pso_lstm"
    if importlib.util.find_spec("pso_lstm") is None:
        with pytest.raises(UserError, match=r"pso_lstm\.py"):
            predict.model_class({"model_class": "PSOLSTM"}, path)


def test_pso_lstm_checkpoint_predicts_for_its_basin(
    demo_dir, demo_workdir, pretrained_forecast, tmp_path
):
    pso_lstm = pytest.importorskip("pso_lstm")
    ckpt = torch.load(pretrained_forecast, map_location="cpu", weights_only=True)
    channels = len(
        FeatureSpec.from_dict(ckpt["features"]).channels
    )  # same forecast windows: 7 forcings + 2 discharge channels
    args = pso_lstm.PSOLSTMArgs(channels, 4, 1, 0.0, 1, channels - 2, channels - 1)
    model = pso_lstm.PSOLSTM(args)
    path = tmp_path / "best_model_basin_54017.pth"
    torch.save(
        {
            **ckpt,
            "model_class": "PSOLSTM",
            "model_args": dataclasses.asdict(args),
            "model_state_dict": model.state_dict(),
            "stage": "pso_lstm",
            "basin": "54017",
        },
        path,
    )
    dates = ["--start", "2000-01-01", "--end", "2000-01-31"]
    out = tmp_path / "out"
    result = predict.main(run_args(demo_dir, demo_workdir, out, "--model", str(path), *dates))
    metrics = result["metrics"]
    assert list(metrics["basin"]) == ["54017"] and metrics.loc[0, "group"] == "train"
    # an untrained PSO-LSTM forecast is persistence
    assert metrics.loc[0, "nse"] == pytest.approx(metrics.loc[0, "persistence_nse"], abs=1e-6)
    assert_png(result["run_dir"] / "hydrograph_54017.png")
    with pytest.raises(UserError, match="PSOLSTM, which has no channel weights"):
        predict.main(
            run_args(demo_dir, demo_workdir, out, "--model", str(path), "--export_weights")
        )


def test_checkpoint_basin_and_groups():
    assert predict.checkpoint_basin({"stage": "fine_tune", "target_basin": 32006}) == "32006"
    assert predict.checkpoint_basin(
        {"stage": "pso_lstm", "config": {"TRAIN_BASINS": ["22001"]}}
    ) == ("22001")
    assert (
        predict.checkpoint_basin({"stage": "pretrain", "config": {"TRAIN_BASINS": ["1"]}}) is None
    )
    groups = predict.basin_groups(
        {"config": {"TRAIN_BASINS": ["1", "2"], "VAL_BASINS": ["2"], "TEST_BASINS": ["3"]}}
    )
    assert groups == {"1": "train", "2": "train", "3": "test"}


def test_crash_leaves_no_folder(demo_dir, demo_workdir, pretrained_forecast, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(predict, "plot_fdc", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        predict.main(
            run_args(
                demo_dir, demo_workdir, out, "--model", str(pretrained_forecast),
                "--basin", "22001", "--start", "2000-01-01", "--end", "2000-01-31",
            )
        )  # fmt: skip
    assert list((out / "predict").iterdir()) == []


def bad_cases(tmp_path: Path, ckpt: Path) -> dict[str, tuple[list[str], str]]:
    junk = tmp_path / "notes.pth"
    junk.write_text("not a checkpoint\n")
    model = ["--model", str(ckpt)]
    one = [*model, "--basin", "22001"]
    return {
        "glob without match": (
            ["--model", str(tmp_path / "nowhere" / "*" / "best_model_basin_1.pth")],
            "no file matches",
        ),
        "not a checkpoint": (["--model", str(junk)], "is not a readable checkpoint"),
        "unknown basin": ([*model, "--basin", "99999"], "99999 not found"),
        "end before start": (
            [*one, "--start", "2000-02-01", "--end", "2000-01-01"],
            "is before --start",
        ),
        "unparseable date": ([*one, "--start", "2000-13-45"], "is not a date"),
        "no full input window": (
            [*one, "--start", "1970-10-01", "--end", "1970-10-02"],
            "full input window",
        ),
        "range outside the data": (
            [*one, "--start", "2030-01-01", "--end", "2030-12-31"],
            "outside",
        ),
    }


BAD = [
    "glob without match",
    "not a checkpoint",
    "unknown basin",
    "end before start",
    "unparseable date",
    "no full input window",
    "range outside the data",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_user_error(case, demo_dir, demo_workdir, pretrained_forecast, tmp_path):
    args, pattern = bad_cases(tmp_path, pretrained_forecast)[case]
    out = tmp_path / "out"
    with pytest.raises(UserError, match=pattern):
        predict.main(run_args(demo_dir, demo_workdir, out, *args))
    assert not out.exists()


@pytest.mark.slow
def test_bad_input_cli_exits_2_without_traceback(
    demo_dir, demo_workdir, pretrained_forecast, tmp_path
):
    cases = bad_cases(tmp_path, pretrained_forecast)
    procs = {}
    for case in BAD:  # all at once: each start imports torch
        args, _ = cases[case]
        out = tmp_path / "out" / case.replace(" ", "_")
        cmd = [
            sys.executable,
            str(REPO / "predict.py"),
            *run_args(demo_dir, demo_workdir, out, *args),
        ]
        procs[case] = (
            subprocess.Popen(
                cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ),
            out,
        )
    for case, (proc, out) in procs.items():
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, (case, stderr)
        assert "Traceback" not in stderr, case
        assert stderr.startswith("error: ") and cases[case][1] in stderr, (case, stderr)
        assert not out.exists(), case


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--help"])
    assert exit_info.value.code == 0
    assert "--export_weights" in capsys.readouterr().out


def test_a_notebook_predicts_without_argparse(
    demo_dir, demo_workdir, pretrained_forecast, tmp_path
):
    config = load_config(
        stage="predict",
        overrides={
            "INPUT_DIR": str(demo_workdir / "forecast" / "model_input_data"),
            "OUTPUT_DIR": str(tmp_path / "out"),
        },
    )
    request = predict.PredictRequest(
        [str(pretrained_forecast)],
        basin=["22001"],
        start="2000-01-01",
        end="2000-03-31",
        data_dir=str(demo_dir),
        device="cpu",
        no_plots=True,
    )
    result = predict.predict(request, config)
    assert list(result["metrics"]["basin"]) == ["22001"]
    assert result["metrics"].loc[0, "n_scored"] == 91
    via_cli = predict.main(
        run_args(
            demo_dir,
            demo_workdir,
            tmp_path / "cli",
            "--model",
            str(pretrained_forecast),
            "--basin",
            "22001",
            "--start",
            "2000-01-01",
            "--end",
            "2000-03-31",
            "--no_plots",
        )  # fmt: skip
    )
    pd.testing.assert_frame_equal(result["predictions"], via_cli["predictions"])
