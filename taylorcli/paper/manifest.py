"""A paper's manifest: its runs (a recipe plus `--set` values, or a spawn sweep over a run) and
the reports they feed, as YAML data shipped in taylorcli/paper/data/NAME.yaml.

    name: bai2020
    title: ...
    report: [paper]                 # paper: `taylorcli report`; spawn: the spawn sweeps' summary
    runs:
      - {name: cnnthin, recipe: cnnthin, set: [], feeds: [Table 1, Table 2, Figure 2]}
      - {name: spawn, spawn: {parent: parent, at: [0, 1, 2], orders: [1, 2], children: 2}}
    seeds: [0]                      # optional: every train run once per seed
    small:                          # --scale small
      cifar: [data.dataset=digits, ...]    # every run whose data is CIFAR
      runs: {cnnthin: [model.width=16, ...]}
      spawn_at: {spawn: [0, 1, 2]}         # a spawn run's epochs at this scale
      seeds: [0, 1, 2]                     # the seeds at this scale

Seeds: a `seeds` list (the manifest's, or small.seeds at small scale, or a run's own `seeds`
key, which wins) expands each train run into one run per seed, named NAME_sSEED (its folder
says the seed) with `seed=SEED` as its last `--set` value; a spawn sweep over an expanded
parent is expanded with it (SWEEP_sSEED from PARENT_sSEED). Without a seeds list a run keeps
its name and its recipe's seed. The report averages runs that differ only in their seed
(report/repeats.py) and tests the papers' claims over them (report/claims.py).

A manifest may also be given by path (a YAML file of the same shape).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import PaperError
from ..recipe import MAX_RECIPE_BYTES, parse_yaml

SCALES = ("full", "small")
REPORTS = ("paper", "spawn")
CIFAR = ("cifar10", "cifar100")
_RUN_KEYS = {"name", "recipe", "set", "feeds", "spawn", "seeds"}
MAX_SEEDS = 100
MAX_RUNS = 1000  # the largest real plan has 13 runs; a plan is resolved and costed run by run
# Names become folder names, log names and SLURM job names: no spaces, quotes or control
# characters that a file name, a shell or an #SBATCH line would read differently.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
_SPAWN_KEYS = {"parent", "at", "orders", "children"}


@dataclass(frozen=True)
class SpawnSpec:
    """A spawn sweep over a train run of the manifest: epochs, orders and children."""

    parent: str
    at: tuple[float, ...]
    orders: tuple[int, ...]
    children: int = 0


@dataclass(frozen=True)
class RunEntry:
    """One run of a manifest: a recipe and its `--set` values, or a spawn sweep."""

    name: str
    recipe: str | None
    overrides: tuple[str, ...] = ()
    feeds: tuple[str, ...] = ()
    spawn: SpawnSpec | None = None
    seeds: tuple[int, ...] | None = None  # the run's own seeds key (before expansion)
    base: str | None = None  # an expanded run: the manifest's name for it (small.runs keys)
    seed: int | None = None  # an expanded run: its seed

    @property
    def setting(self) -> str:
        """The manifest's name of this run (the same for every seed of it)."""
        return self.base or self.name


@dataclass(frozen=True)
class Manifest:
    """A paper's runs and reports at one scale (small: the CIFAR runs swapped for digits)."""

    name: str
    title: str
    scale: str
    source: str
    runs: tuple[RunEntry, ...]
    reports: tuple[str, ...]
    small_cifar: tuple[str, ...] = ()
    small_runs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    path: str | None = None  # the manifest's file when given by path (SLURM scripts name it)
    seeds: tuple[int, ...] | None = None  # the seeds at this scale (None: the recipes' own)


def bundled_papers() -> dict[str, Any]:
    """Name -> manifest file of every paper that ships with taylorcli."""
    folder = resources.files("taylorcli.paper.data")
    return dict(sorted((p.name[:-5], p) for p in folder.iterdir() if p.name.endswith(".yaml")))


