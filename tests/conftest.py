"""Shared fixtures: one tiny digits recipe for the whole suite (so compiled programs are reused),
the `taylorcli` command run in this process, and one finished tiny run that tests copy.

Tests that need a real process (signals, kill -9, the installed entry point, the wheel, other
device counts) start one and are marked `slow`; everything else calls the command line here,
where JAX is imported once and each program compiles once for the whole session.
"""

import contextlib
import copy
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from taylorcli.engine import xla_flags
from taylorcli.recipe import Recipe, recipe_from_dict


def pytest_configure(config):
    """This process compiles as the `taylorcli` command does (its CPU flags set before JAX starts
    a backend): runs trained here and in the test's own processes then agree value for value."""
    xla_flags.apply_defaults()

# CNN-2-4 on 128 digits (4 steps per epoch), full network plus orders 1 and 2.
TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"dataset": "digits", "train_limit": 128, "test_limit": 64, "pad": 2, "flip": False},
    "model": {"arch": "cnn", "depth": 2, "width": 4},
    "taylor": {"orders": [1, 2]},
    "train": {"epochs": 2, "batch_size": 32},
    "optim": {"lr": 0.1, "grad_clip": 5.0, "schedule": "constant"},
    "eval": {"every_epochs": 1, "batch_size": 64},
}


def tiny(**sections) -> dict:
    """A fresh copy of the tiny recipe, with sections updated key by key (`tiny(train={...})`)."""
    out = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def write_recipe(folder: Path, recipe: dict, name: str = "tiny.yaml") -> Path:
    """The recipe as a YAML file in `folder`."""
    path = Path(folder) / name
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
    """One persistent compilation cache for the session's runs (processes inherit it), kept out
    of the user's own ~/.cache."""
    folder = tmp_path_factory.mktemp("jax_cache")
    before = os.environ.get("TAYLORCLI_COMPILE_CACHE")
    os.environ["TAYLORCLI_COMPILE_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("TAYLORCLI_COMPILE_CACHE", None)
    else:
        os.environ["TAYLORCLI_COMPILE_CACHE"] = before


@pytest.fixture(scope="session")
def tiny_dict():
    """`tiny_dict()`: a fresh, mutable copy of the tiny recipe as a nested dict."""
    return lambda: copy.deepcopy(TINY)


@pytest.fixture(scope="session")
def tiny_recipe():
    """`tiny_recipe("optim.lr=0.5", ...)`: the tiny recipe with `--set`-style overrides."""

    def make(*overrides: str) -> Recipe:
        return recipe_from_dict(copy.deepcopy(TINY), "tiny", overrides)

    return make


@dataclass
class Result:
    """What a command ended with: as subprocess.CompletedProcess has it."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args, cwd=None) -> Result:
    """`taylorcli ARGS` in this process: the real command line (its parsing, its error lines and
    exit codes), with JAX and its compiled programs shared across the test session."""
    from taylorcli import cli
    from taylorcli.run import signals

    out, err = io.StringIO(), io.StringIO()
    argv, here = sys.argv, os.getcwd()
    sys.argv = ["taylorcli", *map(str, args)]
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.console_main(watchdog=False)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(here)
        signals.uninstall()
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def cli():
    """`cli("train", recipe, "--out", out)`: the command line, in this process."""
    return run_cli


def run_process(*args, cwd=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    """`taylorcli ARGS` as its own process (for what needs one: signals, exit of the process)."""
    return subprocess.run([sys.executable, "-m", "taylorcli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL)


def one_line(result, code=2, *needles) -> str:
    """The command ended with `code` and said so in one line (no traceback) holding `needles`."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr + result.stdout
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory) -> Path:
    """The tiny recipe as a YAML file."""
    return write_recipe(tmp_path_factory.mktemp("recipe"), TINY)


@pytest.fixture(scope="session")
def tiny_run(tiny_file, tmp_path_factory) -> Path:
    """One finished tiny run (2 epochs, a checkpoint each): read it, or copy it to change it."""
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    result = run_cli("train", tiny_file, "--out", out)
    assert result.returncode == 0, result.stderr
    (out.parent / "train.out").write_text(result.stdout + result.stderr)
    return out


