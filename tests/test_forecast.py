"""Multi-day forecasts with known future forcings (FUTURE_INPUTS), horizon-weighted loss and
skill by lead time, on the synthetic demo data.

The old path (FUTURE_INPUTS []) is checked against a literal copy of the forward pass as it was
before future inputs existed; no discharge observed after the forecast day may change a forecast.
"""

# The demo fixtures are imported, so pytest finds them, and then named as test parameters.
# ruff: noqa: F811

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from demo_fixtures import (  # noqa: F401
    demo_args,
    demo_dir,
    demo_workdir,
    pretrained_forecast,
    pretrained_future,
    pretrained_simulate,
    write_short_record,
)

import fine_train
import predict
import sca2lstm
from hydrologyDataset import HINDCAST_NOTE, FeatureSpec, Scalers, WindowData, load_input_data
from sca2lstm import SCA2LSTM, SCA2LSTMArgs
from utils import (
    TrainSettings,
    UserError,
    compute_metrics,
    lead_metrics_table,
    load_checkpoint,
    load_config,
    nse_star_loss,
    period,
    predict_windows,
)

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLOSE = {"rel": 1e-4, "abs": 1e-4}  # predictions.csv holds 6 significant digits


def config_for(work: Path, **overrides) -> dict:
    """run.config with a tiny model and the model input data inside ``work``."""
    base = {"INPUT_DIR": str(work), "LSTM_HIDDEN_DIM": 8, "EMBEDDING_DIM": 4, "DROPOUT": 0.0}
    return load_config(overrides={**base, **overrides})


def windows_for(config: dict, demo_dir: Path, basin: str = "22001", data=None, scalers=None):
    data = data or load_input_data(config, demo_dir, [basin])
    spec = FeatureSpec.from_config(config)
    scalers = scalers or Scalers.fit(data, spec, [basin], *period(config, "train"))
    start, end = np.datetime64("2000-01-01"), np.datetime64("2000-03-31")
    return data, scalers, WindowData(data, spec, scalers, [basin], start, end, need_target=False)


def randomised(model: SCA2LSTM, seed: int = 0) -> SCA2LSTM:
    """The model with every weight drawn at random (head included: no longer persistence)."""
    torch.manual_seed(seed)
    for param in model.parameters():
        torch.nn.init.normal_(param, std=0.3)
    return model.eval()


def legacy_forward(model: SCA2LSTM, x: torch.Tensor, static: torch.Tensor):
    """SCA2LSTM.forward in forecast mode as it was before FUTURE_INPUTS (commit 3c3bbdc)."""
    B, L, _ = x.shape
    emb = model.embedding(static)
    emb_seq = emb[:, None, :].expand(B, L, emb.shape[-1])
    h1 = model.lstm1(torch.cat([x, emb_seq], dim=-1))[0]
    logits = model.weight_head(torch.cat([h1, emb_seq], dim=-1))
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[..., model.args.q_channel] = x[..., model.args.q_flag_channel] < 0.5
    logits = logits.masked_fill(~valid, float("-inf"))
    weights = torch.softmax(logits, dim=-1) * valid.sum(dim=-1, keepdim=True)
    h2 = model.lstm2(torch.cat([x * weights, h1, emb_seq], dim=-1))[0]
    out = x[:, -1, model.args.q_channel, None] + model.head(h2[:, -1])
    return out, weights


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000, path


# --------------------------------------------------------------------------- the model


def test_future_inputs_empty_is_exactly_the_old_path(demo_dir, tmp_path):
    config = config_for(tmp_path, SEQ_LEN=6, PRED_LEN=3, FUTURE_INPUTS=[])
    data, scalers, windows = windows_for(config, demo_dir)
    spec = windows.spec
    assert spec.future_inputs == () and spec.window_len == 6
    args = SCA2LSTMArgs.from_config(config, spec)
    assert args.future_len == 0 and args.future_unknown == ()
    model = randomised(SCA2LSTM(args))
    batch = windows.batch(torch.arange(len(windows)))
    assert batch["x"].shape[1] == 6  # days t-5..t only
    # the window rows are the data's days t-L+1..t, scaled
    b = data.basins["22001"]
    t = int((windows.sample_dates()[10] - b.start).astype(int))
    rain = b.column("precipitation")[t - 5 : t + 1]
    i = spec.dynamic_inputs.index("precipitation")
    expected = (rain - scalers.dynamic_mean[i]) / scalers.dynamic_std[i]
    np.testing.assert_allclose(batch["x"][10, :, 0].numpy(), expected, rtol=1e-5)
    with torch.no_grad():
        out, weights = model(batch["x"], batch["static"], return_weights=True)
        ref_out, ref_weights = legacy_forward(model, batch["x"], batch["static"])
    assert torch.equal(out, ref_out) and torch.equal(weights, ref_weights)


