"""Hyperparameter search with Optuna, shared by ``sca2lstm.py`` and ``fine_train.py``.

The stage scripts supply a training function; this module owns the rest: the search space
(``HYPEROPT_SPACE`` in run.config), the storage (a journal file in the study folder, or any URL
Optuna accepts, e.g. PostgreSQL for workers on several machines), the study and its budget,
TPE sampling and median pruning, and the results (``hyperopt_results.json``, ``trials.csv``
and plots in ``model_output/hyperopt/<study>/``).

Usage (from a stage script)::

    space = parse_space(config["HYPEROPT_SPACE"], config)
    settings = SearchSettings.from_config(config, default_name="pretrain")
    search = open_search(settings, space, stage="pretrain")  # checks, then opens the study
    study = run_search(search, train, base_config=config)  # train(config, params, report)
    results = write_results(search)
    best, params = best_config(study, space, config)

Optuna is imported inside the functions, so importing this module (and the stage scripts) stays
cheap.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils import (
    SCHEMA,
    UserError,
    coerce_value,
    log,
    output_root,
    progress,
    pyplot,
    save_figure,
    validate_config,
    write_csv,
    write_json,
)

__all__ = [
    "Dimension",
    "SearchSettings",
    "Search",
    "TrialOutcome",
    "parse_space",
    "apply_params",
    "mask_url",
    "open_search",
    "run_search",
    "best_config",
    "write_results",
    "write_window_comparison",
]

RESULTS_NAME = "hyperopt_results.json"
JOURNAL_NAME = "journal.log"
# Keys of the search itself, and keys that must stay as they are for the data to be read.
UNSEARCHABLE = {
    "ENABLE_HYPEROPT",
    "N_TRIALS",
    "OPTUNA_TIMEOUT",
    "OPTUNA_PRUNING",
    "OPTUNA_STUDY_NAME",
    "OPTUNA_STORAGE",
    "OPTUNA_HEARTBEAT_INTERVAL",
    "OPTUNA_TPE",
    "OPTUNA_MEDIAN_PRUNER",
    "HYPEROPT_SPACE",
    "DATA_DIR",
    "INPUT_DIR",
    "OUTPUT_DIR",
}
# A searched key also sets its GPU twin, as the --learning_rate and --batch_size flags do.
GPU_TWINS = {"LR": "LR_GPU", "BATCH_SIZE": "BATCH_SIZE_GPU"}
# Trial states that count towards the study's budget (a FAIL trial does not: the search goes on).
COUNTED = ("COMPLETE", "PRUNED", "RUNNING")


# --------------------------------------------------------------------------- command line


def add_search_args(parser: argparse.ArgumentParser) -> None:
    """The search flags that sca2lstm.py and fine_train.py share."""
    group = parser.add_argument_group("hyperparameter search (Optuna)")
    group.add_argument(
        "--enable_hyperopt",
        action="store_true",
        help="ENABLE_HYPEROPT: search HYPEROPT_SPACE on the validation data, then train the best",
    )
    group.add_argument("--n_trials", type=int, metavar="N", help="N_TRIALS: the study's budget")
    group.add_argument(
        "--optuna_timeout",
        type=float,
        metavar="SECONDS",
        help="OPTUNA_TIMEOUT: this worker starts no new trial after this many seconds",
    )
    group.add_argument(
        "--no_pruning", action="store_true", help="OPTUNA_PRUNING off: every trial runs to the end"
    )
    group.add_argument(
        "--study_name", metavar="NAME", help="OPTUNA_STUDY_NAME: the same name continues a study"
    )
    group.add_argument(
        "--storage",
        metavar="URL",
        help="OPTUNA_STORAGE: a database URL shared by workers on several machines "
        "(default: a journal file in the study folder)",
    )
    group.add_argument(
        "--search_only",
        action="store_true",
        help="run trials only; leave the final model to another command (extra workers)",
    )


def search_flags(args: argparse.Namespace) -> dict:
    """Config keys of the search flags (None where a flag was not given)."""
    return {
        "ENABLE_HYPEROPT": True if args.enable_hyperopt else None,
        "N_TRIALS": args.n_trials,
        "OPTUNA_TIMEOUT": args.optuna_timeout,
        "OPTUNA_PRUNING": False if args.no_pruning else None,
        "OPTUNA_STUDY_NAME": args.study_name,
        "OPTUNA_STORAGE": args.storage,
    }


# --------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class Dimension:
    """One searched key: a list of choices, or a range ``[low, high]`` (log scale if ``log``)."""

    key: str
    choices: tuple | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    integer: bool = False

    def to_dict(self) -> dict:
        """Plain form, stored with the study so that a changed space is noticed."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "integer": self.integer}

    def values_to_check(self) -> list:
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def suggest(self, trial) -> Any:
        """Draw this key's value for an ``optuna.Trial``."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)


def _parse_entry(key: str, entry: dict, kind: type | tuple) -> Dimension:
    where = f"HYPEROPT_SPACE.{key}"
    if "choices" in entry:
        if set(entry) != {"choices"}:
            raise UserError(f"{where}: give either choices or low/high, not both")
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}.choices must be a non-empty list, got {choices!r}")
        values = tuple(coerce_value(key, v, where) for v in choices)
        if any(isinstance(v, (list, dict)) for v in values):
            raise UserError(f"{where}: list or table values cannot be searched")
        if len(set(values)) != len(values):
            raise UserError(f"{where}.choices holds a value twice: {choices!r}")
        return Dimension(key, choices=values)
    unknown = set(entry) - {"low", "high", "log"}
    if unknown or not {"low", "high"} <= set(entry):
        raise UserError(
            f"{where} must be {{choices: [...]}} or {{low: L, high: H, log: true|false}}; "
            f"got {entry!r}"
        )
    types = kind if isinstance(kind, tuple) else (kind,)
    if not (int in types or float in types):
        raise UserError(f"{where}: a range needs a numeric key; give choices for this key instead")
    low, high = (coerce_value(key, entry[k], where) for k in ("low", "high"))
    if low is None or high is None:
        raise UserError(f"{where}: low and high must be numbers, got {entry!r}")
    log_ = entry.get("log", False)
    if not isinstance(log_, bool):
        raise UserError(f"{where}.log must be true or false, got {log_!r}")
    if not low < high:
        raise UserError(f"{where}: the range {low}..{high} is empty; low must be below high")
    if log_ and low <= 0:
        raise UserError(f"{where}: a log-scale range needs low > 0, got {low}")
    return Dimension(key, low=low, high=high, log=log_, integer=int in types)


def parse_space(
    table: dict, config: dict, extra: dict[str, Callable[[Any], str | None]] | None = None
) -> dict[str, Dimension]:
    """Read and check a ``HYPEROPT_SPACE`` table, before any training.

    Parameters
    ----------
    table : dict
        Key -> ``{choices: [...]}`` or ``{low: L, high: H, log: bool}``.
    config : dict
        The resolved config: every candidate value is laid over it and validated.
    extra : dict, optional
        Stage-specific keys that are not run.config keys (fine-tuning's ``UNFREEZE``): key ->
        a check returning an error text for a bad choice, or None. Extra keys take choices.

    Returns
    -------
    dict
        Key -> Dimension, in the table's order.

    Raises
    ------
    UserError
        An unknown or unsearchable key, an empty range, a type mismatch, or a candidate value
        that makes the config invalid.
    """
    extra = extra or {}
    if not table:
        raise UserError("HYPEROPT_SPACE is empty; name at least one key to search in run.config")
    space = {}
    for key, entry in table.items():
        if not isinstance(entry, dict):
            raise UserError(f"HYPEROPT_SPACE.{key} must be a table, got {entry!r}")
        if key in extra:
            choices = entry.get("choices")
            if set(entry) != {"choices"} or not isinstance(choices, list) or not choices:
                raise UserError(f"HYPEROPT_SPACE.{key} takes {{choices: [...]}}, got {entry!r}")
            for choice in choices:
                problem = extra[key](choice)
                if problem:
                    raise UserError(f"HYPEROPT_SPACE.{key}: {problem}")
            space[key] = Dimension(key, choices=tuple(str(c) for c in choices))
            continue
        if key in UNSEARCHABLE:
            raise UserError(f"HYPEROPT_SPACE.{key}: this key is not searchable")
        if key not in SCHEMA:
            hint = f" or {', '.join(extra)}" if extra else ""
            raise UserError(
                f"HYPEROPT_SPACE names the unknown key {key!r}; use run.config keys{hint}"
            )
        space[key] = _parse_entry(key, entry, SCHEMA[key])
    for dim in space.values():
        if dim.key in extra:
            continue
        for value in dim.values_to_check():
            try:
                apply_params(config, {dim.key: value})
            except UserError as err:
                raise UserError(f"HYPEROPT_SPACE.{dim.key}={value!r} is not valid: {err}") from None
    return space


def apply_params(config: dict, params: dict) -> dict:
    """A copy of ``config`` with the trial's ``params`` (run.config keys only) laid over it.

    Raises
    ------
    UserError
        The combination is not a valid config (e.g. PREDICT_LAST_N above SEQ_LEN).
    """
    out = dict(config)
    for key, value in params.items():
        if key not in SCHEMA:
            continue
        out[key] = value
        if key in GPU_TWINS:
            out[GPU_TWINS[key]] = value
    validate_config(out)
    return out


def space_doc(space: dict[str, Dimension]) -> dict:
    return {key: dim.to_dict() for key, dim in space.items()}


# --------------------------------------------------------------------------- settings, storage


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (SQLAlchemy's own rendering)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Not parseable: keep only the scheme, since the rest may hold a password.
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        return f"{scheme}://(malformed)"


@dataclass
class SearchSettings:
    """What a search needs besides the space: study, storage, budget, sampler and pruner."""

    study_name: str
    study_dir: Path
    storage_url: str | None
    n_trials: int
    timeout: float | None
    pruning: bool
    seed: int
    tpe: dict
    pruner: dict
    heartbeat_interval: int
    grid: dict | None = None  # key -> values: a GridSampler over them instead of TPE

    @classmethod
    def from_config(cls, config: dict, default_name: str, grid: dict | None = None):
        name = config["OPTUNA_STUDY_NAME"] or default_name
        return cls(
            study_name=name,
            study_dir=output_root(config) / "hyperopt" / name,
            storage_url=config["OPTUNA_STORAGE"],
            n_trials=len(next(iter(grid.values()))) if grid else config["N_TRIALS"],
            timeout=config["OPTUNA_TIMEOUT"],
            pruning=config["OPTUNA_PRUNING"] and grid is None,
            seed=config["SEED"],
            tpe=dict(config["OPTUNA_TPE"]),
            pruner=dict(config["OPTUNA_MEDIAN_PRUNER"]),
            heartbeat_interval=config["OPTUNA_HEARTBEAT_INTERVAL"],
            grid=grid,
        )

    def storage_label(self) -> str:
        if self.storage_url is None:
            return f"journal file {self.study_dir / JOURNAL_NAME}"
        return mask_url(self.storage_url)

    def sampler_doc(self) -> dict:
        if self.grid is not None:
            return {"class": "GridSampler", "search_space": self.grid, "seed": self.seed}
        return {"class": "TPESampler", "seed": self.seed, **self.tpe}

    def pruner_doc(self) -> dict:
        if not self.pruning:
            return {"class": "NopPruner"}
        return {"class": "MedianPruner", **self.pruner}


def _stale_trial(study, trial) -> None:
    log.warning(
        "trial %d lost its worker (no heartbeat in study %s): marked FAIL; the search goes on",
        trial.number,
        study.study_name,
    )


def _open_url_storage(settings: SearchSettings):
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = settings.storage_url
    shown = mask_url(url)
    try:
        make_url(url)
    except (ArgumentError, ValueError):
        raise UserError(
            f"--storage {shown} is not a database URL; write e.g. "
            "postgresql+psycopg2://user@host:5432/db, or leave it out for the journal file"
        ) from None
    try:
        return _rdb_storage(url, settings)
    except Exception as err:  # noqa: BLE001 - drivers raise their own classes
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        password = make_url(url).password
        if password:
            reason = reason.replace(str(password), "***")
        raise UserError(
            f"cannot open the study storage {shown} ({type(err).__name__}: {reason[:200]}); "
            "check that the server runs and the URL, user and database are right"
        ) from None


def _rdb_storage(url: str, settings: SearchSettings, attempts: int = 5):
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                # The heartbeat is experimental in Optuna 5; it fails a killed worker's trial.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=settings.heartbeat_interval,
                    grace_period=2 * settings.heartbeat_interval,
                    heartbeat_stale_trial_callback=_stale_trial,
                    engine_kwargs={"pool_pre_ping": True},
                )
        except (IntegrityError, ProgrammingError):
            # Workers that start together on an empty database race to create Optuna's
            # tables; the loser finds them there on the next attempt.
            if attempt == attempts:
                raise
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def _open_journal(settings: SearchSettings):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = settings.study_dir / JOURNAL_NAME
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _make_sampler(settings: SearchSettings):
    import optuna

    if settings.grid is not None:
        return optuna.samplers.GridSampler(settings.grid, seed=settings.seed)
    with warnings.catch_warnings():
        # multivariate/group/constant_liar are experimental in Optuna 5; we set them on purpose.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=settings.seed, **settings.tpe)


def _make_pruner(settings: SearchSettings):
    import optuna

    if not settings.pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(**settings.pruner)


@dataclass
class Search:
    """An opened study with what the search loop needs."""

    settings: SearchSettings
    space: dict[str, Dimension]
    study: Any
    storage: Any
    created_dir: bool = False
    info: dict = field(default_factory=dict)


def open_search(settings: SearchSettings, space: dict[str, Dimension], stage: str) -> Search:
    """Open (or create) the study; the study folder is made only once everything is checked.

    Raises
    ------
    UserError
        Unreachable or malformed storage URL (named without its password), or a study of that
        name whose stored search space or stage differs from this one.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _open_url_storage(settings) if settings.storage_url else None
    # mkdir is atomic: of two workers starting at once, only the one that made the folder may
    # remove it when its own start fails (never the folder the other one is using).
    try:
        settings.study_dir.mkdir(parents=True)
        created = True
    except FileExistsError:
        created = False
    try:
        if storage is None:
            storage = _open_journal(settings)
        sampler, pruner = _make_sampler(settings), _make_pruner(settings)
        try:
            # Loading first writes nothing, so a refused study is left exactly as it was.
            study = optuna.load_study(
                study_name=settings.study_name, storage=storage, sampler=sampler, pruner=pruner
            )
        except KeyError:
            study = optuna.create_study(
                study_name=settings.study_name,
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                direction="maximize",
                load_if_exists=True,  # another worker may create it at the same moment
            )
        _check_stored_space(study, space, stage, settings)
    except BaseException:
        if created:
            shutil.rmtree(settings.study_dir, ignore_errors=True)
        raise
    return Search(settings, space, study, storage, created)


def _check_stored_space(study, space: dict[str, Dimension], stage: str, settings) -> None:
    doc = json.loads(json.dumps(space_doc(space)))  # as the storage gives it back
    stored = study.user_attrs.get("search_space")
    if stored is None:
        # The stage first: a worker that reads the search space then reads the stage too.
        study.set_user_attr("stage", stage)
        study.set_user_attr("search_space", doc)
        return
    if stored != doc or study.user_attrs.get("stage") != stage:
        raise UserError(
            f"study {settings.study_name!r} in {settings.storage_label()} was started with "
            f"another search space or stage ({study.user_attrs.get('stage')}: {stored}); "
            "give a new --study_name or restore that HYPEROPT_SPACE"
        )


# --------------------------------------------------------------------------- the search loop


@dataclass
class TrialOutcome:
    """What a stage's training function returns for one trial."""

    score: float  # best validation median NSE over the epochs
    epochs: int
    per_basin: dict[str, float] = field(default_factory=dict)


class _Surplus(Exception):
    """This worker's new trial would exceed the study's budget (other workers filled it)."""


class _Invalid(Exception):
    """The trial's values together make an invalid config (each was valid on its own)."""


def _count(study, before: int | None = None) -> int:
    from optuna.trial import TrialState

    states = tuple(TrialState[name] for name in COUNTED)
    trials = study.get_trials(deepcopy=False, states=states)
    return sum(1 for t in trials if before is None or t.number < before)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_lost_trials(search: Search) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone.

    A URL storage does this by heartbeat (``optuna.storages.fail_stale_trials``). The journal
    file has no heartbeat, but all its workers run on one machine: a trial whose worker process
    on this host no longer exists is failed.
    """
    import optuna
    from optuna.trial import TrialState

    if search.settings.storage_url:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(search.study)
        return []
    failed, host = [], socket.gethostname()
    for trial in search.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") == host and not _pid_alive(int(worker.get("pid", -1))):
            trial_id = search.storage.get_trial_id_from_study_id_trial_number(
                search.storage.get_study_id_from_name(search.study.study_name), trial.number
            )
            try:
                search.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            log.warning(
                "trial %d lost its worker (process %s ended): marked FAIL; the search goes on",
                trial.number,
                worker.get("pid"),
            )
            failed.append(trial.number)
    return failed


def _objective(search: Search, train: Callable, base_config: dict, budget: int):
    import optuna

    def objective(trial) -> float:
        if _count(search.study, before=trial.number) >= budget:
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"trial {trial.number}: the budget of {budget} trials is spent")
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        params = {key: dim.suggest(trial) for key, dim in search.space.items()}
        try:
            config = apply_params(base_config, params)
        except UserError as err:
            log.warning("trial %d: %s together are not valid (%s)", trial.number, params, err)
            raise _Invalid(str(err)) from None
        trial.set_user_attr("max_epochs", config["N_EPOCHS"])
        t0 = time.perf_counter()

        def report(epoch: int, value: float) -> None:
            trial.set_user_attr("epochs_run", epoch)
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            if not math.isfinite(value):
                return
            trial.report(value, epoch)
            if search.settings.pruning and trial.should_prune():
                raise optuna.TrialPruned(f"validation NSE {value:.4f} at epoch {epoch}")

        outcome = train(config, params, report)
        trial.set_user_attr("epochs_run", outcome.epochs)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        trial.set_user_attr("val_nse_per_basin", outcome.per_basin)
        if not math.isfinite(outcome.score):
            raise RuntimeError(f"trial {trial.number}: the validation NSE is {outcome.score}")
        return float(outcome.score)

    return objective


def _trial_line(study, trial) -> None:
    best = ""
    try:
        best = f"; best {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        pass
    value = f"{trial.value:.4f}" if trial.value is not None else "-"
    last = max(trial.intermediate_values.items(), default=None)
    if trial.state.name == "PRUNED" and last:
        value = f"pruned at epoch {last[0]} ({last[1]:.4f})"
    log.info(
        "trial %d %s: validation NSE %s, %s epoch(s), %.1f s, %s%s",
        trial.number,
        trial.state.name,
        value,
        trial.user_attrs.get("epochs_run", 0),
        trial.user_attrs.get("seconds", 0.0),
        trial.params,
        best,
    )


def run_search(
    search: Search,
    train: Callable[[dict, dict, Callable[[int, float], None]], TrialOutcome],
    base_config: dict,
):
    """Run trials until the study holds its budget of trials (all workers together).

    Parameters
    ----------
    search : Search
        From :func:`open_search`.
    train : callable
        ``train(config, params, report) -> TrialOutcome``: trains with the trial's ``config``
        (``params`` are the searched values, also non-config keys such as UNFREEZE) and calls
        ``report(epoch, validation_median_nse)`` after every epoch; ``report`` raises
        ``optuna.TrialPruned`` to stop a poor trial. It must score the validation data only.
    base_config : dict
        The resolved config the trials' values are laid over.

    Returns
    -------
    optuna.Study
    """
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    settings, study = search.settings, search.study
    fail_lost_trials(search)
    budget = settings.n_trials
    done = _count(study)
    remaining = max(0, budget - done)
    log.info(
        "study %s (%s): %d of %d trials there, %d to run; sampler %s; pruner %s; timeout %s",
        settings.study_name,
        settings.storage_label(),
        done,
        budget,
        remaining,
        settings.sampler_doc(),
        settings.pruner_doc(),
        f"{settings.timeout:g} s" if settings.timeout else "none",
    )
    if remaining == 0:
        return study
    bar = progress(total=remaining, desc="trials", unit="trial")

    def on_trial(study_, trial) -> None:
        if trial.user_attrs.get("surplus"):
            log.info("trial %d not run: the study's budget is spent", trial.number)
            return
        _trial_line(study_, trial)
        bar.update(1)
        try:
            bar.set_postfix(best=f"{study_.best_value:.4f}")
        except ValueError:
            pass  # no trial has completed yet

    counted = tuple(TrialState[name] for name in COUNTED)
    deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
    try:
        # A failed trial does not count towards the budget: run again for the trials it left,
        # at most `budget` rounds (a space where every trial fails still ends).
        for _ in range(budget):
            left = None if deadline is None else deadline - time.monotonic()
            failed = _n_failed(study)
            study.optimize(
                _objective(search, train, base_config, budget),
                n_trials=remaining,
                timeout=left,
                callbacks=[MaxTrialsCallback(budget, states=counted), on_trial],
                catch=(_Surplus, _Invalid, RuntimeError),
                gc_after_trial=True,
            )
            remaining = budget - _count(study)
            timed_out = deadline is not None and time.monotonic() >= deadline
            if remaining <= 0 or timed_out or _n_failed(study) == failed:
                break
    finally:
        bar.close()
    return study


def _n_failed(study) -> int:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return sum(1 for t in trials if not t.user_attrs.get("surplus"))


def best_config(study, space: dict[str, Dimension], base_config: dict) -> tuple[dict, dict]:
    """The config of the study's best trial and its params.

    Raises
    ------
    UserError
        No trial of the study has completed.
    """
    try:
        best = study.best_trial
    except ValueError:
        raise UserError(
            f"study {study.study_name!r} has no completed trial, so there are no best settings; "
            "run more trials (--n_trials) or a longer --optuna_timeout"
        ) from None
    params = {key: best.params[key] for key in space if key in best.params}
    return apply_params(base_config, params), params


# --------------------------------------------------------------------------- results


def _trial_doc(trial) -> dict:
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": trial.params,
        "value": trial.value,
        "epochs_run": trial.user_attrs.get("epochs_run", 0),
        "max_epochs": trial.user_attrs.get("max_epochs"),
        "seconds": trial.user_attrs.get("seconds"),
        "intermediate_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "val_nse_per_basin": trial.user_attrs.get("val_nse_per_basin", {}),
    }


def results_doc(search: Search) -> dict:
    """Everything ``hyperopt_results.json`` holds."""
    settings, study = search.settings, search.study
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    docs = [_trial_doc(t) for t in trials]
    finished = [d for d in docs if d["state"] in ("COMPLETE", "PRUNED")]
    saved = sum(
        (d["max_epochs"] or 0) - d["epochs_run"] for d in finished if d["state"] == "PRUNED"
    )
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value) if complete else None
    return {
        "study_name": settings.study_name,
        "stage": study.user_attrs.get("stage"),
        "storage": settings.storage_label(),
        "direction": "maximize",
        "objective": "best validation median NSE (validation basins and period only)",
        "best_params": best.params if best else None,
        "best_score": best.value if best else None,
        "best_trial": best.number if best else None,
        "n_trials": len(finished),
        "budget": settings.n_trials,
        "n_complete": len(complete),
        "n_pruned": sum(d["state"] == "PRUNED" for d in docs),
        "n_failed": sum(d["state"] == "FAIL" for d in docs),
        "epochs_run": sum(d["epochs_run"] for d in finished),
        "epochs_saved_by_pruning": saved,
        "sampler": settings.sampler_doc(),
        "pruner": settings.pruner_doc(),
        "search_space": space_doc(search.space),
        "optuna_version": _optuna_version(),
        "trials": docs,
    }


def _optuna_version() -> str:
    import optuna

    return optuna.__version__


def write_results(search: Search) -> dict:
    """Write ``hyperopt_results.json``, ``trials.csv`` and the plots; returns the results."""
    import pandas as pd

    out = search.settings.study_dir
    doc = results_doc(search)
    write_json(out / RESULTS_NAME, doc)
    rows = [
        {
            "number": d["number"],
            "state": d["state"],
            "value": d["value"],
            "epochs_run": d["epochs_run"],
            "seconds": d["seconds"],
            **{f"param_{k}": v for k, v in d["params"].items()},
        }
        for d in doc["trials"]
    ]
    write_csv(out / "trials.csv", pd.DataFrame(rows))
    _plot_study(search, out)
    log.info(
        "study %s: %d trials (%d complete, %d pruned, %d failed), best validation NSE %s with "
        "%s; %d epochs saved by pruning; results in %s",
        doc["study_name"],
        doc["n_trials"],
        doc["n_complete"],
        doc["n_pruned"],
        doc["n_failed"],
        f"{doc['best_score']:.4f}" if doc["best_score"] is not None else "-",
        doc["best_params"],
        doc["epochs_saved_by_pruning"],
        out,
    )
    return doc


def _plot_study(search: Search, out: Path) -> None:
    """Optimisation history, parameter importances and a slice plot (optuna's matplotlib
    backend; plotly is not needed). A plot that the trials cannot support yet is skipped."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as vis

    pyplot()
    study = search.study
    plots = {
        "optimization_history.png": lambda: vis.plot_optimization_history(study),
        "param_importances.png": lambda: vis.plot_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator()
        ),
        "slice.png": lambda: vis.plot_slice(study),
    }
    for name, make in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = make()
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                log.info("%s skipped: %s", name, err)
                continue
        ax = np.ravel(axes)[0] if isinstance(axes, np.ndarray) else axes
        fig = ax.figure
        fig.suptitle(f"study {study.study_name}: validation median NSE")
        save_figure(fig, out / name)


