"""SCA2LSTM: static-conditioned channel attention between two LSTM stages, and its multi-basin
pretraining on CAMELS-GB.

Usage::

    python sca2lstm.py --demo --epochs 2                  # synthetic data, a quick check
    python sca2lstm.py --epochs 60 --data_dir /data/CAMELS_GB
    python sca2lstm.py --mode simulate --seq_len 365 --set PREDICT_LAST_N=30
    python sca2lstm.py --config configs/zero_shot.yaml --seeds 1,2,3   # an ensemble of 3

In a notebook::

    from sca2lstm import SCA2LSTM, load_config
    model = SCA2LSTM(load_config())            # or SCA2LSTM.from_checkpoint(path)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn
from torch.utils.checkpoint import checkpoint

from hydrologyDataset import (
    HINDCAST_NOTE,
    CheckpointLoadable,
    FeatureSpec,
    InputData,
    Scalers,
    WindowData,
    load_input_data,
    load_model,
    resolve_data_dir,
)
from hyperopt import (
    SearchSettings,
    TrialOutcome,
    add_search_args,
    best_config,
    open_search,
    parse_space,
    run_search,
    search_flags,
    write_results,
    write_window_comparison,
)
from utils import (
    ENSEMBLE_MANIFEST,
    HelpFormatter,
    LogFile,
    RunFolder,
    TrainSettings,
    UserError,
    add_common_args,
    all_basins,
    basin_metrics_table,
    check_ensemble_members,
    checkpoint_payload,
    csv_list,
    distributed_rank,
    ensemble_prediction,
    ensure_writable,
    eval_batch_size,
    explicit_keys,
    fit,
    init_distributed,
    lead_metrics_table,
    load_checkpoint,
    load_config,
    log,
    log_device,
    mark_synthetic,
    members_vs_ensemble,
    nse,
    output_root,
    parse_horizon_weights,
    parse_seeds,
    period,
    plot_channel_weights,
    plot_training_curve,
    positive_int,
    predict_windows,
    read_ensemble_manifest,
    resolve_device,
    run_cli,
    save_checkpoint,
    seed_everything,
    series_by_basin,
    setup_logging,
    show_config_defaults,
    synthetic_tag,
    warn_synthetic,
    window_device,
    write_csv,
    write_ensemble_manifest,
    write_json,
    write_run_config,
)

__all__ = [
    "SCA2LSTM",
    "ModelArgs",
    "SCA2LSTMArgs",
    "activation_memory_estimate",
    "load_config",
    "pretrain",
    "train_ensemble",
    "main",
]


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class SCA2LSTMArgs:
    """Hyperparameters of :class:`SCA2LSTM` (saved in every checkpoint).

    Attributes
    ----------
    n_dynamic : int
        Input channels C (forcings, plus lagged discharge and its missing flag in forecast mode).
    n_static : int
        Static attributes S.
    hidden : int
        LSTM_HIDDEN_DIM.
    num_layers : int
        NUM_LAYERS of each LSTM stage.
    dropout : float
        DROPOUT between LSTM layers and before the head.
    embedding_dim : int
        EMBEDDING_DIM of the static embedding.
    pred_len : int
        PRED_LEN outputs per prediction step.
    mode : str
        ``forecast`` (predict the change from the last observed discharge) or ``simulate``.
    q_channel, q_flag_channel : int
        Channels of the lagged discharge and of its missing flag (-1 in simulate mode).
    future_len : int
        Lead days at the end of each window (PRED_LEN with FUTURE_INPUTS, else 0: windows end
        on day t, as in checkpoints from before the key).
    future_unknown : tuple of int
        Forcing channels not known over the lead days; hidden there like discharge.
    """

    n_dynamic: int
    n_static: int
    hidden: int = 64
    num_layers: int = 2
    dropout: float = 0.3
    embedding_dim: int = 128
    pred_len: int = 1
    mode: str = "forecast"
    q_channel: int = -1
    q_flag_channel: int = -1
    future_len: int = 0
    future_unknown: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, config: dict, spec: FeatureSpec | None = None) -> SCA2LSTMArgs:
        spec = spec or FeatureSpec.from_config(config)
        channels = spec.channels
        forecast = spec.mode == "forecast"
        return cls(
            n_dynamic=len(channels),
            n_static=len(spec.static_attributes),
            hidden=config["LSTM_HIDDEN_DIM"],
            num_layers=config["NUM_LAYERS"],
            dropout=config["DROPOUT"],
            embedding_dim=config["EMBEDDING_DIM"],
            pred_len=spec.pred_len if forecast else 1,
            mode=spec.mode,
            q_channel=len(channels) - 2 if forecast else -1,
            q_flag_channel=len(channels) - 1 if forecast else -1,
            future_len=spec.future_len,
            future_unknown=tuple(
                i
                for i, c in enumerate(spec.forcings)
                if spec.future_len and c not in spec.future_inputs
            ),
        )


# The name before the PSO baseline's arguments became PSOLSTMArgs; notebooks may use it.
ModelArgs = SCA2LSTMArgs


class SCA2LSTM(CheckpointLoadable, nn.Module):
    """Static-conditioned channel attention + two LSTM stages.

    Submodules carry the names of the freeze groups of ``fine_train.py``: ``embedding`` (MLP on
    the scaled static attributes), ``lstm1`` (context stage over inputs and embedding),
    ``weight_head`` (one weight per input channel and time step), ``lstm2`` (over the weighted
    inputs, lstm1's states and the embedding) and ``head``.

    Parameters
    ----------
    config : dict or SCA2LSTMArgs
        A config from :func:`load_config` (the model is sized from its keys) or SCA2LSTMArgs.

    Attributes
    ----------
    gradient_checkpointing : bool
        Recompute each LSTM stage in the backward pass instead of keeping its activations
        (training only; the same outputs and gradients). :func:`utils.fit` sets it from
        GRADIENT_CHECKPOINTING. Not part of the architecture, so not in SCA2LSTMArgs.
    """

    args_class = SCA2LSTMArgs

    def __init__(self, config: dict | SCA2LSTMArgs) -> None:
        super().__init__()
        args = config if isinstance(config, SCA2LSTMArgs) else SCA2LSTMArgs.from_config(config)
        self.args = args
        self.gradient_checkpointing = False
        C, S, E, H = args.n_dynamic, args.n_static, args.embedding_dim, args.hidden
        inner_dropout = args.dropout if args.num_layers > 1 else 0.0
        with warnings.catch_warnings():
            # STATIC_ATTRIBUTES []: the first layer has no weights (its output is its bias), so
            # the embedding is one learned vector shared by every basin; torch warns that it
            # cannot initialise a zero-element weight.
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.embedding = nn.Sequential(
                nn.Linear(S, E), nn.ReLU(), nn.Dropout(args.dropout), nn.Linear(E, E), nn.Tanh()
            )
        self.lstm1 = nn.LSTM(C + E, H, args.num_layers, batch_first=True, dropout=inner_dropout)
        self.weight_head = nn.Linear(H + E, C)
        self.lstm2 = nn.LSTM(C + H + E, H, args.num_layers, batch_first=True, dropout=inner_dropout)
        self.head = nn.Sequential(nn.Dropout(args.dropout), nn.Linear(H, args.pred_len))
        # Zero logits: every channel weight starts at exactly 1.
        nn.init.zeros_(self.weight_head.weight)
        nn.init.zeros_(self.weight_head.bias)
        if args.mode == "forecast":
            # The head predicts the change from the last observation: untrained = persistence.
            nn.init.zeros_(self.head[1].weight)
            nn.init.zeros_(self.head[1].bias)

    def checkpoint_problems(self, spec: FeatureSpec) -> list[str]:
        """What in this model's arguments does not fit the checkpoint's features."""
        args, problems = self.args, []
        if args.n_dynamic != len(spec.channels):
            problems.append(f"{args.n_dynamic} input channels vs {len(spec.channels)} channels")
        if args.n_static != len(spec.static_attributes):
            problems.append(
                f"{args.n_static} static inputs vs {len(spec.static_attributes)} attributes"
            )
        if args.mode != spec.mode:
            problems.append(f"model mode {args.mode} vs feature mode {spec.mode}")
        if args.future_len != spec.future_len:
            problems.append(
                f"{args.future_len} lead days in the model vs {spec.future_len} in features"
            )
        return problems

    def channel_valid(self, x: torch.Tensor) -> torch.Tensor | None:
        """``[B, L, C]`` bool: False for the lagged-discharge channel on unobserved days (and
        for the unknown forcings on the lead days)."""
        if self.args.q_flag_channel < 0:
            return None
        valid = torch.ones_like(x, dtype=torch.bool)
        valid[..., self.args.q_channel] = x[..., self.args.q_flag_channel] < 0.5
        F = self.args.future_len
        if F and self.args.future_unknown:
            valid[:, -F:, list(self.args.future_unknown)] = False
        return valid

    def hide_future(self, x: torch.Tensor) -> torch.Tensor:
        """The window with what is unknown after day t replaced (future inputs only).

        On the ``future_len`` lead days the lagged discharge becomes 0 and its missing flag 1
        (unobserved, so the weight head masks it), and the forcings not in FUTURE_INPUTS
        become 0 (masked too). Whatever the caller passes there, no discharge observed after
        day t reaches the model.
        """
        F = self.args.future_len
        if not F:
            return x
        x = x.clone()  # [B, L + F, C]
        x[:, -F:, self.args.q_channel] = 0.0
        x[:, -F:, self.args.q_flag_channel] = 1.0
        if self.args.future_unknown:
            x[:, -F:, list(self.args.future_unknown)] = 0.0
        return x

    def _stage(self, lstm: nn.LSTM, inp: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[B, L, H]`` of one LSTM stage, checkpointed when asked for."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(_lstm_hidden, lstm, inp, use_reentrant=False)
        return lstm(inp)[0]

    def forward(
        self,
        x: torch.Tensor,
        static: torch.Tensor,
        return_weights: bool = False,
        n_last: int = 1,
    ):
        """Predict discharge (scaled units).

        Parameters
        ----------
        x : torch.Tensor
            ``[B, L, C]`` scaled inputs, days t-L+1..t; with future inputs ``[B, L + P, C]``,
            days t-L+1..t+P (see :meth:`hide_future`).
        static : torch.Tensor
            ``[B, S]`` scaled static attributes.
        return_weights : bool
            Also return the channel weights ``[B, L, C]`` (mean 1 over valid channels).
        n_last : int
            Simulate mode: predict the last ``n_last`` days of the window.

        Returns
        -------
        torch.Tensor
            ``[B, PRED_LEN]`` (forecast: Q at t+1..t+P) or ``[B, n_last]`` (simulate).
        """
        x = self.hide_future(x)
        B, L, _ = x.shape
        emb = self.embedding(static)  # [B, E]
        emb_seq = emb[:, None, :].expand(B, L, emb.shape[-1])  # [B, L, E]
        # States carry across the whole window (never reset per step).
        h1 = self._stage(self.lstm1, torch.cat([x, emb_seq], dim=-1))  # [B, L, H]
        logits = self.weight_head(torch.cat([h1, emb_seq], dim=-1))  # [B, L, C]
        valid = self.channel_valid(x)
        if valid is None:
            weights = torch.softmax(logits, dim=-1) * x.shape[-1]  # [B, L, C]
        else:
            logits = logits.masked_fill(~valid, float("-inf"))
            n_valid = valid.sum(dim=-1, keepdim=True)  # [B, L, 1]
            weights = torch.softmax(logits, dim=-1) * n_valid  # masked channels get 0
        h2 = self._stage(self.lstm2, torch.cat([x * weights, h1, emb_seq], dim=-1))  # [B, L, H]
        F = self.args.future_len
        if self.args.mode == "forecast" and F:
            # Lead k is read on day t+k; each lead keeps its own row of the head.
            delta = torch.diagonal(self.head(h2[:, -F:]), dim1=1, dim2=2)  # [B, F, P] -> [B, P]
            out = x[:, -F - 1, self.args.q_channel, None] + delta  # [B, P], Q_t + change
        elif self.args.mode == "forecast":
            delta = self.head(h2[:, -1])  # [B, P]
            out = x[:, -1, self.args.q_channel, None] + delta  # [B, P]
        else:
            out = self.head(h2[:, -n_last:])[..., 0]  # [B, n_last]
        return (out, weights) if return_weights else out


def _lstm_hidden(lstm: nn.LSTM, inp: torch.Tensor) -> torch.Tensor:
    if inp.is_cuda and lstm.training and lstm.dropout > 0 and lstm.num_layers > 1:
        # cuDNN draws its inter-layer dropout masks from a state of its own that moves on with
        # every call, so a recomputation would draw new masks. Setting the CUDA generator's state
        # makes cuDNN re-seed from the generator, whose state checkpoint restores before it
        # recomputes: forward and recomputation then draw the same masks.
        torch.cuda.set_rng_state(torch.cuda.get_rng_state(inp.device), inp.device)
    return lstm(inp)[0]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def activation_memory_estimate(
    args: SCA2LSTMArgs,
    batch_size: int,
    seq_len: int,
    bytes_per_value: int = 4,
    gradient_checkpointing: bool = False,
) -> int:
    """Estimated memory of the activations one training batch keeps for the backward pass.

    Per window and day, an LSTM layer with input width I and hidden size H keeps I + 7H values:
    its input, the four gates (4H), the cell state and its tanh (2H) and its output (H). That is
    what PyTorch's native LSTM kernel saves, and about what cuDNN's reserve space holds (a CPU's
    oneDNN kernel keeps about 2.5 times more). Stage ``lstm1`` has I = C + E in its first layer,
    ``lstm2`` I = C + H + E, further layers I = H, plus an H dropout mask between layers when
    DROPOUT > 0. Around the stages the model keeps H + E (the weight head's input) and 3C (the
    softmax output, the channel weights and the inputs they scale)::

        bytes = B · L · bytes_per_value · (stage1 + stage2 + H + E + 3C)

    With gradient checkpointing a stage keeps only its input; one stage at a time is recomputed
    in the backward pass, so the peak is (C + E) + (C + H + E) + H + E + 3C + max(stage1, stage2)
    per window and day. Per-window terms (embedding, head) are left out: they do not grow with L.

    Parameters
    ----------
    args : SCA2LSTMArgs
        C = ``n_dynamic``, E = ``embedding_dim``, H = ``hidden``, layers = ``num_layers``.
    batch_size, seq_len : int
        B windows of L days.
    bytes_per_value : int
        4 for float32, 2 under bf16/fp16 autocast.
    gradient_checkpointing : bool
        Estimate the peak with the LSTM stages checkpointed.

    Returns
    -------
    int
        Bytes.
    """
    C, E, H, n = args.n_dynamic, args.embedding_dim, args.hidden, args.num_layers
    masks = (n - 1) * H if args.dropout > 0 else 0

    def stage(width: int) -> int:
        return (width + 7 * H) + (n - 1) * 8 * H + masks

    stage1, stage2 = stage(C + E), stage(C + H + E)
    around = H + E + 3 * C
    if gradient_checkpointing:
        per_step = (C + E) + (C + H + E) + around + max(stage1, stage2)
    else:
        per_step = stage1 + stage2 + around
    return batch_size * seq_len * per_step * bytes_per_value


# --------------------------------------------------------------------------- pretraining


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Pretrain SCA2LSTM on many CAMELS-GB basins (defaults from run.config).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--epochs", type=positive_int, help="N_EPOCHS")
    parser.add_argument(
        "--batch_size", type=positive_int, help="BATCH_SIZE (BATCH_SIZE_GPU on CUDA)"
    )
    parser.add_argument("--learning_rate", type=float, help="LR (LR_GPU on CUDA)")
    parser.add_argument("--seed", type=int, help="SEED")
    parser.add_argument("--mode", choices=("forecast", "simulate"), help="MODE")
    parser.add_argument("--seq_len", type=positive_int, help="SEQ_LEN (days per input window)")
    parser.add_argument("--pred_len", type=positive_int, help="PRED_LEN (forecast lead days)")
    parser.add_argument(
        "--horizon_weights",
        metavar="W1,W2,...",
        help="HORIZON_WEIGHTS: PRED_LEN loss weights per lead day, e.g. "
        '"1.5,1.5,1.2,1.0,1.0,0.9,0.9" (normalised to mean 1)',
    )
    parser.add_argument("--train_basins", type=csv_list, help="TRAIN_BASINS, e.g. 32006,42003")
    parser.add_argument("--val_basins", type=csv_list, help="VAL_BASINS")
    parser.add_argument("--test_basins", type=csv_list, help="TEST_BASINS")
    parser.add_argument("--accumulation_steps", type=positive_int, help="GRADIENT_ACCUMULATION")
    parser.add_argument("--compile", action="store_true", help="USE_COMPILE on (CUDA)")
    parser.add_argument("--mixed_precision", action="store_true", help="MIXED_PRECISION on (CUDA)")
    parser.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="GRADIENT_CHECKPOINTING on: recompute the LSTM stages in the backward pass",
    )
    parser.add_argument(
        "--model_size",
        metavar="NAME",
        help="MODEL_SIZE: a preset of MODEL_SIZES in run.config (micro, lite, full) that sets "
        "LSTM_HIDDEN_DIM, NUM_LAYERS and EMBEDDING_DIM",
    )
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="data-parallel training on all visible devices (one process per device via torchrun)",
    )
    parser.add_argument("--no_cuda", action="store_true", help="train on the CPU")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="RUN_DIR",
        help="continue an interrupted run (default: the newest run folder)",
    )
    parser.add_argument("--demo", action="store_true", help="use the synthetic demo dataset")
    parser.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="one epoch on few batches (smoke test)",
    )
    add_search_args(parser)
    parser.add_argument(
        "--window_sizes",
        type=window_list,
        metavar="L1,L2,...",
        help="compare input windows: a grid over SEQ_LEN only (e.g. 3,7,30,90,365), written to "
        "window_comparison.csv and window_size_comparison.png in the study folder",
    )
    add_ensemble_args(parser)
    add_common_args(parser)
    show_config_defaults(parser, "pretrain")
    return parser


def window_list(text: str) -> list[int]:
    """argparse type for ``--window_sizes 3,7,30``: distinct integers of at least 1."""
    values = [positive_int(t) for t in csv_list(text)]
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"a window size is given twice in {text!r}")
    return values


def resolve_pretrain_config(args: argparse.Namespace) -> dict:
    """run.config -> [pretrain] -> --config -> --set -> flags."""
    return load_config(
        args.config, stage="pretrain", overrides=args.set, flags=pretrain_flags(args)
    )


def pretrain_flags(args: argparse.Namespace) -> dict:
    """The config keys that dedicated flags set (None: not given)."""
    flags = {
        "N_EPOCHS": args.epochs,
        "SEED": args.seed,
        "MODE": args.mode,
        "SEQ_LEN": args.seq_len,
        "PRED_LEN": args.pred_len,
        "TRAIN_BASINS": args.train_basins,
        "VAL_BASINS": args.val_basins,
        "TEST_BASINS": args.test_basins,
        "GRADIENT_ACCUMULATION": args.accumulation_steps,
        "OUTPUT_DIR": args.output_dir,
        "NUM_THREADS": args.threads,
        "MODEL_SIZE": args.model_size,
        "HORIZON_WEIGHTS": (
            parse_horizon_weights(args.horizon_weights) if args.horizon_weights else None
        ),
        **search_flags(args),
    }
    if args.batch_size:
        flags["BATCH_SIZE"] = flags["BATCH_SIZE_GPU"] = args.batch_size
    if args.learning_rate:
        flags["LR"] = flags["LR_GPU"] = args.learning_rate
    if args.compile:
        flags["USE_COMPILE"] = True
    if args.mixed_precision:
        flags["MIXED_PRECISION"] = True
    if args.gradient_checkpointing:
        flags["GRADIENT_CHECKPOINTING"] = True
    return flags


def resume_config(config: dict, explicit: set[str], resume_dir: Path) -> dict:
    """The config a resumed run continues with, and what it will do, checked before any work.

    The run keeps its own settings (epochs included); keys given now by flag, ``--set`` or
    ``--config`` change them, and keys added to run.config after that run take today's values
    (except FUTURE_INPUTS, which such a run did not have).

    Raises
    ------
    UserError
        The run has already trained all its epochs or stopped early.
    """
    last = load_checkpoint(resume_dir / "last_model.pth")
    # FUTURE_INPUTS is the exception: a run from before the key had none.
    config = {**config, "FUTURE_INPUTS": [], **last["config"], **{k: config[k] for k in explicit}}
    done, total = int(last["epoch"]), config["N_EPOCHS"]
    state = last.get("training_state") or {}
    patience = config["PATIENCE"]
    if patience and state.get("bad_epochs", 0) >= patience and "N_EPOCHS" not in explicit:
        raise UserError(
            f"--resume {resume_dir}: that run stopped early after epoch {done} (no better "
            f"validation NSE for {patience} epochs); start a new run, or resume with a larger "
            "--set PATIENCE=N and --epochs N to train on"
        )
    if done >= total:
        raise UserError(
            f"--resume {resume_dir}: that run has finished all {total} of its epochs; pass "
            f"--epochs N with N above {done} to train on, or start a new run"
        )
    log.info(
        "resuming %s after epoch %d of %d: %d more epoch(s), then the test-period scores",
        resume_dir,
        done,
        total,
        total - done,
    )
    return config


def _pointer_stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_ino


def publish_pointer(
    best: dict, config: dict, run_dir: Path, started: tuple[int, int] | None, dry_run: bool
) -> Path | None:
    """Write ``model_output/sca2lstm.pth``, the checkpoint every readme command points at.

    A ``--dry-run`` never replaces it: a smoke test must not overwrite a good model. When another
    run wrote it while this one trained, the log says so; the newest finished run wins, and each
    run keeps its own ``best_model.pth``.
    """
    pointer = output_root(config) / "sca2lstm.pth"
    if dry_run:
        log.info("--dry-run: %s is left as it was; this run's model is in %s", pointer, run_dir)
        return None
    if _pointer_stamp(pointer) != started:
        log.warning(
            "%s was written by another run while this one trained; it now points at this run "
            "(%s); the other run's model stays in its own folder",
            pointer,
            run_dir,
        )
    save_checkpoint(pointer, best)
    return pointer


def _find_resume(config: dict, value: str) -> Path:
    runs = output_root(config) / "pretrain"
    if value == "latest":
        candidates = sorted(
            (p for p in runs.glob("*") if (p / "last_model.pth").is_file()),
            key=lambda p: p.stat().st_mtime,
        )
        if not candidates:
            raise UserError(f"--resume: no run folder with last_model.pth under {runs}")
        return candidates[-1]
    path = Path(value)
    if not (path / "last_model.pth").is_file():
        raise UserError(f"--resume {value}: no last_model.pth in that folder; give a run folder")
    return path


def log_future_inputs(spec: FeatureSpec) -> None:
    """Say which channels are known over the lead days, and what that means for the scores."""
    if spec.mode != "forecast":
        return
    c = spec.feature_classification()
    if not spec.future_inputs:
        log.info("future inputs: none (FUTURE_INPUTS []); windows end on the forecast day t")
        return
    log.info(
        "future inputs over t+1..t+%d: known %s; unknown %s",
        spec.pred_len,
        ", ".join(c["knowable_future_features"]),
        ", ".join(c["unknowable_future_features"]),
    )
    log.info(HINDCAST_NOTE)


def channel_weight_table(window_weights: np.ndarray, windows: WindowData, data: InputData):
    """Mean channel weight per basin over all windows and steps of ``windows``, from each
    window's mean over its steps ``[S, C]`` (:func:`utils.predict_windows` with
    ``mean_weights``; every window has the same number of steps)."""
    owner = windows.sample_basin.cpu().numpy()
    rows = []
    for k, basin in enumerate(windows.basins):
        mean = window_weights[owner == k].mean(axis=0)  # [C]
        rows.append(
            {
                "basin": basin,
                "gauge_name": data.basins[basin].name,
                **dict(zip(windows.spec.channels, mean.tolist(), strict=True)),
            }
        )
    return pd.DataFrame(rows)


@dataclass
class PretrainJob:
    """What training needs: data, scalers, the training and validation windows, the model.

    The test period is not part of it: only :func:`pretrain` scores it, after training.
    """

    config: dict
    spec: FeatureSpec
    data: InputData
    scalers: Scalers
    groups: dict
    train: WindowData
    val: WindowData
    model: SCA2LSTM
    settings: TrainSettings


def prepare_pretrain(
    config: dict,
    data_dir: Path,
    device: torch.device,
    data: InputData | None = None,
    dry_run: bool = False,
) -> PretrainJob:
    """Load the data (unless given), fit the scalers on the training basins and period, and
    build the training and validation windows and the model; writes nothing."""
    groups = {
        "train": config["TRAIN_BASINS"],
        "validation": config["VAL_BASINS"],
        "test": config["TEST_BASINS"],
    }
    if data is None:
        data = load_input_data(config, data_dir, all_basins(config))
    spec = FeatureSpec.from_config(config)
    scalers = Scalers.fit(
        data, spec, groups["train"], *period(config, "train"), static_clamp=config["STATIC_CLAMP"]
    )
    train = WindowData(
        data,
        spec,
        scalers,
        groups["train"],
        *period(config, "train"),
        device=window_device(config, device),
    )
    val = WindowData(
        data,
        spec,
        scalers,
        groups["validation"],
        *period(config, "validation"),
        device=device,
        stride=spec.eval_stride,
    )
    if dry_run:
        train.subsample(256, seed=0)
        config["N_EPOCHS"] = 1
    model = SCA2LSTM(SCA2LSTMArgs.from_config(config, spec)).to(device)
    settings = TrainSettings.from_config(config, device)
    log.info(
        "SCA2LSTM (%s mode, %d channels: %s; %d static attributes), %d trainable parameters",
        spec.mode,
        len(spec.channels),
        ", ".join(spec.channels),
        len(spec.static_attributes),
        count_parameters(model),
    )
    batch = max(1, settings.batch_size // distributed_rank()[1])
    precision = "bf16/fp16" if settings.mixed_precision else "fp32"
    log.info(
        "model size %s: hidden %d, %d layer(s), embedding %d; activation memory estimate "
        "%.1f MiB for a batch of %d windows of %d days (%s, gradient checkpointing %s%s)",
        config["MODEL_SIZE"] or "as configured",
        model.args.hidden,
        model.args.num_layers,
        model.args.embedding_dim,
        activation_memory_estimate(
            model.args,
            batch,
            spec.window_len,
            2 if settings.mixed_precision else 4,
            settings.gradient_checkpointing,
        )
        / 2**20,
        batch,
        spec.window_len,
        precision,
        "on" if settings.gradient_checkpointing else "off",
        "; a CPU's oneDNN LSTM kernel keeps about 2.5x more" if device.type == "cpu" else "",
    )
    log.info(
        "training windows: %d from %d basins; validation windows: %d; device %s",
        len(train),
        len(groups["train"]),
        len(val),
        device,
    )
    warn_synthetic(data.synthetic, "the training data")
    log_future_inputs(spec)
    return PretrainJob(config, spec, data, scalers, groups, train, val, model, settings)


def train_pretrain(job: PretrainJob, device, run_dir: Path, resume_dir: Path | None):
    """Train with early stopping; every epoch writes last_model.pth, best_model.pth (when best)
    and history.csv, so an interrupted run resumes. Returns the FitResult."""
    config, spec, scalers, data = job.config, job.spec, job.scalers, job.data
    resume_state = None
    if resume_dir is not None:
        last = load_checkpoint(resume_dir / "last_model.pth")
        if last.get("model_args") != asdict(job.model.args):
            raise UserError(f"{resume_dir} was trained with another model shape; start a new run")
        resume_state = last["training_state"]

    def payload(model_, record, extra) -> dict:
        metrics = {"val_nse": record["val_nse"], "epoch": record["epoch"]}
        return checkpoint_payload(
            model_, config, spec, scalers, data, "pretrain", record["epoch"], metrics, extra=extra
        )

    def on_epoch(record, model_, is_best, state) -> None:
        extra = {"history": state["history"]}
        if is_best:
            save_checkpoint(run_dir / "best_model.pth", payload(model_, record, extra))
        save_checkpoint(
            run_dir / "last_model.pth",
            payload(model_, record, {**extra, "training_state": state}),
        )
        import pandas as pd

        write_csv(run_dir / "history.csv", pd.DataFrame(state["history"]))

    return fit(
        job.model, job.train, job.val, job.settings, device, on_epoch=on_epoch, resume=resume_state
    )


def score_test_period(job: PretrainJob, device, run_dir: Path) -> tuple:
    """Score the validation and test basins on the test period with the best weights; write the
    tables and the channel weights. Returns ``(metrics, unseen NSE)``."""
    config, spec, scalers, data, groups = job.config, job.spec, job.scalers, job.data, job.groups
    tag = synthetic_tag(data.synthetic)
    scored = list(dict.fromkeys(groups["validation"] + groups["test"]))
    group_of = {b: "validation" for b in groups["validation"]}
    group_of.update({b: "test" for b in groups["test"]})
    test = WindowData(
        data, spec, scalers, scored, *period(config, "test"), device=device,
        stride=spec.eval_stride,
    )  # fmt: skip
    batch = eval_batch_size(job.settings.batch_size)
    pred, window_weights = predict_windows(job.model, test, batch_size=batch, mean_weights=True)
    metrics = basin_metrics_table(test, pred, data, group_of)
    # Validation basins are often training basins too: their test-period days are unseen, but
    # the basin is not. Say which is which, in the table and in the log.
    metrics.insert(3, "trained_on", metrics["basin"].isin(groups["train"]))
    mark_synthetic(metrics, data.synthetic)
    write_csv(run_dir / "metrics_test_period.csv", metrics)
    if spec.mode == "forecast":
        by_lead = lead_metrics_table(test, pred, data, group_of)
        write_csv(run_dir / "metrics_by_lead_test_period.csv", by_lead)
    weights = channel_weight_table(window_weights, test, data)
    write_csv(run_dir / "channel_weights.csv", weights)
    plot_channel_weights(
        weights, run_dir / "channel_weights.png", f"SCA2LSTM mean channel weights, test period{tag}"
    )
    return metrics, metrics.loc[~metrics["trained_on"], "nse"]


def _log_test_scores(metrics, unseen, summary: dict, run_dir: Path, pointer) -> None:
    for _, row in metrics.iterrows():
        extra = (
            f"  persistence NSE {row['persistence_nse']:.3f}" if "persistence_nse" in row else ""
        )
        log.info(
            "test period  %s %-32s NSE %.3f  KGE %.3f  bias %+.1f%%%s%s",
            row["basin"],
            str(row["gauge_name"])[:32],
            row["nse"],
            row["kge"],
            row["bias_pct"],
            extra,
            "  (a training basin: unseen days, seen basin)" if row["trained_on"] else "",
        )
    unseen_part = (
        f"{summary['median_test_nse_unseen_basins']:.3f} over {len(unseen)} basins never "
        "trained on, "
        if len(unseen)
        else "every scored basin is a training basin (in-sample basins, unseen days): "
    )
    log.info(
        "median test-period NSE %s%.3f over all %d scored (training basins included); "
        "best epoch %d; checkpoint %s%s",
        unseen_part,
        summary["median_test_nse"],
        len(metrics),
        summary["best_epoch"],
        run_dir / "best_model.pth",
        f" and {pointer}" if pointer else "",
    )


def pretrain(
    config: dict,
    data_dir: Path,
    device: torch.device,
    run_dir: Path,
    resume_dir: Path | None = None,
    dry_run: bool = False,
    publish: bool = True,
    data: InputData | None = None,
) -> dict:
    """Train SCA2LSTM on TRAIN_BASINS, early-stop on VAL_BASINS, score on the test period.

    ``publish=False`` leaves ``model_output/sca2lstm.pth`` alone (an ensemble's members: the
    ensemble run writes it once, see :func:`train_ensemble`). ``data``: the basins' series,
    loaded already (by ``main``, which checks them before the run folder exists); else loaded.

    Returns
    -------
    dict
        ``run_dir``, ``checkpoint`` (best), ``history`` and per-basin ``metrics`` (DataFrame).
    """
    started = _pointer_stamp(output_root(config) / "sca2lstm.pth")
    job = prepare_pretrain(config, data_dir, device, data=data, dry_run=dry_run)
    if distributed_rank()[0] == 0:
        write_json(run_dir / "feature_classification.json", job.spec.feature_classification())
    result = train_pretrain(job, device, run_dir, resume_dir)
    out = {"run_dir": run_dir, "checkpoint": run_dir / "best_model.pth", "history": result.history}
    if distributed_rank()[0] != 0:
        # Data-parallel run: the other processes are done; rank 0 scores and writes.
        return {**out, "metrics": None, "device": str(device)}
    tag = synthetic_tag(job.data.synthetic)
    plot_training_curve(
        result.history,
        run_dir / "training_curve.png",
        f"SCA2LSTM pretraining ({job.spec.mode}, {len(job.groups['train'])} basins){tag}",
    )
    metrics, unseen = score_test_period(job, device, run_dir)
    summary = {
        "median_test_nse": float(np.nanmedian(metrics["nse"])),
        "median_test_nse_unseen_basins": float(np.nanmedian(unseen)) if len(unseen) else None,
        "best_epoch": result.best_epoch,
        "best_val_nse": result.best_score,
    }
    best = checkpoint_payload(
        job.model,
        job.config,
        job.spec,
        job.scalers,
        job.data,
        "pretrain",
        result.best_epoch,
        {**summary, "per_basin": metrics.to_dict(orient="records")},
        extra={"history": result.history},
    )
    save_checkpoint(run_dir / "best_model.pth", best)
    pointer = publish_pointer(best, job.config, run_dir, started, dry_run) if publish else None
    _log_test_scores(metrics, unseen, summary, run_dir, pointer)
    return {**out, "metrics": metrics, "device": str(device)}


# --------------------------------------------------------------------------- hyperparameter search

# Keys whose values change what load_input_data reads; other keys reuse the loaded data.
DATA_KEYS = ("INPUT_DIR", "DYNAMIC_INPUTS", "TARGET", "TRAIN_BASINS", "VAL_BASINS", "TEST_BASINS")


def search_trainer(
    data_dir: Path,
    device: torch.device,
    dry_run: bool = False,
    loaded: tuple[dict, InputData] | None = None,
):
    """The training function of a search trial: train on the training basins and period and
    score the validation basins over the validation period after every epoch.

    Nothing is written and the test period is never scored: a trial builds no test windows.
    The input data are loaded once per process and shared by the trials.
    """
    cache: dict[str, InputData] = {}
    if loaded is not None:
        cache[repr([loaded[0][k] for k in DATA_KEYS])] = loaded[1]

    def train(config: dict, params: dict, report) -> TrialOutcome:
        key = repr([config[k] for k in DATA_KEYS])
        if key not in cache:
            basins = config["TRAIN_BASINS"] + config["VAL_BASINS"] + config["TEST_BASINS"]
            cache[key] = load_input_data(config, data_dir, list(dict.fromkeys(basins)))
        seed_everything(config["SEED"])
        job = prepare_pretrain(dict(config), data_dir, device, data=cache[key], dry_run=dry_run)

        def on_epoch(record, model_, is_best, state) -> None:
            report(record["epoch"], record["val_nse"])

        result = fit(job.model, job.train, job.val, job.settings, device, on_epoch=on_epoch)
        pred = predict_windows(job.model, job.val, batch_size=max(1024, job.settings.batch_size))
        per_basin = {b: nse(v["obs"], v["sim"]) for b, v in series_by_basin(job.val, pred).items()}
        return TrialOutcome(result.best_score, len(result.history), per_basin)

    return train


def run_pretrain_search(
    args: argparse.Namespace, config: dict, data_dir: Path, device: torch.device
) -> tuple[dict, dict]:
    """Search (or compare window sizes), write the study's results, and return the config of
    the best trial and the results."""
    if args.window_sizes:
        space = parse_space({"SEQ_LEN": {"choices": args.window_sizes}}, config)
        grid = {"SEQ_LEN": list(args.window_sizes)}
        settings = SearchSettings.from_config(config, default_name="window_sizes", grid=grid)
    else:
        space = parse_space(config["HYPEROPT_SPACE"], config)
        settings = SearchSettings.from_config(config, default_name="pretrain")
    # The data are checked before the study folder exists, and the trials reuse them.
    data = load_input_data(config, data_dir, all_basins(config))
    search = open_search(settings, space, stage="window_sizes" if args.window_sizes else "pretrain")
    trainer = search_trainer(data_dir, device, args.dry_run, loaded=(config, data))
    study = run_search(search, trainer, config)
    results = write_results(search)
    if args.window_sizes:
        write_window_comparison(search)
    best, params = best_config(study, space, config)
    best["ENABLE_HYPEROPT"] = True
    best["OPTUNA_STUDY_NAME"] = settings.study_name
    results["study_dir"] = str(settings.study_dir)
    return best, results


# --------------------------------------------------------------------------- ensembles


def add_ensemble_args(parser: argparse.ArgumentParser) -> None:
    """``--ensemble N`` and ``--seeds 1,2,3``: several members in one run folder."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--ensemble",
        type=positive_int,
        metavar="N",
        help="train N members in one run folder, with the seed (--seed) and the N-1 seeds "
        "after it, each with its own checkpoint, plus ensemble.json; the ensemble predicts the "
        "mean of its members",
    )
    group.add_argument(
        "--seeds",
        metavar="S1,S2,...",
        help="like --ensemble, with these seeds (two or more, distinct)",
    )