def test_untrained_model_is_persistence_at_every_lead_with_future_inputs(demo_dir, tmp_path):
    # precipitation and temperature known over the lead days, the other forcings not
    config = config_for(
        tmp_path, SEQ_LEN=6, PRED_LEN=4, FUTURE_INPUTS=["precipitation", "temperature"]
    )
    data, _, windows = windows_for(config, demo_dir)
    spec = windows.spec
    assert spec.window_len == 10 and spec.future_len == 4
    model = SCA2LSTM(SCA2LSTMArgs.from_config(config, spec)).eval()
    assert [n for n, _ in model.named_children()] == [
        "embedding", "lstm1", "weight_head", "lstm2", "head",
    ]  # fmt: skip
    assert model.args.future_unknown == (1, 3, 4, 5, 6)  # pet, humidity, radiation, wind
    batch = windows.batch(torch.arange(len(windows)))
    assert batch["x"].shape[1:] == (10, 9)
    with torch.no_grad():
        out = model(batch["x"], batch["static"])
    q_t = batch["x"][:, 5, 7]  # the lagged discharge of the forecast day t
    assert torch.equal(out, q_t[:, None].expand(-1, 4))
    # in physical units: every lead scores exactly as persistence
    pred = predict_windows(model, windows)
    table = lead_metrics_table(windows, pred, data, {})
    assert list(table["lead"]) == [1, 2, 3, 4]
    # (float32 inputs, so equal to about 1e-8 in physical units)
    np.testing.assert_allclose(table["nse"], table["persistence_nse"], atol=1e-6)
    np.testing.assert_allclose(table["skill_vs_persistence"], 0.0, atol=1e-6)
    assert (table["nse"].diff().dropna() < 0).all()  # persistence decays with the lead


def test_channel_weight_table_is_the_mean_over_windows_and_steps(demo_dir, tmp_path):
    config = config_for(tmp_path, SEQ_LEN=6, PRED_LEN=2)
    data, _, windows = windows_for(config, demo_dir)
    model = randomised(SCA2LSTM(SCA2LSTMArgs.from_config(config, windows.spec))).eval()
    pred, window_weights = predict_windows(model, windows, batch_size=7, mean_weights=True)
    batch = windows.batch(torch.arange(len(windows)))
    with torch.no_grad():
        out, weights = model(batch["x"], batch["static"], return_weights=True)
    np.testing.assert_allclose(pred, out.numpy(), rtol=1e-5, atol=1e-6)  # one pass gives both
    assert window_weights.shape == (len(windows), len(windows.spec.channels))
    table = sca2lstm.channel_weight_table(window_weights, windows, data)
    expected = weights.mean(dim=(0, 1)).numpy()  # every window and step of basin 22001
    np.testing.assert_allclose(table[list(windows.spec.channels)].iloc[0], expected, rtol=1e-5)
    assert table["discharge_lag"].iloc[0] < expected.max()  # masked on the 2 lead days


def test_channel_weights_mask_discharge_and_unknown_forcings_on_lead_days():
    args = SCA2LSTMArgs(
        n_dynamic=9, n_static=4, hidden=8, num_layers=1, dropout=0.0, embedding_dim=4,
        pred_len=2, q_channel=7, q_flag_channel=8, future_len=2, future_unknown=(1, 2),
    )  # fmt: skip
    model = randomised(SCA2LSTM(args))
    x = torch.randn(3, 7, 9)
    x[..., 8] = 0.0  # discharge observed every day, even on the lead days
    _, w = model(x, torch.randn(3, 4), return_weights=True)
    assert (w[:, -2:, [1, 2, 7]] == 0).all()  # unknown forcings and discharge hidden
    torch.testing.assert_close(w[:, -2:].sum(-1), torch.full((3, 2), 6.0))  # mean 1 over 6
    torch.testing.assert_close(w[:, :-2].sum(-1), torch.full((3, 5), 9.0))
    assert (w[:, :-2, 7] > 0).all()


