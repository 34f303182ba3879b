"""The papers' claims, tested on the runs over seeds: one row per claim, with a verdict.

Each claim is a quantity measured once per seed (a difference between two models of one run, or
between two settings at the same seed, or one model's value), summarized as mean ± sample sd
over the seeds with a two-sided 95% Student t interval:

- paired t: when the claim compares two models of the same runs, or two settings run with the
  same seeds, the interval is the one-sample t interval of the per-seed differences
  (mean ± t_{0.975, n−1} · sd / √n), as scipy's `ttest_rel(...).confidence_interval()`;
- Welch t: two settings run with different seeds: the Welch–Satterthwaite interval of the
  difference of their means;
- one-sample t: a single quantity (a barrier, a slope, a distance) against a threshold.

Verdict, for a claim that the quantity lies on one side of a threshold (0 unless said):
**holds** when the whole 95% interval is on the claimed side, **fails** when the whole interval
is on the other side, **inconclusive** otherwise (and always with fewer than two seeds, where
there is no interval). A claim that the quantity is "about 0" (Fort's late barrier) holds when
the interval lies inside ±margin, fails when it lies wholly outside, and is inconclusive
otherwise. A claim that fails at a small scale is a result about that scale, not a defect.

The claims (PAPERS.md):
- Bai et al. 2020, per setting with Taylorized models (classification runs that feed Table 2
  or no table): test accuracy rises with k; the full network is best; cos_func rises with k.
  "Rises with k" is tested on each seed's smallest step, min_k [value(k+1) − value(k)], so it
  holds only if every step up in order is an improvement. Table 3: the wider network agrees
  better (cos_func averaged over the orders, final evaluation). Table 4: a smaller lr and the
  NTK parameterization agree better than standard parameterization at the larger lr (the same).
  Theorem 1: each order's distance (in function and in weight space) decays at least as fast
  as m^(−k/2) (the per-seed log-log slope is at most −k/2: the bound), and decays like
  m^(−k/2) (the slope within ±0.25 of −k/2: the paper's headline reading); report/width_scaling.py;
  only runs in the theorem's setting (arch twolayer, a smooth activation, the squared loss).
- Fort et al. 2020, per spawn sweep over seeds: Taylorized models spawned later close the gap
  to the full network; the one spawned at the latest epoch up to 45% of training is within one
  point of it; the children's error barrier is positive when spawned earliest, falls by the
  latest spawn, and is about 0 (within ±0.01) there.
- Lee et al. 2019, per run with the closed form: SGD on the linearized model matches the
  closed form (relative RMS difference of the test logits under 1% at the end); the full
  network tracks it (under 10%); across widths, the wider network tracks it more closely.
- Goldwaser & Ge, per re-expansion sweep: re-expanding every K steps interpolates between the
  full network (K = 1) and the linearized model (K = ∞): accuracy falls at every step up in K.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..names import FULL, model_kind, parse_model_name
from ..recipe import setting_key
from ..run.reading import Run
from .intervals import LEVEL, Interval, difference, one_sample, t_quantile  # noqa: F401
from .width_scaling import seed_slopes

COLUMNS = ["paper", "claim", "setting", "quantity", "mean", "sd", "n", "test", "ci_low",
           "ci_high", "verdict", "detail"]
HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"
# What may differ between the seeds of one setting: the seed, and where a spawned run's
# parent (that seed's own run) lives.
NOT_A_SETTING = ("seed", "spawn.parent", "spawn.child_seeds", "data.mean", "data.std",
                 "model.module_path")
GAP_MARGIN = 0.01  # Fort: "matches" full training: within one point of test accuracy
BARRIER_MARGIN = 0.01  # Fort: a barrier "about 0": within ±1 point of test error
CLOSED_FORM_MATCH = 0.01  # Lee: SGD on the linear model against its closed form
TRACKS = 0.10  # Lee: the full network "tracks" its linearization
RATE_MARGIN = 0.25  # Theorem 1's reading "decays like m^(−k/2)": a slope within ±0.25 of it


def verdict(iv: Interval, side: str, threshold: float = 0.0, margin: float = 0.0) -> str:
    """holds / fails / inconclusive for a claim that the quantity is > (side 'greater'), < (side
    'less') the threshold, or within ±margin of it (side 'about')."""
    if iv.n < 2 or not (np.isfinite(iv.low) and np.isfinite(iv.high)):
        return INCONCLUSIVE
    if side == "greater":
        return HOLDS if iv.low > threshold else FAILS if iv.high < threshold else INCONCLUSIVE
    if side == "less":
        return HOLDS if iv.high < threshold else FAILS if iv.low > threshold else INCONCLUSIVE
    if side == "about":
        lo, hi = threshold - margin, threshold + margin
        if lo < iv.low and iv.high < hi:
            return HOLDS
        return FAILS if iv.low > hi or iv.high < lo else INCONCLUSIVE
    raise ValueError(f"side {side!r}: expected greater, less or about")


def row(paper: str, claim: str, setting: str, quantity: str, iv: Interval, side: str,
        threshold: float = 0.0, margin: float = 0.0, detail: str = "") -> dict:
    """One claim as a table row (COLUMNS)."""
    return {"paper": paper, "claim": claim, "setting": setting, "quantity": quantity,
            "mean": iv.mean, "sd": iv.sd, "n": iv.n, "test": iv.test, "ci_low": iv.low,
            "ci_high": iv.high, "verdict": verdict(iv, side, threshold, margin),
            "detail": detail}


# ---- settings over seeds ----

def claim_key(run: Run) -> str:
    """What the seeds of one setting share: every recipe key but NOT_A_SETTING and storage."""
    return setting_key(run.config, NOT_A_SETTING)


def settings(runs: Sequence[Run]) -> list[Setting]:
    """The runs grouped by setting (claim_key), each group ordered by seed, in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(claim_key(r), []).append(r)
    out = [Setting(sorted(g, key=lambda r: r.config.seed)) for g in groups.values()]
    distinguish(out)
    return out


