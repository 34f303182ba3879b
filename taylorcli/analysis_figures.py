"""Figures of a run's extra analyses: kernel dynamics (kernels.csv) and the closed form (closed_form.csv)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from .compare import FULL, Run
from .figures import STYLE, WIDTH_IN, _colours, _label, _legend, _save


def kernel_figure(run: Run, path: str | Path) -> Path | None:
    """Kernel distance from the start and kernel velocity against epochs, one line per model."""
    table = _table(run, "kernels.csv")
    return None if table is None else _two_panels(run, table, [("distance_from_start", "kernel distance from start"),
                                    ("velocity", "kernel velocity (per epoch)")], path)


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
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(WIDTH_IN, 1.8), squeeze=False)
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
