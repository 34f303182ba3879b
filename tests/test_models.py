"""Tests for taylorcli.models: parameter counts, both parameterizations, VALID CNN convolutions.

Every expectation is computed by hand (closed-form counts, numpy convolutions), never read
back from the code under test.
"""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from taylorcli.engine.setup import build_setup
from taylorcli.models import CNN, MLP, TwoLayer, WideResNet, abstract_params, build_network, \
    count_params, inspect, linen_network
from taylorcli.models.builtin import Conv, Dense
from taylorcli.recipe import load_recipe


def parameter_count(recipe) -> int:
    """One model's parameters, as a run or a dry run counts them."""
    return build_setup(recipe).parameters

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CIFAR = (32, 32, 3)


# ---------------------------------------------------------------------------
# Parameter counts.


def conv_count(c_in, c_out):
    return 9 * c_in * c_out + c_out


def cnn_count(depth, width, c_in=3, classes=10):
    """CNN-L-C: L 3x3 convolutions with bias, global pool, dense."""
    return conv_count(c_in, width) + (depth - 1) * conv_count(width, width) + width * classes + classes


def wrn_count(depth, widen, width, c_in=3, classes=10):
    """WRN-depth-k-C without batch norm: 3x3 conv shortcut wherever the channel count changes."""
    n = (depth - 4) // 6
    total = conv_count(c_in, width)
    channels = width
    for mult in (16, 32, 64):
        out = mult * widen
        for b in range(n):
            total += conv_count(channels, out) + conv_count(out, out)
            if channels != out:
                total += conv_count(channels, out)
            channels = out
    return total + channels * classes + classes


# (name, module, hand formula, the paper's figure)
PAPER = [
    ("CNN-4-128", CNN(depth=4, width=128, num_classes=10), cnn_count(4, 128), 447_626),
    ("CNN-4-512", CNN(depth=4, width=512, num_classes=10), cnn_count(4, 512), 7_098_890),
    ("WRN-16-4-128", WideResNet(depth=16, widen=4, width=128, num_classes=10),
     wrn_count(16, 4, 128), 3_215_562),
    ("WRN-16-8-256", WideResNet(depth=16, widen=8, width=256, num_classes=10),
     wrn_count(16, 8, 256), 12_845_450),
]


@pytest.mark.parametrize("module, formula, paper", [p[1:] for p in PAPER], ids=[p[0] for p in PAPER])
def test_paper_architectures_parameter_counts(module, formula, paper):
    assert formula == paper  # the hand formula reproduces the paper's number
    params = abstract_params(module, CIFAR)
    assert count_params(params) == paper
    # Abstract only: shapes, no arrays were computed.
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("recipe, paper", [
    ("cnnthin", 447_626), ("cnnthick", 7_098_890), ("wrnthin", 3_215_562), ("wrnthick", 12_845_450),
])
def test_paper_recipes_parameter_counts(recipe, paper):
    assert parameter_count(load_recipe(RECIPES / f"{recipe}.yaml")) == paper


def test_count_params_counts_every_scalar():
    tree = {"a": jnp.zeros((3, 4)), "b": {"c": jnp.zeros(5), "d": jnp.zeros(())}}
    assert count_params(tree) == 12 + 5 + 1


def test_cnn_layer_shapes():
    params = abstract_params(CNN(depth=3, width=7, num_classes=10), (12, 12, 1))
    shapes = {k: (v["kernel"].shape, v["bias"].shape) for k, v in params.items()}
    assert shapes == {
        "conv1": ((3, 3, 1, 7), (7,)),
        "conv2": ((3, 3, 7, 7), (7,)),
        "conv3": ((3, 3, 7, 7), (7,)),
        "dense": ((7, 10), (10,)),
    }


# ---------------------------------------------------------------------------
# Hand-written numpy layers.


