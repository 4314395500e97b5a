"""The Optuna search (hyperopt.py) through sca2lstm.py and fine_train.py on the real sample:
results, pruning, the final model, no test-period leakage, workers sharing one study (journal
file and a real PostgreSQL server), a killed worker, bad input, the window-size comparison."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fine_train
import hyperopt
import sca2lstm
from utils import UserError, load_checkpoint, load_config

REPO = Path(__file__).resolve().parents[1]
POSTGRES_ENV = "SCA2LSTM_TEST_POSTGRES_URL"
# One basin, short periods, a micro model: a trial takes well under a second.
TINY = (
    "--train_basins", "32006", "--val_basins", "32006", "--test_basins", "22001",
    "--model_size", "micro", "--device", "cpu",
    "--set", "TRAIN_START=1990-01-01", "--set", "TRAIN_END=1991-12-31",
    "--set", "VAL_START=1992-01-01", "--set", "VAL_END=1992-12-31",
    "--set", "TEST_START=1998-01-01", "--set", "TEST_END=1998-12-31",
    "--set", "WARMUP_STEPS=0", "--set", "GRADIENT_ACCUMULATION=1",
)  # fmt: skip
SPACE = {"LR": {"choices": [1.0e-2, 10.0]}, "LSTM_HIDDEN_DIM": {"choices": [8, 16]}}
PRUNER = {"n_startup_trials": 2, "n_warmup_steps": 0, "interval_steps": 1, "n_min_trials": 1}
TPE = {
    "n_startup_trials": 2,
    "n_ei_candidates": 24,
    "multivariate": True,
    "group": False,
    "constant_liar": True,
}


def write_space(path: Path, space: dict = SPACE) -> Path:
    path.write_text(
        json.dumps({"HYPEROPT_SPACE": space, "OPTUNA_MEDIAN_PRUNER": PRUNER, "OPTUNA_TPE": TPE}),
        encoding="utf-8",
    )  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory, camels_gb_dir) -> Path:
    """Model input data of the two basins, built once so that worker processes only read it."""
    import hydrologyDataset as hd

    path = tmp_path_factory.mktemp("hyperopt_input")
    config = load_config(overrides=[f"INPUT_DIR={path}"])
    hd.load_input_data(config, camels_gb_dir, ["32006", "22001"])
    return path


def search_args(data_dir: Path, out: Path, input_dir: Path, *extra: str) -> list[str]:
    return [
        "--data_dir", str(data_dir), "--output_dir", str(out / "model_output"),
        "--set", f"INPUT_DIR={input_dir}", "--config", str(write_space(out / "space.yaml")),
        *TINY, *extra,
    ]  # fmt: skip


def journal_study(study_dir: Path, name: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(study_dir / "journal.log")))
    return optuna.load_study(study_name=name, storage=storage)


@pytest.fixture(scope="module")
def tiny_search(camels_gb_dir, tmp_path_factory) -> dict:
    """One search of 3 enqueued trials (the third with a hopeless learning rate, so it is
    pruned) and its final model: the study folder, results, trials and run folder."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    tmp_path = tmp_path_factory.mktemp("tiny_search")
    study_dir = tmp_path / "model_output" / "hyperopt" / "tiny"
    study_dir.mkdir(parents=True)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(study_dir / "journal.log")))
    study = optuna.create_study(study_name="tiny", storage=storage, direction="maximize")
    for lr, hidden in ((1.0e-2, 16), (1.0e-2, 8), (10.0, 16)):
        study.enqueue_trial({"LR": lr, "LSTM_HIDDEN_DIM": hidden})
    args = search_args(camels_gb_dir, tmp_path, tmp_path / "model_input_data", "--epochs", "2")
    out = sca2lstm.main([*args, "--enable_hyperopt", "--n_trials", "3", "--study_name", "tiny"])
    doc = json.loads((study_dir / "hyperopt_results.json").read_text())
    trials = {t["number"]: t for t in doc["trials"]}
    best = max((trials[0], trials[1]), key=lambda t: t["value"])
    return {"dir": study_dir, "root": tmp_path, "out": out, "doc": doc, "trials": trials,
            "best": best}  # fmt: skip


