"""`taylorcli report` and `compare` on run directories written by hand (conftest.hand_run).

Every number in every table is checked against the metrics.csv it came from, read here with
pandas alone, and against the paper's CSVs in taylorcli/paper/data/; nothing is compared with a
stored copy of the report's own output.
"""

import io
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import hand_run, run_cli
from taylorcli.recipe import load_recipe, recipe_from_dict, recipe_to_dict

PAPER = Path(__file__).resolve().parents[1] / "taylorcli" / "paper" / "data"
EPOCHS = 3
# The tiny recipe made a little larger, so that the models' accuracies differ (a table that
# mixed models up would fail): 512 digits / batch 16 = 32 steps per epoch, all 360 test digits,
# evaluated at 0, step 2, and epochs 1, 2, 3.
BASE = ["model.width=8", "data.train_limit=512", "data.test_limit=360", "train.batch_size=16",
        "eval.batch_size=360", f"train.epochs={EPOCHS}", "eval.steps=[2]"]
# Run directory -> more overrides. Names map them onto the paper's tables:
# cnnthin -> Tables 1/2 CNNTHIN; table3_* -> Table 3 (width); table4_* -> Table 4 (lr).
RUNS = {
    "cnnthin": ["name=cnnthin"],
    "table3_cnnthin": ["name=table3_cnnthin", "model.width=8"],
    "table3_cnnthick": ["name=table3_cnnthick", "model.width=16"],
    "table4_lr0.1": ["name=table4_lr0.1", "optim.lr=0.1"],
    "table4_lr0.01": ["name=table4_lr0.01", "optim.lr=0.01"],
}
KILLED = "group/killed"  # a copy of cnnthin cut after epoch 1, as a killed run leaves it
BROKEN = "group/broken"  # a recipe.yaml and nothing else: a run that never evaluated
LABELS2 = {"linearized (k=1)": "order1", "quadratic (k=2)": "order2", "full network": "full"}
LABELS34 = {"LIN (k=1)": "order1", "QUAD (k=2)": "order2", "FULL NN": "full"}


def invoke(*args):
    return run_cli(*args)


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_dict):
    """A results folder of hand-written runs, one incomplete and one broken, and its reports
    (md and csv)."""
    root = tmp_path_factory.mktemp("results")
    for seed, (name, sets) in enumerate(RUNS.items()):
        recipe = recipe_to_dict(recipe_from_dict(tiny_dict(), "tiny", [*BASE, *sets]))
        hand_run(root / name, recipe, seed)
    killed = root / KILLED
    hand_run(killed, recipe_to_dict(load_recipe(root / "cnnthin" / "recipe.yaml")), 0,
             last_epoch=1)
    (root / BROKEN).mkdir(parents=True)
    shutil.copy(root / "cnnthin" / "recipe.yaml", root / BROKEN / "recipe.yaml")
    out = root / "report"
    for fmt in ("md", "csv"):
        result = invoke("report", root, "--format", fmt)
        assert result.returncode == 0, result.stderr + result.stdout
    return root, out


def metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv")


def value(run_dir: Path, model: str, epoch: float, column: str) -> float:
    m = metrics(run_dir)
    row = m[(m["model"] == model) & np.isclose(m["epoch"], epoch)]
    assert len(row) == 1
    return float(row[column].iloc[0])


def last_epoch(run_dir: Path) -> float:
    return float(metrics(run_dir)["epoch"].max())


def cnn_params(depth, width, channels=1, classes=10):
    """CNN-L-C parameters in closed form: 3x3 convs with bias, then a dense layer."""
    total, c_in = 0, channels
    for _ in range(depth):
        total += 9 * c_in * width + width
        c_in = width
    return total + width * classes + classes


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)


def test_runs_table_names_incomplete_broken_and_missing(results):
    root, out = results
    runs = pd.read_csv(out / "runs.csv", keep_default_na=False)
    found = runs[runs["run"] != ""].set_index("run")
    assert set(found.index) == {*RUNS, KILLED, BROKEN}  # the report's own folder is no run
    for name in RUNS:
        assert found.loc[name, "status"] == "complete"
        assert float(found.loc[name, "last_epoch"]) == EPOCHS
    assert found.loc[KILLED, "status"] == f"incomplete (epoch 1 of {EPOCHS})"
    assert float(found.loc[KILLED, "last_epoch"]) == 1
    assert found.loc[BROKEN, "status"].startswith("not readable") and \
        "metrics.csv" in found.loc[BROKEN, "status"]
    settings = pd.read_csv(PAPER / "settings.csv")
    have = {load_recipe_of(root / name).name for name in [*RUNS, KILLED]}
    missing = runs[runs["status"] == "missing"]
    assert set(missing["recipe"]) == set(settings["recipe"]) - have
    assert {"cnnthick", "wrnthin", "wrnthick", "table4_ntk"} <= set(missing["recipe"])
    md = (out / "report.md").read_text()
    notes = (out / "notes.txt").read_text()
    for text in (md, notes):
        assert f"{KILLED}: incomplete (epoch 1 of {EPOCHS})" in text
        assert "taylorcli train table4_ntk" in text and "taylorcli train wrnthick" in text
        assert BROKEN in text


