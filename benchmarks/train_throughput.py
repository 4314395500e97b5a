"""Training throughput of SCA2LSTM: end to end through the training loop vs the pure model step.

For each shape (batch, window, hidden size, basins, batches) and device, three figures in samples/s:

- ``end_to_end``: ``utils.fit``, the training loop of ``sca2lstm.py``, in simulate mode on
  ``WindowData`` built from the real sample (the first N of its 12 basins, the training period):
  batches gathered from the resident series (or a DataLoader with ``--data_path stream``), the
  NSE* loss, backward, clipping, AdamW. One warm-up epoch of ``n_batches`` batches, then the
  timed one (the samples/s of fit's history).
- ``model_step``: the same model and step (autocast, loss, backward, clipping, AdamW, compile as
  configured) on one batch of random tensors already on the device: the upper bound.
- ``peer``: when ``neuralhydrology`` is importable, its CudaLSTM trained through its own CAMELS-GB
  dataset and DataLoader (``BaseTrainer``) at the same shape, in the same invocation; otherwise
  the row says that it is not installed.

Each row also has the samples/s of the data path alone (batches onto the device, no model), for
ours and for the peer.

The ratio ``end_to_end / model_step`` says how much of the step time the data path costs; the
issue asks for at least 0.8 on a GPU, and for at least 3× the peer on a two-core CPU at a small
shape (e.g. ``--shape 256,30,32,2,20``).

Usage::

    python benchmarks/train_throughput.py --data_dir ../shared/camels_gb       # Lees shape
    python benchmarks/train_throughput.py --shape 256,30,32,2,20 --shape 256,365,64,12,20 \\
        --device cpu,cuda
    python benchmarks/train_throughput.py --shape 64,30,32,2,10 --data_path resident stream
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydrologyDataset import (  # noqa: E402
    FeatureSpec,
    Scalers,
    WindowData,
    find_source,
    load_input_data,
    read_attributes,
    static_matrix,
)
from sca2lstm import SCA2LSTM, SCA2LSTMArgs  # noqa: E402
from utils import (  # noqa: E402
    TrainSettings,
    UserError,
    fit,
    load_config,
    nse_star_loss,
    optimizer_step,
    parse_set,
    period,
    resolve_device,
    seed_everything,
)

SAMPLE = "10002 10003 22001 22006 32006 39025 42003 45003 51001 54017 75003 79005".split()


@dataclass(frozen=True)
class Shape:
    """One benchmark shape: B windows of L days, hidden size H, N basins, n timed batches."""

    batch_size: int
    seq_len: int
    hidden: int
    basins: int
    n_batches: int

    @classmethod
    def parse(cls, text: str) -> Shape:
        try:
            values = [int(v) for v in text.split(",")]
            shape = cls(*values)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"--shape {text!r}: expected batch,seq_len,hidden,basins,n_batches "
                "(five integers, e.g. 256,365,64,12,20)"
            ) from None
        if min(values) < 1 or shape.basins > len(SAMPLE):
            raise argparse.ArgumentTypeError(
                f"--shape {text!r}: every value must be >= 1 and basins <= {len(SAMPLE)}"
            )
        return shape


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data_dir",
        default=os.environ.get("CAMELS_GB_DIR"),
        help="CAMELS-GB folder holding the 12-basin sample (default: $CAMELS_GB_DIR)",
    )
    p.add_argument(
        "--shape",
        type=Shape.parse,
        action="append",
        help="batch,seq_len,hidden,basins,n_batches (repeatable; default 256,365,64,12,20, the "
        "shape of Lees et al. 2021)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, or a comma list")
    p.add_argument("--num_layers", type=int, default=1, help="NUM_LAYERS of each LSTM stage")
    p.add_argument("--embedding_dim", type=int, default=32, help="EMBEDDING_DIM")
    p.add_argument(
        "--data_path",
        nargs="+",
        choices=("resident", "stream"),
        default=["resident"],
        help="DATA_PATH(s) of the end-to-end runs",
    )
    p.add_argument(
        "--workers", type=int, default=0, help="NUM_WORKERS (stream) and the peer's num_workers"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other run.config key, e.g. --set USE_COMPILE=false",
    )
    p.add_argument(
        "--peer",
        choices=("auto", "off"),
        default="auto",
        help="auto: run neuralhydrology's CudaLSTM when it is importable",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="timed epochs / step loops; the median is kept"
    )
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: PyTorch's choice)")
    p.add_argument("--input_dir", help="model input data cache (default: a temporary folder)")
    p.add_argument("--output", default="benchmarks/results/train_throughput.csv")
    return p


def device_label(device: torch.device) -> str:
    """The device in words, for every printed figure."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    n = torch.get_num_threads()
    return f"CPU, {n} thread{'' if n == 1 else 's'} ({platform.machine()})"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def shape_config(a: argparse.Namespace, shape: Shape, data_path: str, input_dir: Path) -> dict:
    """run.config with the benchmark's shape: simulate mode, the first N sample basins."""
    basins = SAMPLE[: shape.basins]
    overrides = {
        "MODE": "simulate",
        "SEQ_LEN": shape.seq_len,
        "PREDICT_LAST_N": 1,
        "LSTM_HIDDEN_DIM": shape.hidden,
        "NUM_LAYERS": a.num_layers,
        "EMBEDDING_DIM": a.embedding_dim,
        "BATCH_SIZE": shape.batch_size,
        "BATCH_SIZE_GPU": shape.batch_size,
        "SAMPLES_PER_EPOCH": shape.batch_size * shape.n_batches,
        "N_EPOCHS": 1 + a.repeats,
        "GRADIENT_ACCUMULATION": 1,
        "WARMUP_STEPS": 0,
        "TRAIN_BASINS": basins,
        "VAL_BASINS": basins[:1],
        "TEST_BASINS": basins[:1],
        "DATA_PATH": data_path,
        "NUM_WORKERS": a.workers,
        "INPUT_DIR": str(input_dir),
        **parse_set(a.set),
    }
    return load_config(stage="pretrain", overrides=overrides)


