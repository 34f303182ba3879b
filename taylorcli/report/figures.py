"""Every figure, as PNGs sized for a paper column (3.5 in, 200 dpi): the paper's Figures 2 and 3
for one run, its analyses (kernel dynamics, the closed form), and a spawn sweep's summary."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..files import write_owned
from ..names import FULL, is_child
from ..run.reading import Run

WIDTH_IN = 3.5  # one column of a two-column paper
DPI = 200
EARLY_EPOCH = 10.0  # the paper's Figure 3 compares epoch 10 with convergence
STYLE = {
    "font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "legend.fontsize": 7, "lines.linewidth": 1.1,
    "axes.spines.top": False, "axes.spines.right": False,
}
PANELS = (("train_loss", "train loss"), ("test_acc", "test accuracy"),
          ("cos_param", "cos_param(nn, taylor)"), ("cos_func", "cos_func(nn, taylor)"))


def _label(run: Run, model: str) -> str:
    order = run.order_of(model)
    return "full" if order == 0 else f"k={order}"


# Okabe–Ito colours: distinguishable in print, on projectors and for colour-blind readers.
ORDER_COLOURS = ("#E69F00", "#56B4E9", "#009E73", "#D55E00", "#CC79A7", "#0072B2", "#F0E442")


def _colours(run: Run) -> dict[str, str]:
    orders = [m for m in run.models if m != FULL]
    return {m: ORDER_COLOURS[(run.order_of(m) - 1) % len(ORDER_COLOURS)] for m in orders} \
        | {FULL: "#000000"}


def _subplots(rows: int, cols: int, figsize, dpi: int = DPI, **kwargs):
    # A Figure of its own, not pyplot's: no backend is chosen and no global figure list grows,
    # so drawing in a notebook's process leaves its plotting alone.
    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots(rows, cols, **kwargs)


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.02)
    write_owned(path, buf.getvalue())
    return path


def _legend(fig, axes, ncol: int) -> None:
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=ncol, frameon=False,
               bbox_to_anchor=(0.5, 1.0), handlelength=1.6, columnspacing=1.0)


def figure2(run: Run, path: str | Path) -> Path:
    """Train loss, test accuracy, cos_param and cos_func against epochs, one line per model (2x2)."""
    colours = _colours(run)
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(2, 2, figsize=(WIDTH_IN, 3.0), sharex=True)
        for ax, (column, title) in zip(axes.flat, PANELS):
            for model in run.models:
                rows = run.metrics[run.metrics["model"] == model].sort_values("epoch")
                ax.plot(rows["epoch"], rows[column], color=colours[model],
                        label=_label(run, model), lw=1.4 if model == FULL else 1.1,
                        zorder=3 if model == FULL else 2)
                if f"{column}_sd" in rows:  # repeats over seeds: the mean, and ± one sd
                    ax.fill_between(rows["epoch"], rows[column] - rows[f"{column}_sd"],
                                    rows[column] + rows[f"{column}_sd"], color=colours[model],
                                    alpha=0.18, lw=0, zorder=1)
            ax.set_title(title, pad=2)
            ax.grid(alpha=0.25, lw=0.5)
            ax.tick_params(length=2, pad=1.5)
        for ax in axes[1]:
            ax.set_xlabel("epoch", labelpad=1)
        fig.tight_layout(pad=0.3, h_pad=0.6, w_pad=0.8, rect=(0, 0, 1, 0.93))
        _legend(fig, axes, ncol=len(run.models))
        return _save(fig, Path(path))


def early_epoch(run: Run) -> float:
    """Figure 3's early epoch: epoch 10 as in the paper, or the middle of runs of 20 epochs or fewer."""
    epochs = run.layers["epoch"].unique()
    wanted = min(EARLY_EPOCH, epochs.max() / 2)
    before = epochs[(epochs > 0) & (epochs <= wanted + 1e-6)]
    later = epochs[epochs > 0]
    return float(before.max() if len(before) else later.min())


