"""What a new user hits first: output folders, resuming, the shared checkpoint, threads."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from demo_fixtures import demo_args

import hydrologyDataset as hd
import sca2lstm
from utils import (
    UserError,
    denormals_flushed,
    load_checkpoint,
    load_config,
    resolve_device,
    save_checkpoint,
    set_flush_denormal,
    set_threads,
)

REPO = Path(__file__).resolve().parents[1]
ONE_BASIN = ("--train_basins", "32006", "--val_basins", "32006", "--test_basins", "22001")
TINY = ("--set", "LSTM_HIDDEN_DIM=8", "--set", "EMBEDDING_DIM=4", "--set", "PATIENCE=0")


@pytest.mark.slow
def test_unwritable_output_dir_is_one_error_before_any_work(
    demo_dir,
    demo_workdir,
    pretrained_forecast,
    tmp_path,
):
    impossible = "/proc/sca2lstm-output"  # no one can create a folder under /proc, root included
    data = ["--data_dir", str(demo_dir), "--set", f"INPUT_DIR={demo_workdir / 'model_input_data'}"]
    ckpt = str(pretrained_forecast)
    commands = {
        "sca2lstm.py": ["--dry-run", *ONE_BASIN],
        "fine_train.py": ["--target_basin", "22001", "--pretrained_model", ckpt],
        "predict.py": ["--model", ckpt, "--basin", "22001"],
        "pso_lstm.py": ["--basin_id", "22001", "--no_pso"],
    }
    procs = {
        script: subprocess.Popen(
            [sys.executable, str(REPO / script), *data, *args, "--output_dir", impossible],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script, args in commands.items()
    }
    for script, proc in procs.items():
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 2, (script, stderr)
        assert "Traceback" not in stderr, script
        assert stderr.startswith("error: the output folder /proc/sca2lstm-output"), stderr
        assert "cannot be written" in stderr and "--output_dir" in stderr, stderr
        assert stderr.count("\n") == 1, stderr
    assert not Path(impossible).exists()


PROBE_RACE = """
import sys
from pathlib import Path
from utils import UserError, ensure_writable
root, me = Path(sys.argv[1]), sys.argv[2]
failures = 0
for k in range(1500):  # a fresh shared parent each time, as runs started with & meet one
    try:
        ensure_writable(root / f"out{k}" / "runs" / me, "the output folder")
    except UserError as err:
        failures += 1
        last = str(err)
