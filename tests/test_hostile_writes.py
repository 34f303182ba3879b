"""The second hostile round (issue 23), one section per class of failure: shell text from data
reaching a shell; writing or deleting what taylorcli did not create; input that eats the
machine; values that slip through. Each case holds a file of the user's beside what taylorcli
writes and checks it is untouched, or checks that nothing executes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import TINY, one_line, run_cli, tiny, write_recipe
from hashlib import sha256


def digest(folder: Path) -> dict:
    """Every file under a folder (links not followed) with its content hash."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_symlink():
            out[p.relative_to(folder).as_posix()] = "link -> " + os.readlink(p)
        elif p.is_file() and p.name != ".lock":
            out[p.relative_to(folder).as_posix()] = sha256(p.read_bytes()).hexdigest()
    return out


def users_folder(path: Path, files=("mine.txt",)) -> Path:
    """A folder of the user's, with files taylorcli must never touch."""
    path.mkdir(parents=True, exist_ok=True)
    for name in files:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(f"the user's {name}\n")
    return path


# ---------------------------------------------------------------------------
# Shell text from data never reaches a shell

def _manifest(tmp_path: Path, name="tinypaper", run_name="a", sets=()) -> Path:
    recipe = write_recipe(tmp_path, TINY)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"name": name, "runs": [
        {"name": run_name, "recipe": str(recipe), "set": list(sets)}]}))
    return path


@pytest.mark.parametrize("field, value", [
    ("name", "evil\ntouch PWNED\n#"), ("name", "a b"), ("name", "x;touch PWNED"),
    ("name", "$(touch PWNED)"), ("run", "evil\ntouch PWNED"), ("run", "r`touch PWNED`"),
    ("run", "../escape")])
def test_names_a_script_would_misread_are_refused(field, value, tmp_path):
    manifest = _manifest(tmp_path, **({"name": value} if field == "name" else {"run_name": value}))
    out = tmp_path / "out"
    one_line(run_cli("paper", "slurm", manifest, "--out", out, cwd=tmp_path), 2,
             "expected" if field == "name" else "name")
    assert not out.exists() and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("out", ["with space", "new\nline", "dollar$(touch PWNED)", "pct%j",
                                 "quote'd", "semi;colon"])
def test_out_paths_a_script_cannot_carry_are_refused(out, tmp_path):
    manifest = _manifest(tmp_path)
    one_line(run_cli("paper", "slurm", manifest, "--out", tmp_path / out, cwd=tmp_path), 2,
             "--out", "SLURM script")
    assert not (tmp_path / out).exists()


@pytest.mark.parametrize("flags, needle", [
    (["--partition", "gpu;touch PWNED"], "--partition"),
    (["--account", "lab name"], "--account"),
    (["--time", "1:00\n#SBATCH --x"], "--time"),
    (["--mem", "8G`id`"], "--mem"),
    (["--sbatch", "--qos=a\ntouch PWNED"], "--sbatch"),
    (["--sbatch", "touch PWNED"], "--sbatch"),
    (["--setup", "module load cuda; touch PWNED"], "--setup"),
    (["--report-partition", "cpu$(id)"], "--report-partition")])
def test_slurm_flags_that_would_run_as_shell_code_are_refused(flags, needle, tmp_path):
    out = tmp_path / "out"
    one_line(run_cli("paper", "slurm", _manifest(tmp_path), "--out", out, *flags,
                     cwd=tmp_path), 2, needle)
    assert not out.exists() and not (tmp_path / "PWNED").exists()