def test_no_discharge_after_the_forecast_day_reaches_the_model(demo_dir, tmp_path):
    config = config_for(
        tmp_path, SEQ_LEN=6, PRED_LEN=3, FUTURE_INPUTS=["precipitation", "temperature"]
    )
    data, scalers, windows = windows_for(config, demo_dir)
    model = randomised(SCA2LSTM(SCA2LSTMArgs.from_config(config, windows.spec)))
    issue = np.datetime64("2000-02-10")
    b = data.basins["22001"]
    t = int((issue - b.start).astype(int))

    def forecast(edit=None) -> torch.Tensor:
        changed = copy.deepcopy(data)
        if edit is not None:
            edit(changed.basins["22001"])
        _, _, w = windows_for(config, demo_dir, data=changed, scalers=scalers)
        (i,) = np.flatnonzero(w.sample_dates() == issue)
        batch = w.batch(torch.tensor([i]))
        with torch.no_grad():
            return model(batch["x"], batch["static"])[0]

    def scale(column: str, rows: slice, factor: float, add: float = 0.0):
        def edit(basin):
            j = basin.columns.index(column)
            basin.values[rows, j] = basin.values[rows, j] * factor + add

        return edit

    base = forecast()
    lead_days = slice(t + 1, t + 4)
    # discharge of the lead days, and a forcing not known over them: no change at all
    assert torch.equal(base, forecast(scale("discharge_spec", lead_days, 5.0)))
    assert torch.equal(base, forecast(scale("pet", lead_days, 3.0, 2.0)))

    def gap(basin):  # the lead days' discharge unobserved instead: no change either
        basin.values[lead_days, basin.columns.index("discharge_spec")] = np.nan

    assert torch.equal(base, forecast(gap))
    # a known forcing of a lead day, and the discharge of day t itself: the forecast changes
    assert not torch.allclose(
        base, forecast(scale("precipitation", slice(t + 2, t + 3), 1.0, 20.0))
    )
    assert not torch.allclose(base, forecast(scale("discharge_spec", slice(t, t + 1), 2.0, 1.0)))
    # whatever a caller puts in the lead days' discharge rows is hidden by the model itself
    _, _, w = windows_for(config, demo_dir, data=data, scalers=scalers)
    batch = w.batch(torch.arange(len(w)))
    x = batch["x"].clone()
    x[:, -3:, 7], x[:, -3:, 8] = torch.randn(len(w), 3) * 10, 0.0
    with torch.no_grad():
        assert torch.equal(model(batch["x"], batch["static"]), model(x, batch["static"]))


def issued(windows: WindowData) -> set[str]:
    return set(np.datetime_as_string(windows.sample_dates(), unit="D"))