def test_search_results_record_budget_sampler_and_space(tiny_search):
    doc = tiny_search["doc"]
    assert doc["n_trials"] == 3 and doc["budget"] == 3
    assert doc["sampler"] == {"class": "TPESampler", "seed": 42, **TPE}
    assert doc["pruner"] == {"class": "MedianPruner", **PRUNER}
    assert doc["search_space"] == SPACE


def test_hopeless_trial_is_pruned_after_one_epoch(tiny_search):
    doc, trials = tiny_search["doc"], tiny_search["trials"]
    assert [trials[n]["state"] for n in range(3)] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert trials[2]["params"]["LR"] == 10.0 and trials[2]["epochs_run"] == 1
    assert doc["n_pruned"] == 1 and doc["epochs_saved_by_pruning"] == 1


def test_completed_trials_score_their_best_validation_epoch(tiny_search):
    doc, trials, best = tiny_search["doc"], tiny_search["trials"], tiny_search["best"]
    for t in (trials[0], trials[1]):
        assert t["epochs_run"] == 2 and t["seconds"] > 0
        assert t["value"] == pytest.approx(max(t["intermediate_values"].values()))
        assert t["val_nse_per_basin"]["32006"] == pytest.approx(t["intermediate_values"]["2"])
    assert doc["best_params"] == best["params"] and doc["best_score"] == best["value"]


def test_search_writes_trials_table_and_plots_but_no_test_scores(tiny_search):
    study_dir = tiny_search["dir"]
    table = pd.read_csv(study_dir / "trials.csv")
    assert list(table["state"]) == ["COMPLETE", "COMPLETE", "PRUNED"]
    for plot in ("optimization_history.png", "param_importances.png", "slice.png"):
        assert (study_dir / plot).stat().st_size > 1000
    assert not list(study_dir.glob("metrics*"))  # the search scores no test period


def test_final_model_trains_with_the_best_trial(tiny_search):
    best, run_dir = tiny_search["best"], Path(tiny_search["out"]["run_dir"])
    ckpt = load_checkpoint(tiny_search["root"] / "model_output" / "sca2lstm.pth")
    assert ckpt["config"]["LR"] == best["params"]["LR"]
    assert ckpt["config"]["LSTM_HIDDEN_DIM"] == best["params"]["LSTM_HIDDEN_DIM"]
    assert ckpt["model_args"]["hidden"] == best["params"]["LSTM_HIDDEN_DIM"]
    assert ckpt["config"]["ENABLE_HYPEROPT"] and ckpt["config"]["OPTUNA_STUDY_NAME"] == "tiny"
    assert ckpt["metrics"]["best_val_nse"] == pytest.approx(best["value"], abs=1e-6)
    source = json.loads((run_dir / "hyperopt_source.json").read_text())
    assert source["best_trial"] == best["number"] and source["study_name"] == "tiny"
    assert (run_dir / "metrics_test_period.csv").is_file()


def _poison_test_period(lines: list[str]) -> list[str]:
    # From TEST_START on, every value becomes noise within its physical range (so the data checks
    # pass): a leak of the test period into the search would change the trials.
    from hydrologyDataset import PHYSICAL_RANGES

    header = lines[0].split(",")
    out = [lines[0]]
    for line in lines[1:]:
        date, *values = line.split(",")
        if date >= "1998-01-01":
            day = int(date.replace("-", ""))
            values = [
                f"{(day * 7919 + 104729 * k) % 97 / 97 * PHYSICAL_RANGES[col][1] / 2:.2f}"
                for k, col in enumerate(header[1:])
            ]
        out.append(",".join([date, *values]))
    return out


def test_no_test_period_value_reaches_the_objective(camels_gb_dir, data_copy, tmp_path):
    poisoned = data_copy(
        {b: _poison_test_period for b in ("32006", "22001")}, basins=("32006", "22001")
    )
    runs = {}
    for name, data_dir in (("clean", camels_gb_dir), ("poisoned", poisoned)):
        work = tmp_path / name
        work.mkdir()
        args = search_args(data_dir, work, work / "input", "--epochs", "2")
        out = sca2lstm.main([*args, "--enable_hyperopt", "--n_trials", "3", "--no_pruning"])
        doc = json.loads(
            (work / "model_output/hyperopt/pretrain/hyperopt_results.json").read_text()
        )
        runs[name] = (doc, out["metrics"].set_index("basin")["nse"])
    clean, poison = runs["clean"][0], runs["poisoned"][0]
    assert [t["params"] for t in clean["trials"]] == [t["params"] for t in poison["trials"]]
    assert [t["intermediate_values"] for t in clean["trials"]] == [
        t["intermediate_values"] for t in poison["trials"]
    ]
    assert clean["best_score"] == poison["best_score"]
    # The test period itself did change: the final model's test scores see the poison.
    assert not np.allclose(runs["clean"][1].values, runs["poisoned"][1].values, atol=0.05)


