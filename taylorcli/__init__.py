"""taylorcli: train a network and its Taylorized models in lockstep (Bai et al. 2020)."""

from .taylor import taylorize, taylorize_nested

__all__ = ["taylorize", "taylorize_nested"]
__version__ = "0.1.0"
