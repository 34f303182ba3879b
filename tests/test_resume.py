"""Runs that survive clusters: kill -9 and resume, SIGTERM/SIGUSR1, the lock, divergence, bad checkpoints."""

import os
import signal

import numpy as np
import pytest
import yaml

from conftest import run_cli, run_signalled, tiny
from taylorcli.files import FolderLock

# The tiny recipe with momentum and a step decay: 4 steps an epoch, 8 epochs, a checkpoint
# every 3 steps, the epoch-2 checkpoint kept.
RECIPE = tiny(name="resumable", train={"epochs": 8},
              optim={"momentum": 0.9, "schedule": "step", "decay_epochs": [4]},
              eval={"steps": [3, 5]},
              checkpoint={"every_steps": 3, "keep": 2, "keep_epochs": [2]})


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "resumable.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def finish(recipe_file, out, *extra):
    """`taylorcli train` to the end (in this process): exit code, stdout, stderr."""
    result = run_cli("train", recipe_file, "--out", out, *extra)
    return result.returncode, result.stdout, result.stderr


def resumed_from(stdout):
    """The first step of a run, from its closing line `done: trained steps S..T; ...`."""
    line = next(l for l in stdout.splitlines() if l.startswith("done: trained steps "))
    return int(line.split()[3].split("..")[0].rstrip(";"))


def results(out):
    """The run's tables (wall_time aside: seconds, not results) and its logits."""
    import pandas as pd

    metrics = pd.read_csv(out / "metrics.csv").drop(columns=["wall_time"]).to_csv(index=False)
    logits = {p.name: dict(np.load(p)) for p in sorted((out / "logits").glob("*.npz"))}
    return metrics.encode(), (out / "layers.csv").read_bytes(), logits


