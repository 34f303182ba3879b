"""Models split across 4 forced CPU devices against the lockstep run on one device."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import TINY
from taylorcli.engine.split_models import device_groups

RECIPE = {**TINY, "name": "split", "optim": {**TINY["optim"], "lr": 0.5}}
# Print where each group of models went, then run the CLI as a user would.
CODE = """
import sys, jax
import taylorcli.engine.split_models as split
original = split.split_models
def traced(*args):
    step, state, evaluator = original(*args)
    print('groups', [(g.names, g.device.id) for g in step.groups], file=sys.stderr)
    for g in step.groups:
        assert all(x.devices() == {g.device} for n in g.names
                   for x in jax.tree.leaves(state.params[n]))
    return step, state, evaluator
split.split_models = traced
from taylorcli.cli import app
app()
"""


def train(tmp_path, name, devices, *sets):
    recipe = tmp_path / "split.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / name
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu"}
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run([sys.executable, "-c", CODE, "train", str(recipe), "--out", str(out),
                           *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stderr


@pytest.mark.slow
def test_split_models_on_four_devices_equal_lockstep(tmp_path):
    lock, _ = train(tmp_path, "lockstep", 1)
    split, log = train(tmp_path, "split", 4, "train.split_models=true")
    # full and orders 1, 2 on three different devices.
    assert "groups [(('order2',), 0), (('order1',), 1), (('full',), 2)]" in log
    one, four = pd.read_csv(lock / "metrics.csv"), pd.read_csv(split / "metrics.csv")
    assert one[["model", "step"]].equals(four[["model", "step"]])
    for col in ["train_loss", "train_acc", "test_loss", "test_acc", "cos_param", "cos_func"]:
        np.testing.assert_allclose(four[col], one[col], rtol=1e-5, atol=1e-6, err_msg=col)
    assert one["cos_param"].min() < 0.999  # the orders move away from the full network

    # A checkpoint of the split state resumes, placed on the devices again.
    shutil.rmtree(split / "checkpoints" / "8")
    train(tmp_path, "split", 4, "train.split_models=true")
    resumed = pd.read_csv(split / "metrics.csv")
    for col in ["train_loss", "test_loss", "cos_param", "cos_func"]:
        np.testing.assert_allclose(resumed[col], one[col], rtol=1e-5, atol=1e-6, err_msg=col)


def test_device_groups_balance_the_step_cost():
    names = ("full", "order1", "order2", "order3", "order4")
    assert device_groups(names, 1) == [names]
    assert device_groups(names, 4) == [("order4",), ("order3",), ("order2",), ("full", "order1")]
    two = device_groups(names, 2)
    assert sorted(n for g in two for n in g) == sorted(names)
    assert two == [("full", "order1", "order4"), ("order2", "order3")]  # loads 9.3 and 8.3
    assert device_groups(("full",), 8) == [("full",)]
