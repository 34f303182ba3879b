"""The `taylorcli` command line: parse, call one function per command, print.

Every heavy import (JAX, pandas, orbax, matplotlib) happens inside the command that needs it,
so `taylorcli --help` answers at once. Bad input of any kind ends with one line and exit 2.
"""

from __future__ import annotations

import contextlib
import enum
import sys
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .errors import FullDiverged, InputError, Stopped

app = typer.Typer(
    help="Train a network and its order-1..K Taylorized models in lockstep, and measure how "
         "closely they agree (Bai et al. 2020).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Exit codes (documented in README): scripts and `sbatch --requeue` wrappers rely on them.
BAD_INPUT = 2
FULL_DIVERGED = 3
STOPPED = 75  # EX_TEMPFAIL: checkpointed on SIGTERM/SIGUSR1; run the same command again
INTERRUPTED = 130


def _console():
    from rich.console import Console

    return Console()


def _wide_console():
    """The console for tables: itself in a terminal, 240 columns in logs (never squashed)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=240)


def _fail(message: str, code: int, kind: str = "error") -> typer.Exit:
    print(f"taylorcli: {kind}: {message}", file=sys.stderr, flush=True)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        print(f"taylorcli {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Taylorized training, from a recipe to the paper's tables."""


@contextlib.contextmanager
def _errors(interrupted: str = "interrupted"):
    """Map what a command can end with to one line and its documented exit code."""
    from .run import signals

    try:
        yield
    except InputError as e:
        raise _fail(str(e), BAD_INPUT) from None
    except Stopped as e:
        signals.handled()
        raise _fail(str(e), STOPPED, kind="stopped") from None
    except FullDiverged as e:
        raise _fail(str(e), FULL_DIVERGED) from None
    except KeyboardInterrupt:
        signals.handled()
        _ignore_further_interrupts()
        raise _fail(interrupted, INTERRUPTED, kind="stopped") from None
    except SystemExit as e:  # typer's own exits are typer.Exit: this one came from user code
        raise _fail(f"code taylorcli ran for you (a model or data module) called "
                    f"sys.exit({e.code!r}); nothing more was done", BAD_INPUT) from None


def _ignore_further_interrupts() -> None:
    """We are ending on Ctrl-C already: more of them must not interrupt the way out."""
    import signal

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)


RESUME_NOTE = "interrupted; rerun the same command to continue from the newest checkpoint"


@app.command()
def train(
    recipe: str = typer.Argument(..., metavar="RECIPE",
                                 help="A recipe YAML file (recipes/digits.yaml) or the name of a "
                                      "bundled recipe (digits; see `taylorcli recipes`).",
                                 show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/NAME)."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Override a recipe field, e.g. --set optim.lr=0.01 "
                                        "(repeatable)."),
    resume: bool = typer.Option(True, "--resume/--no-resume",
                                help="Continue the run in --out if there is one; --no-resume "
                                     "starts it over, deleting its results and checkpoints."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Validate the recipe and print its parameter count and the "
                                      "compiled step's FLOPs and memory; train nothing."),
) -> None:
    """Train the full network and its Taylorized models in lockstep on one recipe.

    Running it again on the same --out continues from the newest checkpoint. Exit codes:
    0 done, 2 bad input, 3 the full network diverged, 75 stopped by SIGTERM/SIGUSR1 after
    checkpointing (run the same command again to continue), 130 interrupted.

    Example: taylorcli train digits --set train.epochs=5 --out runs/digits-short
    """
    with _errors(RESUME_NOTE):
        from .recipe import load_named_recipe

        r = load_named_recipe(recipe, set_)
        if dry_run:
            _dry_run(r)
            return
        from .analyses.training import train_recipe
        from .engine import processes
        from .run.progress import QuietProgress, make_progress

        processes.initialize()  # under srun or JAX_COORDINATOR_ADDRESS; before any other JAX use
        progress = make_progress(_console()) if processes.is_primary() else QuietProgress()
        result = train_recipe(r, out, progress, resume=resume, source=recipe)
        if not processes.is_primary():
            return  # one voice per job: process 0 reports
    _print_final(result.final)
    for name, epoch in result.diverged.items():
        print(f"taylorcli: warning: {name} diverged (loss or parameters not finite) by epoch "
              f"{epoch:g}; it was frozen there and marked in metrics.csv", file=sys.stderr)