@pytest.fixture(scope="module")
def uninterrupted(recipe_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    code, _, stderr = finish(recipe_file, out)
    assert code == 0, stderr
    return results(out)


def assert_same(a, b):
    assert a[0] == b[0], "metrics.csv differs"
    assert a[1] == b[1], "layers.csv differs"
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        for model in a[2][name]:
            np.testing.assert_array_equal(a[2][name][model], b[2][name][model])


# Checkpoints every 3 steps: a save starts only after the previous one is finished and
# signed, so right after step 6 the step-3 checkpoint is complete, and after step 12 the
# step-9 one (steps 8 and 12 are evaluations too, 8 a kept epoch).
@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [7, 13])
def test_sigkill_and_resume_gives_the_same_results(kill_at, recipe_file, uninterrupted, tmp_path):
    out = tmp_path / "run"
    killed = run_signalled(["train", recipe_file, "--out", out], kill_at, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert len(metrics) < len(uninterrupted[0].decode().splitlines())
    code, stdout, stderr = finish(recipe_file, out)  # the same command continues the run
    assert code == 0, stderr
    assert 3 <= resumed_from(stdout) < kill_at, "started over instead of resuming"
    assert_same(results(out), uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_checkpoints_and_exits_75(sig, recipe_file, uninterrupted, tmp_path):
    out = tmp_path / "run"
    stopped = run_signalled(["train", recipe_file, "--out", out], 10, sig)
    assert stopped.returncode == 75, stopped.stderr
    assert "stopped" in stopped.stderr and "Traceback" not in stopped.stderr
    assert "checkpoint saved at step 10" in stopped.stderr  # the step boundary after the signal
    code, stdout, stderr = finish(recipe_file, out)
    assert code == 0, stderr
    assert resumed_from(stdout) == 10
    assert_same(results(out), uninterrupted)


def test_checkpoints_keep_last_n_and_marked_epochs(recipe_file, tmp_path):
    out = tmp_path / "run"
    code, _, stderr = finish(recipe_file, out)
    assert code == 0, stderr
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    # Saved at 3, 6, 8 (epoch 2, kept), 9, ..., 30, 32 (the end); the newest two plus step 8 remain.
    assert steps == [8, 30, 32]


def test_live_run_holds_the_lock(recipe_file, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lock = FolderLock(out)
    lock.acquire()
    try:
        result = run_cli("train", recipe_file, "--out", out)
        assert result.returncode == 2
        assert "in use by a live run" in result.stderr and f"pid {os.getpid()}" in result.stderr
        assert not (out / "metrics.csv").exists()
    finally:
        lock.release()
    # Released (as when the holder dies): the next run proceeds.
    result = run_cli("train", recipe_file, "--out", out, "--set", "train.epochs=1",
                     "--set", "optim.decay_epochs=[]", "--set", "checkpoint.keep_epochs=[]")
    assert result.returncode == 0, result.stderr


def _newest_checkpoint(out):
    return max((p for p in (out / "checkpoints").iterdir() if p.name.isdigit()),
               key=lambda p: int(p.name))


def _flip_a_byte(folder):
    """One flipped byte in the largest data file of a checkpoint (silent damage)."""
    target = max((f for f in (folder / "state").rglob("*") if f.is_file()),
                 key=lambda f: f.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))


@pytest.mark.slow
def test_a_damaged_checkpoint_is_named_and_an_earlier_one_used(recipe_file, uninterrupted,
                                                               tmp_path):
    out = tmp_path / "run"
    killed = run_signalled(["train", recipe_file, "--out", out], 13, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    newest = _newest_checkpoint(out)
    _flip_a_byte(newest)
    code, stdout, stderr = finish(recipe_file, out)
    assert code == 0, stderr
    assert f"checkpoint {newest} is damaged" in stderr and "Traceback" not in stderr
    assert resumed_from(stdout) < int(newest.name)
    assert_same(results(out), uninterrupted)  # nothing of the garbage reached the tables


@pytest.mark.slow
def test_all_checkpoints_damaged_is_one_line_and_changes_nothing(recipe_file, tmp_path):
    out = tmp_path / "run"
    killed = run_signalled(["train", recipe_file, "--out", out], 7, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    for folder in (p for p in (out / "checkpoints").iterdir() if p.name.isdigit()):
        for f in (folder / "state").rglob("*"):
            if f.is_file():
                f.write_bytes(b"garbage")
    before = (out / "metrics.csv").read_bytes()
    code, stdout, stderr = finish(recipe_file, out)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "is damaged" in lines[0] and "Traceback" not in stderr
    assert "--no-resume (it deletes" in lines[0]
    assert (out / "metrics.csv").read_bytes() == before


def divergence_recipe(tmp_path, *sets):
    raw = {**RECIPE, "checkpoint": {"every_epochs": 1}, "optim": {**RECIPE["optim"],
                                                                   "decay_epochs": [4]}}
    path = tmp_path / "diverge.yaml"
    path.write_text(yaml.safe_dump(raw))
    args = ["train", str(path), "--out", str(tmp_path / "run"), "--set", "optim.grad_clip=null",
            "--set", "optim.momentum=0.0"]
    for s in sets:
        args += ["--set", s]
    return args


def test_diverging_taylor_models_are_frozen_and_the_run_goes_on(tmp_path):
    import pandas as pd

    result = run_cli(*divergence_recipe(tmp_path, "optim.lr=10", "taylor.orders=[1,2,3,4]"))
    assert result.returncode == 0, result.stderr
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert not m[m.model == "full"].diverged.any()
    gone = sorted(set(m[m.diverged].model))
    assert gone and "full" not in gone
    for name in gone:
        flags = m[m.model == name].diverged.tolist()
        first = flags.index(True)
        assert all(flags[first:]), f"{name} came back from divergence"
        assert f"warning: {name} diverged" in result.stderr
    assert m[m.model == "full"].step.max() == 32  # the full network trained to the end


def test_diverging_full_network_ends_the_run(tmp_path):
    result = run_cli(*divergence_recipe(tmp_path, "optim.lr=1e6", "train.loss=mse"))
    assert result.returncode == 3
    assert "full network diverged" in result.stderr and "Traceback" not in result.stderr


def test_no_resume_clears_checkpoints(recipe_file, tmp_path):
    out = tmp_path / "run"
    code, _, stderr = finish(recipe_file, out, "--set", "train.epochs=6")
    assert code == 0, stderr
    code, _, stderr = finish(recipe_file, out, "--no-resume", "--set", "train.epochs=6",
                             "--set", "checkpoint.keep_epochs=[]")
    assert code == 0, stderr
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert 8 not in steps  # the old run's kept epoch is gone with it


class SignalAtStart:
    """A quiet progress reporter that sends this process SIGTERM before the first step."""

    def start(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    def compiled(self, *args):
        pass

    def step(self, *args):
        pass

    def evaluation(self, *args):
        pass

    def finish(self, message):
        pass

    def close(self):
        pass


def test_stop_at_step_zero_then_resume_has_no_duplicate_rows(tmp_path):
    import pandas as pd

    from taylorcli.run.progress import PlainProgress
    from taylorcli.recipe import recipe_from_dict
    from taylorcli.analyses.training import train_recipe as train
    from taylorcli.errors import Stopped

    recipe = recipe_from_dict({**RECIPE, "train": {"epochs": 2, "batch_size": 32},
                               "optim": {"lr": 0.1},
                               "checkpoint": {"keep_epochs": [0]}}, "resumable")
    out = tmp_path / "run"
    with pytest.raises(Stopped) as stopped:
        train(recipe, str(out), SignalAtStart())
    assert stopped.value.step == 0
    result = train(recipe, str(out), PlainProgress(stream=open(os.devnull, "w")))
    m = pd.read_csv(out / "metrics.csv")
    assert not m.duplicated(["model", "step"]).any()
    assert sorted(set(m.step)) == [0, 3, 4, 5, 8]
    assert result.steps == 8