def label(group: Sequence[Run]) -> str:
    """A setting's label: its recipe name, what sets it apart from other settings of that name
    (set by distinguish()), and its seeds."""
    seeds = ",".join(str(r.config.seed) for r in group)
    extra = getattr(group, "apart", "")
    return f"{group[0].config.name}{f' [{extra}]' if extra else ''} (seeds {seeds})"


class Setting(list):
    """The runs of one setting (a list ordered by seed) and what sets it apart from the other
    settings of the same recipe name (`apart`: 'optim.lr=0.05')."""

    apart = ""


def distinguish(groups: list[Setting]) -> None:
    """Give settings that share a recipe name the keys in which they differ, for their labels."""
    from ..recipe import recipe_to_flat

    by_name: dict[str, list[Setting]] = {}
    for g in groups:
        by_name.setdefault(g[0].config.name, []).append(g)
    for same in by_name.values():
        if len(same) < 2:
            continue
        flats = [recipe_to_flat(g[0].config) for g in same]
        keys = sorted(k for k in flats[0] if not k.startswith(NOT_A_SETTING)
                      and len({repr(f.get(k)) for f in flats}) > 1)
        for g, flat in zip(same, flats):
            g.apart = ", ".join(f"{k}={flat.get(k)}" for k in keys)


def per_seed(group: Sequence[Run], value: Callable[[Run], float]) -> dict[int, float]:
    """value(run) for each seed of a setting (a seed run twice keeps its first run)."""
    out: dict[int, float] = {}
    for r in group:
        out.setdefault(r.config.seed, float(value(r)))
    return out


def _final(run: Run, model: str, metric: str) -> float:
    final = run.final()
    if model not in final.index or metric not in final.columns:
        return math.nan
    return float(final.loc[model, metric])


def _orders(run: Run) -> list[int]:
    """The plain Taylor orders of a (non-spawned) run, ascending."""
    return sorted({int(o) for m, o in run.metrics.groupby("model")["order"].first().items()
                   if parse_model_name(m) is not None and int(o) > 0
                   and parse_model_name(m).spawn_epoch is None
                   and parse_model_name(m).reexpand is None})


def _steps_detail(group, metric: str, orders: list[int]) -> str:
    """Each step up in order on its own: mean [95% interval] and its verdict."""
    parts = []
    for a, b in zip(orders, orders[1:]):
        d = one_sample(list(per_seed(group, lambda r: _final(r, f"order{b}", metric)
                                     - _final(r, f"order{a}", metric)).values()), "paired t")
        ci = f" [{d.low:+.4f}, {d.high:+.4f}]" if np.isfinite(d.low) else ""
        parts.append(f"k={a}→{b}: {d.mean:+.4f}{ci} {verdict(d, 'greater')}")
    return "; ".join(parts)


