"""`taylorcli report`: the paper's Tables 1–4 and Figures 2–3, regenerated from run directories.

The paper's numbers ship in results/paper/ (Bai et al. 2020, from the shared reference
tables); results/paper/settings.csv says which recipe reproduces which paper setting. Runs of
other recipes still get Table 1 and 2 rows, with the paper's columns empty.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .compare import (FULL, ReportError, Run, check_format, epoch_tag, load_run, side_by_side,
                      to_csv, to_markdown, value_columns, write_text)
from .analysis_figures import closed_form_figure, kernel_figure
from .figures import early_epoch, figure2, figure3
from .merge import merge_runs
from .recipe import dump_recipe

PAPER_DIR = Path(__file__).resolve().parent.parent / "results" / "paper"
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
    """The paper's tables as shipped in results/paper/ (None for a file that is not there)."""

    folder: Path
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


def load_paper(folder: str | Path = PAPER_DIR) -> Paper:
    """Read the paper's tables from results/paper/."""
    folder = Path(folder)
    tables = {}
    for key, name in PAPER_FILES.items():
        path = folder / name
        tables[key] = pd.read_csv(path) if path.is_file() else None
    return Paper(folder, tables)


def paper_order(label: str) -> int | None:
    """The Taylor order a paper row names ('quadratic (k=2)' -> 2, 'FULL NN' -> 0)."""
    if "full" in label.lower():
        return 0
    m = re.search(r"k\s*=\s*(\d+)", label)
    return int(m.group(1)) if m else None


# ---- one run's setting, in Table 1's terms ----

def architecture(recipe) -> str:
    """Table 1's name for the network: CNN-4-128, WideResNet-16-4-128, MLP-3-512 (+ non-default choices)."""
    m = recipe.model
    name = {"cnn": f"CNN-{m.depth}-{m.width}", "wrn": f"WideResNet-{m.depth}-{m.widen}-{m.width}",
            "mlp": f"MLP-{m.depth}-{m.width}"}[m.arch]
    extra = ([f"{m.activation}"] if m.activation != "relu" else []) + \
        ([f"NTK param (w_std {m.w_std:g}, b_std {m.b_std:g})"] if m.parameterization == "ntk"
         else [])
    return ", ".join([name, *extra])


def optimizer(recipe) -> str:
    """SGD and whatever is added to it: momentum, Nesterov, weight decay, MSE loss."""
    o = recipe.optim
    parts = ["SGD"]
    if o.momentum:
        parts.append(f"momentum {o.momentum:g}" + (" (Nesterov)" if o.nesterov else ""))
    if o.weight_decay:
        parts.append(f"weight decay {o.weight_decay:g}")
    if recipe.train.loss != "cross_entropy":
        parts.append(f"{recipe.train.loss} loss")
    return ", ".join(parts)


def schedule(recipe) -> str:
    """'x0.1 at 100, 150' for step decay, 'constant' otherwise (as the trainer reads the recipe)."""
    o = recipe.optim
    if o.schedule == "constant" or not o.decay_epochs:
        return "constant"
    return f"x{o.decay_factor:g} at {', '.join(str(e) for e in o.decay_epochs)}"


def _parameter_count(recipe) -> float:
    from .costs import parameter_count  # abstract shapes only, but it imports JAX

    try:
        return parameter_count(recipe)
    except Exception:  # noqa: BLE001 - a count we cannot make leaves the cell empty, not the report
        return math.nan


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
    by_name = paper.settings("table1").get(run.recipe.name)
    if by_name or paper.tables["table1"] is None:
        return by_name
    for _, row in paper.tables["table1"].iterrows():
        if not setting_differences(run.recipe, row):
            return str(row["name"])
    return None


# ---- finding runs ----

def find_runs(root: Path, skip: Path | None = None) -> list[Path]:
    """Run directories at or under root: folders holding recipe.yaml or metrics.csv."""
    found = []
    for folder, subdirs, files in os.walk(root):
        here = Path(folder)
        if skip is not None and here.resolve() == skip.resolve():
            subdirs[:] = []
            continue
        if "recipe.yaml" in files or "metrics.csv" in files:
            found.append(here)
            subdirs[:] = []  # logits/ and checkpoints/ hold no runs
            continue
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    return sorted(found)


def _run_name(root: Path, path: Path) -> str:
    return path.name if path == root else path.relative_to(root).as_posix()


# ---- the report ----

