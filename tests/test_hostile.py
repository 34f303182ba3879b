"""Hostile input and damaged runs: nothing lost, nothing executed, no traceback, no hang.

Each class of failure is provoked for real (a foreign folder, a flipped byte, a crafted pickle,
/dev/zero, a full disk, signals at start-up) and must end with one line and exit 2 (or the
documented 75/130), leaving every file it did not write as it was.
"""

import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import one_line, run_cli, run_signalled


def taylorcli(*args, timeout=None, cwd=None):
    """The command line, in this process (`timeout`: a real process would have needed one)."""
    return run_cli(*args, cwd=cwd)


def tree_digest(folder: Path) -> dict:
    """Every file under a folder with its content hash (what must not change; the lock, which
    holds the pid of the last run to take it, aside)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def recipe_file(tiny_file):
    return tiny_file


@pytest.fixture(scope="module")
def finished(tiny_run):
    """A complete tiny run (2 epochs, a checkpoint each)."""
    return tiny_run


@pytest.fixture
def copy_of(copy_run):
    return copy_run


# ---------------------------------------------------------------------------
# Data loss: taylorcli deletes or overwrites only what it can prove it wrote


def test_a_folder_taylorcli_did_not_create_is_refused_and_untouched(recipe_file, tmp_path):
    theirs = tmp_path / "theirs"
    for name in ("metrics.csv", "layers.csv", "notes.txt"):
        (theirs / name).parent.mkdir(parents=True, exist_ok=True)
        (theirs / name).write_text("mine\n")
    for folder in ("logits", "checkpoints/3", "kernels"):
        (theirs / folder).mkdir(parents=True)
        (theirs / folder / "step00000003.npz").write_bytes(b"mine")
    before = tree_digest(theirs)
    for extra in ((), ("--no-resume",)):
        one_line(taylorcli("train", recipe_file, "--out", theirs, *extra), 2,
                 "is not a taylorcli run", "run.json")
        assert tree_digest(theirs) == before


def test_a_run_that_lost_its_recipe_and_metrics_keeps_its_checkpoints(recipe_file, copy_of):
    run = copy_of()
    (run / "recipe.yaml").unlink()
    (run / "metrics.csv").unlink()
    before = tree_digest(run / "checkpoints")
    one_line(taylorcli("train", recipe_file, "--out", run), 2, "recipe.yaml")
    assert tree_digest(run / "checkpoints") == before


def test_a_name_that_is_a_path_is_refused(recipe_file, tmp_path):
    target = tmp_path / "elsewhere"
    one_line(taylorcli("train", recipe_file, "--set", f"name={target}", cwd=tmp_path), 2,
             "key name", "without '/'")
    assert not target.exists() and not (tmp_path / "runs").exists()


def test_checkpoints_that_became_a_file_end_at_once(recipe_file, copy_of):
    run = copy_of()
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").write_text("not a folder")
    before = (run / "metrics.csv").read_bytes()
    one_line(taylorcli("train", recipe_file, "--out", run, timeout=60), 2, "checkpoints",
             "is a file")
    assert (run / "metrics.csv").read_bytes() == before


@pytest.mark.parametrize("damage", ["deleted", "garbled"])
def test_a_finished_run_with_a_broken_table_is_not_reported_done(damage, recipe_file, copy_of):
    run = copy_of()
    metrics = run / "metrics.csv"
    if damage == "deleted":
        metrics.unlink()
    else:
        metrics.write_text(metrics.read_text().replace("0.", "9.", 3))
    before = tree_digest(run)
    one_line(taylorcli("train", recipe_file, "--out", run), 2, "metrics.csv",
             "missing" if damage == "deleted" else "differs from what the run had written",
             "--no-resume (it deletes")
    assert tree_digest(run) == before


def test_no_resume_builds_the_new_run_before_deleting_the_old(recipe_file, copy_of):
    run = copy_of()
    before = tree_digest(run)
    one_line(taylorcli("train", recipe_file, "--out", run, "--no-resume", "--set",
                       "model.width=1000000", timeout=120), 2, "GiB")
    assert tree_digest(run) == before


# ---------------------------------------------------------------------------
# Code execution: a crafted CIFAR archive


def _archive(path: Path, batch) -> Path:
    """A CIFAR-10 'python version' tarball whose every batch is `batch` (pickled)."""
    with tarfile.open(path, "w:gz") as tar:
        for member in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


class _Payload:
    """Unpickling this calls a function: what a crafted archive would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_archive_runs_no_code(recipe_file, tmp_path):
    marker = tmp_path / "pwned"
    archive = _archive(tmp_path / "cifar-10-python.tar.gz", {b"data": _Payload(marker)})
    proc = taylorcli("train", recipe_file, "--out", tmp_path / "run", "--set", "data.dataset=cifar10",
                     "--set", f"data.archive={archive}", "--set", "data.pad=4")
    one_line(proc, 2, "refused to load", "system")
    assert not marker.exists()