def _read(name: str) -> tuple[str, str, str | None]:
    """(text, source, path) of a bundled paper or a manifest file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or "/" in name:
        try:
            data = path.read_bytes()[: MAX_RECIPE_BYTES + 1]
        except OSError as e:
            raise PaperError(f"PAPER {name}: cannot read the manifest ({e.strerror or e})") from None
        if len(data) > MAX_RECIPE_BYTES:
            raise PaperError(f"PAPER {name}: larger than {MAX_RECIPE_BYTES >> 10} KiB; expected "
                             f"a manifest")
        return data.decode("utf-8", errors="replace"), str(path), str(path.resolve())
    papers = bundled_papers()
    if name not in papers:
        close = difflib.get_close_matches(name, list(papers), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PaperError(f"PAPER {name}: unknown paper{hint}; expected one of "
                         f"{', '.join(papers)} or a manifest YAML file")
    return papers[name].read_text(encoding="utf-8"), f"{name} (bundled paper)", None


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise PaperError(f"{where}: expected a list of strings, got {value!r}")
    return tuple(str(v) for v in value)


def _spawn(raw: Any, where: str) -> SpawnSpec:
    if not isinstance(raw, dict) or set(raw) - _SPAWN_KEYS or not {"parent", "at"} <= set(raw):
        raise PaperError(f"{where}: expected a mapping with parent, at and optionally orders, "
                         f"children, got {raw!r}")
    try:
        at = tuple(float(e) for e in raw["at"])
        orders = tuple(int(k) for k in raw.get("orders", [1]))
        children = int(raw.get("children", 0))
    except (TypeError, ValueError):
        raise PaperError(f"{where}: expected at (epochs), orders (integers) and children (an "
                         f"integer), got {raw!r}") from None
    if not at or any(e < 0 for e in at) or not orders or any(k < 1 for k in orders) \
            or children < 0:
        raise PaperError(f"{where}: expected epochs >= 0, orders >= 1 and children >= 0, got "
                         f"{raw!r}")
    return SpawnSpec(str(raw["parent"]), tuple(sorted(set(at))), tuple(sorted(set(orders))),
                     children)


def _seeds(value: Any, where: str) -> tuple[int, ...] | None:
    """A seeds list: distinct integers in [0, 2^32), at most MAX_SEEDS; None when absent."""
    if value is None:
        return None
    ok = isinstance(value, list) and 0 < len(value) <= MAX_SEEDS and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in value)
    if not ok or len(set(value)) != len(value):
        raise PaperError(f"{where}: expected a list of 1 to {MAX_SEEDS} distinct seeds (integers "
                         f">= 0), got {value!r}")
    return tuple(value)


def seeded_name(name: str, seed: int) -> str:
    """The run (and folder) name of one seed of a run: NAME_sSEED."""
    return f"{name}_s{seed}"


def expand_seeds(runs: tuple[RunEntry, ...], seeds: tuple[int, ...] | None
                 ) -> tuple[RunEntry, ...]:
    """Each train run once per seed (its own seeds key, else `seeds`), its spawn sweeps with it;
    seed-major (every run's first seed, then every run's second, ...), so that a plan stopped
    half-way has every setting at some seeds rather than some settings at every seed."""
    per_run = {r.name: (r.seeds if r.seeds is not None else seeds) for r in runs
               if r.spawn is None}
    out: list[tuple[int, int, RunEntry]] = []
    for i, r in enumerate(runs):
        parent = r.name if r.spawn is None else r.spawn.parent
        chosen = per_run[parent]
        for rank, entry in enumerate(_expanded(r, chosen)):
            out.append((rank, i, entry))
    return tuple(e for _, _, e in sorted(out, key=lambda t: (t[0], t[1])))


def _expanded(r: RunEntry, chosen: tuple[int, ...] | None) -> list[RunEntry]:
    """One run entry per seed of `chosen` (the entry itself without seeds)."""
    if chosen is None:
        return [r]
    if r.spawn is None:
        return [RunEntry(seeded_name(r.name, s), r.recipe, (*r.overrides, f"seed={s}"), r.feeds,
                         None, None, r.name, s) for s in chosen]
    return [RunEntry(seeded_name(r.name, s), None, r.overrides, r.feeds, SpawnSpec(
        seeded_name(r.spawn.parent, s), r.spawn.at, r.spawn.orders, r.spawn.children), None,
        r.name, s) for s in chosen]


def _entry(raw: Any, i: int, source: str) -> RunEntry:
    where = f"{source}: runs[{i}]"
    if not isinstance(raw, dict) or "name" not in raw:
        raise PaperError(f"{where}: expected a mapping with name and recipe (or spawn), got "
                         f"{raw!r}")
    unknown = set(raw) - _RUN_KEYS
    if unknown:
        raise PaperError(f"{where}: unknown key {sorted(unknown)[0]!r}; expected "
                         f"{', '.join(sorted(_RUN_KEYS))}")
    name = str(raw["name"])
    if not _NAME.fullmatch(name) or name in ("report", "logs", "slurm"):
        raise PaperError(f"{where}: name {name!r}: expected a folder name of letters, digits "
                         f"and _ . + - (at most 100, not report, logs or slurm)")
    if ("recipe" in raw) == ("spawn" in raw):
        raise PaperError(f"{where} ({name}): expected exactly one of recipe and spawn")
    spawn = _spawn(raw["spawn"], f"{where} ({name}): key spawn") if "spawn" in raw else None
    if spawn is not None and "seeds" in raw:
        raise PaperError(f"{where} ({name}): key seeds: a spawn sweep takes its parent's seeds; "
                         f"expected seeds on the parent run")
    return RunEntry(name, str(raw["recipe"]) if "recipe" in raw else None,
                    _strings(raw.get("set"), f"{where} ({name}): key set"),
                    _strings(raw.get("feeds"), f"{where} ({name}): key feeds"), spawn,
                    _seeds(raw.get("seeds"), f"{where} ({name}): key seeds"))


def load_manifest(name: str, scale: str = "full") -> Manifest:
    """A bundled paper (bai2020, fort2020, lee2019, theorem1) or a manifest file, read and checked."""
    if scale not in SCALES:
        raise PaperError(f"--scale {scale}: expected one of {', '.join(SCALES)}")
    text, source, path = _read(str(name))
    try:
        raw = parse_yaml(text, source)
    except Exception as e:  # noqa: BLE001 - RecipeError's one line, under the paper's name
        raise PaperError(str(e)) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("runs"), list) or not raw["runs"]:
        raise PaperError(f"{source}: expected a mapping with a non-empty list 'runs'")
    unknown = set(raw) - {"name", "title", "report", "runs", "small", "seeds"}
    if unknown:
        raise PaperError(f"{source}: unknown key {sorted(unknown)[0]!r}; expected name, title, "
                         f"report, runs, seeds, small")
    if len(raw["runs"]) > MAX_RUNS:
        raise PaperError(f"{source}: {len(raw['runs'])} runs; expected at most {MAX_RUNS} (split "
                         f"the plan into several manifests)")
    title = raw.get("title") or ""
    if not isinstance(title, str) or len(title) > 1000:
        raise PaperError(f"{source}: key title: expected one line of text (at most 1000 "
                         f"characters)")
    paper_name = str(raw.get("name") or Path(str(name)).stem)
    if not _NAME.fullmatch(paper_name):
        raise PaperError(f"{source}: key name: {paper_name[:60]!r}: expected letters, digits "
                         f"and _ . + - (it names the SLURM jobs), at most 100")
    runs = tuple(_entry(r, i, source) for i, r in enumerate(raw["runs"]))
    seen: set[str] = set()
    for r in runs:
        if r.name in seen:
            raise PaperError(f"{source}: run name {r.name!r} appears twice")
        seen.add(r.name)
    trains = {r.name for r in runs if r.spawn is None}
    for r in runs:
        if r.spawn is not None and r.spawn.parent not in trains:
            raise PaperError(f"{source}: run {r.name}: spawn parent {r.spawn.parent!r} is not a "
                             f"train run of the manifest ({', '.join(sorted(trains))})")
    reports = _strings(raw.get("report", ["paper"]), f"{source}: key report")
    bad = [r for r in reports if r not in REPORTS]
    if bad:
        raise PaperError(f"{source}: key report: {bad[0]!r}; expected a list of "
                         f"{', '.join(REPORTS)}")
    small = raw.get("small") or {}
    if not isinstance(small, dict) or set(small) - {"cifar", "runs", "spawn_at", "seeds"}:
        raise PaperError(f"{source}: key small: expected a mapping with cifar, runs, spawn_at, "
                         f"seeds")
    seeds = _seeds(raw.get("seeds"), f"{source}: key seeds")
    if scale == "small" and "seeds" in small:
        seeds = _seeds(small["seeds"], f"{source}: key small.seeds")
    spawn_at = small.get("spawn_at") or {}
    sweeps = {r.name: r for r in runs if r.spawn is not None}
    if not isinstance(spawn_at, dict) or set(spawn_at) - set(sweeps):
        raise PaperError(f"{source}: key small.spawn_at: expected a mapping of the spawn runs' "
                         f"names to lists of epochs, got {spawn_at!r}")
    if scale == "small":  # the small parent trains fewer epochs: spawn at its own epochs
        runs = tuple(RunEntry(r.name, r.recipe, r.overrides, r.feeds, _spawn(
            {"parent": r.spawn.parent, "at": spawn_at[r.name], "orders": list(r.spawn.orders),
             "children": r.spawn.children}, f"{source}: key small.spawn_at.{r.name}"))
            if r.name in spawn_at else r for r in runs)
    small_runs = small.get("runs") or {}
    if not isinstance(small_runs, dict) or set(small_runs) - trains:
        extra = sorted(set(small_runs) - trains) if isinstance(small_runs, dict) else small_runs
        raise PaperError(f"{source}: key small.runs: expected a mapping of the train runs' "
                         f"names to --set lists, got {extra!r}")
    runs = expand_seeds(runs, seeds)
    if len(runs) > MAX_RUNS:
        raise PaperError(f"{source}: {len(runs)} runs over the seeds; expected at most "
                         f"{MAX_RUNS} (split the plan into several manifests)")
    names = [r.name for r in runs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise PaperError(f"{source}: run name {clash[0]!r} appears twice once the seeds are "
                         f"expanded (NAME_sSEED); rename one run")
    return Manifest(
        name=paper_name, title=" ".join(title.split()),
        scale=scale, source=source, runs=runs, reports=reports, seeds=seeds,
        small_cifar=_strings(small.get("cifar"), f"{source}: key small.cifar"),
        small_runs={k: _strings(v, f"{source}: key small.runs.{k}")
                    for k, v in small_runs.items()},
        path=path)
