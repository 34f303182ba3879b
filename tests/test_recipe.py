"""Tests for taylorcli.recipe: schema defaults, validation errors, overrides and round trips."""

import textwrap

import pytest
import yaml

from taylorcli.recipe import (
    Recipe,
    RecipeError,
    dump_recipe,
    load_recipe,
    recipe_from_dict,
    recipe_to_dict,
)


def write(tmp_path, text, name="x.yaml"):
    """Write a recipe file and return its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# (id, file text, overrides, substrings the single-line message must contain)
BAD = [
    ("malformed-yaml", "model:\n  arch: cnn\n    depth: [1, 2\n", (), ["x.yaml", "not valid YAML (line 3"]),
    ("unknown-key-hint", "optim:\n  lrr: 0.1\n", (), ["x.yaml", "unknown key 'optim.lrr'", "did you mean 'optim.lr'"]),
    ("unknown-key-no-hint", "optim:\n  zzzzzz: 1\n", (), ["unknown key 'optim.zzzzzz'"]),
    ("unknown-section", "optimizer:\n  lr: 0.1\n", (), ["unknown key 'optimizer'", "did you mean 'optim'"]),
    ("leaf-at-top-level", "lr: 0.1\n", (), ["unknown key 'lr'", "did you mean 'optim.lr'"]),
    ("dotted-key-in-file", "optim.lr: 0.1\n", (), ["unknown key 'optim.lr'", "nested"]),
    ("section-not-mapping", "data: 3\n", (), ["key data", "mapping"]),
    ("str-for-int", "train:\n  epochs: ten\n", (), ["key train.epochs", "expected an integer >= 1", "got 'ten'"]),
    ("bool-for-int", "train:\n  epochs: true\n", (), ["key train.epochs", "got True"]),
    ("float-for-int", "train:\n  batch_size: 1.5\n", (), ["key train.batch_size", "got 1.5"]),
    ("list-for-str", "model:\n  arch: [cnn]\n", (), ["key model.arch", "one of cnn, wrn, mlp"]),
    ("bool-for-float", "optim:\n  lr: true\n", (), ["key optim.lr", "expected a number > 0"]),
    ("str-for-bool", "data:\n  flip: maybe\n", (), ["key data.flip", "true or false"]),
    ("str-for-float", "optim:\n  lr: fast\n", (), ["key optim.lr", "got 'fast'"]),
    ("nan-lr", "optim:\n  lr: .nan\n", (), ["key optim.lr"]),
    ("negative-lr", "optim:\n  lr: -1\n", (), ["x.yaml: key optim.lr: expected a number > 0, got -1"]),
    ("negative-seed", "seed: -3\n", (), ["key seed", ">= 0"]),
    ("order-zero", "taylor:\n  orders: [0, 1]\n", (), ["key taylor.orders", ">= 1"]),
    ("order-duplicate", "taylor:\n  orders: [1, 2, 2]\n", (), ["key taylor.orders", "distinct"]),
    ("order-null", "taylor:\n  orders: null\n", (), ["key taylor.orders"]),
    ("momentum-one", "optim:\n  momentum: 1.0\n", (), ["key optim.momentum", ">= 0 and < 1", "got 1.0"]),
    ("decay-factor-zero", "optim:\n  decay_factor: 0\n", (), ["key optim.decay_factor", "> 0 and <= 1"]),
    ("grad-clip-zero", "optim:\n  grad_clip: 0\n", (), ["key optim.grad_clip", "or null"]),
    ("decay-beyond-epochs", "train: {epochs: 5}\noptim: {decay_epochs: [2, 5]}\n", (),
     ["x.yaml: key optim.decay_epochs", "train.epochs (5)"]),
    ("decay-not-increasing", "optim: {decay_epochs: [3, 2]}\n", (), ["key optim.decay_epochs", "increasing"]),
    ("steps-not-increasing", "eval: {steps: [10, 10]}\n", (), ["key eval.steps", "increasing"]),
    ("wrn-depth-15", "model: {arch: wrn, depth: 15}\n", (), ["key model.depth", "6n+4", "got 15"]),
    ("wrn-depth-4", "model: {arch: wrn, depth: 4}\n", (), ["key model.depth", "6n+4"]),
    ("unknown-arch", "model: {arch: resnet}\n", (), ["key model.arch: expected one of cnn, wrn, mlp, twolayer, or your own network by import path", "got 'resnet'"]),
    ("bad-import-path", "model: {arch: 'my pkg:Net'}\n", (), ["key model.arch", "'package.module:Name'"]),
    ("unknown-dataset", "data: {dataset: Digits!}\n", (), ["key data.dataset", "cifar10", "TFDS"]),
    ("npz-without-path", "data: {dataset: npz}\n", (), ["key data.path", ".npz"]),
    ("adam-with-momentum", "optim: {name: adam, momentum: 0.9}\n", (), ["key optim.momentum", "optim.b1"]),
    ("kwargs-for-builtin", "model: {arch: cnn, kwargs: {blocks: 3}}\n", (), ["key model.kwargs", "built-in"]),
    ("mean-without-std", "data: {mean: [0.5]}\n", (), ["key data.std", "together"]),
    ("unknown-loss", "train: {loss: hinge}\n", (), ["key train.loss", "cross_entropy, mse"]),
    ("python-object-tag", "name: !!python/object/apply:os.system ['echo pwned']\n", (), ["x.yaml", "not valid YAML"]),
    ("empty-file", "", (), ["x.yaml", "empty"]),
    ("comments-only", "# nothing here\n", (), ["x.yaml", "empty"]),
    ("top-level-list", "- a\n- b\n", (), ["x.yaml", "mapping", "list"]),
    ("set-no-equals", "{}\n", ("lr",), ["--set lr: expected key=value"]),
    ("set-empty-key", "{}\n", ("=3",), ["--set =3: expected key=value"]),
    ("set-unknown-path", "{}\n", ("optim.lrr=0.1",),
     ["--set optim.lrr=0.1: unknown key 'optim.lrr' (did you mean 'optim.lr'?)"]),
    ("set-too-deep", "{}\n", ("optim.lr.x=1",), ["--set optim.lr.x=1: unknown key 'optim.lr.x'"]),
    ("set-bad-value", "{}\n", ("optim.lr=-1",), ["--set optim.lr=-1: key optim.lr: expected a number > 0, got -1"]),
    ("set-bad-yaml", "{}\n", ("taylor.orders=[1,",), ["--set taylor.orders=[1,:", "not valid YAML"]),
    ("set-python-tag", "{}\n", ("name=!!python/object/apply:os.system [ls]",), ["--set name=", "not valid YAML"]),
    ("set-whole-section", "{}\n", ("data=3",), ["--set data=3:", "section"]),
    ("set-breaks-cross-check", "optim: {decay_epochs: [5]}\n", ("train.epochs=3",),
     ["--set train.epochs=3: key optim.decay_epochs", "train.epochs (3)"]),
    ("set-later-bad-wins", "{}\n", ("optim.lr=0.5", "optim.lr=0"), ["--set optim.lr=0: key optim.lr"]),
]


@pytest.mark.parametrize("text, overrides, needles", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_recipes_raise_one_line_errors(tmp_path, text, overrides, needles):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    if not overrides:
        assert message.startswith(str(path)), message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError, match=r"nope\.yaml: no such file$"):
        load_recipe(path)


def test_python_object_tag_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(RecipeError):
        load_recipe(path)
    assert not marker.exists()


def test_recipe_error_is_value_error():
    assert issubclass(RecipeError, ValueError)


def test_defaults_and_name_from_file_stem(tmp_path):
    recipe = load_recipe(write(tmp_path, "seed: 3\n", name="cnn_small.yaml"))
    assert recipe == Recipe().model_copy(update={"name": "cnn_small", "seed": 3})
    assert recipe.taylor.orders == (1, 2, 3, 4)
    assert recipe.model.w_std == pytest.approx(2**0.5)
    assert recipe.optim.schedule == "step" and recipe.optim.decay_epochs == ()
    assert recipe_from_dict({}).name == "recipe"


def test_explicit_name_beats_stem(tmp_path):
    assert load_recipe(write(tmp_path, "name: mine\n")).name == "mine"


def test_empty_section_means_defaults(tmp_path):
    assert load_recipe(write(tmp_path, "data:\n  # all commented out\nmodel: {}\n")).data == Recipe().data


def test_scientific_notation_string_is_a_float(tmp_path):
    recipe = load_recipe(write(tmp_path, "optim:\n  lr: 1e-3\n  weight_decay: 5e-4\n"))
    assert recipe.optim.lr == 0.001 and isinstance(recipe.optim.lr, float)
    assert recipe.optim.weight_decay == 0.0005
    assert load_recipe(write(tmp_path, "{}\n"), ["optim.lr=1e-3"]).optim.lr == 0.001


def test_ints_become_floats_and_scalars_become_tuples():
    recipe = recipe_from_dict({"optim": {"lr": 1, "decay_epochs": 5}, "taylor": {"orders": 2}})
    assert recipe.optim.lr == 1.0 and isinstance(recipe.optim.lr, float)
    assert recipe.optim.decay_epochs == (5,)
    assert recipe.taylor.orders == (2,)


def test_orders_sorted_and_may_be_empty():
    assert recipe_from_dict({"taylor": {"orders": [3, 1, 2]}}).taylor.orders == (1, 2, 3)
    assert recipe_from_dict({"taylor": {"orders": []}}).taylor.orders == ()


def test_valid_wrn_depths():
    for depth in (10, 16, 22, 28):
        assert recipe_from_dict({"model": {"arch": "wrn", "depth": depth}}).model.depth == depth
    assert recipe_from_dict({"model": {"arch": "cnn", "depth": 15}}).model.depth == 15


def test_overrides_applied_in_order(tmp_path):
    path = write(tmp_path, "model: {arch: mlp}\ntrain: {epochs: 20}\n")
    recipe = load_recipe(path, [
        "optim.lr=0.01", "optim.lr=0.05", "taylor.orders=[2, 1]", "optim.decay_epochs=[5,10]",
        "data.train_limit=100", "data.train_limit=null", "data.flip=false", "model.arch=wrn",
        "model.depth=16", "name=override", "seed=7", "eval.steps=[1, 10, 100]", "optim.momentum=0.9",
    ])
    assert recipe.optim.lr == 0.05
    assert recipe.taylor.orders == (1, 2)
    assert recipe.optim.decay_epochs == (5, 10)
    assert recipe.data.train_limit is None and recipe.data.flip is False
    assert (recipe.model.arch, recipe.model.depth) == ("wrn", 16)
    assert (recipe.name, recipe.seed) == ("override", 7)
    assert recipe.eval.steps == (1, 10, 100)
    assert recipe.train.epochs == 20


def test_recipe_from_dict_does_not_mutate_input():
    raw = {"optim": {"lr": 0.5}}
    recipe_from_dict(raw, overrides=["optim.lr=0.2", "model.width=8"])
    assert raw == {"optim": {"lr": 0.5}}


CUSTOM = {
    "name": "custom", "seed": 4,
    "data": {"dataset": "synthetic", "archive": "/tmp/cifar.tar.gz", "test_limit": 50, "flip": False},
    "model": {"arch": "wrn", "depth": 10, "widen": 2, "parameterization": "ntk", "b_std": 0.0},
    "taylor": {"orders": [2, 1]},
    "train": {"epochs": 30, "loss": "mse"},
    "optim": {"lr": "1e-3", "momentum": 0.9, "nesterov": True, "grad_clip": 1, "decay_epochs": [10, 20]},
    "eval": {"steps": [1, 2, 4], "save_logits": False},
}


@pytest.mark.parametrize("raw", [{}, CUSTOM], ids=["defaults", "custom"])
def test_round_trips(raw):
    recipe = recipe_from_dict(raw)
    plain = recipe_to_dict(recipe)
    assert recipe_from_dict(plain) == recipe
    assert plain["taylor"]["orders"] == list(recipe.taylor.orders)
    assert yaml.safe_load(dump_recipe(recipe)) == plain
    assert recipe_from_dict(yaml.safe_load(dump_recipe(recipe))) == recipe


def test_recipe_to_dict_is_plain_builtins():
    def walk(obj):
        assert type(obj) in (dict, list, str, int, float, bool, type(None)), type(obj)
        for child in obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ():
            walk(child)

    walk(recipe_to_dict(recipe_from_dict(CUSTOM)))


def test_dump_keeps_schema_order(tmp_path):
    text = dump_recipe(recipe_from_dict(CUSTOM))
    top = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith(" ")]
    assert top == ["name", "seed", "models", "data", "model", "taylor", "train", "optim", "eval",
                   "log", "checkpoint", "spawn"]
    assert "orders: [1, 2]" in text
    path = write(tmp_path, text, name="dumped.yaml")
    assert load_recipe(path) == recipe_from_dict(CUSTOM)


def test_child_seeds_keep_their_order():
    """Which child gets which seed is the user's choice: the list is not sorted."""
    recipe = recipe_from_dict({"spawn": {"children": 3, "child_seeds": [7, 2, 5]}})
    assert recipe.spawn.child_seeds == (7, 2, 5)
    with pytest.raises(RecipeError, match="distinct"):
        recipe_from_dict({"spawn": {"children": 2, "child_seeds": [2, 2]}})