def test_labels_out_of_range_are_the_datas_fault(recipe_file, tmp_path):
    rows = np.random.default_rng(0).integers(0, 256, (20, 3072), dtype=np.uint8)
    archive = _archive(tmp_path / "cifar-10-python.tar.gz",
                       {b"data": rows, b"labels": [10] + [1] * 19})
    proc = taylorcli("train", recipe_file, "--out", tmp_path / "run", "--set", "data.dataset=cifar10",
                     "--set", f"data.archive={archive}", "--set", "train.batch_size=20")
    one_line(proc, 2, "labels must lie in 0..9")


# ---------------------------------------------------------------------------
# Sizes and files that would never end


def test_absurd_sizes_end_in_seconds_with_one_line(recipe_file, tmp_path):
    out = tmp_path / "run"
    one_line(taylorcli("train", recipe_file, "--out", out, "--set", "train.epochs=100000000000000000000000000",
                       timeout=60), 2, "key train.epochs", "<= 1000000")
    one_line(taylorcli("train", recipe_file, "--out", out, "--set", "model.width=1048576",
                       "--set", "model.depth=4", timeout=120), 2, "GiB")
    one_line(taylorcli("train", recipe_file, "--out", out, "--set", "model.width=99999999",
                       timeout=60), 2, "key model.width")
    one_line(taylorcli("train", recipe_file, "--out", out, "--set", "seed=12345678901234567890",
                       timeout=60), 2, "key seed")
    assert not out.exists()


def test_spawn_bounds_its_flags(finished, tmp_path):
    one_line(taylorcli("spawn", finished, "--at", "1", "--children", "100000", timeout=60), 2,
             "--children")
    one_line(taylorcli("spawn", finished, "--at", "1", "--reexpand-every", "1" * 23, timeout=60),
             2, "--reexpand-every")
    one_line(taylorcli("spawn", finished, "--at", "1e400", timeout=60), 2, "--at")


def test_endless_and_enormous_recipe_files(tmp_path):
    one_line(taylorcli("train", "/dev/zero", timeout=60), 2, "/dev/zero", "larger than")
    big = tmp_path / "big.yaml"
    with open(big, "w") as f:
        f.write("data:\n")
        for i in range(200_000):
            f.write(f"  k{i}: {i}\n")
    one_line(taylorcli("train", big, timeout=60), 2, "big.yaml", "larger than")


def test_an_endless_archive_is_refused(recipe_file, tmp_path):
    one_line(taylorcli("train", recipe_file, "--out", tmp_path / "run", "--set", "data.dataset=cifar10",
                       "--set", "data.archive=/dev/zero", timeout=60), 2, "not a regular file")


