"""The real-data path end to end on the trimmed CAMELS-GB fixture that ships with the tests.

``tests/data/camels_gb_mini`` holds three real catchments over 1987-10..1996-12 (see its
README for the attribution), so these tests run on a fresh clone without ``CAMELS_GB_DIR``:
checking and processing the files, pretraining, fine-tuning and prediction, with every score
recomputed from the written predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import data_process
import fine_train
import hydrologyDataset as hd
import predict
import sca2lstm
from utils import compute_metrics

MINI = Path(__file__).resolve().parent / "data" / "camels_gb_mini"
BASINS = ("22001", "32006", "54017")
N_DAYS = int((np.datetime64("1996-12-31") - np.datetime64("1987-10-01")).astype(int)) + 1
PERIODS = (
    "--set", "TRAIN_START=1990-01-01", "--set", "TRAIN_END=1994-12-31",
    "--set", "VAL_START=1988-01-01", "--set", "VAL_END=1989-12-31",
    "--set", "TEST_START=1995-01-01", "--set", "TEST_END=1996-12-31",
)  # fmt: skip
TINY = ("--set", "LSTM_HIDDEN_DIM=8", "--set", "EMBEDDING_DIM=4", "--set", "NUM_LAYERS=1")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mini")


def common(work: Path) -> list[str]:
    return [
        "--data_dir", str(MINI), "--output_dir", str(work / "model_output"),
        "--set", f"INPUT_DIR={work / 'model_input_data'}", "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(work) -> dict:
    return sca2lstm.main(
        [
            *common(work), *PERIODS, *TINY, "--epochs", "2", "--set", "SAMPLES_PER_EPOCH=1024",
            "--train_basins", "32006", "--val_basins", "32006", "--test_basins", "22001,54017",
        ]
    )  # fmt: skip


def test_fixture_is_real_camels_gb_with_its_attribution():
    source = hd.find_source(MINI)
    assert sorted(source.basins) == sorted(BASINS)
    readme = (MINI / "README.md").read_text(encoding="utf-8")
    assert "Open Government Licence v3.0" in readme and "10.5285/8344e4f3" in readme
    assert (MINI / "LICENSE-OGL-UK-3.0.txt").is_file()
    table = hd.read_attributes(source)
    assert table.loc["22001", "gauge_name"] == "Coquet at Morwick"


def test_data_process_checks_and_writes_every_basin(tmp_path):
    out = data_process.main(
        ["--data_dir", str(MINI), "--basins", "all", "--set", f"INPUT_DIR={tmp_path}", *PERIODS]
    )
    for basin in BASINS:
        with np.load(out / f"{basin}.npz") as arrays:
            values = arrays["values"]
        assert values.shape[0] == N_DAYS
        assert np.isfinite(values).all()  # these three basins have no gaps in 1987-1996
    assert (out / "manifest.json").is_file()


def test_pretraining_scores_unseen_basins_apart_from_training_ones(pretrained):
    metrics = pretrained["metrics"].set_index("basin")
    assert set(metrics.index) == set(BASINS)
    assert bool(metrics.loc["32006", "trained_on"]) and not metrics.loc["22001", "trained_on"]
    assert metrics["nse"].notna().all() and metrics["persistence_nse"].notna().all()
    days = int((np.datetime64("1996-12-31") - np.datetime64("1995-01-01")).astype(int)) + 1
    assert (metrics["n_scored"] == days).all()


def test_fine_tune_then_predict_recomputes_the_scores(pretrained, work):
    tuned = fine_train.main(
        [
            *common(work), "--target_basin", "22001", "--pretrained_model",
            str(pretrained["checkpoint"]), "--epochs", "1", "--batch_size", "64",
        ]
    )  # fmt: skip
    result = predict.main(
        [*common(work), "--model", str(tuned["checkpoint"]), "--basin", "22001", "--no_plots"]
    )
    written = pd.read_csv(result["run_dir"] / "predictions.csv")
    row = result["metrics"].iloc[0]
    expected = compute_metrics(written["obs_mm_day"], written["sim_mm_day"])
    assert row["nse"] == pytest.approx(expected["nse"], rel=1e-6)
    assert row["kge"] == pytest.approx(expected["kge"], rel=1e-6)
    assert row["days_seen_in_training"] == 0  # the test period 1995-1996 was never trained on