@pytest.fixture
def copy_run(tiny_run, tmp_path):
    """`copy_run()`: a private copy of the finished tiny run (to damage, resume, extend)."""

    def make(name: str = "run") -> Path:
        target = tmp_path / name
        shutil.copytree(tiny_run, target, ignore=shutil.ignore_patterns(".lock"))
        return target

    return make


# A real `taylorcli` process that signals itself right after optimizer step `at_step`: the
# stop point is deterministic, not a race between a test's timer and the run's speed.
_SIGNAL_DRIVER = """
import os, sys
import taylorcli.run.progress as progress
AT, SIG = int(sys.argv[1]), int(sys.argv[2])


class SignalAt(progress.PlainProgress):
    def step(self, step, latest):
        super().step(step, latest)
        if step == AT:
            os.kill(os.getpid(), SIG)


progress.make_progress = lambda console=None: SignalAt()
from taylorcli import cli
sys.argv = ["taylorcli", *sys.argv[3:]]
cli.console_main()
"""


def run_signalled(args, at_step: int, sig: int, timeout: float = 300):
    """Run `taylorcli ARGS` in a new process that sends itself `sig` after step `at_step`."""
    return subprocess.run([sys.executable, "-c", _SIGNAL_DRIVER, str(at_step), str(int(sig)),
                           *map(str, args)], capture_output=True, text=True, timeout=timeout)


def pytest_addoption(parser):
    """--slow: run the whole suite, the tests marked slow included (CI does)."""
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the tests marked slow (real processes, signals, the wheel)")


def pytest_collection_modifyitems(config, items):
    """Without --slow, the tests marked slow are deselected (named in the summary line)."""
    if config.getoption("--slow"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def hand_run(folder: Path, recipe: dict, seed: int = 0, last_epoch: float | None = None) -> Path:
    """A run directory written by hand, as `train` would lay it out, with numbers drawn from
    `seed` (distinct per model and point, so a table that mixes them up fails): recipe.yaml,
    run.json (its parameter count from the real network), metrics.csv and layers.csv; no
    checkpoints or logits. `last_epoch` cuts it there, as a killed run leaves it."""
    import json

    import numpy as np
    import pandas as pd

    from taylorcli.engine.setup import build_setup
    from taylorcli.names import model_names, order_of
    from taylorcli.recipe import dump_recipe
    from taylorcli.run.schedule import evaluation_steps
    from taylorcli.run.tables import LAYERS_COLUMNS, METRICS_COLUMNS

    r = recipe_from_dict(copy.deepcopy(recipe), "hand")
    setup = build_setup(r)
    spe = setup.engine.steps_per_epoch
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"kind": "train", "parameters": setup.parameters}))
    (folder / "recipe.yaml").write_text(dump_recipe(r))
    rows, layer_rows = [], []
    names = model_names(r.taylor.orders)
    for step in evaluation_steps(r, spe):
        epoch = round(step / spe, 6)
        if last_epoch is not None and epoch > last_epoch + 1e-9:
            break
        for name in names:
            full = name == "full"
            rows.append({"model": name, "order": order_of(name), "epoch": epoch, "step": step,
                         "lr": r.optim.lr, "train_loss": rng.uniform(0.1, 2.3),
                         "train_acc": rng.uniform(0, 1), "test_loss": rng.uniform(0.1, 2.3),
                         "test_acc": rng.uniform(0, 1),
                         "cos_param": 1.0 if full else rng.uniform(0, 1),
                         "cos_func": 1.0 if full else rng.uniform(0, 1), "diverged": False,
                         "func_dist": 0.0 if full else rng.uniform(0, 1), "wall_time": step * 0.1,
                         "param_dist": 0.0 if full else rng.uniform(0, 1)})
            for layer in setup.engine.layers:
                d = 0.0 if step == 0 else rng.uniform(0.01, 1)
                layer_rows.append({"model": name, "epoch": epoch, "layer": layer,
                                   "distance": d, "relative_distance": d / 3})
    pd.DataFrame(rows, columns=METRICS_COLUMNS).to_csv(folder / "metrics.csv", index=False)
    pd.DataFrame(layer_rows, columns=LAYERS_COLUMNS).to_csv(folder / "layers.csv", index=False)
    return folder


def table_without_clock(path: Path) -> str:
    """A run's table as text without its wall_time column (seconds, not results)."""
    import pandas as pd

    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return table.drop(columns=[c for c in ("wall_time",) if c in table.columns]).to_csv(index=False)
