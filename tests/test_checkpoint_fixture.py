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
import pytest
import torch

import predict
from hydrologyDataset import load_model
from sca2lstm import SCA2LSTM
from utils import CHECKPOINT_FORMAT, UserError, load_checkpoint

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


def _edited_checkpoint(tmp_path: Path, edit) -> Path:
    ckpt = load_checkpoint(CHECKPOINT)
    edit(ckpt)
    path = tmp_path / "edited.pth"
    torch.save(ckpt, path)
    return path


def test_one_loader_gives_model_features_and_scalers():
    loaded = load_model(CHECKPOINT, SCA2LSTM)
    assert loaded.model.args.n_dynamic == len(loaded.spec.channels)
    assert len(loaded.scalers.dynamic_mean) == len(loaded.spec.dynamic_inputs)
    assert loaded.ckpt["model_class"] == "SCA2LSTM"


def test_checkpoint_whose_features_do_not_fit_its_model_is_refused(tmp_path):
    def drop_attribute(ckpt):
        ckpt["features"]["static_attributes"] = ckpt["features"]["static_attributes"][:-1]

    path = _edited_checkpoint(tmp_path, drop_attribute)
    with pytest.raises(UserError, match="is inconsistent.*static inputs"):
        load_model(path, SCA2LSTM)
    with pytest.raises(UserError, match="is inconsistent"):  # predict reads it the same way
        predict.read_model(path, torch.device("cpu"))


def test_checkpoint_of_another_class_is_refused_by_the_model_class(tmp_path):
    path = _edited_checkpoint(tmp_path, lambda ckpt: ckpt.update(model_class="PSOLSTM"))
    with pytest.raises(UserError, match="holds a PSOLSTM, not an SCA2LSTM"):
        SCA2LSTM.from_checkpoint(path)