@app.command()
def recipes(fields: bool = typer.Option(False, "--fields", help="Print every recipe field "
                                        "instead (key, what it accepts, default, what it "
                                        "does), as Markdown.")) -> None:
    """List the recipes that ship with taylorcli, with what each one runs.

    Any of them is a RECIPE for `taylorcli train` by its name; copy one to start your own.

    Example: taylorcli train cnnthin --dry-run
    """
    if fields:
        from .recipe.document import fields_markdown

        print(fields_markdown(), end="")
        return
    from rich.table import Table

    from .recipe import bundled_recipes, recipe_description

    table = Table(title="bundled recipes (taylorcli train NAME)", title_justify="left")
    table.add_column("name")
    table.add_column("what it runs")
    for name, path in bundled_recipes().items():
        table.add_row(name, recipe_description(path))
    _wide_console().print(table)


@app.command()
def compare(
    run_dirs: Optional[list[Path]] = typer.Argument(None, metavar="RUN_DIR",
                                                    help="Run directories (the --out of "
                                                         "`train`).", show_default=False),
    epochs: Optional[str] = typer.Option(None, "--epochs",
                                         help="Comma-separated epochs to show (default: the "
                                              "paper table's epochs for its settings, else 10 "
                                              "and the last); a run that did not evaluate one "
                                              "shows its nearest earlier epoch.",
                                         show_default=False),
    fmt: Optional[str] = typer.Option(None, "--format", metavar="md|csv",
                                      help="Write Markdown or CSV (default: md with --out, a "
                                           "terminal table without)."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE",
                                       help="Write the table to FILE (default: print it)."),
) -> None:
    """Put runs side by side in the layout of the paper's Tables 3 and 4.

    One row per run and model (LIN k=1 ... FULL NN): test accuracy, cos_param and cos_func at
    each epoch, each run labelled by what differs between the recipes (e.g. model.width=128).

    Example: taylorcli compare runs/table3_cnnthin runs/table3_cnnthick --epochs 10,80
    """
    with _errors():
        from .report.compare import compare as compare_runs, comparison_text, write_comparison
        from .report.tables import check_format, to_rich

        if fmt is not None:
            check_format(fmt)
        result = compare_runs(run_dirs or [], epochs)
        if out is not None:
            write_comparison(out, result, fmt or ("csv" if out.suffix == ".csv" else "md"))
    if fmt is not None and out is None:  # the table is the output; notes go beside it
        print(comparison_text(result, fmt), end="")
        for note in result.notes:
            print(f"taylorcli: note: {note}", file=sys.stderr)
        return
    wide = _wide_console()
    wide.print(to_rich(result.table, f"runs side by side at epochs {result.epochs_text}"))
    for note in result.notes:
        wide.print(f"note: {note}", highlight=False)
    if out is not None:
        wide.print(f"wrote {out}", highlight=False)


