"""run.config and load_config: keys, types, precedence and impossible values."""

from __future__ import annotations

import pytest
import yaml

from utils import DEFAULT_CONFIG, SCHEMA, STAGES, UserError, load_config


def write_config(tmp_path, data: dict | str):
    path = tmp_path / "extra.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def test_run_config_loads_with_every_schema_key():
    config = load_config()
    assert set(config) == set(SCHEMA)
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    assert set(raw) - set(STAGES) == set(SCHEMA)
    assert isinstance(config["LR"], float) and config["LR"] == pytest.approx(1.0e-3)
    assert isinstance(config["SEQ_LEN"], int) and not isinstance(config["SEQ_LEN"], bool)
    assert all(isinstance(b, str) for key in ("TRAIN_BASINS", "TEST_BASINS") for b in config[key])


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_loads(stage):
    assert set(load_config(stage=stage)) == set(SCHEMA)


def test_unknown_stage_is_a_programming_error():
    with pytest.raises(ValueError):
        load_config(stage="training")


def test_unknown_key_in_config_file_raises(tmp_path):
    with pytest.raises(UserError, match="LEARNING_RATE") as err:
        load_config(write_config(tmp_path, {"LEARNING_RATE": 0.1}))
    assert str(tmp_path / "extra.yaml") in str(err.value)


def test_unknown_key_in_stage_section_raises(tmp_path):
    with pytest.raises(UserError, match="EPOCHS"):
        load_config(write_config(tmp_path, {"fine_tune": {"EPOCHS": 3}}), stage="fine_tune")


def test_unknown_key_in_set_raises():
    with pytest.raises(UserError, match=r"'SEQLEN'.*--set"):
        load_config(overrides=["SEQLEN=10"])


def test_set_without_equals_raises():
    with pytest.raises(UserError, match="KEY=VALUE"):
        load_config(overrides=["SEQ_LEN"])


@pytest.mark.parametrize(
    "item",
    [
        "SEQ_LEN=abc",
        "SEQ_LEN=1.5",
        "SEQ_LEN=true",
        "LR=fast",
        "USE_COMPILE=1",
        "TRAIN_BASINS={a: 1}",
    ],
)
def test_type_errors_raise(item):
    key = item.partition("=")[0]
    with pytest.raises(UserError, match=key):
        load_config(overrides=[item])


def test_type_error_in_config_file_raises(tmp_path):
    with pytest.raises(UserError, match="DYNAMIC_INPUTS"):
        load_config(write_config(tmp_path, "DYNAMIC_INPUTS: {precipitation: 1}\n"))


def test_exponent_without_dot_coerces_to_float(tmp_path):
    # PyYAML reads 1e-3 as the string '1e-3'
    assert yaml.safe_load("LR: 1e-3")["LR"] == "1e-3"
    config = load_config(write_config(tmp_path, "LR: 1e-3\nDROPOUT: 0\n"))
    assert config["LR"] == pytest.approx(1e-3) and isinstance(config["LR"], float)
    assert config["DROPOUT"] == 0.0 and isinstance(config["DROPOUT"], float)
    assert load_config(overrides=["LR=2e-4"])["LR"] == pytest.approx(2e-4)


def test_stage_section_overrides_top_level():
    assert load_config(stage="fine_tune")["LR"] == pytest.approx(1e-4)
    assert load_config(stage="pretrain")["LR"] == pytest.approx(1e-3)
    assert load_config(stage="pso_lstm")["SEQ_LEN"] == 12
    assert load_config()["SEQ_LEN"] == 3


def test_precedence_run_config_stage_file_set(tmp_path):
    path = write_config(
        tmp_path,
        {"LR": 2.0e-4, "N_EPOCHS": 9, "PATIENCE": 3, "fine_tune": {"N_EPOCHS": 7}},
    )
    config = load_config(path, stage="fine_tune")
    assert config["LR"] == pytest.approx(2.0e-4)  # file top level beats run.config [fine_tune]
    assert config["N_EPOCHS"] == 7  # file [fine_tune] beats file top level
    assert config["PATIENCE"] == 3  # file top level beats run.config [fine_tune] (8)
    assert config["WEIGHT_DECAY"] == pytest.approx(1.0e-5)  # run.config [fine_tune] kept
    assert load_config(path, stage="pretrain")["N_EPOCHS"] == 9
    config = load_config(path, stage="fine_tune", overrides=["LR=3.0e-4", "N_EPOCHS=2"])
    assert config["LR"] == pytest.approx(3.0e-4)
    assert config["N_EPOCHS"] == 2


