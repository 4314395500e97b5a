"""The recipes in configs/: valid keys, minimal, and the same settings the benchmarks measured."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import fine_train
import sca2lstm
from utils import STAGES, load_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import fine_tune_quality  # noqa: E402
import forecast_quality  # noqa: E402
import hyperopt_quality  # noqa: E402
import pretrain_quality  # noqa: E402

RECIPES = REPO / "configs"
SAMPLE = "10002 10003 22001 22006 32006 39025 42003 45003 51001 54017 75003 79005".split()
TRAIN5 = ["32006", "42003", "51001", "75003", "79005"]
# One resolved value per recipe: file -> (stage, key, value)
CHECKS = {
    "simulate_lees2021.yaml": ("pretrain", "TRAIN_BASINS", SAMPLE),
    "zero_shot.yaml": ("pretrain", "VAL_BASINS", TRAIN5),
    "forecast.yaml": ("pretrain", "BATCH_SIZE_GPU", 256),
    "forecast_future.yaml": ("pretrain", "PRED_LEN", 7),
    "fine_tune.yaml": ("fine_tune", "SAMPLES_PER_EPOCH", 1024),
    "fine_tune_365.yaml": ("pretrain", "SEQ_LEN", 365),
}
# Where the run folders go, and the seed: set by whoever runs a recipe, not by it.
RUN_KEYS = ("OUTPUT_DIR", "INPUT_DIR", "SEED")


def recipe_data(name: str) -> dict:
    return yaml.safe_load((RECIPES / name).read_text(encoding="utf-8"))


def without_run_keys(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RUN_KEYS}


def test_every_recipe_is_checked():
    assert sorted(p.name for p in RECIPES.iterdir()) == sorted(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_recipe_loads_for_every_stage(name):
    for stage in STAGES:  # unknown keys or wrong types in any section would raise here
        load_config(RECIPES / name, stage=stage)
    stage, key, value = CHECKS[name]
    assert load_config(RECIPES / name, stage=stage)[key] == value


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_recipe_holds_only_what_it_changes(name):
    data = recipe_data(name)
    assert data and set(data) <= set(STAGES), "recipes keep their keys in stage sections"
    for stage, keys in data.items():
        base, resolved = load_config(stage=stage), load_config(RECIPES / name, stage=stage)
        same = [k for k in keys if resolved[k] == base[k]]
        assert not same, f"{name} [{stage}] repeats run.config's value of {same}"


def test_sca2lstm_cli_reads_the_lees_recipe():
    args = sca2lstm.build_parser().parse_args(["--config", "configs/simulate_lees2021.yaml"])
    config = sca2lstm.resolve_pretrain_config(args)
    assert (config["MODE"], config["SEQ_LEN"], config["PREDICT_LAST_N"]) == ("simulate", 365, 180)
    assert config["TRAIN_BASINS"] == config["TEST_BASINS"] == SAMPLE
    assert config["VAL_BASINS"] == [b for b in SAMPLE if b != "10003"]
    assert config["EMA_DECAY"] == pytest.approx(0.99)


def pretrain_config(argv: list[str]) -> dict:
    return sca2lstm.resolve_pretrain_config(sca2lstm.build_parser().parse_args(argv))


@pytest.mark.parametrize("scenario", sorted(pretrain_quality.RECIPES))
def test_pretrain_benchmark_resolves_to_its_recipe(scenario):
    a = pretrain_quality.build_parser().parse_args(["--scenario", scenario, "--data_dir", "x"])
    got = pretrain_config([*pretrain_quality.scenario_args(a), "--seed", "1"])
    want = load_config(pretrain_quality.RECIPES[scenario], stage="pretrain", flags={"SEED": 1})
    assert got == want


@pytest.mark.parametrize("scenario", sorted(forecast_quality.RECIPES))
def test_forecast_benchmark_resolves_to_its_recipe(scenario):
    a = forecast_quality.build_parser().parse_args(["--scenario", scenario, "--data_dir", "x"])
    variants = forecast_quality.variants(a)
    recipe = forecast_quality.RECIPES[scenario]
    want = load_config(recipe, stage="pretrain", flags={"SEED": 1})
    first = pretrain_config([*next(iter(variants.values())), "--seed", "1"])
    if scenario == "horizon":  # the recipe's weights against uniform ones
        assert want["HORIZON_WEIGHTS"] == [1.5, 1.5, 1.2, 1.0, 1.0, 0.9, 0.9]
        assert first == {**want, "HORIZON_WEIGHTS": None}
        assert pretrain_config([*variants["weighted"], "--seed", "1"]) == want
    else:
        assert first == want
    if scenario == "baseline":
        assert want == load_config(
            pretrain_quality.RECIPES["forecast"], stage="pretrain", flags={"SEED": 1}
        )
        assert want["FUTURE_INPUTS"] == [] and want["PRED_LEN"] == 1
    else:
        assert (want["FUTURE_INPUTS"], want["PRED_LEN"], want["SEQ_LEN"]) == (None, 7, 365)


def test_forecast_benchmark_takes_horizon_weights_only_for_the_horizon_scenario(capsys):
    argv = ["--scenario", "future", "--data_dir", "x", "--horizon_weights", "2,1,1,1,1,1,1"]
    with pytest.raises(SystemExit) as exit_info:
        forecast_quality.main(argv)
    assert exit_info.value.code == 2
    assert "--set HORIZON_WEIGHTS" in capsys.readouterr().err
    a = forecast_quality.build_parser().parse_args(["--scenario", "horizon", *argv[2:]])
    weighted = pretrain_config([*forecast_quality.variants(a)["weighted"], "--seed", "1"])
    assert weighted["HORIZON_WEIGHTS"] == [2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def _lead_table(path: Path, last_lead: dict[str, float]) -> None:
    """A 2-lead table in the layout forecast_quality.py writes: lead 1 above persistence."""
    rows = []
    for basin, nse in last_lead.items():
        rows.append({"basin": basin, "lead": 1, "nse_mean": 0.9, "persistence_nse": 0.5})
        rows.append({"basin": basin, "lead": 2, "nse_mean": nse, "persistence_nse": 0.0})
    table = pd.DataFrame(rows)
    table["beats_persistence"] = table["nse_mean"] > table["persistence_nse"]
    table.to_csv(path, index=False)


def test_forecast_benchmark_checks_a_saved_table_by_median_and_basin_by_basin(tmp_path, capsys):
    table, reference = tmp_path / "future.csv", tmp_path / "simulate.csv"
    # Median 0.80 against 0.65: at or above; basin 3 is 0.05 below its reference.
    _lead_table(table, {"b1": 0.80, "b2": 0.90, "b3": 0.60})
    pd.DataFrame({"basin": ["b1", "b2", "b3"], "nse_mean": [0.70, 0.50, 0.65]}).to_csv(
        reference, index=False
    )
    argv = ["--scenario", "future", "--data_dir", "x", "--from_table", str(table)]
    forecast_quality.main([*argv, "--simulate_reference", str(reference)])
    out = capsys.readouterr().out
    assert (
        "last lead median NSE 0.800 vs simulate-mode zero-shot 0.650 over 3 basins: at or above"
        in out
    )
    assert "last lead at or above in every basin: False (2 of 3; below: b3 -0.0500)" in out
    assert "lead 1 median NSE, the mean of the seeds: 0.900 (target >= 0.85): met" in out
    # Every basin above, median below is impossible; a median below is named as such.
    pd.DataFrame({"basin": ["b1", "b2", "b3"], "nse_mean": [0.85, 0.95, 0.55]}).to_csv(
        reference, index=False
    )
    forecast_quality.main([*argv, "--simulate_reference", str(reference)])
    out = capsys.readouterr().out
    assert "0.800 vs simulate-mode zero-shot 0.850 over 3 basins: BELOW" in out
    assert "(1 of 3; below: b1 -0.0500, b2 -0.0500)" in out


def test_forecast_benchmark_refuses_a_missing_or_foreign_table(tmp_path, capsys):
    argv = ["--scenario", "future", "--data_dir", "x", "--from_table"]
    with pytest.raises(SystemExit) as exit_info:
        forecast_quality.main([*argv, str(tmp_path / "none.csv")])
    assert exit_info.value.code == 2
    assert "none.csv does not exist" in capsys.readouterr().err
    foreign = tmp_path / "foreign.csv"
    pd.DataFrame({"basin": ["b1"], "nse": [0.5]}).to_csv(foreign, index=False)
    with pytest.raises(SystemExit) as exit_info:
        forecast_quality.main([*argv, str(foreign)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lacks the column(s) beats_persistence, lead, nse_mean, persistence_nse" in err
    # Training flags would do nothing with a table: refused, by name.
    with pytest.raises(SystemExit) as exit_info:
        forecast_quality.main([*argv, str(foreign), "--epochs", "3", "--ensemble"])
    assert exit_info.value.code == 2
    assert "--epochs, --ensemble would do nothing" in capsys.readouterr().err


def test_pretrain_benchmark_flags_change_the_recipe():
    argv = ["--scenario", "all12", "--data_dir", "x", "--seq_len", "180", "--dropout", "0.1"]
    a = pretrain_quality.build_parser().parse_args(argv)
    config = pretrain_config(pretrain_quality.scenario_args(a))
    assert (config["SEQ_LEN"], config["DROPOUT"], config["N_EPOCHS"]) == (180, 0.1, 40)


# The sca2lstm.py arguments that the measured runs of benchmarks/README.md passed, before the
# recipes existed (pretrain_quality.py built them from its own defaults and flags).
_COMMON = (
    "--batch_size {batch} --learning_rate 0.001 --accumulation_steps 1 "
    "--set LSTM_HIDDEN_DIM=64 --set NUM_LAYERS=1 --set EMBEDDING_DIM=32 --set DROPOUT=0.2 "
    "--set SAMPLES_PER_EPOCH={samples} --set PATIENCE={patience} --set WARMUP_STEPS=50"
)
_SIMULATE = _COMMON.format(batch=64, samples=4096, patience=10) + (
    " --epochs 40 --mode simulate --seq_len 365 --set PREDICT_LAST_N=180 --set EMA_DECAY=0.99"
)
# all12 since the Optuna search's settings (benchmarks/README.md, the ensemble of 3 seeds)
_SEARCHED = (
    "--batch_size 32 --learning_rate 0.0024 --set LSTM_HIDDEN_DIM=128 --set EMBEDDING_DIM=64 "
    "--set DROPOUT=0.3 --set WEIGHT_DECAY=1.3e-5"
)
MEASURED = {
    # measured before FUTURE_INPUTS existed: the windows ended on the forecast day
    "forecast": _COMMON.format(batch=256, samples=0, patience=8)
    + " --epochs 15 --mode forecast --seq_len 3 --pred_len 1 --set FUTURE_INPUTS=[]",
    "all12": f"{_SIMULATE} {_SEARCHED}"
    + f" --train_basins {','.join(SAMPLE)} --test_basins {','.join(SAMPLE)}"
    + f" --val_basins {','.join(b for b in SAMPLE if b != '10003')}",
    "zeroshot": _SIMULATE
    + f" --train_basins {','.join(TRAIN5)} --val_basins {','.join(TRAIN5)}"
    + " --test_basins 10002,10003,22001,22006,39025,45003,54017",
}


# benchmarks/README.md: the flags that give the all-12 runs measured before the search's settings
BEFORE_SEARCH = (
    "--hidden 64 --embedding_dim 32 --dropout 0.2 --batch_size 64 --learning_rate 1e-3 "
    "--set WEIGHT_DECAY=1e-4"
)


def test_before_search_flags_restore_the_earlier_all12_protocol():
    argv = ["--scenario", "all12", "--data_dir", "x", *shlex.split(BEFORE_SEARCH)]
    a = pretrain_quality.build_parser().parse_args(argv)
    got = pretrain_config(pretrain_quality.scenario_args(a))
    earlier = MEASURED["all12"].replace(_SEARCHED, "")
    # the runs before set --batch_size and --learning_rate, which set the GPU keys too
    assert without_run_keys(got) == without_run_keys(pretrain_config(shlex.split(earlier)))


@pytest.mark.parametrize("scenario", sorted(MEASURED))
def test_recipe_equals_the_measured_protocol(scenario):
    measured = pretrain_config(shlex.split(MEASURED[scenario]))
    recipe = load_config(pretrain_quality.RECIPES[scenario], stage="pretrain")
    assert measured == recipe


FINE_TUNE_MEASURED = {  # benchmarks/README.md, the fine-tuned zero-shot protocol
    "pretrain": "--mode simulate --seq_len 180 --epochs 20 --set PREDICT_LAST_N=90 "
    "--set LSTM_HIDDEN_DIM=64 --set NUM_LAYERS=1 --set EMBEDDING_DIM=32 --set DROPOUT=0.2 "
    "--set BATCH_SIZE=64 --set SAMPLES_PER_EPOCH=2048 --set LR=1.0e-3 "
    "--set GRADIENT_ACCUMULATION=1 --set WARMUP_STEPS=50 --set PATIENCE=8",
    "fine_tune": "--epochs 10 --set BATCH_SIZE=64 --set SAMPLES_PER_EPOCH=1024 "
    "--set LR=5.0e-4 --set PATIENCE=4",
}
_TUNE_ARGS = ["--target_basin", "22001", "--pretrained_model", "x.pth"]


def fine_tune_config(argv: list[str]) -> dict:
    args = fine_train.build_parser().parse_args([*_TUNE_ARGS, *argv])
    return fine_train.resolve_fine_tune_config(args)


def test_fine_tune_recipe_equals_the_measured_protocol():
    recipe = RECIPES / "fine_tune.yaml"
    measured = pretrain_config(shlex.split(FINE_TUNE_MEASURED["pretrain"]))
    # the measured CPU runs set LR only; the recipe sets LR_GPU to match
    want = without_run_keys(load_config(recipe, stage="pretrain"))
    assert without_run_keys(measured) | {"LR_GPU": 1.0e-3} == want
    measured = fine_tune_config(shlex.split(FINE_TUNE_MEASURED["fine_tune"]))
    # --fine_tune_set BATCH_SIZE and LR left the GPU keys at their fine_tune defaults
    gpu = {"BATCH_SIZE_GPU": 64, "LR_GPU": 5.0e-4}
    assert measured | gpu == load_config(recipe, stage="fine_tune")


def test_fine_tune_benchmark_passes_its_recipe_to_both_stages(tmp_path):
    args = fine_tune_quality.build_parser().parse_args(["--data_dir", "x"])
    recipe = Path(args.config)
    assert recipe == RECIPES / "fine_tune.yaml"
    pre = pretrain_config(fine_tune_quality._pretrain_argv(args, "1", tmp_path))
    assert without_run_keys(pre) == without_run_keys(load_config(recipe, stage="pretrain"))
    argv = fine_tune_quality._fine_tune_argv(args, "1", "22001", tmp_path / "c.pth", tmp_path)
    tune = fine_train.resolve_fine_tune_config(fine_train.build_parser().parse_args(argv))
    assert without_run_keys(tune) == without_run_keys(load_config(recipe, stage="fine_tune"))


def test_hyperopt_benchmark_compares_the_search_with_the_hand_picked_settings(tmp_path):
    a = hyperopt_quality.build_parser().parse_args(["--data_dir", "x"])
    hand = pretrain_config(hyperopt_quality.protocol_args(a, tmp_path))
    recipe = load_config(hyperopt_quality.RECIPE, stage="pretrain")
    keys = ("LSTM_HIDDEN_DIM", "EMBEDDING_DIM", "DROPOUT", "BATCH_SIZE", "LR", "WEIGHT_DECAY")
    assert [hand[k] for k in keys] == [64, 32, 0.2, 64, 1.0e-3, 1.0e-4]
    assert [recipe[k] for k in keys] == [128, 64, 0.3, 32, 2.4e-3, 1.3e-5]  # the search's
    same = ("MODE", "TRAIN_BASINS", "VAL_BASINS", "EMA_DECAY", "NUM_LAYERS")
    assert [hand[k] for k in same] == [recipe[k] for k in same]