@app.command()
def spawn(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="The parent run (the --out of "
                                   "`train`).", show_default=False),
    at: str = typer.Option(..., "--at", metavar="E[,E2,...]",
                           help="Spawn epochs: expand the parent's network at each of them.",
                           show_default=False),
    order: str = typer.Option("1", "--order", metavar="K[,K2,...]",
                              help="Taylor orders to spawn (1: the data-dependent NTK)."),
    children: int = typer.Option(0, "--children", min=0, max=64,
                                 help="Copies of the parent's network trained with their own "
                                      "SGD noise; with 2 or more, children.csv has their error "
                                      "barrier, function-space and ReLU-pattern distances."),
    reexpand_every: Optional[str] = typer.Option(
        None, "--reexpand-every", metavar="K[,...]",
        help="Also train each order re-expanded every K steps (1: ordinary training, inf: never; "
             "doubling:K re-expands after K, 2K, 4K, ... steps: often early, rarely late)."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR",
                                       help="The sweep's folder (default: RUN_DIR/spawn); one "
                                            "run directory per spawn epoch, DIR/atE."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Override optim.*, eval.* or checkpoint.* of the "
                                        "spawned runs (repeatable)."),
    resume: bool = typer.Option(True, "--resume/--no-resume",
                                help="Continue spawned runs already in DIR; --no-resume starts "
                                     "them over, deleting their results and checkpoints."),
) -> None:
    """Taylorize the parent's network at chosen epochs and train it for the rest of the schedule.

    Each spawned run trains, from the parent's network and optimizer state at epoch E, with the
    parent's data order and augmentation: `full` (the parent, continued), `spawn@E/orderK`,
    re-expanding variants, and children. Then DIR/spawn.csv, spawn.md and spawn.png put the
    final test accuracy against the spawn epoch (Fort et al. 2020, Figure 8).

    Example: taylorcli spawn runs/digits --at 0,1,2,5,10 --order 1,2 --children 2
    """
    with _errors("interrupted; rerun the same command to continue"):
        from .report.spawn_summary import summarize
        from .run.progress import make_progress
        from .spawn.sweep import parse_list, spawn as spawn_runs

        epochs = parse_list(at, "--at")
        orders = parse_list(order, "--order", int, minimum=1)
        sweep = spawn_runs(run_dir, epochs, orders, children=children, reexpand=reexpand_every,
                           overrides=set_, out=out, progress=make_progress(_console()),
                           resume=resume, source=str(run_dir))
        summary = summarize(run_dir, sweep.out)
    _print_sweep(summary)