def test_lee_defaults_are_standard_deviations():
    """sigma_w^2 = 2 and sigma_b^2 = 0.1 (Lee et al.), given as standard deviations."""
    model = recipe_from_dict({}).model
    assert model.w_std ** 2 == pytest.approx(2.0) and model.b_std ** 2 == pytest.approx(0.1)


def test_the_fields_table_in_recipes_readme_is_the_schemas():
    """recipes/README.md's table of every field is what `taylorcli recipes --fields` prints."""
    from pathlib import Path

    from taylorcli.recipe.document import fields_markdown

    text = (Path(__file__).resolve().parents[1] / "recipes" / "README.md").read_text()
    start = text.index("<!-- fields: taylorcli recipes --fields -->\n") + len(
        "<!-- fields: taylorcli recipes --fields -->\n")
    end = text.index("<!-- end of fields -->")
    assert text[start:end] == fields_markdown()
    from taylorcli.recipe.schema import KEYS

    assert all(f"`{key}`" in text for key in KEYS)


def test_decays_as_fractions_keep_their_shape_at_any_length():
    # The digits recipe decays x0.1 at 1/2 and 3/4 of its length, so the shortest try of it
    # (`--set train.epochs=2`) is accepted and decays at epochs 1 and 1.5.
    from taylorcli.engine.optimizer import make_schedule
    from taylorcli.recipe import load_named_recipe

    recipe = load_named_recipe("digits", ["train.epochs=2"])
    lr, spe = recipe.optim.lr, 10
    schedule = make_schedule(recipe.optim, spe, recipe.train.epochs)
    want = {0: lr, 9: lr, 10: lr / 10, 14: lr / 10, 15: lr / 100, 19: lr / 100}
    for step, value in want.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-6), step
    with pytest.raises(RecipeError, match="decay_epochs or decay_fractions"):
        load_named_recipe("digits", ["optim.decay_epochs=[1]"])
