"""The rest of the paper: Theorem 1 (func_dist, float64, width scaling), Figure 1's projection,
the learning-rate protocol, and seeds as repeats — each against an independent computation."""

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import TINY, run_cli
from taylorcli.metrics import fit_slope, loss_curve_verdict, trajectory_projection
from taylorcli.recipe import recipe_from_dict
from taylorcli.run.reading import Run, load_run
from taylorcli.run.tables import METRICS_COLUMNS


def taylorcli(*args, cwd=None):
    """The command line, in this process."""
    return run_cli(*args, cwd=cwd)


# ---------------------------------------------------------------------------
# Theorem 1


@pytest.fixture(scope="module")
def float64_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("f64") / "run"
    raw = {**TINY, "name": "theorem1", "data": {**TINY["data"], "pad": 0},
           "model": {"arch": "mlp", "depth": 1, "width": 16, "activation": "tanh",
                     "parameterization": "ntk"},
           "taylor": {"orders": [1, 2, 3]},
           "train": {"epochs": 3, "batch_size": 128, "loss": "mse", "precision": "float64"},
           "optim": {"lr": 0.5, "schedule": "constant", "grad_clip": None}}
    path = out.parent / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = taylorcli("train", path, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_func_dist_is_the_rms_of_the_saved_test_logits(float64_run):
    run = load_run(float64_run)
    assert list(run.metrics.columns[:12]) == METRICS_COLUMNS[:12]  # the contract's order kept
    for step in sorted(run.metrics["step"].unique()):
        logits = run.logits(int(step))
        assert logits["full"].dtype == np.float64  # train.precision: float64
        for model in ("order1", "order2", "order3"):
            want = math.sqrt(np.mean((logits[model] - logits["full"]) ** 2))
            got = run.metrics.set_index(["model", "step"]).loc[(model, step), "func_dist"]
            assert got == pytest.approx(want, rel=1e-7, abs=1e-15)
    final = run.final()
    assert final.loc["full", "func_dist"] == 0


def test_float64_runs_below_float32_resolution(float64_run):
    """Order 3 stays within ~1e-9 of the network on this short run: float32 could not say so."""
    final = load_run(float64_run).final()
    assert 0 < final.loc["order3", "func_dist"] < final.loc["order2", "func_dist"] \
        < final.loc["order1", "func_dist"]
    params = np.load(float64_run / "logits" / "step00000003.npz")["order3"]
    assert params.dtype == np.float64


def test_fit_slope_recovers_a_known_power_law():
    widths = np.array([64, 256, 1024, 4096])
    rng = np.random.default_rng(0)
    for slope in (-0.5, -1.0, -1.5, -2.2):
        values = 3.0 * widths ** slope * np.exp(rng.normal(0, 1e-3, 4))
        assert fit_slope(widths, values) == pytest.approx(slope, abs=0.01)
    assert math.isnan(fit_slope([64], [1.0]))


def _fake_run(path: Path, recipe: dict, rows: list[dict], layers=None) -> Run:
    """A run directory written by hand: recipe.yaml and metrics.csv (and layers.csv)."""
    path.mkdir(parents=True)
    path.joinpath("recipe.yaml").write_text(yaml.safe_dump(recipe))
    pd.DataFrame(rows, columns=METRICS_COLUMNS).to_csv(path / "metrics.csv", index=False)
    if layers is not None:
        pd.DataFrame(layers).to_csv(path / "layers.csv", index=False)
    return load_run(path)


def _rows(values: dict, epochs=(0, 1, 2), spe=4):
    """metrics.csv rows: values[model](epoch) -> dict of metric values."""
    rows = []
    for e in epochs:
        for order, model in enumerate(values):
            v = values[model](e)
            rows.append({"model": model, "order": order, "epoch": e, "step": e * spe, "lr": 0.1,
                         "train_loss": v.get("train_loss", 1.0), "train_acc": 0.5,
                         "test_loss": 1.0, "test_acc": v.get("test_acc", 0.5),
                         "cos_param": v.get("cos_param", 0.9), "cos_func": 0.9,
                         "diverged": False, "func_dist": v.get("func_dist", 0.0)})
    return rows


T975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # Student t quantiles, from tables


def test_report_fits_theorem1_over_seeds_and_both_distances(tmp_path):
    """Hand-made runs over widths 64..4096 and seeds 0-2 whose order-k distances are
    c·m^(slope) with a known slope per seed: func_dist −k/2 + (−0.1, 0, 0.1), param_dist
    −k/2 − 0.5 + (−0.1, 0, 0.1). The report's per-seed slopes, their mean, sd and t interval,
    and its reading against −k/2 are recomputed here by hand."""
    base = recipe_from_dict({"name": "sweep", "model": {"arch": "twolayer", "activation": "tanh"},
                             "train": {"loss": "mse"}}).model_dump()
    shift = {0: -0.1, 1: 0.0, 2: 0.1}
    widths = (64, 256, 1024, 4096)
    for seed, d in shift.items():
        for m in widths:
            recipe = {**base, "seed": seed, "model": {**base["model"], "width": m}}
            values = {"full": lambda e: {},
                      **{f"order{k}": (lambda e, k=k, m=m, d=d: {
                          "func_dist": 0.7 * m ** (-k / 2 + d) * e / 2,
                          "param_dist": 2.0 * m ** (-k / 2 - 0.5 + d) * e / 2})
                         for k in (1, 2, 3)}}
            rows = _rows(values)
            for r in rows:  # _rows does not know param_dist
                r["param_dist"] = values[r["model"]](r["epoch"]).get("param_dist", 0.0)
            _fake_run(tmp_path / "runs" / f"w{m}_s{seed}", recipe, rows)
    # a run of another setting beside them is not part of the group
    _fake_run(tmp_path / "runs" / "other", {**base, "optim": {**base["optim"], "lr": 0.5}},
              _rows({"full": lambda e: {}}))
    # a width sweep outside the theorem's setting (a ReLU MLP) is tabled but not tested
    relu = recipe_from_dict({"name": "relusweep", "model": {"arch": "mlp", "depth": 1}}).model_dump()
    for m in (64, 256):
        for seed in (0, 1):
            recipe = {**relu, "seed": seed, "model": {**relu["model"], "width": m}}
            rows = _rows({"full": lambda e: {}, "order1": lambda e, m=m: {"func_dist": m ** -0.5}})
            _fake_run(tmp_path / "runs" / f"relu_w{m}_s{seed}", recipe, rows)
    proc = taylorcli("report", tmp_path / "runs", "--out", tmp_path / "report", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "report" / "theorem1.csv")
    slopes = pd.read_csv(tmp_path / "report" / "theorem1_slopes.csv")
    table = table[table["group"].str.startswith("sweep ")]
    slopes = slopes[slopes["group"].str.startswith("sweep ")]
    assert sorted(table["width"].unique()) == list(widths) and (table["seeds"] == 3).all()
    for (distance, m), rows in table.groupby(["distance", "width"]):
        for k in (1, 2, 3):
            c, e = (0.7, -k / 2) if distance == "func_dist" else (2.0, -k / 2 - 0.5)
            want = [c * m ** (e + d) for d in shift.values()]  # the maximum: at the last epoch
            assert rows[f"order{k}"].iloc[0] == pytest.approx(np.mean(want), rel=1e-6)
            assert rows[f"order{k}_sd"].iloc[0] == pytest.approx(np.std(want, ddof=1), rel=1e-5)
    half = T975[2] * 0.1 / math.sqrt(3)  # sd of (−0.1, 0, 0.1) is 0.1
    for row in slopes.itertuples():
        centre = -row.order / 2 - (0.5 if row.distance == "param_dist" else 0.0)
        assert row.slope == pytest.approx(centre, abs=1e-6)
        assert row.slope_sd == pytest.approx(0.1, rel=1e-5)
        assert row.slope_low == pytest.approx(centre - half, rel=1e-5)
        assert row.slope_high == pytest.approx(centre + half, rel=1e-5)
        assert row.bound_slope == -row.order / 2 and row.seeds == 3 and row.widths == 4
        # ±0.248 around −k/2 contains it; around −k/2 − 0.5 it lies wholly below
        assert row.reading == (f"consistent with {-row.order / 2:g}" if row.distance == "func_dist"
                               else f"steeper than {-row.order / 2:g}")
    claims = pd.read_csv(tmp_path / "report" / "claims.csv")
    t1 = claims[claims["paper"] == "Bai 2020 (Theorem 1)"]
    assert len(t1) == 12  # two claims, two distances, three orders; none for the ReLU sweep
    assert t1["setting"].str.startswith("sweep ").all()
    for row in t1.itertuples():
        if "at least as fast" in row.claim:  # the bound: slope <= −k/2
            assert row.verdict == ("inconclusive" if "func_dist" in row.claim else "holds")
        else:  # the reading: slope within −k/2 ± 0.25; ±0.248 is inside, −0.5 ± 0.248 outside
            assert row.verdict == ("holds" if "func_dist" in row.claim else "fails")
    assert list((tmp_path / "report" / "figures").glob("theorem1_*.png"))


# ---------------------------------------------------------------------------
# Figure 1


def test_the_projection_is_the_reference_trajectorys_own_pca():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(1)
    ref = np.cumsum(rng.normal(size=(12, 40)), axis=0)
    other = ref + rng.normal(0, 0.3, ref.shape)
    coords, explained = trajectory_projection(ref, {"ref": ref, "other": other})
    pca = PCA(n_components=2).fit(ref)
    for name, points in (("ref", ref), ("other", other)):
        want = pca.transform(points)
        got = coords[name]
        for j in range(2):  # components are defined up to their sign
            assert min(np.abs(got[:, j] - want[:, j]).max(),
                       np.abs(got[:, j] + want[:, j]).max()) < 1e-8
    np.testing.assert_allclose(explained, pca.explained_variance_ratio_, rtol=1e-8)
    assert (coords["ref"][-1] >= 0).all()  # signs fixed: the reference ends at positive PCs


def test_report_draws_figure1_for_a_run_with_saved_logits(float64_run, tmp_path):
    proc = taylorcli("report", float64_run, "--out", tmp_path / "report")
    assert proc.returncode == 0, proc.stderr
    figure = tmp_path / "report" / "figures" / "figure1_run.png"
    assert figure.is_file() and figure.stat().st_size > 5000
    assert "Figure 1" in (tmp_path / "report" / "report.md").read_text()


# ---------------------------------------------------------------------------
# The learning-rate protocol


@pytest.mark.parametrize("curve, stable, why", [
    (np.linspace(2.3, 0.5, 100), True, "decreases smoothly"),
    (np.concatenate([np.linspace(2.3, 1.0, 50), np.linspace(1.4, 0.9, 50)]), False, "rose"),
    (np.concatenate([[2.3, 9.0, 7.0, 5.0], np.linspace(2.2, 1.0, 96)]), False, "above the initial"),
    (np.concatenate([np.linspace(2.3, 1.0, 60), [np.nan] * 40]), False, "not finite from step 61"),
    (np.full(100, 2.3), False, "did not decrease"),
    (np.linspace(2.3, 2.4, 100), False, ""),
])
def test_stability_criterion_on_hand_made_curves(curve, stable, why):
    v = loss_curve_verdict(curve, initial=2.3)
    assert v["stable"] == stable and why in v["reason"], v


@pytest.mark.parametrize("curve, stable, why", [
    # at chance (ln 10) for the first half, then learning fast: decreases, yet near chance
    (np.concatenate([np.full(50, math.log(10)), np.linspace(2.3, 0.3, 50)]), False,
     "near chance at window 5 of 10"),
    # starts above chance (a badly scaled init), falls to chance and sits there
    (np.concatenate([np.linspace(4.0, 2.3, 30), np.full(70, 2.25)]), False, "near chance"),
    # clear of chance by the middle: 1.2 < 0.75 ln 10 = 1.727
    (np.concatenate([np.linspace(2.3, 1.2, 50), np.linspace(1.2, 0.5, 50)]), True,
     "decreases smoothly"),
])
def test_a_rate_must_leave_chance_by_the_middle_of_the_trial(curve, stable, why):
    v = loss_curve_verdict(curve, initial=curve[0], chance=math.log(10))
    assert v["stable"] == stable and why in v["reason"], v
    # the middle window's mean and the threshold, computed by hand
    assert v["clear_window_loss"] == pytest.approx(np.mean(curve[40:50]))
    assert v["clear_threshold"] == pytest.approx(0.75 * min(curve[0], math.log(10)))


def test_rises_are_measured_on_the_initial_losss_scale():
    """0.032 -> 0.039 late in a trial is a 21% relative rise and minibatch noise, not an
    instability (it rejected digits' lr 0.316 before); 0.4 -> 0.9 is one."""
    tail = np.concatenate([np.linspace(2.3, 0.05, 60), np.full(10, 0.032), np.full(10, 0.039),
                           np.full(20, 0.02)])
    assert loss_curve_verdict(tail, initial=2.3, chance=math.log(10))["stable"]
    jump = np.concatenate([np.linspace(2.3, 0.4, 60), np.full(10, 0.9), np.full(30, 0.3)])
    v = loss_curve_verdict(jump, initial=2.3, chance=math.log(10))
    rise = (0.9 - jump[50:60].mean()) / 2.3  # window 7 against window 6, by hand: 15%
    assert not v["stable"] and v["largest_rise"] == pytest.approx(rise)
    assert f"rose by {100 * rise:.0f}% of the initial loss from window 6 to 7" in v["reason"]


def test_noise_within_the_tolerance_is_stable():
    rng = np.random.default_rng(2)
    curve = np.linspace(2.3, 1.0, 200) * (1 + rng.normal(0, 0.03, 200))  # per-step noise
    assert loss_curve_verdict(curve, initial=2.3)["stable"]


def test_lr_search_chooses_the_largest_stable_rate(tmp_path):
    raw = {**TINY, "train": {"epochs": 3, "batch_size": 32}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = taylorcli("lr-search", path, "--lrs", "0.05,0.2,1000", "--epochs", "2", "--out",
                     tmp_path / "lr")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "lr" / "lr_search.csv")
    curves = pd.read_csv(tmp_path / "lr" / "lr_curves.csv")
    assert list(table["lr"]) == [0.05, 0.2, 1000]
    assert not table.set_index("lr").loc[1000, "stable"]  # so large that it blows up
    for lr, rows in curves.groupby("lr"):
        v = loss_curve_verdict(rows["loss"].to_numpy(),
                               table.set_index("lr").loc[lr, "initial_loss"],
                               chance=math.log(10))
        assert v["stable"] == table.set_index("lr").loc[lr, "stable"]  # the verdict, recomputed
    stable = table[table["stable"]]["lr"]
    assert table[table["chosen"]]["lr"].tolist() == ([stable.max()] if len(stable) else [])
    assert (tmp_path / "lr" / "lr_search.png").is_file()
    bad = taylorcli("lr-search", path, "--lrs", "0.1,-1")
    assert bad.returncode == 2 and "--lrs" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------------------
# Seeds


def test_repeats_over_seeds_are_mean_and_sd_in_the_tables(tmp_path):
    """Three hand-made runs of one recipe with seeds 0, 1, 2: report and compare show the mean
    ± the sample sd over the seeds (pandas computes the same here), a fourth run apart."""
    base = recipe_from_dict({"name": "digits", "taylor": {"orders": [1]}}).model_dump()
    accs = {0: (0.90, 0.50), 1: (0.92, 0.55), 2: (0.95, 0.40)}
    for seed, (full, lin) in accs.items():
        values = {"full": lambda e, a=full: {"test_acc": a * e / 2},
                  "order1": lambda e, a=lin: {"test_acc": a * e / 2, "cos_param": 0.1 * e}}
        _fake_run(tmp_path / "runs" / f"s{seed}", {**base, "seed": seed}, _rows(values))
    _fake_run(tmp_path / "runs" / "lr", {**base, "optim": {**base["optim"], "lr": 0.3}},
              _rows({"full": lambda e: {"test_acc": 0.3}, "order1": lambda e: {}}))
    proc = taylorcli("report", tmp_path / "runs", "--out", tmp_path / "report", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    t2 = pd.read_csv(tmp_path / "report" / "table2.csv")
    grouped = t2[t2["seeds"] == 3]
    frame = pd.DataFrame([{"model": m, "acc": a} for s, pair in accs.items()
                          for m, a in zip(("full network", "linearized (k=1)"), pair)])
    want = frame.groupby("model")["acc"].agg(["mean", "std"])  # pandas: ddof=1
    for _, row in grouped.iterrows():
        assert row["test_acc"] == pytest.approx(want.loc[row["model"], "mean"])
        assert row["test_acc_sd"] == pytest.approx(want.loc[row["model"], "std"])
    assert set(t2["run"]) == {"s0+s1+s2", "lr"}
    md = taylorcli("report", tmp_path / "runs", "--out", tmp_path / "md")
    assert md.returncode == 0
    assert f"{want.loc['full network', 'mean']:.4f} ± {want.loc['full network', 'std']:.4f}" in \
        (tmp_path / "md" / "report.md").read_text()
    cmp = taylorcli("compare", *(tmp_path / "runs" / f"s{s}" for s in accs), "--epochs", "1,2",
                    "--format", "csv")
    assert cmp.returncode == 0, cmp.stderr
    table = pd.read_csv(io.StringIO(cmp.stdout))
    lin = table[table["model"] == "LIN (k=1)"].iloc[0]
    assert lin["cos_param_ep1"] == pytest.approx(0.1) and lin["cos_param_ep1_sd"] == pytest.approx(0)
    assert lin["test_acc_ep2"] == pytest.approx(np.mean([0.50, 0.55, 0.40]))
    assert lin["seeds"] == 3


def test_two_recipes_of_one_setting_are_averaged_each_over_its_own_seeds(tmp_path):
    """cnnthick and table3_cnnthick are the same setting under two names (Table 3 reuses
    CNNTHICK's): seeds 0-2 of each are two averaged runs, not six runs left apart."""
    base = recipe_from_dict({"name": "cnnthick", "taylor": {"orders": [1]}}).model_dump()
    for name, offset in (("cnnthick", 0.0), ("table3_cnnthick", 0.01)):
        for seed in (0, 1, 2):
            acc = 0.9 + offset + 0.01 * seed
            _fake_run(tmp_path / "runs" / f"{name}_s{seed}", {**base, "name": name, "seed": seed},
                      _rows({"full": lambda e, a=acc: {"test_acc": a},
                             "order1": lambda e: {"test_acc": 0.5}}))
    proc = taylorcli("report", tmp_path / "runs", "--out", tmp_path / "report", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    t2 = pd.read_csv(tmp_path / "report" / "table2.csv")
    full = t2[t2["model"] == "full network"].set_index("run")
    assert set(full.index) == {"cnnthick_s0+cnnthick_s1+cnnthick_s2",
                               "table3_cnnthick_s0+table3_cnnthick_s1+table3_cnnthick_s2"}
    assert (full["seeds"] == 3).all()
    assert full.loc["cnnthick_s0+cnnthick_s1+cnnthick_s2", "test_acc"] == pytest.approx(0.91)
    assert full.loc["table3_cnnthick_s0+table3_cnnthick_s1+table3_cnnthick_s2",
                    "test_acc"] == pytest.approx(0.92)
