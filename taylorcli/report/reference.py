"""The papers' reference tables (shipped in taylorcli/paper/data/) and how a run maps onto them.

settings.csv says which recipe reproduces which paper setting; a run of another recipe still
matches Tables 1 and 2 when its setting equals a row of Table 1. Table 1's descriptions of a
setting (architecture, optimizer, schedule) are read off the recipe.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from ..run.reading import Run

PAPER_FILES = {"table1": "table1_recipes.csv", "table2": "table2_final_test_accuracy.csv",
               "table3": "table3_width.csv", "table4": "table4_lr_parameterization.csv",
               "settings": "settings.csv"}
TABLE2_LABELS = {0: "full network", 1: "linearized (k=1)", 2: "quadratic (k=2)",
                 3: "cubic (k=3)", 4: "quartic (k=4)"}
TITLES = {
    "runs": "Runs",
    "table1": "Table 1: settings and the full network's test accuracy",
    "table2": "Table 2: final test accuracy of every model",
    "table3": "Table 3: width (CNNTHIN vs CNNTHICK under one optimization setting)",
    "table4": "Table 4: learning rate and parameterization (CNNTHIN, constant learning rate)",
}


@dataclass
class Paper:
    """The paper's tables as shipped in taylorcli/paper/data/ (None for a file that is not there)."""

    folder: Any
    tables: dict[str, pd.DataFrame | None]

    def settings(self, table: str) -> dict[str, str]:
        """recipe name -> the paper's setting label, for one of table1 (also Table 2), table3, table4."""
        s = self.tables["settings"]
        if s is None:
            return {}
        rows = s[s["table"] == table]
        return dict(zip(rows["recipe"], rows["setting"]))

    def epochs(self, table: str) -> tuple[float, ...]:
        """The epochs a Table 3/4 reports, read from its column names (test_acc_ep10, …)."""
        t = self.tables[table]
        if t is None:
            return ()
        return tuple(float(m.group(1)) for c in t.columns
                     if (m := re.fullmatch(r"test_acc_ep([0-9.]+)", c)))


def paper_folder():
    """The papers' reference tables as shipped in the package (taylorcli/paper/data/)."""
    return resources.files("taylorcli.paper.data")


def load_paper(folder=None) -> Paper:
    """Read the paper's tables (from the package, or from `folder`)."""
    folder = paper_folder() if folder is None else Path(folder)
    tables = {}
    for key, name in PAPER_FILES.items():
        path = folder / name
        tables[key] = pd.read_csv(io.StringIO(path.read_text())) if path.is_file() else None
    return Paper(folder, tables)


def paper_order(label: str) -> int | None:
    """The Taylor order a paper row names ('quadratic (k=2)' -> 2, 'FULL NN' -> 0)."""
    if "full" in label.lower():
        return 0
    m = re.search(r"k\s*=\s*(\d+)", label)
    return int(m.group(1)) if m else None


# ---- one run's setting, in Table 1's terms ----

def architecture(recipe) -> str:
    """Table 1's name for the network: CNN-4-128, WideResNet-16-4-128, MLP-3-512 (+ non-default
    choices), or a user's module by its import path and arguments."""
    m = recipe.model
    if m.arch not in ("cnn", "wrn", "mlp"):
        args = ", ".join(f"{k}={v}" for k, v in m.kwargs.items())
        return f"{m.arch}({args})"
    name = {"cnn": f"CNN-{m.depth}-{m.width}", "wrn": f"WideResNet-{m.depth}-{m.widen}-{m.width}",
            "mlp": f"MLP-{m.depth}-{m.width}"}[m.arch]
    extra = ([f"{m.activation}"] if m.activation != "relu" else []) + \
        ([f"NTK param (w_std {m.w_std:g}, b_std {m.b_std:g})"] if m.parameterization == "ntk"
         else [])
    return ", ".join([name, *extra])


def optimizer(recipe) -> str:
    """SGD or Adam and whatever is added to it: momentum, Nesterov, weight decay, MSE loss."""
    o = recipe.optim
    parts = ["Adam" + (f" (b1 {o.b1:g}, b2 {o.b2:g})" if (o.b1, o.b2) != (0.9, 0.999) else "")
             if o.name == "adam" else "SGD"]
    if o.momentum:
        parts.append(f"momentum {o.momentum:g}" + (" (Nesterov)" if o.nesterov else ""))
    if o.weight_decay:
        parts.append(f"weight decay {o.weight_decay:g}")
    if recipe.train.loss != "cross_entropy":
        parts.append(f"{recipe.train.loss} loss")
    return ", ".join(parts)


def schedule(recipe) -> str:
    """'x0.1 at 100, 150' for step decay, 'cosine', 'warmup 5 + cosine', or 'constant'."""
    o = recipe.optim
    if o.schedule == "cosine":
        return "cosine" + (f" to x{o.final_lr_factor:g}" if o.final_lr_factor else "")
    if o.schedule == "warmup_cosine":
        return f"warmup {o.warmup_epochs} + cosine" + (
            f" to x{o.final_lr_factor:g}" if o.final_lr_factor else "")
    # decay_fractions are read as the epochs they fall on, so a relative schedule on the
    # paper's length reads as the paper's own ("x0.1 at 100, 150")
    at = list(o.decay_epochs) or [f * recipe.train.epochs for f in o.decay_fractions]
    if o.schedule == "constant" or not at:
        return "constant"
    return f"x{o.decay_factor:g} at {', '.join(f'{e:g}' for e in at)}"


def _decay_list(text) -> tuple[int, ...]:
    if not isinstance(text, str) or not text.strip():
        return ()
    return tuple(int(float(x)) for x in text.split(";"))


def setting_differences(recipe, paper_row: pd.Series) -> list[str]:
    """Where a run's setting differs from the paper's Table 1 row: ['epochs 2 (paper 200)', …]."""
    ours = {"dataset": recipe.data.dataset, "architecture": architecture(recipe),
            "epochs": recipe.train.epochs, "batch": recipe.train.batch_size,
            "optimizer": optimizer(recipe), "lr": recipe.optim.lr,
            "grad_clip": recipe.optim.grad_clip, "schedule": schedule(recipe)}
    decay = _decay_list(paper_row["lr_decay_epochs"])
    theirs = {"dataset": "cifar10", "architecture": paper_row["architecture"],
              "epochs": int(paper_row["epochs"]), "batch": int(paper_row["batch_size"]),
              "optimizer": paper_row["optimizer"], "lr": float(paper_row["learning_rate"]),
              "grad_clip": float(paper_row["grad_clip_norm"]),
              "schedule": (f"x{float(paper_row['lr_decay_factor']):g} at "
                           f"{', '.join(map(str, decay))}") if decay else "constant"}
    out = []
    for key, value in ours.items():
        other = theirs[key]
        same = (value is not None and math.isclose(value, other, rel_tol=1e-6)) \
            if isinstance(other, float) else value == other
        if not same:
            out.append(f"{key} {value} (paper {other})")
    return out


def table1_setting(run: Run, paper: Paper) -> str | None:
    """The paper's Table 1/2 column for a run: by recipe name, else by an identical setting."""
    by_name = paper.settings("table1").get(run.config.name)
    if by_name or paper.tables["table1"] is None:
        return by_name
    for _, row in paper.tables["table1"].iterrows():
        if not setting_differences(run.config, row):
            return str(row["name"])
    return None


