"""XLA flags the `taylorcli` command and the benchmark set before JAX starts its backend.

Only the entry points call `apply_defaults` (never `import taylorcli`): a library must not
change the environment of the notebook or script that imports it. Someone calling the
library directly on the CPU can get the same speed by setting the flag themselves, before
importing JAX: XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution.
"""

from __future__ import annotations

import os
from importlib import metadata

# jaxlib 0.10 hands every CPU convolution to YNNPACK, which runs each one on a single thread:
# on 2 cores a CNN-4-64 training step takes 2.5x longer than with XLA's own (Eigen)
# convolutions, and weight gradients run at a sixth of the speed. The flag only changes how
# the CPU backend compiles convolutions; GPU compilation ignores it.
_CPU_CONV = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# XLA aborts the process on a flag it does not know, so the flag is only passed to the jaxlib
# versions it was checked on; others keep their defaults.
_CHECKED = ((0, 10),)
_OFF = ("0", "false", "no", "off")


def _jaxlib_version() -> tuple[int, int] | None:
    try:
        major, minor = metadata.version("jaxlib").split(".")[:2]
        return int(major), int(minor)
    except (metadata.PackageNotFoundError, ValueError):
        return None


def _backend_started() -> bool:
    """Whether JAX has started a backend already (XLA has read its flags; too late to add any)."""
    import sys

    if "jax" not in sys.modules:  # not even imported: nothing has started
        return False
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # private API: assume not, as at a normal import
        return False


def _gpu_possible(environ=os.environ) -> bool:
    """Whether JAX may start a GPU backend here: a CUDA or ROCm plugin is installed and
    JAX_PLATFORMS does not pin the CPU (the CPU flag stays off: a GPU run needs none)."""
    import importlib.util

    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms and not any(p in platforms for p in ("cuda", "gpu", "rocm")):
        return False
    return any(importlib.util.find_spec(name) is not None for name in
               ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin",
                "jax_rocm60_plugin"))


def apply_defaults(environ=os.environ) -> str:
    """Add taylorcli's CPU flags to XLA_FLAGS unless set already, opted out, or a GPU may run;
    return XLA_FLAGS.

    It must run before JAX starts a backend (the entry points call it first); after that it leaves
    XLA_FLAGS alone. Processes started from this one inherit the flag, as they inherit any
    XLA_FLAGS. `TAYLORCLI_XLA_DEFAULTS=0` (or false/no/off) turns it off.
    """
    flags = environ.get("XLA_FLAGS", "")
    if (environ.get("TAYLORCLI_XLA_DEFAULTS", "1").strip().lower() in _OFF
            or _jaxlib_version() not in _CHECKED or _backend_started()
            or _gpu_possible(environ)):
        return flags
    name = _CPU_CONV.split("=")[0]
    if name not in flags:
        flags = f"{flags} {_CPU_CONV}".strip()
        environ["XLA_FLAGS"] = flags
    return flags
