"""Activation memory of SCA2LSTM: model sizes × fp32 / mixed precision × gradient checkpointing.

On CUDA, each cell of the grid is one training step (forward, backward, AdamW step) measured with
``torch.cuda.max_memory_allocated``: the peak, and the peak above the memory held before the step
(weights, optimiser state, the batch). Without CUDA the script says so and reports a CPU proxy for
the same grid instead: the bytes of the tensors autograd saves for the backward pass
(``torch.autograd.graph.saved_tensors_hooks``), with PyTorch's default CPU LSTM kernel (oneDNN)
and with its native kernel, which keeps what cuDNN keeps. Mixed precision on a CPU is bf16
autocast; on a CPU without bf16 LSTM kernels (``utils.cpu_bf16_lstm_supported``) the grid falls
back to fp32 and says so. Every row also holds the estimate that ``sca2lstm.py`` logs at start.

Usage::

    python benchmarks/memory.py                                  # 365 days, batch 256, presets
    python benchmarks/memory.py --device cuda --seq_len 730 --batch_size 128
    python benchmarks/memory.py --seq_len 30 --batch_size 16 --output /tmp/memory.csv
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sca2lstm import SCA2LSTM, SCA2LSTMArgs, activation_memory_estimate  # noqa: E402
from utils import cpu_bf16_lstm_supported, load_config, nse_star_loss  # noqa: E402

MIB = 2**20
CPU_PROXY = "CPU proxy: bytes saved for backward (saved_tensors_hooks)"
CUDA_MEASURE = "torch.cuda.max_memory_allocated, above the memory held before the step"
NO_CPU_BF16 = (
    "this CPU has no bf16 LSTM kernel (oneDNN builds none here, as on AVX2-only CPUs), so the "
    "grid falls back to fp32: the bf16 autocast rows are left out"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq_len", type=int, default=365, help="window length L (days)")
    p.add_argument("--batch_size", type=int, default=256, help="windows per batch B")
    p.add_argument(
        "--sizes", nargs="+", help="MODEL_SIZES presets to measure (default: all of run.config)"
    )
    p.add_argument("--mode", choices=("simulate", "forecast"), default="simulate")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--output", default="benchmarks/results/memory.csv")
    return p


def saved_tensor_bytes(model: SCA2LSTM, x: torch.Tensor, static: torch.Tensor) -> dict[str, int]:
    """Bytes of the tensors autograd saves for the backward pass in one forward call.

    Storages are counted once (views share them) and parameters are left out. The ``lstm1`` and
    ``lstm2`` entries are the shares saved while those stages ran; ``total`` is everything.

    Parameters
    ----------
    model : SCA2LSTM
        In train mode; its ``gradient_checkpointing`` attribute is honoured.
    x, static : torch.Tensor
        ``[B, L, C]`` inputs and ``[B, S]`` static attributes.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, tuple[int, str]] = {}
    stage = ["other"]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and storage.data_ptr() not in seen:
            seen[storage.data_ptr()] = (storage.nbytes(), stage[0])
        return t

    def enter(name: str):
        return lambda module, args: stage.__setitem__(0, name)

    hooks = [
        model.lstm1.register_forward_pre_hook(enter("lstm1")),
        model.lstm1.register_forward_hook(lambda *a: stage.__setitem__(0, "other")),
        model.lstm2.register_forward_pre_hook(enter("lstm2")),
        model.lstm2.register_forward_hook(lambda *a: stage.__setitem__(0, "other")),
    ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x, static, n_last=1)
    finally:
        for hook in hooks:
            hook.remove()
    out = {"total": 0, "lstm1": 0, "lstm2": 0, "other": 0}
    for nbytes, name in seen.values():
        out["total"] += nbytes
        out[name] += nbytes
    return out


def cpu_proxy_bytes(
    model: SCA2LSTM, x: torch.Tensor, static: torch.Tensor, checkpointing: bool, mixed: bool
) -> int:
    """The CPU proxy of the peak: saved bytes, plus one stage's recomputation when checkpointed.

    With checkpointing, the forward pass keeps only the stage inputs; the backward pass then
    recomputes one stage at a time, which holds what that stage saves when run without it.
    """
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mixed else contextlib.nullcontext()
    with autocast:
        model.gradient_checkpointing = False
        plain = saved_tensor_bytes(model, x, static)
        if not checkpointing:
            return plain["total"]
        model.gradient_checkpointing = True
        kept = saved_tensor_bytes(model, x, static)
        model.gradient_checkpointing = False
    return kept["total"] + max(plain["lstm1"], plain["lstm2"])


