"""taylorcli's default XLA flags: added once, never over a user's own, and really applied."""

import os
import subprocess
import sys

import pytest

from taylorcli import xla_flags

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
checked = xla_flags._jaxlib_version() in xla_flags._CHECKED


@pytest.mark.skipif(not checked, reason="flag only passed to the jaxlib versions it was checked on")
def test_added_beside_the_users_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    flags = xla_flags.apply_defaults(env)
    assert flags == env["XLA_FLAGS"]
    assert flags.startswith("--xla_force_host_platform_device_count=4 ")
    assert flags.count(FLAG) == 1
    assert xla_flags.apply_defaults(env).count(FLAG) == 1  # idempotent


def test_users_own_setting_and_opt_out_left_alone():
    env = {"XLA_FLAGS": f"{FLAG}=+individual_convolution"}
    assert xla_flags.apply_defaults(env) == f"{FLAG}=+individual_convolution"
    env = {"TAYLORCLI_XLA_DEFAULTS": "0"}
    xla_flags.apply_defaults(env)
    assert "XLA_FLAGS" not in env


CONV_HLO = """
import jax, jax.numpy as jnp
import taylorcli  # noqa: F401
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
x, w = jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
print(jax.jit(conv).lower(x, w).compile().as_text())
"""


@pytest.mark.skipif(not checked, reason="flag only passed to the jaxlib versions it was checked on")
@pytest.mark.parametrize("opt_out", ["1", "0"])
def test_cpu_convolutions_leave_ynnpack(opt_out):
    """Importing taylorcli first keeps convolutions out of YNNPACK; opting out brings it back."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", TAYLORCLI_XLA_DEFAULTS=opt_out)
    hlo = subprocess.run([sys.executable, "-c", CONV_HLO], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "convolution" in hlo
    assert ("__ynn_fusion" in hlo) == (opt_out == "0")