def np_conv_valid(x, w):
    """Cross-correlation (as in every deep-learning library), VALID, stride 1, NHWC/HWIO."""
    n, h, wd, _ = x.shape
    out = np.zeros((n, h - 2, wd - 2, w.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nhwc,co->nhwo", x[:, i:i + h - 2, j:j + wd - 2, :], w[i, j])
    return out


def np_conv_same(x, w):
    """Stride-1 SAME: one ring of zeros, then VALID."""
    return np_conv_valid(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), w)


def f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def random_params(module, x, seed):
    """The module's parameter tree (shapes from flax, nothing compiled), filled with N(0, 1/2)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x))["params"]
    return jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(np.float32), shapes)


def test_dense_ntk_closed_form():
    w_std, b_std = 1.7, 0.3
    layer = Dense(6, parameterization="ntk", w_std=w_std, b_std=b_std)
    x = np.random.default_rng(0).normal(size=(4, 11)).astype(np.float32)
    p = random_params(layer, x, 1)
    q = f64(p)
    expected = w_std / math.sqrt(11) * x @ q["kernel"] + b_std * q["bias"]
    np.testing.assert_allclose(layer.apply({"params": p}, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding, np_conv", [("VALID", np_conv_valid), ("SAME", np_conv_same)])
def test_conv_ntk_closed_form(padding, np_conv):
    w_std, b_std = 1.3, 0.2
    layer = Conv(5, padding=padding, parameterization="ntk", w_std=w_std, b_std=b_std)
    x = np.random.default_rng(0).normal(size=(2, 7, 6, 3)).astype(np.float32)
    p = random_params(layer, x, 2)
    fan_in = 9 * 3
    q = f64(p)
    expected = w_std / math.sqrt(fan_in) * np_conv(x, q["kernel"]) + b_std * q["bias"]
    y = layer.apply({"params": p}, x)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("parameterization", ["standard", "ntk"])
def test_cnn_forward_matches_hand_numpy(parameterization):
    """CNN-2-C on 12x12: VALID convolutions (12 -> 10 -> 8), ReLU, global mean, dense."""
    w_std, b_std = 1.5, 0.25
    model = CNN(depth=2, width=5, num_classes=10, parameterization=parameterization,
                w_std=w_std, b_std=b_std)
    x = np.random.default_rng(3).normal(size=(3, 12, 12, 1)).astype(np.float32)
    p = random_params(model, x, 4)
    ntk = parameterization == "ntk"

    def scale(fan_in):
        return w_std / math.sqrt(fan_in) if ntk else 1.0

    bias = b_std if ntk else 1.0
    q = f64(p)
    z1 = scale(9 * 1) * np_conv_valid(x, q["conv1"]["kernel"]) + bias * q["conv1"]["bias"]
    z2 = scale(9 * 5) * np_conv_valid(np.maximum(z1, 0), q["conv2"]["kernel"]) + bias * q["conv2"]["bias"]
    pooled = np.maximum(z2, 0).mean(axis=(1, 2))
    expected = scale(5) * pooled @ q["dense"]["kernel"] + bias * q["dense"]["bias"]
    y, inter = model.apply({"params": p}, x, capture_intermediates=True)
    # VALID: 12x12 -> 10x10 -> 8x8 (SAME would keep 12x12). Captured: each conv's output.
    assert z1.shape == (3, 10, 10, 5) and z2.shape == (3, 8, 8, 5)
    np.testing.assert_allclose(inter["intermediates"]["conv1"]["__call__"][0], z1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(inter["intermediates"]["conv2"]["__call__"][0], z2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_cnn_intermediate_spatial_sizes():
    model = CNN(depth=4, width=3, num_classes=10)
    x = jnp.zeros((1, 12, 12, 1))
    shapes = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, capture_intermediates=True))
    inter = shapes[1]["intermediates"]
    sizes = [inter[f"conv{i}"]["__call__"][0].shape for i in range(1, 5)]
    assert sizes == [(1, 10, 10, 3), (1, 8, 8, 3), (1, 6, 6, 3), (1, 4, 4, 3)]


# ---------------------------------------------------------------------------
# Initialization scales.


def test_standard_init_scales():
    key = jax.random.key(5)
    dense = Dense(1024).init(key, jnp.zeros((1, 512)))["params"]
    std = float(np.std(dense["kernel"]))
    assert std == pytest.approx(math.sqrt(2 / (512 + 1024)), rel=0.1)
    assert float(np.std(dense["bias"])) == pytest.approx(1e-2, rel=0.1)

    conv = Conv(64).init(key, jnp.zeros((1, 8, 8, 64)))["params"]
    fan = 9 * 64  # fan_in = fan_out = receptive field x channels
    assert float(np.std(conv["kernel"])) == pytest.approx(math.sqrt(2 / (2 * fan)), rel=0.1)
    assert 3e-7 < float(np.std(conv["bias"])) < 3e-6  # stax: N(0, 1e-6^2)


def test_ntk_init_is_unit_normal():
    key = jax.random.key(6)
    dense = Dense(1024, parameterization="ntk").init(key, jnp.zeros((1, 512)))["params"]
    conv = Conv(1024, parameterization="ntk").init(key, jnp.zeros((1, 8, 8, 64)))["params"]
    for p in (dense, conv):
        assert float(np.std(p["kernel"])) == pytest.approx(1.0, rel=0.05)
        assert float(np.mean(p["kernel"])) == pytest.approx(0.0, abs=0.02)
        assert float(np.std(p["bias"])) == pytest.approx(1.0, rel=0.1)


def test_ntk_output_scale_independent_of_width():
    """The point of the NTK parameterization: pre-activations stay O(1) however wide the input."""
    stds = []
    for fan_in in (64, 4096):
        x = jax.random.normal(jax.random.key(7), (256, fan_in))
        layer = Dense(64, parameterization="ntk", w_std=1.0, b_std=0.0)
        p = layer.init(jax.random.key(8), x)["params"]
        stds.append(float(jnp.std(layer.apply({"params": p}, x))))
    assert stds[0] == pytest.approx(1.0, rel=0.1)
    assert stds[1] == pytest.approx(1.0, rel=0.1)


def test_build_model_follows_recipe(tiny_recipe):
    recipe = tiny_recipe("model.parameterization=ntk", "model.w_std=1.1", "model.activation=tanh")
    model = build_network(recipe.model, 10).module
    assert isinstance(model, CNN)
    assert (model.depth, model.width, model.parameterization, model.w_std, model.activation) == \
        (2, 4, "ntk", 1.1, "tanh")


@pytest.mark.parametrize("model, expected", [
    (MLP(depth=11, width=4, num_classes=3), [f"dense{i}" for i in range(1, 12)] + ["dense"]),
    (CNN(depth=10, width=2, num_classes=3), [f"conv{i}" for i in range(1, 11)] + ["dense"]),
], ids=["mlp-11", "cnn-10"])
def test_layers_are_listed_input_to_output(model, expected):
    """Figure 3's layer axis: call order, not the sorted names (dense < dense1, conv10 < conv2)."""
    assert inspect(linen_network(model), (24, 24, 1), 3) == expected


def test_twolayer_is_theorem_1s_network():
    """f(x) = m^(-1/2) Σ_r a_r tanh(w_rᵀ x̂) with x̂ = x/‖x‖, a fixed ±1 from the seed, only W a
    parameter; written out here with numpy."""
    net = TwoLayer(width=16, num_classes=3, sign_seed=7)
    x = jax.random.normal(jax.random.key(1), (5, 4, 4, 1))
    params = net.init(jax.random.key(2), x)["params"]
    assert list(params) == ["hidden"] and params["hidden"].shape == (16, 16)
    w = np.asarray(params["hidden"], np.float64)
    a = np.asarray(jax.random.rademacher(jax.random.key(7), (16, 3)), np.float64)
    assert set(np.unique(a)) == {-1.0, 1.0}
    flat = np.asarray(x, np.float64).reshape(5, -1)
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    expected = np.tanh(unit @ w) @ a / 4.0
    np.testing.assert_allclose(np.asarray(net.apply({"params": params}, x)), expected,
                               rtol=1e-5, atol=1e-6)
    # standard Gaussian initialization of W
    big = TwoLayer(width=4096, num_classes=1).init(jax.random.key(3), x)["params"]["hidden"]
    assert float(jnp.std(big)) == pytest.approx(1.0, rel=0.02)
