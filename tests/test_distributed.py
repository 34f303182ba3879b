"""Multi-process runs for real: two CPU processes joined by jax.distributed (gloo collectives)."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import TINY, run_cli
from taylorcli.engine.processes import launch_settings

RECIPE = {**TINY, "name": "multi", "optim": {**TINY["optim"], "lr": 0.5}}
COLUMNS = ["train_loss", "train_acc", "test_loss", "test_acc", "cos_param", "cos_func"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(tmp_path, out, processes, *sets, devices=1):
    recipe = tmp_path / "multi.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    port = free_port()
    args = [a for s in sets for a in ("--set", s)]
    procs = []
    for i in range(processes):
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        if processes > 1:
            env |= {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                    "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(i)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "taylorcli.cli", "train", str(recipe), "--out", str(out),
             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs):
    outs = [p.communicate(timeout=300) for p in procs]
    return [p.returncode for p in procs], outs


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    one = tmp_path / "one"
    codes, _ = finish(launch(tmp_path, one, 1))
    assert codes == [0]
    two = tmp_path / "two"
    codes, outs = finish(launch(tmp_path, two, 2))
    assert codes == [0, 0], outs
    # Process 0 reports and writes; process 1 is silent and writes nothing of its own.
    assert "final evaluation" in outs[0][0] and "final evaluation" not in outs[1][0]
    assert "eval epoch" not in outs[1][0]
    a, b = pd.read_csv(one / "metrics.csv"), pd.read_csv(two / "metrics.csv")
    assert a[["model", "step"]].equals(b[["model", "step"]])
    for col in COLUMNS:
        np.testing.assert_allclose(b[col], a[col], rtol=1e-5, atol=1e-6, err_msg=col)
    assert a["cos_param"].min() < 0.999
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["4", "8"]


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_at_one_step_and_resumes(tmp_path):
    sets = ("train.epochs=12", "checkpoint.every_epochs=100")
    out = tmp_path / "stopped"
    procs = launch(tmp_path, out, 2, *sets)
    deadline = time.monotonic() + 200
    # Wait for the second evaluation, so both are inside the training loop.
    while not ((out / "metrics.csv").exists() and
               len(pd.read_csv(out / "metrics.csv")) >= 2 * 3):
        assert time.monotonic() < deadline and procs[0].poll() is None
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # only process 1 hears it, as after a node's notice
    codes, outs = finish(procs)
    assert codes == [75, 75], outs
    steps = {line.split("checkpoint saved at step ")[1].split(";")[0]
             for _, err in outs for line in err.splitlines() if "checkpoint saved" in line}
    assert len(steps) == 1 and int(steps.pop()) % 10 == 0  # the same agreed step
    codes, outs = finish(launch(tmp_path, out, 2, *sets))
    assert codes == [0, 0], outs
    codes, _ = finish(launch(tmp_path, tmp_path / "straight", 1, *sets))
    a = pd.read_csv(tmp_path / "straight" / "metrics.csv")
    b = pd.read_csv(out / "metrics.csv")
    assert a[["model", "step"]].equals(b[["model", "step"]])
    for col in COLUMNS:
        np.testing.assert_allclose(b[col], a[col], rtol=1e-5, atol=1e-6, err_msg=col)


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"}, None),  # the batch script
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "2"}, {}),  # srun
    ({"JAX_COORDINATOR_ADDRESS": "h:1234"}, {"num_processes": None, "process_id": None}),
    ({"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     {"num_processes": 2, "process_id": 1}),
    ({"JAX_COORDINATOR_ADDRESS": "h:1234", "TAYLORCLI_DISTRIBUTED": "0"}, None),
])
def test_launch_settings(monkeypatch, env, expected):
    for key in list(os.environ):
        if key.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS",
                           "TAYLORCLI_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launch_settings() == expected


@pytest.mark.parametrize("env,needle", [
    ({"JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES"),
    ({"JAX_NUM_PROCESSES": "2"}, "both or neither"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "JAX_PROCESS_ID: expected 0 .. 1"),
])
def test_bad_launch_settings_exit_2(tmp_path, env, needle, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    for key, value in {"JAX_COORDINATOR_ADDRESS": "localhost:1", **env}.items():
        monkeypatch.setenv(key, value)
    proc = run_cli("train", recipe, "--out", tmp_path / "o")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("taylorcli: error:")
    assert not (tmp_path / "o").exists()
