"""CAMELS-GB data layer: finding and checking the files, the model input data, scalers and windows.

The synthetic demo dataset comes from ``demo_data.write_demo_dataset`` (re-exported here).

Every stage reads data through this module and never opens a CSV itself::

    from hydrologyDataset import load_input_data, FeatureSpec, Scalers, WindowData
    data = load_input_data(config, data_dir, ["32006", "42003"])
    spec = FeatureSpec.from_config(config)
    scalers = Scalers.fit(data, spec, config["TRAIN_BASINS"], *period(config, "train"))
    train = WindowData(data, spec, scalers, config["TRAIN_BASINS"], *period(config, "train"))

:class:`WindowData` is the dataset class: every window of some basins and one period, as
tensors. :class:`WindowSamples` hands its samples to a torch DataLoader (DATA_PATH stream).
:func:`load_model` is the one way from a checkpoint to its model, feature spec and scalers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from demo_data import SYNTHETIC_MARKER, write_demo_dataset
from utils import (
    CAMELS_GB_DOI,
    ROOT,
    UserError,
    atomic_write_text,
    load_checkpoint,
    log,
    progress,
    warn_synthetic,
)

INPUT_FORMAT = 1
TIMESERIES_RE = re.compile(r"^CAMELS_GB_hydromet_timeseries_(\d+)_(\d{8})-(\d{8})\.csv$")
ATTRIBUTE_RE = re.compile(r"^CAMELS_GB_([a-z]+)_attributes\.csv$")
ATTRIBUTE_GROUPS = (
    "climatic", "humaninfluence", "hydrogeology", "hydrologic",
    "hydrometry", "landcover", "soil", "topographic",
)  # fmt: skip
TIMESERIES_COLUMNS = (
    "precipitation", "pet", "temperature", "discharge_spec", "discharge_vol", "peti",
    "humidity", "shortwave_rad", "longwave_rad", "windspeed",
)  # fmt: skip
# Attributes computed from observed discharge: they leak the target, so only on request.
DISCHARGE_SIGNATURES = frozenset(
    "q_mean runoff_ratio stream_elas slope_fdc baseflow_index baseflow_index_ceh hfd_mean Q5 Q95 "
    "high_q_freq high_q_dur low_q_freq low_q_dur zero_q_freq".split()
)
DEMO_DIR = ROOT / "datasets" / "CAMELS_GB_demo"
Q_LAG, Q_MISSING = "discharge_lag", "discharge_lag_missing"
# Logged (and in the readme) wherever a forecast sees forcings of its lead days.
HINDCAST_NOTE = (
    "hindcast: the observed forcings of the lead days stand in for a weather forecast, so these "
    "scores are an upper bound of what a real forecast reaches"
)


# --------------------------------------------------------------------------- finding the files


@dataclass(frozen=True)
class CamelsGBSource:
    """Where the CAMELS-GB files of one data folder are.

    Attributes
    ----------
    root : Path
        The data folder.
    timeseries : dict
        Gauge id (str) -> hydromet timeseries CSV.
    attributes : dict
        Attribute group ('topographic', ...) -> CSV.
    synthetic : bool
        True for the toolkit's demo data (marker file at the root).
    """

    root: Path
    timeseries: dict[str, Path]
    attributes: dict[str, Path]
    synthetic: bool

    @property
    def basins(self) -> list[str]:
        return sorted(self.timeseries, key=lambda b: (len(b), b))

    def check_basins(self, basins: Sequence[str]) -> list[str]:
        """Return ``basins`` as strings or raise UserError naming the unknown ones."""
        basins = [str(b).strip() for b in basins]
        unknown = [b for b in basins if b not in self.timeseries]
        if unknown:
            have = " ".join(self.basins[:30]) + (" ..." if len(self.timeseries) > 30 else "")
            raise UserError(
                f"basin id(s) {', '.join(unknown)} not found in {self.root} "
                f"({len(self.timeseries)} available: {have}); name basins the folder holds: "
                "sca2lstm.py --train_basins/--val_basins/--test_basins (the default lists are "
                "TRAIN_BASINS/VAL_BASINS/TEST_BASINS in run.config), fine_train.py "
                "--target_basin, predict.py --basins, pso_lstm.py --basin_id"
            )
        return basins


def resolve_data_dir(cli_value: str | None, config: dict, demo: bool = False) -> Path:
    """Pick the data folder: ``--data_dir``, else DATA_DIR, else $CAMELS_GB_DIR, else the default.

    With ``demo`` the toolkit's synthetic dataset is used (and written first if missing).
    """
    if demo:
        if cli_value:
            raise UserError("--demo and --data_dir both name a data folder; drop one")
        if not (DEMO_DIR / SYNTHETIC_MARKER).is_file():
            log.info("writing the synthetic demo dataset to %s", DEMO_DIR)
            write_demo_dataset(DEMO_DIR)
        return DEMO_DIR
    value = cli_value or config.get("DATA_DIR") or os.environ.get("CAMELS_GB_DIR")
    path = Path(value).expanduser() if value else ROOT / "datasets" / "CAMELS_GB"
    if not path.is_dir():
        raise UserError(
            f"CAMELS-GB data folder {path} not found. Download CAMELS-GB "
            f"(https://doi.org/{CAMELS_GB_DOI}) and pass --data_dir or set CAMELS_GB_DIR, "
            "or make the synthetic demo data with `python data_process.py --demo` and use --demo"
        )
    return path


def find_source(root: Path) -> CamelsGBSource:
    """Find the timeseries and attribute files under ``root``.

    Accepts the official download (``timeseries/`` and the attribute tables at the root or under
    ``attributes/``) and the product layout (``CAMELS_GB_timeseries/``, ``CAMELS_GB_static/``).
    """
    root = Path(root)
    ts_dirs = [root / "timeseries", root / "CAMELS_GB_timeseries", root]
    attr_dirs = [root / "attributes", root / "CAMELS_GB_static", root]
    timeseries: dict[str, Path] = {}
    for folder in ts_dirs:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = TIMESERIES_RE.match(path.name)
            if match:
                basin = match.group(1)
                if basin in timeseries and timeseries[basin] != path:
                    raise UserError(
                        f"basin {basin} has two timeseries files ({timeseries[basin]}, {path}); "
                        "keep one"
                    )
                timeseries[basin] = path
        if timeseries:
            break
    attributes: dict[str, Path] = {}
    for folder in attr_dirs:
        if folder.is_dir():
            for path in folder.iterdir():
                match = ATTRIBUTE_RE.match(path.name)
                if match and match.group(1) in ATTRIBUTE_GROUPS:
                    attributes.setdefault(match.group(1), path)
    if not timeseries:
        raise UserError(
            f"no CAMELS_GB_hydromet_timeseries_<id>_<dates>.csv files under {root} (looked in "
            "timeseries/, CAMELS_GB_timeseries/ and the folder itself); point --data_dir at the "
            f"CAMELS-GB download (https://doi.org/{CAMELS_GB_DOI}) or use --demo"
        )
    if not attributes:
        raise UserError(
            f"no CAMELS_GB_<group>_attributes.csv files under {root} (looked in attributes/, "
            "CAMELS_GB_static/ and the folder itself); the static attribute tables are needed"
        )
    return CamelsGBSource(root, timeseries, attributes, (root / SYNTHETIC_MARKER).is_file())


# --------------------------------------------------------------------------- reading and checking


# Physically possible values of the CAMELS-GB timeseries columns (Coxon et al. 2020 units), wide
# enough for any British catchment: the UK daily rainfall record is 341 mm (Seathwaite, 2009), the
# temperature records are -27 and 40 degrees C. A value outside is a corrupt file, not weather.
PHYSICAL_RANGES: dict[str, tuple[float, float, str]] = {
    "precipitation": (0.0, 1000.0, "mm/day"),
    "pet": (0.0, 50.0, "mm/day"),
    "peti": (0.0, 50.0, "mm/day"),
    "temperature": (-60.0, 60.0, "degrees C"),
    "discharge_spec": (0.0, 1000.0, "mm/day"),
    "discharge_vol": (0.0, 100000.0, "m3/s"),
    "humidity": (0.0, 50.0, "g/kg"),
    "shortwave_rad": (0.0, 1500.0, "W/m2"),
    "longwave_rad": (0.0, 1000.0, "W/m2"),
    "windspeed": (0.0, 100.0, "m/s"),
}


def _check_physical(path: Path, basin: str, col: str, raw: pd.Series, num: np.ndarray) -> None:
    """Raise UserError at the first infinite or physically impossible value of one column."""
    lo, hi, unit = PHYSICAL_RANGES.get(col, (-np.inf, np.inf, ""))
    with np.errstate(invalid="ignore"):
        bad = np.isinf(num) | (num < lo) | (num > hi)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        allowed = f"between {lo:g} and {hi:g} {unit}" if np.isfinite(lo) else "finite"
        raise UserError(
            f"{path} (basin {basin}) line {row + 2}: column {col} holds {raw.iloc[row]!r}, "
            f"which is physically impossible ({col} must be {allowed}); correct the value or "
            f"write NaN for a missing one ({int(bad.sum())} such value(s) in this column)"
        )


def read_timeseries(
    path: Path, basin: str, columns: Sequence[str]
) -> tuple[np.datetime64, np.ndarray]:
    """Read and check one hydromet timeseries CSV.

    Parameters
    ----------
    path : Path
        The CSV file.
    basin : str
        Gauge id, for messages.
    columns : sequence of str
        Numeric columns to return, in this order.

    Returns
    -------
    start : numpy.datetime64
        First date (day resolution); rows are contiguous days from here.
    values : numpy.ndarray
        ``[T, len(columns)]`` float32, NaN where missing (missing dates become NaN rows).

    Raises
    ------
    UserError
        Missing columns, non-numeric values, infinite or physically impossible values
        (:data:`PHYSICAL_RANGES`), unparseable or duplicated dates, an empty file.
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path} (basin {basin}) is not a readable CSV: {err}") from None
    missing = [c for c in ("date", *columns) if c not in frame.columns]
    if missing:
        raise UserError(
            f"{path} (basin {basin}) has no column(s) {', '.join(missing)}; a CAMELS-GB "
            "timeseries needs them (or remove them from DYNAMIC_INPUTS/TARGET)"
        )
    if frame.empty:
        raise UserError(f"{path} (basin {basin}) holds no rows")
    dates = pd.to_datetime(frame["date"], format="%Y-%m-%d", errors="coerce")
    if dates.isna().any():
        row = int(np.flatnonzero(dates.isna().to_numpy())[0])
        raise UserError(
            f"{path} (basin {basin}) line {row + 2}: date {frame['date'].iloc[row]!r} is not "
            "YYYY-MM-DD; fix or remove that row"
        )
    if dates.duplicated().any():
        dup = dates[dates.duplicated()].iloc[0].date()
        raise UserError(f"{path} (basin {basin}) has the date {dup} twice; keep one row per day")
    values = np.empty((len(frame), len(columns)), dtype=np.float32)
    for j, col in enumerate(columns):
        raw = frame[col].str.strip()
        num = pd.to_numeric(raw, errors="coerce")
        bad = num.isna() & ~raw.str.lower().isin(("nan", "", "na"))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(
                f"{path} (basin {basin}) line {row + 2}: column {col} holds "
                f"{frame[col].iloc[row]!r}, which is not a number (write NaN for a missing value)"
            )
        _check_physical(path, basin, col, raw, num.to_numpy(dtype=np.float64))
        values[:, j] = num.to_numpy(dtype=np.float32)
    days = dates.to_numpy().astype("datetime64[D]")
    order = np.argsort(days, kind="stable")
    days, values = days[order], values[order]
    start = days[0]
    span = int((days[-1] - start).astype(int)) + 1
    if span != len(days):
        log.warning(
            "%s (basin %s): %d missing dates filled as missing values",
            path.name,
            basin,
            span - len(days),
        )
        full = np.full((span, len(columns)), np.nan, dtype=np.float32)
        full[(days - start).astype(int)] = values
        values = full
    return start, values