def test_yaml_traps_are_one_line(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("data: " + "[" * 50_000 + "]" * 50_000 + "\n")
    one_line(taylorcli("train", deep, timeout=60), 2, "deep.yaml")
    twice = tmp_path / "twice.yaml"
    twice.write_text("optim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.5\n")
    one_line(taylorcli("train", twice, timeout=60), 2, "key 'lr' appears twice", "lines 2 and 4")


# ---------------------------------------------------------------------------
# A run directory that cannot be written


def test_a_lock_that_is_a_folder(recipe_file, copy_of):
    run = copy_of()
    (run / ".lock").unlink(missing_ok=True)
    (run / ".lock").mkdir()
    one_line(taylorcli("train", recipe_file, "--out", run, timeout=120), 2, ".lock")


def _chattr_works(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
        ok = os.geteuid() == 0  # an immutable folder stops even root
    return ok


@pytest.mark.slow
def test_unwritable_checkpoints_and_tables(recipe_file, tmp_path):
    if not _chattr_works(tmp_path):
        pytest.xfail("needs chattr +i to make a folder unwritable for this user")
    run = tmp_path / "run"
    stopped = run_signalled(["train", recipe_file, "--out", run], 4, signal.SIGTERM)
    assert stopped.returncode == 75, stopped.stderr
    for target, needle in ((run / "checkpoints", "cannot write checkpoints"),
                           (run / "metrics.csv", "metrics.csv")):
        subprocess.run(["chattr", "+i", str(target)], check=True)  # not even replaced by rename
        try:
            one_line(taylorcli("train", recipe_file, "--out", run, timeout=120), 2, needle)
        finally:
            subprocess.run(["chattr", "-i", str(target)], check=True)
    done = taylorcli("train", recipe_file, "--out", run)
    assert done.returncode == 0, done.stderr  # still resumable


def test_a_full_disk_is_one_line_and_the_run_stays_resumable(recipe_file, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.xfail("needs to mount a small tmpfs to fill a disk")
    try:
        proc = taylorcli("train", recipe_file, "--out", mount / "run", "--set", "eval.save_logits=true")
        one_line(proc, 2, "disk is full", "resumable")
        roomy = tmp_path / "roomy"
        shutil.copytree(mount / "run", roomy)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
    done = taylorcli("train", recipe_file, "--out", roomy)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------
# Reading damaged tables


def test_report_and_compare_skip_bad_rows_and_say_so(copy_of, tmp_path):
    run = copy_of()
    metrics = run / "metrics.csv"
    lines = metrics.read_text().splitlines()
    bad = lines[1].split(",")
    lines.append(",".join(["full", "0", "soon"] + bad[3:]))          # a non-numeric epoch
    lines.append(",".join(["tea"] + bad[1:]))                         # an unknown model
    lines.append(lines[2])                                            # a duplicated row
    metrics.write_text("\n".join(lines) + "\n")
    for args in (("report", run.parent, "--out", tmp_path / "report"), ("compare", run)):
        proc = taylorcli(*args)
        assert proc.returncode == 0, proc.stderr
        said = proc.stdout + proc.stderr
        for why in ("non-numeric", "unknown model name", "duplicate"):
            assert why in said, (args, said)


def test_report_of_a_folder_whose_only_run_is_unreadable(copy_of, tmp_path):
    run = copy_of()
    (run / "metrics.csv").write_text("not,a,table\n1,2\n")
    one_line(taylorcli("report", run.parent, "--out", tmp_path / "report"), 2, "no readable run")


# ---------------------------------------------------------------------------
# Signals at start-up and repeated Ctrl-C

_EARLY = """
import os, signal, sys
import taylorcli.{module} as target
original = target.{function}
def signalled(*args, **kwargs):
    os.kill(os.getpid(), signal.{sig})
    return original(*args, **kwargs)
target.{function} = signalled
from taylorcli import cli
sys.argv = ["taylorcli", *sys.argv[1:]]
cli.console_main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_a_signal_while_starting_exits_75_with_the_usual_line(sig, recipe_file, finished,
                                                               tmp_path):
    code = _EARLY.format(module="data", function="load_for_recipe", sig=sig)
    proc = subprocess.run([sys.executable, "-c", code, "train", str(recipe_file), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=240)
    one_line(proc, 75, "stopped", "rerun the same command")
    code = _EARLY.format(module="spawn.sweep", function="parent_recipe", sig=sig)
    proc = subprocess.run([sys.executable, "-c", code, "spawn", str(finished), "--at", "1",
                           "--out", str(tmp_path / "sweep")], capture_output=True, text=True,
                          timeout=240)
    one_line(proc, 75, "stopped", "rerun the same command")


_CTRL_C = """
import os, signal, sys, threading, time
import taylorcli.run.progress as progress


class ThreeInterrupts(progress.PlainProgress):
    def step(self, step, latest):
        super().step(step, latest)
        if step == 3:
            def interrupt():
                for _ in range(3):
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.05)
            threading.Thread(target=interrupt).start()


progress.make_progress = lambda console=None: ThreeInterrupts()
from taylorcli import cli
sys.argv = ["taylorcli", *sys.argv[1:]]
cli.console_main()
"""


@pytest.mark.slow
def test_three_quick_ctrl_c_give_one_line_and_a_resumable_run(recipe_file, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", _CTRL_C, "train", str(recipe_file), "--out",
                           str(run)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "interrupted" in proc.stderr, proc.stderr
    done = taylorcli("train", recipe_file, "--out", run)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------
# Resuming across storage and evaluation settings


@pytest.mark.slow
def test_resume_across_storage_settings_is_recorded(recipe_file, tmp_path):
    run = tmp_path / "run"
    stopped = run_signalled(["train", recipe_file, "--out", run], 4, signal.SIGTERM)
    assert stopped.returncode == 75, stopped.stderr
    done = taylorcli("train", recipe_file, "--out", run, "--set", "checkpoint.keep=5",
                     "--set", "data.data_dir=/nowhere/tfds", "--set", "eval.batch_size=16")
    assert done.returncode == 0, done.stderr
    info = json.loads((run / "run.json").read_text())
    (change,) = info["resumed_with"]
    assert change["step"] == 4 and any("checkpoint.keep" in c for c in change["changes"])
    other = taylorcli("train", recipe_file, "--out", run, "--set", "optim.lr=0.5")
    line = one_line(other, 2, "different recipe", "optim.lr")
    assert "--no-resume" not in line or "deletes" in line


# ---------------------------------------------------------------------------
# Spawn sweeps keep to their own folders


def test_spawn_keeps_to_its_own_folder(finished, recipe_file, tmp_path):
    before = tree_digest(finished)
    one_line(taylorcli("spawn", finished, "--at", "1", "--out", finished), 2, "holds a taylorcli run")
    assert tree_digest(finished) == before
    sweep = tmp_path / "sweep"
    ok = taylorcli("spawn", finished, "--at", "1", "--out", sweep)
    assert ok.returncode == 0, ok.stderr
    one_line(taylorcli("spawn", finished, "--at", "1", "--order", "2", "--out", sweep), 2,
             "other settings")
    one_line(taylorcli("train", recipe_file, "--out", sweep), 2, "spawn sweep")
    # `report` finds the spawned run inside the sweep
    report = taylorcli("report", tmp_path, "--out", tmp_path / "report", "--format", "csv")
    assert report.returncode == 0, report.stderr
    runs = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert "sweep/at1" in set(runs["run"])
