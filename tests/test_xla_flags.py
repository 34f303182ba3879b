"""taylorcli's default XLA flags: added once, never over a user's own, and really applied."""

import os
import subprocess
import sys

import pytest

from taylorcli.engine import xla_flags

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
checked = xla_flags._jaxlib_version() in xla_flags._CHECKED


@pytest.mark.skipif(not checked, reason="flag only passed to the jaxlib versions it was checked on")
def test_added_beside_the_users_flags(monkeypatch):
    monkeypatch.setattr(xla_flags, "_backend_started", lambda: False)
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    flags = xla_flags.apply_defaults(env)
    assert flags == env["XLA_FLAGS"]
    assert flags.startswith("--xla_force_host_platform_device_count=4 ")
    assert flags.count(FLAG) == 1
    assert xla_flags.apply_defaults(env).count(FLAG) == 1  # idempotent


@pytest.mark.skipif(not checked, reason="flag only passed to the jaxlib versions it was checked on")
@pytest.mark.parametrize("off", ["0", "false", "Off", "no"])
def test_users_own_setting_and_opt_out_left_alone(off, monkeypatch):
    # In this pytest process JAX may have started already; the subprocess test covers that.
    monkeypatch.setattr(xla_flags, "_backend_started", lambda: False)
    env = {"XLA_FLAGS": f"{FLAG}=+individual_convolution"}
    assert xla_flags.apply_defaults(env) == f"{FLAG}=+individual_convolution"
    env = {"TAYLORCLI_XLA_DEFAULTS": off}
    xla_flags.apply_defaults(env)
    assert "XLA_FLAGS" not in env
    env = {"TAYLORCLI_XLA_DEFAULTS": "1"}
    xla_flags.apply_defaults(env)
    assert FLAG in env["XLA_FLAGS"]


CONV_HLO = """
import os, sys
import jax, jax.numpy as jnp
if sys.argv[1] == "late":
    jax.devices()  # the backend starts before taylorcli is imported
import taylorcli  # noqa: F401 - the library alone changes nothing
assert os.environ.get("XLA_FLAGS") is None, os.environ.get("XLA_FLAGS")
from taylorcli.engine import xla_flags
xla_flags.apply_defaults()  # what the `taylorcli` command and the benchmark do first
print(os.environ.get("XLA_FLAGS", ""))
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
x, w = jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
print(jax.jit(conv).lower(x, w).compile().as_text())
"""


@pytest.mark.skipif(not checked, reason="flag only passed to the jaxlib versions it was checked on")
@pytest.mark.parametrize("opt_out,when", [("1", "first"), ("0", "first"), ("1", "late")])
def test_cpu_convolutions_leave_ynnpack(opt_out, when):
    """The entry points' default keeps convolutions out of YNNPACK; opting out brings it back.

    Importing taylorcli changes nothing; after JAX started its backend the default leaves
    XLA_FLAGS as it found it.
    """
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", TAYLORCLI_XLA_DEFAULTS=opt_out)
    out = subprocess.run([sys.executable, "-c", CONV_HLO, when], env=env, capture_output=True,
                         text=True, check=True).stdout
    flags, hlo = out.split("\n", 1)
    applied = opt_out == "1" and when == "first"
    assert (FLAG in flags) == applied
    assert "convolution" in hlo
    assert ("__ynn_fusion" in hlo) == (not applied)


def test_import_leaves_the_environment_alone_and_the_command_sets_the_flag():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", TAYLORCLI_XLA_DEFAULTS="1")
    code = ("import os, sys\n"
            "import taylorcli, taylorcli.cli\n"
            "before = os.environ.get('XLA_FLAGS')\n"
            "sys.argv = ['taylorcli', '--version']\n"
            "try:\n    taylorcli.cli.console_main()\nexcept SystemExit:\n    pass\n"
            "print(repr(before), '|', os.environ.get('XLA_FLAGS', ''))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()[-1]
    before, after = out.split(" | ")
    assert before == "None"
    assert (FLAG in after) == checked