@dataclass
class Report:
    """What `taylorcli report` made: its tables (key -> title, table), notes and files written."""

    tables: dict[str, tuple[str, pd.DataFrame]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, list[Path]] = field(default_factory=dict)
    analysis_figures: dict[str, list[Path]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    out: Path | None = None
    runs: list[Run] = field(default_factory=list)


def runs_table(runs: list[Run], broken: dict[str, str], mapped: dict[str, list[str]],
               missing: list[tuple[str, str, str]]) -> pd.DataFrame:
    """Every run found (with its status and paper setting) and every paper setting with no run."""
    rows = [{"run": r.name, "recipe": r.recipe.name, "paper": "; ".join(mapped.get(r.name, [])),
             "status": r.status, "last_epoch": r.last_epoch, "epochs": r.recipe.train.epochs}
            for r in runs]
    rows += [{"run": name, "recipe": "", "paper": "", "status": f"not readable: {why}",
              "last_epoch": math.nan, "epochs": math.nan} for name, why in broken.items()]
    rows += [{"run": "", "recipe": recipe, "paper": f"{table}: {setting}", "status": "missing",
              "last_epoch": math.nan, "epochs": math.nan} for table, setting, recipe in missing]
    return pd.DataFrame(rows, columns=["run", "recipe", "paper", "status", "last_epoch",
                                       "epochs"])


def table1(runs: list[Run], settings: dict[str, str], paper: Paper) -> pd.DataFrame:
    """Each run's setting and its full network's test accuracy (last evaluation), beside the paper's."""
    t1 = paper.tables["table1"]
    rows = []
    for r in runs:
        setting = settings.get(r.name)
        ref = t1[t1["name"] == setting] if setting and t1 is not None else None
        rows.append({
            "run": r.name, "setting": setting or "", "dataset": r.recipe.data.dataset,
            "architecture": architecture(r.recipe), "params": _parameter_count(r.recipe),
            "epochs": r.recipe.train.epochs, "batch": r.recipe.train.batch_size,
            "optimizer": optimizer(r.recipe), "lr": r.recipe.optim.lr,
            "grad_clip": r.recipe.optim.grad_clip, "schedule": schedule(r.recipe),
            "epoch": r.last_epoch, "test_acc": float(r.final()["test_acc"].get(FULL, math.nan)),
            "test_acc_paper": float(ref["full_test_accuracy"].iloc[0])
            if ref is not None and len(ref) else math.nan,
        })
    table = pd.DataFrame(rows, columns=["run", "setting", "dataset", "architecture", "params",
                                        "epochs", "batch", "optimizer", "lr", "grad_clip",
                                        "schedule", "epoch", "test_acc", "test_acc_paper"])
    table["params"] = table["params"].astype("Int64")
    return table


def table2(runs: list[Run], settings: dict[str, str], paper: Paper) -> pd.DataFrame:
    """Final (last evaluated) test accuracy of every model of every run, the paper's beside, and ours − paper."""
    t2 = paper.tables["table2"]
    ref_orders = {} if t2 is None else {paper_order(m): i for i, m in enumerate(t2["model"])}
    rows = []
    for r in runs:
        setting = settings.get(r.name)
        final = r.final()
        for model in r.models:
            order = r.order_of(model)
            ref = math.nan
            if setting and t2 is not None and setting in t2.columns and order in ref_orders:
                ref = float(t2[setting].iloc[ref_orders[order]])
            ours = float(final.loc[model, "test_acc"])
            rows.append({"run": r.name, "setting": setting or "",
                         "model": TABLE2_LABELS.get(order, f"order {order} (k={order})"),
                         "epoch": r.last_epoch, "test_acc": ours, "test_acc_paper": ref,
                         "diff": ours - ref})
    return pd.DataFrame(rows, columns=["run", "setting", "model", "epoch", "test_acc",
                                       "test_acc_paper", "diff"])


def table34(runs: list[Run], key: str, paper: Paper, notes: list[str]) -> pd.DataFrame:
    """Table 3 or 4: the runs of its settings in the paper's layout, each value beside the paper's."""
    ref, epochs = paper.tables[key], paper.epochs(key)
    by_recipe = paper.settings(key)
    rank = {recipe: i for i, recipe in enumerate(by_recipe)}  # the paper's row order
    chosen = sorted((r for r in runs if r.recipe.name in by_recipe),
                    key=lambda r: (rank[r.recipe.name], r.name))
    values = value_columns(epochs)
    laid = side_by_side(chosen, epochs, [by_recipe[r.recipe.name] for r in chosen])
    notes += laid.notes
    table = laid.table
    if ref is not None:
        paper_cols = ref.rename(columns={c: f"{c}_paper" for c in values})
        table = table.merge(paper_cols[["setting", "model", *(f"{c}_paper" for c in values)]],
                            on=["setting", "model"], how="left")
    else:
        table = table.assign(**{f"{c}_paper": math.nan for c in values})
    order = ["setting", "run", "model"] + [c for v in values for c in (v, f"{v}_paper")] \
        + [f"epoch_{epoch_tag(e)}" for e in epochs]
    return table[order]


TABLE_KEYS = {"table1": "table1/2", "table3": "table3", "table4": "table4"}  # key -> label


def paper_mapping(runs: list[Run], t1_settings: dict[str, str], paper: Paper):
    """The paper settings each run reproduces ({run: ['table3: …']}); [(table, setting, recipe)] of none."""
    mapped: dict[str, list[str]] = {}
    for r in runs:
        labels = [f"table1/2: {t1_settings[r.name]}"] if r.name in t1_settings else []
        labels += [f"{key}: {s}" for key in ("table3", "table4")
                   if (s := paper.settings(key).get(r.recipe.name))]
        if labels:
            mapped[r.name] = labels
    have = {label for labels in mapped.values() for label in labels}
    missing = [(table, setting, recipe) for key, table in TABLE_KEYS.items()
               for recipe, setting in paper.settings(key).items()
               if f"{table}: {setting}" not in have]
    return mapped, missing


def run_notes(runs: list[Run], t1_settings: dict[str, str], paper: Paper,
              broken: dict[str, str], missing: list[tuple[str, str, str]]) -> list[str]:
    """What a reader must know beside the tables: incomplete, unreadable or off-setting runs, missing settings."""
    notes = []
    for r in runs:
        if not r.complete:
            notes.append(f"{r.name}: {r.status}; its tables use epoch {r.last_epoch:g}")
        if (setting := t1_settings.get(r.name)) and paper.tables["table1"] is not None:
            row = paper.tables["table1"].set_index("name").loc[setting]
            diffs = setting_differences(r.recipe, row)
            if diffs:
                notes.append(f"{r.name}: its setting differs from the paper's {setting}: "
                             f"{'; '.join(diffs)}")
        if r.layers is None:
            notes.append(f"{r.name}: no layers.csv, so no Figure 3")
    for name, why in broken.items():
        notes.append(f"{name}: skipped ({why})")
    by_table: dict[str, list[str]] = {}
    for table, setting, recipe in missing:
        by_table.setdefault(table, []).append(f"{setting} (recipes/{recipe}.yaml)")
    for table, settings in by_table.items():
        notes.append(f"{table}: no run of the paper's {', '.join(settings)}")
    return notes


def build_report(results_dir: str | Path = "runs", out: str | Path | None = None,
                 paper_dir: str | Path = PAPER_DIR) -> Report:
    """Read every run under results_dir and build the tables and notes (no files written)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ReportError(f"RESULTS_DIR {root}: no such directory")
    out = Path(out) if out is not None else root / "report"
    paths = find_runs(root, skip=out)
    if not paths:
        raise ReportError(f"RESULTS_DIR {root}: no run directories found (folders with "
                          f"recipe.yaml and metrics.csv, as `taylorcli train` writes)")
    runs, broken = [], {}
    for p in paths:
        try:
            runs.append(load_run(p, _run_name(root, p)))
        except ReportError as e:
            broken[_run_name(root, p)] = str(e).removeprefix(f"{p}: ")
    runs, merge_notes = merge_runs(runs)  # subset runs of one recipe, as if in lockstep
    paper = load_paper(paper_dir)
    t1_settings = {r.name: s for r in runs if (s := table1_setting(r, paper))}
    rank = {s: i for i, s in enumerate(paper.settings("table1").values())}
    # The paper's settings first, in its column order; other runs after them, by name.
    runs.sort(key=lambda r: (rank.get(t1_settings.get(r.name), len(rank)), r.name))
    report = Report(out=out, runs=runs)
    notes = report.notes
    for key, name in PAPER_FILES.items():
        if paper.tables[key] is None:
            notes.append(f"paper table {paper.folder / name} not found: its columns are empty")

    mapped, missing = paper_mapping(runs, t1_settings, paper)
    notes += run_notes(runs, t1_settings, paper, broken, missing) + merge_notes

    report.tables["runs"] = (TITLES["runs"], runs_table(runs, broken, mapped, missing))
    report.tables["table1"] = (TITLES["table1"], table1(runs, t1_settings, paper))
    report.tables["table2"] = (TITLES["table2"], table2(runs, t1_settings, paper))
    for key in ("table3", "table4"):
        epochs = " and ".join(f"{e:g}" for e in paper.epochs(key)) or "—"
        report.tables[key] = (f"{TITLES[key]}, at epochs {epochs}",
                              table34(runs, key, paper, notes))
    return report


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def write_report(report: Report, fmt: str = "md", results_dir: str | Path = "runs") -> Report:
    """Write figures, recipes and tables (report.md, or runs.csv, table1-4.csv, notes.txt) to report.out."""
    check_format(fmt)
    out = report.out
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    for r in report.runs:
        figs = [figure2(r, out / "figures" / f"figure2_{_slug(r.name)}.png")]
        if r.layers is not None:
            figs.append(figure3(r, out / "figures" / f"figure3_{_slug(r.name)}.png"))
        report.figures[r.name] = figs
        report.files += figs
        extra = [kernel_figure(r, out / "figures" / f"kernels_{_slug(r.name)}.png"),
                 closed_form_figure(r, out / "figures" / f"closed_form_{_slug(r.name)}.png")]
        report.analysis_figures[r.name] = [f for f in extra if f is not None]
        report.files += report.analysis_figures[r.name]
        # A merged run's recipe is its parts' recipe with their models together.
        text = dump_recipe(r.recipe) if r.parts else (r.path / "recipe.yaml").read_text()
        report.files.append(write_text(out / "recipes" / f"{_slug(r.name)}.yaml", text))
    if fmt == "csv":
        for key, (_, table) in report.tables.items():
            report.files.append(write_text(out / f"{key}.csv", to_csv(table)))
        report.files.append(write_text(out / "notes.txt", "".join(f"{n}\n" for n in report.notes)))
    else:
        report.files.append(write_text(out / "report.md", markdown(report, results_dir)))
    return report


def markdown(report: Report, results_dir: str | Path) -> str:
    """The whole report as one Markdown document, figures linked relative to it."""
    runs = report.runs
    parts = [
        "# Taylorized training: tables and figures from runs\n",
        f"From the {len(runs)} run(s) under `{Path(results_dir).as_posix()}`, with the numbers of "
        f"Bai et al. (2020) from `results/paper/` beside ours. Accuracies and cosines are on the "
        f"test set. \"Final\" is a run's last evaluation (its last epoch if incomplete). Tables 3 "
        f"and 4 take each value at the requested epoch, or at the nearest earlier evaluated "
        f"epoch, which the `epoch_epN` columns show. Each run's resolved recipe is in "
        f"`recipes/`.\n",
    ]
    for key, (title, table) in report.tables.items():
        parts.append(f"## {title}\n")
        if table.empty:
            parts.append("No runs of this table's settings (see the notes).\n")
        else:
            parts.append(to_markdown(table))
        if key == "runs":
            parts.append("### Notes\n")
            parts.append("".join(f"- {n}\n" for n in report.notes) or "None.\n")
    parts.append("## Figure 2: training and agreement curves\n")
    parts.append("Train loss (mean over the minibatches since the previous evaluation), test "
                 "accuracy, cos_param and cos_func against epochs; one line per Taylor order "
                 "k and the full network.\n")
    for r in runs:
        rel = report.figures[r.name][0].relative_to(report.out).as_posix()
        parts.append(f"![Figure 2, {r.name}]({rel})\n")
    parts.append("## Figure 3: layer movement\n")
    parts.append("Relative distance from initialization per layer, ‖θ_l − θ_l(0)‖ / "
                 "‖θ_l(0)‖, early in training (epoch 10, as in the paper, or the middle of a "
                 "run of 20 epochs or fewer) and at the end; full network against each order.\n")
    for r in runs:
        if len(report.figures[r.name]) > 1:
            rel = report.figures[r.name][1].relative_to(report.out).as_posix()
            parts.append(f"![Figure 3, {r.name}: epoch {early_epoch(r):g} and "
                         f"{r.layers['epoch'].max():g}]({rel})\n")
    if any(report.analysis_figures.values()):
        parts.append("## Kernel dynamics and the closed form\n")
        parts.append("Where a run computed them (`eval.kernel_n`, `eval.closed_form`): each "
                     "model's empirical NTK distance from its first kernel and the kernel "
                     "velocity; each model's distance from Lee et al.'s closed-form linearized "
                     "trajectory and its test accuracy beside the closed form's.\n")
        for r in runs:
            for fig in report.analysis_figures.get(r.name, []):
                rel = fig.relative_to(report.out).as_posix()
                parts.append(f"![{fig.stem}, {r.name}]({rel})\n")
    return "\n".join(parts)


def report(results_dir: str | Path = "runs", fmt: str = "md", out: str | Path | None = None,
           paper_dir: str | Path = PAPER_DIR) -> Report:
    """`taylorcli report`: build every table and figure from the runs under results_dir and write them."""
    check_format(fmt)
    return write_report(build_report(results_dir, out, paper_dir), fmt, results_dir)