def test_basin_ids_become_strings(tmp_path):
    config = load_config(write_config(tmp_path, "TRAIN_BASINS: [32006, 42003]\n"))
    assert config["TRAIN_BASINS"] == ["32006", "42003"]
    assert load_config(overrides=["TEST_BASINS=22001,22006"])["TEST_BASINS"] == ["22001", "22006"]
    assert load_config(overrides=["VAL_BASINS=75003"])["VAL_BASINS"] == ["75003"]


def test_non_numeric_basin_id_raises():
    with pytest.raises(UserError, match="TEST_BASINS"):
        load_config(overrides=["TEST_BASINS=[abc]"])


def test_period_ending_before_it_starts_raises(tmp_path):
    path = write_config(tmp_path, 'TRAIN_START: "1990-01-01"\nTRAIN_END: "1989-12-31"\n')
    with pytest.raises(UserError, match="train period ends"):
        load_config(path)


def test_unparseable_period_date_raises(tmp_path):
    with pytest.raises(UserError, match="TEST_END"):
        load_config(write_config(tmp_path, 'TEST_END: "2008-02-30"\n'))


def test_plain_iso_dates_are_accepted(tmp_path):
    # YAML reads an unquoted 2000-01-01 as a datetime.date
    assert load_config(overrides=["TEST_START=2000-01-01"])["TEST_START"] == "2000-01-01"
    config = load_config(write_config(tmp_path, "TEST_END: 2009-06-30\n"))
    assert config["TEST_END"] == "2009-06-30"


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.2"])
def test_fine_tune_ratio_outside_open_unit_interval_raises(ratio):
    with pytest.raises(UserError, match="FINE_TUNE_RATIO"):
        load_config(overrides=[f"FINE_TUNE_RATIO={ratio}"])


def test_static_clamp_accepts_null_and_rejects_negative_margins():
    assert load_config(overrides=["STATIC_CLAMP=null"])["STATIC_CLAMP"] is None
    assert load_config(overrides=["STATIC_CLAMP=0"])["STATIC_CLAMP"] == 0.0
    with pytest.raises(UserError, match="STATIC_CLAMP must be 0 or more"):
        load_config(overrides=["STATIC_CLAMP=-0.5"])


def test_fine_tune_ratio_inside_is_accepted():
    assert load_config(overrides=["FINE_TUNE_RATIO=0.5"])["FINE_TUNE_RATIO"] == 0.5


def test_missing_or_invalid_config_file_raises(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(write_config(tmp_path, "LR: [1.0\n"))


def test_data_dir_may_be_null_or_a_path():
    assert load_config()["DATA_DIR"] is None
    assert load_config(overrides=["DATA_DIR=/data/camels"])["DATA_DIR"] == "/data/camels"


def test_numeric_set_value_for_a_string_key_is_kept_as_text():
    assert load_config(overrides=["CUDA_VISIBLE_DEVICES=0"])["CUDA_VISIBLE_DEVICES"] == "0"


def test_set_cannot_name_a_stage_section():
    with pytest.raises(UserError, match="keys, not sections"):
        load_config(overrides=["fine_tune=3"])


@pytest.mark.parametrize(
    "dim, pair, match",
    [
        ("dropout", [0.0, 1.2], r"PSO_BOUNDS.dropout \[0, 1.2\]: dropout must lie in \[0, 1\)"),
        ("num_layers", [0, 2], "num_layers takes whole numbers of at least 1"),
        ("learning_rate", [0, 0.01], "the learning rate must be positive"),
        ("hidden_size", [64, 16], "the lower bound is above the upper bound"),
    ],
)
def test_impossible_pso_bounds_in_a_config_are_refused_before_any_run(tmp_path, dim, pair, match):
    recipe = tmp_path / "bounds.yaml"
    recipe.write_text(yaml.safe_dump({"PSO_BOUNDS": {dim: pair}}))
    with pytest.raises(UserError, match=match):
        load_config(recipe, stage="pso_lstm")


@pytest.mark.parametrize("key", ["PSO_C1", "PSO_W", "WEIGHT_DECAY"])
def test_negative_coefficients_are_refused_by_the_config_check(key):
    with pytest.raises(UserError, match=f"{key} must be 0 or more"):
        load_config(overrides={key: -0.5})
