"""Ensembles on the synthetic demo data: sca2lstm.py --ensemble/--seeds, predict.py --ensemble
and fine_train.py on an ensemble manifest.

The members are tiny simulate-mode models trained for one short epoch on one basin, so they
differ (forecast-mode members start as persistence and stay near it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from demo_fixtures import demo_args

import fine_train
import predict
import sca2lstm
from utils import (
    UserError,
    check_ensemble_members,
    compute_metrics,
    load_checkpoint,
    read_ensemble_manifest,
)

SEEDS = (3, 5)
TRAIN = ("--train_basins", "32006", "--val_basins", "32006", "--test_basins", "22001")
TINY_SIMULATE = (
    "--mode", "simulate", "--seq_len", "30", "--set", "PREDICT_LAST_N=10",
    "--set", "LSTM_HIDDEN_DIM=8", "--set", "EMBEDDING_DIM=4",
    "--epochs", "1", "--set", "SAMPLES_PER_EPOCH=256", "--set", "BATCH_SIZE=64",
)  # fmt: skip
CLOSE = {"rel": 1e-6, "abs": 1e-6}  # predictions.csv holds 10 significant digits


def pretrain_argv(demo_dir: Path, work: Path, *extra: str) -> list[str]:
    return demo_args(demo_dir, work, "--device", "cpu", *TRAIN, *TINY_SIMULATE, *extra)


@pytest.fixture(scope="module")
def ensemble(demo_dir, tmp_path_factory) -> dict:
    """One ensemble run of two members (seeds 3 and 5), not a dry run: it publishes pointers."""
    work = tmp_path_factory.mktemp("ensemble")
    result = sca2lstm.main(pretrain_argv(demo_dir, work, "--seeds", ",".join(map(str, SEEDS))))
    return {**result, "work": work}


def predict_argv(demo_dir: Path, work: Path, out: Path, *extra: str) -> list[str]:
    return demo_args(demo_dir, work, "--output_dir", str(out), "--device", "cpu", *extra)


# --------------------------------------------------------------------------- training


def test_ensemble_run_writes_members_and_manifest(ensemble):
    run = ensemble["run_dir"]
    manifest = json.loads((run / "ensemble.json").read_text())
    assert manifest["format"] == "sca2lstm-ensemble" and manifest["stage"] == "pretrain"
    assert manifest["seeds"] == list(SEEDS) and manifest["complete"] is True
    states = []
    for seed, member in zip(SEEDS, manifest["members"], strict=True):
        assert member["checkpoint"] == f"member_{seed}/best_model.pth"  # relative to the manifest
        for name in ("best_model.pth", "last_model.pth", "metrics_test_period.csv", "train.log"):
            assert (run / f"member_{seed}" / name).is_file(), name
        ckpt = load_checkpoint(run / member["checkpoint"])
        assert ckpt["config"]["SEED"] == seed
        assert member["val_nse"] == pytest.approx(ckpt["metrics"]["best_val_nse"])
        assert member["test_nse"]["22001"] == pytest.approx(
            pd.read_csv(run / f"member_{seed}" / "metrics_test_period.csv")
            .set_index("basin")
            .loc[22001, "nse"]
        )
        states.append(ckpt["model_state_dict"])
    # different seeds, different members
    assert not torch.equal(states[0]["head.1.weight"], states[1]["head.1.weight"])
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("member_")) == [
        f"member_{s}" for s in SEEDS
    ]


def test_side_by_side_table_holds_members_their_mean_and_the_ensemble(ensemble):
    run = ensemble["run_dir"]
    side = pd.read_csv(run / "members_vs_ensemble.csv", dtype={"basin": str})
    ens = pd.read_csv(run / "metrics_test_period.csv", dtype={"basin": str})
    assert list(side["basin"]) == list(ens["basin"]) == ["32006", "22001"]
    members = {
        s: pd.read_csv(run / f"member_{s}" / "metrics_test_period.csv", dtype={"basin": str})
        for s in SEEDS
    }
    for metric in ("nse", "kge"):
        cols = [f"{metric}_seed_{s}" for s in SEEDS]
        for s, col in zip(SEEDS, cols, strict=True):
            np.testing.assert_allclose(side[col], members[s][metric], rtol=1e-9)
        np.testing.assert_allclose(side[f"{metric}_member_mean"], side[cols].mean(axis=1))
        np.testing.assert_allclose(side[f"{metric}_ensemble"], ens[metric], rtol=1e-9)
    # the mean of two simulations is not either of them
    assert not np.allclose(side["nse_ensemble"], side["nse_seed_3"], rtol=0, atol=1e-9)
    manifest = json.loads((run / "ensemble.json").read_text())
    assert manifest["ensemble_metrics"]["test_nse"]["22001"] == pytest.approx(
        float(ens.set_index("basin").loc["22001", "nse"])
    )


def test_pointer_is_the_best_member_on_validation(ensemble):
    root = ensemble["work"] / "model_output"
    run = ensemble["run_dir"]
    manifest = json.loads((run / "ensemble.json").read_text())
    best = max(manifest["members"], key=lambda m: m["val_nse"])
    assert manifest["best_member"]["seed"] == best["seed"]
    assert ensemble["checkpoint"] == run / best["checkpoint"]
    pointer = load_checkpoint(root / "sca2lstm.pth")
    chosen = load_checkpoint(run / best["checkpoint"])
    for key, value in chosen["model_state_dict"].items():
        assert torch.equal(pointer["model_state_dict"][key], value), key
    # sca2lstm_ensemble.json is a manifest of the same members, relative to model_output/
    data, members = read_ensemble_manifest(root / "sca2lstm_ensemble.json")
    assert [p.resolve() for p in members] == [p.resolve() for p in ensemble["checkpoints"]]
    assert (root / data["run_dir"]).resolve() == run.resolve()


def test_dry_run_ensemble_leaves_the_pointers(demo_dir, tmp_path):
    out = sca2lstm.main(pretrain_argv(demo_dir, tmp_path, "--ensemble", "2", "--dry-run"))
    assert [m["seed"] for m in out["members"]] == [42, 43]  # SEED, SEED + 1
    root = tmp_path / "model_output"
    assert not (root / "sca2lstm.pth").exists()
    assert not (root / "sca2lstm_ensemble.json").exists()


def test_ensemble_reads_the_basins_once_for_all_members(demo_dir, tmp_path, monkeypatch):
    reads = []
    real = sca2lstm.load_input_data

    def counted(config, data_dir, basins, *args, **kwargs):
        reads.append(list(basins))
        return real(config, data_dir, basins, *args, **kwargs)

    monkeypatch.setattr(sca2lstm, "load_input_data", counted)
    out = sca2lstm.main(pretrain_argv(demo_dir, tmp_path, "--ensemble", "2", "--dry-run"))
    assert len(out["members"]) == 2 and len(reads) == 1


@pytest.mark.parametrize(
    "extra, needle",
    [
        (("--ensemble", "1"), "two or more members"),
        (("--seeds", "1"), "names one seed"),
        (("--seeds", "1,2,1"), "given twice"),
        (("--seeds", "1,x"), "integer seeds"),
        (("--seeds", "1,2", "--seed", "4"), "--seeds only"),
        (("--seeds", "1,2", "--parallel"), "drop --parallel"),
    ],
)
def test_bad_ensemble_flags_are_user_errors_and_leave_nothing(demo_dir, tmp_path, extra, needle):
    with pytest.raises(UserError, match=needle):
        sca2lstm.main(pretrain_argv(demo_dir, tmp_path, *extra))
    assert not (tmp_path / "model_output" / "pretrain").exists()


def test_resume_keeps_finished_members_and_continues_the_others(ensemble, demo_dir, tmp_path):
    run = tmp_path / "interrupted"
    shutil.copytree(ensemble["run_dir"], run)
    with pytest.raises(UserError, match="finished all its members"):
        sca2lstm.main(pretrain_argv(demo_dir, tmp_path, "--resume", str(run)))
    # Member 5 was cut off after its first epoch: last_model.pth, no test scores yet.
    (run / "member_5" / "best_model.pth").unlink()
    (run / "member_5" / "metrics_test_period.csv").unlink()
    kept = (run / "member_3" / "best_model.pth").read_bytes()
    with pytest.raises(UserError, match="seeds"):
        sca2lstm.main(pretrain_argv(demo_dir, tmp_path, "--seeds", "3,4", "--resume", str(run)))
    out = sca2lstm.main(pretrain_argv(demo_dir, tmp_path, "--epochs", "2", "--resume", str(run)))
    assert out["run_dir"] == run
    assert (run / "member_3" / "best_model.pth").read_bytes() == kept
    history = pd.read_csv(run / "member_5" / "history.csv")
    assert list(history["epoch"]) == [1, 2]  # continued, not restarted
    manifest, members = read_ensemble_manifest(run / "ensemble.json")
    assert manifest["complete"] and [p.parent.name for p in members] == ["member_3", "member_5"]


# --------------------------------------------------------------------------- prediction


def test_ensemble_prediction_is_the_mean_of_the_members(ensemble, demo_dir, tmp_path):
    work = ensemble["work"]
    manifest = ensemble["run_dir"] / "ensemble.json"
    res = predict.main(
        predict_argv(demo_dir, work, tmp_path / "ens", "--ensemble", "--model", str(manifest))
    )
    preds = pd.read_csv(res["run_dir"] / "predictions.csv", dtype={"basin": str})
    metrics = pd.read_csv(res["run_dir"] / "metrics.csv", dtype={"basin": str})
    labels = list(metrics["model"])
    assert labels[0] == "ensemble_of_2" and len(labels) == 3  # the ensemble, then each member
    ens = preds[preds["model"] == labels[0]].reset_index(drop=True)
    # Each member predicted on its own through predict.py: the ensemble is their mean.
    sims = []
    for ckpt in ensemble["checkpoints"]:
        single = predict.main(
            predict_argv(demo_dir, work, tmp_path / ckpt.parent.name, "--model", str(ckpt))
        )
        p = pd.read_csv(single["run_dir"] / "predictions.csv", dtype={"basin": str})
        assert list(p["date"]) == list(ens["date"])
        sims.append(p["sim_mm_day"].to_numpy())
        row = metrics[metrics["checkpoint"] == str(ckpt)].iloc[0]
        assert row["nse"] == pytest.approx(float(single["metrics"]["nse"].iloc[0]), **CLOSE)
    sims = np.stack(sims)
    assert not np.allclose(sims[0], sims[1])
    np.testing.assert_allclose(ens["sim_mm_day"], sims.mean(axis=0), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(ens["sim_min_mm_day"], sims.min(axis=0), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(ens["sim_max_mm_day"], sims.max(axis=0), rtol=1e-8, atol=1e-8)
    ref = compute_metrics(ens["obs_mm_day"], sims.mean(axis=0))
    assert metrics.loc[0, "nse"] == pytest.approx(ref["nse"], **CLOSE)
    assert metrics.loc[0, "kge"] == pytest.approx(ref["kge"], **CLOSE)
    # the same number as the ensemble run's own test-period table
    table = pd.read_csv(ensemble["run_dir"] / "metrics_test_period.csv", dtype={"basin": str})
    assert metrics.loc[0, "nse"] == pytest.approx(
        float(table.set_index("basin").loc["22001", "nse"]), **CLOSE
    )
    for name in ("hydrograph_22001.png", "compare_hydrograph_22001.png"):
        assert (res["run_dir"] / name).stat().st_size > 0
    info = json.loads((res["run_dir"] / "metrics.json").read_text())["ensemble"]
    assert len(info["members"]) == 2


def test_glob_and_moved_run_folder(ensemble, demo_dir, tmp_path):
    moved = tmp_path / "elsewhere" / "my_ensemble"
    shutil.copytree(ensemble["run_dir"], moved)
    manifest, members = read_ensemble_manifest(moved / "ensemble.json")
    assert [p.parent.parent for p in members] == [moved, moved]  # relative paths follow the copy
    by_manifest = predict.main(
        predict_argv(
            demo_dir, ensemble["work"], tmp_path / "a", "--ensemble", "--model",
            str(moved / "ensemble.json"), "--no_plots",
        )
    )  # fmt: skip
    by_glob = predict.main(
        predict_argv(
            demo_dir, ensemble["work"], tmp_path / "b", "--ensemble", "--model",
            str(moved / "member_*" / "best_model.pth"), "--no_plots",
        )
    )  # fmt: skip
    assert by_manifest["metrics"]["nse"].iloc[0] == pytest.approx(
        by_glob["metrics"]["nse"].iloc[0], rel=1e-12
    )
    assert all(str(moved) in str(p) for p in by_manifest["checkpoints"])


def test_mismatched_members_are_one_user_error(
    demo_dir, demo_workdir, pretrained_forecast, pretrained_simulate, tmp_path
):
    argv = predict_argv(
        demo_dir, demo_workdir / "forecast", tmp_path, "--ensemble", "--model",
        str(pretrained_forecast), str(pretrained_simulate),
    )  # fmt: skip
    with pytest.raises(UserError, match=r"differ in their mode \(MODE\)"):
        predict.main(argv)
    assert not (tmp_path / "predict").exists() or not any((tmp_path / "predict").iterdir())
    a, b = load_checkpoint(pretrained_simulate), load_checkpoint(pretrained_simulate)
    b["features"] = {**b["features"], "seq_len": 60}
    with pytest.raises(UserError, match=r"window \(SEQ_LEN\).*30.*60"):
        check_ensemble_members([(Path("a.pth"), a), (Path("b.pth"), b)])


@pytest.mark.parametrize(
    "case, needle",
    [
        ("export_weights", "--export_weights with --ensemble"),
        ("twice", "named twice"),
        ("one", "two or more member"),
        ("manifest_without_flag", "add --ensemble"),
    ],
)
def test_bad_ensemble_predictions_are_user_errors(ensemble, demo_dir, tmp_path, case, needle):
    manifest, first = str(ensemble["run_dir"] / "ensemble.json"), str(ensemble["checkpoints"][0])
    argv = {
        "export_weights": ["--ensemble", "--model", manifest, "--export_weights"],
        "twice": ["--ensemble", "--model", first, first],
        "one": ["--ensemble", "--model", first],
        "manifest_without_flag": ["--model", manifest],
    }[case]
    with pytest.raises(UserError, match=needle):
        predict.main(predict_argv(demo_dir, ensemble["work"], tmp_path, *argv))
    assert not (tmp_path / "predict").exists() or not any((tmp_path / "predict").iterdir())


# --------------------------------------------------------------------------- fine-tuning


def test_fine_tune_on_a_manifest_tunes_every_member(ensemble, demo_dir, tmp_path):
    argv = demo_args(
        demo_dir, ensemble["work"], "--output_dir", str(tmp_path), "--device", "cpu",
        "--target_basin", "22001", "--pretrained_model", str(ensemble["run_dir"] / "ensemble.json"),
        "--epochs", "1", "--batch_size", "256", "--start", "1994-01-01",
    )  # fmt: skip
    res = fine_train.main(argv)
    run = res["run_dir"]
    assert run.parent == tmp_path / "fine_tune" / "basin_22001"
    manifest, members = read_ensemble_manifest(run / "ensemble.json")
    assert manifest["stage"] == "fine_tune" and manifest["seeds"] == list(SEEDS)
    assert [p.relative_to(run).as_posix() for p in members] == [
        f"member_{s}/best_model_basin_22001.pth" for s in SEEDS
    ]
    for seed, path, parent in zip(SEEDS, members, ensemble["checkpoints"], strict=True):
        ckpt = load_checkpoint(path)
        assert ckpt["stage"] == "fine_tune" and ckpt["parent"] == str(parent.resolve())
        assert ckpt["config"]["SEED"] == seed  # each member tuned with its own seed
    table = res["metrics"].set_index(["period", "model"])
    # zero-shot, the ensemble is the pretrained one: the pretraining run's test-period score
    pre = pd.read_csv(ensemble["run_dir"] / "metrics_test_period.csv", dtype={"basin": str})
    assert table.loc[("test", "zero_shot"), "nse"] == pytest.approx(
        float(pre.set_index("basin").loc["22001", "nse"]), **CLOSE
    )
    side = pd.read_csv(run / "members_vs_ensemble.csv")
    assert {"nse_seed_3", "nse_seed_5", "nse_member_mean", "nse_ensemble"} <= set(side)
    # predict.py reads the fine-tuned ensemble and scores its basin the same way
    out = predict.main(
        predict_argv(
            demo_dir, ensemble["work"], tmp_path / "p", "--ensemble", "--model",
            str(run / "ensemble.json"), "--no_plots",
        )
    )  # fmt: skip
    row = out["metrics"].iloc[0]
    assert row["basin"] == "22001" and row["model"] == "ensemble_of_2"
    assert row["nse"] == pytest.approx(table.loc[("test", "fine_tuned"), "nse"], **CLOSE)


def test_fine_tune_manifest_refuses_one_seed_and_a_missing_member(ensemble, demo_dir, tmp_path):
    base = demo_args(
        demo_dir, ensemble["work"], "--output_dir", str(tmp_path), "--device", "cpu",
        "--target_basin", "22001",
    )  # fmt: skip
    manifest = ensemble["run_dir"] / "ensemble.json"
    with pytest.raises(UserError, match="drop --seed"):
        fine_train.main([*base, "--pretrained_model", str(manifest), "--seed", "1"])
    broken = tmp_path / "broken"
    shutil.copytree(ensemble["run_dir"], broken)
    (broken / "member_5" / "best_model.pth").unlink()
    with pytest.raises(UserError, match="member_5/best_model.pth missing"):
        fine_train.main([*base, "--pretrained_model", str(broken / "ensemble.json")])
    assert not (tmp_path / "fine_tune").exists()


def test_forecast_ensemble_scores_its_mean_by_lead(demo_dir, tmp_path):
    tiny_forecast = (
        "--seq_len", "10", "--pred_len", "2", "--set", "LSTM_HIDDEN_DIM=8",
        "--set", "EMBEDDING_DIM=4", "--epochs", "1", "--set", "SAMPLES_PER_EPOCH=256",
        "--set", "BATCH_SIZE=64", "--set", "LR=1.0e-2",
    )  # fmt: skip
    argv = demo_args(demo_dir, tmp_path, "--device", "cpu", *TRAIN, *tiny_forecast)
    result = sca2lstm.main([*argv, "--seeds", "3,5"])
    run = result["run_dir"]
    table = pd.read_csv(run / "metrics_by_lead_test_period.csv", dtype={"basin": str})
    pairs = sorted(zip(table["basin"], table["lead"], strict=True))
    assert pairs == [(b, k) for b in ("22001", "32006") for k in (1, 2)]
    manifest = json.loads((run / "ensemble.json").read_text())
    assert manifest["tables"]["ensemble_by_lead"] == "metrics_by_lead_test_period.csv"
    # predict.py scores the same mean over the test period, lead by lead
    res = predict.main(
        predict_argv(
            demo_dir, tmp_path, tmp_path / "pred", "--ensemble",
            "--model", str(run / "ensemble.json"),
            "--start", "1998-01-01", "--end", "2008-12-31", "--basin", "22001",
        )
    )  # fmt: skip
    by_lead = pd.read_csv(res["run_dir"] / "metrics_by_lead.csv", dtype={"basin": str})
    ens = by_lead[by_lead["model"] == "ensemble_of_2"].set_index("lead")
    ours = table[table["basin"] == "22001"].set_index("lead")
    # Lead 1 scores the same days. predict.py scores the forecasts issued inside the range, the
    # run's table every day of the period at every lead, so lead 2 holds one more day there.
    assert ours.loc[1, "n_scored"] == ens.loc[1, "n_scored"]
    assert ours.loc[1, "nse"] == pytest.approx(ens.loc[1, "nse"], **CLOSE)
    assert ours.loc[1, "persistence_nse"] == pytest.approx(ens.loc[1, "persistence_nse"], **CLOSE)
    assert ours.loc[2, "n_scored"] == ens.loc[2, "n_scored"] + 1
    members = [
        pd.read_csv(run / f"member_{s}" / "metrics_by_lead_test_period.csv", dtype={"basin": str})
        for s in (3, 5)
    ]
    assert not np.allclose(members[0]["nse"], members[1]["nse"])  # the members differ