def test_windows_need_the_known_forcings_of_the_lead_days(demo_dir, tmp_path):
    config = config_for(tmp_path, SEQ_LEN=4, PRED_LEN=3, FUTURE_INPUTS=["precipitation"])
    data, scalers, windows = windows_for(config, demo_dir)
    b = data.basins["22001"]
    day = np.datetime64("2000-02-10")
    t = int((day - b.start).astype(int))
    changed = copy.deepcopy(data)
    changed.basins["22001"].values[t, b.columns.index("precipitation")] = np.nan
    _, _, w = windows_for(config, demo_dir, data=changed, scalers=scalers)
    lost = issued(windows) - issued(w)
    # windows issued on t-3..t-1 miss it on a lead day, t..t+3 in their history
    assert lost == {str(day + k) for k in range(-3, 4)}
    changed.basins["22001"].values[t, b.columns.index("precipitation")] = 1.0
    changed.basins["22001"].values[t, b.columns.index("pet")] = np.nan  # unknown over leads
    _, _, w = windows_for(config, demo_dir, data=changed, scalers=scalers)
    lost = issued(windows) - issued(w)
    assert lost == {str(day + k) for k in range(0, 4)}


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"FUTURE_INPUTS": ["discharge_spec"]}, "discharge and its missing flag"),
        ({"FUTURE_INPUTS": ["discharge_lag_missing"]}, "discharge and its missing flag"),
        ({"FUTURE_INPUTS": ["peti"]}, "not in DYNAMIC_INPUTS"),
        ({"FUTURE_INPUTS": ["pet", "pet"]}, "twice"),
        ({"PRED_LEN": 3, "HORIZON_WEIGHTS": [1.0, 2.0]}, "has 2 value.s. but PRED_LEN is 3"),
        ({"PRED_LEN": 3, "HORIZON_WEIGHTS": [1.0, -1.0, 1.0]}, "finite values >= 0"),
        ({"PRED_LEN": 2, "HORIZON_WEIGHTS": [0.0, 0.0]}, "not all 0"),
        ({"PRED_LEN": 3, "HORIZON_WEIGHTS": "1.5,x,1"}, "'x' is not a number"),
        ({"PRED_LEN": 2, "HORIZON_WEIGHTS": [1.0, "a"]}, "'a', which is not a number"),
        ({"MODE": "simulate", "HORIZON_WEIGHTS": [1.0]}, "simulate mode takes null"),
    ],
)
def test_bad_future_inputs_and_horizon_weights_are_user_errors(overrides, needle):
    with pytest.raises(UserError, match=needle):
        load_config(overrides=overrides)


def test_future_inputs_default_and_settings():
    config = load_config()
    assert config["FUTURE_INPUTS"] is None and config["HORIZON_WEIGHTS"] is None
    spec = FeatureSpec.from_config(config)
    assert spec.future_inputs == tuple(config["DYNAMIC_INPUTS"])  # null: every forcing
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    simulate = FeatureSpec.from_config(load_config(overrides={"MODE": "simulate"}))
    assert simulate.future_inputs == () and simulate.window_len == config["SEQ_LEN"]
    # a spec saved before the key existed has no future inputs
    old = {k: v for k, v in spec.to_dict().items() if k != "future_inputs"}
    assert FeatureSpec.from_dict(old).future_inputs == ()
    cfg = load_config(overrides={"PRED_LEN": 3, "HORIZON_WEIGHTS": "3, 2, 1"})
    assert cfg["HORIZON_WEIGHTS"] == [3.0, 2.0, 1.0]
    assert TrainSettings.from_config(cfg, "cpu").horizon_weights == (1.5, 1.0, 0.5)
    assert TrainSettings.from_config(config, "cpu").horizon_weights is None


def test_horizon_weights_multiply_the_loss_of_each_lead():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    y = torch.tensor([[0.0, 0.0], [1.0, 5.0]])
    mask = torch.tensor([[True, False], [True, True]])
    std = torch.tensor([0.9, 0.4])  # basin weights 1/(0.9+0.1)^2 = 1 and 1/(0.4+0.1)^2 = 4
    weights = torch.tensor([1.5, 0.5])
    # lead 1: 1*1*1.5 + 1*4*1.5; lead 2: (masked) + 25*4*0.5; over 3 observed targets
    expected = (1.5 + 6.0 + 50.0) / 3
    assert nse_star_loss(pred, y, mask, std, weights).item() == pytest.approx(expected)
    uniform = nse_star_loss(pred, y, mask, std)
    assert uniform.item() == pytest.approx((1 + 4 + 100) / 3)
    assert torch.equal(nse_star_loss(pred, y, mask, std, torch.ones(2)), uniform)


# --------------------------------------------------------------------------- pretraining