def _batches_per_s(batches, n: int, device: torch.device) -> float:
    """Batches/s of taking ``n`` batches from ``batches`` onto ``device``: the data path alone."""
    it = iter(batches)
    next(it)  # first batch: DataLoader workers start
    t0 = time.perf_counter()
    for _ in range(n):
        batch = next(it)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
    _sync(device)
    return n / (time.perf_counter() - t0)


def end_to_end(config: dict, data_dir: Path, device: torch.device) -> tuple[float, int, float]:
    """(median samples/s of fit's epochs after the first, training windows, data path alone).

    The data path alone is the samples/s of gathering ``n_batches`` batches onto the device, no
    model: tensor indexing (resident) or the DataLoader (stream), as ``fit`` takes them.
    """
    basins = config["TRAIN_BASINS"]
    data = load_input_data(config, data_dir, basins)
    spec = FeatureSpec.from_config(config)
    scalers = Scalers.fit(data, spec, basins, *period(config, "train"))
    win_device = device if config["DATA_PATH"] == "resident" else torch.device("cpu")
    train = WindowData(data, spec, scalers, basins, *period(config, "train"), device=win_device)
    seed_everything(config["SEED"])
    model = SCA2LSTM(SCA2LSTMArgs.from_config(config, spec))
    settings = TrainSettings.from_config(config, device)
    result = fit(model, train, None, settings, device)
    rates = [h["samples_per_s"] for h in result.history[1:]]
    b, n = settings.batch_size, math.ceil(settings.samples_per_epoch / settings.batch_size)
    generator = torch.Generator().manual_seed(0)
    if config["DATA_PATH"] == "resident":
        batches = train.iter_batches(b, shuffle=True, generator=generator, limit=b * (n + 1))
    else:
        from torch.utils.data import DataLoader, RandomSampler

        dataset = train.to_dataset()
        sampler = RandomSampler(dataset, num_samples=b * (n + 1), generator=generator)
        workers = settings.num_workers
        batches = DataLoader(
            dataset,
            batch_size=b,
            sampler=sampler,
            num_workers=workers,
            pin_memory=settings.pin_memory,
            prefetch_factor=settings.prefetch_factor if workers > 0 else None,
        )
    data_rate = b * _batches_per_s(batches, n, device)
    return float(statistics.median(rates)), len(train), data_rate


