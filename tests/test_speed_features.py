"""Speed and memory features: gradient checkpointing, model size presets, the activation memory
estimate, and tiny runs of the speed benchmarks (no timing is asserted anywhere)."""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import replace

import pandas as pd
import pytest
import torch
import yaml
from demo_fixtures import demo_args

import sca2lstm
from benchmarks import memory as memory_bench
from benchmarks import scale as scale_bench
from benchmarks import train_throughput as throughput_bench
from sca2lstm import SCA2LSTM, SCA2LSTMArgs, activation_memory_estimate, count_parameters
from utils import (
    DEFAULT_CONFIG,
    MODEL_SIZE_KEYS,
    TrainSettings,
    UserError,
    cpu_bf16_lstm_supported,
    fit,
    load_checkpoint,
    load_config,
)


def model_args(mode: str = "forecast", **kw) -> SCA2LSTMArgs:
    forecast = mode == "forecast"
    base = dict(
        n_dynamic=9 if forecast else 7,
        n_static=5,
        hidden=8,
        num_layers=2,
        dropout=0.3,
        embedding_dim=6,
        pred_len=2 if forecast else 1,
        mode=mode,
        q_channel=7 if forecast else -1,
        q_flag_channel=8 if forecast else -1,
    )
    base.update(kw)
    return SCA2LSTMArgs(**base)


def outputs_and_grads(model: SCA2LSTM, x: torch.Tensor, static: torch.Tensor, n_last: int):
    torch.manual_seed(123)  # the same dropout masks in both runs
    out = model(x, static, n_last=n_last)
    out.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out.detach(), grads


# --------------------------------------------------------------------------- checkpointing


@pytest.mark.parametrize(
    "mode, num_layers, dropout",
    [("forecast", 2, 0.3), ("simulate", 2, 0.3), ("simulate", 1, 0.0), ("forecast", 1, 0.5)],
)
def test_gradient_checkpointing_gives_identical_outputs_and_gradients(mode, num_layers, dropout):
    torch.manual_seed(0)
    plain = SCA2LSTM(model_args(mode, num_layers=num_layers, dropout=dropout)).train()
    torch.nn.init.normal_(plain.weight_head.weight)  # non-uniform channel weights
    torch.nn.init.normal_(plain.head[1].weight)
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing = True
    x = torch.randn(6, 15, plain.args.n_dynamic)
    if mode == "forecast":
        x[..., 8] = (torch.rand(6, 15) < 0.2).float()  # some lagged Q missing
    static = torch.randn(6, 5)
    n_last = 1 if mode == "forecast" else 4
    out_a, grads_a = outputs_and_grads(plain, x, static, n_last)
    out_b, grads_b = outputs_and_grads(checkpointed, x, static, n_last)
    assert torch.equal(out_a, out_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name


def test_gradient_checkpointing_keeps_fewer_activations_and_is_off_outside_training():
    torch.manual_seed(0)
    model = SCA2LSTM(model_args("simulate")).train()
    x, static = torch.randn(4, 40, 7), torch.randn(4, 5)
    plain = memory_bench.saved_tensor_bytes(model, x, static)["total"]
    model.gradient_checkpointing = True
    kept = memory_bench.saved_tensor_bytes(model, x, static)["total"]
    assert kept < 0.6 * plain
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, static), copy.deepcopy(model).eval()(x, static))


@pytest.mark.cuda
def test_gradient_checkpointing_is_identical_on_cuda_with_inter_layer_dropout():
    torch.manual_seed(0)
    plain = SCA2LSTM(model_args("simulate", num_layers=2, dropout=0.5)).cuda().train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing = True
    x, static = torch.randn(6, 20, 7, device="cuda"), torch.randn(6, 5, device="cuda")
    out_a, grads_a = outputs_and_grads(plain, x, static, 3)
    out_b, grads_b = outputs_and_grads(checkpointed, x, static, 3)
    assert torch.allclose(out_a, out_b)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6), name


# --------------------------------------------------------------------------- presets


def test_presets_live_in_run_config_and_full_is_the_default_size():
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    assert raw["MODEL_SIZE"] is None
    assert set(raw["MODEL_SIZES"]) == {"micro", "lite", "full"}
    assert all(set(p) == set(MODEL_SIZE_KEYS) for p in raw["MODEL_SIZES"].values())
    defaults = {k: raw[k] for k in MODEL_SIZE_KEYS}
    assert raw["MODEL_SIZES"]["full"] == defaults


