"""`taylorcli paper`: one function per action (plan, local, slurm, status, report) behind the
command, each returning what the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import PaperError
from .manifest import load_manifest
from .plan import DEFAULT_TFLOPS, TIMED_STEPS, Plan, build_plan, plan_csv, plan_rows, totals

ACTIONS = ("plan", "local", "slurm", "status", "report")


@dataclass
class Outcome:
    """What an action made: tables to print (title, DataFrame), lines, files, exit code."""

    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    code: int = 0


def default_out(name: str, scale: str) -> Path:
    """runs/NAME (full scale) or runs/NAME_small."""
    return Path("runs") / (Path(name).stem + ("_small" if scale == "small" else ""))


def _plan(name: str, scale: str, data: str | None, tflops: float) -> Plan:
    return build_plan(load_manifest(name, scale), data, tflops)


def _fmt_plan(plan: Plan) -> pd.DataFrame:
    table = pd.DataFrame(plan_rows(plan))
    out = pd.DataFrame({
        "run": table["run"], "recipe": table["recipe"], "overrides": table["overrides"],
        "models": table["models"], "steps": table["steps"].map(lambda v: f"{int(v):,}"),
        "params": table["params"].map(lambda v: f"{int(v):,}" if pd.notna(v) else ""),
        "FLOPs/step": table["flops_per_step"].map(lambda v: f"{v:.3g}" if pd.notna(v) else ""),
        "FLOPs total": table["flops_total"].map(lambda v: f"{v:.3g}" if pd.notna(v) else ""),
        "memory GiB": table["memory_gib"].map(lambda v: f"{v:.2f}" if pd.notna(v) else ""),
        "GPU-h": table["gpu_hours"].map(lambda v: f"{v:.2f}" if pd.notna(v) else "")})
    if table["est_wall_s"].notna().any():
        out["s/step here"] = table["step_s"].map(lambda v: f"{v:.3g}" if pd.notna(v) else "")
        out["est. wall here"] = table["est_wall_s"].map(_duration)
    return out


def _duration(seconds) -> str:
    """Seconds for people: 45 s, 12.5 min, 2.3 h."""
    if seconds is None or pd.isna(seconds):
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _load() -> str:
    """The machine's load (1, 5, 15 minutes) and core count, for the estimate's conditions."""
    import os

    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return f"{os.cpu_count()} cores"
    return f"{os.cpu_count()} cores, load average {one:.1f} / {five:.1f} / {fifteen:.1f}"


def plan_action(name: str, scale: str, out: Path, data: str | None, tflops: float,
                say=print, time_here: bool | None = None) -> Outcome:
    """--plan: every run with its models, steps, parameters, FLOPs, memory and GPU-hours, and at
    small scale (or `time_here`) its wall time here, estimated from steps and evaluations
    timed on this machine; plan.csv."""
    from .folder import claim_folder, write_file
    from .plan import add_costs, add_wall_times

    plan = _plan(name, scale, data, tflops)
    claim_folder(plan, out)  # before minutes of compiling: a bad --out fails at once
    add_costs(plan, say)
    timing = scale == "small" if time_here is None else time_here
    load = _load() if timing else ""  # before the timing adds its own load
    if timing:
        add_wall_times(plan, say)
    path = write_file(out, "plan.csv", plan_csv(plan))
    t = totals(plan)
    o = Outcome(files=[path])
    o.tables.append((f"{plan.manifest.name} at scale {scale}: {t['runs']} runs", _fmt_plan(plan)))
    o.lines.append(f"total: {t['runs']} runs, {t['steps']:,} steps, {t['flops_total']:.3g} "
                   f"FLOPs, {t['gpu_hours']:.1f} GPU-hours; largest run's compiled memory "
                   f"{t['memory_gib']:.2f} GiB")
    import jax

    o.lines.append(f"assumption: GPU-hours = training FLOPs / ({tflops:g} TFLOP/s sustained per "
                   f"GPU{', the default' if tflops == DEFAULT_TFLOPS else ', --tflops'}); "
                   f"evaluations, compilation and data loading are not counted. FLOPs and "
                   f"memory: XLA's analysis of the compiled lockstep step, as `train --dry-run` "
                   f"(compiled here for {jax.default_backend()})")
    if t["est_wall_s"] is not None:
        untimed = sorted({r.name.split("/")[0] for r in plan.runs
                          if r.recipe.eval.kernel_n or r.recipe.eval.closed_form
                          or r.children >= 2})
        o.lines.append(
            f"estimated wall time here: {_duration(t['est_wall_s'])} for all {t['runs']} runs, "
            f"one after another (`paper local`). Measured on this machine ({load} before "
            f"timing): per distinct setting, the compilation of its step and evaluation, then "
            f"{TIMED_STEPS} lockstep steps and one evaluation timed; a run's estimate is "
            f"compile + steps x s/step + evaluations x s/evaluation. Other jobs sharing the "
            f"machine slow it down in proportion"
            + (f"; not timed: the analyses of {', '.join(untimed)} (kernels, closed form, "
               f"children's barriers), which add to it" if untimed else ""))
    o.lines.append(f"wrote {path}")
    return o


def local_action(name: str, scale: str, out: Path, data: str | None, progress=None,
                 say=print) -> Outcome:
    """--local: every unfinished run here, one after another, then the report."""
    from .local import run_local

    plan = _plan(name, scale, data, DEFAULT_TFLOPS)
    result = run_local(plan, out, progress, say)
    o = Outcome()
    for note in result.report.notes:
        o.lines.append(f"note: {note}")
    o.lines.append(f"trained {len(result.trained)} run(s), skipped {len(result.skipped)} "
                   f"finished, {len(result.failed)} failed; {result.wall_s:.0f} s; report: "
                   f"{result.report.out / 'report.md'}")
    for run, why in result.failed.items():
        o.lines.append(f"failed: {run}: {why}")
    o.code = 1 if result.failed else 0
    return o


def slurm_action(name: str, scale: str, out: Path, data: str | None, options,
                 submit: bool = False) -> Outcome:
    """--slurm: the array job(s) and the report job written; --submit also submits them."""
    from .slurm import submit as run_submit, write_slurm

    plan = _plan(name, scale, data, DEFAULT_TFLOPS)
    jobs = write_slurm(plan, out, options)
    o = Outcome(files=jobs.scripts + [jobs.submit])
    n = {s: sum(r.stage == s for r in plan.runs) for s in (0, 1)}
    o.lines.append(f"wrote {', '.join(str(p) for p in o.files)}: {n[0]} train task(s)"
                   + (f", then {n[1]} spawn task(s)" if n[1] else "") + ", then the report job")
    if submit:
        o.lines.append(run_submit(jobs))
    else:
        o.lines.append("submit with:")
        o.lines.append(jobs.command)
    return o


def status_action(name: str, scale: str, out: Path, data: str | None) -> Outcome:
    """--status: per run done/partial/missing/failed, and what the report can show."""
    from .folder import check_folder
    from .status import report_readiness, status_table, statuses

    plan = _plan(name, scale, data, DEFAULT_TFLOPS)
    if not out.is_dir():
        raise PaperError(f"--out {out}: no such folder; nothing of {plan.manifest.name} has run "
                         f"there yet")
    check_folder(plan, out)
    states = statuses(plan, out)
    o = Outcome()
    o.tables.append((f"{plan.manifest.name} at scale {scale} in {out}", status_table(states)))
    o.tables.append(("what the report can show", report_readiness(states)))
    counts = {k: sum(s.state == k for s in states) for k in ("done", "partial", "missing",
                                                             "failed")}
    o.lines.append(", ".join(f"{v} {k}" for k, v in counts.items()))
    return o


def report_action(name: str, scale: str, out: Path, data: str | None) -> Outcome:
    """--report: the report from what OUT holds now (the SLURM report job runs this)."""
    from .folder import check_folder
    from .report import write_report

    plan = _plan(name, scale, data, DEFAULT_TFLOPS)
    if not out.is_dir():
        raise PaperError(f"--out {out}: no such folder")
    check_folder(plan, out)
    made = write_report(plan, out)
    o = Outcome(files=made.files)
    o.lines += [f"note: {n}" for n in made.notes]
    o.lines.append(f"wrote {len(made.files)} files to {made.out}")
    return o
