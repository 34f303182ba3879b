"""The GPU check (`python -m taylorcli.bench.gpu_check`): it refuses a machine without a GPU in
one line, and its measurement of one step is XLA's own figures for that step."""

import jax
import pytest

from taylorcli.bench import gpu_check


def test_without_a_gpu_it_says_so_in_one_line(capsys):
    if jax.default_backend() == "gpu":
        pytest.xfail("this machine has a GPU")
    with pytest.raises(SystemExit) as done:
        gpu_check.main([])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no GPU" in err[0] and "--allow-cpu" in err[0]


def test_one_step_measured_against_its_compiled_flops():
    recipe = gpu_check._recipe("cnnthin", tiny=True)
    row = gpu_check.measure_step(recipe, ("full", "order1"), "float32", repeats=2)
    assert row["models"] == "full+order1" and row["steps_per_s"] > 0
    assert row["images_per_s"] == pytest.approx(recipe.train.batch_size * row["steps_per_s"])
    assert row["achieved_tflops"] == pytest.approx(row["flops_per_step"] * row["steps_per_s"]
                                                   / 1e12)
    assert row["flops_per_step"] > 0 and row["share_of_peak"] is None  # no peak for a CPU
    text = gpu_check.markdown({"device": "cpu", "jax": jax.__version__, "steps": [
        {"recipe": "cnnthin", "batch": 8, **row}], "determinism": [{"identical": True}]})
    assert "| cnnthin | 8 | full+order1 | float32 |" in text
