"""Synthetic CAMELS-GB-format demo dataset, for running the toolkit without the real data.

The files follow the layout of the official CAMELS-GB download (Coxon et al., 2020, ESSD 12, 2459),
but every number is made up: a stochastic weather generator drives the GR4J rainfall-runoff model
(Perrin et al., 2003) for each catchment, and the static attributes are derived from the same
per-catchment parameters, so that they carry information an LSTM can learn from. A marker file,
``SYNTHETIC_DEMO.txt``, at the dataset root says the data are synthetic.

Usage::

    from demo_data import write_demo_dataset
    write_demo_dataset("datasets/CAMELS_GB_demo")                       # 12 basins, 1970-2015
    write_demo_dataset("/tmp/demo", ["22001"], "1990-10-01", "1993-09-30", seed=1)
"""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DEMO_BASINS: tuple[str, ...] = (
    "10002",
    "10003",
    "22001",
    "22006",
    "32006",
    "39025",
    "42003",
    "45003",
    "51001",
    "54017",
    "75003",
    "79005",
)
SYNTHETIC_MARKER = "SYNTHETIC_DEMO.txt"

TIMESERIES_COLUMNS: tuple[str, ...] = (
    "date",
    "precipitation",
    "pet",
    "temperature",
    "discharge_spec",
    "discharge_vol",
    "peti",
    "humidity",
    "shortwave_rad",
    "longwave_rad",
    "windspeed",
)


def _split(names: str) -> tuple[str, ...]:
    return tuple(names.split())


ATTRIBUTE_COLUMNS: dict[str, tuple[str, ...]] = {
    "climatic": _split(
        "gauge_id p_mean pet_mean aridity p_seasonality frac_snow high_prec_freq high_prec_dur "
        "high_prec_timing low_prec_freq low_prec_dur low_prec_timing"
    ),
    "humaninfluence": _split(
        "gauge_id benchmark_catch surfacewater_abs groundwater_abs discharges abs_agriculture_perc "
        "abs_amenities_perc abs_energy_perc abs_environmental_perc abs_industry_perc "
        "abs_watersupply_perc num_reservoir reservoir_cap reservoir_he reservoir_nav "
        "reservoir_drain reservoir_wr reservoir_fs reservoir_env reservoir_nousedata "
        "reservoir_year_first reservoir_year_last"
    ),
    "hydrogeology": _split(
        "gauge_id inter_high_perc inter_mod_perc inter_low_perc frac_high_perc frac_mod_perc "
        "frac_low_perc no_gw_perc low_nsig_perc nsig_low_perc"
    ),
    "hydrologic": _split(
        "gauge_id q_mean runoff_ratio stream_elas slope_fdc baseflow_index baseflow_index_ceh "
        "hfd_mean Q5 Q95 high_q_freq high_q_dur low_q_freq low_q_dur zero_q_freq"
    ),
    "hydrometry": _split(
        "gauge_id station_type flow_period_start flow_period_end flow_perc_complete bankfull_flow "
        "structurefull_flow q5_uncert_upper q5_uncert_lower q25_uncert_upper q25_uncert_lower "
        "q50_uncert_upper q50_uncert_lower q75_uncert_upper q75_uncert_lower q95_uncert_upper "
        "q95_uncert_lower q99_uncert_upper q99_uncert_lower quncert_meta"
    ),
    "landcover": _split(
        "gauge_id dwood_perc ewood_perc grass_perc shrub_perc crop_perc urban_perc inwater_perc "
        "bares_perc dom_land_cover"
    ),
    "soil": ("gauge_id",)
    + tuple(
        f"{var}{suffix}"
        for var, suffixes in (
            ("sand_perc", ("", "_missing")),
            ("silt_perc", ("", "_missing")),
            ("clay_perc", ("", "_missing")),
            ("organic_perc", ("", "_missing")),
            ("bulkdens", ("", "_missing", "_5", "_50", "_95")),
            ("tawc", ("", "_missing", "_5", "_50", "_95")),
            ("porosity_cosby", ("", "_missing", "_5", "_50", "_95")),
            ("porosity_hypres", ("", "_missing", "_5", "_50", "_95")),
            ("conductivity_cosby", ("", "_missing", "_5", "_50", "_95")),
            ("conductivity_hypres", ("", "_missing", "_5", "_50", "_95")),
            ("root_depth", ("", "_missing", "_5", "_50", "_95")),
            ("soil_depth_pelletier", ("", "_missing", "_5", "_50", "_95")),
        )
        for suffix in suffixes
    ),
    "topographic": _split(
        "gauge_id gauge_name gauge_lat gauge_lon gauge_easting gauge_northing gauge_elev area "
        "dpsbar elev_mean elev_min elev_10 elev_50 elev_90 elev_max"
    ),
}

# Like the real gauge 10003, whose record starts on this date; discharge before it is missing.
_FLOW_RECORD_START: dict[str, str] = {"10003": "1983-05-19"}

_WARMUP_DAYS = 730
_SEASONS = ("djf", "mam", "jja", "son")
_MONTH_TO_SEASON = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0])  # index = month (1..12)
_LAND_CLASSES = ("dwood", "ewood", "grass", "shrub", "crop", "urban", "inwater", "bares")
_LAND_NAMES = {
    "dwood": "Deciduous Woodland",
    "ewood": "Evergreen Woodland",
    "grass": "Grass and Pasture",
    "shrub": "Shrubs",
    "crop": "Crops",
    "urban": "Urban",
    "inwater": "Inland Water",
    "bares": "Bare Soil and Rocks",
}
_HYDROGEOLOGY_CLASSES = ATTRIBUTE_COLUMNS["hydrogeology"][1:]
_ABSTRACTION_CLASSES = ATTRIBUTE_COLUMNS["humaninfluence"][5:11]
_RESERVOIR_USES = ATTRIBUTE_COLUMNS["humaninfluence"][13:20]
_STATION_TYPES = ("VA", "FV", "C", "CC", "FVVA", "MIS", "US", "FL")
_STATION_PROBS = (0.38, 0.16, 0.12, 0.10, 0.07, 0.06, 0.06, 0.05)