@pytest.mark.parametrize("size", ["micro", "lite", "full"])
def test_preset_overrides_the_three_size_keys(size):
    preset = load_config()["MODEL_SIZES"][size]
    config = load_config(
        overrides=[f"MODEL_SIZE={size}", "LSTM_HIDDEN_DIM=100", "NUM_LAYERS=3", "EMBEDDING_DIM=7"]
    )
    assert {k: config[k] for k in MODEL_SIZE_KEYS} == preset


def test_no_preset_keeps_the_keys_as_given():
    config = load_config(overrides=["LSTM_HIDDEN_DIM=100", "NUM_LAYERS=3"])
    assert config["MODEL_SIZE"] is None
    assert (config["LSTM_HIDDEN_DIM"], config["NUM_LAYERS"]) == (100, 3)


def test_preset_from_a_config_file_and_a_custom_table(tmp_path):
    path = tmp_path / "sizes.yaml"
    path.write_text(
        "MODEL_SIZE: tiny\n"
        "MODEL_SIZES:\n"
        "  tiny: {LSTM_HIDDEN_DIM: 4, NUM_LAYERS: 1, EMBEDDING_DIM: 2}\n",
        encoding="utf-8",
    )
    config = load_config(path)
    assert (config["LSTM_HIDDEN_DIM"], config["NUM_LAYERS"], config["EMBEDDING_DIM"]) == (4, 1, 2)


@pytest.mark.parametrize(
    "items, needle",
    [
        (["MODEL_SIZE=huge"], "not a preset"),
        (["MODEL_SIZES={micro: {LSTM_HIDDEN_DIM: 16}}"], "must set exactly"),
        (
            ["MODEL_SIZES={micro: {LSTM_HIDDEN_DIM: 0, NUM_LAYERS: 1, EMBEDDING_DIM: 8}}"],
            "integer >= 1",
        ),
        (["MODEL_SIZE=3"], "not a preset"),
    ],
)
def test_bad_presets_are_user_errors(items, needle):
    with pytest.raises(UserError, match=needle):
        load_config(overrides=items)


# --------------------------------------------------------------------------- the estimate


@pytest.mark.parametrize("mode", ["forecast", "simulate"])
@pytest.mark.parametrize("size", ["micro", "lite", "full"])
def test_activation_estimate_is_within_a_factor_two_of_saved_tensor_bytes(mode, size):
    # PyTorch's native LSTM kernel saves what cuDNN keeps; its default CPU kernel (oneDNN) keeps
    # a larger workspace, which the estimate does not model (the readme says so).
    config = load_config(overrides={"MODE": mode, "MODEL_SIZE": size, "SEQ_LEN": 50})
    args = SCA2LSTMArgs.from_config(config)
    torch.manual_seed(0)
    model = SCA2LSTM(args).train()
    x, static = torch.randn(8, 50, args.n_dynamic), torch.randn(8, args.n_static)
    if args.q_flag_channel >= 0:
        x[..., args.q_flag_channel] = 0.0
    with torch.backends.mkldnn.flags(enabled=False, allow_tf32=None):
        measured = memory_bench.saved_tensor_bytes(model, x, static)["total"]
    estimate = activation_memory_estimate(args, 8, 50)
    assert 0.5 <= measured / estimate <= 2.0


def test_estimate_scales_with_batch_window_precision_and_checkpointing():
    args = model_args("simulate", hidden=64, embedding_dim=128)
    base = activation_memory_estimate(args, 32, 100)
    assert activation_memory_estimate(args, 64, 100) == 2 * base
    assert activation_memory_estimate(args, 32, 200) == 2 * base
    assert activation_memory_estimate(args, 32, 100, bytes_per_value=2) == base // 2
    assert activation_memory_estimate(args, 32, 100, gradient_checkpointing=True) < base


# --------------------------------------------------------------------------- CLI


def test_model_size_flag_logs_parameters_and_memory(demo_dir, tmp_path, sca2lstm_log):
    result = sca2lstm.main(
        demo_args(demo_dir, tmp_path, "--dry-run", "--device", "cpu", "--model_size", "micro")
    )
    ckpt = load_checkpoint(result["checkpoint"])
    assert (ckpt["model_args"]["hidden"], ckpt["model_args"]["num_layers"]) == (16, 1)
    assert ckpt["model_args"]["embedding_dim"] == 8
    assert ckpt["config"]["MODEL_SIZE"] == "micro"
    n_params = count_parameters(SCA2LSTM(sca2lstm.SCA2LSTMArgs(**ckpt["model_args"])))
    text = sca2lstm_log.text
    assert f"{n_params} trainable parameters" in text
    found = re.search(r"activation memory estimate ([\d.]+) MiB for a batch of (\d+) windows", text)
    assert found
    assert "model size micro" in text
    # the window: SEQ_LEN days, plus the PRED_LEN lead days with future inputs (the default)
    window = ckpt["config"]["SEQ_LEN"] + ckpt["model_args"]["future_len"]
    assert window == 4
    expected = activation_memory_estimate(
        sca2lstm.SCA2LSTMArgs(**ckpt["model_args"]), int(found.group(2)), window
    )
    assert float(found.group(1)) == pytest.approx(expected / 2**20, abs=0.05)


