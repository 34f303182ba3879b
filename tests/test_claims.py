"""The Claims section (report/claims.py) on run directories written by hand, whose numbers make
each verdict known in advance; every mean, sd and interval is recomputed here with scipy or by
hand, never read back from the report's own output."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from conftest import hand_run, run_cli
from taylorcli.recipe import dump_recipe, recipe_from_dict, recipe_to_dict
from taylorcli.report.claims import FAILS, HOLDS, INCONCLUSIVE, Interval, difference, \
    one_sample, verdict
from taylorcli.run.tables import METRICS_COLUMNS

SEEDS = (0, 1, 2)
BASE = ["data.train_limit=128", "data.test_limit=64", "model.width=4", "train.epochs=2"]


def recipe(tiny_dict, *sets) -> dict:
    """The tiny recipe with `--set` values, as a plain dict."""
    return recipe_to_dict(recipe_from_dict(tiny_dict(), "tiny", [*BASE, *sets]))


def set_final(folder: Path, values: dict[str, dict[str, float]]) -> None:
    """Overwrite the last evaluation's metrics of the given models (hand_run's are random)."""
    m = pd.read_csv(folder / "metrics.csv")
    last = m["epoch"] == m["epoch"].max()
    for model, columns in values.items():
        for column, v in columns.items():
            m.loc[last & (m["model"] == model), column] = v
    m.to_csv(folder / "metrics.csv", index=False)


def claims_of(root: Path, tmp_path: Path, cli: bool = False) -> pd.DataFrame:
    """The report's claims on the runs under ROOT: built in memory (no figures drawn), or with
    `cli` by `taylorcli report ROOT` in this process, read back from its claims.csv."""
    if not cli:
        from taylorcli.report.paper_report import build_report

        return build_report(root, tmp_path / "report").claims
    out = tmp_path / "report"
    result = run_cli("report", root, "--out", out)
    assert result.returncode == 0, result.stderr + result.stdout
    md = (out / "report.md").read_text()
    assert "## Claims" in md and md.index("## Claims") > md.index("## Figure 2")
    table = pd.read_csv(out / "claims.csv")
    n = table["verdict"].value_counts()
    assert (f"{len(table)} claims: {n.get(HOLDS, 0)} hold, {n.get(FAILS, 0)} fail, "
            f"{n.get(INCONCLUSIVE, 0)} inconclusive.") in md
    return table


def ci(values) -> tuple[float, float]:
    """scipy's 95% one-sample t interval."""
    r = stats.ttest_1samp(np.asarray(values, float), 0.0).confidence_interval(0.95)
    return float(r.low), float(r.high)


def check(row, values, verdict_wanted, test="paired t"):
    """A claims.csv row against the per-seed values it summarizes."""
    low, high = ci(values)
    assert row["n"] == len(values) and row["test"].startswith(test)
    assert row["mean"] == pytest.approx(np.mean(values), abs=1e-7)
    assert row["sd"] == pytest.approx(np.std(values, ddof=1), rel=1e-5, abs=1e-9)
    assert row["ci_low"] == pytest.approx(low, rel=1e-5, abs=1e-9)
    assert row["ci_high"] == pytest.approx(high, rel=1e-5, abs=1e-9)
    assert row["verdict"] == verdict_wanted, row


def one(table: pd.DataFrame, **match) -> dict:
    """The single row whose columns contain the given texts."""
    rows = table
    for column, text in match.items():
        rows = rows[rows[column].astype(str).str.contains(text, regex=False)]
    assert len(rows) == 1, (match, table[["claim", "setting"]])
    return rows.iloc[0].to_dict()


# ---------------------------------------------------------------------------
# the rule


def test_verdict_rule_on_intervals():
    iv = lambda low, high, n=3: Interval((low + high) / 2, 0.1, n, "t", low, high)
    assert verdict(iv(0.01, 0.2), "greater") == HOLDS
    assert verdict(iv(-0.2, -0.01), "greater") == FAILS
    assert verdict(iv(-0.1, 0.1), "greater") == INCONCLUSIVE
    assert verdict(iv(-0.3, -0.2), "less", threshold=-0.1) == HOLDS
    assert verdict(iv(0.0, 0.1), "less", threshold=-0.1) == FAILS
    assert verdict(iv(-0.005, 0.008), "about", margin=0.01) == HOLDS
    assert verdict(iv(0.02, 0.05), "about", margin=0.01) == FAILS
    assert verdict(iv(0.005, 0.02), "about", margin=0.01) == INCONCLUSIVE
    assert verdict(iv(0.5, 0.6, n=1), "greater") == INCONCLUSIVE  # one seed: no interval