@dataclass(frozen=True)
class _Basin:
    """Latent and model parameters of one synthetic catchment (drawn once, before any series)."""

    gauge_id: str
    lat: float
    west: float  # 0 (east coast) .. 1 (west coast): drives wetness and wind
    p_target: float  # mm/day, mean annual precipitation the weather generator aims at
    area: float  # km2, rounded as written, so discharge_vol is consistent with the file
    elev_mean: float  # m
    wood: float  # fraction of deciduous + evergreen woodland
    x1: float  # mm, GR4J production store capacity
    x2: float  # mm/day, GR4J groundwater exchange coefficient
    x3: float  # mm, GR4J routing store capacity
    x4: float  # days, GR4J unit hydrograph time base
    ddf: float  # mm/degC/day, degree-day snowmelt factor
    net_use: float  # mm/day, effluent discharges minus abstractions added to simulated flow
    static: dict[str, dict[str, object]]  # attributes not computed from the series, by group


# --------------------------------------------------------------------------------- validation


def _check_inputs(
    basin_ids: Iterable[str | int] | str, start: object, end: object, seed: int
) -> tuple[list[str], pd.DatetimeIndex]:
    if isinstance(basin_ids, str | int):
        basin_ids = [basin_ids]
    ids: list[str] = []
    for raw in basin_ids:
        gid = str(raw).strip()
        if not re.fullmatch(r"[0-9]+", gid):
            raise ValueError(f"basin id {raw!r} is not numeric; CAMELS-GB gauge ids are digits")
        if gid not in ids:
            ids.append(gid)
    if not ids:
        raise ValueError("basin_ids is empty; give at least one numeric gauge id")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        t0 = pd.Timestamp(start).normalize()
        t1 = pd.Timestamp(end).normalize()
    except (TypeError, ValueError) as err:
        raise ValueError(f"start/end must be dates such as '1970-10-01': {err}") from err
    if t1 < t0:
        raise ValueError(f"end ({t1.date()}) is before start ({t0.date()})")
    return ids, pd.date_range(t0, t1, freq="D")


# ------------------------------------------------------------------------------ random draws


def _hundredths(weights: np.ndarray) -> np.ndarray:
    """Percentages with 2 decimals summing to exactly 100 (largest-remainder rounding)."""
    raw = weights / weights.sum() * 10000.0
    cents = np.floor(raw).astype(np.int64)
    short = 10000 - int(cents.sum())
    cents[np.argsort(cents - raw)[:short]] += 1
    return cents / 100.0


def _spread(
    rng: np.random.Generator, value: float, rel: float, lo: float, hi: float
) -> tuple[float, float, float]:
    """Catchment 5th/50th/95th percentiles bracketing a catchment mean, clipped to [lo, hi]."""
    low, high = rng.uniform(0.3, 1.0, 2) * rel
    p5 = min(max(value * (1.0 - low), lo), value)
    p95 = max(min(value * (1.0 + high), hi), value)
    p50 = min(max(value * rng.uniform(0.95, 1.05), p5), p95)
    return p5, p50, p95


