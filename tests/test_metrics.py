"""Metrics against hand-worked values and against HydroErr (an independent implementation)."""

from __future__ import annotations

import math

import HydroErr as he
import numpy as np
import pytest

from utils import (
    bias_pct,
    compute_metrics,
    kge,
    kge_parts,
    mae,
    mm_per_day_to_m3s,
    nse,
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
        "nse", "kge", "kge_r", "kge_alpha", "kge_beta", "rmse", "mae", "r2", "bias_pct", "n_scored",
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


def test_mm_per_day_to_m3s():
    # 1 mm/day over 86.4 km² is 86 400 m³ a day, i.e. 1 m³/s
    assert mm_per_day_to_m3s([1.0, 2.5], 86.4) == pytest.approx([1.0, 2.5])
