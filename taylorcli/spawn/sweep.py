"""`taylorcli spawn`: one spawned run per spawn epoch, in a sweep folder of its own.

Each spawned run is an ordinary run directory (OUT/atE, resumable with the same command, or
with `taylorcli train OUT/atE/recipe.yaml --out OUT/atE`). OUT is marked as one sweep
(run.json: kind sweep, with its orders, children and re-expansions), so a second sweep with
other settings is not mixed into it; the summary is `report.spawn_summary`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..analyses.training import train_recipe
from ..errors import OwnershipError, RecipeError, RunDirError
from ..files import OwnedFolder
from ..recipe import sweep_settings
from .spawned_run import parent_recipe, spawn_recipe

MAX_INTERVAL = 2**31 - 1  # re-expansion intervals are counted in int32 steps


@dataclass
class SpawnSweep:
    """What a sweep trained: its folder and the spawned runs, oldest spawn epoch first."""

    out: Path
    runs: list[Path] = field(default_factory=list)


def parse_list(text: str, flag: str, kind=float, minimum: float = 0) -> list:
    """'0,2.5,5' as a sorted list of distinct numbers >= minimum, or one line naming the flag."""
    out = []
    noun = "integers" if kind is int else "numbers"
    for part in (p.strip() for p in text.split(",")):
        try:
            value = kind(part)
        except (ValueError, OverflowError):
            value = None
        if value is None or not math.isfinite(value) or value < minimum or value > 10**6:
            raise RecipeError(f"{flag} {text}: expected comma-separated {noun} from {minimum:g} "
                              f"to 1000000, got {part!r}")
        out.append(value)
    return sorted(set(out))


def reexpansion(text: str | None) -> tuple[list[int], list[int]]:
    """`--reexpand-every 1,10,inf,doubling:10` as (every-K intervals, doubling schedules)."""
    if not text:
        return [], []
    every, doubling = [], []
    for part in (p.strip() for p in text.split(",")):
        kind, _, k = part.rpartition(":")
        if kind not in ("", "doubling") or not k.isdigit() and k.lower() != "inf":
            raise RecipeError(f"--reexpand-every {text}: expected steps K >= 1, inf, or "
                              f"doubling:K (intervals K, 2K, 4K, ...), got {part!r}")
        if k.lower() == "inf":
            if kind:
                raise RecipeError(f"--reexpand-every {text}: doubling needs a first interval "
                                  f"K >= 1, got {part!r}")
            continue  # never re-expanding is the plain spawned Taylor model, always trained
        if not 1 <= int(k) <= MAX_INTERVAL:
            raise RecipeError(f"--reexpand-every {text}: expected K from 1 to {MAX_INTERVAL}, "
                              f"got {part!r}")
        (doubling if kind else every).append(int(k))
    return sorted(set(every)), sorted(set(doubling))


def claim_sweep_folder(out: Path, settings: dict) -> None:
    """Make `out` this sweep's folder, or refuse a folder that is another sweep, a run, or the user's."""
    folder = OwnedFolder(out, "run.json")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out}: is a file, not a folder; choose a new folder")
    info = folder.read_marker() if folder.is_owned() else None
    if info is not None:
        if info.get("kind") != "sweep":
            raise RunDirError(f"--out {out}: holds a taylorcli run, not a spawn sweep; give "
                              f"spawn a folder of its own")
        if info.get("sweep") != settings:
            theirs = info.get("sweep") or {}
            shown = ", ".join(f"{k} {theirs.get(k)}" for k in settings if k != "parent")
            raise RunDirError(f"--out {out}: holds a spawn sweep with other settings ({shown}"
                              f"{'' if theirs.get('parent') == settings['parent'] else ', another parent'}"
                              f"); give this sweep another --out")
        return
    # Hidden entries aside: a sweep's array task that is creating the folder this instant has
    # written nothing but its marker's temporary file yet.
    try:
        folder.claim({"kind": "sweep", "sweep": settings}, "a spawn sweep's folder")
    except OwnershipError as e:
        raise RunDirError(str(e)) from None


def spawn(parent_dir: str | Path, at: list[float], orders: list[int], *, children: int = 0,
          reexpand: str | None = None, overrides=(), out: str | Path | None = None,
          progress=None, resume: bool = True, source: str = "spawn",
          model=None) -> SpawnSweep:
    """Spawn from `parent_dir` at each epoch in `at` and train each spawned run."""
    parent = parent_recipe(parent_dir)
    every, doubling = reexpansion(reexpand)
    out = Path(out) if out is not None else Path(parent_dir) / "spawn"
    # Every recipe is checked before anything trains: a typo in the last epoch fails at once.
    recipes = [spawn_recipe(parent, parent_dir, e, orders, children=children,
                            reexpand_every=every, reexpand_doubling=doubling,
                            overrides=overrides) for e in at]
    claim_sweep_folder(out, sweep_settings(recipes[0]))
    sweep = SpawnSweep(out)
    for recipe in recipes:
        run = out / f"at{recipe.spawn.epoch:g}"
        train_recipe(recipe, run, progress, resume=resume, source=source, model=model)
        sweep.runs.append(run)
    return sweep