def test_window_size_comparison(camels_gb_dir, input_dir, tmp_path):
    args = search_args(camels_gb_dir, tmp_path, input_dir, "--epochs", "1")
    out = sca2lstm.main([*args, "--window_sizes", "3,7", "--search_only"])
    study_dir = Path(out["study_dir"])
    assert study_dir.name == "window_sizes"
    table = pd.read_csv(study_dir / "window_comparison.csv")
    assert list(table["window_days"]) == [3, 7]
    assert {"val_median_nse", "nse_32006", "epochs", "seconds"} <= set(table)
    assert np.isfinite(table["val_median_nse"]).all() and (table["epochs"] == 1).all()
    np.testing.assert_allclose(table["nse_32006"], table["val_median_nse"])  # one basin
    assert (study_dir / "window_size_comparison.png").stat().st_size > 1000
    assert out["sampler"]["class"] == "GridSampler" and out["pruner"] == {"class": "NopPruner"}
    assert not (tmp_path / "model_output" / "pretrain").exists()  # --search_only
    assert not (tmp_path / "model_output" / "sca2lstm.pth").exists()  # trials write no model


def test_fine_train_search_uses_the_same_engine(camels_gb_dir, input_dir, tmp_path):
    base = [
        "--data_dir", str(camels_gb_dir), "--output_dir", str(tmp_path / "model_output"),
        "--set", f"INPUT_DIR={input_dir}",
    ]  # fmt: skip
    pretrained = sca2lstm.main([*base, *TINY, "--epochs", "1"])["checkpoint"]
    space = {"LR": {"low": 1.0e-4, "high": 1.0e-2, "log": True}, "UNFREEZE": {
        "choices": ["none", "embedding,lstm1"]}}  # fmt: skip
    out = fine_train.main(
        [
            *base, "--target_basin", "32006", "--pretrained_model", str(pretrained),
            "--start", "1988-01-01", "--epochs", "1", "--device", "cpu",
            "--config", str(write_space(tmp_path / "space.yaml", space)),
            "--enable_hyperopt", "--n_trials", "2",
        ]
    )  # fmt: skip
    doc = json.loads(
        (tmp_path / "model_output/hyperopt/fine_tune_basin_32006/hyperopt_results.json").read_text()
    )
    assert doc["n_trials"] == 2 and doc["stage"].startswith("fine_tune basin 32006")
    ckpt = load_checkpoint(out["checkpoint"])
    best = doc["best_params"]
    assert ckpt["config"]["LR"] == best["LR"]
    assert ckpt["unfrozen"] == fine_train.parse_unfreeze(best["UNFREEZE"])
    assert (Path(out["run_dir"]) / "hyperopt_source.json").is_file()


# --------------------------------------------------------------------------- bad input


def test_parse_space_rejects_bad_entries():
    config = load_config()
    ok = hyperopt.parse_space({"LR": {"low": 1.0e-4, "high": 1.0e-2, "log": True}}, config)
    assert ok["LR"].log and not ok["LR"].integer
    for table, needle in (
        ({"NOT_A_KEY": {"choices": [1]}}, "unknown key"),
        ({"LR": {"low": 1.0e-2, "high": 1.0e-2}}, "empty"),
        ({"LSTM_HIDDEN_DIM": {"choices": [16, "big"]}}, "must be int"),
        ({"MODE": {"low": 1, "high": 2}}, "numeric"),
        ({"LR": {"low": 0.0, "high": 1.0, "log": True}}, "log-scale"),
        ({"DROPOUT": {"low": 0.0, "high": 1.5}}, "DROPOUT must be in"),
        ({"N_TRIALS": {"choices": [1, 2]}}, "not searchable"),
        ({"LR": [1.0e-3]}, "must be a table"),
    ):
        with pytest.raises(UserError, match=needle):
            hyperopt.parse_space(table, config)
    with pytest.raises(UserError, match="UNFREEZE"):
        hyperopt.parse_space(
            {"UNFREEZE": {"choices": ["lstm9"]}},
            config,
            extra={"UNFREEZE": fine_train._check_unfreeze},
        )


