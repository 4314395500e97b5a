"""PSO-LSTM: a per-basin LSTM whose hyperparameters a particle swarm tunes, a strong local baseline
next to the regional SCA2LSTM.

For each basin the swarm (pyswarms ``GlobalBestPSO``) searches time_steps, hidden_size, batch_size
(log scale), learning_rate (log scale), dropout and num_layers; a dimension given with its own flag
is fixed and left out. The fitness of a setting is 1 − NSE on the basin's validation period after
``--pso_epochs`` epochs. The best setting is then trained for ``--final_epochs`` epochs with early
stopping on the validation period, and the test period is scored once, at the end.

Usage::

    python pso_lstm.py --demo --basin_id 22001 --n_particles 4 --iters 3   # a quick check
    python pso_lstm.py --basin_id 22001,22006 --time_steps 12 --batch_size 32 --hidden_size 64
    python pso_lstm.py --basin_id 22001 --plot_prediction --start 2000-01-01 --end 2000-12-31

Outputs per basin in ``<output root>/pso_lstm/basin_<id>/<timestamp>/`` (output root: OUTPUT_DIR, or
``--output_dir``, as for every stage): ``pso_history.csv``, ``best_params.json``,
``pso_convergence.png`` (the first and the last only when something was searched),
``best_model_basin_<id>.pth``, ``metrics.csv``, ``history.csv``, ``training_curve.png``,
``config.yaml``, ``pso_lstm.log``, and with ``--plot_prediction`` ``prediction.png`` and
``prediction.csv``. One ``summary_<timestamp>.csv`` per call in ``<output root>/pso_lstm/`` holds a
row per basin.

In a notebook::

    from pso_lstm import PSOLSTM
    model = PSOLSTM.from_checkpoint(run_dir / "best_model_basin_22001.pth")
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from hydrologyDataset import (
    BasinData,
    CheckpointLoadable,
    FeatureSpec,
    InputData,
    Scalers,
    WindowData,
    load_input_data,
    resolve_data_dir,
)
from utils import (
    PSO_DIMENSIONS,
    PSO_INTEGER_DIMENSIONS,
    HelpFormatter,
    RunFolder,
    TrainSettings,
    UserError,
    add_common_args,
    basin_metrics_table,
    checkpoint_payload,
    csv_list,
    ensure_writable,
    eval_batch_size,
    fit,
    iso_date,
    load_config,
    log,
    log_device,
    mark_synthetic,
    output_root,
    period,
    plot_training_curve,
    positive_int,
    predict_windows,
    progress,
    pso_bounds_problem,
    pyplot,
    resolve_device,
    run_cli,
    save_checkpoint,
    save_figure,
    seed_everything,
    series_by_basin,
    setup_logging,
    show_config_defaults,
    unique_path,
    validate_config,
    warn_synthetic,
    window_device,
    write_csv,
    write_json,
    write_run_config,
)

__all__ = [
    "PSOLSTM",
    "PSOLSTMArgs",
    "Dimension",
    "SearchSpace",
    "SwarmObjective",
    "build_search_space",
    "run_swarm",
    "main",
]

# Dimensions searched on a log scale; utils.PSO_INTEGER_DIMENSIONS take whole numbers. PSO_BOUNDS
# in run.config holds the bounds.
LOG_SCALE_DIMENSIONS = frozenset({"batch_size", "learning_rate"})
# Dimension -> the run.config keys its flag sets (both CPU and GPU variants where there are two).
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "time_steps": ("SEQ_LEN",),
    "hidden_size": ("LSTM_HIDDEN_DIM",),
    "batch_size": ("BATCH_SIZE", "BATCH_SIZE_GPU"),
    "learning_rate": ("LR", "LR_GPU"),
    "dropout": ("DROPOUT",),
    "num_layers": ("NUM_LAYERS",),
}
# Integer dimensions are rounded to the nearest integer over [lo - 0.5 + EPS, hi + 0.5 - EPS],
# so that every integer, the bounds included, owns a search interval of the same width.
EPS = 1e-6
INPUTS = ("q", "forcings+q", "forcings")
METRIC_COLUMNS = ("nse", "rmse", "bias_pct", "kge", "mae", "r2", "persistence_nse")


# --------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter.

    Attributes
    ----------
    name : str
        One of ``utils.PSO_DIMENSIONS``.
    lo, hi : float
        Bounds of the decoded value, both reachable.
    integer : bool
        Round the decoded value to an integer.
    log : bool
        The swarm moves in log10 of the value.
    """

    name: str
    lo: int | float
    hi: int | float
    integer: bool = False
    log: bool = False

    def search_bounds(self) -> tuple[float, float]:
        """Bounds of the swarm's coordinate for this dimension."""
        lo, hi = (self.lo - 0.5 + EPS, self.hi + 0.5 - EPS) if self.integer else (self.lo, self.hi)
        return (math.log10(lo), math.log10(hi)) if self.log else (lo, hi)

    def decode(self, x: float) -> int | float:
        """Swarm coordinate -> hyperparameter value (inside ``lo``..``hi``).

        Continuous values are kept to 3 significant digits (log scale) or 3 decimals, so that
        settings closer than that share one cache entry.
        """
        value = 10.0 ** float(x) if self.log else float(x)
        if self.integer:
            return int(min(max(math.floor(value + 0.5), self.lo), self.hi))
        value = float(f"{value:.3g}") if self.log else round(value, 3)
        return float(min(max(value, self.lo), self.hi))