def ensemble_seeds(args: argparse.Namespace, config: dict) -> list[int] | None:
    """The members' seeds asked for by ``--ensemble N`` or ``--seeds`` (None: neither given).

    Raises
    ------
    UserError
        ``--ensemble 1``, a bad seed list, or ``--seeds`` together with ``--seed``.
    """
    if args.seeds is not None:
        if args.seed is not None:
            raise UserError("--seed and --seeds both given; an ensemble takes --seeds only")
        return parse_seeds(args.seeds)
    if args.ensemble is not None:
        if args.ensemble < 2:
            raise UserError(
                f"--ensemble {args.ensemble}: an ensemble needs two or more members; for one "
                "model leave --ensemble out"
            )
        return [config["SEED"] + i for i in range(args.ensemble)]
    return None


def is_ensemble_run(value: str | None) -> bool:
    """True when ``--resume`` names the folder of an ensemble run (it holds ensemble.json)."""
    return bool(value) and value != "latest" and (Path(value) / ENSEMBLE_MANIFEST).is_file()


def _member_dir(run_dir: Path, seed: int) -> Path:
    return run_dir / f"member_{seed}"


def _member_done(member_dir: Path) -> bool:
    """A member is done once its best checkpoint holds the test-period scores."""
    best = member_dir / "best_model.pth"
    return best.is_file() and "median_test_nse" in (load_checkpoint(best).get("metrics") or {})