def test_checkpointing_flag_reaches_config_and_log(demo_dir, tmp_path, sca2lstm_log):
    result = sca2lstm.main(
        demo_args(
            demo_dir,
            tmp_path,
            "--dry-run",
            "--device",
            "cpu",
            "--gradient_checkpointing",
            "--set",
            "LSTM_HIDDEN_DIM=8",
            "--set",
            "EMBEDDING_DIM=4",
        )
    )
    saved = yaml.safe_load((result["run_dir"] / "config.yaml").read_text(encoding="utf-8"))
    assert saved["GRADIENT_CHECKPOINTING"] is True
    assert "gradient checkpointing on" in sca2lstm_log.text
    assert pd.read_csv(result["run_dir"] / "history.csv")["train_loss"].notna().all()


def test_unknown_model_size_flag_is_one_message(demo_dir, tmp_path):
    with pytest.raises(UserError, match="not a preset"):
        sca2lstm.main(demo_args(demo_dir, tmp_path, "--dry-run", "--model_size", "giant"))
    assert not (tmp_path / "model_output").exists()


# --------------------------------------------------------------------------- benchmarks


def test_train_throughput_tiny_run_writes_its_csv(demo_dir, tmp_path):
    out = tmp_path / "throughput.csv"
    table = throughput_bench.main(
        [
            "--data_dir", str(demo_dir), "--shape", "8,10,8,2,2", "--device", "cpu",
            "--repeats", "1", "--peer", "auto", "--input_dir", str(tmp_path / "input"),
            "--output", str(out),
        ]
    )  # fmt: skip
    written = pd.read_csv(out)
    assert len(written) == len(table) == 1
    row = written.iloc[0]
    assert row["device"].startswith("CPU")
    assert row["end_to_end_samples_s"] > 0 and row["model_step_samples_s"] > 0
    assert row["data_path_alone_samples_s"] > 0  # timings are compared in benchmarks/ only
    assert row["end_to_end_over_model_step"] == pytest.approx(
        row["end_to_end_samples_s"] / row["model_step_samples_s"], rel=1e-3
    )
    assert "neuralhydrology" in row["peer"]


def test_throughput_shape_argument_is_checked():
    with pytest.raises(SystemExit):
        throughput_bench.build_parser().parse_args(["--shape", "8,10,8"])
    with pytest.raises(SystemExit):
        throughput_bench.build_parser().parse_args(["--shape", "8,10,8,13,2"])


def test_memory_tiny_run_labels_the_cpu_proxy_and_writes_its_csv(tmp_path, capsys):
    out = tmp_path / "memory.csv"
    table = memory_bench.main(
        ["--seq_len", "12", "--batch_size", "4", "--sizes", "micro", "--output", str(out),
         "--device", "cpu"]
    )  # fmt: skip
    written = pd.read_csv(out)
    # fp32 / bf16 autocast × checkpointing off / on; fp32 alone on CPUs without bf16 LSTM kernels
    bf16 = cpu_bf16_lstm_supported()
    assert len(written) == len(table) == (4 if bf16 else 2)
    assert set(written["precision"]) == ({"fp32", "bf16 autocast"} if bf16 else {"fp32"})
    assert set(written["gradient_checkpointing"]) == {True, False}
    assert (written["measure"] == memory_bench.CPU_PROXY).all()
    assert (written["measured_mib"] > 0).all() and (written["estimate_mib"] > 0).all()
    printed = capsys.readouterr().out
    assert "no GPU is available" in printed and "CPU proxy" in printed
    assert (memory_bench.NO_CPU_BF16 in printed) == (not bf16)


def test_scale_benchmark_builds_ids_and_parses_its_arguments():
    ids = scale_bench.basin_ids(671)
    assert len(set(ids)) == 671
    assert all(id_.isdigit() and 5 <= len(id_) <= 6 for id_ in ids)
    args = scale_bench.build_parser().parse_args(["--workers", "2", "--samples_per_epoch", "64"])
    assert (args.n_basins, args.workers, args.samples_per_epoch) == (671, 2, 64)