@dataclass(frozen=True)
class SearchSpace:
    """The searched dimensions and the fixed values of the others.

    Attributes
    ----------
    dims : tuple of Dimension
        Searched dimensions, in ``PSO_DIMENSIONS`` order (the swarm's coordinates).
    fixed : dict
        Name -> value of every dimension that is not searched.
    """

    dims: tuple[Dimension, ...]
    fixed: dict[str, int | float] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dims)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lower [D], upper [D])`` of the swarm's coordinates, as pyswarms takes them."""
        pairs = np.array([d.search_bounds() for d in self.dims], dtype=np.float64)  # [D, 2]
        return pairs[:, 0].copy(), pairs[:, 1].copy()

    def decode(self, position: Sequence[float]) -> dict[str, int | float]:
        """A swarm position ``[D]`` -> all six hyperparameters, in ``PSO_DIMENSIONS`` order."""
        values = dict(self.fixed)
        values.update({d.name: d.decode(x) for d, x in zip(self.dims, position, strict=True)})
        return {name: values[name] for name in PSO_DIMENSIONS}

    @staticmethod
    def key(params: dict) -> tuple:
        """Cache key of a decoded setting."""
        return tuple(params[name] for name in PSO_DIMENSIONS)

    def describe(self) -> str:
        """One line naming the searched dimensions with their bounds, and the fixed ones."""
        searched = ", ".join(
            f"{d.name} [{d.lo:g}, {d.hi:g}]{' log' if d.log else ''}" for d in self.dims
        )
        fixed = ", ".join(f"{k}={v:g}" for k, v in self.fixed.items())
        return f"searched: {searched or 'none'}; fixed: {fixed or 'none'}"


def build_search_space(
    bounds: dict[str, Sequence[float]],
    defaults: dict[str, int | float],
    fixed: set[str] | frozenset[str],
) -> SearchSpace:
    """Make the search space from PSO_BOUNDS, the default values and the fixed dimensions.

    Parameters
    ----------
    bounds : dict
        PSO_BOUNDS: name -> [lower, upper].
    defaults : dict
        Name -> value used for every fixed dimension.
    fixed : set of str
        Dimensions left out of the search. A dimension whose bounds are equal is fixed at that
        value as well.

    Raises
    ------
    UserError
        A searched dimension without bounds, or bounds it cannot take (lower above upper, a
        non-integer bound of an integer dimension, a learning rate of 0, dropout of 1 or more).
    """
    dims, values = [], {}
    for name in PSO_DIMENSIONS:
        if name in fixed:
            values[name] = defaults[name]
            continue
        if name not in bounds:
            raise UserError(
                f"PSO_BOUNDS has no bounds for {name}; add them to run.config or fix {name} "
                f"with --{name}"
            )
        lo, hi = (float(v) for v in bounds[name])
        integer, log_scale = name in PSO_INTEGER_DIMENSIONS, name in LOG_SCALE_DIMENSIONS
        problem = pso_bounds_problem(name, lo, hi)
        if problem:
            where = f"bounds of {name} ({lo:g}, {hi:g}; PSO_BOUNDS or --bounds_{name})"
            raise UserError(f"{where}: {problem}")
        if integer:
            lo, hi = int(lo), int(hi)
        if lo == hi:
            values[name] = lo
            continue
        dims.append(Dimension(name, lo, hi, integer, log_scale))
    return SearchSpace(tuple(dims), values)


class SwarmObjective:
    """The fitness function pyswarms calls once per iteration with the whole swarm.

    Each position is decoded to a setting; a setting seen before is answered from the cache,
    otherwise ``evaluate`` trains and scores it. Every particle of every iteration is recorded in
    ``history``.

    Parameters
    ----------
    space : SearchSpace
    evaluate : callable
        ``evaluate(params) -> {"cost": float, "val_nse": float, ...}``.
    on_iteration : callable, optional
        ``on_iteration(objective)`` after each iteration (writes the history file).
    bar : tqdm, optional
        Advanced by one per particle, with the best cost on it.
    """

    def __init__(
        self,
        space: SearchSpace,
        evaluate: Callable[[dict], dict],
        on_iteration: Callable[[SwarmObjective], None] | None = None,
        bar=None,
    ) -> None:
        self.space, self.evaluate, self.on_iteration, self.bar = space, evaluate, on_iteration, bar
        self.cache: dict[tuple, dict] = {}
        self.history: list[dict] = []
        self.iteration = 0

    @property
    def n_evaluated(self) -> int:
        """Settings actually trained (cache misses)."""
        return len(self.cache)

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """``positions [n_particles, D]`` -> costs ``[n_particles]``."""
        self.iteration += 1
        costs = np.empty(len(positions))
        for p, position in enumerate(positions):
            params = self.space.decode(position)
            key = self.space.key(params)
            cached = key in self.cache
            if not cached:
                self.cache[key] = self.evaluate(params)
            result = self.cache[key]
            costs[p] = result["cost"]
            self.history.append(
                {
                    "iteration": self.iteration,
                    "particle": p,
                    **params,
                    "cost": result["cost"],
                    "val_nse": result["val_nse"],
                    "cached": cached,
                    "seconds": 0.0 if cached else result.get("seconds", float("nan")),
                }
            )
            log.info(
                "PSO iteration %d particle %d: %s -> validation NSE %.4f, cost %.4f%s",
                self.iteration,
                p,
                " ".join(f"{k}={v:g}" for k, v in params.items()),
                result["val_nse"],
                result["cost"],
                " (cached)" if cached else "",
            )
            if self.bar is not None:
                self.bar.update()
                self.bar.set_postfix(best_cost=f"{min(r['cost'] for r in self.history):.4f}")
        if self.on_iteration is not None:
            self.on_iteration(self)
        return costs


@contextlib.contextmanager
def _contained_pyswarms_logging():
    """Keep pyswarms from reconfiguring logging.

    pyswarms' Reporter calls ``logging.config.dictConfig`` on import and for every optimiser it
    builds: that closes every handler of the process (ours and pytest's), points the root logger
    at stderr and writes ``report.log`` into the working folder (pyswarms issues #415, #462).
    Those calls are skipped while pyswarms is imported and the optimiser is built.
    """
    import logging.config

    saved = logging.config.dictConfig
    logging.config.dictConfig = lambda *args, **kwargs: None
    try:
        yield
    finally:
        logging.config.dictConfig = saved