def _draw_basin(gauge_id: str, rng: np.random.Generator) -> _Basin:
    """Draw one catchment's parameters; the order of draws is fixed so results are reproducible."""
    # Location: a rough outline of Great Britain (Scotland is narrow and west of 2 degW).
    lat = rng.uniform(50.3, 58.3)
    lon_range = (-5.3, -1.9) if lat > 55.3 else (-4.6, 0.3) if lat > 53.3 else (-5.3, 1.4)
    lon = rng.uniform(*lon_range)
    west = float(np.clip((1.5 - lon) / 7.0, 0.0, 1.0))
    north = (lat - 50.0) / 8.5
    upland = float(np.clip(0.45 * west + 0.35 * north + rng.normal(0.0, 0.15), 0.02, 1.0))
    # British rainfall rises to the west and with altitude (orographic enhancement).
    wetness = float(np.clip(0.5 * west + 0.45 * upland + rng.normal(0.0, 0.1), 0.0, 1.0))
    p_target = 1.5 + 3.5 * wetness
    area = round(10.0 ** rng.uniform(1.0, math.log10(2000.0)), 2)
    elev_mean = 25.0 + 520.0 * upland**1.4 * rng.uniform(0.8, 1.2)
    dpsbar = 15.0 + 230.0 * upland * rng.uniform(0.7, 1.3)
    # Permeable chalk and limestone are lowland features of the south and east.
    perm = float(np.clip(rng.uniform() ** 1.3 * (1.0 - 0.7 * upland) + 0.15 * (1.0 - west), 0, 1))

    # Soil texture follows permeability; silt closes the sand+silt+clay = 100 % balance.
    clay = float(np.clip(12.0 + 30.0 * (1.0 - perm) * rng.uniform(0.6, 1.2), 7.0, 50.0))
    sand = float(np.clip(25.0 + 50.0 * perm * rng.uniform(0.7, 1.2), 15.0, 88.0 - clay))
    silt = 100.0 - sand - clay
    organic = float(min(0.4 + 25.0 * upland**2 * rng.uniform(0.3, 1.2), 33.0))
    # Cosby et al. (1984, WRR 20, 682), table 4: log10 Ks [in/h] and porosity [%] from texture.
    cond_cosby = 2.54 * 10.0 ** (-0.6 + 0.0126 * sand - 0.0064 * clay)
    por_cosby = 50.5 - 0.142 * sand - 0.037 * clay
    cond_hypres = cond_cosby * rng.uniform(0.7, 1.2) * (1.0 + 0.01 * organic)
    por_hypres = por_cosby + 0.8 * organic + rng.normal(2.0, 1.5)
    bulkdens = float(np.clip(1.55 - 0.025 * organic + rng.normal(0.0, 0.05), 0.3, 1.7))
    tawc = float(np.clip(40.0 + 1.6 * silt + 2.0 * organic + rng.normal(0.0, 10.0), 35.0, 235.0))
    root_depth = float(np.clip(1.3 - 0.8 * upland + rng.normal(0.0, 0.1), 0.3, 1.3))
    soil_depth = float(
        np.clip(0.6 + 30.0 * perm**2 * (1.0 - upland) * rng.uniform(0.3, 1.5), 0.6, 45)
    )

    land_alpha = np.array(
        [
            2.0,  # dwood
            0.5 + 3.0 * upland,  # ewood: conifer plantations on uplands
            6.0,  # grass
            0.3 + 8.0 * upland**2,  # shrub: moorland
            0.3 + 8.0 * (1.0 - upland) * (1.0 - west),  # crop: arable east
            0.3 + 1.5 * rng.uniform() ** 3 * 10.0,  # urban: a few strongly urban catchments
            0.1,  # inwater
            0.05 + 0.5 * upland**2,  # bares
        ]
    )
    land = _hundredths(rng.dirichlet(land_alpha))
    urban = land[5] / 100.0
    wood = (land[0] + land[1]) / 100.0

    # Aquifer classes (BGS productivity): fractured high = chalk, no_gw = impermeable bedrock.
    geo_alpha = np.array(
        [
            0.05 + 0.5 * perm,  # inter_high
            0.3 + 2.0 * (1.0 - upland) * (1.0 - perm),  # inter_mod
            0.05,  # inter_low
            0.02 + 6.0 * perm**2,  # frac_high
            0.1 + 1.0 * perm,  # frac_mod
            0.2 + 1.5 * upland,  # frac_low
            0.2 + 3.0 * (1.0 - perm) * (0.4 + upland),  # no_gw
            0.01,  # low_nsig
            0.02,  # nsig_low
        ]
    )
    geology = _hundredths(rng.dirichlet(geo_alpha))

    # GR4J: permeable, deep, silty soils store more (x1) and release it slowly (x3); chalk
    # catchments export water to regional aquifers (x2 < 0); paved ground stores little.
    x1 = (
        (120.0 + 700.0 * (0.45 * perm + 0.35 * (tawc - 35.0) / 200.0 + 0.2 * (1.0 - clay / 50.0)))
        * (1.0 - 0.6 * urban)
        * rng.lognormal(0.0, 0.15)
    )
    x2 = float(np.clip(-1.6 * perm**2 + 0.3 * wetness - 0.1 + rng.normal(0.0, 0.15), -1.5, 0.5))
    x3 = 10.0 + 220.0 * perm**1.5 * rng.uniform(0.7, 1.3) + 20.0 * (1.0 - upland)
    # Larger catchments route more slowly; steep ones faster.
    x4 = float(
        np.clip(0.7 + 0.5 * math.log10(area) - 0.002 * (dpsbar - 90.0) + rng.normal(0, 0.1), 0.6, 4)
    )
    ddf = rng.uniform(2.0, 4.0)

    # Human influence: abstraction where people live, reservoirs in the hills.
    benchmark = rng.uniform() < 0.25
    scale = 0.3 if benchmark else 1.0
    sw_abs = scale * rng.exponential(0.04 + 0.2 * urban)
    gw_abs = scale * rng.exponential(0.01 + 0.06 * perm)
    effluent = scale * rng.exponential(0.01 + 0.3 * urban)
    abs_perc = _hundredths(rng.dirichlet([0.6, 0.1, 0.3, 0.1, 0.4, 1.5]))
    n_res = int(rng.poisson((0.2 + 2.0 * upland**2) * scale))
    res_cap = int(np.sum(rng.lognormal(8.0, 1.2, n_res))) if n_res else 0
    res_use = _hundredths(rng.dirichlet([0.3, 0.05, 0.01, 2.0, 0.1, 0.01, 0.3])) if n_res else None
    year_first = int(rng.integers(1850, 1981)) if n_res else 0
    year_last = int(rng.integers(year_first, 1993)) if n_res else 0

    # Hydrometry metadata; the uncertainty envelope narrows towards high flows.
    station = str(rng.choice(_STATION_TYPES, p=_STATION_PROBS))
    unc_scale = rng.uniform(0.6, 1.6)
    uncert = {}
    for q, base in (("q5", 24.0), ("q25", 18.0), ("q50", 15.0), ("q75", 13.0), ("q95", 11.5)):
        uncert[f"{q}_uncert_upper"] = base * unc_scale * rng.uniform(0.85, 1.15)
        uncert[f"{q}_uncert_lower"] = -base * unc_scale * rng.uniform(0.85, 1.15)
    uncert["q99_uncert_upper"] = 10.5 * unc_scale * rng.uniform(0.85, 1.15)
    uncert["q99_uncert_lower"] = -10.5 * unc_scale * rng.uniform(0.85, 1.15)
    bankfull_factor = rng.uniform(4.0, 10.0)
    structure_factor = rng.uniform(0.2, 0.8)

    # Topography: hypsometry as multiples of the relief below the mean (ratios of the real data).
    elev_min = float(max(1.0, elev_mean * rng.uniform(0.05, 0.4)))
    relief = elev_mean - elev_min
    hyps = np.cumsum(rng.uniform(0.8, 1.2, 4) * np.array([0.34, 0.6, 0.82, 1.05]))
    elev_10, elev_50, elev_90, elev_max = elev_min + relief * hyps
    elev_max = max(elev_max, elev_90 + 1.0)
    # OSGB36 grid from lat/lon, linearised about the true origin (49N, 2W): adequate for a demo.
    easting = round(400000.0 + (lon + 2.0) * 111320.0 * math.cos(math.radians(lat)))
    northing = round(-100000.0 + (lat - 49.0) * 111200.0)

    missing = {}
    for var in ("texture", "bulkdens", "tawc", "porosity", "conductivity", "root", "pelletier"):
        missing[var] = float(rng.exponential(0.5)) if rng.uniform() < 0.3 else 0.0

    soil: dict[str, object] = {}
    for var, value in (("sand_perc", sand), ("silt_perc", silt), ("clay_perc", clay)):
        soil[var] = value
        soil[f"{var}_missing"] = missing["texture"]
    soil["organic_perc"] = organic
    soil["organic_perc_missing"] = missing["texture"]
    for var, value, rel, lo, hi, miss in (
        ("bulkdens", bulkdens, 0.3, 0.2, 1.8, "bulkdens"),
        ("tawc", tawc, 0.5, 25.0, 240.0, "tawc"),
        ("porosity_cosby", por_cosby, 0.06, 35.0, 47.0, "porosity"),
        ("porosity_hypres", por_hypres, 0.3, 30.0, 85.0, "porosity"),
        ("conductivity_cosby", cond_cosby, 1.5, 0.4, 8.0, "conductivity"),
        ("conductivity_hypres", cond_hypres, 1.0, 0.4, 5.0, "conductivity"),
        ("root_depth", root_depth, 0.6, 0.3, 1.3, "root"),
        ("soil_depth_pelletier", soil_depth, 3.0, 0.5, 50.0, "pelletier"),
    ):
        soil[var] = value
        soil[f"{var}_missing"] = missing[miss]
        soil[f"{var}_5"], soil[f"{var}_50"], soil[f"{var}_95"] = _spread(rng, value, rel, lo, hi)

    static: dict[str, dict[str, object]] = {
        "humaninfluence": {
            "benchmark_catch": "Y" if benchmark else "N",
            "surfacewater_abs": sw_abs,
            "groundwater_abs": gw_abs,
            "discharges": effluent,
            **dict(zip(_ABSTRACTION_CLASSES, abs_perc, strict=True)),
            "num_reservoir": n_res,
            "reservoir_cap": res_cap,
            # No NaN allowed: 0 % of uses and year 0 stand for "no reservoir".
            **dict(
                zip(
                    _RESERVOIR_USES,
                    res_use if res_use is not None else np.zeros(len(_RESERVOIR_USES)),
                    strict=True,
                )
            ),
            "reservoir_year_first": year_first,
            "reservoir_year_last": year_last,
        },
        "hydrogeology": dict(zip(_HYDROGEOLOGY_CLASSES, geology, strict=True)),
        "hydrometry": {
            "station_type": station,
            "_bankfull_factor": bankfull_factor,
            "_structure_factor": structure_factor,
            **uncert,
            "quncert_meta": "Synthetic discharge uncertainties (demo data)",
        },
        "landcover": {
            **{f"{c}_perc": v for c, v in zip(_LAND_CLASSES, land, strict=True)},
            "dom_land_cover": _LAND_NAMES[_LAND_CLASSES[int(np.argmax(land))]],
        },
        "soil": soil,
        "topographic": {
            "gauge_name": f"Synthetic catchment {gauge_id}",
            "gauge_lat": lat,
            "gauge_lon": lon,
            "gauge_easting": int(easting),
            "gauge_northing": int(northing),
            "gauge_elev": max(0.5, elev_min - rng.uniform(0.0, 2.0)),
            "area": area,
            "dpsbar": dpsbar,
            "elev_mean": round(elev_mean),
            "elev_min": elev_min,
            "elev_10": elev_10,
            "elev_50": elev_50,
            "elev_90": elev_90,
            "elev_max": elev_max,
        },
    }
    return _Basin(
        gauge_id=gauge_id,
        lat=lat,
        west=west,
        p_target=p_target,
        area=area,
        elev_mean=elev_mean,
        wood=wood,
        x1=float(x1),
        x2=x2,
        x3=float(x3),
        x4=x4,
        ddf=float(ddf),
        net_use=effluent - sw_abs - 0.5 * gw_abs,  # groundwater pumping is partly buffered
        static=static,
    )


