"""taylorcli: train a network and its Taylorized models in lockstep (Bai et al. 2020).

    from taylorcli import taylorize, taylorize_nested   # f_k = taylorize(apply_fn, params0, k)
    from taylorcli import train, load_run               # run = train("digits", out="runs/d")

Importing the package sets no flag, reads no environment and starts no JAX backend: each
name is imported on first use.
"""

__version__ = "0.2.0"
__all__ = ["taylorize", "taylorize_nested", "train", "load_run", "Run", "__version__"]

_WHERE = {"taylorize": "taylor", "taylorize_nested": "taylor", "train": "api",
          "load_run": "api", "Run": "api"}


def __getattr__(name: str):
    """The public API, imported when first used (PEP 562)."""
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'taylorcli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