def read_attributes(source: CamelsGBSource) -> pd.DataFrame:
    """Join all attribute tables of ``source`` into one frame indexed by gauge id (str)."""
    frames = []
    for group in ATTRIBUTE_GROUPS:
        path = source.attributes.get(group)
        if path is None:
            continue
        try:
            frame = pd.read_csv(path, dtype={"gauge_id": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise UserError(f"attribute table {path} is not a readable CSV: {err}") from None
        if "gauge_id" not in frame.columns:
            raise UserError(f"attribute table {path} has no gauge_id column")
        frame["gauge_id"] = frame["gauge_id"].str.strip()
        if frame["gauge_id"].duplicated().any():
            dup = frame.loc[frame["gauge_id"].duplicated(), "gauge_id"].iloc[0]
            raise UserError(f"attribute table {path} lists gauge {dup} twice")
        frames.append(frame.set_index("gauge_id"))
    table = pd.concat(frames, axis=1, join="outer")
    return table.loc[:, ~table.columns.duplicated()]


def static_matrix(
    table: pd.DataFrame, basins: Sequence[str], attributes: Sequence[str]
) -> np.ndarray:
    """Return ``[len(basins), len(attributes)]`` float64 of the chosen attributes.

    Raises
    ------
    UserError
        An unknown attribute, a non-numeric one, or a basin without a value for it.
    """
    unknown = [a for a in attributes if a not in table.columns]
    if unknown:
        raise UserError(
            f"static attribute(s) {', '.join(unknown)} are in none of the attribute tables; "
            "fix STATIC_ATTRIBUTES in run.config"
        )
    rows = [b for b in basins if b not in table.index]
    if rows:
        raise UserError(f"basin(s) {', '.join(rows)} are missing from the attribute tables")
    sub = table.loc[list(basins), list(attributes)]
    out = np.empty(sub.shape, dtype=np.float64)
    for j, attr in enumerate(attributes):
        col = pd.to_numeric(sub[attr], errors="coerce")
        if col.isna().any():
            basin = col.index[col.isna()][0]
            raise UserError(
                f"basin {basin} has no numeric value for static attribute {attr}; drop the "
                "basin from the basin lists or the attribute from STATIC_ATTRIBUTES"
            )
        out[:, j] = col.to_numpy()
    return out


# --------------------------------------------------------------------------- model input data


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class BasinData:
    """One catchment's daily series (unscaled) and metadata.

    Attributes
    ----------
    basin : str
        Gauge id.
    start : numpy.datetime64
        Date of row 0; rows are contiguous days.
    values : numpy.ndarray
        ``[T, len(columns)]`` float32, physical units, NaN where missing.
    columns : tuple of str
        Column names of ``values``.
    name : str
        Gauge name from the topographic attributes.
    area : float
        Catchment area in km² (for m³/s).
    """

    basin: str
    start: np.datetime64
    values: np.ndarray
    columns: tuple[str, ...]
    name: str = ""
    area: float = float("nan")

    @property
    def end(self) -> np.datetime64:
        return self.start + np.timedelta64(len(self.values) - 1, "D")

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.columns.index(name)]

    def dates(self) -> np.ndarray:
        return self.start + np.arange(len(self.values)).astype("timedelta64[D]")

    def rows(self, start: np.datetime64, end: np.datetime64) -> slice:
        """The rows of the days ``start..end`` (inclusive) this basin has; empty when none."""
        i0 = max(0, int((start - self.start).astype(int)))
        i1 = min(len(self.values), int((end - self.start).astype(int)) + 1)
        return slice(i0, max(i0, i1))


@dataclass
class InputData:
    """Checked series of the requested basins plus the attribute table of the data folder."""

    source: CamelsGBSource
    basins: dict[str, BasinData]
    attributes: pd.DataFrame

    @property
    def synthetic(self) -> bool:
        return self.source.synthetic


def input_columns(config: dict) -> tuple[str, ...]:
    """Timeseries columns the model input data holds: the dynamic inputs and the target."""
    cols = list(dict.fromkeys([*config["DYNAMIC_INPUTS"], config["TARGET"]]))
    unknown = [c for c in cols if c not in TIMESERIES_COLUMNS]
    if unknown:
        raise UserError(
            f"{', '.join(unknown)} is not a CAMELS-GB timeseries column; choose from "
            f"{', '.join(TIMESERIES_COLUMNS)}"
        )
    return tuple(cols)


def input_dir_for(config: dict, source_root: Path) -> Path:
    """The model input data folder of one data folder: INPUT_DIR/<name>-<hash of its path>."""
    base = Path(config["INPUT_DIR"])
    base = base if base.is_absolute() else ROOT / base
    key = hashlib.md5(str(Path(source_root).resolve()).encode()).hexdigest()[:8]
    return base / f"{Path(source_root).resolve().name}-{key}"


def _build_basin(job: tuple[str, str, tuple[str, ...], str, str]) -> dict:
    """Worker: read one CSV and write ``<id>.npz`` plus its ``<id>.json`` record atomically."""
    basin, csv_path, columns, target_name, out_dir = job
    csv_path, out = Path(csv_path), Path(out_dir)
    digest = _md5(csv_path)
    start, values = read_timeseries(csv_path, basin, columns)
    tmp = out / f".{basin}.{os.getpid()}.npz"
    try:
        np.savez(tmp, values=values)
        os.replace(tmp, out / f"{basin}.npz")
    except BaseException:  # a full disk or an interrupt must not leave the temporary file
        tmp.unlink(missing_ok=True)
        raise
    target = values[:, columns.index(target_name)]
    record = {
        "format": INPUT_FORMAT,
        "basin": basin,
        "source": str(csv_path.resolve()),
        "md5": digest,
        "columns": list(columns),
        "start": str(start),
        "n_days": int(len(values)),
        "missing": {c: int(np.isnan(values[:, j]).sum()) for j, c in enumerate(columns)},
        "target_missing_fraction": float(np.isnan(target).mean()),
    }
    atomic_write_text(out / f"{basin}.json", json.dumps(record, indent=1))
    return record


def _record_is_current(
    out: Path, basin: str, csv_path: Path, columns: tuple[str, ...]
) -> dict | None:
    try:
        record = json.loads((out / f"{basin}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not (out / f"{basin}.npz").is_file():
        return None
    same = (
        record.get("format") == INPUT_FORMAT
        and record.get("columns") == list(columns)
        and record.get("source") == str(csv_path.resolve())
        and record.get("md5") == _md5(csv_path)
    )
    return record if same else None


def prepare_input_data(
    config: dict,
    source: CamelsGBSource,
    basins: Sequence[str],
    workers: int = 1,
    overwrite: bool = False,
) -> tuple[Path, dict[str, dict], list[str]]:
    """Write (or reuse) the model input data of ``basins``.

    Each basin becomes ``<id>.npz`` (values ``[T, C]`` float32) and ``<id>.json`` (source file,
    its MD5, columns, start, counts of missing values) under :func:`input_dir_for`. A basin whose
    record matches the source file's hash and the chosen columns is reused; otherwise rebuilt.

    Returns
    -------
    out : Path
        The model input data folder.
    records : dict
        Basin -> its record.
    rebuilt : list of str
        Basins that were (re)written this call.
    """
    basins = source.check_basins(basins)
    columns = input_columns(config)
    out = input_dir_for(config, source.root)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        records, todo = _build_basins(config, source, basins, columns, out, workers, overwrite)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # a run that failed on its first basin leaves no empty folder behind
        raise
    return out, records, [job[0] for job in todo]


def _build_basins(config, source, basins, columns, out, workers, overwrite):
    records, todo = {}, []
    for basin in basins:
        record = (
            None if overwrite else _record_is_current(out, basin, source.timeseries[basin], columns)
        )
        if record is None:
            todo.append((basin, str(source.timeseries[basin]), columns, config["TARGET"], str(out)))
        else:
            records[basin] = record
    if todo:
        bar = progress(total=len(todo), desc="processing basins", unit="basin")
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for record in pool.map(_build_basin, todo, chunksize=max(1, len(todo) // 64)):
                    records[record["basin"]] = record
                    bar.update()
        else:
            for job in todo:
                record = _build_basin(job)
                records[record["basin"]] = record
                bar.update()
        bar.close()
    return records, todo


def load_input_data(
    config: dict,
    data_dir: Path,
    basins: Sequence[str],
    workers: int = 1,
) -> InputData:
    """Load the checked series of ``basins`` (building the model input data where needed)."""
    source = find_source(data_dir)
    basins = list(dict.fromkeys(source.check_basins(basins)))
    warn_synthetic(source.synthetic, str(source.root))
    out, records, rebuilt = prepare_input_data(config, source, basins, workers=workers)
    if rebuilt:
        log.info("model input data written for %d basin(s) in %s", len(rebuilt), out)
    table = read_attributes(source)
    data = {}
    for basin in basins:
        with np.load(out / f"{basin}.npz") as npz:
            values = npz["values"]
        record = records[basin]
        name, area = "", float("nan")
        if basin in table.index:
            name = str(table.at[basin, "gauge_name"]) if "gauge_name" in table else ""
            area = (
                float(pd.to_numeric(table.at[basin, "area"], errors="coerce"))
                if "area" in table
                else area
            )
        data[basin] = BasinData(
            basin, np.datetime64(record["start"], "D"), values, tuple(record["columns"]), name, area
        )
    return InputData(source, data, table)


# --------------------------------------------------------------------------- features and scalers


@dataclass(frozen=True)
class FeatureSpec:
    """What goes into a sample and what comes out.

    Attributes
    ----------
    dynamic_inputs : tuple of str
        Forcing columns.
    static_attributes : tuple of str
        Static attribute columns.
    target : str
        Target column (``discharge_spec``, mm/day).
    mode : str
        ``forecast`` or ``simulate``.
    seq_len, pred_len, predict_last_n : int
        Window length, lead days (forecast) and trailing days scored per window (simulate).
    use_forcings : bool
        False gives a discharge-history-only model (PSO-LSTM ``--inputs q``).
    future_inputs : tuple of str
        Forcings known over the lead days t+1..t+PRED_LEN (FUTURE_INPUTS, forecast mode). Empty:
        the window ends on day t. Otherwise it runs over t-L+1..t+PRED_LEN and lead k is read on
        day t+k; discharge, its missing flag and the other forcings stay unknown past day t.
    """

    dynamic_inputs: tuple[str, ...]
    static_attributes: tuple[str, ...]
    target: str
    mode: str
    seq_len: int
    pred_len: int = 1
    predict_last_n: int = 1
    use_forcings: bool = True
    # Checkpoints from before FUTURE_INPUTS hold no such entry: no future inputs, as then.
    future_inputs: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: dict) -> FeatureSpec:
        leaky = sorted(set(config["STATIC_ATTRIBUTES"]) & DISCHARGE_SIGNATURES)
        if leaky:
            log.warning("static attributes %s derive from observed discharge", ", ".join(leaky))
        return cls(
            tuple(config["DYNAMIC_INPUTS"]),
            tuple(config["STATIC_ATTRIBUTES"]),
            config["TARGET"],
            config["MODE"],
            config["SEQ_LEN"],
            config["PRED_LEN"],
            config["PREDICT_LAST_N"],
            future_inputs=resolve_future_inputs(config),
        )

    def __post_init__(self) -> None:
        # Future inputs are forcings of a forecast; anything else has none.
        if self.mode != "forecast" or not self.use_forcings:
            object.__setattr__(self, "future_inputs", ())

    @property
    def future_len(self) -> int:
        """Lead days appended to the input window: PRED_LEN with future inputs, else 0."""
        return self.pred_len if self.future_inputs else 0

    @property
    def window_len(self) -> int:
        """Days per input window: SEQ_LEN, plus PRED_LEN lead days with future inputs."""
        return self.seq_len + self.future_len

    def feature_classification(self) -> dict:
        """Channels known over the lead days and the others (feature_classification.json)."""
        known = list(self.future_inputs)
        return {
            "mode": self.mode,
            "pred_len": self.pred_len if self.mode == "forecast" else 0,
            "knowable_future_features": known,
            "unknowable_future_features": [c for c in self.channels if c not in known],
        }

    @property
    def eval_stride(self) -> int:
        """Window stride that predicts every day once (simulate with PREDICT_LAST_N > 1)."""
        return self.predict_last_n if self.mode == "simulate" else 1

    @property
    def forcings(self) -> tuple[str, ...]:
        return self.dynamic_inputs if self.use_forcings else ()

    @property
    def channels(self) -> tuple[str, ...]:
        """Names of the model's input channels, in order."""
        lagged = (Q_LAG, Q_MISSING) if self.mode == "forecast" else ()
        return self.forcings + lagged

    @property
    def n_out(self) -> int:
        """Targets per sample: PRED_LEN leads (forecast) or PREDICT_LAST_N days (simulate)."""
        return self.pred_len if self.mode == "forecast" else self.predict_last_n

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def check(self, data: InputData) -> None:
        """Raise UserError when ``data`` does not offer what this spec needs."""
        for basin in data.basins.values():
            missing = [c for c in (*self.forcings, self.target) if c not in basin.columns]
            if missing:
                raise UserError(
                    f"the model needs input column(s) {', '.join(missing)} that the data of basin "
                    f"{basin.basin} does not hold; use the inputs the model was trained with"
                )


def resolve_future_inputs(config: dict) -> tuple[str, ...]:
    """FUTURE_INPUTS of ``config`` as a tuple: null means every DYNAMIC_INPUTS channel.

    Configs from before the key (checkpoints) have no future inputs. Simulate mode has none.
    """
    if config["MODE"] != "forecast":
        return ()
    value = config.get("FUTURE_INPUTS", [])
    return tuple(config["DYNAMIC_INPUTS"]) if value is None else tuple(value)


@dataclass
class Scalers:
    """Means and standard deviations, fitted on the training basins in the training period only.

    Stored as plain floats so checkpoints hold no NumPy objects; reused unchanged everywhere.
    """

    dynamic_mean: list[float]
    dynamic_std: list[float]
    static_mean: list[float]
    static_std: list[float]
    target_mean: float
    target_std: float
    fitted_on: dict = field(default_factory=dict)
    # Range of each attribute over the training basins and the clamp margin in training stds
    # (STATIC_CLAMP); empty / None in checkpoints from before the key: no clamping.
    static_min: list[float] = field(default_factory=list)
    static_max: list[float] = field(default_factory=list)
    static_clamp: float | None = None

    @classmethod
    def fit(
        cls,
        data: InputData,
        spec: FeatureSpec,
        basins: Sequence[str],
        start: np.datetime64,
        end: np.datetime64,
        static_clamp: float | None = None,
    ) -> Scalers:
        """Fit on ``basins`` over ``start``..``end`` (days outside the period are never seen).

        ``static_clamp``: see :meth:`scale_static`; None leaves attributes unbounded.
        """
        dyn, tgt = [], []
        for basin in basins:
            b = data.basins[basin]
            rows = b.rows(start, end)
            if rows.stop == rows.start:
                continue
            dyn.append(np.stack([b.column(c)[rows] for c in spec.dynamic_inputs], axis=1))
            tgt.append(b.column(spec.target)[rows])
        if not dyn:
            raise UserError(
                f"no data of the training basins {', '.join(basins)} falls in the training period "
                f"{start}..{end}; change TRAIN_START/TRAIN_END or the basins"
            )
        dyn_all, tgt_all = (
            np.concatenate(dyn).astype(np.float64),
            np.concatenate(tgt).astype(np.float64),
        )
        if not np.isfinite(tgt_all).any():
            raise UserError(f"the training basins have no observed {spec.target} in {start}..{end}")
        stat = static_matrix(data.attributes, basins, spec.static_attributes)

        def safe_std(x: np.ndarray) -> np.ndarray:
            # A constant feature (e.g. reservoir_cap = 0 in every training basin) keeps scale 1.
            s = np.nanstd(x, axis=0)
            return np.where(np.isfinite(s) & (s > 1e-8), s, 1.0)

        return cls(
            np.nanmean(dyn_all, axis=0).tolist(),
            safe_std(dyn_all).tolist(),
            stat.mean(axis=0).tolist(),
            safe_std(stat).tolist(),
            float(np.nanmean(tgt_all)),
            float(safe_std(tgt_all)),
            {"basins": list(basins), "start": str(start), "end": str(end)},
            stat.min(axis=0).tolist(),
            stat.max(axis=0).tolist(),
            static_clamp,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Scalers:
        return cls(**data)

    def scale_static(self, stat: np.ndarray) -> np.ndarray:
        """Scale ``[basins, S]`` raw attributes; clamp them to the training range ± the margin.

        With few training basins an unseen basin's attribute can lie many training stds away
        (e.g. soil depth 11 stds from the mean of 5 basins); the embedding MLP would then
        extrapolate far outside what it was trained on. Holding each scaled attribute within
        the training basins' range widened by ``static_clamp`` stds bounds that extrapolation;
        the training basins themselves are never changed by it.
        """
        mean, std = np.array(self.static_mean), np.array(self.static_std)
        z = (stat - mean) / std
        if self.static_clamp is not None and self.static_min:
            lo = (np.array(self.static_min) - mean) / std - self.static_clamp
            hi = (np.array(self.static_max) - mean) / std + self.static_clamp
            z = np.clip(z, lo, hi)
        return z

    def scale_target(self, q: np.ndarray) -> np.ndarray:
        return (q - self.target_mean) / self.target_std

    def unscale_target(self, y):
        """Scaled model output -> target units (mm/day)."""
        return y * self.target_std + self.target_mean


def block_end(start: np.datetime64, end: np.datetime64, ratio: float) -> np.datetime64:
    """Last day of the first ``ratio`` share of ``start``..``end`` (split by time, not random)."""
    days = int((end - start).astype(int)) + 1
    return start + np.timedelta64(max(0, int(days * ratio) - 1), "D")


# --------------------------------------------------------------------------- windows


class WindowData:
    """All windows of some basins whose targets fall in one period, as tensors.

    This is the resident data path: the scaled series of every basin sit in one tensor on the
    training device, and a batch is gathered with tensor indexing, with no per-sample Python.

    Parameters
    ----------
    data : InputData
        Loaded series.
    spec : FeatureSpec
        Channels, mode and window sizes.
    scalers : Scalers
        Fitted on the training data; applied unchanged.
    basins : sequence of str
        Basins to draw windows from.
    start, end : numpy.datetime64
        Period the target days must fall in (inputs may reach back before ``start``).
    need_target : bool
        True (training, scoring): keep windows with at least one observed target in the period.
        False (prediction): keep every window with complete inputs, observed or not, including
        forecasts past the last observation.
    device : str or torch.device
        Where the tensors live.
    stride : int
        Keep every ``stride``-th window (counted back from the period's end). With
        ``stride == PREDICT_LAST_N`` in simulate mode every day is predicted exactly once.

    Notes
    -----
    A window ending on day t holds inputs of days t-L+1..t. Its targets are Q_{t-N+1..t}
    (simulate, N = PREDICT_LAST_N) or Q_{t+1..t+P} (forecast). Missing targets are masked in
    ``y_mask``, never filled. In forecast mode the lagged discharge channel is 0 (the training
    mean) where unobserved, and the ``discharge_lag_missing`` channel is 1 there.

    With future inputs (``spec.future_inputs``) a window issued on day t runs over
    t-L+1..t+P and needs complete known forcings on the P lead days as well. Its rows of the
    lead days are the data's rows; the model hides discharge, its flag and the unknown forcings
    there (:meth:`sca2lstm.SCA2LSTM.hide_future`), so nothing observed after day t but the
    known forcings reaches it.
    """

    def __init__(
        self,
        data: InputData,
        spec: FeatureSpec,
        scalers: Scalers,
        basins: Sequence[str],
        start: np.datetime64,
        end: np.datetime64,
        need_target: bool = True,
        device="cpu",
        stride: int = 1,
    ) -> None:
        import torch

        self.spec, self.scalers, self.basins = spec, scalers, list(basins)
        self.start, self.end = np.datetime64(start, "D"), np.datetime64(end, "D")
        spec.check(data)
        L, F = spec.seq_len, spec.future_len
        known = [spec.forcings.index(c) for c in spec.future_inputs]
        xs, ys, ends, owners, masks, periods, day0 = [], [], [], [], [], [], []
        offset = 0
        fmean = np.array(
            [scalers.dynamic_mean[spec.dynamic_inputs.index(c)] for c in spec.forcings]
        )
        fstd = np.array([scalers.dynamic_std[spec.dynamic_inputs.index(c)] for c in spec.forcings])
        for k, basin in enumerate(self.basins):
            b = data.basins[basin]
            x, q, t, keep, observed, in_period = self._basin_windows(
                b, fmean, fstd, known, need_target, stride
            )
            xs.append(x)
            ys.append(np.nan_to_num(q, nan=0.0))
            ends.append(offset + t[keep])
            owners.append(np.full(int(keep.sum()), k))
            masks.append(observed[keep])
            periods.append(in_period[keep])
            day0.append(b.start)
            offset += len(x)
        self.n_samples_per_basin = [len(e) for e in ends]
        empty = [b for b, n in zip(self.basins, self.n_samples_per_basin, strict=True) if n == 0]
        if need_target and empty:
            raise UserError(
                f"basin(s) {', '.join(empty)} have no complete window with observed {spec.target} "
                f"in {self.start}..{self.end}; choose another period or drop them"
            )
        stat = static_matrix(data.attributes, self.basins, spec.static_attributes)
        stat = scalers.scale_static(stat)
        self.basin_start = np.array(day0, dtype="datetime64[D]")
        self.row_offset = np.cumsum([0] + [len(x) for x in xs])[:-1]
        self.device = torch.device(device)
        self.x = torch.from_numpy(np.concatenate(xs)).to(self.device)  # [N, C]
        self.y = torch.from_numpy(np.concatenate(ys)).to(self.device)  # [N]
        self.static = torch.from_numpy(stat.astype(np.float32)).to(self.device)  # [n_basins, S]
        self.sample_end = torch.from_numpy(np.concatenate(ends).astype(np.int64)).to(self.device)
        self.sample_basin = torch.from_numpy(np.concatenate(owners).astype(np.int64)).to(
            self.device
        )
        self.y_mask = torch.from_numpy(np.concatenate(masks)).to(self.device)  # [S, n_out]
        self.in_period = np.concatenate(periods)  # [S, n_out] bool: target day inside the period
        self._window = torch.arange(-L + 1, 1 + F, device=self.device)
        if spec.mode == "forecast":
            self._targets = torch.arange(1, spec.pred_len + 1, device=self.device)
        else:
            self._targets = torch.arange(-spec.predict_last_n + 1, 1, device=self.device)

    def _basin_windows(self, b: BasinData, fmean, fstd, known, need_target: bool, stride: int):
        """One basin's scaled inputs and targets, and which windows are complete and kept.

        Returns ``(x [T+P, C], q [T+P], t [W], keep [W], observed [W, n_out],
        in_period [W, n_out])``: ``t`` is each window's last input day (row).
        """
        spec, scalers, basin = self.spec, self.scalers, b.basin
        L, pad = spec.seq_len, spec.pred_len if spec.mode == "forecast" else 0
        F = spec.future_len
        if b.end < self.start or b.start > self.end:
            raise UserError(
                f"the period {self.start}..{self.end} lies outside the data of basin {basin} "
                f"({b.start}..{b.end}); choose dates inside it"
            )
        T = len(b.values)
        forc = (
            np.stack([b.column(c) for c in spec.forcings], axis=1)
            if spec.forcings
            else (np.zeros((T, 0), np.float32))
        )
        forc = ((forc - fmean) / fstd).astype(np.float32)
        q = scalers.scale_target(b.column(spec.target).astype(np.float64)).astype(np.float32)
        q_seen = np.isfinite(q)
        ok = np.isfinite(forc).all(axis=1)
        known_ok = np.concatenate([np.isfinite(forc[:, known]).all(axis=1), np.zeros(pad, bool)])
        if spec.mode == "forecast":
            x = np.concatenate([forc, np.where(q_seen, q, 0)[:, None], (~q_seen)[:, None]], 1)
        else:
            x = forc
        x = np.nan_to_num(x, nan=0.0).astype(np.float32)
        # Forecasts can reach past the last row: pad P rows of missing inputs and targets.
        x = np.concatenate([x, np.zeros((pad, x.shape[1]), np.float32)])
        q = np.concatenate([q, np.full(pad, np.nan, np.float32)])
        ok = np.concatenate([ok, np.zeros(pad, bool)])
        # Window ending at t is complete when no bad day lies in t-L+1..t.
        bad = np.concatenate([[0], np.cumsum(~ok)])
        t = np.arange(L - 1, T)
        complete = (bad[t + 1] - bad[t + 1 - L]) == 0
        if F:
            # Future inputs: the known forcings of t+1..t+F must be present too.
            bad_known = np.concatenate([[0], np.cumsum(~known_ok)])
            complete &= (bad_known[t + 1 + F] - bad_known[t + 1]) == 0
        dates = b.start + np.arange(T + pad).astype("timedelta64[D]")
        if spec.mode == "forecast":
            target_rows = t[:, None] + np.arange(1, spec.pred_len + 1)
        else:
            target_rows = t[:, None] + np.arange(-spec.predict_last_n + 1, 1)
        in_period = (dates[target_rows] >= self.start) & (dates[target_rows] <= self.end)
        observed = np.isfinite(q[target_rows]) & in_period
        if need_target:
            keep = complete & observed.any(axis=1)
        else:
            first = dates[target_rows[:, -1 if spec.mode == "simulate" else 0]]
            keep = complete & (first >= self.start) & (first <= self.end)
        if stride > 1:
            last = int((min(self.end, b.end + pad) - b.start).astype(int))
            keep &= (last - t) % stride == 0
        return x, q, t, keep, observed, in_period

    def __len__(self) -> int:
        return int(self.sample_end.numel())

    def subsample(self, n: int, seed: int = 0) -> None:
        """Keep a random ``n`` of the samples (smoke tests, ``--dry-run``)."""
        import torch

        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        keep = keep.sort().values.to(self.device)
        self.sample_end, self.sample_basin = self.sample_end[keep], self.sample_basin[keep]
        self.y_mask = self.y_mask[keep]
        self.in_period = self.in_period[keep.cpu().numpy()]

    def batch(self, idx) -> dict:
        """Gather samples ``idx`` (LongTensor on this device).

        Returns
        -------
        dict
            x ``[B, L, C]`` (``[B, L + P, C]`` with future inputs), static ``[B, S]``,
            y ``[B, n_out]`` (scaled; 0 where unobserved), y_mask ``[B, n_out]`` bool,
            basin ``[B]`` (index into ``self.basins``).
        """
        end = self.sample_end[idx]
        return {
            "x": self.x[end[:, None] + self._window],
            "static": self.static[self.sample_basin[idx]],
            "y": self.y[end[:, None] + self._targets],
            "y_mask": self.y_mask[idx],
            "basin": self.sample_basin[idx],
        }

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator=None,
        limit: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[dict]:
        """Yield batches over all samples (a random order when ``shuffle``).

        ``limit`` > 0 with ``shuffle`` draws that many random samples (SAMPLES_PER_EPOCH).
        ``shard=(rank, world)`` yields this process's share of each global batch: every process
        draws the same order from an equally seeded generator (data-parallel training).
        """
        rank, world = shard
        import torch

        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator).to(self.device)
            if 0 < limit < n:
                order = order[:limit]
        else:
            order = torch.arange(n, device=self.device)
        for i in range(0, len(order), batch_size):
            yield self.batch(order[i : i + batch_size][rank::world])

    def basin_target_std(self) -> torch.Tensor:  # noqa: F821
        """σ_b of each basin's scaled observed targets in this set: ``[n_basins]``.

        Used for the NSE* loss of Kratzert et al. (2019, HESS 23, 5089), weight 1/(σ_b + 0.1)².
        """
        import torch

        out = torch.ones(len(self.basins), device=self.device)
        for k in range(len(self.basins)):
            sel = self.sample_basin == k
            if not bool(sel.any()):
                continue
            y = self.y[self.sample_end[sel][:, None] + self._targets][self.y_mask[sel]]
            if y.numel() > 1:
                out[k] = y.std()
        return out

    def sample_dates(self) -> np.ndarray:
        """Issue day t of each sample, its last day of observed inputs (``[S]`` datetime64[D])."""
        end = self.sample_end.cpu().numpy()
        owner = self.sample_basin.cpu().numpy()
        return self.basin_start[owner] + (end - self.row_offset[owner]).astype("timedelta64[D]")

    def target_dates(self) -> np.ndarray:
        """Dates of each sample's targets: ``[S, n_out]`` datetime64[D]."""
        return self.sample_dates()[:, None] + self._targets.cpu().numpy().astype("timedelta64[D]")

    def targets(self):
        """The scaled target of every sample and output, ``[S, n_out]`` (see ``y_mask``)."""
        return self.y[self.sample_end[:, None] + self._targets]

    def to_dataset(self) -> WindowSamples:
        """The same samples as a map-style torch Dataset (the streaming path)."""
        return WindowSamples(self)


try:
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover - torch is a hard dependency, this keeps import cheap
    _TorchDataset = object


class WindowSamples(_TorchDataset):
    """Map-style dataset over the samples of a CPU :class:`WindowData`, for a torch DataLoader.

    The streaming path (DATA_PATH: stream) uses it with NUM_WORKERS, PIN_MEMORY, PREFETCH_FACTOR
    and PERSISTENT_WORKERS; items match :meth:`WindowData.batch` for one sample.
    """

    def __init__(self, windows: WindowData) -> None:
        if windows.device.type != "cpu":
            raise ValueError("WindowSamples reads CPU tensors; build the WindowData on the CPU")
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        import torch

        item = self.windows.batch(torch.tensor([i]))
        return {k: v[0] for k, v in item.items()}


# --------------------------------------------------------------------------- checkpoints


@dataclass
class LoadedModel:
    """A checkpoint and everything rebuilt from it (see :func:`load_model`)."""

    path: Path
    ckpt: dict
    model: Any  # a torch.nn.Module with CheckpointLoadable
    spec: FeatureSpec
    scalers: Scalers
    label: str = ""

    @property
    def model_class(self) -> str:
        return self.ckpt["model_class"]

    @property
    def synthetic(self) -> bool:
        return bool(self.ckpt.get("synthetic_data", False))


def load_model(
    path: str | Path,
    model_class: type,
    device: Any = "cpu",
    ckpt: dict | None = None,
    hint: str = "",
) -> LoadedModel:
    """The one way from a checkpoint to a model: the model with its weights, its feature spec,
    its scalers and the checkpoint dict, all checked to fit together.

    Parameters
    ----------
    path : str or Path
        The checkpoint file (read with :func:`utils.load_checkpoint` unless ``ckpt`` is given).
    model_class : type
        The class the checkpoint must hold, a :class:`CheckpointLoadable` model.
    device : str or torch.device
        Where the model goes.
    ckpt : dict, optional
        The checkpoint, already read (a fresh copy of a loaded model; the file is not read again).
    hint : str
        Appended to the error of a checkpoint of another class (what the caller reads).

    Raises
    ------
    UserError
        Another model class, missing entries, or parts that do not fit together.
    """
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    name = model_class.__name__
    if ckpt.get("model_class") != name:
        article = "an" if name[0] in "AEFHILMNORSX" else "a"  # as the initials are read
        raise UserError(f"{path} holds a {ckpt.get('model_class')}, not {article} {name}{hint}")
    missing = [k for k in ("model_args", "features", "scalers", "config") if k not in ckpt]
    if missing:
        raise UserError(
            f"{path} lacks {', '.join(missing)}, so its model and inputs cannot be rebuilt; "
            "use a checkpoint written by sca2lstm.py, fine_train.py or pso_lstm.py"
        )
    try:
        spec = FeatureSpec.from_dict(ckpt["features"])
        scalers = Scalers.from_dict(ckpt["scalers"])
        model = model_class(model_class.args_from_saved(ckpt["model_args"]))
        model.load_state_dict(ckpt["model_state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise UserError(
            f"{path} does not hold a loadable {name} ({type(err).__name__}: {reason}); "
            "retrain it with this toolkit"
        ) from None
    problems = model.checkpoint_problems(spec)
    if "channels" in ckpt and list(ckpt["channels"]) != list(spec.channels):
        problems.append(f"channels {list(ckpt['channels'])} vs features {list(spec.channels)}")
    if len(scalers.dynamic_mean) != len(spec.dynamic_inputs) or len(scalers.static_mean) != len(
        spec.static_attributes
    ):
        problems.append("scalers of another feature list")
    if problems:
        raise UserError(f"{path} is inconsistent ({'; '.join(problems)}); retrain it")
    return LoadedModel(Path(path), ckpt, model.to(device), spec, scalers)


class CheckpointLoadable:
    """Mixin of the toolkit's models: ``Model.from_checkpoint(path)`` rebuilds one with weights.

    A model class sets ``args_class``, the dataclass of hyperparameters saved as ``model_args``,
    and may override :meth:`checkpoint_problems` with the checks of its own arguments.
    """

    args_class: type

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: Any = "cpu"):
        """Rebuild the model of checkpoint ``path`` (:func:`load_model`, the model only)."""
        return load_model(path, cls, map_location).model

    @classmethod
    def args_from_saved(cls, saved: dict):
        """The model's arguments from a checkpoint's ``model_args``."""
        return cls.args_class(**saved)

    def checkpoint_problems(self, spec: FeatureSpec) -> list[str]:
        """What in this model's arguments does not fit the checkpoint's features (none here)."""
        return []