def test_pretrain_records_the_split_and_horizon_weights(pretrained_future):
    run = pretrained_future.parent
    classes = json.loads((run / "feature_classification.json").read_text())
    forcings = load_config()["DYNAMIC_INPUTS"]
    assert classes["knowable_future_features"] == forcings
    assert classes["unknowable_future_features"] == ["discharge_lag", "discharge_lag_missing"]
    assert classes["pred_len"] == 3
    ckpt = load_checkpoint(pretrained_future)
    assert ckpt["feature_classification"] == classes
    assert ckpt["features"]["future_inputs"] == forcings
    assert ckpt["model_args"]["future_len"] == 3
    assert ckpt["config"]["HORIZON_WEIGHTS"] == [3.0, 2.0, 1.0]
    log = (run / "train.log").read_text()
    assert "HORIZON_WEIGHTS, mean 1): 1.500, 1.000, 0.500" in log
    assert HINDCAST_NOTE in log
    by_lead = pd.read_csv(run / "metrics_by_lead_test_period.csv", dtype={"basin": str})
    assert sorted(by_lead["lead"].unique()) == [1, 2, 3]
    assert by_lead[["nse", "persistence_nse"]].notna().all(axis=None)


def test_pretrain_horizon_weights_flag_is_checked_before_the_run_folder(demo_dir, tmp_path):
    args = demo_args(demo_dir, tmp_path, "--dry-run", "--device", "cpu", "--pred_len", "3")
    for value, needle in (("1,2", "PRED_LEN is 3"), ("1,-2,1", ">= 0"), ("1,two,1", "'two'")):
        with pytest.raises(UserError, match=needle):
            sca2lstm.main([*args, "--horizon_weights", value])
    assert not (tmp_path / "model_output").exists()


# --------------------------------------------------------------------------- fine-tuning


def ft_args(demo_dir: Path, work: Path, ckpt: Path, *extra: str) -> list[str]:
    return demo_args(
        demo_dir, work, "--target_basin", "22001", "--pretrained_model", str(ckpt),
        "--device", "cpu", "--batch_size", "256", "--start", "1995-01-01", *extra,
    )  # fmt: skip


def test_fine_tune_keeps_future_inputs_and_takes_horizon_weights(
    demo_dir, pretrained_future, tmp_path
):
    with pytest.raises(UserError, match="has 2 value.s. but PRED_LEN is 3"):
        fine_train.main(ft_args(demo_dir, tmp_path, pretrained_future, "--horizon_weights", "1,2"))
    assert not (tmp_path / "model_output").exists()
    result = fine_train.main(
        ft_args(
            demo_dir, tmp_path, pretrained_future, "--epochs", "1", "--horizon_weights", "2,1,1"
        )
    )
    run = result["run_dir"]
    classes = json.loads((run / "feature_classification.json").read_text())
    assert classes == load_checkpoint(pretrained_future)["feature_classification"]
    ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt["config"]["HORIZON_WEIGHTS"] == [2.0, 1.0, 1.0]
    assert ckpt["features"]["future_inputs"] == load_config()["DYNAMIC_INPUTS"]
    assert HINDCAST_NOTE in (run / "fine_tune.log").read_text()


# --------------------------------------------------------------------------- prediction


def predict_args(demo_dir, demo_workdir, out: Path, *extra: str) -> list[str]:
    return demo_args(
        demo_dir, demo_workdir / "future", "--output_dir", str(out), "--device", "cpu", *extra
    )


def raw_discharge(demo_dir: Path, basin: str) -> pd.Series:
    (csv,) = (demo_dir / "timeseries").glob(f"CAMELS_GB_hydromet_timeseries_{basin}_*.csv")
    frame = pd.read_csv(csv)
    return pd.Series(frame["discharge_spec"].to_numpy(float), index=frame["date"].astype(str))


