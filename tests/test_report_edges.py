"""`report` at the edges: one run that cannot be drawn among good ones, folders of linked run
directories, and notes that name the bundled recipe a pip user can train."""

import math

import pandas as pd

from conftest import hand_run, run_cli, tiny


def test_a_run_that_diverged_at_step_zero_gets_a_note_and_the_others_are_reported(tmp_path):
    runs = tmp_path / "runs"
    hand_run(runs / "good", tiny(name="good"), seed=1)
    bad = hand_run(runs / "bad", tiny(name="bad"), seed=2)
    m = pd.read_csv(bad / "metrics.csv")
    later = m["step"] > 0
    for column in ("train_loss", "test_loss", "cos_param", "cos_func", "func_dist"):
        m.loc[later, column] = math.nan
    m.loc[later, "diverged"] = True
    m.to_csv(bad / "metrics.csv", index=False)
    layers = pd.read_csv(bad / "layers.csv")
    layers = layers[layers["epoch"] == 0]  # nothing after step 0
    layers.to_csv(bad / "layers.csv", index=False)
    result = run_cli("report", runs, "--out", tmp_path / "rep", "--format", "csv")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "rep" / "runs.csv", keep_default_na=False)
    assert {"good", "bad"} <= set(table["run"])
    assert (tmp_path / "rep" / "figures" / "figure2_good.png").is_file()


def test_report_follows_linked_run_directories(tiny_run, tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    (links / "mine").symlink_to(tiny_run)
    (links / "loop").symlink_to(links)  # a link back up must not make the walk endless
    result = run_cli("report", links, "--out", tmp_path / "rep", "--format", "csv")
    assert result.returncode == 0, result.stderr
    runs = pd.read_csv(tmp_path / "rep" / "runs.csv", keep_default_na=False)
    assert "mine" in set(runs["run"])


def test_missing_settings_name_the_bundled_recipe(tiny_run, tmp_path):
    result = run_cli("report", tiny_run, "--out", tmp_path / "rep")
    assert result.returncode == 0, result.stderr
    notes = (tmp_path / "rep" / "report.md").read_text()
    assert "taylorcli train cnnthin" in notes and "recipes/cnnthin.yaml" not in notes