# -------------------------------------------------------------------------------- weather


def _round2(x: np.ndarray) -> np.ndarray:
    # Adding 0.0 turns -0.0 into 0.0, so the CSV never shows "-0.00".
    return np.round(x, 2) + 0.0


def _ar1(rng: np.random.Generator, n: int, phi: float, sd: float) -> np.ndarray:
    """AR(1) noise with stationary standard deviation `sd`, via a truncated impulse response."""
    lags = 80  # phi**80 < 1e-6 for phi <= 0.84: the truncation is invisible
    eps = rng.normal(0.0, sd * math.sqrt(1.0 - phi * phi), n + lags)
    return np.convolve(eps, phi ** np.arange(lags))[lags : lags + n]


def _markov_wet_days(u: np.ndarray, p01: np.ndarray, p11: np.ndarray) -> np.ndarray:
    """Two-state first-order Markov chain of wet days, vectorised.

    With p11 > p01, a day is wet whatever yesterday was if u < p01, dry whatever yesterday was
    if u >= p11, and otherwise copies yesterday; so the chain is a forward fill of the days
    that are decided.
    """
    decided = (u < p01) | (u >= p11)
    idx = np.where(decided, np.arange(u.size), -1)
    np.maximum.accumulate(idx, out=idx)
    wet = u < p01
    return np.where(idx >= 0, wet[np.maximum(idx, 0)], False)


def _extraterrestrial_radiation(lat_deg: float, doy: np.ndarray) -> np.ndarray:
    """Daily extraterrestrial radiation Ra [MJ m-2 day-1], Allen et al. (1998), FAO-56 eqs 21-25."""
    phi = math.radians(lat_deg)
    dr = 1.0 + 0.033 * np.cos(2.0 * np.pi * doy / 365.0)  # eq 23
    delta = 0.409 * np.sin(2.0 * np.pi * doy / 365.0 - 1.39)  # eq 24
    ws = np.arccos(np.clip(-math.tan(phi) * np.tan(delta), -1.0, 1.0))  # eq 25
    gsc = 0.0820  # MJ m-2 min-1, solar constant
    return (
        24.0
        * 60.0
        / np.pi
        * gsc
        * dr
        * (ws * math.sin(phi) * np.sin(delta) + math.cos(phi) * np.cos(delta) * np.sin(ws))
    )  # eq 21


