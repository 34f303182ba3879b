"""The spawn sweep's figure: final test error against spawn epoch (Fort et al. Figure 8)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from .compare import FULL, Run
from .figures import DPI, ORDER_COLOURS, STYLE, WIDTH_IN, _save


def spawn_figure(parent: Run, summary: pd.DataFrame, children: pd.DataFrame,
                 path: str | Path) -> Path:
    """Left: each spawned model's final test error against spawn epoch, the parent's dashed.
    Right (with children): barrier, function-space and ReLU-pattern distance against spawn epoch."""
    panels = 2 if not children.empty else 1
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, panels, figsize=(WIDTH_IN * panels / 1.4, 2.3), dpi=DPI,
                                 squeeze=False)
        ax = axes[0, 0]
        kinds = [k for k in summary["model"].unique() if not k.startswith("child")]
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