def figure3(run: Run, path: str | Path) -> Path:
    """Relative layer movement ‖θ_l − θ_l(0)‖/‖θ_l(0)‖ per layer, early and at the end, every model."""
    layers = run.layers
    colours = _colours(run)
    names = list(dict.fromkeys(layers["layer"]))  # layers.csv lists them input to output
    final = float(layers["epoch"].max())
    moments = [(early_epoch(run), "epoch {:g}"), (final, "epoch {:g} (end)")]
    if not run.complete:
        moments[1] = (final, "epoch {:g} (last, incomplete)")
    x = np.arange(len(names))
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(1, 2, figsize=(WIDTH_IN, 1.9), sharey=True, squeeze=False)
        for ax, (epoch, title) in zip(axes.flat, moments):
            at = layers[np.isclose(layers["epoch"], epoch, rtol=0, atol=1e-6)]
            for model in run.models:
                rows = at[at["model"] == model].set_index("layer").reindex(names)
                ax.plot(x, rows["relative_distance"], color=colours[model], marker="o",
                        ms=2.2, label=_label(run, model), lw=1.4 if model == FULL else 1.0,
                        zorder=3 if model == FULL else 2)
            ax.set_title(title.format(epoch), pad=2)
            ax.set_xticks(x, [_short(n) for n in names], rotation=90 if len(names) > 5 else 0)
            ax.grid(alpha=0.25, lw=0.5)
            ax.tick_params(length=2, pad=1.5)
        axes[0, 0].set_ylim(bottom=0)  # after plotting: the shared top must fit both panels
        axes[0, 0].set_ylabel("relative layer movement", labelpad=1)
        fig.tight_layout(pad=0.3, w_pad=0.6, rect=(0, 0, 1, 0.86))
        _legend(fig, axes, ncol=len(run.models))
        return _save(fig, Path(path))


def _short(layer: str) -> str:
    # WideResNet layers are paths like 'group1_block0/conv1'; keep them legible at 7 pt.
    return layer.replace("group", "g").replace("_block", "b").replace("shortcut", "sc")


# ---- the analyses' figures ----

def kernel_figure(run: Run, path: str | Path) -> Path | None:
    """Kernel distance from the start, kernel velocity and (where recorded) the relative change
    ‖K_t − K_0‖_F / ‖K_0‖_F against epochs, one line per model."""
    table = _table(run, "kernels.csv")
    if table is None:
        return None
    panels = [("distance_from_start", "kernel distance from start"),
              ("velocity", "kernel velocity (per epoch)")]
    if "relative_change" in table.columns:  # runs before issue 21 do not have it
        panels.append(("relative_change", "‖K − K0‖ / ‖K0‖"))
    return _two_panels(run, table, panels, path)


def closed_form_figure(run: Run, path: str | Path) -> Path | None:
    """Each model's relative logit difference from the closed form, and test accuracies, against epochs."""
    table = _table(run, "closed_form.csv")
    return None if table is None else _two_panels(run, table, [("relative_difference", "‖f − f_closed‖ / ‖f_closed‖"),
                                    ("test_acc", "test accuracy")], path,
                       extra=("closed_form_test_acc", "closed form"))


def _table(run: Run, name: str) -> pd.DataFrame | None:
    path = run.path / name
    return pd.read_csv(path) if path.is_file() else None


def _two_panels(run: Run, table: pd.DataFrame, panels, path, extra=None) -> Path:
    colours = _colours(run)
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(1, len(panels), figsize=(WIDTH_IN, 1.8), squeeze=False)
        for ax, (column, title) in zip(axes.flat, panels):
            for model in run.models:
                rows = table[table["model"] == model].sort_values("epoch")
                ax.plot(rows["epoch"], rows[column], color=colours.get(model, "#777777"),
                        label=_label(run, model), lw=1.4 if model == FULL else 1.1)
            ax.set_title(title, pad=2)
            ax.set_xlabel("epoch", labelpad=1)
            ax.grid(alpha=0.25, lw=0.5)
            ax.tick_params(length=2, pad=1.5)
        if extra is not None:
            rows = table[table["model"] == FULL].sort_values("epoch")
            axes[0, 1].plot(rows["epoch"], rows[extra[0]], color="#777777", ls="--", lw=1.0,
                            label=extra[1])
            axes[0, 1].legend(frameon=False, fontsize=5.5, handles=axes[0, 1].lines[-1:])
        fig.tight_layout(pad=0.3, w_pad=0.8, rect=(0, 0, 1, 0.85))
        _legend(fig, axes, ncol=len(run.models))
        return _save(fig, Path(path))