def test_metrics_by_lead_match_the_predictions_and_plots_are_written(
    demo_dir, demo_workdir, pretrained_future, pretrained_simulate, tmp_path
):
    basins = ["22001", "54017"]
    result = predict.main(
        predict_args(
            demo_dir, demo_workdir, tmp_path / "out", "--model", str(pretrained_future),
            "--basins", ",".join(basins), "--start", "2000-01-01", "--end", "2000-06-30",
            "--lead", "2", "--export_weights", "--compare", str(pretrained_simulate),
        )
    )  # fmt: skip
    run = result["run_dir"]
    preds = pd.read_csv(run / "predictions.csv", dtype={"basin": str})
    by_lead = pd.read_csv(run / "metrics_by_lead.csv", dtype={"basin": str})
    assert list(by_lead.columns) == ["data", *predict.LEAD_COLUMNS]
    future_label = result["metrics"]["model"].iloc[0]
    assert future_label.endswith("_P3_future")
    assert len(by_lead) == 2 * 3  # three leads per basin; the simulate model has none
    for (model, basin, lead), row in by_lead.set_index(["model", "basin", "lead"]).iterrows():
        p = preds[(preds["model"] == model) & (preds["basin"] == basin) & (preds["lead"] == lead)]
        o, s = p["obs_mm_day"].to_numpy(), p["sim_mm_day"].to_numpy()
        ref = compute_metrics(o, s)
        for key, column in (("nse", "nse"), ("kge", "kge"), ("rmse", "rmse_mm_day")):
            assert row[column] == pytest.approx(ref[key], **CLOSE), (model, basin, lead, key)
        assert row["bias_pct"] == pytest.approx(ref["bias_pct"], **CLOSE)
        assert row["n_scored"] == ref["n_scored"] == len(p)
        # persistence: Q(d) forecast by the observed Q(d - lead) of the raw CSV
        q = raw_discharge(demo_dir, basin)
        prev = q.loc[[str(np.datetime64(d) - lead) for d in p["date"]]].to_numpy()
        nse_prev = 1 - np.sum((prev - o) ** 2) / np.sum((o - o.mean()) ** 2)
        assert row["persistence_nse"] == pytest.approx(nse_prev, **CLOSE)
        skill = 1 - np.mean((s - o) ** 2) / np.mean((prev - o) ** 2)
        assert row["skill_vs_persistence"] == pytest.approx(skill, **CLOSE)
    for name in ("skill_by_lead", "model_comparison", "error_distribution"):
        assert_png(run / f"{name}.png")
    for basin in basins:
        assert_png(run / f"hydrograph_{basin}.png")
        assert_png(run / f"compare_hydrograph_{basin}.png")
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["models"][0]["future_inputs"] == load_config()["DYNAMIC_INPUTS"]
    assert saved["models"][1]["future_inputs"] == []  # simulate mode
    assert HINDCAST_NOTE in saved["notes"] and HINDCAST_NOTE in (run / "predict.log").read_text()
    # channel weights over 5 + 3 days: discharge weighs 0 on the lead days, the mean stays 1
    daily = pd.read_csv(run / "channel_weights_daily.csv", dtype={"basin": str})
    assert sorted(daily["step"].unique()) == list(range(8))
    lead_q = daily[(daily["step"] >= 5) & (daily["channel"] == "discharge_lag")]
    assert (lead_q["weight"] == 0).all()
    sums = daily.groupby(["date", "basin", "step"])["weight"].sum().reset_index()
    np.testing.assert_allclose(sums.loc[sums["step"] >= 5, "weight"], 8.0, rtol=1e-4)
    np.testing.assert_allclose(sums.loc[sums["step"] < 5, "weight"], 9.0, rtol=1e-4)


@pytest.mark.parametrize(
    ("lead", "model", "needle"),
    [("4", "future", "beyond PRED_LEN 3"), ("2", "forecast", "beyond PRED_LEN 1"),
     ("1", "simulate", "simulate-mode model")],
)  # fmt: skip
def test_bad_lead_is_a_user_error(lead, model, needle, demo_dir, demo_workdir, request, tmp_path):
    ckpt = request.getfixturevalue(f"pretrained_{model}")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=needle):
        predict.main(
            predict_args(demo_dir, demo_workdir, out, "--model", str(ckpt), "--lead", lead)
        )
    assert not out.exists()


def test_ensemble_of_future_models_has_metrics_by_lead(
    demo_dir, demo_workdir, pretrained_future, tmp_path
):
    twin = tmp_path / "twin.pth"
    twin.write_bytes(pretrained_future.read_bytes())  # two equal members: the mean is either
    result = predict.main(
        predict_args(
            demo_dir, demo_workdir, tmp_path / "out", "--ensemble", "--model",
            str(pretrained_future), str(twin), "--basin", "22001", "--start", "2000-01-01",
            "--end", "2000-02-29", "--lead", "3",
        )
    )  # fmt: skip
    by_lead = pd.read_csv(result["run_dir"] / "metrics_by_lead.csv", dtype={"basin": str})
    assert set(by_lead["model"]) == set(result["metrics"]["model"])  # ensemble and members
    table = by_lead.set_index(["model", "lead"])["nse"].unstack("model")
    assert list(table.index) == [1, 2, 3]
    values = table.to_numpy()
    np.testing.assert_allclose(values, np.repeat(values[:, :1], values.shape[1], 1), rtol=1e-6)
    assert_png(result["run_dir"] / "skill_by_lead.png")