@app.command("lr-search")
def lr_search(
    recipe: str = typer.Argument(..., metavar="RECIPE", help="A recipe YAML file or a bundled "
                                 "recipe's name.", show_default=False),
    lrs: Optional[str] = typer.Option(None, "--lrs", metavar="LR[,LR2,...]",
                                      help="The grid of learning rates (default: 0.001, 0.003, "
                                           "..., 1)."),
    epochs: int = typer.Option(3, "--epochs", min=1, max=10_000,
                               help="Epochs each rate trains the full network for."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Override a recipe field (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR",
                                       help="Where to write lr_search.csv, lr_curves.csv and "
                                            "lr_search.png (default: runs/NAME_lr_search)."),
) -> None:
    """Bai et al.'s learning-rate protocol: the largest rate of a grid at which the full network
    trains stably.

    Each rate trains the full network alone for --epochs epochs at that constant rate. Stable:
    every minibatch loss finite; the loss, averaged over each tenth of the steps, never above
    the initial loss or the tenth before by more than 5% of the initial loss; lower at the end
    than at the start; and clear of chance by mid-trial (at most 75% of ln C for C classes).
    Prints and writes the verdict and evidence per rate, and the rate chosen.

    Example: taylorcli lr-search digits --lrs 0.01,0.03,0.1,0.3,1 --epochs 3
    """
    with _errors():
        from .recipe import load_named_recipe
        from .report.figures import lr_search_figure
        from .run.lr_search import DEFAULT_GRID, lr_search as search
        from .spawn.sweep import parse_list

        r = load_named_recipe(recipe, set_)
        grid = parse_list(lrs, "--lrs") if lrs is not None else list(DEFAULT_GRID)
        result = search(r, grid, epochs, out, report=lambda line: print(line, flush=True))
        result.files.append(lr_search_figure(result.curves, result.table,
                                             result.out / "lr_search.png"))
    from .report.tables import to_rich

    wide = _wide_console()
    wide.print(to_rich(result.table, f"{r.name}: learning rates, {epochs} epochs each"))
    if result.chosen is None:
        wide.print("no rate of the grid trains stably: try smaller rates", highlight=False)
    else:
        wide.print(f"chosen: optim.lr={result.chosen:g} (the largest stable rate)",
                   highlight=False)
    wide.print(f"wrote {', '.join(str(f) for f in result.files)}", highlight=False)


@app.command()
def report(
    results_dir: Path = typer.Argument(Path("runs"), metavar="RESULTS_DIR",
                                       help="Folder holding run directories (or one run "
                                            "directory)."),
    fmt: str = typer.Option("md", "--format", metavar="md|csv",
                            help="report.md, or one CSV per table plus notes.txt."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR",
                                       help="Where to write (default: RESULTS_DIR/report)."),
) -> None:
    """Regenerate the paper's Tables 1-4 and Figures 2-3 from the runs under RESULTS_DIR.

    Runs map to the paper's settings by recipe name (taylorcli/paper/data/settings.csv); the paper's
    numbers are printed beside ours. Incomplete runs and paper settings without a run are named.

    Example: taylorcli report runs/digits --out results/digits
    """
    with _errors():
        from .report.paper_report import report as make_report
        from .report.tables import to_rich

        result = make_report(results_dir, fmt, out)
    wide = _wide_console()
    for title, table in result.tables.values():
        if not table.empty:
            wide.print(to_rich(table, title))
    for note in result.notes:
        wide.print(f"note: {note}", highlight=False)
    wide.print(f"wrote {len(result.files)} files to {result.out}", highlight=False)


paper_app = typer.Typer(
    help="One command for a whole paper (bai2020, fort2020, lee2019, theorem1, or a manifest YAML file): "
         "plan it, run it here at small scale, run it on a SLURM cluster, follow it, report it. "
         "Example: taylorcli paper local bai2020 --scale small",
    no_args_is_help=True)
app.add_typer(paper_app, name="paper")
PAPER_MODES = ("plan", "local", "slurm", "status", "report")


class Scale(str, enum.Enum):
    """--scale: the paper's own (full) or a laptop-sized analogue of every run (small)."""

    full = "full"
    small = "small"


_PAPER = typer.Argument(..., metavar="PAPER", help="bai2020, fort2020, lee2019, theorem1, or a manifest "
                        "YAML file of the same shape.", show_default=False)
_SCALE = typer.Option(Scale.full, "--scale", help="small: every run as a digits-sized analogue "
                      "of the same structure, calibrated to train on a laptop.")
_OUT = typer.Option(None, "--out", metavar="DIR", help="The plan's folder (default: runs/PAPER, "
                    "runs/PAPER_small).")
_DATA = typer.Option(None, "--data", metavar="PATH", help="CIFAR: the python archive "
                     "(.tar.gz), its extracted folder, or a TFDS data_dir.")


def _paper(action: str, name: str, scale: Scale, out: Optional[Path], *args, **kwargs):
    """Run one `paper` action with the common arguments; print what it made."""
    with _errors("interrupted; rerun the same command to continue"):
        from .paper import command

        where = out if out is not None else command.default_out(name, scale.value)
        result = getattr(command, f"{action}_action")(name, scale.value, where, *args, **kwargs)
    from .report.tables import to_rich

    wide = _wide_console()
    for title, table in result.tables:
        wide.print(to_rich(table, title))
    for line in result.lines:
        wide.print(line, highlight=False, soft_wrap=True)
    if result.code:
        raise typer.Exit(result.code)


def _say(line: str) -> None:
    print(line, flush=True)


@paper_app.command("plan")
def paper_plan(name: str = _PAPER, scale: Scale = _SCALE, out: Optional[Path] = _OUT,
               data: Optional[str] = _DATA,
               tflops: float = typer.Option(20.0, "--tflops", metavar="T", min=1e-6,
                                            help="Sustained TFLOP/s per GPU for the GPU-hours "
                                                 "(the default 20 is an assumption).")) -> None:
    """Every run with its models, steps, parameters, FLOPs, compiled memory, GPU-hours and the
    estimated wall time here; writes plan.csv; trains nothing."""
    _paper("plan", name, scale, out, data, tflops, say=_say)


@paper_app.command("local")
def paper_local(name: str = _PAPER, scale: Scale = _SCALE, out: Optional[Path] = _OUT,
                data: Optional[str] = _DATA) -> None:
    """Run the plan here, one run after another (finished runs are skipped), then write the
    report with its Claims section. A second `local` on the same --out is refused while one runs."""
    from .run.progress import make_progress

    _paper("local", name, scale, out, data, make_progress(_console()), say=_say)


@paper_app.command("slurm")
def paper_slurm(
    name: str = _PAPER, scale: Scale = _SCALE, out: Optional[Path] = _OUT,
    data: Optional[str] = _DATA,
    submit: bool = typer.Option(False, "--submit", help="Also run the sbatch commands."),
    partition: Optional[str] = typer.Option(None, "--partition", help="SLURM partition of the "
                                            "training tasks."),
    report_partition: Optional[str] = typer.Option(None, "--report-partition",
                                                   help="SLURM partition of the report job (a "
                                                        "CPU partition; default: --partition)."),
    gpus: int = typer.Option(1, "--gpus", min=0, max=64, help="GPUs per task (--gres=gpu:N)."),
    cpus: Optional[int] = typer.Option(None, "--cpus-per-task", min=1, max=1024,
                                       help="CPU cores per task (default: from the plan)."),
    mem: Optional[str] = typer.Option(None, "--mem", help="Memory per task, e.g. 32G "
                                      "(default: from the plan)."),
    time_: str = typer.Option("24:00:00", "--time", help="Time limit per task."),
    account: Optional[str] = typer.Option(None, "--account", help="SLURM account."),
    sbatch: list[str] = typer.Option([], "--sbatch", metavar="OPTION",
                                     help="An extra #SBATCH line, e.g. --sbatch '--qos=long' "
                                          "(repeatable)."),
    setup: Optional[str] = typer.Option(None, "--setup", metavar="COMMAND",
                                        help="What each job runs first (default: activate "
                                             "this virtual environment)."),
) -> None:
    """Write a SLURM job array over the runs and a report job after it (afterany); print the
    sbatch command (or submit it)."""
    from .paper.slurm import SlurmOptions

    _paper("slurm", name, scale, out, data, SlurmOptions(
        partition, gpus, time_, account, list(sbatch), setup, cpus, mem, report_partition),
        submit)


@paper_app.command("status")
def paper_status(name: str = _PAPER, scale: Scale = _SCALE, out: Optional[Path] = _OUT,
                 data: Optional[str] = _DATA) -> None:
    """Per run: done / partial / missing / failed, and what the report can already show."""
    _paper("status", name, scale, out, data)


@paper_app.command("report")
def paper_report(name: str = _PAPER, scale: Scale = _SCALE, out: Optional[Path] = _OUT,
                 data: Optional[str] = _DATA) -> None:
    """Write the report from what --out holds now (what the SLURM report job runs)."""
    _paper("report", name, scale, out, data)


def paper_argv(argv: list[str]) -> list[str]:
    """The earlier form `taylorcli paper PAPER --local ...` (one of --plan, --local, --slurm,
    --status, --report) as the sub-command form `taylorcli paper local PAPER ...`."""
    if len(argv) < 2 or argv[0] != "paper" or argv[1] in PAPER_MODES or argv[1].startswith("-"):
        return argv
    modes = [a for a in argv[1:] if a in {f"--{m}" for m in PAPER_MODES}]
    if len(modes) > 1:
        from .errors import PaperError

        raise PaperError(f"{' '.join(modes)}: expected exactly one of --plan, --local, --slurm, "
                         f"--status, --report (or the sub-command: taylorcli paper local PAPER)")
    if not modes:
        return argv  # Typer names the missing sub-command
    rest = [a for a in argv[1:] if a != modes[0]]
    return ["paper", modes[0][2:], *rest]


def _dry_run(r) -> None:
    import jax

    console = _console()
    with jax.enable_x64(r.train.precision == "float64"):
        _dry_run_table(r, console)


def _dry_run_table(r, console) -> None:
    from rich.syntax import Syntax
    from rich.table import Table

    from .engine.costs import check_fits, step_cost
    from .engine.setup import build_setup
    from .recipe import dump_recipe

    console.print(Syntax(dump_recipe(r), "yaml", theme="ansi_dark", background_color="default"))
    setup = build_setup(r)  # shapes only: no data loaded
    check_fits(setup, "--dry-run")
    engine, spec = setup.engine, setup.spec
    console.print(f"compiling the lockstep step ({', '.join(engine.names)}) ...")
    cost = step_cost(setup)
    table = Table(title=f"{r.name}: dry run ({cost.backend}, {r.train.precision})",
                  title_justify="left")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("parameters per model", f"{cost.params:,}"),
        ("models in lockstep", str(len(engine.names))),
        ("input", f"{spec.train_size:,} x {'x'.join(map(str, spec.image_shape))} "
                  f"({spec.num_classes} classes)"),
        ("steps per epoch", f"{engine.steps_per_epoch:,}"),
        ("total steps", f"{engine.steps_per_epoch * r.train.epochs:,}"),
        ("FLOPs per lockstep step", f"{cost.flops:.4g}"),
        ("compiled memory: arguments", _gib(cost.argument_bytes)),
        ("compiled memory: outputs", _gib(cost.output_bytes)),
        ("compiled memory: temporaries", _gib(cost.temp_bytes)),
        ("compiled memory: peak (donated state reused)", _gib(cost.peak_bytes)),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def _print_sweep(summary) -> None:
    from .report.spawn_summary import accuracy_table
    from .report.tables import to_rich

    wide = _wide_console()
    if summary.summary is not None and not summary.summary.empty:
        wide.print(to_rich(accuracy_table(summary.summary), "final test accuracy by spawn epoch"))
    if summary.children is not None and not summary.children.empty:
        wide.print(to_rich(summary.children, "children at the final evaluation"))
    for note in summary.notes:
        wide.print(f"note: {note}", highlight=False)
    wide.print(f"wrote {', '.join(str(f) for f in summary.files)}", highlight=False)


def _gib(n: int) -> str:
    return f"{n / 2**30:.3f} GiB"


def _print_final(rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="final evaluation", title_justify="left")
    for col in ("model", "test_acc", "test_loss", "cos_param", "cos_func", "func_dist",
                "diverged"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in rows:
        table.add_row(row["model"], f"{row['test_acc']:.4f}", f"{row['test_loss']:.4f}",
                      f"{row['cos_param']:.4f}", f"{row['cos_func']:.4f}",
                      f"{row['func_dist']:.3g}", str(row["diverged"]))
    _console().print(table)


def console_main(watchdog: bool = True) -> None:
    """The `taylorcli` console command: stop signals handled from the start (with the watchdog
    that ends a command blocked in native code), the CPU convolution default set before JAX
    starts, usage errors as one line naming the flag."""
    from .engine import xla_flags
    from .run import signals

    signals.install(watchdog)  # before anything slow: a SIGTERM during start-up still exits 75
    xla_flags.apply_defaults()
    try:
        try:
            args = paper_argv(sys.argv[1:])
        except InputError as e:
            print(f"taylorcli: error: {e}", file=sys.stderr)
            sys.exit(BAD_INPUT)
        code = app(args=args, prog_name="taylorcli", standalone_mode=False)
    except KeyboardInterrupt:
        signals.handled()
        _ignore_further_interrupts()
        print("taylorcli: stopped: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except Stopped as e:  # a signal while parsing, outside any command's own handling
        signals.handled()
        print(f"taylorcli: stopped: {e}", file=sys.stderr)
        sys.exit(STOPPED)
    except Exception as e:  # Typer's vendored click raises its UsageError family here
        message = getattr(e, "format_message", None)
        if message is None or not hasattr(e, "exit_code"):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `taylorcli`: the help is the answer
            print(message())
            sys.exit(0)
        print(f"taylorcli: error: {' '.join(message().split()).rstrip('.')}; see "
              f"'{_command(e)} --help'", file=sys.stderr)
        sys.exit(e.exit_code)
    sys.exit(code or 0)


def _command(e) -> str:
    ctx = getattr(e, "ctx", None)
    return ctx.command_path if ctx is not None else "taylorcli"


if __name__ == "__main__":
    console_main()
