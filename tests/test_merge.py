"""Subset runs (`models=[...]`) merged by report and compare against the lockstep run of the same recipe."""

import io
import math

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from taylorcli.report.compare import compare
from taylorcli.run.reading import load_run
from taylorcli.report.merge import merge_runs
from taylorcli.run.progress import PlainProgress
from taylorcli.recipe import RecipeError
from taylorcli.report.paper_report import build_report
from taylorcli.analyses.training import train_recipe as train

# Large enough a step that the orders visibly part from the full network (cos_param ~0.98).
LR = "optim.lr=0.5"
TOL = 1e-5  # float32 displacements dotted in float64 here, in float32 during training


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_recipe):
    root = tmp_path_factory.mktemp("merge")
    made = {}
    for name, extra in [("lockstep", ()), ("full_only", ("models=[full]",)),
                        ("orders", ("models=[order1, order2]",)),
                        ("order2_lr", ("models=[order2]", "optim.lr=0.3"))]:
        recipe = tiny_recipe(LR, *extra) if name != "order2_lr" else tiny_recipe(*extra)
        train(recipe, str(root / "runs" / name), PlainProgress(stream=io.StringIO()))
        made[name] = root / "runs" / name
    return made


def test_subset_runs_train_exactly_their_models(runs):
    lock = pd.read_csv(runs["lockstep"] / "metrics.csv")
    for name, models in [("full_only", ["full"]), ("orders", ["order1", "order2"])]:
        part = pd.read_csv(runs[name] / "metrics.csv")
        assert sorted(part["model"].unique()) == models
        # Same seeds, data order and augmentation: each model's own numbers are the lockstep's.
        ours = lock[lock["model"].isin(models)].reset_index(drop=True)
        for col in ["train_loss", "train_acc", "test_loss", "test_acc"]:
            np.testing.assert_allclose(part[col], ours[col], rtol=1e-5, atol=1e-6, err_msg=col)
    orders = pd.read_csv(runs["orders"] / "metrics.csv")
    assert orders["cos_param"].isna().all() and orders["cos_func"].isna().all()  # no full here
    assert sorted(p.name for p in (runs["orders"] / "params").iterdir()) == \
        ["step00000000.npz", "step00000004.npz", "step00000008.npz"]
    assert not (runs["lockstep"] / "params").exists()  # ordinary runs stay small


def test_saved_displacements_are_theta_minus_theta0(runs):
    with np.load(runs["orders"] / "params" / "step00000000.npz") as f:
        assert set(f.files) == {"order1", "order2"}
        assert not np.any(f["order1"])  # θ = θ0 at step 0
    with np.load(runs["orders"] / "params" / "step00000008.npz") as f:
        assert np.linalg.norm(f["order2"]) > 0


def test_compare_merges_subset_runs_like_lockstep(runs):
    result = compare([runs["full_only"], runs["orders"], runs["lockstep"]], "1,2")
    table = result.table
    merged = table[table["run"] == "full_only+orders"].set_index("model")
    lock = table[table["run"] == "lockstep"].set_index("model")
    assert list(merged.index) == list(lock.index) == ["LIN (k=1)", "QUAD (k=2)", "FULL NN"]
    for col in ["cos_param_ep1", "cos_param_ep2", "cos_func_ep1", "cos_func_ep2"]:
        np.testing.assert_allclose(merged[col], lock[col], rtol=0, atol=TOL, err_msg=col)
    for col in ["test_acc_ep1", "test_acc_ep2"]:
        assert (merged[col] == lock[col]).all()
    # The cosines are informative here, not all 1: a wrong pairing would show.
    assert lock.loc["LIN (k=1)", "cos_param_ep2"] < 0.999


def test_merge_recomputes_from_files_not_from_the_parts_tables(runs):
    merged, notes = merge_runs([load_run(runs["full_only"]), load_run(runs["orders"])])
    (run,) = merged
    assert run.config.models is None and run.recipe["models"] is None and len(run.parts) == 2
    lock = load_run(runs["lockstep"]).metrics
    got = run.metrics
    assert got[["model", "step"]].equals(lock[["model", "step"]])
    for col in ["cos_param", "cos_func"]:
        np.testing.assert_allclose(got[col], lock[col], rtol=0, atol=TOL, err_msg=col)
    assert got.loc[got["step"] == 0, "cos_param"].isna().all()  # θ = θ0, as in training


def test_report_merges_runs_of_one_recipe_only(runs, tmp_path):
    report = build_report(runs["lockstep"].parent, tmp_path / "out")
    names = [r.name for r in report.runs]
    # order2_lr has another learning rate: it is not a part of the lr=0.5 runs.
    assert sorted(names) == ["full_only+orders", "lockstep", "order2_lr"]
    t2 = report.tables["table2"][1].set_index(["run", "model"])["test_acc"]
    for model in ["full network", "linearized (k=1)", "quadratic (k=2)"]:
        assert t2[("full_only+orders", model)] == t2[("lockstep", model)]
    lone = next(r for r in report.runs if r.name == "order2_lr")
    assert lone.models == ["order2"] and math.isnan(float(lone.final()["cos_func"].iloc[0]))


def test_report_cli_writes_merged_recipe(runs, tmp_path):
    result = run_cli("report", str(runs["lockstep"].parent), "--out",
                                      str(tmp_path / "r"), "--format", "csv")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "r" / "recipes" / "full_only_orders.yaml").read_text()
    assert "models: null" in text


@pytest.mark.parametrize("value,needle", [
    ("[order7]", "from full, order1, order2"),
    ("[]", "non-empty list"),
    ("[full, full]", "distinct"),
])
def test_bad_models_rejected(tiny_recipe, value, needle):
    with pytest.raises(RecipeError, match="models") as e:
        tiny_recipe(f"models={value}")
    assert needle in str(e.value)


def test_models_need_saved_logits(tiny_recipe):
    with pytest.raises(RecipeError, match="eval.save_logits"):
        tiny_recipe("models=[order1]", "eval.save_logits=false")
