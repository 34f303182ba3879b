"""`taylorcli paper slurm`: one job array per stage of the plan (train runs; then the spawned
runs, which need their parents), each task one run through the requeue wrapper, and a report
job after the last array (afterany). Written, not submitted, unless --submit.

No value from a manifest or a flag becomes shell code: names are refused unless they are plain
(manifest.py), paths are refused when an #SBATCH line or a Slurm file-name pattern could not
carry them (folder.check_script_path) and quoted everywhere else, `--setup` names a script to
source (quoted), never a command line. The logs folder exists before any job starts (Slurm
does not create the folder of --output)."""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PaperError
from .folder import check_script_path, claim_folder, write_file
from .plan import Plan, host_bytes, plan_csv
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
    setup: str | None = None  # a script each job sources first; default: this venv's activate
    cpus: int | None = None  # --cpus-per-task; default from the plan
    mem: str | None = None  # --mem; default from the plan
    report_partition: str | None = None  # the report job's (a CPU partition); default: partition


@dataclass
class SlurmJobs:
    """The scripts written and the one command line that submits them in order."""

    scripts: list[Path]
    submit: Path
    command: str


def setup_line(opts: SlurmOptions) -> str | None:
    """`. 'script'`: the script each job sources first (--setup, else this virtual
    environment's activate script), quoted; None when there is neither."""
    if opts.setup is not None:
        path = Path(opts.setup).expanduser()
        if not path.is_file():
            raise PaperError(f"--setup {opts.setup!r}: no such file; expected a shell script each "
                             f"job sources first (e.g. ~/venvs/taylorcli/bin/activate, or a file "
                             f"of your own with the module-load lines)")
        return f". {shlex.quote(str(path.resolve()))}"
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix != sys.base_prefix and activate.is_file():
        return f". {shlex.quote(str(activate))}"
    return None


_WORD = re.compile(r"[A-Za-z0-9_.:,+=@/-]+")


def _check_options(opts: SlurmOptions) -> None:
    for flag, value in (("--partition", opts.partition), ("--account", opts.account),
                        ("--time", opts.time), ("--mem", opts.mem),
                        ("--report-partition", opts.report_partition)):
        if value is not None and not _WORD.fullmatch(value):
            raise PaperError(f"{flag} {value!r}: expected one word of letters, digits and "
                             f"_ . : , + = @ / -")
    for line in opts.sbatch:
        text = line.strip().removeprefix("#SBATCH").strip()
        if not text.startswith("--") or any(ord(c) < 32 or c == "\x7f" for c in line):
            raise PaperError(f"--sbatch {line!r}: expected one #SBATCH option on one line, "
                             f"e.g. --sbatch '--qos=long'")


def _header(opts: SlurmOptions, name: str, extra: list[str], partition: str | None,
            setup: str | None) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", *extra]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if opts.account:
        lines.append(f"#SBATCH --account={opts.account}")
    lines += [f"#SBATCH {s.strip().removeprefix('#SBATCH').strip()}" for s in opts.sbatch]
    lines += ["set -u", f"cd {shlex.quote(str(Path.cwd()))}"]
    if setup:
        lines.append(setup)
    return lines


def resources(plan: Plan, opts: SlurmOptions) -> tuple[int, str]:
    """--cpus-per-task and --mem of a training task: the options given, else from the plan (the
    largest run's training set and state, held a few times over on the host, plus JAX's own)."""
    cpus = opts.cpus or (8 if opts.gpus == 0 else 4 * opts.gpus)
    if opts.mem:
        return cpus, opts.mem
    need = 8 * 2**30  # JAX, XLA and orbax themselves
    need += max((3 * host_bytes(r.recipe) for r in plan.runs), default=0)
    return cpus, f"{max(16, 2 ** math.ceil(math.log2(need / 2**30)))}G"


def _array_script(plan: Plan, out: Path, stage: int, opts: SlurmOptions,
                  setup: str | None) -> str:
    runs = [r for r in plan.runs if r.stage == stage]
    kind = "train" if stage == 0 else "spawn"
    cpus, mem = resources(plan, opts)
    # An --sbatch line of the user's own says it instead of the plan's default.
    given = {s.strip().removeprefix("#SBATCH").strip().split("=")[0] for s in opts.sbatch}
    sized = [f"#SBATCH --cpus-per-task={cpus}"] * ("--cpus-per-task" not in given) + \
        [f"#SBATCH --mem={mem}"] * ("--mem" not in given)
    lines = _header(opts, f"{plan.manifest.name}-{kind}", [
        f"#SBATCH --array=0-{len(runs) - 1}", f"#SBATCH --gres=gpu:{opts.gpus}"
        if opts.gpus else "#SBATCH --ntasks=1", *sized, f"#SBATCH --time={opts.time}",
        "#SBATCH --requeue --signal=B:USR1@300",
        f"#SBATCH --output={out / 'logs'}/slurm-%A_%a.out"], opts.partition, setup)
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


def _report_script(plan: Plan, out: Path, opts: SlurmOptions, paper_arg: str,
                   setup: str | None) -> str:
    lines = _header(opts, f"{plan.manifest.name}-report", [
        "#SBATCH --ntasks=1", "#SBATCH --cpus-per-task=2", "#SBATCH --mem=8G",
        "#SBATCH --time=01:00:00", f"#SBATCH --output={out / 'logs'}/slurm-report-%j.out"],
        opts.report_partition or opts.partition, setup)
    cmd = ["taylorcli", "paper", "report", paper_arg, "--scale", plan.manifest.scale, "--out",
           str(out)]
    if plan.data:
        cmd += ["--data", plan.data]
    lines.append("# after every task of the arrays has ended (afterany): the report from what is there")
    lines.append(" ".join(shlex.quote(a) for a in cmd))
    return "\n".join(lines) + "\n"


def write_slurm(plan: Plan, out: Path, opts: SlurmOptions) -> SlurmJobs:
    """Write OUT/slurm/{requeue.sh, train.sbatch, [spawn.sbatch], report.sbatch, submit.sh}."""
    _check_options(opts)
    setup = setup_line(opts)
    out = out.resolve()
    check_script_path(out)
    if plan.manifest.path:
        check_script_path(Path(plan.manifest.path))
    claim_folder(plan, out)
    write_file(out, "plan.csv", plan_csv(plan))
    # Slurm opens --output before the job's first line runs and does not create its folder.
    write_file(out, "logs/README", "SLURM task logs (slurm-JOB_TASK.out) and each run's log.\n")
    paper_arg = plan.manifest.path or plan.manifest.name
    scripts = [write_file(out, "slurm/requeue.sh", REQUEUE)]
    stages = sorted({r.stage for r in plan.runs})
    steps, prev = [], None
    for stage in stages:
        name = "train.sbatch" if stage == 0 else "spawn.sbatch"
        path = write_file(out, f"slurm/{name}", _array_script(plan, out, stage, opts, setup))
        scripts.append(path)
        # --parsable prints "jobid[;cluster]": ${j%%;*} is the id alone
        dep = f" --dependency=afterany:${{{prev}%%;*}}" if prev else ""
        steps.append(f"j{stage}=$(sbatch --parsable{dep} {shlex.quote(str(path))})")
        prev = f"j{stage}"
    report = write_file(out, "slurm/report.sbatch", _report_script(plan, out, opts, paper_arg,
                                                                      setup))
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