def _min_step(run: Run, metric: str, orders: list[int]) -> float:
    values = [_final(run, f"order{k}", metric) for k in orders]
    return float(np.min(np.diff(values)))


# ---- Bai et al. 2020 ----

def bai_order_claims(group: Sequence[Run]) -> list[dict]:
    """Accuracy and cos_func rise with k, and the full network is best, for one setting."""
    first = group[0]
    orders = _orders(first)
    if len(orders) < 1 or FULL not in set(first.metrics["model"]):
        return []
    name, rows = label(group), []

    def rises(metric: str, said: str, short: str) -> dict:
        iv = one_sample(list(per_seed(group, lambda r: _min_step(r, metric, orders)).values()),
                        "paired t (min over k)")
        return row("Bai 2020", f"{said} rises with k", name,
                   f"min_k [{short}(k+1) − {short}(k)], final", iv, "greater",
                   detail=_steps_detail(group, metric, orders))

    if len(orders) >= 2:
        rows.append(rises("test_acc", "test accuracy", "acc"))
    best = per_seed(group, lambda r: _final(r, FULL, "test_acc")
                    - max(_final(r, f"order{k}", "test_acc") for k in orders))
    rows.append(row("Bai 2020", "the full network is best", name,
                    "acc(full) − max_k acc(k), final", one_sample(list(best.values()),
                                                                 "paired t"), "greater",
                    detail=f"best order on average: k={_best_order(group, orders)}"))
    if len(orders) >= 2:
        rows.append(rises("cos_func", "cos_func", "cos_func"))
    return rows


def _best_order(group, orders) -> int:
    means = {k: np.mean(list(per_seed(group, lambda r, k=k: _final(r, f"order{k}", "test_acc")
                                      ).values())) for k in orders}
    return max(means, key=means.get)


def mean_cos_func(run: Run) -> float:
    """cos_func at the final evaluation, averaged over the run's Taylor orders."""
    return float(np.mean([_final(run, f"order{k}", "cos_func") for k in _orders(run)]))


def agreement_claim(paper: str, claim: str, better: Sequence[Run], base: Sequence[Run]) -> dict:
    """`better` agrees with its full network more than `base` (cos_func over the orders)."""
    iv = difference(per_seed(better, mean_cos_func), per_seed(base, mean_cos_func))
    return row(paper, claim, f"{label(better)} vs {label(base)}",
               "mean_k cos_func: difference, final", iv, "greater",
               detail=f"{np.mean(list(per_seed(better, mean_cos_func).values())):.4f} vs "
                      f"{np.mean(list(per_seed(base, mean_cos_func).values())):.4f}")


def table3_claims(groups: list[list[Run]], recipes: set[str]) -> list[dict]:
    """Table 3: among its settings, the widest agrees better than the narrowest."""
    chosen = [g for g in groups if g[0].config.name in recipes and _orders(g[0])]
    if len(chosen) < 2:
        return []
    chosen.sort(key=lambda g: g[0].config.model.width)
    return [agreement_claim("Bai 2020 (Table 3)", "the wider network agrees better",
                            chosen[-1], chosen[0])]


def table4_claims(groups: list[list[Run]], recipes: set[str]) -> list[dict]:
    """Table 4: a smaller lr, and the NTK parameterization, agree better than the base setting
    (standard parameterization at the largest lr)."""
    chosen = [g for g in groups if g[0].config.name in recipes and _orders(g[0])]
    standard = [g for g in chosen if g[0].config.model.parameterization == "standard"]
    if not standard:
        return []
    base = max(standard, key=lambda g: g[0].config.optim.lr)
    rows = []
    for g in sorted(standard, key=lambda g: g[0].config.optim.lr):
        if g is not base and g[0].config.optim.lr < base[0].config.optim.lr:
            rows.append(agreement_claim("Bai 2020 (Table 4)", "a smaller lr agrees better", g,
                                        base))
    for g in chosen:
        if g[0].config.model.parameterization == "ntk":
            rows.append(agreement_claim("Bai 2020 (Table 4)",
                                        "the NTK parameterization agrees better", g, base))
    return rows