def run_swarm(
    space: SearchSpace,
    objective: Callable[[np.ndarray], np.ndarray],
    n_particles: int,
    iters: int,
    options: dict[str, float],
    seed: int,
) -> tuple[dict[str, int | float], float]:
    """Minimise ``objective`` over ``space`` with pyswarms' GlobalBestPSO.

    Particles that leave the bounds are put back on the boundary (``bh_strategy="nearest"``),
    never wrapped around to the other side.

    Parameters
    ----------
    space : SearchSpace
        At least one searched dimension.
    objective : callable
        ``positions [n_particles, D] -> costs [n_particles]`` (a :class:`SwarmObjective`).
    n_particles, iters : int
    options : dict
        ``{"c1": ..., "c2": ..., "w": ...}``.
    seed : int
        Seeds NumPy's global generator, which pyswarms draws the swarm and its moves from.

    Returns
    -------
    best_params : dict
        The best position, decoded by :meth:`SearchSpace.decode`.
    best_cost : float
    """
    if not space.dims:
        raise ValueError("nothing to search: every dimension is fixed")
    with _contained_pyswarms_logging():
        from pyswarms.single.global_best import GlobalBestPSO

        np.random.seed(seed)
        optimizer = GlobalBestPSO(
            n_particles=n_particles,
            dimensions=len(space.dims),
            options=options,
            bounds=space.bounds(),
            bh_strategy="nearest",
        )
    best_cost, best_position = optimizer.optimize(objective, iters=iters, verbose=False)
    return space.decode(best_position), float(best_cost)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class PSOLSTMArgs:
    """Hyperparameters of :class:`PSOLSTM` (saved in every checkpoint).

    Attributes
    ----------
    n_dynamic : int
        Channels C of the forecast windows (forcings, lagged discharge and its missing flag).
    hidden, num_layers : int
        LSTM size.
    dropout : float
        Between LSTM layers and before the head.
    pred_len : int
        PRED_LEN lead days predicted.
    q_channel, q_flag_channel : int
        Channels of the lagged discharge and of its missing flag.
    inputs : str
        ``q`` and ``forcings+q`` read every channel of the windows (``q`` windows hold the two
        discharge channels only) and predict the change from the last observed discharge;
        ``forcings`` reads the forcing channels only and predicts the discharge itself.
    """

    n_dynamic: int
    hidden: int = 64
    num_layers: int = 2
    dropout: float = 0.3
    pred_len: int = 1
    q_channel: int = -1
    q_flag_channel: int = -1
    inputs: str = "forcings+q"

    @classmethod
    def from_saved(cls, saved: dict) -> PSOLSTMArgs:
        """The arguments of a checkpoint's ``model_args`` (``hidden_size`` before the rename to
        ``hidden``, the name SCA2LSTMArgs uses)."""
        saved = dict(saved)
        if "hidden_size" in saved:
            saved["hidden"] = saved.pop("hidden_size")
        return cls(**saved)

    @classmethod
    def from_params(cls, params: dict, spec: FeatureSpec, inputs: str) -> PSOLSTMArgs:
        """Size the model from decoded hyperparameters and the windows' feature spec."""
        n = len(spec.channels)
        return cls(
            n_dynamic=n,
            hidden=int(params["hidden_size"]),
            num_layers=int(params["num_layers"]),
            dropout=float(params["dropout"]),
            pred_len=spec.pred_len,
            q_channel=n - 2,
            q_flag_channel=n - 1,
            inputs=inputs,
        )

    @property
    def reads_q(self) -> bool:
        return self.inputs != "forcings"

    @property
    def n_inputs(self) -> int:
        """Channels the LSTM reads (the forcings come first in the windows)."""
        return self.n_dynamic if self.reads_q else self.q_channel


class PSOLSTM(CheckpointLoadable, nn.Module):
    """A plain LSTM and a linear head on forecast windows of one basin.

    Its ``forward`` has the signature of ``SCA2LSTM.forward`` so that the shared training engine
    (``utils.fit``, ``utils.predict_windows``) drives both; the static attributes are ignored.
    Submodules: ``lstm`` and ``head``.

    Parameters
    ----------
    args : PSOLSTMArgs or dict
        The hyperparameters, or the ``model_args`` dict of a checkpoint.
    """

    args_class = PSOLSTMArgs

    @classmethod
    def args_from_saved(cls, saved: dict) -> PSOLSTMArgs:
        return PSOLSTMArgs.from_saved(saved)

    def __init__(self, args: PSOLSTMArgs | dict) -> None:
        super().__init__()
        args = args if isinstance(args, PSOLSTMArgs) else PSOLSTMArgs.from_saved(args)
        if args.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}, got {args.inputs!r}")
        self.args = args
        inner_dropout = args.dropout if args.num_layers > 1 else 0.0
        self.lstm = nn.LSTM(
            args.n_inputs,
            args.hidden,
            args.num_layers,
            batch_first=True,
            dropout=inner_dropout,
        )
        self.head = nn.Sequential(nn.Dropout(args.dropout), nn.Linear(args.hidden, args.pred_len))
        if args.reads_q:
            # The head predicts the change from the last observation: untrained = persistence.
            nn.init.zeros_(self.head[1].weight)
            nn.init.zeros_(self.head[1].bias)

    def forward(
        self,
        x: torch.Tensor,
        static: torch.Tensor | None = None,
        return_weights: bool = False,
        n_last: int = 1,
    ) -> torch.Tensor:
        """Predict discharge at t+1..t+PRED_LEN (scaled units).

        Parameters
        ----------
        x : torch.Tensor
            ``[B, L, C]`` scaled forecast-window inputs, days t-L+1..t.
        static : torch.Tensor, optional
            ``[B, S]``; ignored (a single-basin model).
        return_weights : bool
            Must be False: this model has no channel weights.
        n_last : int
            Ignored (forecast mode); kept for the engine's call signature.

        Returns
        -------
        torch.Tensor
            ``[B, PRED_LEN]``.
        """
        if return_weights:
            raise ValueError("PSOLSTM has no channel weights; call it with return_weights=False")
        h, _ = self.lstm(x[..., : self.args.n_inputs])  # [B, L, H]
        out = self.head(h[:, -1])  # [B, P]
        if self.args.reads_q:
            out = x[:, -1, self.args.q_channel, None] + out  # [B, P]
        return out