def model_step(config: dict, device: torch.device, shape: Shape, repeats: int) -> float:
    """Median samples/s of the training step alone, on one resident batch of random tensors."""
    spec = FeatureSpec.from_config(config)
    seed_everything(config["SEED"])
    model = SCA2LSTM(SCA2LSTMArgs.from_config(config, spec)).to(device).train()
    settings = TrainSettings.from_config(config, device)
    model.gradient_checkpointing = settings.gradient_checkpointing
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    use_scaler = settings.mixed_precision and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    step_model = torch.compile(model, backend=settings.backend) if settings.compile else model
    B, L = shape.batch_size, shape.seq_len
    x = torch.randn(B, L, len(spec.channels), device=device)
    static = torch.randn(B, len(spec.static_attributes), device=device)
    y = torch.randn(B, 1, device=device)
    mask = torch.ones_like(y, dtype=torch.bool)
    std = torch.ones(B, device=device)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype, enabled=settings.mixed_precision):
            loss = nse_star_loss(step_model(x, static, n_last=1), y, mask, std)
        scaler.scale(loss).backward()
        optimizer_step(optimizer, scaler, params, settings.grad_clip)

    for _ in range(min(3, shape.n_batches)):
        step()
    _sync(device)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(shape.n_batches):
            step()
        _sync(device)
        rates.append(B * shape.n_batches / (time.perf_counter() - t0))
    return statistics.median(rates)


def _nh_date(iso: str) -> str:
    year, month, day = iso.split("-")
    return f"{day}/{month}/{year}"