def test_bad_lead_cli_exits_2_without_traceback(
    demo_dir, demo_workdir, pretrained_future, tmp_path
):
    out = tmp_path / "out"
    args = predict_args(demo_dir, demo_workdir, out, "--model", str(pretrained_future))
    proc = subprocess.run(
        [sys.executable, str(REPO / "predict.py"), *args, "--lead", "4"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "beyond PRED_LEN 3" in proc.stderr
    assert not out.exists()


def test_forecast_past_the_last_observation_is_labelled_and_unscored(
    pretrained_future, pretrained_forecast, tmp_path, sca2lstm_log
):
    root = write_short_record(tmp_path / "short")
    expected = {
        # known forcings end with the data: the newest forecast is issued 3 days before the end
        pretrained_future: ("2001-12-28", ["2001-12-29", "2001-12-30", "2001-12-31"]),
        # no future inputs: issued on the last day, one lead day past the data
        pretrained_forecast: ("2001-12-31", ["2002-01-01"]),
    }
    for ckpt, (issued, days) in expected.items():
        result = predict.main(
            demo_args(
                root, tmp_path, "--output_dir", str(tmp_path / ckpt.parent.name), "--device",
                "cpu", "--model", str(ckpt), "--basin", "22001", "--start", "2001-06-01",
                "--end", "2002-01-31",
            )
        )  # fmt: skip
        run = result["run_dir"]
        ahead = pd.read_csv(run / "operational_forecast.csv", dtype={"basin": str})
        assert list(ahead["issue_date"].unique()) == [issued]
        assert list(ahead["date"]) == days and list(ahead["lead"]) == list(range(1, len(days) + 1))
        assert (ahead["last_observation"] == "2001-06-30").all()
        assert ahead["sim_mm_day"].notna().all()
        assert f"operational forecast issued {issued}" in sca2lstm_log.text
        assert result["metrics"].at[0, "n_scored"] > 0  # June is scored, the forecast is not
        assert_png(run / "hydrograph_22001.png")


def test_checkpoint_from_before_future_inputs_loads_and_predicts_as_before(
    demo_dir, demo_workdir, pretrained_forecast, tmp_path
):
    ckpt = torch.load(pretrained_forecast, map_location="cpu", weights_only=True)
    old = copy.deepcopy(ckpt)
    old.pop("feature_classification")
    old["features"].pop("future_inputs")
    for key in ("future_len", "future_unknown"):
        old["model_args"].pop(key)
    for key in ("FUTURE_INPUTS", "HORIZON_WEIGHTS"):
        old["config"].pop(key)
    path = tmp_path / "old.pth"
    torch.save(old, path)
    dates = ["--basin", "22001", "--start", "2000-01-01", "--end", "2000-02-29", "--no_plots"]
    runs = [
        predict.main(
            predict_args(demo_dir, demo_workdir, tmp_path / name, "--model", str(p), *dates)
        )
        for name, p in (("new", pretrained_forecast), ("old", path))
    ]
    pd.testing.assert_frame_equal(runs[0]["predictions"], runs[1]["predictions"])
    assert SCA2LSTM.from_checkpoint(path).args.future_len == 0
    # fine-tuning reads it too: no future inputs, FUTURE_INPUTS [] in the merged config
    argv = ft_args(demo_dir, demo_workdir / "forecast", path, "--epochs", "1")
    job = fine_train.prepare(
        fine_train.FineTuneRequest.from_args(fine_train.build_parser().parse_args(argv))
    )
    assert job.spec.future_inputs == () and job.config["FUTURE_INPUTS"] == []
    batch = job.val.batch(torch.arange(4))
    assert batch["x"].shape[1] == 3  # SEQ_LEN days, ending on the forecast day
    with torch.no_grad():
        assert math.isfinite(float(job.model.eval()(batch["x"], batch["static"]).sum()))
