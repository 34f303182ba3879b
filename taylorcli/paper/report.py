"""The report a manifest asks for, from the runs in the plan's folder: `taylorcli report`'s
tables and figures (OUT/report), and each spawn sweep's summary (copied to OUT/report/SWEEP)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, PaperError
from ..files import write_owned
from ..report.paper_report import report as paper_report
from ..report.spawn_summary import summarize
from .plan import Plan

SWEEP_FILES = ("spawn.md", "spawn.csv", "spawn.png", "children.csv")


@dataclass
class PaperReport:
    """What the report step wrote, and what it could not (notes)."""

    out: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: dict = field(default_factory=dict)


def write_report(plan: Plan, out: Path) -> PaperReport:
    """Write every report the manifest lists into OUT/report, from what OUT holds now."""
    result = PaperReport(out / "report")
    if "paper" in plan.manifest.reports:
        try:
            made = paper_report(out, "md", out / "report")
        except InputError as e:
            raise PaperError(f"the report: {e}") from None
        result.files += made.files
        result.notes += made.notes
        result.tables = made.tables
    sweeps = {r.sweep: r.recipe_arg for r in plan.runs if r.kind == "spawn"}
    if "spawn" in plan.manifest.reports:
        for sweep, parent in sweeps.items():
            if not (out / sweep).is_dir() or not (out / parent / "metrics.csv").is_file():
                result.notes.append(f"{sweep}: no spawned runs yet, so no spawn summary")
                continue
            try:
                summary = summarize(out / parent, out / sweep)
            except InputError as e:
                result.notes.append(f"{sweep}: no spawn summary ({e})")
                continue
            result.notes += summary.notes
            target = out / "report" / sweep
            for name in SWEEP_FILES:
                if (out / sweep / name).is_file():
                    result.files.append(write_owned(target / name,
                                                    (out / sweep / name).read_bytes()))
    return result