def peer_throughput(
    config: dict, data_dir: Path, device: torch.device, shape: Shape, workers: int, work: Path
) -> tuple[float, float]:
    """samples/s of neuralhydrology's CudaLSTM through its own dataset and DataLoader.

    Returns (training samples/s, samples/s of its DataLoader alone onto the device).

    Same basins, training period, inputs, static attributes, window, batch and hidden size; its
    ``BaseTrainer`` epoch loop with ``max_updates_per_epoch`` batches, one warm-up epoch first.
    """
    from neuralhydrology.training.basetrainer import BaseTrainer
    from neuralhydrology.utils.config import Config

    # neuralhydrology refuses attributes that are constant over the training basins (our Scalers
    # keep them at scale 1); give it the rest, which changes its input width by a few columns.
    table = read_attributes(find_source(data_dir))
    stat = static_matrix(table, config["TRAIN_BASINS"], config["STATIC_ATTRIBUTES"])
    spread = stat.std(axis=0)
    varying = [a for a, sd in zip(config["STATIC_ATTRIBUTES"], spread, strict=True) if sd > 0]
    basin_file = work / "nh_basins.txt"
    basin_file.write_text("\n".join(config["TRAIN_BASINS"]) + "\n", encoding="utf-8")
    cfg = Config(
        {
            "experiment_name": "throughput",
            "run_dir": str(work / "nh_runs"),
            "train_basin_file": str(basin_file),
            "validation_basin_file": str(basin_file),
            "test_basin_file": str(basin_file),
            "train_start_date": _nh_date(config["TRAIN_START"]),
            "train_end_date": _nh_date(config["TRAIN_END"]),
            "validation_start_date": _nh_date(config["VAL_START"]),
            "validation_end_date": _nh_date(config["VAL_END"]),
            "test_start_date": _nh_date(config["TEST_START"]),
            "test_end_date": _nh_date(config["TEST_END"]),
            "device": str(device) if device.type == "cuda" else "cpu",
            "dataset": "camels_gb",
            "data_dir": str(data_dir),
            "dynamic_inputs": list(config["DYNAMIC_INPUTS"]),
            "static_attributes": varying,
            "target_variables": [config["TARGET"]],
            "model": "cudalstm",
            "head": "regression",
            "output_activation": "linear",
            "hidden_size": shape.hidden,
            "initial_forget_bias": 3,
            "output_dropout": 0.4,
            "optimizer": "Adam",
            "loss": "NSE",
            "learning_rate": 1.0e-3,
            "batch_size": shape.batch_size,
            "epochs": 2,
            "clip_gradient_norm": 1.0,
            "seq_length": shape.seq_len,
            "predict_last_n": 1,
            "num_workers": workers,
            "max_updates_per_epoch": shape.n_batches,
            "log_interval": 5,
            "log_tensorboard": False,
            "save_weights_every": 1,
            "verbose": 0,
            "seed": int(config["SEED"]),
        }
    )
    trainer = BaseTrainer(cfg)
    trainer.initialize_training()
    trainer._train_epoch(1)  # warm-up: workers, cuDNN kernel choice
    _sync(device)
    t0 = time.perf_counter()
    trainer._train_epoch(2)
    _sync(device)
    train_rate = shape.batch_size * shape.n_batches / (time.perf_counter() - t0)
    n = min(shape.n_batches, len(trainer.loader) - 1)
    return train_rate, shape.batch_size * _batches_per_s(trainer.loader, n, device)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Run every shape × device × data path; print the figures with the device; write the CSV."""
    a = build_parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if not a.data_dir:
        raise SystemExit("give --data_dir (the CAMELS-GB sample) or set CAMELS_GB_DIR")
    data_dir = Path(a.data_dir).expanduser()
    shapes = a.shape or [Shape(256, 365, 64, 12, 20)]
    peer_ok = a.peer == "auto" and importlib.util.find_spec("neuralhydrology") is not None
    if a.peer == "off":
        peer_note = "peer not run (--peer off)"
    elif not peer_ok:
        peer_note = "neuralhydrology is not installed: no peer figure"
    else:
        peer_note = "neuralhydrology CudaLSTM, its dataset and DataLoader"
    print(peer_note)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        input_dir = Path(a.input_dir) if a.input_dir else work / "model_input_data"
        for name in [d.strip() for d in a.device.split(",") if d.strip()]:
            try:
                device = resolve_device(name, config=load_config(stage="pretrain"))
            except UserError as err:
                raise SystemExit(f"error: {err}") from None
            label = device_label(device)
            for shape in shapes:
                step_rate = None
                for data_path in a.data_path:
                    config = shape_config(a, shape, data_path, input_dir)
                    e2e, n_windows, data_rate = end_to_end(config, data_dir, device)
                    if step_rate is None:
                        step_rate = model_step(config, device, shape, a.repeats)
                    peer, peer_data, status = float("nan"), float("nan"), peer_note
                    if peer_ok and data_path == a.data_path[0]:
                        try:
                            peer, peer_data = peer_throughput(
                                config, data_dir, device, shape, a.workers, work
                            )
                        except Exception as err:  # noqa: BLE001 - keep our figures if the peer fails
                            status = f"neuralhydrology failed: {type(err).__name__}: {err}"
                    row = {
                        "device": label,
                        "batch_size": shape.batch_size,
                        "seq_len": shape.seq_len,
                        "hidden": shape.hidden,
                        "num_layers": a.num_layers,
                        "embedding_dim": a.embedding_dim,
                        "basins": shape.basins,
                        "n_batches": shape.n_batches,
                        "training_windows": n_windows,
                        "data_path": data_path,
                        "end_to_end_samples_s": e2e,
                        "model_step_samples_s": step_rate,
                        "end_to_end_over_model_step": e2e / step_rate,
                        "data_path_alone_samples_s": data_rate,
                        "peer_samples_s": peer,
                        "peer_data_path_alone_samples_s": peer_data,
                        "ours_over_peer": e2e / peer,
                        "peer": status,
                        "torch": torch.__version__,
                    }
                    rows.append(row)
                    print(
                        f"[{label}] B={shape.batch_size} L={shape.seq_len} H={shape.hidden} "
                        f"basins={shape.basins} batches={shape.n_batches} {data_path}: "
                        f"end-to-end {e2e:,.0f} samples/s, model step {step_rate:,.0f} "
                        f"samples/s, ratio {e2e / step_rate:.2f}; "
                        + (f"data path alone {data_rate:,.0f} samples/s; " * math.isnan(peer))
                        + (
                            f"peer {peer:,.0f} samples/s, ours/peer {e2e / peer:.2f}; data "
                            f"path alone: ours {data_rate:,.0f}, peer {peer_data:,.0f} samples/s"
                            if not math.isnan(peer)
                            else status
                        )
                    )
    table = pd.DataFrame(rows)
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.4g")
    print(f"command: python benchmarks/train_throughput.py {' '.join(argv or sys.argv[1:])}")
    print(f"table written to {out}")
    return table


if __name__ == "__main__":
    main()