def load_recipe_of(run_dir: Path):
    return load_recipe(run_dir / "recipe.yaml")


def test_table1_matches_recipes_metrics_and_paper(results):
    root, out = results
    t1 = pd.read_csv(out / "table1.csv", keep_default_na=False, na_values=[""])
    paper = pd.read_csv(PAPER / "table1_recipes.csv").set_index("name")
    assert set(t1["run"]) == {*RUNS, KILLED}
    for row in t1.itertuples():
        run = root / row.run
        recipe = load_recipe_of(run)
        assert row.params == cnn_params(recipe.model.depth, recipe.model.width)
        assert (row.epochs, row.batch, row.lr, row.grad_clip) == (
            recipe.train.epochs, recipe.train.batch_size, recipe.optim.lr, recipe.optim.grad_clip)
        assert row.architecture == f"CNN-{recipe.model.depth}-{recipe.model.width}"
        assert row.schedule == "constant" and row.optimizer == "SGD"
        assert row.epoch == last_epoch(run)
        assert same(row.test_acc, value(run, "full", last_epoch(run), "test_acc"))
        if recipe.name == "cnnthin":  # mapped by name to the paper's CNNTHIN
            assert row.setting == "CNNTHIN"
            assert same(row.test_acc_paper, paper.loc["CNNTHIN", "full_test_accuracy"])
        else:  # other recipes get a row with the paper's column empty
            assert isinstance(row.setting, float) and math.isnan(row.setting)
            assert math.isnan(row.test_acc_paper)
    assert cnn_params(2, 8) == 80 + 584 + 90  # CNN-2-8: conv 1->8, conv 8->8, dense 8->10
    assert set(t1["params"]) == {754, cnn_params(2, 16)}


def test_table2_final_accuracy_paper_and_difference(results):
    root, out = results
    t2 = pd.read_csv(out / "table2.csv")
    paper = pd.read_csv(PAPER / "table2_final_test_accuracy.csv").set_index("model")
    assert len(t2) == len([*RUNS, KILLED]) * 3
    # digits runs are not the paper's CIFAR-10 setting: its numbers beside them, no difference
    assert "diff" not in t2.columns
    for row in t2.itertuples():
        run = root / row.run
        assert row.epoch == last_epoch(run)
        ours = value(run, LABELS2[row.model], last_epoch(run), "test_acc")
        assert same(row.test_acc, ours)
        if load_recipe_of(run).name == "cnnthin":
            assert same(row.test_acc_paper, paper.loc[row.model, "CNNTHIN"])
        else:
            assert math.isnan(row.test_acc_paper)
    md = (out / "report.md").read_text()
    assert "test_acc: paper (CIFAR-10, full scale)" in md  # the paper's column says whose it is
    assert "| diff |" not in md
    killed = t2[t2["run"] == KILLED]
    assert (killed["epoch"] == 1).all()
    # The fixture is only a test if the three models' accuracies differ.
    for run, epoch in (("cnnthin", EPOCHS), (KILLED, 1)):
        m = metrics(root / run)
        assert m.loc[np.isclose(m["epoch"], epoch), "test_acc"].nunique() == 3


