"""Shared fixtures: the real CAMELS-GB sample, configs that write into tmp folders, broken copies.

Real-data tests read the folder named by ``CAMELS_GB_DIR`` (the CI sets it to ../shared/camels_gb).
Unset: they are skipped. Set but unreadable: they fail, so a broken CI path is never a silent skip.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import hydrologyDataset as hd
from utils import UserError, load_config

# The demo-data fixtures (demo_dir, demo_workdir, pretrained_forecast, pretrained_simulate),
# one instance per session for every test module.
pytest_plugins = ["demo_fixtures"]

SAMPLE_BASINS = (
    "10002", "10003", "22001", "22006", "32006", "39025",
    "42003", "45003", "51001", "54017", "75003", "79005",
)  # fmt: skip


@pytest.fixture(scope="session")
def camels_gb_dir() -> Path:
    """The real CAMELS-GB sample folder (official layout)."""
    value = os.environ.get("CAMELS_GB_DIR")
    if not value:
        pytest.skip(
            "CAMELS_GB_DIR is not set: these tests need the 12-catchment CAMELS-GB sample (CI sets "
            "it); tests/test_real_fixture.py covers the real-data path on the bundled fixture"
        )
    path = Path(value).expanduser().resolve()  # tests symlink to it from other folders
    if not path.is_dir():
        pytest.fail(f"CAMELS_GB_DIR={value} is set but is not a readable folder")
    try:
        source = hd.find_source(path)
    except (UserError, OSError) as err:
        pytest.fail(f"CAMELS_GB_DIR={value} is set but holds no readable CAMELS-GB data: {err}")
    missing = sorted(set(SAMPLE_BASINS) - set(source.basins))
    if missing:
        pytest.fail(f"CAMELS_GB_DIR={value} lacks the sample basins {missing}")
    return path


@pytest.fixture(scope="session")
def session_input_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model_input_data")


@pytest.fixture(scope="session")
def base_config(session_input_dir) -> dict:
    """run.config for data_process, with the model input data in a session tmp folder."""
    return load_config(stage="data_process", overrides=[f"INPUT_DIR={session_input_dir}"])


@pytest.fixture(scope="session")
def real_data(camels_gb_dir, base_config) -> hd.InputData:
    """All 12 sample basins, loaded once per session (about a second)."""
    return hd.load_input_data(base_config, camels_gb_dir, list(SAMPLE_BASINS), workers=2)


@pytest.fixture
def input_dir(tmp_path) -> Path:
    return tmp_path / "model_input_data"


@pytest.fixture
def dp_args(input_dir):
    """Build ``data_process.main`` arguments that write into this test's tmp folder."""

    def make(data_dir: Path, *extra: str) -> list[str]:
        return ["--data_dir", str(data_dir), "--set", f"INPUT_DIR={input_dir}", *extra]

    return make


@pytest.fixture
def data_copy(tmp_path, camels_gb_dir):
    """Make a data folder in tmp_path: links to the real files, with some CSVs rewritten.

    ``data_copy({"10002": edit})`` links every sample timeseries and attribute table, except that
    basin 10002's CSV is a copy whose lines pass through ``edit(lines) -> lines``. Attribute
    tables are edited the same way when keyed by group name ('topographic', ...).
    """

    def make(edits: dict | None = None, basins=SAMPLE_BASINS, name: str = "camels") -> Path:
        edits = edits or {}
        source = hd.find_source(camels_gb_dir)
        root = tmp_path / name
        (root / "timeseries").mkdir(parents=True)
        (root / "attributes").mkdir()
        files = [(root / "timeseries", b, source.timeseries[b]) for b in basins]
        files += [(root / "attributes", g, p) for g, p in source.attributes.items()]
        for folder, key, path in files:
            target = folder / path.name
            if key in edits:
                lines = path.read_text(encoding="utf-8").splitlines()
                target.write_text("\n".join(edits[key](lines)) + "\n", encoding="utf-8")
            else:
                target.symlink_to(path)
        return root

    return make


@pytest.fixture
def sca2lstm_log(caplog):
    """Capture the toolkit's log records (its logger does not propagate to the root logger)."""
    logger = logging.getLogger("sca2lstm")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.DEBUG)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture(autouse=True)
def _fresh_toolkit_logger():
    """Each test starts and ends without toolkit log handlers (they would hold closed streams)."""
    logger = logging.getLogger("sca2lstm")
    yield
    for handler in list(logger.handlers):
        if getattr(handler, "_sca2lstm_stdout", False) or isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            if isinstance(handler, logging.FileHandler):
                handler.close()
