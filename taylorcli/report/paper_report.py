"""`taylorcli report`: every table and figure of the paper regenerated from the runs under a folder.

The paper's numbers ship with the package (taylorcli/paper/data/); report/reference.py says which
run reproduces which paper setting. Runs of other recipes still get Table 1 and 2 rows, with
the paper's columns empty. The report reads run directories only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import __version__
from ..errors import OwnershipError, ReportError, RunDirError
from ..files import OwnedFolder, safe_name
from ..recipe import dump_recipe
from ..run.reading import Run, find_runs, load_run
from .figures import closed_form_figure, early_epoch, figure1, figure2, figure3, kernel_figure, \
    theorem1_figure
from .merge import merge_runs
from .paper_tables import paper_mapping, run_notes, runs_table, table1, table2, \
    table34
from .reference import PAPER_FILES, TITLES, load_paper, table1_setting
from .repeats import group_repeats
from .claims import RULE as CLAIMS_RULE, claims_markdown, claims_table
from .width_scaling import for_people, theorem1_tables
from .tables import check_format, to_csv, to_markdown, write_text

PAPER_LABEL = "paper (CIFAR-10, full scale)"  # what every *_paper column holds


def _run_name(root: Path, path: Path) -> str:
    return path.name if path == root else path.relative_to(root).as_posix()


@dataclass
class Report:
    """What `taylorcli report` made: its tables (key -> title, table), notes and files written."""

    tables: dict[str, tuple[str, pd.DataFrame]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, list[Path]] = field(default_factory=dict)
    analysis_figures: dict[str, list[Path]] = field(default_factory=dict)
    figure1: dict[str, Path | None] = field(default_factory=dict)
    theorem1_figures: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    out: Path | None = None
    runs: list[Run] = field(default_factory=list)
    claims: pd.DataFrame = field(default_factory=pd.DataFrame)


def build_report(results_dir: str | Path = "runs", out: str | Path | None = None,
                 paper_dir: str | Path | None = None) -> Report:
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
        except RunDirError as e:
            broken[_run_name(root, p)] = str(e).removeprefix(f"{p}: ")
    if not runs:
        name, why = next(iter(broken.items()))
        raise ReportError(f"RESULTS_DIR {root}: no readable run ({len(broken)} found, none "
                          f"readable; {name}: {why})")
    skipped_rows = [note for r in runs for note in r.notes]
    runs, merge_notes = merge_runs(runs)  # subset runs of one recipe, as if in lockstep
    singles = list(runs)  # one run per seed: what the claims and Theorem 1 test over seeds
    runs, repeat_notes = group_repeats(runs)  # the same setting over several seeds
    merge_notes += repeat_notes
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
    notes += skipped_rows + run_notes(runs, t1_settings, paper, broken, missing) + merge_notes

    report.tables["runs"] = (TITLES["runs"], runs_table(runs, broken, mapped, missing))
    report.tables["table1"] = (TITLES["table1"], table1(runs, t1_settings, paper))
    report.tables["table2"] = (TITLES["table2"], table2(runs, t1_settings, paper))
    for key in ("table3", "table4"):
        epochs = " and ".join(f"{e:g}" for e in paper.epochs(key)) or "—"
        report.tables[key] = (f"{TITLES[key]}, at epochs {epochs}",
                              table34(runs, key, paper, notes))
    distances, slopes = theorem1_tables(singles)
    if not distances.empty:
        report.tables["theorem1"] = (TITLE_THEOREM1, distances)
        report.tables["theorem1_slopes"] = (TITLE_SLOPES, slopes)
    report.claims = claims_table(singles, paper)
    return report


TITLE_THEOREM1 = ("Theorem 1: the largest distance over training between each order's model "
                  "and the network (func_dist: RMS of f_k − f on the test set; param_dist: "
                  "‖θ_k − θ‖), mean ± sd over seeds, against width")
TITLE_SLOPES = ("Theorem 1: per order, the log-log slope of the largest distance against width "
                "(mean of the per-seed least-squares slopes, 95% t interval over seeds) beside "
                "the bound's −k/2")


def _slug(name: str) -> str:
    return safe_name(re.sub(r"[^A-Za-z0-9._-]+", "_", name))


def write_report(report: Report, fmt: str = "md", results_dir: str | Path = "runs") -> Report:
    """Write figures, recipes and tables (report.md, or runs.csv, table1-4.csv, notes.txt) to report.out."""
    check_format(fmt)
    out = report.out
    claim_report_folder(out)
    for r in report.runs:
        try:
            _run_figures(report, r, out / "figures")
        except (ValueError, IndexError, ZeroDivisionError, FloatingPointError, KeyError) as e:
            # One run whose numbers cannot be drawn (diverged at step 0, say) costs only its
            # figures: every other run is still reported.
            report.figures[r.name], report.figure1[r.name] = [], None
            report.analysis_figures[r.name] = []
            report.notes.append(f"{r.name}: figures not drawn ({type(e).__name__}: "
                                f"{' '.join(str(e).split())[:120]})")
    for r in report.runs:
        # A merged run's recipe is its parts' recipe with their models together.
        text = dump_recipe(r.config) if r.parts else (r.path / "recipe.yaml").read_text()
        report.files.append(write_text(out / "recipes" / f"{_slug(r.name)}.yaml", text))
    if "theorem1" in report.tables:
        table, slopes = report.tables["theorem1"][1], report.tables["theorem1_slopes"][1]
        for name, rows in table.groupby("group", sort=False):
            fig = theorem1_figure(rows, slopes[slopes["group"] == name],
                                  out / "figures" / f"theorem1_{_slug(name)}.png")
            report.theorem1_figures.append(fig)
            report.files.append(fig)
    report.files.append(write_text(out / "claims.csv", to_csv(report.claims)))
    if fmt == "csv":
        for key, (_, table) in report.tables.items():
            report.files.append(write_text(out / f"{key}.csv", to_csv(table)))
        report.files.append(write_text(out / "notes.txt", "".join(f"{n}\n" for n in report.notes)))
    else:
        report.files.append(write_text(out / "report.md", markdown(report, results_dir)))
    return report


def paper_headers(table: pd.DataFrame) -> pd.DataFrame:
    """For people: the paper's columns (X_paper) named as the paper's, with its dataset and scale."""
    return table.rename(columns={c: f"{c.removesuffix('_paper')}: {PAPER_LABEL}"
                                 for c in table.columns if c.endswith("_paper")})


def _run_figures(report: Report, r: Run, figures: Path) -> None:
    """Figures 1-3 and the analyses' figures of one run."""
    figs = [figure2(r, figures / f"figure2_{_slug(r.name)}.png")]
    if r.layers is not None:
        figs.append(figure3(r, figures / f"figure3_{_slug(r.name)}.png"))
    fig1 = figure1(r, figures / f"figure1_{_slug(r.name)}.png")
    report.figure1[r.name] = fig1
    report.figures[r.name] = figs
    report.files += figs + ([fig1] if fig1 else [])
    extra = [kernel_figure(r, figures / f"kernels_{_slug(r.name)}.png"),
             closed_form_figure(r, figures / f"closed_form_{_slug(r.name)}.png")]
    report.analysis_figures[r.name] = [f for f in extra if f is not None]
    report.files += report.analysis_figures[r.name]