def in_theorem1_setting(run: Run) -> bool:
    """Whether a run is in Theorem 1's setting: arch twolayer, a smooth activation, MSE."""
    c = run.config
    return c.model.arch == "twolayer" and c.model.activation != "relu" and c.train.loss == "mse"


def theorem1_claims(runs: Sequence[Run]) -> list[dict]:
    """Theorem 1: per width group, order and distance, the bound (the slope is at most −k/2)
    and the headline reading (the distance decays like m^(−k/2): the slope within ±RATE_MARGIN
    of −k/2). Only runs in the theorem's setting (the two-layer network of its Appendix A, a
    smooth activation, the squared loss) are tested: other width sweeps are only tabled."""
    runs = [r for r in runs if in_theorem1_setting(r)]
    rows = []
    for group, slopes in seed_slopes(runs):
        for (distance, order), values in slopes.groupby(["distance", "order"]):
            iv = one_sample(values["slope"].tolist())
            quantity = f"log-log slope of max {distance} against width"
            rows.append(row("Bai 2020 (Theorem 1)",
                            f"order {order}: {distance} decays at least as fast as m^(−{order}/2)",
                            group, quantity, iv, "less", threshold=-order / 2,
                            detail=f"bound −k/2 = {-order / 2:g}; a slope at or below it is "
                                   f"consistent with the bound, not a confirmation of it"))
            rows.append(row("Bai 2020 (Theorem 1)",
                            f"order {order}: {distance} decays like m^(−{order}/2)", group,
                            quantity, iv, "about", threshold=-order / 2, margin=RATE_MARGIN,
                            detail=f"holds within −k/2 ± {RATE_MARGIN:g}"))
    return rows


# ---- Fort et al. 2020 and Goldwaser & Ge ----

def sweep_key(run: Run) -> str:
    """What the spawned runs of one sweep share across spawn epochs and seeds."""
    return setting_key(run.config, NOT_A_SETTING + ("name", "spawn.epoch"))


def _spawned(run: Run, order: int, reexpand=None) -> str:
    return next((m for m in run.metrics["model"].unique()
                 if (p := parse_model_name(m)) is not None and p.spawn_epoch is not None
                 and p.order == order and p.reexpand == reexpand), "")


def _barrier(run: Run) -> float:
    table = run.children
    if table is None or table.empty or "barrier" not in table:
        return math.nan
    last = table[np.isclose(table["epoch"], table["epoch"].max())]
    return float(last["barrier"].mean())


def fort_claims(sweep: Sequence[Run]) -> list[dict]:
    """Fort's claims on one sweep (spawned runs of every spawn epoch and seed)."""
    by_epoch: dict[float, list[Run]] = {}
    for r in sweep:
        by_epoch.setdefault(float(r.config.spawn.epoch), []).append(r)
    epochs = sorted(by_epoch)
    if len(epochs) < 2:
        return []
    first, last = by_epoch[epochs[0]], by_epoch[epochs[-1]]
    total = sweep[0].config.train.epochs
    name = f"{sweep[0].config.name.rsplit('_spawn', 1)[0]} spawned at {', '.join(f'{e:g}' for e in epochs)} " \
           f"(seeds {','.join(str(s) for s in sorted({r.config.seed for r in sweep}))})"
    rows = []
    orders = sorted({p.order for m in sweep[0].metrics["model"].unique()
                     if (p := parse_model_name(m)) is not None and p.spawn_epoch is not None
                     and p.reexpand is None})
    for k in orders:
        acc = lambda r, k=k: _final(r, _spawned(r, k), "test_acc")
        iv = difference(per_seed(last, acc), per_seed(first, acc))
        rows.append(row("Fort 2020", f"order {k} spawned later closes the gap", name,
                        f"acc(order {k} spawned at {epochs[-1]:g}) − acc(spawned at "
                        f"{epochs[0]:g}), final", iv, "greater"))
        early = [e for e in epochs if e <= 0.45 * total]
        if early:
            at = by_epoch[early[-1]]
            gap = per_seed(at, lambda r, k=k: _final(r, FULL, "test_acc") - acc(r))
            rows.append(row("Fort 2020", f"order {k} spawned by 45% of training matches the "
                                         f"full network", name,
                            f"acc(full) − acc(order {k} spawned at {early[-1]:g} = "
                            f"{100 * early[-1] / total:.0f}%), final",
                            one_sample(list(gap.values()), "paired t"), "less",
                            threshold=GAP_MARGIN,
                            detail=f"holds if the gap is under {GAP_MARGIN:g}"))
    barrier_first = per_seed(first, _barrier)
    if any(np.isfinite(v) for v in barrier_first.values()):
        barrier_last = per_seed(last, _barrier)
        rows.append(row("Fort 2020", "the children's barrier is positive when spawned early",
                        name, f"barrier of children spawned at {epochs[0]:g}",
                        one_sample(list(barrier_first.values())), "greater"))
        rows.append(row("Fort 2020", "the children's barrier falls with spawn time", name,
                        f"barrier(spawned at {epochs[0]:g}) − barrier(at {epochs[-1]:g})",
                        difference(barrier_first, barrier_last), "greater"))
        rows.append(row("Fort 2020", "the children's barrier is about 0 when spawned late",
                        name, f"barrier of children spawned at {epochs[-1]:g}",
                        one_sample(list(barrier_last.values())), "about",
                        margin=BARRIER_MARGIN, detail=f"holds within ±{BARRIER_MARGIN:g}"))
    return rows


