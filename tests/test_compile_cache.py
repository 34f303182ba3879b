"""The persistent compilation cache: where it lives, how it is turned off, and that a repeated
run compiles nothing new."""

import subprocess
import sys

import pytest
import yaml

from taylorcli.engine.compile_cache import cache_folder


def test_folder_from_recipe_then_environment_then_home(tiny_recipe, monkeypatch, tmp_path):
    monkeypatch.setenv("TAYLORCLI_COMPILE_CACHE", str(tmp_path / "env"))
    assert cache_folder(tiny_recipe()) == tmp_path / "env"
    assert cache_folder(tiny_recipe(f"train.compile_cache={tmp_path / 'own'}")) == tmp_path / "own"
    assert cache_folder(tiny_recipe("train.compile_cache=off")) is None
    monkeypatch.setenv("TAYLORCLI_COMPILE_CACHE", "OFF")
    assert cache_folder(tiny_recipe()) is None
    monkeypatch.delenv("TAYLORCLI_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder(tiny_recipe()) == tmp_path / "xdg" / "taylorcli" / "jax"


@pytest.mark.slow
def test_a_repeated_run_compiles_nothing_new(tiny_dict, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    raw = tiny_dict()
    raw["train"]["compile_cache"] = str(tmp_path / "cache")
    recipe.write_text(yaml.safe_dump(raw))

    def train(out):
        proc = subprocess.run([sys.executable, "-m", "taylorcli", "train", recipe, "--out", out],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "first step" in proc.stdout + proc.stderr
        # The run's own programs: the lockstep step and the evaluation. Small eager ops near the
        # 0.1 s threshold may or may not be stored, depending on the machine's load.
        return sorted(p.name for p in (tmp_path / "cache").iterdir()
                      if p.name.startswith(("jit_step-", "jit_logits-")))

    first = train(tmp_path / "a")
    assert len(first) == 2, first
    assert train(tmp_path / "b") == first  # the second run compiled neither again