def test_values_that_reach_a_script_are_quoted_and_nothing_executes(tmp_path):
    """A `--set` value full of shell syntax travels to the task's command line as one word,
    through the real array script, a stand-in sbatch/scontrol and a stand-in taylorcli."""
    marker = tmp_path / "PWNED"
    hostile = "name=x$(touch PWNED)`touch PWNED`;touch PWNED"  # the job runs in tmp_path
    manifest = _manifest(tmp_path, sets=[hostile])
    out = tmp_path / "out"
    setup = tmp_path / "env.sh"
    setup.write_text("export FROM_SETUP=1\n")
    made = run_cli("paper", "slurm", manifest, "--out", out, "--setup", setup,
                   "--sbatch", "--qos=long", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (out / "logs").is_dir()  # Slurm needs the folder of --output before the job runs
    array = (out / "slurm" / "train.sbatch").read_text()
    assert "#SBATCH --cpus-per-task=" in array and "#SBATCH --mem=" in array
    assert "#SBATCH --qos=long" in array
    # Every #SBATCH line is one line; the job's shell lines are the script's own.
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "taylorcli").write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                                    f"open({str(tmp_path / 'argv.json')!r}, 'w').write("
                                    f"json.dumps([sys.argv[1:], os.environ.get('FROM_SETUP')]))\n")
    (bin_ / "scontrol").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_.iterdir():
        tool.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", SLURM_ARRAY_TASK_ID="0",
               SLURM_JOB_ID="7")
    done = subprocess.run(["bash", out / "slurm" / "train.sbatch"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    argv, from_setup = json.loads((tmp_path / "argv.json").read_text())
    assert hostile in argv and from_setup == "1"
    assert not marker.exists()


# ---------------------------------------------------------------------------
# Writing or deleting what taylorcli did not create

def test_no_resume_never_deletes_through_links(copy_run, tmp_path):
    run = copy_run()
    outside = users_folder(tmp_path / "outside", ["ckpts/2019/photo.jpg",
                                                   "logits/step99999999.npz"])
    before = digest(outside)
    shutil.rmtree(run / "checkpoints")
    shutil.rmtree(run / "logits")
    (run / "checkpoints").symlink_to(outside / "ckpts")
    (run / "logits").symlink_to(outside / "logits")
    for flags in (["--no-resume"], []):
        one_line(run_cli("train", run / "recipe.yaml", "--out", run, *flags), 2,
                 "symbolic link")
    assert digest(outside) == before


def test_a_link_inside_a_run_is_never_written_through(copy_run, tmp_path):
    run = copy_run()
    outside = users_folder(tmp_path / "outside")
    before = digest(outside)
    shutil.rmtree(run / "logits")
    (run / "logits").symlink_to(outside)
    one_line(run_cli("train", run / "recipe.yaml", "--out", run, "--no-resume"), 2, "logits")
    assert digest(outside) == before


def test_paper_does_not_adopt_a_folder_of_the_users(tmp_path):
    mine = users_folder(tmp_path / "mine", ["plan.csv", "slurm/submit.sh", "report/report.md"])
    before = digest(mine)
    for action in ("slurm", "plan", "local"):
        one_line(run_cli("paper", action, _manifest(tmp_path), "--out", mine, cwd=tmp_path), 2,
                 "not a `taylorcli paper` folder")
    assert digest(mine) == before


def test_report_does_not_replace_the_users_report(tiny_run, tmp_path):
    mine = users_folder(tmp_path / "myrep", ["report.md"])
    before = digest(mine)
    one_line(run_cli("report", tiny_run.parent, "--out", mine), 2, "not a taylorcli report")
    assert digest(mine) == before
    ours = tmp_path / "ours"
    assert run_cli("report", tiny_run.parent, "--out", ours).returncode == 0
    again = run_cli("report", tiny_run.parent, "--out", ours)  # its own folder: rewritten
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("target", ["device", "link", "users_file"])
def test_compare_writes_only_a_new_file_or_its_own(target, tiny_run, tmp_path):
    mine = tmp_path / "mine.md"
    mine.write_text("my notes\n")
    if target == "device":
        out = Path("/dev/null")
    elif target == "link":
        out = tmp_path / "link.md"
        out.symlink_to(mine)
    else:
        out = mine
    result = run_cli("compare", tiny_run, "--out", out)
    one_line(result, 2, "--out")
    assert "wrote" not in result.stdout
    assert mine.read_text() == "my notes\n"
    assert Path("/dev/null").is_char_device()
    fresh = tmp_path / "fresh.csv"
    for _ in range(2):  # new, then its own output replaced
        assert run_cli("compare", tiny_run, "--out", fresh).returncode == 0
    assert fresh.read_text().startswith("setting,run,")


def test_lr_search_and_spawn_keep_out_of_the_users_folders(tiny_run, tmp_path):
    mine = users_folder(tmp_path / "mine")
    before = digest(mine)
    one_line(run_cli("lr-search", tiny_run / "recipe.yaml", "--lrs", "0.1", "--epochs", "1",
                     "--out", mine), 2, "--out")
    one_line(run_cli("spawn", tiny_run, "--at", "1", "--out", mine), 2, "--out")
    assert digest(mine) == before


def test_a_second_paper_local_on_the_same_folder_is_refused(tmp_path):
    from taylorcli.files import FolderLock, OwnedFolder

    out = tmp_path / "pl"
    OwnedFolder(out, "paper.json").claim({"kind": "paper", "paper": "tinypaper",
                                          "scale": "full"}, "a paper folder")
    lock = FolderLock(out)
    lock.acquire()
    try:
        one_line(run_cli("paper", "local", _manifest(tmp_path), "--out", out, cwd=tmp_path), 2,
                 "in use by a live taylorcli paper --local")
    finally:
        lock.release()
    assert sorted(p.name for p in out.iterdir()) == [".lock", "paper.json"]


def test_the_write_rule_itself(tmp_path):
    """files.py: inside an owned folder only, regular files only, no links below it, atomic."""
    from taylorcli.errors import OwnershipError
    from taylorcli.files import OwnedFolder, write_owned, write_output_file

    folder = OwnedFolder(tmp_path / "run", "run.json")
    with pytest.raises(OwnershipError):
        folder.write("a.txt", b"x")  # not claimed yet
    folder.claim({"kind": "train"}, "a run")
    folder.write("sub/a.txt", b"x")
    assert (tmp_path / "run" / "sub" / "a.txt").read_bytes() == b"x"
    users_folder(tmp_path / "elsewhere")
    (tmp_path / "run" / "via").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OwnershipError, match="symbolic link"):
        folder.write("via/mine.txt", b"overwritten")
    assert (tmp_path / "elsewhere" / "mine.txt").read_text() == "the user's mine.txt\n"
    with pytest.raises(OwnershipError):
        write_owned(tmp_path / "elsewhere" / "x.txt", b"x")  # no marker above it
    folder.remove_tree("via")  # a link is left alone, never followed
    assert (tmp_path / "elsewhere" / "mine.txt").exists() and (tmp_path / "run" / "via").is_symlink()
    with pytest.raises(OwnershipError, match="not written by taylorcli"):
        write_output_file(tmp_path / "elsewhere" / "mine.txt", b"new", b"sig")
    assert not [p for p in (tmp_path / "run").rglob("*.tmp")]


# ---------------------------------------------------------------------------
# Input that would eat the machine or hang it

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi"))


def test_a_yaml_alias_bomb_is_one_line_at_once(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("model:\n  arch: user_nets:TinyResNet\n  kwargs:\n" + "".join(
        f"    {line}\n" for line in BOMB.splitlines()))
    assert len(recipe.read_bytes()) < 1000
    started = time.monotonic()
    one_line(run_cli("train", recipe, "--dry-run"), 2, "bomb.yaml", "aliases")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(BOMB + "name: p\ntitle: *i\nruns: [{name: a, recipe: digits}]\n")
    one_line(run_cli("paper", "plan", manifest, "--out", tmp_path / "o"), 2, "aliases")
    one_line(run_cli("train", "digits", "--set", "model.kwargs=" + "{" + BOMB.replace(
        "\n", ", ").rstrip(", ") + "}", "--dry-run"), 2, "aliases")
    assert time.monotonic() - started < 60  # hours before this bound existed


def test_a_manifest_with_too_many_runs_is_refused(tmp_path):
    manifest = tmp_path / "many.yaml"
    manifest.write_text(yaml.safe_dump({"name": "many", "runs": [
        {"name": f"r{i}", "recipe": "digits"} for i in range(1001)]}))
    one_line(run_cli("paper", "plan", manifest, "--out", tmp_path / "o"), 2, "at most 1000")


# ---------------------------------------------------------------------------
# Values that slip through or crash

def test_labels_beyond_int32_are_refused(tmp_path):
    x = np.zeros((64, 8, 8), np.uint8)
    y = np.arange(64) % 3
    y[5] = 2**40
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:8], y_test=np.arange(8) % 3)
    recipe = write_recipe(tmp_path, tiny(data={"dataset": "npz", "path": str(tmp_path / "d.npz"),
                                               "train_limit": None, "test_limit": None}))
    one_line(run_cli("train", recipe, "--out", tmp_path / "run"), 2, "y_train",
             str(2**40))


