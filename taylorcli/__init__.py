"""taylorcli: train a network and its Taylorized models in lockstep (Bai et al. 2020)."""

from . import xla_flags

# Before anything starts JAX's backend: XLA reads its flags once, then.
xla_flags.apply_defaults()

from .taylor import taylorize, taylorize_nested  # noqa: E402

__all__ = ["taylorize", "taylorize_nested"]
__version__ = "0.1.0"
