"""`taylorcli paper --slurm`: one job array per stage of the plan (train runs; then the spawned
runs, which need their parents), each task one run through the README's requeue wrapper, and a
report job after the last array (afterany). Written, not submitted, unless --submit."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PaperError
from .folder import claim_folder, write_file
from .plan import Plan, plan_csv
from .status import failed_path, log_path

# The README's requeue wrapper ("Preemption and requeue"), verbatim in behaviour.
REQUEUE = """#!/bin/bash
# requeue.sh COMMAND ...: run COMMAND; on exit 75 (stopped after a checkpoint) requeue this job.
"$@" &
pid=$!
# With --signal=B:USR1@300 Slurm signals this shell 5 minutes before the limit; pass it on
# (srun forwards it to every task of a multi-node run).
trap 'kill -USR1 $pid' USR1 TERM
wait $pid; code=$?
while kill -0 $pid 2>/dev/null; do wait $pid; code=$?; done  # let it finish its checkpoint
[ $code -eq 75 ] && scontrol requeue "$SLURM_JOB_ID"
exit $code
"""


@dataclass
class SlurmOptions:
    """The usual resources, and what every job runs first (activating the environment)."""

    partition: str | None = None
    gpus: int = 1
    time: str = "24:00:00"
    account: str | None = None
    sbatch: list[str] = field(default_factory=list)  # extra #SBATCH lines
    setup: str | None = None  # e.g. '. /path/.venv/bin/activate'; default: this environment's


@dataclass
class SlurmJobs:
    """The scripts written and the one command line that submits them in order."""

    scripts: list[Path]
    submit: Path
    command: str


def default_setup() -> str | None:
    """Activate the virtual environment this taylorcli runs from, if it runs from one."""
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix != sys.base_prefix and activate.is_file():
        return f". {shlex.quote(str(activate))}"
    return None


def _check_options(opts: SlurmOptions) -> None:
    if opts.gpus < 0 or opts.gpus > 64:
        raise PaperError(f"--gpus {opts.gpus}: expected 0 to 64")
    for flag, value in (("--partition", opts.partition), ("--account", opts.account),
                        ("--time", opts.time)):
        if value is not None and (not value.strip() or any(c in value for c in " \n'\"$`;")):
            raise PaperError(f"{flag} {value!r}: expected one word (no spaces or quotes)")
    for line in opts.sbatch:
        if "\n" in line or not line.strip():
            raise PaperError(f"--sbatch {line!r}: expected one #SBATCH option, e.g. "
                             f"--sbatch '--mem=64G'")


def _header(opts: SlurmOptions, name: str, out: Path, extra: list[str]) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", *extra]
    if opts.partition:
        lines.append(f"#SBATCH --partition={opts.partition}")
    if opts.account:
        lines.append(f"#SBATCH --account={opts.account}")
    lines += [f"#SBATCH --{s.strip().removeprefix('--').removeprefix('#SBATCH').strip()}"
              if not s.strip().startswith("#SBATCH") else s.strip() for s in opts.sbatch]
    setup = opts.setup if opts.setup is not None else default_setup()
    lines += ["set -u", f"cd {shlex.quote(str(Path.cwd()))}"]
    if setup:
        lines.append(setup)
    return lines


def _array_script(plan: Plan, out: Path, stage: int, opts: SlurmOptions) -> str:
    runs = [r for r in plan.runs if r.stage == stage]
    kind = "train" if stage == 0 else "spawn"
    lines = _header(opts, f"{plan.manifest.name}-{kind}", out, [
        f"#SBATCH --array=0-{len(runs) - 1}", f"#SBATCH --gres=gpu:{opts.gpus}"
        if opts.gpus else "#SBATCH --ntasks=1", f"#SBATCH --time={opts.time}",
        "#SBATCH --requeue --signal=B:USR1@300",
        f"#SBATCH --output={out / 'logs'}/slurm-%A_%a.out"])
    lines.append(f"# one task per {kind} run of the plan ({plan.manifest.name}, scale "
                 f"{plan.manifest.scale}); a task requeues itself when preempted (exit 75)")
    lines.append('case "$SLURM_ARRAY_TASK_ID" in')
    for i, r in enumerate(runs):
        lines.append(f"  {i}) NAME={shlex.quote(r.name)}; LOG={shlex.quote(str(log_path(out, r)))}"
                     f"; FAILED={shlex.quote(str(failed_path(out, r)))}")
        lines.append(f"     CMD=({r.shell(out)}) ;;")
    lines.append('  *) echo "no run for task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;')
    lines.append("esac")
    lines.append('mkdir -p "$(dirname "$LOG")"')
    lines.append('echo "task $SLURM_ARRAY_TASK_ID ($NAME): ${CMD[*]}" >>"$LOG"')
    lines.append(f'{shlex.quote(str(out / "slurm" / "requeue.sh"))} "${{CMD[@]}}" >>"$LOG" 2>&1')
    lines.append("code=$?")
    lines.append('if [ $code -eq 0 ] || [ $code -eq 75 ]; then rm -f "$FAILED"; '
                 'else echo $code >"$FAILED"; fi')
    lines.append("exit $code")
    return "\n".join(lines) + "\n"


def _report_script(plan: Plan, out: Path, opts: SlurmOptions, paper_arg: str) -> str:
    lines = _header(opts, f"{plan.manifest.name}-report", out, [
        "#SBATCH --ntasks=1", "#SBATCH --time=01:00:00",
        f"#SBATCH --output={out / 'logs'}/slurm-report-%j.out"])
    cmd = ["taylorcli", "paper", paper_arg, "--scale", plan.manifest.scale, "--out", str(out),
           "--report"]
    if plan.data:
        cmd += ["--data", plan.data]
    lines.append("# after every task of the arrays has ended (afterany): the report from what is there")
    lines.append(" ".join(shlex.quote(a) for a in cmd))
    return "\n".join(lines) + "\n"


def write_slurm(plan: Plan, out: Path, opts: SlurmOptions) -> SlurmJobs:
    """Write OUT/slurm/{requeue.sh, train.sbatch, [spawn.sbatch], report.sbatch, submit.sh}."""
    _check_options(opts)
    out = out.resolve()
    claim_folder(plan, out)
    write_file(out, "plan.csv", plan_csv(plan))
    paper_arg = plan.manifest.path or plan.manifest.name
    scripts = [write_file(out, "slurm/requeue.sh", REQUEUE)]
    stages = sorted({r.stage for r in plan.runs})
    steps, prev = [], None
    for stage in stages:
        name = "train.sbatch" if stage == 0 else "spawn.sbatch"
        path = write_file(out, f"slurm/{name}", _array_script(plan, out, stage, opts))
        scripts.append(path)
        # --parsable prints "jobid[;cluster]": ${j%%;*} is the id alone
        dep = f" --dependency=afterany:${{{prev}%%;*}}" if prev else ""
        steps.append(f"j{stage}=$(sbatch --parsable{dep} {shlex.quote(str(path))})")
        prev = f"j{stage}"
    report = write_file(out, "slurm/report.sbatch", _report_script(plan, out, opts, paper_arg))
    scripts.append(report)
    steps.append(f"sbatch --dependency=afterany:${{{prev}%%;*}} {shlex.quote(str(report))}")
    command = " && ".join(steps)
    submit = write_file(out, "slurm/submit.sh", "#!/bin/bash\nset -e\n" + "\n".join(steps)
                        + "\n")
    for path in [*scripts, submit]:
        os.chmod(path, 0o755)
    return SlurmJobs(scripts, submit, command)


def submit(jobs: SlurmJobs) -> str:
    """Run submit.sh (sbatch on PATH); its output, or one line saying why it failed."""
    try:
        done = subprocess.run(["bash", str(jobs.submit)], capture_output=True, text=True,
                              timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PaperError(f"--submit: could not run {jobs.submit} ({e})") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["sbatch failed"])[-1]
        raise PaperError(f"--submit: {jobs.submit} failed: {why}")
    return done.stdout.strip()
