"""JAX's persistent compilation cache, on by default for training: a resumed, requeued or
repeated run loads its compiled programs instead of compiling them again.

The folder: the recipe's `train.compile_cache`, else $TAYLORCLI_COMPILE_CACHE, else
~/.cache/taylorcli/jax ($XDG_CACHE_HOME/taylorcli/jax); "off" turns it off. A folder the user
configured for JAX themselves (jax_compilation_cache_dir) is left as it is. JAX keys each
entry by the program, the backend and the device, so one folder can serve a job array; JAX
treats the folder as trusted (anyone who can write to it can run code in your runs).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

OFF = ("off", "0", "false", "no", "none")


def cache_folder(recipe) -> Path | None:
    """Where compiled programs are kept for this recipe's runs, or None when turned off."""
    setting = recipe.train.compile_cache or os.environ.get("TAYLORCLI_COMPILE_CACHE")
    if setting is not None and setting.strip().lower() in OFF:
        return None
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "taylorcli" / "jax"


def enable(recipe) -> Path | None:
    """Point JAX's persistent cache at the recipe's folder (unless the user set one); the folder used."""
    import jax

    folder = cache_folder(recipe)
    current = jax.config.jax_compilation_cache_dir
    if folder is None:
        return None
    if current:
        return Path(current)  # the user's own (or an earlier run's) configuration stays
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"taylorcli: warning: compile cache {folder}: cannot create it ({e.strerror or e}); "
              f"compiling without it", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # The evaluation and kernel programs compile in well under JAX's default 1 s threshold.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    return folder


UNREADABLE = "Error reading persistent compilation cache entry"  # JAX's warning, per entry


@contextlib.contextmanager
def unreadable_entries_said_once(folder: Path | None):
    """JAX warns once per unreadable (corrupted, truncated) cache entry and compiles it again:
    say it in one line for the whole run instead."""
    said: list[str] = []
    with warnings.catch_warnings():
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if UNREADABLE not in str(message):
                return original(message, category, filename, lineno, file, line)
            if not said:
                said.append(str(message))
                print(f"taylorcli: warning: compile cache {folder}: entries that cannot be read "
                      f"(corrupted or truncated) are bypassed and compiled again", file=sys.stderr)

        warnings.showwarning = show
        yield
