"""A checkpoint of today's format, committed, must keep loading and predicting the same.

``tests/data/checkpoint_forecast_v1.pth`` (a tiny forecast-mode SCA2LSTM trained on the bundled
real fixture) and its predictions were written by ``tests/data/make_checkpoint_fixture.py``.
A change to the model, the scalers or the checkpoint layout that would break a user's saved
model makes these tests fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

import predict
from sca2lstm import SCA2LSTM
from utils import CHECKPOINT_FORMAT, load_checkpoint

DATA = Path(__file__).resolve().parent / "data"
CHECKPOINT = DATA / "checkpoint_forecast_v1.pth"
EXPECTED = DATA / "checkpoint_forecast_v1_predictions.csv"


def test_committed_checkpoint_loads_with_weights_only():
    ckpt = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert ckpt["format_version"] == CHECKPOINT_FORMAT == 1
    model = SCA2LSTM.from_checkpoint(CHECKPOINT)
    assert model.args.hidden == 8 and model.args.mode == "forecast"
    assert load_checkpoint(CHECKPOINT)["features"]["seq_len"] == 3


def test_committed_checkpoint_predicts_what_it_predicted(tmp_path):
    result = predict.main(
        [
            "--data_dir", str(DATA / "camels_gb_mini"), "--set", f"INPUT_DIR={tmp_path / 'in'}",
            "--output_dir", str(tmp_path / "out"), "--model", str(CHECKPOINT), "--basin", "22001",
            "--start", "1995-01-01", "--end", "1995-03-31", "--no_plots", "--device", "cpu",
        ]
    )  # fmt: skip
    got = result["predictions"]
    expected = pd.read_csv(EXPECTED)
    assert list(got["date"].astype(str)) == list(expected["date"])
    np.testing.assert_allclose(got["obs_mm_day"], expected["obs_mm_day"], rtol=1e-6)
    np.testing.assert_allclose(got["sim_mm_day"], expected["sim_mm_day"], rtol=1e-5, atol=1e-6)