def _weather(b: _Basin, dates: pd.DatetimeIndex, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Daily forcings, already rounded to 2 decimals as written (the model sees what is written)."""
    n = dates.size
    doy = dates.day_of_year.to_numpy().astype(float)
    omega = 2.0 * np.pi / 365.25
    winter = np.cos(omega * (doy - 15.0))  # +1 mid-January, -1 mid-July

    # Precipitation: wet-day occurrence and amounts both peak in winter, more so in the west
    # where Atlantic depressions dominate.
    wet_frac = 0.42 + 0.22 * (b.p_target - 1.5) / 3.5
    occ = np.clip(wet_frac * (1.0 + 0.12 * winter), 0.05, 0.95)
    persistence = 0.3 + 0.1 * b.west  # p11 - p01
    p01 = occ * (1.0 - persistence)
    p11 = p01 + persistence
    amp = 0.1 + 0.25 * b.west
    mean_p = b.p_target * (1.0 + amp * np.cos(omega * (doy - 350.0)))
    shape = 0.65 + 0.2 * b.west
    wet = _markov_wet_days(rng.uniform(size=n), p01, p11)
    amounts = rng.standard_gamma(shape, n) * (mean_p / occ / shape)
    precip = _round2(np.where(wet, amounts, 0.0))

    # Temperature: sinusoid (minimum late January) + AR(1) weather; cloudy wet days are milder
    # in winter and cooler in summer. Lapse rate 6.5 K/km.
    t_mean = 11.5 - 0.45 * (b.lat - 50.0) - 0.0065 * b.elev_mean
    t_amp = 5.0 + 1.5 * (1.0 - b.west)
    season_t = -t_amp * np.cos(omega * (doy - 20.0))
    anomaly = _ar1(rng, n, 0.75, 2.0) * (1.0 + 0.2 * winter)
    temp = t_mean + season_t + anomaly + 0.8 * winter * wet
    temp = _round2(temp)

    # Radiation: Angstrom (FAO-56 eq 35) with sunshine fraction 1 - cloud cover.
    ra = _extraterrestrial_radiation(b.lat, doy)
    cloud = np.clip(0.5 + 0.3 * wet + 0.1 * winter + rng.normal(0.0, 0.15, n), 0.05, 1.0)
    rs_mj = (0.25 + 0.5 * (1.0 - cloud)) * ra
    shortwave = _round2(rs_mj * 1.0e6 / 86400.0)

    # Oudin et al. (2005, J. Hydrol. 303, 290), eq 4: PET = Re/(lambda rho) (T+5)/100 if T+5 > 0,
    # with lambda = 2.45 MJ/kg and rho = 1000 kg/m3; x1000 m -> mm cancels rho's 1000.
    pet = _round2(np.where(temp + 5.0 > 0.0, ra / 2.45 * (temp + 5.0) / 100.0, 0.0))
    # Interception-corrected PET: evaporation of intercepted rain from canopies on wet days.
    peti = _round2(pet * (1.0 + (0.12 + 0.3 * b.wood) * wet))

    # Specific humidity from FAO-56 eq 11 (saturation vapour pressure) and eq 7 (pressure).
    rel_hum = np.clip(0.8 + 0.08 * wet + 0.05 * winter + rng.normal(0.0, 0.05, n), 0.4, 1.0)
    e_act = rel_hum * 0.6108 * np.exp(17.27 * temp / (temp + 237.3))  # kPa
    pressure = 101.3 * ((293.0 - 0.0065 * b.elev_mean) / 293.0) ** 5.26  # kPa
    humidity = _round2(622.0 * e_act / (pressure - 0.378 * e_act))  # g/kg

    # Downward longwave: Brutsaert (1975, WRR 11, 742) clear-sky emissivity, a Bolz-type cloud
    # factor (1 + k c^2; k = 0.3 brings daily means close to CAMELS-GB's), Stefan-Boltzmann law.
    t_k = temp + 273.15
    emis = np.minimum(1.24 * (10.0 * e_act / t_k) ** (1.0 / 7.0) * (1.0 + 0.3 * cloud**2), 1.0)
    longwave = _round2(emis * 5.670e-8 * t_k**4)

    # Wind: windier in the west, on hills, in winter and with passing fronts (wet days).
    w_mean = 2.8 + 1.8 * b.west + 0.003 * b.elev_mean
    windspeed = _round2(
        w_mean * (1.0 + 0.15 * winter) * (1.0 + 0.15 * wet) * rng.gamma(6.0, 1.0 / 6.0, n)
    )
    return {
        "precipitation": precip,
        "pet": pet,
        "temperature": temp,
        "peti": peti,
        "humidity": humidity,
        "shortwave_rad": shortwave,
        "longwave_rad": longwave,
        "windspeed": windspeed,
    }


# ----------------------------------------------------------------------------------- GR4J


def _unit_hydrographs(x4: float) -> tuple[np.ndarray, np.ndarray]:
    """GR4J unit hydrograph ordinates UH1 (time base x4) and UH2 (2 x4), Perrin et al. 2003."""

    def sh1(t: np.ndarray) -> np.ndarray:
        return np.where(t >= x4, 1.0, (np.minimum(t, x4) / x4) ** 2.5)

    def sh2(t: np.ndarray) -> np.ndarray:
        s = np.minimum(t / x4, 2.0)
        return np.where(s <= 1.0, 0.5 * s**2.5, 1.0 - 0.5 * (2.0 - s) ** 2.5)

    t1 = np.arange(0, math.ceil(x4) + 1, dtype=float)
    t2 = np.arange(0, math.ceil(2.0 * x4) + 1, dtype=float)
    return np.diff(sh1(t1)), np.diff(sh2(t2))


def _gr4j(precip: np.ndarray, pet: np.ndarray, temp: np.ndarray, b: _Basin) -> np.ndarray:
    """Simulated discharge [mm/day] of GR4J (Perrin et al., 2003, J. Hydrol. 279, 275).

    A degree-day snow store (0 degC threshold) feeds the model. The first two years are run
    twice: once as warm-up, whose output is discarded, and once as part of the record.
    """
    warm = np.resize(np.arange(precip.size), _WARMUP_DAYS)  # tiles short records
    p = np.concatenate([precip[warm], precip]).tolist()
    e = np.concatenate([pet[warm], pet]).tolist()
    t = np.concatenate([temp[warm], temp]).tolist()
    x1, x2, x3, ddf = b.x1, b.x2, b.x3, b.ddf
    n = len(p)

    # Production store and percolation: the only nonlinear part before the unit hydrographs,
    # so it runs first and the convolutions below are vectorised.
    pr = [0.0] * n
    s = 0.4 * x1
    swe = 0.0
    tanh = math.tanh
    for i in range(n):
        rain = p[i]
        ti = t[i]
        if ti <= 0.0:
            swe += rain
            rain = 0.0
        elif swe > 0.0:
            melt = min(swe, ddf * ti)
            swe -= melt
            rain += melt
        ei = e[i]
        sr = s / x1
        if rain >= ei:
            pn = rain - ei
            tw = tanh(pn / x1)
            ps = x1 * (1.0 - sr * sr) * tw / (1.0 + sr * tw)
            s += ps
        else:
            pn = 0.0
            ps = 0.0
            tw = tanh((ei - rain) / x1)
            s -= s * (2.0 - sr) * tw / (1.0 + (1.0 - sr) * tw)
        ratio = 4.0 / 9.0 * s / x1
        perc = s * (1.0 - (1.0 + ratio**4) ** -0.25)
        s -= perc
        pr[i] = perc + pn - ps

    uh1, uh2 = _unit_hydrographs(b.x4)
    pr_arr = np.asarray(pr)
    q9 = (0.9 * np.convolve(pr_arr, uh1)[:n]).tolist()
    q1 = (0.1 * np.convolve(pr_arr, uh2)[:n]).tolist()

    # Routing store with groundwater exchange F = x2 (R/x3)^3.5.
    q = [0.0] * n
    r = 0.5 * x3
    for i in range(n):
        f = x2 * (r / x3) ** 3.5
        r = max(0.0, r + q9[i] + f)
        qr = r * (1.0 - (1.0 + (r / x3) ** 4) ** -0.25)
        r -= qr
        q[i] = qr + max(0.0, q1[i] + f)
    return np.asarray(q[_WARMUP_DAYS:])


def _discharge(
    b: _Basin, dates: pd.DatetimeIndex, forc: dict[str, np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Observed-like discharge (with noise and gaps) and the same series without gaps [mm/day]."""
    n = dates.size
    q_model = _gr4j(forc["precipitation"], forc["pet"], forc["temperature"], b)
    # Net human use shifts low flows most; it never takes more than 70 % of the natural flow.
    q_model = np.maximum(q_model + b.net_use, 0.3 * q_model)
    # Mean-preserving lognormal gauging error (about 5 %).
    q_full = q_model * rng.lognormal(-0.5 * 0.05**2, 0.05, n)

    q_obs = q_full.copy()
    # Gauge outages: 1-3 blocks, together at most 2 % of the record (none in very short ones).
    budget = int(0.02 * n)
    n_blocks = int(rng.integers(1, 4))
    n_blocks = min(n_blocks, budget // 5)
    for _ in range(n_blocks):
        length = int(rng.integers(5, min(60, budget // n_blocks) + 1))
        first = int(rng.integers(0, n - length + 1))
        q_obs[first : first + length] = np.nan
    if b.gauge_id in _FLOW_RECORD_START:
        q_obs[dates < pd.Timestamp(_FLOW_RECORD_START[b.gauge_id])] = np.nan
    return q_obs, q_full


# ----------------------------------------------------------------------- derived attributes


def _runs(mask: np.ndarray) -> tuple[int, float]:
    """Number of True days and mean length of runs of consecutive True days (0 if none)."""
    count = int(mask.sum())
    if count == 0:
        return 0, 0.0
    starts = int(mask[0]) + int(np.count_nonzero(mask[1:] & ~mask[:-1]))
    return count, count / starts


def _timing(mask: np.ndarray, season: np.ndarray, fallback: np.ndarray) -> str:
    """Season (djf, mam, jja, son) holding most True days; `fallback` decides if none."""
    counts = np.bincount(season[mask], minlength=4)
    if counts.sum() == 0:
        counts = np.array([fallback[season == k].sum() for k in range(4)])
    return _SEASONS[int(np.argmax(counts))]


def _seasonal_fit(x: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    """Mean, amplitude and phase (days) of x = m + a sin(2 pi (t - s)/365.25) by least squares."""
    w = 2.0 * np.pi / 365.25
    design = np.column_stack([np.ones_like(t), np.sin(w * t), np.cos(w * t)])
    (m, bs, bc), *_ = np.linalg.lstsq(design, x, rcond=None)
    return float(m), float(math.hypot(bs, bc)), float(math.atan2(-bc, bs) / w)


def _climatic(dates: pd.DatetimeIndex, forc: dict[str, np.ndarray]) -> dict[str, object]:
    """Climate indices with the CAMELS definitions (Addor et al., 2017, HESS 21, 5293)."""
    p, pet, temp = forc["precipitation"], forc["pet"], forc["temperature"]
    years = p.size / 365.25
    season = _MONTH_TO_SEASON[dates.month.to_numpy()]
    p_mean, pet_mean = float(p.mean()), float(pet.mean())
    # Woods (2009, Adv. Water Resour. 32, 1465): delta_p * sign(delta_T) * cos(2pi(s_p - s_T)/tau);
    # the fitted temperature amplitude is positive, so sign(delta_T) = 1.
    t = np.arange(p.size, dtype=float)
    pm, pa, ps = _seasonal_fit(p, t)
    _, _, ts = _seasonal_fit(temp, t)
    p_seasonality = (pa / pm if pm > 0 else 0.0) * math.cos(2.0 * np.pi * (ps - ts) / 365.25)
    high = p >= 5.0 * p_mean if p_mean > 0 else np.zeros(p.size, bool)
    low = p < 1.0
    n_high, dur_high = _runs(high)
    n_low, dur_low = _runs(low)
    return {
        "p_mean": p_mean,
        "pet_mean": pet_mean,
        "aridity": pet_mean / p_mean if p_mean > 0 else 0.0,
        "p_seasonality": p_seasonality,
        "frac_snow": float(p[temp < 0.0].sum() / p.sum()) if p.sum() > 0 else 0.0,
        "high_prec_freq": n_high / years,
        "high_prec_dur": dur_high,
        "high_prec_timing": _timing(high, season, p),
        "low_prec_freq": n_low / years,
        "low_prec_dur": dur_low,
        "low_prec_timing": _timing(low, season, -p),
    }


def _lyne_hollick_pass(x: list[float], alpha: float) -> list[float]:
    """One forward pass of the Lyne-Hollick filter; returns baseflow, 0 <= baseflow <= flow."""
    c = 0.5 * (1.0 + alpha)
    base = [0.0] * len(x)
    base[0] = x[0]
    qf = 0.0
    prev = x[0]
    for i in range(1, len(x)):
        xi = x[i]
        qf = alpha * qf + c * (xi - prev)
        prev = xi
        qf = max(qf, 0.0)
        base[i] = xi - qf if xi > qf else 0.0
    return base


def _lyne_hollick_bfi(q: np.ndarray, alpha: float = 0.925) -> float:
    """Baseflow index by the Lyne-Hollick filter: passes forward, backward, forward, with the
    ends reflected over 30 days, as recommended by Ladson et al. (2013, Aust. J. Water Resour.
    17, 25).
    """
    if q.size < 3 or q.sum() <= 0:
        return 0.0
    k = min(30, q.size - 1)
    x = np.concatenate([q[k:0:-1], q, q[-2 : -k - 2 : -1]]).tolist()
    x = _lyne_hollick_pass(x, alpha)
    x = _lyne_hollick_pass(x[::-1], alpha)[::-1]
    x = _lyne_hollick_pass(x, alpha)
    b = np.asarray(x[k : k + q.size])
    return float(np.clip(b.sum() / q.sum(), 0.0, 1.0))


def _ih_bfi(q: np.ndarray) -> float | None:
    """Baseflow index by the Institute of Hydrology 5-day minima method (Gustard et al., 1992)."""
    nb = q.size // 5
    if nb < 3:
        return None
    blocks = q[: nb * 5].reshape(nb, 5)
    mins = blocks.min(axis=1)
    where = blocks.argmin(axis=1) + 5 * np.arange(nb)
    inner = 0.9 * mins[1:-1] <= np.minimum(mins[:-2], mins[2:])
    tp = where[1:-1][inner]
    if tp.size < 2:
        return None
    span = np.arange(tp[0], tp[-1] + 1)
    base = np.minimum(np.interp(span, tp, q[tp]), q[span])
    total = q[span].sum()
    return float(base.sum() / total) if total > 0 else None


def _hydrologic(
    dates: pd.DatetimeIndex, q_obs: np.ndarray, q_full: np.ndarray, p: np.ndarray
) -> dict[str, object]:
    """Flow signatures with the CAMELS-GB definitions (Coxon et al., 2020, table 4)."""
    valid = ~np.isnan(q_obs)
    if valid.sum() < 365:  # too little record: describe the gap-free synthetic flow instead
        valid = np.ones(q_obs.size, bool)
    q_valid = q_full[valid]
    q_mean = float(q_valid.mean())
    p_valid_mean = float(p[valid].mean())
    # Gaps are filled with the gap-free series for signatures that need a continuous record.
    q = np.where(np.isnan(q_obs), q_full, q_obs)
    years = q.size / 365.25

    water_year = (dates.year + (dates.month >= 10)).to_numpy()
    groups = pd.Series(q).groupby(water_year)
    # Sankarasubramanian et al. (2001, WRR 37, 1771): median of annual dQ/dP scaled by P/Q.
    qa = groups.mean().to_numpy()
    pa = pd.Series(p).groupby(water_year).mean().to_numpy()
    dp = pa - pa.mean()
    ok = np.abs(dp) > 1e-9
    if ok.sum() >= 2 and qa.mean() > 0:
        stream_elas = float(np.median((qa[ok] - qa.mean()) / dp[ok]) * pa.mean() / qa.mean())
    else:
        stream_elas = 1.0

    # Slope of the flow duration curve between its 33rd and 66th percentiles (Sawicz et al.,
    # 2011, HESS 15, 2895), in log space.
    q33, q66 = np.quantile(np.maximum(q, 1e-3), [0.67, 0.34])
    slope_fdc = float((math.log(q33) - math.log(q66)) / (0.66 - 0.33))

    # Half-flow date: days from 1 October until half of the water year's flow has passed.
    hfds = []
    for _, qy in groups:
        arr = qy.to_numpy()
        if arr.size >= 360 and arr.sum() > 0:
            hfds.append(int(np.searchsorted(np.cumsum(arr), 0.5 * arr.sum())))
    if not hfds:  # short record: use the mean seasonal cycle instead of single years
        wy_start = pd.to_datetime(pd.DataFrame({"year": water_year - 1, "month": 10, "day": 1}))
        day_of_wy = (dates - pd.DatetimeIndex(wy_start)).days.to_numpy()
        clim = pd.Series(q).groupby(day_of_wy).mean().to_numpy()
        hfds.append(int(np.searchsorted(np.cumsum(clim), 0.5 * clim.sum())))

    lh = _lyne_hollick_bfi(q)
    ih = _ih_bfi(q)
    n_high, dur_high = _runs(q > 9.0 * np.median(q))
    n_low, dur_low = _runs(q < 0.2 * q.mean())
    q5, q95 = np.quantile(q_valid, [0.05, 0.95])
    return {
        "q_mean": q_mean,
        "runoff_ratio": q_mean / p_valid_mean if p_valid_mean > 0 else 0.0,
        "stream_elas": stream_elas,
        "slope_fdc": slope_fdc,
        "baseflow_index": lh,
        "baseflow_index_ceh": ih if ih is not None else lh,
        "hfd_mean": float(np.mean(hfds)),
        "Q5": float(q5),
        "Q95": float(q95),
        "high_q_freq": n_high / years,
        "high_q_dur": dur_high,
        "low_q_freq": n_low / years,
        "low_q_dur": dur_low,
        "zero_q_freq": float(np.mean(q == 0.0)),
    }


def _hydrometry(
    b: _Basin, dates: pd.DatetimeIndex, q_obs: np.ndarray, q95: float
) -> dict[str, object]:
    meta = dict(b.static["hydrometry"])
    valid = np.flatnonzero(~np.isnan(q_obs))
    first, last = (valid[0], valid[-1]) if valid.size else (0, dates.size - 1)
    to_vol = b.area * 1000.0 / 86400.0
    bankfull = q95 * to_vol * meta.pop("_bankfull_factor")
    structure = bankfull * meta.pop("_structure_factor")
    return {
        "station_type": meta.pop("station_type"),
        "flow_period_start": dates[first].strftime("%Y-%m-%d"),
        "flow_period_end": dates[last].strftime("%Y-%m-%d"),
        "flow_perc_complete": 100.0 * valid.size / dates.size,
        "bankfull_flow": bankfull,
        "structurefull_flow": structure,
        **meta,
    }


# ----------------------------------------------------------------------------------- output


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder, then rename: readers never see half a file."""
    # A unique hidden name ("x" mode: never reuse a file), created with the umask's permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("x", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _frame_to_csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format="%.2f", na_rep="NaN", lineterminator="\n")


def _timeseries_name(gauge_id: str, dates: pd.DatetimeIndex) -> str:
    return (
        f"CAMELS_GB_hydromet_timeseries_{gauge_id}_"
        f"{dates[0].strftime('%Y%m%d')}-{dates[-1].strftime('%Y%m%d')}.csv"
    )


def _guard_root(root: Path) -> None:
    """Refuse to write synthetic files into a folder that already holds unmarked CAMELS-GB data."""
    if (root / SYNTHETIC_MARKER).exists():
        return
    existing = [
        *(root / "timeseries").glob("CAMELS_GB_*.csv"),
        *(root / "attributes").glob("CAMELS_GB_*.csv"),
    ]
    if existing:
        raise FileExistsError(
            f"{root} already holds CAMELS-GB files without {SYNTHETIC_MARKER} (real data?); "
            "choose an empty folder for the synthetic demo dataset"
        )


def _simulate_basin(
    gauge_id: str, dates: pd.DatetimeIndex, seed: int
) -> tuple[pd.DataFrame, dict[str, dict[str, object]]]:
    """Time series table and attribute rows (by group) of one basin, from its own generator."""
    rng = np.random.default_rng([seed, int(gauge_id)])
    b = _draw_basin(gauge_id, rng)
    forc = _weather(b, dates, rng)
    q_obs, q_full = _discharge(b, dates, forc, rng)

    q_spec = _round2(q_obs)
    # From the unrounded flow, so discharge_vol is as accurate as its own 2 decimals allow.
    q_vol = _round2(q_obs * b.area * 1000.0 / 86400.0)
    table = pd.DataFrame(
        {
            "date": dates.strftime("%Y-%m-%d"),
            "precipitation": forc["precipitation"],
            "pet": forc["pet"],
            "temperature": forc["temperature"],
            "discharge_spec": q_spec,
            "discharge_vol": q_vol,
            "peti": forc["peti"],
            "humidity": forc["humidity"],
            "shortwave_rad": forc["shortwave_rad"],
            "longwave_rad": forc["longwave_rad"],
            "windspeed": forc["windspeed"],
        },
        columns=list(TIMESERIES_COLUMNS),
    )
    hydrologic = _hydrologic(dates, q_obs, q_full, forc["precipitation"])
    rows = {
        "climatic": _climatic(dates, forc),
        "humaninfluence": b.static["humaninfluence"],
        "hydrogeology": b.static["hydrogeology"],
        "hydrologic": hydrologic,
        "hydrometry": _hydrometry(b, dates, q_obs, float(hydrologic["Q95"])),
        "landcover": b.static["landcover"],
        "soil": b.static["soil"],
        "topographic": b.static["topographic"],
    }
    return table, rows


def _attribute_frame(group: str, ids: list[str], rows: list[dict[str, object]]) -> pd.DataFrame:
    frame = pd.DataFrame([{"gauge_id": gid, **row} for gid, row in zip(ids, rows, strict=True)])
    frame = frame[list(ATTRIBUTE_COLUMNS[group])]
    for col in frame.columns:
        if pd.api.types.is_float_dtype(frame[col]):
            frame[col] = _round2(frame[col].to_numpy())
    return frame


def write_demo_dataset(
    root: str | os.PathLike[str],
    basin_ids: Iterable[str | int] = DEMO_BASINS,
    start: str = "1970-10-01",
    end: str = "2015-09-30",
    seed: int = 0,
) -> list[str]:
    """Write a synthetic CAMELS-GB-format dataset under `root` and return the basin ids written.

    Each basin's weather, GR4J discharge and attributes come from its own random generator,
    ``np.random.default_rng([seed, int(basin_id)])``, so a basin's files do not depend on
    which other basins are written. The folder then holds exactly the given basins: time series
    files of other basins, or of other date ranges, left by an earlier call are removed.

    Parameters
    ----------
    root : str or os.PathLike
        Dataset folder; ``timeseries/``, ``attributes/`` and ``SYNTHETIC_DEMO.txt`` are created
        in it.
    basin_ids : iterable of str or int, optional
        Numeric gauge ids; duplicates are dropped, order is kept. Default: the 12 demo basins.
    start, end : str, optional
        First and last day (inclusive, ISO dates) of the daily time series.
    seed : int, optional
        Non-negative seed; the same seed gives byte-identical files.

    Returns
    -------
    list of str
        The gauge ids written, in order.

    Raises
    ------
    ValueError
        If `end` is before `start`, a date cannot be parsed, `basin_ids` is empty or holds a
        non-numeric id, or `seed` is not a non-negative integer.
    FileExistsError
        If `root` already holds CAMELS-GB files but no ``SYNTHETIC_DEMO.txt`` (real data are
        never overwritten).
    """
    ids, dates = _check_inputs(basin_ids, start, end, seed)
    root = Path(root)
    _guard_root(root)
    ts_dir = root / "timeseries"
    attr_dir = root / "attributes"
    ts_dir.mkdir(parents=True, exist_ok=True)
    attr_dir.mkdir(parents=True, exist_ok=True)

    # The marker goes first, so even an interrupted run leaves data that declare themselves fake.
    first, last = dates[0].strftime("%Y-%m-%d"), dates[-1].strftime("%Y-%m-%d")
    _atomic_write(
        root / SYNTHETIC_MARKER,
        "SYNTHETIC DEMO DATA - NOT CAMELS-GB\n\n"
        "Every number in this folder was generated by the toolkit's demo generator\n"
        "(demo_data.write_demo_dataset): a stochastic weather generator driving the GR4J model.\n"
        "Only the file layout follows CAMELS-GB (Coxon et al., 2020); no value is observed data,\n"
        "and results obtained on it say nothing about real catchments.\n\n"
        f"seed: {int(seed)}\n"
        f"period: {first} to {last}\n"
        f"basins: {', '.join(ids)}\n",
    )

    per_group: dict[str, list[dict[str, object]]] = {g: [] for g in ATTRIBUTE_COLUMNS}
    written: set[str] = set()
    for gid in ids:
        table, rows = _simulate_basin(gid, dates, int(seed))
        name = _timeseries_name(gid, dates)
        _atomic_write(ts_dir / name, _frame_to_csv(table))
        written.add(name)
        for group, row in rows.items():
            per_group[group].append(row)

    for group in ATTRIBUTE_COLUMNS:
        frame = _attribute_frame(group, ids, per_group[group])
        _atomic_write(attr_dir / f"CAMELS_GB_{group}_attributes.csv", _frame_to_csv(frame))

    # Leftovers of earlier calls would pair a basin with a second file or with no attributes.
    for stale in ts_dir.glob("CAMELS_GB_hydromet_timeseries_*.csv"):
        if stale.name not in written:
            stale.unlink()
    return ids
