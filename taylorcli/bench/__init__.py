"""`python -m taylorcli.bench`: the speed of the Taylor-mode engine, and its profiler."""
