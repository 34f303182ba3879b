"""Watching a run: TensorBoard event files read back by TensorBoard's own reader (tbparse),
wall_time in metrics.csv, and progress that shows the newest minibatch loss, counts steps/s
from the first compiled step, and is on by default in the Python API."""

import io
import re

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from conftest import TINY, run_cli, tiny, write_recipe
from taylorcli.run.progress import PlainProgress, RichProgress


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tb")
    recipe = write_recipe(tmp, tiny(name="logged"))
    out = tmp / "run"
    result = run_cli("train", recipe, "--out", out, "--set", "log.tensorboard=true",
                     "--set", "log.every_steps=2")
    assert result.returncode == 0, result.stderr
    return out


def test_tensorboard_holds_losses_metrics_lr_and_the_recipe(logged_run):
    from tbparse import SummaryReader

    reader = SummaryReader(str(logged_run / "tensorboard"))
    scalars = reader.scalars
    tags = set(scalars["tag"])
    for model in ("full", "order1", "order2"):
        assert {f"batch_loss/{model}", f"test_acc/{model}", f"train_loss/{model}",
                f"cos_func/{model}", f"func_dist/{model}"} <= tags
    assert "lr" in tags
    # The train loss at a steady cadence: every 2 of the 8 steps.
    steps = sorted(scalars.loc[scalars["tag"] == "batch_loss/full", "step"])
    assert steps == [2, 4, 6, 8]
    # Every evaluation metric as metrics.csv has it.
    metrics = pd.read_csv(logged_run / "metrics.csv")
    for row in metrics.itertuples():
        got = scalars[(scalars["tag"] == f"test_acc/{row.model}") & (scalars["step"] == row.step)]
        assert len(got) == 1 and got["value"].iloc[0] == pytest.approx(row.test_acc, abs=1e-6)
    assert np.allclose(scalars.loc[scalars["tag"] == "lr", "value"], 0.1)
    text = reader.text
    assert len(text) == 1 and "name: logged" in text["value"].iloc[0]


def test_metrics_carry_the_wall_time_since_the_run_began(logged_run):
    m = pd.read_csv(logged_run / "metrics.csv")
    times = m.groupby("step")["wall_time"].first()
    assert (times.diff().dropna() >= 0).all() and times.iloc[0] >= 0
    assert times.iloc[-1] > times.iloc[0]


def _rich():
    buf = io.StringIO()
    return RichProgress(Console(file=buf, force_terminal=True, width=160), refresh_s=0), buf


def test_the_live_table_shows_the_newest_ready_batch_loss():
    progress, buf = _rich()
    progress.start(10, 5, ["full", "order1"])
    assert "compiling" in buf.getvalue()
    progress.compiled(1, 3.0)
    progress.step(1, lambda: {"full": (2.25, 0.1), "order1": (2.5, 0.1)})
    progress.step(2, lambda: None)  # still computing: the previous values stay
    assert "2.2500" in buf.getvalue() and "2.5000" in buf.getvalue()
    progress.step(3, lambda: {"full": (1.125, 0.3), "order1": (1.75, 0.2)})
    progress.close()
    last = buf.getvalue().rsplit("step ", 1)[1]
    assert "1.1250" in last and "1.7500" in last


def test_steps_per_second_count_from_the_first_compiled_step():
    out = io.StringIO()
    progress = PlainProgress(stream=out, every_s=0)
    progress.start(100, 10, ["full"])
    progress.step(1, lambda: {"full": (1.0, 0.5)})  # before `compiled`: no rate yet
    assert "compiling" in out.getvalue().splitlines()[-1]
    progress.compiled(1, 30.0)
    progress.step(5, lambda: {"full": (0.5, 0.5)})
    rate = re.search(r"([\d.]+) steps/s", out.getvalue().splitlines()[-1])
    assert rate and float(rate.group(1)) > 1  # 4 steps in far less than 30 s
    assert "first step done 30.0 s after the start" in out.getvalue()


def test_the_done_line_says_how_long_starting_and_training_took(tiny_run):
    printed = (tiny_run.parent / "train.out").read_text()
    done = next(line for line in printed.splitlines() if line.startswith("done:"))
    assert re.search(r"trained steps 0\.\.8; starting \(data, model, compilation\) took "
                     r"[\d.]+ s, training [\d.]+ s( \([\d.]+ s of it evaluating\))?, [\d.]+ steps/s", done), done


def test_the_api_prints_concise_progress_unless_asked_not_to(tmp_path, capsys):
    import taylorcli

    raw = {**TINY, "train": {"epochs": 1, "batch_size": 32}}
    taylorcli.train(raw, out=tmp_path / "a")
    shown = capsys.readouterr().out
    assert "eval epoch 1 step 4" in shown and "done: trained steps 0..4" in shown
    assert len(shown.splitlines()) < 12
    taylorcli.train(raw, out=tmp_path / "b", progress=False)
    assert capsys.readouterr().out == ""


def test_a_later_run_of_one_process_counts_its_start_from_its_own_call():
    # `paper local` trains run after run in one process: only the first counts the launch.
    import time

    from taylorcli.run import startup

    startup.mark_launch()
    time.sleep(0.2)
    first = startup.StartupClock()
    time.sleep(0.2)
    second = startup.StartupClock()
    assert first.since_launch() >= 0.4 and "imports" in first.phases
    assert second.since_launch() < 0.1 and "imports" not in second.phases
