"""Metrics against hand-worked values and against HydroErr (an independent implementation)."""

from __future__ import annotations

import math

import HydroErr as he
import numpy as np
import pytest

import hydrologyDataset as hd
from utils import (
    LOG_FLOW_FLOOR,
    alpha_nse,
    basin_metrics_table,
    beta_nse,
    bias_pct,
    compute_metrics,
    daily_series,
    fhv,
    flv,
    fms,
    kge,
    kge_parts,
    mae,
    missed_peaks,
    mm_per_day_to_m3s,
    nse,
    peak_timing,
    pearson_r,
    period,
    persistence_nse,
    r2,
    rmse,
)

OBS = [1.0, 2.0, 3.0, 4.0]
SIM = [1.0, 2.0, 3.0, 5.0]


def test_hand_worked_nse_rmse_mae_bias():
    # mean(obs) = 2.5, Σ(obs-mean)² = 5, Σ(sim-obs)² = 1
    assert nse(OBS, SIM) == pytest.approx(0.8)
    assert rmse(OBS, SIM) == pytest.approx(0.5)  # sqrt(1/4)
    assert mae(OBS, SIM) == pytest.approx(0.25)
    assert bias_pct(OBS, SIM) == pytest.approx(10.0)  # 100 · (11 - 10) / 10


