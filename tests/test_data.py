"""The data layer and data_process.py on the real CAMELS-GB sample (CAMELS_GB_DIR).

Broken inputs are small edits of copies of real files, made in tmp_path only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import data_process
import hydrologyDataset as hd
from utils import UserError, load_config, period

REPO = Path(__file__).resolve().parents[1]
SAMPLE_BASINS = (
    "10002", "10003", "22001", "22006", "32006", "39025",
    "42003", "45003", "51001", "54017", "75003", "79005",
)  # fmt: skip
FIRST_DAY, LAST_DAY, N_DAYS = np.datetime64("1970-10-01"), np.datetime64("2015-09-30"), 16436
FIRST_Q_10003 = np.datetime64("1983-05-19")  # README: no flow before this day
Q = "discharge_spec"


def days(a: np.datetime64, b: np.datetime64) -> int:
    return int((b - a).astype(int))


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.fixture(scope="module")
def scalers(real_data, base_config) -> hd.Scalers:
    spec = hd.FeatureSpec.from_config(base_config)
    return hd.Scalers.fit(
        real_data, spec, base_config["TRAIN_BASINS"], *period(base_config, "train")
    )


def expected_inputs(b: hd.BasinData, spec: hd.FeatureSpec, scalers: hd.Scalers, rows: np.ndarray):
    """Scaled forcings (and the lagged-discharge channels) of ``rows``, computed independently."""
    forc = np.stack([b.column(c)[rows].astype(np.float64) for c in spec.forcings], axis=-1)
    forc = (forc - np.array(scalers.dynamic_mean)) / np.array(scalers.dynamic_std)
    if spec.mode == "simulate":
        return forc
    q = b.column(Q)[rows].astype(np.float64)
    seen = np.isfinite(q)
    lag = np.where(seen, (q - scalers.target_mean) / scalers.target_std, 0.0)
    return np.concatenate([forc, lag[..., None], (~seen)[..., None]], axis=-1)


def scaled_q(b: hd.BasinData, scalers: hd.Scalers, rows: np.ndarray) -> np.ndarray:
    return (b.column(Q)[rows].astype(np.float64) - scalers.target_mean) / scalers.target_std


# --------------------------------------------------------------------------- the real sample


def test_all_sample_basins_processed(real_data, base_config):
    columns = hd.input_columns(base_config)
    assert sorted(real_data.basins) == sorted(SAMPLE_BASINS)
    assert not real_data.synthetic
    for basin, b in real_data.basins.items():
        assert b.basin == basin
        assert b.columns == columns
        assert b.values.shape == (N_DAYS, len(columns)) and b.values.dtype == np.float32
        assert (b.start, b.end) == (FIRST_DAY, LAST_DAY)
        assert b.dates()[0] == FIRST_DAY and b.dates()[-1] == LAST_DAY
        assert np.isfinite(b.values[:, : len(base_config["DYNAMIC_INPUTS"])]).all()
        assert b.name and b.area > 0
    # first row of the 10003 CSV: 1970-10-01,4.20,1.19,9.46,NaN,...
    row = real_data.basins["10003"].values[0]
    assert row[columns.index("precipitation")] == pytest.approx(4.20)
    assert row[columns.index("pet")] == pytest.approx(1.19)
    assert row[columns.index("temperature")] == pytest.approx(9.46)
    assert real_data.basins["22001"].name == "Coquet at Morwick"
    assert real_data.basins["10002"].area == pytest.approx(325.72)


def test_missing_target_of_10003(real_data):
    b = real_data.basins["10003"]
    q = b.column(Q)
    first = days(b.start, FIRST_Q_10003)
    assert np.isnan(q[:first]).all()
    assert np.isfinite(q[first:]).all()
    assert int(np.isnan(q).sum()) == 4613


def test_windows_never_use_a_missing_target(real_data, scalers):
    config = load_config(stage="data_process", overrides=["PRED_LEN=3"])
    spec = hd.FeatureSpec.from_config(config)
    start, end = np.datetime64("1982-01-01"), np.datetime64("1984-12-31")
    w = hd.WindowData(real_data, spec, scalers, ["10003", "22006"], start, end)
    batch = w.batch(torch.arange(len(w)))
    owner, mask = w.sample_basin.numpy(), w.y_mask.numpy()
    tdates = w.target_dates()  # [S, 3]
    assert mask.shape == tdates.shape == (len(w), 3)
    for k, basin in enumerate(w.basins):
        b, sel = real_data.basins[basin], owner == k
        rows = (tdates[sel] - b.start).astype(int)
        observed = np.isfinite(b.column(Q)[np.minimum(rows, N_DAYS - 1)]) & (rows < N_DAYS)
        expected = observed & (tdates[sel] >= start) & (tdates[sel] <= end)
        np.testing.assert_array_equal(mask[sel], expected)
        assert mask[sel].any(axis=1).all()
        y = batch["y"][torch.from_numpy(sel)].numpy()
        assert (y[~observed] == 0).all()  # never an imputed value
        np.testing.assert_allclose(y[mask[sel]], scaled_q(b, scalers, rows[mask[sel]]), atol=1e-5)
    t10003 = tdates[owner == 0]
    assert (t10003[mask[owner == 0]] >= FIRST_Q_10003).all()
    # a window is kept while one of its 3 lead days is observed and inside the period
    n10003, n22006 = w.n_samples_per_basin
    assert n10003 == days(FIRST_Q_10003, end) + 3
    assert n22006 == days(start, end) + 3
    assert n10003 < n22006


def test_scalers_fitted_on_training_basins_and_period_only(real_data, base_config, scalers):
    spec = hd.FeatureSpec.from_config(base_config)
    train = base_config["TRAIN_BASINS"]
    start, end = period(base_config, "train")
    assert scalers.fitted_on == {"basins": train, "start": "1980-10-01", "end": "1997-12-31"}
    q = np.concatenate(
        [
            real_data.basins[b].column(Q)[days(FIRST_DAY, start) : days(FIRST_DAY, end) + 1]
            for b in train
        ]
    )
    assert scalers.target_mean == pytest.approx(float(np.nanmean(q.astype(np.float64))))

    changed = hd.InputData(
        real_data.source,
        {k: dataclasses.replace(b, values=b.values.copy()) for k, b in real_data.basins.items()},
        real_data.attributes.copy(),
    )
    for basin, b in changed.basins.items():
        dates = b.dates()
        outside = (dates < start) | (dates > end) if basin in train else np.ones(len(dates), bool)
        b.values[outside] = b.values[outside] * 10 + 5
    others = [b for b in SAMPLE_BASINS if b not in train]
    attrs = list(spec.static_attributes)
    changed.attributes[attrs] = changed.attributes[attrs].astype(float)
    changed.attributes.loc[others, attrs] = changed.attributes.loc[others, attrs] * 3 + 1
    assert hd.Scalers.fit(changed, spec, train, start, end).to_dict() == scalers.to_dict()

    # ... while a change inside the training data does move them
    b = changed.basins[train[0]]
    b.values[days(FIRST_DAY, start) + 10] += 100.0
    moved = hd.Scalers.fit(changed, spec, train, start, end)
    assert moved.dynamic_mean != scalers.dynamic_mean
    assert moved.target_mean != scalers.target_mean


def test_static_clamp_bounds_unseen_basins_only(real_data, base_config):
    spec = hd.FeatureSpec.from_config(base_config)
    train = base_config["TRAIN_BASINS"]
    unseen = [b for b in SAMPLE_BASINS if b not in train]
    attrs = list(spec.static_attributes)
    clamped = hd.Scalers.fit(real_data, spec, train, *period(base_config, "train"), 0.5)
    free = hd.Scalers.fit(real_data, spec, train, *period(base_config, "train"), None)
    mean, std = np.array(clamped.static_mean), np.array(clamped.static_std)

    raw_train = hd.static_matrix(real_data.attributes, train, attrs)
    np.testing.assert_allclose(clamped.scale_static(raw_train), (raw_train - mean) / std)

    raw = hd.static_matrix(real_data.attributes, unseen, attrs)
    z = (raw - mean) / std
    lo = (raw_train.min(axis=0) - mean) / std - 0.5
    hi = (raw_train.max(axis=0) - mean) / std + 0.5
    np.testing.assert_allclose(clamped.scale_static(raw), np.clip(z, lo, hi))
    # soil depth of 22006 lies about 11 training stds above the mean of the 5 training basins
    j = attrs.index("soil_depth_pelletier")
    assert z[unseen.index("22006"), j] > hi[j] + 5
    assert clamped.scale_static(raw)[unseen.index("22006"), j] == pytest.approx(hi[j])
    np.testing.assert_allclose(free.scale_static(raw), z)

    # a checkpoint written before STATIC_CLAMP existed has no range: no clamping
    new_keys = ("static_min", "static_max", "static_clamp")
    old = {k: v for k, v in clamped.to_dict().items() if k not in new_keys}
    np.testing.assert_allclose(hd.Scalers.from_dict(old).scale_static(raw), z)
    assert hd.Scalers.from_dict(clamped.to_dict()) == clamped

    windows = hd.WindowData(real_data, spec, clamped, unseen[:2], *period(base_config, "test"))
    np.testing.assert_allclose(
        windows.static.numpy(), clamped.scale_static(raw[:2]).astype(np.float32), rtol=1e-6
    )


@pytest.mark.parametrize("layout", ["official", "flat", "product"])
def test_layouts(layout, tmp_path, camels_gb_dir, real_data, dp_args):
    official = hd.find_source(camels_gb_dir)
    basins = ["22001", "32006"]
    if layout == "official":
        data_dir = camels_gb_dir
    else:
        root = tmp_path / "datasets" / "CAMELS_GB"
        ts_dir = root if layout == "flat" else root / "CAMELS_GB_timeseries"
        attr_dir = root if layout == "flat" else root / "CAMELS_GB_static"
        ts_dir.mkdir(parents=True, exist_ok=True)
        attr_dir.mkdir(parents=True, exist_ok=True)
        for basin in basins:
            (ts_dir / official.timeseries[basin].name).symlink_to(official.timeseries[basin])
        for path in official.attributes.values():
            (attr_dir / path.name).symlink_to(path)
        data_dir = root
    source = hd.find_source(data_dir)
    assert set(basins) <= set(source.basins)
    assert set(source.attributes) == set(hd.ATTRIBUTE_GROUPS)
    out = data_process.main(dp_args(data_dir, "--basins", ",".join(basins), "--workers", "1"))
    manifest = manifest_of(out)
    assert list(manifest["basins"]) == basins
    config = load_config(stage="data_process", overrides=[f"INPUT_DIR={out.parent}"])
    data = hd.load_input_data(config, data_dir, basins)
    for basin in basins:
        np.testing.assert_array_equal(data.basins[basin].values, real_data.basins[basin].values)
        assert data.basins[basin].name == real_data.basins[basin].name
        assert (
            manifest["basins"][basin]["md5"]
            == hashlib.md5(official.timeseries[basin].read_bytes()).hexdigest()
        )


def test_basin_1001_is_never_confused_with_10002(tmp_path, camels_gb_dir, dp_args):
    official = hd.find_source(camels_gb_dir)
    root = tmp_path / "ids"
    (root / "timeseries").mkdir(parents=True)
    (root / "attributes").symlink_to(official.attributes["topographic"].parent)
    real = official.timeseries["10002"]
    (root / "timeseries" / real.name).symlink_to(real)
    # gauge 1001 (Wick at Tarroul): a short series, made from the first 730 days of 10003
    lines = official.timeseries["10003"].read_text(encoding="utf-8").splitlines()[:731]
    short = root / "timeseries" / "CAMELS_GB_hydromet_timeseries_1001_19701001-19720930.csv"
    short.write_text("\n".join(lines) + "\n", encoding="utf-8")

    source = hd.find_source(root)
    assert source.basins == ["1001", "10002"]
    assert source.timeseries["1001"] == short
    assert source.timeseries["10002"].name == real.name
    for wrong in ("100", "1002", "10001", "01001", "100020"):
        with pytest.raises(UserError, match=r"not found.*1001 10002"):
            source.check_basins([wrong])

    out = data_process.main(dp_args(root, "--basins", "1001,10002", "--workers", "1"))
    records = manifest_of(out)["basins"]
    assert records["1001"]["source"] == str(short.resolve())
    assert records["1001"]["n_days"] == 730
    assert records["1001"]["gauge_name"] == "Wick at Tarroul"
    assert records["10002"]["source"] == str(real.resolve())
    assert records["10002"]["n_days"] == N_DAYS
    assert records["10002"]["gauge_name"] == "Ugie at Inverugie"
    with np.load(out / "1001.npz") as npz:
        assert npz["values"].shape == (730, 8)


def test_forecast_windows(real_data, base_config, scalers):
    # forecast, SEQ_LEN 3, PRED_LEN 1, windows ending on day t (FUTURE_INPUTS [])
    spec = hd.FeatureSpec.from_config({**base_config, "FUTURE_INPUTS": []})
    inputs = tuple(base_config["DYNAMIC_INPUTS"])
    assert spec.channels == (*inputs, hd.Q_LAG, hd.Q_MISSING)
    start, end = np.datetime64("1983-05-01"), np.datetime64("1983-07-31")
    w = hd.WindowData(real_data, spec, scalers, ["10003", "22001"], start, end)
    batch = w.batch(torch.arange(len(w)))
    L = base_config["SEQ_LEN"]
    assert batch["x"].shape == (len(w), L, len(inputs) + 2)
    assert batch["y"].shape == batch["y_mask"].shape == (len(w), 1)
    assert batch["static"].shape == (len(w), len(base_config["STATIC_ATTRIBUTES"]))
    sample_dates, owner = w.sample_dates(), w.sample_basin.numpy()
    np.testing.assert_array_equal(w.target_dates()[:, 0], sample_dates + np.timedelta64(1, "D"))
    for k, basin in enumerate(w.basins):
        b, sel = real_data.basins[basin], owner == k
        t = (sample_dates[sel] - b.start).astype(int)
        rows = t[:, None] + np.arange(-L + 1, 1)
        np.testing.assert_allclose(
            batch["x"][torch.from_numpy(sel)].numpy(),
            expected_inputs(b, spec, scalers, rows),
            atol=1e-5,
        )
        np.testing.assert_allclose(
            batch["y"][torch.from_numpy(sel)][:, 0].numpy(), scaled_q(b, scalers, t + 1), atol=1e-5
        )
    # 10003's first target is its first observed day; the lag channels of that window are
    # the neutral value 0 with the missing flag 1
    first = sample_dates[owner == 0][0]
    assert first + np.timedelta64(1, "D") == FIRST_Q_10003
    x0 = batch["x"][0].numpy()
    assert (x0[:, -1] == 1).all() and (x0[:, -2] == 0).all()
    assert w.n_samples_per_basin == [days(FIRST_Q_10003, end) + 1, days(start, end) + 1]
    # the default future inputs: the same samples, one lead day appended with the data's row
    future = hd.FeatureSpec.from_config(base_config)
    assert future.future_inputs == inputs and future.window_len == L + 1
    wf = hd.WindowData(real_data, future, scalers, ["10003", "22001"], start, end)
    np.testing.assert_array_equal(wf.sample_dates(), sample_dates)
    xf = wf.batch(torch.arange(len(wf)))["x"]
    assert xf.shape == (len(w), L + 1, len(inputs) + 2)
    torch.testing.assert_close(xf[:, :L], batch["x"])
    b, sel = real_data.basins["22001"], owner == 1
    t = (sample_dates[sel] - b.start).astype(int)
    np.testing.assert_allclose(
        xf[torch.from_numpy(sel), L].numpy(),
        expected_inputs(b, spec, scalers, t[:, None] + 1)[:, 0],
        atol=1e-5,
    )


def test_simulate_windows(real_data, scalers):
    config = load_config(stage="data_process", overrides=["MODE=simulate", "PREDICT_LAST_N=2"])
    spec = hd.FeatureSpec.from_config(config)
    assert spec.channels == tuple(config["DYNAMIC_INPUTS"]) and spec.n_out == 2
    start, end = np.datetime64("1990-01-01"), np.datetime64("1990-12-31")
    w = hd.WindowData(real_data, spec, scalers, ["22001"], start, end)
    batch = w.batch(torch.arange(len(w)))
    b, L = real_data.basins["22001"], config["SEQ_LEN"]
    t = (w.sample_dates() - b.start).astype(int)
    assert batch["x"].shape == (len(w), L, len(config["DYNAMIC_INPUTS"]))
    rows = t[:, None] + np.arange(-L + 1, 1)
    np.testing.assert_allclose(
        batch["x"].numpy(), expected_inputs(b, spec, scalers, rows), atol=1e-5
    )
    target_rows = t[:, None] + np.array([-1, 0])
    np.testing.assert_allclose(batch["y"].numpy(), scaled_q(b, scalers, target_rows), atol=1e-5)
    np.testing.assert_array_equal(w.target_dates()[:, -1], w.sample_dates())
    # one window per day whose last target falls in the period, plus one whose first does
    assert len(w) == days(start, end) + 2


def test_need_target_false_keeps_unobserved_days(real_data, base_config, scalers):
    spec = hd.FeatureSpec.from_config(base_config)
    start, end = period(base_config, "validation")  # 1975-10-01..1980-09-30: 10003 unobserved
    with pytest.raises(UserError, match=r"10003.*no complete window with observed"):
        hd.WindowData(real_data, spec, scalers, ["10003"], start, end)
    w = hd.WindowData(real_data, spec, scalers, ["10003"], start, end, need_target=False)
    assert len(w) == days(start, end) + 1
    assert not w.y_mask.any()
    # across the first observation, observed and unobserved targets are kept and masked apart
    start, end = np.datetime64("1983-01-01"), np.datetime64("1983-12-31")
    w = hd.WindowData(real_data, spec, scalers, ["10003"], start, end, need_target=False)
    targets = w.target_dates()[:, 0]
    np.testing.assert_array_equal(w.y_mask.numpy()[:, 0], targets >= FIRST_Q_10003)
    # forecasts may reach one day past the last row of the data, without future inputs
    start, end = np.datetime64("2015-09-01"), np.datetime64("2015-10-01")
    past = hd.FeatureSpec.from_config({**base_config, "FUTURE_INPUTS": []})
    w = hd.WindowData(real_data, past, scalers, ["22001"], start, end, need_target=False)
    assert w.target_dates()[-1, 0] == LAST_DAY + np.timedelta64(1, "D")
    assert not w.y_mask[-1].any()
    # with them the lead day needs its known forcings: the last forecast is of the last day
    w = hd.WindowData(real_data, spec, scalers, ["22001"], start, end, need_target=False)
    assert w.target_dates()[-1, 0] == LAST_DAY


def test_stream_dataset_matches_resident_batches(real_data, base_config, scalers):
    spec = hd.FeatureSpec.from_config(base_config)
    start, end = np.datetime64("1990-01-01"), np.datetime64("1990-03-31")
    w = hd.WindowData(real_data, spec, scalers, ["10003", "22001"], start, end)
    loader = torch.utils.data.DataLoader(w.to_dataset(), batch_size=16, shuffle=False)
    seen = 0
    for i, streamed in enumerate(loader):
        resident = w.batch(torch.arange(16 * i, min(16 * (i + 1), len(w))))
        assert streamed.keys() == resident.keys()
        for key in resident:
            assert streamed[key].dtype == resident[key].dtype
            assert torch.equal(streamed[key], resident[key]), key
        seen += len(resident["y"])
    assert seen == len(w) == len(w.to_dataset())


# --------------------------------------------------------------------------- bad input


def _drop_column(name):
    def edit(lines):
        header = lines[0].split(",")
        j = header.index(name)
        return [",".join(c for i, c in enumerate(line.split(",")) if i != j) for line in lines]

    return edit


def _set_cell(where: int | str, column: str, value: str):
    """Set one cell of the line numbered ``where`` (from 1, header included, as in an editor)
    or of the row whose first cell is ``where`` (a gauge id in an attribute table)."""

    def edit(lines):
        header, out = lines[0].split(","), list(lines)
        if isinstance(where, str):
            i = next(i for i, line in enumerate(lines) if line.split(",")[0] == where)
        else:
            i = where - 1
        cells = out[i].split(",")
        cells[header.index(column)] = value
        out[i] = ",".join(cells)
        return out

    return edit


def _duplicate_date(line_no: int):
    def edit(lines):
        out = list(lines)
        date = out[line_no - 2].split(",")[0]
        out[line_no - 1] = ",".join([date, *out[line_no - 1].split(",")[1:]])
        return out

    return edit


BAD_INPUTS = {
    "missing folder": (
        None,
        [],
        r"not found.*10\.5285/8344e4f3-d2ea-44f5-8afa-86d2987543a9.*--demo",
    ),
    "unknown basin": ({}, ["--basins", "99999"], r"99999 not found.*10002 10003 22001"),
    "missing column": (
        {"10002": _drop_column("humidity")},
        ["--basins", "10002"],
        r"_10002_19701001-20150930\.csv \(basin 10002\) has no column\(s\) humidity",
    ),
    "non-numeric value": (
        {"10002": _set_cell(100, "precipitation", "abc")},
        ["--basins", "10002,22001", "--workers", "2"],
        r"basin 10002\) line 100: column precipitation holds 'abc'",
    ),
    "negative precipitation": (
        {"10002": _set_cell(120, "precipitation", "-3.5")},
        ["--basins", "10002"],
        r"basin 10002\) line 120: column precipitation holds '-3.5', which is physically "
        r"impossible \(precipitation must be between 0 and 1000 mm/day\)",
    ),
    "infinite precipitation": (
        {"10002": _set_cell(130, "precipitation", "inf")},
        ["--basins", "10002"],
        r"basin 10002\) line 130: column precipitation holds 'inf', which is physically",
    ),
    "impossible temperature": (
        {"10002": _set_cell(140, "temperature", "85.0")},
        ["--basins", "10002"],
        r"line 140: column temperature holds '85.0'.*between -60 and 60 degrees C",
    ),
    "negative discharge": (
        {"10002": _set_cell(150, "discharge_spec", "-0.2")},
        ["--basins", "10002"],
        r"line 150: column discharge_spec holds '-0.2'.*write NaN for a missing one",
    ),
    "unparseable date": (
        {"10002": _set_cell(50, "date", "1970-11-31")},
        ["--basins", "10002"],
        r"basin 10002\) line 50: date '1970-11-31' is not YYYY-MM-DD",
    ),
    "duplicated date": (
        {"10002": _duplicate_date(51)},
        ["--basins", "10002"],
        r"basin 10002\) has the date 1970-11-18 twice",
    ),
    "attribute missing": (
        {"topographic": _set_cell("10002", "elev_mean", "")},
        ["--basins", "10002"],
        r"basin 10002 has no numeric value for static attribute elev_mean",
    ),
    "period outside the data": (
        {},
        ["--basins", "10002", "--set", "TEST_START=2020-01-01", "--set", "TEST_END=2021-12-31"],
        r"test period 2020-01-01\.\.2021-12-31 lies outside the data of basin 10002.*TEST_START",
    ),
    "no valid target": (
        {},
        ["--basins", "10003", "--set", "VAL_BASINS=10003"],
        r"basin 10003 \(Ythan at Ellon\) has no observed discharge_spec in the validation period",
    ),
}


@pytest.fixture(params=list(BAD_INPUTS), ids=list(BAD_INPUTS))
def bad_input(request, tmp_path, data_copy, dp_args, input_dir):
    edits, extra, pattern = BAD_INPUTS[request.param]
    data_dir = (
        tmp_path / "no_such_folder"
        if edits is None
        else data_copy(edits, ("10002", "10003", "22001"))
    )
    return dp_args(data_dir, *extra), pattern, input_dir


def test_bad_input_main_raises_user_error(bad_input):
    args, pattern, input_dir = bad_input
    with pytest.raises(UserError, match=pattern):
        data_process.main(args)
    # nothing half-written: no manifest, no temporary files, no empty folder; arrays only where
    # complete
    assert all(any(d.iterdir()) for d in input_dir.glob("*") if d.is_dir()), "empty folder left"
    assert not [p for p in files_under(input_dir) if p.name == "manifest.json"]
    assert not [p for p in files_under(input_dir) if p.name.startswith(".")]
    for npz in (p for p in files_under(input_dir) if p.suffix == ".npz"):
        with np.load(npz) as arrays:
            assert arrays["values"].shape[0] == N_DAYS
        assert npz.with_suffix(".json").is_file()


@pytest.mark.slow
def test_bad_input_cli_exits_2_without_traceback(bad_input):
    args, pattern, _ = bad_input
    proc = subprocess.run(
        [sys.executable, str(REPO / "data_process.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert re.search(pattern, proc.stderr), proc.stderr


def test_attribute_error_names_attribute_and_basin(camels_gb_dir):
    table = hd.read_attributes(hd.find_source(camels_gb_dir))
    with pytest.raises(UserError, match="no_such_attribute"):
        hd.static_matrix(table, ["10002"], ["area", "no_such_attribute"])
    with pytest.raises(UserError, match="gauge_name"):  # not numeric
        hd.static_matrix(table, ["10002"], ["gauge_name"])
    with pytest.raises(UserError, match="99999"):
        hd.static_matrix(table, ["99999"], ["area"])


def test_conflicting_flags_are_user_errors(camels_gb_dir, dp_args, tmp_path):
    with pytest.raises(UserError, match="--make_demo"):
        data_process.main(dp_args(camels_gb_dir, "--demo_dir", str(tmp_path)))
    with pytest.raises(UserError, match="--demo and --data_dir"):
        data_process.main(dp_args(camels_gb_dir, "--demo"))


# --------------------------------------------------------------------------- re-runs, manifest


def test_default_basins_are_the_config_groups_and_all_means_every_basin(camels_gb_dir, dp_args):
    config = load_config(stage="data_process")
    groups = list(
        dict.fromkeys(config["TRAIN_BASINS"] + config["VAL_BASINS"] + config["TEST_BASINS"])
    )
    out = data_process.main(dp_args(camels_gb_dir, "--workers", "2"))
    manifest = manifest_of(out)
    assert list(manifest["basins"]) == groups
    assert manifest["rebuilt"] == groups and manifest["reused"] == []
    out = data_process.main(dp_args(camels_gb_dir, "--basins", "all"))
    manifest = manifest_of(out)
    assert sorted(manifest["basins"]) == sorted(SAMPLE_BASINS)
    assert sorted(manifest["reused"]) == sorted(SAMPLE_BASINS) and manifest["rebuilt"] == []


def test_rerun_reuses_and_changes_rebuild(data_copy, dp_args, sca2lstm_log):
    root = data_copy({"22001": lambda lines: lines}, ("22001", "32006"))
    args = dp_args(root, "--basins", "22001,32006", "--workers", "2")
    out = data_process.main(args)
    assert manifest_of(out)["rebuilt"] == ["22001", "32006"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}

    sca2lstm_log.clear()
    assert data_process.main(args) == out
    manifest = manifest_of(out)
    assert manifest["rebuilt"] == [] and manifest["reused"] == ["22001", "32006"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")} == stamps
    assert "reused" in sca2lstm_log.text

    # a touched file with the same content is the same input
    csv = hd.find_source(root).timeseries["22001"]
    os.utime(csv, (csv.stat().st_atime + 60, csv.stat().st_mtime + 60))
    assert manifest_of(data_process.main(args))["rebuilt"] == []

    # a changed value rebuilds that basin only
    csv.write_text(
        "\n".join(_set_cell(2, "precipitation", "99.5")(csv.read_text().splitlines())) + "\n"
    )
    manifest = manifest_of(data_process.main(args))
    assert manifest["rebuilt"] == ["22001"] and manifest["reused"] == ["32006"]
    assert manifest["basins"]["22001"]["md5"] == hashlib.md5(csv.read_bytes()).hexdigest()
    assert (out / "32006.npz").stat().st_mtime_ns == stamps["32006.npz"]
    with np.load(out / "22001.npz") as npz:
        assert npz["values"][0, 0] == pytest.approx(99.5)

    # other input columns rebuild everything
    more = [*args, "--set", "DYNAMIC_INPUTS=[precipitation,peti]"]
    manifest = manifest_of(data_process.main(more))
    assert manifest["rebuilt"] == ["22001", "32006"]
    assert manifest["columns"] == ["precipitation", "peti", Q]

    manifest = manifest_of(data_process.main([*more, "--overwrite"]))
    assert manifest["rebuilt"] == ["22001", "32006"] and manifest["reused"] == []


@pytest.fixture(scope="module")
def processed(camels_gb_dir, tmp_path_factory):
    """One data_process.py run over 10003 and 22001: (output folder, config, source)."""
    input_dir = tmp_path_factory.mktemp("processed") / "model_input_data"
    config = load_config(stage="data_process", overrides=[f"INPUT_DIR={input_dir}"])
    argv = ["--data_dir", str(camels_gb_dir), "--set", f"INPUT_DIR={input_dir}"]
    out = data_process.main([*argv, "--basins", "10003,22001", "--workers", "1"])
    assert out == hd.input_dir_for(config, camels_gb_dir) and out.parent == input_dir
    return out, config, hd.find_source(camels_gb_dir)


def test_manifest_records_format_and_settings(processed, camels_gb_dir):
    out, config, _ = processed
    manifest = manifest_of(out)
    assert manifest["format"] == hd.INPUT_FORMAT
    assert manifest["synthetic"] is False
    assert manifest["data_dir"] == str(camels_gb_dir.resolve())
    assert manifest["columns"] == list(hd.input_columns(config))
    settings = manifest["settings"]
    for key in (
        "DYNAMIC_INPUTS",
        "TARGET",
        "STATIC_ATTRIBUTES",
        "TRAIN_BASINS",
        "VAL_BASINS",
        "TEST_BASINS",
    ):
        assert settings[key] == config[key]
    assert settings["periods"] == {
        "train": ["1980-10-01", "1997-12-31"],
        "validation": ["1975-10-01", "1980-09-30"],
        "test": ["1998-01-01", "2008-12-31"],
    }
    assert manifest["rebuilt"] == ["10003", "22001"] and manifest["reused"] == []


def test_manifest_records_each_basin_source_and_counts(processed):
    out, _, source = processed
    manifest = manifest_of(out)
    assert list(manifest["basins"]) == ["10003", "22001"]
    rec = manifest["basins"]["10003"]
    path = source.timeseries["10003"]
    assert rec["source"] == str(path.resolve())
    assert rec["md5"] == hashlib.md5(path.read_bytes()).hexdigest()
    assert (rec["start"], rec["end"], rec["n_days"]) == ("1970-10-01", "2015-09-30", N_DAYS)
    assert rec["missing"][Q] == 4613 and rec["missing"]["precipitation"] == 0
    assert rec["gauge_name"] == "Ythan at Ellon"


def test_manifest_records_the_attribute_files(processed):
    out, _, source = processed
    files = manifest_of(out)["attribute_files"]
    assert set(files) == set(hd.ATTRIBUTE_GROUPS)
    for group, entry in files.items():
        path = source.attributes[group]
        assert entry == {
            "path": str(path.resolve()),
            "md5": hashlib.md5(path.read_bytes()).hexdigest(),
        }


def test_attribute_table_holds_names_and_values(processed):
    out, config, _ = processed
    table = pd.read_csv(out / "attributes.csv", dtype={"gauge_id": str})
    assert list(table.columns) == ["gauge_id", "gauge_name", *config["STATIC_ATTRIBUTES"]]
    assert table["gauge_id"].tolist() == ["10003", "22001"]
    assert table["gauge_name"].tolist() == ["Ythan at Ellon", "Coquet at Morwick"]
    assert table["area"].tolist() == pytest.approx([532.29, 578.25])
    assert table["elev_mean"].tolist() == pytest.approx([108.0, 225.0])


def test_arrays_hold_every_day_of_every_column(processed):
    out, config, _ = processed
    for basin in ("10003", "22001"):
        with np.load(out / f"{basin}.npz") as npz:
            assert npz["values"].shape == (N_DAYS, len(config["DYNAMIC_INPUTS"]) + 1)


def test_period_partly_outside_warns_for_that_basin_only(data_copy, dp_args, sca2lstm_log):
    root = data_copy(basins=("10002", "22001"))
    config_file = root.parent / "late.yaml"
    config_file.write_text(
        'TEST_START: "2010-01-01"\nTEST_END: "2016-12-31"\nTEST_BASINS: ["10002"]\n'
    )
    data_process.main(dp_args(root, "--basins", "10002,22001", "--config", str(config_file)))
    warnings = [r.getMessage() for r in sca2lstm_log.records if r.levelname == "WARNING"]
    assert any("basin 10002" in m and "test period" in m for m in warnings), warnings
    assert not any("22001" in m for m in warnings), warnings


def test_overlapping_periods_warn_only_for_basins_in_both_groups(
    camels_gb_dir, dp_args, sca2lstm_log
):
    args = [
        "--basins",
        "75003,10002",
        "--set",
        "VAL_START=1990-01-01",
        "--set",
        "VAL_END=1991-12-31",
    ]
    data_process.main(dp_args(camels_gb_dir, *args))
    warnings = [r.getMessage() for r in sca2lstm_log.records if r.levelname == "WARNING"]
    overlap = [m for m in warnings if "overlap" in m]
    assert len(overlap) == 1 and "75003" in overlap[0] and "10002" not in overlap[0], warnings


# --------------------------------------------------------------------------- synthetic demo data


def test_make_demo_and_process_it(tmp_path, monkeypatch, dp_args, input_dir, sca2lstm_log):
    demo = tmp_path / "demo"
    assert (
        data_process.main(["--make_demo", "--demo_dir", str(demo), "--basins", "22001,32006"])
        == demo
    )
    source = hd.find_source(demo)
    assert source.synthetic and source.basins == ["22001", "32006"]
    monkeypatch.setattr(hd, "DEMO_DIR", demo)
    out = data_process.main(
        ["--demo", "--basins", "22001,32006", "--set", f"INPUT_DIR={input_dir}"]
    )
    manifest = manifest_of(out)
    assert manifest["synthetic"] is True and list(manifest["basins"]) == ["22001", "32006"]
    assert "SYNTHETIC" in sca2lstm_log.text


def test_make_demo_refuses_a_folder_with_other_data(data_copy):
    root = data_copy(basins=("22001",))
    with pytest.raises(UserError, match="not empty"):
        data_process.main(["--make_demo", "--demo_dir", str(root)])
    assert all(p.is_symlink() for p in (root / "timeseries").iterdir())


def test_failed_rebuild_removes_the_stale_manifest(data_copy, dp_args):
    root = data_copy({"10002": lambda lines: lines}, ("10002",))
    args = dp_args(root, "--basins", "10002", "--workers", "1")
    out = data_process.main(args)
    assert (out / "manifest.json").is_file()
    csv = hd.find_source(root).timeseries["10002"]
    csv.write_text("\n".join(_set_cell(3, "pet", "n/a")(csv.read_text().splitlines())) + "\n")
    with pytest.raises(UserError, match=r"line 3: column pet holds 'n/a'"):
        data_process.main(args)
    assert not (out / "manifest.json").exists()
    with np.load(out / "10002.npz") as npz:  # the last complete arrays stay
        assert npz["values"].shape == (N_DAYS, 8)


def test_failed_array_write_leaves_no_temporary_file(
    camels_gb_dir, base_config, tmp_path, monkeypatch
):
    source = hd.find_source(camels_gb_dir)
    out = tmp_path / "out"
    out.mkdir()

    def savez_on_a_full_disk(path, **arrays):
        Path(path).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(hd.np, "savez", savez_on_a_full_disk)
    job = ("10002", str(source.timeseries["10002"]), hd.input_columns(base_config), Q, str(out))
    with pytest.raises(OSError, match="No space"):
        hd._build_basin(job)
    assert list(out.iterdir()) == []
