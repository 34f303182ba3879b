"""`python -m taylorcli.bench`: the CPU convolution default first, then the benchmark."""

from ..engine.xla_flags import apply_defaults

apply_defaults()  # an entry point, before JAX starts: XLA reads its flags once

from .benchmark import main  # noqa: E402

main()
