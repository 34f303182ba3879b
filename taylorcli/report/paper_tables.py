"""The paper's Tables 1–4 from runs, each value beside the paper's, and the notes a reader needs."""

from __future__ import annotations

import math

import pandas as pd

from ..names import FULL
from ..run.reading import Run
from .compare import epoch_tag, side_by_side, value_columns
from .reference import Paper, TABLE2_LABELS, architecture, optimizer, paper_order, schedule, \
    setting_differences

def runs_table(runs: list[Run], broken: dict[str, str], mapped: dict[str, list[str]],
               missing: list[tuple[str, str, str]]) -> pd.DataFrame:
    """Every run found (with its status and paper setting) and every paper setting with no run."""
    rows = [{"run": r.name, "recipe": r.config.name, "paper": "; ".join(mapped.get(r.name, [])),
             "status": r.status, "last_epoch": r.last_epoch, "epochs": r.config.train.epochs}
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
            "run": r.name, "setting": setting or "", "dataset": r.config.data.dataset,
            "architecture": architecture(r.config), "params": r.parameters if r.parameters is not None else math.nan,
            "epochs": r.config.train.epochs, "batch": r.config.train.batch_size,
            "optimizer": optimizer(r.config), "lr": r.config.optim.lr,
            "grad_clip": r.config.optim.grad_clip, "schedule": schedule(r.config),
            "epoch": r.last_epoch, "test_acc": float(r.final()["test_acc"].get(FULL, math.nan)),
            **_spread(r, r.final(), FULL, "test_acc"),
            "test_acc_paper": float(ref["full_test_accuracy"].iloc[0])
            if ref is not None and len(ref) else math.nan,
        })
    spread = ["test_acc_sd", "seeds"] if any(r.seeds for r in runs) else []
    table = pd.DataFrame(rows, columns=["run", "setting", "dataset", "architecture", "params",
                                        "epochs", "batch", "optimizer", "lr", "grad_clip",
                                        "schedule", "epoch", "test_acc", *spread[:1],
                                        "test_acc_paper", *spread[1:]])
    table["params"] = table["params"].astype("Int64")
    return table


def same_as_paper(run: Run, setting: str | None, paper: Paper) -> bool:
    """Whether a run's setting is the paper's own (Table 1's row: dataset, architecture, length,
    batch, optimizer, schedule), so that a difference from the paper's number means something."""
    t1 = paper.tables["table1"]
    if not setting or t1 is None or setting not in set(t1["name"]):
        return False
    return not setting_differences(run.config, t1.set_index("name").loc[setting])


def table2(runs: list[Run], settings: dict[str, str], paper: Paper) -> pd.DataFrame:
    """Final (last evaluated) test accuracy of every model of every run, the paper's beside, and
    ours − paper where the run's setting is the paper's (no `diff` column when none is)."""
    t2 = paper.tables["table2"]
    ref_orders = {} if t2 is None else {paper_order(m): i for i, m in enumerate(t2["model"])}
    rows = []
    for r in runs:
        setting = settings.get(r.name)
        same = same_as_paper(r, setting, paper)
        final = r.final()
        for model in r.models:
            order = r.order_of(model)
            ref = math.nan
            if setting and t2 is not None and setting in t2.columns and order in ref_orders:
                ref = float(t2[setting].iloc[ref_orders[order]])
            ours = float(final.loc[model, "test_acc"])
            rows.append({"run": r.name, "setting": setting or "",
                         "model": TABLE2_LABELS.get(order, f"order {order} (k={order})"),
                         "epoch": r.last_epoch, "test_acc": ours,
                         **_spread(r, final, model, "test_acc"), "test_acc_paper": ref,
                         "diff": ours - ref if same else math.nan})
    spread = ["test_acc_sd", "seeds"] if any(r.seeds for r in runs) else []
    table = pd.DataFrame(rows, columns=["run", "setting", "model", "epoch", "test_acc",
                                        *spread[:1], "test_acc_paper", "diff", *spread[1:]])
    # A difference across settings that differ (digits against CIFAR-10) means nothing.
    return table if table["diff"].notna().any() else table.drop(columns="diff")


def _spread(run: Run, final: pd.DataFrame, model: str, metric: str) -> dict:
    """A repeated run's sample sd of `metric` and its number of seeds (nothing for one run)."""
    if not run.seeds:
        return {}
    sd = final[f"{metric}_sd"].get(model, math.nan) if f"{metric}_sd" in final else math.nan
    return {f"{metric}_sd": float(sd), "seeds": len(run.seeds)}


def table34(runs: list[Run], key: str, paper: Paper, notes: list[str]) -> pd.DataFrame:
    """Table 3 or 4: the runs of its settings in the paper's layout, each value beside the paper's."""
    ref, epochs = paper.tables[key], paper.epochs(key)
    by_recipe = paper.settings(key)
    rank = {recipe: i for i, recipe in enumerate(by_recipe)}  # the paper's row order
    chosen = sorted((r for r in runs if r.config.name in by_recipe),
                    key=lambda r: (rank[r.config.name], r.name))
    values = value_columns(epochs)
    laid = side_by_side(chosen, epochs, [by_recipe[r.config.name] for r in chosen])
    notes += laid.notes
    table = laid.table
    if ref is not None:
        paper_cols = ref.rename(columns={c: f"{c}_paper" for c in values})
        table = table.merge(paper_cols[["setting", "model", *(f"{c}_paper" for c in values)]],
                            on=["setting", "model"], how="left")
    else:
        table = table.assign(**{f"{c}_paper": math.nan for c in values})
    sd = [c for c in table.columns if c.endswith("_sd")]
    order = ["setting", "run", "model"] + [c for v in values for c in (v, f"{v}_sd", f"{v}_paper")
                                           if c in table.columns] \
        + [f"epoch_{epoch_tag(e)}" for e in epochs] + (["seeds"] if sd else [])
    return table[order]


TABLE_KEYS = {"table1": "table1/2", "table3": "table3", "table4": "table4"}  # key -> label


def paper_mapping(runs: list[Run], t1_settings: dict[str, str], paper: Paper):
    """The paper settings each run reproduces ({run: ['table3: …']}); [(table, setting, recipe)] of none."""
    mapped: dict[str, list[str]] = {}
    for r in runs:
        labels = [f"table1/2: {t1_settings[r.name]}"] if r.name in t1_settings else []
        labels += [f"{key}: {s}" for key in ("table3", "table4")
                   if (s := paper.settings(key).get(r.config.name))]
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
            diffs = setting_differences(r.config, row)
            if diffs:
                notes.append(f"{r.name}: its setting differs from the paper's {setting}: "
                             f"{'; '.join(diffs)}")
        if r.layers is None:
            notes.append(f"{r.name}: no layers.csv, so no Figure 3")
    for name, why in broken.items():
        notes.append(f"{name}: skipped ({why})")
    by_table: dict[str, list[str]] = {}
    for table, setting, recipe in missing:
        by_table.setdefault(table, []).append(f"{setting} (bundled recipe {recipe}: "
                                              f"`taylorcli train {recipe}`)")
    for table, settings in by_table.items():
        notes.append(f"{table}: no run of the paper's {', '.join(settings)}")
    return notes