def reexpansion_claims(sweep: Sequence[Run]) -> list[dict]:
    """Goldwaser & Ge: accuracy falls from the full network through every K to K = ∞."""
    rows = []
    for at, group in _by_spawn_epoch(sweep).items():
        first = group[0]
        kinds = [parse_model_name(m) for m in first.metrics["model"].unique()]
        for order in sorted({p.order for p in kinds if p is not None and p.reexpand is not None}):
            every = sorted(p.reexpand[1] for p in kinds if p is not None and p.order == order
                           and p.reexpand is not None and p.reexpand[0] == "every")
            if not every:
                continue
            chain = [FULL] + [f"order{order}/every{k}" for k in every] + [f"order{order}"]
            labels = ["full (K=1)"] + [f"K={k}" for k in every] + ["K=∞"]

            def accs(r: Run) -> list[float]:
                by_kind = {model_kind(m): m for m in r.metrics["model"].unique()}
                return [_final(r, by_kind.get(c, ""), "test_acc") for c in chain]

            iv = one_sample(list(per_seed(group, lambda r: float(np.min(-np.diff(accs(r))))
                                          ).values()), "paired t (min over steps in K)")
            means = np.mean([accs(r) for r in group], axis=0)
            rows.append(row("Goldwaser & Ge", f"re-expanding order {order} every K steps "
                                              f"interpolates between the full and the "
                                              f"linearized network",
                            f"{first.config.name} spawned at {at:g} "
                            f"(seeds {','.join(str(r.config.seed) for r in group)})",
                            "min over steps up in K of [acc(smaller K) − acc(larger K)], final",
                            iv, "greater",
                            detail="; ".join(f"{lab} {m:.4f}" for lab, m in zip(labels, means))))
    return rows


def _by_spawn_epoch(sweep: Sequence[Run]) -> dict[float, list[Run]]:
    out: dict[float, list[Run]] = {}
    for r in sorted(sweep, key=lambda r: r.config.seed):
        out.setdefault(float(r.config.spawn.epoch), []).append(r)
    return dict(sorted(out.items()))


# ---- Lee et al. 2019 ----

def _closed_form_final(run: Run, model: str) -> float:
    table = run.closed_form
    if table is None or "relative_difference" not in table:
        return math.nan
    rows = table[table["model"] == model]
    if rows.empty:
        return math.nan
    return float(rows.loc[rows["step"].idxmax(), "relative_difference"])