# ---- a spawn sweep ----

def spawn_figure(parent: Run, summary: pd.DataFrame, children: pd.DataFrame,
                 path: str | Path) -> Path:
    """Left: each spawned model's final test error against spawn epoch, the parent's dashed.
    Right (with children): barrier, function-space and ReLU-pattern distance against spawn epoch."""
    panels = 2 if not children.empty else 1
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(1, panels, figsize=(WIDTH_IN * panels / 1.4, 2.3), dpi=DPI,
                                 squeeze=False)
        ax = axes[0, 0]
        kinds = [k for k in summary["model"].unique() if not is_child(k)]
        for i, kind in enumerate(kinds):
            rows = summary[summary["model"] == kind]
            colour = "#000000" if kind == FULL else ORDER_COLOURS[i % len(ORDER_COLOURS)]
            ax.plot(rows["spawn_epoch"], rows["test_err"], marker="o", markersize=2.5,
                    color=colour, label="full (continued)" if kind == FULL else f"spawned {kind}")
        final = parent.final()["test_acc"]
        ax.axhline(1 - float(final[FULL]), color="#000000", linestyle="--", linewidth=0.8,
                   label="parent full, final")
        ax.set_xlabel("spawn epoch")
        ax.set_ylabel("final test error")
        ax.legend(frameon=False, fontsize=5.5)
        if panels == 2:
            ax = axes[0, 1]
            for column, colour in zip(("barrier", "function_distance", "relu_distance"),
                                      ORDER_COLOURS):
                ax.plot(children["spawn_epoch"], children[column], marker="o", markersize=2.5,
                        color=colour, label=column.replace("_", " "))
            ax.set_xlabel("spawn epoch")
            ax.set_ylabel("between children")
            ax.legend(frameon=False, fontsize=5.5)
        fig.tight_layout()
        return _save(fig, Path(path))


# ---- Figure 1: the trajectories in function space ----

def figure1(run: Run, path: str | Path, max_examples: int = 2000) -> Path | None:
    """Each model's test logits at every evaluation, projected on the 2-D principal plane of the
    full network's trajectory, all models on the same axes, start and end marked.

    None when the run saved no logits (eval.save_logits: false) or has no full network.
    """
    from ..metrics import trajectory_projection

    steps = sorted(int(s) for s in run.metrics.loc[run.metrics["model"] == FULL, "step"].unique())
    points = {}
    for step in steps:
        try:
            logits = run.logits(step)
        except Exception:  # noqa: BLE001 - an evaluation whose logits were not saved
            continue
        points[step] = logits
    if len(points) < 2 or any(FULL not in v for v in points.values()):
        return None
    models = [m for m in run.models if all(m in v for v in points.values())]
    take = lambda a: np.asarray(a)[:max_examples].reshape(-1)
    paths = {m: np.stack([take(points[s][m]) for s in points]) for m in models}
    # a diverged model's logits are not finite: it has no place on the plane (nor, if it is
    # the full network, has the plane itself)
    paths = {m: p for m, p in paths.items() if np.isfinite(p).all()}
    if FULL not in paths:
        return None
    coords, explained = trajectory_projection(paths[FULL], paths)
    colours = _colours(run)
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(1, 1, figsize=(WIDTH_IN, 2.8), squeeze=False)
        ax = axes[0, 0]
        for m in [m for m in models if m != FULL] + [FULL]:
            xy = coords[m]
            ax.plot(xy[:, 0], xy[:, 1], color=colours.get(m, "#777777"), label=_label(run, m),
                    lw=1.4 if m == FULL else 1.0, marker=".", ms=2, zorder=3 if m == FULL else 2)
            ax.plot(*xy[-1], marker="s", ms=3.5, color=colours.get(m, "#777777"), zorder=4)
        ax.plot(*coords[FULL][0], marker="o", ms=5, mfc="white", mec="#000000", zorder=5,
                label="start (θ0, every model)")
        ax.set_xlabel(f"PC 1 of the full network's trajectory ({100 * explained[0]:.0f}%)")
        ax.set_ylabel(f"PC 2 ({100 * explained[1]:.0f}%)")
        ax.grid(alpha=0.25, lw=0.5)
        ax.legend(frameon=False, fontsize=5.5)
        ax.set_title("test logits along training (squares: the end)", pad=2)
        fig.tight_layout(pad=0.3)
        return _save(fig, Path(path))


