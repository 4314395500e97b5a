"""Write the committed checkpoint fixture: a tiny SCA2LSTM of today's checkpoint format.

``tests/test_checkpoint_fixture.py`` loads ``checkpoint_forecast_v1.pth`` and checks that it
still predicts ``checkpoint_forecast_v1_predictions.csv``, so a change to the model, the
scalers or the checkpoint layout that would break users' saved models fails a test. Run this
only when the checkpoint format version changes on purpose (and keep a loader for the old one)::

    python tests/data/make_checkpoint_fixture.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import pandas as pd  # noqa: E402

import predict  # noqa: E402
import sca2lstm  # noqa: E402

MINI = HERE / "camels_gb_mini"
CHECKPOINT = HERE / "checkpoint_forecast_v1.pth"
PREDICTIONS = HERE / "checkpoint_forecast_v1_predictions.csv"
PERIODS = (
    "--set", "TRAIN_START=1990-01-01", "--set", "TRAIN_END=1994-12-31",
    "--set", "VAL_START=1988-01-01", "--set", "VAL_END=1989-12-31",
    "--set", "TEST_START=1995-01-01", "--set", "TEST_END=1996-12-31",
)  # fmt: skip
PREDICT_ARGS = ("--basin", "22001", "--start", "1995-01-01", "--end", "1995-03-31", "--no_plots")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        common = ["--data_dir", str(MINI), "--set", f"INPUT_DIR={work / 'input'}"]
        result = sca2lstm.main(
            [
                *common, *PERIODS, "--output_dir", str(work / "out"), "--device", "cpu",
                "--epochs", "3", "--set", "SAMPLES_PER_EPOCH=2048", "--set", "LSTM_HIDDEN_DIM=8",
                "--set", "EMBEDDING_DIM=4", "--set", "NUM_LAYERS=1", "--train_basins", "32006",
                "--val_basins", "32006", "--test_basins", "22001,54017", "--set", "WARMUP_STEPS=0",
                "--set", "LR=1.0e-2",
            ]
        )  # fmt: skip
        shutil.copyfile(result["checkpoint"], CHECKPOINT)
        out = predict.main(
            [*common, "--output_dir", str(work / "pred"), "--model", str(CHECKPOINT), *PREDICT_ARGS]
        )
        frame = pd.read_csv(out["run_dir"] / "predictions.csv")
        frame[["date", "basin", "lead", "obs_mm_day", "sim_mm_day"]].to_csv(
            PREDICTIONS, index=False
        )


if __name__ == "__main__":
    main()