def _member_entry(member_dir: Path, seed: int) -> dict:
    """The manifest entry of a member: its checkpoint, validation score and test scores."""
    entry = {"seed": seed, "checkpoint": member_dir / "best_model.pth", "done": False}
    if not _member_done(member_dir):
        return entry
    m = load_checkpoint(member_dir / "best_model.pth")["metrics"]
    return {
        **entry,
        "done": True,
        "best_epoch": m["best_epoch"],
        "val_nse": m["best_val_nse"],
        "median_test_nse": m["median_test_nse"],
        "median_test_nse_unseen_basins": m["median_test_nse_unseen_basins"],
        "test_nse": {str(r["basin"]): r["nse"] for r in m["per_basin"]},
    }


def train_member(
    config: dict,
    data_dir: Path,
    device: torch.device,
    member_dir: Path,
    explicit: set[str],
    dry_run: bool,
    data: InputData | None = None,
) -> None:
    """Train one member into ``member_dir`` with :func:`pretrain`, or continue it.

    A member with ``last_model.pth`` but no test scores continues from there (the settings of
    :func:`resume_config`); one without starts from scratch with ``config["SEED"]``.
    """
    resume_dir = None
    if (member_dir / "last_model.pth").is_file():
        config = resume_config(config, explicit, member_dir)
        resume_dir = member_dir
    member_dir.mkdir(exist_ok=True)
    seed_everything(config["SEED"])
    with LogFile(member_dir / "train.log"):
        log.info("ensemble member %s (seed %d)", member_dir.name, config["SEED"])
        write_run_config(member_dir, config)
        pretrain(config, data_dir, device, member_dir, resume_dir, dry_run, False, data)