def cuda_step_bytes(
    model: SCA2LSTM, x: torch.Tensor, static: torch.Tensor, checkpointing: bool, mixed: bool
) -> tuple[int, int]:
    """(peak allocated, peak above the memory held before the step) of one training step."""
    device = x.device
    model.gradient_checkpointing = checkpointing
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    y = torch.randn(x.shape[0], 1, device=device)
    mask = torch.ones_like(y, dtype=torch.bool)
    std = torch.ones(x.shape[0], device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype, enabled=mixed):
            loss = nse_star_loss(model(x, static, n_last=1), y, mask, std)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # optimiser state, cuDNN workspaces
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    resting = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak, peak - resting


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Measure the grid, print it with the device, write the CSV; returns the table."""
    a = build_parser().parse_args(argv)
    name = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {a.device}: CUDA is not available on this machine")
    if device.type == "cuda":
        label = f"{torch.cuda.get_device_name(device)} (CUDA)"
    else:
        print("no GPU is available: reporting the CPU proxy (saved-tensor bytes), not GPU memory")
        n = torch.get_num_threads()
        label = f"CPU, {n} thread{'' if n == 1 else 's'} ({platform.machine()})"
    config = load_config(stage="pretrain", overrides={"MODE": a.mode})
    sizes = a.sizes or list(config["MODEL_SIZES"])
    unknown = sorted(set(sizes) - set(config["MODEL_SIZES"]))
    if unknown:
        raise SystemExit(
            f"--sizes {unknown}: not in MODEL_SIZES ({', '.join(config['MODEL_SIZES'])})"
        )
    precisions = (False, True)
    if device.type == "cpu" and not cpu_bf16_lstm_supported():
        print(f"note: {NO_CPU_BF16}")
        precisions = (False,)
    rows = []
    for size in sizes:
        cfg = load_config(
            stage="pretrain", overrides={"MODE": a.mode, "MODEL_SIZE": size, "SEQ_LEN": a.seq_len}
        )
        args = SCA2LSTMArgs.from_config(cfg)
        torch.manual_seed(0)
        model = SCA2LSTM(args).to(device).train()
        x = torch.randn(a.batch_size, a.seq_len, args.n_dynamic, device=device)
        if args.q_flag_channel >= 0:
            x[..., args.q_flag_channel] = 0.0
        static = torch.randn(a.batch_size, args.n_static, device=device)
        n_params = sum(p.numel() for p in model.parameters())
        for mixed in precisions:
            for ckpt in (False, True):
                estimate = activation_memory_estimate(
                    args, a.batch_size, a.seq_len, 2 if mixed else 4, ckpt
                )
                row = {
                    "model_size": size,
                    "hidden": args.hidden,
                    "num_layers": args.num_layers,
                    "embedding_dim": args.embedding_dim,
                    "parameters": n_params,
                    "precision": (
                        "bf16/fp16 autocast" if device.type == "cuda" else "bf16 autocast"
                    )
                    if mixed
                    else "fp32",
                    "gradient_checkpointing": ckpt,
                    "batch_size": a.batch_size,
                    "seq_len": a.seq_len,
                    "device": label,
                    "estimate_mib": estimate / MIB,
                }
                if device.type == "cuda":
                    peak, above = cuda_step_bytes(model, x, static, ckpt, mixed)
                    row.update(measure=CUDA_MEASURE, measured_mib=above / MIB, peak_mib=peak / MIB)
                else:
                    onednn = cpu_proxy_bytes(model, x, static, ckpt, mixed)
                    with torch.backends.mkldnn.flags(enabled=False, allow_tf32=None):
                        native = cpu_proxy_bytes(model, x, static, ckpt, mixed)
                    row.update(
                        measure=CPU_PROXY,
                        measured_mib=onednn / MIB,
                        native_kernel_mib=native / MIB,
                    )
                row["measured_over_estimate"] = row["measured_mib"] / row["estimate_mib"]
                rows.append(row)
        del model, x, static
    table = pd.DataFrame(rows)
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.4g")
    shown = [
        c
        for c in (
            "model_size",
            "parameters",
            "precision",
            "gradient_checkpointing",
            "estimate_mib",
            "measured_mib",
            "native_kernel_mib",
            "peak_mib",
            "measured_over_estimate",
        )
        if c in table
    ]
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"\ndevice: {label}; batch {a.batch_size} × {a.seq_len} days; {a.mode} mode")
    print(f"measured: {table['measure'].iloc[0]}")
    if precisions == (False,):
        print(f"note: {NO_CPU_BF16}")
    if device.type == "cpu":
        print(
            "measured_mib: PyTorch's default CPU LSTM kernel (oneDNN); native_kernel_mib: its "
            "native kernel, which keeps what cuDNN keeps. Not GPU memory."
        )
    print(f"table written to {out}")
    return table


if __name__ == "__main__":
    main()