def test_a_run_name_of_hundreds_of_characters_reports(tiny_run, tmp_path):
    name = "sp ünï 🙂 " + "x" * 300
    runs = tmp_path / "runs"
    runs.mkdir()
    target = runs / name[:200]
    shutil.copytree(tiny_run, target, ignore=shutil.ignore_patterns(".lock"))
    result = run_cli("report", runs, "--out", tmp_path / "rep")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "rep" / "report.md").is_file()


@pytest.mark.slow
def test_a_corrupted_compile_cache_is_one_warning_line(tmp_path):
    raw = tiny(train={"epochs": 1, "compile_cache": str(tmp_path / "cache")})
    recipe = write_recipe(tmp_path, raw)
    env = {k: v for k, v in os.environ.items() if k != "TAYLORCLI_COMPILE_CACHE"}
    run = lambda out: subprocess.run([sys.executable, "-m", "taylorcli", "train", recipe,
                                      "--out", out], capture_output=True, text=True, env=env,
                                     timeout=300)
    first = run(tmp_path / "a")
    assert first.returncode == 0, first.stderr
    entries = list((tmp_path / "cache").iterdir())
    assert entries
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:50])
    second = run(tmp_path / "b")
    assert second.returncode == 0, second.stderr
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert lines == [f"taylorcli: warning: compile cache {tmp_path / 'cache'}: entries that "
                     f"cannot be read (corrupted or truncated) are bypassed and compiled again"]


