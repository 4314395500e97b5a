"""Session fixtures on the synthetic demo data: a dataset and tiny pretrained checkpoints.

``conftest.py`` loads this module as a pytest plugin, so every test module gets the same session
instances by naming a fixture as an argument; ``demo_args`` is a plain helper to import.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from demo_data import write_demo_dataset


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The 12-basin synthetic dataset over the full CAMELS-GB range (about 2 s to write)."""
    root = tmp_path_factory.mktemp("demo") / "CAMELS_GB_demo"
    write_demo_dataset(root)
    return root


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory) -> Path:
    """A session folder for model input data and outputs of the demo fixtures."""
    return tmp_path_factory.mktemp("demo_work")


def demo_args(demo_dir: Path, work: Path, *extra: str) -> list[str]:
    """Common CLI arguments that keep every file of a run inside ``work``."""
    return [
        "--data_dir", str(demo_dir),
        "--output_dir", str(work / "model_output"),
        "--set", f"INPUT_DIR={work / 'model_input_data'}",
        *extra,
    ]  # fmt: skip


def write_short_record(root: Path) -> Path:
    """Demo basin 22001 over 1999-2001 whose discharge ends on 2001-06-30 while the forcings
    go on to 2001-12-31: forecasts past the last observation."""
    import pandas as pd

    write_demo_dataset(root, ["22001"], "1999-01-01", "2001-12-31")
    (csv,) = (root / "timeseries").glob("*.csv")
    frame = pd.read_csv(csv, dtype=str)
    frame.loc[frame["date"] > "2001-06-30", ["discharge_spec", "discharge_vol"]] = "NaN"
    frame.to_csv(csv, index=False)
    return root


def _pretrain(demo_dir: Path, work: Path, *extra: str) -> Path:
    import sca2lstm

    result = sca2lstm.main(demo_args(demo_dir, work, "--dry-run", "--device", "cpu", *extra))
    return Path(result["checkpoint"])


@pytest.fixture(scope="session")
def pretrained_forecast(demo_dir, demo_workdir) -> Path:
    """A one-epoch SCA2LSTM checkpoint in forecast mode (SEQ_LEN 3, PRED_LEN 1) without future
    inputs: windows end on the forecast day, as before FUTURE_INPUTS existed."""
    return _pretrain(
        demo_dir,
        demo_workdir / "forecast",
        "--set",
        "LSTM_HIDDEN_DIM=16",
        "--set",
        "EMBEDDING_DIM=8",
        "--set",
        "FUTURE_INPUTS=[]",
    )


@pytest.fixture(scope="session")
def pretrained_future(demo_dir, demo_workdir) -> Path:
    """A one-epoch forecast checkpoint with the default future inputs (all forcings known over
    the lead days), SEQ_LEN 5, PRED_LEN 3, horizon weights 3, 2, 1."""
    return _pretrain(
        demo_dir,
        demo_workdir / "future",
        "--seq_len",
        "5",
        "--pred_len",
        "3",
        "--horizon_weights",
        "3,2,1",
        "--set",
        "LSTM_HIDDEN_DIM=16",
        "--set",
        "EMBEDDING_DIM=8",
    )


@pytest.fixture(scope="session")
def pretrained_simulate(demo_dir, demo_workdir) -> Path:
    """A one-epoch SCA2LSTM checkpoint in simulate mode (30-day windows, last 10 days scored)."""
    return _pretrain(
        demo_dir,
        demo_workdir / "simulate",
        "--mode",
        "simulate",
        "--seq_len",
        "30",
        "--set",
        "PREDICT_LAST_N=10",
        "--set",
        "LSTM_HIDDEN_DIM=16",
        "--set",
        "EMBEDDING_DIM=8",
    )