def test_intervals_against_scipy():
    x = [0.31, 0.27, 0.36, 0.30]
    got = one_sample(x)
    assert (got.low, got.high) == pytest.approx(ci(x), rel=1e-9)
    assert got.high - got.mean == pytest.approx(3.182446305284263 * np.std(x, ddof=1) / 2)  # t_{.975,3}
    a, b = {0: 0.9, 1: 0.8, 2: 0.85}, {0: 0.7, 1: 0.72, 2: 0.6}
    paired = difference(a, b)
    assert paired.test == "paired t"
    assert (paired.low, paired.high) == pytest.approx(ci([0.2, 0.08, 0.25]), rel=1e-9)
    welch = difference(a, {5: 0.7, 6: 0.72, 7: 0.6, 8: 0.65})
    want = stats.ttest_ind(list(a.values()), [0.7, 0.72, 0.6, 0.65],
                           equal_var=False).confidence_interval(0.95)
    assert welch.test == "Welch t"
    assert (welch.low, welch.high) == pytest.approx((want.low, want.high), rel=1e-9)
    assert one_sample([0.4]).n == 1 and math.isnan(one_sample([0.4]).low)


# ---------------------------------------------------------------------------
# Bai et al.: orders within a setting, Table 3, Table 4


def test_bai_claims_within_a_setting(tmp_path, tiny_dict):
    """cnnthin: accuracy rises with k (holds), the full network is best (holds), cos_func
    falls with k (fails); another lr: the full network is best on one seed only
    (inconclusive)."""
    acc1, acc2, full = (0.50, 0.55, 0.45), (0.80, 0.82, 0.81), (0.90, 0.93, 0.91)
    cos1, cos2 = (0.70, 0.60, 0.65), (0.60, 0.48, 0.57)
    other = (0.05, -0.05, 0.01)  # full − best order
    for s in SEEDS:
        hand_run(tmp_path / "runs" / f"a_s{s}", recipe(tiny_dict, "name=cnnthin", f"seed={s}"), s)
        set_final(tmp_path / "runs" / f"a_s{s}", {
            "order1": {"test_acc": acc1[s], "cos_func": cos1[s]},
            "order2": {"test_acc": acc2[s], "cos_func": cos2[s]}, "full": {"test_acc": full[s]}})
        hand_run(tmp_path / "runs" / f"b_s{s}", recipe(tiny_dict, "name=cnnthin", f"seed={s}",
                                                       "optim.lr=0.05"), 10 + s)
        set_final(tmp_path / "runs" / f"b_s{s}", {
            "order1": {"test_acc": 0.5}, "order2": {"test_acc": 0.6},
            "full": {"test_acc": 0.6 + other[s]}})
    table = claims_of(tmp_path / "runs", tmp_path, cli=True)
    # two settings of one recipe name: their labels say how they differ
    a = table[table["setting"] == "cnnthin [optim.lr=0.1] (seeds 0,1,2)"]
    assert set(table["setting"]) == {"cnnthin [optim.lr=0.1] (seeds 0,1,2)",
                                     "cnnthin [optim.lr=0.05] (seeds 0,1,2)"}
    assert len(table[table["paper"] == "Bai 2020"]) == 6  # three claims, two settings
    rows = [r for _, r in table.iterrows() if r["claim"] == "the full network is best"]
    lr005 = [r for r in rows if r["mean"] == pytest.approx(np.mean(other))]
    check(lr005[0], list(other), INCONCLUSIVE)
    rises = one(a, claim="test accuracy rises")
    check(rises, np.subtract(acc2, acc1), HOLDS)
    low, high = ci(np.subtract(acc2, acc1))  # the step k=1→2 on its own, in the detail
    assert rises["detail"] == f"k=1→2: {np.mean(np.subtract(acc2, acc1)):+.4f} " \
                              f"[{low:+.4f}, {high:+.4f}] holds"
    check(one(a, claim="cos_func rises"), np.subtract(cos2, cos1), FAILS)
    best = [r for r in rows if r["mean"] != pytest.approx(np.mean(other))][0]
    check(best, np.subtract(full, acc2), HOLDS)