# ---------------------------------------------------------------------------
# Signals outside the training loop: every command stops within seconds

def _stop_after(args, ready: str, sig, tmp_path, timeout=240):
    """Start `taylorcli ARGS`, send `sig` once stdout shows `ready`; (exit code, seconds to exit,
    stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "taylorcli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    deadline = time.monotonic() + timeout
    seen = ""
    while ready not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    assert ready in seen, seen
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, time.monotonic() - sent, err


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 75), (signal.SIGUSR1, 75),
                                       (signal.SIGINT, 130)])
def test_a_dry_run_compiling_stops_within_seconds(sig, code, tmp_path):
    returncode, seconds, err = _stop_after(["train", "wrnthick", "--dry-run"],
                                           "compiling the lockstep step", sig, tmp_path)
    assert returncode == code, err
    assert seconds < 10, seconds
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taylorcli: stopped:"), err


@pytest.mark.slow
def test_a_report_stops_within_seconds_and_writes_nothing_half(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    for i in range(30):  # enough figures to take a while
        shutil.copytree(tiny_run, runs / f"r{i:02d}", ignore=shutil.ignore_patterns(".lock"))
    proc = subprocess.Popen([sys.executable, "-m", "taylorcli", "report", runs, "--out",
                             tmp_path / "rep"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while not (tmp_path / "rep" / "figures").is_dir() and proc.poll() is None:
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.xfail("the report finished before the signal arrived")
    assert proc.returncode == 75, err
    assert time.monotonic() - sent < 10
    for png in (tmp_path / "rep").rglob("*.png"):  # every file whole
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