def lee_claims(groups: list[list[Run]]) -> list[dict]:
    """Lee's claims on the runs that computed the closed form."""
    chosen = [g for g in groups if g[0].closed_form is not None]
    rows = []
    for g in chosen:
        name = label(g)
        if "order1" in set(g[0].metrics["model"]):
            iv = one_sample(list(per_seed(g, lambda r: _closed_form_final(r, "order1")).values()))
            rows.append(row("Lee 2019", "SGD on the linearized model matches the closed form",
                            name, "‖f_lin − f_closed‖ / ‖f_closed‖, test logits, end", iv,
                            "less", threshold=CLOSED_FORM_MATCH,
                            detail=f"holds if under {CLOSED_FORM_MATCH:g}"))
        iv = one_sample(list(per_seed(g, lambda r: _closed_form_final(r, FULL)).values()))
        rows.append(row("Lee 2019", "the full network tracks its linearization", name,
                        "‖f − f_closed‖ / ‖f_closed‖, test logits, end", iv, "less",
                        threshold=TRACKS, detail=f"holds if under {TRACKS:g}"))
    # across widths: settings equal but for the width
    widths: dict[str, list[list[Run]]] = {}
    for g in chosen:
        widths.setdefault(setting_key(g[0].config, NOT_A_SETTING + ("model.width", "name")),
                          []).append(g)
    for same in widths.values():
        if len(same) < 2:
            continue
        same.sort(key=lambda g: g[0].config.model.width)
        narrow, wide = same[0], same[-1]
        gap = lambda r: _closed_form_final(r, FULL)
        rows.append(row("Lee 2019", "the wider network tracks its linearization more closely",
                        f"width {wide[0].config.model.width} vs {narrow[0].config.model.width}",
                        "rel. difference (narrow) − rel. difference (wide), end",
                        difference(per_seed(narrow, gap), per_seed(wide, gap)), "greater"))
    return rows


# ---- all of them ----

def claims_table(runs: Sequence[Run], paper=None) -> pd.DataFrame:
    """Every claim the runs can test, one row each (COLUMNS); empty when none can be tested.

    `runs` are single runs (before repeats are averaged); `paper` the reference tables, which
    name the recipes of Tables 3 and 4 (report/reference.py)."""
    plain = [r for r in runs if r.config.spawn.parent is None]
    spawned = [r for r in runs if r.config.spawn.parent is not None]
    groups = settings(plain)
    t3 = set(paper.settings("table3")) if paper is not None else set()
    t4 = set(paper.settings("table4")) if paper is not None else set()
    rows: list[dict] = []
    for g in groups:
        c = g[0].config
        if c.train.loss == "cross_entropy" and c.name not in t3 | t4:
            rows += bai_order_claims(g)
    rows += table3_claims(groups, t3) + table4_claims(groups, t4)
    rows += theorem1_claims(plain)
    sweeps: dict[str, list[Run]] = {}
    for r in spawned:
        sweeps.setdefault(sweep_key(r), []).append(r)
    for sweep in sweeps.values():
        rows += fort_claims(sweep) + reexpansion_claims(sweep)
    rows += lee_claims(groups)
    return pd.DataFrame(rows, columns=COLUMNS)


RULE = (f"Each quantity is measured once per seed; the table gives its mean ± sample sd over the "
        f"n seeds and a two-sided {LEVEL:.0%} Student t interval (paired t: per-seed "
        f"differences of the same runs or of two settings run with the same seeds; Welch t: "
        f"two settings with different seeds; one-sample t: one quantity). Verdict: holds when "
        f"the whole interval is on the claimed side of the threshold (0 unless the claim says), "
        f"fails when the whole interval is on the other side, inconclusive otherwise and always "
        f"with one seed; an \"about 0\" claim holds when the interval is inside ±margin and "
        f"fails when it is wholly outside. \"Rises with k\" is tested on each seed's smallest "
        f"step up in order. A claim that fails at this scale is a result about this scale.")


def claims_markdown(table: pd.DataFrame) -> str:
    """The Claims section's table for people: mean ± sd, the interval, the verdict."""
    if table.empty:
        return "No claim can be tested on these runs (see the notes).\n"
    counts = table["verdict"].value_counts()
    summary = (f"{len(table)} claims: {counts.get(HOLDS, 0)} hold, {counts.get(FAILS, 0)} fail, "
               f"{counts.get(INCONCLUSIVE, 0)} inconclusive.\n\n")
    head = "| paper | claim | setting | quantity | mean ± sd | n | test | 95% interval | verdict |"
    lines = [head, "| --- | --- | --- | --- | ---: | ---: | --- | --- | --- |"]
    for r in table.itertuples(index=False):
        sd = f" ± {r.sd:.4f}" if np.isfinite(r.sd) else ""
        ci = f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if np.isfinite(r.ci_low) else "—"
        claim = r.claim + (f" ({r.detail})" if r.detail else "")
        cells = [r.paper, claim, r.setting, r.quantity, f"{r.mean:+.4f}{sd}", str(r.n), r.test,
                 ci, f"**{r.verdict}**"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return summary + "\n".join(lines) + "\n"