# --------------------------------------------------------------------------- one basin


def default_params(config: dict, settings: TrainSettings) -> dict[str, int | float]:
    """The six hyperparameters as the config sets them (GPU batch size and rate on CUDA)."""
    return {
        "time_steps": config["SEQ_LEN"],
        "hidden_size": config["LSTM_HIDDEN_DIM"],
        "batch_size": settings.batch_size,
        "learning_rate": settings.lr,
        "dropout": config["DROPOUT"],
        "num_layers": config["NUM_LAYERS"],
    }


def apply_params(config: dict, params: dict) -> dict:
    """A copy of ``config`` whose keys hold the hyperparameters ``params``."""
    out = dict(config)
    for name, value in params.items():
        for key in CONFIG_KEYS[name]:
            out[key] = value
    return out


def _n_observed(b: BasinData, target: str, start: np.datetime64, end: np.datetime64) -> int:
    return int(np.isfinite(b.column(target)[b.rows(start, end)]).sum())


def basin_periods(config: dict, b: BasinData) -> tuple[dict[str, str], str | None]:
    """The training, validation and test periods of one basin.

    The configured periods, except for a basin without observed discharge in the validation
    period (10003 has none before 1983-05-19): it is validated on a block of the same length cut
    from the end of its training period, and trained on the rest.

    Returns
    -------
    overrides : dict
        Config keys to change for this basin (empty when the configured periods serve).
    note : str or None
        What was changed, for the log.

    Raises
    ------
    UserError
        No observed discharge in the training or test period, or too little to split off a
        validation block.
    """
    target = config["TARGET"]
    for name in ("train", "test"):
        start, end = period(config, name)
        if _n_observed(b, target, start, end) < 2:
            raise UserError(
                f"basin {b.basin} ({b.name}) has no observed {target} in the {name} period "
                f"{start}..{end}; choose other dates with --set or drop the basin"
            )
    v0, v1 = period(config, "validation")
    if _n_observed(b, target, v0, v1) >= 2:
        return {}, None
    t0, t1 = period(config, "train")
    new_v0 = t1 - (v1 - v0)
    new_t1 = new_v0 - np.timedelta64(1, "D")
    if (
        new_t1 < t0
        or _n_observed(b, target, t0, new_t1) < 2
        or _n_observed(b, target, new_v0, t1) < 2
    ):
        raise UserError(
            f"basin {b.basin} ({b.name}) has no observed {target} in the validation period "
            f"{v0}..{v1}, and its training period {t0}..{t1} is too short to split one off; "
            "set VAL_START/VAL_END with --set"
        )
    note = (
        f"basin {b.basin} has no observed {target} in the validation period {v0}..{v1}: "
        f"validating on {new_v0}..{t1} and training on {t0}..{new_t1} instead"
    )
    return {"VAL_START": str(new_v0), "VAL_END": str(t1), "TRAIN_END": str(new_t1)}, note


def check_plot_window(config: dict, b: BasinData, start: np.datetime64, end: np.datetime64):
    """Raise UserError when ``start``..``end`` leaves the basin's data or holds no observation."""
    if start < b.start or end > b.end:
        raise UserError(
            f"the plot window {start}..{end} (--start/--end) lies outside the data of basin "
            f"{b.basin} ({b.start}..{b.end}); choose dates inside it"
        )
    if _n_observed(b, config["TARGET"], start, end) < 2:
        raise UserError(
            f"basin {b.basin} ({b.name}) has no observed {config['TARGET']} in the plot window "
            f"{start}..{end} (--start/--end); choose dates with observations"
        )


@dataclass
class BasinSetup:
    """What every training run of one basin shares: data, scalers, device and settings."""

    basin: str
    config: dict
    data: InputData
    spec: FeatureSpec
    scalers: Scalers
    device: torch.device
    settings: TrainSettings
    _windows: dict = field(default_factory=dict)

    def windows(self, seq_len: int, name: str) -> WindowData:
        """Windows of ``seq_len`` days whose targets fall in period ``name`` (cached)."""
        key = (seq_len, name)
        if key not in self._windows:
            spec = replace(self.spec, seq_len=seq_len)
            device = window_device(self.config, self.device, training=name == "train")
            self._windows[key] = WindowData(
                self.data,
                spec,
                self.scalers,
                [self.basin],
                *period(self.config, name),
                device=device,
                stride=spec.eval_stride,
            )
        return self._windows[key]

    def train(self, params: dict, epochs: int, search: bool = False):
        """Train a fresh, seeded model with the hyperparameters ``params``.

        Returns
        -------
        model : PSOLSTM
            With the weights of the best validation epoch.
        result : utils.FitResult
        """
        seq_len = int(params["time_steps"])
        train = self.windows(seq_len, "train")
        val = self.windows(seq_len, "validation")
        settings = replace(
            self.settings,
            epochs=epochs,
            lr=float(params["learning_rate"]),
            batch_size=int(params["batch_size"]),
            # A compiled graph per short search run costs more than it saves.
            compile=self.settings.compile and not search,
        )
        torch.manual_seed(settings.seed)
        args = PSOLSTMArgs.from_params(params, train.spec, self.config["PSO_INPUTS"])
        model = PSOLSTM(args).to(self.device)
        return model, fit(model, train, val, settings, self.device)

    def fitness(self, params: dict) -> dict:
        """1 − validation NSE after PSO_EPOCHS epochs (inf when training diverges)."""
        t0 = time.perf_counter()
        try:
            _, result = self.train(params, self.config["PSO_EPOCHS"], search=True)
            val_nse = result.best_score if math.isfinite(result.best_score) else float("nan")
        except RuntimeError as err:
            if "the training loss became" not in str(err):
                raise
            log.warning("setting %s diverged (%s); cost inf", params, err)
            val_nse = float("nan")
        cost = 1.0 - val_nse if math.isfinite(val_nse) else float("inf")
        return {"cost": cost, "val_nse": val_nse, "seconds": time.perf_counter() - t0}