def test_hand_worked_kge_and_parts():
    # sim = 2·obs: r = 1, alpha = σs/σo = 2, beta = μs/μo = 2 -> KGE = 1 - sqrt(0 + 1 + 1)
    parts = kge_parts(OBS, [2.0, 4.0, 6.0, 8.0])
    assert parts["r"] == pytest.approx(1.0)
    assert parts["alpha"] == pytest.approx(2.0)
    assert parts["beta"] == pytest.approx(2.0)
    assert parts["kge"] == pytest.approx(1 - math.sqrt(2))
    # reversed series: r = -1, alpha = beta = 1 -> KGE = 1 - 2
    assert kge([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert kge(OBS, OBS) == pytest.approx(1.0)


def test_hand_worked_r2_is_squared_pearson():
    # x = [1,2,3], y = [1,3,2]: cov = 1, var x = var y = 2 (sums) -> r = 1/2
    assert r2([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.25)
    # an offset and a scale do not change R² but do change NSE
    assert r2(OBS, [10 + 3 * v for v in OBS]) == pytest.approx(1.0)
    assert nse(OBS, [10 + 3 * v for v in OBS]) < 0


def test_hand_worked_persistence_nse():
    # obs[1:] = [2,3,4,5] predicted by [1,2,3,4]: Σ err² = 4, Σ(obs-3.5)² = 5 -> 1 - 4/5
    assert persistence_nse([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(0.2)
    # lead 2: [3,4,5] from [1,2,3]: Σ err² = 12, Σ(obs-4)² = 2 -> 1 - 6
    assert persistence_nse([1.0, 2.0, 3.0, 4.0, 5.0], lead=2) == pytest.approx(-5.0)


def test_nan_pairs_are_masked():
    obs = [1.0, np.nan, 2.0, 3.0, 4.0, 7.0]
    sim = [1.0, 9.0, 2.0, 3.0, 5.0, np.nan]
    assert nse(obs, sim) == pytest.approx(0.8)
    assert rmse(obs, sim) == pytest.approx(0.5)
    assert mae(obs, sim) == pytest.approx(0.25)
    assert bias_pct(obs, sim) == pytest.approx(10.0)
    metrics = compute_metrics(obs, sim)
    assert metrics["n_scored"] == 4
    assert metrics["nse"] == pytest.approx(0.8)
    assert set(metrics) == {
        "nse", "kge", "kge_r", "kge_alpha", "kge_beta", "rmse", "mae", "r2", "bias_pct",
        "pearson_r", "alpha_nse", "beta_nse", "fhv", "flv", "fms", "peak_timing", "missed_peaks",
        "n_scored",
    }  # fmt: skip


def test_persistence_nse_skips_gaps():
    # the pairs touching the gap drop out; 1 -> 2, 3 -> 4 and 4 -> 5 remain
    obs = [1.0, 2.0, np.nan, 3.0, 4.0, 5.0]
    expected = nse([2.0, 4.0, 5.0], [1.0, 3.0, 4.0])
    assert persistence_nse(obs) == pytest.approx(expected)


@pytest.mark.parametrize("metric", [nse, kge, r2])
def test_constant_observations_give_nan_with_warning(metric):
    with pytest.warns(RuntimeWarning, match="undefined"):
        value = metric([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert math.isnan(value)


def test_empty_pairs_give_nan_with_warning():
    with pytest.warns(RuntimeWarning):
        metrics = compute_metrics([np.nan, 1.0], [2.0, np.nan])
    assert metrics["n_scored"] == 0
    assert all(math.isnan(v) for k, v in metrics.items() if k != "n_scored")


def test_order_obs_sim_matters():
    assert bias_pct(OBS, SIM) == pytest.approx(10.0)
    assert bias_pct(SIM, OBS) == pytest.approx(-100.0 / 11.0)
    assert nse(OBS, SIM) != pytest.approx(nse(SIM, OBS))
    assert kge_parts(OBS, [2.0, 4.0, 6.0, 8.0])["beta"] == pytest.approx(2.0)
    assert kge_parts([2.0, 4.0, 6.0, 8.0], OBS)["beta"] == pytest.approx(0.5)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="differ in length"):
        nse([1.0, 2.0], [1.0, 2.0, 3.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agreement_with_hydroerr_on_series_with_gaps(seed):
    rng = np.random.default_rng(seed)
    obs = rng.gamma(2.0, 1.5, size=400)
    sim = 0.8 * obs + rng.normal(0.3, 0.7, size=400)
    obs[rng.random(400) < 0.1] = np.nan
    sim[rng.random(400) < 0.05] = np.nan
    keep = np.isfinite(obs) & np.isfinite(sim)
    o, s = obs[keep], sim[keep]
    # HydroErr takes (simulated, observed)
    assert nse(obs, sim) == pytest.approx(he.nse(s, o), rel=1e-10)
    assert kge(obs, sim) == pytest.approx(he.kge_2009(s, o), rel=1e-10)
    r, alpha, beta, _ = he.kge_2009(s, o, return_all=True)
    parts = kge_parts(obs, sim)
    assert (parts["r"], parts["alpha"], parts["beta"]) == pytest.approx((r, alpha, beta))
    assert rmse(obs, sim) == pytest.approx(he.rmse(s, o), rel=1e-10)
    assert mae(obs, sim) == pytest.approx(he.mae(s, o), rel=1e-10)
    assert r2(obs, sim) == pytest.approx(he.r_squared(s, o), rel=1e-10)
    assert pearson_r(obs, sim) == pytest.approx(he.pearson_r(s, o), rel=1e-10)
    assert alpha_nse(obs, sim) == pytest.approx(alpha, rel=1e-10)  # σs/σo, any ddof
    # HydroErr has no beta-NSE; its mean error over the (population) σ_obs is the same quantity
    assert beta_nse(obs, sim) == pytest.approx(he.me(s, o) / np.std(o), rel=1e-10)


def test_mm_per_day_to_m3s():
    # 1 mm/day over 86.4 km² is 86 400 m³ a day, i.e. 1 m³/s
    assert mm_per_day_to_m3s([1.0, 2.5], 86.4) == pytest.approx([1.0, 2.5])


# --------------------------------------------------------------------------- NSE decomposition


@pytest.mark.parametrize("seed", [0, 1])
def test_nse_decomposes_into_alpha_beta_and_r(seed):
    # Gupta et al. (2009): NSE = 2·α·r − α² − β_n²
    rng = np.random.default_rng(seed)
    obs = rng.gamma(2.0, 1.5, size=300)
    sim = 0.7 * obs + rng.normal(0.5, 0.8, size=300)
    a, b, r = alpha_nse(obs, sim), beta_nse(obs, sim), pearson_r(obs, sim)
    assert nse(obs, sim) == pytest.approx(2 * a * r - a**2 - b**2, rel=1e-10)


def test_hand_worked_alpha_beta_pearson():
    # sim = 2·obs + 1: σs/σo = 2, (μs − μo)/σo = (6 − 2.5)/√1.25, r = 1
    assert alpha_nse(OBS, [3.0, 5.0, 7.0, 9.0]) == pytest.approx(2.0)
    assert beta_nse(OBS, [3.0, 5.0, 7.0, 9.0]) == pytest.approx(3.5 / math.sqrt(1.25))
    assert pearson_r(OBS, [3.0, 5.0, 7.0, 9.0]) == pytest.approx(1.0)
    assert pearson_r([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)


# --------------------------------------------------------------------------- flow-duration curve


def test_hand_worked_fhv_sorts_each_series_on_its_own():
    # n = 100 -> the top 2 % are 2 flows. obs FDC starts 100, 99; sim changes 100 -> 110 and
    # 99 -> 89, so its FDC starts 110, 98: 100 · ((110 − 100) + (98 − 99)) / (100 + 99)
    obs = np.arange(1.0, 101.0)
    sim = obs.copy()
    sim[99], sim[98] = 110.0, 89.0
    rng = np.random.default_rng(0)
    order = rng.permutation(100)  # the time order does not matter
    assert fhv(obs[order], sim[order]) == pytest.approx(100.0 * 9.0 / 199.0)
    assert fhv(obs, obs) == 0.0


def test_hand_worked_flv():
    # n = 10 -> the 3 lowest flows. obs: 3, 2, 1 -> Σ(log Q − log 1) = log 6; sim: 4, 2, 1 -> log 8
    obs = np.arange(10.0, 0.0, -1.0)
    sim = np.array([10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 4.0, 2.0, 1.0])
    expected = -100.0 * (math.log(8) - math.log(6)) / math.log(6)
    assert flv(obs, sim) == pytest.approx(expected)
    assert flv(obs, obs) == 0.0


def test_flv_floors_zero_and_negative_flows_before_the_log():
    # lowest 3 observed: 2, 1, 0 -> 0 becomes LOG_FLOW_FLOOR; Σ(log Q − log floor)
    obs = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    qol = math.log(2 / LOG_FLOW_FLOOR) + math.log(1 / LOG_FLOW_FLOOR)
    # a simulated -0.5 is floored the same way: the low segments agree, FLV 0
    sim = obs.copy()
    sim[-1] = -0.5
    assert flv(obs, sim) == pytest.approx(0.0, abs=1e-12)
    # simulated 2, 1, 1.0e-3: Σ = log(2/1e-3) + log(1/1e-3)
    sim[-1] = 1.0e-3
    qsl = math.log(2 / 1.0e-3) + math.log(1 / 1.0e-3)
    assert flv(obs, sim) == pytest.approx(-100.0 * (qsl - qol) / qol)
    assert np.isfinite(fms(obs, sim))


def test_flv_is_nan_when_the_low_flows_are_all_zero():
    obs = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    with pytest.warns(RuntimeWarning, match="FLV is undefined for low flows that are all equal"):
        assert math.isnan(flv(obs, obs + 0.5))


def test_hand_worked_fms():
    # n = 10: entries 2 and 7 of each FDC (exceedance 0.2 and 0.7): obs 8 and 3, sim 16 and 3
    obs = np.arange(10.0, 0.0, -1.0)
    sim = np.array([20.0, 18.0, 16.0, 9.0, 8.0, 7.0, 6.0, 3.0, 2.0, 1.0])
    slope_obs, slope_sim = math.log(8 / 3), math.log(16 / 3)
    assert fms(obs, sim) == pytest.approx(100.0 * (slope_sim - slope_obs) / slope_obs)
    assert fms(obs, 2.0 * obs) == pytest.approx(0.0, abs=1e-12)  # a factor keeps the log slope


def test_constant_flow():
    obs, sim = np.full(100, 2.0), np.full(100, 3.0)
    assert fhv(obs, sim) == pytest.approx(50.0)  # defined: the top 2 % are 2 and 3
    for metric in (flv, fms, alpha_nse, beta_nse, pearson_r, peak_timing, missed_peaks):
        with pytest.warns(RuntimeWarning, match="undefined"):
            assert math.isnan(metric(obs, sim)), metric.__name__


def test_fhv_needs_enough_pairs():
    with pytest.warns(RuntimeWarning, match="too few pairs"):
        assert math.isnan(fhv(np.arange(1.0, 21.0), np.arange(1.0, 21.0)))


# --------------------------------------------------------------------------- peaks


def flood_series(n: int, peaks: dict[int, float]) -> np.ndarray:
    """Base flow 1 with triangular floods: the peak on its day, halfway there a day either side."""
    q = np.ones(n)
    for day, height in peaks.items():
        q[day] = height
        q[day - 1] = q[day + 1] = 1 + (height - 1) / 2
    return q


def test_hand_worked_peak_timing():
    obs = flood_series(400, {100: 10.0, 300: 10.0})
    sim = flood_series(400, {102: 8.0, 300: 12.0})  # the first 2 days late, the second on time
    assert peak_timing(obs, sim) == pytest.approx(1.0)
    assert peak_timing(obs, obs) == 0.0
    # a simulated peak farther away than the 3-day window: the largest value inside it counts
    late = flood_series(400, {110: 9.0, 300: 9.0})
    assert peak_timing(obs, late) == pytest.approx((3 + 0) / 2)  # a flat window: its first day


def test_peak_timing_skips_peaks_next_to_gaps():
    obs = flood_series(400, {100: 10.0, 300: 10.0})
    sim = flood_series(400, {102: 8.0, 300: 12.0})
    sim[298] = np.nan  # inside ±3 days of the second peak: it is not scored
    assert peak_timing(obs, sim) == pytest.approx(2.0)
    obs[98] = np.nan  # and now the first one too
    with pytest.warns(RuntimeWarning, match="without a peak clear of gaps"):
        assert math.isnan(peak_timing(obs, sim))


def test_no_peaks_give_nan_with_warning():
    rising = np.linspace(1.0, 5.0, 200)
    with pytest.warns(RuntimeWarning, match="peak timing is undefined"):
        assert math.isnan(peak_timing(rising, rising))
    with pytest.warns(RuntimeWarning, match="missed peaks is undefined"):
        assert math.isnan(missed_peaks(rising, rising))


def test_hand_worked_missed_peaks():
    obs = flood_series(260, {50: 6.0, 100: 7.0, 150: 8.0, 200: 9.0})
    # hits within ±1 day at 51 and 100; 153 is 3 days off and nothing is near 200: 2 of 4 missed
    sim = flood_series(260, {51: 6.0, 100: 7.0, 153: 8.0})
    assert missed_peaks(obs, sim) == pytest.approx(0.5)
    assert missed_peaks(obs, obs) == 0.0
    obs[199] = np.nan  # the peak at 200 is next to a gap: not scored, 1 of 3 missed
    assert missed_peaks(obs, sim) == pytest.approx(1.0 / 3.0)


def test_daily_series_lays_values_on_a_calendar():
    dates = np.array(["2000-01-03", "2000-01-01", "2000-01-05"], dtype="datetime64[D]")
    obs, sim = daily_series(dates, [3.0, 1.0, 5.0], [30.0, 10.0, 50.0])
    np.testing.assert_array_equal(obs, [1.0, np.nan, 3.0, np.nan, 5.0])
    np.testing.assert_array_equal(sim, [10.0, np.nan, 30.0, np.nan, 50.0])
    assert daily_series(np.concatenate([dates, dates[:1]]), [1.0] * 4, [1.0] * 4) is None


def test_compute_metrics_with_dates_matches_the_daily_series():
    obs = flood_series(400, {100: 10.0, 300: 10.0})
    sim = flood_series(400, {102: 8.0, 300: 12.0})
    days = np.datetime64("2000-01-01") + np.arange(400)
    keep = np.ones(400, bool)
    keep[[10, 11, 299]] = False  # days without a window: gaps, as NaN in the daily series
    gappy = sim.copy()
    gappy[~keep] = np.nan
    shuffled = np.random.default_rng(1).permutation(np.flatnonzero(keep))
    with_dates = compute_metrics(obs[shuffled], sim[shuffled], dates=days[shuffled])
    assert with_dates == pytest.approx(compute_metrics(obs, gappy), nan_ok=True)
    assert with_dates["peak_timing"] == pytest.approx(2.0)  # the peak next to the gap is skipped
    # several values per day (forecast leads): the peak metrics are NaN, the rest is not
    twice = np.concatenate([days, days])
    with pytest.warns(RuntimeWarning, match="one value per day"):
        both = compute_metrics(np.tile(obs, 2), np.tile(sim, 2), dates=twice)
    assert math.isnan(both["peak_timing"]) and math.isnan(both["missed_peaks"])
    assert both["nse"] == pytest.approx(nse(obs, sim))


# --------------------------------------------------------------------------- per-basin tables


@pytest.fixture
def sample_scalers(real_data, base_config):
    spec = hd.FeatureSpec.from_config(base_config)
    train = period(base_config, "train")
    return hd.Scalers.fit(real_data, spec, base_config["TRAIN_BASINS"], *train)


def _scaled_targets(windows) -> np.ndarray:
    """Each window's observed targets in scaled units (0 where unobserved): a stand-in model."""
    return windows.y[windows.sample_end[:, None] + windows._targets].numpy()


def test_basin_table_peak_metrics_follow_the_calendar(real_data, base_config, sample_scalers):
    # simulate mode scored with stride PREDICT_LAST_N: every day once, in one series per basin
    config = {**base_config, "MODE": "simulate", "SEQ_LEN": 30, "PREDICT_LAST_N": 10}
    spec = hd.FeatureSpec.from_config(config)
    start, end = period(config, "test")
    w = hd.WindowData(real_data, spec, sample_scalers, ["22001", "39025"], start, end, stride=10)
    pred = 0.9 * _scaled_targets(w)  # a damped copy of the observations
    table = basin_metrics_table(w, pred, real_data, {}).set_index("basin")
    for basin in ("22001", "39025"):
        b = real_data.basins[basin]
        days = np.arange(start, end + 1)
        obs = b.column("discharge_spec").astype(np.float64)[(days - b.start).astype(int)]
        sim = sample_scalers.unscale_target(0.9 * sample_scalers.scale_target(obs))
        ref = compute_metrics(obs, sim)  # the raw CSV's days, in order
        for key in ("peak_timing", "missed_peaks", "fhv", "flv", "fms", "nse", "beta_nse"):
            assert table.loc[basin, key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
        assert np.isfinite(table.loc[basin, "peak_timing"])


def test_basin_table_with_several_leads_leaves_peak_metrics_nan(
    real_data, base_config, sample_scalers, caplog
):
    spec = hd.FeatureSpec.from_config({**base_config, "PRED_LEN": 2})
    start, end = period(base_config, "test")
    w = hd.WindowData(real_data, spec, sample_scalers, ["22001"], start, end)
    with caplog.at_level("INFO", logger="sca2lstm"):
        table = basin_metrics_table(w, _scaled_targets(w), real_data, {})
    assert table["peak_timing"].isna().all() and table["missed_peaks"].isna().all()
    assert table["nse"].iloc[0] == pytest.approx(1.0)
    assert np.isfinite(table[["fhv", "flv", "fms", "pearson_r"]].to_numpy()).all()
    assert "PRED_LEN 2" in caplog.text