def claim_report_folder(out: Path) -> None:
    """Make --out the report's own folder (report.json), or refuse a folder of the user's."""
    try:
        OwnedFolder(out, "report.json").claim({"kind": "report", "taylorcli": __version__},
                                              "a taylorcli report folder")
    except OwnershipError as e:
        raise ReportError(str(e)) from None


def markdown(report: Report, results_dir: str | Path) -> str:
    """The whole report as one Markdown document, figures linked relative to it."""
    runs = report.runs
    parts = [
        "# Taylorized training: tables and figures from runs\n",
        f"From the {len(runs)} run(s) under `{Path(results_dir).as_posix()}`, with the numbers of "
        f"Bai et al. (2020) (shipped in `taylorcli/paper/data/`) beside ours. The paper's "
        f"columns, marked \"{PAPER_LABEL}\", are its CIFAR-10 numbers at its own scale; a run "
        f"whose setting differs from the paper's (another dataset, width, batch or length: "
        f"the notes say how) is shown beside them for orientation, with no difference "
        f"computed. Accuracies and cosines are on the test set. Runs repeated over seeds show "
        f"mean ± sample sd. \"Final\" is a run's last evaluation (its last epoch if "
        f"incomplete). Tables 3 and 4 take each value at the requested epoch, or at the nearest "
        f"earlier evaluated epoch, which the `epoch_epN` columns show. Each run's resolved "
        f"recipe is in `recipes/`. The Claims section at the end tests the papers' claims over "
        f"the seeds.\n",
    ]
    for key, (title, table) in report.tables.items():
        parts.append(f"## {title}\n")
        if table.empty:
            parts.append("No runs of this table's settings (see the notes).\n")
        else:
            shown = for_people(table) if key == "theorem1" else table
            parts.append(to_markdown(paper_headers(shown)))
        if key == "runs":
            parts.append("### Notes\n")
            parts.append("".join(f"- {n}\n" for n in report.notes) or "None.\n")
    if report.theorem1_figures:
        parts.append("### Theorem 1, log-log\n")
        parts.append("Each order's largest distance from the network over the run against the "
                     "width, in function space and in weight space, mean over seeds with ±1 sd "
                     "bars; dashed: the bound's slope −k/2 through the narrowest width. The "
                     "theorem bounds the distance: a slope at or below −k/2 is consistent with "
                     "it (not a confirmation of it); an interval wholly above −k/2 is not.\n")
        for fig in report.theorem1_figures:
            parts.append(f"![{fig.stem}]({fig.relative_to(report.out).as_posix()})\n")
    if any(report.figure1.values()):
        parts.append("## Figure 1: the trajectories in function space\n")
        parts.append("Each model's test logits at every evaluation (up to 2000 test examples), "
                     "projected on the plane of the first two principal components of the full "
                     "network's own trajectory, all models on the same axes; circle: the start "
                     "(every model starts at the network at θ0), squares: the ends. Bai et al.'s "
                     "Figure 1 does not say how it was projected, so this is our choice, not "
                     "theirs. A run repeated over seeds shows its first seed.\n")
        for r in runs:
            if report.figure1.get(r.name):
                rel = report.figure1[r.name].relative_to(report.out).as_posix()
                parts.append(f"![Figure 1, {r.name}]({rel})\n")
    parts.append("## Figure 2: training and agreement curves\n")
    parts.append("Train loss (mean over the minibatches since the previous evaluation), test "
                 "accuracy, cos_param and cos_func against epochs; one line per Taylor order "
                 "k and the full network.\n")
    for r in runs:
        if report.figures.get(r.name):
            rel = report.figures[r.name][0].relative_to(report.out).as_posix()
            parts.append(f"![Figure 2, {r.name}]({rel})\n")
    parts.append("## Figure 3: layer movement\n")
    parts.append("Relative distance from initialization per layer, ‖θ_l − θ_l(0)‖ / "
                 "‖θ_l(0)‖, early in training (epoch 10, as in the paper, or the middle of a "
                 "run of 20 epochs or fewer) and at the end; full network against each order.\n")
    for r in runs:
        if len(report.figures.get(r.name, [])) > 1:
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
    parts.append("## Claims\n")
    parts.append(CLAIMS_RULE + " The same table, at full precision: `claims.csv`.\n")
    parts.append(claims_markdown(report.claims))
    return "\n".join(parts)


def report(results_dir: str | Path = "runs", fmt: str = "md", out: str | Path | None = None,
           paper_dir: str | Path | None = None) -> Report:
    """`taylorcli report`: build every table and figure from the runs under results_dir and write them."""
    check_format(fmt)
    return write_report(build_report(results_dir, out, paper_dir), fmt, results_dir)