# ---- Theorem 1: distance against width, log-log ----

def theorem1_figure(distances: pd.DataFrame, slopes: pd.DataFrame, path: str | Path) -> Path:
    """One panel per distance (func_dist, param_dist): each order's largest distance over
    training against width (log-log), mean over seeds with ±1 sd bars, its mean per-seed slope
    and 95% interval in the legend, and the bound's slope −k/2 dashed through the narrowest
    width's point."""
    kinds = [d for d in ("func_dist", "param_dist") if d in set(distances["distance"])]
    titles = {"func_dist": "max over training of ‖f_k − f‖ (RMS, test)",
              "param_dist": "max over training of ‖θ_k − θ‖"}
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(1, len(kinds), figsize=(WIDTH_IN, 2.6), squeeze=False)
        for ax, kind in zip(axes.flat, kinds):
            rows = distances[distances["distance"] == kind].sort_values("width")
            orders = sorted(int(c[5:]) for c in rows.columns
                            if c.startswith("order") and not c.endswith("_sd")
                            and rows[c].notna().any())
            for order in orders:
                colour = ORDER_COLOURS[(order - 1) % len(ORDER_COLOURS)]
                ws = rows["width"].to_numpy(dtype=float)
                ds = rows[f"order{order}"].to_numpy(dtype=float)
                sd = rows.get(f"order{order}_sd", pd.Series(np.nan, index=rows.index))
                s = slopes[(slopes["distance"] == kind) & (slopes["order"] == order)]
                text = f"k={order}"
                if len(s):
                    r = s.iloc[0]
                    text += f": {r['slope']:.2f}" + (
                        f" [{r['slope_low']:.2f}, {r['slope_high']:.2f}]"
                        if np.isfinite(r["slope_low"]) else "")
                ax.errorbar(ws, ds, yerr=np.nan_to_num(sd.to_numpy(dtype=float)), marker="o",
                            ms=3, color=colour, lw=1.0, capsize=1.5, label=text)
                ax.plot(ws, ds[0] * (ws / ws[0]) ** (-order / 2), ls="--", lw=0.8,
                        color=colour)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("width m")
            ax.set_title(titles[kind], pad=2)
            ax.grid(alpha=0.25, lw=0.5, which="both")
            ax.legend(frameon=False, fontsize=5.0, title="slope [95% CI]",
                      title_fontsize=5.0)
        fig.tight_layout(pad=0.3)
        return _save(fig, Path(path))


# ---- the learning-rate search ----

def lr_search_figure(curves: pd.DataFrame, table: pd.DataFrame, path: str | Path) -> Path:
    """Every tried rate's minibatch training loss against steps (smoothed), the chosen one bold."""
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(1, 1, figsize=(WIDTH_IN, 2.4), squeeze=False)
        ax = axes[0, 0]
        verdicts = table.set_index("lr")
        for i, (lr, rows) in enumerate(curves.groupby("lr")):
            loss = rows["loss"].to_numpy(dtype=float)
            window = max(1, len(loss) // 50)
            smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
            chosen = bool(verdicts.loc[lr, "chosen"])
            ax.plot(np.arange(len(smooth)) + window, smooth, lw=1.6 if chosen else 0.9,
                    color=ORDER_COLOURS[i % len(ORDER_COLOURS)],
                    ls="-" if verdicts.loc[lr, "stable"] else ":",
                    label=f"{lr:g}{' (chosen)' if chosen else ''}"
                          f"{'' if verdicts.loc[lr, 'stable'] else ' unstable'}")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (full network)")
        ax.grid(alpha=0.25, lw=0.5)
        ax.legend(frameon=False, fontsize=5.5, title="learning rate", title_fontsize=6)
        fig.tight_layout(pad=0.3)
        return _save(fig, Path(path))