def write_window_comparison(search: Search) -> Any:
    """``window_comparison.csv`` and ``window_size_comparison.png`` of a SEQ_LEN grid study."""
    import pandas as pd

    rows = []
    for trial in search.study.get_trials(deepcopy=False):
        if trial.state.name != "COMPLETE" or "SEQ_LEN" not in trial.params:
            continue
        per_basin = trial.user_attrs.get("val_nse_per_basin", {})
        rows.append(
            {
                "window_days": trial.params["SEQ_LEN"],
                "val_median_nse": trial.value,
                **{f"nse_{b}": v for b, v in sorted(per_basin.items())},
                "epochs": trial.user_attrs.get("epochs_run"),
                "seconds": trial.user_attrs.get("seconds"),
                "trial": trial.number,
            }
        )
    if not rows:
        raise UserError("no window size finished, so there is nothing to compare")
    table = pd.DataFrame(rows).sort_values("window_days").reset_index(drop=True)
    out = search.settings.study_dir
    write_csv(out / "window_comparison.csv", table)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for column in [c for c in table if c.startswith("nse_")]:
        ax.plot(table["window_days"], table[column], color="0.7", lw=0.8, marker=".")
    ax.plot(table["window_days"], table["val_median_nse"], color="C0", lw=2, marker="o",
            label="median over validation basins")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(table["window_days"], [str(w) for w in table["window_days"]])
    ax.set_xlabel("input window SEQ_LEN (days)")
    ax.set_ylabel("best validation NSE (-)")
    ax.set_title("Window-size comparison (grey: single validation basins)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out / "window_size_comparison.png")
    log.info("window comparison:\n%s", table.to_string(index=False, float_format="%.4f"))
    return table