def score_ensemble(
    config: dict,
    data_dir: Path,
    device: torch.device,
    checkpoints: list[Path],
    data: InputData | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The ensemble's test-period tables: the mean of the members' predictions, in mm/day.

    Each member predicts the validation and test basins over the test period with its own
    scalers; :func:`utils.ensemble_prediction` averages in physical units and
    :func:`utils.basin_metrics_table` scores the mean, as for one model.

    Returns
    -------
    tuple
        ``(metrics, by_lead)``: the per-basin table and, in forecast mode, the per-basin,
        per-lead table of :func:`utils.lead_metrics_table` (else None).
    """
    ckpts = [(path, load_checkpoint(path)) for path in checkpoints]
    check_ensemble_members(ckpts)
    groups = {"validation": config["VAL_BASINS"], "test": config["TEST_BASINS"]}
    scored = list(dict.fromkeys(groups["validation"] + groups["test"]))
    group_of = {b: "validation" for b in groups["validation"]}
    group_of.update({b: "test" for b in groups["test"]})
    data = data if data is not None else load_input_data(config, data_dir, scored)
    preds, scalers, windows = [], [], None
    for path, ckpt in ckpts:
        member = load_model(path, SCA2LSTM, device, ckpt=ckpt)
        model, spec, member_scalers = member.model, member.spec, member.scalers
        w = WindowData(
            data,
            spec,
            member_scalers,
            scored,
            *period(config, "test"),
            device=device,
            stride=spec.eval_stride,
        )
        preds.append(predict_windows(model, w, batch_size=eval_batch_size(config["BATCH_SIZE"])))
        scalers.append(member_scalers)
        windows = windows or w
    mean = ensemble_prediction(preds, scalers, scalers[0])["mean"]
    metrics = basin_metrics_table(windows, mean, data, group_of)
    metrics.insert(3, "trained_on", metrics["basin"].isin(config["TRAIN_BASINS"]))
    by_lead = None
    if windows.spec.mode == "forecast":
        by_lead = lead_metrics_table(windows, mean, data, group_of)
    return mark_synthetic(metrics, data.synthetic), by_lead


def _median(values) -> float | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.median(values)) if values else None


def train_ensemble(
    config: dict,
    data_dir: Path,
    device: torch.device,
    run_dir: Path,
    seeds: Sequence[int],
    explicit: set[str] | None = None,
    dry_run: bool = False,
    data: InputData | None = None,
) -> dict:
    """Train one member per seed in ``run_dir/member_<seed>/`` and score their mean.

    ``data``, the basins' series loaded once, is shared by the members (else each loads them).

    Members whose folder already holds test scores are kept (a resumed run continues the
    others). ``run_dir/ensemble.json`` lists the members (paths relative to it) and is rewritten
    after each member. At the end it holds each member's validation and test scores and the
    ensemble's; ``metrics_test_period.csv`` holds the ensemble's table, and
    ``members_vs_ensemble.csv`` the members', their mean and the ensemble's per basin.
    ``model_output/sca2lstm.pth`` becomes the member with the best validation NSE (never chosen
    on the test period), and ``model_output/sca2lstm_ensemble.json`` a manifest of this ensemble.

    Returns
    -------
    dict
        ``run_dir``, ``manifest``, ``checkpoint`` (the best member's), ``checkpoints`` (all),
        ``members`` (manifest entries), ``metrics`` (the ensemble's table, DataFrame),
        ``members_vs_ensemble`` (DataFrame) and ``device``.
    """
    explicit = explicit or set()
    manifest = run_dir / ENSEMBLE_MANIFEST
    started = _pointer_stamp(output_root(config) / "sca2lstm.pth")
    dirs = [_member_dir(run_dir, seed) for seed in seeds]

    def write(entries: list[dict], **extra) -> None:
        done = all(e["done"] for e in entries)
        write_ensemble_manifest(manifest, "pretrain", entries, complete=done, **extra)

    write([_member_entry(d, seed) for d, seed in zip(dirs, seeds, strict=True)])
    for k, (member_dir, seed) in enumerate(zip(dirs, seeds, strict=True)):
        if _member_done(member_dir):
            log.info("member %s (seed %d): finished earlier, kept", member_dir.name, seed)
            continue
        log.info("ensemble member %d of %d: seed %d", k + 1, len(seeds), seed)
        member_config = {**config, "SEED": seed}
        train_member(member_config, data_dir, device, member_dir, explicit, dry_run, data)
        write([_member_entry(d, s) for d, s in zip(dirs, seeds, strict=True)])
    entries = [_member_entry(d, s) for d, s in zip(dirs, seeds, strict=True)]
    return report_ensemble(config, data_dir, device, run_dir, entries, started, dry_run, data)


def report_ensemble(
    config: dict,
    data_dir: Path,
    device: torch.device,
    run_dir: Path,
    entries: list[dict],
    started: tuple[int, int] | None,
    dry_run: bool,
    data: InputData | None = None,
) -> dict:
    """Score the finished members' mean, write the tables and the manifest, publish pointers."""
    checkpoints = [Path(e["checkpoint"]) for e in entries]
    metrics, by_lead = score_ensemble(config, data_dir, device, checkpoints, data)
    write_csv(run_dir / "metrics_test_period.csv", metrics)
    if by_lead is not None:
        write_csv(run_dir / "metrics_by_lead_test_period.csv", by_lead)
    keys = [c for c in ("data", "basin", "gauge_name", "group", "trained_on") if c in metrics]
    tables = {
        f"seed_{e['seed']}": pd.DataFrame(load_checkpoint(p)["metrics"]["per_basin"])
        for e, p in zip(entries, checkpoints, strict=True)
    }
    for table in tables.values():
        table["basin"] = table["basin"].astype(str)
    side = members_vs_ensemble(tables, metrics, keys)
    write_csv(run_dir / "members_vs_ensemble.csv", side)
    unseen = metrics.loc[~metrics["trained_on"], "nse"]
    # The best member is chosen on the validation basins and period, never on the test period.
    best = max(entries, key=lambda e: e["val_nse"] if np.isfinite(e["val_nse"]) else -np.inf)
    summary = {
        "median_test_nse": _median(metrics["nse"]),
        "median_test_nse_unseen_basins": _median(unseen),
        "test_nse": dict(zip(metrics["basin"], metrics["nse"], strict=True)),
        "members_median_test_nse": [e["median_test_nse"] for e in entries],
        "mean_of_members_median_test_nse": float(np.mean([e["median_test_nse"] for e in entries])),
        "median_of_member_mean_nse": _median(side["nse_member_mean"]),
    }
    files = {"ensemble": "metrics_test_period.csv", "side_by_side": "members_vs_ensemble.csv"}
    if by_lead is not None:
        files["ensemble_by_lead"] = "metrics_by_lead_test_period.csv"
    extra = {
        "best_member": {"seed": best["seed"], "chosen_by": "validation NSE (best_val_nse)"},
        "ensemble_metrics": summary,
        "tables": files,
    }
    write_ensemble_manifest(
        run_dir / ENSEMBLE_MANIFEST, "pretrain", entries, complete=True, **extra
    )
    pointer = publish_pointer(
        load_checkpoint(best["checkpoint"]), config, run_dir, started, dry_run
    )
    if pointer is not None:
        # A manifest of this ensemble next to sca2lstm.pth, its paths relative to model_output/.
        write_ensemble_manifest(
            pointer.with_name("sca2lstm_ensemble.json"),
            "pretrain",
            entries,
            complete=True,
            run_dir=os.path.relpath(run_dir, pointer.parent),
            **extra,
        )
    log_ensemble(side, [f"seed_{e['seed']}" for e in entries], summary, best["seed"], pointer)
    return {
        "run_dir": run_dir,
        "manifest": run_dir / ENSEMBLE_MANIFEST,
        "checkpoint": Path(best["checkpoint"]),
        "checkpoints": checkpoints,
        "members": entries,
        "metrics": metrics,
        "members_vs_ensemble": side,
        "device": str(device),
    }


def log_ensemble(
    side: pd.DataFrame, names: list[str], summary: dict, best: int, pointer: Path | None
) -> None:
    """Log the members', their mean's and the ensemble's test-period NSE per basin."""
    for _, row in side.iterrows():
        log.info(
            "test period  %s %-28s NSE members %s  mean %.3f  ensemble %.3f",
            row["basin"],
            str(row["gauge_name"])[:28],
            " ".join(f"{row[f'nse_{name}']:.3f}" for name in names),
            row["nse_member_mean"],
            row["nse_ensemble"],
        )
    unseen = summary["median_test_nse_unseen_basins"]
    log.info(
        "ensemble of %d: median test-period NSE %.3f (%s); the "
        "members' medians %s; best member on validation: seed %d%s",
        len(names),
        summary["median_test_nse"] or float("nan"),
        "every scored basin is a training basin"
        if unseen is None
        else f"{unseen:.3f} over basins never trained on",
        ", ".join(f"{v:.3f}" for v in summary["members_median_test_nse"]),
        best,
        f" (now {pointer})" if pointer else "",
    )


def ensemble_main(
    args: argparse.Namespace, config: dict, data_dir: Path, device: torch.device
) -> dict:
    """``main`` for ``--ensemble``/``--seeds`` and for ``--resume`` of an ensemble folder."""
    if args.parallel or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            "--ensemble/--seeds train the members one after another in one process; drop "
            "--parallel (or start one data-parallel run per seed with --seed)"
        )
    explicit = explicit_keys(args.config, args.set, pretrain_flags(args), "pretrain")
    seeds = ensemble_seeds(args, config)
    run_dir = None
    if args.resume:
        if not is_ensemble_run(args.resume):
            raise UserError(
                f"--resume {args.resume} with --ensemble/--seeds: give the folder of an ensemble "
                "run (it holds ensemble.json); its seeds come from there"
            )
        run_dir = Path(args.resume)
        manifest, _ = read_ensemble_manifest(run_dir / ENSEMBLE_MANIFEST, need_all=False)
        if seeds is not None and seeds != manifest["seeds"]:
            raise UserError(
                f"--resume {run_dir}: that ensemble has seeds {manifest['seeds']}, not {seeds}; "
                "drop --ensemble/--seeds to continue it"
            )
        if all(_member_done(_member_dir(run_dir, s)) for s in manifest["seeds"]):
            raise UserError(
                f"--resume {run_dir}: that ensemble has finished all its members; start a new "
                "run (finished members are never retrained)"
            )
        seeds = manifest["seeds"]
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        config = {**config, **saved, **{k: config[k] for k in explicit}}
        log.info("resuming ensemble %s: seeds %s", run_dir, seeds)
    # Everything is checked before the run folder exists, so bad input leaves nothing behind.
    data = load_input_data(config, data_dir, all_basins(config))
    folder = RunFolder(
        output_root(config) / "pretrain",
        "train.log",
        config,
        resume=run_dir,
        keep=lambda d: any(d.glob("member_*/last_model.pth")),
    )
    with folder:
        log.info("ensemble of %d members, seeds %s", len(seeds), seeds)
        return train_ensemble(
            config, data_dir, device, folder.path, seeds, explicit, args.dry_run, data
        )


def _parallel_setup(args: argparse.Namespace, device, argv) -> tuple:
    """``--parallel``: join the torchrun process group, or start torchrun on several GPUs.

    Returns ``(device, rank, world)``.
    """
    rank, world = 0, int(os.environ.get("WORLD_SIZE", "1"))
    if args.parallel and world > 1:
        device = init_distributed(device)
        rank = distributed_rank()[0]
        if rank != 0:
            logging.getLogger("sca2lstm").setLevel(logging.WARNING)
        log.info(
            "--parallel: %d processes (DistributedDataParallel, %s)",
            world,
            "NCCL" if device.type == "cuda" else "Gloo",
        )
    elif args.parallel:
        n_gpu = torch.cuda.device_count() if device.type == "cuda" else 1
        if n_gpu > 1 and argv is None:
            log.info("--parallel: launching one process on each of %d GPUs with torchrun", n_gpu)
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={n_gpu}",
                str(Path(__file__).resolve()),
                *sys.argv[1:],
            ]
            os.execv(sys.executable, cmd)
        log.info(
            "--parallel: %d device visible, so training runs in one process (on several hosts or "
            "CPU processes launch: torchrun --nproc_per_node=N sca2lstm.py --parallel ...)",
            n_gpu,
        )
    elif world > 1:
        raise UserError("started by torchrun with several processes: add --parallel")
    return device, rank, world


def _search_first(args: argparse.Namespace, config: dict, data_dir: Path, device) -> tuple:
    """``--enable_hyperopt`` / ``--window_sizes``: run the search; the config of the final model
    (the best trial's) and the search results, or ``(config, None)`` without a search."""
    search = None
    if args.search_only and not (config["ENABLE_HYPEROPT"] or args.window_sizes):
        raise UserError(
            "--search_only applies to a search: add --enable_hyperopt or --window_sizes"
        )
    if config["ENABLE_HYPEROPT"] or args.window_sizes:
        if args.parallel or args.resume:
            raise UserError(
                "--enable_hyperopt and --window_sizes run one process per worker; leave out "
                "--parallel and --resume (running the command again continues the study)"
            )
        config, search = run_pretrain_search(args, config, data_dir, device)
        if args.search_only:
            return config, search
        log.info(
            "final model: best trial %d of study %s (validation NSE %.4f): %s",
            search["best_trial"],
            search["study_name"],
            search["best_score"],
            search["best_params"],
        )
    return config, search


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point; returns what :func:`pretrain` returns (with ``--search_only``:
    the search results)."""
    args = build_parser().parse_args(argv)
    config = resolve_pretrain_config(args)
    setup_logging()
    ensure_writable(output_root(config), "the output folder")
    data_dir = resolve_data_dir(args.data_dir, config, demo=args.demo)
    device = resolve_device(args.device, args.no_cuda, config)
    if args.ensemble is not None or args.seeds is not None or is_ensemble_run(args.resume):
        return ensemble_main(args, config, data_dir, device)
    device, rank, world = _parallel_setup(args, device, argv)
    config, search = _search_first(args, config, data_dir, device)
    if args.search_only:
        return search
    seed_everything(config["SEED"])
    resume_dir = _find_resume(config, args.resume) if args.resume else None
    if resume_dir is not None:
        explicit = explicit_keys(args.config, args.set, pretrain_flags(args), "pretrain")
        config = resume_config(config, explicit, resume_dir)
    # Everything is checked before the run folder exists, so bad input leaves nothing behind.
    data = load_input_data(config, data_dir, all_basins(config))
    folder = RunFolder(
        output_root(config) / "pretrain",
        "train.log",
        config,
        resume=resume_dir,
        keep=lambda d: (d / "last_model.pth").exists(),
    )
    try:
        with folder if rank == 0 else contextlib.nullcontext():
            run_dir = folder.path
            if world > 1 and args.parallel:  # rank 0 made the folder; the others write to it
                shared = [str(run_dir) if rank == 0 else None]
                torch.distributed.broadcast_object_list(shared, src=0)
                run_dir = Path(shared[0])
            log_device(device)
            if search is not None:
                keys = ("study_name", "storage", "study_dir", "best_trial", "best_score")
                source = {k: search[k] for k in (*keys, "best_params")}
                write_json(run_dir / "hyperopt_source.json", source)
            return pretrain(config, data_dir, device, run_dir, resume_dir, args.dry_run, data=data)
    finally:
        if world > 1 and args.parallel and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)