def test_bai_tables_3_and_4(tmp_path, tiny_dict):
    """Table 4: lr 0.01 agrees better than lr 0.1 (holds), NTK against lr 0.1 (inconclusive);
    Table 3 with different seeds per width: Welch's interval, the wider agrees worse (fails)."""
    lr01, lr001, ntk = (0.60, 0.62, 0.58), (0.70, 0.74, 0.69), (0.40, 0.72, 0.63)
    for s in SEEDS:
        for name, sets, cos in (("table4_lr0.1", ["optim.lr=0.1"], lr01),
                                ("table4_lr0.01", ["optim.lr=0.01"], lr001),
                                ("table4_ntk", ["optim.lr=0.1", "model.parameterization=ntk"],
                                 ntk)):
            folder = tmp_path / "runs" / f"{name}_s{s}"
            hand_run(folder, recipe(tiny_dict, f"name={name}", f"seed={s}", *sets), s)
            # both orders the same: the mean over orders is the value itself
            set_final(folder, {"order1": {"cos_func": cos[s]}, "order2": {"cos_func": cos[s]}})
    thin, thick = (0.80, 0.81, 0.79), (0.50, 0.52, 0.51, 0.55)
    for i, c in enumerate(thin):
        folder = tmp_path / "runs" / f"thin{i}"
        hand_run(folder, recipe(tiny_dict, "name=table3_cnnthin", f"seed={i}"), 20 + i)
        set_final(folder, {"order1": {"cos_func": c}, "order2": {"cos_func": c}})
    for i, c in enumerate(thick):
        folder = tmp_path / "runs" / f"thick{i}"
        hand_run(folder, recipe(tiny_dict, "name=table3_cnnthick", "model.width=8",
                                f"seed={10 + i}"), 30 + i)
        set_final(folder, {"order1": {"cos_func": c}, "order2": {"cos_func": c}})
    table = claims_of(tmp_path / "runs", tmp_path)
    check(one(table, claim="a smaller lr agrees better"), np.subtract(lr001, lr01), HOLDS)
    check(one(table, claim="NTK parameterization"), np.subtract(ntk, lr01), INCONCLUSIVE)
    wider = one(table, claim="the wider network agrees better")
    want = stats.ttest_ind(thick, thin, equal_var=False).confidence_interval(0.95)
    assert wider["test"] == "Welch t" and wider["verdict"] == FAILS
    assert wider["mean"] == pytest.approx(np.mean(thick) - np.mean(thin))
    assert (wider["ci_low"], wider["ci_high"]) == pytest.approx((want.low, want.high), rel=1e-6)
    assert "table3_cnnthick" in wider["setting"] and "table3_cnnthin" in wider["setting"]
    # Table 3 and 4 settings get no within-setting claims of their own
    assert not (table["paper"] == "Bai 2020").any()


# ---------------------------------------------------------------------------
# Fort et al., Goldwaser & Ge, Lee et al.: spawned and closed-form runs written by hand


def spawned_run(folder: Path, base: dict, seed: int, at: float, final: dict[str, float],
                barrier: float | None = None) -> None:
    """A spawned run's directory: recipe (spawn.parent, spawn.epoch), metrics at its spawn
    point and its end, children.csv when `barrier` is given."""
    raw = {**base, "seed": seed, "name": f"tiny_spawn{at:g}",
           "spawn": {"parent": f"/runs/parent_s{seed}", "epoch": at,
                     "children": 2 if barrier is not None else 0}}
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(dump_recipe(recipe_from_dict(raw, "hand")))
    total = raw["train"]["epochs"]
    rows = []
    for epoch in (at, total):
        for model, acc in final.items():
            rows.append({"model": model, "order": 1 if "order" in model else 0, "epoch": epoch,
                         "step": int(epoch * 4), "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5,
                         "test_loss": 1.0, "test_acc": acc if epoch == total else 0.1,
                         "cos_param": 1.0, "cos_func": 1.0, "diverged": False})
    pd.DataFrame(rows, columns=METRICS_COLUMNS).to_csv(folder / "metrics.csv", index=False)
    if barrier is not None:
        pd.DataFrame([{"epoch": total, "child_a": "child0", "child_b": "child1",
                       "barrier": barrier, "function_distance": 0.1, "relu_distance": 0.1}]
                     ).to_csv(folder / "children.csv", index=False)


def test_fort_claims(tmp_path, tiny_dict):
    """Spawned at 0, 1 and 3 of 4 epochs over three seeds: later spawns close the gap (holds),
    the spawn at 1 (25% <= 45%) is within a point of the full network (holds); the children's
    barrier is positive early (holds), falls (holds) and is about 0 at epoch 3 (holds)."""
    base = recipe(tiny_dict, "taylor.orders=[1]", "train.epochs=4")
    at0, at1, at3 = (0.50, 0.55, 0.60), (0.898, 0.900, 0.899), (0.90, 0.90, 0.90)
    b0, b3 = (0.05, 0.08, 0.06), (0.001, 0.0, 0.002)
    for s in SEEDS:
        for at, acc, barrier in ((0, at0[s], b0[s]), (1, at1[s], 0.03), (3, at3[s], b3[s])):
            spawned_run(tmp_path / "runs" / f"spawn_s{s}" / f"at{at}", base, s, at,
                        {"full": 0.9, f"spawn@{at}/order1": acc, "child0": 0.9, "child1": 0.9},
                        barrier)
    table = claims_of(tmp_path / "runs", tmp_path)
    fort = table[table["paper"] == "Fort 2020"]
    assert len(fort) == 5
    check(one(fort, claim="closes the gap"), np.subtract(at3, at0), HOLDS)
    check(one(fort, claim="matches the full network"), np.subtract(0.9, at1), HOLDS)
    check(one(fort, claim="positive when spawned early"), b0, HOLDS, "one-sample t")
    check(one(fort, claim="falls with spawn time"), np.subtract(b0, b3), HOLDS)
    check(one(fort, claim="about 0"), b3, HOLDS, "one-sample t")


