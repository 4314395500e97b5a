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


def _pretrain(demo_dir: Path, work: Path, *extra: str) -> Path:
    import sca2lstm

    result = sca2lstm.main(demo_args(demo_dir, work, "--dry-run", "--device", "cpu", *extra))
    return Path(result["checkpoint"])


@pytest.fixture(scope="session")
def pretrained_forecast(demo_dir, demo_workdir) -> Path:
    """A one-epoch SCA2LSTM checkpoint in forecast mode (SEQ_LEN 3, PRED_LEN 1)."""
    return _pretrain(
        demo_dir,
        demo_workdir / "forecast",
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
