"""Tests of the synthetic CAMELS-GB demo dataset generator (short periods keep them fast)."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from demo_data import (
    ATTRIBUTE_COLUMNS,
    DEMO_BASINS,
    SYNTHETIC_MARKER,
    TIMESERIES_COLUMNS,
    write_demo_dataset,
)

START, END = "1990-10-01", "1993-09-30"
FORCINGS = [c for c in TIMESERIES_COLUMNS if c not in ("date", "discharge_spec", "discharge_vol")]


def ts_path(root: Path, gid: str, start: str = START, end: str = END) -> Path:
    stamp = f"{start.replace('-', '')}-{end.replace('-', '')}"
    return root / "timeseries" / f"CAMELS_GB_hydromet_timeseries_{gid}_{stamp}.csv"


def attributes(root: Path, group: str) -> pd.DataFrame:
    path = root / "attributes" / f"CAMELS_GB_{group}_attributes.csv"
    return pd.read_csv(path, dtype={"gauge_id": str})


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    assert write_demo_dataset(root, start=START, end=END, seed=0) == list(DEMO_BASINS)
    return root


@pytest.fixture(scope="module")
def series(demo: Path) -> dict[str, pd.DataFrame]:
    return {gid: pd.read_csv(ts_path(demo, gid), parse_dates=["date"]) for gid in DEMO_BASINS}


def test_layout_and_exact_headers(demo: Path) -> None:
    for gid in DEMO_BASINS:
        header = ts_path(demo, gid).read_text().splitlines()[0]
        assert header == ",".join(TIMESERIES_COLUMNS)
    assert header == (
        "date,precipitation,pet,temperature,discharge_spec,discharge_vol,peti,humidity,"
        "shortwave_rad,longwave_rad,windspeed"
    )
    assert len(ATTRIBUTE_COLUMNS) == 8
    for group, columns in ATTRIBUTE_COLUMNS.items():
        path = demo / "attributes" / f"CAMELS_GB_{group}_attributes.csv"
        assert path.read_text().splitlines()[0] == ",".join(columns)
        assert columns[0] == "gauge_id"
    assert len(ATTRIBUTE_COLUMNS["soil"]) == 49
    assert ATTRIBUTE_COLUMNS["hydrologic"][-7:-5] == ("Q5", "Q95")
    assert sorted(p.name for p in demo.iterdir()) == [SYNTHETIC_MARKER, "attributes", "timeseries"]
    assert not list(demo.rglob("*.tmp"))


def test_marker_file(demo: Path) -> None:
    text = (demo / SYNTHETIC_MARKER).read_text()
    assert "SYNTHETIC" in text and "seed: 0" in text
    assert f"{START} to {END}" in text


def test_dates_contiguous_and_formatted(demo: Path, series: dict[str, pd.DataFrame]) -> None:
    expected = pd.date_range(START, END, freq="D")
    for df in series.values():
        assert (pd.DatetimeIndex(df["date"]) == expected).all()
    first_row = ts_path(demo, "22001").read_text().splitlines()[1]
    assert first_row.startswith(f"{START},")
    # Two decimals everywhere, missing values as the literal NaN.
    for field in first_row.split(",")[1:]:
        assert field == "NaN" or len(field.split(".")[1]) == 2


def test_forcings_complete_and_plausible(series: dict[str, pd.DataFrame]) -> None:
    for df in series.values():
        assert not df[FORCINGS].isna().any().any()
        assert (df[["precipitation", "pet", "peti", "humidity", "shortwave_rad"]] >= 0).all().all()
        assert (df["peti"] >= df["pet"]).all()
        assert 0.5 < df["pet"].mean() < 2.5
        assert -2.0 < df["temperature"].mean() < 14.0
        # Winter (DJF) colder than summer (JJA), wetter on average.
        month = df["date"].dt.month
        assert (
            df.loc[month.isin([12, 1, 2]), "temperature"].mean()
            < df.loc[month.isin([6, 7, 8]), "temperature"].mean()
        )


def test_discharge_gaps(series: dict[str, pd.DataFrame]) -> None:
    for gid, df in series.items():
        missing = df["discharge_spec"].isna()
        assert missing.any(), gid
        assert missing.mean() < 0.35, gid
        assert (missing == df["discharge_vol"].isna()).all()
        assert (df["discharge_spec"].dropna() >= 0).all()


def test_10003_record_starts_in_1983(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path, ["10003"], "1982-10-01", "1984-09-30")
    df = pd.read_csv(ts_path(tmp_path, "10003", "1982-10-01", "1984-09-30"), parse_dates=["date"])
    before = df["date"] < "1983-05-19"
    assert df.loc[before, "discharge_spec"].isna().all()
    assert df.loc[~before, "discharge_spec"].notna().mean() > 0.9
    meta = attributes(tmp_path, "hydrometry").iloc[0]
    assert meta["flow_period_start"] >= "1983-05-19"


def test_discharge_vol_matches_spec(demo: Path, series: dict[str, pd.DataFrame]) -> None:
    area = attributes(demo, "topographic").set_index("gauge_id")["area"]
    for gid, df in series.items():
        factor = area[gid] * 1000.0 / 86400.0
        ok = df["discharge_spec"].notna()
        expected = df.loc[ok, "discharge_spec"] * factor
        # Both columns are rounded to 2 decimals: spec's rounding error is scaled by `factor`.
        tol = 0.005 * factor + 0.005 + 1e-9
        assert np.abs(df.loc[ok, "discharge_vol"] - expected).max() <= tol, gid


def test_water_balance(demo: Path, series: dict[str, pd.DataFrame]) -> None:
    hydrologic = attributes(demo, "hydrologic").set_index("gauge_id")
    for gid, df in series.items():
        q = df["discharge_spec"].mean()
        assert 0.0 < q < df["precipitation"].mean(), gid
        assert abs(hydrologic.loc[gid, "q_mean"] - q) <= 0.011
        assert 0.0 < hydrologic.loc[gid, "runoff_ratio"] < 1.0


def test_attributes_complete_and_consistent(demo: Path) -> None:
    for group in ATTRIBUTE_COLUMNS:
        df = attributes(demo, group)
        assert list(df["gauge_id"]) == list(DEMO_BASINS), group
        assert not df.isna().any().any(), group
    topo = attributes(demo, "topographic")
    assert topo["gauge_name"].str.contains("Synthetic").all()
    assert topo["gauge_lat"].between(50, 58.5).all()
    assert topo["gauge_lon"].between(-5.5, 1.5).all()
    assert topo["area"].between(10, 2000).all()
    elev = topo[["elev_min", "elev_10", "elev_50", "elev_90", "elev_max"]].to_numpy()
    assert (np.diff(elev, axis=1) >= 0).all()
    land = attributes(demo, "landcover")
    assert np.allclose(land.filter(like="_perc").sum(axis=1), 100.0, atol=1e-6)
    geo = attributes(demo, "hydrogeology")
    assert np.allclose(geo.drop(columns="gauge_id").sum(axis=1), 100.0, atol=1e-6)
    human = attributes(demo, "humaninfluence")
    assert set(human["benchmark_catch"]) <= {"Y", "N"}
    clim = attributes(demo, "climatic")
    assert set(clim["high_prec_timing"]) | set(clim["low_prec_timing"]) <= {
        "djf",
        "mam",
        "jja",
        "son",
    }
    assert (clim["aridity"] - clim["pet_mean"] / clim["p_mean"]).abs().max() < 0.02


def test_wetter_basins_have_higher_p_mean(demo: Path, series: dict[str, pd.DataFrame]) -> None:
    clim = attributes(demo, "climatic").set_index("gauge_id")
    for gid, df in series.items():
        assert abs(clim.loc[gid, "p_mean"] - df["precipitation"].mean()) < 0.006
    # Attributes carry information: across basins, wetter means less arid and more runoff.
    hydro = attributes(demo, "hydrologic").set_index("gauge_id")
    assert np.corrcoef(clim["p_mean"], clim["aridity"])[0, 1] < -0.5
    assert np.corrcoef(clim["p_mean"], hydro["q_mean"])[0, 1] > 0.5


def test_reproducible_and_seed_dependent(demo: Path, tmp_path: Path) -> None:
    same, other = tmp_path / "same", tmp_path / "other"
    write_demo_dataset(same, start=START, end=END, seed=0)
    write_demo_dataset(other, start=START, end=END, seed=1)
    for sub in ("timeseries", "attributes"):
        names = sorted(p.name for p in (demo / sub).iterdir())
        _, mismatch, errors = filecmp.cmpfiles(demo / sub, same / sub, names, shallow=False)
        assert mismatch == [] and errors == []
    assert ts_path(demo, "22001").read_bytes() != ts_path(other, "22001").read_bytes()


def test_basins_independent_of_each_other(demo: Path, tmp_path: Path) -> None:
    assert write_demo_dataset(tmp_path, [54017, "22001"], START, END) == ["54017", "22001"]
    for gid in ("22001", "54017"):
        assert ts_path(tmp_path, gid).read_bytes() == ts_path(demo, gid).read_bytes()
    for group in ATTRIBUTE_COLUMNS:
        sub = attributes(tmp_path, group).set_index("gauge_id")
        full = attributes(demo, group).set_index("gauge_id")
        pd.testing.assert_frame_equal(sub, full.loc[["54017", "22001"]])


def test_rewrite_replaces_stale_files(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path, ["22001", "22006"], "1990-01-01", "1990-12-31")
    write_demo_dataset(tmp_path, ["22001"], START, END)
    assert [p.name for p in (tmp_path / "timeseries").iterdir()] == [
        ts_path(tmp_path, "22001").name
    ]


def test_refuses_to_overwrite_unmarked_data(tmp_path: Path) -> None:
    real = tmp_path / "timeseries" / "CAMELS_GB_hydromet_timeseries_22001_19701001-20150930.csv"
    real.parent.mkdir()
    real.write_text("real data")
    with pytest.raises(FileExistsError):
        write_demo_dataset(tmp_path, ["22001"], START, END)
    assert real.read_text() == "real data"


def test_very_short_period(tmp_path: Path) -> None:
    assert write_demo_dataset(tmp_path, ["75003"], "2000-01-01", "2000-01-10") == ["75003"]
    df = pd.read_csv(ts_path(tmp_path, "75003", "2000-01-01", "2000-01-10"))
    assert len(df) == 10 and df["discharge_spec"].notna().all()
    for group in ATTRIBUTE_COLUMNS:
        assert not attributes(tmp_path, group).isna().any().any(), group


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": "2000-01-02", "end": "2000-01-01"}, "before start"),
        ({"basin_ids": []}, "empty"),
        ({"basin_ids": ["22001", "Thames"]}, "not numeric"),
        ({"basin_ids": ["22001", ""]}, "not numeric"),
        ({"start": "not a date"}, "dates"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"basin_ids": ["22001"], "start": START, "end": END} | kwargs
    with pytest.raises(ValueError, match=message):
        write_demo_dataset(tmp_path, **args)
    assert not (tmp_path / "timeseries").exists()