def test_fort_barrier_claims_that_fail(tmp_path, tiny_dict):
    """A barrier that is 0 early and 5 points late: it does not fall (fails) and is not about 0
    late (fails); positive early is inconclusive (0.000, 0.001, 0.000 straddles nothing: its
    interval reaches below 0)."""
    base = recipe(tiny_dict, "taylor.orders=[1]", "train.epochs=4")
    b0, b3 = (0.0, 0.001, 0.0), (0.05, 0.06, 0.055)
    for s in SEEDS:
        for at, barrier in ((0, b0[s]), (3, b3[s])):
            spawned_run(tmp_path / "runs" / f"spawn_s{s}" / f"at{at}", base, s, at,
                        {"full": 0.9, f"spawn@{at}/order1": 0.8}, barrier)
    table = claims_of(tmp_path / "runs", tmp_path)
    check(one(table, claim="positive when spawned early"), b0, INCONCLUSIVE, "one-sample t")
    check(one(table, claim="falls with spawn time"), np.subtract(b0, b3), FAILS)
    check(one(table, claim="about 0"), b3, FAILS, "one-sample t")


def test_reexpansion_claim(tmp_path, tiny_dict):
    """Goldwaser & Ge: full > every 5 > every 20 > K=∞ on every seed (holds) — the smallest
    step per seed is the sample."""
    base = recipe(tiny_dict, "taylor.orders=[1]", "train.epochs=4")
    accs = {"full": (0.90, 0.92, 0.91), "spawn@0/order1/every5": (0.85, 0.86, 0.85),
            "spawn@0/order1/every20": (0.80, 0.81, 0.79), "spawn@0/order1": (0.60, 0.62, 0.55)}
    for s in SEEDS:
        spawned_run(tmp_path / "runs" / f"re_s{s}" / "at0", base, s, 0,
                    {m: v[s] for m, v in accs.items()})
    table = claims_of(tmp_path / "runs", tmp_path)
    row = one(table, paper="Goldwaser")
    chain = np.array(list(accs.values()))  # rows: full, K=5, K=20, K=∞
    check(row, (-np.diff(chain, axis=0)).min(axis=0), HOLDS)


def test_lee_claims(tmp_path, tiny_dict):
    """Closed-form runs at widths 8 and 32 over three seeds: the linearized model matches the
    closed form (holds), the full network tracks it within 10% at width 32 (holds) but not at 8
    (fails), and the wider tracks it more closely (holds)."""
    lin = (0.001, 0.002, 0.0015)
    full = {8: (0.30, 0.32, 0.31), 32: (0.05, 0.06, 0.055)}
    lee = ["train.loss=mse", "data.pad=0", "optim.grad_clip=null", "model.arch=mlp",
           "model.parameterization=ntk", "taylor.orders=[1]", "optim.schedule=constant",
           "train.batch_size=128", "eval.closed_form=true"]
    for width, values in full.items():
        for s in SEEDS:
            folder = tmp_path / "runs" / f"w{width}_s{s}"
            hand_run(folder, recipe(tiny_dict, *lee, f"model.width={width}", f"seed={s}",
                                    "name=lee"), s)
            m = pd.read_csv(folder / "metrics.csv")
            last = int(m["step"].max())
            pd.DataFrame([{"model": model, "epoch": 2, "step": step, "flow_time": 0.2,
                           "closed_form_test_acc": 0.5, "test_acc": 0.5,
                           "closed_form_train_loss": 0.1,
                           "relative_difference": v if step == last else 9.0,
                           "cos_closed_form": 1.0}
                          for step in (0, last)
                          for model, v in (("full", values[s]), ("order1", lin[s]))]
                         ).to_csv(folder / "closed_form.csv", index=False)
    table = claims_of(tmp_path / "runs", tmp_path)
    lee_rows = table[table["paper"] == "Lee 2019"]
    assert len(lee_rows) == 5
    for width, wanted in ((8, FAILS), (32, HOLDS)):
        rows = lee_rows[lee_rows["claim"] == "the full network tracks its linearization"]
        row = [r for _, r in rows.iterrows() if r["mean"] == pytest.approx(np.mean(full[width]))]
        check(row[0], full[width], wanted, "one-sample t")
    matches = lee_rows[lee_rows["claim"].str.contains("matches the closed form")]
    for _, row in matches.iterrows():
        check(row, lin, HOLDS, "one-sample t")
    check(one(lee_rows, claim="wider network"), np.subtract(full[8], full[32]), HOLDS)