def _metrics_rows(setup: BasinSetup, model: PSOLSTM, windows: WindowData, name: str, start, end):
    pred = predict_windows(model, windows, batch_size=eval_batch_size(setup.settings.batch_size))
    table = basin_metrics_table(windows, pred, setup.data, {setup.basin: name})
    table.insert(0, "period", name)
    table.insert(1, "start", str(start))
    table.insert(2, "end", str(end))
    return table, pred


def plot_convergence(history: list[dict], path: Path, title: str) -> None:
    """Cost of every particle per iteration and the best cost so far."""
    plt = pyplot()

    iters = np.array([row["iteration"] for row in history])
    costs = np.array([row["cost"] for row in history], dtype=float)
    finite = np.isfinite(costs)
    best = [np.min(np.where(finite, costs, np.inf)[iters <= i]) for i in np.unique(iters)]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(iters[finite], costs[finite], s=14, alpha=0.6, label="particles")
    ax.plot(np.unique(iters), best, "o-", color="tab:red", label="best so far")
    ax.set_xlabel("PSO iteration")
    ax.set_ylabel("cost, 1 − validation NSE (-)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title)
    save_figure(fig, path)


def plot_prediction(series: dict, b: BasinData, path: Path, title: str) -> None:
    """Observed and predicted discharge over time, daily precipitation as inverted bars above,
    mm/day on the left axis and m³/s on the right."""
    import matplotlib.dates as mdates

    plt = pyplot()
    dates = series["date"].astype("datetime64[D]")
    fig, (ax_p, ax) = plt.subplots(
        2, 1, sharex=True, figsize=(11, 5.5), gridspec_kw={"height_ratios": [1, 3], "hspace": 0.05}
    )
    if "precipitation" in b.columns:
        rows = (dates - b.start).astype(int)
        ax_p.bar(dates.astype(object), b.column("precipitation")[rows], width=1.0, linewidth=0)
    ax_p.invert_yaxis()
    ax_p.set_ylabel("precipitation\n(mm/day)")
    # the simulation under the observations, so the observed line stays visible
    ax.plot(dates.astype(object), series["sim"], color="tab:orange", lw=1.0, label="PSO-LSTM")
    ax.plot(dates.astype(object), series["obs"], color="black", lw=0.8, label="observed")
    ax.set_xlabel("date")
    ax.set_ylabel("discharge (mm/day)")
    if np.isfinite(b.area) and b.area > 0:
        factor = b.area * 1000.0 / 86400.0
        right = ax.secondary_yaxis("right", functions=(lambda q: q * factor, lambda q: q / factor))
        right.set_ylabel("discharge (m³/s)")
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
    ax.legend(loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=8)  # clear of the peaks
    ax_p.set_title(title, fontsize=10)
    save_figure(fig, path)


@dataclass
class BasinJob:
    """One basin's PSO-LSTM run, checked and set up (:func:`prepare_basin`)."""

    basin: str
    b: BasinData
    config: dict
    setup: BasinSetup
    periods: dict[str, tuple[str, str]]


def prepare_basin(basin: str, config: dict, data: InputData, device: torch.device) -> BasinJob:
    """The basin's periods (with the validation fallback), scalers and training setup."""
    b = data.basins[basin]
    overrides, note = basin_periods(config, b)
    config = {**config, **overrides}
    if note:
        log.warning(note)
    config["TRAIN_BASINS"] = config["VAL_BASINS"] = config["TEST_BASINS"] = [basin]
    # PSO-LSTM reads the last day of its window: no future inputs.
    spec = replace(
        FeatureSpec.from_config(config),
        use_forcings=config["PSO_INPUTS"] != "q",
        future_inputs=(),
    )
    scalers = Scalers.fit(data, spec, [basin], *period(config, "train"))
    settings = TrainSettings.from_config(config, device)
    setup = BasinSetup(basin, config, data, spec, scalers, device, settings)
    periods = {
        name: tuple(str(d) for d in period(config, name))
        for name in ("train", "validation", "test")
    }
    return BasinJob(basin, b, config, setup, periods)


def search_basin(job: BasinJob, space: SearchSpace, run_dir: Path) -> tuple[dict, dict]:
    """The particle swarm over ``space`` (or the fixed setting); returns (best, search summary)."""
    config, basin = job.config, job.basin
    search: dict[str, Any] = {
        "n_particles": 0,
        "iters": 0,
        "pso_epochs": 0,
        "evaluations": 0,
        "trained_settings": 0,
        "seconds": 0.0,
        "val_nse": float("nan"),
        "cost": float("nan"),
    }
    if not space.dims:
        log.info("no dimension searched (--no_pso or every dimension fixed)")
        return space.decode([]), search
    n_particles, iters = config["PSO_N_PARTICLES"], config["PSO_ITERS"]
    log.info(
        "PSO: %d particles x %d iterations, %d epoch(s) per setting, c1 %g c2 %g w %g",
        n_particles,
        iters,
        config["PSO_EPOCHS"],
        config["PSO_C1"],
        config["PSO_C2"],
        config["PSO_W"],
    )
    bar = progress(total=n_particles * iters, desc=f"PSO basin {basin}", unit="particle")
    objective = SwarmObjective(
        space,
        job.setup.fitness,
        on_iteration=lambda o: write_csv(run_dir / "pso_history.csv", pd.DataFrame(o.history)),
        bar=bar,
    )
    t0 = time.perf_counter()
    try:
        best, best_cost = run_swarm(
            space,
            objective,
            n_particles,
            iters,
            {"c1": config["PSO_C1"], "c2": config["PSO_C2"], "w": config["PSO_W"]},
            config["SEED"],
        )
    finally:
        bar.close()
    row = objective.cache[space.key(best)]
    search.update(
        n_particles=n_particles,
        iters=iters,
        pso_epochs=config["PSO_EPOCHS"],
        evaluations=len(objective.history),
        trained_settings=objective.n_evaluated,
        seconds=time.perf_counter() - t0,
        val_nse=row["val_nse"],
        cost=best_cost,
    )
    if not math.isfinite(best_cost):
        raise RuntimeError(f"every setting tried for basin {basin} diverged")
    plot_convergence(
        objective.history,
        run_dir / "pso_convergence.png",
        f"PSO convergence, basin {basin} {job.b.name}",
    )
    log.info(
        "PSO done in %.0f s: %d evaluations, %d settings trained; best validation NSE %.4f with %s",
        search["seconds"],
        search["evaluations"],
        search["trained_settings"],
        search["val_nse"],
        " ".join(f"{k}={v:g}" for k, v in best.items()),
    )
    return best, search


def plot_window(job: BasinJob, model: PSOLSTM, seq_len: int, window, run_dir: Path):
    """Predict, score, save and draw the ``--plot_prediction`` window; returns its metrics row."""
    setup, basin, b = job.setup, job.basin, job.b
    spec = replace(setup.spec, seq_len=seq_len)
    plot_windows = WindowData(
        setup.data, spec, setup.scalers, [basin], *window, need_target=False, device=setup.device
    )
    table, pred = _metrics_rows(setup, model, plot_windows, "plot", *window)
    series = series_by_basin(plot_windows, pred)[basin]
    lead1 = series["lead"] == 1
    series = {k: v[lead1] for k, v in series.items()}
    write_csv(
        run_dir / "prediction.csv",
        pd.DataFrame(
            {
                "date": series["date"].astype(str),
                "obs_mm_day": series["obs"],
                "sim_mm_day": series["sim"],
            }
        ),
    )
    m = table.iloc[0]
    train_lo, train_hi = period(job.config, "train")
    seen = int(((series["date"] >= train_lo) & (series["date"] <= train_hi)).sum())
    if seen:
        log.warning(
            "basin %s: %d of the %d plotted days lie in the training period %s..%s; their "
            "scores are in-sample",
            basin,
            seen,
            len(series["date"]),
            train_lo,
            train_hi,
        )
    plot_prediction(
        series,
        b,
        run_dir / "prediction.png",
        f"PSO-LSTM, basin {basin} {b.name}, {window[0]}..{window[1]}"
        f"{f' (IN-SAMPLE: {seen} days in the training period)' if seen else ''}"
        f"{' (lead 1 day)' if spec.pred_len > 1 else ''}\n"
        f"NSE {m['nse']:.3f}  KGE {m['kge']:.3f}  RMSE {m['rmse']:.3f} mm/day  "
        f"bias {m['bias_pct']:+.1f} %  persistence NSE {m['persistence_nse']:.3f}",
    )
    return table


def report_basin(job: BasinJob, model, result, best: dict, search: dict, metrics, space, run_dir):
    """Write metrics.csv and the checkpoint, and log the scores; returns the checkpoint path."""
    basin, config = job.basin, job.config
    mark_synthetic(metrics, job.setup.data.synthetic)
    write_csv(run_dir / "metrics.csv", metrics)
    records = {
        row["period"]: {k: _plain(v) for k, v in row.items()} for row in metrics.to_dict("records")
    }
    checkpoint = run_dir / f"best_model_basin_{basin}.pth"
    save_checkpoint(
        checkpoint,
        checkpoint_payload(
            model,
            config,
            replace(job.setup.spec, seq_len=int(best["time_steps"])),
            job.setup.scalers,
            job.setup.data,
            "pso_lstm",
            result.best_epoch,
            {**records, "best_val_nse": result.best_score},
            extra={
                "basin": basin,
                "best_params": best,
                "searched": list(space.names),
                "search": search,
                "history": result.history,
            },
        ),
    )
    for name, row in records.items():
        log.info(
            "%-10s basin %s  NSE %.3f  KGE %.3f  RMSE %.3f mm/day  bias %+.1f%%  "
            "persistence NSE %.3f",
            name,
            basin,
            row["nse"],
            row["kge"],
            row["rmse"],
            row["bias_pct"],
            row["persistence_nse"],
        )
    log.info("checkpoint %s", checkpoint)
    return checkpoint


def write_best_params(
    job: BasinJob, best: dict, search: dict, space: SearchSpace, run_dir: Path
) -> None:
    """``best_params.json``: the chosen setting, what was searched and how."""
    write_json(
        run_dir / "best_params.json",
        {
            "basin": job.basin,
            "gauge_name": job.b.name,
            "params": best,
            "searched": list(space.names),
            "fixed": space.fixed,
            "bounds": {d.name: [d.lo, d.hi] for d in space.dims},
            "inputs": job.config["PSO_INPUTS"],
            "search": search,
            "options": {k: job.config[f"PSO_{k.upper()}"] for k in ("c1", "c2", "w")},
            "seed": job.config["SEED"],
            "periods": job.periods,
        },
    )


def train_final(
    job: BasinJob,
    best: dict,
    run_dir: Path,
    window: tuple[np.datetime64, np.datetime64] | None,
) -> tuple:
    """The final model: the best setting, early stopping on validation, the test period scored
    once (and the ``--plot_prediction`` window). Returns ``(model, result, metrics)``."""
    job.config = apply_params(job.config, best)
    log.info(
        "final training: %d epochs at most, patience %d",
        job.config["N_EPOCHS"],
        job.config["PATIENCE"],
    )
    model, result = job.setup.train(best, job.config["N_EPOCHS"])
    write_csv(run_dir / "history.csv", pd.DataFrame(result.history))
    plot_training_curve(
        result.history,
        run_dir / "training_curve.png",
        f"PSO-LSTM basin {job.basin} {job.b.name}",
    )
    seq_len = int(best["time_steps"])
    tables = [
        _metrics_rows(job.setup, model, job.setup.windows(seq_len, name), name,
                      *period(job.config, name))[0]
        for name in ("validation", "test")
    ]  # fmt: skip
    if window is not None:
        tables.append(plot_window(job, model, seq_len, window, run_dir))
    return model, result, pd.concat(tables, ignore_index=True)


def run_basin(
    basin: str,
    config: dict,
    data: InputData,
    space: SearchSpace,
    device: torch.device,
    run_dir: Path,
    window: tuple[np.datetime64, np.datetime64] | None = None,
) -> dict:
    """Search, train and score the PSO-LSTM of one basin; write its outputs into ``run_dir``.

    Parameters
    ----------
    basin : str
    config : dict
        The resolved config of the call.
    data : InputData
        Holds ``basin``.
    space : SearchSpace
    device : torch.device
    run_dir : Path
        An empty run folder.
    window : (start, end), optional
        The ``--plot_prediction`` window.

    Returns
    -------
    dict
        ``run_dir``, ``checkpoint``, ``best_params``, ``searched``, ``search`` (budget and best
        validation score), ``metrics`` (DataFrame: one row per period), ``model``, ``periods``.
    """
    job = prepare_basin(basin, config, data, device)
    log.info(
        "basin %s (%s): inputs %s; training %s..%s, validation %s..%s, test %s..%s",
        basin,
        job.b.name,
        job.config["PSO_INPUTS"],
        *job.periods["train"],
        *job.periods["validation"],
        *job.periods["test"],
    )
    write_run_config(run_dir, job.config)
    log.info("PSO dimensions %s", space.describe())
    best, search = search_basin(job, space, run_dir)
    write_best_params(job, best, search, space, run_dir)
    model, result, metrics = train_final(job, best, run_dir, window)
    checkpoint = report_basin(job, model, result, best, search, metrics, space, run_dir)
    return {
        "run_dir": run_dir,
        "checkpoint": checkpoint,
        "best_params": best,
        "searched": list(space.names),
        "search": search,
        "metrics": metrics,
        "model": model,
        "periods": job.periods,
    }


def _plain(value):
    """NumPy scalars -> Python scalars (checkpoints hold plain types only)."""
    return value.item() if isinstance(value, np.generic) else value


def summary_row(basin: str, name: str, result: dict) -> dict:
    """One row of the call's summary CSV."""
    row: dict[str, Any] = {"basin": basin, "gauge_name": name, "run_dir": str(result["run_dir"])}
    row["searched"] = " ".join(result["searched"]) or "none"
    row.update(result["best_params"])
    row.update({f"search_{k}": v for k, v in result["search"].items()})
    for period_name, (start, end) in result["periods"].items():
        row[f"{period_name}_start"], row[f"{period_name}_end"] = start, end
    prefix = {"validation": "val", "test": "test", "plot": "plot"}
    for rec in result["metrics"].to_dict("records"):
        for col in METRIC_COLUMNS:
            row[f"{prefix[rec['period']]}_{col}"] = rec.get(col, float("nan"))
    row["checkpoint"] = str(result["checkpoint"])
    return row


# --------------------------------------------------------------------------- command line


def _number(text: str) -> int | float:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return float(text)


def bound_pair(text: str) -> tuple[int | float, int | float]:
    """argparse type for ``LO,HI``."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = (_number(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO,HI (e.g. 16,128)") from None
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        description=(
            "Tune a per-basin LSTM with particle swarm optimisation (pyswarms GlobalBestPSO), "
            "train it and score it (defaults from run.config, section pso_lstm). Searched "
            "dimensions: time_steps, hidden_size, batch_size (log scale), learning_rate (log "
            "scale), dropout, num_layers. A dimension given with its own flag is fixed and not "
            "searched; --no_pso fixes all six (flag or run.config value). The fitness is "
            "1 - NSE on the validation period."
        ),
        epilog=(
            "Bounds come from PSO_BOUNDS in run.config; --bounds_NAME LO,HI replaces those of one "
            "dimension (both ends reachable; integers rounded). Outputs per basin go to "
            "<output root>/pso_lstm/basin_<id>/<timestamp>/, the output root being OUTPUT_DIR or "
            "--output_dir, as for every stage; summary_<timestamp>.csv in <output root>/pso_lstm/ "
            "has a row per basin."
        ),
    )
    parser.add_argument(
        "--basin_id",
        type=csv_list,
        required=True,
        help="gauge id(s), comma-separated: each basin gets its own search and model",
    )
    hyper = parser.add_argument_group(
        "hyperparameters (each flag fixes its dimension and leaves it out of the search)"
    )
    hyper.add_argument("--time_steps", type=positive_int, help="days per input window (SEQ_LEN)")
    hyper.add_argument("--hidden_size", type=positive_int, help="LSTM units (LSTM_HIDDEN_DIM)")
    hyper.add_argument("--batch_size", type=positive_int, help="BATCH_SIZE and BATCH_SIZE_GPU")
    hyper.add_argument("--learning_rate", type=float, help="LR and LR_GPU")
    hyper.add_argument("--dropout", type=float, help="DROPOUT")
    hyper.add_argument("--num_layers", type=positive_int, help="LSTM layers (NUM_LAYERS)")
    pso = parser.add_argument_group("search")
    pso.add_argument("--no_pso", action="store_true", help="search nothing: fix all six dimensions")
    pso.add_argument("--n_particles", type=positive_int, help="PSO_N_PARTICLES")
    pso.add_argument("--iters", type=positive_int, help="PSO iterations (PSO_ITERS)")
    pso.add_argument("--pso_epochs", type=positive_int, help="epochs per evaluation (PSO_EPOCHS)")
    pso.add_argument("--c1", type=float, help="cognitive coefficient (PSO_C1)")
    pso.add_argument("--c2", type=float, help="social coefficient (PSO_C2)")
    pso.add_argument("--w", type=float, help="inertia weight (PSO_W)")
    for name in PSO_DIMENSIONS:
        pso.add_argument(
            f"--bounds_{name}",
            type=bound_pair,
            metavar="LO,HI",
            help=f"search bounds of {name} (PSO_BOUNDS.{name})",
        )
    pso.add_argument(
        "--inputs",
        choices=INPUTS,
        help="q: discharge history only; forcings+q: forcings and discharge history (default); "
        "forcings: forcings only (PSO_INPUTS)",
    )
    train = parser.add_argument_group("final model and outputs")
    train.add_argument(
        "--final_epochs", type=positive_int, help="epochs of the final model (N_EPOCHS)"
    )
    train.add_argument("--seed", type=int, help="SEED of the swarm and of every training run")
    train.add_argument(
        "--plot_prediction",
        action="store_true",
        help="plot observed and predicted discharge and score --start..--end",
    )
    train.add_argument("--start", type=iso_date, help="plot window start (default TEST_START)")
    train.add_argument("--end", type=iso_date, help="plot window end (default TEST_END)")
    train.add_argument("--no_cuda", action="store_true", help="run on the CPU")
    train.add_argument("--demo", action="store_true", help="use the synthetic demo dataset")
    add_common_args(parser)
    show_config_defaults(parser, "pso_lstm")
    return parser


def resolve_config(args: argparse.Namespace) -> tuple[dict, frozenset[str]]:
    """run.config -> [pso_lstm] -> --config -> --set -> flags; and the fixed dimensions.

    Raises
    ------
    UserError
        Bounds with the lower one above the upper one, bounds for a fixed dimension, a mode other
        than forecast, negative PSO coefficients.
    """
    flags: dict[str, Any] = {
        "N_EPOCHS": args.final_epochs,
        "SEED": args.seed,
        "PSO_N_PARTICLES": args.n_particles,
        "PSO_ITERS": args.iters,
        "PSO_EPOCHS": args.pso_epochs,
        "PSO_C1": args.c1,
        "PSO_C2": args.c2,
        "PSO_W": args.w,
        "PSO_INPUTS": args.inputs,
        "NUM_THREADS": args.threads,
        "OUTPUT_DIR": args.output_dir,
    }
    given = {n: getattr(args, n) for n in PSO_DIMENSIONS if getattr(args, n) is not None}
    for name, value in given.items():
        flags.update(dict.fromkeys(CONFIG_KEYS[name], value))
    cli_bounds = {
        n: getattr(args, f"bounds_{n}")
        for n in PSO_DIMENSIONS
        if getattr(args, f"bounds_{n}") is not None
    }
    for name, (lo, hi) in cli_bounds.items():
        if name in given or args.no_pso:
            raise UserError(
                f"--bounds_{name} and {'--no_pso' if args.no_pso else f'--{name}'} contradict "
                f"each other: a fixed dimension is not searched; drop one"
            )
        problem = pso_bounds_problem(name, lo, hi)
        if problem:
            raise UserError(f"--bounds_{name} {lo:g},{hi:g}: {problem}")
    if (args.start is not None or args.end is not None) and not args.plot_prediction:
        raise UserError("--start/--end set the window of --plot_prediction; add --plot_prediction")
    config = load_config(args.config, stage="pso_lstm", overrides=args.set, flags=flags)
    if cli_bounds:
        config["PSO_BOUNDS"] = {
            **config["PSO_BOUNDS"],
            **{n: [lo, hi] for n, (lo, hi) in cli_bounds.items()},
        }
        validate_config(config)
    if config["MODE"] != "forecast":
        raise UserError(f"pso_lstm.py predicts in forecast mode; MODE is {config['MODE']!r}")
    fixed = frozenset(PSO_DIMENSIONS) if args.no_pso else frozenset(given)
    return config, fixed


def _holds_model(run_dir: Path) -> bool:
    """A basin's folder is kept after a failure once its final model is saved."""
    return any(run_dir.glob("best_model_basin_*.pth"))


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point.

    Returns
    -------
    dict
        ``basins``: gauge id -> what :func:`run_basin` returns; ``summary``: the summary CSV.
    """
    args = build_parser().parse_args(argv)
    config, fixed = resolve_config(args)
    setup_logging()
    root = output_root(config) / "pso_lstm"
    ensure_writable(root, "the output folder")
    data_dir = resolve_data_dir(args.data_dir, config, demo=args.demo)
    device = resolve_device(args.device, args.no_cuda, config)
    seed_everything(config["SEED"])
    defaults = default_params(config, TrainSettings.from_config(config, device))
    space = build_search_space(config["PSO_BOUNDS"], defaults, fixed)
    basins = list(dict.fromkeys(args.basin_id))
    # Everything is checked before the first run folder exists: bad input runs no basin.
    data = load_input_data(config, data_dir, basins)
    window = None
    if args.plot_prediction:
        window = (
            args.start if args.start is not None else period(config, "test")[0],
            args.end if args.end is not None else period(config, "test")[1],
        )
        if window[1] < window[0]:
            raise UserError(f"--end {window[1]} is before --start {window[0]}")
    for basin in basins:
        basin_periods(config, data.basins[basin])
        if window is not None:
            check_plot_window(config, data.basins[basin], *window)
    warn_synthetic(data.synthetic)

    summary = unique_path(root, "summary_", ".csv", folder=False)
    results, rows = {}, []
    try:
        bar = progress(basins, desc="basins", unit="basin")
        for basin in bar:
            with RunFolder(root / f"basin_{basin}", "pso_lstm.log", keep=_holds_model) as folder:
                log_device(device)
                results[basin] = run_basin(basin, config, data, space, device, folder.path, window)
            rows.append(summary_row(basin, data.basins[basin].name, results[basin]))
            write_csv(summary, pd.DataFrame(rows))
            test = results[basin]["metrics"].set_index("period").loc["test"]
            bar.set_postfix(test_nse=f"{test['nse']:.3f}")
    finally:
        if not rows:
            summary.unlink(missing_ok=True)
    log.info("summary of %d basin(s): %s", len(rows), summary)
    return {"basins": results, "summary": summary}


if __name__ == "__main__":
    run_cli(main)