def test_difference_only_for_a_run_of_the_papers_own_setting(tmp_path):
    """A run of the bundled CNNTHIN recipe as it is (CIFAR-10, its length, batch and schedule;
    cut after epoch 1, as a killed run) gets ours − paper; a digits run beside it does not."""
    from taylorcli.recipe import load_named_recipe

    cifar = recipe_to_dict(load_named_recipe("cnnthin", ["taylor.orders=[1]"]))
    hand_run(tmp_path / "runs" / "cifar", cifar, 0, last_epoch=1)
    digits = recipe_to_dict(recipe_from_dict(
        {**cifar, "data": {"dataset": "digits", "pad": 1, "flip": False},
         "model": {**cifar["model"], "width": 8}, "train": {**cifar["train"], "epochs": 2,
                                                            "batch_size": 64},
         "optim": {**cifar["optim"], "decay_epochs": []}}, "digits"))
    hand_run(tmp_path / "runs" / "digits", digits, 1)
    result = invoke("report", tmp_path / "runs", "--format", "csv", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    t2 = pd.read_csv(tmp_path / "out" / "table2.csv")
    paper = pd.read_csv(PAPER / "table2_final_test_accuracy.csv").set_index("model")
    for row in t2.itertuples():
        assert same(row.test_acc_paper, paper.loc[row.model, "CNNTHIN"])  # both map to CNNTHIN
        if row.run == "cifar":
            assert same(row.diff, row.test_acc - paper.loc[row.model, "CNNTHIN"])
        else:
            assert math.isnan(row.diff)


@pytest.mark.parametrize("key,paper_csv,runs", [
    ("table3", "table3_width.csv", ["table3_cnnthin", "table3_cnnthick"]),
    ("table4", "table4_lr_parameterization.csv", ["table4_lr0.1", "table4_lr0.01"]),
])
def test_tables_3_and_4_against_metrics_and_paper(results, key, paper_csv, runs):
    root, out = results
    table = pd.read_csv(out / f"{key}.csv")
    paper = pd.read_csv(PAPER / paper_csv)
    wanted = [float(m.group(1)) for c in paper.columns if (m := re.fullmatch(r"test_acc_ep(\d+)", c))]
    assert len(wanted) == 2
    settings = pd.read_csv(PAPER / "settings.csv").set_index("recipe")["setting"]
    assert list(dict.fromkeys(table["run"])) == runs  # in the paper's row order
    for row in table.to_dict("records"):
        run = root / row["run"]
        assert row["setting"] == settings[load_recipe_of(run).name]
        ref = paper[(paper["setting"] == row["setting"]) & (paper["model"] == row["model"])]
        assert len(ref) == 1
        for e in wanted:
            # A 3-epoch run has neither epoch 10 nor 80/100: the nearest earlier evaluation.
            got = max(x for x in metrics(run)["epoch"].unique() if x <= e)
            assert row[f"epoch_ep{e:g}"] == got == EPOCHS
            for col in ("test_acc", "cos_param", "cos_func"):
                name = f"{col}_ep{e:g}"
                assert same(row[name], value(run, LABELS34[row["model"]], got, col))
                assert same(row[f"{name}_paper"], float(ref[name].iloc[0]))
    md = (out / "report.md").read_text()
    assert f"epoch 10 shown at epoch {EPOCHS}" in md


def markdown_table(md: str, heading: str) -> pd.DataFrame:
    """The first table under a '## heading' of report.md, as strings."""
    lines = []
    for line in md.split(f"## {heading}", 1)[1].splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    cells = [[c.strip() for c in l.strip("|").split(" | ")] for l in lines]
    return pd.DataFrame(cells[2:], columns=cells[0])


def test_markdown_shows_the_same_numbers(results):
    root, out = results
    md = (out / "report.md").read_text()
    t2 = markdown_table(md, "Table 2")
    csv = pd.read_csv(out / "table2.csv")
    assert len(t2) == len(csv)
    for shown, row in zip(t2.to_dict("records"), csv.itertuples()):
        assert shown["run"] == row.run and shown["model"] == row.model
        assert float(shown["test_acc"]) == pytest.approx(row.test_acc, abs=5e-5)
        paper = shown["test_acc: paper (CIFAR-10, full scale)"]
        if math.isnan(row.test_acc_paper):
            assert paper == "—"
        else:
            assert float(paper) == pytest.approx(row.test_acc_paper, abs=5e-5)
    for name in RUNS:
        assert f"figures/figure2_{name}.png" in md and f"figures/figure3_{name}.png" in md


def test_figures_written_nonempty_at_column_width(results):
    root, out = results
    for name in [*RUNS, KILLED]:
        slug = name.replace("/", "_")
        for fig in ("figure2", "figure3"):
            path = out / "figures" / f"{fig}_{slug}.png"
            data = path.read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            assert len(data) > 10_000
            with Image.open(path) as im:
                # 3.5 in at 200 dpi, give or take the tight bounding box.
                assert 600 <= im.width <= 760, im.size
                assert np.asarray(im.convert("L")).std() > 10  # not a blank canvas
        assert (out / "recipes" / f"{slug}.yaml").read_text() == \
            (root / name / "recipe.yaml").read_text()


def test_compare_labels_by_recipe_difference_and_picks_epochs(results, tmp_path):
    root, _ = results
    lr = invoke("compare", root / "table4_lr0.1", root / "table4_lr0.01", "--epochs", "1,1.5",
                "--format", "csv", "--out", tmp_path / "lr.csv")
    assert lr.returncode == 0, lr.stderr
    table = pd.read_csv(tmp_path / "lr.csv")
    assert list(table.columns) == [
        "setting", "run", "model", "test_acc_ep1", "test_acc_ep1.5", "cos_param_ep1",
        "cos_param_ep1.5", "cos_func_ep1", "cos_func_ep1.5", "epoch_ep1", "epoch_ep1.5"]
    assert set(zip(table["run"], table["setting"])) == {
        ("table4_lr0.1", "optim.lr=0.1"), ("table4_lr0.01", "optim.lr=0.01")}
    assert (table["epoch_ep1"] == 1).all() and (table["epoch_ep1.5"] == 1).all()
    for row in table.to_dict("records"):
        for col in ("test_acc", "cos_param", "cos_func"):
            expected = value(root / row["run"], LABELS34[row["model"]], 1, col)
            assert same(row[f"{col}_ep1"], expected) and same(row[f"{col}_ep1.5"], expected)
    assert "epoch 1.5 shown at epoch 1" in lr.stdout

    width = invoke("compare", root / "table3_cnnthin", root / "table3_cnnthick",
                   "--epochs", "1,3", "--format", "md")
    assert width.returncode == 0, width.stderr
    assert "| model.width=8 | table3_cnnthin | QUAD (k=2) |" in width.stdout
    assert "| model.width=16 | table3_cnnthick | FULL NN |" in width.stdout
    acc1, acc3 = (value(root / "table3_cnnthick", "order1", e, "test_acc") for e in (1, 3))
    assert f"| model.width=16 | table3_cnnthick | LIN (k=1) | {acc1:.4f} | {acc3:.4f} |" \
        in width.stdout

    killed = invoke("compare", root / "cnnthin", root / KILLED, "--epochs", "3")
    assert killed.returncode == 0, killed.stderr
    assert f"incomplete (epoch 1 of {EPOCHS})" in killed.stdout
    assert "epoch 3 shown at epoch 1" in killed.stdout


def test_report_default_out_and_rerun(results):
    root, out = results
    assert out == root / "report" and (out / "report.md").is_file()
    again = invoke("report", root / "table4_lr0.1", "--out", out.parent / "single")
    assert again.returncode == 0, again.stderr
    runs = pd.read_csv(out / "runs.csv", keep_default_na=False)
    assert "report" not in set(runs["run"])
    single = (out.parent / "single" / "report.md").read_text()
    assert "| table4_lr0.1 | table4_lr0.1 | table4: CNNTHIN standard param constant lr 0.1 |" \
        in single


@pytest.mark.parametrize("args,names", [
    (["report", "{root}/nowhere"], "RESULTS_DIR"),
    (["report", "{root}", "--format", "tex"], "--format"),
    (["report", "{root}/cnnthin/logits"], "RESULTS_DIR"),
    (["compare", "{root}/cnnthin", "--epochs", "10,x"], "--epochs"),
    (["compare", "{root}/cnnthin", "--epochs=-1"], "--epochs"),
    (["compare", "{root}/cnnthin", "--format", "tex"], "--format"),
    (["compare", "{root}/" + BROKEN], "metrics.csv"),
    (["compare", "{root}/nowhere"], "nowhere"),
    (["compare"], "RUN_DIR"),
])
def test_bad_input_exits_2_with_one_line(results, args, names):
    root, _ = results
    result = invoke(*(a.format(root=root) for a in args))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taylorcli: error: ")
    assert names in lines[0] and "Traceback" not in result.stderr


def test_compare_defaults_to_the_paper_tables_epochs(results):
    """Table 4 runs side by side at its epochs (10 and 100), other runs at 10 and their last."""
    root, _ = results
    cases = [(["table4_lr0.1", "table4_lr0.01"], ["ep10", "ep100"]),
             (["table3_cnnthin", "table3_cnnthick"], ["ep10", "ep80"]),
             (["cnnthin"], [f"ep{EPOCHS}"])]  # no paper table: epoch min(10, last) and the last
    for names, tags in cases:
        result = invoke("compare", *(root / n for n in names), "--format", "csv")
        assert result.returncode == 0, result.stderr
        table = pd.read_csv(io.StringIO(result.stdout))
        shown = sorted({c.removeprefix("test_acc_") for c in table.columns
                        if c.startswith("test_acc_")})
        assert shown == sorted(tags), (names, shown)
