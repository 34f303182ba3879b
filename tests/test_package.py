"""The package as users install and import it: layers, import cost, bundled data, the wheel."""

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "taylorcli"
# DESIGN.md's data flow, earliest first: a module imports only from its own layer and earlier.
LAYERS = ["errors", "files", "names", "recipe", "taylor", "models", "data", "metrics", "engine",
          "run", "analyses", "spawn", "report", "bench", "paper", "api", "cli", "__main__"]


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def _imports(path: Path, module: str):
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            yield from (n for n in [target, *names] if n.startswith("taylorcli."))
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("taylorcli."))


def test_no_module_imports_from_a_later_layer():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        module = ".".join(parts)
        here = _layer(module)
        if here == "__init__":
            continue  # the public API names its lazy imports as strings, not imports
        for target in _imports(path, module):
            there = _layer(target)
            if there in LAYERS and LAYERS.index(there) > LAYERS.index(here):
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def _python(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env=environ, cwd=ROOT).stdout.strip()


def test_import_loads_no_jax_and_changes_no_environment():
    out = _python("import os, sys, taylorcli\n"
                  "print('jax' in sys.modules, os.environ.get('XLA_FLAGS'), taylorcli.__version__)")
    loaded, flags, version = out.split()
    assert loaded == "False" and flags == "None"
    assert version.count(".") == 2


def test_public_api_names_resolve_on_first_use():
    out = _python("import taylorcli\n"
                  "print(taylorcli.taylorize.__module__, taylorcli.train.__module__, "
                  "taylorcli.load_run.__module__, sorted(dir(taylorcli)))")
    assert out.startswith("taylorcli.taylor taylorcli.api taylorcli.run.reading")


def test_help_and_version_load_no_heavy_library():
    code = ("import sys\nfrom taylorcli import cli\nsys.argv = ['taylorcli', {args}]\n"
            "try:\n    cli.console_main()\nexcept SystemExit as e:\n    code = e.code\n"
            "heavy = [m for m in ('jax', 'pandas', 'orbax', 'matplotlib', 'flax') if m in sys.modules]\n"
            "print('EXIT', code, heavy)")
    for args in ("'--help'", "'train', '--help'", "'report', '--help'", "'--version'"):
        out = _python(code.format(args=args))
        assert out.splitlines()[-1] == "EXIT 0 []", (args, out)
    assert _python(code.format(args="'--version'")).startswith("taylorcli ")


def test_bundled_recipes_are_listed_and_trainable_by_name(tmp_path):
    from taylorcli.recipe import bundled_recipes, load_named_recipe, load_recipe

    names = set(bundled_recipes())
    assert {p.stem for p in (ROOT / "recipes").glob("*.yaml")} == names
    by_name = load_named_recipe("digits", ["train.epochs=40"])
    assert by_name == load_recipe(ROOT / "recipes" / "digits.yaml", ["train.epochs=40"])
    out = subprocess.run([sys.executable, "-m", "taylorcli", "recipes"], capture_output=True,
                         text=True, cwd=tmp_path, env=os.environ | {"COLUMNS": "200"})
    assert out.returncode == 0
    for name in names:
        assert name in out.stdout
    assert "scikit-learn's digits" in out.stdout


def test_an_unknown_recipe_name_is_one_line_with_a_hint(tmp_path):
    out = subprocess.run([sys.executable, "-m", "taylorcli", "train", "digit"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "did you mean 'digits'" in lines[0], out.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(out), str(ROOT)], check=True, capture_output=True,
                   cwd=tmp_path_factory.mktemp("elsewhere"))
    (found,) = out.glob("taylorcli-*.whl")
    return found


def test_the_wheel_ships_the_recipes_and_the_papers_tables(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for recipe in (ROOT / "recipes").glob("*.yaml"):
        assert f"taylorcli/recipes/{recipe.name}" in names
    data = PACKAGE / "paper" / "data"
    for table in [*data.glob("*.csv"), *data.glob("*.yaml")]:
        assert f"taylorcli/paper/data/{table.name}" in names
    assert "taylorcli/paper/data/bai2020.yaml" in names and "taylorcli/paper/plan.py" in names
    assert "taylorcli/engine/lockstep.py" in names and "taylorcli/bench/__main__.py" in names