class _OneBatch:
    """The part of WindowData that utils.fit reads, holding one random batch."""

    def __init__(self, n_dynamic: int, n_static: int) -> None:
        self.batch = {
            "x": torch.randn(8, 6, n_dynamic),
            "static": torch.randn(8, n_static),
            "y": torch.randn(8, 1),
            "y_mask": torch.ones(8, 1, dtype=torch.bool),
            "basin": torch.zeros(8, dtype=torch.long),
        }

    def __len__(self) -> int:
        return 8

    def basin_target_std(self) -> torch.Tensor:
        return torch.ones(1)

    def iter_batches(self, batch_size, shuffle=False, generator=None, limit=0, shard=(0, 1)):
        yield self.batch


class _PlainModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(7, 1)

    def forward(self, x, static, n_last=1):
        return self.linear(x[:, -1])


def test_fit_sets_checkpointing_from_settings_and_says_when_it_does_not_apply(sca2lstm_log):
    sca2lstm_log.set_level(logging.INFO, logger="sca2lstm")
    settings = TrainSettings(epochs=1, lr=1e-3, batch_size=8, gradient_checkpointing=True)
    model = SCA2LSTM(model_args("simulate"))
    fit(model, _OneBatch(7, 5), None, settings, torch.device("cpu"))
    assert model.gradient_checkpointing is True
    fit(_PlainModel(), _OneBatch(7, 5), None, settings, torch.device("cpu"))
    assert "GRADIENT_CHECKPOINTING applies to SCA2LSTM; _PlainModel" in sca2lstm_log.text
    fit(
        model,
        _OneBatch(7, 5),
        None,
        replace(settings, gradient_checkpointing=False),
        torch.device("cpu"),
    )
    assert model.gradient_checkpointing is False


def _weights(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_ema_weights_are_the_moving_average_that_is_evaluated_and_kept():
    torch.manual_seed(0)
    settings = TrainSettings(epochs=4, lr=1e-2, batch_size=8, ema_decay=0.5)
    raw, evaluated, ema_states = [], [], []

    def on_epoch(record, model_, is_best, state):
        raw.append({k: v.detach().clone() for k, v in state["model_state_dict"].items()})
        evaluated.append(_weights(model_))
        ema_states.append(int(state["ema_state_dict"]["n_averaged"]))

    model = _PlainModel()
    result = fit(model, _OneBatch(7, 5), None, settings, torch.device("cpu"), on_epoch=on_epoch)
    # one optimiser step per epoch: ema_1 = w_1, ema_k = 0.5 ema_(k-1) + 0.5 w_k
    expected = raw[0]
    for k, weights in enumerate(raw):
        if k:
            expected = {n: 0.5 * expected[n] + 0.5 * weights[n] for n in weights}
        for name in weights:
            torch.testing.assert_close(evaluated[k][name], expected[name])
        assert ema_states[k] == k + 1
    assert not torch.equal(evaluated[-1]["linear.weight"], raw[-1]["linear.weight"])
    # the weights kept at the end are the averaged ones of the best epoch
    best = evaluated[result.best_epoch - 1]
    for name, value in _weights(model).items():
        torch.testing.assert_close(value, best[name])


def test_ema_with_a_vanishing_decay_trains_like_no_averaging():
    torch.manual_seed(0)
    start, data = _PlainModel(), _OneBatch(7, 5)
    runs = []
    for decay in (None, 1e-9):
        model = copy.deepcopy(start)
        settings = TrainSettings(epochs=3, lr=1e-2, batch_size=8, seed=1, ema_decay=decay)
        fit(model, data, None, settings, torch.device("cpu"))
        runs.append(_weights(model))
    for name in runs[0]:
        torch.testing.assert_close(runs[0][name], runs[1][name], atol=1e-6, rtol=0)


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1"])
def test_ema_decay_outside_the_open_unit_interval_is_rejected(value):
    with pytest.raises(UserError, match="EMA_DECAY must be strictly between 0 and 1"):
        load_config(overrides=[f"EMA_DECAY={value}"])


def test_a_non_finite_training_loss_stops_fit_with_the_epoch_named():
    data = _OneBatch(7, 5)
    data.batch["x"][0, -1, 0] = float("nan")
    settings = TrainSettings(epochs=2, lr=1e-3, batch_size=8)
    with pytest.raises(RuntimeError, match="the training loss became nan in epoch 1"):
        fit(_PlainModel(), data, None, settings, torch.device("cpu"))
