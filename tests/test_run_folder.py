"""utils.RunFolder: the one run-folder lifecycle every stage uses."""

from __future__ import annotations

import pytest

from utils import LogBacklog, RunFolder, log, unique_path

CONFIG = {
    "MODE": "simulate",
    "SEQ_LEN": 30,
    "PRED_LEN": 1,
    "LSTM_HIDDEN_DIM": 8,
    "NUM_LAYERS": 1,
    "EMBEDDING_DIM": 4,
    "N_EPOCHS": 1,
    "BATCH_SIZE": 4,
    "LR": 1e-3,
    "SEED": 1,
    "TRAIN_BASINS": ["1"],
    "VAL_BASINS": ["1"],
    "TEST_BASINS": ["1"],
    "TRAIN_START": "2000-01-01",
    "TRAIN_END": "2000-12-31",
    "VAL_START": "2001-01-01",
    "VAL_END": "2001-12-31",
    "TEST_START": "2002-01-01",
    "TEST_END": "2002-12-31",
}


def test_run_folder_writes_log_and_config(tmp_path):
    with RunFolder(tmp_path, "stage.log", CONFIG) as folder:
        log.info("inside the run")
    assert folder.path.parent == tmp_path
    assert "inside the run" in (folder.path / "stage.log").read_text()
    assert "SEQ_LEN: 30" in (folder.path / "config.yaml").read_text()


def test_failed_run_leaves_no_folder(tmp_path):
    with pytest.raises(RuntimeError), RunFolder(tmp_path, "stage.log", CONFIG):
        raise RuntimeError("training failed")
    assert list(tmp_path.iterdir()) == []


def test_failed_run_keeps_folder_with_checkpoint(tmp_path):
    def keep(path):
        return (path / "last_model.pth").exists()

    with pytest.raises(KeyboardInterrupt), RunFolder(tmp_path, "stage.log", keep=keep) as folder:
        (folder.path / "last_model.pth").write_bytes(b"x")
        raise KeyboardInterrupt
    assert (folder.path / "last_model.pth").is_file()


def test_failed_resume_never_removes_the_resumed_folder(tmp_path):
    earlier = tmp_path / "earlier_run"
    earlier.mkdir()
    (earlier / "history.csv").write_text("epoch\n1\n")
    with pytest.raises(RuntimeError), RunFolder(tmp_path, "stage.log", resume=earlier):
        raise RuntimeError("resume failed")
    assert (earlier / "history.csv").read_text() == "epoch\n1\n"


def test_hidden_folder_is_renamed_on_success_with_the_backlog(tmp_path):
    backlog = LogBacklog().attach()
    try:
        log.info("said before the folder existed")
        with RunFolder(tmp_path, "predict.log", hidden=True, backlog=backlog) as folder:
            building = folder.path
            assert building.name.startswith(".predict-")
            (building / "predictions.csv").write_text("a\n1\n")
    finally:
        log.removeHandler(backlog)
    assert not building.exists()
    assert [p.name for p in tmp_path.iterdir()] == [folder.path.name]
    text = (folder.path / "predict.log").read_text()
    assert "said before the folder existed" in text
    assert f"outputs in {folder.path}" in text


def test_hidden_folder_removed_on_failure(tmp_path):
    with pytest.raises(ValueError), RunFolder(tmp_path, "predict.log", hidden=True):
        raise ValueError("plot failed")
    assert list(tmp_path.iterdir()) == []


def test_unique_path_files_and_folders_never_collide(tmp_path):
    files = {unique_path(tmp_path, "summary_", ".csv", folder=False) for _ in range(3)}
    folders = {unique_path(tmp_path) for _ in range(3)}
    assert len(files) == 3 and all(p.is_file() and p.suffix == ".csv" for p in files)
    assert len(folders) == 3 and all(p.is_dir() for p in folders)