print(failures, last if failures else "")
"""


def test_side_by_side_runs_never_fail_the_output_probe_of_each_other(tmp_path):
    # A bash loop with & starts runs whose output folders share a new parent: one run's clean-up
    # of an empty parent used to make another's probe fail (File exists / No such file).
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROBE_RACE, str(tmp_path), f"run{i}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.split(maxsplit=1)[0] == "0", out
    # every run folder the probes made is gone again (shared parents may stay: see utils)
    assert not list(tmp_path.glob("out*/runs/run*"))


def test_resume_keeps_the_runs_own_epoch_count(demo_dir, tmp_path):
    args = demo_args(demo_dir, tmp_path, *ONE_BASIN, *TINY, "--set", "TRAIN_START=1990-01-01")
    first = sca2lstm.main([*args, "--epochs", "1"])
    # As if that run had been asked for 2 epochs and was interrupted after the first one.
    last_path = first["run_dir"] / "last_model.pth"
    last = load_checkpoint(last_path)
    last["config"]["N_EPOCHS"] = 2
    save_checkpoint(last_path, last)
    assert load_config()["N_EPOCHS"] != 2  # run.config would say otherwise
    resumed = sca2lstm.main([*args, "--resume", str(first["run_dir"])])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    # the finished run is not reopened without a new epoch count
    with pytest.raises(UserError, match=r"finished all 2 of its epochs; pass --epochs N"):
        sca2lstm.main([*args, "--resume", str(first["run_dir"])])
    more = sca2lstm.main([*args, "--epochs", "3", "--resume", str(first["run_dir"])])
    assert [h["epoch"] for h in more["history"]] == [1, 2, 3]


def test_dry_run_leaves_the_shared_checkpoint_alone(demo_dir, tmp_path):
    pointer = tmp_path / "model_output" / "sca2lstm.pth"
    pointer.parent.mkdir(parents=True)
    pointer.write_bytes(b"a good model")
    out = sca2lstm.main(demo_args(demo_dir, tmp_path, "--dry-run", *ONE_BASIN, *TINY))
    assert pointer.read_bytes() == b"a good model"
    assert out["checkpoint"].is_file()


def test_pointer_written_by_another_run_meanwhile_is_logged(tmp_path, caplog):
    config = {**load_config(), "OUTPUT_DIR": str(tmp_path)}
    pointer = tmp_path / "sca2lstm.pth"
    started = sca2lstm._pointer_stamp(pointer)  # None: no file yet
    pointer.write_bytes(b"written by a run that finished first")
    best = {"model_state_dict": {"w": torch.zeros(1)}, "model_class": "SCA2LSTM"}
    with caplog.at_level(logging.WARNING, logger="sca2lstm"):
        written = sca2lstm.publish_pointer(best, config, tmp_path / "run", started, False)
    assert written == pointer
    assert "written by another run while this one trained" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sca2lstm"):
        sca2lstm.publish_pointer(
            best, config, tmp_path / "run", sca2lstm._pointer_stamp(pointer), False
        )
    assert "another run" not in caplog.text


def test_a_folder_given_as_checkpoint_names_the_files_inside(pretrained_forecast):
    with pytest.raises(UserError, match=r"is a folder, not a checkpoint.*best_model\.pth"):
        load_checkpoint(pretrained_forecast.parent)


def test_unknown_basin_names_the_flags_that_fix_it(demo_dir):
    source = hd.find_source(demo_dir)
    with pytest.raises(UserError, match=r"99999 not found.*--train_basins.*--target_basin"):
        source.check_basins(["99999"])


def test_threads_are_set_and_logged(caplog):
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="sca2lstm"):
            assert set_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert "CPU threads: 1 of" in caplog.text
    finally:
        torch.set_num_threads(before)
    with pytest.raises(UserError, match="NUM_THREADS must be 0 or more"):
        load_config(overrides=["NUM_THREADS=-1"])


def test_flush_denormal_follows_the_config_key():
    before = denormals_flushed()
    try:
        device = resolve_device("cpu", config=load_config(overrides=["FLUSH_DENORMAL=false"]))
        assert device.type == "cpu" and not denormals_flushed()
        tiny = torch.tensor([1.0e-37]) * 1.0e-3
        assert 0.0 < tiny.item() < 1.2e-38  # a subnormal float32 survives
        resolve_device("cpu", config=load_config())  # run.config: FLUSH_DENORMAL true
        # Where the CPU can flush (x86 with SSE3), the same product is now exactly zero.
        assert denormals_flushed() == set_flush_denormal(True)
        if denormals_flushed():
            assert (torch.tensor([1.0e-37]) * 1.0e-3).item() == 0.0
    finally:
        torch.set_flush_denormal(before)
    with pytest.raises(UserError, match="FLUSH_DENORMAL"):
        load_config(overrides=["FLUSH_DENORMAL=maybe"])


def test_predict_marks_in_sample_days(
    demo_dir, demo_workdir, pretrained_forecast, tmp_path, caplog
):
    import predict

    ckpt = load_checkpoint(pretrained_forecast)
    trained = ckpt["config"]["TRAIN_BASINS"][0]
    args = [
        "--data_dir", str(demo_dir), "--set", f"INPUT_DIR={demo_workdir / 'model_input_data'}",
        "--output_dir", str(tmp_path / "out"), "--model", str(pretrained_forecast),
        "--basins", f"{trained},22001", "--start", "1990-01-01", "--end", "1990-01-31",
        "--no_plots",
    ]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="sca2lstm"):
        metrics = predict.main(args)["metrics"].set_index("basin")
    # January 1990 lies in the training period: for a training basin every scored day is
    # in-sample, for a basin never trained on none is.
    assert metrics.loc[trained, "days_seen_in_training"] == metrics.loc[trained, "n_scored"] > 0
    assert metrics.loc["22001", "days_seen_in_training"] == 0
    assert "IN-SAMPLE" in caplog.text and "some scores are in-sample" in caplog.text


@pytest.mark.parametrize(
    ("script", "flag", "shown"),
    [
        ("sca2lstm", "--epochs", "N_EPOCHS (run.config: 5)"),
        ("sca2lstm", "--learning_rate", "(run.config: 0.001)"),
        ("fine_train", "--epochs", "(run.config: 20)"),
        ("pso_lstm", "--final_epochs", "(run.config: 20)"),
        ("predict", "--threads", "(run.config: 1)"),
    ],
)
def test_help_shows_the_run_config_default_not_none(script, flag, shown):
    import importlib

    text = " ".join(importlib.import_module(script).build_parser().format_help().split())
    assert "(default: None)" not in text
    options = text[text.index("options:") :]  # past the usage lines
    entry = options[options.index(f"{flag} ") :][:200]
    assert shown in entry, entry


@pytest.mark.slow
def test_parallel_finetune_benchmark_runs_both_schedules(demo_dir, tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import parallel_finetune

    out = tmp_path / "parallel.csv"
    table = parallel_finetune.main(
        [
            "--data_dir", str(demo_dir), "--basins", "22001,22006", "--threads", "1",
            "--epochs", "1",
            "--work_dir", str(tmp_path / "work"), "--output", str(out),
        ]
    )  # fmt: skip
    row = table.iloc[0]
    assert row["sequential_s"] > 0 and row["parallel_s"] > 0
    assert row["parallel_over_sequential"] == pytest.approx(
        row["parallel_s"] / row["sequential_s"], rel=1e-2
    )
    # every fine-tune of both schedules wrote its checkpoint
    assert len(list((tmp_path / "work" / "tune_1").rglob("best_model_basin_*.pth"))) == 4
    assert out.is_file()


def test_forecasts_without_observed_history_are_flagged(
    demo_dir, demo_workdir, pretrained_forecast, tmp_path, caplog
):
    import predict

    # 10003 has no observed flow before 1983-05-19 (in the demo data as in CAMELS-GB)
    args = [
        "--data_dir", str(demo_dir), "--set", f"INPUT_DIR={demo_workdir / 'model_input_data'}",
        "--output_dir", str(tmp_path / "out"), "--model", str(pretrained_forecast),
        "--basin", "10003", "--start", "1981-01-01", "--end", "1981-12-31",
    ]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="sca2lstm"):
        result = predict.main(args)
    assert any("of the forecasts were issued on days without observed discharge" in n
               for n in result["notes"])  # fmt: skip
    assert "rest on the forcings alone" in caplog.text
    assert (result["run_dir"] / "hydrograph_10003.png").is_file()


def test_zoom_window_is_the_year_around_the_highest_flow():
    import predict

    dates = np.arange(np.datetime64("1998-01-01"), np.datetime64("2008-12-31") + 1)
    obs = np.ones(dates.size)
    obs[dates == np.datetime64("2003-02-10")] = 50.0
    s = {"date": dates, "obs": obs}
    lo, hi = predict.zoom_window(s, dates[0], dates[-1])
    assert (hi - lo).astype(int) == 364 and lo <= np.datetime64("2003-02-10") <= hi
    # near the end of the range the year stays inside it
    obs[:] = 1.0
    obs[-3] = 9.0
    lo, hi = predict.zoom_window(s, dates[0], dates[-1])
    assert hi == dates[-1] and (hi - lo).astype(int) == 364
    assert predict.zoom_window(s, dates[0], dates[600]) is None  # two years or less: no zoom


def test_predict_records_the_checkpoints_settings_not_run_configs(
    demo_dir, demo_workdir, pretrained_simulate, tmp_path, caplog
):
    import yaml

    import predict

    saved = load_checkpoint(pretrained_simulate)["config"]
    assert (saved["MODE"], saved["SEQ_LEN"]) != (load_config()["MODE"], load_config()["SEQ_LEN"])
    args = [
        "--data_dir", str(demo_dir), "--set", f"INPUT_DIR={demo_workdir / 'model_input_data'}",
        "--output_dir", str(tmp_path / "out"), "--model", str(pretrained_simulate),
        "--basin", "22001", "--start", "2000-01-01", "--end", "2000-03-31", "--no_plots",
    ]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="sca2lstm"):
        run_dir = predict.main(args)["run_dir"]
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (written["MODE"], written["SEQ_LEN"]) == ("simulate", saved["SEQ_LEN"])
    assert f"simulate mode, SEQ_LEN {saved['SEQ_LEN']}" in caplog.text  # the short config line
    assert "resolved config: {" not in caplog.text  # the whole config lives in config.yaml


def test_pso_plot_in_the_training_period_says_in_sample_and_logs_each_line_once(
    demo_dir, demo_workdir, tmp_path, caplog
):
    import pso_lstm

    args = [
        "--data_dir", str(demo_dir), "--set", f"INPUT_DIR={demo_workdir / 'model_input_data'}",
        "--output_dir", str(tmp_path / "pso"), "--basin_id", "22001", "--no_pso",
        "--final_epochs", "1", "--hidden_size", "8", "--time_steps", "3", "--device", "cpu",
        "--set", "TRAIN_START=1985-01-01", "--set", "TRAIN_END=1986-12-31",
        "--set", "VAL_START=1984-01-01", "--set", "VAL_END=1984-12-31",
        "--set", "TEST_START=1987-01-01", "--set", "TEST_END=1987-12-31",
        "--plot_prediction", "--start", "1986-01-01", "--end", "1986-06-30",
    ]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="sca2lstm"):
        result = pso_lstm.main(args)
    assert "181 of the 181 plotted days lie in the training period" in caplog.text
    assert caplog.text.count("PSO dimensions") == 1
    assert caplog.text.count("USE_COMPILE is on but applies to CUDA devices only") <= 1
    run = result["basins"]["22001"]["run_dir"]
    assert (run / "prediction.png").is_file()