def test_search_keys_are_validated_with_the_config():
    for overrides, needle in (
        ({"OPTUNA_TPE": {"n_startup_trials": 5}}, "OPTUNA_TPE must set exactly"),
        ({"OPTUNA_MEDIAN_PRUNER": {**PRUNER, "n_warmup_steps": -1}}, "n_warmup_steps"),
        ({"OPTUNA_HEARTBEAT_INTERVAL": 0}, "OPTUNA_HEARTBEAT_INTERVAL"),
        ({"OPTUNA_STUDY_NAME": "a/b"}, "OPTUNA_STUDY_NAME"),
        ({"HYPEROPT_SPACE": {"LR": 1.0e-3}}, "must be a table"),
    ):
        with pytest.raises(UserError, match=needle):
            load_config(overrides=overrides)


def test_mask_url_hides_the_password():
    masked = hyperopt.mask_url("postgresql+psycopg2://alice:s3cret@db.example:5432/optuna")
    assert "s3cret" not in masked and "***" in masked and "alice@" not in masked


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--storage", "no-scheme-here"], "is not a database URL"),
        (["--storage", "postgresql+psycopg2://bob:hunter2@127.0.0.1:1/optuna"], "cannot open"),
        (["--n_trials", "0"], "N_TRIALS"),
        (["--optuna_timeout", "-5"], "OPTUNA_TIMEOUT"),
        (["--set", "HYPEROPT_SPACE={NOPE: {choices: [1]}}"], "unknown key"),
    ],
)
def test_bad_input_is_one_error_and_leaves_no_study(
    camels_gb_dir, input_dir, tmp_path, extra, needle
):
    args = [*search_args(camels_gb_dir, tmp_path, input_dir, "--epochs", "1"), "--enable_hyperopt"]
    with pytest.raises(UserError, match=needle) as err:
        sca2lstm.main([*args, *extra])
    assert "hunter2" not in str(err.value)
    assert not (tmp_path / "model_output").exists()


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line(camels_gb_dir, input_dir, tmp_path):
    args = search_args(camels_gb_dir, tmp_path, input_dir, "--epochs", "1")
    url = "postgresql+psycopg2://bob:hunter2@127.0.0.1:1/optuna"
    proc = subprocess.run(
        [sys.executable, str(REPO / "sca2lstm.py"), *args, "--enable_hyperopt", "--storage", url],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: cannot open")
    assert "hunter2" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
    assert not (tmp_path / "model_output").exists()


def test_a_changed_space_is_refused(camels_gb_dir, input_dir, tmp_path):
    args = search_args(camels_gb_dir, tmp_path, input_dir, "--epochs", "1")
    sca2lstm.main([*args, "--enable_hyperopt", "--n_trials", "1", "--search_only"])
    study_dir = tmp_path / "model_output" / "hyperopt" / "pretrain"
    before = {p.name: p.read_bytes() for p in study_dir.iterdir()}
    other = json.dumps({"LR": {"choices": [1.0e-3, 1.0e-2]}})
    with pytest.raises(UserError, match="another search space"):
        sca2lstm.main([*args, "--set", f"HYPEROPT_SPACE={other}", "--enable_hyperopt"])
    assert {p.name: p.read_bytes() for p in study_dir.iterdir()} == before
    assert not (tmp_path / "model_output" / "pretrain").exists()


# --------------------------------------------------------------------------- several workers


def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{POSTGRES_ENV} is not set in CI: .ci/run starts PostgreSQL and sets it")
        pytest.skip(f"{POSTGRES_ENV} is not set; start a server with .ci/postgres.sh")
    return url


def storage_args(kind: str) -> list[str]:
    if kind == "journal":
        return []
    return ["--storage", postgres_url(), "--set", "OPTUNA_HEARTBEAT_INTERVAL=1"]


def load_study(kind: str, study_dir: Path, name: str):
    import optuna

    if kind == "journal":
        return journal_study(study_dir, name)
    return optuna.load_study(study_name=name, storage=postgres_url())


def worker(args: list[str], tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "sca2lstm.py"), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_two_workers_share_the_budget(kind, camels_gb_dir, input_dir, tmp_path):
    name = f"shared_{uuid.uuid4().hex[:8]}"
    args = [
        *search_args(camels_gb_dir, tmp_path, input_dir, "--epochs", "6"),
        *storage_args(kind), "--enable_hyperopt", "--n_trials", "5", "--study_name", name,
        "--search_only", "--no_pruning",
    ]  # fmt: skip
    procs = [worker(args, tmp_path) for _ in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    study = load_study(kind, tmp_path / "model_output" / "hyperopt" / name, name)
    trials = [t for t in study.get_trials() if not t.user_attrs.get("surplus")]
    assert len(trials) == 5 and sorted(t.state.name for t in trials) == ["COMPLETE"] * 5
    numbers = [t.number for t in study.get_trials()]
    assert len(set(numbers)) == len(numbers)
    assert all(t.value is not None and len(t.intermediate_values) == 6 for t in trials)
    doc = json.loads(
        (tmp_path / "model_output" / "hyperopt" / name / "hyperopt_results.json").read_text()
    )
    assert doc["n_trials"] == 5
    # Both workers ran trials (each takes several epochs, longer than a worker's start-up lag).
    assert {t.user_attrs["worker"]["pid"] for t in trials} == {p.pid for p in procs}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_killed_worker_then_the_command_again(kind, camels_gb_dir, input_dir, tmp_path):
    from optuna.trial import TrialState

    name = f"killed_{uuid.uuid4().hex[:8]}"
    study_dir = tmp_path / "model_output" / "hyperopt" / name
    args = [
        *search_args(camels_gb_dir, tmp_path, input_dir, "--epochs", "25"),
        *storage_args(kind), "--enable_hyperopt", "--n_trials", "3", "--study_name", name,
        "--search_only", "--no_pruning", "--set", "PATIENCE=0",
    ]  # fmt: skip
    proc = worker(args, tmp_path)
    deadline, study = time.time() + 240, None
    while time.time() < deadline:
        time.sleep(0.3)
        try:
            study = load_study(kind, study_dir, name)
        except (KeyError, FileNotFoundError, ValueError):
            continue  # the study does not exist yet
        states = [t.state for t in study.get_trials()]
        if TrialState.COMPLETE in states and states[-1] == TrialState.RUNNING:
            break
    proc.send_signal(signal.SIGKILL)  # mid-trial, no chance to clean up
    proc.communicate()
    study = load_study(kind, study_dir, name)
    done = {t.number: (t.params, t.value) for t in study.get_trials(states=(TrialState.COMPLETE,))}
    killed = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
    assert done and len(killed) == 1
    if kind == "postgresql":
        time.sleep(3)  # the heartbeat's grace period (2 x OPTUNA_HEARTBEAT_INTERVAL) passes
    rerun = worker(args, tmp_path)
    log = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, log[-2000:]
    study = load_study(kind, study_dir, name)
    by_number = {t.number: t for t in study.get_trials()}
    assert by_number[killed[0]].state == TrialState.FAIL
    assert {n: (by_number[n].params, by_number[n].value) for n in done} == done
    finished = [t for t in by_number.values() if t.state == TrialState.COMPLETE]
    assert len(finished) == 3
    assert f"trial {killed[0]} lost its worker" in log


def test_hyperopt_benchmark_dry_run(camels_gb_dir, tmp_path):
    from benchmarks import hyperopt_quality

    table = hyperopt_quality.main(
        ["--dry_run", "--data_dir", str(camels_gb_dir), "--work_dir", str(tmp_path / "work"),
         "--output", str(tmp_path / "quality.csv")]
    )  # fmt: skip
    assert list(table["arm"]) == ["hand_picked", "search"]
    search = table.set_index("arm").loc["search"]
    assert search["n_trials"] == 2 and search["final_epochs"] == 1
    assert np.isfinite(table["test_median_nse"]).all()
    assert {"nse_32006", "nse_42003"} <= set(table)
    doc = json.loads(
        (tmp_path / "work/out/hyperopt/hyperopt_quality/hyperopt_results.json").read_text()
    )
    assert search["best_val_nse"] == pytest.approx(doc["best_score"])
    assert pd.read_csv(tmp_path / "quality.csv").shape[0] == 2
